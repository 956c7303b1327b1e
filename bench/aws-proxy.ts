/**
 * A counting pass-through in front of the AWS emulator: every request is forwarded unchanged,
 * and counted by service and operation (EC2/IAM query Action, X-Amz-Target, or S3 method). For
 * RunInstances and TerminateInstances it records when each Run's machine was asked for, by the
 * Run UIDs the request carries (ClientToken, run-uid tag). It measures what the operator asks,
 * not how the emulator answers.
 *
 * `routes` sends a service's requests (by the SigV4 credential scope, e.g. "logs") to another
 * emulator: in AWS each service has its own capacity, while one moto process answers every
 * service on one Python thread, so the bench's own log shipping would otherwise slow the
 * operator's launches.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { kibOf } from "./stats.js";

export interface CallRecord {
  /** As counted (`snapshot` keys). */
  key: string;
  /** When the request reached the proxy, and when the emulator's answer ended (epoch ms). */
  at: number;
  doneAt: number;
  bytes: number;
}

export class AwsProxy {
  readonly counts = new Map<string, number>();
  /** Bytes of the answers, by the same keys as `counts` (what the operator had to parse). */
  readonly answerBytes = new Map<string, number>();
  /** Run UID -> first RunInstances request time. */
  readonly launchAt = new Map<string, number>();
  /**
   * RunInstances for a Run UID already seen: whether the SDK retried its own request (the same
   * invocation id, a later attempt) or the operator sent a new one (a new invocation id).
   */
  readonly repeatedLaunches: { uid: string; sdkRetry: boolean; attempt: string; afterMs: number }[] = [];
  private readonly launchInvocation = new Map<string, string>();
  /** Instances named per TerminateInstances call. */
  readonly terminateSizes: number[] = [];
  /**
   * TerminateInstances calls naming instances an earlier one named: whether the SDK retried its own
   * request (same invocation id) or the operator sent a new one, how many instances, how much later.
   */
  readonly repeatedTerminates: { sdkRetry: boolean; attempt: string; instances: number; afterMs: number }[] = [];
  /** Instance ID -> the invocation id and time of the first TerminateInstances naming it. */
  private readonly terminatedBy = new Map<string, { invocation: string; at: number }>();
  /** Every call with its timing, so a window (e.g. until the last launch) can be summed on its own. */
  readonly log: CallRecord[] = [];
  private server: http.Server | undefined;
  endpoint = "";
  /** Run UIDs to look for in RunInstances requests. */
  watchUids = new Set<string>();

  constructor(
    private readonly upstream: string,
    private readonly routes: Readonly<Record<string, string>> = {},
  ) {}

  async start(): Promise<string> {
    const targets = new Map(Object.entries(this.routes).map(([service, url]) => [service, new URL(url)]));
    const main = new URL(this.upstream);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks);
        const service = serviceOf(req);
        const key = this.count(req, body, service);
        const up = targets.get(service) ?? main;
        const record: CallRecord = { key, at: Date.now(), doneAt: 0, bytes: 0 };
        const fwd = http.request({
          host: up.hostname, port: up.port, method: req.method, path: req.url, agent,
          headers: { ...req.headers, host: req.headers.host ?? up.host },
        }, (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.on("data", (c: Buffer) => {
            this.answerBytes.set(key, (this.answerBytes.get(key) ?? 0) + c.length);
            record.bytes += c.length;
          });
          r.on("end", () => {
            record.doneAt = Date.now();
            this.log.push(record);
          });
          r.pipe(res);
        });
        fwd.on("error", (e) => {
          res.writeHead(502);
          res.end(String(e));
        });
        fwd.end(body);
      });
    });
    this.server.keepAliveTimeout = 60_000;
    await new Promise<void>((r) => this.server?.listen(0, "127.0.0.1", r));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.endpoint;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  snapshot(): Record<string, number> {
    return Object.fromEntries([...this.counts].sort());
  }

  /** Answer bytes by key, as `snapshot` gives the counts. */
  bytesSnapshot(): Record<string, number> {
    return Object.fromEntries([...this.answerBytes].sort());
  }

  /**
   * The calls answered within [from, to] by key: how many, their answers' KiB, and the sum of the
   * times the emulator took to answer them (s; concurrent calls overlap, so this is load, not wall time).
   */
  window(from: number, to: number): Record<string, { calls: number; kib: number; answerS: number }> {
    const out: Record<string, { calls: number; bytes: number; answerS: number }> = {};
    for (const r of this.log) {
      if (r.doneAt < from || r.at > to) continue;
      const w = (out[r.key] ??= { calls: 0, bytes: 0, answerS: 0 });
      w.calls++;
      w.bytes += r.bytes;
      w.answerS += (r.doneAt - r.at) / 1000;
    }
    return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b))
      .map(([k, w]) => [k, { calls: w.calls, kib: kibOf(w.bytes), answerS: Math.round(w.answerS * 10) / 10 }]));
  }

  reset(): void {
    this.log.length = 0;
    this.counts.clear();
    this.answerBytes.clear();
    this.launchAt.clear();
    this.repeatedLaunches.length = 0;
    this.launchInvocation.clear();
    this.terminateSizes.length = 0;
    this.repeatedTerminates.length = 0;
    this.terminatedBy.clear();
  }

  private count(req: http.IncomingMessage, body: Buffer, service: string): string {
    let op: string | undefined;
    const target = req.headers["x-amz-target"];
    if (typeof target === "string") op = target.split(".").pop();
    let form: URLSearchParams | undefined;
    if (!op && String(req.headers["content-type"] ?? "").includes("x-www-form-urlencoded")) {
      form = new URLSearchParams(body.toString("utf8"));
      op = form.get("Action") ?? undefined;
    }
    if (!op) {
      const path = (req.url ?? "/").split("?")[0] ?? "/";
      const isObject = path.split("/").filter(Boolean).length > 1;
      op = `${req.method}${isObject ? "Object" : "Bucket"}`;
    }
    let key = `${service}:${op}`;
    if (op === "DescribeInstances" && form) {
      // a look-up of one Run's machine (by its UID tag) vs the batched follow-up of many
      const uids = [...form.entries()].filter(([k, v]) => /^Filter\.\d+\.Value\.\d+$/.test(k) && this.watchUids.has(v)).length;
      if (uids === 1) key += "(one Run)";
      // the tracker's narrow look: only machines in a state other than running
      else if ([...form.entries()].some(([k, v]) => /^Filter\.\d+\.Name$/.test(k) && v === "instance-state-name")) key += "(not running)";
    }
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    const now = Date.now();
    if (op === "RunInstances" && form) {
      const invocation = String(req.headers["amz-sdk-invocation-id"] ?? "");
      // (the UID is in the request several times: the client token and the tags)
      for (const v of new Set(form.values())) {
        if (!this.watchUids.has(v)) continue;
        const first = this.launchAt.get(v);
        if (first === undefined) {
          this.launchAt.set(v, now);
          this.launchInvocation.set(v, invocation);
        } else {
          this.repeatedLaunches.push({ uid: v, sdkRetry: invocation !== "" && this.launchInvocation.get(v) === invocation, attempt: String(req.headers["amz-sdk-request"] ?? ""), afterMs: now - first });
        }
      }
    }
    if (op === "TerminateInstances" && form) {
      let n = 0;
      const invocation = String(req.headers["amz-sdk-invocation-id"] ?? "");
      let again = 0;
      let first: { invocation: string; at: number } | undefined;
      for (const [k, id] of form.entries()) {
        if (!k.startsWith("InstanceId.")) continue;
        n++;
        const before = this.terminatedBy.get(id);
        if (before) {
          again++;
          first ??= before;
        } else this.terminatedBy.set(id, { invocation, at: now });
      }
      this.terminateSizes.push(n);
      if (first) this.repeatedTerminates.push({ sdkRetry: invocation !== "" && first.invocation === invocation, attempt: String(req.headers["amz-sdk-request"] ?? ""), instances: again, afterMs: now - first.at });
    }
    return key;
  }
}

/** The AWS service a signed request is for (its SigV4 credential scope), or "unknown". */
function serviceOf(req: http.IncomingMessage): string {
  const auth = String(req.headers.authorization ?? "");
  return /Credential=[^/]+\/[^/]+\/[^/]+\/([^/]+)\//.exec(auth)?.[1] ?? "unknown";
}
