/** The compiled operator (dist/main.js) as a child process, with its metrics endpoint and /proc figures. */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { processStats } from "./stats.js";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/**
 * The Node options the image runs the operator with (the Dockerfile's CMD, between `node` and
 * `dist/main.js`), so the bench measures the operator as it ships. BENCH_NODE_OPTIONS (space
 * separated, may be empty) replaces them for experiments.
 */
export function shippedNodeOptions(): string[] {
  const override = process.env.BENCH_NODE_OPTIONS;
  if (override !== undefined) return override.split(" ").filter(Boolean);
  const cmd = /^CMD\s+(\[.*\])\s*$/m.exec(readFileSync("Dockerfile", "utf8"))?.[1];
  const argv = cmd ? (JSON.parse(cmd) as string[]) : [];
  if (argv[0] !== "node" || argv[argv.length - 1] !== "dist/main.js") throw new Error(`the Dockerfile's CMD is not node [options] dist/main.js: ${cmd ?? "(none)"}`);
  return argv.slice(1, -1);
}

/** The operator's worker settings as the bench passes them on (its environment), for the figures' header. */
export function operatorSettings(env: NodeJS.ProcessEnv = process.env): string {
  const set = ["VMFORGE_WORKERS", "VMFORGE_RUN_WORKERS", "VMFORGE_POLL_INTERVAL"].filter((k) => env[k]).map((k) => `${k}=${env[k]}`);
  return set.length ? `set: ${set.join(", ")}; otherwise defaults` : "defaults: 4 workers, 64 Run workers, 15 s poll";
}

export class OperatorProcess {
  child: ChildProcess | undefined;
  metricsUrl = "";
  /** Highest RSS sampled (MiB), next to the kernel's own peak (VmHWM). */
  sampledPeakMiB = 0;
  /** The Node options it was started with. */
  nodeOptions: string[] = [];
  private sampler: NodeJS.Timeout | undefined;
  private exited: Promise<number | null> | undefined;

  constructor(private readonly env: Record<string, string>) {}

  async start(): Promise<void> {
    const port = await freePort();
    this.metricsUrl = `http://127.0.0.1:${port}/metrics`;
    this.nodeOptions = shippedNodeOptions();
    this.child = spawn(process.execPath, [...this.nodeOptions, "dist/main.js"], {
      env: { ...process.env, VMFORGE_METRICS_ADDRESS: `127.0.0.1:${port}`, VMFORGE_LEADER_ELECTION: "false", VMFORGE_LOG_LEVEL: "warn", ...this.env },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const child = this.child;
    this.exited = new Promise((r) => child.once("exit", (code) => r(code)));
    for (let i = 0; i < 300; i++) {
      try {
        const r = await fetch(this.metricsUrl.replace("/metrics", "/readyz"));
        if (r.ok) break;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    this.sampler = setInterval(() => {
      try {
        this.sampledPeakMiB = Math.max(this.sampledPeakMiB, this.stats().rssMiB);
      } catch {
        // exited
      }
    }, 500);
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  stats(): { rssMiB: number; peakMiB: number; cpuS: number } {
    return processStats(this.pid);
  }

  async metrics(): Promise<string> {
    return (await fetch(this.metricsUrl, { signal: AbortSignal.timeout(60_000) })).text();
  }

  /** SIGTERM; resolves with the exit code and how long the exit took. */
  async stop(): Promise<{ code: number | null; ms: number }> {
    clearInterval(this.sampler);
    if (!this.child || this.child.exitCode !== null) return { code: this.child?.exitCode ?? null, ms: 0 };
    const t0 = Date.now();
    this.child.kill("SIGTERM");
    const killer = setTimeout(() => this.child?.kill("SIGKILL"), 60_000);
    const code = await this.exited;
    clearTimeout(killer);
    return { code: code ?? null, ms: Date.now() - t0 };
  }
}
