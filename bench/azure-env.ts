/**
 * Scenario "azure-env" (issue 13, 5): an Azure ComputeEnvironment's time to Ready, as a ratio to
 * the critical path of the operations it needs, under per-type latencies set in the Azure emulator.
 *
 * The emulator finishes an asynchronous create no sooner than its type's latency; synchronous ones
 * answer at once. What depends on what is Azure's, not vmforge's: the table needs its workspace,
 * the data collection rule needs the table and the endpoint, the role assignments need the role
 * definition, the identity and the rule. So the critical path is the longest chain of latencies,
 * and nothing can be Ready sooner. The ratio shows what the operator adds: serialised steps,
 * long-running-operation polling, requeues.
 *
 * The compiled operator runs with its defaults (no LRO poll override), as in production; the
 * emulator asks for polls every `LRO_RETRY_AFTER_S` seconds.
 */
import { ClientSecretCredential } from "@azure/identity";
import { ResourceManagementClient } from "@azure/arm-resources";
import type { KubeClient } from "../src/engine/kube.js";
import { ComputeEnvironmentResource } from "../src/api/types.js";
import type { ComputeEnvironment } from "../src/api/types.js";
import { SecretResource } from "../src/controllers/shared.js";
import type { SecretObject } from "../src/controllers/shared.js";
import { AZURE_PHASES, renderAzureRole } from "../src/cloud/azure/policy.js";
import { startAzureEmulator } from "../test/harness/azure.js";
import { OperatorProcess } from "./operator.js";
import { dist, fmtDist, fmtLoad, load, sec, type Dist, type Load } from "./stats.js";

const ARM_SCOPE = "https://management.azure.com/.default";
const STORAGE_API_VERSION = "2023-05-01";
const LOCATION = "westeurope";
const LRO_RETRY_AFTER_S = 1;
/** Per resource type, ms (asynchronous creates only; the rest answer at once). */
const LATENCY_MS: Record<string, number> = {
  "Microsoft.OperationalInsights/workspaces": 4_000,
  "Microsoft.OperationalInsights/workspaces/tables": 3_000,
  "Microsoft.Network/virtualNetworks": 2_000,
};
/** Chains of dependent creates (Azure's order); the critical path is the longest. */
const CHAINS: string[][] = [
  ["Microsoft.OperationalInsights/workspaces", "Microsoft.OperationalInsights/workspaces/tables", "Microsoft.Insights/dataCollectionRules", "Microsoft.Authorization/roleAssignments"],
  ["Microsoft.Insights/dataCollectionEndpoints", "Microsoft.Insights/dataCollectionRules", "Microsoft.Authorization/roleAssignments"],
  ["Microsoft.ManagedIdentity/userAssignedIdentities", "Microsoft.Authorization/roleAssignments"],
  ["Microsoft.Authorization/roleDefinitions", "Microsoft.Authorization/roleAssignments"],
  ["Microsoft.Network/virtualNetworks"],
];

export interface AzureEnvResult {
  samples: number;
  latencyMs: Record<string, number>;
  lroRetryAfterS: number;
  criticalPathMs: number;
  toReady: Dist;
  ratioP50: number;
  ratioMax: number;
  load: Load;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function azureEnvScenario(o: {
  kubeconfig: string;
  client: KubeClient;
  namespace: (prefix: string) => Promise<string>;
  say: (s: string) => void;
  samples: number;
}): Promise<AzureEnvResult> {
  const { client, say } = o;
  const criticalPathMs = Math.max(...CHAINS.map((c) => c.reduce((s, t) => s + (LATENCY_MS[t] ?? 0), 0)));
  const az = await startAzureEmulator({ log: (m) => say(`  [azure] ${m}`) });
  let op: OperatorProcess | undefined;
  try {
    const ctl = az.control;
    await ctl.settings({ lroRetryAfterS: LRO_RETRY_AFTER_S, latencyMs: LATENCY_MS });
    const info = await ctl.info();
    const scope = `/subscriptions/${info.subscriptionId}`;
    const admin = await ctl.createPrincipal({ displayName: "bench-admin" });
    await ctl.assignRole({ principalId: admin.objectId, scope, roleName: "Owner" });
    const operatorSp = await ctl.createPrincipal({ displayName: "vmforge-operator" });
    for (const phase of AZURE_PHASES) {
      await ctl.assignRole({ principalId: operatorSp.objectId, scope, role: renderAzureRole(phase, { subscriptionId: info.subscriptionId, withAdditions: true }) });
    }
    await ctl.assignRole({ principalId: operatorSp.objectId, scope, roleName: "Reader" });

    // The work directory's storage account and container (the customer's, made as the admin).
    const { setDefaultCACertificates, getCACertificates } = await import("node:tls");
    setDefaultCACertificates([...getCACertificates("default"), az.caPem]);
    const cred = new ClientSecretCredential(info.tenantId, admin.clientId, admin.secret ?? "", { authorityHost: az.endpoint, disableInstanceDiscovery: true });
    const rm = new ResourceManagementClient(cred, info.subscriptionId, { endpoint: az.endpoint, credentials: { scopes: [ARM_SCOPE] } });
    await rm.resourceGroups.createOrUpdate("bench-data", { location: LOCATION });
    const accountId = `${scope}/resourceGroups/bench-data/providers/Microsoft.Storage/storageAccounts/benchwork`;
    await rm.resources.beginCreateOrUpdateByIdAndWait(accountId.slice(1), STORAGE_API_VERSION, { location: LOCATION, kind: "StorageV2", sku: { name: "Standard_LRS" } });
    await rm.resources.beginCreateOrUpdateByIdAndWait(`${accountId.slice(1)}/blobServices/default/containers/work`, STORAGE_API_VERSION, { properties: {} });

    const ns = await o.namespace("azure-env");
    await client.create(SecretResource, {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "azure", namespace: ns },
      stringData: { tenantId: info.tenantId, clientId: operatorSp.clientId, clientSecret: operatorSp.secret ?? "", subscriptionId: info.subscriptionId },
    } as SecretObject);
    op = new OperatorProcess({
      KUBECONFIG: o.kubeconfig,
      VMFORGE_NAMESPACES: ns,
      POD_NAME: `bench-${ns}`,
      VMFORGE_AZURE_ARM_ENDPOINT: az.endpoint,
      VMFORGE_AZURE_AUTHORITY_HOST: az.endpoint,
      VMFORGE_AZURE_LOGS_ENDPOINT: `${az.endpoint}/loganalytics/v1`,
      NODE_EXTRA_CA_CERTS: az.caPath,
    });
    await op.start();
    say(`  latencies ${Object.entries(LATENCY_MS).map(([t, ms]) => `${t.split("/").slice(1).join("/")} ${sec(ms)}`).join(", ")}; LRO Retry-After ${LRO_RETRY_AFTER_S} s; critical path ${sec(criticalPathMs)}`);

    const times: number[] = [];
    for (let i = 0; i < o.samples; i++) {
      const name = `env${i}`;
      const t0 = Date.now();
      await client.create(ComputeEnvironmentResource, {
        apiVersion: "vmforge.dev/v1alpha1",
        kind: "ComputeEnvironment",
        metadata: { name, namespace: ns },
        spec: { provider: "azure", credentials: { secretRef: { name: "azure" } }, azure: { location: LOCATION, storageAccount: "benchwork", workDir: "az://work/runs" } },
      } as unknown as ComputeEnvironment);
      let readyAt = 0;
      while (Date.now() - t0 < 180_000) {
        const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name);
        const conds = ce?.status?.conditions ?? [];
        if (conds.some((c) => c.type === "Stalled" && c.status === "True")) throw new Error(`${ns}/${name} Stalled: ${conds.find((c) => c.type === "Stalled")?.message ?? ""}`);
        if (conds.some((c) => c.type === "Ready" && c.status === "True")) {
          // (lastTransitionTime has whole seconds only: the time this 50 ms loop saw it is closer)
          readyAt = Date.now();
          break;
        }
        await sleep(50);
      }
      if (!readyAt) throw new Error(`${ns}/${name} not Ready within 180 s`);
      times.push(readyAt - t0);
      say(`  ${name}: Ready after ${sec(readyAt - t0)} (${((readyAt - t0) / criticalPathMs).toFixed(2)}x the critical path); ${fmtLoad(load())}`);
      await client.delete(ComputeEnvironmentResource, ns, name);
      while (await client.get(ComputeEnvironmentResource, ns, name)) await sleep(200);
    }
    const toReady = dist(times);
    say(`  create -> Ready: ${fmtDist(toReady)}`);
    return {
      samples: times.length,
      latencyMs: LATENCY_MS,
      lroRetryAfterS: LRO_RETRY_AFTER_S,
      criticalPathMs,
      toReady,
      ratioP50: toReady.p50 / criticalPathMs,
      ratioMax: toReady.max / criticalPathMs,
      load: load(),
    };
  } finally {
    await op?.stop().catch(() => undefined);
    await az.stop();
  }
}
