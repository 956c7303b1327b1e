// Child-process supervision for the test harness.
//
// Every server the harness starts (etcd, kube-apiserver, kube-controller-manager, moto) runs
// under a small shell watchdog in a process group of its own:
//  - stop() signals the whole group (watchdog + server), SIGTERM first, SIGKILL after a grace period;
//  - if this Node process exits or is interrupted, 'exit'/'SIGINT'/'SIGTERM'/'SIGHUP' handlers kill
//    every group still alive and remove registered temp folders;
//  - if this Node process is killed outright (SIGKILL, OOM), the watchdog notices that its parent
//    changed, terminates the server and removes the temp folder itself.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync, rmSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";

// $1 = pid of the Node process, $2 = folder to remove when orphaned ("" for none), $3... = command.
// /proc/$$/stat field 4 is our current parent pid; it changes when the Node process dies.
const WATCHDOG = `
owner=$1; cleanup=$2; shift 2
"$@" &
child=$!
stop_child() {
  kill -TERM "$child" 2>/dev/null
  i=0
  while kill -0 "$child" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$child" 2>/dev/null
}
trap 'stop_child; wait "$child" 2>/dev/null; exit 143' TERM INT HUP
while kill -0 "$child" 2>/dev/null; do
  read -r _ _ _ ppid _ < /proc/$$/stat
  if [ "$ppid" != "$owner" ]; then
    stop_child
    [ -n "$cleanup" ] && rm -rf "$cleanup" 2>/dev/null
    exit 1
  fi
  sleep 0.5
done
wait "$child"
`;

export interface Supervised {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  /** Resolves with the exit code (or null when killed by a signal) once the process group leader exited. */
  readonly exited: Promise<number | null>;
  isRunning(): boolean;
  /** SIGTERM to the process group, SIGKILL after graceMs. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

const liveGroups = new Set<number>();
const tempDirs = new Set<string>();
let handlersInstalled = false;

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // group already gone
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Synchronous last-resort cleanup: usable from 'exit' and signal handlers. */
export function killAllNow(): void {
  if (liveGroups.size > 0) {
    for (const g of liveGroups) killGroup(g, "SIGTERM");
    sleepSync(1500);
    for (const g of liveGroups) killGroup(g, "SIGKILL");
    liveGroups.clear();
  }
  for (const d of tempDirs) {
    try {
      rmSync(d, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
  tempDirs.clear();
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on("exit", killAllNow);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const onSignal = (): void => {
      killAllNow();
      process.removeListener(sig, onSignal);
      // If nobody else handles this signal, die of it as the default action would.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

/** Registers a folder to be removed when the process exits or is interrupted. */
export function registerTempDir(dir: string): void {
  installHandlers();
  tempDirs.add(dir);
}

export function unregisterTempDir(dir: string): void {
  tempDirs.delete(dir);
}

export interface SpawnOptions {
  name: string;
  command: string;
  args: string[];
  logFile: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Folder the watchdog removes if this Node process dies without cleaning up. */
  orphanCleanupDir?: string;
}

export function spawnSupervised(opts: SpawnOptions): Supervised {
  installHandlers();
  const fd = openSync(opts.logFile, "a");
  let child: ChildProcess;
  try {
    child = spawn(
      "sh",
      ["-c", WATCHDOG, "vmforge-watchdog", String(process.pid), opts.orphanCleanupDir ?? "", opts.command, ...opts.args],
      { stdio: ["ignore", fd, fd], env: opts.env ?? process.env, cwd: opts.cwd, detached: true },
    );
  } finally {
    closeSync(fd);
  }
  if (child.pid === undefined) throw new Error(`could not start ${opts.name} (${opts.command})`);
  const pid = child.pid;
  liveGroups.add(pid);
  let running = true;
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => {
      running = false;
      resolve(code);
    });
    child.once("error", () => {
      running = false;
      resolve(null);
    });
  });
  let stopping: Promise<void> | undefined;
  const stop = (graceMs = 10_000): Promise<void> => {
    stopping ??= (async () => {
      if (running) {
        killGroup(pid, "SIGTERM");
        const timer = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), graceMs).unref());
        if ((await Promise.race([exited, timer])) === "timeout") killGroup(pid, "SIGKILL");
        await exited;
      }
      // The server may have left the group leader behind; make sure nothing of the group remains.
      killGroup(pid, "SIGKILL");
      liveGroups.delete(pid);
    })();
    return stopping;
  };
  return { name: opts.name, pid, logFile: opts.logFile, exited, isRunning: () => running, stop };
}

/** Last lines of a log file, for error messages. */
export function tailFile(file: string, lines = 40): string {
  try {
    const all = readFileSync(file, "utf8").trimEnd().split("\n");
    return all.slice(-lines).join("\n");
  } catch (err) {
    return `(no log: ${(err as Error).message})`;
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      if (addr === null || typeof addr === "string") {
        srv.close();
        reject(new Error("no port"));
        return;
      }
      srv.close(() => resolve(addr.port));
    });
  });
}

/** Distinct free ports (the OS may hand out the same one twice after close). */
export async function freePorts(n: number): Promise<number[]> {
  const out = new Set<number>();
  while (out.size < n) out.add(await freePort());
  return [...out];
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `check` until it returns a value other than undefined. Fails early when `alive()` turns
 * false (the server died) and after timeoutMs, with the log tail in the message.
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  opts: { timeoutMs: number; intervalMs?: number; proc?: Supervised },
): Promise<T> {
  const deadline = performance.now() + opts.timeoutMs;
  let lastErr = "";
  for (;;) {
    if (opts.proc && !opts.proc.isRunning()) {
      throw new Error(`${opts.proc.name} exited while waiting for ${what}. Last log lines (${opts.proc.logFile}):\n${tailFile(opts.proc.logFile)}`);
    }
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      lastErr = (err as Error).message;
    }
    if (performance.now() > deadline) {
      const tail = opts.proc ? `\nLast log lines of ${opts.proc.name} (${opts.proc.logFile}):\n${tailFile(opts.proc.logFile)}` : "";
      throw new Error(`timed out after ${opts.timeoutMs}ms waiting for ${what}${lastErr ? ` (last error: ${lastErr})` : ""}${tail}`);
    }
    await sleep(opts.intervalMs ?? 250);
  }
}

/**
 * When VMFORGE_KEEP_LOGS names a folder, copies the *.log files of a harness temp folder into
 * <VMFORGE_KEEP_LOGS>/<temp folder name>/ before the temp folder is removed (test/run-all.sh sets
 * it, so component logs of a failed run can be read afterwards).
 */
export async function keepLogs(dir: string): Promise<void> {
  const target = process.env.VMFORGE_KEEP_LOGS;
  if (!target) return;
  try {
    const logs = (await readdir(dir)).filter((f) => f.endsWith(".log"));
    if (logs.length === 0) return;
    const dest = join(target, basename(dir));
    await mkdir(dest, { recursive: true });
    await Promise.all(logs.map((f) => copyFile(join(dir, f), join(dest, f))));
  } catch {
    // best effort: logs are a debugging aid
  }
}

/**
 * A temp folder owned by one supervised server: registered for the watchdog's sweep, marked with
 * this process's pid, and removed by `stop` (once, however often it is called) after
 * `stopServer` ran and the server's logs were kept.
 */
export async function serverTempDir(prefix: string, stopServer: () => Promise<void> | undefined): Promise<{ dir: string; stop: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  registerTempDir(dir);
  await writeFile(join(dir, "owner.pid"), String(process.pid));
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      await stopServer();
      await keepLogs(dir);
      await rm(dir, { recursive: true, force: true });
      unregisterTempDir(dir);
    })();
    return stopped;
  };
  return { dir, stop };
}
