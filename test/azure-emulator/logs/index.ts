// Log Analytics data plane of the test Azure emulator: the Logs Ingestion API served on data
// collection endpoints, and the Log Analytics query API. The emulator core (ARM, Entra, RBAC) hands
// this module a LogsHost; this module owns the rows and never touches ARM state directly.
import type { IncomingMessage, ServerResponse } from "node:http";

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
  recordRequest(entry: { method: string; resourceType: string; operation: string; caller?: string; status: number }): void;
  faultFor(operation: string): { status: number; retryAfterS?: number } | undefined;
}

export interface LogsPlane {
  /** Serves the request when its path belongs to the logs plane; returns false otherwise. */
  handle(req: IncomingMessage, res: ServerResponse, url: URL, body: Buffer): boolean;
  setIngestionDelay(ms: number): void;
  reset(): void;
  onWorkspaceDeleted(workspaceId: string): void;
}

/** Path prefix of every DCE's logs ingestion endpoint: /dce/<dce-name-lowercase>. */
export const DCE_PATH_PREFIX = "/dce/";
/** Base path of the Log Analytics query API. */
export const QUERY_PATH_PREFIX = "/loganalytics/v1/";

export function createLogsPlane(_host: LogsHost, opts: { ingestionDelayMs: number }): LogsPlane {
  let ingestionDelayMs = opts.ingestionDelayMs;
  return {
    handle(_req, res, url) {
      if (!url.pathname.startsWith(DCE_PATH_PREFIX) && !url.pathname.startsWith(QUERY_PATH_PREFIX)) return false;
      // Placeholder until the ingestion and query handlers land: answer, do not pretend.
      res.writeHead(501, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "NotImplemented", message: "The emulator's logs plane is not implemented yet." } }));
      return true;
    },
    setIngestionDelay(ms) {
      ingestionDelayMs = ms;
      void ingestionDelayMs;
    },
    reset() {},
    onWorkspaceDeleted() {},
  };
}
