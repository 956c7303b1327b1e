// Executes the rendered Azure launcher with bash: its HTTP calls (instance metadata tokens, Logs
// Ingestion, blob storage) go to local stand-ins (test/fixtures/launcher/azure.ts), the programs
// a VM image provides (nextflow, docker, shutdown) are the stand-ins of test/fixtures/launcher/bin.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { azureArtifactsPath, renderAzureUserData } from "../../../../src/cloud/azure/launcher.js";
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
  it("success: ships the start line before the pipeline's output and the exit line last, uploads the exit status and shuts down", async () => {
    const ce = sampleAzureCe();
    const run = sampleAzureRun();
    const r = await launch(ce, run, { nextflowExit: 0 });
    expect(r.code, r.stdout).toBe(0);
    const uid = run.metadata.uid!;
    const lines = az.lines(uid);
    const started = lines.indexOf("VMFORGE_PIPELINE_STARTED");
    expect(started, lines.join("\n")).toBeGreaterThanOrEqual(0);
    expect(lines.filter((l) => l === "VMFORGE_PIPELINE_STARTED")).toHaveLength(1);
    expect(started).toBeLessThan(lines.indexOf("Hello world!"));
    expect(lines.indexOf("VMFORGE_EXIT_CODE=0")).toBeGreaterThan(lines.indexOf("Hello world!"));
    expect(artifact(ce, run, "exit-status")).toBe("0\n");
    expect(r.calls.at(-1)).toBe("shutdown -h now");
    expect(nextflowArgv(r)).toContain("az://work/pipelines");
  });

  it("a failing pre-run script: no start line, the exit line and the exit status carry its code", async () => {
    const ce = sampleAzureCe({ preRunScript: "echo preparing; exit 7" });
    const run = sampleAzureRun({ uid: "3a3b3c3d-aaaa-bbbb-cccc-000000000007" });
    const r = await launch(ce, run);
    expect(r.code).toBe(7);
    const lines = az.lines(run.metadata.uid!);
    expect(lines).toContain("preparing");
    expect(lines).not.toContain("VMFORGE_PIPELINE_STARTED");
    expect(lines).toContain("VMFORGE_EXIT_CODE=7");
    expect(r.calls.some((c) => c.startsWith("nextflow "))).toBe(false);
    expect(existsSync(join(r.record, "nextflow.argv"))).toBe(false);
    expect(artifact(ce, run, "exit-status")?.split("\n")[0]).toBe("7");
    expect(readFileSync(join(r.record, "calls.log"), "utf8")).toContain("shutdown -h now");
  });
});
