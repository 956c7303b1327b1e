/**
 * Kubernetes Events (events.k8s.io/v1) with aggregation.
 *
 * The first occurrence of an event creates an Event object. A repeat of the same event (same
 * regarding object, type, reason, action and note) seen again within the aggregation window
 * does not create a new object: the existing one gets its `series` (count, lastObservedTime)
 * patched. Recording never throws; failures are logged and counted.
 *
 * Notes go through the `redact` hook (if given) before anything else, so secret values that a
 * caller knows about never reach the API server.
 */
import { randomInt } from "node:crypto";
import { KubeApiError } from "./kube.js";
import type { KubeClient, KubeObject, ResourceType } from "./kube.js";
import type { Logger } from "./logger.js";
import type { EngineMetrics } from "./metrics.js";
import { TokenBucket } from "./queue.js";
import { monotonicNow } from "./clock.js";

export const EventResource: ResourceType = {
  group: "events.k8s.io",
  version: "v1",
  plural: "events",
  kind: "Event",
  namespaced: true,
};

export type EventType = "Normal" | "Warning";

/** Maximum note size accepted by the API server (bytes). */
export const MAX_NOTE_BYTES = 1024;
const MAX_REASON_CHARS = 128;
const MAX_ACTION_CHARS = 128;

export interface EventSeries {
  count: number;
  lastObservedTime: string;
}

export interface EventObject extends KubeObject {
  eventTime: string;
  series?: EventSeries;
  reportingController: string;
  reportingInstance: string;
  action: string;
  reason: string;
  regarding: {
    apiVersion?: string;
    kind?: string;
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
  };
  note?: string;
  type: EventType;
}

/**
 * metav1.MicroTime wire format: RFC 3339 with exactly six fractional digits, UTC
 * ("2006-01-02T15:04:05.000000Z"). JavaScript dates carry milliseconds; the last three digits
 * are zero.
 */
export function formatMicroTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

/** Cuts `s` to at most `maxBytes` UTF-8 bytes without splitting a character; marks the cut. */
export function truncateUtf8(s: string, maxBytes: number): string {
  if (Buffer.byteLength(s, "utf8") <= maxBytes) return s;
  const marker = "...";
  const budget = maxBytes - marker.length;
  let out = "";
  let used = 0;
  for (const ch of s) {
    const n = Buffer.byteLength(ch, "utf8");
    if (used + n > budget) break;
    out += ch;
    used += n;
  }
  return out + marker;
}

export interface EventRecorderOptions {
  /** reportingController, e.g. "vmforge.dev/operator". */
  controller: string;
  /** reportingInstance, e.g. the pod name. */
  instance: string;
  logger: Logger;
  metrics?: EngineMetrics;
  /** Applied to every note before it is sent (e.g. createRedactor(knownSecrets)). */
  redact?: (s: string) => string;
  /** Repeats within this window are aggregated into a series. Default 10 minutes. */
  aggregationWindowMs?: number;
  /** Entries kept for aggregation (least recently used are evicted). Default 1024. */
  cacheSize?: number;
  /** Clock (tests). */
  now?: () => Date;
  /**
   * Events sent per second at most, with a burst of `burst` (defaults 20 and 50). Events are the
   * least urgent writes: in a burst of launches they wait rather than take the kube-apiserver from
   * the status writes; each keeps the time it happened (eventTime).
   */
  qps?: number;
  burst?: number;
  /** Events waiting beyond this many are dropped and counted (result "dropped"). Default 5000. */
  maxPending?: number;
  /**
   * While this says true (e.g. launches are backed up), Events are held back instead of sent:
   * they then take no share of the kube-apiserver from the work they report on. Each is held at
   * most `maxHoldMs` after it was recorded (default 1 minute), so work that never lets up delays
   * Events but never stops them.
   */
  holdWhile?: () => boolean;
  maxHoldMs?: number;
}

/** How often held Events look whether they may go. */
const HOLD_CHECK_MS = 250;

interface SeriesEntry {
  namespace: string;
  name: string;
  count: number;
  lastObserved: number;
}

type Regarding = KubeObject & { apiVersion?: string; kind?: string };

export class EventRecorder {
  private readonly client: KubeClient;
  private readonly opts: EventRecorderOptions;
  private readonly windowMs: number;
  private readonly cacheSize: number;
  private readonly now: () => Date;
  /** Insertion order = recency order (re-inserted on use). */
  private readonly cache = new Map<string, SeriesEntry>();
  /** Serializes records with the same aggregation key. */
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly pace: TokenBucket;
  private readonly maxPending: number;
  private pending = 0;
  /** Events whose request is out (counted created, aggregated or failed when it returns). */
  private sending = 0;
  /**
   * Events held back (holdWhile), in the order they were recorded (an Event held again after its
   * turn came goes back to its place, not to the end): when each must go at the latest.
   */
  private readonly held: { until: number; go: () => void }[] = [];
  private holdTimer: NodeJS.Timeout | undefined;
  /** The drain waiting until no Event is pending (only one can: see `draining`). */
  private whenNonePending: (() => void) | undefined;
  /** Stopping (drain): nothing is held back any more. */
  private draining = false;
  /** Drained: what was not sent by then is counted dropped and is not sent afterwards. */
  private closed = false;

  constructor(client: KubeClient, opts: EventRecorderOptions) {
    this.client = client;
    this.opts = opts;
    this.windowMs = opts.aggregationWindowMs ?? 10 * 60_000;
    this.cacheSize = Math.max(1, opts.cacheSize ?? 1024);
    this.now = opts.now ?? (() => new Date());
    this.pace = new TokenBucket(opts.qps ?? 20, opts.burst ?? 50);
    this.maxPending = opts.maxPending ?? 5_000;
  }

  /**
   * Emits (or aggregates) an event about `regarding`. Never throws. Resolves once the Event is
   * sent, dropped or failed, which can take a while when Events are paced or held back: a caller
   * with other work to do does not wait for it (`void recorder.record(...)`).
   */
  async record(regarding: Regarding, type: EventType, reason: string, action: string, note: string): Promise<void> {
    let key: string;
    let ev: EventObject;
    // When it happened: its eventTime, and its time in a series, however long it waits to be sent.
    let at: Date;
    try {
      at = this.now();
      ev = this.build(regarding, type, reason, action, note, at);
      key = JSON.stringify([
        regarding.metadata.uid ?? `${regarding.apiVersion}/${regarding.kind}/${regarding.metadata.namespace ?? ""}/${regarding.metadata.name}`,
        ev.type,
        ev.reason,
        ev.action,
        ev.note,
      ]);
    } catch (err) {
      this.fail(err, regarding, reason);
      return;
    }
    if (this.closed || this.pending >= this.maxPending) {
      this.opts.metrics?.eventsTotal.inc({ result: "dropped" });
      this.opts.logger.debug({ reason, pending: this.pending }, "event dropped: too many waiting to be sent");
      return;
    }
    this.pending++;
    const prev = this.inflight.get(key) ?? Promise.resolve();
    // The hold's deadlines are durations in this process: the monotonic clock (`at` is wall time).
    const recordedAt = monotonicNow();
    const run = prev.then(async () => {
      for (;;) {
        await this.holdBack(recordedAt);
        // The token is reserved when the Event may go (in the order they were released); unref:
        // Events still waiting do not keep a stopping process alive.
        const wait = this.pace.take();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait).unref());
        // Its turn came while Run work is backed up again: held again (until its own deadline). Its
        // token, unused, is given back when no later Event has reserved one.
        if (wait === 0 || !this.mustHold(recordedAt)) break;
        this.pace.refund();
      }
      // Not sent by the drain's deadline: already counted as dropped.
      if (this.closed) return;
      this.sending++;
      try {
        await this.emit(key, ev, regarding, at);
      } finally {
        this.sending--;
      }
    });
    this.inflight.set(key, run);
    try {
      await run;
    } finally {
      this.pending--;
      if (this.inflight.get(key) === run) this.inflight.delete(key);
      if (this.pending === 0) this.whenNonePending?.();
    }
  }

  /** When an Event recorded at `recordedAt` must go at the latest. */
  private holdUntil(recordedAt: number): number {
    const maxHoldMs = this.opts.maxHoldMs;
    return recordedAt + (maxHoldMs !== undefined && Number.isFinite(maxHoldMs) ? Math.max(0, maxHoldMs) : 60_000);
  }

  /** Whether an Event recorded at `recordedAt` is to wait now. */
  private mustHold(recordedAt: number): boolean {
    const hold = this.opts.holdWhile;
    return !this.draining && hold !== undefined && monotonicNow() < this.holdUntil(recordedAt) && safely(hold);
  }

  /** Resolves once holdWhile says false, or `maxHoldMs` after `recordedAt`. */
  private holdBack(recordedAt: number): Promise<void> {
    if (!this.mustHold(recordedAt)) return Promise.resolve();
    const until = this.holdUntil(recordedAt);
    return new Promise<void>((go) => {
      // Every Event is held for the same longest time, so `until` orders them as they were recorded;
      // a new one goes at the end, one held again after its turn came goes back to its place.
      let at = this.held.length;
      while (at > 0 && this.held[at - 1]!.until > until) at--;
      this.held.splice(at, 0, { until, go });
      // One timer for all of them, however many are held.
      this.holdTimer ??= setInterval(() => this.release(), HOLD_CHECK_MS).unref();
    });
  }

  private release(): void {
    const all = this.draining || !safely(this.opts.holdWhile);
    const t = monotonicNow();
    // Held in the order of their deadlines: those due are the front of the list.
    let due = 0;
    if (all) due = this.held.length;
    else while (due < this.held.length && t >= this.held[due]!.until) due++;
    for (const h of this.held.splice(0, due)) h.go();
    if (this.held.length === 0 && this.holdTimer) {
      clearInterval(this.holdTimer);
      this.holdTimer = undefined;
    }
  }

  /**
   * For a stopping process: nothing is held back any more, and what is waiting is sent (still
   * paced) for at most `ms`. What has not gone out by then is counted as dropped and never sent; so
   * is anything recorded afterwards. An Event whose request is out at the deadline is counted by its
   * outcome only. Returns how many were dropped.
   */
  async drain(ms: number): Promise<number> {
    // Drained (or draining) already: what is waiting is counted by that drain.
    if (this.draining) return 0;
    this.draining = true;
    this.release();
    // Until nothing waits (the last record to settle says so) or the deadline, whichever comes first.
    if (this.pending > 0 && ms > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((done) => {
        this.whenNonePending = done;
        timer = setTimeout(done, Math.min(ms, 2 ** 31 - 1)); // beyond that, setTimeout fires at once
      });
      clearTimeout(timer);
      this.whenNonePending = undefined;
    }
    this.closed = true;
    // Those whose request is out are counted by its answer (created, aggregated or failed), not here.
    const dropped = this.pending - this.sending;
    if (dropped > 0) {
      this.opts.metrics?.eventsTotal.inc({ result: "dropped" }, dropped);
      this.opts.logger.info({ events: dropped }, "Events not sent before the stop: dropped");
    }
    return dropped;
  }

  /** Events held back now (holdWhile). */
  get heldBack(): number {
    return this.held.length;
  }

  /** Events accepted and not yet sent (or failed). */
  get waiting(): number {
    return this.pending;
  }

  /** Entries currently remembered for aggregation (tests, diagnostics). */
  get cachedSeries(): number {
    return this.cache.size;
  }

  private build(regarding: Regarding, type: EventType, reason: string, action: string, note: string, at: Date): EventObject {
    const name = regarding.metadata.name;
    if (!name) throw new TypeError("regarding object has no metadata.name");
    const redacted = this.opts.redact ? this.opts.redact(String(note ?? "")) : String(note ?? "");
    const ns = regarding.metadata.namespace || "default";
    const ref: EventObject["regarding"] = { name };
    if (regarding.apiVersion) ref.apiVersion = regarding.apiVersion;
    if (regarding.kind) ref.kind = regarding.kind;
    if (regarding.metadata.namespace) ref.namespace = regarding.metadata.namespace;
    if (regarding.metadata.uid) ref.uid = regarding.metadata.uid;
    if (regarding.metadata.resourceVersion) ref.resourceVersion = regarding.metadata.resourceVersion;
    return {
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { name: eventName(name, at), namespace: ns },
      eventTime: formatMicroTime(at),
      reportingController: this.opts.controller,
      reportingInstance: this.opts.instance,
      action: (action || "Unknown").slice(0, MAX_ACTION_CHARS),
      reason: (reason || "Unknown").slice(0, MAX_REASON_CHARS),
      regarding: ref,
      note: truncateUtf8(redacted, MAX_NOTE_BYTES),
      type: type === "Warning" ? "Warning" : "Normal",
    };
  }

  private async emit(key: string, ev: EventObject, regarding: Regarding, now: Date): Promise<void> {
    const entry = this.cache.get(key);
    try {
      if (entry && now.getTime() - entry.lastObserved <= this.windowMs) {
        const count = entry.count + 1;
        const series: EventSeries = { count, lastObservedTime: formatMicroTime(now) };
        try {
          await this.client.patch(EventResource, entry.namespace, entry.name, { series }, "merge");
          this.touch(key, { ...entry, count, lastObserved: now.getTime() });
          this.opts.metrics?.eventsTotal.inc({ result: "aggregated" });
          return;
        } catch (err) {
          // The Event expired (TTL) or was deleted: start over with a fresh object.
          if (!(err instanceof KubeApiError && err.status === 404)) throw err;
          this.cache.delete(key);
          // Unless drained meanwhile: nothing is sent after that.
          if (this.closed) {
            this.opts.metrics?.eventsTotal.inc({ result: "dropped" });
            return;
          }
        }
      }
      const created = await this.client.create<EventObject>(EventResource, ev);
      this.touch(key, {
        namespace: created.metadata.namespace ?? ev.metadata.namespace ?? "default",
        name: created.metadata.name ?? ev.metadata.name ?? "",
        count: 1,
        lastObserved: now.getTime(),
      });
      this.opts.metrics?.eventsTotal.inc({ result: "created" });
    } catch (err) {
      this.fail(err, regarding, ev.reason);
    }
  }

  private touch(key: string, entry: SeriesEntry): void {
    this.cache.delete(key);
    this.cache.set(key, entry);
    while (this.cache.size > this.cacheSize) {
      const oldest = this.cache.keys().next();
      if (oldest.done) break;
      this.cache.delete(oldest.value);
    }
  }

  private fail(err: unknown, regarding: Regarding, reason: string): void {
    try {
      this.opts.metrics?.eventsTotal.inc({ result: "failed" });
      const where = { kind: regarding?.kind, namespace: regarding?.metadata?.namespace, name: regarding?.metadata?.name };
      if (namespaceTerminating(err)) {
        // Expected while a namespace is being deleted: nothing can be created in it any more.
        this.opts.logger.debug({ regarding: where, reason }, "event not recorded: the namespace is being deleted");
        return;
      }
      this.opts.logger.warn({ err, regarding: where, reason }, "could not record event");
    } catch {
      // never throw from the recorder
    }
  }
}

/** The hold predicate's answer; one that throws holds nothing back (recording never throws). */
function safely(hold: (() => boolean) | undefined): boolean {
  try {
    return hold?.() === true;
  } catch {
    return false;
  }
}

/** Unique-enough Event name: "<regarding name>.<hex time+random>", like other controllers do. */
function eventName(regardingName: string, now: Date): string {
  const suffix = (BigInt(now.getTime()) * 1_000_000n + BigInt(randomInt(1_000_000))).toString(16);
  const maxPrefix = 253 - suffix.length - 1;
  return `${regardingName.slice(0, maxPrefix).replace(/[.-]+$/, "")}.${suffix}`;
}

/** A 403 whose cause is NamespaceTerminating (events cannot be created in a namespace being deleted). */
function namespaceTerminating(err: unknown): boolean {
  if (!(err instanceof KubeApiError) || err.status !== 403) return false;
  const causes = (err.body as { details?: { causes?: { reason?: string }[] } } | undefined)?.details?.causes ?? [];
  return causes.some((c) => c.reason === "NamespaceTerminating");
}
