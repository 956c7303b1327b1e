// What an AWS SDK request is (service, operation, parameters, signer) and how each service
// words an error, for the strict AWS layer. Covers the protocols the operator's clients speak:
// EC2 query, IAM/STS query, CloudWatch Logs JSON 1.1, S3 REST-XML (path-style addressing).
import { randomBytes, randomUUID } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import type { FaultKind } from "./config.js";
import { escapeXml } from "./xml.js";

export interface AwsRequest {
  method: string;
  /** Raw request target: path and query as sent. */
  url: string;
  pathname: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Signing name from the credential scope: ec2, iam, sts, logs, s3, ... */
  service: string;
  region: string;
  accessKeyId: string | undefined;
  /** Operation name as in the API reference: RunInstances, GetLogEvents, GetObject. */
  operation: string;
  /** IAM action checked for it: "ec2:RunInstances", "s3:GetObject" (HeadObject is s3:GetObject). */
  action: string;
  /** Query protocol parameters (EC2, IAM, STS); empty for other protocols. */
  params: URLSearchParams;
  /** JSON protocol body (CloudWatch Logs); undefined for other protocols. */
  json: Record<string, unknown> | undefined;
  /** S3 path-style bucket and key. */
  bucket?: string;
  key?: string;
}

export interface HttpAnswer {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

const CREDENTIAL_RE = /Credential=([^/,\s]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request/;

/** The parts of a SigV4 Authorization header (or presigned query). */
export function credentialScope(headers: IncomingHttpHeaders, query: URLSearchParams): { accessKeyId: string; date: string; region: string; service: string } | undefined {
  const auth = headers.authorization;
  const m = typeof auth === "string" ? CREDENTIAL_RE.exec(auth) : undefined;
  if (m) return { accessKeyId: m[1]!, date: m[2]!, region: m[3]!, service: m[4]! };
  const cred = query.get("X-Amz-Credential");
  if (cred) {
    const [accessKeyId, date, region, service] = cred.split("/");
    if (accessKeyId && date && region && service) return { accessKeyId, date, region, service };
  }
  return undefined;
}

function s3Operation(method: string, bucket: string | undefined, key: string | undefined, query: URLSearchParams, headers: IncomingHttpHeaders): [string, string] {
  const sub = (name: string): boolean => query.has(name);
  if (!bucket) return ["ListBuckets", "s3:ListAllMyBuckets"];
  if (!key) {
    if (sub("delete") && method === "POST") return ["DeleteObjects", "s3:DeleteObject"];
    if (sub("tagging")) return method === "GET" ? ["GetBucketTagging", "s3:GetBucketTagging"] : ["PutBucketTagging", "s3:PutBucketTagging"];
    if (sub("policy")) return method === "GET" ? ["GetBucketPolicy", "s3:GetBucketPolicy"] : ["PutBucketPolicy", "s3:PutBucketPolicy"];
    if (sub("location")) return ["GetBucketLocation", "s3:GetBucketLocation"];
    if (sub("versioning")) return method === "GET" ? ["GetBucketVersioning", "s3:GetBucketVersioning"] : ["PutBucketVersioning", "s3:PutBucketVersioning"];
    switch (method) {
      case "PUT":
        return ["CreateBucket", "s3:CreateBucket"];
      case "DELETE":
        return ["DeleteBucket", "s3:DeleteBucket"];
      case "HEAD":
        return ["HeadBucket", "s3:ListBucket"];
      default:
        return [query.get("list-type") === "2" ? "ListObjectsV2" : "ListObjects", "s3:ListBucket"];
    }
  }
  if (sub("tagging")) return method === "GET" ? ["GetObjectTagging", "s3:GetObjectTagging"] : ["PutObjectTagging", "s3:PutObjectTagging"];
  switch (method) {
    case "GET":
      return ["GetObject", "s3:GetObject"];
    case "HEAD":
      return ["HeadObject", "s3:GetObject"];
    case "PUT":
      return headers["x-amz-copy-source"] ? ["CopyObject", "s3:PutObject"] : ["PutObject", "s3:PutObject"];
    case "DELETE":
      return ["DeleteObject", "s3:DeleteObject"];
    default:
      return [`${method}Object`, `s3:${method}Object`];
  }
}

/** Reads what a request asks for. Undefined when it is no signed AWS API call (e.g. moto's own API). */
export function describeRequest(method: string, url: string, headers: IncomingHttpHeaders, body: Buffer): AwsRequest | undefined {
  const u = new URL(url, "http://layer.invalid");
  const scope = credentialScope(headers, u.searchParams);
  if (!scope) return undefined;
  const base = {
    method,
    url,
    pathname: u.pathname,
    query: u.searchParams,
    headers,
    body,
    service: scope.service,
    region: scope.region,
    accessKeyId: scope.accessKeyId,
  };
  if (scope.service === "s3") {
    const parts = u.pathname.split("/").slice(1);
    const bucket = parts[0] ? decodeURIComponent(parts[0]) : undefined;
    const rest = parts.slice(1).join("/");
    const key = rest ? decodeURIComponent(rest) : undefined;
    const [operation, action] = s3Operation(method, bucket, key, u.searchParams, headers);
    return { ...base, operation, action, params: new URLSearchParams(), json: undefined, ...(bucket ? { bucket } : {}), ...(key ? { key } : {}) };
  }
  const target = headers["x-amz-target"];
  if (typeof target === "string" && target.includes(".")) {
    const operation = target.slice(target.lastIndexOf(".") + 1);
    let json: Record<string, unknown> = {};
    try {
      json = body.length > 0 ? (JSON.parse(body.toString("utf8")) as Record<string, unknown>) : {};
    } catch {
      // leave empty: the service answers the malformed body itself
    }
    return { ...base, operation, action: `${scope.service}:${operation}`, params: new URLSearchParams(), json };
  }
  const params = method === "GET" ? u.searchParams : new URLSearchParams(body.toString("utf8"));
  const operation = params.get("Action") ?? "";
  if (!operation) return undefined;
  return { ...base, operation, action: `${scope.service}:${operation}`, params, json: undefined };
}

/** Values of a query-protocol list parameter: Name.1, Name.2, ... (EC2 and IAM style). */
export function queryList(params: URLSearchParams, prefix: string): string[] {
  const out: [number, string][] = [];
  const re = new RegExp(`^${prefix.replace(/\./g, "\\.")}\\.(\\d+)$`);
  for (const [k, v] of params) {
    const m = re.exec(k);
    if (m) out.push([Number(m[1]), v]);
  }
  return out.sort((a, b) => a[0] - b[0]).map(([, v]) => v);
}

/** EC2 filters of a query request: Filter.N.Name / Filter.N.Value.M. */
export function ec2Filters(params: URLSearchParams): { name: string; values: string[] }[] {
  const byIndex = new Map<number, { name: string; values: string[] }>();
  for (const [k, v] of params) {
    const m = /^Filter\.(\d+)\.Name$/.exec(k);
    if (m) byIndex.set(Number(m[1]), { name: v, values: queryList(params, `Filter.${m[1]}.Value`) });
  }
  return [...byIndex.entries()].sort((a, b) => a[0] - b[0]).map(([, f]) => f);
}

const QUERY_NAMESPACES: Record<string, string> = {
  iam: "https://iam.amazonaws.com/doc/2010-05-08/",
  sts: "https://sts.amazonaws.com/doc/2011-06-15/",
};

/** An error as the request's service words it on the wire. */
export function errorAnswer(req: Pick<AwsRequest, "service" | "json">, status: number, code: string, message: string): HttpAnswer {
  const requestId = randomUUID();
  if (req.service === "ec2") {
    const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${escapeXml(code)}</Code><Message>${escapeXml(message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`;
    return { status, headers: { "content-type": "text/xml;charset=UTF-8" }, body: Buffer.from(body) };
  }
  if (req.service === "s3") {
    const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${escapeXml(code)}</Code><Message>${escapeXml(message)}</Message><RequestId>${requestId}</RequestId></Error>`;
    return { status, headers: { "content-type": "application/xml", "x-amz-request-id": requestId }, body: Buffer.from(body) };
  }
  if (req.json !== undefined) {
    return {
      status,
      headers: { "content-type": "application/x-amz-json-1.1", "x-amzn-requestid": requestId, "x-amzn-errortype": code },
      body: Buffer.from(JSON.stringify({ __type: code, message })),
    };
  }
  const ns = QUERY_NAMESPACES[req.service] ?? `https://${req.service}.amazonaws.com/doc/`;
  const type = status >= 500 ? "Receiver" : "Sender";
  const body = `<ErrorResponse xmlns="${ns}"><Error><Type>${type}</Type><Code>${escapeXml(code)}</Code><Message>${escapeXml(message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`;
  return { status, headers: { "content-type": "text/xml", "x-amzn-requestid": requestId }, body: Buffer.from(body) };
}

/**
 * EC2's refusal of an unauthorized call. EC2 ends it with an encoded authorization failure message
 * (decodable only with sts:DecodeAuthorizationMessage) that differs from one request to the next,
 * even for the same caller, action and resource: an operator that puts the raw message in a
 * condition or an Event writes a new one at every attempt.
 */
export function ec2Unauthorized(req: Pick<AwsRequest, "service" | "json">, explanation?: string): HttpAnswer {
  const encoded = randomBytes(480).toString("base64").replace(/[+/=]/g, "");
  const text = `You are not authorized to perform this operation.${explanation ? ` ${explanation}.` : ""} Encoded authorization failure message: ${encoded}`;
  return errorAnswer(req, 403, "UnauthorizedOperation", text);
}

/** The throttling and server errors each service answers with. */
export function faultAnswer(req: Pick<AwsRequest, "service" | "json">, kind: FaultKind, refusal: { code?: string; status?: number; message?: string } = {}): HttpAnswer {
  const s = req.service;
  if (kind === "refuse") return errorAnswer(req, refusal.status ?? 400, refusal.code ?? "InvalidParameterValue", refusal.message ?? refusal.code ?? "InvalidParameterValue");
  if (kind === "denied") {
    if (s === "ec2") return ec2Unauthorized(req);
    if (req.json !== undefined) return errorAnswer(req, 400, "AccessDeniedException", "User is not authorized to perform this operation.");
    return errorAnswer(req, 403, "AccessDenied", "User is not authorized to perform this operation.");
  }
  if (kind === "throttle") {
    if (s === "ec2") return errorAnswer(req, 503, "RequestLimitExceeded", "Request limit exceeded.");
    if (s === "s3") return errorAnswer(req, 503, "SlowDown", "Please reduce your request rate.");
    if (req.json !== undefined) return errorAnswer(req, 400, "ThrottlingException", "Rate exceeded");
    return errorAnswer(req, 400, "Throttling", "Rate exceeded");
  }
  if (kind === "unavailable") {
    if (s === "ec2") return errorAnswer(req, 503, "Unavailable", "The server is overloaded and can't handle the request.");
    if (req.json !== undefined) return errorAnswer(req, 503, "ServiceUnavailableException", "The service is unavailable. Please try again later.");
    return errorAnswer(req, 503, "ServiceUnavailable", "Service is unable to handle request.");
  }
  if (s === "ec2") return errorAnswer(req, 500, "InternalError", "An internal error has occurred.");
  if (s === "iam") return errorAnswer(req, 500, "ServiceFailure", "The request processing has failed because of an unknown error, exception or failure.");
  if (s === "s3") return errorAnswer(req, 500, "InternalError", "We encountered an internal error. Please try again.");
  return errorAnswer(req, 500, req.json !== undefined ? "InternalFailure" : "InternalFailure", "The request processing has failed because of an unknown error, exception or failure.");
}

/** Operations that only read: the rest (Create*, Put*, Tag*, Run*, Terminate*, Delete*, ...) write. */
const READ_OPERATION = /^(Describe|Get|List|Head|Filter|Lookup|Search|Simulate)/;

/**
 * Whether a request changes state in the cloud: any operation that is not a Describe/Get/List
 * (or Head, Filter, ...) read. sts:AssumeRole only hands out credentials and counts as a read.
 */
export function isWriteRequest(req: Pick<AwsRequest, "service" | "operation">): boolean {
  if (req.service === "sts") return false;
  return !READ_OPERATION.test(req.operation);
}
