/**
 * What the rest of the world does while an operator process is suspended (a paused VM, SIGSTOP,
 * a long GC): run with spawnSync from a test, so the test's own process, and the operator in it,
 * cannot run meanwhile. It creates the objects given, hands the Lease to another holder, and
 * returns no sooner than `holdMs` after it started.
 *
 *   tsx while-suspended.ts <kubeconfig> <lease namespace> <lease name> <holdMs> <resource JSON> <object JSON>...
 */
import { KubeClient, type KubeObject, type ResourceType } from "../../src/engine/kube.js";
import { stealLease } from "./lease.js";

async function main(): Promise<void> {
  const started = performance.now();
  const [kubeconfig, ns, leaseName, hold, resourceJson, ...objects] = process.argv.slice(2);
  if (!kubeconfig || !ns || !leaseName || !hold || !resourceJson) throw new Error("usage: while-suspended.ts <kubeconfig> <ns> <lease> <holdMs> <resource> <object>...");
  const client = KubeClient.fromKubeconfig(kubeconfig);
  const resource = JSON.parse(resourceJson) as ResourceType;
  for (const o of objects) await client.create(resource, JSON.parse(o) as KubeObject);
  await stealLease(client, ns, leaseName);
  const left = Number(hold) - (performance.now() - started);
  if (left > 0) await new Promise((r) => setTimeout(r, left));
  process.stdout.write("done\n");
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
  process.exit(1);
});
