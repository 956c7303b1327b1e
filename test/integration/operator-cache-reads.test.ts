/**
 * The operator on the real kube-apiserver reads from its watch caches: in steady state a poll
 * makes no request to the kube-apiserver (counted by the apiserver's own metrics and by the
 * operator's), a Run's progress does not reconcile its CE, losing the Lease aborts in-flight
 * reconciles, and shutdown keeps its deadline and exits 0 while the cloud hangs.
 */
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient } from "../../src/engine/kube.js";
import type { KubeObject, PatchType, ResourceType, WatchEvent, WatchOptions } from "../../src/engine/kube.js";
import { loadKubeConfig } from "../../src/engine/kubeconfig.js";
import { ANNOTATION_LAUNCH_DECIDED } from "../../src/api/constants.js";
import { EngineMetrics } from "../../src/engine/metrics.js";
import { createLogger } from "../../src/engine/logger.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import type { RunDescription, EnvContext } from "../../src/cloud/provider.js";
import { CloudError } from "../../src/cloud/provider.js";
import { SecretResource } from "../../src/controllers/shared.js";
import { EventResource } from "../../src/engine/events.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { Operator } from "../../src/operator.js";
import { FakeCloud } from "../support/fake-cloud.js";
import { installCrds, testConfig, waitFor } from "../support/operator.js";
import { stealLease } from "../support/lease.js";
import { launchDecided } from "../../src/controllers/run/phases.js";
import { CLOUD_WRITES_ANNOTATION } from "../../src/controllers/computeenvironment/cloud-writes.js";
import { freshNamespace, kubeconfigPath, settleDeletedNamespaces } from "../harness/helpers.js";
import { REPO_ROOT } from "../harness/paths.js";
import type { OperatorConfig } from "../../src/config.js";

let client: KubeClient;

const ceManifest = (ns: string, name: string, secret?: string): ComputeEnvironment => ({
  apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name, namespace: ns },
  spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://vmforge-test-bucket/work" }, ...(secret ? { credentials: { secretRef: { name: secret } } } : {}) } as ComputeEnvironment["spec"],
});
const runManifest = (ns: string, name: string, ce: string): Run => ({
  apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name, namespace: ns },
  spec: { computeEnvironmentRef: { name: ce }, pipeline: { repository: "https://github.com/nextflow-io/hello" } } as Run["spec"],
});

async function startWithMetrics(
  cloud: FakeCloud,
  over: Partial<OperatorConfig>,
  makeClient: (metrics: EngineMetrics) => KubeClient = (metrics) => KubeClient.fromKubeconfig(kubeconfigPath(), { metrics }),
): Promise<{ operator: Operator; metrics: EngineMetrics; lost: { count: number } }> {
  const metrics = new EngineMetrics({ defaultMetrics: false });
  const config = testConfig(over);
  const operator = new Operator({
    client: makeClient(metrics), providers: new Map([["aws", cloud]]), config, metrics,
    logger: createLogger({ level: process.env.VMFORGE_TEST_LOG_LEVEL ?? "warn", name: "vmforge-test" }),
  });
  const lost = { count: 0 };
  operator.start(() => lost.count++);
  await waitFor("operator caches synced", async () => operator.isLeader() && operator.isReady(), 30_000);
  return { operator, metrics, lost };
}

/** Sum of a counter's samples whose labels include every given label. */
function sum(text: string, name: string, labels: Record<string, string>): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const body = line.slice(name.length + 1, line.lastIndexOf("}"));
    if (Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) total += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return total;
}

beforeAll(async () => {
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
});

describe("steady state", () => {
  let ns: string;
  let cloud: FakeCloud;
  let op: Awaited<ReturnType<typeof startWithMetrics>>;

  beforeAll(async () => {
    ns = await freshNamespace(client, "cache");
    cloud = new FakeCloud();
    // The watches' periodic resync (which looks at every object again) at its default, outside the test's windows.
    op = await startWithMetrics(cloud, { namespaces: [ns], pollIntervalMs: 300, resyncPeriodMs: 10 * 60_000 });
  });
  afterAll(async () => {
    await op?.operator.stop(5_000);
  });

  it("a poll with nothing changed sends no request to the kube-apiserver and writes nothing", async () => {
    await client.create(SecretResource, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "creds", namespace: ns }, stringData: { accessKeyId: "AKIAEXAMPLE", secretAccessKey: "s" },
    } as SecretObject);
    await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce", "creds"));
    for (let i = 0; i < 20; i++) await client.create(RunResource, runManifest(ns, `r${i}`, "ce"));
    await waitFor("all Runs Running", async () => {
      const runs = await client.list<Run>(RunResource, { namespace: ns });
      return runs.items.length === 20 && runs.items.every((r) => r.status?.phase === "Running");
    }, 60_000);
    await waitFor("CE counts 20 active Runs", async () => (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.status?.activeRuns === 20);
    // The Run reconciler reads each Run's CE from the cache without a copy: what the cache holds is frozen.
    const cached = op.operator.ces.get(`${ns}/ce`);
    expect(cached?.status?.activeRuns).toBe(20);
    expect([cached, cached?.metadata, cached?.spec, cached?.spec.aws, cached?.status, cached?.status?.conditions, cached?.status?.conditions?.[0]].every((o) => o !== undefined && Object.isFrozen(o))).toBe(true);
    // let the last events settle (CE coalescing window, last Running writes)
    const settle = op.operator.tracker.pollCount + 8;
    await waitFor("polls", async () => op.operator.tracker.pollCount >= settle);

    // Namespaces deleted by earlier test files are emptied by the namespace controller, whose LISTs
    // the apiserver's counts below would include.
    await settleDeletedNamespaces();
    const apiBefore = String(await client.request("GET", "/metrics"));
    const mineBefore = await op.metrics.text();
    const polls = op.operator.tracker.pollCount;
    const missesBefore = op.operator.secretReader.misses;
    await waitFor("five more polls", async () => op.operator.tracker.pollCount >= polls + 5);
    const apiAfter = String(await client.request("GET", "/metrics"));
    const mineAfter = await op.metrics.text();

    for (const resource of ["runs", "computeenvironments"]) {
      for (const verb of ["GET", "LIST", "PATCH", "UPDATE", "POST", "DELETE"]) {
        const n = sum(apiAfter, "apiserver_request_total", { resource, verb }) - sum(apiBefore, "apiserver_request_total", { resource, verb });
        expect({ resource, verb, n }).toEqual({ resource, verb, n: 0 });
      }
    }
    // The operator's own count covers every resource, Secrets included.
    for (const verb of ["get", "list", "patch", "update", "create", "delete"]) {
      const n = sum(mineAfter, "vmforge_kube_requests_total", { verb }) - sum(mineBefore, "vmforge_kube_requests_total", { verb });
      expect({ verb, n }).toEqual({ verb, n: 0 });
    }
    expect(sum(mineAfter, "vmforge_status_writes_total", {})).toBeGreaterThan(0);
    expect(sum(mineAfter, "vmforge_status_writes_total", {})).toBe(sum(mineBefore, "vmforge_status_writes_total", {}));
    // Nor is a Running Run reconciled: the tracker wakes a Run only when a poll sees its machine differently.
    expect(sum(mineAfter, "vmforge_reconcile_total", { controller: "run" })).toBeGreaterThan(0);
    expect(sum(mineAfter, "vmforge_reconcile_total", { controller: "run" })).toBe(sum(mineBefore, "vmforge_reconcile_total", { controller: "run" }));
    // Secret reads came from the cache: GETs happened only before the Secret was labelled.
    expect(op.operator.secretReader.misses).toBe(missesBefore);
    expect(missesBefore).toBeLessThanOrEqual(3);
    expect(cloud.calls.describe).toBeGreaterThan(0);
  });

  it("a Run's progress reconciles its CE only when the CE's status depends on it", async () => {
    const ceReconciles = async (): Promise<number> => sum(await op.metrics.text(), "vmforge_reconcile_total", { controller: "computeenvironment" });
    const before = await ceReconciles();
    for (let i = 0; i < 10; i++) await client.create(RunResource, runManifest(ns, `p${i}`, "ce"));
    await waitFor("new Runs Running", async () => {
      const runs = await client.list<Run>(RunResource, { namespace: ns });
      return runs.items.filter((r) => r.metadata.name?.startsWith("p") && r.status?.phase === "Running").length === 10;
    }, 60_000);
    await waitFor("CE counts 30 active Runs", async () => (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.status?.activeRuns === 30);
    // 10 Runs x (created, Pending, Launching, Running) used to be 40 CE reconciles; now the
    // creations, gathered, are the only news (activeRuns), and Launching/Running none.
    const after = await ceReconciles();
    expect(after - before).toBeGreaterThan(0);
    expect(after - before).toBeLessThan(10);
  });
});

/**
 * A client whose ComputeEnvironment watch can be held: from holdCeWatch() on it delivers nothing
 * more; at releaseCeWatch() it answers "410 Gone", as the kube-apiserver does for a watch whose
 * resourceVersion was compacted away meanwhile, so the reflector lists anew.
 */
class HeldCeWatchClient extends KubeClient {
  private gate = HeldCeWatchClient.freshGate();
  private static freshGate(): { held: Promise<void>; hold: () => void; released: Promise<void>; release: () => void } {
    let hold!: () => void;
    let release!: () => void;
    const held = new Promise<void>((r) => (hold = r));
    const released = new Promise<void>((r) => (release = r));
    return { held, hold, released, release };
  }
  holdCeWatch(): void {
    this.gate.hold();
  }
  releaseCeWatch(): void {
    const gate = this.gate;
    this.gate = HeldCeWatchClient.freshGate();
    gate.release();
  }
  override async *watch<T extends KubeObject>(rt: ResourceType, opts: WatchOptions, signal: AbortSignal): AsyncIterable<WatchEvent<T>> {
    if (rt.plural !== ComputeEnvironmentResource.plural) {
      yield* super.watch<T>(rt, opts, signal);
      return;
    }
    const gate = this.gate;
    const inner = new AbortController();
    const onAbort = (): void => inner.abort(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      const events = super.watch<T>(rt, opts, inner.signal)[Symbol.asyncIterator]();
      for (;;) {
        const next = events.next();
        next.catch(() => undefined); // left pending when the watch is held, then aborted
        const got = await Promise.race([next, gate.held.then(() => "held" as const)]);
        if (got === "held") break;
        if (got.done) return;
        yield got.value;
      }
      inner.abort(new Error("watch held by the test"));
      await Promise.race([gate.released, new Promise((r) => signal.addEventListener("abort", r, { once: true }))]);
      if (signal.aborted) return;
      yield { type: "ERROR", object: { code: 410, reason: "Expired", message: "too old resource version (the test held the watch)" } };
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}

describe("a ComputeEnvironment replaced while the CE watch was down", () => {
  it("is seen by the relist as gone (reported as a change of the same key): its Run ends with it, its machine is terminated with what it said, and nothing the CE reconciler kept of it stays", async () => {
    const ns = await freshNamespace(client, "replaced");
    const cloud = new FakeCloud();
    let held: HeldCeWatchClient | undefined;
    const op = await startWithMetrics(cloud, { namespaces: [ns] }, (metrics) => (held = new HeldCeWatchClient(loadKubeConfig(kubeconfigPath()), { metrics })));
    try {
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce"));
      await client.create(RunResource, runManifest(ns, "r", "ce"));
      const running = await waitFor("Run r Running", async () => {
        const r = await client.get<Run>(RunResource, ns, "r");
        return r?.status?.phase === "Running" ? r : undefined;
      });
      const oldUid = (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.metadata.uid ?? "";
      expect(op.operator.ceReconciler.remembers(oldUid)).toBe(true);
      // Removed by force and created again while the operator's CE watch delivers nothing.
      held?.holdCeWatch();
      await client.delete(ComputeEnvironmentResource, ns, "ce");
      await client.patch(ComputeEnvironmentResource, ns, "ce", { metadata: { finalizers: null } }, "merge");
      await waitFor("the first CE gone", async () => ((await client.get(ComputeEnvironmentResource, ns, "ce")) === undefined ? true : undefined));
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce"));
      held?.releaseCeWatch();
      // The Run launched under it ends with it, and its machine is terminated where that CE said.
      // (An operator that missed the removal gets there too, from the new CE and the UID the Run
      // recorded; what only the relist's report gives is the forgetting below.)
      await waitFor("the machine terminated", async () => cloud.machineOf(running.metadata.uid ?? "")?.state === "terminated", 15_000);
      const ended = await waitFor("Run r ended", async () => {
        const r = await client.get<Run>(RunResource, ns, "r");
        return r?.status?.phase === "Failed" || r?.status?.phase === "Cancelled" ? r : undefined;
      });
      expect(ended.status?.reason).toBe("ComputeEnvironmentGone");
      await waitFor("the replaced CE forgotten by the CE reconciler", async () => !op.operator.ceReconciler.remembers(oldUid), 15_000);
    } finally {
      await op.operator.stop(3_000);
    }
  });
});

/** Its next orphan sweep of the CE named "held" waits until released, then fails (throttled). */
class HeldSweepCloud extends FakeCloud {
  inSweep = false;
  private release: (() => void) | undefined;
  private readonly released = new Promise<void>((r) => (this.release = r));
  private held = true;
  letGo(): void {
    this.release?.();
  }
  override async sweepOrphans(ctx: EnvContext, live: Set<string>): Promise<string[]> {
    if (!this.held || ctx.ce.metadata.name !== "held") return super.sweepOrphans(ctx, live);
    this.held = false;
    this.inSweep = true;
    await this.released;
    throw CloudError.retryable("RequestLimitExceeded", "ec2:DescribeInstances: Request limit exceeded.");
  }
}

describe("what the CE reconciler keeps of a CE", () => {
  it("is not kept when a reconcile under way records it after the CE went, also when a CE of the same name came meanwhile", async () => {
    const ns = await freshNamespace(client, "inflight");
    const cloud = new HeldSweepCloud();
    const op = await startWithMetrics(cloud, { namespaces: [ns] });
    const ceUid = async (): Promise<string | undefined> => (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "held"))?.metadata.uid;
    try {
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "held"));
      // Converged (kept), and its first orphan sweep under way.
      await waitFor("the CE's first sweep under way", async () => (cloud.inSweep ? true : undefined));
      const oldUid = (await ceUid()) ?? "";
      expect(op.operator.ceReconciler.remembers(oldUid)).toBe(true);
      // Removed by force and created again while that reconcile still runs (it holds the key).
      await client.delete(ComputeEnvironmentResource, ns, "held");
      await client.patch(ComputeEnvironmentResource, ns, "held", { metadata: { finalizers: null } }, "merge");
      await waitFor("the CE forgotten as it went", async () => !op.operator.ceReconciler.remembers(oldUid));
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "held"));
      const newUid = (await ceUid()) ?? "";
      expect(newUid).not.toBe(oldUid);
      // The sweep fails now: the reconcile, which read the first CE, records a retry for it.
      cloud.letGo();
      await waitFor("the new CE Ready", async () => {
        const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "held");
        return ce?.metadata.uid === newUid && ce.status?.phase === "Ready" ? true : undefined;
      });
      expect(op.operator.ceReconciler.remembers(oldUid)).toBe(false);
      expect(op.operator.ceReconciler.remembers(newUid)).toBe(true);
    } finally {
      cloud.letGo();
      await op.operator.stop(3_000);
    }
  });
});

/** Announces its cloud writes, and its environment never announces one (as AWS with a given instance profile, or Azure with everything in place). */
class NothingToWriteCloud extends FakeCloud {
  readonly announcesCloudWrites = true;
}

describe("the CE a Run reads from the cache", () => {
  it("is not changed by the Run's reconcile: Runs whose launches first record cloud writes on their CE launch without a reconcile error, and record it once", async () => {
    const ns = await freshNamespace(client, "frozen-ce");
    const cloud = new NothingToWriteCloud();
    const op = await startWithMetrics(cloud, { namespaces: [ns], pollIntervalMs: 300 });
    try {
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce"));
      await waitFor("CE Ready", async () => (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") === true);
      // Nothing written for the environment, so nothing recorded yet: the launch records it.
      expect((await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.metadata.annotations?.[CLOUD_WRITES_ANNOTATION]).toBeUndefined();
      const cached = op.operator.ces.get(`${ns}/ce`);
      expect(cached).toBeDefined();
      expect(Object.isFrozen(cached?.metadata)).toBe(true);
      const cePatches = async (): Promise<number> => sum(await op.metrics.text(), "vmforge_kube_requests_total", { verb: "patch", resource: "computeenvironments" });
      const patchesBefore = await cePatches();
      // Launched together: each launch finds the record missing, and one PATCH records it for all.
      await Promise.all(Array.from({ length: 8 }, (_, i) => client.create(RunResource, runManifest(ns, `r${i}`, "ce"))));
      await waitFor("Runs Running", async () => (await client.list<Run>(RunResource, { namespace: ns })).items.filter((r) => r.status?.phase === "Running").length === 8, 30_000);
      expect((await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.metadata.annotations?.[CLOUD_WRITES_ANNOTATION]).toMatch(/^\d{4}-/);
      expect(cloud.calls.launch).toBe(8);
      expect(await cePatches() - patchesBefore).toBe(1);
      // A change of the frozen CE throws a TypeError, counted as a retryable error (409s count apart).
      expect(sum(await op.metrics.text(), "vmforge_reconcile_errors_total", { controller: "run", kind: "retryable" })).toBe(0);
    } finally {
      await op.operator.stop(5_000);
    }
  });
});

describe("reconciles per Run", () => {
  /** An operator with no poll and no resync within a test (every Run reconcile comes from a watch event or its own wait), and a Ready CE "ce". */
  async function quietOperator(prefix: string, cloud = new FakeCloud()): Promise<{ ns: string; op: Awaited<ReturnType<typeof startWithMetrics>> }> {
    const ns = await freshNamespace(client, prefix);
    const op = await startWithMetrics(cloud, { namespaces: [ns], pollIntervalMs: 120_000, resyncPeriodMs: 3_600_000 });
    try {
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce"));
      await waitFor("CE Ready", async () => (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false);
    } catch (e) {
      await op.operator.stop(5_000);
      throw e;
    }
    return { ns, op };
  }

  /**
   * Waits until neither Run queue has a key waiting or being reconciled. The cache's event handler
   * enqueues in the same turn as it stores an object, so once the cache holds a write's echo, a
   * reconcile the echo brought is queued, running or done: after this the reconcile counts are final.
   * Not waited for: the CE reconcile a Run's change may schedule (CE_COALESCE_MS later), which would
   * enqueue the CE's Runs only if the CE's readiness or spec changed (none does in these tests).
   */
  async function settled(operator: Awaited<ReturnType<typeof startWithMetrics>>["operator"]): Promise<void> {
    const busy = (c: typeof operator.runController): number => c.queue.len() + c.queue.processingCount();
    await waitFor("Run queues settled", async () => busy(operator.runController) + busy(operator.ackController) === 0, 10_000, 20);
  }

  it("a new Run is reconciled by run-ack alone until its first status, and its own writes of the launch and of what a look saw bring no second reconcile; a change by anyone else does", async () => {
    const { ns, op } = await quietOperator("echo");
    try {
      const reconciles = async (controller: string): Promise<number> => sum(await op.metrics.text(), "vmforge_reconcile_total", { controller });
      const runBefore = await reconciles("run");
      const ackBefore = await reconciles("run-ack");
      await client.create(RunResource, runManifest(ns, "one", "ce"));
      await waitFor("machine recorded", async () => (await client.get<Run>(RunResource, ns, "one"))?.status?.instance?.id !== undefined);
      const launched = await client.get<Run>(RunResource, ns, "one");
      expect(launched?.metadata.annotations?.[ANNOTATION_LAUNCH_DECIDED]).toBe(launched?.metadata.uid);
      // The launch's two writes (decision, machine) have come back through the watch.
      await waitFor("cache has the recorded machine", async () => op.operator.runs.get(`${ns}/one`)?.metadata.resourceVersion === launched?.metadata.resourceVersion);
      await settled(op.operator);
      expect(await reconciles("run-ack") - ackBefore).toBe(1);
      // One: the acknowledgement's event, which launched. Not the creation, nor the two echoes.
      expect(await reconciles("run") - runBefore).toBe(1);
      expect(op.operator.runController.ownWrites.size).toBe(0);
      // A look that sees the machine running wakes the Run (one reconcile), whose Running write brings none.
      await op.operator.tracker.pollOnce();
      const running = await waitFor("Running", async () => {
        const r = await client.get<Run>(RunResource, ns, "one");
        return r?.status?.phase === "Running" ? r : undefined;
      });
      await waitFor("cache has it", async () => op.operator.runs.get(`${ns}/one`)?.metadata.resourceVersion === running.metadata.resourceVersion);
      await settled(op.operator);
      expect(await reconciles("run") - runBefore).toBe(2);
      // A change by someone else is reconciled as before.
      await client.patch(RunResource, ns, "one", { metadata: { annotations: { "example.com/note": "x" } } }, "merge");
      await waitFor("the change reconciled", async () => await reconciles("run") - runBefore === 3);
    } finally {
      await op.operator.stop(5_000);
    }
  });

  it("on a cloud whose launcher says when the pipeline started, the writes of SettingUp and of Running each come from one look's wake and bring no second reconcile", async () => {
    const cloud = new FakeCloud();
    cloud.reportsPipelineStart = true;
    const { ns, op } = await quietOperator("echo-setup", cloud);
    try {
      const reconciles = async (): Promise<number> => sum(await op.metrics.text(), "vmforge_reconcile_total", { controller: "run" });
      const before = await reconciles();
      await client.create(RunResource, runManifest(ns, "one", "ce"));
      const launched = await waitFor("machine recorded", async () => {
        const r = await client.get<Run>(RunResource, ns, "one");
        return r?.status?.instance?.id !== undefined ? r : undefined;
      });
      const uid = launched.metadata.uid ?? "";
      const cached = async (phase: string, reason: string): Promise<void> => {
        const r = await waitFor(`${phase}/${reason}`, async () => {
          const x = await client.get<Run>(RunResource, ns, "one");
          return x?.status?.phase === phase && x.status.reason === reason ? x : undefined;
        });
        await waitFor(`cache has ${phase}/${reason}`, async () => op.operator.runs.get(`${ns}/one`)?.metadata.resourceVersion === r.metadata.resourceVersion);
        await settled(op.operator);
      };
      await waitFor("cache has the recorded machine", async () => op.operator.runs.get(`${ns}/one`)?.metadata.resourceVersion === launched.metadata.resourceVersion);
      await settled(op.operator);
      expect(await reconciles() - before).toBe(1); // the launch
      // A look sees the machine up, its launcher silent: one reconcile writes SettingUp, whose echo brings none.
      await op.operator.tracker.pollOnce();
      await cached("Launching", "SettingUp");
      expect(await reconciles() - before).toBe(2);
      // A look that sees nothing new wakes nothing.
      const looks = cloud.calls.describe;
      await op.operator.tracker.pollOnce();
      expect(cloud.calls.describe).toBe(looks + 1); // it looked
      await settled(op.operator);
      expect(await reconciles() - before).toBe(2);
      // The launcher says the pipeline started: the next look wakes the Run once, its Running write brings none.
      cloud.startPipeline(uid);
      await op.operator.tracker.pollOnce();
      await cached("Running", "Running");
      expect(await reconciles() - before).toBe(3);
      expect(op.operator.runController.ownWrites.size).toBe(0);
    } finally {
      await op.operator.stop(5_000);
    }
  });

  it("a Run whose timeout comes before the next poll is timed out on time, although its launch's writes bring no reconcile", async () => {
    const { ns, op } = await quietOperator("echo-timeout");
    try {
      await client.create(RunResource, { ...runManifest(ns, "slow", "ce"), spec: { ...runManifest(ns, "slow", "ce").spec, timeout: "1m" } });
      await waitFor("launched", async () => (await client.get<Run>(RunResource, ns, "slow"))?.status?.instance?.id !== undefined);
      // The machine stays pending (no poll looks at it within the test): only the launch's own wake times it out.
      await waitFor("Failed/Timeout", async () => {
        const r = await client.get<Run>(RunResource, ns, "slow");
        return r?.status?.phase === "Failed" && r.status.reason === "Timeout";
      }, 90_000, 500);
    } finally {
      await op.operator.stop(5_000);
    }
  });
});

describe("concurrency after a restart", () => {
  it("a slot freed by a Run launched before the restart starts the waiting Run at once, not at the next resync", async () => {
    const ns = await freshNamespace(client, "slots");
    const cloud = new FakeCloud();
    const first = await startWithMetrics(cloud, { namespaces: [ns], resyncPeriodMs: 3_600_000 });
    await client.create(ComputeEnvironmentResource, { ...ceManifest(ns, "ce"), spec: { ...ceManifest(ns, "ce").spec, maxConcurrentRuns: 1 } });
    await client.create(RunResource, runManifest(ns, "one", "ce"));
    await waitFor("one Running", async () => (await client.get<Run>(RunResource, ns, "one"))?.status?.phase === "Running");
    await client.create(RunResource, runManifest(ns, "two", "ce"));
    await waitFor("two waits for a slot", async () => (await client.get<Run>(RunResource, ns, "two"))?.status?.reason === "ConcurrencyLimit");
    await first.operator.stop(3_000);

    // A new process (nothing in memory) with a resync far away.
    const second = await startWithMetrics(cloud, { namespaces: [ns], resyncPeriodMs: 3_600_000 });
    try {
      const one = await client.get<Run>(RunResource, ns, "one");
      cloud.finish(one?.metadata.uid ?? "", 0);
      await waitFor("one Succeeded", async () => (await client.get<Run>(RunResource, ns, "one"))?.status?.phase === "Succeeded");
      await waitFor("two launched", async () => ["Launching", "Running"].includes((await client.get<Run>(RunResource, ns, "two"))?.status?.phase ?? ""), 20_000);
    } finally {
      await second.operator.stop(3_000);
    }
  });

  it("a Run deleted after it claimed the only slot, before its launch decision was written, gives the slot back at once", async () => {
    const ns = await freshNamespace(client, "claim");
    const cloud = new FakeCloud();
    let hooked: DecisionHookClient | undefined;
    // The resync is far away: only the release of the claim can start the waiting Run.
    const op = await startWithMetrics(cloud, { namespaces: [ns], resyncPeriodMs: 3_600_000 }, (metrics) => {
      hooked = new DecisionHookClient(loadKubeConfig(kubeconfigPath()), { metrics });
      return hooked;
    });
    try {
      await client.create(ComputeEnvironmentResource, { ...ceManifest(ns, "ce"), spec: { ...ceManifest(ns, "ce").spec, maxConcurrentRuns: 1 } });
      await waitFor("CE Ready", async () => (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"));
      let acted = false;
      // "doomed" has claimed the slot and is about to write its decision. Meanwhile "next" comes
      // and waits for the slot; then "doomed" is deleted (no finalizer yet, so it goes at once),
      // and its decision write meets a 404.
      if (!hooked) throw new Error("no client");
      hooked.beforeDecision = {
        run: "doomed",
        act: async () => {
          await client.create(RunResource, runManifest(ns, "next", "ce"));
          await waitFor("next waits for the slot doomed holds", async () => (await client.get<Run>(RunResource, ns, "next"))?.status?.reason === "ConcurrencyLimit");
          expect(await client.delete(RunResource, ns, "doomed")).toBe(true);
          await waitFor("doomed gone", async () => (await client.get<Run>(RunResource, ns, "doomed")) === undefined);
          acted = true;
        },
      };
      await client.create(RunResource, runManifest(ns, "doomed", "ce"));
      await waitFor("the hook ran", async () => acted);
      await waitFor("next launched", async () => ["Launching", "Running"].includes((await client.get<Run>(RunResource, ns, "next"))?.status?.phase ?? ""), 20_000);
      // Nothing was launched for the deleted Run.
      expect(cloud.calls.launch).toBe(1);
    } finally {
      await op.operator.stop(3_000);
    }
  });
});

/**
 * The operator's client, with a hook that runs once just before the next launch decision of a Run
 * is written (the finalizer and the decision annotation), so a test can act in the window between
 * a Run claiming a concurrency slot and the decision reaching the API server.
 */
class DecisionHookClient extends KubeClient {
  beforeDecision: { run: string; act: () => Promise<void> } | undefined;
  override async patch<T extends KubeObject>(
    rt: ResourceType, namespace: string | undefined, name: string, patch: unknown, type: PatchType,
    opts: { subresource?: "status"; fieldManager?: string; signal?: AbortSignal } = {},
  ): Promise<T> {
    const annotations = (patch as { metadata?: { annotations?: Record<string, unknown> } }).metadata?.annotations;
    const hook = this.beforeDecision;
    if (hook && rt.plural === RunResource.plural && name === hook.run && typeof annotations?.[ANNOTATION_LAUNCH_DECIDED] === "string") {
      this.beforeDecision = undefined;
      await hook.act();
    }
    return super.patch<T>(rt, namespace, name, patch, type, opts);
  }
}

/** A cloud whose launches hang until their signal aborts (then they record it). */
class SlowLaunchCloud extends FakeCloud {
  signals: AbortSignal[] = [];
  override launchRun(ctx: EnvContext): Promise<RunDescription> {
    this.calls.launch++;
    if (ctx.signal) this.signals.push(ctx.signal);
    return new Promise((_resolve, reject) => ctx.signal?.addEventListener("abort", () => reject(new Error("aborted"))));
  }
}

/** An operator in `ns` that leads by the Lease `ns`/vmforge (3 s lease, 2 s renew deadline). */
const startLeading = (ns: string, cloud: FakeCloud): ReturnType<typeof startWithMetrics> =>
  startWithMetrics(cloud, {
    namespaces: [ns], leaderElection: true, leaseNamespace: ns, leaseName: "vmforge", identity: "me",
    leaseDurationMs: 3_000, renewDeadlineMs: 2_000, retryPeriodMs: 500,
  });

describe("leadership and shutdown", () => {
  it("losing the Lease aborts the in-flight reconciles at once", async () => {
    const ns = await freshNamespace(client, "lease");
    const cloud = new SlowLaunchCloud();
    const op = await startLeading(ns, cloud);
    try {
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce"));
      await client.create(RunResource, runManifest(ns, "r", "ce"));
      await waitFor("launch in flight", async () => cloud.signals.length === 1);
      expect(cloud.signals[0]?.aborted).toBe(false);
      // Another process takes the Lease (as after a partition): this one must stop acting.
      await stealLease(client, ns, "vmforge");
      await waitFor("leadership lost", async () => op.lost.count === 1, 20_000);
      expect(cloud.signals[0]?.aborted).toBe(true);
      expect(op.operator.isLeader()).toBe(false);
    } finally {
      await op.operator.stop(3_000);
    }
  });

  it("woken after a suspension longer than the renew deadline, during which the Lease went to another holder: no reconcile starts before the elector has looked at the Lease", async () => {
    const ns = await freshNamespace(client, "suspend");
    const cloud = new FakeCloud();
    const op = await startLeading(ns, cloud);
    try {
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce"));
      await waitFor("CE acknowledged", async () => ((await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"))?.status?.phase ? true : undefined));
      // This process (the operator in it) stands still for 3 s; meanwhile a Run is created and
      // another process takes the Lease. On waking, the Run's watch event is there at once, while
      // the elector's look at the Lease takes a round trip.
      const out = spawnSync(process.execPath, ["--import", "tsx", join(REPO_ROOT, "test", "support", "while-suspended.ts"),
        kubeconfigPath(), ns, "vmforge", "3000", JSON.stringify(RunResource), JSON.stringify(runManifest(ns, "woken", "ce"))], { encoding: "utf8", cwd: REPO_ROOT });
      expect({ status: out.status, stdout: out.stdout }, out.stderr).toEqual({ status: 0, stdout: "done\n" });
      await waitFor("leadership lost", async () => op.lost.count === 1, 20_000);
      await new Promise((r) => setTimeout(r, 1_000));
      // Not acknowledged (a status write) nor launched by a process that no longer holds the Lease.
      expect((await client.get<Run>(RunResource, ns, "woken"))?.status).toBeUndefined();
      expect(cloud.calls.launch).toBe(0);
    } finally {
      await op.operator.stop(3_000);
    }
  });

  it("stop() returns by its deadline while a cloud call ignores its signal", async () => {
    const ns = await freshNamespace(client, "stop");
    const cloud = new FakeCloud();
    let launchSignal: AbortSignal | undefined;
    cloud.launchRun = (ctx: EnvContext) => {
      launchSignal = ctx.signal;
      return new Promise<RunDescription>(() => undefined); // never answers, ignores the signal
    };
    const op = await startWithMetrics(cloud, { namespaces: [ns] });
    await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce"));
    await client.create(RunResource, runManifest(ns, "r", "ce"));
    await waitFor("launch in flight", async () => launchSignal !== undefined);
    await op.operator.stop(2_000); // resolves although the launch never ends (the test's own timeout bounds this)
    expect(launchSignal?.aborted).toBe(true);
  });

  it("stop() sends the Events still waiting for up to 3 s, counts the rest dropped once, and sends nothing afterwards", async () => {
    const ns = await freshNamespace(client, "drain");
    const op = await startWithMetrics(new FakeCloud(), { namespaces: [ns] });
    const regarding = { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "r", namespace: ns, uid: `drain-${ns}` } };
    // More than the recorder's pace (a burst of 50, then 20 a second) can send before stop's
    // deadline, however long its phases before the drain take.
    const total = 300;
    const recorded = Promise.all(Array.from({ length: total }, (_, i) => op.operator.events.record(regarding, "Normal", "Probe", "Probe", `event ${i}`)));
    const stopping = Date.now();
    await op.operator.stop(10_000);
    // stop() waited for the drain's 3 s: Events were still waiting then.
    expect(Date.now() - stopping).toBeGreaterThanOrEqual(2_900);
    const counted = async (result: string): Promise<number> => sum(await op.metrics.text(), "vmforge_events_total", { result });
    const dropped = await counted("dropped");
    expect(dropped).toBeGreaterThan(0);
    // Every record settles (the dropped ones when their pacing ends); those whose request was out
    // at the deadline count as created, not also as dropped.
    await recorded;
    const created = await counted("created");
    expect(created + dropped + (await counted("failed"))).toBe(total);
    expect(created).toBeGreaterThan(50);
    const listed = await client.list<KubeObject & { reason?: string }>(EventResource, { namespace: ns });
    expect(listed.items.filter((e) => e.reason === "Probe")).toHaveLength(created);
    await op.operator.events.record(regarding, "Normal", "Probe", "Probe", "after the stop");
    expect(await counted("dropped")).toBe(dropped + 1);
  });

  it("the operator process exits 0 on SIGTERM while the cloud hangs", async () => {
    const ns = await freshNamespace(client, "sigterm");
    const child = spawn(process.execPath, ["--import", "tsx", "test/support/operator-process.ts"], {
      env: {
        ...process.env, KUBECONFIG: kubeconfigPath(), POD_NAME: "sigterm-test", VMFORGE_NAMESPACES: ns,
        VMFORGE_LEADER_ELECTION: "false", VMFORGE_POLL_INTERVAL: "1s", VMFORGE_METRICS_ADDRESS: "127.0.0.1:0",
        VMFORGE_LOG_LEVEL: "warn", VMFORGE_SHUTDOWN_TIMEOUT: "3s", VMFORGE_TEST_HANG_LAUNCH: "1",
      },
      stdio: ["ignore", "inherit", "inherit"],
    });
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
    try {
      await client.create(ComputeEnvironmentResource, ceManifest(ns, "ce"));
      await client.create(RunResource, runManifest(ns, "r", "ce"));
      await waitFor("the Run's launch decided (launch in flight)", async () => {
        const r = await client.get<Run>(RunResource, ns, "r");
        return !!r && launchDecided(r);
      }, 60_000);
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  });
});
