/**
 * The status fixtures of test/fixtures/status/ (recorded from the operator by
 * test/integration/gitops-health.test.ts) and the health every GitOps tool must give each one.
 */
import { join } from "node:path";

const ROOT = join(import.meta.dirname, "..", "..");
export const FIXTURES_DIR = join(ROOT, "test", "fixtures", "status");

/** The shipped Argo CD health scripts. */
export const LUA = {
  ComputeEnvironment: join(ROOT, "deploy", "gitops", "argocd", "health", "vmforge.dev", "ComputeEnvironment", "health.lua"),
  Run: join(ROOT, "deploy", "gitops", "argocd", "health", "vmforge.dev", "Run", "health.lua"),
} as const;

export interface Expected {
  argo: "Healthy" | "Progressing" | "Degraded";
  flux: "Current" | "InProgress" | "Failed" | "Terminating";
}

/**
 * Fixture name -> expected health. "Current" for objects the operator has not seen yet is what
 * kstatus gives any object without status (documented in deploy/gitops/README.md).
 */
export const EXPECTED: Record<string, Expected> = {
  "ce-new": { argo: "Progressing", flux: "Current" },
  "ce-ready": { argo: "Healthy", flux: "Current" },
  "ce-spec-changed": { argo: "Progressing", flux: "InProgress" },
  "ce-reconciling": { argo: "Progressing", flux: "InProgress" },
  "ce-stalled": { argo: "Degraded", flux: "Failed" },
  "ce-deleting": { argo: "Progressing", flux: "Terminating" },
  "run-new": { argo: "Progressing", flux: "Current" },
  "run-pending": { argo: "Progressing", flux: "InProgress" },
  "run-launching": { argo: "Progressing", flux: "InProgress" },
  "run-running": { argo: "Progressing", flux: "InProgress" },
  "run-succeeded": { argo: "Healthy", flux: "Current" },
  "run-failed": { argo: "Degraded", flux: "Failed" },
  "run-cancelled": { argo: "Degraded", flux: "Failed" },
  "run-deleting": { argo: "Progressing", flux: "Terminating" },
};

const FIXED_TIME = "2026-01-01T00:00:00Z";

/**
 * What a fixture keeps of a stored object: kind, name, generation, deletion mark, finalizers, spec
 * and status, with times and identifiers replaced by fixed values so a re-recording only differs
 * where the operator's behaviour did.
 */
export function fixtureOf(obj: { apiVersion?: string; kind?: string; metadata: object; spec?: unknown; status?: unknown }): unknown {
  const m = obj.metadata as Record<string, unknown>;
  const text = JSON.stringify({ spec: obj.spec, status: obj.status ?? null })
    .replace(/"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"/g, `"${FIXED_TIME}"`)
    .replace(/"i-[0-9a-f]{17}"/g, '"i-0123456789abcdef0"')
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, "0a1b2c3d-0000-4000-8000-000000000000")
    .replace(new RegExp(String(m.namespace ?? "\u0000"), "g"), "pipelines")
    .replace(/TowerForge-([a-z0-9-]+)-[0-9a-f]{8}/g, "TowerForge-$1-0a1b2c3d")
    .replace(/pipelines\/([a-z0-9-]+)\/[0-9a-f]{8}/g, "pipelines/$1/0a1b2c3d");
  const { spec, status } = JSON.parse(text) as { spec: unknown; status: unknown };
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    metadata: {
      name: m.name,
      namespace: "pipelines",
      generation: m.generation,
      ...(m.deletionTimestamp ? { deletionTimestamp: FIXED_TIME } : {}),
      ...(m.finalizers ? { finalizers: m.finalizers } : {}),
    },
    spec,
    ...(status === null ? {} : { status }),
  };
}

/** The part of an object that decides its health: what a fixture must keep matching. */
export function healthProjection(obj: { metadata: { generation?: number; deletionTimestamp?: string }; status?: { phase?: string; observedGeneration?: number; conditions?: { type: string; status: string; observedGeneration?: number }[] } }): unknown {
  const trio = (obj.status?.conditions ?? []).filter((c) => ["Ready", "Reconciling", "Stalled"].includes(c.type));
  return {
    generation: obj.metadata.generation,
    deleting: !!obj.metadata.deletionTimestamp,
    phase: obj.status?.phase,
    observedGeneration: obj.status?.observedGeneration,
    // Reasons are left out: some states have several (a deleting CE says StoppingRuns or
    // StoppingMachines depending on the moment); health follows type and status.
    conditions: trio.map((c) => `${c.type}=${c.status} gen=${c.observedGeneration ?? "-"}`).sort(),
  };
}
