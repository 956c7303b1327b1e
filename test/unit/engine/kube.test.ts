// KubeClient request building, error mapping and watch-stream parsing, checked against an
// in-process HTTP endpoint on loopback that records what it receives and answers scripted
// responses. (Behaviour against the real kube-apiserver is covered in test/integration.)
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { KubeConfig } from "@kubernetes/client-node";
import {
  KubeApiError,
  KubeClient,
  objectKey,
  resourcePath,
  splitKey,
  type KubeObject,
  type ResourceType,
  type WatchEvent,
} from "../../../src/engine/kube.js";

const ConfigMaps: ResourceType = { group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true };
const Namespaces: ResourceType = { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false };
const Runs: ResourceType = { group: "vmforge.dev", version: "v1alpha1", plural: "runs", kind: "Run", namespaced: true };

interface Recorded {
  method: string;
  url: URL;
  headers: IncomingMessage["headers"];
  body: string;
}

type Handler = (req: Recorded, res: ServerResponse) => void;

let server: Server;
let port = 0;
let handler: Handler;
let requests: Recorded[] = [];
const TOKEN = "tok-3b1f-not-a-real-secret";

function client(opts?: { requestTimeoutMs?: number }): KubeClient {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "c", server: `http://127.0.0.1:${port}`, skipTLSVerify: true }],
    users: [{ name: "u", token: TOKEN }],
    contexts: [{ name: "ctx", cluster: "c", user: "u" }],
    currentContext: "ctx",
  });
  return new KubeClient(kc, opts);
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

function status(code: number, reason: string, message: string): Record<string, unknown> {
  return { kind: "Status", apiVersion: "v1", status: "Failure", code, reason, message };
}

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c: string) => (body += c));
    req.on("end", () => {
      const r: Recorded = { method: req.method ?? "", url: new URL(req.url ?? "/", "http://x"), headers: req.headers, body };
      requests.push(r);
      handler(r, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

beforeEach(() => {
  requests = [];
  handler = (_req, res) => json(res, 500, status(500, "InternalError", "no handler"));
});

describe("keys and paths", () => {
  it("objectKey / splitKey", () => {
    expect(objectKey({ metadata: { name: "a", namespace: "ns" } })).toBe("ns/a");
    expect(objectKey({ metadata: { name: "cluster-wide" } })).toBe("cluster-wide");
    expect(splitKey("ns/a")).toEqual({ namespace: "ns", name: "a" });
    expect(splitKey("cluster-wide")).toEqual({ name: "cluster-wide" });
  });

  it("builds core and group paths", () => {
    expect(resourcePath(ConfigMaps, "ns", "a")).toBe("/api/v1/namespaces/ns/configmaps/a");
    expect(resourcePath(ConfigMaps)).toBe("/api/v1/configmaps");
    expect(resourcePath(Namespaces, undefined, "n1")).toBe("/api/v1/namespaces/n1");
    expect(resourcePath(Runs, "ns", "r1", "status")).toBe("/apis/vmforge.dev/v1alpha1/namespaces/ns/runs/r1/status");
    expect(resourcePath(Runs, "ns")).toBe("/apis/vmforge.dev/v1alpha1/namespaces/ns/runs");
  });
});

describe("requests", () => {
  it("get sends the bearer token and returns the object; 404 is undefined", async () => {
    handler = (req, res) => {
      if (req.url.pathname.endsWith("/present")) json(res, 200, { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "present", namespace: "ns" } });
      else json(res, 404, status(404, "NotFound", "configmaps \"absent\" not found"));
    };
    const c = client();
    const got = await c.get<KubeObject>(ConfigMaps, "ns", "present");
    expect(got?.metadata.name).toBe("present");
    expect(await c.get(ConfigMaps, "ns", "absent")).toBeUndefined();
    expect(requests[0]?.method).toBe("GET");
    expect(requests[0]?.url.pathname).toBe("/api/v1/namespaces/ns/configmaps/present");
    expect(requests[0]?.headers.authorization).toBe(`Bearer ${TOKEN}`);
  });

  it("maps a Status body to KubeApiError without echoing the request body", async () => {
    handler = (_req, res) => json(res, 409, status(409, "AlreadyExists", "configmaps \"s\" already exists"));
    const c = client();
    const err = await c
      .create(ConfigMaps, { metadata: { name: "s", namespace: "ns" }, data: { password: "hunter2-secret-value" } } as KubeObject)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KubeApiError);
    const e = err as KubeApiError;
    expect(e.status).toBe(409);
    expect(e.reason).toBe("AlreadyExists");
    expect(e.message).toContain("already exists");
    expect(e.message).not.toContain("hunter2");
    expect(JSON.stringify(e.body)).not.toContain("hunter2");
    // the request itself was well formed
    const sent = JSON.parse(requests[0]?.body ?? "{}") as KubeObject & { data: Record<string, string> };
    expect(requests[0]?.method).toBe("POST");
    expect(requests[0]?.url.pathname).toBe("/api/v1/namespaces/ns/configmaps");
    expect(requests[0]?.headers["content-type"]).toBe("application/json");
    expect(sent.apiVersion).toBe("v1");
    expect(sent.kind).toBe("ConfigMap");
  });

  it("derives a reason from the status code when the body is not a Status", async () => {
    handler = (_req, res) => {
      res.writeHead(503, { "content-type": "text/plain" });
      res.end("upstream unavailable");
    };
    const err = (await client().get(ConfigMaps, "ns", "x").catch((e: unknown) => e)) as KubeApiError;
    expect(err).toBeInstanceOf(KubeApiError);
    expect(err.status).toBe(503);
    expect(err.reason).toBe("ServiceUnavailable");
  });

  it("refuses namespaced calls without a namespace", async () => {
    const c = client();
    await expect(c.create(ConfigMaps, { metadata: { name: "x" } })).rejects.toThrow(TypeError);
    await expect(c.get(ConfigMaps, undefined, "x")).rejects.toThrow(TypeError);
    expect(requests).toHaveLength(0);
  });

  it("patch uses the content type of each patch flavour, the status subresource and fieldManager", async () => {
    handler = (req, res) => json(res, 200, { metadata: { name: "r1", namespace: "ns" }, echo: req.body });
    const c = client();
    await c.patch(Runs, "ns", "r1", { spec: { cancel: true } }, "merge");
    await c.patch(Runs, "ns", "r1", [{ op: "test", path: "/metadata/finalizers", value: [] }], "json", { fieldManager: "vmforge" });
    await c.patch(ConfigMaps, "ns", "cm", { data: { a: "b" } }, "strategic");
    await c.patch(Runs, "ns", "r1", { status: { phase: "Running" } }, "merge", { subresource: "status" });
    expect(requests.map((r) => r.headers["content-type"])).toEqual([
      "application/merge-patch+json",
      "application/json-patch+json",
      "application/strategic-merge-patch+json",
      "application/merge-patch+json",
    ]);
    expect(requests.map((r) => r.method)).toEqual(["PATCH", "PATCH", "PATCH", "PATCH"]);
    expect(requests[1]?.url.searchParams.get("fieldManager")).toBe("vmforge");
    expect(requests[3]?.url.pathname).toBe("/apis/vmforge.dev/v1alpha1/namespaces/ns/runs/r1/status");
    expect(JSON.parse(requests[1]?.body ?? "null")).toEqual([{ op: "test", path: "/metadata/finalizers", value: [] }]);
  });

  it("replace PUTs the object (optionally to /status)", async () => {
    handler = (req, res) => json(res, 200, JSON.parse(req.body) as unknown);
    const c = client();
    const out = await c.replace<KubeObject>(Runs, { metadata: { name: "r1", namespace: "ns", resourceVersion: "7" } }, { subresource: "status" });
    expect(requests[0]?.method).toBe("PUT");
    expect(requests[0]?.url.pathname).toBe("/apis/vmforge.dev/v1alpha1/namespaces/ns/runs/r1/status");
    expect(out.apiVersion).toBe("vmforge.dev/v1alpha1");
    expect(out.kind).toBe("Run");
  });

  it("delete sends DeleteOptions; true when accepted, false when already gone", async () => {
    handler = (req, res) => {
      if (req.url.pathname.endsWith("/gone")) json(res, 404, status(404, "NotFound", "not found"));
      else json(res, 200, { kind: "Status", status: "Success" });
    };
    const c = client();
    expect(await c.delete(ConfigMaps, "ns", "here", { propagationPolicy: "Foreground", preconditions: { uid: "u1" } })).toBe(true);
    expect(await c.delete(ConfigMaps, "ns", "gone")).toBe(false);
    expect(requests[0]?.method).toBe("DELETE");
    expect(JSON.parse(requests[0]?.body ?? "{}")).toEqual({
      kind: "DeleteOptions",
      apiVersion: "v1",
      propagationPolicy: "Foreground",
      preconditions: { uid: "u1" },
    });
  });

  it("list passes selectors and paging, and fills apiVersion/kind of items", async () => {
    handler = (_req, res) =>
      json(res, 200, { kind: "ConfigMapList", metadata: { resourceVersion: "42", continue: "tok2" }, items: [{ metadata: { name: "a", namespace: "ns" } }] });
    const out = await client().list(ConfigMaps, { namespace: "ns", labelSelector: "app=x", fieldSelector: "metadata.name=a", limit: 1, continue: "tok1" });
    const q = requests[0]?.url.searchParams;
    expect(requests[0]?.url.pathname).toBe("/api/v1/namespaces/ns/configmaps");
    expect(q?.get("labelSelector")).toBe("app=x");
    expect(q?.get("fieldSelector")).toBe("metadata.name=a");
    expect(q?.get("limit")).toBe("1");
    expect(q?.get("continue")).toBe("tok1");
    expect(out.metadata).toEqual({ resourceVersion: "42", continue: "tok2" });
    expect(out.items[0]?.apiVersion).toBe("v1");
    expect(out.items[0]?.kind).toBe("ConfigMap");
  });

  it("sends a request again, once, when its kept-alive connection turns out closed before any answer", async () => {
    // The server resets the connection when a second request arrives on it: what a client sees
    // when it reuses a keep-alive socket the server had just closed.
    const seen = new Map<object, number>();
    let resets = 0;
    let answered = 0;
    const s = createServer((req, res) => {
      const n = (seen.get(req.socket) ?? 0) + 1;
      seen.set(req.socket, n);
      if (n > 1) {
        resets++;
        req.socket.resetAndDestroy();
        return;
      }
      answered++;
      json(res, 200, { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "a", namespace: "ns" } });
    });
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    try {
      const kc = new KubeConfig();
      kc.loadFromOptions({
        clusters: [{ name: "c", server: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, skipTLSVerify: true }],
        users: [{ name: "u", token: TOKEN }],
        contexts: [{ name: "ctx", cluster: "c", user: "u" }],
        currentContext: "ctx",
      });
      const c = new KubeClient(kc);
      expect((await c.get(ConfigMaps, "ns", "a"))?.metadata.name).toBe("a");
      expect((await c.get(ConfigMaps, "ns", "a"))?.metadata.name).toBe("a"); // reused socket reset, sent again
      expect(resets).toBe(1);
      expect(answered).toBe(2);
      c.close();
    } finally {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  });

  it("gives up on a request that gets no answer within requestTimeoutMs", async () => {
    handler = () => {
      // never answer
    };
    await expect(client({ requestTimeoutMs: 100 }).get(ConfigMaps, "ns", "slow")).rejects.toThrow(/no answer within 100 ms/);
  });
});

describe("watch", () => {
  it("parses newline-delimited events split at arbitrary byte boundaries", async () => {
    const events: WatchEvent<KubeObject>[] = [
      { type: "ADDED", object: { metadata: { name: "a", namespace: "ns", resourceVersion: "11" } } },
      { type: "MODIFIED", object: { metadata: { name: "ä-ü", namespace: "ns", resourceVersion: "12", annotations: { note: "日本語 ✓" } } } },
      { type: "BOOKMARK", object: { metadata: { resourceVersion: "13" } } },
      { type: "DELETED", object: { metadata: { name: "a", namespace: "ns", resourceVersion: "14" } } },
    ];
    const wire = Buffer.from(events.map((e) => JSON.stringify(e)).join("\n") + "\n", "utf8");
    handler = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      // dribble the stream out in 7-byte pieces (splits lines and multi-byte characters)
      let i = 0;
      const step = (): void => {
        if (i >= wire.length) return void res.end();
        res.write(wire.subarray(i, i + 7));
        i += 7;
        setImmediate(step);
      };
      step();
    };
    const got: WatchEvent<KubeObject>[] = [];
    for await (const ev of client().watch(ConfigMaps, { namespace: "ns", resourceVersion: "10", allowWatchBookmarks: true, timeoutSeconds: 30 }, new AbortController().signal)) {
      got.push(ev);
    }
    expect(got).toEqual(events);
    const q = requests[0]?.url.searchParams;
    expect(requests[0]?.url.pathname).toBe("/api/v1/namespaces/ns/configmaps");
    expect(q?.get("watch")).toBe("1");
    expect(q?.get("resourceVersion")).toBe("10");
    expect(q?.get("allowWatchBookmarks")).toBe("true");
    expect(q?.get("timeoutSeconds")).toBe("30");
  });

  it("yields ERROR events with their Status fields", async () => {
    handler = (_req, res) => {
      res.writeHead(200);
      res.end(JSON.stringify({ type: "ERROR", object: status(410, "Expired", "too old resource version: 1 (200)") }) + "\n");
    };
    const got: WatchEvent<KubeObject>[] = [];
    for await (const ev of client().watch(ConfigMaps, { resourceVersion: "1" }, new AbortController().signal)) got.push(ev);
    expect(got).toEqual([{ type: "ERROR", object: { code: 410, reason: "Expired", message: "too old resource version: 1 (200)" } }]);
  });

  it("throws KubeApiError when the watch request itself is refused", async () => {
    handler = (_req, res) => json(res, 410, status(410, "Expired", "too old"));
    const it = client().watch(ConfigMaps, { resourceVersion: "1" }, new AbortController().signal);
    const err = await (async () => {
      for await (const _ of it) {
        // nothing expected
      }
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KubeApiError);
    expect((err as KubeApiError).status).toBe(410);
    expect((err as KubeApiError).reason).toBe("Expired");
  });

  it("ends quietly when its signal is aborted and closes the connection", async () => {
    let closed!: () => void;
    const connectionClosed = new Promise<void>((r) => (closed = r));
    handler = (_req, res) => {
      res.writeHead(200);
      res.write(JSON.stringify({ type: "ADDED", object: { metadata: { name: "a", namespace: "ns", resourceVersion: "5" } } }) + "\n");
      res.on("close", () => closed());
      // keeps the stream open
    };
    const ac = new AbortController();
    const got: string[] = [];
    for await (const ev of client().watch(ConfigMaps, { resourceVersion: "4" }, ac.signal)) {
      got.push(ev.type);
      ac.abort();
    }
    expect(got).toEqual(["ADDED"]);
    await connectionClosed; // the server saw the client go away
  });

  it("closes the connection when the consumer stops iterating early", async () => {
    let closed!: () => void;
    const connectionClosed = new Promise<void>((r) => (closed = r));
    handler = (_req, res) => {
      res.writeHead(200);
      res.write(JSON.stringify({ type: "ADDED", object: { metadata: { name: "a", resourceVersion: "5" } } }) + "\n");
      res.on("close", () => closed());
    };
    for await (const _ of client().watch(Namespaces, { resourceVersion: "4" }, new AbortController().signal)) break;
    await connectionClosed;
  });

  it("reports a stream broken mid-way as an error", async () => {
    handler = (_req, res) => {
      res.writeHead(200);
      res.write(JSON.stringify({ type: "ADDED", object: { metadata: { name: "a", resourceVersion: "5" } } }) + "\n");
      setImmediate(() => res.socket?.destroy());
    };
    const got: string[] = [];
    const err = await (async () => {
      for await (const ev of client().watch(Namespaces, { resourceVersion: "4" }, new AbortController().signal)) got.push(ev.type);
    })().catch((e: unknown) => e);
    expect(got).toEqual(["ADDED"]);
    expect(err).toBeInstanceOf(Error);
  });
});
