/**
 * Scenario "azure-burst" (issue 13, 1, the Azure half): N Runs applied at once over 4 Azure CEs,
 * the compiled operator at its defaults (4 workers, 64 Run workers, 15 s poll), the Azure emulator with its
 * default latencies (a VM's create finishes at its first poll).
 *
 * Floor: a bare Azure SDK client (@azure/arm-compute, as src/cloud/azure does) sending the same N
 * VM creates, each the body launchRun sends (inline NIC and public IP, the CE's identity and
 * subnet, the rendered launcher in userData, the bootstrap in customData), at concurrency 4, 16
 * and 64, in a resource group of its own deleted after each level; the fastest is kept. Like the
 * operator's launch, a create is done when Azure accepted the PUT (the VM's provisioning is
 * followed later). So the floor is what the emulator serves on this machine, and the ratio of the
 * operator's time-to-all-launched to the floor's is what the operator adds.
 *
 * Figures: created -> first status, -> the VM's PUT (from the emulator's request log), -> Running.
 * A Run the operator holds in Launching/SettingUp (its VM is up, the launcher has not said the
 * pipeline started) gets the launcher's VMFORGE_PIPELINE_STARTED through the Logs Ingestion API,
 * as its VM would ship it.
 */
import { randomUUID } from "node:crypto";
import { ComputeManagementClient } from "@azure/arm-compute";
import { ResourceManagementClient } from "@azure/arm-resources";
import { Reflector } from "../src/engine/reflector.js";
import { createLogger } from "../src/engine/logger.js";
import { RunResource } from "../src/api/types.js";
import type { ComputeEnvironment, Run } from "../src/api/types.js";
import { DEFAULT_AZURE_VM_SIZE } from "../src/api/constants.js";
import { renderAzureBootstrap, renderAzureUserData } from "../src/cloud/azure/launcher.js";
import { azureImageReference, runTags, ceId, vmName, osDiskName } from "../src/cloud/azure/names.js";
import { firstStatusDists, type RunAudit } from "./audit.js";
import { ARM_SCOPE, LOCATION, azureStatus, startAzureBench, type BenchCluster } from "./azure-setup.js";
import { kubeFloor, type KubeFloor } from "./kube-floor.js";
import { operatorSettings } from "./operator.js";
import { apiserverCounts, apiserverPerPoll, apiserverWindow, dist, fmtApiserver, promSum, fmtDist, fmtLoad, kib, load, operatorReads, operatorWindow, perPoll, poolDo, sec, type ApiserverCounts, type ApiserverWindow, type Dist, type Load } from "./stats.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const CES = ["az0", "az1", "az2", "az3"];

export interface AzureFloorLevel { concurrency: number; totalMs: number; latency: Dist; failed: number }

export interface AzureBurstResult {
  runs: number;
  floor: { levels: AzureFloorLevel[]; best: AzureFloorLevel };
  /** The same launches with the Run's own writes (bench/kube-floor.ts). */
  kubeFloor: KubeFloor;
  ratioToKubeFloor: number;
  createdAllMs: number;
  firstStatus: Dist;
  /** Created -> seen at all by the bench's watch: the kube-apiserver's watch delivery and the bench's own lag together. */
  seenByBench: Dist;
  /** Created -> first status as the kube-apiserver completed the two writes (its audit log; bench/audit.ts). */
  firstStatusServer: Dist;
  /** Of that, the status write's own time in the kube-apiserver (received -> completed). */
  statusWriteServer: Dist;
  /** Before it, not counted: the create's own time in the kube-apiserver (received -> completed). */
  createServer: Dist;
  vmPut: Dist;
  running: Dist;
  launched: number;
  allLaunchedMs: number;
  allRunning: boolean;
  allRunningMs?: number;
  ratioToFloor: number;
  startLinesShipped: number;
  vmPutsTotal: number;
  /** The last Run created -> its last VM PUT. */
  allLaunchedAfterLastCreateMs: number;
  /** The first create -> the first VM PUT. */
  firstLaunchMs: number;
  /** VMs PUT before the last Run was created (how far launches overlapped the creations). */
  launchedBeforeLastCreate: number;
  /** The operator's controllers until all Running: reconciles, mean duration, mean wait in the queue (seconds). */
  controllers: Record<string, { reconciles: number; meanS: number; meanQueuedS: number }>;
  /** The operator's own requests for Runs (by verb) and its reads past its caches (by why), until all Running. */
  operatorReads: ReturnType<typeof operatorReads>;
  /** kube-apiserver requests (all clients) from the first create until every Run's status named its VM. */
  apiserverUntilRecorded?: ApiserverWindow;
  /** Every request the emulator logged from the first create until all were Running (or the wait ended), by method and operation. */
  cloudCalls: Record<string, number>;
  operatorCpuS: number;
  rss: { rssMiB: number; peakMiB: number };
  load: Load;
  /** The N Runs left Running, after the burst: what each 15 s poll costs (absent when not all were Running). */
  steady?: AzureSteady;
}

export interface AzureSteady {
  polls: number;
  /** Every request the emulator logged in the window, per poll, by method and operation. */
  cloudCallsPerPoll: Record<string, number>;
  /** Their answers' bytes in KiB per poll, by method and operation (Log Analytics queries not counted). */
  answerKiBPerPoll: Record<string, number>;
  /** kube-apiserver requests per poll (all clients, WATCH excluded). */
  apiserverPerPoll: ApiserverWindow;
  /** The operator's own kube-apiserver requests and status writes in the window. */
  operatorRequests: Record<string, number>;
  statusWrites: Record<string, number>;
  /** The operator's reconciles per poll, by controller. */
  reconcilesPerPoll: Record<string, number>;
  operatorCpuSPerMin: number;
  rss: { rssMiB: number; peakMiB: number };
  load: Load;
}

/** The VM body of src/cloud/azure/runs.ts launchRun for a Run of `ce` (a fake Run of the given UID). */
function vmBody(ce: ComputeEnvironment, uid: string, sshKey: string): Record<string, unknown> {
  const s = azureStatus(ce);
  const run = { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: `floor-${uid.slice(0, 8)}`, namespace: ce.metadata.namespace, uid, creationTimestamp: new Date().toISOString() }, spec: { computeEnvironmentRef: { name: ce.metadata.name }, pipeline: { repository: "https://github.com/nextflow-io/hello" } } } as Run;
  const userData = renderAzureUserData(ce, run, {
    identityClientId: s.identityClientId ?? "",
    storageAccount: s.storageAccount ?? "benchwork",
    blobEndpoint: "https://benchwork.blob.core.windows.net",
    dceEndpoint: s.dceEndpoint ?? "",
    dcrImmutableId: s.dcrImmutableId ?? "",
  });
  const name = vmName(uid);
  const tags = runTags(ceId(ce), run, ce.spec.azure?.tags);
  return {
    location: LOCATION,
    tags,
    identity: { type: "UserAssigned", userAssignedIdentities: { [s.identityId ?? ""]: {} } },
    hardwareProfile: { vmSize: ce.spec.azure?.vmSize ?? DEFAULT_AZURE_VM_SIZE },
    storageProfile: {
      imageReference: azureImageReference(ce.spec.azure?.image),
      osDisk: { name: osDiskName(uid), createOption: "FromImage", deleteOption: "Delete", diskSizeGB: 50, managedDisk: { storageAccountType: "StandardSSD_LRS" } },
    },
    osProfile: {
      computerName: name,
      adminUsername: "vmforge",
      customData: Buffer.from(renderAzureBootstrap(), "utf8").toString("base64"),
      linuxConfiguration: { disablePasswordAuthentication: true, ssh: { publicKeys: [{ path: "/home/vmforge/.ssh/authorized_keys", keyData: sshKey }] } },
    },
    networkProfile: {
      networkApiVersion: "2022-11-01",
      networkInterfaceConfigurations: [{
        name: `${name}-nic`, tags, primary: true, deleteOption: "Delete",
        ipConfigurations: [{ name: "ipconfig", subnet: { id: s.subnetId ?? "" }, publicIPAddressConfiguration: { name: `${name}-pip`, tags, deleteOption: "Delete", sku: { name: "Standard", tier: "Regional" }, publicIPAllocationMethod: "Static" } }],
      }],
    },
    userData: Buffer.from(userData, "utf8").toString("base64"),
  };
}

const POLL_MS = 15_000;

export async function azureBurstScenario(o: BenchCluster & { runs: number; timeoutMs: number; steadyPolls: number; audit: RunAudit; auditKeepTo: string }): Promise<AzureBurstResult> {
  const { client, say } = o;
  const N = o.runs;
  const b = await startAzureBench(o, "azure-burst");
  try {
    const ces = await b.createCes(CES);
    const ce0 = ces.get("az0")!;
    say(`  4 Azure CEs Ready (operator pid ${b.op.pid}, ${operatorSettings()})`);

    // ------------------------------------------------------------ floor
    const cred = b.adminCredential;
    const opts = { endpoint: b.az.endpoint, credentials: { scopes: [ARM_SCOPE] } };
    const rm = new ResourceManagementClient(cred, b.info.subscriptionId, opts);
    const compute = new ComputeManagementClient(cred, b.info.subscriptionId, opts);
    const sshKey = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 bench-floor";
    const levels: AzureFloorLevel[] = [];
    for (const concurrency of [4, 16, 64]) {
      const rg = `bench-floor-${concurrency}`;
      await rm.resourceGroups.createOrUpdate(rg, { location: LOCATION });
      const bodies = Array.from({ length: N }, () => vmBody(ce0, randomUUID(), sshKey));
      const lat: number[] = [];
      let failed = 0;
      const t0 = Date.now();
      await poolDo(bodies, concurrency, async (body) => {
        const s = Date.now();
        try {
          await compute.virtualMachines.createOrUpdate(rg, (body.osProfile as { computerName: string }).computerName, body as unknown as Parameters<typeof compute.virtualMachines.createOrUpdate>[2]).submitted();
        } catch (e) {
          if (failed++ === 0) say(`  ! floor VM create failed: ${e instanceof Error ? e.message : String(e)}`);
        }
        lat.push(Date.now() - s);
      });
      const level = { concurrency, totalMs: Date.now() - t0, latency: dist(lat), failed };
      levels.push(level);
      say(`  [floor] concurrency ${concurrency}: ${N} VM creates in ${sec(level.totalMs)}${failed ? ` (${failed} FAILED)` : ""}; per call ${fmtDist(level.latency)}; ${fmtLoad(load())}`);
      await rm.resourceGroups.beginDeleteAndWait(rg, { updateIntervalInMs: 250 });
    }
    const ok = levels.filter((l) => l.failed === 0);
    const best = (ok.length ? ok : levels).reduce((a, c) => (c.totalMs < a.totalMs ? c : a));
    say(`  [floor] best: concurrency ${best.concurrency}, ${sec(best.totalMs)} (${Math.round((N / best.totalMs) * 1000)} VM creates/s: what the emulator serves here)`);
    const runSpec = (i: number): Run["spec"] => ({ computeEnvironmentRef: { name: CES[i % 4] }, pipeline: { repository: "https://github.com/nextflow-io/hello" } }) as Run["spec"];
    const floorRg = (concurrency: number): string => `bench-kfloor-${concurrency}`;
    const kf = await kubeFloor({
      client, namespace: b.ns, runs: N, say, spec: runSpec,
      prepare: async (concurrency) => void (await rm.resourceGroups.createOrUpdate(floorRg(concurrency), { location: LOCATION })),
      launch: async (run, concurrency) => {
        const body = vmBody(ces.get(run.spec.computeEnvironmentRef.name) ?? ce0, run.metadata.uid ?? randomUUID(), sshKey);
        const name = (body.osProfile as { computerName: string }).computerName;
        await compute.virtualMachines.createOrUpdate(floorRg(concurrency), name, body as unknown as Parameters<typeof compute.virtualMachines.createOrUpdate>[2]).submitted();
        return name;
      },
      cleanUp: async (concurrency) => void (await rm.resourceGroups.beginDeleteAndWait(floorRg(concurrency), { updateIntervalInMs: 250 })),
    });

    // ------------------------------------------------------------ the operator's burst
    const created = new Map<string, number>();
    const uidOf = new Map<string, string>();
    const firstStatus = new Map<string, number>();
    const seen = new Map<string, number>();
    const running = new Map<string, number>();
    const shipped = new Set<string>();
    const recorded = new Set<string>();
    const ceOfRun = (r: Run): ComputeEnvironment => ces.get(r.spec.computeEnvironmentRef.name)!;
    const watch = new Reflector<Run>({
      client, resource: RunResource, namespace: b.ns, logger: createLogger({ level: "silent" }), resyncPeriodMs: 0,
      onEvent: (_t, r) => {
        const name = r.metadata.name ?? "";
        const now = Date.now();
        if (r.status?.phase === "Launching" && r.status.reason === "SettingUp" && !shipped.has(name)) {
          shipped.add(name);
          b.ship(ceOfRun(r), [{ runUid: r.metadata.uid ?? "", seq: 1, line: "VMFORGE_PIPELINE_STARTED", stream: "launcher" }])
            .catch((e: unknown) => say(`  ! shipping the start line of ${name}: ${e instanceof Error ? e.message : String(e)}`));
        }
        if (!seen.has(name)) seen.set(name, now);
        if (r.status?.phase && !firstStatus.has(name)) firstStatus.set(name, now);
        if (r.status?.instance?.id) recorded.add(name);
        if (r.status?.phase === "Running" && !running.has(name)) running.set(name, now);
      },
    });
    watch.start();
    await watch.waitForSync();
    const since = (await b.az.control.requests()).lastSeq;
    const cpu0 = b.op.stats().cpuS;
    const metrics = async (): Promise<ApiserverCounts> => apiserverCounts(String(await client.request("GET", "/metrics")));
    const apiBefore = await metrics();
    const opBefore = await b.op.metrics();
    let apiRecorded: ApiserverCounts | undefined;
    const t0 = Date.now();
    await poolDo(Array.from({ length: N }, (_, i) => i), 16, async (i) => {
      const name = `r${String(i).padStart(5, "0")}`;
      const r = await client.create<Run>(RunResource, { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name, namespace: b.ns }, spec: runSpec(i) } as Run);
      created.set(name, Date.now());
      uidOf.set(name, r.metadata.uid ?? "");
    });
    const createdAllMs = Date.now() - t0;
    say(`  ${N} Runs created in ${sec(createdAllMs)}`);
    const end = Date.now() + o.timeoutMs;
    while (running.size < N && Date.now() < end) {
      if (!apiRecorded && recorded.size >= N) apiRecorded = await metrics();
      await sleep(1_000);
    }
    const allRunning = running.size >= N;
    const allRunningMs = allRunning ? Date.now() - t0 : undefined;
    if (!allRunning) say(`  ! ${N - running.size} of ${N} Runs not Running after ${sec(o.timeoutMs)}`);
    await watch.stop();
    const opAfter = await b.op.metrics();
    // Per controller over the burst: reconciles, their mean duration and the mean wait in the queue before each.
    const controllers: Record<string, { reconciles: number; meanS: number; meanQueuedS: number }> = {};
    const delta = (name: string, by: string): Map<string, number> => {
      const a = promSum(opAfter, name, {}, by);
      const z = promSum(opBefore, name, {}, by);
      return new Map([...a].map(([k, v]) => [k, v - (z.get(k) ?? 0)]));
    };
    const n = delta("vmforge_reconcile_duration_seconds_count", "controller");
    const t = delta("vmforge_reconcile_duration_seconds_sum", "controller");
    const qn = delta("vmforge_workqueue_queue_duration_seconds_count", "queue");
    const qt = delta("vmforge_workqueue_queue_duration_seconds_sum", "queue");
    for (const [c, count] of n) {
      if (!count) continue;
      controllers[c] = { reconciles: count, meanS: (t.get(c) ?? 0) / count, meanQueuedS: (qn.get(c) ?? 0) ? (qt.get(c) ?? 0) / (qn.get(c) ?? 1) : 0 };
    }

    // the VM PUTs as the emulator logged them (first accepted PUT of each Run's VM)
    const byVm = new Map([...uidOf].map(([n, u]) => [vmName(u), n]));
    const putAt = new Map<string, number>();
    let vmPutsTotal = 0;
    const calls: Record<string, number> = {};
    for (const e of (await b.az.control.requests(since)).value) {
      const k = `${e.method} ${e.operation}`;
      calls[k] = (calls[k] ?? 0) + 1;
      if (e.method !== "PUT" || !/\/virtualmachines\/[^/]+$/i.test(e.path)) continue;
      vmPutsTotal++;
      const run = byVm.get(e.path.split("/").pop()!.toLowerCase());
      if (run && e.status < 300 && !putAt.has(run)) putAt.set(run, Date.parse(e.time));
    }
    const d = (m: Map<string, number>): number[] => [...created].filter(([n]) => m.has(n)).map(([n, t]) => m.get(n)! - t);
    const allLaunchedMs = putAt.size ? Math.max(...putAt.values()) - t0 : NaN;
    const lastCreate = Math.max(...created.values());
    const res: AzureBurstResult = {
      runs: N, floor: { levels, best }, kubeFloor: kf, ratioToKubeFloor: allLaunchedMs / kf.best.totalMs, createdAllMs,
      firstStatus: dist(d(firstStatus)), seenByBench: dist(d(seen)), vmPut: dist(d(putAt)), running: dist(d(running)),
      launched: putAt.size, allLaunchedMs, allRunning, ...(allRunningMs !== undefined ? { allRunningMs } : {}),
      ratioToFloor: allLaunchedMs / best.totalMs, startLinesShipped: shipped.size, vmPutsTotal,
      allLaunchedAfterLastCreateMs: allLaunchedMs + t0 - lastCreate, cloudCalls: calls,
      firstLaunchMs: putAt.size ? Math.min(...putAt.values()) - t0 : NaN, launchedBeforeLastCreate: [...putAt.values()].filter((t) => t < lastCreate).length,
      operatorCpuS: b.op.stats().cpuS - cpu0, rss: b.op.stats(), load: load(),
      ...(apiRecorded ? { apiserverUntilRecorded: apiserverWindow(apiRecorded, apiBefore) } : {}),
      controllers,
      operatorReads: operatorReads(opBefore, opAfter),
      // read after the figures above, so reading the log is not counted in them
      ...firstStatusDists(await o.audit.firstStatus(b.ns, N, o.auditKeepTo, say)),
    };
    say(`  created -> first status: ${fmtDist(res.firstStatus)} (as the bench's watch saw them; created -> seen at all by it: ${fmtDist(res.seenByBench)})`);
    say(`  created -> first status, as the kube-apiserver completed the two writes (its audit log): ${fmtDist(res.firstStatusServer)}; of which the status write in the kube-apiserver (received -> completed): ${fmtDist(res.statusWriteServer)}; before it (not counted), the create in the kube-apiserver: ${fmtDist(res.createServer)}`);
    say(`  created -> VM PUT:       ${fmtDist(res.vmPut)}`);
    say(`  created -> Running:      ${fmtDist(res.running)}`);
    say(`  ${res.launched} of ${N} VMs PUT (${vmPutsTotal} VM PUTs in all); all launched ${sec(allLaunchedMs)} after the first create, ${sec(res.allLaunchedAfterLastCreateMs)} after the last (creating took ${sec(createdAllMs)}; the first VM PUT ${sec(res.firstLaunchMs)} after the first create, ${res.launchedBeforeLastCreate} before the last); ${allRunning ? `all Running after ${sec(allRunningMs ?? NaN)}` : "not all Running"}; start lines shipped for ${shipped.size}`);
    say(`  Azure calls during the burst: ${JSON.stringify(calls)}`);
    if (res.apiserverUntilRecorded) say(`  kube-apiserver requests until every Run's status named its VM (all clients, WATCH excluded; within 1 s): ${fmtApiserver(res.apiserverUntilRecorded)}`);
    say(`  the operator's own requests for Runs until all Running, by verb: ${JSON.stringify(res.operatorReads.runRequests)}; its reads past the caches, by why: ${JSON.stringify(res.operatorReads.freshReads)}; its Run watch started again, by reason: ${JSON.stringify(res.operatorReads.runWatchRestarts)}`);
    say(`  the operator's controllers until all Running: ${Object.entries(controllers).map(([c, x]) => `${c} ${x.reconciles} reconciles, mean ${sec(x.meanS * 1000)}, queued mean ${sec(x.meanQueuedS * 1000)}`).join("; ")}`);
    say(`  time to all launched / floor's: ${res.ratioToFloor.toFixed(2)} (floor ${sec(best.totalMs)} at concurrency ${best.concurrency})`);
    say(`  time to all launched / the floor with the Run's writes: ${res.ratioToKubeFloor.toFixed(2)} (${sec(kf.best.totalMs)} at concurrency ${kf.best.concurrency})`);
    say(`  operator CPU ${res.operatorCpuS.toFixed(1)} s, RSS ${res.rss.rssMiB} MiB (peak ${res.rss.peakMiB}); ${fmtLoad(res.load)}`);

    // ------------------------------------------------------------ steady: the N Runs Running
    if (allRunning && o.steadyPolls > 0) {
      say(`\n  [azure steady] ${N} Running Runs, ${o.steadyPolls} polls of 15 s`);
      await sleep(2 * POLL_MS); // the last Running writes and CE counts settle
      const from = (await b.az.control.requests()).lastSeq;
      const api0 = await metrics();
      const m0 = await b.op.metrics();
      const cpu1 = b.op.stats().cpuS;
      const tw = Date.now();
      await sleep(o.steadyPolls * POLL_MS);
      const windowMs = Date.now() - tw;
      const cpuWindow = b.op.stats().cpuS - cpu1;
      const api1 = await metrics();
      const m1 = await b.op.metrics();
      const pollsInWindow = windowMs / POLL_MS;
      const callsW: Record<string, number> = {};
      const bytesW: Record<string, number> = {};
      for (const e of (await b.az.control.requests(from)).value) {
        const k = `${e.method} ${e.operation}`;
        callsW[k] = (callsW[k] ?? 0) + 1;
        if (e.bytes !== undefined) bytesW[k] = (bytesW[k] ?? 0) + e.bytes;
      }
      const steady: AzureSteady = {
        polls: pollsInWindow, cloudCallsPerPoll: perPoll(callsW, pollsInWindow), answerKiBPerPoll: kib(perPoll(bytesW, pollsInWindow)),
        apiserverPerPoll: apiserverPerPoll(apiserverWindow(api1, api0), pollsInWindow),
        ...operatorWindow(m0, m1, pollsInWindow),
        operatorCpuSPerMin: (cpuWindow / windowMs) * 60_000, rss: b.op.stats(), load: load(),
      };
      res.steady = steady;
      say(`  Azure calls per poll: ${JSON.stringify(steady.cloudCallsPerPoll)}; their answers, KiB per poll: ${JSON.stringify(steady.answerKiBPerPoll)}`);
      say(`  kube-apiserver requests per poll (all clients, WATCH excluded): ${fmtApiserver(steady.apiserverPerPoll, "per poll")}`);
      say(`  the operator's own requests in the window: ${JSON.stringify(steady.operatorRequests)}; status writes: ${JSON.stringify(steady.statusWrites)}`);
      say(`  the operator's reconciles per poll: ${JSON.stringify(steady.reconcilesPerPoll)}`);
      say(`  operator CPU ${steady.operatorCpuSPerMin.toFixed(2)} s/min; RSS ${steady.rss.rssMiB} MiB; ${fmtLoad(steady.load)}`);
    }
    return res;
  } finally {
    await b.stop();
  }
}
