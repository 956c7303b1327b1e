/**
 * Issue 14, log retention, through the operator on the real kube-apiserver: spec.logRetentionDays
 * becomes the retention of the CE's CloudWatch Logs group (set by the instances' CloudWatch agent,
 * which the operator configures and whose role it grants logs:PutRetentionPolicy on that group) and
 * of its Log Analytics table; both go when the CE is disposed of, and stay with deletionPolicy Retain.
 * AWS: moto behind the strict layer, machines played by the sandbox's InstancePlayer. Azure: the
 * Azure emulator, the operator holding the seed's roles plus the documented additions.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CloudWatchLogsClient, CreateLogGroupCommand, DescribeLogGroupsCommand } from "@aws-sdk/client-cloudwatch-logs";
import { GetRolePolicyCommand, IAMClient, ListRolePoliciesCommand } from "@aws-sdk/client-iam";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { ResourceManagementClient } from "@azure/arm-resources";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { LOG_TABLE } from "../../src/cloud/azure/names.js";
import { SecretResource } from "../../src/controllers/shared.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { InstancePlayer } from "../sandbox/instance.js";
import { installCrds, startOperator, waitFor } from "../support/operator.js";
import type { RunningOperator } from "../support/operator.js";
import { azureClientOptions, azureInfo, azureTestCredential, freshNamespace, kubeconfigPath, motoEndpoint, motoReset } from "../harness/helpers.js";
import { ceBody, operatorPrincipal, putSecret, waitGone, waitReady, createWorkStorage, emulatorProvider } from "../support/azure-env.js";

let kube: KubeClient;

beforeAll(async () => {
  kube = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(kube);
});

describe("log retention on AWS (moto behind the strict layer)", () => {
  const REGION = "eu-west-1";
  const BUCKET = "vmforge-log-retention-test";
  const aws = () => ({ endpoint: motoEndpoint(), region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });
  let op: RunningOperator;
  let player: InstancePlayer;
  let playDir: string;
  let ns: string;

  const group = async (name: string) => {
    const out = await new CloudWatchLogsClient(aws()).send(new DescribeLogGroupsCommand({ logGroupNamePrefix: name }));
    return out.logGroups?.find((g) => g.logGroupName === name);
  };

  const createCe = async (name: string, extra: Partial<ComputeEnvironment["spec"]>) => {
    await kube.create(ComputeEnvironmentResource, {
      apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name, namespace: ns },
      spec: { provider: "aws", credentials: { secretRef: { name: "aws" } }, aws: { region: REGION, instanceType: "m6i.large", workDir: `s3://${BUCKET}/work` }, ...extra },
    } as ComputeEnvironment);
    return waitFor(`CE ${name} Ready`, async () => {
      const c = await kube.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name);
      return c?.status?.conditions?.some((x) => x.type === "Ready" && x.status === "True") ? c : undefined;
    }, 60_000);
  };

  beforeAll(async () => {
    await motoReset();
    await new S3Client({ ...aws(), forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
    ns = await freshNamespace(kube, "logret");
    await kube.create(SecretResource, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "aws", namespace: ns }, stringData: { accessKeyId: "testing", secretAccessKey: "testing" },
    } as SecretObject);
    playDir = mkdtempSync(join(tmpdir(), "vmforge-logret-"));
    player = new InstancePlayer({ endpoint: motoEndpoint(), region: REGION, dir: playDir, say: () => undefined, exitCodeFor: () => 0 });
    player.start();
    op = await startOperator(kubeconfigPath(), new Map([["aws", new AwsProvider({ endpoint: motoEndpoint() })]]), { namespaces: [ns], pollIntervalMs: 1_000 });
  });

  afterAll(async () => {
    await op?.stop();
    await player?.stop();
    if (playDir) rmSync(playDir, { recursive: true, force: true });
  });

  it("the CE's log group gets spec.logRetentionDays from the Run's agent, whose role may set it; disposal deletes the group", async () => {
    const ce = await createCe("main", { logRetentionDays: 14 });
    const name = ce.status?.aws?.logGroup ?? "";
    expect(name).toBe(`/vmforge/${ns}/main`);
    // The instance role may set the retention of exactly this group (the operator's own policy may not).
    const iam = new IAMClient(aws());
    const roleName = (ce.status?.aws?.roleArn ?? "").split("/").pop() ?? "";
    const [policyName] = (await iam.send(new ListRolePoliciesCommand({ RoleName: roleName }))).PolicyNames ?? [];
    const doc = JSON.parse(decodeURIComponent((await iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: policyName }))).PolicyDocument ?? "{}")) as { Statement: { Action: string[]; Resource: string[] }[] };
    const logs = doc.Statement.find((s) => s.Action.includes("logs:PutRetentionPolicy"));
    expect(logs?.Resource).toEqual([expect.stringMatching(new RegExp(`:log-group:${name}$`)), expect.stringMatching(new RegExp(`:log-group:${name}:\\*$`))]);

    await kube.create(RunResource, {
      apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "hello", namespace: ns },
      spec: { computeEnvironmentRef: { name: "main" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
    } as Run);
    await waitFor("Run hello Succeeded", async () => (await kube.get<Run>(RunResource, ns, "hello"))?.status?.phase === "Succeeded", 120_000, 300);
    expect((await group(name))?.retentionInDays).toBe(14);

    await kube.delete(ComputeEnvironmentResource, ns, "main");
    await waitFor("CE main gone", async () => (await kube.get(ComputeEnvironmentResource, ns, "main")) === undefined, 90_000, 300);
    expect(await group(name)).toBeUndefined();
  });

  it("deletionPolicy Retain leaves the log group", async () => {
    await createCe("kept", { logRetentionDays: 7, deletionPolicy: "Retain" });
    const name = `/vmforge/${ns}/kept`;
    // As a Run's agent would have made it.
    await new CloudWatchLogsClient(aws()).send(new CreateLogGroupCommand({ logGroupName: name }));
    await kube.delete(ComputeEnvironmentResource, ns, "kept");
    await waitFor("CE kept gone", async () => (await kube.get(ComputeEnvironmentResource, ns, "kept")) === undefined, 60_000, 300);
    expect((await group(name))?.logGroupName).toBe(name);
  });
});

describe("log retention on Azure (emulator)", () => {
  let op: RunningOperator;
  let rm: ResourceManagementClient;
  let ns: string;
  const API = "2022-10-01";

  const table = async (ce: ComputeEnvironment) => {
    try {
      const t = await rm.resources.getById(`${ce.status?.azure?.workspaceId ?? ""}/tables/${LOG_TABLE}`, API);
      return t.properties as { retentionInDays?: number; totalRetentionInDays?: number };
    } catch (e) {
      if ((e as { statusCode?: number }).statusCode === 404) return undefined;
      throw e;
    }
  };

  beforeAll(async () => {
    const info = await azureInfo();
    const cred = await azureTestCredential();
    rm = new ResourceManagementClient(cred, info.subscriptionId, azureClientOptions());
    await createWorkStorage(rm, info.subscriptionId);
    const principal = await operatorPrincipal(info, "vmforge-logret");
    ns = await freshNamespace(kube, "azlogret");
    await putSecret(kube, info, ns, "azure-creds", principal);
    const provider = emulatorProvider();
    op = await startOperator(kubeconfigPath(), new Map([["azure", provider]]), { namespaces: [ns], pollIntervalMs: 1_000 });
  }, 120_000);

  afterAll(async () => {
    await op?.stop();
  });

  it("the _CL table gets spec.logRetentionDays (30 by default), follows a change, and goes with the CE", async () => {
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "logs"));
    let ce = await waitReady(kube, ns, "logs");
    expect(await table(ce)).toMatchObject({ retentionInDays: 30, totalRetentionInDays: 30 });

    await kube.patch(ComputeEnvironmentResource, ns, "logs", { spec: { logRetentionDays: 90 } }, "merge");
    ce = await waitFor("table retention 90", async () => {
      const c = await kube.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "logs");
      return c && (await table(c))?.retentionInDays === 90 ? c : undefined;
    }, 60_000);
    expect(await table(ce)).toMatchObject({ retentionInDays: 90, totalRetentionInDays: 90 });

    await kube.delete(ComputeEnvironmentResource, ns, "logs");
    await waitGone(kube, ns, "logs");
    expect(await table(ce)).toBeUndefined();
  });

  it("deletionPolicy Retain leaves the table (and its retention)", async () => {
    await kube.create(ComputeEnvironmentResource, { ...ceBody(ns, "kept"), spec: { ...ceBody(ns, "kept").spec, logRetentionDays: 7, deletionPolicy: "Retain" } } as ComputeEnvironment);
    const ce = await waitReady(kube, ns, "kept");
    expect(await table(ce)).toMatchObject({ retentionInDays: 7, totalRetentionInDays: 7 });
    await kube.delete(ComputeEnvironmentResource, ns, "kept");
    await waitGone(kube, ns, "kept");
    expect(await table(ce)).toMatchObject({ retentionInDays: 7 });
  });
});
