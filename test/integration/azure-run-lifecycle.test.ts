/**
 * The life of Azure Runs through the OPERATOR on the real kube-apiserver and the Azure emulator
 * (issue 11): a crash right after the VM PUT, timeout, deletion mid-run, Spot eviction, and
 * capacity or quota refusals. The operator's principal holds exactly the seed's roles (+ Reader
 * and the documented additions). The work directory is in Azurite, so a pipeline's end is played
 * as a VM would: the exit status uploaded, then the OS shut down.
 *
 * The tests run concurrently (the timeout test alone needs the minimum Run timeout of 1m); each
 * uses its own Runs, VM sizes and capacity faults.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizationManagementClient } from "@azure/arm-authorization";
import { ResourceManagementClient } from "@azure/arm-resources";
import { LogsQueryClient } from "@azure/monitor-query-logs";
import { streamRunLogs } from "../../src/cli/logs.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { CloudError, type CloudProvider, type EnvContext, type LaunchHints, type RunDescription } from "../../src/cloud/provider.js";
import { createLogger } from "../../src/engine/logger.js";
import { LOG_STREAM, LOG_TABLE, osDiskName, resourceGroupName, vmName } from "../../src/cloud/azure/names.js";
import { FINALIZER } from "../../src/controllers/shared.js";
import { SWEEP_RETRY_BASE_MS } from "../../src/controllers/computeenvironment/reconciler.js";
import { launchDecided } from "../../src/controllers/run/phases.js";
import { ANNOTATION_LAUNCH_DECIDED } from "../../src/api/constants.js";
import { removeFinalizer } from "../../src/engine/finalizers.js";
import { startOperator, waitFor, type RunningOperator } from "../support/operator.js";
import { azureClientOptions, azureControl, azureEndpoint, azureTestCredential, kubeconfigPath, trustAzureEmulator } from "../harness/helpers.js";
import type { AzureEmulatorControl } from "../azure-emulator/control.js";
import { LOCATION, ceBody, cond, grantOperatorRoles, grantPhase, operatorPrincipal, putSecret, secretCredentials, waitReady } from "../support/azure-env.js";
import { setupAzureRunsWithCe, type AzureRunsEnv } from "../support/azure-runs.js";
import { EventResource, type EventObject } from "../../src/engine/events.js";

let env: AzureRunsEnv;
let ce: ComputeEnvironment;
const CE = "life";

beforeAll(async () => {
  ({ env, ce } = await setupAzureRunsWithCe({ prefix: "azlife", principal: "vmforge-life", blob: true, ce: CE }));
}, 120_000);

afterAll(async () => {
  await env?.stop();
});


async function phase(name: string, want: string, timeoutMs = 60_000, ns = env.ns): Promise<Run> {
  return waitFor(`Run ${name} ${want}`, async () => {
    const r = await env.getRun(name, ns);
    if (r?.status?.phase === want) return r;
    throw new Error(`${r?.status?.phase ?? "-"}/${r?.status?.reason ?? "-"}: ${r?.status?.message ?? ""}`);
  }, timeoutMs, 200);
}

/** The Run with its VM up and being set up (Launching, SettingUp): its launcher has not said the pipeline started. */
async function settingUp(name: string, ns = env.ns, timeoutMs = 60_000): Promise<Run> {
  return waitFor(`Run ${name} SettingUp`, async () => {
    const r = await env.getRun(name, ns);
    if (r?.status?.phase === "Launching" && r.status.reason === "SettingUp" && r.status.instance?.id) return r;
    throw new Error(`${r?.status?.phase ?? "-"}/${r?.status?.reason ?? "-"}: ${r?.status?.message ?? ""}`);
  }, timeoutMs, 200);
}

/** The Run set up, then its launcher's start line shipped: Running once Log Analytics has it. */
async function started(name: string, runCe: ComputeEnvironment = ce, ns = env.ns): Promise<Run> {
  await env.startPipeline(runCe, await settingUp(name, ns));
  return phase(name, "Running", 60_000, ns);
}

/** Resources of the CE's resource group whose name starts with the Run's VM name (VM, NIC, public IP, OS disk). */
async function runResources(run: Run, ceUid = ce.metadata.uid!, ns = env.ns, ceName = CE): Promise<string[]> {
  const rm = new ResourceManagementClient(await azureTestCredential(), env.info.subscriptionId, azureClientOptions());
  const rg = resourceGroupName({ namespace: ns, name: ceName, uid: ceUid });
  const out: string[] = [];
  for await (const r of rm.resources.listByResourceGroup(rg)) if (r.name?.startsWith(vmName(run.metadata.uid!))) out.push(`${r.type}/${r.name}`);
  return out;
}

/**
 * A namespace and an operator of the test's own (with `provider`, by default the real one), and a
 * Ready CE there: the test's Runs meet no other test's operator, and its faults no other Run.
 */
async function ownOperatorAndCe(prefix: string, ceName: string, provider: CloudProvider = env.provider(), pollIntervalMs = 1_000): Promise<{ ns: string; op: RunningOperator; ce: ComputeEnvironment }> {
  const ns = await env.extraNamespace(prefix);
  const op = await startOperator(kubeconfigPath(), new Map([["azure", provider]]), { namespaces: [ns], pollIntervalMs });
  try {
    await env.kube.create(ComputeEnvironmentResource, ceBody(ns, ceName, { storageAccount: env.storageAccount }));
    return { ns, op, ce: await waitReady(env.kube, ns, ceName) };
  } catch (e) {
    await op.stop();
    throw e;
  }
}

/**
 * A Run ("old") set up by an operator of its own under CE `ceName`, then the operator stopped and
 * the CE removed by force (finalizer taken off) while none runs.
 */
async function removedWhileDown(prefix: string, ceName: string): Promise<{ ns: string; before: ComputeEnvironment; old: Run }> {
  const { ns, op, ce: before } = await ownOperatorAndCe(prefix, ceName);
  try {
    await env.kube.create(RunResource, env.runBody("old", ceName, {}, ns));
    const old = await settingUp("old", ns);
    // Stopped before the removal (the finally below stops it on a failed set-up; stop is idempotent).
    await op.stop();
    await env.kube.delete(ComputeEnvironmentResource, ns, ceName);
    await env.kube.patch(ComputeEnvironmentResource, ns, ceName, { metadata: { finalizers: null } }, "merge");
    await waitFor(`CE ${ceName} gone`, async () => (await env.kube.get(ComputeEnvironmentResource, ns, ceName)) === undefined, 30_000, 200);
    return { ns, before, old };
  } finally {
    await op.stop();
  }
}

/**
 * What a Run `goneUid` that no longer exists may leave in the CE's resource group without a VM
 * (made as the emulator's admin): a NIC holding one public IP (left-ip-held), another public IP
 * (left-ip), all carrying its tags, and its OS disk.
 */
async function leaveOrphans(rm: ResourceManagementClient, rg: string, ce: ComputeEnvironment, goneUid: string): Promise<void> {
  const base = `subscriptions/${env.info.subscriptionId}/resourceGroups/${rg}/providers`;
  const tags = { "vmforge-run-uid": goneUid, "vmforge-ce-uid": ce.metadata.uid! };
  await rm.resources.beginCreateOrUpdateByIdAndWait(`${base}/Microsoft.Network/publicIPAddresses/left-ip`, "2023-09-01", { location: LOCATION, tags, sku: { name: "Standard" }, properties: { publicIPAllocationMethod: "Static" } });
  const held = await rm.resources.beginCreateOrUpdateByIdAndWait(`${base}/Microsoft.Network/publicIPAddresses/left-ip-held`, "2023-09-01", { location: LOCATION, tags, sku: { name: "Standard" }, properties: { publicIPAllocationMethod: "Static" } });
  await rm.resources.beginCreateOrUpdateByIdAndWait(`${base}/Microsoft.Network/networkInterfaces/left-nic`, "2023-09-01",
    { location: LOCATION, tags, properties: { ipConfigurations: [{ name: "ipconfig", properties: { subnet: { id: ce.status!.azure!.subnetId }, publicIPAddress: { id: held.id } } }] } });
  await rm.resources.beginCreateOrUpdateByIdAndWait(`${base}/Microsoft.Compute/disks/${osDiskName(goneUid)}`, "2023-04-02",
    { location: LOCATION, sku: { name: "StandardSSD_LRS" }, properties: { creationData: { createOption: "Empty" }, diskSizeGB: 10 } });
}

/** PUTs of a Run's VM in the emulator's request log since `since`. */
async function vmPuts(run: Run, since: number): Promise<number> {
  const log = (await azureControl().requests(since)).value;
  const tail = `/virtualMachines/${vmName(run.metadata.uid!)}`.toLowerCase();
  return log.filter((r) => r.method === "PUT" && r.path.toLowerCase().endsWith(tail)).length;
}

/** The phase/reason pairs a Run went through, as reads saw them (each change once), to say on a timeout. */
function phasesSeen(): { seen: string[]; note: (r: Run | undefined) => void } {
  const seen: string[] = [];
  return {
    seen,
    note: (r) => {
      const p = `${r?.status?.phase}/${r?.status?.reason}`;
      if (seen[seen.length - 1] !== p) seen.push(p);
    },
  };
}

/**
 * Its own operator (with `provider`, polling every `pollIntervalMs`) and CE, where VMs of `vmSize`
 * (a size no other test uses) are refused a place `times` times; `since` marks the emulator's
 * request log before the first launch.
 */
async function refused(prefix: string, ceName: string, vmSize: string, o: { times?: number; provider?: CloudProvider; pollIntervalMs?: number } = {}): Promise<{ ctl: AzureEmulatorControl; ns: string; op: RunningOperator; ce: ComputeEnvironment; rg: string; since: number; capacity: string }> {
  const ctl = azureControl();
  const { ns, op, ce } = await ownOperatorAndCe(prefix, ceName, o.provider, o.pollIntervalMs);
  const rg = resourceGroupName({ namespace: ns, name: ceName, uid: ce.metadata.uid! });
  const since = (await ctl.requests(0)).lastSeq;
  const { id } = await ctl.addCapacityError({ vmSize, location: LOCATION, code: "AllocationFailed", count: o.times ?? 1 });
  return { ctl, ns, op, ce, rg, since, capacity: id };
}

/** The Run's one VM, placed with `size`; then the Run is deleted and awaited gone. */
async function oneVmThenGone(ctl: AzureEmulatorControl, name: string, ns: string, uid: string | undefined, size: string): Promise<void> {
  const vms = (await ctl.listVms()).filter((v) => v.tags["vmforge-run-uid"] === uid);
  expect(vms).toHaveLength(1);
  expect(vms[0]).toMatchObject({ vmSize: size, provisioningState: "Succeeded" });
  await env.kube.delete(RunResource, ns, name);
  await waitFor(`${name} gone`, async () => (await env.getRun(name, ns)) === undefined, 60_000, 250);
}

/** Waits for the Run to be Running, shipping its launcher's start line once it is set up; `note` sees every read. */
async function runningAfterStart(name: string, ns: string, runCe: ComputeEnvironment, note: (r: Run | undefined) => void, timeoutMs: number, seen: string[]): Promise<Run> {
  let shipped = false;
  return waitFor(`Run ${name} Running`, async () => {
    const r = await env.getRun(name, ns);
    note(r);
    if (!shipped && r?.status?.phase === "Launching" && r.status.reason === "SettingUp") {
      shipped = true;
      await env.startPipeline(runCe, r);
    }
    return r?.status?.phase === "Running" ? r : undefined;
  }, timeoutMs, 100).catch((e: unknown) => {
    throw new Error(`${String(e)}; seen: ${seen.join(", ")}`);
  });
}

describe.concurrent("Azure Run lifecycle through the operator (emulator)", () => {
  it("a Run that exceeds its timeout has its VM deleted and fails with reason Timeout", async () => {
    await env.kube.create(RunResource, env.runBody("slow", CE, { timeout: "1m" }));
    const r = await started("slow");
    expect(await env.vmOf(r)).toBeDefined();
    const failed = await phase("slow", "Failed", 100_000);
    expect(failed.status?.reason).toBe("Timeout");
    expect(cond(failed as unknown as ComputeEnvironment, "Stalled")).toMatchObject({ status: "True", reason: "Timeout" });
    await waitFor("the VM of slow deleted", async () => (await env.vmOf(r)) === undefined, 30_000, 250);
  }, 150_000);

  it("the operator killed right after the VM PUT and restarted: still exactly one VM, and the Run completes", async () => {
    // Its own namespace and operators, so the other tests' Runs are not launched by the dying one.
    const ns = await env.extraNamespace("azcrash");
    const real = env.provider();
    let launched: RunDescription | undefined;
    const crashing: CloudProvider = Object.assign(Object.create(real) as CloudProvider, {
      launchRun: async (ctx: EnvContext, r: Run) => {
        launched = await real.launchRun(ctx, r);
        throw new Error("operator killed right after the VM PUT");
      },
    });
    const dying = await startOperator(kubeconfigPath(), new Map([["azure", crashing]]), { namespaces: [ns], pollIntervalMs: 1_000 });
    let second: Awaited<ReturnType<typeof startOperator>> | undefined;
    try {
      await env.kube.create(ComputeEnvironmentResource, ceBody(ns, "crashce", { storageAccount: env.storageAccount }));
      const crashCe = await waitReady(env.kube, ns, "crashce");
      const since = (await azureControl().requests(0)).lastSeq;
      await env.kube.create(RunResource, env.runBody("crash", "crashce", {}, ns));
      await waitFor("the VM PUT of the dying operator", async () => launched !== undefined, 60_000, 100);
      await dying.stop();
      const before = await env.getRun("crash", ns);
      // the launch was decided (the annotation, with the finalizer) and no machine is recorded
      expect(before && launchDecided(before)).toBe(true);
      expect(before?.metadata.finalizers).toContain(FINALIZER);
      expect(before?.status?.instance).toBeUndefined();

      second = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      const r = await started("crash", crashCe, ns);
      expect(r.status?.instance?.id).toBe(launched?.instanceId);
      expect((await azureControl().listVms()).filter((v) => v.tags["vmforge-run-uid"] === r.metadata.uid)).toHaveLength(1);
      expect(await vmPuts(r, since)).toBe(1); // the restarted operator found the VM; it sent no second PUT

      await env.finishVm(crashCe, r, 0);
      const done = await phase("crash", "Succeeded", 60_000, ns);
      expect(done.status?.exitCode).toBe(0);
      await waitFor("the VM of crash deleted with its NIC, public IP and disk", async () => (await runResources(r, crashCe.metadata.uid!, ns, "crashce")).length === 0, 30_000, 250);
    } finally {
      await dying.stop();
      await second?.stop();
    }
  }, 150_000);

  it("a Run launched again after a capacity wait is decided before that launch: deleted while its answer is lost, its VM is deleted before the Run goes", async () => {
    // Its own namespace and operator, so no other test's Run meets the losing provider.
    const real = env.provider();
    let lost: RunDescription | undefined;
    let decidedAtCall: boolean | undefined;
    const refusals: string[] = [];
    const losing: CloudProvider = Object.assign(Object.create(real) as CloudProvider, {
      launchRun: async (ctx: EnvContext, r: Run, hints?: { firstAttempt?: boolean }) => {
        const d = await real.launchRun(ctx, r, hints).catch((e: unknown) => {
          if (e instanceof CloudError) refusals.push(e.reason);
          throw e;
        });
        if (lost) return d;
        lost = d;
        decidedAtCall = launchDecided(r) && r.status?.reason === "LaunchRetrying";
        await env.kube.delete(RunResource, r.metadata.namespace, "capdel");
        throw new Error("operator killed right after the VM PUT");
      },
    });
    const { ns, op } = await ownOperatorAndCe("azcapdel", "capce", losing);
    try {
      // A size no other test uses; its fault answers one PUT, so the second attempt is placed.
      await azureControl().addCapacityError({ vmSize: "Standard_E4s_v5", location: LOCATION, code: "SkuNotAvailable", count: 1 });
      await env.kube.create(RunResource, env.runBody("capdel", "capce", { overrides: { instanceType: "Standard_E4s_v5" } }, ns));
      const reasons = new Set<string>();
      let uid = "";
      await waitFor("Run capdel gone", async () => {
        const r = await env.getRun("capdel", ns);
        if (r?.metadata.uid) uid = r.metadata.uid;
        if (r?.status?.reason) reasons.add(r.status.reason);
        return r === undefined;
      }, 60_000, 100);
      expect(refusals).toEqual(["SkuNotAvailable"]);
      // the Run said so, and waited its backoff (the refusal's own status write did not bring the next PUT at once)
      expect(reasons).toContain("SkuNotAvailable");
      expect(lost?.instanceId).toBeDefined();
      // the relaunch was recorded as a decision (Pending, LaunchRetrying) before its PUT
      expect(decidedAtCall).toBe(true);
      // and the Run went only after its VM was deleted (by its fixed name)
      expect((await azureControl().listVms()).filter((v) => v.tags["vmforge-run-uid"] === uid)).toEqual([]);
    } finally {
      await op.stop();
    }
  }, 120_000);

  it("a Run in a capacity wait whose CE stops being Ready waits for it undecided (the decision annotation goes), and is decided anew once it is Ready", async () => {
    const { ns, op } = await ownOperatorAndCe("azcapce", "capce2");
    try {
      // A size no other test uses; refused three times (1 + 2 + 4 s of backoff): time to act in.
      await azureControl().addCapacityError({ vmSize: "Standard_E8s_v5", location: LOCATION, code: "SkuNotAvailable", count: 3 });
      await env.kube.create(RunResource, env.runBody("capnr", "capce2", { overrides: { instanceType: "Standard_E8s_v5" } }, ns));
      const waitingForCapacity = await waitFor("Run capnr waiting for capacity", async () => {
        const r = await env.getRun("capnr", ns);
        return r?.status?.reason === "SkuNotAvailable" ? r : undefined;
      }, 30_000, 50);
      expect(waitingForCapacity.metadata.annotations?.[ANNOTATION_LAUNCH_DECIDED]).toBe(waitingForCapacity.metadata.uid);
      // The CE now names a Secret that does not exist: not Ready.
      await env.kube.patch(ComputeEnvironmentResource, ns, "capce2", { spec: { credentials: { secretRef: { name: "no-such-secret" } } } }, "merge");
      const notReady = await waitFor("Run capnr waiting for its CE", async () => {
        const r = await env.getRun("capnr", ns);
        return r?.status?.reason === "ComputeEnvironmentNotReady" ? r : undefined;
      }, 30_000, 100);
      expect(notReady.status?.phase).toBe("Pending");
      expect(notReady.metadata.annotations?.[ANNOTATION_LAUNCH_DECIDED]).toBeUndefined();
      expect(launchDecided(notReady)).toBe(false);
      // Ready again: decided anew and launched, one VM.
      await env.kube.patch(ComputeEnvironmentResource, ns, "capce2", { spec: { credentials: { secretRef: { name: "azure-creds" } } } }, "merge");
      const launched = await waitFor("Run capnr launched", async () => {
        const r = await env.getRun("capnr", ns);
        return r?.status?.instance?.id && r.status.phase !== "Pending" ? r : undefined;
      }, 60_000, 200);
      expect(launched.metadata.annotations?.[ANNOTATION_LAUNCH_DECIDED]).toBe(launched.metadata.uid);
      expect((await azureControl().listVms()).filter((v) => v.tags["vmforge-run-uid"] === launched.metadata.uid)).toHaveLength(1);
      await env.kube.delete(RunResource, ns, "capnr");
      await waitFor("Run capnr gone", async () => (await env.getRun("capnr", ns)) === undefined, 60_000, 200);
    } finally {
      await op.stop();
    }
  }, 120_000);

  it("deleting a Run mid-run deletes its VM before the Run goes away", async () => {
    await env.kube.create(RunResource, env.runBody("del", CE));
    const r = await started("del");
    expect(await env.vmOf(r)).toBeDefined();
    await env.kube.delete(RunResource, env.ns, "del");
    await waitFor("Run del gone", async () => (await env.getRun("del")) === undefined, 60_000, 100);
    expect(await env.vmOf(r)).toBeUndefined();
    expect(await runResources(r)).toEqual([]);
  }, 90_000);

  it("a CE removed by force (its finalizer taken off) while its VM could not be deleted, and created again under its name: the old VM is deleted with what the removed CE said, once Azure allows; the new CE's Runs are its own and its deletion does not wait for the old one", async () => {
    const { ns, op, ce: first } = await ownOperatorAndCe("azforced", "forced");
    const ctl = azureControl();
    try {
      await env.kube.create(RunResource, env.runBody("old", "forced", {}, ns));
      const old = await settingUp("old", ns);
      expect(old.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(first.metadata.uid);
      // Every delete of this VM is refused until the fault goes (scoped to its name).
      const fault = await ctl.addFault({ operation: "Microsoft.Compute/virtualMachines/delete", path: `/virtualMachines/${vmName(old.metadata.uid!)}`, status: 409, code: "Conflict", message: "injected: the VM is busy" });
      try {
        await env.kube.delete(ComputeEnvironmentResource, ns, "forced");
        await phase("old", "Cancelled", 60_000, ns);
        await env.kube.patch(ComputeEnvironmentResource, ns, "forced", { metadata: { finalizers: null } }, "merge");
        await waitFor("CE forced gone", async () => (await env.kube.get(ComputeEnvironmentResource, ns, "forced")) === undefined, 30_000, 200);
        await env.kube.create(ComputeEnvironmentResource, ceBody(ns, "forced", { storageAccount: env.storageAccount }));
        const second = await waitReady(env.kube, ns, "forced");
        expect(second.metadata.uid).not.toBe(first.metadata.uid);
        await env.kube.create(RunResource, env.runBody("new", "forced", {}, ns));
        const fresh = await settingUp("new", ns);
        expect(fresh.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(second.metadata.uid);
        // Still refused: the old VM is there, and its Run does not call it gone.
        const polls = op.operator.tracker.pollCount;
        await waitFor("three more polls", async () => op.operator.tracker.pollCount >= polls + 3, 30_000, 100);
        expect(await env.vmOf(old)).toBeDefined();
        expect((await env.getRun("old", ns))?.status?.instance?.state).not.toBe("terminated");
        // The new CE's deletion ends its own Run and goes, while the old VM is still there: the
        // old Run is not the new CE's to wait for.
        await env.kube.delete(ComputeEnvironmentResource, ns, "forced");
        await waitFor("the new CE gone", async () => (await env.kube.get(ComputeEnvironmentResource, ns, "forced")) === undefined, 120_000, 500);
        expect(await env.vmOf(fresh)).toBeUndefined();
        expect(await env.vmOf(old)).toBeDefined();
      } finally {
        await ctl.removeFault(fault.id);
      }
      // Allowed again: the old VM (and its NIC, IP and disk) deleted with what the removed CE said.
      await waitFor("the old VM deleted", async () => (await env.vmOf(old)) === undefined, 60_000, 250);
      expect(await runResources(old, first.metadata.uid!, ns, "forced")).toEqual([]);
      await waitFor("old recorded terminated", async () => (await env.getRun("old", ns))?.status?.instance?.state === "terminated", 60_000, 200);
    } finally {
      await op.stop();
    }
  }, 240_000);

  it("a CE removed by force while no operator runs, and applied again as it was before the next one starts: that operator, which never saw the old CE, finds the old VM with the new CE (same subscription) and deletes it in the old CE's resource group", async () => {
    const { ns, before, old } = await removedWhileDown("azreapplied", "again");
    let next: RunningOperator | undefined;
    try {
      expect(old.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(before.metadata.uid);
      await env.kube.create(ComputeEnvironmentResource, ceBody(ns, "again", { storageAccount: env.storageAccount }));
      next = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      const after = await waitReady(env.kube, ns, "again");
      expect(after.metadata.uid).not.toBe(before.metadata.uid);
      const failed = await phase("old", "Failed", 60_000, ns);
      expect(failed.status?.reason).toBe("ComputeEnvironmentGone");
      expect(failed.status?.message).toContain(`(UID ${after.metadata.uid}) finds the Run's machine`);
      await waitFor("the old VM deleted with its NIC, IP and disk", async () => (await runResources(old, before.metadata.uid!, ns, "again")).length === 0, 60_000, 250);
      await waitFor("old recorded terminated", async () => (await env.getRun("old", ns))?.status?.instance?.state === "terminated", 60_000, 200);
    } finally {
      await next?.stop();
    }
  }, 240_000);

  it("... and applied again in another subscription: the new CE does not find the old VM there (the provider's inference that an unlisted VM is gone is not a find), the Run says it cannot be reached, and the VM is left alone", async () => {
    const { ns, before, old } = await removedWhileDown("azmoved", "moved");
    let next: RunningOperator | undefined;
    try {
      // The same principal may read VMs in the other subscription (nothing of this Run is there).
      const other = await azureControl().createSubscription({ tenantId: env.info.tenantId, displayName: "vmforge-moved" });
      await grantOperatorRoles({ ...env.info, subscriptionId: other.id }, env.principal.objectId, "vmforge-operator-moved");
      await putSecret(env.kube, { ...env.info, subscriptionId: other.id }, ns, "other-creds", env.principal);
      await env.kube.create(ComputeEnvironmentResource, ceBody(ns, "moved", { storageAccount: env.storageAccount }, "other-creds"));
      const after = await waitFor("the new CE", async () => env.kube.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "moved"), 30_000, 200);
      next = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      const failed = await phase("old", "Failed", 60_000, ns);
      expect(failed.status?.reason).toBe("ComputeEnvironmentGone");
      expect(failed.status?.message).toContain(`UID ${after.metadata.uid}, and it does not find the machine`);
      expect(failed.status?.message).toContain("may still be running");
      // A change of the Run brings another reconcile of it (as a resync would): it still does not
      // touch the VM, which the new CE cannot reach.
      await env.kube.patch(RunResource, ns, "old", { metadata: { annotations: { touched: "1" } } }, "merge");
      const polls = next.operator.tracker.pollCount;
      await waitFor("three more polls", async () => next!.operator.tracker.pollCount >= polls + 3, 30_000, 100);
      expect(await env.vmOf(old)).toBeDefined();
      expect((await env.getRun("old", ns))?.status?.instance?.state).not.toBe("terminated");
      expect(before.metadata.uid).not.toBe(after.metadata.uid);
    } finally {
      await next?.stop();
    }
  }, 240_000);

  it("a Spot eviction fails the Run with reason SpotEvicted (not a pipeline failure); the VM and its NIC, IP and disk are gone", async () => {
    await env.kube.create(RunResource, env.runBody("spot", CE, { overrides: { spot: true } }));
    const r = await started("spot");
    const vm = await env.vmOf(r);
    expect(vm).toMatchObject({ priority: "Spot", evictionPolicy: "Delete" });
    expect((await runResources(r)).length).toBeGreaterThanOrEqual(4);
    await azureControl().setVmPowerState(vm!.id, "evicted");
    const failed = await phase("spot", "Failed");
    expect(failed.status?.reason).toBe("SpotEvicted");
    expect(failed.status?.exitCode).toBeUndefined();
    expect(cond(failed as unknown as ComputeEnvironment, "Stalled")).toMatchObject({ status: "True", reason: "SpotEvicted" });
    expect(await env.vmOf(r)).toBeUndefined();
    expect(await runResources(r)).toEqual([]);
  }, 90_000);

  it("orphan sweep: a VM whose Run no longer exists is deleted with its NIC, IP and disk, and so are a NIC, IP and OS disk left without a VM; a live Run's are kept", async () => {
    const own = await ownOperatorAndCe("azorphan", "orph");
    const { ns, ce: oce } = own;
    let op = own.op;
    try {
      for (const n of ["keep", "lost"]) await env.kube.create(RunResource, env.runBody(n, "orph", {}, ns));
      const keep = await started("keep", oce, ns);
      const lost = await started("lost", oce, ns);
      const rm = new ResourceManagementClient(await azureTestCredential(), env.info.subscriptionId, azureClientOptions());
      const rg = resourceGroupName({ namespace: ns, name: "orph", uid: oce.metadata.uid! });
      const inRg = async (): Promise<Array<{ type: string; name: string; tags: Record<string, string> }>> => {
        const out: Array<{ type: string; name: string; tags: Record<string, string> }> = [];
        for await (const r of rm.resources.listByResourceGroup(rg)) out.push({ type: r.type!, name: r.name!, tags: r.tags ?? {} });
        return out;
      };
      // Azure copies no tags from the VM: the NIC and public IP carry the Run UID because their
      // configurations say so; the OS disk cannot, and is named from the Run UID.
      const made = await inRg();
      for (const run of [keep, lost]) {
        const uid = run.metadata.uid!;
        for (const type of ["Microsoft.Compute/virtualMachines", "Microsoft.Network/networkInterfaces", "Microsoft.Network/publicIPAddresses"]) {
          expect(made.filter((r) => r.type === type && r.tags["vmforge-run-uid"] === uid), `${type} of ${run.metadata.name}`).toHaveLength(1);
        }
        expect(made.filter((r) => r.type === "Microsoft.Compute/disks" && r.name === osDiskName(uid))).toHaveLength(1);
      }

      // Leftovers of a Run that is gone, without a VM: a NIC, a public IP and an OS disk.
      const goneUid = "0badc0de-0000-4000-8000-000000000001";
      await leaveOrphans(rm, rg, oce, goneUid);

      // "lost" disappears while the operator is down, its finalizer removed by hand: its VM stays.
      await op.stop();
      const cur = await env.getRun("lost", ns);
      await env.kube.delete(RunResource, ns, "lost");
      await removeFinalizer(env.kube, RunResource, cur!, FINALIZER);
      await waitFor("Run lost gone", async () => (await env.getRun("lost", ns)) === undefined, 30_000, 100);
      expect(await env.vmOf(lost)).toBeDefined();

      // The restarted operator checks the CE and sweeps. Azure calls the orphaned VM busy once: the
      // rest of that sweep goes on, and the VM is deleted by a sweep tried again soon, not at the
      // drift check ten minutes on.
      const ctl = azureControl();
      const lostVm = `/virtualMachines/${vmName(lost.metadata.uid!)}`;
      const since = (await ctl.requests(0)).lastSeq;
      const busy = await ctl.addFault({ operation: "Microsoft.Compute/virtualMachines/delete", path: lostVm, status: 409, code: "Conflict", message: "injected: the VM is busy", count: 1 });
      op = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      const lostUid = lost.metadata.uid!;
      const isLeft = (r: { name: string; tags: Record<string, string> }): boolean =>
        r.tags["vmforge-run-uid"] === lostUid || r.tags["vmforge-run-uid"] === goneUid || r.name === osDiskName(lostUid) || r.name === osDiskName(goneUid);
      await waitFor("the orphans swept", async () => {
        const left = (await inRg()).filter(isLeft);
        if (left.length > 0) throw new Error(`left: ${left.map((r) => `${r.type}/${r.name}`).join(", ")}`);
        return true;
      }, 60_000, 250);
      await ctl.removeFault(busy.id);
      const lostDeletes = (await ctl.requests(since)).value.filter((r) => r.method === "DELETE" && r.path.toLowerCase().endsWith(lostVm.toLowerCase()));
      expect(lostDeletes.map((r) => r.status >= 200 && r.status < 300 ? "accepted" : r.status)).toEqual([409, "accepted"]);
      const after = await inRg();
      expect(after.filter((r) => r.tags["vmforge-run-uid"] === keep.metadata.uid).length).toBe(3);
      expect(after.some((r) => r.name === osDiskName(keep.metadata.uid!))).toBe(true);
      expect((await env.getRun("keep", ns))?.status?.phase).toBe("Running");
    } finally {
      await op.stop();
    }
  }, 150_000);

  it("without the disk-delete addition the sweep still deletes a loose NIC and the IPs (one held by that NIC, deleted right after it), leaves the OS disk (one refused delete, no retries) to the resource group's deletion, and the CE stays Ready", async () => {
    const ns = await env.extraNamespace("aznodisk");
    const p = await operatorPrincipal(env.info, "vmforge-life-nodisk", {}, { withoutAdditions: ["Microsoft.Compute/disks/delete"] });
    await putSecret(env.kube, env.info, ns, "nodisk", p);
    let op = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
    try {
      await env.kube.create(ComputeEnvironmentResource, ceBody(ns, "nodisk", { storageAccount: env.storageAccount }, "nodisk"));
      const oce = await waitReady(env.kube, ns, "nodisk");
      const rm = new ResourceManagementClient(await azureTestCredential(), env.info.subscriptionId, azureClientOptions());
      const rg = resourceGroupName({ namespace: ns, name: "nodisk", uid: oce.metadata.uid! });
      const goneUid = "0badc0de-0000-4000-8000-000000000002";
      await leaveOrphans(rm, rg, oce, goneUid);
      const names = async (): Promise<string[]> => {
        const out: string[] = [];
        for await (const r of rm.resources.listByResourceGroup(rg)) out.push(r.name!);
        return out;
      };
      // The restarted operator converges the CE and sweeps.
      await op.stop();
      const since = (await azureControl().requests(0)).lastSeq;
      op = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      await waitFor("the loose NIC and IPs swept", async () => {
        const left = await names();
        return !left.includes("left-nic") && !left.includes("left-ip") && !left.includes("left-ip-held") ? left : undefined;
      }, 60_000, 250);
      const diskDeletes = async (): Promise<number[]> =>
        (await azureControl().requests(since)).value.filter((r) => r.method === "DELETE" && r.path.toLowerCase().endsWith(`/disks/${osDiskName(goneUid)}`.toLowerCase())).map((r) => r.status);
      await waitFor("the disk's delete refused", async () => (await diskDeletes()).length > 0, 30_000, 250);
      // A refusal for good is not tried again soon (the sweep retry is for passing refusals):
      // one more sweep retry period, and still the one refused delete.
      await new Promise((r) => setTimeout(r, SWEEP_RETRY_BASE_MS + 2_000));
      expect(await diskDeletes()).toEqual([403]);
      expect(await names()).toContain(osDiskName(goneUid));
      expect(cond((await env.kube.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "nodisk"))!, "Ready")).toMatchObject({ status: "True" });
      // Deleting the CE deletes its resource group, and the disk with it.
      await env.kube.delete(ComputeEnvironmentResource, ns, "nodisk");
      await waitFor("CE nodisk gone", async () => (await env.kube.get(ComputeEnvironmentResource, ns, "nodisk")) === undefined, 60_000, 250);
      expect((await rm.resourceGroups.checkExistence(rg)).body).toBe(false);
    } finally {
      await op.stop();
    }
  }, 150_000);

  it("the log read back while batches become queryable out of order (non-uniform ingestion delay) and one is held twice: vmforge logs -f loses and doubles no line", async () => {
    trustAzureEmulator();
    const ctl = azureControl();
    await env.kube.create(RunResource, env.runBody("logs", CE));
    // The lines this test ships are its whole log (no start line): the Run stays set up meanwhile.
    const run = await settingUp("logs");
    const uid = run.metadata.uid!;
    const az = ce.status!.azure!;
    const ingest = await env.logShipper(ce);
    const peek = new LogsQueryClient(await azureTestCredential({ clientId: env.principal.clientId, clientSecret: env.principal.secret }), { endpoint: `${azureEndpoint()}/loganalytics/v1` });
    const visibleSeqs = async (): Promise<number[]> => {
      const res = await peek.queryWorkspace(az.workspaceCustomerId!, `${LOG_TABLE} | where RunUid == '${uid}' | project Seq`, { duration: "PT1H" });
      return "tables" in res ? (res.tables[0]?.rows ?? []).map((r) => Number(r[0])) : [];
    };
    await ctl.settings({ ingestionDelayMs: 200, ingestionJitterMs: 2_500 });
    const got: string[] = [];
    let following: Promise<number> | undefined;
    try {
      following = streamRunLogs({ run: "logs", namespace: env.ns, follow: true, kubeconfig: kubeconfigPath(), pollMs: 150, endGraceMs: 2_000, out: (l) => got.push(l), providers: new Map([["azure", env.provider()]]) });
      const expected: string[] = [];
      let seq = 0;
      let overtaken = false;
      for (let b = 0; b < 16; b++) {
        const now = new Date().toISOString();
        const rows = Array.from({ length: 2 + (b % 4) }, (_, i) => ({ TimeGenerated: now, RunUid: uid, Stream: b % 3 === 2 ? "launcher" : "pipeline", Seq: ++seq, Line: `batch ${b} line ${i}` }));
        await ingest.upload(az.dcrImmutableId!, LOG_STREAM, rows);
        // A retried upload whose first answer was lost: the same lines (same Seq) held twice.
        if (b === 5) await ingest.upload(az.dcrImmutableId!, LOG_STREAM, rows);
        expected.push(...rows.map((r) => r.Line));
        const seen = await visibleSeqs();
        const max = Math.max(0, ...seen);
        if (seen.length > 0 && new Set(seen).size < max) overtaken = true; // a later line queryable before an earlier one
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(overtaken, "no batch overtook another; the jitter did not reorder anything").toBe(true);
      await waitFor("every line read back", async () => got.length >= expected.length, 30_000, 100);
      await env.finishVm(ce, run, 0);
      await phase("logs", "Succeeded");
      expect(await following).toBe(0);
      expect(got).toEqual(expected);
    } finally {
      await ctl.settings({ ingestionDelayMs: 0, ingestionJitterMs: 0 });
    }
  }, 120_000);

  it("the log's shippers hold telemetry write on the CE's data collection rule only, as its identity does: the same write granted on the CE's data collection endpoint instead is refused 403 at the rule", async () => {
    trustAzureEmulator();
    const az = ce.status!.azure!;
    const rows = (Line: string): Record<string, unknown>[] => [{ TimeGenerated: new Date().toISOString(), RunUid: "no-run-scoped-shipper", Stream: "pipeline", Seq: 1, Line }];
    const elsewhere = await env.logShipperAt(ce, az.dceId!);
    const err = await elsewhere.upload(az.dcrImmutableId!, LOG_STREAM, rows("from the endpoint's grant")).then(() => undefined, (e: unknown) => e);
    const cause = (err as { errors?: { cause: { statusCode?: number; message: string } }[] } | undefined)?.errors?.[0]?.cause;
    expect(cause?.statusCode, String(err)).toBe(403);
    expect(cause?.message).toContain("Microsoft.Insights/Telemetry/Write");
    expect(cause?.message).toContain(az.dcrImmutableId!);
    await expect((await env.logShipper(ce)).upload(az.dcrImmutableId!, LOG_STREAM, rows("from the rule's grant"))).resolves.toBeUndefined();
  });

  it("no exit status uploaded (its upload failed): the exit line in Log Analytics gives the outcome, and the stopped VM is deleted", async () => {
    trustAzureEmulator();
    await env.kube.create(RunResource, env.runBody("exitline", CE));
    const run = await settingUp("exitline");
    const ingest = await env.logShipper(ce);
    const now = new Date().toISOString();
    await ingest.upload(ce.status!.azure!.dcrImmutableId!, LOG_STREAM, [["pipeline", "the pipeline failed"], ["launcher", "VMFORGE_EXIT_CODE=5"]].map(([Stream, Line], i) => ({ TimeGenerated: now, RunUid: run.metadata.uid!, Stream, Seq: i + 1, Line })));
    // Ingested before the VM stops (the launcher ships its last lines, then shuts down); the
    // operator asks when it sees the VM stopped. (A line ingested later is waited for: below.)
    const peek = new LogsQueryClient(await azureTestCredential({ clientId: env.principal.clientId, clientSecret: env.principal.secret }), { endpoint: `${azureEndpoint()}/loganalytics/v1` });
    await waitFor("the exit line queryable", async () => {
      const res = await peek.queryWorkspace(ce.status!.azure!.workspaceCustomerId!, `${LOG_TABLE} | where RunUid == '${run.metadata.uid!}' | project Seq`, { duration: "PT1H" });
      return "tables" in res && (res.tables[0]?.rows.length ?? 0) === 2;
    }, 30_000, 200);
    // The OS shut down; no exit-status blob in the work directory.
    await azureControl().setVmPowerState((await env.vmOf(run))!.id, "stopped");
    const done = await phase("exitline", "Failed");
    expect(done.status).toMatchObject({ reason: "PipelineFailed", exitCode: 5 });
    await waitFor("the stopped VM of exitline deleted", async () => (await env.vmOf(run)) === undefined, 30_000, 250);
  }, 120_000);

  it("a stopped VM whose deletion Azure refuses once still ends its Run with the uploaded exit code, and is deleted after", async () => {
    await env.kube.create(RunResource, env.runBody("nodel", CE));
    const run = await settingUp("nodel");
    const ctl = azureControl();
    // The next delete of this VM (the poll's, of the stopped VM) is refused; the Run's own
    // termination then goes through. Scoped to the VM's name: other tests run beside this one.
    const fault = await ctl.addFault({ operation: "Microsoft.Compute/virtualMachines/delete", path: `/virtualMachines/${vmName(run.metadata.uid!)}`, status: 409, code: "Conflict", message: "injected: the VM is busy", count: 1 });
    try {
      await env.finishVm(ce, run, 3);
      const done = await phase("nodel", "Failed");
      expect(done.status).toMatchObject({ reason: "PipelineFailed", exitCode: 3 });
      expect((await ctl.requests()).value.filter((r) => r.method === "DELETE" && r.status === 409 && r.path.toLowerCase().endsWith(`/virtualmachines/${vmName(run.metadata.uid!)}`))).toHaveLength(1);
    } finally {
      await ctl.removeFault(fault.id);
    }
    await waitFor("the stopped VM of nodel deleted", async () => (await env.vmOf(run)) === undefined, 30_000, 250);
  }, 120_000);

  it("Log Analytics ingestion delay: a Run stays SettingUp until its start line is ingested (one query per CE per poll); a VM stopped before its exit line is ingested is deleted at once and the Run takes the late line's code; with no line at all it ends MachineStopped after the grace window", async () => {
    // Its own namespace, CE (so its own data collection rule, slowed alone) and operator, whose
    // provider waits GRACE for an exit line (VMFORGE_AZURE_EXIT_LINE_GRACE in a deployment). What
    // the rule delivers is held (an hour's delay) while the test looks, then let through (no
    // delay): no step depends on how fast the operator or the machine is.
    const HOLD = 3_600_000;
    const GRACE = 25_000;
    const ns = await env.extraNamespace("azingest");
    const op = await startOperator(kubeconfigPath(), new Map([["azure", env.provider({ exitLineGraceMs: GRACE })]]), { namespaces: [ns], pollIntervalMs: 1_000 });
    const ctl = azureControl();
    let dcr: string | undefined;
    try {
      await env.kube.create(ComputeEnvironmentResource, ceBody(ns, "slowlog", { storageAccount: env.storageAccount }));
      const sce = await waitReady(env.kube, ns, "slowlog");
      const az = sce.status!.azure!;
      dcr = az.dcrImmutableId!;
      const slowRule = dcr;
      const hold = (): Promise<unknown> => ctl.settings({ dcrIngestionDelayMs: { [slowRule]: HOLD } });
      const letThrough = (): Promise<unknown> => ctl.settings({ dcrIngestionDelayMs: { [slowRule]: 0 } });
      trustAzureEmulator();
      // What Log Analytics holds, asked by the test's own principal (not counted as the operator's).
      const peek = new LogsQueryClient(await azureTestCredential(), { endpoint: `${azureEndpoint()}/loganalytics/v1` });
      const queryable = async (run: Run, line: string): Promise<boolean> => {
        const res = await peek.queryWorkspace(az.workspaceCustomerId!, `${LOG_TABLE} | where RunUid == '${run.metadata.uid!}' and Line == '${line}' | project Seq`, { duration: "PT1H" });
        return "tables" in res && (res.tables[0]?.rows.length ?? 0) > 0;
      };
      const operatorQueries = async (since: number): Promise<number> =>
        (await ctl.requests(since)).value.filter((r) => r.operation === "LogAnalytics.Query" && r.caller === env.principal.objectId && r.path.includes(az.workspaceCustomerId!)).length;

      for (const n of ["setup", "late", "silent"]) await env.kube.create(RunResource, env.runBody(n, "slowlog", {}, ns));

      // (1) Set up until the start line is queryable, however long ingestion takes.
      const setup = await settingUp("setup", ns);
      await settingUp("late", ns);
      await settingUp("silent", ns);
      const { lastSeq } = await ctl.requests(0);
      const polls0 = op.operator.tracker.pollCount;
      await hold();
      await env.startPipeline(sce, setup);
      const whileHidden: string[] = [];
      // Shipped, held from Log Analytics through three polls of the operator at least.
      await waitFor("three operator polls while the start line of setup is held", async () => {
        const r = await env.getRun("setup", ns);
        whileHidden.push(`${r?.status?.phase}/${r?.status?.reason}`);
        return op.operator.tracker.pollCount - polls0 >= 4;
      }, 60_000, 250);
      const polls1 = op.operator.tracker.pollCount;
      const queries = await operatorQueries(lastSeq);
      expect(await queryable(setup, "VMFORGE_PIPELINE_STARTED"), "the held start line was queryable").toBe(false);
      // Shipped, not yet in Log Analytics: the Run was set up all along, never Running.
      expect([...new Set(whileHidden)]).toEqual(["Launching/SettingUp"]);
      // Three Runs being set up, one CE: at most one Log Analytics query per poll (and one at least per few polls).
      expect(polls1 - polls0).toBeGreaterThanOrEqual(3);
      expect(queries).toBeGreaterThanOrEqual(1);
      expect(queries).toBeLessThanOrEqual(polls1 - polls0 + 1);
      await letThrough();
      expect(await queryable(setup, "VMFORGE_PIPELINE_STARTED")).toBe(true);
      const running = await phase("setup", "Running", 30_000, ns);
      expect(running.status?.startTime).toBeDefined();

      // (2) and (3): both pipelines start; then their VMs stop with no exit status uploaded.
      const late = (await env.getRun("late", ns))!;
      const silent = (await env.getRun("silent", ns))!;
      await env.startPipeline(sce, late);
      await env.startPipeline(sce, silent);
      await phase("late", "Running", 60_000, ns);
      await phase("silent", "Running", 60_000, ns);
      await hold();
      await env.shipLines(sce, late, ["VMFORGE_EXIT_CODE=3"], "launcher");
      for (const r of [late, silent]) await ctl.setVmPowerState((await env.vmOf(r))!.id, "stopped");

      // The stopped VMs are deleted at once, while the late exit line is still held; the Runs wait.
      await waitFor("the stopped VMs deleted", async () => (await env.vmOf(late)) === undefined && (await env.vmOf(silent)) === undefined, 30_000, 200);
      expect(await queryable(late, "VMFORGE_EXIT_CODE=3"), "the held exit line was queryable").toBe(false);
      expect(await runResources(late, sce.metadata.uid!, ns, "slowlog")).toEqual([]);
      for (const n of ["late", "silent"]) {
        const r = await env.getRun(n, ns);
        expect(r?.status?.phase, n).toBe("Running");
        expect(r?.status?.exitCode, n).toBeUndefined();
      }
      const waiting = await waitFor("silent says what it waits for", async () => {
        const r = await env.getRun("silent", ns);
        return r?.status?.message?.includes("waiting for the pipeline's outcome") ? r : undefined;
      }, 30_000, 200);
      expect(waiting.status?.phase).toBe("Running");
      expect(await queryable(late, "VMFORGE_EXIT_CODE=3"), "the held exit line was queryable").toBe(false);

      // (2) The late line arrives within the window: its exit code is the outcome.
      await letThrough();
      const failed = await phase("late", "Failed", 60_000, ns);
      expect(failed.status).toMatchObject({ reason: "PipelineFailed", exitCode: 3 });
      expect(await queryable(late, "VMFORGE_EXIT_CODE=3")).toBe(true);

      // (3) None ever arrives: MachineStopped once the window is over, with no exit code.
      const stopped = await phase("silent", "Failed", GRACE + 60_000, ns);
      expect(stopped.status?.reason).toBe("MachineStopped");
      expect(stopped.status?.exitCode).toBeUndefined();
      expect(stopped.status?.message).toMatch(/no exit line reached Log Analytics within 25 s/);
    } finally {
      if (dcr) await ctl.settings({ dcrIngestionDelayMs: { [dcr]: null } });
      await op.stop();
    }
  }, 180_000);

  it("a pipeline that ended while no operator ran, its VM stopped and its exit line not queryable yet, found past its timeout by the next operator, whose first delete of the VM Azure refuses and whose second takes 12 s: the line is waited for, and the Run takes its outcome, not Timeout or MachineStopped", async () => {
    const provider = (): CloudProvider => env.provider({ exitLineGraceMs: 60_000 });
    const own = await ownOperatorAndCe("azlate", "latece", provider());
    const { ns, ce: lce } = own;
    const ctl = azureControl();
    const dcr = lce.status!.azure!.dcrImmutableId!;
    let opA: RunningOperator | undefined = own.op;
    let opB: RunningOperator | undefined;
    let lag: { id: string } | undefined;
    try {
      await env.kube.create(RunResource, env.runBody("late", "latece", {}, ns));
      const run = await started("late", lce, ns);
      await opA.stop();
      opA = undefined;
      // While no operator runs: the launcher ships its exit line, which Log Analytics holds, and the
      // OS shuts down with no exit status uploaded. The Run was launched 10 minutes ago, as far as
      // its record says, and its CE's timeout (72h by default) is lowered to 5 minutes.
      await ctl.settings({ dcrIngestionDelayMs: { [dcr]: 3_600_000 } });
      await env.shipLines(lce, run, ["VMFORGE_EXIT_CODE=0"], "launcher");
      await ctl.setVmPowerState((await env.vmOf(run))!.id, "stopped");
      await env.kube.patch(RunResource, ns, "late", { status: { launchedAt: new Date(Date.now() - 10 * 60_000).toISOString() } }, "merge", { subresource: "status" });
      await env.kube.patch(ComputeEnvironmentResource, ns, "latece", { spec: { defaultRunTimeout: "5m" } }, "merge");
      // The next operator's first delete of the stopped VM (its first look's) is refused: the VM is
      // reported stopped, and its outcome is awaited all the same. The next one (the Run's own)
      // takes 12 s, as ARM's can, the VM listed as Deleting meanwhile: still awaited.
      const name = vmName(run.metadata.uid!);
      await ctl.addFault({ operation: "Microsoft.Compute/virtualMachines/delete", path: `/virtualMachines/${name}`, status: 409, code: "Conflict", message: "injected: the VM is busy", count: 1 });
      lag = await ctl.addDeleteLag({ path: `/virtualMachines/${name}`, ms: 12_000 });
      const { lastSeq } = await ctl.requests(0);
      opB = await startOperator(kubeconfigPath(), new Map([["azure", provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      const b = opB;
      await waitFor("the next operator has the lowered timeout", async () => b.operator.ces.get(`${ns}/latece`)?.spec.defaultRunTimeout === "5m", 10_000, 50);
      // Its looks find the VM stopped, its deletion refused, then under way, and the line not
      // queryable: the Run waits, saying so, and is not timed out.
      const seen = new Set<string>();
      await waitFor("the next operator's Run waiting for its outcome while its VM is being deleted", async () => {
        const r = await env.getRun("late", ns);
        const now = `${r?.status?.phase}/${r?.status?.reason}`;
        seen.add(now);
        if (r?.status?.message?.includes("waiting for the pipeline's outcome: the VM is being deleted")) return r;
        throw new Error(`${now}: ${r?.status?.message ?? ""}`);
      }, 30_000, 100);
      const deletes = (await ctl.requests(lastSeq)).value.filter((r) => r.method === "DELETE" && r.path.toLowerCase().endsWith(`/virtualmachines/${name}`));
      expect(deletes.map((r) => r.status)[0]).toBe(409);
      expect((await env.vmOf(run))?.provisioningState).toBe("Deleting");
      await waitFor("the VM gone", async () => {
        const r = await env.getRun("late", ns);
        seen.add(`${r?.status?.phase}/${r?.status?.reason}`);
        return (await env.vmOf(run)) === undefined;
      }, 30_000, 200);
      expect([...seen]).toEqual(["Running/Running"]);
      await ctl.settings({ dcrIngestionDelayMs: { [dcr]: 0 } });
      const done = await phase("late", "Succeeded", 60_000, ns);
      expect(done.status).toMatchObject({ reason: "Succeeded", exitCode: 0 });
    } finally {
      await ctl.settings({ dcrIngestionDelayMs: { [dcr]: null } });
      if (lag) await ctl.removeDeleteLag(lag.id);
      await opA?.stop();
      await opB?.stop();
    }
  }, 180_000);

  it("least privilege for the run half: the seed's launch and logs roles minus one action, and the missing action is named", async () => {
    const ns = await env.extraNamespace("azlp");
    const principals = {
      // Cancel cannot delete the VM.
      noDelete: await operatorPrincipal(env.info, "vmforge-life-nodelete", { launch: ["Microsoft.Compute/virtualMachines/delete"] }),
      noWrite: await operatorPrincipal(env.info, "vmforge-life-nowrite", { launch: ["Microsoft.Compute/virtualMachines/write"] }),
      // A linked check of the VM's PUT: attaching the CE's identity.
      noAssign: await operatorPrincipal(env.info, "vmforge-life-noassign", { launch: ["Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"] }),
    };
    for (const [name, p] of Object.entries(principals)) await putSecret(env.kube, env.info, ns, name.toLowerCase(), p);
    const op = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
    try {
      const names = Object.keys(principals).map((n) => n.toLowerCase());
      for (const n of names) await env.kube.create(ComputeEnvironmentResource, ceBody(ns, n, { storageAccount: env.storageAccount }, n));
      const ces = new Map<string, ComputeEnvironment>();
      for (const n of names) ces.set(n, await waitReady(env.kube, ns, n));
      for (const n of names) await env.kube.create(RunResource, env.runBody(n, n, {}, ns));

      for (const [n, action] of [["nowrite", "Microsoft.Compute/virtualMachines/write"], ["noassign", "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"]] as const) {
        const r = await phase(n, "Failed", 60_000, ns);
        expect(r.status?.reason, n).toBe("AccessDenied");
        expect(r.status?.message, n).toContain(action);
        expect(await env.vmOf(r)).toBeUndefined();
      }

      const r = await started("nodelete", ces.get("nodelete")!, ns);
      await env.kube.patch(RunResource, ns, "nodelete", { spec: { cancel: true } }, "merge");
      const blocked = await waitFor("MachineTerminationBlocked", async () => {
        const c = (await env.getRun("nodelete", ns))?.status?.conditions?.find((x) => x.type === "MachineTerminationBlocked");
        return c?.status === "True" ? c : undefined;
      }, 60_000, 200);
      expect(blocked.reason).toBe("AccessDenied");
      expect(blocked.message).toContain("Microsoft.Compute/virtualMachines/delete");
      expect(await env.vmOf(r)).toBeDefined(); // nothing deleted it

      // The log read: exactly the seed's logs role suffices; without query/read the action is named.
      // (Reader's */read includes the query actions, so this reader holds the logs role alone.)
      const readWith = async (without: string[]): Promise<unknown> => {
        const created = await azureControl().createPrincipal({ displayName: `vmforge-life-logs-${without.length}` });
        await grantPhase(env.info, created, "logs", without);
        const credentials = secretCredentials(env.info, { objectId: created.objectId, clientId: created.clientId, secret: created.secret! }, "logs");
        return env.provider().readRunLog({ ce: ces.get("nodelete")!, credentials, logger: createLogger({ level: "silent" }) }, r).then((c) => c, (e: unknown) => e);
      };
      expect(await readWith([])).toMatchObject({ lines: ["VMFORGE_PIPELINE_STARTED"] }); // the start line shipped for it
      const err = await readWith(["Microsoft.OperationalInsights/workspaces/query/read"]);
      expect(err).toBeInstanceOf(CloudError);
      expect((err as CloudError).reason).toBe("AccessDenied");
      expect((err as CloudError).message).toContain("Microsoft.OperationalInsights/workspaces/query/read");
    } finally {
      await op.stop();
    }
  }, 150_000);

  it("log queries taken from the operator while a Run runs, and given back: LogReadBlocked at every look between the exit probes, with one Warning Event; then it goes, and the exit line ends the Run", async () => {
    const ns = await env.extraNamespace("azrevoke");
    const sub = `/subscriptions/${env.info.subscriptionId}`;
    const QUERY = "Microsoft.OperationalInsights/workspaces/query/read";
    const role = (roleName: string, actions: string[], notActions: string[] = []) =>
      ({ properties: { roleName, assignableScopes: [sub], permissions: [{ actions, notActions, dataActions: [], notDataActions: [] }] } });
    // Everything the operator needs, but the Log Analytics query comes from one assignment of its
    // own (Reader's */read would grant it too, so the reads come without it).
    const p = await operatorPrincipal(env.info, "vmforge-life-revoke", { logs: [QUERY] }, { reader: false });
    const ctl = azureControl();
    await ctl.assignRole({ principalId: p.objectId, scope: sub, role: role("reader-but-log-queries", ["*/read"], [QUERY]) });
    const queries = await ctl.assignRole({ principalId: p.objectId, scope: sub, role: role("log-queries", [QUERY]) });
    await putSecret(env.kube, env.info, ns, "revoke", p);
    // Exit probes of running VMs every 1.5 s, polls every 0.5 s: most polls query nothing for the Run.
    const op = await startOperator(kubeconfigPath(), new Map([["azure", env.provider({ runningExitProbeMs: 1_500 })]]), { namespaces: [ns], pollIntervalMs: 500 });
    const authz = new AuthorizationManagementClient(await azureTestCredential(), env.info.subscriptionId, azureClientOptions());
    try {
      await env.kube.create(ComputeEnvironmentResource, ceBody(ns, "revoke", { storageAccount: env.storageAccount }, "revoke"));
      const revokeCe = await waitReady(env.kube, ns, "revoke");
      await env.kube.create(RunResource, env.runBody("revoke", "revoke", {}, ns));
      const r = await started("revoke", revokeCe, ns);
      const runCond = (run: Run | undefined, type: string) => run?.status?.conditions?.find((c) => c.type === type);
      const blockedOf = async () => runCond(await env.getRun("revoke", ns), "LogReadBlocked");
      const warnings = async () => (await env.kube.list<EventObject>(EventResource, { namespace: ns })).items
        .filter((e) => e.regarding?.name === "revoke" && e.type === "Warning" && e.reason === "AccessDenied");
      // The CE's workspace is its own: the refused queries on it are this operator's.
      const workspace = revokeCe.status?.azure?.workspaceCustomerId ?? "";
      expect(workspace).not.toBe("");
      // Counted from here on (the emulator's whole request log is long by now).
      const since = (await ctl.requests(0)).lastSeq;
      const refusedQueries = async () => (await ctl.requests(since)).value
        .filter((e) => e.operation === "LogAnalytics.Query" && e.status === 403 && e.path.includes(workspace)).length;

      // The query assignment is deleted (through Resource Manager, as an administrator would).
      await authz.roleAssignments.delete(sub, queries.name);
      const blocked = await waitFor("LogReadBlocked", blockedOf, 30_000, 200);
      expect(blocked).toMatchObject({ status: "True", reason: "AccessDenied" });
      expect(blocked.message).toContain(QUERY);
      // Three more refused probes (4.5 s, about 9 polls): the condition is there, unchanged, at every look.
      const until = (await refusedQueries()) + 3;
      let looks = 0;
      const deadline = Date.now() + 30_000;
      while ((await refusedQueries()) < until) {
        expect(Date.now(), "three more refused queries within 30 s").toBeLessThan(deadline);
        const now = await env.getRun("revoke", ns);
        expect(runCond(now, "LogReadBlocked"), `LogReadBlocked at look ${looks}`).toEqual(blocked);
        expect(now?.status?.phase).toBe("Running");
        looks++;
        await new Promise((res) => setTimeout(res, 100));
      }
      // Looks between the probes, not only at them (a probe every 1.5 s).
      expect(looks).toBeGreaterThan(4);
      expect(await warnings()).toHaveLength(1);

      // Given back (as a grant made long ago: in effect at once). The next probe reads; the Run runs on.
      await ctl.assignRole({ principalId: p.objectId, scope: sub, role: role("log-queries-again", [QUERY]) });
      await waitFor("LogReadBlocked gone", async () => (await blockedOf()) === undefined, 30_000, 200);
      expect((await env.getRun("revoke", ns))?.status?.phase).toBe("Running");
      // The pipeline ends while the VM still runs: the exit probe reads the line and ends the Run.
      await env.shipLines(revokeCe, r, ["VMFORGE_EXIT_CODE=0"], "launcher");
      const done = await phase("revoke", "Succeeded", 30_000, ns);
      expect(done.status?.exitCode).toBe(0);
      expect(await warnings()).toHaveLength(1);
    } finally {
      await op.stop();
    }
  }, 150_000);

  it("capacity and quota refusals keep the Run Pending with Azure's reason until the fault clears; a size the location does not have fails at once", async () => {
    const ctl = azureControl();
    const since = (await ctl.requests(0)).lastSeq;
    // Sizes no other test uses: each fault touches only its own Run.
    const cases = [
      { run: "sku", size: "Standard_D4ds_v4", code: "SkuNotAvailable" as const, reason: "SkuNotAvailable" },
      { run: "quota", size: "Standard_D4s_v5", code: "OperationNotAllowed" as const, reason: "QuotaExceeded" },
      { run: "alloc", size: "Standard_D4ds_v5", code: "AllocationFailed" as const, reason: "AllocationFailed" },
    ];
    const added: string[] = [];
    try {
      for (const c of cases) added.push((await ctl.addCapacityError({ vmSize: c.size, location: LOCATION, code: c.code })).id);
      for (const c of cases) await env.kube.create(RunResource, env.runBody(c.run, CE, { overrides: { instanceType: c.size } }));
      await env.kube.create(RunResource, env.runBody("nosize", CE, { overrides: { instanceType: "Standard_D3ds_v9" } }));

      // A size that does not exist in the location: reported at once, no VM.
      const nosize = await phase("nosize", "Failed", 30_000);
      expect(nosize.status?.message).toMatch(/VM size is not valid/);
      expect(await env.vmOf(nosize)).toBeUndefined();

      // Synchronous refusals (SkuNotAvailable, quota): Pending with the reason, retried with
      // backoff (at least two refused PUTs), never Launching meanwhile, no VM.
      const seen = new Map<string, Set<string>>();
      const watch = async (): Promise<void> => {
        for (const c of cases) {
          const r = await env.getRun(c.run);
          if (!seen.has(c.run)) seen.set(c.run, new Set());
          seen.get(c.run)!.add(`${r?.status?.phase}/${r?.status?.reason}`);
        }
      };
      const runs = new Map<string, Run>();
      for (const c of cases) {
        const r = await waitFor(`${c.run} Pending ${c.reason}`, async () => {
          await watch();
          const r = await env.getRun(c.run);
          return r?.status?.phase === "Pending" && r.status.reason === c.reason ? r : undefined;
        }, 60_000, 200).catch((e: unknown) => {
          // What each Run went through, for whoever reads a failure.
          throw new Error(`${String(e)}; phases/reasons seen: ${JSON.stringify(Object.fromEntries([...seen].map(([k, v]) => [k, [...v]])))}`);
        });
        runs.set(c.run, r);
      }
      for (const c of cases.slice(0, 2)) {
        await waitFor(`${c.run}: two refused launches`, async () => {
          await watch();
          return (await vmPuts(runs.get(c.run)!, since)) >= 2;
        }, 60_000, 200);
        expect(await env.vmOf(runs.get(c.run)!)).toBeUndefined();
      }
      for (const c of cases.slice(0, 2)) {
        const phases = [...seen.get(c.run)!].map((s) => s.split("/")[0]);
        expect(phases.filter((p) => p !== "Pending"), `${c.run}: ${[...seen.get(c.run)!].join(", ")}`).toEqual([]);
        expect(cond((await env.getRun(c.run)) as unknown as ComputeEnvironment, "Reconciling")).toMatchObject({ status: "True", reason: c.reason });
      }
      // AllocationFailed (Azure accepted the PUT, then could not place the VM): the failed VM is
      // deleted and the Run is Pending with that reason.
      const alloc = runs.get("alloc")!;
      expect(alloc.status?.message).toMatch(/could not allocate/);
    } finally {
      // Only this test's errors: the capacity tests beside it keep theirs.
      for (const id of added) await ctl.removeCapacityError(id);
    }
    // The fault cleared: each Run launches (one VM each) and runs.
    for (const c of cases) {
      const r = await started(c.run);
      const vms = (await ctl.listVms()).filter((v) => v.tags["vmforge-run-uid"] === r.metadata.uid);
      expect(vms).toHaveLength(1);
      expect(vms[0]).toMatchObject({ vmSize: c.size, provisioningState: "Succeeded" });
    }
    for (const c of [...cases.map((x) => x.run), "nosize"]) await env.kube.delete(RunResource, env.ns, c);
  }, 150_000);

  it("an AllocationFailed VM seen by polls made before the launch's answer is recorded: the Run still waits Pending for capacity, not MachineTerminated", async () => {
    // The launch's answer reaches the operator 2.5 s after the VM PUT, so the tracker's polls (1 s)
    // see the unplaced VM before the launch records the VM as pending.
    const ctl = azureControl();
    const ns = await env.extraNamespace("azalloc");
    const real = env.provider();
    const slow: CloudProvider = Object.assign(Object.create(real) as CloudProvider, {
      launchRun: async (ctx: EnvContext, r: Run, hints?: { firstAttempt?: boolean }) => {
        const d = await real.launchRun(ctx, r, hints);
        await new Promise((res) => setTimeout(res, 2_500));
        return d;
      },
    });
    const { id } = await ctl.addCapacityError({ vmSize: "Standard_D2ds_v5", location: LOCATION, code: "AllocationFailed" });
    const own = await startOperator(kubeconfigPath(), new Map([["azure", slow]]), { namespaces: [ns], pollIntervalMs: 1_000 });
    try {
      await env.kube.create(ComputeEnvironmentResource, ceBody(ns, "allocce", { storageAccount: env.storageAccount }));
      await waitReady(env.kube, ns, "allocce");
      await env.kube.create(RunResource, env.runBody("late", "allocce", { overrides: { instanceType: "Standard_D2ds_v5" } }, ns));
      const seen = new Set<string>();
      const waiting = await waitFor("late Pending AllocationFailed", async () => {
        const r = await env.getRun("late", ns);
        seen.add(`${r?.status?.phase}/${r?.status?.reason}`);
        return r?.status?.phase === "Pending" && r.status.reason === "AllocationFailed" ? r : undefined;
      }, 45_000, 100).catch((e: unknown) => {
        throw new Error(`${String(e)}; seen: ${[...seen].join(", ")}`);
      });
      expect(waiting.status?.capacityWait?.refusals).toBeGreaterThanOrEqual(1);
      expect([...seen].filter((p) => p.startsWith("Failed") || p.startsWith("Succeeded"))).toEqual([]);
      await env.kube.delete(RunResource, ns, "late");
      await waitFor("late gone", async () => (await env.getRun("late", ns)) === undefined, 60_000, 250);
    } finally {
      await ctl.removeCapacityError(id);
      await own.stop();
    }
  }, 150_000);

  it("an AllocationFailed VM is said by every look and deleted by its Run once the capacity wait is recorded; a delete refused then is sent by the next attempt, which waits once more, and the Run runs on one VM", async () => {
    // The first delete of any VM of this CE is refused.
    const { ctl, ns, op, ce: own, rg, since, capacity: id } = await refused("azallocdel", "allocdel", "Standard_D2s_v3");
    const fault = await ctl.addFault({ operation: "Microsoft.Compute/virtualMachines/delete", path: `/resourceGroups/${rg}/providers/Microsoft.Compute/virtualMachines/`, status: 409, code: "Conflict", message: "injected: the VM is busy", count: 1 });
    try {
      await env.kube.create(RunResource, env.runBody("allocdel", "allocdel", { overrides: { instanceType: "Standard_D2s_v3" } }, ns));
      const { seen, note: track } = phasesSeen();
      const messages = new Set<string>();
      const note = (r: Run | undefined): void => {
        track(r);
        if (r?.status?.message) messages.add(r.status.message);
      };
      const waiting = await waitFor("allocdel Pending AllocationFailed", async () => {
        const r = await env.getRun("allocdel", ns);
        note(r);
        return r?.status?.phase === "Pending" && r.status.reason === "AllocationFailed" ? r : undefined;
      }, 45_000, 50);
      const uid = waiting.metadata.uid!;
      const tail = `/virtualMachines/${vmName(uid)}`.toLowerCase();
      await runningAfterStart("allocdel", ns, own, note, 90_000, seen);
      expect(seen.filter((p) => p.startsWith("Failed") || p.startsWith("Succeeded") || p.startsWith("Cancelled"))).toEqual([]);
      // The VM's own requests, in order: the refused PUT's VM deleted once the Run waited (409),
      // then by the next attempt after its look-up (accepted), and made again by a later PUT.
      const vmCalls = (await ctl.requests(since)).value.filter((r) => r.path.toLowerCase().endsWith(tail));
      const deletes = vmCalls.filter((r) => r.method === "DELETE");
      expect(deletes.map((r) => r.status >= 200 && r.status < 300 ? "ok" : String(r.status))).toEqual(["409", "ok"]);
      const puts = vmCalls.filter((r) => r.method === "PUT");
      expect(puts.length).toBeGreaterThanOrEqual(2);
      expect(deletes[1]!.seq).toBeLessThan(puts[puts.length - 1]!.seq);
      // The first delete came from the capacity wait, after the GET that confirmed the look's
      // refusal (no launch attempt met the refused delete: it would say so); the accepted one from
      // the next attempt, which looked the VM up, found it failed, and said it waits for the VM's
      // deletion (not launched onto the failed VM).
      const beforeFirstDelete = vmCalls.filter((r) => r.seq > puts[0]!.seq && r.seq < deletes[0]!.seq).map((r) => r.method);
      expect(beforeFirstDelete.length).toBeGreaterThanOrEqual(1);
      expect(new Set(beforeFirstDelete)).toEqual(new Set(["GET"]));
      const between = vmCalls.filter((r) => r.seq > deletes[0]!.seq && r.seq < deletes[1]!.seq).map((r) => r.method);
      expect(between).toContain("GET");
      expect(between).not.toContain("PUT");
      expect([...messages].some((m) => m.includes("could not allocate is being deleted")), [...messages].join(" | ")).toBe(true);
      expect([...messages].filter((m) => m.includes("could not be deleted yet"))).toEqual([]);
      await oneVmThenGone(ctl, "allocdel", ns, uid, "Standard_D2s_v3");
    } finally {
      await ctl.removeCapacityError(id).catch(() => undefined);
      await ctl.removeFault(fault.id).catch(() => undefined);
      await op.stop();
    }
  }, 180_000);

  it("an unplaced VM still listed after its deletion (ARM's lists lag), over the VM the next attempt made under its name: the new VM is not deleted, and the Run runs on it", async () => {
    // This CE's deleted VMs stay listed 6 s.
    const { ctl, ns, op, ce: own, rg, since, capacity: id } = await refused("azalloclag", "alloclag", "Standard_B2s");
    const lag = await ctl.addListLag({ path: `/resourceGroups/${rg}/providers/Microsoft.Compute/virtualMachines/`, ms: 6_000 });
    try {
      await env.kube.create(RunResource, env.runBody("alloclag", "alloclag", { overrides: { instanceType: "Standard_B2s" } }, ns));
      const { seen, note } = phasesSeen();
      const running = await runningAfterStart("alloclag", ns, own, note, 120_000, seen);
      expect(seen).toContain("Pending/AllocationFailed");
      expect(seen.filter((p) => p.startsWith("Failed") || p.startsWith("Cancelled"))).toEqual([]);
      const tail = `/virtualMachines/${vmName(running.metadata.uid!)}`.toLowerCase();
      const vmCalls = (await ctl.requests(since)).value.filter((r) => r.path.toLowerCase().endsWith(tail));
      // One VM refused, deleted once; one made after it and kept.
      expect(vmCalls.filter((r) => r.method === "DELETE" && r.status < 300)).toHaveLength(1);
      const puts = vmCalls.filter((r) => r.method === "PUT" && r.status < 300);
      expect(puts).toHaveLength(2);
      // The deleted VM was still listed over the new one, and a GET was asked (not a delete sent).
      const after = vmCalls.filter((r) => r.seq > puts[1]!.seq).map((r) => r.method);
      expect(after).toContain("GET");
      expect(after).not.toContain("DELETE");
      await oneVmThenGone(ctl, "alloclag", ns, running.metadata.uid, "Standard_B2s");
    } finally {
      await ctl.removeListLag(lag.id).catch(() => undefined);
      await ctl.removeCapacityError(id).catch(() => undefined);
      await op.stop();
    }
  }, 180_000);

  it("an operator started while ARM's list still shows the unplaced VM deleted before the VM made since under its name: it confirms with a GET and does not delete the new VM, and the Run runs on it", async () => {
    // The first operator's memory of the refusal goes with it (the status keeps the wait's count).
    const { ctl, ns, op, ce: own, rg, since, capacity: id } = await refused("azalloclagr", "alloclagr", "Standard_D2as_v5");
    const lag = await ctl.addListLag({ path: `/resourceGroups/${rg}/providers/Microsoft.Compute/virtualMachines/`, ms: 20_000 });
    let next: RunningOperator | undefined;
    let firstStopped = false;
    try {
      await env.kube.create(RunResource, env.runBody("alloclagr", "alloclagr", { overrides: { instanceType: "Standard_D2as_v5" } }, ns));
      const first = await waitFor("alloclagr Pending AllocationFailed", async () => {
        const r = await env.getRun("alloclagr", ns);
        return r?.status?.reason === "AllocationFailed" ? r : undefined;
      }, 45_000, 50);
      const tail = `/virtualMachines/${vmName(first.metadata.uid!)}`.toLowerCase();
      const vmCalls = async () => (await ctl.requests(since)).value.filter((r) => r.path.toLowerCase().endsWith(tail));
      // The second attempt's PUT accepted and recorded: the first operator goes, the next one starts.
      await waitFor("the second VM recorded", async () => {
        const r = await env.getRun("alloclagr", ns);
        return (await vmCalls()).filter((c) => c.method === "PUT" && c.status < 300).length === 2 && r?.status?.phase === "Launching" && r.status.reason === "Launching";
      }, 45_000, 50);
      await op.stop();
      firstStopped = true;
      const restartedAt = (await ctl.requests(0)).lastSeq;
      next = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      const { seen, note } = phasesSeen();
      const running = await runningAfterStart("alloclagr", ns, own, note, 120_000, seen);
      expect(seen.filter((p) => p.startsWith("Failed") || p.startsWith("Cancelled") || p === "Pending/AllocationFailed")).toEqual([]);
      const calls = await vmCalls();
      // The new operator asked a GET (its look showed the deleted VM, failed) and sent no delete.
      const afterRestart = calls.filter((c) => c.seq > restartedAt).map((c) => c.method);
      expect(afterRestart).toContain("GET");
      expect(afterRestart).not.toContain("DELETE");
      expect(calls.filter((c) => c.method === "PUT" && c.status < 300)).toHaveLength(2);
      await oneVmThenGone(ctl, "alloclagr", ns, running.metadata.uid, "Standard_D2as_v5");
    } finally {
      await ctl.removeListLag(lag.id).catch(() => undefined);
      await ctl.removeCapacityError(id).catch(() => undefined);
      if (!firstStopped) await op.stop();
      await next?.stop();
    }
  }, 180_000);

  it("a VM Azure could not place, found by a launch retried after the first answer was lost and not deleted then, is recorded on the waiting Run: cancelled, the Run deletes it", async () => {
    const real = env.provider();
    let lost = false;
    const losing: CloudProvider = Object.assign(Object.create(real) as CloudProvider, {
      launchRun: async (ctx: EnvContext, r: Run, hints?: LaunchHints) => {
        const d = await real.launchRun(ctx, r, hints);
        if (lost) return d;
        lost = true;
        throw new Error("injected: the answer to the VM PUT was lost");
      },
    });
    // A 10 s poll: the capacity wait's first backoff is one poll, so the next attempt (which would
    // delete the VM itself, the fault being spent) does not come before the cancel. The first
    // delete of a VM of this CE is refused.
    const { ctl, ns, op, rg, since, capacity: id } = await refused("azalloclost", "alloclost", "Standard_F4s_v2", { provider: losing, pollIntervalMs: 10_000 });
    const fault = await ctl.addFault({ operation: "Microsoft.Compute/virtualMachines/delete", path: `/resourceGroups/${rg}/providers/Microsoft.Compute/virtualMachines/`, status: 409, code: "Conflict", message: "injected: the VM is busy", count: 1 });
    try {
      await env.kube.create(RunResource, env.runBody("alloclost", "alloclost", { overrides: { instanceType: "Standard_F4s_v2" } }, ns));
      const waiting = await waitFor("alloclost waiting with its failed VM not deleted yet", async () => {
        const r = await env.getRun("alloclost", ns);
        return r?.status?.reason === "AllocationFailed" && r.status.message?.includes("could not be deleted yet") ? r : undefined;
      }, 60_000, 50);
      const uid = waiting.metadata.uid!;
      expect(lost).toBe(true);
      expect(waiting.status?.instance?.id?.toLowerCase() ?? "(no machine recorded)").toContain(`/virtualmachines/${vmName(uid)}`.toLowerCase());
      expect((await ctl.listVms()).filter((v) => v.tags["vmforge-run-uid"] === uid).map((v) => v.provisioningState)).toEqual(["Failed"]);
      const tail = `/virtualMachines/${vmName(uid)}`.toLowerCase();
      const cancelledAt = (await ctl.requests(0)).lastSeq;
      await env.kube.patch(RunResource, ns, "alloclost", { spec: { cancel: true } }, "merge");
      await waitFor("alloclost Cancelled", async () => (await env.getRun("alloclost", ns))?.status?.phase === "Cancelled", 60_000, 100);
      await waitFor("its failed VM deleted", async () => (await ctl.listVms()).filter((v) => v.tags["vmforge-run-uid"] === uid).length === 0, 30_000, 250);
      // Deleted for the cancel: the one delete that went through came after it (no launch attempt's).
      const deleted = (await ctl.requests(since)).value.filter((r) => r.method === "DELETE" && r.status < 300 && r.path.toLowerCase().endsWith(tail));
      expect(deleted.map((r) => r.seq > cancelledAt)).toEqual([true]);
      await env.kube.delete(RunResource, ns, "alloclost");
      await waitFor("alloclost gone", async () => (await env.getRun("alloclost", ns)) === undefined, 60_000, 250);
    } finally {
      await ctl.removeCapacityError(id).catch(() => undefined);
      await ctl.removeFault(fault.id).catch(() => undefined);
      await op.stop();
    }
  }, 180_000);

  it("a VM Azure accepted and could not place, refused after an operator restart: its Run counts on from the refusals before the launch, with their reason and no second Event for it", async () => {
    // The first operator makes the first refusal and the second launch, and never looks after that
    // launch (its looks hang until it stops), as one killed right after the PUT's record.
    const real = env.provider();
    let launches = 0;
    const blindAfterRelaunch: CloudProvider = Object.assign(Object.create(real) as CloudProvider, {
      launchRun: async (ctx: EnvContext, r: Run, hints?: LaunchHints) => {
        const d = await real.launchRun(ctx, r, hints);
        launches++;
        return d;
      },
      describeRuns: async (ctx: EnvContext, runs: Run[]) => {
        if (launches < 2) return real.describeRuns(ctx, runs);
        return new Promise<never>((_, reject) => ctx.signal?.addEventListener("abort", () => reject(new Error("stopped"))));
      },
    });
    const { ns, op, since, capacity: id, ctl, ce: own } = await refused("azallocrs", "allocrs", "Standard_D4as_v5", { times: 2, provider: blindAfterRelaunch });
    let next: RunningOperator | undefined;
    try {
      await env.kube.create(RunResource, env.runBody("allocrs", "allocrs", { overrides: { instanceType: "Standard_D4as_v5" } }, ns));
      // Launched again and recorded: the wait's count and reason are kept through the launch.
      const relaunched = await waitFor("allocrs launched again", async () => {
        const r = await env.getRun("allocrs", ns);
        if (launches >= 2 && r?.status?.phase === "Launching") return r;
        throw new Error(`${launches} launches; ${r?.status?.phase}/${r?.status?.reason}`);
      }, 60_000, 50);
      expect(relaunched.status?.capacityWait).toMatchObject({ refusals: 1, reason: "AllocationFailed" });
      await op.stop();
      next = await startOperator(kubeconfigPath(), new Map([["azure", env.provider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      const second = await waitFor("allocrs refused again", async () => {
        const r = await env.getRun("allocrs", ns);
        if (r?.status?.phase === "Pending" && r.status.reason === "AllocationFailed") return r;
        throw new Error(`${r?.status?.phase}/${r?.status?.reason}`);
      }, 60_000, 50);
      expect(second.status?.capacityWait).toMatchObject({ refusals: 2, reason: "AllocationFailed" });
      const { seen, note } = phasesSeen();
      const running = await runningAfterStart("allocrs", ns, own, note, 120_000, seen);
      expect(running.status?.capacityWait).toBeUndefined();
      const uid = running.metadata.uid!;
      const tail = `/virtualMachines/${vmName(uid)}`.toLowerCase();
      expect((await ctl.requests(since)).value.filter((r) => r.method === "PUT" && r.status < 300 && r.path.toLowerCase().endsWith(tail))).toHaveLength(3);
      // One Event for the cause, however many refusals and operators.
      const events = (await env.kube.list<EventObject>(EventResource, { namespace: ns })).items
        .filter((e) => e.regarding?.uid === uid && e.reason === "AllocationFailed");
      expect(events.map((e) => e.series?.count ?? 1).reduce((a, b) => a + b, 0)).toBe(1);
      await oneVmThenGone(ctl, "allocrs", ns, uid, "Standard_D4as_v5");
    } finally {
      await ctl.removeCapacityError(id).catch(() => undefined);
      await op.stop();
      await next?.stop();
    }
  }, 180_000);

  it("refusals of VMs Azure accepted and could not place are counted across their launches: each wait is longer than the last until a VM is placed", async () => {
    const ctl = azureControl();
    const { ns, op } = await ownOperatorAndCe("azallocn", "allocn");
    const since = (await ctl.requests(0)).lastSeq;
    // A size no other test uses, refused a place twice.
    const { id } = await ctl.addCapacityError({ vmSize: "Standard_D4s_v3", location: LOCATION, code: "AllocationFailed", count: 2 });
    try {
      await env.kube.create(RunResource, env.runBody("allocn", "allocn", { overrides: { instanceType: "Standard_D4s_v3" } }, ns));
      // Each capacity wait the Run showed, by its refusal count.
      const waits: number[] = [];
      const placed = await waitFor("allocn set up", async () => {
        const r = await env.getRun("allocn", ns);
        const n = r?.status?.capacityWait?.refusals;
        if (r?.status?.phase === "Pending" && n !== undefined && waits[waits.length - 1] !== n) waits.push(n);
        return r?.status?.phase === "Launching" && r.status.reason === "SettingUp" ? r : undefined;
      }, 90_000, 50).catch((e: unknown) => {
        throw new Error(`${String(e)}; waits seen: ${waits.join(", ")}`);
      });
      const tail = `/virtualMachines/${vmName(placed.metadata.uid!)}`.toLowerCase();
      // Three PUTs (two refused a place, one placed); a wait for a VM still being deleted is not counted.
      expect((await ctl.requests(since)).value.filter((r) => r.method === "PUT" && r.path.toLowerCase().endsWith(tail))).toHaveLength(3);
      expect(waits).toEqual([1, 2]);
      await env.kube.delete(RunResource, ns, "allocn");
      await waitFor("allocn gone", async () => (await env.getRun("allocn", ns)) === undefined, 60_000, 250);
    } finally {
      await ctl.removeCapacityError(id).catch(() => undefined);
      await op.stop();
    }
  }, 180_000);
});
