import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TokenBucket, WorkQueue } from "../../../src/engine/queue.js";
import { EngineMetrics } from "../../../src/engine/metrics.js";

afterEach(() => {
  vi.useRealTimers();
});

/** A queue whose token bucket never limits, so only the per-key backoff shows. */
function backoffOnly(base = 5, max = 300_000): WorkQueue {
  return new WorkQueue({ baseDelayMs: base, maxDelayMs: max, qps: 1e9, burst: 1e9 });
}

describe("WorkQueue de-duplication", () => {
  it("keeps one entry per key while it waits", async () => {
    const q = new WorkQueue();
    q.add("a");
    q.add("b");
    q.add("a");
    q.add("a");
    expect(q.len()).toBe(2);
    expect(await q.get()).toBe("a");
    expect(await q.get()).toBe("b");
    expect(q.len()).toBe(0);
  });

  it("a key added while processed is queued again only after done()", async () => {
    const q = new WorkQueue();
    q.add("a");
    const k = await q.get();
    expect(k).toBe("a");
    q.add("a");
    q.add("a");
    expect(q.len()).toBe(0); // not handed to a second worker
    q.done("a");
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe("a");
    q.done("a");
    expect(q.len()).toBe(0);
  });

  it("done() of a key that was not re-added leaves the queue empty", async () => {
    const q = new WorkQueue();
    q.add("x");
    await q.get();
    q.done("x");
    expect(q.len()).toBe(0);
    expect(q.processingCount()).toBe(0);
  });

  it("never lets two concurrent workers hold the same key", async () => {
    const q = new WorkQueue();
    const keys = ["k1", "k2", "k3"];
    const active = new Set<string>();
    let overlaps = 0;
    let processed = 0;
    const worker = async (): Promise<void> => {
      for (;;) {
        const key = await q.get();
        if (key === undefined) return;
        if (active.has(key)) overlaps++;
        active.add(key);
        // while holding the key, other producers add it again
        q.add(key);
        await new Promise((r) => setImmediate(r));
        active.delete(key);
        processed++;
        q.done(key);
        if (processed >= 60) q.shutDown();
      }
    };
    for (const k of keys) q.add(k);
    await Promise.all([worker(), worker(), worker(), worker(), worker()]);
    expect(processed).toBeGreaterThanOrEqual(60);
    expect(overlaps).toBe(0);
  });

  it("a waiting get() is woken by add()", async () => {
    const q = new WorkQueue();
    const p = q.get();
    q.add("late");
    await expect(p).resolves.toBe("late");
  });
});

describe("WorkQueue rate limiting", () => {
  it("per-key backoff doubles from baseDelayMs up to maxDelayMs and forget() resets it", () => {
    const q = backoffOnly(5, 100);
    const delays = Array.from({ length: 7 }, () => q.whenReady("a"));
    expect(delays).toEqual([5, 10, 20, 40, 80, 100, 100]);
    expect(q.numRequeues("a")).toBe(7);
    // other keys have their own history
    expect(q.whenReady("b")).toBe(5);
    q.forget("a");
    expect(q.numRequeues("a")).toBe(0);
    expect(q.whenReady("a")).toBe(5);
  });

  it("defaults are 5 ms base and a 5 minute cap", () => {
    const q = new WorkQueue({ qps: 1e9, burst: 1e9 });
    expect(q.whenReady("a")).toBe(5);
    for (let i = 0; i < 40; i++) q.whenReady("a");
    expect(q.whenReady("a")).toBe(300_000);
  });

  it("a global token bucket spaces out retries of different keys once the burst is spent", () => {
    let now = 1_000_000;
    const q = new WorkQueue({ baseDelayMs: 1, maxDelayMs: 1, qps: 10, burst: 2, now: () => now });
    // burst of 2, then one token every 100 ms; each reservation queues behind the previous one
    expect(["a", "b", "c", "d", "e"].map((k) => q.whenReady(k))).toEqual([1, 1, 100, 200, 300]);
    now += 1_000; // 10 tokens refill, minus the 3 reserved beyond the burst; capped at burst
    expect(q.whenReady("f")).toBe(1);
    expect(q.whenReady("g")).toBe(1);
    expect(q.whenReady("h")).toBe(100);
  });

  it("the larger of backoff and bucket delay wins", () => {
    const now = 0;
    const q = new WorkQueue({ baseDelayMs: 1_000, maxDelayMs: 10_000, qps: 10, burst: 1, now: () => now });
    expect(q.whenReady("a")).toBe(1_000); // bucket says 0, backoff says 1000
    expect(q.whenReady("b")).toBe(1_000); // bucket says 100
    q.forget("a");
    const q2 = new WorkQueue({ baseDelayMs: 1, maxDelayMs: 10, qps: 1, burst: 1, now: () => now });
    q2.whenReady("x");
    expect(q2.whenReady("y")).toBe(1_000); // bucket dominates
  });

  it("a step of the wall clock neither holds a key nor stalls the rate limiter (the queue keeps time with the monotonic clock)", async () => {
    vi.useFakeTimers();
    const q = new WorkQueue({ baseDelayMs: 5, maxDelayMs: 10_000, qps: 10, burst: 1 });
    q.addRateLimited("a", 1_000); // a hint: held for 1 s; takes the bucket's only token
    vi.setSystemTime(Date.now() - 3_600_000); // the wall clock steps back an hour (not the monotonic one)
    q.add("a"); // a watch event meanwhile: held until the hint's second, not for another hour
    q.addRateLimited("b"); // the bucket's next token: 100 ms at its rate
    expect(q.whenReady("c")).toBeLessThanOrEqual(200);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(q.len()).toBe(2);
  });

  it("addRateLimited queues the key after its backoff delay", async () => {
    vi.useFakeTimers();
    const q = backoffOnly(100, 10_000);
    q.addRateLimited("a"); // 100 ms
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(99);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe("a");
    q.done("a");
    q.addRateLimited("a"); // second failure: 200 ms
    vi.advanceTimersByTime(199);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
  });

  it("a hint (minimum delay) holds the key: adds meanwhile, also a re-add while processing, wait for it; plain backoff does not hold", async () => {
    vi.useFakeTimers();
    const q = backoffOnly(5, 10_000);
    q.addRateLimited("h", 1_000);
    q.add("h"); // e.g. a watch event
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(999);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe("h");
    // Re-added while processing (its own status write), then it fails with a hint again.
    q.add("h");
    q.addRateLimited("h", 2_000);
    q.done("h");
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1_999);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe("h");
    q.done("h");
    // Once the hold is over, or after forget (a success), adds run at once again.
    q.add("h");
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe("h");
    q.done("h");
    q.addRateLimited("h", 5_000);
    q.forget("h");
    q.add("h");
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe("h");
    q.done("h");
    // Plain backoff (no hint): a change runs the key at once.
    q.addRateLimited("b");
    q.addRateLimited("b");
    q.add("b");
    expect(q.len()).toBe(1);
  });
});

describe("WorkQueue delayed adds", () => {
  it("addAfter makes the key available only after the delay", () => {
    vi.useFakeTimers();
    const q = new WorkQueue();
    q.addAfter("a", 1_000);
    expect(q.len()).toBe(0);
    expect(q.scheduledCount()).toBe(1);
    vi.advanceTimersByTime(999);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
    expect(q.scheduledCount()).toBe(0);
  });

  it("the earliest of several delayed adds of one key wins and the key is queued once", () => {
    vi.useFakeTimers();
    const q = new WorkQueue();
    q.addAfter("a", 1_000);
    q.addAfter("a", 300); // earlier: replaces
    q.addAfter("a", 5_000); // later: ignored
    vi.advanceTimersByTime(300);
    expect(q.len()).toBe(1);
    vi.advanceTimersByTime(10_000);
    expect(q.len()).toBe(1);
    expect(q.scheduledCount()).toBe(0);
  });

  it("a delay longer than a timer can hold waits (cut to about 24.8 days) instead of firing at once", async () => {
    const q = new WorkQueue();
    q.addAfter("a", 2 ** 40);
    try {
      await new Promise((r) => setTimeout(r, 30));
      expect(q.len()).toBe(0);
      expect(q.scheduledCount()).toBe(1);
    } finally {
      q.shutDown();
    }
  });

  it("addAfter with a zero or negative delay adds at once", () => {
    const q = new WorkQueue();
    q.addAfter("a", 0);
    q.addAfter("b", -5);
    expect(q.len()).toBe(2);
  });

  it("a delayed add that fires while the key is processed re-queues it after done()", async () => {
    vi.useFakeTimers();
    const q = new WorkQueue();
    q.add("a");
    expect(await q.get()).toBe("a");
    q.addAfter("a", 10);
    vi.advanceTimersByTime(10);
    expect(q.len()).toBe(0);
    q.done("a");
    expect(q.len()).toBe(1);
  });
});

describe("WorkQueue shutdown", () => {
  it("ignores adds after shutDown, drains what is queued, then get() resolves undefined", async () => {
    const q = new WorkQueue();
    q.add("a");
    q.add("b");
    q.shutDown();
    expect(q.shuttingDown).toBe(true);
    q.add("c");
    q.addAfter("d", 1);
    q.addRateLimited("e");
    expect(q.len()).toBe(2);
    expect(await q.get()).toBe("a");
    expect(await q.get()).toBe("b");
    expect(await q.get()).toBeUndefined();
  });

  it("wakes blocked get() calls with undefined", async () => {
    const q = new WorkQueue();
    const waiting = [q.get(), q.get()];
    q.shutDown();
    await expect(Promise.all(waiting)).resolves.toEqual([undefined, undefined]);
  });

  it("drops pending delayed adds", () => {
    vi.useFakeTimers();
    const q = new WorkQueue();
    q.addAfter("a", 100);
    q.shutDown();
    vi.advanceTimersByTime(1_000);
    expect(q.len()).toBe(0);
    expect(q.scheduledCount()).toBe(0);
  });

  it("drain() resolves once nothing is queued or processing", async () => {
    const q = new WorkQueue();
    q.add("a");
    let drained = false;
    const d = q.drain().then(() => (drained = true));
    const k = await q.get();
    await Promise.resolve();
    expect(drained).toBe(false); // still processing
    q.done(k!);
    await d;
    expect(drained).toBe(true);
  });
});

describe("WorkQueue metrics", () => {
  it("reports the queue depth", async () => {
    const metrics = new EngineMetrics({ defaultMetrics: false });
    const q = new WorkQueue({ name: "things", metrics });
    const depth = async (): Promise<number | undefined> =>
      (await metrics.queueDepth.get()).values.find((v) => v.labels.queue === "things")?.value;
    q.add("a");
    q.add("b");
    q.add("b");
    expect(await depth()).toBe(2);
    await q.get();
    expect(await depth()).toBe(1);
    const adds = (await metrics.queueAdds.get()).values.find((v) => v.labels.queue === "things")?.value;
    expect(adds).toBe(2);
  });

  it("rejects an invalid configuration", () => {
    expect(() => new WorkQueue({ baseDelayMs: 10, maxDelayMs: 5 })).toThrow(RangeError);
    expect(() => new WorkQueue({ idleSpacingMs: -1 })).toThrow(RangeError);
    expect(() => new WorkQueue({ idleSpacingMs: Number.NaN })).toThrow(RangeError);
    expect(() => new WorkQueue({ idleSpacingMs: Number.POSITIVE_INFINITY })).toThrow(RangeError);
  });
});

describe("WorkQueue.whenIdle", () => {
  it("resolves at once when nothing waits or runs, and once the last key is done otherwise", async () => {
    const q = new WorkQueue();
    let idle = false;
    await q.whenIdle(10_000);
    q.add("a");
    q.add("b");
    void q.whenIdle(10_000).then(() => (idle = true));
    const a = await q.get();
    await Promise.resolve();
    expect(idle).toBe(false); // b still waits
    const b = await q.get();
    q.done(a as string);
    await Promise.resolve();
    expect(idle).toBe(false); // b is being processed
    q.done(b as string);
    await vi.waitFor(() => expect(idle).toBe(true));
  });

  it("gives up after its bound, and resolves at shutdown", async () => {
    vi.useFakeTimers();
    try {
      const q0 = new WorkQueue();
      q0.add("a");
      let gaveUp = false;
      void q0.whenIdle(30).then(() => (gaveUp = true));
      await vi.advanceTimersByTimeAsync(29);
      expect(gaveUp).toBe(false);
      await vi.advanceTimersByTimeAsync(1);
      expect(gaveUp).toBe(true);
    } finally {
      vi.useRealTimers();
    }
    const q = new WorkQueue();
    q.add("a");
    let idle = false;
    void q.whenIdle(60_000).then(() => (idle = true));
    q.shutDown();
    await vi.waitFor(() => expect(idle).toBe(true));
  });
});

describe("WorkQueue.whenIdle with spacing", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });
  /** Adds `key` and takes it with no worker waiting for one: a backlog, now. Returns the key, in progress. */
  const backlog = async (q: WorkQueue, key: string): Promise<string> => {
    q.add(key);
    return (await q.get()) as string;
  };
  /** A queue on the fake clock with that spacing, with one key in progress after a backlog (returned). */
  const busyQueue = async (idleSpacingMs: number): Promise<{ q: WorkQueue; key: string }> => {
    const q = new WorkQueue({ now: () => Date.now(), idleSpacingMs });
    return { q, key: await backlog(q, "a") };
  };

  it("after a backlog, lets callers go one per idle moment, at least the spacing apart; the rest once a spacing passed without one; a caller finding it idle with no one in line goes at once", async () => {
    const { q, key: a } = await busyQueue(25); // a backlog at 0
    const gone: string[] = [];
    for (const w of ["w1", "w2", "w3"]) void q.whenIdle(60_000).then(() => gone.push(w));
    await vi.advanceTimersByTimeAsync(10);
    expect(gone).toEqual([]); // a is being processed
    q.done(a); // 10: idle, 10 ms after the backlog
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1"]); // one, not all three
    void q.whenIdle(60_000).then(() => gone.push("w4"));
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1"]); // the queue is idle, but w4 does not pass the line
    await vi.advanceTimersByTimeAsync(5);
    q.done(await backlog(q, "b")); // 15: another backlog, idle again at once
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1"]); // too soon after w1
    await vi.advanceTimersByTimeAsync(19);
    expect(gone).toEqual(["w1"]);
    await vi.advanceTimersByTimeAsync(1);
    expect(gone).toEqual(["w1", "w2"]); // 35: a spacing after w1, idle: the next one
    await vi.advanceTimersByTimeAsync(4);
    expect(gone).toEqual(["w1", "w2"]);
    await vi.advanceTimersByTimeAsync(1);
    expect(gone).toEqual(["w1", "w2", "w3", "w4"]); // 40: no backlog since 15: the rest at once
    // no one in line and the queue idle: no spacing at all, however many come
    let freeGoes = 0;
    for (let i = 0; i < 5; i++) await q.whenIdle(60_000).then(() => freeGoes++);
    expect(freeGoes).toBe(5);
    // later, another line behind a backlog: the same again
    await vi.advanceTimersByTimeAsync(100);
    const c = await backlog(q, "c");
    for (const w of ["x1", "x2"]) void q.whenIdle(60_000).then(() => gone.push(w));
    q.done(c);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone.slice(4)).toEqual(["x1"]);
    await vi.advanceTimersByTimeAsync(25);
    expect(gone.slice(4)).toEqual(["x1", "x2"]);
  });

  it("a backlog lasts until its key is done: a key processed for longer than the spacing still spaces the line", async () => {
    const { q, key: a } = await busyQueue(50); // taken from a backlog at 0
    const gone: string[] = [];
    for (const w of ["w1", "w2"]) void q.whenIdle(60_000).then(() => gone.push(w));
    await vi.advanceTimersByTimeAsync(200); // a is processed for 200 ms
    q.done(a);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1"]); // not both: the backlog ended just now
    await vi.advanceTimersByTimeAsync(49);
    expect(gone).toEqual(["w1"]);
    await vi.advanceTimersByTimeAsync(1);
    expect(gone).toEqual(["w1", "w2"]);
  });

  it("a single release that empties the line takes its pending look with it", async () => {
    const { q, key: a } = await busyQueue(50);
    const gone: string[] = [];
    for (const w of ["w1", "w2"]) void q.whenIdle(60_000).then(() => gone.push(w));
    q.done(a);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1"]);
    expect(vi.getTimerCount()).toBe(2); // w2's bound and the look timed for it
    vi.setSystemTime(Date.now() + 50); // the queue's clock at the look's time, the look not run: a done() comes first
    q.done(await backlog(q, "b"));
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1", "w2"]); // let go singly (a backlog just now), the line empty
    expect(vi.getTimerCount()).toBe(0);
  });

  it("keys each taken at once by a waiting worker are no backlog: the whole line goes at every idle moment; vmforge_workqueue_backlog_total counts only backlogs", async () => {
    const metrics = new EngineMetrics({ defaultMetrics: false });
    const q = new WorkQueue({ name: "acks", now: () => Date.now(), idleSpacingMs: 50, metrics });
    const backlogs = async (): Promise<number | undefined> =>
      (await metrics.queueBacklog.get()).values.find((v) => v.labels.queue === "acks")?.value;
    const gone: string[] = [];
    for (const round of [1, 2, 3]) {
      const taken = q.get(); // a worker waits for a key
      q.add(`k${round}`);
      const k = (await taken) as string;
      for (const w of ["w1", "w2", "w3"]) void q.whenIdle(60_000).then(() => gone.push(`${w}.${round}`));
      await vi.advanceTimersByTimeAsync(10);
      expect(gone).toHaveLength((round - 1) * 3); // k is being processed
      q.done(k);
      await vi.advanceTimersByTimeAsync(0);
      expect(gone).toHaveLength(round * 3); // all of them, 10 ms apart from the round before
    }
    expect(await backlogs()).toBeUndefined(); // never counted
    // a backlog now: spaced again, and counted
    const b = await backlog(q, "b");
    expect(await backlogs()).toBe(1);
    for (const w of ["y1", "y2"]) void q.whenIdle(60_000).then(() => gone.push(w));
    q.done(b);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone.slice(9)).toEqual(["y1"]);
    q.add("c1");
    q.add("c2");
    await q.get();
    await q.get();
    expect(await backlogs()).toBe(3); // two keys waiting, each found by a worker
  });

  it("bounds each caller's wait by maxWaitMs, keeps the line's order, and lets the whole line go at shutdown", async () => {
    const q = new WorkQueue({ now: () => Date.now(), idleSpacingMs: 25 });
    q.add("stuck"); // nothing takes it
    const gone: string[] = [];
    void q.whenIdle(30).then(() => gone.push("short"));
    void q.whenIdle(60_000).then(() => gone.push("long1"));
    void q.whenIdle(60_000).then(() => gone.push("long2"));
    await vi.advanceTimersByTimeAsync(30);
    expect(gone).toEqual(["short"]);
    const k = (await q.get()) as string;
    q.done(k);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["short", "long1"]); // the one that gave up left the line; the next goes
    q.add("c");
    q.shutDown();
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["short", "long1", "long2"]); // not kept for its spacing or for c
  });

  it("a look timed while the queue is busy again lets the head go at the next idle moment, at once", async () => {
    const { q, key: a } = await busyQueue(50);
    const gone: string[] = [];
    for (const w of ["w1", "w2", "w3"]) void q.whenIdle(60_000).then(() => gone.push(w));
    q.done(a);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1"]);
    const b = await backlog(q, "b");
    await vi.advanceTimersByTimeAsync(200); // the look for w2 came and went while b ran
    expect(gone).toEqual(["w1"]);
    const c = await backlog(q, "c"); // a backlog again, just now
    q.done(b);
    q.done(c);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1", "w2"]); // the head, at once; not w3 (a backlog just now)
  });

  it("a caller finding the queue idle and no one in line goes at once, even right after one was let go singly", async () => {
    const { q, key: a } = await busyQueue(50);
    let first = false;
    void q.whenIdle(60_000).then(() => (first = true));
    q.done(a);
    await vi.advanceTimersByTimeAsync(0);
    expect(first).toBe(true); // let go singly: the spacing counts from now
    let next = false;
    void q.whenIdle(60_000).then(() => (next = true));
    await vi.advanceTimersByTimeAsync(0);
    expect(next).toBe(true); // not 50 ms later: no one was in line
  });

  it("a head that gives up leaves the line: the next goes at its turn; a line emptied so leaves no timer", async () => {
    const { q, key: a } = await busyQueue(10);
    const gone: string[] = [];
    void q.whenIdle(60_000).then(() => gone.push("first"));
    void q.whenIdle(5).then(() => gone.push("quitter"));
    void q.whenIdle(60_000).then(() => gone.push("next"));
    q.done(a);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["first"]);
    await vi.advanceTimersByTimeAsync(5);
    expect(gone).toEqual(["first", "quitter"]); // gave up
    await vi.advanceTimersByTimeAsync(4);
    expect(gone).toEqual(["first", "quitter"]);
    await vi.advanceTimersByTimeAsync(1);
    expect(gone).toEqual(["first", "quitter", "next"]); // a spacing after "first"
    // a line whose last caller gives up: its pending look goes with it
    q.add("b");
    const b = (await q.get()) as string;
    void q.whenIdle(60_000).then(() => gone.push("y1"));
    void q.whenIdle(5).then(() => gone.push("y2"));
    q.done(b);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone.slice(3)).toEqual(["y1"]);
    expect(vi.getTimerCount()).toBe(2); // y2's bound and the look timed for it
    await vi.advanceTimersByTimeAsync(5);
    expect(gone.slice(3)).toEqual(["y1", "y2"]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("without spacing, every caller in line goes at the first idle moment; with it, shutdown leaves no timer", async () => {
    const { q, key: a } = await busyQueue(0);
    const gone: string[] = [];
    for (const w of ["w1", "w2", "w3"]) void q.whenIdle(60_000).then(() => gone.push(w));
    q.done(a);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone).toEqual(["w1", "w2", "w3"]);
    expect(vi.getTimerCount()).toBe(0);
    const { q: spaced, key: b } = await busyQueue(50);
    for (const w of ["x1", "x2"]) void spaced.whenIdle(60_000).then(() => gone.push(w));
    spaced.done(b);
    await vi.advanceTimersByTimeAsync(0);
    expect(gone.slice(3)).toEqual(["x1"]);
    expect(vi.getTimerCount()).toBe(2); // x2's bound and the look timed for it
    spaced.shutDown();
    await vi.advanceTimersByTimeAsync(0);
    expect(gone.slice(3)).toEqual(["x1", "x2"]);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("TokenBucket", () => {
  it("time that seems to run backwards neither refills it nor stalls it", () => {
    let t = 10_000;
    const b = new TokenBucket(10, 2, () => t);
    expect([b.take(), b.take()]).toEqual([0, 0]);
    t -= 3_600_000; // a clock stepped back an hour
    expect(b.take()).toBe(100); // the next slot at its rate, not an hour and 100 ms
    t += 100;
    expect(b.take()).toBe(100);
  });

  it("reserves tokens at its rate after the burst; a token given back helps only when no later one is reserved, never beyond the burst", () => {
    let t = 0;
    const b = new TokenBucket(10, 2, () => t);
    expect([b.take(), b.take(), b.take(), b.take()]).toEqual([0, 0, 100, 200]);
    // Reservations are out (100 and 200 ms): a token given back now would let the next taker share a slot.
    b.refund();
    expect(b.take()).toBe(300);
    // At 300 ms every reservation has come due; the one of 300 ms goes unused and is given back.
    t = 300;
    b.refund();
    expect(b.take()).toBe(0);
    t = 10_000;
    b.refund();
    b.refund();
    // Full again, and no more than the burst.
    expect([b.take(), b.take(), b.take()]).toEqual([0, 0, 100]);
  });
});
