/**
 * The launch floor with the Kubernetes writes a once-only launch cannot do without (issue 13, 1).
 *
 * The SDK floor of the burst scenarios sends the N launches and nothing else. An operator that
 * launches each Run once, and only once, must also write to the kube-apiserver for it: the Run is
 * created (by the user, here the bench), gets its first status (the goal of a status within 1 s),
 * the decision to launch is recorded before the cloud is touched (finalizer and annotation in one
 * write, on the version read: a crash or a second operator then finds the launch in flight instead
 * of launching again), and the status that follows names the machine (what termination and the
 * orphan sweep go by). This floor does exactly those five steps per Run and nothing more, with the
 * engine's own write helpers and a bare client: no watch, no cache, no queue, no Events, no reads.
 *
 * It writes a copy of the Run CRD in a group of the bench's own (same schema, same CEL rules,
 * status subresource, and a copy of the Run's admission policy), so the kube-apiserver does the
 * same work per write, while the operator, which watches vmforge.dev, sees none of it. Each Run
 * goes through its five steps in one task; N tasks run at concurrency 4, 16 and 64 (best kept).
 * The bench's own watch of the Runs, which times the bursts, watches these too.
 */
import { ANNOTATION_LAUNCH_DECIDED, FINALIZER } from "../src/api/constants.js";
import { admissionPolicyObjects } from "../src/api/admission-policy.js";
import { runCrd } from "../src/api/crd.js";
import type { Run } from "../src/api/types.js";
import { updateStatus } from "../src/engine/conditions.js";
import { markWithFinalizer } from "../src/engine/finalizers.js";
import { KubeApiError, type KubeClient, type ResourceType } from "../src/engine/kube.js";
import { createLogger } from "../src/engine/logger.js";
import { Reflector } from "../src/engine/reflector.js";
import { installCrds } from "../test/support/operator.js";
import { cpuSince, dist, fmtCpu, fmtDist, fmtLoad, load, poolDo, sec, type Dist } from "./stats.js";

const GROUP = "floor.bench.vmforge.dev";
export const FloorRunResource: ResourceType = { group: GROUP, version: "v1alpha1", plural: "floorruns", kind: "FloorRun", namespaced: true };
const PolicyResource: ResourceType = { group: "admissionregistration.k8s.io", version: "v1", plural: "validatingadmissionpolicies", kind: "ValidatingAdmissionPolicy", namespaced: false };
const BindingResource: ResourceType = { group: "admissionregistration.k8s.io", version: "v1", plural: "validatingadmissionpolicybindings", kind: "ValidatingAdmissionPolicyBinding", namespaced: false };

export interface KubeFloorLevel { concurrency: number; totalMs: number; launch: Dist; perRun: Dist; failed: number; cpuS?: Record<string, number> }
export interface KubeFloor { levels: KubeFloorLevel[]; best: KubeFloorLevel }

async function createIfAbsent(client: KubeClient, rt: ResourceType, obj: { metadata: { name: string } }): Promise<void> {
  try {
    await client.create(rt, obj as never);
  } catch (e) {
    if (!(e instanceof KubeApiError && e.status === 409)) throw e;
  }
}

/** The Run CRD and its admission policy, copied under the bench's group (idempotent). */
async function installFloorCrd(client: KubeClient): Promise<void> {
  const crd = structuredClone(runCrd());
  crd.metadata.name = `${FloorRunResource.plural}.${GROUP}`;
  crd.spec.group = GROUP;
  crd.spec.names = { kind: "FloorRun", listKind: "FloorRunList", plural: "floorruns", singular: "floorrun", categories: [] };
  await installCrds(client, [crd]);
  const [policy, binding] = structuredClone(admissionPolicyObjects()) as unknown as [
    { metadata: { name: string }; spec: { matchConstraints: { resourceRules: { apiGroups: string[]; resources: string[] }[] } } },
    { metadata: { name: string }; spec: { policyName: string } },
  ];
  const name = `floorruns-budget.${GROUP}`;
  policy.metadata.name = name;
  for (const r of policy.spec.matchConstraints.resourceRules) {
    r.apiGroups = [GROUP];
    r.resources = ["floorruns"];
  }
  binding.metadata.name = name;
  binding.spec.policyName = name;
  await createIfAbsent(client, PolicyResource, policy);
  await createIfAbsent(client, BindingResource, binding);
}

export interface KubeFloorOptions {
  client: KubeClient;
  namespace: string;
  runs: number;
  say: (s: string) => void;
  /** The Run's spec (the one the burst applies for Run i). */
  spec: (i: number) => Run["spec"];
  /** Prepares one level (e.g. a fresh emulator or a resource group). */
  prepare?: (concurrency: number) => Promise<void>;
  /** The cloud's launch call for a Run (as the SDK floor sends it); returns the machine's ID. */
  launch: (run: Run, concurrency: number) => Promise<string>;
  /** After a level (e.g. deleting what it made). */
  cleanUp?: (concurrency: number) => Promise<void>;
  concurrencies?: number[];
  /** CPU seconds so far of the processes on the machine by name (printed per level, as the bursts print theirs). */
  cpu?: () => Record<string, number>;
}

export async function kubeFloor(o: KubeFloorOptions): Promise<KubeFloor> {
  const { client, namespace: ns } = o;
  await installFloorCrd(client);
  // The bursts' bench watches its Runs to time them; the same watch here, so the kube-apiserver
  // sends each write to one watcher in both (the operator's own watch is the operator's cost).
  const watch = new Reflector<Run>({ client, resource: FloorRunResource, namespace: ns, logger: createLogger({ level: "silent" }), resyncPeriodMs: 0, onEvent: () => undefined });
  watch.start();
  await watch.waitForSync();
  try {
    return await levelsOf(o);
  } finally {
    await watch.stop();
  }
}

async function levelsOf(o: KubeFloorOptions): Promise<KubeFloor> {
  const { client, namespace: ns, runs: N, say } = o;
  const levels: KubeFloorLevel[] = [];
  for (const concurrency of o.concurrencies ?? [4, 16, 64]) {
    await o.prepare?.(concurrency);
    const launchLat: number[] = [];
    const perRun: number[] = [];
    let failed = 0;
    const names: string[] = [];
    const cpu0 = o.cpu?.();
    const t0 = Date.now();
    await poolDo(Array.from({ length: N }, (_, i) => i), concurrency, async (i) => {
      const s = Date.now();
      try {
        const name = `f${concurrency}-${String(i).padStart(5, "0")}`;
        // 1. created, as the user creates a Run
        let run = await client.create<Run>(FloorRunResource, { apiVersion: `${GROUP}/v1alpha1`, kind: "FloorRun", metadata: { name, namespace: ns }, spec: o.spec(i) } as unknown as Run);
        names.push(name);
        const at = (): string => new Date().toISOString();
        const message = `accepted; checking ComputeEnvironment ${run.spec.computeEnvironmentRef.name}`;
        // 2. the first status (as the operator's acknowledgement writes it)
        run = (await updateStatus(client, FloorRunResource, run, {
          phase: "Pending", reason: "Accepted", message, observedGeneration: run.metadata.generation,
          conditions: [{ type: "Ready", status: "False", reason: "Accepted", message, lastTransitionTime: at(), observedGeneration: run.metadata.generation }],
        } as Run["status"], { optimisticLock: true })) ?? run;
        // 3. the decision: finalizer and annotation in one write, on the version read
        run = await markWithFinalizer(client, FloorRunResource, run, FINALIZER, { [ANNOTATION_LAUNCH_DECIDED]: run.metadata.uid ?? "" });
        // 4. the launch
        const ls = Date.now();
        const id = await o.launch(run, concurrency);
        launchLat.push(Date.now() - ls);
        // 5. the status naming the machine, on the version read
        const launched = `machine ${id} pending`;
        await updateStatus(client, FloorRunResource, run, {
          ...run.status, phase: "Launching", reason: "Launching", message: launched, launchedAt: at(),
          instance: { id, state: "pending" },
          conditions: [{ type: "Ready", status: "False", reason: "Launching", message: launched, lastTransitionTime: at(), observedGeneration: run.metadata.generation }],
        } as Run["status"], { optimisticLock: true });
      } catch (e) {
        if (failed++ === 0) say(`  ! floor with the Run's writes, concurrency ${concurrency}: ${e instanceof Error ? e.message : String(e)}`);
      }
      perRun.push(Date.now() - s);
    });
    const totalMs = Date.now() - t0;
    const cpuS = cpu0 && o.cpu ? cpuSince(cpu0, o.cpu()) : undefined;
    const level: KubeFloorLevel = { concurrency, totalMs, launch: dist(launchLat), perRun: dist(perRun), failed, ...(cpuS ? { cpuS } : {}) };
    levels.push(level);
    say(`  [floor with the Run's writes] concurrency ${concurrency}: ${N} Runs created, acknowledged, decided, launched and recorded in ${sec(level.totalMs)}${failed ? ` (${failed} FAILED)` : ""}; per Run ${fmtDist(level.perRun)}; ${fmtLoad(load())}`);
    if (cpuS) say(`    CPU s (${sec(totalMs)} on 2 cores): ${fmtCpu(cpuS)}`);
    // Gone before the next level: the finalizer removed, then the object deleted (not timed).
    await poolDo(names, 16, async (name) => {
      await client.patch(FloorRunResource, ns, name, { metadata: { finalizers: null } }, "merge").catch(() => undefined);
      await client.delete(FloorRunResource, ns, name).catch(() => undefined);
    });
    await o.cleanUp?.(concurrency);
  }
  const ok = levels.filter((l) => l.failed === 0);
  const best = (ok.length ? ok : levels).reduce((a, c) => (c.totalMs < a.totalMs ? c : a));
  say(`  [floor with the Run's writes] best: concurrency ${best.concurrency}, ${sec(best.totalMs)}`);
  return { levels, best };
}
