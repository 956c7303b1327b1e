/**
 * Deterministic names, GUIDs and ownership tags of everything the operator creates in Azure for a
 * ComputeEnvironment (and its Runs). Everything here is derived from the CE (and Run) UID, so a
 * retried create after a crash is the same PUT on the same name and never a second resource.
 *
 * Azure tag names may not contain `/`, so the ownership tags use `vmforge-*` names (the CRD
 * reserves nothing for them; a user tag of the same name is overwritten by the operator's).
 */
import { createHash } from "node:crypto";
import type { ComputeEnvironment, Run } from "../../api/types.js";
import { CloudError } from "../provider.js";

export const TAG_CE_UID = "vmforge-ce-uid";
export const TAG_CE_NAMESPACE = "vmforge-ce-namespace";
export const TAG_CE_NAME = "vmforge-ce-name";
export const TAG_RUN_UID = "vmforge-run-uid";
export const TAG_RUN_NAME = "vmforge-run-name";
export const TAG_MANAGED_BY = "managed-by";

/** Names of the resources inside the CE's resource group (the group itself makes them unique). */
export const IDENTITY_NAME = "vmforge-vm-identity";
export const DCE_NAME = "vmforge-dce";
export const DCR_NAME = "vmforge-dcr";
export const VNET_NAME = "vmforge-vnet";
export const SUBNET_NAME = "vms";
export const VNET_ADDRESS_SPACE = "10.42.0.0/16";
export const SUBNET_PREFIX = "10.42.0.0/18";
/** The custom Log Analytics table of run logs, and the DCR stream feeding it. */
export const LOG_TABLE = "VmforgeRunLogs_CL";
export const LOG_STREAM = "Custom-VmforgeRunLogs";
/** Retention of the workspace itself (its smallest on PerGB2018); the run log table sets its own from spec.logRetentionDays. */
export const LOG_RETENTION_DAYS = 30;
/** Columns of the run log table: TimeGenerated is required by Azure; Seq orders lines within a second. */
export const LOG_COLUMNS: ReadonlyArray<{ name: string; type: "datetime" | "string" | "long" }> = [
  { name: "TimeGenerated", type: "datetime" },
  { name: "RunUid", type: "string" },
  { name: "Stream", type: "string" },
  { name: "Seq", type: "long" },
  { name: "Line", type: "string" },
];

/** Marker in the custom role's description that ties it to one CE (with the deterministic GUID). */
export function roleDescriptionMarker(ceUid: string): string {
  return `vmforge:ce-uid=${ceUid}`;
}

export interface CeId {
  namespace: string;
  name: string;
  uid: string;
}

export function ceId(ce: ComputeEnvironment): CeId {
  const { namespace, name, uid } = ce.metadata;
  if (!namespace || !name || !uid) {
    throw CloudError.terminal("InvalidObject", "ComputeEnvironment has no namespace, name or uid (not read from the API server?)");
  }
  return { namespace, name, uid };
}

function hex8(uid: string): string {
  return uid.replace(/-/g, "").slice(0, 8).toLowerCase();
}

/**
 * `vmforge-<ns>-<name>-<8 hex of UID>`, within Azure's 90 characters (letters, digits, `-`, `_`,
 * `.`, `(`, `)`; not ending in `.`). Long namespace/name pairs are cut, the UID part never is.
 */
export function resourceGroupName(id: CeId): string {
  const suffix = `-${hex8(id.uid)}`;
  const budget = 90 - "vmforge-".length - suffix.length;
  const middle = `${id.namespace}-${id.name}`.replace(/[^A-Za-z0-9_.()-]/g, "-").slice(0, budget).replace(/\.+$/, "");
  return `vmforge-${middle}${suffix}`;
}

/** Log Analytics workspace name (4-63 characters). */
export function workspaceName(id: CeId): string {
  return `vmforge-logs-${hex8(id.uid)}`;
}

/** A GUID derived from a string (name-based, RFC 4122 version 5 layout over SHA-256). */
export function guidFrom(text: string): string {
  const h = createHash("sha256").update(text).digest();
  const b = Buffer.from(h.subarray(0, 16));
  b[6] = (b[6]! & 0x0f) | 0x50;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const x = b.toString("hex");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

/** The custom role definition's GUID: fixed for a CE's life. */
export function roleDefinitionGuid(ceUid: string): string {
  return guidFrom(`vmforge/role-definition/${ceUid}`);
}

/** Role assignment GUID for one scope ("container" or "dcr") of a CE. */
export function roleAssignmentGuid(ceUid: string, what: "container" | "dcr"): string {
  return guidFrom(`vmforge/role-assignment/${what}/${ceUid}`);
}

/** The custom role's name: unique in the tenant because it ends with the CE UID's first 8 hex. */
export function roleName(id: CeId): string {
  const suffix = `-${hex8(id.uid)}`;
  return `vmforge-vm-${`${id.namespace}-${id.name}`.slice(0, 100)}${suffix}`;
}

export function ceTags(id: CeId, user?: Record<string, string>): Record<string, string> {
  return {
    ...(user ?? {}),
    [TAG_CE_UID]: id.uid,
    [TAG_CE_NAMESPACE]: id.namespace,
    [TAG_CE_NAME]: id.name.slice(0, 256),
    [TAG_MANAGED_BY]: "vmforge",
  };
}

/** The VM name of a Run: `vmforge-<the Run UID's 32 hex>` (Linux VM names allow 64 characters). */
export function vmName(runUid: string): string {
  return `vmforge-${runUid.replace(/-/g, "").toLowerCase()}`;
}

/** The OS disk of a Run's VM (named, since Azure copies no tags to it). */
export function osDiskName(runUid: string): string {
  return `${vmName(runUid)}-osdisk`;
}

/** Whether a disk name is that of a Run's OS disk (whatever the Run). */
export function isOsDiskName(name: string): boolean {
  return /^vmforge-[0-9a-f]{32}-osdisk$/i.test(name);
}

export function runTags(id: CeId, run: Run, user?: Record<string, string>): Record<string, string> {
  return {
    ...ceTags(id, user),
    [TAG_RUN_UID]: run.metadata.uid ?? "",
    [TAG_RUN_NAME]: (run.metadata.name ?? "").slice(0, 256),
  };
}

// ---------------------------------------------------------------------------------------------
// Resource IDs

export function subscriptionScope(subscriptionId: string): string {
  return `/subscriptions/${subscriptionId}`;
}

export function rgId(subscriptionId: string, rg: string): string {
  return `/subscriptions/${subscriptionId}/resourceGroups/${rg}`;
}

export function providerId(subscriptionId: string, rg: string, type: string, name: string): string {
  return `${rgId(subscriptionId, rg)}/providers/${type}/${name}`;
}

export function roleDefinitionId(subscriptionId: string, guid: string): string {
  return `/subscriptions/${subscriptionId}/providers/Microsoft.Authorization/roleDefinitions/${guid}`;
}

export interface ParsedId {
  subscriptionId: string;
  resourceGroup: string;
  /** Provider namespace and types, e.g. Microsoft.Network/virtualNetworks/subnets. */
  type: string;
  /** Names along the type path, e.g. [vnet, subnet]. */
  names: string[];
}

/** Parses an ARM resource ID inside a resource group; undefined for anything else. */
export function parseResourceId(id: string): ParsedId | undefined {
  const m = /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/([^/]+)\/(.+)$/i.exec(id);
  if (!m) return undefined;
  const parts = m[4]!.split("/");
  if (parts.length % 2 !== 0) return undefined;
  const types: string[] = [m[3]!];
  const names: string[] = [];
  for (let i = 0; i < parts.length; i += 2) {
    types.push(parts[i]!);
    names.push(parts[i + 1]!);
  }
  return { subscriptionId: m[1]!, resourceGroup: m[2]!, type: types.join("/"), names };
}

/** Parses az://container[/path]. */
export function parseAzUrl(url: string): { container: string; path: string } | undefined {
  const m = /^az:\/\/([a-z0-9][a-z0-9-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url.trim());
  if (!m) return undefined;
  return { container: m[1]!, path: (m[2] ?? "").replace(/^\/+|\/+$/g, "") };
}

/** The default image of Runs' VMs (spec.azure.image unset). */
export const DEFAULT_AZURE_IMAGE = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest";

export type AzureImageReference = { publisher: string; offer: string; sku: string; version: string } | { id: string };

/** spec.azure.image (admission checked its form) as the VM's imageReference. */
export function azureImageReference(image: string | undefined): AzureImageReference {
  const v = (image ?? DEFAULT_AZURE_IMAGE).trim();
  if (v.startsWith("/")) return { id: v };
  const [publisher = "", offer = "", sku = "", version = "latest"] = v.split(":");
  return { publisher, offer, sku, version };
}
