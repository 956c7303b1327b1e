import { describe, expect, it } from "vitest";
import { apiserverCounts, apiserverPerPoll, apiserverWindow, fmtApiserver, heldWindow, pacedDo, promDelta } from "../../bench/stats.js";

const metrics = (creates: number, closed: number): string => [
  "# HELP apiserver_request_total Counter of apiserver requests",
  `apiserver_request_total{code="201",component="apiserver",dry_run="",group="vmforge.dev",resource="runs",scope="resource",subresource="",verb="POST",version="v1alpha1"} ${creates}`,
  `apiserver_request_total{code="200",component="apiserver",dry_run="",group="vmforge.dev",resource="runs",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 7`,
  `apiserver_request_total{code="409",component="apiserver",dry_run="",group="vmforge.dev",resource="runs",scope="resource",subresource="",verb="PATCH",version="v1alpha1"} 2`,
  `apiserver_request_total{code="200",component="apiserver",dry_run="",group="vmforge.dev",resource="runs",scope="namespace",subresource="",verb="WATCH",version="v1alpha1"} 40`,
  `apiserver_terminated_watchers_total{group="vmforge.dev",resource="runs",version="v1alpha1"} ${closed}`,
].join("\n");

describe("bench: the kube-apiserver's counts", () => {
  it("keeps requests (WATCH excluded, other than 2xx apart) and the watches it closed as unresponsive apart", () => {
    const c = apiserverCounts(metrics(10, 1));
    expect(Object.fromEntries(c.requests)).toEqual({ "POST runs": 10, "PATCH runs/status": 7, "PATCH runs (409)": 2 });
    expect(Object.fromEntries(c.closedWatches)).toEqual({ runs: 1 });
  });

  it("a window holds what changed in it, printed as requests and then the closed watches, if any", () => {
    const w = apiserverWindow(apiserverCounts(metrics(30, 4)), apiserverCounts(metrics(10, 1)));
    expect(w).toEqual({ requests: { "POST runs": 20 }, closedWatches: { runs: 3 } });
    expect(fmtApiserver(w)).toBe('{"POST runs":20}; watches it closed as unresponsive, by resource: {"runs":3}');
    expect(fmtApiserver(apiserverPerPoll({ requests: { "POST runs": 20 }, closedWatches: {} }, 4))).toBe('{"POST runs":5}');
    expect(fmtApiserver(apiserverPerPoll(w, 2), "per poll")).toBe('{"POST runs":10}; watches it closed as unresponsive per poll, by resource: {"runs":1.5}');
  });
});

describe("bench: metric differences between two scrapes", () => {
  const before = [
    'vmforge_workqueue_backlog_total{queue="run-ack"} 5',
    'vmforge_workqueue_backlog_total{queue="run"} 2',
    'vmforge_reconcile_held_seconds_bucket{le="0.05",controller="run"} 3',
    'vmforge_reconcile_held_seconds_bucket{le="+Inf",controller="run"} 4',
    'vmforge_reconcile_held_seconds_sum{controller="run"} 1',
    'vmforge_reconcile_held_seconds_count{controller="run"} 4',
  ].join("\n");
  const after = [
    'vmforge_workqueue_backlog_total{queue="run-ack"} 9',
    'vmforge_workqueue_backlog_total{queue="run"} 2',
    'vmforge_reconcile_held_seconds_bucket{le="0.05",controller="run"} 6',
    'vmforge_reconcile_held_seconds_bucket{le="+Inf",controller="run"} 8',
    'vmforge_reconcile_held_seconds_sum{controller="run"} 1.6',
    'vmforge_reconcile_held_seconds_count{controller="run"} 8',
  ].join("\n");

  it("promDelta takes each queue on its own (run is not run-ack)", () => {
    expect(promDelta(before, after, "vmforge_workqueue_backlog_total", { queue: "run-ack" }).get("")).toBe(4);
    expect(promDelta(before, after, "vmforge_workqueue_backlog_total", { queue: "run" }).get("")).toBe(0);
  });

  it("heldWindow: how many were held in between, their mean and how many past each bound", () => {
    expect(heldWindow(before, after, "run")).toEqual({ held: 4, meanS: 0.15, over: { ">0.05 s": 1 } }); // 3 of the 4 within 0.05 s
  });
});

describe("bench: pacedDo, a pool whose work arrives over time", () => {
  it("starts no item before it arrives, takes them in the order they arrive, and an item that arrives while every worker is busy waits for one", async () => {
    const startAt = Date.now();
    // given out of order: index 0 arrives last
    const arrivals = [120, 0, 40, 40];
    const started: { i: number; at: number; arrivedAt: number }[] = [];
    await pacedDo(arrivals, 1, async (i, arrivedAt) => {
      started.push({ i, at: Date.now(), arrivedAt });
      await new Promise((r) => setTimeout(r, 60));
    }, startAt);
    expect(started.map((s) => s.i)).toEqual([1, 2, 3, 0]);
    for (const s of started) {
      expect(s.arrivedAt).toBe(startAt + (arrivals[s.i] as number));
      expect(s.at).toBeGreaterThanOrEqual(s.arrivedAt);
    }
    // one worker: item 2 arrives at 40 ms, but its worker is busy with item 1 until about 60 ms
    expect(started[1]!.at - startAt).toBeGreaterThanOrEqual(59);
    // and item 3 waits for item 2, so it starts about 80 ms after it arrived
    expect(started[2]!.at - started[2]!.arrivedAt).toBeGreaterThanOrEqual(75);
  });

  it("with enough workers, an item does not wait for another to finish", async () => {
    const startAt = Date.now();
    const arrivals = [0, 30, 60];
    const events: string[] = [];
    await pacedDo(arrivals, 3, async (i, arrivedAt) => {
      expect(Date.now()).toBeGreaterThanOrEqual(arrivedAt);
      events.push(`start ${i}`);
      await new Promise((r) => setTimeout(r, 100));
      events.push(`end ${i}`);
    }, startAt);
    expect(events).toEqual(["start 0", "start 1", "start 2", "end 0", "end 1", "end 2"]);
  });
});
