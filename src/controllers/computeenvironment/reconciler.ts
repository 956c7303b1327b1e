/**
 * ComputeEnvironment reconciler: observe, decide, act, report.
 *
 * - Adds the finalizer before anything external is written, protects the credentials Secret.
 * - Asks the provider to converge the environment; Ready when every resource is in place.
 * - Terminal provider errors (bad input, foreign resources, missing permissions) become Stalled
 *   with the provider's message and wait for a change; retryable ones back off.
 * - Deletion: stops the CE's Runs first (the Run controller terminates their machines), waits for
 *   the machines to be gone, disposes (unless Retain), releases the Secret, then the finalizer.
 */
import { createHash } from "node:crypto";
import type { KubeClient } from "../../engine/kube.js";
import { splitKey } from "../../engine/kube.js";
import { monotonicNow } from "../../engine/clock.js";
import { lazyChild, type Logger } from "../../engine/logger.js";
import type { EventRecorder } from "../../engine/events.js";
import type { ReconcileResult } from "../../engine/controller.js";
import { ensureFinalizer, hasFinalizer, removeFinalizer } from "../../engine/finalizers.js";
import { getCondition, setCondition, updateStatus } from "../../engine/conditions.js";
import type { Condition } from "../../engine/conditions.js";
import type { ComputeEnvironment, ComputeEnvironmentStatus, Run } from "../../api/types.js";
import { ComputeEnvironmentResource, RunResource } from "../../api/types.js";
import { ANNOTATION_RECONCILE_REQUESTED } from "../../api/constants.js";
import type { CloudProvider, EnvContext } from "../../cloud/provider.js";
import { CloudError } from "../../cloud/provider.js";
import { noteFreshRead } from "../fresh-reads.js";
import type { SecretGetter } from "../shared.js";
import {
  CredentialsError,
  FINALIZER,
  clip,
  describeError,
  kstatus,
  protectSecret,
  refusedForGood,
  releaseUnusedSecrets,
  resolveCredentials,
} from "../shared.js";
import { belongsTo, isRunActive, isTerminal, machineMayExist } from "../run/phases.js";
import { cloudWritesMayHaveHappened, markCloudWrites } from "./cloud-writes.js";
import type { CacheSource, ListSource } from "../run/tracker.js";
import { runsOfCe } from "../run/tracker.js";

export interface ComputeEnvironmentDeps {
  client: KubeClient;
  providers: ReadonlyMap<string, CloudProvider>;
  logger: Logger;
  events: EventRecorder;
  runs: ListSource<Run>;
  /** The CE watch cache; with get(), reconciles read the CE from it instead of the API. */
  ces: ListSource<ComputeEnvironment> | CacheSource<ComputeEnvironment>;
  /** Reads Secrets (from the cache); default: a GET. */
  secrets?: SecretGetter;
  enqueueRun: (key: string) => void;
  /** How often a Ready environment is re-checked against the cloud (drift). */
  driftCheckMs?: number;
  /** The first re-check of a Stalled CE (default 10 s; see STALLED_FIRST_RECHECK_MS). */
  stalledFirstRecheckMs?: number;
  /** How long to wait before looking again while Runs are being stopped during deletion. */
  deletionPollMs?: number;
  /**
   * While its Runs are being stopped, a CE being deleted looks for machines to stop (the batched
   * termination, provider.sweepOrphans) at most this often; and always once more, last, before its
   * resources go. Default DELETION_SWEEP_EVERY_MS.
   */
  deletionSweepMs?: number;
  /** Credentials Secrets (by name) still needed in a namespace besides the CEs' own (see gone-ces.ts). */
  secretsHeldFor?: (namespace: string) => Iterable<string>;
}

const PROVISIONED = "ResourcesProvisioned";
/** The longest a Stalled environment waits before looking at the cloud again without any change. */
const STALLED_RECHECK_MS = 30 * 60_000;
/**
 * The first re-check of a Stalled environment, growing fourfold per same answer (10 s, 40 s,
 * 160 s, ~11 min, then STALLED_RECHECK_MS). A fix made in the cloud takes a while to count (IAM
 * and Azure role assignments are eventually consistent: seconds, at worst minutes), so the attempt
 * right after it (the reconcile-requested annotation set as the role is granted) may get the old
 * answer: the next look must come soon, not half an hour later.
 */
const STALLED_FIRST_RECHECK_MS = 10_000;

/** The wait before the next look at a Stalled environment after `answers` same Terminal answers in a row. */
export function stalledRecheckMs(answers: number, firstMs = STALLED_FIRST_RECHECK_MS): number {
  return Math.min(STALLED_RECHECK_MS, firstMs * 4 ** Math.max(0, answers - 1));
}
/**
 * A failed orphan sweep is tried again after this, doubling per failure up to SWEEP_RETRY_MAX_MS
 * (or after the cloud's own Retry-After when that is longer), not only at the next drift check: a
 * VM Azure answers "busy" for now, or a throttled listing, must not keep an orphan for 10 minutes.
 */
export const SWEEP_RETRY_BASE_MS = 5_000;
export const SWEEP_RETRY_MAX_MS = 5 * 60_000;
const CREDENTIALS = "CredentialsValid";
/**
 * A CE being deleted stops all its machines at its first look (one batched call per 1,000); the
 * looks after it, until its Runs have ended, only find machines launched since (a launch that was
 * already under way), so they come at this pace, not at every reconcile: a deletion under 1,000
 * Runs reconciles its CE as often as every second (each Run's change, gathered over one), and each
 * look lists the CE's machines.
 */
export const DELETION_SWEEP_EVERY_MS = 15_000;
/** How many UIDs of CEs that left the cluster are remembered (a few dozen bytes each). */
const GONE_REMEMBERED = 1_000;

export class ComputeEnvironmentReconciler {
  private readonly d: Required<Omit<ComputeEnvironmentDeps, "driftCheckMs" | "stalledFirstRecheckMs" | "deletionPollMs" | "deletionSweepMs" | "secrets" | "secretsHeldFor">> & { driftCheckMs: number; stalledFirstRecheckMs: number; deletionPollMs: number; deletionSweepMs: number; secrets?: SecretGetter; secretsHeldFor?: (namespace: string) => Iterable<string> };
  /** uid -> generation and time of the last successful provision; lets cheap reconciles skip the cloud. */
  private readonly converged = new Map<string, { generation: number; at: number; credentialsVersion: string }>();
  /** uid -> the spec generation and credentials a Terminal provider error answered. */
  private readonly stalled = new Map<string, { generation: number; at: number; credentialsVersion: string; requested: string; answers: number }>();
  /** uid -> an orphan sweep that failed for a passing reason: how often in a row, and when to try again. */
  private readonly sweepRetry = new Map<string, { failures: number; due: number }>();
  /** uid -> when the last look for machines to stop of the CE being deleted ended (monotonic). */
  private readonly deletionSwept = new Map<string, number>();
  /**
   * UIDs of CEs that left the cluster (the latest GONE_REMEMBERED): nothing more is kept of them.
   * A reconcile that was under way as its CE went may record something after the watch event
   * forgot it (see keep).
   */
  private readonly gone = new Set<string>();

  constructor(deps: ComputeEnvironmentDeps) {
    this.d = { driftCheckMs: 10 * 60_000, stalledFirstRecheckMs: STALLED_FIRST_RECHECK_MS, deletionPollMs: 3_000, deletionSweepMs: DELETION_SWEEP_EVERY_MS, ...deps };
  }

  /** Drops all that is kept of a CE (by uid): when its finalizer is released. */
  private forget(uid: string): void {
    for (const kept of [this.converged, this.stalled, this.sweepRetry, this.deletionSwept]) kept.delete(uid);
  }

  /**
   * The CE left the cluster (its DELETED watch event, or a relist that found another of its name):
   * all that is kept of it goes, and nothing is kept of it from now on. Also for a CE whose
   * finalizer was taken off by hand, whose deletion never reached its finalizer release.
   */
  forgetGone(uid: string): void {
    this.forget(uid);
    this.gone.add(uid);
    if (this.gone.size > GONE_REMEMBERED) this.gone.delete(this.gone.values().next().value ?? "");
  }

  /** Records `value` for the CE with this uid, unless that CE is gone. */
  private keep<V>(kept: Map<string, V>, uid: string, value: V): void {
    if (!this.gone.has(uid)) kept.set(uid, value);
  }

  /** Whether anything of the CE with this uid is kept (for tests). */
  remembers(uid: string): boolean {
    return this.converged.has(uid) || this.stalled.has(uid) || this.sweepRetry.has(uid) || this.deletionSwept.has(uid);
  }

  private recheckMs(answers: number): number {
    return stalledRecheckMs(answers, this.d.stalledFirstRecheckMs);
  }

  /** Runs (from the cache) of this CE (see belongsTo: not those launched under a removed CE of the same name). */
  runsOf(ce: ComputeEnvironment): Run[] {
    return runsOfCe(this.d.runs, ce.metadata.namespace, ce.metadata.name).filter((r) => belongsTo(r, ce));
  }

  /** `signal` aborts when the controller's per-reconcile deadline passes; it reaches the provider. */
  async reconcile(key: string, signal?: AbortSignal): Promise<ReconcileResult> {
    const { namespace, name } = splitKey(key);
    // From the watch cache (a private copy) when there is one; see RunReconciler.read for why a
    // stale read does no harm, and finalize() for the one place that reads the API first.
    const ces = this.d.ces;
    const cached = "get" in ces ? ces.get(key) : undefined;
    const ce = "get" in ces
      ? (cached ? structuredClone(cached) : undefined)
      : await this.d.client.get<ComputeEnvironment>(ComputeEnvironmentResource, namespace, name);
    // Gone: what was kept of it went with its watch event (forgetGone).
    if (!ce) return;
    // In the cache, so in the cluster (again, should a relist have missed it for a while).
    this.gone.delete(ce.metadata.uid ?? "");
    const log = lazyChild(this.d.logger, { ce: key });
    const provider = this.d.providers.get(ce.spec.provider);
    if (ce.metadata.deletionTimestamp) return this.finalize(ce, provider, log, signal);

    await this.pruneHistory(ce, log);
    const generation = ce.metadata.generation;
    const activeRuns = this.runsOf(ce).filter(isRunActive).length;

    if (!provider) {
      await this.report(ce, {
        phase: "Failed",
        activeRuns,
        conditions: kstatus(ce.status?.conditions, generation, "stalled", "ProviderUnavailable",
          `provider "${ce.spec.provider}" is not available in this operator build`),
      });
      return;
    }

    const withFinalizer = await ensureFinalizer(this.d.client, ComputeEnvironmentResource, ce, FINALIZER);

    let ctx: EnvContext;
    try {
      const credentials = await resolveCredentials(this.d.client, withFinalizer, this.d.secrets, signal);
      ctx = { ce: withFinalizer, credentials, logger: log, ...(signal ? { signal } : {}) };
      const ref = withFinalizer.spec.credentials?.secretRef;
      if (ref) await protectSecret(this.d.client, namespace ?? "default", ref.name, this.d.secrets);
    } catch (e) {
      if (!(e instanceof CredentialsError)) throw e;
      let conditions = kstatus(withFinalizer.status?.conditions, generation, "stalled", e.reason, e.message);
      conditions = setCondition(conditions, { type: CREDENTIALS, status: "False", reason: e.reason, message: e.message, observedGeneration: generation });
      conditions = provisionedFollows(conditions, generation, e.reason, e.message);
      const written = await this.report(withFinalizer, { phase: "Failed", activeRuns, conditions });
      if (written) void this.d.events.record(withFinalizer, "Warning", e.reason, "ResolveCredentials", e.message);
      // The Secret may be created later; look again now and then (the condition says why).
      return { requeueAfterMs: 15_000 };
    }

    const credentialsVersion = credentialsFingerprint(ctx);
    const stalled = this.stalled.get(withFinalizer.metadata.uid ?? "");
    const requested = withFinalizer.metadata.annotations?.[ANNOTATION_RECONCILE_REQUESTED] ?? "";
    // The last Terminal answer was to this same spec, credentials and retry request.
    const sameAsStall = stalled !== undefined && stalled.generation === (generation ?? 0) &&
      stalled.credentialsVersion === credentialsVersion && stalled.requested === requested;
    // When the re-check is due (the wait after the status write below may come out negative if
    // it passed meanwhile: the Controller runs the key again at once).
    const recheckDue = stalled ? stalled.at + this.recheckMs(stalled.answers) : 0;
    if (stalled && sameAsStall && monotonicNow() < recheckDue) {
      // Same spec, same credentials, no retry asked for: the answer would be the same. Wait for a
      // change, the annotation, or the re-check (sooner after the first answers; see STALLED_FIRST_RECHECK_MS).
      await this.report(withFinalizer, { activeRuns });
      return { requeueAfterMs: recheckDue - monotonicNow() };
    }
    // The entry stays until an attempt succeeds: a passing failure (throttled, a 5xx) between two
    // same Terminal answers does not start the re-checks over from the shortest wait.
    const last = this.converged.get(withFinalizer.metadata.uid ?? "");
    const isReady = getCondition(withFinalizer.status?.conditions, "Ready")?.status === "True";
    if (
      isReady &&
      last &&
      last.generation === generation &&
      last.credentialsVersion === credentialsVersion &&
      monotonicNow() < last.at + this.d.driftCheckMs &&
      withFinalizer.status?.observedGeneration === generation &&
      // A launch refused for the environment's resources: check them now, not at the drift check.
      provider.environmentSuspect?.(withFinalizer) !== true
    ) {
      await this.report(withFinalizer, { activeRuns });
      // A sweep that failed for a passing reason is tried again on its own, without a converge.
      const retry = this.sweepRetry.get(withFinalizer.metadata.uid ?? "");
      if (retry && retry.due <= monotonicNow()) await this.sweep(provider, ctx, withFinalizer, log);
      return { requeueAfterMs: this.untilNextCheck(withFinalizer, last.at + this.d.driftCheckMs - monotonicNow()) };
    }

    // Mark that cloud writes may start, so deletion knows whether there is anything to dispose.
    let conditions = setCondition(withFinalizer.status?.conditions, {
      type: CREDENTIALS, status: "True", reason: "Resolved",
      message: ctx.credentials.source === "secret" ? `using Secret ${ctx.credentials.secretName}` : "using the ambient identity",
      observedGeneration: generation,
    });
    if (!getCondition(conditions, PROVISIONED) || withFinalizer.status?.observedGeneration !== generation) {
      conditions = kstatus(conditions, generation, "reconciling", "Provisioning", "converging cloud resources");
      if (!getCondition(conditions, PROVISIONED)) {
        conditions = setCondition(conditions, { type: PROVISIONED, status: "Unknown", reason: "Provisioning", message: "creating cloud resources", observedGeneration: generation });
      }
      await this.report(withFinalizer, { phase: isReady ? "Ready" : "Provisioning", activeRuns, conditions });
    }

    try {
      // Recorded before the first cloud write, so deletion knows whether anything may need disposal.
      ctx.beforeCloudWrite = () => markCloudWrites(this.d.client, withFinalizer);
      if (!provider.announcesCloudWrites) await markCloudWrites(this.d.client, withFinalizer);
      const obs = await provider.provisionEnvironment(ctx);
      let next = setCondition(conditions, {
        type: PROVISIONED,
        status: obs.ready ? "True" : "False",
        reason: obs.ready ? "Provisioned" : "Incomplete",
        message: obs.ready ? `${obs.resources.length} cloud resources in place` : `missing: ${obs.missing.join(", ")}`,
        observedGeneration: generation,
      });
      // Checks the provider could not run are said, never passed off as valid.
      if (obs.notes !== undefined) {
        next = setCondition(next, obs.notes.length > 0
          ? { type: "Validated", status: "Unknown", reason: "ValidationSkipped", message: clip(obs.notes.join("; ")), observedGeneration: generation }
          : { type: "Validated", status: "True", reason: "Validated", message: "the spec was checked against the cloud", observedGeneration: generation });
      }
      next = kstatus(next, generation, obs.ready ? "ready" : "reconciling",
        obs.ready ? "Ready" : "Provisioning",
        obs.ready ? "every cloud resource is in place" : clip(`waiting for: ${obs.missing.join(", ")}`));
      const written = await this.report(withFinalizer, {
        ...obs.status,
        phase: obs.ready ? "Ready" : "Provisioning",
        resources: obs.resources,
        activeRuns,
        conditions: next,
        observedGeneration: generation,
      });
      if (!obs.ready) return { requeueAfterMs: 5_000 };
      this.keep(this.converged, withFinalizer.metadata.uid ?? "", { generation: generation ?? 0, at: monotonicNow(), credentialsVersion });
      this.stalled.delete(withFinalizer.metadata.uid ?? "");
      await this.sweep(provider, ctx, withFinalizer, log);
      await releaseUnusedSecrets(this.d.client, namespace ?? "default", undefined, this.d.secretsHeldFor?.(namespace ?? "default"));
      if (written && !isReady) {
        void this.d.events.record(withFinalizer, "Normal", "Ready", "Provision", "every cloud resource is in place");
        // Runs waiting for this CE can go.
        for (const r of this.runsOf(withFinalizer)) this.d.enqueueRun(`${r.metadata.namespace}/${r.metadata.name}`);
      }
      return { requeueAfterMs: this.untilNextCheck(withFinalizer, this.d.driftCheckMs) };
    } catch (e) {
      this.converged.delete(withFinalizer.metadata.uid ?? "");
      const { reason, message } = describeError(e);
      if (e instanceof CloudError && e.kind === "Terminal") {
        let next = kstatus(conditions, generation, "stalled", reason, clip(message));
        next = provisionedFollows(next, generation, reason, clip(message));
        if (reason === "InvalidCredentials" || reason === "AccessDenied") {
          const secret = ctx.credentials.secretName ?? "";
          const who = ctx.credentials.source === "secret" ? `credentials from Secret ${secret}` : "the operator's ambient credentials";
          // Name the credentials once: the provider's message may already name the Secret or the ambient identity.
          const named = ctx.credentials.source === "secret" ? message.includes(secret) : message.startsWith("the operator's");
          const m = clip(named ? message : `${who}: ${message}`);
          next = kstatus(next, generation, "stalled", reason, m);
          next = setCondition(next, { type: CREDENTIALS, status: "False", reason, message: m, observedGeneration: generation });
        }
        // The same answer to the same spec, credentials and request as last time: the next look waits longer.
        const answers = sameAsStall ? (stalled?.answers ?? 0) + 1 : 1;
        this.keep(this.stalled, withFinalizer.metadata.uid ?? "", { generation: generation ?? 0, at: monotonicNow(), credentialsVersion, requested, answers });
        const written = await this.report(withFinalizer, { phase: "Failed", activeRuns, conditions: next, observedGeneration: generation });
        if (written) void this.d.events.record(withFinalizer, "Warning", reason, "Provision", getCondition(next, "Stalled")?.message ?? clip(message));
        log.warn({ reason }, "environment stalled: %s", message);
        // Waits for a spec or credentials change; re-checks, soon and then seldom, cover fixes made in the cloud itself.
        return { requeueAfterMs: this.recheckMs(answers) };
      }
      const next = kstatus(conditions, generation, "reconciling", reason, clip(`retrying: ${message}`));
      await this.report(withFinalizer, { activeRuns, conditions: next });
      throw e;
    }
  }

  /**
   * spec.runHistory: keeps the newest succeededLimit Succeeded Runs and failedLimit Failed or
   * Cancelled Runs of this CE and deletes the older ones (oldest completion first), like a
   * CronJob's history limits. Active Runs are never counted or touched. Reads the Run cache only;
   * each delete names the Run's UID. A deleted Run's finalizer touches the cloud only for what is
   * left of its own machine (nothing once that is gone).
   */
  private async pruneHistory(ce: ComputeEnvironment, log: Logger): Promise<void> {
    const limits = ce.spec.runHistory;
    if (!limits) return;
    const finished = this.runsOf(ce).filter((r) => isTerminal(r) && !r.metadata.deletionTimestamp);
    const excess = [
      ...beyondLimit(finished.filter((r) => r.status?.phase === "Succeeded"), limits.succeededLimit),
      ...beyondLimit(finished.filter((r) => r.status?.phase !== "Succeeded"), limits.failedLimit),
    ];
    if (excess.length === 0) return;
    const deleted: string[] = [];
    for (const r of excess) {
      const { namespace, name, uid } = r.metadata;
      if (await this.d.client.delete(RunResource, namespace, name ?? "", uid ? { preconditions: { uid } } : {})) deleted.push(name ?? "");
    }
    if (deleted.length === 0) return;
    log.info({ runs: deleted }, "deleted finished Runs beyond the runHistory limits");
    void this.d.events.record(ce, "Normal", "RunHistoryPruned", "Prune",
      clip(`deleted ${deleted.length} finished Run(s) beyond runHistory (succeededLimit ${limits.succeededLimit ?? "unlimited"}, failedLimit ${limits.failedLimit ?? "unlimited"}): ${deleted.join(", ")}`));
  }

  /**
   * Machines tagged for this CE whose Run no longer exists are stopped. Runs the cache knows of
   * (any phase) count as live; the provider checks the ownership tags.
   */
  private async sweep(provider: CloudProvider, ctx: EnvContext, ce: ComputeEnvironment, log: Logger): Promise<void> {
    if (!provider.sweepOrphans) return;
    const uid = ce.metadata.uid ?? "";
    // A Run that ended without a machine on record (e.g. cancelled mid-launch) does not protect
    // a machine carrying its UID: such a machine is an orphan.
    const live = new Set(this.runsOf(ce).filter((r) => isRunActive(r) || machineMayExist(r)).map((r) => r.metadata.uid ?? ""));
    try {
      const stopped = await provider.sweepOrphans(ctx, live);
      if (stopped.length > 0) {
        log.warn({ machines: stopped }, "terminated machines whose Run no longer exists");
        void this.d.events.record(ce, "Warning", "OrphansTerminated", "Sweep", clip(`terminated ${stopped.length} machine(s) whose Run no longer exists: ${stopped.join(", ")}`));
      }
      this.sweepRetry.delete(uid);
    } catch (e) {
      if (e instanceof CloudError && e.kind === "Terminal") {
        // The same answer until something changes (a permission, say): the next drift check looks again.
        this.sweepRetry.delete(uid);
        log.warn({ err: e }, "orphan sweep failed; will try again at the next drift check");
        return;
      }
      const failures = (this.sweepRetry.get(uid)?.failures ?? 0) + 1;
      const backoff = Math.min(SWEEP_RETRY_MAX_MS, SWEEP_RETRY_BASE_MS * 2 ** (failures - 1));
      const waitMs = Math.max(backoff, e instanceof CloudError ? (e.retryAfterMs ?? 0) : 0);
      this.keep(this.sweepRetry, uid, { failures, due: monotonicNow() + waitMs });
      log.warn({ err: e, failures, retryInMs: waitMs }, "orphan sweep failed; will try again soon");
    }
  }

  /** The requeue delay of a converged CE: the drift check, or sooner when a failed sweep is due. */
  private untilNextCheck(ce: ComputeEnvironment, driftInMs: number): number {
    const retry = this.sweepRetry.get(ce.metadata.uid ?? "");
    return retry ? Math.max(0, Math.min(driftInMs, retry.due - monotonicNow())) : driftInMs;
  }

  private async finalize(ce: ComputeEnvironment, provider: CloudProvider | undefined, log: Logger, signal?: AbortSignal): Promise<ReconcileResult> {
    if (!hasFinalizer(ce, FINALIZER)) return;
    const generation = ce.metadata.generation;
    const runs = this.runsOf(ce);
    const policy = ce.spec.deletionPolicy ?? "Delete";
    // Nothing was ever written to the cloud (no record made before a first write): there is nothing
    // to stop or dispose, whatever the state of the credentials.
    const wrote = cloudWritesMayHaveHappened(ce) && getCondition(ce.status?.conditions, PROVISIONED)?.reason !== "Disposed";
    // Every Run must have ended (and its machine be gone) first: a Run caught between its decision
    // to launch and the launch itself must not find its role and profile disposed under it.
    const pending = runs.filter((r) => isRunActive(r) || machineMayExist(r));
    // Runs that never launched are also told (they become Cancelled).
    for (const r of runs.filter(isRunActive)) this.d.enqueueRun(`${r.metadata.namespace}/${r.metadata.name}`);

    if (wrote && provider?.sweepOrphans) {
      // The CE's machines are terminated here, in batches (one call per 1,000 instances), rather
      // than one call per Run; then whatever machine no Run owns any more (orphans) before the
      // role and profile go. While Runs are still being stopped, at most every deletionSweepMs;
      // the last look, once none is, always.
      const last = this.deletionSwept.get(ce.metadata.uid ?? "");
      if (pending.length === 0 || last === undefined || monotonicNow() - last >= this.d.deletionSweepMs) {
        const swept = await this.stopMachines(ce, provider, log, signal, policy);
        if ("blocked" in swept) return swept.blocked;
        // While Runs are ending, the CE says it waits for them (below): one reason throughout, not
        // one switching at each look (an Azure VM being deleted is found again by the next look).
        if (swept.stopped > 0 && pending.length === 0) {
          await this.report(ce, {
            phase: "Deleting",
            conditions: kstatus(ce.status?.conditions, generation, "reconciling", "StoppingMachines", clip(`terminating ${swept.stopped} machine(s) before deleting cloud resources`)),
          });
          return { requeueAfterMs: this.d.deletionPollMs };
        }
      }
    }
    if (pending.length > 0) {
      await this.report(ce, {
        phase: "Deleting",
        activeRuns: pending.length,
        conditions: kstatus(ce.status?.conditions, generation, "reconciling", "StoppingRuns",
          `waiting for ${pending.length} run(s) to stop: ${pending.slice(0, 5).map((r) => r.metadata.name).join(", ")}`),
      });
      return { requeueAfterMs: this.d.deletionPollMs };
    }

    // The Run cache may lag (a Run created or launched a moment ago): before anything is disposed,
    // or the finalizer released, the Runs are read from the API.
    if (wrote) noteFreshRead("runs", "before-disposal");
    const stored = wrote ? await this.d.client.list<Run>(RunResource, { namespace: ce.metadata.namespace ?? "default" }) : { items: [] };
    const stillPending = stored.items.filter((r) => belongsTo(r, ce) && (isRunActive(r) || machineMayExist(r)));
    if (stillPending.length > 0) {
      for (const r of stillPending) this.d.enqueueRun(`${r.metadata.namespace}/${r.metadata.name}`);
      return { requeueAfterMs: this.d.deletionPollMs };
    }

    if (provider && wrote && policy === "Delete") {
      // Once: a retried disposal keeps the condition that says what it waits for (below).
      if (getCondition(ce.status?.conditions, "Reconciling")?.reason !== "Disposing") {
        await this.report(ce, {
          phase: "Deleting",
          activeRuns: 0,
          conditions: kstatus(ce.status?.conditions, generation, "reconciling", "Disposing", "deleting cloud resources"),
        });
      }
      try {
        const credentials = await resolveCredentials(this.d.client, ce, this.d.secrets, signal);
        await provider.disposeEnvironment({ ce, credentials, logger: log, ...(signal ? { signal } : {}) });
      } catch (e) {
        const blocked = await this.disposalBlocked(ce, e, "cannot delete cloud resources");
        if (blocked) return blocked;
        if (e instanceof CloudError && e.kind === "Retryable") {
          // Tried again with backoff; meanwhile the CE says what it waits for, in words that do not
          // change from one attempt to the next (the cloud's own message may carry request IDs), so
          // a wait costs one status write per cause, not one per attempt.
          const action = e.message.split(": ")[0] ?? "";
          const why = e.reason === "RoleDefinitionHasAssignments" ? " (Azure's caches still hold the role assignments deleted a moment ago)" : "";
          await this.report(ce, {
            phase: "Deleting",
            activeRuns: 0,
            conditions: kstatus(ce.status?.conditions, generation, "reconciling", "Disposing", clip(`deleting cloud resources; waiting: ${action} answered ${e.reason}${why}; tried again`)),
          });
        }
        throw e;
      }
      // Recorded before the finalizer goes, so a retry after a failure below skips disposal.
      await this.report(ce, {
        conditions: setCondition(ce.status?.conditions, { type: PROVISIONED, status: "False", reason: "Disposed", message: "cloud resources deleted", observedGeneration: generation }),
      });
      void this.d.events.record(ce, "Normal", "Disposed", "Dispose", "cloud resources deleted");
    } else if (wrote && policy === "Retain") {
      void this.d.events.record(ce, "Normal", "Retained", "Dispose", "deletionPolicy is Retain: cloud resources left in place");
    }

    await releaseUnusedSecrets(this.d.client, ce.metadata.namespace ?? "default", ce.metadata.uid, this.d.secretsHeldFor?.(ce.metadata.namespace ?? "default"));
    this.forget(ce.metadata.uid ?? "");
    await removeFinalizer(this.d.client, ComputeEnvironmentResource, ce, FINALIZER);
    // (After a disposal, `wrote` is false too: that is not "nothing was ever written".)
    log.info(wrote || cloudWritesMayHaveHappened(ce) ? "finalizer released" : "finalizer released; nothing was ever written to the cloud");
    return;
  }

  /**
   * Terminates every machine of the CE that is not already ending (batched by the provider) and
   * says how many it told to stop; or, when stopping them is blocked (a Terminal cloud answer or
   * unusable credentials, under Delete), the result to return.
   */
  private async stopMachines(ce: ComputeEnvironment, provider: CloudProvider, log: Logger, signal: AbortSignal | undefined, policy: string): Promise<{ stopped: number } | { blocked: NonNullable<ReconcileResult> }> {
    let stopped: string[];
    try {
      const credentials = await resolveCredentials(this.d.client, ce, this.d.secrets, signal);
      stopped = (await provider.sweepOrphans?.({ ce, credentials, logger: log, ...(signal ? { signal } : {}) }, new Set())) ?? [];
      // The interval runs from the end of a look (a look longer than it is not followed at once by
      // another). Under Delete, a look that failed (or was refused, and says so as Stalled) is not
      // one: it is tried again (with the controller's backoff) until it gets through.
      this.keep(this.deletionSwept, ce.metadata.uid ?? "", monotonicNow());
    } catch (e) {
      if (policy === "Retain") {
        // Retain leaves the cloud alone: a failed sweep is reported, not a reason to keep the CE.
        // It counts as the interval's look, so the Warning is not repeated at every deletion poll.
        const { reason, message } = describeError(e);
        void this.d.events.record(ce, "Warning", reason, "Sweep", clip(`could not stop the environment's machines (deletionPolicy Retain, going ahead): ${message}`));
        this.keep(this.deletionSwept, ce.metadata.uid ?? "", monotonicNow());
        return { stopped: 0 };
      }
      const blocked = await this.disposalBlocked(ce, e, "cannot stop the environment's machines");
      if (blocked) return { blocked };
      throw e;
    }
    if (stopped.length > 0) {
      log.info({ machines: stopped.length }, "terminating the environment's machines");
      void this.d.events.record(ce, "Normal", "TerminatingMachines", "Dispose", clip(`terminating ${stopped.length} machine(s): ${stopped.join(", ")}`));
    }
    return { stopped: stopped.length };
  }

  /** A Terminal failure during deletion: Stalled, naming what blocks it and how to unblock. */
  private async disposalBlocked(ce: ComputeEnvironment, e: unknown, what: string): Promise<ReconcileResult | undefined> {
    if (!refusedForGood(e)) return undefined;
    const { reason, message } = describeError(e);
    const secret = ce.spec.credentials?.secretRef?.name;
    const fix =
      reason === "AccessDenied"
        ? "grant the missing permission to the operator's AWS identity"
        : secret
          ? `fix the credentials in Secret ${ce.metadata.namespace}/${secret}`
          : "fix the operator's credentials";
    const m = clip(`${what}: ${message}. To unblock: ${fix}, or set spec.deletionPolicy to Retain to leave the cloud resources in place and let the ComputeEnvironment go`);
    const written = await this.report(ce, {
      phase: "Deleting",
      conditions: kstatus(ce.status?.conditions, ce.metadata.generation, "stalled", reason, m),
    });
    if (written) void this.d.events.record(ce, "Warning", reason, "Dispose", m);
    return { requeueAfterMs: 5 * 60_000 };
  }

  /** Writes status only when something changed. Returns whether a write happened. */
  private async report(ce: ComputeEnvironment, patch: Partial<ComputeEnvironmentStatus>): Promise<boolean> {
    const next: ComputeEnvironmentStatus = { ...(ce.status ?? {}), ...patch };
    if (next.observedGeneration === undefined && ce.metadata.generation !== undefined) next.observedGeneration = ce.metadata.generation;
    const updated = await updateStatus(this.d.client, ComputeEnvironmentResource, ce, next);
    if (updated) ce.status = next;
    return updated !== undefined;
  }
}

/** Changes when the credentials change (rotation), without keeping the values themselves around. */
function credentialsFingerprint(ctx: EnvContext): string {
  const h = createHash("sha256");
  h.update(ctx.credentials.source);
  for (const k of Object.keys(ctx.credentials.data).sort()) h.update(`${k}\0${ctx.credentials.data[k]}\0`);
  return h.digest("hex");
}


/**
 * ResourcesProvisioned follows the current generation: when this generation could not be
 * provisioned, it says so (False, with the cause) instead of keeping an older "creating" or "in place".
 */
function provisionedFollows(conditions: Condition[], generation: number | undefined, reason: string, message: string): Condition[] {
  if (!getCondition(conditions, PROVISIONED)) return conditions;
  return setCondition(conditions, { type: PROVISIONED, status: "False", reason, message: `not provisioned: ${message}`, ...(generation === undefined ? {} : { observedGeneration: generation }) });
}

/** The Runs beyond the newest `limit` (by completion time; the oldest first); none without a limit. */
function beyondLimit(runs: Run[], limit: number | undefined): Run[] {
  if (limit === undefined || runs.length <= limit) return [];
  const ended = (r: Run) => Date.parse(r.status?.completionTime ?? r.metadata.creationTimestamp ?? "") || 0;
  const sorted = [...runs].sort((a, b) => ended(a) - ended(b) || (a.metadata.name ?? "").localeCompare(b.metadata.name ?? ""));
  return sorted.slice(0, runs.length - limit);
}
