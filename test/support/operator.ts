/** Starting the operator (in-process) against the real test API server, and small wait helpers. */
import { KubeApiError, KubeClient } from "../../src/engine/kube.js";
import type { KubeObject, ResourceType } from "../../src/engine/kube.js";
import { createLogger } from "../../src/engine/logger.js";
import { crdObjects } from "../../src/api/generate.js";
import type { CloudProvider } from "../../src/cloud/provider.js";
import type { OperatorConfig } from "../../src/config.js";
import { Operator, type OperatorOptions } from "../../src/operator.js";

export const CrdResource: ResourceType = {
  group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions", kind: "CustomResourceDefinition", namespaced: false,
};

interface CrdLike extends KubeObject {
  status?: { conditions?: { type: string; status: string }[] };
}

/** Creates or updates CRDs (default: the vmforge ones) and waits until each is Established. */
export async function installCrds(client: KubeClient, crds: readonly object[] = crdObjects()): Promise<void> {
  for (const crd of crds as CrdLike[]) {
    const name = crd.metadata.name ?? "";
    const existing = await client.get<CrdLike>(CrdResource, undefined, name);
    if (!existing) {
      try {
        await client.create(CrdResource, crd);
      } catch (e) {
        if (!(e instanceof KubeApiError && e.status === 409)) throw e;
      }
    } else {
      await client.replace(CrdResource, { ...crd, metadata: { ...crd.metadata, resourceVersion: existing.metadata.resourceVersion } });
    }
    await waitFor(`CRD ${name} Established`, async () => {
      const c = await client.get<CrdLike>(CrdResource, undefined, name);
      return c?.status?.conditions?.some((x) => x.type === "Established" && x.status === "True");
    });
  }
}

/**
 * Polls `fn` until it returns something truthy; fails with `what` and the last value on timeout,
 * measured with the monotonic clock (a step of the wall clock neither ends the wait early nor
 * stretches it).
 */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 30_000, intervalMs = 200): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function testConfig(over: Partial<OperatorConfig> = {}): OperatorConfig {
  return {
    namespaces: [],
    workers: 4,
    runWorkers: 64,
    resyncPeriodMs: 60_000,
    pollIntervalMs: 300,
    leaderElection: false,
    leaseNamespace: "default",
    leaseName: "vmforge-test",
    leaseDurationMs: 3_000,
    renewDeadlineMs: 2_000,
    retryPeriodMs: 500,
    identity: "test-operator",
    metricsAddress: "127.0.0.1:0",
    logLevel: "warn",
    shutdownTimeoutMs: 5_000,
    reconcileTimeoutMs: 30_000,
    ...over,
  };
}

export interface RunningOperator {
  operator: Operator;
  stop(): Promise<void>;
}

export async function startOperator(
  kubeconfig: string,
  providers: ReadonlyMap<string, CloudProvider>,
  over: Partial<OperatorConfig> = {},
  options: Pick<OperatorOptions, "stalledFirstRecheckMs" | "deletionSweepMs" | "terminationGatherMs"> = {},
): Promise<RunningOperator> {
  const config = testConfig(over);
  const logger = createLogger({ level: process.env.VMFORGE_TEST_LOG_LEVEL ?? config.logLevel, name: "vmforge-test" });
  const operator = new Operator({ client: KubeClient.fromKubeconfig(kubeconfig), providers, config, logger, ...options });
  operator.start();
  await waitFor("operator caches synced", async () => operator.isLeader() && operator.isReady(), 30_000);
  return { operator, stop: () => operator.stop(5_000) };
}
