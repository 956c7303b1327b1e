// The released operator's providers load their cloud SDK on first use, say what the real
// providers say about themselves, and pass every call through whole (arguments included).
import { describe, expect, it } from "vitest";
import { defaultProviders, LazyProvider } from "../../src/run-operator.js";
import { AwsProvider, START_PROBE_READS_PER_S, startProbeLimitFor } from "../../src/cloud/aws/provider.js";
import { AzureProvider } from "../../src/cloud/azure/provider.js";
import type { CloudProvider, EnvContext } from "../../src/cloud/provider.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";

/** Every method a provider object has (own and inherited), constructor aside. */
function methods(o: object): string[] {
  const out = new Set<string>();
  for (let p = Object.getPrototypeOf(o); p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
    for (const k of Object.getOwnPropertyNames(p)) if (k !== "constructor" && typeof (o as Record<string, unknown>)[k] === "function") out.add(k);
  }
  return [...out].sort();
}

describe("defaultProviders", () => {
  it("wraps each provider with the same name, traits and public methods as the real one", () => {
    const lazy = defaultProviders();
    for (const real of [new AwsProvider(), new AzureProvider()] as CloudProvider[]) {
      const p = lazy.get(real.name);
      expect(p?.name).toBe(real.name);
      expect(Boolean(p?.announcesCloudWrites), `${real.name} announcesCloudWrites`).toBe(Boolean(real.announcesCloudWrites));
      expect(Boolean(p?.reportsPipelineStart), `${real.name} reportsPipelineStart`).toBe(Boolean(real.reportsPipelineStart));
      // before loading too: a deletion after a restart may ask before any call loaded the SDK
      expect(p?.unlistedLaunchMs ?? 0, `${real.name} unlistedLaunchMs`).toBe(real.unlistedLaunchMs ?? 0);
      // every interface method the real provider implements is reachable through the wrapper
      const lazyMethods = new Set(methods(p as object));
      const interfaceMethods = ["observeEnvironment", "provisionEnvironment", "disposeEnvironment", "environmentSuspect", "launchRun", "describeRuns", "terminateRun", "terminateRuns", "readRunLog", "sweepOrphans"];
      for (const m of methods(real).filter((m) => interfaceMethods.includes(m))) expect(lazyMethods.has(m), `${real.name}.${m}`).toBe(true);
    }
    expect([...lazy.keys()].sort()).toEqual(["aws", "azure"]);
  });

  it("passes every argument through, launch hints included, and asks environmentSuspect only of a loaded provider", async () => {
    const calls: unknown[][] = [];
    const fake = {
      name: "fake",
      launchRun: async (...a: unknown[]) => (calls.push(["launchRun", ...a]), { instanceId: "i-1", state: "pending" as const }),
      environmentSuspect: (ce: ComputeEnvironment) => ce.metadata.name === "suspect",
    } as unknown as CloudProvider;
    let loads = 0;
    const lazy = new LazyProvider("fake", async () => (loads++, fake), { reportsPipelineStart: true });
    const ce = { metadata: { name: "suspect" } } as ComputeEnvironment;
    expect(lazy.environmentSuspect(ce)).toBe(false);
    expect(loads).toBe(0);
    const ctx = {} as EnvContext;
    const run = { metadata: { name: "r" } } as Run;
    await lazy.launchRun(ctx, run, { firstAttempt: true });
    expect(calls).toEqual([["launchRun", ctx, run, { firstAttempt: true }]]);
    expect(lazy.environmentSuspect(ce)).toBe(true);
    expect(lazy.reportsPipelineStart).toBe(true);
    expect(loads).toBe(1);
  });

  it("paces the AWS start reads to the operator's poll interval", async () => {
    expect(startProbeLimitFor(undefined)).toBe(100);
    expect(startProbeLimitFor(15_000)).toBe(15 * START_PROBE_READS_PER_S);
    expect(startProbeLimitFor(5_000)).toBe(5 * START_PROBE_READS_PER_S);
    expect(startProbeLimitFor(1_000)).toBe(10); // never below 10 per describe
    for (const [pollIntervalMs, limit] of [[1_000, 10], [15_000, 120], [undefined, 100]] as const) {
      const lazy = defaultProviders(pollIntervalMs === undefined ? {} : { pollIntervalMs }).get("aws") as LazyProvider;
      // the loaded provider (the getter is private to LazyProvider; loading costs no call)
      const real = await (lazy as unknown as { p: Promise<AwsProvider> }).p;
      expect(real.startProbeLimit, `poll ${pollIntervalMs}`).toBe(limit);
    }
    expect(new AwsProvider({ pollIntervalMs: 1_000, startProbeLimit: 300 }).startProbeLimit).toBe(300);
  });

  it("says the loaded provider's listing lag once there is one, the trait's before", async () => {
    const fake = { name: "fake", unlistedLaunchMs: 5_000, launchRun: async () => ({ instanceId: "i-1", state: "pending" as const }) } as unknown as CloudProvider;
    const lazy = new LazyProvider("fake", async () => fake, { unlistedLaunchMs: 120_000 });
    expect(lazy.unlistedLaunchMs).toBe(120_000);
    await lazy.launchRun({} as EnvContext, { metadata: { name: "r" } } as Run);
    expect(lazy.unlistedLaunchMs).toBe(5_000);
    expect(new LazyProvider("none", async () => fake).unlistedLaunchMs).toBe(0);
  });
});
