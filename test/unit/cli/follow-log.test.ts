// When `logs -f` stops: after the Run ended, once the launcher's exit line has been read; without
// an exit line, after a quiet spell (then it says the log may be incomplete) — and lines that the
// cloud delivers late, after the Run ended, are still printed.
import { describe, expect, it } from "vitest";
import { followRunLog, replacedCeMessage } from "../../../src/cli/logs.js";
import type { ComputeEnvironment, Run } from "../../../src/api/types.js";

function run(phase: string): Run {
  return { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "r", namespace: "n" }, spec: { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "x" } }, status: { phase } } as Run;
}

/** A log that grows by the given batches, one batch per read (undefined: nothing new that read). */
function source(phases: string[], batches: (string[] | undefined)[]) {
  let round = 0;
  let readIdx = 0;
  const all: string[] = [];
  return {
    reads: () => readIdx,
    getRun: () => Promise.resolve(run(phases[Math.min(round++, phases.length - 1)]!)),
    read: (_r: Run, cursor: string | undefined) => {
      const b = batches[readIdx++];
      if (b) all.push(...b);
      const from = cursor ? Number(cursor) : 0;
      const lines = all.slice(from);
      return Promise.resolve(lines.length ? { lines, next: String(all.length) } : { lines: [], ...(cursor ? { next: cursor } : {}) });
    },
  };
}

describe("followRunLog", () => {
  it("without -f prints what there is, once", async () => {
    const s = source(["Running"], [["a", "b"]]);
    const out: string[] = [];
    await followRunLog({ follow: false, out: (l) => out.push(l), getRun: s.getRun, read: s.read, pollMs: 1 });
    expect(out).toEqual(["a", "b"]);
  });

  it("stops once the Run ended and its exit line was read; a late tail is still printed", async () => {
    // the Run has ended when the last lines (and the exit line) are still on their way
    const s = source(["Running", "Succeeded"], [["one"], undefined, undefined, ["two", "VMFORGE_EXIT_CODE=0"], ...Array.from({ length: 50 }, () => undefined)]);
    const out: string[] = [];
    const notes: string[] = [];
    await followRunLog({ follow: true, out: (l) => out.push(l), note: (m) => notes.push(m), getRun: s.getRun, read: s.read, pollMs: 1, endGraceMs: 10_000 });
    expect(out).toEqual(["one", "two", "VMFORGE_EXIT_CODE=0"]);
    expect(notes).toEqual([]);
    // no quiet spell waited out: it stopped at the first empty read after the exit line
    expect(s.reads()).toBe(6);
  });

  it("without an exit line, waits a quiet spell after the end (reset by each line), then says the log may be incomplete", async () => {
    const s = source(["Cancelled"], [["one"], undefined, ["late"], undefined, undefined, undefined]);
    const out: string[] = [];
    const notes: string[] = [];
    const t0 = Date.now();
    await followRunLog({ follow: true, out: (l) => out.push(l), note: (m) => notes.push(m), getRun: s.getRun, read: s.read, pollMs: 10, endGraceMs: 100 });
    expect(out).toEqual(["one", "late"]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(100);
    expect(notes).toHaveLength(1);
    expect(notes[0]).toMatch(/ended Cancelled and no exit line arrived within 0 s: the log may be incomplete/);
  });
});

describe("replacedCeMessage", () => {
  const ce = (uid: string) => ({ metadata: { name: "ce", namespace: "n", uid }, spec: { provider: "aws" } }) as unknown as ComputeEnvironment;
  const under = (uid?: string) => ({ ...run("Running"), metadata: { name: "r", namespace: "n", ...(uid ? { annotations: { "vmforge.dev/compute-environment-uid": uid } } : {}) } }) as Run;
  it("says so when the Run's machine was launched under an earlier CE of the same name, and nothing otherwise", () => {
    expect(replacedCeMessage(under("old"), ce("new"))).toMatch(/launched under an earlier ComputeEnvironment ce \(UID old\) that was removed; the one of that name now \(UID new\)/);
    expect(replacedCeMessage(under("new"), ce("new"))).toBeUndefined();
    expect(replacedCeMessage(under(), ce("new"))).toBeUndefined();
  });
});
