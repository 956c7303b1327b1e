// Entra ID: OIDC discovery, the v2.0 (and v1) token endpoint with client secrets and federated
// client assertions, and managed-identity token endpoints (IMDS and App Service protocols).
import { randomUUID, timingSafeEqual, type JsonWebKey } from "node:crypto";
import { request as httpsRequest } from "node:https";
import { decodeJwt, verifyWithJwk, type TokenSigner } from "./jwt.js";
import type { Directory, Principal, Settings, Tenant } from "./state.js";
import { EntraError, lc } from "./util.js";

export const CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/** An OIDC issuer whose tokens can be presented as federated client assertions. */
export interface OidcIssuer {
  issuer: string;
  /** Base URL where /.well-known/openid-configuration is fetched (default: the issuer itself). */
  discoveryBase?: string;
  caPem?: string;
  clientCertPem?: string;
  clientKeyPem?: string;
  bearerToken?: string;
  /** Static keys instead of fetching. */
  jwks?: { keys: JsonWebKey[] };
}

export interface AccessClaims {
  aud: string;
  iss: string;
  iat: number;
  nbf: number;
  exp: number;
  appid: string;
  appidacr: string;
  idp: string;
  idtyp: "app";
  oid: string;
  sub: string;
  tid: string;
  uti: string;
  ver: "1.0";
  xms_mirid?: string;
}

/** The principal behind a verified access token. */
export interface Caller {
  oid: string;
  appId: string;
  tid: string;
  aud: string;
  exp: number;
}

export interface ManagedIdentityHost {
  /** Principals of user-assigned identities are looked up by their resource IDs at request time. */
  userAssigned: string[];
  systemPrincipalOid?: string;
  tenantId: string;
}

export interface EntraDeps {
  dir: Directory;
  settings: Settings;
  signer: TokenSigner;
  baseUrl: () => string;
  now: () => number;
  /** Principal of a user-assigned identity by its ARM ID. */
  principalOfIdentity: (resourceId: string) => Principal | undefined;
  /** Managed-identity host by key (a VM's vmId, or a host created through the test controls). */
  miHost: (key: string) => ManagedIdentityHost | undefined;
}

export const stsIssuer = (tid: string): string => `https://sts.windows.net/${tid}/`;

function entraErrorBody(e: EntraError, nowMs: number): Record<string, unknown> {
  const trace = randomUUID();
  const corr = randomUUID();
  const ts = new Date(nowMs).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  return {
    error: e.error,
    error_description: `AADSTS${e.aadsts}: ${e.description} Trace ID: ${trace} Correlation ID: ${corr} Timestamp: ${ts}`,
    error_codes: [e.aadsts],
    timestamp: ts,
    trace_id: trace,
    correlation_id: corr,
    error_uri: `https://login.microsoftonline.com/error?code=${e.aadsts}`,
  };
}

export class Entra {
  private readonly issuers = new Map<string, OidcIssuer & { keys?: JsonWebKey[]; fetchedAt?: number }>();
  private readonly verified = new Map<string, Caller>();

  constructor(private readonly d: EntraDeps) {}

  registerIssuer(i: OidcIssuer): void {
    this.issuers.set(lc(i.issuer.replace(/\/+$/, "")), { ...i, keys: i.jwks?.keys });
  }

  clearCache(): void {
    this.verified.clear();
  }

  errorBody(e: EntraError): Record<string, unknown> {
    return entraErrorBody(e, this.d.now());
  }

  private tenantOrThrow(t: string): Tenant {
    const tenant = this.d.dir.tenant(t);
    if (!tenant) {
      throw new EntraError(
        400,
        "invalid_request",
        90002,
        `Tenant '${t}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.`,
      );
    }
    return tenant;
  }

  openidConfiguration(tenantSeg: string, v2: boolean): Record<string, unknown> {
    const tenant = this.tenantOrThrow(tenantSeg);
    const base = this.d.baseUrl();
    const t = tenant.id;
    const v = v2 ? "/v2.0" : "";
    return {
      token_endpoint: `${base}/${t}/oauth2${v}/token`,
      token_endpoint_auth_methods_supported: ["client_secret_post", "private_key_jwt", "client_secret_basic"],
      jwks_uri: `${base}/${t}/discovery${v}/keys`,
      response_modes_supported: ["query", "fragment", "form_post"],
      subject_types_supported: ["pairwise"],
      id_token_signing_alg_values_supported: ["RS256"],
      response_types_supported: ["code", "id_token", "code id_token", "id_token token"],
      scopes_supported: ["openid", "profile", "email", "offline_access"],
      issuer: v2 ? `${base}/${t}/v2.0` : stsIssuer(t),
      request_uri_parameter_supported: false,
      userinfo_endpoint: `${base}/oidc/userinfo`,
      authorization_endpoint: `${base}/${t}/oauth2${v}/authorize`,
      device_authorization_endpoint: `${base}/${t}/oauth2${v}/devicecode`,
      http_logout_supported: true,
      frontchannel_logout_supported: true,
      end_session_endpoint: `${base}/${t}/oauth2${v}/logout`,
      claims_supported: ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "tid", "ver", "oid"],
      kerberos_endpoint: `${base}/${t}/kerberos`,
      tenant_region_scope: "EU",
      cloud_instance_name: "microsoftonline.com",
      cloud_graph_host_name: "graph.windows.net",
      msgraph_host: "graph.microsoft.com",
      rbac_url: "https://pas.windows.net",
    };
  }

  /** Issues an access token for a principal and resource (audience). */
  issue(p: Principal, resource: string, appidacr: string): { token: string; expiresIn: number; expiresOn: number } {
    const now = Math.floor(this.d.now() / 1000);
    const lifetime = this.d.settings.tokenLifetimeS;
    const claims: AccessClaims = {
      aud: resource,
      iss: stsIssuer(p.tenantId),
      iat: now,
      nbf: now,
      exp: now + lifetime,
      appid: p.appId,
      appidacr,
      idp: stsIssuer(p.tenantId),
      idtyp: "app",
      oid: p.oid,
      sub: p.oid,
      tid: p.tenantId,
      uti: randomUUID().replace(/-/g, "").slice(0, 22),
      ver: "1.0",
    };
    if (p.kind === "managedIdentity" && p.resourceId) claims.xms_mirid = p.resourceId;
    return { token: this.d.signer.sign(claims as unknown as Record<string, unknown>), expiresIn: lifetime, expiresOn: now + lifetime };
  }

  /**
   * The caller behind a bearer token, or an ARM-style 401 reason. Tokens must be ours, unexpired,
   * and their principal must still exist.
   */
  authenticate(authorization: string | undefined): { caller: Caller } | { code: string; message: string } {
    if (!authorization) return { code: "AuthenticationFailed", message: "Authentication failed. The 'Authorization' header is missing." };
    const m = /^Bearer\s+(.+)$/i.exec(authorization);
    if (!m) return { code: "AuthenticationFailed", message: "Authentication failed. The 'Authorization' header is provided in an invalid format." };
    const token = m[1]!.trim();
    let caller = this.verified.get(token);
    if (!caller) {
      const payload = this.d.signer.verify(token);
      if (!payload) return { code: "InvalidAuthenticationToken", message: "The access token is invalid." };
      caller = { oid: String(payload.oid), appId: String(payload.appid), tid: String(payload.tid), aud: String(payload.aud), exp: Number(payload.exp) };
      if (this.verified.size > 50_000) this.verified.clear();
      this.verified.set(token, caller);
    }
    const now = this.d.now();
    if (caller.exp * 1000 <= now) {
      return {
        code: "ExpiredAuthenticationToken",
        message: `The access token expiry UTC time '${new Date(caller.exp * 1000).toUTCString()}' is earlier than current UTC time '${new Date(now).toUTCString()}'.`,
      };
    }
    return { caller };
  }

  /** POST /{tenant}/oauth2/v2.0/token (v2 = true) or /{tenant}/oauth2/token. */
  async token(tenantSeg: string, form: URLSearchParams, v2: boolean, authorizationHeader?: string): Promise<Record<string, unknown>> {
    const tenant = this.tenantOrThrow(tenantSeg);
    const grant = form.get("grant_type");
    if (grant !== "client_credentials") {
      throw new EntraError(400, "unsupported_grant_type", 70003, `The app requested an unsupported grant type '${grant ?? ""}'.`);
    }
    let clientId = form.get("client_id") ?? undefined;
    let secret = form.get("client_secret") ?? undefined;
    if (authorizationHeader?.toLowerCase().startsWith("basic ")) {
      const [u, s] = Buffer.from(authorizationHeader.slice(6), "base64").toString("utf8").split(":");
      clientId ??= decodeURIComponent(u ?? "");
      secret ??= decodeURIComponent(s ?? "");
    }
    if (!clientId) throw new EntraError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.");
    let resource: string;
    if (v2) {
      const scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
      const dflt = scopes.find((s) => s.endsWith("/.default"));
      if (!dflt) {
        throw new EntraError(
          400,
          "invalid_scope",
          1002012,
          `The provided value for scope ${scopes.join(" ") || "(none)"} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).`,
        );
      }
      resource = dflt.slice(0, -"/.default".length);
    } else {
      resource = form.get("resource") ?? "";
      if (!resource) throw new EntraError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'resource'.");
    }
    const p = this.d.dir.app(clientId);
    if (!p || lc(p.tenantId) !== tenant.id) {
      throw new EntraError(
        400,
        "unauthorized_client",
        700016,
        `Application with identifier '${clientId}' was not found in the directory '${tenant.domain}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.`,
      );
    }
    const assertionType = form.get("client_assertion_type");
    const assertion = form.get("client_assertion");
    let appidacr: string;
    if (secret !== undefined) {
      const ok = p.secrets.some((s) => s.length === secret.length && timingSafeEqual(Buffer.from(s), Buffer.from(secret)));
      if (!ok) {
        throw new EntraError(
          401,
          "invalid_client",
          7000215,
          `Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '${p.appId}'.`,
        );
      }
      appidacr = "1";
    } else if (assertion) {
      if (assertionType !== CLIENT_ASSERTION_TYPE) {
        throw new EntraError(400, "invalid_request", 50027, `Invalid client_assertion_type '${assertionType ?? ""}'.`);
      }
      await this.verifyFederatedAssertion(p, assertion);
      appidacr = "2";
    } else {
      throw new EntraError(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
    }
    const t = this.issue(p, resource, appidacr);
    return { token_type: "Bearer", expires_in: t.expiresIn, ext_expires_in: t.expiresIn, access_token: t.token, ...(v2 ? {} : { expires_on: String(t.expiresOn), resource }) };
  }

  private async verifyFederatedAssertion(p: Principal, assertion: string): Promise<void> {
    const parts = decodeJwt(assertion);
    if (!parts) throw new EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.");
    const { payload } = parts;
    const iss = typeof payload.iss === "string" ? payload.iss : "";
    const sub = typeof payload.sub === "string" ? payload.sub : "";
    const auds = Array.isArray(payload.aud) ? payload.aud.map(String) : payload.aud !== undefined ? [String(payload.aud)] : [];
    if (iss && lc(iss) === lc(p.appId)) {
      throw new EntraError(401, "invalid_client", 700027, "Client assertion failed signature validation. (Certificate credentials are not emulated.)");
    }
    const byIssuer = p.federatedCredentials.filter((f) => f.issuer.replace(/\/+$/, "") === iss.replace(/\/+$/, ""));
    if (byIssuer.length === 0) {
      throw new EntraError(
        400,
        "invalid_client",
        700211,
        `No matching federated identity record found for presented assertion issuer '${iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.`,
      );
    }
    const bySubject = byIssuer.filter((f) => f.subject === sub);
    if (bySubject.length === 0) {
      throw new EntraError(
        400,
        "invalid_client",
        700213,
        `No matching federated identity record found for presented assertion subject '${sub}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.`,
      );
    }
    if (!bySubject.some((f) => f.audiences.some((a) => auds.includes(a)))) {
      throw new EntraError(
        400,
        "invalid_client",
        700212,
        `No matching federated identity record found for presented assertion audience '${auds.join(",")}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.`,
      );
    }
    const kid = typeof parts.header.kid === "string" ? parts.header.kid : undefined;
    let keys = await this.issuerKeys(iss, false);
    let key = keys.find((k) => (kid === undefined ? true : (k as { kid?: string }).kid === kid));
    if (!key) {
      keys = await this.issuerKeys(iss, true);
      key = keys.find((k) => (kid === undefined ? true : (k as { kid?: string }).kid === kid));
    }
    if (!key || !verifyWithJwk(parts, key)) {
      throw new EntraError(401, "invalid_client", 700027, "Client assertion failed signature validation.");
    }
    const now = this.d.now() / 1000;
    const exp = Number(payload.exp);
    const nbf = payload.nbf === undefined ? 0 : Number(payload.nbf);
    if (!Number.isFinite(exp) || exp + 300 < now || nbf - 300 > now) {
      throw new EntraError(400, "invalid_client", 700024, "Client assertion is not within its valid time range.");
    }
  }

  private async issuerKeys(iss: string, refresh: boolean): Promise<JsonWebKey[]> {
    const k = lc(iss.replace(/\/+$/, ""));
    let reg = this.issuers.get(k);
    if (!reg) {
      reg = { issuer: iss };
      this.issuers.set(k, reg);
    }
    if (reg.jwks) return reg.jwks.keys;
    if (reg.keys && !refresh) return reg.keys;
    const base = (reg.discoveryBase ?? reg.issuer).replace(/\/+$/, "");
    try {
      const cfg = (await this.fetchJson(`${base}/.well-known/openid-configuration`, reg)) as { issuer?: string; jwks_uri?: string };
      if (cfg.issuer?.replace(/\/+$/, "") !== iss.replace(/\/+$/, "")) throw new Error(`discovery document names issuer '${cfg.issuer}'`);
      // The advertised jwks_uri may be a name only resolvable in-cluster; fetch its path from the discovery base.
      const jwksPath = cfg.jwks_uri ? new URL(cfg.jwks_uri).pathname : "/openid/v1/jwks";
      const jwks = (await this.fetchJson(new URL(jwksPath, base + "/").toString(), reg)) as { keys?: JsonWebKey[] };
      reg.keys = jwks.keys ?? [];
      reg.fetchedAt = this.d.now();
      return reg.keys;
    } catch (err) {
      throw new EntraError(
        400,
        "invalid_request",
        50166,
        `Request to External OIDC endpoint failed. Issuer '${iss}': ${(err as Error).message}`,
      );
    }
  }

  private fetchJson(url: string, reg: OidcIssuer): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        url,
        {
          method: "GET",
          ca: reg.caPem,
          cert: reg.clientCertPem,
          key: reg.clientKeyPem,
          headers: { accept: "application/json, application/jwk-set+json", ...(reg.bearerToken ? { authorization: `Bearer ${reg.bearerToken}` } : {}) },
          timeout: 5000,
        },
        (res) => {
          let text = "";
          res.on("data", (c: Buffer) => (text += c.toString("utf8")));
          res.on("end", () => {
            if ((res.statusCode ?? 0) >= 300) reject(new Error(`GET ${url}: HTTP ${res.statusCode}`));
            else {
              try {
                resolve(JSON.parse(text));
              } catch (e) {
                reject(e as Error);
              }
            }
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", reject);
      req.end();
    });
  }

  /**
   * Managed-identity token request (IMDS or App Service protocol) on a host. Returns the JSON body
   * or throws {status, body}.
   */
  managedIdentityToken(hostKey: string, q: URLSearchParams, protocol: "imds" | "appservice"): Record<string, unknown> {
    const host = this.d.miHost(hostKey);
    const fail = (status: number, error: string, description: string): never => {
      throw Object.assign(new Error(description), { status, body: { error, error_description: description } });
    };
    if (!host) fail(400, "invalid_request", "Identity not found");
    const resource = q.get("resource");
    if (!resource) fail(400, "invalid_request", "Required query variable 'resource' is missing");
    const clientId = q.get("client_id") ?? undefined;
    const objectId = q.get("object_id") ?? q.get("principal_id") ?? undefined;
    const miResId = q.get("msi_res_id") ?? q.get("mi_res_id") ?? undefined;
    const users = host!.userAssigned.map((id) => this.d.principalOfIdentity(id)).filter((p): p is Principal => p !== undefined);
    let p: Principal | undefined;
    if (clientId) p = users.find((u) => lc(u.appId) === lc(clientId));
    else if (objectId) p = users.find((u) => lc(u.oid) === lc(objectId)) ?? (host!.systemPrincipalOid && lc(host!.systemPrincipalOid) === lc(objectId) ? this.d.dir.principal(objectId) : undefined);
    else if (miResId) p = users.find((u) => u.resourceId && lc(u.resourceId) === lc(miResId));
    else if (host!.systemPrincipalOid) p = this.d.dir.principal(host!.systemPrincipalOid);
    else if (users.length === 1) p = users[0];
    else if (users.length > 1) fail(400, "invalid_request", "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request");
    if (!p) fail(400, "invalid_request", "Identity not found");
    const r = resource!.replace(/\/\.default$/, "");
    const t = this.issue(p!, r, "2");
    const now = Math.floor(this.d.now() / 1000);
    if (protocol === "appservice") {
      return { access_token: t.token, expires_on: String(t.expiresOn), resource: r, token_type: "Bearer", client_id: p!.appId };
    }
    return {
      access_token: t.token,
      client_id: p!.appId,
      expires_in: String(t.expiresIn),
      expires_on: String(t.expiresOn),
      ext_expires_in: String(t.expiresIn),
      not_before: String(now),
      resource: r,
      token_type: "Bearer",
    };
  }
}
