// Log Analytics data plane of the test Azure emulator: the Logs Ingestion API served on data
// collection endpoints, and the Log Analytics query API. The emulator core (ARM, Entra, RBAC) hands
// this module a LogsHost; this module owns the rows and never touches ARM state directly.
import type { IncomingMessage, ServerResponse } from "node:http";
import { createHash } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { executeKql, KqlError, parseDatetimeTicks, parseKql, type KqlColumn, type KqlType } from "./kql.js";

export interface LogsHost {
  authorize(
    token: string | undefined,
    action: string,
    scope: string,
    dataAction: boolean,
  ): { ok: true; principal: { oid: string; appid?: string; tid: string } } | { ok: false; status: number; body: unknown };
  /* eslint-disable @typescript-eslint/no-explicit-any -- ARM JSON as stored by the emulator core */
  findDcrByImmutableId(immutableId: string): { id: string; properties: any } | undefined; // ARM JSON of the DCR
  findWorkspaceByCustomerId(customerId: string): { id: string; properties: any } | undefined;
  findWorkspaceById(resourceId: string): { id: string; properties: any } | undefined;
  findTable(workspaceId: string, tableName: string): { id: string; properties: any } | undefined;
  /* eslint-enable @typescript-eslint/no-explicit-any */
  recordRequest(entry: { method: string; path: string; resourceType: string; operation: string; caller?: string; status: number }): void;
  faultFor(operation: string): { status: number; retryAfterS?: number } | undefined;
}

export interface LogsPlane {
  /** Serves the request when its path belongs to the logs plane; returns false otherwise. */
  handle(req: IncomingMessage, res: ServerResponse, url: URL, body: Buffer): boolean;
  /** Sets the ingestion delay for new rows and for rows not yet visible (measured from their arrival). */
  setIngestionDelay(ms: number): void;
  /**
   * Sets the per-batch jitter added to the ingestion delay of new rows: each upload's rows become
   * queryable together, after the delay plus 0..jitterMs (pseudo-random per batch), so a later
   * batch can become queryable before an earlier one, as Log Analytics gives no order.
   */
  setIngestionJitter(ms: number): void;
  /**
   * Sets the ingestion delay of what one data collection rule (by immutable ID) delivers, in place
   * of the plane's delay (null: back to it); new rows and rows not yet visible alike. Log
   * Analytics' latency differs from one pipeline to another, and a test can slow one CE's log
   * without slowing the others'.
   */
  setDcrIngestionDelay(immutableId: string, ms: number | null): void;
  /** Forgets every row and restores the initial ingestion delay. */
  reset(): void;
  onWorkspaceDeleted(workspaceId: string): void;
}

/** Path prefix of every DCE's logs ingestion endpoint: /dce/<dce-name-lowercase>. */
export const DCE_PATH_PREFIX = "/dce/";
/** Base path of the Log Analytics query API. */
export const QUERY_PATH_PREFIX = "/loganalytics/v1/";

/** Operation names used for the request log and fault injection. */
export const OP_INGEST = "LogsIngestion.Upload";
export const OP_QUERY = "LogAnalytics.Query";

export const TELEMETRY_WRITE = "Microsoft.Insights/Telemetry/Write";
export const QUERY_READ = "Microsoft.OperationalInsights/workspaces/query/read";
export const QUERY_CUSTOM_TABLES_READ = "Microsoft.OperationalInsights/workspaces/query/Tables.Custom/read";
export const TABLE_DATA_READ = "Microsoft.OperationalInsights/workspaces/tables/data/read";

/** The Logs Ingestion API refuses calls above 1 MB, compressed or not. */
export const MAX_INGESTION_BYTES = 1024 * 1024;
const INGESTION_API_VERSIONS = new Set(["2023-01-01", "2021-11-01-preview"]);

interface StoredRow {
  arrivedAt: number;
  visibleAt: number;
  /** The batch's extra delay (jitter), kept when the base delay changes. */
  jitterMs: number;
  /** The data collection rule it came through (lower case). */
  dcr: string;
  values: Record<string, unknown>;
}

type Json = Record<string, unknown>;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
    readonly headers: Record<string, string> = {},
  ) {
    super(`HTTP ${status}`);
  }
}

const errorBody = (code: string, message: string, extra: Json = {}): Json => ({ error: { code, message, ...extra } });

/** ARM table column types → KQL types. */
function kqlTypeOf(armType: string): KqlType | undefined {
  switch (armType.toLowerCase()) {
    case "string":
      return "string";
    case "int":
      return "int";
    case "long":
      return "long";
    case "real":
      return "real";
    case "boolean":
    case "bool":
      return "bool";
    case "datetime":
      return "datetime";
    case "guid":
      return "guid";
    case "dynamic":
      return "dynamic";
    default:
      return undefined;
  }
}

function bearer(req: IncomingMessage): string | undefined {
  const h = req.headers.authorization;
  if (!h) return undefined;
  const m = /^Bearer\s+(.+)$/i.exec(h);
  return m ? (m[1] as string).trim() : h;
}

/** Audiences Azure accepts on each API (tokens asked for "<audience>/.default"). */
export const INGESTION_AUDIENCES = ["https://monitor.azure.com", "https://monitor.azure.com/"];
export const QUERY_AUDIENCES = ["https://api.loganalytics.io", "https://api.loganalytics.io/", "https://api.loganalytics.azure.com", "https://api.loganalytics.azure.com/"];

/** The `aud` claim of a bearer token the host has already verified (undefined when not a JWT). */
function tokenAudiences(token: string): string[] | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const aud = (JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as { aud?: unknown }).aud;
    return Array.isArray(aud) ? aud.map(String) : aud === undefined ? undefined : [String(aud)];
  } catch {
    return undefined;
  }
}

function checkAudience(token: string, allowed: string[], status: number): void {
  const auds = tokenAudiences(token) ?? [];
  if (!auds.some((a) => allowed.includes(a))) {
    throw new HttpError(status, errorBody("InvalidAuthenticationTokenAudience", `The access token has been obtained for the wrong audience or resource '${auds.join(",")}'. It should exactly match one of the allowed audiences ${allowed.map((x) => `'${x}'`).join(",")}.`));
  }
}

function hostMessage(body: unknown): string {
  const err = (body as { error?: { message?: unknown } } | undefined)?.error;
  return typeof err?.message === "string" ? err.message : JSON.stringify(body);
}

function lastSegment(id: string): string {
  return id.split("/").filter(Boolean).pop() ?? "";
}

/** Converts one stream value to its stored form, or returns an error message. */
function convertStreamValue(value: unknown, type: string): { ok: true; value: unknown } | { ok: false; why: string } {
  if (value === null || value === undefined) return { ok: true, value: null };
  switch (type.toLowerCase()) {
    case "string":
      return typeof value === "string" ? { ok: true, value } : { ok: false, why: `expected a string, got ${JSON.stringify(value)}` };
    case "int":
    case "long":
      return typeof value === "number" && Number.isInteger(value)
        ? { ok: true, value }
        : { ok: false, why: `expected an integer, got ${JSON.stringify(value)}` };
    case "real":
      return typeof value === "number" && Number.isFinite(value)
        ? { ok: true, value }
        : { ok: false, why: `expected a number, got ${JSON.stringify(value)}` };
    case "boolean":
      return typeof value === "boolean" ? { ok: true, value } : { ok: false, why: `expected true or false, got ${JSON.stringify(value)}` };
    case "datetime": {
      const ticks = typeof value === "string" ? parseDatetimeTicks(value) : undefined;
      return ticks !== undefined
        ? { ok: true, value: ticks }
        : { ok: false, why: `expected an ISO 8601 date-time string, got ${JSON.stringify(value)}` };
    }
    case "dynamic":
      return { ok: true, value };
    default:
      return { ok: false, why: `the stream declares the unknown type '${type}'` };
  }
}

/** Fits a validated stream value into the destination table column type; null when it cannot. */
function fitToTable(value: unknown, type: KqlType): unknown {
  if (value === null) return null;
  switch (type) {
    case "string":
      return typeof value === "string" ? value : typeof value === "bigint" ? null : JSON.stringify(value);
    case "int":
    case "long":
      return typeof value === "number" && Number.isInteger(value) ? value : null;
    case "real":
      return typeof value === "number" ? value : null;
    case "bool":
      return typeof value === "boolean" ? value : null;
    case "datetime":
      return typeof value === "bigint" ? value : typeof value === "string" ? (parseDatetimeTicks(value) ?? null) : null;
    case "guid":
      return typeof value === "string" ? value : null;
    default:
      return value;
  }
}

/** Parses the query API's ISO 8601 timespan ("PT1H", "start/end", "start/PT1H", "PT1H/end"). */
function parseTimespan(text: string, now: number): { startTicks: bigint; endTicks: bigint } {
  const bad = () =>
    new HttpError(400, errorBody("BadArgumentError", "The request had some invalid properties", {
      innererror: { code: "InvalidTimespan", message: `The timespan '${text}' is not an ISO 8601 interval or duration the emulator understands` },
    }));
  const duration = (d: string): bigint => {
    const m = /^P(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/i.exec(d);
    if (!m || d.toUpperCase() === "P" || d.toUpperCase().endsWith("T")) throw bad();
    const [w, dd, h, mi, s] = [m[1], m[2], m[3], m[4], m[5]].map((x) => Number(x ?? 0)) as [number, number, number, number, number];
    const ms = (((w * 7 + dd) * 24 + h) * 60 + mi) * 60_000 + s * 1000;
    return BigInt(Math.round(ms * 10_000));
  };
  const nowTicks = BigInt(now) * 10_000n;
  const parts = text.split("/");
  if (parts.length === 1) {
    return { startTicks: nowTicks - duration(text), endTicks: nowTicks };
  }
  if (parts.length !== 2) throw bad();
  const [a = "", b = ""] = parts;
  const ta = parseDatetimeTicks(a), tb = parseDatetimeTicks(b);
  if (ta !== undefined && tb !== undefined) return { startTicks: ta, endTicks: tb };
  if (ta !== undefined) return { startTicks: ta, endTicks: ta + duration(b) };
  if (tb !== undefined) return { startTicks: tb - duration(a), endTicks: tb };
  throw bad();
}

export function createLogsPlane(host: LogsHost, opts: { ingestionDelayMs: number }): LogsPlane {
  let ingestionDelayMs = opts.ingestionDelayMs;
  let ingestionJitterMs = 0;
  let batchCount = 0;
  /** DCR immutable ID (lower case) -> its own ingestion delay. */
  const dcrDelays = new Map<string, number>();
  const delayOf = (dcr: string): number => dcrDelays.get(dcr) ?? ingestionDelayMs;
  /** Extra delay of the next batch: 0..ingestionJitterMs, from a fixed pseudo-random sequence (a reset restarts it). */
  const jitter = (): number => {
    batchCount++;
    if (ingestionJitterMs <= 0) return 0;
    const h = createHash("sha256").update(`ingest-jitter-${batchCount}`).digest();
    return Math.floor((h.readUInt32BE(0) / 0x1_0000_0000) * (ingestionJitterMs + 1));
  };
  // workspace resource ID (lower case) → table name (exact) → rows in arrival order
  const store = new Map<string, Map<string, StoredRow[]>>();

  function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    if (body === undefined) {
      res.writeHead(status, headers);
      res.end();
      return;
    }
    const text = JSON.stringify(body);
    const errCode = (body as { error?: { code?: unknown } }).error?.code;
    res.writeHead(status, {
      "content-type": "application/json; charset=utf-8",
      ...(typeof errCode === "string" && status >= 400 ? { "x-ms-error-code": errCode } : {}),
      ...headers,
    });
    res.end(text);
  }

  function injectedFault(operation: string): HttpError | undefined {
    const f = host.faultFor(operation);
    if (!f) return undefined;
    const code = f.status === 429 ? "TooManyRequests" : f.status === 503 ? "ServiceUnavailable" : "InternalServerError";
    const headers: Record<string, string> = f.retryAfterS !== undefined ? { "retry-after": String(f.retryAfterS) } : {};
    return new HttpError(f.status, errorBody(code, `Injected fault for ${operation} (emulator test control)`), headers);
  }

  // ---------------------------------------------------------------------------------------------
  // Logs Ingestion API: POST /dce/<dce>/dataCollectionRules/<immutableId>/streams/<stream>?api-version=

  function ingest(req: IncomingMessage, url: URL, rawBody: Buffer): { caller?: string } {
    const m = /^\/dce\/([^/]+)\/dataCollectionRules\/([^/]+)\/streams\/([^/]+)\/?$/i.exec(url.pathname);
    if (!m) throw new HttpError(404, errorBody("NotFound", `No Logs Ingestion API operation matches the path '${url.pathname}'`));
    const [, dceName = "", immutableId = "", streamEnc = ""] = m;
    const stream = decodeURIComponent(streamEnc);
    if (req.method !== "POST") throw new HttpError(405, errorBody("MethodNotAllowed", `The Logs Ingestion API accepts POST only, not ${req.method}`));
    const apiVersion = url.searchParams.get("api-version");
    if (!apiVersion || !INGESTION_API_VERSIONS.has(apiVersion)) {
      throw new HttpError(400, errorBody("InvalidApiVersion", `The api-version '${apiVersion ?? ""}' is not supported; use one of ${[...INGESTION_API_VERSIONS].join(", ")}`));
    }
    const fault = injectedFault(OP_INGEST);
    if (fault) throw fault;

    const dcr = host.findDcrByImmutableId(decodeURIComponent(immutableId));
    const token = bearer(req);
    if (!dcr) {
      if (!token) throw new HttpError(401, errorBody("InvalidAuthenticationToken", "The Authorization header is missing or has no bearer token"));
      throw new HttpError(403, errorBody("OperationFailed", `The authentication token provided does not have access to ingest data for the data collection rule with immutable Id '${immutableId}': no data collection rule with that immutable Id exists`));
    }
    const auth = host.authorize(token, TELEMETRY_WRITE, dcr.id, true);
    if (!auth.ok && auth.status !== 403) throw new HttpError(auth.status, auth.body);
    checkAudience(token as string, INGESTION_AUDIENCES, 401);
    if (!auth.ok) {
      throw new HttpError(403, errorBody("OperationFailed", `The authentication token provided does not have access to ingest data for the data collection rule with immutable Id '${immutableId}'. Required authorization action '${TELEMETRY_WRITE}' was not granted on '${dcr.id}': ${hostMessage(auth.body)}`));
    }
    const caller = auth.principal.oid;
    const props = (dcr.properties ?? {}) as Json;
    const dceId = typeof props["dataCollectionEndpointId"] === "string" ? (props["dataCollectionEndpointId"] as string) : "";
    if (lastSegment(dceId).toLowerCase() !== decodeURIComponent(dceName).toLowerCase()) {
      throw new HttpError(403, errorBody("OperationFailed", `The data collection rule with immutable Id '${immutableId}' is not associated with the data collection endpoint '${dceName}' (its dataCollectionEndpointId is '${dceId || "unset"}')`));
    }

    // Body: JSON array, optionally gzip-compressed; 1 MB limit before and after decompression.
    if (rawBody.length > MAX_INGESTION_BYTES) throw tooLarge(rawBody.length);
    let body = rawBody;
    const encoding = (req.headers["content-encoding"] ?? "").toString().toLowerCase();
    if (encoding === "gzip") {
      try {
        body = gunzipSync(rawBody, { maxOutputLength: MAX_INGESTION_BYTES + 1 });
      } catch (e) {
        if ((e as { code?: string }).code === "ERR_BUFFER_TOO_LARGE" || /too large|maxOutputLength/i.test(String(e))) throw tooLarge(MAX_INGESTION_BYTES + 1);
        throw new HttpError(400, errorBody("InvalidContentEncoding", "The request body is not valid gzip although Content-Encoding is gzip"));
      }
      if (body.length > MAX_INGESTION_BYTES) throw tooLarge(body.length);
    } else if (encoding && encoding !== "identity") {
      throw new HttpError(400, errorBody("InvalidContentEncoding", `Content-Encoding '${encoding}' is not supported; use gzip or none`));
    }
    let rows: unknown;
    try {
      rows = JSON.parse(body.toString("utf8"));
    } catch {
      throw new HttpError(400, errorBody("InvalidPayload", "The request body is not valid JSON"));
    }
    if (!Array.isArray(rows)) throw new HttpError(400, errorBody("InvalidPayload", "The request body must be a JSON array of objects"));

    // Stream declaration.
    const declarations = (props["streamDeclarations"] ?? {}) as Record<string, { columns?: { name: string; type: string }[] }>;
    const declName = Object.keys(declarations).find((k) => k === stream);
    if (!stream.startsWith("Custom-") || !declName) {
      throw new HttpError(400, errorBody("InvalidStream", `The stream '${stream}' is not declared in the data collection rule with immutable Id '${immutableId}' (declared: ${Object.keys(declarations).join(", ") || "none"})`));
    }
    const columns = declarations[declName]?.columns ?? [];
    const colTypes = new Map(columns.map((c) => [c.name, c.type]));
    const converted: Record<string, unknown>[] = [];
    rows.forEach((row, i) => {
      if (row === null || typeof row !== "object" || Array.isArray(row)) {
        throw new HttpError(400, errorBody("InvalidPayload", `Record ${i} is not a JSON object`));
      }
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(row as Json)) {
        const type = colTypes.get(k);
        if (type === undefined) {
          throw new HttpError(400, errorBody("InvalidPayload", `Record ${i} has the property '${k}', which the stream '${stream}' does not declare (declared: ${columns.map((c) => c.name).join(", ")})`));
        }
        const c = convertStreamValue(v, type);
        if (!c.ok) throw new HttpError(400, errorBody("InvalidPayload", `Record ${i}, column '${k}' (${type}): ${c.why}`));
        out[k] = c.value;
      }
      converted.push(out);
    });

    // Data flows: stream → destination workspace(s) → output table.
    const flows = ((props["dataFlows"] ?? []) as { streams?: string[]; destinations?: string[]; transformKql?: string; outputStream?: string }[]).filter((f) =>
      (f.streams ?? []).includes(stream),
    );
    if (flows.length === 0) {
      throw new HttpError(400, errorBody("InvalidStream", `No data flow of the data collection rule with immutable Id '${immutableId}' takes the stream '${stream}'`));
    }
    const laDestinations = (((props["destinations"] ?? {}) as Json)["logAnalytics"] ?? []) as { name?: string; workspaceResourceId?: string }[];
    const deliveries: { workspaceId: string; table: string; tableColumns: KqlColumn[] }[] = [];
    for (const flow of flows) {
      const transform = (flow.transformKql ?? "source").trim();
      if (transform !== "source") {
        throw new HttpError(400, errorBody("NotSupportedByEmulator", `The data flow's transformKql '${transform}' is not supported by the emulator: only 'source' (no transformation) is`));
      }
      const output = flow.outputStream ?? stream;
      if (!output.startsWith("Custom-")) {
        throw new HttpError(400, errorBody("NotSupportedByEmulator", `The output stream '${output}' is not supported by the emulator: only custom tables (Custom-<table>_CL) are`));
      }
      const tableName = output.slice("Custom-".length);
      for (const destName of flow.destinations ?? []) {
        const dest = laDestinations.find((d) => d.name === destName);
        if (!dest?.workspaceResourceId) {
          throw new HttpError(400, errorBody("NotSupportedByEmulator", `The destination '${destName}' is not a Log Analytics destination; the emulator delivers only to Log Analytics workspaces`));
        }
        const ws = host.findWorkspaceById(dest.workspaceResourceId);
        const table = ws ? host.findTable(ws.id, tableName) : undefined;
        // As in Azure, a vanished workspace or table does not fail the call: the rows are dropped.
        if (!ws || !table) continue;
        const schemaCols = ((table.properties?.schema?.columns ?? []) as { name: string; type: string }[]).flatMap((c) => {
          const t = kqlTypeOf(c.type);
          return t ? [{ name: c.name, type: t }] : [];
        });
        deliveries.push({ workspaceId: ws.id, table: (table.properties?.schema?.name as string | undefined) ?? tableName, tableColumns: schemaCols });
      }
    }
    const now = Date.now();
    const extra = jitter();
    // Build every delivery first so that a refused record stores nothing anywhere.
    const batches = deliveries.map((d) => {
      const hasTimeGenerated = d.tableColumns.some((c) => c.name === "TimeGenerated");
      const stored: StoredRow[] = converted.map((row, i) => {
        const values: Record<string, unknown> = {};
        for (const c of d.tableColumns) values[c.name] = c.name in row ? fitToTable(row[c.name], c.type) : null;
        if (hasTimeGenerated && values["TimeGenerated"] === null) {
          throw new HttpError(400, errorBody("InvalidPayload", `Record ${i} has no TimeGenerated value, which the destination table '${d.table}' requires`));
        }
        const dcrKey = decodeURIComponent(immutableId).toLowerCase();
        return { arrivedAt: now, visibleAt: now + delayOf(dcrKey) + extra, jitterMs: extra, dcr: dcrKey, values };
      });
      return { d, stored };
    });
    for (const { d, stored } of batches) {
      const wsKey = d.workspaceId.toLowerCase();
      let tables = store.get(wsKey);
      if (!tables) store.set(wsKey, (tables = new Map()));
      const list = tables.get(d.table) ?? [];
      list.push(...stored);
      tables.set(d.table, list);
    }
    return { caller };
  }

  function tooLarge(size: number): HttpError {
    return new HttpError(413, errorBody("ContentLengthLimitExceeded", `The request body is ${size} bytes; the Logs Ingestion API accepts at most ${MAX_INGESTION_BYTES} bytes (1 MB) per call, compressed or not`));
  }

  // ---------------------------------------------------------------------------------------------
  // Query API: POST|GET /loganalytics/v1/workspaces/<customerId>/query, or a workspace's resource ID + /query

  function query(req: IncomingMessage, url: URL, rawBody: Buffer): { status: number; body: unknown; caller?: string; headers?: Record<string, string> } {
    const rest = url.pathname.slice(QUERY_PATH_PREFIX.length - 1); // keeps the leading '/'
    let ws: { id: string; properties: Json } | undefined;
    const byCustomerId = /^\/workspaces\/([^/]+)\/query\/?$/i.exec(rest);
    const byResource = /^(\/subscriptions\/[^/]+\/resourceGroups\/[^/]+\/providers\/Microsoft\.OperationalInsights\/workspaces\/[^/]+)\/query\/?$/i.exec(rest);
    if (/^\/\$batch\/?$/i.test(rest)) {
      throw new HttpError(400, errorBody("BadArgumentError", "The request had some invalid properties", {
        innererror: { code: "NotSupportedByEmulator", message: "Batch queries ($batch) are not supported by the emulator; send one query per request" },
      }));
    }
    if (byCustomerId) ws = host.findWorkspaceByCustomerId(decodeURIComponent(byCustomerId[1] as string));
    else if (byResource) ws = host.findWorkspaceById(decodeURIComponent(byResource[1] as string));
    else if (/\/query\/?$/i.test(rest)) {
      throw new HttpError(400, errorBody("BadArgumentError", "The request had some invalid properties", {
        innererror: { code: "NotSupportedByEmulator", message: `Resource-centric queries are supported by the emulator for Log Analytics workspaces only, not '${rest.replace(/\/query\/?$/i, "")}'` },
      }));
    } else throw new HttpError(404, errorBody("PathNotFoundError", `The requested path '${url.pathname}' does not exist`));
    if (req.method !== "POST" && req.method !== "GET") throw new HttpError(405, errorBody("MethodNotAllowed", `The query API accepts GET and POST, not ${req.method}`));
    const fault = injectedFault(OP_QUERY);
    if (fault) throw fault;

    const token = bearer(req);
    if (!token) throw new HttpError(401, errorBody("AuthorizationRequiredError", "Valid authentication was not provided"));
    if (!ws) {
      throw new HttpError(404, errorBody("WorkspaceNotFoundError", `The workspace '${byCustomerId ? byCustomerId[1] : byResource?.[1]}' could not be found`));
    }
    const denied = (body: unknown) =>
      new HttpError(403, errorBody("InsufficientAccessError", `The provided credentials have insufficient access to perform the requested operation: ${hostMessage(body)}`));
    const auth = host.authorize(token, QUERY_READ, ws.id, false);
    if (!auth.ok && auth.status !== 403) throw new HttpError(auth.status, auth.body);
    checkAudience(token, QUERY_AUDIENCES, 403);
    if (!auth.ok) throw denied(auth.body);
    const caller = auth.principal.oid;

    let text: string | undefined;
    let timespan: string | undefined;
    if (req.method === "GET") {
      text = url.searchParams.get("query") ?? undefined;
      timespan = url.searchParams.get("timespan") ?? undefined;
    } else {
      let parsed: Json;
      try {
        parsed = JSON.parse(rawBody.toString("utf8") || "{}") as Json;
      } catch {
        throw new HttpError(400, errorBody("BadArgumentError", "The request had some invalid properties", { innererror: { code: "InvalidBody", message: "The request body is not valid JSON" } }));
      }
      text = typeof parsed["query"] === "string" ? (parsed["query"] as string) : undefined;
      timespan = typeof parsed["timespan"] === "string" ? (parsed["timespan"] as string) : undefined;
      if (Array.isArray(parsed["workspaces"]) && parsed["workspaces"].length > 0) {
        throw new HttpError(400, errorBody("BadArgumentError", "The request had some invalid properties", {
          innererror: { code: "NotSupportedByEmulator", message: "Cross-workspace queries (additional workspaces) are not supported by the emulator" },
        }));
      }
    }
    if (!text) throw new HttpError(400, errorBody("BadArgumentError", "The request had some invalid properties", { innererror: { code: "MissingQuery", message: "The query parameter is required" } }));

    const kqlError = (e: KqlError) => {
      const code = e.kind === "NotSupported" ? "NotSupportedByEmulator" : e.kind;
      const summary = e.kind === "SyntaxError" ? "A recognition error occurred in the query." : e.kind === "SemanticError" ? "A semantic error occurred." : "The query uses KQL the emulator does not support.";
      return new HttpError(400, errorBody("BadArgumentError", "The request had some invalid properties", { innererror: { code, message: summary, innererror: { code, message: e.message } } }));
    };
    const now = Date.now();
    try {
      const q = parseKql(text);
      const table = host.findTable(ws.id, q.table);
      const tableName = (table?.properties?.schema?.name as string | undefined) ?? (table ? lastSegment(table.id) : undefined);
      if (!table || tableName !== q.table) {
        throw new KqlError("SemanticError", `Failed to resolve table or column expression named '${q.table}'`);
      }
      // Table-level access: the per-table action, the custom-tables action, or the table data action.
      const tableId = `${ws.id}/tables/${q.table}`;
      const tableActions: [string, string, boolean][] = [
        [`Microsoft.OperationalInsights/workspaces/query/${q.table}/read`, ws.id, false],
        ...(q.table.endsWith("_CL") ? ([[QUERY_CUSTOM_TABLES_READ, ws.id, false]] as [string, string, boolean][]) : []),
        [TABLE_DATA_READ, tableId, true],
      ];
      let granted = false;
      let firstDenial: unknown;
      for (const [action, scope, data] of tableActions) {
        const r = host.authorize(token, action, scope, data);
        if (r.ok) {
          granted = true;
          break;
        }
        firstDenial ??= r.body;
      }
      if (!granted) {
        throw new HttpError(403, errorBody("InsufficientAccessError", `The provided credentials have insufficient access to query the table '${q.table}': none of ${tableActions.map(([a]) => `'${a}'`).join(", ")} is granted (${hostMessage(firstDenial)})`));
      }
      const schemaCols = ((table.properties?.schema?.columns ?? []) as { name: string; type: string }[]).flatMap((c) => {
        const t = kqlTypeOf(c.type);
        return t ? [{ name: c.name, type: t }] : [];
      });
      const customerId = String(ws.properties?.["customerId"] ?? "");
      const columns: KqlColumn[] = [{ name: "TenantId", type: "string" }, ...schemaCols.filter((c) => c.name !== "TenantId" && c.name !== "Type"), { name: "Type", type: "string" }];
      let rows = (store.get(ws.id.toLowerCase())?.get(q.table) ?? []).filter((r) => r.visibleAt <= now);
      if (timespan) {
        const { startTicks, endTicks } = parseTimespan(timespan, now);
        if (schemaCols.some((c) => c.name === "TimeGenerated")) {
          rows = rows.filter((r) => {
            const t = r.values["TimeGenerated"];
            return typeof t === "bigint" && t >= startTicks && t <= endTicks;
          });
        }
      }
      const result = executeKql(q, { name: q.table, columns, rows: rows.map((r) => ({ TenantId: customerId, ...r.values, Type: q.table })) }, new Date(now));
      const body: Json = { tables: [{ name: "PrimaryResult", columns: result.columns, rows: result.rows }] };
      const prefer = (req.headers["prefer"] ?? "").toString();
      const applied: string[] = [];
      if (/include-statistics=true/i.test(prefer)) {
        body["statistics"] = { query: { executionTime: 0, resourceUsage: {}, datasetStatistics: [{ tableRowCount: result.rows.length }] } };
        applied.push("include-statistics=true");
      }
      if (/include-render=true/i.test(prefer)) {
        body["render"] = {};
        applied.push("include-render=true");
      }
      return { status: 200, body, caller, headers: applied.length ? { "preference-applied": applied.join(",") } : {} };
    } catch (e) {
      if (e instanceof KqlError) throw kqlError(e);
      throw e;
    }
  }

  return {
    handle(req, res, url, body) {
      const isIngest = url.pathname.toLowerCase().startsWith(DCE_PATH_PREFIX);
      const isQuery = url.pathname.toLowerCase().startsWith(QUERY_PATH_PREFIX);
      if (!isIngest && !isQuery) return false;
      const resourceType = isIngest ? "Microsoft.Insights/dataCollectionRules" : "Microsoft.OperationalInsights/workspaces";
      const operation = isIngest ? OP_INGEST : OP_QUERY;
      let status: number;
      let caller: string | undefined;
      try {
        if (isIngest) {
          caller = ingest(req, url, body).caller;
          status = 204;
          send(res, 204, undefined);
        } else {
          const r = query(req, url, body);
          caller = r.caller;
          status = r.status;
          send(res, r.status, r.body, r.headers);
        }
      } catch (e) {
        if (e instanceof HttpError) {
          status = e.status;
          send(res, e.status, e.body, e.headers);
        } else {
          status = 500;
          send(res, 500, errorBody("InternalServerError", `Emulator logs plane failure: ${(e as Error).message}`));
        }
      }
      host.recordRequest({ method: req.method ?? "GET", path: url.pathname, resourceType, operation, ...(caller ? { caller } : {}), status });
      return true;
    },
    setIngestionDelay(ms) {
      ingestionDelayMs = ms;
      const now = Date.now();
      for (const tables of store.values()) {
        for (const rows of tables.values()) {
          for (const r of rows) if (r.visibleAt > now && !dcrDelays.has(r.dcr)) r.visibleAt = r.arrivedAt + ms + r.jitterMs;
        }
      }
    },
    setDcrIngestionDelay(immutableId, ms) {
      const key = immutableId.toLowerCase();
      if (ms === null) dcrDelays.delete(key);
      else dcrDelays.set(key, Math.max(0, ms));
      const now = Date.now();
      for (const tables of store.values()) {
        for (const rows of tables.values()) {
          for (const r of rows) if (r.dcr === key && r.visibleAt > now) r.visibleAt = r.arrivedAt + delayOf(key) + r.jitterMs;
        }
      }
    },
    setIngestionJitter(ms) {
      ingestionJitterMs = Math.max(0, ms);
    },
    reset() {
      store.clear();
      ingestionDelayMs = opts.ingestionDelayMs; // a reset also forgets a delay a test set
      ingestionJitterMs = 0;
      batchCount = 0;
      dcrDelays.clear();
    },
    onWorkspaceDeleted(workspaceId) {
      store.delete(workspaceId.toLowerCase());
    },
  };
}
