// Starts moto (an AWS emulator) from a pinned virtualenv in the cache, on a free loopback port.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureMotoVenv, HARNESS_DIR, MOTO_VERSION } from "./paths.js";
import { freePort, keepLogs, registerTempDir, spawnSupervised, unregisterTempDir, waitFor } from "./process.js";

export { MOTO_VERSION };

export interface MotoOptions {
  /**
   * Extra environment for the moto process. For example INITIAL_NO_AUTH_ACTION_COUNT=0 makes
   * moto enforce IAM policies on every request (for least-privilege tests).
   */
  env?: Record<string, string>;
  log?: (msg: string) => void;
  readyTimeoutMs?: number;
  /**
   * Load test/harness/moto_fast_tags.py into moto: the same answers, but EC2 tag reads that do not
   * scan every tagged resource (default true; false runs stock moto, for the test that compares).
   */
  fastTags?: boolean;
}

export interface Moto {
  /** http URL, usable as the endpoint of every AWS SDK client (any region). */
  endpoint: string;
  /** Forgets every resource of every service and account. */
  reset(): Promise<void>;
  /** Stops moto and removes its temp folder. Idempotent. */
  stop(): Promise<void>;
}

/** POST /moto-api/reset on a moto endpoint. */
export async function resetMoto(endpoint: string): Promise<void> {
  const res = await fetch(new URL("/moto-api/reset", endpoint), { method: "POST" });
  if (!res.ok) throw new Error(`moto reset failed: HTTP ${res.status} ${await res.text()}`);
}

export async function startMoto(opts: MotoOptions = {}): Promise<Moto> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`[moto] ${m}\n`));
  const venv = await ensureMotoVenv();
  const dir = await mkdtemp(join(tmpdir(), "vmforge-moto-"));
  registerTempDir(dir);
  await writeFile(join(dir, "owner.pid"), String(process.pid));
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;

  // No real AWS credentials or configuration may leak into the emulator.
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("AWS_") && !k.startsWith("MOTO_") && k !== "INITIAL_NO_AUTH_ACTION_COUNT") env[k] = v;
  }
  Object.assign(env, { AWS_ACCESS_KEY_ID: "testing", AWS_SECRET_ACCESS_KEY: "testing", AWS_DEFAULT_REGION: "us-east-1", PYTHONUNBUFFERED: "1" }, opts.env);

  const fastTags = opts.fastTags ?? true;
  log(`starting moto ${MOTO_VERSION}${fastTags ? " (fast tag reads)" : ""} on ${endpoint}`);
  const serverArgs = ["-H", "127.0.0.1", "-p", String(port)];
  const proc = spawnSupervised({
    name: "moto",
    command: fastTags ? join(venv, "bin", "python") : join(venv, "bin", "moto_server"),
    args: fastTags ? [join(HARNESS_DIR, "moto_fast_tags.py"), ...serverArgs] : serverArgs,
    logFile: join(dir, "moto.log"),
    env,
    cwd: dir,
    orphanCleanupDir: dir,
  });

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      await proc.stop(5_000);
      await keepLogs(dir);
      await rm(dir, { recursive: true, force: true });
      unregisterTempDir(dir);
    })();
    return stopped;
  };

  try {
    await waitFor(
      "moto",
      async () => {
        const res = await fetch(new URL("/moto-api/data.json", endpoint));
        await res.arrayBuffer();
        return res.status === 200 ? true : undefined;
      },
      { timeoutMs: opts.readyTimeoutMs ?? 60_000, proc },
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { endpoint, reset: () => resetMoto(endpoint), stop };
}
