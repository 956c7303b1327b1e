import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { ceOfRun, type GoneComputeEnvironments } from "../../src/controllers/run/gone-ces.js";

/** The run tracker's `ceOf` as the operator wires it, over a list of live CEs (and removed ones, if given). */
export function ceOfIn(ces: () => ComputeEnvironment[], gone?: GoneComputeEnvironments): (run: Run) => ComputeEnvironment | undefined {
  return (run) => {
    const named = ces().find((c) => c.metadata.namespace === run.metadata.namespace && c.metadata.name === run.spec.computeEnvironmentRef.name);
    return ceOfRun(run, named, gone).ce;
  };
}
