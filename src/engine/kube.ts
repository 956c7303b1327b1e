// A small Kubernetes REST client.
//
// The kubeconfig is read by kubeconfig.ts (a light loader; @kubernetes/client-node only for exec
// and auth-provider plugins), which also computes credentials per request. Requests
// themselves go through node:https / node:http so that watches can be streamed and parsed
// incrementally and so that error bodies (metav1.Status) are surfaced as KubeApiError.

import http from "node:http";
import https from "node:https";
import { loadInCluster, loadKubeConfig, type KubeConfigLike } from "./kubeconfig.js";
import type { EngineMetrics } from "./metrics.js";

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  deletionTimestamp?: string;
  ownerReferences?: OwnerReference[];
  creationTimestamp?: string;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
}

export interface ResourceType {
  /** "" for the core group */
  group: string;
  version: string;
  plural: string;
  kind: string;
  namespaced: boolean;
}

/** Shape of a metav1.Status object as returned by the API server on failures. */
export interface KubeStatus {
  kind?: string;
  apiVersion?: string;
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: unknown;
}

/** A request failed on a kept-alive connection the server had closed, before any answer. */
class StaleSocketError extends Error {
  readonly code: string | undefined;
  constructor(cause: NodeJS.ErrnoException) {
    super(cause.message, { cause });
    this.name = "StaleSocketError";
    this.code = cause.code;
  }
}

/** An HTTP error answered by the API server. `reason` is Status.reason ("NotFound", "Conflict", ...). */
export class KubeApiError extends Error {
  readonly status: number;
  readonly reason: string;
  readonly body: unknown;

  constructor(status: number, reason: string, message: string, body: unknown) {
    super(message);
    this.name = "KubeApiError";
    this.status = status;
    this.reason = reason;
    this.body = body;
  }
}

export type WatchEvent<T> =
  | { type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK"; object: T }
  | { type: "ERROR"; object: { code?: number; reason?: string; message?: string } };

export interface ListOptions {
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  limit?: number;
  continue?: string;
  resourceVersion?: string;
  /** Optional cancellation (in addition to the client's request timeout). */
  signal?: AbortSignal;
}

export interface ListResult<T> {
  items: T[];
  metadata: { resourceVersion: string; continue?: string };
}

export interface WatchOptions {
  namespace?: string;
  resourceVersion: string;
  allowWatchBookmarks?: boolean;
  timeoutSeconds?: number;
  labelSelector?: string;
  fieldSelector?: string;
}

export type PatchType = "merge" | "json" | "strategic";

export interface KubeClientOptions {
  /** Deadline for every non-watch request. Default 30 s. */
  requestTimeoutMs?: number;
  /** Counts requests by verb and resource, and status writes by kind. */
  metrics?: EngineMetrics;
}

/** Request-level options accepted as an optional extra argument by get/create. */
export interface RequestOptions {
  signal?: AbortSignal;
}

const PATCH_CONTENT_TYPES: Record<PatchType, string> = {
  merge: "application/merge-patch+json",
  json: "application/json-patch+json",
  strategic: "application/strategic-merge-patch+json",
};

/** "namespace/name" for namespaced objects, "name" for cluster-scoped ones. */
export function objectKey(o: KubeObject): string {
  const name = o.metadata.name ?? "";
  return o.metadata.namespace ? `${o.metadata.namespace}/${name}` : name;
}

/** Inverse of objectKey. */
export function splitKey(key: string): { namespace?: string; name: string } {
  const i = key.indexOf("/");
  if (i < 0) return { name: key };
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

/** "v1" for core, "group/version" otherwise. */
export function apiVersionOf(rt: ResourceType): string {
  return rt.group === "" ? rt.version : `${rt.group}/${rt.version}`;
}

/**
 * REST path of a resource collection or object:
 *   core:   /api/v1[/namespaces/<ns>]/<plural>[/<name>[/<sub>]]
 *   groups: /apis/<group>/<version>[/namespaces/<ns>]/<plural>[/<name>[/<sub>]]
 * A namespaced resource with no namespace addresses the all-namespaces collection.
 */
export function resourcePath(rt: ResourceType, namespace?: string, name?: string, subresource?: string): string {
  let p = rt.group === "" ? `/api/${rt.version}` : `/apis/${rt.group}/${rt.version}`;
  if (rt.namespaced && namespace) p += `/namespaces/${encodeURIComponent(namespace)}`;
  p += `/${rt.plural}`;
  if (name !== undefined) {
    if (name === "") throw new TypeError(`empty name for ${rt.kind}`);
    p += `/${encodeURIComponent(name)}`;
    if (subresource) p += `/${subresource}`;
  }
  return p;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const REASON_BY_STATUS: Record<number, string> = {
  400: "BadRequest",
  401: "Unauthorized",
  403: "Forbidden",
  404: "NotFound",
  405: "MethodNotAllowed",
  406: "NotAcceptable",
  409: "Conflict",
  410: "Expired",
  415: "UnsupportedMediaType",
  422: "Invalid",
  429: "TooManyRequests",
  500: "InternalError",
  503: "ServiceUnavailable",
  504: "Timeout",
};

function errorFromResponse(method: string, path: string, status: number, text: string): KubeApiError {
  let body: unknown = text;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON: keep the raw text (server error pages, proxies)
  }
  const st = isRecord(body) ? (body as KubeStatus) : undefined;
  const reason = (st?.reason && String(st.reason)) || REASON_BY_STATUS[status] || "Unknown";
  const detail = st?.message ? String(st.message) : typeof body === "string" ? body.slice(0, 300) : "";
  return new KubeApiError(status, reason, `${method} ${path}: ${status} ${reason}${detail ? `: ${detail}` : ""}`, body);
}

function buffersEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) return a.equals(b);
  if (typeof a === "string" && typeof b === "string") return a === b;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => buffersEqual(x, b[i]));
  return false;
}

interface TlsMaterial {
  ca: https.RequestOptions["ca"];
  cert: https.RequestOptions["cert"];
  key: https.RequestOptions["key"];
  pfx: https.RequestOptions["pfx"];
  passphrase: string | undefined;
  rejectUnauthorized: boolean | undefined;
  servername: string | undefined;
}

interface Connection {
  agent: http.Agent;
  headers: Record<string, string>;
}

interface RawResponse {
  status: number;
  text: string;
}

export class KubeClient {
  readonly kubeConfig: KubeConfigLike;
  readonly server: URL;
  private readonly requestTimeoutMs: number;
  private readonly isHttps: boolean;
  private cachedAgent: http.Agent | undefined;
  private cachedTls: TlsMaterial | undefined;
  private readonly metrics: EngineMetrics | undefined;

  constructor(kc: KubeConfigLike, opts: KubeClientOptions = {}) {
    this.metrics = opts.metrics;
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error("kubeconfig has no current cluster");
    this.kubeConfig = kc;
    this.server = new URL(cluster.server);
    this.isHttps = this.server.protocol === "https:";
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
  }

  /** Load from the given kubeconfig file, or else $KUBECONFIG, ~/.kube/config, in-cluster service account. */
  static fromKubeconfig(path?: string, opts?: KubeClientOptions): KubeClient {
    return new KubeClient(loadKubeConfig(path), opts);
  }

  /** Load the in-cluster service-account configuration explicitly. */
  static inCluster(opts?: KubeClientOptions): KubeClient {
    return new KubeClient(loadInCluster(), opts);
  }

  async list<T extends KubeObject>(rt: ResourceType, opts: ListOptions = {}): Promise<ListResult<T>> {
    const q = new URLSearchParams();
    if (opts.labelSelector) q.set("labelSelector", opts.labelSelector);
    if (opts.fieldSelector) q.set("fieldSelector", opts.fieldSelector);
    if (opts.limit !== undefined) q.set("limit", String(opts.limit));
    if (opts.continue) q.set("continue", opts.continue);
    if (opts.resourceVersion !== undefined) q.set("resourceVersion", opts.resourceVersion);
    this.count("list", rt);
    const body = await this.json("GET", resourcePath(rt, opts.namespace), q, undefined, opts.signal);
    if (!isRecord(body) || !Array.isArray(body.items)) throw new Error(`list ${rt.plural}: unexpected response body`);
    const meta = isRecord(body.metadata) ? body.metadata : {};
    const items = (body.items as T[]).map((it) => {
      // list items carry no apiVersion/kind; fill them so objects look the same as from get/watch
      if (it.apiVersion === undefined) it.apiVersion = apiVersionOf(rt);
      if (it.kind === undefined) it.kind = rt.kind;
      return it;
    });
    const cont = typeof meta.continue === "string" && meta.continue !== "" ? meta.continue : undefined;
    return {
      items,
      metadata: { resourceVersion: String(meta.resourceVersion ?? ""), ...(cont ? { continue: cont } : {}) },
    };
  }

  /**
   * Streaming watch. Yields events as they arrive; the iteration ends when the server closes the
   * stream (e.g. after timeoutSeconds) or when `signal` is aborted (then it simply returns).
   * A non-2xx answer is thrown as KubeApiError; a broken connection is thrown as the socket error.
   */
  async *watch<T extends KubeObject>(rt: ResourceType, opts: WatchOptions, signal: AbortSignal): AsyncIterable<WatchEvent<T>> {
    const q = new URLSearchParams();
    q.set("watch", "1");
    q.set("resourceVersion", opts.resourceVersion);
    if (opts.allowWatchBookmarks) q.set("allowWatchBookmarks", "true");
    if (opts.timeoutSeconds !== undefined) q.set("timeoutSeconds", String(Math.max(1, Math.floor(opts.timeoutSeconds))));
    if (opts.labelSelector) q.set("labelSelector", opts.labelSelector);
    if (opts.fieldSelector) q.set("fieldSelector", opts.fieldSelector);
    const path = resourcePath(rt, opts.namespace);
    if (signal.aborted) return;
    this.count("watch", rt);

    const conn = await this.connection();
    const url = this.url(path, q);
    let req: http.ClientRequest | undefined;
    let res: http.IncomingMessage;
    try {
      res = await new Promise<http.IncomingMessage>((resolve, reject) => {
        req = (this.isHttps ? https : http).request(url, {
          method: "GET",
          agent: conn.agent,
          headers: { ...conn.headers, accept: "application/json" },
          signal,
        });
        req.once("response", resolve);
        req.once("error", reject);
        req.end();
      });
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    }

    try {
      const status = res.statusCode ?? 0;
      res.setEncoding("utf8");
      if (status < 200 || status > 299) {
        let text = "";
        for await (const chunk of res) text += chunk as string;
        throw errorFromResponse("GET", path, status, text);
      }
      let buf = "";
      for await (const chunk of res) {
        buf += chunk as string;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line === "") continue;
          yield parseWatchLine<T>(line);
          if (signal.aborted) return;
        }
      }
      const rest = buf.trim();
      if (rest !== "" && !signal.aborted) yield parseWatchLine<T>(rest);
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    } finally {
      // also runs when the consumer stops iterating early
      res.destroy();
      req?.destroy();
    }
  }

  /** The object, or undefined when it does not exist (404). */
  async get<T extends KubeObject>(rt: ResourceType, namespace: string | undefined, name: string, opts: RequestOptions = {}): Promise<T | undefined> {
    this.count("get", rt);
    try {
      return (await this.json("GET", this.objectPath(rt, namespace, name), undefined, undefined, opts.signal)) as T;
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 404) return undefined;
      throw err;
    }
  }

  async create<T extends KubeObject>(rt: ResourceType, obj: T, opts: RequestOptions & { fieldManager?: string } = {}): Promise<T> {
    const ns = obj.metadata.namespace;
    if (rt.namespaced && !ns) throw new TypeError(`create ${rt.kind}: metadata.namespace is required`);
    const body = { ...obj, apiVersion: obj.apiVersion ?? apiVersionOf(rt), kind: obj.kind ?? rt.kind };
    const q = new URLSearchParams();
    if (opts.fieldManager) q.set("fieldManager", opts.fieldManager);
    this.count("create", rt);
    return (await this.json("POST", resourcePath(rt, rt.namespaced ? ns : undefined), q, {
      data: JSON.stringify(body),
      contentType: "application/json",
    }, opts.signal)) as T;
  }

  async replace<T extends KubeObject>(rt: ResourceType, obj: T, opts: { subresource?: "status"; fieldManager?: string; signal?: AbortSignal } = {}): Promise<T> {
    const name = obj.metadata.name;
    if (!name) throw new TypeError(`replace ${rt.kind}: metadata.name is required`);
    const body = { ...obj, apiVersion: obj.apiVersion ?? apiVersionOf(rt), kind: obj.kind ?? rt.kind };
    const q = new URLSearchParams();
    if (opts.fieldManager) q.set("fieldManager", opts.fieldManager);
    this.count("update", rt, opts.subresource);
    const out = (await this.json("PUT", this.objectPath(rt, obj.metadata.namespace, name, opts.subresource), q, {
      data: JSON.stringify(body),
      contentType: "application/json",
    }, opts.signal)) as T;
    if (opts.subresource === "status") this.metrics?.statusWrites.inc({ kind: rt.kind });
    return out;
  }

  async patch<T extends KubeObject>(
    rt: ResourceType,
    namespace: string | undefined,
    name: string,
    patch: unknown,
    type: PatchType,
    opts: { subresource?: "status"; fieldManager?: string; signal?: AbortSignal } = {},
  ): Promise<T> {
    const q = new URLSearchParams();
    if (opts.fieldManager) q.set("fieldManager", opts.fieldManager);
    this.count("patch", rt, opts.subresource);
    const out = (await this.json("PATCH", this.objectPath(rt, namespace, name, opts.subresource), q, {
      data: JSON.stringify(patch),
      contentType: PATCH_CONTENT_TYPES[type],
    }, opts.signal)) as T;
    if (opts.subresource === "status") this.metrics?.statusWrites.inc({ kind: rt.kind });
    return out;
  }

  /** true when the delete was accepted, false when the object was already gone (404). */
  async delete(
    rt: ResourceType,
    namespace: string | undefined,
    name: string,
    opts: {
      propagationPolicy?: "Foreground" | "Background" | "Orphan";
      preconditions?: { uid?: string; resourceVersion?: string };
      gracePeriodSeconds?: number;
      signal?: AbortSignal;
    } = {},
  ): Promise<boolean> {
    const body: Record<string, unknown> = { kind: "DeleteOptions", apiVersion: "v1" };
    if (opts.propagationPolicy) body.propagationPolicy = opts.propagationPolicy;
    if (opts.preconditions) body.preconditions = opts.preconditions;
    if (opts.gracePeriodSeconds !== undefined) body.gracePeriodSeconds = opts.gracePeriodSeconds;
    this.count("delete", rt);
    try {
      await this.json("DELETE", this.objectPath(rt, namespace, name), undefined, {
        data: JSON.stringify(body),
        contentType: "application/json",
      }, opts.signal);
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 404) return false;
      throw err;
    }
  }

  /**
   * Low-level request against an arbitrary API path (e.g. "/version", "/readyz"). Resolves with
   * the parsed JSON body, or the body text when it is not JSON ("/readyz" answers "ok").
   * Throws KubeApiError on non-2xx answers.
   */
  async request(method: string, path: string, opts: { query?: URLSearchParams; body?: unknown; contentType?: string; signal?: AbortSignal } = {}): Promise<unknown> {
    const body = opts.body === undefined ? undefined : { data: JSON.stringify(opts.body), contentType: opts.contentType ?? "application/json" };
    const r = await this.raw(method, path, opts.query, body, opts.signal);
    if (r.status < 200 || r.status > 299) throw errorFromResponse(method, path, r.status, r.text);
    try {
      return r.text === "" ? undefined : (JSON.parse(r.text) as unknown);
    } catch {
      return r.text;
    }
  }

  private count(verb: string, rt: ResourceType, subresource?: string): void {
    this.metrics?.kubeRequests.inc({ verb, resource: subresource ? `${rt.plural}/${subresource}` : rt.plural });
  }

  /** Close idle keep-alive sockets (open watches are ended by their signals). */
  close(): void {
    this.cachedAgent?.destroy();
    this.cachedAgent = undefined;
    this.cachedTls = undefined;
  }

  private objectPath(rt: ResourceType, namespace: string | undefined, name: string, sub?: string): string {
    if (rt.namespaced && !namespace) throw new TypeError(`${rt.kind} ${name}: a namespace is required`);
    return resourcePath(rt, rt.namespaced ? namespace : undefined, name, sub);
  }

  private url(path: string, q?: URLSearchParams): URL {
    const u = new URL(this.server.href);
    u.pathname = u.pathname.replace(/\/+$/, "") + path;
    u.search = q && q.size > 0 ? q.toString() : "";
    return u;
  }

  /**
   * Credentials are recomputed per request (tokens from files or exec plugins rotate); the agent
   * holding the TLS material is reused for as long as that material does not change.
   */
  private async connection(): Promise<Connection> {
    const o: https.RequestOptions = {};
    await this.kubeConfig.applyToHTTPSOptions(o);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(o.headers ?? {})) {
      if (typeof v === "string" || typeof v === "number") headers[k.toLowerCase()] = String(v);
      else if (Array.isArray(v)) headers[k.toLowerCase()] = v.join(", ");
    }
    if (o.auth) headers.authorization = `Basic ${Buffer.from(o.auth).toString("base64")}`;

    // A proxy configured in the kubeconfig: use the agent client-node built for it.
    if (this.kubeConfig.getCurrentCluster()?.proxyUrl && o.agent instanceof http.Agent) return { agent: o.agent, headers };

    const tls: TlsMaterial = {
      ca: o.ca,
      cert: o.cert,
      key: o.key,
      pfx: o.pfx,
      passphrase: o.passphrase,
      rejectUnauthorized: o.rejectUnauthorized,
      servername: o.servername,
    };
    const same =
      this.cachedAgent !== undefined &&
      this.cachedTls !== undefined &&
      (Object.keys(tls) as (keyof TlsMaterial)[]).every((k) => buffersEqual(tls[k], this.cachedTls?.[k]));
    if (!same || !this.cachedAgent) {
      this.cachedAgent?.destroy();
      const base = { keepAlive: true, maxFreeSockets: 16 };
      this.cachedAgent = this.isHttps
        ? new https.Agent({
            ...base,
            ...(tls.ca ? { ca: tls.ca } : {}),
            ...(tls.cert ? { cert: tls.cert } : {}),
            ...(tls.key ? { key: tls.key } : {}),
            ...(tls.pfx ? { pfx: tls.pfx } : {}),
            ...(tls.passphrase ? { passphrase: tls.passphrase } : {}),
            ...(tls.rejectUnauthorized !== undefined ? { rejectUnauthorized: tls.rejectUnauthorized } : {}),
            ...(tls.servername ? { servername: tls.servername } : {}),
          })
        : new http.Agent(base);
      this.cachedTls = tls;
    }
    return { agent: this.cachedAgent, headers };
  }

  private async raw(method: string, path: string, q: URLSearchParams | undefined, body: { data: string; contentType: string } | undefined, signal?: AbortSignal): Promise<RawResponse> {
    const conn = await this.connection();
    const url = this.url(path, q);
    const timeout = AbortSignal.timeout(this.requestTimeoutMs);
    const sig = signal ? AbortSignal.any([signal, timeout]) : timeout;
    const headers: Record<string, string> = { ...conn.headers, accept: "application/json" };
    if (body) {
      headers["content-type"] = body.contentType;
      headers["content-length"] = String(Buffer.byteLength(body.data));
    }
    const once = (): Promise<RawResponse> => new Promise<RawResponse>((resolve, reject) => {
      const req = (this.isHttps ? https : http).request(url, { method, agent: conn.agent, headers, signal: sig });
      let answered = false;
      req.once("error", (err: NodeJS.ErrnoException) => {
        // A kept-alive connection the server had already closed: the request never reached it.
        if (!answered && req.reusedSocket && (err.code === "ECONNRESET" || err.code === "EPIPE")) reject(new StaleSocketError(err));
        else reject(err);
      });
      req.once("response", (res) => {
        answered = true;
        res.setEncoding("utf8");
        let text = "";
        res.on("data", (c: string) => (text += c));
        res.once("error", reject);
        res.once("end", () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.end(body?.data);
    });
    try {
      try {
        return await once();
      } catch (err) {
        // Sent again once, on a fresh connection (as Node's documentation advises for reused sockets).
        if (err instanceof StaleSocketError && !sig.aborted) return await once();
        throw err;
      }
    } catch (err) {
      if (timeout.aborted && !signal?.aborted) {
        throw new Error(`${method} ${path}: no answer within ${this.requestTimeoutMs} ms`, { cause: err });
      }
      throw err;
    }
  }

  private async json(method: string, path: string, q: URLSearchParams | undefined, body: { data: string; contentType: string } | undefined, signal?: AbortSignal): Promise<unknown> {
    const r = await this.raw(method, path, q, body, signal);
    if (r.status < 200 || r.status > 299) throw errorFromResponse(method, path, r.status, r.text);
    if (r.text === "") return undefined;
    try {
      return JSON.parse(r.text);
    } catch {
      throw new Error(`${method} ${path}: response is not JSON (status ${r.status})`);
    }
  }
}

function parseWatchLine<T>(line: string): WatchEvent<T> {
  let ev: unknown;
  try {
    ev = JSON.parse(line);
  } catch {
    throw new Error(`watch: malformed event line (${line.length} bytes)`);
  }
  if (!isRecord(ev) || typeof ev.type !== "string" || !isRecord(ev.object)) {
    throw new Error("watch: event without type/object");
  }
  const t = ev.type;
  if (t === "ERROR") {
    const o = ev.object;
    return {
      type: "ERROR",
      object: {
        ...(typeof o.code === "number" ? { code: o.code } : {}),
        ...(typeof o.reason === "string" ? { reason: o.reason } : {}),
        ...(typeof o.message === "string" ? { message: o.message } : {}),
      },
    };
  }
  if (t !== "ADDED" && t !== "MODIFIED" && t !== "DELETED" && t !== "BOOKMARK") {
    throw new Error(`watch: unknown event type ${t}`);
  }
  return { type: t, object: ev.object as T };
}
