import { describe, expect, it } from "vitest";
import { EngineMetrics } from "../../../src/engine/metrics.js";

describe("EngineMetrics", () => {
  it("owns a registry separate from the global one and from other instances", async () => {
    const a = new EngineMetrics();
    const b = new EngineMetrics();
    a.reconcileTotal.inc({ controller: "run", result: "success" });
    expect(a.registry).not.toBe(b.registry);
    expect(await a.text()).toMatch(/vmforge_reconcile_total\{controller="run",result="success"\} 1/);
    expect(await b.text()).not.toMatch(/vmforge_reconcile_total\{controller="run"/);
  });

  it("exposes every engine metric and default process metrics", async () => {
    const m = new EngineMetrics();
    m.reconcileErrors.inc({ controller: "ce", kind: "retryable" });
    m.reconcileDuration.observe({ controller: "ce" }, 0.2);
    m.reconcileHeld.observe({ controller: "run" }, 0.03);
    m.queueDepth.set({ queue: "ce" }, 3);
    m.watchRestarts.inc({ resource: "runs", reason: "expired" });
    m.watchEvents.inc({ resource: "runs", type: "ADDED" }, 2);
    m.leaderStatus.set(1);
    const text = await m.text();
    expect(text).toMatch(/vmforge_reconcile_errors_total\{controller="ce",kind="retryable"\} 1/);
    expect(text).toMatch(/vmforge_reconcile_duration_seconds_count\{controller="ce"\} 1/);
    expect(text).toMatch(/vmforge_reconcile_duration_seconds_bucket\{le="0.25",controller="ce"\} 1/);
    expect(text).toMatch(/vmforge_reconcile_held_seconds_bucket\{le="0.05",controller="run"\} 1/);
    expect(text).toMatch(/vmforge_workqueue_depth\{queue="ce"\} 3/);
    expect(text).toMatch(/vmforge_watch_restarts_total\{resource="runs",reason="expired"\} 1/);
    expect(text).toMatch(/vmforge_watch_events_total\{resource="runs",type="ADDED"\} 2/);
    expect(text).toMatch(/vmforge_leader_status 1/);
    expect(text).toMatch(/vmforge_process_cpu_user_seconds_total/);
    expect(text).toMatch(/vmforge_nodejs_heap_size_used_bytes/);
    expect(m.contentType).toMatch(/^text\/plain/);
  });

  it("honours prefix and defaultMetrics=false", async () => {
    const m = new EngineMetrics({ prefix: "x_", defaultMetrics: false });
    const text = await m.text();
    expect(text).toMatch(/x_leader_status 0/);
    expect(text).not.toMatch(/process_cpu/);
  });
});
