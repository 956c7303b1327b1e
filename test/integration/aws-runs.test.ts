// The AWS provider's run half (src/cloud/aws/runs.ts) against the shared moto server: launch,
// idempotency, request shape, batched describe, exit codes, terminate, orphan sweep and log reads.
// Fixtures (VPC, subnets, role, instance profile, bucket, log group) are made with the SDK here.
import { randomUUID } from "node:crypto";
import { CreateLogGroupCommand } from "@aws-sdk/client-cloudwatch-logs";
import {
  CreateSecurityGroupCommand,
  CreateSubnetCommand,
  CreateVpcCommand,
  DescribeImagesCommand,
  DescribeInstancesCommand,
  DescribeVolumesCommand,
  RunInstancesCommand,
  StopInstancesCommand,
  type Instance,
  type RunInstancesCommandInput,
} from "@aws-sdk/client-ec2";
import { AddRoleToInstanceProfileCommand, CreateInstanceProfileCommand, CreateRoleCommand } from "@aws-sdk/client-iam";
import { CreateBucketCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { awsClients, type AwsClients } from "../../src/cloud/aws/clients.js";
import { runArtifactsUri } from "../../src/cloud/aws/launcher.js";
import { logStreamName } from "../../src/cloud/aws/logs.js";
import { TAG_RUN_UID, describeRuns, launchRun, readRunLog, runInstancesInput, sweepOrphans, terminateRun } from "../../src/cloud/aws/runs.js";
import type { EnvContext, ResolvedCredentials, RunDescription } from "../../src/cloud/provider.js";
import { createLogger } from "../../src/engine/logger.js";
import { strictAws } from "../harness/helpers.js";
import { shipLauncherLines } from "../harness/aws-launcher-log.js";

const REGION = "eu-west-1";
const CREDS: ResolvedCredentials = { source: "secret", secretName: "aws", data: { accessKeyId: "testing", secretAccessKey: "testing" } };
const logger = createLogger({ level: "silent" });
const suffix = randomUUID().slice(0, 8);

interface Sent {
  name: string;
  input: Record<string, unknown>;
}
/** Every command the provider's clients send (initialize step: once per command, not per retry). */
const sent: Sent[] = [];

let endpoint: string;
let admin: AwsClients;
let clients: AwsClients;
let bucket: string;
let ceA: ComputeEnvironment;
let ceB: ComputeEnvironment;

function recordingClients(): AwsClients {
  const c = awsClients({ credentials: CREDS, region: REGION, endpoint });
  for (const client of [c.ec2, c.logs, c.s3]) {
    (client.middlewareStack as AwsClients["ec2"]["middlewareStack"]).add(
      (next, context) => async (args) => {
        sent.push({ name: String(context.commandName).replace(/Command$/, ""), input: structuredClone(args.input as Record<string, unknown>) });
        return next(args);
      },
      { step: "initialize", name: "vmforgeRunsTestRecorder" },
    );
  }
  return c;
}

function sentSince(mark: number, name?: string): Sent[] {
  return sent.slice(mark).filter((s) => name === undefined || s.name === name);
}

function ctx(ce: ComputeEnvironment): EnvContext {
  return { ce, credentials: CREDS, logger };
}

function makeCe(name: string, status: NonNullable<ComputeEnvironment["status"]>["aws"]): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { namespace: `runs-${suffix}`, name, uid: randomUUID() },
    spec: { provider: "aws", aws: { region: REGION, workDir: `s3://${bucket}/work`, bootDiskSizeGiB: 64, tags: { project: "it" } } },
    status: { aws: { ...status, logGroup: `/vmforge/runs-${suffix}/${name}` } },
  };
}

let runCounter = 0;
function makeRun(ce: ComputeEnvironment, overrides?: Run["spec"]["overrides"]): Run {
  runCounter++;
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { namespace: ce.metadata.namespace, name: `run-${runCounter}`, uid: randomUUID() },
    spec: {
      computeEnvironmentRef: { name: ce.metadata.name! },
      pipeline: { repository: "https://github.com/nextflow-io/hello", params: { n: runCounter } },
      ...(overrides ? { overrides } : {}),
    },
  };
}

async function instancesOf(runUid: string): Promise<Instance[]> {
  const out = await admin.ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: `tag:${TAG_RUN_UID}`, Values: [runUid] }] }));
  return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []);
}

function tagsOf(list: { Key?: string; Value?: string }[] | undefined): Record<string, string> {
  return Object.fromEntries((list ?? []).map((t) => [t.Key ?? "", t.Value ?? ""]));
}

/** The launcher writes `lines` (the agent's effect: the markers reach the markers stream too). */
async function putLog(ce: ComputeEnvironment, run: Run, lines: string[]): Promise<void> {
  await shipLauncherLines(admin.logs, ce.status!.aws!.logGroup!, run, lines);
}

beforeAll(async () => {
  endpoint = inject("motoEndpoint");
  admin = awsClients({ credentials: CREDS, region: REGION, endpoint });
  clients = recordingClients();

  const vpc = await admin.ec2.send(new CreateVpcCommand({ CidrBlock: "10.42.0.0/16" }));
  const vpcId = vpc.Vpc!.VpcId!;
  const subnets: string[] = [];
  for (const [i, az] of ["a", "b"].entries()) {
    const s = await admin.ec2.send(new CreateSubnetCommand({ VpcId: vpcId, CidrBlock: `10.42.${i}.0/24`, AvailabilityZone: `${REGION}${az}` }));
    subnets.push(s.Subnet!.SubnetId!);
  }
  const sg = await admin.ec2.send(new CreateSecurityGroupCommand({ GroupName: `vmforge-runs-${suffix}`, Description: "runs test", VpcId: vpcId }));
  const images = await admin.ec2.send(new DescribeImagesCommand({ Owners: ["amazon"] }));
  const image = (images.Images ?? []).find((i) => i.RootDeviceName && i.Architecture === "x86_64");
  if (!image?.ImageId) throw new Error("moto offers no x86_64 AMI");

  const role = await admin.iam.send(
    new CreateRoleCommand({
      RoleName: `TowerForge-runs-${suffix}`,
      AssumeRolePolicyDocument: JSON.stringify({
        Version: "2012-10-17",
        Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }],
      }),
    }),
  );
  const profile = await admin.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: `TowerForge-runs-${suffix}` }));
  await admin.iam.send(new AddRoleToInstanceProfileCommand({ InstanceProfileName: `TowerForge-runs-${suffix}`, RoleName: `TowerForge-runs-${suffix}` }));

  bucket = `vmforge-runs-${suffix}`;
  await admin.s3.send(new CreateBucketCommand({ Bucket: bucket, CreateBucketConfiguration: { LocationConstraint: REGION } }));

  const status = {
    accountId: "123456789012",
    roleArn: role.Role!.Arn!,
    instanceProfileArn: profile.InstanceProfile!.Arn!,
    vpcId,
    subnetIds: subnets,
    securityGroupIds: [sg.GroupId!],
    amiId: image.ImageId,
    rootDeviceName: image.RootDeviceName!,
    architecture: "x86_64" as const,
    instanceType: "m6i.large",
  };
  ceA = makeCe("ce-a", status);
  ceB = makeCe("ce-b", status);
  for (const ce of [ceA, ceB]) await admin.logs.send(new CreateLogGroupCommand({ logGroupName: ce.status!.aws!.logGroup! }));
});

afterAll(() => {
  admin?.destroy();
  clients?.destroy();
});

describe("launchRun", () => {
  it("is idempotent: launching the same Run twice gives one instance", async () => {
    const run = makeRun(ceA);
    const mark = sent.length;
    const first = await launchRun(clients, ctx(ceA), run);
    const second = await launchRun(clients, ctx(ceA), run);
    expect(second.instanceId).toBe(first.instanceId);
    expect(await instancesOf(run.metadata.uid!)).toHaveLength(1);
    // The second launch looked and found; it did not call RunInstances again.
    expect(sentSince(mark, "RunInstances")).toHaveLength(1);
    expect(first.log).toEqual({ provider: "cloudwatch", group: ceA.status!.aws!.logGroup, stream: logStreamName(run) });
  });

  it("after a crash right after RunInstances, the relaunch adopts that instance", async () => {
    const run = makeRun(ceA);
    // The "crashed" launch: the same request, sent before the operator died.
    const crashed = await admin.ec2.send(new RunInstancesCommand(runInstancesInput(ceA, run, "#!/bin/bash\n")));
    const d = await launchRun(clients, ctx(ceA), run);
    expect(d.instanceId).toBe(crashed.Instances?.[0]?.InstanceId);
    expect(await instancesOf(run.metadata.uid!)).toHaveLength(1);
  });

  it("with EC2's ClientToken rules (strict layer), a repeated launch request gives the first instance; other parameters are refused", async () => {
    const layer = strictAws();
    await layer.configure({ idempotency: true });
    try {
      const run = makeRun(ceA);
      const input = runInstancesInput(ceA, run, "#!/bin/bash\n");
      const first = await admin.ec2.send(new RunInstancesCommand(input));
      const again = await admin.ec2.send(new RunInstancesCommand(input));
      expect(again.Instances?.[0]?.InstanceId).toBe(first.Instances?.[0]?.InstanceId);
      expect(await instancesOf(run.metadata.uid!)).toHaveLength(1);
      // The same token with other user data (a relaunch that rendered another script) is refused.
      const other = runInstancesInput(ceA, run, "#!/bin/bash\necho other\n");
      await expect(admin.ec2.send(new RunInstancesCommand(other))).rejects.toMatchObject({ name: "IdempotentParameterMismatch" });
      expect(await instancesOf(run.metadata.uid!)).toHaveLength(1);
    } finally {
      await layer.reset();
    }
  });

  it("sends IMDSv2, terminate-on-shutdown, a gp3 root volume of the configured size and tags on instance and volume", async () => {
    const run = makeRun(ceA);
    const mark = sent.length;
    const d = await launchRun(clients, ctx(ceA), run);
    const [req] = sentSince(mark, "RunInstances");
    const input = req!.input as unknown as RunInstancesCommandInput;
    expect(input.ClientToken).toBe(run.metadata.uid);
    expect(input.MetadataOptions).toMatchObject({ HttpTokens: "required" });
    expect(input.InstanceInitiatedShutdownBehavior).toBe("terminate");
    expect(input.BlockDeviceMappings).toEqual([
      { DeviceName: ceA.status!.aws!.rootDeviceName, Ebs: { VolumeSize: 64, VolumeType: "gp3", DeleteOnTermination: true } },
    ]);
    expect(input.IamInstanceProfile).toEqual({ Arn: ceA.status!.aws!.instanceProfileArn });
    expect(input.InstanceMarketOptions).toBeUndefined();
    expect(Buffer.from(input.UserData ?? "", "base64").toString("utf8")).toMatch(/^#!\/bin\/bash\n/);

    // What moto recorded.
    const [inst] = await instancesOf(run.metadata.uid!);
    expect(inst?.InstanceId).toBe(d.instanceId);
    expect(inst?.MetadataOptions?.HttpTokens).toBe("required");
    expect(ceA.status!.aws!.subnetIds).toContain(inst?.SubnetId);
    const want = {
      "vmforge.dev/run-uid": run.metadata.uid!,
      "vmforge.dev/ce-uid": ceA.metadata.uid!,
      "vmforge.dev/namespace": ceA.metadata.namespace!,
      "vmforge.dev/run-name": run.metadata.name!,
      "vmforge.dev/ce-name": "ce-a",
      "vmforge.dev/managed-by": "vmforge",
      project: "it",
    };
    expect(tagsOf(inst?.Tags)).toMatchObject(want);
    const vols = await admin.ec2.send(new DescribeVolumesCommand({ Filters: [{ Name: "attachment.instance-id", Values: [d.instanceId] }] }));
    expect(vols.Volumes?.length).toBeGreaterThan(0);
    for (const v of vols.Volumes ?? []) expect(tagsOf(v.Tags)).toMatchObject(want);
  });

  it("asks for a one-time Spot instance that terminates on interruption", async () => {
    const run = makeRun(ceA, { spot: true, bootDiskSizeGiB: 30 });
    const mark = sent.length;
    const d = await launchRun(clients, ctx(ceA), run);
    const input = sentSince(mark, "RunInstances")[0]!.input as unknown as RunInstancesCommandInput;
    expect(input.InstanceMarketOptions).toEqual({ MarketType: "spot", SpotOptions: { SpotInstanceType: "one-time", InstanceInterruptionBehavior: "terminate" } });
    expect(input.BlockDeviceMappings?.[0]?.Ebs?.VolumeSize).toBe(30);
    expect(d.instance?.spot).toBe(true);
  });
});

describe("describeRuns", () => {
  it("tracks 50 Runs across 2 CEs with one DescribeInstances call per batch", async () => {
    const runs: Run[] = [];
    for (let i = 0; i < 50; i++) {
      const ce = i % 2 === 0 ? ceA : ceB;
      const run = makeRun(ce);
      await launchRun(clients, ctx(ce), run);
      runs.push(run);
    }
    // All 50 in one batch (same account and region), described through either CE's context.
    let mark = sent.length;
    const all = await describeRuns(clients, ctx(ceA), runs);
    expect(sentSince(mark, "DescribeInstances")).toHaveLength(1);
    expect(sentSince(mark)).toHaveLength(1);
    expect(all.size).toBe(50);
    for (const run of runs) {
      const d = all.get(run.metadata.uid!);
      expect(d?.state).toBe("running");
      const [inst] = await instancesOf(run.metadata.uid!);
      expect(d?.instanceId).toBe(inst?.InstanceId);
    }
    // Grouped per CE: one call per CE.
    mark = sent.length;
    for (const ce of [ceA, ceB]) {
      await describeRuns(
        clients,
        ctx(ce),
        runs.filter((r) => r.spec.computeEnvironmentRef.name === ce.metadata.name),
      );
    }
    expect(sentSince(mark, "DescribeInstances")).toHaveLength(2);
  });

  it("a Run without a machine maps to undefined", async () => {
    const run = makeRun(ceB);
    const r = await describeRuns(clients, ctx(ceB), [run]);
    expect(r.has(run.metadata.uid!)).toBe(true);
    expect(r.get(run.metadata.uid!)).toBeUndefined();
  });

  it("reads the exit code of an ended Run from its log, else from the uploaded exit-status", async () => {
    const fromLog = makeRun(ceA);
    const fromS3 = makeRun(ceB);
    await launchRun(clients, ctx(ceA), fromLog);
    await launchRun(clients, ctx(ceB), fromS3);
    await putLog(ceA, fromLog, ["N E X T F L O W", "ERROR ~ boom", "VMFORGE_EXIT_CODE=3"]);
    const key = `${runArtifactsUri(ceB, fromS3).replace(`s3://${bucket}/`, "")}/exit-status`;
    await admin.s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: "0\n" }));
    // The machines shut themselves down.
    await terminateRun(admin, ctx(ceA), fromLog);
    await terminateRun(admin, ctx(ceB), fromS3);

    const mark = sent.length;
    const r = await describeRuns(clients, ctx(ceA), [fromLog, fromS3]);
    expect(sentSince(mark, "DescribeInstances")).toHaveLength(1);
    expect(r.get(fromLog.metadata.uid!)).toMatchObject({ state: "terminated", exitCode: 3 });
    expect(r.get(fromS3.metadata.uid!)).toMatchObject({ state: "terminated", exitCode: 0 });
    // The S3 look-up used CE B's work dir although ctx was CE A's (the location is in the tags).
    expect(sentSince(mark, "GetObject").map((s) => s.input.Key)).toEqual([key]);
  });
});

describe("describeRuns after a full look (only machines not running are asked for)", () => {
  it("on EC2's own filters, the narrow call (and a second look at the Runs whose machines ended) gives what a full look gives: running, stopped and terminated machines", async () => {
    const runs: Run[] = [];
    for (let i = 0; i < 6; i++) {
      const run = makeRun(ceA);
      await launchRun(clients, ctx(ceA), run);
      runs.push(run);
    }
    const seen = await describeRuns(clients, ctx(ceA), runs);
    expect([...seen.values()].every((d) => d?.state === "running")).toBe(true);
    // Two machines end and one is stopped, all behind the operator's back.
    await terminateRun(admin, ctx(ceA), runs[0]!);
    await terminateRun(admin, ctx(ceA), runs[1]!);
    await admin.ec2.send(new StopInstancesCommand({ InstanceIds: [seen.get(runs[2]!.metadata.uid!)!.instanceId] }));

    let mark = sent.length;
    const observed = (r: Run): RunDescription | undefined => seen.get(r.metadata.uid ?? "");
    const narrow = await describeRuns(clients, { ...ctx(ceA), observed }, runs);
    const calls = sentSince(mark, "DescribeInstances");
    expect(calls).toHaveLength(2);
    expect(calls[0]?.input.Filters).toContainEqual({ Name: "instance-state-name", Values: ["pending", "shutting-down", "terminated", "stopping", "stopped"] });
    // The three machines that ended since they were seen: a second look at their Runs' machines only.
    expect(calls[1]?.input.Filters).toEqual([{ Name: `tag:${TAG_RUN_UID}`, Values: runs.slice(0, 3).map((r) => r.metadata.uid) }]);
    mark = sent.length;
    const full = await describeRuns(clients, ctx(ceA), runs);
    expect((sentSince(mark, "DescribeInstances")[0]?.input.Filters as { Name: string }[]).map((f) => f.Name)).not.toContain("instance-state-name");
    expect(narrow).toEqual(full);
    expect([0, 1, 2, 3, 4, 5].map((i) => narrow.get(runs[i]!.metadata.uid!)?.state)).toEqual(["terminated", "terminated", expect.stringMatching(/^stopp/), "running", "running", "running"]);
  });
});

describe("terminateRun and sweepOrphans", () => {
  it("terminates the Run's instance; a second call finds nothing to do", async () => {
    const run = makeRun(ceA);
    const d = await launchRun(clients, ctx(ceA), run);
    expect(await terminateRun(clients, ctx(ceA), run)).toEqual([d.instanceId]);
    const [inst] = await instancesOf(run.metadata.uid!);
    expect(["shutting-down", "terminated"]).toContain(inst?.State?.Name);
    expect(await terminateRun(clients, ctx(ceA), run)).toEqual([]);
    const desc = (await describeRuns(clients, ctx(ceA), [run])).get(run.metadata.uid!);
    expect(["shutting-down", "terminated"]).toContain(desc?.state);
  });

  it("terminates this CE's instances whose Run is gone and leaves the rest", async () => {
    const ce = makeCe(`ce-sweep`, ceA.status!.aws!);
    await admin.logs.send(new CreateLogGroupCommand({ logGroupName: ce.status!.aws!.logGroup! }));
    const live = makeRun(ce);
    const gone1 = makeRun(ce);
    const gone2 = makeRun(ce);
    const otherCe = makeRun(ceB);
    const ids = new Map<string, string>();
    for (const [c, r] of [
      [ce, live],
      [ce, gone1],
      [ce, gone2],
      [ceB, otherCe],
    ] as const) {
      ids.set(r.metadata.uid!, (await launchRun(clients, ctx(c), r)).instanceId);
    }
    const swept = await sweepOrphans(clients, ctx(ce), new Set([live.metadata.uid!]));
    expect(swept.sort()).toEqual([ids.get(gone1.metadata.uid!), ids.get(gone2.metadata.uid!)].sort());
    expect((await instancesOf(live.metadata.uid!))[0]?.State?.Name).toBe("running");
    expect((await instancesOf(otherCe.metadata.uid!))[0]?.State?.Name).toBe("running");
    expect(["shutting-down", "terminated"]).toContain((await instancesOf(gone1.metadata.uid!))[0]?.State?.Name);
    // Nothing left to sweep.
    expect(await sweepOrphans(clients, ctx(ce), new Set([live.metadata.uid!]))).toEqual([]);
  });
});

describe("readRunLog", () => {
  it("reads from the head, then continues from the cursor with only new lines", async () => {
    const run = makeRun(ceA);
    expect(await readRunLog(clients, ctx(ceA), run)).toEqual({ lines: [] });
    await putLog(ceA, run, ["line 1", "line 2", "line 3"]);
    const first = await readRunLog(clients, ctx(ceA), run);
    expect(first.lines).toEqual(["line 1", "line 2", "line 3"]);
    expect(first.next).toBeDefined();
    const idle = await readRunLog(clients, ctx(ceA), run, first.next);
    expect(idle.lines).toEqual([]);
    await putLog(ceA, run, ["line 4", "VMFORGE_EXIT_CODE=0"]);
    const second = await readRunLog(clients, ctx(ceA), run, idle.next);
    expect(second.lines).toEqual(["line 4", "VMFORGE_EXIT_CODE=0"]);
    const mark = sent.length;
    await readRunLog(clients, ctx(ceA), run, second.next);
    // Only GetLogEvents: the operator has no DescribeLogStreams or FilterLogEvents.
    expect(new Set(sentSince(mark).map((s) => s.name))).toEqual(new Set(["GetLogEvents"]));
  });
});
