import { describe, expect, it } from "vitest";
import { Store } from "../../../src/engine/store.js";
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
