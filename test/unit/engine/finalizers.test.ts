import { describe, expect, it } from "vitest";
import { ensureFinalizer, hasFinalizer, removeFinalizer, FINALIZER_MAX_ATTEMPTS } from "../../../src/engine/finalizers.js";
import { KubeApiError } from "../../../src/engine/kube.js";
import type { KubeClient, KubeObject, ResourceType } from "../../../src/engine/kube.js";

const rt: ResourceType = { group: "example.com", version: "v1", plural: "things", kind: "Thing", namespaced: true };
type Op = { op: string; path: string; value?: unknown };

/**
 * In-memory object with a JSON-patch implementation just large enough for the finalizer paths,
 * applying "test" like the API server (whole patch rejected with 422 when a test fails).
 */
class FakeStore {
  obj: KubeObject | undefined;
  rv = 1;
  patches: Op[][] = [];
  gets = 0;
  /** Called before each patch is applied: lets a test change the object concurrently. */
  beforePatch: ((s: FakeStore) => void) | undefined;

  constructor(finalizers?: string[]) {
    this.obj = { metadata: { name: "a", namespace: "ns", resourceVersion: "1", ...(finalizers ? { finalizers } : {}) } };
  }

  bump(mut: (o: KubeObject) => void): void {
    if (!this.obj) return;
    mut(this.obj);
    this.obj.metadata.resourceVersion = String(++this.rv);
  }

  client(): KubeClient {
    return {
      get: async () => {
        this.gets++;
        return this.obj ? structuredClone(this.obj) : undefined;
      },
      patch: async (_rt: ResourceType, _ns: string, _name: string, patch: Op[], type: string) => {
        expect(type).toBe("json");
        this.patches.push(patch);
        this.beforePatch?.(this);
        if (!this.obj) throw new KubeApiError(404, "NotFound", "gone", undefined);
        const next = structuredClone(this.obj);
        for (const op of patch) {
          if (op.op === "test") {
            const actual = op.path === "/metadata/finalizers" ? next.metadata.finalizers : op.path === "/metadata/resourceVersion" ? next.metadata.resourceVersion : Symbol();
            if (JSON.stringify(actual) !== JSON.stringify(op.value)) throw new KubeApiError(422, "Invalid", "test failed", undefined);
          } else if (op.op === "add" && op.path === "/metadata/finalizers/-") {
            if (!next.metadata.finalizers) throw new KubeApiError(422, "Invalid", "no list", undefined);
            next.metadata.finalizers.push(op.value as string);
          } else if ((op.op === "add" || op.op === "replace") && op.path === "/metadata/finalizers") {
            next.metadata.finalizers = op.value as string[];
          } else throw new Error(`unexpected op ${JSON.stringify(op)}`);
        }
        next.metadata.resourceVersion = String(++this.rv);
        this.obj = next;
        return structuredClone(next);
      },
    } as unknown as KubeClient;
  }
}

describe("hasFinalizer", () => {
  it("reports presence", () => {
    expect(hasFinalizer({ metadata: { finalizers: ["x", "y"] } }, "y")).toBe(true);
    expect(hasFinalizer({ metadata: {} }, "y")).toBe(false);
  });
});

describe("ensureFinalizer", () => {
  it("adds the whole list guarded by resourceVersion when there is none", async () => {
    const s = new FakeStore();
    const out = await ensureFinalizer(s.client(), rt, structuredClone(s.obj!), "vmforge.dev/cleanup");
    expect(out.metadata.finalizers).toEqual(["vmforge.dev/cleanup"]);
    expect(s.patches[0]).toEqual([
      { op: "test", path: "/metadata/resourceVersion", value: "1" },
      { op: "add", path: "/metadata/finalizers", value: ["vmforge.dev/cleanup"] },
    ]);
  });

  it("appends guarded by a test of the current list", async () => {
    const s = new FakeStore(["other"]);
    const out = await ensureFinalizer(s.client(), rt, structuredClone(s.obj!), "mine");
    expect(out.metadata.finalizers).toEqual(["other", "mine"]);
    expect(s.patches[0]).toEqual([
      { op: "test", path: "/metadata/finalizers", value: ["other"] },
      { op: "add", path: "/metadata/finalizers/-", value: "mine" },
    ]);
  });

  it("does not write when the finalizer is present", async () => {
    const s = new FakeStore(["mine"]);
    await ensureFinalizer(s.client(), rt, structuredClone(s.obj!), "mine");
    expect(s.patches).toHaveLength(0);
  });

  it("re-reads and retries when the list changed concurrently, keeping the other writer's finalizer", async () => {
    const s = new FakeStore(["a"]);
    const stale = structuredClone(s.obj!);
    let first = true;
    s.beforePatch = (st) => {
      if (first) st.bump((o) => o.metadata.finalizers!.push("b"));
      first = false;
    };
    const out = await ensureFinalizer(s.client(), rt, stale, "mine");
    expect(out.metadata.finalizers).toEqual(["a", "b", "mine"]);
    expect(s.patches).toHaveLength(2);
    expect(s.gets).toBe(1);
  });

  it("gives up after a bounded number of lost races", async () => {
    const s = new FakeStore(["a"]);
    s.beforePatch = (st) => st.bump((o) => o.metadata.finalizers!.push("x"));
    await expect(ensureFinalizer(s.client(), rt, structuredClone(s.obj!), "mine")).rejects.toBeInstanceOf(KubeApiError);
    expect(s.patches).toHaveLength(FINALIZER_MAX_ATTEMPTS);
  });

  it("refuses to add to an object that is being deleted", async () => {
    const s = new FakeStore(["a"]);
    s.obj!.metadata.deletionTimestamp = "2026-01-01T00:00:00Z";
    await expect(ensureFinalizer(s.client(), rt, structuredClone(s.obj!), "mine")).rejects.toThrow(/being deleted/);
    expect(s.patches).toHaveLength(0);
  });
});

describe("removeFinalizer", () => {
  it("tests the exact list and replaces it with the filtered list", async () => {
    const s = new FakeStore(["a", "mine", "b"]);
    const out = await removeFinalizer(s.client(), rt, structuredClone(s.obj!), "mine");
    expect(out?.metadata.finalizers).toEqual(["a", "b"]);
    expect(s.patches[0]).toEqual([
      { op: "test", path: "/metadata/finalizers", value: ["a", "mine", "b"] },
      { op: "replace", path: "/metadata/finalizers", value: ["a", "b"] },
    ]);
  });

  it("does not write when absent; returns undefined when the object is gone", async () => {
    const s = new FakeStore(["a"]);
    const same = await removeFinalizer(s.client(), rt, structuredClone(s.obj!), "mine");
    expect(same?.metadata.finalizers).toEqual(["a"]);
    expect(s.patches).toHaveLength(0);
    const g = new FakeStore(["mine"]);
    const stale = structuredClone(g.obj!);
    g.obj = undefined;
    expect(await removeFinalizer(g.client(), rt, stale, "mine")).toBeUndefined();
  });

  it("never drops a finalizer added concurrently", async () => {
    const s = new FakeStore(["mine"]);
    const stale = structuredClone(s.obj!);
    let first = true;
    s.beforePatch = (st) => {
      if (first) st.bump((o) => o.metadata.finalizers!.push("late"));
      first = false;
    };
    const out = await removeFinalizer(s.client(), rt, stale, "mine");
    expect(out?.metadata.finalizers).toEqual(["late"]);
    expect(s.patches).toHaveLength(2);
  });
});
