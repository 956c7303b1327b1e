/**
 * Finalizer helpers. ensureFinalizer and removeFinalizer are JSON patches guarded by a "test"
 * operation, so they only apply to the finalizer list they were computed from; when someone else
 * changed the list in the meantime the server rejects the patch, the object is re-read and the
 * patch recomputed (a bounded number of times). markWithFinalizer is one merge patch guarded by
 * the resourceVersion, left to its caller to retake on a conflict.
 *
 * Add the finalizer before the first external side effect; remove it only after cleanup succeeded.
 */
import { KubeApiError } from "./kube.js";
import type { KubeClient, KubeObject, ResourceType } from "./kube.js";

/** How many times a guarded patch is recomputed after a concurrent change. */
export const FINALIZER_MAX_ATTEMPTS = 8;

export function hasFinalizer(obj: KubeObject, finalizer: string): boolean {
  return obj.metadata.finalizers?.includes(finalizer) ?? false;
}

/** A guarded patch lost a race (test failed / conflict): re-read and try again. */
function isRaceError(err: unknown): boolean {
  return err instanceof KubeApiError && (err.status === 409 || err.status === 422);
}

function nameOf(rt: ResourceType, obj: KubeObject): string {
  const name = obj.metadata.name;
  if (!name) throw new TypeError(`${rt.kind}: metadata.name is required`);
  return name;
}

/** The API server refuses a new finalizer on an object being deleted: say so before asking. */
function refuseIfDeleting(rt: ResourceType, obj: KubeObject, name: string, finalizer: string): void {
  if (!obj.metadata.deletionTimestamp || hasFinalizer(obj, finalizer)) return;
  const ns = obj.metadata.namespace;
  throw new Error(`${rt.kind} ${ns ? `${ns}/` : ""}${name} is being deleted; finalizer ${finalizer} cannot be added`);
}

/** JSON pointer escaping is not needed for fixed paths; values are compared by the server. */
function addPatch(obj: KubeObject, finalizer: string): unknown[] {
  const current = obj.metadata.finalizers;
  if (current === undefined || current.length === 0) {
    // "test" cannot assert that a member is absent; guard on the resourceVersion instead, so the
    // whole-list "add" (which would replace an existing list) only applies to the version we saw.
    const rv = obj.metadata.resourceVersion;
    if (!rv) throw new TypeError("ensureFinalizer: the object has no metadata.resourceVersion");
    return [
      { op: "test", path: "/metadata/resourceVersion", value: rv },
      { op: "add", path: "/metadata/finalizers", value: [finalizer] },
    ];
  }
  return [
    { op: "test", path: "/metadata/finalizers", value: current },
    { op: "add", path: "/metadata/finalizers/-", value: finalizer },
  ];
}

/**
 * Makes sure `finalizer` is on the object and returns the object as stored. No write happens when
 * it is already present. Throws when the object is gone, when it is being deleted without the
 * finalizer (the API server forbids adding one then), or when the race is lost too many times.
 */
export async function ensureFinalizer<T extends KubeObject>(
  client: KubeClient,
  rt: ResourceType,
  obj: T,
  finalizer: string,
): Promise<T> {
  const name = nameOf(rt, obj);
  const ns = obj.metadata.namespace;
  let cur: T = obj;
  let lastErr: unknown;
  for (let attempt = 0; attempt < FINALIZER_MAX_ATTEMPTS; attempt++) {
    if (hasFinalizer(cur, finalizer)) return cur;
    refuseIfDeleting(rt, cur, name, finalizer);
    try {
      return await client.patch<T>(rt, ns, name, addPatch(cur, finalizer), "json");
    } catch (err) {
      if (!isRaceError(err)) throw err;
      lastErr = err;
    }
    const fresh = await client.get<T>(rt, ns, name);
    if (!fresh) {
      throw new KubeApiError(404, "NotFound", `${rt.kind} ${ns ? `${ns}/` : ""}${name} not found while adding finalizer`, undefined);
    }
    cur = fresh;
  }
  throw lastErr instanceof Error ? lastErr : new Error(`ensureFinalizer ${name}: too many conflicts`);
}

/**
 * One write that puts `finalizer` on the object (when missing) and sets `annotations` (null
 * removes one): a merge patch carrying the resourceVersion the object was read at, so it applies
 * only to that version (409 Conflict otherwise). A decision recorded this way was taken on the
 * object as stored; on a conflict the caller re-reads and decides again. Returns the stored object.
 */
export async function markWithFinalizer<T extends KubeObject>(
  client: KubeClient,
  rt: ResourceType,
  obj: T,
  finalizer: string,
  annotations: Record<string, string | null>,
): Promise<T> {
  const name = nameOf(rt, obj);
  const rv = obj.metadata.resourceVersion;
  if (!rv) throw new TypeError("markWithFinalizer: the object has no metadata.resourceVersion");
  refuseIfDeleting(rt, obj, name, finalizer);
  const metadata: Record<string, unknown> = { resourceVersion: rv, annotations };
  // the whole list: safe, as the patch applies only to the version it was computed from
  if (!hasFinalizer(obj, finalizer)) metadata.finalizers = [...(obj.metadata.finalizers ?? []), finalizer];
  return client.patch<T>(rt, obj.metadata.namespace, name, { metadata }, "merge");
}

/**
 * Removes `finalizer` from the object and returns the object as stored, or undefined when the
 * object no longer exists (e.g. it was deleted once its last finalizer went away). No write
 * happens when the finalizer is not present.
 */
export async function removeFinalizer<T extends KubeObject>(
  client: KubeClient,
  rt: ResourceType,
  obj: T,
  finalizer: string,
): Promise<T | undefined> {
  const name = nameOf(rt, obj);
  const ns = obj.metadata.namespace;
  let cur: T = obj;
  let lastErr: unknown;
  for (let attempt = 0; attempt < FINALIZER_MAX_ATTEMPTS; attempt++) {
    const current = cur.metadata.finalizers ?? [];
    if (!current.includes(finalizer)) return cur;
    const patch = [
      { op: "test", path: "/metadata/finalizers", value: current },
      { op: "replace", path: "/metadata/finalizers", value: current.filter((f) => f !== finalizer) },
    ];
    try {
      return await client.patch<T>(rt, ns, name, patch, "json");
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 404) return undefined;
      if (!isRaceError(err)) throw err;
      lastErr = err;
    }
    const fresh = await client.get<T>(rt, ns, name);
    if (!fresh) return undefined;
    cur = fresh;
  }
  throw lastErr instanceof Error ? lastErr : new Error(`removeFinalizer ${name}: too many conflicts`);
}
