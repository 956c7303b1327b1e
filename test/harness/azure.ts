// Starts the Azure emulator (test/azure-emulator) as a supervised tsx child process on a free
// loopback port, serving HTTPS with a throw-away CA made here. Clients trust that CA explicitly
// (NODE_EXTRA_CA_CERTS for child processes, tls.setDefaultCACertificates in-process).
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { AzureEmulatorControl } from "../azure-emulator/control.js";
import { createServingPki } from "./certs.js";
import { REPO_ROOT } from "./paths.js";
import { freePort, serverTempDir, spawnSupervised, waitFor } from "./process.js";

export const AZURE_TEMP_PREFIX = "vmforge-azure-";

export interface AzureEmulatorOptions {
  seed?: string;
  ingestionDelayMs?: number;
  log?: (msg: string) => void;
  readyTimeoutMs?: number;
}

export interface AzureEmulator {
  /** https URL: authority host, Resource Manager endpoint, managed-identity and logs endpoints. */
  endpoint: string;
  /** PEM file of the CA that signed the emulator's certificate (valid while the emulator runs). */
  caPath: string;
  caPem: string;
  control: AzureEmulatorControl;
  /** Temp folder with the certificates and azure-emulator.log; removed by stop(). */
  dir: string;
  stop(): Promise<void>;
}

export async function startAzureEmulator(opts: AzureEmulatorOptions = {}): Promise<AzureEmulator> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`[azure] ${m}\n`));
  let proc: ReturnType<typeof spawnSupervised> | undefined;
  const { dir, stop } = await serverTempDir(AZURE_TEMP_PREFIX, () => proc?.stop(5_000));
  try {
    const pki = await createServingPki(dir, "vmforge-azure-emulator");
    const caPem = await readFile(pki.caCert, "utf8");
    const port = await freePort();
    const endpoint = `https://127.0.0.1:${port}`;
    log(`starting the Azure emulator on ${endpoint}`);
    proc = spawnSupervised({
      name: "azure-emulator",
      // One process (node with tsx's loader, resolved from the repository), so that the watchdog's
      // signal reaches the server itself.
      command: process.execPath,
      args: ["--import", "tsx", join(REPO_ROOT, "test", "azure-emulator", "server.ts")],
      logFile: join(dir, "azure-emulator.log"),
      env: {
        ...process.env,
        AZURE_EMULATOR_CERT: pki.cert,
        AZURE_EMULATOR_KEY: pki.key,
        AZURE_EMULATOR_PORT: String(port),
        AZURE_EMULATOR_SEED: opts.seed ?? "vmforge",
        AZURE_EMULATOR_INGESTION_DELAY_MS: String(opts.ingestionDelayMs ?? 0),
      },
      cwd: REPO_ROOT,
      orphanCleanupDir: dir,
    });
    const control = new AzureEmulatorControl(endpoint, caPem);
    await waitFor("Azure emulator", async () => ((await control.info()).tenantId ? true : undefined), { timeoutMs: opts.readyTimeoutMs ?? 30_000, intervalMs: 100, proc });
    return { endpoint, caPath: pki.caCert, caPem, control, dir, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
