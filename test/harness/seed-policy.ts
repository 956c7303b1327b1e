// The operator's IAM policy as the product document (seed 002, "AWS Cloud") states it, read from
// the document itself at test time: each phase's JSON block under "Required Platform IAM
// permissions". Tests use these statements unchanged; only the document's placeholders for the
// work directory (<BUCKET_NAME>, WORKDIR) are filled in.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { PolicyDocument, PolicyStatement } from "./aws-strict/policy-eval.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/**
 * Folder of the product documents: $VMFORGE_SEEDS_DIR, else the `shared/seeds` folder that sits
 * beside the checkout (or beside its parent, for a git worktree one level down). Tests that read a
 * seed fail with a clear message when none is found; they never skip.
 */
export function seedsDir(): string {
  if (process.env.VMFORGE_SEEDS_DIR) return process.env.VMFORGE_SEEDS_DIR;
  const candidates = [join(REPO, "..", "shared", "seeds"), join(REPO, "..", "..", "shared", "seeds")];
  return candidates.find((d) => existsSync(join(d, "README.md"))) ?? candidates[0]!;
}

/** Path of a seed document by its number prefix (e.g. "001"); throws a clear error when absent. */
export function seedPath(prefix: string): string {
  const dir = seedsDir();
  const f = existsSync(dir) ? readdirSync(dir).find((n) => n.startsWith(`${prefix}_`) && n.endsWith(".txt")) : undefined;
  if (!f) throw new Error(`product document ${prefix}_*.txt not found in ${dir}; set VMFORGE_SEEDS_DIR to the folder of the product documents`);
  return join(dir, f);
}

/** Path of seed 002 (the AWS Cloud document), or undefined when it is not on this machine. */
export function awsSeedPath(): string | undefined {
  const dir = seedsDir();
  if (!existsSync(dir)) return undefined;
  const f = readdirSync(dir).find((n) => n.startsWith("002_") && n.endsWith(".txt"));
  return f ? join(dir, f) : undefined;
}

export type SeedPhase = "create" | "validate" | "launch" | "delete" | "read";

const HEADINGS: Record<SeedPhase, string> = {
  create: "### Compute environment creation",
  validate: "### Compute environment validation",
  launch: "### Pipeline and Studio session management",
  delete: "### Compute environment termination and resource disposal",
  read: "### Optional permissions",
};

/** The statements of each phase, exactly as the document lists them. */
export function seedStatements(path: string): Record<SeedPhase, PolicyStatement[]> {
  const text = readFileSync(path, "utf8");
  const out = {} as Record<SeedPhase, PolicyStatement[]>;
  for (const [phase, heading] of Object.entries(HEADINGS) as [SeedPhase, string][]) {
    const at = text.indexOf(`\n${heading}\n`);
    if (at < 0) throw new Error(`${path}: no section "${heading}"`);
    const open = text.indexOf("```json\n", at);
    const close = text.indexOf("\n```", open + 8);
    if (open < 0 || close < 0) throw new Error(`${path}: no JSON block under "${heading}"`);
    // Each block lists statements separated by commas, without the surrounding array.
    out[phase] = JSON.parse(`[${text.slice(open + 8, close)}]`) as PolicyStatement[];
  }
  return out;
}

/**
 * A policy document made of the seed's statements for these phases, with the work directory's
 * bucket and prefix put in place of <BUCKET_NAME> and WORKDIR. `without` drops one action (and a
 * statement left with none).
 */
export function seedPolicy(path: string, opts: { phases: SeedPhase[]; bucket: string; workDirPrefix: string; without?: string }): PolicyDocument & { Statement: PolicyStatement[] } {
  const all = seedStatements(path);
  const statements: PolicyStatement[] = [];
  for (const phase of opts.phases) {
    for (const st of all[phase]) {
      const s: PolicyStatement = JSON.parse(
        JSON.stringify(st).replaceAll("<BUCKET_NAME>", opts.bucket).replaceAll("/WORKDIR/", `/${opts.workDirPrefix}/`),
      ) as PolicyStatement;
      if (opts.without !== undefined) {
        const actions = [s.Action ?? []].flat().filter((a) => a !== opts.without);
        if (actions.length === 0) continue;
        s.Action = actions;
      }
      statements.push(s);
    }
  }
  return { Version: "2012-10-17", Statement: statements };
}

/** Every action the seed lists for these phases, in document order, without repeats. */
export function seedActions(path: string, phases: SeedPhase[]): string[] {
  const all = seedStatements(path);
  return [...new Set(phases.flatMap((p) => all[p].flatMap((s) => [s.Action ?? []].flat())))];
}
