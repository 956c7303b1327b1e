/**
 * The README's main command, unattended: `npm run sandbox -- --exit` starts its own control plane,
 * moto and the operator, applies examples/, plays the EC2 instance and exits 0 only when the
 * example Run succeeded with its log read back to the exit line and the exit status uploaded.
 * A second run with a failing stand-in pipeline must end Failed with exit code 1.
 */
import { spawn } from "node:child_process";
import { expect, it } from "vitest";

function sandbox(...args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn("bash", ["test/sandbox/run.sh", "--exit", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.on("exit", (code) => resolve({ code, out }));
  });
}

it("runs the example Run to Succeeded and shows its log", async () => {
  const { code, out } = await sandbox();
  if (code !== 0) console.error(out);
  expect(code).toBe(0);
  for (const phase of ["Pending", "Launching", "Running", "Succeeded"]) expect(out).toContain(`Run hello: ${phase}`);
  expect(out).toContain("Bonjour world!");
  expect(out).toMatch(/\| VMFORGE_EXIT_CODE=0/);
  expect(out).toContain("exit status uploaded to the work dir: 0");
}, 600_000);

it("reports a failing pipeline as Failed with its exit code", async () => {
  const { code, out } = await sandbox("--fail-pipeline");
  if (code !== 0) console.error(out);
  expect(code).toBe(0);
  expect(out).toContain("Run hello: Failed (PipelineFailed");
  expect(out).toMatch(/\| VMFORGE_EXIT_CODE=1/);
}, 600_000);
