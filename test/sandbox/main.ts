/**
 * The vmforge sandbox: a real local control plane (etcd, kube-apiserver, kube-controller-manager),
 * moto as AWS, the operator with its real AWS provider, and the examples/ applied. moto never runs
 * user data, so the sandbox plays the EC2 instance (see instance.ts). Watch the Run go
 * Pending -> Launching -> Running -> Succeeded with its log.
 *
 *   npm run sandbox                 interactive: keeps running until Ctrl-C
 *   npm run sandbox -- --exit       unattended: exits 0 once the example Run succeeded, else 1
 *   npm run sandbox -- --exit --fail-pipeline   the stand-in pipeline fails (exit 1 expected)
 *   npm run sandbox -- --cloud azure [--exit] [--fail-pipeline]
 *                                   the same on Azure: the Azure emulator and Azurite, the VM played
 *                                   by azure/vm-player.ts (see azure/sandbox.ts)
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { CreateBucketCommand, GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { CloudWatchLogsClient, GetLogEventsCommand } from "@aws-sdk/client-cloudwatch-logs";
import { KubeClient } from "../../src/engine/kube.js";
import type { KubeObject, ResourceType } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { startCluster } from "../harness/cluster.js";
import { startStrictAws } from "../harness/aws-strict/server.js";
import { startMoto } from "../harness/moto.js";
import { installCrds } from "../support/operator.js";
import { runArtifactsUri, s3Location } from "../../src/cloud/aws/launcher.js";
import { InstancePlayer } from "./instance.js";
import { startSandboxOperator } from "./operator.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const NAMESPACE = "sandbox";
const REGION = "eu-west-1";
const argv = process.argv.slice(2);
const args = new Set(argv);
const unattended = args.has("--exit");
const failPipeline = args.has("--fail-pipeline");
const cloud = argv.find((a) => a.startsWith("--cloud="))?.slice("--cloud=".length) ?? (args.has("--cloud") ? argv[argv.indexOf("--cloud") + 1] : "aws");
const deadlineMs = 10 * 60_000;

const say = (line: string): void => {
  process.stdout.write(`[sandbox] ${line}\n`);
};

const resources: Record<string, ResourceType> = {
  Secret: { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true },
  Namespace: { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false },
  ComputeEnvironment: ComputeEnvironmentResource,
  Run: RunResource,
};

async function applyExample(client: KubeClient, file: string): Promise<void> {
  for (const doc of parseAllDocuments(readFileSync(join(REPO, "examples", file), "utf8"))) {
    const obj = doc.toJS() as KubeObject;
    if (!obj?.kind) continue;
    const rt = resources[obj.kind];
    if (!rt) throw new Error(`examples/${file}: unexpected kind ${obj.kind}`);
    obj.metadata.namespace = NAMESPACE;
    await client.create(rt, obj);
    say(`applied examples/${file}: ${obj.kind} ${NAMESPACE}/${obj.metadata.name}`);
  }
}

async function main(): Promise<number> {
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
    say("starting the local control plane (builds it on first use: several minutes)");
    const cluster = await startCluster();
    cleanups.push(() => cluster.stop());
    const motoServer = await startMoto();
    cleanups.push(() => motoServer.stop());
    // AWS is moto behind the strict AWS layer (every behaviour off), as in the integration tests.
    const moto = await startStrictAws({ upstream: motoServer.endpoint });
    cleanups.push(() => moto.stop());
    const aws = { endpoint: moto.endpoint, region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } };

    const client = KubeClient.fromKubeconfig(cluster.kubeconfigPath);
    await installCrds(client);
    say("CRDs installed: computeenvironments.vmforge.dev, runs.vmforge.dev");
    // The work directory's bucket; in a real account it exists before the ComputeEnvironment.
    await new S3Client({ ...aws, forcePathStyle: true }).send(new CreateBucketCommand({
      Bucket: "vmforge-sandbox-work", CreateBucketConfiguration: { LocationConstraint: REGION },
    }));

    const dir = mkdtempSync(join(tmpdir(), "vmforge-sandbox-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const operatorLog = join(dir, "operator.log");
    const operator = startSandboxOperator({
      logFile: operatorLog, cleanups, say,
      env: {
        ...process.env,
        KUBECONFIG: cluster.kubeconfigPath,
        VMFORGE_AWS_ENDPOINT: moto.endpoint,
        AWS_EC2_METADATA_DISABLED: "true",
        VMFORGE_LEADER_ELECTION: "false",
        VMFORGE_POLL_INTERVAL: "2s",
        VMFORGE_METRICS_ADDRESS: "127.0.0.1:0",
        VMFORGE_NAMESPACES: NAMESPACE,
      },
    });

    const player = new InstancePlayer({ endpoint: moto.endpoint, region: REGION, dir: join(dir, "instances"), pipelineExitCode: failPipeline ? 1 : 0, say });
    player.start();
    cleanups.push(() => player.stop());

    // Every status change of the Run arrives through a watch, so no phase goes unseen.
    let lastRun = "";
    const show = (r: Run): void => {
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
          if (!watchAbort.signal.aborted) await new Promise((r) => setTimeout(r, 500));
        }
      }
    })();

    await client.create(resources.Namespace as ResourceType, { apiVersion: "v1", kind: "Namespace", metadata: { name: NAMESPACE } });
    await applyExample(client, "credentials-secret.yaml");
    await applyExample(client, "compute-environment.yaml");
    await applyExample(client, "run.yaml");

    const logs = new CloudWatchLogsClient(aws);
    let lastCe = "";
    let token: string | undefined;
    let logLinesSeen = 0;
    let exitLineSeen = false;
    const started = Date.now();
    let outcome: Run | undefined;
    let endedAt: number | undefined;
    while (Date.now() - started < deadlineMs) {
      if (operator.exitCode !== null) throw new Error(`the operator exited with code ${operator.exitCode}; see ${operatorLog}`);
      const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, NAMESPACE, "aws-example");
      const ceReady = ce?.status?.conditions?.find((c) => c.type === "Ready");
      const ceLine = `ComputeEnvironment aws-example: ${ce?.status?.phase ?? "(no status yet)"}${ceReady ? ` (${ceReady.reason}: ${ceReady.message})` : ""}`;
      if (ceLine !== lastCe) say((lastCe = ceLine));
      const run = await client.get<Run>(RunResource, NAMESPACE, "hello");
      const st = run?.status;
      if (st?.log?.group && st.log.stream) {
        for (;;) {
          const out = await logs.send(new GetLogEventsCommand({
            logGroupName: st.log.group, logStreamName: st.log.stream, startFromHead: true, ...(token ? { nextToken: token } : {}),
          })).catch(() => undefined);
          if (!out) break;
          for (const e of out.events ?? []) {
            process.stdout.write(`  | ${e.message ?? ""}\n`);
            logLinesSeen++;
            if (/^VMFORGE_EXIT_CODE=/.test(e.message ?? "")) exitLineSeen = true;
          }
          const same = out.nextForwardToken === token;
          token = out.nextForwardToken;
          if (same || (out.events ?? []).length === 0) break;
        }
      }
      // Done once the Run ended and its log has been read to the exit line (or for a few more seconds).
      if (st?.phase === "Succeeded" || st?.phase === "Failed" || st?.phase === "Cancelled") {
        outcome ??= run;
        endedAt ??= Date.now();
        if (exitLineSeen || Date.now() - endedAt > 15_000) break;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    if (!outcome) throw new Error(`the example Run did not finish within ${deadlineMs / 60000} minutes; see ${operatorLog}`);

    const s = outcome.status ?? {};
    say(`Run hello ended: ${s.phase}, exit code ${s.exitCode ?? "(none)"} on ${s.instance?.id ?? "(no machine)"}`);
    const ceNow = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, NAMESPACE, "aws-example");
    const where = ceNow ? s3Location(`${runArtifactsUri(ceNow, outcome)}/exit-status`) : undefined;
    const exitObject = where && await new S3Client({ ...aws, forcePathStyle: true })
      .send(new GetObjectCommand({ Bucket: where.bucket, Key: where.key }))
      .then((o) => o.Body?.transformToString())
      .catch(() => undefined);
    if (exitObject !== undefined) say(`exit status uploaded to the work dir: ${exitObject.trim()}`);
    say(`read ${logLinesSeen} log lines from CloudWatch Logs${exitLineSeen ? ", including the exit line" : " (no exit line!)"}`);
    const ok = s.phase === "Succeeded" && exitLineSeen && exitObject?.trim() === "0";
    if (unattended) {
      await cleanup();
      const expected = failPipeline ? s.phase === "Failed" && s.exitCode === 1 && exitLineSeen : ok;
      return expected ? 0 : 1;
    }
    say("the sandbox keeps running; in another terminal:");
    say(`  export KUBECONFIG=${cluster.kubeconfigPath}`);
    say(`  kubectl get ce,runs -n ${NAMESPACE}`);
    say(`  kubectl describe run hello -n ${NAMESPACE}`);
    say("apply more Runs (a new name each time) and watch them here with kubectl; Ctrl-C tears everything down");
    await new Promise<never>(() => undefined);
    return 0;
  } catch (e) {
    say(`failed: ${e instanceof Error ? e.message : String(e)}`);
    await cleanup();
    return 1;
  }
}

if (cloud === "azure") {
  const { runAzureSandbox } = await import("./azure/sandbox.js");
  process.exit(await runAzureSandbox({ unattended, failPipeline, say }));
} else if (cloud !== "aws") {
  say(`--cloud must be aws or azure, got ${JSON.stringify(cloud ?? "")}`);
  process.exit(2);
}
process.exit(await main());
