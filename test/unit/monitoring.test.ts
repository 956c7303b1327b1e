// deploy/monitoring: the Grafana dashboard and the example alerts parse, are well formed, and every
// metric they name exists in the operator's registry (engine metrics + the operator's own), with
// the labels they group or filter by.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { EngineMetrics } from "../../src/engine/metrics.js";
import { registerOperatorMetrics } from "../../src/metrics.js";
import { setCloudCallObserver } from "../../src/cloud/call-metrics.js";

const DIR = join(import.meta.dirname, "..", "..", "deploy", "monitoring");

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { uid: string };
  targets?: { expr: string; refId: string }[];
  gridPos: { x: number; y: number; w: number; h: number };
}
const dashboard = JSON.parse(readFileSync(join(DIR, "grafana-dashboard.json"), "utf8")) as { uid: string; title: string; panels: Panel[]; templating: { list: { name: string; type: string }[] } };
const rule = parse(readFileSync(join(DIR, "prometheusrule.yaml"), "utf8")) as {
  apiVersion: string;
  kind: string;
  spec: { groups: { name: string; rules: { alert: string; expr: string; for: string; labels: { severity: string }; annotations: { summary: string } }[] }[] };
};
const alerts = rule.spec.groups.flatMap((g) => g.rules);

/** Metric name -> label names, from a registry with everything the operator registers. */
async function operatorMetrics(): Promise<Map<string, Set<string>>> {
  const engine = new EngineMetrics();
  registerOperatorMetrics(engine.registry, { ces: () => [], runs: () => [] });
  setCloudCallObserver(undefined);
  const out = new Map<string, Set<string>>();
  for (const m of await engine.registry.getMetricsAsJSON()) {
    const labels = new Set<string>(["le", "pod", "namespace", "instance", "job"]);
    for (const v of m.values) for (const k of Object.keys(v.labels)) labels.add(k);
    const own = (engine.registry.getSingleMetric(m.name) as unknown as { labelNames?: string[] } | undefined)?.labelNames ?? [];
    for (const l of own) labels.add(l);
    const names = String(m.type) === "histogram" ? [`${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`] : [m.name];
    for (const n of names) out.set(n, labels);
  }
  return out;
}

/** Every vmforge_ metric an expression names, with the labels it uses in by()/{...} next to it. */
function used(expr: string): { metric: string; labels: string[] }[] {
  const out: { metric: string; labels: string[] }[] = [];
  for (const m of expr.matchAll(/\b(vmforge_[a-z0-9_]+)(\{([^}]*)\})?/g)) {
    const labels = [...(m[3] ?? "").matchAll(/([a-z_]+)\s*(=~|!=|!~|=)/g)].map((x) => x[1]!);
    out.push({ metric: m[1]!, labels });
  }
  return out;
}
const byLabels = (expr: string): string[] => [...expr.matchAll(/\bby \(([^)]*)\)/g)].flatMap((m) => m[1]!.split(",").map((s) => s.trim()));

const exprs = [...dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}"`, expr: t.expr }))), ...alerts.map((a) => ({ where: `alert ${a.alert}`, expr: a.expr }))];

describe("deploy/monitoring", () => {
  it("every metric named exists in the operator's registry, with the labels used", async () => {
    const known = await operatorMetrics();
    expect(known.has("vmforge_cloud_requests_total")).toBe(true);
    const problems: string[] = [];
    let count = 0;
    for (const { where, expr } of exprs) {
      const refs = used(expr);
      if (refs.length === 0) problems.push(`${where}: names no vmforge metric`);
      for (const r of refs) {
        count++;
        const labels = known.get(r.metric);
        if (!labels) {
          problems.push(`${where}: ${r.metric} is not a metric of the operator`);
          continue;
        }
        for (const l of r.labels) if (!labels.has(l)) problems.push(`${where}: ${r.metric} has no label ${l}`);
      }
      const all = new Set(refs.flatMap((r) => [...(known.get(r.metric) ?? [])]));
      for (const l of byLabels(expr)) if (!all.has(l)) problems.push(`${where}: groups by ${l}, which its metrics lack`);
      let depth = 0;
      for (const ch of expr) {
        depth += ch === "(" ? 1 : ch === ")" ? -1 : 0;
        if (depth < 0) break;
      }
      if (depth !== 0) problems.push(`${where}: unbalanced parentheses`);
    }
    expect(problems).toEqual([]);
    expect(count).toBeGreaterThan(20);
  });

  it("the check can fail: an unknown metric or label is reported", async () => {
    const known = await operatorMetrics();
    expect(known.has("vmforge_runs_total")).toBe(false);
    expect(used('sum by (phase) (vmforge_runs{phse="Running"})')).toEqual([{ metric: "vmforge_runs", labels: ["phse"] }]);
    expect(known.get("vmforge_runs")?.has("phse")).toBe(false);
  });

  it("the dashboard is a Grafana dashboard with a Prometheus datasource variable and unique panel ids", () => {
    expect(dashboard.uid).toBe("vmforge-operator");
    expect(dashboard.templating.list).toEqual([expect.objectContaining({ name: "datasource", type: "datasource" })]);
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of dashboard.panels.filter((x) => x.type !== "row")) {
      expect(p.datasource?.uid, p.title).toBe("${datasource}");
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
    }
  });

  it("has the alerts the issue asks for, each with a severity, a duration and a summary", () => {
    expect(rule).toMatchObject({ apiVersion: "monitoring.coreos.com/v1", kind: "PrometheusRule" });
    const names = alerts.map((a) => a.alert);
    for (const a of ["VmforgeComputeEnvironmentStalled", "VmforgeRunStuckLaunching", "VmforgeCloudThrottling"]) expect(names).toContain(a);
    for (const a of alerts) {
      expect(["info", "warning", "critical"], a.alert).toContain(a.labels.severity);
      expect(a.for, a.alert).toMatch(/^\d+[smh]$/);
      expect(a.annotations.summary, a.alert).toBeTruthy();
    }
    expect(alerts.find((a) => a.alert === "VmforgeRunStuckLaunching")!.expr).toContain('vmforge_run_oldest_seconds{phase="Launching"}');
    expect(alerts.find((a) => a.alert === "VmforgeCloudThrottling")!.expr).toContain('outcome="throttled"');
    // A write refused for a newer version (409) is optimistic concurrency doing its job: retried, not a failure.
    expect(alerts.find((a) => a.alert === "VmforgeReconcileErrors")!.expr).toContain('kind!="conflict"');
  });
});
