import type { Run } from "../../api/types.js";
import { isTerminal } from "../../api/phases.js";

export { TERMINAL_PHASES, isTerminal, type RunPhase } from "../../api/phases.js";

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
