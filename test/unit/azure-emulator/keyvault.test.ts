// Unit tests of the emulator's Key Vault: vaults and secrets through Resource Manager, and the
// secrets data plane (authentication with its challenge, the RBAC and access-policy permission
// models, SecretNotFound, disabled secrets), without HTTP.
import { describe, expect, it } from "vitest";
import { Emulator } from "../../azure-emulator/emulator.js";
import { GET_SECRET, keyVaultRequest, type KeyVaultAnswer } from "../../azure-emulator/keyvault.js";
import type { Principal } from "../../azure-emulator/state.js";
import { armCall } from "./arm-call.js";

const SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6";
const KV = "https://vault.azure.net";

function setup(seed = "kv", rbac = true): { em: Emulator; vaultId: string; sub: string; app: Principal } {
  const em = new Emulator(seed);
  const info = em.getInfo();
  const v = em.seedKeyVault({ resourceGroup: "secrets-rg", name: "Tower-Vault", enableRbacAuthorization: rbac, secrets: { "tower-token": "s3cr3t-v1", other: "x" } });
  const app = em.createPrincipal({ tenantId: info.tenantId, displayName: "vm", secret: "p" });
  return { em, vaultId: v.id, sub: info.subscriptionId, app };
}

function token(em: Emulator, p: Principal, aud = KV): string {
  return `Bearer ${em.entra.issue(p, aud, "1").token}`;
}

function get(em: Emulator, path: string, authorization?: string, apiVersion: string | null = "7.4"): KeyVaultAnswer {
  const query = new URLSearchParams(apiVersion === null ? "" : `api-version=${apiVersion}`);
  return keyVaultRequest(em.keyVaultHost(), { method: "GET", path, query, ...(authorization ? { authorization } : {}) });
}

const errorOf = (a: KeyVaultAnswer): { code: string; message: string; innererror?: { code: string } } => (a.body as { error: { code: string; message: string; innererror?: { code: string } } }).error;

describe("Key Vault secrets data plane (emulator)", () => {
  it("serves the current and a given version to a principal holding Key Vault Secrets User on the vault: value, id, attributes", () => {
    const { em, vaultId, app } = setup();
    em.assign(app.oid, vaultId, SECRETS_USER);
    const first = get(em, "tower-vault/secrets/tower-token", token(em, app));
    expect(first.status).toBe(200);
    const body = first.body as { value: string; id: string; attributes: { enabled: boolean; created: number; updated: number; recoveryLevel: string } };
    expect(body.value).toBe("s3cr3t-v1");
    expect(body.id).toMatch(/^https:\/\/tower-vault\.vault\.azure\.net\/secrets\/tower-token\/[0-9a-f]{32}$/);
    expect(body.attributes).toMatchObject({ enabled: true, recoveryLevel: "Recoverable+Purgeable" });
    expect(typeof body.attributes.created).toBe("number");
    // A new version through Resource Manager: the current one changes, the old one stays readable by version.
    const put = armCall(em, "PUT", `${vaultId}/secrets/tower-token?api-version=2024-11-01`, { properties: { value: "s3cr3t-v2" } });
    expect(put.status).toBe(200);
    expect(JSON.stringify(put.body)).not.toContain("s3cr3t");
    expect((get(em, "tower-vault/secrets/tower-token", token(em, app)).body as { value: string }).value).toBe("s3cr3t-v2");
    const v1 = body.id.split("/").pop()!;
    expect((get(em, `tower-vault/secrets/tower-token/${v1}`, token(em, app)).body as { value: string }).value).toBe("s3cr3t-v1");
    // Resource Manager never returns the value.
    const arm = armCall(em, "GET", `${vaultId}/secrets/tower-token?api-version=2024-11-01`);
    expect(arm.status).toBe(200);
    expect(JSON.stringify(arm.body)).not.toContain("s3cr3t");
  });

  it("answers 401 with a challenge without a token, with a token for another audience, of another tenant, expired or not ours", () => {
    const { em, vaultId, app } = setup();
    em.assign(app.oid, vaultId, SECRETS_USER);
    const none = get(em, "tower-vault/secrets/tower-token");
    expect(none.status).toBe(401);
    expect(errorOf(none)).toMatchObject({ code: "Unauthorized", message: expect.stringContaining("AKV10000") });
    expect(none.headers["www-authenticate"]).toBe(`Bearer authorization="/${em.getInfo().tenantId}", resource="https://vault.azure.net"`);
    const arm = get(em, "tower-vault/secrets/tower-token", token(em, app, "https://management.azure.com"));
    expect(arm.status).toBe(401);
    expect(errorOf(arm).message).toContain("AKV10022: Invalid audience. Expected https://vault.azure.net, found: https://management.azure.com");
    expect(arm.headers["www-authenticate"]).toContain('resource="https://vault.azure.net"');
    const other = em.dir.createTenant({ domain: "other.onmicrosoft.com" });
    const stranger = em.createPrincipal({ tenantId: other.id, displayName: "stranger", secret: "p" });
    const foreign = get(em, "tower-vault/secrets/tower-token", token(em, stranger));
    expect(foreign.status).toBe(401);
    expect(errorOf(foreign).message).toContain("AKV10032: Invalid issuer");
    em.settings.tokenLifetimeS = -60;
    const expired = get(em, "tower-vault/secrets/tower-token", token(em, app));
    em.settings.tokenLifetimeS = 3600;
    expect(expired.status).toBe(401);
    expect(errorOf(expired).message).toContain("TokenExpired");
    expect(get(em, "tower-vault/secrets/tower-token", "Bearer not-a-token").status).toBe(401);
    // the same caller with a proper token is let in
    expect(get(em, "tower-vault/secrets/tower-token", token(em, app)).status).toBe(200);
  });

  it("answers 403 ForbiddenByRbac naming the caller, getSecret and the secret's scope without a data-action grant (Owner and Reader included)", () => {
    const { em, vaultId, sub, app } = setup();
    const denied = get(em, "tower-vault/secrets/tower-token", token(em, app));
    expect(denied.status).toBe(403);
    expect(errorOf(denied)).toMatchObject({ code: "Forbidden", innererror: { code: "ForbiddenByRbac" } });
    expect(errorOf(denied).message).toContain(`Action: '${GET_SECRET}'`);
    expect(errorOf(denied).message).toContain(`Resource: '${`${vaultId}/secrets/tower-token`.toLowerCase()}'`);
    expect(errorOf(denied).message).toContain(`oid=${app.oid}`);
    expect(JSON.stringify(denied.body)).not.toContain("s3cr3t");
    // Reader on the subscription and the admin's Owner hold no data actions.
    em.assign(app.oid, `/subscriptions/${sub}`, "acdd72a7-3385-48ef-bd42-f606fba81ae7");
    expect(get(em, "tower-vault/secrets/tower-token", token(em, app)).status).toBe(403);
    const admin = em.dir.principal(em.getInfo().admin.objectId)!;
    expect(get(em, "tower-vault/secrets/tower-token", token(em, admin)).status).toBe(403);
    // A grant on one secret covers that secret only.
    em.assign(app.oid, `${vaultId}/secrets/other`, SECRETS_USER);
    expect(get(em, "tower-vault/secrets/other", token(em, app)).status).toBe(200);
    expect(get(em, "tower-vault/secrets/tower-token", token(em, app)).status).toBe(403);
    // Authorization comes before the lookup: a missing secret is 403 too for a caller without access to it.
    expect(get(em, "tower-vault/secrets/missing", token(em, app)).status).toBe(403);
  });

  it("answers 404 SecretNotFound for a missing secret or version, 403 SecretDisabled for a disabled one, 400 without api-version", () => {
    const { em, vaultId, app } = setup();
    em.assign(app.oid, vaultId, SECRETS_USER);
    const missing = get(em, "tower-vault/secrets/missing", token(em, app));
    expect(missing.status).toBe(404);
    expect(errorOf(missing)).toMatchObject({ code: "SecretNotFound", message: expect.stringContaining("(name/id) missing was not found") });
    const version = get(em, `tower-vault/secrets/tower-token/${"0".repeat(32)}`, token(em, app));
    expect(version.status).toBe(404);
    expect(errorOf(version).code).toBe("SecretNotFound");
    em.seedKeyVault({ resourceGroup: "secrets-rg", name: "tower-vault", secrets: { off: { value: "v", enabled: false } } });
    const off = get(em, "tower-vault/secrets/off", token(em, app));
    expect(off.status).toBe(403);
    expect(errorOf(off)).toMatchObject({ code: "Forbidden", innererror: { code: "SecretDisabled" } });
    expect(get(em, "tower-vault/secrets/tower-token", token(em, app), null).status).toBe(400);
    expect(get(em, "tower-vault/secrets/tower-token", token(em, app), "1999-01-01").status).toBe(400);
    expect(get(em, "no-such-vault/secrets/tower-token", token(em, app)).status).toBe(404);
  });

  it("with the access-policy permission model: a get-secret policy for the caller admits it, RBAC grants do not", () => {
    const { em, vaultId, app } = setup("kv-policy", false);
    em.assign(app.oid, vaultId, SECRETS_USER);
    const denied = get(em, "tower-vault/secrets/tower-token", token(em, app));
    expect(denied.status).toBe(403);
    expect(errorOf(denied)).toMatchObject({ code: "Forbidden", innererror: { code: "ForbiddenByPolicy" } });
    expect(errorOf(denied).message).toContain("does not have secrets get permission");
    const tenantId = em.getInfo().tenantId;
    em.seedKeyVault({ resourceGroup: "secrets-rg", name: "tower-vault-2", enableRbacAuthorization: false, accessPolicies: [{ tenantId, objectId: app.oid, permissions: { secrets: ["Get", "List"] } }], secrets: { t: "v2" } });
    const ok = get(em, "tower-vault-2/secrets/t", token(em, app));
    expect(ok.status).toBe(200);
    expect((ok.body as { value: string }).value).toBe("v2");
  });

  it("keeps vault names globally unique and valid, and needs a tenant and a SKU (Resource Manager)", () => {
    const { em, sub } = setup();
    expect(armCall(em, "PUT", `/subscriptions/${sub}/resourceGroups/other?api-version=2025-04-01`, { location: "westeurope" }).status).toBe(201);
    const props = { tenantId: em.getInfo().tenantId, sku: { family: "A", name: "standard" } };
    const taken = armCall(em, "PUT", `/subscriptions/${sub}/resourceGroups/other/providers/Microsoft.KeyVault/vaults/TOWER-vault?api-version=2024-11-01`, { location: "westeurope", properties: props });
    expect(taken.status).toBe(409);
    expect(JSON.stringify(taken.body)).toContain("VaultAlreadyExists");
    expect(armCall(em, "PUT", `/subscriptions/${sub}/resourceGroups/other/providers/Microsoft.KeyVault/vaults/a--b?api-version=2024-11-01`, { location: "westeurope", properties: props }).status).toBe(400);
    expect(armCall(em, "PUT", `/subscriptions/${sub}/resourceGroups/other/providers/Microsoft.KeyVault/vaults/novault?api-version=2024-11-01`, { location: "westeurope", properties: { tenantId: props.tenantId } }).status).toBe(400);
    const ok = armCall(em, "PUT", `/subscriptions/${sub}/resourceGroups/other/providers/Microsoft.KeyVault/vaults/second-vault?api-version=2024-11-01`, { location: "westeurope", properties: props });
    expect(ok.status).toBe(201);
    expect(ok.body).toMatchObject({ properties: { vaultUri: "https://second-vault.vault.azure.net/", enableRbacAuthorization: false } });
    // Deleting the vault deletes its secrets.
    const vault = `/subscriptions/${sub}/resourceGroups/secrets-rg/providers/Microsoft.KeyVault/vaults/tower-vault`;
    expect(armCall(em, "DELETE", `${vault}?api-version=2024-11-01`).status).toBe(200);
    expect(em.arm.get(`${vault}/secrets/tower-token`)).toBeUndefined();
  });
});
