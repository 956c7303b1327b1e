#!/usr/bin/env node
/**
 * vmforge command line:
 *   vmforge operator                      run the operator (same as dist/main.js)
 *   vmforge policy aws                    print the IAM policy the operator needs, by phase
 *   vmforge logs <run> [-f] [-n ns]       print (and follow) a Run's log
 */
import { defaultProviders, runOperator } from "./run-operator.js";
import { streamRunLogs } from "./cli/logs.js";
import { policyCommand } from "./cli/policy.js";

const USAGE = `usage:
  vmforge operator
  vmforge policy aws [--document] [--phase <p>[,<p>...]] [--required] [--work-dir s3://bucket[/path]]
  vmforge policy azure [--phase create|launch|logs|dispose] [--subscription <id>] [--with-additions]
  vmforge logs <run> [-f|--follow] [-n|--namespace <namespace>] [--kubeconfig <path>]`;

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case "operator":
      await runOperator((config, logger) => defaultProviders(config, logger));
      return new Promise<number>(() => undefined); // runs until a signal
    case "policy":
      return policyCommand(rest, { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) });
    case "logs": {
      let run: string | undefined;
      let namespace = process.env.VMFORGE_NAMESPACE || "default";
      let follow = false;
      let kubeconfig = process.env.KUBECONFIG || undefined;
      for (let i = 0; i < rest.length; i++) {
        const a = rest[i];
        if (a === "-f" || a === "--follow") follow = true;
        else if (a === "-n" || a === "--namespace") namespace = rest[++i] ?? "";
        else if (a === "--kubeconfig") kubeconfig = rest[++i];
        else if (a && !a.startsWith("-") && run === undefined) run = a;
        else {
          console.error(`vmforge logs: unexpected argument ${a}\n${USAGE}`);
          return 2;
        }
      }
      if (!run || !namespace) {
        console.error(USAGE);
        return 2;
      }
      // only the Run's cloud is loaded (its SDK), on first use
      return streamRunLogs({ run, namespace, follow, providers: defaultProviders(), ...(kubeconfig ? { kubeconfig } : {}) });
    }
    case "-h":
    case "--help":
    case "help":
      console.log(USAGE);
      return 0;
    default:
      console.error(USAGE);
      return 2;
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(`vmforge: ${e instanceof Error ? e.message : String(e)}`);
      process.exit(1);
    },
  );
}
