/**
 * kstatus as Flux computes it for a custom resource without built-in rules (the generic reader of
 * sigs.k8s.io/cli-utils/pkg/kstatus/status, which Flux's `wait` and `healthChecks` use):
 *   1. metadata.deletionTimestamp set              -> Terminating
 *   2. status.observedGeneration != generation     -> InProgress (when observedGeneration exists)
 *   3. a Reconciling condition with status True    -> InProgress
 *   4. a Stalled condition with status True        -> Failed
 *   5. otherwise                                   -> Current
 * (3 and 4 are checked in the order the conditions appear, the first match wins.) Flux waits for
 * Current and gives up early on Failed.
 */
export type KStatus = "InProgress" | "Failed" | "Current" | "Terminating";

interface Obj {
  metadata: { generation?: number; deletionTimestamp?: string };
  status?: { observedGeneration?: number; conditions?: { type: string; status: string; reason?: string; message?: string }[] };
}

export function kstatusOf(obj: Obj): { status: KStatus; message: string } {
  if (obj.metadata.deletionTimestamp) return { status: "Terminating", message: "Resource scheduled for deletion" };
  const observed = obj.status?.observedGeneration;
  if (observed !== undefined && observed !== obj.metadata.generation) {
    return { status: "InProgress", message: `Generation ${obj.metadata.generation ?? 0} not yet observed (${observed})` };
  }
  for (const c of obj.status?.conditions ?? []) {
    if (c.type === "Reconciling" && c.status === "True") return { status: "InProgress", message: c.message ?? c.reason ?? "" };
    if (c.type === "Stalled" && c.status === "True") return { status: "Failed", message: c.message ?? c.reason ?? "" };
  }
  return { status: "Current", message: "Resource is current" };
}
