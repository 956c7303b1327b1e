/**
 * Follows the machines of all Runs with as few cloud calls as possible: every poll groups the Runs
 * whose machine may exist by account and region (same provider, credentials Secret and region;
 * on Azure the subscription) and asks the provider once per group, whatever CEs its Runs belong to
 * (the describe gets each Run's CE through `runCe`). The groups are asked concurrently, each with its own
 * deadline, so one slow region does not delay the others. Runs whose observation changed are
 * enqueued, and Runs being deleted after every look (their finalizers wait for one). Everything is read from the watch caches: a poll in steady state makes no request to
 * the kube-apiserver.
 */
import type { KubeClient } from "../../engine/kube.js";
import type { Logger } from "../../engine/logger.js";
import { monotonicNow } from "../../engine/clock.js";
import type { ComputeEnvironment, Run } from "../../api/types.js";
import type { CloudProvider, RunDescription } from "../../cloud/provider.js";
import type { SecretGetter } from "../shared.js";
import { resolveCredentials } from "../shared.js";
import { isTerminal, machineMayExist } from "./phases.js";
import { FINALIZER } from "../../api/constants.js";

/** The same machine: IDs compared without case, as Azure's resource IDs are. */
function sameMachine(a: RunDescription, b: RunDescription): boolean {
  return a.instanceId.toLowerCase() === b.instanceId.toLowerCase();
}

/** A Run being deleted whose machine vmforge's finalizer still has to see gone (not one held only by another's finalizer). */
function finalizing(run: Run): boolean {
  return !!run.metadata.deletionTimestamp && (run.metadata.finalizers?.includes(FINALIZER) ?? false);
}

export interface ListSource<T> {
  list(): T[];
  /** A cache's secondary index, when it has one (see RUNS_BY_CE). */
  byIndex?(name: string, value: string): T[];
}

/** Index of the Run cache: the ComputeEnvironment a Run refers to, as "namespace/name". */
export const RUNS_BY_CE = "computeEnvironment";

export function ceIndexOf(run: Run): string {
  return `${run.metadata.namespace}/${run.spec.computeEnvironmentRef.name}`;
}

/** The cached Runs that refer to a ComputeEnvironment: an index look-up where the cache has the index. */
export function runsOfCe(runs: ListSource<Run>, namespace: string | undefined, ceName: string | undefined): Run[] {
  const key = `${namespace}/${ceName}`;
  if (runs.byIndex) return runs.byIndex(RUNS_BY_CE, key);
  return runs.list().filter((r) => ceIndexOf(r) === key);
}

/** A watch cache: list() and get("namespace/name"). Objects are shared: never change them. */
export interface CacheSource<T> extends ListSource<T> {
  get(key: string): T | undefined;
}

export interface Observation {
  desc: RunDescription | undefined;
  at: number;
  /** Made by a poll's look at the cloud; false: recorded from a launch's answer. */
  polled?: boolean;
  /** The poll that made it (pollCount while it ran), when `polled`: how many polls since failed to look is pollCount - poll - 1. */
  poll?: number;
  /**
   * canonicalJson(desc), kept by the poll that stored `desc`: the next poll compares its
   * description with this string instead of writing out both (one string per Run per poll, not
   * two). A launch's record (record()) has none; it is written out when compared.
   */
  canonical?: string;
}

/** At most this many polls in a row leave new machines unlooked-at while Run work is backed up (RunTrackerDeps.backlog). */
export const DEFER_FIRST_LOOK_POLLS = 2;

/** The longest a poll lets the provider infer from the last look (RunTrackerDeps.fullLookEveryMs). */
export const FULL_LOOK_EVERY_MS = 5 * 60_000;

export interface RunTrackerDeps {
  client: KubeClient;
  providers: ReadonlyMap<string, CloudProvider>;
  runs: ListSource<Run>;
  /**
   * The CE a Run's machine is followed with (ceOfRun: the CE of its name when the Run belongs to it,
   * else the removed CE it was launched under), or none.
   */
  ceOf: (run: Run) => ComputeEnvironment | undefined;
  logger: Logger;
  enqueueRun: (key: string) => void;
  pollIntervalMs: number;
  /** Reads the credentials Secret (from the cache); default: a GET. */
  secrets?: SecretGetter;
  /** Deadline of one group's observation. Default: the poll interval, at least 10 s. */
  observeTimeoutMs?: number;
  /**
   * Whether Run work is backed up (as many keys waiting as workers to take them, or more, as in a
   * burst of launches). A poll then leaves machines it has not looked at yet, whose launch answer is on
   * record, for a later poll (at most DEFER_FIRST_LOOK_POLLS polls in a row), so that their first
   * describes, the largest answers a burst brings, do not compete with the launches still waiting.
   */
  backlog?: () => boolean;
  /**
   * Each group's machines are all looked at (no `observed` given to the provider) at least this
   * often; in between the provider may ask only for what can have changed. Default FULL_LOOK_EVERY_MS.
   */
  fullLookEveryMs?: number;
}

/**
 * What a look at a machine learned that the next looks may not repeat: the pipeline's exit code
 * (with the set-up step that failed, if any), that the pipeline started, and a refused read. The
 * providers read logs only on some polls (paced start reads, the exit probes of running machines,
 * a budget of reads per describe), so without this a fact found by one look could be gone from the
 * next before the Run's reconcile acted on it, and a refusal would be said and unsaid from one
 * poll to the next. These facts carry over to the next description of the SAME machine (same
 * instance ID; not a launch the cloud could not place); a readError until a look that read
 * (`readAttempted`) found none. `readAttempted` is about one look and is not kept. A machine no
 * longer described at all keeps nothing (the providers look for the outcome of unlisted machines).
 */
export function mergeLearned(before: RunDescription | undefined, now: RunDescription | undefined): RunDescription | undefined {
  if (!now) return undefined;
  const { readAttempted, ...out } = now;
  if (!before || !sameMachine(before, now) || before.launchFailure || now.launchFailure) return out;
  if (out.exitCode === undefined && before.exitCode !== undefined) {
    out.exitCode = before.exitCode;
    if (before.bootstrapStep !== undefined) out.bootstrapStep = before.bootstrapStep;
    else delete out.bootstrapStep;
    delete out.outcomeUnknown;
    delete out.outcomeDue;
  }
  if (before.pipelineStarted && !out.pipelineStarted) out.pipelineStarted = true;
  if (!readAttempted && !out.readError && before.readError) out.readError = before.readError;
  // A refusal kept from an earlier look: the outcome is not on its way but unreadable.
  if (out.readError) delete out.outcomeDue;
  return out;
}

/**
 * A description as the tracker compares it: key-sorted JSON, so two descriptions that say the same
 * whatever the order of their fields are equal (a fact carried over by mergeLearned lands after the
 * fields a provider set; that alone is no news).
 */
export function canonicalJson(v: unknown): string {
  // JSON.stringify(undefined) is undefined, not a string: a Run without a machine is "-".
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([p], [q]) => (p < q ? -1 : p > q ? 1 : 0))) : x) ?? "-";
}

export function accountRegionKey(ce: ComputeEnvironment): string {
  const secret = ce.spec.credentials?.secretRef?.name;
  const who = secret ? `${ce.metadata.namespace}/${secret}` : "ambient";
  // Azure: one group per subscription (empty: the Secret's, the same for the same Secret), so each
  // poll lists the VMs of a subscription once for all its CEs that share the credentials.
  const where = ce.spec.aws?.region ?? (ce.spec.azure ? `subscription:${ce.spec.azure.subscriptionId ?? ""}` : "");
  return `${ce.spec.provider}|${who}|${where}`;
}

export class RunTracker {
  private readonly observations = new Map<string, Observation>();
  /** Account-and-region group -> when its last poll that looked at every machine started. */
  private readonly fullLookAt = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private polling: Promise<void> | undefined;
  /** Aborted by stop(): cloud calls of a poll in progress give up. */
  private stopCtl = new AbortController();
  /** Cloud calls made by the last poll, by group. Exposed for tests and metrics. */
  lastPoll: { groups: number; runs: number } = { groups: 0, runs: 0 };
  /** Polls completed since start. */
  pollCount = 0;
  /** Polls in a row that left new machines for later (RunTrackerDeps.backlog). */
  private deferredPolls = 0;

  constructor(private readonly d: RunTrackerDeps) {}

  get(uid: string): Observation | undefined {
    return this.observations.get(uid);
  }

  record(uid: string, desc: RunDescription | undefined): void {
    const prev = this.observations.get(uid);
    // Not a poll's look (polled: false): the provider may not infer from it, and a poll with Run
    // work backed up may leave it for later (RunTrackerDeps.backlog).
    this.observations.set(uid, { desc: mergeLearned(prev?.desc, desc), at: Date.now(), polled: false });
  }

  forget(uid: string): void {
    this.observations.delete(uid);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    if (this.stopCtl.signal.aborted) this.stopCtl = new AbortController();
    const loop = (): void => {
      if (this.stopped) return;
      this.polling = this.pollOnce()
        .catch((e: unknown) => this.d.logger.warn({ err: e }, "run poll failed"))
        .finally(() => {
          this.polling = undefined;
          if (!this.stopped) this.timer = setTimeout(loop, this.d.pollIntervalMs);
        });
    };
    this.timer = setTimeout(loop, this.d.pollIntervalMs);
  }

  /** Stops polling; a poll in progress is aborted and waited for at most `waitMs`. */
  async stop(waitMs = 5_000): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.stopCtl.abort(new Error("run tracker stopping"));
    const polling = this.polling;
    if (!polling) return;
    let t: NodeJS.Timeout | undefined;
    await Promise.race([polling, new Promise<void>((r) => (t = setTimeout(r, Math.max(0, waitMs))))]);
    clearTimeout(t);
  }

  /** One poll over every Run whose machine may exist. */
  async pollOnce(): Promise<void> {
    const groups = new Map<string, { ce: ComputeEnvironment; runs: Run[]; ceOf: Map<string, ComputeEnvironment> }>();
    const observed = new Set<string>();
    const defer = this.deferredPolls < DEFER_FIRST_LOOK_POLLS && this.d.backlog?.() === true;
    let deferred = 0;
    /** Groups with Runs left for a later poll: when a group has no other, its last full look still counts. */
    const waiting = new Set<string>();
    for (const run of this.d.runs.list()) {
      if (!run.metadata.uid || !machineMayExist(run)) continue;
      const ce = this.d.ceOf(run);
      if (defer && this.observations.get(run.metadata.uid)?.polled === false && !run.metadata.deletionTimestamp && !run.spec.cancel && !isTerminal(run)) {
        // Launched moments ago (its launch answer on record), never looked at, and not being ended
        // (whose termination waits for a look): kept for a later poll.
        observed.add(run.metadata.uid);
        if (ce) waiting.add(accountRegionKey(ce));
        deferred++;
        continue;
      }
      if (!ce) continue;
      const key = accountRegionKey(ce);
      const g = groups.get(key) ?? { ce, runs: [] as Run[], ceOf: new Map<string, ComputeEnvironment>() };
      groups.set(key, g);
      g.runs.push(run);
      g.ceOf.set(run.metadata.uid, ce);
    }
    let count = 0;
    const timeoutMs = this.d.observeTimeoutMs ?? Math.max(10_000, this.d.pollIntervalMs);
    this.deferredPolls = deferred > 0 ? this.deferredPolls + 1 : 0;
    const fullEvery = this.d.fullLookEveryMs ?? FULL_LOOK_EVERY_MS;
    await Promise.all([...groups.entries()].map(async ([key, { ce, runs, ceOf }]) => {
      const provider = this.d.providers.get(ce.spec.provider);
      if (!provider) return;
      count += runs.length;
      for (const run of runs) observed.add(run.metadata.uid as string);
      const signal = AbortSignal.any([this.stopCtl.signal, AbortSignal.timeout(timeoutMs)]);
      try {
        // Within the look's deadline: a Secret read that hangs must not hold the poll (and its count) up.
        const credentials = await resolveCredentials(this.d.client, ce, this.d.secrets, signal);
        const runCe = (run: Run): ComputeEnvironment | undefined => ceOf.get(run.metadata.uid ?? "");
        // An observation is as old as the look that made it: a describe that took seconds does not
        // pass for news, and does not replace what a launch recorded meanwhile.
        // (Wall clock: observation times are compared with times kept in the Run, its deletionTimestamp.)
        const lookedAt = Date.now();
        // What the last look saw, for a provider that can ask only for what changed; withheld at
        // least every fullEvery (and until a full look succeeded), so nothing inferred lasts longer.
        // That interval is this process's own: the monotonic clock.
        const lookTick = monotonicNow();
        const full = lookTick - (this.fullLookAt.get(key) ?? -Infinity) >= fullEvery;
        const lastSeen = full ? undefined : (run: Run): RunDescription | undefined => {
          // A Run vmforge's finalizer holds in deletion is looked at in full, by its UID: the finalizer ends at what this look
          // says, and a second machine carrying its UID must not hide behind what was seen before.
          if (finalizing(run)) return undefined;
          const o = this.observations.get(run.metadata.uid ?? "");
          return o?.polled ? o.desc : undefined;
        };
        const result = await provider.describeRuns({ ce, credentials, logger: this.d.logger, signal, runCe, ...(lastSeen ? { observed: lastSeen } : {}) }, runs);
        if (signal.aborted) throw signal.reason;
        if (full) this.fullLookAt.set(key, lookTick);
        for (const run of runs) {
          const uid = run.metadata.uid as string;
          const prev = this.observations.get(uid);
          let desc: RunDescription | undefined;
          let canonical: string;
          const seen = result.get(uid);
          if (prev && prev.at > lookedAt) {
            // A launch recorded meanwhile stands; what this older look learned of the same machine
            // (an exit line, a start) is added to it rather than lost.
            desc = mergeLearned(seen, prev.desc);
            canonical = canonicalJson(desc);
            this.observations.set(uid, { ...prev, desc, canonical });
          } else {
            desc = mergeLearned(prev?.desc, seen);
            canonical = canonicalJson(desc);
            this.observations.set(uid, { desc, at: lookedAt, polled: true, poll: this.pollCount, canonical });
          }
          // The Run's news: a Run whose machine is pending or running is not looked at otherwise
          // (its reconcile waits for this, its timeout or a backstop of minutes; see QUIET_FOLLOW_MS).
          // A Run vmforge's finalizer holds in deletion is woken by every look, news or not: the finalizer waits for a look
          // newer than its termination, and an unlisted machine looks the same before and after.
          if (!prev || finalizing(run) || (prev.canonical ?? canonicalJson(prev.desc)) !== canonical) {
            this.d.enqueueRun(`${run.metadata.namespace}/${run.metadata.name}`);
          }
        }
      } catch (e) {
        if (this.stopCtl.signal.aborted) return;
        this.d.logger.warn({ err: e, ce: `${ce.metadata.namespace}/${ce.metadata.name}`, runs: runs.length }, "describing runs failed");
      }
    }));
    // Nothing is kept for Runs whose machine can no longer exist (ended, deleted): the map holds
    // one entry per followed machine, not one per Run ever seen.
    for (const uid of this.observations.keys()) if (!observed.has(uid)) this.observations.delete(uid);
    for (const key of this.fullLookAt.keys()) if (!groups.has(key) && !waiting.has(key)) this.fullLookAt.delete(key);
    this.lastPoll = { groups: groups.size, runs: count };
    this.pollCount++;
  }
}
