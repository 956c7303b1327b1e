import { describe, expect, it } from "vitest";
import type { ComputeEnvironment, Run } from "../../../src/api/types.js";
import { GoneComputeEnvironments, ceOfRun, standIn } from "../../../src/controllers/run/gone-ces.js";
import { ANNOTATION_LAUNCHED_UNDER } from "../../../src/api/constants.js";
import { belongsTo } from "../../../src/controllers/run/phases.js";

const ce = (name: string, uid = `ce-${name}`): ComputeEnvironment => ({
  metadata: { name, namespace: "ns", uid },
  spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://b/w" } },
} as ComputeEnvironment);

/** A Run of CE `ceName`; `under`: the CE UID its launch recorded (none: decided by an operator that did not record it). */
const run = (name: string, ceName: string, status: Run["status"], under?: string): Run => ({
  metadata: { name, namespace: "ns", uid: `run-${name}`, ...(under ? { annotations: { [ANNOTATION_LAUNCHED_UNDER]: under } } : {}) },
  spec: { computeEnvironmentRef: { name: ceName }, pipeline: { repository: "https://example.com/p" } },
  status,
} as Run);

const running = { phase: "Running", instance: { id: "i-1", state: "running" } } as Run["status"];
const ended = { phase: "Cancelled", instance: { id: "i-1", state: "terminated" } } as Run["status"];

describe("GoneComputeEnvironments", () => {
  it("remembers a removed CE only while a Run of it may have a machine, and drops it once none may", () => {
    const runs: Run[] = [run("a", "x", running), run("b", "y", { phase: "Pending" }), run("c", "z", ended)];
    const gone = new GoneComputeEnvironments({ list: () => runs });
    for (const name of ["x", "y", "z"]) gone.remember(ce(name));
    // y's Run never launched and z's machine is gone: nothing to reach.
    expect(gone.size).toBe(1);
    expect(gone.find(runs[0] as Run)?.metadata.uid).toBe("ce-x");
    expect(gone.find(runs[1] as Run)).toBeUndefined();
    runs[0] = run("a", "x", ended);
    expect(gone.find(runs[0])).toBeUndefined();
    expect(gone.size).toBe(0);
  });

  it("a CE created again under the name is another CE: Runs launched under the removed one stay with it, the tracker sees both", async () => {
    const runs: Run[] = [run("a", "x", running, "old-x"), run("b", "w", running, "old-w"), run("c", "x", running, "new-x")];
    const gone = new GoneComputeEnvironments({ list: () => runs });
    gone.remember(ce("x", "old-x"));
    gone.remember(ce("w", "old-w"));
    const live = new Map([["ns/x", ce("x", "new-x")]]);
    // The new CE's ADDED event does not make the old one forgotten.
    gone.forget(ce("x", "new-x"));
    const of = (r: Run): string | undefined => ceOfRun(r, live.get(`ns/${r.spec.computeEnvironmentRef.name}`), gone).ce?.metadata.uid;
    expect(runs.map(of)).toEqual(["old-x", "old-w", "new-x"]);
    expect(ceOfRun(runs[0] as Run, live.get("ns/x"), gone).gone).toBe(true);
    expect(ceOfRun(runs[2] as Run, live.get("ns/x"), gone).gone).toBeUndefined();
    expect(gone.find(runs[0] as Run)?.metadata.uid).toBe("old-x");
    expect(gone.find(runs[1] as Run)?.metadata.uid).toBe("old-w");
    // Launched under the live CE: nothing removed is its.
    expect(gone.find(runs[2] as Run)).toBeUndefined();
    expect(belongsTo(runs[0] as Run, ce("x", "new-x"))).toBe(false);
    expect(belongsTo(runs[0] as Run, ce("x", "old-x"))).toBe(true);
    expect(belongsTo(runs[2] as Run, ce("x", "new-x"))).toBe(true);
    expect(belongsTo(runs[2] as Run, ce("w", "new-x"))).toBe(false);
    // Without a machine a Run follows whatever CE has the name now.
    expect(belongsTo(run("d", "x", ended, "old-x"), ce("x", "new-x"))).toBe(true);
    // The old CE's last Run ends: the old CE goes; the live one's Run has nothing to do with it.
    runs[0] = run("a", "x", ended, "old-x");
    gone.prune();
    expect(gone.size).toBe(1);
    expect(of(runs[0])).toBe("new-x");
    // Its machine launched under a CE nothing remembers: none to follow it with, the live one replaced it.
    const lost = run("e", "x", running, "forgotten");
    expect(ceOfRun(lost, live.get("ns/x"), gone)).toEqual({ replaced: live.get("ns/x") });
  });

  it("a Run decided by an operator that did not record its CE goes by the name: the CE of that name removed last", () => {
    const runs: Run[] = [run("a", "x", running)];
    const gone = new GoneComputeEnvironments({ list: () => runs });
    gone.remember(ce("x", "first-x"));
    gone.remember(ce("x", "second-x"));
    expect(gone.find(runs[0] as Run)?.metadata.uid).toBe("second-x");
    // A relist shows the CE is there after all: not gone.
    gone.forget(ce("x", "second-x"));
    expect(gone.find(runs[0] as Run)?.metadata.uid).toBe("first-x");
  });

  it("keeps at most its limit, the oldest going first", () => {
    const runs: Run[] = ["p", "q", "r"].map((n) => run(n, n, running));
    const gone = new GoneComputeEnvironments({ list: () => runs }, 2);
    for (const n of ["p", "q", "r"]) gone.remember(ce(n));
    expect(gone.size).toBe(2);
    expect(gone.find(runs[0] as Run)).toBeUndefined();
    expect(gone.find(runs[2] as Run)).toBeDefined();
  });

  it("names the Secrets its CEs need, and prune() drops the CEs no Run needs any more, saying so (onDrop)", () => {
    const runs: Run[] = [run("a", "x", running), run("b", "w", running)];
    const dropped: string[] = [];
    const gone = new GoneComputeEnvironments({ list: () => runs }, 10, (c) => dropped.push(c.metadata.name ?? ""));
    const withSecret = (name: string, secret: string): ComputeEnvironment => ({ ...ce(name), spec: { ...ce(name).spec, credentials: { secretRef: { name: secret } } } } as ComputeEnvironment);
    gone.remember(withSecret("x", "x-creds"));
    gone.remember(withSecret("w", "w-creds"));
    expect(gone.secretNames("ns").sort()).toEqual(["w-creds", "x-creds"]);
    expect(gone.secretNames("elsewhere")).toEqual([]);
    runs[0] = run("a", "x", ended);
    gone.prune();
    expect(gone.find(runs[1] as Run)?.metadata.name).toBe("w");
    expect(dropped).toEqual(["x"]);
    expect(gone.secretNames("ns")).toEqual(["w-creds"]);
  });

  it("a CE it never saw go is inferred from the CE now holding the name: that CE's spec under the UID the Run recorded", () => {
    const runs: Run[] = [run("a", "x", running, "old-x"), run("b", "x", running, "new-x")];
    const gone = new GoneComputeEnvironments({ list: () => runs });
    const live = { ...ce("x", "new-x"), metadata: { name: "x", namespace: "ns", uid: "new-x", finalizers: ["vmforge.dev/finalizer"] } } as ComputeEnvironment;
    expect(standIn(runs[1] as Run, live)).toBeUndefined();
    expect(gone.inferFrom(runs[1] as Run, live)).toBeUndefined();
    const inferred = gone.inferFrom(runs[0] as Run, live);
    expect(inferred?.metadata.uid).toBe("old-x");
    expect(inferred?.metadata.finalizers).toEqual([]);
    expect(gone.inferredVia(inferred as ComputeEnvironment)).toBe("new-x");
    // Nothing marks the object itself: the marker is the registry's, never written anywhere.
    expect(inferred?.metadata.annotations).toEqual(live.metadata.annotations);
    expect(inferred?.spec).toEqual(live.spec);
    // The live object is not changed, and from now on the Run goes with the stand-in.
    expect(live.metadata.uid).toBe("new-x");
    expect(ceOfRun(runs[0] as Run, live, gone)).toEqual({ ce: inferred, gone: true });
    expect(ceOfRun(runs[1] as Run, live, gone)).toEqual({ ce: live });
    // Asked again: the same entry.
    expect(gone.inferFrom(runs[0] as Run, live)).toBe(inferred);
    // A stand-in made by the caller is taken as it is, and only for the CE the Run recorded.
    const other = new GoneComputeEnvironments({ list: () => runs });
    const made = standIn(runs[0] as Run, live) as ComputeEnvironment;
    expect(other.inferFrom(runs[0] as Run, live, { ...made, metadata: { ...made.metadata, uid: "another" } })).toBeUndefined();
    expect(other.inferFrom(runs[0] as Run, live, made)).toBe(made);
    // Once let go (its Run ended), neither the entry nor its marker is kept.
    runs[0] = run("a", "x", ended, "old-x");
    other.prune();
    expect(other.size).toBe(0);
    expect(other.inferredVia(made)).toBeUndefined();
    // A real CE remembered under that UID later carries no marker.
    runs[0] = run("a", "x", running, "old-x");
    other.remember(made);
    expect(other.inferredVia(made)).toBeUndefined();
  });
});
