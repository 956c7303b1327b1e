// Azure RBAC: role definitions (built-in and custom), role assignments and the access check.
//
// A principal may perform an action on a scope when one of its role assignments is at that scope
// or above it, and one permission block of the assigned role lists the action (wildcards allowed,
// case-insensitive) in `actions` (or `dataActions` for data actions) without excluding it in the
// same block's `notActions` (`notDataActions`). `*` in actions never grants data actions.
//
// As in Azure, a new role assignment is listed at once but counts in access checks (Resource
// Manager, Key Vault, Logs Ingestion) only once it has propagated to the services' authorization
// caches: `effectiveAtMs`. Changing the propagation delay moves the assignments still pending;
// those already in effect stay so. A deleted assignment is gone from lists and reads at once, but
// the caches keep it for a while (`lingering`): it still grants its role, and its role definition
// cannot be deleted until it is dropped.
import { lc, scopeWithin, trimSlash } from "./util.js";

export interface Permission {
  actions: string[];
  notActions: string[];
  dataActions: string[];
  notDataActions: string[];
}

export interface RoleDefinition {
  /** GUID (the last segment of the ID). */
  name: string;
  roleName: string;
  description: string;
  type: "BuiltInRole" | "CustomRole";
  permissions: Permission[];
  assignableScopes: string[];
  createdOn: string;
  updatedOn: string;
  createdBy?: string;
  updatedBy?: string;
  /** Scope the definition was written at (custom roles), e.g. /subscriptions/<id>. */
  scope: string;
  tenantId?: string;
}

export interface RoleAssignment {
  name: string;
  scope: string;
  roleDefinitionId: string;
  principalId: string;
  principalType: string;
  description?: string;
  condition?: string;
  createdOn: string;
  updatedOn: string;
  createdBy?: string;
  updatedBy?: string;
  /** When the assignment starts to count in access checks (epoch ms); undefined: at once. */
  effectiveAtMs?: number;
}

const perm = (actions: string[], notActions: string[] = [], dataActions: string[] = [], notDataActions: string[] = []): Permission => ({
  actions,
  notActions,
  dataActions,
  notDataActions,
});

const BUILT_IN_DATE = "2015-02-02T21:55:09.8806423Z";

function builtIn(name: string, roleName: string, description: string, p: Permission): RoleDefinition {
  return { name, roleName, description, type: "BuiltInRole", permissions: [p], assignableScopes: ["/"], createdOn: BUILT_IN_DATE, updatedOn: BUILT_IN_DATE, scope: "/" };
}

/** Built-in roles with their real IDs and permissions (the ones the product documents mention, and a few neighbours). */
export const BUILT_IN_ROLES: RoleDefinition[] = [
  builtIn("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner", "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.", perm(["*"])),
  builtIn(
    "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "Contributor",
    "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC, manage assignments in Azure Blueprints, or share image galleries.",
    perm(
      ["*"],
      [
        "Microsoft.Authorization/*/Delete",
        "Microsoft.Authorization/*/Write",
        "Microsoft.Authorization/elevateAccess/Action",
        "Microsoft.Blueprint/blueprintAssignments/write",
        "Microsoft.Blueprint/blueprintAssignments/delete",
        "Microsoft.Compute/galleries/share/action",
        "Microsoft.Purview/consents/write",
        "Microsoft.Purview/consents/delete",
        "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
        "Microsoft.Subscription/cancel/action",
        "Microsoft.Subscription/enable/action",
      ],
    ),
  ),
  builtIn("acdd72a7-3385-48ef-bd42-f606fba81ae7", "Reader", "View all resources, but does not allow you to make any changes.", perm(["*/read"])),
  builtIn(
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    "User Access Administrator",
    "Lets you manage user access to Azure resources.",
    perm(["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"]),
  ),
  builtIn(
    "3913510d-42f4-4e42-8a64-420c390055eb",
    "Monitoring Metrics Publisher",
    "Enables publishing metrics against Azure resources",
    perm(["Microsoft.Insights/Register/Action", "Microsoft.Support/*", "Microsoft.Resources/subscriptions/resourceGroups/read"], [], ["Microsoft.Insights/Metrics/Write", "Microsoft.Insights/Telemetry/Write"]),
  ),
  builtIn(
    "43d0d8ad-25c7-4714-9337-8ba259a9fe05",
    "Monitoring Reader",
    "Can read all monitoring data.",
    perm(["*/read", "Microsoft.OperationalInsights/workspaces/search/action", "Microsoft.Support/*"]),
  ),
  builtIn(
    "73c42c96-874c-492b-b04d-ab87d138a893",
    "Log Analytics Reader",
    "Log Analytics Reader can view and search all monitoring data as well as and view monitoring settings, including viewing the configuration of Azure diagnostics on all Azure resources.",
    perm(
      ["*/read", "Microsoft.OperationalInsights/workspaces/analytics/query/action", "Microsoft.OperationalInsights/workspaces/search/action", "Microsoft.Support/*"],
      ["Microsoft.OperationalInsights/workspaces/sharedKeys/read"],
    ),
  ),
  builtIn(
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Contributor",
    "Allows for read, write and delete access to Azure Storage blob containers and data",
    perm(
      [
        "Microsoft.Storage/storageAccounts/blobServices/containers/delete",
        "Microsoft.Storage/storageAccounts/blobServices/containers/read",
        "Microsoft.Storage/storageAccounts/blobServices/containers/write",
        "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
      ],
      [],
      [
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/move/action",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
      ],
    ),
  ),
  builtIn(
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Storage Blob Data Reader",
    "Allows for read access to Azure Storage blob containers and data",
    perm(
      ["Microsoft.Storage/storageAccounts/blobServices/containers/read", "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action"],
      [],
      ["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
    ),
  ),
  builtIn(
    "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets User",
    "Read secret contents. Only works for key vaults that use the 'Azure role-based access control' permission model.",
    perm([], [], ["Microsoft.KeyVault/vaults/secrets/getSecret/action", "Microsoft.KeyVault/vaults/secrets/readMetadata/action"]),
  ),
  builtIn(
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Key Vault Secrets Officer",
    "Perform any action on the secrets of a key vault, except manage permissions. Only works for key vaults that use the 'Azure role-based access control' permission model.",
    perm(
      [
        "Microsoft.Authorization/*/read",
        "Microsoft.Insights/alertRules/*",
        "Microsoft.Resources/deployments/*",
        "Microsoft.Resources/subscriptions/resourceGroups/read",
        "Microsoft.Support/*",
        "Microsoft.KeyVault/checkNameAvailability/read",
        "Microsoft.KeyVault/deletedVaults/read",
        "Microsoft.KeyVault/locations/*/read",
        "Microsoft.KeyVault/vaults/*/read",
        "Microsoft.KeyVault/operations/read",
      ],
      [],
      ["Microsoft.KeyVault/vaults/secrets/*"],
    ),
  ),
  builtIn(
    "f1a07417-d97a-45cb-824c-7a7467783830",
    "Managed Identity Operator",
    "Read and Assign User Assigned Identity",
    perm([
      "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
      "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
      "Microsoft.Authorization/*/read",
      "Microsoft.Insights/alertRules/*",
      "Microsoft.Resources/subscriptions/resourceGroups/read",
      "Microsoft.Resources/deployments/*",
      "Microsoft.Support/*",
    ]),
  ),
];

const patternCache = new Map<string, RegExp>();
function patternRe(pattern: string): RegExp {
  let re = patternCache.get(pattern);
  if (!re) {
    const escaped = pattern
      .split("*")
      .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
      .join(".*");
    re = new RegExp(`^${escaped}$`, "i");
    patternCache.set(pattern, re);
  }
  return re;
}

/** Does an action pattern (with `*` wildcards) match an action? Case-insensitive. */
export function actionMatches(pattern: string, action: string): boolean {
  if (pattern === "*") return true;
  return patternRe(pattern).test(action);
}

/** Does this set of permission blocks allow the action? */
export function permissionsAllow(permissions: Permission[], action: string, dataAction: boolean): boolean {
  for (const p of permissions) {
    const allow = dataAction ? p.dataActions : p.actions;
    const deny = dataAction ? p.notDataActions : p.notActions;
    if (allow.some((a) => actionMatches(a, action)) && !deny.some((a) => actionMatches(a, action))) return true;
  }
  return false;
}

function normPermission(p: Partial<Permission> | undefined): Permission {
  return {
    actions: [...(p?.actions ?? [])],
    notActions: [...(p?.notActions ?? [])],
    dataActions: [...(p?.dataActions ?? [])],
    notDataActions: [...(p?.notDataActions ?? [])],
  };
}
export { normPermission };

export class Rbac {
  /** Custom role definitions by lower-cased GUID. */
  readonly customRoles = new Map<string, RoleDefinition>();
  /** Role assignments by lower-cased GUID name. */
  readonly assignments = new Map<string, RoleAssignment>();
  /** Role assignments by lower-cased principal ID. */
  private readonly byPrincipal = new Map<string, Set<RoleAssignment>>();
  /** Deleted assignments the authorization caches still hold, by lower-cased name, until goneAtMs. */
  private readonly lingering = new Map<string, RoleAssignment & { deletedAtMs: number; goneAtMs: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  clear(): void {
    this.customRoles.clear();
    this.assignments.clear();
    this.byPrincipal.clear();
    this.lingering.clear();
  }

  roleDefinition(guid: string): RoleDefinition | undefined {
    const k = lc(guid);
    return this.customRoles.get(k) ?? BUILT_IN_ROLES.find((r) => r.name === k);
  }

  /** The GUID at the end of a role definition ID. */
  static roleGuid(roleDefinitionId: string): string {
    return lc(trimSlash(roleDefinitionId).split("/").pop() ?? "");
  }

  addAssignment(a: RoleAssignment): void {
    this.lingering.delete(lc(a.name));
    this.assignments.set(lc(a.name), a);
    const k = lc(a.principalId);
    let s = this.byPrincipal.get(k);
    if (!s) this.byPrincipal.set(k, (s = new Set()));
    s.add(a);
  }

  /** Deletes an assignment; the caches keep it for `lingerMs` more (see `lingering`). */
  removeAssignment(name: string, lingerMs = 0): RoleAssignment | undefined {
    const a = this.assignments.get(lc(name));
    if (!a) return undefined;
    this.assignments.delete(lc(name));
    this.byPrincipal.get(lc(a.principalId))?.delete(a);
    const at = this.now();
    if (lingerMs > 0) this.lingering.set(lc(name), { ...a, deletedAtMs: at, goneAtMs: at + lingerMs });
    return a;
  }

  /** A new removal delay for the deleted assignments still cached: each is dropped `delayMs` after its deletion. */
  relinger(delayMs: number): void {
    for (const a of this.lingering.values()) a.goneAtMs = a.deletedAtMs + Math.max(0, delayMs);
  }

  /** Deleted assignments still in the caches (dropping those whose time is up). */
  private *stillCached(): Iterable<RoleAssignment> {
    const now = this.now();
    for (const [k, a] of this.lingering) {
      if (a.goneAtMs <= now) this.lingering.delete(k);
      else yield a;
    }
  }

  /** Does an assignment (a deleted one the caches still hold included) name this role definition? */
  roleHasAssignments(roleGuid: string): boolean {
    const g = lc(roleGuid);
    for (const a of this.assignments.values()) if (Rbac.roleGuid(a.roleDefinitionId) === g) return true;
    for (const a of this.stillCached()) if (Rbac.roleGuid(a.roleDefinitionId) === g) return true;
    return false;
  }

  assignmentsOf(principalId: string): Iterable<RoleAssignment> {
    return this.byPrincipal.get(lc(principalId)) ?? [];
  }

  /** The principal's assignments that have propagated: the ones access checks count. */
  *effectiveAssignmentsOf(principalId: string): Iterable<RoleAssignment> {
    const now = this.now();
    for (const a of this.assignmentsOf(principalId)) if (a.effectiveAtMs === undefined || a.effectiveAtMs <= now) yield a;
    const k = lc(principalId);
    for (const a of this.stillCached()) if (lc(a.principalId) === k && (a.effectiveAtMs === undefined || a.effectiveAtMs <= now)) yield a;
  }

  /**
   * A new propagation delay for the assignments not yet in effect: each takes effect `delayMs`
   * after it was created (at once when that is past). Assignments in effect stay in effect.
   */
  repropagate(delayMs: number): void {
    const now = this.now();
    for (const a of this.assignments.values()) {
      if (a.effectiveAtMs === undefined || a.effectiveAtMs <= now) continue;
      a.effectiveAtMs = Date.parse(a.createdOn) + Math.max(0, delayMs);
    }
  }

  /** Is the principal allowed to perform the action on the scope? */
  allowed(principalId: string, action: string, scope: string, dataAction: boolean): boolean {
    for (const a of this.effectiveAssignmentsOf(principalId)) {
      if (!scopeWithin(scope, a.scope)) continue;
      const role = this.roleDefinition(Rbac.roleGuid(a.roleDefinitionId));
      if (role && permissionsAllow(role.permissions, action, dataAction)) return true;
    }
    return false;
  }

  /** Does the principal hold any role assignment at, above or below the scope? */
  hasAnyAccess(principalId: string, scope: string): boolean {
    for (const a of this.effectiveAssignmentsOf(principalId)) {
      if (scopeWithin(scope, a.scope) || scopeWithin(a.scope, scope)) return true;
    }
    return false;
  }
}

/** The message ARM writes for a denied action. */
export function authorizationFailedMessage(client: string, oid: string, action: string, scope: string): string {
  return `The client '${client}' with object id '${oid}' does not have authorization to perform action '${action}' over scope '${scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.`;
}
