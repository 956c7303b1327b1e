/**
 * Wires the engine to the two reconcilers: reflectors feed caches and turn watch events into keys,
 * controllers run the reconcilers, the RunTracker polls machines. Controllers run only while this
 * process holds the leader Lease (when leader election is on).
 *
 * Reconcilers read Runs, ComputeEnvironments and protected Secrets from these caches; the places
 * that re-read the API because a stale read could do harm are listed at RunReconciler.read.
 * Three controllers: "run-ack" only writes the first status of new Runs (so acknowledging never
 * waits behind launches), "run" does the rest of a Run's life, "computeenvironment" the CEs.
 */
import type { KubeClient, KubeObject, ResourceType } from "./engine/kube.js";
import type { Logger } from "./engine/logger.js";
import type { EngineMetrics } from "./engine/metrics.js";
import { Reflector } from "./engine/reflector.js";
import { Store, deepFreeze, slimForCache, trimForCache, type IndexFunc } from "./engine/store.js";
import { Controller } from "./engine/controller.js";
import { WorkQueue } from "./engine/queue.js";
import { EventRecorder } from "./engine/events.js";
import { LeaderElector } from "./engine/leader.js";
import { monotonicNow } from "./engine/clock.js";
import type { ComputeEnvironment, Run } from "./api/types.js";
import { ComputeEnvironmentResource, RunResource } from "./api/types.js";
import type { CloudProvider } from "./cloud/provider.js";
import type { OperatorConfig } from "./config.js";
import { ComputeEnvironmentReconciler } from "./controllers/computeenvironment/reconciler.js";
import { RunReconciler } from "./controllers/run/reconciler.js";
import { RUNS_BY_CE, RunTracker, ceIndexOf, runsOfCe } from "./controllers/run/tracker.js";
import { GoneComputeEnvironments, ceOfRun } from "./controllers/run/gone-ces.js";
import type { SecretObject } from "./controllers/shared.js";
import { SECRET_LABEL, SecretReader, SecretResource, releaseUnusedSecrets } from "./controllers/shared.js";
import { holdsSlot, isRunActive, machineMayExist } from "./controllers/run/phases.js";

export interface OperatorOptions {
  client: KubeClient;
  providers: ReadonlyMap<string, CloudProvider>;
  config: OperatorConfig;
  logger: Logger;
  metrics?: EngineMetrics;
  /** Redacts known secret values out of Event notes. */
  redact?: (s: string) => string;
  /** The first re-check of a Stalled ComputeEnvironment; tests shorten it (default 10 s). */
  stalledFirstRecheckMs?: number;
  /** How often a CE being deleted looks for machines to stop while its Runs end; tests lengthen it (default 15 s). */
  deletionSweepMs?: number;
  /** See RunDeps.terminationGatherMs (tests widen it). */
  terminationGatherMs?: number;
}

/** Several per-namespace reflectors seen as one cache. */
class Caches<T extends KubeObject> {
  constructor(readonly reflectors: Reflector<T>[]) {}
  byIndex(name: string, value: string): T[] {
    if (this.reflectors.length === 1) return this.reflectors[0]?.store.byIndex(name, value) ?? [];
    return this.reflectors.flatMap((r) => r.store.byIndex(name, value));
  }
  list(): T[] {
    if (this.reflectors.length === 1) return this.reflectors[0]?.store.list() ?? [];
    return this.reflectors.flatMap((r) => r.store.list());
  }
  get(key: string): T | undefined {
    for (const r of this.reflectors) {
      const o = r.store.get(key);
      if (o) return o;
    }
    return undefined;
  }
  synced(): boolean {
    return this.reflectors.every((r) => r.hasSynced());
  }
}

const keyOf = (o: KubeObject): string => `${o.metadata.namespace}/${o.metadata.name}`;

/**
 * What a CE's reconcile reads of a Run: whether it is active (status.activeRuns) and whether its
 * machine may exist (deletion waits for those). Other changes of a Run are no news to its CE.
 */
const ceView = (r: Run): string => `${isRunActive(r)}|${machineMayExist(r)}`;
/** run-ack workers per configured worker (VMFORGE_WORKERS is the CE controller's count; Run workers are VMFORGE_RUN_WORKERS). */
const ACK_WORKERS_PER_WORKER = 4;
/**
 * How long a Run worker holds back, at most, while new Runs wait for their first status. In a
 * burst the acknowledgements then have the kube-apiserver to themselves (measured with 1,000 Runs:
 * first status max 0.58 s, against 1.40 s when launches went ahead after 1 s); the launches start
 * once the backlog of acknowledgements is gone, or after this long, so new Runs arriving without
 * pause for longer than a burst slow the launches down but never stop them.
 */
const ACK_FIRST_MAX_WAIT_MS = 10_000;
/**
 * Run workers held back by acknowledgements (the acknowledgement queue's idleSpacingMs,
 * WorkQueue.whenIdle): within this long after a backlog (an acknowledgement that waited for a free
 * `run-ack` worker, until it is written), they go one at a time, at least this far apart, each
 * while no acknowledgement is waiting or being written; with no backlog for this long, all of them
 * at the queue's next idle moment. A burst of creations that the acknowledgements cannot keep up
 * with has short lulls in which the acknowledgement queue is empty; without the spacing every held
 * worker could start its next reconcile (a launch, in a burst) in the first of them. One measured
 * burst had 16 VM PUTs, as many as Run workers then, before the last of its 1,000 creates, which fits
 * that (not observed directly). New Runs that each find a free `run-ack` worker are no backlog, so
 * they hold no one beyond the next idle moment. 2b6ecf3's form counted the spacing from the queue's
 * last busy moment instead, which under a steady stream of new Runs held Run reconciles and
 * launches far longer (the bench's trickle scenario; README, Performance). The cost left: while
 * backlogs keep forming, held Run reconciles (every Run key waits: launches, deletions, those a
 * poll's news wakes, resyncs) start at most one per idle moment and per this long, or after
 * ACK_FIRST_MAX_WAIT_MS; and a held worker waits for an idle moment (or ACK_FIRST_MAX_WAIT_MS) in
 * any case, which acknowledgements that overlap can put off. A worker that finds the queue idle and
 * no one in line goes at once.
 */
const ACK_FIRST_SPACING_MS = 50;
/** The longest an Event waits while Run work is backed up (see the EventRecorder's holdWhile). */
const EVENT_MAX_HOLD_MS = 60_000;
/** The longest a stop waits for Events not yet sent. */
const EVENT_DRAIN_MAX_MS = 3_000;
/** Run changes that concern a CE are gathered this long into one CE reconcile. */
const CE_COALESCE_MS = 1_000;

const readiness = (ce: ComputeEnvironment): string =>
  `${ce.status?.conditions?.find((c) => c.type === "Ready")?.status ?? ""}/${ce.status?.observedGeneration ?? ""}`;

/** True when nothing but status (and resourceVersion/managedFields) differs between two versions. */
export function onlyStatusChanged(a: KubeObject, b: KubeObject): boolean {
  const m = (o: KubeObject) => JSON.stringify([
    o.metadata.generation, o.metadata.deletionTimestamp ?? null, o.metadata.finalizers ?? [], o.metadata.labels ?? {}, o.metadata.annotations ?? {},
  ]);
  return m(a) === m(b);
}

export class Operator {
  readonly ces: Caches<ComputeEnvironment>;
  readonly runs: Caches<Run>;
  readonly secrets: Caches<SecretObject>;
  readonly ceController: Controller;
  readonly runController: Controller;
  /** Writes the first status of new Runs, ahead of (and apart from) the launch backlog. */
  readonly ackController: Controller;
  readonly secretReader: SecretReader;
  readonly tracker: RunTracker;
  /** The Events of both reconcilers (held back while Run work is backed up; drained on stop). */
  readonly events: EventRecorder;
  /** ComputeEnvironments removed while Runs of theirs may still have machines (see gone-ces.ts). */
  readonly goneCes: GoneComputeEnvironments;
  readonly ceReconciler: ComputeEnvironmentReconciler;
  readonly runReconciler: RunReconciler;
  private elector: LeaderElector | undefined;
  private leading = false;
  private stopping = false;
  /** Aborts the wait for the caches when the operator stops before they synced. */
  private readonly syncAbort = new AbortController();
  private running: Promise<void> | undefined;

  constructor(private readonly o: OperatorOptions) {
    const { client, config, logger, metrics } = o;
    const namespaces = config.namespaces.length > 0 ? config.namespaces : [undefined];
    const reflect = <T extends KubeObject>(resource: ResourceType, onEvent: (type: string, obj: T, old?: T) => void, labelSelector?: string, indexers?: Record<string, IndexFunc<T>>, transform?: (obj: T) => T): Reflector<T>[] =>
      namespaces.map((namespace) => new Reflector<T>({
        ...(indexers ? { store: new Store<T>({ indexers }) } : {}),
        ...(transform ? { transform } : {}),
        client, resource, logger: logger.child({ reflector: resource.plural, namespace: namespace ?? "*" }),
        resyncPeriodMs: config.resyncPeriodMs, onEvent,
        ...(namespace ? { namespace } : {}), ...(labelSelector ? { labelSelector } : {}), ...(metrics ? { metrics } : {}),
      }));

    // Events wait while new Runs are queued for their first status or Run work is backed up (a burst of
    // launches): they report the work, so they do not take the kube-apiserver from it. Each keeps
    // the time it happened and goes at most EVENT_MAX_HOLD_MS later.
    const runBacklog = (): boolean => this.runController.queue.len() >= config.runWorkers;
    const runWorkBackedUp = (): boolean => this.ackController.queue.len() > 0 || runBacklog();
    this.events = new EventRecorder(client, {
      controller: "vmforge.dev/operator", instance: config.identity, logger, ...(metrics ? { metrics } : {}), ...(o.redact ? { redact: o.redact } : {}),
      holdWhile: runWorkBackedUp, maxHoldMs: EVENT_MAX_HOLD_MS,
    });

    this.ceController = new Controller({
      name: "computeenvironment", workers: config.workers, reconcileTimeoutMs: config.reconcileTimeoutMs,
      logger: logger.child({ controller: "computeenvironment" }), reconcile: (key, signal) => this.ceReconciler.reconcile(key, signal), ...(metrics ? { metrics } : {}),
      mayWork: () => this.leaseHeld(),
    });
    // A Run reconcile mostly waits on the kube-apiserver and the cloud (a launch is several round
    // trips): first statuses get ACK_WORKERS_PER_WORKER workers for each configured one, and Runs
    // their own count (VMFORGE_RUN_WORKERS), which bounds the launches in flight.
    this.ackController = new Controller({
      name: "run-ack", workers: config.workers * ACK_WORKERS_PER_WORKER, reconcileTimeoutMs: config.reconcileTimeoutMs,
      queue: new WorkQueue({ name: "run-ack", idleSpacingMs: ACK_FIRST_SPACING_MS, ...(metrics ? { metrics } : {}) }),
      logger: logger.child({ controller: "run-ack" }), reconcile: (key) => this.runReconciler.acknowledge(key), ...(metrics ? { metrics } : {}),
      mayWork: () => this.leaseHeld(),
    });
    // Acknowledging goes first: while new Runs wait for their first status, Run workers hold back
    // (up to ACK_FIRST_MAX_WAIT_MS each), so a burst of launches does not crowd the
    // acknowledgements out of the kube-apiserver.
    this.runController = new Controller({
      name: "run", workers: config.runWorkers, reconcileTimeoutMs: config.reconcileTimeoutMs,
      logger: logger.child({ controller: "run" }), reconcile: (key, signal) => this.runReconciler.reconcile(key, signal), ...(metrics ? { metrics } : {}),
      mayWork: () => this.leaseHeld(),
      yieldTo: { queue: this.ackController.queue, maxWaitMs: ACK_FIRST_MAX_WAIT_MS },
    });

    // CEs are frozen as cached (deepFreeze): the Run reconciler reads the CE of each Run it works on
    // without a copy.
    this.ces = new Caches(reflect<ComputeEnvironment>(ComputeEnvironmentResource, (type, ce, old) => {
      // The CE's own status writes need no new reconcile (it would also bypass the backoff of a
      // failing one); spec, metadata and lifecycle changes do.
      const statusOnly = type === "MODIFIED" && old !== undefined && onlyStatusChanged(old, ce);
      // A CE gone: deleted, or replaced by another of the same name while the watch was down (a
      // relist reports that as MODIFIED, with the old object).
      const gone = type === "DELETED" ? ce : type === "MODIFIED" && old && old.metadata.uid !== ce.metadata.uid ? old : undefined;
      if (type === "ADDED" || (gone && gone !== ce)) this.goneCes.forget(ce);
      if (!statusOnly) this.ceController.enqueue(keyOf(ce));
      if (gone) {
        // What the reconciler kept of it (also of one whose finalizer was taken off by hand, and
        // when a CE of the same name is created before its key is reconciled again).
        this.ceReconciler.forgetGone(gone.metadata.uid ?? "");
        // Its Runs' machines can still be reached with what it last said (a removal by force).
        this.goneCes.remember(gone);
        // The last CE of a shared Secret may be gone now: release Secrets nothing needs any more.
        void releaseUnusedSecrets(client, gone.metadata.namespace ?? "default", undefined, this.goneCes.secretNames(gone.metadata.namespace ?? "default")).catch((err: unknown) =>
          logger.warn({ err, namespace: gone.metadata.namespace }, "releasing unused credentials Secrets failed"));
      }
      // Runs follow their CE (Ready, deleting); a status write that did not change readiness is no news to them.
      if (statusOnly && old && readiness(old) === readiness(ce)) return;
      for (const r of runsOfCe(this.runs, ce.metadata.namespace, ce.metadata.name)) this.runController.enqueue(keyOf(r));
    }, undefined, undefined, (ce) => deepFreeze(slimForCache(ce))));
    this.runs = new Caches(reflect<Run>(RunResource, (type, run, old) => {
      const key = keyOf(run);
      // A new Run is the run-ack controller's until its first status, whose event brings it to the
      // Run controller (whose reconcile has nothing to do before that); the events of a Run
      // reconcile's own writes that it followed with a wait of its own need no reconcile (OwnWrites).
      if (type !== "DELETED" && !run.status?.phase && !run.metadata.deletionTimestamp) this.ackController.enqueue(key);
      else if (type === "DELETED") {
        this.runController.ownWrites.forget(key);
        this.runController.enqueue(key);
      } else if (!(type === "MODIFIED" && this.runController.ownWrites.held(key, old?.metadata.resourceVersion, run.metadata.resourceVersion))) {
        this.runController.enqueue(key);
      }
      if (type === "RESYNC") return;
      // A Run deleted without ever reaching its finalizer (no launch written) may still hold a claim.
      if (type === "DELETED") this.runReconciler.forget(run);
      const prev = type === "DELETED" ? (old ?? run) : old;
      // A removed CE is remembered while a Run of it may have a machine: this one may have been its last.
      if (this.goneCes.size > 0 && prev && machineMayExist(prev) && (type === "DELETED" || !machineMayExist(run))) this.goneCes.prune();
      // The CE only hears of changes its status depends on, gathered over a moment.
      if (type === "DELETED" || !prev || ceView(prev) !== ceView(run)) this.ceController.enqueueAfter(ceIndexOf(run), CE_COALESCE_MS);
      // A slot freed, as the cache shows it (so also for Runs launched before a restart or by
      // another leader): the CE's waiting Runs can go now rather than at the next resync.
      if (prev && holdsSlot(prev) && (type === "DELETED" || !holdsSlot(run))) {
        for (const r of runsOfCe(this.runs, run.metadata.namespace, run.spec.computeEnvironmentRef.name)) {
          if ((r.status?.phase ?? "Pending") === "Pending" && !r.metadata.deletionTimestamp) this.runController.enqueue(keyOf(r));
        }
      }
    }, undefined, { [RUNS_BY_CE]: ceIndexOf }));
    // A removed CE no Run needs any more: the Secret it kept held may be released now.
    this.goneCes = new GoneComputeEnvironments(this.runs, undefined, (ce) => {
      const ns = ce.metadata.namespace ?? "default";
      void releaseUnusedSecrets(client, ns, undefined, this.goneCes.secretNames(ns)).catch((err: unknown) =>
        logger.warn({ err, namespace: ns }, "releasing unused credentials Secrets failed"));
    });
    // Only Secrets vmforge protects carry the label; a change (rotation) re-checks their CEs. Their
    // cache does not share strings (trimForCache): a credential must not outlive its Secret.
    this.secrets = new Caches(reflect<SecretObject>(SecretResource, (_type, secret) => {
      for (const ce of this.ces.list()) {
        if (ce.metadata.namespace === secret.metadata.namespace && ce.spec.credentials?.secretRef?.name === secret.metadata.name) {
          this.ceController.enqueue(keyOf(ce));
        }
      }
    }, `${SECRET_LABEL}=true`, undefined, trimForCache));
    this.secretReader = new SecretReader(client, this.secrets);
    const secrets = this.secretReader.get;

    this.tracker = new RunTracker({
      client, providers: o.providers, runs: this.runs, logger: logger.child({ component: "run-tracker" }),
      ceOf: (run) => ceOfRun(run, this.ces.get(`${run.metadata.namespace}/${run.spec.computeEnvironmentRef.name}`), this.goneCes).ce,
      enqueueRun: (k) => this.runController.enqueue(k), pollIntervalMs: config.pollIntervalMs, secrets,
      // As many Runs waiting as Run workers, or more: a burst of launches is being worked through.
      backlog: runBacklog,
    });
    this.ceReconciler = new ComputeEnvironmentReconciler({
      client, providers: o.providers, logger: logger.child({ controller: "computeenvironment" }), events: this.events,
      runs: this.runs, ces: this.ces, secrets, enqueueRun: (k) => this.runController.enqueue(k),
      secretsHeldFor: (ns) => this.goneCes.secretNames(ns),
      ...(o.stalledFirstRecheckMs !== undefined ? { stalledFirstRecheckMs: o.stalledFirstRecheckMs } : {}),
      ...(o.deletionSweepMs !== undefined ? { deletionSweepMs: o.deletionSweepMs } : {}),
    });
    this.runReconciler = new RunReconciler({
      client, providers: o.providers, logger: logger.child({ controller: "run" }), events: this.events, runs: this.runs, ces: this.ces, goneCes: this.goneCes, secrets, tracker: this.tracker,
      enqueueRun: (k) => this.runController.enqueue(k), enqueueComputeEnvironment: (k) => this.ceController.enqueue(k),
      ownWrites: this.runController.ownWrites,
      pollIntervalMs: config.pollIntervalMs,
      ...(o.terminationGatherMs !== undefined ? { terminationGatherMs: o.terminationGatherMs } : {}),
    });
  }

  /** Leading, and the Lease renewed within its renew deadline (see LeaderElector.isLeader). */
  isLeader(): boolean {
    return this.leading && this.leaseHeld();
  }

  /** The Lease is ours as far as the elector can tell (always, without leader election). */
  private leaseHeld(): boolean {
    return this.elector?.isLeader() ?? true;
  }

  /** Ready: caches synced (or waiting for leadership, which is a healthy state). */
  isReady(): boolean {
    return !this.leading || (this.ces.synced() && this.runs.synced());
  }

  /** Starts (after winning the Lease when leader election is on). Resolves once started or standing by. */
  start(onLostLeadership?: () => void): void {
    if (!this.o.config.leaderElection) {
      this.running = this.startControllers();
      return;
    }
    this.elector = new LeaderElector({
      client: this.o.client, namespace: this.o.config.leaseNamespace, name: this.o.config.leaseName,
      identity: this.o.config.identity,
      leaseDurationMs: this.o.config.leaseDurationMs, renewDeadlineMs: this.o.config.renewDeadlineMs, retryPeriodMs: this.o.config.retryPeriodMs,
      logger: this.o.logger.child({ component: "leader" }), ...(this.o.metrics ? { metrics: this.o.metrics } : {}),
    });
    void this.elector.run({
      onStartedLeading: () => {
        this.running = this.startControllers();
      },
      onStoppedLeading: () => {
        const wasLeading = this.leading;
        this.leading = false;
        if (wasLeading && !this.stopping) {
          // Another process may act on the same objects from now on: abort in-flight work at once
          // (their cloud calls see the aborted signal); their writes would fail anyway (phase
          // transitions carry a resourceVersion precondition).
          const reason = new Error("leadership lost");
          for (const c of [this.ackController, this.runController, this.ceController]) c.abortInFlight(reason);
          this.runReconciler.stop(reason);
          void this.tracker.stop(0);
          this.o.logger.warn("lost leadership; stopping");
          onLostLeadership?.();
        }
      },
    });
  }

  private async startControllers(): Promise<void> {
    this.leading = true;
    this.o.logger.info({ namespaces: this.o.config.namespaces.length ? this.o.config.namespaces : "all" }, "starting controllers");
    for (const r of [...this.ces.reflectors, ...this.runs.reflectors, ...this.secrets.reflectors]) r.start();
    await Promise.all([...this.ces.reflectors, ...this.runs.reflectors].map((r) => r.waitForSync(this.syncAbort.signal)));
    this.ackController.start();
    this.ceController.start();
    this.runController.start();
    this.tracker.start();
  }

  /**
   * Graceful stop within `deadlineMs`, whatever the cloud does: stop intake, let in-flight
   * reconciles finish for most of the deadline, then abort them (abandoned work is safe: every
   * cloud write is idempotent and recorded before or after as the reconcilers describe), stop
   * the watches and release the Lease with what is left.
   */
  async stop(deadlineMs = this.o.config.shutdownTimeoutMs): Promise<void> {
    this.stopping = true;
    const end = monotonicNow() + Math.max(0, deadlineMs);
    const left = (): number => Math.max(0, end - monotonicNow());
    // kept for the watches and the Lease release
    const reserve = Math.min(2_000, deadlineMs / 5);
    this.syncAbort.abort(new Error("operator stopping"));
    await within(this.running?.catch(() => undefined), left());
    await this.tracker.stop(Math.min(1_000, left()));
    const controllersMs = Math.max(0, left() - reserve);
    await Promise.all([this.ackController.stop(controllersMs), this.ceController.stop(controllersMs), this.runController.stop(controllersMs)]);
    // Batched terminations not sent yet are sent again after a restart (by the finalizers, and the
    // ending Runs' reconciles).
    this.runReconciler.stop(new Error("operator stopping"));
    // Events still held back or paced go now, for a part of what is left (the rest are dropped, counted).
    await this.events.drain(Math.min(EVENT_DRAIN_MAX_MS, Math.max(0, left() - reserve)));
    await within(Promise.all([...this.ces.reflectors, ...this.runs.reflectors, ...this.secrets.reflectors].map((r) => r.stop())), left() / 2);
    await within(this.elector?.stop(), left());
    this.leading = false;
  }
}

/** Waits for `p` at most `ms` (its outcome is ignored). */
async function within(p: Promise<unknown> | undefined, ms: number): Promise<void> {
  if (!p) return;
  let t: NodeJS.Timeout | undefined;
  await Promise.race([p.then(() => undefined, () => undefined), new Promise<void>((r) => (t = setTimeout(r, Math.max(0, ms))))]);
  clearTimeout(t);
}
