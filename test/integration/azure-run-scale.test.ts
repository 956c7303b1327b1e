/**
 * Azure Runs at scale through the OPERATOR on the real kube-apiserver and the Azure emulator
 * (issue 11): 50 Runs across two CEs of one subscription followed with one VM list of the
 * subscription per poll (counted from the emulator's request log, with the emulator paging lists
 * so the operator must follow nextLink), and a CE deleted with 25 running Runs: every VM (with its
 * NIC, public IP and OS disk), then the resource group, then the finalizers gone.
 *
 * The VMs are played by the sandbox's VM player: each VM's customData runs as cloud-init would run
 * it (the bootstrap fetches the launcher from the VM's instance metadata endpoint), with stand-ins
 * only for what the image provides (nextflow, docker, shutdown); the launcher's token, log
 * ingestion and upload calls go to the emulator and Azurite for real. 50 of them at once finish in
 * seconds here. The operator is the real one, with a 1 s poll interval from its configuration.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { AuthorizationManagementClient } from "@azure/arm-authorization";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import { createLogger } from "../../src/engine/logger.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { resourceGroupName, roleDefinitionGuid, vmName } from "../../src/cloud/azure/names.js";
import { waitFor } from "../support/operator.js";
import { azureClientOptions, azureControl, azureTestCredential } from "../harness/helpers.js";
import { startVmPlayer } from "../support/azure-player.js";
import type { RequestLogEntry } from "../azure-emulator/control.js";
import { ceBody, getCe, secretCredentials, waitReady } from "../support/azure-env.js";
import { setupAzureRuns, type AzureRunsEnv } from "../support/azure-runs.js";

const PAGE = 20;
const POLL_MS = 1_000;

let env: AzureRunsEnv;
let rm: ResourceManagementClient;

beforeAll(async () => {
  env = await setupAzureRuns({ prefix: "azscale", principal: "vmforge-scale", blob: true, pollIntervalMs: POLL_MS });
  rm = new ResourceManagementClient(await azureTestCredential(), env.info.subscriptionId, azureClientOptions());
  // Resource Manager pages long lists: with 20 a page, 50 VMs are three pages behind nextLink.
  await azureControl().settings({ listPageSize: PAGE });
  await env.start(undefined, [env.ns]);
}, 180_000);

afterAll(async () => {
  await env?.stop();
  await azureControl().settings({ listPageSize: 0 });
});

const rgOf = (ce: ComputeEnvironment): string => resourceGroupName({ namespace: ce.metadata.namespace!, name: ce.metadata.name!, uid: ce.metadata.uid! });

async function runsOf(ce: string): Promise<Run[]> {
  const all = (await env.kube.list<Run>(RunResource, { namespace: env.ns })).items;
  return all.filter((r) => r.spec.computeEnvironmentRef.name === ce);
}

async function createRuns(ce: string, prefix: string, n: number): Promise<void> {
  for (let i = 0; i < n; i += 10) {
    await Promise.all(Array.from({ length: Math.min(10, n - i) }, (_, j) => env.kube.create(RunResource, env.runBody(`${prefix}-${i + j}`, ce))));
  }
}

/** Waits until every Run of the CE has its VM on record and Azure reports that VM running. */
async function allVmsRunning(ce: string, n: number): Promise<Run[]> {
  return waitFor(`${n} VMs of ${ce} running`, async () => {
    const runs = (await runsOf(ce)).filter((r) => r.status?.instance?.id);
    const running = new Set((await azureControl().listVms()).filter((v) => v.powerState === "running").map((v) => v.name));
    const ok = runs.filter((r) => running.has(vmName(r.metadata.uid!)));
    if (ok.length === n) return runs;
    throw new Error(`${ok.length}/${n} with a running VM on record`);
  }, 240_000, 500);
}

/** What of the Runs' VMs (VM, NIC, public IP, OS disk) is still in the resource group. */
async function runResourcesIn(rg: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const r of rm.resources.listByResourceGroup(rg)) {
      if (/^Microsoft\.(Compute\/virtualMachines|Compute\/disks|Network\/networkInterfaces|Network\/publicIPAddresses)$/i.test(r.type ?? "")) out.push(`${r.type}/${r.name}`);
    }
  } catch (e) {
    if ((e as { statusCode?: number }).statusCode !== 404) throw e;
  }
  return out;
}

/** VM list requests of the operator in the emulator's log: first pages of subscription and resource-group lists, and next pages. */
function vmLists(log: RequestLogEntry[], caller: string, sub: string) {
  const mine = log.filter((r) => r.method === "GET" && r.caller === caller && r.status === 200);
  const subList = new RegExp(`^/subscriptions/${sub}/providers/Microsoft\\.Compute/virtualMachines$`, "i");
  const rgList = new RegExp(`^/subscriptions/${sub}/resourceGroups/([^/]+)/providers/Microsoft\\.Compute/virtualMachines$`, "i");
  const next = (r: RequestLogEntry): boolean => new URLSearchParams(r.query ?? "").has("$skiptoken");
  const byRg = new Map<string, number>();
  for (const r of mine) {
    const m = rgList.exec(r.path);
    if (m && !next(r)) byRg.set(m[1]!.toLowerCase(), (byRg.get(m[1]!.toLowerCase()) ?? 0) + 1);
  }
  return {
    subscription: mine.filter((r) => subList.test(r.path) && !next(r)),
    subscriptionNextPages: mine.filter((r) => subList.test(r.path) && next(r)).length,
    byRg,
  };
}

describe("Azure Runs at scale through the operator (emulator)", () => {
  it("50 Runs across 2 CEs of one subscription: one VM list of the subscription per poll (all pages followed), and every Run succeeds with its VM gone", async () => {
    await env.kube.create(ComputeEnvironmentResource, ceBody(env.ns, "sa", { storageAccount: env.storageAccount }));
    await env.kube.create(ComputeEnvironmentResource, ceBody(env.ns, "sb", { storageAccount: env.storageAccount }));
    const ces = [await waitReady(env.kube, env.ns, "sa"), await waitReady(env.kube, env.ns, "sb")];
    await createRuns("sa", "a", 25);
    await createRuns("sb", "b", 25);
    const runs = [...(await allVmsRunning("sa", 25)), ...(await allVmsRunning("sb", 25))];
    expect(new Set(runs.map((r) => r.status!.instance!.id)).size).toBe(50);

    // A window of whole polls: from just after one poll ended to just after the third next one ended.
    const tracker = env.op!.operator.tracker;
    const first = tracker.pollCount;
    const p0 = await waitFor("a poll to end", async () => (tracker.pollCount > first ? tracker.pollCount : undefined), 30_000, 20);
    const from = (await azureControl().requests(Number.MAX_SAFE_INTEGER)).lastSeq;
    await waitFor("three more polls", async () => tracker.pollCount >= p0 + 3, 60_000, 20);
    const p1 = tracker.pollCount;
    const log = (await azureControl().requests(from)).value;
    const polls = p1 - p0;
    expect(polls).toBeGreaterThanOrEqual(3);

    const lists = vmLists(log, env.principal.objectId, env.info.subscriptionId);
    // Each poll in the window listed the subscription once (a poll starting just before the log
    // was read may add one), with statusOnly, for both CEs' 50 Runs; it never listed a group.
    expect(lists.subscription.length).toBeGreaterThanOrEqual(polls);
    expect(lists.subscription.length).toBeLessThanOrEqual(polls + 1);
    for (const r of lists.subscription) expect(new URLSearchParams(r.query).get("statusOnly")).toBe("true");
    for (const ce of ces) expect(lists.subscription.length + (lists.byRg.get(rgOf(ce).toLowerCase()) ?? 0), rgOf(ce)).toBeLessThanOrEqual(polls + 1);
    // 50 VMs at 20 a page: every list read its two next pages.
    expect(lists.subscriptionNextPages).toBe(2 * lists.subscription.length);

    // The VMs boot: the player runs each VM's customData (the launcher, with stand-ins only for
    // nextflow and shutdown), which ships its log, uploads the exit status and shuts the OS down.
    const vms = startVmPlayer("scale", { pipelineExitCode: 0, pollMs: 500 });
    const { player, said } = vms;
    try {
      await waitFor("50 launchers done", async () => {
        const played = player.played().filter((p) => p.launcherExit !== undefined);
        if (played.length === 50) return true;
        throw new Error(`${played.length}/50 launchers ended`);
      }, 420_000, 1_000);
    } finally {
      await vms.stop();
    }
    const played = player.played();
    expect(played).toHaveLength(50);
    expect(played.filter((p) => p.launcherExit !== 0).map((p) => `${p.runName}: ${p.launcherExit} ${p.killedBecause ?? ""}`), said.slice(-20).join("\n")).toEqual([]);
    const done = await waitFor("50 Runs Succeeded", async () => {
      const all = [...(await runsOf("sa")), ...(await runsOf("sb"))];
      const ok = all.filter((r) => r.status?.phase === "Succeeded");
      if (ok.length === 50) return all;
      const other = all.filter((r) => r.status?.phase !== "Succeeded").map((r) => `${r.metadata.name}:${r.status?.phase}/${r.status?.reason ?? "-"}`);
      throw new Error(`${ok.length}/50 Succeeded; ${other.slice(0, 5).join(", ")}`);
    }, 240_000, 500);
    for (const r of done) expect(r.status?.exitCode, r.metadata.name).toBe(0);
    // What the launchers shipped is read back from Log Analytics (one Run of each CE).
    for (const r of [done.find((x) => x.spec.computeEnvironmentRef.name === "sa")!, done.find((x) => x.spec.computeEnvironmentRef.name === "sb")!]) {
      const ce = ces.find((c) => c.metadata.name === r.spec.computeEnvironmentRef.name)!;
      const chunk = await env.provider().readRunLog({ ce, credentials: secretCredentials(env.info, env.principal), logger: createLogger({ level: "silent" }) }, r);
      expect(chunk.lines.join("\n"), r.metadata.name).toContain("Hello world!");
    }
    for (const ce of ces) expect(await runResourcesIn(rgOf(ce)), rgOf(ce)).toEqual([]);
    expect((await azureControl().listVms()).filter((v) => v.tags["vmforge-ce-uid"] === ces[0]!.metadata.uid || v.tags["vmforge-ce-uid"] === ces[1]!.metadata.uid)).toEqual([]);
  }, 600_000);

  it("deleting a CE with 25 running Runs deletes every VM with its NIC, public IP and OS disk, then the resource group; finalizers go and nothing of it is left", async () => {
    await env.kube.create(ComputeEnvironmentResource, ceBody(env.ns, "sdel", { storageAccount: env.storageAccount }));
    const ce = await waitReady(env.kube, env.ns, "sdel");
    const rg = rgOf(ce);
    const s = ce.status!.azure!;
    await createRuns("sdel", "d", 25);
    const runs = await allVmsRunning("sdel", 25);
    // Each VM came with its NIC, public IP and OS disk.
    expect((await runResourcesIn(rg)).length).toBe(100);
    // Their launchers run a pipeline that would take 10 minutes.
    const vms2 = startVmPlayer("scale", { pipelineExitCode: 0, pipelineSeconds: 600, pollMs: 500 });
    const { player } = vms2;
    try {
      await waitFor("25 launchers running", async () => {
        const up = player.played().filter((p) => p.launcherExit === undefined);
        if (up.length === 25) return true;
        throw new Error(`${up.length}/25 launchers running`);
      }, 120_000, 500);

      await env.kube.delete(ComputeEnvironmentResource, env.ns, "sdel");
      await waitFor("CE sdel gone", async () => (await getCe(env.kube, env.ns, "sdel")) === undefined, 300_000, 500);
      // Every launcher was lost with its VM, none ended on its own.
      await waitFor("25 launchers gone with their VMs", async () => player.played().filter((p) => p.killedBecause === "the VM was deleted").length === 25, 30_000, 500);
    } finally {
      await vms2.stop();
    }

    // Every Run ended (its VM gone before the CE could go); a Run keeps its finalizer until it is
    // deleted, and with no VM left to wait for, deleting them releases every finalizer at once.
    const after = await runsOf("sdel");
    expect(after).toHaveLength(25);
    for (const r of after) expect(r.status?.phase, r.metadata.name).toBe("Cancelled");
    await Promise.all(after.map((r) => env.kube.delete(RunResource, env.ns, r.metadata.name!)));
    await waitFor("the Runs of sdel gone", async () => (await runsOf("sdel")).length === 0, 60_000, 250);
    // Nothing of the CE in the emulator: no VM, no resource group, nothing else in the
    // subscription tagged with it or inside its group, its role definition and assignments gone.
    const vms = await azureControl().listVms();
    for (const r of runs) expect(vms.find((v) => v.name === vmName(r.metadata.uid!)), r.metadata.name).toBeUndefined();
    expect(vms.filter((v) => v.tags["vmforge-ce-uid"] === ce.metadata.uid)).toEqual([]);
    expect((await rm.resourceGroups.checkExistence(rg)).body).toBe(false);
    const left: string[] = [];
    for await (const r of rm.resources.list()) {
      if ((r.id ?? "").toLowerCase().includes(`/resourcegroups/${rg.toLowerCase()}/`) || r.tags?.["vmforge-ce-uid"] === ce.metadata.uid) left.push(r.id!);
    }
    expect(left).toEqual([]);
    const authz = new AuthorizationManagementClient(await azureTestCredential(), env.info.subscriptionId, azureClientOptions());
    const gone = async (f: () => Promise<unknown>): Promise<boolean> => {
      try {
        await f();
        return false;
      } catch (e) {
        if ((e as { statusCode?: number }).statusCode === 404) return true;
        throw e;
      }
    };
    expect(await gone(() => authz.roleDefinitions.get(`subscriptions/${env.info.subscriptionId}`, roleDefinitionGuid(ce.metadata.uid!)))).toBe(true);
    for (const id of [s.roleAssignmentContainerId, s.roleAssignmentDcrId].filter((x): x is string => !!x)) {
      expect(await gone(() => authz.roleAssignments.getById(id.slice(1))), id).toBe(true);
    }
  }, 600_000);
});
