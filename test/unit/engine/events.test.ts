import { Writable } from "node:stream";
import { describe, expect, it, vi } from "vitest";
import { EventRecorder, EventResource, formatMicroTime, truncateUtf8, MAX_NOTE_BYTES } from "../../../src/engine/events.js";
import type { EventObject } from "../../../src/engine/events.js";
import { KubeApiError } from "../../../src/engine/kube.js";
import type { KubeClient, ResourceType } from "../../../src/engine/kube.js";
import { createLogger, createRedactor } from "../../../src/engine/logger.js";
import { EngineMetrics } from "../../../src/engine/metrics.js";

function logSink(): { logger: ReturnType<typeof createLogger>; text: () => string } {
  let buf = "";
  const stream = new Writable({
    write(c: Buffer, _e, cb) {
      buf += c.toString();
      cb();
    },
  });
  return { logger: createLogger({ level: "debug", destination: stream }), text: () => buf };
}

class FakeEvents {
  created: EventObject[] = [];
  patches: { ns: string; name: string; body: unknown; type: string }[] = [];
  failCreate: Error | undefined;
  missing = new Set<string>();
  /** While set, creates wait for it (a slow kube-apiserver). */
  createGate: Promise<void> | undefined;
  /** While set, patches wait for it. */
  patchGate: Promise<void> | undefined;
  client(): KubeClient {
    return {
      create: async (rt: ResourceType, obj: EventObject) => {
        expect(rt).toBe(EventResource);
        if (this.failCreate) throw this.failCreate;
        if (this.createGate) await this.createGate;
        await new Promise((r) => setTimeout(r, 1));
        this.created.push(structuredClone(obj));
        return obj;
      },
      patch: async (_rt: ResourceType, ns: string, name: string, body: unknown, type: string) => {
        if (this.patchGate) await this.patchGate;
        if (this.missing.has(name)) throw new KubeApiError(404, "NotFound", "gone", undefined);
        this.patches.push({ ns, name, body, type });
        return { metadata: { name, namespace: ns } };
      },
    } as unknown as KubeClient;
  }
}

const run = {
  apiVersion: "vmforge.dev/v1alpha1",
  kind: "Run",
  metadata: { name: "r1", namespace: "team-a", uid: "uid-1", resourceVersion: "7" },
};

describe("formatMicroTime / truncateUtf8", () => {
  it("formats with six fractional digits", () => {
    expect(formatMicroTime(new Date("2026-03-04T05:06:07.089Z"))).toBe("2026-03-04T05:06:07.089000Z");
  });
  it("truncates on a character boundary within the byte budget", () => {
    const s = "é".repeat(2000);
    const t = truncateUtf8(s, MAX_NOTE_BYTES);
    expect(Buffer.byteLength(t)).toBeLessThanOrEqual(MAX_NOTE_BYTES);
    expect(t.endsWith("...")).toBe(true);
    expect(t).not.toContain("\uFFFD");
    expect(truncateUtf8("short", 10)).toBe("short");
  });
});

describe("EventRecorder", () => {
  it("creates an events.k8s.io/v1 Event with all required fields", async () => {
    const f = new FakeEvents();
    const clock = new Date("2026-01-01T00:00:00.500Z");
    const rec = new EventRecorder(f.client(), { controller: "vmforge.dev/operator", instance: "pod-1", logger: logSink().logger, now: () => clock });
    await rec.record(run, "Normal", "Launched", "Launch", "instance i-123 started");
    expect(f.created).toHaveLength(1);
    const ev = f.created[0]!;
    expect(ev).toMatchObject({
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { namespace: "team-a" },
      eventTime: "2026-01-01T00:00:00.500000Z",
      reportingController: "vmforge.dev/operator",
      reportingInstance: "pod-1",
      action: "Launch",
      reason: "Launched",
      note: "instance i-123 started",
      type: "Normal",
      regarding: { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", name: "r1", namespace: "team-a", uid: "uid-1", resourceVersion: "7" },
    });
    expect(ev.metadata.name).toMatch(/^r1\.[0-9a-f]+$/);
    expect(ev.series).toBeUndefined();
  });

  it("aggregates repeats within the window into a series on the existing Event", async () => {
    const f = new FakeEvents();
    let now = new Date("2026-01-01T00:00:00Z");
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, now: () => now });
    await rec.record(run, "Warning", "LaunchFailed", "Launch", "capacity");
    now = new Date("2026-01-01T00:01:00Z");
    await rec.record(run, "Warning", "LaunchFailed", "Launch", "capacity");
    now = new Date("2026-01-01T00:05:00Z");
    await rec.record(run, "Warning", "LaunchFailed", "Launch", "capacity");
    expect(f.created).toHaveLength(1);
    expect(f.patches).toHaveLength(2);
    const name = f.created[0]!.metadata.name;
    expect(f.patches[0]).toEqual({ ns: "team-a", name, type: "merge", body: { series: { count: 2, lastObservedTime: "2026-01-01T00:01:00.000000Z" } } });
    expect(f.patches[1]?.body).toEqual({ series: { count: 3, lastObservedTime: "2026-01-01T00:05:00.000000Z" } });
  });

  it("creates a new Event for a different note/reason/object or after the window", async () => {
    const f = new FakeEvents();
    let now = new Date("2026-01-01T00:00:00Z");
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, now: () => now });
    await rec.record(run, "Normal", "A", "X", "one");
    await rec.record(run, "Normal", "A", "X", "two");
    await rec.record(run, "Normal", "B", "X", "one");
    await rec.record({ ...run, metadata: { ...run.metadata, uid: "uid-2", name: "r2" } }, "Normal", "A", "X", "one");
    now = new Date("2026-01-01T00:10:01Z");
    await rec.record(run, "Normal", "A", "X", "one");
    expect(f.created).toHaveLength(5);
    expect(f.patches).toHaveLength(0);
  });

  it("serializes concurrent repeats: one create, then series patches", async () => {
    const f = new FakeEvents();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger });
    await Promise.all([1, 2, 3, 4].map(() => rec.record(run, "Normal", "A", "X", "same")));
    expect(f.created).toHaveLength(1);
    expect(f.patches.map((p) => (p.body as { series: { count: number } }).series.count)).toEqual([2, 3, 4]);
  });

  it("paces Events (qps with a burst), keeping each one's own time, so a burst of them waits instead of crowding other writes", async () => {
    const f = new FakeEvents();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, qps: 10, burst: 5 });
    const objs = Array.from({ length: 15 }, (_, i) => ({ ...run, metadata: { ...run.metadata, name: `r${i}`, uid: `u${i}` } }));
    const t0 = Date.now();
    const all = Promise.all(objs.map((o) => rec.record(o, "Normal", "Launched", "Launch", `launched ${o.metadata.name}`)));
    const recorded = Date.now();
    // The burst goes at once (however slow the machine); the rest wait their turn, one per 100 ms.
    while (f.created.length < 5) await new Promise((r) => setTimeout(r, 5));
    expect(f.created.length).toBeLessThan(15);
    expect(rec.waiting).toBeGreaterThan(0);
    await all;
    expect(f.created).toHaveLength(15);
    expect(rec.waiting).toBe(0);
    // 10 beyond the burst at 10/s: about a second in all (a lower bound only; a slow machine takes longer).
    const sent = Date.now();
    expect(sent - t0).toBeGreaterThanOrEqual(900);
    // Each Event carries when it was recorded, not when it was sent.
    const times = f.created.map((e) => Date.parse(e.eventTime ?? ""));
    for (const t of times) expect(t).toBeLessThanOrEqual(recorded);
  });

  it("holds Events back while holdWhile says so, and sends them, each with its own time, once it no longer does", async () => {
    const f = new FakeEvents();
    let busy = true;
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => busy, maxHoldMs: 60_000 });
    const objs = Array.from({ length: 3 }, (_, i) => ({ ...run, metadata: { ...run.metadata, name: `h${i}`, uid: `h${i}` } }));
    let done = 0;
    const all = objs.map((o) => rec.record(o, "Normal", "Launched", "Launch", `launched ${o.metadata.name}`).then(() => done++));
    const recorded = Date.now();
    // Several of the hold's checks pass: nothing goes while it holds.
    await new Promise((r) => setTimeout(r, 800));
    expect(f.created).toHaveLength(0);
    expect(done).toBe(0);
    expect(rec.heldBack).toBe(3);
    expect(rec.waiting).toBe(3);
    busy = false;
    await Promise.all(all);
    expect(f.created.map((e) => e.regarding.name)).toEqual(["h0", "h1", "h2"]);
    expect(rec.heldBack).toBe(0);
    for (const e of f.created) expect(Date.parse(e.eventTime)).toBeLessThanOrEqual(recorded);
    // Not held: goes at once.
    await rec.record({ ...run, metadata: { ...run.metadata, name: "h3", uid: "h3" } }, "Normal", "Launched", "Launch", "launched h3");
    expect(f.created).toHaveLength(4);
  });

  it("a repeat held back joins its series with the time it happened, not the time it was sent", async () => {
    const f = new FakeEvents();
    let busy = false;
    let clock = Date.parse("2026-12-04T10:00:00.000Z");
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => busy, now: () => new Date(clock) });
    await rec.record(run, "Warning", "AllocationFailed", "Launch", "no capacity");
    busy = true;
    clock += 5_000;
    const repeat = rec.record(run, "Warning", "AllocationFailed", "Launch", "no capacity");
    await new Promise((r) => setTimeout(r, 300));
    expect(f.patches).toHaveLength(0);
    clock += 60_000;
    busy = false;
    await repeat;
    expect(f.patches).toHaveLength(1);
    expect(f.patches[0]?.body).toEqual({ series: { count: 2, lastObservedTime: "2026-12-04T10:00:05.000000Z" } });
  });

  it("a repeat recorded while its first is still held joins that first Event's series: one create, one patch", async () => {
    const f = new FakeEvents();
    let busy = true;
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => busy });
    const both = [rec.record(run, "Warning", "AllocationFailed", "Launch", "no capacity"), rec.record(run, "Warning", "AllocationFailed", "Launch", "no capacity")];
    await new Promise((r) => setTimeout(r, 300));
    expect(f.created).toHaveLength(0);
    busy = false;
    await Promise.all(both);
    expect(f.created).toHaveLength(1);
    expect(f.patches.map((p) => (p.body as { series: { count: number } }).series.count)).toEqual([2]);
  });

  it("drain: a stopping process sends what is held at once; what is not sent by the deadline is counted dropped and never sent, nor is anything recorded afterwards", async () => {
    const f = new FakeEvents();
    const metrics = new EngineMetrics();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, metrics, holdWhile: () => true, qps: 5, burst: 2 });
    const objs = Array.from({ length: 6 }, (_, i) => ({ ...run, metadata: { ...run.metadata, name: `s${i}`, uid: `s${i}` } }));
    const all = Promise.all(objs.map((o) => rec.record(o, "Normal", "Succeeded", "Complete", "done")));
    await new Promise((r) => setTimeout(r, 300));
    expect(f.created).toHaveLength(0);
    // Held for up to a minute, but the drain lets them go: the burst of 2 at once, then 5 a second.
    const dropped = await rec.drain(500);
    expect(f.created.length).toBeGreaterThanOrEqual(2);
    expect(dropped).toBeGreaterThan(0);
    // A request out at the deadline is answered afterwards and counted created, not also dropped.
    await all;
    const sent = f.created.length;
    expect(dropped + sent).toBe(6);
    await new Promise((r) => setTimeout(r, 300));
    await rec.record({ ...run, metadata: { ...run.metadata, uid: "late" } }, "Normal", "Succeeded", "Complete", "late");
    expect(f.created).toHaveLength(sent);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(new RegExp(`vmforge_events_total\\{result="dropped"\\} ${dropped + 1}\n`));
    expect(text).toMatch(new RegExp(`vmforge_events_total\\{result="created"\\} ${sent}\n`));
  });

  it("drain: returns as soon as the last waiting Event is sent, not at its deadline (however far off)", async () => {
    const f = new FakeEvents();
    let release!: () => void;
    f.createGate = new Promise<void>((r) => (release = r));
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => true });
    void rec.record(run, "Normal", "Launched", "Launch", "launched");
    setTimeout(release, 50);
    const outcome = await Promise.race([
      // A deadline beyond setTimeout's range (which would fire at once) is still a deadline.
      rec.drain(2 ** 32).then((dropped) => `drained, ${dropped} dropped`),
      new Promise((r) => setTimeout(r, 3_000).unref()).then(() => "still draining after 3 s"),
    ]);
    expect(outcome).toBe("drained, 0 dropped");
    expect(f.created).toHaveLength(1);
  });

  it("drain: an Event whose request is out at the deadline is counted once, by its outcome, not also as dropped", async () => {
    const f = new FakeEvents();
    const metrics = new EngineMetrics();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, metrics, qps: 1, burst: 1 });
    let open!: () => void;
    f.createGate = new Promise<void>((r) => (open = r));
    const slow = rec.record(run, "Normal", "Succeeded", "Complete", "done");
    const paced = rec.record({ ...run, metadata: { ...run.metadata, uid: "paced" } }, "Normal", "Succeeded", "Complete", "paced");
    await new Promise((r) => setTimeout(r, 50));
    // The first is being sent (its create waits), the second waits for its token.
    expect(await rec.drain(100)).toBe(1);
    // Drained once: a second drain counts nothing again (both are still waiting).
    expect(await rec.drain(10)).toBe(0);
    open();
    await Promise.all([slow, paced]);
    expect(f.created.map((e) => e.note)).toEqual(["done"]);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/vmforge_events_total\{result="dropped"\} 1\n/);
    expect(text).toMatch(/vmforge_events_total\{result="created"\} 1\n/);
  });

  it("drain: a repeat whose patch is out at the deadline and finds its Event gone is not created afresh afterwards", async () => {
    const f = new FakeEvents();
    const metrics = new EngineMetrics();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, metrics });
    await rec.record(run, "Warning", "AllocationFailed", "Launch", "no capacity");
    const first = f.created[0]?.metadata.name ?? "";
    f.missing.add(first);
    let open!: () => void;
    f.patchGate = new Promise<void>((r) => (open = r));
    const repeat = rec.record(run, "Warning", "AllocationFailed", "Launch", "no capacity");
    await new Promise((r) => setTimeout(r, 50));
    expect(await rec.drain(20)).toBe(0);
    open();
    await repeat;
    expect(f.created).toHaveLength(1);
    expect(await metrics.registry.metrics()).toMatch(/vmforge_events_total\{result="dropped"\} 1\n/);
  });

  it("an Event released and still paced when a new backlog begins is held again, up to its own deadline", async () => {
    const f = new FakeEvents();
    let busy = true;
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => busy, maxHoldMs: 60_000, qps: 1, burst: 1 });
    const objs = Array.from({ length: 3 }, (_, i) => ({ ...run, metadata: { ...run.metadata, name: `p${i}`, uid: `p${i}` } }));
    const all = Promise.all(objs.map((o) => rec.record(o, "Normal", "Launched", "Launch", `launched ${o.metadata.name}`)));
    await new Promise((r) => setTimeout(r, 300));
    busy = false;
    // Released: the first goes at once, the others are paced (one a second).
    await vi.waitFor(() => expect(f.created).toHaveLength(1));
    busy = true;
    await new Promise((r) => setTimeout(r, 2_300));
    expect(f.created).toHaveLength(1);
    expect(rec.heldBack).toBe(2);
    busy = false;
    await all;
    expect(f.created.map((e) => e.regarding.name)).toEqual(["p0", "p1", "p2"]);
  }, 15_000);

  it("an Event held again goes back to its place among the held ones: Events leave in the order they were recorded", async () => {
    const f = new FakeEvents();
    let busy = true;
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => busy, maxHoldMs: 60_000, qps: 1, burst: 1 });
    const obj = (name: string) => ({ ...run, metadata: { ...run.metadata, name, uid: name } });
    const early = [rec.record(obj("q0"), "Normal", "Launched", "Launch", "q0"), rec.record(obj("q1"), "Normal", "Launched", "Launch", "q1")];
    await new Promise((r) => setTimeout(r, 300));
    busy = false;
    // Released: q0 goes at once, q1 waits for its token (a second).
    await vi.waitFor(() => expect(f.created).toHaveLength(1));
    busy = true;
    // Recorded while q1 waits for its token: held behind q1's place.
    const late = rec.record(obj("q2"), "Normal", "Launched", "Launch", "q2");
    // q1's token comes while the backlog is back: it is held again.
    await vi.waitFor(() => expect(rec.heldBack).toBe(2), { timeout: 3_000 });
    busy = false;
    await Promise.all([...early, late]);
    expect(f.created.map((e) => e.regarding.name)).toEqual(["q0", "q1", "q2"]);
  }, 15_000);

  it("an Event held again still goes by its own deadline", async () => {
    const f = new FakeEvents();
    let busy = true;
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => busy, maxHoldMs: 1_500, qps: 1, burst: 1 });
    const t0 = Date.now();
    const first = rec.record({ ...run, metadata: { ...run.metadata, name: "d0", uid: "d0" } }, "Normal", "Launched", "Launch", "d0");
    const second = rec.record({ ...run, metadata: { ...run.metadata, name: "d1", uid: "d1" } }, "Normal", "Launched", "Launch", "d1");
    await new Promise((r) => setTimeout(r, 100));
    busy = false;
    await first;
    // The second waits for its token (1 s); meanwhile a backlog begins and never ends.
    busy = true;
    await second;
    expect(f.created.map((e) => e.regarding.name)).toEqual(["d0", "d1"]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_490);
  });

  it("holds an Event at most maxHoldMs after it was recorded, however long holdWhile says so; a throwing holdWhile holds nothing", async () => {
    const f = new FakeEvents();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => true, maxHoldMs: 600 });
    const t0 = Date.now();
    const first = rec.record(run, "Normal", "Launched", "Launch", "launched");
    await new Promise((r) => setTimeout(r, 200));
    expect(f.created).toHaveLength(0);
    await first;
    expect(f.created).toHaveLength(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(590);
    expect(rec.heldBack).toBe(0);
    const broken = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => { throw new Error("no queue yet"); } });
    await broken.record({ ...run, metadata: { ...run.metadata, uid: "other" } }, "Normal", "Launched", "Launch", "launched other");
    expect(f.created).toHaveLength(2);
  });

  it("a step of the wall clock back does not hold an Event past its maxHoldMs", async () => {
    const f = new FakeEvents();
    const realNow = Date.now.bind(Date);
    let offset = 0;
    const wall = vi.spyOn(Date, "now").mockImplementation(() => realNow() + offset);
    try {
      const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, holdWhile: () => true, maxHoldMs: 300 });
      const sent = rec.record(run, "Normal", "Launched", "Launch", "launched");
      offset = -3_600_000; // the wall clock steps back an hour while the Event is held
      const outcome = await Promise.race([
        sent.then(() => "sent"),
        new Promise((r) => setTimeout(r, 3_000).unref()).then(() => "still held after 10 times its maxHoldMs"),
      ]);
      expect(outcome).toBe("sent");
      expect(f.created).toHaveLength(1);
    } finally {
      wall.mockRestore();
    }
  });

  it("drops and counts Events beyond maxPending rather than holding them without bound", async () => {
    const f = new FakeEvents();
    const metrics = new EngineMetrics();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, metrics, qps: 100, burst: 1, maxPending: 3 });
    const objs = Array.from({ length: 5 }, (_, i) => ({ ...run, metadata: { ...run.metadata, name: `d${i}`, uid: `d${i}` } }));
    await Promise.all(objs.map((o) => rec.record(o, "Normal", "R", "A", "n")));
    expect(f.created.map((e) => e.regarding.name)).toEqual(["d0", "d1", "d2"]);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/vmforge_events_total\{result="dropped"\} 2/);
    expect(text).toMatch(/vmforge_events_total\{result="created"\} 3/);
  });

  it("a namespace being deleted is not a warning; other failures are", async () => {
    const f = new FakeEvents();
    const sink = logSink();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: sink.logger });
    f.failCreate = new KubeApiError(403, "Forbidden", "namespace is being terminated", {
      kind: "Status", reason: "Forbidden", code: 403, details: { causes: [{ reason: "NamespaceTerminating" }] },
    });
    await rec.record(run, "Normal", "Disposed", "Dispose", "gone");
    const lines = sink.text().trim().split("\n").map((l) => JSON.parse(l) as { level: string; msg: string });
    expect(lines.map((l) => [l.level, l.msg])).toEqual([["debug", "event not recorded: the namespace is being deleted"]]);
    f.failCreate = new KubeApiError(403, "Forbidden", "events is forbidden", { kind: "Status", reason: "Forbidden", code: 403 });
    await rec.record(run, "Normal", "Other", "Dispose", "x");
    expect(sink.text()).toContain("\"level\":\"warn\"");
    expect(sink.text()).toContain("could not record event");
  });

  it("starts a new Event when the aggregated one is gone", async () => {
    const f = new FakeEvents();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger });
    await rec.record(run, "Normal", "A", "X", "n");
    f.missing.add(f.created[0]!.metadata.name!);
    await rec.record(run, "Normal", "A", "X", "n");
    expect(f.created).toHaveLength(2);
  });

  it("evicts least recently used entries beyond cacheSize", async () => {
    const f = new FakeEvents();
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, cacheSize: 2 });
    await rec.record(run, "Normal", "A", "X", "1");
    await rec.record(run, "Normal", "A", "X", "2");
    await rec.record(run, "Normal", "A", "X", "3");
    expect(rec.cachedSeries).toBe(2);
    await rec.record(run, "Normal", "A", "X", "1"); // evicted: new Event
    expect(f.created).toHaveLength(4);
  });

  it("runs the note through the redact hook and caps it at 1 KiB", async () => {
    const f = new FakeEvents();
    const secret = "sk-live-0123456789";
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: logSink().logger, redact: createRedactor([secret]) });
    await rec.record(run, "Warning", "AuthFailed", "Validate", `key ${secret} rejected ` + "x".repeat(3000));
    const ev = f.created[0]!;
    expect(JSON.stringify(ev)).not.toContain(secret);
    expect(ev.note?.startsWith("key [REDACTED] rejected")).toBe(true);
    expect(Buffer.byteLength(ev.note ?? "")).toBeLessThanOrEqual(1024);
  });

  it("never throws: API failures and bad input are logged and counted", async () => {
    const f = new FakeEvents();
    f.failCreate = new KubeApiError(403, "Forbidden", "events is forbidden", undefined);
    const sink = logSink();
    const metrics = new EngineMetrics({ defaultMetrics: false });
    const rec = new EventRecorder(f.client(), { controller: "c", instance: "i", logger: sink.logger, metrics });
    await expect(rec.record(run, "Normal", "A", "X", "n")).resolves.toBeUndefined();
    await expect(rec.record({ metadata: {} }, "Normal", "A", "X", "n")).resolves.toBeUndefined();
    expect(sink.text()).toContain("could not record event");
    expect(await metrics.text()).toMatch(/vmforge_events_total\{result="failed"\} 2/);
  });
});
