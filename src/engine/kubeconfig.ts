// A light kubeconfig loader for the common cases: in-cluster service account, and a kubeconfig
// file whose user authenticates with a client certificate, a token (or token file) or basic auth.
// Anything else (exec or auth-provider plugins, proxies, several files in $KUBECONFIG) is handed
// to @kubernetes/client-node, loaded only then: that library alone costs the process ~75 MiB of
// memory, more than everything the operator caches for thousands of Runs.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { delimiter, dirname, isAbsolute, join } from "node:path";
import type https from "node:https";
import { parse } from "yaml";

/** What KubeClient needs of a kubeconfig (client-node's KubeConfig satisfies it too). */
export interface KubeConfigLike {
  getCurrentCluster(): { server: string; proxyUrl?: string } | null;
  applyToHTTPSOptions(opts: https.RequestOptions): Promise<void>;
}

const SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

type Entry<K extends string, V> = { name: string } & { [k in K]: V };
interface RawCluster { server?: string; "certificate-authority"?: string; "certificate-authority-data"?: string; "insecure-skip-tls-verify"?: boolean; "tls-server-name"?: string; "proxy-url"?: string }
interface RawUser {
  "client-certificate"?: string; "client-certificate-data"?: string; "client-key"?: string; "client-key-data"?: string;
  token?: string; tokenFile?: string; username?: string; password?: string; exec?: unknown; "auth-provider"?: unknown;
}
interface RawConfig {
  "current-context"?: string;
  clusters?: Entry<"cluster", RawCluster>[];
  users?: Entry<"user", RawUser>[];
  contexts?: Entry<"context", { cluster?: string; user?: string }>[];
}

class LightKubeConfig implements KubeConfigLike {
  constructor(
    private readonly server: string,
    private readonly tls: { ca?: Buffer; cert?: Buffer; key?: Buffer; insecure?: boolean; servername?: string },
    private readonly auth: { token?: string; tokenFile?: string; basic?: string },
  ) {}

  getCurrentCluster(): { server: string } {
    return { server: this.server };
  }

  async applyToHTTPSOptions(o: https.RequestOptions): Promise<void> {
    if (this.tls.ca) o.ca = this.tls.ca;
    if (this.tls.cert) o.cert = this.tls.cert;
    if (this.tls.key) o.key = this.tls.key;
    if (this.tls.insecure) o.rejectUnauthorized = false;
    if (this.tls.servername) o.servername = this.tls.servername;
    // a token file is re-read every time: projected service-account tokens rotate
    const token = this.auth.tokenFile ? readFileSync(this.auth.tokenFile, "utf8").trim() : this.auth.token;
    if (token) o.headers = { ...(o.headers as Record<string, string> | undefined), authorization: `Bearer ${token}` };
    if (this.auth.basic) o.auth = this.auth.basic;
  }
}

function heavy(): { KubeConfig: new () => KubeConfigLike & { loadFromFile(p: string): void; loadFromDefault(): void; loadFromCluster(): void } } {
  return createRequire(import.meta.url)("@kubernetes/client-node") as never;
}

/** The in-cluster service account. */
export function loadInCluster(): KubeConfigLike {
  const host = process.env.KUBERNETES_SERVICE_HOST;
  const port = process.env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) throw new Error("not running in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set");
  const server = `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
  return new LightKubeConfig(server, { ca: readFileSync(join(SA_DIR, "ca.crt")) }, { tokenFile: join(SA_DIR, "token") });
}

/**
 * The given kubeconfig file, or else $KUBECONFIG, ~/.kube/config, the in-cluster service account
 * (the same order as client-go and client-node).
 */
export function loadKubeConfig(path?: string): KubeConfigLike {
  let file = path;
  if (!file) {
    const env = process.env.KUBECONFIG;
    if (env && env.includes(delimiter)) {
      const kc = new (heavy().KubeConfig)();
      kc.loadFromDefault();
      return kc;
    }
    file = env || (existsSync(join(homedir(), ".kube", "config")) ? join(homedir(), ".kube", "config") : undefined);
    if (!file) return loadInCluster();
  }
  const raw = (parse(readFileSync(file, "utf8")) ?? {}) as RawConfig;
  const ctx = raw.contexts?.find((c) => c.name === raw["current-context"])?.context;
  const cluster = raw.clusters?.find((c) => c.name === ctx?.cluster)?.cluster;
  const user = raw.users?.find((u) => u.name === ctx?.user)?.user ?? {};
  if (!cluster?.server) throw new Error(`kubeconfig ${file}: the current context names no cluster with a server`);
  if (user.exec || user["auth-provider"] || cluster["proxy-url"]) {
    const kc = new (heavy().KubeConfig)();
    kc.loadFromFile(file);
    return kc;
  }
  const base = dirname(file);
  const read = (data: string | undefined, p: string | undefined): Buffer | undefined =>
    data ? Buffer.from(data, "base64") : p ? readFileSync(isAbsolute(p) ? p : join(base, p)) : undefined;
  const tls = {
    ...(read(cluster["certificate-authority-data"], cluster["certificate-authority"]) ? { ca: read(cluster["certificate-authority-data"], cluster["certificate-authority"]) } : {}),
    ...(read(user["client-certificate-data"], user["client-certificate"]) ? { cert: read(user["client-certificate-data"], user["client-certificate"]) } : {}),
    ...(read(user["client-key-data"], user["client-key"]) ? { key: read(user["client-key-data"], user["client-key"]) } : {}),
    ...(cluster["insecure-skip-tls-verify"] ? { insecure: true } : {}),
    ...(cluster["tls-server-name"] ? { servername: cluster["tls-server-name"] } : {}),
  };
  const tokenFile = user.tokenFile ? (isAbsolute(user.tokenFile) ? user.tokenFile : join(base, user.tokenFile)) : undefined;
  return new LightKubeConfig(cluster.server, tls, {
    ...(user.token ? { token: user.token } : {}),
    ...(tokenFile ? { tokenFile } : {}),
    ...(user.username !== undefined ? { basic: `${user.username}:${user.password ?? ""}` } : {}),
  });
}
