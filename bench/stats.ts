/** Small helpers for figures: percentiles, formatting, machine load. */
import os from "node:os";
import { readFileSync, readdirSync } from "node:fs";
import { resourceLabel } from "../src/engine/reflector.js";
import { RunResource } from "../src/api/types.js";

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i] ?? NaN;
}

export interface Dist { n: number; p50: number; p90: number; p99: number; max: number }

export function dist(values: number[]): Dist {
  return { n: values.length, p50: percentile(values, 50), p90: percentile(values, 90), p99: percentile(values, 99), max: values.length ? Math.max(...values) : NaN };
}

export const sec = (ms: number): string => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : "n/a");
export const fmtDist = (d: Dist): string => `p50 ${sec(d.p50)}, p90 ${sec(d.p90)}, p99 ${sec(d.p99)}, max ${sec(d.max)} (n=${d.n})`;

export interface Load { loadavg: number[]; cores: number }
export function load(): Load {
  return { loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100), cores: os.cpus().length };
}
export const fmtLoad = (l: Load): string => `load ${l.loadavg.join(" / ")} on ${l.cores} cores`;

/** RSS and its peak (VmHWM) of a process, in MiB; CPU seconds (user+system). */
export function processStats(pid: number): { rssMiB: number; peakMiB: number; cpuS: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return { rssMiB: Math.round(kb("VmRSS") / 102.4) / 10, peakMiB: Math.round(kb("VmHWM") / 102.4) / 10, cpuS: ticks / 100 };
}

/** Sum of a Prometheus counter's samples whose labels include all given labels, by a label. */
export function promSum(text: string, name: string, labels: Record<string, string> = {}, by?: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const body = line.includes("{") ? line.slice(line.indexOf("{") + 1, line.lastIndexOf("}")) : "";
    if (!Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) continue;
    const key = by ? (new RegExp(`${by}="([^"]*)"`).exec(body)?.[1] ?? "") : "";
    out.set(key, (out.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(" ") + 1)));
  }
  return out;
}

/** promSum of `after` less promSum of `before`, per key. */
export function promDelta(before: string, after: string, name: string, labels: Record<string, string> = {}, by?: string): Map<string, number> {
  const b = promSum(before, name, labels, by);
  return new Map([...promSum(after, name, labels, by)].map(([k, v]) => [k, v - (b.get(k) ?? 0)]));
}

/**
 * How long a controller's workers were held before their reconciles (vmforge_reconcile_held_seconds)
 * between two scrapes: how many, their mean, and how many waited longer than each bucket bound.
 */
export function heldWindow(before: string, after: string, controller: string): { held: number; meanS: number; over: Record<string, number> } {
  const name = "vmforge_reconcile_held_seconds";
  const delta = (suffix: string, by?: string): Map<string, number> => promDelta(before, after, `${name}${suffix}`, { controller }, by);
  const held = delta("_count").get("") ?? 0;
  const sum = delta("_sum").get("") ?? 0;
  const over: Record<string, number> = {};
  for (const [le, n] of delta("_bucket", "le")) if (le !== "+Inf") over[`>${le} s`] = held - n;
  return { held, meanS: held > 0 ? Math.round((sum / held) * 1000) / 1000 : 0, over };
}

export function diffMaps(after: Map<string, number>, before: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of after) {
    const d = v - (before.get(k) ?? 0);
    if (d !== 0) out[k] = d;
  }
  return out;
}

/** Calls `fn` for every item, at most `concurrency` at a time. */
export async function poolDo<T>(items: T[], concurrency: number, fn: (t: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i] as T, i);
    }
  }));
}

/**
 * A pool of `concurrency` workers whose work arrives over time: item i exists from
 * `startAt + arrivals[i]` (ms) on, and the workers take the items in the order they arrive, each
 * no earlier than its arrival. `fn` gets the item's index and its arrival time (epoch ms). This is
 * how a client that does nothing but the work would serve the same arrivals.
 */
export async function pacedDo(arrivals: number[], concurrency: number, fn: (i: number, arrivedAt: number) => Promise<void>, startAt = Date.now()): Promise<void> {
  const order = arrivals.map((_, i) => i).sort((a, b) => (arrivals[a] as number) - (arrivals[b] as number));
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, order.length) }, async () => {
    while (next < order.length) {
      const i = order[next++] as number;
      const at = startAt + (arrivals[i] as number);
      // (a timer may fire a millisecond early by Date.now(): waited out again)
      while (Date.now() < at) await new Promise((r) => setTimeout(r, at - Date.now()));
      await fn(i, at);
    }
  }));
}

/** CPU seconds (user+system) of every process whose command line holds all of `parts`. */
export function cpuOfMatching(parts: string[]): number {
  let ticks = 0;
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
      if (!parts.every((p) => cmd.includes(p))) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // gone meanwhile
    }
  }
  return ticks / 100;
}

/** CPU seconds so far of each named process group. */
export function cpuSnapshot(groups: Record<string, () => number>): Record<string, number> {
  return Object.fromEntries(Object.entries(groups).map(([k, f]) => [k, f()]));
}

/** CPU seconds each named process group used between two snapshots (one decimal). */
export function cpuSince(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).map(([k, v]) => [k, Math.round((v - (before[k] ?? 0)) * 10) / 10]));
}

export const fmtCpu = (cpu: Record<string, number>): string => Object.entries(cpu).map(([k, v]) => `${k} ${v}`).join(", ");

/**
 * CPU of named process groups sampled every second, so that a window known only afterwards (e.g.
 * until the last launch) can be read off: cpuIn(from, to) interpolates between samples.
 */
export class CpuSampler {
  private readonly samples: { at: number; cpu: Record<string, number> }[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly groups: Record<string, () => number>) {}

  start(): void {
    this.take();
    this.timer = setInterval(() => this.take(), 1_000);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.take();
  }

  private take(): void {
    this.samples.push({ at: Date.now(), cpu: cpuSnapshot(this.groups) });
  }

  private at(t: number, k: string): number {
    const s = this.samples;
    if (s.length === 0) return NaN;
    let i = 0;
    while (i < s.length - 1 && (s[i + 1]?.at ?? Infinity) < t) i++;
    const a = s[i], b = s[Math.min(i + 1, s.length - 1)];
    if (!a || !b || b.at === a.at) return a?.cpu[k] ?? NaN;
    const f = Math.min(1, Math.max(0, (t - a.at) / (b.at - a.at)));
    return (a.cpu[k] ?? 0) + f * ((b.cpu[k] ?? 0) - (a.cpu[k] ?? 0));
  }

  /** CPU seconds each group used between two times. */
  cpuIn(from: number, to: number): Record<string, number> {
    const at = (t: number): Record<string, number> => Object.fromEntries(Object.keys(this.groups).map((k) => [k, this.at(t, k)]));
    return cpuSince(at(from), at(to));
  }
}

/** What the kube-apiserver's /metrics say of all its clients. */
export interface ApiserverCounts {
  /**
   * apiserver_request_total by "VERB resource[/sub]", WATCH and CONNECT excluded; answers other
   * than 2xx apart, with their code ("PATCH runs (409)").
   */
  requests: Map<string, number>;
  /**
   * apiserver_terminated_watchers_total by resource: watches the server closed as unresponsive
   * (its buffer for that watcher stayed full: the client reading, or the server sending, too
   * slowly). Not requests: counted apart.
   */
  closedWatches: Map<string, number>;
}

export function apiserverCounts(text: string): ApiserverCounts {
  const out: ApiserverCounts = { requests: new Map(), closedWatches: new Map() };
  const add = (m: Map<string, number>, key: string, line: string): void => {
    m.set(key, (m.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(" ") + 1)));
  };
  for (const line of text.split("\n")) {
    const resource = /[{,]resource="([^"]*)"/.exec(line)?.[1] ?? "";
    if (line.startsWith("apiserver_terminated_watchers_total{")) {
      add(out.closedWatches, resource, line);
      continue;
    }
    if (!line.startsWith("apiserver_request_total{")) continue;
    const verb = /verb="([^"]*)"/.exec(line)?.[1] ?? "";
    if (verb === "WATCH" || verb === "CONNECT") continue;
    const sub = /subresource="([^"]*)"/.exec(line)?.[1] ?? "";
    const code = /code="([^"]*)"/.exec(line)?.[1] ?? "";
    add(out.requests, `${verb} ${resource}${sub ? `/${sub}` : ""}${code.startsWith("2") ? "" : ` (${code})`}`, line);
  }
  return out;
}

/** The kube-apiserver's counts over a window (or per poll of it). */
export interface ApiserverWindow {
  requests: Record<string, number>;
  closedWatches: Record<string, number>;
}

export function apiserverWindow(after: ApiserverCounts, before: ApiserverCounts): ApiserverWindow {
  return { requests: diffMaps(after.requests, before.requests), closedWatches: diffMaps(after.closedWatches, before.closedWatches) };
}

export function apiserverPerPoll(w: ApiserverWindow, polls: number): ApiserverWindow {
  return { requests: perPoll(w.requests, polls), closedWatches: perPoll(w.closedWatches, polls) };
}

/**
 * A window as the bench prints it: the requests, then the watches closed as unresponsive, if any
 * (`unit` says what the counts are per, e.g. "per poll").
 */
export function fmtApiserver(w: ApiserverWindow, unit = ""): string {
  const closed = Object.keys(w.closedWatches).length > 0 ? `; watches it closed as unresponsive${unit ? ` ${unit}` : ""}, by resource: ${JSON.stringify(w.closedWatches)}` : "";
  return `${JSON.stringify(w.requests)}${closed}`;
}

/** Counts over a window of `polls` polls, per poll (two decimals). */
export function perPoll(counts: Record<string, number>, polls: number): Record<string, number> {
  return Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, Math.round((v / polls) * 100) / 100]));
}

/** Bytes as KiB (one decimal). */
export function kibOf(bytes: number): number {
  return Math.round(bytes / 102.4) / 10;
}

/** Bytes by key as KiB (one decimal). */
export function kib(bytes: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(bytes).map(([k, v]) => [k, kibOf(v)]));
}

/** The kube-apiserver's reads of Runs, ComputeEnvironments and Secrets among its request counts (the keys of ApiserverCounts.requests). */
export function vmforgeReads(apiserverRequests: Record<string, number>): number {
  return Object.entries(apiserverRequests).filter(([k]) => /^(GET|LIST) (runs|computeenvironments|secrets)/.test(k)).reduce((a, [, v]) => a + v, 0);
}

/**
 * The operator's own reads of the kube-apiserver in a window (its metrics text before and after):
 * its requests for Runs by verb (the reflector's LIST and WATCH included), and the reads it sent past
 * its caches where a stale read could do harm, by why (vmforge_fresh_reads_total).
 */
export function operatorReads(before: string, after: string): { runRequests: Record<string, number>; freshReads: Record<string, number>; runWatchRestarts: Record<string, number> } {
  return {
    runRequests: diffMaps(promSum(after, "vmforge_kube_requests_total", { resource: "runs" }, "verb"), promSum(before, "vmforge_kube_requests_total", { resource: "runs" }, "verb")),
    freshReads: diffMaps(promSum(after, "vmforge_fresh_reads_total", {}, "why"), promSum(before, "vmforge_fresh_reads_total", {}, "why")),
    // Why the Run watch was started again (closed by the server, expired, idle, failed; backoff).
    runWatchRestarts: diffMaps(promSum(after, "vmforge_watch_restarts_total", { resource: resourceLabel(RunResource) }, "reason"), promSum(before, "vmforge_watch_restarts_total", { resource: resourceLabel(RunResource) }, "reason")),
  };
}

/** What the operator's own metrics say of a steady window (its metrics text before and after). */
export function operatorWindow(before: string, after: string, polls: number): { operatorRequests: Record<string, number>; statusWrites: Record<string, number>; reconcilesPerPoll: Record<string, number> } {
  const delta = (name: string, by: string): Record<string, number> => diffMaps(promSum(after, name, {}, by), promSum(before, name, {}, by));
  return {
    operatorRequests: delta("vmforge_kube_requests_total", "verb"),
    statusWrites: delta("vmforge_status_writes_total", "kind"),
    reconcilesPerPoll: perPoll(delta("vmforge_reconcile_duration_seconds_count", "controller"), polls),
  };
}
