/**
 * Issue 14, cloud call metrics for Azure: the operator in-process with its metrics endpoint (as
 * src/main.ts wires it: engine metrics, the operator's metrics, the health server) and its real
 * Azure provider against the Azure emulator. After an Azure ComputeEnvironment converges,
 * /metrics counts the Azure calls by service, operation and outcome, with latency; a call the
 * emulator answers 429 more often than the SDK retries is counted as throttled.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { KubeClient } from "../../src/engine/kube.js";
import { EngineMetrics } from "../../src/engine/metrics.js";
import { startHealthServer, type HealthServer } from "../../src/engine/health.js";
import { createLogger } from "../../src/engine/logger.js";
import { Operator } from "../../src/operator.js";
import { registerOperatorMetrics } from "../../src/metrics.js";
import { setCloudCallObserver } from "../../src/cloud/call-metrics.js";
import { ComputeEnvironmentResource } from "../../src/api/types.js";
import { installCrds, testConfig, waitFor } from "../support/operator.js";
import { azureClientOptions, azureControl, azureInfo, azureTestCredential, freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import { ceBody, operatorPrincipal, putSecret, waitReady, createWorkStorage, emulatorProvider } from "../support/azure-env.js";

let kube: KubeClient;
let operator: Operator | undefined;
let health: HealthServer | undefined;
let ns: string;

const THROTTLED = "Microsoft.Network/virtualNetworks/write";

/** The vmforge_cloud_requests_total samples of /metrics for one provider: "service operation outcome" -> count. */
async function cloudCalls(provider: string): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${health!.port}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^vmforge_cloud_requests_total\{(.*)\} (\d+)$/.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...m[1]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (labels.provider !== provider) continue;
    out.set(`${labels.service} ${labels.operation} ${labels.outcome}`, Number(m[2]));
  }
  return out;
}

beforeAll(async () => {
  kube = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(kube);
  const info = await azureInfo();
  const rm = new ResourceManagementClient(await azureTestCredential(), info.subscriptionId, azureClientOptions());
  await createWorkStorage(rm, info.subscriptionId);
  ns = await freshNamespace(kube, "azmetrics");
  await putSecret(kube, info, ns, "azure-creds", await operatorPrincipal(info, "vmforge-metrics"));

  const logger = createLogger({ level: process.env.VMFORGE_TEST_LOG_LEVEL ?? "warn", name: "vmforge-test" });
  const metrics = new EngineMetrics();
  const provider = emulatorProvider();
  const op = new Operator({ client: KubeClient.fromKubeconfig(kubeconfigPath(), { metrics }), providers: new Map([["azure", provider]]), config: testConfig({ namespaces: [ns], pollIntervalMs: 1_000 }), logger, metrics });
  operator = op;
  registerOperatorMetrics(metrics.registry, { ces: () => op.ces.list(), runs: () => op.runs.list() });
  health = await startHealthServer({ address: "127.0.0.1:0", metrics, logger, ready: () => op.isReady() });
  op.start();
  await waitFor("operator caches synced", async () => op.isLeader() && op.isReady(), 30_000);
}, 120_000);

afterAll(async () => {
  await azureControl().clearFaults();
  await operator?.stop(5_000);
  await health?.close();
  setCloudCallObserver(undefined);
});

describe("Azure cloud call metrics (emulator)", () => {
  it("after an Azure CE converges, /metrics counts its Azure calls by service and operation, a throttled one as throttled", async () => {
    // More 429s than the SDK retries (3 attempts): that call ends throttled; the operator tries again later.
    await azureControl().addFault({ operation: THROTTLED, status: 429, retryAfterS: 1, count: 3, code: "TooManyRequests", message: "throttled" });
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "metrics"));
    await waitReady(kube, ns, "metrics", 120_000);

    const calls = await cloudCalls("azure");
    const success = (service: string, operation: string) => calls.get(`${service} ${operation} success`) ?? 0;
    // One of each kind of write the environment needs, and the reads around them.
    expect(success("Resources", "resourcegroups/write") + success("Resources", "resourceGroups/write")).toBeGreaterThan(0);
    expect(success("ManagedIdentity", "userAssignedIdentities/write")).toBeGreaterThan(0);
    expect(success("OperationalInsights", "workspaces/write")).toBeGreaterThan(0);
    expect(success("OperationalInsights", "workspaces/tables/write")).toBeGreaterThan(0);
    expect(success("Insights", "dataCollectionRules/write")).toBeGreaterThan(0);
    expect(success("Insights", "dataCollectionEndpoints/write")).toBeGreaterThan(0);
    expect(success("Authorization", "roleDefinitions/write")).toBeGreaterThan(0);
    expect(success("Authorization", "roleAssignments/write")).toBeGreaterThan(0);
    expect(success("Network", "virtualNetworks/write")).toBeGreaterThan(0);
    expect(success("EntraID", "token")).toBeGreaterThan(0);
    expect(calls.get(`Network virtualNetworks/write throttled`)).toBe(1);
    // No resource names in the labels.
    for (const key of calls.keys()) expect(key).not.toMatch(/vmforge-|azmetrics/);

    const text = await (await fetch(`http://127.0.0.1:${health!.port}/metrics`)).text();
    expect(text).toMatch(/^vmforge_cloud_request_duration_seconds_count\{provider="azure",service="Network",operation="virtualNetworks\/write"\} [1-9]/m);
  });
});
