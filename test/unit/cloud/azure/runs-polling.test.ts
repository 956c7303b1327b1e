// What one poll of Azure Runs reads, against in-memory SDK stand-ins: no outcome read for a Run
// waiting for capacity, the exit-line probe of Running Runs in the CE's one query (none for a Run
// being cancelled), a CE without a Log Analytics workspace, and the cap (with its rotation) on the
// Runs named in a CE's launcher-lines query.
import { beforeEach, describe, expect, it } from "vitest";
import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import type { EnvContext } from "../../../../src/cloud/provider.js";
import { describeRuns, launchRun } from "../../../../src/cloud/azure/runs.js";
import { AzureRunWatch, LAUNCHER_LINES_QUERY_CAP, RUNNING_EXIT_PROBE_MS } from "../../../../src/cloud/azure/observe.js";
import { RestLikeError, provisionedAzure, type FakeAzure } from "./fake-azure.js";

function runOf(n: number): Run {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { namespace: "team-a", name: `p${n}`, uid: `77777777-8888-4777-8666-${String(n).padStart(12, "0")}` },
    spec: { computeEnvironmentRef: { name: "ce1" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
  } as Run;
}

const reads = (az: FakeAzure): { blobs: number; queries: number } => ({
  blobs: az.ops().filter((o) => o === "blobs.read").length,
  queries: az.ops().filter((o) => o === "logsQuery.queryWorkspace").length,
});

describe("Azure run polling: what each poll reads", () => {
  let az: FakeAzure;
  let ce: ComputeEnvironment;
  let ctx: EnvContext;
  let now: number;

  beforeEach(async () => {
    ({ az, ce, ctx } = await provisionedAzure());
    now = Date.parse("2026-01-01T00:00:00Z");
  });

  /** A launched Run with its VM in the given power state (or gone: undefined) and the given status. */
  async function launched(n: number, power: string | undefined, status: Run["status"]): Promise<Run> {
    const run = runOf(n);
    const d = await launchRun(az.clients(), ctx, run);
    run.status = { ...status, instance: { ...(status?.instance ?? {}), id: d.instanceId } };
    if (power === undefined) az.store.delete(d.instanceId.toLowerCase());
    else az.get(d.instanceId)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: `PowerState/${power}` }] };
    return run;
  }

  it("a Run waiting for capacity (Pending, its unplaced VM gone) or not launched yet gets no exit status read and no log query", async () => {
    const waiting = await launched(1, undefined, { phase: "Pending", reason: "AllocationFailed", instance: { id: "", state: "shutting-down" } });
    const fresh = runOf(2);
    fresh.status = { phase: "Launching" };
    az.calls.length = 0;
    const watch = new AzureRunWatch(60_000, () => now);
    for (let poll = 0; poll < 3; poll++) {
      const res = await describeRuns(az.clients(), ctx, [waiting, fresh], watch);
      expect(res.get(waiting.metadata.uid!)).toMatchObject({ state: "terminated" });
      expect(res.get(waiting.metadata.uid!)!.outcomeUnknown).toBeUndefined();
      expect(res.get(fresh.metadata.uid!)).toBeUndefined();
      now += 5_000;
    }
    expect(reads(az)).toEqual({ blobs: 0, queries: 0 });
    // A launched Run whose VM is gone still has its outcome looked for (the contrast).
    const gone = await launched(3, undefined, { phase: "Running", startTime: new Date(now).toISOString() });
    az.calls.length = 0;
    await describeRuns(az.clients(), ctx, [waiting, gone], watch);
    expect(reads(az)).toEqual({ blobs: 1, queries: 1 });
    expect(az.queries.at(-1)).toContain(gone.metadata.uid!);
    expect(az.queries.at(-1)).not.toContain(waiting.metadata.uid!);
  });

  it("a Running Run whose VM still runs has its exit line asked for every RUNNING_EXIT_PROBE_MS, in the CE's one query: a VM whose shutdown failed ends its Run", async () => {
    const watch = new AzureRunWatch(60_000, () => now);
    const running = await launched(10, "running", { phase: "Running", startTime: new Date(now - 60_000).toISOString() });
    const setup = await launched(11, "running", { phase: "Launching" });
    az.logRows.push([new Date(now).toISOString(), 40, running.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=0"]);
    az.queries.length = 0;
    // Started a minute ago: not due; only the Run being set up is asked about.
    let res = await describeRuns(az.clients(), ctx, [running, setup], watch);
    expect(az.queries).toHaveLength(1);
    expect(az.queries[0]).not.toContain(running.metadata.uid!);
    expect(res.get(running.metadata.uid!)!.exitCode).toBeUndefined();
    // Not asked: its description says nothing of reads (the tracker keeps what the last read said).
    expect(res.get(running.metadata.uid!)!.readAttempted).toBeUndefined();
    expect(res.get(setup.metadata.uid!)!.readAttempted).toBe(true);
    // Five minutes after its start: asked, in the same one query as the Run being set up.
    now += 4 * 60_000;
    az.queries.length = 0;
    res = await describeRuns(az.clients(), ctx, [running, setup], watch);
    expect(az.queries).toHaveLength(1);
    expect(az.queries[0]).toContain(running.metadata.uid!);
    expect(az.queries[0]).toContain(setup.metadata.uid!);
    expect(res.get(running.metadata.uid!)).toMatchObject({ state: "running", exitCode: 0, readAttempted: true });
    // Not again before the next five minutes (the Run may still show Running in the cache).
    now += 60_000;
    az.queries.length = 0;
    res = await describeRuns(az.clients(), ctx, [running], watch);
    expect(az.queries).toHaveLength(0);
    expect(res.get(running.metadata.uid!)!.exitCode).toBeUndefined();
    now += 4 * 60_000;
    res = await describeRuns(az.clients(), ctx, [running], watch);
    expect(az.queries).toHaveLength(1);
    expect(res.get(running.metadata.uid!)!.exitCode).toBe(0);
    expect(RUNNING_EXIT_PROBE_MS).toBe(5 * 60_000);
  });

  it("a Run being cancelled (spec.cancel, the Run or its CE being deleted) whose VM runs is named in no query, neither for its start nor for its exit line", async () => {
    const watch = new AzureRunWatch(60_000, () => now);
    const since = new Date(now - 10 * 60_000).toISOString();
    const cancelled = await launched(20, "running", { phase: "Running", startTime: since });
    cancelled.spec.cancel = true;
    const deleted = await launched(21, "running", { phase: "Running", startTime: since });
    deleted.metadata.deletionTimestamp = new Date(now).toISOString();
    const settingUp = await launched(22, "running", { phase: "Launching" });
    settingUp.spec.cancel = true;
    const plain = await launched(23, "running", { phase: "Running", startTime: since });
    az.queries.length = 0;
    const res = await describeRuns(az.clients(), ctx, [cancelled, deleted, settingUp, plain], watch);
    // Only the Run not being cancelled (its running probe due) is asked about, in the one query.
    expect(az.queries).toHaveLength(1);
    for (const r of [cancelled, deleted, settingUp]) {
      expect(az.queries[0]).not.toContain(r.metadata.uid!);
      expect(res.get(r.metadata.uid!)).toMatchObject({ state: "running" });
    }
    expect(az.queries[0]).toContain(plain.metadata.uid!);
    // Their CE being deleted: none of its running Runs is asked about.
    const ceDeleted: EnvContext = { ...ctx, ce: { ...ce, metadata: { ...ce.metadata, deletionTimestamp: new Date(now).toISOString() } } };
    now += 10 * 60_000;
    az.queries.length = 0;
    await describeRuns(az.clients(), ceDeleted, [plain], watch);
    expect(az.queries).toHaveLength(0);
    await describeRuns(az.clients(), ctx, [plain], watch);
    expect(az.queries).toHaveLength(1);
  });

  it("a CE without a Log Analytics workspace: an ended Run takes its uploaded exit status, else ends at once (MachineStopped) saying why; an unreadable exit status is asked again; a running VM counts as running its pipeline", async () => {
    delete ce.status!.azure!.workspaceCustomerId;
    const watch = new AzureRunWatch(600_000, () => now);
    const withStatus = await launched(20, "stopped", { phase: "Running" });
    const without = await launched(21, "stopped", { phase: "Running" });
    const unreadable = await launched(22, undefined, { phase: "Running" });
    const setup = await launched(23, "running", { phase: "Launching" });
    az.blobs.set(`wdstore/work/runs/.vmforge/runs/${withStatus.metadata.uid}/exit-status`, "4\n");
    // The exit status of `unreadable` cannot be read (storage answers 503); the others' can.
    const failing = new RestLikeError(503, "ServerBusy");
    const clients = az.clients();
    const realRead = clients.blobs.read;
    (clients as { blobs: { read: typeof realRead } }).blobs = {
      read: (account, container, path, signal) => (path.includes(unreadable.metadata.uid!) ? Promise.reject(failing) : realRead(account, container, path, signal)),
    };
    az.calls.length = 0;
    const res = await describeRuns(clients, ctx, [withStatus, without, unreadable, setup], watch);
    expect(reads(az).queries).toBe(0);
    expect(res.get(withStatus.metadata.uid!)).toMatchObject({ state: "shutting-down", exitCode: 4 });
    const ended = res.get(without.metadata.uid!)!;
    expect(ended).toMatchObject({ state: "shutting-down", noOutcomeReason: "MachineStopped" });
    expect(ended.outcomeUnknown).toBeUndefined();
    expect(ended.stateReason).toMatch(/no exit status uploaded .*no Log Analytics workspace/);
    expect(res.get(unreadable.metadata.uid!)).toMatchObject({ state: "terminated", outcomeUnknown: true });
    expect(res.get(unreadable.metadata.uid!)!.stateReason).toMatch(/cannot be read now/);
    expect(res.get(setup.metadata.uid!)).toMatchObject({ state: "running", pipelineStarted: true });
  });

  it("at most queryCap Runs are named in the CE's query, the least recently asked first: every Run is asked within a few polls", async () => {
    const watch = new AzureRunWatch(60_000, () => now, undefined, { queryCap: 3 });
    const runs: Run[] = [];
    for (let i = 0; i < 7; i++) runs.push(await launched(30 + i, "running", { phase: "Launching" }));
    const named = (q: string): string[] => runs.filter((r) => q.includes(r.metadata.uid!)).map((r) => r.metadata.name!);
    az.queries.length = 0;
    const rounds: string[][] = [];
    for (let poll = 0; poll < 5; poll++) {
      await describeRuns(az.clients(), ctx, runs, watch);
      rounds.push(named(az.queries.at(-1)!));
      now += 1_000;
    }
    expect(az.queries).toHaveLength(5); // still one query per poll
    expect(rounds).toEqual([
      ["p30", "p31", "p32"],
      ["p33", "p34", "p35"],
      ["p30", "p31", "p36"], // p36 never asked yet, then the two asked longest ago
      ["p32", "p33", "p34"],
      ["p30", "p31", "p35"],
    ]);
    // Any three polls in a row ask every one of the seven Runs: none starves.
    for (let i = 0; i + 3 <= rounds.length; i++) expect(new Set(rounds.slice(i, i + 3).flat()).size).toBe(7);
  });

  it("the default cap keeps a CE's query to 100 Runs, a few KB of text, with 150 Runs waiting", async () => {
    const watch = new AzureRunWatch(60_000, () => now);
    const runs: Run[] = [];
    for (let i = 0; i < 150; i++) runs.push(await launched(100 + i, "running", { phase: "Launching" }));
    az.queries.length = 0;
    await describeRuns(az.clients(), ctx, runs, watch);
    expect(az.queries).toHaveLength(1);
    expect(runs.filter((r) => az.queries[0]!.includes(r.metadata.uid!))).toHaveLength(100);
    expect(az.queries[0]!.length).toBeLessThan(6_000);
    expect(LAUNCHER_LINES_QUERY_CAP).toBe(100);
    await describeRuns(az.clients(), ctx, runs, watch);
    // the 50 left out come first at the next poll
    expect(runs.slice(100).every((r) => az.queries[1]!.includes(r.metadata.uid!))).toBe(true);
  });
});
