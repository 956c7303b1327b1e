/**
 * What the Azure scenarios "log-latency" (its Azure half) and "azure-burst" share: the Azure
 * emulator, an admin and an operator principal (the seed's roles by phase, plus Reader), the work
 * directory's storage account, a namespace with the credentials Secret, the compiled operator at
 * its defaults pointed at the emulator, Azure ComputeEnvironments awaited Ready, and per CE a
 * principal that ships log lines to Log Analytics as its VMs' launcher does (Logs Ingestion API,
 * telemetry write on the CE's data collection rule only).
 */
import { ClientSecretCredential } from "@azure/identity";
import { ResourceManagementClient } from "@azure/arm-resources";
import { LogsIngestionClient } from "@azure/monitor-ingestion";
import { LogsQueryClient } from "@azure/monitor-query-logs";
import type { KubeClient } from "../src/engine/kube.js";
import { ComputeEnvironmentResource } from "../src/api/types.js";
import type { ComputeEnvironment } from "../src/api/types.js";
import { SecretResource } from "../src/controllers/shared.js";
import type { SecretObject } from "../src/controllers/shared.js";
import { AZURE_PHASES, renderAzureRole } from "../src/cloud/azure/policy.js";
import { LOG_STREAM, LOG_TABLE } from "../src/cloud/azure/names.js";
import { startAzureEmulator, type AzureEmulator } from "../test/harness/azure.js";
import type { EmulatorInfo } from "../test/azure-emulator/control.js";
import { OperatorProcess } from "./operator.js";

export const ARM_SCOPE = "https://management.azure.com/.default";
export const LOCATION = "westeurope";
const STORAGE_API_VERSION = "2023-05-01";
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A CE's Azure status fields (identity, subnet, DCE, DCR, workspace). */
export const azureStatus = (ce: ComputeEnvironment): Record<string, string | undefined> => (ce.status?.azure ?? {}) as Record<string, string | undefined>;

/** An Azure CE on the bench's work storage, with the bench's credentials Secret. */
export function benchCe(ns: string, name: string): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { name, namespace: ns },
    spec: { provider: "azure", credentials: { secretRef: { name: "azure" } }, azure: { location: LOCATION, storageAccount: "benchwork", workDir: "az://work/runs" } },
  } as unknown as ComputeEnvironment;
}

export interface AzureBench {
  az: AzureEmulator;
  info: EmulatorInfo;
  ns: string;
  op: OperatorProcess;
  /** The admin's credential (Owner on the subscription): what a bare SDK client uses. */
  adminCredential: ClientSecretCredential;
  /** Environment for a child process reaching the emulator as the operator does (the CLI). */
  childEnv: Record<string, string>;
  /** Creates Azure CEs and waits until they are all Ready. */
  createCes(names: string[], timeoutMs?: number): Promise<Map<string, ComputeEnvironment>>;
  /** Ships lines of a Run to its CE's Log Analytics as the VM's launcher does. */
  ship(ce: ComputeEnvironment, rows: { runUid: string; seq: number; line: string; stream?: string }[]): Promise<void>;
  /** The Seq of each of a Run's lines queryable in Log Analytics now (read directly, as the admin). */
  visibleSeqs(ce: ComputeEnvironment, runUid: string): Promise<number[]>;
  stop(): Promise<void>;
}

/** What a scenario is given of the bench's cluster: its kubeconfig, a client, fresh namespaces, and where to say things. */
export interface BenchCluster {
  kubeconfig: string;
  client: KubeClient;
  namespace: (prefix: string) => Promise<string>;
  say: (s: string) => void;
}

export async function startAzureBench(o: BenchCluster, prefix: string): Promise<AzureBench> {
  const { client, say } = o;
  const az = await startAzureEmulator({ log: (m) => say(`  [azure] ${m}`) });
  let op: OperatorProcess | undefined;
  try {
    const ctl = az.control;
    const info = await ctl.info();
    const scope = `/subscriptions/${info.subscriptionId}`;
    const admin = await ctl.createPrincipal({ displayName: "bench-admin" });
    await ctl.assignRole({ principalId: admin.objectId, scope, roleName: "Owner" });
    const operatorSp = await ctl.createPrincipal({ displayName: "vmforge-operator" });
    for (const phase of AZURE_PHASES) {
      await ctl.assignRole({ principalId: operatorSp.objectId, scope, role: renderAzureRole(phase, { subscriptionId: info.subscriptionId, withAdditions: true }) });
    }
    await ctl.assignRole({ principalId: operatorSp.objectId, scope, roleName: "Reader" });

    const { setDefaultCACertificates, getCACertificates } = await import("node:tls");
    setDefaultCACertificates([...getCACertificates("default"), az.caPem]);
    const credOpts = { authorityHost: az.endpoint, disableInstanceDiscovery: true };
    const adminCredential = new ClientSecretCredential(info.tenantId, admin.clientId, admin.secret ?? "", credOpts);
    // Per CE, what its VMs' identity holds: telemetry write on the CE's data collection rule only.
    const shippers = new Map<string, Promise<LogsIngestionClient>>();
    const shipperOf = (ce: ComputeEnvironment): Promise<LogsIngestionClient> => {
      const s = azureStatus(ce);
      const dcr = (s.dcrId ?? "").toLowerCase();
      let made = shippers.get(dcr);
      if (!made) {
        made = (async () => {
          const vm = await ctl.createPrincipal({ displayName: `bench-vm-launcher-${shippers.size}` });
          await ctl.assignRole({ principalId: vm.objectId, scope: s.dcrId ?? "", role: { properties: {
            roleName: "bench-vm-telemetry", assignableScopes: [scope], permissions: [{ actions: [], dataActions: ["Microsoft.Insights/Telemetry/Write"] }],
          } } });
          return new LogsIngestionClient(s.dceEndpoint ?? "", new ClientSecretCredential(info.tenantId, vm.clientId, vm.secret ?? "", credOpts));
        })();
        shippers.set(dcr, made);
      }
      return made;
    };
    const rm = new ResourceManagementClient(adminCredential, info.subscriptionId, { endpoint: az.endpoint, credentials: { scopes: [ARM_SCOPE] } });
    await rm.resourceGroups.createOrUpdate("bench-data", { location: LOCATION });
    const accountId = `${scope}/resourceGroups/bench-data/providers/Microsoft.Storage/storageAccounts/benchwork`;
    await rm.resources.beginCreateOrUpdateByIdAndWait(accountId.slice(1), STORAGE_API_VERSION, { location: LOCATION, kind: "StorageV2", sku: { name: "Standard_LRS" } });
    await rm.resources.beginCreateOrUpdateByIdAndWait(`${accountId.slice(1)}/blobServices/default/containers/work`, STORAGE_API_VERSION, { properties: {} });

    const ns = await o.namespace(prefix);
    await client.create(SecretResource, {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "azure", namespace: ns },
      stringData: { tenantId: info.tenantId, clientId: operatorSp.clientId, clientSecret: operatorSp.secret ?? "", subscriptionId: info.subscriptionId },
    } as SecretObject);
    const childEnv = {
      KUBECONFIG: o.kubeconfig,
      VMFORGE_AZURE_ARM_ENDPOINT: az.endpoint,
      VMFORGE_AZURE_AUTHORITY_HOST: az.endpoint,
      VMFORGE_AZURE_LOGS_ENDPOINT: `${az.endpoint}/loganalytics/v1`,
      NODE_EXTRA_CA_CERTS: az.caPath,
    };
    op = new OperatorProcess({ ...childEnv, VMFORGE_NAMESPACES: ns, POD_NAME: `bench-${ns}` });
    await op.start();

    const query = new LogsQueryClient(adminCredential, { endpoint: `${az.endpoint}/loganalytics/v1` });
    const running = op;
    return {
      az, info, ns, op: running, adminCredential, childEnv,
      async createCes(names, timeoutMs = 300_000) {
        for (const name of names) {
          await client.create(ComputeEnvironmentResource, benchCe(ns, name));
        }
        const end = Date.now() + timeoutMs;
        for (;;) {
          const l = await client.list<ComputeEnvironment>(ComputeEnvironmentResource, { namespace: ns });
          const ready = l.items.filter((c) => names.includes(c.metadata.name ?? "") && c.status?.conditions?.some((x) => x.type === "Ready" && x.status === "True"));
          if (ready.length === names.length) return new Map(ready.map((c) => [c.metadata.name ?? "", c]));
          const stalled = l.items.find((c) => c.status?.conditions?.some((x) => x.type === "Stalled" && x.status === "True"));
          if (stalled) throw new Error(`${ns}/${stalled.metadata.name ?? ""} Stalled: ${stalled.status?.conditions?.find((x) => x.type === "Stalled")?.message ?? ""}`);
          if (Date.now() > end) throw new Error(`${names.length - ready.length} of ${names.length} Azure CEs not Ready within ${timeoutMs / 1000} s`);
          await sleep(500);
        }
      },
      async ship(ce, rows) {
        const s = azureStatus(ce);
        const now = new Date().toISOString();
        await (await shipperOf(ce)).upload(s.dcrImmutableId ?? "", LOG_STREAM, rows.map((r) => ({ TimeGenerated: now, RunUid: r.runUid, Stream: r.stream ?? "pipeline", Seq: r.seq, Line: r.line })));
      },
      async visibleSeqs(ce, runUid) {
        const res = await query.queryWorkspace(azureStatus(ce).workspaceCustomerId ?? "", `${LOG_TABLE} | where RunUid == '${runUid}' | project Seq`, { duration: "PT1H" });
        return "tables" in res ? (res.tables[0]?.rows ?? []).map((r) => Number(r[0])) : [];
      },
      async stop() {
        await running.stop().catch(() => undefined);
        await az.stop();
      },
    };
  } catch (e) {
    await op?.stop().catch(() => undefined);
    await az.stop();
    throw e;
  }
}

