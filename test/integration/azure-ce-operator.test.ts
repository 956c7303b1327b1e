/**
 * The Azure ComputeEnvironment through the OPERATOR (issue 10): the real kube-apiserver, the
 * operator in-process with its real AzureProvider (real Azure SDK packages), and the Azure
 * emulator (Entra ID, Resource Manager with RBAC). The operator's principal holds exactly the
 * seed's roles (seed 001, read from the product document at test time) plus the built-in Reader and the
 * documented additions; fixtures are made and results checked as the emulator's admin.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { AuthorizationManagementClient } from "@azure/arm-authorization";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource } from "../../src/api/types.js";
import type { ComputeEnvironment } from "../../src/api/types.js";
import type { AzureProvider } from "../../src/cloud/azure/provider.js";
import type { AzurePhase } from "../../src/cloud/azure/policy.js";
import { resourceGroupName, roleDefinitionGuid } from "../../src/cloud/azure/names.js";
import { installCrds, startOperator, waitFor, type RunningOperator } from "../support/operator.js";
import { azureClientOptions, azureControl, azureInfo, azureTestCredential, freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import type { EmulatorInfo } from "../azure-emulator/control.js";
import { LOCATION, STORAGE, ceBody, cond, getCe as envGetCe, grantOperatorRoles, operatorPrincipal as envPrincipal, putSecret as envPutSecret, waitGone as envWaitGone, waitReady as envWaitReady, waitStalled as envWaitStalled, type Principal, createWorkStorage, emulatorProvider } from "../support/azure-env.js";


let kube: KubeClient;
let info: EmulatorInfo;
let rm: ResourceManagementClient;
let authz: AuthorizationManagementClient;
let op: RunningOperator | undefined;
let provider: AzureProvider;

const operatorPrincipal = (name: string, without: Partial<Record<AzurePhase, string[]>> = {}, opts: { reader?: boolean } = {}): Promise<Principal> => envPrincipal(info, name, without, opts);
const putSecret = (ns: string, name: string, p: Principal): Promise<void> => envPutSecret(kube, info, ns, name, p);
const getCe = (ns: string, name: string) => envGetCe(kube, ns, name);
const waitReady = (ns: string, name: string, timeoutMs?: number) => envWaitReady(kube, ns, name, timeoutMs);
const waitStalled = (ns: string, name: string, reason: string) => envWaitStalled(kube, ns, name, reason);
const waitGone = (ns: string, name: string) => envWaitGone(kube, ns, name);

async function rgExists(name: string): Promise<boolean> {
  return (await rm.resourceGroups.checkExistence(name)).body;
}

async function rgResources(name: string): Promise<string[]> {
  const out: string[] = [];
  for await (const r of rm.resources.listByResourceGroup(name)) out.push(`${r.type}/${r.name}`);
  return out.sort();
}

async function roleDefExists(guid: string): Promise<boolean> {
  try {
    await authz.roleDefinitions.get(`subscriptions/${info.subscriptionId}`, guid);
    return true;
  } catch (e) {
    if ((e as { statusCode?: number }).statusCode === 404) return false;
    throw e;
  }
}

let ns: string;
let nsLp: string;
let principal: Principal;

beforeAll(async () => {
    kube = KubeClient.fromKubeconfig(kubeconfigPath());
    await installCrds(kube);
    info = await azureInfo();
    const cred = await azureTestCredential();
    rm = new ResourceManagementClient(cred, info.subscriptionId, azureClientOptions());
    authz = new AuthorizationManagementClient(cred, info.subscriptionId, azureClientOptions());
    await createWorkStorage(rm, info.subscriptionId);
    principal = await operatorPrincipal("vmforge-operator");
    ns = await freshNamespace(kube, "azce");
    nsLp = await freshNamespace(kube, "azlp");
    await putSecret(ns, "azure-creds", principal);
    provider = emulatorProvider();
    op = await startOperator(kubeconfigPath(), new Map([["azure", provider]]), { namespaces: [ns, nsLp], pollIntervalMs: 1_000 });
}, 120_000);

afterAll(async () => {
  await op?.stop();
});

describe("Azure ComputeEnvironment through the operator (emulator)", () => {

  it("Ready with defaults: every resource of seed 000, tagged, every ID in status.azure; then deleted, everything and nothing else", async () => {
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "defaults", { tags: { team: "genomics" } }));
    const ce = await waitReady(ns, "defaults");
    const s = ce.status!.azure!;
    for (const k of ["resourceGroupId", "identityId", "identityPrincipalId", "identityClientId", "roleDefinitionId", "roleAssignmentContainerId", "roleAssignmentDcrId", "workspaceId", "workspaceCustomerId", "table", "dceId", "dceEndpoint", "dcrId", "dcrImmutableId", "vnetId", "subnetId"]) {
      expect(s[k], k).toBeTruthy();
    }
    expect(cond(ce, "Validated")).toMatchObject({ status: "True" });
    const rg = resourceGroupName({ namespace: ns, name: "defaults", uid: ce.metadata.uid! });
    const group = await rm.resourceGroups.get(rg);
    expect(group.tags).toMatchObject({ "vmforge-ce-uid": ce.metadata.uid, "vmforge-ce-namespace": ns, "vmforge-ce-name": "defaults", team: "genomics" });
    const inside = await rgResources(rg);
    expect(inside).toEqual(expect.arrayContaining([
      "Microsoft.ManagedIdentity/userAssignedIdentities/vmforge-vm-identity",
      "Microsoft.Insights/dataCollectionEndpoints/vmforge-dce",
      "Microsoft.Insights/dataCollectionRules/vmforge-dcr",
      "Microsoft.Network/virtualNetworks/vmforge-vnet",
    ]));
    expect(inside.some((r) => r.startsWith("Microsoft.OperationalInsights/workspaces/"))).toBe(true);
    const assignment = await authz.roleAssignments.getById(s.roleAssignmentDcrId!.slice(1));
    expect(assignment.principalId).toBe(s.identityPrincipalId);
    expect(assignment.roleDefinitionId!.toLowerCase()).toBe(s.roleDefinitionId!.toLowerCase());

    await kube.delete(ComputeEnvironmentResource, ns, "defaults");
    await waitGone(ns, "defaults");
    expect(await rgExists(rg)).toBe(false);
    expect(await roleDefExists(roleDefinitionGuid(ce.metadata.uid!))).toBe(false);
    expect(await rgExists("data-rg")).toBe(true);
  }, 120_000);

  it("each invalid input is Stalled naming the field and value, then the fix makes it Ready", async () => {
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "invalid", { vmSize: "Standard_Nope_v9" }));
    const c1 = await waitStalled(ns, "invalid", "InvalidSpec");
    expect(c1.message).toMatch(/spec\.azure\.vmSize: "Standard_Nope_v9" is not offered in location "westeurope"/);
    await kube.patch(ComputeEnvironmentResource, ns, "invalid", { spec: { azure: { vmSize: "Standard_D2ds_v4", workDir: "az://missing-container/x" } } }, "merge");
    const c2 = await waitFor("container message", async () => {
      const c = cond(await getCe(ns, "invalid"), "Stalled");
      return c?.status === "True" && /container "missing-container" does not exist/.test(c.message ?? "") ? c : undefined;
    }, 60_000, 250);
    expect(c2.reason).toBe("InvalidSpec");
    await kube.patch(ComputeEnvironmentResource, ns, "invalid", { spec: { azure: { workDir: "az://work/x" } } }, "merge");
    await waitReady(ns, "invalid");
    await kube.delete(ComputeEnvironmentResource, ns, "invalid");
    await waitGone(ns, "invalid");
  }, 120_000);

  it("a resource group with the expected name but another owner is never touched (Stalled ForeignResourceGroup)", async () => {
    // Created with a Secret that does not exist yet, so the operator writes nothing to Azure.
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "foreign", {}, "not-yet"));
    const ce = await waitFor("uid", async () => getCe(ns, "foreign"));
    const rg = resourceGroupName({ namespace: ns, name: "foreign", uid: ce.metadata.uid! });
    await rm.resourceGroups.createOrUpdate(rg, { location: LOCATION, tags: { owner: "someone-else" } });
    await putSecret(ns, "not-yet", principal);
    const c = await waitStalled(ns, "foreign", "ForeignResourceGroup");
    expect(c.message).toContain(rg);
    expect((await rm.resourceGroups.get(rg)).tags).toEqual({ owner: "someone-else" });
    expect(await rgResources(rg)).toEqual([]);
    await kube.delete(ComputeEnvironmentResource, ns, "foreign");
    await waitGone(ns, "foreign");
    expect(await rgExists(rg)).toBe(true);
    await rm.resourceGroups.delete(rg);
  }, 120_000);

  it("a role definition with the CE's GUID but not its marker is never touched (Stalled ForeignRoleDefinition)", async () => {
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "foreign-role", {}, "not-yet-role"));
    const ce = await waitFor("uid", async () => getCe(ns, "foreign-role"));
    const guid = roleDefinitionGuid(ce.metadata.uid!);
    const scope = `/subscriptions/${info.subscriptionId}`;
    await authz.roleDefinitions.createOrUpdate(scope, guid, {
      roleName: `someone-elses-role-${guid.slice(0, 8)}`,
      description: "made by another team",
      assignableScopes: [scope],
      permissions: [{ actions: ["Microsoft.Resources/subscriptions/resourceGroups/read"], notActions: [], dataActions: [], notDataActions: [] }],
    });
    await putSecret(ns, "not-yet-role", principal);
    const c = await waitStalled(ns, "foreign-role", "ForeignRoleDefinition");
    expect(c.message).toContain(guid);
    await kube.delete(ComputeEnvironmentResource, ns, "foreign-role");
    await waitGone(ns, "foreign-role");
    // Disposal left the other team's role as it was, and removed what the CE did create.
    const kept = await authz.roleDefinitions.get(scope, guid);
    expect(kept).toMatchObject({ roleName: `someone-elses-role-${guid.slice(0, 8)}`, description: "made by another team" });
    expect(await rgExists(resourceGroupName({ namespace: ns, name: "foreign-role", uid: ce.metadata.uid! }))).toBe(false);
    await authz.roleDefinitions.delete(scope, guid);
  }, 120_000);

  it("deletion after pieces were deleted by hand still finishes; Retain leaves Azure alone", async () => {
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "byhand"));
    const ce = await waitReady(ns, "byhand");
    const rg = resourceGroupName({ namespace: ns, name: "byhand", uid: ce.metadata.uid! });
    await rm.resources.deleteById(ce.status!.azure!.dcrId!.slice(1), "2023-03-11");
    await rm.resources.deleteById(ce.status!.azure!.dceId!.slice(1), "2023-03-11");
    await kube.delete(ComputeEnvironmentResource, ns, "byhand");
    await waitGone(ns, "byhand");
    expect(await rgExists(rg)).toBe(false);

    await kube.create(ComputeEnvironmentResource, { ...ceBody(ns, "retain"), spec: { ...ceBody(ns, "retain").spec, deletionPolicy: "Retain" } } as ComputeEnvironment);
    const kept = await waitReady(ns, "retain");
    const keptRg = resourceGroupName({ namespace: ns, name: "retain", uid: kept.metadata.uid! });
    await kube.delete(ComputeEnvironmentResource, ns, "retain");
    await waitGone(ns, "retain");
    expect(await rgExists(keptRg)).toBe(true);
    expect(await roleDefExists(roleDefinitionGuid(kept.metadata.uid!))).toBe(true);
  }, 180_000);

  it("deletion waits while Azure's caches still hold the deleted role assignments (RoleDefinitionHasAssignments), saying so, not Stalled; then the role definition goes", async () => {
    const ctl = azureControl();
    const { roleAssignmentRemovalDelayMs } = (await ctl.info()).settings;
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "cached"));
    const ce = await waitReady(ns, "cached");
    const guid = roleDefinitionGuid(ce.metadata.uid!);
    await ctl.settings({ roleAssignmentRemovalDelayMs: 3_600_000 });
    try {
      await kube.delete(ComputeEnvironmentResource, ns, "cached");
      const waiting = await waitFor("CE says what its deletion waits for", async () => {
        const c = await getCe(ns, "cached");
        return cond(c, "Reconciling")?.message.includes("RoleDefinitionHasAssignments") ? c : undefined;
      }, 60_000, 300);
      expect(cond(waiting, "Reconciling")).toMatchObject({ status: "True", reason: "Disposing" });
      expect(cond(waiting, "Stalled")?.status).not.toBe("True");
      // Everything else went meanwhile; only the role definition waits.
      expect(await rgExists(resourceGroupName({ namespace: ns, name: "cached", uid: ce.metadata.uid! }))).toBe(false);
      expect(await roleDefExists(guid)).toBe(true);
    } finally {
      await ctl.settings({ roleAssignmentRemovalDelayMs });
    }
    await waitGone(ns, "cached");
    expect(await roleDefExists(guid)).toBe(false);
  }, 180_000);

  it("an assignment of the CE's role that was never recorded (a provisioning cut short, or made by hand) goes on deletion, so the role can go too; another role's assignment stays", async () => {
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "unrecorded"));
    const ce = await waitReady(ns, "unrecorded");
    const s = ce.status!.azure!;
    const scope = `/subscriptions/${info.subscriptionId}/resourceGroups/data-rg`;
    const ours = randomUUID();
    const theirs = randomUUID();
    await authz.roleAssignments.create(scope, ours, { roleDefinitionId: s.roleDefinitionId!, principalId: s.identityPrincipalId!, principalType: "ServicePrincipal" });
    const reader = `/subscriptions/${info.subscriptionId}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7`;
    await authz.roleAssignments.create(scope, theirs, { roleDefinitionId: reader, principalId: s.identityPrincipalId!, principalType: "ServicePrincipal" });
    try {
      await kube.delete(ComputeEnvironmentResource, ns, "unrecorded");
      await waitGone(ns, "unrecorded");
      expect(await roleDefExists(roleDefinitionGuid(ce.metadata.uid!))).toBe(false);
      await expect(authz.roleAssignments.get(scope, ours)).rejects.toMatchObject({ statusCode: 404 });
      expect((await authz.roleAssignments.get(scope, theirs)).roleDefinitionId?.toLowerCase()).toBe(reader.toLowerCase());
    } finally {
      await authz.roleAssignments.delete(scope, theirs).catch(() => undefined);
    }
  }, 120_000);

  it("a work directory moved to another container: the assignment at the old container goes before one is made at the new one", async () => {
    const sa = `subscriptions/${info.subscriptionId}/resourceGroups/data-rg/providers/Microsoft.Storage/storageAccounts/${STORAGE}`;
    await rm.resources.createOrUpdateById(`${sa}/blobServices/default/containers/moved`, "2023-05-01", {});
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "mover"));
    const before = (await waitReady(ns, "mover")).status!.azure!;
    expect(before.roleAssignmentContainerId!.toLowerCase()).toContain("/containers/work/");
    await kube.patch(ComputeEnvironmentResource, ns, "mover", { spec: { azure: { workDir: "az://moved/runs" } } }, "merge");
    const after = await waitFor("the CE Ready at the new container", async () => {
      const ce = await getCe(ns, "mover");
      const id = ce?.status?.azure?.roleAssignmentContainerId ?? "";
      return cond(ce!, "Ready")?.status === "True" && id.toLowerCase().includes("/containers/moved/") ? ce!.status!.azure! : undefined;
    }, 60_000, 250);
    await expect(authz.roleAssignments.getById(before.roleAssignmentContainerId!.slice(1))).rejects.toMatchObject({ statusCode: 404 });
    const now = await authz.roleAssignments.getById(after.roleAssignmentContainerId!.slice(1));
    expect(now.roleDefinitionId!.toLowerCase()).toBe(after.roleDefinitionId!.toLowerCase());
    expect(now.principalId).toBe(after.identityPrincipalId);
    await kube.delete(ComputeEnvironmentResource, ns, "mover");
    await waitGone(ns, "mover");
  }, 120_000);

  it("a CE stays in the subscription it was made in: the Secret naming another one is refused (SubscriptionChanged, both named), nothing is made there, and deletion disposes of the first", async () => {
    const other = await azureControl().createSubscription({ tenantId: info.tenantId, displayName: "vmforge-other" });
    // The operator may act in the other subscription too: only the CE's pinning keeps it out.
    await grantOperatorRoles({ ...info, subscriptionId: other.id }, principal.objectId, "vmforge-operator-other");
    await putSecret(ns, "pinned", principal);
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "pinned", {}, "pinned"));
    const ce = await waitReady(ns, "pinned");
    expect(ce.status?.azure?.subscriptionId?.toLowerCase()).toBe(info.subscriptionId.toLowerCase());
    const rg = resourceGroupName({ namespace: ns, name: "pinned", uid: ce.metadata.uid! });
    expect(await rgExists(rg)).toBe(true);

    await envPutSecret(kube, { ...info, subscriptionId: other.id }, ns, "pinned", principal);
    await kube.patch(ComputeEnvironmentResource, ns, "pinned", { metadata: { annotations: { "vmforge.dev/poke": "1" } } }, "merge");
    const stalled = await waitStalled(ns, "pinned", "SubscriptionChanged");
    expect(stalled.message).toContain(info.subscriptionId.toLowerCase());
    expect(stalled.message).toContain(other.id.toLowerCase());
    const inOther = new ResourceManagementClient(await azureTestCredential({ clientId: principal.clientId, clientSecret: principal.secret }), other.id, azureClientOptions());
    const groups: string[] = [];
    for await (const g of inOther.resourceGroups.list()) groups.push(g.name!);
    expect(groups).toEqual([]);

    await kube.delete(ComputeEnvironmentResource, ns, "pinned");
    await waitGone(ns, "pinned");
    expect(await rgExists(rg)).toBe(false);
    expect(await roleDefExists(roleDefinitionGuid(ce.metadata.uid!))).toBe(false);
  }, 120_000);

  it("a rejected secret gives CredentialsValid=False and Stalled InvalidCredentials naming the Secret; the rotated one is used at the next reconcile", async () => {
    await putSecret(ns, "rotating", { ...principal, secret: "not-the-secret" });
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "rotated", {}, "rotating"));
    const c = await waitStalled(ns, "rotated", "InvalidCredentials");
    expect(c.message).toContain(`Secret ${ns}/rotating`);
    expect(c.message).toMatch(/AADSTS7000215/);
    expect(c.message).not.toContain("not-the-secret");
    expect(cond(await getCe(ns, "rotated"), "CredentialsValid")).toMatchObject({ status: "False" });
    await putSecret(ns, "rotating", principal);
    await waitReady(ns, "rotated");
    expect(cond(await getCe(ns, "rotated"), "CredentialsValid")).toMatchObject({ status: "True" });
    // Deletion with credentials that stopped working says so instead of hanging.
    await putSecret(ns, "rotating", { ...principal, secret: "revoked" });
    await kube.delete(ComputeEnvironmentResource, ns, "rotated");
    const blocked = await waitFor("deletion blocked on credentials", async () => {
      const s = cond(await getCe(ns, "rotated"), "Stalled");
      return s?.status === "True" && /InvalidCredentials/.test(s.reason) ? s : undefined;
    }, 60_000, 250);
    expect(blocked.message).toContain(`Secret ${ns}/rotating`);
    expect(blocked.message).toMatch(/To unblock/);
    await putSecret(ns, "rotating", principal);
    // The fixed Secret lets deletion finish (the CE is re-queued on Secret changes or by its slow re-check).
    await kube.patch(ComputeEnvironmentResource, ns, "rotated", { metadata: { annotations: { "vmforge.dev/poke": "1" } } }, "merge");
    await waitGone(ns, "rotated");
  }, 240_000);
});

describe("Azure environment: eventual consistency and restarts", () => {
  it("PrincipalNotFound after the identity was created is retried (principalType ServicePrincipal, bounded backoff)", async () => {
    const ctl = azureControl();
    const { lastSeq } = await ctl.clearRequests();
    await ctl.addFault({ operation: "Microsoft.Authorization/roleAssignments/write", status: 400, code: "PrincipalNotFound", message: "Principal does not exist in the directory (replication delay)", count: 2 });
    try {
      await kube.create(ComputeEnvironmentResource, ceBody(ns, "pnf"));
      await waitReady(ns, "pnf");
    } finally {
      await ctl.clearFaults();
    }
    const writes = (await ctl.requests(lastSeq)).value.filter((r) => r.operation === "Microsoft.Authorization/roleAssignments/write");
    expect(writes.filter((w) => w.status === 400)).toHaveLength(2);
    expect(writes.filter((w) => w.status === 201)).toHaveLength(2);
    await kube.delete(ComputeEnvironmentResource, ns, "pnf");
    await waitGone(ns, "pnf");
  }, 120_000);

  it("an operator restart between any two creates adopts what exists: nothing doubled, at every step", async () => {
    const ctl = azureControl();
    const steps = [
      "Microsoft.ManagedIdentity/userAssignedIdentities/write",
      "Microsoft.OperationalInsights/workspaces/write",
      "Microsoft.Insights/dataCollectionEndpoints/write",
      "Microsoft.Network/virtualNetworks/write",
      "Microsoft.Authorization/roleDefinitions/write",
      "Microsoft.OperationalInsights/workspaces/tables/write",
      "Microsoft.Insights/dataCollectionRules/write",
      "Microsoft.Authorization/roleAssignments/write",
    ];
    for (const [i, blocked] of steps.entries()) {
      const name = `restart-${i}`;
      const { lastSeq } = await ctl.clearRequests();
      // The operator gets as far as `blocked` and no further (Azure unavailable for that operation) ...
      await ctl.addFault({ operation: blocked, status: 503, code: "ServiceUnavailable", count: 1_000 });
      await kube.create(ComputeEnvironmentResource, ceBody(ns, name));
      await waitFor(`${name} blocked at ${blocked}`, async () => (await ctl.requests(lastSeq)).value.some((r) => r.operation === blocked && r.status === 503), 60_000, 100);
      // ... then is killed and a new one (new provider, new clients, empty memory) takes over.
      await op!.stop();
      await ctl.clearFaults();
      provider = emulatorProvider();
      op = await startOperator(kubeconfigPath(), new Map([["azure", provider]]), { namespaces: [ns, nsLp], pollIntervalMs: 1_000 });
      const ce = await waitReady(ns, name);
      const rg = resourceGroupName({ namespace: ns, name, uid: ce.metadata.uid! });
      const inside = await rgResources(rg);
      expect(inside.filter((r) => r.startsWith("Microsoft.ManagedIdentity/")), blocked).toHaveLength(1);
      expect(inside.filter((r) => r.startsWith("Microsoft.OperationalInsights/workspaces/")), blocked).toHaveLength(1);
      expect(inside.filter((r) => r.startsWith("Microsoft.Insights/")), blocked).toHaveLength(2);
      expect(inside.filter((r) => r.startsWith("Microsoft.Network/virtualNetworks/")), blocked).toHaveLength(1);
      // Writes that had succeeded before the restart were not repeated.
      const log = (await ctl.requests(lastSeq)).value;
      for (const done of steps.slice(0, i)) {
        const ok = log.filter((r) => r.operation === done && r.status < 300);
        expect(ok.length, `${done} before a restart at ${blocked}`).toBe(done.endsWith("roleAssignments/write") ? 2 : 1);
      }
      await kube.delete(ComputeEnvironmentResource, ns, name);
      await waitGone(ns, name);
      expect(await rgExists(rg)).toBe(false);
    }
  }, 600_000);
});

describe("Azure least privilege: one action removed per phase is named", () => {

  it("create without workspaces/write: Stalled AccessDenied naming the action", async () => {
    const p = await operatorPrincipal("vmforge-no-ws", { create: ["Microsoft.OperationalInsights/workspaces/write"] });
    await putSecret(nsLp, "lp-create", p);
    await kube.create(ComputeEnvironmentResource, ceBody(nsLp, "lp-create", {}, "lp-create"));
    const c = await waitFor("AccessDenied", async () => {
      const s = cond(await getCe(nsLp, "lp-create"), "Stalled");
      return s?.status === "True" && s.reason === "AccessDenied" ? s : undefined;
    }, 60_000, 250);
    expect(c.message).toMatch(/Microsoft\.OperationalInsights\/workspaces\/write/);
  }, 120_000);

  it("without the built-in Reader: Stalled saying the storage account is missing or not visible without Reader; with every read but the SKU list, Ready and Validated says what was not checked", async () => {
    const p = await operatorPrincipal("vmforge-no-reader", {}, { reader: false });
    await putSecret(nsLp, "lp-noreader", p);
    await kube.create(ComputeEnvironmentResource, ceBody(nsLp, "lp-noreader", {}, "lp-noreader"));
    // Resource Manager filters the resource list by what the caller may read: the account is not
    // in the answer, and the message says why that may be.
    const c = await waitStalled(nsLp, "lp-noreader", "InvalidSpec");
    expect(c.message).toMatch(/storage account "vmfwork" does not exist in subscription .*, or Secret .*lp-noreader cannot see it \(it needs the built-in Reader role/);
    // A narrower grant than Reader: every read but the VM size list. The CE goes Ready, and says
    // the size check was skipped and why (never a plain "Validated").
    await azureControl().assignRole({
      principalId: p.objectId,
      scope: `/subscriptions/${info.subscriptionId}`,
      role: { properties: { roleName: "reader-without-skus", assignableScopes: [`/subscriptions/${info.subscriptionId}`], permissions: [{ actions: ["*/read"], notActions: ["Microsoft.Compute/skus/read"], dataActions: [], notDataActions: [] }] } },
    });
    await kube.patch(ComputeEnvironmentResource, nsLp, "lp-noreader", { metadata: { annotations: { "vmforge.dev/reconcile-requested-at": "1" } } }, "merge");
    const ce = await waitReady(nsLp, "lp-noreader", 90_000);
    const v = cond(ce, "Validated");
    expect(v).toMatchObject({ status: "Unknown", reason: "ValidationSkipped" });
    expect(v?.message).toMatch(/location and VM size not checked: the operator lacks the built-in Reader role \(Microsoft\.Compute\/skus\/read\)/);
    await kube.delete(ComputeEnvironmentResource, nsLp, "lp-noreader");
    await waitGone(nsLp, "lp-noreader");
  }, 180_000);

  it("dispose without DataCollectionRules/Delete: deletion Stalled naming the action", async () => {
    const p = await operatorPrincipal("vmforge-no-dcr-delete", { dispose: ["Microsoft.Insights/DataCollectionRules/Delete"] });
    await putSecret(nsLp, "lp-dispose", p);
    await kube.create(ComputeEnvironmentResource, ceBody(nsLp, "lp-dispose", {}, "lp-dispose"));
    await waitReady(nsLp, "lp-dispose");
    await kube.delete(ComputeEnvironmentResource, nsLp, "lp-dispose");
    const c = await waitFor("AccessDenied on deletion", async () => {
      const s = cond(await getCe(nsLp, "lp-dispose"), "Stalled");
      return s?.status === "True" && s.reason === "AccessDenied" ? s : undefined;
    }, 60_000, 250);
    expect(c.message).toMatch(/Microsoft\.Insights\/DataCollectionRules\/Delete/);
  }, 120_000);
});
