/**
 * The run half of the AWS provider: one EC2 instance per Run.
 *
 * - launchRun: observe first (an instance tagged with the Run's UID is the Run's machine), then
 *   RunInstances with ClientToken = Run UID. Either alone leaves a gap: EC2's idempotency token
 *   covers the seconds in which DescribeInstances does not show a new instance yet, and the
 *   look-up covers a token that EC2 forgot or that now comes with other parameters (a changed CE
 *   gives other user data: IdempotentParameterMismatch). Emulators that ignore ClientToken (moto)
 *   are covered by the look-up.
 * - describeRuns: ONE DescribeInstances for up to 200 Runs (tag filter on the Run UID), or pages of
 *   1,000 for more, whatever CE they belong to. Where the exit code is read from travels in the
 *   instance's tags, so Runs of several CEs in one account and region can be described together.
 *   Between full looks, machines seen before are asked for only in a state other than running,
 *   and Runs with no machine seen yet by their own UIDs (see listMachines): a fleet that runs on
 *   answers with almost nothing, and new Runs beside it cost calls for themselves alone.
 * - terminateRun / sweepOrphans: only instances that carry vmforge's ownership tags are touched.
 *
 * Calls used (seed 002): ec2:RunInstances (+ iam:PassRole), ec2:DescribeInstances,
 * ec2:TerminateInstances, ec2:CreateTags (tags at launch), logs:GetLogEvents, s3:GetObject.
 */
import { createHash } from "node:crypto";
import { monotonicNow } from "../../engine/clock.js";
import {
  DescribeInstancesCommand,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type EC2Client,
  type Filter,
  type Instance,
  type RunInstancesCommandInput,
  type Tag,
} from "@aws-sdk/client-ec2";
import type { CloudWatchLogsClient } from "@aws-sdk/client-cloudwatch-logs";
import { GetObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { RECENT_LAUNCH_MS } from "./consistency.js";
import type { ComputeEnvironment, Run } from "../../api/types.js";
import { isTerminal } from "../../api/phases.js";
import { DEFAULT_BOOT_DISK_GIB, DEFAULT_BOOT_DISK_VOLUME_TYPE } from "../../api/types.js";
import { CloudError, forEachLimited, type EnvContext, type MachineState, type RunDescription, type RunLogChunk } from "../provider.js";
import { awsErrorCode, mapAwsError } from "./clients.js";
import { MANAGED_BY, TAG_CE_UID, TAG_MANAGED_BY, TAG_NAMESPACE } from "./iam.js";
import { encodeUserData, renderUserData, runArtifactsUri, runInstanceType, s3Location, type AwsEnvStatus } from "./launcher.js";
import {
  BOOTSTRAP_LINE,
  findOutcomeInLog,
  logGroupName,
  logStreamName,
  markerLogStreamName,
  parseExitLine,
  readLogStream,
  readRunLog as readRunLogStream,
  type LauncherOutcome,
  type ReadLogOptions,
} from "./logs.js";

export const TAG_RUN_UID = "vmforge.dev/run-uid";
export const TAG_RUN_NAME = "vmforge.dev/run-name";
export const TAG_CE_NAME = "vmforge.dev/ce-name";
/** Where the Run's log and uploaded artifacts are (so a batch over several CEs knows). */
export const TAG_LOG_GROUP = "vmforge.dev/log-group";
export const TAG_ARTIFACTS = "vmforge.dev/artifacts";

/** EC2 allows 50 tags per resource. */
const MAX_TAGS = 50;
/** DescribeInstances accepts at most 200 values per filter. */
export const FILTER_VALUES_MAX = 200;
const ROOT_DEVICE_DEFAULT = "/dev/xvda";
/** Instance metadata hop limit 2: containers on the Docker bridge (Fusion) reach IMDSv2 for the role's credentials. */
const IMDS_HOP_LIMIT = 2;

/** The clients run work needs (AwsClients from ./clients.js fits). */
export interface RunClients {
  readonly ec2: EC2Client;
  readonly logs: CloudWatchLogsClient;
  readonly s3: S3Client;
}

export interface LaunchOptions {
  /** Token from spec.platformTokenSecretRef; used only with the CE's user-data opt-in (see launcher.ts). */
  platformToken?: string;
  /** vCPUs and memory of the instance type when known; otherwise the instance measures itself. */
  resources?: { vcpus?: number; memoryMiB?: number };
  /**
   * Waits between tries while a new instance profile has not reached EC2 yet ("Invalid IAM
   * Instance Profile"). Default 2 s, 4 s, 8 s, 8 s: five tries in about 22 s, then Retryable.
   */
  profileRetryDelaysMs?: number[];
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /**
   * No launch of this Run was tried before: skip the tag look-up (ClientToken alone keeps a repeat
   * from making a second instance; the look-up is the net for resumed launches).
   */
  firstAttempt?: boolean;
}

const DEFAULT_PROFILE_RETRY_DELAYS = [2_000, 4_000, 8_000, 8_000];

function defaultSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason instanceof Error ? signal.reason : new Error("aborted"));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function sendOpts(ctx: EnvContext): { abortSignal?: AbortSignal } {
  return ctx.signal ? { abortSignal: ctx.signal } : {};
}

function requireUid(run: Run): string {
  const uid = run.metadata.uid;
  if (!uid) throw CloudError.terminal("InvalidRun", `Run ${run.metadata.namespace}/${run.metadata.name} has no UID (not read from the API server?)`);
  return uid;
}

function envStatusOf(ce: ComputeEnvironment): AwsEnvStatus {
  const s = ce.status?.aws;
  const missing: string[] = [];
  if (!s?.instanceProfileArn) missing.push("instanceProfileArn");
  if (!s?.amiId) missing.push("amiId");
  if (!s?.subnetIds || s.subnetIds.length === 0) missing.push("subnetIds");
  if (!s || missing.length > 0) {
    throw CloudError.retryable(
      "EnvironmentNotReady",
      `ComputeEnvironment ${ce.metadata.namespace}/${ce.metadata.name} has not recorded ${missing.join(", ")} in status.aws yet`,
      10_000,
    );
  }
  return s;
}

/** Deterministic subnet of a Run: the same Run always asks for the same subnet. */
export function pickSubnet(subnetIds: readonly string[], runUid: string): string {
  if (subnetIds.length === 0) throw new Error("no subnets to pick from");
  const n = createHash("sha256").update(runUid).digest().readUInt32BE(0);
  return subnetIds[n % subnetIds.length] as string;
}

/**
 * Tags of a Run's instance and volume. Ownership tags always win over the user's and are never
 * dropped; the Name tag (unless the user set one) and the location tags are added while EC2's
 * 50-tag limit leaves room.
 */
export function runTags(ce: ComputeEnvironment, run: Run): Tag[] {
  const ownership: Record<string, string> = {
    [TAG_RUN_UID]: requireUid(run),
    [TAG_CE_UID]: ce.metadata.uid ?? "",
    [TAG_NAMESPACE]: run.metadata.namespace ?? "",
    [TAG_RUN_NAME]: run.metadata.name ?? "",
    [TAG_CE_NAME]: ce.metadata.name ?? "",
    [TAG_MANAGED_BY]: MANAGED_BY,
  };
  const user: Record<string, string> = {};
  for (const [k, v] of Object.entries(ce.spec.aws?.tags ?? {})) {
    if (k.toLowerCase().startsWith("vmforge.dev/") || k.toLowerCase().startsWith("aws:")) continue;
    user[k] = v;
  }
  const tags: Record<string, string> = { ...user, ...ownership };
  const optional: [string, string][] = [];
  if (!("Name" in user)) optional.push(["Name", `vmforge/${run.metadata.namespace}/${run.metadata.name}`.slice(0, 256)]);
  optional.push([TAG_LOG_GROUP, logGroupName(ce)]);
  optional.push([TAG_ARTIFACTS, runArtifactsUri(ce, run)]);
  if (Object.keys(tags).length > MAX_TAGS) {
    throw CloudError.terminal("TooManyTags", `spec.aws.tags: with vmforge's ${Object.keys(ownership).length} ownership tags an instance would carry more than ${MAX_TAGS} tags`);
  }
  for (const [k, v] of optional) {
    if (Object.keys(tags).length >= MAX_TAGS) break;
    if (v.length <= 256) tags[k] = v;
  }
  return Object.keys(tags)
    .sort()
    .map((Key) => ({ Key, Value: tags[Key] }));
}

/**
 * The order in which a Run tries the CE's subnets: its own deterministic subnet first (so the same
 * Run asks for the same subnet after a restart), then the others in the CE's order.
 */
export function subnetOrder(subnetIds: readonly string[], runUid: string): string[] {
  const first = pickSubnet(subnetIds, runUid);
  const i = subnetIds.indexOf(first);
  return [...subnetIds.slice(i), ...subnetIds.slice(0, i)];
}

/** The RunInstances request of a Run (exported for tests). */
export function runInstancesInput(ce: ComputeEnvironment, run: Run, userData: string, subnetId?: string): RunInstancesCommandInput {
  const uid = requireUid(run);
  const env = envStatusOf(ce);
  const tags = runTags(ce, run);
  const size = run.spec.overrides?.bootDiskSizeGiB ?? ce.spec.aws?.bootDiskSizeGiB ?? DEFAULT_BOOT_DISK_GIB;
  const sgs = env.securityGroupIds ?? [];
  const keyPair = ce.spec.aws?.keyPair;
  return {
    ClientToken: uid,
    MinCount: 1,
    MaxCount: 1,
    ImageId: env.amiId,
    InstanceType: runInstanceType(ce, run) as RunInstancesCommandInput["InstanceType"],
    IamInstanceProfile: { Arn: env.instanceProfileArn },
    SubnetId: subnetId ?? pickSubnet(env.subnetIds ?? [], uid),
    ...(sgs.length > 0 ? { SecurityGroupIds: [...sgs] } : {}),
    ...(keyPair ? { KeyName: keyPair } : {}),
    BlockDeviceMappings: [
      {
        DeviceName: env.rootDeviceName ?? ROOT_DEVICE_DEFAULT,
        Ebs: { VolumeSize: size, VolumeType: DEFAULT_BOOT_DISK_VOLUME_TYPE, DeleteOnTermination: true },
      },
    ],
    MetadataOptions: { HttpTokens: "required", HttpEndpoint: "enabled", HttpPutResponseHopLimit: IMDS_HOP_LIMIT },
    InstanceInitiatedShutdownBehavior: "terminate",
    ...(run.spec.overrides?.spot
      ? { InstanceMarketOptions: { MarketType: "spot", SpotOptions: { SpotInstanceType: "one-time", InstanceInterruptionBehavior: "terminate" } } }
      : {}),
    TagSpecifications: [
      { ResourceType: "instance", Tags: tags },
      { ResourceType: "volume", Tags: tags },
    ],
    UserData: encodeUserData(userData).toString("base64"),
  };
}

function isProfilePropagationError(e: unknown): boolean {
  if (awsErrorCode(e) !== "InvalidParameterValue") return false;
  const msg = e instanceof Error ? e.message : String((e as { message?: unknown })?.message ?? "");
  return /iamInstanceProfile|Invalid IAM Instance Profile/i.test(msg);
}

/**
 * Answers about one subnet's Availability Zone: the type is not offered there (`Unsupported`) or
 * EC2 has no capacity for it there right now. Another AZ may do, so the next subnet is tried.
 */
const ZONE_CODES = new Set(["Unsupported", "InsufficientInstanceCapacity"]);
/** Account-wide quota answers that free up as other instances end; another subnet would not help. */
const QUOTA_CODES = new Set(["VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded"]);

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String((e as { message?: unknown })?.message ?? e);
}

/**
 * Launches the Run's instance, or returns the one it already has. Idempotent on the Run UID.
 *
 * ClientToken = Run UID is what makes a repeat safe: EC2 answers a repeated successful request with
 * the same instance, even while DescribeInstances does not show it yet. The tag look-up first is a
 * second net (a token EC2 forgot, or a launch made with other parameters). The token is the same
 * for every subnet: EC2 binds a token to the request that succeeded, so a failed try in one
 * Availability Zone does not use it up, and once one launch succeeded every later try (in any
 * subnet) gets that instance or IdempotentParameterMismatch, never a second machine.
 *
 * Capacity: `Unsupported` or `InsufficientInstanceCapacity` in one subnet moves on to the CE's
 * other subnets. A type offered in none of them is Terminal (the Run fails with the reason); a
 * shortage everywhere is Retryable.
 */
export async function launchRun(clients: RunClients, ctx: EnvContext, run: Run, opts: LaunchOptions = {}): Promise<RunDescription> {
  const uid = requireUid(run);
  const existing = opts.firstAttempt ? undefined : await describeInstancesByRunUids(clients.ec2, ctx, [uid]);
  const found = pickInstance(existing?.get(uid));
  if (found) {
    ctx.logger.info({ run: `${run.metadata.namespace}/${run.metadata.name}`, instance: found.InstanceId }, "the Run already has an instance; not launching another");
    return describeInstance(found, ctx.ce, run);
  }
  const env = envStatusOf(ctx.ce);
  const userData = renderUserData({
    ce: ctx.ce,
    run,
    envStatus: env,
    ...(opts.resources ? { resources: opts.resources } : {}),
    ...(opts.platformToken !== undefined ? { platformToken: opts.platformToken } : {}),
  });
  const zoneFailures: { subnet: string; code: string; message: string }[] = [];
  for (const subnet of subnetOrder(env.subnetIds ?? [], uid)) {
    const input = runInstancesInput(ctx.ce, run, userData, subnet);
    try {
      return await runInstancesOnce(clients, ctx, run, input, env, opts);
    } catch (e) {
      const code = awsErrorCode(e);
      if (code === undefined || !ZONE_CODES.has(code) || e instanceof CloudError) throw e;
      zoneFailures.push({ subnet, code, message: errorMessage(e) });
      ctx.logger.info({ run: `${run.metadata.namespace}/${run.metadata.name}`, subnet, code }, "no launch in this subnet; trying the next one");
    }
  }
  const type = runInstanceType(ctx.ce, run);
  const where = zoneFailures.map((f) => `${f.subnet}: ${f.code}`).join("; ");
  if (zoneFailures.every((f) => f.code === "Unsupported")) {
    throw CloudError.terminal(
      "InstanceTypeUnavailable",
      `ec2:RunInstances: instance type ${type} is not offered in the Availability Zone of any of the ComputeEnvironment's subnets (${where}); pick another type or add subnets in other zones`,
    );
  }
  throw CloudError.retryable(
    "InsufficientCapacity",
    `ec2:RunInstances: no capacity for ${type} in any of the ComputeEnvironment's subnets (${where}); trying again later`,
    60_000,
  );
}

/** One RunInstances request (retried only while a new instance profile propagates). Raw zone errors pass through. */
async function runInstancesOnce(
  clients: RunClients,
  ctx: EnvContext,
  run: Run,
  input: RunInstancesCommandInput,
  env: AwsEnvStatus,
  opts: LaunchOptions,
): Promise<RunDescription> {
  const uid = requireUid(run);
  const delays = opts.profileRetryDelaysMs ?? DEFAULT_PROFILE_RETRY_DELAYS;
  const sleep = opts.sleep ?? defaultSleep;
  for (let attempt = 0; ; attempt++) {
    try {
      const out = await clients.ec2.send(new RunInstancesCommand(input), sendOpts(ctx));
      const inst = out.Instances?.[0];
      if (!inst?.InstanceId) throw CloudError.retryable("UnexpectedResponse", "ec2:RunInstances returned no instance");
      ctx.logger.info(
        { run: `${run.metadata.namespace}/${run.metadata.name}`, instance: inst.InstanceId, subnet: input.SubnetId, spot: !!input.InstanceMarketOptions },
        "launched an instance",
      );
      return describeInstance(inst, ctx.ce, run);
    } catch (e) {
      if (e instanceof CloudError) throw e;
      const code = awsErrorCode(e);
      if (isProfilePropagationError(e)) {
        const delay = delays[attempt];
        if (delay === undefined) {
          throw CloudError.retryable(
            "InstanceProfileNotPropagated",
            `ec2:RunInstances: EC2 does not know instance profile ${env.instanceProfileArn} yet (IAM changes take a while to propagate); ${attempt + 1} tries so far`,
            10_000,
            e,
          );
        }
        ctx.logger.debug({ attempt: attempt + 1, delayMs: delay }, "instance profile not visible to EC2 yet; retrying");
        await sleep(delay, ctx.signal);
        continue;
      }
      if (code === "IdempotentParameterMismatch") {
        // The token was used before with other parameters: that launch happened. Find it.
        const again = pickInstance((await describeInstancesByRunUids(clients.ec2, ctx, [uid])).get(uid));
        if (again) return describeInstance(again, ctx.ce, run);
        throw CloudError.retryable("LaunchPending", "ec2:RunInstances: an earlier launch of this Run exists but is not visible yet", 5_000, e);
      }
      if (code !== undefined && ZONE_CODES.has(code)) throw e;
      if (code !== undefined && QUOTA_CODES.has(code)) {
        throw CloudError.retryable("InsufficientCapacity", `ec2:RunInstances: ${code}: ${errorMessage(e)}`, 60_000, e);
      }
      throw mapAwsError(e, "ec2:RunInstances");
    }
  }
}

/**
 * All instances carrying the given Run UIDs, grouped by UID. Up to 200 UIDs: one call filtered on
 * them. More: the filter does not grow with the Run count; one paginated listing of every
 * vmforge-managed instance in the account and region (1,000 per page), matched by the Run-UID tag,
 * so a poll costs one call per 1,000 instances however many Runs are followed.
 */
export async function describeInstancesByRunUids(ec2: EC2Client, ctx: EnvContext, uids: string[], extra: Filter[] = []): Promise<Map<string, Instance[]>> {
  const out = new Map<string, Instance[]>();
  const unique = [...new Set(uids)];
  if (unique.length === 0) return out;
  const wanted = new Set(unique);
  const filters: Filter[] = [
    ...(unique.length <= FILTER_VALUES_MAX
      ? [{ Name: `tag:${TAG_RUN_UID}`, Values: unique }]
      : [
          { Name: `tag:${TAG_MANAGED_BY}`, Values: [MANAGED_BY] },
          { Name: "tag-key", Values: [TAG_RUN_UID] },
        ]),
    ...extra,
  ];
  for (const inst of await describeAll(ec2, ctx, filters)) {
    const uid = tagValue(inst, TAG_RUN_UID);
    if (uid === undefined || !wanted.has(uid)) continue;
    const list = out.get(uid);
    if (list) list.push(inst);
    else out.set(uid, [inst]);
  }
  return out;
}

/** States a machine can leave without anyone noticing on a later look: everything but running. */
export const CHANGING_STATES: readonly string[] = ["pending", "shutting-down", "terminated", "stopping", "stopped"];

/** Instances a TerminateInstances would not change: already terminated, or being terminated. */
const ENDING_STATES: ReadonlySet<string> = new Set(["shutting-down", "terminated"]);

/**
 * A machine last seen in one of these states is known well enough to be looked for only among
 * machines not running: not listed there, a pending or running machine runs, and a terminated or
 * shutting-down one is gone (as a full look would find it). A stopped or stopping machine may be
 * started again, so it is looked at in full.
 */
const INFERABLE: ReadonlySet<MachineState> = new Set<MachineState>(["pending", "running", "shutting-down", "terminated"]);

/**
 * Runs a poll looks at by their UIDs (no machine known, or a machine that ended since it was seen;
 * filters of 200, so at most 5 calls) beside the narrow look at the others; with more, the poll
 * looks at everything (pages of 1,000).
 */
export const UNSEEN_NARROW_MAX = 5 * FILTER_VALUES_MAX;

/**
 * The machines of these Runs, by Run UID. With the tracker's last observations (`observed`), only
 * machines in a state other than running are asked for (one filter more on the same call): in
 * steady state EC2 answers with almost nothing instead of every running instance (about 0.8 CPU
 * seconds of the operator's parsing per 1,000 instances, each poll). A Run whose machine is not in
 * that answer but was pending or running is given its last observation, as running. Runs the
 * inference cannot settle (no machine seen yet: a launch, a machine not listed yet; or one last
 * seen stopped) are looked at by their own UIDs, in every state, so that new Runs arriving beside a
 * large fleet cost calls for themselves, not a listing of the whole fleet; beyond UNSEEN_NARROW_MAX
 * of them, or when another live machine carries a Run's UID, everything is looked at. A Run whose
 * machine ended since it was seen gets a second look, without the state filter, at its own
 * machines, in the same calls as the Runs looked at by UID (and within the same limit: when more
 * machines end at once, e.g. a ComputeEnvironment deleted under many Runs, the poll looks at
 * everything instead).
 */
export async function listMachines(ec2: EC2Client, ctx: EnvContext, runs: Run[], observed?: (run: Run) => RunDescription | undefined): Promise<Map<string, Instance[]>> {
  const uids = runs.map((r) => r.metadata.uid as string);
  if (!observed) return describeInstancesByRunUids(ec2, ctx, uids);
  const inferable: { uid: string; seen: RunDescription }[] = [];
  const unseen: string[] = [];
  for (const r of runs) {
    const uid = r.metadata.uid as string;
    const seen = observed(r);
    if (seen?.instanceId && INFERABLE.has(seen.state)) inferable.push({ uid, seen });
    else unseen.push(uid);
  }
  if (unseen.length > UNSEEN_NARROW_MAX) return describeInstancesByRunUids(ec2, ctx, uids);
  const changing = inferable.length > 0
    ? await describeInstancesByRunUids(ec2, ctx, inferable.map((k) => k.uid), [{ Name: "instance-state-name", Values: [...CHANGING_STATES] }])
    : new Map<string, Instance[]>();
  const out = new Map<string, Instance[]>();
  const endedSinceSeen: string[] = [];
  for (const { uid, seen } of inferable) {
    const listed = changing.get(uid) ?? [];
    // Another live machine of this Run (a doubled launch): which one is the Run's is for a full look to say.
    if (listed.some((i) => i.InstanceId !== seen.instanceId && i.State?.Name !== "terminated")) return describeInstancesByRunUids(ec2, ctx, uids);
    const own = listed.filter((i) => i.InstanceId === seen.instanceId);
    if (own.length > 0) {
      out.set(uid, own);
      // Seen live, now ending: a second machine of the Run that is running would not be in this
      // answer, and a full look would take it over the ended one. These Runs are looked at in full.
      if ((seen.state === "pending" || seen.state === "running") && own.some((i) => ENDED.has(machineState(i)))) endedSinceSeen.push(uid);
    } else if (seen.state === "pending" || seen.state === "running") out.set(uid, [runningAsSeen(seen)]);
    // Else it ended before and is no longer listed: absent, as in a full look.
  }
  // Each in full, by UID (at most 200 to a call); the same as a full look for these Runs. Past
  // UNSEEN_NARROW_MAX, pages of every machine cost fewer calls than filters of 200.
  const inFull = [...unseen, ...endedSinceSeen];
  if (inFull.length > UNSEEN_NARROW_MAX) return describeInstancesByRunUids(ec2, ctx, uids);
  for (let i = 0; i < inFull.length; i += FILTER_VALUES_MAX) {
    const part = inFull.slice(i, i + FILTER_VALUES_MAX);
    const found = await describeInstancesByRunUids(ec2, ctx, part);
    for (const uid of part) {
      const list = found.get(uid);
      if (list?.length) out.set(uid, list);
    }
  }
  return out;
}

/**
 * A machine that was seen pending or running and is not among the machines in any other state:
 * it runs, as it was seen, with the log group and exit-status location its tags gave then (an
 * outcome read for it, a pipeline that ended without a shutdown, looks where its launch put them).
 */
function runningAsSeen(seen: RunDescription): Instance {
  const i = seen.instance;
  const tags = [
    ...(seen.log?.group ? [{ Key: TAG_LOG_GROUP, Value: seen.log.group }] : []),
    ...(seen.artifacts !== undefined ? [{ Key: TAG_ARTIFACTS, Value: seen.artifacts }] : []),
  ];
  return {
    InstanceId: seen.instanceId,
    State: { Name: "running" },
    ...(i?.type ? { InstanceType: i.type as Instance["InstanceType"] } : {}),
    ...(i?.zone ? { Placement: { AvailabilityZone: i.zone } } : {}),
    ...(i?.privateIp ? { PrivateIpAddress: i.privateIp } : {}),
    ...(i?.spot ? { InstanceLifecycle: "spot" as const } : {}),
    ...(seen.launchedAt ? { LaunchTime: new Date(seen.launchedAt) } : {}),
    ...(tags.length ? { Tags: tags } : {}),
  };
}

async function describeAll(ec2: EC2Client, ctx: EnvContext, filters: Filter[]): Promise<Instance[]> {
  const instances: Instance[] = [];
  let token: string | undefined;
  do {
    let page;
    try {
      page = await ec2.send(
        new DescribeInstancesCommand({ Filters: filters, MaxResults: 1000, ...(token ? { NextToken: token } : {}) }),
        sendOpts(ctx),
      );
    } catch (e) {
      throw mapAwsError(e, "ec2:DescribeInstances");
    }
    for (const r of page.Reservations ?? []) for (const inst of r.Instances ?? []) instances.push(inst);
    token = page.NextToken || undefined;
  } while (token);
  return instances;
}

function tagValue(inst: Instance, key: string): string | undefined {
  return inst.Tags?.find((t) => t.Key === key)?.Value;
}

/**
 * The Run's machine among several (should be one): a live one first (one shutting down or
 * terminated is ending, and must not hide a second machine of the Run that runs), then the newest.
 */
function pickInstance(list: Instance[] | undefined): Instance | undefined {
  if (!list || list.length === 0) return undefined;
  const rank = (i: Instance): number => (ENDING_STATES.has(i.State?.Name ?? "") ? 1 : 0);
  return [...list].sort((a, b) => rank(a) - rank(b) || (b.LaunchTime?.getTime() ?? 0) - (a.LaunchTime?.getTime() ?? 0))[0];
}

const STATES: ReadonlySet<string> = new Set(["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]);

function machineState(inst: Instance): MachineState {
  const s = inst.State?.Name;
  return s !== undefined && STATES.has(s) ? (s as MachineState) : "unknown";
}

/** EC2 reclaimed a Spot instance (state reason Server.SpotInstanceTermination / ...Shutdown). */
export function isSpotInterruption(inst: Instance): boolean {
  return inst.StateReason?.Code?.startsWith("Server.SpotInstance") === true;
}

/** Why the instance is in its state, in words (Spot interruptions say so). */
export function stateReasonOf(inst: Instance): string | undefined {
  const code = inst.StateReason?.Code;
  const msg = inst.StateReason?.Message;
  if (code?.startsWith("Server.SpotInstance")) return `Spot interruption: ${msg ?? code}`;
  if (msg) return msg;
  return inst.StateTransitionReason || undefined;
}

function describeInstance(inst: Instance, ce: ComputeEnvironment, run: Run): RunDescription {
  const state = machineState(inst);
  const d: RunDescription = {
    instanceId: inst.InstanceId ?? "",
    state,
    instance: {
      id: inst.InstanceId ?? "",
      ...(inst.InstanceType ? { type: inst.InstanceType } : {}),
      ...(inst.Placement?.AvailabilityZone ? { zone: inst.Placement.AvailabilityZone } : {}),
      ...(inst.PrivateIpAddress ? { privateIp: inst.PrivateIpAddress } : {}),
      spot: inst.InstanceLifecycle === "spot",
      state,
    },
    log: { provider: "cloudwatch", group: tagValue(inst, TAG_LOG_GROUP) ?? logGroupName(ce), stream: logStreamName(run) },
  };
  const reason = state === "pending" || state === "running" ? undefined : stateReasonOf(inst);
  if (reason) d.stateReason = reason;
  if (isSpotInterruption(inst)) d.interrupted = true;
  if (inst.LaunchTime) d.launchedAt = inst.LaunchTime.toISOString();
  const artifacts = tagValue(inst, TAG_ARTIFACTS);
  if (artifacts !== undefined) d.artifacts = artifacts;
  return d;
}

/** States in which the pipeline has ended (the launcher shuts the machine down last). */
const ENDED: ReadonlySet<MachineState> = new Set(["shutting-down", "terminated", "stopping", "stopped"]);

export interface DescribeOptions {
  /** Parallel exit-code look-ups (GetLogEvents / GetObject), default 8. */
  exitCodeConcurrency?: number;
  /**
   * Whether to look for the exit line / uploaded exit status of a Run whose machine is still
   * running (a machine whose shutdown failed keeps running after the pipeline ended). The caller
   * paces these look-ups; by default none is made.
   */
  probeRunning?: (run: Run) => boolean;
  /** A recorded machine EC2 no longer lists is looked for in the log and S3 once launched this long ago (default 60 s). */
  missingProbeAfterMs?: number;
  /**
   * Where the launcher's log of each Run still being set up has been read up to (see
   * StartProbes). Without it, nothing is read to learn whether a pipeline started.
   */
  startProbes?: StartProbes;
}

/** The launcher's line saying the pipeline is starting (written just before nextflow runs). */
export const PIPELINE_STARTED_MARKER = "VMFORGE_PIPELINE_STARTED";

/**
 * Learning that a pipeline started, cheaply: only a Run whose machine is up and whose launcher has
 * not been seen saying so (phase Launching) is read, forward from where the last read ended (one
 * GetLogEvents page per read), at most `limit` Runs per describe (the least recently read first),
 * and never again once the line was seen. Runs already Running cost nothing. A Run set up for a
 * long time is read less often (at most every twentieth of the time it has been read, up to
 * every 5 minutes), so machines whose launcher never speaks do not cost a read every poll.
 */
export class StartProbes {
  /** Run UID -> cursor in its log stream, whether the start line was seen, first and last read. */
  private readonly state = new Map<string, { cursor?: string; started: boolean; first: number; at: number }>();
  /** Run UID -> when its outcome (exit line, exit status) was last read. */
  private readonly exitReadAt = new Map<string, number>();
  // Its times are its own (when each Run was last read): the monotonic clock.
  constructor(readonly limit = 100, private readonly clock: () => number = monotonicNow, private readonly forgetAfterMs = 30 * 60_000) {}

  /**
   * The ended Runs (of those given) whose outcome is read now: at most `limit`, those read least
   * recently first, so that when more machines end at once than one describe may read (a CE's
   * Runs finishing together), they take turns and none waits behind a Run whose read keeps failing.
   */
  pickExits(uids: string[], now = this.clock()): string[] {
    for (const [uid, at] of this.exitReadAt) if (now - at > this.forgetAfterMs) this.exitReadAt.delete(uid);
    const chosen = [...uids].sort((a, b) => (this.exitReadAt.get(a) ?? 0) - (this.exitReadAt.get(b) ?? 0)).slice(0, this.limit);
    for (const u of chosen) this.exitReadAt.set(u, now);
    return chosen;
  }

  /** The Runs (of those given) to read now, at most `max` (the limit less the exit reads of this describe). */
  pick(uids: string[], now = this.clock(), max = this.limit): string[] {
    for (const [uid, s] of this.state) if (now - s.at > this.forgetAfterMs) this.state.delete(uid);
    return uids
      .filter((u) => {
        const s = this.state.get(u);
        if (!s) return true;
        return !s.started && now - s.at >= Math.min(5 * 60_000, (now - s.first) / 20);
      })
      .sort((a, b) => (this.state.get(a)?.at ?? 0) - (this.state.get(b)?.at ?? 0))
      .slice(0, Math.max(0, max));
  }
  started(uid: string): boolean {
    return this.state.get(uid)?.started === true;
  }
  cursor(uid: string): string | undefined {
    return this.state.get(uid)?.cursor;
  }
  record(uid: string, cursor: string | undefined, started: boolean, now = this.clock()): void {
    const prev = this.state.get(uid);
    const c = cursor ?? prev?.cursor;
    this.state.set(uid, { ...(c !== undefined ? { cursor: c } : {}), started: started || prev?.started === true, first: prev?.first ?? now, at: now });
  }
  /**
   * The read was refused: it is paced like any other (the refusal itself is reported with the Run,
   * and the run tracker keeps it until a read works: see mergeLearned).
   */
  fail(uid: string, now = this.clock()): void {
    this.record(uid, undefined, false, now);
  }
  /** The Run is Running (or over): nothing more to learn of its start. */
  forget(uid: string): void {
    this.state.delete(uid);
  }
  /** The Run has its outcome: its turn among the outcome reads goes too. */
  forgetExit(uid: string): void {
    this.exitReadAt.delete(uid);
  }
  get size(): number {
    return this.state.size;
  }
}

/**
 * Reads a Run's markers stream forward from the probe's cursor (one page): did the launcher say
 * the pipeline started, and did it already end (exit line, failed set-up step)? The main stream
 * is never read for these: it also holds whatever the pipeline prints.
 */
async function probeStart(clients: RunClients, ctx: EnvContext, run: Run, inst: Instance, desc: RunDescription, probes: StartProbes): Promise<void> {
  const uid = run.metadata.uid as string;
  const group = tagValue(inst, TAG_LOG_GROUP) ?? logGroupName(runCeOf(ctx, run));
  const chunk = await readLogStream(clients.logs, group, markerLogStreamName(run), probes.cursor(uid), { maxPages: 1, ...(ctx.signal ? { signal: ctx.signal } : {}) });
  let started = false;
  let step: string | undefined;
  for (const raw of chunk.lines.flatMap((l) => l.split("\n"))) {
    const line = raw.trim();
    if (line === PIPELINE_STARTED_MARKER) started = true;
    const b = BOOTSTRAP_LINE.exec(line);
    if (b) step = b[1];
    const code = parseExitLine(line);
    if (code !== undefined) {
      desc.exitCode = code;
      if (step && !started && !probes.started(uid)) desc.bootstrapStep = step;
    }
  }
  probes.record(uid, chunk.next, started);
  desc.readAttempted = true;
  if (probes.started(uid)) desc.pipelineStarted = true;
}

/** The Run's own ComputeEnvironment in a describe of several CEs' Runs (ctx.ce is only one of them). */
function runCeOf(ctx: EnvContext, run: Run): ComputeEnvironment {
  return ctx.runCe?.(run) ?? ctx.ce;
}

function beingCancelled(run: Run, ce: ComputeEnvironment): boolean {
  return run.spec.cancel === true || !!run.metadata.deletionTimestamp || !!ce.metadata.deletionTimestamp;
}

/**
 * Describes Runs with as few DescribeInstances calls as their number allows (see
 * describeInstancesByRunUids and listMachines). The exit code comes from the exit line in the
 * Run's markers stream (written by the launcher alone), else from the uploaded exit-status object;
 * it is looked for:
 * - when the machine has ended (shutting down, stopped, terminated);
 * - when it still runs and `probeRunning` says so (the pipeline may have ended without a shutdown);
 * - when EC2 no longer lists the machine recorded at launch (it forgets terminated instances after
 *   about an hour): the outcome is read before the Run is ever declared lost.
 * Runs already in a terminal phase have their outcome; nothing is looked up for them.
 * A Run without a machine (and no outcome found) maps to undefined.
 */
export async function describeRuns(
  clients: RunClients,
  ctx: EnvContext,
  runs: Run[],
  opts: DescribeOptions = {},
): Promise<Map<string, RunDescription | undefined>> {
  const result = new Map<string, RunDescription | undefined>();
  const withUid = runs.filter((r) => r.metadata.uid);
  const byUid = await listMachines(clients.ec2, ctx, withUid, ctx.observed);
  const needExit: { run: Run; inst: Instance | undefined; desc: RunDescription; missing?: boolean }[] = [];
  const settingUp: { run: Run; inst: Instance; desc: RunDescription }[] = [];
  const missingAfter = opts.missingProbeAfterMs ?? 60_000;
  for (const run of withUid) {
    const uid = run.metadata.uid as string;
    const inst = pickInstance(byUid.get(uid));
    if (!inst) {
      result.set(uid, undefined);
      const recorded = run.status?.instance?.id;
      const launched = Date.parse(run.status?.launchedAt ?? "");
      if (recorded && !isTerminal(run) && Number.isFinite(launched) && Date.now() - launched >= missingAfter) {
        needExit.push({ run, inst: undefined, desc: { instanceId: recorded, state: "terminated", stateReason: "no longer listed by EC2", unlisted: true }, missing: true });
      }
      continue;
    }
    const desc = describeInstance(inst, runCeOf(ctx, run), run);
    result.set(uid, desc);
    if (isTerminal(run) || run.status?.phase === "Running") opts.startProbes?.forget(uid);
    if (isTerminal(run)) {
      opts.startProbes?.forgetExit(uid);
      continue;
    }
    // Being cancelled (spec.cancel, the Run or its CE deleted): its outcome is Cancelled whatever
    // the machine says, so neither its start nor its exit line is worth a read.
    if (beingCancelled(run, runCeOf(ctx, run))) continue;
    if (ENDED.has(desc.state)) {
      needExit.push({ run, inst, desc });
    } else if (desc.state === "running" && run.status?.phase !== "Running" && opts.startProbes) {
      // Up, but not known to run its pipeline yet: read its markers stream (paced, see StartProbes).
      if (opts.startProbes.started(uid)) desc.pipelineStarted = true;
      else settingUp.push({ run, inst, desc });
    } else if ((desc.state === "running" || desc.state === "pending") && opts.probeRunning?.(run) === true) {
      needExit.push({ run, inst, desc });
    }
  }
  const probes = opts.startProbes;
  // One budget of log reads per describe (StartProbes.limit Runs): outcomes first, then starts.
  let exits = needExit;
  if (probes) {
    const chosen = new Set(probes.pickExits(needExit.map((n) => n.run.metadata.uid as string)));
    exits = needExit.filter((n) => chosen.has(n.run.metadata.uid as string));
    // The others wait for a later describe, as Runs whose outcome is not known yet.
    for (const n of needExit) if (!chosen.has(n.run.metadata.uid as string)) waitForOutcome(result, n);
  }
  if (probes && settingUp.length > 0) {
    const chosen = new Set(probes.pick(settingUp.map((s) => s.run.metadata.uid as string), undefined, probes.limit - exits.length));
    await forEachLimited(settingUp.filter((s) => chosen.has(s.run.metadata.uid as string)), opts.exitCodeConcurrency ?? 8, ({ run, inst, desc }) =>
      probeStart(clients, ctx, run, inst, desc, probes).catch((e: unknown) => {
        // One Run's log read failing does not blind the others' observation. A read that cannot
        // work (e.g. logs:GetLogEvents denied) is reported with the Run; a passing one is retried.
        if (!(e instanceof CloudError)) throw e;
        if (e.kind === "Terminal") {
          probes.fail(run.metadata.uid as string);
          Object.assign(desc, { readError: { reason: e.reason, message: e.message }, readAttempted: true });
        }
      }));
  }
  await forEachLimited(exits, opts.exitCodeConcurrency ?? 8, async (item) => {
    const { run, inst, desc, missing } = item;
    let outcome: LauncherOutcome | undefined;
    try {
      outcome = await exitCodeOf(clients, ctx, run, inst);
    } catch (e) {
      // A read that cannot work (logs:GetLogEvents or s3:GetObject denied) stays with its Run: the
      // others are still observed, and this Run's outcome is not guessed (the reconciler waits,
      // naming the cause, until a read works or the Run's timeout).
      if (!(e instanceof CloudError)) throw e;
      // A refusal a retry will not fix (e.g. a missing permission) is named on the Run; a passing
      // one (throttling, a timeout) is not. Either way this Run waits for a later read, and the
      // other Runs of the account and region are observed now.
      if (e.kind === "Terminal") Object.assign(desc, { readError: { reason: e.reason, message: e.message }, readAttempted: true });
      waitForOutcome(result, item);
      return;
    }
    desc.readAttempted = true;
    const code = outcome?.code;
    if (code !== undefined) desc.exitCode = code;
    if (outcome?.bootstrapStep) desc.bootstrapStep = outcome.bootstrapStep;
    if (missing && code !== undefined) {
      desc.log = { provider: "cloudwatch", group: logGroupName(runCeOf(ctx, run)), stream: logStreamName(run) };
      result.set(run.metadata.uid as string, desc);
    }
  });
  return result;
}

/** An ended (or unlisted) Run whose outcome was not read this time: it is not given one from this description. */
function waitForOutcome(result: Map<string, RunDescription | undefined>, n: { run: Run; desc: RunDescription; missing?: boolean }): void {
  n.desc.outcomeUnknown = true;
  if (n.missing) result.set(n.run.metadata.uid as string, n.desc);
}

/**
 * Exit code of an ended Run: the exit line of its markers stream (the launcher's alone; a line the
 * pipeline prints never counts), else the exit-status object.
 */
async function exitCodeOf(clients: RunClients, ctx: EnvContext, run: Run, inst: Instance | undefined): Promise<LauncherOutcome | undefined> {
  const group = (inst && tagValue(inst, TAG_LOG_GROUP)) ?? run.status?.log?.group ?? logGroupName(runCeOf(ctx, run));
  const fromLog = await findOutcomeInLog(clients.logs, group, markerLogStreamName(run), ctx.signal ? { signal: ctx.signal } : {});
  if (fromLog !== undefined) return fromLog;
  let artifacts = inst ? tagValue(inst, TAG_ARTIFACTS) : undefined;
  if (artifacts === undefined) {
    try {
      artifacts = runArtifactsUri(runCeOf(ctx, run), run);
    } catch {
      return undefined;
    }
  }
  return readExitStatus(clients.s3, ctx, `${artifacts}/exit-status`);
}

/**
 * Reads an uploaded exit-status object. Missing means undefined; note that without
 * s3:ListBucket (the seed grants only s3:GetObject) S3 answers a missing key with AccessDenied.
 */
export async function readExitStatusObject(s3: S3Client, ctx: EnvContext, uri: string): Promise<number | undefined> {
  return (await readExitStatus(s3, ctx, uri))?.code;
}

/** The uploaded exit status: the code on the first line, and `bootstrap-failed=<step>` after it when set-up failed. */
export async function readExitStatus(s3: S3Client, ctx: EnvContext, uri: string): Promise<LauncherOutcome | undefined> {
  const loc = s3Location(uri);
  if (!loc || !loc.key) return undefined;
  let text: string;
  try {
    const out = await s3.send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }), sendOpts(ctx));
    text = (await out.Body?.transformToString("utf8")) ?? "";
  } catch (e) {
    const code = awsErrorCode(e);
    // A missing key answered as AccessDenied says only "Access Denied"; a policy without
    // s3:GetObject says who may not perform it, and that is a missing permission, not a missing object.
    const deniedByPolicy = code === "AccessDenied" && /not authorized to perform: s3:GetObject/.test(e instanceof Error ? e.message : "");
    if (code === "NoSuchKey" || code === "NotFound" || (code === "AccessDenied" && !deniedByPolicy) || code === "NoSuchBucket") return undefined;
    throw mapAwsError(e, "s3:GetObject");
  }
  const m = /^\s*(\d{1,3})\s*(?:\n\s*bootstrap-failed=([a-z0-9-]{1,64})\s*)?$/.exec(text);
  if (!m) return undefined;
  const n = Number(m[1]);
  if (n > 255) return undefined;
  return m[2] ? { code: n, bootstrapStep: m[2] } : { code: n };
}

/**
 * Terminates the Run's machine. The instance ID recorded at launch (status.instance.id, taken from
 * RunInstances' own answer) is terminated directly, so a machine that DescribeInstances does not
 * show yet is not missed; a tag search adds any other instance carrying the Run's UID, touched only
 * when its ownership tags say it is this Run's.
 */
export async function terminateRun(clients: RunClients, ctx: EnvContext, run: Run): Promise<string[]> {
  const { failed, ids } = await terminateRuns(clients, ctx, [run]);
  const e = failed.values().next();
  if (!e.done) throw e.value;
  return ids;
}

/**
 * terminateRun for several Runs of one CE at once: one tag search per FILTER_VALUES_MAX Runs and one
 * TerminateInstances per 1,000 instances, instead of one of each per Run. A Run whose own look-up
 * (its recorded machine by ID) fails is named in `failed` with why, and the others go on. A
 * TerminateInstances refused for good (e.g. one machine's termination protection, a tag-scoped
 * policy) is sent again Run by Run, so only the Runs it concerns carry the refusal (not when the
 * credentials are refused, which refuses every call alike; after REFUSED_IN_A_ROW_MAX refusals in
 * a row the Runs not resent get a Retryable error, to be sent again). A refusal only ever falls on
 * Runs with machines to end. Any other failure of the shared call throws; of a resend, it is that
 * Run's and the later ones' outcome. `ids`: the instances whose termination was accepted.
 */
export async function terminateRuns(clients: RunClients, ctx: EnvContext, runs: Run[]): Promise<{ failed: Map<string, unknown>; ids: string[] }> {
  const uids = runs.map(requireUid);
  const found = new Map<string, Instance[]>();
  for (let i = 0; i < uids.length; i += FILTER_VALUES_MAX) {
    for (const [uid, list] of await describeInstancesByRunUids(clients.ec2, ctx, uids.slice(i, i + FILTER_VALUES_MAX))) found.set(uid, list);
  }
  const failed = new Map<string, unknown>();
  // The look-ups by ID (recorded machines the tag search did not show) go 8 at a time; the Runs
  // keep their order.
  const owns: { ids: string[]; error?: unknown }[] = [];
  await forEachLimited(runs.map((run, i) => ({ run, i })), 8, async ({ run, i }) => {
    owns[i] = await ownInstances(clients, ctx, run, found.get(requireUid(run)) ?? []);
  });
  const byRun = new Map<string, string[]>();
  runs.forEach((run, i) => {
    const own = owns[i];
    if (own && own.ids.length > 0) byRun.set(requireUid(run), own.ids);
    if (own?.error !== undefined) failed.set(requireUid(run), own.error);
  });
  let accepted = [...new Set([...byRun.values()].flat())];
  try {
    await terminate(clients.ec2, ctx, accepted);
  } catch (e) {
    if (!(e instanceof CloudError && e.kind === "Terminal")) throw e;
    accepted = [];
    const pairs = [...byRun];
    let inARow = 0;
    for (let i = 0; i < pairs.length; i++) {
      const [uid, own] = pairs[i] as [string, string[]];
      if (pairs.length < 2 || e.reason === "InvalidCredentials") {
        failed.set(uid, e);
        continue;
      }
      if (inARow >= REFUSED_IN_A_ROW_MAX) {
        // Not its own refusal: sent again soon (the Runs refused are blocked meanwhile, so the
        // next batch resends others first), rather than blocked for another Run's machine.
        for (const [later] of pairs.slice(i)) failed.set(later, CloudError.retryable("TerminationNotResent", `ec2:TerminateInstances: not sent again for this Run after ${REFUSED_IN_A_ROW_MAX} refusals in a row for others (${e.reason}); trying again`, 5_000, e));
        break;
      }
      try {
        await terminate(clients.ec2, ctx, own);
        accepted.push(...own);
        inARow = 0;
      } catch (err) {
        // Its own refusal; refused credentials (expired meanwhile) refuse every later call too.
        if (err instanceof CloudError && err.kind === "Terminal" && err.reason !== "InvalidCredentials") {
          failed.set(uid, err);
          inARow++;
          continue;
        }
        // Any other failure (throttling, the network, refused credentials) is this Run's and the later ones'.
        for (const [later] of pairs.slice(i)) failed.set(later, err);
        break;
      }
    }
  }
  if (accepted.length > 0) ctx.logger.info(runs.length === 1 ? { run: `${runs[0]?.metadata.namespace}/${runs[0]?.metadata.name}`, instances: accepted } : { runs: runs.length, instances: accepted }, "terminated");
  return { failed, ids: accepted };
}

/** terminateRuns stops resending Run by Run after this many refusals in a row (the refusal is then likely everyone's). */
const REFUSED_IN_A_ROW_MAX = 8;

/**
 * The Run's instances to terminate: those the tag search found and its recorded one (see
 * terminateRun). When the recorded one's look-up fails, the others are still given, with the error.
 */
async function ownInstances(clients: RunClients, ctx: EnvContext, run: Run, found: Instance[]): Promise<{ ids: string[]; error?: unknown }> {
  const uid = requireUid(run);
  const ids = found
    .filter((i) => i.InstanceId && !ENDING_STATES.has(i.State?.Name ?? ""))
    .filter((i) => tagValue(i, TAG_RUN_UID) === uid && tagValue(i, TAG_MANAGED_BY) === MANAGED_BY)
    .map((i) => i.InstanceId as string);
  const recorded = run.status?.instance?.id;
  const listed = new Set(found.map((i) => i.InstanceId));
  // A recorded machine the search shows is handled above (by its tags and state). One it does not
  // show (a new instance EC2 does not list by tag yet, or a status that names another machine) is
  // looked up by its ID, and terminated only if its tags say it is this Run's.
  if (recorded && /^i-[0-9a-f]+$/.test(recorded) && !listed.has(recorded)) {
    const launched = Date.parse(run.status?.launchedAt ?? "");
    const fresh = Number.isFinite(launched) && Date.now() - launched < RECENT_LAUNCH_MS;
    let inst: Instance | undefined;
    try {
      const out = await clients.ec2.send(new DescribeInstancesCommand({ InstanceIds: [recorded] }), sendOpts(ctx));
      inst = out.Reservations?.flatMap((r) => r.Instances ?? []).find((i) => i.InstanceId === recorded);
    } catch (e) {
      if (awsErrorCode(e) !== "InvalidInstanceID.NotFound") return { ids, error: mapAwsError(e, "ec2:DescribeInstances") };
      // Just launched, EC2 may not know the ID everywhere yet: "not found" then means "try again";
      // later it means the instance is long gone.
      if (fresh) return { ids, error: CloudError.retryable("InstanceNotVisibleYet", `ec2:DescribeInstances: ${recorded} was launched moments ago and is not visible yet; trying again`, 2_000, e) };
    }
    if (inst && !ENDING_STATES.has(inst.State?.Name ?? "")) {
      if (tagValue(inst, TAG_RUN_UID) === uid && tagValue(inst, TAG_MANAGED_BY) === MANAGED_BY) ids.push(recorded);
      else ctx.logger.warn({ run: `${run.metadata.namespace}/${run.metadata.name}`, instance: recorded }, "the Run's recorded machine does not carry its ownership tags; not terminating it");
    }
  }
  return { ids };
}

async function terminate(ec2: EC2Client, ctx: EnvContext, ids: string[]): Promise<void> {
  for (let i = 0; i < ids.length; i += 1000) {
    let chunk = ids.slice(i, i + 1000);
    // EC2 refuses the whole call when one ID does not exist (gone already, which counts as done),
    // naming the IDs in its message: the call goes again without them (a few times at most), and
    // one by one when the message names none of them.
    for (let round = 0; chunk.length > 0; round++) {
      try {
        await ec2.send(new TerminateInstancesCommand({ InstanceIds: chunk }), sendOpts(ctx));
        break;
      } catch (e) {
        if (awsErrorCode(e) !== "InvalidInstanceID.NotFound") throw mapAwsError(e, "ec2:TerminateInstances");
        const named = new Set(errorMessage(e).match(/\bi-[0-9a-f]{8,17}\b/g) ?? []);
        const rest = chunk.filter((id) => !named.has(id));
        if (rest.length === chunk.length || round >= 3) {
          if (chunk.length > 1) await terminateEach(ec2, ctx, chunk);
          break;
        }
        chunk = rest;
      }
    }
  }
}

async function terminateEach(ec2: EC2Client, ctx: EnvContext, ids: string[]): Promise<void> {
  for (const id of ids) {
    try {
      await ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }), sendOpts(ctx));
    } catch (e) {
      if (awsErrorCode(e) !== "InvalidInstanceID.NotFound") throw mapAwsError(e, "ec2:TerminateInstances");
    }
  }
}

/**
 * Terminates this CE's machines (ownership tags: CE UID and managed-by) whose Run UID is not in
 * `liveRunUids`. Returns the instance IDs it terminated.
 */
export async function sweepOrphans(clients: RunClients, ctx: EnvContext, liveRunUids: Set<string>): Promise<string[]> {
  const ceUid = ctx.ce.metadata.uid;
  if (!ceUid) return [];
  const instances = await describeAll(clients.ec2, ctx, [
    { Name: `tag:${TAG_CE_UID}`, Values: [ceUid] },
    { Name: `tag:${TAG_MANAGED_BY}`, Values: [MANAGED_BY] },
    { Name: "instance-state-name", Values: ["pending", "running", "stopping", "stopped"] },
  ]);
  const orphans = instances
    .filter((i) => i.InstanceId && tagValue(i, TAG_CE_UID) === ceUid && tagValue(i, TAG_MANAGED_BY) === MANAGED_BY)
    .filter((i) => {
      const uid = tagValue(i, TAG_RUN_UID);
      return uid !== undefined && !liveRunUids.has(uid);
    })
    .map((i) => i.InstanceId as string);
  await terminate(clients.ec2, ctx, orphans);
  if (orphans.length > 0) ctx.logger.warn({ ce: `${ctx.ce.metadata.namespace}/${ctx.ce.metadata.name}`, instances: orphans }, "terminated orphaned instances");
  return orphans;
}

/** Cursor of a log read from the uploaded launcher.log (the stream never reached CloudWatch). */
const UPLOADED_LOG_CURSOR = "s3:launcher.log";

/**
 * Reads the Run's log from a cursor (see ./logs.ts). When the Run has ended and its stream never
 * reached CloudWatch (the log agent could not be installed or started), the launcher's own log,
 * uploaded to the work dir, is read instead.
 */
export async function readRunLog(clients: RunClients, ctx: EnvContext, run: Run, from?: string, opts: ReadLogOptions = {}): Promise<RunLogChunk> {
  if (from === UPLOADED_LOG_CURSOR) return { lines: [], next: from };
  const chunk = await readRunLogStream(clients.logs, ctx.ce, run, from, { ...(ctx.signal ? { signal: ctx.signal } : {}), ...opts });
  if (from !== undefined || chunk.next !== undefined || chunk.lines.length > 0 || !isTerminal(run)) return chunk;
  const loc = s3Location(`${runArtifactsUri(ctx.ce, run)}/launcher.log`);
  if (!loc) return chunk;
  try {
    const out = await clients.s3.send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }), sendOpts(ctx));
    const text = (await out.Body?.transformToString("utf8")) ?? "";
    return { lines: text.replace(/\n$/, "").split("\n"), next: UPLOADED_LOG_CURSOR };
  } catch (e) {
    const code = awsErrorCode(e);
    if (code === "NoSuchKey" || code === "NotFound" || code === "AccessDenied" || code === "NoSuchBucket") return chunk;
    throw mapAwsError(e, "s3:GetObject");
  }
}
