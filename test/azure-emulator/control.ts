// Typed client of the emulator's test controls (/_emulator/...). Not Azure's API: tests use it to
// set up tenants, principals and role assignments, tune behaviour, inject faults and read the
// request log.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { request } from "node:https";

export interface EmulatorSettings {
  tokenLifetimeS: number;
  principalNotFoundWindowMs: number;
  lroRetryAfterS: number;
  defaultLatencyMs: number;
  latencyMs: Record<string, number>;
  /** Items per page of resource lists (the rest behind nextLink); 0 = unpaged. */
  listPageSize: number;
  /** How long a role assignment made through Resource Manager takes to count in access checks, ms (test-control grants: with `propagate`). */
  roleAssignmentDelayMs: number;
  /** How long a deleted role assignment still counts (access checks, RoleDefinitionHasAssignments), ms. */
  roleAssignmentRemovalDelayMs: number;
}

export interface EmulatorInfo {
  endpoint: string;
  tenantId: string;
  subscriptionId: string;
  admin: { clientId: string; clientSecret: string; objectId: string };
  settings: EmulatorSettings;
}

export interface CreatedPrincipal {
  objectId: string;
  clientId: string;
  tenantId: string;
  displayName: string;
  secret?: string;
}

export interface FederatedCredentialSpec {
  name?: string;
  issuer: string;
  subject: string;
  audiences?: string[];
}

export interface FaultSpec {
  /** Operation as in the request log, e.g. "Microsoft.Compute/virtualMachines/write", "token". */
  operation?: string;
  method?: string;
  resourceType?: string;
  /** Only requests whose path contains this (case-insensitive), e.g. a VM's name. */
  path?: string;
  status: number;
  retryAfterS?: number;
  code?: string;
  message?: string;
  count?: number;
  percentage?: number;
}

export interface RequestLogEntry {
  seq: number;
  time: string;
  method: string;
  path: string;
  resourceType: string;
  operation: string;
  apiVersion?: string;
  caller?: string;
  callerAppId?: string;
  status: number;
  /** Bytes of the answer's body (absent for HEAD and the Logs endpoints). */
  bytes?: number;
  /** The query string, e.g. `?api-version=...&$skiptoken=...` for a list's next page. */
  query?: string;
}

export interface EmulatedVm {
  id: string;
  name: string;
  vmId: string;
  subscriptionId: string;
  resourceGroup: string;
  location: string;
  vmSize: string;
  priority: string;
  evictionPolicy?: string;
  provisioningState: string;
  powerState: string | null;
  tags: Record<string, string>;
  userData: string | null;
  userDataText: string | null;
  /** What cloud-init on the VM runs (Azure hands userData only to the instance metadata service). */
  customDataText: string | null;
  identity: unknown;
  /** Base URL to use as the VM's instance metadata service (append /metadata/identity/oauth2/token). */
  imdsEndpoint: string;
  timeCreated: string;
}

export interface RoleJson {
  properties?: { roleName: string; description?: string; assignableScopes?: string[]; permissions: { actions?: string[]; notActions?: string[]; dataActions?: string[]; notDataActions?: string[] }[] };
  roleName?: string;
}

export interface OidcIssuerSpec {
  issuer: string;
  discoveryBase?: string;
  caPem?: string;
  clientCertPem?: string;
  clientKeyPem?: string;
  bearerToken?: string;
  jwks?: { keys: unknown[] };
}

export class AzureEmulatorControl {
  constructor(
    readonly endpoint: string,
    private readonly caPem: string,
  ) {}

  static fromCaFile(endpoint: string, caPath: string): AzureEmulatorControl {
    return new AzureEmulatorControl(endpoint, readFileSync(caPath, "utf8"));
  }

  private call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const url = new URL(`/_emulator${path}`, this.endpoint);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        { method, ca: this.caPem, headers: payload ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {}, timeout: 15_000 },
        (res) => {
          let text = "";
          res.on("data", (c: Buffer) => (text += c.toString("utf8")));
          res.on("end", () => {
            if ((res.statusCode ?? 0) >= 300) reject(new Error(`emulator control ${method} ${path}: HTTP ${res.statusCode} ${text}`));
            else resolve((text ? JSON.parse(text) : undefined) as T);
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`emulator control ${method} ${path}: timeout`)));
      req.on("error", reject);
      req.end(payload);
    });
  }

  info(): Promise<EmulatorInfo> {
    return this.call("GET", "/info");
  }
  /** Forgets all Azure state; a default tenant, subscription and Owner principal exist afterwards. */
  reset(seed?: string): Promise<EmulatorInfo> {
    return this.call("POST", "/reset", seed === undefined ? {} : { seed });
  }
  createTenant(o: { id?: string; domain?: string } = {}): Promise<{ id: string; domain: string }> {
    return this.call("POST", "/tenants", o);
  }
  createSubscription(o: { tenantId: string; id?: string; displayName?: string }): Promise<{ id: string; tenantId: string; displayName: string }> {
    return this.call("POST", "/subscriptions", o);
  }
  /** An app registration + service principal. secret: a string, or false for none (default: a generated one). */
  createPrincipal(o: { tenantId?: string; displayName: string; secret?: string | false; federatedCredentials?: FederatedCredentialSpec[]; backdated?: boolean }): Promise<CreatedPrincipal> {
    return this.call("POST", "/principals", o);
  }
  updatePrincipal(o: { objectId?: string; clientId?: string; secrets?: string[]; federatedCredentials?: FederatedCredentialSpec[] }): Promise<{ objectId: string; clientId: string }> {
    return this.call("POST", "/principals/update", o);
  }
  /**
   * Assigns a role directly (no RBAC check, no replication window): by built-in/custom name, ID, or
   * a role JSON. In effect at once (a grant made long ago), unless `propagate`: then, like one made
   * through Resource Manager now, only after the propagation delay (`roleAssignmentDelayMs`).
   */
  assignRole(o: { principalId: string; scope?: string; roleName?: string; roleDefinitionId?: string; role?: RoleJson; propagate?: boolean }): Promise<{ name: string; roleDefinitionId: string }> {
    return this.call("POST", "/role-assignments", o);
  }
  /**
   * Grants a principal exactly the role named `roleName` as written in a product seed file (role
   * JSON blocks in the text), optionally without some actions, at the subscription scope.
   */
  async grantSeedRole(o: { principalId: string; seedFile: string; roleName: string; subscriptionId: string; without?: string[]; scope?: string }): Promise<{ name: string; roleDefinitionId: string; role: RoleJson }> {
    const role = seedRole(o.seedFile, o.roleName);
    const without = new Set((o.without ?? []).map((a) => a.toLowerCase()));
    const props = role.properties!;
    const trimmed: RoleJson = {
      properties: {
        ...props,
        // Named after what it lacks: roles without different actions must not share a name (a
        // custom role of the same name would be one definition, the last grant's).
        roleName: without.size ? `${props.roleName}-without-${createHash("sha256").update([...without].sort().join(",")).digest("hex").slice(0, 8)}` : props.roleName,
        assignableScopes: (props.assignableScopes ?? []).map((s) => s.replace(/<[^>]*SUBSCRIPTION-ID>/i, o.subscriptionId)),
        permissions: props.permissions.map((p) => ({ ...p, actions: (p.actions ?? []).filter((a) => !without.has(a.toLowerCase())), dataActions: (p.dataActions ?? []).filter((a) => !without.has(a.toLowerCase())) })),
      },
    };
    const out = await this.assignRole({ principalId: o.principalId, scope: o.scope ?? `/subscriptions/${o.subscriptionId}`, role: trimmed });
    return { ...out, role: trimmed };
  }
  /**
   * ingestionJitterMs: each ingested batch becomes queryable after the delay plus 0..jitter ms, so
   * batches can overtake one another. dcrIngestionDelayMs: per data collection rule (immutable ID),
   * a delay of its own in place of ingestionDelayMs (null: back to it).
   */
  settings(s: Partial<EmulatorSettings> & { ingestionDelayMs?: number; ingestionJitterMs?: number; dcrIngestionDelayMs?: Record<string, number | null> }): Promise<EmulatorSettings & { ingestionDelayMs: number; ingestionJitterMs: number }> {
    return this.call("POST", "/settings", s);
  }
  addFault(f: FaultSpec): Promise<FaultSpec & { id: string }> {
    return this.call("POST", "/faults", f);
  }
  /** Removes every fault: only for a test that runs alone (see removeFault). */
  clearFaults(): Promise<void> {
    return this.call("DELETE", "/faults");
  }
  faults(): Promise<{ value: Array<FaultSpec & { id: string }> }> {
    return this.call("GET", "/faults");
  }
  /** Removes one fault, leaving those of tests running beside this one. */
  removeFault(id: string): Promise<void> {
    return this.call("DELETE", `/faults/${encodeURIComponent(id)}`);
  }
  /**
   * VM lists lag behind deletions, as ARM's can: a VM whose ID contains `path` (case-insensitive),
   * once deleted, is still listed as it was for `ms`, over a VM made since under its name; a GET
   * finds it gone at once.
   */
  addListLag(l: { path: string; ms: number }): Promise<{ id: string; path: string; ms: number }> {
    return this.call("POST", "/list-lags", l);
  }
  removeListLag(id: string): Promise<void> {
    return this.call("DELETE", `/list-lags/${encodeURIComponent(id)}`);
  }
  /**
   * Deletions that take time, as ARM's of a VM do: a resource whose ID contains `path`
   * (case-insensitive) is gone `ms` after its DELETE was accepted, and listed and read with
   * provisioningState Deleting until then. A delete already under way keeps its time.
   */
  addDeleteLag(l: { path: string; ms: number }): Promise<{ id: string; path: string; ms: number }> {
    return this.call("POST", "/delete-lags", l);
  }
  removeDeleteLag(id: string): Promise<void> {
    return this.call("DELETE", `/delete-lags/${encodeURIComponent(id)}`);
  }
  /** SkuNotAvailable without count also marks the size restricted in Microsoft.Compute/skus. */
  addCapacityError(c: { vmSize: string; location: string; code: "SkuNotAvailable" | "AllocationFailed" | "OperationNotAllowed" | "ZonalAllocationFailed"; count?: number }): Promise<{ id: string }> {
    return this.call("POST", "/capacity", c);
  }
  /** Removes every capacity error: only for a test that runs alone (see removeCapacityError). */
  clearCapacityErrors(): Promise<void> {
    return this.call("DELETE", "/capacity");
  }
  /** Removes one capacity error (and the size's restriction that came with it). */
  removeCapacityError(id: string): Promise<void> {
    return this.call("DELETE", `/capacity/${encodeURIComponent(id)}`);
  }
  async requests(since = 0): Promise<{ value: RequestLogEntry[]; lastSeq: number }> {
    return this.call("GET", `/requests?since=${since}`);
  }
  clearRequests(): Promise<{ lastSeq: number }> {
    return this.call("DELETE", "/requests");
  }
  registerOidcIssuer(i: OidcIssuerSpec): Promise<{ issuer: string }> {
    return this.call("POST", "/oidc-issuers", i);
  }
  /**
   * A place where ManagedIdentityCredential finds identities: set AZURE_POD_IDENTITY_AUTHORITY_HOST
   * to podIdentityAuthorityHost (IMDS protocol), or IDENTITY_ENDPOINT/IDENTITY_HEADER (App Service protocol).
   */
  createManagedIdentityHost(o: { name: string; tenantId?: string; userAssignedIdentityIds?: string[]; systemAssigned?: boolean }): Promise<{
    name: string;
    podIdentityAuthorityHost: string;
    identityEndpoint: string;
    identityHeader: string;
    systemAssigned?: { objectId: string; clientId: string };
  }> {
    return this.call("POST", "/managed-identity-hosts", o);
  }
  /**
   * A Key Vault (Microsoft.KeyVault/vaults, its resource group made when missing) with secrets,
   * written through Resource Manager as the default admin. RBAC permission model unless
   * enableRbacAuthorization is false (then accessPolicies decide). `endpoint` is where the vault's
   * data plane is served (Azure: `vaultUri`); a secret is a string or { value, enabled }.
   */
  createKeyVault(o: {
    resourceGroup: string;
    name: string;
    location?: string;
    subscriptionId?: string;
    tenantId?: string;
    enableRbacAuthorization?: boolean;
    accessPolicies?: { tenantId: string; objectId: string; applicationId?: string; permissions: { secrets?: string[] } }[];
    secrets?: Record<string, string | { value: string; enabled?: boolean }>;
  }): Promise<{ id: string; name: string; vaultUri: string; endpoint: string; tenantId: string; secrets: Record<string, { id: string; version: string }> }> {
    return this.call("POST", "/key-vaults", o);
  }
  async listVms(): Promise<EmulatedVm[]> {
    return (await this.call<{ value: EmulatedVm[] }>("GET", "/vms")).value;
  }
  /** As if the VM's OS shut down ("stopped"), it was deallocated/started behind our back, or Azure evicted it ("evicted"). */
  setVmPowerState(id: string, state: "stopped" | "deallocated" | "running" | "evicted"): Promise<{ id: string; powerState: string | null; deleted?: boolean }> {
    return this.call("POST", "/vms/power", { id, state });
  }
}

/** Reads a role JSON (by roleName) from a seed document; tolerates trailing commas as the documents have them. */
export function seedRole(seedFile: string, roleName: string): RoleJson {
  const text = readFileSync(seedFile, "utf8");
  for (const obj of jsonObjects(text)) {
    const r = obj as RoleJson;
    if (r.properties?.roleName === roleName) return r;
  }
  throw new Error(`no role named ${roleName} in ${seedFile}`);
}

function jsonObjects(text: string): unknown[] {
  const out: unknown[] = [];
  let i = 0;
  while ((i = text.indexOf("{", i)) >= 0) {
    let depth = 0;
    let inStr = false;
    let j = i;
    for (; j < text.length; j++) {
      const ch = text[j];
      if (inStr) {
        if (ch === "\\") j++;
        else if (ch === '"') inStr = false;
      } else if (ch === '"') inStr = true;
      else if (ch === "{") depth++;
      else if (ch === "}") {
        depth--;
        if (depth === 0) break;
      }
    }
    const candidate = text.slice(i, j + 1).replace(/,(\s*[\]}])/g, "$1");
    try {
      out.push(JSON.parse(candidate));
      i = j + 1;
    } catch {
      i += 1;
    }
  }
  return out;
}
