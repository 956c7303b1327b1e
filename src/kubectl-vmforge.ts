/**
 * Entry point of the kubectl plugin `kubectl vmforge` (see src/cli/kubectl.ts). plugin/build.sh
 * bundles it into one file and makes a self-contained executable of it with Node 24.
 */
import { pluginMain } from "./cli/kubectl.js";
import { providers } from "./cli.js";

pluginMain(process.argv.slice(2), { providers }).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
