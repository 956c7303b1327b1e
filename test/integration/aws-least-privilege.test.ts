// Least privilege, proven with the strict AWS layer enforcing IAM as AWS does (resource ARNs,
// iam:PassRole, tag-on-create, trust policies; test/harness/README.md) in front of a private moto:
// the operator's identity holds EXACTLY the policy of the product document (seed 002), read from
// the document at test time (test/harness/seed-policy.ts; only its <BUCKET_NAME>/WORKDIR
// placeholders are filled in), and the whole life of a CE and a Run works with it: provision,
// observe, launch (RunInstances with tags and the TowerForge-* instance profile), follow
// (DescribeInstances, GetLogEvents, S3 GetObject of the exit status), terminate, sweep, dispose.
// Without any one action of the seed's required phases that life fails with an error naming the
// action, unless the action is one the operator never calls (listed and checked below). At the end,
// the operator itself runs with one action missing per phase of the life: the CE's or Run's
// condition names the action.
import { randomUUID } from "node:crypto";
import {
  AddRoleToInstanceProfileCommand,
  AttachRolePolicyCommand,
  AttachUserPolicyCommand,
  CreateAccessKeyCommand,
  CreateInstanceProfileCommand,
  CreatePolicyCommand,
  CreateRoleCommand,
  CreateUserCommand,
  DeleteUserPolicyCommand,
  GetInstanceProfileCommand,
  GetRoleCommand,
  GetRolePolicyCommand,
  ListInstanceProfilesForRoleCommand,
  ListRoleTagsCommand,
  PutUserPolicyCommand,
  UntagRoleCommand,
  type IAMClient,
  type IAMServiceException,
} from "@aws-sdk/client-iam";
import { CreateLogGroupCommand, DescribeLogGroupsCommand } from "@aws-sdk/client-cloudwatch-logs";
import { CreateKeyPairCommand, DescribeInstancesCommand, DescribeSecurityGroupsCommand, DescribeVpcsCommand, TerminateInstancesCommand } from "@aws-sdk/client-ec2";
import { CreateBucketCommand } from "@aws-sdk/client-s3";
import { GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AwsEnvironment, ComputeEnvironment, Run } from "../../src/api/types.js";
import { SecretResource, type SecretObject } from "../../src/controllers/shared.js";
import { awsCall, awsClients, type AwsClients } from "../../src/cloud/aws/clients.js";
import { roleNameOf } from "../../src/cloud/aws/environment.js";
import { TAG_CE_UID } from "../../src/cloud/aws/iam.js";
import { LOG_GROUP_CLEANUP_STATEMENT, operatorPolicyByPhase, renderOperatorPolicy } from "../../src/cloud/aws/policy.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { CloudError, type EnvContext, type ResolvedCredentials } from "../../src/cloud/provider.js";
import { createLogger } from "../../src/engine/logger.js";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import { installCrds, startOperator, waitFor, type RunningOperator } from "../support/operator.js";
import { freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import { StrictAwsControl } from "../harness/aws-strict/client.js";
import type { PolicyDocument } from "../harness/aws-strict/policy-eval.js";
import { startStrictAws, type StrictAws } from "../harness/aws-strict/server.js";
import { startMoto, type Moto } from "../harness/moto.js";
import { awsSeedPath, seedActions, seedPolicy, seedStatements, type SeedPhase } from "../harness/seed-policy.js";
import { shipLauncherLines } from "../harness/aws-launcher-log.js";
import { EventResource, type EventObject } from "../../src/engine/events.js";

const REGION = "eu-west-1";
const ACCOUNT = "123456789012";
const BUCKET = "lp-work-bucket";
const PREFIX = "runs";
const logger = createLogger({ level: "silent" });
const SEED = awsSeedPath();
const REQUIRED: SeedPhase[] = ["create", "validate", "launch", "delete"];
const ALL: SeedPhase[] = [...REQUIRED, "read"];
/** Actions of the required phases the operator never calls (removing them changes nothing). */
const UNUSED = ["iam:AttachRolePolicy", "ec2:DeleteTags", "iam:DetachRolePolicy"];

let moto: Moto;
let layer: StrictAws;
type Keys = { accessKeyId: string; secretAccessKey: string };
const keys: Record<"exact" | "required" | "nobody" | "auditor" | "assumer", Keys> = {} as never;
const without = new Map<string, Keys>();
let withAdditionKeys: Keys;
/** A user holding the seed's required policy, whose log reads a test takes away and gives back. */
const REVOCABLE = "vmforge-operator-revocable";
let revocableKeys: Keys;
/** A user holding the seed's required policy whose terminations a test denies and allows again. */
const UNTERMINATING = "vmforge-operator-forced";
let unterminatingKeys: Keys;
/** A user holding the seed's required policy who is denied iam:CreateRole until a test grants it. */
const LATE = "vmforge-operator-late";
let lateKeys: Keys;
const OPERATOR_ROLE = "vmforge-operator-role";
const EXTERNAL_ID = "vmforge-ext-7";
let auditor: AwsClients;
let defaultVpc: string;
let defaultSg: string;

type Cond = { type: string; status: string; reason: string; message: string };
const cond = (o: { status?: { conditions?: Cond[] } } | undefined, type: string) => o?.status?.conditions?.find((c) => c.type === type);

/** CE "ce" in `ns` with the Secret "aws", in `region`, the work directory in the test bucket. */
function createAwsCe(client: KubeClient, ns: string, region = REGION): Promise<ComputeEnvironment> {
  return client.create<ComputeEnvironment>(ComputeEnvironmentResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "ce", namespace: ns },
    spec: { provider: "aws", credentials: { secretRef: { name: "aws" } }, aws: { region, workDir: `s3://${BUCKET}/${PREFIX}` } },
  } as ComputeEnvironment);
}

/**
 * A namespace of the test's own holding Secret "aws" with `k`, and an operator there: the AWS
 * provider through the strict layer (no SDK retries), polls every 0.5 s.
 */
async function operatorWithKeys(prefix: string, k: Keys, providerOptions: { runningExitProbeMs?: number } = {}): Promise<{ client: KubeClient; ns: string; op: RunningOperator }> {
  const client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  const ns = await freshNamespace(client, prefix);
  await client.create(SecretResource, { apiVersion: "v1", kind: "Secret", metadata: { name: "aws", namespace: ns }, stringData: { ...k } } as SecretObject);
  const op = await startOperator(kubeconfigPath(), new Map([["aws", new AwsProvider({ endpoint: layer.endpoint, maxAttempts: 1, ...providerOptions })]]), { namespaces: [ns], pollIntervalMs: 500 });
  return { client, ns, op };
}

function secret(k: Keys, extra: Record<string, string> = {}): ResolvedCredentials {
  return { source: "secret", secretName: "aws-creds", data: { ...k, ...extra } };
}

function ce(aws: Partial<AwsEnvironment> = {}): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { namespace: `lp-${randomUUID().slice(0, 6)}`, name: "ce", uid: randomUUID(), generation: 1 },
    spec: { provider: "aws", aws: { region: REGION, workDir: `s3://${BUCKET}/${PREFIX}`, ...aws } as AwsEnvironment },
  };
}

function runOf(c: ComputeEnvironment): Run {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { namespace: c.metadata.namespace, name: "run", uid: randomUUID() },
    spec: { computeEnvironmentRef: { name: c.metadata.name! }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
  };
}

function ctx(c: ComputeEnvironment, credentials: ResolvedCredentials): EnvContext {
  return { ce: c, credentials, logger };
}

function provider(): AwsProvider {
  return new AwsProvider({ endpoint: layer.endpoint, maxAttempts: 1 });
}

function policy(phases: SeedPhase[], drop?: string): ReturnType<typeof seedPolicy> {
  return seedPolicy(SEED!, { phases, bucket: BUCKET, workDirPrefix: PREFIX, ...(drop ? { without: drop } : {}) });
}

async function rejection(p: Promise<unknown>): Promise<CloudError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CloudError);
    return e as CloudError;
  }
  throw new Error("expected a rejection");
}

async function makeUser(iam: IAMClient, name: string, doc?: PolicyDocument): Promise<Keys> {
  await iam.send(new CreateUserCommand({ UserName: name }));
  if (doc) {
    const p = await iam.send(new CreatePolicyCommand({ PolicyName: `${name}-policy`, PolicyDocument: JSON.stringify(doc) }));
    await iam.send(new AttachUserPolicyCommand({ UserName: name, PolicyArn: p.Policy!.Arn! }));
  }
  const k = (await iam.send(new CreateAccessKeyCommand({ UserName: name }))).AccessKey!;
  return { accessKeyId: k.AccessKeyId!, secretAccessKey: k.SecretAccessKey! };
}

async function profileRoles(name: string): Promise<string[] | undefined> {
  try {
    const out = await auditor.iam.send(new GetInstanceProfileCommand({ InstanceProfileName: name }));
    return (out.InstanceProfile?.Roles ?? []).map((r) => r.RoleName ?? "");
  } catch (e) {
    if ((e as IAMServiceException).name === "NoSuchEntityException") return undefined;
    throw e;
  }
}

async function roleExists(name: string): Promise<boolean> {
  try {
    await auditor.iam.send(new GetRoleCommand({ RoleName: name }));
    return true;
  } catch (e) {
    if ((e as IAMServiceException).name === "NoSuchEntityException") return false;
    throw e;
  }
}

async function instancesOfRun(uid: string): Promise<string[]> {
  const out = await auditor.ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: "tag:vmforge.dev/run-uid", Values: [uid] }] }));
  return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []).map((i) => `${i.InstanceId}:${i.State?.Name}`);
}

/**
 * The life of a CE and one Run with these credentials: provision, observe, launch, follow,
 * terminate, follow the ended Run (its log, then its exit-status object), sweep, dispose.
 */
async function life(cred: ResolvedCredentials): Promise<void> {
  const p = provider();
  const c = ce({ keyPair: "lp-key", securityGroupIds: [defaultSg], tags: { team: "lp" } });
  const obs = await p.provisionEnvironment(ctx(c, cred));
  expect(obs.ready).toBe(true);
  await p.observeEnvironment(ctx(c, cred));
  const live: ComputeEnvironment = { ...c, status: { ...obs.status } };
  const run = runOf(live);
  const launched = await p.launchRun(ctx(live, cred), run);
  expect(launched.instanceId).toMatch(/^i-/);
  expect((await p.describeRuns(ctx(live, cred), [run])).get(run.metadata.uid!)?.instanceId).toBe(launched.instanceId);
  await p.readRunLog(ctx(live, cred), run);
  await p.terminateRun(ctx(live, cred), run);
  // The ended Run's outcome: a refused read travels with the Run (the reconciler names it in a
  // condition) rather than failing the whole describe; the life fails with it here.
  const ended = (await p.describeRuns(ctx(live, cred), [run])).get(run.metadata.uid!);
  if (ended?.readError) throw new CloudError("Terminal", ended.readError.reason, ended.readError.message);
  await p.sweepOrphans(ctx(live, cred), new Set());
  expect(await instancesOfRun(run.metadata.uid!)).toEqual([`${launched.instanceId}:terminated`]);
  // The CE's log group, as the instance's agent makes it. The seed has no logs:DeleteLogGroup: the
  // disposal still succeeds and leaves the group (the optional addition would delete it).
  const group = live.status?.aws?.logGroup ?? "";
  await auditor.logs.send(new CreateLogGroupCommand({ logGroupName: group })).catch((e: unknown) => {
    if ((e as { name?: string }).name !== "ResourceAlreadyExistsException") throw e;
  });
  await p.disposeEnvironment(ctx(c, cred));
  expect(await roleExists(roleNameOf(c))).toBe(false);
  const left = await auditor.logs.send(new DescribeLogGroupsCommand({ logGroupNamePrefix: group }));
  expect(left.logGroups?.map((g) => g.logGroupName)).toContain(group);
}

beforeAll(async () => {
  if (!SEED) throw new Error("seed 002 (the AWS Cloud document) not found; set VMFORGE_SEEDS_DIR to the folder of the product documents");
  moto = await startMoto();
  layer = await startStrictAws({ upstream: moto.endpoint });
  // Users are made through the layer, which learns their keys from the CreateAccessKey answers.
  const admin = awsClients({ credentials: secret({ accessKeyId: "testing", secretAccessKey: "testing" }), region: REGION, endpoint: layer.endpoint });
  try {
    const iam = admin.iam;
    keys.exact = await makeUser(iam, "vmforge-operator", policy(ALL));
    keys.required = await makeUser(iam, "vmforge-operator-required", policy(REQUIRED));
    const seedPlusAddition = policy(ALL);
    const { Sid, Effect, Action, Resource } = LOG_GROUP_CLEANUP_STATEMENT;
    seedPlusAddition.Statement.push({ ...(Sid ? { Sid } : {}), Effect, Action, Resource });
    withAdditionKeys = await makeUser(iam, "vmforge-operator-additions", seedPlusAddition);
    revocableKeys = await makeUser(iam, REVOCABLE, policy(REQUIRED));
    unterminatingKeys = await makeUser(iam, UNTERMINATING, policy(REQUIRED));
    lateKeys = await makeUser(iam, LATE, policy(REQUIRED));
    keys.nobody = await makeUser(iam, "nobody");
    keys.auditor = await makeUser(iam, "auditor", { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "*", Resource: "*" }] });
    keys.assumer = await makeUser(iam, "assumer", {
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: "sts:AssumeRole", Resource: `arn:aws:iam::${ACCOUNT}:role/${OPERATOR_ROLE}` }],
    });
    for (const action of seedActions(SEED, REQUIRED)) {
      without.set(action, await makeUser(iam, `without-${action.replace(":", "-")}`, policy(REQUIRED, action)));
    }
    // The operator as a role the "assumer" user may assume with an external id (seed: IAM role creation).
    await iam.send(
      new CreateRoleCommand({
        RoleName: OPERATOR_ROLE,
        AssumeRolePolicyDocument: JSON.stringify({
          Version: "2012-10-17",
          Statement: [
            {
              Effect: "Allow",
              Principal: { AWS: [`arn:aws:iam::${ACCOUNT}:user/assumer`] },
              Action: "sts:AssumeRole",
              Condition: { StringEquals: { "sts:ExternalId": EXTERNAL_ID } },
            },
          ],
        }),
      }),
    );
    await iam.send(new AttachRolePolicyCommand({ RoleName: OPERATOR_ROLE, PolicyArn: `arn:aws:iam::${ACCOUNT}:policy/vmforge-operator-policy` }));
    await iam.send(new CreateRoleCommand({ RoleName: "TowerForge-probe", AssumeRolePolicyDocument: "{}" }));
    await admin.ec2.send(new CreateKeyPairCommand({ KeyName: "lp-key" }));
    await admin.s3.send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
    const vpcs = await admin.ec2.send(new DescribeVpcsCommand({ Filters: [{ Name: "is-default", Values: ["true"] }] }));
    defaultVpc = vpcs.Vpcs![0]!.VpcId!;
    const sgs = await admin.ec2.send(new DescribeSecurityGroupsCommand({ Filters: [{ Name: "vpc-id", Values: [defaultVpc] }, { Name: "group-name", Values: ["default"] }] }));
    defaultSg = sgs.SecurityGroups![0]!.GroupId!;
  } finally {
    admin.destroy();
  }

  // From here on every request is checked; the setup's keys are no account's keys.
  await new StrictAwsControl(layer.endpoint).configure({ iam: { enforce: true, rootAccessKeys: [] } });
  auditor = awsClients({ credentials: secret(keys.auditor), region: REGION, endpoint: layer.endpoint });
  const stale = awsClients({ credentials: secret({ accessKeyId: "testing", secretAccessKey: "testing" }), region: REGION, endpoint: layer.endpoint, maxAttempts: 1 });
  const nobody = awsClients({ credentials: secret(keys.nobody), region: REGION, endpoint: layer.endpoint, maxAttempts: 1 });
  try {
    await expect(awsCall("iam:GetRole", () => stale.iam.send(new GetRoleCommand({ RoleName: "TowerForge-probe" })))).rejects.toMatchObject({ reason: "InvalidCredentials" });
    await expect(awsCall("iam:GetRole", () => nobody.iam.send(new GetRoleCommand({ RoleName: "TowerForge-probe" })))).rejects.toMatchObject({ reason: "AccessDenied" });
  } finally {
    stale.destroy();
    nobody.destroy();
  }
}, 300_000);

afterAll(async () => {
  auditor?.destroy();
  await layer?.stop();
  await moto?.stop();
});

describe("least privilege: the seed's exact policy, IAM enforced as AWS does", () => {
  it("the policy used is the document's, statement for statement, and the operator's own copy (vmforge policy aws) matches it", () => {
    const doc = seedStatements(SEED!);
    const code = operatorPolicyByPhase();
    expect(doc.create).toEqual(code.create.statements);
    expect(doc.validate).toEqual(code.validate.statements);
    expect(doc.launch).toEqual([...code.launch.statements, ...code.logs.statements]);
    expect(doc.delete).toEqual(code.delete.statements);
    expect(doc.read).toEqual(code.read.statements);
    // The placeholders are the only change: the S3 statement is scoped to the CE's work directory.
    expect(policy(ALL).Statement.find((s) => s.Sid === "AwsCloudLaunchS3")?.Resource).toBe(`arn:aws:s3:::${BUCKET}/${PREFIX}/*`);
    expect(renderOperatorPolicy({ workDir: `s3://${BUCKET}/${PREFIX}` }).Statement.find((s) => s.Sid === "AwsCloudLaunchS3")?.Resource).toBe(`arn:aws:s3:::${BUCKET}/${PREFIX}/*`);
  });

  it("a CE and a Run live their whole life with exactly the seed's policy", async () => {
    await life(secret(keys.exact));
  });

  it("with the optional addition (vmforge policy aws --with-additions) disposal also deletes the CE's log group", async () => {
    const p = provider();
    const cred = secret(withAdditionKeys);
    const c = ce();
    const obs = await p.provisionEnvironment(ctx(c, cred));
    const group = obs.status?.aws?.logGroup ?? "";
    expect(group).toBe(`/vmforge/${c.metadata.namespace}/ce`);
    await auditor.logs.send(new CreateLogGroupCommand({ logGroupName: group }));
    await p.disposeEnvironment(ctx({ ...c, status: { ...obs.status } }, cred));
    expect(await roleExists(roleNameOf(c))).toBe(false);
    const left = await auditor.logs.send(new DescribeLogGroupsCommand({ logGroupNamePrefix: group }));
    expect(left.logGroups?.map((g) => g.logGroupName) ?? []).not.toContain(group);
  });

  it("... and without the optional read phase", async () => {
    await life(secret(keys.required));
  });

  it("provision and observe give the expected environment; dispose removes it", async () => {
    const p = provider();
    const c = ce({ keyPair: "lp-key", tags: { team: "lp" } });
    const name = roleNameOf(c);
    const obs = await p.provisionEnvironment(ctx(c, secret(keys.exact)));
    expect(obs.status.aws).toMatchObject({ accountId: ACCOUNT, vpcId: defaultVpc, roleArn: `arn:aws:iam::${ACCOUNT}:role/${name}` });
    expect(await profileRoles(name)).toEqual([name]);
    const role = await auditor.iam.send(new GetRoleCommand({ RoleName: name }));
    expect(role.Role?.Tags).toEqual(expect.arrayContaining([{ Key: TAG_CE_UID, Value: c.metadata.uid }, { Key: "team", Value: "lp" }]));
    expect(await p.observeEnvironment(ctx(c, secret(keys.exact)))).toEqual(obs);
    expect(await p.provisionEnvironment(ctx(c, secret(keys.exact)))).toEqual(obs);
    await p.disposeEnvironment(ctx(c, secret(keys.exact)));
    expect(await roleExists(name)).toBe(false);
    expect(await profileRoles(name)).toBeUndefined();
  });

  const required = SEED ? seedActions(SEED, REQUIRED) : [];
  it.each(required.filter((a) => !UNUSED.includes(a)))("without %s the life fails naming it", async (action) => {
    const err = await rejection(life(secret(without.get(action)!)));
    expect(err.reason, err.message).toBe("AccessDenied");
    expect(err.message).toContain(action);
  });

  it.each(UNUSED)("%s is in the seed but the operator never calls it: the life works without it", async (action) => {
    await life(secret(without.get(action)!));
  });

  it("the seed scopes IAM to TowerForge-* names and PassRole to TowerForge-* roles", async () => {
    const c = awsClients({ credentials: secret(keys.exact), region: REGION, endpoint: layer.endpoint, maxAttempts: 1 });
    try {
      await expect(awsCall("iam:GetRole", () => c.iam.send(new GetRoleCommand({ RoleName: "TowerForge-probe" })))).resolves.toBeDefined();
      const other = await rejection(awsCall("iam:CreateRole", () => c.iam.send(new CreateRoleCommand({ RoleName: "Other-role", AssumeRolePolicyDocument: "{}" }))));
      expect(other.reason).toBe("AccessDenied");
      expect(other.message).toContain(`on resource: arn:aws:iam::${ACCOUNT}:role/Other-role`);
      // A bring-your-own instance profile whose role is not TowerForge-* cannot be passed to EC2.
      await auditor.iam.send(new CreateRoleCommand({ RoleName: "byo-role", AssumeRolePolicyDocument: "{}" }));
      await auditor.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: "byo" }));
      await auditor.iam.send(new AddRoleToInstanceProfileCommand({ InstanceProfileName: "byo", RoleName: "byo-role" }));
      const p = provider();
      const byo = ce({ instanceProfileArn: `arn:aws:iam::${ACCOUNT}:instance-profile/byo` });
      const obs = await p.provisionEnvironment(ctx(byo, secret(keys.exact)));
      expect(obs.ready).toBe(true);
      const live: ComputeEnvironment = { ...byo, status: { ...obs.status } };
      const err = await rejection(p.launchRun(ctx(live, secret(keys.exact)), runOf(live)));
      expect(err.reason).toBe("AccessDenied");
      expect(err.message).toContain(`iam:PassRole on resource: arn:aws:iam::${ACCOUNT}:role/byo-role`);
    } finally {
      c.destroy();
    }
  });

  it("calls the design does without are denied to the operator", async () => {
    const c = awsClients({ credentials: secret(keys.exact), region: REGION, endpoint: layer.endpoint, maxAttempts: 1 });
    try {
      const denied: [string, () => Promise<unknown>][] = [
        ["iam:GetInstanceProfile", () => c.iam.send(new GetInstanceProfileCommand({ InstanceProfileName: "TowerForge-probe" }))],
        ["iam:ListInstanceProfilesForRole", () => c.iam.send(new ListInstanceProfilesForRoleCommand({ RoleName: "TowerForge-probe" }))],
        ["iam:ListRoleTags", () => c.iam.send(new ListRoleTagsCommand({ RoleName: "TowerForge-probe" }))],
        ["iam:GetRolePolicy", () => c.iam.send(new GetRolePolicyCommand({ RoleName: "TowerForge-probe", PolicyName: "x" }))],
        ["iam:UntagRole", () => c.iam.send(new UntagRoleCommand({ RoleName: "TowerForge-probe", TagKeys: ["x"] }))],
        ["iam:CreateUser", () => c.iam.send(new CreateUserCommand({ UserName: "escalate" }))],
        ["logs:CreateLogGroup", () => c.logs.send(new CreateLogGroupCommand({ logGroupName: "/vmforge/x/y" }))],
      ];
      for (const [action, call] of denied) {
        const err = await rejection(awsCall(action, call));
        expect({ action, kind: err.kind, reason: err.reason }).toEqual({ action, kind: "Terminal", reason: "AccessDenied" });
        expect(err.message).toMatch(new RegExp(`^${action}: access denied.*the operator's IAM policy must allow ${action}`));
      }
      // AWS answers GetCallerIdentity for any valid key (no permission needed); the operator does not call it.
      const nobody = awsClients({ credentials: secret(keys.nobody), region: REGION, endpoint: layer.endpoint, maxAttempts: 1 });
      try {
        expect((await nobody.sts.send(new GetCallerIdentityCommand({}))).Account).toBe(ACCOUNT);
      } finally {
        nobody.destroy();
      }
    } finally {
      c.destroy();
    }
  });

  it("works without the optional read phase: VPC through subnets, key pair not checked", async () => {
    const p = provider();
    const c = ce({ keyPair: "no-such-key-but-unchecked" });
    const obs = await p.provisionEnvironment(ctx(c, secret(keys.required)));
    expect(obs.ready).toBe(true);
    expect(obs.status.aws?.vpcId).toBe(defaultVpc);
    expect(obs.status.aws?.subnetIds?.length).toBeGreaterThan(0);
    const missing = await rejection(p.provisionEnvironment(ctx(ce({ vpcId: "vpc-0123456789abcdef0" }), secret(keys.required))));
    expect(missing.message).toBe("spec.aws.vpcId: vpc-0123456789abcdef0 not found in eu-west-1 (or it has no subnets)");
    // With the read phase the key pair is checked.
    const checked = await rejection(p.provisionEnvironment(ctx(ce({ keyPair: "no-such-key-but-unchecked" }), secret(keys.exact))));
    expect(checked.message).toBe("spec.aws.keyPair: no-such-key-but-unchecked not found in eu-west-1");
    await p.disposeEnvironment(ctx(c, secret(keys.required)));
    expect(await roleExists(roleNameOf(c))).toBe(false);
  });

  it("a Secret without permissions is AccessDenied naming the action; after rotation the same provider succeeds", async () => {
    const p = provider();
    const c = ce();
    const denied = await rejection(p.provisionEnvironment(ctx(c, secret(keys.nobody))));
    expect([denied.kind, denied.reason]).toEqual(["Terminal", "AccessDenied"]);
    expect(denied.message).toMatch(/^ec2:DescribeInstanceTypes: access denied; the operator's IAM policy must allow ec2:DescribeInstanceTypes/);
    expect(await roleExists(roleNameOf(c))).toBe(false);
    expect((await p.provisionEnvironment(ctx(c, secret(keys.exact)))).ready).toBe(true);
    await p.disposeEnvironment(ctx(c, secret(keys.exact)));
  });

  it("a wrong secret key or an unknown key id is InvalidCredentials", async () => {
    const p = provider();
    const wrong = await rejection(p.provisionEnvironment(ctx(ce(), secret({ accessKeyId: keys.exact.accessKeyId, secretAccessKey: "not-the-secret" }))));
    expect([wrong.kind, wrong.reason]).toEqual(["Terminal", "InvalidCredentials"]);
    expect(wrong.message).not.toContain(keys.exact.secretAccessKey);
    const unknown = await rejection(p.provisionEnvironment(ctx(ce(), secret({ accessKeyId: "AKIAUNKNOWNKEY000000", secretAccessKey: "x" }))));
    expect([unknown.kind, unknown.reason]).toEqual(["Terminal", "InvalidCredentials"]);
  });

  it("assumes the role named in the Secret (roleArn + externalId); a wrong external id is InvalidCredentials", async () => {
    const p = provider();
    const c = ce();
    const roleArn = `arn:aws:iam::${ACCOUNT}:role/${OPERATOR_ROLE}`;
    const obs = await p.provisionEnvironment(ctx(c, secret(keys.assumer, { roleArn, externalId: EXTERNAL_ID })));
    expect(obs.ready).toBe(true);
    expect(await profileRoles(roleNameOf(c))).toEqual([roleNameOf(c)]);
    const direct = await rejection(p.provisionEnvironment(ctx(c, secret(keys.assumer))));
    expect(direct.reason).toBe("AccessDenied");
    const wrongId = await rejection(p.provisionEnvironment(ctx(c, secret(keys.assumer, { roleArn, externalId: "wrong" }))));
    expect([wrongId.kind, wrongId.reason]).toEqual(["Terminal", "InvalidCredentials"]);
    expect(wrongId.message).toContain("sts:AssumeRole");
    await p.disposeEnvironment(ctx(c, secret(keys.assumer, { roleArn, externalId: EXTERNAL_ID })));
    expect(await roleExists(roleNameOf(c))).toBe(false);
  });

  it("ambient identity: the SDK's default chain (here: environment variables)", async () => {
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, key: process.env.AWS_SECRET_ACCESS_KEY, token: process.env.AWS_SESSION_TOKEN, profile: process.env.AWS_PROFILE };
    process.env.AWS_ACCESS_KEY_ID = keys.exact.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = keys.exact.secretAccessKey;
    delete process.env.AWS_SESSION_TOKEN;
    delete process.env.AWS_PROFILE;
    try {
      const p = provider();
      const c = ce();
      const ambient: ResolvedCredentials = { source: "ambient", data: {} };
      expect((await p.provisionEnvironment(ctx(c, ambient))).ready).toBe(true);
      await p.disposeEnvironment(ctx(c, ambient));
      expect(await roleExists(roleNameOf(c))).toBe(false);
    } finally {
      const restore = (k: string, v: string | undefined) => (v === undefined ? delete process.env[k] : (process.env[k] = v));
      restore("AWS_ACCESS_KEY_ID", saved.id);
      restore("AWS_SECRET_ACCESS_KEY", saved.key);
      restore("AWS_SESSION_TOKEN", saved.token);
      restore("AWS_PROFILE", saved.profile);
    }
  });
});

describe("spec.aws.roleArn through the operator: the role assumed with the operator's ambient identity, no Secret", () => {
  let kube: KubeClient;
  let op: RunningOperator | undefined;
  let ns: string;
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, key: process.env.AWS_SECRET_ACCESS_KEY, token: process.env.AWS_SESSION_TOKEN, profile: process.env.AWS_PROFILE };
  const roleArn = `arn:aws:iam::${ACCOUNT}:role/${OPERATOR_ROLE}`;

  const kubeCe = (name: string, aws: Partial<AwsEnvironment>): ComputeEnvironment => ({
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name, namespace: ns },
    spec: { provider: "aws", aws: { region: REGION, workDir: `s3://${BUCKET}/${PREFIX}`, ...aws } as AwsEnvironment },
  });
  const condition = async (name: string, type: string) =>
    (await kube.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name))?.status?.conditions?.find((c) => c.type === type);

  beforeAll(async () => {
    // The operator's ambient identity (as IRSA or Pod Identity would give it): the "assumer" user,
    // which may do nothing but sts:AssumeRole on the operator role with its external id.
    process.env.AWS_ACCESS_KEY_ID = keys.assumer.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = keys.assumer.secretAccessKey;
    delete process.env.AWS_SESSION_TOKEN;
    delete process.env.AWS_PROFILE;
    kube = KubeClient.fromKubeconfig(kubeconfigPath());
    await installCrds(kube);
    ns = await freshNamespace(kube, "aws-role");
    op = await startOperator(kubeconfigPath(), new Map([["aws", new AwsProvider({ endpoint: layer.endpoint, maxAttempts: 1 })]]), { namespaces: [ns] });
  });

  afterAll(async () => {
    await op?.stop();
    const restore = (k: string, v: string | undefined) => (v === undefined ? delete process.env[k] : (process.env[k] = v));
    restore("AWS_ACCESS_KEY_ID", saved.id);
    restore("AWS_SECRET_ACCESS_KEY", saved.key);
    restore("AWS_SESSION_TOKEN", saved.token);
    restore("AWS_PROFILE", saved.profile);
  });

  it("a CE with roleArn + externalId becomes Ready through the assumed role and is disposed of through it", async () => {
    const c = await kube.create<ComputeEnvironment>(ComputeEnvironmentResource, kubeCe("assumed", { roleArn, externalId: EXTERNAL_ID }));
    await waitFor("CE assumed Ready", async () => (await condition("assumed", "Ready"))?.status === "True", 60_000);
    expect((await condition("assumed", "CredentialsValid"))?.message).toBe("using the ambient identity");
    const towerForge = roleNameOf(c);
    expect(await profileRoles(towerForge)).toEqual([towerForge]);
    await kube.delete(ComputeEnvironmentResource, ns, "assumed");
    await waitFor("CE assumed gone", async () => (await kube.get(ComputeEnvironmentResource, ns, "assumed")) === undefined, 60_000);
    expect(await roleExists(towerForge)).toBe(false);
  });

  it("a wrong external id is Stalled InvalidCredentials naming the role assumption; without roleArn the bare identity is AccessDenied", async () => {
    await kube.create(ComputeEnvironmentResource, kubeCe("wrong-id", { roleArn, externalId: "not-the-id" }));
    const wrong = await waitFor("CE wrong-id Stalled", async () => {
      const st = await condition("wrong-id", "Stalled");
      return st?.status === "True" ? st : undefined;
    }, 60_000);
    expect(wrong.reason).toBe("InvalidCredentials");
    expect(wrong.message).toContain("spec.aws.roleArn");
    expect(wrong.message).toContain("sts:AssumeRole");
    await kube.create(ComputeEnvironmentResource, kubeCe("bare", {}));
    const bare = await waitFor("CE bare Stalled", async () => {
      const st = await condition("bare", "Stalled");
      return st?.status === "True" ? st : undefined;
    }, 60_000);
    expect(bare.reason).toBe("AccessDenied");
    for (const n of ["wrong-id", "bare"]) await kube.delete(ComputeEnvironmentResource, ns, n);
  });
});

/**
 * The same seed policy with one action removed, through the operator on the real kube-apiserver:
 * the condition users read names the action. One representative action per phase of the life
 * (the provider-level test above covers every action): creating the environment, launching, reading
 * the log, terminating, reading the outcome of an ended machine.
 */
describe("through the operator: without one action, the condition names it", () => {
  let client: KubeClient;
  let op: RunningOperator | undefined;
  const cases = [
    { phase: "create", action: "iam:CreateRole", where: "ComputeEnvironment Stalled" },
    { phase: "launch", action: "ec2:RunInstances", where: "Run Stalled" },
    { phase: "logs", action: "logs:GetLogEvents", where: "Run LogReadBlocked" },
    { phase: "dispose", action: "ec2:TerminateInstances", where: "Run MachineTerminationBlocked" },
    { phase: "outcome", action: "s3:GetObject", where: "Run LogReadBlocked once its machine ended, no outcome guessed" },
  ] as const;
  const nsOf = new Map<string, string>();

  beforeAll(async () => {
    client = KubeClient.fromKubeconfig(kubeconfigPath());
    await installCrds(client);
    for (const c of cases) {
      const ns = await freshNamespace(client, `lp-${c.phase}`);
      nsOf.set(c.phase, ns);
      const k = without.get(c.action)!;
      await client.create(SecretResource, { apiVersion: "v1", kind: "Secret", metadata: { name: "aws", namespace: ns }, stringData: { accessKeyId: k.accessKeyId, secretAccessKey: k.secretAccessKey } } as SecretObject);
    }
    op = await startOperator(kubeconfigPath(), new Map([["aws", provider()]]), { namespaces: [...nsOf.values()], pollIntervalMs: 500 });
    for (const c of cases) {
      const ns = nsOf.get(c.phase)!;
      await createAwsCe(client, ns);
      if (c.phase !== "create") {
        await client.create(RunResource, {
          apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "run", namespace: ns },
          spec: { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
        } as Run);
      }
    }
  }, 120_000);

  afterAll(async () => {
    await op?.stop();
  });

  it.each(cases.map((c) => [c.action, c.where, c] as const))("without %s: %s names it", async (_a, _w, c) => {
    const ns = nsOf.get(c.phase)!;
    const getCe = () => client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce");
    const getRun = () => client.get<Run>(RunResource, ns, "run");
    let found: Cond | undefined;
    if (c.phase === "create") {
      found = await waitFor("CE Stalled", async () => cond(await getCe(), "Stalled")?.status === "True" && cond(await getCe(), "Stalled"), 60_000, 300);
    } else if (c.phase === "launch") {
      const r = await waitFor("Run Failed", async () => ((await getRun())?.status?.phase === "Failed" ? getRun() : undefined), 60_000, 300);
      found = cond(r, "Stalled");
      expect(found?.status).toBe("True");
    } else if (c.phase === "logs") {
      found = await waitFor("LogReadBlocked", async () => cond(await getRun(), "LogReadBlocked"), 60_000, 300);
      expect((await getRun())?.status?.phase).toBe("Launching");
    } else if (c.phase === "outcome") {
      // The machine ends with no exit line in the log: the exit status must be read from S3.
      const id = await waitFor("machine recorded", async () => (await getRun())?.status?.instance?.id, 60_000, 300);
      await auditor.ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
      found = await waitFor("LogReadBlocked", async () => {
        const x = cond(await getRun(), "LogReadBlocked");
        return x?.message.includes(c.action) ? x : undefined;
      }, 60_000, 300);
      // Not declared lost, nor given an outcome it could not read.
      expect(["Launching", "Running"]).toContain((await getRun())?.status?.phase);
    } else {
      await waitFor("machine recorded", async () => (await getRun())?.status?.instance?.id, 60_000, 300);
      await client.patch(RunResource, ns, "run", { spec: { cancel: true } }, "merge");
      found = await waitFor("MachineTerminationBlocked", async () => cond(await getRun(), "MachineTerminationBlocked"), 60_000, 300);
      // EC2 words each refusal differently (its encoded authorization message): the termination is
      // refused again after the retry delay, and that is not news. The condition stays as it was,
      // without the encoded part, and there is still one Warning Event.
      const control = new StrictAwsControl(layer.endpoint);
      const refusedSoFar = async (): Promise<number> => (await control.stats()).refused["ec2:TerminateInstances"] ?? 0;
      const before = await refusedSoFar();
      await waitFor("termination refused again", async () => (await refusedSoFar()) > before, 60_000, 300);
      await new Promise((r) => setTimeout(r, 2_000));
      const again = cond(await getRun(), "MachineTerminationBlocked");
      expect(again).toEqual(found);
      expect(again?.message).not.toContain("Encoded authorization failure message");
      // IAM's whole explanation is there, not cut short ("..."). With the client's stripping of the
      // encoded part switched off, the condition changes at the second refusal (toEqual above).
      expect(again?.message).not.toMatch(/(\.\.\.|…)$/);
      expect(again?.message).toMatch(/ec2:TerminateInstances/);
      const events = await client.list<EventObject>(EventResource, { namespace: ns });
      expect(events.items.filter((e) => e.regarding?.name === "run" && e.type === "Warning" && e.reason === "AccessDenied")).toHaveLength(1);
    }
    expect(found?.status).toBe("True");
    expect(found?.reason).toBe("AccessDenied");
    expect(found?.message).toContain(c.action);
  });
});

describe("through the operator: log reads taken away from a Running Run, and given back", () => {
  let client: KubeClient;
  let op: RunningOperator | undefined;
  let ns: string;
  const getRun = () => client.get<Run>(RunResource, ns, "run");
  const warnings = async (reason: string) =>
    (await client.list<EventObject>(EventResource, { namespace: ns })).items
      .filter((e) => e.regarding?.name === "run" && e.type === "Warning" && e.reason === reason);

  beforeAll(async () => {
    // Exit probes of running machines every 1.5 s, polls every 0.5 s: most polls read nothing.
    ({ client, ns, op } = await operatorWithKeys("lp-revoke", revocableKeys, { runningExitProbeMs: 1_500 }));
  }, 60_000);

  afterAll(async () => {
    await op?.stop();
    await auditor.iam.send(new DeleteUserPolicyCommand({ UserName: REVOCABLE, PolicyName: "no-log-reads" })).catch(() => undefined);
  });

  it("LogReadBlocked names the refused action at every look while the exit probes are refused, with one Warning Event; it goes when reads work again, and the exit line is then read", async () => {
    await createAwsCe(client, ns);
    const group = await waitFor("CE Ready", async () => {
      const c = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce");
      return cond(c, "Ready")?.status === "True" ? c?.status?.aws?.logGroup : undefined;
    }, 60_000, 300);
    await client.create(RunResource, {
      apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "run", namespace: ns },
      spec: { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
    } as Run);
    const launched = await waitFor("machine recorded", async () => {
      const r = await getRun();
      return r?.status?.instance?.id ? r : undefined;
    }, 60_000, 300);
    // The launcher says the pipeline started (what its log agent ships): the Run is Running.
    await shipLauncherLines(auditor.logs, group, launched, ["VMFORGE_PIPELINE_STARTED"]);
    await waitFor("Run Running", async () => (await getRun())?.status?.phase === "Running", 60_000, 300);

    // The operator's identity loses logs:GetLogEvents (an explicit deny, as an account's guard rail would add).
    await auditor.iam.send(new PutUserPolicyCommand({
      UserName: REVOCABLE, PolicyName: "no-log-reads",
      PolicyDocument: JSON.stringify({ Version: "2012-10-17", Statement: [{ Effect: "Deny", Action: "logs:GetLogEvents", Resource: "*" }] }),
    }));
    const control = new StrictAwsControl(layer.endpoint);
    const refusedReads = async (): Promise<number> => (await control.stats()).refused["logs:GetLogEvents"] ?? 0;
    const blocked = await waitFor("LogReadBlocked", async () => cond(await getRun(), "LogReadBlocked"), 30_000, 200);
    expect(blocked).toMatchObject({ status: "True", reason: "AccessDenied" });
    expect(blocked.message).toContain("logs:GetLogEvents");
    expect(blocked.message).toContain("explicit deny");
    // Three more refused probes (4.5 s, 9 polls or so): the condition is there at every look.
    const until = (await refusedReads()) + 3;
    let looks = 0;
    const deadline = Date.now() + 30_000;
    while ((await refusedReads()) < until) {
      expect(Date.now(), "three more refused reads within 30 s").toBeLessThan(deadline);
      const r = await getRun();
      expect(cond(r, "LogReadBlocked"), `LogReadBlocked at look ${looks}`).toEqual(blocked);
      expect(r?.status?.phase).toBe("Running");
      looks++;
      await new Promise((res) => setTimeout(res, 100));
    }
    // Looks between the probes, not only at them (a probe every 1.5 s).
    expect(looks).toBeGreaterThan(4);
    expect(await warnings("AccessDenied")).toHaveLength(1);

    // Reads allowed again: the next probe reads, the condition goes, the Run runs on.
    await auditor.iam.send(new DeleteUserPolicyCommand({ UserName: REVOCABLE, PolicyName: "no-log-reads" }));
    await waitFor("LogReadBlocked gone", async () => cond(await getRun(), "LogReadBlocked") === undefined, 30_000, 200);
    expect((await getRun())?.status?.phase).toBe("Running");
    // The pipeline ends; the machine still runs (its shutdown is the launcher's last step): the exit probe reads the outcome.
    await shipLauncherLines(auditor.logs, group, launched, ["VMFORGE_EXIT_CODE=0"]);
    const done = await waitFor("Run Succeeded", async () => {
      const r = await getRun();
      return r?.status?.phase === "Succeeded" ? r : undefined;
    }, 30_000, 300);
    expect(done.status?.exitCode).toBe(0);
    expect(await warnings("AccessDenied")).toHaveLength(1);
  }, 120_000);
});

describe("through the operator: a CE removed by force and created again under its name in another region", () => {
  let client: KubeClient;
  let op: RunningOperator | undefined;
  let ns: string;
  const getRun = (name: string) => client.get<Run>(RunResource, ns, name);
  const getCe = () => client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce");
  const denyTerminations = () => auditor.iam.send(new PutUserPolicyCommand({
    UserName: UNTERMINATING, PolicyName: "no-terminations",
    PolicyDocument: JSON.stringify({ Version: "2012-10-17", Statement: [{ Effect: "Deny", Action: "ec2:TerminateInstances", Resource: "*" }] }),
  }));
  const allowTerminations = () => auditor.iam.send(new DeleteUserPolicyCommand({ UserName: UNTERMINATING, PolicyName: "no-terminations" }));
  const createCe = (region: string) => createAwsCe(client, ns, region);
  const readyCe = () => waitFor("CE Ready", async () => {
    const c = await getCe();
    return cond(c, "Ready")?.status === "True" ? c : undefined;
  }, 60_000, 300);
  const createRun = (name: string) => client.create(RunResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name, namespace: ns },
    spec: { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
  } as Run);
  const launched = (name: string) => waitFor(`Run ${name}'s machine recorded`, async () => {
    const r = await getRun(name);
    return r?.status?.instance?.id ? r : undefined;
  }, 60_000, 300);
  /** The instance's state as EC2 in `region` tells it. */
  const stateIn = async (region: string, id: string): Promise<string | undefined> => {
    const ec2 = awsClients({ credentials: secret(keys.auditor), region, endpoint: layer.endpoint });
    try {
      const out = await ec2.ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }));
      return out.Reservations?.[0]?.Instances?.[0]?.State?.Name;
    } finally {
      ec2.destroy();
    }
  };

  beforeAll(async () => {
    ({ client, ns, op } = await operatorWithKeys("lp-forced", unterminatingKeys));
  }, 60_000);

  afterAll(async () => {
    await op?.stop();
    await allowTerminations().catch(() => undefined);
  });

  it("the first Run's instance stays followed in its own region and is terminated there once allowed; the new CE neither follows it nor waits for it", async () => {
    await createCe(REGION);
    const first = await readyCe();
    await createRun("old");
    const old = await launched("old");
    const id = old.status?.instance?.id ?? "";
    expect(old.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(first.metadata.uid);

    // The identity may no longer terminate: the CE's deletion cannot stop the instance, so its
    // finalizer is taken off by hand; its name is then taken by a CE in another region.
    await denyTerminations();
    await client.delete(ComputeEnvironmentResource, ns, "ce");
    await waitFor("Run old ended with its CE's deletion", async () => (await getRun("old"))?.status?.phase === "Cancelled", 60_000, 300);
    await client.patch(ComputeEnvironmentResource, ns, "ce", { metadata: { finalizers: null } }, "merge");
    await waitFor("CE gone", async () => (await getCe()) === undefined, 30_000, 200);
    await createCe("eu-central-1");
    const second = await readyCe();
    expect(second.metadata.uid).not.toBe(first.metadata.uid);
    await createRun("new");
    const fresh = await launched("new");
    expect(await stateIn("eu-central-1", fresh.status?.instance?.id ?? "")).toMatch(/pending|running/);

    // The old Run keeps asking where its instance is (eu-west-1), refused for now: it does not look
    // for it in eu-central-1, find nothing, and call it terminated.
    const blocked = await waitFor("old's termination blocked", async () => cond(await getRun("old"), "MachineTerminationBlocked"), 60_000, 300);
    expect(blocked.message).toContain("ec2:TerminateInstances");
    const polls = op!.operator.tracker.pollCount;
    await waitFor("three more polls", async () => op!.operator.tracker.pollCount >= polls + 3, 30_000, 100);
    expect((await getRun("old"))?.status?.instance?.state).not.toBe("terminated");
    expect(await stateIn(REGION, id)).toBe("running");

    // Terminations allowed again: the old instance is terminated in its region and recorded so.
    await allowTerminations();
    await waitFor("old instance terminated in eu-west-1", async () => ["shutting-down", "terminated"].includes((await stateIn(REGION, id)) ?? ""), 60_000, 500);
    const ended = await waitFor("old recorded terminated", async () => {
      const r = await getRun("old");
      return r?.status?.instance?.state === "terminated" ? r : undefined;
    }, 60_000, 300);
    expect(ended.status?.phase).toBe("Cancelled");

    // The new CE's deletion ends its own Run and goes; the first CE's Run was never its.
    await client.delete(ComputeEnvironmentResource, ns, "ce");
    await waitFor("the new CE gone", async () => (await getCe()) === undefined, 90_000, 500);
    expect(await stateIn("eu-central-1", fresh.status?.instance?.id ?? "")).toMatch(/shutting-down|terminated/);
  }, 240_000);
});

describe("through the operator: a CE removed by force while no operator runs, and applied again as it was before the next one starts", () => {
  it("the next operator, which never saw the old CE, finds the old instance with the new CE (same account and region) and terminates it, also while EC2 does not list the instance yet", async () => {
    // EC2 lists a new instance under tag filters only some time after its launch: the next
    // operator's first look comes before that, and must not take "not listed" for "not there".
    const HIDDEN_MS = 45_000;
    const lag = new StrictAwsControl(layer.endpoint);
    await lag.configure({ consistency: { newInstanceHiddenMs: HIDDEN_MS } });
    let started: Awaited<ReturnType<typeof operatorWithKeys>>;
    try {
      started = await operatorWithKeys("lp-reapplied", keys.exact);
    } catch (e) {
      await lag.configure({ consistency: { newInstanceHiddenMs: 0 } });
      throw e;
    }
    const { client, ns, op: first } = started;
    let next: RunningOperator | undefined;
    const getCe = () => client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce");
    const getRun = () => client.get<Run>(RunResource, ns, "old");
    const readyCe = () => waitFor("CE Ready", async () => {
      const c = await getCe();
      return cond(c, "Ready")?.status === "True" ? c : undefined;
    }, 60_000, 300);
    const auditor = awsClients({ credentials: secret(keys.auditor), region: REGION, endpoint: layer.endpoint });
    const state = async (id: string) => (await auditor.ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }))).Reservations?.[0]?.Instances?.[0]?.State?.Name;
    try {
      await createAwsCe(client, ns);
      const before = await readyCe();
      await client.create(RunResource, {
        apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "old", namespace: ns },
        spec: { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
      } as Run);
      const old = await waitFor("old's machine recorded", async () => {
        const r = await getRun();
        return r?.status?.instance?.id ? r : undefined;
      }, 60_000, 300);
      const id = old.status?.instance?.id ?? "";
      await first.stop();
      await client.delete(ComputeEnvironmentResource, ns, "ce");
      await client.patch(ComputeEnvironmentResource, ns, "ce", { metadata: { finalizers: null } }, "merge");
      await waitFor("CE gone", async () => (await getCe()) === undefined, 30_000, 200);
      await createAwsCe(client, ns);
      next = await startOperator(kubeconfigPath(), new Map([["aws", new AwsProvider({ endpoint: layer.endpoint, maxAttempts: 1, unlistedLaunchMs: 50_000 })]]), { namespaces: [ns], pollIntervalMs: 500 });
      // The next operator starts while EC2 still hides the instance (else the lag is not exercised).
      expect(Date.now() - Date.parse(old.status?.launchedAt ?? "")).toBeLessThan(HIDDEN_MS);
      const after = await readyCe();
      expect(after.metadata.uid).not.toBe(before.metadata.uid);
      const failed = await waitFor("old failed", async () => {
        const r = await getRun();
        return r?.status?.phase === "Failed" ? r : undefined;
      }, 60_000, 300);
      expect(failed.status?.reason).toBe("ComputeEnvironmentGone");
      expect(failed.status?.message).toContain(`(UID ${after.metadata.uid}) finds the Run's machine`);
      await waitFor("the old instance terminated", async () => ["shutting-down", "terminated"].includes((await state(id)) ?? ""), 60_000, 500);
      await waitFor("old recorded terminated", async () => (await getRun())?.status?.instance?.state === "terminated", 60_000, 300);
      // Still the old CE's Run.
      expect((await getRun())?.metadata.annotations?.["vmforge.dev/compute-environment-uid"]).toBe(before.metadata.uid);
    } finally {
      await lag.configure({ consistency: { newInstanceHiddenMs: 0 } });
      auditor.destroy();
      await first.stop();
      await next?.stop();
    }
  }, 180_000);
});

describe("through the operator: a permission granted while a CE is Stalled, and IAM slow to apply it", () => {
  let client: KubeClient;
  let op: RunningOperator | undefined;
  let ns: string;
  const control = () => new StrictAwsControl(layer.endpoint);
  const getCe = () => client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce");
  const refusedCreateRole = async (): Promise<number> => (await control().stats()).refused["iam:CreateRole"] ?? 0;

  beforeAll(async () => {
    await auditor.iam.send(new PutUserPolicyCommand({
      UserName: LATE, PolicyName: "no-roles",
      PolicyDocument: JSON.stringify({ Version: "2012-10-17", Statement: [{ Effect: "Deny", Action: "iam:CreateRole", Resource: "*" }] }),
    }));
    ({ client, ns, op } = await operatorWithKeys("lp-late", lateKeys));
  }, 60_000);

  afterAll(async () => {
    await op?.stop();
    await control().configure({ iam: { policyChangeDelayMs: 0 } });
  });

  it("the retry asked for right after the grant still meets the old answer; the CE looks again soon (not half an hour later) and becomes Ready", async () => {
    await createAwsCe(client, ns);
    const stalled = await waitFor("CE Stalled", async () => {
      const c = cond(await getCe(), "Stalled");
      return c?.status === "True" ? c : undefined;
    }, 60_000, 300);
    expect(stalled.reason).toBe("AccessDenied");
    expect(stalled.message).toContain("iam:CreateRole");

    // The grant takes 4 s to count; the user asks for a retry at once, as the README says to.
    await control().configure({ iam: { policyChangeDelayMs: 4_000 } });
    const before = await refusedCreateRole();
    await auditor.iam.send(new DeleteUserPolicyCommand({ UserName: LATE, PolicyName: "no-roles" }));
    await client.patch(ComputeEnvironmentResource, ns, "ce", { metadata: { annotations: { "vmforge.dev/reconcile-requested-at": String(Date.now()) } } }, "merge");
    await waitFor("the requested retry refused (the grant has not spread yet)", async () => (await refusedCreateRole()) > before, 4_000, 100);
    const ready = await waitFor("CE Ready", async () => {
      const c = await getCe();
      return cond(c, "Ready")?.status === "True" ? c : undefined;
    }, 40_000, 300);
    expect(cond(ready, "Stalled")?.status ?? "False").toBe("False");
  }, 120_000);
});
