/**
 * The IAM policy the operator's own identity needs, as data, split by phase exactly as the product
 * document (seed 002, "Required Platform IAM permissions") lists it; plus JSON normalisation and
 * hashing used to compare policy documents.
 *
 * Every AWS call the operator makes must be allowed by these statements; a unit test checks the
 * action names in src/cloud/aws against `operatorActions()`.
 */
import { createHash } from "node:crypto";

export type PolicyPhase = "create" | "validate" | "launch" | "logs" | "delete" | "read";
export const POLICY_PHASES: readonly PolicyPhase[] = ["create", "validate", "launch", "logs", "delete", "read"];

export interface PolicyStatement {
  Sid?: string;
  Effect: "Allow" | "Deny";
  Action: string | string[];
  Resource: string | string[];
  Condition?: Record<string, unknown>;
  Principal?: unknown;
}

export interface PolicyDocument {
  Version: "2012-10-17";
  Statement: PolicyStatement[];
}

export interface PhasePolicy {
  /** Optional phases only make the operator friendlier (it works without them). */
  required: boolean;
  /** What the operator uses these permissions for. */
  purpose: string;
  statements: PolicyStatement[];
}

const TOWERFORGE_IAM_RESOURCES = ["arn:aws:iam::*:role/TowerForge-*", "arn:aws:iam::*:instance-profile/TowerForge-*"];

/** Placeholder of the seed for the work directory's objects; replaced by `renderOperatorPolicy({ workDir })`. */
export const WORKDIR_OBJECTS_PLACEHOLDER = "arn:aws:s3:::<BUCKET_NAME>/WORKDIR/*";

function phases(): Record<PolicyPhase, PhasePolicy> {
  return {
    create: {
      required: true,
      purpose:
        "Compute environment creation: the TowerForge-* IAM role and instance profile the VM runs as (created with tags), its inline policy, and passing the role to EC2.",
      statements: [
        {
          Sid: "AwsCloudCreate",
          Effect: "Allow",
          Action: [
            "iam:CreateRole",
            "iam:AddRoleToInstanceProfile",
            "iam:CreateInstanceProfile",
            "iam:AttachRolePolicy",
            "iam:PutRolePolicy",
            "iam:TagRole",
            "iam:TagInstanceProfile",
          ],
          Resource: [...TOWERFORGE_IAM_RESOURCES],
        },
        { Sid: "AwsCloudCreatePassRole", Effect: "Allow", Action: ["iam:PassRole"], Resource: "arn:aws:iam::*:role/TowerForge-*" },
      ],
    },
    validate: {
      required: true,
      purpose: "Compute environment validation: instance type, AMI, subnets and security groups exist and fit together.",
      statements: [
        {
          Sid: "AwsCloudValidate",
          Effect: "Allow",
          Action: ["ec2:DescribeInstanceTypes", "ec2:DescribeImages", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"],
          Resource: "*",
        },
      ],
    },
    launch: {
      required: true,
      purpose: "Pipeline runs: launch, tag, follow and terminate one EC2 instance per Run.",
      statements: [
        {
          Sid: "AwsCloudLaunchEC2",
          Effect: "Allow",
          Action: ["ec2:CreateTags", "ec2:DeleteTags", "ec2:DescribeInstances", "ec2:RunInstances", "ec2:TerminateInstances"],
          Resource: "*",
        },
      ],
    },
    logs: {
      required: true,
      purpose: "Run logs: live lines from CloudWatch Logs and the uploaded log and exit status from the work directory in S3.",
      statements: [
        { Sid: "AwsCloudLaunchLogs", Effect: "Allow", Action: ["logs:GetLogEvents"], Resource: "arn:aws:logs:*:*:log-group:*:log-stream:*" },
        { Sid: "AwsCloudLaunchS3", Effect: "Allow", Action: ["s3:GetObject"], Resource: WORKDIR_OBJECTS_PLACEHOLDER },
      ],
    },
    delete: {
      required: true,
      purpose:
        "Compute environment disposal, and the ownership check before any IAM write (iam:GetRole returns the role's tags).",
      statements: [
        {
          Sid: "AwsCloudDelete",
          Effect: "Allow",
          Action: [
            "iam:GetRole",
            "iam:ListAttachedRolePolicies",
            "iam:ListRolePolicies",
            "iam:DeleteRole",
            "iam:DeleteInstanceProfile",
            "iam:RemoveRoleFromInstanceProfile",
            "iam:DetachRolePolicy",
            "iam:DeleteRolePolicy",
          ],
          Resource: [...TOWERFORGE_IAM_RESOURCES],
        },
      ],
    },
    read: {
      required: false,
      purpose:
        "Optional: the default VPC and the given VPC are looked up directly (without it they are derived from subnets) and the key pair is checked (without it, skipped with a note).",
      statements: [
        {
          Sid: "AwsCloudRead",
          Effect: "Allow",
          Action: [
            "ec2:DescribeInstanceTypes",
            "ec2:DescribeKeyPairs",
            "ec2:DescribeVpcs",
            "ec2:DescribeImages",
            "ec2:DescribeSubnets",
            "ec2:DescribeSecurityGroups",
            "s3:ListAllMyBuckets",
          ],
          Resource: "*",
        },
      ],
    },
  };
}

/**
 * Beyond the seed, optional: deleting the CE's CloudWatch Logs group (/vmforge/<namespace>/<name>)
 * when the environment is disposed of. The seed grants the operator logs:GetLogEvents only, so
 * with the seed's policy the group is left behind at disposal (its events still expire by the
 * retention the instances' agent set) and the operator says so in its log. Never part of the
 * policy printed by default: `vmforge policy aws --with-additions` adds it, named as an addition.
 */
export const LOG_GROUP_CLEANUP_STATEMENT: PolicyStatement = {
  Sid: "VmforgeLogGroupCleanup",
  Effect: "Allow",
  Action: ["logs:DeleteLogGroup"],
  Resource: "arn:aws:logs:*:*:log-group:/vmforge/*",
};

/** Actions outside the seed the operator uses when granted and does without otherwise. */
export function optionalAdditionalActions(): Set<string> {
  return new Set([LOG_GROUP_CLEANUP_STATEMENT.Action].flat());
}

/** The operator's policy per phase (fresh copies; callers may change them). */
export function operatorPolicyByPhase(): Record<PolicyPhase, PhasePolicy> {
  return phases();
}

/** Parses "s3://bucket[/path]" into its bucket and path (no leading or trailing slash). */
export function parseS3Url(url: string): { bucket: string; prefix: string } | undefined {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url.trim());
  if (!m || m[1] === undefined) return undefined;
  const bucket = m[1];
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) || bucket.includes("..")) return undefined;
  const prefix = (m[2] ?? "").replace(/^\/+|\/+$/g, "");
  return { bucket, prefix };
}

export interface RenderOptions {
  /** Phases to include; default all (including the optional read phase). */
  phases?: readonly PolicyPhase[];
  /** Scope s3:GetObject to this work directory (s3://bucket[/path]); default "*" as in the seed's full policy. */
  workDir?: string;
  /**
   * Replace the TowerForge-* IAM resource ARNs with "*". Only for emulators that cannot match
   * resource ARNs of entities that do not exist yet (moto); never for a real account.
   */
  iamResourceWildcard?: boolean;
  /** Add the optional statements beyond the seed (LOG_GROUP_CLEANUP_STATEMENT). */
  withAdditions?: boolean;
}

/** One policy document with the chosen phases' statements. */
export function renderOperatorPolicy(opts: RenderOptions = {}): PolicyDocument {
  const byPhase = phases();
  const wanted = opts.phases ?? POLICY_PHASES;
  let objects = "*";
  if (opts.workDir !== undefined) {
    const parsed = parseS3Url(opts.workDir);
    if (!parsed) throw new Error(`work directory ${JSON.stringify(opts.workDir)} is not s3://bucket[/path]`);
    objects = `arn:aws:s3:::${parsed.bucket}/${parsed.prefix ? `${parsed.prefix}/` : ""}*`;
  }
  const statements: PolicyStatement[] = [];
  for (const p of POLICY_PHASES) {
    if (!wanted.includes(p)) continue;
    for (const st of byPhase[p].statements) {
      const copy: PolicyStatement = { ...st, Action: Array.isArray(st.Action) ? [...st.Action] : st.Action };
      if (copy.Resource === WORKDIR_OBJECTS_PLACEHOLDER) copy.Resource = objects;
      if (opts.iamResourceWildcard && [copy.Action].flat().every((a) => a.startsWith("iam:"))) copy.Resource = "*";
      statements.push(copy);
    }
  }
  if (opts.withAdditions) statements.push({ ...LOG_GROUP_CLEANUP_STATEMENT, Action: [LOG_GROUP_CLEANUP_STATEMENT.Action].flat() });
  return { Version: "2012-10-17", Statement: statements };
}

/** Every action the given phases allow. */
export function operatorActions(phaseList: readonly PolicyPhase[] = POLICY_PHASES): Set<string> {
  const out = new Set<string>();
  const byPhase = phases();
  for (const p of phaseList) for (const st of byPhase[p].statements) for (const a of [st.Action].flat()) out.add(a);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Normalisation

const SET_LIKE_KEYS = new Set(["Action", "NotAction", "Resource", "NotResource"]);

function normalizeValue(v: unknown, key?: string): unknown {
  if (Array.isArray(v)) {
    const items = v.map((x) => normalizeValue(x));
    if (key !== undefined && SET_LIKE_KEYS.has(key)) {
      return [...new Set(items.map((x) => JSON.stringify(x)))].sort().map((x) => JSON.parse(x) as unknown);
    }
    if (key === "Statement") return items.map((x) => JSON.stringify(x)).sort().map((x) => JSON.parse(x) as unknown);
    return items;
  }
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) {
      let x = (v as Record<string, unknown>)[k];
      if (x === undefined) continue;
      // A lone action or resource means the same as a one-element list.
      if (SET_LIKE_KEYS.has(k) && typeof x === "string") x = [x];
      if (k === "Statement" && x !== null && typeof x === "object" && !Array.isArray(x)) x = [x];
      out[k] = normalizeValue(x, k);
    }
    return out;
  }
  return v;
}

/**
 * A canonical JSON text of a policy document: keys sorted, Action/Resource lists sorted and
 * deduplicated (a single string counts as a one-element list), statements in a fixed order.
 */
export function normalizePolicy(doc: unknown): string {
  return JSON.stringify(normalizeValue(doc));
}

/** sha256 (hex) of the normalised document; equal for documents that mean the same. */
export function policyHash(doc: unknown): string {
  return createHash("sha256").update(normalizePolicy(doc)).digest("hex");
}
