/**
 * The launcher core every cloud shares (core.sh, mirrored into core-script.ts so the compiled
 * operator needs no file next to it) and how a launcher is rendered: the core, the cloud's part
 * (its hook functions, see the top of core.sh) at the cloud marker, and the per-Run settings at
 * the settings marker. Every value from a spec goes through {@link shellQuote}, so no spec value
 * is ever parsed as shell code. No cloud SDK is imported here.
 */
import type { ComputeEnvironment, Run } from "../../api/types.js";
import { CloudError } from "../provider.js";
import { LAUNCHER_CORE } from "./core-script.js";

/** The template lines the settings and the cloud part replace (each a line of its own, exactly once). */
const SETTINGS_MARKER = "\n#@@VMFORGE_SETTINGS@@\n";
const CLOUD_MARKER = "\n#@@VMFORGE_CLOUD@@\n";

/**
 * Quotes a value for bash: the result is always ONE word with exactly the given text, whatever
 * it contains (quotes, `$()`, backticks, newlines, globs). NUL cannot be represented in a bash
 * string, so it is refused.
 */
export function shellQuote(value: string): string {
  if (value.includes("\0")) {
    throw CloudError.terminal("InvalidValue", "a value for the launcher contains a NUL character");
  }
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** A Groovy (Nextflow config) single-quoted string literal. */
export function groovyString(value: string): string {
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'").replace(/\n/g, "\\n").replace(/\r/g, "\\r")}'`;
}

/**
 * Nextflow run name for a Run: spec.pipeline.runName, else one derived from the Run's name that
 * matches Nextflow's rule (lowercase letter first; letters, digits, single '-' or '_'; <= 80).
 */
export function nextflowRunName(run: Run): string {
  const given = run.spec.pipeline.runName;
  if (given) return given;
  let s = (run.metadata.name ?? "run")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "");
  if (!/^[a-z]/.test(s)) s = `run-${s}`;
  return s.slice(0, 80).replace(/[-_]+$/g, "");
}

/** The argument vector after `nextflow`, for the Run's work directory. */
export function nextflowArgsFor(run: Run, workDir: string): string[] {
  const p = run.spec.pipeline;
  const args = ["run", p.repository];
  if (p.revision) args.push("-r", p.revision);
  if (p.profiles && p.profiles.length > 0) args.push("-profile", p.profiles.join(","));
  args.push("-params-file", "params.json", "-work-dir", workDir);
  // With resumeFrom the launcher adds `-resume <that Run's session>` once it has read it.
  if (p.resume && !p.resumeFrom) args.push("-resume");
  args.push("-name", nextflowRunName(run), "-c", "nextflow.config");
  return args;
}

/** How the Platform token reaches the machine, as the core's settings name it. */
export interface LauncherToken {
  /** none, user-data (inline, opted in), or a source the cloud part reads (ssm, secretsmanager, keyvault). */
  source: string;
  /** What the cloud part reads (ARN, secret URI); empty for none and user-data. */
  ref?: string;
  /** The token itself, for user-data only. */
  inline?: string;
}

/** What the core needs from the cloud about a Run (the rest it takes from the CE and the Run). */
export interface CoreInput {
  ce: ComputeEnvironment;
  run: Run;
  /** Where nextflow.log, launcher.log and exit-status go (a folder URI the cloud part uploads to). */
  artifactsUri: string;
  /** The Run's work directory (Nextflow's resume cache lives there). */
  workDir: string;
  /** Where this Run's Nextflow session id is uploaded; and where an earlier Run's is, by Run name. */
  sessionUri: (runName: string) => string;
  /** The vmforge part of nextflow.config (the executor block is added on the machine). */
  nextflowConfigBase: string;
  token: LauncherToken;
  /** vCPUs and memory of the machine when known; else measured on the machine. */
  resources?: { vcpus?: number | undefined; memoryMiB?: number | undefined } | undefined;
}

function positiveInt(n: number | undefined, what: string): string {
  if (n === undefined) return "";
  if (!Number.isInteger(n) || n <= 0) throw CloudError.terminal("InvalidValue", `${what} must be a positive integer, got ${n}`);
  return String(n);
}

/** The core's settings, in order (the cloud's own follow them). */
export function coreSettings(i: CoreInput): Array<[string, string]> {
  const { ce, run } = i;
  const uid = run.metadata.uid;
  if (!uid) throw CloudError.terminal("InvalidRun", "the Run has no UID yet");
  const p = run.spec.pipeline;
  return [
    ["VMF_RUN_UID", uid],
    ["VMF_RUN_NAMESPACE", run.metadata.namespace ?? ""],
    ["VMF_RUN_NAME", run.metadata.name ?? ""],
    ["VMF_ARTIFACTS_URI", i.artifactsUri],
    ["VMF_NXF_VERSION", p.nextflowVersion ?? ""],
    ["VMF_CLOUDCACHE_PATH", i.workDir],
    ["VMF_SESSION_URI", i.sessionUri(run.metadata.name ?? "")],
    ["VMF_RESUME_FROM_NAME", p.resumeFrom ?? ""],
    ["VMF_RESUME_FROM_URI", p.resumeFrom ? i.sessionUri(p.resumeFrom) : ""],
    ["VMF_CPUS", positiveInt(i.resources?.vcpus, "vcpus")],
    ["VMF_MEMORY_MIB", positiveInt(i.resources?.memoryMiB, "memoryMiB")],
    ["VMF_NXF_CONFIG_BASE", i.nextflowConfigBase],
    ["VMF_CE_NXF_CONFIG", ce.spec.nextflowConfig ?? ""],
    ["VMF_RUN_NXF_CONFIG", p.config ?? ""],
    ["VMF_PARAMS_JSON", JSON.stringify(p.params ?? {}, null, 2)],
    ["VMF_PRE_RUN", ce.spec.preRunScript ?? ""],
    ["VMF_POST_RUN", ce.spec.postRunScript ?? ""],
    ["VMF_TOKEN_SOURCE", i.token.source],
    ["VMF_TOKEN_REF", i.token.ref ?? ""],
    ["VMF_TOKEN_INLINE", i.token.inline ?? ""],
  ];
}

function replaceMarker(template: string, marker: string, text: string, what: string): string {
  const idx = template.indexOf(marker);
  if (idx < 0 || template.indexOf(marker, idx + 1) >= 0) {
    throw new Error(`the launcher core must contain its ${what} marker line exactly once`);
  }
  return template.slice(0, idx + 1) + text + template.slice(idx + marker.length - 1);
}

/**
 * The launcher of a Run: the core with the cloud's part and the settings (each value
 * shell-quoted), and the nextflow argument vector.
 */
export function renderLauncher(cloudPart: string, settings: Array<[string, string]>, nxfArgs: string[]): string {
  const lines = [
    "# ---- settings rendered by the vmforge operator (literal values: nothing in them expands) ----",
    "# shellcheck disable=SC2016",
    "{",
    ...settings.map(([k, v]) => `${k}=${shellQuote(v)}`),
    `VMF_NXF_ARGS=(${nxfArgs.map(shellQuote).join(" ")})`,
    "}",
    "# ---- end of settings ----",
  ];
  const withCloud = replaceMarker(LAUNCHER_CORE, CLOUD_MARKER, cloudPart.replace(/\n+$/, ""), "cloud");
  return replaceMarker(withCloud, SETTINGS_MARKER, lines.join("\n"), "settings");
}

/**
 * The uploaded exit status: the exit code on the first line, and `bootstrap-failed=<step>` after
 * it when set-up failed before the pipeline started. Undefined when the text is not one.
 */
export function parseExitStatus(text: string): { code: number; bootstrapStep?: string } | undefined {
  const m = /^\s*(\d{1,3})\s*(?:\n\s*bootstrap-failed=([a-z0-9-]{1,64})\s*)?$/.exec(text);
  if (!m) return undefined;
  const n = Number(m[1]);
  if (n > 255) return undefined;
  return m[2] ? { code: n, bootstrapStep: m[2] } : { code: n };
}
