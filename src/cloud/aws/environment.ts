/**
 * The AWS half of a ComputeEnvironment: validation plus the TowerForge-* role and instance
 * profile, as observe / provision / dispose.
 */
import type { CloudResourceRef, ComputeEnvironment, ComputeEnvironmentStatus } from "../../api/types.js";
import { CloudError, type EnvContext, type EnvObservation } from "../provider.js";
import { DeleteLogGroupCommand } from "@aws-sdk/client-cloudwatch-logs";
import { awsCall, awsErrorCode, type AwsClients } from "./clients.js";
import { disposeIam, ensureIam, observeIam, parseIamArn, roleNameFor, type CeIdentity, type EnsureIamOptions, type IamDesired, type IamState } from "./iam.js";
import { platformTokenReadStatement } from "./launcher.js";
import { validateAwsSpec, type ValidatedAwsSpec } from "./validate.js";

/** CloudWatch Logs group of a CE's runs (the instance role's CloudWatch agent creates it). */
export function logGroupFor(ce: Pick<ComputeEnvironment, "metadata">): string {
  return `/vmforge/${ce.metadata.namespace ?? "default"}/${ce.metadata.name ?? ""}`;
}

/** The CE's identity for names and tags; a CE without UID is not yet persisted. */
export function ceIdentity(ce: ComputeEnvironment): CeIdentity {
  const { namespace, name, uid } = ce.metadata;
  if (!namespace || !name || !uid) {
    throw CloudError.terminal("InvalidObject", "ComputeEnvironment has no namespace, name or uid (not read from the API server?)");
  }
  return { namespace, name, uid };
}

/** The deterministic TowerForge-* role (and instance profile) name of a CE. */
export function roleNameOf(ce: ComputeEnvironment): string {
  return roleNameFor(ceIdentity(ce));
}

/** What the CE wants in IAM; exported for tests. */
export function desiredIam(ce: ComputeEnvironment, v: Pick<ValidatedAwsSpec, "region" | "buckets">): IamDesired {
  const id = ceIdentity(ce);
  // Changes with the ARN; the role's policy-hash tag then makes provision re-put the policy.
  const platformToken = platformTokenReadStatement(ce);
  return {
    ce: id,
    roleName: roleNameFor(id),
    region: v.region,
    logGroup: logGroupFor(ce),
    buckets: v.buckets,
    ...(platformToken !== undefined ? { platformToken } : {}),
    ...(ce.spec.aws?.tags !== undefined ? { userTags: ce.spec.aws.tags } : {}),
  };
}

type AwsStatus = NonNullable<ComputeEnvironmentStatus["aws"]>;

function observation(ce: ComputeEnvironment, v: ValidatedAwsSpec, iam: IamState | undefined): EnvObservation {
  const aws: AwsStatus = {
    vpcId: v.vpcId,
    subnetIds: v.subnetIds,
    securityGroupIds: v.securityGroupIds,
    amiId: v.amiId,
    rootDeviceName: v.rootDeviceName,
    architecture: v.architecture,
    instanceType: v.instanceType,
    logGroup: logGroupFor(ce),
  };
  const resources: CloudResourceRef[] = [];
  const missing: string[] = [];
  if (v.instanceProfileArn !== undefined) {
    // Bring-your-own profile: not ours, so not among our resources, never created nor deleted.
    aws.instanceProfileArn = v.instanceProfileArn;
    const parsed = parseIamArn(v.instanceProfileArn);
    if (parsed) aws.accountId = parsed.accountId;
  } else if (iam) {
    if (iam.present) {
      if (iam.roleArn) {
        aws.roleArn = iam.roleArn;
        resources.push({ kind: "IAMRole", id: iam.roleArn, name: iam.roleName });
      }
      if (iam.instanceProfileArn) {
        aws.instanceProfileArn = iam.instanceProfileArn;
        resources.push({ kind: "InstanceProfile", id: iam.instanceProfileArn, name: iam.profileName });
      }
      if (iam.accountId) aws.accountId = iam.accountId;
    }
    missing.push(...iam.missing);
  }
  return { resources, ready: missing.length === 0, missing, status: { aws } };
}

function logNotes(ctx: EnvContext, v: ValidatedAwsSpec): void {
  for (const note of v.notes) ctx.logger.info({ ce: `${ctx.ce.metadata.namespace}/${ctx.ce.metadata.name}` }, note);
}

/** Read-only: validates the spec and looks at the role (iam:GetRole). */
export async function observeAwsEnvironment(clients: AwsClients, ctx: EnvContext): Promise<EnvObservation> {
  const v = await validateAwsSpec(clients, ctx.ce.spec.aws);
  logNotes(ctx, v);
  const iam = v.instanceProfileArn === undefined ? await observeIam(clients, desiredIam(ctx.ce, v)) : undefined;
  return observation(ctx.ce, v, iam);
}

/** Validates, then creates / adopts / updates the role and profile. Idempotent. */
export async function provisionAwsEnvironment(clients: AwsClients, ctx: EnvContext, opts: EnsureIamOptions = {}): Promise<EnvObservation> {
  const v = await validateAwsSpec(clients, ctx.ce.spec.aws);
  logNotes(ctx, v);
  // Validation only read; from here on IAM may be written (a bring-your-own profile writes nothing).
  if (v.instanceProfileArn === undefined) await ctx.beforeCloudWrite?.();
  const iam = v.instanceProfileArn === undefined ? await ensureIam(clients, desiredIam(ctx.ce, v), ctx.logger, opts) : undefined;
  return observation(ctx.ce, v, iam);
}

/**
 * Deletes the CE's role and profile when they carry its ownership tag. Needs no valid spec (an
 * invalid spec must not block deletion) and runs also for a bring-your-own profile CE: its
 * deterministic role is simply absent then, unless it was created before the spec switched.
 * A bring-your-own profile is never touched.
 */
export async function disposeAwsEnvironment(clients: AwsClients, ctx: EnvContext): Promise<void> {
  const id = ceIdentity(ctx.ce);
  const roleName = roleNameFor(id);
  const known = ctx.ce.status?.aws?.instanceProfileArn;
  // The log group is named after the CE, not its UID: it is deleted only when the CE is proven
  // its owner, i.e. its TowerForge-* role carries this CE's UID (or, with its own instance profile,
  // the CE's status recorded the group). A same-named role of someone else leaves the group alone too.
  const byo = ctx.ce.spec.aws?.instanceProfileArn !== undefined;
  if (byo && ctx.ce.status?.aws?.logGroup) await deleteLogGroup(clients, ctx);
  const res = await disposeIam(clients, { ce: id, roleName }, ctx.logger, {
    ...(known !== undefined ? { knownProfileArn: known } : {}),
    ...(byo ? {} : { whenOwned: () => deleteLogGroup(clients, ctx) }),
  });
  for (const note of res.notes) ctx.logger.info({ role: roleName }, note);
}

/**
 * Deletes the CE's CloudWatch Logs group (made by the instances' agent). The seed's policy does
 * not allow logs:DeleteLogGroup (it is the optional addition LOG_GROUP_CLEANUP_STATEMENT): denied,
 * the group is left, which the operator logs with how to allow it; its events still expire by the
 * retention the agent set. A group that never existed (no Run ever logged) is fine.
 */
async function deleteLogGroup(clients: AwsClients, ctx: EnvContext): Promise<void> {
  const group = ctx.ce.status?.aws?.logGroup ?? logGroupFor(ctx.ce);
  try {
    await awsCall("logs:DeleteLogGroup", () => clients.logs.send(new DeleteLogGroupCommand({ logGroupName: group }), ctx.signal ? { abortSignal: ctx.signal } : {}));
    ctx.logger.info({ logGroup: group }, "deleted the environment's CloudWatch Logs group");
  } catch (e) {
    if (awsErrorCode(e) === "ResourceNotFoundException") return;
    if (e instanceof CloudError && e.reason === "AccessDenied") {
      ctx.logger.warn({ logGroup: group },
        "the environment's CloudWatch Logs group is left in place: the operator may not delete it (logs:DeleteLogGroup is not in the documented policy; `vmforge policy aws --with-additions` adds it). Its events expire by spec.logRetentionDays; delete the group by hand if you want it gone now");
      return;
    }
    throw e;
  }
}
