// GitOps health of the operator's real objects. The operator (in-process, with the in-memory
// FakeCloud behind the provider interface) drives ComputeEnvironments and Runs through every phase
// on the real kube-apiserver; each object, as stored, is judged by the shipped Argo CD Lua health
// checks (run on gopher-lua, Argo CD's interpreter) and by kstatus as Flux computes it.
//
// With VMFORGE_WRITE_STATUS_FIXTURES=1 the observed objects are also written to
// test/fixtures/status/, which the unit test test/unit/deploy/gitops-health.test.ts replays without
// a cluster; it fails when a fixture no longer matches what this test records.
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource, type ComputeEnvironment, type Run } from "../../src/api/types.js";
import { CloudError, type EnvContext, type RunDescription } from "../../src/cloud/provider.js";
import { SecretResource } from "../../src/controllers/shared.js";
import { FakeCloud } from "../support/fake-cloud.js";
import { installCrds, startOperator, waitFor, type RunningOperator } from "../support/operator.js";
import { argoHealth } from "../harness/argocd-lua.js";
import { deleteNamespace, freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import { EXPECTED, FIXTURES_DIR, fixtureOf, healthProjection, LUA } from "../support/status-fixtures.js";
import { Registry } from "prom-client";
import { registerOperatorMetrics } from "../../src/metrics.js";
import { kstatusOf } from "../support/kstatus.js";
import { setCloudCallObserver } from "../../src/cloud/call-metrics.js";

/** FakeCloud whose machines stay "pending" while their Run's name is held (to observe Launching). */
class HoldingCloud extends FakeCloud {
  readonly hold = new Set<string>();
  override async describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription | undefined>> {
    const held = runs.filter((r) => this.hold.has(r.metadata.name ?? ""));
    const out = await super.describeRuns(ctx, runs.filter((r) => !this.hold.has(r.metadata.name ?? "")));
    for (const r of held) {
      const m = this.machineOf(r.metadata.uid ?? "");
      out.set(r.metadata.uid ?? "", m ? { instanceId: m.id, state: "pending", launchedAt: m.launchedAt } : undefined);
    }
    return out;
  }
}

let client: KubeClient;
let cloud: HoldingCloud;
let op: RunningOperator | undefined;
let ns = "";
let unwatched = "";
const observed = new Map<string, ComputeEnvironment | Run>();

const ce = (name: string, extra: Record<string, unknown> = {}): ComputeEnvironment => ({
  apiVersion: "vmforge.dev/v1alpha1",
  kind: "ComputeEnvironment",
  metadata: { name, namespace: ns },
  spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://vmforge-test-bucket/work" }, ...extra } as ComputeEnvironment["spec"],
});
const run = (name: string, ceName: string, extra: Record<string, unknown> = {}): Run => ({
  apiVersion: "vmforge.dev/v1alpha1",
  kind: "Run",
  metadata: { name, namespace: ns },
  spec: { computeEnvironmentRef: { name: ceName }, pipeline: { repository: "https://github.com/nextflow-io/hello" }, ...extra } as Run["spec"],
});
const cond = (o: ComputeEnvironment | Run | undefined, type: string) => o?.status?.conditions?.find((c) => c.type === type);
const getCe = (name: string, namespace = ns) => client.get<ComputeEnvironment>(ComputeEnvironmentResource, namespace, name);
const getRun = (name: string, namespace = ns) => client.get<Run>(RunResource, namespace, name);

async function ceWhen(name: string, what: string, ok: (c: ComputeEnvironment) => boolean): Promise<ComputeEnvironment> {
  return waitFor(`CE ${name} ${what}`, async () => {
    const c = await getCe(name);
    return c && ok(c) ? c : undefined;
  });
}
async function runWhen(name: string, what: string, ok: (r: Run) => boolean): Promise<Run> {
  return waitFor(`Run ${name} ${what}`, async () => {
    const r = await getRun(name);
    return r && ok(r) ? r : undefined;
  });
}
const inPhase = (name: string, phase: string) => runWhen(name, phase, (r) => r.status?.phase === phase);

beforeAll(async () => {
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "gitops");
  unwatched = await freshNamespace(client, "gitops-unwatched");
  cloud = new HoldingCloud();
  op = await startOperator(kubeconfigPath(), new Map([["aws", cloud]]), { namespaces: [ns] });
});

/** After the operator stopped: nothing would remove its finalizers, so the test does. */
async function releaseFinalizers(namespace: string): Promise<void> {
  for (const rt of [ComputeEnvironmentResource, RunResource, SecretResource]) {
    for (const o of (await client.list(rt, { namespace })).items) {
      if (o.metadata.finalizers?.length) await client.patch(rt, namespace, o.metadata.name ?? "", { metadata: { finalizers: null } }, "merge");
    }
  }
}

afterAll(async () => {
  await op?.stop();
  for (const n of [ns, unwatched]) {
    if (!n) continue;
    await releaseFinalizers(n);
    await deleteNamespace(n);
  }
  if (process.env.VMFORGE_WRITE_STATUS_FIXTURES === "1" && observed.size === Object.keys(EXPECTED).length) {
    const dir = FIXTURES_DIR;
    await mkdir(dir, { recursive: true });
    for (const [name, obj] of observed) await writeFile(join(dir, `${name}.json`), `${JSON.stringify(fixtureOf(obj), null, 2)}\n`);
  }
});

describe("objects the operator writes, judged as Argo CD and Flux judge them", () => {
  it("drives every phase of both kinds", async () => {
    // Neither kind seen by an operator yet: objects in a namespace it does not watch.
    await client.create(ComputeEnvironmentResource, { ...ce("fresh"), metadata: { name: "fresh", namespace: unwatched } });
    await client.create(RunResource, { ...run("fresh", "fresh"), metadata: { name: "fresh", namespace: unwatched } });
    observed.set("ce-new", (await getCe("fresh", unwatched))!);
    observed.set("run-new", (await getRun("fresh", unwatched))!);

    // ComputeEnvironment: Ready, then a spec change that the operator has not observed yet (the
    // stored object right after the edit, taken from the Ready one: the operator is too quick to
    // catch it live).
    await client.create(ComputeEnvironmentResource, ce("main"));
    const ready = await ceWhen("main", "Ready", (c) => cond(c, "Ready")?.status === "True");
    observed.set("ce-ready", ready);
    observed.set("ce-spec-changed", { ...structuredClone(ready), metadata: { ...structuredClone(ready.metadata), generation: (ready.metadata.generation ?? 1) + 1 } });

    // Retrying after a retryable cloud error: Reconciling.
    cloud.provisionError = CloudError.retryable("Throttling", "Rate exceeded");
    cloud.provisionErrorSticky = true;
    await client.create(ComputeEnvironmentResource, ce("busy"));
    observed.set("ce-reconciling", await ceWhen("busy", "Reconciling after a retryable error", (c) => cond(c, "Reconciling")?.status === "True" && cond(c, "Reconciling")?.reason === "Throttling"));
    // A terminal cloud error: Stalled.
    cloud.provisionError = CloudError.terminal("InvalidSpec", "spec.aws.amiId: ami-0123456789abcdef0 not found in eu-west-1");
    await client.patch(ComputeEnvironmentResource, ns, "busy", { spec: { aws: { amiId: "ami-0123456789abcdef0" } } }, "merge");
    observed.set("ce-stalled", await ceWhen("busy", "Stalled", (c) => cond(c, "Stalled")?.status === "True" && c.status?.observedGeneration === c.metadata.generation));

    // Runs. Pending: its CE is Stalled.
    await client.create(RunResource, run("waiting", "busy"));
    observed.set("run-pending", await runWhen("waiting", "Pending", (r) => r.status?.phase === "Pending" && r.status.reason === "ComputeEnvironmentNotReady"));
    cloud.provisionError = undefined;
    cloud.provisionErrorSticky = false;

    // Launching (machine held pending), then Running, then Succeeded.
    cloud.hold.add("ok");
    await client.create(RunResource, run("ok", "main"));
    observed.set("run-launching", await inPhase("ok", "Launching"));
    cloud.hold.delete("ok");
    const running = await inPhase("ok", "Running");
    observed.set("run-running", running);
    cloud.finish(running.metadata.uid ?? "", 0);
    observed.set("run-succeeded", await inPhase("ok", "Succeeded"));

    // Failed (exit code 3) and Cancelled.
    await client.create(RunResource, run("bad", "main"));
    const bad = await inPhase("bad", "Running");
    cloud.finish(bad.metadata.uid ?? "", 3);
    observed.set("run-failed", await inPhase("bad", "Failed"));
    await client.create(RunResource, run("stop", "main"));
    await inPhase("stop", "Running");
    await client.patch(RunResource, ns, "stop", { spec: { cancel: true } }, "merge");
    observed.set("run-cancelled", await inPhase("stop", "Cancelled"));

    // Deleting: a running Run whose machine does not go away at once, and its CE.
    cloud.hold.add("last");
    await client.create(RunResource, run("last", "main"));
    await inPhase("last", "Launching");
    await client.delete(RunResource, ns, "last");
    observed.set("run-deleting", await runWhen("last", "being deleted", (r) => !!r.metadata.deletionTimestamp));
    await client.delete(ComputeEnvironmentResource, ns, "main");
    observed.set("ce-deleting", await ceWhen("main", "Deleting", (c) => !!c.metadata.deletionTimestamp && c.status?.phase === "Deleting"));
    cloud.hold.delete("last");
    await waitFor("CE main gone", async () => (await getCe("main")) === undefined);

    expect([...observed.keys()].sort()).toEqual(Object.keys(EXPECTED).sort());
  });

  it("Argo CD's Lua health gives the expected answer for every observed object", async () => {
    expect(observed.size).toBe(Object.keys(EXPECTED).length);
    const wrong: string[] = [];
    for (const [name, obj] of observed) {
      const argo = await argoHealth(LUA[obj.kind as "ComputeEnvironment" | "Run"], obj);
      if (argo.status !== EXPECTED[name]!.argo) wrong.push(`${name}: Argo CD ${argo.status} (${argo.message}), expected ${EXPECTED[name]!.argo}`);
    }
    expect(wrong).toEqual([]);
  });

  it("Flux's kstatus gives the expected answer for every observed object", () => {
    expect(observed.size).toBe(Object.keys(EXPECTED).length);
    const wrong: string[] = [];
    for (const [name, obj] of observed) {
      const flux = kstatusOf(obj);
      if (flux.status !== EXPECTED[name]!.flux) wrong.push(`${name}: kstatus ${flux.status} (${flux.message}), expected ${EXPECTED[name]!.flux}`);
    }
    expect(wrong).toEqual([]);
  });

  it("the committed fixtures still show what the operator writes", async () => {
    expect(observed.size).toBe(Object.keys(EXPECTED).length);
    const stale: string[] = [];
    for (const [name, obj] of observed) {
      const committed = JSON.parse(await readFile(join(FIXTURES_DIR, `${name}.json`), "utf8")) as Parameters<typeof healthProjection>[0];
      const now = healthProjection(fixtureOf(obj) as Parameters<typeof healthProjection>[0]);
      if (JSON.stringify(healthProjection(committed)) !== JSON.stringify(now)) stale.push(`${name}: ${JSON.stringify(healthProjection(committed))} -> ${JSON.stringify(now)}`);
    }
    expect(stale, "re-record: VMFORGE_WRITE_STATUS_FIXTURES=1 vitest run --project integration test/integration/gitops-health.test.ts").toEqual([]);
  });

  it("the operator's metrics read the same objects from its caches", async () => {
    const registry = new Registry();
    registerOperatorMetrics(registry, { ces: () => op!.operator.ces.list(), runs: () => op!.operator.runs.list() });
    setCloudCallObserver(undefined);
    const text = await registry.metrics();
    // busy is Stalled on InvalidSpec; main was deleted; ok Succeeded, bad Failed, stop Cancelled, waiting Pending.
    expect(text).toContain(`vmforge_computeenvironment_stalled{namespace="${ns}",name="busy",provider="aws",reason="InvalidSpec"} 1`);
    expect(text).toContain(`vmforge_computeenvironment_ready{namespace="${ns}",name="busy",provider="aws"} 0`);
    for (const phase of ["Succeeded", "Failed", "Cancelled", "Pending"]) expect(text).toContain(`vmforge_runs{namespace="${ns}",phase="${phase}"} 1`);
  });
});
