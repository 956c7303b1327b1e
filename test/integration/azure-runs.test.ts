/**
 * Azure Runs through the OPERATOR (issue 11) on the real kube-apiserver and the Azure emulator, the
 * operator's principal holding exactly the seed's roles (+ Reader and the documented additions).
 * No VM player here: the VMs stay "running" unless a test changes their power state through the
 * emulator's controls, as Azure would when the OS shuts down.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import type { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { Run } from "../../src/api/types.js";
import { resourceGroupName, vmName } from "../../src/cloud/azure/names.js";
import { waitFor, type RunningOperator } from "../support/operator.js";
import { azureClientOptions, azureControl, azureTestCredential } from "../harness/helpers.js";
import type { EmulatedVm } from "../azure-emulator/control.js";
import { ceBody, getCe, waitGone, waitReady } from "../support/azure-env.js";
import { setupAzureRuns, type AzureRunsEnv } from "../support/azure-runs.js";

let env: AzureRunsEnv;
let kube: KubeClient;
let op: RunningOperator | undefined;
let ns: string;

function runBody(name: string, ce: string, over: Partial<Run["spec"]> = {}): Run {
  return env.runBody(name, ce, over);
}

async function getRun(name: string): Promise<Run | undefined> {
  return env.getRun(name);
}

async function ourVms(): Promise<EmulatedVm[]> {
  return (await azureControl().listVms()).filter((v) => v.tags["vmforge-run-uid"] !== undefined && v.resourceGroup.toLowerCase().includes(ns));
}

beforeAll(async () => {
  env = await setupAzureRuns({ prefix: "azrun", principal: "vmforge-runs" });
  ({ kube, ns } = env);
  op = await env.start();
}, 120_000);

afterAll(async () => {
  await env?.stop();
});

describe("Azure Runs through the operator (emulator)", () => {
  it("one VM per Run, followed with at most one list call per resource group per poll; a stopped VM is deleted; cancel deletes the VM; CE deletion deletes every VM then the group", async () => {
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "runs"));
    const ce = await waitReady(kube, ns, "runs");
    const rg = resourceGroupName({ namespace: ns, name: "runs", uid: ce.metadata.uid! });
    const names = Array.from({ length: 10 }, (_, i) => `r${i}`);
    for (const n of names) await kube.create(RunResource, runBody(n, "runs", n === "r9" ? { overrides: { spot: true } } : {}));
    const runs = await waitFor("every Run launched", async () => {
      const all = await Promise.all(names.map(getRun));
      return all.every((r) => r?.status?.instance?.id) ? (all as Run[]) : undefined;
    }, 90_000, 250);

    // One VM per Run, named from its UID, with the CE's identity, inline NIC/IP/disk deleted with it, the launcher in userData.
    const vms = await ourVms();
    expect(vms).toHaveLength(10);
    for (const r of runs) {
      const vm = vms.find((v) => v.name === vmName(r.metadata.uid!));
      expect(vm, r.metadata.name).toBeDefined();
      expect(vm!.resourceGroup.toLowerCase()).toBe(rg.toLowerCase());
      expect(vm!.tags).toMatchObject({ "vmforge-run-uid": r.metadata.uid, "vmforge-ce-uid": ce.metadata.uid });
      expect(vm!.userDataText).toContain(`VMF_RUN_UID='${r.metadata.uid}'`);
      expect(JSON.stringify(vm!.identity)).toContain(ce.status!.azure!.identityId!.split("/").pop());
      expect(r.status!.log).toMatchObject({ provider: "loganalytics", table: "VmforgeRunLogs_CL" });
    }
    expect(vms.find((v) => v.name === vmName(runs[9]!.metadata.uid!))!).toMatchObject({ priority: "Spot", evictionPolicy: "Delete" });

    // Following: count list calls on the resource group over at least four polls.
    const ctl = azureControl();
    const { lastSeq } = await ctl.clearRequests();
    const polls = op!.operator.tracker.pollCount;
    await waitFor("four polls", async () => op!.operator.tracker.pollCount - polls >= 4, 60_000, 100);
    const pollsDone = op!.operator.tracker.pollCount - polls;
    const log = (await ctl.requests(lastSeq)).value;
    const lists = log.filter((r) => r.method === "GET" && r.operation === "Microsoft.Compute/virtualMachines/read" && /\/virtualMachines$/i.test(r.path));
    // A poll under way when the log was cleared may have listed before it: it counts, its call not.
    expect(lists.length).toBeGreaterThanOrEqual(pollsDone - 1);
    expect(lists.length).toBeLessThanOrEqual(pollsDone + 1);
    expect(log.filter((r) => r.method === "GET" && /\/virtualMachines\/[^/]+$/i.test(r.path))).toEqual([]); // never one GET per Run

    // The OS of r0 shut down: Azure keeps the VM (stopped, still billed) until the operator deletes it.
    const r0 = runs[0]!;
    await ctl.setVmPowerState(vms.find((v) => v.name === vmName(r0.metadata.uid!))!.id, "stopped");
    await waitFor("r0 ended and its VM gone", async () => {
      const r = await getRun("r0");
      const gone = !(await ourVms()).some((v) => v.name === vmName(r0.metadata.uid!));
      return ["Succeeded", "Failed"].includes(r?.status?.phase ?? "") && gone ? r : undefined;
    }, 60_000, 250);

    // Cancel r1: its VM is deleted and the Run ends Cancelled.
    await kube.patch(RunResource, ns, "r1", { spec: { cancel: true } }, "merge");
    await waitFor("r1 cancelled, VM gone", async () => {
      const r = await getRun("r1");
      const gone = !(await ourVms()).some((v) => v.name === vmName(runs[1]!.metadata.uid!));
      return r?.status?.phase === "Cancelled" && gone ? r : undefined;
    }, 60_000, 250);

    // Deleting the CE with 8 running Runs: every VM is deleted, then the resource group.
    await kube.delete(ComputeEnvironmentResource, ns, "runs");
    await waitGone(kube, ns, "runs");
    expect(await ourVms()).toEqual([]);
    const rm = new ResourceManagementClient(await azureTestCredential(), env.info.subscriptionId, azureClientOptions());
    expect((await rm.resourceGroups.checkExistence(rg)).body).toBe(false);
    expect(await getCe(kube, ns, "runs")).toBeUndefined();
  }, 300_000);
});
