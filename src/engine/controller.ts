// Controller: a bounded pool of workers taking keys from a WorkQueue and running a reconcile
// function on each, with a per-reconcile timeout, error classification and metrics.
//
//  - success            -> queue.forget(key) (backoff reset); { requeueAfterMs } -> queue.addAfter
//                          (a negative wait, worked out from a deadline that passed meanwhile,
//                          runs the key again now; +Infinity or NaN schedules nothing)
//  - TerminalError      -> onTerminalError hook, queue.forget(key); no retry until the key is added
//                          again (e.g. by a spec change seen by the reflector)
//  - any other error    -> queue.addRateLimited(key) (exponential backoff + global token bucket);
//                          an error with a numeric `retryAfterMs` (e.g. a throttling hint from a
//                          cloud API) waits at least that long
//  - 409 Conflict       -> queue.addAfter(key, 100 ms): a write built on a stale cached read; the
//                          watch brings the fresh version in a moment (no error backoff)
//  - timeout            -> the reconcile's signal is aborted; counted as retryable
//
// Nothing a reconcile throws or rejects with escapes: every promise the controller creates is
// handled, so a failing reconcile never takes the process down.

import { KubeApiError } from "./kube.js";
import type { Logger } from "./logger.js";
import type { EngineMetrics } from "./metrics.js";
import { WorkQueue } from "./queue.js";
import { OwnWrites } from "./echoes.js";
import { monotonicNow } from "./clock.js";

/** An error retrying cannot fix (bad spec, missing permission by design, ...). `reason` is CamelCase. */
export class TerminalError extends Error {
  readonly reason: string;

  constructor(reason: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TerminalError";
    this.reason = reason;
  }
}

export function isTerminalError(err: unknown): err is TerminalError {
  return err instanceof TerminalError;
}

/** The abort reason of a reconcile that ran past reconcileTimeoutMs. */
export class ReconcileTimeoutError extends Error {
  constructor(key: string, ms: number) {
    super(`reconcile of ${key} did not finish within ${ms} ms`);
    this.name = "ReconcileTimeoutError";
  }
}

/** How soon a reconcile that lost a write race (409 Conflict) runs again. */
const CONFLICT_RETRY_MS = 100;

export type ReconcileResult = { requeueAfterMs?: number } | void;

export interface ControllerOptions {
  name: string;
  reconcile: (key: string, signal: AbortSignal) => Promise<ReconcileResult>;
  /** Parallel reconciles (never two on the same key). Default 2. */
  workers?: number;
  /** Per-reconcile deadline; the signal is aborted when it passes. Default 5 minutes. */
  reconcileTimeoutMs?: number;
  queue?: WorkQueue;
  logger: Logger;
  metrics?: EngineMetrics;
  onTerminalError?: (key: string, err: TerminalError) => Promise<void>;
  /**
   * Another controller's queue whose keys go first: a worker that took a key waits until that
   * queue has none waiting or in progress (at most `maxWaitMs`, default 1 s) before reconciling it. For work
   * that is cheap and must not queue behind this controller's (e.g. acknowledging new objects).
   * How the workers that had to wait are let go is that queue's choice (WorkQueueOptions.idleSpacingMs,
   * WorkQueue.whenIdle).
   */
  yieldTo?: { queue: Pick<WorkQueue, "whenIdle">; maxWaitMs?: number };
  /**
   * Whether reconciles may start now (e.g. the Lease is still ours: LeaderElector.isLeader, which
   * turns false once the last renewal is older than the renew deadline, as after the machine or
   * process was suspended, before the renew loop notices). While false, a worker holds the key it
   * took and looks again every MAY_WORK_RECHECK_MS; once leadership is lost for good the
   * controller is stopped (abortInFlight) and the key is let go.
   */
  mayWork?: () => boolean;
}

/** How often a worker held back by mayWork looks again. */
const MAY_WORK_RECHECK_MS = 100;

interface InFlight {
  key: string;
  abort: AbortController;
  settled: Promise<void>;
}

export class Controller {
  readonly name: string;
  readonly queue: WorkQueue;
  /** Writes of this controller's reconciles whose watch events need no reconcile (see OwnWrites). */
  readonly ownWrites = new OwnWrites((key) => this.enqueue(key));
  private readonly reconcileFn: ControllerOptions["reconcile"];
  private readonly workers: number;
  private readonly timeoutMs: number;
  private readonly log: Logger;
  private readonly metrics: EngineMetrics | undefined;
  private readonly onTerminalError: ControllerOptions["onTerminalError"];
  private readonly yieldTo: ControllerOptions["yieldTo"];
  private readonly mayWork: ControllerOptions["mayWork"];
  private readonly inFlight = new Set<InFlight>();
  private loops: Promise<void>[] = [];
  private started = false;
  private stopping = false;
  private stopped: Promise<void> | undefined;

  constructor(opts: ControllerOptions) {
    this.name = opts.name;
    this.reconcileFn = opts.reconcile;
    this.workers = opts.workers ?? 2;
    this.timeoutMs = opts.reconcileTimeoutMs ?? 5 * 60_000;
    if (!Number.isInteger(this.workers) || this.workers < 1) throw new RangeError(`controller ${opts.name}: workers must be an integer >= 1`);
    if (!(this.timeoutMs > 0)) throw new RangeError(`controller ${opts.name}: reconcileTimeoutMs must be > 0`);
    this.metrics = opts.metrics;
    this.queue = opts.queue ?? new WorkQueue({ name: opts.name, ...(opts.metrics ? { metrics: opts.metrics } : {}) });
    this.log = opts.logger.bindings().controller === undefined ? opts.logger.child({ controller: opts.name }) : opts.logger;
    this.onTerminalError = opts.onTerminalError;
    this.yieldTo = opts.yieldTo;
    this.mayWork = opts.mayWork;
  }

  enqueue(key: string): void {
    this.queue.add(key);
  }

  enqueueAfter(key: string, ms: number): void {
    this.queue.addAfter(key, ms);
  }

  /** Reconciles currently running (including ones that outlived their timeout). */
  inFlightCount(): number {
    return this.inFlight.size;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.log.info({ workers: this.workers }, "controller starting");
    for (let i = 0; i < this.workers; i++) {
      this.loops.push(this.worker(i).catch((err: unknown) => this.log.error({ err }, "worker loop failed")));
    }
  }

  /**
   * Graceful stop: no new keys are taken, running reconciles get most of `deadlineMs` to finish,
   * then their signals are aborted and the rest of the deadline is left for them to unwind. The
   * returned promise settles within `deadlineMs` even when a reconcile ignores its signal (that
   * reconcile is abandoned). Idempotent.
   */
  stop(deadlineMs = 30_000): Promise<void> {
    this.stopped ??= this.doStop(deadlineMs);
    return this.stopped;
  }

  /**
   * Stops taking keys and aborts every running reconcile at once (e.g. leadership was lost: another
   * process may already act on the same objects). stop() may still be called to wait for them.
   */
  abortInFlight(reason: Error): void {
    this.stopping = true;
    this.queue.shutDown();
    const left = [...this.inFlight];
    if (left.length > 0) this.log.warn({ keys: left.map((f) => f.key), reason: reason.message }, "aborting running reconciles");
    for (const f of left) f.abort.abort(reason);
  }

  private async doStop(deadlineMs: number): Promise<void> {
    this.stopping = true;
    this.queue.shutDown();
    const total = Math.max(0, deadlineMs);
    const end = monotonicNow() + total;
    // the last fifth of the deadline (at most 1 s) is left for aborted reconciles to unwind
    const unwindMs = Math.min(1_000, total / 5);
    const pending = [...this.inFlight];
    this.log.info({ inFlight: pending.length, deadlineMs }, "controller stopping");
    const finished = await settleWithin(
      Promise.all(pending.map((f) => f.settled)),
      total - unwindMs,
    );
    if (!finished) {
      const left = [...this.inFlight];
      this.log.warn({ keys: left.map((f) => f.key) }, "stop deadline near; aborting running reconciles");
      for (const f of left) f.abort.abort(new Error(`controller ${this.name} is stopping`));
      // give aborted reconciles the rest of the deadline to unwind; ones that ignore the signal are abandoned
      await settleWithin(Promise.all(left.map((f) => f.settled)), end - monotonicNow());
    }
    await settleWithin(Promise.all(this.loops), end - monotonicNow());
    this.log.info({ abandoned: this.inFlight.size }, "controller stopped");
  }

  private async worker(id: number): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      if (this.yieldTo && !this.stopping) {
        const from = monotonicNow();
        await this.yieldTo.queue.whenIdle(this.yieldTo.maxWaitMs ?? 1_000);
        this.metrics?.reconcileHeld.observe({ controller: this.name }, (monotonicNow() - from) / 1000);
      }
      while (this.mayWork && !this.stopping && !this.mayWork()) await new Promise((r) => setTimeout(r, MAY_WORK_RECHECK_MS));
      if (this.stopping) {
        this.queue.done(key);
        return;
      }
      try {
        await this.process(key);
      } catch (err) {
        // process() handles everything itself; this is a last line of defence
        this.log.error({ err, key, worker: id }, "unexpected failure while processing a key");
        this.queue.done(key);
      }
    }
  }

  /**
   * Runs one reconcile. Returns when it settled or when its timeout passed; a reconcile that
   * ignores its aborted signal keeps its key (done() only after it settles) so that no second
   * reconcile of the same key can start, while the worker moves on.
   */
  private async process(key: string): Promise<void> {
    const abort = new AbortController();
    const started = performance.now();
    this.metrics?.reconcileInFlight.inc({ controller: this.name });

    let outcome: { ok: true; value: ReconcileResult } | { ok: false; err: unknown };
    const settledPromise = Promise.resolve()
      .then(() => this.reconcileFn(key, abort.signal))
      .then(
        (value) => (outcome = { ok: true, value }),
        (err: unknown) => (outcome = { ok: false, err }),
      );
    const entry: InFlight = { key, abort, settled: settledPromise.then(() => undefined) };
    this.inFlight.add(entry);

    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), this.timeoutMs);
    });
    const first = await Promise.race([settledPromise.then(() => "settled" as const), timedOut]);
    clearTimeout(timer);

    if (first === "timeout") {
      abort.abort(new ReconcileTimeoutError(key, this.timeoutMs));
      this.finishMetrics(started, "timeout");
      this.metrics?.reconcileErrors.inc({ controller: this.name, kind: "timeout" });
      this.log.warn({ key, timeoutMs: this.timeoutMs }, "reconcile timed out; will retry");
      // retry once the abandoned call has really finished
      void entry.settled.then(() => {
        this.inFlight.delete(entry);
        this.metrics?.reconcileInFlight.dec({ controller: this.name });
        this.queue.addRateLimited(key);
        this.queue.done(key);
      });
      return;
    }

    this.inFlight.delete(entry);
    this.metrics?.reconcileInFlight.dec({ controller: this.name });
    try {
      // outcome is always set once settledPromise resolved
      await this.handleOutcome(key, outcome!, started, abort.signal);
    } finally {
      this.queue.done(key);
    }
  }

  private async handleOutcome(
    key: string,
    outcome: { ok: true; value: ReconcileResult } | { ok: false; err: unknown },
    started: number,
    signal: AbortSignal,
  ): Promise<void> {
    if (outcome.ok) {
      this.queue.forget(key);
      const after = outcome.value?.requeueAfterMs;
      if (after !== undefined && !Number.isNaN(after) && after !== Infinity) {
        // A wait a reconcile worked out as "deadline minus now" after awaiting something is
        // negative when the deadline passed meanwhile: that asks for now, not for never (no watch
        // event may come to run the key again before the next resync).
        const wait = Math.max(0, after);
        this.queue.addAfter(key, wait);
        this.finishMetrics(started, "requeue");
        this.log.debug({ key, requeueAfterMs: wait }, "reconciled; requeue scheduled");
      } else {
        this.finishMetrics(started, "success");
        this.log.debug({ key }, "reconciled");
      }
      return;
    }

    const err = outcome.err;
    if (isTerminalError(err)) {
      this.queue.forget(key);
      this.finishMetrics(started, "terminal");
      this.metrics?.reconcileErrors.inc({ controller: this.name, kind: "terminal" });
      this.log.warn({ key, reason: err.reason, err }, "reconcile failed terminally; waiting for a change");
      if (this.onTerminalError) {
        try {
          await this.onTerminalError(key, err);
        } catch (hookErr) {
          this.log.error({ key, err: hookErr }, "onTerminalError hook failed; will retry");
          this.queue.addRateLimited(key);
        }
      }
      return;
    }

    if (this.stopping && signal.aborted) {
      this.finishMetrics(started, "aborted");
      this.log.info({ key }, "reconcile aborted by shutdown");
      return;
    }
    if (err instanceof KubeApiError && err.status === 409) {
      // A write built on a stale read (the cache lags the write that raced it): the fresh version
      // is at most a moment away, so look again shortly, without the error backoff.
      this.finishMetrics(started, "conflict");
      this.metrics?.reconcileErrors.inc({ controller: this.name, kind: "conflict" });
      this.queue.addAfter(key, CONFLICT_RETRY_MS);
      this.log.debug({ key, err: err.message }, "write conflict; looking again");
      return;
    }
    this.finishMetrics(started, "error");
    this.metrics?.reconcileErrors.inc({ controller: this.name, kind: "retryable" });
    const hint = retryAfterHint(err);
    this.queue.addRateLimited(key, hint);
    this.log.warn({ key, err, retries: this.queue.numRequeues(key), ...(hint ? { retryAfterMs: hint } : {}) }, "reconcile failed; will retry with backoff");
  }

  private finishMetrics(started: number, result: string): void {
    this.metrics?.reconcileTotal.inc({ controller: this.name, result });
    this.metrics?.reconcileDuration.observe({ controller: this.name }, (performance.now() - started) / 1000);
  }
}

/** true when `p` settled within `ms`, false otherwise (p's own result is ignored). */
async function settleWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), Math.max(0, ms));
  });
  try {
    return await Promise.race([p.then(() => true, () => true), t]);
  } finally {
    clearTimeout(timer);
  }
}

/** The longest wait a hint may ask for (one hour): a bogus date must not stop work for days. */
export const MAX_RETRY_AFTER_MS = 3_600_000;

/** The wait an error asks for, if it carries a numeric `retryAfterMs` (at most MAX_RETRY_AFTER_MS). */
export function retryAfterHint(err: unknown): number {
  const v = typeof err === "object" && err !== null ? (err as { retryAfterMs?: unknown }).retryAfterMs : undefined;
  return typeof v === "number" && Number.isFinite(v) && v > 0 ? Math.min(v, MAX_RETRY_AFTER_MS) : 0;
}
