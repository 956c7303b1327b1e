// The chart's proxy settings reach the cloud SDKs: the real operator process (src/main.ts with
// the real AWS provider), started with the environment the chart renders for proxy.httpsProxy,
// sends its AWS calls as CONNECT requests to a small proxy on loopback, while it talks to the
// Kubernetes API directly. The Azure SDK is shown to follow the same variables.
import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type Server, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, type ComputeEnvironment } from "../../src/api/types.js";
import { SecretResource } from "../../src/controllers/shared.js";
import { helmTemplate, parseManifests } from "../harness/helm.js";
import { deleteNamespace, freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import { REPO_ROOT } from "../harness/paths.js";
import { installCrds } from "../support/operator.js";
import { join } from "node:path";

const WAIT = { timeout: 60_000, interval: 250 };

/** A CONNECT proxy that records each request line and refuses the tunnel (there is no internet). */
interface Proxy {
  port: number;
  seen: string[];
  close(): Promise<void>;
}
function startProxy(): Promise<Proxy> {
  const seen: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    let head = "";
    socket.on("data", (d: Buffer) => {
      head += d.toString("latin1");
      const end = head.indexOf("\r\n");
      if (end < 0) return;
      seen.push(head.slice(0, end));
      socket.end("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
    });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      resolve({
        port,
        seen,
        close: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      });
    });
  });
}

let proxy: Proxy;
let ns = "";
let child: ChildProcess | undefined;
let client: KubeClient;

beforeAll(async () => {
  proxy = await startProxy();
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "proxy");
});

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((r) => child!.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  }
  if (ns) {
    // The operator is gone: release its finalizers so the namespace can go.
    for (const rt of [ComputeEnvironmentResource, SecretResource]) {
      for (const o of (await client.list(rt, { namespace: ns })).items) {
        if (o.metadata.finalizers?.length) await client.patch(rt, ns, o.metadata.name ?? "", { metadata: { finalizers: null } }, "merge");
      }
    }
    await deleteNamespace(ns);
  }
  await proxy?.close();
});

describe("proxy settings of the chart", () => {
  it("send the operator's AWS calls through the proxy (CONNECT), and the Kubernetes API around it", async () => {
    const objs = parseManifests(await helmTemplate({ chart: join(REPO_ROOT, "helm", "vmforge"), release: "px", namespace: ns, setJson: { proxy: { httpsProxy: `http://127.0.0.1:${proxy.port}` } } }));
    const dep = objs.find((o) => o.kind === "Deployment") as unknown as { spec: { template: { spec: { containers: { env: { name: string; value?: string }[] }[] } } } };
    const rendered: Record<string, string> = {};
    for (const e of dep.spec.template.spec.containers[0]!.env) if (e.value !== undefined) rendered[e.name] = e.value;
    expect(rendered).toMatchObject({ NODE_USE_ENV_PROXY: "1", HTTPS_PROXY: `http://127.0.0.1:${proxy.port}` });

    // The operator as the container runs it: the chart's environment, plus what a pod would have
    // (its name and namespace, a kubeconfig instead of the service account), no AWS endpoint
    // override: the SDK heads for the real AWS host names.
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, ...rendered };
    Object.assign(env, {
      KUBECONFIG: kubeconfigPath(),
      POD_NAME: "proxy-test",
      POD_NAMESPACE: ns,
      VMFORGE_NAMESPACES: ns,
      VMFORGE_LEADER_ELECTION: "false",
      VMFORGE_METRICS_ADDRESS: "127.0.0.1:0",
      VMFORGE_LOG_LEVEL: "warn",
      AWS_EC2_METADATA_DISABLED: "true",
    });
    delete env.VMFORGE_AWS_ENDPOINT;
    child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], { cwd: REPO_ROOT, env, stdio: ["ignore", "ignore", "inherit"] });

    await client.create(SecretResource, { apiVersion: "v1", kind: "Secret", metadata: { name: "creds", namespace: ns }, stringData: { accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "not-a-real-secret" } } as never);
    await client.create(ComputeEnvironmentResource, {
      apiVersion: "vmforge.dev/v1alpha1",
      kind: "ComputeEnvironment",
      metadata: { name: "via-proxy", namespace: ns },
      spec: { provider: "aws", credentials: { secretRef: { name: "creds" } }, aws: { region: "eu-west-1", workDir: "s3://vmforge-proxy-test/work" } },
    } as ComputeEnvironment);

    // The operator reached the API server (it wrote the CE's status) ...
    await vi.waitFor(async () => {
      const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "via-proxy");
      expect(ce?.status?.conditions?.length ?? 0).toBeGreaterThan(0);
    }, WAIT);
    // ... and its AWS calls went to the proxy as CONNECT requests for AWS hosts.
    await vi.waitFor(() => expect(proxy.seen.some((l) => /^CONNECT [a-z0-9.-]+\.amazonaws\.com:443 HTTP\/1\.1$/.test(l))).toBe(true), WAIT);
    // Nothing else went through it: not the API server on loopback (NO_PROXY), no plain HTTP.
    for (const line of proxy.seen) expect(line).toMatch(/^CONNECT [a-z0-9.-]+\.amazonaws\.com:443 /);
    const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "via-proxy");
    expect(JSON.stringify(ce?.status?.conditions)).toMatch(/tunnel|502|proxy/i);
  });

  it("the Azure SDK follows the same variables", async () => {
    const before = proxy.seen.length;
    const saved = { HTTPS_PROXY: process.env.HTTPS_PROXY, NO_PROXY: process.env.NO_PROXY };
    process.env.HTTPS_PROXY = `http://127.0.0.1:${proxy.port}`;
    process.env.NO_PROXY = "localhost,127.0.0.1";
    try {
      const credential = { getToken: () => Promise.resolve({ token: "not-a-token", expiresOnTimestamp: Date.now() + 3_600_000 }) };
      const arm = new ResourceManagementClient(credential, "00000000-0000-0000-0000-000000000000", { retryOptions: { maxRetries: 0 } });
      await expect(arm.resourceGroups.get("rg")).rejects.toThrow();
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    expect(proxy.seen.slice(before)).toContain("CONNECT management.azure.com:443 HTTP/1.1");
  });
});
