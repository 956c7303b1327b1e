/**
 * The operator's own metrics, next to the engine's (src/engine/metrics.ts), on the same registry:
 *
 * - read from the watch caches at scrape time (nothing to keep in step):
 *     vmforge_computeenvironment_ready{namespace,name,provider}          1 when Ready=True
 *     vmforge_computeenvironment_stalled{namespace,name,provider,reason} 1 when Stalled=True
 *     vmforge_runs{namespace,phase}                                      Runs per phase
 *     vmforge_run_oldest_seconds{phase}   age of the oldest active Run in Pending (from creation),
 *                                         Launching and Running (from launch; creation before one)
 * - observed once per Run from its status timestamps (Runs whose moment falls after this process
 *   started, so a restart does not count old Runs again):
 *     vmforge_run_launch_seconds    creation -> machine launched
 *     vmforge_run_start_seconds     creation -> Running
 *     vmforge_run_duration_seconds  launch -> final phase, by phase
 * - cloud API calls, reported by the providers through observeCloudCall():
 *     vmforge_cloud_requests_total{provider,service,operation,outcome}  outcome: success | throttled | error
 *     vmforge_cloud_request_duration_seconds{provider,service,operation}
 * - reads sent past the watch caches, reported by the controllers through noteFreshRead():
 *     vmforge_fresh_reads_total{resource,why}   where a stale read could do harm (see fresh-reads.ts)
 */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { ComputeEnvironment, Run } from "./api/types.js";
import { setCloudCallObserver, type CloudCall } from "./cloud/call-metrics.js";
import { setFreshReadObserver } from "./controllers/fresh-reads.js";

export interface DomainSources {
  ces: () => ComputeEnvironment[];
  runs: () => Run[];
  now?: () => number;
}

const ACTIVE = ["Pending", "Launching", "Running"] as const;
const DURATION_BUCKETS = [10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400];

const seconds = (from: string | undefined, to: string | undefined): number | undefined => {
  if (!from || !to) return undefined;
  const d = (Date.parse(to) - Date.parse(from)) / 1000;
  return Number.isFinite(d) && d >= 0 ? d : undefined;
};

/** Registers every metric above on `registry`; returns the names (for docs and tests). */
export function registerOperatorMetrics(registry: Registry, src: DomainSources, prefix = "vmforge_"): string[] {
  const registers = [registry];
  const now = src.now ?? Date.now;
  const startedAt = now();
  const cond = (o: ComputeEnvironment | Run, type: string) => o.status?.conditions?.find((c) => c.type === type);

  const ready = new Gauge({
    name: `${prefix}computeenvironment_ready`,
    help: "1 when the ComputeEnvironment is Ready, else 0.",
    labelNames: ["namespace", "name", "provider"] as const,
    registers,
    collect() {
      this.reset();
      for (const ce of src.ces()) {
        this.set({ namespace: ce.metadata.namespace ?? "", name: ce.metadata.name ?? "", provider: ce.spec.provider }, cond(ce, "Ready")?.status === "True" ? 1 : 0);
      }
    },
  });
  const stalled = new Gauge({
    name: `${prefix}computeenvironment_stalled`,
    help: "1 when the ComputeEnvironment is Stalled (needs a fix), by reason.",
    labelNames: ["namespace", "name", "provider", "reason"] as const,
    registers,
    collect() {
      this.reset();
      for (const ce of src.ces()) {
        const s = cond(ce, "Stalled");
        const on = s?.status === "True";
        this.set({ namespace: ce.metadata.namespace ?? "", name: ce.metadata.name ?? "", provider: ce.spec.provider, reason: on ? s.reason : "" }, on ? 1 : 0);
      }
    },
  });
  const runs = new Gauge({
    name: `${prefix}runs`,
    help: "Runs by namespace and phase (Runs not yet seen by the operator count as Pending).",
    labelNames: ["namespace", "phase"] as const,
    registers,
    collect() {
      // Registered before the timing histograms, so they are up to date when read in this scrape.
      observeRuns();
      this.reset();
      const counts = new Map<string, number>();
      for (const r of src.runs()) {
        const key = `${r.metadata.namespace ?? ""}\u0000${r.status?.phase ?? "Pending"}`;
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
      for (const [key, n] of counts) {
        const [namespace, phase] = key.split("\u0000") as [string, string];
        this.set({ namespace, phase }, n);
      }
    },
  });
  const oldest = new Gauge({
    name: `${prefix}run_oldest_seconds`,
    help: "Age of the oldest active Run per phase: Pending from creation, Launching and Running from launch.",
    labelNames: ["phase"] as const,
    registers,
    collect() {
      const t = now();
      const max = new Map<string, number>(ACTIVE.map((p) => [p, 0]));
      for (const r of src.runs()) {
        const phase = r.status?.phase ?? "Pending";
        if (!max.has(phase)) continue;
        const since = phase === "Pending" ? r.metadata.creationTimestamp : (r.status?.launchedAt ?? r.metadata.creationTimestamp);
        const age = since ? Math.max(0, (t - Date.parse(since)) / 1000) : 0;
        if (age > max.get(phase)!) max.set(phase, age);
      }
      for (const [phase, age] of max) this.set({ phase }, age);
    },
  });

  const launch = new Histogram({ name: `${prefix}run_launch_seconds`, help: "Seconds from a Run's creation to its machine's launch.", buckets: DURATION_BUCKETS, registers });
  const start = new Histogram({ name: `${prefix}run_start_seconds`, help: "Seconds from a Run's creation to Running.", buckets: DURATION_BUCKETS, registers });
  const duration = new Histogram({ name: `${prefix}run_duration_seconds`, help: "Seconds from a Run's launch to its final phase, by final phase.", labelNames: ["phase"] as const, buckets: DURATION_BUCKETS, registers });
  // Which Runs were observed for which histogram; entries of Runs gone from the cache are dropped.
  const seen = { launch: new Set<string>(), start: new Set<string>(), end: new Set<string>() };
  const after = (iso: string | undefined) => iso !== undefined && Date.parse(iso) >= startedAt - 1000;
  const observeRuns = (): void => {
    const live = new Set<string>();
    for (const r of src.runs()) {
      const uid = r.metadata.uid ?? "";
      live.add(uid);
      const s = r.status ?? {};
      const created = r.metadata.creationTimestamp;
      if (!seen.launch.has(uid) && after(s.launchedAt)) {
        const d = seconds(created, s.launchedAt);
        if (d !== undefined) launch.observe(d);
        seen.launch.add(uid);
      }
      if (!seen.start.has(uid) && (s.phase === "Running" || s.completionTime) && after(s.startTime) && s.launchedAt) {
        const d = seconds(created, s.startTime);
        if (d !== undefined) start.observe(d);
        seen.start.add(uid);
      }
      if (!seen.end.has(uid) && (s.phase === "Succeeded" || s.phase === "Failed" || s.phase === "Cancelled") && after(s.completionTime)) {
        const d = seconds(s.launchedAt, s.completionTime);
        if (d !== undefined) duration.observe({ phase: s.phase }, d);
        seen.end.add(uid);
      }
    }
    for (const set of Object.values(seen)) for (const uid of set) if (!live.has(uid)) set.delete(uid);
  };
  const calls = new Counter({
    name: `${prefix}cloud_requests_total`,
    help: "Cloud API calls by provider, service, operation and outcome (success, throttled, error).",
    labelNames: ["provider", "service", "operation", "outcome"] as const,
    registers,
  });
  const latency = new Histogram({
    name: `${prefix}cloud_request_duration_seconds`,
    help: "Cloud API call latency in seconds, including the SDK's own retries.",
    labelNames: ["provider", "service", "operation"] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers,
  });
  setCloudCallObserver((c: CloudCall) => {
    calls.inc({ provider: c.provider, service: c.service, operation: c.operation, outcome: c.outcome });
    latency.observe({ provider: c.provider, service: c.service, operation: c.operation }, c.seconds);
  });
  const fresh = new Counter({
    name: `${prefix}fresh_reads_total`,
    help: "Reads sent to the kube-apiserver although a watch cache holds the objects, where a stale read could do harm, by resource and why.",
    labelNames: ["resource", "why"] as const,
    registers,
  });
  setFreshReadObserver((resource, why) => fresh.inc({ resource, why }));
  return [ready, stalled, runs, oldest, launch, start, duration, calls, latency, fresh].map((m) => (m as unknown as { name: string }).name);
}
