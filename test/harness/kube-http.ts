// A minimal HTTPS client for the test cluster's API, authenticated with the client certificate
// from a kubeconfig. The harness uses it for readiness checks and test helpers, so they do not
// depend on the code under test.
import { request } from "node:https";
import { readFileSync } from "node:fs";
import { parse } from "yaml";

export interface KubeHttpResponse {
  status: number;
  body: unknown;
  text: string;
}

interface KubeconfigFile {
  "current-context"?: string;
  contexts?: { name: string; context: { cluster: string; user: string } }[];
  clusters?: { name: string; cluster: { server: string; "certificate-authority-data"?: string; "certificate-authority"?: string } }[];
  users?: { name: string; user: { "client-certificate-data"?: string; "client-key-data"?: string; "client-certificate"?: string; "client-key"?: string } }[];
}

function material(data: string | undefined, file: string | undefined): Buffer | undefined {
  if (data) return Buffer.from(data, "base64");
  if (file) return readFileSync(file);
  return undefined;
}

export class KubeHttp {
  constructor(
    readonly server: string,
    private readonly tls: { ca?: Buffer; cert?: Buffer; key?: Buffer },
  ) {}

  static fromKubeconfig(path: string): KubeHttp {
    const kc = parse(readFileSync(path, "utf8")) as KubeconfigFile;
    const ctx = kc.contexts?.find((c) => c.name === kc["current-context"]) ?? kc.contexts?.[0];
    const cluster = kc.clusters?.find((c) => c.name === ctx?.context.cluster)?.cluster;
    const user = kc.users?.find((u) => u.name === ctx?.context.user)?.user;
    if (!cluster) throw new Error(`kubeconfig ${path} has no usable cluster`);
    return new KubeHttp(cluster.server, {
      ca: material(cluster["certificate-authority-data"], cluster["certificate-authority"]),
      cert: material(user?.["client-certificate-data"], user?.["client-certificate"]),
      key: material(user?.["client-key-data"], user?.["client-key"]),
    });
  }

  /** The same server and CA, without a client certificate (requests are anonymous). */
  withoutCredentials(): KubeHttp {
    return new KubeHttp(this.server, { ca: this.tls.ca });
  }

  request(method: string, path: string, body?: unknown, contentType = "application/json", timeoutMs = 15_000): Promise<KubeHttpResponse> {
    const url = new URL(path, this.server);
    const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        {
          method,
          ca: this.tls.ca,
          cert: this.tls.cert,
          key: this.tls.key,
          headers: {
            accept: "application/json",
            ...(payload !== undefined ? { "content-type": contentType, "content-length": Buffer.byteLength(payload) } : {}),
          },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let parsed: unknown = text;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              // not JSON (e.g. /readyz returns "ok")
            }
            resolve({ status: res.statusCode ?? 0, body: parsed, text });
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${method} ${url.pathname} timed out after ${timeoutMs}ms`)));
      req.on("error", reject);
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }

  /** Like request(), but throws unless the status is 2xx (or listed in okStatuses). */
  async expect(method: string, path: string, body?: unknown, okStatuses: number[] = [], contentType?: string): Promise<KubeHttpResponse> {
    const res = await this.request(method, path, body, contentType);
    if ((res.status < 200 || res.status > 299) && !okStatuses.includes(res.status)) {
      throw new Error(`${method} ${path} -> HTTP ${res.status}: ${res.text.slice(0, 500)}`);
    }
    return res;
  }
}
