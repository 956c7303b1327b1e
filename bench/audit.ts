/**
 * The kube-apiserver's own account of when a Run was created and when it first had a status,
 * from its audit log (microsecond timestamps, taken as each request completed in the server).
 *
 * The bench's watch sees both moments too, but through its own event loop, which in a burst is
 * busy creating the Runs and playing their machines: what it measures then includes the bench's
 * own lag. The audit log holds the two writes as the kube-apiserver completed them: the earliest
 * a reader could see the status, counted from the create's completion (the create's own time is
 * printed apart).
 *
 * The policy logs, at Metadata level (no bodies), only creates of Runs and writes of their status
 * subresource, and everything else not at all; the log is written asynchronously (batch mode), off
 * the request path.
 */
import { createReadStream } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { dist, type Dist } from "./stats.js";

const POLICY = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted", "Panic"]
rules:
  - level: Metadata
    verbs: ["create"]
    resources:
      - group: vmforge.dev
        resources: ["runs"]
  - level: Metadata
    verbs: ["patch", "update"]
    resources:
      - group: vmforge.dev
        resources: ["runs/status"]
  - level: None
`;

export interface RunAudit {
  /** kube-apiserver flags that write the log. */
  args: string[];
  /**
   * Per Run of `namespace` (by name): its first status (see FirstStatus). The log is written
   * asynchronously: read again (for up to 10 s) until `expected` Runs are in it. `keepTo`: a file
   * that gets the namespace's lines, so the figures can be checked after the bench. A log that
   * cannot be read (or kept) is said through `say` and gives what was found (then the goal, which
   * needs every Run, is missed) rather than ending the bench.
   */
  firstStatus(namespace: string, expected: number, keepTo?: string, say?: (s: string) => void): Promise<Map<string, FirstStatus>>;
}

/** Microseconds since the epoch of an RFC 3339 time with up to 9 fractional digits ("...T01:02:03.123456Z"). */
export function micros(t: string): number {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(t);
  if (!m) return NaN;
  const whole = Date.parse(`${m[1]}${m[3]}`);
  const frac = (m[2] ?? "").padEnd(6, "0").slice(0, 6);
  return whole * 1000 + Number(frac);
}

/** A Run's first status as the kube-apiserver saw it (ms). */
export interface FirstStatus {
  /** Its create's completion → its first successful status write's completion. */
  ms: number;
  /** Of that, the status write's own time in the kube-apiserver (received → completed). */
  writeMs: number;
  /** Not in `ms`: the create's own time in the kube-apiserver (received → completed). */
  createMs: number;
}

interface AuditEvent {
  verb?: string;
  stage?: string;
  objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string };
  responseStatus?: { code?: number };
  requestReceivedTimestamp?: string;
  stageTimestamp?: string;
}

/**
 * Create → first status per Run of `namespace`, from audit log lines (JSON, one event per line, not
 * always in time order). A name created more than once goes with its last create, and only status
 * writes received after that create was received count. A status write can complete before the
 * create's own response does (the Run exists once stored, and the operator sees it from its watch
 * meanwhile): that Run's time is 0.
 */
export function firstStatusFromLines(lines: Iterable<string>, namespace: string): Map<string, FirstStatus> {
  const created = new Map<string, { at: number; received: number }>();
  const status = new Map<string, { at: number; received: number }[]>();
  const needle = `"namespace":"${namespace}"`;
  for (const line of lines) {
    if (!line.includes(needle)) continue;
    let e: AuditEvent;
    try {
      e = JSON.parse(line) as AuditEvent;
    } catch {
      continue; // a line cut short by a batch still being written
    }
    const ref = e.objectRef;
    const code = e.responseStatus?.code ?? 0;
    if (e.stage !== "ResponseComplete" || ref?.resource !== "runs" || ref.namespace !== namespace || !ref.name || code < 200 || code >= 300 || !e.stageTimestamp) continue;
    const w = { at: micros(e.stageTimestamp), received: micros(e.requestReceivedTimestamp ?? e.stageTimestamp) };
    if (e.verb === "create" && !ref.subresource) {
      const prev = created.get(ref.name);
      if (prev === undefined || w.at > prev.at) created.set(ref.name, w);
    } else if (ref.subresource === "status" && (e.verb === "patch" || e.verb === "update")) {
      status.set(ref.name, [...(status.get(ref.name) ?? []), w]);
    }
  }
  const out = new Map<string, FirstStatus>();
  for (const [name, c] of created) {
    let first: { at: number; received: number } | undefined;
    for (const s of status.get(name) ?? []) if (s.received >= c.received && (!first || s.at < first.at)) first = s;
    if (first) out.set(name, { ms: Math.max(0, first.at - c.at) / 1000, writeMs: (first.at - first.received) / 1000, createMs: (c.at - c.received) / 1000 });
  }
  return out;
}

/** The bench's figures of a burst's first statuses. */
export function firstStatusDists(found: Map<string, FirstStatus>): { firstStatusServer: Dist; statusWriteServer: Dist; createServer: Dist } {
  const all = [...found.values()];
  return { firstStatusServer: dist(all.map((f) => f.ms)), statusWriteServer: dist(all.map((f) => f.writeMs)), createServer: dist(all.map((f) => f.createMs)) };
}

/** The audit flags for a kube-apiserver, with the policy written to `dir`, and the log's reader. */
export async function runAudit(dir: string): Promise<RunAudit> {
  const policy = join(dir, "audit-policy.yaml");
  const log = join(dir, "audit.log");
  await writeFile(policy, POLICY);
  return {
    // The log is not rotated within a bench (0 would mean lumberjack's 100 MB, not "never"): the
    // reader reads the one file.
    args: [`--audit-policy-file=${policy}`, `--audit-log-path=${log}`, "--audit-log-mode=batch", "--audit-log-maxsize=100000", "--audit-log-format=json"],
    firstStatus: async (namespace, expected, keepTo, say = (s) => process.stderr.write(`${s}\n`)) => {
      // Only the namespace's lines are kept: the log also holds every other scenario's Runs.
      const needle = `"namespace":"${namespace}"`;
      let lines: string[] = [];
      const read = async (): Promise<Map<string, FirstStatus>> => {
        lines = [];
        const rl = createInterface({ input: createReadStream(log), crlfDelay: Infinity });
        for await (const line of rl) if (line.includes(needle)) lines.push(line);
        return firstStatusFromLines(lines, namespace);
      };
      const until = Date.now() + 10_000;
      let found = new Map<string, FirstStatus>();
      try {
        found = await read();
        while (found.size < expected && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 500));
          found = await read();
        }
      } catch (e) {
        say(`  ! the kube-apiserver's audit log ${log} could not be read: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (keepTo) {
        try {
          await mkdir(dirname(keepTo), { recursive: true });
          await writeFile(keepTo, lines.length ? `${lines.join("\n")}\n` : "");
        } catch (e) {
          say(`  ! the audit log's lines could not be kept in ${keepTo}: ${e instanceof Error ? e.message : String(e)}`);
        }
      }
      return found;
    },
  };
}
