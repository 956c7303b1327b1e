/**
 * `vmforge logs <run> [-f] [-n namespace]`: prints a Run's log from the cloud, using the
 * credentials of the Run's ComputeEnvironment (read with the caller's kubeconfig), and with -f
 * follows it until the Run has ended and no more lines come.
 */
import { KubeClient } from "../engine/kube.js";
import { createLogger } from "../engine/logger.js";
import { ComputeEnvironmentResource, RunResource } from "../api/types.js";
import type { ComputeEnvironment, Run } from "../api/types.js";
import type { CloudProvider } from "../cloud/provider.js";
import { resolveCredentials } from "../controllers/shared.js";
import { isTerminal } from "../controllers/run/phases.js";

export interface LogsOptions {
  run: string;
  namespace: string;
  follow: boolean;
  kubeconfig?: string;
  pollMs?: number;
  out?: (line: string) => void;
  providers: ReadonlyMap<string, CloudProvider>;
}

export async function streamRunLogs(o: LogsOptions): Promise<number> {
  const out = o.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const client = KubeClient.fromKubeconfig(o.kubeconfig);
  const logger = createLogger({ level: "error", name: "vmforge-logs" });
  let cursor: string | undefined;
  let emptyAfterEnd = 0;
  for (;;) {
    const run = await client.get<Run>(RunResource, o.namespace, o.run);
    if (!run) {
      console.error(`vmforge: Run ${o.namespace}/${o.run} not found`);
      return 1;
    }
    const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, o.namespace, run.spec.computeEnvironmentRef.name);
    if (!ce) {
      console.error(`vmforge: ComputeEnvironment ${o.namespace}/${run.spec.computeEnvironmentRef.name} not found`);
      return 1;
    }
    const provider = o.providers.get(ce.spec.provider);
    if (!provider) {
      console.error(`vmforge: provider ${ce.spec.provider} is not available in this build`);
      return 1;
    }
    const credentials = await resolveCredentials(client, ce);
    let lines = 0;
    for (;;) {
      const chunk = await provider.readRunLog({ ce, credentials, logger }, run, cursor);
      for (const l of chunk.lines) out(l);
      lines += chunk.lines.length;
      if (chunk.lines.length === 0 || chunk.next === undefined || chunk.next === cursor) {
        if (chunk.next !== undefined) cursor = chunk.next;
        break;
      }
      cursor = chunk.next;
    }
    if (!o.follow) return 0;
    if (isTerminal(run) && lines === 0) {
      // The machine may flush its last lines after the Run ended: look twice more, then stop.
      if (++emptyAfterEnd >= 3) return 0;
    }
    await new Promise((r) => setTimeout(r, o.pollMs ?? 2_000));
  }
}
