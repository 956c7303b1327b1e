// environment.ts against in-memory SDK stand-ins: what is created, in which order, ownership,
// eventual consistency, validation messages and disposal.
import { beforeEach, describe, expect, it } from "vitest";
import type { ComputeEnvironment } from "../../../../src/api/types.js";
import { CloudError, type EnvContext } from "../../../../src/cloud/provider.js";
import {
  azureTuning,
  disposeAzureEnvironment,
  observeAzureEnvironment,
  provisionAzureEnvironment,
} from "../../../../src/cloud/azure/environment.js";
import { resourceGroupName, roleAssignmentGuid, roleDefinitionGuid } from "../../../../src/cloud/azure/names.js";
import { createLogger } from "../../../../src/engine/logger.js";
import { FakeAzure, RestLikeError, UID, sampleAzureCe } from "./fake-azure.js";

function ctxFor(ce: ComputeEnvironment): EnvContext {
  return { ce, credentials: { source: "secret", secretName: "team-a/creds", data: {} }, logger: createLogger({ level: "silent" }) };
}

const RG = resourceGroupName({ namespace: "team-a", name: "ce1", uid: UID });

describe("Azure environment: provision", () => {
  let az: FakeAzure;
  beforeEach(() => {
    az = new FakeAzure();
    azureTuning.principalRetryMs = [1, 1, 1, 1];
  });

  it("creates every resource of seed 000, tagged, and reports every ID in status.azure", async () => {
    const obs = await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)));
    expect(obs.ready).toBe(true);
    expect(obs.missing).toEqual([]);
    expect(obs.notes).toEqual([]);
    const s = obs.status.azure!;
    for (const k of ["resourceGroupId", "identityId", "identityPrincipalId", "identityClientId", "roleDefinitionId", "roleAssignmentContainerId", "roleAssignmentDcrId", "workspaceId", "workspaceCustomerId", "table", "dceId", "dceEndpoint", "dcrId", "dcrImmutableId", "vnetId", "subnetId"]) {
      expect(s[k], k).toBeTruthy();
    }
    expect(s.resourceGroup).toBe(RG);
    expect(RG).toMatch(/^vmforge-team-a-ce1-0a1b2c3d$/);
    expect(s.roleDefinitionId).toContain(roleDefinitionGuid(UID));
    const rg = az.get(`/subscriptions/${az.sub}/resourceGroups/${RG}`)!;
    expect(rg.tags).toMatchObject({ "vmforge-ce-uid": UID, "vmforge-ce-namespace": "team-a", "vmforge-ce-name": "ce1", team: "a" });
    // every resource created inside the group carries the ownership tags (Azure has no tags on tables and role assignments)
    for (const [id, o] of az.store) {
      if (id.includes(`/resourcegroups/${RG.toLowerCase()}/providers/`) && !id.includes("/tables/") && !id.includes("/roleassignments/")) expect(o.tags?.["vmforge-ce-uid"], id).toBe(UID);
    }
    // the role holds only what a VM needs, assigned at the container and the DCR, to a service principal
    const def = az.get(s.roleDefinitionId!)!;
    const perms = (def.permissions as Array<{ actions: string[]; dataActions: string[] }>)[0]!;
    expect(perms.actions).toEqual([]);
    expect(perms.dataActions).toContain("Microsoft.Insights/Telemetry/Write");
    expect(perms.dataActions).toContain("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write");
    const creates = az.calls.filter((c) => c.op === "authorization.roleAssignments.create");
    expect(creates.map((c) => c.args[0])).toEqual(expect.arrayContaining([
      az.storageAccounts.wdstore + "/blobServices/default/containers/work",
      s.dcrId,
    ]));
    for (const c of creates) expect(c.args[2]).toMatchObject({ principalType: "ServicePrincipal", principalId: s.identityPrincipalId });
    expect(creates.map((c) => c.args[1]).sort()).toEqual([roleAssignmentGuid(UID, "container"), roleAssignmentGuid(UID, "dcr")].sort());
    // DCR feeds the custom table from the DCE
    const dcr = az.get(s.dcrId!)!;
    expect(dcr.dataCollectionEndpointId).toBe(s.dceId);
    expect(JSON.stringify(dcr.dataFlows)).toContain("Custom-VmforgeRunLogs_CL");
    // the workspace has a retention
    expect(az.get(s.workspaceId!)!.retentionInDays).toBe(30);
  });

  it("runs independent creates in parallel and dependent ones after what they need", async () => {
    for (const op of ["msi.userAssignedIdentities.createOrUpdate", "logAnalytics.workspaces.createOrUpdate", "monitor.dataCollectionEndpoints.create", "network.virtualNetworks.createOrUpdate"]) {
      az.delays.set(op, 20);
    }
    await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)));
    const at = (op: string) => az.calls.findIndex((c) => c.op === op);
    const rgWrite = at("resources.resourceGroups.createOrUpdate");
    const independent = ["msi.userAssignedIdentities.createOrUpdate", "logAnalytics.workspaces.createOrUpdate", "monitor.dataCollectionEndpoints.create", "network.virtualNetworks.createOrUpdate", "authorization.roleDefinitions.createOrUpdate"].map(at);
    for (const i of independent) expect(i).toBeGreaterThan(rgWrite);
    // all four slow creates started before the first of them finished (its dependants come later)
    const firstDependant = Math.min(at("logAnalytics.tables.get"), at("authorization.roleAssignments.get"));
    for (const i of independent.slice(0, 4)) expect(i).toBeLessThan(firstDependant);
    expect(at("logAnalytics.tables.createOrUpdate")).toBeGreaterThan(at("logAnalytics.workspaces.createOrUpdate"));
    expect(at("monitor.dataCollectionRules.create")).toBeGreaterThan(at("logAnalytics.tables.createOrUpdate"));
    expect(at("monitor.dataCollectionRules.create")).toBeGreaterThan(at("monitor.dataCollectionEndpoints.create"));
  });

  it("a second provision only reads (no drift, no writes) and adopts after a crash mid-way", async () => {
    az.fail("monitor.dataCollectionRules.create", new Error("socket hang up"));
    await expect(provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)))).rejects.toMatchObject({ kind: "Retryable" });
    const before = az.writes().length;
    await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)));
    const resumed = az.writes().slice(before);
    expect(resumed).not.toContain("resources.resourceGroups.createOrUpdate");
    expect(resumed).not.toContain("msi.userAssignedIdentities.createOrUpdate");
    expect(resumed).toContain("monitor.dataCollectionRules.create");
    const n = az.calls.length;
    const obs = await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)));
    expect(obs.ready).toBe(true);
    expect(az.calls.slice(n).map((c) => c.op).filter((o) => !/\.(get|list|getById)$/.test(o))).toEqual([]);
  });

  it("announces the first cloud write before making it, and not at all when nothing needs writing", async () => {
    const seen: string[] = [];
    const ctx = ctxFor(sampleAzureCe(az.sub));
    ctx.beforeCloudWrite = async () => {
      seen.push(`announce@${az.calls.length}`);
    };
    await provisionAzureEnvironment(az.clients(), ctx);
    expect(seen).toHaveLength(1);
    const at = Number(seen[0]!.split("@")[1]);
    expect(az.calls.slice(0, at).map((c) => c.op).filter((o) => !/\.(get|list|getById)$/.test(o))).toEqual([]);
    seen.length = 0;
    await provisionAzureEnvironment(az.clients(), ctx);
    expect(seen).toEqual([]);
  });

  it("observe reads only and lists what is missing", async () => {
    const obs = await observeAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)));
    expect(obs.ready).toBe(false);
    expect(obs.missing).toEqual([`resource group ${RG}`]);
    expect(az.writes()).toEqual([]);
  });

  it("never touches a resource group with the expected name but another owner", async () => {
    az.put(`/subscriptions/${az.sub}/resourceGroups/${RG}`, { name: RG, location: "westeurope", tags: { "vmforge-ce-uid": "someone-else" } });
    const err = await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CloudError);
    expect(err).toMatchObject({ kind: "Terminal", reason: "ForeignResourceGroup" });
    expect((err as Error).message).toContain(RG);
    expect(az.writes()).toEqual([]);
    await disposeAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)));
    expect(az.writes()).toEqual([]);
    expect(az.get(`/subscriptions/${az.sub}/resourceGroups/${RG}`)).toBeDefined();
  });

  it("never touches a role definition with our GUID but without our marker", async () => {
    az.put(`/subscriptions/${az.sub}/providers/Microsoft.Authorization/roleDefinitions/${roleDefinitionGuid(UID)}`, { description: "hand-made" });
    await expect(provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)))).rejects.toMatchObject({ reason: "ForeignRoleDefinition" });
    expect(az.ops()).not.toContain("authorization.roleDefinitions.createOrUpdate");
  });

  it("retries PrincipalNotFound (identity not replicated yet) with principalType ServicePrincipal, bounded", async () => {
    const pnf = () => new RestLikeError(400, "PrincipalNotFound", "Principal does not exist in the directory");
    az.fail("authorization.roleAssignments.create", pnf(), pnf());
    const obs = await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)));
    expect(obs.ready).toBe(true);
    expect(az.ops().filter((o) => o === "authorization.roleAssignments.create")).toHaveLength(4);
    // still not there after the bounded retries: Retryable, not Terminal
    const az2 = new FakeAzure();
    az2.fail("authorization.roleAssignments.create", ...Array.from({ length: 20 }, pnf));
    await expect(provisionAzureEnvironment(az2.clients(), ctxFor(sampleAzureCe(az2.sub)))).rejects.toMatchObject({ kind: "Retryable", reason: "PrincipalNotFound" });
  });

  it("throttling becomes Retryable with Azure's Retry-After", async () => {
    az.fail("logAnalytics.workspaces.createOrUpdate", new RestLikeError(429, "TooManyRequests", "slow down", "7"));
    await expect(provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)))).rejects.toMatchObject({ kind: "Retryable", reason: "Throttled", retryAfterMs: 7000 });
  });

  it("uses an existing subnet instead of creating a network, after checking it", async () => {
    const subnetId = `/subscriptions/${az.sub}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/shared/subnets/vms`;
    az.put(`/subscriptions/${az.sub}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/shared`, { location: "westeurope", subnets: [{ name: "vms" }] });
    const obs = await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub, { network: { subnetId } })));
    expect(obs.status.azure!.subnetId).toBe(subnetId);
    expect(az.ops()).not.toContain("network.virtualNetworks.createOrUpdate");
    expect(az.calls.find((c) => c.op === "authorization.permissions.listForResource")?.args).toEqual(["net-rg", "Microsoft.Network", "virtualNetworks/shared", "subnets", "vms"]);
  });

  it("an image: a platform image version is checked; an image resource ID is not, and that is said", async () => {
    const ok = await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub, { image: "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:22.04.2" })));
    expect(ok.status.azure!.image).toBe("Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:22.04.2");
    expect(az.calls.find((c) => c.op === "compute.virtualMachineImages.get")?.args).toEqual(["westeurope", "Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", "22.04.2"]);
    const gallery = `/subscriptions/${az.sub}/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/nf/versions/1.0.0`;
    const byId = await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub, { image: gallery })));
    expect(byId.notes?.join("\n")).toMatch(/image resource ID is not checked/);
  });

  it("an existing subnet the operator may not join is AccessDenied naming the action; without permissions/read the check is skipped and said so", async () => {
    const subnetId = `/subscriptions/${az.sub}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/shared/subnets/vms`;
    az.put(`/subscriptions/${az.sub}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/shared`, { location: "westeurope", subnets: [{ name: "vms" }] });
    const ce = sampleAzureCe(az.sub, { network: { subnetId } });
    az.permissions = [{ actions: ["Microsoft.Network/*"], notActions: ["Microsoft.Network/virtualNetworks/subnets/join/action"] }, { actions: ["*/read"], notActions: [] }];
    await expect(provisionAzureEnvironment(az.clients(), ctxFor(ce))).rejects.toMatchObject({
      kind: "Terminal",
      reason: "AccessDenied",
      message: expect.stringContaining("may not join subnet") as unknown,
    });
    az.permissions = [{ actions: ["Microsoft.Network/virtualNetworks/subnets/JOIN/action"], notActions: [] }];
    await expect(provisionAzureEnvironment(az.clients(), ctxFor(ce))).resolves.toMatchObject({ ready: true });
    az.fail("authorization.permissions.listForResource", new RestLikeError(403, "AuthorizationFailed", "does not have authorization to perform action 'Microsoft.Authorization/permissions/read'"));
    const obs = await provisionAzureEnvironment(az.clients(), ctxFor(ce));
    expect(obs.notes?.join("\n")).toMatch(/permission to join subnet not checked/);
  });

  describe("validation names the field and value", () => {
    const cases: Array<[string, (a: FakeAzure) => ComputeEnvironment, RegExp]> = [
      ["unknown location", (a) => sampleAzureCe(a.sub, { location: "marsnorth" }), /spec\.azure\.location: "marsnorth" is not a location/],
      ["size not offered", (a) => sampleAzureCe(a.sub, { vmSize: "Standard_Z99" }), /spec\.azure\.vmSize: "Standard_Z99" is not offered in location "westeurope"/],
      ["image not offered", (a) => sampleAzureCe(a.sub, { image: "Canonical:nope:x:latest" }), /spec\.azure\.image: "Canonical:nope:x:latest" is not available in location "westeurope"/],
      ["image version not offered", (a) => sampleAzureCe(a.sub, { image: "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:9.9.9" }), /spec\.azure\.image: "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:9\.9\.9" is not available/],
      ["container missing", (a) => sampleAzureCe(a.sub, { workDir: "az://nope/x" }), /spec\.azure\.workDir: container "nope" does not exist in storage account "wdstore"/],
      ["storage account missing", (a) => sampleAzureCe(a.sub, { storageAccount: "ghost" }), /spec\.azure\.storageAccount: storage account "ghost" does not exist/],
      ["subnet elsewhere", (a) => {
        a.put(`/subscriptions/${a.sub}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/far`, { location: "eastus", subnets: [{ name: "s" }] });
        return sampleAzureCe(a.sub, { network: { subnetId: `/subscriptions/${a.sub}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/far/subnets/s` } });
      }, /spec\.azure\.network\.subnetId: the subnet's virtual network "far" is in location "eastus", not "westeurope"/],
      ["subnet missing", (a) => sampleAzureCe(a.sub, { network: { subnetId: `/subscriptions/${a.sub}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/none/subnets/s` } }), /spec\.azure\.network\.subnetId: subnet .* does not exist/],
    ];
    for (const [what, make, msg] of cases) {
      it(what, async () => {
        const a = new FakeAzure();
        const err = await provisionAzureEnvironment(a.clients(), ctxFor(make(a))).catch((e: unknown) => e);
        expect(err).toMatchObject({ kind: "Terminal", reason: "InvalidSpec" });
        expect((err as Error).message).toMatch(msg);
      });
    }
  });

  it("without the Reader role, location and size checks are skipped and said so (not a silent 'valid')", async () => {
    az.fail("compute.resourceSkus.list", new RestLikeError(403, "AuthorizationFailed", "no skus/read"));
    const obs = await provisionAzureEnvironment(az.clients(), ctxFor(sampleAzureCe(az.sub)));
    expect(obs.ready).toBe(true);
    expect(obs.notes).toEqual([expect.stringMatching(/location and VM size not checked: the operator lacks the built-in Reader role/)]);
  });

  it("without the subscription anywhere: a clear error, never a guess", async () => {
    const { subscriptionOf } = await import("../../../../src/cloud/azure/environment.js");
    const ce = sampleAzureCe(az.sub);
    delete ce.spec.azure!.subscriptionId;
    expect(() => subscriptionOf(ce, { kind: "secret", label: "Secret team-a/creds" })).toThrow(/spec\.azure\.subscriptionId is not set and Secret team-a\/creds has no "subscriptionId" key/);
    expect(subscriptionOf(ce, { kind: "secret", label: "x", subscriptionId: "AAAAAAAA-0000-0000-0000-000000000000" })).toBe("aaaaaaaa-0000-0000-0000-000000000000");
  });
});

describe("Azure environment: the work directory moves to another container", () => {
  it("the CE's assignment at the old container goes first (an assignment's name is unique in the tenant), then one is made at the new", async () => {
    const az = new FakeAzure();
    az.addStorage("wdstore", "data-rg", ["work", "work2"]);
    const ce = sampleAzureCe(az.sub);
    const obs = await provisionAzureEnvironment(az.clients(), ctxFor(ce));
    ce.status = { azure: obs.status.azure! };
    const old = ce.status.azure!.roleAssignmentContainerId!;
    ce.spec.azure!.workDir = "az://work2/runs";
    const again = await provisionAzureEnvironment(az.clients(), ctxFor(ce));
    expect(again.status.azure?.containerId).toContain("/containers/work2");
    expect(az.get(old)).toBeUndefined();
    expect(az.get(again.status.azure!.roleAssignmentContainerId!)).toBeDefined();
    expect(again.status.azure!.roleAssignmentContainerId).toContain("/containers/work2/");
  });
});

describe("Azure environment: dispose", () => {
  let az: FakeAzure;
  let ce: ComputeEnvironment;
  beforeEach(async () => {
    az = new FakeAzure();
    ce = sampleAzureCe(az.sub);
    const obs = await provisionAzureEnvironment(az.clients(), ctxFor(ce));
    ce.status = { azure: obs.status.azure! };
    az.calls.length = 0;
  });

  it("deletes in Azure's order: assignments, DCR, DCE, workspace (forced), group (forcing VMs), and the role definition last", async () => {
    await disposeAzureEnvironment(az.clients(), ctxFor(ce));
    const deletes = az.writes();
    expect(deletes.slice(0, 2)).toEqual(["authorization.roleAssignments.delete", "authorization.roleAssignments.delete"]);
    expect(deletes.slice(2)).toEqual([
      "monitor.dataCollectionRules.delete",
      "monitor.dataCollectionEndpoints.delete",
      "logAnalytics.workspaces.delete",
      "resources.resourceGroups.delete",
      "authorization.roleDefinitions.delete",
    ]);
    expect(az.calls.find((c) => c.op === "logAnalytics.workspaces.delete")!.args[2]).toMatchObject({ force: true });
    expect(az.calls.find((c) => c.op === "resources.resourceGroups.delete")!.args[1]).toMatchObject({ forceDeletionTypes: "Microsoft.Compute/virtualMachines" });
    expect([...az.store.keys()].filter((k) => k.includes(RG.toLowerCase()) || k.includes(roleDefinitionGuid(UID)))).toEqual([]);
    // the storage account (not ours) is untouched
    expect(az.get(az.storageAccounts.wdstore + "/blobServices/default/containers/work")).toBeDefined();
  });

  it("an assignment of the CE's role its status never recorded (a provisioning cut short) is found and deleted before the role definition", async () => {
    const containerAssignment = ce.status!.azure!.roleAssignmentContainerId!;
    expect(az.get(containerAssignment)).toBeDefined();
    // As if the status had been written before the container assignment existed.
    delete (ce.status!.azure as Record<string, unknown>).containerId;
    delete (ce.status!.azure as Record<string, unknown>).roleAssignmentContainerId;
    // Someone else's assignment of another role stays.
    const theirs = `${az.storageAccounts.wdstore}/providers/Microsoft.Authorization/roleAssignments/theirs`;
    az.put(theirs, { name: "theirs", scope: az.storageAccounts.wdstore, roleDefinitionId: "/subscriptions/x/providers/Microsoft.Authorization/roleDefinitions/other" });
    await disposeAzureEnvironment(az.clients(), ctxFor(ce));
    expect(az.get(containerAssignment)).toBeUndefined();
    expect(az.get(theirs)).toBeDefined();
    const w = az.writes();
    expect(w.indexOf("authorization.roleDefinitions.delete")).toBeGreaterThan(w.lastIndexOf("authorization.roleAssignments.delete"));
  });

  it("treats pieces deleted by hand as done, and is idempotent", async () => {
    az.store.delete(`${ce.status!.azure!.dcrId}`.toLowerCase());
    az.store.delete(`${ce.status!.azure!.roleDefinitionId}`.toLowerCase());
    await disposeAzureEnvironment(az.clients(), ctxFor(ce));
    await disposeAzureEnvironment(az.clients(), ctxFor(ce));
    expect(az.get(`/subscriptions/${az.sub}/resourceGroups/${RG}`)).toBeUndefined();
  });

  it("access denied on a delete is Terminal and names the action", async () => {
    az.fail("monitor.dataCollectionRules.delete", new RestLikeError(403, "AuthorizationFailed", "The client 'x' does not have authorization to perform action 'Microsoft.Insights/DataCollectionRules/Delete'"));
    const err = await disposeAzureEnvironment(az.clients(), ctxFor(ce)).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: "Terminal", reason: "AccessDenied" });
    expect((err as Error).message).toMatch(/Microsoft\.Insights\/DataCollectionRules\/Delete/);
  });
});
