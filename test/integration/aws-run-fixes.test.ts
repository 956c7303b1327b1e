/**
 * Issue 12's AWS points through the operator, on the real kube-apiserver and moto behind the strict
 * AWS layer (test/harness/aws-strict): EC2's ClientToken rules, new instances missing from
 * tag-filtered DescribeInstances, terminated instances forgotten, `Unsupported` per zone.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DescribeInstanceAttributeCommand, DescribeInstancesCommand, DescribeSubnetsCommand, EC2Client, ModifyInstanceAttributeCommand, TerminateInstancesCommand } from "@aws-sdk/client-ec2";
import { gunzipSync } from "node:zlib";
import type { Instance } from "@aws-sdk/client-ec2";
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { DeleteInstanceProfileCommand, GetInstanceProfileCommand, IAMClient, RemoveRoleFromInstanceProfileCommand } from "@aws-sdk/client-iam";
import { CloudWatchLogsClient } from "@aws-sdk/client-cloudwatch-logs";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import type { EnvContext, LaunchHints, RunDescription } from "../../src/cloud/provider.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { runArtifactsUri } from "../../src/cloud/aws/launcher.js";
import { logGroupName, logStreamName } from "../../src/cloud/aws/logs.js";
import { CLOUD_WRITES_ANNOTATION } from "../../src/controllers/computeenvironment/cloud-writes.js";
import { SecretResource } from "../../src/controllers/shared.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { createLogger } from "../../src/engine/logger.js";
import { streamRunLogs } from "../../src/cli/logs.js";
import { installCrds, startOperator, waitFor } from "../support/operator.js";
import type { RunningOperator } from "../support/operator.js";
import { freshNamespace, kubeconfigPath, motoEndpoint, motoReset, strictAws } from "../harness/helpers.js";
import { shipLauncherLines } from "../harness/aws-launcher-log.js";
import { launchDecided } from "../../src/controllers/run/phases.js";

const REGION = "eu-west-1";
const BUCKET = "vmforge-aws-run-fixes";
let client: KubeClient;
let ns: string;
let op: RunningOperator;

const layer = strictAws();

/** How long the layer hides a new instance from tag-filtered reads in the tests that delete a Run mid-launch. */
const HIDDEN_MS = 12_000;

/**
 * The real provider; a Run whose machine is gone from EC2's list is looked up at once (not after
 * 60 s), and EC2's listing lag is taken as a little more than the layer's HIDDEN_MS (not 2 min).
 */
class TestProvider extends AwsProvider {
  /** When set, the next launch "crashes" right after RunInstances answered (before the status write). */
  crashAfterLaunch = false;
  /** Runs once after the next RunInstances answered, before the answer reaches the operator. */
  afterLaunch: (() => Promise<void>) | undefined;
  /** Terminations asked per Run UID, by terminateRun or in a terminateRuns batch (a batch sends one DescribeInstances per 200 Runs and one TerminateInstances when it finds machines to end). */
  readonly terminations = new Map<string, number>();
  /** The Run UIDs of each terminateRuns call. */
  readonly batches: string[][] = [];
  constructor() {
    super({ endpoint: motoEndpoint(), missingProbeAfterMs: 0, unlistedLaunchMs: HIDDEN_MS + 3_000 });
  }
  override async terminateRun(ctx: EnvContext, run: Run): Promise<void> {
    const uid = run.metadata.uid ?? "";
    this.terminations.set(uid, (this.terminations.get(uid) ?? 0) + 1);
    await super.terminateRun(ctx, run);
  }
  override async terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
    this.batches.push(runs.map((r) => r.metadata.uid ?? ""));
    for (const r of runs) this.terminations.set(r.metadata.uid ?? "", (this.terminations.get(r.metadata.uid ?? "") ?? 0) + 1);
    return super.terminateRuns(ctx, runs);
  }
  override async launchRun(ctx: EnvContext, run: Run, hints?: LaunchHints): Promise<RunDescription> {
    const d = await super.launchRun(ctx, run, hints);
    const after = this.afterLaunch;
    this.afterLaunch = undefined;
    if (after) await after();
    if (this.crashAfterLaunch) {
      this.crashAfterLaunch = false;
      throw new Error("operator killed right after RunInstances");
    }
    return d;
  }
}
let provider: TestProvider;
const quietLogger = createLogger({ level: "silent" });

/** The Availability Zone of each subnet, in the same order. */
async function subnetZones(subnets: string[]): Promise<string[]> {
  const out = await new EC2Client(aws()).send(new DescribeSubnetsCommand({ SubnetIds: subnets }));
  return subnets.map((id) => out.Subnets?.find((x) => x.SubnetId === id)?.AvailabilityZone ?? "");
}

async function calls(action: string): Promise<number> {
  return (await layer.stats()).calls[action] ?? 0;
}

/** Requests of `action` the layer answered with an injected fault so far. */
async function faulted(action: string): Promise<number> {
  return (await layer.stats()).faults[action] ?? 0;
}

const aws = () => ({ endpoint: motoEndpoint(), region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });

/** Every instance of a Run, read without a tag filter (the layer hides new instances only from tag-filtered reads). */
async function instancesOf(runUid: string): Promise<Instance[]> {
  const out = await new EC2Client(aws()).send(new DescribeInstancesCommand({}));
  return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []).filter((i) => i.Tags?.some((t) => t.Key === "vmforge.dev/run-uid" && t.Value === runUid));
}

type Cond = { type: string; status: string; reason: string; message: string };
const cond = (o: { status?: { conditions?: Cond[] } } | undefined, type: string) => o?.status?.conditions?.find((c) => c.type === type);
const getCe = (name: string) => client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name);
const getRun = (name: string) => client.get<Run>(RunResource, ns, name);

async function ce(name: string, aws: Record<string, unknown> = {}, secret = "aws"): Promise<void> {
  await client.create(ComputeEnvironmentResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name, namespace: ns },
    spec: { provider: "aws", credentials: { secretRef: { name: secret } }, aws: { region: REGION, instanceType: "m6i.large", workDir: `s3://${BUCKET}/work`, ...aws } },
  } as ComputeEnvironment);
}

async function readyCe(name: string, awsSpec: Record<string, unknown> = {}): Promise<ComputeEnvironment> {
  await ce(name, awsSpec);
  return waitFor(`CE ${name} Ready`, async () => {
    const c = await getCe(name);
    return cond(c, "Ready")?.status === "True" ? c : undefined;
  }, 60_000);
}

async function run(name: string, ceName: string): Promise<void> {
  await client.create(RunResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name, namespace: ns },
    spec: { computeEnvironmentRef: { name: ceName }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
  } as Run);
}

const phase = (name: string, p: string, timeoutMs = 60_000) =>
  waitFor(`Run ${name} ${p}`, async () => {
    const r = await getRun(name);
    return r?.status?.phase === p ? r : undefined;
  }, timeoutMs, 300);

/** What the launcher on a Run's machine writes to its log (the CloudWatch agent's effect), into moto. */
async function launcherSays(run: Run, lines: string[]): Promise<void> {
  const c = await getCe(run.spec.computeEnvironmentRef.name);
  if (!c) throw new Error("no CE");
  await shipLauncherLines(new CloudWatchLogsClient(aws()), logGroupName(c), run, lines);
}

/** The Run's machine is up and being set up: Launching, reason SettingUp, the instance running. */
const settingUp = (name: string, timeoutMs = 60_000) =>
  waitFor(`Run ${name} setting up`, async () => {
    const r = await getRun(name);
    return r?.status?.phase === "Launching" && r.status.reason === "SettingUp" && r.status.instance?.state === "running" ? r : undefined;
  }, timeoutMs, 300);

/** Plays the launcher's start of the pipeline, then waits for Running. */
async function started(name: string): Promise<Run> {
  await launcherSays(await settingUp(name), ["[vmforge] starting: nextflow run ...", "VMFORGE_PIPELINE_STARTED"]);
  return phase(name, "Running", 30_000);
}

/** Creates the Runs on the CE and waits for each to run. */
async function startedRuns(ceName: string, names: string[]): Promise<Run[]> {
  for (const n of names) await run(n, ceName);
  const runs: Run[] = [];
  for (const n of names) runs.push(await started(n));
  return runs;
}

/** Restarts the test's operator with this poll interval (and batch gathering time, default 250 ms). */
async function restartOperator(pollIntervalMs: number, terminationGatherMs?: number): Promise<void> {
  await op.stop();
  op = await startOperator(kubeconfigPath(), new Map([["aws", provider]]), { namespaces: [ns], pollIntervalMs }, terminationGatherMs === undefined ? {} : { terminationGatherMs });
}

beforeAll(async () => {
  await motoReset();
  await new S3Client({ ...aws(), forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "aws-fixes");
  for (const [name, data] of [["aws", { accessKeyId: "testing", secretAccessKey: "testing" }], ["aws-nokey", { accessKeyId: "testing" }]] as const) {
    await client.create(SecretResource, { apiVersion: "v1", kind: "Secret", metadata: { name, namespace: ns }, stringData: data } as SecretObject);
  }
  provider = new TestProvider();
  op = await startOperator(kubeconfigPath(), new Map([["aws", provider]]), { namespaces: [ns], pollIntervalMs: 1_000 });
});

afterAll(async () => {
  await op?.stop();
  await layer.reset();
});

describe("launch", () => {
  it("ClientToken is the idempotency story: a crash after RunInstances, the new instance not listed yet, still one instance", async () => {
    await readyCe("token");
    await layer.configure({ idempotency: true, consistency: { newInstanceHiddenMs: 120_000 } });
    try {
      const before = await calls("ec2:RunInstances");
      provider.crashAfterLaunch = true;
      await run("token", "token");
      const r = await waitFor("instance recorded", async () => {
        const x = await getRun("token");
        return x?.status?.instance?.id ? x : undefined;
      }, 30_000, 200);
      expect(await calls("ec2:RunInstances")).toBe(before + 2); // the first launch, then the repeat after the "crash"
      const insts = await instancesOf(r.metadata.uid ?? "");
      expect(insts.map((i) => i.InstanceId)).toEqual([r.status?.instance?.id]);
      // Its launcher never speaks (nothing plays it): delete it, so that later counts of log reads are the later tests' own.
      await client.delete(RunResource, ns, "token");
      await waitFor("Run token gone", async () => (await getRun("token")) === undefined, 30_000);
    } finally {
      await layer.configure({ idempotency: false, consistency: { newInstanceHiddenMs: 0 } });
    }
  });

  it("Unsupported in some zones: launched in a subnet of another zone, once", async () => {
    const c = await readyCe("zones");
    const subnets = c.status?.aws?.subnetIds ?? [];
    expect(subnets.length).toBeGreaterThan(1);
    const zones = await subnetZones(subnets);
    const open = zones[0] as string;
    await layer.configure({ capacity: zones.slice(1).map((z) => ({ availabilityZone: z, instanceType: "m6i.large", error: "Unsupported" as const })) });
    try {
      await run("zoned", "zones");
      const r = await started("zoned");
      const insts = await instancesOf(r.metadata.uid ?? "");
      expect(insts).toHaveLength(1);
      expect(insts[0]?.Placement?.AvailabilityZone).toBe(open);
    } finally {
      await layer.configure({ capacity: [] });
    }
  });

  it("an instance profile deleted by hand (the CE Ready) is created again when a launch is refused for it, and the Run launches", async () => {
    const c = await readyCe("noprofile");
    const profile = (c.status?.aws?.instanceProfileArn ?? "").split("/").pop() ?? "";
    const role = (c.status?.aws?.roleArn ?? "").split("/").pop() ?? "";
    expect(profile).toMatch(/^TowerForge-/);
    const iam = new IAMClient(aws());
    await iam.send(new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: profile, RoleName: role }));
    await iam.send(new DeleteInstanceProfileCommand({ InstanceProfileName: profile }));
    // The CE still says Ready: it does not read the profile back on its own.
    expect(cond(await getCe("noprofile"), "Ready")?.status).toBe("True");
    const refusedBefore = await calls("iam:CreateInstanceProfile");
    // EC2 refuses a launch naming a missing profile as an invalid parameter (moto: NoSuchEntity).
    await layer.configure({ ec2ProfileErrors: true });
    let r: Run;
    const seen = new Set<string>();
    try {
      await run("noprofile", "noprofile");
      r = await waitFor("instance recorded", async () => {
        const x = await getRun("noprofile");
        if (x?.status?.phase) seen.add(`${x.status.phase}/${x.status.reason}${x.status.reason === "LaunchRetrying" && launchDecided(x) ? " (decided)" : ""}`);
        return x?.status?.instance?.id ? x : undefined;
      }, 90_000, 500);
    } finally {
      await layer.configure({ ec2ProfileErrors: false });
    }
    expect((await layer.stats()).refused["ec2:RunInstances"]).toBeGreaterThan(0);
    // while its attempts were refused the Run said it was being launched, and stayed decided
    expect(seen).toContain("Pending/LaunchRetrying (decided)");
    expect(await calls("iam:CreateInstanceProfile")).toBeGreaterThan(refusedBefore);
    const got = await iam.send(new GetInstanceProfileCommand({ InstanceProfileName: profile }));
    expect(got.InstanceProfile?.Roles?.map((x) => x.RoleName)).toEqual([role]);
    const insts = await instancesOf(r.metadata.uid ?? "");
    expect(insts).toHaveLength(1);
    expect(insts[0]?.IamInstanceProfile?.Arn).toBe(c.status?.aws?.instanceProfileArn);
    expect(cond(await getCe("noprofile"), "Ready")?.status).toBe("True");
    // Nothing plays its launcher: delete it, so that later counts of log reads are the later tests' own.
    await client.delete(RunResource, ns, "noprofile");
    await waitFor("Run noprofile gone", async () => (await getRun("noprofile")) === undefined, 30_000);
  });

  it("a type offered in no zone of the CE fails the Run at once, with the reason", async () => {
    await layer.configure({ capacity: [{ availabilityZone: "*", instanceType: "c6i.large", error: "Unsupported" }] });
    try {
      await readyCe("nowhere", { instanceType: "c6i.large" });
      await run("nowhere", "nowhere");
      const r = await phase("nowhere", "Failed", 30_000);
      expect(r.status?.reason).toBe("InstanceTypeUnavailable");
      expect(r.status?.message).toMatch(/c6i\.large is not offered/);
      expect(cond(r, "Stalled")).toMatchObject({ status: "True", reason: "InstanceTypeUnavailable" });
      expect(await instancesOf(r.metadata.uid ?? "")).toHaveLength(0);
    } finally {
      await layer.configure({ capacity: [] });
    }
  });
});

describe("termination and outcome when DescribeInstances does not show the machine", () => {
  it("a Run deleted seconds after launch leaves nothing behind, although its new instance is not listed yet", async () => {
    await readyCe("fresh");
    await layer.configure({ consistency: { newInstanceHiddenMs: 120_000 } });
    try {
      await run("fresh", "fresh");
      const r = await waitFor("instance recorded", async () => {
        const x = await getRun("fresh");
        return x?.status?.instance?.id ? x : undefined;
      }, 30_000, 100);
      await client.delete(RunResource, ns, "fresh");
      await waitFor("Run fresh gone", async () => (await getRun("fresh")) === undefined, 30_000);
      const insts = await instancesOf(r.metadata.uid ?? "");
      expect(insts).toHaveLength(1);
      expect(insts[0]?.State?.Name).toBe("terminated");
    } finally {
      await layer.configure({ consistency: { newInstanceHiddenMs: 0 } });
    }
  });

  /**
   * Creates a Run (of the CE of the same name) that is deleted between EC2's answer to its first
   * successful RunInstances and the operator reading it; with `crash`, that answer is then lost.
   * Returns the Run's UID and the machine IDs seen recorded
   * on it while it was being deleted.
   */
  async function deletedMidLaunch(name: string, crash: boolean): Promise<{ uid: string; recordedWhileDeleting: string[] }> {
    const recordedWhileDeleting: string[] = [];
    provider.crashAfterLaunch = crash;
    provider.afterLaunch = async () => {
      await client.delete(RunResource, ns, name);
    };
    await run(name, name);
    const uid = (await getRun(name))?.metadata.uid ?? "";
    await waitFor(`Run ${name} gone`, async () => {
      const r = await getRun(name);
      if (r?.metadata.deletionTimestamp && r.status?.instance?.id) recordedWhileDeleting.push(r.status.instance.id);
      return r === undefined;
    }, 90_000, 100);
    return { uid, recordedWhileDeleting };
  }

  it("a Run deleted while the answer of its launch is lost: its machine, not listed yet, is found and terminated before the Run goes", async () => {
    await readyCe("lost");
    await layer.configure({ idempotency: true, consistency: { newInstanceHiddenMs: HIDDEN_MS } });
    try {
      const { uid } = await deletedMidLaunch("lost", true);
      const insts = await instancesOf(uid);
      expect(insts).toHaveLength(1);
      expect(["shutting-down", "terminated"]).toContain(insts[0]?.State?.Name);
      // Within the listing lag (HIDDEN_MS + 3 s) the termination goes at most once a poll (1 s),
      // whatever wakes the Run (its timer, the tracker after every look); then the settling one.
      const sent = provider.terminations.get(uid) ?? 0;
      expect(sent).toBeGreaterThanOrEqual(2);
      expect(sent).toBeLessThanOrEqual(Math.ceil((HIDDEN_MS + 3_000) / 1_000) + 3);
    } finally {
      provider.crashAfterLaunch = false;
      provider.afterLaunch = undefined;
      await layer.configure({ idempotency: false, consistency: { newInstanceHiddenMs: 0 } });
    }
  });

  it("a Run deleted during its launch call: the machine is recorded on the deleting Run, then terminated", async () => {
    await readyCe("midcall");
    // EC2 may also not know the new ID yet: the termination by ID is then tried again.
    await layer.configure({ idempotency: true, consistency: { newInstanceHiddenMs: HIDDEN_MS, newInstanceUnknownByIdMs: 3_000 } });
    try {
      // Look-ups by ID (the termination checks the machine's tags first) that EC2 answered "not found".
      const refusedById = async () => {
        const { refused } = await layer.stats();
        return (refused["ec2:DescribeInstances"] ?? 0) + (refused["ec2:TerminateInstances"] ?? 0);
      };
      const refusedBefore = await refusedById();
      const { uid, recordedWhileDeleting } = await deletedMidLaunch("midcall", false);
      // the first termination met "not found" for the new ID (too new) and was tried again
      expect(await refusedById()).toBeGreaterThan(refusedBefore);
      const insts = await instancesOf(uid);
      expect(insts).toHaveLength(1);
      expect(new Set(recordedWhileDeleting)).toEqual(new Set([insts[0]?.InstanceId]));
      expect(["shutting-down", "terminated"]).toContain(insts[0]?.State?.Name);
    } finally {
      provider.afterLaunch = undefined;
      await layer.configure({ idempotency: false, consistency: { newInstanceHiddenMs: 0, newInstanceUnknownByIdMs: 0 } });
    }
  });

  /** Every injection of the provider and the layer used by the tests below, off again. */
  async function injectionsOff(): Promise<void> {
    provider.crashAfterLaunch = false;
    provider.afterLaunch = undefined;
    await layer.configure({ idempotency: false, consistency: { newInstanceHiddenMs: 0 }, faults: [] });
  }

  /**
   * A Run (of a Ready CE of the same name) whose first RunInstances succeeds but whose answer is
   * lost (the new instance hidden from tag reads for HIDDEN_MS); `meanwhile` runs before the loss.
   * Returns the Run's UID.
   */
  async function answerLost(name: string, meanwhile: () => Promise<void>, defaultRunTimeout?: string): Promise<string> {
    await readyCe(name);
    if (defaultRunTimeout) {
      await client.patch(ComputeEnvironmentResource, ns, name, { spec: { defaultRunTimeout } }, "merge");
      // Ready again at the new generation (a Run is not launched under a CE that is not), in the operator's cache.
      await waitFor("the operator's cache has the CE Ready with its timeout", async () => {
        const c = op.operator.ces.get(`${ns}/${name}`);
        return c?.spec.defaultRunTimeout === defaultRunTimeout && c.status?.observedGeneration === c.metadata.generation && cond(c, "Ready")?.status === "True";
      }, 60_000, 20);
    }
    await layer.configure({ idempotency: true, consistency: { newInstanceHiddenMs: HIDDEN_MS } });
    provider.crashAfterLaunch = true;
    provider.afterLaunch = meanwhile;
    await run(name, name);
    return (await getRun(name))?.metadata.uid ?? "";
  }

  /** The Run's instances and whether each is ending (shutting-down or terminated). */
  async function ending(uid: string): Promise<boolean[]> {
    return (await instancesOf(uid)).map((i) => ["shutting-down", "terminated"].includes(i.State?.Name ?? ""));
  }

  it("a Run cancelled while the answer of its launch is lost and its termination is refused stays until its machine is terminated", async () => {
    const refusedBefore = await faulted("ec2:TerminateInstances");
    try {
      const uid = await answerLost("cancelled", async () => {
        // EC2 refuses the next termination (a policy changed under the operator, say).
        await layer.configure({ faults: [{ action: "ec2:TerminateInstances", error: "denied", count: 1 }] });
        await client.patch(RunResource, ns, "cancelled", { spec: { cancel: true } }, "merge");
        // The retry after the lost answer is to see the cancel. Were the operator's cache behind, the
        // retry would send the launch again (the same ClientToken, so the same instance), record the
        // machine and end the Run at once with it recorded: a sound path, but not this test's.
        await waitFor("the operator's cache shows the cancel", async () => op.operator.runs.get(`${ns}/cancelled`)?.spec.cancel === true, 30_000, 20);
      });
      // The refusal is said on the Run meanwhile.
      await waitFor("termination refused", async () => cond(await getRun("cancelled"), "Stalled")?.reason === "AccessDenied", 30_000, 200);
      expect(await faulted("ec2:TerminateInstances")).toBe(refusedBefore + 1);
      const done = await phase("cancelled", "Cancelled", 90_000);
      // Cancelled only once its machine (made by the lost launch, not listed for a while) was terminated.
      expect(await ending(uid)).toEqual([true]);
      expect(done.status?.instance?.id).toBeUndefined();
    } finally {
      await injectionsOff();
    }
  }, 120_000);

  it("a Run cancelled while the answer of its launch is lost, its termination refused until past its timeout, ends Cancelled, not Timeout: Stalled names the refusal meanwhile", async () => {
    const refusedBefore = await faulted("ec2:TerminateInstances");
    try {
      const uid = await answerLost("cancel-timeout", async () => {
        // EC2 refuses every termination until the test lifts the refusal.
        await layer.configure({ faults: [{ action: "ec2:TerminateInstances", error: "denied" }] });
        await client.patch(RunResource, ns, "cancel-timeout", { spec: { cancel: true } }, "merge");
        await waitFor("the operator's cache shows the cancel", async () => op.operator.runs.get(`${ns}/cancel-timeout`)?.spec.cancel === true, 30_000, 20);
      }, "1m");
      const blocked = await waitFor("termination refused", async () => {
        const r = await getRun("cancel-timeout");
        return cond(r, "Stalled")?.reason === "AccessDenied" ? r : undefined;
      }, 30_000, 200);
      // Past its timeout of 1m (counted from its creation), with a few polls of 1 s to act on it.
      const past = Date.parse(blocked?.metadata.creationTimestamp ?? "") + 60_000 + 5_000;
      await new Promise((r) => setTimeout(r, Math.max(0, past - Date.now())));
      // A reconcile past the timeout: the blocked termination tried (and refused) once more.
      const refusals = await faulted("ec2:TerminateInstances");
      await waitFor("the termination refused again past the timeout", async () => (await faulted("ec2:TerminateInstances")) > refusals, 60_000, 200);
      const held = await getRun("cancel-timeout");
      expect(held?.status?.phase).toBe("Pending");
      expect(cond(held, "TimedOut")).toBeUndefined();
      expect(cond(held, "Stalled")).toMatchObject({ status: "True", reason: "AccessDenied" });
      expect(cond(held, "MachineTerminationBlocked")).toMatchObject({ status: "True", reason: "AccessDenied" });
      expect(await faulted("ec2:TerminateInstances")).toBeGreaterThan(refusedBefore);
      await layer.configure({ faults: [] });
      const done = await phase("cancel-timeout", "Cancelled", 90_000);
      expect(done.status?.reason).toBe("Cancelled");
      expect(cond(done, "TimedOut")).toBeUndefined();
      expect(cond(done, "MachineTerminationBlocked")).toBeUndefined();
      expect(await ending(uid)).toEqual([true]);
    } finally {
      await injectionsOff();
    }
  }, 240_000);

  it("a launch refused for good after an attempt whose answer was lost fails the Run only once that attempt's machine is terminated", async () => {
    const refusedBefore = await faulted("ec2:RunInstances");
    try {
      const uid = await answerLost("refused", async () => {
        // EC2 refuses the retried launch for good.
        await layer.configure({ faults: [{ action: "ec2:RunInstances", error: "refuse", code: "InvalidParameterCombination", message: "The architecture 'arm64' of the specified instance type does not match the architecture 'x86_64' of the specified AMI.", count: 1 }] });
      });
      const failed = await phase("refused", "Failed", 60_000);
      expect(failed.status?.reason).toBe("InvalidParameterCombination");
      expect(await faulted("ec2:RunInstances")).toBe(refusedBefore + 1);
      expect(await ending(uid)).toEqual([true]);
    } finally {
      await injectionsOff();
    }
  }, 90_000);

  it("after an outage, an instance AWS no longer lists gets its outcome from the uploaded exit status, not 'lost'", async () => {
    const c = await readyCe("outage");
    await run("outage", "outage");
    const r = await started("outage");
    // The operator is down; meanwhile the pipeline ends, uploads its exit status, the machine
    // terminates and AWS forgets it.
    await op.stop();
    const uri = runArtifactsUri(c, r);
    await new S3Client({ ...aws(), forcePathStyle: true }).send(new PutObjectCommand({ Bucket: BUCKET, Key: `${uri.replace(`s3://${BUCKET}/`, "")}/exit-status`, Body: "0\n" }));
    await new EC2Client(aws()).send(new TerminateInstancesCommand({ InstanceIds: [r.status?.instance?.id ?? ""] }));
    await layer.configure({ consistency: { terminatedVisibleMs: 0 } });
    try {
      expect(await instancesOf(r.metadata.uid ?? "")).toHaveLength(0);
      op = await startOperator(kubeconfigPath(), new Map([["aws", provider]]), { namespaces: [ns], pollIntervalMs: 1_000 });
      const done = await phase("outage", "Succeeded", 30_000);
      expect(done.status?.exitCode).toBe(0);
    } finally {
      await layer.configure({ consistency: { terminatedVisibleMs: null } });
    }
  });
});

describe("CloudWatch Logs' request quota", () => {
  it("Runs whose machines end together under a GetLogEvents quota each get their outcome: a throttled read delays only its own Run", async () => {
    await readyCe("quota");
    const names = Array.from({ length: 6 }, (_, i) => `quota-${i}`);
    const runs = await startedRuns("quota", names);
    // Every pipeline ends (its exit line shipped) and every machine shuts down at once, while the
    // account may make one GetLogEvents call per second (two at once).
    await layer.configure({ rateLimits: [{ action: "logs:GetLogEvents", perSecond: 1, burst: 2 }] });
    try {
      const throttled = (await layer.stats()).throttled["logs:GetLogEvents"] ?? 0;
      for (const [i, r] of runs.entries()) await launcherSays(r, [`VMFORGE_EXIT_CODE=${i % 2 === 0 ? 0 : 3}`]);
      await new EC2Client(aws()).send(new TerminateInstancesCommand({ InstanceIds: runs.map((r) => r.status?.instance?.id ?? "") }));
      for (const [i, n] of names.entries()) {
        const done = await phase(n, i % 2 === 0 ? "Succeeded" : "Failed", 60_000);
        expect(done.status?.exitCode).toBe(i % 2 === 0 ? 0 : 3);
      }
      // The quota was met (the reads were throttled), and no Run got a guessed outcome.
      expect(((await layer.stats()).throttled["logs:GetLogEvents"] ?? 0) - throttled).toBeGreaterThan(0);
    } finally {
      await layer.configure({ rateLimits: [] });
    }
  }, 120_000);
});

describe("user data budget", () => {
  it("a launcher over 16 KiB (a large nextflowConfig within the admission budget) is sent gzip-compressed and launches", async () => {
    const config = Array.from({ length: 200 }, (_, i) => `process { withName: 'STEP_${i}' { cpus = 2; memory = '4 GB' } }`).join("\n");
    expect(Buffer.byteLength(config)).toBeLessThan(16 * 1024);
    await client.create(ComputeEnvironmentResource, {
      apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "bigconfig", namespace: ns },
      spec: { provider: "aws", credentials: { secretRef: { name: "aws" } }, nextflowConfig: config, aws: { region: REGION, instanceType: "m6i.large", workDir: `s3://${BUCKET}/work` } },
    } as ComputeEnvironment);
    await waitFor("CE bigconfig Ready", async () => cond(await getCe("bigconfig"), "Ready")?.status === "True", 60_000);
    await run("big", "bigconfig");
    const r = await started("big");
    const attr = await new EC2Client(aws()).send(new DescribeInstanceAttributeCommand({ InstanceId: r.status?.instance?.id ?? "", Attribute: "userData" }));
    const bytes = Buffer.from(attr.UserData?.Value ?? "", "base64");
    expect(bytes.length).toBeLessThanOrEqual(16 * 1024);
    expect([bytes[0], bytes[1]]).toEqual([0x1f, 0x8b]);
    const script = gunzipSync(bytes).toString("utf8");
    expect(Buffer.byteLength(script)).toBeGreaterThan(16 * 1024);
    expect(script).toContain("STEP_199");
  });
});

describe("reasons people can act on", () => {
  it("Running means the pipeline started: a machine that is up stays Launching until its launcher says so", async () => {
    await readyCe("start");
    await run("start", "start");
    const up = await settingUp("start");
    expect(up.status?.startTime).toBeUndefined();
    expect(up.status?.log?.stream).toBe(logStreamName(up));
    expect(cond(up, "Reconciling")).toMatchObject({ status: "True", reason: "SettingUp" });
    // Set-up lines are not the start: several polls later it is still Launching, its log being read.
    await launcherSays(up, ["[vmforge] vmforge launcher for Run", "[vmforge] installing Docker"]);
    const reads = await calls("logs:GetLogEvents");
    await new Promise((r) => setTimeout(r, 4_000));
    expect(await calls("logs:GetLogEvents")).toBeGreaterThan(reads);
    const still = await getRun("start");
    expect(still?.status?.phase).toBe("Launching");
    expect(still?.status?.reason).toBe("SettingUp");
    await launcherSays(up, ["[vmforge] starting: nextflow run https://github.com/nextflow-io/hello", "VMFORGE_PIPELINE_STARTED"]);
    const r = await phase("start", "Running", 30_000);
    expect(r.status?.startTime).toBeDefined();
    expect(cond(r, "Reconciling")).toMatchObject({ status: "True", reason: "Running" });
    // A Running Run's log is not read any more to learn that it started.
    const after = await calls("logs:GetLogEvents");
    await new Promise((r) => setTimeout(r, 3_000));
    expect(await calls("logs:GetLogEvents")).toBe(after);
    expect((await getRun("start"))?.status?.phase).toBe("Running");
  });

  it("a failed set-up step on a machine whose shutdown also failed: Failed/BootstrapFailed naming the step, the machine terminated after the grace period", async () => {
    await readyCe("noshut");
    await run("noshut", "noshut");
    const up = await settingUp("noshut");
    const id = up.status?.instance?.id ?? "";
    // The launcher's end, as it writes it; then `shutdown` fails and the machine keeps running.
    await launcherSays(up, [
      "[vmforge] installing Docker",
      "[vmforge] Docker did not become ready",
      "VMFORGE_BOOTSTRAP_FAILED=docker",
      "VMFORGE_EXIT_CODE=1",
      "[vmforge] shutdown failed with exit code 1; the machine keeps running",
    ]);
    const failed = await phase("noshut", "Failed", 30_000);
    expect(failed.status?.reason).toBe("BootstrapFailed");
    expect(failed.status?.message).toContain('step "docker"');
    expect(failed.status?.exitCode).toBe(1);
    expect(cond(failed, "Stalled")).toMatchObject({ status: "True", reason: "BootstrapFailed" });
    // The machine is still running right after the outcome: the grace period is the machine's own.
    expect((await instancesOf(up.metadata.uid ?? "")).map((i) => i.State?.Name)).toEqual(["running"]);
    const lingered = await waitFor("MachineLingered", async () => {
      const x = await getRun("noshut");
      return cond(x, "MachineLingered")?.status === "True" ? x : undefined;
    }, 60_000, 500);
    expect(cond(lingered, "MachineLingered")?.message).toContain(id);
    await waitFor("machine terminated", async () => (await instancesOf(up.metadata.uid ?? ""))[0]?.State?.Name === "terminated", 30_000);
    expect((await getRun("noshut"))?.status?.reason).toBe("BootstrapFailed");
  });

  it("a failed set-up step is Failed/BootstrapFailed naming it, and the launcher's own log is readable with vmforge logs", async () => {
    const c = await readyCe("boot");
    await run("boot", "boot");
    // Set-up fails before the pipeline starts, so the Run never was Running.
    const r = await settingUp("boot");
    // The machine could not start Docker; the log agent never ran either, so nothing reached
    // CloudWatch: the launcher uploaded its log and exit status, then shut down.
    const prefix = `${runArtifactsUri(c, r).replace(`s3://${BUCKET}/`, "")}`;
    const s3 = new S3Client({ ...aws(), forcePathStyle: true });
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${prefix}/launcher.log`, Body: "[vmforge] installing Docker\n[vmforge] Docker did not become ready\n" }));
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${prefix}/exit-status`, Body: "1\nbootstrap-failed=docker\n" }));
    await new EC2Client(aws()).send(new TerminateInstancesCommand({ InstanceIds: [r.status?.instance?.id ?? ""] }));
    const failed = await phase("boot", "Failed", 30_000);
    expect(failed.status?.reason).toBe("BootstrapFailed");
    expect(failed.status?.message).toContain('step "docker"');
    expect(failed.status?.message).toContain("vmforge logs boot");
    expect(cond(failed, "Stalled")).toMatchObject({ status: "True", reason: "BootstrapFailed" });
    const lines: string[] = [];
    const rc = await streamRunLogs({ kubeconfig: kubeconfigPath(), namespace: ns, run: "boot", follow: false, providers: new Map([["aws", new AwsProvider({ endpoint: motoEndpoint() })]]), out: (l) => void lines.push(l) });
    expect(rc).toBe(0);
    expect(lines).toEqual(["[vmforge] installing Docker", "[vmforge] Docker did not become ready"]);
  });
});

describe("ComputeEnvironment deletion", () => {
  it("a CE whose Secret lacks a key wrote nothing: Stalled naming the Secret once, then deleted at once", async () => {
    await ce("nokey", {}, "aws-nokey");
    const stalled = await waitFor("CE nokey Stalled", async () => {
      const c = await getCe("nokey");
      return cond(c, "Stalled")?.status === "True" ? c : undefined;
    }, 30_000);
    const m = cond(stalled, "Stalled")?.message ?? "";
    expect(m).toContain(`${ns}/aws-nokey`);
    expect(m.split(`${ns}/aws-nokey`)).toHaveLength(2); // named once
    expect(m).not.toContain(`${ns}/${ns}/`);
    expect(stalled.metadata.annotations?.[CLOUD_WRITES_ANNOTATION]).toBeUndefined();
    await client.delete(ComputeEnvironmentResource, ns, "nokey");
    await waitFor("CE nokey gone", async () => (await getCe("nokey")) === undefined, 15_000);
  });

  it("deleting a CE with running Runs: terminations batched, no log or S3 probe for the cancelled Runs", async () => {
    await readyCe("bulk");
    const uids: string[] = [];
    for (let i = 0; i < 8; i++) await run(`bulk-${i}`, "bulk");
    for (let i = 0; i < 8; i++) uids.push((await started(`bulk-${i}`)).metadata.uid ?? "");
    // Older than the window in which a new instance may not show in the CE's search (4 polls).
    await new Promise((r) => setTimeout(r, 5_000));
    const terminates = await calls("ec2:TerminateInstances");
    const logs = await calls("logs:GetLogEvents");
    const gets = await calls("s3:GetObject");
    await client.delete(ComputeEnvironmentResource, ns, "bulk");
    await waitFor("CE bulk gone", async () => (await getCe("bulk")) === undefined, 90_000, 500);
    for (let i = 0; i < 8; i++) expect((await getRun(`bulk-${i}`))?.status?.phase).toBe("Cancelled");
    for (const uid of uids) expect((await instancesOf(uid)).map((x) => x.State?.Name)).toEqual(["terminated"]);
    expect((await calls("ec2:TerminateInstances")) - terminates).toBeLessThanOrEqual(2);
    expect((await calls("logs:GetLogEvents")) - logs).toBe(0);
    expect((await calls("s3:GetObject")) - gets).toBe(0);
  });

  it("the drift check only reads when nothing drifted: no CreateInstanceProfile", async () => {
    const c = await readyCe("drift");
    const before = await calls("iam:CreateInstanceProfile");
    const gets = await calls("iam:GetRole");
    await provider.provisionEnvironment({ ce: c, credentials: { source: "secret", secretName: `${ns}/aws`, data: { accessKeyId: "testing", secretAccessKey: "testing" } }, logger: quietLogger });
    expect(await calls("iam:GetRole")).toBeGreaterThan(gets);
    expect(await calls("iam:CreateInstanceProfile")).toBe(before);
  });
});

describe("Run deletion", () => {
  it("Runs deleted together: their terminations share a call, none is sent again before a newer look nor while EC2 shows the machine shutting down; gone at the look that finds it terminated", async () => {
    await readyCe("del");
    const names = ["del-0", "del-1", "del-2"];
    const runs = await startedRuns("del", names);
    // As EC2: a terminated machine shows shutting-down for a while. Polls 3 s apart: the machines
    // are seen shutting down by two or three looks before they are seen terminated.
    await layer.configure({ consistency: { shuttingDownMs: 8_000 } });
    // A batch waits 1 s for more Runs (250 ms by default), so a loaded machine still gathers the three.
    await restartOperator(3_000, 1_000);
    try {
      const polls = op.operator.tracker.pollCount;
      await waitFor("a look", async () => op.operator.tracker.pollCount > polls, 10_000, 20);
      // Right after a look: seconds pass before the next one.
      const terminates = await calls("ec2:TerminateInstances");
      const batches = provider.batches.length;
      await Promise.all(names.map((n) => client.delete(RunResource, ns, n)));
      await waitFor("the three terminations sent", async () => runs.every((r) => provider.terminations.get(r.metadata.uid ?? "") === 1), 10_000, 50);
      await waitFor("their TerminateInstances answered", async () => (await calls("ec2:TerminateInstances")) - terminates >= provider.batches.length - batches, 10_000, 50);
      // Deleted within moments of each other: fewer calls than Runs, each one TerminateInstances.
      const sent = provider.batches.slice(batches);
      expect(sent.flat().sort()).toEqual(runs.map((r) => r.metadata.uid ?? "").sort());
      expect(sent.length).toBeLessThan(3);
      expect((await calls("ec2:TerminateInstances")) - terminates).toBe(sent.length);
      // A second terminateRun while the machine shuts down finds nothing to send.
      expect((await instancesOf(runs[0]?.metadata.uid ?? "")).map((x) => x.State?.Name)).toEqual(["shutting-down"]);
      const c = await getCe("del");
      if (!c) throw new Error("no CE del");
      const ctx = { ce: c, credentials: { source: "secret" as const, secretName: `${ns}/aws`, data: { accessKeyId: "testing", secretAccessKey: "testing" } }, logger: quietLogger };
      await new AwsProvider({ endpoint: motoEndpoint() }).terminateRun(ctx, runs[0] as Run);
      await waitFor("the deleted Runs gone", async () => (await Promise.all(names.map(getRun))).every((r) => r === undefined), 60_000, 300);
      for (const r of runs) expect(provider.terminations.get(r.metadata.uid ?? "")).toBe(1);
      expect((await calls("ec2:TerminateInstances")) - terminates).toBe(sent.length);
      for (const r of runs) expect((await instancesOf(r.metadata.uid ?? "")).map((x) => x.State?.Name)).toEqual(["terminated"]);
    } finally {
      await layer.configure({ consistency: { shuttingDownMs: 0 } });
      await restartOperator(1_000);
    }
  }, 120_000);

  it("Runs cancelled together: their terminations share a call; ended, none is sent again before a look shows its machine still up", async () => {
    await readyCe("cxl");
    const names = ["cxl-0", "cxl-1", "cxl-2"];
    const runs = await startedRuns("cxl", names);
    const uids = runs.map((r) => r.metadata.uid ?? "");
    // The machines show shutting-down for 8 s (polls 3 s apart): the Runs end while the looks
    // still show them running or shutting down.
    await layer.configure({ consistency: { shuttingDownMs: 8_000 } });
    await restartOperator(3_000, 1_000);
    try {
      const terminates = await calls("ec2:TerminateInstances");
      const batches = provider.batches.length;
      await Promise.all(names.map((n) => client.patch(RunResource, ns, n, { spec: { cancel: true } }, "merge")));
      for (const n of names) expect((await phase(n, "Cancelled", 30_000)).status?.reason).toBe("Cancelled");
      const sent = provider.batches.slice(batches);
      expect(sent.flat().sort()).toEqual([...uids].sort());
      expect(sent.length).toBeLessThan(3);
      // Each Run follows its machine until a look finds it terminated; no Run sends its own call
      // meanwhile (the looks before the one that finds it shutting down show what the send changed).
      await waitFor("the machines recorded terminated", async () => (await Promise.all(names.map(getRun))).every((r) => r?.status?.instance?.state === "terminated"), 60_000, 300);
      for (const uid of uids) expect(provider.terminations.get(uid)).toBe(1);
      expect((await calls("ec2:TerminateInstances")) - terminates).toBe(sent.length);
      for (const uid of uids) expect((await instancesOf(uid)).map((x) => x.State?.Name)).toEqual(["terminated"]);
    } finally {
      await layer.configure({ consistency: { shuttingDownMs: 0 } });
      await restartOperator(1_000);
    }
  }, 120_000);

  it("Runs deleted together, one machine with termination protection: the others end and their Runs go; that Run says what blocks it, and goes once protection is lifted", async () => {
    // One subnet: the three machines share an Availability Zone, so EC2 (and the layer) terminates
    // none of those named with the protected one, and only sending again Run by Run ends the others.
    const subnets = await new EC2Client(aws()).send(new DescribeSubnetsCommand({ Filters: [{ Name: "default-for-az", Values: ["true"] }] }));
    const subnet = subnets.Subnets?.[0]?.SubnetId ?? "";
    await readyCe("prot", { subnetIds: [subnet] });
    const names = ["prot-0", "prot-1", "prot-2"];
    const runs = await startedRuns("prot", names);
    const [u0, u1, u2] = runs.map((r) => r.metadata.uid ?? "");
    const guarded = runs[1]?.status?.instance?.id ?? "";
    const ec2 = new EC2Client(aws());
    // As a user may, by hand: EC2 then refuses any TerminateInstances naming it (the layer: as EC2,
    // the others named in its Availability Zone are not terminated either).
    await ec2.send(new ModifyInstanceAttributeCommand({ InstanceId: guarded, DisableApiTermination: { Value: true } }));
    // A batch waits 1 s for more Runs (250 ms by default), so a loaded machine still gathers the three.
    await restartOperator(1_000, 1_000);
    const batches = provider.batches.length;
    try {
      try {
        await Promise.all(names.map((n) => client.delete(RunResource, ns, n)));
        await waitFor("the other two Runs gone", async () => (await getRun("prot-0")) === undefined && (await getRun("prot-2")) === undefined, 60_000, 300);
        for (const uid of [u0, u2]) expect((await instancesOf(uid ?? "")).map((x) => x.State?.Name)).toEqual(["terminated"]);
        for (const r of runs) expect((await instancesOf(r.metadata.uid ?? ""))[0]?.SubnetId).toBe(subnet);
        // The three went in one call, refused as a whole; the two ended because each was sent again alone.
        expect([...(provider.batches[batches] ?? [])].sort()).toEqual([u0, u1, u2].sort());
        const blocked = await waitFor("prot-1 blocked", async () => {
          const r = await getRun("prot-1");
          return cond(r, "MachineTerminationBlocked")?.status === "True" ? r : undefined;
        }, 30_000, 300);
        expect(cond(blocked, "Stalled")?.reason).toBe("OperationNotPermitted");
        expect(cond(blocked, "MachineTerminationBlocked")?.message).toContain(`cannot terminate the Run's machine ${guarded}`);
        expect(cond(blocked, "MachineTerminationBlocked")?.message).toContain("disableApiTermination");
        expect((await instancesOf(u1 ?? "")).map((x) => x.State?.Name)).toEqual(["running"]);
      } finally {
        await ec2.send(new ModifyInstanceAttributeCommand({ InstanceId: guarded, DisableApiTermination: { Value: false } }));
      }
      // Tried again after the block's wait (20 polls): now it ends, and the Run goes.
      await waitFor("prot-1 gone", async () => (await getRun("prot-1")) === undefined, 90_000, 300);
      expect((await instancesOf(u1 ?? "")).map((x) => x.State?.Name)).toEqual(["terminated"]);
    } finally {
      await restartOperator(1_000);
    }
  }, 180_000);

  it("a machine that stays shutting down is not waited for in silence: the termination is sent again 8 polls after the last", async () => {
    await readyCe("del-slow");
    await run("del-slow", "del-slow");
    const r = await started("del-slow");
    const uid = r.metadata.uid ?? "";
    // Polls 1 s apart: 8 polls are 8 s, and the machine shows shutting-down for 12 s.
    await layer.configure({ consistency: { shuttingDownMs: 12_000 } });
    try {
      const terminates = await calls("ec2:TerminateInstances");
      await client.delete(RunResource, ns, "del-slow");
      await waitFor("the Run gone", async () => (await getRun("del-slow")) === undefined, 60_000, 300);
      // Sent at the deletion and once more 8 s later (finding the machine shutting down: nothing to
      // end); a third only if the look that finds it terminated came late (16 s after the deletion).
      const sent = provider.terminations.get(uid) ?? 0;
      expect(sent).toBeGreaterThanOrEqual(2);
      expect(sent).toBeLessThanOrEqual(3);
      expect((await calls("ec2:TerminateInstances")) - terminates).toBe(1);
    } finally {
      await layer.configure({ consistency: { shuttingDownMs: 0 } });
    }
  }, 120_000);
});

describe("timeout", () => {
  it("a Run cancelled while its timeout's termination is in flight (EC2 has not answered it) ends Cancelled, and no longer says TimedOut", async () => {
    await readyCe("late");
    await client.patch(ComputeEnvironmentResource, ns, "late", { spec: { defaultRunTimeout: "1m" } }, "merge");
    await waitFor("the operator's cache has the CE Ready with its timeout", async () => {
      const c = op.operator.ces.get(`${ns}/late`);
      return c?.spec.defaultRunTimeout === "1m" && c.status?.observedGeneration === c.metadata.generation && cond(c, "Ready")?.status === "True";
    }, 60_000, 20);
    // EC2 takes its time with every termination until the test lets them through.
    await layer.configure({ holds: [{ action: "ec2:TerminateInstances" }] });
    try {
      const [r] = await startedRuns("late", ["late"]);
      const uid = r?.metadata.uid ?? "";
      // Past its 1m (counted from its creation): the timeout decided and its machine's termination sent, unanswered.
      const timing = await waitFor("TimedOut said and the termination in flight", async () => {
        const x = await getRun("late");
        return cond(x, "TimedOut")?.status === "True" && ((await layer.stats()).holding["ec2:TerminateInstances"] ?? 0) >= 1 ? x : undefined;
      }, 120_000, 200);
      expect(["Launching", "Running"]).toContain(timing.status?.phase);
      await client.patch(RunResource, ns, "late", { spec: { cancel: true } }, "merge");
      // Once the operator's cache has the cancel, every reconcile of the Run takes it (before it follows the machine).
      await waitFor("the cancel in the operator's cache", async () => op.operator.runs.get(`${ns}/late`)?.spec.cancel === true, 10_000, 50);
      expect((await instancesOf(uid)).map((i) => i.State?.Name)).toEqual(["running"]);
      await layer.configure({ holds: [] });
      const ended = await phase("late", "Cancelled", 60_000);
      expect(ended.status?.reason).toBe("Cancelled");
      expect(cond(ended, "TimedOut")).toBeUndefined();
      expect(cond(ended, "Stalled")?.reason).toBe("Cancelled");
      expect((await instancesOf(uid)).map((i) => i.State?.Name)).toEqual(["terminated"]);
    } finally {
      await layer.configure({ holds: [] });
    }
  }, 240_000);
});
