// Checks an AWS Signature Version 4 Authorization header against the secret key the layer knows
// for its access key id, as AWS does before it looks at any policy.
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";

const AUTH_RE = /^AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]+)\s*$/;

function rfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function sha256Hex(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac("sha256", key).update(data).digest();
}

function canonicalQuery(rawQuery: string): string {
  if (!rawQuery) return "";
  const pairs = rawQuery
    .split("&")
    .filter((p) => p !== "")
    .map((p) => {
      const i = p.indexOf("=");
      const k = i < 0 ? p : p.slice(0, i);
      const v = i < 0 ? "" : p.slice(i + 1);
      const dec = (x: string): string => decodeURIComponent(x.replace(/\+/g, "%20"));
      return [rfc3986(dec(k)), rfc3986(dec(v))] as const;
    })
    .filter(([k]) => k !== "X-Amz-Signature");
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join("&");
}

function canonicalPath(rawPath: string, service: string): string {
  // S3 signs the path as sent; every other service encodes each segment once more.
  if (service === "s3") return rawPath || "/";
  return rawPath
    .split("/")
    .map((seg) => rfc3986(seg))
    .join("/");
}

export type SignatureCheck = "ok" | "mismatch" | "malformed";

/** Verifies the Authorization header of a request signed with `secretAccessKey`. */
export function verifySigV4(
  req: { method: string; url: string; headers: IncomingHttpHeaders; body: Buffer },
  secretAccessKey: string,
): SignatureCheck {
  const auth = req.headers.authorization;
  if (typeof auth !== "string") return "malformed";
  const m = AUTH_RE.exec(auth);
  if (!m) return "malformed";
  const [, credential, signedHeaders, signature] = m as unknown as [string, string, string, string];
  const [, date, region, service] = credential.split("/");
  const amzDate = req.headers["x-amz-date"];
  if (!date || !region || !service || typeof amzDate !== "string") return "malformed";
  const q = req.url.indexOf("?");
  const rawPath = q < 0 ? req.url : req.url.slice(0, q);
  const rawQuery = q < 0 ? "" : req.url.slice(q + 1);
  const names = signedHeaders.split(";");
  const headerLines = names.map((n) => {
    const v = req.headers[n];
    const value = Array.isArray(v) ? v.join(",") : (v ?? "");
    return `${n}:${value.trim().replace(/\s+/g, " ")}\n`;
  });
  const declaredHash = req.headers["x-amz-content-sha256"];
  const payloadHash = typeof declaredHash === "string" ? declaredHash : sha256Hex(req.body);
  const canonical = [req.method, canonicalPath(rawPath, service), canonicalQuery(rawQuery), headerLines.join(""), signedHeaders, payloadHash].join("\n");
  const scope = `${date}/${region}/${service}/aws4_request`;
  const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256Hex(canonical)].join("\n");
  const key = hmac(hmac(hmac(hmac(`AWS4${secretAccessKey}`, date), region), service), "aws4_request");
  const expected = Buffer.from(hmac(key, toSign).toString("hex"));
  const given = Buffer.from(signature);
  return expected.length === given.length && timingSafeEqual(expected, given) ? "ok" : "mismatch";
}
