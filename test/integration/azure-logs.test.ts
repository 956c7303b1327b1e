// The emulator's Log Analytics data plane through the real SDK packages: Logs Ingestion
// (@azure/monitor-ingestion) on the DCE's logsIngestion endpoint, and the query API
// (@azure/monitor-query-logs), with the ARM resources made through @azure/arm-* clients.
import { seedPath } from "../harness/seed-policy.js";
import type { TokenCredential } from "@azure/core-auth";
import { ClientSecretCredential, ManagedIdentityCredential } from "@azure/identity";
import { MonitorClient } from "@azure/arm-monitor";
import { OperationalInsightsManagementClient } from "@azure/arm-operationalinsights";
import { ResourceManagementClient } from "@azure/arm-resources";
import { isAggregateLogsUploadError, LogsIngestionClient } from "@azure/monitor-ingestion";
import { LogsQueryClient, type LogsQueryResult } from "@azure/monitor-query-logs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { azureClientOptions, azureControl, azureCredentialOptions, azureEndpoint, azureInfo, azureTestCredential } from "../harness/helpers.js";

const RG = "rg-logs";
const TABLE = "RunLog_CL";
const STREAM = "Custom-RunLog";
const LOCATION = "westeurope";
const HOUR = 3_600_000;

type Line = {
  TimeGenerated: string;
  RunId: string;
  Seq: number;
  Line: string;
};

let sub: string;
let tenantId: string;
let customerId: string;
let workspaceId: string;
let dceEndpoint: string;
let dcrId: string;
let immutableId: string;
let writer: TokenCredential;
let reader: TokenCredential;
let queryClient: LogsQueryClient;
const savedPodIdentityHost = process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;

async function principal(displayName: string): Promise<{ cred: ClientSecretCredential; objectId: string }> {
  const p = await azureControl().createPrincipal({ displayName });
  return { cred: new ClientSecretCredential(p.tenantId, p.clientId, p.secret!, azureCredentialOptions()), objectId: p.objectId };
}

function rows(r: LogsQueryResult): unknown[][] {
  if (r.status !== "Success") throw new Error(`query did not succeed: ${JSON.stringify(r)}`);
  return r.tables[0]?.rows ?? [];
}

const setDelay = (ms: number) => azureControl().settings({ ingestionDelayMs: ms });

beforeAll(async () => {
  const info = await azureInfo();
  sub = info.subscriptionId;
  tenantId = info.tenantId;
  const admin = await azureTestCredential();
  const o = azureClientOptions();
  const rm = new ResourceManagementClient(admin, sub, o);
  const la = new OperationalInsightsManagementClient(admin, sub, o);
  const mon = new MonitorClient(admin, sub, o);
  await rm.resourceGroups.createOrUpdate(RG, { location: LOCATION });
  const ws = await la.workspaces.createOrUpdate(RG, "ce-logs", { location: LOCATION });
  workspaceId = ws.id!;
  customerId = ws.customerId!;
  await la.tables.createOrUpdate(RG, "ce-logs", TABLE, {
    schema: {
      name: TABLE,
      columns: [
        { name: "TimeGenerated", type: "dateTime" },
        { name: "RunId", type: "string" },
        { name: "Seq", type: "long" },
        { name: "Line", type: "string" },
      ],
    },
  });
  const dce = await mon.dataCollectionEndpoints.create(RG, "ce-dce", { body: { location: LOCATION } });
  dceEndpoint = dce.logsIngestion!.endpoint!;
  const dcr = await mon.dataCollectionRules.create(RG, "ce-dcr", {
    body: {
      location: LOCATION,
      dataCollectionEndpointId: dce.id,
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
      destinations: { logAnalytics: [{ workspaceResourceId: workspaceId, name: "la" }] },
      dataFlows: [{ streams: [STREAM], destinations: ["la"], transformKql: "source", outputStream: `Custom-${TABLE}` }],
    },
  });
  dcrId = dcr.id!;
  immutableId = dcr.immutableId!;

  // The VM's identity publishes (built-in Monitoring Metrics Publisher on the DCR); the operator
  // reads with seed 001's "seqera-azure-cloud-logs" role, read from the seed at test time.
  const w = await principal("log-writer");
  await azureControl().assignRole({ principalId: w.objectId, scope: dcrId, roleName: "Monitoring Metrics Publisher" });
  writer = w.cred;
  const r = await principal("log-reader");
  await azureControl().grantSeedRole({ principalId: r.objectId, seedFile: seedPath("001"), roleName: "seqera-azure-cloud-logs", subscriptionId: sub });
  reader = r.cred;
  queryClient = new LogsQueryClient(reader, { endpoint: `${azureEndpoint()}/loganalytics/v1` });
});

afterAll(async () => {
  await setDelay(0);
  if (savedPodIdentityHost === undefined) delete process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;
  else process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = savedPodIdentityHost;
});

describe("Log Analytics data plane through the SDKs", () => {
  it("the DCE's logsIngestion endpoint is the emulator's", () => {
    expect(dceEndpoint).toBe(`${azureEndpoint()}/dce/ce-dce`);
    expect(customerId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("round trip: uploaded lines are invisible until the ingestion delay has passed, then queryable", async () => {
    await setDelay(HOUR);
    const ingest = new LogsIngestionClient(dceEndpoint, writer);
    const t0 = Date.now();
    const lines: Line[] = [1, 2, 3].map((seq) => ({ TimeGenerated: new Date(t0 + seq).toISOString(), RunId: "round-trip", Seq: seq, Line: `line ${seq}` }));
    await ingest.upload(immutableId, STREAM, lines);
    const q = `${TABLE} | where RunId == 'round-trip' | order by Seq asc | project Seq, Line, TimeGenerated`;
    expect(rows(await queryClient.queryWorkspace(customerId, q, { duration: "PT1H" }))).toEqual([]);

    await setDelay(0);
    const got = rows(await queryClient.queryWorkspace(customerId, q, { duration: "PT1H" }));
    expect(got.map((r) => [r[0], r[1]])).toEqual([[1, "line 1"], [2, "line 2"], [3, "line 3"]]);
    expect((got[0]?.[2] as Date).toISOString()).toBe(lines[0]!.TimeGenerated); // datetime columns arrive as Date

    // timespan is honoured: an interval that ends before the lines sees nothing
    const before = await queryClient.queryWorkspace(customerId, q, { startTime: new Date(t0 - 2 * HOUR), endTime: new Date(t0 - HOUR) });
    expect(rows(before)).toEqual([]);

    const log = (await azureControl().requests()).value.filter((e) => e.operation === "LogsIngestion.Upload");
    expect(log.at(-1)).toMatchObject({ method: "POST", status: 204 });
  });

  it("an injected 429 on ingestion is retried by the SDK after Retry-After", async () => {
    const ctl = azureControl();
    const { lastSeq } = await ctl.requests();
    await ctl.addFault({ operation: "LogsIngestion.Upload", status: 429, retryAfterS: 1, count: 1 });
    try {
      await new LogsIngestionClient(dceEndpoint, writer).upload(immutableId, STREAM, [{ TimeGenerated: new Date().toISOString(), RunId: "retry", Seq: 1, Line: "once" }]);
    } finally {
      await ctl.clearFaults();
    }
    const calls = (await ctl.requests(lastSeq)).value.filter((e) => e.operation === "LogsIngestion.Upload").map((e) => e.status);
    expect(calls).toEqual([429, 204]);
    expect(rows(await queryClient.queryWorkspace(customerId, `${TABLE} | where RunId == 'retry' | project Line`, { duration: "PT1H" }))).toEqual([["once"]]);
  });

  it("refuses rows that do not match the stream declaration", async () => {
    const ingest = new LogsIngestionClient(dceEndpoint, writer);
    const bad = [{ TimeGenerated: new Date().toISOString(), RunId: "bad", Seq: "three", Line: "x" }];
    const err = await ingest.upload(immutableId, STREAM, bad).then(() => undefined, (e: unknown) => e);
    expect(isAggregateLogsUploadError(err)).toBe(true);
    const cause = (err as { errors: { cause: { statusCode?: number; message: string } }[] }).errors[0]!.cause;
    expect(cause.statusCode).toBe(400);
    expect(cause.message).toMatch(/column 'Seq' \(long\): expected an integer/);
    const extra = await ingest.upload(immutableId, STREAM, [{ TimeGenerated: new Date().toISOString(), RunId: "bad", Seq: 1, Line: "x", Colour: "red" }]).then(() => undefined, (e: unknown) => e);
    expect((extra as { errors: { cause: { message: string } }[] }).errors[0]!.cause.message).toMatch(/'Colour', which the stream 'Custom-RunLog' does not declare/);
    expect(rows(await queryClient.queryWorkspace(customerId, `${TABLE} | where RunId == 'bad'`, { duration: "PT1H" }))).toEqual([]);
  });

  it("refuses a caller without Microsoft.Insights/Telemetry/Write with 403 naming the action", async () => {
    const ingest = new LogsIngestionClient(dceEndpoint, reader);
    const err = await ingest.upload(immutableId, STREAM, [{ TimeGenerated: new Date().toISOString(), RunId: "denied", Seq: 1, Line: "x" }]).then(() => undefined, (e: unknown) => e);
    const cause = (err as { errors: { cause: { statusCode?: number; message: string } }[] }).errors[0]!.cause;
    expect(cause.statusCode).toBe(403);
    expect(cause.message).toContain("Microsoft.Insights/Telemetry/Write");
    expect(cause.message).toContain(immutableId);
  });

  it("answers unsupported KQL with 400 saying exactly what is not supported", async () => {
    const err = await queryClient.queryWorkspace(customerId, `${TABLE} | summarize count() by RunId`, { duration: "PT1H" }).then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ statusCode: 400 });
    const details = (err as { details: { error: { code: string; innererror: { code: string; innererror: { message: string } } } } }).details;
    expect(details.error.code).toBe("BadArgumentError");
    expect(details.error.innererror.code).toBe("NotSupportedByEmulator");
    expect(details.error.innererror.innererror.message).toMatch(/The 'summarize' operator is not supported by the emulator's KQL subset/);
  });

  it("a caller without query access to the workspace is refused", async () => {
    const err = await new LogsQueryClient(writer, { endpoint: `${azureEndpoint()}/loganalytics/v1` })
      .queryWorkspace(customerId, TABLE, { duration: "PT1H" })
      .then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ statusCode: 403 });
    expect(String((err as Error).message)).toContain("Microsoft.OperationalInsights/workspaces/query/read");
  });

  it("paging by a time-and-sequence cursor returns every line once across ingestion delays", async () => {
    const ingest = new LogsIngestionClient(dceEndpoint, writer);
    const base = Date.now() - 60_000;
    const mk = (from: number, n: number): Line[] =>
      Array.from({ length: n }, (_, i) => {
        const seq = from + i;
        // two lines per millisecond, so the sequence number breaks ties
        return { TimeGenerated: new Date(base + Math.floor(seq / 2)).toISOString(), RunId: "paging", Seq: seq, Line: `p${seq}` };
      });
    const seen: string[] = [];
    let cursor: { t: string; seq: number } | undefined;
    const page = async (): Promise<number> => {
      const where = cursor ? ` and (TimeGenerated > datetime(${cursor.t}) or (TimeGenerated == datetime(${cursor.t}) and Seq > ${cursor.seq}))` : "";
      const q = `${TABLE} | where RunId == 'paging'${where} | order by TimeGenerated asc, Seq asc | take 4 | project TimeGenerated, Seq, Line`;
      const got = rows(await queryClient.queryWorkspace(customerId, q, { duration: "PT2H" }));
      for (const r of got) {
        seen.push(String(r[2]));
        cursor = { t: (r[0] as Date).toISOString(), seq: Number(r[1]) };
      }
      return got.length;
    };
    const drain = async () => {
      while ((await page()) > 0);
    };

    await setDelay(HOUR);
    await ingest.upload(immutableId, STREAM, mk(0, 10));
    await drain();
    expect(seen).toEqual([]);
    await setDelay(0);
    await drain();
    expect(seen).toEqual(mk(0, 10).map((l) => l.Line));

    await setDelay(HOUR);
    await ingest.upload(immutableId, STREAM, mk(10, 7));
    await drain(); // pending lines are not visible yet: nothing new, nothing repeated
    expect(seen).toHaveLength(10);
    await setDelay(0);
    await ingest.upload(immutableId, STREAM, mk(17, 3));
    await drain();
    expect(seen).toEqual(mk(0, 20).map((l) => l.Line));
    expect(new Set(seen).size).toBe(20);
  });

  it("accepts a VM-style call: an instance token for https://monitor.azure.com and a plain JSON POST", async () => {
    const host = await azureControl().createManagedIdentityHost({ name: "vm-like", systemAssigned: true });
    await azureControl().assignRole({ principalId: host.systemAssigned!.objectId, scope: dcrId, roleName: "Monitoring Metrics Publisher" });
    process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = host.podIdentityAuthorityHost;
    const token = await new ManagedIdentityCredential().getToken("https://monitor.azure.com/.default");
    expect(token.token).toBeTruthy();
    // What the launcher's curl sends: no gzip, the token as bearer.
    const res = await fetch(`${dceEndpoint}/dataCollectionRules/${immutableId}/streams/${STREAM}?api-version=2023-01-01`, {
      method: "POST",
      headers: { authorization: `Bearer ${token.token}`, "content-type": "application/json" },
      body: JSON.stringify([{ TimeGenerated: new Date().toISOString(), RunId: "vm", Seq: 1, Line: "from the VM" }]),
    });
    expect(res.status).toBe(204);
    expect(rows(await queryClient.queryWorkspace(customerId, `${TABLE} | where RunId == 'vm' | project Line`, { duration: "PT1H" }))).toEqual([["from the VM"]]);
    // A token for another audience (Resource Manager) is refused.
    const arm = await new ManagedIdentityCredential().getToken("https://management.azure.com/.default");
    const wrong = await fetch(`${dceEndpoint}/dataCollectionRules/${immutableId}/streams/${STREAM}?api-version=2023-01-01`, {
      method: "POST",
      headers: { authorization: `Bearer ${arm.token}`, "content-type": "application/json" },
      body: "[]",
    });
    expect(wrong.status).toBe(401);
    expect(tenantId).toBeTruthy();
  });
});
