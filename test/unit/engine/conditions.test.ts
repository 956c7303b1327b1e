import { describe, expect, it } from "vitest";
import {
  createMergePatch,
  formatTime,
  getCondition,
  isFalse,
  isTrue,
  isUnknown,
  removeCondition,
  setCondition,
  statusEquals,
  updateStatus,
} from "../../../src/engine/conditions.js";
import type { Condition } from "../../../src/engine/conditions.js";
import type { KubeClient, KubeObject, ResourceType } from "../../../src/engine/kube.js";

const t0 = new Date("2026-01-01T10:00:00.123Z");
const t1 = new Date("2026-01-01T11:00:00.456Z");

describe("setCondition", () => {
  it("adds a new condition with lastTransitionTime = now (second precision)", () => {
    const list = setCondition(undefined, { type: "Ready", status: "False", reason: "Provisioning", message: "working", observedGeneration: 2 }, t0);
    expect(list).toEqual([
      { type: "Ready", status: "False", reason: "Provisioning", message: "working", observedGeneration: 2, lastTransitionTime: "2026-01-01T10:00:00Z" },
    ]);
  });

  it("keeps lastTransitionTime when the status is unchanged, updating reason/message/generation", () => {
    const a = setCondition(undefined, { type: "Ready", status: "False", reason: "A", message: "a", observedGeneration: 1 }, t0);
    const b = setCondition(a, { type: "Ready", status: "False", reason: "B", message: "b", observedGeneration: 2 }, t1);
    expect(b[0]).toEqual({ type: "Ready", status: "False", reason: "B", message: "b", observedGeneration: 2, lastTransitionTime: formatTime(t0) });
  });

  it("moves lastTransitionTime when the status changes, and keeps positions", () => {
    let list: Condition[] = [];
    list = setCondition(list, { type: "Ready", status: "False", reason: "A", message: "" }, t0);
    list = setCondition(list, { type: "Stalled", status: "False", reason: "A", message: "" }, t0);
    const next = setCondition(list, { type: "Ready", status: "True", reason: "Ok", message: "" }, t1);
    expect(next.map((c) => c.type)).toEqual(["Ready", "Stalled"]);
    expect(next[0]?.lastTransitionTime).toBe(formatTime(t1));
    expect(next[1]?.lastTransitionTime).toBe(formatTime(t0));
  });

  it("does not modify its input", () => {
    const a = setCondition(undefined, { type: "Ready", status: "False", reason: "A", message: "" }, t0);
    const copy = structuredClone(a);
    setCondition(a, { type: "Ready", status: "True", reason: "B", message: "" }, t1);
    expect(a).toEqual(copy);
  });

  it("getCondition / isTrue / isFalse / isUnknown / removeCondition", () => {
    let list = setCondition(undefined, { type: "Ready", status: "True", reason: "Ok", message: "" }, t0);
    list = setCondition(list, { type: "Stalled", status: "False", reason: "Ok", message: "" }, t0);
    expect(getCondition(list, "Ready")?.reason).toBe("Ok");
    expect(isTrue(list, "Ready")).toBe(true);
    expect(isTrue(list, "Stalled")).toBe(false);
    expect(isFalse(list, "Stalled")).toBe(true);
    expect(isUnknown(list, "Reconciling")).toBe(true);
    expect(isTrue(undefined, "Ready")).toBe(false);
    expect(removeCondition(list, "Ready").map((c) => c.type)).toEqual(["Stalled"]);
  });
});

describe("statusEquals", () => {
  it("ignores key order, undefined and null members", () => {
    expect(statusEquals({ a: 1, b: { c: 2, d: undefined } }, { b: { c: 2 }, a: 1, e: null })).toBe(true);
    expect(statusEquals(undefined, {})).toBe(true);
  });
  it("detects value, array order and nested differences", () => {
    expect(statusEquals({ a: 1 }, { a: 2 })).toBe(false);
    expect(statusEquals({ a: [1, 2] }, { a: [2, 1] })).toBe(false);
    expect(statusEquals({ a: { b: 1 } }, { a: { b: 1, c: 0 } })).toBe(false);
    expect(statusEquals({ a: "1" }, { a: 1 })).toBe(false);
  });
});

describe("createMergePatch", () => {
  it("sets changed members, nulls removed ones, recurses into objects and replaces arrays", () => {
    const from = { phase: "Pending", aws: { roleArn: "r", vpcId: "v" }, list: [1, 2], gone: "x" };
    const to = { phase: "Ready", aws: { roleArn: "r", subnetIds: ["s"] }, list: [1, 2, 3] };
    expect(createMergePatch(from, to)).toEqual({ phase: "Ready", aws: { vpcId: null, subnetIds: ["s"] }, list: [1, 2, 3], gone: null });
  });
});

type Obj = KubeObject & { status?: Record<string, unknown> };
const rt: ResourceType = { group: "example.com", version: "v1", plural: "things", kind: "Thing", namespaced: true };

function fakeClient(): { client: KubeClient; calls: unknown[][] } {
  const calls: unknown[][] = [];
  const client = {
    patch: async (...args: unknown[]) => {
      calls.push(args);
      return { metadata: { name: "x", namespace: "ns", resourceVersion: "2" } };
    },
  } as unknown as KubeClient;
  return { client, calls };
}

describe("updateStatus", () => {
  const conds = setCondition(undefined, { type: "Ready", status: "True", reason: "Ok", message: "" }, t0);
  const obj: Obj = { metadata: { name: "x", namespace: "ns", resourceVersion: "1" }, status: { phase: "Ready", conditions: conds, observedGeneration: 3 } };

  it("does not write when the status is unchanged (key order / undefined do not count)", async () => {
    const { client, calls } = fakeClient();
    const r = await updateStatus(client, rt, obj, { observedGeneration: 3, conditions: conds, phase: "Ready", message: undefined });
    expect(r).toBeUndefined();
    expect(calls).toHaveLength(0);
  });

  it("writes a merge patch of the /status subresource when it changed", async () => {
    const { client, calls } = fakeClient();
    const r = await updateStatus(client, rt, obj, { phase: "Failed", conditions: conds, observedGeneration: 3 });
    expect(r?.metadata.resourceVersion).toBe("2");
    expect(calls).toHaveLength(1);
    const [prt, ns, name, body, type, opts] = calls[0] ?? [];
    expect(prt).toBe(rt);
    expect(ns).toBe("ns");
    expect(name).toBe("x");
    expect(type).toBe("merge");
    expect(opts).toMatchObject({ subresource: "status" });
    expect(body).toEqual({ status: { phase: "Failed" } });
  });

  it("removes members the next status no longer has; optimisticLock sends the resourceVersion", async () => {
    const { client, calls } = fakeClient();
    await updateStatus(client, rt, obj, { conditions: conds, observedGeneration: 3 }, { optimisticLock: true });
    expect(calls[0]?.[3]).toEqual({ status: { phase: null }, metadata: { resourceVersion: "1" } });
  });

  it("writes the whole status when there was none", async () => {
    const { client, calls } = fakeClient();
    await updateStatus(client, rt, { metadata: { name: "x", namespace: "ns" } } as Obj, { phase: "Pending" });
    expect(calls[0]?.[3]).toEqual({ status: { phase: "Pending" } });
  });
});
