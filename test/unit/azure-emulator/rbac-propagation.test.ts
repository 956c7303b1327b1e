// Unit tests of the emulator's role assignment propagation: a new assignment is listed at once but
// counts in access checks (Resource Manager, Key Vault, Logs Ingestion) only after the propagation
// delay, as in Azure; changing the delay moves the pending ones, never the ones in effect.
import { describe, expect, it } from "vitest";
import { Emulator } from "../../azure-emulator/emulator.js";
import { keyVaultRequest } from "../../azure-emulator/keyvault.js";
import type { Principal } from "../../azure-emulator/state.js";
import { armCall } from "./arm-call.js";

const HOUR = 3_600_000;
const READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6";
const METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb";
const TELEMETRY_WRITE = "Microsoft.Insights/Telemetry/Write";

function setup(seed: string): { em: Emulator; sub: string; app: Principal } {
  const em = new Emulator(seed);
  const info = em.getInfo();
  const app = em.createPrincipal({ tenantId: info.tenantId, displayName: "fresh", secret: "p", backdated: true });
  return { em, sub: info.subscriptionId, app };
}

const bearer = (em: Emulator, p: Principal, aud: string): string => `Bearer ${em.entra.issue(p, aud, "1").token}`;

describe("role assignment propagation (emulator)", () => {
  it("has a propagation delay by default, for assignments made through Resource Manager", () => {
    expect(new Emulator("defaults").getInfo().settings.roleAssignmentDelayMs).toBeGreaterThan(0);
  });

  it("Resource Manager: an assignment made through it is listed at once, but authorizes nothing until it has propagated; once in effect it stays so", () => {
    const { em, sub, app } = setup("arm-propagation");
    em.updateSettings({ roleAssignmentDelayMs: HOUR });
    const rg = `/subscriptions/${sub}/resourceGroups/rg1`;
    expect(armCall(em, "PUT", `${rg}?api-version=2025-04-01`, { location: "westeurope" }).status).toBe(201);
    expect(armCall(em, "GET", `${rg}?api-version=2025-04-01`, undefined, app)).toMatchObject({ status: 403, body: { error: { code: "AuthorizationFailed" } } });

    const put = armCall(em, "PUT", `${rg}/providers/Microsoft.Authorization/roleAssignments/11111111-2222-4333-8444-555555555555?api-version=2022-04-01`, {
      properties: { roleDefinitionId: `/subscriptions/${sub}/providers/Microsoft.Authorization/roleDefinitions/${READER}`, principalId: app.oid, principalType: "ServicePrincipal" },
    });
    expect(put.status).toBe(201);
    const listed = armCall(em, "GET", `${rg}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=principalId eq '${app.oid}'`);
    expect((listed.body as { value: { properties: { principalId: string } }[] }).value.map((a) => a.properties.principalId)).toEqual([app.oid]);
    // not yet propagated: refused, and its own permissions show nothing
    expect(armCall(em, "GET", `${rg}?api-version=2025-04-01`, undefined, app)).toMatchObject({ status: 403, body: { error: { code: "AuthorizationFailed" } } });

    em.updateSettings({ roleAssignmentDelayMs: 0 });
    expect(armCall(em, "GET", `${rg}?api-version=2025-04-01`, undefined, app).status).toBe(200);
    const perms = armCall(em, "GET", `${rg}/providers/Microsoft.Authorization/permissions?api-version=2022-04-01`, undefined, app);
    expect((perms.body as { value: { actions: string[] }[] }).value).toEqual([expect.objectContaining({ actions: ["*/read"] })]);
    // a longer delay later does not take back what is in effect
    em.updateSettings({ roleAssignmentDelayMs: HOUR });
    expect(armCall(em, "GET", `${rg}?api-version=2025-04-01`, undefined, app).status).toBe(200);
  });

  it("Key Vault: a grant asked to propagate is refused ForbiddenByRbac until it has; a test-control grant without it (made long ago) counts at once", () => {
    const { em, app } = setup("kv-propagation");
    em.updateSettings({ roleAssignmentDelayMs: HOUR });
    const v = em.seedKeyVault({ resourceGroup: "secrets-rg", name: "prop-vault", enableRbacAuthorization: true, secrets: { s: "v" } });
    const get = (): { status: number; body: unknown } => keyVaultRequest(em.keyVaultHost(), { method: "GET", path: "prop-vault/secrets/s", query: new URLSearchParams("api-version=7.4"), authorization: bearer(em, app, "https://vault.azure.net") });
    em.assign(app.oid, v.id, SECRETS_USER, { propagate: true });
    expect(get()).toMatchObject({ status: 403, body: { error: { innererror: { code: "ForbiddenByRbac" } } } });
    em.updateSettings({ roleAssignmentDelayMs: 0 });
    expect(get()).toMatchObject({ status: 200, body: { value: "v" } });

    const other = em.createPrincipal({ tenantId: em.getInfo().tenantId, displayName: "old-grant", secret: "p", backdated: true });
    em.updateSettings({ roleAssignmentDelayMs: HOUR });
    em.assign(other.oid, v.id, SECRETS_USER);
    expect(keyVaultRequest(em.keyVaultHost(), { method: "GET", path: "prop-vault/secrets/s", query: new URLSearchParams("api-version=7.4"), authorization: bearer(em, other, "https://vault.azure.net") }).status).toBe(200);
  });

  it("Logs Ingestion: telemetry write granted on a data collection rule counts only once propagated", () => {
    const { em, sub, app } = setup("logs-propagation");
    em.updateSettings({ roleAssignmentDelayMs: HOUR });
    const dcr = `/subscriptions/${sub}/resourceGroups/rg/providers/Microsoft.Insights/dataCollectionRules/dcr1`;
    const token = bearer(em, app, "https://monitor.azure.com");
    em.assign(app.oid, dcr, METRICS_PUBLISHER, { propagate: true });
    expect(em.logsHost().authorize(token, TELEMETRY_WRITE, dcr, true)).toMatchObject({ ok: false, status: 403 });
    em.updateSettings({ roleAssignmentDelayMs: 0 });
    expect(em.logsHost().authorize(token, TELEMETRY_WRITE, dcr, true)).toMatchObject({ ok: true });
  });

  it("a deleted assignment is gone from reads at once, but still grants its role and holds its role definition until the caches drop it", () => {
    const { em, sub, app } = setup("removal-propagation");
    em.updateSettings({ roleAssignmentDelayMs: 0, roleAssignmentRemovalDelayMs: HOUR });
    const rg = `/subscriptions/${sub}/resourceGroups/rg1`;
    expect(armCall(em, "PUT", `${rg}?api-version=2025-04-01`, { location: "westeurope" }).status).toBe(201);
    const roleGuid = "6f3c1a2b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    const defPath = `/subscriptions/${sub}/providers/Microsoft.Authorization/roleDefinitions/${roleGuid}?api-version=2022-04-01`;
    expect(armCall(em, "PUT", defPath, {
      properties: { roleName: "rg-reader", description: "test", type: "CustomRole", assignableScopes: [`/subscriptions/${sub}`], permissions: [{ actions: ["Microsoft.Resources/subscriptions/resourceGroups/read"] }] },
    }).status).toBe(201);
    const assignment = `${rg}/providers/Microsoft.Authorization/roleAssignments/21111111-2222-4333-8444-555555555555?api-version=2022-04-01`;
    expect(armCall(em, "PUT", assignment, {
      properties: { roleDefinitionId: `/subscriptions/${sub}/providers/Microsoft.Authorization/roleDefinitions/${roleGuid}`, principalId: app.oid, principalType: "ServicePrincipal" },
    }).status).toBe(201);
    expect(armCall(em, "GET", `${rg}?api-version=2025-04-01`, undefined, app).status).toBe(200);

    expect(armCall(em, "DELETE", assignment).status).toBe(200);
    expect(armCall(em, "GET", assignment).status).toBe(404);
    // still cached: it still grants, and its role definition cannot go yet
    expect(armCall(em, "GET", `${rg}?api-version=2025-04-01`, undefined, app).status).toBe(200);
    expect(armCall(em, "DELETE", defPath)).toMatchObject({ status: 409, body: { error: { code: "RoleDefinitionHasAssignments" } } });
    // made again under its name: an assignment like any other (not "exists", not dropped with the old one)
    expect(armCall(em, "PUT", assignment, {
      properties: { roleDefinitionId: `/subscriptions/${sub}/providers/Microsoft.Authorization/roleDefinitions/${roleGuid}`, principalId: app.oid, principalType: "ServicePrincipal" },
    }).status).toBe(201);
    expect(armCall(em, "DELETE", assignment).status).toBe(200);

    // dropped from the caches: refused, and the definition can go
    em.updateSettings({ roleAssignmentRemovalDelayMs: 0 });
    expect(armCall(em, "GET", `${rg}?api-version=2025-04-01`, undefined, app)).toMatchObject({ status: 403, body: { error: { code: "AuthorizationFailed" } } });
    expect(armCall(em, "DELETE", defPath).status).toBe(200);
  });
});
