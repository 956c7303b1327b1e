import { describe, expect, it } from "vitest";
import { stalledRecheckMs } from "../../../src/controllers/computeenvironment/reconciler.js";

describe("stalledRecheckMs", () => {
  it("looks again soon after a Terminal answer (a fix in IAM or Azure takes a while to count), then less and less often, never less than every 30 minutes", () => {
    expect([1, 2, 3, 4, 5, 6, 50].map((n) => stalledRecheckMs(n))).toEqual([10_000, 40_000, 160_000, 640_000, 1_800_000, 1_800_000, 1_800_000]);
    expect(stalledRecheckMs(0)).toBe(10_000);
  });
});
