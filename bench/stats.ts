/** Small helpers for figures: percentiles, formatting, machine load. */
import os from "node:os";
import { readFileSync } from "node:fs";

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
