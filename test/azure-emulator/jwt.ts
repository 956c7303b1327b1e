// RS256 JSON Web Tokens: signing the emulator's access tokens, verifying them and verifying
// foreign tokens (Kubernetes service-account tokens) against a JWKS.
import { createPublicKey, generateKeyPairSync, sign, verify, type JsonWebKey, type KeyObject } from "node:crypto";

const b64u = (b: Buffer | string): string => Buffer.from(b).toString("base64url");

export interface JwtParts {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  signingInput: string;
  signature: Buffer;
}

export function decodeJwt(token: string): JwtParts | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const header = JSON.parse(Buffer.from(parts[0]!, "base64url").toString("utf8")) as Record<string, unknown>;
    const payload = JSON.parse(Buffer.from(parts[1]!, "base64url").toString("utf8")) as Record<string, unknown>;
    if (typeof header !== "object" || header === null || typeof payload !== "object" || payload === null) return undefined;
    return { header, payload, signingInput: `${parts[0]}.${parts[1]}`, signature: Buffer.from(parts[2]!, "base64url") };
  } catch {
    return undefined;
  }
}

/** Verifies an RS256 (or ES256) signature with a JWK. */
export function verifyWithJwk(parts: JwtParts, jwk: JsonWebKey): boolean {
  try {
    const key = createPublicKey({ key: jwk, format: "jwk" });
    const alg = parts.header.alg;
    if (alg === "RS256") return verify("sha256", Buffer.from(parts.signingInput), key, parts.signature);
    if (alg === "ES256") return verify("sha256", Buffer.from(parts.signingInput), { key, dsaEncoding: "ieee-p1363" }, parts.signature);
    return false;
  } catch {
    return false;
  }
}

/** The emulator's token signer: one RSA key per emulator process, published as a JWKS. */
export class TokenSigner {
  readonly kid: string;
  private readonly privateKey: KeyObject;
  private readonly publicKey: KeyObject;
  readonly jwk: JsonWebKey;

  constructor(kid: string) {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    this.privateKey = privateKey;
    this.publicKey = publicKey;
    this.kid = kid;
    this.jwk = { ...publicKey.export({ format: "jwk" }), kid, use: "sig", kty: "RSA", alg: "RS256" };
  }

  sign(payload: Record<string, unknown>): string {
    const header = { typ: "JWT", alg: "RS256", kid: this.kid, x5t: this.kid };
    const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(payload))}`;
    return `${input}.${b64u(sign("sha256", Buffer.from(input), this.privateKey))}`;
  }

  /** The payload when the token carries our signature, else undefined. Expiry is not checked here. */
  verify(token: string): Record<string, unknown> | undefined {
    const parts = decodeJwt(token);
    if (!parts || parts.header.alg !== "RS256" || parts.header.kid !== this.kid) return undefined;
    if (!verify("sha256", Buffer.from(parts.signingInput), this.publicKey, parts.signature)) return undefined;
    return parts.payload;
  }

  jwks(): { keys: JsonWebKey[] } {
    return { keys: [this.jwk] };
  }
}
