// In-memory cache of the objects of one resource, keyed by objectKey ("namespace/name").
// A Reflector keeps it in step with the API server; controllers read from it. Objects handed
// out are the cached instances: treat them as read-only (copy before changing them).

import { objectKey, type KubeObject } from "./kube.js";

/** The annotation `kubectl apply` leaves on objects: a full copy of the applied manifest. */
export const LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration";

/**
 * What a cache keeps of an object: everything but metadata.managedFields and kubectl's
 * last-applied copy, which no controller reads and which can double an object's size, with its
 * strings shared with the other cached objects (StringPool). The object is changed in place (it
 * comes fresh from the wire) and returned. For objects holding secrets use trimForCache: pooled
 * strings outlive the object that brought them.
 */
export function slimForCache<T extends KubeObject>(obj: T): T {
  return CACHE_STRINGS.intern(trimForCache(obj));
}

/**
 * Freezes an object and everything in it, in place, and returns it. A cache whose objects are
 * frozen can hand them out without a copy: a reader that tries to change one throws a TypeError
 * (modules run in strict mode) instead of changing what every other reader sees.
 */
export function deepFreeze<T>(obj: T): T {
  if (obj !== null && typeof obj === "object" && !Object.isFrozen(obj)) {
    Object.freeze(obj);
    for (const v of Object.values(obj)) deepFreeze(v);
  }
  return obj;
}

/** slimForCache without the string pool: for caches of Secrets, whose values must go with them. */
export function trimForCache<T extends KubeObject>(obj: T): T {
  const meta = obj.metadata as T["metadata"] & { managedFields?: unknown };
  if (meta.managedFields !== undefined) delete meta.managedFields;
  if (meta.annotations && LAST_APPLIED_ANNOTATION in meta.annotations) {
    const { [LAST_APPLIED_ANNOTATION]: _dropped, ...rest } = meta.annotations;
    if (Object.keys(rest).length > 0) meta.annotations = rest;
    else delete meta.annotations;
  }
  return obj;
}

/**
 * Equal strings shared between cached objects. JSON.parse gives every object its own copy of each
 * string value, and the objects of one resource repeat most of theirs: namespace, apiVersion,
 * what they refer to, condition types, reasons and messages, the timestamps of one burst. With
 * the copies shared, a cached Run takes about half the heap (~0.9 instead of ~1.6 KB).
 * Values that are unique per object (metadata uid, name, resourceVersion) are not pooled, nor
 * anything under a top-level `data` or `stringData` (a Secret's values: a pooled string stays in
 * memory after its object is gone); the pool is bounded and starts over when full (objects keep
 * the strings they hold).
 */
export class StringPool {
  private readonly pool = new Map<string, string>();

  constructor(
    private readonly maxEntries = 20_000,
    private readonly maxLength = 256,
  ) {}

  /** Replaces the object's string values, in place, by the pool's equal ones; returns the object. */
  intern<T>(obj: T): T {
    if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
      this.walk(obj, false);
      return obj;
    }
    const rec = obj as Record<string, unknown>;
    for (const k of Object.keys(rec)) {
      if (UNPOOLED_TOP.has(k)) continue;
      const v = rec[k];
      if (typeof v === "string") rec[k] = this.share(v);
      else if (v !== null && typeof v === "object") this.walk(v, k === "metadata" && !Array.isArray(v));
    }
    return obj;
  }

  get size(): number {
    return this.pool.size;
  }

  private walk(o: unknown, metadata: boolean): void {
    if (Array.isArray(o)) {
      for (let i = 0; i < o.length; i++) {
        const v: unknown = o[i];
        if (typeof v === "string") o[i] = this.share(v);
        else if (v !== null && typeof v === "object") this.walk(v, false);
      }
      return;
    }
    if (o === null || typeof o !== "object") return;
    const rec = o as Record<string, unknown>;
    for (const k of Object.keys(rec)) {
      const v = rec[k];
      if (typeof v === "string") {
        if (!(metadata && UNIQUE_METADATA.has(k))) rec[k] = this.share(v);
      } else if (v !== null && typeof v === "object") {
        this.walk(v, !metadata && k === "metadata" && !Array.isArray(v));
      }
    }
  }

  private share(s: string): string {
    if (s.length > this.maxLength) return s;
    const have = this.pool.get(s);
    if (have !== undefined) return have;
    if (this.pool.size >= this.maxEntries) this.pool.clear();
    this.pool.set(s, s);
    return s;
  }
}

/** Top-level fields never pooled: where Secrets (and ConfigMaps) keep their values. */
const UNPOOLED_TOP = new Set(["data", "stringData", "binaryData"]);

/** metadata fields that differ from object to object: pooling them would only fill the pool. */
const UNIQUE_METADATA = new Set(["uid", "name", "resourceVersion", "generateName"]);

/** The pool of every cache made with slimForCache (one process holds few resources' caches). */
const CACHE_STRINGS = new StringPool();

/** How many strings the caches' shared pool holds (for tests and diagnostics). */
export function cacheStringCount(): number {
  return CACHE_STRINGS.size;
}

/** Names an object under an index (e.g. the ComputeEnvironment a Run refers to); undefined: not indexed. */
export type IndexFunc<T> = (obj: T) => string | undefined;

export class Store<T extends KubeObject = KubeObject> {
  private readonly items = new Map<string, T>();
  private readonly indexers: ReadonlyMap<string, IndexFunc<T>>;
  /** index name -> index value -> object keys */
  private readonly indexes = new Map<string, Map<string, Set<string>>>();
  /**
   * object key -> the values it is filed under, one per indexer in indexers' order (undefined: not
   * filed there): what unindexing removes, whatever the object says now. An array, not a Map per
   * object: with 10,000 cached Runs the Maps alone took ~5 MiB of heap.
   */
  private readonly filed = new Map<string, (string | undefined)[]>();

  /**
   * `indexers`: secondary indexes kept in step with the content, as client-go's Indexers, so
   * that "the Runs of this ComputeEnvironment" is a look-up, not a scan of every object.
   */
  constructor(opts: { indexers?: Record<string, IndexFunc<T>> } = {}) {
    this.indexers = new Map(Object.entries(opts.indexers ?? {}));
    for (const name of this.indexers.keys()) this.indexes.set(name, new Map());
  }

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

  /** The objects an index files under `value`. Throws for an index the store was not given. */
  byIndex(name: string, value: string): T[] {
    const index = this.indexes.get(name);
    if (!index) throw new Error(`store has no index ${JSON.stringify(name)}`);
    const out: T[] = [];
    for (const key of index.get(value) ?? []) {
      const o = this.items.get(key);
      if (o) out.push(o);
    }
    return out;
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
    this.unindex(key);
    this.items.set(key, obj);
    this.index(key, obj);
    return old;
  }

  /** Remove; returns the object that was cached. */
  delete(key: string): T | undefined {
    const old = this.items.get(key);
    this.unindex(key);
    this.items.delete(key);
    return old;
  }

  /** Replace the whole content (used after a relist). */
  replace(objs: Iterable<T>): void {
    this.clear();
    for (const o of objs) this.set(o);
  }

  clear(): void {
    this.items.clear();
    this.filed.clear();
    for (const index of this.indexes.values()) index.clear();
  }

  private index(key: string, obj: T): void {
    if (this.indexers.size === 0) return;
    const values: (string | undefined)[] = [];
    let any = false;
    for (const [name, fn] of this.indexers) {
      const value = fn(obj);
      values.push(value);
      if (value === undefined) continue;
      any = true;
      const index = this.indexes.get(name) as Map<string, Set<string>>;
      let keys = index.get(value);
      if (!keys) index.set(value, (keys = new Set()));
      keys.add(key);
    }
    if (any) this.filed.set(key, values);
  }

  private unindex(key: string): void {
    const values = this.filed.get(key);
    if (!values) return;
    this.filed.delete(key);
    let i = 0;
    for (const name of this.indexers.keys()) {
      const value = values[i++];
      if (value === undefined) continue;
      const index = this.indexes.get(name) as Map<string, Set<string>>;
      const keys = index.get(value);
      if (!keys) continue;
      keys.delete(key);
      if (keys.size === 0) index.delete(value);
    }
  }
}
