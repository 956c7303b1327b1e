// Engine pieces behind "reconcilers read from caches": objects are slimmed before caching, the
// client counts its requests and status writes, a controller stops within its deadline whatever
// its reconciles do, and lost leadership aborts in-flight reconciles at once.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { KubeConfig } from "@kubernetes/client-node";
import { KubeClient, type KubeObject, type ResourceType } from "../../../src/engine/kube.js";
import { LAST_APPLIED_ANNOTATION, deepFreeze, slimForCache } from "../../../src/engine/store.js";
import { Reflector } from "../../../src/engine/reflector.js";
import { Controller } from "../../../src/engine/controller.js";
import { EngineMetrics } from "../../../src/engine/metrics.js";
import { createLogger } from "../../../src/engine/logger.js";

const Runs: ResourceType = { group: "vmforge.dev", version: "v1alpha1", plural: "runs", kind: "Run", namespaced: true };
const logger = createLogger({ level: "silent" });

const heavy = (name: string): KubeObject & { spec: unknown } => ({
  apiVersion: "vmforge.dev/v1alpha1", kind: "Run",
  metadata: {
    name, namespace: "ns", uid: `u-${name}`, resourceVersion: "1",
    annotations: { [LAST_APPLIED_ANNOTATION]: "x".repeat(2000), keep: "me" },
    managedFields: [{ manager: "kubectl", fieldsV1: { "f:spec": {} } }],
  } as KubeObject["metadata"],
  spec: { a: 1 },
});

describe("slimForCache", () => {
  it("drops managedFields and the last-applied copy, keeps everything else", () => {
    const o = slimForCache(heavy("a"));
    expect(o.metadata).not.toHaveProperty("managedFields");
    expect(o.metadata.annotations).toEqual({ keep: "me" });
    expect(o.spec).toEqual({ a: 1 });
    const bare = slimForCache({ metadata: { name: "b", annotations: { [LAST_APPLIED_ANNOTATION]: "{}" } } });
    expect(bare.metadata).not.toHaveProperty("annotations");
  });

  it("is what a Reflector caches and hands to its handler, from lists and watch events", async () => {
    const seen: KubeObject[] = [];
    let watched = false;
    const client = {
      list: async () => ({ items: [heavy("a")], metadata: { resourceVersion: "5" } }),
      async *watch() {
        if (watched) return;
        watched = true;
        yield { type: "ADDED" as const, object: { ...heavy("b"), metadata: { ...heavy("b").metadata, resourceVersion: "6" } } };
      },
    };
    const r = new Reflector<KubeObject>({ client: client as never, resource: Runs, logger, resyncPeriodMs: 0, onEvent: (_t, o) => seen.push(o) });
    r.start();
    await r.waitForSync();
    await vi.waitFor(() => expect(r.store.size).toBe(2));
    await r.stop();
    for (const o of [...r.store.list(), ...seen]) {
      expect(o.metadata).not.toHaveProperty("managedFields");
      expect(o.metadata.annotations).toEqual({ keep: "me" });
    }
  });
});

describe("deepFreeze", () => {
  it("freezes an object and everything in it, in place: a change throws", () => {
    const o = deepFreeze({ metadata: { name: "ce1", finalizers: ["vmforge.dev/cleanup"] }, spec: { azure: { tags: { team: "a" } } }, n: 1, s: "x", none: null });
    expect(Object.isFrozen(o) && Object.isFrozen(o.metadata) && Object.isFrozen(o.metadata.finalizers) && Object.isFrozen(o.spec.azure.tags)).toBe(true);
    expect(() => { (o.metadata as { name: string }).name = "other"; }).toThrow(TypeError);
    expect(() => { o.metadata.finalizers.push("more"); }).toThrow(TypeError);
    expect(() => { (o.spec.azure.tags as Record<string, string>).team = "b"; }).toThrow(TypeError);
    expect(o.metadata.name).toBe("ce1");
    // a copy (what a reconciler that changes it makes) is free to change
    const copy = structuredClone(o);
    copy.metadata.finalizers.push("more");
    expect(copy.metadata.finalizers).toHaveLength(2);
    expect(deepFreeze("s")).toBe("s");
    expect(deepFreeze(null)).toBeNull();
  });
});

describe("KubeClient metrics", () => {
  let server: Server;
  let port = 0;
  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(req.method === "GET" && !req.url?.includes("/r1") ? { items: [], metadata: { resourceVersion: "1" } } : heavy("r1")));
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it("counts requests by verb and resource, and status writes by kind", async () => {
    const metrics = new EngineMetrics({ defaultMetrics: false });
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: "c", server: `http://127.0.0.1:${port}`, skipTLSVerify: true }], users: [{ name: "u" }],
      contexts: [{ name: "x", cluster: "c", user: "u" }], currentContext: "x",
    });
    const client = new KubeClient(kc, { metrics });
    await client.get(Runs, "ns", "r1");
    await client.list(Runs, { namespace: "ns" });
    await client.patch(Runs, "ns", "r1", { status: { phase: "Pending" } }, "merge", { subresource: "status" });
    await client.patch(Runs, "ns", "r1", { metadata: { labels: { a: "b" } } }, "merge");
    client.close();
    const text = await metrics.text();
    expect(text).toContain('vmforge_status_writes_total{kind="Run"} 1');
    expect(text).toContain('vmforge_kube_requests_total{verb="get",resource="runs"} 1');
    expect(text).toContain('vmforge_kube_requests_total{verb="list",resource="runs"} 1');
    expect(text).toContain('vmforge_kube_requests_total{verb="patch",resource="runs/status"} 1');
    expect(text).toContain('vmforge_kube_requests_total{verb="patch",resource="runs"} 1');
  });
});

describe("Controller stop and abort", () => {
  it("stop() settles by its deadline even when a reconcile ignores its aborted signal", async () => {
    vi.useFakeTimers();
    try {
      let signal: AbortSignal | undefined;
      const c = new Controller({
        name: "t", logger, reconcileTimeoutMs: 3_600_000,
        reconcile: (_k, s) => {
          signal = s;
          return new Promise(() => undefined); // never settles, ignores the signal
        },
      });
      c.start();
      c.enqueue("a");
      await vi.advanceTimersByTimeAsync(1);
      expect(signal).toBeDefined();
      let stopped = false;
      void c.stop(5_000).then(() => (stopped = true));
      await vi.advanceTimersByTimeAsync(3_999);
      expect(signal?.aborted).toBe(false); // most of the deadline is for finishing
      expect(stopped).toBe(false);
      await vi.advanceTimersByTimeAsync(1);
      expect(signal?.aborted).toBe(true);
      await vi.advanceTimersByTimeAsync(1_001);
      expect(stopped).toBe(true);
      expect(c.inFlightCount()).toBe(1); // abandoned, not awaited
    } finally {
      vi.useRealTimers();
    }
  });

  it("abortInFlight() fires every running reconcile's signal at once and takes no new keys", async () => {
    const signals: AbortSignal[] = [];
    const started: string[] = [];
    const c = new Controller({
      name: "t", logger, workers: 3,
      reconcile: (k, s) => {
        started.push(k);
        signals.push(s);
        return new Promise((_resolve, reject) => s.addEventListener("abort", () => reject(s.reason as Error)));
      },
    });
    c.start();
    c.enqueue("a");
    c.enqueue("b");
    await vi.waitFor(() => expect(signals).toHaveLength(2));
    c.abortInFlight(new Error("leadership lost"));
    expect(signals.every((s) => s.aborted)).toBe(true);
    expect((signals[0]?.reason as Error).message).toBe("leadership lost");
    c.enqueue("c");
    await c.stop(1_000);
    expect(started).toEqual(["a", "b"]);
  });
});
