// Starts Azurite (the Azure Storage emulator, from node_modules) for Blob storage on a free loopback
// port, over HTTPS with a throw-away certificate and with basic OAuth, supervised like moto: it dies
// with the test process (even on SIGKILL) and its temp folder is removed.
//
// Accepted credentials (as @azure/storage-blob sends them):
//  - the well-known account key of `devstoreaccount1` (StorageSharedKeyCredential);
//  - bearer tokens (any TokenCredential). Azurite's "basic" OAuth does not check signatures; it
//    requires iat/nbf/exp with the token unexpired, `iss` starting with https://sts.windows.net/
//    (the v1 issuer Entra uses for storage tokens) and `aud` https://storage.azure.com[/] (or the
//    storage app ID e406a681-f3d4-42a8-90b6-c2b029497af1, or https://devstoreaccount1.blob.core.windows.net).
//    Bearer tokens are only accepted over HTTPS.
import { request } from "node:https";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { createServingPki } from "./certs.js";
import { REPO_ROOT } from "./paths.js";
import { freePort, serverTempDir, spawnSupervised, waitFor } from "./process.js";

export const AZURITE_ACCOUNT = "devstoreaccount1";
/** Azurite's documented, public development key (not a secret). */
export const AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

export interface AzuriteOptions {
  /**
   * Serving certificate for 127.0.0.1 and the CA that signed it (for example the Azure emulator's,
   * so that one CA covers every Azure endpoint). Without it, a throw-away CA is made here.
   */
  tls?: { cert: string; key: string; caPath: string };
  /** Writes Azurite's debug log (verbose) next to its access log. Default: VMFORGE_AZURITE_DEBUG=1. */
  debug?: boolean;
  log?: (msg: string) => void;
  readyTimeoutMs?: number;
}

export interface Azurite {
  /** Blob service URL of the account (path style): https://127.0.0.1:<port>/devstoreaccount1 */
  blobEndpoint: string;
  accountName: string;
  accountKey: string;
  /** Connection string with the account key and the blob endpoint. */
  connectionString: string;
  /** PEM file of the CA that signed Azurite's certificate (valid while Azurite runs). */
  caPath: string;
  caPem: string;
  /** Temp folder (data, certificates, logs); removed by stop(). */
  dir: string;
  stop(): Promise<void>;
}

/**
 * The Azure emulator's serving certificate (made by createServingPki in its folder) and CA, so that
 * one CA covers the emulator and Azurite.
 */
export function azuriteTlsOf(emulator: { dir: string; caPath: string }): { cert: string; key: string; caPath: string } {
  return { cert: join(emulator.dir, "server.crt"), key: join(emulator.dir, "server.key"), caPath: emulator.caPath };
}

/** Any HTTP answer from the blob endpoint means Azurite listens. */
function probe(blobEndpoint: string, ca: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(`${blobEndpoint}?restype=service&comp=properties`, { method: "GET", ca, timeout: 2_000 }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

export async function startAzurite(opts: AzuriteOptions = {}): Promise<Azurite> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`[azurite] ${m}\n`));
  let proc: ReturnType<typeof spawnSupervised> | undefined;
  const { dir, stop } = await serverTempDir("vmforge-azurite-", () => proc?.stop(5_000));
  try {
    let tls: { cert: string; key: string; caPath: string };
    if (opts.tls) tls = opts.tls;
    else {
      const pki = await createServingPki(dir, "vmforge-azurite");
      tls = { cert: pki.cert, key: pki.key, caPath: pki.caCert };
    }
    const caPem = await readFile(tls.caPath, "utf8");
    const data = join(dir, "data");
    await mkdir(data);
    const port = await freePort();
    const blobEndpoint = `https://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
    const debug = opts.debug ?? process.env.VMFORGE_AZURITE_DEBUG === "1";

    // Nothing of a developer's Azure configuration may reach the emulator (AZURITE_ACCOUNTS would
    // replace the default account).
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("AZURITE_") && !k.startsWith("AZURE_")) env[k] = v;

    log(`starting Azurite (blob) on ${blobEndpoint}`);
    proc = spawnSupervised({
      name: "azurite",
      command: join(REPO_ROOT, "node_modules", ".bin", "azurite-blob"),
      args: [
        "--blobHost", "127.0.0.1",
        "--blobPort", String(port),
        // Azurite writes its databases and blobs into --location (default: the current directory);
        // it refuses --inMemoryPersistence together with --location, so data goes to the temp folder.
        "--location", data,
        "--cert", tls.cert,
        "--key", tls.key,
        "--oauth", "basic",
        "--disableTelemetry",
        // The current @azure/storage-blob sends a service version newer than Azurite knows.
        "--skipApiVersionCheck",
        "--disableProductStyleUrl",
        ...(debug ? ["--debug", join(dir, "azurite-debug.log")] : ["--silent"]),
      ],
      logFile: join(dir, "azurite.log"),
      env,
      cwd: data,
      orphanCleanupDir: dir,
    });
    await waitFor("Azurite", async () => ((await probe(blobEndpoint, caPem)) > 0 ? true : undefined), {
      timeoutMs: opts.readyTimeoutMs ?? 30_000,
      intervalMs: 100,
      proc,
    });
    const connectionString = `DefaultEndpointsProtocol=https;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_ACCOUNT_KEY};BlobEndpoint=${blobEndpoint};`;
    return { blobEndpoint, accountName: AZURITE_ACCOUNT, accountKey: AZURITE_ACCOUNT_KEY, connectionString, caPath: tls.caPath, caPem, dir, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
