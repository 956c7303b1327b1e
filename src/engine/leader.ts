/**
 * Leader election on a coordination.k8s.io/v1 Lease, with the semantics of client-go's
 * leaderelection package:
 *
 * - A candidate takes the Lease when it does not exist, when nobody holds it, or when it expired
 *   (renewTime + leaseDurationSeconds lies in the past and this process has not seen the Lease
 *   change for a whole lease duration — so a holder that keeps renewing is never displaced
 *   because of clock skew).
 * - Every write is a create or an update carrying the resourceVersion that was read, so of two
 *   candidates racing for the same Lease exactly one wins (the other gets 409 Conflict).
 * - The leader renews every retryPeriod. When it cannot renew for renewDeadline, or when it sees
 *   another holder, it stops leading: the signal given to onStartedLeading is aborted and
 *   onStoppedLeading is called. renewDeadline < leaseDuration, so it stops before anyone else may
 *   take over.
 * - leaseTransitions is incremented whenever the holder changes.
 * - stop() ends leadership and releases the Lease (holder cleared, leaseDurationSeconds 1), so
 *   another candidate can take over at its next retry instead of waiting for expiry.
 */
import { monotonicNow } from "./clock.js";
import { KubeApiError } from "./kube.js";
import type { KubeClient, KubeObject, ResourceType } from "./kube.js";
import type { Logger } from "./logger.js";
import type { EngineMetrics } from "./metrics.js";
import { formatMicroTime } from "./events.js";

export const LeaseResource: ResourceType = {
  group: "coordination.k8s.io",
  version: "v1",
  plural: "leases",
  kind: "Lease",
  namespaced: true,
};

export interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

export interface Lease extends KubeObject {
  spec?: LeaseSpec;
}

export interface LeaderElectorOptions {
  client: KubeClient;
  namespace: string;
  /** Lease name. */
  name: string;
  /** Unique per process (e.g. pod name + random suffix). */
  identity: string;
  /** How long a Lease is valid after its last renewal. Default 15 s. */
  leaseDurationMs?: number;
  /** The leader gives up when it could not renew for this long. Default 10 s. */
  renewDeadlineMs?: number;
  /** Interval between acquire/renew attempts. Default 2 s. */
  retryPeriodMs?: number;
  logger: Logger;
  metrics?: EngineMetrics;
  /** Wall clock, for the Lease's acquireTime and renewTime (tests). Default Date.now. */
  now?: () => number;
  /**
   * Clock for this process's own durations: since the last renewal, since the Lease was last seen
   * to change (tests). Default the monotonic clock, so a step of the wall clock back does not keep
   * a leader that stopped renewing leading past its renew deadline. (The time since the last
   * renewal is also read on the wall clock, for a machine that was suspended: see sinceRenewal.)
   */
  monotonicNow?: () => number;
}

export interface LeaderCallbacks {
  /** Called once leadership is acquired; `signal` aborts when leadership ends. */
  onStartedLeading: (signal: AbortSignal) => void | Promise<void>;
  /** Called once when leadership ends (lost or released by stop()). Not called if never leading. */
  onStoppedLeading: () => void;
}

const JITTER = 0.2;

type AttemptResult = "ok" | "held" | "error";

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

function parseTime(s: string | undefined): number | undefined {
  if (!s) return undefined;
  const t = Date.parse(s);
  return Number.isNaN(t) ? undefined : t;
}

export class LeaderElector {
  private readonly client: KubeClient;
  private readonly namespace: string;
  private readonly name: string;
  readonly identity: string;
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly log: Logger;
  private readonly metrics: EngineMetrics | undefined;
  private readonly now: () => number;
  private readonly tick: () => number;

  private leading = false;
  /** When the last renewal was sent: on the monotonic clock, and on the wall clock. */
  private lastRenewAt = 0;
  private lastRenewWall = 0;
  private observedRaw: string | undefined;
  /** Monotonic time at which the observed Lease record last changed (undefined: never seen a change). */
  private observedChangeAt: number | undefined;
  private lease: Lease | undefined;
  private leadAbort: AbortController | undefined;
  private readonly stopAbort = new AbortController();
  private running: Promise<void> | undefined;

  constructor(opts: LeaderElectorOptions) {
    this.client = opts.client;
    this.namespace = opts.namespace;
    this.name = opts.name;
    this.identity = opts.identity;
    this.leaseDurationMs = opts.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = opts.renewDeadlineMs ?? 10_000;
    this.retryPeriodMs = opts.retryPeriodMs ?? 2_000;
    this.log = opts.logger.child({ lease: `${opts.namespace}/${opts.name}`, identity: opts.identity });
    this.metrics = opts.metrics;
    this.now = opts.now ?? Date.now;
    this.tick = opts.monotonicNow ?? monotonicNow;
    if (!opts.identity) throw new Error("leader election: identity must not be empty");
    if (!opts.namespace || !opts.name) throw new Error("leader election: lease namespace and name are required");
    if (this.leaseDurationMs <= this.renewDeadlineMs) {
      throw new Error("leader election: leaseDuration must be greater than renewDeadline");
    }
    if (this.renewDeadlineMs <= this.retryPeriodMs * (1 + JITTER)) {
      throw new Error("leader election: renewDeadline must be greater than retryPeriod * 1.2");
    }
    if (this.retryPeriodMs <= 0) throw new Error("leader election: retryPeriod must be positive");
  }

  /**
   * True while this process holds the Lease. Also false when the last successful renewal is
   * older than renewDeadline (e.g. the event loop was blocked), before the renew loop notices.
   */
  isLeader(): boolean {
    return this.leading && this.sinceRenewal() < this.renewDeadlineMs;
  }

  /**
   * Campaigns for the Lease and leads until leadership is lost or stop() is called; resolves
   * then (after onStoppedLeading). To campaign again, create a new LeaderElector.
   */
  run(callbacks: LeaderCallbacks): Promise<void> {
    if (this.running) throw new Error("leader election: run() was already called");
    this.running = this.loop(callbacks);
    return this.running;
  }

  /** Stops campaigning/leading and, if leading, releases the Lease. Idempotent. */
  async stop(): Promise<void> {
    this.stopAbort.abort();
    if (this.running) await this.running.catch(() => undefined);
  }

  private async loop(cb: LeaderCallbacks): Promise<void> {
    const stop = this.stopAbort.signal;
    // campaign
    this.log.info("campaigning for leadership");
    let acquired = false;
    while (!stop.aborted) {
      acquired = (await this.tryAttempt()) === "ok";
      if (acquired) break;
      await sleep(this.jittered(), stop);
    }
    if (stop.aborted) {
      // stop() came while an attempt that won the Lease was in flight: hand it back unused.
      if (acquired) await this.release();
      return;
    }

    // lead
    this.becomeLeader(cb);
    let reason = "stopped";
    while (!stop.aborted) {
      await sleep(this.retryPeriodMs, stop);
      if (stop.aborted) break;
      const r = await this.tryAttempt();
      if (r === "ok") continue;
      if (r === "held") {
        reason = "another holder took the lease";
        break;
      }
      if (this.sinceRenewal() >= this.renewDeadlineMs) {
        reason = "could not renew within the renew deadline";
        break;
      }
    }
    const released = stop.aborted;
    this.stopLeading(cb, released ? "released" : "lost", reason);
    if (released) await this.release();
  }

  private jittered(): number {
    return this.retryPeriodMs * (1 + Math.random() * JITTER);
  }

  private becomeLeader(cb: LeaderCallbacks): void {
    this.leading = true;
    this.leadAbort = new AbortController();
    this.metrics?.leaderStatus.set(1);
    this.metrics?.leaderTransitions.inc({ transition: "acquired" });
    this.log.info("became leader");
    const signal = this.leadAbort.signal;
    try {
      Promise.resolve(cb.onStartedLeading(signal)).catch((err: unknown) => {
        this.log.error({ err }, "onStartedLeading failed");
      });
    } catch (err) {
      this.log.error({ err }, "onStartedLeading failed");
    }
  }

  private stopLeading(cb: LeaderCallbacks, transition: "lost" | "released", reason: string): void {
    this.leading = false;
    this.leadAbort?.abort();
    this.metrics?.leaderStatus.set(0);
    this.metrics?.leaderTransitions.inc({ transition });
    if (transition === "lost") this.log.warn({ reason }, "stopped leading");
    else this.log.info("stopped leading (shutdown)");
    try {
      cb.onStoppedLeading();
    } catch (err) {
      this.log.error({ err }, "onStoppedLeading failed");
    }
  }

  /** Remaining time budget for one request: never beyond the renew deadline while leading. */
  private requestSignal(): AbortSignal {
    // Whole milliseconds: AbortSignal.timeout refuses a fraction, and the monotonic clock has them.
    const budget = this.leading ? Math.max(100, Math.floor(this.renewDeadlineMs - this.sinceRenewal())) : this.renewDeadlineMs;
    return AbortSignal.timeout(budget);
  }

  /**
   * One attempt that cannot throw: whatever goes wrong in it is a failed attempt, so the loop goes
   * on (and a leader steps down at its renew deadline) instead of ending with leadership unreleased.
   */
  private async tryAttempt(): Promise<AttemptResult> {
    try {
      return await this.attempt();
    } catch (err) {
      this.log.error({ err }, "lease attempt failed unexpectedly");
      return "error";
    }
  }

  /** One acquire-or-renew attempt. */
  private async attempt(): Promise<AttemptResult> {
    const signal = this.requestSignal();
    // Taken before the request: a renewal counts from when it was sent, not from when it was answered.
    const ts = this.now();
    const tick = this.tick();
    const nowStr = formatMicroTime(new Date(ts));
    const durationSeconds = Math.max(1, Math.ceil(this.leaseDurationMs / 1000));
    let current: Lease | undefined;
    try {
      current = await this.client.get<Lease>(LeaseResource, this.namespace, this.name, { signal });
    } catch (err) {
      this.log.warn({ err }, "reading the lease failed");
      return "error";
    }

    try {
      if (!current) {
        const created = await this.client.create<Lease>(
          LeaseResource,
          {
            apiVersion: "coordination.k8s.io/v1",
            kind: "Lease",
            metadata: { name: this.name, namespace: this.namespace },
            spec: {
              holderIdentity: this.identity,
              leaseDurationSeconds: durationSeconds,
              acquireTime: nowStr,
              renewTime: nowStr,
              leaseTransitions: 0,
            },
          },
          { signal },
        );
        this.observe(created, tick);
        this.renewed(tick, ts);
        return "ok";
      }

      this.observe(current, tick);
      const spec = current.spec ?? {};
      const holder = spec.holderIdentity ?? "";
      if (holder !== this.identity && holder !== "" && !this.expired(spec, ts, tick)) {
        return "held";
      }
      const next: LeaseSpec = { ...spec, leaseDurationSeconds: durationSeconds, renewTime: nowStr };
      if (holder !== this.identity) {
        next.holderIdentity = this.identity;
        next.acquireTime = nowStr;
        next.leaseTransitions = (spec.leaseTransitions ?? 0) + 1;
      } else if (!spec.acquireTime) {
        next.acquireTime = nowStr;
      }
      const updated = await this.client.replace<Lease>(
        LeaseResource,
        { ...current, spec: next },
        { signal },
      );
      this.observe(updated, tick);
      this.renewed(tick, ts);
      if (holder !== this.identity) {
        this.log.info({ previousHolder: holder || undefined, transitions: next.leaseTransitions }, "acquired the lease");
      }
      return "ok";
    } catch (err) {
      if (err instanceof KubeApiError && (err.status === 409 || err.reason === "AlreadyExists" || err.reason === "Conflict")) {
        this.log.debug("lost a race for the lease");
        return "error";
      }
      this.log.warn({ err }, "writing the lease failed");
      return "error";
    }
  }

  private renewed(tick: number, ts: number): void {
    this.lastRenewAt = tick;
    this.lastRenewWall = ts;
  }

  /**
   * Time since the last renewal, by whichever clock says longer. The monotonic clock covers a step
   * of the wall clock back. The wall clock covers a machine that was suspended: the monotonic clock
   * stands still meanwhile (CLOCK_MONOTONIC), while the other candidates' clocks, by which the Lease
   * expires, go on, so the leader must not count on the time it slept. A step of the wall clock
   * forward can end leadership early; that is the safe direction.
   */
  private sinceRenewal(): number {
    const mono = this.tick() - this.lastRenewAt;
    const wall = this.now() - this.lastRenewWall;
    // A wall clock that reads nothing sensible leaves the monotonic one to decide.
    return Number.isFinite(wall) ? Math.max(mono, wall) : mono;
  }

  private observe(lease: Lease, tick: number): void {
    this.lease = lease;
    const raw = JSON.stringify(lease.spec ?? {});
    // Like client-go: the first sight counts as a change, so a new candidate waits a full lease
    // duration before it takes over a Lease whose renewTime merely looks old by its own clock.
    if (this.observedRaw === undefined || raw !== this.observedRaw) this.observedChangeAt = tick;
    this.observedRaw = raw;
  }

  /** By the Lease's own times against the wall clock (`ts`), and by what this process saw (`tick`). */
  private expired(spec: LeaseSpec, ts: number, tick: number): boolean {
    const durMs = (spec.leaseDurationSeconds ?? 0) * 1000;
    const renew = parseTime(spec.renewTime) ?? parseTime(spec.acquireTime);
    const byServerTime = renew === undefined || renew + durMs < ts;
    const seenRecently = this.observedChangeAt !== undefined && this.observedChangeAt + durMs > tick;
    return byServerTime && !seenRecently;
  }

  /** Clears the holder so another candidate can take over at once. Only if we still hold it. */
  private async release(): Promise<void> {
    const signal = AbortSignal.timeout(this.renewDeadlineMs);
    try {
      const current = await this.client.get<Lease>(LeaseResource, this.namespace, this.name, { signal });
      if (!current || current.spec?.holderIdentity !== this.identity) return;
      const nowStr = formatMicroTime(new Date(this.now()));
      const spec: LeaseSpec = { ...current.spec, leaseDurationSeconds: 1, renewTime: nowStr, acquireTime: nowStr };
      delete spec.holderIdentity;
      await this.client.replace<Lease>(LeaseResource, { ...current, spec }, { signal });
      this.log.info("released the lease");
    } catch (err) {
      this.log.warn({ err }, "releasing the lease failed; others take over after it expires");
    }
  }

  /** Last Lease object seen (diagnostics/tests). */
  get observedLease(): Lease | undefined {
    return this.lease;
  }
}
