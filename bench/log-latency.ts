/**
 * Scenario "log-latency" (issue 13, 6): a line written on the VM -> seen by `vmforge logs -f`, on
 * both clouds. The compiled CLI (`node dist/cli.js logs <run> -f -n <ns>`, KUBECONFIG and the
 * cloud endpoints in its environment, as a user runs it) follows an active Run; the bench plays
 * the VM's launcher, shipping numbered lines straight to the cloud (CloudWatch Logs in moto;
 * the Logs Ingestion API of the Azure emulator, with an ingestion delay and jitter as Log
 * Analytics has) one by one at irregular intervals, and timestamps each line when it appears on
 * the CLI's stdout. Separately it polls the cloud directly for the same lines (every
 * VISIBLE_POLL_MS) to know when each became readable: the cloud's own delivery delay.
 *
 * A follower reads lines in order and stops at a gap (Log Analytics makes batches queryable in no
 * order), so a line can be shown no sooner than it AND every line before it are readable: that
 * time ("deliverable") is what the CLI's own latency is measured from. Goal: seen - deliverable <=
 * the CLI's poll interval (2 s, src/cli/logs.ts) + 1 s.
 *
 * The follower is ended as a user would see it end: the exit line `VMFORGE_EXIT_CODE=0` shipped,
 * then the Run cancelled; `logs -f` returns once the Run has ended and the exit line was read.
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { CloudWatchLogsClient, CreateLogGroupCommand, CreateLogStreamCommand, GetLogEventsCommand } from "@aws-sdk/client-cloudwatch-logs";
import type { KubeClient } from "../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../src/api/types.js";
import type { ComputeEnvironment, Run } from "../src/api/types.js";
import { logStreamName } from "../src/cloud/aws/logs.js";
import { shipLauncherLines } from "../test/harness/aws-launcher-log.js";
import { logGroupFor } from "../src/cloud/aws/environment.js";
import { startAzureBench, type BenchCluster } from "./azure-setup.js";
import type { OperatorProcess } from "./operator.js";
import { dist, fmtDist, fmtLoad, load, sec, type Dist, type Load } from "./stats.js";

/** `vmforge logs -f` polls every 2 s (followRunLog's default, not configurable from the command line). */
export const CLI_POLL_MS = 2_000;
const VISIBLE_POLL_MS = 100;
const START_LINE = "VMFORGE_PIPELINE_STARTED";
const EXIT_LINE = "VMFORGE_EXIT_CODE=0";
/** Azure: the emulator's ingestion delay and per-upload jitter for the measured lines. */
const AZURE_INGESTION_DELAY_MS = 3_000;
const AZURE_INGESTION_JITTER_MS = 2_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface LatencyResult {
  cloud: "aws" | "azure";
  lines: number;
  seen: number;
  ingestionDelayMs?: number;
  ingestionJitterMs?: number;
  /** written -> readable in the cloud (the cloud's own delay, as polled every VISIBLE_POLL_MS). */
  cloudDelay: Dist;
  /** written -> on the CLI's stdout. */
  seenAfterWritten: Dist;
  /** readable in the cloud -> on stdout (this line alone). */
  seenAfterVisible: Dist;
  /** it and every line before it readable -> on stdout: what the CLI adds. */
  seenAfterDeliverable: Dist;
  cliExit: { code: number | null; afterCancelMs: number; stoppedBySignal: boolean };
  load: Load;
}

interface Follow {
  say: (s: string) => void;
  label: string;
  lines: number;
  run: string;
  ns: string;
  env: Record<string, string>;
  /** Seq of the first measured line (the start line has those before it). */
  firstSeq: number;
  write: (seq: number, line: string) => Promise<void>;
  visible: () => Promise<number[]>;
  cancel: () => Promise<void>;
}

async function follow(f: Follow): Promise<Omit<LatencyResult, "cloud" | "load">> {
  const seen = new Map<number, number>();
  const written = new Map<number, number>();
  const visible = new Map<number, number>();
  let started = false;
  const child = spawn(process.execPath, ["dist/cli.js", "logs", f.run, "-f", "-n", f.ns], { env: { ...process.env, ...f.env }, stdio: ["ignore", "pipe", "pipe"] });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  createInterface({ input: child.stdout }).on("line", (l) => {
    const now = Date.now();
    if (l.trim() === START_LINE) started = true;
    const m = /^bench-line (\d+)$/.exec(l.trim());
    if (m && !seen.has(Number(m[1]))) seen.set(Number(m[1]), now);
  });
  createInterface({ input: child.stderr }).on("line", (l) => f.say(`  [${f.label} logs -f stderr] ${l}`));
  let polling = true;
  const poller = (async () => {
    while (polling) {
      try {
        const now = Date.now();
        for (const s of await f.visible()) if (!visible.has(s)) visible.set(s, now);
      } catch (e) {
        f.say(`  ! reading the cloud directly: ${e instanceof Error ? e.message : String(e)}`);
      }
      await sleep(VISIBLE_POLL_MS);
    }
  })();
  let stoppedBySignal = false;
  let cancelAt = 0;
  try {
    const t = Date.now();
    while (!started && Date.now() - t < 90_000 && child.exitCode === null) await sleep(50);
    if (!started) throw new Error(`${f.label}: vmforge logs -f did not print the start line within 90 s (exit ${child.exitCode})`);
    const last = f.firstSeq + f.lines - 1;
    for (let seq = f.firstSeq; seq <= last; seq++) {
      // irregular, so that the lines fall at every phase of the CLI's poll
      await sleep(200 + Math.floor(Math.random() * 1_300));
      written.set(seq, Date.now());
      await f.write(seq, `bench-line ${seq}`);
    }
    const until = Date.now() + 60_000;
    while (seen.size < f.lines && Date.now() < until) await sleep(100);
    if (seen.size < f.lines) f.say(`  ! ${f.lines - seen.size} of ${f.lines} lines not seen within 60 s of the last write`);
    await f.write(last + 1, EXIT_LINE);
    cancelAt = Date.now();
    await f.cancel();
    const code = await Promise.race([exited, sleep(120_000).then(() => "timeout" as const)]);
    if (code === "timeout") {
      f.say(`  ! vmforge logs -f still following 120 s after the exit line and the cancel: stopped with SIGTERM`);
      stoppedBySignal = true;
      child.kill("SIGTERM");
    }
  } finally {
    polling = false;
    await poller;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      stoppedBySignal = true;
    }
  }
  const code = await exited;
  const afterCancelMs = Date.now() - cancelAt;
  const seqs = [...written.keys()].sort((a, b) => a - b);
  // deliverable: the line and every earlier one readable (a follower stops at a gap)
  const deliverable = new Map<number, number>();
  let prefix = 0;
  for (let s = 1; s <= seqs[seqs.length - 1]!; s++) {
    prefix = Math.max(prefix, visible.get(s) ?? (s < f.firstSeq ? 0 : Infinity));
    deliverable.set(s, prefix);
  }
  const d = (from: Map<number, number>, to: Map<number, number>): number[] =>
    seqs.filter((s) => from.has(s) && to.has(s) && Number.isFinite(from.get(s)!)).map((s) => to.get(s)! - from.get(s)!);
  return {
    lines: f.lines,
    seen: seen.size,
    cloudDelay: dist(d(written, visible)),
    seenAfterWritten: dist(d(written, seen)),
    seenAfterVisible: dist(d(visible, seen)),
    seenAfterDeliverable: dist(d(deliverable, seen)),
    cliExit: { code, afterCancelMs, stoppedBySignal },
  };
}

function report(say: (s: string) => void, r: LatencyResult): void {
  say(`  ${r.seen} of ${r.lines} lines seen on the CLI's stdout${r.ingestionDelayMs !== undefined ? ` (ingestion delay ${sec(r.ingestionDelayMs)} + jitter 0..${sec(r.ingestionJitterMs ?? 0)} per upload)` : ""}`);
  say(`  written -> readable in the cloud:    ${fmtDist(r.cloudDelay)}`);
  say(`  written -> seen by logs -f:          ${fmtDist(r.seenAfterWritten)}`);
  say(`  readable -> seen (the line alone):   ${fmtDist(r.seenAfterVisible)}`);
  say(`  readable with all before it -> seen: ${fmtDist(r.seenAfterDeliverable)}`);
  say(`  logs -f ended ${r.cliExit.stoppedBySignal ? "only by SIGTERM" : `by itself, exit ${r.cliExit.code}`}, ${sec(r.cliExit.afterCancelMs)} after the exit line and the cancel; ${fmtLoad(r.load)}`);
}

const cancelRun = (client: KubeClient, ns: string, name: string): Promise<unknown> => client.patch(RunResource, ns, name, { spec: { cancel: true } }, "merge");

async function waitRun(client: KubeClient, ns: string, name: string, ok: (r: Run) => boolean, what: string, timeoutMs: number): Promise<Run> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await client.get<Run>(RunResource, ns, name);
    if (r && ok(r)) return r;
    if (r?.status?.phase && ["Failed", "Cancelled", "Succeeded"].includes(r.status.phase)) throw new Error(`Run ${ns}/${name} ended ${r.status.phase} (${r.status.reason ?? ""}: ${r.status.message ?? ""}) before ${what}`);
    if (Date.now() > end) throw new Error(`Run ${ns}/${name} not ${what} within ${timeoutMs / 1000} s (phase ${r?.status?.phase ?? "none"})`);
    await sleep(250);
  }
}

const launched = (r: Run): boolean => !!r.status?.instance?.id && (r.status.phase === "Launching" || r.status.phase === "Running");

/** AWS: an AWS CE and one Run launched by the operator (moto behind the stricter layer). */
export async function logLatencyAws(o: {
  client: KubeClient;
  say: (s: string) => void;
  lines: number;
  namespace: (prefix: string) => Promise<string>;
  awsSetup: (ns: string) => Promise<void>;
  startOperator: (ns: string) => Promise<OperatorProcess>;
  ceSpec: () => ComputeEnvironment["spec"];
  runSpec: (ce: string) => Run["spec"];
  /** Where the CLI reaches AWS (VMFORGE_AWS_ENDPOINT), and where the bench writes directly. */
  cliEndpoint: string;
  direct: { endpoint: string; region: string; credentials: { accessKeyId: string; secretAccessKey: string } };
  kubeconfig: string;
}): Promise<LatencyResult> {
  const { client, say } = o;
  const ns = await o.namespace("log-latency");
  await o.awsSetup(ns);
  const op = await o.startOperator(ns);
  try {
    await client.create(ComputeEnvironmentResource, { apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "ll", namespace: ns }, spec: o.ceSpec() } as ComputeEnvironment);
    const endCe = Date.now() + 180_000;
    while (!(await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ll"))?.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True")) {
      if (Date.now() > endCe) throw new Error("the AWS CE was not Ready within 180 s");
      await sleep(250);
    }
    await client.create(RunResource, { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "ll-run", namespace: ns }, spec: o.runSpec("ll") } as Run);
    const run = await waitRun(client, ns, "ll-run", launched, "launched", 120_000);
    const cwl = new CloudWatchLogsClient(o.direct);
    const group = logGroupFor({ metadata: { namespace: ns, name: "ll" } });
    const stream = logStreamName(run);
    await cwl.send(new CreateLogGroupCommand({ logGroupName: group })).catch(() => undefined);
    await cwl.send(new CreateLogStreamCommand({ logGroupName: group, logStreamName: stream })).catch(() => undefined);
    // as the launcher: every line to the Run's stream, its markers (start, exit) to the markers stream too
    const put = (message: string): Promise<unknown> => shipLauncherLines(cwl, group, run, [message]);
    await put(START_LINE);
    say(`  Run ${ns}/ll-run on ${run.status?.instance?.id ?? "?"} (${run.status?.phase ?? ""}); following it with node dist/cli.js logs ll-run -f -n ${ns}`);
    const r = await follow({
      say, label: "aws", lines: o.lines, run: "ll-run", ns, firstSeq: 2,
      env: { KUBECONFIG: o.kubeconfig, VMFORGE_AWS_ENDPOINT: o.cliEndpoint },
      write: async (_seq, line) => void (await put(line)),
      visible: async () => {
        const out: number[] = [];
        let token: string | undefined;
        for (;;) {
          const page = await cwl.send(new GetLogEventsCommand({ logGroupName: group, logStreamName: stream, startFromHead: true, ...(token ? { nextToken: token } : {}) }));
          for (const e of page.events ?? []) {
            const m = /^bench-line (\d+)$/.exec(e.message ?? "");
            if (m) out.push(Number(m[1]));
          }
          if (!page.events?.length || page.nextForwardToken === token) break;
          token = page.nextForwardToken;
        }
        return out;
      },
      cancel: () => cancelRun(client, ns, "ll-run").then(() => undefined),
    });
    const res: LatencyResult = { cloud: "aws", ...r, load: load() };
    report(say, res);
    return res;
  } finally {
    await op.stop().catch(() => undefined);
  }
}

/** Azure: the Azure emulator, an Azure CE Ready, one Run whose VM the operator launched; lines through the Logs Ingestion API. */
export async function logLatencyAzure(o: BenchCluster & { lines: number }): Promise<LatencyResult> {
  const { client, say } = o;
  const b = await startAzureBench(o, "log-latency-az");
  try {
    const ce = (await b.createCes(["ll"])).get("ll")!;
    await client.create(RunResource, { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "ll-run", namespace: b.ns }, spec: { computeEnvironmentRef: { name: "ll" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } } } as Run);
    const run = await waitRun(client, b.ns, "ll-run", launched, "launched", 120_000);
    const uid = run.metadata.uid ?? "";
    // the launcher's first line, readable at once; the measured lines come with Log Analytics' delay
    await b.ship(ce, [{ runUid: uid, seq: 1, line: START_LINE, stream: "launcher" }]);
    await b.az.control.settings({ ingestionDelayMs: AZURE_INGESTION_DELAY_MS, ingestionJitterMs: AZURE_INGESTION_JITTER_MS });
    say(`  Run ${b.ns}/ll-run on VM ${(run.status?.instance?.id ?? "?").split("/").pop() ?? ""} (${run.status?.phase ?? ""}); following it with node dist/cli.js logs ll-run -f -n ${b.ns}`);
    const r = await follow({
      say, label: "azure", lines: o.lines, run: "ll-run", ns: b.ns, firstSeq: 2, env: b.childEnv,
      write: (seq, line) => b.ship(ce, [{ runUid: uid, seq, line, stream: line === EXIT_LINE ? "launcher" : "pipeline" }]),
      visible: async () => (await b.visibleSeqs(ce, uid)).filter((s) => s >= 2),
      cancel: () => cancelRun(client, b.ns, "ll-run").then(() => undefined),
    });
    const res: LatencyResult = { cloud: "azure", ingestionDelayMs: AZURE_INGESTION_DELAY_MS, ingestionJitterMs: AZURE_INGESTION_JITTER_MS, ...r, load: load() };
    report(say, res);
    return res;
  } finally {
    await b.stop();
  }
}
