/**
 * AzureProvider: the CloudProvider for spec.provider "azure". Environment work lives in
 * ./environment.ts, run work in ./runs.ts. Clients come from a cache keyed by a fingerprint of the
 * CE's credentials and subscription, so a rotated Secret is used at the next reconcile.
 */
import type { Run } from "../../api/types.js";
import { CloudError, settleAll, type CloudProvider, type EnvContext, type EnvObservation, type LaunchHints, type RunDescription, type RunLogChunk } from "../provider.js";
import { AzureClientCache, createAzureClients, endpointsFromEnv, parseAzureCredentials, type AzureClients, type AzureEndpoints, type AzureIdentity } from "./clients.js";
import { disposeAzureEnvironment, observeAzureEnvironment, provisionAzureEnvironment, subscriptionOf } from "./environment.js";
import { AzureRunWatch, EXIT_LINE_GRACE_MS } from "./observe.js";
import { describeRuns, launchRun, confirmUnplaced, readRunLog, sweepOrphans, terminateRun, terminateRuns } from "./runs.js";

export interface AzureProviderOptions {
  /** Endpoints, CA and ambient identity choice (default: from the operator's environment). */
  endpoints?: AzureEndpoints;
  /** Builds the clients (unit tests hand in fakes). */
  clientFactory?: (id: AzureIdentity, subscriptionId: string, ep: AzureEndpoints) => AzureClients;
  /**
   * How long a Run whose VM ended without an uploaded exit status waits for its exit line in Log
   * Analytics before it ends without an outcome (default EXIT_LINE_GRACE_MS; the operator's
   * VMFORGE_AZURE_EXIT_LINE_GRACE).
   */
  exitLineGraceMs?: number;
  /**
   * How often the exit line of a Running Run whose VM still runs is asked for (default
   * RUNNING_EXIT_PROBE_MS, five minutes; a VM whose OS shutdown failed keeps running).
   */
  runningExitProbeMs?: number;
}

export class AzureProvider implements CloudProvider {
  readonly name = "azure";
  /** provisionEnvironment reads first and calls ctx.beforeCloudWrite before its first write. */
  readonly announcesCloudWrites = true;
  /** The launcher ships VMFORGE_PIPELINE_STARTED to Log Analytics; describeRuns asks for it (one query per CE per poll). */
  readonly reportsPipelineStart = true;
  private readonly endpoints: AzureEndpoints;
  /** Runs seen starting their pipeline, and Runs whose ended VM's exit line is awaited. */
  private readonly watch: AzureRunWatch;
  private readonly cache: AzureClientCache;

  constructor(opts: AzureProviderOptions = {}) {
    this.endpoints = opts.endpoints ?? endpointsFromEnv();
    this.cache = new AzureClientCache(opts.clientFactory ?? createAzureClients);
    this.watch = new AzureRunWatch(opts.exitLineGraceMs ?? EXIT_LINE_GRACE_MS, Date.now, undefined, opts.runningExitProbeMs !== undefined ? { runningProbeMs: opts.runningExitProbeMs } : {});
  }

  /**
   * The clients for a CE. Throws Terminal for a bad Secret or a missing subscription.
   *
   * A CE's resources stay in the subscription they were made in (status.azure.subscriptionId):
   * following, terminating, sweeping and disposing use that one even when the spec or the Secret
   * now name another (or none), so nothing in the old subscription is lost track of. Converging
   * and launching (`converge`) refuse such a move, naming both subscriptions.
   */
  clientsFor(ctx: EnvContext, converge = false): AzureClients {
    const id = parseAzureCredentials(ctx.credentials, this.endpoints);
    const pinned = id.kind === "caller" ? undefined : ctx.ce.status?.azure?.subscriptionId?.toLowerCase();
    let sub: string;
    try {
      sub = subscriptionOf(ctx.ce, id);
    } catch (e) {
      if (converge || !pinned) throw e;
      sub = pinned;
    }
    if (pinned && sub !== pinned) {
      if (converge) {
        throw CloudError.terminal(
          "SubscriptionChanged",
          `this ComputeEnvironment's resources are in subscription ${pinned}, but spec.azure.subscriptionId or ${id.label} now names ${sub}; a ComputeEnvironment does not move between subscriptions: name ${pinned} again, or create a new ComputeEnvironment for ${sub}`,
        );
      }
      sub = pinned;
    }
    try {
      return this.cache.get(id, sub, this.endpoints);
    } catch (e) {
      // e.g. an authority host that is not https: the operator's configuration, not the CE's.
      throw CloudError.terminal("InvalidConfiguration", `cannot set up Azure clients for ${id.label}: ${(e as Error).message}`, e);
    }
  }

  async observeEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    return observeAzureEnvironment(this.clientsFor(ctx, true), ctx);
  }

  async provisionEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    return provisionAzureEnvironment(this.clientsFor(ctx, true), ctx);
  }

  async disposeEnvironment(ctx: EnvContext): Promise<void> {
    // A Terminal failure here (credentials, permissions) is reported by the reconciler with how to unblock.
    return disposeAzureEnvironment(this.clientsFor(ctx), ctx);
  }

  async launchRun(ctx: EnvContext, run: Run, hints?: LaunchHints): Promise<RunDescription> {
    // The Platform token reaches userData only when the CE opted in (launcher.ts decides; never logged).
    return launchRun(this.clientsFor(ctx, true), ctx, run, hints);
  }

  /**
   * The run tracker hands in the Runs of every CE of one subscription that shares these
   * credentials: one VM list of the subscription for them all. Runs are still split by the
   * subscription their CE resolves to, so a batch never reads another subscription's list.
   */
  async describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription | undefined>> {
    // The clients of each CE once (credentials parsed, cache looked up), not once per Run.
    const byCe = new Map<string, { ce: EnvContext["ce"]; runs: Run[] }>();
    for (const run of runs) {
      const ce = ctx.runCe?.(run) ?? ctx.ce;
      const key = ce.metadata.uid ?? `${ce.metadata.namespace}/${ce.metadata.name}`;
      const g = byCe.get(key) ?? { ce, runs: [] as Run[] };
      byCe.set(key, g);
      g.runs.push(run);
    }
    const bySub = new Map<string, { c: AzureClients; runs: Run[] }>();
    for (const { ce, runs: ceRuns } of byCe.values()) {
      const c = this.clientsFor({ ...ctx, ce });
      const g = bySub.get(c.subscriptionId) ?? { c, runs: [] as Run[] };
      bySub.set(c.subscriptionId, g);
      g.runs.push(...ceRuns);
    }
    const out = new Map<string, RunDescription | undefined>();
    for (const m of await settleAll([...bySub.values()].map((g) => describeRuns(g.c, ctx, g.runs, this.watch)))) for (const [k, v] of m) out.set(k, v);
    return out;
  }

  async terminateRun(ctx: EnvContext, run: Run): Promise<void> {
    await terminateRun(this.clientsFor(ctx), ctx, run);
  }

  async confirmUnplaced(ctx: EnvContext, run: Run): Promise<boolean> {
    return confirmUnplaced(this.clientsFor(ctx), ctx, run);
  }

  async terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
    return terminateRuns(this.clientsFor(ctx), ctx, runs);
  }

  async readRunLog(ctx: EnvContext, run: Run, from?: string): Promise<RunLogChunk> {
    return readRunLog(this.clientsFor(ctx), ctx, run, from);
  }

  async sweepOrphans(ctx: EnvContext, liveRunUids: Set<string>): Promise<string[]> {
    return sweepOrphans(this.clientsFor(ctx), ctx, liveRunUids);
  }
}
