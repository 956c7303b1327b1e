/**
 * Prometheus metrics of the controller engine. Every EngineMetrics owns its own prom-client
 * Registry (never the global one), so several instances (tests, two operators in one process)
 * do not collide.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export interface EngineMetricsOptions {
  /** Prefix of every metric name; default "vmforge_". */
  prefix?: string;
  /** Register the default process/Node.js metrics on this registry; default true. */
  defaultMetrics?: boolean;
  /** Labels added to every series of this registry. */
  defaultLabels?: Record<string, string>;
}

export class EngineMetrics {
  readonly registry: Registry;

  /** Reconciles finished, by controller and result ("success" | "requeue" | "error" | "terminal" | "timeout" ...). */
  readonly reconcileTotal: Counter<"controller" | "result">;
  /** Reconcile errors by controller and kind ("retryable" | "terminal" | "timeout" | "panic" ...). */
  readonly reconcileErrors: Counter<"controller" | "kind">;
  /** Reconcile wall time in seconds. */
  readonly reconcileDuration: Histogram<"controller">;
  /** Reconciles currently running, by controller. */
  readonly reconcileInFlight: Gauge<"controller">;
  /**
   * How long a worker held a key before reconciling it while another queue went first
   * (ControllerOptions.yieldTo); 0 when that queue was idle. Only controllers with yieldTo observe it.
   */
  readonly reconcileHeld: Histogram<"controller">;
  /** Keys waiting in a work queue (ready, not yet handed to a worker). */
  readonly queueDepth: Gauge<"queue">;
  /** Keys added to a work queue (after de-duplication). */
  readonly queueAdds: Counter<"queue">;
  /** Rate-limited re-adds (retries after an error). */
  readonly queueRetries: Counter<"queue">;
  /** Seconds a key waited in the queue before a worker took it. */
  readonly queueLatency: Histogram<"queue">;
  /**
   * Keys a worker found waiting when it asked for one (more keys than free workers), as against
   * keys handed to a worker that was already waiting. These backlogs space the callers of whenIdle.
   */
  readonly queueBacklog: Counter<"queue">;
  /** Watch (re)starts by resource and reason ("initial" | "timeout" | "error" | "expired" | "idle" ...). */
  readonly watchRestarts: Counter<"resource" | "reason">;
  /** Watch events received, by resource and type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR). */
  readonly watchEvents: Counter<"resource" | "type">;
  /** Full lists performed by a reflector, by resource. */
  readonly relists: Counter<"resource">;
  /** 1 while this process holds the leader lease, else 0. */
  readonly leaderStatus: Gauge;
  /** Leadership changes seen by this process ("acquired" | "lost" | "released"). */
  readonly leaderTransitions: Counter<"transition">;
  /** Kubernetes Events emitted, by result ("created" | "aggregated" | "failed" | "dropped"). */
  readonly eventsTotal: Counter<"result">;
  /** Status writes through /status, by resource kind. */
  readonly statusWrites: Counter<"kind">;
  /** Requests this process sent to the kube-apiserver, by verb and resource. */
  readonly kubeRequests: Counter<"verb" | "resource">;

  constructor(opts: EngineMetricsOptions = {}) {
    const p = opts.prefix ?? "vmforge_";
    const registry = new Registry();
    if (opts.defaultLabels) registry.setDefaultLabels(opts.defaultLabels);
    this.registry = registry;
    const registers = [registry];

    this.reconcileTotal = new Counter({
      name: `${p}reconcile_total`,
      help: "Reconciles finished, by controller and result.",
      labelNames: ["controller", "result"] as const,
      registers,
    });
    this.reconcileErrors = new Counter({
      name: `${p}reconcile_errors_total`,
      help: "Reconcile errors, by controller and error kind.",
      labelNames: ["controller", "kind"] as const,
      registers,
    });
    this.reconcileDuration = new Histogram({
      name: `${p}reconcile_duration_seconds`,
      help: "Reconcile wall time in seconds.",
      labelNames: ["controller"] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers,
    });
    this.reconcileHeld = new Histogram({
      name: `${p}reconcile_held_seconds`,
      help: "Seconds a worker held a key before its reconcile, while another controller's queue went first.",
      labelNames: ["controller"] as const,
      buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.reconcileInFlight = new Gauge({
      name: `${p}reconcile_in_flight`,
      help: "Reconciles currently running.",
      labelNames: ["controller"] as const,
      registers,
    });
    this.queueDepth = new Gauge({
      name: `${p}workqueue_depth`,
      help: "Keys waiting in the work queue.",
      labelNames: ["queue"] as const,
      registers,
    });
    this.queueAdds = new Counter({
      name: `${p}workqueue_adds_total`,
      help: "Keys added to the work queue.",
      labelNames: ["queue"] as const,
      registers,
    });
    this.queueRetries = new Counter({
      name: `${p}workqueue_retries_total`,
      help: "Rate-limited re-adds to the work queue.",
      labelNames: ["queue"] as const,
      registers,
    });
    this.queueLatency = new Histogram({
      name: `${p}workqueue_queue_duration_seconds`,
      help: "Seconds a key waited in the queue before a worker took it.",
      labelNames: ["queue"] as const,
      buckets: [0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300],
      registers,
    });
    this.queueBacklog = new Counter({
      name: `${p}workqueue_backlog_total`,
      help: "Keys a worker found already waiting when it asked for one (more keys than free workers).",
      labelNames: ["queue"] as const,
      registers,
    });
    this.watchRestarts = new Counter({
      name: `${p}watch_restarts_total`,
      help: "Watch (re)starts, by resource and reason.",
      labelNames: ["resource", "reason"] as const,
      registers,
    });
    this.watchEvents = new Counter({
      name: `${p}watch_events_total`,
      help: "Watch events received, by resource and event type.",
      labelNames: ["resource", "type"] as const,
      registers,
    });
    this.relists = new Counter({
      name: `${p}reflector_lists_total`,
      help: "Full lists performed by reflectors, by resource.",
      labelNames: ["resource"] as const,
      registers,
    });
    this.leaderStatus = new Gauge({
      name: `${p}leader_status`,
      help: "1 while this process holds the leader lease, else 0.",
      registers,
    });
    this.leaderStatus.set(0);
    this.leaderTransitions = new Counter({
      name: `${p}leader_transitions_total`,
      help: "Leadership changes of this process.",
      labelNames: ["transition"] as const,
      registers,
    });
    this.eventsTotal = new Counter({
      name: `${p}events_total`,
      help: "Kubernetes Events emitted, by result.",
      labelNames: ["result"] as const,
      registers,
    });
    this.statusWrites = new Counter({
      name: `${p}status_writes_total`,
      help: "Status subresource writes, by kind.",
      labelNames: ["kind"] as const,
      registers,
    });

    this.kubeRequests = new Counter({
      name: `${p}kube_requests_total`,
      help: "Requests sent to the kube-apiserver, by verb and resource.",
      labelNames: ["verb", "resource"] as const,
      registers,
    });

    if (opts.defaultMetrics ?? true) {
      collectDefaultMetrics({ register: registry, prefix: p });
    }
  }

  /** Prometheus text exposition of every metric in this registry. */
  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
