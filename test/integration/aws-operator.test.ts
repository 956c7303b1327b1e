/**
 * The operator with its real AWS provider against the real kube-apiserver and moto. Machines are
 * played by the sandbox's InstancePlayer, which runs the launcher the operator rendered (moto never
 * runs user data); a machine a test leaves alone only says that its pipeline started. Covers
 * issue 6's integration claims: full life cycle (success and failure), restart right after RunInstances, Spot, cancel, timeout, Run deletion mid-run, CE deletion with
 * running Runs, and 50 Runs across 2 CEs tracked with a bounded number of DescribeInstances calls.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DescribeInstancesCommand, EC2Client } from "@aws-sdk/client-ec2";
import type { Instance } from "@aws-sdk/client-ec2";
import { GetRoleCommand, IAMClient } from "@aws-sdk/client-iam";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import type { CloudProvider, EnvContext, RunDescription } from "../../src/cloud/provider.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { awsClients } from "../../src/cloud/aws/clients.js";
import type { AwsClientOptions } from "../../src/cloud/aws/clients.js";
import { FINALIZER, SecretResource } from "../../src/controllers/shared.js";
import { launchDecided } from "../../src/controllers/run/phases.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { InstancePlayer } from "../sandbox/instance.js";
import { streamRunLogs } from "../../src/cli/logs.js";
import { installCrds, startOperator, waitFor } from "../support/operator.js";
import type { RunningOperator } from "../support/operator.js";
import { freshNamespace, kubeconfigPath, motoEndpoint, motoReset } from "../harness/helpers.js";

const REGION = "eu-west-1";
const BUCKET = "vmforge-aws-operator-test";
let client: KubeClient;
let ns: string;
let op: RunningOperator;
let player: InstancePlayer;
let playDir: string;
let describeCalls = 0;
let lastPhases = "";
const exitCodes = new Map<string, number>();

const aws = () => ({ endpoint: motoEndpoint(), region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });

/** The real provider, with every client counting the DescribeInstances calls it sends. */
function countingProvider(): AwsProvider {
  return new AwsProvider({
    endpoint: motoEndpoint(),
    clientFactory: (o: AwsClientOptions) => {
      const c = awsClients(o);
      c.ec2.middlewareStack.add((next, context) => async (args) => {
        if (context.commandName === "DescribeInstancesCommand") describeCalls++;
        return next(args);
      }, { step: "initialize", name: "countDescribeInstances" });
      return c;
    },
  });
}

async function instancesOf(runUid: string): Promise<Instance[]> {
  const out = await new EC2Client(aws()).send(new DescribeInstancesCommand({ Filters: [{ Name: "tag:vmforge.dev/run-uid", Values: [runUid] }] }));
  return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []);
}

async function ce(name: string): Promise<ComputeEnvironment> {
  await client.create(ComputeEnvironmentResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name, namespace: ns },
    spec: { provider: "aws", credentials: { secretRef: { name: "aws" } }, aws: { region: REGION, instanceType: "m6i.large", workDir: `s3://${BUCKET}/work` } },
  } as ComputeEnvironment);
  return waitFor(`CE ${name} Ready`, async () => {
    const c = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name);
    return c?.status?.conditions?.some((x) => x.type === "Ready" && x.status === "True") ? c : undefined;
  }, 60_000);
}

async function run(name: string, ceName: string, extra: Partial<Run["spec"]> = {}): Promise<void> {
  await client.create(RunResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name, namespace: ns },
    spec: { computeEnvironmentRef: { name: ceName }, pipeline: { repository: "https://github.com/nextflow-io/hello" }, ...extra },
  } as Run);
}

const getRun = (name: string) => client.get<Run>(RunResource, ns, name);
const phase = (name: string, p: string, timeoutMs = 60_000) =>
  waitFor(`Run ${name} ${p}`, async () => {
    const r = await getRun(name);
    return r?.status?.phase === p ? r : undefined;
  }, timeoutMs, 300);

beforeAll(async () => {
  await motoReset();
  await new S3Client({ ...aws(), forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "aws-op");
  await client.create(SecretResource, {
    apiVersion: "v1", kind: "Secret", metadata: { name: "aws", namespace: ns }, stringData: { accessKeyId: "testing", secretAccessKey: "testing" },
  } as SecretObject);
  playDir = mkdtempSync(join(tmpdir(), "vmforge-aws-op-"));
  player = new InstancePlayer({ endpoint: motoEndpoint(), region: REGION, dir: playDir, say: () => undefined, exitCodeFor: (n) => exitCodes.get(n), startLeftAlone: true });
  player.start();
  op = await startOperator(kubeconfigPath(), new Map([["aws", countingProvider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
});

afterAll(async () => {
  await op?.stop();
  await player?.stop();
  if (playDir) rmSync(playDir, { recursive: true, force: true });
});

describe("AWS Runs through the operator", () => {
  it("a Run succeeds: one instance, the launcher's log, exit code 0", async () => {
    await ce("main");
    exitCodes.set("ok", 0);
    await run("ok", "main");
    const done = await phase("ok", "Succeeded", 90_000);
    expect(done.status?.exitCode).toBe(0);
    expect(done.status?.log?.provider).toBe("cloudwatch");
    const insts = await instancesOf(done.metadata.uid ?? "");
    expect(insts).toHaveLength(1);
    expect(insts[0]?.State?.Name).toBe("terminated");
    expect(insts[0]?.MetadataOptions?.HttpTokens).toBe("required");
  });

  it("vmforge logs prints a finished Run's log from CloudWatch Logs", async () => {
    const lines: string[] = [];
    const code = await streamRunLogs({
      run: "ok", namespace: ns, follow: false, kubeconfig: kubeconfigPath(), providers: new Map([["aws", new AwsProvider({ endpoint: motoEndpoint() })]]),
      out: (l) => lines.push(l),
    });
    expect(code).toBe(0);
    expect(lines).toContain("Bonjour world!");
    expect(lines.some((l) => l === "VMFORGE_EXIT_CODE=0")).toBe(true);
  });

  it("a failing pipeline ends Failed with its exit code, and vmforge logs -f follows it to the end", async () => {
    exitCodes.set("bad", 4);
    await run("bad", "main");
    await phase("bad", "Running", 60_000);
    const followed: string[] = [];
    const following = streamRunLogs({
      run: "bad", namespace: ns, follow: true, pollMs: 500, kubeconfig: kubeconfigPath(),
      providers: new Map([["aws", new AwsProvider({ endpoint: motoEndpoint() })]]), out: (l) => followed.push(l),
    });
    const f = await phase("bad", "Failed", 90_000);
    expect(await following).toBe(0);
    expect(followed).toContain("VMFORGE_EXIT_CODE=4");
    expect(f.status?.exitCode).toBe(4);
    expect(f.status?.reason).toBe("PipelineFailed");
  });

  it("Spot Runs are launched as Spot instances", async () => {
    await run("spot", "main", { overrides: { spot: true } });
    const r = await phase("spot", "Running");
    const [inst] = await instancesOf(r.metadata.uid ?? "");
    expect(inst?.InstanceLifecycle).toBe("spot");
    await client.patch(RunResource, ns, "spot", { spec: { cancel: true } }, "merge");
    await phase("spot", "Cancelled");
  });

  it("cancel terminates the instance", async () => {
    await run("cancel", "main");
    const r = await phase("cancel", "Running");
    await client.patch(RunResource, ns, "cancel", { spec: { cancel: true } }, "merge");
    await phase("cancel", "Cancelled");
    await waitFor("instance terminated", async () => (await instancesOf(r.metadata.uid ?? ""))[0]?.State?.Name === "terminated");
  });

  it("deleting a Run mid-run terminates its instance before the Run goes away", async () => {
    await run("del", "main");
    const r = await phase("del", "Running");
    await client.delete(RunResource, ns, "del");
    await waitFor("Run del gone", async () => (await getRun("del")) === undefined, 60_000);
    expect((await instancesOf(r.metadata.uid ?? ""))[0]?.State?.Name).toBe("terminated");
  });

  it("a restart right after RunInstances adopts the instance: exactly one", async () => {
    await op.stop();
    // First operator: the machine is launched, then the process "dies" before recording it.
    const real = countingProvider();
    let launched: RunDescription | undefined;
    const crashing: CloudProvider = Object.assign(Object.create(real) as CloudProvider, {
      launchRun: async (ctx: EnvContext, r: Run) => {
        launched = await real.launchRun(ctx, r);
        throw new Error("operator killed right after RunInstances");
      },
    });
    const dying = await startOperator(kubeconfigPath(), new Map([["aws", crashing]]), { namespaces: [ns], pollIntervalMs: 1_000 });
    await run("crash", "main");
    await waitFor("RunInstances happened", async () => launched !== undefined);
    await dying.stop();
    const before = await getRun("crash");
    // the launch was decided (the annotation, with the finalizer) and no machine is recorded
    expect(before && launchDecided(before)).toBe(true);
    expect(before?.metadata.finalizers).toContain(FINALIZER);
    expect(before?.status?.instance).toBeUndefined();
    op = await startOperator(kubeconfigPath(), new Map([["aws", countingProvider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
    const r = await phase("crash", "Running");
    expect(r.status?.instance?.id).toBe(launched?.instanceId);
    expect(await instancesOf(r.metadata.uid ?? "")).toHaveLength(1);
    await client.patch(RunResource, ns, "crash", { spec: { cancel: true } }, "merge");
    await phase("crash", "Cancelled");
  });

  it("a Run that exceeds its timeout is stopped and fails with reason Timeout", async () => {
    await run("slow", "main", { timeout: "1m" });
    const r = await phase("slow", "Running");
    const f = await phase("slow", "Failed", 120_000);
    expect(f.status?.reason).toBe("Timeout");
    await waitFor("instance terminated", async () => (await instancesOf(r.metadata.uid ?? ""))[0]?.State?.Name === "terminated");
  }, 150_000);

  it("50 Runs across 2 CEs are followed with a bounded number of DescribeInstances calls per poll", async () => {
    await ce("second");
    const names: string[] = [];
    for (let i = 0; i < 50; i++) {
      const name = `many-${i}`;
      names.push(name);
      await run(name, i % 2 === 0 ? "main" : "second");
    }
    await waitFor("all 50 Running", async () => {
      void lastPhases;
      const list = await client.list<Run>(RunResource, { namespace: ns });
      const mine = list.items.filter((r) => names.includes(r.metadata.name ?? ""));
      const byPhase: Record<string, number> = {};
      for (const r of mine) byPhase[`${r.status?.phase}/${r.status?.reason}`] = (byPhase[`${r.status?.phase}/${r.status?.reason}`] ?? 0) + 1;
      if (mine.filter((r) => r.status?.phase === "Running").length === 50) return true;
      lastPhases = JSON.stringify(byPhase);
      return false;
    }, 120_000, 500).catch((e: Error) => {
      throw new Error(`${e.message}; phases: ${lastPhases}`);
    });
    // Steady state: count calls over several poll intervals.
    const start = describeCalls;
    const polls = op.operator.tracker.pollCount;
    // Wait for at least three polls whatever the machine's load (no fixed sleep).
    await waitFor("three polls", async () => op.operator.tracker.pollCount - polls >= 3, 60_000, 200);
    const calls = describeCalls - start;
    const pollsDone = op.operator.tracker.pollCount - polls;
    expect(pollsDone).toBeGreaterThanOrEqual(3);
    // Both CEs share one account and region: one DescribeInstances per poll, not one per Run.
    expect(calls).toBeLessThanOrEqual(pollsDone + 1);

    // Deleting a CE with running Runs: its instances are terminated, then its role and profile removed.
    const second = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "second");
    const roleName = second?.status?.aws?.roleArn?.split("/").pop() ?? "";
    expect(roleName).toMatch(/^TowerForge-/);
    await client.delete(ComputeEnvironmentResource, ns, "second");
    await waitFor("CE second gone", async () => (await client.get(ComputeEnvironmentResource, ns, "second")) === undefined, 120_000, 500);
    const list = await client.list<Run>(RunResource, { namespace: ns });
    const ofSecond = list.items.filter((r) => r.spec.computeEnvironmentRef.name === "second");
    expect(ofSecond).toHaveLength(25);
    for (const r of ofSecond) {
      expect(r.status?.phase).toBe("Cancelled");
      expect((await instancesOf(r.metadata.uid ?? ""))[0]?.State?.Name).toBe("terminated");
    }
    const gone = await new IAMClient(aws()).send(new GetRoleCommand({ RoleName: roleName })).then(() => "still there", (e: { name?: string }) => e.name);
    expect(gone).toBe("NoSuchEntityException");
  }, 300_000);
});
