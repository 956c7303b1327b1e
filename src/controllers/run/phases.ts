import type { Run, RunStatus } from "../../api/types.js";

export type RunPhase = NonNullable<RunStatus["phase"]>;

export const TERMINAL_PHASES: ReadonlySet<RunPhase> = new Set(["Succeeded", "Failed", "Cancelled"]);

export function isTerminal(run: Run): boolean {
  return run.status?.phase !== undefined && TERMINAL_PHASES.has(run.status.phase);
}

/** A Run that has not reached a terminal phase. */
export function isRunActive(run: Run): boolean {
  return !isTerminal(run);
}

/** A Run that holds (or may hold) a slot of its CE's concurrency limit. */
export function holdsSlot(run: Run): boolean {
  return run.status?.phase === "Launching" || run.status?.phase === "Running";
}

/**
 * Whether a machine may still exist for this Run: it got past Pending (or is Pending again with a
 * recorded machine) and its machine has not been seen terminated. A Run that never launched has none.
 */
export function machineMayExist(run: Run): boolean {
  const phase = run.status?.phase;
  if (phase === undefined) return false;
  // Pending again after a machine the cloud accepted but could not place (a capacity wait): that
  // machine is followed until it is gone.
  if (phase === "Pending") return !!run.status?.instance?.id && run.status.instance.state !== "terminated";
  if (phase === "Launching" || phase === "Running") return true;
  const inst = run.status?.instance;
  if (!inst) return false;
  return inst.state !== "terminated";
}
