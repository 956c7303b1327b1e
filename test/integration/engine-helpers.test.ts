// Engine helpers (finalizers, status writes, Events) against the real kube-apiserver, through the
// engine's own KubeClient. A small CRD of this file's own (with a status subresource) is the
// subject, so the test does not depend on the vmforge CRDs.
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { setCondition, updateStatus } from "../../src/engine/conditions.js";
import type { Condition } from "../../src/engine/conditions.js";
import { EventRecorder, EventResource } from "../../src/engine/events.js";
import type { EventObject } from "../../src/engine/events.js";
import { ensureFinalizer, markWithFinalizer, removeFinalizer } from "../../src/engine/finalizers.js";
import { KubeApiError, KubeClient } from "../../src/engine/kube.js";
import type { KubeObject, ResourceType } from "../../src/engine/kube.js";
import { createLogger, createRedactor } from "../../src/engine/logger.js";
import { deleteNamespace, freshNamespace, kubeconfigPath, randomSuffix } from "../harness/helpers.js";

const WAIT = { timeout: 60_000, interval: 200 };
const GROUP = "enginehelpers.vmforge.test";
const CRD: ResourceType = { group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions", kind: "CustomResourceDefinition", namespaced: false };
const Widget: ResourceType = { group: GROUP, version: "v1", plural: "widgets", kind: "Widget", namespaced: true };

interface WidgetStatus {
  observedGeneration?: number;
  phase?: string;
  message?: string;
  conditions?: Condition[];
}
type WidgetObj = KubeObject & { spec?: { size?: number }; status?: WidgetStatus };

let logText = "";
const logger = createLogger({
  level: "debug",
  destination: new Writable({
    write(c: Buffer, _e, cb) {
      logText += c.toString();
      cb();
    },
  }),
});

/** Wraps a client and records every patch call and its outcome. */
function recording(client: KubeClient): { client: KubeClient; patches: { ok: boolean; err?: unknown }[] } {
  const patches: { ok: boolean; err?: unknown }[] = [];
  const proxy = new Proxy(client, {
    get(target, prop, receiver) {
      if (prop === "patch") {
        return async (...args: Parameters<KubeClient["patch"]>) => {
          try {
            const r = await target.patch(...args);
            patches.push({ ok: true });
            return r;
          } catch (err) {
            patches.push({ ok: false, err });
            throw err;
          }
        };
      }
      const v: unknown = Reflect.get(target, prop, receiver);
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { client: proxy, patches };
}

let client: KubeClient;
let ns: string;

async function ensureCrd(): Promise<void> {
  const crd = {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: `widgets.${GROUP}` },
    spec: {
      group: GROUP,
      scope: "Namespaced",
      names: { plural: "widgets", singular: "widget", kind: "Widget", listKind: "WidgetList" },
      versions: [
        {
          name: "v1",
          served: true,
          storage: true,
          subresources: { status: {} },
          schema: {
            openAPIV3Schema: {
              type: "object",
              properties: {
                spec: { type: "object", properties: { size: { type: "integer" } } },
                status: { type: "object", "x-kubernetes-preserve-unknown-fields": true },
              },
            },
          },
        },
      ],
    },
  };
  try {
    await client.create(CRD, crd);
  } catch (err) {
    if (!(err instanceof KubeApiError && err.reason === "AlreadyExists")) throw err;
  }
  await vi.waitFor(async () => {
    const got = await client.get<KubeObject & { status?: { conditions?: { type: string; status: string }[] } }>(CRD, undefined, `widgets.${GROUP}`);
    expect(got?.status?.conditions?.find((c) => c.type === "Established")?.status).toBe("True");
    // served: a list succeeds
    await client.list(Widget, { namespace: "default" });
  }, WAIT);
}

async function newWidget(prefix: string): Promise<WidgetObj> {
  return client.create<WidgetObj>(Widget, {
    apiVersion: `${GROUP}/v1`,
    kind: "Widget",
    metadata: { name: `${prefix}-${randomSuffix()}`, namespace: ns },
    spec: { size: 1 },
  });
}

async function fetchWidget(w: WidgetObj): Promise<WidgetObj | undefined> {
  return client.get<WidgetObj>(Widget, ns, w.metadata.name!);
}

/** Another writer: adds a finalizer with a plain merge patch of the whole list. */
async function otherWriterAdds(w: WidgetObj, finalizer: string): Promise<WidgetObj> {
  const cur = (await fetchWidget(w))!;
  return client.patch<WidgetObj>(Widget, ns, w.metadata.name!, { metadata: { finalizers: [...(cur.metadata.finalizers ?? []), finalizer] } }, "merge");
}

beforeAll(async () => {
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await ensureCrd();
  ns = await freshNamespace(client, "engine-helpers");
});

afterAll(async () => {
  if (ns) {
    // let the namespace go even when a test left a finalizer behind
    const { items } = await client.list<WidgetObj>(Widget, { namespace: ns });
    for (const w of items) {
      if (w.metadata.finalizers?.length) await client.patch(Widget, ns, w.metadata.name!, { metadata: { finalizers: null } }, "merge");
    }
    await deleteNamespace(ns);
  }
  client?.close();
});

describe("finalizers on the real API server", () => {
  it("adds a finalizer to an object without any, once; a second call writes nothing", async () => {
    const w = await newWidget("fin-add");
    expect(w.metadata.finalizers).toBeUndefined();
    const r = recording(client);
    const a = await ensureFinalizer(r.client, Widget, w, "vmforge.dev/cleanup");
    expect(a.metadata.finalizers).toEqual(["vmforge.dev/cleanup"]);
    const b = await ensureFinalizer(r.client, Widget, a, "vmforge.dev/cleanup");
    expect(b.metadata.resourceVersion).toBe(a.metadata.resourceVersion);
    expect(r.patches).toEqual([{ ok: true }]);
    expect((await fetchWidget(w))?.metadata.finalizers).toEqual(["vmforge.dev/cleanup"]);
  });

  it("with a stale copy and no list: the resourceVersion guard fails, the retry keeps the other writer's finalizer", async () => {
    const w = await newWidget("fin-rv");
    const stale = structuredClone(w);
    await otherWriterAdds(w, "other.example/keep");
    const r = recording(client);
    const out = await ensureFinalizer(r.client, Widget, stale, "vmforge.dev/cleanup");
    expect(out.metadata.finalizers).toEqual(["other.example/keep", "vmforge.dev/cleanup"]);
    expect(r.patches.map((p) => p.ok)).toEqual([false, true]);
    const first = r.patches[0]?.err;
    expect(first).toBeInstanceOf(KubeApiError);
    expect([409, 422]).toContain((first as KubeApiError).status);
  });

  it("with a stale list: the test of the list fails, the retry appends to the current list", async () => {
    const w = await newWidget("fin-list");
    const withOne = await ensureFinalizer(client, Widget, w, "a.example/one");
    await otherWriterAdds(w, "b.example/two");
    const r = recording(client);
    const out = await ensureFinalizer(r.client, Widget, withOne, "vmforge.dev/cleanup");
    expect(out.metadata.finalizers).toEqual(["a.example/one", "b.example/two", "vmforge.dev/cleanup"]);
    expect(r.patches.map((p) => p.ok)).toEqual([false, true]);
  });

  it("markWithFinalizer: the finalizer and an annotation in one write, only on the version it was computed from", async () => {
    const w = await newWidget("fin-mark");
    const r = recording(client);
    const a = await markWithFinalizer(r.client, Widget, w, "vmforge.dev/cleanup", { "vmforge.dev/decided-at": "t1" });
    expect([a.metadata.finalizers, a.metadata.annotations?.["vmforge.dev/decided-at"]]).toEqual([["vmforge.dev/cleanup"], "t1"]);
    expect(r.patches).toEqual([{ ok: true }]);
    // a decision taken on a stale copy is refused (409), and the stored object keeps the other writer's change
    await otherWriterAdds(w, "other.example/keep");
    await expect(markWithFinalizer(client, Widget, a, "vmforge.dev/cleanup", { "vmforge.dev/decided-at": "t2" })).rejects.toMatchObject({ status: 409 });
    const fresh = (await fetchWidget(w))!;
    expect([fresh.metadata.finalizers, fresh.metadata.annotations?.["vmforge.dev/decided-at"]]).toEqual([["vmforge.dev/cleanup", "other.example/keep"], "t1"]);
    // on the fresh copy: null removes the annotation, the finalizers stay as they are
    const b = await markWithFinalizer(client, Widget, fresh, "vmforge.dev/cleanup", { "vmforge.dev/decided-at": null });
    expect([b.metadata.finalizers, b.metadata.annotations?.["vmforge.dev/decided-at"]]).toEqual([["vmforge.dev/cleanup", "other.example/keep"], undefined]);
  });

  it("removes only its own finalizer, never one added concurrently", async () => {
    const w = await newWidget("fin-rm");
    const mine = await ensureFinalizer(client, Widget, w, "vmforge.dev/cleanup");
    await otherWriterAdds(w, "late.example/x");
    const r = recording(client);
    const out = await removeFinalizer(r.client, Widget, mine, "vmforge.dev/cleanup");
    expect(out?.metadata.finalizers).toEqual(["late.example/x"]);
    expect(r.patches.map((p) => p.ok)).toEqual([false, true]);
    expect((await fetchWidget(w))?.metadata.finalizers).toEqual(["late.example/x"]);
  });

  it("an object being deleted: adding is refused, removing the last finalizer lets it go", async () => {
    const w = await newWidget("fin-del");
    const mine = await ensureFinalizer(client, Widget, w, "vmforge.dev/cleanup");
    expect(await client.delete(Widget, ns, w.metadata.name!)).toBe(true);
    const deleting = (await fetchWidget(w))!;
    expect(deleting.metadata.deletionTimestamp).toBeDefined();
    await expect(ensureFinalizer(client, Widget, deleting, "other.example/new")).rejects.toThrow(/being deleted/);
    // a stale copy (from before the delete) still removes the finalizer after re-reading
    await removeFinalizer(client, Widget, mine, "vmforge.dev/cleanup");
    await vi.waitFor(async () => expect(await fetchWidget(w)).toBeUndefined(), WAIT);
    // and once it is gone, removing again answers undefined
    expect(await removeFinalizer(client, Widget, mine, "vmforge.dev/cleanup")).toBeUndefined();
  });
});

describe("updateStatus on the real API server", () => {
  it("writes through /status only when the status changed (writes counted by resourceVersion)", async () => {
    let w = await newWidget("status");
    const r = recording(client);
    const versions = new Set<string>([w.metadata.resourceVersion!]);
    let transition: string | undefined;

    // Ten reconciles that compute the same status at different times: one write.
    for (let i = 0; i < 10; i++) {
      const now = new Date(Date.now() + i * 60_000);
      const next: WidgetStatus = {
        message: undefined, // undefined members do not count as a change
        conditions: setCondition(w.status?.conditions, { type: "Ready", status: "False", reason: "Provisioning", message: "working", observedGeneration: w.metadata.generation }, now),
        phase: "Provisioning",
        observedGeneration: w.metadata.generation,
      };
      const written = await updateStatus(r.client, Widget, w, next);
      if (written) w = written;
      const fresh = (await fetchWidget(w))!;
      versions.add(fresh.metadata.resourceVersion!);
      w = fresh;
      transition ??= w.status?.conditions?.[0]?.lastTransitionTime;
      expect(w.status?.conditions?.[0]?.lastTransitionTime).toBe(transition);
    }
    expect(r.patches).toHaveLength(1);
    expect(versions.size).toBe(2);
    expect(w.status).toMatchObject({ phase: "Provisioning", observedGeneration: 1 });
    expect(w.metadata.generation).toBe(1); // the status subresource never touches the spec generation

    // A real change: one more write; members the new status lacks are removed.
    const next: WidgetStatus = {
      observedGeneration: 1,
      conditions: setCondition(w.status?.conditions, { type: "Ready", status: "True", reason: "Ready", message: "", observedGeneration: 1 }, new Date(Date.now() + 3_600_000)),
    };
    const written = await updateStatus(r.client, Widget, w, next);
    expect(written).toBeDefined();
    const fresh = (await fetchWidget(w))!;
    expect(fresh.status?.phase).toBeUndefined();
    expect(fresh.status?.conditions?.[0]).toMatchObject({ type: "Ready", status: "True" });
    expect(fresh.status?.conditions?.[0]?.lastTransitionTime).not.toBe(transition);
    expect(await updateStatus(r.client, Widget, fresh, structuredClone(next))).toBeUndefined();
    expect(r.patches).toHaveLength(2);
    expect((await fetchWidget(w))?.metadata.resourceVersion).toBe(fresh.metadata.resourceVersion);
  });

  it("a status patch does not write the spec", async () => {
    const w = await newWidget("status-spec");
    const mutated = { ...w, spec: { size: 99 } };
    await updateStatus(client, Widget, mutated, { phase: "X" });
    const fresh = (await fetchWidget(w))!;
    expect(fresh.spec?.size).toBe(1);
    expect(fresh.status?.phase).toBe("X");
  });
});

describe("EventRecorder on the real API server", () => {
  async function eventsFor(w: WidgetObj, controller: string): Promise<EventObject[]> {
    const { items } = await client.list<EventObject>(EventResource, { namespace: ns });
    return items.filter((e) => e.reportingController === controller && e.regarding.uid === w.metadata.uid);
  }

  it("creates events.k8s.io/v1 Events and aggregates repeats into series.count", async () => {
    const w = await newWidget("events");
    const controller = `vmforge.dev/engine-test-${randomSuffix()}`;
    const rec = new EventRecorder(client, { controller, instance: "it-1", logger });
    for (let i = 0; i < 4; i++) await rec.record(w as WidgetObj & { apiVersion: string; kind: string }, "Warning", "ProvisionFailed", "Provision", "quota exceeded");
    await rec.record(w as WidgetObj & { apiVersion: string; kind: string }, "Normal", "Provisioned", "Provision", "all set");

    const evs = await eventsFor(w, controller);
    expect(evs).toHaveLength(2);
    const failed = evs.find((e) => e.reason === "ProvisionFailed")!;
    expect(failed).toMatchObject({
      type: "Warning",
      action: "Provision",
      note: "quota exceeded",
      reportingInstance: "it-1",
      regarding: { kind: "Widget", name: w.metadata.name, namespace: ns, uid: w.metadata.uid },
      series: { count: 4 },
    });
    expect(failed.eventTime).toMatch(/\.\d{6}Z$/);
    expect(Date.parse(failed.series!.lastObservedTime)).toBeGreaterThanOrEqual(Date.parse(failed.eventTime));
    expect(evs.find((e) => e.reason === "Provisioned")?.series).toBeUndefined();

    // The same Event seen through the core v1 API, as `kubectl describe` shows it.
    const core = await client.get<KubeObject & { count?: number; reason?: string; involvedObject?: { uid?: string } }>(
      { group: "", version: "v1", plural: "events", kind: "Event", namespaced: true },
      ns,
      failed.metadata.name!,
    );
    expect(core?.involvedObject?.uid).toBe(w.metadata.uid);
    expect(core?.reason).toBe("ProvisionFailed");
  });

  it("never stores a known secret value in a note, caps notes at 1 KiB, and never throws", async () => {
    const w = await newWidget("events-secret");
    const controller = `vmforge.dev/engine-test-${randomSuffix()}`;
    const secret = `AKIA${randomSuffix(16).toUpperCase()}`;
    const rec = new EventRecorder(client, { controller, instance: "it-2", logger, redact: createRedactor([secret]) });
    await rec.record(w as WidgetObj & { apiVersion: string; kind: string }, "Warning", "AuthFailed", "Validate", `credentials ${secret} were rejected; ${"x".repeat(2000)}`);
    const [ev] = await eventsFor(w, controller);
    expect(ev).toBeDefined();
    expect(JSON.stringify(ev)).not.toContain(secret);
    expect(ev?.note?.startsWith("credentials [REDACTED] were rejected")).toBe(true);
    expect(Buffer.byteLength(ev?.note ?? "")).toBeLessThanOrEqual(1024);

    // Regarding an object in a namespace that does not exist: the API refuses; record() resolves.
    const before = logText.length;
    await expect(
      rec.record({ apiVersion: `${GROUP}/v1`, kind: "Widget", metadata: { name: "ghost", namespace: `missing-${randomSuffix()}`, uid: "u" } }, "Normal", "X", "Y", "z"),
    ).resolves.toBeUndefined();
    expect(logText.slice(before)).toContain("could not record event");
  });
});
