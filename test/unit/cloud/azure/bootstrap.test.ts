// The Azure VM bootstrap (customData): cloud-init runs it; it must read the launcher from the
// instance metadata service's userData (base64, format=text, Metadata header) and run it, and shut
// the machine down when it cannot. Run here with bash against a small local metadata server.
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync, mkdirSync, existsSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AZURE_USER_DATA_LIMIT_BYTES, encodeAzureUserData, renderAzureBootstrap } from "../../../../src/cloud/azure/launcher.js";

let server: Server;
let base = "";
let userData = "";
const seen: string[] = [];
let dir = "";

beforeAll(async () => {
  server = createServer((req, res) => {
    seen.push(`${req.headers.metadata ?? "-"} ${req.url}`);
    const u = new URL(req.url ?? "/", "http://x");
    if (u.pathname !== "/metadata/instance/compute/userData" || req.headers.metadata !== "true" || u.searchParams.get("format") !== "text" || !userData) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": "text/plain" }).end(userData);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  dir = mkdtempSync(join(tmpdir(), "vmforge-bootstrap-"));
  mkdirSync(join(dir, "bin"));
  // a stand-in for the image's shutdown
  writeFileSync(join(dir, "bin", "shutdown"), `#!/bin/bash\necho "$@" >"${dir}/shutdown-called"\n`);
  chmodSync(join(dir, "bin", "shutdown"), 0o755);
});

afterAll(async () => {
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

function runBootstrap(root: string): Promise<{ code: number | null }> {
  return new Promise((resolve) => {
    const p = execFile("bash", ["-c", renderAzureBootstrap(base, { attempts: 3, intervalS: 0 })], { env: { PATH: `${dir}/bin:/usr/bin:/bin`, VMFORGE_ROOT: root }, timeout: 90_000 }, () => resolve({ code: p.exitCode }));
  });
}

describe("Azure VM bootstrap (customData)", () => {
  it("reads the launcher from the metadata service's userData and runs it", async () => {
    const root = join(dir, "vm1");
    userData = Buffer.from(`#!/bin/bash\necho "launcher ran as $0" >"$VMFORGE_ROOT/ran"\nexit 7\n`).toString("base64");
    const r = await runBootstrap(root);
    expect(r.code).toBe(7);
    expect(readFileSync(join(root, "ran"), "utf8")).toContain("launcher ran as");
    expect(readFileSync(join(root, "var/lib/vmforge/launcher.sh"), "utf8")).toContain("exit 7");
    expect(seen.at(-1)).toMatch(/^true \/metadata\/instance\/compute\/userData\?api-version=[\d-]+&format=text$/);
    expect(existsSync(join(dir, "shutdown-called"))).toBe(false);
  });

  it("unpacks a gzip-compressed launcher (one over the raw userData budget) and runs it", async () => {
    const root = join(dir, "vm-gz");
    const big = `#!/bin/bash\n# ${"x".repeat(60_000)}\necho "big launcher ran" >"$VMFORGE_ROOT/ran"\nexit 5\n`;
    const encoded = encodeAzureUserData(big);
    expect(encoded.length).toBeLessThanOrEqual(AZURE_USER_DATA_LIMIT_BYTES);
    expect(encoded[0]).toBe(0x1f); // gzip, since the script is over the budget
    userData = encoded.toString("base64");
    const r = await runBootstrap(root);
    expect(r.code).toBe(5);
    expect(readFileSync(join(root, "ran"), "utf8")).toBe("big launcher ran\n");
    expect(readFileSync(join(root, "var/lib/vmforge/launcher.sh"), "utf8")).toBe(big);
  });

  it("a launcher within the budget travels as it is", () => {
    expect(encodeAzureUserData("#!/bin/bash\nexit 0\n").toString("utf8")).toBe("#!/bin/bash\nexit 0\n");
  });

  it("shuts the machine down when there is no launcher to read", async () => {
    const root = join(dir, "vm2");
    userData = "";
    const r = await runBootstrap(root);
    expect(r.code).toBe(0);
    expect(readFileSync(join(dir, "shutdown-called"), "utf8").trim()).toBe("-h now");
    expect(readFileSync(join(root, "var/lib/vmforge/bootstrap.log"), "utf8")).toContain("could not read the launcher");
    expect(seen.filter((x) => x.includes("userData")).length).toBeGreaterThanOrEqual(4); // 1 + 3 tries
  });

  it("renders 30 tries 2 s apart by default", () => {
    expect(renderAzureBootstrap()).toContain("for attempt in $(seq 1 30); do");
    expect(renderAzureBootstrap()).toContain("  sleep 2\n");
  });
});
