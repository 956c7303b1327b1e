/**
 * The Azure custom roles the operator's principal needs, per phase, as the product documents give
 * them (seed 001, the newer revision of seed 000's roles page), plus the few actions the operator
 * needs beyond them, each with the reason. `vmforge policy azure` prints these.
 *
 * Every ARM or data-plane call in src/cloud/azure goes through `azCall(phase, action, ...)`; a unit
 * test reads those call sites and fails when an action is outside its phase's role (seed role,
 * documented additions, or the built-in Reader role for the optional "read" checks).
 */

export type AzurePhase = "create" | "launch" | "logs" | "dispose";
export const AZURE_PHASES: readonly AzurePhase[] = ["create", "launch", "logs", "dispose"];
/** Calls made with the built-in Reader role (seed 000 asks for it); the operator works without it, skipping those checks. */
export type AzureCallPhase = AzurePhase | "read";

export const SUBSCRIPTION_PLACEHOLDER = "<SUBSCRIPTION-ID>";

export interface AzureRole {
  roleName: string;
  description: string;
  actions: string[];
  dataActions: string[];
}

export interface Addition {
  action: string;
  dataAction?: boolean;
  why: string;
}

function roles(): Record<AzurePhase, AzureRole> {
  return {
    create: {
      roleName: "seqera-azure-cloud-create",
      description: "Role assumed by Seqera Platform to create Azure Cloud compute environments",
      actions: [
        "Microsoft.Resources/subscriptions/resourceGroups/read",
        "Microsoft.Resources/subscriptions/resourceGroups/write",
        "Microsoft.Storage/storageAccounts/blobServices/containers/read",
        "Microsoft.Network/virtualNetworks/read",
        "Microsoft.Network/virtualNetworks/write",
        "Microsoft.Network/virtualNetworks/subnets/read",
        "Microsoft.Network/virtualNetworks/subnets/write",
        "Microsoft.ManagedIdentity/userAssignedIdentities/read",
        "Microsoft.ManagedIdentity/userAssignedIdentities/write",
        "Microsoft.Authorization/roleAssignments/read",
        "Microsoft.Authorization/roleAssignments/write",
        "Microsoft.Authorization/roleDefinitions/read",
        "Microsoft.Authorization/roleDefinitions/write",
        "Microsoft.Insights/DataCollectionRules/Read",
        "Microsoft.Insights/DataCollectionRules/Write",
        "Microsoft.Insights/DataCollectionEndpoints/Write",
        "Microsoft.OperationalInsights/workspaces/read",
        "Microsoft.OperationalInsights/workspaces/write",
        "Microsoft.OperationalInsights/workspaces/tables/write",
      ],
      dataActions: [],
    },
    launch: {
      roleName: "seqera-azure-cloud-launch",
      description: "Role assumed by Seqera Platform to launch Studios and pipelines on Azure Cloud compute environments",
      actions: [
        "Microsoft.Compute/virtualMachines/read",
        "Microsoft.Compute/virtualMachines/write",
        "Microsoft.Compute/virtualMachines/delete",
        "Microsoft.Compute/virtualMachines/deallocate/action",
        "Microsoft.Compute/virtualMachines/attachDetachDataDisks/action",
        "Microsoft.Network/publicIPAddresses/read",
        "Microsoft.Network/publicIPAddresses/write",
        "Microsoft.Network/publicIPAddresses/delete",
        "Microsoft.Network/publicIPAddresses/join/action",
        "Microsoft.Network/networkInterfaces/read",
        "Microsoft.Network/networkInterfaces/write",
        "Microsoft.Network/networkInterfaces/join/action",
        "Microsoft.Network/virtualNetworks/subnets/join/action",
        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
        "Microsoft.Insights/DataCollectionRules/Write",
        "Microsoft.Insights/DataCollectionEndpoints/Write",
      ],
      dataActions: ["Microsoft.Insights/Telemetry/Write"],
    },
    logs: {
      roleName: "seqera-azure-cloud-logs",
      description: "Role to be assumed by Seqera Platform to read live-streamed logs for Azure Cloud compute environments",
      actions: [
        "Microsoft.OperationalInsights/workspaces/query/read",
        "Microsoft.OperationalInsights/workspaces/query/Tables.Custom/read",
      ],
      dataActions: ["Microsoft.OperationalInsights/workspaces/tables/data/read"],
    },
    dispose: {
      roleName: "seqera-azure-cloud-dispose",
      description: "Role assumed by Seqera Platform to delete Azure Cloud compute environment resources",
      actions: [
        "Microsoft.Resources/subscriptions/resourceGroups/delete",
        "Microsoft.Network/publicIPAddresses/delete",
        "Microsoft.Network/virtualNetworks/delete",
        "Microsoft.Network/virtualNetworks/subnets/delete",
        "Microsoft.Network/networkInterfaces/delete",
        "Microsoft.ManagedIdentity/userAssignedIdentities/delete",
        "Microsoft.Authorization/roleAssignments/delete",
        "Microsoft.Authorization/roleDefinitions/delete",
        "Microsoft.Insights/DataCollectionRules/Delete",
        "Microsoft.Insights/DataCollectionEndpoints/Delete",
        "Microsoft.OperationalInsights/workspaces/delete",
        "Microsoft.OperationalInsights/workspaces/tables/delete",
      ],
      dataActions: [],
    },
  };
}

/**
 * What the operator needs beyond the seed's role of a phase. Kept as short as the design allows;
 * the README prints these as the minimal addition.
 */
function additions(): Record<AzurePhase, Addition[]> {
  return {
    create: [
      {
        action: "Microsoft.Authorization/roleAssignments/delete",
        why: "repair only: an assignment of ours left pointing at an identity deleted by hand is replaced (Azure does not let an assignment change its principal)",
      },
    ],
    launch: [
      {
        action: "Microsoft.Network/networkInterfaces/delete",
        why: "orphan sweep: a network interface left by a VM whose Run no longer exists (VMs delete their own NIC through deleteOption)",
      },
      {
        action: "Microsoft.Compute/disks/read",
        why: "orphan sweep: finding OS disks left by a VM whose Run no longer exists (by their name from the Run UID; Azure copies no tags to them)",
      },
      {
        action: "Microsoft.Compute/disks/delete",
        why: "orphan sweep: deleting such an OS disk (VMs delete their own disk through deleteOption)",
      },
    ],
    logs: [
      {
        action: "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
        dataAction: true,
        why: "the Run's uploaded exit status in the work directory (seed 000's logs role had it; seed 001's slimmer one dropped it)",
      },
    ],
    dispose: [
      {
        action: "Microsoft.Resources/subscriptions/resourceGroups/read",
        why: "ownership check: the resource group's vmforge-ce-uid tag is read before anything is deleted",
      },
      {
        action: "Microsoft.Authorization/roleDefinitions/read",
        why: "ownership check of the custom role (deterministic GUID and description marker) before deleting it",
      },
      {
        action: "Microsoft.Authorization/roleAssignments/read",
        why: "ownership check of the role assignments (they must grant our role to our identity) before deleting them",
      },
    ],
  };
}

/** Fresh copies of the seed roles per phase. */
export function azureRoles(): Record<AzurePhase, AzureRole> {
  return roles();
}

export function azureAdditions(): Record<AzurePhase, Addition[]> {
  return additions();
}

/** The built-in Reader role (seed 000: needed for live logs; the operator uses it for validation). */
export const READER_ROLE_ID = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

export interface RoleJson {
  properties: {
    roleName: string;
    description: string;
    assignableScopes: string[];
    permissions: Array<{ actions: string[]; notActions: string[]; dataActions: string[]; notDataActions: string[] }>;
  };
}

/** The seed's role JSON of one phase, with the subscription filled in (and optionally the additions). */
export function renderAzureRole(phase: AzurePhase, opts: { subscriptionId?: string; withAdditions?: boolean } = {}): RoleJson {
  const r = roles()[phase];
  const actions = [...r.actions];
  const dataActions = [...r.dataActions];
  if (opts.withAdditions) {
    for (const a of additions()[phase]) {
      const list = a.dataAction ? dataActions : actions;
      if (!list.includes(a.action)) list.push(a.action);
    }
  }
  return {
    properties: {
      roleName: r.roleName,
      description: r.description,
      assignableScopes: [`/subscriptions/${opts.subscriptionId ?? SUBSCRIPTION_PLACEHOLDER}`],
      permissions: [{ actions, notActions: [], dataActions, notDataActions: [] }],
    },
  };
}

/** Case-insensitive match of an action against a pattern list with `*` wildcards (as Azure RBAC does). */
export function actionAllowed(action: string, patterns: readonly string[]): boolean {
  const a = action.toLowerCase();
  return patterns.some((p) => {
    const re = new RegExp(`^${p.toLowerCase().split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`);
    return re.test(a);
  });
}

/** Everything a phase's call may use: the seed role plus the documented additions ("read" = the built-in Reader, `*\/read`). */
export function phaseAllows(phase: AzureCallPhase, action: string): boolean {
  if (phase === "read") return /\/read$/i.test(action);
  const r = roles()[phase];
  const extra = additions()[phase].map((a) => a.action);
  return actionAllowed(action, [...r.actions, ...r.dataActions, ...extra]);
}
