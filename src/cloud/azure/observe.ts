/**
 * What the Azure provider remembers between polls about the Runs it follows, and the launcher's
 * lines it reads from Log Analytics to learn about them:
 * - whether the launcher said the pipeline started (`VMFORGE_PIPELINE_STARTED`): a Run whose VM
 *   runs is Running only from then on, as on AWS. Once seen, its Run is never asked about again.
 * - since when a Run's VM is known to have ended without an outcome (no uploaded exit status, no
 *   exit line in Log Analytics yet): Log Analytics makes lines queryable only after an ingestion
 *   delay, so the exit line the launcher shipped just before the OS shut down may show up later.
 *   The VM is deleted at once (a stopped VM keeps costing); the Run waits up to the grace window
 *   for the line, then ends without an outcome.
 * Kept in memory: after an operator restart a Run still waiting starts its window again (it waits
 * longer, never shorter), and a Run being set up is asked about again (one query per CE anyway).
 */

/** The launcher's line saying the pipeline is starting (written just before nextflow runs). */
export const PIPELINE_STARTED_MARKER = "VMFORGE_PIPELINE_STARTED";
/** The launcher's last line: `VMFORGE_EXIT_CODE=<n>`. */
export const EXIT_MARKER = "VMFORGE_EXIT_CODE=";
/** Just before the exit line when a set-up step failed before the pipeline started: `VMFORGE_BOOTSTRAP_FAILED=<step>`. */
export const BOOTSTRAP_MARKER = "VMFORGE_BOOTSTRAP_FAILED=";

/**
 * How long a Run whose VM ended without an uploaded exit status waits for its exit line in Log
 * Analytics. Azure documents the average latency of log ingestion as 20 seconds to 3 minutes
 * (data-ingestion-time in the Azure Monitor documentation; older versions said 2 to 5 minutes),
 * with no upper bound; 10 minutes is twice the highest documented typical latency, the same bound
 * the log reader gives a gap in a Run's line sequence (LOG_GAP_GIVE_UP_MS). The VM is already
 * deleted meanwhile, so the wait costs nothing but the Run's end being known later, and only for
 * Runs whose exit status upload failed. Configurable with VMFORGE_AZURE_EXIT_LINE_GRACE.
 */
export const EXIT_LINE_GRACE_MS = 10 * 60_000;

/** What the launcher's lines of one Run say. */
export interface LauncherLines {
  started: boolean;
  exitCode?: number;
  /** The set-up step that failed before the pipeline started (BootstrapFailed). */
  bootstrapStep?: string;
}

/** The launcher stream's name in the log table (the pipeline's output is "pipeline"). */
export const LAUNCHER_STREAM = "launcher";

/**
 * The launcher lines of several Runs, from rows of [RunUid, Seq, Line] of the launcher's own
 * stream (the query keeps to it: a pipeline printing a marker line never counts). Where a marker
 * is there more than once, the one with the highest Seq (the launcher's latest word) counts.
 */
export function launcherLines(rows: ReadonlyArray<ReadonlyArray<unknown>>): Map<string, LauncherLines> {
  const out = new Map<string, LauncherLines>();
  const exitSeq = new Map<string, number>();
  const stepSeq = new Map<string, number>();
  for (const row of rows) {
    const uid = String(row[0] ?? "");
    const seq = Number(row[1]);
    const n = Number.isFinite(seq) ? seq : -1;
    const line = String(row[2] ?? "").trim();
    const got = out.get(uid) ?? { started: false };
    if (line === PIPELINE_STARTED_MARKER) got.started = true;
    const m = /^VMFORGE_EXIT_CODE=(\d{1,3})$/.exec(line);
    if (m && n >= (exitSeq.get(uid) ?? -Infinity)) {
      got.exitCode = Number(m[1]);
      exitSeq.set(uid, n);
    }
    const b = /^VMFORGE_BOOTSTRAP_FAILED=([a-z0-9-]{1,64})$/.exec(line);
    if (b && n >= (stepSeq.get(uid) ?? -Infinity)) {
      got.bootstrapStep = b[1];
      stepSeq.set(uid, n);
    }
    out.set(uid, got);
  }
  return out;
}

interface Ended {
  /** When the VM was first seen ended without an outcome. */
  since: number;
  /** It was seen stopped (the OS shut down), not merely gone. */
  stopped: boolean;
}

/**
 * How often the exit line of a Running Run whose VM still runs is asked for: a VM whose OS
 * shutdown failed keeps running after its pipeline ended, and would otherwise be found only at the
 * Run's timeout. The same pace as on AWS (five minutes), in the CE's one query of the poll.
 */
export const RUNNING_EXIT_PROBE_MS = 5 * 60_000;

/**
 * At most this many Runs are named in one CE's launcher-lines query (the rest are asked at the
 * next polls, the least recently asked first). A Run UID costs about 40 characters of query text,
 * so the query stays near 4 KB, however many Runs a CE has; the same bound as AWS's start probes.
 */
export const LAUNCHER_LINES_QUERY_CAP = 100;

export interface AzureRunWatchOptions {
  /** Pace of the exit-line probe of Running Runs (default RUNNING_EXIT_PROBE_MS). */
  runningProbeMs?: number;
  /** Runs named in one launcher-lines query at most (default LAUNCHER_LINES_QUERY_CAP). */
  queryCap?: number;
}

export class AzureRunWatch {
  private readonly started = new Map<string, number>();
  private readonly ended = new Map<string, Ended & { at: number }>();
  /** When each Run was last named in a launcher-lines query. */
  private readonly asked = new Map<string, number>();
  readonly runningProbeMs: number;
  readonly queryCap: number;

  constructor(
    readonly graceMs = EXIT_LINE_GRACE_MS,
    private readonly clock: () => number = Date.now,
    private readonly forgetAfterMs = 30 * 60_000,
    opts: AzureRunWatchOptions = {},
  ) {
    this.runningProbeMs = opts.runningProbeMs ?? RUNNING_EXIT_PROBE_MS;
    this.queryCap = Math.max(1, Math.floor(opts.queryCap ?? LAUNCHER_LINES_QUERY_CAP));
  }

  /**
   * Whether a Running Run whose VM runs is due for its exit-line probe: once `runningProbeMs` has
   * passed since it was last asked about (or, never asked by this operator, since `since`: when
   * it started, else when it was launched).
   */
  probeDue(uid: string, since: string | undefined): boolean {
    const last = this.asked.get(uid) ?? Date.parse(since ?? "");
    return !Number.isFinite(last) || this.clock() - last >= this.runningProbeMs;
  }

  /**
   * The Runs (of those given, in their order) to name in this poll's query: at most `queryCap`, the
   * least recently asked first (never asked before all), so every Run is asked within a few
   * polls however many wait. Those chosen are recorded as asked now.
   */
  pickForQuery(uids: string[]): Set<string> {
    const now = this.clock();
    const order = uids.map((uid, i) => ({ uid, i, at: this.asked.get(uid) ?? -Infinity }));
    order.sort((a, b) => a.at - b.at || a.i - b.i);
    const chosen = new Set<string>();
    for (const o of order) {
      if (chosen.size >= this.queryCap) break;
      chosen.add(o.uid);
      this.asked.set(o.uid, now);
    }
    return chosen;
  }

  /** Forgets Runs not looked at for a while (deleted, or followed by another operator). */
  prune(now = this.clock()): void {
    for (const [uid, at] of this.started) if (now - at > this.forgetAfterMs) this.started.delete(uid);
    const keep = Math.max(this.forgetAfterMs, 2 * this.graceMs);
    for (const [uid, e] of this.ended) if (now - e.at > keep) this.ended.delete(uid);
    const keepAsked = Math.max(this.forgetAfterMs, 2 * this.runningProbeMs);
    for (const [uid, at] of this.asked) if (now - at > keepAsked) this.asked.delete(uid);
  }

  hasStarted(uid: string): boolean {
    if (!this.started.has(uid)) return false;
    this.started.set(uid, this.clock());
    return true;
  }

  markStarted(uid: string): void {
    this.started.set(uid, this.clock());
  }

  /**
   * The VM of the Run ended without an outcome (so far): when the wait began, whether it was seen
   * stopped, and whether the grace window is over.
   */
  endedWithoutOutcome(uid: string, stopped: boolean): { since: number; stopped: boolean; over: boolean } {
    const now = this.clock();
    const prev = this.ended.get(uid);
    const e = { since: prev?.since ?? now, stopped: stopped || prev?.stopped === true, at: now };
    this.ended.set(uid, e);
    return { since: e.since, stopped: e.stopped, over: now - e.since >= this.graceMs };
  }

  /** The Run's VM runs again: the wait for an ended VM's outcome is off (a later end opens a new window). */
  forgetEnded(uid: string): void {
    this.ended.delete(uid);
  }

  /** Its VM was seen stopped without an outcome (then deleted by the operator). */
  seenStopped(uid: string): boolean {
    return this.ended.get(uid)?.stopped === true;
  }

  /** The Run is Running: its start is recorded on it. */
  forgetStart(uid: string): void {
    this.started.delete(uid);
  }

  /** The Run has its outcome, or is over: nothing more to remember. */
  forget(uid: string): void {
    this.started.delete(uid);
    this.ended.delete(uid);
    this.asked.delete(uid);
  }
}
