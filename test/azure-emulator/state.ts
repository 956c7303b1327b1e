// The emulator's non-ARM state: the Entra directory (tenants, subscriptions, service principals),
// tunable behaviour (latencies, windows, lifetimes), injected faults and the request log.
import type { DetIds } from "./util.js";
import { lc } from "./util.js";

export interface FederatedCredential {
  name: string;
  issuer: string;
  subject: string;
  audiences: string[];
}

export interface Principal {
  /** Object ID of the service principal (the `oid` claim, the role assignments' principalId). */
  oid: string;
  /** Application (client) ID: the `appid` claim. */
  appId: string;
  tenantId: string;
  displayName: string;
  kind: "application" | "managedIdentity";
  secrets: string[];
  federatedCredentials: FederatedCredential[];
  createdAtMs: number;
  /** ARM ID of the user-assigned identity, or of the VM owning a system-assigned identity. */
  resourceId?: string;
}

export interface Tenant {
  id: string;
  domain: string;
}

export interface Subscription {
  id: string;
  tenantId: string;
  displayName: string;
}

export interface Fault {
  id: string;
  /** Operation name as written in the request log (e.g. "Microsoft.Compute/virtualMachines/write", "token"). */
  operation?: string;
  method?: string;
  /** Resource type (case-insensitive), e.g. "Microsoft.Compute/virtualMachines". */
  resourceType?: string;
  /**
   * Only requests whose path contains this (case-insensitive), e.g. a VM's name: a test's fault
   * then meets only its own resources, not those of tests running beside it.
   */
  path?: string;
  status: number;
  /** Retry-After header value in seconds. */
  retryAfterS?: number;
  /** ARM error code in the body (default by status). */
  code?: string;
  message?: string;
  /** How many matching requests fail; undefined = all. */
  count?: number;
  /** Percentage (0-100) of matching requests that fail, chosen deterministically from the seed. */
  percentage?: number;
}

export type CapacityCode = "SkuNotAvailable" | "AllocationFailed" | "OperationNotAllowed" | "ZonalAllocationFailed";

export interface CapacityFault {
  id: string;
  vmSize: string;
  location: string;
  code: CapacityCode;
  count?: number;
}

export interface RequestLogEntry {
  seq: number;
  time: string;
  method: string;
  path: string;
  resourceType: string;
  operation: string;
  apiVersion?: string;
  /** Object ID of the caller, when the request carried a valid token. */
  caller?: string;
  callerAppId?: string;
  status: number;
  /** Bytes of the answer's body (not recorded for HEAD and the Logs endpoints). */
  bytes?: number;
  /** The query string (e.g. `?api-version=...&$skiptoken=...` of a list's next page). */
  query?: string;
}

export interface Settings {
  /** Lifetime of issued access tokens, seconds. */
  tokenLifetimeS: number;
  /** Time after an identity is created during which role assignments without principalType fail. */
  principalNotFoundWindowMs: number;
  /** Retry-After header value (seconds) on long-running operation responses. */
  lroRetryAfterS: number;
  /** Default time an asynchronous operation takes, ms. */
  defaultLatencyMs: number;
  /** Per resource type (lower-cased) latency, ms. */
  latencyMs: Record<string, number>;
  /** Items per page of resource lists (the rest behind `nextLink`); 0 = unpaged. */
  listPageSize: number;
  /**
   * How long a role assignment made through Resource Manager (or a test control asking for it)
   * takes to count in access checks, ms: Azure documents up to about 10 minutes for a new grant
   * to reach Resource Manager's and the data planes' authorization caches.
   */
  roleAssignmentDelayMs: number;
  /**
   * How long a deleted role assignment stays in the authorization caches, ms: it is no longer
   * listed or readable, but until then it still grants its role, and the role definition it names
   * cannot be deleted yet (RoleDefinitionHasAssignments), as in Azure right after a removal.
   */
  roleAssignmentRemovalDelayMs: number;
}

export function defaultSettings(): Settings {
  return { tokenLifetimeS: 3600, principalNotFoundWindowMs: 5_000, lroRetryAfterS: 0, defaultLatencyMs: 0, latencyMs: {}, listPageSize: 0, roleAssignmentDelayMs: 5_000, roleAssignmentRemovalDelayMs: 5_000 };
}

export class Directory {
  tenants = new Map<string, Tenant>();
  subscriptions = new Map<string, Subscription>();
  /** by lower-cased oid */
  principals = new Map<string, Principal>();
  /** by lower-cased appId */
  byAppId = new Map<string, Principal>();

  constructor(private readonly ids: DetIds) {}

  clear(): void {
    this.tenants.clear();
    this.subscriptions.clear();
    this.principals.clear();
    this.byAppId.clear();
  }

  tenant(idOrDomain: string): Tenant | undefined {
    const k = lc(idOrDomain);
    const t = this.tenants.get(k);
    if (t) return t;
    for (const x of this.tenants.values()) if (lc(x.domain) === k) return x;
    return undefined;
  }

  createTenant(opts: { id?: string; domain?: string } = {}): Tenant {
    const id = lc(opts.id ?? this.ids.guid("tenant", "tenant"));
    const t: Tenant = { id, domain: opts.domain ?? `tenant${id.slice(0, 8)}.onmicrosoft.com` };
    this.tenants.set(id, t);
    return t;
  }

  createSubscription(tenantId: string, opts: { id?: string; displayName?: string } = {}): Subscription {
    const id = lc(opts.id ?? this.ids.guid("subscription", tenantId));
    const s: Subscription = { id, tenantId: lc(tenantId), displayName: opts.displayName ?? `Subscription ${id.slice(0, 8)}` };
    this.subscriptions.set(id, s);
    return s;
  }

  addPrincipal(p: Principal): Principal {
    this.principals.set(lc(p.oid), p);
    this.byAppId.set(lc(p.appId), p);
    return p;
  }

  removePrincipal(oid: string): void {
    const p = this.principals.get(lc(oid));
    if (!p) return;
    this.principals.delete(lc(oid));
    if (this.byAppId.get(lc(p.appId)) === p) this.byAppId.delete(lc(p.appId));
  }

  principal(oid: string): Principal | undefined {
    return this.principals.get(lc(oid));
  }

  app(appId: string): Principal | undefined {
    return this.byAppId.get(lc(appId));
  }
}
