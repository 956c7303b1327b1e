/**
 * Shared set-up of the Azure Run tests through the operator: the work directory's storage
 * account (in Resource Manager, and in Azurite when the test needs the uploaded exit status), an
 * operator principal holding exactly the seed's roles (+ Reader and the documented additions),
 * its credentials Secret in a fresh namespace, and an in-process operator with a short poll.
 *
 * No VM player: VMs stay "running" until a test changes their power state through the emulator's
 * controls, as Azure would when the OS shuts down; `finishVm` plays the end of a pipeline (the
 * exit status uploaded to the work directory, then the OS shut down), and `shipLines` /
 * `startPipeline` play the launcher's log lines (shipped through the Logs Ingestion API by a
 * principal allowed to write to the CE's data collection rule only, as the VM's identity is, so they
 * reach Log Analytics after its ingestion delay).
 */
import { readFileSync } from "node:fs";
import { getCACertificates, setDefaultCACertificates } from "node:tls";
import { inject } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import type { CloudProvider } from "../../src/cloud/provider.js";
import { AzureProvider, type AzureProviderOptions } from "../../src/cloud/azure/provider.js";
import { LogsIngestionClient } from "@azure/monitor-ingestion";
import { azureArtifactsPath, azureArtifactsUri } from "../../src/cloud/azure/launcher.js";
import { LOG_STREAM, vmName } from "../../src/cloud/azure/names.js";
import { installCrds, startOperator, waitFor, type RunningOperator } from "./operator.js";
import { azureClientOptions, azureControl, azureEndpoint, azureInfo, azureTestCredential, freshNamespace, kubeconfigPath, trustAzureEmulator } from "../harness/helpers.js";
import type { EmulatedVm, EmulatorInfo } from "../azure-emulator/control.js";
import { AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY } from "../harness/azurite.js";
import { LOCATION, STORAGE, ceBody, operatorPrincipal, putSecret, waitReady, emulatorEndpoints, type Principal } from "./azure-env.js";

export interface AzureRunsOptions {
  /** Namespace prefix. */
  prefix: string;
  /** Display name of the operator's principal. */
  principal: string;
  /** Actions left out of the seed's roles, per phase. */
  without?: Parameters<typeof operatorPrincipal>[2];
  /** The work directory lives in Azurite (its one account), so exit statuses can be uploaded and read. */
  blob?: boolean;
  /** Operator poll interval (default 1 s). */
  pollIntervalMs?: number;
  /**
   * How long a Run whose VM stopped without an exit status waits for its exit line (the provider's
   * exitLineGraceMs; default 3 s here, so tests that stop a VM without one do not wait minutes).
   */
  exitLineGraceMs?: number;
}

export interface AzureRunsEnv {
  kube: KubeClient;
  info: EmulatorInfo;
  ns: string;
  principal: Principal;
  /** The storage account of the work directory (CE spec.azure.storageAccount). */
  storageAccount: string;
  /** The operator currently running (set by start). */
  op: RunningOperator | undefined;
  /** A new AzureProvider with the emulator's endpoints (and the env's exit-line grace unless `over` says otherwise). */
  provider(over?: Omit<AzureProviderOptions, "endpoints">): AzureProvider;
  /** Starts an operator on this namespace (with `provider`, default a new AzureProvider). */
  start(provider?: CloudProvider, namespaces?: string[]): Promise<RunningOperator>;
  stop(): Promise<void>;
  /** Another fresh namespace with the same credentials Secret. */
  extraNamespace(prefix: string): Promise<string>;
  runBody(name: string, ce: string, over?: Partial<Run["spec"]>, ns?: string): Run;
  getRun(name: string, ns?: string): Promise<Run | undefined>;
  /** The VM of a Run (by its deterministic name), if the emulator has it. */
  vmOf(run: Run): Promise<EmulatedVm | undefined>;
  /** The end of a pipeline as a VM plays it: the exit status uploaded, then the OS shut down (VM stopped). */
  finishVm(ce: ComputeEnvironment, run: Run, exitCode: number): Promise<void>;
  /**
   * A Logs Ingestion client on the CE's data collection endpoint for a principal holding telemetry
   * write on the CE's data collection rule only, as the CE's identity (its VMs') does; one per CE.
   */
  logShipper(ce: ComputeEnvironment): Promise<LogsIngestionClient>;
  /** The same for a principal holding telemetry write at `scope` only (one per CE and scope). */
  logShipperAt(ce: ComputeEnvironment, scope: string): Promise<LogsIngestionClient>;
  /** Ships lines of the Run's log to the CE's data collection rule as its VM's launcher would (numbered on from the last shipped), as logShipper's principal. */
  shipLines(ce: ComputeEnvironment, run: Run, lines: string[], stream?: "pipeline" | "launcher"): Promise<void>;
  /** The launcher's start line (VMFORGE_PIPELINE_STARTED) shipped for the Run. */
  startPipeline(ce: ComputeEnvironment, run: Run): Promise<void>;
  /** Creates an Azure CE on the env's work storage (spec.azure fields `over` on top) and waits until it is Ready. */
  readyCe(name: string, over?: Record<string, unknown>): Promise<ComputeEnvironment>;
  /** Waits until the Run has ended (Succeeded or Failed); while it has not, the error shows its phase and the last lines of `said` (a VM player's). */
  ended(name: string, said?: string[], ns?: string): Promise<Run>;
  /** The text of a file in the work directory by its az://container/path URI (needs blob: true). */
  readWork(azUri: string): Promise<string>;
  /** The text of a file the Run's launcher uploaded to its artifacts folder (needs blob: true). */
  uploaded(ce: ComputeEnvironment, run: Run, file: string): Promise<string>;
}

let blobTrusted = false;

export async function setupAzureRuns(o: AzureRunsOptions): Promise<AzureRunsEnv> {
  const kube = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(kube);
  const info = await azureInfo();
  const storageAccount = o.blob ? AZURITE_ACCOUNT : STORAGE;
  const rm = new ResourceManagementClient(await azureTestCredential(), info.subscriptionId, azureClientOptions());
  await rm.resourceGroups.createOrUpdate("data-rg", { location: LOCATION });
  const sa = `subscriptions/${info.subscriptionId}/resourceGroups/data-rg/providers/Microsoft.Storage/storageAccounts/${storageAccount}`;
  await rm.resources.createOrUpdateById(sa, "2023-05-01", { location: LOCATION });
  await rm.resources.createOrUpdateById(`${sa}/blobServices/default/containers/work`, "2023-05-01", {});
  let blobs: BlobServiceClient | undefined;
  let blobTemplate: string | undefined;
  if (o.blob) {
    const endpoint = inject("azuriteBlobEndpoint");
    if (!blobTrusted) {
      // The operator's blob client trusts the process's CAs (NODE_EXTRA_CA_CERTS in a deployment).
      setDefaultCACertificates([...getCACertificates("default"), readFileSync(inject("azuriteCaPath"), "utf8")]);
      blobTrusted = true;
    }
    blobs = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY));
    await blobs.getContainerClient("work").createIfNotExists();
    blobTemplate = endpoint.replace(new RegExp(`/${AZURITE_ACCOUNT}$`), "/{account}");
  }
  const principal = await operatorPrincipal(info, o.principal, o.without ?? {});
  const ns = await freshNamespace(kube, o.prefix);
  await putSecret(kube, info, ns, "azure-creds", principal);
  const provider = (over: Omit<AzureProviderOptions, "endpoints"> = {}): AzureProvider =>
    new AzureProvider({
      endpoints: { ...emulatorEndpoints(), logs: `${azureEndpoint()}/loganalytics/v1`, ...(blobTemplate ? { blob: blobTemplate } : {}) },
      exitLineGraceMs: o.exitLineGraceMs ?? 3_000,
      ...over,
    });
  const extra: string[] = [];
  // The VMs' side of the log: per scope, a principal holding telemetry write there and nowhere else.
  const shippers = new Map<string, Promise<LogsIngestionClient>>();
  const shipperAt = (ce: ComputeEnvironment, scope: string): Promise<LogsIngestionClient> => {
    const key = `${ce.status!.azure!.dceEndpoint!}|${scope.toLowerCase()}`;
    let made = shippers.get(key);
    if (!made) {
      made = (async () => {
        const ctl = azureControl();
        const vm = await ctl.createPrincipal({ displayName: `${o.principal}-vm-${shippers.size}` });
        await ctl.assignRole({ principalId: vm.objectId, scope, role: { properties: {
          roleName: `${o.principal}-vm-telemetry`, assignableScopes: [`/subscriptions/${info.subscriptionId}`], permissions: [{ actions: [], dataActions: ["Microsoft.Insights/Telemetry/Write"] }],
        } } });
        trustAzureEmulator();
        return new LogsIngestionClient(ce.status!.azure!.dceEndpoint!, await azureTestCredential({ clientId: vm.clientId, clientSecret: vm.secret! }));
      })();
      shippers.set(key, made);
    }
    return made;
  };
  const seqs = new Map<string, number>();
  const env: AzureRunsEnv = {
    kube,
    info,
    ns,
    principal,
    storageAccount,
    op: undefined,
    provider,
    async start(p, namespaces) {
      env.op = await startOperator(kubeconfigPath(), new Map([["azure", p ?? provider()]]), { namespaces: namespaces ?? [ns, ...extra], pollIntervalMs: o.pollIntervalMs ?? 1_000 });
      return env.op;
    },
    async stop() {
      await env.op?.stop();
      env.op = undefined;
    },
    async extraNamespace(prefix) {
      const n = await freshNamespace(kube, prefix);
      await putSecret(kube, info, n, "azure-creds", principal);
      extra.push(n);
      return n;
    },
    runBody(name, ce, over = {}, namespace = ns) {
      return {
        apiVersion: "vmforge.dev/v1alpha1",
        kind: "Run",
        metadata: { name, namespace },
        spec: { computeEnvironmentRef: { name: ce }, pipeline: { repository: "https://github.com/nextflow-io/hello" }, ...over },
      } as Run;
    },
    getRun(name, namespace = ns) {
      return kube.get<Run>(RunResource, namespace, name);
    },
    async vmOf(run) {
      const name = vmName(run.metadata.uid ?? "");
      return (await azureControl().listVms()).find((v) => v.name === name);
    },
    async finishVm(ce, run, exitCode) {
      if (!blobs) throw new Error("finishVm needs the work directory in Azurite (blob: true)");
      const art = azureArtifactsPath(ce, run);
      const text = `${exitCode}\n`;
      await blobs.getContainerClient(art.container).getBlockBlobClient(`${art.path}/exit-status`).upload(text, Buffer.byteLength(text));
      const vm = await env.vmOf(run);
      if (!vm) throw new Error(`no VM for Run ${run.metadata.name}`);
      await azureControl().setVmPowerState(vm.id, "stopped");
    },
    logShipper(ce) {
      return shipperAt(ce, ce.status!.azure!.dcrId!);
    },
    logShipperAt: shipperAt,
    async shipLines(ce, run, lines, stream = "pipeline") {
      const client = await env.logShipper(ce);
      const uid = run.metadata.uid!;
      let seq = seqs.get(uid) ?? 0;
      const now = new Date().toISOString();
      const rows = lines.map((Line) => ({ TimeGenerated: now, RunUid: uid, Stream: stream, Seq: ++seq, Line }));
      seqs.set(uid, seq);
      await client.upload(ce.status!.azure!.dcrImmutableId!, LOG_STREAM, rows);
    },
    startPipeline(ce, run) {
      return env.shipLines(ce, run, ["VMFORGE_PIPELINE_STARTED"], "launcher");
    },
    async readyCe(name, over = {}) {
      await kube.create(ComputeEnvironmentResource, ceBody(ns, name, { storageAccount, ...over }));
      return waitReady(kube, ns, name);
    },
    ended(name, said = [], namespace = ns) {
      return waitFor(`Run ${name} ended`, async () => {
        const r = await env.getRun(name, namespace);
        if (r?.status?.phase === "Succeeded" || r?.status?.phase === "Failed") return r;
        throw new Error(`${r?.status?.phase ?? "-"}/${r?.status?.reason ?? "-"}: ${r?.status?.message ?? ""}\n${said.slice(-5).join("\n")}`);
      }, 180_000, 500);
    },
    async readWork(azUri) {
      if (!blobs) throw new Error("readWork needs the work directory in Azurite (blob: true)");
      const m = /^az:\/\/([^/]+)\/(.+)$/.exec(azUri);
      if (!m) throw new Error(`not an az:// URI: ${azUri}`);
      return (await blobs.getContainerClient(m[1]!).getBlobClient(m[2]!).downloadToBuffer()).toString("utf8");
    },
    uploaded(ce, run, file) {
      return env.readWork(`${azureArtifactsUri(ce, run)}/${file}`);
    },
  };
  return env;
}

/** setupAzureRuns, then an operator on its namespace alone and one CE (`ce`, spec.azure fields `ceSpec` on top) Ready on it. */
export async function setupAzureRunsWithCe(o: AzureRunsOptions & { ce: string; ceSpec?: Record<string, unknown> }): Promise<{ env: AzureRunsEnv; ce: ComputeEnvironment }> {
  const env = await setupAzureRuns(o);
  await env.start(undefined, [env.ns]);
  return { env, ce: await env.readyCe(o.ce, o.ceSpec) };
}
