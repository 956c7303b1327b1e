import { afterEach, describe, expect, it, vi } from "vitest";
import { Controller, retryAfterHint } from "../../../src/engine/controller.js";
import { WorkQueue } from "../../../src/engine/queue.js";
import { createLogger } from "../../../src/engine/logger.js";

describe("retry-after hints", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("reads a numeric retryAfterMs from any error, bounded", () => {
    expect(retryAfterHint(Object.assign(new Error("throttled"), { retryAfterMs: 2500 }))).toBe(2500);
    expect(retryAfterHint(new Error("plain"))).toBe(0);
    expect(retryAfterHint({ retryAfterMs: "soon" })).toBe(0);
    expect(retryAfterHint({ retryAfterMs: 10 * 3_600_000 })).toBe(3_600_000);
  });

  it("a throttled reconcile is retried no sooner than the hint, not after the base backoff", async () => {
    vi.useFakeTimers();
    const attempts: number[] = [];
    const queue = new WorkQueue({ baseDelayMs: 5, maxDelayMs: 60_000 });
    const c = new Controller({
      name: "t",
      queue,
      logger: createLogger({ level: "silent" }),
      reconcile: async () => {
        attempts.push(Date.now());
        if (attempts.length === 1) throw Object.assign(new Error("Throttling"), { retryAfterMs: 2_000 });
      },
    });
    c.start();
    c.enqueue("k");
    await vi.advanceTimersByTimeAsync(1_900);
    expect(attempts).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(200);
    expect(attempts).toHaveLength(2);
    expect((attempts[1] ?? 0) - (attempts[0] ?? 0)).toBeGreaterThanOrEqual(2_000);
    await c.stop(1_000);
  });
});
