import { describe, expect, it } from "vitest";
import { apiserverCounts, apiserverPerPoll, apiserverWindow, fmtApiserver, heldWindow, promDelta } from "../../bench/stats.js";

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
