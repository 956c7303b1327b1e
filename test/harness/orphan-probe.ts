// Helper process for test/integration/smoke-harness.test.ts: supervises `sleep 600` the way the
// harness supervises its servers, prints what it started as one JSON line, then waits to be killed.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { registerTempDir, spawnSupervised } from "./process.js";

const dir = mkdtempSync(join(tmpdir(), "vmforge-probe-"));
registerTempDir(dir);
writeFileSync(join(dir, "owner.pid"), String(process.pid));
const proc = spawnSupervised({ name: "sleep", command: "sleep", args: ["600"], logFile: join(dir, "sleep.log"), orphanCleanupDir: dir });
console.log(JSON.stringify({ pid: process.pid, watchdog: proc.pid, dir }));
setInterval(() => undefined, 60_000);
