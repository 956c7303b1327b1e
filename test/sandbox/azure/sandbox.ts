/**
 * `npm run sandbox -- --cloud azure`: a real local control plane, the Azure emulator (Entra ID,
 * Resource Manager, Log Analytics) and Azurite (blob storage) as Azure, the operator with its real
 * Azure provider pointed at them, and examples/azure/ applied. The emulator records VMs but boots
 * nothing, so the sandbox plays each VM (vm-player.ts): it runs the launcher the operator put in
 * the VM's userData. Watch the Run go Pending -> Launching -> Running -> Succeeded with its log
 * read back from Log Analytics, then the VM deleted.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { getCACertificates, setDefaultCACertificates } from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { ClientSecretCredential } from "@azure/identity";
import { ResourceManagementClient } from "@azure/arm-resources";
import { LogsQueryClient } from "@azure/monitor-query-logs";
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";
import { KubeClient } from "../../../src/engine/kube.js";
import type { KubeObject, ResourceType } from "../../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../../src/api/types.js";
import { AZURE_PHASES, renderAzureRole } from "../../../src/cloud/azure/policy.js";
import { azureArtifactsPath } from "../../../src/cloud/azure/launcher.js";
import { startCluster } from "../../harness/cluster.js";
import { startAzureEmulator } from "../../harness/azure.js";
import { azuriteTlsOf, startAzurite } from "../../harness/azurite.js";
import { installCrds } from "../../support/operator.js";
import { AzureVmPlayer } from "./vm-player.js";
import { startSandboxOperator } from "../operator.js";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const NAMESPACE = "sandbox";
const EXAMPLES = "examples/azure";
const CE_NAME = "azure-example";
const RUN_NAME = "hello";
const ARM_SCOPE = "https://management.azure.com/.default";
const STORAGE_API_VERSION = "2023-05-01";
const deadlineMs = 10 * 60_000;

export interface AzureSandboxOptions {
  unattended: boolean;
  failPipeline: boolean;
  say: (line: string) => void;
}

const resources: Record<string, ResourceType> = {
  Secret: { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true },
  Namespace: { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false },
  ComputeEnvironment: ComputeEnvironmentResource,
  Run: RunResource,
};

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function runAzureSandbox(o: AzureSandboxOptions): Promise<number> {
  const { say } = o;
  const cleanups: (() => Promise<void> | void)[] = [];
  let exiting = false;
  const cleanup = async (): Promise<void> => {
    if (exiting) return;
    exiting = true;
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  };
  process.on("SIGINT", () => void cleanup().then(() => process.exit(130)));
  process.on("SIGTERM", () => void cleanup().then(() => process.exit(143)));

  try {
    say("starting the local control plane (builds it on first use: several minutes), the Azure emulator and Azurite");
    const emulatorStart = startAzureEmulator();
    const azuriteStart = emulatorStart.then((e) => startAzurite({ tls: azuriteTlsOf(e) }));
    const [c, e, z] = await Promise.allSettled([startCluster(), emulatorStart, azuriteStart]);
    for (const r of [c, e, z]) if (r.status === "fulfilled") cleanups.push(() => r.value.stop());
    for (const r of [c, e, z]) if (r.status === "rejected") throw r.reason;
    const cluster = (c as PromiseFulfilledResult<Awaited<ReturnType<typeof startCluster>>>).value;
    const emulator = (e as PromiseFulfilledResult<Awaited<typeof emulatorStart>>).value;
    const azurite = (z as PromiseFulfilledResult<Awaited<typeof azuriteStart>>).value;
    // This process talks to both over HTTPS too: trust the harness CA (and only add it).
    setDefaultCACertificates([...getCACertificates("default"), emulator.caPem]);
    say(`Azure emulator (Entra ID, Resource Manager, Log Analytics): ${emulator.endpoint}`);
    say(`Azurite (blob storage): ${azurite.blobEndpoint}`);

    const client = KubeClient.fromKubeconfig(cluster.kubeconfigPath);
    await installCrds(client);
    say("CRDs installed: computeenvironments.vmforge.dev, runs.vmforge.dev");

    // --- Azure as a customer has it before the ComputeEnvironment: a tenant, a subscription, an
    // --- administrator, the storage account with the work directory's container, and the
    // --- operator's service principal with the roles `vmforge policy azure` prints.
    const control = emulator.control;
    const tenant = await control.createTenant({ domain: "vmforge-sandbox.onmicrosoft.com" });
    const subscription = await control.createSubscription({ tenantId: tenant.id, displayName: "vmforge sandbox" });
    const scope = `/subscriptions/${subscription.id}`;
    const admin = await control.createPrincipal({ tenantId: tenant.id, displayName: "sandbox-administrator" });
    await control.assignRole({ principalId: admin.objectId, scope, roleName: "Owner" });
    const operatorSp = await control.createPrincipal({ tenantId: tenant.id, displayName: "vmforge-operator" });
    for (const phase of AZURE_PHASES) {
      await control.assignRole({ principalId: operatorSp.objectId, scope, role: renderAzureRole(phase, { subscriptionId: subscription.id, withAdditions: true }) });
    }
    await control.assignRole({ principalId: operatorSp.objectId, scope, roleName: "Reader" });
    say(`tenant ${tenant.domain}, subscription ${subscription.id}; service principal vmforge-operator (client ${operatorSp.clientId}) holds the seed's roles per phase (${AZURE_PHASES.join(", ")}) with vmforge's additions, and Reader`);

    const credOptions = { authorityHost: emulator.endpoint, disableInstanceDiscovery: true };
    const adminCred = new ClientSecretCredential(tenant.id, admin.clientId, admin.secret ?? "", credOptions);
    const rm = new ResourceManagementClient(adminCred, subscription.id, { endpoint: emulator.endpoint, credentials: { scopes: [ARM_SCOPE] } });
    const ceDoc = exampleDocs("compute-environment.yaml").find((d) => d.kind === "ComputeEnvironment") as unknown as ComputeEnvironment;
    const location = ceDoc.spec.azure?.location ?? "westeurope";
    const container = /^az:\/\/([^/]+)/.exec(ceDoc.spec.azure?.workDir ?? "")?.[1] ?? "vmforge-work";
    // Azurite serves one account; the example's storage account name is replaced by it.
    const account = azurite.accountName;
    const storageRg = "sandbox-storage";
    await rm.resourceGroups.createOrUpdate(storageRg, { location });
    const accountId = `${scope}/resourceGroups/${storageRg}/providers/Microsoft.Storage/storageAccounts/${account}`;
    // The *ById methods take the resource ID without its leading slash.
    await rm.resources.beginCreateOrUpdateByIdAndWait(accountId.slice(1), STORAGE_API_VERSION, { location, kind: "StorageV2", sku: { name: "Standard_LRS" } });
    await rm.resources.beginCreateOrUpdateByIdAndWait(`${accountId.slice(1)}/blobServices/default/containers/${container}`, STORAGE_API_VERSION, { properties: {} });
    const blobs = new BlobServiceClient(azurite.blobEndpoint, new StorageSharedKeyCredential(azurite.accountName, azurite.accountKey));
    await blobs.getContainerClient(container).createIfNotExists();
    say(`storage account ${account} (resource group ${storageRg}) with the work directory's container ${container}, in Resource Manager and Azurite`);

    // --- The operator, with its real Azure provider pointed at the emulator and Azurite.
    const dir = mkdtempSync(join(tmpdir(), "vmforge-sandbox-azure-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const operatorLog = join(dir, "operator.log");
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("AZURE_") && !k.startsWith("VMFORGE_AZURE_")) env[k] = v;
    const blobTemplate = azurite.blobEndpoint.replace(new RegExp(`/${azurite.accountName}$`), "/{account}");
    const operator = startSandboxOperator({
      logFile: operatorLog, cleanups, say,
      env: {
        ...env,
        KUBECONFIG: cluster.kubeconfigPath,
        VMFORGE_AZURE_ARM_ENDPOINT: emulator.endpoint,
        VMFORGE_AZURE_AUTHORITY_HOST: emulator.endpoint,
        VMFORGE_AZURE_LOGS_ENDPOINT: `${emulator.endpoint}/loganalytics/v1`,
        VMFORGE_AZURE_BLOB_ENDPOINT: blobTemplate,
        VMFORGE_AZURE_LRO_POLL_MS: "250",
        NODE_EXTRA_CA_CERTS: emulator.caPath,
        VMFORGE_LEADER_ELECTION: "false",
        VMFORGE_POLL_INTERVAL: "2s",
        VMFORGE_METRICS_ADDRESS: "127.0.0.1:0",
        VMFORGE_NAMESPACES: NAMESPACE,
      },
    });

    // The stand-in pipeline runs a few seconds, as a real one would: long enough for its start line
    // to reach Log Analytics (the launcher ships every 5 s) and the Run to be seen Running.
    const player = new AzureVmPlayer({ control, caPath: emulator.caPath, dir: join(dir, "vms"), pipelineExitCode: o.failPipeline ? 1 : 0, pipelineSeconds: 12, say });
    player.start();
    cleanups.push(() => player.stop());

    // Every status change of the Run arrives through a watch, so no phase goes unseen.
    let lastRun = "";
    const show = (r: Run): void => {
      if (r.metadata.name !== RUN_NAME) return;
      const st = r.status;
      const line = `Run ${r.metadata.name}: ${st?.phase ?? "(no status yet)"}${st?.reason ? ` (${st.reason}${st.message ? `: ${st.message}` : ""})` : ""}`;
      if (line !== lastRun) say((lastRun = line));
    };
    const watchAbort = new AbortController();
    cleanups.push(() => watchAbort.abort());
    void (async () => {
      while (!watchAbort.signal.aborted) {
        try {
          const list = await client.list<Run>(RunResource, { namespace: NAMESPACE });
          for (const r of list.items) show(r);
          for await (const ev of client.watch<Run>(RunResource, { namespace: NAMESPACE, resourceVersion: list.metadata.resourceVersion }, watchAbort.signal)) {
            if (ev.type === "ADDED" || ev.type === "MODIFIED") show(ev.object);
          }
        } catch {
          if (!watchAbort.signal.aborted) await sleep(500);
        }
      }
    })();

    // --- examples/azure/, with the emulator's tenant, principal, subscription and storage account.
    await client.create(resources.Namespace as ResourceType, { apiVersion: "v1", kind: "Namespace", metadata: { name: NAMESPACE } });
    const fill: Record<string, string> = {
      tenantId: tenant.id,
      clientId: operatorSp.clientId,
      clientSecret: operatorSp.secret ?? "",
      subscriptionId: subscription.id,
      storageAccount: account,
    };
    await applyExample(client, "credentials-secret.yaml", say, (obj) => {
      if (obj.kind !== "Secret") return;
      const data = (obj as unknown as { stringData: Record<string, string> }).stringData;
      for (const k of Object.keys(data)) if (fill[k] !== undefined) data[k] = fill[k];
      return `its values replaced by the sandbox principal's (${Object.keys(data).join(", ")})`;
    });
    await applyExample(client, "compute-environment.yaml", say);
    await applyExample(client, "run.yaml", say);

    const logsCred = new ClientSecretCredential(tenant.id, operatorSp.clientId, operatorSp.secret ?? "", credOptions);
    const logs = new LogsQueryClient(logsCred, { endpoint: `${emulator.endpoint}/loganalytics/v1` });
    let lastCe = "";
    const seen = new Set<number>();
    let exitLineSeen = false;
    let logLinesSeen = 0;
    const started = Date.now();
    let outcome: Run | undefined;
    let endedAt: number | undefined;
    let vmGone = false;
    let lastLeft = "";
    let vmShown = false;
    while (Date.now() - started < deadlineMs) {
      if (operator.exitCode !== null) throw new Error(`the operator exited with code ${operator.exitCode}; see ${operatorLog}`);
      const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, NAMESPACE, CE_NAME);
      const ceReady = ce?.status?.conditions?.find((x) => x.type === "Ready");
      const ceLine = `ComputeEnvironment ${CE_NAME}: ${ce?.status?.phase ?? "(no status yet)"}${ceReady ? ` (${ceReady.reason}: ${ceReady.message})` : ""}`;
      if (ceLine !== lastCe) say((lastCe = ceLine));
      // A ComputeEnvironment that cannot converge leaves the Run waiting forever: stop here.
      if (ce?.status?.phase === "Failed" && o.unattended) throw new Error(`the ComputeEnvironment cannot become Ready (${ceReady?.reason ?? "?"}); see ${operatorLog}`);
      const run = await client.get<Run>(RunResource, NAMESPACE, RUN_NAME);
      const where = run?.status?.log;
      if (run?.metadata.uid && where?.workspace && where.table) {
        // The Run's log as the launcher shipped it through the Logs Ingestion API.
        const query = `${where.table} | where RunUid == '${run.metadata.uid}' | project Seq, Stream, Line | order by Seq asc`;
        const res = await logs.queryWorkspace(where.workspace, query, { duration: "P1D" }).catch((err: unknown) => {
          say(`log query failed: ${err instanceof Error ? err.message : String(err)}`);
          return undefined;
        });
        const table = res && ("tables" in res ? res.tables[0] : res.partialTables[0]);
        for (const row of table?.rows ?? []) {
          const seq = Number(row[0]);
          if (seen.has(seq)) continue;
          seen.add(seq);
          const line = String(row[2] ?? "");
          process.stdout.write(`  ${row[1] === "launcher" ? "launcher " : ""}| ${line}\n`);
          logLinesSeen++;
          if (row[1] === "launcher" && /^VMFORGE_EXIT_CODE=/.test(line)) exitLineSeen = true;
        }
      }
      const phase = run?.status?.phase;
      if (phase === "Running" && !vmShown && run?.status?.instance?.id) {
        // What Azure made for the VM (created inline with it, deleteOption Delete), named after it.
        const id = run.status.instance.id;
        const made = await vmResources(rm, id);
        if (made.length > 0) {
          vmShown = true;
          say(`VM ${id.split("/").pop()} in resource group ${id.split("/")[4]}: ${made.join(", ")}`);
        }
      }
      if (phase === "Succeeded" || phase === "Failed" || phase === "Cancelled") {
        outcome ??= run;
        endedAt ??= Date.now();
        const ours = (await control.listVms()).filter((vm) => vm.tags["vmforge-run-uid"] === run?.metadata.uid);
        const vmId = run?.status?.instance?.id;
        if (ours.length === 0 && !vmGone && vmId) {
          // The NIC, public IP and OS disk were created with the VM (deleteOption Delete) and carry its name.
          const rg = vmId.split("/")[4] ?? "";
          const vmName = (vmId.split("/").pop() ?? "").toLowerCase();
          const left = await vmResources(rm, vmId);
          if (left.length === 0) {
            vmGone = true;
            say(`VM ${vmName} deleted, and its NIC, public IP and OS disk with it (none left in resource group ${rg})`);
          } else if (lastLeft !== left.join()) say(`VM ${vmName} deleted; still there: ${(lastLeft = left.join()).replace(/,/g, ", ")}`);
        }
        if ((exitLineSeen && vmGone) || Date.now() - endedAt > 30_000) break;
      }
      await sleep(1000);
    }
    if (!outcome) throw new Error(`the example Run did not finish within ${deadlineMs / 60000} minutes; see ${operatorLog}`);

    const s = outcome.status ?? {};
    say(`Run ${RUN_NAME} ended: ${s.phase}, exit code ${s.exitCode ?? "(none)"} on ${s.instance?.id ?? "(no machine)"}`);
    const ceNow = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, NAMESPACE, CE_NAME);
    let exitObject: string | undefined;
    if (ceNow) {
      const art = azureArtifactsPath(ceNow, outcome);
      exitObject = await blobs.getContainerClient(art.container).getBlobClient(`${art.path}/exit-status`).downloadToBuffer()
        .then((b) => b.toString("utf8"))
        .catch(() => undefined);
    }
    if (exitObject !== undefined) say(`exit status uploaded to the work dir: ${exitObject.trim()}`);
    say(`read ${logLinesSeen} log lines from Log Analytics${exitLineSeen ? ", including the exit line" : " (no exit line!)"}`);
    if (!vmGone) say("the Run's VM still exists!");
    const ok = s.phase === "Succeeded" && exitLineSeen && exitObject?.trim() === "0" && vmGone;
    if (o.unattended) {
      await cleanup();
      const expected = o.failPipeline ? s.phase === "Failed" && s.exitCode === 1 && exitLineSeen && vmGone : ok;
      return expected ? 0 : 1;
    }
    say("the sandbox keeps running; in another terminal:");
    say(`  export KUBECONFIG=${cluster.kubeconfigPath}`);
    say(`  kubectl get ce,runs -n ${NAMESPACE}`);
    say(`  kubectl describe run ${RUN_NAME} -n ${NAMESPACE}`);
    say(`  Azure emulator test controls (VMs, request log): ${emulator.endpoint}/_emulator/ (CA ${emulator.caPath})`);
    say("apply more Runs (a new name each time); the sandbox plays their VMs. Ctrl-C tears everything down");
    await new Promise<never>(() => undefined);
    return 0;
  } catch (err) {
    say(`failed: ${err instanceof Error ? err.message : String(err)}`);
    if (process.env.VMFORGE_SANDBOX_DEBUG && err instanceof Error) process.stderr.write(`${err.stack ?? ""}\n`);
    await cleanup();
    return 1;
  }
}

/** The resources in a VM's resource group named after it (the VM, its NIC, public IP and OS disk), as "type name". */
async function vmResources(rm: ResourceManagementClient, vmId: string): Promise<string[]> {
  const rg = vmId.split("/")[4] ?? "";
  const vmName = (vmId.split("/").pop() ?? "").toLowerCase();
  const out: string[] = [];
  for await (const r of rm.resources.listByResourceGroup(rg)) {
    if ((r.name ?? "").toLowerCase().startsWith(vmName)) out.push(`${r.type} ${r.name}`);
  }
  return out;
}

function exampleDocs(file: string): KubeObject[] {
  return parseAllDocuments(readFileSync(join(REPO, EXAMPLES, file), "utf8"))
    .map((d) => d.toJS() as KubeObject)
    .filter((obj) => obj?.kind);
}

async function applyExample(client: KubeClient, file: string, say: (l: string) => void, adjust?: (obj: KubeObject) => string | undefined): Promise<void> {
  for (const obj of exampleDocs(file)) {
    const rt = obj.kind ? resources[obj.kind] : undefined;
    if (!rt) throw new Error(`${EXAMPLES}/${file}: unexpected kind ${obj.kind}`);
    obj.metadata.namespace = NAMESPACE;
    const note = adjust?.(obj);
    await client.create(rt, obj);
    say(`applied ${EXAMPLES}/${file}: ${obj.kind} ${NAMESPACE}/${obj.metadata.name}${note ? `, ${note}` : ""}`);
  }
}
