// The Azure code's calls, found in its source: every azCall/azGet/azDelete with its phase and
// action, and the SDK operations inside each (shared by the tests that check actions).
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { AzureCallPhase } from "../../../../src/cloud/azure/policy.js";

const SRC = join(import.meta.dirname, "../../../../src/cloud/azure");

/** Finds the end of a call whose "(" is at `open`, skipping string literals. */
function closeParen(text: string, open: number): number {
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"' || ch === "'" || ch === "`") {
      const q = ch;
      for (i++; i < text.length && text[i] !== q; i++) if (text[i] === "\\") i++;
      continue;
    }
    if (ch === "(") depth++;
    else if (ch === ")" && --depth === 0) return i;
  }
  return text.length;
}

export interface Site {
  file: string;
  phase: AzureCallPhase;
  action: string;
  ops: string[];
}

export function callSites(): { sites: Site[]; sdkCalls: Array<{ file: string; op: string; at: number }>; spans: Array<{ file: string; from: number; to: number }> } {
  const sites: Site[] = [];
  const sdkCalls: Array<{ file: string; op: string; at: number }> = [];
  const spans: Array<{ file: string; from: number; to: number }> = [];
  const SDK = /\bc\.(resources|msi|authorization|logAnalytics|monitor|network|compute|logsQuery|blobs)\.(?:(\w+)\.)?(\w+)\(/g;
  for (const f of readdirSync(SRC).filter((n) => n.endsWith(".ts"))) {
    const text = readFileSync(join(SRC, f), "utf8");
    for (const m of text.matchAll(/\baz(?:Call|Get|Delete)\(c, "(\w+)", "([^"]+)",/g)) {
      const open = m.index + m[0].indexOf("(");
      const end = closeParen(text, open);
      spans.push({ file: f, from: open, to: end });
      const body = text.slice(open, end);
      const ops = [...body.matchAll(SDK)].map((x) => [x[1], x[2], x[3]].filter(Boolean).join("."));
      sites.push({ file: f, phase: m[1] as AzureCallPhase, action: m[2]!, ops });
    }
    if (f === "clients.ts") continue; // builds the clients, calls none
    for (const m of text.matchAll(SDK)) sdkCalls.push({ file: f, op: [m[1], m[2], m[3]].filter(Boolean).join("."), at: m.index });
  }
  return { sites, sdkCalls, spans };
}

