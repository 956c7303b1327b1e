// Runs an Argo CD health script the way Argo CD does: the object as the global `obj` (JSON mapped
// to Lua tables, arrays 1-based), the script's returned table read as { status, message }, on
// gopher-lua — the Lua 5.1 interpreter Argo CD embeds — built from its Go module (go-tools.ts).
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureGoTool, GLUA } from "./go-tools.js";
import { runTool } from "./helm.js";

export interface ArgoHealth {
  status: string;
  message: string;
}

/** A Lua string literal for any JS string (bytes outside printable ASCII as decimal escapes). */
function luaString(s: string): string {
  let out = '"';
  for (const b of Buffer.from(s, "utf8")) {
    if (b === 0x22) out += '\\"';
    else if (b === 0x5c) out += "\\\\";
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += `\\${b}`;
  }
  return `${out}"`;
}

/** The Lua value Argo CD's JSON-to-Lua conversion gives (null members are absent). */
export function toLua(v: unknown): string {
  if (v === null || v === undefined) return "nil";
  if (typeof v === "string") return luaString(v);
  if (typeof v === "number") return Number.isFinite(v) ? String(v) : "nil";
  if (typeof v === "boolean") return String(v);
  if (Array.isArray(v)) return `{${v.map(toLua).join(", ")}}`;
  if (typeof v === "object") {
    const parts = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== null && x !== undefined)
      .map(([k, x]) => `[${luaString(k)}] = ${toLua(x)}`);
    return `{${parts.join(", ")}}`;
  }
  throw new TypeError(`cannot map ${typeof v} to Lua`);
}

/** Evaluates `scriptPath` for `obj`. Throws when the script errors or returns no valid status. */
export async function argoHealth(scriptPath: string, obj: unknown): Promise<ArgoHealth> {
  const glua = await ensureGoTool(GLUA);
  const dir = await mkdtemp(join(tmpdir(), "vmforge-lua-"));
  try {
    const driver = join(dir, "driver.lua");
    await writeFile(
      driver,
      [
        `obj = ${toLua(obj)}`,
        `local check = assert(loadfile(${luaString(scriptPath)}))`,
        "local hs = check()",
        'assert(type(hs) == "table", "the health script returned no table")',
        'io.write(tostring(hs.status), "\\n", tostring(hs.message))',
        "",
      ].join("\n"),
    );
    const r = await runTool(glua, [driver]);
    if (r.code !== 0) throw new Error(`glua ${scriptPath} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
    const nl = r.stdout.indexOf("\n");
    const status = r.stdout.slice(0, nl);
    if (!["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"].includes(status)) {
      throw new Error(`${scriptPath} returned status ${JSON.stringify(status)}, which Argo CD does not know`);
    }
    return { status, message: r.stdout.slice(nl + 1) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
