/**
 * The one interface every cloud implements. Controllers talk only to this; cloud SDKs are
 * imported only below src/cloud/<provider>/.
 */
import type { Logger } from "../engine/logger.js";
import type {
  CloudResourceRef,
  ComputeEnvironment,
  ComputeEnvironmentStatus,
  Run,
  RunStatus,
} from "../api/types.js";

export type CloudErrorKind = "NotFound" | "Retryable" | "Terminal";

/**
 * A typed failure from a provider.
 * - NotFound: the thing asked about does not exist (callers usually treat it as done).
 * - Retryable: try again later (throttling, eventual consistency, a blip). `retryAfterMs` hints when.
 * - Terminal: the input is wrong or permissions are missing; retrying without a change won't help.
 *   `reason` is a CamelCase word for conditions, `message` is for people and names the field.
 */
export class CloudError extends Error {
  readonly kind: CloudErrorKind;
  readonly reason: string;
  readonly retryAfterMs: number | undefined;
  /** Retryable because the cloud has no capacity or quota for the machine now: the Run waits Pending. */
  readonly capacity: boolean;
  /**
   * With `capacity`: a machine of the Run that the cloud accepted and could not place, found by the
   * call and not gone yet (its deletion sent, or failed for now). The Run records it while it waits,
   * so that its ending terminates it.
   */
  readonly unplacedId: string | undefined;
  /**
   * With `capacity`: not a new refusal but one the Run already waits for, whose unplaced machine is
   * still there (being deleted). The wait goes on without counting it.
   */
  readonly known: boolean;

  constructor(kind: CloudErrorKind, reason: string, message: string, opts?: { retryAfterMs?: number; cause?: unknown; capacity?: boolean; unplacedId?: string; known?: boolean }) {
    super(message, opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "CloudError";
    this.kind = kind;
    this.reason = reason;
    this.retryAfterMs = opts?.retryAfterMs;
    this.capacity = opts?.capacity ?? false;
    this.unplacedId = opts?.unplacedId;
    this.known = opts?.known ?? false;
  }

  /**
   * No capacity or quota for the machine now: the Run stays Pending with `reason` and retries with
   * backoff. No machine was made by this call; `unplacedId` names one an earlier attempt made that
   * the cloud could not place and that is not gone yet; `known`: that refusal is the one the Run
   * already waits for (LaunchHints.capacityReason), not a new one.
   */
  static capacity(reason: string, message: string, cause?: unknown, unplacedId?: string, known = false): CloudError {
    return new CloudError("Retryable", reason, message, { cause, capacity: true, known, ...(unplacedId !== undefined ? { unplacedId } : {}) });
  }

  static notFound(reason: string, message: string): CloudError {
    return new CloudError("NotFound", reason, message);
  }
  static retryable(reason: string, message: string, retryAfterMs?: number, cause?: unknown): CloudError {
    return new CloudError("Retryable", reason, message, { retryAfterMs, cause });
  }
  static terminal(reason: string, message: string, cause?: unknown): CloudError {
    return new CloudError("Terminal", reason, message, { cause });
  }
}

export function isCloudError(e: unknown, kind?: CloudErrorKind): e is CloudError {
  return e instanceof CloudError && (kind === undefined || e.kind === kind);
}

/**
 * Joins calls made side by side: waits until every one has settled, then gives their values, or
 * throws the most telling failure: a Terminal CloudError first, else one that is no CloudError
 * (a bug or an abort), else the one with the longest wait hint (so the retry does not come
 * before a throttled call may go again), else the first.
 * Promise.all gives up at the first failure and leaves the others running: an SDK call still
 * honouring a Retry-After would then send its retry in the background, beside the next attempt
 * of the reconcile that gave up on it, and the cloud would see the request twice and its hint
 * ignored. Cloud code joins its parallel calls with this (lint forbids Promise.all there).
 */
export async function settleAll<T extends readonly unknown[] | []>(calls: T): Promise<{ -readonly [P in keyof T]: Awaited<T[P]> }> {
  const results = (await Promise.allSettled(calls)) as PromiseSettledResult<unknown>[];
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => r.reason as unknown);
  if (failed.length > 0) {
    const hinted = failed.filter((e): e is CloudError => isCloudError(e) && (e.retryAfterMs ?? 0) > 0);
    const longest = hinted.reduce<CloudError | undefined>((a, e) => (a && (a.retryAfterMs ?? 0) >= (e.retryAfterMs ?? 0) ? a : e), undefined);
    // A failure that is no CloudError is a bug or an abort: not hidden behind a passing refusal.
    throw failed.find((e) => isCloudError(e, "Terminal")) ?? failed.find((e) => !isCloudError(e)) ?? longest ?? failed[0];
  }
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as { -readonly [P in keyof T]: Awaited<T[P]> };
}

/** Runs fn over the items, `limit` at a time; after a failure no new item starts, and it is thrown once the running ones end. */
export async function forEachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const workers = Array.from({ length: Math.min(Math.max(1, limit), items.length) }, async () => {
    while (next < items.length && !failed) {
      const item = items[next++] as T;
      try {
        await fn(item);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  });
  await settleAll(workers);
}

/** Credentials as read from the CE's Secret (or an empty map for the ambient identity). Never logged. */
export interface ResolvedCredentials {
  source: "secret" | "ambient";
  /** Secret name, for messages. */
  secretName?: string;
  data: Record<string, string>;
}

export interface EnvContext {
  ce: ComputeEnvironment;
  credentials: ResolvedCredentials;
  logger: Logger;
  signal?: AbortSignal;
  /**
   * The Seqera Platform token from spec.platformTokenSecretRef, when set and readable (launches
   * only). Providers decide whether and how it may reach the machine. Never logged.
   */
  platformToken?: string;
  /**
   * Called by a provider that sets `announcesCloudWrites` right before its first write to the
   * cloud (the reconciler records it, so deletion knows whether there may be anything to dispose).
   */
  beforeCloudWrite?: () => Promise<void>;
  /**
   * describeRuns only: the ComputeEnvironment of each Run of the batch. The run tracker asks once
   * per account and region (AWS) or subscription (Azure) and credentials, so one batch may hold
   * Runs of several CEs that share them; `ce` is one of those CEs (its credentials are the
   * batch's). Unset: every Run belongs to `ce`.
   */
  runCe?: (run: Run) => ComputeEnvironment | undefined;
  /**
   * describeRuns only: what the tracker's last look saw of each Run's machine (never what a launch
   * recorded; undefined where that look did not list one). Given, a provider may ask the cloud
   * only for machines whose state can still change what a Run knows, and take those it does not
   * list as they were. Unset: every machine is looked at. The tracker leaves it unset at least
   * once every few minutes (RunTrackerDeps.fullLookEveryMs), so nothing inferred lasts longer.
   */
  observed?: (run: Run) => RunDescription | undefined;
}

export interface EnvObservation {
  /** Every cloud resource the environment owns, as found. */
  resources: CloudResourceRef[];
  /** True when every resource the environment needs is in place and valid. */
  ready: boolean;
  /** Human-readable names of what is missing (empty when ready). */
  missing: string[];
  /** Provider-specific status fields to merge into the CE status (e.g. `aws`). */
  status: Partial<ComputeEnvironmentStatus>;
  /**
   * Providers that validate against the cloud list here the checks that could not run and why (e.g.
   * a missing read permission); empty means all ran. Becomes the Validated condition.
   */
  notes?: string[];
}

export type MachineState =
  | "pending"
  | "running"
  | "stopping"
  | "stopped"
  | "shutting-down"
  | "terminated"
  | "unknown";

export interface RunDescription {
  instanceId: string;
  state: MachineState;
  /** Why the machine is in this state (e.g. a Spot interruption), when the cloud says. */
  stateReason?: string;
  /**
   * The cloud did not list the machine: the description is the provider's inference from what the
   * Run recorded (gone, with its outcome if one was found), not something the cloud showed.
   */
  unlisted?: boolean;
  /** The cloud took the machine back (a Spot interruption or eviction): not the pipeline's failure. */
  interrupted?: boolean;
  /** The Run's reason for an interruption (default SpotInterrupted; Azure says SpotEvicted). */
  interruptionReason?: string;
  /**
   * The cloud accepted the machine but could not place it (capacity or quota, e.g. Azure's
   * AllocationFailed). Said at every look while the machine is there; the Run goes back to Pending
   * with this reason, then terminates the machine (terminateRun), and is launched again with
   * backoff, until its timeout.
   */
  launchFailure?: { reason: string; message: string };
  /** The machine's set-up step that failed before the pipeline started (with exitCode), e.g. "docker". */
  bootstrapStep?: string;
  /** The pipeline's exit code, once known (exit line in the log or uploaded exit status). */
  exitCode?: number;
  /**
   * The launcher said the pipeline started (providers that set `reportsPipelineStart`). Until
   * then a Run whose machine is up stays Launching: the machine is still being set up.
   */
  pipelineStarted?: boolean;
  /** Reading the Run's log or outcome failed in a way a retry will not fix (e.g. a missing permission). */
  readError?: { reason: string; message: string };
  /**
   * This look read (or tried to read, and was refused) the Run's log or outcome. A description
   * without it says nothing of whether reads work: the tracker keeps the last readError until a
   * look that read says otherwise (see mergeLearned), so a refusal is not forgotten between reads.
   */
  readAttempted?: boolean;
  /**
   * The machine has ended but its outcome is not known yet: it could not be read (see readError),
   * or it may still be on its way (e.g. an exit line the cloud's log service has not made
   * queryable yet). The Run must not be given an outcome from this description; it waits.
   */
  outcomeUnknown?: boolean;
  /**
   * With outcomeUnknown: no read was refused; the outcome may still be on its way (an exit line
   * not queryable yet), and the provider bounds that wait (a later look gives the outcome, or ends
   * the Run without one; a read failing for now is asked again within that bound). The machine has
   * ended (or is being deleted), so a Run timeout not acted on yet waits for it, as for a known
   * outcome, while recent looks say so. Not set for a refused read, nor once the provider's bound
   * is over: the timeout is then what bounds the wait.
   */
  outcomeDue?: boolean;
  /**
   * The Run's reason when its machine ended without an exit code and none is awaited any more
   * (default MachineTerminated; Azure says MachineStopped for a VM it saw stopped).
   */
  noOutcomeReason?: string;
  launchedAt?: string;
  instance?: RunStatus["instance"];
  /** Where the Run's log lives, when the provider knows (set by launchRun at least). */
  log?: RunStatus["log"];
  /**
   * Where the machine says its Run's outcome is uploaded (the work directory it was launched
   * with), when the provider records that on the machine; kept so a later look that infers the
   * machine from this one reads the outcome from the same place.
   */
  artifacts?: string;
}

export interface RunLogChunk {
  lines: string[];
  /** Opaque cursor to continue from; undefined when the log does not exist yet. */
  next?: string;
}

export interface LaunchHints {
  firstAttempt?: boolean;
  /**
   * The capacity or quota reason the Run's last attempt was refused with, as far as the operator
   * knows: a provider that finds that attempt's machine still being removed waits with it (a
   * `known` refusal, not counted again).
   */
  capacityReason?: string;
}

export interface CloudProvider {
  readonly name: string;
  /**
   * True when provisionEnvironment calls ctx.beforeCloudWrite before its first cloud write (and so
   * reads first without writing). Otherwise the reconciler assumes any provisionEnvironment call may write.
   */
  readonly announcesCloudWrites?: boolean;
  /**
   * True when describeRuns sets `pipelineStarted` once the launcher on the machine says the
   * pipeline started; a Run is then Running only from that moment, not merely when its machine is
   * up. Otherwise a running machine counts as a running pipeline.
   */
  readonly reportsPipelineStart?: boolean;
  /**
   * How long after a launch call the machine it made may still be missing from describeRuns and
   * from terminateRun's own look-up (eventual consistency); 0 or absent when the cloud finds it at
   * once (e.g. by a name fixed in advance). A Run whose launch was decided but whose machine was
   * never recorded (the answer lost, the operator stopped) counts as having none only once a
   * termination sent this long after the decision found nothing.
   */
  readonly unlistedLaunchMs?: number;
  /** Read-only look at the environment's cloud resources. */
  observeEnvironment(ctx: EnvContext): Promise<EnvObservation>;
  /** Idempotent create / adopt / update. Throws CloudError Terminal on bad input. */
  provisionEnvironment(ctx: EnvContext): Promise<EnvObservation>;
  /** Deletes only what carries this CE's ownership tag; missing pieces count as done. */
  disposeEnvironment(ctx: EnvContext): Promise<void>;
  /**
   * True when a Run's launch gave reason to doubt the environment's resources (e.g. EC2 kept
   * refusing its instance profile, which may have been deleted by hand): the ComputeEnvironment is
   * then provisioned again at once rather than at its next drift check.
   */
  environmentSuspect?(ce: ComputeEnvironment): boolean;
  /**
   * Idempotent launch (the Run's UID is the idempotency token). `hints.firstAttempt` says no launch
   * of this Run was ever tried before (this reconcile just wrote the decision, and no machine is
   * recorded), so a provider may skip looking for a machine an earlier attempt made. A machine of
   * an earlier attempt that the cloud refused its place (launchFailure) is not taken for the
   * Run's: the provider removes it and throws a capacity error naming it (`unplacedId`; the Run
   * waits again, with that machine recorded until it is gone).
   */
  launchRun(ctx: EnvContext, run: Run, hints?: LaunchHints): Promise<RunDescription>;
  /** One batched call for all given Runs; a Run with no machine maps to undefined. Keyed by Run UID. */
  describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription | undefined>>;
  /** Stops the Run's machine; no machine counts as done. */
  terminateRun(ctx: EnvContext, run: Run): Promise<void>;
  /**
   * Whether a consistent read finds the Run's machine refused its place now (RunDescription's
   * launchFailure came from a look whose list may lag behind the cloud: the machine may be
   * deleted, or made anew under the same name since). Without it, a look's word is taken.
   */
  confirmUnplaced?(ctx: EnvContext, run: Run): Promise<boolean>;
  /**
   * terminateRun for several Runs of the CE in ctx (deleted together), in as few calls as the cloud
   * allows. Resolves to the Runs whose termination could not be sent, by UID, with why; the others'
   * was. Throws when a call they all share fails.
   */
  terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>>;
  /** Reads the Run's log from a cursor. */
  readRunLog(ctx: EnvContext, run: Run, from?: string): Promise<RunLogChunk>;
  /** Terminates machines carrying this CE's ownership tags whose Run UID is not in `liveRunUids`. Returns what it stopped. */
  sweepOrphans?(ctx: EnvContext, liveRunUids: Set<string>): Promise<string[]>;
}
