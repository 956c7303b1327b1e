/**
 * Where a Run's log lives in CloudWatch Logs and how the operator reads it.
 *
 * The launcher (user data) has the CloudWatch agent ship the launcher's own output and the
 * pipeline's console output, as one file, to ONE stream per Run in the CE's log group: what
 * `vmforge logs` shows. The last line the launcher writes is `VMFORGE_EXIT_CODE=<n>`. As the
 * pipeline may print anything there (a marker line too), the launcher also writes its
 * machine-readable lines, alone, to a file of their own, shipped to the Run's markers stream: the
 * only place the operator reads a Run's start, failed set-up step and exit from. Stream names are
 * deterministic, so the operator never needs logs:DescribeLogStreams (the seed grants only
 * logs:GetLogEvents; the instance role may create and write any stream of the CE's group).
 */
import { GetLogEventsCommand } from "@aws-sdk/client-cloudwatch-logs";
import type { CloudWatchLogsClient } from "@aws-sdk/client-cloudwatch-logs";
import type { ComputeEnvironment, Run } from "../../api/types.js";
import type { RunLogChunk } from "../provider.js";
import { awsErrorCode, mapAwsError } from "./clients.js";

/** Prefix of the launcher's final, machine-readable line. */
export const EXIT_CODE_MARKER = "VMFORGE_EXIT_CODE=";
const EXIT_LINE = /^VMFORGE_EXIT_CODE=(\d{1,3})\s*$/;

/** Log group of a CE: what the environment recorded, else the documented default `/vmforge/<namespace>/<name>`. */
export function logGroupName(ce: ComputeEnvironment): string {
  const recorded = ce.status?.aws?.logGroup;
  if (recorded) return recorded;
  return `/vmforge/${ce.metadata.namespace ?? "default"}/${ce.metadata.name ?? "unnamed"}`;
}

/**
 * Stream of a Run: `<namespace>/<name>/<first 8 chars of the uid>`. CloudWatch stream names may
 * not contain ':' or '*' and are at most 512 characters; Kubernetes names never contain either and
 * are at most 253 characters, so the result is always valid.
 */
export function logStreamName(run: Run): string {
  const uid = (run.metadata.uid ?? "").replace(/-/g, "").slice(0, 8);
  return `${run.metadata.namespace ?? "default"}/${run.metadata.name ?? "unnamed"}/${uid || "nouid"}`;
}

/**
 * Stream of a Run holding the launcher's machine-readable lines only (VMFORGE_PIPELINE_STARTED,
 * VMFORGE_BOOTSTRAP_FAILED=, VMFORGE_EXIT_CODE=), shipped from a file of their own: the operator
 * believes them from here only, as the main stream also carries whatever the pipeline prints.
 * No main stream name has four parts, so it never names another Run's stream.
 */
export function markerLogStreamName(run: Run): string {
  return `${logStreamName(run)}/markers`;
}

/** Second stream of a Run carrying Nextflow's detailed `.nextflow.log`. */
export function nextflowLogStreamName(run: Run): string {
  return `${logStreamName(run)}/nextflow.log`;
}

/** The exit code in a launcher line, or undefined when the line is not the exit line. */
export function parseExitLine(line: string): number | undefined {
  const m = EXIT_LINE.exec(line.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  return n <= 255 ? n : undefined;
}

export interface ReadLogOptions {
  /** Upper bound on GetLogEvents calls per read (each returns up to 1 MB / 10,000 events). */
  maxPages?: number;
  signal?: AbortSignal;
}

/**
 * Reads a log stream forward from a cursor (a `nextForwardToken`), following tokens until
 * CloudWatch hands back the token it was given (no newer events) or `maxPages` is reached.
 * A stream or group that does not exist yet gives an empty chunk without a cursor.
 */
export async function readLogStream(
  logs: CloudWatchLogsClient,
  group: string,
  stream: string,
  from?: string,
  opts: ReadLogOptions = {},
): Promise<RunLogChunk> {
  const maxPages = opts.maxPages ?? 10;
  const lines: string[] = [];
  let token = from;
  for (let page = 0; page < maxPages; page++) {
    let out;
    try {
      out = await logs.send(
        new GetLogEventsCommand({
          logGroupName: group,
          logStreamName: stream,
          startFromHead: true,
          ...(token !== undefined ? { nextToken: token } : {}),
        }),
        opts.signal ? { abortSignal: opts.signal } : {},
      );
    } catch (e) {
      if (awsErrorCode(e) === "ResourceNotFoundException") return { lines };
      throw mapAwsError(e, "logs:GetLogEvents");
    }
    for (const ev of out.events ?? []) {
      if (ev.message === undefined) continue;
      lines.push(ev.message.replace(/\r?\n$/, ""));
    }
    const next = out.nextForwardToken;
    if (next === undefined) break;
    // CloudWatch returns the token it was given when there is nothing newer; an empty page with a
    // new token can happen (gaps in time), so only a repeated token ends the read.
    const repeated = next === token;
    token = next;
    if (repeated) break;
  }
  return token === undefined ? { lines } : { lines, next: token };
}

/** Reads a Run's log (its main stream in its CE's log group). */
export function readRunLog(
  logs: CloudWatchLogsClient,
  ce: ComputeEnvironment,
  run: Run,
  from?: string,
  opts: ReadLogOptions = {},
): Promise<RunLogChunk> {
  return readLogStream(logs, logGroupName(ce), logStreamName(run), from, opts);
}

/** Prefix of the line the launcher writes just before the exit line when a set-up step failed. */
export const BOOTSTRAP_FAILED_MARKER = "VMFORGE_BOOTSTRAP_FAILED=";
export const BOOTSTRAP_LINE = /^VMFORGE_BOOTSTRAP_FAILED=([a-z0-9-]{1,64})\s*$/;

/** The end of a Run as the launcher reported it. */
export interface LauncherOutcome {
  code: number;
  /** The set-up step that failed before the pipeline started (e.g. docker, nextflow-download). */
  bootstrapStep?: string;
}

/**
 * Looks for the exit line (and the failed set-up step, if any) among the newest events of a
 * stream, with one GetLogEvents call read backwards. Undefined when there is no exit line (yet).
 */
export async function findOutcomeInLog(
  logs: CloudWatchLogsClient,
  group: string,
  stream: string,
  opts: { limit?: number; signal?: AbortSignal } = {},
): Promise<LauncherOutcome | undefined> {
  let out;
  try {
    out = await logs.send(
      new GetLogEventsCommand({ logGroupName: group, logStreamName: stream, startFromHead: false, limit: opts.limit ?? 100 }),
      opts.signal ? { abortSignal: opts.signal } : {},
    );
  } catch (e) {
    if (awsErrorCode(e) === "ResourceNotFoundException") return undefined;
    throw mapAwsError(e, "logs:GetLogEvents");
  }
  // An event may carry several lines when the agent batches a multi-line write.
  const lines = (out.events ?? []).flatMap((ev) => (ev.message ?? "").split("\n"));
  for (let i = lines.length - 1; i >= 0; i--) {
    const code = parseExitLine(lines[i] ?? "");
    if (code === undefined) continue;
    for (let j = i - 1; j >= Math.max(0, i - 3); j--) {
      const m = BOOTSTRAP_LINE.exec((lines[j] ?? "").trim());
      if (m) return { code, bootstrapStep: m[1] as string };
    }
    return { code };
  }
  return undefined;
}

