/**
 * The AWS ComputeEnvironment through the OPERATOR (issue 5): the real kube-apiserver, the operator
 * running in-process with its real AwsProvider, and moto. Fixtures are made and results checked
 * with plain AWS SDK clients; everything the CE reports is read back from the API server.
 *
 * Claims: Ready with defaults and with every advanced option; each invalid input reported on the
 * Stalled condition and cleared by a fixed spec; a restart between creating the role and writing
 * status adopts the role (nothing duplicated); a foreign same-named role is left alone; deletion
 * removes what the CE created and nothing else, also after pieces were deleted by hand; Retain;
 * throttling retried by the controller. On a private moto that enforces IAM policies: rotated
 * credentials, and the operator working with an IAM user that holds only the operator policy.
 */
import {
  AddRoleToInstanceProfileCommand,
  AttachUserPolicyCommand,
  CreateAccessKeyCommand,
  CreateInstanceProfileCommand,
  CreatePolicyCommand,
  CreateRoleCommand,
  CreateUserCommand,
  DeleteAccessKeyCommand,
  DeleteInstanceProfileCommand,
  DeleteRoleCommand,
  DeleteRolePolicyCommand,
  GetInstanceProfileCommand,
  GetRoleCommand,
  GetRolePolicyCommand,
  IAMClient,
  IAMServiceException,
  ListAttachedRolePoliciesCommand,
  ListInstanceProfilesCommand,
  ListRolePoliciesCommand,
  ListRolesCommand,
  PutRolePolicyCommand,
  RemoveRoleFromInstanceProfileCommand,
  type InstanceProfile,
  type Role,
  type Tag,
} from "@aws-sdk/client-iam";
import {
  CreateKeyPairCommand,
  CreateSecurityGroupCommand,
  CreateSubnetCommand,
  CreateVpcCommand,
  DescribeImagesCommand,
  DescribeSubnetsCommand,
  DescribeVpcsCommand,
  EC2Client,
  type Image,
} from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient } from "../../src/engine/kube.js";
import type { Condition } from "../../src/engine/conditions.js";
import { ComputeEnvironmentResource } from "../../src/api/types.js";
import type { AwsEnvironment, ComputeEnvironment } from "../../src/api/types.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { awsClients } from "../../src/cloud/aws/clients.js";
import type { AwsClientOptions, AwsClients } from "../../src/cloud/aws/clients.js";
import {
  INLINE_POLICY_NAME,
  ROLE_PREFIX,
  TAG_CE_UID,
  TAG_MANAGED_BY,
  TAG_NAME,
  TAG_NAMESPACE,
  roleNameFor,
} from "../../src/cloud/aws/iam.js";
import type { PolicyDocument } from "../../src/cloud/aws/policy.js";
import { CloudError } from "../../src/cloud/provider.js";
import type { CloudProvider, EnvContext, EnvObservation } from "../../src/cloud/provider.js";
import { FINALIZER, SECRET_IN_USE_FINALIZER, SECRET_LABEL, SecretResource } from "../../src/controllers/shared.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { installCrds, startOperator, waitFor } from "../support/operator.js";
import type { RunningOperator } from "../support/operator.js";
import { awsTestConfig, freshNamespace, kubeconfigPath, motoEndpoint, motoReset } from "../harness/helpers.js";
import { StrictAwsControl } from "../harness/aws-strict/client.js";
import { startStrictAws, type StrictAws } from "../harness/aws-strict/server.js";
import { startMoto, type Moto } from "../harness/moto.js";
import { awsSeedPath, seedPolicy } from "../harness/seed-policy.js";

const REGION = "eu-west-1";
const WORK_DIR = "s3://vmforge-ce-op-work/runs";

let client: KubeClient;
let ns: string;
let op: RunningOperator | undefined;
let iam: IAMClient;
let ec2: EC2Client;
let defaultVpc: string;
let defaultSubnets: string[];

// ---------------------------------------------------------------------------------------------
// The main operator's provider: the real AwsProvider whose IAM client can be told to answer
// CreateRole with throttling errors, before the SDK's own retry loop (so every injected error
// reaches the controller), for roles whose name starts with a given prefix.

const throttle = { prefix: "", budget: 0, injected: 0, createRoleAttempts: 0, attemptTimes: [] as number[] };
/** provisionEnvironment failures the controller saw, by CloudError reason. */
const provisionFailures: string[] = [];

function throttlingFactory(o: AwsClientOptions): AwsClients {
  const c = awsClients(o);
  c.iam.middlewareStack.add(
    (next, context) => async (args) => {
      const input = args.input as { RoleName?: unknown };
      if (context.commandName === "CreateRoleCommand" && throttle.prefix !== "" && String(input.RoleName ?? "").startsWith(throttle.prefix)) {
        throttle.createRoleAttempts++;
        throttle.attemptTimes.push(Date.now());
        if (throttle.budget > 0) {
          throttle.budget--;
          throttle.injected++;
          throw new IAMServiceException({ name: "Throttling", $fault: "client", $metadata: { httpStatusCode: 400 }, message: "Rate exceeded" });
        }
      }
      return next(args);
    },
    { step: "initialize", name: "vmforgeTestThrottleCreateRole" },
  );
  return c;
}

function mainProvider(): CloudProvider {
  const real = new AwsProvider({ endpoint: motoEndpoint(), clientFactory: throttlingFactory });
  return Object.assign(Object.create(real) as CloudProvider, {
    provisionEnvironment: async (ctx: EnvContext): Promise<EnvObservation> => {
      try {
        return await real.provisionEnvironment(ctx);
      } catch (e) {
        if (e instanceof CloudError) provisionFailures.push(`${ctx.ce.metadata.name}:${e.kind}:${e.reason}`);
        throw e;
      }
    },
  });
}

const startMain = async (): Promise<void> => {
  op = await startOperator(kubeconfigPath(), new Map([["aws", mainProvider()]]), { namespaces: [ns], pollIntervalMs: 1_000 });
};

// ---------------------------------------------------------------------------------------------
// Kubernetes helpers

async function createCe(
  name: string,
  aws: Partial<AwsEnvironment> = {},
  opts: { namespace?: string; secret?: string; deletionPolicy?: "Delete" | "Retain" } = {},
): Promise<ComputeEnvironment> {
  return client.create(ComputeEnvironmentResource, {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { name, namespace: opts.namespace ?? ns },
    spec: {
      provider: "aws",
      credentials: { secretRef: { name: opts.secret ?? "aws" } },
      aws: { region: REGION, workDir: WORK_DIR, ...aws } as AwsEnvironment,
      ...(opts.deletionPolicy ? { deletionPolicy: opts.deletionPolicy } : {}),
    },
  } as ComputeEnvironment);
}

const getCe = (name: string, namespace = ns) => client.get<ComputeEnvironment>(ComputeEnvironmentResource, namespace, name);
const condition = (c: ComputeEnvironment | undefined, type: string): Condition | undefined => c?.status?.conditions?.find((x) => x.type === type);

/** Waits until the CE is Ready for its current generation. */
function ready(name: string, namespace = ns, timeoutMs = 60_000): Promise<ComputeEnvironment> {
  return waitFor(`CE ${namespace}/${name} Ready`, async () => {
    const c = await getCe(name, namespace);
    const r = condition(c, "Ready");
    return r?.status === "True" && r.observedGeneration === c?.metadata.generation && c?.status?.observedGeneration === c?.metadata.generation ? c : undefined;
  }, timeoutMs, 250);
}

/** Waits until the CE is Stalled for its current generation; returns the Stalled condition. */
function stalled(name: string, namespace = ns, timeoutMs = 60_000): Promise<Condition> {
  return waitFor(`CE ${namespace}/${name} Stalled`, async () => {
    const c = await getCe(name, namespace);
    const s = condition(c, "Stalled");
    return s?.status === "True" && s.observedGeneration === c?.metadata.generation ? s : undefined;
  }, timeoutMs, 250);
}

async function deleteCe(name: string, namespace = ns): Promise<void> {
  await client.delete(ComputeEnvironmentResource, namespace, name);
  await waitFor(`CE ${namespace}/${name} gone`, async () => (await getCe(name, namespace)) === undefined, 60_000, 250);
}

async function createSecret(name: string, namespace: string, keys: { accessKeyId: string; secretAccessKey: string }): Promise<void> {
  await client.create(SecretResource, {
    apiVersion: "v1", kind: "Secret", metadata: { name, namespace }, stringData: { ...keys },
  } as SecretObject);
}

const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");

function roleNameOfCe(c: ComputeEnvironment): string {
  return roleNameFor({ namespace: c.metadata.namespace ?? "", name: c.metadata.name ?? "", uid: c.metadata.uid ?? "" });
}

// ---------------------------------------------------------------------------------------------
// AWS helpers (the test's own view of moto)

const isNoSuchEntity = (e: unknown) => e instanceof IAMServiceException && e.name === "NoSuchEntityException";

async function roleOf(name: string, c: IAMClient = iam): Promise<Role | undefined> {
  try {
    return (await c.send(new GetRoleCommand({ RoleName: name }))).Role;
  } catch (e) {
    if (isNoSuchEntity(e)) return undefined;
    throw e;
  }
}

async function profileOf(name: string, c: IAMClient = iam): Promise<InstanceProfile | undefined> {
  try {
    return (await c.send(new GetInstanceProfileCommand({ InstanceProfileName: name }))).InstanceProfile;
  } catch (e) {
    if (isNoSuchEntity(e)) return undefined;
    throw e;
  }
}

const tagsOf = (tags: Tag[] | undefined): Record<string, string> => Object.fromEntries((tags ?? []).map((t) => [t.Key ?? "", t.Value ?? ""]));

async function allRoleNames(): Promise<string[]> {
  const names: string[] = [];
  let marker: string | undefined;
  do {
    const page = await iam.send(new ListRolesCommand({ Marker: marker }));
    names.push(...(page.Roles ?? []).map((r) => r.RoleName ?? ""));
    marker = page.IsTruncated ? page.Marker : undefined;
  } while (marker);
  return names;
}

async function allProfileNames(): Promise<string[]> {
  const names: string[] = [];
  let marker: string | undefined;
  do {
    const page = await iam.send(new ListInstanceProfilesCommand({ Marker: marker }));
    names.push(...(page.InstanceProfiles ?? []).map((p) => p.InstanceProfileName ?? ""));
    marker = page.IsTruncated ? page.Marker : undefined;
  } while (marker);
  return names;
}

async function inlinePolicies(role: string): Promise<string[]> {
  return (await iam.send(new ListRolePoliciesCommand({ RoleName: role }))).PolicyNames ?? [];
}

async function newestAl2023(arch: "x86_64" | "arm64"): Promise<Image> {
  const out = await ec2.send(
    new DescribeImagesCommand({ Owners: ["amazon"], Filters: [{ Name: "name", Values: [`al2023-ami-2023.*-kernel-*-${arch}`] }] }),
  );
  const images = (out.Images ?? []).sort(
    (a, b) => (b.CreationDate ?? "").localeCompare(a.CreationDate ?? "") || (b.Name ?? "").localeCompare(a.Name ?? ""),
  );
  expect(images.length).toBeGreaterThan(0);
  return images[0]!;
}

let netSeq = 0;
/** A non-default VPC with two subnets and a security group, in the shared moto. */
async function customNetwork(): Promise<{ vpcId: string; subnetIds: string[]; sgId: string }> {
  const octet = 50 + netSeq++;
  const vpc = await ec2.send(new CreateVpcCommand({ CidrBlock: `10.${octet}.0.0/16` }));
  const vpcId = vpc.Vpc!.VpcId!;
  const s1 = await ec2.send(new CreateSubnetCommand({ VpcId: vpcId, CidrBlock: `10.${octet}.1.0/24`, AvailabilityZone: `${REGION}a` }));
  const s2 = await ec2.send(new CreateSubnetCommand({ VpcId: vpcId, CidrBlock: `10.${octet}.2.0/24`, AvailabilityZone: `${REGION}b` }));
  const sg = await ec2.send(new CreateSecurityGroupCommand({ GroupName: `vmforge-ce-op-${octet}`, Description: "test", VpcId: vpcId }));
  return { vpcId, subnetIds: [s1.Subnet!.SubnetId!, s2.Subnet!.SubnetId!], sgId: sg.GroupId! };
}

// ---------------------------------------------------------------------------------------------

beforeAll(async () => {
  await motoReset();
  iam = new IAMClient(awsTestConfig(REGION));
  ec2 = new EC2Client(awsTestConfig(REGION));
  const vpcs = await ec2.send(new DescribeVpcsCommand({ Filters: [{ Name: "is-default", Values: ["true"] }] }));
  defaultVpc = vpcs.Vpcs![0]!.VpcId!;
  const subnets = await ec2.send(new DescribeSubnetsCommand({ Filters: [{ Name: "vpc-id", Values: [defaultVpc] }] }));
  defaultSubnets = (subnets.Subnets ?? []).map((s) => s.SubnetId!);
  expect(defaultSubnets.length).toBeGreaterThan(1);

  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "aws-ce-op");
  await createSecret("aws", ns, { accessKeyId: "testing", secretAccessKey: "testing" });
  await startMain();
});

afterAll(async () => {
  await op?.stop();
  iam?.destroy();
  ec2?.destroy();
});

describe("AWS ComputeEnvironment through the operator (shared moto)", () => {
  it("goes Ready with defaults: default VPC, all its subnets, newest AL2023 x86_64 image, tagged role in its profile", async () => {
    const created = await createCe("defaults", { tags: { team: "genomics" } });
    const c = await ready("defaults");
    const roleName = roleNameOfCe(created);
    expect(roleName.startsWith(`${ROLE_PREFIX}${ns}-defaults-`)).toBe(true);

    const role = await roleOf(roleName);
    const profile = await profileOf(roleName);
    expect(role?.Arn).toBeDefined();
    expect(profile?.Arn).toBeDefined();
    const ami = await newestAl2023("x86_64");
    expect(c.status?.phase).toBe("Ready");
    expect(c.status?.aws).toMatchObject({
      roleArn: role?.Arn,
      instanceProfileArn: profile?.Arn,
      vpcId: defaultVpc,
      amiId: ami.ImageId,
      rootDeviceName: ami.RootDeviceName,
      architecture: "x86_64",
      instanceType: "m6i.large",
    });
    expect(c.status?.aws?.rootDeviceName).toMatch(/^\/dev\//);
    expect([...(c.status?.aws?.subnetIds ?? [])].sort()).toEqual([...defaultSubnets].sort());
    expect(c.status?.resources).toEqual(expect.arrayContaining([
      { kind: "IAMRole", id: role?.Arn, name: roleName },
      { kind: "InstanceProfile", id: profile?.Arn, name: roleName },
    ]));
    expect(c.status?.resources).toHaveLength(2);

    // Conditions: Ready, not Reconciling, not Stalled, credentials from the Secret.
    expect(condition(c, "Reconciling")?.status).toBe("False");
    expect(condition(c, "Stalled")?.status).toBe("False");
    expect(condition(c, "CredentialsValid")).toMatchObject({ status: "True", message: `using Secret ${ns}/aws` });
    expect(c.metadata.finalizers).toContain(FINALIZER);

    // In moto: ownership + user tags on the role and the profile; the profile holds the role.
    expect(tagsOf(role?.Tags)).toMatchObject({
      [TAG_CE_UID]: created.metadata.uid,
      [TAG_NAMESPACE]: ns,
      [TAG_NAME]: "defaults",
      [TAG_MANAGED_BY]: "vmforge",
      team: "genomics",
    });
    expect(tagsOf(profile?.Tags)).toMatchObject({ [TAG_CE_UID]: created.metadata.uid, team: "genomics" });
    expect((profile?.Roles ?? []).map((r) => r.RoleName)).toEqual([roleName]);
    expect(decodeURIComponent(role?.AssumeRolePolicyDocument ?? "")).toContain("ec2.amazonaws.com");
    expect(await inlinePolicies(roleName)).toEqual([INLINE_POLICY_NAME]);

    // The credentials Secret is protected while the CE uses it.
    const secret = await client.get<SecretObject>(SecretResource, ns, "aws");
    expect(secret?.metadata.finalizers).toContain(SECRET_IN_USE_FINALIZER);
    expect(secret?.metadata.labels?.[SECRET_LABEL]).toBe("true");
  });

  it("goes Ready with every advanced option: own VPC, subnet, security group, key pair, Graviton type + AMI, disk, buckets, tags", async () => {
    const net = await customNetwork();
    await ec2.send(new CreateKeyPairCommand({ KeyName: "ce-op-key" }));
    const arm = await newestAl2023("arm64");
    const created = await createCe("advanced", {
      graviton: true,
      instanceType: "c7g.xlarge",
      amiId: arm.ImageId!,
      keyPair: "ce-op-key",
      vpcId: net.vpcId,
      subnetIds: [net.subnetIds[1]!],
      securityGroupIds: [net.sgId],
      bootDiskSizeGiB: 120,
      allowBuckets: ["s3://extra-data", "s3://more-data"],
      tags: { team: "genomics", "cost-center": "42" },
    });
    const c = await ready("advanced");
    const roleName = roleNameOfCe(created);
    expect(c.status?.aws).toMatchObject({
      vpcId: net.vpcId,
      subnetIds: [net.subnetIds[1]],
      securityGroupIds: [net.sgId],
      amiId: arm.ImageId,
      rootDeviceName: arm.RootDeviceName,
      architecture: "arm64",
      instanceType: "c7g.xlarge",
      roleArn: (await roleOf(roleName))?.Arn,
    });
    // The buckets reach the role's inline policy; the tags reach the role and the profile.
    const doc = decodeURIComponent((await iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: INLINE_POLICY_NAME }))).PolicyDocument ?? "");
    for (const b of ["vmforge-ce-op-work", "extra-data", "more-data"]) {
      expect(doc).toContain(`arn:aws:s3:::${b}"`);
      expect(doc).toContain(`arn:aws:s3:::${b}/*`);
    }
    expect(tagsOf((await roleOf(roleName))?.Tags)).toMatchObject({ team: "genomics", "cost-center": "42", [TAG_CE_UID]: created.metadata.uid });
    expect(tagsOf((await profileOf(roleName))?.Tags)).toMatchObject({ team: "genomics", "cost-center": "42" });
    // The spec keeps the boot disk size (the launch uses it; the status has no field for it).
    expect(c.spec.aws?.bootDiskSizeGiB).toBe(120);
  });

  it("reports each invalid input on Stalled (InvalidSpec, field and value), creates nothing, and a fixed spec goes Ready", async () => {
    const net = await customNetwork();
    const created = await createCe("invalid", { instanceType: "zz9.huge" });
    const roleName = roleNameOfCe(created);
    const base = { region: REGION, workDir: WORK_DIR };
    const cases: [Partial<AwsEnvironment>, RegExp][] = [
      [{ instanceType: "zz9.huge" }, /^spec\.aws\.instanceType: zz9\.huge does not exist in eu-west-1$/],
      [{ graviton: true, instanceType: "m6i.large" }, /^spec\.aws\.instanceType: m6i\.large supports x86_64, not arm64 \(graviton is true/],
      [{ amiId: "ami-0123456789abcdef0" }, /^spec\.aws\.amiId: ami-0123456789abcdef0 not found in eu-west-1$/],
      [
        { vpcId: net.vpcId, subnetIds: [defaultSubnets[0]!] },
        new RegExp(`^spec\\.aws\\.subnetIds: ${defaultSubnets[0]} is in ${defaultVpc}, not in spec\\.aws\\.vpcId ${net.vpcId}$`),
      ],
      [{ securityGroupIds: [net.sgId] }, new RegExp(`^spec\\.aws\\.securityGroupIds: ${net.sgId} is in ${net.vpcId}, not in VPC ${defaultVpc}$`)],
      [{ keyPair: "no-such-key" }, /^spec\.aws\.keyPair: no-such-key not found in eu-west-1$/],
    ];
    let first = true;
    for (const [aws, message] of cases) {
      if (!first) await client.patch(ComputeEnvironmentResource, ns, "invalid", [{ op: "replace", path: "/spec/aws", value: { ...base, ...aws } }], "json");
      first = false;
      const s = await stalled("invalid");
      expect({ spec: aws, reason: s.reason }).toEqual({ spec: aws, reason: "InvalidSpec" });
      expect(s.message).toMatch(message);
      const c = await getCe("invalid");
      expect(c?.status?.phase).toBe("Failed");
      expect(condition(c, "Ready")).toMatchObject({ status: "False", reason: "InvalidSpec" });
      expect(await roleOf(roleName), JSON.stringify(aws)).toBeUndefined();
    }

    await client.patch(ComputeEnvironmentResource, ns, "invalid", [{ op: "replace", path: "/spec/aws", value: base }], "json");
    const c = await ready("invalid");
    expect(condition(c, "Stalled")).toMatchObject({ status: "False", observedGeneration: c.metadata.generation });
    expect(await roleOf(roleName)).toBeDefined();
  });

  it("a restart between creating the role and writing status adopts the role: one role, one profile", async () => {
    await op?.stop();
    op = undefined;
    // First operator: provisioning happens, then the process "dies" before the status is written.
    const real = new AwsProvider({ endpoint: motoEndpoint() });
    let provisioned = 0;
    const dying: CloudProvider = Object.assign(Object.create(real) as CloudProvider, {
      provisionEnvironment: async (ctx: EnvContext): Promise<EnvObservation> => {
        // The other CEs of the namespace are reconciled as usual.
        if (ctx.ce.metadata.name !== "restart") return real.provisionEnvironment(ctx);
        if (provisioned++ === 0) await real.provisionEnvironment(ctx);
        throw new Error("operator killed before writing status");
      },
    });
    const dead = await startOperator(kubeconfigPath(), new Map([["aws", dying]]), { namespaces: [ns], pollIntervalMs: 1_000 });
    let roleName = "";
    try {
      const created = await createCe("restart");
      roleName = roleNameOfCe(created);
      await waitFor("role created by the first operator", async () => provisioned > 0 && (await roleOf(roleName)) !== undefined);
    } finally {
      await dead.stop();
      // Whatever happened, the later tests get the normal operator back.
      if (!roleName || !(await roleOf(roleName))) await startMain();
    }
    const before = await getCe("restart");
    expect(before?.status?.aws).toBeUndefined();
    expect(before?.status?.resources).toBeUndefined();
    expect(condition(before, "Ready")?.status).not.toBe("True");
    const firstRole = await roleOf(roleName);
    expect(firstRole).toBeDefined();

    await startMain();
    const c = await ready("restart");
    const role = await roleOf(roleName);
    expect(role?.RoleId).toBe(firstRole?.RoleId);
    expect(c.status?.aws?.roleArn).toBe(role?.Arn);
    const prefix = roleName.slice(0, roleName.lastIndexOf("-") + 1);
    expect((await allRoleNames()).filter((n) => n.startsWith(prefix))).toEqual([roleName]);
    expect((await allProfileNames()).filter((n) => n.startsWith(prefix))).toEqual([roleName]);
    expect(((await profileOf(roleName))?.Roles ?? []).map((r) => r.RoleName)).toEqual([roleName]);
  });

  it("a foreign role with the CE's role name is never touched: Stalled ForeignRole, and deletion leaves it", async () => {
    // The CE first stalls on its key pair, so the foreign role can be put in place before the
    // operator ever gets to IAM for it.
    const created = await createCe("foreign", { keyPair: "missing-key" });
    expect((await stalled("foreign")).reason).toBe("InvalidSpec");
    const roleName = roleNameOfCe(created);
    const theirTags = [{ Key: "owner", Value: "someone-else" }];
    const theirPolicy = JSON.stringify({ Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "s3:ListAllMyBuckets", Resource: "*" }] });
    await iam.send(new CreateRoleCommand({ RoleName: roleName, AssumeRolePolicyDocument: JSON.stringify({ Version: "2012-10-17", Statement: [] }), Tags: theirTags }));
    await iam.send(new PutRolePolicyCommand({ RoleName: roleName, PolicyName: "theirs", PolicyDocument: theirPolicy }));
    const untouched = async (): Promise<void> => {
      const role = await roleOf(roleName);
      expect(role).toBeDefined();
      expect(tagsOf(role?.Tags)).toEqual({ owner: "someone-else" });
      expect(await inlinePolicies(roleName)).toEqual(["theirs"]);
      expect((await iam.send(new ListAttachedRolePoliciesCommand({ RoleName: roleName }))).AttachedPolicies).toEqual([]);
      expect(await profileOf(roleName)).toBeUndefined();
    };

    await client.patch(ComputeEnvironmentResource, ns, "foreign", { spec: { aws: { keyPair: null } } }, "merge");
    const s = await stalled("foreign");
    expect(s.reason).toBe("ForeignRole");
    expect(s.message).toContain(`IAM role ${roleName} already exists and has no ${TAG_CE_UID} tag`);
    const c = await getCe("foreign");
    expect(c?.status?.aws?.roleArn).toBeUndefined();
    expect(c?.status?.resources ?? []).toEqual([]);
    await untouched();

    await deleteCe("foreign");
    await untouched();
    await iam.send(new DeleteRolePolicyCommand({ RoleName: roleName, PolicyName: "theirs" }));
    await iam.send(new DeleteRoleCommand({ RoleName: roleName }));
  });

  it("deletion removes what the CE created and nothing else, also when pieces were deleted by hand first", async () => {
    // Bystanders: an unrelated role in its profile, and a TowerForge-* role of nobody.
    await iam.send(new CreateRoleCommand({ RoleName: "unrelated-app", AssumeRolePolicyDocument: "{}" }));
    await iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: "unrelated-app" }));
    await iam.send(new AddRoleToInstanceProfileCommand({ InstanceProfileName: "unrelated-app", RoleName: "unrelated-app" }));
    await iam.send(new CreateRoleCommand({ RoleName: `${ROLE_PREFIX}someone-else`, AssumeRolePolicyDocument: "{}" }));

    const names: Record<string, string> = {};
    for (const n of ["del-whole", "del-no-profile", "del-no-role"]) {
      names[n] = roleNameOfCe(await createCe(n));
    }
    for (const n of Object.keys(names)) await ready(n);

    // By hand: the inline policy, the profile membership and the profile are gone already.
    const noProfile = names["del-no-profile"]!;
    await iam.send(new DeleteRolePolicyCommand({ RoleName: noProfile, PolicyName: INLINE_POLICY_NAME }));
    await iam.send(new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: noProfile, RoleName: noProfile }));
    await iam.send(new DeleteInstanceProfileCommand({ InstanceProfileName: noProfile }));
    // By hand: the role is gone, its (now empty) profile is left over.
    const noRole = names["del-no-role"]!;
    await iam.send(new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: noRole, RoleName: noRole }));
    await iam.send(new DeleteRolePolicyCommand({ RoleName: noRole, PolicyName: INLINE_POLICY_NAME }));
    await iam.send(new DeleteRoleCommand({ RoleName: noRole }));
    expect(await profileOf(noRole)).toBeDefined();

    for (const n of Object.keys(names)) {
      await deleteCe(n);
      expect(await roleOf(names[n]!), n).toBeUndefined();
      expect(await profileOf(names[n]!), n).toBeUndefined();
    }
    expect((await profileOf("unrelated-app"))?.Roles?.map((r) => r.RoleName)).toEqual(["unrelated-app"]);
    expect(await roleOf("unrelated-app")).toBeDefined();
    expect(await roleOf(`${ROLE_PREFIX}someone-else`)).toBeDefined();
  });

  it("deletionPolicy Retain: the CE goes away, its role and profile stay", async () => {
    const created = await createCe("retain", {}, { deletionPolicy: "Retain" });
    await ready("retain");
    const roleName = roleNameOfCe(created);
    await deleteCe("retain");
    expect(await roleOf(roleName)).toBeDefined();
    expect(((await profileOf(roleName))?.Roles ?? []).map((r) => r.RoleName)).toEqual([roleName]);
    expect(await inlinePolicies(roleName)).toEqual([INLINE_POLICY_NAME]);
  });

  it("throttled CreateRole calls are retried by the controller, after AWS's hint, until the CE is Ready", async () => {
    const N = 3;
    throttle.prefix = `${ROLE_PREFIX}${ns}-throttled-`;
    throttle.budget = N;
    throttle.injected = 0;
    throttle.createRoleAttempts = 0;
    throttle.attemptTimes = [];
    provisionFailures.length = 0;
    try {
      const created = await createCe("throttled");
      const c = await ready("throttled");
      expect(throttle.injected).toBe(N);
      // Each injected error failed one reconcile (no SDK-internal retry absorbed it), and the
      // controller tried again: N throttled reconciles, then one CreateRole that went through.
      expect(provisionFailures.filter((f) => f.startsWith("throttled:"))).toEqual(Array.from({ length: N }, () => "throttled:Retryable:Throttled"));
      expect(throttle.createRoleAttempts).toBe(N + 1);
      // The controller honours the throttling hint (at least 2 s), not just its 5 ms base backoff.
      // (The first retry may come sooner: the first reconcile's own finalizer and Secret-protection
      // writes are real changes that enqueue the CE again.)
      const gaps = throttle.attemptTimes.slice(1).map((t, i) => t - (throttle.attemptTimes[i] ?? t));
      expect(gaps).toHaveLength(N);
      for (const gap of gaps.slice(1)) expect(gap, `gaps ${gaps.join(", ")} ms`).toBeGreaterThanOrEqual(1_900);
      const roleName = roleNameOfCe(created);
      expect(c.status?.aws?.roleArn).toBe((await roleOf(roleName))?.Arn);
      expect(condition(c, "Reconciling")?.status).toBe("False");
    } finally {
      throttle.prefix = "";
      throttle.budget = 0;
    }
  });
});

// ---------------------------------------------------------------------------------------------
// A private moto behind a private strict AWS layer that evaluates IAM as AWS does (resource ARNs,
// PassRole, tag-on-create; test/harness/README.md); the operator's users hold exactly the seed's
// policy, read from the product document (test/harness/seed-policy.ts).

describe("AWS ComputeEnvironment through the operator (IAM enforced as AWS does, the seed's exact policy)", () => {
  let moto: Moto;
  let auditor: IAMClient;
  let ns2: string;
  let op2: RunningOperator | undefined;
  type Keys = { accessKeyId: string; secretAccessKey: string };
  const users: Record<"first" | "second" | "exact" | "noTagProfile", Keys & { user: string }> = {} as never;
  let layer: StrictAws;

  async function makeUser(admin: IAMClient, name: string, policy: PolicyDocument): Promise<Keys & { user: string }> {
    await admin.send(new CreateUserCommand({ UserName: name }));
    const p = await admin.send(new CreatePolicyCommand({ PolicyName: `${name}-policy`, PolicyDocument: JSON.stringify(policy) }));
    await admin.send(new AttachUserPolicyCommand({ UserName: name, PolicyArn: p.Policy!.Arn! }));
    const k = (await admin.send(new CreateAccessKeyCommand({ UserName: name }))).AccessKey!;
    return { user: name, accessKeyId: k.AccessKeyId!, secretAccessKey: k.SecretAccessKey! };
  }

  beforeAll(async () => {
    const seed = awsSeedPath();
    if (!seed) throw new Error("seed 002 (the AWS Cloud document) not found; set VMFORGE_SEEDS_DIR to the folder of the product documents");
    moto = await startMoto();
    layer = await startStrictAws({ upstream: moto.endpoint });
    // Users are made through the layer, which learns their keys from the CreateAccessKey answers.
    const admin = new IAMClient({ region: REGION, endpoint: layer.endpoint, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });
    const [, bucket, prefix] = /^s3:\/\/([^/]+)\/(.+)$/.exec(WORK_DIR)!;
    const phases = ["create", "validate", "launch", "delete", "read"] as const;
    const operatorPolicy = seedPolicy(seed, { phases: [...phases], bucket: bucket!, workDirPrefix: prefix! }) as PolicyDocument;
    let auditorKeys: Keys;
    try {
      users.first = await makeUser(admin, "operator-first", operatorPolicy);
      users.second = await makeUser(admin, "operator-second", operatorPolicy);
      users.exact = await makeUser(admin, "operator-exact", operatorPolicy);
      users.noTagProfile = await makeUser(admin, "operator-no-tag-profile", seedPolicy(seed, { phases: [...phases], bucket: bucket!, workDirPrefix: prefix!, without: "iam:TagInstanceProfile" }) as PolicyDocument);
      auditorKeys = await makeUser(admin, "auditor", { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "*", Resource: "*" }] });
    } finally {
      admin.destroy();
    }
    // From here on every request's signature and the caller's policies are checked.
    await new StrictAwsControl(layer.endpoint).configure({ iam: { enforce: true, rootAccessKeys: [] } });
    auditor = new IAMClient({ region: REGION, endpoint: layer.endpoint, credentials: auditorKeys });

    ns2 = await freshNamespace(client, "aws-ce-op-auth");
    op2 = await startOperator(kubeconfigPath(), new Map([["aws", new AwsProvider({ endpoint: layer.endpoint })]]), { namespaces: [ns2], pollIntervalMs: 1_000 });
  });

  afterAll(async () => {
    await op2?.stop();
    auditor?.destroy();
    await layer?.stop();
    await moto?.stop();
  });

  it("rotated credentials: unknown keys stall with InvalidCredentials; new keys in the Secret are used without a restart", async () => {
    await createSecret("rotating", ns2, { accessKeyId: "AKIAUNKNOWNKEY000000", secretAccessKey: "not-a-real-secret-value" });
    const created = await createCe("rotate", {}, { namespace: ns2, secret: "rotating" });
    const roleName = roleNameOfCe(created);
    const s = await stalled("rotate", ns2);
    expect(s.reason).toBe("InvalidCredentials");
    expect(s.message).toMatch(/AWS rejected the credentials/);
    expect(s.message).toContain(`Secret ${ns2}/rotating`);
    const c0 = await getCe("rotate", ns2);
    expect(condition(c0, "CredentialsValid")?.status).toBe("False");
    expect(condition(c0, "CredentialsValid")?.message).toContain(`Secret ${ns2}/rotating`);
    expect(JSON.stringify(c0?.status)).not.toContain("not-a-real-secret-value");
    expect(await roleOf(roleName, auditor)).toBeUndefined();

    // Rotation: the operator watches the Secret it protects and reconciles the CE with the new keys.
    const rotate = (k: Keys) =>
      client.patch(SecretResource, ns2, "rotating", { data: { accessKeyId: b64(k.accessKeyId), secretAccessKey: b64(k.secretAccessKey) } }, "merge");
    await rotate(users.first);
    const c1 = await ready("rotate", ns2);
    expect(condition(c1, "Stalled")?.status).toBe("False");
    expect(c1.status?.aws?.roleArn).toBe((await roleOf(roleName, auditor))?.Arn);

    // Rotate again and revoke the first key: disposal on deletion works only with the new one.
    await rotate(users.second);
    await auditor.send(new DeleteAccessKeyCommand({ UserName: users.first.user, AccessKeyId: users.first.accessKeyId }));
    await deleteCe("rotate", ns2);
    expect(await roleOf(roleName, auditor)).toBeUndefined();
    expect(await profileOf(roleName, auditor)).toBeUndefined();
  });

  it("least privilege: with only the operator policy the CE goes Ready, and deleting it disposes role and profile", async () => {
    await createSecret("exact", ns2, { accessKeyId: users.exact.accessKeyId, secretAccessKey: users.exact.secretAccessKey });
    const created = await createCe("least", { tags: { team: "lp" } }, { namespace: ns2, secret: "exact" });
    const c = await ready("least", ns2);
    const roleName = roleNameOfCe(created);
    const role = await roleOf(roleName, auditor);
    expect(c.status?.aws?.roleArn).toBe(role?.Arn);
    expect(tagsOf(role?.Tags)).toMatchObject({ [TAG_CE_UID]: created.metadata.uid, team: "lp" });
    expect(((await profileOf(roleName, auditor))?.Roles ?? []).map((r) => r.RoleName)).toEqual([roleName]);

    await deleteCe("least", ns2);
    expect(await roleOf(roleName, auditor)).toBeUndefined();
    expect(await profileOf(roleName, auditor)).toBeUndefined();
  });

  it("least privilege: a policy missing one action of the seed stalls the CE with a condition naming it", async () => {
    await createSecret("no-tag-profile", ns2, { accessKeyId: users.noTagProfile.accessKeyId, secretAccessKey: users.noTagProfile.secretAccessKey });
    await createCe("missing", {}, { namespace: ns2, secret: "no-tag-profile" });
    const s = await stalled("missing", ns2);
    expect(s.reason).toBe("AccessDenied");
    expect(s.message).toContain("iam:TagInstanceProfile");
  });
});
