// Azurite (blob) as the harness starts it: reachable with @azure/storage-blob over HTTPS through the
// account key and through bearer tokens, with Azurite's basic OAuth rules enforced.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { getCACertificates, setDefaultCACertificates } from "node:tls";
import type { AccessToken, TokenCredential } from "@azure/core-auth";
import { ManagedIdentityCredential } from "@azure/identity";
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY } from "../harness/azurite.js";
import { azureControl, azureTestCredential } from "../harness/helpers.js";

const endpoint = inject("azuriteBlobEndpoint");

beforeAll(() => {
  // Trust Azurite's CA in addition to the default ones; TLS verification stays on.
  setDefaultCACertificates([...getCACertificates("default"), readFileSync(inject("azuriteCaPath"), "utf8")]);
});

/** A token shaped like Entra's v1 storage tokens (Azurite's basic OAuth does not check signatures). */
function tokenCredential(claims: Record<string, unknown>): TokenCredential & { scopes: string[] } {
  const scopes: string[] = [];
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const payload = { iss: "https://sts.windows.net/72f988bf-0000-0000-0000-000000000000/", aud: "https://storage.azure.com", iat: now, nbf: now, exp: now + 3600, oid: "oid", tid: "tid", ...claims };
  const token = `${b64({ alg: "RS256", typ: "JWT" })}.${b64(payload)}.${randomBytes(32).toString("base64url")}`;
  return {
    scopes,
    async getToken(s: string | string[]): Promise<AccessToken> {
      scopes.push(...(Array.isArray(s) ? s : [s]));
      return { token, expiresOnTimestamp: (now + 3600) * 1000 };
    },
  };
}

const name = (p: string) => `${p}-${randomBytes(4).toString("hex")}`;

describe("Azurite", () => {
  const savedPodIdentityHost = process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;
  afterAll(() => {
    if (savedPodIdentityHost === undefined) delete process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;
    else process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = savedPodIdentityHost;
  });

  it("serves the blob endpoint over HTTPS for the development account", () => {
    expect(endpoint).toMatch(new RegExp(`^https://127\\.0\\.0\\.1:\\d+/${AZURITE_ACCOUNT}$`));
  });

  it("round-trips a container and a blob with the account key", async () => {
    const svc = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY));
    const container = svc.getContainerClient(name("key"));
    await container.create();
    const body = `work dir ${randomBytes(8).toString("hex")}`;
    await container.getBlockBlobClient("a/b.txt").upload(body, Buffer.byteLength(body), { blobHTTPHeaders: { blobContentType: "text/plain" } });
    const listed: string[] = [];
    for await (const b of container.listBlobsFlat()) listed.push(b.name);
    expect(listed).toEqual(["a/b.txt"]);
    expect((await container.getBlockBlobClient("a/b.txt").downloadToBuffer()).toString()).toBe(body);
    await container.delete();
    expect(await container.exists()).toBe(false);
  });

  it("refuses a wrong account key", async () => {
    const wrong = Buffer.from(randomBytes(64)).toString("base64");
    const svc = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(AZURITE_ACCOUNT, wrong));
    // Azure answers 403 AuthenticationFailed; Azurite with --oauth answers 400 InvalidAuthenticationInfo
    // (its token check rejects the SharedKey header once the key check failed). Refused either way.
    const err = (await svc.getContainerClient(name("wrong")).create().then(() => undefined, (e: unknown) => e)) as { statusCode?: number } | undefined;
    expect([400, 403]).toContain(err?.statusCode);
    const listed: string[] = [];
    const good = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY));
    for await (const c of good.listContainers({ prefix: "wrong-" })) listed.push(c.name);
    expect(listed).toEqual([]);
  });

  it("accepts a bearer token for the storage audience with an Entra v1 issuer, asked for the storage scope", async () => {
    const cred = tokenCredential({});
    const svc = new BlobServiceClient(endpoint, cred);
    const container = svc.getContainerClient(name("token"));
    await container.create();
    await container.getBlockBlobClient("x").upload("hi", 2);
    expect((await container.getBlockBlobClient("x").downloadToBuffer()).toString()).toBe("hi");
    // The SDK asks the credential for the storage scope — what the emulator's Entra must issue for.
    expect(cred.scopes).toContain("https://storage.azure.com/.default");
    await container.delete();
  });

  it("refuses tokens with the wrong issuer, audience or lifetime", async () => {
    const now = Math.floor(Date.now() / 1000);
    const bad: [string, Record<string, unknown>][] = [
      ["v2 issuer", { iss: "https://login.microsoftonline.com/tid/v2.0" }],
      ["management audience", { aud: "https://management.azure.com/" }],
      ["expired", { iat: now - 7200, nbf: now - 7200, exp: now - 3600 }],
      ["not yet valid", { nbf: now + 3600 }],
    ];
    for (const [why, claims] of bad) {
      const svc = new BlobServiceClient(endpoint, tokenCredential(claims), { retryOptions: { maxTries: 1 } });
      await expect(svc.getContainerClient(name("bad")).create(), why).rejects.toMatchObject({ statusCode: 403 });
    }
  });

  it("accepts tokens the emulator's Entra issues for storage: client secret and managed identity", async () => {
    const secret = await azureTestCredential();
    const svc = new BlobServiceClient(endpoint, secret);
    const container = svc.getContainerClient(name("entra"));
    await container.create();
    await container.getBlockBlobClient("from-secret").upload("s", 1);

    const host = await azureControl().createManagedIdentityHost({ name: name("blob-pod"), systemAssigned: true });
    process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = host.podIdentityAuthorityHost;
    const mi = new BlobServiceClient(endpoint, new ManagedIdentityCredential());
    const viaMi = mi.getContainerClient(container.containerName);
    expect((await viaMi.getBlockBlobClient("from-secret").downloadToBuffer()).toString()).toBe("s");
    await viaMi.getBlockBlobClient("from-mi").upload("m", 1);
    const names: string[] = [];
    for await (const b of container.listBlobsFlat()) names.push(b.name);
    expect(names).toEqual(["from-mi", "from-secret"]);
    await container.delete();
  });
});
