// The Azure emulator's Entra ID, through @azure/identity: client secrets, workload identity with
// the test cluster's service-account tokens, managed identity, token expiry.
import { generateKeyPairSync, sign } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ResourceManagementClient } from "@azure/arm-resources";
import { ManagedServiceIdentityClient } from "@azure/arm-msi";
import { ClientSecretCredential, ManagedIdentityCredential, WorkloadIdentityCredential } from "@azure/identity";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kubeIssuer } from "../harness/azure-kube.js";
import {
  azureClientOptions,
  azureControl,
  azureCredentialOptions,
  azureInfo,
  azureTestCredential,
  deleteNamespace,
  freshNamespace,
  kubeAdmin,
  kubeconfigPath,
} from "../harness/helpers.js";

const ARM = "https://management.azure.com/.default";

function claims(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString("utf8")) as Record<string, unknown>;
}

describe("Azure emulator: Entra ID", () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("issues a signed access token for a client secret, with tenant, object ID, app ID, audience and expiry", async () => {
    const info = await azureInfo();
    const t = await (await azureTestCredential()).getToken(ARM);
    const c = claims(t.token);
    expect(c.tid).toBe(info.tenantId);
    expect(c.oid).toBe(info.admin.objectId);
    expect(c.appid).toBe(info.admin.clientId);
    expect(c.aud).toBe("https://management.azure.com");
    // the SDK computes the expiry from expires_in on its own clock
    expect(Math.abs(Number(c.exp) * 1000 - t.expiresOnTimestamp)).toBeLessThanOrEqual(2000);
    expect(Number(c.exp) - Number(c.iat)).toBe(info.settings.tokenLifetimeS);
    // the discovery document publishes the key that verifies it
    const rm = new ResourceManagementClient(await azureTestCredential(), info.subscriptionId, azureClientOptions());
    await rm.resourceGroups.createOrUpdate("entra-ok", { location: "eastus" });
    expect((await rm.resourceGroups.checkExistence("entra-ok")).body).toBe(true);
  });

  it("answers a wrong secret with AADSTS7000215 and an unknown client with AADSTS700016, surfaced by the SDK", async () => {
    const info = await azureInfo();
    const wrong = new ClientSecretCredential(info.tenantId, info.admin.clientId, "not-the-secret", azureCredentialOptions());
    await expect(wrong.getToken(ARM)).rejects.toThrow(/AADSTS7000215/);
    const unknown = new ClientSecretCredential(info.tenantId, "00000000-1111-2222-3333-444444444444", "x", azureCredentialOptions());
    await expect(unknown.getToken(ARM)).rejects.toThrow(/AADSTS700016/);
    const otherTenant = new ClientSecretCredential("11111111-2222-3333-4444-555555555555", info.admin.clientId, info.admin.clientSecret, azureCredentialOptions());
    // the tenant's discovery document answers AADSTS90002, which MSAL reports as an endpoint resolution error
    await expect(otherTenant.getToken(ARM)).rejects.toThrow(/endpoints_resolution_error|AADSTS90002/);
  });

  it("an injected 503 on the token endpoint answers in the OAuth error shape and is retried by the SDK", async () => {
    const ctl = azureControl();
    const info = await azureInfo();
    await ctl.addFault({ operation: "token", status: 503, retryAfterS: 0, count: 1 });
    const { lastSeq } = await ctl.clearRequests();
    const cred = new ClientSecretCredential(info.tenantId, info.admin.clientId, info.admin.clientSecret, { ...azureCredentialOptions(), retryOptions: { retryDelayInMs: 5 } });
    const t = await cred.getToken(ARM);
    expect(claims(t.token).oid).toBe(info.admin.objectId);
    expect((await ctl.requests(lastSeq)).value.filter((e) => e.operation === "token").map((e) => e.status)).toEqual([503, 200]);
  });

  it("keeps tenants apart: a principal of another tenant cannot use this subscription", async () => {
    const ctl = azureControl();
    const info = await azureInfo();
    const t2 = await ctl.createTenant({ domain: "other.onmicrosoft.com" });
    const p = await ctl.createPrincipal({ tenantId: t2.id, displayName: "other-app" });
    const cred = new ClientSecretCredential(t2.id, p.clientId, p.secret!, azureCredentialOptions());
    const rm = new ResourceManagementClient(cred, info.subscriptionId, azureClientOptions());
    await expect(rm.resourceGroups.get("entra-ok")).rejects.toMatchObject({ statusCode: 401, code: "InvalidAuthenticationTokenTenant" });
  });

  it("uses short token lifetimes so that clients refresh", async () => {
    const ctl = azureControl();
    await ctl.settings({ tokenLifetimeS: 2 });
    try {
      const info = await azureInfo();
      const cred = await azureTestCredential();
      const t1 = await cred.getToken(ARM);
      expect(claims(t1.token).exp as number).toBe((claims(t1.token).iat as number) + 2);
      const rm = new ResourceManagementClient(cred, info.subscriptionId, azureClientOptions());
      const since = (await ctl.requests()).lastSeq;
      await rm.resourceGroups.get("entra-ok");
      await new Promise((r) => setTimeout(r, 2100));
      await rm.resourceGroups.get("entra-ok");
      const log = (await ctl.requests(since)).value;
      // every ARM call succeeded, and the expired token was replaced by a new one
      expect(log.filter((e) => e.operation === "Microsoft.Resources/subscriptions/resourceGroups/read").map((e) => e.status)).toEqual([200, 200]);
      expect(log.filter((e) => e.operation === "token").length).toBeGreaterThanOrEqual(1);
    } finally {
      await ctl.settings({ tokenLifetimeS: 3600 });
    }
  });

  describe("workload identity (federated credentials against the test cluster's issuer)", () => {
    let ns: string;
    let issuer: string;
    let saToken: string;
    beforeAll(async () => {
      ns = await freshNamespace("azwi");
      issuer = await kubeIssuer(kubeconfigPath());
      await kubeAdmin().expect("POST", `/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: "operator" } });
      const tr = await kubeAdmin().expect("POST", `/api/v1/namespaces/${ns}/serviceaccounts/operator/token`, {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec: { audiences: ["api://AzureADTokenExchange"], expirationSeconds: 3600 },
      });
      saToken = (tr.body as { status: { token: string } }).status.token;
    });
    afterAll(async () => {
      await deleteNamespace(ns);
    });

    function tokenFile(content: string): string {
      const d = mkdtempSync(join(tmpdir(), "azwi-"));
      dirs.push(d);
      const f = join(d, "token");
      writeFileSync(f, content);
      return f;
    }

    it("exchanges a projected service-account token for an access token when issuer, subject and audience match", async () => {
      const info = await azureInfo();
      const p = await azureControl().createPrincipal({
        displayName: "wi-app",
        secret: false,
        federatedCredentials: [{ issuer, subject: `system:serviceaccount:${ns}:operator`, audiences: ["api://AzureADTokenExchange"] }],
      });
      const cred = new WorkloadIdentityCredential({ tenantId: info.tenantId, clientId: p.clientId, tokenFilePath: tokenFile(saToken), ...azureCredentialOptions() });
      const t = await cred.getToken(ARM);
      expect(claims(t.token).oid).toBe(p.objectId);
      expect(claims(t.token).appid).toBe(p.clientId);
    });

    it("accepts the token for a user-assigned identity with a federated identity credential (created through ARM)", async () => {
      const info = await azureInfo();
      const admin = await azureTestCredential();
      const rm = new ResourceManagementClient(admin, info.subscriptionId, azureClientOptions());
      await rm.resourceGroups.createOrUpdate("wi-rg", { location: "eastus" });
      const msi = new ManagedServiceIdentityClient(admin, info.subscriptionId, azureClientOptions());
      const ident = await msi.userAssignedIdentities.createOrUpdate("wi-rg", "operator-identity", { location: "eastus" });
      await msi.federatedIdentityCredentials.createOrUpdate("wi-rg", "operator-identity", "operator-sa", {
        issuer,
        subject: `system:serviceaccount:${ns}:operator`,
        audiences: ["api://AzureADTokenExchange"],
      });
      const cred = new WorkloadIdentityCredential({ tenantId: info.tenantId, clientId: ident.clientId!, tokenFilePath: tokenFile(saToken), ...azureCredentialOptions() });
      const t = await cred.getToken(ARM);
      expect(claims(t.token).oid).toBe(ident.principalId);
      // removing the credential removes the trust
      await msi.federatedIdentityCredentials.delete("wi-rg", "operator-identity", "operator-sa");
      const again = new WorkloadIdentityCredential({ tenantId: info.tenantId, clientId: ident.clientId!, tokenFilePath: tokenFile(saToken), ...azureCredentialOptions() });
      await expect(again.getToken(ARM)).rejects.toThrow(/AADSTS700211/);
    });

    it("refuses a token whose subject has no federated credential (AADSTS700213)", async () => {
      const info = await azureInfo();
      const p = await azureControl().createPrincipal({
        displayName: "wi-other-subject",
        secret: false,
        federatedCredentials: [{ issuer, subject: `system:serviceaccount:${ns}:someone-else` }],
      });
      const cred = new WorkloadIdentityCredential({ tenantId: info.tenantId, clientId: p.clientId, tokenFilePath: tokenFile(saToken), ...azureCredentialOptions() });
      await expect(cred.getToken(ARM)).rejects.toThrow(/AADSTS700213/);
    });

    it("refuses a forged token: same claims, signed with another key (AADSTS700027)", async () => {
      const info = await azureInfo();
      const p = await azureControl().createPrincipal({
        displayName: "wi-forged",
        secret: false,
        federatedCredentials: [{ issuer, subject: `system:serviceaccount:${ns}:operator` }],
      });
      const [h, b] = saToken.split(".");
      const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
      const forged = `${h}.${b}.${sign("sha256", Buffer.from(`${h}.${b}`), privateKey).toString("base64url")}`;
      const cred = new WorkloadIdentityCredential({ tenantId: info.tenantId, clientId: p.clientId, tokenFilePath: tokenFile(forged), ...azureCredentialOptions() });
      await expect(cred.getToken(ARM)).rejects.toThrow(/AADSTS700027/);
    });
  });

  describe("managed identity", () => {
    const saved = process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;
    afterAll(() => {
      if (saved === undefined) delete process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;
      else process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = saved;
    });

    it("gives ManagedIdentityCredential tokens of a user-assigned identity (by client ID) and of a system-assigned one", async () => {
      const info = await azureInfo();
      const admin = await azureTestCredential();
      const rm = new ResourceManagementClient(admin, info.subscriptionId, azureClientOptions());
      await rm.resourceGroups.createOrUpdate("mi-rg", { location: "eastus" });
      const msi = new ManagedServiceIdentityClient(admin, info.subscriptionId, azureClientOptions());
      const ident = await msi.userAssignedIdentities.createOrUpdate("mi-rg", "pod-identity", { location: "eastus" });
      const host = await azureControl().createManagedIdentityHost({ name: "pod-a", userAssignedIdentityIds: [ident.id!], systemAssigned: true });
      process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = host.podIdentityAuthorityHost;

      const user = new ManagedIdentityCredential({ clientId: ident.clientId! });
      const ut = await user.getToken(ARM);
      expect(claims(ut.token).oid).toBe(ident.principalId);
      expect(claims(ut.token).xms_mirid).toBe(ident.id);

      const system = new ManagedIdentityCredential();
      const st = await system.getToken(ARM);
      expect(claims(st.token).oid).toBe(host.systemAssigned!.objectId);

      // the identity has no role yet: Resource Manager names it in the denial
      const asIdentity = new ResourceManagementClient(user, info.subscriptionId, azureClientOptions());
      await expect(asIdentity.resourceGroups.get("mi-rg")).rejects.toMatchObject({ statusCode: 403, code: "AuthorizationFailed", message: expect.stringContaining(ident.clientId!) });
      await azureControl().assignRole({ principalId: ident.principalId!, roleName: "Reader", scope: `/subscriptions/${info.subscriptionId}/resourceGroups/mi-rg` });
      expect((await asIdentity.resourceGroups.get("mi-rg")).name).toBe("mi-rg");

      // an identity the host does not have
      const stranger = new ManagedIdentityCredential({ clientId: "99999999-8888-7777-6666-555555555555" });
      await expect(stranger.getToken(ARM)).rejects.toThrow(/Identity not found/);
    });
  });
});
