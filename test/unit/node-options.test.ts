// The operator runs with the same Node options wherever it is started as shipped: the image's CMD
// (which the bench reads, so its memory figures are the image's) and `npm start`.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { shippedNodeOptions } from "../../bench/operator.js";

describe("the operator's Node options", () => {
  it("are the same in the Dockerfile's CMD and in npm start", () => {
    const saved = process.env.BENCH_NODE_OPTIONS;
    delete process.env.BENCH_NODE_OPTIONS;
    try {
      const image = shippedNodeOptions();
      expect(image).toContain("--optimize-for-size");
      expect(image).toContain("--lite-mode");
      const start = (JSON.parse(readFileSync("package.json", "utf8")) as { scripts: Record<string, string> }).scripts.start ?? "";
      expect(start).toBe(["node", ...image, "dist/main.js"].join(" "));
    } finally {
      if (saved !== undefined) process.env.BENCH_NODE_OPTIONS = saved;
    }
  });
});
