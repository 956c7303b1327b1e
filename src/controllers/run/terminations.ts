import type { ComputeEnvironment, Run } from "../../api/types.js";
import { CloudError, type CloudProvider } from "../../cloud/provider.js";

/**
 * Terminations of Runs ending about the same time (deleted, cancelled, timed out, or ended with
 * their machine still up), gathered per ComputeEnvironment into one provider call
 * (CloudProvider.terminateRuns: on AWS one tag search per 200 Runs and one TerminateInstances per
 * 1,000 machines, where each Run's own call cost one of each).
 *
 * A reconcile does not wait for the call: it adds its Run and returns, so the Runs of a batch are
 * not capped by the number of workers. The first Run added to a CE's empty batch waits `gatherMs`
 * for others (less when the batch is full); while a CE's call is in flight, the Runs added meanwhile
 * wait for it to end and another gathering time, so one CE has one call in flight at most (given up
 * after callTimeoutMs; one that does not heed its abort may then still run beside the next). When
 * the call ends, each Run of the batch is woken and its next reconcile takes what became of it (take).
 */
export interface BatchedTermination {
  /** When the batch's call was started (Date.now()): the look at the Run's machines came after this. */
  startedAt: number;
  /** When it ended (Date.now()): the termination was sent before this. */
  doneAt: number;
  /** Present when the Run's termination was not sent: why (the call's error, or the Run's own). */
  error?: unknown;
  /**
   * The Run as the call saw it: its recorded machine, and whether its launch was decided without a
   * recorded machine. A reconcile reading the Run otherwise (the cache was behind when it was
   * added) does not take this outcome as its own.
   */
  seen: { instanceId?: string; phase?: string; reason?: string };
}

export interface TerminationBatchOptions {
  /** How long the first Run of a batch waits for others to join it (ms). */
  gatherMs: number;
  /** At most this many Runs in one call; a full batch goes at once. */
  maxRuns: number;
  /**
   * Sends one batch (resolving credentials, then provider.terminateRuns): resolves to the Runs whose
   * termination was not sent, with why; a rejection counts for every Run of the batch.
   */
  send: (ce: ComputeEnvironment, provider: CloudProvider, runs: Run[], signal: AbortSignal) => Promise<Map<string, unknown>>;
  /**
   * A call for this many Runs still going after this long (ms) is given up: its Runs' outcome is a
   * Retryable error and they are sent again (what it did meanwhile stands: it is found done then).
   */
  callTimeoutMs: (runs: number) => number;
  /** Called for each Run of a batch once its call has ended. */
  wake: (run: Run) => void;
  /** Called once when a call failed as a whole (it threw, or was given up): how many Runs it had, and why. */
  failed?: (ce: ComputeEnvironment, runs: number, error: unknown) => void;
}

interface Batch {
  /** The latest CE object and provider a Run of this CE was added with. */
  ce: ComputeEnvironment;
  provider: CloudProvider;
  /** Runs waiting for the next call, by UID. */
  waiting: Map<string, Run>;
  timer?: NodeJS.Timeout;
  sending: boolean;
}

/** Outcomes nobody took (the Run's finalizer was removed by another hand, or it ended otherwise) are dropped after this. */
const OUTCOME_KEEP_MS = 10 * 60_000;

/** What of a Run a termination depends on (see BatchedTermination.seen). */
export function seenOf(run: Run): BatchedTermination["seen"] {
  const s = run.status;
  return { ...(s?.instance?.id ? { instanceId: s.instance.id } : {}), ...(s?.phase ? { phase: s.phase } : {}), ...(s?.reason ? { reason: s.reason } : {}) };
}

/** Whether the outcome was had for this read of the Run (see BatchedTermination.seen). */
export function sentFor(o: BatchedTermination, run: Run): boolean {
  const now = seenOf(run);
  return o.seen.instanceId === now.instanceId && o.seen.phase === now.phase && o.seen.reason === now.reason;
}

export class TerminationBatches {
  /** CE UID -> its batch. */
  private readonly batches = new Map<string, Batch>();
  /** Run UID -> what became of its termination, until taken. */
  private readonly outcomes = new Map<string, BatchedTermination>();
  /** Run UIDs waiting for a call or in one. */
  private readonly pending = new Set<string>();
  private readonly abort = new AbortController();
  /** The calls in flight, aborted on close (one listener on the close signal per call would pile up). */
  private readonly inFlight = new Set<AbortController>();

  constructor(private readonly o: TerminationBatchOptions) {}

  /**
   * What became of the Run's termination once its call ended (taken: asked again, undefined),
   * "pending" while it waits for a call or is in one, undefined when it was not added.
   */
  take(runUid: string): BatchedTermination | "pending" | undefined {
    if (this.pending.has(runUid)) return "pending";
    const o = this.outcomes.get(runUid);
    this.outcomes.delete(runUid);
    return o;
  }

  /** Adds the Run to its CE's next call (nothing when it waits for one or is in one, or after close). */
  add(ce: ComputeEnvironment, provider: CloudProvider, run: Run): void {
    const runUid = run.metadata.uid;
    // (A CE object without a UID, which the API never gives, is keyed by its name.)
    const ceUid = ce.metadata.uid ?? `${ce.metadata.namespace}/${ce.metadata.name}`;
    if (!runUid || this.abort.signal.aborted) return;
    if (this.pending.has(runUid)) return;
    this.outcomes.delete(runUid);
    let b = this.batches.get(ceUid);
    if (!b) {
      b = { ce, provider, waiting: new Map(), sending: false };
      this.batches.set(ceUid, b);
    }
    b.ce = ce;
    b.provider = provider;
    b.waiting.set(runUid, run);
    this.pending.add(runUid);
    this.schedule(ceUid, b);
  }

  /** Drops what is kept of the Run (its finalizer is done, or it ended). A call in flight still sends it; nothing is kept of it. */
  forget(runUid: string): void {
    this.outcomes.delete(runUid);
    this.pending.delete(runUid);
    for (const b of this.batches.values()) b.waiting.delete(runUid);
  }

  /** Stops for good: nothing more is sent, a call in flight is aborted (shutdown, leadership lost). */
  close(reason: Error): void {
    this.abort.abort(reason);
    for (const c of this.inFlight) c.abort(reason);
    for (const b of this.batches.values()) clearTimeout(b.timer);
    this.batches.clear();
    this.pending.clear();
    this.outcomes.clear();
  }

  /** Runs waiting or in flight, and outcomes not taken yet (for tests and metrics). */
  size(): { pending: number; outcomes: number } {
    return { pending: this.pending.size, outcomes: this.outcomes.size };
  }

  private schedule(ceUid: string, b: Batch): void {
    if (this.abort.signal.aborted || b.sending || b.waiting.size === 0) return;
    const full = b.waiting.size >= this.o.maxRuns;
    if (b.timer && !full) return;
    clearTimeout(b.timer);
    b.timer = setTimeout(() => void this.flush(ceUid, b), full ? 0 : this.o.gatherMs);
  }

  private async flush(ceUid: string, b: Batch): Promise<void> {
    b.timer = undefined;
    if (this.abort.signal.aborted || b.sending) return;
    const runs = [...b.waiting.values()].slice(0, this.o.maxRuns);
    if (runs.length === 0) {
      this.batches.delete(ceUid);
      return;
    }
    for (const r of runs) b.waiting.delete(r.metadata.uid ?? "");
    b.sending = true;
    const startedAt = Date.now();
    let failed = new Map<string, unknown>();
    let all: { error: unknown } | undefined;
    // Aborted on close or after callTimeoutMs; a call that does not heed its signal is not waited
    // for past that either.
    const ctl = new AbortController();
    this.inFlight.add(ctl);
    const limit = this.o.callTimeoutMs(runs.length);
    const timer = setTimeout(() => ctl.abort(CloudError.retryable("TerminationTimedOut", `terminating the machines of ${runs.length} Runs took over ${Math.round(limit / 1000)} s; sending again`)), limit);
    try {
      const aborted = new Promise<never>((_r, reject) => ctl.signal.addEventListener("abort", () => reject(ctl.signal.reason as Error), { once: true }));
      failed = await Promise.race([this.o.send(b.ce, b.provider, runs, ctl.signal), aborted]);
    } catch (e) {
      all = { error: e };
    } finally {
      clearTimeout(timer);
      this.inFlight.delete(ctl);
    }
    const doneAt = Date.now();
    b.sending = false;
    if (this.abort.signal.aborted) return;
    if (all) {
      try {
        this.o.failed?.(b.ce, runs.length, all.error);
      } catch {
        // Only a report: the Runs below are woken whatever it did.
      }
    }
    for (const [uid, o] of this.outcomes) if (doneAt - o.doneAt > OUTCOME_KEEP_MS) this.outcomes.delete(uid);
    for (const r of runs) {
      const uid = r.metadata.uid ?? "";
      // Forgotten meanwhile (its finalizer done), or forgotten and added again (waiting for the
      // next call): nothing of this call to hand back.
      if (b.waiting.has(uid) || !this.pending.delete(uid)) continue;
      const own = all ?? (failed.has(uid) ? { error: failed.get(uid) } : undefined);
      this.outcomes.set(uid, { startedAt, doneAt, ...own, seen: seenOf(r) });
      this.o.wake(r);
    }
    if (b.waiting.size === 0) {
      if (this.batches.get(ceUid) === b) this.batches.delete(ceUid);
    } else this.schedule(ceUid, b);
  }
}
