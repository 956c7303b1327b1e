// Keyed work queue with the semantics controllers rely on:
//  - a key is queued at most once: adding a key that is already waiting is a no-op;
//  - a key is handed to at most one worker at a time: adding a key that is being processed marks
//    it dirty, and it is queued again when the worker calls done(key);
//  - delayed adds (addAfter): if the key is already scheduled, the earlier time wins;
//  - rate-limited adds (addRateLimited): the delay is the larger of a per-key exponential backoff
//    (baseDelayMs * 2^failures, capped at maxDelayMs, reset by forget) and a global token bucket
//    (qps, burst) shared by all keys;
//  - a rate-limited add with a minimum delay (a hint such as a cloud's Retry-After) also holds the
//    key until then: an add() meanwhile (a watch event, the key's own status write, a re-add while
//    it was processed) is deferred to that time instead of running it early. Plain backoff does not
//    hold a key: a change still runs it at once;
//  - shutDown(): further adds are ignored, get() keeps handing out what is already queued and
//    then resolves undefined.

import { monotonicNow } from "./clock.js";
import type { EngineMetrics } from "./metrics.js";

export interface WorkQueueOptions {
  /** First retry delay of a key. Default 5 ms. */
  baseDelayMs?: number;
  /** Cap of the per-key backoff. Default 5 minutes. */
  maxDelayMs?: number;
  /** Token bucket refill rate, tokens per second. Default 10. */
  qps?: number;
  /** Token bucket size. Default 100. */
  burst?: number;
  metrics?: EngineMetrics;
  /** Label of the queue in metrics. Default "default". */
  name?: string;
  /** Clock, for tests. Default the monotonic clock (clock.ts). */
  now?: () => number;
  /**
   * After a backlog (a key that had to wait for a worker, until it is done), how far apart
   * whenIdle callers are let go, in ms (see whenIdle). Default 0: all of them at the first moment
   * the queue is idle.
   */
  idleSpacingMs?: number;
}

/**
 * Token bucket in the style of a reservation limiter: each take() returns how long to wait.
 * Reservations are handed out in call order, so waiting that long keeps the callers in order.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly qps: number,
    private readonly burst: number,
    private readonly now: () => number = monotonicNow,
  ) {
    this.tokens = burst;
    this.last = now();
  }

  /** Reserve one token; returns the delay in ms until that token is available (0 = now). */
  take(): number {
    if (!(this.qps > 0) || !Number.isFinite(this.qps)) return 0;
    const t = this.now();
    this.tokens = this.refilled(t);
    this.last = t;
    this.tokens -= 1;
    if (this.tokens >= 0) return 0;
    return Math.ceil((-this.tokens / this.qps) * 1000);
  }

  /**
   * Gives back a token taken and then not used, at its time. Only when no one holds a later
   * reservation: those are spaced already, and moving them all a slot earlier would let them go
   * faster than the rate. Never beyond the burst.
   */
  refund(): void {
    if (!(this.qps > 0) || !Number.isFinite(this.qps)) return;
    const t = this.now();
    const refilled = this.refilled(t);
    this.tokens = refilled >= 0 ? Math.min(this.burst, refilled + 1) : refilled;
    this.last = t;
  }

  /**
   * Tokens at `t`. Time that seems to run backwards (a clock that can step) refills nothing and
   * takes nothing: the bucket goes on from `t` rather than waiting until the clock is back where
   * it was.
   */
  private refilled(t: number): number {
    return Math.min(this.burst, this.tokens + (Math.max(0, t - this.last) / 1000) * this.qps);
  }
}

/** The longest delay setTimeout holds (2^31 - 1 ms); a longer one fires after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Scheduled {
  readyAt: number;
  timer: NodeJS.Timeout;
}

export class WorkQueue {
  readonly name: string;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly metrics: EngineMetrics | undefined;
  private readonly now: () => number;
  private readonly bucket: TokenBucket;

  /** Keys ready to be handed out, in order. */
  private readonly queue: string[] = [];
  /** Keys that need processing (queued, or re-added while processing). */
  private readonly dirty = new Set<string>();
  /** Keys currently held by a worker. */
  private readonly processing = new Set<string>();
  /** When each queued key was queued (for the latency histogram). */
  private readonly queuedAt = new Map<string, number>();
  private readonly scheduled = new Map<string, Scheduled>();
  private readonly failures = new Map<string, number>();
  /** Keys held until a time a hint asked for (see addRateLimited). */
  private readonly notBefore = new Map<string, number>();
  private waiters: (() => void)[] = [];
  private drainWaiters: (() => void)[] = [];
  private readonly idleSpacingMs: number;
  /** whenIdle callers in line, in the order they came. */
  private idleWaiters: (() => void)[] = [];
  /** When the last whenIdle caller was let go singly from the line (for the spacing). */
  private lastIdleRelease = -Infinity;
  /**
   * Keys in progress that a worker found waiting for it (a backlog: more keys than free workers),
   * and when the last such key was done.
   */
  private readonly fromBacklog = new Set<string>();
  private lastBacklogAt = -Infinity;
  /** The next spaced release of the line of whenIdle callers, when one is due. */
  private idleTimer: NodeJS.Timeout | undefined;
  private shutdown = false;

  constructor(opts: WorkQueueOptions = {}) {
    this.name = opts.name ?? "default";
    this.baseDelayMs = opts.baseDelayMs ?? 5;
    this.maxDelayMs = opts.maxDelayMs ?? 5 * 60_000;
    this.metrics = opts.metrics;
    this.now = opts.now ?? monotonicNow;
    this.bucket = new TokenBucket(opts.qps ?? 10, opts.burst ?? 100, this.now);
    this.idleSpacingMs = opts.idleSpacingMs ?? 0;
    if (!(this.baseDelayMs >= 0) || !(this.maxDelayMs >= this.baseDelayMs)) {
      throw new RangeError(`work queue ${this.name}: need 0 <= baseDelayMs <= maxDelayMs`);
    }
    if (!(this.idleSpacingMs >= 0) || !Number.isFinite(this.idleSpacingMs)) {
      throw new RangeError(`work queue ${this.name}: need a finite idleSpacingMs >= 0`);
    }
    this.updateDepth();
  }

  get shuttingDown(): boolean {
    return this.shutdown;
  }

  /** Queue `key` now (no-op if already queued; deferred until done() if being processed). */
  add(key: string): void {
    if (this.shutdown) return;
    const held = this.heldFor(key);
    if (held > 0) {
      this.addAfter(key, held);
      return;
    }
    if (this.dirty.has(key)) return;
    this.dirty.add(key);
    this.metrics?.queueAdds.inc({ queue: this.name });
    if (this.processing.has(key)) return;
    this.push(key);
  }

  /**
   * Queue `key` after `ms`; if it is already scheduled earlier, the earlier time stays. A wait
   * longer than a timer can hold (about 24.8 days) is cut to that, not fired at once as Node does.
   */
  addAfter(key: string, ms: number): void {
    if (this.shutdown) return;
    if (!(ms > 0)) {
      this.add(key);
      return;
    }
    ms = Math.min(ms, MAX_TIMER_MS);
    const readyAt = this.now() + ms;
    const existing = this.scheduled.get(key);
    if (existing && existing.readyAt <= readyAt) return;
    if (existing) clearTimeout(existing.timer);
    const timer = setTimeout(() => {
      const cur = this.scheduled.get(key);
      if (cur?.timer !== timer) return;
      this.scheduled.delete(key);
      this.add(key);
    }, ms);
    this.scheduled.set(key, { readyAt, timer });
  }

  /** Queue `key` after its backoff delay (and the global rate limit); counts as one more failure. */
  addRateLimited(key: string, minDelayMs = 0): void {
    if (this.shutdown) return;
    this.metrics?.queueRetries.inc({ queue: this.name });
    if (minDelayMs > 0) this.notBefore.set(key, this.now() + minDelayMs);
    this.addAfter(key, Math.max(this.whenReady(key), minDelayMs));
  }

  /** How long `key` is still held by a hint (0 = not held). */
  private heldFor(key: string): number {
    const until = this.notBefore.get(key);
    if (until === undefined) return 0;
    const left = until - this.now();
    if (left > 0) return left;
    this.notBefore.delete(key);
    return 0;
  }

  /** The delay addRateLimited would use, bumping the key's failure count. */
  whenReady(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const backoff = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** n);
    return Math.max(backoff, this.bucket.take());
  }

  /** Forget the failure history of `key` (its next addRateLimited starts at baseDelayMs again). */
  forget(key: string): void {
    this.failures.delete(key);
    this.notBefore.delete(key);
  }

  /** How many times `key` was rate-limited since the last forget. */
  numRequeues(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /**
   * Next key to process, waiting until one is available. The caller owns the key until it calls
   * done(key). Resolves undefined once the queue is shut down and empty.
   */
  async get(): Promise<string | undefined> {
    let woken = false;
    for (;;) {
      const key = this.queue.shift();
      if (key !== undefined) {
        // a key handed to a worker that was waiting for one is no backlog; one a worker found is
        if (!woken) {
          this.fromBacklog.add(key);
          this.metrics?.queueBacklog.inc({ queue: this.name });
        }
        this.dirty.delete(key);
        this.processing.add(key);
        const at = this.queuedAt.get(key);
        this.queuedAt.delete(key);
        if (at !== undefined) this.metrics?.queueLatency.observe({ queue: this.name }, (this.now() - at) / 1000);
        this.updateDepth();
        return key;
      }
      if (this.shutdown) return undefined;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
      woken = true;
    }
  }

  /** Release `key`; if it was added again meanwhile it goes back into the queue. */
  done(key: string): void {
    if (!this.processing.delete(key)) return;
    // the backlog lasts until its keys are done: the queue is idle only after that
    if (this.fromBacklog.delete(key)) this.lastBacklogAt = this.now();
    // re-added while it was processed (possibly before a shutdown): hand it out again, unless a
    // hint holds it (then at the end of the hold; addRateLimited already scheduled that)
    if (this.dirty.has(key)) {
      const held = this.shutdown ? 0 : this.heldFor(key);
      if (held > 0) {
        this.dirty.delete(key);
        this.addAfter(key, held);
      } else {
        this.push(key);
      }
    }
    this.wakeIdle();
    this.checkDrained();
  }

  /** Keys waiting to be handed out (not counting delayed or in-process keys). */
  len(): number {
    return this.queue.length;
  }

  /** Keys currently held by workers. */
  processingCount(): number {
    return this.processing.size;
  }

  /** Keys waiting for a delayed add. */
  scheduledCount(): number {
    return this.scheduled.size;
  }

  /** Stop accepting keys and drop delayed adds; get() drains what is queued, then resolves undefined. */
  shutDown(): void {
    if (this.shutdown) return;
    this.shutdown = true;
    for (const s of this.scheduled.values()) clearTimeout(s.timer);
    this.scheduled.clear();
    this.notBefore.clear();
    const w = this.waiters;
    this.waiters = [];
    for (const resolve of w) resolve();
    this.wakeIdle();
    this.checkDrained();
  }

  /**
   * Resolves once no key is waiting or being processed (delayed keys do not count), or after
   * `maxWaitMs`, or at shutdown. Lets another controller give this queue's keys precedence
   * (ControllerOptions.yieldTo).
   *
   * Callers that had to wait form a line. A backlog is a key that a worker found waiting for it
   * (more keys than free workers); it lasts until that key is done. With no backlog in the last
   * `idleSpacingMs` (the workers kept up), the whole line goes at the first idle moment. Within
   * `idleSpacingMs` after a backlog they go one at a time, each at least `idleSpacingMs` after the
   * last one let go singly, and only while the queue is idle. So a moment in which the queue
   * happens to be empty in a burst that its workers cannot keep up with lets one caller go, not all
   * of them at once, while keys that come now and then, each taken at once by a free worker, hold
   * no one beyond the queue's next idle moment. The cost: while backlogs keep forming, callers go
   * at most one per idle moment and per `idleSpacingMs`, or at their `maxWaitMs`. A caller that
   * finds the queue idle and no one in line goes at once. `maxWaitMs` bounds every caller's wait;
   * a caller that gives up leaves the line.
   */
  whenIdle(maxWaitMs: number): Promise<void> {
    if (this.shutdown || !(maxWaitMs > 0)) return Promise.resolve();
    if (this.isIdle() && this.idleWaiters.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const release = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== release);
        resolve();
        this.wakeIdle();
      }, maxWaitMs);
      this.idleWaiters.push(release);
      this.wakeIdle();
    });
  }

  private isIdle(): boolean {
    return this.queue.length === 0 && this.processing.size === 0;
  }

  private clearIdleTimer(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /** Lets the callers in line go: all of them at shutdown; else while the queue is idle, as whenIdle says. */
  private wakeIdle(): void {
    // every done() comes here: with no one in line there is nothing to let go and no look to keep
    if (this.idleWaiters.length === 0) {
      this.clearIdleTimer();
      return;
    }
    const spacing = this.idleSpacingMs;
    const t = this.now();
    const idle = this.isIdle();
    const sinceBacklog = t - this.lastBacklogAt;
    let sinceRelease = t - this.lastIdleRelease;
    if (idle || this.shutdown) {
      if (this.shutdown || spacing === 0 || sinceBacklog >= spacing) {
        // shutdown, no spacing, or no backlog for a whole spacing (not a lull within a burst): the line goes
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const release of w) release();
      } else if (sinceRelease >= spacing) {
        this.lastIdleRelease = t;
        sinceRelease = 0;
        (this.idleWaiters.shift() as () => void)();
      }
    }
    if (this.idleWaiters.length === 0) {
      this.clearIdleTimer(); // the line went: its look with it
      return;
    }
    // busy: the next done() that leaves the queue idle looks again; or a look is pending already
    if (!idle || this.idleTimer !== undefined) return;
    // one look when the spacing since the last single release has passed or a spacing has passed
    // since the last backlog, whichever comes first (the queue may be busy again by then: its next
    // idle moment lets the head go). Both are less than a spacing ago here, so the delay is
    // positive, and it is never more than a spacing, whatever the clock did.
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      this.wakeIdle();
    }, Math.min(spacing - sinceRelease, spacing - sinceBacklog, spacing, MAX_TIMER_MS));
  }

  /** Resolves when nothing is queued and no key is being processed. */
  drain(): Promise<void> {
    if (this.queue.length === 0 && this.processing.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private push(key: string): void {
    this.queue.push(key);
    this.queuedAt.set(key, this.now());
    this.updateDepth();
    const w = this.waiters.shift();
    if (w) w();
  }

  private checkDrained(): void {
    if (this.queue.length !== 0 || this.processing.size !== 0 || this.drainWaiters.length === 0) return;
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const resolve of w) resolve();
  }

  private updateDepth(): void {
    this.metrics?.queueDepth.set({ queue: this.name }, this.queue.length);
  }
}
