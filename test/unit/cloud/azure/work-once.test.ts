// Work done once where once is enough: a launch compresses its userData once (not once to measure
// it and again to send it), and a poll sets up the clients of each CE once, not once per Run.
import { gunzipSync } from "node:zlib";
import type * as Zlib from "node:zlib";
import { beforeEach, describe, expect, it, vi } from "vitest";

const gz = vi.hoisted(() => ({ calls: 0 }));
vi.mock("node:zlib", async (importOriginal) => {
  const zlib = await importOriginal<typeof Zlib>();
  return {
    ...zlib,
    gzipSync: (...args: Parameters<typeof zlib.gzipSync>) => {
      gz.calls++;
      return zlib.gzipSync(...args);
    },
  };
});

import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import type { EnvContext } from "../../../../src/cloud/provider.js";
import type { AzureClients } from "../../../../src/cloud/azure/clients.js";
import { launchRun } from "../../../../src/cloud/azure/runs.js";
import { AZURE_USER_DATA_LIMIT_BYTES } from "../../../../src/cloud/azure/launcher.js";
import { AzureProvider } from "../../../../src/cloud/azure/provider.js";
import { resourceGroupName, vmName } from "../../../../src/cloud/azure/names.js";
import { createLogger } from "../../../../src/engine/logger.js";
import { provisionedAzure, type FakeAzure } from "./fake-azure.js";

function runOf(n: number, ce = "ce1"): Run {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { namespace: "team-a", name: `w${n}`, uid: `66666666-8888-4777-8666-${String(n).padStart(12, "0")}` },
    spec: { computeEnvironmentRef: { name: ce }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
  } as Run;
}

describe("Azure: once is enough", () => {
  let az: FakeAzure;
  let ce: ComputeEnvironment;
  let ctx: EnvContext;

  beforeEach(async () => {
    ({ az, ce, ctx } = await provisionedAzure());
    gz.calls = 0;
  });

  it("a launcher over the raw budget is gzip-compressed once per launch, and what is sent unpacks to it", async () => {
    const run = runOf(1);
    run.spec.pipeline.config = "params.x = 1 // filler line for the budget\n".repeat(1_300);
    await launchRun(az.clients(), ctx, run);
    expect(gz.calls).toBe(1);
    const put = az.calls.find((c) => c.op === "compute.virtualMachines.createOrUpdate")!;
    const sent = Buffer.from((put.args[2] as { userData: string }).userData, "base64");
    expect(sent.length).toBeLessThanOrEqual(AZURE_USER_DATA_LIMIT_BYTES);
    const script = gunzipSync(sent).toString("utf8");
    expect(Buffer.byteLength(script)).toBeGreaterThan(AZURE_USER_DATA_LIMIT_BYTES);
    expect(script).toContain("filler line for the budget");
    expect(script).toMatch(/VMFORGE_EXIT_CODE=/);
  });

  it("describeRuns sets up clients once per CE, not once per Run", async () => {
    const ce2: ComputeEnvironment = { ...ce, metadata: { ...ce.metadata, name: "ce2", uid: "0a1b2c3d-4e5f-4a6b-8c7d-0000000000c2" } };
    const runs: Run[] = [];
    for (let i = 0; i < 10; i++) {
      const runCe = i % 2 === 0 ? ce : ce2;
      const run = runOf(10 + i, runCe.metadata.name);
      const rg = resourceGroupName({ namespace: runCe.metadata.namespace!, name: runCe.metadata.name!, uid: runCe.metadata.uid! });
      const id = `/subscriptions/${az.sub}/resourceGroups/${rg}/providers/Microsoft.Compute/virtualMachines/${vmName(run.metadata.uid!)}`;
      az.put(id, { name: vmName(run.metadata.uid!), instanceView: { statuses: [{ code: "ProvisioningState/succeeded" }, { code: "PowerState/running" }] } });
      run.status = { phase: "Running", startTime: new Date().toISOString(), instance: { id } };
      runs.push(run);
    }
    const provider = new AzureProvider({ endpoints: {}, clientFactory: () => az.clients() as AzureClients });
    const clientsFor = vi.spyOn(provider, "clientsFor");
    const ceOf = (run: Run): ComputeEnvironment => (run.spec.computeEnvironmentRef.name === "ce2" ? ce2 : ce);
    const res = await provider.describeRuns({
      ce,
      credentials: { source: "secret", secretName: "team-a/creds", data: { tenantId: "tttttttt-0000-4000-8000-000000000000", clientId: "aaaaaaaa-0000-4000-8000-000000000001", clientSecret: "s" } },
      logger: createLogger({ level: "silent" }),
      runCe: ceOf,
    }, runs);
    expect(clientsFor).toHaveBeenCalledTimes(2);
    for (const r of runs) expect(res.get(r.metadata.uid!)).toMatchObject({ state: "running" });
    expect(az.ops().filter((o) => o === "compute.virtualMachines.listAll")).toHaveLength(1);
  });
});
