/**
 * Scenario "azure-env" (issue 13, 5): an Azure ComputeEnvironment's time to Ready, as a ratio to
 * the critical path of the operations it needs, under per-type latencies set in the Azure emulator.
 *
 * The emulator finishes an asynchronous create no sooner than its type's latency; synchronous ones
 * answer at once. What depends on what is Azure's, not vmforge's: the table needs its workspace,
 * the data collection rule needs the table and the endpoint, the role assignments need the role
 * definition, the identity and the rule. So the critical path is the longest chain of latencies,
 * and nothing can be Ready sooner. The ratio shows what the operator adds: serialised steps,
 * long-running-operation polling, requeues.
 *
 * The compiled operator runs with its defaults (no LRO poll override), as in production; the
 * emulator asks for polls every `LRO_RETRY_AFTER_S` seconds.
 */
import { ComputeEnvironmentResource } from "../src/api/types.js";
import type { ComputeEnvironment } from "../src/api/types.js";
import { benchCe, startAzureBench, type BenchCluster } from "./azure-setup.js";
import { dist, fmtDist, fmtLoad, load, sec, type Dist, type Load } from "./stats.js";

const LRO_RETRY_AFTER_S = 1;
/** Per resource type, ms (asynchronous creates only; the rest answer at once). */
const LATENCY_MS: Record<string, number> = {
  "Microsoft.OperationalInsights/workspaces": 4_000,
  "Microsoft.OperationalInsights/workspaces/tables": 3_000,
  "Microsoft.Network/virtualNetworks": 2_000,
};
/** Chains of dependent creates (Azure's order); the critical path is the longest. */
const CHAINS: string[][] = [
  ["Microsoft.OperationalInsights/workspaces", "Microsoft.OperationalInsights/workspaces/tables", "Microsoft.Insights/dataCollectionRules", "Microsoft.Authorization/roleAssignments"],
  ["Microsoft.Insights/dataCollectionEndpoints", "Microsoft.Insights/dataCollectionRules", "Microsoft.Authorization/roleAssignments"],
  ["Microsoft.ManagedIdentity/userAssignedIdentities", "Microsoft.Authorization/roleAssignments"],
  ["Microsoft.Authorization/roleDefinitions", "Microsoft.Authorization/roleAssignments"],
  ["Microsoft.Network/virtualNetworks"],
];

export interface AzureEnvResult {
  samples: number;
  latencyMs: Record<string, number>;
  lroRetryAfterS: number;
  criticalPathMs: number;
  toReady: Dist;
  ratioP50: number;
  ratioMax: number;
  load: Load;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function azureEnvScenario(o: BenchCluster & { samples: number }): Promise<AzureEnvResult> {
  const { client, say } = o;
  const criticalPathMs = Math.max(...CHAINS.map((c) => c.reduce((s, t) => s + (LATENCY_MS[t] ?? 0), 0)));
  // The shared Azure set-up (emulator, principals, work storage, Secret, compiled operator at its
  // defaults); the latencies apply from here on, to the CEs only.
  const b = await startAzureBench(o, "azure-env");
  const ns = b.ns;
  try {
    await b.az.control.settings({ lroRetryAfterS: LRO_RETRY_AFTER_S, latencyMs: LATENCY_MS });
    say(`  latencies ${Object.entries(LATENCY_MS).map(([t, ms]) => `${t.split("/").slice(1).join("/")} ${sec(ms)}`).join(", ")}; LRO Retry-After ${LRO_RETRY_AFTER_S} s; critical path ${sec(criticalPathMs)}`);

    const times: number[] = [];
    for (let i = 0; i < o.samples; i++) {
      const name = `env${i}`;
      const t0 = Date.now();
      await client.create(ComputeEnvironmentResource, benchCe(ns, name));
      let readyAt = 0;
      while (Date.now() - t0 < 180_000) {
        const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name);
        const conds = ce?.status?.conditions ?? [];
        if (conds.some((c) => c.type === "Stalled" && c.status === "True")) throw new Error(`${ns}/${name} Stalled: ${conds.find((c) => c.type === "Stalled")?.message ?? ""}`);
        if (conds.some((c) => c.type === "Ready" && c.status === "True")) {
          // (lastTransitionTime has whole seconds only: the time this 50 ms loop saw it is closer)
          readyAt = Date.now();
          break;
        }
        await sleep(50);
      }
      if (!readyAt) throw new Error(`${ns}/${name} not Ready within 180 s`);
      times.push(readyAt - t0);
      say(`  ${name}: Ready after ${sec(readyAt - t0)} (${((readyAt - t0) / criticalPathMs).toFixed(2)}x the critical path); ${fmtLoad(load())}`);
      await client.delete(ComputeEnvironmentResource, ns, name);
      while (await client.get(ComputeEnvironmentResource, ns, name)) await sleep(200);
    }
    const toReady = dist(times);
    say(`  create -> Ready: ${fmtDist(toReady)}`);
    return {
      samples: times.length,
      latencyMs: LATENCY_MS,
      lroRetryAfterS: LRO_RETRY_AFTER_S,
      criticalPathMs,
      toReady,
      ratioP50: toReady.p50 / criticalPathMs,
      ratioMax: toReady.max / criticalPathMs,
      load: load(),
    };
  } finally {
    await b.stop();
  }
}
