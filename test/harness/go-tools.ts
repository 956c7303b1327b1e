// Small command-line tools the tests need, built from their Go modules (the Go module proxy is
// reachable, release downloads are not) into the vmforge cache, once per version:
//   actionlint   lints .github/workflows (and runs shellcheck on their `run:` scripts when given one)
//   glua         gopher-lua's interpreter: the Lua 5.1 dialect Argo CD runs health checks with
//
//   npx tsx test/harness/go-tools.ts [actionlint|glua]...   build (when missing) and print the paths
import { access, mkdir, mkdtemp, rename, rm } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { runTool } from "./helm.js";
import { cacheRoot } from "./paths.js";

export interface GoTool {
  /** Binary name. */
  name: string;
  /** Package path of its main package. */
  pkg: string;
  version: string;
}

export const ACTIONLINT: GoTool = { name: "actionlint", pkg: "github.com/rhysd/actionlint/cmd/actionlint", version: process.env.VMFORGE_ACTIONLINT_VERSION ?? "v1.7.12" };
/** Argo CD's go.mod pins gopher-lua v1.1.1; its health scripts run on that interpreter. */
export const GLUA: GoTool = { name: "glua", pkg: "github.com/yuin/gopher-lua/cmd/glua", version: process.env.VMFORGE_GLUA_VERSION ?? "v1.1.1" };

export function goToolPath(t: GoTool): string {
  return join(cacheRoot(), t.name, t.version, t.name);
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const building = new Map<string, Promise<string>>();

/**
 * Path of the tool's binary; the first call on a machine runs `go install <pkg>@<version>` into a
 * private folder that is then renamed into the cache, so a concurrent builder never sees half a
 * binary and the loser of a race uses the winner's.
 */
export function ensureGoTool(t: GoTool): Promise<string> {
  const key = `${t.name}@${t.version}`;
  let p = building.get(key);
  if (!p) {
    p = build(t).catch((e: unknown) => {
      building.delete(key);
      throw e;
    });
    building.set(key, p);
  }
  return p;
}

async function build(t: GoTool): Promise<string> {
  const bin = goToolPath(t);
  if (await isExecutable(bin)) return bin;
  const finalDir = dirname(bin);
  await mkdir(dirname(finalDir), { recursive: true });
  const work = await mkdtemp(`${finalDir}.build-`);
  try {
    process.stderr.write(`[go-tools] building ${t.pkg}@${t.version} into ${finalDir} (first run only)\n`);
    let r;
    try {
      r = await runTool("go", ["install", "-trimpath", "-ldflags=-s -w", `${t.pkg}@${t.version}`], {
        cwd: work,
        env: { GOBIN: work, CGO_ENABLED: "0", GOFLAGS: "-buildvcs=false" },
      });
    } catch (e) {
      throw new Error(`cannot run "go" to build ${t.name} (is the Go toolchain on PATH?): ${e instanceof Error ? e.message : String(e)}`);
    }
    if (r.code !== 0) throw new Error(`go install ${t.pkg}@${t.version} failed (exit ${r.code}):\n${r.stderr.trim().split("\n").slice(-20).join("\n")}`);
    if (!(await isExecutable(join(work, t.name)))) throw new Error(`go install ${t.pkg}@${t.version} produced no ${t.name}`);
    try {
      await rename(work, finalDir);
    } catch (e) {
      if (!(await isExecutable(bin))) throw e;
    }
    return bin;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

const TOOLS: Record<string, GoTool> = { actionlint: ACTIONLINT, glua: GLUA };

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const names = process.argv.slice(2);
  try {
    for (const n of names.length ? names : Object.keys(TOOLS)) {
      const t = TOOLS[n];
      if (!t) throw new Error(`unknown tool ${n}; one of ${Object.keys(TOOLS).join(", ")}`);
      console.log(await ensureGoTool(t));
    }
  } catch (e) {
    console.error(e instanceof Error ? e.message : String(e));
    process.exitCode = 1;
  }
}
