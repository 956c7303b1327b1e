// The harness's promise that no server outlives the test run, checked with a stand-in server
// (`sleep 600`) supervised exactly like etcd, kube-apiserver, kube-controller-manager and moto.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { HARNESS_DIR, REPO_ROOT } from "../harness/paths.js";

interface Probe {
  child: ChildProcess;
  pid: number;
  watchdog: number;
  dir: string;
  server: number;
}

const probes: ChildProcess[] = [];

/** pids whose parent is `ppid` and whose command line is exactly `argv`. */
function childrenWithArgv(ppid: number, argv: string[]): number[] {
  const out: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (parent !== ppid) continue;
      const cmd = readFileSync(`/proc/${e}/cmdline`, "utf8").split("\0").filter(Boolean);
      if (JSON.stringify(cmd) === JSON.stringify(argv)) out.push(Number(e));
    } catch {
      // process ended while reading
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie is dead for our purposes.
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

async function startProbe(): Promise<Probe> {
  const child = spawn(process.execPath, ["--import", "tsx", join(HARNESS_DIR, "orphan-probe.ts")], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "inherit"],
  });
  probes.push(child);
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once("line", resolve);
    child.once("exit", (code) => reject(new Error(`probe exited early (${code})`)));
  });
  const info = JSON.parse(line) as { pid: number; watchdog: number; dir: string };
  const server = await vi.waitFor(() => {
    const [pid] = childrenWithArgv(info.watchdog, ["sleep", "600"]);
    expect(pid).toBeTypeOf("number");
    return pid!;
  }, { timeout: 10_000 });
  return { child, ...info, server };
}

afterEach(() => {
  for (const c of probes.splice(0)) c.kill("SIGKILL");
});

describe("process supervision of the harness", () => {
  it("stops the server and removes its temp folder when the test process is killed with SIGKILL", async () => {
    const probe = await startProbe();
    expect(alive(probe.server)).toBe(true);
    expect(existsSync(probe.dir)).toBe(true);

    probe.child.kill("SIGKILL");
    await vi.waitFor(() => {
      expect(alive(probe.server)).toBe(false);
      expect(alive(probe.watchdog)).toBe(false);
      expect(existsSync(probe.dir)).toBe(false);
    }, { timeout: 30_000, interval: 200 });
  });

  it("stops the server and removes its temp folder when the test process is interrupted (SIGINT)", async () => {
    const probe = await startProbe();
    const exited = new Promise<NodeJS.Signals | null>((resolve) => probe.child.once("exit", (_code, signal) => resolve(signal)));
    probe.child.kill("SIGINT");
    // The harness cleans up synchronously in its signal handler, then dies of the signal.
    expect(await exited).toBe("SIGINT");
    expect(alive(probe.server)).toBe(false);
    expect(existsSync(probe.dir)).toBe(false);
  });
});
