import type { Run, RunStatus } from "./types.js";

export type RunPhase = NonNullable<RunStatus["phase"]>;

/** A Run in one of these phases is over (never launched again). */
export const TERMINAL_PHASES: ReadonlySet<RunPhase> = new Set(["Succeeded", "Failed", "Cancelled"]);

export function isTerminal(run: Run): boolean {
  return run.status?.phase !== undefined && TERMINAL_PHASES.has(run.status.phase);
}
