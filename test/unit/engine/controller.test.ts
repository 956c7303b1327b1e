import { afterEach, describe, expect, it, vi } from "vitest";
import { Controller, TerminalError, ReconcileTimeoutError, type ReconcileResult } from "../../../src/engine/controller.js";
import { WorkQueue } from "../../../src/engine/queue.js";
import { EngineMetrics } from "../../../src/engine/metrics.js";
import { createLogger } from "../../../src/engine/logger.js";

const logger = createLogger({ level: "silent" });
const controllers: Controller[] = [];

afterEach(async () => {
  await Promise.all(controllers.splice(0).map((c) => c.stop(100)));
});

/** Small queue delays so retries happen quickly. */
function fastQueue(metrics?: EngineMetrics): WorkQueue {
  return new WorkQueue({ baseDelayMs: 1, maxDelayMs: 20, qps: 1e9, burst: 1e9, ...(metrics ? { metrics } : {}) });
}

function make(
  reconcile: (key: string, signal: AbortSignal) => Promise<ReconcileResult>,
  extra: Partial<ConstructorParameters<typeof Controller>[0]> = {},
): { c: Controller; metrics: EngineMetrics } {
  const metrics = new EngineMetrics({ defaultMetrics: false });
  const c = new Controller({ name: "test", reconcile, logger, metrics, queue: fastQueue(metrics), ...extra });
  controllers.push(c);
  return { c, metrics };
}

async function counter(metrics: EngineMetrics, result: string): Promise<number> {
  const v = (await metrics.reconcileTotal.get()).values.find((x) => x.labels.controller === "test" && x.labels.result === result);
  return v?.value ?? 0;
}

async function errors(metrics: EngineMetrics, kind: string): Promise<number> {
  const v = (await metrics.reconcileErrors.get()).values.find((x) => x.labels.controller === "test" && x.labels.kind === kind);
  return v?.value ?? 0;
}

describe("Controller", () => {
  it("reconciles an enqueued key and resets its backoff on success", async () => {
    const seen: string[] = [];
    const { c, metrics } = make(async (key) => {
      seen.push(key);
    });
    c.queue.whenReady("ns/a"); // pretend it failed before
    expect(c.queue.numRequeues("ns/a")).toBe(1);
    c.start();
    c.enqueue("ns/a");
    await vi.waitFor(() => expect(seen).toEqual(["ns/a"]));
    await vi.waitFor(async () => expect(await counter(metrics, "success")).toBe(1));
    expect(c.queue.numRequeues("ns/a")).toBe(0);
    const hist = (await metrics.reconcileDuration.get()).values.find((v) => v.metricName?.endsWith("_count"));
    expect(hist?.value).toBe(1);
  });

  it("retries a retryable error with backoff until it succeeds", async () => {
    let calls = 0;
    const { c, metrics } = make(async () => {
      calls++;
      if (calls < 3) throw new Error(`transient ${calls}`);
    });
    c.start();
    c.enqueue("k");
    await vi.waitFor(async () => expect(await counter(metrics, "success")).toBe(1));
    expect(calls).toBe(3);
    expect(await counter(metrics, "error")).toBe(2);
    expect(await errors(metrics, "retryable")).toBe(2);
    expect(c.queue.numRequeues("k")).toBe(0);
  });

  it("a synchronous throw is handled like a rejection", async () => {
    let calls = 0;
    const reconcile = ((): Promise<ReconcileResult> => {
      calls++;
      if (calls === 1) throw new Error("sync boom");
      return Promise.resolve();
    }) as (key: string, signal: AbortSignal) => Promise<ReconcileResult>;
    const { c, metrics } = make(reconcile);
    c.start();
    c.enqueue("k");
    await vi.waitFor(async () => expect(await counter(metrics, "success")).toBe(1));
    expect(calls).toBe(2);
  });

  it("a TerminalError calls onTerminalError, forgets the key and does not retry", async () => {
    let calls = 0;
    const terminal: { key: string; reason: string }[] = [];
    const { c, metrics } = make(
      async (key) => {
        calls++;
        if (key === "bad") throw new TerminalError("InvalidSpec", "spec.x is not valid");
      },
      {
        onTerminalError: async (key, err) => {
          terminal.push({ key, reason: err.reason });
        },
      },
    );
    c.start();
    c.enqueue("bad");
    await vi.waitFor(() => expect(terminal).toEqual([{ key: "bad", reason: "InvalidSpec" }]));
    // the key is not scheduled again; a later, unrelated key is processed normally
    c.enqueue("good");
    await vi.waitFor(async () => expect(await counter(metrics, "success")).toBe(1));
    expect(calls).toBe(2);
    expect(c.queue.scheduledCount()).toBe(0);
    expect(c.queue.len()).toBe(0);
    expect(c.queue.numRequeues("bad")).toBe(0);
    expect(await counter(metrics, "terminal")).toBe(1);
    expect(await errors(metrics, "terminal")).toBe(1);
    // a new add (e.g. after a spec change) reconciles it again
    c.enqueue("bad");
    await vi.waitFor(() => expect(terminal).toHaveLength(2));
  });

  it("a failing onTerminalError hook does not crash and the key is retried", async () => {
    let hookCalls = 0;
    const { c } = make(
      async () => {
        throw new TerminalError("Nope", "never works");
      },
      {
        onTerminalError: async () => {
          hookCalls++;
          if (hookCalls === 1) throw new Error("status write failed");
        },
      },
    );
    c.start();
    c.enqueue("k");
    await vi.waitFor(() => expect(hookCalls).toBe(2));
  });

  it("requeueAfterMs schedules the key again", async () => {
    let calls = 0;
    const { c, metrics } = make(async () => {
      calls++;
      return calls === 1 ? { requeueAfterMs: 5 } : undefined;
    });
    c.start();
    c.enqueue("k");
    await vi.waitFor(() => expect(calls).toBe(2));
    expect(await counter(metrics, "requeue")).toBe(1);
    await vi.waitFor(async () => expect(await counter(metrics, "success")).toBe(1));
  });

  it("a negative requeueAfterMs (a deadline that passed while the reconcile ran) runs the key again now, not never", async () => {
    let calls = 0;
    const { c, metrics } = make(async () => {
      calls++;
      return calls === 1 ? { requeueAfterMs: -0.3 } : undefined;
    });
    c.start();
    c.enqueue("k");
    await vi.waitFor(() => expect(calls).toBe(2));
    expect(await counter(metrics, "requeue")).toBe(1);
  });

  it("an infinite or not-a-number requeueAfterMs schedules nothing (a negative infinity runs the key now)", async () => {
    let calls = 0;
    const { c, metrics } = make(async () => {
      calls++;
      return calls === 3 ? { requeueAfterMs: -Infinity } : { requeueAfterMs: calls === 1 ? Infinity : Number.NaN };
    });
    c.start();
    c.enqueue("k");
    await vi.waitFor(async () => expect(await counter(metrics, "success")).toBe(1));
    c.enqueue("k");
    await vi.waitFor(async () => expect(await counter(metrics, "success")).toBe(2));
    await new Promise((r) => setTimeout(r, 50));
    expect(calls).toBe(2);
    expect(c.queue.scheduledCount()).toBe(0);
    // The third answer, -Infinity, runs the key again at once (the fourth answers NaN: no more).
    c.enqueue("k");
    await vi.waitFor(() => expect(calls).toBe(4));
    expect(await counter(metrics, "requeue")).toBe(1);
  });

  it("aborts the signal of a reconcile that outlives its timeout and retries it", async () => {
    let calls = 0;
    const reasons: unknown[] = [];
    const { c, metrics } = make(
      (key, signal) => {
        calls++;
        if (calls > 1) return Promise.resolve();
        return new Promise((_, reject) => {
          signal.addEventListener("abort", () => {
            reasons.push(signal.reason);
            reject(signal.reason as Error);
          });
        });
      },
      { reconcileTimeoutMs: 30 },
    );
    c.start();
    c.enqueue("slow");
    await vi.waitFor(async () => expect(await counter(metrics, "success")).toBe(1));
    expect(calls).toBe(2);
    expect(reasons[0]).toBeInstanceOf(ReconcileTimeoutError);
    expect(await counter(metrics, "timeout")).toBe(1);
    expect(await errors(metrics, "timeout")).toBe(1);
  });

  it("does not start a second reconcile of a key whose timed-out reconcile ignores the signal", async () => {
    const seen: string[] = [];
    let release!: () => void;
    const stuck = new Promise<void>((r) => (release = r));
    const { c, metrics } = make(
      async (key) => {
        seen.push(key);
        if (key === "k" && seen.filter((x) => x === "k").length === 1) await stuck; // ignores its signal
      },
      { reconcileTimeoutMs: 20, workers: 3 },
    );
    c.start();
    c.enqueue("k");
    await vi.waitFor(async () => expect(await counter(metrics, "timeout")).toBe(1));
    // the worker moved on; "k" is added again before "other", so if the key were free it would
    // start no later than "other" does
    c.enqueue("k");
    c.enqueue("other");
    await vi.waitFor(() => expect(seen).toContain("other"));
    expect(seen.filter((x) => x === "k")).toHaveLength(1);
    release();
    // once the stuck call settled, the key is retried
    await vi.waitFor(() => expect(seen.filter((x) => x === "k").length).toBeGreaterThanOrEqual(2));
  });

  it("never runs more reconciles at once than it has workers, and never two of one key", async () => {
    let running = 0;
    let maxRunning = 0;
    const perKey = new Map<string, number>();
    let keyOverlap = false;
    let total = 0;
    const { c } = make(
      async (key) => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        perKey.set(key, (perKey.get(key) ?? 0) + 1);
        if ((perKey.get(key) ?? 0) > 1) keyOverlap = true;
        await new Promise((r) => setTimeout(r, 2));
        perKey.set(key, (perKey.get(key) ?? 1) - 1);
        running--;
        total++;
      },
      { workers: 3 },
    );
    c.start();
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 10; i++) c.enqueue(`k${i}`);
      await new Promise((r) => setTimeout(r, 3));
    }
    await vi.waitFor(() => expect(c.queue.len() + c.queue.processingCount()).toBe(0));
    expect(total).toBeGreaterThanOrEqual(10);
    expect(maxRunning).toBeLessThanOrEqual(3);
    expect(maxRunning).toBeGreaterThan(1);
    expect(keyOverlap).toBe(false);
  });

  it("stop() lets in-flight work finish within the deadline and takes no new keys", async () => {
    const started: string[] = [];
    let finished = 0;
    const { c } = make(async (key) => {
      started.push(key);
      await new Promise((r) => setTimeout(r, 20));
      finished++;
    });
    c.start();
    c.enqueue("a");
    await vi.waitFor(() => expect(started).toEqual(["a"]));
    c.enqueue("b"); // processed by the second worker or not at all, never after stop
    const stopping = c.stop(5_000);
    c.enqueue("c");
    await stopping;
    expect(started).not.toContain("c");
    expect(finished).toBe(started.length);
    expect(c.inFlightCount()).toBe(0);
  });

  it("stop() aborts reconciles still running at the deadline", async () => {
    let aborted = false;
    const { c, metrics } = make((_key, signal) => {
      return new Promise((_, reject) => {
        signal.addEventListener("abort", () => {
          aborted = true;
          reject(new Error("aborted"));
        });
      });
    });
    c.start();
    c.enqueue("forever");
    await vi.waitFor(() => expect(c.inFlightCount()).toBe(1));
    await c.stop(20);
    expect(aborted).toBe(true);
    expect(c.inFlightCount()).toBe(0);
    expect(await counter(metrics, "aborted")).toBe(1);
    expect(c.queue.scheduledCount()).toBe(0); // no retry scheduled after shutdown
  });

  it("stop() keeps its deadline when the wall clock steps back during the stop (it measures with the monotonic clock)", async () => {
    const realNow = Date.now.bind(Date);
    let offset = 0;
    const wall = vi.spyOn(Date, "now").mockImplementation(() => realNow() + offset);
    try {
      // A reconcile that ignores its abort: the stop abandons it at the deadline.
      const { c } = make((_key, signal) => new Promise(() => {
        // The clock is stepped back an hour when the stop aborts it (an NTP correction meanwhile).
        signal.addEventListener("abort", () => (offset = -3_600_000));
      }));
      c.start();
      c.enqueue("stuck");
      await vi.waitFor(() => expect(c.inFlightCount()).toBe(1));
      const outcome = await Promise.race([
        c.stop(300).then(() => "stopped"),
        new Promise((r) => setTimeout(r, 3_000).unref()).then(() => "still stopping after 10 times its deadline"),
      ]);
      expect(offset).toBe(-3_600_000);
      expect(outcome).toBe("stopped");
    } finally {
      wall.mockRestore();
    }
  });

  it("with yieldTo, takes no key of its own while the other queue has keys waiting or in progress", async () => {
    const first = fastQueue();
    const order: string[] = [];
    let releaseAck!: () => void;
    const ackGate = new Promise<void>((r) => (releaseAck = r));
    const acks = make(async (key) => {
      order.push(`ack ${key}`);
      if (key === "ns/a") await ackGate;
    }, { queue: first, workers: 1 });
    const runs = make(async (key) => {
      order.push(`run ${key}`);
    }, { yieldTo: { queue: first, maxWaitMs: 60_000 }, workers: 2 });
    acks.c.start();
    runs.c.start();
    acks.c.enqueue("ns/a");
    acks.c.enqueue("ns/b");
    runs.c.enqueue("ns/a");
    await vi.waitFor(() => expect(order).toEqual(["ack ns/a"]));
    await new Promise((r) => setTimeout(r, 50));
    expect(order).toEqual(["ack ns/a"]); // the run waits while ack ns/a runs and ack ns/b waits
    releaseAck();
    await vi.waitFor(() => expect(order).toEqual(["ack ns/a", "ack ns/b", "run ns/a"]));
  });

  it("with yieldTo, waits at most maxWaitMs for the other queue", async () => {
    vi.useFakeTimers();
    try {
      const first = fastQueue();
      first.add("stuck"); // nothing ever takes it
      const seen: string[] = [];
      const runs = make(async (key) => {
        seen.push(key);
      }, { yieldTo: { queue: first, maxWaitMs: 40 } });
      runs.c.start();
      runs.c.enqueue("ns/a");
      await vi.advanceTimersByTimeAsync(39);
      expect(seen).toEqual([]); // still yielding
      await vi.advanceTimersByTimeAsync(1);
      expect(seen).toEqual(["ns/a"]);
    } finally {
      vi.useRealTimers();
    }
  });

  it("with yieldTo a queue with idleSpacingMs, a lull after a backlog lets one held worker go, the next that far apart, the rest once no backlog for that long", async () => {
    vi.useFakeTimers();
    try {
      const first = new WorkQueue({ qps: 1e9, burst: 1e9, now: () => Date.now(), idleSpacingMs: 50 });
      first.add("ack");
      const ack = (await first.get()) as string; // an acknowledgement in progress, taken from a backlog
      const seen: string[] = [];
      const runs = make(async (key) => {
        seen.push(key);
      }, { yieldTo: { queue: first, maxWaitMs: 60_000 }, workers: 3 });
      runs.c.start();
      for (const k of ["ns/a", "ns/b", "ns/c"]) runs.c.enqueue(k);
      await vi.advanceTimersByTimeAsync(10);
      expect(seen).toEqual([]);
      first.done(ack);
      await vi.advanceTimersByTimeAsync(0);
      expect(seen).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(20);
      first.add("ack2"); // another backlog, done at once: idle again 20 ms after the first went
      first.done((await first.get()) as string);
      await vi.advanceTimersByTimeAsync(29);
      expect(seen).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(1);
      expect(seen).toHaveLength(2); // 50 ms after the first
      await vi.advanceTimersByTimeAsync(19);
      expect(seen).toHaveLength(2);
      await vi.advanceTimersByTimeAsync(1);
      expect([...seen].sort()).toEqual(["ns/a", "ns/b", "ns/c"]); // no backlog since ack2, 50 ms
      // how long each was held: 10, 60 and 80 ms
      const held = (await runs.metrics.reconcileHeld.get()).values.filter((v) => v.labels.controller === "test");
      expect(held.find((v) => v.metricName?.endsWith("_count"))?.value).toBe(3);
      expect(held.find((v) => v.metricName?.endsWith("_sum"))?.value).toBeCloseTo(0.15, 3);
      expect(held.find((v) => v.metricName?.endsWith("_bucket") && (v.labels as Record<string, unknown>).le === 0.05)?.value).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it("with mayWork false (the Lease not renewed in time), starts no reconcile until it is true again; stopped meanwhile, lets the key go unreconciled", async () => {
    let may = false;
    const seen: string[] = [];
    const { c } = make(async (key) => {
      seen.push(key);
    }, { mayWork: () => may });
    c.start();
    c.enqueue("ns/a");
    await new Promise((r) => setTimeout(r, 300));
    expect(seen).toEqual([]);
    may = true;
    await vi.waitFor(() => expect(seen).toEqual(["ns/a"]), { timeout: 5_000 });

    may = false;
    c.enqueue("ns/b");
    await new Promise((r) => setTimeout(r, 300));
    expect(c.queue.processingCount()).toBe(1); // ns/b, taken and held back
    c.abortInFlight(new Error("leadership lost"));
    await c.stop(1_000);
    expect(seen).toEqual(["ns/a"]);
    expect(c.queue.processingCount()).toBe(0);
  });

  it("a worker held back by mayWork leaves when the controller is stopped, letting its key go", async () => {
    const seen: string[] = [];
    const { c } = make(async (key) => {
      seen.push(key);
    }, { mayWork: () => false, workers: 1 });
    c.start();
    c.enqueue("ns/a");
    await vi.waitFor(() => expect(c.queue.processingCount()).toBe(1), { timeout: 5_000 });
    // The worker lets the key go as it leaves; stop() does not wait for its deadline to pass
    // (the test's own timeout, 5 s, would).
    await c.stop(30_000);
    expect(c.queue.processingCount()).toBe(0);
    expect(seen).toEqual([]);
  });

  it("validates its options", () => {
    expect(() => new Controller({ name: "x", reconcile: async () => undefined, logger, workers: 0 })).toThrow(RangeError);
    expect(() => new Controller({ name: "x", reconcile: async () => undefined, logger, reconcileTimeoutMs: 0 })).toThrow(RangeError);
  });

  it("TerminalError carries its reason", () => {
    const e = new TerminalError("BadRegion", "region xx-1 is not supported");
    expect(e).toBeInstanceOf(Error);
    expect(e.reason).toBe("BadRegion");
    expect(e.message).toBe("region xx-1 is not supported");
    expect(e.name).toBe("TerminalError");
  });
});
