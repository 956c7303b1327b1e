import type { ComputeEnvironment, Run } from "../../api/types.js";
import { isTerminal } from "../../api/phases.js";
import { ANNOTATION_LAUNCHED_UNDER, ANNOTATION_LAUNCH_DECIDED, FINALIZER } from "../../api/constants.js";

export { TERMINAL_PHASES, isTerminal, type RunPhase } from "../../api/phases.js";

/** A Run that has not reached a terminal phase. */
export function isRunActive(run: Run): boolean {
  return !isTerminal(run);
}

/** Reasons of a Pending Run before any launch was attempted (any other Pending reason is a capacity wait). */
export const PRE_LAUNCH_REASONS: ReadonlySet<string> = new Set(["Accepted", "ComputeEnvironmentNotFound", "ProviderUnavailable", "ComputeEnvironmentNotReady", "ConcurrencyLimit"]);

/** A decided launch whose attempt failed and is retried (the Run stays decided). */
export const LAUNCH_RETRYING = "LaunchRetrying";

/**
 * The operator decided to launch this Run's machine (the annotation naming this Run's UID, written
 * with the finalizer) and the Run's status has not moved on since: the launch may be in flight, or
 * may have made a machine that is not recorded yet. The decision costs no status write of its own;
 * the next status the Run gets names its machine (Launching/Running), a capacity wait or the
 * failure. (A machine recorded earlier, e.g. one the cloud accepted but could not place, does not
 * end a later decision: the status must move on.)
 */
export function launchDecided(run: Run): boolean {
  const s = run.status;
  const uid = run.metadata.uid;
  return (
    !!uid &&
    run.metadata.annotations?.[ANNOTATION_LAUNCH_DECIDED] === uid &&
    (run.metadata.finalizers?.includes(FINALIZER) ?? false) &&
    (s?.phase ?? "Pending") === "Pending" &&
    (PRE_LAUNCH_REASONS.has(s?.reason ?? "Accepted") || s?.reason === LAUNCH_RETRYING)
  );
}

/** A launch was decided (or, as an operator before this one recorded it, Launching) and no machine is recorded yet. */
export function launchInFlight(run: Run): boolean {
  return (run.status?.phase === "Launching" && !run.status.instance?.id) || launchDecided(run);
}

/** A Run that holds (or may hold) a slot of its CE's concurrency limit. */
export function holdsSlot(run: Run): boolean {
  return run.status?.phase === "Launching" || run.status?.phase === "Running" || launchDecided(run);
}

/**
 * Whether a machine may still exist for this Run: its launch was decided, it got past Pending (or
 * is Pending again with a recorded machine), and its machine has not been seen terminated. A Run
 * that never launched has none.
 */
export function machineMayExist(run: Run): boolean {
  const phase = run.status?.phase;
  if (launchDecided(run)) return true;
  if (phase === undefined) return false;
  // Pending again after a machine the cloud accepted but could not place (a capacity wait): that
  // machine is followed until it is gone.
  if (phase === "Pending") return !!run.status?.instance?.id && run.status.instance.state !== "terminated";
  if (phase === "Launching" || phase === "Running") return true;
  const inst = run.status?.instance;
  if (!inst) return false;
  return inst.state !== "terminated";
}

/** The UID of the ComputeEnvironment this Run's launch was decided under (recorded with the decision; none before that, or by an older operator). */
export function launchedUnder(run: Run): string | undefined {
  return run.metadata.annotations?.[ANNOTATION_LAUNCHED_UNDER] || undefined;
}

/**
 * Whether a Run is one of this ComputeEnvironment's: it names the CE, and a machine it may have was
 * launched under this CE (not under an earlier CE of the same name that was removed by force).
 * A Run without a machine follows whichever CE now has the name; one decided by an operator that
 * did not record the CE goes by the name alone.
 */
export function belongsTo(run: Run, ce: ComputeEnvironment): boolean {
  if (run.metadata.namespace !== ce.metadata.namespace || run.spec.computeEnvironmentRef.name !== ce.metadata.name) return false;
  if (!machineMayExist(run)) return true;
  const under = launchedUnder(run);
  return under === undefined || under === ce.metadata.uid;
}
