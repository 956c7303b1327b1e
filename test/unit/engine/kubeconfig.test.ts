// The light kubeconfig loader: the fields KubeClient uses, and the hand-over to client-node for
// what it does not handle (exec plugins).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type https from "node:https";
import { afterAll, describe, expect, it } from "vitest";
import { loadKubeConfig } from "../../../src/engine/kubeconfig.js";

const dir = mkdtempSync(join(tmpdir(), "vmforge-kc-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const write = (name: string, body: string): string => {
  const p = join(dir, name);
  writeFileSync(p, body);
  return p;
};
const b64 = (s: string): string => Buffer.from(s).toString("base64");

describe("loadKubeConfig", () => {
  it("reads server, CA, client certificate and key of the current context", async () => {
    write("ca.pem", "CA-FILE");
    const p = write("cert.yaml", `
apiVersion: v1
kind: Config
current-context: b
contexts:
- name: a
  context: { cluster: other, user: other }
- name: b
  context: { cluster: c1, user: u1 }
clusters:
- name: other
  cluster: { server: "https://wrong:1" }
- name: c1
  cluster: { server: "https://127.0.0.1:6443", certificate-authority: ca.pem, tls-server-name: kubernetes }
users:
- name: u1
  user: { client-certificate-data: ${b64("CERT")}, client-key-data: ${b64("KEY")} }
`);
    const kc = loadKubeConfig(p);
    expect(kc.getCurrentCluster()?.server).toBe("https://127.0.0.1:6443");
    const o: https.RequestOptions = {};
    await kc.applyToHTTPSOptions(o);
    expect(String(o.ca)).toBe("CA-FILE");
    expect(String(o.cert)).toBe("CERT");
    expect(String(o.key)).toBe("KEY");
    expect(o.servername).toBe("kubernetes");
    expect(o.headers).toBeUndefined();
  });

  it("re-reads a token file at every request (rotated tokens)", async () => {
    const tok = write("token", "first\n");
    const p = write("token.yaml", `
current-context: x
contexts: [{ name: x, context: { cluster: c, user: u } }]
clusters: [{ name: c, cluster: { server: "https://h:1", insecure-skip-tls-verify: true } }]
users: [{ name: u, user: { tokenFile: ${tok} } }]
`);
    const kc = loadKubeConfig(p);
    const o: https.RequestOptions = {};
    await kc.applyToHTTPSOptions(o);
    expect((o.headers as Record<string, string>).authorization).toBe("Bearer first");
    expect(o.rejectUnauthorized).toBe(false);
    writeFileSync(tok, "second");
    const o2: https.RequestOptions = {};
    await kc.applyToHTTPSOptions(o2);
    expect((o2.headers as Record<string, string>).authorization).toBe("Bearer second");
  });

  it("hands exec plugins to client-node", () => {
    const p = write("exec.yaml", `
current-context: x
contexts: [{ name: x, context: { cluster: c, user: u } }]
clusters: [{ name: c, cluster: { server: "https://h:1" } }]
users: [{ name: u, user: { exec: { apiVersion: client.authentication.k8s.io/v1, command: /bin/true } } }]
`);
    const kc = loadKubeConfig(p) as unknown as { loadFromFile?: unknown };
    expect(typeof kc.loadFromFile).toBe("function");
  });

  it("names the problem when the current context has no cluster", () => {
    const p = write("bad.yaml", "current-context: nope\n");
    expect(() => loadKubeConfig(p)).toThrow(/names no cluster/);
  });
});
