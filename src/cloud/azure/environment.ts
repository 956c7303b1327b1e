/**
 * The Azure half of a ComputeEnvironment (seed 000, "Created resources"): one resource group
 * holding a user-assigned managed identity, a Log Analytics workspace with a custom `_CL` table,
 * a data collection endpoint and rule feeding that table, and a virtual network (unless the spec
 * names a subnet); at subscription scope a custom role (deterministic GUID from the CE UID) for
 * the identity, assigned at the narrowest scopes: the work directory's blob container and the DCR.
 *
 * One code path observes (reads only) and provisions (reads, then creates what is missing). Work
 * that does not depend on other work runs in parallel, so the time to Ready follows the critical
 * path: resource group -> workspace -> table -> DCR -> DCR role assignment.
 *
 * Ownership: the resource group must carry this CE's UID tag, or nothing is touched (Terminal
 * ForeignResourceGroup); the role definition must carry the CE's description marker (Terminal
 * ForeignRoleDefinition). Everything else lives inside the owned group.
 */
import type { CloudResourceRef, ComputeEnvironment } from "../../api/types.js";
import { DEFAULT_AZURE_VM_SIZE, DEFAULT_LOG_RETENTION_DAYS } from "../../api/constants.js";
import { CloudError, settleAll, type EnvContext, type EnvObservation } from "../provider.js";
import { azCall, azDelete, azGet, azureErrorCode, isAuthorizationFailed, type AzureClients, type AzureIdentity } from "./clients.js";
import { actionAllowed } from "./policy.js";
import {
  DCE_NAME,
  DCR_NAME,
  IDENTITY_NAME,
  LOG_COLUMNS,
  LOG_RETENTION_DAYS,
  LOG_STREAM,
  LOG_TABLE,
  SUBNET_NAME,
  SUBNET_PREFIX,
  TAG_CE_UID,
  VNET_ADDRESS_SPACE,
  VNET_NAME,
  DEFAULT_AZURE_IMAGE,
  azureImageReference,
  ceId,
  ceTags,
  parseAzUrl,
  parseResourceId,
  providerId,
  resourceGroupName,
  rgId,
  roleAssignmentGuid,
  roleDefinitionGuid,
  roleDefinitionId,
  roleDescriptionMarker,
  roleName,
  subscriptionScope,
  workspaceName,
  type CeId,
} from "./names.js";

/** Data actions the VMs' identity gets: the work directory's blobs, and sending its log to the DCR. */
export const VM_ROLE_DATA_ACTIONS = [
  "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
  "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
  "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/tags/read",
  "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/tags/write",
  "Microsoft.Insights/Telemetry/Write",
];

const CONTAINER_API_VERSION = "2023-05-01";

/** The subscription a CE deploys into: the spec's, else the Secret's, else a Terminal error saying neither is set. */
export function subscriptionOf(ce: ComputeEnvironment, id: AzureIdentity): string {
  // The plugin's user reads with their own identity: the subscription the operator resolved will do.
  const s = ce.spec.azure?.subscriptionId ?? id.subscriptionId ?? (id.kind === "caller" ? ce.status?.azure?.subscriptionId : undefined);
  if (!s) {
    throw CloudError.terminal(
      "SubscriptionNotSet",
      `spec.azure.subscriptionId is not set and ${id.kind === "secret" ? `${id.label} has no "subscriptionId" key` : `${id.label} has no subscription of its own`}: set one of them`,
    );
  }
  return s.toLowerCase();
}

export interface AzurePlan {
  id: CeId;
  subscriptionId: string;
  location: string;
  vmSize: string;
  /** spec.azure.image (undefined: the default image). */
  image?: string;
  rg: string;
  rgId: string;
  tags: Record<string, string>;
  storageAccount: string;
  container: string;
  workDir: string;
  /** spec.azure.network.subnetId when the user brings a subnet. */
  subnetId?: string;
  workspace: string;
  /** Retention of the log table (spec.logRetentionDays), interactive and total. */
  logRetentionDays: number;
}

export function planOf(ce: ComputeEnvironment, c: Pick<AzureClients, "subscriptionId" | "identity">): AzurePlan {
  const az = ce.spec.azure;
  if (!az) throw CloudError.terminal("InvalidSpec", "spec.azure: required when spec.provider is azure");
  const id = ceId(ce);
  const storageAccount = az.storageAccount ?? c.identity.storageAccount;
  if (!storageAccount) {
    throw CloudError.terminal(
      "InvalidSpec",
      `spec.azure.storageAccount is not set and ${c.identity.kind === "secret" ? `${c.identity.label} has no "storageAccount" key` : "the ambient identity names none"}: the work directory's storage account is needed`,
    );
  }
  const wd = parseAzUrl(az.workDir);
  if (!wd) throw CloudError.terminal("InvalidSpec", `spec.azure.workDir: ${JSON.stringify(az.workDir)} is not az://container[/path]`);
  const rg = resourceGroupName(id);
  const plan: AzurePlan = {
    id,
    subscriptionId: c.subscriptionId,
    location: az.location,
    vmSize: az.vmSize ?? DEFAULT_AZURE_VM_SIZE,
    ...(az.image ? { image: az.image } : {}),
    rg,
    rgId: rgId(c.subscriptionId, rg),
    tags: ceTags(id, az.tags),
    storageAccount,
    container: wd.container,
    workDir: az.workDir,
    workspace: workspaceName(id),
    logRetentionDays: ce.spec.logRetentionDays ?? DEFAULT_LOG_RETENTION_DAYS,
  };
  if (az.network?.subnetId) plan.subnetId = az.network.subnetId;
  return plan;
}

/** Everything found or created; becomes status.azure. */
export interface AzureEnvState {
  resourceGroupId?: string;
  identityId?: string;
  identityPrincipalId?: string;
  identityClientId?: string;
  roleDefinitionId?: string;
  roleAssignmentContainerId?: string;
  roleAssignmentDcrId?: string;
  workspaceId?: string;
  workspaceCustomerId?: string;
  table?: string;
  dceId?: string;
  dceEndpoint?: string;
  dcrId?: string;
  dcrImmutableId?: string;
  dcrStream?: string;
  vnetId?: string;
  subnetId?: string;
  storageAccountId?: string;
  containerId?: string;
}

interface Validation {
  storageAccountId?: string;
  containerId?: string;
  subnetId?: string;
  /** Checks that could not run, and why (no Reader role, ...). */
  skipped: string[];
}

type Mode = "observe" | "provision";

interface Run {
  c: AzureClients;
  ctx: EnvContext;
  plan: AzurePlan;
  mode: Mode;
  state: AzureEnvState;
  missing: string[];
  so: { abortSignal?: AbortSignal };
  /** Announces the first cloud write to the reconciler (once); every create below awaits it first. */
  beforeWrite: () => Promise<void>;
}

function sameTags(have: Record<string, string> | undefined, want: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(want)) if (have?.[k] !== v) return false;
  return true;
}

function lower(s: string | undefined): string {
  return (s ?? "").toLowerCase();
}

// ---------------------------------------------------------------------------------------------
// Validation

const SUBNET_JOIN = "Microsoft.Network/virtualNetworks/subnets/join/action";

async function validate(r: Run): Promise<Validation> {
  const { c, plan, so } = r;
  const out: Validation = { skipped: [] };
  const tasks: Promise<unknown>[] = [];

  // Location and VM size, with the built-in Reader role (seed 000 asks for it); skipped without it.
  tasks.push((async () => {
    try {
      const skus: Array<{ name?: string; resourceType?: string; restrictions?: Array<{ type?: string; reasonCode?: string }> }> = [];
      await azCall(c, "read", "Microsoft.Compute/skus/read", async () => {
        for await (const s of c.compute.resourceSkus.list({ filter: `location eq '${plan.location}'`, ...so })) {
          if (lower(s.resourceType) === "virtualmachines") skus.push(s);
        }
      });
      if (skus.length === 0) {
        throw CloudError.terminal("InvalidSpec", `spec.azure.location: "${plan.location}" is not a location where subscription ${plan.subscriptionId} offers virtual machines`);
      }
      const sku = skus.find((s) => lower(s.name) === lower(plan.vmSize));
      const blocked = sku?.restrictions?.some((x) => x.type === "Location" && x.reasonCode === "NotAvailableForSubscription");
      if (!sku || blocked) {
        throw CloudError.terminal("InvalidSpec", `spec.azure.vmSize: "${plan.vmSize}" is not offered in location "${plan.location}" for subscription ${plan.subscriptionId}`);
      }
    } catch (e) {
      if (e instanceof CloudError && (e.reason === "AccessDenied" || e.kind === "NotFound")) {
        out.skipped.push(`location and VM size not checked: ${e.reason === "AccessDenied" ? "the operator lacks the built-in Reader role (Microsoft.Compute/skus/read)" : "the SKU list is not available"}`);
        return;
      }
      throw e;
    }
  })());

  // The Runs' image: a platform image must exist in the location (read with Reader; skipped and
  // said so without it). An image resource ID is not checked here; a launch refused for it fails
  // the Run with ImageNotFound.
  tasks.push((async () => {
    const ref = azureImageReference(plan.image);
    if ("id" in ref) {
      out.skipped.push(`spec.azure.image: the image resource ID is not checked before the first launch`);
      return;
    }
    const urn = `${ref.publisher}:${ref.offer}:${ref.sku}:${ref.version}`;
    try {
      const found = await azGet(c, "read", "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read", async () => {
        if (ref.version.toLowerCase() !== "latest") return c.compute.virtualMachineImages.get(plan.location, ref.publisher, ref.offer, ref.sku, ref.version, so);
        const all = await c.compute.virtualMachineImages.list(plan.location, ref.publisher, ref.offer, ref.sku, so);
        return all.length > 0 ? all : undefined;
      });
      if (!found) throw CloudError.terminal("InvalidSpec", `spec.azure.image: "${urn}" is not available in location "${plan.location}"`);
    } catch (e) {
      if (e instanceof CloudError && e.reason === "ImageNotFound") throw CloudError.terminal("InvalidSpec", `spec.azure.image: "${urn}" is not available in location "${plan.location}"`, e);
      if (e instanceof CloudError && e.reason === "AccessDenied") {
        out.skipped.push(`spec.azure.image not checked: the operator lacks the built-in Reader role (image versions read)`);
        return;
      }
      throw e;
    }
  })());

  // The work directory's storage account (found with Reader) and its container (containers/read).
  tasks.push((async () => {
    let accountId: string | undefined;
    try {
      const filter = `resourceType eq 'Microsoft.Storage/storageAccounts' and name eq '${plan.storageAccount}'`;
      await azCall(c, "read", "Microsoft.Resources/subscriptions/resources/read", async () => {
        for await (const res of c.resources.resources.list({ filter, ...so })) {
          if (lower(res.name) === lower(plan.storageAccount) && res.id) accountId = res.id;
        }
      });
    } catch (e) {
      if (e instanceof CloudError && e.reason === "AccessDenied") {
        throw CloudError.terminal(
          "AccessDenied",
          `cannot look up storage account "${plan.storageAccount}" (spec.azure.storageAccount): ${c.identity.label} needs the built-in Reader role on subscription ${plan.subscriptionId} (seed 000) to find it`,
          e,
        );
      }
      throw e;
    }
    if (!accountId) {
      // Resource Manager lists only what the caller may read: without Reader an existing account is
      // simply not in the answer, so say both.
      throw CloudError.terminal(
        "InvalidSpec",
        `spec.azure.storageAccount: storage account "${plan.storageAccount}" does not exist in subscription ${plan.subscriptionId}, or ${c.identity.label} cannot see it (it needs the built-in Reader role on the subscription, seed 000)`,
      );
    }
    out.storageAccountId = accountId;
    const containerId = `${accountId}/blobServices/default/containers/${plan.container}`;
    // getById's path template is "/{+resourceId}": an ID with its leading slash would become "//subscriptions/...".
    const found = await azGet(c, "create", "Microsoft.Storage/storageAccounts/blobServices/containers/read", () =>
      c.resources.resources.getById(scopeArg(containerId), CONTAINER_API_VERSION, so));
    if (!found) {
      throw CloudError.terminal("InvalidSpec", `spec.azure.workDir: container "${plan.container}" does not exist in storage account "${plan.storageAccount}"`);
    }
    out.containerId = containerId;
  })());

  // A subnet the user brings: it exists and its network is in the CE's location.
  if (plan.subnetId) {
    tasks.push((async () => {
      const p = parseResourceId(plan.subnetId!);
      if (!p || lower(p.type) !== "microsoft.network/virtualnetworks/subnets") {
        throw CloudError.terminal("InvalidSpec", `spec.azure.network.subnetId: "${plan.subnetId}" is not a subnet resource ID`);
      }
      const [vnetName, subnetName] = p.names as [string, string];
      const [vnet, subnet] = await settleAll([
        azGet(c, "create", "Microsoft.Network/virtualNetworks/read", () => c.network.virtualNetworks.get(p.resourceGroup, vnetName, so)),
        azGet(c, "create", "Microsoft.Network/virtualNetworks/subnets/read", () => c.network.subnets.get(p.resourceGroup, vnetName, subnetName, so)),
      ]);
      if (!vnet || !subnet) {
        throw CloudError.terminal("InvalidSpec", `spec.azure.network.subnetId: subnet "${plan.subnetId}" does not exist`);
      }
      if (lower(vnet.location).replace(/\s/g, "") !== lower(plan.location)) {
        throw CloudError.terminal("InvalidSpec", `spec.azure.network.subnetId: the subnet's virtual network "${vnetName}" is in location "${vnet.location}", not "${plan.location}" (spec.azure.location)`);
      }
      out.subnetId = subnet.id ?? plan.subnetId;
      // Every VM's NIC joins this subnet as the operator: check that it may, from the permissions
      // Azure reports for the subnet (Reader gives permissions/read; without it, say it was skipped).
      let perms: Array<{ actions?: string[]; notActions?: string[] }> = [];
      try {
        perms = await azCall(c, "read", "Microsoft.Authorization/permissions/read", async () => {
          const got: Array<{ actions?: string[]; notActions?: string[] }> = [];
          for await (const x of c.authorization.permissions.listForResource(p.resourceGroup, "Microsoft.Network", `virtualNetworks/${vnetName}`, "subnets", subnetName, so)) got.push(x);
          return got;
        });
      } catch (e) {
        if (e instanceof CloudError && e.reason === "AccessDenied") {
          out.skipped.push(`permission to join subnet not checked: the operator lacks the built-in Reader role (Microsoft.Authorization/permissions/read) on it`);
          return;
        }
        throw e;
      }
      if (!perms.some((x) => actionAllowed(SUBNET_JOIN, x.actions ?? []) && !actionAllowed(SUBNET_JOIN, x.notActions ?? []))) {
        throw CloudError.terminal(
          "AccessDenied",
          `spec.azure.network.subnetId: ${c.identity.label} may not join subnet "${plan.subnetId}" (needs ${SUBNET_JOIN} on it; VMs could not be placed there)`,
        );
      }
    })());
  }
  await settleAll(tasks);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The resources

async function ensureResourceGroup(r: Run): Promise<boolean> {
  const { c, plan, so } = r;
  const rg = await azGet(c, "create", "Microsoft.Resources/subscriptions/resourceGroups/read", () => c.resources.resourceGroups.get(plan.rg, so));
  if (rg && rg.tags?.[TAG_CE_UID] !== plan.id.uid) {
    throw CloudError.terminal(
      "ForeignResourceGroup",
      `resource group ${plan.rg} exists in subscription ${plan.subscriptionId} but is not this ComputeEnvironment's (its ${TAG_CE_UID} tag is ${rg.tags?.[TAG_CE_UID] ? `"${rg.tags[TAG_CE_UID]}"` : "missing"}); it is left untouched`,
    );
  }
  if (rg && sameTags(rg.tags, plan.tags)) {
    r.state.resourceGroupId = rg.id ?? plan.rgId;
    return true;
  }
  if (r.mode === "observe") {
    if (!rg) r.missing.push(`resource group ${plan.rg}`);
    else r.state.resourceGroupId = rg.id ?? plan.rgId;
    return !!rg;
  }
  await r.beforeWrite();
  const made = await azCall(c, "create", "Microsoft.Resources/subscriptions/resourceGroups/write", () =>
    c.resources.resourceGroups.createOrUpdate(plan.rg, { location: plan.location, tags: { ...(rg?.tags ?? {}), ...plan.tags } }, so));
  r.state.resourceGroupId = made.id ?? plan.rgId;
  return true;
}

async function ensureIdentity(r: Run): Promise<boolean> {
  const { c, plan, so } = r;
  let mi = await azGet(c, "create", "Microsoft.ManagedIdentity/userAssignedIdentities/read", () => c.msi.userAssignedIdentities.get(plan.rg, IDENTITY_NAME, so));
  if (!mi || !sameTags(mi.tags, plan.tags)) {
    if (r.mode === "observe" && !mi) {
      r.missing.push(`managed identity ${IDENTITY_NAME}`);
      return false;
    }
    if (r.mode === "provision") {
      await r.beforeWrite();
      mi = await azCall(c, "create", "Microsoft.ManagedIdentity/userAssignedIdentities/write", () =>
        c.msi.userAssignedIdentities.createOrUpdate(plan.rg, IDENTITY_NAME, { location: plan.location, tags: plan.tags }, so));
    }
  }
  r.state.identityId = mi!.id ?? providerId(plan.subscriptionId, plan.rg, "Microsoft.ManagedIdentity/userAssignedIdentities", IDENTITY_NAME);
  if (mi!.principalId) r.state.identityPrincipalId = mi!.principalId;
  if (mi!.clientId) r.state.identityClientId = mi!.clientId;
  return true;
}

function provisioning(state: string | undefined): "done" | "failed" | "busy" {
  const s = lower(state);
  if (s === "" || s === "succeeded") return "done";
  if (s === "failed" || s === "canceled") return "failed";
  return "busy";
}

async function ensureWorkspace(r: Run): Promise<boolean> {
  const { c, plan, so } = r;
  let ws = await azGet(c, "create", "Microsoft.OperationalInsights/workspaces/read", () => c.logAnalytics.workspaces.get(plan.rg, plan.workspace, so));
  const ps = provisioning(ws?.provisioningState);
  if (ws && ps === "busy") {
    r.missing.push(`Log Analytics workspace ${plan.workspace} (${ws.provisioningState})`);
    return false;
  }
  if (!ws || ps === "failed" || !sameTags(ws.tags, plan.tags)) {
    if (r.mode === "observe") {
      if (!ws) {
        r.missing.push(`Log Analytics workspace ${plan.workspace}`);
        return false;
      }
    } else {
      await r.beforeWrite();
      ws = await azCall(c, "create", "Microsoft.OperationalInsights/workspaces/write", () =>
        c.logAnalytics.workspaces.createOrUpdate(plan.rg, plan.workspace, {
          location: plan.location,
          tags: plan.tags,
          sku: { name: "PerGB2018" },
          retentionInDays: LOG_RETENTION_DAYS,
        }, { ...c.lro, ...so }));
    }
  }
  r.state.workspaceId = ws!.id ?? providerId(plan.subscriptionId, plan.rg, "Microsoft.OperationalInsights/workspaces", plan.workspace);
  if (ws!.customerId) r.state.workspaceCustomerId = ws!.customerId;
  return true;
}

/** Reads with an action the seed's create role lacks; without it, the idempotent PUT stands in for the read. */
async function readOrUnknown<T>(fn: () => Promise<T | undefined>): Promise<T | undefined | "unknown"> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof CloudError && e.reason === "AccessDenied") return "unknown";
    throw e;
  }
}

async function ensureTable(r: Run): Promise<boolean> {
  const { c, plan, so } = r;
  const columns = LOG_COLUMNS.map((col) => ({ name: col.name, type: col.type }));
  const have = await readOrUnknown(() => azGet(c, "read", "Microsoft.OperationalInsights/workspaces/tables/read", () =>
    c.logAnalytics.tables.get(plan.rg, plan.workspace, LOG_TABLE, so)));
  const retention = plan.logRetentionDays;
  const fits = have !== "unknown" && have !== undefined && provisioning(have.provisioningState) === "done" &&
    LOG_COLUMNS.every((col) => (have.schema?.columns ?? []).some((x) => x.name === col.name)) &&
    have.retentionInDays === retention && have.totalRetentionInDays === retention;
  if (!fits) {
    if (r.mode === "observe") {
      if (have === undefined) {
        r.missing.push(`table ${LOG_TABLE}`);
        return false;
      }
    } else {
      await r.beforeWrite();
      await azCall(c, "create", "Microsoft.OperationalInsights/workspaces/tables/write", () =>
        c.logAnalytics.tables.createOrUpdate(plan.rg, plan.workspace, LOG_TABLE, {
          schema: { name: LOG_TABLE, columns },
          retentionInDays: retention,
          totalRetentionInDays: retention,
          plan: "Analytics",
        }, { ...c.lro, ...so }));
    }
  }
  r.state.table = LOG_TABLE;
  return true;
}

async function ensureDce(r: Run): Promise<boolean> {
  const { c, plan, so } = r;
  let dce = await readOrUnknown(() => azGet(c, "read", "Microsoft.Insights/DataCollectionEndpoints/Read", () =>
    c.monitor.dataCollectionEndpoints.get(plan.rg, DCE_NAME, so)));
  if (dce === "unknown" || dce === undefined || !sameTags(dce.tags, plan.tags) || !dce.logsIngestion?.endpoint) {
    if (r.mode === "observe") {
      if (dce === undefined) {
        r.missing.push(`data collection endpoint ${DCE_NAME}`);
        return false;
      }
      if (dce === "unknown") {
        r.state.dceId = providerId(plan.subscriptionId, plan.rg, "Microsoft.Insights/dataCollectionEndpoints", DCE_NAME);
        return true;
      }
    } else {
      await r.beforeWrite();
      dce = await azCall(c, "create", "Microsoft.Insights/DataCollectionEndpoints/Write", () =>
        c.monitor.dataCollectionEndpoints.create(plan.rg, DCE_NAME, {
          body: { location: plan.location, tags: plan.tags, networkAcls: { publicNetworkAccess: "Enabled" } },
          ...so,
        }));
    }
  }
  const d = dce as Exclude<typeof dce, "unknown" | undefined>;
  r.state.dceId = d.id ?? providerId(plan.subscriptionId, plan.rg, "Microsoft.Insights/dataCollectionEndpoints", DCE_NAME);
  if (d.logsIngestion?.endpoint) r.state.dceEndpoint = d.logsIngestion.endpoint;
  return true;
}

function dcrBody(plan: AzurePlan, dceId: string, workspaceId: string) {
  return {
    location: plan.location,
    tags: plan.tags,
    dataCollectionEndpointId: dceId,
    streamDeclarations: { [LOG_STREAM]: { columns: LOG_COLUMNS.map((col) => ({ name: col.name, type: col.type })) } },
    destinations: { logAnalytics: [{ name: "runlogs", workspaceResourceId: workspaceId }] },
    dataFlows: [{ streams: [LOG_STREAM], destinations: ["runlogs"], transformKql: "source", outputStream: `Custom-${LOG_TABLE}` }],
  };
}

async function ensureDcr(r: Run): Promise<boolean> {
  const { c, plan, so } = r;
  const dceId = r.state.dceId!;
  const workspaceId = r.state.workspaceId!;
  let dcr = await azGet(c, "create", "Microsoft.Insights/DataCollectionRules/Read", () => c.monitor.dataCollectionRules.get(plan.rg, DCR_NAME, so));
  const fits = dcr !== undefined && sameTags(dcr.tags, plan.tags) && lower(dcr.dataCollectionEndpointId) === lower(dceId) &&
    (dcr.destinations?.logAnalytics ?? []).some((d) => lower(d.workspaceResourceId) === lower(workspaceId)) && !!dcr.streamDeclarations?.[LOG_STREAM];
  if (!fits) {
    if (r.mode === "observe") {
      if (!dcr) {
        r.missing.push(`data collection rule ${DCR_NAME}`);
        return false;
      }
    } else {
      await r.beforeWrite();
      dcr = await azCall(c, "create", "Microsoft.Insights/DataCollectionRules/Write", () =>
        c.monitor.dataCollectionRules.create(plan.rg, DCR_NAME, { body: dcrBody(plan, dceId, workspaceId), ...so }));
    }
  }
  r.state.dcrId = dcr!.id ?? providerId(plan.subscriptionId, plan.rg, "Microsoft.Insights/dataCollectionRules", DCR_NAME);
  if (dcr!.immutableId) r.state.dcrImmutableId = dcr!.immutableId;
  r.state.dcrStream = LOG_STREAM;
  return true;
}

async function ensureNetwork(r: Run, v: Validation): Promise<boolean> {
  const { c, plan, so } = r;
  if (plan.subnetId) {
    r.state.subnetId = v.subnetId ?? plan.subnetId;
    const p = parseResourceId(plan.subnetId);
    if (p) r.state.vnetId = `/subscriptions/${p.subscriptionId}/resourceGroups/${p.resourceGroup}/providers/Microsoft.Network/virtualNetworks/${p.names[0]}`;
    return true;
  }
  let vnet = await azGet(c, "create", "Microsoft.Network/virtualNetworks/read", () => c.network.virtualNetworks.get(plan.rg, VNET_NAME, so));
  const ps = provisioning(vnet?.provisioningState);
  const subnet = vnet?.subnets?.find((s) => s.name === SUBNET_NAME);
  if (!vnet || ps === "failed" || !subnet || !sameTags(vnet.tags, plan.tags)) {
    if (r.mode === "observe") {
      if (!vnet || !subnet) {
        r.missing.push(`virtual network ${VNET_NAME}`);
        return false;
      }
    } else {
      await r.beforeWrite();
      vnet = await azCall(c, "create", "Microsoft.Network/virtualNetworks/write", () =>
        c.network.virtualNetworks.createOrUpdate(plan.rg, VNET_NAME, {
          location: plan.location,
          tags: plan.tags,
          addressSpace: { addressPrefixes: [VNET_ADDRESS_SPACE] },
          subnets: [{ name: SUBNET_NAME, addressPrefix: SUBNET_PREFIX }],
        }, { ...c.lro, ...so }));
    }
  }
  r.state.vnetId = vnet!.id ?? providerId(plan.subscriptionId, plan.rg, "Microsoft.Network/virtualNetworks", VNET_NAME);
  r.state.subnetId = vnet!.subnets?.find((s) => s.name === SUBNET_NAME)?.id ?? `${r.state.vnetId}/subnets/${SUBNET_NAME}`;
  return true;
}

function roleBody(plan: AzurePlan, storageAccountId: string) {
  const storageRg = parseResourceId(storageAccountId);
  const scopes = [plan.rgId];
  if (storageRg) {
    const s = rgId(storageRg.subscriptionId, storageRg.resourceGroup);
    if (lower(s) !== lower(plan.rgId)) scopes.push(s);
  }
  return {
    roleName: roleName(plan.id),
    description: `Lets the VMs of ComputeEnvironment ${plan.id.namespace}/${plan.id.name} use their work directory and send their logs. ${roleDescriptionMarker(plan.id.uid)}`,
    roleType: "CustomRole",
    permissions: [{ actions: [] as string[], notActions: [] as string[], dataActions: [...VM_ROLE_DATA_ACTIONS], notDataActions: [] as string[] }],
    assignableScopes: scopes,
  };
}

async function ensureRoleDefinition(r: Run, v: Validation): Promise<boolean> {
  const { c, plan, so } = r;
  const guid = roleDefinitionGuid(plan.id.uid);
  const scope = subscriptionScope(plan.subscriptionId);
  const have = await azGet(c, "create", "Microsoft.Authorization/roleDefinitions/read", () => c.authorization.roleDefinitions.get(scopeArg(scope), guid, so));
  if (have && !(have.description ?? "").includes(roleDescriptionMarker(plan.id.uid))) {
    throw CloudError.terminal("ForeignRoleDefinition", `role definition ${guid} exists but is not this ComputeEnvironment's (no "${roleDescriptionMarker(plan.id.uid)}" in its description); it is left untouched`);
  }
  const want = roleBody(plan, v.storageAccountId!);
  const fits = have !== undefined &&
    JSON.stringify([...(have.permissions?.[0]?.dataActions ?? [])].sort()) === JSON.stringify([...want.permissions[0]!.dataActions].sort()) &&
    want.assignableScopes.every((s) => (have.assignableScopes ?? []).some((x) => lower(x) === lower(s)));
  if (!fits) {
    if (r.mode === "observe") {
      if (!have) {
        r.missing.push(`role definition ${guid}`);
        return false;
      }
    } else {
      await r.beforeWrite();
      await azCall(c, "create", "Microsoft.Authorization/roleDefinitions/write", () => c.authorization.roleDefinitions.createOrUpdate(scopeArg(scope), guid, want, so));
    }
  }
  r.state.roleDefinitionId = roleDefinitionId(plan.subscriptionId, guid);
  return true;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
    }, { once: true });
  });

/**
 * The authorization client puts `scope` into "/{scope}/providers/...": a scope with its leading "/"
 * would make "//subscriptions/..." (a URL to another host). Its own samples pass scopes without it.
 */
export function scopeArg(scope: string): string {
  return scope.replace(/^\/+/, "");
}

/** Bounded backoff for PrincipalNotFound (Entra replication after the identity was created). */
export const azureTuning = { principalRetryMs: [1_000, 2_000, 4_000, 8_000] };

async function ensureAssignment(r: Run, what: "container" | "dcr", scope: string): Promise<boolean> {
  const { c, plan, so } = r;
  const name = roleAssignmentGuid(plan.id.uid, what);
  const defId = r.state.roleDefinitionId!;
  const principalId = r.state.identityPrincipalId;
  const key = what === "container" ? "roleAssignmentContainerId" : "roleAssignmentDcrId";
  const have = await azGet(c, "create", "Microsoft.Authorization/roleAssignments/read", () => c.authorization.roleAssignments.get(scopeArg(scope), name, so));
  if (have && lower(have.roleDefinitionId) === lower(defId) && (!principalId || have.principalId === principalId)) {
    r.state[key] = have.id ?? `${scope}/providers/Microsoft.Authorization/roleAssignments/${name}`;
    return true;
  }
  if (r.mode === "observe" || !principalId) {
    r.missing.push(`role assignment on the ${what === "container" ? "work directory's container" : "data collection rule"}`);
    return false;
  }
  if (have) {
    // Ours by name, but for an identity or role that is gone (recreated by hand): replace it.
    await r.beforeWrite();
    await azDelete(c, "create", "Microsoft.Authorization/roleAssignments/delete", () => c.authorization.roleAssignments.delete(scopeArg(scope), name, so));
  }
  const before = what === "container" ? (r.ctx.ce.status?.azure as { containerId?: string } | undefined)?.containerId : undefined;
  if (before && lower(scopeArg(before)) !== lower(scopeArg(scope))) {
    // The work directory moved to another container: an assignment's name is unique in the tenant,
    // so the one at the old container goes first (Azure refuses to move it: RoleAssignmentUpdateNotPermitted).
    const old = await azGet(c, "create", "Microsoft.Authorization/roleAssignments/read", () => c.authorization.roleAssignments.get(scopeArg(before), name, so));
    if (old && lower(old.roleDefinitionId) === lower(defId)) {
      await r.beforeWrite();
      await azDelete(c, "create", "Microsoft.Authorization/roleAssignments/delete", () => c.authorization.roleAssignments.delete(scopeArg(before), name, so));
    }
  }
  await r.beforeWrite();
  for (let attempt = 0; ; attempt++) {
    try {
      const made = await azCall(c, "create", "Microsoft.Authorization/roleAssignments/write", () =>
        c.authorization.roleAssignments.create(scopeArg(scope), name, { roleDefinitionId: defId, principalId, principalType: "ServicePrincipal" }, so));
      r.state[key] = made.id ?? `${scope}/providers/Microsoft.Authorization/roleAssignments/${name}`;
      return true;
    } catch (e) {
      if (e instanceof CloudError && e.reason === "PrincipalNotFound" && attempt < azureTuning.principalRetryMs.length) {
        r.ctx.logger.debug({ attempt }, "identity not replicated yet (PrincipalNotFound); retrying the role assignment");
        await sleep(azureTuning.principalRetryMs[attempt]!, r.ctx.signal);
        continue;
      }
      if (e instanceof CloudError && azureErrorCode(e.cause) === "RoleAssignmentExists") {
        r.state[key] = `${scope}/providers/Microsoft.Authorization/roleAssignments/${name}`;
        return true;
      }
      throw e;
    }
  }
}

// ---------------------------------------------------------------------------------------------

async function converge(c: AzureClients, ctx: EnvContext, mode: Mode): Promise<EnvObservation> {
  const plan = planOf(ctx.ce, c);
  let announced: Promise<void> | undefined;
  const r: Run = {
    c, ctx, plan, mode, state: {}, missing: [], so: ctx.signal ? { abortSignal: ctx.signal } : {},
    beforeWrite: () => (announced ??= ctx.beforeCloudWrite?.() ?? Promise.resolve()),
  };
  const validation = validate(r);
  const group = ensureResourceGroup(r);
  await settleAll([validation, group]);
  const v = await validation;
  const rgThere = await group;
  r.state.storageAccountId = v.storageAccountId;
  r.state.containerId = v.containerId;
  if (rgThere) {
    const identity = ensureIdentity(r);
    const workspace = ensureWorkspace(r);
    const dce = ensureDce(r);
    const network = ensureNetwork(r, v);
    const roleDef = ensureRoleDefinition(r, v);
    const table = workspace.then((ok) => ok && ensureTable(r));
    const dcr = settleAll([workspace, dce, table]).then(([w, d, t]) => w && d && t && ensureDcr(r));
    const raContainer = settleAll([identity, roleDef]).then(([i, d]) => i && d && ensureAssignment(r, "container", v.containerId!));
    const raDcr = settleAll([identity, roleDef, dcr]).then(([i, d, x]) => i && d && x && ensureAssignment(r, "dcr", r.state.dcrId!));
    await settleAll([identity, workspace, dce, network, roleDef, table, dcr, raContainer, raDcr]);
  }
  return observation(ctx.ce, plan, r, v);
}

function observation(ce: ComputeEnvironment, plan: AzurePlan, r: Run, v: Validation): EnvObservation {
  const s = r.state;
  const azure: Record<string, string> = {
    subscriptionId: plan.subscriptionId,
    location: plan.location,
    vmSize: plan.vmSize,
    image: plan.image ?? DEFAULT_AZURE_IMAGE,
    resourceGroup: plan.rg,
    storageAccount: plan.storageAccount,
    workDir: plan.workDir,
  };
  for (const [k, val] of Object.entries(s)) if (typeof val === "string" && val !== "") azure[k] = val;
  const resources: CloudResourceRef[] = [];
  const add = (kind: string, id: string | undefined, name?: string): void => {
    if (id) resources.push({ kind, id, ...(name ? { name } : {}) });
  };
  add("ResourceGroup", s.resourceGroupId, plan.rg);
  add("ManagedIdentity", s.identityId, IDENTITY_NAME);
  add("RoleDefinition", s.roleDefinitionId, roleName(plan.id));
  add("RoleAssignment", s.roleAssignmentContainerId);
  add("RoleAssignment", s.roleAssignmentDcrId);
  add("LogAnalyticsWorkspace", s.workspaceId, plan.workspace);
  add("DataCollectionEndpoint", s.dceId, DCE_NAME);
  add("DataCollectionRule", s.dcrId, DCR_NAME);
  if (!plan.subnetId) add("VirtualNetwork", s.vnetId, VNET_NAME);
  void ce;
  return { resources, ready: r.missing.length === 0, missing: r.missing, status: { azure }, notes: v.skipped };
}

export async function observeAzureEnvironment(c: AzureClients, ctx: EnvContext): Promise<EnvObservation> {
  return converge(c, ctx, "observe");
}

export async function provisionAzureEnvironment(c: AzureClients, ctx: EnvContext): Promise<EnvObservation> {
  return converge(c, ctx, "provision");
}

// ---------------------------------------------------------------------------------------------
// Disposal

/**
 * Deletes, in an order Azure accepts, what this CE created: role assignments, DCR, DCE, workspace
 * (forced, so its name is free again), the resource group (forcing VM deletion), then the role
 * definition (see below). 404 means done. Nothing is deleted from a resource group without our UID tag, and a
 * role definition without our marker is left alone. Needs no valid spec.
 */
export async function disposeAzureEnvironment(c: AzureClients, ctx: EnvContext): Promise<void> {
  const id = ceId(ctx.ce);
  const sub = c.subscriptionId;
  const rg = resourceGroupName(id);
  const so = ctx.signal ? { abortSignal: ctx.signal } : {};
  const known = (ctx.ce.status?.azure ?? {}) as Record<string, string | undefined>;

  const group = await azGet(c, "dispose", "Microsoft.Resources/subscriptions/resourceGroups/read", () => c.resources.resourceGroups.get(rg, so));
  const ours = group !== undefined && group.tags?.[TAG_CE_UID] === id.uid;
  if (group && !ours) {
    ctx.logger.info({ resourceGroup: rg }, "resource group is not this ComputeEnvironment's; left untouched");
  }

  // Role assignments: the DCR one by its deterministic scope, the container one by the recorded
  // scope, and any other that grants this CE's role definition anywhere in the subscription (a
  // container assignment made by a provisioning whose status was never written, or left at a
  // container the spec no longer names): the role definition cannot go while one is left.
  const assignments: Array<{ scope: string; name: string }> = [];
  const dcrScope = providerId(sub, rg, "Microsoft.Insights/dataCollectionRules", DCR_NAME);
  if (ours) assignments.push({ scope: dcrScope, name: roleAssignmentGuid(id.uid, "dcr") });
  if (known.containerId) assignments.push({ scope: known.containerId, name: roleAssignmentGuid(id.uid, "container") });
  const defGuid = roleDefinitionGuid(id.uid);
  const defId = roleDefinitionId(sub, defGuid);
  await azCall(c, "dispose", "Microsoft.Authorization/roleAssignments/read", async () => {
    for await (const a of c.authorization.roleAssignments.listForSubscription(so)) {
      if (lower(a.roleDefinitionId) !== lower(defId) || !a.scope || !a.name) continue;
      if (!assignments.some((x) => lower(x.name) === lower(a.name) && lower(scopeArg(x.scope)) === lower(scopeArg(a.scope!)))) assignments.push({ scope: a.scope, name: a.name });
    }
  });
  await settleAll(assignments.map(async (a) => {
    const have = await azGet(c, "dispose", "Microsoft.Authorization/roleAssignments/read", () => c.authorization.roleAssignments.get(scopeArg(a.scope), a.name, so));
    if (!have) return;
    if (lower(have.roleDefinitionId) !== lower(defId)) {
      ctx.logger.info({ scope: a.scope }, "role assignment does not grant this ComputeEnvironment's role; left untouched");
      return;
    }
    await azDelete(c, "dispose", "Microsoft.Authorization/roleAssignments/delete", () => c.authorization.roleAssignments.delete(scopeArg(a.scope), a.name, so));
  }));

  if (ours) {
    await azDelete(c, "dispose", "Microsoft.Insights/DataCollectionRules/Delete", () => c.monitor.dataCollectionRules.delete(rg, DCR_NAME, so));
    await azDelete(c, "dispose", "Microsoft.Insights/DataCollectionEndpoints/Delete", () => c.monitor.dataCollectionEndpoints.delete(rg, DCE_NAME, so));
    await azDelete(c, "dispose", "Microsoft.OperationalInsights/workspaces/delete", () =>
      c.logAnalytics.workspaces.delete(rg, workspaceName(id), { force: true, ...c.lro, ...so }));
    await azDelete(c, "dispose", "Microsoft.Resources/subscriptions/resourceGroups/delete", () =>
      c.resources.resourceGroups.delete(rg, { forceDeletionTypes: "Microsoft.Compute/virtualMachines", ...c.lro, ...so }));
  }

  // The role definition last: Azure refuses its deletion (RoleDefinitionHasAssignments) while its
  // caches still hold the assignments deleted above, and the resource group's deletion gives them
  // time to drop them. A refusal is tried again (Retryable); with the group gone, that retry is
  // a few reads and this call.
  const def = await azGet(c, "dispose", "Microsoft.Authorization/roleDefinitions/read", () => c.authorization.roleDefinitions.get(scopeArg(subscriptionScope(sub)), defGuid, so));
  if (def && (def.description ?? "").includes(roleDescriptionMarker(id.uid))) {
    await azDelete(c, "dispose", "Microsoft.Authorization/roleDefinitions/delete", () => c.authorization.roleDefinitions.delete(scopeArg(subscriptionScope(sub)), defGuid, so));
  }
}

/** True when the error says the caller lacks a permission (used to tell "skipped" from "failed"). */
export function deniedByAzure(e: unknown): boolean {
  return isAuthorizationFailed(e) || (e instanceof CloudError && e.reason === "AccessDenied");
}
