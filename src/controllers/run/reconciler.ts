/**
 * Run reconciler. A Run is once-only: it launches at most one machine, follows it to an end and
 * makes sure it is gone. Observations of machines come from the RunTracker (one batched cloud call
 * per account and region), so a reconcile never calls the cloud per Run just to look.
 */
import type { KubeClient } from "../../engine/kube.js";
import { KubeApiError, splitKey } from "../../engine/kube.js";
import { lazyChild, type Logger } from "../../engine/logger.js";
import { monotonicNow } from "../../engine/clock.js";
import type { EventRecorder } from "../../engine/events.js";
import type { ReconcileResult } from "../../engine/controller.js";
import type { OwnWrites } from "../../engine/echoes.js";
import { ANNOTATION_LAUNCHED_UNDER, ANNOTATION_LAUNCH_DECIDED } from "../../api/constants.js";
import { hasFinalizer, markWithFinalizer, removeFinalizer } from "../../engine/finalizers.js";
import { getCondition, setCondition, updateStatus } from "../../engine/conditions.js";
import type { Condition } from "../../engine/conditions.js";
import type { ComputeEnvironment, Run, RunStatus } from "../../api/types.js";
import { ComputeEnvironmentResource, RunResource, parseDuration } from "../../api/types.js";
import { DEFAULT_RUN_TIMEOUT } from "../../api/schema.js";
import type { CloudProvider, EnvContext, RunDescription } from "../../cloud/provider.js";
import { CloudError } from "../../cloud/provider.js";
import type { SecretGetter } from "../shared.js";
import { FINALIZER, clip, describeError, now, readSecretKey, refusedForGood, resolveCredentials } from "../shared.js";
import { LAUNCH_RETRYING, PRE_LAUNCH_REASONS, belongsTo, holdsSlot, isTerminal, launchDecided, launchInFlight, launchedUnder, machineMayExist } from "./phases.js";
import { CLOUD_WRITES_ANNOTATION, announceCloudWrites } from "../computeenvironment/cloud-writes.js";
import type { CacheSource, ListSource, Observation, RunTracker } from "./tracker.js";
import { runsOfCe } from "./tracker.js";
import type { GoneComputeEnvironments } from "./gone-ces.js";
import { ceOfRun, standIn } from "./gone-ces.js";
import { noteFreshRead } from "../fresh-reads.js";
import { TerminationBatches, sentFor, type BatchedTermination } from "./terminations.js";

export interface RunDeps {
  client: KubeClient;
  providers: ReadonlyMap<string, CloudProvider>;
  logger: Logger;
  events: EventRecorder;
  /** The Run watch cache; with get(), reconciles read the Run from it instead of the API. */
  runs: ListSource<Run> | CacheSource<Run>;
  /** The ComputeEnvironment watch cache; without it the CE is read from the API. */
  ces?: CacheSource<ComputeEnvironment>;
  /** ComputeEnvironments removed while Runs launched under them may have machines (gone-ces.ts): the one a Run's machine is of. */
  goneCes?: Pick<GoneComputeEnvironments, "find" | "inferFrom" | "inferredVia">;
  /** Reads Secrets (from the cache); default: a GET. */
  secrets?: SecretGetter;
  tracker: RunTracker;
  enqueueRun: (key: string) => void;
  enqueueComputeEnvironment: (key: string) => void;
  /**
   * Writes of this Run's reconcile whose watch events need no reconcile, as the reconcile that
   * wrote returns when to look next or throws (OwnWrites): the launch decision, LaunchRetrying, the
   * machine recorded while pending, and the Launching, SettingUp and Running writes of what a look saw.
   */
  ownWrites?: Pick<OwnWrites, "begin" | "end">;
  /** How often an active Run is looked at again. */
  pollIntervalMs: number;
  /** A launched machine the cloud does not know after this long is declared lost. */
  machineLostAfterMs?: number;
  /**
   * How long a machine may keep running after its pipeline ended (its own shutdown should end it)
   * before the operator terminates it and says so. Default 8 polls (2 min at the default 15 s poll).
   */
  endGraceMs?: number;
  /** Wait before trying again to terminate a machine after a Terminal error (default 20 polls, 5 min at 15 s, at least 5 s). */
  blockedRetryMs?: number;
  /**
   * How long a look for a removed CE's machines that the cloud refused (reachWith) stands before it
   * is asked again: the Runs reconciled meanwhile (a resync brings them all) share its answer.
   * Default 4 polls (1 min at 15 s), at least 2 s, at most 1 min.
   */
  refusedLookHoldMs?: number;
  /**
   * How long the first Run of a CE to end (deleted, cancelled, timed out) waits for others before
   * their machines' termination is sent in one call (TerminationBatches). Default 250 ms.
   */
  terminationGatherMs?: number;
}

/** At most this many Runs' terminations in one call (EC2's TerminateInstances takes 1,000 IDs). */
const TERMINATION_BATCH_MAX = 1_000;

/**
 * How long a Run whose machine is pending or running waits, at most, before it is looked at again
 * when nothing changes: the run tracker wakes it whenever a poll sees its machine differently
 * (state, outcome, the pipeline's start, a read error), so this is only a backstop, as the
 * watches' periodic resync is. Never shorter than the poll interval.
 */
const QUIET_FOLLOW_MS = 5 * 60_000;

/**
 * A Run this process has not looked at yet (after a start) is not timed out before this many
 * polls: the first look decides whether its pipeline already ended, and a poll whose describe
 * failed did not look. Beyond it the timeout bounds a cloud that cannot be read.
 */
const FIRST_LOOK_POLLS = 3;

/** Bounds `n` polls to [min, max]: waits that scale with the poll interval. */
function polls(pollIntervalMs: number, n: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, n * pollIntervalMs));
}

type Phase = NonNullable<RunStatus["phase"]>;

/** Detail condition: the operator terminated a machine still running after its pipeline ended. */
export const MACHINE_LINGERED = "MachineLingered";
/** Detail condition: reading the Run's log is refused by the cloud (e.g. logs:GetLogEvents denied). */
export const LOG_READ_BLOCKED = "LogReadBlocked";
/** What a Run ended by its spec.cancel says. */
const CANCELLED_MESSAGE = "cancelled by spec.cancel";
/** Detail condition: terminating the machine is blocked by a Terminal cloud error. */
export const MACHINE_BLOCKED = "MachineTerminationBlocked";
/**
 * Detail condition: the Run was found past its timeout and its machine's termination is asked
 * for. Written (guarded) before that termination is sent, its message is the Run's final one: an
 * operator that starts after the timeout was decided and before the Run ended ends it Timeout too,
 * with the timeout it was found past (not MachineTerminated, nor by a timeout raised since), and
 * does not wait for a look first. It goes if the Run ends otherwise first (finish).
 */
export const TIMED_OUT = "TimedOut";
/** The longest wait between launch attempts refused for capacity or quota. */
const CAPACITY_BACKOFF_MAX_MS = 5 * 60_000;

/** How long a CE's cloud-writes record, once written, is taken as written without the cache showing it (announceOnce). */
const ANNOUNCED_HOLD_MS = 10_000;
/** A batched termination failing this many times in a row is said on the Run (batchedTermination). */
const TERMINATION_FAILURES_SAID = 4;

export class RunReconciler {
  /** CE uid -> Run uids that hold a slot but may not show it in the cache yet. */
  private readonly claims = new Map<string, Set<string>>();
  /** Run UID -> a launch refused for good while an earlier attempt's machine may exist (see failAfterStop). */
  private readonly refusedLaunch = new Map<string, { reason: string; message: string }>();
  /** Serialises launch decisions per CE so the concurrency limit holds across workers. */
  private readonly ceLocks = new Map<string, Promise<void>>();
  /**
   * CE uid -> its cloud-writes record being written, or written at `doneAt` (announceOnce): the
   * Runs of one CE launched together share one PATCH, instead of one each until the watch brings
   * the record.
   */
  private readonly announcing = new Map<string, { writing: Promise<void>; doneAt?: number }>();
  /** The per-reconcile logger carries its reconcile's abort signal to the cloud calls. */
  private readonly signals = new WeakMap<Logger, AbortSignal>();
  /** Run uid -> until when termination is not tried again after a Terminal error (e.g. AccessDenied). */
  private readonly blocked = new Map<string, number>();
  /**
   * Run uid -> the termination of its machine (for a deletion, a cancel, a timeout, a failed
   * launch), kept while an ended Run's machine is followed:
   * - `last`: when it was last sent (stopMachine); a deleted Run's finalizer and an ended Run's
   *   follow-up read it (resendWait);
   * - `settled`: when one was first sent that settles it: for a deleted Run, a machine the cloud
   *   does not list after that counts as gone (see stopMachine);
   * - `failures`, `retryAt`: a batched termination that failed and may be tried again (throttled,
   *   timed out, not resent): how many times in a row, and not added to a batch again before
   *   `retryAt` (monotonic ms). The reconcile that adds a Run to a batch ends without an error,
   *   which resets the work queue's own backoff, so the waits between tries are counted here;
   * - `timedOut`: the timeout the Run was past when its termination was first asked for, so it
   *   ends Timeout even if its CE's defaultRunTimeout is raised before the batch's call has ended.
   */
  private readonly ending = new Map<string, { last?: number; settled?: number; failures?: number; retryAt?: number; timedOut?: string }>();
  /**
   * Run uid -> when a launch call of its decided launch was last made (or, after a restart, when
   * this operator first found the launch decided) while no machine of it is recorded: until the
   * provider's listing lag has passed since, "not listed" does not mean "not made".
   */
  private readonly launchTriedAt = new Map<string, number>();
  /**
   * Run UID -> what reachWith's look with the CE of its name (`asked`: UID, generation, Secret)
   * found of its machine: found, not found (asked once), or not found yet while the cloud may not
   * list it (looked for again from `until`).
   */
  private readonly looked = new Map<string, { asked: string; found?: true; until?: number }>();
  /**
   * reachWith's looks, by the removed CE's UID and the CE looking (as in `looked`): the one in
   * flight, and one the cloud refused (its answer until `until`).
   */
  private readonly looks = new Map<string, Promise<{ refused?: string }>>();
  private readonly refusedLooks = new Map<string, { until: number; refused: string }>();
  /**
   * Run uid -> launch attempts refused for capacity or quota so far (the backoff grows with it),
   * and when the next may be made: the Run's own status write of the refusal brings it back at
   * once, and that must not be a new attempt.
   */
  private readonly capacityAttempts = new Map<string, { refused: number; retryAt: number; reason: string }>();
  /**
   * Runs whose last launch call failed without an answer (not a capacity refusal): the VM a retry
   * finds unplaced may be that call's, a new refusal, so the wait's reason is not passed as known.
   */
  private readonly launchUnanswered = new Set<string>();

  /** The terminations of Runs ending about the same time (deleted, cancelled, timed out, failed after a launch, ended with their machine up), sent per CE in one call (batchedTermination). */
  private readonly terminations: TerminationBatches;

  constructor(private readonly d: RunDeps) {
    this.terminations = new TerminationBatches({
      gatherMs: d.terminationGatherMs ?? 250,
      maxRuns: TERMINATION_BATCH_MAX,
      // 2 minutes, as the controller's per-reconcile deadline bounded each Run's own call, and 1 s
      // more per Run (Azure deletes 8 VMs at a time).
      callTimeoutMs: (runs) => 2 * 60_000 + runs * 1_000,
      send: async (ce, provider, runs, signal) => {
        const log = lazyChild(d.logger, { computeEnvironment: `${ce.metadata.namespace}/${ce.metadata.name}` });
        this.signals.set(log, signal);
        const failed = await provider.terminateRuns(await this.context(ce, log), runs);
        // Refusals for good are each Run's to say (a condition and an Event, see terminate).
        const later = [...failed.values()].filter((e) => !refusedForGood(e)).length;
        if (later > 0 && !signal.aborted) log.warn({ runs: runs.length, later }, "the machines of %d Runs were not terminated this time; tried again after a wait", later);
        return failed;
      },
      // Once per call, not per Run (each Run's reconcile takes its outcome quietly, see batchedTermination).
      failed: (ce, runs, err) => {
        const { reason, message } = describeError(err);
        d.logger.warn({ computeEnvironment: `${ce.metadata.namespace}/${ce.metadata.name}`, runs, reason }, "terminating the machines of the Runs failed: %s", message);
      },
      wake: (run) => d.enqueueRun(this.key(run)),
    });
  }

  /** Stops sending batched terminations (shutdown, leadership lost): one in flight is aborted. */
  stop(reason: Error): void {
    this.terminations.close(reason);
  }

  private key(run: Run): string {
    return `${run.metadata.namespace}/${run.metadata.name}`;
  }

  /**
   * The Run as the watch cache holds it (a private copy), or from the API without a cache.
   *
   * Reads come from the caches, as in controller-runtime; a stale read cannot do harm because:
   * - every phase transition is written with a resourceVersion precondition, so a decision taken
   *   on a stale Run fails with 409 and is retaken on the fresh one;
   * - the launch decision is written with a resourceVersion precondition too (the finalizer and
   *   an annotation, one write), so a stale Run cannot be launched a second time;
   * - a Run whose launch was decided but has no recorded machine is re-read from the API before the
   *   launch is retried (the cache may not show the machine we recorded a moment ago);
   * - a launched machine whose recording meets a newer version of the Run (409) is recorded on that
   *   version, read from the API;
   * - the CE reconciler lists Runs from the API before disposing of the environment;
   * - Secrets protected by vmforge are released from a fresh list (releaseUnusedSecrets).
   */
  private async read(key: string): Promise<Run | undefined> {
    const runs = this.d.runs;
    if ("get" in runs) {
      const cached = runs.get(key);
      return cached ? structuredClone(cached) : undefined;
    }
    const { namespace, name } = splitKey(key);
    return this.d.client.get<Run>(RunResource, namespace, name);
  }

  /**
   * The CE as cached, without a copy (one per reconcile cost as much as copying the Run). A Run's
   * reconcile never changes its CE object: changes go to the API (announceCloudWrites) or to
   * copies (standIn, the gone CE below). The operator's CE cache freezes what it holds, so a
   * change made by mistake throws instead of reaching the cache.
   */
  private async readCe(namespace: string | undefined, name: string): Promise<ComputeEnvironment | undefined> {
    if (this.d.ces) return this.d.ces.get(`${namespace}/${name}`);
    return this.d.client.get<ComputeEnvironment>(ComputeEnvironmentResource, namespace, name);
  }

  /**
   * The fast path of a new Run: writes its first status (Pending/Accepted) and nothing else, so
   * every Run shows a phase within moments of its creation whatever the launch backlog. Run by a
   * controller of its own; a Run that already has a phase is left alone.
   */
  async acknowledge(key: string): Promise<ReconcileResult> {
    const run = await this.read(key);
    if (!run || run.status?.phase || run.metadata.deletionTimestamp) return;
    try {
      await this.accept(run);
    } catch (e) {
      // Someone wrote the Run meanwhile (a hand edit, another leader): its own event decides what is next.
      if (e instanceof KubeApiError && e.status === 409) return;
      throw e;
    }
    return;
  }

  private async accept(run: Run): Promise<void> {
    const message = `accepted; checking ComputeEnvironment ${run.spec.computeEnvironmentRef.name}`;
    await this.report(run, { phase: "Pending", reason: "Accepted", message }, "False", "Accepted", message);
  }

  /** `signal` aborts when the controller's per-reconcile deadline passes; it reaches the provider. */
  async reconcile(key: string, signal?: AbortSignal): Promise<ReconcileResult> {
    const { namespace } = splitKey(key);
    const run = await this.read(key);
    if (!run) return;
    const log = lazyChild(this.d.logger, { run: key });
    if (signal) this.signals.set(log, signal);
    // The CE this Run goes with (ceOfRun). A CE of the name that is not the one this Run's machine
    // was launched under (that one was removed by force and the name taken again) is `replaced`:
    // the machine is not its to follow. Removed by force while this Run's machine may exist: what
    // the CE last said (account, region or subscription, credentials) still reaches the machine,
    // so it is terminated, not left.
    const named = await this.readCe(namespace, run.spec.computeEnvironmentRef.name);
    const resolved = ceOfRun(run, named, this.d.goneCes);
    let ce = resolved.ce;
    const replaced = resolved.replaced;
    let gone = resolved.gone ? ce : undefined;
    let lookRefused: string | undefined;
    if (!ce && replaced && machineMayExist(run)) {
      const look = await this.reachWith(run, replaced, log);
      // Not found, but launched too lately for the cloud to list it yet: looked for again then.
      if (!look.ce && look.wait !== undefined) return { requeueAfterMs: look.wait };
      ({ ce: gone, refused: lookRefused } = look);
    }
    if (gone) {
      ce = structuredClone(gone);
      // Gone, so no finalizer of it will stop the machine (its last cached state may still show one).
      ce.metadata.finalizers = [];
    }
    const provider = ce ? this.d.providers.get(ce.spec.provider) : undefined;

    if (run.metadata.deletionTimestamp) return this.finalize(run, ce, provider, log);
    if (isTerminal(run)) {
      if (await this.expire(run, log)) return;
      // Failed earlier as unreachable (by this operator before a look found it, or by another):
      // the Run now says that its machine was found and is terminated.
      if (gone && ce && this.d.goneCes?.inferredVia(ce) !== undefined && run.status?.reason === "ComputeEnvironmentGone" && run.status.phase === "Failed") {
        const message = goneMessage(run, ce, this.inferred(run, ce));
        if (run.status.message !== message) await this.report(run, { message }, "False", "ComputeEnvironmentGone", message);
      }
      return soonest(await this.afterEnd(run, ce, provider, log), ttlWake(run));
    }

    // The finalizer comes with the launch decision (one write; see maybeLaunch): a Run that never
    // got that far has nothing in the cloud to dispose of.
    if (!run.status?.phase) {
      // Its first status is the run-ack controller's write (acknowledge), and that write's watch
      // event brings the Run back here. Writing it here as well raced that write (a 409 and a
      // retry, or a decision written over a status this reconcile had not seen).
      return;
    }
    const phase: Phase = run.status.phase;

    // A cancel stands over the timeout, whichever came first, as it does for a launched Run (whose
    // cancel is taken below, before it is followed): a Run the user cancelled ends Cancelled. With
    // nothing in the cloud it ends at once, whether its CE exists or not.
    const cancelled = run.spec.cancel === true;
    if (cancelled && !machineMayExist(run)) {
      await this.finish(run, "Cancelled", "Cancelled", CANCELLED_MESSAGE);
      return;
    }

    // The timeout also bounds a Run that cannot get a machine (waiting for its CE, a slot or capacity).
    // Not one that ends below anyway, as a launched Run would: cancelled, or its CE being deleted or
    // gone (that outcome stands over the timeout, whichever came first); nor one whose machine may
    // exist where nothing here reaches it (its CE gone unremembered, its provider not in this
    // build), which ends below saying so and how to find the machine.
    const { timeout, decided, said } = this.timeoutFor(run, ce);
    const endsBelow = cancelled || (!!ce && !!provider && (!!ce.metadata.deletionTimestamp || !!gone));
    const unreachable = machineMayExist(run) && (!ce || !provider);
    if (!endsBelow && !unreachable && (phase === "Pending" || !run.status?.instance?.id) && timeout) {
      const since = Date.parse(run.metadata.creationTimestamp ?? now());
      if (decided || Date.now() - since > parseDuration(timeout)) {
        const message = said ?? `the run did not get a machine within its timeout of ${timeoutNamed(run, timeout)}`;
        if (machineMayExist(run) && ce && provider) {
          await this.decideTimeout(run, timeout, message);
          const wait = await this.stopBeforeEnd(run, ce, provider, log);
          if (wait !== undefined) return { requeueAfterMs: wait };
        }
        await this.finish(run, "Failed", "Timeout", message);
        return machineMayExist(run) ? { requeueAfterMs: this.d.pollIntervalMs } : undefined;
      }
    }

    if (!ce || !provider) {
      // Waiting for its CE is for a Run that has no machine: one with a machine (decided, or an
      // unplaced one recorded in a capacity wait) whose CE is gone cannot wait for a new one.
      if (phase === "Pending" && !machineMayExist(run)) {
        const [reason, message] = !ce
          ? ["ComputeEnvironmentNotFound", `ComputeEnvironment ${run.spec.computeEnvironmentRef.name} does not exist in ${namespace}`]
          : ["ProviderUnavailable", `provider "${ce.spec.provider}" is not available in this operator build`];
        await this.waiting(run, reason, message);
        return this.waitingTimeoutWake(run, ce);
      }
      // Launched, but its CE was removed by force and nothing this operator kept says how to reach
      // the machine (it did not see the CE go, or no longer remembers it), or this build lacks the
      // CE's provider: the machine cannot be reached from here.
      const id = run.status?.instance?.id;
      const which = id ? `machine ${id}` : "a machine the launch may have made";
      const byHand = `it may still be running; terminate it in the cloud (it carries the Run's UID ${run.metadata.uid ?? ""} as a tag)`;
      if (ce) {
        await this.finish(run, "Failed", "ProviderUnavailable", machineMayExist(run)
          ? `provider "${ce.spec.provider}" is not available in this operator build, so it cannot reach ${which}; ${byHand}`
          : `provider "${ce.spec.provider}" is not available in this operator build`);
        return;
      }
      const looked = lookRefused ? `it could not look for the machine (${lookRefused})` : "it does not find the machine in its account and region";
      const again = replaced ? ` (the ComputeEnvironment of that name now is another one, UID ${replaced.metadata.uid ?? ""}, and ${looked})` : "";
      await this.finish(run, "Failed", "ComputeEnvironmentGone", machineMayExist(run)
        ? `ComputeEnvironment ${run.spec.computeEnvironmentRef.name} was removed while the Run was active${again}, and this operator has no record of where its machines run: it cannot reach ${which}; ${byHand}`
        : "the ComputeEnvironment was removed while the Run was active");
      return;
    }

    // (With its CE and provider here: cancelled, or its CE being deleted or gone.)
    if (endsBelow) {
      const [phase, reason, message] = cancelled
        ? ["Cancelled", "Cancelled", CANCELLED_MESSAGE] as const
        : gone
          ? ["Failed", "ComputeEnvironmentGone", goneMessage(run, ce, this.inferred(run, ce))] as const
          : ["Cancelled", "ComputeEnvironmentDeleted", `ComputeEnvironment ${ce.metadata.name} is being deleted`] as const;
      if (machineMayExist(run) && !this.ceStopsMachine(run, ce, provider)) {
        const wait = await this.stopBeforeEnd(run, ce, provider, log);
        if (wait !== undefined) return { requeueAfterMs: wait };
      }
      await this.finish(run, phase, reason, message);
      return { requeueAfterMs: this.d.pollIntervalMs };
    }

    const refused = this.refusedLaunch.get(run.metadata.uid ?? "");
    if (refused && launchDecided(run)) return this.failAfterStop(run, ce, provider, log, refused);
    if (launchInFlight(run)) {
      // The cache may not show the machine recorded a moment ago: look at the stored Run first.
      noteFreshRead("runs", "launch-in-flight");
      const fresh = await this.d.client.get<Run>(RunResource, namespace, run.metadata.name ?? "");
      if (!fresh) return;
      if (fresh.metadata.resourceVersion === run.metadata.resourceVersion || launchInFlight(fresh)) {
        return this.launch(fresh, ce, provider, log);
      }
      // Already moved on (often this Run's own launch record, whose event brings no reconcile):
      // looked at again from the cache in a moment.
      return { requeueAfterMs: 1_000 };
    }
    if (phase === "Pending") {
      const result = await this.maybeLaunch(run, ce, provider, log);
      if (run.status?.phase !== "Pending" || launchDecided(run)) return result;
      const wake = this.waitingTimeoutWake(run, ce);
      const after = Math.min(wake?.requeueAfterMs ?? Infinity, (result && result.requeueAfterMs) || Infinity);
      return after === Infinity ? undefined : { requeueAfterMs: after };
    }
    return this.follow(run, ce, provider, log);
  }

  private async maybeLaunch(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger): Promise<ReconcileResult> {
    const ready = getCondition(ce.status?.conditions, "Ready");
    if (ready?.status !== "True" || ce.status?.observedGeneration !== ce.metadata.generation) {
      const message = `waiting for ComputeEnvironment ${ce.metadata.name} to be Ready${ready?.message ? `: ${ready.message}` : ""}`;
      await this.waiting(run, "ComputeEnvironmentNotReady", clip(message));
      return;
    }
    const ceUid = ce.metadata.uid ?? "";
    const uid = run.metadata.uid ?? "";
    const decided = await this.withCeLock(ceUid, async () => {
      const limit = ce.spec.maxConcurrentRuns;
      // Only a limit needs the count (a look at each of the CE's Runs, for each launch) and the
      // claims (decisions not yet in the cache); without one there is nothing to hold.
      if (limit === undefined) return true;
      const ceRuns = runsOfCe(this.d.runs, ce.metadata.namespace, ce.metadata.name).filter((r) => belongsTo(r, ce));
      // A claim of a Run that no longer exists (e.g. its finalizer was removed by hand) frees its slot.
      const existing = new Set(ceRuns.map((r) => r.metadata.uid));
      for (const c of this.claims.get(ceUid) ?? []) if (!existing.has(c) && c !== uid) this.claims.get(ceUid)?.delete(c);
      const holders = new Set(this.claims.get(ceUid) ?? []);
      for (const r of ceRuns) if (holdsSlot(r) && r.metadata.uid) holders.add(r.metadata.uid);
      holders.delete(uid);
      if (holders.size >= limit) return false;
      let set = this.claims.get(ceUid);
      if (!set) this.claims.set(ceUid, (set = new Set()));
      set.add(uid);
      return true;
    });
    if (!decided) {
      const message = `ComputeEnvironment ${ce.metadata.name} allows ${ce.spec.maxConcurrentRuns} concurrent run(s); waiting for a slot`;
      await this.waiting(run, "ConcurrencyLimit", message);
      return;
    }
    const afterCapacityWait = !PRE_LAUNCH_REASONS.has(run.status?.reason ?? "Accepted");
    // After a restart the wait is the one the status names (capacityWait), not a new attempt at
    // once; never longer than the longest backoff (a clock skewed between leaders, a hand edit).
    const persisted = Math.min(Date.parse(run.status?.capacityWait?.notBefore ?? "") || 0, Date.now() + CAPACITY_BACKOFF_MAX_MS);
    const capacityWait = (this.capacityAttempts.get(uid)?.retryAt ?? persisted) - Date.now();
    if (afterCapacityWait && capacityWait > 0) return { requeueAfterMs: capacityWait };
    // The CE records that the cloud may now hold something of it (its deletion then sweeps). Not
    // on `ce`, which is the cache's (frozen): the watch brings the record.
    await this.announceOnce(ce);
    if (afterCapacityWait) {
      // Waiting for capacity: an earlier attempt was made (idempotent on the UID, so not a first
      // one). Trying again is a decision like the first: recorded before the cloud is touched (the
      // Run reads LaunchRetrying, decided), so a crash or a deletion during this attempt still
      // looks for the machine it may make. Each write only on the version read.
      if (run.metadata.annotations?.[ANNOTATION_LAUNCH_DECIDED] !== uid || launchedUnder(run) !== ceUid || !hasFinalizer(run, FINALIZER)) {
        if (!(await this.decide(run, ceUid))) return;
      }
      const message = "launching the machine again after waiting for capacity";
      await this.ownWrite(run, () => this.report(run, { phase: "Pending", reason: LAUNCH_RETRYING, message }, "False", LAUNCH_RETRYING, message, true));
      return this.launch(run, ce, provider, log, false);
    }
    // Record the decision before touching the cloud, with the finalizer in the same write (and,
    // like every transition, only on the version read): a crash after this point finds the launch
    // in flight (launchDecided), and the launch itself is idempotent on the Run's UID. The Run's
    // next status names its machine, so the decision costs no status write of its own.
    if (!(await this.decide(run, ceUid))) return;
    // A machine recorded by an earlier attempt (accepted, not placed) is looked for first.
    return this.launch(run, ce, provider, log, !run.status?.instance?.id);
  }

  /**
   * Writes the launch decision (finalizer and annotations: decided, and under which CE; one write on
   * the version read); false when the Run is gone.
   */
  private async decide(run: Run, ceUid: string): Promise<boolean> {
    try {
      const annotations = { [ANNOTATION_LAUNCH_DECIDED]: run.metadata.uid ?? "", [ANNOTATION_LAUNCHED_UNDER]: ceUid };
      // Every caller goes on to the launch in this reconcile, which returns when to look next, or
      // ends the Run (finish, whose write is not an own write: its event brings the Run back), or
      // throws (retried).
      await this.ownWrite(run, async () => {
        run.metadata = (await markWithFinalizer(this.d.client, RunResource, run, FINALIZER, annotations)).metadata;
      });
      return true;
    } catch (e) {
      // Deleted meanwhile (it had no finalizer yet): nothing was launched, its claim goes.
      if (e instanceof KubeApiError && e.status === 404) {
        this.release(run);
        return false;
      }
      throw e;
    }
  }

  /**
   * A Pending Run waits before any launch (for its CE, or a slot). A decision annotation left from
   * an earlier attempt that ended in a capacity wait (or copied with the object) goes first, so
   * the Run does not read as a launch in flight.
   */
  private async waiting(run: Run, reason: string, message: string): Promise<void> {
    if (run.metadata.annotations?.[ANNOTATION_LAUNCH_DECIDED] !== undefined) {
      const metadata = { resourceVersion: run.metadata.resourceVersion, annotations: { [ANNOTATION_LAUNCH_DECIDED]: null } };
      run.metadata = (await this.d.client.patch<Run>(RunResource, run.metadata.namespace, run.metadata.name ?? "", { metadata }, "merge")).metadata;
    }
    await this.report(run, { phase: "Pending", reason, message }, "False", reason, message);
  }

  /**
   * A write of `run` whose watch event brings no reconcile (OwnWrites), for a reconcile that goes on
   * to return when to look next. `write` updates run.metadata.resourceVersion when it wrote, and is
   * guarded by the resourceVersion read: an unguarded write could land on another writer's change,
   * and a relist after a watch gap could then fold that change into what looks like our echo.
   */
  private async ownWrite<T>(run: Run, write: () => Promise<T>): Promise<T> {
    const key = `${run.metadata.namespace}/${run.metadata.name}`;
    const from = run.metadata.resourceVersion;
    this.d.ownWrites?.begin(key, from);
    let to: string | undefined;
    try {
      const result = await write();
      to = run.metadata.resourceVersion;
      return result;
    } finally {
      this.d.ownWrites?.end(key, from, to);
    }
  }

  /** The Run is gone from the cache: a claim it still holds (its launch never got written) goes. */
  forget(run: Run): void {
    this.release(run);
    this.looked.delete(run.metadata.uid ?? "");
  }

  /**
   * A Run launched under a CE that was removed by force before this operator started (nothing it
   * kept says where that CE's machines run), while another CE holds the name now, e.g. the same
   * manifest applied again. A look with that CE, by the Runs' UID tags, in its own account and
   * region (or subscription): when it finds the machine, the machine is reached with it from then
   * on (GoneComputeEnvironments.inferFrom) and terminated as any removed CE's would be. Not found
   * (another account or region; forgotten by the cloud) or not allowed, the Run says that its
   * machine cannot be reached; a passing failure is retried. A machine launched less than the
   * provider's listing lag ago (unlistedLaunchMs: EC2 may not list it yet) and not found is
   * looked for again once that lag has passed (`wait`).
   *
   * One look serves every Run launched under the same removed CE (lookFor): after a restart they
   * all come at once, and one describe per Run (on Azure a list of the whole subscription each)
   * would be a cloud call per Run. A look that found nothing is not repeated for the same Run and
   * CE; a refused one is, once refusedLookHoldMs has passed, at a later reconcile.
   */
  private async reachWith(run: Run, named: ComputeEnvironment, log: Logger): Promise<{ ce?: ComputeEnvironment; refused?: string; wait?: number }> {
    const uid = run.metadata.uid ?? "";
    const goneCes = this.d.goneCes;
    const provider = this.d.providers.get(named.spec.provider);
    const under = launchedUnder(run);
    // The CE as it is now (a corrected region or Secret is worth another look).
    const asked = `${named.metadata.uid ?? ""}/${named.metadata.generation ?? ""}/${named.spec.credentials?.secretRef?.name ?? ""}`;
    if (!goneCes || !provider || !under || under === named.metadata.uid) return {};
    const group = `${under}/${asked}`;
    // What an earlier look settled for this Run; undefined: a look is needed.
    const settled = (): { wait?: number } | undefined => {
      const prior = this.looked.get(uid);
      if (prior?.asked !== asked || prior.found) return undefined;
      if (prior.until === undefined) return {};
      const left = prior.until - Date.now();
      return left > 0 ? { wait: left } : undefined;
    };
    // Twice at most: a Run that came into the cache after the look in flight began has one of its own.
    for (let round = 0; round < 2; round++) {
      const known = settled();
      if (known) return known;
      const refusal = this.refusedLooks.get(group);
      if (refusal && refusal.until > monotonicNow()) return { refused: refusal.refused };
      if (refusal) this.refusedLooks.delete(group);
      let look = this.looks.get(group);
      if (!look) {
        look = this.lookFor(run, named, provider, asked, group).finally(() => this.looks.delete(group));
        // A caller that stops waiting (its own deadline) leaves the look to the others: its
        // failure is theirs to see, never an unhandled rejection.
        look.catch(() => undefined);
        this.looks.set(group, look);
      }
      const answer = await untilAborted(look, this.signals.get(log));
      // Found for any Run of that CE: the stand-in is remembered, and this Run goes with it too.
      const ce = goneCes.find(run);
      if (ce) return { ce };
      if (answer.refused) return { refused: answer.refused };
    }
    return settled() ?? {};
  }

  /**
   * One describe, with the stand-in of the removed CE `run` was launched under, of every cached
   * Run launched under it that `named` (as `asked`) has not looked for yet. Outcomes: a machine
   * found makes the stand-in remembered (goneCes.inferFrom); each Run's outcome goes in `looked`
   * (not found, or not found yet while its machine may not be listed). A refusal goes in
   * `refusedLooks` and is the answer. Other failures are thrown (retried by the callers). Shared by
   * the Runs' reconciles, so it runs under a deadline of its own, not the first caller's.
   */
  private async lookFor(run: Run, named: ComputeEnvironment, provider: CloudProvider, asked: string, group: string): Promise<{ refused?: string }> {
    const candidate = standIn(run, named);
    const under = launchedUnder(run);
    if (!candidate || !under) return {};
    const log = this.d.logger.child({ run: this.key(run), lookingFor: under });
    this.signals.set(log, AbortSignal.timeout(LOOK_TIMEOUT_MS));
    const uidOf = (r: Run): string => r.metadata.uid ?? "";
    const at = Date.now();
    const due = (r: Run): boolean => {
      const prior = this.looked.get(uidOf(r));
      return prior?.asked !== asked || (!prior.found && prior.until !== undefined && prior.until <= at);
    };
    const others = runsOfCe(this.d.runs, run.metadata.namespace, run.spec.computeEnvironmentRef.name)
      .filter((r) => uidOf(r) !== uidOf(run) && launchedUnder(r) === under && machineMayExist(r) && due(r));
    const runs = [run, ...others];
    let found: Map<string, RunDescription | undefined>;
    try {
      const ctx = await this.context(candidate, log);
      found = await provider.describeRuns({ ...ctx, runCe: () => candidate }, runs);
    } catch (e) {
      if (!refusedForGood(e)) throw e;
      // Not allowed (or its credentials missing) for now: not an answer, so asked again later (a
      // resync, a change of the Run or the CE) rather than remembered for good.
      const { reason, message } = describeError(e);
      log.info({ reason, runs: runs.length }, "the ComputeEnvironment now holding the name cannot look for the machines of Runs launched under a removed one");
      // How long a refusal holds is this process's own duration: the monotonic clock.
      const now = monotonicNow();
      for (const [k, v] of this.refusedLooks) if (v.until <= now) this.refusedLooks.delete(k);
      const refused = clip(`${reason}: ${message}`, 300);
      this.refusedLooks.set(group, { until: now + Math.max(1_000, this.d.refusedLookHoldMs ?? polls(this.d.pollIntervalMs, 4, 2_000, 60_000)), refused });
      return { refused };
    }
    let finder: Run | undefined;
    for (const r of runs) {
      const desc = found.get(uidOf(r));
      // Only a machine the cloud listed counts (one it could not place too: it is there until its
      // Run deletes it): a description the provider inferred for a machine it does not list (gone,
      // or in another account, region or subscription) proves nothing.
      if (desc && !desc.unlisted) {
        this.looked.set(uidOf(r), { asked, found: true });
        finder ??= r;
        continue;
      }
      // Launched (by its record, or else as far as this operator knows: since it first saw the
      // decision) less than the listing lag ago: not listed proves nothing yet either.
      const launched = r.status?.launchedAt ? Date.parse(r.status.launchedAt) : (this.launchTriedAt.get(uidOf(r)) ?? at);
      if (!r.status?.launchedAt) this.launchTriedAt.set(uidOf(r), launched);
      const listedBy = launched + (provider.unlistedLaunchMs ?? 0);
      this.looked.set(uidOf(r), listedBy > at ? { asked, until: listedBy } : { asked });
    }
    if (!finder) return {};
    log.info({ runs: runs.length, ce: named.metadata.uid }, "found machines of Runs whose ComputeEnvironment was removed before this operator started, with the ComputeEnvironment now holding the name");
    // The other Runs go with it from now on; the run tracker's next poll looks at their machines.
    this.d.goneCes?.inferFrom(finder, named, candidate);
    return {};
  }

  /** For goneMessage: the CE now holding the name that found machines of the Run's removed CE, if any. */
  private inferred(run: Run, ce: ComputeEnvironment): { uid: string; foundThis: boolean } | undefined {
    const uid = this.d.goneCes?.inferredVia(ce);
    return uid === undefined ? undefined : { uid, foundThis: this.looked.get(run.metadata.uid ?? "")?.found === true };
  }

  /** `firstAttempt`: the Run was Pending until this reconcile; no earlier launch can have made a machine. */
  private async launch(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger, firstAttempt = false): Promise<ReconcileResult> {
    let desc: RunDescription;
    /** The cloud was asked (an error after this may have lost a launch's answer). */
    let asked = false;
    try {
      const ctx = await this.context(ce, log);
      const ref = ce.spec.platformTokenSecretRef;
      if (ref) {
        const token = await readSecretKey(this.d.client, ce.metadata.namespace ?? "default", ref.name, ref.key ?? "token", this.d.secrets, ctx.signal);
        if (token) ctx.platformToken = token;
      }
      const uid = run.metadata.uid ?? "";
      const capacityReason = this.launchUnanswered.has(uid) ? undefined : (this.capacityAttempts.get(uid)?.reason ?? run.status?.capacityWait?.reason);
      asked = true;
      desc = await provider.launchRun(ctx, run, { firstAttempt, ...(capacityReason ? { capacityReason } : {}) });
    } catch (e) {
      // The call may have made a machine up to its very end (an answer lost, a deadline passed).
      this.launchTriedAt.set(run.metadata.uid ?? "", Date.now());
      if (e instanceof CloudError && e.capacity) {
        this.launchUnanswered.delete(run.metadata.uid ?? "");
        // A machine of an earlier attempt found unplaced and not gone yet is recorded (when none is),
        // so that a Run cancelled, timed out or deleted while it waits terminates it.
        const found = e.unplacedId !== undefined && !run.status?.instance?.id ? { instance: { id: e.unplacedId, state: "unknown" } } : {};
        return this.waitForCapacity(run, ce, e.reason, `no capacity to launch yet: ${e.message}`, found, undefined, !e.known);
      }
      if (refusedForGood(e)) {
        const { reason, message } = describeError(e);
        // An earlier attempt may have made a machine (its answer lost): it is terminated before
        // the Run fails, since an ended Run without a recorded machine is no longer followed.
        if (!firstAttempt && launchDecided(run)) return this.failAfterStop(run, ce, provider, log, { reason, message });
        await this.finish(run, "Failed", reason, clip(`launch failed: ${message}`));
        return;
      }
      // The launch was refused for the environment's resources (e.g. its instance profile is gone):
      // the CE checks and repairs them now; this Run tries again after its backoff.
      if (provider.environmentSuspect?.(ce)) this.d.enqueueComputeEnvironment(`${ce.metadata.namespace}/${ce.metadata.name}`);
      if (asked) this.launchUnanswered.add(run.metadata.uid ?? "");
      if (launchDecided(run) && !this.signals.get(log)?.aborted) {
        // Still decided, and now saying so: the Run is being launched, not waiting for a check.
        // Only on the version read (a leader that lost its Lease, or a stale copy, writes nothing).
        const reason = e instanceof CloudError ? e.reason : "Error";
        const message = `launching the machine; an attempt failed (${reason}) and is tried again`;
        // (Its echo would run the key again at once, ahead of the error's backoff.)
        await this.ownWrite(run, () => this.report(run, { phase: "Pending", reason: LAUNCH_RETRYING, message }, "False", LAUNCH_RETRYING, message, true)).catch(() => undefined);
      }
      throw e;
    }
    const uid = run.metadata.uid ?? "";
    this.d.tracker.record(uid, desc);
    // The refusals so far are kept (in memory, and in the status's capacityWait, which the record
    // keeps unless the machine runs): a machine accepted now may still be refused its place
    // (Azure's AllocationFailed), and the backoff then goes on growing. Dropped once placed.
    this.ending.delete(uid);
    // A machine found running at launch (a resumed launch) is Running only if the pipeline started.
    const started = desc.state === "running" && (!provider.reportsPipelineStart || desc.pipelineStarted === true);
    const phase: Phase = started ? "Running" : "Launching";
    const message = `machine ${desc.instanceId} ${desc.state}`;
    const record = (r: Run): Promise<boolean> =>
      this.report(
        r,
        {
          phase,
          reason: phase === "Running" ? "Running" : "Launching",
          message,
          instance: { ...(desc.instance ?? {}), id: desc.instanceId, state: desc.state },
          launchedAt: r.status?.launchedAt ?? desc.launchedAt ?? now(),
          ...(phase === "Running" ? { startTime: now() } : {}),
          ...(desc.log ? { log: desc.log } : {}),
          // A capacity wait ends once the machine runs (the merge patch removes the field); kept
          // until then, as the cloud may still fail to place it, and the count goes on.
          ...(desc.state === "running" ? { capacityWait: undefined } : {}),
        },
        "False",
        phase,
        message,
        true,
      );
    let written: boolean;
    /** The version the machine was recorded on (the one read, or the stored one after a conflict). */
    let recorded = run;
    try {
      // This reconcile returns when to look next: the write's own event is no news for a machine
      // pending. One found further on (a resumed launch: up, or ended) is followed at once.
      written = desc.state === "pending" ? await this.ownWrite(run, () => record(run)) : await record(run);
    } catch (e) {
      // The Run changed while its machine was being made (e.g. it is being deleted): the machine
      // is recorded on the stored version all the same, if that one still awaits it, so what ends
      // the Run knows what to terminate, even while the cloud does not list the machine yet.
      if (!(e instanceof KubeApiError && e.status === 409)) throw e;
      noteFreshRead("runs", "record-conflict");
      const fresh = await this.d.client.get<Run>(RunResource, run.metadata.namespace, run.metadata.name ?? "");
      if (!fresh || fresh.metadata.uid !== uid || !launchInFlight(fresh)) throw e;
      written = await record(fresh);
      recorded = fresh;
      log.info({ instance: desc.instanceId }, "recorded the machine on a newer version of the Run");
    }
    this.launchTriedAt.delete(uid);
    this.launchUnanswered.delete(uid);
    // Not awaited (the recorder never throws): a launch burst does not wait on its Events.
    if (written) void this.d.events.record(run, "Normal", "Launched", "Launch", `launched ${desc.instanceId}`);
    log.info({ instance: desc.instanceId }, "launched");
    // A poll away, or at the timeout if that comes first (counted from the launch, as follow does).
    const { timeout } = this.timeoutFor(run, ce);
    const since = Date.parse(recorded.status?.launchedAt ?? run.metadata.creationTimestamp ?? now());
    return { requeueAfterMs: Math.min(this.d.pollIntervalMs, timeoutWake(since, timeout ? parseDuration(timeout) : undefined)) };
  }

  private async follow(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger): Promise<ReconcileResult> {
    const status = run.status ?? {};
    const uid = run.metadata.uid ?? "";
    const { timeout, decided, said } = this.timeoutFor(run, ce);
    const timeoutMs = timeout ? parseDuration(timeout) : undefined;
    const since = Date.parse(status.launchedAt ?? run.metadata.creationTimestamp ?? now());
    const obs = this.d.tracker.get(uid);
    // The pipeline's outcome, once a look found it, stands over a timeout not acted on yet (a
    // reconcile that came late, an operator that was down): the pipeline ended within its machine's
    // life either way. So does an outcome on its way from a machine that ended (outcomeDue: an exit
    // line not queryable yet, a wait the provider bounds): there is nothing left to stop. A timeout
    // already acted on (its termination asked for) stands. Before this process's first look (a poll
    // away after a start), that look is waited for: up to FIRST_LOOK_POLLS polls, so that a describe
    // that failed once (throttled after a restart, say) does not time out Runs nobody looked at.
    const outcomeKnown = obs?.desc?.exitCode !== undefined && obs.desc.state !== "pending";
    // (From a recent look only: once FIRST_LOOK_POLLS polls since have failed to look, the last
    // look's word does not hold off the timeout.)
    const outcomeDue = obs?.desc?.outcomeDue === true && obs.desc.exitCode === undefined && obs.poll !== undefined && this.d.tracker.pollCount - obs.poll - 1 < FIRST_LOOK_POLLS;
    const firstLookDue = obs === undefined && this.d.tracker.pollCount < FIRST_LOOK_POLLS;
    if (timeout && timeoutMs !== undefined && (decided || (!outcomeKnown && !outcomeDue && !firstLookDue && Date.now() - since > timeoutMs))) {
      // Sent with the other Runs of the CE ending about now (the batch wakes this Run); blocked,
      // the Run ends all the same and goes on terminating its recorded machine (afterEnd).
      const message = said ?? `the run exceeded its timeout of ${timeoutNamed(run, timeout)}`;
      await this.decideTimeout(run, timeout, message);
      const sent = await this.sendBatched(run, ce, provider, log);
      if ("waitMs" in sent) return { requeueAfterMs: sent.waitMs };
      await this.finish(run, "Failed", "Timeout", message);
      return { requeueAfterMs: this.d.pollIntervalMs };
    }
    const wakeForTimeout = timeoutWake(since, timeoutMs);
    const next = Math.min(this.d.pollIntervalMs, wakeForTimeout);
    // A machine pending or running as the last poll saw it: the tracker's next news of it, or the timeout, comes first.
    const quiet = Math.min(Math.max(this.d.pollIntervalMs, QUIET_FOLLOW_MS), wakeForTimeout);

    if (!obs) return { requeueAfterMs: next };
    const desc = obs.desc;
    if (!desc) {
      const lostAfter = this.d.machineLostAfterMs ?? 5 * 60_000;
      if (Date.now() - since > lostAfter) {
        await this.finish(run, "Failed", "MachineNotFound",
          `machine ${status.instance?.id ?? "(unknown)"} is not known to the cloud, and neither the log's exit line nor the uploaded exit status was found`);
        return;
      }
      return { requeueAfterMs: next };
    }
    await this.reportReadError(run, desc);
    const instance = { ...(status.instance ?? {}), ...(desc.instance ?? {}), id: desc.instanceId, state: desc.state };
    // Placed (running, or up in a state the cloud did not name, reported as running): the refusals
    // are forgotten, and a capacity wait kept through its launch ends (with the next status write).
    const up = (desc.state === "running" || desc.state === "unknown") && !desc.launchFailure;
    if (up) this.capacityAttempts.delete(uid);
    const placed = up && status.capacityWait ? { capacityWait: undefined } : {};
    if (desc.launchFailure) {
      // Accepted, then not placed (capacity/quota): the Run waits Pending, then terminates the
      // unplaced machine (every look says the refusal until then, so a reconcile after a later
      // look, or after a restart, still finds it), and is launched again after a backoff. Only
      // once a consistent read confirms it: a look's list may show a machine deleted a moment ago,
      // over the one the next attempt made under its name (nothing else launches for this Run
      // until this reconcile ends, so the termination by name meets the machine confirmed).
      // Every refusal is confirmed, the first too: a count of refusals (in memory or in the status)
      // does not say whether the list lags behind a deletion, and a Run waiting since before an
      // upgrade may carry none.
      if (provider.confirmUnplaced && !(await provider.confirmUnplaced(await this.context(ce, log), run))) return { requeueAfterMs: next };
      return this.waitForCapacity(run, ce, desc.launchFailure.reason, desc.launchFailure.message, { instance }, () => this.removeUnplaced(run, ce, provider, log));
    }
    switch (desc.state) {
      case "pending":
        // (These writes of what a look saw return when to look next: their echoes are no news.)
        await this.ownWrite(run, () => this.report(run, { phase: "Launching", instance, message: `machine ${desc.instanceId} pending` }, "False", "Launching", `machine ${desc.instanceId} pending`, true));
        return { requeueAfterMs: quiet };
      case "running":
      case "unknown": {
        if (desc.exitCode !== undefined && desc.bootstrapStep) {
          await this.finish(run, "Failed", "BootstrapFailed",
            clip(`setting up machine ${desc.instanceId} failed at step "${desc.bootstrapStep}" (exit code ${desc.exitCode}) before the pipeline started; the launcher's log: vmforge logs ${run.metadata.name} -n ${run.metadata.namespace}`),
            { instance, exitCode: desc.exitCode });
          return { requeueAfterMs: next };
        }
        if (desc.exitCode !== undefined) {
          // The pipeline ended but the machine still runs (its shutdown may have failed): the
          // outcome is known now; afterEnd gives the machine a grace period, then terminates it.
          const ok = desc.exitCode === 0;
          await this.finish(run, ok ? "Succeeded" : "Failed", ok ? "Succeeded" : "PipelineFailed",
            ok ? "the pipeline completed" : `the pipeline exited with code ${desc.exitCode}`,
            { instance, exitCode: desc.exitCode });
          return { requeueAfterMs: next };
        }
        if (provider.reportsPipelineStart && !desc.pipelineStarted && status.phase !== "Running") {
          // The machine is up but its launcher has not said the pipeline started: it is still
          // being set up (packages, log agent, Docker, Nextflow). Running means the pipeline runs.
          const waiting = `machine ${desc.instanceId} is up; setting it up, waiting for the launcher to start the pipeline`;
          await this.ownWrite(run, () => this.report(run, { phase: "Launching", reason: "SettingUp", message: waiting, instance, ...(desc.log ? { log: desc.log } : {}), ...placed }, "False", "SettingUp", waiting, true));
          return { requeueAfterMs: quiet };
        }
        const message = `running on ${desc.instanceId}`;
        await this.ownWrite(run, () => this.report(run, { phase: "Running", reason: "Running", message, instance, startTime: status.startTime ?? now(), ...(desc.log ? { log: desc.log } : {}), ...placed }, "False", "Running", message, true));
        return { requeueAfterMs: quiet };
      }
      case "stopping":
      case "stopped":
        // A stopped machine runs no pipeline: it is terminated. On AWS (shutdown = terminate) this
        // means someone stopped it by hand; on Azure an OS shutdown leaves the VM stopped, and the
        // provider reports it here, with its known or awaited outcome, when deleting it failed.
        await this.stopMachine(run, ce, provider, log);
        if (desc.outcomeUnknown && desc.exitCode === undefined) {
          // Its outcome is not known yet (not readable this time, or on its way): read next, from
          // the machine as it is then.
          await this.report(run, { instance, message: clip(`machine ${desc.instanceId} ${desc.state}; waiting for the pipeline's outcome${desc.stateReason ? `: ${desc.stateReason}` : ""}`) });
          return { requeueAfterMs: next };
        }
        if (desc.exitCode !== undefined) {
          const ok = desc.exitCode === 0 && !desc.bootstrapStep;
          const [reason, message] = desc.bootstrapStep
            ? ["BootstrapFailed", `setting up machine ${desc.instanceId} failed at step "${desc.bootstrapStep}" (exit code ${desc.exitCode}) before the pipeline started`]
            : ok ? ["Succeeded", "the pipeline completed"] : ["PipelineFailed", `the pipeline exited with code ${desc.exitCode}`];
          await this.finish(run, ok ? "Succeeded" : "Failed", reason, clip(message), { instance, exitCode: desc.exitCode });
          return { requeueAfterMs: next };
        }
        await this.finish(run, "Failed", "MachineStopped", `machine ${desc.instanceId} was stopped`, { instance });
        return { requeueAfterMs: next };
      case "shutting-down":
      case "terminated": {
        if (desc.outcomeUnknown && desc.exitCode === undefined) {
          // Ended, but its outcome is not known yet: its exit line and exit status could not be
          // read (a refused permission, named by the LogReadBlocked condition), or the exit line
          // may still be on its way to the log (the provider bounds that wait). Wait for it, or
          // the timeout; the Run says why meanwhile.
          const waiting = clip(`machine ${desc.instanceId} ${desc.state}; waiting for the pipeline's outcome${desc.stateReason ? `: ${desc.stateReason}` : ""}`);
          await this.report(run, { instance, message: waiting });
          return { requeueAfterMs: next };
        }
        if (desc.interrupted) {
          await this.finish(run, "Failed", desc.interruptionReason ?? "SpotInterrupted",
            clip(`the cloud reclaimed machine ${desc.instanceId} (Spot interruption); the pipeline did not fail on its own${desc.stateReason ? `: ${desc.stateReason}` : ""}`),
            { instance, ...(desc.exitCode !== undefined ? { exitCode: desc.exitCode } : {}) });
          return { requeueAfterMs: next };
        }
        if (desc.exitCode !== undefined && desc.bootstrapStep) {
          await this.finish(run, "Failed", "BootstrapFailed",
            clip(`setting up machine ${desc.instanceId} failed at step "${desc.bootstrapStep}" (exit code ${desc.exitCode}) before the pipeline started; the launcher's log: vmforge logs ${run.metadata.name} -n ${run.metadata.namespace}`),
            { instance, exitCode: desc.exitCode });
          return { requeueAfterMs: next };
        }
        if (desc.exitCode !== undefined) {
          const ok = desc.exitCode === 0;
          await this.finish(run, ok ? "Succeeded" : "Failed", ok ? "Succeeded" : "PipelineFailed",
            ok ? "the pipeline completed" : `the pipeline exited with code ${desc.exitCode}`,
            { instance, exitCode: desc.exitCode });
          return { requeueAfterMs: next };
        }
        if (desc.state === "shutting-down") return { requeueAfterMs: next };
        await this.finish(run, "Failed", desc.noOutcomeReason ?? "MachineTerminated",
          clip(`machine ${desc.instanceId} ended without reporting an exit code${desc.stateReason ? `: ${desc.stateReason}` : ""}`), { instance });
        return;
      }
    }
  }

  /**
   * No capacity or quota for the Run's machine now: the Run is Pending with the cloud's reason
   * (e.g. SkuNotAvailable, AllocationFailed) and is tried again after a backoff that doubles per
   * refusal (from one poll up to 5 minutes), until its timeout fails it. Under a concurrency limit
   * it keeps its claim on a slot while this operator runs (a restarted one counts it again only
   * once it launches).
   */
  private async waitForCapacity(run: Run, ce: ComputeEnvironment, reason: string, message: string, extra: Partial<RunStatus> = {}, afterWrite?: () => Promise<void>, newRefusal = true): Promise<ReconcileResult> {
    const uid = run.metadata.uid ?? "";
    const last = this.capacityAttempts.get(uid);
    // The refusals so far (kept in memory across accepted launches until a machine is placed; after
    // a restart of the operator, those of the wait the status names).
    const n = last?.refused ?? run.status?.capacityWait?.refusals ?? 0;
    // A refusal already counted, its machine still being removed: the last wait again, not a longer
    // one (and not a shorter one either: a VM stuck in deletion, or a delete refused for now, is not
    // asked about every poll).
    const counted = newRefusal || n === 0;
    const backoff = polls(this.d.pollIntervalMs, 2 ** Math.min(counted ? n : n - 1, 12), 1_000, CAPACITY_BACKOFF_MAX_MS);
    const retryAt = Date.now() + backoff;
    // The next launch makes another machine: a termination sent for an earlier one settles nothing of it.
    this.ending.delete(uid);
    const m = clip(message);
    // One Event per cause, not per attempt (each attempt is decided first: LaunchRetrying between).
    // (The status's reason: a wait an older operator wrote, without capacityWait.reason.)
    const before = last?.reason ?? run.status?.capacityWait?.reason ?? run.status?.reason;
    const refused = counted ? n + 1 : n;
    const capacityWait = { refusals: refused, notBefore: new Date(retryAt).toISOString(), reason };
    const written = await this.report(run, { phase: "Pending", reason, message: m, capacityWait, ...extra }, "False", reason, m);
    if (written) {
      // Counted once the wait is on record (a write refused, say from a stale copy, counts nothing).
      this.capacityAttempts.set(uid, { refused, retryAt, reason });
      // Acted on: a reconcile from a cache that does not show the wait yet finds no observation
      // until the next look (which says the refusal again while the machine is there).
      this.d.tracker.forget(uid);
    }
    if (written && afterWrite) await afterWrite();
    if (written && before !== reason) void this.d.events.record(run, "Warning", reason, "Launch", m);
    return { requeueAfterMs: Math.min(backoff, this.waitingTimeoutWake(run, ce)?.requeueAfterMs ?? Infinity) };
  }

  /**
   * The machine the cloud accepted and could not place, once its Run waits for capacity (see
   * follow). A delete that does not go through now is not retried here: the Run's next launch
   * attempt finds the machine (on Azure it deletes it then and waits again), and a Run that ends
   * or is deleted meanwhile terminates it as any other.
   */
  private async removeUnplaced(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger): Promise<void> {
    try {
      await provider.terminateRun(await this.context(ce, log), run);
    } catch (e) {
      const { reason, message } = describeError(e);
      log.warn({ reason, instance: run.status?.instance?.id }, "could not delete the machine the cloud did not place (the next launch attempt finds it): %s", message);
    }
  }

  /**
   * A read of the Run's log the cloud refuses (e.g. a missing permission) is said on the Run: the
   * LogReadBlocked condition names the cause (and an Event); it goes when a read works again.
   */
  private async reportReadError(run: Run, desc: RunDescription): Promise<void> {
    const current = getCondition(run.status?.conditions, LOG_READ_BLOCKED);
    if (desc.readError) {
      const message = clip(`cannot read the Run's log: ${desc.readError.message}`);
      if (current?.status === "True" && current.message === message) return;
      const conditions = setCondition(run.status?.conditions, { type: LOG_READ_BLOCKED, status: "True", reason: desc.readError.reason, message, observedGeneration: run.metadata.generation });
      // Guarded, as the phase write that may follow in the same reconcile is: that one is checked
      // against the version this one produced, so this one must be checked against the version read.
      if (await this.report(run, { conditions }, undefined, undefined, undefined, true)) void this.d.events.record(run, "Warning", desc.readError.reason, "ReadLog", message);
    } else if (current) {
      await this.report(run, { conditions: run.status?.conditions?.filter((c) => c.type !== LOG_READ_BLOCKED) ?? [] }, undefined, undefined, undefined, true);
    }
  }

  /** For a waiting Run with a timeout (counted from its creation): wake up when it would pass, even if nothing else changes. */
  private waitingTimeoutWake(run: Run, ce: ComputeEnvironment | undefined): ReconcileResult {
    const timeout = timeoutOf(run, ce);
    if (!timeout) return;
    return { requeueAfterMs: timeoutWake(Date.parse(run.metadata.creationTimestamp ?? now()), parseDuration(timeout)) };
  }

  /**
   * spec.ttlSecondsAfterFinished, as on a Job: a finished Run whose time is up is deleted (the
   * delete carries its UID, so a new Run of the same name is never hit). Its finalizer then does
   * what any Run deletion does: nothing in the cloud once its machine is gone. Returns whether the
   * Run was deleted.
   */
  private async expire(run: Run, log: Logger): Promise<boolean> {
    const due = ttlDue(run);
    if (due === undefined || due > Date.now()) return false;
    const { namespace, name, uid } = run.metadata;
    await this.d.client.delete(RunResource, namespace, name ?? "", uid ? { preconditions: { uid } } : {});
    log.info({ ttlSecondsAfterFinished: run.spec.ttlSecondsAfterFinished, completionTime: run.status?.completionTime }, "deleted the finished Run: its ttlSecondsAfterFinished has passed");
    return true;
  }

  /** After the Run ended: keep following until its machine is confirmed gone, then stop looking. */
  private async afterEnd(run: Run, ce: ComputeEnvironment | undefined, provider: CloudProvider | undefined, log: Logger): Promise<ReconcileResult> {
    if (!machineMayExist(run)) {
      // No machine (the Run ended once its termination was sent): a termination said to be failing no longer is.
      const conditions = withoutBlocked(run);
      if (conditions) await this.report(run, { conditions });
      this.release(run);
      return;
    }
    if (!ce || !provider) return;
    const obs = this.d.tracker.get(run.metadata.uid ?? "");
    const state = obs?.desc?.state;
    if (obs && (state === undefined || state === "terminated")) {
      // Gone, however it went: a termination said to be failing (batchedTermination) no longer is.
      const conditions = withoutBlocked(run);
      await this.report(run, { instance: { ...(run.status?.instance ?? { id: obs.desc?.instanceId ?? "" }), state: "terminated" }, ...(conditions ? { conditions } : {}) });
      this.release(run);
      return;
    }
    if (state === "shutting-down") return { requeueAfterMs: this.d.pollIntervalMs };
    if (run.status?.exitCode !== undefined && run.status.phase !== "Cancelled" && (state === "running" || state === "pending" || state === "unknown")) {
      // The pipeline ended on its own: the machine should shut itself down. Give it the grace period.
      const grace = this.d.endGraceMs ?? polls(this.d.pollIntervalMs, 8, 2_000, 5 * 60_000);
      const ended = Date.parse(run.status.completionTime ?? now());
      const left = ended + grace - Date.now();
      if (left > 0) return { requeueAfterMs: Math.min(this.d.pollIntervalMs, left + 100) };
      if (!getCondition(run.status.conditions, MACHINE_LINGERED)) {
        const id = obs?.desc?.instanceId ?? run.status.instance?.id ?? "(unknown)";
        const message = `machine ${id} was still ${state} ${Math.round((Date.now() - ended) / 1000)} s after the pipeline ended (its own shutdown did not end it); the operator terminates it`;
        // Said before the machine is terminated: after a crash between the two, the machine is gone
        // and nothing would tell why any more. (With the condition set, the next reconcile goes on
        // terminating below, so a crash before the termination loses nothing either.) The
        // termination goes below, with those of the CE's other Runs ending about now.
        // Only on the version read: a reconcile from a cache that does not show the condition yet
        // would write it (and its Event) a second time.
        const conditions = setCondition(run.status.conditions, { type: MACHINE_LINGERED, status: "True", reason: "TerminatedByOperator", message, observedGeneration: run.metadata.generation });
        const written = await this.report(run, { conditions }, undefined, undefined, undefined, true).catch((e: unknown) => {
          if (e instanceof KubeApiError && e.status === 409) return undefined;
          throw e;
        });
        if (written === undefined) return { requeueAfterMs: 1_000 };
        if (written) void this.d.events.record(run, "Warning", "MachineLingered", "Terminate", message);
      }
    }
    if (!this.ceStopsMachine(run, ce, provider)) {
      // Sent when the Run ended (cancel, timeout) or just now: not again before a look newer than
      // that send shows the machine still there (the look before it shows what the send changed).
      const hold = this.resendWait(run.metadata.uid ?? "", obs, provider);
      if (hold !== undefined) return { requeueAfterMs: hold };
      const sent = await this.sendBatched(run, ce, provider, log);
      if ("waitMs" in sent) return { requeueAfterMs: sent.waitMs };
    }
    return { requeueAfterMs: this.blockedWake(run) ?? this.d.pollIntervalMs };
  }

  /**
   * While a CE is being deleted, its finalizer terminates its machines in batches; a Run then does
   * not send its own call, unless its machine is so new that the CE's search may not see it yet.
   */
  private ceStopsMachine(run: Run, ce: ComputeEnvironment, provider: CloudProvider): boolean {
    if (!ce.metadata.deletionTimestamp || !hasFinalizer(ce, FINALIZER) || !provider.sweepOrphans) return false;
    const launched = Date.parse(run.status?.launchedAt ?? "");
    // New machines may not show in the CE's tag search for a little while (eventual consistency).
    return Number.isFinite(launched) && Date.now() - launched > polls(this.d.pollIntervalMs, 4, 1_000, 2 * 60_000);
  }

  /** Termination of the Run's machine is blocked (a Terminal answer) and not due to be tried again yet. */
  private isBlocked(uid: string): boolean {
    const until = this.blocked.get(uid);
    return until !== undefined && monotonicNow() < until;
  }

  private blockedWake(run: Run): number | undefined {
    const until = this.blocked.get(run.metadata.uid ?? "");
    return until === undefined ? undefined : Math.max(1_000, until - monotonicNow());
  }

  private async finalize(run: Run, ce: ComputeEnvironment | undefined, provider: CloudProvider | undefined, log: Logger): Promise<ReconcileResult> {
    if (!hasFinalizer(run, FINALIZER)) return;
    if (machineMayExist(run) && ce && provider) {
      const uid = run.metadata.uid ?? "";
      const obs = this.d.tracker.get(uid);
      const state = obs?.desc?.state;
      // A machine the describe does not list is gone only when a settling termination was sent
      // before that look (see stopMachine): a new machine may simply not be listed yet.
      const settled = this.ending.get(uid)?.settled;
      const unlistedIsGone = settled !== undefined && obs !== undefined && obs.at > settled;
      const gone = obs !== undefined && (state === "terminated" || (state === undefined && unlistedIsGone)) && obs.at > Date.parse(run.metadata.deletionTimestamp ?? now());
      if (!gone) {
        const hold = this.resendWait(uid, obs, provider);
        if (hold !== undefined) return { requeueAfterMs: hold };
        const sent = await this.sendBatched(run, ce, provider, log);
        if ("waitMs" in sent) return { requeueAfterMs: sent.waitMs };
        const wait = sent.stopped;
        if (wait === undefined) return { requeueAfterMs: this.blockedWake(run) ?? this.d.pollIntervalMs };
        if (wait === 0) return { requeueAfterMs: this.d.pollIntervalMs };
        return { requeueAfterMs: Math.min(this.d.pollIntervalMs, Math.max(wait, 2_000)) };
      }
    } else if (machineMayExist(run)) {
      log.warn({ machine: run.status?.instance?.id, runUid: run.metadata.uid }, "the ComputeEnvironment the Run's machine was launched under is gone and not remembered; the machine cannot be reached from here and may still run (it carries the Run's UID as a tag)");
    }
    this.release(run);
    this.d.tracker.forget(run.metadata.uid ?? "");
    await removeFinalizer(this.d.client, RunResource, run, FINALIZER);
    this.d.enqueueComputeEnvironment(`${run.metadata.namespace}/${run.spec.computeEnvironmentRef.name}`);
    return;
  }

  /**
   * How long a deleted Run's finalizer, or an ended Run following its machine (afterEnd), holds off
   * sending its machine's termination again (ms), or undefined to send now. The tracker wakes a
   * deleted Run after every look, news or not; an ended Run on news, or after this wait.
   * - Settled (see stopMachine): only a look can tell more. Nothing is sent again before a look
   *   newer than the last send (the call would find what that one found), nor while the last look
   *   shows the machine on its way out (EC2's shutting-down, an Azure VM being deleted).
   * - Not settled yet (a launch whose answer was lost, within the provider's listing lag): at most
   *   once a poll interval, and once more when the lag has passed.
   * - Either way, sent again once the last send is resendMs old: a look that never comes (polls of
   *   the group failing) or a machine that stays shutting down is not waited for in silence.
   */
  private resendWait(uid: string, obs: Observation | undefined, provider: CloudProvider): number | undefined {
    const sent = this.ending.get(uid);
    const last = sent?.last;
    if (sent === undefined || last === undefined) return undefined;
    const since = Date.now() - last;
    const resendMs = polls(this.d.pollIntervalMs, 8, 2_000, 5 * 60_000);
    if (since >= resendMs) return undefined;
    if (sent.settled !== undefined) {
      if (obs === undefined || obs.at <= last || obs.desc?.state === "shutting-down") return Math.max(100, Math.min(this.d.pollIntervalMs, resendMs - since));
      return undefined;
    }
    const tried = this.launchTriedAt.get(uid);
    const lag = tried === undefined ? 0 : tried + (provider.unlistedLaunchMs ?? 0) - Date.now();
    if (lag > 0 && since < this.d.pollIntervalMs) return Math.max(500, Math.min(this.d.pollIntervalMs - since, lag));
    return undefined;
  }

  /**
   * A launch refused for good after an earlier attempt that may have made a machine: the Run fails
   * once that machine is terminated (no launch is tried meanwhile; the refusal is kept in memory,
   * and after a restart the retried launch meets it again).
   */
  private async failAfterStop(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger, refusal: { reason: string; message: string }): Promise<ReconcileResult> {
    const uid = run.metadata.uid ?? "";
    this.refusedLaunch.set(uid, refusal);
    const wait = await this.stopBeforeEnd(run, ce, provider, log);
    if (wait !== undefined) return { requeueAfterMs: wait };
    this.refusedLaunch.delete(uid);
    await this.finish(run, "Failed", refusal.reason, clip(`launch failed: ${refusal.message}`));
    return;
  }

  /**
   * Before a Run with a possible machine is ended (timeout, cancel, a failed launch): terminates
   * the machine. Returns undefined once the Run may end, or the time (ms) to wait first: for its
   * batch's call (or a retry of it, see batchedTermination), until a
   * decided launch's machine would be listed, or, while termination is blocked, as long as no
   * machine is recorded (an ended Run without one is not followed, so its end must wait; one with
   * a recorded machine ends and goes on terminating it, see afterEnd).
   */
  private async stopBeforeEnd(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger): Promise<number | undefined> {
    const sent = await this.sendBatched(run, ce, provider, log);
    if ("waitMs" in sent) return sent.waitMs;
    const wait = sent.stopped;
    if (wait === undefined) return run.status?.instance?.id ? undefined : (this.blockedWake(run) ?? this.d.pollIntervalMs);
    return wait > 0 ? wait : undefined;
  }

  /**
   * The Run's machine terminated with those of its CE's other Runs ending about now
   * (batchedTermination), the outcome taken by stopMachine. `waitMs` while the batch is due or in
   * its call (the batch wakes the Run then), or before a failed call is tried again; else
   * stopMachine's answer as `stopped` (undefined: blocked). A termination sent and settled is not
   * sent again before a look newer than it shows the machine still up: an ending whose status
   * write did not go through (a conflict, an error) is tried again without a second call.
   */
  private async sendBatched(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger): Promise<{ waitMs: number } | { stopped: number | undefined }> {
    const uid = run.metadata.uid ?? "";
    const sent = this.ending.get(uid);
    // Not after a launch call made since that send (its machine may be another).
    const relaunched = (this.launchTriedAt.get(uid) ?? -Infinity) > (sent?.last ?? Infinity);
    const obs = this.d.tracker.get(uid);
    // A look since that send found the machine terminated, or no longer lists it.
    const ended = obs !== undefined && obs.at > (sent?.last ?? Infinity) && (obs.desc === undefined || obs.desc.state === "terminated");
    if (sent?.settled !== undefined && !relaunched && (ended || this.resendWait(uid, obs, provider) !== undefined)) return { stopped: 0 };
    const batched = await this.batchedTermination(run, ce, provider, log);
    if (batched === "blocked") return { stopped: undefined };
    if ("waitMs" in batched) return batched;
    return { stopped: await this.stopMachine(run, ce, provider, log, batched) };
  }

  private endingOf(uid: string): NonNullable<ReturnType<RunReconciler["ending"]["get"]>> {
    let e = this.ending.get(uid);
    if (!e) this.ending.set(uid, (e = {}));
    return e;
  }

  /**
   * The Run's timeout: the one it was found past when its termination was asked for (kept in
   * `ending`, so a timeout raised meanwhile does not change the outcome; or, by an operator that ran
   * before this one, in the TimedOut condition, whose message `said` is the Run's final one), else
   * its own or its CE's. Without its CE (removed by force) the Run ends as ComputeEnvironmentGone,
   * not by a kept timeout.
   */
  private timeoutFor(run: Run, ce: ComputeEnvironment | undefined): { timeout?: string; decided: boolean; said?: string } {
    const condition = getCondition(run.status?.conditions, TIMED_OUT);
    const said = condition?.status === "True" ? { said: condition.message } : {};
    // Without its CE the Run's own timeout may still end it (a Pending Run): with the message said.
    if (!ce) return { timeout: timeoutOf(run, ce), decided: false, ...said };
    const kept = this.ending.get(run.metadata.uid ?? "")?.timedOut;
    if (kept !== undefined) return { timeout: kept, decided: true, ...said };
    return { timeout: timeoutOf(run, ce), decided: "said" in said, ...said };
  }

  /**
   * A timeout acted on: kept in memory (`ending`) and said in the TimedOut condition (and the
   * Run's message) before its machine's termination is sent, written on the version read, so the
   * decision outlives this process (timeoutFor).
   */
  private async decideTimeout(run: Run, timeout: string, message: string): Promise<void> {
    if (getCondition(run.status?.conditions, TIMED_OUT)?.status !== "True") {
      const said = clip(`${message}; its machine is being terminated`);
      const conditions = timingOutConditions(run.status?.conditions, message, said, run.metadata.generation, run.status?.reason ?? run.status?.phase ?? "Pending");
      // Its echo brings no reconcile: the termination's batch wakes the Run, or this reconcile ends it.
      await this.ownWrite(run, () => this.report(run, { conditions, message: said }, undefined, undefined, undefined, true));
    }
    this.endingOf(run.metadata.uid ?? "").timedOut = timeout;
  }

  /** A batched termination's failures in a row end (sent, or refused for good): counted afresh. */
  private failuresEnd(uid: string): void {
    const e = this.ending.get(uid);
    if (!e) return;
    delete e.failures;
    delete e.retryAt;
  }

  /**
   * The Run's termination, sent with those of the other Runs of its CE that end about now (deleted,
   * cancelled, timed out: one call per CE, see TerminationBatches). Its outcome once that call has
   * ended (a Terminal refusal included); a wait while it waits for the call or is in one (the batch
   * wakes the Run then), or after a call that failed for now and is tried again later (`failures`,
   * `retryAt` of `ending`); or "blocked": a Terminal answer blocks termination and it is not due to
   * be tried again yet. From the 4th failure in a row the Run says so (MachineTerminationBlocked,
   * with the cloud's reason, and an Event; stopMachine's next success removes it).
   */
  private async batchedTermination(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger): Promise<BatchedTermination | { waitMs: number } | "blocked"> {
    const uid = run.metadata.uid ?? "";
    const taken = this.terminations.take(uid);
    if (taken === "pending") return { waitMs: this.d.pollIntervalMs };
    // An outcome had for an older read of the Run (e.g. before its machine was recorded: the call
    // could not look that machine up by its ID) is not this one's: sent again.
    if (taken !== undefined && sentFor(taken, run)) {
      const e: unknown = "error" in taken ? taken.error : undefined;
      if ("error" in taken && !refusedForGood(e)) {
        // Tried again after 1 s, 2 s, 4 s ... (at most 5 minutes), or the wait the error asks for.
        // Not thrown: the batch's failure is logged once for the batch (see the constructor), and a
        // thrown error per Run would take the work queue's shared retry budget from other Runs.
        const state = this.endingOf(uid);
        const failures = (state.failures ?? 0) + 1;
        const hint = e instanceof CloudError ? (e.retryAfterMs ?? 0) : 0;
        const waitMs = Math.min(5 * 60_000, Math.max(hint, 1_000 * 2 ** Math.min(failures - 1, 9)));
        state.failures = failures;
        state.retryAt = monotonicNow() + waitMs;
        // Named at the 4th failure in a row and then at every try at the longest wait: a Run held
        // for long by a termination that keeps failing is not left to debug lines.
        const { reason, message } = describeError(e);
        if (failures === TERMINATION_FAILURES_SAID || waitMs >= 5 * 60_000) log.warn({ failures, waitMs, reason }, "terminating the machine keeps failing: %s; tried again after a wait", message);
        else log.debug({ failures, waitMs, reason }, "terminating the machine failed for now; tried again after a wait");
        const shown = getCondition(run.status?.conditions, MACHINE_BLOCKED);
        if (failures >= TERMINATION_FAILURES_SAID && !(shown?.status === "True" && shown.reason === reason)) {
          const id = run.status?.instance?.id;
          const m = clip(`terminating the Run's machine${id ? ` ${id}` : ""} has failed at least ${failures} times in a row (${reason}): ${message}; tried again after growing waits, at most 5 minutes apart`);
          const conditions = setCondition(run.status?.conditions, { type: MACHINE_BLOCKED, status: "True", reason, message: m, observedGeneration: run.metadata.generation });
          if (await this.report(run, { conditions }).catch(() => false)) void this.d.events.record(run, "Warning", reason, "Terminate", m);
        }
        return { waitMs };
      }
      // Sent, or refused for good: a count of failures in a row starts again.
      this.failuresEnd(uid);
      return taken;
    }
    if (this.isBlocked(uid)) return "blocked";
    const retryAt = this.ending.get(uid)?.retryAt;
    if (retryAt !== undefined && retryAt > monotonicNow()) return { waitMs: Math.max(100, retryAt - monotonicNow()) };
    this.terminations.add(ce, provider, run);
    return { waitMs: this.d.pollIntervalMs };
  }

  /**
   * Terminates the Run's machine, and says when that can be believed. Returns 0 once it can;
   * the time (ms) until a later call can settle it; or undefined when termination is blocked.
   *
   * A Run whose launch was decided but whose machine was never recorded (the operator stopped, or
   * lost the launch's answer, in between) may have a machine the cloud does not list yet (EC2's
   * DescribeInstances is eventually consistent). Only a termination sent once the provider's
   * listing lag has passed since the last launch call (or since this operator first found the
   * launch decided, after a restart) settles that such a machine, if made, was found and terminated.
   *
   * `batched`: the termination was sent in a batch (batchedTermination), with this outcome; without it, it is
   * sent here. The lag is counted to the call's start (its look came after), the send to its end.
   */
  private async stopMachine(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger, batched?: BatchedTermination): Promise<number | undefined> {
    const started = batched?.startedAt ?? Date.now();
    if (!(await this.terminate(run, ce, provider, log, batched))) return undefined;
    const uid = run.metadata.uid ?? "";
    const at = batched?.doneAt ?? Date.now();
    this.failuresEnd(uid);
    const sent = this.endingOf(uid);
    sent.last = at;
    let left = 0;
    if (launchDecided(run)) {
      const since = this.launchTriedAt.get(uid) ?? started;
      this.launchTriedAt.set(uid, since);
      left = since + (provider.unlistedLaunchMs ?? 0) - started;
    }
    if (left > 0) {
      log.info({ waitMs: left }, "the launch's machine may not be listed yet; terminating again once it would be");
      return left;
    }
    sent.settled ??= at;
    return 0;
  }

  /**
   * Asks the cloud to terminate the Run's machine. A Terminal answer (access denied, bad
   * credentials) is not retried in a loop: the Run says what blocks it (Stalled, naming the cause,
   * and an Event) and the call is tried again only after blockedRetryMs. Returns whether it was sent.
   * With `batched`, the call was made in a batch and this only takes its outcome.
   */
  private async terminate(run: Run, ce: ComputeEnvironment, provider: CloudProvider, log: Logger, batched?: BatchedTermination): Promise<boolean> {
    const uid = run.metadata.uid ?? "";
    if (!batched && this.isBlocked(uid)) return false;
    try {
      if (batched) {
        if ("error" in batched) throw batched.error;
      } else {
        const ctx = await this.context(ce, log);
        await provider.terminateRun(ctx, run);
      }
      // Blocked (a Terminal answer), or said after failures in a row (batchedTermination): no more.
      // Not thrown: the termination was sent, and what stopMachine records of it must be recorded.
      this.blocked.delete(uid);
      const conditions = withoutBlocked(run);
      if (conditions) await this.report(run, { conditions }).catch(() => false);
      return true;
    } catch (e) {
      if (!refusedForGood(e)) throw e;
      const { reason, message } = describeError(e);
      const m = clip(`cannot terminate the Run's machine${run.status?.instance?.id ? ` ${run.status.instance.id}` : ""}: ${message}`);
      this.blocked.set(uid, monotonicNow() + (this.d.blockedRetryMs ?? polls(this.d.pollIntervalMs, 20, 5_000, 5 * 60_000)));
      const g = run.metadata.generation;
      let c = setCondition(run.status?.conditions, { type: MACHINE_BLOCKED, status: "True", reason, message: m, observedGeneration: g });
      c = setCondition(c, { type: "Stalled", status: "True", reason, message: m, observedGeneration: g });
      const written = await this.report(run, { conditions: c });
      if (written) void this.d.events.record(run, "Warning", reason, "Terminate", m);
      log.warn({ reason }, "terminating the machine is blocked: %s", message);
      return false;
    }
  }

  private async context(ce: ComputeEnvironment, log: Logger): Promise<EnvContext> {
    const signal = this.signals.get(log);
    return { ce, credentials: await resolveCredentials(this.d.client, ce, this.d.secrets, signal), logger: log, ...(signal ? { signal } : {}) };
  }

  /** Moves the Run to a terminal phase (once) and frees its slot. */
  private async finish(run: Run, phase: "Succeeded" | "Failed" | "Cancelled", reason: string, message: string, extra: Partial<RunStatus> = {}): Promise<void> {
    const ready = phase === "Succeeded" ? "True" : "False";
    // A timeout decided and overtaken (the Run cancelled, its CE deleted or gone before it ended
    // Timeout) is not left said beside another outcome.
    const overtaken = reason !== "Timeout" && getCondition(run.status?.conditions, TIMED_OUT) !== undefined;
    const conditions = overtaken ? { conditions: (run.status?.conditions ?? []).filter((c) => c.type !== TIMED_OUT) } : {};
    // A capacity wait ends with the Run (the merge patch removes the field).
    const written = await this.report(run, { phase, reason, message, completionTime: run.status?.completionTime ?? now(), capacityWait: undefined, ...conditions, ...extra }, ready, reason, message);
    // What was sent to end its machine stays known while that machine is followed (afterEnd).
    this.release(run, machineMayExist(run));
    if (written) {
      const exit = extra.exitCode !== undefined ? ` (exit code ${extra.exitCode})` : "";
      void this.d.events.record(run, phase === "Succeeded" ? "Normal" : "Warning", phase, "Complete", clip(`${phase}${exit}: ${message}`));
    }
  }

  /** Frees the Run's slot and what is kept for its launch; `keepTermination`: and not what is kept for its machine's termination. */
  private release(run: Run, keepTermination = false): void {
    const uid = run.metadata.uid ?? "";
    this.capacityAttempts.delete(uid);
    this.refusedLaunch.delete(uid);
    this.launchTriedAt.delete(uid);
    this.launchUnanswered.delete(uid);
    if (!keepTermination) {
      this.ending.delete(uid);
      this.terminations.forget(uid);
      this.blocked.delete(uid);
    }
    for (const [ceUid, set] of this.claims) {
      if (set.delete(uid)) {
        if (set.size === 0) this.claims.delete(ceUid);
        // A slot freed: Runs of the same CE waiting for one can go.
        for (const r of runsOfCe(this.d.runs, run.metadata.namespace, run.spec.computeEnvironmentRef.name)) {
          if ((r.status?.phase ?? "Pending") === "Pending") this.d.enqueueRun(this.key(r));
        }
      }
    }
  }

  /**
   * announceCloudWrites, once for the Runs of a CE: a record written stands for
   * ANNOUNCED_HOLD_MS, long enough for the watch to bring it into the cache (then the CE shows it),
   * short enough that a record removed meanwhile (by hand) is written again by the next launch.
   */
  private announceOnce(ce: ComputeEnvironment): Promise<void> {
    const uid = ce.metadata.uid ?? "";
    if (ce.metadata.annotations?.[CLOUD_WRITES_ANNOTATION]) {
      this.announcing.delete(uid);
      return Promise.resolve();
    }
    const now = monotonicNow();
    for (const [k, a] of this.announcing) if (a.doneAt !== undefined && now - a.doneAt > ANNOUNCED_HOLD_MS) this.announcing.delete(k);
    let entry = this.announcing.get(uid);
    if (!entry) {
      const mine: { writing: Promise<void>; doneAt?: number } = {
        writing: announceCloudWrites(this.d.client, ce).then(() => {
          mine.doneAt = monotonicNow();
        }, (err: unknown) => {
          this.announcing.delete(uid);
          throw err;
        }),
      };
      this.announcing.set(uid, mine);
      entry = mine;
    }
    return entry.writing;
  }

  private async withCeLock<T>(ceUid: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.ceLocks.get(ceUid) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const chained = prev.then(() => mine);
    this.ceLocks.set(ceUid, chained);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.ceLocks.get(ceUid) === chained) this.ceLocks.delete(ceUid);
    }
  }

  /**
   * Writes status (phase fields + the kstatus trio, see runConditions) only when something
   * changed. A phase transition carries the resourceVersion it was decided on, so a stale writer
   * (a Run read from a lagging cache, a leader that lost its Lease) fails with 409 instead of
   * overwriting.
   */
  /** `lock`: guarded by the resourceVersion even without a phase change (phase changes always are). */
  private async report(run: Run, patch: Partial<RunStatus>, ready?: "True" | "False", reason?: string, message?: string, lock = false): Promise<boolean> {
    const next: RunStatus = { ...(run.status ?? {}), ...patch, observedGeneration: run.metadata.generation };
    if (ready && reason !== undefined) next.conditions = runConditions(patch.conditions ?? run.status?.conditions, next.phase ?? "Pending", run.metadata.generation, reason, message ?? "");
    const transition = next.phase !== run.status?.phase;
    const updated = await updateStatus(this.d.client, RunResource, run, next, transition || lock ? { optimisticLock: true } : {});
    if (updated) {
      run.status = next;
      // later writes of this reconcile build on the version just written
      if (updated.metadata.resourceVersion) run.metadata.resourceVersion = updated.metadata.resourceVersion;
    }
    return updated !== undefined;
  }
}

/**
 * The kstatus trio of a Run, so GitOps tools read a Run as they read any resource:
 * - Succeeded: Ready=True (kstatus Current);
 * - Failed or Cancelled: Stalled=True with the Run's reason (kstatus Failed), Ready=False;
 * - every other phase: Reconciling=True (kstatus InProgress), Ready=False.
 */
export function runConditions(conditions: Condition[] | undefined, phase: Phase, generation: number | undefined, reason: string, message: string): Condition[] {
  const state = phase === "Succeeded" ? "ready" : phase === "Failed" || phase === "Cancelled" ? "stalled" : "reconciling";
  const g = generation === undefined ? {} : { observedGeneration: generation };
  let c = setCondition(conditions, { type: "Ready", status: state === "ready" ? "True" : "False", reason, message, ...g });
  c = setCondition(c, { type: "Reconciling", status: state === "reconciling" ? "True" : "False", reason: state === "reconciling" ? reason : "Finished", message: state === "reconciling" ? message : "", ...g });
  c = setCondition(c, { type: "Stalled", status: state === "stalled" ? "True" : "False", reason: state === "stalled" ? reason : "Progressing", message: state === "stalled" ? message : "", ...g });
  return c;
}

/**
 * A Run's conditions once its timeout is decided, before its machine's termination is sent:
 * TimedOut says the timeout (`message`, the Run's final message), and Ready, and Reconciling while
 * it is True, say what status.message says meanwhile (`said`), each with the status and reason it
 * had. Stalled stays as it is: a termination blocked before (Stalled=True, e.g. AccessDenied) is
 * still blocked until one gets through.
 */
export function timingOutConditions(conditions: Condition[] | undefined, message: string, said: string, generation: number | undefined, reason: string): Condition[] {
  const g = generation === undefined ? {} : { observedGeneration: generation };
  let c = setCondition(conditions, { type: TIMED_OUT, status: "True", reason: "Timeout", message, ...g });
  // A status without Ready (written by hand, or by an old operator) gets one, with `reason`.
  if (!getCondition(c, "Ready")) c = setCondition(c, { type: "Ready", status: "False", reason, message: said, ...g });
  for (const type of ["Ready", "Reconciling", "Stalled"]) {
    const had = getCondition(c, type);
    if (!had) continue;
    // Each keeps what it said, for the generation observed; Ready and a True Reconciling say `said`.
    const says = type === "Ready" || (type === "Reconciling" && had.status === "True") ? said : had.message;
    c = setCondition(c, { type, status: had.status, reason: had.reason, message: says, ...g });
  }
  return c;
}

/**
 * When a finished Run with spec.ttlSecondsAfterFinished is due for deletion (ms since the epoch):
 * its status.completionTime plus the TTL; undefined without a TTL, before the end, or without a
 * recorded end (then the Ready condition's last transition, written with the final phase, stands in).
 */
export function ttlDue(run: Run): number | undefined {
  const ttl = run.spec.ttlSecondsAfterFinished;
  if (ttl === undefined || !isTerminal(run)) return undefined;
  const ended = Date.parse(run.status?.completionTime ?? getCondition(run.status?.conditions, "Ready")?.lastTransitionTime ?? "");
  if (!Number.isFinite(ended)) return undefined;
  return ended + ttl * 1000;
}

/** Longest single wait for a TTL (a reconcile then looks again); keeps timers within setTimeout's range. */
const MAX_TTL_WAIT_MS = 24 * 3600_000;

/** The longest a look shared by many Runs' reconciles (reachWith) may take. */
const LOOK_TIMEOUT_MS = 60_000;

/** `p`'s answer, unless `signal` aborts first (then its reason is thrown; `p` goes on for others). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** A wake-up for when the Run's TTL passes (a little after, so the check finds it due). */
function ttlWake(run: Run): ReconcileResult {
  const due = ttlDue(run);
  if (due === undefined) return;
  return { requeueAfterMs: Math.min(MAX_TTL_WAIT_MS, Math.max(100, due - Date.now() + 50)) };
}

/** The earlier of two requeues. */
function soonest(a: ReconcileResult, b: ReconcileResult): ReconcileResult {
  const x = a?.requeueAfterMs;
  const y = b?.requeueAfterMs;
  if (x === undefined) return b;
  if (y === undefined) return a;
  return { requeueAfterMs: Math.min(x, y) };
}

/** The Run's conditions without MachineTerminationBlocked, or undefined when it has none to remove. */
function withoutBlocked(run: Run): Condition[] | undefined {
  const all = run.status?.conditions;
  const blocked = getCondition(all, MACHINE_BLOCKED);
  if (!all || !blocked) return undefined;
  const out = all.filter((c) => c.type !== MACHINE_BLOCKED);
  // A refusal for good also said itself in Stalled (terminate), maybe with another reason than
  // the condition's latest: the kstatus trio says the Run's own phase and reason again.
  const s = run.status ?? {};
  return runConditions(out, s.phase ?? "Pending", run.metadata.generation, s.reason ?? s.phase ?? "Pending", s.message ?? "");
}

/** A Run's timeout as its messages name it: its own, or its CE's default (said so). */
function timeoutNamed(run: Run, timeout: string): string {
  return `${timeout}${run.spec.timeout ? "" : " (the ComputeEnvironment's defaultRunTimeout)"}`;
}

/** How long until just after a timeout of `timeoutMs` counted from `since` (epoch ms) has passed, at least 1 s; Infinity without one. */
function timeoutWake(since: number, timeoutMs: number | undefined): number {
  return timeoutMs === undefined ? Infinity : Math.max(1_000, since + timeoutMs - Date.now() + 500);
}

/** The Run's own timeout, else its ComputeEnvironment's defaultRunTimeout (which has a default). */
export function timeoutOf(run: Run, ce: ComputeEnvironment | undefined): string | undefined {
  if (run.spec.timeout) return run.spec.timeout;
  if (!ce) return undefined;
  return ce.spec.defaultRunTimeout ?? DEFAULT_RUN_TIMEOUT;
}

/**
 * Why a Run whose CE was removed by force ends, and with what its machine is terminated; `via`:
 * when the CE now holding the name (its UID) found machines of the removed CE (reachWith), and
 * whether this Run's was among them.
 */
function goneMessage(run: Run, ce: ComputeEnvironment, via: { uid: string; foundThis: boolean } | undefined): string {
  const which = run.status?.instance?.id ? `machine ${run.status.instance.id}` : "any machine the launch made";
  if (via) {
    const finds = via.foundThis ? "finds the Run's machine" : "finds machines launched under it (not this Run's, which may be gone)";
    return `ComputeEnvironment ${ce.metadata.name} was removed while the Run was active (its finalizer taken off) before this operator started; the ComputeEnvironment now holding the name (UID ${via.uid}) ${finds} in its account and region, and the operator terminates ${which} with its credentials`;
  }
  return `ComputeEnvironment ${ce.metadata.name} was removed while the Run was active (its finalizer taken off); the operator terminates ${which} with the credentials and region the ComputeEnvironment last named`;
}
