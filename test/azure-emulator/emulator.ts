/* eslint-disable @typescript-eslint/no-explicit-any */
// The emulator: one HTTPS server answering Entra ID, Resource Manager, managed-identity endpoints,
// the Log Analytics data plane (test/azure-emulator/logs, ) and the test controls
// under /_emulator/.
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { Arm, type Stored } from "./arm/framework.js";
import { Catalog } from "./arm/catalog.js";
import { WorkspaceGraveyard } from "./arm/monitor.js";
import { ArmRouter, type RouteInfo } from "./arm/router.js";
import { allTypes, controlVm, listVmsForControl, vmHost, type VmPowerControl } from "./arm/types.js";
import { Entra, type Caller, type ManagedIdentityHost, type OidcIssuer } from "./entra.js";
import { TokenSigner } from "./jwt.js";
import { authorizationFailedMessage, BUILT_IN_ROLES, normPermission, Rbac } from "./rbac.js";
import { defaultSettings, Directory, type CapacityFault, type Fault, type Principal, type RequestLogEntry, type Settings } from "./state.js";
import { createLogsPlane, type LogsHost, type LogsPlane } from "./logs/index.js";
import { KEY_VAULT_PATH_PREFIX, keyVaultRequest, type KeyVaultHost } from "./keyvault.js";
import { findVault, secretVersions, VAULT_SECRET_TYPE } from "./arm/keyvault.js";
import { ArmError, DetIds, EntraError, isObject, lc, sendJson, TextBody, trimSlash } from "./util.js";

export type { LogsHost, LogsPlane };

export interface EmulatorOptions {
  seed?: string;
  host?: string;
  port?: number;
  tls: { cert: string | Buffer; key: string | Buffer };
  /** Initial ingestion delay of the logs plane, ms. */
  ingestionDelayMs?: number;
  log?: (line: string) => void;
}

/** The default tenant, subscription and an Owner principal that exist after every reset. */
export interface EmulatorInfo {
  endpoint: string;
  tenantId: string;
  subscriptionId: string;
  admin: { clientId: string; clientSecret: string; objectId: string };
  settings: Settings;
}

const ARM_AUDIENCES = new Set(["https://management.azure.com", "https://management.azure.com/", "https://management.core.windows.net", "https://management.core.windows.net/"]);

export class Emulator {
  ids: DetIds;
  readonly dir: Directory;
  readonly rbac = new Rbac();
  settings: Settings = defaultSettings();
  readonly signer = new TokenSigner(randomBytes(8).toString("hex"));
  readonly entra: Entra;
  readonly arm: Arm;
  readonly catalog = new Catalog();
  readonly graveyard = new WorkspaceGraveyard();
  readonly router: ArmRouter;
  faults: Fault[] = [];
  capacity: CapacityFault[] = [];
  requests: RequestLogEntry[] = [];
  private seq = 0;
  private readonly miHosts = new Map<string, ManagedIdentityHost & { name: string; secret: string }>();
  private info!: EmulatorInfo;
  baseUrl = "";
  readonly logs: LogsPlane;
  private ingestionDelayMs: number;
  private ingestionJitterMs = 0;

  constructor(
    private seed: string,
    opts: { ingestionDelayMs?: number } = {},
  ) {
    this.ids = new DetIds(seed);
    this.dir = new Directory(this.ids);
    this.ingestionDelayMs = opts.ingestionDelayMs ?? 0;
    const now = (): number => Date.now();
    this.entra = new Entra({
      dir: this.dir,
      settings: this.settings,
      signer: this.signer,
      baseUrl: () => this.baseUrl,
      now,
      principalOfIdentity: (rid) => {
        const r = this.arm.get(rid);
        return r ? this.dir.principal(r.body.properties?.principalId ?? "") : undefined;
      },
      miHost: (key) => this.miHosts.get(lc(key)) ?? vmHost(this.arm, key),
    });
    this.arm = new Arm({ ids: this.ids, dir: this.dir, rbac: this.rbac, settings: this.settings, now, baseUrl: () => this.baseUrl });
    for (const t of allTypes(this)) this.arm.register(t);
    this.router = new ArmRouter(this.arm, this.rbac, this.catalog);
    this.logs = createLogsPlane(this.logsHost(), { ingestionDelayMs: this.ingestionDelayMs });
    this.reset();
  }


  // ---- state -----------------------------------------------------------------------------------

  reset(seed?: string): EmulatorInfo {
    if (seed !== undefined) this.seed = seed;
    this.ids.reset(this.seed);
    this.dir.clear();
    this.rbac.clear();
    this.arm.clear();
    this.catalog.clear();
    this.graveyard.clear();
    Object.assign(this.settings, defaultSettings());
    this.faults = [];
    this.capacity = [];
    this.requests = [];
    this.seq = 0;
    this.miHosts.clear();
    this.entra.clearCache();
    this.logs.reset();
    this.ingestionJitterMs = 0;
    const tenant = this.dir.createTenant({ domain: "vmforge-test.onmicrosoft.com" });
    const sub = this.dir.createSubscription(tenant.id, { displayName: "vmforge test subscription" });
    const admin = this.createPrincipal({ tenantId: tenant.id, displayName: "emulator-admin", secret: this.ids.hex("admin-secret", "admin", 40), backdated: true });
    this.assign(admin.oid, `/subscriptions/${sub.id}`, "8e3af657-a8ff-443c-a75c-2fe8c4bcb635");
    this.info = {
      endpoint: this.baseUrl,
      tenantId: tenant.id,
      subscriptionId: sub.id,
      admin: { clientId: admin.appId, clientSecret: admin.secrets[0]!, objectId: admin.oid },
      settings: this.settings,
    };
    return this.getInfo();
  }

  getInfo(): EmulatorInfo {
    return { ...this.info, endpoint: this.baseUrl, settings: { ...this.settings } };
  }

  createPrincipal(o: { tenantId: string; displayName?: string; secret?: string; federatedCredentials?: Principal["federatedCredentials"]; backdated?: boolean }): Principal {
    if (!this.dir.tenants.has(lc(o.tenantId))) throw new ArmError(400, "InvalidParameter", `Unknown tenant '${o.tenantId}'.`);
    const key = `${o.tenantId}/${o.displayName ?? ""}`;
    const p: Principal = {
      oid: this.ids.guid("sp-object", key),
      appId: this.ids.guid("app-id", key),
      tenantId: lc(o.tenantId),
      displayName: o.displayName ?? "app",
      kind: "application",
      secrets: o.secret ? [o.secret] : [],
      federatedCredentials: (o.federatedCredentials ?? []).map((f, i) => ({ name: f.name ?? `fic${i}`, issuer: f.issuer, subject: f.subject, audiences: f.audiences ?? ["api://AzureADTokenExchange"] })),
      createdAtMs: o.backdated ? 0 : Date.now(),
    };
    return this.dir.addPrincipal(p);
  }

  /**
   * Role assignment written directly (test control): no RBAC, no replication window; in effect at
   * once (a grant made long ago) unless `propagate`, then after the propagation delay as one made
   * through Resource Manager now.
   */
  assign(principalId: string, scope: string, roleGuid: string, opts: { propagate?: boolean } = {}): { name: string; roleDefinitionId: string } {
    const sub = trimSlash(scope).split("/")[2];
    if (!sub || !this.dir.subscriptions.has(lc(sub))) throw new ArmError(400, "InvalidParameter", `Scope '${scope}' is not in a known subscription.`);
    if (!this.rbac.roleDefinition(roleGuid)) throw new ArmError(400, "RoleDefinitionDoesNotExist", `The specified role definition with ID '${roleGuid}' does not exist.`);
    const name = this.ids.guid("control-assignment", `${principalId}|${scope}|${roleGuid}`);
    const now = new Date().toISOString();
    const roleDefinitionId = `/subscriptions/${lc(sub)}/providers/Microsoft.Authorization/roleDefinitions/${lc(roleGuid)}`;
    const delay = opts.propagate ? this.settings.roleAssignmentDelayMs : 0;
    this.rbac.addAssignment({ name, scope: trimSlash(scope), roleDefinitionId, principalId: lc(principalId), principalType: "ServicePrincipal", createdOn: now, updatedOn: now, ...(delay > 0 ? { effectiveAtMs: Date.parse(now) + delay } : {}) });
    return { name, roleDefinitionId };
  }

  /** The test control's settings (POST /_emulator/settings): what `body` names changes, the rest stays; answers them all. */
  updateSettings(body: any): Settings & { ingestionDelayMs: number; ingestionJitterMs: number } {
    for (const k of ["tokenLifetimeS", "principalNotFoundWindowMs", "lroRetryAfterS", "defaultLatencyMs", "listPageSize", "roleAssignmentDelayMs", "roleAssignmentRemovalDelayMs"] as const) {
      if (typeof body[k] === "number") this.settings[k] = body[k];
    }
    if (typeof body.roleAssignmentDelayMs === "number") this.rbac.repropagate(body.roleAssignmentDelayMs);
    if (typeof body.roleAssignmentRemovalDelayMs === "number") this.rbac.relinger(body.roleAssignmentRemovalDelayMs);
    if (isObject(body.latencyMs)) for (const [t, ms] of Object.entries(body.latencyMs)) this.settings.latencyMs[lc(t)] = Number(ms);
    if (typeof body.ingestionDelayMs === "number") {
      this.ingestionDelayMs = body.ingestionDelayMs;
      this.logs.setIngestionDelay(body.ingestionDelayMs);
    }
    if (isObject(body.dcrIngestionDelayMs)) {
      for (const [dcr, ms] of Object.entries(body.dcrIngestionDelayMs)) this.logs.setDcrIngestionDelay(dcr, typeof ms === "number" ? ms : null);
    }
    if (typeof body.ingestionJitterMs === "number") {
      this.ingestionJitterMs = body.ingestionJitterMs;
      this.logs.setIngestionJitter(body.ingestionJitterMs);
    }
    return { ...this.settings, ingestionDelayMs: this.ingestionDelayMs, ingestionJitterMs: this.ingestionJitterMs };
  }

  // ---- the seam with the logs plane -------------------------------------------------------------

  logsHost(): LogsHost {
    const asView = (r: Stored | undefined): { id: string; properties: any } | undefined => (r ? { id: r.id, properties: r.body.properties } : undefined);
    return {
      authorize: (token, action, scope, dataAction) => {
        const a = this.entra.authenticate(token === undefined ? undefined : /^bearer /i.test(token) ? token : `Bearer ${token}`);
        if (!("caller" in a)) return { ok: false, status: 401, body: { error: { code: a.code, message: a.message } } };
        const c = a.caller;
        if (!this.rbac.allowed(c.oid, action, scope, dataAction)) {
          return { ok: false, status: 403, body: { error: { code: "AuthorizationFailed", message: authorizationFailedMessage(c.appId, c.oid, action, scope) } } };
        }
        return { ok: true, principal: { oid: c.oid, appid: c.appId, tid: c.tid } };
      },
      findDcrByImmutableId: (immutableId) => {
        this.arm.settle();
        const r = this.arm.byUnique("Microsoft.Insights/dataCollectionRules", immutableId);
        return r && r.body.properties?.immutableId === immutableId ? asView(r) : undefined;
      },
      findWorkspaceByCustomerId: (customerId) => {
        this.arm.settle();
        return asView(this.arm.byUnique("Microsoft.OperationalInsights/workspaces", customerId));
      },
      findWorkspaceById: (id) => {
        this.arm.settle();
        const r = this.arm.get(id);
        return r && lc(r.type) === "microsoft.operationalinsights/workspaces" ? asView(r) : undefined;
      },
      findTable: (workspaceId, tableName) => {
        this.arm.settle();
        const r = this.arm.get(`${trimSlash(workspaceId)}/tables/${tableName}`);
        return r && r.body.properties?.provisioningState !== "Deleting" ? asView(r) : undefined;
      },
      recordRequest: (e) => this.record({ ...e, apiVersion: undefined }),
      faultFor: (operation) => {
        const f = this.matchFault({ operation, method: "", resourceType: "" });
        return f ? { status: f.status, retryAfterS: f.retryAfterS } : undefined;
      },
    };
  }

  // ---- the seam with the Key Vault data plane ----------------------------------------------------

  keyVaultHost(): KeyVaultHost {
    return {
      baseUrl: () => this.baseUrl,
      authenticate: (a) => this.entra.authenticate(a),
      allowed: (oid, action, scope) => this.rbac.allowed(oid, action, scope, true),
      resources: () => this.arm.resources.values(),
      get: (id) => this.arm.get(id),
    };
  }

  /** Where a vault's data plane is served (what VMFORGE_KEYVAULT_ENDPOINT names): `<emulator>/keyvault/<name>`. */
  keyVaultEndpoint(name: string): string {
    return `${this.baseUrl}${KEY_VAULT_PATH_PREFIX}${lc(name)}`;
  }

  // ---- faults and the request log ---------------------------------------------------------------

  private matchFault(r: { operation: string; method: string; resourceType: string; path?: string }): Fault | undefined {
    for (const f of this.faults) {
      if (f.count !== undefined && f.count <= 0) continue;
      if (f.path && !lc(r.path ?? "").includes(lc(f.path))) continue;
      if (f.operation && lc(f.operation) !== lc(r.operation)) continue;
      if (f.method && r.method && lc(f.method) !== lc(r.method)) continue;
      if (f.resourceType && lc(f.resourceType) !== lc(r.resourceType)) continue;
      if (f.percentage !== undefined && this.ids.fraction("fault", f.id) * 100 >= f.percentage) continue;
      if (f.count !== undefined) f.count -= 1;
      return f;
    }
    return undefined;
  }

  private faultError(f: Fault): ArmError {
    const headers: Record<string, string> = {};
    if (f.retryAfterS !== undefined) headers["retry-after"] = String(f.retryAfterS);
    const code = f.code ?? (f.status === 429 ? "TooManyRequests" : f.status === 503 ? "ServiceUnavailable" : f.status === 500 ? "InternalServerError" : "InjectedFault");
    const message =
      f.message ??
      (f.status === 429
        ? "The request is being throttled as the limit has been reached for operation type - Write_ObservationWindow_00:01:00. For more information, refer to - https://aka.ms/srpthrottlinglimits"
        : f.status === 503
          ? "The service is temporarily unavailable. Please try again later."
          : "Encountered internal server error. Please try again.");
    return new ArmError(f.status, code, message, { headers });
  }

  record(e: Omit<RequestLogEntry, "seq" | "time">): void {
    this.requests.push({ seq: ++this.seq, time: new Date().toISOString(), ...e });
    if (this.requests.length > 200_000) this.requests.splice(0, 100_000);
  }

  // ---- HTTP ------------------------------------------------------------------------------------

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    // A scope that starts with "/" gives the SDKs paths like //subscriptions/...; Azure reads them as one slash.
    const rawUrl = req.url ?? "/";
    const q = rawUrl.indexOf("?");
    const rawPath = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const url = new URL(rawPath.replace(/\/{2,}/g, "/") + (q < 0 ? "" : rawUrl.slice(q)), this.baseUrl || "https://127.0.0.1");
    const method = (req.method ?? "GET").toUpperCase();
    // Setting info.operation applies injected faults (see gatedInfo).
    const info: RouteInfo = this.gatedInfo(method, url.pathname);
    let caller: Caller | undefined;
    let status = 500;
    let bytes: number | undefined;
    const reply = (s: number, body: unknown, headers: Record<string, string> = {}): void => {
      status = s;
      const reqId = this.ids.guid("request-id", "request");
      bytes = sendJson(res, s, body, { "x-ms-request-id": reqId, "x-ms-correlation-request-id": reqId, ...headers });
    };
    try {
      const p = url.pathname;
      if (p.startsWith("/_emulator/")) {
        await this.control(method, url, raw, reply);
        return;
      }
      if (this.logs.handle(req, res, url, raw)) return;
      if (p.startsWith(KEY_VAULT_PATH_PREFIX)) {
        this.arm.settle();
        info.resourceType = VAULT_SECRET_TYPE;
        const out = keyVaultRequest(this.keyVaultHost(), { method, path: p.slice(KEY_VAULT_PATH_PREFIX.length), query: url.searchParams, authorization: req.headers.authorization });
        caller = out.caller;
        // Setting the operation applies injected faults (answered in ARM's error shape).
        if (out.operation) info.operation = out.operation;
        reply(out.status, out.body, out.headers);
        return;
      }
      const seg = p.split("/").filter(Boolean);
      const s0 = lc(seg[0] ?? "");
      if (s0 === "_mi") {
        info.resourceType = "Microsoft.ManagedIdentity/identities";
        info.operation = "managedIdentityToken";
        this.managedIdentity(method, url, seg, req, reply);
        return;
      }
      if (s0 !== "subscriptions" && s0 !== "providers" && s0 !== "tenants" && seg.length >= 2) {
        info.resourceType = "Microsoft.AAD/oauth2";
        await this.entraRoute(method, url, seg, raw, req, reply, info);
        return;
      }
      // Resource Manager
      const auth = this.entra.authenticate(req.headers.authorization);
      if (!("caller" in auth)) {
        reply(401, { error: { code: auth.code, message: auth.message } }, {
          "www-authenticate": `Bearer authorization_uri="${this.baseUrl}/${this.info.tenantId}", error="invalid_token", error_description="${auth.message.replace(/"/g, "'")}"`,
        });
        return;
      }
      caller = auth.caller;
      if (!ARM_AUDIENCES.has(caller.aud)) {
        reply(401, {
          error: {
            code: "InvalidAuthenticationTokenAudience",
            message: `The access token has been obtained for wrong audience or resource '${caller.aud}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'.`,
          },
        });
        return;
      }
      let body: any;
      if (raw.length > 0) {
        try {
          body = JSON.parse(raw.toString("utf8"));
        } catch (e) {
          throw new ArmError(400, "InvalidRequestContent", `The request content was invalid and could not be deserialized: '${(e as Error).message}'.`);
        }
      }
      const out = this.router.handle({ method, url, body, caller }, info);
      if (method === "HEAD") {
        status = out.status;
        res.writeHead(out.status, out.headers ?? {});
        res.end();
        return;
      }
      reply(out.status, out.body, out.headers);
    } catch (err) {
      if (err instanceof ArmError && (info.resourceType === "Microsoft.AAD/oauth2" || info.resourceType === "Microsoft.ManagedIdentity/identities")) {
        // injected faults on token endpoints answer in the OAuth error shape
        const error = err.status === 429 || err.status === 503 ? "temporarily_unavailable" : "server_error";
        reply(err.status, { error, error_description: err.message, error_codes: [] }, err.extra.headers);
      } else if (err instanceof ArmError) {
        if (method === "HEAD") {
          status = err.status;
          res.writeHead(err.status, err.extra.headers ?? {});
          res.end();
        } else reply(err.status, err.body(), err.extra.headers);
      } else if (err instanceof EntraError) {
        reply(err.status, this.entra.errorBody(err));
      } else if (isObject(err) && typeof (err as any).status === "number" && (err as any).body) {
        reply((err as any).status, (err as any).body);
      } else {
        this.logLine(`internal error on ${method} ${url.pathname}: ${(err as Error)?.stack ?? String(err)}`);
        reply(500, { error: { code: "InternalServerError", message: `Emulator error: ${(err as Error)?.message ?? String(err)}` } });
      }
    } finally {
      if (!url.pathname.startsWith("/_emulator/") && info.operation) {
        this.record({
          method,
          path: url.pathname,
          resourceType: info.resourceType,
          operation: info.operation,
          apiVersion: url.searchParams.get("api-version") ?? undefined,
          query: url.search,
          caller: caller?.oid,
          callerAppId: caller?.appId,
          status,
          ...(bytes !== undefined ? { bytes } : {}),
        });
      }
    }
  }

  /** A RouteInfo whose operation setter applies injected faults as soon as the router knows the operation. */
  private gatedInfo(method: string, path: string): RouteInfo {
    let op = "";
    const gate = (i: RouteInfo): void => this.gate(i, method, path);
    const info = {
      resourceType: "",
      get operation(): string {
        return op;
      },
      set operation(v: string) {
        op = v;
        gate(info);
      },
    };
    return info;
  }

  private gate(info: RouteInfo, method: string, path: string): void {
    if (this.faults.length === 0) return;
    const f = this.matchFault({ operation: info.operation, method, resourceType: info.resourceType, path });
    if (f) throw this.faultError(f);
  }

  logLine(s: string): void {
    process.stderr.write(`[azure-emulator] ${s}\n`);
  }

  private async entraRoute(method: string, url: URL, seg: string[], raw: Buffer, req: IncomingMessage, reply: (s: number, b: unknown, h?: Record<string, string>) => void, info: RouteInfo): Promise<void> {
    const tenant = seg[0]!;
    const rest = seg.slice(1).map(lc).join("/");
    if (method === "GET" && (rest === "v2.0/.well-known/openid-configuration" || rest === ".well-known/openid-configuration")) {
      info.operation = "openid-configuration";
      reply(200, this.entra.openidConfiguration(tenant, rest.startsWith("v2.0")));
      return;
    }
    if (method === "GET" && (rest === "discovery/v2.0/keys" || rest === "discovery/keys")) {
      info.operation = "keys";
      reply(200, this.signer.jwks());
      return;
    }
    if (method === "GET" && rest === "discovery/instance") {
      info.operation = "instance-discovery";
      const host = new URL(this.baseUrl).host;
      reply(200, {
        tenant_discovery_endpoint: `${this.baseUrl}/${tenant}/v2.0/.well-known/openid-configuration`,
        "api-version": "1.1",
        metadata: [{ preferred_network: host, preferred_cache: host, aliases: [host] }],
      });
      return;
    }
    if (method === "POST" && (rest === "oauth2/v2.0/token" || rest === "oauth2/token")) {
      info.operation = "token";
      const form = new URLSearchParams(raw.toString("utf8"));
      const out = await this.entra.token(tenant, form, rest === "oauth2/v2.0/token", req.headers.authorization);
      reply(200, out, { "cache-control": "no-store, no-cache", pragma: "no-cache" });
      return;
    }
    throw new EntraError(404, "invalid_request", 900561, `The endpoint only accepts ${method === "GET" ? "POST" : "GET"} requests or does not exist: ${method} ${url.pathname}.`);
  }

  private managedIdentity(method: string, url: URL, seg: string[], req: IncomingMessage, reply: (s: number, b: unknown, h?: Record<string, string>) => void): void {
    const key = seg[1] ?? "";
    const rest = seg.slice(2).map(lc).join("/");
    if (method !== "GET") {
      reply(405, { error: "invalid_request", error_description: "Only GET is supported" });
      return;
    }
    if (rest === "metadata/identity/oauth2/token") {
      if (lc(String(req.headers.metadata ?? "")) !== "true") {
        reply(400, { error: "invalid_request", error_description: "Required metadata header not specified" });
        return;
      }
      if (!url.searchParams.get("api-version")) {
        reply(400, { error: "invalid_request", error_description: "Required query variable 'api-version' is missing" });
        return;
      }
      reply(200, this.entra.managedIdentityToken(key, url.searchParams, "imds"));
      return;
    }
    if (rest === "msi/token") {
      const host = this.miHosts.get(lc(key));
      if (!host || req.headers["x-identity-header"] !== host.secret) {
        reply(401, { statusCode: 401, message: "Unauthorized: the X-IDENTITY-HEADER header is missing or wrong." });
        return;
      }
      reply(200, this.entra.managedIdentityToken(key, url.searchParams, "appservice"));
      return;
    }
    // The instance metadata service refuses a request without its header or api-version.
    const imdsRefused = (): boolean => {
      if (lc(String(req.headers.metadata ?? "")) !== "true") {
        reply(400, { error: "Bad request. Required metadata header not specified" });
        return true;
      }
      if (!url.searchParams.get("api-version")) {
        reply(400, { error: "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds", newest_versions: ["2023-07-01", "2021-12-13", "2021-11-15"] });
        return true;
      }
      return false;
    };
    if (rest === "metadata/instance/compute/userdata") {
      // What a VM reads its userData with (Azure never hands userData to cloud-init): base64, as text.
      if (imdsRefused()) return;
      if (url.searchParams.get("format") !== "text") {
        reply(400, { error: "Bad request. Query parameter 'format' must be 'text' for leaf nodes." });
        return;
      }
      const vm = this.arm.vmIds.get(lc(key));
      const r = vm ? this.arm.resources.get(vm) : undefined;
      if (!r) {
        reply(404, { error: "Not found" });
        return;
      }
      reply(200, new TextBody(String(r.x.userData ?? "")));
      return;
    }
    if (rest === "metadata/instance" || rest === "metadata/instance/compute") {
      if (imdsRefused()) return;
      const vm = this.arm.vmIds.get(lc(key));
      const r = vm ? this.arm.resources.get(vm) : undefined;
      if (!r) {
        reply(404, { error: "Not found" });
        return;
      }
      const compute = {
        azEnvironment: "AzurePublicCloud",
        location: r.body.location,
        name: r.name,
        resourceGroupName: r.id.split("/")[4],
        resourceId: r.id,
        subscriptionId: r.sub,
        vmId: r.body.properties.vmId,
        vmSize: r.body.properties.hardwareProfile?.vmSize,
        priority: r.body.properties.priority ?? "Regular",
        tagsList: Object.entries(r.body.tags ?? {}).map(([name, value]) => ({ name, value })),
        userData: r.x.userData ?? "",
        osType: "Linux",
      };
      reply(200, rest.endsWith("compute") ? compute : { compute, network: { interface: [] } });
      return;
    }
    reply(404, { error: "invalid_request", error_description: `Unknown managed identity path ${url.pathname}` });
  }

  // ---- test controls ---------------------------------------------------------------------------

  private async control(method: string, url: URL, raw: Buffer, reply: (s: number, b: unknown, h?: Record<string, string>) => void): Promise<void> {
    const path = url.pathname.slice("/_emulator".length);
    let body: any = {};
    if (raw.length) body = JSON.parse(raw.toString("utf8"));
    const route = `${method} ${path.replace(/\/+$/, "")}`;
    this.arm.settle();
    const oneFault = /^DELETE \/faults\/([^/]+)$/.exec(route);
    if (oneFault) {
      const id = decodeURIComponent(oneFault[1]!);
      this.faults = this.faults.filter((f) => f.id !== id);
      return reply(200, {});
    }
    const oneLag = /^DELETE \/list-lags\/([^/]+)$/.exec(route);
    if (oneLag) {
      const id = decodeURIComponent(oneLag[1]!);
      const gone = this.arm.listLags.find((l) => l.id === id);
      this.arm.listLags = this.arm.listLags.filter((l) => l.id !== id);
      // What it made goes with it: lists show the truth again at once.
      if (gone) {
        const its = (vmId: string): boolean => lc(vmId).includes(lc(gone.path)) && !this.arm.listLags.some((l) => lc(vmId).includes(lc(l.path)));
        for (const [k, g] of this.arm.listedAfterDelete) if (its(g.res.id)) this.arm.listedAfterDelete.delete(k);
        for (const r of this.arm.resources.values()) if (r.x.listedAs && its(r.id)) delete r.x.listedAs;
      }
      return reply(200, {});
    }
    const oneDeleteLag = /^DELETE \/delete-lags\/([^/]+)$/.exec(route);
    if (oneDeleteLag) {
      const id = decodeURIComponent(oneDeleteLag[1]!);
      this.arm.deleteLags = this.arm.deleteLags.filter((l) => l.id !== id);
      return reply(200, {});
    }
    const oneCapacity = /^DELETE \/capacity\/([^/]+)$/.exec(route);
    if (oneCapacity) {
      const id = decodeURIComponent(oneCapacity[1]!);
      const gone = this.capacity.find((c) => c.id === id);
      this.capacity = this.capacity.filter((c) => c.id !== id);
      // The size is listed as restricted again only while another such error remains.
      if (gone && !this.capacity.some((c) => c.code === "SkuNotAvailable" && c.count === undefined && lc(c.vmSize) === lc(gone.vmSize) && c.location === gone.location)) {
        this.catalog.restricted.delete(`${lc(gone.vmSize)}|${gone.location}`);
      }
      return reply(200, {});
    }
    switch (route) {
      case "GET /info":
        return reply(200, this.getInfo());
      case "POST /reset":
        return reply(200, this.reset(typeof body.seed === "string" ? body.seed : undefined));
      case "POST /tenants": {
        const t = this.dir.createTenant({ id: body.id, domain: body.domain });
        return reply(201, t);
      }
      case "POST /subscriptions": {
        if (!this.dir.tenants.has(lc(body.tenantId ?? ""))) throw new ArmError(400, "InvalidParameter", `Unknown tenant '${body.tenantId}'.`);
        return reply(201, this.dir.createSubscription(body.tenantId, { id: body.id, displayName: body.displayName }));
      }
      case "POST /principals": {
        const secret = body.secret === false ? undefined : typeof body.secret === "string" ? body.secret : this.ids.hex("secret", body.displayName ?? "app", 40);
        const p = this.createPrincipal({ tenantId: body.tenantId ?? this.info.tenantId, displayName: body.displayName, secret, federatedCredentials: body.federatedCredentials, backdated: body.backdated !== false });
        return reply(201, { objectId: p.oid, clientId: p.appId, tenantId: p.tenantId, displayName: p.displayName, secret });
      }
      case "POST /principals/update": {
        const p = this.dir.principal(body.objectId ?? "") ?? this.dir.app(body.clientId ?? "");
        if (!p) throw new ArmError(404, "NotFound", "Unknown principal.");
        if (Array.isArray(body.secrets)) p.secrets = body.secrets.map(String);
        if (Array.isArray(body.federatedCredentials)) {
          p.federatedCredentials = body.federatedCredentials.map((f: any, i: number) => ({ name: f.name ?? `fic${i}`, issuer: f.issuer, subject: f.subject, audiences: f.audiences ?? ["api://AzureADTokenExchange"] }));
        }
        return reply(200, { objectId: p.oid, clientId: p.appId });
      }
      case "POST /role-assignments": {
        const principalId = String(body.principalId ?? "");
        const scope = String(body.scope ?? `/subscriptions/${this.info.subscriptionId}`);
        let roleGuid: string | undefined;
        if (body.roleDefinitionId) roleGuid = Rbac.roleGuid(String(body.roleDefinitionId));
        else if (body.roleName) roleGuid = (BUILT_IN_ROLES.find((r) => lc(r.roleName) === lc(body.roleName)) ?? [...this.rbac.customRoles.values()].find((r) => lc(r.roleName) === lc(body.roleName)))?.name;
        else if (body.role) roleGuid = this.defineCustomRole(body.role, scope);
        if (!roleGuid) throw new ArmError(400, "RoleDefinitionDoesNotExist", "The role to assign was not found.");
        return reply(201, this.assign(principalId, scope, roleGuid, { propagate: body.propagate === true }));
      }
      case "POST /settings":
        return reply(200, this.updateSettings(body));
      case "POST /faults": {
        const f: Fault = { id: this.ids.guid("fault-id", "fault"), ...body };
        if (typeof f.status !== "number") throw new ArmError(400, "InvalidParameter", "A fault needs a status.");
        this.faults.push(f);
        return reply(201, f);
      }
      case "DELETE /faults":
        this.faults = [];
        return reply(200, {});
      case "GET /faults":
        return reply(200, { value: this.faults });
      case "POST /list-lags": {
        if (typeof body.path !== "string" || !body.path || typeof body.ms !== "number" || body.ms < 0) throw new ArmError(400, "InvalidParameter", "A list lag needs a path and ms.");
        const l = { id: this.ids.guid("list-lag-id", "list-lag"), path: body.path, ms: body.ms };
        this.arm.listLags.push(l);
        return reply(201, l);
      }
      case "POST /delete-lags": {
        if (typeof body.path !== "string" || !body.path || typeof body.ms !== "number" || body.ms < 0) throw new ArmError(400, "InvalidParameter", "A delete lag needs a path and ms.");
        const l = { id: this.ids.guid("delete-lag-id", "delete-lag"), path: body.path, ms: body.ms };
        this.arm.deleteLags.push(l);
        return reply(201, l);
      }
      case "POST /capacity": {
        const c: CapacityFault = { id: this.ids.guid("capacity-id", "capacity"), vmSize: String(body.vmSize), location: lc(String(body.location)), code: body.code, count: body.count };
        if (!["SkuNotAvailable", "AllocationFailed", "OperationNotAllowed", "ZonalAllocationFailed"].includes(c.code)) throw new ArmError(400, "InvalidParameter", `Unknown capacity error code '${c.code}'.`);
        if (c.code === "SkuNotAvailable" && c.count === undefined) this.catalog.restricted.add(`${lc(c.vmSize)}|${c.location}`);
        this.capacity.push(c);
        return reply(201, c);
      }
      case "DELETE /capacity":
        this.capacity = [];
        this.catalog.clear();
        return reply(200, {});
      case "GET /requests": {
        const since = Number(url.searchParams.get("since") ?? "0");
        return reply(200, { value: this.requests.filter((r) => r.seq > since), lastSeq: this.seq });
      }
      case "DELETE /requests":
        this.requests = [];
        return reply(200, { lastSeq: this.seq });
      case "POST /oidc-issuers":
        if (typeof body.issuer !== "string") throw new ArmError(400, "InvalidParameter", "issuer is required.");
        this.entra.registerIssuer(body as OidcIssuer);
        return reply(201, { issuer: body.issuer });
      case "POST /managed-identity-hosts": {
        const name = String(body.name ?? "");
        if (!/^[a-z0-9-]{1,64}$/.test(name)) throw new ArmError(400, "InvalidParameter", "A host name is 1-64 characters of [a-z0-9-].");
        const tenantId = lc(String(body.tenantId ?? this.info.tenantId));
        let systemPrincipalOid: string | undefined;
        let system: Principal | undefined;
        if (body.systemAssigned) {
          system = this.createPrincipal({ tenantId, displayName: `mi-host-${name}` });
          system.kind = "managedIdentity";
          system.secrets = [];
          systemPrincipalOid = system.oid;
        }
        const secret = this.ids.hex("mi-host-secret", name, 32);
        this.miHosts.set(name, { name, tenantId, userAssigned: Array.isArray(body.userAssignedIdentityIds) ? body.userAssignedIdentityIds.map(String) : [], systemPrincipalOid, secret });
        return reply(201, {
          name,
          podIdentityAuthorityHost: `${this.baseUrl}/_mi/${name}`,
          identityEndpoint: `${this.baseUrl}/_mi/${name}/msi/token`,
          identityHeader: secret,
          systemAssigned: system ? { objectId: system.oid, clientId: system.appId } : undefined,
        });
      }
      case "POST /key-vaults":
        return reply(201, this.seedKeyVault(body));
      case "GET /vms":
        return reply(200, { value: listVmsForControl(this.arm, this.baseUrl) });
      case "POST /vms/power": {
        const r = controlVm(this.arm, String(body.id ?? ""), body.state as VmPowerControl);
        return reply(200, r);
      }
      default:
        throw new ArmError(404, "NotFound", `Unknown test control ${route}.`);
    }
  }

  /**
   * Test control: a vault (and its resource group when missing) and secrets, written through
   * Resource Manager as the default admin (Owner), so every ARM check applies.
   */
  seedKeyVault(body: any): { id: string; name: string; vaultUri: string; endpoint: string; tenantId: string; secrets: Record<string, { id: string; version: string }> } {
    const sub = String(body.subscriptionId ?? this.info.subscriptionId);
    const rg = String(body.resourceGroup ?? "");
    const name = String(body.name ?? "");
    const location = String(body.location ?? "westeurope");
    if (!rg || !name) throw new ArmError(400, "InvalidParameter", "resourceGroup and name are required.");
    const caller: Caller = { oid: this.info.admin.objectId, appId: this.info.admin.clientId, tid: this.info.tenantId, aud: "https://management.azure.com", exp: 0 };
    const call = (method: string, path: string, apiVersion: string, b?: any): any => {
      const info: RouteInfo = { resourceType: "", operation: "" };
      return this.router.handle({ method, url: new URL(`${path}?api-version=${apiVersion}`, this.baseUrl || "https://127.0.0.1"), body: b, caller }, info).body;
    };
    const rgPath = `/subscriptions/${sub}/resourceGroups/${rg}`;
    if (!this.arm.get(rgPath)) call("PUT", rgPath, "2025-04-01", { location });
    const existing = findVault(this.arm.resources.values(), name);
    const tenantId = lc(String(body.tenantId ?? this.dir.subscriptions.get(lc(sub))?.tenantId ?? this.info.tenantId));
    const vault = existing ?? this.arm.get(call("PUT", `${rgPath}/providers/Microsoft.KeyVault/vaults/${name}`, "2024-11-01", {
      location,
      properties: {
        tenantId,
        sku: { family: "A", name: "standard" },
        enableRbacAuthorization: body.enableRbacAuthorization !== false,
        ...(Array.isArray(body.accessPolicies) ? { accessPolicies: body.accessPolicies } : {}),
      },
    }).id)!;
    const secrets: Record<string, { id: string; version: string }> = {};
    for (const [sname, value] of Object.entries((body.secrets ?? {}) as Record<string, unknown>)) {
      const spec = isObject(value) ? (value as any) : { value };
      const out = call("PUT", `${vault.id}/secrets/${sname}`, "2024-11-01", { properties: { value: String(spec.value), ...(spec.enabled === false ? { attributes: { enabled: false } } : {}) } });
      const stored = this.arm.get(out.id)!;
      const vs = secretVersions(stored);
      secrets[sname] = { id: out.properties.secretUriWithVersion, version: vs[vs.length - 1]!.version };
    }
    return { id: vault.id, name: vault.name, vaultUri: vault.body.properties.vaultUri, endpoint: this.keyVaultEndpoint(vault.name), tenantId: vault.body.properties.tenantId, secrets };
  }

  /** Creates (or reuses, by name) a custom role from a role JSON like the product documents' ones. */
  defineCustomRole(role: any, scope: string): string {
    const p = role.properties ?? role;
    const sub = trimSlash(scope).split("/")[2] ?? this.info.subscriptionId;
    const tenantId = this.dir.subscriptions.get(lc(sub))?.tenantId ?? this.info.tenantId;
    const roleName = String(p.roleName ?? "custom-role");
    const existing = [...this.rbac.customRoles.values()].find((r) => r.tenantId === tenantId && lc(r.roleName) === lc(roleName));
    const guid = existing?.name ?? this.ids.guid("control-role", `${tenantId}/${roleName}`);
    const now = new Date().toISOString();
    const assignable = (Array.isArray(p.assignableScopes) ? p.assignableScopes : [`/subscriptions/${sub}`]).map((s: string) => s.replace(/<[^>]*SUBSCRIPTION-ID>/i, sub));
    this.rbac.customRoles.set(guid, {
      name: guid,
      roleName,
      description: String(p.description ?? ""),
      type: "CustomRole",
      permissions: (p.permissions ?? []).map((x: any) => normPermission(x)),
      assignableScopes: assignable,
      createdOn: now,
      updatedOn: now,
      scope: `/subscriptions/${sub}`,
      tenantId,
    });
    return guid;
  }
}

export interface RunningEmulator {
  url: string;
  emulator: Emulator;
  server: Server;
  close(): Promise<void>;
}

/** Starts the emulator's HTTPS server (in this process). */
export async function startEmulator(opts: EmulatorOptions): Promise<RunningEmulator> {
  const emulator = new Emulator(opts.seed ?? "vmforge", { ingestionDelayMs: opts.ingestionDelayMs });
  const server = createServer({ cert: opts.tls.cert, key: opts.tls.key, keepAliveTimeout: 30_000 }, (req, res) => {
    emulator.handle(req, res).catch((err) => {
      emulator.logLine(`request failed: ${(err as Error).stack ?? String(err)}`);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, opts.host ?? "127.0.0.1", () => resolve());
  });
  const addr = server.address() as AddressInfo;
  emulator.baseUrl = `https://${opts.host ?? "127.0.0.1"}:${addr.port}`;
  emulator.reset();
  return {
    url: emulator.baseUrl,
    emulator,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
