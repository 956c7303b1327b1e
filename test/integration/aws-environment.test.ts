// The AWS provider's environment half (validation, TowerForge role + instance profile, disposal)
// against a private moto server. Provider level: no operator; the lead's controller tests cover
// conditions, Retain and finalizers on the real API server.
import { randomUUID } from "node:crypto";
import {
  AttachRolePolicyCommand,
  CreateInstanceProfileCommand,
  CreatePolicyCommand,
  CreateRoleCommand,
  DeleteInstanceProfileCommand,
  DeleteRoleCommand,
  DeleteRolePolicyCommand,
  GetInstanceProfileCommand,
  GetPolicyCommand,
  GetRoleCommand,
  GetRolePolicyCommand,
  IAMServiceException,
  ListAttachedRolePoliciesCommand,
  ListRolePoliciesCommand,
  RemoveRoleFromInstanceProfileCommand,
  UntagRoleCommand,
  type Tag,
} from "@aws-sdk/client-iam";
import {
  CreateKeyPairCommand,
  CreateSecurityGroupCommand,
  CreateSubnetCommand,
  CreateVpcCommand,
  DescribeImagesCommand,
  DescribeInstanceAttributeCommand,
  DescribeInstancesCommand,
  DescribeSubnetsCommand,
  DescribeVpcsCommand,
  EC2ServiceException,
} from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AwsEnvironment, ComputeEnvironment, ComputeEnvironmentSpec, Run } from "../../src/api/types.js";
import { awsClients, type AwsClientOptions, type AwsClients } from "../../src/cloud/aws/clients.js";
import { roleNameOf } from "../../src/cloud/aws/environment.js";
import { INLINE_POLICY_NAME, TAG_CE_UID, TAG_MANAGED_BY, TAG_NAME, TAG_NAMESPACE, TAG_POLICY_HASH, TAG_PROFILE } from "../../src/cloud/aws/iam.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { TAG_RUN_UID } from "../../src/cloud/aws/runs.js";
import { CloudError, type EnvContext, type ResolvedCredentials } from "../../src/cloud/provider.js";
import { createLogger } from "../../src/engine/logger.js";
import { startMoto, type Moto } from "../harness/moto.js";

const REGION = "eu-west-1";
const CREDS: ResolvedCredentials = { source: "secret", secretName: "aws-creds", data: { accessKeyId: "testing", secretAccessKey: "testing" } };
const logger = createLogger({ level: "silent" });

let moto: Moto;
let admin: AwsClients;
let defaultVpc: string;
let defaultSubnets: string[];

/** Records every command name the provider's clients send (one entry per SDK attempt). */
const sent: string[] = [];

function recordingFactory(o: AwsClientOptions): AwsClients {
  const c = awsClients(o);
  for (const client of [c.ec2, c.iam, c.logs, c.s3, c.sts]) {
    (client.middlewareStack as AwsClients["iam"]["middlewareStack"]).add(
      (next, context) => async (args) => {
        sent.push(String(context.commandName).replace(/Command$/, ""));
        return next(args);
      },
      { step: "finalizeRequest", priority: "low", name: "vmforgeTestRecorder" },
    );
  }
  return c;
}

function newProvider(): AwsProvider {
  return new AwsProvider({ endpoint: moto.endpoint, clientFactory: recordingFactory });
}

function ce(aws: Partial<AwsEnvironment> = {}, meta: { namespace?: string; name?: string; uid?: string } = {}): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: {
      namespace: meta.namespace ?? `ns-${randomUUID().slice(0, 6)}`,
      name: meta.name ?? "ce",
      uid: meta.uid ?? randomUUID(),
      generation: 1,
    },
    spec: { provider: "aws", aws: { region: REGION, workDir: "s3://work-bucket/runs", ...aws } as AwsEnvironment },
  };
}

function ctxOf(c: ComputeEnvironment, credentials: ResolvedCredentials = CREDS): EnvContext {
  return { ce: c, credentials, logger };
}

function tagsOf(tags: Tag[] | undefined): Record<string, string> {
  return Object.fromEntries((tags ?? []).map((t) => [t.Key ?? "", t.Value ?? ""]));
}

async function roleOrUndefined(name: string) {
  try {
    return (await admin.iam.send(new GetRoleCommand({ RoleName: name }))).Role;
  } catch (e) {
    if ((e as IAMServiceException).name === "NoSuchEntityException") return undefined;
    throw e;
  }
}

async function profileOrUndefined(name: string) {
  try {
    return (await admin.iam.send(new GetInstanceProfileCommand({ InstanceProfileName: name }))).InstanceProfile;
  } catch (e) {
    if ((e as IAMServiceException).name === "NoSuchEntityException") return undefined;
    throw e;
  }
}

async function expectCloudError(p: Promise<unknown>, kind: CloudError["kind"], reason: string, message?: RegExp): Promise<CloudError> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  expect(caught, "expected a CloudError").toBeInstanceOf(CloudError);
  const err = caught as CloudError;
  expect({ kind: err.kind, reason: err.reason }).toEqual({ kind, reason });
  if (message) expect(err.message).toMatch(message);
  return err;
}

async function newestAl2023(arch: "x86_64" | "arm64") {
  const out = await admin.ec2.send(
    new DescribeImagesCommand({ Owners: ["amazon"], Filters: [{ Name: "name", Values: [`al2023-ami-2023.*-kernel-*-${arch}`] }] }),
  );
  const images = (out.Images ?? []).sort(
    (a, b) => (b.CreationDate ?? "").localeCompare(a.CreationDate ?? "") || (b.Name ?? "").localeCompare(a.Name ?? ""),
  );
  expect(images.length).toBeGreaterThan(0);
  return images[0]!;
}

/** A non-default VPC with two subnets and a security group. */
async function customNetwork(): Promise<{ vpcId: string; subnetIds: string[]; sgId: string }> {
  const vpc = await admin.ec2.send(new CreateVpcCommand({ CidrBlock: "10.42.0.0/16" }));
  const vpcId = vpc.Vpc!.VpcId!;
  const s1 = await admin.ec2.send(new CreateSubnetCommand({ VpcId: vpcId, CidrBlock: "10.42.1.0/24", AvailabilityZone: `${REGION}a` }));
  const s2 = await admin.ec2.send(new CreateSubnetCommand({ VpcId: vpcId, CidrBlock: "10.42.2.0/24", AvailabilityZone: `${REGION}b` }));
  const sg = await admin.ec2.send(new CreateSecurityGroupCommand({ GroupName: `vmforge-${randomUUID().slice(0, 8)}`, Description: "test", VpcId: vpcId }));
  return { vpcId, subnetIds: [s1.Subnet!.SubnetId!, s2.Subnet!.SubnetId!], sgId: sg.GroupId! };
}

beforeAll(async () => {
  moto = await startMoto();
  admin = awsClients({ credentials: CREDS, region: REGION, endpoint: moto.endpoint });
  const vpcs = await admin.ec2.send(new DescribeVpcsCommand({ Filters: [{ Name: "is-default", Values: ["true"] }] }));
  defaultVpc = vpcs.Vpcs![0]!.VpcId!;
  const subnets = await admin.ec2.send(new DescribeSubnetsCommand({ Filters: [{ Name: "vpc-id", Values: [defaultVpc] }] }));
  defaultSubnets = (subnets.Subnets ?? [])
    .sort((a, b) => (a.AvailabilityZone ?? "").localeCompare(b.AvailabilityZone ?? "") || (a.SubnetId ?? "").localeCompare(b.SubnetId ?? ""))
    .map((s) => s.SubnetId!);
  expect(defaultSubnets.length).toBeGreaterThan(0);
});

afterAll(async () => {
  admin?.destroy();
  await moto?.stop();
});

describe("AWS environment: defaults", () => {
  it("goes Ready with the default VPC, all its subnets, the newest AL2023 image and a tagged role + profile", async () => {
    const provider = newProvider();
    const c = ce();
    const roleName = roleNameOf(c);
    const obs = await provider.provisionEnvironment(ctxOf(c));
    const ami = await newestAl2023("x86_64");

    expect(obs.ready).toBe(true);
    expect(obs.missing).toEqual([]);
    expect(obs.status.aws).toEqual({
      accountId: "123456789012",
      roleArn: `arn:aws:iam::123456789012:role/${roleName}`,
      instanceProfileArn: `arn:aws:iam::123456789012:instance-profile/${roleName}`,
      vpcId: defaultVpc,
      subnetIds: defaultSubnets,
      securityGroupIds: [],
      amiId: ami.ImageId,
      rootDeviceName: ami.RootDeviceName,
      architecture: "x86_64",
      instanceType: "m6i.large",
      logGroup: `/vmforge/${c.metadata.namespace}/ce`,
    });
    expect(ami.Name).toMatch(/^al2023-ami-2023\..*-kernel-.*-x86_64$/);
    expect(obs.resources).toEqual([
      { kind: "IAMRole", id: `arn:aws:iam::123456789012:role/${roleName}`, name: roleName },
      { kind: "InstanceProfile", id: `arn:aws:iam::123456789012:instance-profile/${roleName}`, name: roleName },
    ]);

    const role = await roleOrUndefined(roleName);
    const tags = tagsOf(role?.Tags);
    expect(tags).toMatchObject({
      [TAG_CE_UID]: c.metadata.uid,
      [TAG_NAMESPACE]: c.metadata.namespace,
      [TAG_NAME]: "ce",
      [TAG_MANAGED_BY]: "vmforge",
      [TAG_PROFILE]: roleName,
    });
    expect(tags[TAG_POLICY_HASH]).toMatch(/^[0-9a-f]{64}$/);
    expect(decodeURIComponent(role?.AssumeRolePolicyDocument ?? "")).toContain('"Service":"ec2.amazonaws.com"');
    const profile = await profileOrUndefined(roleName);
    expect(profile?.Roles?.map((r) => r.RoleName)).toEqual([roleName]);
    expect(tagsOf(profile?.Tags)).toMatchObject({ [TAG_CE_UID]: c.metadata.uid, [TAG_MANAGED_BY]: "vmforge" });
    const inline = await admin.iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: INLINE_POLICY_NAME }));
    const doc = decodeURIComponent(inline.PolicyDocument ?? "");
    expect(doc).toContain("arn:aws:s3:::work-bucket/*");
    expect(doc).toContain(`arn:aws:logs:${REGION}:123456789012:log-group:/vmforge/${c.metadata.namespace}/ce`);
    expect(doc).toContain("ecr:GetAuthorizationToken");

    // observe is read-only and sees the same.
    sent.length = 0;
    const seen = await provider.observeEnvironment(ctxOf(c));
    expect(seen).toEqual(obs);
    expect(sent.filter((n) => !n.startsWith("Describe") && n !== "GetRole")).toEqual([]);

    // A second provision (the drift check) only reads: GetRole; the role's marker tag vouches for
    // the profile (there is no iam:GetInstanceProfile to look with).
    sent.length = 0;
    const again = await provider.provisionEnvironment(ctxOf(c));
    expect(again).toEqual(obs);
    const iamCalls = sent.filter((n) => !n.startsWith("Describe"));
    expect(iamCalls).toEqual(["GetRole"]);
    expect((await admin.iam.send(new ListRolePoliciesCommand({ RoleName: roleName }))).PolicyNames).toEqual([INLINE_POLICY_NAME]);

    await provider.disposeEnvironment(ctxOf(c));
    expect(await roleOrUndefined(roleName)).toBeUndefined();
    expect(await profileOrUndefined(roleName)).toBeUndefined();
  });

  it("graviton picks m7g.large and the newest arm64 AL2023 image", async () => {
    const provider = newProvider();
    const c = ce({ graviton: true });
    const obs = await provider.provisionEnvironment(ctxOf(c));
    const ami = await newestAl2023("arm64");
    expect(obs.status.aws).toMatchObject({ architecture: "arm64", instanceType: "m7g.large", amiId: ami.ImageId });
    await provider.disposeEnvironment(ctxOf(c));
  });
});

describe("AWS environment: every advanced option", () => {
  it("uses the given VPC, subnet, security group, key pair, AMI, instance type, disk, buckets and tags", async () => {
    const provider = newProvider();
    const net = await customNetwork();
    const keyName = `kp-${randomUUID().slice(0, 8)}`;
    await admin.ec2.send(new CreateKeyPairCommand({ KeyName: keyName }));
    const arm = await newestAl2023("arm64");
    const c = ce({
      graviton: true,
      instanceType: "c7g.xlarge",
      amiId: arm.ImageId!,
      keyPair: keyName,
      vpcId: net.vpcId,
      subnetIds: [net.subnetIds[1]!],
      securityGroupIds: [net.sgId],
      bootDiskSizeGiB: 120,
      allowBuckets: ["s3://extra-data", "s3://more-data"],
      tags: { team: "genomics", "cost-center": "42" },
    });
    const roleName = roleNameOf(c);
    const obs = await provider.provisionEnvironment(ctxOf(c));
    expect(obs.ready).toBe(true);
    expect(obs.status.aws).toMatchObject({
      vpcId: net.vpcId,
      subnetIds: [net.subnetIds[1]],
      securityGroupIds: [net.sgId],
      amiId: arm.ImageId,
      rootDeviceName: arm.RootDeviceName,
      architecture: "arm64",
      instanceType: "c7g.xlarge",
    });
    const role = await roleOrUndefined(roleName);
    expect(tagsOf(role?.Tags)).toMatchObject({ team: "genomics", "cost-center": "42", [TAG_CE_UID]: c.metadata.uid });
    const profile = await profileOrUndefined(roleName);
    expect(tagsOf(profile?.Tags)).toMatchObject({ team: "genomics", [TAG_CE_UID]: c.metadata.uid });
    const doc = decodeURIComponent((await admin.iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: INLINE_POLICY_NAME }))).PolicyDocument ?? "");
    for (const b of ["work-bucket", "extra-data", "more-data"]) {
      expect(doc).toContain(`arn:aws:s3:::${b}"`);
      expect(doc).toContain(`arn:aws:s3:::${b}/*`);
    }

    // No VPC but subnets given: the subnets' VPC is used.
    const c2 = ce({ subnetIds: net.subnetIds });
    const obs2 = await provider.provisionEnvironment(ctxOf(c2));
    expect(obs2.status.aws).toMatchObject({ vpcId: net.vpcId, subnetIds: net.subnetIds });
    // VPC given, no subnets: all subnets of that VPC.
    const c3 = ce({ vpcId: net.vpcId });
    expect((await provider.provisionEnvironment(ctxOf(c3))).status.aws?.subnetIds?.slice().sort()).toEqual(net.subnetIds.slice().sort());

    for (const x of [c, c2, c3]) await provider.disposeEnvironment(ctxOf(x));
    expect(await roleOrUndefined(roleName)).toBeUndefined();
  });

  it("a spec change updates only what differs: a new bucket re-puts the policy, a new tag only tags", async () => {
    const provider = newProvider();
    const c = ce({ tags: { team: "a" } });
    const roleName = roleNameOf(c);
    await provider.provisionEnvironment(ctxOf(c));
    const hash1 = tagsOf((await roleOrUndefined(roleName))?.Tags)[TAG_POLICY_HASH];

    const withBucket = { ...c, spec: { ...c.spec, aws: { ...c.spec.aws!, allowBuckets: ["s3://new-bucket"] } } };
    sent.length = 0;
    await provider.provisionEnvironment(ctxOf(withBucket));
    expect(sent.filter((n) => n === "PutRolePolicy")).toHaveLength(1);
    expect(sent).not.toContain("CreateRole");
    const doc = decodeURIComponent((await admin.iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: INLINE_POLICY_NAME }))).PolicyDocument ?? "");
    expect(doc).toContain("arn:aws:s3:::new-bucket/*");
    const hash2 = tagsOf((await roleOrUndefined(roleName))?.Tags)[TAG_POLICY_HASH];
    expect(hash2).not.toBe(hash1);

    const retagged = { ...withBucket, spec: { ...withBucket.spec, aws: { ...withBucket.spec.aws, tags: { team: "b" } } } };
    sent.length = 0;
    await provider.provisionEnvironment(ctxOf(retagged));
    expect(sent).not.toContain("PutRolePolicy");
    expect(sent.filter((n) => n === "TagRole")).toHaveLength(1);
    expect(sent.filter((n) => n === "TagInstanceProfile")).toHaveLength(1);
    expect(tagsOf((await roleOrUndefined(roleName))?.Tags).team).toBe("b");
    expect(tagsOf((await profileOrUndefined(roleName))?.Tags).team).toBe("b");

    // The policy as read back is what the hash tag says was applied; re-provisioning writes nothing.
    sent.length = 0;
    await provider.provisionEnvironment(ctxOf(retagged));
    expect(sent.filter((n) => ["PutRolePolicy", "TagRole", "TagInstanceProfile", "CreateRole"].includes(n))).toEqual([]);
    await provider.disposeEnvironment(ctxOf(retagged));
  });

  it("bring-your-own instance profile: no IAM calls to create, status carries it, dispose leaves it", async () => {
    const provider = newProvider();
    await admin.iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: "byo-profile" }));
    const c = ce({ instanceProfileArn: "arn:aws:iam::123456789012:instance-profile/byo-profile" });
    sent.length = 0;
    const obs = await provider.provisionEnvironment(ctxOf(c));
    expect(obs.ready).toBe(true);
    expect(obs.resources).toEqual([]);
    expect(obs.status.aws).toMatchObject({ instanceProfileArn: "arn:aws:iam::123456789012:instance-profile/byo-profile", accountId: "123456789012" });
    expect(obs.status.aws?.roleArn).toBeUndefined();
    expect(sent.filter((n) => !n.startsWith("Describe"))).toEqual([]);
    expect(await roleOrUndefined(roleNameOf(c))).toBeUndefined();
    await provider.disposeEnvironment(ctxOf({ ...c, status: { aws: obs.status.aws } }));
    expect(await profileOrUndefined("byo-profile")).toBeDefined();
    await admin.iam.send(new DeleteInstanceProfileCommand({ InstanceProfileName: "byo-profile" }));
  });
});

describe("AWS environment: invalid input is reported precisely", () => {
  let net: { vpcId: string; subnetIds: string[]; sgId: string };
  beforeAll(async () => {
    net = await customNetwork();
  });

  it("names the field and value, creates nothing, and a fixed spec goes Ready", async () => {
    const provider = newProvider();
    const arm = await newestAl2023("arm64");
    const cases: [Partial<AwsEnvironment>, RegExp][] = [
      [{ instanceType: "zz9.huge" }, /^spec\.aws\.instanceType: zz9\.huge does not exist in eu-west-1$/],
      [{ graviton: true, instanceType: "m6i.large" }, /^spec\.aws\.instanceType: m6i\.large supports x86_64, not arm64 \(graviton is true/],
      [{ instanceType: "m7g.large" }, /^spec\.aws\.instanceType: m7g\.large supports arm64, not x86_64 \(graviton is false/],
      [{ amiId: "ami-0123456789abcdef0" }, /^spec\.aws\.amiId: ami-0123456789abcdef0 not found in eu-west-1$/],
      [{ amiId: arm.ImageId! }, new RegExp(`^spec\\.aws\\.amiId: ${arm.ImageId} is built for arm64, but the instances are x86_64`)],
      [{ bootDiskSizeGiB: 10, amiId: (await newestAl2023("x86_64")).ImageId! }, /^spec\.aws\.bootDiskSizeGiB: 10 is smaller than the root snapshot \(\d+ GiB\)/],
      [{ vpcId: "vpc-0123456789abcdef0" }, /^spec\.aws\.vpcId: vpc-0123456789abcdef0 not found in eu-west-1$/],
      [{ subnetIds: ["subnet-0123456789abcdef0"] }, /^spec\.aws\.subnetIds: subnet-0123456789abcdef0 not found in eu-west-1$/],
      [{ vpcId: net.vpcId, subnetIds: [defaultSubnets[0]!] }, new RegExp(`^spec\\.aws\\.subnetIds: ${defaultSubnets[0]} is in ${defaultVpc}, not in spec\\.aws\\.vpcId ${net.vpcId}$`)],
      [{ subnetIds: [defaultSubnets[0]!, net.subnetIds[0]!] }, /^spec\.aws\.subnetIds: the subnets are in several VPCs/],
      [{ securityGroupIds: [net.sgId] }, new RegExp(`^spec\\.aws\\.securityGroupIds: ${net.sgId} is in ${net.vpcId}, not in VPC ${defaultVpc}$`)],
      [{ securityGroupIds: ["sg-0123456789abcdef0"] }, /^spec\.aws\.securityGroupIds: sg-0123456789abcdef0 not found in eu-west-1$/],
      [{ keyPair: "no-such-key" }, /^spec\.aws\.keyPair: no-such-key not found in eu-west-1$/],
      [{ workDir: "s3://UPPER" }, /^spec\.aws\.workDir: "s3:\/\/UPPER" is not s3:\/\/bucket/],
      [{ instanceProfileArn: "arn:aws:iam::123456789012:role/not-a-profile" }, /^spec\.aws\.instanceProfileArn: /],
    ];
    for (const [aws, message] of cases) {
      const c = ce(aws);
      await expectCloudError(provider.provisionEnvironment(ctxOf(c)), "Terminal", "InvalidSpec", message);
      await expectCloudError(provider.observeEnvironment(ctxOf(c)), "Terminal", "InvalidSpec", message);
      expect(await roleOrUndefined(roleNameOf(c)), JSON.stringify(aws)).toBeUndefined();
    }

    // Fixing the spec of the same CE clears it.
    const broken = ce({ keyPair: "no-such-key" });
    await expectCloudError(provider.provisionEnvironment(ctxOf(broken)), "Terminal", "InvalidSpec");
    const fixed = { ...broken, spec: { ...broken.spec, aws: { ...broken.spec.aws!, keyPair: undefined } } };
    expect((await provider.provisionEnvironment(ctxOf(fixed))).ready).toBe(true);
    await provider.disposeEnvironment(ctxOf(fixed));
  });

  it("a Secret without a key is InvalidCredentials naming the Secret and the key, never a value", async () => {
    const provider = newProvider();
    const c = ce();
    // As resolveCredentials gives it: "namespace/name", named once in the message.
    const bad: ResolvedCredentials = { source: "secret", secretName: `${c.metadata.namespace}/aws-creds`, data: { accessKeyId: "AKIASECRETVALUE123" } };
    const err = await expectCloudError(provider.provisionEnvironment(ctxOf(c, bad)), "Terminal", "InvalidCredentials");
    expect(err.message).toBe(`Secret ${c.metadata.namespace}/aws-creds has no key "secretAccessKey" (or it is empty)`);
    expect(err.message).not.toContain("AKIASECRETVALUE123");
  });
});

describe("AWS environment: adoption and foreign roles", () => {
  it("adopts a role left by a crash right after CreateRole: nothing duplicated", async () => {
    const provider = newProvider();
    const c = ce();
    const roleName = roleNameOf(c);
    // What the operator had done before it died: the role, created with its tags in one call.
    await admin.iam.send(
      new CreateRoleCommand({
        RoleName: roleName,
        AssumeRolePolicyDocument: JSON.stringify({ Version: "2012-10-17", Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }] }),
        Tags: [
          { Key: TAG_CE_UID, Value: c.metadata.uid! },
          { Key: TAG_NAMESPACE, Value: c.metadata.namespace! },
          { Key: TAG_NAME, Value: "ce" },
          { Key: TAG_MANAGED_BY, Value: "vmforge" },
        ],
      }),
    );
    const before = await provider.observeEnvironment(ctxOf(c));
    expect(before.ready).toBe(false);
    expect(before.missing).toEqual([`inline policy ${INLINE_POLICY_NAME} of IAM role ${roleName}`, `instance profile ${roleName} holding the role`]);
    expect(before.resources.map((r) => r.kind)).toEqual(["IAMRole"]);
    expect(before.status.aws?.instanceProfileArn).toBeUndefined();

    sent.length = 0;
    const obs = await provider.provisionEnvironment(ctxOf(c));
    expect(obs.ready).toBe(true);
    expect(sent).not.toContain("CreateRole");
    expect((await admin.iam.send(new ListRolePoliciesCommand({ RoleName: roleName }))).PolicyNames).toEqual([INLINE_POLICY_NAME]);
    expect((await profileOrUndefined(roleName))?.Roles?.map((r) => r.RoleName)).toEqual([roleName]);
    await provider.disposeEnvironment(ctxOf(c));
  });

  it("adopts a crash after the profile steps but before the marker and hash tags were written", async () => {
    const provider = newProvider();
    const c = ce();
    const roleName = roleNameOf(c);
    await provider.provisionEnvironment(ctxOf(c));
    // As if the operator died after AddRoleToInstanceProfile, before tagging the role.
    await admin.iam.send(new UntagRoleCommand({ RoleName: roleName, TagKeys: [TAG_PROFILE, TAG_POLICY_HASH] }));
    const before = await provider.observeEnvironment(ctxOf(c));
    expect(before.ready).toBe(false);
    sent.length = 0;
    const again = await newProvider().provisionEnvironment(ctxOf(c));
    expect(again.ready).toBe(true);
    expect(sent).not.toContain("CreateRole");
    expect((await profileOrUndefined(roleName))?.Roles?.map((r) => r.RoleName)).toEqual([roleName]);
    expect((await admin.iam.send(new ListRolePoliciesCommand({ RoleName: roleName }))).PolicyNames).toEqual([INLINE_POLICY_NAME]);
    expect((await provider.observeEnvironment(ctxOf(c))).ready).toBe(true);
    await provider.disposeEnvironment(ctxOf(c));
  });

  it("two provisions racing for the same CE end with one role and one profile", async () => {
    const c = ce();
    const roleName = roleNameOf(c);
    const [a, b] = await Promise.all([newProvider().provisionEnvironment(ctxOf(c)), newProvider().provisionEnvironment(ctxOf(c))]);
    expect(a.ready && b.ready).toBe(true);
    expect((await profileOrUndefined(roleName))?.Roles?.map((r) => r.RoleName)).toEqual([roleName]);
    expect((await admin.iam.send(new ListRolePoliciesCommand({ RoleName: roleName }))).PolicyNames).toEqual([INLINE_POLICY_NAME]);
    await newProvider().disposeEnvironment(ctxOf(c));
  });

  it("a same-named role without our tag (or with another CE's) is never touched: Terminal ForeignRole", async () => {
    const provider = newProvider();
    for (const tags of [[], [{ Key: TAG_CE_UID, Value: "someone-else" }]]) {
      const c = ce();
      const roleName = roleNameOf(c);
      await admin.iam.send(new CreateRoleCommand({ RoleName: roleName, AssumeRolePolicyDocument: "{}", Tags: tags }));
      const msg = new RegExp(`^IAM role ${roleName} already exists and (has no vmforge.dev/ce-uid tag|belongs to another ComputeEnvironment)`);
      await expectCloudError(provider.provisionEnvironment(ctxOf(c)), "Terminal", "ForeignRole", msg);
      await expectCloudError(provider.observeEnvironment(ctxOf(c)), "Terminal", "ForeignRole", msg);
      sent.length = 0;
      await provider.disposeEnvironment(ctxOf(c));
      expect(sent.filter((n) => !["GetRole"].includes(n))).toEqual([]);
      const role = await roleOrUndefined(roleName);
      expect(role).toBeDefined();
      expect(tagsOf(role?.Tags)).toEqual(Object.fromEntries(tags.map((t) => [t.Key, t.Value])));
      expect((await admin.iam.send(new ListRolePoliciesCommand({ RoleName: roleName }))).PolicyNames).toEqual([]);
      expect(await profileOrUndefined(roleName)).toBeUndefined();
      await admin.iam.send(new DeleteRoleCommand({ RoleName: roleName }));
    }
  });
});

describe("AWS environment: disposal", () => {
  it("removes everything it created and nothing else (another CE's role, a hand-attached managed policy stay)", async () => {
    const provider = newProvider();
    const a = ce();
    const b = ce();
    await provider.provisionEnvironment(ctxOf(a));
    await provider.provisionEnvironment(ctxOf(b));
    const roleA = roleNameOf(a);
    const managed = await admin.iam.send(
      new CreatePolicyCommand({ PolicyName: `hand-${randomUUID().slice(0, 8)}`, PolicyDocument: JSON.stringify({ Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "s3:ListAllMyBuckets", Resource: "*" }] }) }),
    );
    await admin.iam.send(new AttachRolePolicyCommand({ RoleName: roleA, PolicyArn: managed.Policy!.Arn! }));

    await provider.disposeEnvironment(ctxOf(a));
    expect(await roleOrUndefined(roleA)).toBeUndefined();
    expect(await profileOrUndefined(roleA)).toBeUndefined();
    // The managed policy itself is not ours: detached, not deleted.
    expect((await admin.iam.send(new GetPolicyCommand({ PolicyArn: managed.Policy!.Arn! }))).Policy?.Arn).toBe(managed.Policy!.Arn);
    // The other CE is intact.
    expect(await roleOrUndefined(roleNameOf(b))).toBeDefined();
    expect((await profileOrUndefined(roleNameOf(b)))?.Roles?.map((r) => r.RoleName)).toEqual([roleNameOf(b)]);
    expect((await provider.observeEnvironment(ctxOf(b))).ready).toBe(true);
    // Disposing twice is fine.
    await provider.disposeEnvironment(ctxOf(a));
    await provider.disposeEnvironment(ctxOf(b));
    expect(await roleOrUndefined(roleNameOf(b))).toBeUndefined();
  });

  it("finishes when pieces were deleted by hand", async () => {
    const provider = newProvider();
    const iam = admin.iam;

    // 1. The profile was deleted by hand.
    const c1 = ce();
    const r1 = roleNameOf(c1);
    await provider.provisionEnvironment(ctxOf(c1));
    await iam.send(new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: r1, RoleName: r1 }));
    await iam.send(new DeleteInstanceProfileCommand({ InstanceProfileName: r1 }));
    await provider.disposeEnvironment(ctxOf(c1));
    expect(await roleOrUndefined(r1)).toBeUndefined();

    // 2. The inline policy was deleted and the role taken out of the profile by hand.
    const c2 = ce();
    const r2 = roleNameOf(c2);
    await provider.provisionEnvironment(ctxOf(c2));
    await iam.send(new DeleteRolePolicyCommand({ RoleName: r2, PolicyName: INLINE_POLICY_NAME }));
    await iam.send(new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: r2, RoleName: r2 }));
    await provider.disposeEnvironment(ctxOf(c2));
    expect(await roleOrUndefined(r2)).toBeUndefined();
    expect(await profileOrUndefined(r2)).toBeUndefined();

    // 3. The role was deleted by hand, leaving the empty profile: deleted only because the CE's
    //    status recorded that profile (proof it was ours); without that record it is left alone.
    for (const recorded of [true, false]) {
      const c3 = ce();
      const r3 = roleNameOf(c3);
      const obs = await provider.provisionEnvironment(ctxOf(c3));
      await iam.send(new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: r3, RoleName: r3 }));
      await iam.send(new DeleteRolePolicyCommand({ RoleName: r3, PolicyName: INLINE_POLICY_NAME }));
      await iam.send(new DeleteRoleCommand({ RoleName: r3 }));
      const withStatus = recorded ? { ...c3, status: { aws: obs.status.aws } } : c3;
      await provider.disposeEnvironment(ctxOf(withStatus));
      if (recorded) {
        expect(await profileOrUndefined(r3)).toBeUndefined();
      } else {
        expect(await profileOrUndefined(r3)).toBeDefined();
        await iam.send(new DeleteInstanceProfileCommand({ InstanceProfileName: r3 }));
      }
    }

    // 4. Everything gone already.
    await provider.disposeEnvironment(ctxOf(ce()));
  });

  it("needs no valid spec to dispose", async () => {
    const provider = newProvider();
    const c = ce();
    await provider.provisionEnvironment(ctxOf(c));
    const broken = { ...c, spec: { ...c.spec, aws: { ...c.spec.aws!, instanceType: "zz9.huge", keyPair: "gone" } } };
    await provider.disposeEnvironment(ctxOf(broken));
    expect(await roleOrUndefined(roleNameOf(c))).toBeUndefined();
  });
});

describe("AWS environment: credentials and throttling", () => {
  it("rotated credentials get new clients on the next call (cache keyed by a credentials hash)", async () => {
    const made: string[] = [];
    const provider = new AwsProvider({
      endpoint: moto.endpoint,
      clientFactory: (o) => {
        made.push(o.credentials.data.accessKeyId ?? "");
        return recordingFactory(o);
      },
    });
    const c = ce();
    await provider.provisionEnvironment(ctxOf(c));
    await provider.observeEnvironment(ctxOf(c));
    expect(made).toEqual(["testing"]);
    const rotated: ResolvedCredentials = { source: "secret", secretName: "aws-creds", data: { accessKeyId: "rotated", secretAccessKey: "new-secret" } };
    await provider.observeEnvironment(ctxOf(c, rotated));
    expect(made).toEqual(["testing", "rotated"]);
    expect(provider.clients.size).toBe(2);
    await provider.disposeEnvironment(ctxOf(c, rotated));
    expect(made).toEqual(["testing", "rotated"]);
  });

  it("throttling becomes Retryable after the SDK's 3 attempts, and the next try succeeds", async () => {
    // Inject throttling answers inside the SDK's retry loop: IAM CreateRole 4 times, EC2
    // DescribeInstanceTypes 3 times.
    const budget: Record<string, number> = { CreateRole: 4, DescribeInstanceTypes: 3 };
    const attempts: Record<string, number> = {};
    const provider = new AwsProvider({
      endpoint: moto.endpoint,
      clientFactory: (o) => {
        const c = awsClients(o);
        const inject = (client: AwsClients["iam"] | AwsClients["ec2"], make: (name: string) => Error) => {
          (client.middlewareStack as AwsClients["iam"]["middlewareStack"]).add(
            (next, context) => async (args) => {
              const name = String(context.commandName).replace(/Command$/, "");
              attempts[name] = (attempts[name] ?? 0) + 1;
              if ((budget[name] ?? 0) > 0) {
                budget[name]!--;
                throw make(name);
              }
              return next(args);
            },
            { step: "finalizeRequest", priority: "low", name: "vmforgeTestThrottle" },
          );
        };
        inject(c.iam, () => new IAMServiceException({ name: "Throttling", $fault: "client", $metadata: { httpStatusCode: 400 }, message: "Rate exceeded" }));
        inject(c.ec2 as unknown as AwsClients["iam"], () => new EC2ServiceException({ name: "RequestLimitExceeded", $fault: "client", $metadata: { httpStatusCode: 503 }, message: "Request limit exceeded." }));
        return c;
      },
    });
    const c = ce();
    const first = await expectCloudError(provider.provisionEnvironment(ctxOf(c)), "Retryable", "Throttled", /^ec2:DescribeInstanceTypes: AWS throttled the request \(RequestLimitExceeded\)/);
    expect(first.retryAfterMs).toBeGreaterThanOrEqual(2000);
    expect(attempts.DescribeInstanceTypes).toBe(3);

    const second = await expectCloudError(provider.provisionEnvironment(ctxOf(c)), "Retryable", "Throttled", /^iam:CreateRole: AWS throttled the request \(Throttling\)/);
    expect(second.retryAfterMs).toBeGreaterThanOrEqual(2000);
    expect(attempts.CreateRole).toBe(3);

    // Third try: one more throttled CreateRole attempt is absorbed by the SDK's own retry.
    const obs = await provider.provisionEnvironment(ctxOf(c));
    expect(obs.ready).toBe(true);
    expect(attempts.CreateRole).toBe(5);
    expect(await roleOrUndefined(roleNameOf(c))).toBeDefined();
    await provider.disposeEnvironment(ctxOf(c));
  });
});

describe("AWS environment: managed policies", () => {
  it("attaches no managed policy (the inline policy is all the VM gets)", async () => {
    const provider = newProvider();
    const c = ce();
    await provider.provisionEnvironment(ctxOf(c));
    expect((await admin.iam.send(new ListAttachedRolePoliciesCommand({ RoleName: roleNameOf(c) }))).AttachedPolicies).toEqual([]);
    await provider.disposeEnvironment(ctxOf(c));
  });
});

describe("AWS environment: Seqera Platform token", () => {
  const TOKEN = `tok-${randomUUID()}`;
  const SSM_ARN = "arn:aws:ssm:eu-west-1:123456789012:parameter/seqera/platform-token";
  const SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:seqera/platform-token-AbCdEf";

  async function inlinePolicy(roleName: string): Promise<{ Statement: { Sid?: string; Action: unknown; Resource: unknown }[] }> {
    const out = await admin.iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: INLINE_POLICY_NAME }));
    return JSON.parse(decodeURIComponent(out.PolicyDocument ?? "")) as { Statement: { Sid?: string; Action: unknown; Resource: unknown }[] };
  }

  function withAws(c: ComputeEnvironment, aws: Partial<AwsEnvironment>, spec: Partial<ComputeEnvironmentSpec> = {}): ComputeEnvironment {
    return { ...c, spec: { ...c.spec, ...spec, aws: { ...c.spec.aws!, ...aws } } };
  }

  function runOf(c: ComputeEnvironment, name: string): Run {
    return {
      apiVersion: "vmforge.dev/v1alpha1",
      kind: "Run",
      metadata: { namespace: c.metadata.namespace, name, uid: randomUUID() },
      spec: { computeEnvironmentRef: { name: c.metadata.name! }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
    };
  }

  /** The user data as any principal allowed ec2:DescribeInstanceAttribute reads it. */
  async function userDataOf(instanceId: string): Promise<string> {
    const out = await admin.ec2.send(new DescribeInstanceAttributeCommand({ InstanceId: instanceId, Attribute: "userData" }));
    return Buffer.from(out.UserData?.Value ?? "", "base64").toString("utf8");
  }

  /** Provisions the CE and returns it with the status the CE controller would record. */
  async function provisioned(provider: AwsProvider, c: ComputeEnvironment): Promise<ComputeEnvironment> {
    const obs = await provider.provisionEnvironment(ctxOf(c));
    expect(obs.ready).toBe(true);
    return { ...c, status: { ...obs.status } };
  }

  it("the role's inline policy lets the instance read exactly the named token, following ARN changes", async () => {
    const provider = newProvider();
    const c = ce({ platformTokenArn: SSM_ARN });
    const roleName = roleNameOf(c);
    await provider.provisionEnvironment(ctxOf(c));
    let doc = await inlinePolicy(roleName);
    expect(doc.Statement.filter((st) => st.Sid === "PlatformToken")).toEqual([
      { Sid: "PlatformToken", Effect: "Allow", Action: ["ssm:GetParameter"], Resource: SSM_ARN },
    ]);

    // Another ARN: the hash tag differs, so provision re-puts the policy.
    const secret = withAws(c, { platformTokenArn: SECRET_ARN });
    sent.length = 0;
    const obs = await provider.provisionEnvironment(ctxOf(secret));
    expect(obs.ready).toBe(true);
    expect(sent.filter((n) => n === "PutRolePolicy")).toHaveLength(1);
    doc = await inlinePolicy(roleName);
    expect(doc.Statement.filter((st) => st.Sid === "PlatformToken")).toEqual([
      { Sid: "PlatformToken", Effect: "Allow", Action: ["secretsmanager:GetSecretValue"], Resource: [SECRET_ARN, `${SECRET_ARN}-??????`] },
    ]);
    expect(JSON.stringify(doc)).not.toContain("ssm:GetParameter");

    // Unchanged: nothing written. Removed: the statement goes.
    sent.length = 0;
    await provider.provisionEnvironment(ctxOf(secret));
    expect(sent).not.toContain("PutRolePolicy");
    const none = withAws(c, { platformTokenArn: undefined });
    delete none.spec.aws!.platformTokenArn;
    await provider.provisionEnvironment(ctxOf(none));
    doc = await inlinePolicy(roleName);
    expect(doc.Statement.map((st) => st.Sid)).not.toContain("PlatformToken");
    expect(JSON.stringify(doc)).not.toMatch(/ssm:|secretsmanager:/);
    await provider.disposeEnvironment(ctxOf(none));
  });

  it("launches put the token in user data only with platformTokenInUserData; with an ARN only the ARN travels", async () => {
    const provider = newProvider();
    const ns = `ns-${randomUUID().slice(0, 6)}`;
    const byArn = await provisioned(
      provider,
      ce({ platformTokenArn: SECRET_ARN }, { namespace: ns, name: "by-arn" }),
    );
    const inUserData = await provisioned(
      provider,
      withAws(ce({}, { namespace: ns, name: "in-user-data" }), { platformTokenInUserData: true }, { platformTokenSecretRef: { name: "seqera" } }),
    );
    const notOptedIn = await provisioned(
      provider,
      withAws(ce({}, { namespace: ns, name: "not-opted-in" }), { platformTokenInUserData: false }, { platformTokenSecretRef: { name: "seqera" } }),
    );
    // The token the Run reconciler resolved from spec.platformTokenSecretRef (here also for the
    // ARN CE, as if it named a Secret too: the provider must still keep it out of user data).
    const withToken = (c: ComputeEnvironment): EnvContext => ({ ...ctxOf(c), platformToken: TOKEN });

    const runArn = runOf(byArn, "run-arn");
    const a = await provider.launchRun(withToken(byArn), runArn);
    const udArn = await userDataOf(a.instanceId);
    expect(udArn).toMatch(/^#!\/bin\/bash\n/);
    expect(udArn).toContain("VMF_TOKEN_SOURCE='secretsmanager'");
    expect(udArn).toContain(`VMF_TOKEN_REF='${SECRET_ARN}'`);
    expect(udArn).not.toContain(TOKEN);

    const runInline = runOf(inUserData, "run-inline");
    const b = await provider.launchRun(withToken(inUserData), runInline);
    const udInline = await userDataOf(b.instanceId);
    expect(udInline).toContain("VMF_TOKEN_SOURCE='user-data'");
    expect(udInline).toContain(`VMF_TOKEN_INLINE='${TOKEN}'`);

    // Without the opt-in the launch fails before RunInstances, naming both remedies, never the token.
    const run = runOf(notOptedIn, "run-refused");
    const err = await expectCloudError(provider.launchRun(withToken(notOptedIn), run), "Terminal", "PlatformTokenNotDeliverable", /spec\.aws\.platformTokenArn.*spec\.aws\.platformTokenInUserData/s);
    expect(err.message).not.toContain(TOKEN);
    const launched = await admin.ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: `tag:${TAG_RUN_UID}`, Values: [run.metadata.uid!] }] }));
    expect((launched.Reservations ?? []).flatMap((r) => r.Instances ?? [])).toEqual([]);

    await provider.terminateRun(ctxOf(byArn), runArn);
    await provider.terminateRun(ctxOf(inUserData), runInline);
    for (const c of [byArn, inUserData, notOptedIn]) await provider.disposeEnvironment(ctxOf(c));
  });
});
