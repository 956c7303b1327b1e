/**
 * The TowerForge-* IAM role and instance profile a CE's VMs run as.
 *
 * The operator holds only the seed's permissions, so the design works around what it may NOT do:
 * - no iam:GetInstanceProfile / ListInstanceProfilesForRole: the profile cannot be read. After the
 *   profile is created and the role added to it, the role gets the tag
 *   `vmforge.dev/instance-profile=<name>`; observe trusts that marker. Provision always calls
 *   CreateInstanceProfile (EntityAlreadyExists means it is there), so a profile deleted by hand is
 *   recreated on the next provision; AddRoleToInstanceProfile runs when the profile is new or the
 *   marker is missing (LimitExceeded means the profile already holds a role: ours, since the name
 *   is derived from this CE's UID and the role carries our tag).
 * - no iam:GetRolePolicy: the inline policy cannot be read back. The sha256 of the normalised
 *   policy applied last is kept in the role tag `vmforge.dev/policy-sha256`; PutRolePolicy runs
 *   only when the wanted policy's hash differs.
 * - no iam:UntagRole: user tags removed from the spec stay on the role; added or changed ones are
 *   applied.
 * - no sts:GetCallerIdentity: the account id and partition come from the role's ARN.
 *
 * Ownership: iam:GetRole returns the role's tags. A role whose `vmforge.dev/ce-uid` tag is this
 * CE's UID is ours (adopted after a crash); any other same-named role is foreign, never written or
 * deleted, and reported as Terminal "ForeignRole". The role is created with its tags in the same
 * call, so it never exists untagged because of us.
 */
import { createHash } from "node:crypto";
import {
  AddRoleToInstanceProfileCommand,
  CreateInstanceProfileCommand,
  CreateRoleCommand,
  DeleteInstanceProfileCommand,
  DeleteRoleCommand,
  DeleteRolePolicyCommand,
  DetachRolePolicyCommand,
  GetRoleCommand,
  ListAttachedRolePoliciesCommand,
  ListRolePoliciesCommand,
  PutRolePolicyCommand,
  RemoveRoleFromInstanceProfileCommand,
  TagInstanceProfileCommand,
  TagRoleCommand,
  type Role,
  type Tag,
} from "@aws-sdk/client-iam";
import type { Logger } from "../../engine/logger.js";
import { CloudError } from "../provider.js";
import { awsCall, hasAwsCode, type AwsClients } from "./clients.js";
import { policyHash, type PolicyDocument, type PolicyStatement } from "./policy.js";

export const ROLE_PREFIX = "TowerForge-";
export const INLINE_POLICY_NAME = "vmforge-instance";

export const TAG_CE_UID = "vmforge.dev/ce-uid";
export const TAG_NAMESPACE = "vmforge.dev/namespace";
export const TAG_NAME = "vmforge.dev/name";
export const TAG_MANAGED_BY = "vmforge.dev/managed-by";
export const MANAGED_BY = "vmforge";
export const TAG_POLICY_HASH = "vmforge.dev/policy-sha256";
export const TAG_PROFILE = "vmforge.dev/instance-profile";
export const RESERVED_TAG_PREFIXES = ["vmforge.dev/", "aws:"];

/** IAM allows 50 tags; the operator uses 6. */
export const MAX_USER_TAGS = 44;

/** Who a CE is, for names and tags. */
export interface CeIdentity {
  namespace: string;
  name: string;
  uid: string;
}

/**
 * `TowerForge-<slug of namespace-name>-<first 8 hex of sha256(uid)>`, at most 64 characters of
 * [A-Za-z0-9-]. The hash makes two CEs (even with equal truncated slugs, or a CE recreated under
 * the same name) use different roles; the slug makes the role recognisable in the console.
 */
export function roleNameFor(ce: CeIdentity): string {
  const hash = createHash("sha256").update(ce.uid).digest("hex").slice(0, 8);
  const room = 64 - ROLE_PREFIX.length - 1 - hash.length; // 44
  let slug = `${ce.namespace}-${ce.name}`
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, "-")
    .replace(/-+/g, "-")
    .slice(0, room)
    .replace(/^-+|-+$/g, "");
  if (slug === "") slug = "ce";
  return `${ROLE_PREFIX}${slug}-${hash}`;
}

/** Splits an IAM ARN: arn:<partition>:iam::<account>:<type>/<path/name>. */
export function parseIamArn(arn: string): { partition: string; accountId: string; type: string; name: string } | undefined {
  const m = /^arn:(aws[a-z-]*):iam::(\d{12}):(role|instance-profile|user|policy)\/(?:[\w+=,.@-]+\/)*([\w+=,.@-]+)$/.exec(arn);
  if (!m) return undefined;
  return { partition: m[1]!, accountId: m[2]!, type: m[3]!, name: m[4]! };
}

/** Trust policy of the role: only EC2 may assume it. */
export function trustPolicy(): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" } as PolicyDocument["Statement"][number]],
  };
}

export interface InstancePolicyInput {
  partition: string;
  region: string;
  accountId: string;
  logGroup: string;
  /** Work directory bucket first, then allowBuckets (deduplicated). */
  buckets: string[];
  /** Read access to the Seqera Platform token named by spec.aws.platformTokenArn, when set. */
  platformToken?: PolicyStatement;
}

/**
 * The one inline policy of the role: what the VM itself needs.
 * - CloudWatch Logs for the agent: the CE's log group (it creates the group and the streams, and
 *   sets the group's retention from spec.logRetentionDays: the operator's own policy has no
 *   logs:PutRetentionPolicy, the role it writes may).
 * - S3 read/write on the work directory bucket and the allowed buckets.
 * - ECR pull (Wave/Fusion images and private registries in the account).
 * - Read access to the one SSM parameter or Secrets Manager secret holding the Platform token,
 *   when the CE names one (spec.aws.platformTokenArn).
 */
export function instancePolicy(p: InstancePolicyInput): PolicyDocument {
  const group = `arn:${p.partition}:logs:${p.region}:${p.accountId}:log-group:${p.logGroup}`;
  const buckets = [...new Set(p.buckets)];
  const statements: PolicyDocument["Statement"] = [
    {
      Sid: "CloudWatchAgentLogs",
      Effect: "Allow",
      Action: ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents", "logs:PutRetentionPolicy"],
      Resource: [group, `${group}:*`],
    },
    {
      Sid: "EcrPull",
      Effect: "Allow",
      Action: ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetAuthorizationToken", "ecr:GetDownloadUrlForLayer"],
      Resource: "*",
    },
  ];
  if (buckets.length > 0) {
    statements.push(
      {
        Sid: "S3Buckets",
        Effect: "Allow",
        Action: ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
        Resource: buckets.map((b) => `arn:${p.partition}:s3:::${b}`),
      },
      {
        Sid: "S3Objects",
        Effect: "Allow",
        Action: [
          "s3:AbortMultipartUpload",
          "s3:DeleteObject",
          "s3:GetObject",
          "s3:GetObjectTagging",
          "s3:ListMultipartUploadParts",
          "s3:PutObject",
          "s3:PutObjectTagging",
        ],
        Resource: buckets.map((b) => `arn:${p.partition}:s3:::${b}/*`),
      },
    );
  }
  if (p.platformToken) statements.push(p.platformToken);
  return { Version: "2012-10-17", Statement: statements };
}

const TAG_CHARS = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$/u;

/**
 * Checks the user's tags against IAM's rules (stricter than EC2's, and the same tags go on both).
 * Returns a message naming the bad tag, or undefined when they are fine.
 */
export function checkUserTags(tags: Record<string, string> | undefined): string | undefined {
  const entries = Object.entries(tags ?? {});
  if (entries.length > MAX_USER_TAGS) return `spec.aws.tags: ${entries.length} tags; at most ${MAX_USER_TAGS} are allowed`;
  for (const [k, v] of entries) {
    const lower = k.toLowerCase();
    if (RESERVED_TAG_PREFIXES.some((p) => lower.startsWith(p))) return `spec.aws.tags: key ${JSON.stringify(k)} uses a reserved prefix (${RESERVED_TAG_PREFIXES.join(", ")})`;
    if (k.length < 1 || k.length > 128 || !TAG_CHARS.test(k)) return `spec.aws.tags: key ${JSON.stringify(k)} is not a valid tag key (1-128 letters, digits, spaces and _.:/=+-@)`;
    if (typeof v !== "string" || v.length > 256 || !TAG_CHARS.test(v)) return `spec.aws.tags[${JSON.stringify(k)}]: value is not a valid tag value (0-256 letters, digits, spaces and _.:/=+-@)`;
  }
  return undefined;
}

/** Ownership tags (plus the user's), as a map. */
export function ownershipTags(ce: CeIdentity, userTags: Record<string, string> | undefined): Record<string, string> {
  return {
    ...(userTags ?? {}),
    [TAG_CE_UID]: ce.uid,
    [TAG_NAMESPACE]: ce.namespace,
    [TAG_NAME]: ce.name,
    [TAG_MANAGED_BY]: MANAGED_BY,
  };
}

function toTagList(m: Record<string, string>): Tag[] {
  return Object.keys(m)
    .sort()
    .map((Key) => ({ Key, Value: m[Key] }));
}

function tagMap(tags: Tag[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of tags ?? []) if (t.Key !== undefined) out[t.Key] = t.Value ?? "";
  return out;
}

/** What the CE wants in IAM. */
export interface IamDesired {
  ce: CeIdentity;
  roleName: string;
  region: string;
  logGroup: string;
  buckets: string[];
  /** Statement granting read access to the Platform token (spec.aws.platformTokenArn), if any. */
  platformToken?: PolicyStatement;
  userTags?: Record<string, string>;
}

export interface IamState {
  roleName: string;
  profileName: string;
  /** Role exists and is ours. */
  present: boolean;
  roleArn?: string;
  instanceProfileArn?: string;
  accountId?: string;
  partition?: string;
  /** What is not (yet) as wanted; empty when converged. */
  missing: string[];
}

function foreign(roleName: string, tags: Record<string, string>, ce: CeIdentity): CloudError {
  const uid = tags[TAG_CE_UID];
  const why = uid === undefined ? `has no ${TAG_CE_UID} tag` : `belongs to another ComputeEnvironment (${TAG_CE_UID}=${uid})`;
  return CloudError.terminal(
    "ForeignRole",
    `IAM role ${roleName} already exists and ${why}; vmforge never modifies or deletes a role it does not own. ` +
      `Remove or rename that role, or set spec.aws.instanceProfileArn to use your own instance profile (CE ${ce.namespace}/${ce.name}).`,
  );
}

async function getRole(clients: AwsClients, roleName: string): Promise<Role | undefined> {
  try {
    const out = await awsCall("iam:GetRole", () => clients.iam.send(new GetRoleCommand({ RoleName: roleName })));
    return out.Role;
  } catch (err) {
    if (err instanceof CloudError && err.kind === "NotFound") return undefined;
    throw err;
  }
}

interface RoleFacts {
  arn: string;
  partition: string;
  accountId: string;
  tags: Record<string, string>;
}

function roleFacts(role: Role, roleName: string): RoleFacts {
  const arn = role.Arn ?? "";
  const parsed = parseIamArn(arn);
  if (!parsed) throw CloudError.retryable("UnexpectedResponse", `iam:GetRole: role ${roleName} has an unexpected ARN ${JSON.stringify(arn)}`);
  return { arn, partition: parsed.partition, accountId: parsed.accountId, tags: tagMap(role.Tags) };
}

function wantedPolicy(d: IamDesired, f: RoleFacts): PolicyDocument {
  return instancePolicy({
    partition: f.partition,
    region: d.region,
    accountId: f.accountId,
    logGroup: d.logGroup,
    buckets: d.buckets,
    ...(d.platformToken !== undefined ? { platformToken: d.platformToken } : {}),
  });
}

function baseTags(d: IamDesired): Record<string, string> {
  return ownershipTags(d.ce, d.userTags);
}

function tagsMissing(want: Record<string, string>, have: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(want)) if (have[k] !== v) out[k] = v;
  return out;
}

function assess(d: IamDesired, f: RoleFacts): { missing: string[]; policy: PolicyDocument; hash: string; tagDiff: Record<string, string> } {
  const policy = wantedPolicy(d, f);
  const hash = policyHash(policy);
  const missing: string[] = [];
  const tagDiff = tagsMissing(baseTags(d), f.tags);
  if (f.tags[TAG_POLICY_HASH] !== hash) missing.push(`inline policy ${INLINE_POLICY_NAME} of IAM role ${d.roleName}`);
  if (f.tags[TAG_PROFILE] !== d.roleName) missing.push(`instance profile ${d.roleName} holding the role`);
  if (Object.keys(tagDiff).length > 0) missing.push(`tags of IAM role ${d.roleName} (${Object.keys(tagDiff).sort().join(", ")})`);
  return { missing, policy, hash, tagDiff };
}

function stateOf(d: IamDesired, f: RoleFacts, missing: string[]): IamState {
  const state: IamState = {
    roleName: d.roleName,
    profileName: d.roleName,
    present: true,
    roleArn: f.arn,
    accountId: f.accountId,
    partition: f.partition,
    missing,
  };
  // The profile is known to exist (with our role) only once the marker tag says so.
  if (f.tags[TAG_PROFILE] === d.roleName) {
    state.instanceProfileArn = `arn:${f.partition}:iam::${f.accountId}:instance-profile/${d.roleName}`;
  }
  return state;
}

/** Read-only look (iam:GetRole only). Throws Terminal ForeignRole for a same-named role that is not ours. */
export async function observeIam(clients: AwsClients, d: IamDesired): Promise<IamState> {
  const role = await getRole(clients, d.roleName);
  if (!role) {
    return {
      roleName: d.roleName,
      profileName: d.roleName,
      present: false,
      missing: [`IAM role ${d.roleName}`, `instance profile ${d.roleName}`],
    };
  }
  const f = roleFacts(role, d.roleName);
  if (f.tags[TAG_CE_UID] !== d.ce.uid) throw foreign(d.roleName, f.tags, d.ce);
  return stateOf(d, f, assess(d, f).missing);
}

/** Creates or adopts the role and profile and brings them to the wanted state. Idempotent. */
export interface EnsureIamOptions {
  /**
   * The profile may be gone although the role's marker tag says it was made (e.g. EC2 kept
   * refusing it at launch): create it again. Otherwise a marked profile is trusted, so a drift
   * check that finds nothing changed only reads (there is no iam:GetInstanceProfile to look with).
   */
  profileSuspect?: boolean;
}

export async function ensureIam(clients: AwsClients, d: IamDesired, logger: Logger, opts: EnsureIamOptions = {}): Promise<IamState> {
  const iam = clients.iam;
  let role = await getRole(clients, d.roleName);
  if (!role) {
    try {
      const out = await awsCall("iam:CreateRole", () =>
        iam.send(
          new CreateRoleCommand({
            RoleName: d.roleName,
            AssumeRolePolicyDocument: JSON.stringify(trustPolicy()),
            Description: `vmforge: VMs of ComputeEnvironment ${d.ce.namespace}/${d.ce.name}`.slice(0, 1000),
            Tags: toTagList(baseTags(d)),
          }),
        ),
      );
      role = out.Role;
      logger.info({ role: d.roleName }, "created IAM role");
    } catch (err) {
      // Another worker (or a previous life) created it in between: look again, ownership decides.
      if (!hasAwsCode(err, "EntityAlreadyExists")) throw err;
      role = await getRole(clients, d.roleName);
      if (!role) throw CloudError.retryable("EventualConsistency", `iam:CreateRole: role ${d.roleName} exists but is not readable yet`);
    }
  }
  if (!role) throw CloudError.retryable("UnexpectedResponse", `iam:CreateRole returned no role for ${d.roleName}`);
  const f = roleFacts(role, d.roleName);
  if (f.tags[TAG_CE_UID] !== d.ce.uid) throw foreign(d.roleName, f.tags, d.ce);

  const a = assess(d, f);
  if (Object.keys(a.tagDiff).length > 0) {
    await awsCall("iam:TagRole", () => iam.send(new TagRoleCommand({ RoleName: d.roleName, Tags: toTagList(a.tagDiff) })));
    Object.assign(f.tags, a.tagDiff);
  }

  if (f.tags[TAG_POLICY_HASH] !== a.hash) {
    await awsCall("iam:PutRolePolicy", () =>
      iam.send(new PutRolePolicyCommand({ RoleName: d.roleName, PolicyName: INLINE_POLICY_NAME, PolicyDocument: JSON.stringify(a.policy) })),
    );
    await awsCall("iam:TagRole", () => iam.send(new TagRoleCommand({ RoleName: d.roleName, Tags: [{ Key: TAG_POLICY_HASH, Value: a.hash }] })));
    f.tags[TAG_POLICY_HASH] = a.hash;
    logger.info({ role: d.roleName }, "applied the role's inline policy");
  }

  // The profile cannot be read (no iam:GetInstanceProfile); both steps are safe to repeat, but a
  // profile the role's marker tag vouches for is not written to again unless it is suspect.
  const profileTags = toTagList(baseTags(d));
  let createdProfile = false;
  const trusted = f.tags[TAG_PROFILE] === d.roleName && opts.profileSuspect !== true;
  if (!trusted) {
    try {
      await awsCall("iam:CreateInstanceProfile", () =>
        iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: d.roleName, Tags: profileTags })),
      );
      createdProfile = true;
      logger.info({ profile: d.roleName }, "created IAM instance profile");
    } catch (err) {
      if (!hasAwsCode(err, "EntityAlreadyExists")) throw err;
    }
  }
  // A profile that existed already and that the marker tag says holds our role needs nothing more.
  // (The SDK retries IAM's LimitExceededException like throttling, so an unneeded
  // AddRoleToInstanceProfile would cost three attempts with back-off each time.)
  if (createdProfile || f.tags[TAG_PROFILE] !== d.roleName || opts.profileSuspect === true) {
    try {
      await awsCall("iam:AddRoleToInstanceProfile", () =>
        iam.send(new AddRoleToInstanceProfileCommand({ InstanceProfileName: d.roleName, RoleName: d.roleName })),
      );
    } catch (err) {
      // LimitExceeded: the profile already holds a role (one per profile). The name is derived from
      // this CE's UID and the role is ours, so it is our role from an earlier attempt.
      if (!hasAwsCode(err, "LimitExceeded")) throw err;
    }
  }
  if (!createdProfile && Object.keys(a.tagDiff).length > 0) {
    await awsCall("iam:TagInstanceProfile", () =>
      iam.send(new TagInstanceProfileCommand({ InstanceProfileName: d.roleName, Tags: toTagList(a.tagDiff) })),
    );
  }
  if (f.tags[TAG_PROFILE] !== d.roleName) {
    await awsCall("iam:TagRole", () => iam.send(new TagRoleCommand({ RoleName: d.roleName, Tags: [{ Key: TAG_PROFILE, Value: d.roleName }] })));
    f.tags[TAG_PROFILE] = d.roleName;
  }
  return stateOf(d, f, []);
}

export interface IamDisposeResult {
  /** What was deleted (names). */
  deleted: string[];
  /** Why something was left alone. */
  notes: string[];
}

async function ignoreNotFound(p: Promise<unknown>): Promise<boolean> {
  try {
    await p;
    return true;
  } catch (err) {
    if (err instanceof CloudError && err.kind === "NotFound") return false;
    throw err;
  }
}

/**
 * Deletes the CE's role and profile, in the order IAM requires, each "no such entity" counting as
 * done. Ownership is checked first with iam:GetRole.
 *
 * The profile has no readable tags. It is deleted (by its deterministic name) only when
 * (a) the role exists and carries this CE's UID, checked in this same call, or
 * (b) the role is already gone and `knownProfileArn` (the ARN this CE's status recorded, which
 *     the operator writes only after creating or adopting the profile) names exactly this profile.
 * Otherwise a leftover profile is left alone and a note says so. A same-named role that is not
 * ours is never touched; disposal then counts as done (nothing of ours exists). `whenOwned` runs
 * once the role is proven ours, before anything is deleted.
 */
export async function disposeIam(
  clients: AwsClients,
  d: Pick<IamDesired, "ce" | "roleName">,
  logger: Logger,
  opts: { knownProfileArn?: string; whenOwned?: () => Promise<void> } = {},
): Promise<IamDisposeResult> {
  const iam = clients.iam;
  const name = d.roleName;
  const result: IamDisposeResult = { deleted: [], notes: [] };
  const role = await getRole(clients, name);

  const deleteProfile = async (removeFailure?: CloudError): Promise<void> => {
    try {
      if (await ignoreNotFound(awsCall("iam:DeleteInstanceProfile", () => iam.send(new DeleteInstanceProfileCommand({ InstanceProfileName: name }))))) {
        result.deleted.push(`instance profile ${name}`);
      }
    } catch (err) {
      if (!hasAwsCode(err, "DeleteConflict")) throw err;
      // Our role may still be in it because removing it failed: try again later.
      if (removeFailure) throw removeFailure;
      // It holds a role that is not ours (ours was removed above): not ours to delete.
      result.notes.push(`instance profile ${name} still holds another role; left alone`);
    }
  };

  if (!role) {
    const known = opts.knownProfileArn ? parseIamArn(opts.knownProfileArn) : undefined;
    if (known && known.type === "instance-profile" && known.name === name) {
      await deleteProfile();
    } else {
      result.notes.push(`IAM role ${name} does not exist; its instance profile, if any, cannot be proven ours and is left alone`);
    }
    return result;
  }
  const f = roleFacts(role, name);
  if (f.tags[TAG_CE_UID] !== d.ce.uid) {
    const msg = `IAM role ${name} is not owned by this ComputeEnvironment (${TAG_CE_UID}=${f.tags[TAG_CE_UID] ?? "absent"}); left untouched, and its same-named instance profile too`;
    logger.warn({ role: name }, msg);
    result.notes.push(msg);
    return result;
  }
  // Proven ours: what else belongs to this CE goes first (a failure there leaves the role to prove it again).
  await opts.whenOwned?.();

  // NoSuchEntity here means no profile, or a profile without our role (removed by hand): both done.
  // A server error is not final yet: if the profile turns out to be empty, DeleteInstanceProfile
  // succeeds anyway (moto 5.2.5 answers HTTP 500 instead of NoSuchEntity for a role that is not in
  // the profile); if our role is still in it, DeleteInstanceProfile says DeleteConflict and the
  // server error is what the caller gets, to retry.
  let removeFailure: CloudError | undefined;
  try {
    await ignoreNotFound(
      awsCall("iam:RemoveRoleFromInstanceProfile", () =>
        iam.send(new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: name, RoleName: name })),
      ),
    );
  } catch (err) {
    if (!(err instanceof CloudError && err.kind === "Retryable" && err.reason === "AwsUnavailable")) throw err;
    removeFailure = err;
  }
  await deleteProfile(removeFailure);

  let marker: string | undefined;
  do {
    const page = await ignoreList(() =>
      awsCall("iam:ListAttachedRolePolicies", () => iam.send(new ListAttachedRolePoliciesCommand({ RoleName: name, Marker: marker }))),
    );
    if (!page) break;
    for (const p of page.AttachedPolicies ?? []) {
      if (!p.PolicyArn) continue;
      const arn = p.PolicyArn;
      await ignoreNotFound(awsCall("iam:DetachRolePolicy", () => iam.send(new DetachRolePolicyCommand({ RoleName: name, PolicyArn: arn }))));
      result.deleted.push(`attachment of ${arn}`);
    }
    marker = page.IsTruncated ? page.Marker : undefined;
  } while (marker);

  marker = undefined;
  do {
    const page = await ignoreList(() =>
      awsCall("iam:ListRolePolicies", () => iam.send(new ListRolePoliciesCommand({ RoleName: name, Marker: marker }))),
    );
    if (!page) break;
    for (const policyName of page.PolicyNames ?? []) {
      if (await ignoreNotFound(awsCall("iam:DeleteRolePolicy", () => iam.send(new DeleteRolePolicyCommand({ RoleName: name, PolicyName: policyName }))))) {
        result.deleted.push(`inline policy ${policyName}`);
      }
    }
    marker = page.IsTruncated ? page.Marker : undefined;
  } while (marker);

  try {
    if (await ignoreNotFound(awsCall("iam:DeleteRole", () => iam.send(new DeleteRoleCommand({ RoleName: name }))))) {
      result.deleted.push(`IAM role ${name}`);
    }
  } catch (err) {
    if (hasAwsCode(err, "DeleteConflict")) {
      // IAM is eventually consistent: a just-removed profile membership may still block the delete.
      throw CloudError.retryable("DeleteConflict", `iam:DeleteRole: role ${name} is still in use; will retry`, 5_000, err);
    }
    throw err;
  }
  logger.info({ role: name, deleted: result.deleted }, "disposed IAM resources");
  return result;
}

async function ignoreList<T>(fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof CloudError && err.kind === "NotFound") return undefined;
    throw err;
  }
}
