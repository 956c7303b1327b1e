/**
 * Azure Runs: one VM per Run, named from the Run UID (a retried create is the same PUT, never a
 * second VM), with its NIC, public IP and OS disk created inline with deleteOption Delete, the CE's
 * identity attached and the launcher in userData. Followed with ONE list call per subscription
 * and credentials per poll (the subscription list with statusOnly=true) for all CEs, ended by
 * deleting the VM, logs read from Log Analytics by the launcher's line sequence, orphans swept by
 * tag (VMs, NICs, public IPs) and by name (OS disks).
 */
import { generateKeyPairSync } from "node:crypto";
import { DEFAULT_AZURE_VM_SIZE } from "../../api/constants.js";
import type { ComputeEnvironment, Run } from "../../api/types.js";
import { isTerminal } from "../../api/phases.js";
import { CloudError, forEachLimited, settleAll, type EnvContext, type LaunchHints, type MachineState, type RunDescription, type RunLogChunk } from "../provider.js";
import { azCall, azDelete, azGet, blobEndpoint, isCapacityCode, type AzureClients } from "./clients.js";
import { parseExitStatus } from "../launcher/render.js";
import { azureArtifactsPath, renderAzureBootstrap, renderAzureLaunch } from "./launcher.js";
import { AzureRunWatch, BOOTSTRAP_MARKER, EXIT_MARKER, LAUNCHER_STREAM, PIPELINE_STARTED_MARKER, launcherLines, type LauncherLines } from "./observe.js";
import { LOG_TABLE, TAG_RUN_UID, azureImageReference, ceId, isOsDiskName, osDiskName, parseResourceId, resourceGroupName, runTags, vmName } from "./names.js";

/** The default image: Ubuntu 22.04 LTS, generation 2 (overridable with a CE field once the API has one). */
export const DEFAULT_OS_DISK_GIB = 50;

type EnvStatus = Record<string, string | undefined>;

function envStatus(ce: ComputeEnvironment): EnvStatus {
  return (ce.status?.azure ?? {}) as EnvStatus;
}

function need(s: EnvStatus, key: string): string {
  const v = s[key];
  if (!v) throw CloudError.retryable("EnvironmentNotReady", `the ComputeEnvironment has no ${key} yet`, 5_000);
  return v;
}

let sshKey: string | undefined;
/** A throw-away SSH public key (Azure requires one when password login is off); its private half is never kept. */
function throwawaySshKey(): string {
  if (sshKey) return sshKey;
  const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = publicKey.export({ format: "jwk" }) as { n: string; e: string };
  const part = (b: Buffer): Buffer => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    return Buffer.concat([len, b]);
  };
  const mpint = (b64: string): Buffer => {
    let b = Buffer.from(b64, "base64url");
    if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
    return part(b);
  };
  const blob = Buffer.concat([part(Buffer.from("ssh-rsa")), mpint(jwk.e), mpint(jwk.n)]);
  sshKey = `ssh-rsa ${blob.toString("base64")} vmforge-no-login`;
  return sshKey;
}

export function blobEndpointFor(c: Pick<AzureClients, "endpoints">, account: string): string {
  return blobEndpoint(c.endpoints, account);
}

function runRg(ce: ComputeEnvironment): string {
  return resourceGroupName(ceId(ce));
}

function vmResourceId(c: AzureClients, rg: string, name: string): string {
  return `/subscriptions/${c.subscriptionId}/resourceGroups/${rg}/providers/Microsoft.Compute/virtualMachines/${name}`;
}

function logLocation(ce: ComputeEnvironment, run: Run) {
  const s = envStatus(ce);
  return { provider: "loganalytics" as const, workspace: s.workspaceCustomerId ?? s.workspaceId ?? "", table: LOG_TABLE, stream: `RunUid == '${run.metadata.uid ?? ""}'` };
}

/** The failure of a VM whose provisioning failed (`ProvisioningState/failed/<code>` in its instance view). */
function provisioningFailure(statuses: Array<{ code?: string; message?: string }> | undefined): { failure?: { code: string; message: string } } {
  for (const st of statuses ?? []) {
    const m = /^ProvisioningState\/failed\/(.+)$/i.exec(st.code ?? "");
    if (m) return { failure: { code: m[1]!, message: st.message ?? "" } };
  }
  return {};
}

/** Power and provisioning state of an instance view, as a MachineState. */
export function machineState(statuses: Array<{ code?: string }> | undefined, provisioningState?: string): MachineState {
  const codes = (statuses ?? []).map((s) => (s.code ?? "").toLowerCase());
  const power = codes.find((c) => c.startsWith("powerstate/"))?.slice("powerstate/".length);
  const prov = (codes.find((c) => c.startsWith("provisioningstate/"))?.slice("provisioningstate/".length) ?? provisioningState ?? "").toLowerCase();
  if (prov === "deleting") return "shutting-down";
  switch (power) {
    case "running":
      return "running";
    case "starting":
      return "pending";
    case "stopping":
    case "deallocating":
      return "stopping";
    case "stopped":
    case "deallocated":
      return "stopped";
    default:
      break;
  }
  if (prov === "creating" || prov === "updating" || prov === "") return "pending";
  if (prov === "failed") return "unknown";
  return "unknown";
}

/**
 * Creates the Run's VM, or returns the one it has. The VM's name comes from the Run UID, so a
 * repeated PUT can only ever address the same VM. `hints.firstAttempt` (no launch of this Run was
 * tried before) skips the look-up of an earlier attempt's VM.
 */
export async function launchRun(c: AzureClients, ctx: EnvContext, run: Run, hints?: LaunchHints): Promise<RunDescription> {
  const ce = ctx.ce;
  const uid = run.metadata.uid;
  if (!uid) throw CloudError.terminal("InvalidRun", "the Run has no UID yet");
  const s = envStatus(ce);
  const rg = runRg(ce);
  const name = vmName(uid);
  const so = ctx.signal ? { abortSignal: ctx.signal } : {};
  // With its instance view: a failed VM's failure code says whether Azure could not place it.
  const existing = hints?.firstAttempt ? undefined : await azGet(c, "launch", "Microsoft.Compute/virtualMachines/read", () => c.compute.virtualMachines.get(rg, name, { ...so, expand: "instanceView" }));
  if (existing) {
    if (existing.tags?.[TAG_RUN_UID] !== uid) throw CloudError.terminal("ForeignVirtualMachine", `VM ${name} in ${rg} exists but is not this Run's`);
    const prov = (existing.provisioningState ?? "").toLowerCase();
    const id = existing.id ?? vmResourceId(c, rg, name);
    const known = hints?.capacityReason;
    const reason = known && isCapacityCode(known) ? known : "AllocationFailed";
    // The refusal the Run waits for (not a new one): its VM is still there.
    const waited = known !== undefined;
    if (prov === "deleting") {
      // The VM of an earlier attempt that Azure could not place is still being deleted: keep
      // waiting. Known whatever the hint: a VM being deleted is no new attempt's (Azure refuses a
      // PUT on it), and a Run with no refusal counted yet counts this one anyway.
      throw CloudError.capacity(reason, `the VM ${name} of an earlier attempt that Azure could not allocate is still being deleted`, undefined, id, true);
    }
    const failure = provisioningFailure(existing.instanceView?.statuses).failure;
    if (prov === "failed" && failure && isCapacityCode(failure.code)) {
      // That VM is still there: its deletion when the Run began to wait did not go through. Sent
      // now; the Run waits again (with the reason Azure gave that VM), and its next attempt makes
      // the VM anew. A delete that fails now is sent at the attempt after.
      const sent = await deleteVms(c, rg, [name], so).then(() => undefined, (e: unknown) => {
        // An abort, a bug, a refusal for good (say, no delete permission): not a wait.
        if (!(e instanceof CloudError) || e.kind === "Terminal") throw e;
        return e.message;
      });
      throw CloudError.capacity(failure.code, sent === undefined
        ? `the VM ${name} of an earlier attempt that Azure could not allocate is being deleted`
        : `the VM ${name} of an earlier attempt that Azure could not allocate could not be deleted yet (${sent}); tried again at the next attempt`, undefined, id, waited);
    }
    return { instanceId: id, state: machineState(existing.instanceView?.statuses, existing.provisioningState), log: logLocation(ce, run), instance: { id } };
  }
  const identityId = need(s, "identityId");
  const { userData } = renderAzureLaunch(ce, run, {
    identityClientId: need(s, "identityClientId"),
    storageAccount: need(s, "storageAccount"),
    blobEndpoint: blobEndpointFor(c, need(s, "storageAccount")),
    dceEndpoint: need(s, "dceEndpoint"),
    dcrImmutableId: need(s, "dcrImmutableId"),
    ...(process.env.VMFORGE_AZURE_VM_IMDS_ENDPOINT ? { imdsEndpoint: process.env.VMFORGE_AZURE_VM_IMDS_ENDPOINT } : {}),
    ...(ctx.platformToken !== undefined ? { platformToken: ctx.platformToken } : {}),
  });
  const spot = run.spec.overrides?.spot === true;
  const size = run.spec.overrides?.instanceType ?? ce.spec.azure?.vmSize ?? DEFAULT_AZURE_VM_SIZE;
  const tags = runTags(ceId(ce), run, ce.spec.azure?.tags);
  const body = {
    location: ce.spec.azure?.location ?? "",
    tags,
    identity: { type: "UserAssigned" as const, userAssignedIdentities: { [identityId]: {} } },
    hardwareProfile: { vmSize: size },
    storageProfile: {
      imageReference: azureImageReference(ce.spec.azure?.image),
      // Azure copies no tags to the OS disk (the VM's PUT has no field for them): its name, derived
      // from the Run UID, is what the orphan sweep finds it by.
      osDisk: { name: osDiskName(uid), createOption: "FromImage", deleteOption: "Delete", diskSizeGB: run.spec.overrides?.bootDiskSizeGiB ?? DEFAULT_OS_DISK_GIB, managedDisk: { storageAccountType: "StandardSSD_LRS" } },
    },
    osProfile: {
      computerName: name,
      adminUsername: "vmforge",
      // What cloud-init runs: a bootstrap that reads the launcher from userData (see launcher.ts).
      customData: Buffer.from(renderAzureBootstrap(process.env.VMFORGE_AZURE_VM_IMDS_ENDPOINT || undefined), "utf8").toString("base64"),
      linuxConfiguration: { disablePasswordAuthentication: true, ssh: { publicKeys: [{ path: "/home/vmforge/.ssh/authorized_keys", keyData: throwawaySshKey() }] } },
    },
    networkProfile: {
      networkApiVersion: "2022-11-01",
      networkInterfaceConfigurations: [{
        name: `${name}-nic`,
        // Azure does not copy the VM's tags to what its configurations create; these tags do.
        tags,
        primary: true,
        deleteOption: "Delete",
        ipConfigurations: [{
          name: "ipconfig",
          subnet: { id: need(s, "subnetId") },
          publicIPAddressConfiguration: { name: `${name}-pip`, tags, deleteOption: "Delete", sku: { name: "Standard", tier: "Regional" }, publicIPAllocationMethod: "Static" },
        }],
      }],
    },
    userData: userData.toString("base64"),
    ...(spot ? { priority: "Spot", evictionPolicy: "Delete", billingProfile: { maxPrice: -1 } } : {}),
  };
  // Only the PUT is awaited; the VM's creation is followed by the poll like any other state.
  await azCall(c, "launch", "Microsoft.Compute/virtualMachines/write", () =>
    c.compute.virtualMachines.createOrUpdate(rg, name, body as Parameters<typeof c.compute.virtualMachines.createOrUpdate>[2], { ...c.lro, ...so }).submitted());
  const id = vmResourceId(c, rg, name);
  ctx.logger.info({ vm: id, size, spot }, "VM create submitted");
  return { instanceId: id, state: "pending", launchedAt: new Date().toISOString(), log: logLocation(ce, run), instance: { id, type: size } };
}

/**
 * Reads the uploaded exit status, when it is there (needs blob read on the work directory): the
 * exit code, and the set-up step that failed before the pipeline started (`bootstrap-failed=`),
 * which goes on the description as on AWS (the reconciler makes it a BootstrapFailed reason).
 */
async function uploadedExitCode(c: AzureClients, ce: ComputeEnvironment, run: Run, signal?: AbortSignal, d?: RunDescription): Promise<{ code?: number; readable: boolean }> {
  const account = envStatus(ce).storageAccount ?? ce.spec.azure?.storageAccount;
  if (!account) return { readable: false };
  const art = azureArtifactsPath(ce, run);
  try {
    const text = await azCall(c, "logs", "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read", () =>
      c.blobs.read(account, art.container, `${art.path}/exit-status`, signal));
    const outcome = text === undefined ? undefined : parseExitStatus(text);
    if (outcome?.bootstrapStep && d) d.bootstrapStep = outcome.bootstrapStep;
    return { ...(outcome?.code !== undefined ? { code: outcome.code } : {}), readable: true };
  } catch {
    // Unreadable (no blob read permission, storage down): the Log Analytics exit line remains.
    return { readable: false };
  }
}

/** A VM as the subscription's status-only list shows it. */
export interface ListedVm {
  id: string;
  state: MachineState;
  failure?: { code: string; message: string };
}

/**
 * The run-time status of every VM of the subscription the caller may read, in ONE list call (all
 * its pages: the SDK follows nextLink), keyed by the lower-cased VM resource ID. Azure's status of
 * many VMs in one call is the subscription list with statusOnly=true: the resource-group list has
 * no statusOnly, and refuses $expand=instanceView without a $filter on a scale set. statusOnly
 * answers carry no tags, so VMs are matched by their ID (deterministic from the Run UID). Nothing
 * is kept: each describe lists afresh.
 */
export async function listVmStates(c: AzureClients, signal?: AbortSignal): Promise<Map<string, ListedVm>> {
  const found = new Map<string, ListedVm>();
  try {
    await azCall(c, "launch", "Microsoft.Compute/virtualMachines/read", async () => {
      for await (const vm of c.compute.virtualMachines.listAll({ statusOnly: "true", ...(signal ? { abortSignal: signal } : {}) })) {
        if (!vm.id) continue;
        const statuses = vm.instanceView?.statuses;
        found.set(vm.id.toLowerCase(), { id: vm.id, state: machineState(statuses, vm.provisioningState), ...provisioningFailure(statuses) });
      }
    });
  } catch (e) {
    if (e instanceof CloudError && e.kind === "NotFound") {
      // Nothing to list: so are its VMs.
    } else throw e;
  }
  return found;
}

/**
 * All given Runs with ONE list call of the subscription (listVmStates), whatever CEs they belong
 * to (`ctx.runCe`; the run tracker batches every CE of a subscription that shares credentials),
 * then each CE's Runs on their own: exit status, at most ONE Log Analytics query per CE for the
 * launcher's lines (its own stream only) of the Runs that need them, deletions.
 * - a Run whose VM runs but whose launcher has not been seen saying the pipeline started
 *   (`VMFORGE_PIPELINE_STARTED`): until the line is queryable the Run is still being set up;
 * - a Running Run whose VM still runs, every RUNNING_EXIT_PROBE_MS: its exit line (a VM whose OS
 *   shutdown failed keeps running);
 * - a Run whose VM stopped or is gone without an uploaded exit status: its exit line.
 * At most the watch's queryCap Runs are named in the query, the least recently asked first. A Run
 * waiting for capacity (Pending) has nothing to read, nor has a Run being
 * cancelled whose VM runs (its outcome is Cancelled).
 * A VM found stopped is deleted at once (it keeps costing). Without an outcome yet, its Run waits
 * (outcomeUnknown; outcomeDue while nothing refused the read), also while the VM is listed as being
 * deleted, up to the watch's grace window for the exit line, which Log Analytics may make
 * queryable only after the VM was seen stopped, then ends without one (MachineStopped); at once
 * when the CE has no Log Analytics workspace. A VM Azure accepted and could not place is reported
 * (launchFailure) at every look and left for its Run's reconcile to delete.
 */
export async function describeRuns(c: AzureClients, ctx: EnvContext, runs: Run[], watch: AzureRunWatch = new AzureRunWatch()): Promise<Map<string, RunDescription | undefined>> {
  const out = new Map<string, RunDescription | undefined>();
  if (runs.length === 0) return out;
  watch.prune();
  const vms = await listVmStates(c, ctx.signal);
  const byCe = new Map<string, { ce: ComputeEnvironment; runs: Run[] }>();
  for (const run of runs) {
    const ce = ctx.runCe?.(run) ?? ctx.ce;
    const key = ce.metadata.uid ?? `${ce.metadata.namespace}/${ce.metadata.name}`;
    const g = byCe.get(key) ?? { ce, runs: [] };
    byCe.set(key, g);
    g.runs.push(run);
  }
  await settleAll([...byCe.values()].map((g) => describeCeRuns(c, { ...ctx, ce: g.ce }, g.runs, vms, out, watch)));
  return out;
}

function beingCancelled(run: Run, ce: ComputeEnvironment): boolean {
  return run.spec.cancel === true || !!run.metadata.deletionTimestamp || !!ce.metadata.deletionTimestamp;
}

/** The Runs of one CE (ctx.ce), from the subscription's VM list, grouped by resource group. */
async function describeCeRuns(c: AzureClients, ctx: EnvContext, runs: Run[], vms: Map<string, ListedVm>, out: Map<string, RunDescription | undefined>, watch: AzureRunWatch): Promise<void> {
  const byRg = new Map<string, Run[]>();
  const defaultRg = runRg(ctx.ce);
  for (const run of runs) {
    const recorded = run.status?.instance?.id ? parseResourceId(run.status.instance.id)?.resourceGroup : undefined;
    const rg = recorded ?? defaultRg;
    const list = byRg.get(rg);
    if (list) list.push(run);
    else byRg.set(rg, [run]);
  }
  const so = ctx.signal ? { abortSignal: ctx.signal } : {};
  const workspace = envStatus(ctx.ce).workspaceCustomerId;
  // Runs whose launcher lines are asked for, from every resource group of the CE, in one query (below).
  const needLines: { run: Run; d: RunDescription; settle: (lines: LauncherLines | undefined, read: LinesRead) => void }[] = [];
  /**
   * The outcome of a Run whose machine ended: the uploaded exit status now, else the exit line
   * (and a failed set-up step before it) from this poll's one query; `noLine` when neither is there.
   */
  const outcomeOfEnded = async (run: Run, d: RunDescription, noLine: (read: LinesRead) => void): Promise<void> => {
    const uid = run.metadata.uid ?? "";
    const uploaded = await uploadedExitCode(c, ctx.ce, run, ctx.signal, d);
    if (uploaded.code !== undefined) {
      d.exitCode = uploaded.code;
      watch.forget(uid);
      return;
    }
    if (!workspace) {
      // No Log Analytics workspace to hold an exit line: the exit status in the work directory
      // was the only outcome there could be (unless it could not be read: then it is asked again).
      noLine({ lines: new Map(), ok: false, noWorkspace: { statusUnreadable: !uploaded.readable } });
      return;
    }
    needLines.push({ run, d, settle: (lines, read) => {
      if (lines?.exitCode !== undefined) {
        d.exitCode = lines.exitCode;
        if (lines.bootstrapStep && !lines.started) d.bootstrapStep = lines.bootstrapStep;
        watch.forget(uid);
      } else noLine(read);
    } });
  };
  /** Per resource group: the VMs to delete, and how to report each as it was seen should its deletion fail. */
  const toDelete = new Map<string, { names: string[]; asSeen: Map<string, () => void> }>();
  await settleAll([...byRg.entries()].map(async ([rg, list]) => {
    const stopped: string[] = [];
    const asSeen = new Map<string, () => void>();
    toDelete.set(rg, { names: stopped, asSeen });
    await settleAll(list.map(async (run) => {
      const uid = run.metadata.uid ?? "";
      const name = vmName(uid);
      const vm = vms.get(vmResourceId(c, rg, name).toLowerCase());
      const log = logLocation(ctx.ce, run);
      const over = isTerminal(run);
      if (over) watch.forget(uid);
      else if (run.status?.phase === "Running") watch.forgetStart(uid);
      if (!vm) {
        // Gone (deleted, evicted, or never created): the outcome, if any, is in the work directory
        // or in the log.
        if (!run.status?.instance?.id) {
          out.set(uid, undefined);
          return;
        }
        const d: RunDescription = { instanceId: run.status.instance.id, state: "terminated", unlisted: true, log };
        out.set(uid, d);
        if (over) return; // its outcome is recorded; only its machine's end was awaited
        // Pending again, waiting for capacity: its machine was one Azure could not place, which ran
        // nothing, so there is no outcome to read (until a launch is accepted).
        if (run.status.phase === "Pending") return;
        await outcomeOfEnded(run, d, (read) => {
          if (run.spec.overrides?.spot && !watch.seenStopped(uid)) {
            // With eviction policy Delete an evicted Spot VM simply disappears; no exit status means the pipeline never ended.
            d.stateReason = "Azure evicted the Spot VM before the pipeline ended";
            d.interrupted = true;
            d.interruptionReason = "SpotEvicted";
            watch.forget(uid);
          } else awaitExitLine(d, watch, uid, false, read);
        });
        return;
      }
      const d: RunDescription = { instanceId: vm.id, state: vm.state, log, instance: { id: vm.id } };
      out.set(uid, d);
      // Running again (a deletion that failed, a VM started by hand): an ended VM's window closes.
      if (vm.state === "running") watch.forgetEnded(uid);
      if (vm.failure && isCapacityCode(vm.failure.code)) {
        // Azure accepted the PUT but could not place the VM (AllocationFailed comes this way). Said
        // by every look while the failed VM is there: the Run's reconcile deletes it once its
        // capacity wait is recorded (a look that deleted it would say it once, and a reconcile
        // after the next look, or after a restart, would take the VM's absence for its end). Then
        // it is launched again (same name).
        d.launchFailure = { reason: vm.failure.code, message: `Azure could not allocate VM ${name}: ${vm.failure.message}` };
        return;
      }
      if (vm.state === "shutting-down" && !over && run.status?.phase !== "Pending" && !beingCancelled(run, ctx.ce)) {
        // Being deleted (Resource Manager lists a VM as Deleting for tens of seconds and more): by
        // this operator once it was seen stopped, or by someone else. Its Run ends once it is gone,
        // with the outcome read then; meanwhile that outcome is awaited as for a VM gone, within the
        // same grace window (opened now if no look saw the VM end), and the Run's timeout waits for
        // it. (As for a VM gone, a deletion no look saw begin may be the timeout's own, sent by an
        // operator that stopped before it could say so: such a Run ends MachineTerminated after the
        // window, not Timeout.)
        d.outcomeUnknown = true;
        if (!watch.endedWithoutOutcome(uid, false).over) d.outcomeDue = true;
        d.stateReason = `the VM is being deleted; its outcome is read once it is gone`;
        return;
      }
      if (vm.state === "stopped" || vm.state === "stopping") {
        // The OS shut down; a stopped VM still bills: it is deleted now, whatever its outcome.
        stopped.push(name);
        d.state = "shutting-down";
        asSeen.set(name, () => {
          // Not deleted: reported stopped (its Run's own reconcile deletes it and says what blocks
          // it). An outcome still awaited stays awaited: the Run waits for it as for a deleted VM.
          d.state = vm.state;
        });
        if (over) return;
        await outcomeOfEnded(run, d, (read) => awaitExitLine(d, watch, uid, true, read));
        return;
      }
      // Being cancelled (spec.cancel, the Run or its CE being deleted): its outcome is Cancelled
      // whatever its VM says, so neither its start nor its exit line is worth a query (as on AWS).
      if (vm.state === "running" && beingCancelled(run, ctx.ce)) return;
      if (vm.state === "running" && !over && run.status?.phase !== "Running") {
        // Up, but its launcher has not been seen saying the pipeline started: ask the log.
        if (watch.hasStarted(uid)) {
          d.pipelineStarted = true;
          return;
        }
        if (!workspace) {
          // Nothing can say when the pipeline starts without a workspace: a running VM runs it.
          d.pipelineStarted = true;
          return;
        }
        needLines.push({ run, d, settle: (lines, read) => {
          if (read.error) d.readError = read.error;
          if (lines?.started) {
            d.pipelineStarted = true;
            watch.markStarted(uid);
          }
          // The pipeline ended, yet the VM still runs (its shutdown failed): the outcome is known.
          if (lines?.exitCode !== undefined) {
            d.exitCode = lines.exitCode;
            if (lines.bootstrapStep && !lines.started) d.bootstrapStep = lines.bootstrapStep;
          }
        } });
        return;
      }
      if (vm.state === "running" && !over && workspace && watch.probeDue(uid, run.status?.startTime ?? run.status?.launchedAt)) {
        // Running, and its VM still runs: a VM whose OS shutdown failed after the pipeline ended
        // keeps running, so its exit line is asked for now and then (RUNNING_EXIT_PROBE_MS).
        needLines.push({ run, d, settle: (lines, read) => {
          if (read.error) d.readError = read.error;
          if (lines?.exitCode !== undefined) d.exitCode = lines.exitCode;
        } });
      }
    }));
  }));
  if (needLines.length > 0) {
    // At most watch.queryCap Runs in the query, the least recently asked first; the others wait
    // for a later poll (as if their lines were not queryable yet: nothing ends on that).
    const chosen = watch.pickForQuery(needLines.map((n) => n.run.metadata.uid ?? ""));
    const read = await launcherLinesFromLog(c, ctx, needLines.filter((n) => chosen.has(n.run.metadata.uid ?? "")).map((n) => n.run));
    const notAsked: LinesRead = { lines: new Map(), ok: false, ...(read.error ? { error: read.error } : {}) };
    for (const n of needLines) {
      const uid = n.run.metadata.uid ?? "";
      n.settle(chosen.has(uid) ? read.lines.get(uid) : undefined, chosen.has(uid) ? read : notAsked);
      // Named in a query that answered or was refused: whether this Run's lines can be read is known now.
      if (chosen.has(uid) && (read.ok || read.error)) n.d.readAttempted = true;
    }
  }
  await settleAll([...toDelete.entries()].map(async ([rg, { names, asSeen }]) => {
    // A deletion refused or failed here must not fail the describe of every CE of the
    // subscription: such a VM is reported as seen (a stopped one with its exit code or its awaited
    // outcome, so its Run ends or waits, and its own reconcile deletes the VM and says what blocks
    // it) and tried again next poll.
    const sent = await Promise.allSettled(names.map((name) => deleteVms(c, rg, [name], so)));
    sent.forEach((r, i) => {
      if (r.status === "fulfilled") return;
      const name = names[i]!;
      ctx.logger.warn({ vm: name, resourceGroup: rg, err: r.reason instanceof Error ? r.reason.message : String(r.reason) }, "could not delete a VM found stopped; reported as seen");
      asSeen.get(name)?.();
    });
  }));
}

/** The outcome of the launcher-lines query of one poll. */
interface LinesRead {
  lines: Map<string, LauncherLines>;
  /** The query answered (a Run missing from it has no such line queryable yet). */
  ok: boolean;
  /** The read is refused in a way a retry will not fix (e.g. workspaces/query/read missing). */
  error?: { reason: string; message: string };
  /** The CE has no Log Analytics workspace: no exit line can ever be read (and whether its exit status could not be read either). */
  noWorkspace?: { statusUnreadable: boolean };
}

/**
 * A Run whose VM ended (stopped, or gone) without an exit status or exit line so far: it waits for
 * the exit line until the grace window is over, and after it only once a query answered without
 * the line (a failed or refused read never ends a Run without an outcome).
 */
function awaitExitLine(d: RunDescription, watch: AzureRunWatch, uid: string, stopped: boolean, read: LinesRead): void {
  const w = watch.endedWithoutOutcome(uid, stopped);
  const seen = w.stopped ? "was stopped" : "is gone";
  if (read.noWorkspace) {
    if (read.noWorkspace.statusUnreadable) {
      d.outcomeUnknown = true;
      d.stateReason = `the VM ${seen}; its exit status in the work directory cannot be read now, and the ComputeEnvironment has no Log Analytics workspace to read an exit line from`;
      return;
    }
    // Nothing more can come: the Run ends now, without an outcome, rather than at its timeout.
    watch.forget(uid);
    d.stateReason = `the VM ${seen} with no exit status uploaded to the work directory, and the ComputeEnvironment has no Log Analytics workspace to read an exit line from`;
    if (w.stopped) d.noOutcomeReason = "MachineStopped";
    return;
  }
  if (read.error) d.readError = read.error;
  if (w.over && read.ok) {
    d.stateReason = `the VM ${seen} with no exit status uploaded, and no exit line reached Log Analytics within ${Math.round(watch.graceMs / 1000)} s`;
    if (w.stopped) d.noOutcomeReason = "MachineStopped";
    return;
  }
  d.outcomeUnknown = true;
  // Within the window, and no read refused: the line may be on its way (a read that failed for now
  // is asked again at the next look; the window bounds the wait either way).
  if (!read.error && !w.over) d.outcomeDue = true;
  d.stateReason = read.error
    ? `the VM ${seen} with no exit status uploaded, and its exit line cannot be read from Log Analytics`
    : `the VM ${seen} with no exit status uploaded; waiting up to ${Math.round(watch.graceMs / 1000)} s (from ${new Date(w.since).toISOString()}) for its exit line to reach Log Analytics`;
}

/**
 * The launcher's start and exit lines of some Runs, from Log Analytics in ONE query. Without a
 * workspace, or when the read fails, none (`ok` false; a refused read also says why): one Run's
 * lines can never stop the other Runs' observation.
 */
async function launcherLinesFromLog(c: AzureClients, ctx: EnvContext, runs: Run[]): Promise<LinesRead> {
  const workspace = envStatus(ctx.ce).workspaceCustomerId;
  const safe = runs.filter((r) => /^[0-9a-fA-F-]{1,64}$/.test(r.metadata.uid ?? ""));
  if (!workspace || safe.length === 0) return { lines: new Map(), ok: false };
  const since = Math.min(...safe.map((r) => Date.parse(r.status?.launchedAt ?? r.metadata.creationTimestamp ?? "") || Date.now() - 7 * 86_400_000));
  // Only the launcher's own stream: the pipeline's output may hold any text, a marker line too.
  const query = `${LOG_TABLE} | where RunUid in (${[...new Set(safe.map((r) => `'${r.metadata.uid}'`))].join(", ")}) and Stream == '${LAUNCHER_STREAM}' and (Line startswith '${EXIT_MARKER}' or Line startswith '${PIPELINE_STARTED_MARKER}' or Line startswith '${BOOTSTRAP_MARKER}') | project RunUid, Seq, Line`;
  try {
    const res = await azCall(c, "logs", "Microsoft.OperationalInsights/workspaces/query/read", () =>
      c.logsQuery.queryWorkspace(workspace, query, { startTime: new Date(since - 60_000), endTime: new Date(Date.now() + 60_000) }, ctx.signal ? { abortSignal: ctx.signal } : {}));
    // A partial answer may lack some rows: what it has counts, but it does not prove a line absent.
    const table = "tables" in res ? res.tables[0] : res.partialTables[0];
    return { lines: launcherLines(table?.rows ?? []), ok: "tables" in res };
  } catch (e) {
    ctx.logger.warn({ err: e instanceof Error ? e.message : String(e) }, "could not read the launchers' lines from Log Analytics; going on without them");
    if (e instanceof CloudError && e.kind === "Terminal") return { lines: new Map(), ok: false, error: { reason: e.reason, message: e.message } };
    if (e instanceof CloudError || !(e instanceof Error && e.name === "AbortError")) return { lines: new Map(), ok: false };
    throw e;
  }
}


async function deleteVms(c: AzureClients, rg: string, names: string[], so: { abortSignal?: AbortSignal }): Promise<void> {
  await settleAll(names.map((name) =>
    azDelete(c, "launch", "Microsoft.Compute/virtualMachines/delete", () =>
      c.compute.virtualMachines.delete(rg, name, { forceDeletion: true, ...c.lro, ...so }).submitted())));
}

/** Deletes the Run's VM (with its NIC, public IP and disk through deleteOption); none counts as done. */
export async function terminateRun(c: AzureClients, ctx: EnvContext, run: Run): Promise<void> {
  const uid = run.metadata.uid;
  if (!uid) return;
  const recorded = run.status?.instance?.id ? parseResourceId(run.status.instance.id)?.resourceGroup : undefined;
  await deleteVms(c, recorded ?? runRg(ctx.ce), [vmName(uid)], ctx.signal ? { abortSignal: ctx.signal } : {});
}

/**
 * Whether a GET finds the Run's VM failed for want of capacity now: a list may still show a VM
 * deleted a moment ago, over the VM the Run's next attempt made under its name.
 */
export async function confirmUnplaced(c: AzureClients, ctx: EnvContext, run: Run): Promise<boolean> {
  const uid = run.metadata.uid;
  if (!uid) return false;
  const recorded = run.status?.instance?.id ? parseResourceId(run.status.instance.id)?.resourceGroup : undefined;
  const so = ctx.signal ? { abortSignal: ctx.signal } : {};
  const vm = await azGet(c, "launch", "Microsoft.Compute/virtualMachines/read", () => c.compute.virtualMachines.get(recorded ?? runRg(ctx.ce), vmName(uid), { ...so, expand: "instanceView" }));
  if (!vm || vm.tags?.[TAG_RUN_UID] !== uid || (vm.provisioningState ?? "").toLowerCase() !== "failed") return false;
  const failure = provisioningFailure(vm.instanceView?.statuses).failure;
  return failure !== undefined && isCapacityCode(failure.code);
}

/** How many VM deletes terminateRuns has in flight at once (ARM has no call that deletes several). */
const DELETES_AT_ONCE = 8;

/**
 * terminateRun for several Runs: ARM deletes one VM per call, so this only bounds how many are in
 * flight. Resolves to the Runs whose delete failed, by UID, with why.
 */
export async function terminateRuns(c: AzureClients, ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
  const failed = new Map<string, unknown>();
  // A Run's failure is its own (never thrown), so every Run is tried; after an abort none is sent.
  await forEachLimited(runs, DELETES_AT_ONCE, async (run) => {
    try {
      if (ctx.signal?.aborted) throw ctx.signal.reason;
      await terminateRun(c, ctx, run);
    } catch (e) {
      failed.set(run.metadata.uid ?? "", e);
    }
  });
  return failed;
}

/** How long a gap in a Run's line sequence may stay open before the reader gives up on its lines (Log Analytics' ingestion latency is minutes at worst). */
export const LOG_GAP_GIVE_UP_MS = 10 * 60_000;
/** Slack on the VM clock when bounding a query by the time of the last line read. */
const LOG_CLOCK_SLACK_MS = 5 * 60_000;

/**
 * The Run's log from Log Analytics. The launcher numbers every line it ships (both streams) 1, 2,
 * 3, ... (`Seq`), and Log Analytics makes batches queryable in no particular order (a later batch
 * can show before an earlier one) and may hold a batch twice (a retried upload). So the cursor is
 * the last Seq of an unbroken run from 1 (`s:<seq>|<TimeGenerated of that line>`): a read returns
 * the lines that extend it, each Seq once, and stops at a gap until the missing lines show up.
 * A gap still open LOG_GAP_GIVE_UP_MS after the line following it was shipped is said in one line
 * and passed over (those lines never reached Log Analytics). No line is lost or doubled.
 */
export async function readRunLog(c: AzureClients, ctx: EnvContext, run: Run, from?: string): Promise<RunLogChunk> {
  const s = envStatus(ctx.ce);
  const workspace = s.workspaceCustomerId;
  if (!workspace) return { lines: [] };
  const uid = (run.metadata.uid ?? "").replace(/'/g, "");
  let afterSeq = 0;
  let since = Date.parse(run.metadata.creationTimestamp ?? "") || Date.now() - 7 * 24 * 3_600_000;
  if (from) {
    const m = /^s:(\d+)\|(.*)$/.exec(from);
    if (m) {
      afterSeq = Number(m[1]);
      const t = Date.parse(m[2] ?? "");
      if (Number.isFinite(t)) since = t;
    }
  }
  const start = new Date(since - LOG_CLOCK_SLACK_MS);
  const query = `${LOG_TABLE} | where RunUid == '${uid}' and Seq > ${afterSeq} | project TimeGenerated, Seq, Stream, Line | order by Seq asc | take 5000`;
  const res = await azCall(c, "logs", "Microsoft.OperationalInsights/workspaces/query/read", () =>
    c.logsQuery.queryWorkspace(workspace, query, { startTime: start, endTime: new Date(Date.now() + 60_000) }, ctx.signal ? { abortSignal: ctx.signal } : {}));
  const table = "tables" in res ? res.tables[0] : res.partialTables[0];
  const lines: string[] = [];
  let seq = afterSeq;
  let time: string | undefined;
  for (const row of table?.rows ?? []) {
    const n = Number(row[1]);
    if (!Number.isInteger(n) || n <= seq) continue; // a line held twice, or one before the cursor
    const t = new Date(row[0] as string | Date).toISOString();
    if (n > seq + 1) {
      // A gap: its lines may still be on their way. Wait, unless they are long overdue.
      if (Date.now() - Date.parse(t) < LOG_GAP_GIVE_UP_MS) break;
      lines.push(`[vmforge: log lines ${seq + 1}-${n - 1} never reached Log Analytics]`);
    }
    lines.push(String(row[3] ?? ""));
    seq = n;
    time = t;
  }
  const chunk: RunLogChunk = { lines };
  if (time !== undefined) chunk.next = `s:${seq}|${time}`;
  else if (from !== undefined) chunk.next = from;
  return chunk;
}

/** A loose OS disk left to the resource group's deletion (a disk permission is missing): not a refusal. */
const SKIPPED = Symbol("skipped");

/**
 * What a Run whose UID is not live left in the CE's resource group is deleted: VMs and network
 * interfaces and public IPs (tagged with the Run UID: the VM's tags, and the tags its network
 * configurations give the NIC and IP), and OS disks (untaggable through the VM's PUT, so found by
 * their name derived from the Run UID). A NIC, IP or disk still attached is left to its VM
 * (deleteOption); a public IP held by a loose NIC goes right after that NIC. Returns their
 * names, and those of VMs still being deleted, so a CE being deleted waits until none is left.
 * Every delete is tried; when any is refused, a refusal is thrown after the rest are done (one
 * that may pass, such as a busy VM or throttling, before one for good).
 */
export async function sweepOrphans(c: AzureClients, ctx: EnvContext, live: Set<string>): Promise<string[]> {
  const rg = runRg(ctx.ce);
  const so = ctx.signal ? { abortSignal: ctx.signal } : {};
  const orphanVms: string[] = [];
  const deleting: string[] = [];
  const orphanNics: string[] = [];
  const orphanIps: string[] = [];
  /** NIC name (lower case) -> orphan-tagged public IPs it holds. */
  const heldIps = new Map<string, string[]>();
  const orphanDisks: string[] = [];
  const liveDisks = new Set([...live].map((u) => osDiskName(u).toLowerCase()));
  const notFoundIsEmpty = (e: unknown): void => {
    if (!(e instanceof CloudError && e.kind === "NotFound")) throw e;
  };
  const orphanTag = (tags: Record<string, string> | undefined): boolean => {
    const uid = tags?.[TAG_RUN_UID];
    return !!uid && !live.has(uid);
  };
  // The disk permissions are an addition to the product's role (see policy.ts): without them the
  // loose OS disks are skipped (the resource group's deletion removes them), not the whole sweep.
  const withoutDiskPermission = (e: unknown): void => {
    if (!(e instanceof CloudError && e.reason === "AccessDenied")) throw e;
    ctx.logger.warn({ ce: `${ctx.ce.metadata.namespace}/${ctx.ce.metadata.name}`, err: e.message }, "orphan sweep: loose OS disks skipped (a disk permission is missing)");
  };
  await settleAll([
    azCall(c, "launch", "Microsoft.Compute/virtualMachines/read", async () => {
      for await (const vm of c.compute.virtualMachines.list(rg, so)) {
        if (!orphanTag(vm.tags) || !vm.name) continue;
        // Already being deleted: reported (the caller waits for it), not deleted again.
        if ((vm.provisioningState ?? "").toLowerCase() === "deleting") deleting.push(vm.name);
        else orphanVms.push(vm.name);
      }
    }).catch(notFoundIsEmpty),
    azCall(c, "launch", "Microsoft.Network/networkInterfaces/read", async () => {
      for await (const nic of c.network.networkInterfaces.list(rg, so)) {
        if (orphanTag(nic.tags) && nic.name && !nic.virtualMachine) orphanNics.push(nic.name);
      }
    }).catch(notFoundIsEmpty),
    azCall(c, "launch", "Microsoft.Network/publicIPAddresses/read", async () => {
      for await (const ip of c.network.publicIPAddresses.list(rg, so)) {
        if (!orphanTag(ip.tags) || !ip.name) continue;
        if (!ip.ipConfiguration) {
          orphanIps.push(ip.name);
          continue;
        }
        // Held by a NIC: deleted right after that NIC, when the NIC is an orphan deleted now.
        const nic = /\/networkInterfaces\/([^/]+)\/ipConfigurations\//i.exec(ip.ipConfiguration.id ?? "")?.[1]?.toLowerCase();
        if (nic) heldIps.set(nic, [...(heldIps.get(nic) ?? []), ip.name]);
      }
    }).catch(notFoundIsEmpty),
    azCall(c, "launch", "Microsoft.Compute/disks/read", async () => {
      for await (const disk of c.compute.disks.listByResourceGroup(rg, so)) {
        const name = disk.name ?? "";
        if (!isOsDiskName(name) || liveDisks.has(name.toLowerCase()) || disk.managedBy) continue;
        orphanDisks.push(name);
      }
    }).catch((e: unknown) => {
      orphanDisks.length = 0;
      if (e instanceof CloudError && e.kind === "NotFound") return;
      withoutDiskPermission(e);
    }),
  ]);
  // Every delete is tried, even when one is refused (a VM Azure calls busy, a throttled call):
  // then the first refusal is thrown, and the caller tries the sweep again soon.
  const gone: string[] = [...deleting];
  const refusals: unknown[] = [];
  const attempt = async (name: string, del: () => Promise<unknown>): Promise<void> => {
    try {
      await del();
      gone.push(name);
    } catch (e) {
      refusals.push(e);
    }
  };
  await settleAll(orphanVms.map((n) => attempt(n, () => deleteVms(c, rg, [n], so))));
  const deleteIp = (n: string): Promise<void> => attempt(n, () =>
    azDelete(c, "launch", "Microsoft.Network/publicIPAddresses/delete", () => c.network.publicIPAddresses.delete(rg, n, { ...c.lro, ...so })));
  await settleAll([
    ...orphanNics.map(async (n) => {
      let deleted = false;
      await attempt(n, async () => {
        await azDelete(c, "launch", "Microsoft.Network/networkInterfaces/delete", () => c.network.networkInterfaces.delete(rg, n, { ...c.lro, ...so }));
        deleted = true;
      });
      // The NIC's deletion (awaited to its end) freed its public IPs.
      if (deleted) await settleAll((heldIps.get(n.toLowerCase()) ?? []).map(deleteIp));
    }),
    ...orphanIps.map(deleteIp),
    ...orphanDisks.map((n) => attempt(n, () =>
      azDelete(c, "launch", "Microsoft.Compute/disks/delete", () => c.compute.disks.delete(rg, n, { ...c.lro, ...so }).submitted()).catch((e: unknown) => {
        withoutDiskPermission(e);
        throw SKIPPED;
      }))),
  ]);
  const failed = refusals.filter((e) => e !== SKIPPED);
  if (failed.length > 0) {
    ctx.logger.warn({ ce: `${ctx.ce.metadata.namespace}/${ctx.ce.metadata.name}`, deleted: gone, refused: failed.length }, "orphan sweep: some deletes were refused");
    // A passing refusal first: the caller then tries again soon, and a refusal for good is met again then.
    throw failed.find((e) => !(e instanceof CloudError && e.kind === "Terminal")) ?? failed[0];
  }
  return gone;
}
