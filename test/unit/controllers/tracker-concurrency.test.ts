// RunTracker polls each account/region concurrently with its own deadline, reads credentials
// through the cache-backed getter (no API read per poll), and keeps nothing for Runs it no
// longer follows.
import { describe, expect, it } from "vitest";
import { ceOfIn } from "../../support/ce-of.js";
import type { ComputeEnvironment, Run } from "../../../src/api/types.js";
import type { KubeClient } from "../../../src/engine/kube.js";
import { createLogger } from "../../../src/engine/logger.js";
import { RunTracker } from "../../../src/controllers/run/tracker.js";
import type { CloudProvider, EnvContext, RunDescription } from "../../../src/cloud/provider.js";
import { SecretReader, type SecretObject } from "../../../src/controllers/shared.js";

const ce = (name: string, region: string): ComputeEnvironment => ({
  metadata: { name, namespace: "ns", uid: `ce-${name}` },
  spec: { provider: "aws", credentials: { secretRef: { name: "creds" } }, aws: { region, workDir: "s3://b/w" } },
} as ComputeEnvironment);
const run = (name: string, ceName: string, phase = "Running"): Run => ({
  metadata: { name, namespace: "ns", uid: `run-${name}` },
  spec: { computeEnvironmentRef: { name: ceName }, pipeline: { repository: "https://example.com/p" } },
  status: { phase },
} as Run);

/** Answers at once, except for the "slow" region, which answers only when its signal aborts. */
class RegionCloud {
  calls: string[] = [];
  aborted: string[] = [];
  async describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription>> {
    const region = ctx.ce.spec.aws?.region ?? "";
    this.calls.push(region);
    if (region === "slow") {
      await new Promise<void>((resolve) => ctx.signal?.addEventListener("abort", () => resolve()));
      this.aborted.push(region);
      throw new Error("aborted");
    }
    return new Map(runs.map((r) => [r.metadata.uid ?? "", { instanceId: `i-${r.metadata.name}`, state: "running" } as RunDescription]));
  }
}

const secret: SecretObject = { metadata: { name: "creds", namespace: "ns" }, data: { accessKeyId: Buffer.from("AKIA").toString("base64") } };

describe("RunTracker polling", () => {
  it("a slow region does not hold back the others, and its call is aborted at its own deadline", async () => {
    const cloud = new RegionCloud();
    const ces = [ce("a", "fast-1"), ce("b", "slow"), ce("c", "fast-2")];
    const runs = [run("a1", "a"), run("b1", "b"), run("c1", "c")];
    const gets: string[] = [];
    const client = { get: async (_rt: unknown, ns: string, name: string) => (gets.push(`${ns}/${name}`), secret) } as unknown as KubeClient;
    const reader = new SecretReader(client, { get: (k) => (k === "ns/creds" ? secret : undefined) });
    const enqueued: string[] = [];
    const t = new RunTracker({
      client, providers: new Map([["aws", cloud as unknown as CloudProvider]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: (k) => enqueued.push(k), pollIntervalMs: 1000,
      secrets: reader.get, observeTimeoutMs: 200,
    });
    const poll = t.pollOnce();
    // the fast regions are recorded while the slow one still waits
    await new Promise((r) => setTimeout(r, 50));
    expect(t.get("run-a1")?.desc?.state).toBe("running");
    expect(t.get("run-c1")?.desc?.state).toBe("running");
    expect(cloud.aborted).toEqual([]);
    await poll;
    expect(cloud.aborted).toEqual(["slow"]);
    expect(t.get("run-b1")).toBeUndefined();
    expect(enqueued.sort()).toEqual(["ns/a1", "ns/c1"]);
    expect(gets).toEqual([]); // credentials came from the cache
    expect(reader.misses).toBe(0);
  });

  it("forgets Runs whose machine can no longer exist", async () => {
    const cloud = new RegionCloud();
    const ces = [ce("a", "r")];
    let runs = [run("x", "a"), run("y", "a")];
    const t = new RunTracker({
      client: {} as KubeClient, providers: new Map([["aws", cloud as unknown as CloudProvider]]), runs: { list: () => runs }, ceOf: ceOfIn(() => ces),
      logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000,
      secrets: async () => secret,
    });
    await t.pollOnce();
    expect(t.get("run-x")).toBeDefined();
    runs = [run("y", "a"), run("x", "a", "Pending")];
    await t.pollOnce();
    expect(t.get("run-x")).toBeUndefined();
    expect(t.get("run-y")).toBeDefined();
    runs = [];
    await t.pollOnce();
    expect(t.get("run-y")).toBeUndefined();
  });

  it("stop() aborts a poll in progress", async () => {
    const cloud = new RegionCloud();
    const t = new RunTracker({
      client: {} as KubeClient, providers: new Map([["aws", cloud as unknown as CloudProvider]]), runs: { list: () => [run("b1", "b")] }, ceOf: ceOfIn(() => [ce("b", "slow")]),
      logger: createLogger({ level: "silent" }), enqueueRun: () => undefined, pollIntervalMs: 1000,
      secrets: async () => secret, observeTimeoutMs: 3_600_000,
    });
    const poll = t.pollOnce();
    await new Promise((r) => setTimeout(r, 20));
    await t.stop(1_000);
    await poll;
    expect(cloud.aborted).toEqual(["slow"]);
  });
});

describe("SecretReader", () => {
  it("answers from the cache, and GETs only what the cache does not hold", async () => {
    const gets: string[] = [];
    const client = { get: async (_rt: unknown, ns: string, name: string) => (gets.push(`${ns}/${name}`), undefined) } as unknown as KubeClient;
    const reader = new SecretReader(client, { get: (k) => (k === "ns/creds" ? secret : undefined) });
    expect(await reader.get("ns", "creds")).toBe(secret);
    expect(await reader.get("ns", "other")).toBeUndefined();
    expect(gets).toEqual(["ns/other"]);
    expect(reader.misses).toBe(1);
  });
});
