import { describe, expect, it } from "vitest";
import {
  checkUserTags,
  instancePolicy,
  ownershipTags,
  parseIamArn,
  roleNameFor,
  trustPolicy,
} from "../../../../src/cloud/aws/iam.js";
import { validateStatic } from "../../../../src/cloud/aws/validate.js";
import { logGroupFor } from "../../../../src/cloud/aws/environment.js";
import type { AwsEnvironment } from "../../../../src/api/types.js";

const IAM_NAME = /^[A-Za-z0-9+=,.@_-]{1,64}$/;

describe("role names", () => {
  it("are deterministic, valid, at most 64 characters and start with TowerForge-", () => {
    const id = { namespace: "team-a", name: "default", uid: "6f1c2d3e-0000-4000-8000-000000000001" };
    const n = roleNameFor(id);
    expect(n).toBe(roleNameFor({ ...id }));
    expect(n).toMatch(/^TowerForge-team-a-default-[0-9a-f]{8}$/);
    expect(n).toMatch(IAM_NAME);
  });

  it("differ for another UID even when namespace and name are equal", () => {
    const a = roleNameFor({ namespace: "ns", name: "ce", uid: "uid-1" });
    const b = roleNameFor({ namespace: "ns", name: "ce", uid: "uid-2" });
    expect(a).not.toBe(b);
  });

  it("truncate long names and clean odd characters", () => {
    const long = roleNameFor({ namespace: "a".repeat(63), name: "b.c".repeat(80), uid: "u" });
    expect(long.length).toBeLessThanOrEqual(64);
    expect(long).toMatch(IAM_NAME);
    expect(long).not.toMatch(/--/);
    const dotted = roleNameFor({ namespace: "x", name: "my.ce..v2", uid: "u" });
    expect(dotted).toMatch(/^TowerForge-x-my-ce-v2-[0-9a-f]{8}$/);
    // A slug that would end with '-' after truncation loses it.
    const edge = roleNameFor({ namespace: "n".repeat(43), name: "zz", uid: "u" });
    expect(edge).toMatch(/^TowerForge-n{43}-[0-9a-f]{8}$/);
  });
});

describe("IAM ARNs", () => {
  it("parse roles and instance profiles with paths; reject others", () => {
    expect(parseIamArn("arn:aws:iam::123456789012:role/TowerForge-x")).toEqual({ partition: "aws", accountId: "123456789012", type: "role", name: "TowerForge-x" });
    expect(parseIamArn("arn:aws-cn:iam::123456789012:instance-profile/a/b/prof")).toEqual({ partition: "aws-cn", accountId: "123456789012", type: "instance-profile", name: "prof" });
    expect(parseIamArn("arn:aws:iam::12345:role/x")).toBeUndefined();
    expect(parseIamArn("arn:aws:s3:::bucket")).toBeUndefined();
    expect(parseIamArn("TowerForge-x")).toBeUndefined();
  });
});

describe("policies and tags", () => {
  it("trust EC2 only", () => {
    const t = trustPolicy();
    expect(t.Statement).toHaveLength(1);
    expect(t.Statement[0]).toMatchObject({ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" });
  });

  it("give the VM logs on its group, S3 on its buckets, ECR pull", () => {
    const p = instancePolicy({ partition: "aws", region: "eu-west-1", accountId: "123456789012", logGroup: "/vmforge/ns/ce", buckets: ["wd", "extra", "wd"] });
    const logs = p.Statement.find((s) => s.Sid === "CloudWatchAgentLogs")!;
    expect(logs.Action).toEqual(expect.arrayContaining(["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]));
    expect(logs.Resource).toEqual(["arn:aws:logs:eu-west-1:123456789012:log-group:/vmforge/ns/ce", "arn:aws:logs:eu-west-1:123456789012:log-group:/vmforge/ns/ce:*"]);
    expect(p.Statement.find((s) => s.Sid === "S3Buckets")!.Resource).toEqual(["arn:aws:s3:::wd", "arn:aws:s3:::extra"]);
    expect(p.Statement.find((s) => s.Sid === "S3Objects")!.Resource).toEqual(["arn:aws:s3:::wd/*", "arn:aws:s3:::extra/*"]);
    expect(p.Statement.find((s) => s.Sid === "EcrPull")!.Action).toEqual(
      expect.arrayContaining(["ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]),
    );
    expect(JSON.stringify(p)).not.toContain("ssm:");
  });

  it("ownership tags win over user tags; reserved or invalid user tags are reported with the key", () => {
    const t = ownershipTags({ namespace: "ns", name: "ce", uid: "u1" }, { team: "x" });
    expect(t).toEqual({ team: "x", "vmforge.dev/ce-uid": "u1", "vmforge.dev/namespace": "ns", "vmforge.dev/name": "ce", "vmforge.dev/managed-by": "vmforge" });
    expect(checkUserTags({ team: "a b", "cost:center": "1/2" })).toBeUndefined();
    expect(checkUserTags({ "vmforge.dev/ce-uid": "x" })).toMatch(/^spec.aws.tags: key "vmforge.dev\/ce-uid" uses a reserved prefix/);
    expect(checkUserTags({ "aws:foo": "x" })).toMatch(/reserved/);
    expect(checkUserTags({ "bad*key": "x" })).toMatch(/^spec.aws.tags: key "bad\*key" is not a valid tag key/);
    expect(checkUserTags({ k: "v".repeat(257) })).toMatch(/^spec.aws.tags\["k"\]: value/);
    expect(checkUserTags(Object.fromEntries(Array.from({ length: 45 }, (_, i) => [`k${i}`, "v"])))).toMatch(/at most 44/);
  });
});

describe("static spec checks", () => {
  const base: AwsEnvironment = { region: "eu-west-1", workDir: "s3://work-bucket/runs" } as AwsEnvironment;
  it("resolve buckets and the boot disk default", () => {
    const s = validateStatic({ ...base, allowBuckets: ["s3://extra", "s3://work-bucket"] });
    expect(s.buckets).toEqual(["work-bucket", "extra"]);
    expect(s.workDir).toEqual({ bucket: "work-bucket", prefix: "runs" });
    expect(s.bootDiskSizeGiB).toBe(50);
  });
  it("name the field and value of each problem", () => {
    expect(() => validateStatic(undefined)).toThrow(/^spec.aws: required/);
    expect(() => validateStatic({ ...base, region: "mars-1" as AwsEnvironment["region"] })).toThrow(/^spec.aws.region: mars-1 is not a supported region/);
    expect(() => validateStatic({ ...base, workDir: "az://c" })).toThrow(/^spec.aws.workDir: "az:\/\/c" is not s3:\/\/bucket/);
    expect(() => validateStatic({ ...base, allowBuckets: ["s3://ok-bucket", "s3://X"] })).toThrow(/^spec.aws.allowBuckets\[1\]: "s3:\/\/X"/);
    expect(() => validateStatic({ ...base, bootDiskSizeGiB: 4 })).toThrow(/^spec.aws.bootDiskSizeGiB: 4 is outside 8..16384/);
    expect(() => validateStatic({ ...base, instanceProfileArn: "arn:aws:iam::123456789012:role/x" })).toThrow(/^spec.aws.instanceProfileArn: .* is not an instance profile ARN/);
    expect(() => validateStatic({ ...base, tags: { "aws:x": "1" } })).toThrow(/^spec.aws.tags: key "aws:x"/);
    try {
      validateStatic({ ...base, workDir: "nope" });
    } catch (e) {
      expect(e).toMatchObject({ kind: "Terminal", reason: "InvalidSpec" });
    }
  });
  it("accept a bring-your-own instance profile ARN", () => {
    expect(validateStatic({ ...base, instanceProfileArn: "arn:aws:iam::123456789012:instance-profile/mine" }).instanceProfileArn).toBe("arn:aws:iam::123456789012:instance-profile/mine");
  });
  it("log group is /vmforge/<namespace>/<name>", () => {
    expect(logGroupFor({ metadata: { namespace: "ns", name: "ce" } })).toBe("/vmforge/ns/ce");
  });
});
