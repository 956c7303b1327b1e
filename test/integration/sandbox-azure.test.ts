/**
 * The README's Azure sandbox, unattended: `npm run sandbox -- --cloud azure --exit` starts its own
 * control plane, Azure emulator, Azurite and operator, applies examples/azure/, plays the VM
 * (the launcher from its userData, with the emulator's metadata, ingestion and storage endpoints
 * for real) and exits 0 only when the example Run succeeded with its log read back from Log
 * Analytics to the exit line, the exit status uploaded to the work directory and the VM deleted
 * with its NIC, public IP and OS disk.
 */
import { spawn } from "node:child_process";
import { expect, it } from "vitest";

function sandbox(...args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn("bash", ["test/sandbox/run.sh", "--cloud", "azure", "--exit", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.on("exit", (code) => resolve({ code, out }));
  });
}

it("runs the Azure example Run to Succeeded, shows its log from Log Analytics and deletes the VM", async () => {
  const { code, out } = await sandbox();
  if (code !== 0) console.error(out);
  expect(code).toBe(0);
  const phases = ["Pending", "Launching", "Running", "Succeeded"].map((p) => out.indexOf(`Run hello: ${p}`));
  for (const at of phases) expect(at).toBeGreaterThanOrEqual(0);
  expect([...phases].sort((a, b) => a - b)).toEqual(phases);
  // The launcher itself ran (userData from the emulator) and its shipper reached Log Analytics.
  expect(out).toMatch(/VM vmforge-[0-9a-f]{32} \(Run hello\) is running: cloud-init runs its customData/);
  expect(out).toContain("  | Bonjour world!");
  expect(out).toMatch(/\n {2}launcher \| VMFORGE_EXIT_CODE=0\n/);
  expect(out).toMatch(/launcher \| .*uploaded az:\/\/\S+\/exit-status\n/);
  expect(out).toContain("exit status uploaded to the work dir: 0");
  // While it ran, the VM had its NIC, public IP and OS disk; afterwards none of them is left.
  const made = /VM vmforge-[0-9a-f]{32} in resource group \S+: (.*)/.exec(out)?.[1] ?? "";
  for (const type of ["Microsoft.Compute/virtualMachines", "Microsoft.Network/networkInterfaces", "Microsoft.Network/publicIPAddresses", "Microsoft.Compute/disks"]) {
    expect(made).toContain(type);
  }
  expect(out).toMatch(/VM vmforge-[0-9a-f]{32} deleted, and its NIC, public IP and OS disk with it/);
}, 600_000);
