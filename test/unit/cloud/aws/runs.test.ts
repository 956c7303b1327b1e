// runs.ts against recording stand-in clients (request shapes, batching, retries, ownership).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { Instance, RunInstancesCommandInput } from "@aws-sdk/client-ec2";
import {
  FILTER_VALUES_MAX,
  UNSEEN_NARROW_MAX,
  TAG_ARTIFACTS,
  TAG_LOG_GROUP,
  TAG_RUN_UID,
  describeRuns,
  launchRun,
  pickSubnet,
  readRunLog,
  runInstancesInput,
  sweepOrphans,
  terminateRun,
  terminateRuns,
  type RunClients,
} from "../../../../src/cloud/aws/runs.js";
import { renderUserData, runArtifactsUri } from "../../../../src/cloud/aws/launcher.js";
import { operatorActions } from "../../../../src/cloud/aws/policy.js";
import { CloudError, type EnvContext, type RunDescription } from "../../../../src/cloud/provider.js";
import { createLogger } from "../../../../src/engine/logger.js";
import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import { sampleCe, sampleRun } from "../../../fixtures/launcher/harness.js";

interface Call {
  name: string;
  input: Record<string, unknown>;
}
type Handler = (name: string, input: Record<string, unknown>) => unknown;

class AwsError extends Error {
  constructor(
    name: string,
    message: string,
    readonly $metadata = { httpStatusCode: 400 },
  ) {
    super(message);
    this.name = name;
  }
}

function fakeClients(handler: Handler): { clients: RunClients; calls: Call[] } {
  const calls: Call[] = [];
  const client = {
    send: async (cmd: { constructor: { name: string }; input: Record<string, unknown> }) => {
      const name = cmd.constructor.name.replace(/Command$/, "");
      calls.push({ name, input: cmd.input });
      return handler(name, cmd.input);
    },
  };
  return { clients: { ec2: client, logs: client, s3: client } as unknown as RunClients, calls };
}

function ctxFor(ce: ComputeEnvironment): EnvContext {
  return { ce, credentials: { source: "ambient", data: {} }, logger: createLogger({ level: "silent" }) };
}

function instanceFor(run: Run, ce: ComputeEnvironment, over: Partial<Instance> = {}, extraTags: Record<string, string> = {}): Instance {
  const input = runInstancesInput(ce, run, "#!/bin/bash\n");
  const tags = [...(input.TagSpecifications?.[0]?.Tags ?? [])];
  for (const [Key, Value] of Object.entries(extraTags)) {
    const i = tags.findIndex((t) => t.Key === Key);
    if (i >= 0) tags[i] = { Key, Value };
    else tags.push({ Key, Value });
  }
  return {
    InstanceId: `i-${(run.metadata.uid ?? "").replace(/-/g, "").slice(0, 17)}`,
    InstanceType: "m6i.large",
    State: { Name: "running", Code: 16 },
    LaunchTime: new Date("2025-11-25T00:00:00Z"),
    Placement: { AvailabilityZone: "eu-west-1a" },
    PrivateIpAddress: "10.0.0.5",
    Tags: tags,
    ...over,
  };
}

function uidN(n: number): string {
  return `00000000-0000-0000-0000-${String(n).padStart(12, "0")}`;
}

const CE = sampleCe({ aws: { keyPair: "my-key", bootDiskSizeGiB: 80, tags: { team: "genomics", "vmforge.dev/run-uid": "spoof", Name: "mine" } } });

describe("RunInstances request", () => {
  it("has the idempotency token, profile, network, disk, IMDSv2, shutdown behaviour, tags and user data", () => {
    const run = sampleRun();
    const ud = renderUserData({ ce: CE, run, envStatus: CE.status!.aws! });
    const input = runInstancesInput(CE, run, ud);
    expect(input).toMatchObject({
      ClientToken: run.metadata.uid,
      MinCount: 1,
      MaxCount: 1,
      ImageId: "ami-0123456789abcdef0",
      InstanceType: "m6i.large",
      IamInstanceProfile: { Arn: CE.status!.aws!.instanceProfileArn },
      SecurityGroupIds: ["sg-1111"],
      KeyName: "my-key",
      BlockDeviceMappings: [{ DeviceName: "/dev/xvda", Ebs: { VolumeSize: 80, VolumeType: "gp3", DeleteOnTermination: true } }],
      MetadataOptions: { HttpTokens: "required", HttpEndpoint: "enabled" },
      InstanceInitiatedShutdownBehavior: "terminate",
    } satisfies Partial<RunInstancesCommandInput>);
    expect(input.InstanceMarketOptions).toBeUndefined();
    expect(CE.status!.aws!.subnetIds).toContain(input.SubnetId);
    expect(Buffer.from(input.UserData ?? "", "base64").toString("utf8")).toBe(ud);
    const [inst, vol] = input.TagSpecifications ?? [];
    expect(inst?.ResourceType).toBe("instance");
    expect(vol?.ResourceType).toBe("volume");
    expect(vol?.Tags).toEqual(inst?.Tags);
    const tags = Object.fromEntries((inst?.Tags ?? []).map((t) => [t.Key, t.Value]));
    expect(tags).toMatchObject({
      "vmforge.dev/run-uid": run.metadata.uid,
      "vmforge.dev/ce-uid": CE.metadata.uid,
      "vmforge.dev/namespace": "team-a",
      "vmforge.dev/run-name": "hello-1",
      "vmforge.dev/ce-name": "ce-a",
      "vmforge.dev/managed-by": "vmforge",
      team: "genomics",
      Name: "mine",
      [TAG_LOG_GROUP]: "/vmforge/team-a/ce-a",
      [TAG_ARTIFACTS]: `s3://vmforge-work/pipelines/.vmforge/runs/${run.metadata.uid}`,
    });
  });

  it("Run overrides: Spot (one-time, terminate), instance type and disk size", () => {
    const run = sampleRun({ overrides: { spot: true, instanceType: "c6i.2xlarge", bootDiskSizeGiB: 200 } });
    const input = runInstancesInput(CE, run, "x");
    expect(input.InstanceMarketOptions).toEqual({ MarketType: "spot", SpotOptions: { SpotInstanceType: "one-time", InstanceInterruptionBehavior: "terminate" } });
    expect(input.InstanceType).toBe("c6i.2xlarge");
    expect(input.BlockDeviceMappings?.[0]?.Ebs?.VolumeSize).toBe(200);
  });

  it("defaults the disk to 50 GiB and omits unset key pair and security groups", () => {
    const ce = sampleCe();
    ce.status!.aws!.securityGroupIds = [];
    const input = runInstancesInput(ce, sampleRun(), "x");
    expect(input.BlockDeviceMappings?.[0]?.Ebs?.VolumeSize).toBe(50);
    expect(input.KeyName).toBeUndefined();
    expect(input.SecurityGroupIds).toBeUndefined();
  });

  it("picks subnets deterministically and spreads Runs over them", () => {
    const subnets = ["a", "b", "c"];
    expect(pickSubnet(subnets, uidN(1))).toBe(pickSubnet(subnets, uidN(1)));
    const used = new Set(Array.from({ length: 60 }, (_, i) => pickSubnet(subnets, uidN(i))));
    expect(used).toEqual(new Set(subnets));
  });

  it("is Retryable while the CE has not recorded its instance profile", () => {
    const ce = sampleCe();
    delete ce.status!.aws!.instanceProfileArn;
    expect(() => runInstancesInput(ce, sampleRun(), "x")).toThrow(expect.objectContaining({ kind: "Retryable", reason: "EnvironmentNotReady" }));
  });
});

describe("launchRun", () => {
  it("returns the Run's existing instance without calling RunInstances", async () => {
    const run = sampleRun();
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, CE)] }] };
      throw new Error(`unexpected ${name}`);
    });
    const d = await launchRun(clients, ctxFor(CE), run);
    expect(d.instanceId).toBe(instanceFor(run, CE).InstanceId);
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances"]);
    expect(calls[0]?.input.Filters).toEqual([{ Name: `tag:${TAG_RUN_UID}`, Values: [run.metadata.uid] }]);
  });

  it("on a first attempt sends RunInstances with the Run's token and no tag look-up before it", async () => {
    const run = sampleRun();
    const { clients, calls } = fakeClients((name) => {
      if (name === "RunInstances") return { Instances: [instanceFor(run, CE, { State: { Name: "pending", Code: 0 } })] };
      throw new Error(`unexpected ${name}`);
    });
    const d = await launchRun(clients, ctxFor(CE), run, { firstAttempt: true });
    expect(d.instanceId).toBe(instanceFor(run, CE).InstanceId);
    expect(calls.map((c) => c.name)).toEqual(["RunInstances"]);
    expect(calls[0]?.input.ClientToken).toBe(run.metadata.uid);
  });

  it("retries the instance-profile propagation error with bounded backoff, then succeeds", async () => {
    const run = sampleRun();
    let tries = 0;
    const slept: number[] = [];
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      if (name === "RunInstances") {
        tries++;
        if (tries < 3) throw new AwsError("InvalidParameterValue", "Value (arn:aws:iam::1:instance-profile/TowerForge-x) for parameter iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN");
        return { Instances: [instanceFor(run, CE, { State: { Name: "pending", Code: 0 } })] };
      }
      throw new Error(name);
    });
    const d = await launchRun(clients, ctxFor(CE), run, { sleep: async (ms) => void slept.push(ms) });
    expect(d.state).toBe("pending");
    expect(d.log).toEqual({ provider: "cloudwatch", group: "/vmforge/team-a/ce-a", stream: "team-a/hello-1/0f1e2d3c" });
    expect(slept).toEqual([2000, 4000]);
    expect(calls.filter((c) => c.name === "RunInstances").every((c) => c.input.ClientToken === run.metadata.uid)).toBe(true);
  });

  it("gives up after five tries with a Retryable error", async () => {
    const slept: number[] = [];
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      throw new AwsError("InvalidParameterValue", "Invalid IAM Instance Profile name");
    });
    const err = await launchRun(clients, ctxFor(CE), sampleRun(), { sleep: async (ms) => void slept.push(ms) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CloudError);
    expect(err).toMatchObject({ kind: "Retryable", reason: "InstanceProfileNotPropagated" });
    expect(calls.filter((c) => c.name === "RunInstances")).toHaveLength(5);
    expect(slept).toEqual([2000, 4000, 8000, 8000]);
  });

  it("other invalid parameters are Terminal at once", async () => {
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      throw new AwsError("InvalidParameterValue", "Invalid value 'foo' for instanceType");
    });
    const err = await launchRun(clients, ctxFor(CE), sampleRun(), { sleep: async () => undefined }).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: "Terminal" });
    expect(calls.filter((c) => c.name === "RunInstances")).toHaveLength(1);
  });

  it("IdempotentParameterMismatch finds the earlier launch", async () => {
    const run = sampleRun();
    let described = 0;
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: described++ === 0 ? [] : [{ Instances: [instanceFor(run, CE)] }] };
      throw new AwsError("IdempotentParameterMismatch", "token reused with other parameters");
    });
    const d = await launchRun(clients, ctxFor(CE), run);
    expect(d.instanceId).toBe(instanceFor(run, CE).InstanceId);
  });

  it("capacity shortages are Retryable", async () => {
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      throw new AwsError("InsufficientInstanceCapacity", "We currently do not have sufficient capacity");
    });
    await expect(launchRun(clients, ctxFor(CE), sampleRun())).rejects.toMatchObject({ kind: "Retryable", reason: "InsufficientCapacity" });
  });
});

/** The part of an S3 object body that runs.ts uses. */
function body(text: string): unknown {
  return { transformToString: async () => text };
}

describe("describeRuns", () => {
  it("up to 200 Runs: one DescribeInstances filtered on their UIDs", async () => {
    const runs = Array.from({ length: FILTER_VALUES_MAX }, (_, i) => sampleRun({ name: `r${i}`, uid: uidN(i) }));
    const { clients, calls } = fakeClients((name, input) => {
      if (name !== "DescribeInstances") throw new Error(name);
      const values = (input.Filters as { Values: string[] }[])[0]?.Values ?? [];
      return { Reservations: [{ Instances: values.map((uid) => instanceFor(runs.find((r) => r.metadata.uid === uid)!, CE)) }] };
    });
    const result = await describeRuns(clients, ctxFor(CE), runs);
    expect(calls).toHaveLength(1); // running machines: no exit-code look-ups
    expect((calls[0]?.input.Filters as { Name: string }[])[0]?.Name).toBe(`tag:${TAG_RUN_UID}`);
    expect(result.size).toBe(FILTER_VALUES_MAX);
  });

  it("more Runs: the filter does not grow with their number; one call per 1,000 instances (pages)", async () => {
    const runs = Array.from({ length: 2_500 }, (_, i) => sampleRun({ name: `r${i}`, uid: uidN(i) }));
    // The account also holds vmforge instances of Runs this poll does not follow.
    const strangers = Array.from({ length: 300 }, (_, i) => sampleRun({ name: `s${i}`, uid: uidN(10_000 + i) }));
    const all = [...runs, ...strangers].map((r) => instanceFor(r, CE));
    const { clients, calls } = fakeClients((name, input) => {
      if (name !== "DescribeInstances") throw new Error(name);
      const start = input.NextToken ? Number(input.NextToken) : 0;
      const max = Number(input.MaxResults);
      const page = all.slice(start, start + max);
      return { Reservations: [{ Instances: page }], ...(start + max < all.length ? { NextToken: String(start + max) } : {}) };
    });
    const result = await describeRuns(clients, ctxFor(CE), runs);
    const describes = calls.filter((c) => c.name === "DescribeInstances");
    expect(describes).toHaveLength(3); // 2,800 instances, 1,000 per page
    for (const c of describes) {
      expect(c.input.MaxResults).toBe(1000);
      expect(c.input.Filters).toEqual([
        { Name: "tag:vmforge.dev/managed-by", Values: ["vmforge"] },
        { Name: "tag-key", Values: [TAG_RUN_UID] },
      ]);
    }
    expect(result.size).toBe(2_500);
    expect([...result.values()].every((d) => d?.state === "running")).toBe(true);
    expect(calls).toHaveLength(3);
  });

  it("maps states, instance details and a missing machine", async () => {
    const a = sampleRun({ name: "a", uid: uidN(1) });
    const b = sampleRun({ name: "b", uid: uidN(2) });
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(a, CE, { State: { Name: "pending", Code: 0 }, InstanceLifecycle: "spot" })] }] };
      throw new Error(name);
    });
    const result = await describeRuns(clients, ctxFor(CE), [a, b]);
    expect(result.get(uidN(2))).toBeUndefined();
    expect(result.has(uidN(2))).toBe(true);
    expect(result.get(uidN(1))).toEqual({
      instanceId: instanceFor(a, CE).InstanceId,
      state: "pending",
      launchedAt: "2025-11-25T00:00:00.000Z",
      instance: { id: instanceFor(a, CE).InstanceId, type: "m6i.large", zone: "eu-west-1a", privateIp: "10.0.0.5", spot: true, state: "pending" },
      log: { provider: "cloudwatch", group: "/vmforge/team-a/ce-a", stream: "team-a/a/00000000" },
      artifacts: runArtifactsUri(CE, a),
    });
  });

  it("reads the exit code of an ended machine from its markers stream, in the log group its tags name", async () => {
    const run = sampleRun();
    const other = sampleCe();
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, CE, { State: { Name: "terminated", Code: 48 } })] }] };
      if (name === "GetLogEvents") return { events: [{ message: "Hello world!" }, { message: "VMFORGE_EXIT_CODE=3" }], nextForwardToken: "f/1" };
      throw new Error(name);
    });
    // Described through another CE's context: the location comes from the tags.
    const result = await describeRuns(clients, ctxFor({ ...other, status: { aws: { ...other.status!.aws!, logGroup: "/elsewhere" } } }), [run]);
    expect(result.get(run.metadata.uid!)?.exitCode).toBe(3);
    const get = calls.find((c) => c.name === "GetLogEvents");
    expect(get?.input).toMatchObject({ logGroupName: "/vmforge/team-a/ce-a", logStreamName: "team-a/hello-1/0f1e2d3c/markers", startFromHead: false });
  });

  it("reads no log or exit status for a Run being cancelled (spec.cancel, the Run or its CE deleted)", async () => {
    const ended = { State: { Name: "terminated" as const, Code: 48 } };
    const cancelled = { ...sampleRun(), spec: { ...sampleRun().spec, cancel: true } } as Run;
    const deleted = { ...sampleRun(), metadata: { ...sampleRun().metadata, deletionTimestamp: "2025-11-25T00:00:00Z" } } as Run;
    for (const [run, ce] of [[cancelled, CE], [deleted, CE], [sampleRun(), { ...CE, metadata: { ...CE.metadata, deletionTimestamp: "2025-11-25T00:00:00Z" } }]] as [Run, ComputeEnvironment][]) {
      const { clients, calls } = fakeClients((name) => {
        if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, CE, ended)] }] };
        throw new Error(`unexpected ${name}`);
      });
      const result = await describeRuns(clients, ctxFor(ce), [run]);
      expect(result.get(run.metadata.uid!)?.state).toBe("terminated");
      expect(calls.map((c) => c.name)).toEqual(["DescribeInstances"]);
    }
  });

  it("falls back to the uploaded exit-status object, and reports a Spot interruption", async () => {
    const run = sampleRun();
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") {
        return {
          Reservations: [
            {
              Instances: [
                instanceFor(run, CE, {
                  State: { Name: "shutting-down", Code: 32 },
                  StateReason: { Code: "Server.SpotInstanceTermination", Message: "Server.SpotInstanceTermination: Spot instance termination" },
                }),
              ],
            },
          ],
        };
      }
      if (name === "GetLogEvents") throw new AwsError("ResourceNotFoundException", "The specified log stream does not exist.");
      if (name === "GetObject") return { Body: body("0\n") };
      throw new Error(name);
    });
    const d = (await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!);
    expect(d?.exitCode).toBe(0);
    expect(d?.stateReason).toBe("Spot interruption: Server.SpotInstanceTermination: Spot instance termination");
    expect(calls.find((c) => c.name === "GetObject")?.input).toEqual({
      Bucket: "vmforge-work",
      Key: `pipelines/.vmforge/runs/${run.metadata.uid}/exit-status`,
    });
  });

  it("no exit code anywhere (S3 answers AccessDenied for a missing key without ListBucket) leaves it unset", async () => {
    const run = sampleRun();
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, CE, { State: { Name: "terminated", Code: 48 }, StateReason: { Code: "Client.UserInitiatedShutdown", Message: "Client.UserInitiatedShutdown: User initiated shutdown" } })] }] };
      if (name === "GetLogEvents") return { events: [{ message: "starting" }], nextForwardToken: "f/0" };
      if (name === "GetObject") throw new AwsError("AccessDenied", "Access Denied", { httpStatusCode: 403 });
      throw new Error(name);
    });
    const d = (await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!);
    expect(d?.exitCode).toBeUndefined();
    expect(d?.stateReason).toBe("Client.UserInitiatedShutdown: User initiated shutdown");
  });

  it("a policy without s3:GetObject is an AccessDenied error naming it, not a missing exit status", async () => {
    const run = sampleRun();
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, CE, { State: { Name: "terminated", Code: 48 } })] }] };
      if (name === "GetLogEvents") return { events: [], nextForwardToken: "f/0" };
      if (name === "GetObject") {
        throw new AwsError("AccessDenied", 'User: arn:aws:iam::123456789012:user/op is not authorized to perform: s3:GetObject on resource: "arn:aws:s3:::vmforge-work/x" because no identity-based policy allows the s3:GetObject action', { httpStatusCode: 403 });
      }
      throw new Error(name);
    });
    // Named with the Run (not a failure of the whole describe), and no outcome guessed from it.
    const d = (await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!);
    expect(d).toMatchObject({ state: "terminated", outcomeUnknown: true, readError: { reason: "AccessDenied", message: expect.stringMatching(/^s3:GetObject: access denied/) as unknown } });
    expect(d!.exitCode).toBeUndefined();
  });
});

describe("describeRuns with the last look's observations (only what can change is asked for)", () => {
  /** A fake EC2 holding instances; it applies the tag filter on Run UIDs and the state filter, as EC2 does. */
  function ec2Of(instances: Instance[]): { clients: RunClients; calls: Call[] } {
    return fakeClients((name, input) => {
      if (name !== "DescribeInstances") return {};
      const filters = (input.Filters as { Name: string; Values: string[] }[]) ?? [];
      const uids = filters.find((f) => f.Name === `tag:${TAG_RUN_UID}`)?.Values;
      const states = filters.find((f) => f.Name === "instance-state-name")?.Values;
      const listed = instances.filter((i) =>
        (!uids || uids.includes(i.Tags?.find((t) => t.Key === TAG_RUN_UID)?.Value ?? "")) && (!states || states.includes(i.State?.Name ?? "")));
      return { Reservations: [{ Instances: listed }] };
    });
  }
  const runs = Array.from({ length: 4 }, (_, i) => sampleRun({ name: `r${i}`, uid: uidN(i) }));
  const fleet = (): Instance[] => runs.map((r) => instanceFor(r, CE));
  const stateFilter = (c: Call | undefined): unknown => (c?.input.Filters as { Name: string; Values: string[] }[]).find((f) => f.Name === "instance-state-name")?.Values;

  async function fullLook(instances: Instance[]): Promise<Map<string, RunDescription | undefined>> {
    return describeRuns(ec2Of(instances).clients, ctxFor(CE), runs);
  }

  it("running machines seen before: one call asking only for other states, and the same descriptions as a full look", async () => {
    const seen = await fullLook(fleet());
    const { clients, calls } = ec2Of(fleet());
    const result = await describeRuns(clients, { ...ctxFor(CE), observed: (r) => seen.get(r.metadata.uid ?? "") }, runs);
    expect(calls).toHaveLength(1);
    expect(stateFilter(calls[0])).toEqual(["pending", "shutting-down", "terminated", "stopping", "stopped"]);
    expect(result).toEqual(seen);
  });

  it("a machine seen pending that is no longer pending runs; one that ended is listed with its state and its outcome read", async () => {
    const before = fleet();
    before[0]!.State = { Name: "pending", Code: 0 };
    const seen = await fullLook(before);
    const now = fleet();
    now[1]!.State = { Name: "shutting-down", Code: 32 };
    const { clients, calls } = ec2Of(now);
    const result = await describeRuns(clients, { ...ctxFor(CE), observed: (r) => seen.get(r.metadata.uid ?? "") }, runs);
    expect(result).toEqual(await fullLook(now));
    expect(result.get(uidN(0))?.state).toBe("running");
    expect(result.get(uidN(1))?.state).toBe("shutting-down");
    // The machine that ended since it was seen gets a second look at that Run's machines.
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances", "DescribeInstances", "GetLogEvents", "GetObject"]);
  });

  it("a machine seen terminated and no longer listed is absent, as in a full look", async () => {
    const ended = fleet();
    ended[2]!.State = { Name: "terminated", Code: 48 };
    const seen = await fullLook(ended);
    const gone = fleet().filter((_, i) => i !== 2);
    const { clients } = ec2Of(gone);
    const result = await describeRuns(clients, { ...ctxFor(CE), observed: (r) => seen.get(r.metadata.uid ?? "") }, runs);
    expect(result.get(uidN(2))).toBeUndefined();
    expect(result).toEqual(await fullLook(gone));
  });

  it("a newer machine of a Run shutting down does not hide an older one that runs: the running one is the Run's", async () => {
    const now = fleet();
    now.push(instanceFor(runs[0]!, CE, { InstanceId: "i-0newer", State: { Name: "shutting-down", Code: 32 }, LaunchTime: new Date("2025-11-26T00:00:00Z") }));
    const result = await fullLook(now);
    expect(result.get(uidN(0))).toMatchObject({ instanceId: now[0]!.InstanceId, state: "running" });
  });

  it("a machine seen running that ended while a second machine of the Run runs: a second look at that Run finds the running one, as a full look does", async () => {
    const seen = await fullLook(fleet());
    const now = fleet();
    now[0]!.State = { Name: "terminated", Code: 48 };
    now.push(instanceFor(runs[0]!, CE, { InstanceId: "i-0double" }));
    const { clients, calls } = ec2Of(now);
    const result = await describeRuns(clients, { ...ctxFor(CE), observed: (r) => seen.get(r.metadata.uid ?? "") }, runs);
    expect(result.get(uidN(0))).toMatchObject({ instanceId: "i-0double", state: "running" });
    expect(result).toEqual(await fullLook(now));
    const describes = calls.filter((c) => c.name === "DescribeInstances");
    expect(describes.map((c) => stateFilter(c) !== undefined)).toEqual([true, false]);
    // The second look asks for that Run's machines only.
    expect((describes[1]?.input.Filters as { Name: string; Values: string[] }[])[0]).toEqual({ Name: `tag:${TAG_RUN_UID}`, Values: [uidN(0)] });
  });

  it("a running machine inferred from the last look has its outcome looked for where its own ComputeEnvironment keeps it", async () => {
    const other = sampleCe({ aws: { workDir: "s3://other-bucket/work", logGroup: undefined } });
    other.metadata = { ...other.metadata, name: "ce-b", uid: "99999999-2222-3333-4444-555555555555" };
    other.status = { aws: { ...other.status!.aws!, logGroup: "/vmforge/team-a/ce-b" } };
    const run = sampleRun({ name: "of-b", uid: uidN(42) });
    run.spec = { ...run.spec, computeEnvironmentRef: { name: "ce-b" } };
    const inst = instanceFor(run, other);
    const ctx = (observed?: (r: Run) => RunDescription | undefined): EnvContext => ({ ...ctxFor(CE), runCe: () => other, ...(observed ? { observed } : {}) });
    const seen = await describeRuns(ec2Of([inst]).clients, ctx(), [run]);
    const { clients, calls } = ec2Of([inst]);
    await describeRuns(clients, ctx((r) => seen.get(r.metadata.uid ?? "")), [run], { probeRunning: () => true });
    expect(calls.filter((c) => c.name === "DescribeInstances").map((c) => stateFilter(c) !== undefined)).toEqual([true]);
    expect(calls.find((c) => c.name === "GetLogEvents")?.input.logGroupName).toBe("/vmforge/team-a/ce-b");
    expect(calls.find((c) => c.name === "GetObject")?.input).toMatchObject({ Bucket: "other-bucket", Key: `work/.vmforge/runs/${uidN(42)}/exit-status` });
  });

  it("a running machine inferred from the last look keeps the exit-status location its launch tagged, even if the ComputeEnvironment's work directory changed since", async () => {
    const run = sampleRun({ name: "moved", uid: uidN(43) });
    const launchedWith = sampleCe({ aws: { workDir: "s3://first-bucket/runs" } });
    const movedTo = sampleCe({ aws: { workDir: "s3://second-bucket/elsewhere" } });
    const inst = instanceFor(run, launchedWith);
    const ctx = (observed?: (r: Run) => RunDescription | undefined): EnvContext => ({ ...ctxFor(movedTo), ...(observed ? { observed } : {}) });
    const seen = await describeRuns(ec2Of([inst]).clients, ctx(), [run]);
    expect(seen.get(uidN(43))?.artifacts).toMatch(/^s3:\/\/first-bucket\/runs\//);
    const { clients, calls } = ec2Of([inst]);
    const inferred = await describeRuns(clients, ctx((r) => seen.get(r.metadata.uid ?? "")), [run], { probeRunning: () => true });
    expect(calls.filter((c) => c.name === "DescribeInstances").map((c) => stateFilter(c) !== undefined)).toEqual([true]);
    expect(inferred.get(uidN(43))?.artifacts).toBe(seen.get(uidN(43))?.artifacts);
    expect(calls.find((c) => c.name === "GetObject")?.input).toMatchObject({ Bucket: "first-bucket", Key: `runs/.vmforge/runs/${uidN(43)}/exit-status` });
  });

  const uidFilter = (c: Call | undefined): string[] | undefined =>
    (c?.input.Filters as { Name: string; Values: string[] }[]).find((f) => f.Name === `tag:${TAG_RUN_UID}`)?.Values;

  it("a Run with no machine seen, or one seen stopped, is looked at by its own UID in every state beside the narrow look: the same descriptions as a full look", async () => {
    const seen = await fullLook(fleet());
    // A Run whose machine no look has shown yet (e.g. just launched).
    let look = ec2Of(fleet());
    let result = await describeRuns(look.clients, { ...ctxFor(CE), observed: (r) => (r.metadata.uid === uidN(3) ? undefined : seen.get(r.metadata.uid ?? "")) }, runs);
    expect(look.calls.map((c) => [stateFilter(c) !== undefined, uidFilter(c)])).toEqual([[true, [uidN(0), uidN(1), uidN(2)]], [false, [uidN(3)]]]);
    expect(result).toEqual(seen);
    // A machine seen stopped may have been started again.
    const stopped = new Map(seen);
    stopped.set(uidN(1), { ...seen.get(uidN(1))!, state: "stopped" });
    look = ec2Of(fleet());
    result = await describeRuns(look.clients, { ...ctxFor(CE), observed: (r) => stopped.get(r.metadata.uid ?? "") }, runs);
    expect(look.calls.map((c) => [stateFilter(c) !== undefined, uidFilter(c)])).toEqual([[true, [uidN(0), uidN(2), uidN(3)]], [false, [uidN(1)]]]);
    expect(result).toEqual(seen);
    // No machine seen for any Run (a burst's first look): by UID alone, no listing of other machines.
    look = ec2Of(fleet());
    result = await describeRuns(look.clients, { ...ctxFor(CE), observed: () => undefined }, runs);
    expect(look.calls.map((c) => [stateFilter(c) !== undefined, uidFilter(c)])).toEqual([[false, runs.map((r) => r.metadata.uid)]]);
    expect(result).toEqual(seen);
  });

  it("a new Run beside a large fleet costs a call for itself, not a listing of the fleet; up to UNSEEN_NARROW_MAX new Runs go 200 to a call, with a Run whose machine ended since it was seen", async () => {
    const big = Array.from({ length: 1_500 }, (_, i) => sampleRun({ name: `b${i}`, uid: uidN(1_000 + i) }));
    const instances = big.map((r) => instanceFor(r, CE));
    const seen = await describeRuns(ec2Of(instances).clients, ctxFor(CE), big);
    const isNew = (i: number): boolean => i >= 1_500 - 250;
    // 250 of them just launched (nothing seen), and one seen running has ended.
    instances[0]!.State = { Name: "terminated", Code: 48 };
    const look = ec2Of(instances);
    const result = await describeRuns(look.clients, { ...ctxFor(CE), observed: (r) => (isNew(big.indexOf(r)) ? undefined : seen.get(r.metadata.uid ?? "")) }, big);
    const describes = look.calls.filter((c) => c.name === "DescribeInstances");
    // The narrow look (a listing of managed machines not running, for 1,250 Runs), then 200 + 51 by UID.
    expect(describes.map((c) => [stateFilter(c) !== undefined, uidFilter(c)?.length])).toEqual([[true, undefined], [false, 200], [false, 51]]);
    expect(uidFilter(describes[1])).toEqual(big.filter((_, i) => isNew(i)).map((r) => r.metadata.uid).slice(0, 200));
    expect(uidFilter(describes[2])).toContain(uidN(1_000));
    expect(result.get(uidN(1_000))?.state).toBe("terminated");
    expect(result.get(uidN(2_499))?.state).toBe("running");
    expect(result.size).toBe(1_500);
  });

  it("looks at everything when more than UNSEEN_NARROW_MAX Runs have no machine seen, or another live machine carries a Run's UID", async () => {
    const seen = await fullLook(fleet());
    const many = Array.from({ length: UNSEEN_NARROW_MAX + 1 }, (_, i) => sampleRun({ name: `m${i}`, uid: uidN(5_000 + i) }));
    let look = ec2Of(fleet());
    await describeRuns(look.clients, { ...ctxFor(CE), observed: (r) => seen.get(r.metadata.uid ?? "") }, [...runs, ...many]);
    expect(look.calls.map((c) => [stateFilter(c) !== undefined, uidFilter(c)])).toEqual([[false, undefined]]);
    // Or more than UNSEEN_NARROW_MAX machines that ended since they were seen (a CE deleted under
    // its Runs): after the narrow look, pages of everything rather than filters of 200.
    const ending = Array.from({ length: UNSEEN_NARROW_MAX + 1 }, (_, i) => sampleRun({ name: `e${i}`, uid: uidN(7_000 + i) }));
    const live = ending.map((r) => instanceFor(r, CE));
    const seenLive = await describeRuns(ec2Of(live).clients, ctxFor(CE), ending);
    for (const i of live) i.State = { Name: "shutting-down", Code: 32 };
    look = ec2Of(live);
    const ended = await describeRuns(look.clients, { ...ctxFor(CE), observed: (r) => seenLive.get(r.metadata.uid ?? "") }, ending);
    expect(look.calls.filter((c) => c.name === "DescribeInstances").map((c) => [stateFilter(c) !== undefined, uidFilter(c)])).toEqual([[true, undefined], [false, undefined]]);
    expect(ended.get(uidN(7_000))?.state).toBe("shutting-down");
    // A second, pending machine of one Run: the narrow look finds it and a full look decides.
    const doubled = [...fleet(), instanceFor(runs[0]!, CE, { InstanceId: "i-0double", State: { Name: "pending", Code: 0 } })];
    look = ec2Of(doubled);
    const result = await describeRuns(look.clients, { ...ctxFor(CE), observed: (r) => seen.get(r.metadata.uid ?? "") }, runs);
    expect(look.calls.map((c) => stateFilter(c) === undefined)).toEqual([false, true]);
    expect(result).toEqual(await fullLook(doubled));
  });
});

describe("terminateRun and sweepOrphans", () => {
  it("terminates only instances whose tags say they are this Run's", async () => {
    const run = sampleRun();
    const mine = instanceFor(run, CE);
    const spoofed = instanceFor(run, CE, { InstanceId: "i-spoofed" }, { "vmforge.dev/managed-by": "someone-else" });
    const gone = instanceFor(run, CE, { InstanceId: "i-gone", State: { Name: "terminated", Code: 48 } });
    // Being terminated already: a second TerminateInstances would change nothing.
    const ending = instanceFor(run, CE, { InstanceId: "i-ending", State: { Name: "shutting-down", Code: 32 } });
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [mine, spoofed, gone, ending] }] };
      if (name === "TerminateInstances") return {};
      throw new Error(name);
    });
    expect(await terminateRun(clients, ctxFor(CE), run)).toEqual([mine.InstanceId]);
    expect(calls.find((c) => c.name === "TerminateInstances")?.input).toEqual({ InstanceIds: [mine.InstanceId] });
  });

  it("no machine counts as done", async () => {
    const { clients, calls } = fakeClients(() => ({ Reservations: [] }));
    expect(await terminateRun(clients, ctxFor(CE), sampleRun())).toEqual([]);
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances"]);
  });

  it("terminateRuns: one tag search per 200 Runs and one TerminateInstances per 1,000 machines; a Run whose own look-up fails is named and the others go on", async () => {
    const runs = Array.from({ length: 1_100 }, (_, i) => sampleRun({ name: `r${i}`, uid: uidN(i + 1) }));
    const id = (n: number): string => `i-${n.toString(16).padStart(17, "0")}`;
    // r3's machine is not listed by tag yet and its ID, launched moments ago, is not known yet either.
    const r3 = runs[3] as Run;
    r3.status = { phase: "Launching", launchedAt: new Date().toISOString(), instance: { id: id(4) } };
    const byUid = new Map(runs.map((r, i) => [r.metadata.uid ?? "", instanceFor(r, CE, { InstanceId: id(i + 1) })]));
    byUid.delete(r3.metadata.uid ?? "");
    const { clients, calls } = fakeClients((name, input) => {
      if (name === "DescribeInstances" && input.InstanceIds) throw new AwsError("InvalidInstanceID.NotFound", "not found");
      if (name === "DescribeInstances") {
        const values = (input.Filters as { Name: string; Values: string[] }[]).find((f) => f.Name === "tag:vmforge.dev/run-uid")?.Values ?? [];
        return { Reservations: [{ Instances: values.flatMap((v) => byUid.get(v) ?? []) }] };
      }
      if (name === "TerminateInstances") return {};
      throw new Error(name);
    });
    const { failed, ids } = await terminateRuns(clients, ctxFor(CE), runs);
    expect([...failed.keys()]).toEqual([r3.metadata.uid]);
    expect(failed.get(r3.metadata.uid ?? "")).toMatchObject({ reason: "InstanceNotVisibleYet" });
    const tagSearches = calls.filter((c) => c.name === "DescribeInstances" && !c.input.InstanceIds);
    expect(tagSearches.map((c) => (c.input.Filters as { Values: string[] }[])[0]?.Values.length)).toEqual([200, 200, 200, 200, 200, 100]);
    expect(calls.filter((c) => c.name === "DescribeInstances" && c.input.InstanceIds).map((c) => c.input.InstanceIds)).toEqual([[id(4)]]);
    const terminated = calls.filter((c) => c.name === "TerminateInstances").map((c) => c.input.InstanceIds as string[]);
    expect(terminated.map((t) => t.length)).toEqual([1_000, 99]);
    expect(terminated.flat().sort()).toEqual([...byUid.values()].map((i) => i.InstanceId).sort());
    expect(ids).toHaveLength(1_099);
    // terminateRun is terminateRuns of one: its failure is thrown
    await expect(terminateRun(clients, ctxFor(CE), r3)).rejects.toMatchObject({ reason: "InstanceNotVisibleYet" });
  });

  it("an ID EC2 says does not exist (gone already) is left out and the call sent again; one by one when the message names none", async () => {
    const runs = [1, 2, 3].map((n) => sampleRun({ name: `r${n}`, uid: uidN(n) }));
    const id = (n: number): string => `i-${n.toString(16).padStart(17, "0")}`;
    const byUid = new Map(runs.map((r, i) => [r.metadata.uid ?? "", instanceFor(r, CE, { InstanceId: id(i + 1) })]));
    for (const naming of [true, false]) {
      const { clients, calls } = fakeClients((name, input) => {
        if (name === "DescribeInstances") return { Reservations: [{ Instances: [...byUid.values()] }] };
        const ids = input.InstanceIds as string[];
        if (name === "TerminateInstances" && ids.includes(id(2)) && (ids.length > 1 || !naming)) {
          throw new AwsError("InvalidInstanceID.NotFound", naming ? `The instance ID '${id(2)}' does not exist` : "An instance does not exist");
        }
        if (name === "TerminateInstances") return {};
        throw new Error(name);
      });
      await terminateRuns(clients, ctxFor(CE), runs);
      const sent = calls.filter((c) => c.name === "TerminateInstances").map((c) => c.input.InstanceIds);
      if (naming) expect(sent).toEqual([[id(1), id(2), id(3)], [id(1), id(3)]]);
      else expect(sent).toEqual([[id(1), id(2), id(3)], [id(1)], [id(2)], [id(3)]]);
    }
  });

  it("a TerminateInstances refused for good is sent again Run by Run: only the Run whose machine is protected carries the refusal; throttling fails the whole call", async () => {
    const runs = [1, 2, 3].map((n) => sampleRun({ name: `r${n}`, uid: uidN(n) }));
    const id = (n: number): string => `i-${n.toString(16).padStart(17, "0")}`;
    const byUid = new Map(runs.map((r, i) => [r.metadata.uid ?? "", instanceFor(r, CE, { InstanceId: id(i + 1) })]));
    for (const code of ["OperationNotPermitted", "RequestLimitExceeded"]) {
      const { clients, calls } = fakeClients((name, input) => {
        if (name === "DescribeInstances") return { Reservations: [{ Instances: [...byUid.values()] }] };
        if (name === "TerminateInstances" && (input.InstanceIds as string[]).includes(id(2))) throw new AwsError(code, `The instance '${id(2)}' may not be terminated`);
        if (name === "TerminateInstances") return {};
        throw new Error(name);
      });
      if (code === "RequestLimitExceeded") {
        await expect(terminateRuns(clients, ctxFor(CE), runs)).rejects.toMatchObject({ kind: "Retryable" });
        expect(calls.filter((c) => c.name === "TerminateInstances").map((c) => c.input.InstanceIds)).toEqual([[id(1), id(2), id(3)]]);
        continue;
      }
      const { failed } = await terminateRuns(clients, ctxFor(CE), runs);
      expect([...failed.keys()]).toEqual([uidN(2)]);
      expect(failed.get(uidN(2))).toMatchObject({ kind: "Terminal" });
      expect(calls.filter((c) => c.name === "TerminateInstances").map((c) => c.input.InstanceIds)).toEqual([[id(1), id(2), id(3)], [id(1)], [id(2)], [id(3)]]);
    }
  });

  it("a refusal falls only on Runs with machines to end; refused credentials are not sent again Run by Run; after 8 refusals in a row the rest are sent again later (Retryable); throttling or refused credentials during the resends are that Run's and the later ones'", async () => {
    const runs = Array.from({ length: 12 }, (_, i) => sampleRun({ name: `r${i}`, uid: uidN(i + 1) }));
    const id = (n: number): string => `i-${n.toString(16).padStart(17, "0")}`;
    const instances = (only?: number[]) => runs.map((r, i) => instanceFor(r, CE, { InstanceId: id(i + 1) })).filter((_, i) => !only || only.includes(i));
    const run = async (listed: Instance[], refuse: (ids: string[], call: number) => string | undefined) => {
      let n = 0;
      const { clients, calls } = fakeClients((name, input) => {
        if (name === "DescribeInstances") return { Reservations: [{ Instances: listed }] };
        if (name !== "TerminateInstances") throw new Error(name);
        const code = refuse(input.InstanceIds as string[], n++);
        if (code) throw new AwsError(code, "refused");
        return {};
      });
      const out = await terminateRuns(clients, ctxFor(CE), runs);
      return { ...out, sent: calls.filter((c) => c.name === "TerminateInstances").length };
    };
    // Only r1 has a machine: its refusal is its own, not the batch's.
    const one = await run(instances([1]), () => "OperationNotPermitted");
    expect([...one.failed.keys()]).toEqual([uidN(2)]);
    expect(one.sent).toBe(1);
    expect(one.ids).toEqual([]);
    // Credentials refused: every call would be; not sent again.
    const creds = await run(instances(), () => "AuthFailure");
    expect(creds.sent).toBe(1);
    expect(creds.failed.size).toBe(12);
    expect(creds.failed.get(uidN(1))).toMatchObject({ reason: "InvalidCredentials" });
    // Refused for everyone: 1 shared call, 8 resends refused (blocked), the other 4 to be sent again.
    const all = await run(instances(), () => "UnauthorizedOperation");
    expect(all.sent).toBe(1 + 8);
    for (let n = 1; n <= 8; n++) expect(all.failed.get(uidN(n))).toMatchObject({ kind: "Terminal", reason: "AccessDenied" });
    for (let n = 9; n <= 12; n++) expect(all.failed.get(uidN(n))).toMatchObject({ kind: "Retryable", reason: "TerminationNotResent" });
    // Credentials refused during the resends: no more resends, this Run and the later ones carry it.
    const expired = await run(instances(), (_ids, call) => (call === 0 ? "UnauthorizedOperation" : call >= 2 ? "AuthFailure" : undefined));
    expect(expired.sent).toBe(3);
    expect(expired.failed.has(uidN(1))).toBe(false);
    for (let n = 2; n <= 12; n++) expect(expired.failed.get(uidN(n))).toMatchObject({ reason: "InvalidCredentials" });
    // Throttled at the third resend: the first two resent, r2 and later carry the throttling.
    const throttled = await run(instances(), (ids, call) => (call === 0 || ids[0] === id(1) ? "UnauthorizedOperation" : call === 3 ? "RequestLimitExceeded" : undefined));
    expect(throttled.ids).toEqual([id(2)]);
    expect(throttled.failed.get(uidN(1))).toMatchObject({ kind: "Terminal" });
    expect(throttled.failed.has(uidN(2))).toBe(false);
    for (let n = 3; n <= 12; n++) expect(throttled.failed.get(uidN(n))).toMatchObject({ kind: "Retryable" });
  });

  it("sweeps this CE's machines whose Run is gone", async () => {
    const live = sampleRun({ name: "live", uid: uidN(1) });
    const dead = sampleRun({ name: "dead", uid: uidN(2) });
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(live, CE), instanceFor(dead, CE)] }] };
      if (name === "TerminateInstances") return {};
      throw new Error(name);
    });
    const swept = await sweepOrphans(clients, ctxFor(CE), new Set([uidN(1)]));
    expect(swept).toEqual([instanceFor(dead, CE).InstanceId]);
    expect(calls[0]?.input.Filters).toEqual([
      { Name: "tag:vmforge.dev/ce-uid", Values: [CE.metadata.uid] },
      { Name: "tag:vmforge.dev/managed-by", Values: ["vmforge"] },
      { Name: "instance-state-name", Values: ["pending", "running", "stopping", "stopped"] },
    ]);
  });
});

describe("readRunLog", () => {
  it("follows forward tokens until one repeats and resumes from the cursor", async () => {
    const pages: Record<string, { events: { message: string }[]; nextForwardToken: string }> = {
      start: { events: [{ message: "line 1\n" }, { message: "line 2" }], nextForwardToken: "t1" },
      t1: { events: [{ message: "line 3" }], nextForwardToken: "t2" },
      t2: { events: [], nextForwardToken: "t2" },
    };
    const { clients, calls } = fakeClients((name, input) => {
      if (name !== "GetLogEvents") throw new Error(name);
      return pages[(input.nextToken as string | undefined) ?? "start"];
    });
    const chunk = await readRunLog(clients, ctxFor(CE), sampleRun());
    expect(chunk).toEqual({ lines: ["line 1", "line 2", "line 3"], next: "t2" });
    expect(calls[0]?.input).toEqual({ logGroupName: "/vmforge/team-a/ce-a", logStreamName: "team-a/hello-1/0f1e2d3c", startFromHead: true });
    const again = await readRunLog(clients, ctxFor(CE), sampleRun(), "t2");
    expect(again).toEqual({ lines: [], next: "t2" });
  });

  it("a stream that does not exist yet gives an empty chunk without a cursor", async () => {
    const { clients } = fakeClients(() => {
      throw new AwsError("ResourceNotFoundException", "The specified log stream does not exist.");
    });
    expect(await readRunLog(clients, ctxFor(CE), sampleRun())).toEqual({ lines: [] });
  });

  it("bounds the pages read per call", async () => {
    let n = 0;
    const { clients, calls } = fakeClients(() => ({ events: [{ message: `l${n}` }], nextForwardToken: `t${++n}` }));
    const chunk = await readRunLog(clients, ctxFor(CE), sampleRun(), undefined, { maxPages: 4 });
    expect(calls).toHaveLength(4);
    expect(chunk.next).toBe("t4");
  });
});

describe("permissions", () => {
  it("the run half sends only commands the seed's operator policy grants", () => {
    const granted = [...operatorActions()];
    const used = new Set<string>();
    for (const f of ["runs.ts", "logs.ts"]) {
      const text = readFileSync(join(import.meta.dirname, "../../../../src/cloud/aws", f), "utf8");
      for (const m of text.matchAll(/new ([A-Za-z0-9]+)Command\(/g)) used.add(m[1]!);
    }
    expect([...used].sort()).toEqual(["DescribeInstances", "GetLogEvents", "GetObject", "RunInstances", "TerminateInstances"]);
    for (const name of used) expect(granted.some((a) => a.endsWith(`:${name}`)), name).toBe(true);
  });
});
