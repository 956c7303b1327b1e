// The strict AWS layer in front of the shared moto (test/harness/aws-strict/), through the AWS SDK
// v3: each behaviour off (moto's answer) and on (AWS's answer). The IAM evaluation has its own
// cases at the end; the operator's least privilege under it is aws-least-privilege.test.ts.
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { CloudWatchLogsClient, CreateLogGroupCommand, CreateLogStreamCommand, DescribeLogGroupsCommand, GetLogEventsCommand } from "@aws-sdk/client-cloudwatch-logs";
import {
  CreateSubnetCommand,
  CreateTagsCommand,
  CreateVpcCommand,
  DescribeImagesCommand,
  DescribeInstancesCommand,
  EC2Client,
  ModifyInstanceAttributeCommand,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type RunInstancesCommandInput,
} from "@aws-sdk/client-ec2";
import {
  AddRoleToInstanceProfileCommand,
  AttachUserPolicyCommand,
  CreateAccessKeyCommand,
  CreateInstanceProfileCommand,
  CreatePolicyCommand,
  CreateRoleCommand,
  CreateUserCommand,
  DeleteUserPolicyCommand,
  GetRoleCommand,
  IAMClient,
  PutUserPolicyCommand,
} from "@aws-sdk/client-iam";
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { strictAws } from "../harness/helpers.js";
import { motoEndpoint } from "../harness/helpers.js";
import { waitFor } from "../support/operator.js";

const REGION = "eu-west-1";
const ACCOUNT = "123456789012";
type Keys = { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
const ADMIN: Keys = { accessKeyId: "testing", secretAccessKey: "testing" };
const suffix = randomUUID().slice(0, 6);
const layer = () => strictAws();

function clients(credentials: Keys = ADMIN, region = REGION) {
  const common = { endpoint: motoEndpoint(), region, credentials, maxAttempts: 1 };
  return {
    ec2: new EC2Client(common),
    iam: new IAMClient(common),
    sts: new STSClient(common),
    logs: new CloudWatchLogsClient(common),
    s3: new S3Client({ ...common, forcePathStyle: true }),
  };
}

let admin: ReturnType<typeof clients>;
let subnetA: string;
let subnetB: string;
let imageId: string;
let profileArn: string;

function launchInput(extra: Partial<RunInstancesCommandInput> = {}): RunInstancesCommandInput {
  return {
    MinCount: 1,
    MaxCount: 1,
    ImageId: imageId,
    InstanceType: "t3.micro",
    SubnetId: subnetA,
    TagSpecifications: [{ ResourceType: "instance", Tags: [{ Key: "layer-test", Value: suffix }, { Key: "n", Value: randomUUID() }] }],
    ...extra,
  };
}

function nOf(input: RunInstancesCommandInput): string {
  return input.TagSpecifications![0]!.Tags!.find((t) => t.Key === "n")!.Value!;
}

async function idsByTag(key: string, value: string): Promise<string[]> {
  const out = await admin.ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: `tag:${key}`, Values: [value] }] }));
  return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []).map((i) => i.InstanceId!);
}

async function idsById(id: string): Promise<string[]> {
  const out = await admin.ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }));
  return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []).map((i) => i.InstanceId!);
}

async function failure(p: Promise<unknown>): Promise<{ name: string; message: string; status: number | undefined }> {
  try {
    await p;
  } catch (e) {
    const err = e as { name: string; message: string; $metadata?: { httpStatusCode?: number } };
    return { name: err.name, message: err.message, status: err.$metadata?.httpStatusCode };
  }
  throw new Error("expected the call to fail");
}

beforeAll(async () => {
  admin = clients();
  const vpc = await admin.ec2.send(new CreateVpcCommand({ CidrBlock: "10.77.0.0/16" }));
  const a = await admin.ec2.send(new CreateSubnetCommand({ VpcId: vpc.Vpc!.VpcId!, CidrBlock: "10.77.0.0/24", AvailabilityZone: `${REGION}a` }));
  const b = await admin.ec2.send(new CreateSubnetCommand({ VpcId: vpc.Vpc!.VpcId!, CidrBlock: "10.77.1.0/24", AvailabilityZone: `${REGION}b` }));
  subnetA = a.Subnet!.SubnetId!;
  subnetB = b.Subnet!.SubnetId!;
  const images = await admin.ec2.send(new DescribeImagesCommand({ Owners: ["amazon"] }));
  imageId = images.Images!.find((i) => i.Architecture === "x86_64")!.ImageId!;
  await admin.iam.send(new CreateRoleCommand({ RoleName: `TowerForge-layer-${suffix}`, AssumeRolePolicyDocument: "{}" }));
  const p = await admin.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: `TowerForge-layer-${suffix}` }));
  await admin.iam.send(new AddRoleToInstanceProfileCommand({ InstanceProfileName: `TowerForge-layer-${suffix}`, RoleName: `TowerForge-layer-${suffix}` }));
  profileArn = p.InstanceProfile!.Arn!;
});

afterEach(async () => {
  await layer().reset();
});

describe("EC2 idempotency (ClientToken)", () => {
  it("off: moto launches a second instance for a repeated token", async () => {
    const input = launchInput({ ClientToken: randomUUID() });
    await admin.ec2.send(new RunInstancesCommand(input));
    await admin.ec2.send(new RunInstancesCommand(input));
    expect(await idsByTag("n", nOf(input))).toHaveLength(2);
  });

  it("on: the same token and parameters give the same instance; other parameters IdempotentParameterMismatch", async () => {
    await layer().configure({ idempotency: true });
    const input = launchInput({ ClientToken: randomUUID() });
    const [first, second] = await Promise.all([admin.ec2.send(new RunInstancesCommand(input)), admin.ec2.send(new RunInstancesCommand(input))]);
    const third = await admin.ec2.send(new RunInstancesCommand(input));
    const id = first.Instances![0]!.InstanceId!;
    expect([second.Instances![0]!.InstanceId, third.Instances![0]!.InstanceId]).toEqual([id, id]);
    expect(await idsByTag("n", nOf(input))).toEqual([id]);
    const err = await failure(admin.ec2.send(new RunInstancesCommand({ ...input, InstanceType: "t3.small" })));
    expect(err).toMatchObject({ name: "IdempotentParameterMismatch", status: 400 });
    // Without a token every call launches.
    const plain = launchInput();
    await admin.ec2.send(new RunInstancesCommand(plain));
    await admin.ec2.send(new RunInstancesCommand(plain));
    expect(await idsByTag("n", nOf(plain))).toHaveLength(2);
  });
});

describe("faults", () => {
  it("off: nothing injected", async () => {
    await expect(admin.ec2.send(new DescribeInstancesCommand({}))).resolves.toBeDefined();
    expect((await layer().config()).faults).toEqual([]);
  });

  it("throttling by count, as each service words it", async () => {
    await layer().configure({
      faults: [
        { action: "ec2:DescribeInstances", error: "throttle", count: 2 },
        { action: "iam:GetRole", error: "throttle", count: 1 },
        { action: "logs:*", error: "throttle", count: 1 },
        { action: "s3:GetObject", error: "throttle", count: 1 },
      ],
    });
    await layer().resetStats();
    expect(await failure(admin.ec2.send(new DescribeInstancesCommand({})))).toMatchObject({ name: "RequestLimitExceeded", status: 503 });
    expect(await failure(admin.ec2.send(new DescribeInstancesCommand({})))).toMatchObject({ name: "RequestLimitExceeded" });
    await expect(admin.ec2.send(new DescribeInstancesCommand({}))).resolves.toBeDefined();
    expect(await failure(admin.iam.send(new GetRoleCommand({ RoleName: `TowerForge-layer-${suffix}` })))).toMatchObject({ name: "Throttling", status: 400 });
    await expect(admin.iam.send(new GetRoleCommand({ RoleName: `TowerForge-layer-${suffix}` }))).resolves.toBeDefined();
    expect(await failure(admin.logs.send(new DescribeLogGroupsCommand({})))).toMatchObject({ name: "ThrottlingException", status: 400 });
    const bucket = `layer-${suffix}`;
    await admin.s3.send(new CreateBucketCommand({ Bucket: bucket, CreateBucketConfiguration: { LocationConstraint: REGION } }));
    await admin.s3.send(new PutObjectCommand({ Bucket: bucket, Key: "k", Body: "v" }));
    expect(await failure(admin.s3.send(new GetObjectCommand({ Bucket: bucket, Key: "k" })))).toMatchObject({ name: "SlowDown", status: 503 });
    const got = await admin.s3.send(new GetObjectCommand({ Bucket: bucket, Key: "k" }));
    expect(await got.Body!.transformToString()).toBe("v");
    const stats = await layer().stats();
    expect(stats.faults).toEqual({ "ec2:DescribeInstances": 2, "iam:GetRole": 1, "logs:DescribeLogGroups": 1, "s3:GetObject": 1 });
    expect(stats.calls["ec2:DescribeInstances"]).toBe(3);
  });

  it("5xx by percentage: 100 % always, 0 % never", async () => {
    await layer().configure({ faults: [{ action: "ec2:Describe*", error: "internal", percent: 100 }] });
    expect(await failure(admin.ec2.send(new DescribeInstancesCommand({})))).toMatchObject({ name: "InternalError", status: 500 });
    expect(await failure(admin.ec2.send(new DescribeImagesCommand({ Owners: ["amazon"] })))).toMatchObject({ name: "InternalError" });
    await layer().configure({ faults: [{ error: "unavailable", percent: 100, action: "iam:*" }] });
    expect(await failure(admin.iam.send(new GetRoleCommand({ RoleName: `TowerForge-layer-${suffix}` })))).toMatchObject({ name: "ServiceUnavailable", status: 503 });
    await expect(admin.ec2.send(new DescribeInstancesCommand({}))).resolves.toBeDefined();
    await layer().configure({ faults: [{ error: "internal", percent: 0 }] });
    for (let i = 0; i < 5; i++) await expect(admin.ec2.send(new DescribeInstancesCommand({}))).resolves.toBeDefined();
  });

  it("access denied as each service words it, and any refusal by code, status and message", async () => {
    await layer().configure({
      faults: [
        { action: "ec2:TerminateInstances", error: "denied", count: 2 },
        { action: "iam:GetRole", error: "denied", count: 1 },
        { action: "logs:DescribeLogGroups", error: "denied", count: 1 },
        { action: "ec2:DescribeImages", error: "refuse", code: "InvalidParameterCombination", message: "not this way", count: 1 },
      ],
    });
    // EC2's refusals end with an encoded authorization message of their own, different each time.
    const denials = [
      await failure(admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: ["i-0123456789abcdef0"] }))),
      await failure(admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: ["i-0123456789abcdef0"] }))),
    ];
    for (const d of denials) {
      expect(d).toMatchObject({ name: "UnauthorizedOperation", status: 403 });
      expect(d.message).toMatch(/^You are not authorized to perform this operation\. Encoded authorization failure message: [A-Za-z0-9]{200,}$/);
    }
    expect(denials[0]!.message).not.toBe(denials[1]!.message);
    expect(await failure(admin.iam.send(new GetRoleCommand({ RoleName: `TowerForge-layer-${suffix}` })))).toMatchObject({ name: "AccessDenied", status: 403 });
    await expect(admin.iam.send(new GetRoleCommand({ RoleName: `TowerForge-layer-${suffix}` }))).resolves.toBeDefined();
    expect(await failure(admin.logs.send(new DescribeLogGroupsCommand({})))).toMatchObject({ name: "AccessDeniedException", status: 400 });
    const refused = await failure(admin.ec2.send(new DescribeImagesCommand({ Owners: ["amazon"] })));
    expect(refused).toMatchObject({ name: "InvalidParameterCombination", status: 400 });
    expect(refused.message).toContain("not this way");
    await expect(admin.ec2.send(new DescribeImagesCommand({ Owners: ["amazon"] }))).resolves.toBeDefined();
    await layer().configure({ faults: [] });
  });
});

describe("rate limits", () => {
  it("a request rate over the action's quota is throttled (ThrottlingException), per Region, and the bucket refills", async () => {
    const group = `/layer/rate-${suffix}`;
    await admin.logs.send(new CreateLogGroupCommand({ logGroupName: group }));
    await admin.logs.send(new CreateLogStreamCommand({ logGroupName: group, logStreamName: "s" }));
    await layer().configure({ rateLimits: [{ action: "logs:GetLogEvents", perSecond: 2, burst: 3 }] });
    try {
      await layer().resetStats();
      const read = () => admin.logs.send(new GetLogEventsCommand({ logGroupName: group, logStreamName: "s" })).then(() => "ok", (e: { name?: string }) => e.name ?? "error");
      const burst = await Promise.all(Array.from({ length: 8 }, read));
      expect(burst.filter((x) => x === "ok").length).toBeGreaterThanOrEqual(3);
      expect(burst.filter((x) => x === "ok").length).toBeLessThanOrEqual(4); // the burst, and at most one refilled meanwhile
      expect(burst.filter((x) => x !== "ok").every((x) => x === "ThrottlingException")).toBe(true);
      // Other actions are not limited by the rule.
      await expect(admin.logs.send(new DescribeLogGroupsCommand({}))).resolves.toBeDefined();
      // Refilled after a second and a half (2 per second).
      await new Promise((r) => setTimeout(r, 1_500));
      expect(await Promise.all([read(), read()])).toEqual(["ok", "ok"]);
      // Another Region has its own bucket.
      const other = clients(ADMIN, "us-east-1").logs; // REGION is eu-west-1
      await other.send(new CreateLogGroupCommand({ logGroupName: group }));
      await other.send(new CreateLogStreamCommand({ logGroupName: group, logStreamName: "s" }));
      expect((await Promise.all(Array.from({ length: 3 }, () => other.send(new GetLogEventsCommand({ logGroupName: group, logStreamName: "s" })).then(() => "ok"))))).toEqual(["ok", "ok", "ok"]);
      const stats = await layer().stats();
      expect(stats.throttled["logs:GetLogEvents"]).toBe(burst.filter((x) => x !== "ok").length);
    } finally {
      await layer().configure({ rateLimits: [] });
    }
  });
});

describe("service time", () => {
  it("a latency rule makes its action answer no sooner than its time, carried out only then; other actions answer as before", async () => {
    await layer().configure({ latencies: [{ action: "ec2:RunInstances", ms: 1_500 }] });
    const input = launchInput();
    const sent = performance.now();
    const launching = admin.ec2.send(new RunInstancesCommand(input));
    // While the launch waits, other actions are answered, and the instance does not exist yet.
    await new Promise((r) => setTimeout(r, 300));
    expect(await idsByTag("n", nOf(input))).toEqual([]);
    const id = (await launching).Instances![0]!.InstanceId!;
    expect(performance.now() - sent).toBeGreaterThanOrEqual(1_500);
    expect(await idsByTag("n", nOf(input))).toEqual([id]);
  });

  it("a hold keeps its calls in flight, not carried out, until released; count holds only the next ones; a configuration without the rule lets them go; a reset drops them unanswered", async () => {
    const ids = await Promise.all([launchInput(), launchInput()].map(async (i) => (await admin.ec2.send(new RunInstancesCommand(i))).Instances![0]!.InstanceId!));
    const state = async (id: string) => (await admin.ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }))).Reservations![0]!.Instances![0]!.State!.Name;
    await layer().configure({ holds: [{ action: "ec2:TerminateInstances", count: 1 }] });
    await layer().resetStats();
    let answered = false;
    const first = admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [ids[0]!] })).then((a) => ((answered = true), a));
    await waitFor("the termination held", async () => (await layer().stats()).holding["ec2:TerminateInstances"] === 1, 10_000, 50);
    // Only the next one is held: a second termination goes through while the first waits.
    await admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [ids[1]!] }));
    expect(await state(ids[1]!)).toBe("terminated");
    await new Promise((r) => setTimeout(r, 300));
    expect(answered).toBe(false);
    expect(await state(ids[0]!)).toBe("running");
    expect(await layer().releaseHolds()).toBe(1);
    expect((await first).TerminatingInstances?.[0]?.InstanceId).toBe(ids[0]);
    expect(await state(ids[0]!)).toBe("terminated");
    const stats = await layer().stats();
    expect(stats.held["ec2:TerminateInstances"]).toBe(1);
    expect(stats.holding["ec2:TerminateInstances"] ?? 0).toBe(0);
    // A rule without count holds every call until the configuration drops it.
    const [third] = await Promise.all([launchInput()].map(async (i) => (await admin.ec2.send(new RunInstancesCommand(i))).Instances![0]!.InstanceId!));
    await layer().configure({ holds: [{ action: "ec2:Terminate*" }] });
    const held = admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [third!] }));
    await waitFor("held again", async () => (await layer().stats()).holding["ec2:TerminateInstances"] === 1, 10_000, 50);
    await layer().configure({ holds: [] });
    await held;
    expect(await state(third!)).toBe("terminated");
    // A reset drops a held call unanswered, as a broken connection would: it is not carried out.
    const [fourth] = await Promise.all([launchInput()].map(async (i) => (await admin.ec2.send(new RunInstancesCommand(i))).Instances![0]!.InstanceId!));
    await layer().configure({ holds: [{ action: "ec2:TerminateInstances" }] });
    const dropped = admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [fourth!] })).then(() => "answered", () => "failed");
    await waitFor("held before the reset", async () => (await layer().stats()).holding["ec2:TerminateInstances"] === 1, 10_000, 50);
    await layer().reset();
    expect(await dropped).toBe("failed");
    expect(await state(fourth!)).toBe("running");
  });
});

describe("eventual consistency", () => {
  it("off: a new instance is listed by tag at once, a terminated one stays listed", async () => {
    const input = launchInput();
    const id = (await admin.ec2.send(new RunInstancesCommand(input))).Instances![0]!.InstanceId!;
    expect(await idsByTag("n", nOf(input))).toEqual([id]);
    await admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
    expect(await idsByTag("n", nOf(input))).toEqual([id]);
    expect(await idsById(id)).toEqual([id]);
  });

  it("a new instance is hidden from tag-filtered DescribeInstances for a while, not from a lookup by ID", async () => {
    await layer().configure({ consistency: { newInstanceHiddenMs: 3_600_000 } });
    const input = launchInput();
    const id = (await admin.ec2.send(new RunInstancesCommand(input))).Instances![0]!.InstanceId!;
    expect(await idsByTag("n", nOf(input))).toEqual([]);
    expect(await idsByTag("layer-test", suffix)).not.toContain(id);
    expect(await idsById(id)).toEqual([id]);
    // The while is over (the window shrinks to nothing): the instance is listed.
    await layer().configure({ consistency: { newInstanceHiddenMs: 0 } });
    expect(await idsByTag("n", nOf(input))).toEqual([id]);
  });

  it("a new instance's ID is unknown to TerminateInstances and DescribeInstances for a while (InvalidInstanceID.NotFound), then known", async () => {
    await layer().configure({ consistency: { newInstanceUnknownByIdMs: 3_600_000 } });
    const input = launchInput();
    const id = (await admin.ec2.send(new RunInstancesCommand(input))).Instances![0]!.InstanceId!;
    await expect(admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }))).rejects.toMatchObject({ name: "InvalidInstanceID.NotFound" });
    await expect(idsById(id)).rejects.toMatchObject({ name: "InvalidInstanceID.NotFound" });
    await layer().configure({ consistency: { newInstanceUnknownByIdMs: 0 } });
    expect(await idsById(id)).toEqual([id]);
    await admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
  });

  it("... or for a number of tag-filtered answers", async () => {
    await layer().configure({ consistency: { newInstanceHiddenDescribes: 2 } });
    const input = launchInput();
    const id = (await admin.ec2.send(new RunInstancesCommand(input))).Instances![0]!.InstanceId!;
    expect(await idsByTag("n", nOf(input))).toEqual([]);
    expect(await idsByTag("n", nOf(input))).toEqual([]);
    expect(await idsByTag("n", nOf(input))).toEqual([id]);
  });

  it("a terminated instance shows shutting-down for the configured time, then terminated; a state filter without shutting-down leaves it out meanwhile", async () => {
    // Terminated while the behaviour was off: terminated it stays, also once it is on.
    const earlier = launchInput();
    const earlierId = (await admin.ec2.send(new RunInstancesCommand(earlier))).Instances![0]!.InstanceId!;
    await admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [earlierId] }));
    await layer().configure({ consistency: { shuttingDownMs: 3_600_000 } });
    const earlierNow = await admin.ec2.send(new DescribeInstancesCommand({ InstanceIds: [earlierId] }));
    expect(earlierNow.Reservations?.[0]?.Instances?.[0]?.State?.Name).toBe("terminated");
    const input = launchInput();
    const id = (await admin.ec2.send(new RunInstancesCommand(input))).Instances![0]!.InstanceId!;
    await admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
    const stateOf = async (filters: { Name: string; Values: string[] }[] = []): Promise<{ name?: string; code?: number }[]> => {
      const out = await admin.ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: "tag:n", Values: [nOf(input)] }, ...filters] }));
      return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []).map((i) => ({ name: i.State?.Name, code: i.State?.Code }));
    };
    expect(await stateOf()).toEqual([{ name: "shutting-down", code: 32 }]);
    expect(await stateOf([{ Name: "instance-state-name", Values: ["shutting-down", "terminated"] }])).toEqual([{ name: "shutting-down", code: 32 }]);
    expect(await stateOf([{ Name: "instance-state-name", Values: ["terminated"] }])).toEqual([]);
    const byId = await admin.ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }));
    expect(byId.Reservations?.[0]?.Instances?.[0]?.State?.Name).toBe("shutting-down");
    await layer().configure({ consistency: { shuttingDownMs: 0 } });
    expect(await stateOf()).toEqual([{ name: "terminated", code: 48 }]);
    // Shown terminated, it stays so when the setting is raised again.
    await layer().configure({ consistency: { shuttingDownMs: 3_600_000 } });
    expect(await stateOf()).toEqual([{ name: "terminated", code: 48 }]);
  });

  it("the shutting-down window runs out by itself", async () => {
    await layer().configure({ consistency: { shuttingDownMs: 5_000 } });
    const input = launchInput();
    const id = (await admin.ec2.send(new RunInstancesCommand(input))).Instances![0]!.InstanceId!;
    await admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
    const state = async (): Promise<string | undefined> => (await admin.ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }))).Reservations?.[0]?.Instances?.[0]?.State?.Name;
    expect(await state()).toBe("shutting-down");
    await new Promise((r) => setTimeout(r, 5_500));
    expect(await state()).toBe("terminated");
  });

  it("a terminated instance is forgotten after the configured time: gone from lists, NotFound by ID", async () => {
    await layer().configure({ consistency: { terminatedVisibleMs: 3_600_000 } });
    const input = launchInput();
    const id = (await admin.ec2.send(new RunInstancesCommand(input))).Instances![0]!.InstanceId!;
    await admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
    expect(await idsByTag("n", nOf(input))).toEqual([id]);
    await layer().configure({ consistency: { terminatedVisibleMs: 0 } });
    expect(await idsByTag("n", nOf(input))).toEqual([]);
    const all = await admin.ec2.send(new DescribeInstancesCommand({}));
    expect((all.Reservations ?? []).flatMap((r) => r.Instances ?? []).map((i) => i.InstanceId)).not.toContain(id);
    expect(await failure(idsById(id))).toMatchObject({ name: "InvalidInstanceID.NotFound", message: `The instance ID '${id}' does not exist` });
  });

  it("termination protection: a TerminateInstances naming a protected instance fails; the instances in its zone stay, those in others end (moto ends those named before it)", async () => {
    const launch = async (subnet: string, protect = false): Promise<string> =>
      (await admin.ec2.send(new RunInstancesCommand(launchInput({ SubnetId: subnet, ...(protect ? { DisableApiTermination: true } : {}) })))).Instances![0]!.InstanceId!;
    const before = await launch(subnetA);
    const guarded = await launch(subnetA, true);
    const after = await launch(subnetA);
    const elsewhere = await launch(subnetB);
    const state = async (id: string): Promise<string | undefined> => (await admin.ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }))).Reservations?.[0]?.Instances?.[0]?.State?.Name;
    try {
      expect(await failure(admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [before, guarded, after, elsewhere] })))).toMatchObject({
        name: "OperationNotPermitted",
        message: `The instance '${guarded}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again.`,
      });
      expect(await state(before)).toBe("running");
      expect(await state(guarded)).toBe("running");
      expect(await state(after)).toBe("running");
      expect(await state(elsewhere)).toBe("terminated");
    } finally {
      // Protection lifted (ModifyInstanceAttribute), it ends as any other.
      await admin.ec2.send(new ModifyInstanceAttributeCommand({ InstanceId: guarded, DisableApiTermination: { Value: false } }));
    }
    await admin.ec2.send(new TerminateInstancesCommand({ InstanceIds: [before, guarded, after] }));
    for (const id of [before, guarded, after]) expect(await state(id)).toBe("terminated");
  });

  it("a new instance profile is refused by RunInstances for a while (by time, or by count)", async () => {
    const name = `TowerForge-young-${suffix}`;
    await layer().configure({ consistency: { newProfileRejectedMs: 3_600_000 } });
    await admin.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: name }));
    await admin.iam.send(new AddRoleToInstanceProfileCommand({ InstanceProfileName: name, RoleName: `TowerForge-layer-${suffix}` }));
    const arn = `arn:aws:iam::${ACCOUNT}:instance-profile/${name}`;
    const err = await failure(admin.ec2.send(new RunInstancesCommand(launchInput({ IamInstanceProfile: { Arn: arn } }))));
    expect(err).toMatchObject({ name: "InvalidParameterValue", status: 400, message: `Value (${arn}) for parameter iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN` });
    // Launches without that profile are not affected.
    await expect(admin.ec2.send(new RunInstancesCommand(launchInput()))).resolves.toBeDefined();
    await layer().configure({ consistency: { newProfileRejectedMs: 0 } });
    await expect(admin.ec2.send(new RunInstancesCommand(launchInput({ IamInstanceProfile: { Arn: arn } })))).resolves.toBeDefined();

    const counted = `TowerForge-counted-${suffix}`;
    await layer().configure({ consistency: { newProfileRejections: 1 } });
    await admin.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: counted }));
    const byName = await failure(admin.ec2.send(new RunInstancesCommand(launchInput({ IamInstanceProfile: { Name: counted } }))));
    expect(byName.message).toBe(`Value (${counted}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name`);
    await expect(admin.ec2.send(new RunInstancesCommand(launchInput({ IamInstanceProfile: { Name: counted } })))).resolves.toBeDefined();
  });
});

describe("crash points", () => {
  const victim = (): { child: ChildProcess; died: Promise<NodeJS.Signals | null> } => {
    const child = spawn("sleep", ["60"], { stdio: "ignore" });
    return { child, died: new Promise((r) => child.once("exit", (_code, signal) => r(signal))) };
  };
  const roleExists = async (name: string): Promise<boolean> => {
    try {
      await admin.iam.send(new GetRoleCommand({ RoleName: name }));
      return true;
    } catch {
      return false;
    }
  };

  it("count each key's writes (not its reads), SIGKILL the process before or after write N, and drop the answer", async () => {
    const key = `AKIACRASHLAYER${suffix.toUpperCase()}`;
    // no retries: the dropped connection is seen once
    const iam = new IAMClient({ endpoint: motoEndpoint(), region: REGION, credentials: { accessKeyId: key, secretAccessKey: "x" }, maxAttempts: 1 });
    const role = (n: number) => `crash-layer-${suffix}-${n}`;
    const create = (n: number) => iam.send(new CreateRoleCommand({ RoleName: role(n), AssumeRolePolicyDocument: "{}" }));
    await create(1);
    await iam.send(new GetRoleCommand({ RoleName: role(1) }));

    const before = victim();
    await layer().armCrash({ accessKeyId: key, pid: before.child.pid ?? 0, atWrite: 2, mode: "before" });
    await expect(create(2)).rejects.toThrow();
    expect(await before.died).toBe("SIGKILL");
    expect(await roleExists(role(2))).toBe(false); // never carried out

    const after = victim();
    await layer().armCrash({ accessKeyId: key, pid: after.child.pid ?? 0, atWrite: 3, mode: "after" });
    await expect(create(3)).rejects.toThrow();
    expect(await after.died).toBe("SIGKILL");
    expect(await roleExists(role(3))).toBe(true); // carried out, its answer lost

    await create(4); // fired once each: nothing armed any more
    expect(await layer().writesOf(key)).toEqual(["iam:CreateRole", "iam:CreateRole", "iam:CreateRole", "iam:CreateRole"]);
    const { armed, fired } = await layer().crashes();
    expect(armed).toEqual([]);
    expect(fired.filter((f) => f.accessKeyId === key).map((f) => [f.atWrite, f.mode, f.action, f.forwardedStatus])).toEqual([
      [2, "before", "iam:CreateRole", undefined],
      [3, "after", "iam:CreateRole", 200],
    ]);
    // reset() disarms
    await layer().armCrash({ accessKeyId: key, pid: 999_999_999, atWrite: 9, mode: "before" });
    await layer().reset();
    expect((await layer().crashes()).armed).toEqual([]);
  });
});

describe("capacity", () => {
  it("off: every type launches in every zone", async () => {
    await expect(admin.ec2.send(new RunInstancesCommand(launchInput({ InstanceType: "m5.large", SubnetId: subnetA })))).resolves.toBeDefined();
  });

  it("Unsupported: a type not offered in the subnet's zone; the other zone launches it", async () => {
    await layer().configure({ capacity: [{ availabilityZone: `${REGION}a`, instanceType: "m5.large", error: "Unsupported" }] });
    const err = await failure(admin.ec2.send(new RunInstancesCommand(launchInput({ InstanceType: "m5.large", SubnetId: subnetA }))));
    expect(err.name).toBe("Unsupported");
    expect(err.status).toBe(400);
    expect(err.message).toMatch(
      new RegExp(`^Your requested instance type \\(m5\\.large\\) is not supported in your requested Availability Zone \\(${REGION}a\\)\\. Please retry your request by not specifying an Availability Zone or choosing ${REGION}b, `),
    );
    await expect(admin.ec2.send(new RunInstancesCommand(launchInput({ InstanceType: "m5.large", SubnetId: subnetB })))).resolves.toBeDefined();
    await expect(admin.ec2.send(new RunInstancesCommand(launchInput({ InstanceType: "t3.micro", SubnetId: subnetA })))).resolves.toBeDefined();
  });

  it("InsufficientInstanceCapacity per zone and type, for a count of launches", async () => {
    await layer().configure({ capacity: [{ availabilityZone: "*", instanceType: "c5.xlarge", error: "InsufficientInstanceCapacity", count: 2 }] });
    for (const subnet of [subnetA, subnetB]) {
      const err = await failure(admin.ec2.send(new RunInstancesCommand(launchInput({ InstanceType: "c5.xlarge", SubnetId: subnet }))));
      expect(err.name).toBe("InsufficientInstanceCapacity");
      expect(err.status).toBe(500);
      expect(err.message).toMatch(/^We currently do not have sufficient c5\.xlarge capacity in the Availability Zone you requested \(eu-west-1[ab]\)\./);
    }
    await expect(admin.ec2.send(new RunInstancesCommand(launchInput({ InstanceType: "c5.xlarge", SubnetId: subnetA })))).resolves.toBeDefined();
  });
});

describe("IAM as AWS evaluates it", () => {
  let scoped: Keys;
  let denier: Keys;
  let regional: Keys;
  const bucket = `iam-layer-${suffix}`;
  const group = `/layer/${suffix}`;

  async function user(name: string, doc: object, inline = false): Promise<Keys> {
    await admin.iam.send(new CreateUserCommand({ UserName: name }));
    if (inline) {
      await admin.iam.send(new PutUserPolicyCommand({ UserName: name, PolicyName: "p", PolicyDocument: JSON.stringify(doc) }));
    } else {
      const p = await admin.iam.send(new CreatePolicyCommand({ PolicyName: `${name}-p`, PolicyDocument: JSON.stringify(doc) }));
      await admin.iam.send(new AttachUserPolicyCommand({ UserName: name, PolicyArn: p.Policy!.Arn! }));
    }
    const k = (await admin.iam.send(new CreateAccessKeyCommand({ UserName: name }))).AccessKey!;
    return { accessKeyId: k.AccessKeyId!, secretAccessKey: k.SecretAccessKey! };
  }

  beforeAll(async () => {
    scoped = await user(`scoped-${suffix}`, {
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Action: ["iam:CreateRole", "iam:CreateInstanceProfile"], Resource: ["arn:aws:iam::*:role/TowerForge-*", "arn:aws:iam::*:instance-profile/TowerForge-*"] },
        { Effect: "Allow", Action: "iam:PassRole", Resource: "arn:aws:iam::*:role/TowerForge-*" },
        { Effect: "Allow", Action: ["ec2:RunInstances", "ec2:DescribeInstances"], Resource: "*" },
        // Tags at launch only (the condition AWS documents for tag-on-create).
        { Effect: "Allow", Action: "ec2:CreateTags", Resource: "arn:aws:ec2:*:*:instance/*", Condition: { StringEquals: { "ec2:CreateAction": "RunInstances" } } },
        { Effect: "Allow", Action: "logs:GetLogEvents", Resource: "arn:aws:logs:*:*:log-group:*:log-stream:*" },
        { Effect: "Allow", Action: "s3:GetObject", Resource: `arn:aws:s3:::${bucket}/work/*` },
        { Effect: "Allow", Action: "sts:AssumeRole", Resource: "*" },
      ],
    });
    denier = await user(
      `denier-${suffix}`,
      {
        Version: "2012-10-17",
        Statement: [
          { Effect: "Allow", NotAction: "iam:*", Resource: "*" },
          { Effect: "Deny", Action: "ec2:TerminateInstances", Resource: "*" },
        ],
      },
      true,
    );
    regional = await user(`regional-${suffix}`, {
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: "ec2:DescribeInstances", Resource: "*", Condition: { StringEquals: { "aws:RequestedRegion": "eu-west-1" } } }],
    });
    await admin.s3.send(new CreateBucketCommand({ Bucket: bucket, CreateBucketConfiguration: { LocationConstraint: REGION } }));
    await admin.s3.send(new PutObjectCommand({ Bucket: bucket, Key: "work/exit-status", Body: "0" }));
    await admin.s3.send(new PutObjectCommand({ Bucket: bucket, Key: "other/secret", Body: "x" }));
    await admin.logs.send(new CreateLogGroupCommand({ logGroupName: group }));
    await admin.logs.send(new CreateLogStreamCommand({ logGroupName: group, logStreamName: "s" }));
    await admin.iam.send(new CreateRoleCommand({ RoleName: `Other-${suffix}`, AssumeRolePolicyDocument: "{}" }));
    await admin.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: `Other-${suffix}` }));
    await admin.iam.send(new AddRoleToInstanceProfileCommand({ InstanceProfileName: `Other-${suffix}`, RoleName: `Other-${suffix}` }));
    await admin.iam.send(
      new CreateRoleCommand({
        RoleName: `Assumable-${suffix}`,
        AssumeRolePolicyDocument: JSON.stringify({
          Version: "2012-10-17",
          Statement: [{ Effect: "Allow", Principal: { AWS: `arn:aws:iam::${ACCOUNT}:user/scoped-${suffix}` }, Action: "sts:AssumeRole", Condition: { StringEquals: { "sts:ExternalId": "ext" } } }],
        }),
      }),
    );
  });

  it("off: moto lets any key do anything", async () => {
    const c = clients({ accessKeyId: "AKIAWHOEVER000000000", secretAccessKey: "nope" });
    await expect(c.iam.send(new CreateRoleCommand({ RoleName: `Free-${suffix}`, AssumeRolePolicyDocument: "{}" }))).resolves.toBeDefined();
  });

  it("on: unknown keys and wrong secrets are refused as each service words it; root keys pass", async () => {
    await layer().configure({ iam: { enforce: true, rootAccessKeys: ["testing"] } });
    const unknown = clients({ accessKeyId: "AKIAWHOEVER000000000", secretAccessKey: "nope" });
    expect(await failure(unknown.iam.send(new GetRoleCommand({ RoleName: `Other-${suffix}` })))).toMatchObject({ name: "InvalidClientTokenId", status: 403 });
    expect(await failure(unknown.ec2.send(new DescribeInstancesCommand({})))).toMatchObject({ name: "AuthFailure", status: 401 });
    expect(await failure(unknown.logs.send(new DescribeLogGroupsCommand({})))).toMatchObject({ name: "UnrecognizedClientException" });
    expect(await failure(unknown.s3.send(new GetObjectCommand({ Bucket: bucket, Key: "work/exit-status" })))).toMatchObject({ name: "InvalidAccessKeyId", status: 403 });
    const wrong = clients({ accessKeyId: scoped.accessKeyId, secretAccessKey: "not-the-secret" });
    expect(await failure(wrong.iam.send(new GetRoleCommand({ RoleName: `Other-${suffix}` })))).toMatchObject({ name: "SignatureDoesNotMatch" });
    expect(await failure(wrong.s3.send(new GetObjectCommand({ Bucket: bucket, Key: "work/exit-status" })))).toMatchObject({ name: "SignatureDoesNotMatch" });
    await expect(admin.iam.send(new GetRoleCommand({ RoleName: `Other-${suffix}` }))).resolves.toBeDefined();
    // Any valid identity may ask who it is.
    expect((await clients(scoped).sts.send(new GetCallerIdentityCommand({}))).Arn).toBe(`arn:aws:iam::${ACCOUNT}:user/scoped-${suffix}`);
  });

  it("on: resource ARNs with wildcards scope IAM, PassRole on RunInstances, log streams and S3 keys", async () => {
    await layer().configure({ iam: { enforce: true, rootAccessKeys: ["testing"] } });
    const c = clients(scoped);
    await expect(c.iam.send(new CreateRoleCommand({ RoleName: `TowerForge-new-${suffix}`, AssumeRolePolicyDocument: "{}" }))).resolves.toBeDefined();
    await expect(c.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: `TowerForge-new-${suffix}` }))).resolves.toBeDefined();
    const role = await failure(c.iam.send(new CreateRoleCommand({ RoleName: `Other-new-${suffix}`, AssumeRolePolicyDocument: "{}" })));
    expect(role).toMatchObject({ name: "AccessDenied", status: 403 });
    expect(role.message).toBe(
      `User: arn:aws:iam::${ACCOUNT}:user/scoped-${suffix} is not authorized to perform: iam:CreateRole on resource: arn:aws:iam::${ACCOUNT}:role/Other-new-${suffix} because no identity-based policy allows the iam:CreateRole action`,
    );
    expect((await failure(c.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: `Other-new-${suffix}` })))).name).toBe("AccessDenied");
    expect((await failure(c.iam.send(new GetRoleCommand({ RoleName: `TowerForge-new-${suffix}` })))).message).toContain("iam:GetRole");

    await expect(c.ec2.send(new RunInstancesCommand(launchInput({ IamInstanceProfile: { Arn: profileArn } })))).resolves.toBeDefined();
    const pass = await failure(c.ec2.send(new RunInstancesCommand(launchInput({ IamInstanceProfile: { Name: `Other-${suffix}` } }))));
    expect(pass).toMatchObject({ name: "UnauthorizedOperation", status: 403 });
    expect(pass.message).toContain(`is not authorized to perform: iam:PassRole on resource: arn:aws:iam::${ACCOUNT}:role/Other-${suffix}`);
    expect(pass.message).toMatch(/ because no identity-based policy allows the iam:PassRole action\. Encoded authorization failure message: [A-Za-z0-9]+$/);
    expect((await failure(c.ec2.send(new TerminateInstancesCommand({ InstanceIds: ["i-0123456789abcdef0"] })))).message).toContain(
      `ec2:TerminateInstances on resource: arn:aws:ec2:${REGION}:${ACCOUNT}:instance/i-0123456789abcdef0`,
    );

    await expect(c.logs.send(new GetLogEventsCommand({ logGroupName: group, logStreamName: "s" }))).resolves.toBeDefined();
    const logs = await failure(c.logs.send(new DescribeLogGroupsCommand({})));
    expect(logs).toMatchObject({ name: "AccessDeniedException" });
    expect(logs.message).toContain("logs:DescribeLogGroups");

    const got = await c.s3.send(new GetObjectCommand({ Bucket: bucket, Key: "work/exit-status" }));
    expect(await got.Body!.transformToString()).toBe("0");
    const s3 = await failure(c.s3.send(new GetObjectCommand({ Bucket: bucket, Key: "other/secret" })));
    expect(s3).toMatchObject({ name: "AccessDenied", status: 403 });
    expect(s3.message).toContain(`s3:GetObject on resource: "arn:aws:s3:::${bucket}/other/secret"`);
    // Allowed to read the prefix but not to list the bucket: a missing key is AccessDenied, as S3 answers.
    expect(await failure(c.s3.send(new GetObjectCommand({ Bucket: bucket, Key: "work/missing" })))).toMatchObject({ name: "AccessDenied", message: "Access Denied" });
    expect(await failure(admin.s3.send(new GetObjectCommand({ Bucket: bucket, Key: "work/missing" })))).toMatchObject({ name: "NoSuchKey" });
  });

  it("on, with a policy change delay: access checks go by each identity's policies as they were the delay before, so two changes close together each count the delay after their own", async () => {
    const delay = 3_000;
    const name = `slow-${suffix}`;
    const allow = { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "ec2:DescribeInstances", Resource: "*" }] };
    const k = await user(name, allow, true);
    await layer().configure({ iam: { enforce: true, rootAccessKeys: ["testing"], policyChangeDelayMs: delay } });
    try {
      const ec2 = clients(k).ec2;
      const allowed = async (): Promise<boolean> => {
        try {
          await ec2.send(new DescribeInstancesCommand({}));
          return true;
        } catch (e) {
          if ((e as { name?: string }).name === "UnauthorizedOperation") return false;
          throw e;
        }
      };
      const sleepUntil = async (t: number): Promise<void> => {
        const left = t - Date.now();
        if (left > 0) await new Promise((r) => setTimeout(r, left));
      };
      expect(await allowed()).toBe(true);
      // Taken away: still allowed for the delay.
      await admin.iam.send(new DeleteUserPolicyCommand({ UserName: name, PolicyName: "p" }));
      const revokedBy = Date.now();
      expect(await allowed()).toBe(true);
      // Given back half a delay later.
      await sleepUntil(revokedBy + delay / 2);
      const grantedFrom = Date.now();
      await admin.iam.send(new PutUserPolicyCommand({ UserName: name, PolicyName: "p", PolicyDocument: JSON.stringify(allow) }));
      // The layer dates the change when it carries it out, after saving every identity's policies
      // (slow with many identities on a loaded machine): between grantedFrom and grantedBy.
      const grantedBy = Date.now();
      // Once the revocation counts and before the grant does: denied (the grant does not count
      // early because the revocation's delay is over).
      await sleepUntil(revokedBy + delay + 100);
      const asked = Date.now();
      const between = await allowed();
      if (Date.now() < grantedFrom + delay) expect(between).toBe(false);
      else expect.fail(`the check at +${asked - revokedBy} ms came after the grant counted; the machine was too slow for this test's window`);
      await sleepUntil(grantedBy + delay + 200);
      expect(await allowed()).toBe(true);
    } finally {
      await layer().configure({ iam: { enforce: true, rootAccessKeys: ["testing"] } });
    }
  });

  it("on: explicit Deny wins, NotAction, conditions, and role trust policies with an external id", async () => {
    await layer().configure({ iam: { enforce: true, rootAccessKeys: ["testing"] } });
    const d = clients(denier);
    await expect(d.ec2.send(new DescribeInstancesCommand({}))).resolves.toBeDefined();
    const term = await failure(d.ec2.send(new TerminateInstancesCommand({ InstanceIds: ["i-0123456789abcdef0"] })));
    expect(term.message).toContain("with an explicit deny in an identity-based policy");
    expect((await failure(d.iam.send(new GetRoleCommand({ RoleName: `Other-${suffix}` })))).name).toBe("AccessDenied");

    await expect(clients(regional).ec2.send(new DescribeInstancesCommand({}))).resolves.toBeDefined();
    expect((await failure(clients(regional, "us-west-2").ec2.send(new DescribeInstancesCommand({})))).name).toBe("UnauthorizedOperation");

    const sts = clients(scoped).sts;
    const roleArn = `arn:aws:iam::${ACCOUNT}:role/Assumable-${suffix}`;
    expect((await failure(sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: "s", ExternalId: "wrong" })))).name).toBe("AccessDenied");
    const assumed = await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: "s", ExternalId: "ext" }));
    const session = clients({ accessKeyId: assumed.Credentials!.AccessKeyId!, secretAccessKey: assumed.Credentials!.SecretAccessKey!, sessionToken: assumed.Credentials!.SessionToken! });
    // The role has no policy: its session may do nothing but ask who it is.
    expect((await failure(session.ec2.send(new DescribeInstancesCommand({})))).name).toBe("UnauthorizedOperation");
    await expect(session.sts.send(new GetCallerIdentityCommand({}))).resolves.toBeDefined();
    // scoped may tag instances only as it launches them (ec2:CreateAction), not afterwards ...
    expect((await failure(clients(scoped).ec2.send(new CreateTagsCommand({ Resources: ["i-0123456789abcdef0"], Tags: [{ Key: "a", Value: "b" }] })))).name).toBe("UnauthorizedOperation");
    // ... and a launch that tags the volume too needs ec2:CreateTags on volumes, which it lacks.
    const volumeTags = launchInput({ TagSpecifications: [{ ResourceType: "volume", Tags: [{ Key: "a", Value: "b" }] }] });
    expect((await failure(clients(scoped).ec2.send(new RunInstancesCommand(volumeTags)))).message).toContain(`ec2:CreateTags on resource: arn:aws:ec2:${REGION}:${ACCOUNT}:volume/*`);
  });
});
