/**
 * `kubectl vmforge`: the kubectl plugin (an executable named kubectl-vmforge on PATH).
 *
 *   kubectl vmforge logs <run> [-f] [--launcher]   the pipeline's console output (with --launcher
 *                                                  also the launcher's own lines), from the cloud
 *   kubectl vmforge cancel <run>                   sets spec.cancel; the operator stops the machine
 *   kubectl vmforge describe <run|ce> <name>        phase, conditions, machine / cloud resources, Events
 *   kubectl vmforge describe <name>                 a Run of that name, else a ComputeEnvironment
 *   kubectl vmforge policy aws|azure [...]          the cloud permissions the operator needs
 *
 * Like kubectl it reads $KUBECONFIG (or ~/.kube/config), and takes -n/--namespace, --context and
 * --kubeconfig; the namespace defaults to the one of the current context, else "default".
 *
 * Logs need the cloud credentials of the Run's ComputeEnvironment. When the caller may read the
 * CE's credentials Secret they are used; when the Secret is forbidden (e.g. a user with the `view`
 * role), the caller's own identity is used instead and a note says so on stderr: on AWS the SDK's
 * default chain (AWS_PROFILE, environment, SSO); on Azure AZURE_TENANT_ID, AZURE_CLIENT_ID and
 * AZURE_CLIENT_SECRET when all are set, else the Azure CLI login (the plugin's Azure provider has
 * ambient identity "caller").
 */
import { KubeConfig } from "@kubernetes/client-node";
import { KubeApiError, KubeClient } from "../engine/kube.js";
import { createLogger } from "../engine/logger.js";
import { ComputeEnvironmentResource, RunResource } from "../api/types.js";
import type { ComputeEnvironment, Condition, Run } from "../api/types.js";
import type { CloudProvider, ResolvedCredentials } from "../cloud/provider.js";
import { resolveCredentials } from "../controllers/shared.js";
import { isTerminal } from "../controllers/run/phases.js";
import { followRunLog, replacedCeMessage } from "./logs.js";
import { policyCommand } from "./policy.js";

export interface PluginIo {
  out: (text: string) => void;
  err: (text: string) => void;
}

export interface PluginOptions {
  io?: PluginIo;
  providers: () => ReadonlyMap<string, CloudProvider>;
  /** Poll interval of `logs -f`. */
  pollMs?: number;
  /** How long `logs -f` waits after the Run ended for an exit line that has not come (followRunLog). */
  endGraceMs?: number;
  env?: NodeJS.ProcessEnv;
}

export const PLUGIN_USAGE = `kubectl vmforge: work with vmforge ComputeEnvironments and Runs

usage:
  kubectl vmforge logs <run> [-f|--follow] [--launcher]
  kubectl vmforge cancel <run>
  kubectl vmforge describe (run|ce) <name>
  kubectl vmforge describe <name>
  kubectl vmforge policy aws [--document] [--phase <p>[,<p>...]] [--required] [--work-dir s3://bucket[/path]] [--with-additions]
  kubectl vmforge policy azure [...]

flags (any command):
  -n, --namespace <ns>   namespace (default: the current context's, else "default")
      --context <name>   kubeconfig context to use
      --kubeconfig <path>
  -h, --help
`;

/** A line the launcher itself writes (its log() prefix, its banner, its final exit line). */
const LAUNCHER_LINE = /^(\[vmforge \S+\] |vmforge: |VMFORGE_EXIT_CODE=\d+\s*$)/;

export function isLauncherLine(line: string): boolean {
  return LAUNCHER_LINE.test(line);
}

class UsageError extends Error {}

interface Parsed {
  positional: string[];
  namespace?: string;
  context?: string;
  kubeconfig?: string;
  follow: boolean;
  launcher: boolean;
  help: boolean;
  /** Arguments passed through untouched (policy's own flags). */
  rest: string[];
}

function parseArgs(argv: readonly string[], passThrough: boolean): Parsed {
  const p: Parsed = { positional: [], follow: false, launcher: false, help: false, rest: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (flag: string): string => {
      const eq = a.indexOf("=");
      if (eq > 0) return a.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined || v === "") throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (a === "-n" || a === "--namespace" || a.startsWith("--namespace=") || /^-n.+/.test(a)) {
      p.namespace = /^-n[^=]/.test(a) ? a.slice(2) : value("--namespace");
    } else if (a === "--context" || a.startsWith("--context=")) p.context = value("--context");
    else if (a === "--kubeconfig" || a.startsWith("--kubeconfig=")) p.kubeconfig = value("--kubeconfig");
    else if (a === "-h" || a === "--help") p.help = true;
    else if (passThrough) p.rest.push(a);
    else if (a === "-f" || a === "--follow") p.follow = true;
    else if (a === "--launcher") p.launcher = true;
    else if (a.startsWith("-")) throw new UsageError(`unknown flag ${a}`);
    else p.positional.push(a);
  }
  return p;
}

/** A client and namespace chosen the way kubectl chooses them. */
export function kubeTarget(o: { kubeconfig?: string; context?: string; namespace?: string }): { client: KubeClient; namespace: string; context: string } {
  const kc = new KubeConfig();
  if (o.kubeconfig) kc.loadFromFile(o.kubeconfig);
  else kc.loadFromDefault();
  if (o.context) {
    if (!kc.getContextObject(o.context)) throw new UsageError(`context "${o.context}" does not exist in the kubeconfig`);
    kc.setCurrentContext(o.context);
  }
  const current = kc.getCurrentContext();
  const namespace = o.namespace ?? kc.getContextObject(current)?.namespace ?? "default";
  return { client: new KubeClient(kc), namespace, context: current };
}

/** Runs the plugin with argv (without the program name); returns the exit code. */
export async function pluginMain(argv: readonly string[], opts: PluginOptions): Promise<number> {
  const io = opts.io ?? { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };
  const [cmd, ...args] = argv;
  try {
    if (cmd === undefined || cmd === "-h" || cmd === "--help" || cmd === "help") {
      (cmd === undefined ? io.err : io.out)(PLUGIN_USAGE);
      return cmd === undefined ? 2 : 0;
    }
    if (cmd === "policy") {
      const p = parseArgs(args, true);
      if (p.help) return policyCommand(["--help"], io);
      return policyCommand(p.rest, io);
    }
    const p = parseArgs(args, false);
    if (p.help) {
      io.out(PLUGIN_USAGE);
      return 0;
    }
    switch (cmd) {
      case "logs":
        return await logsCommand(p, opts, io);
      case "cancel":
        return await cancelCommand(p, io);
      case "describe":
        return await describeCommand(p, io);
      default:
        throw new UsageError(`unknown command ${JSON.stringify(cmd)}`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`error: ${e.message}\n\n${PLUGIN_USAGE}`);
      return 2;
    }
    io.err(`error: ${describeFailure(e)}\n`);
    return 1;
  }
}

function describeFailure(e: unknown): string {
  if (e instanceof KubeApiError) {
    if (e.status === 403) return `forbidden: ${e.message}`;
    return e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

function one(p: Parsed, what: string): string {
  if (p.positional.length !== 1) throw new UsageError(`expected exactly one ${what}, got ${p.positional.length}`);
  return p.positional[0]!;
}

async function getRun(client: KubeClient, namespace: string, name: string): Promise<Run> {
  const run = await client.get<Run>(RunResource, namespace, name);
  if (!run) throw new Error(`runs.vmforge.dev "${name}" not found in namespace "${namespace}"`);
  return run;
}

// ---------------------------------------------------------------------------------------------
// cancel

async function cancelCommand(p: Parsed, io: PluginIo): Promise<number> {
  const name = one(p, "Run name");
  const { client, namespace } = kubeTarget(p);
  const run = await getRun(client, namespace, name);
  if (isTerminal(run)) {
    io.out(`run.vmforge.dev/${name} already ended ${run.status?.phase}; nothing to cancel\n`);
    return 0;
  }
  if (run.spec.cancel === true) {
    io.out(`run.vmforge.dev/${name} cancel already requested\n`);
    return 0;
  }
  await client.patch(RunResource, namespace, name, { spec: { cancel: true } }, "merge");
  io.out(`run.vmforge.dev/${name} cancel requested\n`);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// logs

async function credentialsFor(client: KubeClient, ce: ComputeEnvironment, io: PluginIo): Promise<ResolvedCredentials> {
  try {
    return await resolveCredentials(client, ce);
  } catch (e) {
    if (e instanceof KubeApiError && e.status === 403) {
      const secret = `${ce.metadata.namespace}/${ce.spec.credentials?.secretRef?.name ?? ""}`;
      const own = ce.spec.provider === "aws" ? "your own AWS identity (AWS_PROFILE, environment or SSO)"
        : ce.spec.provider === "azure" ? "your own Azure identity (AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, else your Azure CLI login)"
        : undefined;
      if (!own) throw new Error(`you may not read Secret ${secret}, and reading a Run's log on ${ce.spec.provider} with your own identity is not supported: ask for "get" on that Secret`);
      io.err(`note: you may not read Secret ${secret}; reading the log with ${own}\n`);
      return { source: "ambient", data: {} };
    }
    throw e;
  }
}

async function logsCommand(p: Parsed, opts: PluginOptions, io: PluginIo): Promise<number> {
  const name = one(p, "Run name");
  const { client, namespace } = kubeTarget(p);
  const logger = createLogger({ level: "error", name: "kubectl-vmforge" });
  const providers = opts.providers();
  let credentials: ResolvedCredentials | undefined;
  let cur: { ce: ComputeEnvironment; provider: CloudProvider } | undefined;
  await followRunLog({
    follow: p.follow,
    out: (l) => {
      if (p.launcher || !isLauncherLine(l)) io.out(`${l}\n`);
    },
    note: (m) => io.err(`note: ${m}\n`),
    ...(opts.pollMs !== undefined ? { pollMs: opts.pollMs } : {}),
    ...(opts.endGraceMs !== undefined ? { endGraceMs: opts.endGraceMs } : {}),
    getRun: async () => {
      const run = await getRun(client, namespace, name);
      const ceName = run.spec.computeEnvironmentRef.name;
      const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, namespace, ceName);
      if (!ce) throw new Error(`computeenvironments.vmforge.dev "${ceName}" of Run ${name} not found in namespace "${namespace}"`);
      const replaced = replacedCeMessage(run, ce);
      if (replaced) throw new Error(replaced);
      const provider = providers.get(ce.spec.provider);
      if (!provider) throw new Error(`provider ${ce.spec.provider} is not available in this build of kubectl-vmforge`);
      credentials ??= await credentialsFor(client, ce, io);
      cur = { ce, provider };
      return run;
    },
    read: (run, cursor) => cur!.provider.readRunLog({ ce: cur!.ce, credentials: credentials!, logger }, run, cursor),
  });
  return 0;
}

// ---------------------------------------------------------------------------------------------
// describe

interface EventItem {
  type?: string;
  reason?: string;
  message?: string;
  count?: number;
  lastTimestamp?: string;
  eventTime?: string;
  series?: { count?: number; lastObservedTime?: string };
  metadata?: { creationTimestamp?: string };
}

function eventTime(e: EventItem): string {
  return e.series?.lastObservedTime ?? e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp ?? "";
}

/** "3m", "2h" ... like kubectl's ages. */
export function age(iso: string | undefined, now = Date.now()): string {
  if (!iso) return "<unknown>";
  const s = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function table(rows: string[][], indent = "  "): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => indent + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 2))).join("").trimEnd()).join("\n") + "\n";
}

function field(label: string, value: unknown): string {
  if (value === undefined || value === null || value === "") return "";
  return `${`${label}:`.padEnd(16)}${String(value)}\n`;
}

function conditionsBlock(conditions: Condition[] | undefined): string {
  if (!conditions?.length) return "Conditions:     <none>\n";
  return `Conditions:\n${table([["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], ...conditions.map((c) => [c.type, c.status, c.reason, age(c.lastTransitionTime), c.message ?? ""])])}`;
}

async function eventsBlock(client: KubeClient, namespace: string, uid: string | undefined): Promise<string> {
  if (!uid) return "";
  let items: EventItem[];
  try {
    const body = (await client.request("GET", `/api/v1/namespaces/${encodeURIComponent(namespace)}/events`, { query: new URLSearchParams({ fieldSelector: `involvedObject.uid=${uid}` }) })) as { items?: EventItem[] };
    items = body.items ?? [];
  } catch (e) {
    if (e instanceof KubeApiError && e.status === 403) return "Events:         <not allowed to list Events>\n";
    throw e;
  }
  if (items.length === 0) return "Events:         <none>\n";
  const recent = items.sort((a, b) => eventTime(a).localeCompare(eventTime(b))).slice(-10);
  return `Events:\n${table([["LAST SEEN", "TYPE", "REASON", "COUNT", "MESSAGE"], ...recent.map((e) => [age(eventTime(e)), e.type ?? "", e.reason ?? "", String(e.series?.count ?? e.count ?? 1), e.message ?? ""])])}`;
}

/** Provider-specific status (status.aws, status.azure ...) as indented key: value lines. */
function providerBlock(title: string, obj: Record<string, unknown> | undefined): string {
  if (!obj || Object.keys(obj).length === 0) return "";
  const lines = Object.entries(obj).map(([k, v]) => `  ${`${k}:`.padEnd(22)}${Array.isArray(v) ? v.join(", ") : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}`);
  return `${title}:\n${lines.join("\n")}\n`;
}

export function describeRunText(run: Run): string {
  const s = run.status ?? {};
  const inst = s.instance;
  const machine = inst ? [inst.id, [inst.type, inst.zone, inst.spot ? "spot" : undefined].filter(Boolean).join(", ")].filter(Boolean).join(" ") + (inst.state ? `, state ${inst.state}` : "") : undefined;
  const pipeline = run.spec.pipeline as { repository?: string; revision?: string } | undefined;
  const log = s.log ? [s.log.provider, s.log.group ?? s.log.workspace, s.log.stream ?? s.log.table].filter(Boolean).join(" ") : undefined;
  return (
    field("Name", run.metadata.name) +
    field("Namespace", run.metadata.namespace) +
    field("Kind", "Run") +
    field("Environment", run.spec.computeEnvironmentRef.name) +
    field("Pipeline", pipeline?.repository ? `${pipeline.repository}${pipeline.revision ? ` @ ${pipeline.revision}` : ""}` : undefined) +
    field("Phase", s.phase ? `${s.phase}${s.reason ? ` (${s.reason})` : ""}` : "<not yet seen by the operator>") +
    field("Message", s.message) +
    field("Cancel", run.spec.cancel ? "requested" : undefined) +
    field("Machine", machine) +
    field("Private IP", inst?.privateIp) +
    field("Launched", s.launchedAt) +
    field("Started", s.startTime) +
    field("Completed", s.completionTime) +
    field("Exit code", s.exitCode) +
    field("Log", log) +
    conditionsBlock(s.conditions)
  );
}

export function describeCeText(ce: ComputeEnvironment): string {
  const s = ce.status ?? {};
  const spec = ce.spec as ComputeEnvironment["spec"] & { aws?: { region?: string }; azure?: { location?: string } };
  const resources = s.resources ?? [];
  const providerStatus = (s as Record<string, unknown>)[ce.spec.provider] as Record<string, unknown> | undefined;
  return (
    field("Name", ce.metadata.name) +
    field("Namespace", ce.metadata.namespace) +
    field("Kind", "ComputeEnvironment") +
    field("Provider", ce.spec.provider) +
    field("Region", spec.aws?.region ?? spec.azure?.location) +
    field("Phase", s.phase ?? "<not yet seen by the operator>") +
    field("Active runs", (s as { activeRuns?: number }).activeRuns) +
    field("Deletion", ce.spec.deletionPolicy) +
    conditionsBlock(s.conditions) +
    (resources.length ? `Cloud resources:\n${table([["KIND", "NAME", "ID"], ...resources.map((r) => [r.kind, r.name ?? "", r.id])])}` : "Cloud resources: <none>\n") +
    providerBlock(ce.spec.provider.toUpperCase(), providerStatus)
  );
}

async function describeCommand(p: Parsed, io: PluginIo): Promise<number> {
  const { client, namespace } = kubeTarget(p);
  let kind: "run" | "ce" | undefined;
  let name: string;
  if (p.positional.length === 2) {
    const k = p.positional[0]!.toLowerCase();
    if (["run", "runs", "run.vmforge.dev", "runs.vmforge.dev"].includes(k)) kind = "run";
    else if (["ce", "computeenvironment", "computeenvironments", "computeenvironments.vmforge.dev"].includes(k)) kind = "ce";
    else throw new UsageError(`describe: unknown kind ${JSON.stringify(p.positional[0])}; use run or ce`);
    name = p.positional[1]!;
  } else name = one(p, "name (or kind and name)");

  if (kind !== "ce") {
    const run = await client.get<Run>(RunResource, namespace, name);
    if (run) {
      io.out(describeRunText(run) + (await eventsBlock(client, namespace, run.metadata.uid)));
      return 0;
    }
    if (kind === "run") throw new Error(`runs.vmforge.dev "${name}" not found in namespace "${namespace}"`);
  }
  const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, namespace, name);
  if (!ce) throw new Error(kind === "ce" ? `computeenvironments.vmforge.dev "${name}" not found in namespace "${namespace}"` : `no Run or ComputeEnvironment "${name}" in namespace "${namespace}"`);
  io.out(describeCeText(ce) + (await eventsBlock(client, namespace, ce.metadata.uid)));
  return 0;
}
