import { describe, expect, it } from "vitest";
import { DURATION_PATTERN, formatDuration, isDuration, parseDuration } from "../../../src/api/duration.js";

describe("parseDuration", () => {
  it.each([
    ["90m", 90 * 60_000],
    ["6h", 6 * 3_600_000],
    ["1h30m", 90 * 60_000],
    ["45s", 45_000],
    ["2h0m10s", 2 * 3_600_000 + 10_000],
    ["1h5s", 3_600_000 + 5_000],
    ["0s", 0],
    ["999999h", 999_999 * 3_600_000],
  ])("parses %s", (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
    expect(isDuration(text)).toBe(true);
  });

  it.each(["", "90", "1.5h", "30m1h", "1d", "-5m", " 5m", "5m ", "5 m", "1h1h", "1000000h", "5ms", "PT5M"])(
    "rejects %j",
    (text) => {
      expect(() => parseDuration(text)).toThrow(RangeError);
      expect(isDuration(text)).toBe(false);
    },
  );

  it("names the bad input in the error", () => {
    expect(() => parseDuration("ten minutes")).toThrow(/"ten minutes"/);
  });

  it("agrees with the pattern the CRD enforces", () => {
    expect(DURATION_PATTERN).toBe("^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$");
  });
});

describe("formatDuration", () => {
  it.each([
    [5_400_000, "1h30m"],
    [0, "0s"],
    [45_999, "45s"],
    [3_600_000 + 1_000, "1h1s"],
    [6 * 3_600_000, "6h"],
  ])("formats %d as %s", (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });

  it("round-trips through parseDuration", () => {
    for (const ms of [0, 1_000, 59_000, 60_000, 3_599_000, 3_600_000, 86_400_000 + 61_000]) {
      expect(parseDuration(formatDuration(ms))).toBe(ms);
    }
  });

  it("rejects negative and non-finite values", () => {
    expect(() => formatDuration(-1)).toThrow(RangeError);
    expect(() => formatDuration(Number.NaN)).toThrow(RangeError);
  });
});
