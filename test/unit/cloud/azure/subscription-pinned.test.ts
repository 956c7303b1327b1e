// A ComputeEnvironment's Azure resources stay in the subscription they were made in: the provider
// follows, terminates, sweeps and disposes there even after the spec or the Secret name another
// (or none), and refuses to converge or launch into the new one, naming both.
import { describe, expect, it } from "vitest";
import type { ComputeEnvironment } from "../../../../src/api/types.js";
import { createLogger } from "../../../../src/engine/logger.js";
import { AzureProvider } from "../../../../src/cloud/azure/provider.js";
import type { AzureClients } from "../../../../src/cloud/azure/clients.js";
import type { EnvContext } from "../../../../src/cloud/provider.js";
import { sampleAzureCe } from "./fake-azure.js";

const OLD = "11111111-aaaa-4bbb-8ccc-000000000001";
const NEW = "22222222-aaaa-4bbb-8ccc-000000000002";
const data = (sub?: string): Record<string, string> => ({
  tenantId: "tttttttt-0000-4000-8000-000000000000", clientId: "aaaaaaaa-0000-4000-8000-000000000001", clientSecret: "s", ...(sub ? { subscriptionId: sub } : {}),
});

function setup(): { provider: AzureProvider; subs: string[] } {
  const subs: string[] = [];
  const provider = new AzureProvider({
    endpoints: {},
    clientFactory: (_id, sub) => {
      subs.push(sub);
      return { subscriptionId: sub } as unknown as AzureClients;
    },
  });
  return { provider, subs };
}

function ctxOf(specSub: string | undefined, secretSub: string | undefined, pinned: string | undefined): EnvContext {
  const ce = sampleAzureCe(specSub ?? OLD) as ComputeEnvironment;
  if (specSub === undefined) delete ce.spec.azure!.subscriptionId;
  ce.status = pinned ? { azure: { subscriptionId: pinned } } : {};
  return { ce, credentials: { source: "secret", secretName: "ns/creds", data: data(secretSub) }, logger: createLogger({ level: "silent" }) };
}

describe("the subscription a CE's resources are in", () => {
  it("before anything was made, the spec's (else the Secret's) subscription is used", () => {
    const { provider } = setup();
    expect(provider.clientsFor(ctxOf(NEW, undefined, undefined), true).subscriptionId).toBe(NEW);
    expect(provider.clientsFor(ctxOf(undefined, NEW, undefined), true).subscriptionId).toBe(NEW);
  });

  it("the spec now names another: following and disposing stay in the old one; converging and launching are refused, naming both", () => {
    const { provider } = setup();
    const ctx = ctxOf(NEW, undefined, OLD);
    expect(provider.clientsFor(ctx).subscriptionId).toBe(OLD);
    expect(() => provider.clientsFor(ctx, true)).toThrow(expect.objectContaining({ kind: "Terminal", reason: "SubscriptionChanged" }));
    expect(() => provider.clientsFor(ctx, true)).toThrow(new RegExp(`${OLD}.*${NEW}`));
  });

  it("the Secret now names another, or none: the same", () => {
    const { provider } = setup();
    expect(provider.clientsFor(ctxOf(undefined, NEW, OLD)).subscriptionId).toBe(OLD);
    expect(() => provider.clientsFor(ctxOf(undefined, NEW, OLD), true)).toThrow(expect.objectContaining({ reason: "SubscriptionChanged" }));
    expect(provider.clientsFor(ctxOf(undefined, undefined, OLD)).subscriptionId).toBe(OLD);
    expect(() => provider.clientsFor(ctxOf(undefined, undefined, OLD), true)).toThrow(expect.objectContaining({ reason: "SubscriptionNotSet" }));
  });

  it("naming the same subscription again (any letter case) is no move", () => {
    const { provider } = setup();
    expect(provider.clientsFor(ctxOf(OLD.toUpperCase(), undefined, OLD), true).subscriptionId).toBe(OLD);
  });
});
