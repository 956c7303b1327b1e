import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";

describe("loadConfig", () => {
  it("gives defaults for an empty environment", () => {
    const c = loadConfig({ POD_NAME: "op-0" });
    expect(c).toMatchObject({
      namespaces: [], workers: 4, runWorkers: 64, resyncPeriodMs: 600_000, pollIntervalMs: 15_000, leaderElection: true,
      leaseNamespace: "default", leaseName: "vmforge-operator", identity: "op-0", metricsAddress: ":8080", logLevel: "info",
      leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000,
    });
  });

  it("reads every setting", () => {
    const c = loadConfig({
      VMFORGE_NAMESPACES: "a, b", VMFORGE_WORKERS: "8", VMFORGE_RUN_WORKERS: "96", VMFORGE_RESYNC_PERIOD: "1m", VMFORGE_POLL_INTERVAL: "5s",
      VMFORGE_LEADER_ELECTION: "false", POD_NAMESPACE: "vmforge-system", VMFORGE_METRICS_ADDRESS: "127.0.0.1:9090",
      VMFORGE_LOG_LEVEL: "debug", VMFORGE_SHUTDOWN_TIMEOUT: "45s", VMFORGE_AZURE_EXIT_LINE_GRACE: "3m",
    });
    expect(c).toMatchObject({
      namespaces: ["a", "b"], workers: 8, runWorkers: 96, resyncPeriodMs: 60_000, pollIntervalMs: 5_000, leaderElection: false,
      leaseNamespace: "vmforge-system", metricsAddress: "127.0.0.1:9090", logLevel: "debug", shutdownTimeoutMs: 45_000,
      azureExitLineGraceMs: 180_000,
    });
  });

  it("gives Runs their own worker count, which does not follow VMFORGE_WORKERS", () => {
    expect(loadConfig({ VMFORGE_WORKERS: "8" }).runWorkers).toBe(64);
    expect(loadConfig({ VMFORGE_WORKERS: "8", VMFORGE_RUN_WORKERS: "5" }).runWorkers).toBe(5);
  });

  it("leaves the Azure exit-line grace window to the provider unless set", () => {
    expect(loadConfig({}).azureExitLineGraceMs).toBeUndefined();
    expect(loadConfig({ VMFORGE_AZURE_EXIT_LINE_GRACE: "0s" }).azureExitLineGraceMs).toBe(0);
  });

  it.each([
    [{ VMFORGE_WORKERS: "0" }, "VMFORGE_WORKERS must be between 1 and 64"],
    [{ VMFORGE_WORKERS: "four" }, "VMFORGE_WORKERS must be a whole number"],
    [{ VMFORGE_RUN_WORKERS: "0" }, "VMFORGE_RUN_WORKERS must be between 1 and 256"],
    [{ VMFORGE_RUN_WORKERS: "1000" }, "VMFORGE_RUN_WORKERS must be between 1 and 256"],
    [{ VMFORGE_RESYNC_PERIOD: "soon" }, "VMFORGE_RESYNC_PERIOD must be a duration"],
    [{ VMFORGE_RESYNC_PERIOD: "1s" }, "VMFORGE_RESYNC_PERIOD must be at least 10s"],
    [{ VMFORGE_NAMESPACES: "Bad_NS" }, 'VMFORGE_NAMESPACES: "Bad_NS" is not a valid namespace name'],
    [{ VMFORGE_LEADER_ELECTION: "maybe" }, "VMFORGE_LEADER_ELECTION must be true or false"],
    [{ VMFORGE_LOG_LEVEL: "loud" }, "VMFORGE_LOG_LEVEL must be one of"],
    [{ VMFORGE_METRICS_ADDRESS: "8080" }, "VMFORGE_METRICS_ADDRESS must look like host:port"],
    [{ VMFORGE_LEASE_DURATION: "5s", VMFORGE_LEASE_RENEW_DEADLINE: "10s" }, "lease timings must satisfy"],
    [{ VMFORGE_AZURE_EXIT_LINE_GRACE: "ten minutes" }, "VMFORGE_AZURE_EXIT_LINE_GRACE must be a duration"],
  ])("rejects %j with a message naming the variable", (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(message);
  });
});
