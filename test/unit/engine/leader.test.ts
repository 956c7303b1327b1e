import { Writable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { KubeApiError } from "../../../src/engine/kube.js";
import type { KubeClient, ResourceType } from "../../../src/engine/kube.js";
import { LeaderElector, LeaseResource } from "../../../src/engine/leader.js";
import type { Lease } from "../../../src/engine/leader.js";
import { createLogger } from "../../../src/engine/logger.js";
import { EngineMetrics } from "../../../src/engine/metrics.js";
import { formatMicroTime } from "../../../src/engine/events.js";

const logger = createLogger({ level: "silent", destination: new Writable({ write: (_c, _e, cb) => cb() }) });

/** One Lease with API-server-like optimistic concurrency (resourceVersion checked on replace). */
class LeaseServer {
  lease: Lease | undefined;
  rv = 0;
  writes = 0;

  /** When set, create() waits for it (a slow API server). */
  createGate: Promise<void> | undefined;

  client(opts: { failing?: () => boolean } = {}): KubeClient {
    const guard = (): void => {
      if (opts.failing?.()) throw new Error("connect ECONNREFUSED");
    };
    return {
      get: async (rt: ResourceType, ns: string, name: string) => {
        guard();
        expect(rt).toBe(LeaseResource);
        expect([ns, name]).toEqual(["ns", "lock"]);
        return this.lease ? structuredClone(this.lease) : undefined;
      },
      create: async (_rt: ResourceType, obj: Lease) => {
        guard();
        if (this.createGate) await this.createGate;
        if (this.lease) throw new KubeApiError(409, "AlreadyExists", "exists", undefined);
        this.lease = structuredClone(obj);
        this.lease.metadata.resourceVersion = String(++this.rv);
        this.writes++;
        return structuredClone(this.lease);
      },
      replace: async (_rt: ResourceType, obj: Lease) => {
        guard();
        if (!this.lease) throw new KubeApiError(404, "NotFound", "gone", undefined);
        if (obj.metadata.resourceVersion !== this.lease.metadata.resourceVersion) {
          throw new KubeApiError(409, "Conflict", "the object has been modified", undefined);
        }
        this.lease = structuredClone(obj);
        this.lease.metadata.resourceVersion = String(++this.rv);
        this.writes++;
        return structuredClone(this.lease);
      },
    } as unknown as KubeClient;
  }

  /** A write by somebody else (another process). */
  set(spec: NonNullable<Lease["spec"]>): void {
    this.lease = { apiVersion: "coordination.k8s.io/v1", kind: "Lease", metadata: { name: "lock", namespace: "ns", resourceVersion: String(++this.rv) }, spec };
  }
}

interface Probe {
  started: number;
  stopped: number;
  signal: AbortSignal | undefined;
  callbacks: { onStartedLeading: (s: AbortSignal) => void; onStoppedLeading: () => void };
}
function probe(): Probe {
  const p: Probe = {
    started: 0,
    stopped: 0,
    signal: undefined,
    callbacks: {
      onStartedLeading: (s) => {
        p.started++;
        p.signal = s;
      },
      onStoppedLeading: () => {
        p.stopped++;
      },
    },
  };
  return p;
}

const timing = { leaseDurationMs: 2_000, renewDeadlineMs: 1_500, retryPeriodMs: 300 };

function elector(
  server: LeaseServer,
  identity: string,
  extra: { failing?: () => boolean; metrics?: EngineMetrics; now?: () => number; monotonicNow?: () => number } = {},
): LeaderElector {
  return new LeaderElector({
    client: server.client(extra.failing ? { failing: extra.failing } : {}),
    namespace: "ns",
    name: "lock",
    identity,
    ...timing,
    logger,
    ...(extra.metrics ? { metrics: extra.metrics } : {}),
    now: extra.now ?? (() => Date.now()),
    // Fake timers keep whole milliseconds; the real monotonic clock has fractions (a tenth of a
    // percent fast here, so that the durations measured with it have them too).
    monotonicNow: extra.monotonicNow ?? (() => performance.now() * 1.001),
  });
}

/** Starts `a` campaigning and waits until it leads. */
async function lead(a: LeaderElector): Promise<{ p: Probe; run: Promise<void> }> {
  const p = probe();
  const run = a.run(p.callbacks);
  await vi.advanceTimersByTimeAsync(10);
  expect(a.isLeader()).toBe(true);
  return { p, run };
}

/** Leadership ended as a loss ends it: no longer leader, told, its signal aborted, run() resolved. */
async function expectSteppedDown(a: LeaderElector, { p, run }: { p: Probe; run: Promise<void> }): Promise<void> {
  expect(a.isLeader()).toBe(false);
  expect(p.stopped).toBe(1);
  expect(p.signal?.aborted).toBe(true);
  await run;
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date", "performance"], now: new Date("2026-01-01T00:00:00Z") });
});
afterEach(() => {
  vi.useRealTimers();
});

describe("LeaderElector", () => {
  it("validates its timing options", () => {
    const s = new LeaseServer();
    const base = { client: s.client(), namespace: "ns", name: "lock", identity: "a", logger };
    expect(() => new LeaderElector({ ...base, leaseDurationMs: 1000, renewDeadlineMs: 1000 })).toThrow(/leaseDuration/);
    expect(() => new LeaderElector({ ...base, leaseDurationMs: 3000, renewDeadlineMs: 1000, retryPeriodMs: 900 })).toThrow(/retryPeriod/);
    expect(() => new LeaderElector({ ...base, identity: "" })).toThrow(/identity/);
  });

  it("creates an absent Lease, leads, renews, and reports metrics", async () => {
    const s = new LeaseServer();
    const metrics = new EngineMetrics({ defaultMetrics: false });
    const a = elector(s, "a", { metrics });
    const p = probe();
    void a.run(p.callbacks);
    await vi.advanceTimersByTimeAsync(10);
    expect(a.isLeader()).toBe(true);
    expect(p.started).toBe(1);
    expect(s.lease?.spec).toMatchObject({ holderIdentity: "a", leaseDurationSeconds: 2, leaseTransitions: 0 });
    expect(s.lease?.spec?.renewTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    expect(await metrics.text()).toMatch(/vmforge_leader_status 1/);
    const firstRenew = s.lease?.spec?.renewTime;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(s.lease?.spec?.renewTime).not.toBe(firstRenew);
    expect(s.lease?.spec?.holderIdentity).toBe("a");
    expect(a.isLeader()).toBe(true);
    await a.stop();
    expect(await metrics.text()).toMatch(/vmforge_leader_status 0/);
  });

  it("of two candidates exactly one leads, and keeps leading", async () => {
    const s = new LeaseServer();
    const a = elector(s, "a");
    const b = elector(s, "b");
    const pa = probe();
    const pb = probe();
    void a.run(pa.callbacks);
    void b.run(pb.callbacks);
    for (let i = 0; i < 20; i++) {
      await vi.advanceTimersByTimeAsync(250);
      expect(Number(a.isLeader()) + Number(b.isLeader())).toBe(1);
    }
    expect(pa.started + pb.started).toBe(1);
    expect(pa.stopped + pb.stopped).toBe(0);
    await Promise.all([a.stop(), b.stop()]);
  });

  it("stop() releases the Lease and the other candidate takes over at its next retry", async () => {
    const s = new LeaseServer();
    const a = elector(s, "a");
    const pa = probe();
    const runA = a.run(pa.callbacks);
    await vi.advanceTimersByTimeAsync(10);
    expect(a.isLeader()).toBe(true);

    const b = elector(s, "b");
    const pb = probe();
    void b.run(pb.callbacks);
    await vi.advanceTimersByTimeAsync(400);
    expect(b.isLeader()).toBe(false);

    await a.stop();
    await runA;
    expect(pa.stopped).toBe(1);
    expect(pa.signal?.aborted).toBe(true);
    expect(a.isLeader()).toBe(false);
    expect(s.lease?.spec?.holderIdentity).toBeUndefined();
    expect(s.lease?.spec?.leaseDurationSeconds).toBe(1);

    await vi.advanceTimersByTimeAsync(400); // one retry period (+ jitter), far less than a lease duration
    expect(b.isLeader()).toBe(true);
    expect(pb.started).toBe(1);
    expect(s.lease?.spec).toMatchObject({ holderIdentity: "b", leaseTransitions: 1 });
    await b.stop();
  });

  it("a leader that cannot renew steps down before its lease expires; then another takes over", async () => {
    const s = new LeaseServer();
    let broken = false;
    const a = elector(s, "a", { failing: () => broken });
    const pa = probe();
    const runA = a.run(pa.callbacks);
    await vi.advanceTimersByTimeAsync(10);
    const b = elector(s, "b");
    const pb = probe();
    void b.run(pb.callbacks);
    await vi.advanceTimersByTimeAsync(500);
    expect(a.isLeader()).toBe(true);

    broken = true;
    const brokenAt = Date.now();
    const lastRenew = Date.parse(s.lease!.spec!.renewTime!);
    let steppedDownAt: number | undefined;
    let takenAt: number | undefined;
    for (let i = 0; i < 100 && takenAt === undefined; i++) {
      await vi.advanceTimersByTimeAsync(50);
      if (steppedDownAt === undefined && pa.stopped === 1) steppedDownAt = Date.now();
      if (b.isLeader()) takenAt = Date.now();
    }
    await runA; // run() resolves once leadership is lost
    expect(pa.signal?.aborted).toBe(true);
    expect(steppedDownAt).toBeDefined();
    expect(takenAt).toBeDefined();
    // safety: the old leader stopped before the new one started, and nobody led before expiry
    expect(steppedDownAt!).toBeLessThanOrEqual(takenAt!);
    expect(steppedDownAt! - brokenAt).toBeLessThanOrEqual(timing.renewDeadlineMs + timing.retryPeriodMs);
    expect(takenAt! - lastRenew).toBeGreaterThanOrEqual(timing.leaseDurationMs);
    expect(s.lease?.spec).toMatchObject({ holderIdentity: "b", leaseTransitions: 1 });
    await b.stop();
  });

  it("a leader that cannot renew steps down within its renew deadline even when the wall clock steps back meanwhile", async () => {
    const s = new LeaseServer();
    let broken = false;
    const a = elector(s, "a", { failing: () => broken });
    const leading = await lead(a);
    broken = true;
    // An NTP step back of an hour: by the wall clock its last renewal lies an hour in the future.
    vi.setSystemTime(Date.now() - 3_600_000);
    await vi.advanceTimersByTimeAsync(timing.renewDeadlineMs + 2 * timing.retryPeriodMs);
    await expectSteppedDown(a, leading);
  });

  it("a leader whose machine was suspended (its monotonic clock stood still, the wall clock went on) is no longer leader on waking and, unable to renew, steps down at its next attempt", async () => {
    const s = new LeaseServer();
    let broken = false;
    const asleep: { frozenAt?: number } = {};
    const a = elector(s, "a", { failing: () => broken, monotonicNow: () => asleep.frozenAt ?? performance.now() * 1.001 });
    const leading = await lead(a);
    // A minute asleep: the monotonic clock did not move, the wall clock (and the Lease's expiry for the others) did.
    asleep.frozenAt = performance.now() * 1.001;
    broken = true;
    vi.setSystemTime(Date.now() + 60_000);
    expect(a.isLeader()).toBe(false);
    await vi.advanceTimersByTimeAsync(2 * timing.retryPeriodMs);
    await expectSteppedDown(a, leading);
  });

  it("an attempt that throws where nothing should (a broken clock) is a failed attempt: the leader still steps down by its renew deadline", async () => {
    const s = new LeaseServer();
    let broken = false;
    // An invalid time: formatting the renewTime throws.
    const a = elector(s, "a", { now: () => (broken ? Number.NaN : Date.now()) });
    const leading = await lead(a);
    broken = true;
    await vi.advanceTimersByTimeAsync(timing.renewDeadlineMs + 2 * timing.retryPeriodMs);
    await expectSteppedDown(a, leading);
  });

  it("takes over a Lease held by a dead process once it has seen it unchanged for a lease duration, counting the transition", async () => {
    const s = new LeaseServer();
    const old = formatMicroTime(new Date(Date.now() - 60_000));
    s.set({ holderIdentity: "dead", leaseDurationSeconds: 15, acquireTime: old, renewTime: old, leaseTransitions: 4 });
    const a = elector(s, "a");
    void a.run(probe().callbacks);
    // Its own clock says expired, but it has not watched the Lease go stale yet (client-go rule).
    await vi.advanceTimersByTimeAsync(10);
    expect(a.isLeader()).toBe(false);
    await vi.advanceTimersByTimeAsync(16_000);
    expect(a.isLeader()).toBe(true);
    expect(s.lease?.spec).toMatchObject({ holderIdentity: "a", leaseTransitions: 5 });
    await a.stop();
  });

  it("never displaces a holder that keeps renewing, even with a renewTime from a lagging clock", async () => {
    const s = new LeaseServer();
    const stale = () => formatMicroTime(new Date(Date.now() - 60_000)); // holder clock one minute behind
    s.set({ holderIdentity: "other", leaseDurationSeconds: 2, renewTime: stale(), leaseTransitions: 0 });
    const a = elector(s, "a");
    const pa = probe();
    void a.run(pa.callbacks);
    // the holder keeps renewing (with its lagging clock), so "a" keeps seeing the record change
    s.set({ holderIdentity: "other", leaseDurationSeconds: 2, renewTime: stale(), leaseTransitions: 0 });
    await vi.advanceTimersByTimeAsync(1);
    for (let i = 0; i < 30; i++) {
      s.set({ holderIdentity: "other", leaseDurationSeconds: 2, renewTime: stale(), leaseTransitions: 0 });
      await vi.advanceTimersByTimeAsync(200);
    }
    expect(pa.started).toBe(0);
    expect(s.lease?.spec?.holderIdentity).toBe("other");
    await a.stop();
  });

  it("steps down at once when it sees another holder in the Lease", async () => {
    const s = new LeaseServer();
    const a = elector(s, "a");
    const pa = probe();
    const runA = a.run(pa.callbacks);
    await vi.advanceTimersByTimeAsync(10);
    expect(a.isLeader()).toBe(true);
    s.set({ holderIdentity: "intruder", leaseDurationSeconds: 2, renewTime: formatMicroTime(new Date()), leaseTransitions: 1 });
    await vi.advanceTimersByTimeAsync(400);
    await runA;
    expect(pa.stopped).toBe(1);
    expect(a.isLeader()).toBe(false);
    expect(s.lease?.spec?.holderIdentity).toBe("intruder");
  });

  it("stop() while campaigning returns without calling onStoppedLeading", async () => {
    const s = new LeaseServer();
    s.set({ holderIdentity: "other", leaseDurationSeconds: 2, renewTime: formatMicroTime(new Date()), leaseTransitions: 0 });
    const a = elector(s, "a");
    const pa = probe();
    const run = a.run(pa.callbacks);
    await vi.advanceTimersByTimeAsync(350);
    await a.stop();
    await run;
    expect(pa.started).toBe(0);
    expect(pa.stopped).toBe(0);
    expect(s.lease?.spec?.holderIdentity).toBe("other");
  });

  it("stop() while a winning attempt is in flight hands the Lease back without leading", async () => {
    const s = new LeaseServer();
    let open!: () => void;
    s.createGate = new Promise<void>((r) => (open = r));
    const a = elector(s, "a");
    const pa = probe();
    const run = a.run(pa.callbacks);
    await vi.advanceTimersByTimeAsync(10);
    const stopped = a.stop();
    open();
    await stopped;
    await run;
    expect(pa.started).toBe(0);
    expect(a.isLeader()).toBe(false);
    expect(s.lease?.spec?.holderIdentity).toBeUndefined();
    expect(s.lease?.spec?.leaseDurationSeconds).toBe(1);
  });
});
