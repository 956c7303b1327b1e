import { Writable } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { parseAddress, startHealthServer } from "../../../src/engine/health.js";
import type { HealthServer } from "../../../src/engine/health.js";
import { createLogger } from "../../../src/engine/logger.js";
import { EngineMetrics } from "../../../src/engine/metrics.js";

const logger = createLogger({ destination: new Writable({ write: (_c, _e, cb) => cb() }) });
let server: HealthServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe("parseAddress", () => {
  it("accepts host:port, [v6]:port and :port", () => {
    expect(parseAddress("127.0.0.1:8080")).toEqual({ host: "127.0.0.1", port: 8080 });
    expect(parseAddress("localhost:0")).toEqual({ host: "localhost", port: 0 });
    expect(parseAddress("[::1]:9090")).toEqual({ host: "::1", port: 9090 });
    expect(parseAddress(":8081")).toEqual({ host: "0.0.0.0", port: 8081 });
  });
  it("rejects malformed addresses", () => {
    for (const a of ["8080", "host:", "host:70000", "a:b:c", "host:port"]) {
      expect(() => parseAddress(a), a).toThrow(/invalid/);
    }
  });
});

describe("startHealthServer", () => {
  it("serves /healthz, /readyz and /metrics on an ephemeral port", async () => {
    let ready = false;
    let live = true;
    const metrics = new EngineMetrics();
    metrics.reconcileTotal.inc({ controller: "run", result: "success" });
    server = await startHealthServer({ address: "127.0.0.1:0", metrics, ready: () => ready, live: () => live, logger });
    expect(server.port).toBeGreaterThan(0);
    const base = `http://127.0.0.1:${server.port}`;

    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(503);
    ready = true;
    const r = await fetch(`${base}/readyz`);
    expect(r.status).toBe(200);
    expect(await r.text()).toBe("ok\n");
    live = false;
    expect((await fetch(`${base}/healthz`)).status).toBe(503);

    const m = await fetch(`${base}/metrics`);
    expect(m.status).toBe(200);
    expect(m.headers.get("content-type")).toMatch(/^text\/plain/);
    const body = await m.text();
    expect(body).toMatch(/vmforge_reconcile_total\{controller="run",result="success"\} 1/);
    expect(body).toMatch(/vmforge_process_resident_memory_bytes|vmforge_process_cpu_seconds_total/);

    expect((await fetch(`${base}/nope`)).status).toBe(404);
    expect((await fetch(`${base}/healthz`, { method: "POST" })).status).toBe(405);
  });

  it("treats a throwing probe as failing", async () => {
    server = await startHealthServer({
      address: "127.0.0.1:0",
      metrics: new EngineMetrics({ defaultMetrics: false }),
      ready: () => {
        throw new Error("boom");
      },
      live: () => true,
      logger,
    });
    expect((await fetch(`http://127.0.0.1:${server.port}/readyz`)).status).toBe(503);
  });

  it("close() stops listening", async () => {
    const s = await startHealthServer({ address: "127.0.0.1:0", metrics: new EngineMetrics({ defaultMetrics: false }), ready: () => true, live: () => true, logger });
    await s.close();
    await s.close();
    await expect(fetch(`http://127.0.0.1:${s.port}/healthz`)).rejects.toThrow();
  });

  it("fails to start on a port in use", async () => {
    server = await startHealthServer({ address: "127.0.0.1:0", metrics: new EngineMetrics({ defaultMetrics: false }), ready: () => true, logger });
    await expect(
      startHealthServer({ address: `127.0.0.1:${server.port}`, metrics: new EngineMetrics({ defaultMetrics: false }), ready: () => true, logger }),
    ).rejects.toThrow(/EADDRINUSE/);
  });
});
