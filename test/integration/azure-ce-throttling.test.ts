/**
 * Throttling on every operation an Azure ComputeEnvironment's life uses (issue 10), through the
 * operator on the real kube-apiserver and the Azure emulator. A clean life (create, Ready, delete)
 * is recorded first; then every operation type it used answers 429 with Retry-After three times
 * in a row — more than the SDK's own retries, so the operator's queue retries too — and a second
 * life must still converge and be disposed of, with no retry of a throttled request sooner than
 * the hint, whether the SDK or the controller made it.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource } from "../../src/api/types.js";
import { ceId, resourceGroupName } from "../../src/cloud/azure/names.js";
import { CloudError } from "../../src/cloud/provider.js";
import { createLogger } from "../../src/engine/logger.js";
import { installCrds, startOperator, waitFor, type RunningOperator } from "../support/operator.js";
import { azureClientOptions, azureControl, azureInfo, azureTestCredential, freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import type { EmulatorInfo, FaultSpec, RequestLogEntry } from "../azure-emulator/control.js";
import { ceBody, operatorPrincipal, putSecret, secretCredentials, waitGone, waitReady, type Principal, createWorkStorage, emulatorProvider } from "../support/azure-env.js";

const RETRY_AFTER_S = 1;

let kube: KubeClient;
let info: EmulatorInfo;
let op: RunningOperator | undefined;
let ns: string;
let principal: Principal;

beforeAll(async () => {
  kube = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(kube);
  info = await azureInfo();
  const rm = new ResourceManagementClient(await azureTestCredential(), info.subscriptionId, azureClientOptions());
  await createWorkStorage(rm, info.subscriptionId);
  ns = await freshNamespace(kube, "azthr");
  principal = await operatorPrincipal(info, "vmforge-throttled");
  await putSecret(kube, info, ns, "azure-creds", principal);
  op = await startOperator(kubeconfigPath(), new Map([["azure", emulatorProvider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
}, 120_000);

afterAll(async () => {
  await azureControl().clearFaults();
  await op?.stop();
});

/** One life of a CE; returns the operator's requests during it. */
async function life(name: string): Promise<RequestLogEntry[]> {
  const ctl = azureControl();
  const { lastSeq } = await ctl.clearRequests();
  await kube.create(ComputeEnvironmentResource, ceBody(ns, name));
  await waitReady(kube, ns, name, 150_000);
  await kube.delete(ComputeEnvironmentResource, ns, name);
  await waitGone(kube, ns, name);
  return (await ctl.requests(lastSeq)).value.filter((e) => e.caller === principal.objectId);
}

/** Long-running-operation polls are the SDK's, not operations of the life. */
const isPoll = (e: RequestLogEntry): boolean => /\/operations\/read$|operationresults/i.test(e.operation);

describe("Azure environment under throttling (emulator)", () => {
  it("429 with Retry-After on every operation type of a life: converges and is disposed of; no retry comes sooner than the hint", async () => {
    const clean = await life("clean");
    const operations = [...new Set(clean.filter((e) => !isPoll(e) && e.operation !== "token").map((e) => e.operation))].sort();
    // create, read and delete operations of every resource type the CE has
    expect(operations.length).toBeGreaterThanOrEqual(20);
    expect(operations.some((o) => /delete$/i.test(o))).toBe(true);
    expect(operations.some((o) => /read$/i.test(o))).toBe(true);

    const ctl = azureControl();
    for (const operation of operations) {
      await ctl.addFault({ operation, status: 429, retryAfterS: RETRY_AFTER_S, count: 3, code: "TooManyRequests", message: "throttled" });
    }
    let log: RequestLogEntry[];
    try {
      log = await life("throttled");
    } finally {
      await ctl.clearFaults();
    }
    const throttled = log.filter((e) => e.status === 429);
    // Every operation type was throttled three times, and then answered (a 404 of a read that finds nothing is an answer).
    for (const operation of operations) {
      expect(throttled.filter((t) => t.operation === operation).length, `${operation} throttled`).toBe(3);
      expect(log.some((e) => e.operation === operation && e.seq > throttled.filter((t) => t.operation === operation).at(-1)!.seq && e.status !== 429), `${operation} finally answered`).toBe(true);
    }
    // Each throttled request's retry (same operation, method and path) waited for Retry-After.
    const early: string[] = [];
    for (const t of throttled) {
      const next = log.find((e) => e.seq > t.seq && e.operation === t.operation && e.method === t.method && e.path === t.path);
      expect(next, `${t.operation} ${t.path} retried`).toBeDefined();
      const waited = Date.parse(next!.time) - Date.parse(t.time);
      if (waited < RETRY_AFTER_S * 1000 - 50) early.push(`${t.method} ${t.operation} ${t.path.split("/").slice(-2).join("/")} after ${waited} ms (#${t.seq} -> #${next!.seq})`);
    }
    expect(early).toEqual([]);
  }, 400_000);
});

describe("calls made side by side under throttling (emulator)", () => {
  const credentials = () => secretCredentials(info, principal);
  const silent = createLogger({ level: "silent" });

  /** A CE's resource group made here, not by the operator, so no reconcile of the operator meets the test's faults. */
  async function withOwnGroup(name: string, body: (ce: ReturnType<typeof ceBody>, rg: string) => Promise<void>): Promise<void> {
    const ce = ceBody(ns, name);
    ce.metadata.uid = randomUUID();
    const rg = resourceGroupName(ceId(ce));
    const rm = new ResourceManagementClient(await azureTestCredential(), info.subscriptionId, azureClientOptions());
    await rm.resourceGroups.createOrUpdate(rg, { location: "westeurope" });
    try {
      await body(ce, rg);
    } finally {
      // A failed cleanup is reported without hiding the test's own failure.
      await rm.resourceGroups.beginDeleteAndWait(rg).catch((e: unknown) => console.error(`could not delete resource group ${rg}:`, e));
    }
  }

  /** Adds faults for the body's time only. */
  async function withFaults(faults: FaultSpec[], body: () => Promise<void>): Promise<void> {
    const ctl = azureControl();
    const ids: string[] = [];
    try {
      for (const f of faults) ids.push((await ctl.addFault(f)).id);
      await body();
    } finally {
      // A failed cleanup is reported without hiding the test's own failure.
      for (const id of ids) await ctl.removeFault(id).catch((e: unknown) => console.error(`could not remove fault ${id}:`, e));
    }
  }

  const inGroup = (rg: string) => (e: RequestLogEntry): boolean => e.path.toLowerCase().includes(rg.toLowerCase());
  const throttleNics = (rg: string): FaultSpec => ({ operation: "Microsoft.Network/networkInterfaces/read", path: rg, status: 429, retryAfterS: RETRY_AFTER_S, count: 2, code: "TooManyRequests", message: "throttled" });

  it("an orphan sweep refused at once still waits for its throttled sibling list: none of its requests is sent after it failed", async () => {
    await withOwnGroup("side-by-side", async (ce, rg) => {
      const ctl = azureControl();
      // The VM list is refused for good at once; the network interface list is throttled twice (the SDK waits out Retry-After, then gets its answer).
      await withFaults([
        { operation: "Microsoft.Compute/virtualMachines/read", path: rg, status: 403, count: 1, code: "AuthorizationFailed", message: `The client does not have authorization to perform action 'Microsoft.Compute/virtualMachines/read' over scope '/subscriptions/${info.subscriptionId}/resourceGroups/${rg}'.` },
        throttleNics(rg),
      ], async () => {
        const { lastSeq: before } = await ctl.requests(Number.MAX_SAFE_INTEGER);
        const refusal = await emulatorProvider().sweepOrphans({ ce, credentials: credentials(), logger: silent }, new Set()).then(() => undefined, (e: unknown) => e);
        const { value: during, lastSeq: failedAt } = await ctl.requests(before);
        // The refusal for good is the one reported.
        expect(refusal).toBeInstanceOf(CloudError);
        expect((refusal as CloudError).reason).toBe("AccessDenied");
        // Nothing of the sweep comes later: a sibling left running would send its retries after 1 and 2 s.
        await new Promise((r) => setTimeout(r, (2 * RETRY_AFTER_S + 1) * 1000));
        const later = (await ctl.requests(failedAt)).value.filter(inGroup(rg));
        expect(later.map((e) => `${e.method} ${e.operation} ${e.status}`)).toEqual([]);
        // The sibling list was waited for: throttled twice, then answered, all before the sweep failed.
        expect(during.filter((e) => e.operation === "Microsoft.Network/networkInterfaces/read" && inGroup(rg)(e)).map((e) => e.status)).toEqual([429, 429, 200]);
      });
    });
  }, 60_000);

  it("while the SDK waits out a 429's Retry-After, other callers of the same credentials do not send calls of that kind", async () => {
    await withOwnGroup("held-meanwhile", async (ce, rg) => {
      const ctl = azureControl();
      await withFaults([throttleNics(rg)], async () => {
        const { lastSeq: before } = await ctl.requests(Number.MAX_SAFE_INTEGER);
        const provider = emulatorProvider();
        const ctx = { ce, credentials: credentials(), logger: silent };
        const first = provider.sweepOrphans(ctx, new Set()).then((v) => ({ v }), (e: unknown) => ({ e }));
        // Once the gate holds the network reads (the first 429 came, and the SDK now waits 1 s to retry), a second caller sweeps the same group.
        const gate = provider.clientsFor(ctx).throttle!;
        await waitFor("the first sweep's interface list throttled", async () => gate.heldFor("Microsoft.Network/networkInterfaces/read") > 0, 20_000, 5).catch(async (e: unknown) => {
          await first; // it ends before the faults and the group go
          throw e;
        });
        const second = await provider.sweepOrphans(ctx, new Set()).then(() => undefined, (e: unknown) => e);
        // Refused without being sent, with what is left of the hint.
        expect(second).toBeInstanceOf(CloudError);
        expect((second as CloudError).reason).toBe("Throttled");
        expect((second as CloudError).message).toMatch(/not sent/);
        expect((second as CloudError).retryAfterMs).toBeGreaterThan(0);
        expect((second as CloudError).retryAfterMs).toBeLessThanOrEqual(RETRY_AFTER_S * 1000);
        // The first goes through once its SDK retried after the hint.
        expect(await first).toEqual({ v: [] });
        const log = (await ctl.requests(before)).value.filter(inGroup(rg));
        // Only the first sweep's network lists were sent: its interface list three times, its public IP list once.
        expect(log.filter((e) => e.operation === "Microsoft.Network/networkInterfaces/read").map((e) => e.status)).toEqual([429, 429, 200]);
        expect(log.filter((e) => e.operation === "Microsoft.Network/publicIPAddresses/read")).toHaveLength(1);
      });
    });
  }, 60_000);
});
