// The Key Vault secrets data plane: `GET {vault}/secrets/{name}[/{version}]?api-version=7.x`, as a
// VM reads a secret with its identity's token. Vaults and secrets are Resource Manager resources
// (arm/keyvault.ts); a vault is served at `<emulator>/keyvault/<vault-name>` (Azure:
// `https://<vault-name>.vault.azure.net`), which is what VMFORGE_KEYVAULT_ENDPOINT points the
// launcher at. Behaviour followed: a bearer token for https://vault.azure.net of the vault's
// tenant (401 with a challenge otherwise), the vault's permission model (RBAC data action
// getSecret at the secret's scope, or a get-secret access policy; 403 Forbidden otherwise), then
// the secret (404 SecretNotFound, 403 SecretDisabled).
import type { Caller } from "./entra.js";
import type { Stored } from "./arm/framework.js";
import { findVault, secretVersion, vaultUri, VAULT_SECRET_TYPE } from "./arm/keyvault.js";
import { lc } from "./util.js";

/** Path prefix of every vault: /keyvault/<vault-name>. */
export const KEY_VAULT_PATH_PREFIX = "/keyvault/";
export const GET_SECRET = "Microsoft.KeyVault/vaults/secrets/getSecret/action";
/** Audiences Key Vault accepts (the resource URI with or without slash, and Key Vault's app ID). */
export const KEY_VAULT_AUDIENCES = new Set(["https://vault.azure.net", "https://vault.azure.net/", "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"]);
const API_VERSIONS = new Set(["2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6"]);

export interface KeyVaultHost {
  baseUrl(): string;
  authenticate(authorization: string | undefined): { caller: Caller } | { code: string; message: string };
  allowed(oid: string, dataAction: string, scope: string): boolean;
  resources(): Iterable<Stored>;
  get(id: string): Stored | undefined;
}

export interface KeyVaultRequest {
  method: string;
  /** The path below /keyvault/, e.g. `myvault/secrets/token`. */
  path: string;
  query: URLSearchParams;
  authorization?: string;
}

export interface KeyVaultAnswer {
  status: number;
  body: unknown;
  headers: Record<string, string>;
  /** For the request log and faults: the data action, and the caller when authenticated. */
  operation: string;
  caller?: Caller;
}

const err = (code: string, message: string, inner?: string): unknown => ({ error: { code, message, ...(inner ? { innererror: { code: inner } } : {}) } });

export function keyVaultRequest(host: KeyVaultHost, req: KeyVaultRequest): KeyVaultAnswer {
  const seg = req.path.split("/").filter(Boolean);
  const vaultName = seg[0] ?? "";
  const vault = findVault(host.resources(), vaultName);
  const headers: Record<string, string> = { "x-ms-keyvault-service-version": "1.9.2890.1", "x-ms-keyvault-network-info": "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;" };
  const answer = (status: number, body: unknown, operation = GET_SECRET, caller?: Caller): KeyVaultAnswer => ({ status, body, headers, operation, caller });
  if (!vault) {
    // In Azure the host name <vault>.vault.azure.net does not resolve: there is no answer at all.
    return answer(404, err("VaultNotFound", `No vault named '${vaultName}' exists (in Azure its host name would not resolve).`));
  }
  headers["x-ms-keyvault-region"] = String(vault.body.location);
  if (lc(seg[1] ?? "") !== "secrets" || seg.length < 3 || seg.length > 4) {
    return answer(400, err("NotSupportedByEmulator", `Only GET /secrets/{name}[/{version}] is emulated, not ${req.method} /${seg.slice(1).join("/")}.`), "");
  }
  if (req.method !== "GET") return answer(405, err("BadParameter", `The requested resource does not support http method '${req.method}'.`), "");
  const apiVersion = req.query.get("api-version");
  if (!apiVersion) return answer(400, err("BadParameter", "The request URI contains an invalid or missing api-version parameter."));
  if (!API_VERSIONS.has(apiVersion)) return answer(400, err("BadParameter", `The specified version (${apiVersion}) is not recognized. Consider using the latest supported version (7.6).`));

  // Authentication: a token of the vault's tenant for Key Vault; else 401 with the challenge a client answers with a token request.
  const tenant = String(vault.body.properties.tenantId);
  const challenge = { "www-authenticate": `Bearer authorization="${host.baseUrl()}/${tenant}", resource="https://vault.azure.net"` };
  const unauthorized = (message: string): KeyVaultAnswer => ({ ...answer(401, err("Unauthorized", message)), headers: { ...headers, ...challenge } });
  if (!req.authorization || !/^Bearer\s+\S/i.test(req.authorization)) return unauthorized("AKV10000: Request is missing a Bearer or PoP token.");
  const auth = host.authenticate(req.authorization);
  if (!("caller" in auth)) {
    if (auth.code === "ExpiredAuthenticationToken") return unauthorized("[TokenExpired] Error validating token: 'S2S12086'.");
    return unauthorized("AKV10046: Unable to resolve the key used for signature validation.");
  }
  const c = auth.caller;
  if (!KEY_VAULT_AUDIENCES.has(c.aud)) return unauthorized(`AKV10022: Invalid audience. Expected https://vault.azure.net, found: ${c.aud}.`);
  if (lc(c.tid) !== lc(tenant)) {
    return unauthorized(`AKV10032: Invalid issuer. Expected one of https://sts.windows.net/${tenant}/, https://login.microsoftonline.com/${tenant}/v2.0, found https://sts.windows.net/${c.tid}/.`);
  }

  // Authorization, by the vault's permission model.
  const name = seg[2]!;
  const version = seg[3];
  const scope = `${vault.id}/secrets/${name}`;
  const who = `appid=${c.appId};oid=${c.oid};iss=https://sts.windows.net/${c.tid}/`;
  const where = `${vault.name};location=${vault.body.location}`;
  if (vault.body.properties.enableRbacAuthorization === true) {
    if (!host.allowed(c.oid, GET_SECRET, scope)) {
      return answer(
        403,
        err(
          "Forbidden",
          `Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\n` +
            `Caller: ${who}\r\nAction: '${GET_SECRET}'\r\nResource: '${lc(scope)}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: ${where}\r\n`,
          "ForbiddenByRbac",
        ),
        GET_SECRET,
        c,
      );
    }
  } else {
    const policies = (vault.body.properties.accessPolicies ?? []) as { tenantId: string; objectId: string; applicationId?: string; permissions?: { secrets?: string[] } }[];
    const ok = policies.some(
      (p) =>
        lc(p.tenantId) === lc(c.tid) &&
        lc(p.objectId) === lc(c.oid) &&
        (!p.applicationId || lc(p.applicationId) === lc(c.appId)) &&
        (p.permissions?.secrets ?? []).some((s) => lc(s) === "get" || lc(s) === "all"),
    );
    if (!ok) {
      return answer(
        403,
        err("Forbidden", `The user, group or application '${who}' does not have secrets get permission on key vault '${where}'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287`, "ForbiddenByPolicy"),
        GET_SECRET,
        c,
      );
    }
  }

  const secret = host.get(scope);
  const v = secret && lc(secret.type) === lc(VAULT_SECRET_TYPE) ? secretVersion(secret, version) : undefined;
  if (!secret || !v) {
    return answer(
      404,
      err(
        "SecretNotFound",
        `A secret with (name/id) ${version ? `${name}/${version}` : name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182`,
      ),
      GET_SECRET,
      c,
    );
  }
  if (!v.enabled) return answer(403, err("Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"), GET_SECRET, c);
  const attributes = {
    enabled: v.enabled,
    ...(v.nbf !== undefined ? { nbf: v.nbf } : {}),
    ...(v.exp !== undefined ? { exp: v.exp } : {}),
    created: v.created,
    updated: v.updated,
    recoveryLevel: "Recoverable+Purgeable",
    recoverableDays: 90,
  };
  return answer(
    200,
    { value: v.value, ...(v.contentType ? { contentType: v.contentType } : {}), id: `${vaultUri(vault.name)}secrets/${secret.name}/${v.version}`, attributes, tags: v.tags },
    GET_SECRET,
    c,
  );
}
