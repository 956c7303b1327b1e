import { describe, expect, it } from "vitest";
import type { ComputeEnvironment, Run } from "../../../src/api/types.js";
import { GoneComputeEnvironments } from "../../../src/controllers/run/gone-ces.js";

const ce = (name: string, uid = `ce-${name}`): ComputeEnvironment => ({
  metadata: { name, namespace: "ns", uid },
  spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://b/w" } },
} as ComputeEnvironment);

const run = (name: string, ceName: string, status: Run["status"]): Run => ({
  metadata: { name, namespace: "ns", uid: `run-${name}` },
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
    expect(gone.get("ns/x")?.metadata.uid).toBe("ce-x");
    expect(gone.get("ns/y")).toBeUndefined();
    runs[0] = run("a", "x", ended);
    expect(gone.get("ns/x")).toBeUndefined();
    expect(gone.size).toBe(0);
  });

  it("a CE created again under the name replaces the removed one; the tracker sees live and removed CEs once each", () => {
    const runs: Run[] = [run("a", "x", running), run("b", "w", running)];
    const gone = new GoneComputeEnvironments({ list: () => runs });
    gone.remember(ce("x", "old-x"));
    gone.remember(ce("w", "old-w"));
    const live = new Map([["ns/x", ce("x", "new-x")]]);
    const source = gone.over({ list: () => [...live.values()], get: (k) => live.get(k) });
    expect(source.list().map((c) => c.metadata.uid).sort()).toEqual(["new-x", "old-w"]);
    gone.forget(ce("x", "new-x"));
    expect(gone.get("ns/x")).toBeUndefined();
    expect(gone.get("ns/w")?.metadata.uid).toBe("old-w");
  });

  it("keeps at most its limit, the oldest going first", () => {
    const runs: Run[] = ["p", "q", "r"].map((n) => run(n, n, running));
    const gone = new GoneComputeEnvironments({ list: () => runs }, 2);
    for (const n of ["p", "q", "r"]) gone.remember(ce(n));
    expect(gone.size).toBe(2);
    expect(gone.get("ns/p")).toBeUndefined();
    expect(gone.get("ns/r")).toBeDefined();
  });

  it("names the Secrets its CEs need, and the tracker's look drops the CEs no Run needs any more, saying so (onDrop)", () => {
    const runs: Run[] = [run("a", "x", running), run("b", "w", running)];
    const dropped: string[] = [];
    const gone = new GoneComputeEnvironments({ list: () => runs }, 10, (c) => dropped.push(c.metadata.name ?? ""));
    const withSecret = (name: string, secret: string): ComputeEnvironment => ({ ...ce(name), spec: { ...ce(name).spec, credentials: { secretRef: { name: secret } } } } as ComputeEnvironment);
    gone.remember(withSecret("x", "x-creds"));
    gone.remember(withSecret("w", "w-creds"));
    expect(gone.secretNames("ns").sort()).toEqual(["w-creds", "x-creds"]);
    expect(gone.secretNames("elsewhere")).toEqual([]);
    runs[0] = run("a", "x", ended);
    const source = gone.over({ list: () => [], get: () => undefined });
    expect(source.list().map((c) => c.metadata.name)).toEqual(["w"]);
    expect(dropped).toEqual(["x"]);
    expect(gone.secretNames("ns")).toEqual(["w-creds"]);
  });
});
