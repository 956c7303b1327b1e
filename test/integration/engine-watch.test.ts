// The engine's KubeClient and Reflector against the real kube-apiserver:
//  - KubeClient requests, error reasons and a raw watch on the shared cluster;
//  - a Reflector on ConfigMaps in a fresh namespace sees create / update / delete;
//  - a Reflector started from an ancient resourceVersion is told "too old" and relists;
//  - on a private cluster, kube-apiserver is stopped, changes are made through a second
//    kube-apiserver on the same etcd while the first is down, the first is started again, and the
//    Reflector ends up having reported every one of those changes.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { KubeConfig } from "@kubernetes/client-node";
import { KubeApiError, KubeClient, objectKey, type KubeObject, type ResourceType, type WatchEvent } from "../../src/engine/kube.js";
import { Reflector, type ReflectorEventType } from "../../src/engine/reflector.js";
import { EngineMetrics } from "../../src/engine/metrics.js";
import { createLogger } from "../../src/engine/logger.js";
import { startCluster, type Cluster } from "../harness/cluster.js";
import { deleteNamespace, freshNamespace, randomSuffix } from "../harness/helpers.js";
import { freePort, spawnSupervised, waitFor, type Supervised } from "../harness/process.js";

type ConfigMap = KubeObject & { data?: Record<string, string> };
const ConfigMaps: ResourceType = { group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true };
const Namespaces: ResourceType = { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false };
const WAIT = { timeout: 60_000, interval: 100 };
const logger = createLogger({ level: process.env.VMFORGE_TEST_LOG_LEVEL ?? "silent", name: "engine-watch" });

interface Seen {
  type: ReflectorEventType;
  key: string;
  data?: Record<string, string>;
}

// Every ConfigMap of these tests carries this label and the reflectors select on it, so that the
// kube-root-ca.crt ConfigMap the controller manager puts in every namespace stays out of the way.
const MINE = { "vmforge.dev/engine-test": "yes" };

function cm(namespace: string, name: string, data: Record<string, string>, labels?: Record<string, string>): ConfigMap {
  return { apiVersion: "v1", kind: "ConfigMap", metadata: { name, namespace, labels: { ...MINE, ...labels } }, data };
}

function track(
  client: KubeClient,
  namespace: string,
  extra: Partial<ConstructorParameters<typeof Reflector<ConfigMap>>[0]> = {},
): { r: Reflector<ConfigMap>; seen: Seen[]; metrics: EngineMetrics } {
  const seen: Seen[] = [];
  const metrics = new EngineMetrics({ defaultMetrics: false });
  const r = new Reflector<ConfigMap>({
    client,
    resource: ConfigMaps,
    namespace,
    labelSelector: "vmforge.dev/engine-test=yes",
    logger,
    metrics,
    resyncPeriodMs: 0,
    onEvent: (type, o) => seen.push({ type, key: objectKey(o), ...(o.data ? { data: o.data } : {}) }),
    ...extra,
  });
  r.start();
  return { r, seen, metrics };
}

function saw(seen: Seen[], type: ReflectorEventType, key: string, data?: Record<string, string>): boolean {
  return seen.some((s) => s.type === type && s.key === key && (data === undefined || JSON.stringify(s.data) === JSON.stringify(data)));
}

async function restarts(metrics: EngineMetrics, reason: string): Promise<number> {
  return (await metrics.watchRestarts.get()).values.filter((v) => v.labels.reason === reason).reduce((n, v) => n + v.value, 0);
}

function storeData(r: Reflector<ConfigMap>): Record<string, Record<string, string> | undefined> {
  return Object.fromEntries(r.store.list().map((o) => [o.metadata.name ?? "", o.data]));
}

describe("KubeClient on the real API server", () => {
  let client: KubeClient;
  let ns: string;

  beforeAll(async () => {
    client = KubeClient.fromKubeconfig(inject("kubeconfig"));
    ns = await freshNamespace(client, "engine-kube");
  });

  afterAll(async () => {
    if (ns) await deleteNamespace(ns);
    client?.close();
  });

  it("creates, reads, patches, replaces and deletes, with the API server's error reasons", async () => {
    const created = await client.create(ConfigMaps, cm(ns, "one", { a: "1" }));
    expect(created.metadata.uid).toBeTruthy();
    expect(created.metadata.resourceVersion).toBeTruthy();

    const dup = await client.create(ConfigMaps, cm(ns, "one", { a: "1" })).catch((e: unknown) => e);
    expect(dup).toBeInstanceOf(KubeApiError);
    expect((dup as KubeApiError).status).toBe(409);
    expect((dup as KubeApiError).reason).toBe("AlreadyExists");

    expect((await client.get<ConfigMap>(ConfigMaps, ns, "one"))?.data).toEqual({ a: "1" });
    expect(await client.get(ConfigMaps, ns, "nope")).toBeUndefined();

    const merged = await client.patch<ConfigMap>(ConfigMaps, ns, "one", { data: { b: "2" } }, "merge", { fieldManager: "vmforge-test" });
    expect(merged.data).toEqual({ a: "1", b: "2" });
    const strategic = await client.patch<ConfigMap>(ConfigMaps, ns, "one", { metadata: { labels: { x: "y" } } }, "strategic");
    expect(strategic.metadata.labels).toEqual({ ...MINE, x: "y" });
    const jsonPatched = await client.patch<ConfigMap>(ConfigMaps, ns, "one", [
      { op: "test", path: "/data/a", value: "1" },
      { op: "replace", path: "/data/a", value: "3" },
    ], "json");
    expect(jsonPatched.data).toEqual({ a: "3", b: "2" });

    const failedTest = await client
      .patch(ConfigMaps, ns, "one", [{ op: "test", path: "/data/a", value: "wrong" }], "json")
      .catch((e: unknown) => e);
    expect(failedTest).toBeInstanceOf(KubeApiError);
    expect((failedTest as KubeApiError).status).toBe(422);
    expect((failedTest as KubeApiError).reason).toBe("Invalid");

    // replace with a stale resourceVersion is a Conflict
    const stale = await client.replace(ConfigMaps, { ...created, data: { c: "4" } } as ConfigMap).catch((e: unknown) => e);
    expect(stale).toBeInstanceOf(KubeApiError);
    expect((stale as KubeApiError).reason).toBe("Conflict");
    const replaced = await client.replace<ConfigMap>(ConfigMaps, { ...jsonPatched, data: { c: "4" } });
    expect(replaced.data).toEqual({ c: "4" });

    const badPrecondition = await client.delete(ConfigMaps, ns, "one", { preconditions: { uid: "not-the-uid" } }).catch((e: unknown) => e);
    expect((badPrecondition as KubeApiError).status).toBe(409);
    expect(await client.delete(ConfigMaps, ns, "one", { preconditions: { uid: created.metadata.uid! } })).toBe(true);
    expect(await client.delete(ConfigMaps, ns, "one")).toBe(false);

    const invalid = await client.create(ConfigMaps, cm(ns, "Not_A_Valid_Name", {})).catch((e: unknown) => e);
    expect((invalid as KubeApiError).reason).toBe("Invalid");
  });

  it("lists in pages and works with cluster-scoped resources", async () => {
    for (let i = 0; i < 5; i++) await client.create(ConfigMaps, cm(ns, `page-${i}`, { i: String(i) }, { set: "paging" }));
    const names: string[] = [];
    let cont: string | undefined;
    let pages = 0;
    do {
      const page = await client.list<ConfigMap>(ConfigMaps, { namespace: ns, labelSelector: "set=paging", limit: 2, ...(cont ? { continue: cont } : {}) });
      expect(page.metadata.resourceVersion).toMatch(/^\d+$/);
      names.push(...page.items.map((o) => o.metadata.name ?? ""));
      cont = page.metadata.continue;
      pages++;
    } while (cont);
    expect(pages).toBe(3);
    expect(names.sort()).toEqual(["page-0", "page-1", "page-2", "page-3", "page-4"]);

    const nsObj = await client.get(Namespaces, undefined, ns);
    expect(nsObj?.metadata.name).toBe(ns);
  });

  it("streams watch events from a resourceVersion and ends when the server's timeout passes", async () => {
    const start = await client.list(ConfigMaps, { namespace: ns, limit: 1 });
    const events: WatchEvent<ConfigMap>[] = [];
    const ac = new AbortController();
    const consumed = (async () => {
      for await (const ev of client.watch<ConfigMap>(ConfigMaps, { namespace: ns, resourceVersion: start.metadata.resourceVersion, allowWatchBookmarks: true, timeoutSeconds: 5 }, ac.signal)) {
        events.push(ev);
      }
    })();
    await client.create(ConfigMaps, cm(ns, "watched", { v: "1" }));
    await client.patch(ConfigMaps, ns, "watched", { data: { v: "2" } }, "merge");
    await client.delete(ConfigMaps, ns, "watched");
    await consumed; // returns by itself once timeoutSeconds has passed
    const mine = events.filter((e) => e.type !== "BOOKMARK" && e.type !== "ERROR" && e.object.metadata.name === "watched");
    expect(mine.map((e) => e.type)).toEqual(["ADDED", "MODIFIED", "DELETED"]);
    expect(ac.signal.aborted).toBe(false);
  });
});

describe("Reflector on the real API server", () => {
  let client: KubeClient;
  const namespaces: string[] = [];
  const reflectors: Reflector<ConfigMap>[] = [];

  beforeAll(() => {
    client = KubeClient.fromKubeconfig(inject("kubeconfig"));
  });

  afterAll(async () => {
    await Promise.all(reflectors.map((r) => r.stop()));
    await Promise.all(namespaces.map((n) => deleteNamespace(n)));
    client?.close();
  });

  it("lists what exists, then sees creates, updates and deletes", async () => {
    const ns = await freshNamespace(client, "engine-watch");
    namespaces.push(ns);
    await client.create(ConfigMaps, cm(ns, "before", { v: "0" }));
    const { r, seen, metrics } = track(client, ns);
    reflectors.push(r);
    await r.waitForSync();
    expect(r.hasSynced()).toBe(true);
    expect(saw(seen, "ADDED", `${ns}/before`, { v: "0" })).toBe(true);

    await client.create(ConfigMaps, cm(ns, "a", { v: "1" }));
    await client.patch(ConfigMaps, ns, "a", { data: { v: "2" } }, "merge");
    await client.create(ConfigMaps, cm(ns, "b", { v: "1" }));
    await client.delete(ConfigMaps, ns, "before");
    await vi.waitFor(() => expect(storeData(r)).toEqual({ a: { v: "2" }, b: { v: "1" } }), WAIT);
    expect(saw(seen, "ADDED", `${ns}/a`)).toBe(true);
    expect(saw(seen, "MODIFIED", `${ns}/a`, { v: "2" })).toBe(true);
    expect(saw(seen, "DELETED", `${ns}/before`)).toBe(true);
    expect(await restarts(metrics, "initial")).toBe(1);
    // objects of other namespaces are not reported
    expect(seen.every((s) => s.key.startsWith(`${ns}/`))).toBe(true);
  });

  it("follows only objects matching its label selector", async () => {
    const ns = await freshNamespace(client, "engine-sel");
    namespaces.push(ns);
    const { r, seen } = track(client, ns, { labelSelector: "vmforge.dev/engine-test=yes,pick=yes" });
    reflectors.push(r);
    await r.waitForSync();
    await client.create(ConfigMaps, cm(ns, "other", {}, { pick: "no" }));
    await client.create(ConfigMaps, cm(ns, "picked", {}, { pick: "yes" }));
    await vi.waitFor(() => expect(r.store.keys()).toEqual([`${ns}/picked`]), WAIT);
    expect(seen.some((s) => s.key === `${ns}/other`)).toBe(false);
  });
});

// ----------------------------------------------------------------------------------------------
// Private cluster: etcd compaction and kube-apiserver stop / restart.
//
// The harness does not expose control over a running kube-apiserver, so this file does it itself:
// it reads the command line of the private cluster's kube-apiserver from /proc, stops that
// process, and starts the same binary again with the same flags (same port, certificates and
// etcd) under the harness's process supervision. History is made "too old" by compacting etcd
// through its v3 JSON gateway (what kube-apiserver itself does every 5 minutes).

interface ProcInfo {
  pid: number;
  argv: string[];
}

function findApiServer(clusterDir: string): ProcInfo {
  const certDirFlag = `--cert-dir=${join(clusterDir, "apiserver-certs")}`;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").filter((s) => s !== "");
    } catch {
      continue;
    }
    if (argv[0]?.endsWith("/kube-apiserver") && argv.includes(certDirFlag)) return { pid: Number(entry), argv };
  }
  throw new Error(`kube-apiserver of ${clusterDir} not found in /proc`);
}

function flag(argv: string[], name: string): string {
  const v = argv.find((a) => a.startsWith(`--${name}=`));
  if (!v) throw new Error(`kube-apiserver runs without --${name}`);
  return v.slice(name.length + 3);
}

/** Running (an exited process waiting to be reaped by its parent shell counts as gone). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/**
 * SIGTERM, and SIGKILL when it is still there after a few seconds (a graceful kube-apiserver
 * shutdown with open watches takes close to a minute; being killed is a fair outage too).
 */
async function stopPid(pid: number): Promise<void> {
  process.kill(pid, "SIGTERM");
  try {
    await waitFor("kube-apiserver to exit", async () => (alive(pid) ? undefined : true), { timeoutMs: 5_000 });
  } catch {
    if (alive(pid)) process.kill(pid, "SIGKILL");
    await waitFor("kube-apiserver to die", async () => (alive(pid) ? undefined : true), { timeoutMs: 10_000 });
  }
}

/** Compacts etcd at its current revision: every older resourceVersion becomes "too old". */
async function compactEtcd(etcdUrl: string): Promise<number> {
  const post = async (path: string, body: unknown): Promise<Record<string, unknown>> => {
    const res = await fetch(`${etcdUrl}${path}`, { method: "POST", body: JSON.stringify(body) });
    const out = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new Error(`etcd ${path}: ${res.status} ${JSON.stringify(out)}`);
    return out;
  };
  const range = await post("/v3/kv/range", { key: Buffer.from("/").toString("base64") });
  const revision = Number((range.header as { revision?: string } | undefined)?.revision);
  if (!Number.isFinite(revision) || revision <= 0) throw new Error("etcd did not report its revision");
  await post("/v3/kv/compaction", { revision: String(revision), physical: true });
  return revision;
}

function clientFor(kubeconfigPath: string, server: string): KubeClient {
  const base = new KubeConfig();
  base.loadFromFile(kubeconfigPath);
  const cluster = base.getCurrentCluster();
  const user = base.getCurrentUser();
  if (!cluster || !user) throw new Error("kubeconfig without current cluster/user");
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ ...cluster, server }],
    users: [user],
    contexts: [{ name: "c", cluster: cluster.name, user: user.name }],
    currentContext: "c",
  });
  return new KubeClient(kc);
}

async function waitReady(client: KubeClient, proc?: Supervised): Promise<void> {
  await waitFor(
    "kube-apiserver /readyz",
    async () => {
      try {
        await client.request("GET", "/readyz");
        return true;
      } catch {
        return undefined;
      }
    },
    { timeoutMs: 120_000, ...(proc ? { proc } : {}) },
  );
}

describe("on a private cluster: too-old resourceVersions and kube-apiserver restarts", () => {
  let cluster: Cluster | undefined;
  const extraProcs: Supervised[] = [];
  let client: KubeClient;
  let etcdUrl: string;

  beforeAll(async () => {
    cluster = await startCluster({ log: () => undefined });
    client = KubeClient.fromKubeconfig(cluster.kubeconfigPath);
    etcdUrl = flag(findApiServer(cluster.dir).argv, "etcd-servers").split(",")[0]!;
  });

  afterAll(async () => {
    client?.close();
    for (const p of extraProcs) await p.stop(10_000);
    await cluster?.stop();
  });

  /**
   * Stops the cluster's kube-apiserver, runs `whileDown` with a client of a second kube-apiserver
   * on the same etcd, stops that one, and starts the original again with its own flags.
   */
  async function withApiServerDown(whileDown: (other: KubeClient) => Promise<void>): Promise<void> {
    const c = cluster!;
    const original = findApiServer(c.dir);
    await stopPid(original.pid);
    expect(await client.list(ConfigMaps, { namespace: "default", limit: 1 }).then(() => "answered", () => "refused")).toBe("refused");

    const port = await freePort();
    const secondArgs = original.argv.slice(1).map((a) =>
      a.startsWith("--secure-port=") ? `--secure-port=${port}` : a.startsWith("--cert-dir=") ? `--cert-dir=${join(c.dir, "apiserver-b-certs")}` : a,
    );
    const second = spawnSupervised({ name: "kube-apiserver-b", command: original.argv[0]!, args: secondArgs, logFile: join(c.dir, "kube-apiserver-b.log") });
    extraProcs.push(second);
    const other = clientFor(c.kubeconfigPath, `https://127.0.0.1:${port}`);
    try {
      await waitReady(other, second);
      await whileDown(other);
    } finally {
      other.close();
      await second.stop(10_000);
    }

    const restarted = spawnSupervised({ name: "kube-apiserver", command: original.argv[0]!, args: original.argv.slice(1), logFile: join(c.dir, "kube-apiserver.log") });
    extraProcs.push(restarted);
    await waitReady(client, restarted);
  }

  // On a young cluster kube-apiserver's watch cache still reaches back to resourceVersion 1, so
  // "too old" needs history compacted away and a kube-apiserver whose cache starts after it.
  it("after compaction, a watch from an ancient resourceVersion is answered 410 and a reflector relists", async () => {
    const ns = await freshNamespace(client, "engine-oldrv");
    for (const n of ["x", "y", "z"]) await client.create(ConfigMaps, cm(ns, n, { n }));
    await withApiServerDown(async () => {
      await compactEtcd(etcdUrl);
    });

    const events: WatchEvent<ConfigMap>[] = [];
    let thrown: unknown;
    try {
      for await (const ev of client.watch<ConfigMap>(ConfigMaps, { namespace: ns, resourceVersion: "1", timeoutSeconds: 10 }, new AbortController().signal)) {
        events.push(ev);
        if (ev.type === "ERROR") break;
      }
    } catch (err) {
      thrown = err;
    }
    const gone = (thrown instanceof KubeApiError && thrown.status === 410) || events.some((e) => e.type === "ERROR" && e.object.code === 410);
    expect(gone).toBe(true);

    const { r, seen, metrics } = track(client, ns, { initialResourceVersion: "1", pageSize: 2, backoffBaseMs: 50 });
    try {
      await r.waitForSync();
      expect(storeData(r)).toEqual({ x: { n: "x" }, y: { n: "y" }, z: { n: "z" } });
      expect(["x", "y", "z"].every((n) => saw(seen, "ADDED", `${ns}/${n}`))).toBe(true);
      expect(await restarts(metrics, "expired")).toBe(1);
      expect(await restarts(metrics, "list")).toBe(1);
      // and it follows live changes from the fresh list onwards
      await client.delete(ConfigMaps, ns, "y");
      await vi.waitFor(() => expect(saw(seen, "DELETED", `${ns}/y`)).toBe(true), WAIT);
    } finally {
      await r.stop();
    }
  });

  for (const compact of [false, true]) {
    it(`reports every change made while kube-apiserver was down${compact ? " and history was compacted" : ""}, then keeps following`, async () => {
      const ns = await freshNamespace(client, compact ? "engine-restart-c" : "engine-restart");
      for (const n of ["keep", "change", "vanish"]) await client.create(ConfigMaps, cm(ns, n, { v: "1" }));

      const { r, seen, metrics } = track(client, ns, { backoffBaseMs: 100, backoffMaxMs: 1_000 });
      try {
        await r.waitForSync();
        expect(storeData(r)).toEqual({ keep: { v: "1" }, change: { v: "1" }, vanish: { v: "1" } });
        // make sure the watch is established before pulling the plug: a change must come through
        await client.create(ConfigMaps, cm(ns, "probe", { v: "1" }));
        await vi.waitFor(() => expect(saw(seen, "ADDED", `${ns}/probe`)).toBe(true), WAIT);
        seen.length = 0;
        const listsBefore = await restarts(metrics, "list");

        await withApiServerDown(async (other) => {
          await other.patch(ConfigMaps, ns, "change", { data: { v: "2" } }, "merge");
          await other.delete(ConfigMaps, ns, "vanish");
          await other.create(ConfigMaps, cm(ns, "fresh", { v: "1" }));
          await other.delete(ConfigMaps, ns, "probe");
          if (compact) await compactEtcd(etcdUrl);
          // nothing of it could have reached the reflector yet
          expect(seen).toEqual([]);
        });

        // every change made while it was away is reported
        await vi.waitFor(() => expect(storeData(r)).toEqual({ keep: { v: "1" }, change: { v: "2" }, fresh: { v: "1" } }), WAIT);
        expect(saw(seen, "MODIFIED", `${ns}/change`, { v: "2" })).toBe(true);
        expect(saw(seen, "DELETED", `${ns}/vanish`)).toBe(true);
        expect(saw(seen, "DELETED", `${ns}/probe`)).toBe(true);
        expect(saw(seen, "ADDED", `${ns}/fresh`)).toBe(true);
        expect(seen.some((s) => s.key === `${ns}/keep`)).toBe(false);
        expect(await restarts(metrics, "error") + (await restarts(metrics, "closed"))).toBeGreaterThanOrEqual(1);
        if (compact) {
          // its resourceVersion was compacted away: only a relist (with synthesized deletes) could catch up
          expect(await restarts(metrics, "expired")).toBeGreaterThanOrEqual(1);
          expect(await restarts(metrics, "list")).toBeGreaterThan(listsBefore);
        }

        // and it follows live changes again
        await client.create(ConfigMaps, cm(ns, `after-${randomSuffix(4)}`, { v: "1" }));
        await vi.waitFor(() => expect(seen.some((s) => s.type === "ADDED" && s.key.startsWith(`${ns}/after-`))).toBe(true), WAIT);
      } finally {
        await r.stop();
      }
    });
  }
});
