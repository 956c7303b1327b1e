// Argo CD health without a cluster: the status fixtures recorded from the operator
// (test/integration/gitops-health.test.ts) replayed through the shipped Lua scripts on gopher-lua
// (Argo CD's Lua 5.1); the fixtures' conditions checked against the operator's own kstatus helper;
// the argocd-cm file.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { kstatus } from "../../../src/controllers/shared.js";
import { argoHealth, toLua } from "../../harness/argocd-lua.js";
import { EXPECTED, FIXTURES_DIR, LUA } from "../../support/status-fixtures.js";

const ROOT = join(import.meta.dirname, "..", "..", "..");
const GITOPS = join(ROOT, "deploy", "gitops");
const TIMEOUT = 900_000; // the first call builds gopher-lua

interface Cond {
  type: string;
  status: string;
  reason: string;
  message?: string;
  observedGeneration?: number;
}
interface Fixture {
  kind: "ComputeEnvironment" | "Run";
  metadata: { name: string; generation?: number; deletionTimestamp?: string };
  status?: { phase?: string; observedGeneration?: number; conditions?: Cond[]; reason?: string; exitCode?: number };
}

const fixtures = new Map<string, Fixture>(
  Object.keys(EXPECTED)
    .filter((n) => existsSync(join(FIXTURES_DIR, `${n}.json`)))
    .map((n) => [n, JSON.parse(readFileSync(join(FIXTURES_DIR, `${n}.json`), "utf8")) as Fixture]),
);
const cond = (f: Fixture, type: string): Cond | undefined => f.status?.conditions?.find((c) => c.type === type);

describe("status fixtures", () => {
  it("exist for every phase of both kinds, and nothing else is in the folder", () => {
    expect([...fixtures.keys()].sort()).toEqual(Object.keys(EXPECTED).sort());
    expect(readdirSync(FIXTURES_DIR).sort()).toEqual(Object.keys(EXPECTED).map((n) => `${n}.json`).sort());
    const runPhases = new Set([...fixtures.values()].filter((f) => f.kind === "Run").map((f) => f.status?.phase));
    for (const p of ["Pending", "Launching", "Running", "Succeeded", "Failed", "Cancelled"]) expect(runPhases, p).toContain(p);
    const cePhases = new Set([...fixtures.values()].filter((f) => f.kind === "ComputeEnvironment").map((f) => f.status?.phase));
    for (const p of ["Provisioning", "Ready", "Failed", "Deleting"]) expect(cePhases, p).toContain(p);
  });

  it("carry the kstatus trio exactly as the operator's kstatus() helper writes it", () => {
    const states: [string, "ready" | "reconciling" | "stalled"][] = [
      ["ce-ready", "ready"],
      ["ce-reconciling", "reconciling"],
      ["ce-stalled", "stalled"],
      ["ce-deleting", "reconciling"],
    ];
    for (const [name, state] of states) {
      const f = fixtures.get(name)!;
      const own = cond(f, state === "ready" ? "Ready" : state === "stalled" ? "Stalled" : "Reconciling")!;
      const made = kstatus(undefined, f.metadata.generation, state, own.reason, own.message ?? "");
      for (const c of made) {
        const got = cond(f, c.type);
        expect({ name, type: c.type, status: got?.status, reason: got?.reason, observedGeneration: got?.observedGeneration }).toEqual({
          name,
          type: c.type,
          status: c.status,
          reason: c.reason,
          observedGeneration: c.observedGeneration,
        });
      }
    }
  });
});

describe("Argo CD health (Lua on gopher-lua) over the fixtures", () => {
  it(
    "give the expected answer for every fixture",
    async () => {
      const wrong: string[] = [];
      for (const [name, f] of fixtures) {
        const want = EXPECTED[name]!;
        const argo = await argoHealth(LUA[f.kind], f);
        if (argo.status !== want.argo) wrong.push(`${name}: Argo CD ${argo.status} (${argo.message}), expected ${want.argo}`);
        if (argo.message === "" || argo.message === "nil") wrong.push(`${name}: Argo CD gave no message`);
      }
      expect(wrong).toEqual([]);
    },
    TIMEOUT,
  );

  it(
    "say why: the Stalled reason of a CE, the reason and exit code of a failed Run",
    async () => {
      const stalled = fixtures.get("ce-stalled")!;
      expect((await argoHealth(LUA.ComputeEnvironment, stalled)).message).toBe(`${cond(stalled, "Stalled")!.reason}: ${cond(stalled, "Stalled")!.message}`);
      const failed = fixtures.get("run-failed")!;
      const msg = (await argoHealth(LUA.Run, failed)).message;
      expect(msg).toContain(`Failed (${failed.status!.reason})`);
      expect(msg).toContain("exit code 3");
    },
    TIMEOUT,
  );

  it(
    "never fail on partial objects (no conditions, no message, no generation, odd characters)",
    async () => {
      const partial = [
        { kind: "Run", metadata: { name: "a" } },
        { kind: "Run", metadata: { name: "a" }, status: {} },
        { kind: "Run", metadata: { name: "a" }, status: { phase: "Running", conditions: [{ type: "Stalled", status: "True", reason: "X" }] } },
        { kind: "Run", metadata: { name: "a", deletionTimestamp: "2026-01-01T00:00:00Z" }, status: { phase: "Launching" } },
        { kind: "ComputeEnvironment", metadata: { name: "a" }, status: { conditions: [] } },
        { kind: "ComputeEnvironment", metadata: { name: "a", generation: 3 }, status: { observedGeneration: 3, conditions: [{ type: "Ready", status: "Unknown", reason: "Odd", message: "ünïcode \"quotes\" \\ back\nslash" }] } },
        { kind: "ComputeEnvironment", metadata: { name: "a", deletionTimestamp: "2026-01-01T00:00:00Z" }, status: { conditions: [{ type: "Stalled", status: "True", reason: "AccessDenied" }] } },
      ] as const;
      const got = [];
      for (const o of partial) got.push((await argoHealth(LUA[o.kind], o)).status);
      expect(got).toEqual(["Progressing", "Progressing", "Degraded", "Progressing", "Progressing", "Progressing", "Degraded"]);
    },
    TIMEOUT,
  );

  it("toLua maps JSON as Argo CD does (arrays 1-based, nulls absent, strings escaped)", () => {
    expect(toLua({ a: [1, "x"], b: null, c: true })).toBe('{["a"] = {1, "x"}, ["c"] = true}');
    expect(toLua('é"\\')).toBe('"\\195\\169\\"\\\\"');
  });
});

describe("deploy/gitops", () => {
  it("argocd-cm.yaml carries exactly the two health scripts under Argo CD's key names", () => {
    const cm = parse(readFileSync(join(GITOPS, "argocd", "argocd-cm.yaml"), "utf8")) as { kind: string; metadata: { name: string }; data: Record<string, string> };
    expect(cm.kind).toBe("ConfigMap");
    expect(cm.metadata.name).toBe("argocd-cm");
    expect(cm.data).toEqual({
      "resource.customizations.health.vmforge.dev_ComputeEnvironment": readFileSync(LUA.ComputeEnvironment, "utf8"),
      "resource.customizations.health.vmforge.dev_Run": readFileSync(LUA.Run, "utf8"),
    });
  });
});
