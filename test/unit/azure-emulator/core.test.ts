// Unit tests of the Azure emulator's core pieces: deterministic IDs, RBAC matching, CIDR
// arithmetic, seed role parsing, and Resource Manager dispatch without HTTP.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { cidrOverlap, cidrWithin, parseCidr } from "../../azure-emulator/arm/network.js";
import { seedRole } from "../../azure-emulator/control.js";
import { Emulator } from "../../azure-emulator/emulator.js";
import { actionMatches, permissionsAllow } from "../../azure-emulator/rbac.js";
import { DetIds } from "../../azure-emulator/util.js";
import { armCall } from "./arm-call.js";

describe("deterministic IDs", () => {
  it("gives the same GUIDs for the same seed, kind and key, and different ones otherwise", () => {
    const a = new DetIds("s1");
    const b = new DetIds("s1");
    const c = new DetIds("s2");
    expect(a.guid("vm", "/X")).toBe(b.guid("vm", "/x"));
    expect(a.guid("vm", "/x")).toBe(b.guid("vm", "/X")); // second use of the same key: still equal
    expect(a.guid("vm", "/x")).not.toBe(c.guid("vm", "/x"));
    expect(a.guid("vm", "/y")).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("creates the same resources with the same IDs in two emulators with the same seed, whatever else happens in between", () => {
    const one = new Emulator("seed-x");
    const two = new Emulator("seed-x");
    expect(one.getInfo().tenantId).toBe(two.getInfo().tenantId);
    expect(one.getInfo().admin).toEqual(two.getInfo().admin);
    const sub = one.getInfo().subscriptionId;
    const rg = `/subscriptions/${sub}/resourceGroups/rg?api-version=2025-04-01`;
    const ident = `/subscriptions/${sub}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a?api-version=2024-11-30`;
    for (const em of [one, two]) expect(armCall(em, "PUT", rg, { location: "westeurope" }).status).toBe(201);
    armCall(two, "PUT", `/subscriptions/${sub}/resourceGroups/other?api-version=2025-04-01`, { location: "westeurope" });
    const p1 = armCall(one, "PUT", ident, { location: "westeurope" }).body as { properties: { principalId: string; clientId: string } };
    const p2 = armCall(two, "PUT", ident, { location: "westeurope" }).body as { properties: { principalId: string; clientId: string } };
    expect(p1.properties).toEqual(p2.properties);
    // reset with the same seed starts over identically
    one.reset("seed-x");
    expect(one.getInfo().admin).toEqual(two.getInfo().admin);
  });
});

describe("RBAC matching", () => {
  it("matches wildcards case-insensitively; * never grants data actions; notActions subtract within their block", () => {
    expect(actionMatches("Microsoft.Compute/*", "microsoft.compute/virtualMachines/write")).toBe(true);
    expect(actionMatches("*/read", "Microsoft.Network/virtualNetworks/read")).toBe(true);
    expect(actionMatches("*/read", "Microsoft.Network/virtualNetworks/write")).toBe(false);
    expect(actionMatches("Microsoft.Insights/DataCollectionRules/Write", "Microsoft.Insights/dataCollectionRules/write")).toBe(true);
    const contributor = [{ actions: ["*"], notActions: ["Microsoft.Authorization/*/Write"], dataActions: [], notDataActions: [] }];
    expect(permissionsAllow(contributor, "Microsoft.Compute/virtualMachines/write", false)).toBe(true);
    expect(permissionsAllow(contributor, "Microsoft.Authorization/roleAssignments/write", false)).toBe(false);
    expect(permissionsAllow(contributor, "Microsoft.Insights/Telemetry/Write", true)).toBe(false);
    // a notAction of one block does not remove what another block grants
    const two = [...contributor, { actions: ["Microsoft.Authorization/roleAssignments/write"], notActions: [], dataActions: [], notDataActions: [] }];
    expect(permissionsAllow(two, "Microsoft.Authorization/roleAssignments/write", false)).toBe(true);
  });

  it("inherits down the scope tree and not up; denial names client, object ID, action and scope", () => {
    const em = new Emulator("rbac");
    const info = em.getInfo();
    const sub = `/subscriptions/${info.subscriptionId}`;
    const p = em.createPrincipal({ tenantId: info.tenantId, displayName: "reader", secret: "s" });
    em.assign(p.oid, `${sub}/resourceGroups/a`, "acdd72a7-3385-48ef-bd42-f606fba81ae7");
    expect(em.rbac.allowed(p.oid, "Microsoft.Network/virtualNetworks/read", `${sub}/resourceGroups/A/providers/Microsoft.Network/virtualNetworks/v`, false)).toBe(true);
    expect(em.rbac.allowed(p.oid, "Microsoft.Network/virtualNetworks/read", `${sub}/resourceGroups/ab`, false)).toBe(false);
    expect(em.rbac.allowed(p.oid, "Microsoft.Network/virtualNetworks/read", sub, false)).toBe(false);
    const host = em.logsHost();
    const denied = host.authorize(undefined, "x/read", sub, false);
    expect(denied.ok).toBe(false);
  });
});

describe("CIDR arithmetic", () => {
  it("parses, contains and overlaps", () => {
    const vnet = parseCidr("10.0.0.0/16")!;
    expect(parseCidr("10.0.0.1/16")).toBeUndefined();
    expect(parseCidr("10.0.300.0/24")).toBeUndefined();
    expect(cidrWithin(parseCidr("10.0.5.0/24")!, vnet)).toBe(true);
    expect(cidrWithin(parseCidr("10.1.0.0/24")!, vnet)).toBe(false);
    expect(cidrOverlap(parseCidr("10.0.0.0/24")!, parseCidr("10.0.0.128/25")!)).toBe(true);
    expect(cidrOverlap(parseCidr("10.0.0.0/25")!, parseCidr("10.0.0.128/25")!)).toBe(false);
  });
});

describe("seed role JSON", () => {
  it("reads a role by name from a document, tolerating trailing commas", () => {
    const dir = mkdtempSync(join(tmpdir(), "seedrole-"));
    try {
      const f = join(dir, "seed.txt");
      writeFileSync(
        f,
        'Intro text {not json}\n```json\n{"properties": {"roleName": "other", "permissions": []}}\n```\n{\n "properties": {\n  "roleName": "wanted",\n  "permissions": [{"actions": ["a/read",], "dataActions": ["b/read",\n]}]\n }\n}\n',
      );
      const r = seedRole(f, "wanted");
      expect(r.properties?.permissions[0]?.actions).toEqual(["a/read"]);
      expect(() => seedRole(f, "missing")).toThrow(/no role named missing/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("Resource Manager dispatch", () => {
  it("answers ARM errors for missing api-version, unknown resource group and unknown type", () => {
    const em = new Emulator("dispatch");
    const sub = em.getInfo().subscriptionId;
    expect(armCall(em, "GET", `/subscriptions/${sub}/resourceGroups/x`).body).toMatchObject({ error: { code: "MissingApiVersionParameter" } });
    expect(armCall(em, "GET", `/subscriptions/${sub}/resourceGroups/x?api-version=2025-04-01`)).toMatchObject({ status: 404, body: { error: { code: "ResourceGroupNotFound" } } });
    armCall(em, "PUT", `/subscriptions/${sub}/resourceGroups/x?api-version=2025-04-01`, { location: "westeurope" });
    expect(armCall(em, "GET", `/subscriptions/${sub}/resourceGroups/x/providers/Microsoft.Foo/bars/b?api-version=2025-04-01`)).toMatchObject({ status: 400, body: { error: { code: "InvalidResourceType" } } });
    expect(armCall(em, "GET", `/subscriptions/${sub}/resourceGroups/x/providers/Microsoft.Network/virtualNetworks/v?api-version=2026-01-01`)).toMatchObject({ status: 404, body: { error: { code: "ResourceNotFound" } } });
  });
});
