 
// Resource Manager request handling: subscriptions and locations, resource groups, role
// definitions and assignments, operation polling, and generic dispatch of provider resources
// to their type definitions. Every request is authorized with RBAC first.
import type { Caller } from "../entra.js";
import { authorizationFailedMessage, BUILT_IN_ROLES, normPermission, Rbac, type RoleAssignment, type RoleDefinition } from "../rbac.js";
import { ArmError, eqi, isGuid, isObject, lc, scopeWithin, trimSlash } from "../util.js";
import type { Arm} from "./framework.js";
import { RG_TYPE, type Json, type OpCtx, type Operation, type Stored, type TypeDef } from "./framework.js";
import { LOCATIONS, platformImage, type Catalog } from "./catalog.js";

export interface ArmRequest {
  method: string;
  url: URL;
  body: Json | undefined;
  caller: Caller;
}

export interface ArmResponse {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

/** Filled in while routing, for the request log. */
export interface RouteInfo {
  resourceType: string;
  operation: string;
}

const AUTH_NS = "Microsoft.Authorization";

function notFound(type: string, name: string, rg: string): ArmError {
  const where = rg ? ` under resource group '${rg}'` : "";
  return new ArmError(404, "ResourceNotFound", `The Resource '${type}/${name}'${where} was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix`);
}

export class ArmRouter {
  constructor(
    readonly arm: Arm,
    private readonly rbac: Rbac,
    readonly catalog: Catalog,
  ) {}

  private get d() {
    return this.arm.d;
  }

  // ---- authorization ---------------------------------------------------------------------------

  authorize(caller: Caller, action: string, scope: string): void {
    if (!this.rbac.allowed(caller.oid, action, scope, false)) {
      throw new ArmError(403, "AuthorizationFailed", authorizationFailedMessage(caller.appId, caller.oid, action, scope));
    }
  }

  /** Linked access check (e.g. joining a subnet, assigning an identity) done by ARM for a write. */
  authorizeLinked(caller: Caller | undefined, mainAction: string, mainScope: string, linked: { action: string; scope: string }[]): void {
    if (!caller) return;
    const missing = linked.filter((l) => !this.rbac.allowed(caller.oid, l.action, l.scope, false));
    if (missing.length === 0) return;
    throw new ArmError(
      403,
      "LinkedAuthorizationFailed",
      `The client '${caller.appId}' with object id '${caller.oid}' has permission to perform action '${mainAction}' on scope '${mainScope}'; however, it does not have permission to perform action(s) '${missing.map((m) => m.action).join(",")}' on the linked scope(s) '${missing.map((m) => m.scope).join(",")}' (respectively) or the linked scope(s) are invalid.`,
    );
  }

  private subscriptionOrThrow(caller: Caller, subId: string): void {
    const sub = this.d.dir.subscriptions.get(lc(subId));
    if (!sub) throw new ArmError(404, "SubscriptionNotFound", `The subscription '${subId}' could not be found.`);
    if (sub.tenantId !== lc(caller.tid)) {
      throw new ArmError(
        401,
        "InvalidAuthenticationTokenTenant",
        `The access token is from the wrong issuer 'https://sts.windows.net/${caller.tid}/'. It must match the tenant 'https://sts.windows.net/${sub.tenantId}/' associated with this subscription. Please use the authority (URL) 'https://login.windows.net/${sub.tenantId}' to get the token. Note, if the subscription is transferred to another tenant there is no impact to the services, but information about new tenant could take time to propagate (up to an hour). If you just transferred your subscription and see this error message, please try back later.`,
        { headers: { "www-authenticate": `Bearer authorization_uri="https://login.windows.net/${sub.tenantId}", error="invalid_token", error_description="The access token is from the wrong issuer."` } },
      );
    }
  }

  rgOrThrow(sub: string, rg: string): Stored {
    const r = this.arm.get(`/subscriptions/${sub}/resourcegroups/${rg}`);
    if (!r) throw new ArmError(404, "ResourceGroupNotFound", `Resource group '${rg}' could not be found.`);
    return r;
  }

  private ctx(req: ArmRequest): OpCtx {
    return { arm: this.arm, caller: req.caller, apiVersion: req.url.searchParams.get("api-version") ?? "", query: req.url.searchParams, now: this.d.now() };
  }

  // ---- entry -----------------------------------------------------------------------------------

  handle(req: ArmRequest, info: RouteInfo): ArmResponse {
    const { url, method } = req;
    this.arm.settle();
    const apiVersion = url.searchParams.get("api-version");
    const seg = trimSlash(url.pathname).split("/").filter(Boolean).map((s) => decodeURIComponent(s));
    if (!apiVersion) {
      throw new ArmError(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.");
    }
    if (!/^\d{4}-\d{2}-\d{2}(-[a-z]+)?$/i.test(apiVersion)) {
      throw new ArmError(400, "InvalidApiVersionParameter", `The api-version '${apiVersion}' is invalid. The supported versions are in the format 'yyyy-mm-dd' or 'yyyy-mm-dd-preview'.`);
    }
    const l0 = lc(seg[0] ?? "");
    if (l0 === "subscriptions" && seg.length === 1) {
      info.resourceType = "Microsoft.Resources/subscriptions";
      info.operation = "Microsoft.Resources/subscriptions/read";
      return { status: 200, body: { value: this.listSubscriptions(req.caller) } };
    }
    // Role definitions and assignments at any scope (including "/" for tenant-level reads).
    const provIdx = lastProvidersIndex(seg);
    if (provIdx >= 0 && eqi(seg[provIdx + 1], AUTH_NS)) {
      return this.authorization(req, seg.slice(0, provIdx), seg.slice(provIdx + 2), info);
    }
    if (l0 !== "subscriptions" || seg.length < 2) throw new ArmError(404, "NotFound", `No route for ${method} ${url.pathname}.`);
    const sub = lc(seg[1]!);
    this.subscriptionOrThrow(req.caller, sub);
    const subScope = `/subscriptions/${sub}`;
    if (seg.length === 2) {
      info.resourceType = "Microsoft.Resources/subscriptions";
      info.operation = "Microsoft.Resources/subscriptions/read";
      this.requireAnyAccess(req.caller, subScope, info.operation);
      return { status: 200, body: this.subscriptionBody(sub) };
    }
    const l2 = lc(seg[2]!);
    if (l2 === "locations" && seg.length === 3) {
      info.resourceType = "Microsoft.Resources/subscriptions/locations";
      info.operation = "Microsoft.Resources/subscriptions/locations/read";
      this.requireAnyAccess(req.caller, subScope, info.operation);
      return { status: 200, body: { value: LOCATIONS.map((l) => ({ id: `${subScope}/locations/${l.name}`, name: l.name, displayName: l.displayName, regionalDisplayName: `(${l.geo}) ${l.displayName}`, type: "Region", metadata: { regionType: "Physical", regionCategory: "Recommended", geographyGroup: l.geo, physicalLocation: l.displayName, pairedRegion: [] } })) } };
    }
    if (l2 === "resources" && seg.length === 3) {
      // Subscription-wide resource list; $filter supports `resourceType eq '...'` and `name eq '...'` joined by `and`.
      info.resourceType = "Microsoft.Resources/resources";
      info.operation = "Microsoft.Resources/subscriptions/resources/read";
      const filter = url.searchParams.get("$filter") ?? "";
      const want: { resourcetype?: string; name?: string } = {};
      for (const clause of filter ? filter.split(/\s+and\s+/i) : []) {
        const m = /^\s*(resourceType|name)\s+eq\s+'([^']*)'\s*$/i.exec(clause);
        if (!m) throw new ArmError(400, "InvalidFilterInQueryString", `The filter clause '${clause}' is not supported by this emulator (only resourceType eq '...' and name eq '...').`);
        want[lc(m[1]!) as "resourcetype" | "name"] = lc(m[2]!);
      }
      const items = [...this.arm.resources.values()].filter((r) => r.sub === sub && r.rg !== "" && !r.parentKey &&
        (want.resourcetype === undefined || lc(r.type) === want.resourcetype) && (want.name === undefined || lc(r.name) === want.name));
      const shown = this.visible(req, subScope, info.operation, items);
      const byId = new Map(items.map((r) => [lc(r.id), r]));
      return { status: 200, body: { value: shown.map((b) => {
        const r = byId.get(lc(String(b.id)))!;
        return { id: r.id, name: r.name, type: r.type, location: r.body.location, tags: r.body.tags ?? {} };
      }) } };
    }
    if (l2 === "operationresults" && seg.length === 4) {
      info.resourceType = "Microsoft.Resources/operationResults";
      info.operation = "Microsoft.Resources/subscriptions/operationresults/read";
      return this.operationResult(seg[3]!, apiVersion);
    }
    if (l2 === "resourcegroups") return this.resourceGroups(req, sub, seg.slice(3), info);
    if (l2 === "providers") {
      const ns = seg[3] ?? "";
      const rest = seg.slice(4);
      if (rest.length === 4 && eqi(rest[0], "locations") && (eqi(rest[2], "operations") || eqi(rest[2], "operationResults") || eqi(rest[2], "asyncoperations"))) {
        info.resourceType = `${ns}/locations/operations`;
        info.operation = `${ns}/locations/operations/read`;
        if (eqi(rest[2], "operationResults")) return this.operationResult(rest[3]!, apiVersion);
        const op = this.arm.ops.get(lc(rest[3]!));
        if (!op) throw new ArmError(404, "NotFound", `The operation '${rest[3]}' was not found.`);
        return { status: 200, body: this.arm.opStatusBody(op), headers: op.status === "InProgress" ? { "retry-after": String(this.d.settings.lroRetryAfterS) } : {} };
      }
      // Platform image versions: .../locations/{l}/publishers/{p}/artifacttypes/vmimage/offers/{o}/skus/{s}/versions[/{v}]
      if (eqi(ns, "Microsoft.Compute") && (rest.length === 11 || rest.length === 12) && eqi(rest[0], "locations") && eqi(rest[2], "publishers") && eqi(rest[4], "artifacttypes") && eqi(rest[5], "vmimage") && eqi(rest[6], "offers") && eqi(rest[8], "skus") && eqi(rest[10], "versions")) {
        info.resourceType = "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions";
        info.operation = "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read";
        this.authorize(req.caller, info.operation, subScope);
        const [loc, pub, offer, sku] = [rest[1]!, rest[3]!, rest[7]!, rest[9]!];
        if (!LOCATIONS.some((l) => l.name === lc(loc))) throw new ArmError(404, "NoRegisteredProviderFound", `No registered resource provider found for location '${loc}'.`);
        const found = platformImage(pub, offer, sku, rest[11] ?? "latest");
        const view = (v: string): Json => ({ location: lc(loc), name: v, id: `${subScope}/providers/Microsoft.Compute/Locations/${lc(loc)}/Publishers/${pub}/ArtifactTypes/VMImage/Offers/${offer}/Skus/${sku}/Versions/${v}` });
        if (rest.length === 12) {
          if (!found) throw new ArmError(404, "ImageVersionNotFound", `Artifact: VMImage was not found.`);
          return { status: 200, body: { ...view(found.version), properties: { osImage: { operatingSystem: "Linux" }, hyperVGeneration: "V2" } } };
        }
        if (!found) throw new ArmError(404, "ArtifactNotFound", `Artifact: VMImage was not found.`);
        return { status: 200, body: found.image.versions.map(view) };
      }
      if (eqi(ns, "Microsoft.Compute") && rest.length === 1 && eqi(rest[0], "skus")) {
        info.resourceType = "Microsoft.Compute/skus";
        info.operation = "Microsoft.Compute/skus/read";
        // An authorized read like any other (Reader's */read has it; the seed's custom roles do not).
        this.authorize(req.caller, info.operation, subScope);
        return { status: 200, body: { value: this.catalog.listSkus(url.searchParams.get("$filter") ?? undefined) } };
      }
      // Subscription-level lists: /subscriptions/s/providers/ns/type
      if (rest.length === 1) {
        const t = this.typeOrThrow(`${ns}/${rest[0]}`, apiVersion);
        info.resourceType = t.type;
        info.operation = `${t.type}/read`;
        if (method !== "GET") throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${method}'.`);
        const items = this.arm.allOfType(sub, t.type).filter((r) => !r.parentKey);
        return this.paged(req, this.visible(req, subScope, info.operation, items, t));
      }
    }
    throw new ArmError(404, "NotFound", `No route for ${method} ${url.pathname}.`);
  }

  /**
   * A resource list, one page of it when `listPageSize` is set: Resource Manager pages long lists
   * and gives the next page's URL in `nextLink` (the same query with a `$skiptoken`), which a
   * client must follow to see the rest. Whole when unset (the default).
   */
  private paged(req: ArmRequest, all: Json[]): ArmResponse {
    const size = this.d.settings.listPageSize;
    if (!size || size <= 0) return { status: 200, body: { value: all } };
    const token = req.url.searchParams.get("$skiptoken");
    const from = token === null ? 0 : Number.parseInt(token, 10);
    if (!Number.isInteger(from) || from < 0) throw new ArmError(400, "InvalidSkipToken", `The skip token '${token}' is not valid.`);
    const value = all.slice(from, from + size);
    if (from + size >= all.length) return { status: 200, body: { value } };
    const next = new URL(req.url.toString());
    next.searchParams.set("$skiptoken", String(from + size));
    return { status: 200, body: { value, nextLink: `${this.d.baseUrl()}${next.pathname}${next.search}` } };
  }

  private requireAnyAccess(caller: Caller, scope: string, action: string): void {
    if (!this.rbac.hasAnyAccess(caller.oid, scope)) throw new ArmError(403, "AuthorizationFailed", authorizationFailedMessage(caller.appId, caller.oid, action, scope));
  }

  private listSubscriptions(caller: Caller): Json[] {
    const out: Json[] = [];
    for (const s of this.d.dir.subscriptions.values()) {
      if (s.tenantId === lc(caller.tid) && this.rbac.hasAnyAccess(caller.oid, `/subscriptions/${s.id}`)) out.push(this.subscriptionBody(s.id));
    }
    return out;
  }

  subscriptionBody(sub: string): Json {
    const s = this.d.dir.subscriptions.get(sub)!;
    return {
      id: `/subscriptions/${s.id}`,
      authorizationSource: "RoleBased",
      managedByTenants: [],
      subscriptionId: s.id,
      tenantId: s.tenantId,
      displayName: s.displayName,
      state: "Enabled",
      subscriptionPolicies: { locationPlacementId: "Public_2014-09-01", quotaId: "PayAsYouGo_2014-09-01", spendingLimit: "Off" },
    };
  }

  private operationResult(opId: string, apiVersion: string): ArmResponse {
    const op = this.arm.ops.get(lc(opId));
    if (!op) throw new ArmError(404, "NotFound", `The operation '${opId}' was not found.`);
    if (op.status === "InProgress") return { status: 202, headers: { location: this.arm.locationUrl(op, apiVersion), "retry-after": String(this.d.settings.lroRetryAfterS) } };
    if (op.status === "Failed") {
      const e = op.error ?? { code: "InternalServerError", message: "The operation failed." };
      return { status: e.code === "AllocationFailed" || e.code === "Conflict" ? 409 : 400, body: { error: e } };
    }
    return { status: op.resultStatus, body: op.resultBody };
  }

  private typeOrThrow(type: string, apiVersion: string): TypeDef {
    const t = this.arm.typeDef(type);
    if (!t) {
      const [ns, ...rest] = type.split("/");
      throw new ArmError(400, "InvalidResourceType", `The resource type '${rest.join("/")}' could not be found in the namespace '${ns}' for api version '${apiVersion}'.`);
    }
    return t;
  }

  /** Items of a list the caller may read: all when allowed at the list scope, else those allowed one by one. */
  private visible(req: ArmRequest, scope: string, action: string, items: Stored[], t?: TypeDef): Json[] {
    const ctx: OpCtx = { ...this.ctx(req), listScope: "subscription", listedIn: lc(scope) };
    let shown = items;
    if (!this.rbac.allowed(req.caller.oid, action, scope, false)) {
      shown = items.filter((r) => this.rbac.allowed(req.caller.oid, action, r.id, false));
      if (shown.length === 0 && !this.rbac.hasAnyAccess(req.caller.oid, scope)) this.authorize(req.caller, action, scope);
    }
    if (t?.listView) return t.listView(ctx, shown);
    return shown.map((r) => (t?.view ? t.view(ctx, r) : r.body));
  }

  // ---- resource groups -------------------------------------------------------------------------

  private resourceGroups(req: ArmRequest, sub: string, rest: string[], info: RouteInfo): ArmResponse {
    const subScope = `/subscriptions/${sub}`;
    info.resourceType = RG_TYPE;
    if (rest.length === 0) {
      info.operation = "Microsoft.Resources/subscriptions/resourceGroups/read";
      const items = this.arm.children(subScope, RG_TYPE).filter(tagFilter(req.url.searchParams.get("$filter") ?? ""));
      return { status: 200, body: { value: this.visible(req, subScope, info.operation, items) } };
    }
    const rgName = rest[0]!;
    const rgScope = `/subscriptions/${sub}/resourceGroups/${rgName}`;
    if (rest.length > 1) {
      if (lc(rest[1]!) === "providers") return this.provider(req, sub, rgName, rest.slice(2), info);
      if (lc(rest[1]!) === "resources" && rest.length === 2) {
        info.resourceType = "Microsoft.Resources/resources";
        info.operation = "Microsoft.Resources/subscriptions/resourceGroups/resources/read";
        this.authorize(req.caller, info.operation, rgScope);
        this.rgOrThrow(sub, rgName);
        const prefix = lc(rgScope) + "/";
        const out: Json[] = [];
        for (const r of this.arm.resources.values()) {
          if (r.key.startsWith(prefix) && !r.parentKey) out.push({ id: r.id, name: r.name, type: r.type, location: r.body.location, tags: r.body.tags });
        }
        return { status: 200, body: { value: out } };
      }
      throw new ArmError(404, "NotFound", `No route for ${req.method} ${req.url.pathname}.`);
    }
    const method = req.method;
    const existing = this.arm.get(rgScope);
    if (method === "GET" || method === "HEAD") {
      info.operation = "Microsoft.Resources/subscriptions/resourceGroups/read";
      this.authorize(req.caller, info.operation, existing?.id ?? rgScope);
      if (!existing) {
        if (method === "HEAD") return { status: 404 };
        throw new ArmError(404, "ResourceGroupNotFound", `Resource group '${rgName}' could not be found.`);
      }
      return method === "HEAD" ? { status: 204 } : { status: 200, body: existing.body };
    }
    if (method === "PUT" || method === "PATCH") {
      info.operation = "Microsoft.Resources/subscriptions/resourceGroups/write";
      this.authorize(req.caller, info.operation, existing?.id ?? rgScope);
      const body = req.body ?? {};
      if (existing?.deleting) throw new ArmError(409, "ResourceGroupBeingDeleted", `The resource group '${existing.name}' is in deprovisioning state and cannot perform this operation.`);
      if (method === "PATCH") {
        if (!existing) throw new ArmError(404, "ResourceGroupNotFound", `Resource group '${rgName}' could not be found.`);
        if (body.tags !== undefined) existing.body.tags = body.tags;
        return { status: 200, body: existing.body };
      }
      if (!/^[-\w._()]{1,90}$/.test(rgName) || rgName.endsWith(".")) {
        throw new ArmError(400, "InvalidResourceGroup", `The provided resource group name '${rgName}' has these invalid characters: '${rgName.replace(/[-\w._()]/g, "")}'. The name can only be a letter, digit, '-', '.', '(', ')' or '_'.`);
      }
      const location = typeof body.location === "string" ? normLocation(body.location) : "";
      if (!location) throw new ArmError(400, "LocationRequired", "The location property is required for this definition.");
      requireKnownLocation(location, "resourceGroups");
      if (existing) {
        if (normLocation(existing.body.location) !== location) {
          throw new ArmError(409, "InvalidResourceGroupLocation", `Invalid resource group location '${location}'. The Resource group already exists in location '${existing.body.location}'.`);
        }
        existing.body.tags = body.tags ?? {};
        if (body.managedBy !== undefined) existing.body.managedBy = body.managedBy;
        return { status: 200, body: existing.body };
      }
      const rb: Json = { id: rgScope, name: rgName, type: RG_TYPE, location, properties: { provisioningState: "Succeeded" } };
      if (body.tags) rb.tags = body.tags;
      if (body.managedBy) rb.managedBy = body.managedBy;
      this.arm.put({ id: rgScope, key: lc(rgScope), type: RG_TYPE, name: rgName, sub, rg: "", body: rb, x: {} });
      return { status: 201, body: rb };
    }
    if (method === "DELETE") {
      info.operation = "Microsoft.Resources/subscriptions/resourceGroups/delete";
      this.authorize(req.caller, info.operation, existing?.id ?? rgScope);
      if (!existing) throw new ArmError(404, "ResourceGroupNotFound", `Resource group '${rgName}' could not be found.`);
      const force = (req.url.searchParams.get("forceDeletionTypes") ?? "").split(",").map((s) => lc(s.trim())).filter(Boolean);
      for (const f of force) {
        if (f !== "microsoft.compute/virtualmachines" && f !== "microsoft.compute/virtualmachinescalesets") {
          throw new ArmError(400, "InvalidForceDeletionTypes", `The value '${f}' of forceDeletionTypes is not supported. Supported values: Microsoft.Compute/virtualMachines, Microsoft.Compute/virtualMachineScaleSets.`);
        }
      }
      if (existing.deleting && existing.pendingOp) {
        const op = existing.pendingOp;
        return { status: 202, headers: this.arm.opHeaders(op, req.url.searchParams.get("api-version")!, { location: true }) };
      }
      existing.deleting = true;
      existing.body.properties.provisioningState = "Deleting";
      const op = this.arm.startOp("Microsoft.Resources", sub, existing.body.location, this.arm.latencyFor(RG_TYPE), () => this.deleteResourceGroupNow(existing));
      existing.pendingOp = op;
      return { status: 202, headers: this.arm.opHeaders(op, req.url.searchParams.get("api-version")!, { location: true }) };
    }
    throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${method}'.`);
  }

  /** Deletes everything in a resource group (dependents first), then the group and role assignments under it. */
  deleteResourceGroupNow(rg: Stored): void {
    const prefix = rg.key + "/";
    const order = [
      "microsoft.compute/virtualmachines",
      "microsoft.network/networkinterfaces",
      "microsoft.network/publicipaddresses",
      "microsoft.compute/disks",
      "microsoft.insights/datacollectionrules",
      "microsoft.insights/datacollectionendpoints",
      "microsoft.operationalinsights/workspaces",
      "microsoft.network/virtualnetworks",
      "microsoft.managedidentity/userassignedidentities",
    ];
    const top = [...this.arm.resources.values()].filter((r) => r.key.startsWith(prefix) && !r.parentKey);
    const rank = (r: Stored): number => {
      const i = order.indexOf(lc(r.type));
      return i < 0 ? order.length : i;
    };
    top.sort((a, b) => rank(a) - rank(b));
    for (const r of top) {
      if (!this.arm.resources.has(r.key)) continue;
      this.arm.remove(r, true);
    }
    for (const a of [...this.rbac.assignments.values()]) if (scopeWithin(a.scope, rg.id)) this.rbac.removeAssignment(a.name, this.d.settings.roleAssignmentRemovalDelayMs);
    this.arm.remove(rg);
  }

  // ---- provider resources ----------------------------------------------------------------------

  private provider(req: ArmRequest, sub: string, rgName: string, rest: string[], info: RouteInfo): ArmResponse {
    const ns = rest[0] ?? "";
    const tail = rest.slice(1);
    const apiVersion = req.url.searchParams.get("api-version")!;
    const rgScope = `/subscriptions/${sub}/resourceGroups/${rgName}`;
    if (tail.length === 0) throw new ArmError(404, "NotFound", `No route for ${req.method} ${req.url.pathname}.`);
    // Walk type/name pairs; an odd tail ends with a collection (GET), an action (POST) or a sub-GET.
    const pairs = Math.floor(tail.length / 2);
    const typeSegs: string[] = [];
    for (let i = 0; i < pairs; i++) typeSegs.push(tail[2 * i]!);
    const last = tail.length % 2 === 1 ? tail[tail.length - 1]! : undefined;
    if (last !== undefined && pairs >= 1 && !this.arm.typeDef(`${ns}/${[...typeSegs, last].join("/")}`)) {
      // action or sub-GET on the resource named by the pairs
      const t = this.typeOrThrow(`${ns}/${typeSegs.join("/")}`, apiVersion);
      const id = `${rgScope}/providers/${ns}/${tail.slice(0, pairs * 2).join("/")}`;
      info.resourceType = t.type;
      const ctx = this.ctx(req);
      if (req.method === "GET" && t.subGets?.[lc(last)]) {
        info.operation = `${t.type}/read`;
        this.authorize(req.caller, info.operation, id);
        this.rgOrThrow(sub, rgName);
        const res = this.arm.get(id);
        if (!res) throw notFound(t.type, tail[pairs * 2 - 1]!, rgName);
        return { status: 200, body: t.subGets[lc(last)]!(ctx, res) };
      }
      const action = t.actions?.[lc(last)];
      if (req.method !== "POST" || !action) throw new ArmError(404, "NotFound", `No route for ${req.method} ${req.url.pathname}.`);
      info.operation = `${t.type}/${last}/action`;
      this.authorize(req.caller, info.operation, id);
      this.rgOrThrow(sub, rgName);
      const res = this.arm.get(id);
      if (!res) throw notFound(t.type, tail[pairs * 2 - 1]!, rgName);
      const out = action(ctx, res, req.body ?? {});
      if (out.op) return { status: 202, headers: this.arm.opHeaders(out.op, apiVersion, { async: true, location: true }) };
      return { status: out.status ?? 200, body: out.body };
    }
    const fullType = `${ns}/${[...typeSegs, ...(last !== undefined ? [last] : [])].join("/")}`;
    const t = this.typeOrThrow(fullType, apiVersion);
    info.resourceType = t.type;
    const ctx = this.ctx(req);
    if (last !== undefined) {
      // collection
      info.operation = `${t.type}/read`;
      if (req.method !== "GET") throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${req.method}'.`);
      const parentId = pairs > 0 ? `${rgScope}/providers/${ns}/${tail.slice(0, pairs * 2).join("/")}` : undefined;
      const listScope = parentId ?? rgScope;
      this.authorize(req.caller, info.operation, listScope);
      this.rgOrThrow(sub, rgName);
      if (parentId) {
        const parent = this.arm.get(parentId);
        if (!parent) throw notFound(this.arm.typeDef(`${ns}/${typeSegs.join("/")}`)?.type ?? `${ns}/${typeSegs.join("/")}`, tail[pairs * 2 - 1]!, rgName);
        return this.paged(req, this.listOut(ctx, t, this.arm.children(parent.key, t.type)));
      }
      return this.paged(req, this.listOut({ ...ctx, listedIn: lc(rgScope) }, t, this.arm.children(lc(rgScope), t.type)));
    }
    const id = `${rgScope}/providers/${ns}/${tail.join("/")}`;
    const name = tail[tail.length - 1]!;
    const parentId = pairs > 1 ? `${rgScope}/providers/${ns}/${tail.slice(0, tail.length - 2).join("/")}` : undefined;
    const existing = this.arm.get(id);
    const canonicalId = existing?.id ?? id;
    switch (req.method) {
      case "GET":
      case "HEAD": {
        info.operation = `${t.type}/read`;
        this.authorize(req.caller, info.operation, canonicalId);
        this.rgOrThrow(sub, rgName);
        if (!existing) {
          if (req.method === "HEAD") return { status: 404 };
          throw notFound(t.type, name, rgName);
        }
        return req.method === "HEAD" ? { status: 204 } : { status: 200, body: t.view ? t.view(ctx, existing) : existing.body };
      }
      case "PUT": {
        info.operation = `${t.type}/write`;
        this.authorize(req.caller, info.operation, canonicalId);
        const rg = this.rgOrThrow(sub, rgName);
        if (rg.deleting) throw new ArmError(409, "ResourceGroupBeingDeleted", `The resource group '${rg.name}' is in deprovisioning state and cannot perform this operation.`);
        let parent: Stored | undefined;
        if (parentId) {
          parent = this.arm.get(parentId);
          if (!parent) {
            throw new ArmError(404, "ParentResourceNotFound", `Can not perform requested operation on nested resource. Parent resource '${tail.slice(0, tail.length - 2).filter((_, i) => i % 2 === 1).join("/")}' not found.`);
          }
        }
        if (existing?.deleting) throw new ArmError(409, "Conflict", `The resource '${existing.id}' is being deleted; the operation cannot be performed now.`);
        if (existing?.pendingOp && existing.pendingOp.status === "InProgress" && lc(t.type) === "microsoft.compute/virtualmachines") {
          throw new ArmError(409, "OperationNotAllowed", `Operation 'Update' is not allowed since the virtual machine '${existing.name}' is in the middle of another operation.`);
        }
        const body = req.body;
        if (!isObject(body)) throw new ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized: the body must be a JSON object.");
        if (t.inResourceGroup && !parent && t.putMode !== "sync" && typeof body.location !== "string") {
          throw new ArmError(400, "LocationRequired", "The location property is required for this definition.");
        }
        const outcome = t.put(ctx, { id: canonicalId, name: existing?.name ?? name, sub, rg: lc(rgName), parent, existing, body });
        const res: Stored = existing ?? { id: canonicalId, key: lc(canonicalId), type: t.type, name, sub, rg: lc(rgName), parentKey: parent?.key, body: {}, x: {} };
        res.body = outcome.body;
        if (outcome.x) res.x = outcome.x;
        this.arm.put(res);
        outcome.after?.(res);
        const created = !existing;
        if (t.putMode === "sync") {
          outcome.complete?.(res, { status: "Succeeded" } as Operation);
          return { status: created ? 201 : 200, body: t.view ? t.view(ctx, res) : res.body };
        }
        const props = (res.body.properties ??= {});
        const finalState = props.provisioningState === "Failed" ? "Failed" : "Succeeded";
        props.provisioningState = created ? (t.creatingState ?? "Creating") : "Updating";
        const op = this.arm.startOp(ns, sub, res.body.location ?? parent?.body.location ?? rg.body.location, this.arm.latencyFor(t.type), (o) => {
          if (res.pendingOp === o) res.pendingOp = undefined;
          if (!this.arm.resources.has(res.key)) return;
          res.body.properties.provisioningState = finalState;
          outcome.complete?.(res, o);
          if (o.status === "Failed" || res.body.properties.provisioningState === "Failed") res.body.properties.provisioningState = "Failed";
        });
        if (op.status === "InProgress") res.pendingOp = op;
        const view = t.view ? t.view(ctx, res) : res.body;
        if (t.putMode === "body") return { status: created ? 201 : 200, body: view };
        return { status: created ? 201 : 200, body: view, headers: this.arm.opHeaders(op, apiVersion, { async: true }) };
      }
      case "PATCH": {
        info.operation = `${t.type}/write`;
        this.authorize(req.caller, info.operation, canonicalId);
        this.rgOrThrow(sub, rgName);
        if (!existing) throw notFound(t.type, name, rgName);
        const body = req.body ?? {};
        if (t.patch) t.patch(ctx, existing, body);
        else if (body.tags !== undefined) existing.body.tags = body.tags;
        return { status: 200, body: t.view ? t.view(ctx, existing) : existing.body };
      }
      case "DELETE": {
        info.operation = `${t.type}/delete`;
        this.authorize(req.caller, info.operation, canonicalId);
        this.rgOrThrow(sub, rgName);
        if (!existing) return { status: t.deleteMissing?.(ctx, { sub, rg: rgName, name }) ? 200 : 204 };
        if (existing.deleting && existing.pendingOp) {
          return { status: 202, headers: this.arm.opHeaders(existing.pendingOp, apiVersion, { async: t.deleteMode === "async", location: true }) };
        }
        t.beforeDelete?.(ctx, existing);
        if (t.deleteMode === "sync") {
          this.arm.remove(existing);
          return { status: 200 };
        }
        existing.deleting = true;
        if (existing.body.properties) existing.body.properties.provisioningState = "Deleting";
        const op = this.arm.startOp(ns, sub, existing.body.location ?? "global", this.arm.deleteLatencyFor(t.type, existing.id), () => {
          this.arm.remove(existing);
        });
        if (op.status === "InProgress") existing.pendingOp = op;
        return { status: 202, headers: this.arm.opHeaders(op, apiVersion, { async: t.deleteMode === "async", location: true }) };
      }
      default:
        throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${req.method}'.`);
    }
  }

  private listOut(ctx: OpCtx, t: TypeDef, items: Stored[]): Json[] {
    if (t.listView) return t.listView({ ...ctx, listScope: "resourceGroup" }, items);
    return items.map((r) => (t.view ? t.view(ctx, r) : r.body));
  }

  // ---- Microsoft.Authorization -----------------------------------------------------------------

  private authorization(req: ArmRequest, scopeSeg: string[], rest: string[], info: RouteInfo): ArmResponse {
    const scope = scopeSeg.length ? "/" + scopeSeg.join("/") : "";
    const kind = lc(rest[0] ?? "");
    const caller = req.caller;
    // The scope must exist (and belong to the caller's tenant) unless it is the root.
    let subId: string | undefined;
    if (scopeSeg.length) {
      if (lc(scopeSeg[0]!) !== "subscriptions" || !scopeSeg[1]) throw new ArmError(400, "InvalidScope", `The scope '${scope}' is not valid.`);
      subId = lc(scopeSeg[1]);
      this.subscriptionOrThrow(caller, subId);
    }
    if (kind === "roledefinitions") {
      info.resourceType = "Microsoft.Authorization/roleDefinitions";
      return this.roleDefinitions(req, scope, rest.slice(1), info);
    }
    if (kind === "roleassignments") {
      info.resourceType = "Microsoft.Authorization/roleAssignments";
      if (!subId && rest.length > 1) throw new ArmError(400, "InvalidScope", "Role assignments need a subscription, resource group or resource scope.");
      return this.roleAssignments(req, scope, rest.slice(1), info);
    }
    if (kind === "permissions" && rest.length === 1 && subId) {
      // What the caller may do at a scope: the permission blocks of every role assigned to it at
      // or above the scope (one per assignment, as Azure lists them). Needs permissions/read (Reader).
      info.resourceType = "Microsoft.Authorization/permissions";
      info.operation = "Microsoft.Authorization/permissions/read";
      if (req.method !== "GET") throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${req.method}'.`);
      this.scopeExistsOrThrow(scope);
      this.authorize(caller, info.operation, scope);
      const value: Json[] = [];
      for (const a of this.rbac.effectiveAssignmentsOf(caller.oid)) {
        if (!scopeWithin(scope, a.scope)) continue;
        const role = this.rbac.roleDefinition(Rbac.roleGuid(a.roleDefinitionId));
        for (const p of role?.permissions ?? []) value.push({ actions: p.actions, notActions: p.notActions, dataActions: p.dataActions, notDataActions: p.notDataActions });
      }
      return { status: 200, body: { value } };
    }
    throw new ArmError(400, "InvalidResourceType", `The resource type '${rest[0]}' could not be found in the namespace '${AUTH_NS}'.`);
  }

  private scopeExistsOrThrow(scope: string): void {
    if (!scope) return;
    const p = trimSlash(scope).split("/").filter(Boolean);
    if (p.length >= 4 && lc(p[2]!) === "resourcegroups") {
      this.rgOrThrow(lc(p[1]!), p[3]!);
      if (p.length > 4 && !this.arm.get(scope)) throw new ArmError(404, "ResourceNotFound", `The resource '${scope}' was not found.`);
    }
  }

  roleDefinitionBody(def: RoleDefinition, scope: string): Json {
    return {
      id: `${scope}/providers/Microsoft.Authorization/roleDefinitions/${def.name}`,
      type: "Microsoft.Authorization/roleDefinitions",
      name: def.name,
      properties: {
        roleName: def.roleName,
        type: def.type,
        description: def.description,
        assignableScopes: def.assignableScopes,
        permissions: def.permissions,
        createdOn: def.createdOn,
        updatedOn: def.updatedOn,
        createdBy: def.createdBy ?? null,
        updatedBy: def.updatedBy ?? null,
      },
    };
  }

  private visibleDefinitions(scope: string, tenantId: string): RoleDefinition[] {
    const custom = [...this.rbac.customRoles.values()].filter(
      (d) => d.tenantId === tenantId && (scope === "" || d.assignableScopes.some((a) => scopeWithin(scope, a) || scopeWithin(a, scope))),
    );
    return [...BUILT_IN_ROLES, ...custom];
  }

  private roleDefinitions(req: ArmRequest, scope: string, rest: string[], info: RouteInfo): ArmResponse {
    const caller = req.caller;
    const tenantId = lc(caller.tid);
    const authScope = scope || "/";
    if (rest.length === 0) {
      info.operation = "Microsoft.Authorization/roleDefinitions/read";
      if (req.method !== "GET") throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${req.method}'.`);
      this.authorize(caller, info.operation, authScope);
      this.scopeExistsOrThrow(scope);
      let defs = this.visibleDefinitions(scope, tenantId);
      const filter = req.url.searchParams.get("$filter") ?? "";
      const byName = /roleName\s+eq\s+'([^']*)'/i.exec(filter);
      const byType = /type\s+eq\s+'([^']*)'/i.exec(filter);
      if (byName) defs = defs.filter((d) => d.roleName === byName[1]);
      if (byType) defs = defs.filter((d) => lc(d.type) === lc(byType[1]!));
      return { status: 200, body: { value: defs.map((d) => this.roleDefinitionBody(d, scope)) } };
    }
    const guid = rest[0]!;
    if (rest.length > 1) throw new ArmError(404, "NotFound", `No route for ${req.method} ${req.url.pathname}.`);
    const def = this.rbac.roleDefinition(guid);
    const visible = def && (def.type === "BuiltInRole" || def.tenantId === tenantId);
    switch (req.method) {
      case "GET": {
        info.operation = "Microsoft.Authorization/roleDefinitions/read";
        this.authorize(caller, info.operation, authScope);
        this.scopeExistsOrThrow(scope);
        if (!def || !visible) throw new ArmError(404, "RoleDefinitionDoesNotExist", `The specified role definition with ID '${guid}' does not exist.`);
        return { status: 200, body: this.roleDefinitionBody(def, scope) };
      }
      case "PUT": {
        info.operation = "Microsoft.Authorization/roleDefinitions/write";
        this.authorize(caller, info.operation, authScope);
        if (!scope) throw new ArmError(400, "InvalidScope", "Custom role definitions are written at a subscription, resource group or resource scope.");
        this.scopeExistsOrThrow(scope);
        if (!isGuid(guid)) throw new ArmError(400, "InvalidRoleDefinitionId", `The role definition ID '${guid}' is not valid. It must be a GUID.`);
        if (def?.type === "BuiltInRole") throw new ArmError(403, "BuiltInRoleDefinitionCannotBeModified", "Built-in role definitions cannot be modified.");
        const p = (req.body?.properties ?? {}) as Json;
        const roleName = typeof p.roleName === "string" ? p.roleName.trim() : "";
        if (!roleName) throw new ArmError(400, "InvalidRoleDefinitionName", "The role definition name must not be empty.");
        const assignable: string[] = Array.isArray(p.assignableScopes) ? p.assignableScopes.map(String) : [];
        if (assignable.length === 0) throw new ArmError(400, "MissingAssignableScopes", "The role definition must have at least one assignable scope.");
        for (const a of assignable) {
          const parts = trimSlash(a).split("/").filter(Boolean);
          if (parts.length < 2 || lc(parts[0]!) !== "subscriptions" || !this.d.dir.subscriptions.has(lc(parts[1]!))) {
            throw new ArmError(400, "InvalidAssignableScope", `The assignable scope '${a}' is not valid or does not exist.`);
          }
          if (this.d.dir.subscriptions.get(lc(parts[1]!))!.tenantId !== tenantId) throw new ArmError(400, "InvalidAssignableScope", `The assignable scope '${a}' belongs to another tenant.`);
          this.authorize(caller, info.operation, a);
        }
        if (!assignable.some((a) => scopeWithin(scope, a) || scopeWithin(a, scope))) {
          throw new ArmError(400, "RoleDefinitionScopeNotInAssignableScopes", `The scope '${scope}' of the request is not in the assignable scopes of the role definition.`);
        }
        for (const other of this.rbac.customRoles.values()) {
          if (other.tenantId === tenantId && lc(other.name) !== lc(guid) && lc(other.roleName) === lc(roleName)) {
            throw new ArmError(409, "RoleDefinitionWithSameNameExists", "A custom role with the same name already exists in this directory. Use a different name.");
          }
        }
        const perms = Array.isArray(p.permissions) ? (p.permissions as Json[]).map((x) => normPermission(x)) : [];
        if (perms.length === 0) throw new ArmError(400, "InvalidRoleDefinitionPermissions", "The role definition must have at least one permission.");
        for (const pm of perms) {
          for (const a of [...pm.actions, ...pm.notActions, ...pm.dataActions, ...pm.notDataActions]) {
            if (typeof a !== "string" || !/^[\w.*-]+(\/[\w.*-]+)*$/.test(a)) throw new ArmError(400, "InvalidActionOrNotAction", `'${String(a)}' is not a valid action or notAction.`);
          }
          for (const a of pm.dataActions) {
            if (a === "*") throw new ArmError(400, "InvalidDataAction", "'*' is not allowed as a data action.");
          }
        }
        const now = new Date(this.d.now()).toISOString();
        const nd: RoleDefinition = {
          name: lc(guid),
          roleName,
          description: typeof p.description === "string" ? p.description : "",
          type: "CustomRole",
          permissions: perms,
          assignableScopes: assignable,
          createdOn: def?.createdOn ?? now,
          updatedOn: now,
          createdBy: def?.createdBy ?? caller.oid,
          updatedBy: caller.oid,
          scope,
          tenantId,
        };
        this.rbac.customRoles.set(lc(guid), nd);
        return { status: 201, body: this.roleDefinitionBody(nd, scope) };
      }
      case "DELETE": {
        info.operation = "Microsoft.Authorization/roleDefinitions/delete";
        this.authorize(caller, info.operation, authScope);
        if (!def || !visible) return { status: 204 };
        if (def.type === "BuiltInRole") throw new ArmError(403, "BuiltInRoleDefinitionCannotBeModified", "Built-in role definitions cannot be deleted.");
        // Assignments deleted a moment ago still count until the caches drop them.
        if (this.rbac.roleHasAssignments(def.name)) {
          throw new ArmError(409, "RoleDefinitionHasAssignments", "There are existing role assignments referencing role (code: RoleDefinitionHasAssignments).");
        }
        this.rbac.customRoles.delete(def.name);
        return { status: 200, body: this.roleDefinitionBody(def, scope) };
      }
      default:
        throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${req.method}'.`);
    }
  }

  assignmentBody(a: RoleAssignment): Json {
    return {
      id: `${a.scope}/providers/Microsoft.Authorization/roleAssignments/${a.name}`,
      type: "Microsoft.Authorization/roleAssignments",
      name: a.name,
      properties: {
        roleDefinitionId: a.roleDefinitionId,
        principalId: a.principalId,
        principalType: a.principalType,
        scope: a.scope,
        condition: a.condition ?? null,
        conditionVersion: a.condition ? "2.0" : null,
        createdOn: a.createdOn,
        updatedOn: a.updatedOn,
        createdBy: a.createdBy ?? null,
        updatedBy: a.updatedBy ?? null,
        delegatedManagedIdentityResourceId: null,
        description: a.description ?? null,
      },
    };
  }

  private roleAssignments(req: ArmRequest, scope: string, rest: string[], info: RouteInfo): ArmResponse {
    const caller = req.caller;
    const authScope = scope || "/";
    if (rest.length === 0) {
      info.operation = "Microsoft.Authorization/roleAssignments/read";
      if (req.method !== "GET") throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${req.method}'.`);
      this.authorize(caller, info.operation, authScope);
      this.scopeExistsOrThrow(scope);
      const filter = req.url.searchParams.get("$filter") ?? "";
      const atScope = /atScope\(\)/i.test(filter);
      const principal = /(?:principalId\s+eq\s+|assignedTo\()'([^']*)'/i.exec(filter)?.[1];
      const tenantSubs = new Set([...this.d.dir.subscriptions.values()].filter((s) => s.tenantId === lc(caller.tid)).map((s) => s.id));
      const out: Json[] = [];
      for (const a of this.rbac.assignments.values()) {
        const aSub = lc(trimSlash(a.scope).split("/")[2] ?? "");
        if (!tenantSubs.has(aSub)) continue;
        const above = scopeWithin(scope, a.scope);
        const below = scopeWithin(a.scope, scope);
        if (atScope ? !above : !(above || below)) continue;
        if (principal && lc(a.principalId) !== lc(principal)) continue;
        out.push(this.assignmentBody(a));
      }
      return { status: 200, body: { value: out } };
    }
    if (rest.length > 1) throw new ArmError(404, "NotFound", `No route for ${req.method} ${req.url.pathname}.`);
    const name = rest[0]!;
    const existing = this.rbac.assignments.get(lc(name));
    const mine = existing && lc(trimSlash(existing.scope)) === lc(trimSlash(scope)) ? existing : undefined;
    switch (req.method) {
      case "GET": {
        info.operation = "Microsoft.Authorization/roleAssignments/read";
        this.authorize(caller, info.operation, authScope);
        if (!mine) throw new ArmError(404, "RoleAssignmentNotFound", `The role assignment '${name}' is not found.`);
        return { status: 200, body: this.assignmentBody(mine) };
      }
      case "PUT": {
        info.operation = "Microsoft.Authorization/roleAssignments/write";
        this.authorize(caller, info.operation, authScope);
        this.scopeExistsOrThrow(scope);
        if (!isGuid(name)) throw new ArmError(400, "InvalidRoleAssignmentId", `The role assignment ID '${name}' is not valid. The role assignment ID must be a GUID.`);
        const p = (req.body?.properties ?? {}) as Json;
        const roleDefinitionId = typeof p.roleDefinitionId === "string" ? p.roleDefinitionId : "";
        const principalId = typeof p.principalId === "string" ? lc(p.principalId) : "";
        if (!roleDefinitionId) throw new ArmError(400, "InvalidRoleDefinitionId", "The role definition ID must be provided.");
        if (!principalId || !isGuid(principalId)) throw new ArmError(400, "InvalidPrincipalId", `A valid principal ID must be provided for role assignment (got '${principalId}').`);
        const roleGuid = Rbac.roleGuid(roleDefinitionId);
        const def = this.rbac.roleDefinition(roleGuid);
        if (!def || (def.type === "CustomRole" && def.tenantId !== lc(caller.tid))) {
          throw new ArmError(400, "RoleDefinitionDoesNotExist", `The specified role definition with ID '${roleGuid}' does not exist.`);
        }
        if (def.type === "CustomRole" && !def.assignableScopes.some((a) => scopeWithin(scope, a))) {
          throw new ArmError(400, "InvalidRoleAssignmentScope", `The role definition '${def.roleName}' (${def.name}) is not assignable at scope '${scope}': it is not within its assignable scopes.`);
        }
        const sub = this.d.dir.subscriptions.get(lc(trimSlash(scope).split("/")[2] ?? ""))!;
        const principal = this.d.dir.principal(principalId);
        const principalType = typeof p.principalType === "string" ? p.principalType : undefined;
        const replicating = principal && this.d.now() - principal.createdAtMs < this.d.settings.principalNotFoundWindowMs;
        if (!principal || principal.tenantId !== sub.tenantId || (replicating && !principalType)) {
          throw new ArmError(
            400,
            "PrincipalNotFound",
            `Principal ${principalId.replace(/-/g, "")} does not exist in the directory ${sub.tenantId}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype`,
          );
        }
        if (principalType && principalType !== "ServicePrincipal") {
          throw new ArmError(400, "UnmatchedPrincipalType", `The PrincipalId '${principalId.replace(/-/g, "")}' has type 'ServicePrincipal' , which is different from specified PrincipalType '${principalType}'.`);
        }
        if (existing) {
          if (lc(trimSlash(existing.scope)) !== lc(trimSlash(scope)) || existing.principalId !== principalId || Rbac.roleGuid(existing.roleDefinitionId) !== roleGuid) {
            throw new ArmError(400, "RoleAssignmentUpdateNotPermitted", "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.");
          }
          return { status: 201, body: this.assignmentBody(existing) };
        }
        for (const a of this.rbac.assignmentsOf(principalId)) {
          if (Rbac.roleGuid(a.roleDefinitionId) === roleGuid && lc(trimSlash(a.scope)) === lc(trimSlash(scope))) {
            throw new ArmError(409, "RoleAssignmentExists", "The role assignment already exists.");
          }
        }
        const now = new Date(this.d.now()).toISOString();
        const subScope = `/subscriptions/${sub.id}`;
        const a: RoleAssignment = {
          name: lc(name),
          scope: trimSlash(scope),
          roleDefinitionId: `${subScope}/providers/Microsoft.Authorization/roleDefinitions/${roleGuid}`,
          principalId,
          principalType: "ServicePrincipal",
          description: typeof p.description === "string" ? p.description : undefined,
          condition: typeof p.condition === "string" ? p.condition : undefined,
          createdOn: now,
          updatedOn: now,
          createdBy: caller.oid,
          updatedBy: caller.oid,
          // listed at once; counts in access checks once propagated
          ...(this.d.settings.roleAssignmentDelayMs > 0 ? { effectiveAtMs: Date.parse(now) + this.d.settings.roleAssignmentDelayMs } : {}),
        };
        this.rbac.addAssignment(a);
        return { status: 201, body: this.assignmentBody(a) };
      }
      case "DELETE": {
        info.operation = "Microsoft.Authorization/roleAssignments/delete";
        this.authorize(caller, info.operation, authScope);
        if (!mine) return { status: 204 };
        this.rbac.removeAssignment(mine.name, this.d.settings.roleAssignmentRemovalDelayMs);
        return { status: 200, body: this.assignmentBody(mine) };
      }
      default:
        throw new ArmError(405, "MethodNotAllowed", `The requested resource does not support http method '${req.method}'.`);
    }
  }
}

/** `$filter=tagName eq 'k' [and tagValue eq 'v']` as Resource Manager supports it on resource group lists. */
function tagFilter(filter: string): (r: Stored) => boolean {
  if (!filter.trim()) return () => true;
  const m = /^\s*tagName\s+eq\s+'([^']*)'(?:\s+and\s+tagValue\s+eq\s+'([^']*)')?\s*$/i.exec(filter);
  if (!m) throw new ArmError(400, "InvalidFilterInQueryString", `The filter '${filter}' is not supported: use tagName eq '<name>' [and tagValue eq '<value>'].`);
  const name = lc(m[1]!);
  const value = m[2];
  return (r) => {
    const e = Object.entries((r.body.tags ?? {}) as Record<string, string>).find(([k]) => lc(k) === name);
    return e !== undefined && (value === undefined || e[1] === value);
  };
}

function lastProvidersIndex(seg: string[]): number {
  for (let i = seg.length - 2; i >= 0; i--) if (lc(seg[i]!) === "providers") return i;
  return -1;
}

export function normLocation(l: string): string {
  return lc(l).replace(/\s+/g, "");
}

export function requireKnownLocation(location: string, what: string): void {
  if (!LOCATIONS.some((l) => l.name === location)) {
    throw new ArmError(
      400,
      "LocationNotAvailableForResourceType",
      `The provided location '${location}' is not available for resource type '${what}'. List of available regions for the resource type is '${LOCATIONS.map((l) => l.name).join(",")}'.`,
    );
  }
}
