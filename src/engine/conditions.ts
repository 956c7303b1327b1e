/**
 * Status conditions (kstatus style) and the status writer.
 *
 * Conditions follow the Kubernetes API conventions: a list keyed by `type`, each with a status
 * True/False/Unknown, a CamelCase reason, a human message, the generation it describes and the
 * time its status last changed. `lastTransitionTime` only moves when `status` changes.
 *
 * `updateStatus` writes through the /status subresource with a JSON merge patch, and only when
 * the desired status differs from what the object already holds, so a reconcile loop that
 * recomputes the same status never produces a write (and never bumps resourceVersion).
 */
import type { KubeClient, KubeObject, ResourceType } from "./kube.js";

export type ConditionStatus = "True" | "False" | "Unknown";

export interface Condition {
  type: string;
  status: ConditionStatus;
  /** CamelCase, machine readable. */
  reason: string;
  /** Human readable; may be empty. */
  message: string;
  observedGeneration?: number;
  /** RFC 3339, second precision (metav1.Time). */
  lastTransitionTime: string;
}

/** Condition types of kstatus (plus nothing else; controllers add their own detail types). */
export const ConditionType = {
  Ready: "Ready",
  Reconciling: "Reconciling",
  Stalled: "Stalled",
} as const;

/** metav1.Time wire format: RFC 3339 with second precision, UTC. */
export function formatTime(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/**
 * Returns a new list with `c` set. An existing condition of the same type keeps its position and
 * its lastTransitionTime when the status is unchanged (reason/message/observedGeneration are
 * updated in place); a changed status or a new condition gets `now`. The input is not modified.
 */
export function setCondition(
  list: Condition[] | undefined,
  c: Omit<Condition, "lastTransitionTime">,
  now: Date = new Date(),
): Condition[] {
  const out = (list ?? []).map((x) => ({ ...x }));
  const i = out.findIndex((x) => x.type === c.type);
  const prev = i >= 0 ? out[i] : undefined;
  const next: Condition = {
    type: c.type,
    status: c.status,
    reason: c.reason,
    message: c.message ?? "",
    lastTransitionTime: prev && prev.status === c.status && prev.lastTransitionTime ? prev.lastTransitionTime : formatTime(now),
  };
  if (c.observedGeneration !== undefined) next.observedGeneration = c.observedGeneration;
  if (i >= 0) out[i] = next;
  else out.push(next);
  return out;
}

/** Returns a new list without the condition of the given type. */
export function removeCondition(list: Condition[] | undefined, type: string): Condition[] {
  return (list ?? []).filter((x) => x.type !== type);
}

export function getCondition(list: Condition[] | undefined, type: string): Condition | undefined {
  return list?.find((x) => x.type === type);
}

export function isTrue(list: Condition[] | undefined, type: string): boolean {
  return getCondition(list, type)?.status === "True";
}

export function isFalse(list: Condition[] | undefined, type: string): boolean {
  return getCondition(list, type)?.status === "False";
}

/** True when the condition is absent or Unknown. */
export function isUnknown(list: Condition[] | undefined, type: string): boolean {
  const c = getCondition(list, type);
  return c === undefined || c.status === "Unknown";
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/**
 * The JSON a value becomes on the wire, with object keys sorted and undefined/null members
 * dropped (in a merge patch null means "delete"; the server stores neither). Arrays keep their
 * order; undefined array entries become null as JSON.stringify does.
 */
export function normalizeJson(v: unknown): unknown {
  if (v === undefined || v === null) return undefined;
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map((x) => normalizeJson(x) ?? null);
  if (isPlainObject(v)) {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) {
      const n = normalizeJson(v[k]);
      if (n !== undefined) out[k] = n;
    }
    return out;
  }
  if (typeof v === "number" && !Number.isFinite(v)) return null;
  if (typeof v === "function" || typeof v === "symbol") return undefined;
  if (typeof v === "bigint") return Number(v);
  return v;
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  }
  if (isPlainObject(a)) {
    if (!isPlainObject(b)) return false;
    const ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k]));
  }
  return false;
}

/** Deep equality of two status values as the API server would store them (key order, undefined and null ignored). */
export function statusEquals(a: unknown, b: unknown): boolean {
  return deepEqual(normalizeJson(a) ?? {}, normalizeJson(b) ?? {});
}

/**
 * RFC 7386 merge patch that turns `from` into `to` (both normalized): changed members are set,
 * members missing in `to` are set to null, nested objects are diffed, arrays are replaced whole.
 */
export function createMergePatch(from: unknown, to: unknown): unknown {
  return mergePatch(normalizeJson(from), normalizeJson(to));
}

/** createMergePatch of two values normalized already (each nested level is not normalized again). */
function mergePatch(f: unknown, t: unknown): unknown {
  if (!isPlainObject(f) || !isPlainObject(t)) return t === undefined ? null : t;
  const patch: Record<string, unknown> = {};
  for (const k of Object.keys(f)) {
    if (!(k in t)) patch[k] = null;
  }
  for (const [k, tv] of Object.entries(t)) {
    const fv = f[k];
    if (deepEqual(fv, tv)) continue;
    patch[k] = isPlainObject(fv) && isPlainObject(tv) ? mergePatch(fv, tv) : tv;
  }
  return patch;
}

export interface UpdateStatusOptions {
  fieldManager?: string;
  /** Send metadata.resourceVersion with the patch so a stale read fails with 409 Conflict. Default false. */
  optimisticLock?: boolean;
  signal?: AbortSignal;
}

/**
 * Writes `next` as the object's status through the /status subresource when it differs from
 * `obj.status` (see statusEquals). Returns the object as returned by the server, or undefined
 * when nothing needed writing. `next` replaces the status as a whole: members of the current
 * status that `next` lacks are removed. Callers set observedGeneration themselves.
 */
export async function updateStatus<T extends KubeObject, S>(
  client: KubeClient,
  rt: ResourceType,
  obj: T & { status?: S },
  next: S,
  opts: UpdateStatusOptions = {},
): Promise<T | undefined> {
  // Normalized once, for the comparison (statusEquals) and the patch (createMergePatch) both.
  const from = normalizeJson(obj.status) ?? {};
  const to = normalizeJson(next) ?? {};
  if (deepEqual(from, to)) return undefined;
  const name = obj.metadata.name;
  if (!name) throw new TypeError(`updateStatus ${rt.kind}: metadata.name is required`);
  const body: Record<string, unknown> = { status: mergePatch(from, to) };
  if (opts.optimisticLock && obj.metadata.resourceVersion) {
    body.metadata = { resourceVersion: obj.metadata.resourceVersion };
  }
  const patchOpts: { subresource: "status"; fieldManager?: string; signal?: AbortSignal } = { subresource: "status" };
  if (opts.fieldManager) patchOpts.fieldManager = opts.fieldManager;
  if (opts.signal) patchOpts.signal = opts.signal;
  return client.patch<T>(rt, obj.metadata.namespace, name, body, "merge", patchOpts);
}
