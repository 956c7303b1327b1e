import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createLogsPlane, MAX_INGESTION_BYTES, type LogsHost, type LogsPlane } from "../../azure-emulator/logs/index.js";

const SUB = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers";
const WS_ID = `${SUB}/Microsoft.OperationalInsights/workspaces/ws1`;
const CUSTOMER_ID = "11111111-2222-3333-4444-555555555555";
const DCR_ID = `${SUB}/Microsoft.Insights/dataCollectionRules/dcr1`;
const IMMUTABLE = "dcr-0123456789abcdef0123456789abcdef";
const STREAM = "Custom-RunLog_CL";

const table = {
  id: `${WS_ID}/tables/RunLog_CL`,
  properties: {
    schema: {
      name: "RunLog_CL",
      columns: [
        { name: "TimeGenerated", type: "dateTime" },
        { name: "RunId", type: "string" },
        { name: "Seq", type: "long" },
        { name: "Line", type: "string" },
      ],
    },
  },
};
let dcrProps: Record<string, unknown>;
function freshDcr(): Record<string, unknown> {
  return {
    immutableId: IMMUTABLE,
    dataCollectionEndpointId: `${SUB}/Microsoft.Insights/dataCollectionEndpoints/DCE-One`,
    streamDeclarations: {
      [STREAM]: {
        columns: [
          { name: "TimeGenerated", type: "datetime" },
          { name: "RunId", type: "string" },
          { name: "Seq", type: "long" },
          { name: "Line", type: "string" },
        ],
      },
    },
    destinations: { logAnalytics: [{ name: "la", workspaceResourceId: WS_ID }] },
    dataFlows: [{ streams: [STREAM], destinations: ["la"], transformKql: "source", outputStream: STREAM }],
  };
}

/** A JWT-shaped token (the fake host does not verify signatures): sub names the grants, aud the API. */
function jwt(sub: string, aud: string): string {
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "none" })}.${b64({ sub, aud })}.sig`;
}
const subOf = (token: string): string => (JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as { sub: string }).sub;
const MONITOR = "https://monitor.azure.com";
const LOGANALYTICS = "https://api.loganalytics.io";

// token subject → granted "action@scope" (scope compared case-insensitively by prefix, like RBAC inheritance)
const grants = new Map<string, string[]>();
const log: { method: string; operation: string; status: number; caller?: string }[] = [];
let fault: { status: number; retryAfterS?: number } | undefined;

const host: LogsHost = {
  authorize(token, action, scope) {
    if (!token) return { ok: false, status: 401, body: { error: { code: "AuthenticationFailed", message: "no token" } } };
    const name = subOf(token);
    const g = grants.get(name) ?? [];
    const ok = g.some((entry) => {
      const [a, s] = entry.split("@") as [string, string];
      return a.toLowerCase() === action.toLowerCase() && scope.toLowerCase().startsWith(s.toLowerCase());
    });
    if (ok) return { ok: true, principal: { oid: `oid-${name}`, tid: "tenant" } };
    return {
      ok: false,
      status: 403,
      body: { error: { code: "AuthorizationFailed", message: `The client 'oid-${name}' does not have authorization to perform action '${action}' over scope '${scope}'` } },
    };
  },
  findDcrByImmutableId: (id) => (id === IMMUTABLE ? { id: DCR_ID, properties: dcrProps } : undefined),
  findWorkspaceByCustomerId: (id) => (id === CUSTOMER_ID ? { id: WS_ID, properties: { customerId: CUSTOMER_ID } } : undefined),
  findWorkspaceById: (id) => (id.toLowerCase() === WS_ID.toLowerCase() ? { id: WS_ID, properties: { customerId: CUSTOMER_ID } } : undefined),
  findTable: (ws, name) => (ws === WS_ID && name.toLowerCase() === "runlog_cl" ? table : undefined),
  recordRequest: (e) => log.push(e),
  faultFor: () => fault,
};

let server: Server;
let base: string;
let plane: LogsPlane;

beforeAll(async () => {
  plane = createLogsPlane(host, { ingestionDelayMs: 0 });
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const url = new URL(req.url ?? "/", "http://127.0.0.1");
      if (!plane.handle(req, res, url, Buffer.concat(chunks))) {
        res.writeHead(418);
        res.end();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));
beforeEach(() => {
  plane.reset();
  plane.setIngestionDelay(0);
  dcrProps = freshDcr();
  grants.clear();
  grants.set("writer", [`Microsoft.Insights/Telemetry/Write@${DCR_ID}`]);
  grants.set("reader", [`Microsoft.OperationalInsights/workspaces/query/read@${WS_ID}`, `Microsoft.OperationalInsights/workspaces/query/Tables.Custom/read@${WS_ID}`]);
  grants.set("datareader", [`Microsoft.OperationalInsights/workspaces/query/read@${WS_ID}`, `Microsoft.OperationalInsights/workspaces/tables/data/read@${WS_ID}/tables/RunLog_CL`]);
  grants.set("wsonly", [`Microsoft.OperationalInsights/workspaces/query/read@${WS_ID}`]);
  log.length = 0;
  fault = undefined;
});

const ingestUrl = (dce = "dce-one", stream = STREAM, api = "2023-01-01") =>
  `${base}/dce/${dce}/dataCollectionRules/${IMMUTABLE}/streams/${stream}?api-version=${api}`;

async function ingest(rows: unknown, opts: { token?: string; aud?: string; gzip?: boolean; dce?: string; stream?: string; raw?: Buffer } = {}) {
  const json = opts.raw ?? Buffer.from(JSON.stringify(rows));
  const body = opts.gzip === false ? json : gzipSync(json);
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (opts.gzip !== false) headers["content-encoding"] = "gzip";
  const token = opts.token ?? "writer";
  if (token) headers["authorization"] = `Bearer ${jwt(token, opts.aud ?? MONITOR)}`;
  const res = await fetch(ingestUrl(opts.dce, opts.stream), { method: "POST", headers, body });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as { error: { code: string; message: string } }) : undefined, headers: res.headers };
}

async function query(q: string, opts: { token?: string; aud?: string; timespan?: string; path?: string } = {}) {
  const res = await fetch(`${base}/loganalytics/v1${opts.path ?? `/workspaces/${CUSTOMER_ID}/query`}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${jwt(opts.token ?? "reader", opts.aud ?? LOGANALYTICS)}` },
    body: JSON.stringify({ query: q, ...(opts.timespan ? { timespan: opts.timespan } : {}) }),
  });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  return { status: res.status, body: (await res.json()) as any };
}

const now = () => new Date().toISOString();
const line = (seq: number, extra: Record<string, unknown> = {}) => ({ TimeGenerated: now(), RunId: "r1", Seq: seq, Line: `line ${seq}`, ...extra });

describe("logs ingestion", () => {
  it("stores gzip and plain JSON rows in the DCR's destination table, answering 204", async () => {
    expect((await ingest([line(1), line(2)])).status).toBe(204);
    expect((await ingest([line(3)], { gzip: false })).status).toBe(204);
    const r = await query("RunLog_CL | order by Seq asc | project Seq, Line, RunId");
    expect(r.status).toBe(200);
    expect(r.body.tables[0].name).toBe("PrimaryResult");
    expect(r.body.tables[0].rows).toEqual([[1, "line 1", "r1"], [2, "line 2", "r1"], [3, "line 3", "r1"]]);
    expect(log.filter((e) => e.operation === "LogsIngestion.Upload").map((e) => [e.status, e.caller])).toEqual([[204, "oid-writer"], [204, "oid-writer"]]);
  });

  it("returns the table's columns plus TenantId and Type, datetimes in ISO form", async () => {
    await ingest([{ TimeGenerated: "2026-01-10T11:00:00.1234567+01:00", RunId: "r", Seq: 7, Line: "x" }]);
    const r = await query("RunLog_CL");
    expect(r.body.tables[0].columns).toEqual([
      { name: "TenantId", type: "string" },
      { name: "TimeGenerated", type: "datetime" },
      { name: "RunId", type: "string" },
      { name: "Seq", type: "long" },
      { name: "Line", type: "string" },
      { name: "Type", type: "string" },
    ]);
    expect(r.body.tables[0].rows).toEqual([[CUSTOMER_ID, "2026-01-10T10:00:00.1234567Z", "r", 7, "x", "RunLog_CL"]]);
  });

  it("keeps rows invisible until the ingestion delay has passed (the delay is adjustable for pending rows)", async () => {
    plane.setIngestionDelay(3_600_000);
    expect((await ingest([line(1)])).status).toBe(204);
    expect((await query("RunLog_CL")).body.tables[0].rows).toEqual([]);
    plane.setIngestionDelay(0);
    expect((await query("RunLog_CL")).body.tables[0].rows).toHaveLength(1);
    // Rows already visible stay visible when the delay grows again.
    plane.setIngestionDelay(3_600_000);
    expect((await query("RunLog_CL")).body.tables[0].rows).toHaveLength(1);
  });

  it("reset forgets rows and restores the initial ingestion delay", async () => {
    await ingest([line(1)]);
    plane.setIngestionDelay(3_600_000);
    plane.reset();
    expect((await query("RunLog_CL")).body.tables[0].rows).toEqual([]);
    await ingest([line(2)]);
    expect((await query("RunLog_CL | project Seq")).body.tables[0].rows).toEqual([[2]]);
  });

  it("refuses a caller without Microsoft.Insights/Telemetry/Write with 403 naming the action", async () => {
    const r = await ingest([line(1)], { token: "reader" });
    expect(r.status).toBe(403);
    expect(r.body?.error.code).toBe("OperationFailed");
    expect(r.body?.error.message).toContain("Microsoft.Insights/Telemetry/Write");
    expect(r.body?.error.message).toContain(IMMUTABLE);
    expect(r.headers.get("x-ms-error-code")).toBe("OperationFailed");
    expect((await ingest([line(1)], { token: "" })).status).toBe(401);
    plane.setIngestionDelay(0);
    expect((await query("RunLog_CL")).body.tables[0].rows).toEqual([]);
  });

  it("refuses a token for another audience than https://monitor.azure.com", async () => {
    const r = await ingest([line(1)], { aud: LOGANALYTICS });
    expect(r.status).toBe(401);
    expect(r.body?.error.code).toBe("InvalidAuthenticationTokenAudience");
  });

  it("refuses a DCR that is not bound to the DCE in the URL, and an unknown immutable ID", async () => {
    const r = await ingest([line(1)], { dce: "other-dce" });
    expect(r.status).toBe(403);
    expect(r.body?.error.message).toMatch(/not associated with the data collection endpoint 'other-dce'/);
    const res = await fetch(`${base}/dce/dce-one/dataCollectionRules/dcr-nope/streams/${STREAM}?api-version=2023-01-01`, {
      method: "POST",
      headers: { authorization: `Bearer ${jwt("writer", MONITOR)}`, "content-type": "application/json" },
      body: "[]",
    });
    expect(res.status).toBe(403);
    expect(await res.text()).toMatch(/no data collection rule with that immutable Id/);
  });

  it("refuses rows that do not match the stream declaration, storing none of the call", async () => {
    const cases: [unknown, RegExp][] = [
      [[line(1), { ...line(2), Seq: "two" }], /Record 1, column 'Seq' \(long\): expected an integer/],
      [[{ ...line(1), Seq: 1.5 }], /expected an integer/],
      [[{ ...line(1), Line: 42 }], /column 'Line' \(string\): expected a string/],
      [[{ ...line(1), TimeGenerated: "soon" }], /column 'TimeGenerated' \(datetime\): expected an ISO 8601/],
      [[{ ...line(1), Colour: "red" }], /property 'Colour', which the stream 'Custom-RunLog_CL' does not declare/],
      [[{ RunId: "r", Seq: 1, Line: "no time" }], /no TimeGenerated value/],
      [[42], /Record 0 is not a JSON object/],
      [{ not: "an array" }, /must be a JSON array/],
    ];
    for (const [rows, msg] of cases) {
      const r = await ingest(rows);
      expect(r.status, JSON.stringify(rows)).toBe(400);
      expect(r.body?.error.message).toMatch(msg);
    }
    const bad = await ingest(undefined, { raw: Buffer.from("[{") });
    expect(bad.status).toBe(400);
    expect(bad.body?.error.code).toBe("InvalidPayload");
    expect((await query("RunLog_CL")).body.tables[0].rows).toEqual([]);
  });

  it("refuses an undeclared stream, a bad api-version, broken gzip", async () => {
    const r = await ingest([line(1)], { stream: "Custom-Other_CL" });
    expect(r.status).toBe(400);
    expect(r.body?.error.code).toBe("InvalidStream");
    const v = await fetch(ingestUrl("dce-one", STREAM, "2020-01-01"), { method: "POST", headers: { authorization: `Bearer ${jwt("writer", MONITOR)}` }, body: "[]" });
    expect(v.status).toBe(400);
    const g = await fetch(ingestUrl(), { method: "POST", headers: { authorization: `Bearer ${jwt("writer", MONITOR)}`, "content-encoding": "gzip" }, body: "not gzip" });
    expect(g.status).toBe(400);
    expect(((await g.json()) as { error: { code: string } }).error.code).toBe("InvalidContentEncoding");
  });

  it("refuses calls above 1 MB, compressed or not, with 413", async () => {
    const big = Array.from({ length: 1200 }, (_, i) => line(i, { Line: "x".repeat(1000) }));
    expect(Buffer.byteLength(JSON.stringify(big))).toBeGreaterThan(MAX_INGESTION_BYTES);
    const gz = await ingest(big);
    expect(gz.status).toBe(413);
    expect(gz.body?.error.code).toBe("ContentLengthLimitExceeded");
    expect((await ingest(big, { gzip: false })).status).toBe(413);
    const fits = Array.from({ length: 900 }, (_, i) => line(i, { Line: "x".repeat(1000) }));
    expect((await ingest(fits)).status).toBe(204);
  });

  it("refuses transformations other than 'source' and non-custom output streams", async () => {
    dcrProps = { ...freshDcr(), dataFlows: [{ streams: [STREAM], destinations: ["la"], transformKql: "source | extend X = 1", outputStream: STREAM }] };
    const r = await ingest([line(1)]);
    expect(r.status).toBe(400);
    expect(r.body?.error.message).toMatch(/transformKql 'source \| extend X = 1' is not supported by the emulator/);
    dcrProps = { ...freshDcr(), dataFlows: [{ streams: [STREAM], destinations: ["la"], outputStream: "Microsoft-Syslog" }] };
    expect((await ingest([line(1)])).body?.error.message).toMatch(/only custom tables/);
  });

  it("honours injected faults with Retry-After", async () => {
    fault = { status: 429, retryAfterS: 3 };
    const r = await ingest([line(1)]);
    expect(r.status).toBe(429);
    expect(r.headers.get("retry-after")).toBe("3");
    fault = undefined;
    expect((await query("RunLog_CL")).body.tables[0].rows).toEqual([]);
  });

  it("forgets a deleted workspace's rows", async () => {
    await ingest([line(1)]);
    plane.onWorkspaceDeleted(WS_ID.toUpperCase());
    expect((await query("RunLog_CL")).body.tables[0].rows).toEqual([]);
  });
});

describe("log analytics query", () => {
  it("needs query/read on the workspace and table access (custom-tables action or table data action)", async () => {
    await ingest([line(1)]);
    expect((await query("RunLog_CL", { token: "datareader" })).body.tables[0].rows).toHaveLength(1);
    const t = await query("RunLog_CL", { token: "wsonly" });
    expect(t.status).toBe(403);
    expect(t.body.error.code).toBe("InsufficientAccessError");
    expect(t.body.error.message).toContain("Microsoft.OperationalInsights/workspaces/query/Tables.Custom/read");
    expect(t.body.error.message).toContain("Microsoft.OperationalInsights/workspaces/tables/data/read");
    const w = await query("RunLog_CL", { token: "writer" });
    expect(w.status).toBe(403);
    expect(w.body.error.message).toContain("Microsoft.OperationalInsights/workspaces/query/read");
  });

  it("refuses a token for another audience than the Log Analytics API", async () => {
    const r = await query("RunLog_CL", { aud: MONITOR });
    expect(r.status).toBe(403);
    expect(r.body.error.code).toBe("InvalidAuthenticationTokenAudience");
  });

  it("answers 400 with Azure's error shape and a precise message for unsupported KQL", async () => {
    const r = await query("RunLog_CL | summarize count() by RunId");
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe("BadArgumentError");
    expect(r.body.error.innererror.code).toBe("NotSupportedByEmulator");
    expect(r.body.error.innererror.innererror.message).toMatch(/'summarize' operator is not supported/);
    const s = await query("RunLog_CL | where Nope == 1");
    expect(s.body.error.innererror.code).toBe("SemanticError");
    const u = await query("Unknown_CL");
    expect(u.status).toBe(400);
    expect(u.body.error.innererror.innererror.message).toMatch(/named 'Unknown_CL'/);
    const c = await query("runlog_cl");
    expect(c.status).toBe(400);
  });

  it("honours timespan (duration, and start/end)", async () => {
    await ingest([
      { TimeGenerated: "2020-01-01T00:00:00Z", RunId: "old", Seq: 1, Line: "a" },
      { TimeGenerated: now(), RunId: "new", Seq: 2, Line: "b" },
    ]);
    expect((await query("RunLog_CL | project RunId", { timespan: "PT1H" })).body.tables[0].rows).toEqual([["new"]]);
    expect((await query("RunLog_CL | project RunId", { timespan: "2019-12-31T00:00:00Z/2020-01-02T00:00:00Z" })).body.tables[0].rows).toEqual([["old"]]);
    expect((await query("RunLog_CL | project RunId", { timespan: "2019-12-31T00:00:00Z/P2D" })).body.tables[0].rows).toEqual([["old"]]);
    expect((await query("RunLog_CL | project RunId")).body.tables[0].rows).toHaveLength(2);
    expect((await query("RunLog_CL", { timespan: "P1Y" })).status).toBe(400);
  });

  it("serves resource-centric workspace queries and GET, refuses $batch", async () => {
    await ingest([line(1)]);
    expect((await query("RunLog_CL", { path: `${WS_ID}/query` })).body.tables[0].rows).toHaveLength(1);
    const g = await fetch(`${base}/loganalytics/v1/workspaces/${CUSTOMER_ID}/query?query=${encodeURIComponent("RunLog_CL | take 1")}`, {
      headers: { authorization: `Bearer ${jwt("reader", LOGANALYTICS)}` },
    });
    expect(((await g.json()) as { tables: unknown[][] }).tables).toHaveLength(1);
    expect((await query("RunLog_CL", { path: "/$batch" })).status).toBe(400);
  });

  it("answers 404 for an unknown workspace and 401 without a token", async () => {
    const r = await query("RunLog_CL", { path: "/workspaces/99999999-0000-0000-0000-000000000000/query" });
    expect(r.status).toBe(404);
    expect(r.body.error.code).toBe("WorkspaceNotFoundError");
    const n = await fetch(`${base}/loganalytics/v1/workspaces/${CUSTOMER_ID}/query`, { method: "POST", body: "{}" });
    expect(n.status).toBe(401);
  });

  it("does not handle paths outside the logs plane", async () => {
    const r = await fetch(`${base}/subscriptions/x`);
    expect(r.status).toBe(418);
  });
});
