// Reflector: keeps a Store in step with the API server for one resource (optionally one
// namespace / label selector) and reports every change through onEvent.
//
// Life cycle (each transition is logged and counted in metrics.watchRestarts{resource,reason}):
//   list    paginated (limit/continue); the result is diffed against the store so that a relist
//           reports objects that vanished (DELETED) or changed (MODIFIED) while we were not watching
//   watch   from the list's resourceVersion, with bookmarks and a server-side timeoutSeconds a
//           little below the idle timeout; every event moves the resourceVersion forward
//   end     server closed the stream -> watch again from the last resourceVersion
//   410     (HTTP 410, ERROR event with code 410, reason Expired/Gone) -> relist
//   idle    no event or bookmark for idleTimeoutMs -> abort the watch and start a new one
//   error   anything else (network, 5xx, malformed data) -> jittered exponential backoff, then
//           watch again (a resourceVersion that became too old answers 410 -> relist)
// A periodic resync calls onEvent("RESYNC") for every cached object.

import { objectKey, KubeApiError, type KubeClient, type KubeObject, type ResourceType, type WatchEvent } from "./kube.js";
import type { Logger } from "./logger.js";
import type { EngineMetrics } from "./metrics.js";
import { Store, slimForCache } from "./store.js";
import { monotonicNow } from "./clock.js";

export type ReflectorEventType = "ADDED" | "MODIFIED" | "DELETED" | "RESYNC";

/** The part of KubeClient a reflector uses (unit tests pass a fake). */
export type ReflectorClient = Pick<KubeClient, "list" | "watch">;

export interface ReflectorOptions<T extends KubeObject> {
  client: KubeClient | ReflectorClient;
  resource: ResourceType;
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  store?: Store<T>;
  /** RESYNC period; 0 disables. Default 10 minutes. */
  resyncPeriodMs?: number;
  /** Restart a watch that delivered nothing (not even a bookmark) for this long. Default 5 minutes. */
  idleTimeoutMs?: number;
  logger: Logger;
  metrics?: EngineMetrics;
  onEvent?: (type: ReflectorEventType, obj: T, old?: T) => void;
  /**
   * Shapes each object before it is cached and handed to onEvent (list items and watch events).
   * Default slimForCache (drops managedFields and kubectl's last-applied copy); pass one that
   * keeps only the fields your controllers read to save more memory.
   */
  transform?: (obj: T) => T;
  /** Page size of lists. Default 500. */
  pageSize?: number;
  /** First retry delay after a failure. Default 500 ms. */
  backoffBaseMs?: number;
  /** Cap of the retry delay. Default 30 s. */
  backoffMaxMs?: number;
  /**
   * Test hook: skip the initial list and start watching from this resourceVersion (e.g. a
   * deliberately ancient "1" to exercise the too-old path). hasSynced() stays false until a list
   * happens, so use it only with a resourceVersion the server no longer has (it answers 410).
   */
  initialResourceVersion?: string;
}

type WatchOutcome =
  | { kind: "closed" }
  | { kind: "expired"; detail: string }
  | { kind: "idle" }
  | { kind: "stopped" }
  | { kind: "error"; err: unknown };

/** A watch that delivered at least one event or lived this long resets the failure count. */
const HEALTHY_WATCH_MS = 10_000;

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function isGone(err: unknown): boolean {
  return err instanceof KubeApiError && (err.status === 410 || err.reason === "Expired" || err.reason === "Gone");
}

/** How a reflector names its resource in logs and metrics (`resource` label): `plural.group`, or `plural` for the core group. */
export function resourceLabel(r: ResourceType): string {
  return r.group === "" ? r.plural : `${r.plural}.${r.group}`;
}

export class Reflector<T extends KubeObject = KubeObject> {
  readonly store: Store<T>;
  readonly resource: ResourceType;
  private readonly client: ReflectorClient;
  private readonly namespace: string | undefined;
  private readonly labelSelector: string | undefined;
  private readonly fieldSelector: string | undefined;
  private readonly resyncPeriodMs: number;
  private readonly idleTimeoutMs: number;
  private readonly watchTimeoutSeconds: number;
  private readonly pageSize: number;
  private readonly backoffBaseMs: number;
  private readonly backoffMaxMs: number;
  private readonly log: Logger;
  private readonly metrics: EngineMetrics | undefined;
  private readonly onEvent: ReflectorOptions<T>["onEvent"];
  private readonly transform: (obj: T) => T;
  private readonly resourceLabel: string;
  private initialRV: string | undefined;

  private stopCtl = new AbortController();
  private loop: Promise<void> | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private synced = false;
  private syncWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private lastRV = "";
  private failures = 0;
  /** The current watch starts from a resourceVersion that a list has just returned. */
  private justListed = false;

  constructor(opts: ReflectorOptions<T>) {
    this.client = opts.client;
    this.resource = opts.resource;
    this.namespace = opts.namespace;
    this.labelSelector = opts.labelSelector;
    this.fieldSelector = opts.fieldSelector;
    this.store = opts.store ?? new Store<T>();
    this.resyncPeriodMs = opts.resyncPeriodMs ?? 10 * 60_000;
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 5 * 60_000;
    this.pageSize = opts.pageSize ?? 500;
    this.backoffBaseMs = opts.backoffBaseMs ?? 500;
    this.backoffMaxMs = opts.backoffMaxMs ?? 30_000;
    if (!(this.idleTimeoutMs > 0)) throw new RangeError("idleTimeoutMs must be > 0");
    if (!(this.resyncPeriodMs >= 0)) throw new RangeError("resyncPeriodMs must be >= 0");
    // the server should end a quiet watch on its own a little before our watchdog fires
    this.watchTimeoutSeconds = Math.max(1, Math.floor((this.idleTimeoutMs * 0.9) / 1000));
    this.metrics = opts.metrics;
    this.onEvent = opts.onEvent;
    this.transform = opts.transform ?? slimForCache;
    this.initialRV = opts.initialResourceVersion;
    const r = opts.resource;
    this.resourceLabel = resourceLabel(r);
    // callers often pass a logger that already names the reflector; do not bind the fields twice
    const bound = opts.logger.bindings();
    const extra: Record<string, string> = {};
    if (bound.reflector === undefined) extra.reflector = this.resourceLabel;
    if (opts.namespace && bound.namespace === undefined) extra.namespace = opts.namespace;
    this.log = Object.keys(extra).length > 0 ? opts.logger.child(extra) : opts.logger;
  }

  start(): void {
    if (this.loop) return;
    this.loop = this.run().catch((err: unknown) => {
      // run() handles its own errors; reaching this means a bug, never a crash
      this.log.error({ err }, "reflector loop failed");
    });
    if (this.resyncPeriodMs > 0) {
      this.resyncTimer = setInterval(() => this.resync(), this.resyncPeriodMs);
    }
  }

  async stop(): Promise<void> {
    if (!this.stopCtl.signal.aborted) {
      this.stopCtl.abort();
      clearInterval(this.resyncTimer);
      const waiters = this.syncWaiters;
      this.syncWaiters = [];
      for (const w of waiters) w.reject(new Error(`reflector ${this.resourceLabel} stopped before it synced`));
    }
    await this.loop;
  }

  hasSynced(): boolean {
    return this.synced;
  }

  /** The resourceVersion the reflector is at (last list, event or bookmark). */
  lastResourceVersion(): string {
    return this.lastRV;
  }

  waitForSync(signal?: AbortSignal): Promise<void> {
    if (this.synced) return Promise.resolve();
    if (this.stopCtl.signal.aborted) return Promise.reject(new Error(`reflector ${this.resourceLabel} is stopped`));
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.syncWaiters = this.syncWaiters.filter((w) => w !== waiter);
        reject(signal?.reason);
      };
      const waiter = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e: unknown) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      this.syncWaiters.push(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Calls onEvent("RESYNC") for every cached object. Also run periodically. */
  resync(): void {
    if (!this.synced || this.stopCtl.signal.aborted) return;
    const objs = this.store.list();
    this.log.debug({ objects: objs.length }, "resync");
    for (const o of objs) this.emit("RESYNC", o);
  }

  // ---------------------------------------------------------------------------------------

  private get stopping(): boolean {
    return this.stopCtl.signal.aborted;
  }

  private count(reason: string): void {
    this.metrics?.watchRestarts.inc({ resource: this.resourceLabel, reason });
  }

  private async run(): Promise<void> {
    let needList = this.initialRV === undefined;
    if (this.initialRV !== undefined) {
      this.lastRV = this.initialRV;
      this.initialRV = undefined;
      this.log.info({ resourceVersion: this.lastRV }, "starting from a given resourceVersion without a list");
    }
    let first = true;

    while (!this.stopping) {
      if (needList) {
        try {
          await this.relist();
          needList = false;
        } catch (err) {
          if (this.stopping) break;
          this.failures++;
          const delay = this.backoffDelay();
          this.count("list-error");
          this.log.warn({ err: errMessage(err), attempt: this.failures, delayMs: delay }, "list failed; backing off");
          await this.sleep(delay);
          continue;
        }
      }

      if (first) this.count("initial");
      first = false;
      const outcome = await this.watchOnce();
      if (this.stopping || outcome.kind === "stopped") break;
      // counted when the restart is decided, labelled with its cause
      this.count(outcome.kind);

      switch (outcome.kind) {
        case "closed":
          this.log.debug({ resourceVersion: this.lastRV }, "watch closed by the server; watching again");
          break;
        case "expired":
          needList = true;
          this.log.info({ resourceVersion: this.lastRV, detail: outcome.detail }, "resourceVersion too old (410); relisting");
          break;
        case "idle":
          this.log.info({ idleTimeoutMs: this.idleTimeoutMs, resourceVersion: this.lastRV }, "watch idle for too long; restarting it");
          break;
        case "error":
          this.log.warn({ err: errMessage(outcome.err), resourceVersion: this.lastRV }, "watch failed");
          break;
      }

      if (this.failures > 0) {
        const delay = this.backoffDelay();
        this.count("backoff");
        this.log.info({ attempt: this.failures, delayMs: delay, next: needList ? "list" : "watch" }, "backing off before the next attempt");
        await this.sleep(delay);
      }
    }
    clearInterval(this.resyncTimer);
    this.log.debug("reflector stopped");
  }

  private backoffDelay(): number {
    const exp = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** Math.max(0, this.failures - 1));
    // equal jitter: between half and all of the exponential delay
    return Math.round(exp / 2 + Math.random() * (exp / 2));
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopping) return resolve();
      const done = (): void => {
        clearTimeout(t);
        this.stopCtl.signal.removeEventListener("abort", done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.stopCtl.signal.addEventListener("abort", done, { once: true });
    });
  }

  /** Full (paginated) list, diffed into the store. */
  private async relist(): Promise<void> {
    this.count("list");
    this.metrics?.relists.inc({ resource: this.resourceLabel });
    this.log.debug("listing");
    const items: T[] = [];
    let rv = "";
    let cont: string | undefined;
    let limit: number | undefined = this.pageSize > 0 ? this.pageSize : undefined;
    for (;;) {
      let page;
      try {
        page = await this.client.list<T>(this.resource, {
          ...(this.namespace ? { namespace: this.namespace } : {}),
          ...(this.labelSelector ? { labelSelector: this.labelSelector } : {}),
          ...(this.fieldSelector ? { fieldSelector: this.fieldSelector } : {}),
          ...(limit !== undefined ? { limit } : {}),
          ...(cont ? { continue: cont } : {}),
          signal: this.stopCtl.signal,
        });
      } catch (err) {
        if (cont && isGone(err)) {
          // the continue token expired mid-way: take one consistent list without paging
          this.log.info("continue token expired during a paginated list; listing without pages");
          items.length = 0;
          cont = undefined;
          limit = undefined;
          continue;
        }
        throw err;
      }
      for (const it of page.items) items.push(this.transform(it));
      rv = page.metadata.resourceVersion;
      cont = page.metadata.continue;
      if (!cont) break;
    }

    // diff against what we had so that nothing that happened while unwatched goes unreported
    const fresh = new Map<string, T>();
    for (const o of items) fresh.set(objectKey(o), o);
    const before = new Map<string, T>();
    for (const k of this.store.keys()) {
      const o = this.store.get(k);
      if (o) before.set(k, o);
    }
    this.store.replace(fresh.values());
    let added = 0;
    let modified = 0;
    let deleted = 0;
    for (const [k, o] of fresh) {
      const old = before.get(k);
      if (!old) {
        added++;
        this.emit("ADDED", o);
      } else if (old.metadata.resourceVersion !== o.metadata.resourceVersion || old.metadata.uid !== o.metadata.uid) {
        modified++;
        this.emit("MODIFIED", o, old);
      }
    }
    for (const [k, old] of before) {
      if (!fresh.has(k)) {
        deleted++;
        this.emit("DELETED", old, old);
      }
    }
    this.lastRV = rv;
    this.justListed = true;
    this.log.info({ objects: fresh.size, added, modified, deleted, resourceVersion: rv }, "listed");
    if (!this.synced) {
      this.synced = true;
      const waiters = this.syncWaiters;
      this.syncWaiters = [];
      for (const w of waiters) w.resolve();
    }
  }

  /** One watch request, consumed until it ends; returns why it ended. */
  private async watchOnce(): Promise<WatchOutcome> {
    const ctl = new AbortController();
    const onStop = (): void => ctl.abort();
    this.stopCtl.signal.addEventListener("abort", onStop, { once: true });
    let idle = false;
    let watchdog: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        idle = true;
        ctl.abort();
      }, this.idleTimeoutMs);
    };
    const startedAt = monotonicNow();
    let events = 0;
    const healthy = (): boolean => events > 0 || monotonicNow() - startedAt >= Math.min(HEALTHY_WATCH_MS, this.idleTimeoutMs / 2);

    this.log.debug({ resourceVersion: this.lastRV, timeoutSeconds: this.watchTimeoutSeconds }, "watch starting");
    arm();
    let outcome: WatchOutcome;
    try {
      const stream = this.client.watch<T>(
        this.resource,
        {
          resourceVersion: this.lastRV,
          allowWatchBookmarks: true,
          timeoutSeconds: this.watchTimeoutSeconds,
          ...(this.namespace ? { namespace: this.namespace } : {}),
          ...(this.labelSelector ? { labelSelector: this.labelSelector } : {}),
          ...(this.fieldSelector ? { fieldSelector: this.fieldSelector } : {}),
        },
        ctl.signal,
      );
      outcome = { kind: "closed" };
      for await (const ev of stream) {
        arm();
        this.metrics?.watchEvents.inc({ resource: this.resourceLabel, type: ev.type });
        if (ev.type === "ERROR") {
          const st = ev.object;
          if (st.code === 410 || st.reason === "Expired" || st.reason === "Gone") {
            outcome = { kind: "expired", detail: st.message ?? st.reason ?? "410" };
          } else {
            outcome = { kind: "error", err: new Error(`watch ERROR event: ${st.code ?? "?"} ${st.reason ?? ""} ${st.message ?? ""}`.trim()) };
          }
          break;
        }
        events++;
        this.apply(ev);
      }
      if (idle) outcome = { kind: "idle" };
      else if (this.stopping) outcome = { kind: "stopped" };
    } catch (err) {
      if (idle) outcome = { kind: "idle" };
      else if (this.stopping) outcome = { kind: "stopped" };
      else if (isGone(err)) outcome = { kind: "expired", detail: errMessage(err) };
      else outcome = { kind: "error", err };
    } finally {
      clearTimeout(watchdog);
      this.stopCtl.signal.removeEventListener("abort", onStop);
      ctl.abort();
    }

    // failure accounting for the backoff: a watch that did useful work resets it
    if (outcome.kind === "stopped") return outcome;
    const ok = healthy();
    if (outcome.kind === "expired") {
      // the server answered, so relist at once; only a 410 for a resourceVersion we just listed
      // (which should not happen) counts as a failure, to avoid a tight list/watch loop
      this.failures = ok || !this.justListed ? 0 : this.failures + 1;
    } else if (outcome.kind === "closed") this.failures = ok ? 0 : this.failures + 1;
    else if (outcome.kind === "error") this.failures = ok ? 1 : this.failures + 1;
    else this.failures += 1; // idle: the server went silent
    if (ok) this.justListed = false;
    this.log.debug({ outcome: outcome.kind, events, ms: Math.round(monotonicNow() - startedAt) }, "watch ended");
    return outcome;
  }

  private apply(ev: WatchEvent<T>): void {
    if (ev.type === "ERROR") return;
    const rv = ev.object.metadata?.resourceVersion;
    if (rv) this.lastRV = rv;
    if (ev.type === "BOOKMARK") return;
    const obj = this.transform(ev.object);
    const key = objectKey(obj);
    if (ev.type === "DELETED") {
      const old = this.store.delete(key);
      this.emit("DELETED", obj, old);
      return;
    }
    const old = this.store.get(key);
    if (old && old.metadata.resourceVersion === rv && old.metadata.uid === obj.metadata.uid) return; // already known
    this.store.set(obj);
    this.emit(old ? "MODIFIED" : "ADDED", obj, old);
  }

  private emit(type: ReflectorEventType, obj: T, old?: T): void {
    if (!this.onEvent) return;
    try {
      this.onEvent(type, obj, old);
    } catch (err) {
      this.log.error({ err, type, key: objectKey(obj) }, "onEvent handler threw");
    }
  }
}
