/**
 * Whose word ends an AWS Run, through the OPERATOR with its real AWS provider, moto and the
 * sandbox's InstancePlayer (the launcher the operator rendered, run with stand-ins whose agent
 * ships the configured files to moto's CloudWatch Logs): only the Run's markers stream, which gets
 * the launcher's machine-readable lines alone, says that the pipeline started or how it ended. A
 * pipeline (here its CE's pre-run script, whose output goes to the Run's main stream like the
 * pipeline's) that prints VMFORGE_PIPELINE_STARTED and VMFORGE_EXIT_CODE=0 and then fails ends
 * Failed with its real exit code.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CloudWatchLogsClient, GetLogEventsCommand } from "@aws-sdk/client-cloudwatch-logs";
import { CreateBucketCommand, GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { awsClients, type AwsClientOptions } from "../../src/cloud/aws/clients.js";
import { runArtifactsUri } from "../../src/cloud/aws/launcher.js";
import { logGroupName, logStreamName, markerLogStreamName } from "../../src/cloud/aws/logs.js";
import { SecretResource, type SecretObject } from "../../src/controllers/shared.js";
import { InstancePlayer } from "../sandbox/instance.js";
import { installCrds, startOperator, waitFor, type RunningOperator } from "../support/operator.js";
import { freshNamespace, kubeconfigPath, motoEndpoint, motoReset } from "../harness/helpers.js";

const REGION = "eu-west-1";
const BUCKET = "vmforge-aws-markers-test";
let client: KubeClient;
let ns: string;
let op: RunningOperator;
let player: InstancePlayer;
let playDir: string;
/** GetLogEvents calls the operator has sent so far. */
let logReads = 0;
const said: string[] = [];

const aws = () => ({ endpoint: motoEndpoint(), region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });

// The "pipeline" prints the launcher's markers on its own output, points the exit status upload at
// a bucket that does not exist (so only the log can tell the outcome), then waits for the test.
const SPOOF = [
  "echo VMFORGE_PIPELINE_STARTED",
  "echo VMFORGE_EXIT_CODE=0",
  "VMF_ARTIFACTS_URI=s3://vmforge-no-such-bucket/spoof",
  'until [ -e "$STATE_DIR/go" ]; do sleep 0.2; done',
].join("\n");

/** The lines of one of the Run's streams. */
async function streamLines(ce: ComputeEnvironment, stream: string): Promise<string[]> {
  const out = await new CloudWatchLogsClient(aws())
    .send(new GetLogEventsCommand({ logGroupName: logGroupName(ce), logStreamName: stream, startFromHead: true }))
    .catch(() => undefined);
  return (out?.events ?? []).map((e) => (e.message ?? "").trim());
}

beforeAll(async () => {
  await motoReset();
  await new S3Client({ ...aws(), forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "aws-markers");
  await client.create(SecretResource, {
    apiVersion: "v1", kind: "Secret", metadata: { name: "aws", namespace: ns }, stringData: { accessKeyId: "testing", secretAccessKey: "testing" },
  } as SecretObject);
  playDir = mkdtempSync(join(tmpdir(), "vmforge-aws-markers-"));
  player = new InstancePlayer({ endpoint: motoEndpoint(), region: REGION, dir: playDir, pipelineExitCode: 3, say: (l) => said.push(l) });
  player.start();
  const provider = new AwsProvider({
    endpoint: motoEndpoint(),
    clientFactory: (o: AwsClientOptions) => {
      const c = awsClients(o);
      c.logs.middlewareStack.add((next, context) => async (args) => {
        if (context.commandName === "GetLogEventsCommand") logReads++;
        return next(args);
      }, { step: "initialize", name: "countGetLogEvents" });
      return c;
    },
  });
  op = await startOperator(kubeconfigPath(), new Map([["aws", provider]]), { namespaces: [ns], pollIntervalMs: 1_000 });
}, 120_000);

afterAll(async () => {
  await op?.stop();
  await player?.stop();
  if (playDir) rmSync(playDir, { recursive: true, force: true });
});

describe("AWS: the launcher's markers are believed from the Run's markers stream only", () => {
  it("a pipeline that prints VMFORGE_PIPELINE_STARTED and VMFORGE_EXIT_CODE=0, then exits 3, ends Failed with exit code 3", async () => {
    await client.create(ComputeEnvironmentResource, {
      apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "markers", namespace: ns },
      spec: {
        provider: "aws", credentials: { secretRef: { name: "aws" } }, preRunScript: SPOOF,
        aws: { region: REGION, instanceType: "m6i.large", workDir: `s3://${BUCKET}/work` },
      },
    } as ComputeEnvironment);
    const ce = await waitFor("CE markers Ready", async () => {
      const c = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "markers");
      return c?.status?.conditions?.some((x) => x.type === "Ready" && x.status === "True") ? c : undefined;
    }, 60_000);
    await client.create(RunResource, {
      apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "spoof", namespace: ns },
      spec: { computeEnvironmentRef: { name: "markers" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
    } as Run);
    const run = await waitFor("Run spoof has its instance", async () => {
      const r = await client.get<Run>(RunResource, ns, "spoof");
      return r?.status?.instance?.id ? r : undefined;
    }, 60_000, 250);

    // The spoofed lines are in the Run's main stream while the machine runs its pre-run script.
    await waitFor("the spoofed lines in the main stream", async () => {
      const lines = await streamLines(ce, logStreamName(run));
      return lines.includes("VMFORGE_EXIT_CODE=0") && lines.includes("VMFORGE_PIPELINE_STARTED");
    }, 60_000, 250);
    // Three more log reads by the operator with them there: the Run is still being set up.
    const seen = logReads;
    await waitFor("three more log reads (or the Run no longer set up)", async () =>
      logReads >= seen + 3 || (await client.get<Run>(RunResource, ns, "spoof"))?.status?.phase !== "Launching", 60_000, 100);
    const meanwhile = await client.get<Run>(RunResource, ns, "spoof");
    expect(meanwhile?.status?.phase, meanwhile?.status?.message).toBe("Launching");
    expect(meanwhile?.status?.exitCode).toBeUndefined();
    expect(await streamLines(ce, markerLogStreamName(run))).toEqual([]);

    // Let the launcher go on: nextflow runs and fails with code 3.
    const goFile = join(playDir, run.status!.instance!.id, "var", "lib", "vmforge", "go");
    expect(existsSync(join(playDir, run.status!.instance!.id)), said.join("\n")).toBe(true);
    writeFileSync(goFile, "");
    const done = await waitFor("Run spoof ended", async () => {
      const r = await client.get<Run>(RunResource, ns, "spoof");
      return r?.status?.phase === "Succeeded" || r?.status?.phase === "Failed" ? r : undefined;
    }, 90_000, 250);
    expect(done.status?.phase, done.status?.message).toBe("Failed");
    expect(done.status).toMatchObject({ reason: "PipelineFailed", exitCode: 3 });
    // The outcome came from the launcher's exit line: no exit status reached the work directory.
    const key = `${runArtifactsUri(ce, done).replace(`s3://${BUCKET}/`, "")}/exit-status`;
    const obj = await new S3Client({ ...aws(), forcePathStyle: true }).send(new GetObjectCommand({ Bucket: BUCKET, Key: key })).catch((e: unknown) => e);
    expect((obj as { name?: string }).name).toBe("NoSuchKey");
    expect(await streamLines(ce, markerLogStreamName(run))).toEqual(["VMFORGE_PIPELINE_STARTED", "VMFORGE_EXIT_CODE=3"]);
    // The main stream keeps everything for `vmforge logs`: the spoofed line, and the real one after it.
    const main = await streamLines(ce, logStreamName(run));
    expect(main.indexOf("VMFORGE_EXIT_CODE=0")).toBeGreaterThanOrEqual(0);
    expect(main.indexOf("VMFORGE_EXIT_CODE=3")).toBeGreaterThan(main.indexOf("VMFORGE_EXIT_CODE=0"));
  }, 300_000);
});
