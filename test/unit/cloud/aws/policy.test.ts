import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  POLICY_PHASES,
  normalizePolicy,
  operatorActions,
  operatorPolicyByPhase,
  parseS3Url,
  policyHash,
  renderOperatorPolicy,
  optionalAdditionalActions,
} from "../../../../src/cloud/aws/policy.js";
import { policyCommand } from "../../../../src/cli/policy.js";

const AWS_SRC = join(import.meta.dirname, "../../../../src/cloud/aws");

describe("operator policy (seed 002)", () => {
  it("has the seed's phases, statements and actions", () => {
    const p = operatorPolicyByPhase();
    expect(Object.keys(p)).toEqual([...POLICY_PHASES]);
    expect(p.create.statements.map((s) => s.Sid)).toEqual(["AwsCloudCreate", "AwsCloudCreatePassRole"]);
    expect(p.create.statements[0]!.Action).toEqual([
      "iam:CreateRole", "iam:AddRoleToInstanceProfile", "iam:CreateInstanceProfile", "iam:AttachRolePolicy",
      "iam:PutRolePolicy", "iam:TagRole", "iam:TagInstanceProfile",
    ]);
    expect(p.create.statements[0]!.Resource).toEqual(["arn:aws:iam::*:role/TowerForge-*", "arn:aws:iam::*:instance-profile/TowerForge-*"]);
    expect(p.validate.statements[0]!.Action).toEqual(["ec2:DescribeInstanceTypes", "ec2:DescribeImages", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"]);
    expect(p.launch.statements[0]!.Action).toEqual(["ec2:CreateTags", "ec2:DeleteTags", "ec2:DescribeInstances", "ec2:RunInstances", "ec2:TerminateInstances"]);
    expect(p.logs.statements.map((s) => s.Action)).toEqual([["logs:GetLogEvents"], ["s3:GetObject"]]);
    expect(p.delete.statements[0]!.Action).toHaveLength(8);
    expect(p.read.required).toBe(false);
    expect(POLICY_PHASES.filter((x) => !p[x].required)).toEqual(["read"]);
  });

  it("grants none of the calls the design must do without", () => {
    const all = operatorActions();
    for (const a of ["iam:GetInstanceProfile", "iam:ListInstanceProfilesForRole", "iam:ListRoleTags", "iam:GetRolePolicy", "sts:GetCallerIdentity", "iam:UntagRole", "logs:CreateLogGroup"]) {
      expect(all.has(a), a).toBe(false);
    }
    // 7+1+4+5+1+1+8+7 = 34 listed; DescribeInstanceTypes/Images/Subnets/SecurityGroups are in validate and read
    expect(all.size).toBe(30);
  });

  it("renders one document; work dir scopes s3:GetObject; wildcard mode only touches IAM statements", () => {
    const doc = renderOperatorPolicy();
    expect(doc.Version).toBe("2012-10-17");
    expect(doc.Statement.map((s) => s.Sid)).toEqual([
      "AwsCloudCreate", "AwsCloudCreatePassRole", "AwsCloudValidate", "AwsCloudLaunchEC2", "AwsCloudLaunchLogs", "AwsCloudLaunchS3", "AwsCloudDelete", "AwsCloudRead",
    ]);
    expect(doc.Statement.find((s) => s.Sid === "AwsCloudLaunchS3")!.Resource).toBe("*");
    const scoped = renderOperatorPolicy({ workDir: "s3://my-bucket/runs/" });
    expect(scoped.Statement.find((s) => s.Sid === "AwsCloudLaunchS3")!.Resource).toBe("arn:aws:s3:::my-bucket/runs/*");
    expect(renderOperatorPolicy({ workDir: "s3://my-bucket" }).Statement.find((s) => s.Sid === "AwsCloudLaunchS3")!.Resource).toBe("arn:aws:s3:::my-bucket/*");
    expect(() => renderOperatorPolicy({ workDir: "gs://x" })).toThrow(/not s3:/);
    const wild = renderOperatorPolicy({ iamResourceWildcard: true });
    expect(wild.Statement.find((s) => s.Sid === "AwsCloudDelete")!.Resource).toBe("*");
    expect(wild.Statement.find((s) => s.Sid === "AwsCloudLaunchLogs")!.Resource).toBe("arn:aws:logs:*:*:log-group:*:log-stream:*");
    const some = renderOperatorPolicy({ phases: ["validate", "create"] });
    expect(some.Statement.map((s) => s.Sid)).toEqual(["AwsCloudCreate", "AwsCloudCreatePassRole", "AwsCloudValidate"]);
  });

  it("the log group clean-up is an explicit addition: never in the default document, added by --with-additions", () => {
    expect(operatorActions().has("logs:DeleteLogGroup")).toBe(false);
    expect(renderOperatorPolicy().Statement.some((s) => s.Sid === "VmforgeLogGroupCleanup")).toBe(false);
    const withIt = renderOperatorPolicy({ withAdditions: true }).Statement.find((s) => s.Sid === "VmforgeLogGroupCleanup");
    expect(withIt).toEqual({ Sid: "VmforgeLogGroupCleanup", Effect: "Allow", Action: ["logs:DeleteLogGroup"], Resource: "arn:aws:logs:*:*:log-group:/vmforge/*" });
    const out: string[] = [];
    const err: string[] = [];
    expect(policyCommand(["aws", "--document", "--with-additions"], { out: (t) => out.push(t), err: (t) => err.push(t) })).toBe(0);
    expect(out.join("")).toContain("logs:DeleteLogGroup");
    expect(err.join("")).toContain("addition beyond the documented policy");
  });

  it("parses s3 URLs", () => {
    expect(parseS3Url("s3://bucket-1/a/b/")).toEqual({ bucket: "bucket-1", prefix: "a/b" });
    expect(parseS3Url("s3://bucket-1")).toEqual({ bucket: "bucket-1", prefix: "" });
    expect(parseS3Url("s3://Bucket")).toBeUndefined();
    expect(parseS3Url("s3://a")).toBeUndefined();
    expect(parseS3Url("https://bucket/x")).toBeUndefined();
    expect(parseS3Url("s3://a..b")).toBeUndefined();
  });

  it("every AWS call in src/cloud/aws names an action the operator policy grants", () => {
    // The seed's actions, plus the optional addition the operator does without when denied (log group clean-up).
    const granted = new Set([...operatorActions(), ...optionalAdditionalActions()]);
    const seen = new Set<string>();
    const CALL = /(?:awsCall\(|mapAwsError\([^")]{0,40},)\s*"([a-z0-9]+:[A-Za-z0-9]+)"/g;
    expect([...'throw mapAwsError(e, "ec2:TerminateInstances"); awsCall("iam:GetRole", f)'.matchAll(CALL)].map((m) => m[1])).toEqual(["ec2:TerminateInstances", "iam:GetRole"]);
    for (const f of readdirSync(AWS_SRC).filter((n) => n.endsWith(".ts"))) {
      const text = readFileSync(join(AWS_SRC, f), "utf8");
      // awsCall("svc:Action", ...) and mapAwsError(e, "svc:Action") name the action of each SDK call.
      for (const m of text.matchAll(CALL)) {
        seen.add(m[1]!);
        expect(granted.has(m[1]!), `${f}: ${m[1]} is not in the operator policy`).toBe(true);
      }
    }
    // The environment half uses these (and only granted ones, checked above).
    for (const a of ["iam:GetRole", "iam:CreateRole", "iam:PutRolePolicy", "iam:TagRole", "iam:CreateInstanceProfile", "iam:AddRoleToInstanceProfile", "ec2:DescribeImages"]) {
      expect(seen.has(a), a).toBe(true);
    }
  });

  it("every SDK command in the environment files goes through awsCall with its own action name", () => {
    for (const f of ["iam.ts", "validate.ts", "environment.ts"]) {
      const text = readFileSync(join(AWS_SRC, f), "utf8");
      const actions = new Set([...text.matchAll(/awsCall\(\s*"[a-z0-9]+:([A-Za-z0-9]+)"/g)].map((m) => m[1]));
      for (const m of text.matchAll(/new ([A-Za-z0-9]+)Command\(/g)) expect(actions.has(m[1]), `${f}: ${m[1]}`).toBe(true);
    }
  });
});

describe("policy normalisation", () => {
  const a = {
    Version: "2012-10-17",
    Statement: [
      { Sid: "B", Effect: "Allow", Action: ["s3:PutObject", "s3:GetObject"], Resource: ["arn:aws:s3:::b/*", "arn:aws:s3:::a/*"] },
      { Effect: "Allow", Sid: "A", Action: "ecr:BatchGetImage", Resource: "*" },
    ],
  };
  const b = {
    Statement: [
      { Resource: ["*"], Action: ["ecr:BatchGetImage"], Effect: "Allow", Sid: "A" },
      { Effect: "Allow", Resource: ["arn:aws:s3:::a/*", "arn:aws:s3:::b/*", "arn:aws:s3:::a/*"], Action: ["s3:GetObject", "s3:PutObject"], Sid: "B" },
    ],
    Version: "2012-10-17",
  };
  it("is equal for documents that mean the same", () => {
    expect(normalizePolicy(a)).toBe(normalizePolicy(b));
    expect(policyHash(a)).toBe(policyHash(b));
    expect(policyHash(a)).toMatch(/^[0-9a-f]{64}$/);
  });
  it("differs when an action or resource changes", () => {
    const c = structuredClone(b);
    c.Statement[1]!.Resource.push("arn:aws:s3:::c/*");
    expect(policyHash(c)).not.toBe(policyHash(a));
    const d = structuredClone(b);
    d.Statement[0]!.Action = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"];
    expect(policyHash(d)).not.toBe(policyHash(a));
  });
});

describe("vmforge policy aws", () => {
  function run(args: string[]): { code: number; out: string; err: string } {
    let out = "";
    let err = "";
    const code = policyCommand(args, { out: (t) => (out += t), err: (t) => (err += t) });
    return { code, out, err };
  }
  it("prints the phases and the combined document as JSON", () => {
    const r = run(["aws"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as { phases: Record<string, { required: boolean; statements: unknown[] }>; document: { Statement: unknown[] } };
    expect(Object.keys(j.phases)).toEqual([...POLICY_PHASES]);
    expect(j.phases.read!.required).toBe(false);
    expect(j.phases.create!.statements).toHaveLength(2);
    expect(j.document.Statement).toHaveLength(8);
  });
  it("--document --required --work-dir gives a ready-to-use document", () => {
    const r = run(["aws", "--document", "--required", "--work-dir", "s3://wd-bucket/x"]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as { Version: string; Statement: { Sid: string; Resource: unknown }[] };
    expect(doc.Version).toBe("2012-10-17");
    expect(doc.Statement.map((s) => s.Sid)).not.toContain("AwsCloudRead");
    expect(doc.Statement.find((s) => s.Sid === "AwsCloudLaunchS3")!.Resource).toBe("arn:aws:s3:::wd-bucket/x/*");
  });
  it("--phase selects phases; bad input exits 2 with usage", () => {
    const r = run(["aws", "--phase=create,delete"]);
    expect(Object.keys((JSON.parse(r.out) as { phases: object }).phases)).toEqual(["create", "delete"]);
    expect(run(["aws", "--phase", "nope"]).code).toBe(2);
    expect(run(["gcp"]).code).toBe(2);
    expect(run([]).err).toMatch(/usage: vmforge policy aws/);
    expect(run(["aws", "--bogus"]).code).toBe(2);
    expect(run(["aws", "--work-dir", "gs://x"]).code).toBe(2);
  });
});
