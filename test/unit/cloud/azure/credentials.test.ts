// Azure credentials: Secret keys, the explicit ambient choice, error mapping; and a real
// ClientSecretCredential + ARM client against a tiny local HTTPS stub (authority host, ARM endpoint
// and CA from configuration; a rejected secret is InvalidCredentials without the value in the message).
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createAzureClients,
  endpointsFromEnv,
  mapAzureError,
  parseAzureCredentials,
  azCall,
  ThrottleGate,
} from "../../../../src/cloud/azure/clients.js";
import { CloudError, type ResolvedCredentials } from "../../../../src/cloud/provider.js";
import { RestLikeError } from "./fake-azure.js";
import { createClusterPki } from "../../../harness/certs.js";

const CLIENT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const secret = (data: Record<string, string>): ResolvedCredentials => ({ source: "secret", secretName: "ns/azure-creds", data });

describe("Azure credentials", () => {
  it("reads tenantId, clientId, clientSecret and optional subscriptionId / storageAccount", () => {
    const id = parseAzureCredentials(secret({ tenantId: "t1", clientId: CLIENT, clientSecret: "s3cr3t", subscriptionId: "12345678-aaaa-bbbb-cccc-1234567890ab", storageAccount: "wd" }), {});
    expect(id).toMatchObject({ kind: "secret", tenantId: "t1", clientId: CLIENT, subscriptionId: "12345678-aaaa-bbbb-cccc-1234567890ab", storageAccount: "wd", label: "Secret ns/azure-creds" });
  });

  it("names the Secret and the missing or bad key, never a value", () => {
    for (const [data, msg] of [
      [{ clientId: CLIENT, clientSecret: "zz-value" }, /Secret ns\/azure-creds has no key "tenantId"/],
      [{ tenantId: "t", clientSecret: "zz-value" }, /has no key "clientId"/],
      [{ tenantId: "t", clientId: CLIENT, clientSecret: " " }, /has no key "clientSecret"/],
      [{ tenantId: "t", clientId: "nope", clientSecret: "zz-value" }, /key "clientId" is not a GUID/],
      [{ tenantId: "t", clientId: CLIENT, clientSecret: "zz-value", subscriptionId: "x" }, /key "subscriptionId" is not a GUID/],
    ] as const) {
      const err = (() => {
        try {
          parseAzureCredentials(secret({ ...data }), {});
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(err).toMatchObject({ kind: "Terminal", reason: "InvalidCredentials" });
      expect((err as Error).message).toMatch(msg);
      expect((err as Error).message).not.toContain("zz-value");
    }
  });

  it("uses an ambient identity only when the operator chose one explicitly", () => {
    const ambient: ResolvedCredentials = { source: "ambient", data: {} };
    expect(() => parseAzureCredentials(ambient, {})).toThrow(/VMFORGE_AZURE_AMBIENT_IDENTITY=workload or managed/);
    expect(() => parseAzureCredentials(ambient, { ambient: "workload", workload: { tenantId: "t", clientId: CLIENT } })).toThrow(/AZURE_FEDERATED_TOKEN_FILE is not set/);
    expect(parseAzureCredentials(ambient, { ambient: "workload", workload: { tenantId: "t", clientId: CLIENT, tokenFilePath: "/var/run/token" } })).toMatchObject({ kind: "workload" });
    expect(parseAzureCredentials(ambient, { ambient: "managed" })).toMatchObject({ kind: "managed", label: "the operator's system-assigned managed identity" });
    expect(parseAzureCredentials(ambient, { ambient: "managed", managedIdentityClientId: CLIENT })).toMatchObject({ kind: "managed", clientId: CLIENT });
  });

  it("reads endpoints and the ambient choice from the environment", () => {
    const ep = endpointsFromEnv({ VMFORGE_AZURE_ARM_ENDPOINT: "https://127.0.0.1:8443/", VMFORGE_AZURE_AUTHORITY_HOST: "https://127.0.0.1:8443", VMFORGE_AZURE_AMBIENT_IDENTITY: "managed", VMFORGE_AZURE_LRO_POLL_MS: "50" });
    expect(ep).toMatchObject({ arm: "https://127.0.0.1:8443", authorityHost: "https://127.0.0.1:8443", ambient: "managed", lroPollMs: 50 });
    expect(() => endpointsFromEnv({ VMFORGE_AZURE_AMBIENT_IDENTITY: "chain" })).toThrow(/must be "workload" or "managed"/);
  });

  it("maps Azure errors to CloudErrors", () => {
    const who = "Secret ns/c";
    expect(mapAzureError(new RestLikeError(404, "ResourceGroupNotFound"), "a", who).kind).toBe("NotFound");
    expect(mapAzureError(new RestLikeError(429, "TooManyRequests", "x", "12"), "a", who)).toMatchObject({ kind: "Retryable", retryAfterMs: 12_000 });
    expect(mapAzureError(new RestLikeError(403, "AuthorizationFailed", "does not have authorization to perform action 'X/y/write'"), "X/y/write", who)).toMatchObject({ kind: "Terminal", reason: "AccessDenied" });
    // Azure refused another action than the call's own (a long-running create's final read): that one is named.
    expect(mapAzureError(new RestLikeError(403, "AuthorizationFailed", "does not have authorization to perform action 'X/t/read' over scope 's'"), "X/t/write", who).message)
      .toMatch(/^missing permission X\/t\/read \(for X\/t\/write\)/);
    expect(mapAzureError(new RestLikeError(403, "AuthorizationFailed", "does not have authorization to perform action 'X/y/write' over scope 's'"), "X/y/write", who).message).toMatch(/^missing permission X\/y\/write: /);
    expect(mapAzureError(new RestLikeError(404, "PlatformImageNotFound", "The platform image 'a:b:c:d' is not available."), "a", who)).toMatchObject({ kind: "Terminal", reason: "ImageNotFound" });
    expect(mapAzureError(new RestLikeError(409, "SkuNotAvailable"), "a", who)).toMatchObject({ kind: "Retryable", reason: "SkuNotAvailable" });
    expect(mapAzureError(new RestLikeError(400, "InvalidParameter"), "a", who)).toMatchObject({ kind: "Terminal", reason: "InvalidParameter" });
    // Assignments deleted a moment ago still count in Azure's caches: the definition's deletion waits.
    expect(mapAzureError(new RestLikeError(409, "RoleDefinitionHasAssignments"), "a", who)).toMatchObject({ kind: "Retryable", reason: "RoleDefinitionHasAssignments", retryAfterMs: 5_000 });
    expect(mapAzureError(new RestLikeError(503, "ServiceUnavailable"), "a", who)).toMatchObject({ kind: "Retryable" });
    expect(mapAzureError(new Error("ECONNRESET"), "a", who)).toMatchObject({ kind: "Retryable", reason: "AzureUnavailable" });
  });

  it("a 429's Retry-After holds later calls of the same kind (provider, read/write/delete) for every caller of the clients", async () => {
    let now = 1_000_000;
    const throttle = new ThrottleGate(() => now);
    const clients = { identity: { kind: "secret" as const, label: "Secret ns/c" }, throttle };
    let sent = 0;
    const call = (action: string, fail = false) => azCall(clients, "launch", action, async () => {
      sent++;
      if (fail) throw new RestLikeError(429, "TooManyRequests", "slow down", "3");
      return "ok";
    });
    await expect(call("Microsoft.Compute/virtualMachines/read", true)).rejects.toMatchObject({ reason: "Throttled", retryAfterMs: 3_000 });
    expect(sent).toBe(1);
    // Another read of the same provider, from any caller: not sent, with what is left of the hint.
    await expect(call("Microsoft.Compute/disks/read")).rejects.toMatchObject({ kind: "Retryable", reason: "Throttled", retryAfterMs: 3_000 });
    now += 1_000;
    await expect(call("Microsoft.Compute/virtualMachines/read")).rejects.toMatchObject({ retryAfterMs: 2_000 });
    expect(sent).toBe(1);
    // Writes of that provider, and reads of another, go on.
    await expect(call("Microsoft.Compute/virtualMachines/write")).resolves.toBe("ok");
    await expect(call("Microsoft.Network/networkInterfaces/read")).resolves.toBe("ok");
    expect(sent).toBe(3);
    now += 2_000;
    await expect(call("Microsoft.Compute/virtualMachines/read")).resolves.toBe("ok");
    expect(sent).toBe(4);
  });
});

describe("real SDK clients against a local stub", () => {
  let server: Server;
  let base = "";
  let ca = "";
  let dir = "";
  const seen: string[] = [];
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "vmforge-azstub-"));
    const pki = await createClusterPki(dir);
    ca = readFileSync(pki.caCert, "utf8");
    server = createServer({ cert: readFileSync(pki.serverCert), key: readFileSync(pki.serverKey) }, (req, res) => {
      let body = "";
      req.on("data", (d: Buffer) => (body += d.toString()));
      req.on("end", () => {
        seen.push(`${req.method} ${req.url}`);
        res.setHeader("content-type", "application/json");
        if (req.url?.includes("/.well-known/openid-configuration")) {
          const t = req.url.split("/")[1];
          res.end(JSON.stringify({
            token_endpoint: `${base}/${t}/oauth2/v2.0/token`,
            authorization_endpoint: `${base}/${t}/oauth2/v2.0/authorize`,
            issuer: `${base}/${t}/v2.0`,
            jwks_uri: `${base}/${t}/discovery/v2.0/keys`,
            end_session_endpoint: `${base}/${t}/oauth2/v2.0/logout`,
          }));
          return;
        }
        if (req.url?.includes("/oauth2/v2.0/token")) {
          if (body.includes("client_secret=good")) {
            res.end(JSON.stringify({ token_type: "Bearer", expires_in: 3600, ext_expires_in: 3600, access_token: "tok-1" }));
          } else if (body.includes("client_secret=transient")) {
            // Entra's own passing trouble carries an AADSTS code too.
            res.statusCode = 503;
            res.end(JSON.stringify({ error: "temporarily_unavailable", error_description: "AADSTS90033: A transient error has occurred. Please try again.", error_codes: [90033] }));
          } else {
            res.statusCode = 401;
            res.end(JSON.stringify({ error: "invalid_client", error_description: "AADSTS7000215: Invalid client secret provided.", error_codes: [7000215] }));
          }
          return;
        }
        if (req.url?.includes("/resourcegroups/rg1") || req.url?.includes("/resourceGroups/rg1")) {
          if (req.headers.authorization !== "Bearer tok-1") {
            res.statusCode = 401;
            res.end(JSON.stringify({ error: { code: "InvalidAuthenticationToken", message: "bad token" } }));
            return;
          }
          res.end(JSON.stringify({ id: "/subscriptions/s/resourceGroups/rg1", name: "rg1", location: "westeurope", tags: { a: "b" } }));
          return;
        }
        res.statusCode = 404;
        res.end(JSON.stringify({ error: { code: "ResourceNotFound", message: "nothing here" } }));
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }, 60_000);
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });

  it("gets a token from the configured authority host and calls the configured ARM endpoint", async () => {
    const id = parseAzureCredentials(secret({ tenantId: "tenant-1", clientId: CLIENT, clientSecret: "good" }), {});
    const c = createAzureClients(id, "12345678-aaaa-bbbb-cccc-1234567890ab", { arm: base, authorityHost: base, ca });
    const rg = await azCall(c, "create", "Microsoft.Resources/subscriptions/resourceGroups/read", () => c.resources.resourceGroups.get("rg1"));
    expect(rg.tags).toEqual({ a: "b" });
    expect(seen.some((s) => s.startsWith("POST /tenant-1/oauth2/v2.0/token"))).toBe(true);
    await expect(azCall(c, "create", "Microsoft.Resources/subscriptions/resourceGroups/read", () => c.resources.resourceGroups.get("nope"))).rejects.toMatchObject({ kind: "NotFound" });
  }, 30_000);

  /** What reading a resource group with this client secret fails with (the token endpoint decides). */
  async function failureWith(clientSecret: string): Promise<unknown> {
    const id = parseAzureCredentials(secret({ tenantId: "tenant-1", clientId: CLIENT, clientSecret }), {});
    const c = createAzureClients(id, "12345678-aaaa-bbbb-cccc-1234567890ab", { arm: base, authorityHost: base, ca });
    return azCall(c, "create", "Microsoft.Resources/subscriptions/resourceGroups/read", () => c.resources.resourceGroups.get("rg1")).catch((e: unknown) => e);
  }

  it("a rejected client secret is Terminal InvalidCredentials with the Entra code, never the value", async () => {
    const err = await failureWith("wrong-zz-secret");
    expect(err).toBeInstanceOf(CloudError);
    expect(err).toMatchObject({ kind: "Terminal", reason: "InvalidCredentials" });
    expect((err as Error).message).toMatch(/^rejected by Entra ID \(AADSTS7000215\)/);
    expect((err as Error).message).not.toContain("wrong-zz-secret");
  }, 30_000);

  it("Entra's transient refusal (temporarily_unavailable, AADSTS90033) is Retryable, not a rejected credential", async () => {
    const err = await failureWith("transient");
    expect(err).toBeInstanceOf(CloudError);
    expect(err).toMatchObject({ kind: "Retryable", reason: "TokenUnavailable" });
  }, 30_000);
});
