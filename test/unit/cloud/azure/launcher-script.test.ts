// Executes the rendered Azure launcher with bash: its HTTP calls (instance metadata tokens, Logs
// Ingestion, blob storage) go to local stand-ins (test/fixtures/launcher/azure.ts), the programs
// a VM image provides (nextflow, docker, shutdown) are the stand-ins of test/fixtures/launcher/bin.
import { existsSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AZURE_USER_DATA_LIMIT_BYTES, azureArtifactsPath, azurePlatformTokenSource, azureSessionUri, encodeAzureUserData, renderAzureUserData } from "../../../../src/cloud/azure/launcher.js";
import { nextflowArgsFor, parseExitStatus } from "../../../../src/cloud/launcher/render.js";
import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import { nextflowArgv, runLauncher, type LauncherRunResult } from "../../../fixtures/launcher/harness.js";
import { AzureStandins, sampleAzureCe, sampleAzureRun } from "../../../fixtures/launcher/azure.js";

const az = new AzureStandins();
beforeAll(() => az.start());
afterAll(() => az.stop());

const results: LauncherRunResult[] = [];
afterEach(() => {
  for (const r of results.splice(0)) r.cleanup();
});

async function launch(ce: ComputeEnvironment, run: Run, opts: Parameters<typeof runLauncher>[1] = {}, platformToken?: string): Promise<LauncherRunResult> {
  const script = renderAzureUserData(ce, run, az.settings(platformToken ? { platformToken } : {}));
  const r = await runLauncher(script, opts);
  results.push(r);
  return r;
}

function artifact(ce: ComputeEnvironment, run: Run, name: string): string | undefined {
  const a = azureArtifactsPath(ce, run);
  return az.blobs.get(`${a.container}/${a.path}/${name}`);
}

describe("Azure launcher under test", { timeout: 60_000 }, () => {
  it("success: ships the start line and the exit line (last) on the launcher's own stream, never the pipeline's, uploads the exit status and shuts down", async () => {
    const ce = sampleAzureCe();
    const run = sampleAzureRun();
    const r = await launch(ce, run, { nextflowExit: 0 });
    expect(r.code, r.stdout).toBe(0);
    const uid = run.metadata.uid!;
    const own = az.lines(uid, "launcher");
    const started = own.indexOf("VMFORGE_PIPELINE_STARTED");
    expect(started, own.join("\n")).toBeGreaterThan(own.findIndex((l) => l.includes("starting: nextflow")));
    expect(own.filter((l) => l === "VMFORGE_PIPELINE_STARTED")).toHaveLength(1);
    expect(own.at(-1)).toBe("VMFORGE_EXIT_CODE=0");
    expect(own.indexOf("VMFORGE_EXIT_CODE=0")).toBeGreaterThan(own.findIndex((l) => l.includes("nextflow exited with code 0")));
    const output = az.lines(uid, "pipeline");
    expect(output).toContain("Hello world!");
    expect(output.filter((l) => l.startsWith("VMFORGE_"))).toEqual([]);
    expect(artifact(ce, run, "exit-status")).toBe("0\n");
    expect(r.calls.at(-1)).toBe("shutdown -h now");
    expect(nextflowArgv(r)).toContain("az://work/pipelines");
  });

  it("a failing set-up step (the pre-run script): no start line; VMFORGE_BOOTSTRAP_FAILED names it before the exit line, and the exit status says bootstrap-failed", async () => {
    const ce = sampleAzureCe({ preRunScript: "echo preparing; exit 7" });
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000007" });
    const r = await launch(ce, run);
    expect(r.code).toBe(7);
    const lines = az.lines(run.metadata.uid!);
    expect(lines).toContain("preparing");
    expect(lines).not.toContain("VMFORGE_PIPELINE_STARTED");
    expect(az.lines(run.metadata.uid!, "launcher").slice(-2)).toEqual(["VMFORGE_BOOTSTRAP_FAILED=pre-run-script", "VMFORGE_EXIT_CODE=7"]);
    expect(r.calls.some((c) => c.startsWith("nextflow "))).toBe(false);
    expect(existsSync(join(r.record, "nextflow.argv"))).toBe(false);
    expect(artifact(ce, run, "exit-status")).toBe("7\nbootstrap-failed=pre-run-script\n");
    expect(parseExitStatus(artifact(ce, run, "exit-status")!)).toEqual({ code: 7, bootstrapStep: "pre-run-script" });
    expect(r.calls.at(-1)).toBe("shutdown -h now");
  });

  it("the launcher's own lines and the output are numbered (Seq) in the order they were written, also when one round ships them all", async () => {
    const ce = sampleAzureCe({ preRunScript: "echo pre-run says one\necho pre-run says two" });
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000005" });
    // A long ship interval: past its first round the shipper sleeps, so the last round ships the rest at once.
    const r = await launch(ce, run, { env: { VMFORGE_SHIP_INTERVAL: "6" } });
    expect(r.code, r.stdout).toBe(0);
    const uid = run.metadata.uid!;
    const rows = az.rows.filter((x) => x.RunUid === uid).sort((a, b) => a.Seq - b.Seq);
    expect(rows.map((x) => x.Seq)).toEqual(rows.map((_, i) => i + 1));
    const lines = rows.map((x) => x.Line);
    const at = (pred: (l: string) => boolean, what: string): number => {
      const i = lines.findIndex(pred);
      expect(i, `${what} in\n${lines.join("\n")}`).toBeGreaterThanOrEqual(0);
      return i;
    };
    const order = [
      at((l) => l.endsWith("running the pre-run script"), "the pre-run line"),
      at((l) => l === "pre-run says one", "the pre-run output"),
      at((l) => l === "pre-run says two", "the pre-run output"),
      at((l) => l.includes("starting: nextflow"), "the start"),
      at((l) => l === "VMFORGE_PIPELINE_STARTED", "the start marker"),
      at((l) => l === "Hello world!", "the pipeline output"),
      at((l) => l.includes("nextflow exited with code 0"), "the end"),
      at((l) => l === "VMFORGE_EXIT_CODE=0", "the exit line"),
    ];
    expect(order).toEqual([...order].sort((a, b) => a - b));
    expect(lines.at(-1)).toBe("VMFORGE_EXIT_CODE=0");
    // Each stream holds its file, whole and in order.
    expect(az.lines(uid, "pipeline").join("\n") + "\n").toBe(r.log);
    expect(az.lines(uid, "launcher")).toEqual(readFileSync(join(r.root, "var/log/vmforge/launcher.log"), "utf8").trimEnd().split("\n"));
  });

  it("a pipeline failure is not a set-up failure: exit code 3, no bootstrap-failed", async () => {
    const ce = sampleAzureCe();
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000003" });
    const r = await launch(ce, run, { nextflowExit: 3 });
    expect(r.code).toBe(3);
    expect(artifact(ce, run, "exit-status")).toBe("3\n");
    expect(az.lines(run.metadata.uid!)).not.toContain("VMFORGE_BOOTSTRAP_FAILED=pre-run-script");
    expect(az.lines(run.metadata.uid!, "launcher").at(-1)).toBe("VMFORGE_EXIT_CODE=3");
  });

  it("the resume cache is the Run's az:// work dir; the session id is uploaded; resumeFrom resumes it; none recorded is BootstrapFailed at resume-session", async () => {
    const ce = sampleAzureCe();
    const session = "0d5a6f3e-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    const first = sampleAzureRun({ name: "first", uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000011", pipeline: { workDir: "az://work/first-run" } });
    const a = await launch(ce, first, { env: { NXF_STANDIN_SESSION: session } });
    expect(a.code, a.stdout).toBe(0);
    expect(readFileSync(join(a.record, "nextflow.cloudcache"), "utf8")).toBe("az://work/first-run");
    const sessionBlob = azureSessionUri(ce, "team-a", "first").replace(/^az:\/\//, "");
    expect(sessionBlob).toBe("work/pipelines/.vmforge/sessions/team-a/first");
    expect(az.blobs.get(sessionBlob)?.trim()).toBe(session);

    const second = sampleAzureRun({ name: "second", uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000012", pipeline: { resume: true, resumeFrom: "first" } });
    const b = await launch(ce, second);
    expect(b.code, b.stdout).toBe(0);
    const argv = nextflowArgv(b);
    expect(argv[argv.indexOf("-resume") + 1]).toBe(session);
    expect(argv.filter((x) => x === "-resume")).toHaveLength(1);
    expect(az.lines(second.metadata.uid!, "launcher").join("\n")).toContain(`resuming Nextflow session ${session} of Run first`);

    const orphan = sampleAzureRun({ name: "third", uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000013", pipeline: { resumeFrom: "never-ran" } });
    const c = await launch(ce, orphan);
    expect(c.code).not.toBe(0);
    expect(existsSync(join(c.record, "nextflow.argv"))).toBe(false);
    expect(az.lines(orphan.metadata.uid!)).toContain("VMFORGE_BOOTSTRAP_FAILED=resume-session");
    expect(artifact(ce, orphan, "exit-status")).toMatch(/^\d+\nbootstrap-failed=resume-session\n$/);
  });

  it("hostile spec values reach nextflow, its config and params verbatim and run nothing", async () => {
    const canary = join(tmpdir(), `vmforge-az-canary-${process.pid}`);
    const evil = `it's "quoted" $(touch ${canary}) \`touch ${canary}\` \${HOME}\nnew line; touch ${canary}`;
    const ce = sampleAzureCe({ nextflowConfig: `// ${evil}` });
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000021", pipeline: { params: { evil, nested: { list: [evil] } }, config: `params.note = 'x' // ${evil}`, profiles: ["a-b", "c.d"], runName: "named_run" } });
    const r = await launch(ce, run);
    expect(r.code, r.stdout).toBe(0);
    expect(existsSync(canary)).toBe(false);
    const launchDir = join(r.root, "var/lib/vmforge/launch");
    expect(JSON.parse(readFileSync(join(launchDir, "params.json"), "utf8"))).toEqual({ evil, nested: { list: [evil] } });
    const config = readFileSync(join(launchDir, "nextflow.config"), "utf8");
    expect(config).toContain(`// ${evil}\n`);
    expect(config).toContain(`params.note = 'x' // ${evil}\n`);
    expect(config).toContain("azure.managedIdentity.clientId = '0f0e0d0c-1111-2222-3333-444455556666'");
    expect(config).toMatch(/executor \{\n {4}name = 'local'\n {4}cpus = \d+\n {4}memory = '\d+ MB'\n\}/);
    expect(nextflowArgv(r)).toEqual(nextflowArgsFor(run, "az://work/pipelines"));
    // Shipped lines that hold quotes and backslashes arrive intact.
    expect(az.lines(run.metadata.uid!, "launcher").join("\n")).toContain("named_run");
  });

  it("Log Analytics refusing every batch never blocks the pipeline: it runs, uploads its exit status and the VM shuts down", async () => {
    const ce = sampleAzureCe();
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000031" });
    az.ingestionDown = true;
    try {
      // (the last lines are tried again for a bounded time only)
      const r = await launch(ce, run, { env: { VMFORGE_FLUSH_WAIT: "2" } });
      expect(r.code, r.stdout).toBe(0);
      expect(az.lines(run.metadata.uid!)).toEqual([]);
      expect(artifact(ce, run, "exit-status")).toBe("0\n");
      expect(r.calls.at(-1)).toBe("shutdown -h now");
    } finally {
      az.ingestionDown = false;
    }
  });

  it("an opted-in inline Platform token reaches nextflow's environment only, never its argv, the log or the uploads", async () => {
    const ce = sampleAzureCe({ platformTokenSecretRef: { name: "tower" } }, { platformTokenInUserData: true });
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000041" });
    const token = "tok-inline-az-7q8w9e";
    const r = await launch(ce, run, {}, token);
    expect(r.code, r.stdout).toBe(0);
    expect(readFileSync(join(r.record, "nextflow.token"), "utf8")).toBe(token);
    expect(nextflowArgv(r).join(" ")).not.toContain(token);
    expect(az.lines(run.metadata.uid!).join("\n")).not.toContain(token);
    for (const v of az.blobs.values()) expect(v).not.toContain(token);
  });

  it("a pre-run script that switches tracing on (set -x) does not print the Platform token with nextflow's command", async () => {
    const ce = sampleAzureCe({ platformTokenSecretRef: { name: "tower" }, preRunScript: "set -x\necho pre-run ran" }, { platformTokenInUserData: true });
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000042" });
    const token = "tok-traced-az-1z2x3c";
    const r = await launch(ce, run, {}, token);
    expect(r.code, r.stdout).toBe(0);
    expect(readFileSync(join(r.record, "nextflow.token"), "utf8")).toBe(token);
    const shipped = [...az.lines(run.metadata.uid!), ...az.lines(run.metadata.uid!, "launcher")].join("\n");
    expect(shipped).toContain("pre-run ran");
    expect(shipped).not.toContain(token);
    for (const v of az.blobs.values()) expect(v).not.toContain(token);
  });

  it("Key Vault token: read at boot with the VM identity's token for Key Vault, handed to nextflow in its environment only; userData holds only the URI", async () => {
    const token = "tok-from-keyvault-5t6y7u";
    az.secrets.set("tower-token", token);
    const uri = "https://my-vault.vault.azure.net/secrets/tower-token";
    const ce = sampleAzureCe({}, { platformTokenSecretUri: uri });
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000051" });
    const script = renderAzureUserData(ce, run, az.settings());
    expect(script).toContain(`VMF_TOKEN_REF='${uri}'`);
    expect(script).toContain("VMF_KEYVAULT_RESOURCE='https://vault.azure.net'");
    expect(script).not.toContain(token);
    const r = await launch(ce, run, { env: { VMFORGE_KEYVAULT_ENDPOINT: `${az.base}/kv` } });
    expect(r.code, r.stdout).toBe(0);
    expect(readFileSync(join(r.record, "nextflow.token"), "utf8")).toBe(token);
    expect(nextflowArgv(r).join(" ")).not.toContain(token);
    expect(az.lines(run.metadata.uid!).join("\n")).not.toContain(token);
    expect(az.lines(run.metadata.uid!, "launcher").join("\n")).toContain(`reading the Platform token from Key Vault secret ${uri}`);
  });

  it("a Key Vault 403 (a grant still propagating) is asked again until it is served; a 403 that lasts past the wait fails the step", async () => {
    const token = "tok-after-propagation-8i9o0p";
    az.secrets.set("late-token", token);
    const ce = sampleAzureCe({}, { platformTokenSecretUri: "https://my-vault.vault.azure.net/secrets/late-token" });
    az.keyVaultForbidden = 2;
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000053" });
    const r = await launch(ce, run, { env: { VMFORGE_KEYVAULT_ENDPOINT: `${az.base}/kv`, VMFORGE_KEYVAULT_WAIT: "5" } });
    expect(r.code, r.stdout).toBe(0);
    expect(readFileSync(join(r.record, "nextflow.token"), "utf8")).toBe(token);
    expect(az.lines(run.metadata.uid!, "launcher").filter((l) => l.includes("Key Vault, secret https://my-vault.vault.azure.net/secrets/late-token: refused (403)"))).toHaveLength(2);
    az.keyVaultForbidden = 100;
    const run2 = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000054" });
    const r2 = await launch(ce, run2, { env: { VMFORGE_KEYVAULT_ENDPOINT: `${az.base}/kv`, VMFORGE_KEYVAULT_WAIT: "2" } });
    az.keyVaultForbidden = 0;
    expect(r2.code).not.toBe(0);
    expect(existsSync(join(r2.record, "nextflow.argv"))).toBe(false);
    expect(az.lines(run2.metadata.uid!)).toContain("VMFORGE_BOOTSTRAP_FAILED=platform-token");
    expect(az.lines(run2.metadata.uid!, "launcher").join("\n")).toContain("Key Vault, secret https://my-vault.vault.azure.net/secrets/late-token: gave up, answered HTTP 403");
  });

  it("blob storage refusing uploads with 403 (a grant still propagating) is asked again until it takes them; a passing 503 too: the exit status is uploaded", async () => {
    const ce = sampleAzureCe();
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000071" });
    // More refusals than the launcher makes uploads: one try each would upload nothing.
    az.blobForbidden = 5;
    az.blobAnswers.length = 0;
    try {
      const r = await launch(ce, run, { env: { VMFORGE_STORAGE_WAIT: "9" } });
      expect(r.code, r.stdout).toBe(0);
      expect(az.blobAnswers.filter((a) => a.startsWith("PUT 403"))).toHaveLength(5);
      expect(artifact(ce, run, "exit-status")).toBe("0\n");
      expect(artifact(ce, run, "launcher.log")).toContain("VMFORGE_PIPELINE_STARTED");
      const own = az.lines(run.metadata.uid!, "launcher");
      expect(own.filter((l) => /blob storage, upload of az:\/\/\S+: refused \(403\); the identity's access may still be propagating/.test(l))).toHaveLength(5);
      expect(own.join("\n")).not.toMatch(/upload of \S+ to \S+ failed/);

      az.blobUnavailable = 2;
      const run2 = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000072" });
      const r2 = await launch(ce, run2, { env: { VMFORGE_STORAGE_WAIT: "9" } });
      expect(r2.code, r2.stdout).toBe(0);
      expect(az.blobUnavailable).toBe(0);
      expect(artifact(ce, run2, "exit-status")).toBe("0\n");
      expect(az.lines(run2.metadata.uid!, "launcher").filter((l) => l.includes("failed (HTTP 503), asking again"))).toHaveLength(2);
    } finally {
      az.blobForbidden = 0;
      az.blobUnavailable = 0;
    }
  });

  it("blob storage refusing with 403 past the wait: the uploads fail, the log names the status, the wait is spent once over all uploads, and the VM still shuts down", async () => {
    const ce = sampleAzureCe();
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000073" });
    az.blobForbidden = 1000;
    az.blobAnswers.length = 0;
    try {
      const r = await launch(ce, run, { env: { VMFORGE_STORAGE_WAIT: "2" } });
      expect(r.code, r.stdout).toBe(0);
      expect(artifact(ce, run, "exit-status")).toBeUndefined();
      const own = az.lines(run.metadata.uid!, "launcher").join("\n");
      const a = azureArtifactsPath(ce, run);
      expect(own).toContain(`blob storage, upload of az://${a.container}/${a.path}/exit-status: gave up, answered HTTP 403`);
      expect(own).toContain(`upload of ${join(r.root, "var/lib/vmforge/exit-status")} to az://${a.container}/${a.path}/exit-status failed`);
      // Two seconds of 403 in all: the first upload waited them, the later ones asked once.
      const puts = az.blobAnswers.filter((x) => x.startsWith("PUT "));
      const uploads = new Set(puts.map((x) => x.split(" ")[2]));
      expect(puts).toHaveLength(2 + uploads.size);
      expect(r.calls.at(-1)).toBe("shutdown -h now");
    } finally {
      az.blobForbidden = 0;
    }
  });

  it("resumeFrom: a session download refused with 403 is asked again until served; past the wait it fails resume-session naming the status", async () => {
    const ce = sampleAzureCe();
    const session = "0d5a6f3e-1b2c-4d5e-8f90-a1b2c3d4e5f8";
    const first = sampleAzureRun({ name: "dl-first", uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000081" });
    const a = await launch(ce, first, { env: { NXF_STANDIN_SESSION: session } });
    expect(a.code, a.stdout).toBe(0);
    const second = sampleAzureRun({ name: "dl-second", uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000082", pipeline: { resumeFrom: "dl-first" } });
    az.blobForbidden = 3;
    az.blobAnswers.length = 0;
    try {
      const b = await launch(ce, second, { env: { VMFORGE_STORAGE_WAIT: "9" } });
      expect(b.code, b.stdout).toBe(0);
      expect(az.blobAnswers.slice(0, 4)).toEqual([...Array(3).fill("GET 403 work/pipelines/.vmforge/sessions/team-a/dl-first"), "GET 200 work/pipelines/.vmforge/sessions/team-a/dl-first"]);
      const argv = nextflowArgv(b);
      expect(argv[argv.indexOf("-resume") + 1]).toBe(session);

      az.blobForbidden = 1000;
      const third = sampleAzureRun({ name: "dl-third", uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000083", pipeline: { resumeFrom: "dl-first" } });
      const c = await launch(ce, third, { env: { VMFORGE_STORAGE_WAIT: "2" } });
      expect(c.code).not.toBe(0);
      expect(existsSync(join(c.record, "nextflow.argv"))).toBe(false);
      const own = az.lines(third.metadata.uid!, "launcher");
      expect(own).toContain("VMFORGE_BOOTSTRAP_FAILED=resume-session");
      expect(own.join("\n")).toContain("blob storage, download of az://work/pipelines/.vmforge/sessions/team-a/dl-first: gave up, answered HTTP 403");
    } finally {
      az.blobForbidden = 0;
    }
  });

  it("the last log lines refused with 403 at the end of the Run (the DCR grant still propagating) are shipped again until taken: the exit line gets out", async () => {
    const ce = sampleAzureCe();
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000091" });
    // Once the exit status is uploaded (just before the exit line is written), the next three log
    // batches are refused: more than the shipper's last round and one more try.
    az.onBlobPut = (key) => {
      if (key.endsWith("/exit-status")) az.ingestionForbidden = 3;
    };
    try {
      const r = await launch(ce, run, { env: { VMFORGE_FLUSH_WAIT: "4" } });
      expect(r.code, r.stdout).toBe(0);
      expect(az.ingestionForbidden).toBe(0);
      expect(az.lines(run.metadata.uid!, "launcher").at(-1)).toBe("VMFORGE_EXIT_CODE=0");
      expect(r.calls.at(-1)).toBe("shutdown -h now");
    } finally {
      az.onBlobPut = undefined;
      az.ingestionForbidden = 0;
    }
  });

  it("the identity's bearer tokens never reach a command line: every curl gets its Authorization header on stdin, and blob storage, Key Vault and Logs Ingestion still accept them", async () => {
    // A curl in front of the real one records every argv it is run with (what /proc/<pid>/cmdline
    // shows every process of the VM), and the header lines it was handed on stdin.
    const recorder = String.raw`#!/bin/bash
{ printf '%s\n' "$@"; echo "-- end of call --"; } >>"$STANDIN_RECORD/curl.argv"
for a in "$@"; do
  if [[ "$a" == "@-" ]]; then
    hdr=$(cat)
    printf '%s\n' "$hdr" >>"$STANDIN_RECORD/curl.stdin"
    exec /usr/bin/curl "$@" <<<"$hdr"
  fi
done
exec /usr/bin/curl "$@"
`;
    const token = "tok-kv-argv-4r5t6y";
    az.secrets.set("argv-token", token);
    const ce = sampleAzureCe({}, { platformTokenSecretUri: "https://my-vault.vault.azure.net/secrets/argv-token" });
    const first = sampleAzureRun({ name: "argv-first", uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000061" });
    const a = await launch(ce, first, { env: { VMFORGE_KEYVAULT_ENDPOINT: `${az.base}/kv`, NXF_STANDIN_SESSION: "0d5a6f3e-1b2c-4d5e-8f90-a1b2c3d4e5f7" } });
    expect(a.code, a.stdout).toBe(0);
    // resumeFrom: a blob download too
    const run = sampleAzureRun({ name: "argv-second", uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000062", pipeline: { resumeFrom: "argv-first" } });
    const r = await launch(ce, run, { env: { VMFORGE_KEYVAULT_ENDPOINT: `${az.base}/kv` }, extraBin: { curl: recorder } });
    expect(r.code, r.log).toBe(0);
    const argv = readFileSync(join(r.record, "curl.argv"), "utf8").split("-- end of call --\n").filter(Boolean).map((c) => c.split("\n").slice(0, -1));
    const bearerCalls = argv.filter((c) => c.includes("@-"));
    // Key Vault, the resume download, the uploads and the log batches: all with the header on stdin
    expect(bearerCalls.some((c) => c.some((x) => x.includes("/kv/secrets/argv-token")))).toBe(true);
    expect(bearerCalls.some((c) => c.some((x) => x.includes("/blob/")) && !c.includes("PUT"))).toBe(true);
    expect(bearerCalls.some((c) => c.includes("PUT"))).toBe(true);
    expect(bearerCalls.some((c) => c.some((x) => x.includes("/dataCollectionRules/")))).toBe(true);
    const all = argv.flat().join(" ");
    expect(all).not.toMatch(/Bearer/i);
    expect(all).not.toMatch(/tok-[0-9a-f]{8}/); // no IMDS token of any audience
    expect(all).not.toContain(token);
    expect(readFileSync(join(r.record, "curl.stdin"), "utf8")).toMatch(/^Authorization: Bearer tok-[0-9a-f]+$/m);
    // and the services took the header: the secret was read, the session downloaded, the log shipped, the exit status uploaded
    expect(readFileSync(join(r.record, "nextflow.token"), "utf8")).toBe(token);
    expect(nextflowArgv(r)).toContain("0d5a6f3e-1b2c-4d5e-8f90-a1b2c3d4e5f7");
    expect(az.lines(run.metadata.uid!, "launcher").length).toBeGreaterThan(0);
    expect(artifact(ce, run, "exit-status")).toBe("0\n");
  });

  it("a Key Vault secret the identity cannot read is BootstrapFailed at platform-token, and nextflow never starts", async () => {
    const ce = sampleAzureCe({}, { platformTokenSecretUri: "https://my-vault.vault.azure.net/secrets/missing-token" });
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000052" });
    const r = await launch(ce, run, { env: { VMFORGE_KEYVAULT_ENDPOINT: `${az.base}/kv` } });
    expect(r.code).not.toBe(0);
    expect(existsSync(join(r.record, "nextflow.argv"))).toBe(false);
    expect(az.lines(run.metadata.uid!)).toContain("VMFORGE_BOOTSTRAP_FAILED=platform-token");
    expect(artifact(ce, run, "exit-status")).toMatch(/^\d+\nbootstrap-failed=platform-token\n$/);
  });
});

describe("Azure userData budget", () => {
  it("a CE and a Run each at the admission budget (16 KiB of config and scripts, 16 KiB of config and params) still fit, compressed", () => {
    const full = "params.x = 1 // filler line for the budget\n".repeat(380);
    const script = renderAzureUserData(sampleAzureCe({ nextflowConfig: full }), sampleAzureRun({ pipeline: { config: full } }), az.settings());
    expect(Buffer.byteLength(script)).toBeGreaterThan(AZURE_USER_DATA_LIMIT_BYTES);
    expect(encodeAzureUserData(script).length).toBeLessThanOrEqual(AZURE_USER_DATA_LIMIT_BYTES);
  });
});

describe("Azure Platform token source", () => {
  const withRef = (azure: Record<string, unknown> = {}): ComputeEnvironment => sampleAzureCe({ platformTokenSecretRef: { name: "tower" } }, azure);
  it("none without a Secret or a Key Vault secret", () => {
    expect(azurePlatformTokenSource(sampleAzureCe())).toEqual({ source: "none" });
  });
  it("a Key Vault secret URI is read on the VM (and wins over the Secret)", () => {
    const uri = "https://my-vault.vault.azure.net/secrets/tower-token/0123456789abcdef0123456789abcdef";
    expect(azurePlatformTokenSource(withRef({ platformTokenSecretUri: uri }), "t")).toEqual({ source: "keyvault", ref: uri });
    expect(() => azurePlatformTokenSource(sampleAzureCe({}, { platformTokenSecretUri: "https://evil.example/secrets/x" }))).toThrow(/Key Vault secret identifier/);
  });
  it("a Secret without the opt-in is refused with both ways out named; with it the token goes inline; an empty Secret is refused", () => {
    expect(() => azurePlatformTokenSource(withRef(), "t")).toThrow(expect.objectContaining({ kind: "Terminal", reason: "PlatformTokenNotDeliverable", message: expect.stringMatching(/platformTokenSecretUri[\s\S]*platformTokenInUserData: true/) }));
    expect(azurePlatformTokenSource(withRef({ platformTokenInUserData: true }), "tok")).toEqual({ source: "user-data", inline: "tok" });
    expect(() => azurePlatformTokenSource(withRef({ platformTokenInUserData: true }), "")).toThrow(expect.objectContaining({ reason: "PlatformTokenMissing" }));
  });
});
