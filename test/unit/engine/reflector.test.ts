// Reflector against an in-test fake of the two KubeClient calls it uses (list, watch). The fake
// keeps a resourceVersion counter and an event history so that watches can resume from a
// resourceVersion, be compacted (410), go silent, or fail like a broken connection.
import { afterEach, describe, expect, it, vi } from "vitest";
import { Reflector, type ReflectorClient, type ReflectorEventType } from "../../../src/engine/reflector.js";
import { KubeApiError, objectKey, type KubeObject, type ResourceType, type WatchEvent, type ListResult } from "../../../src/engine/kube.js";
import { EngineMetrics } from "../../../src/engine/metrics.js";
import { createLogger } from "../../../src/engine/logger.js";

type CM = KubeObject & { data?: Record<string, string> };

const ConfigMaps: ResourceType = { group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true };
const logger = createLogger({ level: "silent" });

class Channel<T> {
  private buf: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  private err: unknown;

  push(x: T): void {
    this.buf.push(x);
    this.notify();
  }

  close(err?: unknown): void {
    this.closed = true;
    this.err = err;
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async *iterate(signal: AbortSignal): AsyncGenerator<T> {
    const onAbort = (): void => this.close();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        const next = this.buf.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (this.closed) {
          if (this.err !== undefined && !signal.aborted) throw this.err;
          return;
        }
        await new Promise<void>((r) => (this.wake = r));
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}

class FakeApi implements ReflectorClient {
  rv = 100;
  readonly objects = new Map<string, CM>();
  private history: { rv: number; ev: WatchEvent<CM> }[] = [];
  private compactedBelow = 0;
  private readonly streams = new Set<Channel<WatchEvent<CM>>>();
  /** normal | down (every call fails like a refused connection) | blackhole (watch delivers nothing) */
  mode: "normal" | "down" | "blackhole" = "normal";
  /** How a too-old resourceVersion is answered. */
  goneStyle: "event" | "http" = "event";
  /** Answer every watch with 410, whatever its resourceVersion (a misbehaving server). */
  alwaysGone = false;
  /** Fail this many next watch calls with a generic error. */
  failWatches = 0;
  listCalls = 0;
  readonly watchFrom: string[] = [];

  constructor(readonly ns = "ns1") {}

  private record(type: "ADDED" | "MODIFIED" | "DELETED", obj: CM): void {
    const ev = { type, object: structuredClone(obj) } as WatchEvent<CM>;
    this.history.push({ rv: this.rv, ev });
    if (this.mode === "normal") for (const s of this.streams) s.push(structuredClone(ev));
  }

  create(name: string, data: Record<string, string> = {}): CM {
    this.rv++;
    const o: CM = { apiVersion: "v1", kind: "ConfigMap", metadata: { name, namespace: this.ns, uid: `uid-${name}-${this.rv}`, resourceVersion: String(this.rv) }, data };
    this.objects.set(objectKey(o), o);
    this.record("ADDED", o);
    return o;
  }

  update(name: string, data: Record<string, string>): CM {
    const cur = this.objects.get(`${this.ns}/${name}`);
    if (!cur) throw new Error(`no ${name}`);
    this.rv++;
    const o: CM = { ...cur, metadata: { ...cur.metadata, resourceVersion: String(this.rv) }, data };
    this.objects.set(objectKey(o), o);
    this.record("MODIFIED", o);
    return o;
  }

  remove(name: string): void {
    const cur = this.objects.get(`${this.ns}/${name}`);
    if (!cur) throw new Error(`no ${name}`);
    this.rv++;
    this.objects.delete(objectKey(cur));
    this.record("DELETED", { ...cur, metadata: { ...cur.metadata, resourceVersion: String(this.rv) } });
  }

  bookmark(): void {
    this.rv++;
    for (const s of this.streams) s.push({ type: "BOOKMARK", object: { metadata: { resourceVersion: String(this.rv) } } });
  }

  /** Forget the history: resuming from any older resourceVersion now answers 410. */
  compact(): void {
    this.compactedBelow = this.rv;
    this.history = [];
  }

  /** Break every open watch stream (with an error, or a clean end of stream). */
  disconnectAll(err?: unknown): void {
    for (const s of this.streams) s.close(err);
    this.streams.clear();
  }

  openWatches(): number {
    return this.streams.size;
  }

  async list<T extends KubeObject>(_rt: ResourceType, opts: { limit?: number; continue?: string } = {}): Promise<ListResult<T>> {
    await Promise.resolve();
    this.listCalls++;
    if (this.mode === "down") throw new Error("connect ECONNREFUSED 127.0.0.1:6443");
    const all = [...this.objects.values()].sort((a, b) => objectKey(a).localeCompare(objectKey(b)));
    const start = opts.continue ? Number(opts.continue) : 0;
    const end = opts.limit ? start + opts.limit : all.length;
    const items = all.slice(start, end).map((o) => structuredClone(o)) as unknown as T[];
    return { items, metadata: { resourceVersion: String(this.rv), ...(end < all.length ? { continue: String(end) } : {}) } };
  }

  watch<T extends KubeObject>(_rt: ResourceType, opts: { resourceVersion: string }, signal: AbortSignal): AsyncIterable<WatchEvent<T>> {
    this.watchFrom.push(opts.resourceVersion);
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const api = this;
    async function* gen(): AsyncGenerator<WatchEvent<CM>> {
      await Promise.resolve();
      if (api.mode === "down") throw new Error("connect ECONNREFUSED 127.0.0.1:6443");
      if (api.failWatches > 0) {
        api.failWatches--;
        throw new Error("read ECONNRESET");
      }
      const from = Number(opts.resourceVersion);
      if (from < api.compactedBelow || api.alwaysGone) {
        if (api.goneStyle === "http") throw new KubeApiError(410, "Expired", "too old resource version", { code: 410 });
        yield { type: "ERROR", object: { code: 410, reason: "Expired", message: `too old resource version: ${from}` } };
        return;
      }
      const ch = new Channel<WatchEvent<CM>>();
      if (api.mode === "blackhole") {
        // a connection that stays open and never says anything
        yield* ch.iterate(signal);
        return;
      }
      for (const h of api.history) if (h.rv > from) ch.push(structuredClone(h.ev));
      api.streams.add(ch);
      try {
        yield* ch.iterate(signal);
      } finally {
        api.streams.delete(ch);
      }
    }
    return gen() as AsyncIterable<WatchEvent<T>>;
  }
}

interface Seen {
  type: ReflectorEventType;
  key: string;
  data?: Record<string, string>;
  oldData?: Record<string, string>;
}

const reflectors: Reflector<CM>[] = [];
afterEach(async () => {
  await Promise.all(reflectors.splice(0).map((r) => r.stop()));
});

function start(
  api: FakeApi,
  opts: Partial<ConstructorParameters<typeof Reflector<CM>>[0]> = {},
): { r: Reflector<CM>; seen: Seen[]; metrics: EngineMetrics } {
  const seen: Seen[] = [];
  const metrics = new EngineMetrics({ defaultMetrics: false });
  const r = new Reflector<CM>({
    client: api,
    resource: ConfigMaps,
    namespace: api.ns,
    logger,
    metrics,
    backoffBaseMs: 2,
    backoffMaxMs: 20,
    resyncPeriodMs: 0,
    onEvent: (type, obj, old) =>
      seen.push({ type, key: objectKey(obj), ...(obj.data ? { data: obj.data } : {}), ...(old?.data ? { oldData: old.data } : {}) }),
    ...opts,
  });
  reflectors.push(r);
  r.start();
  return { r, seen, metrics };
}

async function restarts(metrics: EngineMetrics, reason: string): Promise<number> {
  const v = (await metrics.watchRestarts.get()).values.find((x) => x.labels.resource === "configmaps" && x.labels.reason === reason);
  return v?.value ?? 0;
}

function has(seen: Seen[], type: ReflectorEventType, key: string, pred: (s: Seen) => boolean = () => true): boolean {
  return seen.some((s) => s.type === type && s.key === key && pred(s));
}

describe("Reflector", () => {
  it("lists, then follows ADDED / MODIFIED / DELETED from the list's resourceVersion", async () => {
    const api = new FakeApi();
    api.create("a", { v: "1" });
    api.create("b", { v: "1" });
    const { r, seen, metrics } = start(api);
    expect(r.hasSynced()).toBe(false);
    await r.waitForSync();
    expect(r.hasSynced()).toBe(true);
    expect(r.store.keys().sort()).toEqual(["ns1/a", "ns1/b"]);
    expect(seen.map((s) => `${s.type} ${s.key}`).sort()).toEqual(["ADDED ns1/a", "ADDED ns1/b"]);
    await vi.waitFor(() => expect(api.openWatches()).toBe(1));
    expect(api.watchFrom).toEqual(["102"]);

    api.create("c", { v: "1" });
    api.update("a", { v: "2" });
    api.remove("b");
    await vi.waitFor(() => expect(has(seen, "DELETED", "ns1/b")).toBe(true));
    expect(has(seen, "ADDED", "ns1/c")).toBe(true);
    expect(has(seen, "MODIFIED", "ns1/a", (s) => s.data?.v === "2" && s.oldData?.v === "1")).toBe(true);
    expect(r.store.keys().sort()).toEqual(["ns1/a", "ns1/c"]);
    expect(r.store.get("ns1/a")?.data).toEqual({ v: "2" });
    expect(r.lastResourceVersion()).toBe(String(api.rv));

    api.bookmark();
    await vi.waitFor(() => expect(r.lastResourceVersion()).toBe(String(api.rv)));
    expect(await restarts(metrics, "initial")).toBe(1);
    expect(await restarts(metrics, "list")).toBe(1);
  });

  it("pages through a large list with limit/continue", async () => {
    const api = new FakeApi();
    for (let i = 0; i < 7; i++) api.create(`o${i}`);
    const { r } = start(api, { pageSize: 3 });
    await r.waitForSync();
    expect(api.listCalls).toBe(3);
    expect(r.store.size).toBe(7);
  });

  it("watches again from the last resourceVersion when the server ends the stream", async () => {
    const api = new FakeApi();
    api.create("a");
    const { r, seen, metrics } = start(api);
    await r.waitForSync();
    await vi.waitFor(() => expect(api.openWatches()).toBe(1));
    api.update("a", { v: "2" });
    await vi.waitFor(() => expect(has(seen, "MODIFIED", "ns1/a")).toBe(true));
    api.disconnectAll(); // clean end, like timeoutSeconds passing
    await vi.waitFor(() => expect(api.openWatches()).toBe(1));
    expect(api.watchFrom.at(-1)).toBe(String(api.rv));
    expect(api.listCalls).toBe(1);
    expect(await restarts(metrics, "closed")).toBe(1);
  });

  for (const goneStyle of ["event", "http"] as const) {
    it(`relists on 410 (${goneStyle === "event" ? "ERROR event" : "HTTP status"}) and reports what changed unseen, including deletes`, async () => {
      const api = new FakeApi();
      api.goneStyle = goneStyle;
      api.create("keep", { v: "1" });
      api.create("change", { v: "1" });
      api.create("vanish", { v: "1" });
      const { r, seen, metrics } = start(api);
      await r.waitForSync();
      await vi.waitFor(() => expect(api.openWatches()).toBe(1));
      seen.length = 0;

      // the connection breaks; while we cannot watch, things change and history is compacted
      api.mode = "down";
      api.disconnectAll(new Error("read ECONNRESET"));
      api.update("change", { v: "2" });
      api.remove("vanish");
      api.create("fresh", { v: "1" });
      api.compact();
      await vi.waitFor(async () => expect(await restarts(metrics, "error")).toBeGreaterThanOrEqual(2));
      api.mode = "normal";

      await vi.waitFor(() => expect(api.listCalls).toBe(2));
      await vi.waitFor(() => expect(has(seen, "DELETED", "ns1/vanish")).toBe(true));
      expect(has(seen, "MODIFIED", "ns1/change", (s) => s.data?.v === "2" && s.oldData?.v === "1")).toBe(true);
      expect(has(seen, "ADDED", "ns1/fresh")).toBe(true);
      // unchanged objects are not reported again
      expect(seen.some((s) => s.key === "ns1/keep")).toBe(false);
      // the synthesized delete carries the last known state
      expect(seen.find((s) => s.type === "DELETED")?.data).toEqual({ v: "1" });
      expect(r.store.keys().sort()).toEqual(["ns1/change", "ns1/fresh", "ns1/keep"]);
      expect(await restarts(metrics, "expired")).toBe(1);

      // and it keeps following live changes afterwards
      await vi.waitFor(() => expect(api.openWatches()).toBe(1));
      api.remove("keep");
      await vi.waitFor(() => expect(has(seen, "DELETED", "ns1/keep")).toBe(true));
    });
  }

  it("starting from an ancient resourceVersion (test hook) relists and only then reports synced", async () => {
    const api = new FakeApi();
    api.create("a");
    api.create("b");
    api.compact();
    const { r, seen, metrics } = start(api, { initialResourceVersion: "1" });
    expect(r.hasSynced()).toBe(false);
    await r.waitForSync();
    expect(api.watchFrom[0]).toBe("1");
    expect(api.listCalls).toBe(1);
    expect(seen.map((s) => `${s.type} ${s.key}`).sort()).toEqual(["ADDED ns1/a", "ADDED ns1/b"]);
    expect(await restarts(metrics, "expired")).toBe(1);
  });

  it("backs off instead of spinning when even a freshly listed resourceVersion is answered 410", async () => {
    const api = new FakeApi();
    api.create("a");
    api.alwaysGone = true;
    const { r, metrics } = start(api, { backoffBaseMs: 5, backoffMaxMs: 40 });
    await r.waitForSync();
    await vi.waitFor(() => expect(api.listCalls).toBeGreaterThanOrEqual(4));
    expect(await restarts(metrics, "backoff")).toBeGreaterThanOrEqual(3);
    expect(await restarts(metrics, "expired")).toBeGreaterThanOrEqual(3);
    api.alwaysGone = false;
    await vi.waitFor(() => expect(api.openWatches()).toBe(1));
  });

  it("restarts a watch that stays silent past idleTimeoutMs and misses nothing", async () => {
    const api = new FakeApi();
    api.create("a");
    api.mode = "blackhole";
    const { r, seen, metrics } = start(api, { idleTimeoutMs: 150 });
    await r.waitForSync();
    await vi.waitFor(() => expect(api.watchFrom.length).toBe(1));
    // a change the silent connection never delivers
    api.create("b");
    expect(has(seen, "ADDED", "ns1/b")).toBe(false);
    api.mode = "normal";
    await vi.waitFor(() => expect(has(seen, "ADDED", "ns1/b")).toBe(true));
    expect(await restarts(metrics, "idle")).toBeGreaterThanOrEqual(1);
    expect(api.watchFrom.length).toBeGreaterThanOrEqual(2);
    // resumed from where it was, no relist needed
    expect(api.watchFrom[1]).toBe(api.watchFrom[0]);
    expect(api.listCalls).toBe(1);
  });

  it("backs off and retries after watch errors, then resumes", async () => {
    const api = new FakeApi();
    api.create("a");
    api.failWatches = 3;
    const { r, seen, metrics } = start(api);
    await r.waitForSync();
    await vi.waitFor(() => expect(api.openWatches()).toBe(1));
    expect(await restarts(metrics, "error")).toBe(3);
    expect(await restarts(metrics, "backoff")).toBeGreaterThanOrEqual(3);
    api.create("b");
    await vi.waitFor(() => expect(has(seen, "ADDED", "ns1/b")).toBe(true));
  });

  it("retries a failing initial list until the server answers", async () => {
    const api = new FakeApi();
    api.create("a");
    api.mode = "down";
    const { r, metrics } = start(api);
    await vi.waitFor(() => expect(api.listCalls).toBeGreaterThanOrEqual(3));
    expect(r.hasSynced()).toBe(false);
    api.mode = "normal";
    await r.waitForSync();
    expect(r.store.keys()).toEqual(["ns1/a"]);
    expect(await restarts(metrics, "list-error")).toBeGreaterThanOrEqual(2);
  });

  it("periodically re-announces every cached object as RESYNC", async () => {
    const api = new FakeApi();
    api.create("a");
    api.create("b");
    const { r, seen } = start(api, { resyncPeriodMs: 30 });
    await r.waitForSync();
    await vi.waitFor(() => {
      expect(has(seen, "RESYNC", "ns1/a")).toBe(true);
      expect(has(seen, "RESYNC", "ns1/b")).toBe(true);
    });
  });

  it("resync() reports the current cached state", async () => {
    const api = new FakeApi();
    api.create("a", { v: "1" });
    const { r, seen } = start(api);
    await r.waitForSync();
    api.update("a", { v: "2" });
    await vi.waitFor(() => expect(r.store.get("ns1/a")?.data?.v).toBe("2"));
    seen.length = 0;
    r.resync();
    expect(seen).toEqual([{ type: "RESYNC", key: "ns1/a", data: { v: "2" } }]);
  });

  it("survives an onEvent handler that throws", async () => {
    const api = new FakeApi();
    api.create("a");
    const keys: string[] = [];
    const { r } = start(api, {
      onEvent: (_t, o) => {
        keys.push(objectKey(o));
        throw new Error("handler bug");
      },
    });
    await r.waitForSync();
    await vi.waitFor(() => expect(api.openWatches()).toBe(1));
    api.create("b");
    await vi.waitFor(() => expect(keys).toEqual(["ns1/a", "ns1/b"]));
  });

  it("waitForSync rejects when the reflector stops first or the signal aborts", async () => {
    const api = new FakeApi();
    api.mode = "down";
    const { r } = start(api);
    const ac = new AbortController();
    const viaSignal = r.waitForSync(ac.signal);
    ac.abort(new Error("gave up"));
    await expect(viaSignal).rejects.toThrow("gave up");
    const viaStop = r.waitForSync();
    await r.stop();
    await expect(viaStop).rejects.toThrow(/stopped/);
    await expect(r.waitForSync()).rejects.toThrow(/stopped/);
  });

  it("stop() ends the open watch", async () => {
    const api = new FakeApi();
    const { r } = start(api);
    await r.waitForSync();
    await vi.waitFor(() => expect(api.openWatches()).toBe(1));
    await r.stop();
    expect(api.openWatches()).toBe(0);
    const calls = api.watchFrom.length;
    api.create("late");
    await new Promise((res) => setTimeout(res, 20));
    expect(api.watchFrom.length).toBe(calls);
  });
});
