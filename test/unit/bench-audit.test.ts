import { describe, expect, it } from "vitest";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { firstStatusDists, firstStatusFromLines, micros, runAudit } from "../../bench/audit.js";

/** One audit event line as kube-apiserver writes it (audit.k8s.io/v1, Metadata level). */
const line = (o: { verb: string; ns?: string; name: string; sub?: string; code?: number; stage?: string; at: string; received?: string }): string => JSON.stringify({
  kind: "Event", apiVersion: "audit.k8s.io/v1", level: "Metadata", auditID: "x", stage: o.stage ?? "ResponseComplete",
  requestURI: `/apis/vmforge.dev/v1alpha1/namespaces/${o.ns ?? "b1"}/runs${o.verb === "create" ? "" : `/${o.name}${o.sub ? `/${o.sub}` : ""}`}`,
  verb: o.verb, user: { username: "admin" }, sourceIPs: ["127.0.0.1"],
  objectRef: { resource: "runs", namespace: o.ns ?? "b1", name: o.name, apiGroup: "vmforge.dev", apiVersion: "v1alpha1", ...(o.sub ? { subresource: o.sub } : {}) },
  responseStatus: { metadata: {}, code: o.code ?? (o.verb === "create" ? 201 : 200) },
  requestReceivedTimestamp: o.received ?? o.at, stageTimestamp: o.at,
});

describe("bench: first status from the kube-apiserver's audit log", () => {
  it("reads RFC 3339 times to the microsecond", () => {
    expect(micros("2026-12-06T01:27:44.095579Z") - micros("2026-12-06T01:27:44.005444Z")).toBe(90_135);
    expect(micros("2026-12-06T01:27:45Z") - micros("2026-12-06T01:27:44.5Z")).toBe(500_000);
    expect(micros("2026-12-06T01:27:44.123456789Z") % 1_000_000).toBe(123_456);
    expect(micros("not a time")).toBeNaN();
    expect(micros("2026-12-06T02:27:44.5+01:00")).toBe(micros("2026-12-06T01:27:44.500000Z"));
  });

  it("takes each Run's create to its first successful status write, in its namespace only", () => {
    const lines = [
      line({ verb: "create", name: "r1", received: "2026-12-06T01:00:00.040000Z", at: "2026-12-06T01:00:00.100000Z" }),
      line({ verb: "create", name: "r2", at: "2026-12-06T01:00:00.200000Z" }),
      line({ verb: "create", name: "r3", at: "2026-12-06T01:00:00.300000Z" }),
      // r1: a refused write (409) first, then the first one that took, then a later one
      line({ verb: "patch", name: "r1", sub: "status", code: 409, at: "2026-12-06T01:00:00.150000Z" }),
      line({ verb: "patch", name: "r1", sub: "status", received: "2026-12-06T01:00:00.330000Z", at: "2026-12-06T01:00:00.350000Z" }),
      line({ verb: "patch", name: "r1", sub: "status", at: "2026-12-06T01:00:02.000000Z" }),
      // r2: a write of the Run itself is not a status; its status write comes from another batch, out of order
      line({ verb: "patch", name: "r2", at: "2026-12-06T01:00:00.250000Z" }),
      line({ verb: "update", name: "r2", sub: "status", at: "2026-12-06T01:00:01.700000Z" }),
      line({ verb: "update", name: "r2", sub: "status", received: "2026-12-06T01:00:00.900000Z", at: "2026-12-06T01:00:01.200000Z" }),
      // r3 never got a status; r4's create is missing (dropped); another namespace's r1 is not ours
      line({ verb: "patch", name: "r4", sub: "status", at: "2026-12-06T01:00:00.400000Z" }),
      line({ verb: "create", ns: "b2", name: "r1", at: "2026-12-06T01:00:00.000000Z" }),
      line({ verb: "patch", ns: "b2", name: "r1", sub: "status", at: "2026-12-06T01:00:09.000000Z" }),
      // a stage other than the completed response, and a line cut short (past its namespace)
      line({ verb: "patch", name: "r3", sub: "status", stage: "ResponseStarted", at: "2026-12-06T01:00:00.310000Z" }),
      line({ verb: "patch", name: "r3", sub: "status", at: "2026-12-06T01:00:00.320000Z" }).slice(0, -30),
      // r5 deleted and created again under its name: its first Run's status write does not count
      line({ verb: "create", name: "r5", at: "2026-12-06T01:00:00.000000Z" }),
      line({ verb: "patch", name: "r5", sub: "status", at: "2026-12-06T01:00:00.100000Z" }),
      line({ verb: "patch", name: "r5", sub: "status", at: "2026-12-06T01:00:05.400000Z" }),
      line({ verb: "create", name: "r5", at: "2026-12-06T01:00:05.000000Z" }),
      // r6's status written before its create's response completed (seen from the operator's
      // watch meanwhile): 0, not its next status write
      line({ verb: "create", name: "r6", received: "2026-12-06T01:00:06.000000Z", at: "2026-12-06T01:00:06.050000Z" }),
      line({ verb: "patch", name: "r6", sub: "status", received: "2026-12-06T01:00:06.030000Z", at: "2026-12-06T01:00:06.040000Z" }),
      line({ verb: "patch", name: "r6", sub: "status", at: "2026-12-06T01:00:14.000000Z" }),
    ];
    expect(lines.at(-8)).toContain('"namespace":"b1"');
    const got = firstStatusFromLines(lines, "b1");
    expect(Object.fromEntries(got)).toEqual({
      r1: { ms: 250, writeMs: 20, createMs: 60 },
      r2: { ms: 1000, writeMs: 300, createMs: 0 },
      r5: { ms: 400, writeMs: 0, createMs: 0 },
      r6: { ms: 0, writeMs: 10, createMs: 50 },
    });
    expect(Object.fromEntries(firstStatusFromLines(lines, "b2"))).toEqual({ r1: { ms: 9000, writeMs: 0, createMs: 0 } });
  });

  it("gives the bench's three distributions", () => {
    const d = firstStatusDists(new Map([["a", { ms: 300, writeMs: 20, createMs: 7 }], ["b", { ms: 900, writeMs: 80, createMs: 9 }]]));
    expect([d.firstStatusServer.max, d.statusWriteServer.max, d.createServer.max, d.firstStatusServer.n]).toEqual([900, 80, 9, 2]);
  });
});

describe("bench: the audit log's reader", () => {
  it("reads the log the kube-apiserver was told to write, keeps the namespace's lines, and says when it cannot read it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "vmforge-bench-audit-test-"));
    try {
      const audit = await runAudit(dir);
      const path = audit.args.find((a) => a.startsWith("--audit-log-path="))?.split("=")[1] ?? "";
      expect(audit.args).toContain(`--audit-policy-file=${join(dir, "audit-policy.yaml")}`);
      expect(await readFile(join(dir, "audit-policy.yaml"), "utf8")).toContain('resources: ["runs/status"]');
      const said: string[] = [];
      // no log yet: said, and nothing found (the goal then misses), not thrown
      expect((await audit.firstStatus("b1", 0, undefined, (s) => said.push(s))).size).toBe(0);
      expect(said.join("\n")).toContain("could not be read");
      await writeFile(path, [
        line({ verb: "create", name: "r1", at: "2026-12-06T01:00:00.100000Z" }),
        line({ verb: "create", ns: "b2", name: "r9", at: "2026-12-06T01:00:00.100000Z" }),
        line({ verb: "patch", name: "r1", sub: "status", at: "2026-12-06T01:00:00.600000Z" }),
      ].join("\n") + "\n");
      const kept = join(dir, "kept", "burst.jsonl");
      const found = await audit.firstStatus("b1", 1, kept);
      expect(Object.fromEntries(found)).toEqual({ r1: { ms: 500, writeMs: 0, createMs: 0 } });
      const keptLines = (await readFile(kept, "utf8")).trim().split("\n");
      expect(keptLines).toHaveLength(2);
      expect(keptLines.every((l) => l.includes('"namespace":"b1"'))).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
