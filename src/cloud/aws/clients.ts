/**
 * AWS SDK v3 clients for one CE (credentials + region), a cache of them keyed by a fingerprint of
 * the credentials, and the single place where SDK errors become CloudErrors.
 */
import { createHash } from "node:crypto";
import { CloudWatchLogsClient } from "@aws-sdk/client-cloudwatch-logs";
import { EC2Client } from "@aws-sdk/client-ec2";
import { IAMClient } from "@aws-sdk/client-iam";
import { S3Client } from "@aws-sdk/client-s3";
import { STSClient } from "@aws-sdk/client-sts";
import type { Logger } from "../../engine/logger.js";
import { CloudError, type ResolvedCredentials } from "../provider.js";
import { errorOutcome, observeCloudCall } from "../call-metrics.js";
import { credentialProvider, credentialsFingerprint, type AwsCredentialsConfig } from "./credentials.js";

/** Environment variable that points every AWS client at another endpoint (moto in tests and the sandbox). */
export const ENDPOINT_ENV = "VMFORGE_AWS_ENDPOINT";

/** SDK-internal attempts per call; small on purpose so the controller's backoff is in charge. */
export const DEFAULT_MAX_ATTEMPTS = 3;

export interface AwsClients {
  readonly ec2: EC2Client;
  readonly iam: IAMClient;
  readonly logs: CloudWatchLogsClient;
  readonly s3: S3Client;
  readonly sts: STSClient;
  readonly region: string;
  readonly endpoint: string | undefined;
  /** Closes the clients' sockets. */
  destroy(): void;
}

export interface AwsClientOptions {
  credentials: ResolvedCredentials;
  region: string;
  /** Overrides every service endpoint; defaults to $VMFORGE_AWS_ENDPOINT when set. */
  endpoint?: string;
  maxAttempts?: number;
  /** "namespace/name" of the credentials Secret, for messages. */
  secretLabel?: string;
  /** Where the SDK's HTTP handler warns (all sockets busy, a slow request); default: dropped. Not part of the cache key. */
  logger?: Pick<Logger, "warn">;
}

/**
 * The HTTP handler's logger: its warnings go to the operator's log as JSON lines (the SDK's
 * default is console, plain text on stderr); its debug and info chatter is dropped.
 */
export function handlerLogger(logger: Pick<Logger, "warn"> | undefined): { debug(): void; info(): void; warn(msg: unknown): void; error(msg: unknown): void } {
  const say = (msg: unknown): void => {
    logger?.warn({ sdkMessage: String(msg).split("\n")[0] }, "AWS SDK HTTP handler warning");
  };
  return { debug: () => undefined, info: () => undefined, warn: say, error: say };
}

/** The endpoint override from the environment, if any. */
export function endpointFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const v = env[ENDPOINT_ENV]?.trim();
  return v ? v : undefined;
}

/**
 * Agent options for the SDK's HTTP handler: keep-alive as the SDK's default, plus the proxy from
 * the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) when NODE_USE_ENV_PROXY=1, as Node 24 does for
 * its global agent; without it (or without proxy variables) connections go direct.
 */
export function proxyAwareAgent(env: NodeJS.ProcessEnv = process.env): { keepAlive: boolean; maxSockets: number; proxyEnv?: NodeJS.ProcessEnv } {
  return { keepAlive: true, maxSockets: 50, ...(env.NODE_USE_ENV_PROXY === "1" ? { proxyEnv: env } : {}) };
}

/**
 * Reports every call (after the SDK's own retries) to the cloud call metrics: service from the
 * client's name (EC2Client -> EC2), operation from the command's (DescribeInstancesCommand ->
 * DescribeInstances), outcome success, throttled or error, and the time it took.
 */
const CALL_METRICS = { step: "initialize", name: "vmforgeCallMetrics" } as const;
const callMetrics = <I, O>(
  next: (args: I) => Promise<O>,
  context: { clientName?: string; commandName?: string },
) => async (args: I): Promise<O> => {
  const started = performance.now();
  const service = (context.clientName ?? "").replace(/Client$/, "");
  const operation = (context.commandName ?? "").replace(/Command$/, "");
  try {
    const out = await next(args);
    observeCloudCall({ provider: "aws", service, operation, outcome: "success", seconds: (performance.now() - started) / 1000 });
    return out;
  } catch (e) {
    observeCloudCall({ provider: "aws", service, operation, outcome: errorOutcome(e), seconds: (performance.now() - started) / 1000 });
    throw e;
  }
};

/** Marks errors thrown while obtaining credentials, so they map to InvalidCredentials. */
const CREDENTIAL_STAGE = Symbol.for("vmforge.aws.credentialStage");

function markCredentialErrors(provider: AwsCredentialsConfig, stage: string): AwsCredentialsConfig {
  if (typeof provider !== "function") return provider;
  const wrapped = async (...args: Parameters<typeof provider>) => {
    try {
      return await provider(...args);
    } catch (err) {
      if (err !== null && typeof err === "object") {
        try {
          (err as Record<symbol, unknown>)[CREDENTIAL_STAGE] = stage;
        } catch {
          // frozen error object: leave unmarked
        }
      }
      throw err;
    }
  };
  return wrapped as AwsCredentialsConfig;
}

/**
 * Builds the five clients. Throws CloudError Terminal InvalidCredentials when the Secret lacks a
 * key (the message names the Secret and the key, never a value).
 */
export function awsClients(opts: AwsClientOptions): AwsClients {
  const endpoint = opts.endpoint ?? endpointFromEnv();
  const stage =
    opts.credentials.source === "ambient"
      ? (opts.credentials.data.roleArn ? "ambient-assume-role" : "ambient")
      : opts.credentials.data.roleArn ? "assume-role" : "static";
  const credentials = markCredentialErrors(
    credentialProvider(opts.credentials, {
      region: opts.region,
      ...(endpoint !== undefined ? { endpoint } : {}),
      ...(opts.secretLabel !== undefined ? { secretLabel: opts.secretLabel } : {}),
    }),
    stage,
  );
  const common = {
    region: opts.region,
    credentials,
    maxAttempts: opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
    // proxyEnv: the SDK's own agents honour HTTPS_PROXY / HTTP_PROXY / NO_PROXY as Node's global
    // agent does with NODE_USE_ENV_PROXY=1 (the SDK never uses the global agent).
    requestHandler: {
      connectionTimeout: 10_000, requestTimeout: 60_000, httpsAgent: proxyAwareAgent(), httpAgent: proxyAwareAgent(),
      logger: handlerLogger(opts.logger),
    },
    ...(endpoint !== undefined ? { endpoint } : {}),
  };
  const ec2 = new EC2Client(common);
  const iam = new IAMClient(common);
  const logs = new CloudWatchLogsClient(common);
  const s3 = new S3Client({ ...common, ...(endpoint !== undefined ? { forcePathStyle: true } : {}) });
  const sts = new STSClient(common);
  ec2.middlewareStack.add(callMetrics, CALL_METRICS);
  iam.middlewareStack.add(callMetrics, CALL_METRICS);
  logs.middlewareStack.add(callMetrics, CALL_METRICS);
  s3.middlewareStack.add(callMetrics, CALL_METRICS);
  sts.middlewareStack.add(callMetrics, CALL_METRICS);
  return {
    ec2,
    iam,
    logs,
    s3,
    sts,
    region: opts.region,
    endpoint,
    destroy() {
      for (const c of [ec2, iam, logs, s3, sts]) c.destroy();
    },
  };
}

export type AwsClientFactory = (opts: AwsClientOptions) => AwsClients;

/**
 * Clients per (credentials fingerprint, region, endpoint). A rotated Secret has another fingerprint
 * and so gets fresh clients on the next reconcile; the least recently used entries beyond `max`
 * are destroyed.
 */
export class AwsClientCache {
  private readonly entries = new Map<string, AwsClients>();
  private readonly factory: AwsClientFactory;
  private readonly max: number;

  constructor(opts: { factory?: AwsClientFactory; max?: number } = {}) {
    this.factory = opts.factory ?? awsClients;
    this.max = opts.max ?? 32;
  }

  static key(opts: AwsClientOptions): string {
    const endpoint = opts.endpoint ?? endpointFromEnv() ?? "";
    return createHash("sha256")
      .update(credentialsFingerprint(opts.credentials))
      .update("\0")
      .update(opts.region)
      .update("\0")
      .update(endpoint)
      .update("\0")
      .update(String(opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS))
      .digest("hex");
  }

  get(opts: AwsClientOptions): AwsClients {
    const key = AwsClientCache.key(opts);
    const hit = this.entries.get(key);
    if (hit) {
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit;
    }
    const created = this.factory(opts);
    this.entries.set(key, created);
    while (this.entries.size > this.max) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.get(oldest)?.destroy();
      this.entries.delete(oldest);
    }
    return created;
  }

  get size(): number {
    return this.entries.size;
  }

  clear(): void {
    for (const c of this.entries.values()) c.destroy();
    this.entries.clear();
  }
}

// ---------------------------------------------------------------------------------------------
// Error mapping

const THROTTLING_CODES = new Set([
  "Throttling",
  "ThrottlingException",
  "ThrottledException",
  "RequestThrottled",
  "RequestThrottledException",
  "RequestLimitExceeded",
  "TooManyRequestsException",
  "SlowDown",
  "PriorRequestNotComplete",
  "EC2ThrottledException",
  "BandwidthLimitExceeded",
]);
const TRANSIENT_CODES = new Set([
  "InternalError",
  "InternalFailure",
  "InternalServerError",
  "ServiceUnavailable",
  "ServiceUnavailableException",
  "ServiceFailure",
  "Unavailable",
  "RequestTimeout",
  "RequestTimeoutException",
  "RequestExpired", // clock skew; the SDK corrects its offset on the next try
  "IDPCommunicationError",
]);
const ACCESS_DENIED_CODES = new Set([
  "AccessDenied",
  "AccessDeniedException",
  "UnauthorizedOperation",
  "UnauthorizedAccess",
  "Forbidden",
]);
const BAD_CREDENTIALS_CODES = new Set([
  "InvalidClientTokenId",
  "AuthFailure",
  "SignatureDoesNotMatch",
  "UnrecognizedClientException",
  "InvalidAccessKeyId",
  "ExpiredToken",
  "ExpiredTokenException",
  "InvalidToken",
  "IncompleteSignature",
  "MissingAuthenticationToken",
  "OptInRequired",
]);
const NOT_FOUND_CODES = new Set(["NoSuchEntity", "ResourceNotFoundException", "NoSuchKey", "NoSuchBucket", "NotFound"]);
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ECONNABORTED",
  "UND_ERR_SOCKET",
]);

/** Base delay suggested to the controller after throttling (jitter is added). */
export const THROTTLE_RETRY_MS = 2_000;
export const TRANSIENT_RETRY_MS = 1_000;

interface SdkErrorLike {
  name?: unknown;
  code?: unknown;
  Code?: unknown;
  message?: unknown;
  $metadata?: { httpStatusCode?: number };
  $retryable?: { throttling?: boolean };
  cause?: unknown;
}

/** The AWS error code of an SDK error (or of the SDK error behind a CloudError), if any. */
export function awsErrorCode(err: unknown): string | undefined {
  if (err instanceof CloudError) return awsErrorCode(err.cause);
  if (err === null || typeof err !== "object") return undefined;
  const e = err as SdkErrorLike & { Error?: { Code?: unknown } };
  for (const v of [e.Code, e.Error?.Code, e.name, e.code]) {
    if (typeof v === "string" && v !== "" && v !== "Error") return v;
  }
  return undefined;
}

/**
 * True when the error carries this AWS error code. The SDK names modeled exceptions
 * "<Code>Exception" (NoSuchEntityException) and keeps the wire code in `Code`; both are accepted.
 */
export function hasAwsCode(err: unknown, code: string): boolean {
  const c = awsErrorCode(err);
  return c === code || c === `${code}Exception`;
}

function inSet(set: Set<string>, code: string | undefined): boolean {
  return code !== undefined && (set.has(code) || set.has(code.replace(/Exception$/, "")));
}

function httpStatus(err: unknown): number | undefined {
  if (err === null || typeof err !== "object") return undefined;
  const s = (err as SdkErrorLike).$metadata?.httpStatusCode;
  return typeof s === "number" ? s : undefined;
}

function networkCode(err: unknown): string | undefined {
  let cur: unknown = err;
  for (let depth = 0; depth < 4 && cur !== null && typeof cur === "object"; depth++) {
    const c = (cur as SdkErrorLike).code;
    if (typeof c === "string" && NETWORK_CODES.has(c)) return c;
    const n = (cur as SdkErrorLike).name;
    if (n === "TimeoutError" || n === "AbortError") return String(n);
    cur = (cur as SdkErrorLike).cause;
  }
  return undefined;
}

const MESSAGE_MAX = 600;

function shortMessage(err: unknown): string {
  const m = err !== null && typeof err === "object" ? (err as SdkErrorLike).message : undefined;
  let s = typeof m === "string" ? m : String(err);
  // EC2 appends an opaque encoded authorization blob to UnauthorizedOperation; it helps nobody here.
  s = s.replace(/\s*Encoded authorization failure message:.*$/s, "");
  // Long enough for IAM's whole explanation (who, what, on which resource, and why: no allow, an
  // explicit deny, a service control policy or a permissions boundary), which runs past 300.
  return s.length > MESSAGE_MAX ? `${s.slice(0, MESSAGE_MAX - 3)}...` : s;
}

function camel(code: string): string {
  const parts = code.split(/[^A-Za-z0-9]+/).filter(Boolean);
  const s = parts.map((p) => p.charAt(0).toUpperCase() + p.slice(1)).join("");
  return s || "AwsError";
}

function jitter(base: number): number {
  return base + Math.floor(Math.random() * base);
}

/**
 * Maps any error from an SDK call to a CloudError. `action` is the IAM action name of the call
 * ("ec2:DescribeImages"), so a denied call names the permission the operator lacks.
 */
export function mapAwsError(err: unknown, action: string): CloudError {
  if (err instanceof CloudError) return err;
  const status = httpStatus(err);
  const msg = shortMessage(err);
  // An answer the SDK could not parse (e.g. an XML error body from a JSON service, as moto sends
  // for denied CloudWatch Logs calls) has no AWS code: judge it by its HTTP status alone.
  const unreadable = status !== undefined && (awsErrorCode(err) === "SyntaxError" || msg.includes("Deserialization error"));
  const code = unreadable ? undefined : awsErrorCode(err);
  const stage =
    err !== null && typeof err === "object" ? (err as Record<symbol, unknown>)[CREDENTIAL_STAGE] : undefined;

  const throttled =
    inSet(THROTTLING_CODES, code) ||
    status === 429 ||
    (err !== null && typeof err === "object" && (err as SdkErrorLike).$retryable?.throttling === true);
  if (throttled) {
    return CloudError.retryable("Throttled", `${action}: AWS throttled the request (${code ?? status}): ${msg}`, jitter(THROTTLE_RETRY_MS), err);
  }

  const net = networkCode(err);
  if (net !== undefined) {
    return CloudError.retryable("NetworkError", `${action}: could not reach AWS (${net}): ${msg}`, jitter(TRANSIENT_RETRY_MS), err);
  }

  if (stage === "ambient" && (code === "CredentialsProviderError" || code === undefined)) {
    return CloudError.terminal(
      "InvalidCredentials",
      `${action}: no AWS credentials from the ambient identity (no credentials Secret is set): ${msg}`,
      err,
    );
  }
  if (stage === "ambient-assume-role") {
    if (code === "CredentialsProviderError" || code === undefined) {
      return CloudError.terminal("InvalidCredentials", `${action}: no AWS credentials from the operator's ambient identity to assume spec.aws.roleArn with: ${msg}`, err);
    }
    if (inSet(ACCESS_DENIED_CODES, code) || inSet(BAD_CREDENTIALS_CODES, code)) {
      return CloudError.terminal(
        "InvalidCredentials",
        `${action}: assuming spec.aws.roleArn with the operator's ambient identity (sts:AssumeRole) failed: ${code}: ${msg}`,
        err,
      );
    }
  }
  if (code === "CredentialsProviderError") {
    return CloudError.terminal("InvalidCredentials", `${action}: could not obtain AWS credentials: ${msg}`, err);
  }
  if (stage === "assume-role") {
    if (inSet(ACCESS_DENIED_CODES, code) || inSet(BAD_CREDENTIALS_CODES, code)) {
      return CloudError.terminal(
        "InvalidCredentials",
        `${action}: assuming the role named by the credentials Secret (sts:AssumeRole) failed: ${code}: ${msg}`,
        err,
      );
    }
  }

  if (inSet(BAD_CREDENTIALS_CODES, code)) {
    return CloudError.terminal("InvalidCredentials", `${action}: AWS rejected the credentials (${code}): ${msg}`, err);
  }
  if (inSet(ACCESS_DENIED_CODES, code)) {
    return CloudError.terminal("AccessDenied", `${action}: access denied; the operator's IAM policy must allow ${action}: ${msg}`, err);
  }
  if (code !== undefined && (inSet(NOT_FOUND_CODES, code) || /NotFound(Exception)?$/.test(code))) {
    return new CloudError("NotFound", camel(code), `${action}: ${code}: ${msg}`, { cause: err });
  }
  if (inSet(TRANSIENT_CODES, code) || (status !== undefined && status >= 500)) {
    return CloudError.retryable("AwsUnavailable", `${action}: AWS is unavailable (${code ?? status}): ${msg}`, jitter(TRANSIENT_RETRY_MS), err);
  }
  if (code === undefined && status === 401) {
    return CloudError.terminal("InvalidCredentials", `${action}: AWS rejected the credentials (HTTP 401): ${msg}`, err);
  }
  if (code === undefined && status === 403) {
    return CloudError.terminal("AccessDenied", `${action}: access denied (HTTP 403); the operator's IAM policy must allow ${action}: ${msg}`, err);
  }
  if (code === undefined && status === 404) {
    return new CloudError("NotFound", "NotFound", `${action}: HTTP 404: ${msg}`, { cause: err });
  }
  if (code === undefined && status === undefined) {
    // Not an AWS answer at all (a bug or an unexpected local failure): retry rather than stall.
    return CloudError.retryable("AwsCallFailed", `${action}: ${msg}`, jitter(TRANSIENT_RETRY_MS), err);
  }
  return CloudError.terminal(camel(code ?? `Http${status}`), `${action}: ${code ?? `HTTP ${status}`}: ${msg}`, err);
}

/** Runs one SDK call and maps its failure. */
export async function awsCall<T>(action: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw mapAwsError(err, action);
  }
}
