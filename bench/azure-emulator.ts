// Requests per second of the Azure emulator (test/azure-emulator), so that a 1,000-VM benchmark of
// the operator measures the operator, not the emulator. Runs the emulator in this process and
// drives it over HTTPS with keep-alive connections, as the SDKs do:
//   tsx bench/azure-emulator.ts [vms=1000] [concurrency=32]
// Prints one JSON line per phase: requests, seconds, requests/s.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { Agent, request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startEmulator } from "../test/azure-emulator/emulator.js";
import { createServingPki } from "../test/harness/certs.js";

const vms = Number(process.argv[2] ?? "1000");
const concurrency = Number(process.argv[3] ?? "32");

const dir = await mkdtemp(join(tmpdir(), "vmforge-azure-bench-"));
try {
  const pki = await createServingPki(dir, "bench");
  const ca = await readFile(pki.caCert, "utf8");
  const t0 = performance.now();
  const em = await startEmulator({ tls: { cert: await readFile(pki.cert), key: await readFile(pki.key) } });
  const startMs = performance.now() - t0;
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency, ca });
  const info = em.emulator.getInfo();

  const call = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: unknown }> =>
    new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
      const req = request(new URL(path, em.url), { method, agent, headers: { ...(payload ? { "content-type": "application/json", "content-length": String(Buffer.byteLength(payload)) } : {}), ...headers } }, (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString("utf8")));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined }));
      });
      req.on("error", reject);
      req.end(payload);
    });

  const form = new URLSearchParams({ grant_type: "client_credentials", client_id: info.admin.clientId, client_secret: info.admin.clientSecret, scope: "https://management.azure.com/.default" });
  const tok = await call("POST", `/${info.tenantId}/oauth2/v2.0/token`, form.toString(), { "content-type": "application/x-www-form-urlencoded" });
  const auth = { authorization: `Bearer ${(tok.json as { access_token: string }).access_token}` };
  const sub = `/subscriptions/${info.subscriptionId}`;
  const rg = `${sub}/resourceGroups/bench`;
  const v = "?api-version=2026-04-01";
  await call("PUT", `${rg}?api-version=2025-04-01`, { location: "westeurope" }, auth);
  await call("PUT", `${rg}/providers/Microsoft.Network/virtualNetworks/vnet?api-version=2026-01-01`, { location: "westeurope", properties: { addressSpace: { addressPrefixes: ["10.0.0.0/16"] }, subnets: [{ name: "s", properties: { addressPrefix: "10.0.0.0/20" } }] } }, auth);
  const subnet = `${rg}/providers/Microsoft.Network/virtualNetworks/vnet/subnets/s`;

  const vmBody = (i: number): unknown => ({
    location: "westeurope",
    tags: { run: String(i) },
    properties: {
      hardwareProfile: { vmSize: "Standard_D2s_v5" },
      priority: "Spot",
      evictionPolicy: "Delete",
      storageProfile: { imageReference: { publisher: "Canonical", offer: "ubuntu-24_04-lts", sku: "server", version: "latest" }, osDisk: { createOption: "FromImage", deleteOption: "Delete" } },
      osProfile: { computerName: `vm${i}`, adminUsername: "u", linuxConfiguration: { disablePasswordAuthentication: true, ssh: { publicKeys: [{ path: "/home/u/.ssh/authorized_keys", keyData: "ssh-ed25519 AAAA" }] } } },
      networkProfile: { networkApiVersion: "2020-11-01", networkInterfaceConfigurations: [{ name: "nic", properties: { primary: true, deleteOption: "Delete", ipConfigurations: [{ name: "ip", properties: { subnet: { id: subnet } } }] } }] },
      userData: Buffer.from(`#!/bin/sh\necho ${i}`).toString("base64"),
    },
  });

  async function phase(name: string, n: number, one: (i: number) => Promise<{ status: number }>): Promise<void> {
    let next = 0;
    let failed = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        for (let i = next++; i < n; i = next++) if ((await one(i)).status >= 300) failed++;
      }),
    );
    const s = (performance.now() - t) / 1000;
    console.log(JSON.stringify({ phase: name, requests: n, failed, seconds: Number(s.toFixed(3)), requestsPerSecond: Math.round(n / s) }));
  }

  console.log(JSON.stringify({ phase: "start", milliseconds: Math.round(startMs) }));
  await phase("vm create (PUT)", vms, (i) => call("PUT", `${rg}/providers/Microsoft.Compute/virtualMachines/vm${i}${v}`, vmBody(i), auth));
  await phase("vm get", vms, (i) => call("GET", `${rg}/providers/Microsoft.Compute/virtualMachines/vm${i}${v}`, undefined, auth));
  await phase("vm list statusOnly (whole resource group)", 50, () => call("GET", `${sub}/providers/Microsoft.Compute/virtualMachines${v}&statusOnly=true`, undefined, auth));
  await phase("vm delete", vms, (i) => call("DELETE", `${rg}/providers/Microsoft.Compute/virtualMachines/vm${i}${v}`, undefined, auth));
  agent.destroy();
  await em.close();
} finally {
  await rm(dir, { recursive: true, force: true });
}
