import { describe, expect, it } from "vitest";
import type { Condition } from "../../../src/engine/conditions.js";
import { runConditions, timingOutConditions } from "../../../src/controllers/run/reconciler.js";

const byType = (c: Condition[]): Record<string, Pick<Condition, "status" | "reason" | "message">> =>
  Object.fromEntries(c.map((x) => [x.type, { status: x.status, reason: x.reason, message: x.message }]));

describe("a Run's conditions once its timeout is decided (timingOutConditions)", () => {
  it("adds TimedOut with the final message; Ready and a True Reconciling keep status and reason and say what status.message says", () => {
    const running = runConditions(undefined, "Running", 1, "Running", "running on i-1");
    const out = byType(timingOutConditions(running, "exceeded its timeout of 1m", "exceeded its timeout of 1m; its machine is being terminated", 1));
    expect(out.TimedOut).toEqual({ status: "True", reason: "Timeout", message: "exceeded its timeout of 1m" });
    expect(out.Ready).toEqual({ status: "False", reason: "Running", message: "exceeded its timeout of 1m; its machine is being terminated" });
    expect(out.Reconciling).toEqual({ status: "True", reason: "Running", message: "exceeded its timeout of 1m; its machine is being terminated" });
    expect(out.Stalled).toEqual({ status: "False", reason: "Progressing", message: "" });
  });

  it("leaves a blocked termination's Stalled=True (and a False Reconciling) as they were", () => {
    let before = runConditions(undefined, "Pending", 2, "Cancelling", "cancelled; terminating its machine");
    before = before.map((c) =>
      c.type === "Stalled" ? { ...c, status: "True", reason: "AccessDenied", message: "ec2:TerminateInstances denied" }
        : c.type === "Reconciling" ? { ...c, status: "False", reason: "AccessDenied", message: "" } : c);
    before.push({ type: "MachineTerminationBlocked", status: "True", reason: "AccessDenied", message: "denied", lastTransitionTime: "2026-01-01T00:00:00Z" });
    const out = byType(timingOutConditions(before, "timeout of 5m", "timeout of 5m; its machine is being terminated", 2));
    expect(out.Stalled).toEqual({ status: "True", reason: "AccessDenied", message: "ec2:TerminateInstances denied" });
    expect(out.Reconciling).toEqual({ status: "False", reason: "AccessDenied", message: "" });
    expect(out.MachineTerminationBlocked?.status).toBe("True");
    expect(out.Ready).toEqual({ status: "False", reason: "Cancelling", message: "timeout of 5m; its machine is being terminated" });
    expect(out.TimedOut?.status).toBe("True");
  });
});
