import { describe, expect, it } from "vitest";
import type { Run, RunStatus } from "../../../src/api/types.js";
import { ANNOTATION_LAUNCH_DECIDED, FINALIZER } from "../../../src/api/constants.js";
import { holdsSlot, launchDecided, launchInFlight, machineMayExist } from "../../../src/controllers/run/phases.js";

const run = (status?: Partial<RunStatus>, decided = false): Run =>
  ({
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { name: "r", namespace: "ns", uid: "u1", ...(decided ? { annotations: { [ANNOTATION_LAUNCH_DECIDED]: "u1" }, finalizers: [FINALIZER] } : {}) },
    spec: { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
    ...(status ? { status: status as RunStatus } : {}),
  }) as Run;

describe("a Run's launch decision (the annotation written with the finalizer)", () => {
  it("a decided Run with no status since is a launch in flight: it holds a slot and may have a machine", () => {
    for (const reason of ["Accepted", "ConcurrencyLimit", "ComputeEnvironmentNotReady"]) {
      const r = run({ phase: "Pending", reason }, true);
      expect({ reason, decided: launchDecided(r), inFlight: launchInFlight(r), slot: holdsSlot(r), machine: machineMayExist(r) })
        .toEqual({ reason, decided: true, inFlight: true, slot: true, machine: true });
    }
  });

  it("the same Run without the annotation has not been launched: no slot, no machine", () => {
    const r = run({ phase: "Pending", reason: "Accepted" });
    expect([launchDecided(r), launchInFlight(r), holdsSlot(r), machineMayExist(r)]).toEqual([false, false, false, false]);
  });

  it("a status written after the decision ends it: the machine recorded, a capacity wait, or the end", () => {
    const launching = run({ phase: "Launching", reason: "Launching", instance: { id: "i-1", state: "pending" } }, true);
    expect([launchDecided(launching), launchInFlight(launching), holdsSlot(launching), machineMayExist(launching)]).toEqual([false, false, true, true]);
    // refused for capacity: no machine was made, the slot is free while it waits
    const capacity = run({ phase: "Pending", reason: "InsufficientInstanceCapacity" }, true);
    expect([launchDecided(capacity), holdsSlot(capacity), machineMayExist(capacity)]).toEqual([false, false, false]);
    // ...unless the cloud accepted a machine it could not place: followed until it is gone
    const placed = run({ phase: "Pending", reason: "InsufficientInstanceCapacity", instance: { id: "i-2", state: "pending" } }, true);
    expect([launchDecided(placed), machineMayExist(placed)]).toEqual([false, true]);
    const failed = run({ phase: "Failed", reason: "LaunchFailed" }, true);
    expect([launchDecided(failed), holdsSlot(failed), machineMayExist(failed)]).toEqual([false, false, false]);
  });

  it("a decision is this Run's own: a copy (another UID in the annotation) or one without the finalizer is not decided", () => {
    const copied = run({ phase: "Pending", reason: "Accepted" }, true);
    copied.metadata.uid = "u2";
    expect([launchDecided(copied), holdsSlot(copied), machineMayExist(copied)]).toEqual([false, false, false]);
    const noFinalizer = run({ phase: "Pending", reason: "Accepted" }, true);
    noFinalizer.metadata.finalizers = [];
    expect([launchDecided(noFinalizer), holdsSlot(noFinalizer)]).toEqual([false, false]);
  });

  it("a decision after a machine the cloud accepted but could not place still counts, and so does a retried attempt", () => {
    const again = run({ phase: "Pending", reason: "ConcurrencyLimit", instance: { id: "vm-1", state: "terminated" } }, true);
    expect([launchDecided(again), launchInFlight(again), holdsSlot(again), machineMayExist(again)]).toEqual([true, true, true, true]);
    const retrying = run({ phase: "Pending", reason: "LaunchRetrying" }, true);
    expect([launchDecided(retrying), holdsSlot(retrying), machineMayExist(retrying)]).toEqual([true, true, true]);
  });

  it("a Run left in Launching without a machine (as earlier operators recorded a decision) is still a launch in flight", () => {
    const r = run({ phase: "Launching", reason: "Launching" });
    expect([launchDecided(r), launchInFlight(r), holdsSlot(r), machineMayExist(r)]).toEqual([false, true, true, true]);
  });
});
