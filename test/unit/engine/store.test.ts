import { describe, expect, it } from "vitest";
import { Store, StringPool, cacheStringCount, slimForCache, trimForCache } from "../../../src/engine/store.js";
import type { KubeObject } from "../../../src/engine/kube.js";

const obj = (ns: string | undefined, name: string, rv = "1"): KubeObject => ({
  metadata: { name, resourceVersion: rv, ...(ns ? { namespace: ns } : {}) },
});

describe("Store", () => {
  it("keys objects by namespace/name and returns the previous object on overwrite", () => {
    const s = new Store();
    expect(s.set(obj("a", "x", "1"))).toBeUndefined();
    expect(s.set(obj("a", "x", "2"))?.metadata.resourceVersion).toBe("1");
    s.set(obj("b", "x"));
    s.set(obj(undefined, "cluster"));
    expect(s.size).toBe(3);
    expect(s.keys().sort()).toEqual(["a/x", "b/x", "cluster"]);
    expect(s.get("a/x")?.metadata.resourceVersion).toBe("2");
    expect(s.has("cluster")).toBe(true);
    expect(s.get("a/missing")).toBeUndefined();
  });

  it("lists everything or one namespace", () => {
    const s = new Store();
    s.set(obj("a", "1"));
    s.set(obj("a", "2"));
    s.set(obj("b", "3"));
    expect(s.list()).toHaveLength(3);
    expect(s.list("a").map((o) => o.metadata.name).sort()).toEqual(["1", "2"]);
    expect(s.list("zzz")).toEqual([]);
  });

  it("delete returns what was cached; replace swaps the whole content", () => {
    const s = new Store();
    s.set(obj("a", "1"));
    s.set(obj("a", "2"));
    expect(s.delete("a/1")?.metadata.name).toBe("1");
    expect(s.delete("a/1")).toBeUndefined();
    s.replace([obj("c", "9"), obj("c", "8")]);
    expect(s.keys().sort()).toEqual(["c/8", "c/9"]);
    s.clear();
    expect(s.size).toBe(0);
  });
});

describe("Store indexes", () => {
  type Obj = KubeObject & { spec: { ref?: string } };
  const obj = (name: string, ref?: string): Obj => ({ metadata: { namespace: "ns", name }, spec: ref === undefined ? {} : { ref } });
  const names = (xs: Obj[]): string[] => xs.map((x) => x.metadata.name ?? "").sort();

  it("files objects under their index value and follows changes, deletions and replacement", () => {
    const s = new Store<Obj>({ indexers: { ref: (o) => o.spec.ref } });
    s.set(obj("a", "x"));
    s.set(obj("b", "x"));
    s.set(obj("c", "y"));
    s.set(obj("d")); // not indexed
    expect(names(s.byIndex("ref", "x"))).toEqual(["a", "b"]);
    expect(names(s.byIndex("ref", "y"))).toEqual(["c"]);
    s.set(obj("b", "y")); // moved
    expect(names(s.byIndex("ref", "x"))).toEqual(["a"]);
    expect(names(s.byIndex("ref", "y"))).toEqual(["b", "c"]);
    s.delete("ns/a");
    expect(s.byIndex("ref", "x")).toEqual([]);
    s.replace([obj("e", "x"), obj("f")]);
    expect(names(s.byIndex("ref", "x"))).toEqual(["e"]);
    expect(s.byIndex("ref", "y")).toEqual([]);
    expect(() => s.byIndex("other", "x")).toThrow(/no index/);
  });

  it("keeps several indexes apart, an object filed under some of them only", () => {
    type Two = KubeObject & { spec: { ref?: string; zone?: string } };
    const two = (name: string, spec: Two["spec"]): Two => ({ metadata: { namespace: "ns", name }, spec });
    const s = new Store<Two>({ indexers: { ref: (o) => o.spec.ref, zone: (o) => o.spec.zone } });
    s.set(two("a", { zone: "z1" })); // only under zone
    s.set(two("b", { ref: "x", zone: "z1" }));
    s.set(two("c", { ref: "x" })); // only under ref
    expect(names(s.byIndex("ref", "x"))).toEqual(["b", "c"]);
    expect(names(s.byIndex("zone", "z1"))).toEqual(["a", "b"]);
    s.set(two("b", { zone: "z2" })); // leaves ref, moves zone
    expect(names(s.byIndex("ref", "x"))).toEqual(["c"]);
    expect(names(s.byIndex("zone", "z1"))).toEqual(["a"]);
    expect(names(s.byIndex("zone", "z2"))).toEqual(["b"]);
    s.delete("ns/a");
    s.delete("ns/c");
    expect(s.byIndex("zone", "z1")).toEqual([]);
    expect(s.byIndex("ref", "x")).toEqual([]);
  });

  it("unfiles an object under the value it was filed with, even if the cached object was changed in place", () => {
    const s = new Store<Obj>({ indexers: { ref: (o) => o.spec.ref } });
    const a = obj("a", "x");
    s.set(a);
    a.spec.ref = "z"; // a caller broke the read-only rule
    s.delete("ns/a");
    expect(s.byIndex("ref", "x")).toEqual([]);
    expect(s.byIndex("ref", "z")).toEqual([]);
  });
});

describe("StringPool", () => {
  const run = (i: number, ce: string) => ({
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { name: `r${i}`, namespace: "ns", uid: `uid-${i}`, resourceVersion: String(100 + i), labels: { team: "a" } },
    spec: { computeEnvironmentRef: { name: ce } },
    status: { phase: "Pending", conditions: [{ type: "Ready", status: "False", reason: "Waiting", message: `waiting for ${ce}` }] },
  });

  it("pools the values objects repeat, not metadata's uid, name and resourceVersion, and leaves every value as it was", () => {
    const pool = new StringPool();
    const objs = Array.from({ length: 50 }, (_, i) => run(i, `ce${i % 2}`));
    const before = structuredClone(objs);
    for (const o of objs) expect(pool.intern(o)).toBe(o);
    expect(objs).toEqual(before);
    // apiVersion, kind, ns, a, ce0, ce1, Pending, Ready, False, Waiting, 2 messages: 12 values, whatever the count of objects
    expect(pool.size).toBe(12);
  });

  it("pools names outside metadata (what an object refers to) and strings inside arrays", () => {
    const pool = new StringPool();
    pool.intern({ metadata: { name: "x" }, spec: { ref: { name: "target" }, list: ["a", ["b"], { c: "d" }] } });
    expect(pool.size).toBe(4);
  });

  it("stays bounded: past maxEntries it starts over; strings over maxLength are not pooled", () => {
    const pool = new StringPool(10, 8);
    for (let i = 0; i < 25; i++) pool.intern({ spec: { v: `v${i}` } });
    expect(pool.size).toBeLessThanOrEqual(10);
    expect(pool.size).toBeGreaterThan(0);
    const long = new StringPool(10, 8);
    long.intern({ spec: { a: "123456789", b: "12345678" } });
    expect(long.size).toBe(1);
  });

  it("never pools a Secret's values (data, stringData): they must not outlive the Secret", () => {
    const pool = new StringPool();
    pool.intern({ metadata: { name: "creds", namespace: "ns" }, type: "Opaque", data: { key: "c2VjcmV0" }, stringData: { token: "plain" } });
    // ns and Opaque only; neither value nor anything under data/stringData
    expect(pool.size).toBe(2);
    // A nested `data` (not a Secret's) is pooled as any other value.
    pool.intern({ spec: { data: { x: "nested" } } });
    expect(pool.size).toBe(3);
  });

  it("trimForCache drops what slimForCache drops and pools nothing", () => {
    const before = cacheStringCount();
    const secret = trimForCache({
      metadata: { name: "s", namespace: `ns-${Date.now()}`, managedFields: [{}], annotations: { "kubectl.kubernetes.io/last-applied-configuration": "{}" } },
      data: { k: "dmFsdWU=" },
    } as never) as { metadata: Record<string, unknown>; data: Record<string, string> };
    expect(secret.metadata.managedFields).toBeUndefined();
    expect(secret.metadata.annotations).toBeUndefined();
    expect(secret.data.k).toBe("dmFsdWU=");
    expect(cacheStringCount()).toBe(before);
    slimForCache({ metadata: { name: "r", namespace: `other-${Date.now()}` } });
    expect(cacheStringCount()).toBe(before + 1);
  });
});
