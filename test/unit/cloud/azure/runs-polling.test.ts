// What one poll of Azure Runs reads, against in-memory SDK stand-ins: no outcome read for a Run
// waiting for capacity.
import { beforeEach, describe, expect, it } from "vitest";
import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import type { EnvContext } from "../../../../src/cloud/provider.js";
import { azureTuning, provisionAzureEnvironment } from "../../../../src/cloud/azure/environment.js";
import { describeRuns, launchRun } from "../../../../src/cloud/azure/runs.js";
import { AzureRunWatch } from "../../../../src/cloud/azure/observe.js";
import { createLogger } from "../../../../src/engine/logger.js";
import { FakeAzure, sampleAzureCe } from "./fake-azure.js";

function runOf(n: number): Run {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { namespace: "team-a", name: `p${n}`, uid: `77777777-8888-4777-8666-${String(n).padStart(12, "0")}` },
    spec: { computeEnvironmentRef: { name: "ce1" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
  } as Run;
}

const reads = (az: FakeAzure): { blobs: number; queries: number } => ({
  blobs: az.ops().filter((o) => o === "blobs.read").length,
  queries: az.ops().filter((o) => o === "logsQuery.queryWorkspace").length,
});

describe("Azure run polling: what each poll reads", () => {
  let az: FakeAzure;
  let ce: ComputeEnvironment;
  let ctx: EnvContext;
  let now: number;

  beforeEach(async () => {
    azureTuning.principalRetryMs = [1];
    az = new FakeAzure();
    ce = sampleAzureCe(az.sub);
    ctx = { ce, credentials: { source: "secret", secretName: "team-a/creds", data: {} }, logger: createLogger({ level: "silent" }) };
    const obs = await provisionAzureEnvironment(az.clients(), ctx);
    ce.status = { azure: obs.status.azure! };
    now = Date.parse("2026-01-01T00:00:00Z");
  });

  /** A launched Run with its VM in the given power state (or gone: undefined) and the given status. */
  async function launched(n: number, power: string | undefined, status: Run["status"]): Promise<Run> {
    const run = runOf(n);
    const d = await launchRun(az.clients(), ctx, run);
    run.status = { ...status, instance: { ...(status?.instance ?? {}), id: d.instanceId } };
    if (power === undefined) az.store.delete(d.instanceId.toLowerCase());
    else az.get(d.instanceId)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: `PowerState/${power}` }] };
    return run;
  }

  it("a Run waiting for capacity (Pending, its unplaced VM gone) or not launched yet gets no exit status read and no log query", async () => {
    const waiting = await launched(1, undefined, { phase: "Pending", reason: "AllocationFailed", instance: { id: "", state: "shutting-down" } });
    const fresh = runOf(2);
    fresh.status = { phase: "Launching" };
    az.calls.length = 0;
    const watch = new AzureRunWatch(60_000, () => now);
    for (let poll = 0; poll < 3; poll++) {
      const res = await describeRuns(az.clients(), ctx, [waiting, fresh], watch);
      expect(res.get(waiting.metadata.uid!)).toMatchObject({ state: "terminated" });
      expect(res.get(waiting.metadata.uid!)!.outcomeUnknown).toBeUndefined();
      expect(res.get(fresh.metadata.uid!)).toBeUndefined();
      now += 5_000;
    }
    expect(reads(az)).toEqual({ blobs: 0, queries: 0 });
    // A launched Run whose VM is gone still has its outcome looked for (the contrast).
    const gone = await launched(3, undefined, { phase: "Running", startTime: new Date(now).toISOString() });
    az.calls.length = 0;
    await describeRuns(az.clients(), ctx, [waiting, gone], watch);
    expect(reads(az)).toEqual({ blobs: 1, queries: 1 });
    expect(az.queries.at(-1)).toContain(gone.metadata.uid!);
    expect(az.queries.at(-1)).not.toContain(waiting.metadata.uid!);
  });
});
