// Issue 12 (launch, termination, outcome) in runs.ts, against recording stand-in clients.
import { describe, expect, it } from "vitest";
import type { Instance } from "@aws-sdk/client-ec2";
import { StartProbes, TAG_RUN_UID, describeRuns, launchRun, readRunLog, runInstancesInput, subnetOrder, terminateRun, type RunClients } from "../../../../src/cloud/aws/runs.js";
import { CloudError, type EnvContext } from "../../../../src/cloud/provider.js";
import { createLogger } from "../../../../src/engine/logger.js";
import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import { sampleCe, sampleRun } from "../../../fixtures/launcher/harness.js";

interface Call {
  name: string;
  input: Record<string, unknown>;
}

class AwsError extends Error {
  constructor(name: string, message: string, readonly $metadata = { httpStatusCode: 400 }) {
    super(message);
    this.name = name;
  }
}

function fakeClients(handler: (name: string, input: Record<string, unknown>) => unknown): { clients: RunClients; calls: Call[] } {
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

const ctxFor = (ce: ComputeEnvironment): EnvContext => ({ ce, credentials: { source: "ambient", data: {} }, logger: createLogger({ level: "silent" }) });
const CE = sampleCe();

function instanceFor(run: Run, over: Partial<Instance> = {}): Instance {
  const input = runInstancesInput(CE, run, "#!/bin/bash\n");
  return {
    InstanceId: `i-${(run.metadata.uid ?? "").replace(/-/g, "").slice(0, 17)}`,
    InstanceType: "m6i.large",
    State: { Name: "running", Code: 16 },
    LaunchTime: new Date(),
    Tags: input.TagSpecifications?.[0]?.Tags ?? [],
    ...over,
  };
}

function withStatus(run: Run, status: Run["status"]): Run {
  return { ...run, status };
}

describe("launch: capacity per Availability Zone", () => {
  it("Unsupported / InsufficientInstanceCapacity in one subnet tries the others, same ClientToken", async () => {
    const run = sampleRun();
    const order = subnetOrder(CE.status!.aws!.subnetIds!, run.metadata.uid!);
    expect(new Set(order)).toEqual(new Set(CE.status!.aws!.subnetIds));
    const { clients, calls } = fakeClients((name, input) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      if (name !== "RunInstances") throw new Error(name);
      if (input.SubnetId === order[0]) throw new AwsError("Unsupported", "Your requested instance type (m6i.large) is not supported in your requested Availability Zone (eu-west-1c).");
      if (input.SubnetId === order[1]) throw new AwsError("InsufficientInstanceCapacity", "We currently do not have sufficient m6i.large capacity in the Availability Zone you requested (eu-west-1a).");
      return { Instances: [instanceFor(run, { State: { Name: "pending", Code: 0 }, SubnetId: input.SubnetId as string })] };
    });
    const d = await launchRun(clients, ctxFor(CE), run);
    expect(d.state).toBe("pending");
    const launches = calls.filter((c) => c.name === "RunInstances");
    expect(launches.map((c) => c.input.SubnetId)).toEqual(order);
    expect(launches.every((c) => c.input.ClientToken === run.metadata.uid)).toBe(true);
  });

  it("a type offered in none of the subnets' zones is Terminal, with the reason and every subnet", async () => {
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      throw new AwsError("Unsupported", "Your requested instance type (m6i.large) is not supported in your requested Availability Zone.");
    });
    const err = await launchRun(clients, ctxFor(CE), sampleRun()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CloudError);
    expect(err).toMatchObject({ kind: "Terminal", reason: "InstanceTypeUnavailable" });
    expect((err as Error).message).toMatch(/m6i\.large is not offered.*subnet-aaaa: Unsupported.*subnet-bbbb: Unsupported.*subnet-cccc: Unsupported/s);
    expect(calls.filter((c) => c.name === "RunInstances")).toHaveLength(3);
  });

  it("a shortage in every zone is Retryable and names each subnet", async () => {
    let n = 0;
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      if (n++ === 0) throw new AwsError("Unsupported", "not offered here");
      throw new AwsError("InsufficientInstanceCapacity", "no capacity");
    });
    const err = await launchRun(clients, ctxFor(CE), sampleRun()).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: "Retryable", reason: "InsufficientCapacity" });
    expect((err as Error).message).toMatch(/InsufficientInstanceCapacity/);
  });

  it("an account quota is not a zone matter: Retryable at once, no other subnet tried", async () => {
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      throw new AwsError("VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU limit");
    });
    await expect(launchRun(clients, ctxFor(CE), sampleRun())).rejects.toMatchObject({ kind: "Retryable", reason: "InsufficientCapacity" });
    expect(calls.filter((c) => c.name === "RunInstances")).toHaveLength(1);
  });

  it("a repeat while DescribeInstances does not show the first launch yet gets the same instance from the token", async () => {
    const run = sampleRun();
    const launched = new Map<string, Instance>();
    const { clients, calls } = fakeClients((name, input) => {
      if (name === "DescribeInstances") return { Reservations: [] }; // not visible yet
      if (name !== "RunInstances") throw new Error(name);
      const token = input.ClientToken as string;
      let inst = launched.get(token);
      if (!inst) launched.set(token, (inst = instanceFor(run, { InstanceId: `i-${launched.size + 1}000000000000000`, State: { Name: "pending", Code: 0 } })));
      return { Instances: [inst] };
    });
    const a = await launchRun(clients, ctxFor(CE), run);
    const b = await launchRun(clients, ctxFor(CE), run);
    expect(b.instanceId).toBe(a.instanceId);
    expect(launched.size).toBe(1);
    expect(calls.filter((c) => c.name === "RunInstances").map((c) => c.input.ClientToken)).toEqual([run.metadata.uid, run.metadata.uid]);
  });
});

describe("termination by the recorded instance ID", () => {
  it("terminates the recorded machine the tag search does not show yet, once its look-up by ID shows the Run's tags", async () => {
    const base = sampleRun();
    const run = withStatus(base, { phase: "Launching", launchedAt: new Date(Date.now() - 10 * 60_000).toISOString(), instance: { id: "i-0123456789abcdef0" } });
    const { clients, calls } = fakeClients((name, input) => {
      if (name === "DescribeInstances") return input.InstanceIds ? { Reservations: [{ Instances: [instanceFor(base, { InstanceId: "i-0123456789abcdef0" })] }] } : { Reservations: [] };
      if (name === "TerminateInstances") return {};
      throw new Error(name);
    });
    expect(await terminateRun(clients, ctxFor(CE), run)).toEqual(["i-0123456789abcdef0"]);
    expect(calls.find((c) => c.name === "TerminateInstances")?.input).toEqual({ InstanceIds: ["i-0123456789abcdef0"] });
  });

  it("a recorded machine that does not carry the Run's ownership tags is not terminated", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", launchedAt: new Date(Date.now() - 10 * 60_000).toISOString(), instance: { id: "i-0123456789abcdef0" } });
    const other = sampleRun({ name: "someone-else", uid: "11111111-2222-3333-4444-555555555555" });
    const { clients, calls } = fakeClients((name, input) => {
      if (name === "DescribeInstances") return input.InstanceIds ? { Reservations: [{ Instances: [instanceFor(other, { InstanceId: "i-0123456789abcdef0" })] }] } : { Reservations: [] };
      throw new Error(name);
    });
    expect(await terminateRun(clients, ctxFor(CE), run)).toEqual([]);
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances", "DescribeInstances"]);
  });

  it("a machine launched moments ago that EC2 answers 'not found' for is tried again (Retryable), not counted as gone", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", launchedAt: new Date().toISOString(), instance: { id: "i-0123456789abcdef0" } });
    const { clients } = fakeClients((name, input) => {
      if (name === "DescribeInstances" && input.InstanceIds) throw new AwsError("InvalidInstanceID.NotFound", "The instance ID 'i-0123456789abcdef0' does not exist");
      if (name === "DescribeInstances") return { Reservations: [] };
      throw new Error(name);
    });
    await expect(terminateRun(clients, ctxFor(CE), run)).rejects.toMatchObject({ kind: "Retryable", reason: "InstanceNotVisibleYet" });
  });

  it("a recorded machine the tag search does not show, and its look-up by ID finds shutting down, is not terminated again", async () => {
    const base = sampleRun();
    const run = withStatus(base, { phase: "Running", launchedAt: new Date(Date.now() - 10 * 60_000).toISOString(), instance: { id: "i-0123456789abcdef0" } });
    const { clients, calls } = fakeClients((name, input) => {
      if (name === "DescribeInstances") return input.InstanceIds ? { Reservations: [{ Instances: [instanceFor(base, { InstanceId: "i-0123456789abcdef0", State: { Name: "shutting-down", Code: 32 } })] }] } : { Reservations: [] };
      throw new Error(name);
    });
    expect(await terminateRun(clients, ctxFor(CE), run)).toEqual([]);
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances", "DescribeInstances"]);
  });

  it("a recorded machine the search shows as terminated is not terminated again", async () => {
    const base = sampleRun();
    const inst = instanceFor(base, { State: { Name: "terminated", Code: 48 } });
    const run = withStatus(base, { phase: "Running", launchedAt: new Date().toISOString(), instance: { id: inst.InstanceId! } });
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [inst] }] };
      throw new Error(name);
    });
    expect(await terminateRun(clients, ctxFor(CE), run)).toEqual([]);
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances"]);
  });
});

describe("outcome reading", () => {
  it("Runs already ended (e.g. cancelled) cost no log or S3 look-up", async () => {
    const runs = [0, 1, 2].map((i) => withStatus(sampleRun({ name: `c${i}`, uid: `00000000-0000-0000-0000-00000000000${i}` }), { phase: "Cancelled", instance: { id: "i-x" } }));
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: runs.map((r) => instanceFor(r, { State: { Name: "shutting-down", Code: 32 } })) }] };
      throw new Error(name);
    });
    const out = await describeRuns(clients, ctxFor(CE), runs);
    expect([...out.values()].map((d) => d?.state)).toEqual(["shutting-down", "shutting-down", "shutting-down"]);
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances"]);
  });

  it("a still-running machine is checked for an exit code only when the caller asks", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", instance: { id: "i-x" } });
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run)] }] };
      if (name === "GetLogEvents") return { events: [{ message: "done" }, { message: "VMFORGE_EXIT_CODE=0" }] };
      throw new Error(name);
    });
    expect((await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!)?.exitCode).toBeUndefined();
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances"]);
    const d = (await describeRuns(clients, ctxFor(CE), [run], { probeRunning: () => true })).get(run.metadata.uid!);
    expect(d).toMatchObject({ state: "running", exitCode: 0 });
  });

  it("the exit probe of a running machine says whether it read: refused (readError, readAttempted), worked (readAttempted), not made (neither)", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", instance: { id: "i-x" } });
    let deny = true;
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run)] }] };
      if (name === "GetLogEvents" && deny) throw new AwsError("AccessDeniedException", "User: arn:aws:iam::123456789012:user/op is not authorized to perform: logs:GetLogEvents");
      if (name === "GetLogEvents") return { events: [{ message: "still going" }] };
      if (name === "GetObject") throw new AwsError("NoSuchKey", "The specified key does not exist.");
      throw new Error(name);
    });
    const uid = run.metadata.uid!;
    const refused = (await describeRuns(clients, ctxFor(CE), [run], { probeRunning: () => true })).get(uid);
    expect(refused).toMatchObject({ state: "running", readAttempted: true, readError: { reason: "AccessDenied" } });
    const between = (await describeRuns(clients, ctxFor(CE), [run], { probeRunning: () => false })).get(uid);
    expect(between?.readAttempted).toBeUndefined();
    expect(between?.readError).toBeUndefined();
    deny = false;
    const read = (await describeRuns(clients, ctxFor(CE), [run], { probeRunning: () => true })).get(uid);
    expect(read).toMatchObject({ state: "running", readAttempted: true });
    expect(read?.readError).toBeUndefined();
    expect(read?.exitCode).toBeUndefined();
  });

  it("a recorded machine EC2 no longer lists gets its outcome from the uploaded exit status", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", launchedAt: new Date(Date.now() - 3 * 3600_000).toISOString(), instance: { id: "i-0aaaaaaaaaaaaaaaa" } });
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      if (name === "GetLogEvents") throw new AwsError("ResourceNotFoundException", "The specified log stream does not exist.");
      if (name === "GetObject") return { Body: { transformToString: async () => "3\n" } };
      throw new Error(name);
    });
    const d = (await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!);
    expect(d).toMatchObject({ instanceId: "i-0aaaaaaaaaaaaaaaa", state: "terminated", exitCode: 3 });
    expect(calls.map((c) => c.name)).toEqual(["DescribeInstances", "GetLogEvents", "GetObject"]);
  });

  it("...and from the log's exit line first", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", launchedAt: new Date(Date.now() - 3 * 3600_000).toISOString(), instance: { id: "i-0aaaaaaaaaaaaaaaa" } });
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      if (name === "GetLogEvents") return { events: [{ message: "VMFORGE_EXIT_CODE=0" }] };
      throw new Error(name);
    });
    expect((await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!)).toMatchObject({ state: "terminated", exitCode: 0 });
  });

  it("a missing machine without any outcome stays undefined; one launched moments ago is not looked up", async () => {
    const old = withStatus(sampleRun({ name: "old", uid: "00000000-0000-0000-0000-000000000001" }), { phase: "Running", launchedAt: new Date(Date.now() - 3 * 3600_000).toISOString(), instance: { id: "i-1" } });
    const fresh = withStatus(sampleRun({ name: "fresh", uid: "00000000-0000-0000-0000-000000000002" }), { phase: "Launching", launchedAt: new Date().toISOString(), instance: { id: "i-2" } });
    const { clients, calls } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [] };
      if (name === "GetLogEvents") throw new AwsError("ResourceNotFoundException", "no stream");
      if (name === "GetObject") throw new AwsError("NoSuchKey", "no key", { httpStatusCode: 404 });
      throw new Error(name);
    });
    const out = await describeRuns(clients, ctxFor(CE), [old, fresh]);
    expect(out.get(old.metadata.uid!)).toBeUndefined();
    expect(out.get(fresh.metadata.uid!)).toBeUndefined();
    expect(calls.filter((c) => c.name === "GetLogEvents")).toHaveLength(1);
  });

  it("an ended machine whose outcome read is refused: the refusal stays with its Run, no outcome is guessed, the others are observed", async () => {
    const ok = withStatus(sampleRun({ name: "ok", uid: "0f1e2d3c-aaaa-bbbb-cccc-0000000000c1" }), { phase: "Running", instance: { id: "i-c1" } });
    const denied = withStatus(sampleRun({ name: "denied", uid: "0f1e2d3c-aaaa-bbbb-cccc-0000000000d2" }), { phase: "Running", launchedAt: new Date(Date.now() - 3 * 3600_000).toISOString(), instance: { id: "i-d2" } });
    const { clients } = fakeClients((name, input) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(ok, { State: { Name: "terminated", Code: 48 } })] }] };
      if (name === "GetLogEvents") {
        if ((input.logStreamName as string).includes("/denied/")) throw new AwsError("ResourceNotFoundException", "no stream");
        return { events: [{ message: "VMFORGE_EXIT_CODE=0" }] };
      }
      if (name === "GetObject") throw new AwsError("AccessDenied", "User: arn:aws:iam::123456789012:user/op is not authorized to perform: s3:GetObject on resource: arn:aws:s3:::b/k because no identity-based policy allows the s3:GetObject action");
      throw new Error(name);
    });
    const d = await describeRuns(clients, ctxFor(CE), [ok, denied]);
    expect(d.get(ok.metadata.uid!)).toMatchObject({ state: "terminated", exitCode: 0 });
    // the machine EC2 no longer lists: described (not undefined, so never "lost"), outcome unknown, the refusal named
    expect(d.get(denied.metadata.uid!)).toMatchObject({ instanceId: "i-d2", outcomeUnknown: true, readError: { message: expect.stringContaining("s3:GetObject") as unknown } });
    expect(d.get(denied.metadata.uid!)!.exitCode).toBeUndefined();
  });

  it("a Spot interruption is flagged as the cloud's doing", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", instance: { id: "i-x" } });
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") {
        return { Reservations: [{ Instances: [instanceFor(run, { InstanceLifecycle: "spot", State: { Name: "terminated", Code: 48 }, StateReason: { Code: "Server.SpotInstanceTermination", Message: "Server.SpotInstanceTermination: Spot instance termination" } })] }] };
      }
      if (name === "GetLogEvents") return { events: [{ message: "VMFORGE_EXIT_CODE=143" }] };
      throw new Error(name);
    });
    const d = (await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!);
    expect(d).toMatchObject({ interrupted: true, exitCode: 143 });
  });
});

// The UID filter stays the look-up for one Run (launch, terminate).
it("the launch look-up filters on the Run's UID", async () => {
  const run = sampleRun();
  const { clients, calls } = fakeClients((name) => {
    if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run)] }] };
    throw new Error(name);
  });
  await launchRun(clients, ctxFor(CE), run);
  expect(calls[0]?.input.Filters).toEqual([{ Name: `tag:${TAG_RUN_UID}`, Values: [run.metadata.uid] }]);
});

describe("bootstrap failures", () => {
  it("the failed set-up step comes with the exit line from the log", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", instance: { id: "i-x" } });
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, { State: { Name: "terminated", Code: 48 } })] }] };
      if (name === "GetLogEvents") return { events: [{ message: "[vmforge] installing Docker" }, { message: "VMFORGE_BOOTSTRAP_FAILED=docker" }, { message: "VMFORGE_EXIT_CODE=1" }] };
      throw new Error(name);
    });
    expect((await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!)).toMatchObject({ exitCode: 1, bootstrapStep: "docker" });
  });

  it("...and from the uploaded exit status when the log never reached CloudWatch", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", instance: { id: "i-x" } });
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, { State: { Name: "terminated", Code: 48 } })] }] };
      if (name === "GetLogEvents") throw new AwsError("ResourceNotFoundException", "The specified log group does not exist.");
      if (name === "GetObject") return { Body: { transformToString: async () => "1\nbootstrap-failed=log-agent\n" } };
      throw new Error(name);
    });
    expect((await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!)).toMatchObject({ exitCode: 1, bootstrapStep: "log-agent" });
  });

  it("a pipeline failure has no step", async () => {
    const run = withStatus(sampleRun(), { phase: "Running", instance: { id: "i-x" } });
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, { State: { Name: "terminated", Code: 48 } })] }] };
      if (name === "GetLogEvents") return { events: [{ message: "VMFORGE_PIPELINE_STARTED" }, { message: "VMFORGE_EXIT_CODE=1" }] };
      throw new Error(name);
    });
    const d = (await describeRuns(clients, ctxFor(CE), [run])).get(run.metadata.uid!);
    expect(d?.exitCode).toBe(1);
    expect(d?.bootstrapStep).toBeUndefined();
  });

  it("vmforge logs of an ended Run whose stream never reached CloudWatch reads the uploaded launcher.log", async () => {
    const run = withStatus(sampleRun(), { phase: "Failed" });
    const { clients, calls } = fakeClients((name) => {
      if (name === "GetLogEvents") throw new AwsError("ResourceNotFoundException", "The specified log group does not exist.");
      if (name === "GetObject") return { Body: { transformToString: async () => "[vmforge] installing the CloudWatch agent\nno package amazon-cloudwatch-agent\n" } };
      throw new Error(name);
    });
    const chunk = await readRunLog(clients, ctxFor(CE), run);
    expect(chunk.lines).toEqual(["[vmforge] installing the CloudWatch agent", "no package amazon-cloudwatch-agent"]);
    expect(calls.find((c) => c.name === "GetObject")?.input.Key).toBe(`pipelines/.vmforge/runs/${run.metadata.uid}/launcher.log`);
    // Read once: the next read from its cursor has nothing more.
    expect((await readRunLog(clients, ctxFor(CE), run, chunk.next)).lines).toEqual([]);
  });
});

describe("Running means the pipeline started: the launcher's line, read cheaply", () => {
  const uidOf = (i: number) => `0f1e2d3c-aaaa-bbbb-cccc-00000000000${i}`;
  const launching = (i: number, phase: "Launching" | "Running" = "Launching") =>
    withStatus(sampleRun({ name: `r${i}`, uid: uidOf(i) }), { phase, instance: { id: `i-${i}` } });

  it("only Runs whose machine is up and not known started are read, forward from a cursor, at most `limit` per describe, never again once seen", async () => {
    const runs = [launching(1), launching(2), launching(3), launching(4, "Running")];
    const logged = new Map<string, string[]>([[uidOf(1), ["[vmforge] installing Docker"]], [uidOf(2), ["[vmforge] starting", "VMFORGE_PIPELINE_STARTED"]], [uidOf(3), []]]);
    const { clients, calls } = fakeClients((name, input) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: runs.map((r) => instanceFor(r)) }] };
      if (name !== "GetLogEvents") throw new Error(name);
      const uid = runs.find((r) => (input.logStreamName as string).endsWith(`${(r.metadata.uid ?? "").replace(/-/g, "").slice(0, 8)}/markers`) && (input.logStreamName as string).includes(`/${r.metadata.name}/`))?.metadata.uid ?? "";
      const lines = logged.get(uid) ?? [];
      const from = input.nextToken === undefined ? 0 : Number(input.nextToken);
      return { events: lines.slice(from).map((message) => ({ message })), nextForwardToken: String(lines.length) };
    });
    let clock = 0;
    const probes = new StartProbes(2, () => (clock += 60_000));
    const reads = () => calls.filter((c) => c.name === "GetLogEvents");

    let d = await describeRuns(clients, ctxFor(CE), runs, { startProbes: probes });
    expect(reads()).toHaveLength(2); // the limit; the Running Run is never read
    expect(reads().every((c) => c.input.startFromHead === true && c.input.nextToken === undefined)).toBe(true);
    expect(reads().some((c) => (c.input.logStreamName as string).includes("/r4/"))).toBe(false);
    const firstTwo = reads().map((c) => c.input.logStreamName as string);

    d = await describeRuns(clients, ctxFor(CE), runs, { startProbes: probes });
    // The one left out is read now (the least recently read go first).
    expect(reads()).toHaveLength(4);
    expect(reads().slice(2).some((c) => (c.input.logStreamName as string).includes("/r3/"))).toBe(true);
    expect(d.get(uidOf(2))?.pipelineStarted).toBe(true);
    expect(d.get(uidOf(1))?.pipelineStarted).toBeUndefined();
    expect(d.get(uidOf(4))?.pipelineStarted).toBeUndefined();

    // r1 continues from its cursor; r2 (seen started) is not read again but stays started.
    logged.get(uidOf(1))?.push("VMFORGE_PIPELINE_STARTED");
    for (let i = 0; i < 2; i++) d = await describeRuns(clients, ctxFor(CE), runs, { startProbes: probes });
    const later = reads().slice(4);
    expect(later.some((c) => (c.input.logStreamName as string).includes("/r2/"))).toBe(false);
    expect(later.find((c) => (c.input.logStreamName as string).includes("/r1/"))?.input.nextToken).toBe("1");
    expect(d.get(uidOf(1))?.pipelineStarted).toBe(true);
    expect(d.get(uidOf(2))?.pipelineStarted).toBe(true);
    expect(firstTwo).toHaveLength(2);

    // Once the Runs are Running, nothing is read and nothing is kept.
    const running = runs.map((r) => withStatus(r, { ...r.status, phase: "Running" }));
    const before = reads().length;
    await describeRuns(clients, ctxFor(CE), running, { startProbes: probes });
    expect(reads()).toHaveLength(before);
    expect(probes.size).toBe(0);
  });

  it("a failed set-up step on a machine that keeps running is found by the same read", async () => {
    const run = launching(5);
    const { clients } = fakeClients((name) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run)] }] };
      if (name === "GetLogEvents") return { events: [{ message: "[vmforge] installing Docker" }, { message: "VMFORGE_BOOTSTRAP_FAILED=docker" }, { message: "VMFORGE_EXIT_CODE=1" }], nextForwardToken: "f/3" };
      throw new Error(name);
    });
    const d = (await describeRuns(clients, ctxFor(CE), [run], { startProbes: new StartProbes() })).get(run.metadata.uid!);
    expect(d).toMatchObject({ state: "running", exitCode: 1, bootstrapStep: "docker" });
    expect(d?.pipelineStarted).toBeUndefined();
  });
});

describe("a log read the cloud refuses", () => {
  it("does not blind the other Runs' observation; the refusal travels with its Run until a read works", async () => {
    const ok = withStatus(sampleRun({ name: "ok", uid: "0f1e2d3c-aaaa-bbbb-cccc-0000000000a1" }), { phase: "Launching", instance: { id: "i-a1" } });
    const denied = withStatus(sampleRun({ name: "denied", uid: "0f1e2d3c-aaaa-bbbb-cccc-0000000000b2" }), { phase: "Launching", instance: { id: "i-b2" } });
    let deny = true;
    const { clients } = fakeClients((name, input) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(ok), instanceFor(denied)] }] };
      if (name !== "GetLogEvents") throw new Error(name);
      if ((input.logStreamName as string).includes("/denied/") && deny) {
        throw new AwsError("AccessDeniedException", "User: arn:aws:iam::123456789012:user/op is not authorized to perform: logs:GetLogEvents on resource: arn:aws:logs:eu-west-1:123456789012:log-group:g:log-stream:s");
      }
      return { events: [{ message: "VMFORGE_PIPELINE_STARTED" }], nextForwardToken: "f/1" };
    });
    let clock = 0;
    const probes = new StartProbes(100, () => (clock += 1_000));
    let d = await describeRuns(clients, ctxFor(CE), [ok, denied], { startProbes: probes });
    expect(d.get(ok.metadata.uid!)).toMatchObject({ pipelineStarted: true, readAttempted: true });
    expect(d.get(ok.metadata.uid!)?.readError).toBeUndefined();
    expect(d.get(denied.metadata.uid!)?.readError?.message).toContain("logs:GetLogEvents");
    expect(d.get(denied.metadata.uid!)?.readAttempted).toBe(true);
    // Refused again: still said.
    d = await describeRuns(clients, ctxFor(CE), [denied], { startProbes: probes });
    expect(d.get(denied.metadata.uid!)?.readError).toBeDefined();
    deny = false;
    clock += 10 * 60_000;
    d = await describeRuns(clients, ctxFor(CE), [denied], { startProbes: probes });
    expect(d.get(denied.metadata.uid!)?.readError).toBeUndefined();
    expect(d.get(denied.metadata.uid!)).toMatchObject({ pipelineStarted: true, readAttempted: true });
  });
});

describe("ended machines: outcome reads under throttling and in turns", () => {
  const uidOf = (i: number) => `0f1e2d3c-aaaa-bbbb-cccc-0000000000c${i}`;
  const ended = (i: number) => withStatus(sampleRun({ name: `e${i}`, uid: uidOf(i) }), { phase: "Running", instance: { id: `i-c${i}` } });
  /** Every Run's machine terminated; its markers stream holds exit code i; `throttle` names the Runs whose read AWS throttles. */
  function cloud(runs: Run[], throttle: Set<string>) {
    return fakeClients((name, input) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: runs.map((r) => instanceFor(r, { State: { Name: "terminated", Code: 48 } })) }] };
      if (name !== "GetLogEvents") throw new Error(name);
      const run = runs.find((r) => (input.logStreamName as string).includes(`/${r.metadata.name}/`));
      if (!run) throw new Error(`stream ${String(input.logStreamName)}`);
      if (throttle.has(run.metadata.name!)) throw new AwsError("ThrottlingException", "Rate exceeded");
      return { events: [{ message: `VMFORGE_EXIT_CODE=${run.metadata.name!.slice(1)}` }], nextForwardToken: "f/1" };
    });
  }

  it("a throttled read leaves only its own Run waiting (outcome unknown, no refusal named); the others get their exit codes", async () => {
    const runs = [ended(1), ended(2), ended(3)];
    const { clients } = cloud(runs, new Set(["e2"]));
    const d = await describeRuns(clients, ctxFor(CE), runs, { startProbes: new StartProbes() });
    expect(d.get(uidOf(1))).toMatchObject({ state: "terminated", exitCode: 1 });
    expect(d.get(uidOf(3))).toMatchObject({ state: "terminated", exitCode: 3 });
    expect(d.get(uidOf(2))).toMatchObject({ state: "terminated", outcomeUnknown: true });
    expect(d.get(uidOf(2))?.exitCode).toBeUndefined();
    expect(d.get(uidOf(2))?.readError).toBeUndefined();
    // A throttled read says nothing of whether reads work: a refusal said before stands (the tracker keeps it).
    expect(d.get(uidOf(2))?.readAttempted).toBeUndefined();
    expect(d.get(uidOf(1))?.readAttempted).toBe(true);
  });

  it("more ended Runs than one describe may read: the rest wait, then go first", async () => {
    const runs = [ended(1), ended(2), ended(3)];
    const { clients, calls } = cloud(runs, new Set());
    let clock = 0;
    const probes = new StartProbes(2, () => (clock += 1_000));
    const reads = () => calls.filter((c) => c.name === "GetLogEvents").map((c) => (c.input.logStreamName as string).split("/")[1]);
    let d = await describeRuns(clients, ctxFor(CE), runs, { startProbes: probes });
    expect(reads()).toEqual(["e1", "e2"]);
    expect(d.get(uidOf(3))).toMatchObject({ outcomeUnknown: true });
    d = await describeRuns(clients, ctxFor(CE), runs, { startProbes: probes });
    // e3, never read, has its turn; then the least recently read (e1 before e2: a stable order).
    expect(reads().slice(2).sort()).toEqual(["e1", "e3"]);
    expect(d.get(uidOf(3))).toMatchObject({ exitCode: 3 });
  });

  it("outcome reads come out of the same budget as start reads", async () => {
    const setUp = withStatus(sampleRun({ name: "s1", uid: "0f1e2d3c-aaaa-bbbb-cccc-0000000000d1" }), { phase: "Launching", instance: { id: "i-d1" } });
    const runs = [ended(1), ended(2), setUp];
    const { clients, calls } = fakeClients((name, input) => {
      if (name === "DescribeInstances") {
        return { Reservations: [{ Instances: runs.map((r) => instanceFor(r, r === setUp ? {} : { State: { Name: "terminated", Code: 48 } })) }] };
      }
      if (name !== "GetLogEvents") throw new Error(name);
      return { events: [{ message: (input.logStreamName as string).includes("/s1/") ? "VMFORGE_PIPELINE_STARTED" : "VMFORGE_EXIT_CODE=0" }], nextForwardToken: "f/1" };
    });
    const probes = new StartProbes(2);
    const d = await describeRuns(clients, ctxFor(CE), runs, { startProbes: probes });
    expect(calls.filter((c) => c.name === "GetLogEvents")).toHaveLength(2);
    expect(d.get(setUp.metadata.uid!)?.pipelineStarted).toBeUndefined();
  });
});

describe("whose word counts: the markers stream only", () => {
  const uid = "0f1e2d3c-aaaa-bbbb-cccc-0000000000e1";
  const main = "team-a/spoof/0f1e2d3c";
  const markers = `${main}/markers`;
  /** A pipeline printed the launcher's markers into the Run's main stream; `launcher` is what the launcher wrote to its markers stream (undefined: no such stream). */
  function streams(run: Run, state: "running" | "terminated", launcher: string[] | undefined, exitStatus?: string) {
    return fakeClients((name, input) => {
      if (name === "DescribeInstances") return { Reservations: [{ Instances: [instanceFor(run, { State: { Name: state, Code: state === "running" ? 16 : 48 } })] }] };
      if (name === "GetLogEvents") {
        if (input.logStreamName === main) return { events: ["VMFORGE_PIPELINE_STARTED", "VMFORGE_EXIT_CODE=0"].map((message) => ({ message })), nextForwardToken: "f/m" };
        if (input.logStreamName === markers && launcher) return { events: launcher.map((message) => ({ message })), nextForwardToken: `f/${launcher.length}` };
        throw new AwsError("ResourceNotFoundException", "The specified log stream does not exist.");
      }
      if (name === "GetObject") {
        if (exitStatus !== undefined) return { Body: { transformToString: async () => exitStatus } };
        throw new AwsError("NoSuchKey", "no key", { httpStatusCode: 404 });
      }
      throw new Error(name);
    });
  }
  const streamsRead = (calls: Call[]) => calls.filter((c) => c.name === "GetLogEvents").map((c) => c.input.logStreamName);

  it("an ended machine's exit code is the markers stream's, not an exit line the pipeline printed", async () => {
    const run = withStatus(sampleRun({ name: "spoof", uid }), { phase: "Running", instance: { id: "i-e1" } });
    const { clients, calls } = streams(run, "terminated", ["VMFORGE_PIPELINE_STARTED", "VMFORGE_EXIT_CODE=3"]);
    expect((await describeRuns(clients, ctxFor(CE), [run])).get(uid)).toMatchObject({ state: "terminated", exitCode: 3 });
    expect(streamsRead(calls)).toEqual([markers]);
  });

  it("no markers stream: the uploaded exit status counts, never the main stream's exit line", async () => {
    const run = withStatus(sampleRun({ name: "spoof", uid }), { phase: "Running", instance: { id: "i-e1" } });
    const { clients, calls } = streams(run, "terminated", undefined, "5\n");
    expect((await describeRuns(clients, ctxFor(CE), [run])).get(uid)).toMatchObject({ state: "terminated", exitCode: 5 });
    expect(streamsRead(calls)).toEqual([markers]);
    // Neither there: the outcome is not known (not the printed 0).
    const none = streams(run, "terminated", undefined);
    expect((await describeRuns(none.clients, ctxFor(CE), [run])).get(uid)?.exitCode).toBeUndefined();
  });

  it("a machine being set up: the printed start and exit lines neither start nor end the Run; one read of the markers stream per probe", async () => {
    const run = withStatus(sampleRun({ name: "spoof", uid }), { phase: "Launching", instance: { id: "i-e1" } });
    const { clients, calls } = streams(run, "running", []);
    const d = (await describeRuns(clients, ctxFor(CE), [run], { startProbes: new StartProbes() })).get(uid);
    expect(d?.state).toBe("running");
    expect(d?.pipelineStarted).toBeUndefined();
    expect(d?.exitCode).toBeUndefined();
    expect(streamsRead(calls)).toEqual([markers]);
    // The launcher's own start line, in the markers stream, does start it.
    const started = streams(run, "running", ["VMFORGE_PIPELINE_STARTED"]);
    expect((await describeRuns(started.clients, ctxFor(CE), [run], { startProbes: new StartProbes() })).get(uid)).toMatchObject({ pipelineStarted: true });
  });

  it("a Running Run's machine still running: the printed exit line does not end it; the launcher's does", async () => {
    const run = withStatus(sampleRun({ name: "spoof", uid }), { phase: "Running", instance: { id: "i-e1" } });
    const printed = streams(run, "running", ["VMFORGE_PIPELINE_STARTED"]);
    expect((await describeRuns(printed.clients, ctxFor(CE), [run], { probeRunning: () => true })).get(uid)?.exitCode).toBeUndefined();
    const ended = streams(run, "running", ["VMFORGE_PIPELINE_STARTED", "VMFORGE_EXIT_CODE=2"]);
    expect((await describeRuns(ended.clients, ctxFor(CE), [run], { probeRunning: () => true })).get(uid)).toMatchObject({ state: "running", exitCode: 2 });
    expect(streamsRead(ended.calls)).toEqual([markers]);
  });
});
