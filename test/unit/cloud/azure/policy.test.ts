// The Azure roles per phase (seed 001), the operator's calls checked against them, and
// `vmforge policy azure`.
import { seedPath } from "../../../harness/seed-policy.js";
import { readFileSync } from "node:fs";
import { beforeEach, describe, expect, it } from "vitest";
import {
  AZURE_PHASES,
  actionAllowed,
  azureAdditions,
  azureRoles,
  phaseAllows,
  type AzurePhase,
} from "../../../../src/cloud/azure/policy.js";
import type { RoleJson } from "../../../../src/cloud/azure/policy.js";
import { azureTuning, disposeAzureEnvironment, provisionAzureEnvironment } from "../../../../src/cloud/azure/environment.js";
import { describeRuns, launchRun, readRunLog, sweepOrphans, terminateRun } from "../../../../src/cloud/azure/runs.js";
import { policyCommand } from "../../../../src/cli/policy.js";
import type { EnvContext } from "../../../../src/cloud/provider.js";
import type { Run } from "../../../../src/api/types.js";
import { createLogger } from "../../../../src/engine/logger.js";
import { FakeAzure, sampleAzureCe } from "./fake-azure.js";
import { callSites } from "./call-sites.js";


/**
 * The permission each SDK operation needs, from Azure's operation reference. The test below reads
 * every call site, so a new SDK call without an entry here fails too.
 */
const NEEDS: Record<string, string> = {
  "resources.resourceGroups.get": "Microsoft.Resources/subscriptions/resourceGroups/read",
  "resources.resourceGroups.createOrUpdate": "Microsoft.Resources/subscriptions/resourceGroups/write",
  "resources.resourceGroups.delete": "Microsoft.Resources/subscriptions/resourceGroups/delete",
  "resources.resources.list": "Microsoft.Resources/subscriptions/resources/read",
  "resources.resources.getById": "Microsoft.Storage/storageAccounts/blobServices/containers/read",
  "msi.userAssignedIdentities.get": "Microsoft.ManagedIdentity/userAssignedIdentities/read",
  "msi.userAssignedIdentities.createOrUpdate": "Microsoft.ManagedIdentity/userAssignedIdentities/write",
  "authorization.roleDefinitions.get": "Microsoft.Authorization/roleDefinitions/read",
  "authorization.permissions.listForResource": "Microsoft.Authorization/permissions/read",
  "authorization.roleDefinitions.createOrUpdate": "Microsoft.Authorization/roleDefinitions/write",
  "authorization.roleDefinitions.delete": "Microsoft.Authorization/roleDefinitions/delete",
  "authorization.roleAssignments.get": "Microsoft.Authorization/roleAssignments/read",
  "authorization.roleAssignments.create": "Microsoft.Authorization/roleAssignments/write",
  "authorization.roleAssignments.delete": "Microsoft.Authorization/roleAssignments/delete",
  "authorization.roleAssignments.listForSubscription": "Microsoft.Authorization/roleAssignments/read",
  "logAnalytics.workspaces.get": "Microsoft.OperationalInsights/workspaces/read",
  "logAnalytics.workspaces.createOrUpdate": "Microsoft.OperationalInsights/workspaces/write",
  "logAnalytics.workspaces.delete": "Microsoft.OperationalInsights/workspaces/delete",
  "logAnalytics.tables.get": "Microsoft.OperationalInsights/workspaces/tables/read",
  "logAnalytics.tables.createOrUpdate": "Microsoft.OperationalInsights/workspaces/tables/write",
  "monitor.dataCollectionEndpoints.get": "Microsoft.Insights/DataCollectionEndpoints/Read",
  "monitor.dataCollectionEndpoints.create": "Microsoft.Insights/DataCollectionEndpoints/Write",
  "monitor.dataCollectionEndpoints.delete": "Microsoft.Insights/DataCollectionEndpoints/Delete",
  "monitor.dataCollectionRules.get": "Microsoft.Insights/DataCollectionRules/Read",
  "monitor.dataCollectionRules.create": "Microsoft.Insights/DataCollectionRules/Write",
  "monitor.dataCollectionRules.delete": "Microsoft.Insights/DataCollectionRules/Delete",
  "network.virtualNetworks.get": "Microsoft.Network/virtualNetworks/read",
  "network.virtualNetworks.createOrUpdate": "Microsoft.Network/virtualNetworks/write",
  "network.subnets.get": "Microsoft.Network/virtualNetworks/subnets/read",
  "network.networkInterfaces.list": "Microsoft.Network/networkInterfaces/read",
  "network.networkInterfaces.delete": "Microsoft.Network/networkInterfaces/delete",
  "network.publicIPAddresses.list": "Microsoft.Network/publicIPAddresses/read",
  "network.publicIPAddresses.delete": "Microsoft.Network/publicIPAddresses/delete",
  "compute.disks.listByResourceGroup": "Microsoft.Compute/disks/read",
  "compute.disks.delete": "Microsoft.Compute/disks/delete",
  "compute.resourceSkus.list": "Microsoft.Compute/skus/read",
  "compute.virtualMachineImages.list": "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read",
  "compute.virtualMachineImages.get": "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read",
  "compute.virtualMachines.get": "Microsoft.Compute/virtualMachines/read",
  "compute.virtualMachines.list": "Microsoft.Compute/virtualMachines/read",
  "compute.virtualMachines.listAll": "Microsoft.Compute/virtualMachines/read",
  "compute.virtualMachines.createOrUpdate": "Microsoft.Compute/virtualMachines/write",
  "compute.virtualMachines.delete": "Microsoft.Compute/virtualMachines/delete",
  "logsQuery.queryWorkspace": "Microsoft.OperationalInsights/workspaces/query/read",
  "blobs.read": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
};

/** Extra permissions Azure checks on the same request (linked access checks). */
const LINKED: Record<string, string[]> = {
  "compute.virtualMachines.createOrUpdate": [
    "Microsoft.Network/networkInterfaces/write",
    "Microsoft.Network/networkInterfaces/join/action",
    "Microsoft.Network/publicIPAddresses/write",
    "Microsoft.Network/publicIPAddresses/join/action",
    "Microsoft.Network/virtualNetworks/subnets/join/action",
    "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
  ],
};

describe("Azure roles (seed 001) and the operator's calls", () => {
  it("matches the seed documents' role JSON, phase by phase", () => {
    // The seeds live beside the checkout (shared/seeds); a missing one fails here, never skips.
    const seed = readFileSync(seedPath("001"), "utf8");
    const roles = azureRoles();
    for (const p of AZURE_PHASES) {
      const start = seed.indexOf(`"roleName": "${roles[p].roleName}"`);
      expect(start, p).toBeGreaterThan(0);
      const block = seed.slice(start, seed.indexOf("notDataActions", start));
      const listed = [...block.matchAll(/"(Microsoft\.[^"]+)"/g)].map((m) => m[1]);
      expect([...roles[p].actions, ...roles[p].dataActions].sort(), p).toEqual(listed.sort());
    }
  });

  it("every SDK call goes through azCall/azGet/azDelete naming the permission it needs", () => {
    const { sites, sdkCalls, spans } = callSites();
    expect(sites.length).toBeGreaterThan(30);
    for (const call of sdkCalls) {
      const inside = spans.some((s) => s.file === call.file && s.from < call.at && call.at < s.to);
      expect(inside, `${call.file}: ${call.op} is not inside azCall/azGet/azDelete`).toBe(true);
    }
    for (const s of sites) {
      expect(s.ops.length, `${s.file}: ${s.action} wraps no SDK call`).toBeGreaterThan(0);
      for (const op of s.ops) {
        expect(NEEDS[op], `${s.file}: no permission known for ${op}`).toBeDefined();
        expect(NEEDS[op]!.toLowerCase(), `${s.file}: ${op} is labelled ${s.action}`).toBe(s.action.toLowerCase());
      }
    }
  });

  it("every call's permission is in its phase's role (seed role + documented additions, or the built-in Reader)", () => {
    for (const s of callSites().sites) {
      expect(phaseAllows(s.phase, s.action), `${s.file}: ${s.action} is not in the ${s.phase} role`).toBe(true);
      for (const op of s.ops) for (const linked of LINKED[op] ?? []) expect(phaseAllows(s.phase, linked), `${s.file}: ${op} needs ${linked} in ${s.phase}`).toBe(true);
    }
  });

  it("additions are few and each says why; the seed's dispose role lacks the reads the ownership checks need", () => {
    const add = azureAdditions();
    expect(add.create.map((a) => a.action)).toEqual(["Microsoft.Authorization/roleAssignments/delete"]);
    expect(add.dispose.map((a) => a.action)).toEqual([
      "Microsoft.Resources/subscriptions/resourceGroups/read",
      "Microsoft.Authorization/roleDefinitions/read",
      "Microsoft.Authorization/roleAssignments/read",
    ]);
    for (const p of AZURE_PHASES) for (const a of add[p]) expect(a.why.length).toBeGreaterThan(20);
    for (const p of AZURE_PHASES) for (const a of add[p]) expect(actionAllowed(a.action, azureRoles()[p].actions), `${p}: ${a.action} is already in the seed role`).toBe(false);
  });

  it("matches wildcards the way Azure RBAC does", () => {
    expect(actionAllowed("Microsoft.Compute/virtualMachines/read", ["*/read"])).toBe(true);
    expect(actionAllowed("microsoft.insights/datacollectionrules/read", ["Microsoft.Insights/DataCollectionRules/Read"])).toBe(true);
    expect(actionAllowed("Microsoft.Compute/virtualMachines/write", ["Microsoft.Compute/*/read"])).toBe(false);
    expect(phaseAllows("read", "Microsoft.Compute/skus/read")).toBe(true);
    expect(phaseAllows("read", "Microsoft.Compute/virtualMachines/write")).toBe(false);
  });
});

describe("the operator, run against stand-ins, calls only what its phase's role allows", () => {
  function recordPhase(az: FakeAzure, from: number, phase: AzurePhase, allowReader = false, alsoPhase?: AzurePhase): void {
    for (const call of az.calls.slice(from)) {
      if (call.op === "credential.getToken") continue;
      const need = NEEDS[call.op];
      expect(need, call.op).toBeDefined();
      const ok = phaseAllows(phase, need!) || (allowReader && phaseAllows("read", need!)) || (alsoPhase !== undefined && phaseAllows(alsoPhase, need!));
      expect(ok, `${phase}: ${call.op} needs ${need}`).toBe(true);
      for (const linked of LINKED[call.op] ?? []) expect(phaseAllows(phase, linked), `${phase}: ${call.op} needs ${linked}`).toBe(true);
    }
  }
  beforeEach(() => {
    azureTuning.principalRetryMs = [1];
  });

  it("create, launch, follow, logs, sweep, dispose", async () => {
    const az = new FakeAzure();
    const ce = sampleAzureCe(az.sub);
    const ctx: EnvContext = { ce, credentials: { source: "secret", secretName: "ns/creds", data: {} }, logger: createLogger({ level: "silent" }) };
    const c = az.clients();
    // Reader is optional in create: the validation and observe-first reads use it.
    const obs = await provisionAzureEnvironment(c, ctx);
    recordPhase(az, 0, "create", true);
    ce.status = { azure: obs.status.azure! };
    const run = { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { namespace: "team-a", name: "r1", uid: "99999999-8888-4777-8666-555555555555" }, spec: { computeEnvironmentRef: { name: "ce1" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } } } as Run;
    let n = az.calls.length;
    const d = await launchRun(c, ctx, run);
    run.status = { instance: { id: d.instanceId } };
    await describeRuns(c, ctx, [run]);
    await terminateRun(c, ctx, run);
    await sweepOrphans(c, ctx, new Set());
    recordPhase(az, n, "launch");
    n = az.calls.length;
    // Following a Run whose VM is gone reads its uploaded exit status: the launch and logs roles together.
    await describeRuns(c, ctx, [run]);
    recordPhase(az, n, "launch", false, "logs");
    expect(az.ops().slice(n)).toContain("blobs.read");
    n = az.calls.length;
    await readRunLog(c, ctx, run);
    recordPhase(az, n, "logs");
    n = az.calls.length;
    await disposeAzureEnvironment(c, ctx);
    recordPhase(az, n, "dispose");
  });
});

describe("vmforge policy azure", () => {
  function run(args: string[]): { code: number; out: string; err: string } {
    let out = "";
    let err = "";
    const code = policyCommand(args, { out: (t) => (out += t), err: (t) => (err += t) });
    return { code, out, err };
  }
  const SUB = "12345678-aaaa-bbbb-cccc-1234567890ab";

  it("prints one phase's role JSON with the subscription filled in", () => {
    const r = run(["azure", "--phase", "create", "--subscription", SUB]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as RoleJson;
    expect(j.properties.roleName).toBe("seqera-azure-cloud-create");
    expect(j.properties.assignableScopes).toEqual([`/subscriptions/${SUB}`]);
    expect(j.properties.permissions[0]!.actions).toContain("Microsoft.OperationalInsights/workspaces/tables/write");
    expect(j.properties.permissions[0]!.notActions).toEqual([]);
  });

  it("all phases by default; --with-additions adds the documented actions and says why", () => {
    const r = run(["azure", "--subscription=" + SUB, "--with-additions"]);
    const all = JSON.parse(r.out) as Array<RoleJson>;
    expect(all.map((x) => x.properties.roleName)).toEqual(["seqera-azure-cloud-create", "seqera-azure-cloud-launch", "seqera-azure-cloud-logs", "seqera-azure-cloud-dispose"]);
    expect(all[3]!.properties.permissions[0]!.actions).toContain("Microsoft.Resources/subscriptions/resourceGroups/read");
    expect(all[2]!.properties.permissions[0]!.dataActions).toContain("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read");
    expect(r.err).toMatch(/dispose: added Microsoft\.Resources\/subscriptions\/resourceGroups\/read: ownership check/);
    const plain = JSON.parse(run(["azure", "--phase", "dispose"]).out) as RoleJson;
    expect(plain.properties.permissions[0]!.actions).not.toContain("Microsoft.Resources/subscriptions/resourceGroups/read");
    expect(plain.properties.assignableScopes).toEqual(["/subscriptions/<SUBSCRIPTION-ID>"]);
  });

  it("rejects bad input with usage", () => {
    expect(run(["azure", "--phase", "nope"]).code).toBe(2);
    expect(run(["azure", "--subscription", "not-a-guid"]).code).toBe(2);
    expect(run(["azure", "--bogus"]).err).toMatch(/usage: vmforge policy azure/);
  });
});
