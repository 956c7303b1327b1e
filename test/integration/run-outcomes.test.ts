/**
 * Issue 12, operator behaviour on the real kube-apiserver (+ kube-controller-manager) with the
 * in-memory FakeCloud: GitOps conditions of Runs, machines that outlive their pipeline, Spot
 * interruptions, Terminal cloud errors that must not loop, CE deletion that batches terminations,
 * records (or not) that cloud writes happened, and says what blocks disposal.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeApiError, KubeClient, type KubeObject, type ResourceType } from "../../src/engine/kube.js";
import { createLogger } from "../../src/engine/logger.js";
import { Reflector } from "../../src/engine/reflector.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { parseDuration } from "../../src/api/duration.js";
import { CloudError } from "../../src/cloud/provider.js";
import type { EnvContext, EnvObservation, LaunchHints, RunDescription } from "../../src/cloud/provider.js";
import { CLOUD_WRITES_ANNOTATION } from "../../src/controllers/computeenvironment/cloud-writes.js";
import { SECRET_IN_USE_FINALIZER, SecretResource } from "../../src/controllers/shared.js";
import { FakeCloud } from "../support/fake-cloud.js";
import { installCrds, startOperator, waitFor } from "../support/operator.js";
import type { RunningOperator } from "../support/operator.js";
import { freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import { EventResource, type EventObject } from "../../src/engine/events.js";
import { monotonicNow } from "../../src/engine/clock.js";

/** A FakeCloud that, like the AWS provider, announces its first cloud write (validation failures write nothing). */
class AnnouncingCloud extends FakeCloud {
  readonly announcesCloudWrites = true;
  /** provisionEnvironment fails like a validation read would, before any write. */
  readFailure: CloudError | undefined;
  /** sweepOrphans (the CE deletion's batched termination) fails with this while set. */
  sweepError: CloudError | undefined;
  /**
   * Exit probes of a running machine, as the providers pace them: for these Run UIDs only every
   * `every`th describe reads the log (readAttempted), refused while `refused` is set; the
   * describes in between say nothing of reads.
   */
  readonly probes = new Map<string, { every: number; refused: boolean; n: number }>();
  override async describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription | undefined>> {
    const out = await super.describeRuns(ctx, runs);
    for (const [uid, p] of this.probes) {
      const d = out.get(uid);
      if (!d || p.n++ % p.every !== 0) continue;
      d.readAttempted = true;
      if (p.refused) d.readError = { reason: "AccessDenied", message: "logs:GetLogEvents: not authorized to perform logs:GetLogEvents on the Run's log stream" };
    }
    return out;
  }
  /** The Run UIDs of each terminateRuns call (a batch). */
  readonly batches: string[][] = [];
  override async terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
    this.batches.push(runs.map((r) => r.metadata.uid ?? ""));
    return super.terminateRuns(ctx, runs);
  }
  /** sweepOrphans calls by CE name. */
  readonly sweepsOf = new Map<string, number>();
  /** Each sweepOrphans takes this long while set; its start and end (monotonic ms) are kept in sweepSpans. */
  sweepDelayMs = 0;
  readonly sweepSpans: { start: number; end: number }[] = [];
  override async sweepOrphans(ctx: EnvContext, live: Set<string>): Promise<string[]> {
    const ce = ctx.ce.metadata.name ?? "";
    this.sweepsOf.set(ce, (this.sweepsOf.get(ce) ?? 0) + 1);
    if (this.sweepDelayMs > 0) {
      const span = { start: monotonicNow(), end: 0 };
      await new Promise((r) => setTimeout(r, this.sweepDelayMs));
      span.end = monotonicNow();
      this.sweepSpans.push(span);
    }
    if (this.sweepError) {
      this.calls.sweep++;
      throw this.sweepError;
    }
    return super.sweepOrphans(ctx, live);
  }
  override async provisionEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    if (this.readFailure) {
      this.calls.provision++;
      throw this.readFailure;
    }
    await ctx.beforeCloudWrite?.();
    return super.provisionEnvironment(ctx);
  }
}

/**
 * A FakeCloud whose launch attempts follow a script: attempt n (from 1) is answered with
 * `script(n, hints)`'s error, thrown as the cloud's answer, or, when it gives none, by FakeCloud's
 * own launch. Each attempt's time and hints are kept.
 */
class ScriptedLaunchCloud extends FakeCloud {
  readonly attempts: number[] = [];
  readonly hints: (LaunchHints | undefined)[] = [];
  constructor(private readonly script: (n: number, hints: LaunchHints | undefined) => Error | undefined) {
    super();
  }
  override async launchRun(ctx: EnvContext, r: Run, hints?: LaunchHints): Promise<RunDescription> {
    this.hints.push(hints);
    const refusal = this.script(this.attempts.push(Date.now()), hints);
    if (!refusal) return super.launchRun(ctx, r);
    this.calls.launch++;
    throw refusal;
  }
}
/** Each launch makes (or finds) the Run's machine and its answer is lost; looks do not list the machine yet. */
class LosingCloud extends AnnouncingCloud {
  override async launchRun(ctx: EnvContext, run: Run, hints?: LaunchHints): Promise<RunDescription> {
    await super.launchRun(ctx, run, hints);
    throw CloudError.retryable("RequestTimeout", "ec2:RunInstances: the answer was lost", 1_000);
  }
  override async describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription | undefined>> {
    const out = await super.describeRuns(ctx, runs);
    for (const uid of out.keys()) out.set(uid, undefined);
    return out;
  }
}

const noCapacity = () => CloudError.capacity("InsufficientInstanceCapacity", "ec2:RunInstances: InsufficientInstanceCapacity: no capacity in any zone");

let client: KubeClient;
let cloud: AnnouncingCloud;
let op: RunningOperator;
let ns: string;

type Cond = { type: string; status: string; reason: string; message: string; observedGeneration?: number };
const cond = (o: { status?: { conditions?: Cond[] } } | undefined, type: string) => o?.status?.conditions?.find((c) => c.type === type);
// Each helper works in the suite's namespace unless given another (tests with an operator of their own use their own).
const getCe = (name: string, on = ns) => client.get<ComputeEnvironment>(ComputeEnvironmentResource, on, name);
const getRun = (name: string, on = ns) => client.get<Run>(RunResource, on, name);

async function readyCe(name: string, extra: Partial<ComputeEnvironment["spec"]> = {}, on = ns): Promise<ComputeEnvironment> {
  await client.create(ComputeEnvironmentResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name, namespace: on },
    spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://vmforge-test-bucket/work" }, ...extra } as ComputeEnvironment["spec"],
  });
  return waitFor(`CE ${name} Ready`, async () => {
    const ce = await getCe(name, on);
    return cond(ce, "Ready")?.status === "True" ? ce : undefined;
  });
}

async function run(name: string, ce: string, extra: Partial<Run["spec"]> = {}, on = ns): Promise<void> {
  await client.create(RunResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name, namespace: on },
    spec: { computeEnvironmentRef: { name: ce }, pipeline: { repository: "https://github.com/nextflow-io/hello" }, ...extra } as Run["spec"],
  });
}

const inPhase = (name: string, phase: string, timeoutMs = 30_000, on = ns) =>
  waitFor(`Run ${name} ${phase}`, async () => {
    const r = await getRun(name, on);
    return r?.status?.phase === phase ? r : undefined;
  }, timeoutMs);

async function events(name: string, on = ns): Promise<{ reason: string; note: string; type: string; series?: { count: number } }[]> {
  const list = await client.list<{ metadata: { name?: string }; regarding?: { name?: string }; reason: string; note: string; type: string; series?: { count: number } }>(EventResource, { namespace: on });
  return list.items.filter((e) => e.regarding?.name === name);
}

beforeAll(async () => {
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "outcomes");
  cloud = new AnnouncingCloud();
  op = await startOperator(kubeconfigPath(), new Map([["aws", cloud]]), { namespaces: [ns] });
});

afterAll(async () => {
  await op?.stop();
});

/**
 * Starts an operator (1 s poll) for `on` on a FakeCloud that accepts each machine and cannot place
 * it, makes CE `ceName` Ready and Run "unplaced" under it, and waits until the Run waits for
 * capacity with the unplaced machine on record. The caller stops the operator.
 */
async function waitingWithUnplaced(on: string, ceName: string, extra: Partial<Run["spec"]> = {}): Promise<{ fake: FakeCloud; op: RunningOperator; waiting: Run }> {
  const fake = new FakeCloud();
  fake.unplaced = { reason: "AllocationFailed", message: "Allocation failed. We do not have sufficient capacity for the requested VM size in this region." };
  const op = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [on], pollIntervalMs: 1_000 });
  try {
    await readyCe(ceName, {}, on);
    await run("unplaced", ceName, extra, on);
    const waiting = await waitFor("a capacity wait with the unplaced machine on record", async () => {
      const r = await getRun("unplaced", on);
      return r?.status?.phase === "Pending" && r.status.reason === "AllocationFailed" && (r.status.capacityWait?.refusals ?? 0) >= 1 && r.status.instance?.id ? r : undefined;
    }, 30_000, 100);
    return { fake, op, waiting };
  } catch (e) {
    await op.stop();
    throw e;
  }
}

describe("GitOps conditions of a Run (kstatus)", () => {
  it("active: Reconciling=True; Succeeded: Ready=True; Failed and Cancelled: Stalled=True with the reason", async () => {
    await readyCe("gitops");
    await run("ok", "gitops");
    await run("bad", "gitops");
    await run("stop", "gitops");
    const running = await inPhase("ok", "Running");
    expect(cond(running, "Reconciling")).toMatchObject({ status: "True" });
    expect(cond(running, "Stalled")?.status).toBe("False");
    expect(cond(running, "Ready")?.status).toBe("False");

    cloud.finish(running.metadata.uid ?? "", 0);
    const ok = await inPhase("ok", "Succeeded");
    expect(cond(ok, "Ready")?.status).toBe("True");
    expect(cond(ok, "Reconciling")?.status).toBe("False");
    expect(cond(ok, "Stalled")?.status).toBe("False");

    const bad = await inPhase("bad", "Running");
    cloud.finish(bad.metadata.uid ?? "", 2);
    const failed = await inPhase("bad", "Failed");
    expect(cond(failed, "Stalled")).toMatchObject({ status: "True", reason: "PipelineFailed" });
    expect(cond(failed, "Stalled")?.message).toContain("code 2");
    expect(cond(failed, "Ready")?.status).toBe("False");
    expect(cond(failed, "Reconciling")?.status).toBe("False");

    await inPhase("stop", "Running");
    await client.patch(RunResource, ns, "stop", { spec: { cancel: true } }, "merge");
    const cancelled = await inPhase("stop", "Cancelled");
    expect(cond(cancelled, "Stalled")).toMatchObject({ status: "True", reason: "Cancelled" });
    expect(cond(cancelled, "Reconciling")?.status).toBe("False");
  });
});

describe("the machine and the outcome", () => {
  it("a pipeline that ended on a machine that keeps running: outcome at once, machine terminated after the grace period, said in an Event and a condition", async () => {
    await readyCe("linger");
    await run("linger", "linger");
    const r = await inPhase("linger", "Running");
    const uid = r.metadata.uid ?? "";
    const before = cloud.calls.terminate;
    cloud.endWithoutShutdown(uid, 0);
    const done = await inPhase("linger", "Succeeded");
    expect(done.status?.exitCode).toBe(0);
    const lingered = await waitFor("MachineLingered condition", async () => {
      const x = await getRun("linger");
      return cond(x, "MachineLingered")?.status === "True" ? x : undefined;
    });
    expect(cond(lingered, "MachineLingered")?.message).toMatch(/still running .* after the pipeline ended/);
    await waitFor("machine terminated", async () => cloud.machineOf(uid)?.state === "terminated");
    expect(cloud.calls.terminate).toBeGreaterThan(before);
    // Sent with the CE's other Runs ending about then (a batch), not in a call of its own.
    expect(cloud.batches.some((b) => b.includes(uid))).toBe(true);
    // The Event follows the condition (no reconcile waits for it to be sent).
    await waitFor("MachineLingered Event", async () => (await events("linger")).some((e) => e.reason === "MachineLingered" && e.type === "Warning"), 10_000, 100);
    // Said once: two polls (300 ms each) later, still one Event with no repeat in its series.
    const polls = op.operator.tracker.pollCount;
    await waitFor("two more polls", async () => op.operator.tracker.pollCount >= polls + 2);
    const said = (await events("linger")).filter((e) => e.reason === "MachineLingered");
    expect(said.map((e) => e.series?.count ?? 1)).toEqual([1]);
    // Succeeded stays Ready.
    expect(cond(await getRun("linger"), "Ready")?.status).toBe("True");
  });

  it("a refused exit probe of a Running Run: LogReadBlocked stays between the probes (one Event), and goes once a probe reads", async () => {
    await readyCe("probed");
    await run("probed", "probed");
    const uid = (await inPhase("probed", "Running")).metadata.uid ?? "";
    const probe = { every: 3, refused: true, n: 0 };
    cloud.probes.set(uid, probe);
    await waitFor("LogReadBlocked", async () => cond(await getRun("probed"), "LogReadBlocked")?.status === "True");
    // Twelve polls (300 ms each), four of them probes: the condition is there at every look.
    const until = probe.n + 12;
    let looks = 0;
    while (probe.n < until) {
      const c = cond(await getRun("probed"), "LogReadBlocked");
      expect(c, `LogReadBlocked at poll ${probe.n}`).toMatchObject({ status: "True", reason: "AccessDenied" });
      looks++;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(looks).toBeGreaterThan(12);
    expect((await events("probed")).filter((e) => e.reason === "AccessDenied" && e.type === "Warning")).toHaveLength(1);
    probe.refused = false;
    await waitFor("LogReadBlocked gone", async () => cond(await getRun("probed"), "LogReadBlocked") === undefined);
    expect((await getRun("probed"))?.status?.phase).toBe("Running");
    cloud.probes.delete(uid);
    cloud.finish(uid, 0);
    await inPhase("probed", "Succeeded");
  });

  it("a Spot interruption is Failed/SpotInterrupted, not a pipeline failure", async () => {
    await readyCe("spot");
    await run("spot", "spot", { overrides: { spot: true } });
    const r = await inPhase("spot", "Running");
    cloud.interrupt(r.metadata.uid ?? "", "Spot interruption: Server.SpotInstanceTermination", true);
    const failed = await inPhase("spot", "Failed");
    expect(failed.status?.reason).toBe("SpotInterrupted");
    expect(cond(failed, "Stalled")).toMatchObject({ status: "True", reason: "SpotInterrupted" });
  });
});

describe("a new Run's first status", () => {
  it("is the run-ack controller's write alone: a Run without a phase is not the main reconciler's (nothing written, nothing launched), which takes it up after the acknowledgement", async () => {
    const ns2 = await freshNamespace(client, "ack-only");
    const cloud2 = new FakeCloud();
    const op2 = await startOperator(kubeconfigPath(), new Map([["aws", cloud2]]), { namespaces: [ns2] });
    try {
      await client.create(ComputeEnvironmentResource, {
        apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "ce", namespace: ns2 },
        spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://vmforge-test-bucket/work" } },
      } as ComputeEnvironment);
      await waitFor("CE Ready", async () => cond(await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns2, "ce"), "Ready")?.status === "True");
      // The acknowledgement is held; the main reconciles of the Run are counted.
      const rec = op2.operator.runReconciler;
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      const ack = rec.acknowledge.bind(rec);
      rec.acknowledge = async (key) => {
        await held;
        return ack(key);
      };
      const rc = op2.operator.runController;
      const enqueue = rc.enqueue.bind(rc);
      const enqueued: string[] = [];
      rc.enqueue = (k: string) => {
        enqueued.push(k);
        enqueue(k);
      };
      const main = rec.reconcile.bind(rec);
      const done: string[] = [];
      rec.reconcile = async (key, signal) => {
        const r = await main(key, signal);
        done.push(key);
        return r;
      };
      await client.create(RunResource, {
        apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "fresh", namespace: ns2 },
        spec: { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
      } as Run);
      await waitFor("the Run in the cache", async () => op2.operator.runs.get(`${ns2}/fresh`) !== undefined);
      await new Promise((r) => setTimeout(r, 1_000));
      // Not even queued for the main reconciler by its own events.
      expect(enqueued).not.toContain(`${ns2}/fresh`);
      // Something else can queue it (a CE's wake): that reconcile writes and launches nothing. It
      // runs once the held acknowledgement's wait is over (at most 10 s).
      enqueue(`${ns2}/fresh`);
      await waitFor("main reconcile of the Run", async () => done.includes(`${ns2}/fresh`), 30_000, 100);
      const r = await client.get<Run>(RunResource, ns2, "fresh");
      expect(r?.status?.phase).toBeUndefined();
      expect(r?.metadata.finalizers ?? []).toEqual([]);
      expect(cloud2.calls.launch).toBe(0);
      release();
      await waitFor("Run Running", async () => (await client.get<Run>(RunResource, ns2, "fresh"))?.status?.phase === "Running", 30_000);
      expect(cloud2.calls.launch).toBe(1);
    } finally {
      await op2.stop();
    }
  });
});

describe("a capacity wait across a restart of the operator", () => {
  it("is kept in the Run's status: the next operator tries again when the status says, counting on from the refusals so far, and the wait goes with the machine", async () => {
    const ns3 = await freshNamespace(client, "capacity-restart");
    let refusing = true;
    const full = new ScriptedLaunchCloud(() => (refusing ? noCapacity() : undefined));
    const poll = 1_500; // waits of 1.5, 3, 6, 12 s after the 1st, 2nd, 3rd, 4th refusal
    let opA: RunningOperator | undefined = await startOperator(kubeconfigPath(), new Map([["aws", full]]), { namespaces: [ns3], pollIntervalMs: poll });
    let opB: RunningOperator | undefined;
    const get = () => getRun("waiting", ns3);
    try {
      await readyCe("ce", {}, ns3);
      await run("waiting", "ce", {}, ns3);
      const third = await waitFor("3 refusals", async () => {
        const r = await get();
        return (r?.status?.capacityWait?.refusals ?? 0) >= 3 ? r : undefined;
      }, 30_000, 100);
      expect(third.status).toMatchObject({ phase: "Pending", reason: "InsufficientInstanceCapacity" });
      await opA.stop();
      opA = undefined;
      const notBefore = Date.parse(third.status?.capacityWait?.notBefore ?? "");
      const refusedBefore = third.status?.capacityWait?.refusals ?? 0;
      const attemptsBefore = full.attempts.length;
      // The third refusal asked for 6 s; a restart does not cut that short.
      expect(notBefore - Date.now()).toBeGreaterThan(1_000);
      opB = await startOperator(kubeconfigPath(), new Map([["aws", full]]), { namespaces: [ns3], pollIntervalMs: poll });
      const next = await waitFor("the next refusal", async () => {
        const r = await get();
        return (r?.status?.capacityWait?.refusals ?? 0) > refusedBefore ? r : undefined;
      }, 30_000, 100);
      expect(full.attempts.slice(attemptsBefore)).toHaveLength(1);
      expect(full.attempts[attemptsBefore]).toBeGreaterThanOrEqual(notBefore);
      // Counted on: the fourth refusal waits 12 s, not the 1.5 s of a first one.
      expect(next.status?.capacityWait?.refusals).toBe(refusedBefore + 1);
      expect(Date.parse(next.status?.capacityWait?.notBefore ?? "") - full.attempts[attemptsBefore]!).toBeGreaterThan(9_000);
      refusing = false;
      // Kept through the launch (the cloud may still fail to place the machine: the Azure tests
      // show that), gone once the machine runs.
      const running = await inPhase("waiting", "Running", 30_000, ns3);
      expect(running.status?.instance?.id).toBeTruthy();
      expect(running.status?.capacityWait).toBeUndefined();
    } finally {
      await opA?.stop();
      await opB?.stop();
    }
  }, 120_000);
});

describe("a capacity refusal the Run already waits for", () => {
  it("is not counted again: attempts that find the unplaced machine still being deleted keep the count and the last wait, and record no Event of their own", async () => {
    const ns6 = await freshNamespace(client, "capacity-known");
    // The first two attempts are refused; the next two find the machine still being deleted (known); then placed.
    const cloud6 = new ScriptedLaunchCloud((n, hints) => {
      if (n <= 2) return CloudError.capacity("ZonalAllocationFailed", "the machine could not be placed");
      if (n <= 4) return CloudError.capacity(hints?.capacityReason ?? "AllocationFailed", "the machine of an earlier attempt is still being deleted", undefined, undefined, hints?.capacityReason !== undefined);
      return undefined;
    });
    const op6 = await startOperator(kubeconfigPath(), new Map([["aws", cloud6]]), { namespaces: [ns6], pollIntervalMs: 1_000 });
    const counts = new Set<number>();
    try {
      await readyCe("ce", {}, ns6);
      await run("waiting", "ce", {}, ns6);
      const running = await waitFor("Run Running", async () => {
        const r = await getRun("waiting", ns6);
        if (r?.status?.capacityWait) counts.add(r.status.capacityWait.refusals);
        return r?.status?.phase === "Running" ? r : undefined;
      }, 30_000, 20);
      expect(cloud6.attempts).toHaveLength(5);
      // The reason of the refusal waited for reached the later attempts, and the count stayed at 2.
      expect(cloud6.hints.slice(1).map((h) => h?.capacityReason)).toEqual(Array(4).fill("ZonalAllocationFailed"));
      expect([...counts]).toEqual([1, 2]);
      // After the 2nd refusal the wait is 2 polls (2 s); the known ones wait as long again, not 1 poll.
      const gap = (i: number): number => cloud6.attempts[i]! - cloud6.attempts[i - 1]!;
      expect([gap(3), gap(4)].every((g) => g >= 1_900), `${gap(3)}, ${gap(4)} ms`).toBe(true);
      expect(running.status?.capacityWait).toBeUndefined();
      const events = (await client.list<EventObject>(EventResource, { namespace: ns6 })).items.filter((e) => e.regarding?.name === "waiting" && e.type === "Warning");
      expect(events.map((e) => e.reason)).toEqual(["ZonalAllocationFailed"]);
    } finally {
      await op6.stop();
    }
  });

  it("a machine accepted and not placed, whose deletion fails for now, is deleted by the next attempt, which waits again without counting a refusal", async () => {
    const ns9 = await freshNamespace(client, "capacity-undeleted");
    /** Keeps what each launch attempt was answered: a machine, or the refusal's count flag. */
    class Answers extends FakeCloud {
      answers: string[] = [];
      override async launchRun(ctx: EnvContext, r: Run, hints?: LaunchHints): Promise<RunDescription> {
        try {
          const d = await super.launchRun(ctx, r, hints);
          this.answers.push(d.state);
          return d;
        } catch (e) {
          this.answers.push(e instanceof CloudError && e.capacity ? `refused${e.known ? " (known)" : ""}` : "error");
          throw e;
        }
      }
    }
    const fake = new Answers();
    fake.unplaced = { reason: "AllocationFailed", message: "Allocation failed." };
    fake.terminateError = CloudError.retryable("Conflict", "the machine is busy");
    const op9 = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [ns9], pollIntervalMs: 1_000 });
    const counts = new Set<number>();
    const get = () => getRun("undeleted", ns9);
    try {
      await readyCe("ce", {}, ns9);
      await run("undeleted", "ce", {}, ns9);
      // Accepted, refused its place by a look; the Run's delete of it fails; the next attempt finds it and deletes it.
      await waitFor("the next attempt refused, finding the machine", async () => {
        const r = await get();
        if (r?.status?.capacityWait) counts.add(r.status.capacityWait.refusals);
        return fake.answers.some((a) => a.startsWith("refused"));
      }, 30_000, 50);
      fake.unplaced = undefined;
      fake.terminateError = undefined;
      await waitFor("Run Running", async () => {
        const r = await get();
        if (r?.status?.capacityWait) counts.add(r.status.capacityWait.refusals);
        return r?.status?.phase === "Running";
      }, 30_000, 50);
      expect(fake.answers).toEqual(["pending", "refused (known)", "pending"]);
      expect([...counts]).toEqual([1]);
    } finally {
      await op9.stop();
    }
  });

  it("after a launch whose answer was lost, the next attempt is not told the wait's reason: what it finds unplaced may be a new refusal", async () => {
    const ns8 = await freshNamespace(client, "capacity-lost");
    // Refused, then an answer lost, then placed.
    const cloud8 = new ScriptedLaunchCloud((n) =>
      n === 1 ? CloudError.capacity("ZonalAllocationFailed", "the machine could not be placed")
        : n === 2 ? CloudError.retryable("RequestTimeout", "the launch's answer was lost") : undefined);
    const op8 = await startOperator(kubeconfigPath(), new Map([["aws", cloud8]]), { namespaces: [ns8], pollIntervalMs: 1_000 });
    try {
      await readyCe("ce", {}, ns8);
      await run("lost", "ce", {}, ns8);
      await inPhase("lost", "Running", 30_000, ns8);
      expect(cloud8.hints.map((h) => h?.capacityReason)).toEqual([undefined, "ZonalAllocationFailed", undefined]);
    } finally {
      await op8.stop();
    }
  });

  it("an attempt that failed before the cloud was asked lost no answer: the attempt after it is told the wait's reason", async () => {
    const ns9 = await freshNamespace(client, "capacity-unasked");
    // Refused once, then placed; the refusal arms a failure of the next attempt before it asks the cloud.
    let armed = false;
    const cloud9 = new ScriptedLaunchCloud((n) => {
      if (n > 1) return undefined;
      armed = true;
      return CloudError.capacity("ZonalAllocationFailed", "the machine could not be placed");
    });
    const op9 = await startOperator(kubeconfigPath(), new Map([["aws", cloud9]]), { namespaces: [ns9], pollIntervalMs: 1_000 });
    // The reconciler's context (credentials, before the cloud is asked) fails once when armed.
    const rec = op9.operator.runReconciler as unknown as { context: (...a: unknown[]) => Promise<unknown> };
    const context = rec.context.bind(rec);
    let failedBeforeAsking = 0;
    rec.context = async (...a: unknown[]) => {
      if (armed) {
        armed = false;
        failedBeforeAsking++;
        throw CloudError.retryable("Throttling", "the credentials could not be read now");
      }
      return context(...a);
    };
    try {
      await readyCe("ce", {}, ns9);
      await run("unasked", "ce", {}, ns9);
      await inPhase("unasked", "Running", 30_000, ns9);
      expect(failedBeforeAsking).toBe(1);
      expect(cloud9.hints.map((h) => h?.capacityReason)).toEqual([undefined, "ZonalAllocationFailed"]);
    } finally {
      await op9.stop();
    }
  });
});

describe("a capacity wait that ends without a machine", () => {
  it("goes from the status with the Run (cancelled while waiting)", async () => {
    const ns5 = await freshNamespace(client, "capacity-cancel");
    const full = new ScriptedLaunchCloud(noCapacity);
    const opC = await startOperator(kubeconfigPath(), new Map([["aws", full]]), { namespaces: [ns5], pollIntervalMs: 1_000 });
    const get = () => getRun("waiting", ns5);
    try {
      await readyCe("ce", {}, ns5);
      await run("waiting", "ce", {}, ns5);
      await waitFor("2 refusals", async () => ((await get())?.status?.capacityWait?.refusals ?? 0) >= 2, 30_000, 100);
      await client.patch(RunResource, ns5, "waiting", { spec: { cancel: true } }, "merge");
      const cancelled = await inPhase("waiting", "Cancelled", 30_000, ns5);
      expect(cancelled.status?.reason).toBe("Cancelled");
      expect(cancelled.status?.capacityWait).toBeUndefined();
    } finally {
      await opC.stop();
    }
  });
});

describe("a cancel of a Run that has nothing in the cloud", () => {
  it("ends a Run waiting for a ComputeEnvironment that does not exist: Cancelled at once, not left waiting for it or for its timeout", async () => {
    await run("no-ce-cancelled", "never-made");
    const waiting = await waitFor("waiting for its CE", async () => {
      const r = await getRun("no-ce-cancelled");
      return r?.status?.reason === "ComputeEnvironmentNotFound" ? r : undefined;
    });
    expect(waiting.status?.phase).toBe("Pending");
    await client.patch(RunResource, ns, "no-ce-cancelled", { spec: { cancel: true } }, "merge");
    const cancelled = await inPhase("no-ce-cancelled", "Cancelled");
    expect(cancelled.status?.reason).toBe("Cancelled");
    expect(cond(cancelled, "Stalled")).toMatchObject({ status: "True", reason: "Cancelled" });
    expect(cancelled.metadata.finalizers ?? []).toEqual([]);
    expect(cloud.machineOf(cancelled.metadata.uid ?? "")).toBeUndefined();
  });
});

describe("the ComputeEnvironment's default Run timeout", () => {
  /** A FakeCloud whose termination calls are held until released: before they reach the cloud, or (`answerHeld`) after, with their answer held. */
  class GatedCloud extends FakeCloud {
    entered = 0;
    answerHeld = false;
    private open: () => void = () => undefined;
    private readonly gate = new Promise<void>((resolve) => (this.open = resolve));
    release(): void {
      this.open();
    }
    override async terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
      this.entered++;
      if (!this.answerHeld) {
        await this.gate;
        return super.terminateRuns(ctx, runs);
      }
      const answer = await super.terminateRuns(ctx, runs);
      await this.gate;
      return answer;
    }
  }

  it("a Run found past it ends Timeout even if the timeout is raised before its machine's termination is sent", async () => {
    // The batch's call is held until the timeout has been raised.
    const own = await freshNamespace(client, "raised");
    const slow = new GatedCloud();
    slow.launchedAgoMs = 10 * 60_000; // the machine has run for 10 minutes already
    const opR = await startOperator(kubeconfigPath(), new Map([["aws", slow]]), { namespaces: [own] });
    try {
      await readyCe("raised", { defaultRunTimeout: "5m" }, own);
      await run("raised", "raised", {}, own);
      // Found past 5 minutes after its launch: its termination is in the batch's call.
      await waitFor("the batch's call", async () => slow.entered === 1, 30_000, 50);
      const launched = await getRun("raised", own);
      expect(launched?.status?.instance?.id).toBeTruthy();
      await client.patch(ComputeEnvironmentResource, own, "raised", { spec: { defaultRunTimeout: "1h" } }, "merge");
      await waitFor("the operator's cache has the new timeout", async () => opR.operator.ces.get(`${own}/raised`)?.spec.defaultRunTimeout === "1h", 10_000, 50);
      slow.release();
      const failed = await inPhase("raised", "Failed", 30_000, own);
      expect(failed.status?.reason).toBe("Timeout");
      expect(failed.status?.message).toContain("timeout of 5m");
      expect(slow.calls.terminate).toBe(1);
      expect(["shutting-down", "terminated"]).toContain(slow.machineOf(launched?.metadata.uid ?? "")?.state);
    } finally {
      slow.release();
      await opR.stop();
    }
  });

  it("a Run whose timeout's termination went out from an operator that stopped before ending it ends Timeout under the next one, with the timeout it was found past", async () => {
    const own = await freshNamespace(client, "timed-out-down");
    const held = new GatedCloud();
    held.answerHeld = true; // the machine is terminated; the answer never reaches the first operator
    held.launchedAgoMs = 10 * 60_000;
    let opA: RunningOperator | undefined = await startOperator(kubeconfigPath(), new Map([["aws", held]]), { namespaces: [own], pollIntervalMs: 1_000 });
    let opB: RunningOperator | undefined;
    try {
      await readyCe("ce", { defaultRunTimeout: "5m" }, own);
      await run("late", "ce", {}, own);
      await waitFor("the termination sent", async () => held.entered === 1, 30_000, 50);
      const sent = await getRun("late", own);
      const uid = sent?.metadata.uid ?? "";
      expect(["Launching", "SettingUp", "Running"]).toContain(sent?.status?.phase); // not ended yet
      expect(cond(sent, "TimedOut")).toMatchObject({ status: "True", reason: "Timeout" });
      expect(sent?.status?.message).toContain("being terminated");
      expect(cond(sent, "Ready")).toMatchObject({ status: "False", message: sent?.status?.message });
      expect(["Launching", "SettingUp", "Running"]).toContain(cond(sent, "Ready")?.reason); // not ended yet: the reason the phase had
      await opA.stop();
      opA = undefined;
      held.release(); // the stopped operator's call answers now, to no one; the next one's calls are not held
      expect(["shutting-down", "terminated"]).toContain(held.machineOf(uid)?.state);
      // While no operator runs, the timeout is raised past the machine's 10 minutes.
      await client.patch(ComputeEnvironmentResource, own, "ce", { spec: { defaultRunTimeout: "1h" } }, "merge");
      opB = await startOperator(kubeconfigPath(), new Map([["aws", held]]), { namespaces: [own], pollIntervalMs: 1_000 });
      const ended = await waitFor("Run late ended", async () => {
        const r = await getRun("late", own);
        return r?.status?.phase === "Failed" ? r : undefined;
      }, 30_000, 50);
      expect(ended.status?.reason).toBe("Timeout");
      expect(ended.status?.message).toContain("timeout of 5m");
      expect(cond(ended, "Stalled")?.reason).toBe("Timeout");
    } finally {
      held.release();
      await opA?.stop();
      await opB?.stop();
    }
  });

  it("a Run cancelled while its timeout's termination is on its way ends Cancelled, and no longer says TimedOut", async () => {
    const own = await freshNamespace(client, "timed-out-cancel");
    const slow = new GatedCloud(); // the termination's call is held before it reaches the cloud
    slow.launchedAgoMs = 10 * 60_000;
    const opC = await startOperator(kubeconfigPath(), new Map([["aws", slow]]), { namespaces: [own], pollIntervalMs: 1_000 });
    try {
      await readyCe("ce", { defaultRunTimeout: "5m" }, own);
      await run("cancelled", "ce", {}, own);
      await waitFor("the termination's call", async () => slow.entered === 1, 30_000, 50);
      expect(cond(await getRun("cancelled", own), "TimedOut")?.status).toBe("True");
      await client.patch(RunResource, own, "cancelled", { spec: { cancel: true } }, "merge");
      // Once the operator's cache has the cancel, every reconcile of the Run takes it (before it follows the machine).
      await waitFor("the cancel in the operator's cache", async () => opC.operator.runs.get(`${own}/cancelled`)?.spec.cancel === true, 10_000, 50);
      slow.release();
      const ended = await inPhase("cancelled", "Cancelled", 30_000, own);
      expect(ended.status?.reason).toBe("Cancelled");
      expect(cond(ended, "TimedOut")).toBeUndefined();
      expect(cond(ended, "Stalled")?.reason).toBe("Cancelled");
    } finally {
      slow.release();
      await opC.stop();
    }
  });

  /**
   * A Run (named as its namespace prefix) Running for 10 minutes under a CE of the same name with a
   * 1h timeout, then its operator stopped: the test changes the world, then starts the next one.
   */
  const runningThenDown = async <C extends FakeCloud = FakeCloud>(name: string, fake: C = new FakeCloud() as C): Promise<{ own: string; fake: C; uid: string }> => {
    const own = await freshNamespace(client, name);
    fake.launchedAgoMs = 10 * 60_000; // its machine started 10 minutes ago
    const opA = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [own] });
    try {
      await readyCe(name, { defaultRunTimeout: "1h" }, own);
      await run(name, name, {}, own);
      return { own, fake, uid: (await inPhase(name, "Running", 30_000, own)).metadata.uid ?? "" };
    } finally {
      await opA.stop();
    }
  };

  it("a Run whose pipeline ended while no operator ran, found past its timeout by the next operator whose first two looks fail, ends with the pipeline's outcome, not Timeout", async () => {
    const { own, fake, uid } = await runningThenDown("late");
    let opB: RunningOperator | undefined;
    try {
      // While no operator runs the pipeline ends, and the CE's timeout is lowered below the Run's 10 minutes.
      fake.finish(uid, 0);
      await client.patch(ComputeEnvironmentResource, own, "late", { spec: { defaultRunTimeout: "5m" } }, "merge");
      const terminations = fake.calls.terminate;
      // The next operator's first look comes 3 s after its start, its first reconcile of the Run
      // before; that look fails (throttled), and so does the next: the Run is looked at the third time.
      fake.describeError = CloudError.retryable("Throttling", "ec2:DescribeInstances: Rate exceeded");
      opB = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [own], pollIntervalMs: 3_000 });
      const b = opB;
      await waitFor("two polls of the next operator", async () => b.operator.tracker.pollCount >= 2, 30_000, 50);
      fake.describeError = undefined;
      const done = await waitFor("Run late ended", async () => {
        const r = await getRun("late", own);
        return r?.status?.phase === "Succeeded" || r?.status?.phase === "Failed" ? r : undefined;
      }, 30_000);
      expect([done.status?.phase, done.status?.reason, done.status?.exitCode]).toEqual(["Succeeded", "Succeeded", 0]);
      expect(fake.calls.terminate - terminations).toBe(0);
    } finally {
      await opB?.stop();
    }
  });

  it("a Run past its timeout that the next operator cannot look at (every describe fails) is timed out after its first looks, not waited on forever", async () => {
    /** Keeps how many looks (describes, failed ones too) had been asked for when each termination was sent. */
    class Counting extends FakeCloud {
      looksAtTermination: number[] = [];
      override async terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
        this.looksAtTermination.push(this.describes.length);
        return super.terminateRuns(ctx, runs);
      }
    }
    const { own, fake, uid } = await runningThenDown("blind", new Counting());
    let opB: RunningOperator | undefined;
    try {
      await client.patch(ComputeEnvironmentResource, own, "blind", { spec: { defaultRunTimeout: "5m" } }, "merge");
      fake.describeError = CloudError.retryable("Throttling", "ec2:DescribeInstances: Rate exceeded");
      const looksBefore = fake.describes.length;
      opB = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [own], pollIntervalMs: 1_000 });
      const failed = await inPhase("blind", "Failed", 30_000, own);
      expect(failed.status?.reason).toBe("Timeout");
      // Terminated once the next operator's first 3 looks had failed, not before (a 4th or 5th may
      // have been asked for by the time the Run's reconcile, on its own 1 s beat, sent the termination).
      expect(fake.looksAtTermination).toHaveLength(1);
      expect(fake.looksAtTermination[0]! - looksBefore).toBeGreaterThanOrEqual(3);
      expect(fake.looksAtTermination[0]! - looksBefore).toBeLessThanOrEqual(5);
      expect(["shutting-down", "terminated"]).toContain(fake.machineOf(uid)?.state);
    } finally {
      fake.describeError = undefined;
      await opB?.stop();
    }
  });

  it("a Run past its timeout whose outcome was on its way at the last look is timed out once looks fail for 3 polls: an old look does not hold the timeout off", async () => {
    const { own, fake } = await runningThenDown("stale");
    const uid = (await getRun("stale", own))?.metadata.uid ?? "";
    let opB: RunningOperator | undefined;
    try {
      fake.endAwaitingOutcome(uid);
      await client.patch(ComputeEnvironmentResource, own, "stale", { spec: { defaultRunTimeout: "5m" } }, "merge");
      opB = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [own], pollIntervalMs: 1_000 });
      const b = opB;
      // Awaited through 3 looks, not timed out.
      await waitFor("the Run waiting for its outcome through 3 looks", async () => {
        const r = await getRun("stale", own);
        if (r?.status?.phase !== "Running") throw new Error(`${r?.status?.phase}/${r?.status?.reason}: ${r?.status?.message}`);
        return b.operator.tracker.pollCount >= 3 && r.status.message?.includes("waiting for the pipeline's outcome");
      }, 30_000, 100);
      const failedFrom = b.operator.tracker.pollCount;
      fake.describeError = CloudError.retryable("Throttling", "ec2:DescribeInstances: Rate exceeded");
      const failed = await inPhase("stale", "Failed", 30_000, own);
      expect(failed.status?.reason).toBe("Timeout");
      // The last good look was the poll in progress when the looks began to fail, or the one before:
      // 3 failed polls after it take 3 more at least.
      expect(b.operator.tracker.pollCount - failedFrom).toBeGreaterThanOrEqual(3);
    } finally {
      fake.describeError = undefined;
      await opB?.stop();
    }
  });

  it("a Run waiting for capacity with an unplaced machine on record, past its timeout when the next operator finds its CE being deleted, ends as the deletion ends it (Cancelled, ComputeEnvironmentDeleted), as a launched Run would", async () => {
    const ns8 = await freshNamespace(client, "capacity-deleting");
    const { fake, op, waiting } = await waitingWithUnplaced(ns8, "leaving", { timeout: "1m" });
    let opA: RunningOperator | undefined = op;
    let opC: RunningOperator | undefined;
    try {
      const uid = waiting.metadata.uid ?? "";
      await opA.stop();
      opA = undefined;
      // Deleted while no operator runs: its finalizer holds it, being deleted.
      await client.delete(ComputeEnvironmentResource, ns8, "leaving");
      expect((await getCe("leaving", ns8))?.metadata.deletionTimestamp).toBeTruthy();
      const past = Date.parse(waiting.metadata.creationTimestamp ?? "") + 60_000 + 1_000;
      await new Promise((r) => setTimeout(r, Math.max(0, past - Date.now())));
      expect((await getRun("unplaced", ns8))?.status?.phase).toBe("Pending");
      opC = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [ns8], pollIntervalMs: 1_000 });
      const ended = await inPhase("unplaced", "Cancelled", 30_000, ns8);
      expect(ended.status?.reason).toBe("ComputeEnvironmentDeleted");
      expect(cond(ended, "TimedOut")).toBeUndefined();
      expect(["shutting-down", "terminated"]).toContain(fake.machineOf(uid)?.state);
      await waitFor("CE gone", async () => (await getCe("leaving", ns8)) === undefined);
    } finally {
      await opA?.stop();
      await opC?.stop();
    }
  }, 150_000);

  /**
   * A Run ("lost", 1m timeout) under a new CE of this name whose launch answers are all lost (no
   * machine recorded, one made), found past its timeout: the timeout decided (TimedOut) and its
   * termination refused for good (AccessDenied), so it is still Pending. Refused until the test
   * calls `lift`; with `refuseSweep` the CE deletion's batched termination is refused as well.
   * `end` lifts both and stops the operator.
   */
  const timedOutUnanswered = async (
    own: string,
    ceName: string,
    opts: { refuseSweep?: boolean } = {},
  ): Promise<{ fake: LosingCloud; op: RunningOperator; uid: string; lift: () => void; end: () => Promise<void> }> => {
    const fake = new LosingCloud();
    fake.terminateError = CloudError.terminal("AccessDenied", "ec2:TerminateInstances: access denied");
    const op = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [own], pollIntervalMs: 1_000 });
    try {
      await readyCe(ceName, {}, own);
      await run("lost", ceName, { timeout: "1m" }, own);
      const held = await waitFor("the timeout decided, its termination refused, the Run still Pending", async () => {
        const r = await getRun("lost", own);
        if (r?.status?.phase === "Pending" && cond(r, "TimedOut")?.status === "True" && cond(r, "MachineTerminationBlocked")?.status === "True") return r;
        throw new Error(`${r?.status?.phase}/${r?.status?.reason}: ${JSON.stringify(r?.status?.conditions?.map((c) => [c.type, c.status, c.reason]))}`);
      }, 150_000, 200);
      const uid = held.metadata.uid ?? "";
      expect(held.status?.instance?.id).toBeUndefined();
      // A machine was made, and the answers of its launches (more than one) were lost.
      expect(["pending", "running"]).toContain(fake.machineOf(uid)?.state);
      expect(fake.calls.launch).toBeGreaterThan(1);
      if (opts.refuseSweep) fake.sweepError = CloudError.terminal("AccessDenied", "ec2:TerminateInstances: access denied");
      const lift = (): void => {
        fake.sweepError = undefined;
        fake.terminateError = undefined;
      };
      const end = async (): Promise<void> => {
        lift();
        await op.stop();
      };
      return { fake, op, uid, lift, end };
    } catch (e) {
      await op.stop();
      throw e;
    }
  };

  /** Waits until the Run's own termination has been sent (and refused) once more than `before` times. */
  const refusedAgain = (fake: FakeCloud, uid: string, before: number) =>
    waitFor("the Run's termination refused again", async () => fake.terminatedUids.filter((u) => u === uid).length > before, 45_000, 100);
  const sentFor = (fake: FakeCloud, uid: string) => fake.terminatedUids.filter((u) => u === uid).length;

  it("a Run whose launch answers were lost (no machine recorded), its timeout decided and its termination refused, then its CE deleted, ends as the deletion ends it (Cancelled, ComputeEnvironmentDeleted) once its machine's termination goes through, and no longer says TimedOut", async () => {
    const own = await freshNamespace(client, "decided-deleted");
    // The CE deletion's own termination of its machines is refused as well, as the cloud would.
    const { fake, uid, lift, end } = await timedOutUnanswered(own, "closing", { refuseSweep: true });
    try {
      await client.delete(ComputeEnvironmentResource, own, "closing");
      await waitFor("CE closing Stalled", async () => cond(await getCe("closing", own), "Stalled")?.status === "True");
      // Nothing could stop the machine: the Run, having tried again since, does not end.
      await refusedAgain(fake, uid, sentFor(fake, uid));
      const waiting = await getRun("lost", own);
      expect(waiting?.status?.phase).toBe("Pending");
      expect(["pending", "running"]).toContain(fake.machineOf(uid)?.state);
      const sent = sentFor(fake, uid);
      lift();
      const ended = await inPhase("lost", "Cancelled", 90_000, own);
      expect(sentFor(fake, uid)).toBeGreaterThan(sent);
      expect(ended.status?.reason).toBe("ComputeEnvironmentDeleted");
      expect(cond(ended, "TimedOut")).toBeUndefined();
      expect(["shutting-down", "terminated"]).toContain(fake.machineOf(uid)?.state);
      await waitFor("CE gone", async () => (await getCe("closing", own)) === undefined, 60_000);
    } finally {
      await end();
    }
  }, 300_000);

  it("a Run whose launch answers were lost (no machine recorded), its timeout decided and its termination refused, then its CE removed by force while the operator runs, ends ComputeEnvironmentGone once the machine is terminated with what the CE last said, not Timeout", async () => {
    const own = await freshNamespace(client, "decided-stripped");
    const { fake, uid, lift, end } = await timedOutUnanswered(own, "stripped", { refuseSweep: true });
    try {
      await client.delete(ComputeEnvironmentResource, own, "stripped");
      await client.patch(ComputeEnvironmentResource, own, "stripped", { metadata: { finalizers: null } }, "merge");
      await waitFor("CE gone", async () => (await getCe("stripped", own)) === undefined);
      // The operator saw it go and keeps what it last said; the termination is still refused.
      await refusedAgain(fake, uid, sentFor(fake, uid));
      expect((await getRun("lost", own))?.status?.phase).toBe("Pending");
      expect(["pending", "running"]).toContain(fake.machineOf(uid)?.state);
      lift();
      const ended = await inPhase("lost", "Failed", 90_000, own);
      expect(ended.status?.reason).toBe("ComputeEnvironmentGone");
      expect(ended.status?.message).toContain("ComputeEnvironment stripped was removed while the Run was active");
      expect(ended.status?.message).toContain("terminates any machine the launch made");
      expect(cond(ended, "TimedOut")).toBeUndefined();
      expect(["shutting-down", "terminated"]).toContain(fake.machineOf(uid)?.state);
    } finally {
      await end();
    }
  }, 300_000);

  it("a Run whose launch answers were lost (no machine recorded), its timeout decided and its termination refused, then its CE removed by force while no operator ran, ends ComputeEnvironmentGone saying a machine may run and naming the Run's UID, not Timeout", async () => {
    const own = await freshNamespace(client, "decided-gone");
    const { fake, op, uid } = await timedOutUnanswered(own, "vanished");
    let opA: RunningOperator | undefined = op;
    let opB: RunningOperator | undefined;
    try {
      await opA.stop();
      opA = undefined;
      await client.delete(ComputeEnvironmentResource, own, "vanished");
      await client.patch(ComputeEnvironmentResource, own, "vanished", { metadata: { finalizers: null } }, "merge");
      await waitFor("CE gone", async () => (await getCe("vanished", own)) === undefined);
      const terminations = fake.calls.terminate;
      // The next operator never saw the CE: nothing it keeps says where the machine runs.
      opB = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [own], pollIntervalMs: 1_000 });
      const ended = await inPhase("lost", "Failed", 30_000, own);
      expect(ended.status?.reason).toBe("ComputeEnvironmentGone");
      expect(ended.status?.message).toContain("a machine the launch may have made");
      expect(ended.status?.message).toContain(uid);
      expect(cond(ended, "TimedOut")).toBeUndefined();
      expect(fake.calls.terminate).toBe(terminations);
    } finally {
      fake.terminateError = undefined;
      await opA?.stop();
      await opB?.stop();
    }
  }, 240_000);

  it("has a default, and bounds a Run that sets no timeout of its own", async () => {
    const ce = await readyCe("bounded", { defaultRunTimeout: "5m" });
    expect(ce.spec.defaultRunTimeout).toBe("5m");
    const dflt = await readyCe("defaulted");
    expect(dflt.spec.defaultRunTimeout).toBe("72h");
    cloud.launchedAgoMs = 10 * 60_000; // the machine has run for 10 minutes already
    try {
      await run("unbounded", "bounded");
      const failed = await inPhase("unbounded", "Failed");
      expect(failed.status?.reason).toBe("Timeout");
      expect(failed.status?.message).toContain("defaultRunTimeout");
      await waitFor("machine terminated", async () => cloud.machineOf(failed.metadata.uid ?? "")?.state === "terminated");
    } finally {
      cloud.launchedAgoMs = 0;
    }
  });
});

describe("an ending status write that does not go through", () => {
  it("a cancelled Run whose Cancelled write is refused ends, once writes go through, without its machine's termination sent again", async () => {
    const label = "vmforge-test/deny-status";
    const policy = `deny-run-status-${ns}`;
    const VAP: ResourceType = { group: "admissionregistration.k8s.io", version: "v1", plural: "validatingadmissionpolicies", kind: "ValidatingAdmissionPolicy", namespaced: false };
    const BINDING: ResourceType = { ...VAP, plural: "validatingadmissionpolicybindings", kind: "ValidatingAdmissionPolicyBinding" };
    // Status writes of a Run carrying the label are refused (an admission policy of the test's own).
    await client.create(VAP, {
      apiVersion: "admissionregistration.k8s.io/v1", kind: "ValidatingAdmissionPolicy", metadata: { name: policy },
      spec: {
        failurePolicy: "Fail",
        matchConstraints: { resourceRules: [{ apiGroups: ["vmforge.dev"], apiVersions: ["*"], operations: ["UPDATE"], resources: ["runs/status"] }] },
        validations: [{ expression: "false", message: "status writes of this Run are refused by the test" }],
      },
    } as KubeObject);
    await client.create(BINDING, {
      apiVersion: "admissionregistration.k8s.io/v1", kind: "ValidatingAdmissionPolicyBinding", metadata: { name: policy },
      spec: { policyName: policy, validationActions: ["Deny"], matchResources: { namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": ns } }, objectSelector: { matchLabels: { [label]: "true" } } } },
    } as KubeObject);
    try {
      await readyCe("refusedend");
      await run("refusedend", "refusedend");
      const r = await inPhase("refusedend", "Running");
      const uid = r.metadata.uid ?? "";
      await client.patch(RunResource, ns, "refusedend", { metadata: { labels: { [label]: "true" } } }, "merge");
      // The policy takes effect moments after it is made: a status write of the test's own is refused.
      await waitFor("the policy refuses the Run's status writes", async () => {
        const refused = await client.patch(RunResource, ns, "refusedend", { status: { message: "probe" } }, "merge", { subresource: "status" }).then(() => false, (e: unknown) => e instanceof KubeApiError && e.status === 422);
        return refused;
      }, 30_000, 200);
      await client.patch(RunResource, ns, "refusedend", { spec: { cancel: true } }, "merge");
      // The termination goes out; the Run's Cancelled write is refused, again at each retry.
      await waitFor("the machine's termination sent", async () => cloud.terminatedUids.includes(uid), 30_000, 50);
      const polls = op.operator.tracker.pollCount;
      await waitFor("three more polls", async () => op.operator.tracker.pollCount >= polls + 3, 10_000, 50);
      expect((await getRun("refusedend"))?.status?.phase).toBe("Running");
      await client.patch(RunResource, ns, "refusedend", { metadata: { labels: { [label]: null } } }, "merge");
      const ended = await inPhase("refusedend", "Cancelled");
      expect(ended.status?.reason).toBe("Cancelled");
      expect(cloud.terminatedUids.filter((u) => u === uid)).toHaveLength(1);
    } finally {
      await client.delete(BINDING, undefined, policy).catch(() => undefined);
      await client.delete(VAP, undefined, policy).catch(() => undefined);
    }
  });
});

describe("Terminal cloud errors do not loop", () => {
  it("a cancelled Run whose termination keeps failing for a while (throttled) is tried again after growing waits, says so from the 4th failure, then ends Cancelled", async () => {
    await readyCe("throttled");
    await run("throttled", "throttled");
    const uid = (await inPhase("throttled", "Running")).metadata.uid ?? "";
    const tries = () => cloud.terminatedUids.filter((u) => u === uid).length;
    cloud.terminateError = CloudError.retryable("Throttling", "ec2:TerminateInstances: Rate exceeded");
    try {
      await client.patch(RunResource, ns, "throttled", { spec: { cancel: true } }, "merge");
      await waitFor("the first try", async () => tries() > 0, 10_000, 50);
      await new Promise((r) => setTimeout(r, 6_000));
      // 1 s, 2 s, 4 s apart (each after the 250 ms gathering): 3 tries in these 6 s, not one per gathering.
      expect(tries()).toBeGreaterThanOrEqual(2);
      expect(tries()).toBeLessThanOrEqual(4);
      expect((await getRun("throttled"))?.status?.phase).toBe("Running");
      // The 4th failure in a row is said on the Run, with the cloud's reason, not only in the log.
      const said = await waitFor("MachineTerminationBlocked", async () => {
        const r = await getRun("throttled");
        return cond(r, "MachineTerminationBlocked")?.status === "True" ? r : undefined;
      }, 20_000, 100);
      expect(tries()).toBe(4);
      expect(cond(said, "MachineTerminationBlocked")?.reason).toBe("Throttling");
      expect(cond(said, "MachineTerminationBlocked")?.message).toContain("failed at least 4 times in a row");
      expect(cond(said, "MachineTerminationBlocked")?.message).toContain("Rate exceeded");
      expect(said.status?.phase).toBe("Running");
    } finally {
      cloud.terminateError = undefined;
    }
    await waitFor("its Event", async () => (await events("throttled")).some((e) => e.reason === "Throttling" && e.type === "Warning"), 90_000, 500);
    const cancelled = await inPhase("throttled", "Cancelled", 30_000);
    expect(cancelled.status?.reason).toBe("Cancelled");
    // The termination went through: the condition is gone.
    expect(cond(cancelled, "MachineTerminationBlocked")).toBeUndefined();
  });

  it("deleting a Run whose machine cannot be terminated (AccessDenied) says which permission is missing and retries slowly", async () => {
    await readyCe("denied");
    await run("denied", "denied");
    const r = await inPhase("denied", "Running");
    cloud.terminateError = CloudError.terminal("AccessDenied", "ec2:TerminateInstances: access denied; the operator's IAM policy must allow ec2:TerminateInstances");
    try {
      const before = cloud.calls.terminate;
      await client.delete(RunResource, ns, "denied");
      const stalled = await waitFor("Run denied Stalled", async () => {
        const x = await getRun("denied");
        return cond(x, "Stalled")?.status === "True" ? x : undefined;
      });
      expect(cond(stalled, "Stalled")?.reason).toBe("AccessDenied");
      expect(cond(stalled, "Stalled")?.message).toContain("ec2:TerminateInstances");
      expect(cond(stalled, "MachineTerminationBlocked")?.status).toBe("True");
      // Many polls later (300 ms each), the call was not repeated in a loop.
      const polls = cloud.calls.describe;
      await waitFor("10 more polls", async () => cloud.calls.describe >= polls + 10, 20_000);
      expect(cloud.calls.terminate - before).toBeLessThanOrEqual(2);
      expect((await events("denied")).some((e) => e.reason === "AccessDenied")).toBe(true);
    } finally {
      cloud.terminateError = undefined;
    }
    // Permission granted: the next (slow) try goes through and the Run goes away.
    await waitFor("Run denied gone", async () => (await getRun("denied")) === undefined, 30_000);
    expect(cloud.machineOf(r.metadata.uid ?? "")?.state).toBe("terminated");
  });
});

/** Every describe of the Runs' machines refused for now: the Runs cannot see their machines end. */
const DESCRIBE_THROTTLED = CloudError.retryable("RequestLimitExceeded", "ec2:DescribeInstances: Request limit exceeded.");

/**
 * For the deletion-pacing tests: an operator of its own (deletion look interval `deletionSweepMs`)
 * over a fresh namespace, its Ready CE `name` and `runs` Running Runs `name-0`.. (their UIDs).
 */
async function ownDeletionScene(
  name: string, deletionSweepMs: number, runs: number, extra: Partial<ComputeEnvironment["spec"]> = {},
): Promise<{ own: string; cloud: AnnouncingCloud; op: RunningOperator; uids: string[] }> {
  const own = await freshNamespace(client, name);
  const cloud = new AnnouncingCloud();
  const op = await startOperator(kubeconfigPath(), new Map([["aws", cloud]]), { namespaces: [own] }, { deletionSweepMs });
  try {
    await readyCe(name, extra, own);
    for (let i = 0; i < runs; i++) await run(`${name}-${i}`, name, {}, own);
    const uids: string[] = [];
    for (let i = 0; i < runs; i++) uids.push((await inPhase(`${name}-${i}`, "Running", 30_000, own)).metadata.uid ?? "");
    return { own, cloud, op, uids };
  } catch (e) {
    await op.stop();
    throw e;
  }
}

describe("ComputeEnvironment deletion", () => {
  it("terminates the CE's machines in batches, not one call per Run", async () => {
    await readyCe("bulk");
    const uids: string[] = [];
    cloud.launchedAgoMs = 10 * 60_000;
    try {
      for (let i = 0; i < 6; i++) await run(`bulk-${i}`, "bulk");
      for (let i = 0; i < 6; i++) uids.push((await inPhase(`bulk-${i}`, "Running")).metadata.uid ?? "");
    } finally {
      cloud.launchedAgoMs = 0;
    }
    const terminates = cloud.calls.terminate;
    const sweeps = cloud.calls.sweep;
    await client.delete(ComputeEnvironmentResource, ns, "bulk");
    await waitFor("CE bulk gone", async () => (await getCe("bulk")) === undefined, 60_000);
    for (let i = 0; i < 6; i++) expect((await getRun(`bulk-${i}`))?.status?.phase).toBe("Cancelled");
    expect(cloud.calls.terminate - terminates).toBe(0);
    expect(cloud.calls.sweep - sweeps).toBeGreaterThan(0);
    expect(uids.map((u) => cloud.machineOf(u)?.state)).toEqual(uids.map(() => "terminated"));
  });

  it("while its Runs are being stopped, a CE being deleted looks for machines to stop once per interval, not at every reconcile, and once more before its resources go", async () => {
    // An operator of its own, whose interval (2 minutes) no step of this test reaches: a second look is the last one.
    const { own, cloud: paced, op: pacedOp, uids } = await ownDeletionScene("paced", 120_000, 3);
    try {
      // (A Ready CE also looks for orphans after it converged: only the deletion's looks count here.)
      const before = paced.sweepsOf.get("paced") ?? 0;
      const looks = () => (paced.sweepsOf.get("paced") ?? 0) - before;
      // No look at the machines gets through for now: the Runs cannot see theirs end, so the CE waits for them.
      paced.describeError = DESCRIBE_THROTTLED;
      try {
        await client.delete(ComputeEnvironmentResource, own, "paced");
        await waitFor("the CE's first look at its machines", async () => (looks() > 0 ? true : undefined));
        // Three deletion polls (every 3 s) and the Runs' own changes come and go: the machines were
        // all stopped at the first look, and no other look is due. Throughout, the CE says it
        // waits for its Runs (the look that stopped their machines does not make it say otherwise).
        const reasons = new Set<string | undefined>();
        for (const end = Date.now() + 9_000; Date.now() < end;) {
          reasons.add(cond(await getCe("paced", own), "Reconciling")?.reason);
          await new Promise((r) => setTimeout(r, 200));
        }
        expect(looks()).toBe(1);
        // (Before the deletion's first status write, the Ready CE's own "Idle".)
        expect([...reasons].filter((r) => r !== "Idle")).toEqual(["StoppingRuns"]);
      } finally {
        paced.describeError = undefined;
      }
      await waitFor("CE paced gone", async () => (await getCe("paced", own)) === undefined, 60_000);
      // The Runs ended: one more look, the last, before the role and profile went.
      expect(looks()).toBeGreaterThanOrEqual(2);
      expect(uids.map((u) => paced.machineOf(u)?.state)).toEqual(uids.map(() => "terminated"));
      for (let i = 0; i < 3; i++) expect((await getRun(`paced-${i}`, own))?.status?.phase).toBe("Cancelled");
    } finally {
      await pacedOp.stop();
    }
  });

  it("the interval between a CE's looks at its machines runs from the end of a look: a look longer than the deletion poll is not followed by another one poll later", async () => {
    // Interval 6 s, deletion poll 3 s, each look 4 s: from a look's start, the next poll (7 s) would be due.
    const { own, cloud: slow, op: slowOp } = await ownDeletionScene("slowlook", 6_000, 2);
    try {
      // The Runs cannot see their machines end, so the CE keeps waiting for them and looking again.
      slow.describeError = DESCRIBE_THROTTLED;
      slow.sweepDelayMs = 4_000;
      try {
        await client.delete(ComputeEnvironmentResource, own, "slowlook");
        await waitFor("three looks at the machines", async () => (slow.sweepSpans.length >= 3 ? true : undefined), 60_000);
      } finally {
        slow.describeError = undefined;
        slow.sweepDelayMs = 0;
      }
      const spans = slow.sweepSpans.slice(0, 3);
      const gaps = spans.slice(1).map((s, i) => Math.round(s.start - (spans[i]?.end ?? 0)));
      for (const g of gaps) expect(g, `gaps ${gaps.join(", ")} ms`).toBeGreaterThanOrEqual(5_900);
      await waitFor("CE slowlook gone", async () => (await getCe("slowlook", own)) === undefined, 60_000);
    } finally {
      await slowOp.stop();
    }
  });

  it("under Retain, a look that failed counts as the interval's look: it is not tried (and its Warning recorded) again at every reconcile", async () => {
    const { own, cloud: kept, op: keptOp } = await ownDeletionScene("kept", 120_000, 2, { deletionPolicy: "Retain" } as Partial<ComputeEnvironment["spec"]>);
    try {
      const before = kept.sweepsOf.get("kept") ?? 0;
      const looks = () => (kept.sweepsOf.get("kept") ?? 0) - before;
      kept.describeError = DESCRIBE_THROTTLED;
      kept.sweepError = CloudError.retryable("RequestLimitExceeded", "ec2:TerminateInstances: Request limit exceeded.");
      try {
        await client.delete(ComputeEnvironmentResource, own, "kept");
        await waitFor("the CE's first look at its machines", async () => (looks() > 0 ? true : undefined));
        await new Promise((r) => setTimeout(r, 9_000));
        expect(looks()).toBe(1);
        expect(cond(await getCe("kept", own), "Reconciling")?.reason).toBe("StoppingRuns");
      } finally {
        kept.describeError = undefined;
        kept.sweepError = undefined;
      }
      await waitFor("CE kept gone", async () => (await getCe("kept", own)) === undefined, 60_000);
      // Recorded once per look: the failed first one and, the Runs ended, the last one (which got through).
      const warnings = (await events("kept", own)).filter((e) => e.reason === "RequestLimitExceeded");
      expect(warnings.map((e) => e.series?.count ?? 1)).toEqual([1]);
    } finally {
      await keptOp.stop();
    }
  });

  it("a CE that failed before any cloud write (no record) is released at once although its cloud calls fail", async () => {
    cloud.readFailure = CloudError.terminal("InvalidCredentials", "Secret x/y has no key \"secretAccessKey\" (or it is empty)");
    cloud.disposeError = CloudError.terminal("InvalidCredentials", "cannot dispose with these credentials");
    try {
      await client.create(ComputeEnvironmentResource, {
        apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "nowrite", namespace: ns },
        spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://vmforge-test-bucket/work" } } as ComputeEnvironment["spec"],
      });
      const stalled = await waitFor("CE nowrite Stalled", async () => {
        const ce = await getCe("nowrite");
        return cond(ce, "Stalled")?.status === "True" ? ce : undefined;
      });
      expect(stalled.metadata.annotations?.[CLOUD_WRITES_ANNOTATION]).toBeUndefined();
      // ResourcesProvisioned follows this generation: not a stale "creating".
      expect(cond(stalled, "ResourcesProvisioned")).toMatchObject({ status: "False", reason: "InvalidCredentials", observedGeneration: stalled.metadata.generation });
      const disposes = cloud.calls.dispose;
      await client.delete(ComputeEnvironmentResource, ns, "nowrite");
      await waitFor("CE nowrite gone", async () => (await getCe("nowrite")) === undefined, 15_000);
      expect(cloud.calls.dispose).toBe(disposes);
    } finally {
      cloud.readFailure = undefined;
      cloud.disposeError = undefined;
    }
  });

  it("with the record, a blocked disposal says what blocks it and how to unblock; Retain lets it go", async () => {
    const ce = await readyCe("blocked");
    expect(ce.metadata.annotations?.[CLOUD_WRITES_ANNOTATION]).toBeTruthy();
    cloud.disposeError = CloudError.terminal("AccessDenied", "iam:DeleteRole: access denied; the operator's IAM policy must allow iam:DeleteRole");
    try {
      await client.delete(ComputeEnvironmentResource, ns, "blocked");
      const stalled = await waitFor("CE blocked Stalled", async () => {
        const c = await getCe("blocked");
        return cond(c, "Stalled")?.status === "True" ? c : undefined;
      });
      const m = cond(stalled, "Stalled")?.message ?? "";
      expect(cond(stalled, "Stalled")?.reason).toBe("AccessDenied");
      expect(m).toContain("iam:DeleteRole");
      expect(m).toContain("To unblock");
      expect(m).toContain("deletionPolicy");
      await client.patch(ComputeEnvironmentResource, ns, "blocked", { spec: { deletionPolicy: "Retain" } }, "merge");
      await waitFor("CE blocked gone", async () => (await getCe("blocked")) === undefined, 30_000);
    } finally {
      cloud.disposeError = undefined;
    }
  });
});

describe("a ComputeEnvironment removed by force (its finalizer taken off)", () => {
  const strip = (name: string, namespace = ns) =>
    client.patch(ComputeEnvironmentResource, namespace, name, { metadata: { finalizers: null } }, "merge");

  it("while the operator runs: the machines its deletion could not stop are terminated with what the CE last said (its Secret deleted with it held until then), and the Runs can be deleted", async () => {
    type SecretObj = { metadata: { name: string; finalizers?: string[]; deletionTimestamp?: string } };
    const getSecret = () => client.get<SecretObj>(SecretResource, ns, "forced-creds");
    await client.create(SecretResource, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "forced-creds", namespace: ns },
      data: { accessKeyId: Buffer.from("AKIAEXAMPLE").toString("base64"), secretAccessKey: Buffer.from("not-a-real-key").toString("base64") },
    } as never);
    await readyCe("forced", { credentials: { secretRef: { name: "forced-creds" } } } as Partial<ComputeEnvironment["spec"]>);
    await waitFor("Secret held", async () => (await getSecret())?.metadata.finalizers?.includes(SECRET_IN_USE_FINALIZER));
    cloud.launchedAgoMs = 10 * 60_000; // old enough that the CE's own sweep is left to stop them
    let uid: string;
    try {
      await run("orphaned", "forced");
      uid = (await inPhase("orphaned", "Running")).metadata.uid ?? "";
    } finally {
      cloud.launchedAgoMs = 0;
    }
    cloud.sweepError = CloudError.terminal("AccessDenied", "ec2:TerminateInstances: access denied");
    try {
      await client.delete(ComputeEnvironmentResource, ns, "forced");
      await waitFor("CE forced Stalled", async () => cond(await getCe("forced"), "Stalled")?.status === "True");
      // The Run ended with its CE's deletion, which was to stop the machine and could not.
      const cancelled = await inPhase("orphaned", "Cancelled");
      expect(cancelled.status?.reason).toBe("ComputeEnvironmentDeleted");
      expect(cloud.machineOf(uid)?.state).toBe("running");
      const terminates = cloud.calls.terminate;
      // The Secret goes with the CE (as with `kubectl delete -f` of both): still held, so still readable.
      await client.delete(SecretResource, ns, "forced-creds");
      const ceUid = (await getCe("forced"))?.metadata.uid ?? "";
      expect(op.operator.ceReconciler.remembers(ceUid)).toBe(true);
      await strip("forced");
      await waitFor("CE forced gone", async () => (await getCe("forced")) === undefined);
      // Its finalizer never released, the operator forgets it all the same (its convergence, its Stalled answer).
      await waitFor("CE forced forgotten", async () => !op.operator.ceReconciler.remembers(ceUid), 10_000);
      const ended = await waitFor("the machine recorded terminated", async () => {
        const r = await getRun("orphaned");
        return r?.status?.instance?.state === "terminated" ? r : undefined;
      });
      expect(cloud.machineOf(uid)?.state).toBe("terminated");
      expect(cloud.terminatedUids.slice(-1)).toEqual([uid]);
      expect(cloud.calls.terminate).toBeGreaterThan(terminates);
      expect(ended.status?.phase).toBe("Cancelled");
      expect(cond(ended, "MachineTerminationBlocked")).toBeUndefined();
      // Stalled says the Run's end again, not the refusal that is over.
      expect(cond(ended, "Stalled")).toMatchObject({ status: "True", reason: ended.status?.reason, message: ended.status?.message });
    } finally {
      cloud.sweepError = undefined;
    }
    await client.delete(RunResource, ns, "orphaned");
    await waitFor("Run orphaned gone", async () => (await getRun("orphaned")) === undefined);
    // Nothing needs it any more: the hold goes, and so does the Secret.
    await waitFor("Secret released and gone", async () => (await getSecret()) === undefined);
  });

  it("a Run whose CE is deleted and stripped at once (it may see the deletion, or only the CE gone): its machine does not outlive it", async () => {
    await readyCe("yanked");
    await run("stranded", "yanked");
    const uid = (await inPhase("stranded", "Running")).metadata.uid ?? "";
    // Deleted and stripped at once: the Run may see the deletion or only the CE gone; either way
    // its machine must not be left running.
    await client.delete(ComputeEnvironmentResource, ns, "yanked");
    await strip("yanked");
    const ended = await waitFor("Run stranded ended", async () => {
      const r = await getRun("stranded");
      return r?.status?.phase === "Failed" || r?.status?.phase === "Cancelled" ? r : undefined;
    });
    expect(["ComputeEnvironmentGone", "ComputeEnvironmentDeleted"]).toContain(ended.status?.reason);
    await waitFor("the machine terminated", async () => cloud.machineOf(uid)?.state === "terminated");
    await waitFor("the machine recorded terminated", async () => (await getRun("stranded"))?.status?.instance?.state === "terminated");
  });

  it("and created again under the same name elsewhere: a machine launched under the removed CE stays with it and is terminated where it runs; the new CE neither follows it nor waits for it", async () => {
    await readyCe("reborn");
    const oldUid = (await getCe("reborn"))?.metadata.uid ?? "";
    cloud.launchedAgoMs = 10 * 60_000; // old enough that the CE's own sweep is left to stop it
    let uid: string;
    try {
      await run("first-life", "reborn");
      const launched = await inPhase("first-life", "Running");
      uid = launched.metadata.uid ?? "";
      expect(launched.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(oldUid);
    } finally {
      cloud.launchedAgoMs = 0;
    }
    expect(cloud.machineOf(uid)?.where).toBe("eu-west-1");
    const denied = CloudError.terminal("AccessDenied", "ec2:TerminateInstances: access denied");
    cloud.sweepError = denied;
    try {
      // Its deletion cannot stop the machine, and the Run's own termination is refused too, until
      // the name is taken again: the operator must not lose the machine meanwhile.
      await client.delete(ComputeEnvironmentResource, ns, "reborn");
      await inPhase("first-life", "Cancelled");
      cloud.terminateError = denied;
      await strip("reborn");
      await waitFor("CE reborn gone", async () => (await getCe("reborn")) === undefined);
    } finally {
      cloud.sweepError = undefined;
    }
    try {
      const reborn = await readyCe("reborn", { aws: { region: "eu-central-1", workDir: "s3://vmforge-test-bucket/work" } } as Partial<ComputeEnvironment["spec"]>);
      expect(reborn.metadata.uid).not.toBe(oldUid);
      await run("second-life", "reborn");
      const second = await inPhase("second-life", "Running");
      expect(cloud.machineOf(second.metadata.uid ?? "")?.where).toBe("eu-central-1");
      // The first Run keeps trying where its machine is (refused for now) and does not take the new
      // CE's region for the truth: a look from there would find no machine and call it gone.
      await waitFor("first-life's termination blocked", async () => cond(await getRun("first-life"), "MachineTerminationBlocked")?.status === "True");
      const polls = op.operator.tracker.pollCount;
      await waitFor("two more polls", async () => op.operator.tracker.pollCount >= polls + 2);
      expect((await getRun("first-life"))?.status?.instance?.state).toBe("running");
      expect(cloud.machineOf(uid)?.state).toBe("running");
      // The new CE is not held by a Run that is not its own: its deletion ends its own Run and goes.
      await client.delete(ComputeEnvironmentResource, ns, "reborn");
      await waitFor("the new CE gone", async () => (await getCe("reborn")) === undefined);
      await waitFor("second-life's machine terminated", async () => cloud.machineOf(second.metadata.uid ?? "")?.state === "terminated");
      expect(cloud.machineOf(uid)?.state).toBe("running");
    } finally {
      cloud.terminateError = undefined;
    }
    // Allowed again: the first machine is terminated in its own region, and recorded so.
    await waitFor("first-life's machine terminated", async () => cloud.machineOf(uid)?.state === "terminated", 30_000);
    const ended = await waitFor("first-life recorded terminated", async () => {
      const r = await getRun("first-life");
      return r?.status?.instance?.state === "terminated" ? r : undefined;
    });
    expect(ended.status?.phase).toBe("Cancelled");
    expect(cond(ended, "MachineTerminationBlocked")).toBeUndefined();
    expect(cond(ended, "Stalled")).toMatchObject({ status: "True", reason: ended.status?.reason, message: ended.status?.message });
    for (const name of ["first-life", "second-life"]) await client.delete(RunResource, ns, name);
    await waitFor("both Runs gone", async () => (await getRun("first-life")) === undefined && (await getRun("second-life")) === undefined);
  });

  it("a Run waiting for capacity when its CE is removed by force and created again elsewhere is decided anew under the new CE (its UID recorded) and launched there", async () => {
    const ns6 = await freshNamespace(client, "capacity-reborn");
    let refusing = true;
    const full = new ScriptedLaunchCloud(() => (refusing ? noCapacity() : undefined));
    let opA: RunningOperator | undefined = await startOperator(kubeconfigPath(), new Map([["aws", full]]), { namespaces: [ns6], pollIntervalMs: 1_000 });
    let opB: RunningOperator | undefined;
    try {
      const first = await readyCe("ce", {}, ns6);
      await run("waiting", "ce", {}, ns6);
      const refused = await waitFor("a capacity refusal", async () => {
        const r = await getRun("waiting", ns6);
        return (r?.status?.capacityWait?.refusals ?? 0) >= 1 ? r : undefined;
      }, 30_000, 100);
      expect(refused.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(first.metadata.uid);
      await opA.stop();
      opA = undefined;
      await client.delete(ComputeEnvironmentResource, ns6, "ce");
      await strip("ce", ns6);
      await waitFor("CE gone", async () => (await getCe("ce", ns6)) === undefined);
      // The new CE, in another region, is Ready before the next operator looks at the Run, so the
      // Run goes on from its capacity wait (not from a wait for its CE).
      const second = await client.create<ComputeEnvironment>(ComputeEnvironmentResource, {
        apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "ce", namespace: ns6 },
        spec: { provider: "aws", aws: { region: "eu-central-1", workDir: "s3://vmforge-test-bucket/work" } },
      } as ComputeEnvironment);
      // (Written here as the operator would: Ready, its resources in place, so that the next
      // operator's first converge of it does not make it Ready=False for a moment.)
      const at = new Date().toISOString();
      const ready = ["Ready", "ResourcesProvisioned"].map((type) => ({ type, status: "True", reason: type, message: "in place", lastTransitionTime: at, observedGeneration: second.metadata.generation }));
      await client.patch(ComputeEnvironmentResource, ns6, "ce", { status: { phase: "Ready", observedGeneration: second.metadata.generation, conditions: ready } }, "merge", { subresource: "status" });
      refusing = false;
      // Every status the Run takes from here on (a watch sees each write).
      const reasons: string[] = [];
      const watch = new Reflector<Run>({
        client, resource: RunResource, namespace: ns6, logger: createLogger({ level: "silent" }), resyncPeriodMs: 0,
        onEvent: (_t, r) => {
          if (r.metadata.name === "waiting" && r.status?.reason && reasons.at(-1) !== r.status.reason) reasons.push(r.status.reason);
        },
      });
      watch.start();
      try {
        await watch.waitForSync();
        opB = await startOperator(kubeconfigPath(), new Map([["aws", full]]), { namespaces: [ns6], pollIntervalMs: 1_000 });
        const launched = await waitFor("machine recorded", async () => {
          const r = await getRun("waiting", ns6);
          return r?.status?.instance?.id ? r : undefined;
        }, 30_000, 100);
        expect(launched.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(second.metadata.uid);
        expect(full.machineOf(launched.metadata.uid ?? "")?.where).toBe("eu-central-1");
        await inPhase("waiting", "Running", 30_000, ns6);
      } finally {
        await watch.stop();
      }
      // It went on from its capacity wait (tried again, decided anew), never waiting for its CE.
      expect(reasons[0]).toBe("InsufficientInstanceCapacity");
      expect(reasons).toContain("LaunchRetrying");
      expect(reasons).not.toContain("ComputeEnvironmentNotReady");
      expect(reasons).not.toContain("ComputeEnvironmentNotFound");
    } finally {
      await opA?.stop();
      await opB?.stop();
    }
  });

  /**
   * A Run waiting for capacity with an unplaced machine on record; its CE removed by force while no
   * operator runs; then (with `timeout`, the Run's own) past its timeout before the next operator,
   * which never saw the CE, starts. It must fail naming the machine and the Run's UID.
   */
  const unplacedCeGone = async (timeout?: string): Promise<void> => {
    const ns7 = await freshNamespace(client, "capacity-orphan");
    // The cloud accepts the machine and cannot place it: the Run waits for capacity with it on record.
    const { fake, op, waiting } = await waitingWithUnplaced(ns7, "nowhere", timeout ? { timeout } : {});
    let opA: RunningOperator | undefined = op;
    let opC: RunningOperator | undefined;
    try {
      const id = waiting.status?.instance?.id ?? "";
      expect(fake.machineOf(waiting.metadata.uid ?? "")?.id).toBe(id);
      // The CE is removed by force while no operator runs; the next operator never saw it.
      await opA.stop();
      opA = undefined;
      // Still in its capacity wait with the machine on record (not launched anew meanwhile).
      const stopped = await getRun("unplaced", ns7);
      expect([stopped?.status?.phase, stopped?.status?.reason, stopped?.status?.instance?.id]).toEqual(["Pending", "AllocationFailed", id]);
      await client.delete(ComputeEnvironmentResource, ns7, "nowhere");
      await strip("nowhere", ns7);
      await waitFor("CE gone", async () => (await getCe("nowhere", ns7)) === undefined);
      if (timeout) {
        const past = Date.parse(waiting.metadata.creationTimestamp ?? "") + parseDuration(timeout) + 1_000;
        await new Promise((r) => setTimeout(r, Math.max(0, past - Date.now())));
      }
      opC = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [ns7] });
      const failed = await inPhase("unplaced", "Failed", 30_000, ns7);
      expect(failed.status?.reason).toBe("ComputeEnvironmentGone");
      expect(failed.status?.message).toContain(`machine ${id}`);
      expect(failed.status?.message).toContain(failed.metadata.uid ?? "-");
    } finally {
      await opA?.stop();
      await opC?.stop();
    }
  };

  it("a Run waiting for capacity with an unplaced machine on record, whose CE is gone unremembered, fails naming the machine rather than waiting for a CE", () => unplacedCeGone());

  it("and past its timeout by then: it fails naming the machine as well, not Timeout (which would hide that the machine may still run)", () => unplacedCeGone("1m"), 150_000);

  /** An AWS CE named "ce" in `region` (as a GitOps tool applies it). */
  const ceManifest = (on: string, region: string): ComputeEnvironment => ({
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "ce", namespace: on },
    spec: { provider: "aws", aws: { region, workDir: "s3://vmforge-test-bucket/work" } },
  } as ComputeEnvironment);

  /**
   * Runs ("r", then "r2", "r3"... up to `runs`) running under CE "ce" when the CE is removed by
   * force while no operator runs; with `reapplyIn`, a CE of the same name is applied again there (a
   * GitOps tool re-creating what it pruned) before the next operator starts. That operator never
   * saw the old CE. `beforeRestart` is called right before it starts.
   */
  const removedWhileDown = async (ns5: string, reapplyIn?: string, o: { runs?: number; beforeRestart?: (fake: FakeCloud, all: Run[]) => void } = {}):
  Promise<{ running: Run; all: Run[]; fake: FakeCloud; stop: () => Promise<void> }> => {
    const fake = new FakeCloud();
    let opA: RunningOperator | undefined = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [ns5] });
    try {
      await readyCe("ce", {}, ns5);
      const names = Array.from({ length: o.runs ?? 1 }, (_, i) => (i ? `r${i + 1}` : "r"));
      for (const n of names) await run(n, "ce", {}, ns5);
      const all: Run[] = [];
      for (const n of names) all.push(await inPhase(n, "Running", 30_000, ns5));
      const running = all[0] as Run;
      await opA.stop();
      opA = undefined;
      await client.delete(ComputeEnvironmentResource, ns5, "ce");
      await strip("ce", ns5);
      await waitFor("CE gone", async () => (await getCe("ce", ns5)) === undefined);
      if (reapplyIn) await client.create<ComputeEnvironment>(ComputeEnvironmentResource, ceManifest(ns5, reapplyIn));
      // The next operator's looks meet what the real providers answer for a recorded machine they
      // do not list: "terminated", inferred (unlisted), which is no find.
      fake.inferUnlisted = true;
      o.beforeRestart?.(fake, all);
      const opB = await startOperator(kubeconfigPath(), new Map([["aws", fake]]), { namespaces: [ns5] });
      return { running, all, fake, stop: async () => opB.stop() };
    } finally {
      await opA?.stop();
    }
  };

  /** The CE of the name, once Ready. */
  const readyAgain = (on: string): Promise<ComputeEnvironment> => waitFor("the new CE Ready", async () => {
    const c = await getCe("ce", on);
    return cond(c, "Ready")?.status === "True" ? c : undefined;
  });

  it("while no operator runs: the next one cannot reach the machine and says so, naming it and the Run's UID", async () => {
    const ns4 = await freshNamespace(client, "forced-restart");
    const { running, fake, stop } = await removedWhileDown(ns4);
    try {
      const failed = await inPhase("r", "Failed", 30_000, ns4);
      const id = running.status?.instance?.id ?? "";
      expect(failed.status?.reason).toBe("ComputeEnvironmentGone");
      expect(failed.status?.message).toContain(`machine ${id}`);
      expect(failed.status?.message).toContain("may still be running");
      expect(failed.status?.message).toContain(running.metadata.uid ?? "");
      // Said as it is: nothing was terminated.
      expect(fake.machineOf(running.metadata.uid ?? "")?.state).toBe("running");
      expect(fake.calls.terminate).toBe(0);
      // The CE applied again only now (a GitOps tool's next sync): it finds the machine, which is
      // terminated, and the Run's message says so instead of asking for it to be done by hand.
      await client.create<ComputeEnvironment>(ComputeEnvironmentResource, ceManifest(ns4, "eu-west-1"));
      await waitFor("the machine terminated", async () => fake.machineOf(running.metadata.uid ?? "")?.state === "terminated", 30_000);
      const told = await waitFor("the Run says so", async () => {
        const r = await getRun("r", ns4);
        return r?.status?.message?.includes("finds the Run's machine") && r.status.instance?.state === "terminated" ? r : undefined;
      }, 30_000);
      expect(told.status?.phase).toBe("Failed");
      expect(told.status?.message).not.toContain("may still be running");
      expect(cond(told, "Stalled")?.message).toBe(told.status?.message);
    } finally {
      await stop();
    }
  });

  it("while no operator runs, and applied again as it was: the next operator finds the machine with the new CE and terminates it; the new CE's Runs are its own", async () => {
    const ns5 = await freshNamespace(client, "forced-reapplied");
    // A second Run whose machine the cloud no longer has (terminated and forgotten meanwhile).
    const { running, fake, stop } = await removedWhileDown(ns5, "eu-west-1", { runs: 2, beforeRestart: (f, all) => f.machines.delete(all[1]?.metadata.uid ?? "") });
    try {
      const newUid = (await readyAgain(ns5)).metadata.uid ?? "";
      const uid = running.metadata.uid ?? "";
      const failed = await inPhase("r", "Failed", 30_000, ns5);
      expect(failed.status?.reason).toBe("ComputeEnvironmentGone");
      expect(failed.status?.message).toContain(`finds the Run's machine`);
      expect(failed.status?.message).toContain(newUid);
      // The other Run goes with the same removed CE, and its message does not claim its machine was found.
      const other = await inPhase("r2", "Failed", 30_000, ns5);
      expect(other.status?.reason).toBe("ComputeEnvironmentGone");
      expect(other.status?.message).toContain("not this Run's");
      expect(other.status?.message).not.toContain("finds the Run's machine");
      await waitFor("the old machine terminated", async () => fake.machineOf(uid)?.state === "terminated", 30_000);
      await waitFor("recorded terminated", async () => (await getRun("r", ns5))?.status?.instance?.state === "terminated", 30_000);
      // Still the old CE's Run: it was not taken over by the new one.
      expect((await getRun("r", ns5))?.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(running.metadata.annotations?.["vmforge.dev/compute-environment-uid"]);
      await run("new", "ce", {}, ns5);
      const fresh = await inPhase("new", "Running", 30_000, ns5);
      expect(fresh.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(newUid);
      await client.delete(ComputeEnvironmentResource, ns5, "ce");
      await waitFor("the new CE gone", async () => (await getCe("ce", ns5)) === undefined, 30_000);
      expect(fake.machineOf(fresh.metadata.uid ?? "")?.state).toBe("terminated");
    } finally {
      await stop();
    }
  });

  it("while no operator runs, and applied again in another region: the new CE does not find the machines, in one look for all its Runs, and each Run says it cannot be reached", async () => {
    const ns9 = await freshNamespace(client, "forced-moved");
    const { all, fake, stop } = await removedWhileDown(ns9, "eu-central-1", { runs: 3 });
    try {
      const newUid = (await readyAgain(ns9)).metadata.uid ?? "";
      for (const r of all) {
        const failed = await inPhase(r.metadata.name ?? "", "Failed", 30_000, ns9);
        expect(failed.status?.reason).toBe("ComputeEnvironmentGone");
        expect(failed.status?.message).toContain(`UID ${newUid}, and it does not find the machine`);
        expect(failed.status?.message).toContain("may still be running");
        // Nothing was terminated, and an unseen machine was not recorded gone.
        expect(failed.status?.instance?.state).toBe("running");
        expect(fake.machineOf(r.metadata.uid ?? "")?.state).toBe("running");
      }
      expect(fake.calls.terminate).toBe(0);
      // One describe from the new CE's region for the three Runs, not one each; and not repeated
      // when the Runs' own status writes bring them back.
      const uids = all.map((r) => r.metadata.uid ?? "").sort();
      const looks = fake.describes.filter((d) => d.where === "eu-central-1");
      expect(looks.map((d) => [...d.runUids].sort())).toEqual([uids]);
    } finally {
      await stop();
    }
  });

  it("while no operator runs, and applied again in another region, right after the launches: the Runs wait out the cloud's listing lag, with one look for all of them, then say they cannot be reached", async () => {
    const ns11 = await freshNamespace(client, "forced-young");
    const LAG = 20_000;
    const { all, fake, stop } = await removedWhileDown(ns11, "eu-central-1", { runs: 3, beforeRestart: (f) => { f.unlistedLaunchMs = LAG; } });
    try {
      const launchedAt = Math.max(...all.map((r) => Date.parse(r.status?.launchedAt ?? "")));
      await readyAgain(ns11);
      await waitFor("a look from the new region", async () => fake.describes.some((d) => d.where === "eu-central-1"), 30_000);
      // A few seconds on: none of them is declared unreachable while the cloud may not list its
      // machine yet, and the look is not repeated meanwhile.
      await new Promise((r) => setTimeout(r, 3_000));
      // Still inside the lag (else this part proves nothing).
      expect(Date.now() - launchedAt).toBeLessThan(LAG);
      for (const r of all) expect((await getRun(r.metadata.name ?? "", ns11))?.status?.phase).toBe("Running");
      const looks = fake.describes.filter((d) => d.where === "eu-central-1");
      expect(looks.map((d) => [...d.runUids].sort())).toEqual([all.map((r) => r.metadata.uid ?? "").sort()]);
      // Once the lag has passed, a look that still does not find them is the answer.
      for (const r of all) {
        const failed = await inPhase(r.metadata.name ?? "", "Failed", LAG + 30_000, ns11);
        expect(failed.status?.message).toContain("it does not find the machine");
      }
      const later = fake.describes.filter((d) => d.where === "eu-central-1").slice(1);
      expect(later.length).toBeGreaterThan(0);
      expect(later.length).toBeLessThanOrEqual(all.length);
    } finally {
      await stop();
    }
  });

  it("while no operator runs, applied again as it was, and the look refused: one look says so for all its Runs; once allowed, a later look finds the machines", async () => {
    const ns10 = await freshNamespace(client, "forced-refused");
    let before = 0;
    const { all, fake, stop } = await removedWhileDown(ns10, "eu-west-1", {
      runs: 2,
      beforeRestart: (f) => {
        f.describeError = CloudError.terminal("UnauthorizedOperation", "ec2:DescribeInstances: You are not authorized to perform this operation");
        before = f.describes.length;
      },
    });
    try {
      const uids = all.map((r) => r.metadata.uid ?? "").sort();
      for (const r of all) {
        const failed = await inPhase(r.metadata.name ?? "", "Failed", 30_000, ns10);
        expect(failed.status?.reason).toBe("ComputeEnvironmentGone");
        expect(failed.status?.message).toContain("it could not look for the machine (UnauthorizedOperation");
        expect(failed.status?.message).toContain("may still be running");
      }
      // The refusal was the answer of a look for both Runs, not one per Run (a reconcile after the
      // refusal's hold, say when the new CE turned Ready, may ask again: for both again).
      const refusedLooks = fake.describes.slice(before).map((d) => [...d.runUids].sort());
      expect(refusedLooks.length).toBeGreaterThan(0);
      for (const look of refusedLooks) expect(look).toEqual(uids);
      expect(fake.calls.terminate).toBe(0);
      // Allowed now (the policy fixed): after the refusal's hold, the Runs' next reconcile (here a
      // change of one of them) looks again, finds the machines and terminates them.
      fake.describeError = undefined;
      let touch = 0;
      await waitFor("a look that is allowed", async () => {
        // A change of the Run at each pass: once the refusal's hold has passed, its reconcile looks again.
        await client.patch(RunResource, ns10, "r", { metadata: { annotations: { touched: String(++touch) } } }, "merge");
        return fake.machineOf(all[0]?.metadata.uid ?? "")?.state === "terminated";
      }, 30_000, 1_000);
      for (const r of all) {
        await waitFor(`${r.metadata.name ?? ""} terminated`, async () => fake.machineOf(r.metadata.uid ?? "")?.state === "terminated", 30_000);
      }
      const told = await waitFor("the Run says so", async () => {
        const r = await getRun("r2", ns10);
        return r?.status?.message?.includes("finds the Run's machine") ? r : undefined;
      }, 30_000);
      expect(told.status?.phase).toBe("Failed");
    } finally {
      await stop();
    }
  });
});

describe("a Stalled ComputeEnvironment", () => {
  it("is looked at again soon, then less and less often; a passing failure between two same answers does not start over; asking for a retry does", async () => {
    const ns8 = await freshNamespace(client, "stalled-backoff");
    const denied = CloudError.terminal("AccessDenied", "iam:CreateRole: not authorized to perform iam:CreateRole");
    /** Answers provisionEnvironment from the script (undefined: success), and notes when each call came. */
    class ScriptedCloud extends FakeCloud {
      readonly at: number[] = [];
      script: (CloudError | undefined)[] = [denied, denied, CloudError.retryable("Throttling", "iam:CreateRole: Rate exceeded"), denied, denied, denied];
      override async provisionEnvironment(ctx: EnvContext): Promise<EnvObservation> {
        const e = this.script[this.at.length];
        this.at.push(Date.now());
        if (e) {
          this.calls.provision++;
          throw e;
        }
        return super.provisionEnvironment(ctx);
      }
    }
    const cloud8 = new ScriptedCloud();
    const first = 500; // re-checks after 0.5, 2, 8, 32 s of the same answer
    const op8 = await startOperator(kubeconfigPath(), new Map([["aws", cloud8]]), { namespaces: [ns8] }, { stalledFirstRecheckMs: first });
    try {
      await client.create(ComputeEnvironmentResource, {
        apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "ce", namespace: ns8 },
        spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://vmforge-test-bucket/work" } },
      } as ComputeEnvironment);
      await waitFor("5 attempts", async () => cloud8.at.length >= 5, 60_000, 50);
      const gap = (i: number) => (cloud8.at[i] ?? 0) - (cloud8.at[i - 1] ?? 0);
      // Lower bounds only (a busy machine may make a wait longer, never shorter); 50 ms of slack.
      expect(gap(1)).toBeGreaterThanOrEqual(first - 50);
      expect(gap(2)).toBeGreaterThanOrEqual(4 * first - 50);
      // The throttled attempt (3rd) is retried with the controller's backoff; the same refusal
      // after it is the third in a row: the next look waits 16 × the first.
      expect(gap(4)).toBeGreaterThanOrEqual(16 * first - 50);
      expect(cond(await getCe("ce", ns8), "Stalled")).toMatchObject({ status: "True", reason: "AccessDenied" });
      // The fourth wait would be 32 × 0.5 s: asking for a retry makes the look at once, and the
      // re-checks start over from the shortest.
      const asked = Date.now();
      await client.patch(ComputeEnvironmentResource, ns8, "ce", { metadata: { annotations: { "vmforge.dev/reconcile-requested-at": String(asked) } } }, "merge");
      await waitFor("the retry asked for", async () => cloud8.at.length >= 6, 10_000, 50);
      expect((cloud8.at[5] ?? 0) - asked).toBeLessThan(10_000);
      await waitFor("CE Ready", async () => cond(await getCe("ce", ns8), "Ready")?.status === "True", 30_000, 100);
      expect(gap(6)).toBeGreaterThanOrEqual(first - 50);
      expect(cloud8.at.length).toBe(7);
    } finally {
      await op8.stop();
    }
  }, 90_000);
});
