/**
 * Azure credentials and SDK clients for one CE, a cache of them keyed by a fingerprint of the
 * credentials (a rotated Secret gives new clients at the next reconcile), and the one place where
 * Azure SDK errors become CloudErrors (`azCall`).
 *
 * Credentials:
 * - Secret keys `tenantId`, `clientId`, `clientSecret` (Entra client secret), optional
 *   `subscriptionId` and `storageAccount`.
 * - No Secret: the operator's ambient identity, chosen explicitly by the operator's environment
 *   (VMFORGE_AZURE_AMBIENT_IDENTITY=workload|managed), never by a silent chain that hides which
 *   one failed. `workload` is AKS workload identity (AZURE_TENANT_ID, AZURE_CLIENT_ID,
 *   AZURE_FEDERATED_TOKEN_FILE as the AKS webhook sets them); `managed` is a managed identity,
 *   user-assigned when VMFORGE_AZURE_MANAGED_IDENTITY_CLIENT_ID is set (preferred, seed 004),
 *   else system-assigned.
 *
 * Endpoints (tests and the sandbox point them at the emulator): VMFORGE_AZURE_ARM_ENDPOINT,
 * VMFORGE_AZURE_AUTHORITY_HOST, VMFORGE_AZURE_LOGS_ENDPOINT, VMFORGE_AZURE_BLOB_ENDPOINT (with
 * `{account}` in it). The CA: NODE_EXTRA_CA_CERTS for the whole process, or VMFORGE_AZURE_CA_FILE
 * for the Azure clients only. Values never appear in errors or logs.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { Agent } from "node:https";
import { monotonicNow } from "../../engine/clock.js";
import { MAX_RETRY_AFTER_MS } from "../../engine/controller.js";
import {
  AuthenticationError,
  ClientSecretCredential,
  CredentialUnavailableError,
  AzureCliCredential,
  ManagedIdentityCredential,
  WorkloadIdentityCredential,
  type TokenCredential,
} from "@azure/identity";
import type { PipelinePolicy } from "@azure/core-rest-pipeline";
import { errorOutcome, observeCloudCall, type CloudCallOutcome } from "../call-metrics.js";
import { ResourceManagementClient } from "@azure/arm-resources";
import { ManagedServiceIdentityClient } from "@azure/arm-msi";
import { AuthorizationManagementClient } from "@azure/arm-authorization";
import { OperationalInsightsManagementClient } from "@azure/arm-operationalinsights";
import { MonitorClient } from "@azure/arm-monitor";
import { NetworkManagementClient } from "@azure/arm-network";
import { ComputeManagementClient } from "@azure/arm-compute";
import { SubscriptionClient } from "@azure/arm-subscriptions";
import { LogsQueryClient } from "@azure/monitor-query-logs";
import { BlobClient } from "@azure/storage-blob";
import { CloudError, type ResolvedCredentials } from "../provider.js";
import type { AzureCallPhase } from "./policy.js";

export const ENV_ARM_ENDPOINT = "VMFORGE_AZURE_ARM_ENDPOINT";
export const ENV_AUTHORITY_HOST = "VMFORGE_AZURE_AUTHORITY_HOST";
export const ENV_LOGS_ENDPOINT = "VMFORGE_AZURE_LOGS_ENDPOINT";
export const ENV_BLOB_ENDPOINT = "VMFORGE_AZURE_BLOB_ENDPOINT";
export const ENV_CA_FILE = "VMFORGE_AZURE_CA_FILE";
export const ENV_AMBIENT = "VMFORGE_AZURE_AMBIENT_IDENTITY";
export const ENV_MI_CLIENT_ID = "VMFORGE_AZURE_MANAGED_IDENTITY_CLIENT_ID";
export const ENV_LRO_POLL = "VMFORGE_AZURE_LRO_POLL_MS";

export const ARM_SCOPE = "https://management.azure.com/.default";
export const LOGS_SCOPE = "https://api.loganalytics.io/.default";

export interface AzureEndpoints {
  /** Resource Manager base URL (default Azure's public cloud). */
  arm?: string;
  /** Entra authority host (default Azure's public cloud). */
  authorityHost?: string;
  /** Log Analytics query API base URL, e.g. https://api.loganalytics.io/v1. */
  logs?: string;
  /** Blob endpoint template; `{account}` is replaced by the storage account. */
  blob?: string;
  /** PEM CA bundle trusted by the Azure clients in addition to Node's. */
  ca?: string;
  /**
   * Explicit ambient identity for CEs without a Secret: the operator's workload or managed
   * identity; "caller" is the kubectl plugin's user's own identity (AZURE_TENANT_ID, AZURE_CLIENT_ID
   * and AZURE_CLIENT_SECRET in the environment when all three are set, else the Azure CLI login).
   */
  ambient?: "workload" | "managed" | "caller";
  /** Client ID of the user-assigned managed identity for `ambient: managed`. */
  managedIdentityClientId?: string;
  /** Interval of long-running operation polls (default: what Azure's Retry-After says, else 2 s). */
  lroPollMs?: number;
  /** Workload identity settings (default: the AKS webhook's environment variables). */
  workload?: { tenantId?: string; clientId?: string; tokenFilePath?: string };
}

export function endpointsFromEnv(env: NodeJS.ProcessEnv = process.env): AzureEndpoints {
  const v = (k: string): string | undefined => {
    const s = env[k]?.trim();
    return s ? s : undefined;
  };
  const out: AzureEndpoints = {};
  const arm = v(ENV_ARM_ENDPOINT);
  if (arm) out.arm = arm.replace(/\/+$/, "");
  const auth = v(ENV_AUTHORITY_HOST);
  if (auth) out.authorityHost = auth;
  const logs = v(ENV_LOGS_ENDPOINT);
  if (logs) out.logs = logs;
  const blob = v(ENV_BLOB_ENDPOINT);
  if (blob) out.blob = blob;
  const caFile = v(ENV_CA_FILE);
  if (caFile) out.ca = readFileSync(caFile, "utf8");
  const ambient = v(ENV_AMBIENT);
  if (ambient === "workload" || ambient === "managed") out.ambient = ambient;
  else if (ambient !== undefined) throw new Error(`${ENV_AMBIENT} must be "workload" or "managed", got "${ambient}"`);
  const mi = v(ENV_MI_CLIENT_ID);
  if (mi) out.managedIdentityClientId = mi;
  const poll = v(ENV_LRO_POLL);
  if (poll && /^\d+$/.test(poll)) out.lroPollMs = Number(poll);
  const wl: NonNullable<AzureEndpoints["workload"]> = {};
  if (v("AZURE_TENANT_ID")) wl.tenantId = v("AZURE_TENANT_ID")!;
  if (v("AZURE_CLIENT_ID")) wl.clientId = v("AZURE_CLIENT_ID")!;
  if (v("AZURE_FEDERATED_TOKEN_FILE")) wl.tokenFilePath = v("AZURE_FEDERATED_TOKEN_FILE")!;
  out.workload = wl;
  return out;
}

/** What a CE's credentials say, checked. */
export interface AzureIdentity {
  kind: "secret" | "workload" | "managed" | "caller";
  /** For messages: the Secret (ns/name) or the ambient identity's description. Never a value. */
  label: string;
  tenantId?: string;
  clientId?: string;
  clientSecret?: string;
  /** From the Secret, used when spec.azure.subscriptionId is unset. */
  subscriptionId?: string;
  storageAccount?: string;
}

const GUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** Reads the Secret (or the ambient choice); throws Terminal InvalidCredentials naming the Secret and key. */
export function parseAzureCredentials(creds: ResolvedCredentials, ep: AzureEndpoints): AzureIdentity {
  if (creds.source === "ambient") {
    if (ep.ambient === "workload") {
      const w = ep.workload ?? {};
      for (const [k, val] of [["AZURE_TENANT_ID", w.tenantId], ["AZURE_CLIENT_ID", w.clientId], ["AZURE_FEDERATED_TOKEN_FILE", w.tokenFilePath]] as const) {
        if (!val) {
          throw CloudError.terminal("InvalidCredentials", `the operator's workload identity is selected (${ENV_AMBIENT}=workload) but ${k} is not set in its environment`);
        }
      }
      return { kind: "workload", label: "the operator's workload identity", tenantId: w.tenantId!, clientId: w.clientId! };
    }
    if (ep.ambient === "caller") {
      const tenantId = process.env.AZURE_TENANT_ID?.trim();
      const clientId = process.env.AZURE_CLIENT_ID?.trim();
      const clientSecret = process.env.AZURE_CLIENT_SECRET;
      if (tenantId && clientId && clientSecret) return { kind: "caller", label: `your Azure identity (AZURE_CLIENT_ID ${clientId})`, tenantId, clientId, clientSecret };
      return { kind: "caller", label: "your Azure CLI login (az login)" };
    }
    if (ep.ambient === "managed") {
      const id: AzureIdentity = {
        kind: "managed",
        label: ep.managedIdentityClientId ? `the operator's user-assigned managed identity (client ID ${ep.managedIdentityClientId})` : "the operator's system-assigned managed identity",
      };
      if (ep.managedIdentityClientId) id.clientId = ep.managedIdentityClientId;
      return id;
    }
    throw CloudError.terminal(
      "InvalidCredentials",
      `spec.credentials.secretRef is not set and the operator has no ambient Azure identity selected: name a Secret with tenantId, clientId and clientSecret, or start the operator with ${ENV_AMBIENT}=workload or managed`,
    );
  }
  const where = creds.secretName ?? "(unnamed)";
  const get = (key: string): string | undefined => {
    const val = creds.data[key];
    return typeof val === "string" && val.trim() !== "" ? val.trim() : undefined;
  };
  const need = (key: string): string => {
    const val = get(key);
    if (val === undefined) throw CloudError.terminal("InvalidCredentials", `Secret ${where} has no key "${key}" (or it is empty)`);
    return val;
  };
  const tenantId = need("tenantId");
  const clientId = need("clientId");
  const clientSecret = need("clientSecret");
  if (!GUID.test(clientId)) throw CloudError.terminal("InvalidCredentials", `Secret ${where} key "clientId" is not a GUID (the application's client ID)`);
  const out: AzureIdentity = { kind: "secret", label: `Secret ${where}`, tenantId, clientId, clientSecret };
  const sub = get("subscriptionId");
  if (sub !== undefined) {
    if (!GUID.test(sub)) throw CloudError.terminal("InvalidCredentials", `Secret ${where} key "subscriptionId" is not a GUID`);
    out.subscriptionId = sub;
  }
  const sa = get("storageAccount");
  if (sa !== undefined) out.storageAccount = sa;
  return out;
}

/** Changes whenever the credentials change, without keeping the values. */
export function identityFingerprint(id: AzureIdentity): string {
  return createHash("sha256").update(JSON.stringify([id.kind, id.tenantId, id.clientId, id.clientSecret])).digest("hex");
}

/**
 * Service and operation of an Azure request for the cloud call metrics, from its method and URL
 * (policies see HTTP requests, not SDK method names), without resource names so the labels stay
 * few: `/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm` PUT is
 * Compute `virtualMachines/write`; GET is `/read` (one resource or a list), DELETE `/delete`, a
 * POST action its own name (`storageAccounts/listKeys`); the last provider namespace of a nested
 * scope counts (a role assignment on a container is Authorization `roleAssignments/write`).
 * Resource groups and subscriptions are Resources; Log Analytics queries LogAnalytics `query`;
 * Entra token requests EntraID `token`.
 */
export function azureOperationOf(method: string, url: string): { service: string; operation: string } {
  let path: string;
  try {
    path = new URL(url).pathname;
  } catch {
    return { service: "Unknown", operation: method.toUpperCase() };
  }
  const m = method.toUpperCase();
  const verb = m === "GET" || m === "HEAD" ? "read" : m === "DELETE" ? "delete" : m === "POST" ? "action" : "write";
  const parts = path.split("/").filter(Boolean).map((p) => decodeURIComponent(p));
  if (/\/oauth2\/(v2\.0\/)?token$/i.test(path)) return { service: "EntraID", operation: "token" };
  if (/\/workspaces\/[^/]+\/query$/i.test(path) && !/\/providers\//i.test(path)) return { service: "LogAnalytics", operation: "query" };
  const at = parts.map((p) => p.toLowerCase()).lastIndexOf("providers");
  let service: string;
  let rest: string[];
  if (at >= 0 && parts[at + 1] !== undefined) {
    service = parts[at + 1]!.replace(/^Microsoft\./i, "");
    rest = parts.slice(at + 2);
  } else if (parts[0]?.toLowerCase() === "subscriptions") {
    service = "Resources";
    rest = parts.length <= 2 ? ["subscriptions", ...parts.slice(1)] : parts.slice(2);
  } else {
    return { service: "Unknown", operation: m };
  }
  // Types sit at even positions (type/name/type/name...); an odd trailing segment of a POST is its action.
  const action = m === "POST" && rest.length % 2 === 1 ? rest[rest.length - 1] : undefined;
  const types = rest.filter((_, i) => i % 2 === 0 && !(action !== undefined && i === rest.length - 1));
  const operation = `${types.join("/") || "provider"}/${action ?? verb}`;
  return { service, operation };
}

/**
 * Reports every Azure call to the cloud call metrics (src/cloud/call-metrics.ts), as the AWS
 * clients' middleware does: one report per call after the SDK's own retries (a perCall policy),
 * outcome success, throttled (HTTP 429 as the last answer) or error (another 4xx/5xx, or no
 * answer), with the time it took including those retries.
 */
export function callMetricsPolicy(): PipelinePolicy {
  return {
    name: "vmforgeCallMetrics",
    async sendRequest(request, next) {
      const started = performance.now();
      const { service, operation } = azureOperationOf(request.method, request.url);
      const report = (outcome: CloudCallOutcome): void =>
        observeCloudCall({ provider: "azure", service, operation, outcome, seconds: (performance.now() - started) / 1000 });
      try {
        const res = await next(request);
        report(res.status === 429 ? "throttled" : res.status >= 400 ? "error" : "success");
        return res;
      } catch (e) {
        report(errorOutcome(e));
        throw e;
      }
    },
  };
}

/** A pipeline policy that makes the Azure clients trust an extra CA (without touching Node's global agent). */
function caPolicy(ca: string): PipelinePolicy {
  const agent = new Agent({ ca, keepAlive: true });
  return {
    name: "vmforgeExtraCa",
    sendRequest: async (req, next) => {
      if (req.url.startsWith("https:") && req.agent === undefined) req.agent = agent;
      return next(req);
    },
  };
}

export function tokenCredential(id: AzureIdentity, ep: AzureEndpoints): TokenCredential {
  const policies = [
    { policy: callMetricsPolicy(), position: "perCall" as const },
    ...(ep.ca ? [{ policy: caPolicy(ep.ca), position: "perCall" as const }] : []),
  ];
  const common = {
    ...(ep.authorityHost ? { authorityHost: ep.authorityHost, disableInstanceDiscovery: true } : {}),
    additionalPolicies: policies,
  };
  switch (id.kind) {
    case "secret":
      return new ClientSecretCredential(id.tenantId!, id.clientId!, id.clientSecret!, common);
    case "workload":
      return new WorkloadIdentityCredential({ ...common, tenantId: id.tenantId!, clientId: id.clientId!, tokenFilePath: ep.workload!.tokenFilePath! });
    case "managed":
      return id.clientId ? new ManagedIdentityCredential({ clientId: id.clientId, additionalPolicies: policies }) : new ManagedIdentityCredential({ additionalPolicies: policies });
    case "caller":
      return id.clientSecret ? new ClientSecretCredential(id.tenantId!, id.clientId!, id.clientSecret, common) : new AzureCliCredential({ ...(id.tenantId ? { tenantId: id.tenantId } : {}) });
  }
}

/** Marks token failures so azCall reports them as InvalidCredentials (not as a failed ARM call). */
const TOKEN_STAGE = Symbol.for("vmforge.azure.tokenStage");

function markingCredential(inner: TokenCredential): TokenCredential {
  return {
    getToken: async (scopes, options) => {
      try {
        return await inner.getToken(scopes, options);
      } catch (e) {
        if (e !== null && typeof e === "object") (e as Record<symbol, unknown>)[TOKEN_STAGE] = true;
        throw e;
      }
    },
  };
}

export interface AzureClients {
  readonly subscriptionId: string;
  readonly identity: AzureIdentity;
  readonly credential: TokenCredential;
  readonly endpoints: AzureEndpoints;
  readonly resources: ResourceManagementClient;
  readonly msi: ManagedServiceIdentityClient;
  readonly authorization: AuthorizationManagementClient;
  readonly logAnalytics: OperationalInsightsManagementClient;
  readonly monitor: MonitorClient;
  readonly network: NetworkManagementClient;
  readonly compute: ComputeManagementClient;
  readonly subscriptions: SubscriptionClient;
  readonly logsQuery: LogsQueryClient;
  /** LRO poll options for begin-style calls. */
  readonly lro: { updateIntervalInMs?: number };
  /** Reads a small blob as text with the operator's identity; undefined when it does not exist. */
  readonly blobs: { read(account: string, container: string, path: string, signal?: AbortSignal): Promise<string | undefined> };
  /** What Azure asked these credentials to hold off (Retry-After of a 429), shared by all their calls. */
  readonly throttle?: ThrottleGate;
}

/**
 * Remembers a 429's Retry-After past the SDK's own retries, for every caller of one set of
 * clients (one identity and subscription): the next call of the same kind — same resource
 * provider, and read, write or delete, roughly how Resource Manager and the providers count —
 * is not sent before that time, whichever reconcile makes it (an orphan sweep whose failure is
 * only logged, then a deletion a moment later, must not call again at once).
 */
export class ThrottleGate {
  private readonly until = new Map<string, number>();

  // A hold is a duration in this process: the monotonic clock (a step of the wall clock must not stretch it).
  constructor(private readonly now: () => number = monotonicNow) {}

  static kind(action: string): string {
    const ns = (action.split("/")[0] ?? "").toLowerCase();
    const verb = /\/read$/i.test(action) ? "read" : /\/delete$/i.test(action) ? "delete" : "write";
    return `${ns}:${verb}`;
  }

  /** The kind of a Resource Manager request (undefined for Entra and Log Analytics queries). */
  static kindOfRequest(method: string, url: string): string | undefined {
    const { service, operation } = azureOperationOf(method, url);
    if (service === "Unknown" || service === "EntraID" || service === "LogAnalytics") return undefined;
    return ThrottleGate.kind(`Microsoft.${service}/${operation}`);
  }

  /** Milliseconds calls of this kind must still wait (0 = go). */
  heldFor(action: string): number {
    const k = ThrottleGate.kind(action);
    const t = this.until.get(k);
    if (t === undefined) return 0;
    const left = t - this.now();
    if (left > 0) return Math.ceil(left);
    this.until.delete(k);
    return 0;
  }

  hold(action: string, ms: number): void {
    this.holdKind(ThrottleGate.kind(action), ms);
  }

  /** A 429 answered to one Resource Manager request; false (nothing held) for another request. */
  holdRequest(method: string, url: string, ms: number): boolean {
    const k = ThrottleGate.kindOfRequest(method, url);
    if (k !== undefined) this.holdKind(k, ms);
    return k !== undefined;
  }

  // At most the engine's cap on any wait (a bogus date must not stop a provider's calls for days).
  private holdKind(k: string, ms: number): void {
    const t = this.now() + Math.min(ms, MAX_RETRY_AFTER_MS);
    if ((this.until.get(k) ?? 0) < t) this.until.set(k, t);
  }
}

/**
 * Tells the gate of every 429 with a Retry-After as it comes (a policy run for each try): while
 * the SDK waits out the hint to retry its own request, other callers of the same clients hold
 * off too, instead of learning of it only once the SDK has given up.
 */
export function throttleMemoryPolicy(gate: ThrottleGate): PipelinePolicy {
  return {
    name: "vmforgeThrottleMemory",
    async sendRequest(request, next) {
      const res = await next(request);
      if (res.status === 429) {
        const ms = retryAfterFrom((n) => res.headers.get(n));
        if (ms !== undefined) gate.holdRequest(request.method, request.url, ms);
      }
      return res;
    },
  };
}

/** The blob endpoint of a storage account: VMFORGE_AZURE_BLOB_ENDPOINT with {account}, else Azure's. */
export function blobEndpoint(ep: AzureEndpoints, account: string): string {
  return (ep.blob ? ep.blob.replace("{account}", account) : `https://${account}.blob.core.windows.net`).replace(/\/+$/, "");
}

export function createAzureClients(id: AzureIdentity, subscriptionId: string, ep: AzureEndpoints): AzureClients {
  const credential = markingCredential(tokenCredential(id, ep));
  const throttle = new ThrottleGate();
  const policies = [
    { policy: callMetricsPolicy(), position: "perCall" as const },
    ...(ep.ca ? [{ policy: caPolicy(ep.ca), position: "perCall" as const }] : []),
    { policy: throttleMemoryPolicy(throttle), position: "perRetry" as const },
  ];
  const modern = {
    ...(ep.arm ? { endpoint: ep.arm } : {}),
    credentials: { scopes: [ARM_SCOPE] },
    additionalPolicies: policies,
    retryOptions: { maxRetries: 2 },
  };
  // The older-style clients (msi, authorization, subscriptions) take the host as $host and endpoint.
  const classic = {
    ...(ep.arm ? { endpoint: ep.arm, $host: ep.arm } : {}),
    credentialScopes: [ARM_SCOPE],
    additionalPolicies: policies,
    retryOptions: { maxRetries: 2 },
  };
  const lro = ep.lroPollMs !== undefined ? { updateIntervalInMs: ep.lroPollMs } : {};
  return {
    subscriptionId,
    identity: id,
    credential,
    endpoints: ep,
    resources: new ResourceManagementClient(credential, subscriptionId, modern),
    msi: new ManagedServiceIdentityClient(credential, subscriptionId, classic),
    authorization: new AuthorizationManagementClient(credential, subscriptionId, classic),
    logAnalytics: new OperationalInsightsManagementClient(credential, subscriptionId, modern),
    monitor: new MonitorClient(credential, subscriptionId, modern),
    network: new NetworkManagementClient(credential, subscriptionId, modern),
    compute: new ComputeManagementClient(credential, subscriptionId, modern),
    subscriptions: new SubscriptionClient(credential, classic),
    logsQuery: new LogsQueryClient(credential, {
      ...(ep.logs ? { endpoint: ep.logs } : {}),
      additionalPolicies: policies,
      retryOptions: { maxRetries: 2 },
    }),
    lro,
    throttle,
    blobs: {
      read: async (account, container, path, signal) => {
        const url = `${blobEndpoint(ep, account)}/${container}/${path.split("/").map(encodeURIComponent).join("/")}`;
        // The CA for blob storage comes from NODE_EXTRA_CA_CERTS (its options take no extra policies).
        const blob = new BlobClient(url, credential, { retryOptions: { maxTries: 2 } });
        // Storage clients take no extra pipeline policies: the call is reported here.
        const started = performance.now();
        const report = (outcome: CloudCallOutcome): void =>
          observeCloudCall({ provider: "azure", service: "Storage", operation: "blobs/read", outcome, seconds: (performance.now() - started) / 1000 });
        try {
          const buf = await blob.downloadToBuffer(0, undefined, signal ? { abortSignal: signal } : {});
          report("success");
          return buf.toString("utf8");
        } catch (e) {
          report(errorOutcome(e));
          if (statusOf(e) === 404) return undefined;
          throw e;
        }
      },
    },
  };
}

/** Keeps one client set per credentials + subscription (bounded, oldest evicted). */
export class AzureClientCache {
  private readonly map = new Map<string, AzureClients>();
  constructor(
    private readonly factory: (id: AzureIdentity, subscriptionId: string, ep: AzureEndpoints) => AzureClients = createAzureClients,
    private readonly max = 32,
  ) {}

  get(id: AzureIdentity, subscriptionId: string, ep: AzureEndpoints): AzureClients {
    const key = `${identityFingerprint(id)}/${subscriptionId}`;
    const hit = this.map.get(key);
    if (hit) {
      this.map.delete(key);
      this.map.set(key, hit);
      return hit;
    }
    const c = this.factory(id, subscriptionId, ep);
    this.map.set(key, c);
    while (this.map.size > this.max) this.map.delete(this.map.keys().next().value!);
    return c;
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

interface RestLike {
  statusCode?: number;
  code?: string;
  message?: string;
  response?: { headers?: { get?: (n: string) => string | undefined } };
  details?: { error?: { code?: string; message?: string } } | unknown;
}

/** Azure's error code of a failed call, when it says one. */
export function azureErrorCode(e: unknown): string | undefined {
  if (e === null || typeof e !== "object") return undefined;
  const r = e as RestLike;
  const d = r.details as { error?: { code?: string } } | undefined;
  return d?.error?.code ?? r.code;
}

export function statusOf(e: unknown): number | undefined {
  return e !== null && typeof e === "object" ? (e as RestLike).statusCode : undefined;
}

export function isNotFound(e: unknown): boolean {
  const code = azureErrorCode(e);
  return statusOf(e) === 404 || code === "ResourceNotFound" || code === "ResourceGroupNotFound" || code === "NotFound" || code === "RoleDefinitionDoesNotExist" || code === "RoleAssignmentNotFound";
}

export function isAuthorizationFailed(e: unknown): boolean {
  const code = azureErrorCode(e);
  return statusOf(e) === 403 || code === "AuthorizationFailed" || code === "LinkedAuthorizationFailed";
}

function retryAfterMs(e: unknown): number | undefined {
  const headers = (e as RestLike).response?.headers;
  return headers?.get ? retryAfterFrom((n) => headers.get!(n)) : undefined;
}

/** A response's wait hint in ms: retry-after-ms, x-ms-retry-after-ms, or Retry-After (seconds or a date). */
function retryAfterFrom(get: (name: string) => string | undefined): number | undefined {
  for (const name of ["retry-after-ms", "x-ms-retry-after-ms"]) {
    const ms = Number(get(name) ?? NaN);
    if (Number.isFinite(ms)) return Math.max(0, ms);
  }
  const h = get("retry-after");
  if (h === undefined) return undefined;
  const s = Number(h);
  if (Number.isFinite(s)) return Math.max(0, s * 1000);
  const t = Date.parse(h);
  return Number.isFinite(t) ? Math.max(0, t - Date.now()) : undefined;
}

const CAPACITY_CODES = new Set(["SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed", "OverconstrainedAllocationRequest", "QuotaExceeded"]);

/** Azure error codes that mean "no capacity or quota for this size here now" (waiting may help). */
export function isCapacityCode(code: string): boolean {
  return CAPACITY_CODES.has(code);
}

function messageOf(e: unknown): string {
  const r = e as RestLike;
  const d = r.details as { error?: { message?: string } } | undefined;
  const m = d?.error?.message ?? r.message ?? String(e);
  // Never echo anything that looks like a secret back; Azure's messages do not contain ours, but be safe.
  return m.length > 600 ? `${m.slice(0, 599)}…` : m;
}

/** Turns an Azure SDK failure of `action` into a CloudError. */
export function mapAzureError(e: unknown, action: string, who: string, ambient = false): CloudError {
  // `who` only appears where the reconciler does not already name the credentials: it names a
  // Secret, but of an ambient identity it only knows that it is ambient, so that one is named here.
  if (e instanceof CloudError) return e;
  if (e !== null && typeof e === "object" && ((e as Record<symbol, unknown>)[TOKEN_STAGE] || e instanceof AuthenticationError || e instanceof CredentialUnavailableError)) {
    const status = (e as { statusCode?: number }).statusCode;
    const text = (e as Error).message ?? "";
    // Entra unreachable or its metadata unreadable: a blip or a wrong authority host; try again.
    const unreachable = /endpoints_resolution_error|ECONNREFUSED|ENOTFOUND|ETIMEDOUT|ECONNRESET|network/i.test(text) && !/AADSTS/.test(text);
    // Entra's own passing trouble (it carries an AADSTS code too): try again.
    const transient = /temporarily_unavailable|AADSTS90033\b/.test(text) || (status !== undefined && (status >= 500 || status === 429));
    // Entra answers 400/401 for a wrong secret, unknown client or tenant: fixing the credentials is the only way on.
    const rejected = !transient && /AADSTS\d+|invalid_client|unauthorized_client|invalid_grant|invalid_request|invalid_scope/.test(text);
    if (rejected || (!unreachable && !transient && (e instanceof CredentialUnavailableError || status === 400 || status === 401 || (e instanceof AuthenticationError && status !== undefined && status < 500)))) {
      const first = (e as Error).message.split("\n")[0] ?? "";
      const aad = /AADSTS\d+/.exec((e as Error).message)?.[0];
      // The reconciler names the Secret (or the ambient identity) in front of this message.
      return CloudError.terminal("InvalidCredentials", `${ambient ? `${who}: ` : ""}rejected by Entra ID${aad ? ` (${aad})` : ""}: ${first.slice(0, 300)}`, e);
    }
    return CloudError.retryable("TokenUnavailable", `could not get a token for ${who}: ${(e as Error).message.slice(0, 300)}`, undefined, e);
  }
  const status = statusOf(e);
  const code = azureErrorCode(e) ?? "";
  const msg = messageOf(e);
  // An image that does not exist is the spec's fault, not a missing resource to create.
  if (code === "PlatformImageNotFound" || code === "ImageNotFound" || code === "InvalidImageReference") {
    return CloudError.terminal("ImageNotFound", `spec.azure.image: ${msg}`, e);
  }
  if (isNotFound(e)) return new CloudError("NotFound", code || "NotFound", `${action}: ${msg}`, { cause: e });
  if (status === 429 || code === "TooManyRequests" || code === "RetryableError") {
    return CloudError.retryable("Throttled", `${action}: Azure throttled the request (${msg})`, retryAfterMs(e) ?? 5_000, e);
  }
  if (status === 401 || code === "InvalidAuthenticationToken" || code === "InvalidAuthenticationTokenTenant") {
    return CloudError.terminal("InvalidCredentials", `Resource Manager refused the token: ${msg}`, e);
  }
  if (isAuthorizationFailed(e)) {
    // Azure names the action it refused; it can differ from the call's own (the final GET of a
    // long-running create needs read): name what Azure refused.
    const refused = /perform action '([^']+)'/.exec(msg)?.[1];
    const missing = refused && refused.toLowerCase() !== action.toLowerCase() ? `${refused} (for ${action})` : action;
    return CloudError.terminal("AccessDenied", `missing permission ${missing}: ${msg}`, e);
  }
  if (code === "PrincipalNotFound") return CloudError.retryable("PrincipalNotFound", `${action}: ${msg}`, 5_000, e);
  // Capacity or quota: the Run waits (Pending, with this reason) and tries again with backoff.
  // OperationNotAllowed is a quota refusal only when it says so; otherwise it is a conflict.
  if (CAPACITY_CODES.has(code)) return CloudError.capacity(code, `${action}: ${msg}`, e);
  if (code === "OperationNotAllowed" && /quota/i.test(msg)) return CloudError.capacity("QuotaExceeded", `${action}: ${msg}`, e);
  if (status !== undefined && (status >= 500 || status === 408)) return CloudError.retryable(code || `Http${status}`, `${action}: ${msg}`, retryAfterMs(e), e);
  if (status === 409 && code === "RoleDefinitionHasAssignments") {
    // Deleting a role definition right after its assignments: Azure's authorization caches hold
    // a deleted assignment for a while (minutes at worst), and refuse until they drop it.
    return CloudError.retryable(code, `${action}: ${msg} (role assignments deleted a moment ago still count until Azure drops them from its caches; tried again)`, 5_000, e);
  }
  if (status === 409 && (code === "Conflict" || code === "AnotherOperationInProgress" || code === "OperationNotAllowed")) {
    return CloudError.retryable(code, `${action}: ${msg}`, 5_000, e);
  }
  if (status !== undefined && status >= 400) return CloudError.terminal(code || "InvalidRequest", `${action}: ${msg}`, e);
  // No status: a network failure or a bug in between; try again.
  return CloudError.retryable("AzureUnavailable", `${action}: ${msg}`, undefined, e);
}

/**
 * Runs one Azure call. `phase` and `action` name the role permission the call needs (a unit test
 * checks them against the seed's roles); failures become CloudErrors.
 */
export async function azCall<T>(clients: Pick<AzureClients, "identity" | "throttle">, phase: AzureCallPhase, action: string, fn: () => Promise<T>): Promise<T> {
  void phase;
  const held = clients.throttle?.heldFor(action) ?? 0;
  if (held > 0) {
    // Not sent: the caller retries after the hint (the work queue holds its key until then).
    throw CloudError.retryable("Throttled", `${action}: not sent, Azure asked these credentials to wait ${Math.ceil(held / 1000)} s more (Retry-After)`, held);
  }
  try {
    return await fn();
  } catch (e) {
    const err = mapAzureError(e, action, clients.identity.label, clients.identity.kind !== "secret");
    if (err.reason === "Throttled" && err.retryAfterMs) {
      // Keyed by the request Azure refused when it is a Resource Manager one (a long-running
      // operation's status poll is a read, whatever the call), else by the call's action.
      const req = (e as { request?: { method?: string; url?: string } } | null)?.request;
      const gate = clients.throttle;
      if (gate && !(req?.method && req.url && gate.holdRequest(req.method, req.url, err.retryAfterMs))) gate.hold(action, err.retryAfterMs);
    }
    throw err;
  }
}

/** Like azCall, but a 404 is `undefined`. */
export async function azGet<T>(clients: Pick<AzureClients, "identity" | "throttle">, phase: AzureCallPhase, action: string, fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await azCall(clients, phase, action, fn);
  } catch (e) {
    if (e instanceof CloudError && e.kind === "NotFound") return undefined;
    throw e;
  }
}

/** Like azCall, but a 404 is done (deletes). */
export async function azDelete(clients: Pick<AzureClients, "identity" | "throttle">, phase: AzureCallPhase, action: string, fn: () => Promise<unknown>): Promise<boolean> {
  try {
    await azCall(clients, phase, action, fn);
    return true;
  } catch (e) {
    if (e instanceof CloudError && e.kind === "NotFound") return false;
    throw e;
  }
}
