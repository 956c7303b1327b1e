// The operator runs with the same Node options wherever it is started as shipped: the image's CMD
// (which the bench reads, so its memory figures are the image's) and `npm start`.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { shippedNodeOptions } from "../../bench/operator.js";

function imageOptions(): string[] {
  const saved = process.env.BENCH_NODE_OPTIONS;
  delete process.env.BENCH_NODE_OPTIONS;
  try {
    return shippedNodeOptions();
  } finally {
    if (saved !== undefined) process.env.BENCH_NODE_OPTIONS = saved;
  }
}

describe("the operator's Node options", () => {
  it("are the same in the Dockerfile's CMD and in npm start", () => {
    const image = imageOptions();
    expect(image).toContain("--optimize-for-size");
    expect(image).toContain("--max-opt=1");
    const start = (JSON.parse(readFileSync("package.json", "utf8")) as { scripts: Record<string, string> }).scripts.start ?? "";
    expect(start).toBe(["node", ...image, "dist/main.js"].join(" "));
  });

  it("are accepted by Node 24 and leave its baseline compiler on (not interpreted only)", () => {
    // A V8 option Node does not know stops it at start ("bad option"); --lite-mode or --jitless
    // would run every busy moment interpreted (README "Performance").
    const r = spawnSync(process.execPath, [...imageOptions(), "--print-flag-values", "-e", "0"], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const flags = new Set(r.stdout.split("\n").map((l) => l.trim()));
    expect(flags.has("--no-jitless")).toBe(true);
    expect(flags.has("--sparkplug")).toBe(true);
    expect(flags.has("--max-opt=1")).toBe(true);
    expect(flags.has("--optimize-for-size")).toBe(true);
  });
});
