// Flux health without a cluster: kstatus, as Flux computes it for custom resources (test/support/
// kstatus.ts), over the status fixtures recorded from the operator, for every phase of both kinds;
// and the Flux examples in deploy/gitops/flux.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { kstatusOf } from "../../support/kstatus.js";
import { EXPECTED, FIXTURES_DIR } from "../../support/status-fixtures.js";

const FLUX = join(import.meta.dirname, "..", "..", "..", "deploy", "gitops", "flux");

describe("kstatus over the recorded objects", () => {
  it("gives Flux's answer for every phase of both kinds", () => {
    const wrong: string[] = [];
    for (const [name, want] of Object.entries(EXPECTED)) {
      const file = join(FIXTURES_DIR, `${name}.json`);
      expect(existsSync(file), name).toBe(true);
      const got = kstatusOf(JSON.parse(readFileSync(file, "utf8")) as Parameters<typeof kstatusOf>[0]);
      if (got.status !== want.flux) wrong.push(`${name}: ${got.status} (${got.message}), expected ${want.flux}`);
    }
    expect(wrong).toEqual([]);
  });

  it("follows kstatus' order: deletion, then generation, then Reconciling/Stalled, else Current", () => {
    const base = { metadata: { generation: 2 }, status: { observedGeneration: 2, conditions: [] as { type: string; status: string }[] } };
    expect(kstatusOf(base).status).toBe("Current");
    expect(kstatusOf({ ...base, metadata: { generation: 3 } }).status).toBe("InProgress");
    expect(kstatusOf({ ...base, status: { observedGeneration: 2, conditions: [{ type: "Stalled", status: "True" }] } }).status).toBe("Failed");
    expect(kstatusOf({ ...base, status: { observedGeneration: 2, conditions: [{ type: "Reconciling", status: "True" }, { type: "Stalled", status: "True" }] } }).status).toBe("InProgress");
    expect(kstatusOf({ metadata: { generation: 2, deletionTimestamp: "2026-01-01T00:00:00Z" }, status: { observedGeneration: 1 } }).status).toBe("Terminating");
  });
});

describe("deploy/gitops/flux", () => {
  it("waits for the operator, then health-checks ComputeEnvironments and Runs", () => {
    const docs = readdirSync(FLUX).flatMap((f) => parseAllDocuments(readFileSync(join(FLUX, f), "utf8")).map((d) => d.toJS() as { apiVersion: string; kind: string; metadata: { name: string }; spec: Record<string, unknown> }));
    const ks = docs.filter((d) => d.kind === "Kustomization");
    for (const k of ks) expect(k.apiVersion).toBe("kustomize.toolkit.fluxcd.io/v1");
    const operator = ks.find((d) => d.metadata.name === "vmforge-operator")!;
    expect(operator.spec).toMatchObject({ path: "./deploy", wait: true });
    const pipelines = ks.find((d) => d.metadata.name === "pipelines")!;
    expect(pipelines.spec.dependsOn).toEqual([{ name: "vmforge-operator" }]);
    const checks = pipelines.spec.healthChecks as { apiVersion: string; kind: string }[];
    expect(checks.map((c) => `${c.apiVersion}/${c.kind}`).sort()).toEqual(["vmforge.dev/v1alpha1/ComputeEnvironment", "vmforge.dev/v1alpha1/Run"]);
  });
});
