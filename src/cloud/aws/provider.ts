/**
 * AwsProvider: the CloudProvider for spec.provider "aws". Environment work lives in
 * ./environment.ts; run work (launch, describe, terminate, logs, orphan sweep) in ./runs.ts.
 * Clients come from a cache keyed by a fingerprint of the CE's credentials, so a rotated Secret
 * is used on the next call without a restart.
 */
import type { ComputeEnvironment, Run } from "../../api/types.js";
import type { Logger } from "../../engine/logger.js";
import {
  CloudError,
  type CloudProvider,
  type EnvContext,
  type EnvObservation,
  type LaunchHints,
  type RunDescription,
  type RunLogChunk,
} from "../provider.js";
import { AwsClientCache, type AwsClientFactory, type AwsClientOptions, type AwsClients } from "./clients.js";
import { disposeAwsEnvironment, observeAwsEnvironment, provisionAwsEnvironment } from "./environment.js";
import { StartProbes, describeRuns, launchRun, readRunLog, sweepOrphans, terminateRun, terminateRuns } from "./runs.js";
import { UNLISTED_LAUNCH_MS } from "./consistency.js";

export interface AwsProviderOptions {
  /** Endpoint override for every client (default: $VMFORGE_AWS_ENDPOINT). */
  endpoint?: string;
  /** SDK attempts per call (default 3). */
  maxAttempts?: number;
  /** Builds the clients (tests add middleware here, e.g. to inject throttling). */
  clientFactory?: AwsClientFactory;
  /** Where the SDK's HTTP handler warnings go (the operator's log); default: dropped. */
  logger?: Pick<Logger, "warn">;
  /** How many client sets to keep (default 32). */
  cacheSize?: number;
  /**
   * How often the exit line / uploaded exit status of a Run whose machine still runs is looked
   * for (default 5 min, first after it ran that long): a pipeline that ended on a machine whose
   * shutdown failed is noticed within this time.
   */
  runningExitProbeMs?: number;
  /** A recorded machine EC2 no longer lists is looked for in the log and S3 once launched this long ago (default 60 s). */
  missingProbeAfterMs?: number;
  /**
   * The log-read budget of one describe of an account and region, in Runs: the outcome reads of
   * ended machines first, then the start reads of machines being set up (one GetLogEvents page
   * each); least recently read first. Default: paced to the poll interval (see pollIntervalMs), else 100.
   */
  startProbeLimit?: number;
  /**
   * The operator's poll interval (describeRuns comes once per interval for each account and
   * region). Without startProbeLimit, the start reads per describe are START_PROBE_READS_PER_S
   * for each second of it (at least 10), so a short interval does not spend more of CloudWatch
   * Logs' GetLogEvents quota than a long one.
   */
  pollIntervalMs?: number;
  /** See CloudProvider.unlistedLaunchMs (default UNLISTED_LAUNCH_MS, 2 min). */
  unlistedLaunchMs?: number;
}

/**
 * GetLogEvents calls per second of poll interval the start reads may make: a third of CloudWatch
 * Logs' quota for the call (25 per second per account and region), which `vmforge logs -f`, the
 * exit reads and the account's other users share.
 */
export const START_PROBE_READS_PER_S = 8;

/** The start reads per describe for a poll interval (100 when none is given). */
export function startProbeLimitFor(pollIntervalMs: number | undefined): number {
  if (pollIntervalMs === undefined) return 100;
  return Math.max(10, Math.floor((START_PROBE_READS_PER_S * pollIntervalMs) / 1000));
}

export class AwsProvider implements CloudProvider {
  readonly name = "aws";
  readonly announcesCloudWrites = true;
  /** The launcher writes VMFORGE_PIPELINE_STARTED to the Run's log; describeRuns reads it (StartProbes). */
  readonly reportsPipelineStart = true;
  readonly unlistedLaunchMs: number;
  readonly clients: AwsClientCache;
  private readonly opts: AwsProviderOptions;
  /** CE UIDs whose instance profile EC2 kept refusing at launch (may have been deleted by hand). */
  private readonly suspectProfiles = new Set<string>();
  /** Run UID -> when its still-running machine was last checked for an exit code. */
  private readonly probedAt = new Map<string, number>();
  /** How far the launcher's log of each Run being set up has been read. */
  private readonly startProbes: StartProbes;

  constructor(opts: AwsProviderOptions = {}) {
    this.opts = opts;
    this.unlistedLaunchMs = opts.unlistedLaunchMs ?? UNLISTED_LAUNCH_MS;
    this.startProbes = new StartProbes(opts.startProbeLimit ?? startProbeLimitFor(opts.pollIntervalMs));
    this.clients = new AwsClientCache({
      ...(opts.clientFactory !== undefined ? { factory: opts.clientFactory } : {}),
      ...(opts.cacheSize !== undefined ? { max: opts.cacheSize } : {}),
    });
  }

  /** How many Runs being set up one describe reads at most (see AwsProviderOptions.startProbeLimit). */
  get startProbeLimit(): number {
    return this.startProbes.limit;
  }

  /** The clients for a CE's credentials and region. Throws Terminal for a bad Secret or spec. */
  clientsFor(ctx: EnvContext): AwsClients {
    const region = ctx.ce.spec.aws?.region;
    if (!region) throw CloudError.terminal("InvalidSpec", "spec.aws.region: required when spec.provider is aws");
    const o: AwsClientOptions = { credentials: withSpecRole(ctx), region };
    if (this.opts.endpoint !== undefined) o.endpoint = this.opts.endpoint;
    if (this.opts.maxAttempts !== undefined) o.maxAttempts = this.opts.maxAttempts;
    if (this.opts.logger !== undefined) o.logger = this.opts.logger;
    // secretName is already "namespace/name".
    if (ctx.credentials.secretName !== undefined) o.secretLabel = ctx.credentials.secretName;
    return withAbortSignal(this.clients.get(o), ctx.signal);
  }

  // Every method is async so that a bad Secret or spec (thrown while picking clients) arrives as
  // a rejected promise like any other failure.
  async observeEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    return observeAwsEnvironment(this.clientsFor(ctx), ctx);
  }

  async provisionEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    const uid = ctx.ce.metadata.uid ?? "";
    const profileSuspect = this.suspectProfiles.has(uid);
    const obs = await provisionAwsEnvironment(this.clientsFor(ctx), ctx, { profileSuspect });
    if (profileSuspect) this.suspectProfiles.delete(uid);
    return obs;
  }

  environmentSuspect(ce: ComputeEnvironment): boolean {
    return this.suspectProfiles.has(ce.metadata.uid ?? "");
  }

  async disposeEnvironment(ctx: EnvContext): Promise<void> {
    return disposeAwsEnvironment(this.clientsFor(ctx), ctx);
  }

  async launchRun(ctx: EnvContext, run: Run, hints?: LaunchHints): Promise<RunDescription> {
    // The token only reaches user data when the CE opted in (launcher.ts decides; never logged).
    try {
      return await launchRun(this.clientsFor(ctx), ctx, run, {
        ...(ctx.platformToken !== undefined ? { platformToken: ctx.platformToken } : {}),
        ...(hints?.firstAttempt ? { firstAttempt: true } : {}),
      });
    } catch (e) {
      // EC2 kept refusing the CE's profile: the next provisioning creates it again if it is gone.
      if (e instanceof CloudError && e.reason === "InstanceProfileNotPropagated") this.suspectProfiles.add(ctx.ce.metadata.uid ?? "");
      throw e;
    }
  }

  async describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription | undefined>> {
    const every = this.opts.runningExitProbeMs ?? 5 * 60_000;
    const now = Date.now();
    for (const [uid, at] of this.probedAt) if (now - at > 2 * every) this.probedAt.delete(uid);
    const probeRunning = (run: Run): boolean => {
      const uid = run.metadata.uid ?? "";
      const since = Date.parse(run.status?.startTime ?? run.status?.launchedAt ?? "");
      if (!Number.isFinite(since) || now - since < every) return false;
      if (now - (this.probedAt.get(uid) ?? 0) < every) return false;
      this.probedAt.set(uid, now);
      return true;
    };
    return describeRuns(this.clientsFor(ctx), ctx, runs, {
      probeRunning,
      startProbes: this.startProbes,
      ...(this.opts.missingProbeAfterMs !== undefined ? { missingProbeAfterMs: this.opts.missingProbeAfterMs } : {}),
    });
  }

  async terminateRun(ctx: EnvContext, run: Run): Promise<void> {
    await terminateRun(this.clientsFor(ctx), ctx, run);
  }

  async terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
    return (await terminateRuns(this.clientsFor(ctx), ctx, runs)).failed;
  }

  async readRunLog(ctx: EnvContext, run: Run, from?: string): Promise<RunLogChunk> {
    return readRunLog(this.clientsFor(ctx), ctx, run, from);
  }

  async sweepOrphans(ctx: EnvContext, liveRunUids: Set<string>): Promise<string[]> {
    return sweepOrphans(this.clientsFor(ctx), ctx, liveRunUids);
  }
}

/**
 * Without a credentials Secret, spec.aws.roleArn (+ externalId) names a role to assume with the
 * operator's ambient identity (IRSA, EKS Pod Identity, ...): it travels as the ambient credentials'
 * roleArn/externalId, which credentials.ts assumes exactly as it assumes a Secret's role, and
 * which also key the client cache (one client set per role). Admission refuses it next to a Secret.
 */
function withSpecRole(ctx: EnvContext): EnvContext["credentials"] {
  const aws = ctx.ce.spec.aws;
  if (ctx.credentials.source !== "ambient" || !aws?.roleArn) return ctx.credentials;
  return { ...ctx.credentials, data: { ...ctx.credentials.data, roleArn: aws.roleArn, ...(aws.externalId ? { externalId: aws.externalId } : {}) } };
}

type Sendable = { send: (command: never, options?: { abortSignal?: AbortSignal }) => Promise<unknown> };

/**
 * The same clients, with every `send` carrying the reconcile's abort signal, so a reconcile that
 * passed its deadline stops waiting on AWS. The cached clients themselves are shared and untouched.
 */
export function withAbortSignal(clients: AwsClients, signal: AbortSignal | undefined): AwsClients {
  if (!signal) return clients;
  const wrap = <C extends object>(client: C): C =>
    new Proxy(client, {
      get(target, prop, receiver) {
        if (prop !== "send") return Reflect.get(target, prop, receiver) as unknown;
        const send = (target as unknown as Sendable).send.bind(target);
        return (command: never, options?: { abortSignal?: AbortSignal }) => send(command, { abortSignal: signal, ...(options ?? {}) });
      },
    });
  return { ...clients, ec2: wrap(clients.ec2), iam: wrap(clients.iam), logs: wrap(clients.logs), s3: wrap(clients.s3), sts: wrap(clients.sts) };
}
