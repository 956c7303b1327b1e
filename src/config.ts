/**
 * Operator configuration from the environment, validated once at start. A bad value stops the
 * operator with a message naming the variable, instead of running half-configured.
 */
import { hostname } from "node:os";
import { parseDuration } from "./api/duration.js";

export interface OperatorConfig {
  /** Namespaces to watch; empty means all namespaces. */
  namespaces: string[];
  /** Concurrent ComputeEnvironment reconciles; first statuses of Runs get 4 times as many workers. */
  workers: number;
  /**
   * Concurrent Run reconciles (launches, terminations, outcomes): the launch calls that can be in
   * flight at once, which bounds a burst of launches by the cloud's time per launch (README,
   * Performance: "Launches that take the cloud's time"). Default 64, whatever `workers` is.
   */
  runWorkers: number;
  resyncPeriodMs: number;
  /** How often active Runs' machines are looked at (one batched call per account and region). */
  pollIntervalMs: number;
  leaderElection: boolean;
  leaseNamespace: string;
  leaseName: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  identity: string;
  /** host:port for /healthz, /readyz and /metrics. */
  metricsAddress: string;
  logLevel: string;
  shutdownTimeoutMs: number;
  reconcileTimeoutMs: number;
  /**
   * Azure: how long a Run whose VM was seen stopped (or gone) without an uploaded exit status
   * waits for its exit line to become queryable in Log Analytics before it ends without an
   * outcome (the VM itself is deleted at once). Default: the provider's EXIT_LINE_GRACE_MS.
   */
  azureExitLineGraceMs?: number;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const LEVELS = new Set(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);

function int(env: NodeJS.ProcessEnv, name: string, def: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return def;
  if (!/^\d+$/.test(raw)) throw new ConfigError(`${name} must be a whole number, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

function duration(env: NodeJS.ProcessEnv, name: string, def: string, minMs: number): number {
  const raw = env[name] || def;
  let ms: number;
  try {
    ms = parseDuration(raw);
  } catch {
    throw new ConfigError(`${name} must be a duration such as 30s, 5m or 1h, got "${raw}"`);
  }
  if (ms < minMs) throw new ConfigError(`${name} must be at least ${minMs / 1000}s, got "${raw}"`);
  return ms;
}

function bool(env: NodeJS.ProcessEnv, name: string, def: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return def;
  if (/^(true|1|yes)$/i.test(raw)) return true;
  if (/^(false|0|no)$/i.test(raw)) return false;
  throw new ConfigError(`${name} must be true or false, got "${raw}"`);
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): OperatorConfig {
  const namespaces = (env.VMFORGE_NAMESPACES ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  for (const ns of namespaces) {
    if (!NAME.test(ns) || ns.length > 63) throw new ConfigError(`VMFORGE_NAMESPACES: "${ns}" is not a valid namespace name`);
  }
  const leaseNamespace = env.VMFORGE_LEADER_ELECTION_NAMESPACE || env.POD_NAMESPACE || "default";
  if (!NAME.test(leaseNamespace)) throw new ConfigError(`VMFORGE_LEADER_ELECTION_NAMESPACE: "${leaseNamespace}" is not a valid namespace name`);
  const logLevel = env.VMFORGE_LOG_LEVEL || "info";
  if (!LEVELS.has(logLevel)) throw new ConfigError(`VMFORGE_LOG_LEVEL must be one of ${[...LEVELS].join(", ")}, got "${logLevel}"`);
  const metricsAddress = env.VMFORGE_METRICS_ADDRESS || ":8080";
  if (!/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]*):\d{1,5}$/.test(metricsAddress)) {
    throw new ConfigError(`VMFORGE_METRICS_ADDRESS must look like host:port or :port, got "${metricsAddress}"`);
  }
  return {
    namespaces,
    workers: int(env, "VMFORGE_WORKERS", 4, 1, 64),
    runWorkers: int(env, "VMFORGE_RUN_WORKERS", 64, 1, 256),
    resyncPeriodMs: duration(env, "VMFORGE_RESYNC_PERIOD", "10m", 10_000),
    pollIntervalMs: duration(env, "VMFORGE_POLL_INTERVAL", "15s", 1_000),
    leaderElection: bool(env, "VMFORGE_LEADER_ELECTION", true),
    leaseNamespace,
    leaseName: env.VMFORGE_LEASE_NAME || "vmforge-operator",
    ...leaseTimings(env),
    identity: env.POD_NAME || `${hostname()}-${process.pid}`,
    metricsAddress,
    logLevel,
    shutdownTimeoutMs: duration(env, "VMFORGE_SHUTDOWN_TIMEOUT", "30s", 1_000),
    reconcileTimeoutMs: duration(env, "VMFORGE_RECONCILE_TIMEOUT", "5m", 1_000),
    ...(env.VMFORGE_AZURE_EXIT_LINE_GRACE ? { azureExitLineGraceMs: duration(env, "VMFORGE_AZURE_EXIT_LINE_GRACE", "10m", 0) } : {}),
  };
}


function leaseTimings(env: NodeJS.ProcessEnv): Pick<OperatorConfig, "leaseDurationMs" | "renewDeadlineMs" | "retryPeriodMs"> {
  const leaseDurationMs = duration(env, "VMFORGE_LEASE_DURATION", "15s", 1_000);
  const renewDeadlineMs = duration(env, "VMFORGE_LEASE_RENEW_DEADLINE", "10s", 1_000);
  const retryPeriodMs = duration(env, "VMFORGE_LEASE_RETRY_PERIOD", "2s", 1_000);
  if (!(retryPeriodMs < renewDeadlineMs && renewDeadlineMs < leaseDurationMs)) {
    throw new ConfigError("lease timings must satisfy VMFORGE_LEASE_RETRY_PERIOD < VMFORGE_LEASE_RENEW_DEADLINE < VMFORGE_LEASE_DURATION");
  }
  return { leaseDurationMs, renewDeadlineMs, retryPeriodMs };
}
