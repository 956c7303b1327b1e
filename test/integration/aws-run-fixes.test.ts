/**
 * Issue 12's AWS points through the operator, on the real kube-apiserver and moto. The stricter
 * behaviours AWS has and moto lacks are put in front of the real provider with SDK middleware:
 * `Unsupported` per subnet, and DescribeInstances not showing instances (eventual consistency for
 * a new one, and AWS forgetting a terminated one).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DescribeInstancesCommand, EC2Client } from "@aws-sdk/client-ec2";
import type { DescribeInstancesCommandOutput, Instance } from "@aws-sdk/client-ec2";
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { awsClients } from "../../src/cloud/aws/clients.js";
import type { AwsClientOptions } from "../../src/cloud/aws/clients.js";
import { runArtifactsUri } from "../../src/cloud/aws/launcher.js";
import { CLOUD_WRITES_ANNOTATION } from "../../src/controllers/computeenvironment/cloud-writes.js";
import { SecretResource } from "../../src/controllers/shared.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { installCrds, startOperator, waitFor } from "../support/operator.js";
import type { RunningOperator } from "../support/operator.js";
import { freshNamespace, kubeconfigPath, motoEndpoint, motoReset } from "../harness/helpers.js";

const REGION = "eu-west-1";
const BUCKET = "vmforge-aws-run-fixes";
let client: KubeClient;
let ns: string;
let op: RunningOperator;

/** What the middleware does, switched per test. */
const strict = {
  /** RunInstances in these subnets answers Unsupported. */
  unsupportedSubnets: new Set<string>(),
  /** RunInstances of these types answers Unsupported everywhere. */
  unsupportedTypes: new Set<string>(),
  /** New instances are not shown by DescribeInstances while set. */
  hideNew: false,
  /** Instances DescribeInstances does not show. */
  hidden: new Set<string>(),
};
const counts = new Map<string, number>();
const count = (name: string) => counts.get(name) ?? 0;

function awsError(name: string, message: string): Error {
  return Object.assign(new Error(message), { name, Code: name, $fault: "client", $metadata: { httpStatusCode: 400 } });
}

function strictProvider(): AwsProvider {
  return new AwsProvider({
    endpoint: motoEndpoint(),
    missingProbeAfterMs: 0,
    clientFactory: (o: AwsClientOptions) => {
      const c = awsClients(o);
      for (const sdk of [c.ec2, c.logs, c.s3, c.iam]) {
        (sdk as { middlewareStack: typeof c.ec2.middlewareStack }).middlewareStack.add((next, context) => async (args) => {
          const name = (context.commandName ?? "").replace(/Command$/, "");
          counts.set(name, count(name) + 1);
          return next(args);
        }, { step: "initialize", name: "countCalls" });
      }
      c.ec2.middlewareStack.add((next, context) => async (args) => {
        const input = args.input as { SubnetId?: string; InstanceType?: string };
        if (context.commandName === "RunInstancesCommand") {
          if (strict.unsupportedTypes.has(input.InstanceType ?? "") || strict.unsupportedSubnets.has(input.SubnetId ?? "")) {
            throw awsError("Unsupported", `Your requested instance type (${input.InstanceType}) is not supported in your requested Availability Zone.`);
          }
          const out = await next(args);
          if (strict.hideNew) for (const i of (out.output as { Instances?: Instance[] }).Instances ?? []) if (i.InstanceId) strict.hidden.add(i.InstanceId);
          return out;
        }
        if (context.commandName === "DescribeInstancesCommand") {
          const out = await next(args);
          const o = out.output as DescribeInstancesCommandOutput;
          for (const r of o.Reservations ?? []) r.Instances = (r.Instances ?? []).filter((i) => !strict.hidden.has(i.InstanceId ?? ""));
          o.Reservations = (o.Reservations ?? []).filter((r) => (r.Instances ?? []).length > 0);
          return out;
        }
        return next(args);
      }, { step: "initialize", name: "strictEc2" });
      return c;
    },
  });
}

const aws = () => ({ endpoint: motoEndpoint(), region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });

async function instancesOf(runUid: string): Promise<Instance[]> {
  const out = await new EC2Client(aws()).send(new DescribeInstancesCommand({ Filters: [{ Name: "tag:vmforge.dev/run-uid", Values: [runUid] }] }));
  return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []);
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

beforeAll(async () => {
  await motoReset();
  await new S3Client({ ...aws(), forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "aws-fixes");
  for (const [name, data] of [["aws", { accessKeyId: "testing", secretAccessKey: "testing" }], ["aws-nokey", { accessKeyId: "testing" }]] as const) {
    await client.create(SecretResource, { apiVersion: "v1", kind: "Secret", metadata: { name, namespace: ns }, stringData: data } as SecretObject);
  }
  op = await startOperator(kubeconfigPath(), new Map([["aws", strictProvider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
});

afterAll(async () => {
  await op?.stop();
});

describe("launch across Availability Zones", () => {
  it("Unsupported in some subnets: launched in another one, once", async () => {
    const c = await readyCe("zones");
    const subnets = c.status?.aws?.subnetIds ?? [];
    expect(subnets.length).toBeGreaterThan(1);
    for (const s of subnets.slice(1)) strict.unsupportedSubnets.add(s);
    try {
      await run("zoned", "zones");
      const r = await phase("zoned", "Running");
      const insts = await instancesOf(r.metadata.uid ?? "");
      expect(insts).toHaveLength(1);
      expect(insts[0]?.SubnetId).toBe(subnets[0]);
    } finally {
      strict.unsupportedSubnets.clear();
    }
  });

  it("a type offered in no zone of the CE fails the Run at once, with the reason", async () => {
    strict.unsupportedTypes.add("c6i.large");
    try {
      await readyCe("nowhere", { instanceType: "c6i.large" });
      await run("nowhere", "nowhere");
      const r = await phase("nowhere", "Failed", 30_000);
      expect(r.status?.reason).toBe("InstanceTypeUnavailable");
      expect(r.status?.message).toMatch(/c6i\.large is not offered/);
      expect(cond(r, "Stalled")).toMatchObject({ status: "True", reason: "InstanceTypeUnavailable" });
      expect(await instancesOf(r.metadata.uid ?? "")).toHaveLength(0);
    } finally {
      strict.unsupportedTypes.clear();
    }
  });
});

describe("termination and outcome when DescribeInstances does not show the machine", () => {
  it("a Run deleted seconds after launch leaves nothing behind, although its new instance is not listed yet", async () => {
    await readyCe("fresh");
    strict.hideNew = true;
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
      strict.hideNew = false;
    }
  });

  it("an instance AWS no longer lists: the outcome comes from the uploaded exit status, not 'lost'", async () => {
    const c = await readyCe("outage");
    await run("outage", "outage");
    const r = await phase("outage", "Running");
    const uri = runArtifactsUri(c, r);
    const key = `${uri.replace(`s3://${BUCKET}/`, "")}/exit-status`;
    await new S3Client({ ...aws(), forcePathStyle: true }).send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: "0\n" }));
    for (const i of await instancesOf(r.metadata.uid ?? "")) strict.hidden.add(i.InstanceId ?? "");
    const done = await phase("outage", "Succeeded", 30_000);
    expect(done.status?.exitCode).toBe(0);
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
    for (let i = 0; i < 8; i++) uids.push((await phase(`bulk-${i}`, "Running")).metadata.uid ?? "");
    // Older than the window in which a new instance may not show in the CE's search (4 polls).
    await new Promise((r) => setTimeout(r, 5_000));
    const terminates = count("TerminateInstances");
    const logs = count("GetLogEvents");
    const gets = count("GetObject");
    await client.delete(ComputeEnvironmentResource, ns, "bulk");
    await waitFor("CE bulk gone", async () => (await getCe("bulk")) === undefined, 90_000, 500);
    for (let i = 0; i < 8; i++) expect((await getRun(`bulk-${i}`))?.status?.phase).toBe("Cancelled");
    for (const uid of uids) expect((await instancesOf(uid)).map((x) => x.State?.Name)).toEqual(["terminated"]);
    expect(count("TerminateInstances") - terminates).toBeLessThanOrEqual(2);
    expect(count("GetLogEvents") - logs).toBe(0);
    expect(count("GetObject") - gets).toBe(0);
  });
});
