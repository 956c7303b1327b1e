// The released operator's providers load their cloud SDK on first use, and say what the real
// providers say about themselves.
import { describe, expect, it } from "vitest";
import { defaultProviders } from "../../src/main.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { AzureProvider } from "../../src/cloud/azure/provider.js";
import type { CloudProvider } from "../../src/cloud/provider.js";

describe("defaultProviders", () => {
  it("wraps each provider with the same name and cloud-write announcement as the real one", () => {
    const lazy = defaultProviders();
    for (const real of [new AwsProvider(), new AzureProvider()] as CloudProvider[]) {
      const p = lazy.get(real.name);
      expect(p?.name).toBe(real.name);
      expect(Boolean(p?.announcesCloudWrites)).toBe(Boolean(real.announcesCloudWrites));
      expect(typeof p?.sweepOrphans).toBe(typeof real.sweepOrphans);
    }
    expect([...lazy.keys()].sort()).toEqual(["aws", "azure"]);
  });
});
