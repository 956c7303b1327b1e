import { describe, expect, it } from "vitest";
import { ceOfIn } from "../../support/ce-of.js";
import type { ComputeEnvironment, Run } from "../../../src/api/types.js";
import type { KubeClient } from "../../../src/engine/kube.js";
import { createLogger } from "../../../src/engine/logger.js";
import { DEFER_FIRST_LOOK_POLLS, RunTracker, accountRegionKey, canonicalJson, mergeLearned } from "../../../src/controllers/run/tracker.js";
import type { RunDescription } from "../../../src/cloud/provider.js";
import { FakeCloud } from "../../support/fake-cloud.js";
import { ANNOTATION_LAUNCHED_UNDER, FINALIZER } from "../../../src/api/constants.js";
import { GoneComputeEnvironments } from "../../../src/controllers/run/gone-ces.js";

const ce = (name: string, secret: string | undefined, region: string): ComputeEnvironment => ({
  metadata: { name, namespace: "ns", uid: `ce-${name}` },
  spec: { provider: "aws", ...(secret ? { credentials: { secretRef: { name: secret } } } : {}), aws: { region, workDir: "s3://b/w" } },
} as ComputeEnvironment);

const run = (name: string, ceName: string, phase: string): Run => ({
  metadata: { name, namespace: "ns", uid: `run-${name}` },
  spec: { computeEnvironmentRef: { name: ceName }, pipeline: { repository: "https://example.com/p" } },
  status: { phase },
} as Run);

/** A Running Run being deleted, held by vmforge's finalizer (or only by another's). */
const deletedRun = (name: string, ceName: string, finalizer = FINALIZER): Run => {
  const r = run(name, ceName, "Running");
  return { ...r, metadata: { ...r.metadata, deletionTimestamp: "2026-01-01T00:00:00Z", finalizers: [finalizer] } };
};

/** Only what resolveCredentials uses: a Secret with one key. */
const secrets = { get: async () => ({ metadata: { name: "s" }, data: { accessKeyId: Buffer.from("x").toString("base64") } }) } as unknown as KubeClient;

/** Gives each Run a running machine in the fake cloud. */
function runningMachines(cloud: FakeCloud, runs: Run[]): void {
  for (const r of runs) cloud.machines.set(r.metadata.uid ?? "", { id: `i-${r.metadata.name}`, runUid: r.metadata.uid ?? "", ceUid: "", state: "running", launchedAt: "", log: [] });
}

/** A tracker over these Runs and CEs, polling the fake cloud (1 s interval, never started). */
function trackerOver(cloud: FakeCloud, ces: ComputeEnvironment[], runs: Run[], over: Partial<ConstructorParameters<typeof RunTracker>[0]> = {}): RunTracker {
  return new RunTracker({
    client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
    logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000, ...over,
  });
}

describe("RunTracker", () => {
  it("asks the cloud once per account and region, only for Runs whose machine may exist, and enqueues changes", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1"), ce("b", "creds", "eu-west-1"), ce("c", "other", "eu-west-1"), ce("d", "creds", "us-east-1")];
    const runs: Run[] = [];
    for (const c of ces) for (let i = 0; i < 5; i++) runs.push(run(`${c.metadata.name}${i}`, c.metadata.name ?? "", "Running"));
    runs.push(run("pending", "a", "Pending"), run("done", "a", "Succeeded"));
    runningMachines(cloud, runs);
    const enqueued: string[] = [];
    const t = trackerOver(cloud, ces, runs, { enqueueRun: (k) => enqueued.push(k) });
    await t.pollOnce();
    // a+b share Secret and region; c has another Secret; d another region.
    expect(cloud.calls.describe).toBe(3);
    expect(t.lastPoll).toEqual({ groups: 3, runs: 20 });
    expect(enqueued).toHaveLength(20);
    expect(t.get("run-pending")).toBeUndefined();
    expect(t.get("run-done")).toBeUndefined();
    expect(t.get("run-a0")?.desc?.state).toBe("running");

    enqueued.length = 0;
    await t.pollOnce();
    expect(enqueued).toHaveLength(0); // nothing changed, nothing enqueued
    cloud.finish("run-c3", 0);
    await t.pollOnce();
    expect(enqueued).toEqual(["ns/c3"]);
  });

  it("wakes a deleted Run after every look, news or not: its finalizer waits for a look newer than its termination (not one that only another's finalizer holds)", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("kept", "a", "Running"), deletedRun("deleted", "a"), deletedRun("foreign", "a", "example.com/other")];
    runningMachines(cloud, runs);
    const enqueued: string[] = [];
    const t = trackerOver(cloud, ces, runs, { enqueueRun: (k) => enqueued.push(k) });
    await t.pollOnce();
    expect(enqueued.sort()).toEqual(["ns/deleted", "ns/foreign", "ns/kept"]);
    for (let i = 0; i < 2; i++) {
      enqueued.length = 0;
      await t.pollOnce();
      expect(enqueued).toEqual(["ns/deleted"]); // the same look as before: only the deleted Run is woken
    }
  });

  it("follows a machine with the CE it was launched under (the UID its Run recorded), not a CE that took the name since", async () => {
    const cloud = new FakeCloud();
    const old = { ...ce("x", "creds", "eu-west-1"), metadata: { name: "x", namespace: "ns", uid: "old-x" } } as ComputeEnvironment;
    const reborn = { ...ce("x", "creds", "eu-central-1"), metadata: { name: "x", namespace: "ns", uid: "new-x" } } as ComputeEnvironment;
    const under = (r: Run, uid: string): Run => ({ ...r, metadata: { ...r.metadata, annotations: { [ANNOTATION_LAUNCHED_UNDER]: uid } } });
    const runs = [under(run("before", "x", "Running"), "old-x"), under(run("after", "x", "Running"), "new-x"), under(run("lost", "x", "Running"), "forgotten")];
    cloud.machines.set("run-before", { id: "i-before", runUid: "run-before", ceUid: "old-x", where: "eu-west-1", state: "running", launchedAt: "", log: [] });
    cloud.machines.set("run-after", { id: "i-after", runUid: "run-after", ceUid: "new-x", where: "eu-central-1", state: "running", launchedAt: "", log: [] });
    // The old CE was removed by force (remembered), and the name taken again.
    const gone = new GoneComputeEnvironments({ list: () => runs });
    gone.remember(old);
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => [reborn], gone),
      logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000,
    });
    await t.pollOnce();
    expect(t.lastPoll).toEqual({ groups: 2, runs: 2 });
    expect(t.get("run-before")?.desc?.instanceId).toBe("i-before");
    expect(t.get("run-after")?.desc?.instanceId).toBe("i-after");
    // Launched under a CE nothing remembers: not looked at (its reconcile says it cannot be reached).
    expect(t.get("run-lost")).toBeUndefined();
  });

  it("while Run work is backed up, a machine whose launch answer is on record and that no poll looked at yet waits, at most DEFER_FIRST_LOOK_POLLS polls in a row", async () => {
    const cloud = new FakeCloud();
    /** The Runs (by name) of each describe so far. */
    const asked = (): string[][] => cloud.describes.map((d) => d.runUids.map((u) => u.replace(/^run-/, "")));
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("seen", "a", "Running"), run("fresh", "a", "Launching")];
    for (const r of runs) cloud.machines.set(r.metadata.uid ?? "", { id: `i-${r.metadata.name}`, runUid: r.metadata.uid ?? "", ceUid: "", state: "running", launchedAt: "", log: [] });
    let backlog = true;
    const enqueued: string[] = [];
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: (k) => enqueued.push(k), pollIntervalMs: 1000, backlog: () => backlog,
    });
    t.record("run-fresh", { instanceId: "i-fresh", state: "pending" });
    expect(DEFER_FIRST_LOOK_POLLS).toBe(2);
    await t.pollOnce();
    await t.pollOnce();
    // Left for later twice, and its launch's record kept meanwhile (not dropped as a machine no longer followed).
    expect(asked()).toEqual([["seen"], ["seen"]]);
    expect(t.get("run-fresh")?.desc?.state).toBe("pending");
    expect(t.lastPoll.runs).toBe(1);
    // The third poll in a row looks at it, backlog or not.
    await t.pollOnce();
    expect(asked()[2]).toEqual(["seen", "fresh"]);
    expect(t.get("run-fresh")).toMatchObject({ polled: true, desc: { state: "running" } });
    expect(enqueued).toContain("ns/fresh");
    // A new launch's record (say, launched again after a capacity wait) is left out again while
    // work is backed up ...
    t.record("run-fresh", { instanceId: "i-fresh", state: "running" });
    await t.pollOnce();
    expect(asked()[3]).toEqual(["seen"]);
    // ... and not when it is not.
    backlog = false;
    await t.pollOnce();
    expect(asked()[4]).toEqual(["seen", "fresh"]);
  });

  it("never leaves for later a machine whose Run is being deleted, cancelled or has ended: their termination waits for a look", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1")];
    const deleting = { ...run("deleting", "a", "Running"), metadata: { name: "deleting", namespace: "ns", uid: "run-deleting", deletionTimestamp: "2026-12-04T00:00:00Z" } } as Run;
    const cancelled = { ...run("cancelled", "a", "Running"), spec: { ...run("x", "a", "Running").spec, cancel: true } } as Run;
    const ended = { ...run("ended", "a", "Failed"), status: { phase: "Failed", instance: { id: "i-ended", state: "running" } } } as Run;
    const runs = [run("fresh", "a", "Launching"), deleting, cancelled, ended];
    for (const r of runs) cloud.machines.set(r.metadata.uid ?? "", { id: `i-${r.metadata.name}`, runUid: r.metadata.uid ?? "", ceUid: "", state: "running", launchedAt: "", log: [] });
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000, backlog: () => true,
    });
    for (const r of runs) t.record(r.metadata.uid ?? "", { instanceId: `i-${r.metadata.name}`, state: "pending" });
    await t.pollOnce();
    // Only the Run on its way up waits; the three being ended are looked at in the first poll.
    expect(cloud.describes.map((d) => [...d.runUids].sort())).toEqual([["run-cancelled", "run-deleting", "run-ended"]]);
    expect(t.get("run-fresh")?.polled).toBe(false);
    for (const uid of ["run-cancelled", "run-deleting", "run-ended"]) expect(t.get(uid)?.polled).toBe(true);
  });

  it("a group whose Runs are all left for a later poll keeps the time of its last full look", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("old", "a", "Running")];
    const machine = (r: Run) => cloud.machines.set(r.metadata.uid ?? "", { id: `i-${r.metadata.name}`, runUid: r.metadata.uid ?? "", ceUid: "", state: "running", launchedAt: "", log: [] });
    machine(runs[0] as Run);
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000, backlog: () => true, fullLookEveryMs: 3_600_000,
    });
    await t.pollOnce();
    // The old Run gone; a new one launched and left for later while work is backed up.
    runs[0] = run("new", "a", "Launching");
    machine(runs[0]);
    t.record("run-new", { instanceId: "i-new", state: "pending" });
    for (let i = 0; i < DEFER_FIRST_LOOK_POLLS + 1; i++) await t.pollOnce();
    expect(cloud.describes.map((d) => [d.runUids, d.full])).toEqual([[["run-old"], true], [["run-new"], false]]);
  });

  it("a describe is as old as its start: it does not replace what a launch recorded while it ran", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("r", "a", "Running")];
    cloud.machines.set("run-r", { id: "i-old", runUid: "run-r", ceUid: "", state: "terminated", launchedAt: "", log: [] });
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000,
    });
    // The describe answers with what it saw at its start, after a launch recorded a new machine.
    const describe = cloud.describeRuns.bind(cloud);
    cloud.describeRuns = async (ctx, rs) => {
      const seen = await describe(ctx, rs);
      await new Promise((r) => setTimeout(r, 20));
      t.record("run-r", { instanceId: "i-new", state: "pending" });
      return seen;
    };
    const before = Date.now();
    await t.pollOnce();
    expect(t.get("run-r")?.desc).toMatchObject({ instanceId: "i-new", state: "pending" });
    // Without a newer record, the observation is dated at the describe's start.
    cloud.describeRuns = async (ctx, rs) => {
      const seen = await describe(ctx, rs);
      await new Promise((r) => setTimeout(r, 50));
      return seen;
    };
    const start = Date.now();
    await t.pollOnce();
    expect(t.get("run-r")?.desc?.state).toBe("terminated");
    expect(t.get("run-r")?.at).toBeGreaterThanOrEqual(before);
    expect(t.get("run-r")?.at).toBeLessThan(start + 50);
  });

  it("a credentials read that hangs ends at the look's deadline: the poll ends and is counted, and the next poll looks", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("r", "a", "Running")];
    runningMachines(cloud, runs);
    let hang = true;
    const reads: (AbortSignal | undefined)[] = [];
    const getSecret = (_ns: string, _name: string, signal?: AbortSignal): Promise<never> | Promise<{ metadata: { name: string }; data: Record<string, string> }> => {
      reads.push(signal);
      if (!hang) return Promise.resolve({ metadata: { name: "creds" }, data: { accessKeyId: Buffer.from("x").toString("base64") } });
      return new Promise<never>((_resolve, reject) => signal?.addEventListener("abort", () => reject(signal.reason as Error)));
    };
    const t = trackerOver(cloud, ces, runs, { secrets: getSecret as never, observeTimeoutMs: 200 });
    const before = t.pollCount;
    await t.pollOnce();
    expect(reads[0]).toBeInstanceOf(AbortSignal);
    expect(t.pollCount).toBe(before + 1);
    expect(cloud.calls.describe).toBe(0);
    hang = false;
    await t.pollOnce();
    expect(cloud.calls.describe).toBe(1);
    expect(t.get("run-r")?.desc?.state).toBe("running");
  });

  it("groups by provider, Secret (or ambient identity) and region", () => {
    expect(accountRegionKey(ce("a", "creds", "eu-west-1"))).toBe(accountRegionKey(ce("b", "creds", "eu-west-1")));
    expect(accountRegionKey(ce("a", undefined, "eu-west-1"))).not.toBe(accountRegionKey(ce("a", "creds", "eu-west-1")));
    expect(accountRegionKey(ce("a", "creds", "eu-west-1"))).not.toBe(accountRegionKey(ce("a", "creds", "eu-west-2")));
  });
});

describe("RunTracker: what the last look saw", () => {
  it("is offered to the provider only after a full look, never from a launch's record, and withheld again after fullLookEveryMs", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("seen", "a", "Running"), run("launched", "a", "Launching")];
    cloud.machines.set("run-seen", { id: "i-seen", runUid: "run-seen", ceUid: "", state: "running", launchedAt: "", log: [] });
    const offered: (Record<string, string | undefined> | undefined)[] = [];
    const describe = cloud.describeRuns.bind(cloud);
    cloud.describeRuns = async (ctx, rs) => {
      offered.push(ctx.observed ? Object.fromEntries(rs.map((r) => [r.metadata.name ?? "", ctx.observed?.(r)?.instanceId])) : undefined);
      return describe(ctx, rs);
    };
    let fullEvery = 60_000;
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000,
      get fullLookEveryMs() { return fullEvery; },
    });
    await t.pollOnce();
    expect(offered.at(-1)).toBeUndefined(); // the first look is a full one
    // A launch records a machine the cloud has not shown to a look yet.
    t.record("run-launched", { instanceId: "i-launched", state: "pending" });
    await t.pollOnce();
    expect(offered.at(-1)).toEqual({ seen: "i-seen", launched: undefined });
    // The look after that saw it (the fake lists it now): it is offered from then on.
    cloud.machines.set("run-launched", { id: "i-launched", runUid: "run-launched", ceUid: "", state: "pending", launchedAt: "", log: [] });
    await t.pollOnce();
    await t.pollOnce();
    expect(offered.at(-1)).toEqual({ seen: "i-seen", launched: "i-launched" });
    // Past fullLookEveryMs since the last full look, the provider is asked to look at everything.
    fullEvery = 0;
    await t.pollOnce();
    expect(offered.at(-1)).toBeUndefined();
    expect(offered).toHaveLength(5);
  });

  it("is never offered for a deleted Run: its machines are looked at in full, by its UID", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("kept", "a", "Running"), deletedRun("deleted", "a")];
    runningMachines(cloud, runs);
    const offered: (Record<string, string | undefined> | undefined)[] = [];
    const describe = cloud.describeRuns.bind(cloud);
    cloud.describeRuns = async (ctx, rs) => {
      offered.push(ctx.observed ? Object.fromEntries(rs.map((r) => [r.metadata.name ?? "", ctx.observed?.(r)?.instanceId])) : undefined);
      return describe(ctx, rs);
    };
    const t = trackerOver(cloud, ces, runs, { fullLookEveryMs: 60_000 });
    await t.pollOnce();
    await t.pollOnce();
    expect(offered).toStrictEqual([undefined, { kept: "i-kept", deleted: undefined }]);
  });

  it("a failing look does not count as a full one: the next poll is full again", async () => {
    const cloud = new FakeCloud();
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("r", "a", "Running")];
    cloud.machines.set("run-r", { id: "i-r", runUid: "run-r", ceUid: "", state: "running", launchedAt: "", log: [] });
    const offered: boolean[] = [];
    const describe = cloud.describeRuns.bind(cloud);
    let fail = true;
    cloud.describeRuns = async (ctx, rs) => {
      offered.push(ctx.observed !== undefined);
      if (fail) throw new Error("throttled");
      return describe(ctx, rs);
    };
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000,
    });
    await t.pollOnce();
    fail = false;
    await t.pollOnce();
    await t.pollOnce();
    expect(offered).toEqual([false, false, true]);
  });
});

describe("RunTracker: what one look learned stays learned for its machine", () => {
  /** A tracker over one Run whose describe answers `next` (set before each poll). */
  function scripted(initial: RunDescription | undefined) {
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("r", "a", "Running")];
    const cloud = new FakeCloud();
    const state = { next: initial };
    cloud.describeRuns = async () => new Map([["run-r", state.next && { ...state.next }]]);
    const enqueued: string[] = [];
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: (k) => enqueued.push(k), pollIntervalMs: 1000,
    });
    return { t, state, enqueued, cloud };
  }
  const running: RunDescription = { instanceId: "i-1", state: "running" };

  it("an exit line found by one look (a start read, an exit probe) is kept when the next looks do not read it", async () => {
    const { t, state, enqueued } = scripted({ ...running, exitCode: 3, bootstrapStep: "docker", pipelineStarted: true });
    await t.pollOnce();
    // The machine is shutting down now; this look's read budget left it out (outcome not known yet).
    state.next = { instanceId: "i-1", state: "shutting-down", outcomeUnknown: true };
    await t.pollOnce();
    expect(t.get("run-r")?.desc).toEqual({ instanceId: "i-1", state: "shutting-down", exitCode: 3, bootstrapStep: "docker", pipelineStarted: true });
    expect(enqueued).toHaveLength(2); // the first look, and the state change
    // Nothing new: no news.
    await t.pollOnce();
    expect(enqueued).toHaveLength(2);
  });

  it("a refused read is kept until a look that reads finds none, and readAttempted itself is not kept", async () => {
    const refused = { reason: "AccessDenied", message: "logs:GetLogEvents denied" };
    const { t, state, enqueued } = scripted({ ...running, pipelineStarted: true, readAttempted: true, readError: refused });
    await t.pollOnce();
    expect(t.get("run-r")?.desc).toEqual({ ...running, pipelineStarted: true, readError: refused });
    // Looks between the probes say nothing of reads: the refusal stands, and is no news.
    state.next = { ...running, pipelineStarted: true };
    await t.pollOnce();
    await t.pollOnce();
    expect(t.get("run-r")?.desc?.readError).toEqual(refused);
    expect(enqueued).toHaveLength(1);
    // A probe that read: gone, and that is news.
    state.next = { ...running, pipelineStarted: true, readAttempted: true };
    await t.pollOnce();
    expect(t.get("run-r")?.desc).toEqual({ ...running, pipelineStarted: true });
    expect(enqueued).toHaveLength(2);
  });

  it("an outcome on its way (outcomeDue) is not said while a refused read is kept, nor once an earlier look found the exit code", () => {
    const ended = { instanceId: "i-1", state: "terminated" as const };
    const refused = { reason: "AccessDenied", message: "m" };
    expect(mergeLearned({ ...ended, outcomeUnknown: true, readError: refused }, { ...ended, outcomeUnknown: true, outcomeDue: true }))
      .toEqual({ ...ended, outcomeUnknown: true, readError: refused });
    expect(mergeLearned({ ...ended, exitCode: 0 }, { ...ended, outcomeUnknown: true, outcomeDue: true })).toEqual({ ...ended, exitCode: 0 });
    // A look that read and found no refusal: on its way.
    expect(mergeLearned({ ...ended, outcomeUnknown: true, readError: refused }, { ...ended, outcomeUnknown: true, outcomeDue: true, readAttempted: true }))
      .toEqual({ ...ended, outcomeUnknown: true, outcomeDue: true });
  });

  it("nothing carries over to another machine, or from a launch the cloud could not place", async () => {
    expect(mergeLearned({ ...running, exitCode: 1, pipelineStarted: true, readError: { reason: "r", message: "m" } }, { instanceId: "i-2", state: "pending" }))
      .toEqual({ instanceId: "i-2", state: "pending" });
    expect(mergeLearned({ ...running, exitCode: 1, launchFailure: { reason: "AllocationFailed", message: "m" } }, { ...running }))
      .toEqual(running);
    expect(mergeLearned({ ...running, exitCode: 1 }, undefined)).toBeUndefined();
    // A look that found its own exit code keeps its own.
    expect(mergeLearned({ ...running, exitCode: 1, bootstrapStep: "s" }, { ...running, exitCode: 0 })).toEqual({ ...running, exitCode: 0 });
  });

  it("a look older than a launch's record adds what it learned of the same machine to that record", async () => {
    const { t, state, cloud, enqueued } = scripted(undefined);
    state.next = { ...running, exitCode: 0 };
    const describe = cloud.describeRuns.bind(cloud);
    cloud.describeRuns = async (ctx, rs) => {
      const seen = await describe(ctx, rs);
      await new Promise((r) => setTimeout(r, 20));
      t.record("run-r", { instanceId: "i-1", state: "pending" }); // e.g. the launch's idempotent retry
      return seen;
    };
    await t.pollOnce();
    expect(t.get("run-r")?.desc).toEqual({ instanceId: "i-1", state: "pending", exitCode: 0 });
    expect(t.get("run-r")?.polled).toBe(false); // still the launch's record, not a poll's look
    // The string kept is that of the description stored (the record's, with what the look learned).
    expect(t.get("run-r")?.canonical).toBe(canonicalJson({ instanceId: "i-1", state: "pending", exitCode: 0 }));
    expect(enqueued).toEqual(["ns/r"]);
  });
});

describe("canonicalJson (how the tracker compares descriptions)", () => {
  it("compares what descriptions say, not the order of their fields", () => {
    const a: RunDescription = { instanceId: "i-1", state: "running", pipelineStarted: true, instance: { id: "i-1" } };
    const b: RunDescription = { instance: { id: "i-1" }, pipelineStarted: true, state: "running", instanceId: "i-1" };
    const same = (x: RunDescription | undefined, y: RunDescription | undefined): boolean => canonicalJson(x) === canonicalJson(y);
    expect(same(a, b)).toBe(true);
    expect(same(a, { ...b, pipelineStarted: false })).toBe(false);
    expect(same(a, { ...b, instance: { id: "i-2" } })).toBe(false);
    expect(same(undefined, undefined)).toBe(true);
    expect(same(a, undefined)).toBe(false);
  });

  it("a fact carried over is no news at the next look that omits it (one enqueue for the change, none after)", async () => {
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("r", "a", "Running")];
    const cloud = new FakeCloud();
    // The provider sets pipelineStarted before other fields, then stops saying it (the Run is Running).
    let next: RunDescription = { pipelineStarted: true, instanceId: "i-1", state: "running" };
    cloud.describeRuns = async () => new Map([["run-r", { ...next }]]);
    const enqueued: string[] = [];
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: (k) => enqueued.push(k), pollIntervalMs: 1000,
    });
    await t.pollOnce();
    next = { instanceId: "i-1", state: "running" };
    await t.pollOnce();
    await t.pollOnce();
    expect(enqueued).toHaveLength(1);
    expect(t.get("run-r")?.desc?.pipelineStarted).toBe(true);
  });

  it("a polled observation keeps the string it is compared by; a launch's record does not, and news is seen across both", async () => {
    const ces = [ce("a", "creds", "eu-west-1")];
    const runs = [run("r", "a", "Running")];
    const cloud = new FakeCloud();
    let next: RunDescription | undefined = { state: "running", instanceId: "i-1" };
    cloud.describeRuns = async () => new Map([["run-r", next ? { ...next } : undefined]]);
    const enqueued: string[] = [];
    const t = new RunTracker({
      client: secrets, providers: new Map([["aws", cloud]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: (k) => enqueued.push(k), pollIntervalMs: 1000,
    });
    const kept = () => t.get("run-r")?.canonical;
    await t.pollOnce();
    expect(kept()).toBe(canonicalJson({ instanceId: "i-1", state: "running" }));
    await t.pollOnce();
    expect(enqueued).toHaveLength(1);
    t.record("run-r", { instanceId: "i-2", state: "pending" });
    expect(kept()).toBeUndefined();
    next = { state: "pending", instanceId: "i-2" };
    await t.pollOnce(); // the same as the record says: no news
    expect(enqueued).toHaveLength(1);
    expect(kept()).toBe(canonicalJson(next));
    next = { instanceId: "i-2", state: "running" };
    await t.pollOnce();
    expect(enqueued).toHaveLength(2);
    next = undefined;
    await t.pollOnce();
    expect(enqueued).toHaveLength(3);
    expect(kept()).toBe("-");
    await t.pollOnce();
    expect(enqueued).toHaveLength(3);
  });
});
