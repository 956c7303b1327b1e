// Entry point of the emulator as a child process (test/harness/azure.ts starts it with tsx):
//   AZURE_EMULATOR_CERT / AZURE_EMULATOR_KEY  PEM files of the serving certificate
//   AZURE_EMULATOR_PORT                        port on 127.0.0.1 (0 = any)
//   AZURE_EMULATOR_SEED                        seed of the deterministic IDs
//   AZURE_EMULATOR_INGESTION_DELAY_MS          initial Logs Ingestion delay
// Prints one line "AZURE_EMULATOR_READY <url>" on stdout when it serves.
import { readFileSync } from "node:fs";
import { startEmulator } from "./emulator.js";

const env = (k: string): string => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

const running = await startEmulator({
  tls: { cert: readFileSync(env("AZURE_EMULATOR_CERT")), key: readFileSync(env("AZURE_EMULATOR_KEY")) },
  port: Number(process.env.AZURE_EMULATOR_PORT ?? "0"),
  seed: process.env.AZURE_EMULATOR_SEED ?? "vmforge",
  ingestionDelayMs: Number(process.env.AZURE_EMULATOR_INGESTION_DELAY_MS ?? "0"),
});
process.stdout.write(`AZURE_EMULATOR_READY ${running.url}\n`);
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
  process.on(sig, () => {
    void running.close().then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
