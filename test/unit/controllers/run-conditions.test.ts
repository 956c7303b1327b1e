import { describe, expect, it } from "vitest";
import type { Condition } from "../../../src/engine/conditions.js";
import { runConditions, timingOutConditions } from "../../../src/controllers/run/reconciler.js";

const byType = (c: Condition[]): Record<string, Pick<Condition, "status" | "reason" | "message" | "observedGeneration">> =>
  Object.fromEntries(c.map((x) => [x.type, { status: x.status, reason: x.reason, message: x.message, observedGeneration: x.observedGeneration }]));

const SAID = "exceeded its timeout of 1m; its machine is being terminated";

describe("a Run's conditions once its timeout is decided (timingOutConditions)", () => {
  it("adds TimedOut with the final message; Ready and Reconciling keep status and reason and say what status.message says", () => {
    const running = runConditions(undefined, "Running", 1, "Running", "running on i-1");
    const out = byType(timingOutConditions(running, "exceeded its timeout of 1m", SAID, 1, "Running"));
    expect(out.TimedOut).toEqual({ status: "True", reason: "Timeout", message: "exceeded its timeout of 1m", observedGeneration: 1 });
    expect(out.Ready).toEqual({ status: "False", reason: "Running", message: SAID, observedGeneration: 1 });
    expect(out.Reconciling).toEqual({ status: "True", reason: "Running", message: SAID, observedGeneration: 1 });
    expect(out.Stalled).toEqual({ status: "False", reason: "Progressing", message: "", observedGeneration: 1 });
  });

  it("leaves a blocked termination's Stalled=True as it was (for the generation observed now)", () => {
    // As `terminate` leaves a Pending Run whose machine's termination was refused for good: Stalled and MachineTerminationBlocked set, Reconciling as it was.
    const before = runConditions(undefined, "Pending", 1, "InsufficientCapacity", "waiting for capacity").map((c) =>
      c.type === "Stalled" ? { ...c, status: "True" as const, reason: "AccessDenied", message: "ec2:TerminateInstances denied" } : c);
    before.push({ type: "MachineTerminationBlocked", status: "True", reason: "AccessDenied", message: "denied", lastTransitionTime: "2026-01-01T00:00:00Z" });
    const out = byType(timingOutConditions(before, "timeout of 5m", SAID, 2, "InsufficientCapacity"));
    expect(out.Stalled).toEqual({ status: "True", reason: "AccessDenied", message: "ec2:TerminateInstances denied", observedGeneration: 2 });
    expect(out.MachineTerminationBlocked?.status).toBe("True");
    expect(out.Reconciling).toEqual({ status: "True", reason: "InsufficientCapacity", message: SAID, observedGeneration: 2 });
    expect(out.Ready).toEqual({ status: "False", reason: "InsufficientCapacity", message: SAID, observedGeneration: 2 });
    expect(out.TimedOut?.status).toBe("True");
  });

  it("gives a status without Ready one, with the reason it is given", () => {
    const out = byType(timingOutConditions(undefined, "timeout of 5m", SAID, undefined, "Launching"));
    expect(out.Ready).toEqual({ status: "False", reason: "Launching", message: SAID, observedGeneration: undefined });
    expect(Object.keys(out).sort()).toEqual(["Ready", "TimedOut"]);
  });
});
