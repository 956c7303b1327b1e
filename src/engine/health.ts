/**
 * Liveness, readiness and Prometheus endpoints on one small node:http server.
 *   GET /healthz  200 "ok" while live() is true, else 503
 *   GET /readyz   200 "ok" while ready() is true, else 503
 *   GET /metrics  Prometheus text of the EngineMetrics registry
 * HEAD is answered like GET without a body. Anything else is 404 (405 for other methods).
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "./logger.js";
import type { EngineMetrics } from "./metrics.js";

export interface HealthServerOptions {
  /** "host:port", "[ipv6]:port" or ":port" (all interfaces). Port 0 picks a free port. */
  address: string;
  metrics: EngineMetrics;
  ready: () => boolean;
  live?: () => boolean;
  logger: Logger;
}

export interface HealthServer {
  port: number;
  close(): Promise<void>;
}

/** Parses "host:port" / "[v6]:port" / ":port". Throws a readable error on anything else. */
export function parseAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.%\w]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(address.trim());
  if (!m) throw new Error(`invalid listen address ${JSON.stringify(address)}; expected host:port, [ipv6]:port or :port`);
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`invalid port in listen address ${JSON.stringify(address)}`);
  }
  const host = m[1] ?? (m[2] === "" || m[2] === undefined ? "0.0.0.0" : m[2]);
  return { host, port };
}

function safe(fn: (() => boolean) | undefined, fallback: boolean): boolean {
  if (!fn) return fallback;
  try {
    return fn() === true;
  } catch {
    return false;
  }
}

export async function startHealthServer(opts: HealthServerOptions): Promise<HealthServer> {
  const { host, port } = parseAddress(opts.address);
  const log = opts.logger;

  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    const head = req.method === "HEAD";
    const send = (status: number, body: string, contentType = "text/plain; charset=utf-8"): void => {
      res.writeHead(status, { "content-type": contentType, "content-length": Buffer.byteLength(body), "cache-control": "no-store" });
      res.end(head ? undefined : body);
    };
    if (req.method !== "GET" && !head) {
      res.setHeader("allow", "GET, HEAD");
      send(405, "method not allowed\n");
      return;
    }
    switch (path) {
      case "/healthz":
      case "/livez":
        if (safe(opts.live, true)) send(200, "ok\n");
        else send(503, "not live\n");
        return;
      case "/readyz":
        if (safe(opts.ready, false)) send(200, "ok\n");
        else send(503, "not ready\n");
        return;
      case "/metrics":
        opts.metrics.registry.metrics().then(
          (text) => send(200, text, opts.metrics.registry.contentType),
          (err: unknown) => {
            log.error({ err }, "collecting metrics failed");
            send(500, "metrics collection failed\n");
          },
        );
        return;
      default:
        send(404, "not found\n");
    }
  });
  server.keepAliveTimeout = 5_000;
  server.on("clientError", (_err, socket) => {
    if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\n\r\n");
    else socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  server.on("error", (err) => log.error({ err }, "health server error"));
  const bound = (server.address() as AddressInfo).port;
  log.info({ address: `${host}:${bound}` }, "health server listening");

  let closing: Promise<void> | undefined;
  return {
    port: bound,
    close(): Promise<void> {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        // connections in flight get a moment to finish, then go
        setTimeout(() => server.closeAllConnections(), 1_000).unref();
      });
      return closing;
    },
  };
}
