/**
 * `vmforge logs <run> [-f] [-n namespace]`: prints a Run's log from the cloud, using the
 * credentials of the Run's ComputeEnvironment (read with the caller's kubeconfig), and with -f
 * follows it until the Run has ended and its log is complete (followRunLog, shared with the
 * kubectl plugin).
 */
import { KubeClient } from "../engine/kube.js";
import { createLogger } from "../engine/logger.js";
import { ComputeEnvironmentResource, RunResource } from "../api/types.js";
import type { ComputeEnvironment, Run } from "../api/types.js";
import type { CloudProvider } from "../cloud/provider.js";
import { resolveCredentials } from "../controllers/shared.js";
import { isTerminal, launchedUnder } from "../controllers/run/phases.js";

/** The launcher's last line on either cloud: the pipeline's exit code. */
const EXIT_LINE = /^VMFORGE_EXIT_CODE=\d{1,3}\s*$/;

export interface FollowOptions {
  /** Reads the Run (each round, so its phase is current). */
  getRun: () => Promise<Run>;
  /** Reads the log once: a chunk from the cursor on. The caller picks provider and credentials. */
  read: (run: Run, cursor: string | undefined) => Promise<{ lines: string[]; next?: string }>;
  out: (line: string) => void;
  follow: boolean;
  /** Between polls (default 2 s). */
  pollMs?: number;
  /**
   * Once the Run has ended, how long to keep waiting for more lines when the launcher's exit line
   * has not arrived (the cloud may deliver the last lines late; default 60 s, reset by each line).
   */
  endGraceMs?: number;
  /** Told when -f stops without the exit line (the log may still be incomplete). */
  note?: (message: string) => void;
}

/**
 * Prints a Run's log, and with `follow` keeps printing until the Run has ended and its log is
 * complete: the launcher's exit line has been read (then one more empty poll), or no line came
 * for `endGraceMs` after the end (a Run cancelled or whose machine vanished has no exit line) —
 * then a note says the log may be incomplete. Used by `vmforge logs` and `kubectl vmforge logs`.
 */
export async function followRunLog(o: FollowOptions): Promise<void> {
  const pollMs = o.pollMs ?? 2_000;
  const endGraceMs = o.endGraceMs ?? 60_000;
  let cursor: string | undefined;
  let sawExit = false;
  let quietSince: number | undefined;
  for (;;) {
    const run = await o.getRun();
    let lines = 0;
    for (;;) {
      const chunk = await o.read(run, cursor);
      for (const l of chunk.lines) {
        if (EXIT_LINE.test(l)) sawExit = true;
        o.out(l);
      }
      lines += chunk.lines.length;
      if (chunk.lines.length === 0 || chunk.next === undefined || chunk.next === cursor) {
        if (chunk.next !== undefined) cursor = chunk.next;
        break;
      }
      cursor = chunk.next;
    }
    if (!o.follow) return;
    if (isTerminal(run)) {
      if (lines > 0) quietSince = undefined;
      else if (sawExit) return;
      else {
        quietSince ??= Date.now();
        if (Date.now() - quietSince >= endGraceMs) {
          o.note?.(`the Run ended ${run.status?.phase ?? ""} and no exit line arrived within ${Math.round(endGraceMs / 1000)} s: the log may be incomplete (run the command again later to see lines delivered late)`);
          return;
        }
      }
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export interface LogsOptions {
  run: string;
  namespace: string;
  follow: boolean;
  kubeconfig?: string;
  pollMs?: number;
  endGraceMs?: number;
  out?: (line: string) => void;
  providers: ReadonlyMap<string, CloudProvider>;
}

/** `vmforge logs`: the Run's log with its CE's credentials Secret (or the ambient identity). */
export async function streamRunLogs(o: LogsOptions): Promise<number> {
  const out = o.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const client = KubeClient.fromKubeconfig(o.kubeconfig);
  const logger = createLogger({ level: "error", name: "vmforge-logs" });
  class Stop extends Error {}
  // Resolved once per round (not per chunk): the Run's CE, its provider and credentials.
  let cur: { ce: ComputeEnvironment; provider: CloudProvider; credentials: Awaited<ReturnType<typeof resolveCredentials>> } | undefined;
  try {
    await followRunLog({
      follow: o.follow,
      out,
      note: (m) => console.error(`vmforge: ${m}`),
      ...(o.pollMs !== undefined ? { pollMs: o.pollMs } : {}),
      ...(o.endGraceMs !== undefined ? { endGraceMs: o.endGraceMs } : {}),
      getRun: async () => {
        const run = await client.get<Run>(RunResource, o.namespace, o.run);
        if (!run) {
          console.error(`vmforge: Run ${o.namespace}/${o.run} not found`);
          throw new Stop();
        }
        const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, o.namespace, run.spec.computeEnvironmentRef.name);
        if (!ce) {
          console.error(`vmforge: ComputeEnvironment ${o.namespace}/${run.spec.computeEnvironmentRef.name} not found`);
          throw new Stop();
        }
        const replaced = replacedCeMessage(run, ce);
        if (replaced) {
          console.error(`vmforge: ${replaced}`);
          throw new Stop();
        }
        const provider = o.providers.get(ce.spec.provider);
        if (!provider) {
          console.error(`vmforge: provider ${ce.spec.provider} is not available in this build`);
          throw new Stop();
        }
        cur = { ce, provider, credentials: await resolveCredentials(client, ce) };
        return run;
      },
      read: (run, cursor) => cur!.provider.readRunLog({ ce: cur!.ce, credentials: cur!.credentials, logger }, run, cursor),
    });
    return 0;
  } catch (e) {
    if (e instanceof Stop) return 1;
    throw e;
  }
}

/**
 * When the Run was launched under another ComputeEnvironment than the one that now has its name
 * (that one was removed by force and the name taken again), what to say: its log is in the removed
 * CE's account, region or workspace, which the new one does not name.
 */
export function replacedCeMessage(run: Run, ce: ComputeEnvironment): string | undefined {
  const under = launchedUnder(run);
  if (!under || under === ce.metadata.uid) return undefined;
  return `Run ${run.metadata.name ?? ""} was launched under an earlier ComputeEnvironment ${ce.metadata.name ?? ""} (UID ${under}) that was removed; the one of that name now (UID ${ce.metadata.uid ?? ""}) does not say where that log is`;
}
