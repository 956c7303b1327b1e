// In-memory cache of the objects of one resource, keyed by objectKey ("namespace/name").
// A Reflector keeps it in step with the API server; controllers read from it. Objects handed
// out are the cached instances: treat them as read-only (copy before changing them).

import { objectKey, type KubeObject } from "./kube.js";

/** The annotation `kubectl apply` leaves on objects: a full copy of the applied manifest. */
export const LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration";

/**
 * What a cache keeps of an object: everything but metadata.managedFields and kubectl's
 * last-applied copy, which no controller reads and which can double an object's size. The
 * object is changed in place (it comes fresh from the wire) and returned.
 */
export function slimForCache<T extends KubeObject>(obj: T): T {
  const meta = obj.metadata as T["metadata"] & { managedFields?: unknown };
  if (meta.managedFields !== undefined) delete meta.managedFields;
  if (meta.annotations && LAST_APPLIED_ANNOTATION in meta.annotations) {
    const { [LAST_APPLIED_ANNOTATION]: _dropped, ...rest } = meta.annotations;
    if (Object.keys(rest).length > 0) meta.annotations = rest;
    else delete meta.annotations;
  }
  return obj;
}

export class Store<T extends KubeObject = KubeObject> {
  private readonly items = new Map<string, T>();

  get(key: string): T | undefined {
    return this.items.get(key);
  }

  has(key: string): boolean {
    return this.items.has(key);
  }

  /** Every cached object, or those of one namespace. */
  list(namespace?: string): T[] {
    const all = [...this.items.values()];
    return namespace === undefined ? all : all.filter((o) => o.metadata.namespace === namespace);
  }

  keys(): string[] {
    return [...this.items.keys()];
  }

  get size(): number {
    return this.items.size;
  }

  /** Insert or overwrite; returns the previous object under the same key. */
  set(obj: T): T | undefined {
    const key = objectKey(obj);
    const old = this.items.get(key);
    this.items.set(key, obj);
    return old;
  }

  /** Remove; returns the object that was cached. */
  delete(key: string): T | undefined {
    const old = this.items.get(key);
    this.items.delete(key);
    return old;
  }

  /** Replace the whole content (used after a relist). */
  replace(objs: Iterable<T>): void {
    this.items.clear();
    for (const o of objs) this.items.set(objectKey(o), o);
  }

  clear(): void {
    this.items.clear();
  }
}
