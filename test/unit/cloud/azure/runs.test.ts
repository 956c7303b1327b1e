// runs.ts against in-memory SDK stand-ins: the VM request, idempotency, one list per resource
// group, stopped VMs, terminate, the log cursor and the orphan sweep.
import { beforeEach, describe, expect, it } from "vitest";
import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import { CloudError, type EnvContext, type RunDescription } from "../../../../src/cloud/provider.js";
import { createLogger } from "../../../../src/engine/logger.js";
import { confirmUnplaced, describeRuns, launchRun, machineState, readRunLog, sweepOrphans, terminateRun } from "../../../../src/cloud/azure/runs.js";
import { AzureRunWatch, launcherLines } from "../../../../src/cloud/azure/observe.js";
import { azureImageReference, osDiskName, resourceGroupName, vmName } from "../../../../src/cloud/azure/names.js";
import { RestLikeError, UID, provisionedAzure, type FakeAzure } from "./fake-azure.js";

function runOf(n: number, over: Partial<Run["spec"]> = {}): Run {
  const uid = `99999999-8888-4777-8666-${String(n).padStart(12, "0")}`;
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { namespace: "team-a", name: `r${n}`, uid },
    spec: { computeEnvironmentRef: { name: "ce1" }, pipeline: { repository: "https://github.com/nextflow-io/hello", params: { greeting: "it's $(rm -rf /)" } }, ...over },
  } as Run;
}

describe("spec.azure.image as the VM's imageReference", () => {
  it("a URN becomes publisher/offer/sku/version, a resource ID an id; unset is the default image", () => {
    expect(azureImageReference("Debian:debian-12:12-gen2:0.2025")).toEqual({ publisher: "Debian", offer: "debian-12", sku: "12-gen2", version: "0.2025" });
    expect(azureImageReference("/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/nf")).toEqual({ id: "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/nf" });
    expect(azureImageReference(undefined)).toEqual({ publisher: "Canonical", offer: "0001-com-ubuntu-server-jammy", sku: "22_04-lts-gen2", version: "latest" });
  });
});

describe("Azure runs", () => {
  let az: FakeAzure;
  let ce: ComputeEnvironment;
  let ctx: EnvContext;
  const RG = resourceGroupName({ namespace: "team-a", name: "ce1", uid: UID });

  beforeEach(async () => {
    ({ az, ce, ctx } = await provisionedAzure());
    az.calls.length = 0;
  });

  it("launches one VM named from the Run UID with inline NIC, public IP and disk deleted with it", async () => {
    const run = runOf(1, { overrides: { spot: true, instanceType: "Standard_D4ds_v5", bootDiskSizeGiB: 80 } });
    const d = await launchRun(az.clients(), ctx, run);
    expect(d.state).toBe("pending");
    expect(d.instanceId).toBe(`/subscriptions/${az.sub}/resourceGroups/${RG}/providers/Microsoft.Compute/virtualMachines/${vmName(run.metadata.uid!)}`);
    expect(d.log).toMatchObject({ provider: "loganalytics", workspace: "cust-0001", table: "VmforgeRunLogs_CL" });
    const put = az.calls.find((c) => c.op === "compute.virtualMachines.createOrUpdate")!;
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a deep look into the request body
    const body = put.args[2] as Record<string, any>;
    expect(body.hardwareProfile.vmSize).toBe("Standard_D4ds_v5");
    expect(body.priority).toBe("Spot");
    expect(body.evictionPolicy).toBe("Delete");
    expect(body.billingProfile.maxPrice).toBe(-1);
    expect(body.storageProfile.osDisk).toMatchObject({ deleteOption: "Delete", diskSizeGB: 80 });
    const nic = body.networkProfile.networkInterfaceConfigurations[0];
    expect(nic.deleteOption).toBe("Delete");
    expect(nic.ipConfigurations[0].subnet.id).toBe(ce.status!.azure!.subnetId);
    expect(nic.ipConfigurations[0].publicIPAddressConfiguration).toMatchObject({ deleteOption: "Delete", sku: { name: "Standard" } });
    expect(Object.keys(body.identity.userAssignedIdentities)).toEqual([ce.status!.azure!.identityId]);
    expect(body.tags).toMatchObject({ "vmforge-run-uid": run.metadata.uid, "vmforge-ce-uid": UID, team: "a" });
    expect(body.osProfile.linuxConfiguration.disablePasswordAuthentication).toBe(true);
    // cloud-init runs customData: the bootstrap that reads the launcher from userData
    expect(Buffer.from(body.osProfile.customData as string, "base64").toString("utf8")).toContain("/metadata/instance/compute/userData?api-version=");
    expect(body.storageProfile.imageReference).toEqual({ publisher: "Canonical", offer: "0001-com-ubuntu-server-jammy", sku: "22_04-lts-gen2", version: "latest" });
    const script = Buffer.from(body.userData as string, "base64").toString("utf8");
    expect(script).toContain(`VMF_CLIENT_ID='${ce.status!.azure!.identityClientId}'`);
    expect(script).toContain(`VMF_DCR='${ce.status!.azure!.dcrImmutableId}'`);
    expect(script).toContain("'az://work/runs'");
    expect(script).toContain("it'\\''s $(rm -rf /)"); // quoted, never expanded
    expect(script).toMatch(/VMFORGE_EXIT_CODE=/);
    expect(script).toMatch(/shutdown -h now/);
  });

  it("a retried launch (after a crash) finds the same VM and never PUTs a second one", async () => {
    const run = runOf(2);
    await launchRun(az.clients(), ctx, run);
    const again = await launchRun(az.clients(), ctx, run);
    expect(az.ops().filter((o) => o === "compute.virtualMachines.createOrUpdate")).toHaveLength(1);
    expect(again.instanceId).toContain(vmName(run.metadata.uid!));
  });

  it("a first attempt PUTs without looking for an earlier attempt's VM; a later one looks first", async () => {
    await launchRun(az.clients(), ctx, runOf(4), { firstAttempt: true });
    expect(az.ops().filter((o) => o.startsWith("compute.virtualMachines."))).toEqual(["compute.virtualMachines.createOrUpdate"]);
    az.calls.length = 0;
    await launchRun(az.clients(), ctx, runOf(4));
    expect(az.ops().filter((o) => o.startsWith("compute.virtualMachines."))).toEqual(["compute.virtualMachines.get"]);
  });

  it("waits for the environment instead of launching half-configured", async () => {
    ce.status = { azure: { resourceGroup: RG } };
    await expect(launchRun(az.clients(), ctx, runOf(3))).rejects.toMatchObject({ kind: "Retryable", reason: "EnvironmentNotReady" });
    expect(az.ops()).not.toContain("compute.virtualMachines.createOrUpdate");
  });

  it("follows all Runs of a resource group with one status-only list call, and maps power states", async () => {
    const runs = Array.from({ length: 25 }, (_, i) => runOf(10 + i));
    for (const r of runs) {
      const d = await launchRun(az.clients(), ctx, r);
      r.status = { instance: { id: d.instanceId } };
    }
    az.get(runs[0]!.status!.instance!.id)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: "PowerState/running" }] };
    az.calls.length = 0;
    const res = await describeRuns(az.clients(), ctx, runs);
    expect(az.ops().filter((o) => o === "compute.virtualMachines.listAll")).toHaveLength(1);
    expect(az.ops()).not.toContain("compute.virtualMachines.list");
    expect(az.calls[0]!.args[0]).toMatchObject({ statusOnly: "true" });
    expect(res.get(runs[0]!.metadata.uid!)!.state).toBe("running");
    expect(res.get(runs[1]!.metadata.uid!)!.state).toBe("pending");
  });

  it("a stopped VM with an uploaded exit status is deleted at once and reports the exit code", async () => {
    const run = runOf(40);
    const d = await launchRun(az.clients(), ctx, run);
    run.status = { instance: { id: d.instanceId } };
    az.get(d.instanceId)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: "PowerState/stopped" }] };
    az.blobs.set(`wdstore/work/runs/.vmforge/runs/${run.metadata.uid}/exit-status`, "3\n");
    const res = await describeRuns(az.clients(), ctx, [run]);
    expect(res.get(run.metadata.uid!)).toMatchObject({ state: "shutting-down", exitCode: 3 });
    expect(az.ops()).toContain("compute.virtualMachines.delete");
    expect(az.get(d.instanceId)).toBeUndefined();
    // next poll: gone, outcome from the exit status
    const after = await describeRuns(az.clients(), ctx, [run]);
    expect(after.get(run.metadata.uid!)).toMatchObject({ state: "terminated", exitCode: 3 });
  });

  it("an uploaded exit status naming a failed set-up step gives it with the exit code, stopped or gone (BootstrapFailed)", async () => {
    const run = runOf(42);
    const plain = runOf(43);
    const d = await launchRun(az.clients(), ctx, run);
    const p = await launchRun(az.clients(), ctx, plain);
    run.status = { instance: { id: d.instanceId } };
    plain.status = { instance: { id: p.instanceId } };
    for (const id of [d.instanceId, p.instanceId]) az.get(id)!.instanceView = { statuses: [{ code: "PowerState/stopped" }] };
    az.blobs.set(`wdstore/work/runs/.vmforge/runs/${run.metadata.uid}/exit-status`, "1\nbootstrap-failed=resume-session\n");
    az.blobs.set(`wdstore/work/runs/.vmforge/runs/${plain.metadata.uid}/exit-status`, "1\n");
    const res = await describeRuns(az.clients(), ctx, [run, plain]);
    expect(res.get(run.metadata.uid!)).toMatchObject({ state: "shutting-down", exitCode: 1, bootstrapStep: "resume-session" });
    expect(res.get(plain.metadata.uid!)).toMatchObject({ state: "shutting-down", exitCode: 1 });
    expect(res.get(plain.metadata.uid!)!.bootstrapStep).toBeUndefined();
    const after = await describeRuns(az.clients(), ctx, [run]);
    expect(after.get(run.metadata.uid!)).toMatchObject({ state: "terminated", exitCode: 1, bootstrapStep: "resume-session" });
  });

  /**
   * Run `n` Running on its launched VM, and a watch with a grace window of `graceMs` on a clock the
   * test moves (`clock.now`); `look` describes the Run with that watch.
   */
  async function runningOn(n: number, graceMs: number): Promise<{ clock: { now: number }; run: Run; id: string; look: () => Promise<RunDescription> }> {
    const clock = { now: Date.parse("2026-01-01T00:00:00Z") };
    const watch = new AzureRunWatch(graceMs, () => clock.now);
    const run = runOf(n);
    const d = await launchRun(az.clients(), ctx, run);
    run.status = { phase: "Running", instance: { id: d.instanceId } };
    return { clock, run, id: d.instanceId, look: async () => (await describeRuns(az.clients(), ctx, [run], watch)).get(run.metadata.uid!)! };
  }

  it("a stopped VM without an exit status or exit line is deleted at once; its Run waits for the exit line within the grace window, then ends MachineStopped", async () => {
    const { clock, id, look } = await runningOn(41, 60_000);
    az.get(id)!.instanceView = { statuses: [{ code: "PowerState/deallocated" }] };
    const first = await look();
    // On its way, as far as anyone can tell: a timeout of the Run waits for it (outcomeDue).
    expect(first).toMatchObject({ state: "shutting-down", outcomeUnknown: true, outcomeDue: true });
    expect(first.stateReason).toMatch(/was stopped .*waiting up to 60 s/);
    expect(az.ops()).toContain("compute.virtualMachines.delete");
    expect(az.get(id)).toBeUndefined();
    // gone, within the window: still waiting (not a Spot eviction, not an outcome)
    clock.now += 59_000;
    const waiting = await look();
    expect(waiting).toMatchObject({ state: "terminated", outcomeUnknown: true, outcomeDue: true });
    expect(waiting.exitCode).toBeUndefined();
    // the window is over, and the query answered without the line: no outcome, said as MachineStopped
    clock.now += 1_000;
    const over = await look();
    expect(over).toMatchObject({ state: "terminated", noOutcomeReason: "MachineStopped" });
    expect(over.outcomeUnknown).toBeUndefined();
    expect(over.outcomeDue).toBeUndefined();
    expect(over.stateReason).toMatch(/no exit line reached Log Analytics within 60 s/);
  });

  it("a stopped VM whose deletion fails for now is reported stopped, its outcome still awaited (not a Run ended without one)", async () => {
    const { clock, run, id, look } = await runningOn(47, 60_000);
    az.get(id)!.instanceView = { statuses: [{ code: "PowerState/stopped" }] };
    az.fail("compute.virtualMachines.delete", new RestLikeError(409, "Conflict", "the VM is busy"));
    const seen = await look();
    expect(seen).toMatchObject({ state: "stopped", outcomeUnknown: true, outcomeDue: true });
    expect(seen.exitCode).toBeUndefined();
    expect(az.get(id)).toBeDefined();
    // Deleted at the next look; the line, ingested meanwhile, gives the outcome.
    clock.now += 5_000;
    az.logRows.push([new Date(clock.now).toISOString(), 3, run.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=0"]);
    const late = await look();
    expect(late).toMatchObject({ state: "shutting-down", exitCode: 0 });
    expect(az.get(id)).toBeUndefined();
  });

  it("a VM listed as being deleted: its Run's outcome is awaited, on its way (outcomeDue) within the window; not for a Run waiting for capacity or being cancelled", async () => {
    const { clock, run, id, look } = await runningOn(46, 60_000);
    az.put(id, { ...az.get(id)!, provisioningState: "Deleting", instanceView: { statuses: [{ code: "ProvisioningState/deleting" }, { code: "PowerState/stopped" }] } });
    const first = await look();
    expect(first).toMatchObject({ state: "shutting-down", outcomeUnknown: true, outcomeDue: true });
    expect(first.exitCode).toBeUndefined();
    expect(first.stateReason).toContain("being deleted");
    clock.now += 60_000;
    const over = await look();
    expect(over).toMatchObject({ state: "shutting-down", outcomeUnknown: true });
    expect(over.outcomeDue).toBeUndefined();
    for (const other of [{ ...run, status: { ...run.status, phase: "Pending" as const } }, { ...run, spec: { ...run.spec, cancel: true } }]) {
      const d = (await describeRuns(az.clients(), ctx, [other], new AzureRunWatch(60_000))).get(run.metadata.uid!)!;
      expect(d.state).toBe("shutting-down");
      expect(d.outcomeUnknown).toBeUndefined();
    }
  });

  it("a VM seen stopped, then running again (its deletion failed, started by hand): the window for its outcome closes, and its next end opens a new one", async () => {
    const { clock, id, look } = await runningOn(44, 60_000);
    const vm = az.get(id)!;
    const power = (code: string): void => void az.put(id, { ...vm, instanceView: { statuses: [{ code: "ProvisioningState/succeeded" }, { code }] } });
    power("PowerState/stopped");
    az.fail("compute.virtualMachines.delete", new RestLikeError(409, "Conflict", "the VM is busy"));
    expect(await look()).toMatchObject({ state: "stopped", outcomeDue: true });
    power("PowerState/running");
    expect((await look()).outcomeUnknown).toBeUndefined();
    // Longer than the window later, it stops again: a new window, not one already over.
    clock.now += 120_000;
    power("PowerState/stopped");
    az.fail("compute.virtualMachines.delete", new RestLikeError(409, "Conflict", "the VM is busy"));
    expect(await look()).toMatchObject({ state: "stopped", outcomeUnknown: true, outcomeDue: true });
  });

  it("an exit line ingested after the VM was seen stopped still gives the outcome", async () => {
    const { clock, run, id, look } = await runningOn(48, 600_000);
    az.get(id)!.instanceView = { statuses: [{ code: "PowerState/stopped" }] };
    expect(await look()).toMatchObject({ state: "shutting-down", outcomeUnknown: true });
    clock.now += 120_000;
    az.logRows.push([new Date(clock.now).toISOString(), 7, run.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=0"]);
    const late = await look();
    expect(late).toMatchObject({ state: "terminated", exitCode: 0 });
    expect(late.outcomeUnknown).toBeUndefined();
  });

  it("a failed launcher-lines query never ends a Run without an outcome, even after the window; a refused one is named", async () => {
    const { clock, id, look } = await runningOn(49, 10_000);
    az.store.delete(id.toLowerCase());
    az.failQuery = new RestLikeError(403, "AuthorizationFailed", "The client does not have authorization to perform action 'Microsoft.OperationalInsights/workspaces/query/read'");
    // Refused within the window: unreadable, not on its way (the Run's timeout still bounds it).
    const early = await look();
    expect(early).toMatchObject({ state: "terminated", outcomeUnknown: true, readError: { reason: "AccessDenied" } });
    expect(early.outcomeDue).toBeUndefined();
    clock.now += 60_000;
    const refused = await look();
    expect(refused).toMatchObject({ state: "terminated", outcomeUnknown: true, readError: { reason: "AccessDenied" }, readAttempted: true });
    expect(refused.outcomeDue).toBeUndefined();
    az.failQuery = undefined;
    const answered = await look();
    expect(answered.outcomeUnknown).toBeUndefined();
    expect(answered).toMatchObject({ readAttempted: true });
    expect(answered.readError).toBeUndefined();
    expect(answered.noOutcomeReason).toBeUndefined(); // gone, never seen stopped: MachineTerminated
  });

  it("a Run whose VM runs is set up until its launcher's start line is queryable: one query per CE for start and exit lines; a start seen is not asked again", async () => {
    const watch = new AzureRunWatch();
    const settingUp = [runOf(50), runOf(51), runOf(52)];
    const running = runOf(53);
    const stoppedRun = runOf(54);
    for (const r of [...settingUp, running, stoppedRun]) {
      const d = await launchRun(az.clients(), ctx, r);
      r.status = { phase: r === running ? "Running" : "Launching", instance: { id: d.instanceId }, launchedAt: new Date(Date.now() - 60_000).toISOString() };
      az.get(d.instanceId)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: r === stoppedRun ? "PowerState/stopped" : "PowerState/running" }] };
    }
    const at = new Date().toISOString();
    az.logRows.push(
      [at, 4, settingUp[0]!.metadata.uid!, "launcher", "VMFORGE_PIPELINE_STARTED"],
      [at, 3, settingUp[1]!.metadata.uid!, "launcher", "installing Docker"],
      [at, 5, settingUp[2]!.metadata.uid!, "launcher", "VMFORGE_PIPELINE_STARTED"],
      [at, 9, settingUp[2]!.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=2"],
      [at, 8, stoppedRun.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=1"],
    );
    az.queries.length = 0;
    const all = [...settingUp, running, stoppedRun];
    const res = await describeRuns(az.clients(), ctx, all, watch);
    expect(az.queries).toHaveLength(1);
    expect(az.queries[0]).toContain("VMFORGE_PIPELINE_STARTED");
    expect(az.queries[0]).toContain("VMFORGE_EXIT_CODE=");
    expect(az.queries[0]).not.toContain(running.metadata.uid!); // Running already: nothing to learn
    expect(res.get(settingUp[0]!.metadata.uid!)).toMatchObject({ state: "running", pipelineStarted: true });
    expect(res.get(settingUp[1]!.metadata.uid!)!.pipelineStarted).toBeUndefined();
    // ended while its VM still runs (its shutdown failed): the outcome is known
    expect(res.get(settingUp[2]!.metadata.uid!)).toMatchObject({ pipelineStarted: true, exitCode: 2 });
    expect(res.get(stoppedRun.metadata.uid!)).toMatchObject({ state: "shutting-down", exitCode: 1 });
    expect(res.get(running.metadata.uid!)!.pipelineStarted).toBeUndefined();

    // Next poll (the Run not yet seen Running in the cache): the start is remembered, only the one still set up is asked about.
    az.queries.length = 0;
    const again = await describeRuns(az.clients(), ctx, settingUp, watch);
    expect(again.get(settingUp[0]!.metadata.uid!)!.pipelineStarted).toBe(true);
    expect(az.queries).toHaveLength(1);
    expect(az.queries[0]).toContain(settingUp[1]!.metadata.uid!);
    expect(az.queries[0]).not.toContain(settingUp[0]!.metadata.uid!);
  });

  it("reads the start and exit lines from rows; of several exit lines the one with the highest Seq counts, whatever the rows' order", () => {
    const lines = launcherLines([["a", 1, "VMFORGE_PIPELINE_STARTED"], ["a", 2, "VMFORGE_EXIT_CODE=3 "], ["b", 1, "VMFORGE_PIPELINE_STARTED_NOT"], ["b", 2, "VMFORGE_EXIT_CODE=x"], ["c", 4, "VMFORGE_EXIT_CODE=0"]]);
    expect(lines.get("a")).toEqual({ started: true, exitCode: 3 });
    expect(lines.get("b")).toEqual({ started: false });
    expect(lines.get("c")).toEqual({ started: false, exitCode: 0 });
    expect(launcherLines([["d", 5, "VMFORGE_BOOTSTRAP_FAILED=pre-run-script"], ["d", 6, "VMFORGE_EXIT_CODE=1"]]).get("d")).toEqual({ started: false, exitCode: 1, bootstrapStep: "pre-run-script" });
    expect(launcherLines([["e", 9, "VMFORGE_EXIT_CODE=2"], ["e", 3, "VMFORGE_EXIT_CODE=0"]]).get("e")).toEqual({ started: false, exitCode: 2 });
    expect(launcherLines([["e", 3, "VMFORGE_EXIT_CODE=0"], ["e", 9, "VMFORGE_EXIT_CODE=2"]]).get("e")).toEqual({ started: false, exitCode: 2 });
  });

  it("only the launcher's own stream is believed: a pipeline printing a start or exit line changes nothing", async () => {
    const watch = new AzureRunWatch();
    const spoof = runOf(56);
    const d = await launchRun(az.clients(), ctx, spoof);
    spoof.status = { phase: "Launching", instance: { id: d.instanceId }, launchedAt: new Date(Date.now() - 60_000).toISOString() };
    az.get(d.instanceId)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: "PowerState/running" }] };
    const at = new Date().toISOString();
    az.logRows.push([at, 3, spoof.metadata.uid!, "pipeline", "VMFORGE_PIPELINE_STARTED"], [at, 4, spoof.metadata.uid!, "pipeline", "VMFORGE_EXIT_CODE=0"]);
    az.queries.length = 0;
    const up = (await describeRuns(az.clients(), ctx, [spoof], watch)).get(spoof.metadata.uid!)!;
    expect(az.queries[0]).toContain("Stream == 'launcher'");
    expect(up.pipelineStarted).toBeUndefined();
    expect(up.exitCode).toBeUndefined();
    // the launcher's own lines: the start, then the real end (the pipeline's printed line before it counts for nothing)
    az.logRows.push([at, 5, spoof.metadata.uid!, "launcher", "VMFORGE_PIPELINE_STARTED"], [at, 8, spoof.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=3"], [at, 9, spoof.metadata.uid!, "pipeline", "VMFORGE_EXIT_CODE=0"]);
    az.get(d.instanceId)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: "PowerState/stopped" }] };
    const ended = (await describeRuns(az.clients(), ctx, [spoof], watch)).get(spoof.metadata.uid!)!;
    expect(ended).toMatchObject({ state: "shutting-down", exitCode: 3 });
  });

  it("without an exit status, a set-up step named in the log before the exit line gives BootstrapFailed", async () => {
    const watch = new AzureRunWatch();
    const run = runOf(55);
    const d = await launchRun(az.clients(), ctx, run);
    run.status = { phase: "Launching", instance: { id: d.instanceId } };
    az.get(d.instanceId)!.instanceView = { statuses: [{ code: "PowerState/stopped" }] };
    const at = new Date().toISOString();
    az.logRows.push([at, 5, run.metadata.uid!, "launcher", "VMFORGE_BOOTSTRAP_FAILED=docker"], [at, 6, run.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=1"]);
    const res = (await describeRuns(az.clients(), ctx, [run], watch)).get(run.metadata.uid!)!;
    expect(res).toMatchObject({ state: "shutting-down", exitCode: 1, bootstrapStep: "docker" });
    expect(az.queries[az.queries.length - 1]).toContain("VMFORGE_BOOTSTRAP_FAILED=");
  });

  it("without an uploaded exit status the exit line in Log Analytics gives the outcome: one query for all such Runs; a stopped VM is then deleted", async () => {
    const stoppedRun = runOf(45);
    const goneRun = runOf(46, { overrides: { spot: true } });
    const quiet = runOf(47);
    const ds = await Promise.all([stoppedRun, goneRun, quiet].map(async (r) => {
      const d = await launchRun(az.clients(), ctx, r);
      r.status = { instance: { id: d.instanceId }, launchedAt: new Date(Date.now() - 60_000).toISOString() };
      return d;
    }));
    az.get(ds[0]!.instanceId)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: "PowerState/stopped" }] };
    az.store.delete(ds[1]!.instanceId.toLowerCase());
    az.get(ds[2]!.instanceId)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: "PowerState/stopped" }] };
    const at = new Date().toISOString();
    az.logRows.push([at, 9, stoppedRun.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=4"], [at, 12, goneRun.metadata.uid!, "launcher", "VMFORGE_EXIT_CODE=0"], [at, 3, quiet.metadata.uid!, "pipeline", "still running"]);
    az.queries.length = 0;
    const res = await describeRuns(az.clients(), ctx, [stoppedRun, goneRun, quiet]);
    expect(res.get(stoppedRun.metadata.uid!)).toMatchObject({ state: "shutting-down", exitCode: 4 });
    // the Spot VM is gone, but its pipeline ended: not an eviction
    expect(res.get(goneRun.metadata.uid!)).toMatchObject({ state: "terminated", exitCode: 0 });
    expect(res.get(goneRun.metadata.uid!)!.interrupted).toBeUndefined();
    // no exit line yet: deleted all the same (it keeps costing); its outcome is awaited
    expect(res.get(quiet.metadata.uid!)).toMatchObject({ state: "shutting-down", outcomeUnknown: true });
    expect(res.get(quiet.metadata.uid!)!.exitCode).toBeUndefined();
    expect(az.queries.filter((q) => q.includes("RunUid in ("))).toHaveLength(1);
    expect(az.get(ds[0]!.instanceId)).toBeUndefined();
    expect(az.get(ds[2]!.instanceId)).toBeUndefined();
  });

  it("a Spot VM gone without an exit status says it was evicted", async () => {
    const run = runOf(42, { overrides: { spot: true } });
    const d = await launchRun(az.clients(), ctx, run);
    run.status = { instance: { id: d.instanceId } };
    az.store.delete(d.instanceId.toLowerCase());
    const res = await describeRuns(az.clients(), ctx, [run]);
    expect(res.get(run.metadata.uid!)).toMatchObject({ state: "terminated", interrupted: true, interruptionReason: "SpotEvicted" });
  });

  it("a VM Azure accepted but could not allocate is reported at every look and left for its Run; a launch that finds it still there deletes it and waits again", async () => {
    const run = runOf(44);
    const d = await launchRun(az.clients(), ctx, run);
    run.status = { instance: { id: d.instanceId } };
    const vm = az.get(d.instanceId)!;
    vm.provisioningState = "Failed";
    vm.instanceView = { statuses: [{ code: "ProvisioningState/failed/AllocationFailed", message: "Allocation failed." }] };
    for (let look = 0; look < 2; look++) {
      const res = await describeRuns(az.clients(), ctx, [run]);
      expect(res.get(run.metadata.uid!)).toMatchObject({ launchFailure: { reason: "AllocationFailed", message: expect.stringContaining("Allocation failed.") } });
    }
    expect(az.ops()).not.toContain("compute.virtualMachines.delete");
    expect(az.get(d.instanceId)).toBeDefined();
    // Its Run waited for capacity (its own delete did not go through): the next attempt deletes the VM and waits again.
    run.status = { ...run.status, phase: "Pending", reason: "LaunchRetrying", capacityWait: { refusals: 1, notBefore: new Date().toISOString() } };
    const err = await launchRun(az.clients(), ctx, run, { capacityReason: "AllocationFailed" }).catch((e: unknown) => e);
    // The VM found is named on the refusal (the Run records it while it waits, see CloudError.unplacedId),
    // and the refusal is the one the Run waits for (known: not counted again).
    expect(err).toMatchObject({ capacity: true, reason: "AllocationFailed", unplacedId: d.instanceId, known: true });
    expect(az.ops().filter((o) => o.startsWith("compute.virtualMachines.")).slice(-2)).toEqual(["compute.virtualMachines.get", "compute.virtualMachines.delete"]);
    expect(az.get(d.instanceId)).toBeUndefined();
    // A delete that fails for now is said in the wait (sent again at the next attempt); one
    // refused for good (no delete permission) is not a wait.
    const failedVm = { ...vm, provisioningState: "Failed", instanceView: { statuses: [{ code: "ProvisioningState/failed/AllocationFailed", message: "Allocation failed." }] } };
    az.put(d.instanceId, failedVm);
    az.fail("compute.virtualMachines.delete", new RestLikeError(409, "Conflict", "the VM is busy"));
    // No wait known to the operator (the first answer lost, say): a refusal of its own.
    await expect(launchRun(az.clients(), ctx, run)).rejects.toMatchObject({ capacity: true, message: expect.stringContaining("could not be deleted yet"), unplacedId: d.instanceId, known: false });
    // Still being deleted, under a known wait: the same refusal, waited for.
    az.put(d.instanceId, { ...failedVm, provisioningState: "Deleting" });
    await expect(launchRun(az.clients(), ctx, run, { capacityReason: "ZonalAllocationFailed" })).rejects.toMatchObject({ capacity: true, reason: "ZonalAllocationFailed", message: expect.stringContaining("still being deleted"), known: true });
    // Also with no wait known to the operator (an answer lost, an upgrade): a VM being deleted is no
    // new attempt's, so its refusal is the earlier one, with Azure's usual reason.
    await expect(launchRun(az.clients(), ctx, run)).rejects.toMatchObject({ capacity: true, reason: "AllocationFailed", message: expect.stringContaining("still being deleted"), unplacedId: d.instanceId, known: true });
    az.put(d.instanceId, failedVm);
    az.fail("compute.virtualMachines.delete", new RestLikeError(403, "AuthorizationFailed", "The client 'x' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/delete' over scope 's'"));
    await expect(launchRun(az.clients(), ctx, run)).rejects.toMatchObject({ capacity: false, kind: "Terminal" });
    az.store.delete(d.instanceId.toLowerCase());
    // Found still failed for want of capacity with no wait on record (a resumed launch): the same,
    // with the VM's own reason.
    delete run.status.capacityWait;
    az.put(d.instanceId, { ...vm, provisioningState: "Failed", instanceView: { statuses: [{ code: "ProvisioningState/failed/ZonalAllocationFailed", message: "Allocation failed." }] } });
    await expect(launchRun(az.clients(), ctx, run)).rejects.toMatchObject({ capacity: true, reason: "ZonalAllocationFailed" });
    expect(az.get(d.instanceId)).toBeUndefined();
    // A VM that failed for another reason is not taken for a capacity refusal: returned as found.
    az.put(d.instanceId, { ...vm, provisioningState: "Failed", instanceView: { statuses: [{ code: "ProvisioningState/failed/OSProvisioningTimedOut", message: "timed out" }] } });
    await expect(launchRun(az.clients(), ctx, run)).resolves.toMatchObject({ instanceId: d.instanceId });
    expect(az.get(d.instanceId)).toBeDefined();
  });

  it("confirmUnplaced: only a GET that finds the Run's VM failed for want of capacity confirms a look's refusal (not a VM made since under its name, nor one gone)", async () => {
    const run = runOf(45);
    const d = await launchRun(az.clients(), ctx, run);
    run.status = { instance: { id: d.instanceId } };
    // Being made (say, the next attempt's VM, while a list still shows the failed one).
    expect(await confirmUnplaced(az.clients(), ctx, run)).toBe(false);
    const vm = az.get(d.instanceId)!;
    az.put(d.instanceId, { ...vm, provisioningState: "Failed", instanceView: { statuses: [{ code: "ProvisioningState/failed/OSProvisioningTimedOut", message: "timed out" }] } });
    expect(await confirmUnplaced(az.clients(), ctx, run)).toBe(false);
    az.put(d.instanceId, { ...vm, provisioningState: "Failed", instanceView: { statuses: [{ code: "ProvisioningState/failed/AllocationFailed", message: "Allocation failed." }] } });
    expect(await confirmUnplaced(az.clients(), ctx, run)).toBe(true);
    az.store.delete(d.instanceId.toLowerCase());
    expect(await confirmUnplaced(az.clients(), ctx, run)).toBe(false);
    expect(az.ops()).not.toContain("compute.virtualMachines.delete");
  });

  it("terminate deletes the VM (forced); a missing VM is done", async () => {
    const run = runOf(43);
    await launchRun(az.clients(), ctx, run);
    await terminateRun(az.clients(), ctx, run);
    await terminateRun(az.clients(), ctx, run);
    const del = az.calls.filter((c) => c.op === "compute.virtualMachines.delete");
    expect(del).toHaveLength(2);
    expect(del[0]!.args[2]).toMatchObject({ forceDeletion: true });
  });

  it("reads the log by the launcher's line sequence: batches queryable out of order or twice are neither lost nor doubled", async () => {
    const run = runOf(50);
    const uid = run.metadata.uid!;
    const now = Date.now();
    const at = (ms: number) => new Date(now + ms).toISOString();
    az.logRows.push([at(0), 1, uid, "pipeline", "one"], [at(0), 2, uid, "pipeline", "two"], [at(0), 1, "other", "pipeline", "x"]);
    // a later batch is queryable before the one before it
    az.logRows.push([at(2000), 5, uid, "launcher", "five"]);
    const a = await readRunLog(az.clients(), ctx, run);
    expect(a.lines).toEqual(["one", "two"]);
    const a2 = await readRunLog(az.clients(), ctx, run, a.next);
    expect(a2.lines).toEqual([]);
    expect(a2.next).toBe(a.next);
    // the missing batch shows up, and an earlier batch is held twice (a retried upload)
    az.logRows.push([at(1000), 3, uid, "pipeline", "three"], [at(1000), 4, uid, "pipeline", "VMFORGE_EXIT_CODE=0"], [at(0), 2, uid, "pipeline", "two"], [at(1000), 3, uid, "pipeline", "three"]);
    const b = await readRunLog(az.clients(), ctx, run, a.next);
    expect(b.lines).toEqual(["three", "VMFORGE_EXIT_CODE=0", "five"]);
    const c = await readRunLog(az.clients(), ctx, run, b.next);
    expect(c.lines).toEqual([]);
    expect(c.next).toBe(b.next);
    expect(az.queries[0]).toContain("VmforgeRunLogs_CL | where RunUid == ");
  });

  it("passes over a gap only once its lines are long overdue, and says so", async () => {
    const run = runOf(51);
    const uid = run.metadata.uid!;
    const old = Date.now() - 11 * 60_000;
    az.logRows.push([new Date(old).toISOString(), 1, uid, "pipeline", "one"], [new Date(old + 1000).toISOString(), 4, uid, "pipeline", "four"]);
    const a = await readRunLog(az.clients(), ctx, run);
    expect(a.lines).toEqual(["one", "[vmforge: log lines 2-3 never reached Log Analytics]", "four"]);
  });

  it("sweeps VMs and loose NICs of Runs that no longer exist, and nothing else", async () => {
    const live = runOf(60);
    const dead = runOf(61);
    await launchRun(az.clients(), ctx, live);
    await launchRun(az.clients(), ctx, dead);
    az.put(`/subscriptions/${az.sub}/resourceGroups/${RG}/providers/Microsoft.Network/networkInterfaces/loose`, { name: "loose", tags: { "vmforge-run-uid": "gone-uid" } });
    az.put(`/subscriptions/${az.sub}/resourceGroups/${RG}/providers/Microsoft.Network/networkInterfaces/theirs`, { name: "theirs", tags: {} });
    const base = `/subscriptions/${az.sub}/resourceGroups/${RG}/providers`;
    const gone = "11111111-2222-4333-8444-555555555555";
    az.put(`${base}/Microsoft.Network/publicIPAddresses/loose-ip`, { name: "loose-ip", tags: { "vmforge-run-uid": gone } });
    az.put(`${base}/Microsoft.Network/publicIPAddresses/used-ip`, { name: "used-ip", tags: { "vmforge-run-uid": gone }, ipConfiguration: { id: "x" } });
    az.put(`${base}/Microsoft.Compute/disks/${osDiskName(gone)}`, { name: osDiskName(gone) });
    az.put(`${base}/Microsoft.Compute/disks/${osDiskName(live.metadata.uid!)}`, { name: osDiskName(live.metadata.uid!) });
    az.put(`${base}/Microsoft.Compute/disks/their-disk`, { name: "their-disk" });
    const swept = await sweepOrphans(az.clients(), ctx, new Set([live.metadata.uid!]));
    expect(swept.sort()).toEqual([vmName(dead.metadata.uid!), "loose", "loose-ip", osDiskName(gone)].sort());
    expect(az.get(`${base}/Microsoft.Compute/disks/${osDiskName(gone)}`)).toBeUndefined();
    expect(az.get(`${base}/Microsoft.Compute/disks/${osDiskName(live.metadata.uid!)}`)).toBeDefined();
    expect(az.get(`${base}/Microsoft.Compute/disks/their-disk`)).toBeDefined();
    expect(az.get(`${base}/Microsoft.Network/publicIPAddresses/used-ip`)).toBeDefined();
    expect(az.get(`/subscriptions/${az.sub}/resourceGroups/${RG}/providers/Microsoft.Compute/virtualMachines/${vmName(live.metadata.uid!)}`)).toBeDefined();
    expect(az.get(`/subscriptions/${az.sub}/resourceGroups/${RG}/providers/Microsoft.Network/networkInterfaces/theirs`)).toBeDefined();
  });

  it("without the disk permissions (an addition to the product's role) the sweep still removes VMs, NICs and IPs, and says what it skipped", async () => {
    const dead = runOf(62);
    await launchRun(az.clients(), ctx, dead);
    const base = `/subscriptions/${az.sub}/resourceGroups/${RG}/providers`;
    const gone = "11111111-2222-4333-8444-666666666666";
    az.put(`${base}/Microsoft.Network/publicIPAddresses/lost-ip`, { name: "lost-ip", tags: { "vmforge-run-uid": gone } });
    az.put(`${base}/Microsoft.Compute/disks/${osDiskName(gone)}`, { name: osDiskName(gone) });
    const denied = (action: string) => new RestLikeError(403, "AuthorizationFailed", `The client 'x' does not have authorization to perform action '${action}' over scope 's'`);
    const warned: string[] = [];
    const logger = createLogger({ level: "silent" });
    logger.warn = ((o: unknown, m?: string) => void warned.push(`${m ?? ""} ${JSON.stringify(o)}`)) as typeof logger.warn;
    // The list is refused: no disk is known, the rest is swept.
    az.fail("compute.disks.listByResourceGroup", denied("Microsoft.Compute/disks/read"));
    let swept = await sweepOrphans(az.clients(), { ...ctx, logger }, new Set());
    expect(swept).toEqual(expect.arrayContaining([vmName(dead.metadata.uid!), "lost-ip"]));
    expect(swept).not.toContain(osDiskName(gone));
    expect(az.get(`${base}/Microsoft.Compute/virtualMachines/${vmName(dead.metadata.uid!)}`)).toBeUndefined();
    expect(az.get(`${base}/Microsoft.Network/publicIPAddresses/lost-ip`)).toBeUndefined();
    expect(warned.join("\n")).toContain("Microsoft.Compute/disks/read");
    // Listed, but the delete is refused: it stays, and the sweep does not fail.
    az.fail("compute.disks.delete", denied("Microsoft.Compute/disks/delete"));
    swept = await sweepOrphans(az.clients(), { ...ctx, logger }, new Set());
    expect(az.get(`${base}/Microsoft.Compute/disks/${osDiskName(gone)}`)).toBeDefined();
    expect(warned.join("\n")).toContain("Microsoft.Compute/disks/delete");
    // With the permission, it goes.
    await sweepOrphans(az.clients(), ctx, new Set());
    expect(az.get(`${base}/Microsoft.Compute/disks/${osDiskName(gone)}`)).toBeUndefined();
  });

  it("a VM delete Azure refuses for now does not stop the rest of the sweep: the loose NIC, IP and disk go, then the refusal is thrown (Retryable), and the next sweep deletes the VM", async () => {
    const dead = runOf(63);
    await launchRun(az.clients(), ctx, dead);
    const base = `/subscriptions/${az.sub}/resourceGroups/${RG}/providers`;
    const gone = "11111111-2222-4333-8444-777777777777";
    az.put(`${base}/Microsoft.Network/networkInterfaces/left-nic`, { name: "left-nic", tags: { "vmforge-run-uid": gone } });
    az.put(`${base}/Microsoft.Network/publicIPAddresses/left-ip`, { name: "left-ip", tags: { "vmforge-run-uid": gone } });
    az.put(`${base}/Microsoft.Compute/disks/${osDiskName(gone)}`, { name: osDiskName(gone) });
    az.fail("compute.virtualMachines.delete", new RestLikeError(409, "Conflict", "the VM is busy"));
    const refused = await sweepOrphans(az.clients(), ctx, new Set()).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(CloudError);
    expect(refused).toMatchObject({ kind: "Retryable", reason: "Conflict" });
    expect(az.get(`${base}/Microsoft.Network/networkInterfaces/left-nic`)).toBeUndefined();
    expect(az.get(`${base}/Microsoft.Network/publicIPAddresses/left-ip`)).toBeUndefined();
    expect(az.get(`${base}/Microsoft.Compute/disks/${osDiskName(gone)}`)).toBeUndefined();
    expect(az.get(`${base}/Microsoft.Compute/virtualMachines/${vmName(dead.metadata.uid!)}`)).toBeDefined();
    expect(await sweepOrphans(az.clients(), ctx, new Set())).toEqual([vmName(dead.metadata.uid!)]);
    expect(az.get(`${base}/Microsoft.Compute/virtualMachines/${vmName(dead.metadata.uid!)}`)).toBeUndefined();
  });

  it("a sweep refused both for now and for good throws the passing refusal, so it is tried again soon", async () => {
    const a = runOf(64);
    const b = runOf(65);
    await launchRun(az.clients(), ctx, a);
    await launchRun(az.clients(), ctx, b);
    az.fail("compute.virtualMachines.delete",
      new RestLikeError(403, "AuthorizationFailed", "The client 'x' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/delete' over scope 's'"),
      new RestLikeError(409, "Conflict", "the VM is busy"));
    const refused = await sweepOrphans(az.clients(), ctx, new Set()).catch((e: unknown) => e);
    expect(refused).toMatchObject({ kind: "Retryable", reason: "Conflict" });
  });

  it("maps instance view codes", () => {
    expect(machineState([{ code: "ProvisioningState/deleting" }, { code: "PowerState/running" }])).toBe("shutting-down");
    expect(machineState([{ code: "PowerState/starting" }])).toBe("pending");
    expect(machineState([{ code: "PowerState/deallocating" }])).toBe("stopping");
    expect(machineState(undefined, "Creating")).toBe("pending");
  });

  it("a Run that names another to resume from is launched with that Run's session location (the launcher reads it and resumes)", async () => {
    const run = runOf(9, { pipeline: { repository: "https://github.com/nextflow-io/hello", resume: true, resumeFrom: "earlier" } });
    await launchRun(az.clients(), ctx, run);
    const put = az.calls.find((c) => c.op === "compute.virtualMachines.createOrUpdate")!;
    const script = Buffer.from((put.args[2] as { userData: string }).userData, "base64").toString("utf8");
    const wd = ce.spec.azure!.workDir!.replace(/\/+$/, "");
    expect(script).toContain(`VMF_RESUME_FROM_URI='${wd}/.vmforge/sessions/team-a/earlier'`);
    expect(script).toContain(`VMF_SESSION_URI='${wd}/.vmforge/sessions/team-a/r9'`);
    // The plain -resume flag is not given: the launcher adds `-resume <session>` itself.
    expect(script).not.toMatch(/VMF_NXF_ARGS=\(.*'-resume'/);
  });
});
