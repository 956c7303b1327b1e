// The instance role's inline policy grants read access to the Platform token named by
// spec.aws.platformTokenArn, and a change of that ARN re-puts the policy through the hash tag.
import { describe, expect, it } from "vitest";
import type { ComputeEnvironment } from "../../../../src/api/types.js";
import type { AwsClients } from "../../../../src/cloud/aws/clients.js";
import { desiredIam } from "../../../../src/cloud/aws/environment.js";
import { INLINE_POLICY_NAME, TAG_CE_UID, TAG_POLICY_HASH, ensureIam, instancePolicy } from "../../../../src/cloud/aws/iam.js";
import { platformTokenReadStatement } from "../../../../src/cloud/aws/launcher.js";
import { policyHash, type PolicyDocument } from "../../../../src/cloud/aws/policy.js";
import { createLogger } from "../../../../src/engine/logger.js";
import { sampleCe } from "../../../fixtures/launcher/harness.js";

const SSM = "arn:aws:ssm:eu-west-1:123456789012:parameter/seqera/token";
const SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:seqera/token-AbCdEf";
const logger = createLogger({ level: "silent" });

function withArn(arn: string | undefined): ComputeEnvironment {
  return sampleCe(arn === undefined ? {} : { aws: { platformTokenArn: arn } });
}

/** An IAM stand-in holding one role (already ours, as after an earlier provision) and its inline policy. */
function fakeIam(ce: ComputeEnvironment) {
  const roleName = desiredIam(ce, { region: "eu-west-1", buckets: ["vmforge-work"] }).roleName;
  const tags: Record<string, string> = { [TAG_CE_UID]: ce.metadata.uid! };
  const puts: PolicyDocument[] = [];
  const send = async (cmd: { constructor: { name: string }; input: Record<string, unknown> }): Promise<unknown> => {
    const name = cmd.constructor.name.replace(/Command$/, "");
    const input = cmd.input;
    switch (name) {
      case "GetRole":
        return {
          Role: { RoleName: roleName, Arn: `arn:aws:iam::123456789012:role/${roleName}`, Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })) },
        };
      case "TagRole":
        for (const t of input.Tags as { Key: string; Value: string }[]) tags[t.Key] = t.Value;
        return {};
      case "PutRolePolicy":
        expect(input.PolicyName).toBe(INLINE_POLICY_NAME);
        puts.push(JSON.parse(input.PolicyDocument as string) as PolicyDocument);
        return {};
      case "CreateInstanceProfile":
      case "AddRoleToInstanceProfile":
      case "TagInstanceProfile":
        return {};
      default:
        throw new Error(`unexpected IAM call ${name}`);
    }
  };
  return { clients: { iam: { send } } as unknown as AwsClients, tags, puts };
}

function tokenStatement(doc: PolicyDocument | undefined) {
  return doc?.Statement.find((s) => s.Sid === "PlatformToken");
}

describe("Platform token read access in the instance role", () => {
  it("the desired policy carries the read statement only when the CE names an ARN", () => {
    const v = { region: "eu-west-1", buckets: ["vmforge-work"] };
    const base = { partition: "aws", region: "eu-west-1", accountId: "123456789012", logGroup: "/vmforge/team-a/ce-a", buckets: ["vmforge-work"] };

    const ssm = desiredIam(withArn(SSM), v);
    expect(ssm.platformToken).toEqual({ Sid: "PlatformToken", Effect: "Allow", Action: ["ssm:GetParameter"], Resource: SSM });
    expect(tokenStatement(instancePolicy({ ...base, platformToken: ssm.platformToken! }))).toEqual(ssm.platformToken);

    const none = desiredIam(withArn(undefined), v);
    expect(none.platformToken).toBeUndefined();
    expect(JSON.stringify(instancePolicy(base))).not.toMatch(/ssm:|secretsmanager:/);

    // Each ARN gives another policy, hence another hash: the role is updated when the ARN changes.
    const hashes = [undefined, SSM, SECRET].map((arn) => {
      const d = desiredIam(withArn(arn), v);
      return policyHash(instancePolicy({ ...base, ...(d.platformToken ? { platformToken: d.platformToken } : {}) }));
    });
    expect(new Set(hashes).size).toBe(3);
  });

  it("a Secret token without opt-in still gets a role (no statement); only its launches fail", () => {
    const ce = sampleCe({ spec: { platformTokenSecretRef: { name: "tower" } } });
    expect(platformTokenReadStatement(ce)).toBeUndefined();
    expect(desiredIam(ce, { region: "eu-west-1", buckets: [] }).platformToken).toBeUndefined();
    const optedIn = sampleCe({ aws: { platformTokenInUserData: true }, spec: { platformTokenSecretRef: { name: "tower" } } });
    expect(platformTokenReadStatement(optedIn)).toBeUndefined();
  });

  it("grants both the given Secrets Manager ARN and its random-suffix form", () => {
    expect(platformTokenReadStatement(withArn(SECRET))).toEqual({
      Sid: "PlatformToken",
      Effect: "Allow",
      Action: ["secretsmanager:GetSecretValue"],
      Resource: [SECRET, `${SECRET}-??????`],
    });
  });

  it("ensureIam re-puts the inline policy when the ARN is added, changed or removed, and only then", async () => {
    const v = { region: "eu-west-1", buckets: ["vmforge-work"] };
    const first = withArn(undefined);
    const iam = fakeIam(first);

    await ensureIam(iam.clients, desiredIam(first, v), logger);
    expect(iam.puts).toHaveLength(1);
    expect(tokenStatement(iam.puts[0])).toBeUndefined();
    const hashWithout = iam.tags[TAG_POLICY_HASH];

    const ssm = { ...first, spec: { ...first.spec, aws: { ...first.spec.aws!, platformTokenArn: SSM } } };
    await ensureIam(iam.clients, desiredIam(ssm, v), logger);
    expect(iam.puts).toHaveLength(2);
    expect(tokenStatement(iam.puts[1])).toEqual({ Sid: "PlatformToken", Effect: "Allow", Action: ["ssm:GetParameter"], Resource: SSM });
    expect(iam.tags[TAG_POLICY_HASH]).not.toBe(hashWithout);

    await ensureIam(iam.clients, desiredIam(ssm, v), logger);
    expect(iam.puts).toHaveLength(2); // unchanged ARN: nothing written

    const secret = { ...ssm, spec: { ...ssm.spec, aws: { ...ssm.spec.aws, platformTokenArn: SECRET } } };
    await ensureIam(iam.clients, desiredIam(secret, v), logger);
    expect(iam.puts).toHaveLength(3);
    expect(tokenStatement(iam.puts[2])?.Action).toEqual(["secretsmanager:GetSecretValue"]);
    expect(JSON.stringify(iam.puts[2])).not.toContain("ssm:GetParameter");

    await ensureIam(iam.clients, desiredIam(first, v), logger);
    expect(iam.puts).toHaveLength(4);
    expect(tokenStatement(iam.puts[3])).toBeUndefined();
    expect(iam.tags[TAG_POLICY_HASH]).toBe(hashWithout);
  });
});
