// Starts a real, private Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and
// kube-controller-manager, built from source by build-control-plane.sh and run from the cache.
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { createClientCert, createClusterPki } from "./certs.js";
import { KubeHttp } from "./kube-http.js";
import { ensureControlPlane, KUBERNETES_VERSION } from "./paths.js";
import { freePorts, keepLogs, registerTempDir, spawnSupervised, unregisterTempDir, waitFor, type Supervised } from "./process.js";

export { KUBERNETES_VERSION };

export interface ClusterOptions {
  /** Progress messages (default: stderr). */
  log?: (msg: string) => void;
  /** Time allowed for each component to become ready (default 180 s; the machine has 2 cores). */
  readyTimeoutMs?: number;
  /** Extra kube-apiserver flags, e.g. ["--feature-gates=..."]. */
  apiserverArgs?: string[];
}

export interface Cluster {
  /** Admin kubeconfig (client certificate in group system:masters). */
  kubeconfigPath: string;
  /** https URL of kube-apiserver. */
  server: string;
  /** Temp folder with data, certificates and component logs; removed by stop(). */
  dir: string;
  /** Stops every component (SIGTERM, then SIGKILL) and removes dir. Idempotent. */
  stop(): Promise<void>;
}

export const TEMP_PREFIX = "vmforge-cluster-";

/** Controllers kube-controller-manager runs for the tests. */
export const CONTROLLERS = ["garbagecollector", "namespace", "serviceaccount", "serviceaccount-token", "root-ca-cert-publisher", "clusterrole-aggregation"];

function kubeconfigYaml(server: string, caPem: string, certPem: string, keyPem: string, user: string): string {
  const b64 = (s: string): string => Buffer.from(s).toString("base64");
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "vmforge-test", cluster: { server, "certificate-authority-data": b64(caPem) } }],
    users: [{ name: user, user: { "client-certificate-data": b64(certPem), "client-key-data": b64(keyPem) } }],
    contexts: [{ name: "vmforge-test", context: { cluster: "vmforge-test", user, namespace: "default" } }],
    "current-context": "vmforge-test",
  });
}

async function writeKubeconfig(path: string, server: string, caFile: string, cert: { cert: string; key: string }, user: string): Promise<void> {
  const [ca, crt, key] = await Promise.all([readFile(caFile, "utf8"), readFile(cert.cert, "utf8"), readFile(cert.key, "utf8")]);
  await writeFile(path, kubeconfigYaml(server, ca, crt, key, user), { mode: 0o600 });
}

/** GET on a loopback https endpoint whose certificate is self-signed (kube-controller-manager's /healthz). */
function insecureGet(url: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { rejectUnauthorized: false, timeout: 5000 }, (res) => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString("utf8")));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Removes temp folders left by harness runs whose owning process no longer exists
 * (their watchdogs normally do this; this covers a machine reboot or a killed watchdog).
 */
export async function sweepStaleTempDirs(prefixes: string[] = [TEMP_PREFIX, "vmforge-moto-", "vmforge-probe-", "vmforge-azure-", "vmforge-bench-audit-"]): Promise<void> {
  const base = tmpdir();
  let entries: string[];
  try {
    entries = await readdir(base);
  } catch {
    return;
  }
  for (const e of entries) {
    if (!prefixes.some((p) => e.startsWith(p))) continue;
    const dir = join(base, e);
    const owner = Number.parseInt(await readFile(join(dir, "owner.pid"), "utf8").catch(() => ""), 10);
    if (Number.isFinite(owner)) {
      if (pidAlive(owner)) continue;
    } else {
      // No owner yet: it may be in the middle of being created by another run.
      const age = Date.now() - ((await stat(dir).catch(() => undefined))?.mtimeMs ?? Date.now());
      if (age < 10 * 60_000) continue;
    }
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`[cluster] ${m}\n`));
  const readyTimeoutMs = opts.readyTimeoutMs ?? 180_000;

  const bin = await ensureControlPlane();
  await sweepStaleTempDirs();

  const dir = await mkdtemp(join(tmpdir(), TEMP_PREFIX));
  registerTempDir(dir);
  await writeFile(join(dir, "owner.pid"), String(process.pid));

  const procs: Supervised[] = [];
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      // Reverse start order: controller-manager, apiserver, etcd.
      for (const p of [...procs].reverse()) await p.stop(10_000);
      await keepLogs(dir);
      await rm(dir, { recursive: true, force: true });
      unregisterTempDir(dir);
    })();
    return stopped;
  };

  try {
    const started = Date.now();
    const pki = await createClusterPki(dir);
    const admin = await createClientCert(dir, pki, "admin", "vmforge-admin", ["system:masters"]);
    // The controller manager runs all its controllers with its own identity
    // (--use-service-account-credentials=false), so it needs full rights.
    const kcmCert = await createClientCert(dir, pki, "kcm", "system:kube-controller-manager", ["system:masters"]);

    const [etcdClient, etcdPeer, apiPort, kcmPort] = await freePorts(4) as [number, number, number, number];
    const server = `https://127.0.0.1:${apiPort}`;

    log(`starting etcd on 127.0.0.1:${etcdClient} (logs in ${dir})`);
    const etcd = spawnSupervised({
      name: "etcd",
      command: join(bin, "etcd"),
      args: [
        "--name=default",
        `--data-dir=${join(dir, "etcd-data")}`,
        `--listen-client-urls=http://127.0.0.1:${etcdClient}`,
        `--advertise-client-urls=http://127.0.0.1:${etcdClient}`,
        `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
        `--initial-cluster=default=http://127.0.0.1:${etcdPeer}`,
        "--unsafe-no-fsync=true",
        "--log-level=warn",
      ],
      logFile: join(dir, "etcd.log"),
      orphanCleanupDir: dir,
    });
    procs.push(etcd);
    await waitFor(
      "etcd /health",
      async () => {
        const res = await fetch(`http://127.0.0.1:${etcdClient}/health`);
        const body = (await res.json()) as { health?: string };
        return res.ok && body.health === "true" ? true : undefined;
      },
      { timeoutMs: readyTimeoutMs, proc: etcd },
    );

    log(`starting kube-apiserver ${KUBERNETES_VERSION} on ${server}`);
    const apiserver = spawnSupervised({
      name: "kube-apiserver",
      command: join(bin, "kube-apiserver"),
      args: [
        `--etcd-servers=http://127.0.0.1:${etcdClient}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${apiPort}`,
        "--advertise-address=127.0.0.1",
        // The "kubernetes" Service cannot point at a loopback address; nothing in the tests needs it to.
        "--endpoint-reconciler-type=none",
        `--tls-cert-file=${pki.serverCert}`,
        `--tls-private-key-file=${pki.serverKey}`,
        `--client-ca-file=${pki.caCert}`,
        "--authorization-mode=Node,RBAC",
        `--service-account-key-file=${pki.saPublicKey}`,
        `--service-account-signing-key-file=${pki.saPrivateKey}`,
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--service-cluster-ip-range=10.0.0.0/24",
        `--cert-dir=${join(dir, "apiserver-certs")}`,
        "--profiling=false",
        "--shutdown-delay-duration=0s",
        ...(opts.apiserverArgs ?? []),
      ],
      logFile: join(dir, "kube-apiserver.log"),
      orphanCleanupDir: dir,
    });
    procs.push(apiserver);

    const kubeconfigPath = join(dir, "kubeconfig");
    await writeKubeconfig(kubeconfigPath, server, pki.caCert, admin, "vmforge-admin");
    const kcmKubeconfig = join(dir, "kcm.kubeconfig");
    await writeKubeconfig(kcmKubeconfig, server, pki.caCert, kcmCert, "system:kube-controller-manager");
    const kube = KubeHttp.fromKubeconfig(kubeconfigPath);

    await waitFor(
      "kube-apiserver /readyz",
      async () => ((await kube.request("GET", "/readyz")).status === 200 ? true : undefined),
      { timeoutMs: readyTimeoutMs, proc: apiserver },
    );
    await waitFor(
      "namespace default",
      async () => ((await kube.request("GET", "/api/v1/namespaces/default")).status === 200 ? true : undefined),
      { timeoutMs: readyTimeoutMs, proc: apiserver },
    );

    log(`starting kube-controller-manager (${CONTROLLERS.join(",")})`);
    const kcm = spawnSupervised({
      name: "kube-controller-manager",
      command: join(bin, "kube-controller-manager"),
      args: [
        `--kubeconfig=${kcmKubeconfig}`,
        `--authentication-kubeconfig=${kcmKubeconfig}`,
        `--authorization-kubeconfig=${kcmKubeconfig}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${kcmPort}`,
        `--cert-dir=${join(dir, "kcm-certs")}`,
        `--controllers=${CONTROLLERS.join(",")}`,
        "--use-service-account-credentials=false",
        `--root-ca-file=${pki.caCert}`,
        `--service-account-private-key-file=${pki.saPrivateKey}`,
        "--leader-elect=false",
        "--profiling=false",
      ],
      logFile: join(dir, "kube-controller-manager.log"),
      orphanCleanupDir: dir,
    });
    procs.push(kcm);
    await waitFor(
      "kube-controller-manager /healthz",
      async () => ((await insecureGet(`https://127.0.0.1:${kcmPort}/healthz`)).status === 200 ? true : undefined),
      { timeoutMs: readyTimeoutMs, proc: kcm },
    );
    // The serviceaccount controller creates "default" in every namespace: proof that the
    // controller manager is connected and its controllers run.
    await waitFor(
      "service account default/default",
      async () => ((await kube.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")).status === 200 ? true : undefined),
      { timeoutMs: readyTimeoutMs, proc: kcm },
    );
    for (const p of procs) {
      if (!p.isRunning()) throw new Error(`${p.name} exited during start-up`);
    }
    log(`control plane ready in ${((Date.now() - started) / 1000).toFixed(1)}s`);
    return { kubeconfigPath, server, dir, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
