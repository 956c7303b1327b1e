import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { ComputeEnvironment, Run } from "../../../src/api/types.js";
import type { CloudProvider } from "../../../src/cloud/provider.js";
import { CloudError } from "../../../src/cloud/provider.js";
import { TerminationBatches, sentFor, type TerminationBatchOptions } from "../../../src/controllers/run/terminations.js";

const ce = (name: string): ComputeEnvironment => ({ metadata: { name, namespace: "ns", uid: `ce-${name}` }, spec: { provider: "aws" } } as ComputeEnvironment);
const run = (name: string): Run => ({ metadata: { name, namespace: "ns", uid: `run-${name}` }, spec: { computeEnvironmentRef: { name: "a" } } } as Run);
const provider = { name: "aws" } as CloudProvider;

/** A batcher whose calls are recorded and answered by `answer` (default: every Run sent). */
function batches(over: Partial<TerminationBatchOptions> = {}, answer: (runs: Run[]) => Promise<Map<string, unknown>> = async () => new Map()) {
  const calls: { ce: string; runs: string[] }[] = [];
  const woken: string[] = [];
  const b = new TerminationBatches({
    gatherMs: 200,
    maxRuns: 1_000,
    callTimeoutMs: () => 60_000,
    send: async (c, _p, runs) => {
      calls.push({ ce: c.metadata.name ?? "", runs: runs.map((r) => r.metadata.name ?? "") });
      return answer(runs);
    },
    wake: (r) => woken.push(r.metadata.name ?? ""),
    ...over,
  });
  return { b, calls, woken };
}

describe("TerminationBatches", () => {
  beforeEach(() => vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"], now: new Date("2026-01-01T00:00:00Z") }));
  afterEach(() => vi.useRealTimers());

  it("sends the Runs of a CE added within the gathering time in one call, each CE apart, and wakes each Run with its outcome", async () => {
    // Each call takes 50 ms.
    const { b, calls, woken } = batches({}, async () => {
      await new Promise((r) => setTimeout(r, 50));
      return new Map();
    });
    b.add(ce("a"), provider, run("r1"));
    await vi.advanceTimersByTimeAsync(100);
    b.add(ce("a"), provider, run("r2"));
    b.add(ce("b"), provider, run("r3"));
    b.add(ce("a"), provider, run("r1")); // already waiting: once
    expect(b.take("run-r1")).toBe("pending");
    expect(calls).toEqual([]);
    await vi.advanceTimersByTimeAsync(100);
    expect(calls).toEqual([{ ce: "a", runs: ["r1", "r2"] }]);
    expect(woken).toEqual([]);
    await vi.advanceTimersByTimeAsync(50);
    expect(woken).toEqual(["r1", "r2"]);
    await vi.advanceTimersByTimeAsync(100);
    expect(calls).toEqual([{ ce: "a", runs: ["r1", "r2"] }, { ce: "b", runs: ["r3"] }]);
    const o = b.take("run-r1");
    // started when the call was, done when it answered
    expect(o).toEqual({ startedAt: Date.parse("2026-01-01T00:00:00.200Z"), doneAt: Date.parse("2026-01-01T00:00:00.250Z"), seen: {} });
    // taken once: asked again, nothing is kept
    expect(b.take("run-r1")).toBeUndefined();
    expect(b.take("run-never")).toBeUndefined();
    expect(b.size()).toEqual({ pending: 0, outcomes: 2 });
  });

  it("a full batch goes at once; Runs added while a CE's call is in flight wait for it and go together in the next", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let first = true;
    const { b, calls, woken } = batches({ maxRuns: 3 }, async () => {
      if (first) {
        first = false;
        await gate;
      }
      return new Map();
    });
    for (const n of ["r1", "r2", "r3", "r4"]) b.add(ce("a"), provider, run(n));
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toEqual([{ ce: "a", runs: ["r1", "r2", "r3"] }]);
    b.add(ce("a"), provider, run("r5"));
    await vi.advanceTimersByTimeAsync(1_000);
    // one call in flight per CE: r4 and r5 wait
    expect(calls).toHaveLength(1);
    expect(b.take("run-r4")).toBe("pending");
    release();
    await vi.advanceTimersByTimeAsync(0);
    expect(woken).toEqual(["r1", "r2", "r3"]);
    await vi.advanceTimersByTimeAsync(200);
    expect(calls).toEqual([{ ce: "a", runs: ["r1", "r2", "r3"] }, { ce: "a", runs: ["r4", "r5"] }]);
    expect(woken).toEqual(["r1", "r2", "r3", "r4", "r5"]);
  });

  it("an outcome had for another read of the Run (its machine recorded since) is not this read's", async () => {
    const sent: (string | undefined)[] = [];
    const { b } = batches({}, async (runs) => {
      sent.push(...runs.map((r) => r.status?.instance?.id));
      return new Map();
    });
    const stale = run("r1");
    const recorded: Run = { ...stale, status: { phase: "Pending", reason: "Launching", instance: { id: "i-1" } } };
    b.add(ce("a"), provider, recorded);
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toEqual(["i-1"]);
    const o = b.take("run-r1");
    if (o === undefined || o === "pending") throw new Error("no outcome");
    expect(o.seen).toEqual({ instanceId: "i-1", phase: "Pending", reason: "Launching" });
    expect(sentFor(o, recorded)).toBe(true);
    expect(sentFor(o, stale)).toBe(false);
    expect(sentFor(o, { ...recorded, status: { ...recorded.status, reason: "LaunchRetrying" } })).toBe(false);
  });

  it("a refused call is every Run's outcome, said once; a Run the answer names has its own; the others were sent", async () => {
    const denied = CloudError.terminal("AccessDenied", "ec2:TerminateInstances: denied");
    const own = CloudError.retryable("InstanceNotVisibleYet", "not visible yet");
    let refuse = true;
    const failures: { ce: string; runs: number; error: unknown }[] = [];
    const { b } = batches({ failed: (c, runs, error) => failures.push({ ce: c.metadata.name ?? "", runs, error }) }, async () => {
      if (refuse) throw denied;
      return new Map([["run-r2", own]]);
    });
    b.add(ce("a"), provider, run("r1"));
    b.add(ce("a"), provider, run("r3"));
    await vi.advanceTimersByTimeAsync(200);
    expect(b.take("run-r1")).toMatchObject({ error: denied });
    expect(b.take("run-r3")).toMatchObject({ error: denied });
    // Said once for the call, not once per Run.
    expect(failures).toEqual([{ ce: "a", runs: 2, error: denied }]);
    refuse = false;
    b.add(ce("a"), provider, run("r1"));
    b.add(ce("a"), provider, run("r2"));
    await vi.advanceTimersByTimeAsync(200);
    const sent = b.take("run-r1");
    expect(sent).not.toBeUndefined();
    expect(sent !== "pending" && sent !== undefined && "error" in sent).toBe(false);
    expect(b.take("run-r2")).toMatchObject({ error: own });
    // A Run's own failure is not the call's.
    expect(failures).toHaveLength(1);
  });

  it("a Run forgotten (its finalizer done) gets nothing kept, waiting or in flight; after close nothing is sent and the call in flight sees its signal aborted", async () => {
    let seen: AbortSignal | undefined;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const calls: string[][] = [];
    const woken: string[] = [];
    const b = new TerminationBatches({
      gatherMs: 200, maxRuns: 1_000, callTimeoutMs: () => 60_000,
      send: async (_c, _p, runs, signal) => {
        calls.push(runs.map((r) => r.metadata.name ?? ""));
        seen = signal;
        await gate;
        return new Map();
      },
      wake: (r) => woken.push(r.metadata.name ?? ""),
    });
    b.add(ce("a"), provider, run("r1"));
    b.add(ce("a"), provider, run("r2"));
    b.forget("run-r2");
    await vi.advanceTimersByTimeAsync(200);
    expect(calls).toEqual([["r1"]]);
    b.forget("run-r1");
    b.add(ce("a"), provider, run("r3"));
    b.close(new Error("stopping"));
    expect(seen?.aborted).toBe(true);
    release();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls).toEqual([["r1"]]);
    expect(woken).toEqual([]);
    expect(b.take("run-r1")).toBeUndefined();
    b.add(ce("a"), provider, run("r4"));
    expect(b.take("run-r4")).toBeUndefined();
    expect(b.size()).toEqual({ pending: 0, outcomes: 0 });
  });

  it("a Run added again while it waits is not added twice and keeps its first read (the reconciler adds only a Run that does not wait)", async () => {
    const sent: (string | undefined)[] = [];
    const { b, calls } = batches({}, async (runs) => {
      sent.push(...runs.map((r) => r.status?.instance?.id));
      return new Map();
    });
    b.add(ce("a"), provider, { ...run("r1"), status: { instance: { id: "i-1" } } });
    b.add(ce("a"), provider, { ...run("r1"), status: { instance: { id: "i-2" } } });
    await vi.advanceTimersByTimeAsync(200);
    expect(calls).toHaveLength(1);
    expect(sent).toEqual(["i-1"]);
  });

  it("the call's time limit is asked for the batch's size", async () => {
    const asked: number[] = [];
    const { b } = batches({ callTimeoutMs: (n) => (asked.push(n), 60_000) });
    for (const n of ["r1", "r2", "r3"]) b.add(ce("a"), provider, run(n));
    await vi.advanceTimersByTimeAsync(200);
    expect(asked).toEqual([3]);
  });

  it("a call still going after callTimeoutMs is aborted: its Runs' outcome is the abort; one that does not heed the signal is not waited for either", async () => {
    let seen: AbortSignal | undefined;
    const timed = new TerminationBatches({
      gatherMs: 200, maxRuns: 1_000, callTimeoutMs: () => 5_000,
      send: (_c, _p, _runs, signal) => {
        seen = signal;
        return new Promise((_r, reject) => signal.addEventListener("abort", () => reject(signal.reason as Error)));
      },
      wake: () => undefined,
    });
    timed.add(ce("a"), provider, run("r1"));
    await vi.advanceTimersByTimeAsync(200 + 4_999);
    expect(seen?.aborted).toBe(false);
    expect(timed.take("run-r1")).toBe("pending");
    await vi.advanceTimersByTimeAsync(1);
    expect(seen?.aborted).toBe(true);
    const o = timed.take("run-r1");
    expect(o !== undefined && o !== "pending" && o.error instanceof CloudError && o.error.kind === "Retryable").toBe(true);
    const deaf = new TerminationBatches({ gatherMs: 200, maxRuns: 1_000, callTimeoutMs: () => 5_000, send: () => new Promise(() => undefined), wake: () => undefined });
    deaf.add(ce("a"), provider, run("r2"));
    await vi.advanceTimersByTimeAsync(200 + 5_000);
    const d = deaf.take("run-r2");
    expect(d !== undefined && d !== "pending" && "error" in d).toBe(true);
  });
});
