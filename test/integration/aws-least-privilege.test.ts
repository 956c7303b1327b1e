// Least privilege, proven on a private moto server that enforces IAM policies: the operator's
// AWS identity holds exactly the actions of src/cloud/aws/policy.ts (seed 002) and the CE
// environment is provisioned, observed and disposed with it; calls outside it are denied.
//
// moto enforces policies once its INITIAL_NO_AUTH_ACTION_COUNT is used up. The setup below runs
// with the default (no enforcement), then POST /moto-api/reset-auth "0" sets that count to 0, so
// every later request is checked: SigV4 signature against the stored key, then the action
// against the caller's identity-based policies.
//
// What moto 5.2.5 checks and what not (read from its source and confirmed by the last test):
// - Action names: yes, for every service request (wildcards in Action are matched).
// - Resources: only for IAM requests that carry a RoleName of a role that EXISTS (then the role
//   ARN is matched) and for S3 bucket/key. Every other request is matched as resource "*". So the
//   seed's "arn:aws:iam::*:role/TowerForge-*" cannot be matched for CreateRole (role not there
//   yet), CreateInstanceProfile or DeleteInstanceProfile (no RoleName), or GetRole of a missing
//   role. The policy used here therefore has the seed's exact actions with the IAM resources
//   widened to "*" (renderOperatorPolicy({ iamResourceWildcard: true })); the seed's exact
//   document is still shown to scope existing roles by name.
// - Conditions: only in role trust policies (sts:ExternalId); not in identity policies.
// - sts:GetCallerIdentity is always allowed, even with no policy at all.
import { randomUUID } from "node:crypto";
import {
  AttachRolePolicyCommand,
  AttachUserPolicyCommand,
  CreateAccessKeyCommand,
  CreatePolicyCommand,
  CreateRoleCommand,
  CreateUserCommand,
  GetInstanceProfileCommand,
  GetRoleCommand,
  GetRolePolicyCommand,
  ListInstanceProfilesForRoleCommand,
  ListRoleTagsCommand,
  UntagRoleCommand,
  type IAMClient,
  type IAMServiceException,
} from "@aws-sdk/client-iam";
import { CreateLogGroupCommand } from "@aws-sdk/client-cloudwatch-logs";
import { CreateKeyPairCommand, DescribeVpcsCommand } from "@aws-sdk/client-ec2";
import { GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AwsEnvironment, ComputeEnvironment } from "../../src/api/types.js";
import { awsCall, awsClients, type AwsClients } from "../../src/cloud/aws/clients.js";
import { roleNameOf } from "../../src/cloud/aws/environment.js";
import { TAG_CE_UID } from "../../src/cloud/aws/iam.js";
import { renderOperatorPolicy, type PolicyDocument } from "../../src/cloud/aws/policy.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { CloudError, type EnvContext, type ResolvedCredentials } from "../../src/cloud/provider.js";
import { createLogger } from "../../src/engine/logger.js";
import { startMoto, type Moto } from "../harness/moto.js";

const REGION = "eu-west-1";
const ACCOUNT = "123456789012";
const logger = createLogger({ level: "silent" });

let moto: Moto;
type Keys = { accessKeyId: string; secretAccessKey: string };
const keys: Record<"full" | "required" | "exact" | "nobody" | "auditor" | "assumer", Keys> = {} as never;
const OPERATOR_ROLE = "vmforge-operator-role";
const EXTERNAL_ID = "vmforge-ext-7";
let auditor: AwsClients;
let defaultVpc: string;

function secret(k: Keys, extra: Record<string, string> = {}): ResolvedCredentials {
  return { source: "secret", secretName: "aws-creds", data: { ...k, ...extra } };
}

function ce(aws: Partial<AwsEnvironment> = {}): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { namespace: `lp-${randomUUID().slice(0, 6)}`, name: "ce", uid: randomUUID(), generation: 1 },
    spec: { provider: "aws", aws: { region: REGION, workDir: "s3://work-bucket/runs", ...aws } as AwsEnvironment },
  };
}

function ctx(c: ComputeEnvironment, credentials: ResolvedCredentials): EnvContext {
  return { ce: c, credentials, logger };
}

function provider(): AwsProvider {
  return new AwsProvider({ endpoint: moto.endpoint });
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

async function makeUser(iam: IAMClient, name: string, policy?: PolicyDocument): Promise<Keys> {
  await iam.send(new CreateUserCommand({ UserName: name }));
  if (policy) {
    const p = await iam.send(new CreatePolicyCommand({ PolicyName: `${name}-policy`, PolicyDocument: JSON.stringify(policy) }));
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

beforeAll(async () => {
  moto = await startMoto();
  const admin = awsClients({ credentials: secret({ accessKeyId: "testing", secretAccessKey: "testing" }), region: REGION, endpoint: moto.endpoint });
  try {
    const iam = admin.iam;
    const full = renderOperatorPolicy({ iamResourceWildcard: true });
    keys.full = await makeUser(iam, "vmforge-operator", full);
    keys.required = await makeUser(iam, "vmforge-operator-required", renderOperatorPolicy({ iamResourceWildcard: true, phases: ["create", "validate", "launch", "logs", "delete"] }));
    keys.exact = await makeUser(iam, "vmforge-operator-exact", renderOperatorPolicy());
    keys.nobody = await makeUser(iam, "nobody");
    keys.auditor = await makeUser(iam, "auditor", { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "*", Resource: "*" }] });
    keys.assumer = await makeUser(iam, "assumer", {
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: "sts:AssumeRole", Resource: `arn:aws:iam::${ACCOUNT}:role/${OPERATOR_ROLE}` }],
    });
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
    // Probes for the resource-matching test: two existing roles, one inside TowerForge-*, one outside.
    for (const name of ["TowerForge-probe", "Other-probe"]) {
      await iam.send(new CreateRoleCommand({ RoleName: name, AssumeRolePolicyDocument: "{}" }));
    }
    await admin.ec2.send(new CreateKeyPairCommand({ KeyName: "lp-key" }));
    const vpcs = await admin.ec2.send(new DescribeVpcsCommand({ Filters: [{ Name: "is-default", Values: ["true"] }] }));
    defaultVpc = vpcs.Vpcs![0]!.VpcId!;
  } finally {
    admin.destroy();
  }

  // From here on moto checks every request.
  const res = await fetch(new URL("/moto-api/reset-auth", moto.endpoint), { method: "POST", body: "0" });
  expect(res.status).toBe(200);
  auditor = awsClients({ credentials: secret(keys.auditor), region: REGION, endpoint: moto.endpoint });

  // Enforcement is on: the keys moto's own setup used no longer work, and a user without a policy is denied.
  const stale = awsClients({ credentials: secret({ accessKeyId: "testing", secretAccessKey: "testing" }), region: REGION, endpoint: moto.endpoint, maxAttempts: 1 });
  const nobody = awsClients({ credentials: secret(keys.nobody), region: REGION, endpoint: moto.endpoint, maxAttempts: 1 });
  try {
    await expect(awsCall("iam:GetRole", () => stale.iam.send(new GetRoleCommand({ RoleName: "TowerForge-probe" })))).rejects.toMatchObject({ reason: "InvalidCredentials" });
    await expect(awsCall("iam:GetRole", () => nobody.iam.send(new GetRoleCommand({ RoleName: "TowerForge-probe" })))).rejects.toMatchObject({ reason: "AccessDenied" });
  } finally {
    stale.destroy();
    nobody.destroy();
  }
});

afterAll(async () => {
  auditor?.destroy();
  await moto?.stop();
});

describe("least privilege (moto enforcing IAM policies)", () => {
  it("provision, observe and dispose succeed with exactly the operator's actions", async () => {
    const p = provider();
    const c = ce({ keyPair: "lp-key", tags: { team: "lp" } });
    const name = roleNameOf(c);
    const obs = await p.provisionEnvironment(ctx(c, secret(keys.full)));
    expect(obs.ready).toBe(true);
    expect(obs.status.aws).toMatchObject({ accountId: ACCOUNT, vpcId: defaultVpc, roleArn: `arn:aws:iam::${ACCOUNT}:role/${name}` });
    expect(await profileRoles(name)).toEqual([name]);
    const role = await auditor.iam.send(new GetRoleCommand({ RoleName: name }));
    expect(role.Role?.Tags).toEqual(expect.arrayContaining([{ Key: TAG_CE_UID, Value: c.metadata.uid }, { Key: "team", Value: "lp" }]));

    expect(await p.observeEnvironment(ctx(c, secret(keys.full)))).toEqual(obs);
    // Idempotent under enforcement too (EntityAlreadyExists is an answer, not a denial).
    expect(await p.provisionEnvironment(ctx(c, secret(keys.full)))).toEqual(obs);

    await p.disposeEnvironment(ctx(c, secret(keys.full)));
    expect(await roleExists(name)).toBe(false);
    expect(await profileRoles(name)).toBeUndefined();
  });

  it("calls the design does without are denied to the operator", async () => {
    const c = awsClients({ credentials: secret(keys.full), region: REGION, endpoint: moto.endpoint, maxAttempts: 1 });
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
      // moto lets GetCallerIdentity through for anyone; the operator never calls it (the account id
      // comes from the role ARN), so this documents moto, not a permission the operator needs.
      const nobody = awsClients({ credentials: secret(keys.nobody), region: REGION, endpoint: moto.endpoint, maxAttempts: 1 });
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

    const given = ce({ vpcId: defaultVpc });
    expect((await p.provisionEnvironment(ctx(given, secret(keys.required)))).status.aws?.subnetIds).toEqual(obs.status.aws?.subnetIds);
    const missing = await rejection(p.provisionEnvironment(ctx(ce({ vpcId: "vpc-0123456789abcdef0" }), secret(keys.required))));
    expect(missing.message).toBe("spec.aws.vpcId: vpc-0123456789abcdef0 not found in eu-west-1 (or it has no subnets)");

    // With the read phase the key pair is checked.
    const checked = await rejection(p.provisionEnvironment(ctx(ce({ keyPair: "no-such-key-but-unchecked" }), secret(keys.full))));
    expect(checked.message).toBe("spec.aws.keyPair: no-such-key-but-unchecked not found in eu-west-1");

    await p.disposeEnvironment(ctx(c, secret(keys.required)));
    await p.disposeEnvironment(ctx(given, secret(keys.required)));
    expect(await roleExists(roleNameOf(c))).toBe(false);
  });

  it("a Secret without permissions is AccessDenied naming the action; after rotation the same provider succeeds", async () => {
    const p = provider();
    const c = ce();
    const denied = await rejection(p.provisionEnvironment(ctx(c, secret(keys.nobody))));
    expect([denied.kind, denied.reason]).toEqual(["Terminal", "AccessDenied"]);
    expect(denied.message).toMatch(/^ec2:DescribeInstanceTypes: access denied; the operator's IAM policy must allow ec2:DescribeInstanceTypes/);
    expect(await roleExists(roleNameOf(c))).toBe(false);

    const obs = await p.provisionEnvironment(ctx(c, secret(keys.full)));
    expect(obs.ready).toBe(true);
    await p.disposeEnvironment(ctx(c, secret(keys.full)));
  });

  it("a wrong secret key or an unknown key id is InvalidCredentials", async () => {
    const p = provider();
    const wrong = await rejection(p.provisionEnvironment(ctx(ce(), secret({ accessKeyId: keys.full.accessKeyId, secretAccessKey: "not-the-secret" }))));
    expect([wrong.kind, wrong.reason]).toEqual(["Terminal", "InvalidCredentials"]);
    expect(wrong.message).not.toContain(keys.full.secretAccessKey);
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
    // The assumer's own keys can do nothing but assume.
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
    process.env.AWS_ACCESS_KEY_ID = keys.full.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = keys.full.secretAccessKey;
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

  it("moto matches the seed's TowerForge-* resources only for existing roles (why the IAM resources are widened above)", async () => {
    const c = awsClients({ credentials: secret(keys.exact), region: REGION, endpoint: moto.endpoint, maxAttempts: 1 });
    try {
      // The exact seed document scopes existing roles by name ...
      await expect(awsCall("iam:GetRole", () => c.iam.send(new GetRoleCommand({ RoleName: "TowerForge-probe" })))).resolves.toBeDefined();
      await expect(awsCall("iam:GetRole", () => c.iam.send(new GetRoleCommand({ RoleName: "Other-probe" })))).rejects.toMatchObject({ reason: "AccessDenied" });
      // ... but moto evaluates a role that does not exist yet as resource "*", which the seed's ARN
      // pattern does not match, so even a TowerForge-* CreateRole is denied here (AWS allows it).
      await expect(
        awsCall("iam:CreateRole", () => c.iam.send(new CreateRoleCommand({ RoleName: "TowerForge-new", AssumeRolePolicyDocument: "{}" }))),
      ).rejects.toMatchObject({ reason: "AccessDenied" });
      // Non-IAM statements of the exact document work unchanged.
      const p = provider();
      const byo = ce({ instanceProfileArn: `arn:aws:iam::${ACCOUNT}:instance-profile/byo` });
      expect((await p.provisionEnvironment(ctx(byo, secret(keys.exact)))).ready).toBe(true);
    } finally {
      c.destroy();
    }
  });
});
