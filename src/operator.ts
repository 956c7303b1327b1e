/**
 * Wires the engine to the two reconcilers: reflectors feed caches and turn watch events into keys,
 * controllers run the reconcilers, the RunTracker polls machines. Controllers run only while this
 * process holds the leader Lease (when leader election is on).
 */
import type { KubeClient, KubeObject, ResourceType } from "./engine/kube.js";
import type { Logger } from "./engine/logger.js";
import type { EngineMetrics } from "./engine/metrics.js";
import { Reflector } from "./engine/reflector.js";
import { Controller } from "./engine/controller.js";
import { EventRecorder } from "./engine/events.js";
import { LeaderElector } from "./engine/leader.js";
import type { ComputeEnvironment, Run } from "./api/types.js";
import { ComputeEnvironmentResource, RunResource } from "./api/types.js";
import type { CloudProvider } from "./cloud/provider.js";
import type { OperatorConfig } from "./config.js";
import { ComputeEnvironmentReconciler } from "./controllers/computeenvironment/reconciler.js";
import { RunReconciler } from "./controllers/run/reconciler.js";
import { RunTracker } from "./controllers/run/tracker.js";
import type { SecretObject } from "./controllers/shared.js";
import { SECRET_LABEL, SecretResource, releaseUnusedSecrets } from "./controllers/shared.js";

export interface OperatorOptions {
  client: KubeClient;
  providers: ReadonlyMap<string, CloudProvider>;
  config: OperatorConfig;
  logger: Logger;
  metrics?: EngineMetrics;
  /** Redacts known secret values out of Event notes. */
  redact?: (s: string) => string;
}

/** Several per-namespace reflectors seen as one cache. */
class Caches<T extends KubeObject> {
  constructor(readonly reflectors: Reflector<T>[]) {}
  list(): T[] {
    return this.reflectors.flatMap((r) => r.store.list());
  }
  synced(): boolean {
    return this.reflectors.every((r) => r.hasSynced());
  }
}

const keyOf = (o: KubeObject): string => `${o.metadata.namespace}/${o.metadata.name}`;

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
  readonly tracker: RunTracker;
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
    const reflect = <T extends KubeObject>(resource: ResourceType, onEvent: (type: string, obj: T, old?: T) => void, labelSelector?: string): Reflector<T>[] =>
      namespaces.map((namespace) => new Reflector<T>({
        client, resource, logger: logger.child({ reflector: resource.plural, namespace: namespace ?? "*" }),
        resyncPeriodMs: config.resyncPeriodMs, onEvent,
        ...(namespace ? { namespace } : {}), ...(labelSelector ? { labelSelector } : {}), ...(metrics ? { metrics } : {}),
      }));

    const events = new EventRecorder(client, {
      controller: "vmforge.dev/operator", instance: config.identity, logger, ...(metrics ? { metrics } : {}), ...(o.redact ? { redact: o.redact } : {}),
    });

    this.ceController = new Controller({
      name: "computeenvironment", workers: config.workers, reconcileTimeoutMs: config.reconcileTimeoutMs,
      logger: logger.child({ controller: "computeenvironment" }), reconcile: (key, signal) => this.ceReconciler.reconcile(key, signal), ...(metrics ? { metrics } : {}),
    });
    this.runController = new Controller({
      name: "run", workers: config.workers, reconcileTimeoutMs: config.reconcileTimeoutMs,
      logger: logger.child({ controller: "run" }), reconcile: (key, signal) => this.runReconciler.reconcile(key, signal), ...(metrics ? { metrics } : {}),
    });

    this.ces = new Caches(reflect<ComputeEnvironment>(ComputeEnvironmentResource, (type, ce, old) => {
      // The CE's own status writes need no new reconcile (it would also bypass the backoff of a
      // failing one); spec, metadata and lifecycle changes do.
      const statusOnly = type === "MODIFIED" && old !== undefined && onlyStatusChanged(old, ce);
      if (!statusOnly) this.ceController.enqueue(keyOf(ce));
      if (type === "DELETED") {
        // The last CE of a shared Secret may be gone now: release Secrets nothing needs any more.
        void releaseUnusedSecrets(client, ce.metadata.namespace ?? "default").catch((err: unknown) =>
          logger.warn({ err, namespace: ce.metadata.namespace }, "releasing unused credentials Secrets failed"));
      }
      // Runs follow their CE (Ready, deleting); a status write that did not change readiness is no news to them.
      if (statusOnly && old && readiness(old) === readiness(ce)) return;
      for (const r of this.runs.list()) {
        if (r.metadata.namespace === ce.metadata.namespace && r.spec.computeEnvironmentRef.name === ce.metadata.name) this.runController.enqueue(keyOf(r));
      }
    }));
    this.runs = new Caches(reflect<Run>(RunResource, (_type, run, old) => {
      this.runController.enqueue(keyOf(run));
      if (!old || old.status?.phase !== run.status?.phase || _type === "DELETED") {
        this.ceController.enqueue(`${run.metadata.namespace}/${run.spec.computeEnvironmentRef.name}`);
      }
    }));
    // Only Secrets vmforge protects carry the label; a change (rotation) re-checks their CEs.
    this.secrets = new Caches(reflect<SecretObject>(SecretResource, (_type, secret) => {
      for (const ce of this.ces.list()) {
        if (ce.metadata.namespace === secret.metadata.namespace && ce.spec.credentials?.secretRef?.name === secret.metadata.name) {
          this.ceController.enqueue(keyOf(ce));
        }
      }
    }, `${SECRET_LABEL}=true`));

    this.tracker = new RunTracker({
      client, providers: o.providers, runs: this.runs, ces: this.ces, logger: logger.child({ component: "run-tracker" }),
      enqueueRun: (k) => this.runController.enqueue(k), pollIntervalMs: config.pollIntervalMs,
    });
    this.ceReconciler = new ComputeEnvironmentReconciler({
      client, providers: o.providers, logger: logger.child({ controller: "computeenvironment" }), events,
      runs: this.runs, ces: this.ces, enqueueRun: (k) => this.runController.enqueue(k),
    });
    this.runReconciler = new RunReconciler({
      client, providers: o.providers, logger: logger.child({ controller: "run" }), events, runs: this.runs, tracker: this.tracker,
      enqueueRun: (k) => this.runController.enqueue(k), enqueueComputeEnvironment: (k) => this.ceController.enqueue(k),
      pollIntervalMs: config.pollIntervalMs,
    });
  }

  isLeader(): boolean {
    return this.leading;
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
    this.ceController.start();
    this.runController.start();
    this.tracker.start();
  }

  /** Graceful stop: stop intake, finish in-flight reconciles up to the deadline, release the Lease. */
  async stop(deadlineMs = this.o.config.shutdownTimeoutMs): Promise<void> {
    this.stopping = true;
    this.syncAbort.abort(new Error("operator stopping"));
    await this.running?.catch(() => undefined);
    await this.tracker.stop();
    await Promise.all([this.ceController.stop(deadlineMs), this.runController.stop(deadlineMs)]);
    await Promise.all([...this.ces.reflectors, ...this.runs.reflectors, ...this.secrets.reflectors].map((r) => r.stop()));
    await this.elector?.stop();
    this.leading = false;
  }
}
