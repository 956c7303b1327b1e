/**
 * Entry point of the kubectl plugin `kubectl vmforge` (see src/cli/kubectl.ts). plugin/build.sh
 * bundles it into one file and makes a self-contained executable of it with Node 24.
 */
import { pluginMain } from "./cli/kubectl.js";
import { AwsProvider } from "./cloud/aws/provider.js";
import { AzureProvider } from "./cloud/azure/provider.js";
import { endpointsFromEnv } from "./cloud/azure/clients.js";
import type { CloudProvider } from "./cloud/provider.js";

// Without a readable Secret the user's own identity reads the log (on Azure: ambient "caller").
const providers = (): Map<string, CloudProvider> =>
  new Map<string, CloudProvider>([["aws", new AwsProvider()], ["azure", new AzureProvider({ endpoints: { ...endpointsFromEnv(), ambient: "caller" } })]]);

pluginMain(process.argv.slice(2), { providers }).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
