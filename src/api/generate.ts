/**
 * `npm run gen:crds`: writes crds/*.yaml from the TypeBox schemas. With `--check` it writes
 * nothing and exits 1 when a checked-in file differs from a fresh render.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { renderCrds } from "./crd.js";

export { crdObjects, renderCrds } from "./crd.js";

/** Repository root: src/api/ -> ../../ */
export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** Files under `root` whose content differs from a fresh render (missing files count). */
export function staleCrdFiles(root = REPO_ROOT): string[] {
  const stale: string[] = [];
  for (const { file, yaml } of renderCrds()) {
    let current: string | undefined;
    try {
      current = readFileSync(join(root, file), "utf8");
    } catch {
      current = undefined;
    }
    if (current !== yaml) stale.push(file);
  }
  return stale;
}

export function writeCrds(root = REPO_ROOT): string[] {
  const written: string[] = [];
  for (const { file, yaml } of renderCrds()) {
    const path = join(root, file);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, yaml);
    written.push(file);
  }
  return written;
}

function main(argv: string[]): number {
  if (argv.includes("--check")) {
    const stale = staleCrdFiles();
    if (stale.length > 0) {
      console.error(`stale: ${stale.join(", ")} (run npm run gen:crds)`);
      return 1;
    }
    console.log("crds/ is up to date");
    return 0;
  }
  for (const file of writeCrds()) console.log(`wrote ${file}`);
  return 0;
}

const invokedPath = process.argv[1];
if (invokedPath !== undefined && import.meta.url === pathToFileURL(invokedPath).href) {
  process.exitCode = main(process.argv.slice(2));
}
