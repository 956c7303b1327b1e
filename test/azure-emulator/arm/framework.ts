/* eslint-disable @typescript-eslint/no-explicit-any */
// A generic Azure Resource Manager: resource storage with case-insensitive IDs, PUT/GET/LIST/
// HEAD/DELETE/PATCH/POST dispatch to per-type definitions, long-running operations with the
// headers Azure sends, and the ARM error shape.
import type { Caller } from "../entra.js";
import type { Rbac } from "../rbac.js";
import type { Directory, Settings } from "../state.js";
import type { DetIds } from "../util.js";
import { ArmError, lc, trimSlash } from "../util.js";

export type Json = Record<string, any>;

export interface Stored {
  /** Canonical ID (casing of the first PUT). */
  id: string;
  key: string;
  type: string;
  name: string;
  sub: string;
  /** lower-cased resource group name ("" for subscription-level resources). */
  rg: string;
  parentKey?: string;
  /** The resource as GET returns it. */
  body: Json;
  /** Type-specific private data (e.g. a VM's userData, power state). */
  x: Json;
  deleting?: boolean;
  /** Operation that is still running on this resource. */
  pendingOp?: Operation;
}

export interface Operation {
  id: string;
  ns: string;
  sub: string;
  location: string;
  startTime: string;
  doneAt: number;
  status: "InProgress" | "Succeeded" | "Failed";
  error?: { code: string; message: string };
  /** Status of the final Location poll on success. */
  resultStatus: number;
  resultBody?: unknown;
  /** Applied once, when the operation completes. May set status Failed + error. */
  complete?: (op: Operation) => void;
  endTime?: string;
}

/** What a request handler of a type may use. */
export interface OpCtx {
  arm: Arm;
  caller?: Caller;
  apiVersion: string;
  query: URLSearchParams;
  now: number;
  /** For lists: whether the collection is the subscription's or a resource group's. */
  listScope?: "subscription" | "resourceGroup";
  /** For lists: the subscription or resource group scope listed (lower case), e.g. `/subscriptions/s/resourcegroups/g`. */
  listedIn?: string;
}

export interface PutOutcome {
  body: Json;
  x?: Json;
  /** Called after the resource is stored (creates children, registers principals...). */
  after?: (res: Stored) => void;
  /** Called when the provisioning operation completes (may fail it). */
  complete?: (res: Stored, op: Operation) => void;
}

export interface TypeDef {
  /** Full type including parents, canonical casing: e.g. "Microsoft.Network/virtualNetworks/subnets". */
  type: string;
  /** How PUT answers: sync 200/201; async 201/200 + Azure-AsyncOperation; body = 200/201 with provisioningState Creating. */
  putMode: "sync" | "async" | "body";
  /** How DELETE answers: sync 200 (204 when absent); async 202 + Azure-AsyncOperation + Location; location 202 + Location. */
  deleteMode: "sync" | "async" | "location";
  /** Resource lives in a resource group (true) or at subscription level. */
  inResourceGroup: boolean;
  listBySubscription?: boolean;
  /** State during asynchronous creation/update: "Creating"/"Updating". */
  creatingState?: string;
  put(ctx: OpCtx, input: { id: string; name: string; sub: string; rg: string; parent?: Stored; existing?: Stored; body: Json }): PutOutcome;
  /** PATCH (tags and the like): mutate res.body. Default: merge tags. */
  patch?(ctx: OpCtx, res: Stored, body: Json): void;
  /** GET view of a stored resource (default: body). */
  view?(ctx: OpCtx, res: Stored): Json;
  /** DELETE of a name that is not (visibly) there: return true to answer 200 (e.g. purging a soft-deleted workspace). */
  deleteMissing?(ctx: OpCtx, where: { sub: string; rg: string; name: string }): boolean;
  /** Refuses deletion by throwing ArmError. */
  beforeDelete?(ctx: OpCtx, res: Stored): void;
  /** Cleanup when the resource is removed (cascades). */
  onRemoved?(arm: Arm, res: Stored, opts: { viaParent: boolean }): void;
  /** Delete answered specially (e.g. workspaces' soft delete); returns true when the resource is to be kept. */
  actions?: Record<string, (ctx: OpCtx, res: Stored, body: Json) => { op?: Operation; status?: number; body?: unknown }>;
  /** GET on sub-paths like instanceView. */
  subGets?: Record<string, (ctx: OpCtx, res: Stored) => Json>;
  /** Filters a list (e.g. $filter) - optional. */
  listView?(ctx: OpCtx, items: Stored[]): Json[];
}

export const RG_TYPE = "Microsoft.Resources/resourceGroups";

export interface ArmDeps {
  ids: DetIds;
  dir: Directory;
  rbac: Rbac;
  settings: Settings;
  now: () => number;
  baseUrl: () => string;
}

export class Arm {
  readonly resources = new Map<string, Stored>();
  /** children index: `${parentScopeKey}|${lower type}` -> keys */
  private readonly index = new Map<string, Set<string>>();
  readonly types = new Map<string, TypeDef>();
  readonly ops = new Map<string, Operation>();
  /** Resources by a unique property value: `${lower type}|${lower value}` -> key (immutableId, customerId). */
  readonly byUniqueProp = new Map<string, string>();
  /** VMs by their vmId (lower-cased) -> resource key; kept by the compute types. */
  readonly vmIds = new Map<string, string>();
  /**
   * Lists that lag behind deletions, as ARM's can: a VM whose ID contains `path`, once deleted,
   * is still listed as it was for `ms` (a GET finds it gone at once). Kept by the compute types.
   */
  listLags: { id: string; path: string; ms: number }[] = [];
  /**
   * Deletions that take time, as ARM's of a VM do (tens of seconds and more): a resource whose ID
   * contains `path` is deleted `ms` after the DELETE was accepted, listed and read as Deleting until then.
   */
  deleteLags: { id: string; path: string; ms: number }[] = [];
  /** Deleted VMs still listed: resource key -> the VM as it was, until when (ms). */
  readonly listedAfterDelete = new Map<string, { res: Stored; until: number }>();
  private pending: Operation[] = [];

  constructor(readonly d: ArmDeps) {}

  register(t: TypeDef): void {
    this.types.set(lc(t.type), t);
  }

  typeDef(type: string): TypeDef | undefined {
    return this.types.get(lc(type));
  }

  clear(): void {
    this.resources.clear();
    this.index.clear();
    this.ops.clear();
    this.vmIds.clear();
    this.byUniqueProp.clear();
    this.listLags = [];
    this.deleteLags = [];
    this.listedAfterDelete.clear();
    this.pending = [];
  }

  // ---- storage --------------------------------------------------------------------------------

  static scopeKeyOf(sub: string, rg: string, parentKey?: string): string {
    return parentKey ?? (rg ? `/subscriptions/${sub}/resourcegroups/${rg}` : `/subscriptions/${sub}`);
  }

  get(id: string): Stored | undefined {
    return this.resources.get(lc(trimSlash(id)));
  }

  private uniqueKeys(res: Stored): string[] {
    const p = res.body.properties;
    const out: string[] = [];
    if (typeof p?.immutableId === "string") out.push(`${lc(res.type)}|${lc(p.immutableId)}`);
    if (typeof p?.customerId === "string") out.push(`${lc(res.type)}|${lc(p.customerId)}`);
    return out;
  }

  /** A resource of a type by its immutableId or customerId. */
  byUnique(type: string, value: string): Stored | undefined {
    const k = this.byUniqueProp.get(`${lc(type)}|${lc(value)}`);
    return k ? this.resources.get(k) : undefined;
  }

  put(res: Stored): void {
    this.resources.set(res.key, res);
    for (const u of this.uniqueKeys(res)) this.byUniqueProp.set(u, res.key);
    const ik = `${Arm.scopeKeyOf(res.sub, res.rg, res.parentKey)}|${lc(res.type)}`;
    let s = this.index.get(ik);
    if (!s) this.index.set(ik, (s = new Set()));
    s.add(res.key);
  }

  /** Resources of a type directly under a scope key (RG key, subscription key or parent resource key). */
  children(scopeKey: string, type: string): Stored[] {
    const s = this.index.get(`${lc(scopeKey)}|${lc(type)}`);
    if (!s) return [];
    const out: Stored[] = [];
    for (const k of s) {
      const r = this.resources.get(k);
      if (r) out.push(r);
    }
    return out;
  }

  /** All resources of a type in a subscription (any resource group). */
  allOfType(sub: string, type: string): Stored[] {
    const out: Stored[] = [];
    const t = lc(type);
    for (const r of this.resources.values()) if (r.sub === sub && lc(r.type) === t) out.push(r);
    return out;
  }

  /**
   * Removes a resource and its child resources (children first), running each type's onRemoved.
   * Does not check beforeDelete.
   */
  remove(res: Stored, viaParent = false): void {
    if (!this.resources.has(res.key)) return;
    for (const t of this.types.values()) {
      if (!lc(t.type).startsWith(lc(res.type) + "/")) continue;
      if (t.type.split("/").length !== res.type.split("/").length + 1) continue;
      for (const c of this.children(res.key, t.type)) this.remove(c, true);
    }
    this.resources.delete(res.key);
    for (const u of this.uniqueKeys(res)) if (this.byUniqueProp.get(u) === res.key) this.byUniqueProp.delete(u);
    this.index.get(`${Arm.scopeKeyOf(res.sub, res.rg, res.parentKey)}|${lc(res.type)}`)?.delete(res.key);
    this.typeDef(res.type)?.onRemoved?.(this, res, { viaParent });
  }

  // ---- long-running operations ----------------------------------------------------------------

  latencyFor(type: string): number {
    return this.d.settings.latencyMs[lc(type)] ?? this.d.settings.defaultLatencyMs;
  }

  /** How long deleting this resource takes: a delete lag naming it, else its type's latency. */
  deleteLatencyFor(type: string, id: string): number {
    return this.deleteLags.find((l) => lc(id).includes(lc(l.path)))?.ms ?? this.latencyFor(type);
  }

  startOp(ns: string, sub: string, location: string, latencyMs: number, complete?: (op: Operation) => void, resultStatus = 200): Operation {
    const now = this.d.now();
    const op: Operation = {
      id: this.d.ids.guid("operation", `${sub}/${ns}`),
      ns,
      sub,
      location: lc(location || "global").replace(/\s+/g, ""),
      startTime: new Date(now).toISOString(),
      doneAt: now + Math.max(0, latencyMs),
      status: "InProgress",
      resultStatus,
      complete,
    };
    this.ops.set(lc(op.id), op);
    this.pending.push(op);
    if (latencyMs <= 0) this.finish(op);
    return op;
  }

  private finish(op: Operation): void {
    if (op.status !== "InProgress") return;
    op.status = "Succeeded";
    try {
      op.complete?.(op);
    } catch (err) {
      op.status = "Failed";
      op.error = err instanceof ArmError ? { code: err.code, message: err.message } : { code: "InternalServerError", message: String(err) };
    }
    op.endTime = new Date(this.d.now()).toISOString();
    this.pending = this.pending.filter((p) => p !== op);
  }

  /** Completes every operation whose time has come. Called before each request is served. */
  settle(): void {
    if (this.pending.length === 0) return;
    const now = this.d.now();
    for (const op of [...this.pending]) if (op.doneAt <= now) this.finish(op);
  }

  asyncOperationUrl(op: Operation, apiVersion: string): string {
    return `${this.d.baseUrl()}/subscriptions/${op.sub}/providers/${op.ns}/locations/${op.location}/operations/${op.id}?api-version=${apiVersion}`;
  }

  locationUrl(op: Operation, apiVersion: string): string {
    if (op.ns === "Microsoft.Resources") return `${this.d.baseUrl()}/subscriptions/${op.sub}/operationresults/${op.id}?api-version=${apiVersion}`;
    return `${this.d.baseUrl()}/subscriptions/${op.sub}/providers/${op.ns}/locations/${op.location}/operationResults/${op.id}?api-version=${apiVersion}`;
  }

  opHeaders(op: Operation, apiVersion: string, which: { async?: boolean; location?: boolean }): Record<string, string> {
    const h: Record<string, string> = { "retry-after": String(this.d.settings.lroRetryAfterS) };
    if (which.async) h["azure-asyncoperation"] = this.asyncOperationUrl(op, apiVersion);
    if (which.location) h["location"] = this.locationUrl(op, apiVersion);
    return h;
  }

  /** Body of an Azure-AsyncOperation poll. */
  opStatusBody(op: Operation): Json {
    const b: Json = { name: op.id, status: op.status, startTime: op.startTime };
    if (op.endTime) b.endTime = op.endTime;
    if (op.error) b.error = op.error;
    return b;
  }
}

/** Splits an ARM resource ID into its parts; undefined when it is not a resource ID. */
export interface ParsedId {
  sub: string;
  rg: string;
  ns: string;
  /** type segments after the namespace, e.g. ["virtualNetworks", "subnets"] */
  types: string[];
  names: string[];
  /** Full type, e.g. Microsoft.Network/virtualNetworks/subnets */
  type: string;
  name: string;
}

export function parseResourceId(id: string): ParsedId | undefined {
  const seg = trimSlash(id).split("/").filter(Boolean);
  if (seg.length < 2 || lc(seg[0]!) !== "subscriptions") return undefined;
  const sub = lc(seg[1]!);
  let i = 2;
  let rg = "";
  if (lc(seg[i] ?? "") === "resourcegroups") {
    rg = seg[i + 1] ?? "";
    if (!rg) return undefined;
    i += 2;
    if (i === seg.length) return { sub, rg: lc(rg), ns: "Microsoft.Resources", types: ["resourceGroups"], names: [rg], type: RG_TYPE, name: rg };
  }
  if (lc(seg[i] ?? "") !== "providers") return undefined;
  const ns = seg[i + 1];
  const rest = seg.slice(i + 2);
  if (!ns || rest.length === 0 || rest.length % 2 !== 0) return undefined;
  const types: string[] = [];
  const names: string[] = [];
  for (let j = 0; j < rest.length; j += 2) {
    types.push(rest[j]!);
    names.push(rest[j + 1]!);
  }
  return { sub, rg: lc(rg), ns, types, names, type: `${ns}/${types.join("/")}`, name: names[names.length - 1]! };
}
