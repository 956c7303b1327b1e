/**
 * The operator process: validated configuration, the current kubeconfig (or the in-cluster
 * service account), leader election, health and metrics endpoints, graceful shutdown.
 */
import { KubeClient } from "./engine/kube.js";
import { createLogger, type Logger } from "./engine/logger.js";
import { EngineMetrics } from "./engine/metrics.js";
import { startHealthServer } from "./engine/health.js";
import type { CloudProvider, EnvContext, EnvObservation, LaunchHints, RunDescription, RunLogChunk } from "./cloud/provider.js";
import type { ComputeEnvironment, Run } from "./api/types.js";
import { ConfigError, loadConfig, type OperatorConfig } from "./config.js";
import { Operator } from "./operator.js";
import { requireKubernetesVersion, UnsupportedKubernetesError } from "./kube-version.js";
import { registerOperatorMetrics } from "./metrics.js";
import { UNLISTED_LAUNCH_MS } from "./cloud/aws/consistency.js";

/** Runs the operator until a signal (or lost leadership) ends the process. */
export async function runOperator(
  providersOrFactory: ReadonlyMap<string, CloudProvider> | ((config: OperatorConfig, logger: Logger) => ReadonlyMap<string, CloudProvider>),
  env: NodeJS.ProcessEnv = process.env,
): Promise<void> {
  let config;
  try {
    config = loadConfig(env);
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`vmforge: invalid configuration: ${e.message}`);
      process.exit(2);
    }
    throw e;
  }
  const logger = createLogger({ level: config.logLevel, name: "vmforge" });
  const providers = typeof providersOrFactory === "function" ? providersOrFactory(config, logger) : providersOrFactory;
  const metrics = new EngineMetrics();
  const client = KubeClient.fromKubeconfig(env.KUBECONFIG || undefined, { metrics });
  try {
    await requireKubernetesVersion(client);
  } catch (e) {
    if (e instanceof UnsupportedKubernetesError) {
      console.error(`vmforge: ${e.message}`);
      process.exit(2);
    }
    // Not reachable yet: the watches retry on their own.
    logger.warn({ err: e }, "could not read the API server's version");
  }
  const operator = new Operator({ client, providers, config, logger, metrics });
  registerOperatorMetrics(metrics.registry, { ces: () => operator.ces.list(), runs: () => operator.runs.list() });
  const health = await startHealthServer({
    address: config.metricsAddress, metrics, logger,
    ready: () => operator.isReady(), live: () => true,
  });
  logger.info({ identity: config.identity, metricsPort: health.port, leaderElection: config.leaderElection }, "vmforge operator starting");

  let stopping = false;
  const shutdown = async (signal: string, code: number): Promise<void> => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, deadlineMs: config.shutdownTimeoutMs }, "shutting down");
    // operator.stop() keeps within the deadline by itself; this only guards against a bug. Work
    // still in flight is abandoned safely (cloud writes are idempotent), so a signal still exits 0.
    const timer = setTimeout(() => {
      logger.error("shutdown deadline passed; exiting");
      logger.flush?.();
      process.exit(code);
    }, config.shutdownTimeoutMs);
    timer.unref();
    try {
      // a little of the deadline is left for the health server and the log flush
      await operator.stop(Math.max(0, config.shutdownTimeoutMs - 500));
      await Promise.race([health.close(), new Promise((r) => setTimeout(r, 250).unref())]);
    } finally {
      logger.flush?.();
      process.exit(code);
    }
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM", 0));
  process.on("SIGINT", () => void shutdown("SIGINT", 0));
  process.on("unhandledRejection", (err) => logger.error({ err }, "unhandled rejection"));
  operator.start(() => void shutdown("lost-leadership", 1));
}

/** What a provider says about itself without being loaded (must match the real provider; a unit test checks). */
export type ProviderTraits = Partial<Pick<CloudProvider, "announcesCloudWrites" | "reportsPipelineStart" | "unlistedLaunchMs">>;

/**
 * A provider whose module (and cloud SDK) is loaded on its first use: an operator that serves only
 * AWS never loads the Azure SDKs, and the other way round (each costs tens of MiB of memory).
 * Every member of CloudProvider is passed through, arguments and all; the traits the reconcilers
 * read synchronously are given up front.
 */
export class LazyProvider implements CloudProvider {
  private loaded: Promise<CloudProvider> | undefined;
  private ready: CloudProvider | undefined;
  readonly announcesCloudWrites: boolean;
  readonly reportsPipelineStart: boolean;
  private readonly lag: number;
  constructor(
    readonly name: string,
    private readonly load: () => Promise<CloudProvider>,
    traits: ProviderTraits = {},
  ) {
    this.announcesCloudWrites = traits.announcesCloudWrites ?? false;
    this.reportsPipelineStart = traits.reportsPipelineStart ?? false;
    this.lag = traits.unlistedLaunchMs ?? 0;
  }

  /** The loaded provider's own figure once there is one (it may have been configured otherwise). */
  get unlistedLaunchMs(): number {
    return this.ready?.unlistedLaunchMs ?? this.lag;
  }

  private get p(): Promise<CloudProvider> {
    this.loaded ??= this.load().then((p) => (this.ready = p));
    return this.loaded;
  }

  async observeEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    return (await this.p).observeEnvironment(ctx);
  }
  async provisionEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    return (await this.p).provisionEnvironment(ctx);
  }
  async disposeEnvironment(ctx: EnvContext): Promise<void> {
    return (await this.p).disposeEnvironment(ctx);
  }
  /** Only a loaded provider can have launched anything to doubt. */
  environmentSuspect(ce: ComputeEnvironment): boolean {
    return this.ready?.environmentSuspect?.(ce) ?? false;
  }
  async launchRun(ctx: EnvContext, run: Run, hints?: LaunchHints): Promise<RunDescription> {
    return (await this.p).launchRun(ctx, run, hints);
  }
  async describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription | undefined>> {
    return (await this.p).describeRuns(ctx, runs);
  }
  async terminateRun(ctx: EnvContext, run: Run): Promise<void> {
    return (await this.p).terminateRun(ctx, run);
  }
  async terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
    return (await this.p).terminateRuns(ctx, runs);
  }
  async readRunLog(ctx: EnvContext, run: Run, from?: string): Promise<RunLogChunk> {
    return (await this.p).readRunLog(ctx, run, from);
  }
  async sweepOrphans(ctx: EnvContext, liveRunUids: Set<string>): Promise<string[]> {
    const p = await this.p;
    return p.sweepOrphans ? p.sweepOrphans(ctx, liveRunUids) : [];
  }
}

/** The providers of the released operator, each loaded on first use. */
export function defaultProviders(config: Partial<Pick<OperatorConfig, "azureExitLineGraceMs" | "pollIntervalMs">> = {}, logger?: Logger): Map<string, CloudProvider> {
  const azure = config.azureExitLineGraceMs !== undefined ? { exitLineGraceMs: config.azureExitLineGraceMs } : {};
  // The AWS SDK's HTTP handler warns (e.g. all sockets busy) through this, into the JSON log; the
  // start reads of Runs being set up are paced to the poll interval.
  const aws = {
    ...(logger ? { logger: logger.child({ component: "aws-sdk" }) } : {}),
    ...(config.pollIntervalMs !== undefined ? { pollIntervalMs: config.pollIntervalMs } : {}),
  };
  return new Map<string, CloudProvider>([
    ["aws", new LazyProvider("aws", async () => new (await import("./cloud/aws/provider.js")).AwsProvider(aws), { announcesCloudWrites: true, reportsPipelineStart: true, unlistedLaunchMs: UNLISTED_LAUNCH_MS })],
    ["azure", new LazyProvider("azure", async () => new (await import("./cloud/azure/provider.js")).AzureProvider(azure), { announcesCloudWrites: true, reportsPipelineStart: true })],
  ]);
}
