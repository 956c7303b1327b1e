/**
 * Whose word ends an Azure Run, through the OPERATOR and the VM player (the real launcher, the
 * emulator for tokens, ingestion and VMs, Azurite for the work directory): only the launcher's
 * own stream in Log Analytics says that the pipeline started or how it ended. A pipeline (here
 * its CE's pre-run script, whose output goes to the pipeline's stream) that prints
 * VMFORGE_PIPELINE_STARTED and VMFORGE_EXIT_CODE=0 and then fails ends Failed with its real
 * code. And a Running Run whose VM keeps running after its launcher's exit line (its OS shutdown
 * failed) is ended by the exit-line probe of running VMs, not left until its timeout.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";
import { LogsQueryClient } from "@azure/monitor-query-logs";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import type { AzureProvider } from "../../src/cloud/azure/provider.js";
import { azureArtifactsPath } from "../../src/cloud/azure/launcher.js";
import { LOG_TABLE } from "../../src/cloud/azure/names.js";
import { waitFor } from "../support/operator.js";
import { azureEndpoint, azureTestCredential, trustAzureEmulator } from "../harness/helpers.js";
import { AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY } from "../harness/azurite.js";
import { ceBody, waitReady } from "../support/azure-env.js";
import { setupAzureRuns, type AzureRunsEnv } from "../support/azure-runs.js";
import { startVmPlayer, type PlayingVms } from "../support/azure-player.js";

let env: AzureRunsEnv;
let ce: ComputeEnvironment;
let vms: PlayingVms;
let provider: AzureProvider;
/** describeRuns calls made by the operator so far (each one reads the launcher lines of the Runs that need them). */
let describes = 0;
const CE = "markers";

// The "pipeline" prints the launcher's markers on its own output, points the exit status upload at
// a container that does not exist (so only the log can tell the outcome), then waits for the test.
const SPOOF = [
  "echo VMFORGE_PIPELINE_STARTED",
  "echo VMFORGE_EXIT_CODE=0",
  "VMF_ARTIFACTS_URI=az://vmforge-no-such-container/spoof",
  'until [ -e "$STATE_DIR/go" ]; do sleep 0.2; done',
].join("\n");

beforeAll(async () => {
  env = await setupAzureRuns({ prefix: "azmark", principal: "vmforge-markers", blob: true });
  // The exit line of a Running Run whose VM still runs is asked for every 2 s (5 minutes in production).
  provider = env.provider({ runningExitProbeMs: 2_000 });
  const describe = provider.describeRuns.bind(provider);
  provider.describeRuns = async (ctx, runs) => {
    const out = await describe(ctx, runs);
    describes++;
    return out;
  };
  await env.start(provider, [env.ns]);
  const body = ceBody(env.ns, CE, { storageAccount: env.storageAccount });
  body.spec.preRunScript = SPOOF;
  await env.kube.create(ComputeEnvironmentResource, body);
  ce = await waitReady(env.kube, env.ns, CE);
  // Only the "spoof" Run's VM is played; the others stay running, their launcher silent.
  vms = startVmPlayer("azmark", { exitCodeFor: (name) => (name === "spoof" ? 3 : undefined) });
}, 120_000);

afterAll(async () => {
  await vms?.stop();
  await env?.stop();
});

/** Rows of the Run's log in Log Analytics as [Stream, Line]. */
async function logRows(run: Run): Promise<string[][]> {
  trustAzureEmulator();
  const q = new LogsQueryClient(await azureTestCredential({ clientId: env.principal.clientId, clientSecret: env.principal.secret }), { endpoint: `${azureEndpoint()}/loganalytics/v1` });
  const res = await q.queryWorkspace(ce.status!.azure!.workspaceCustomerId!, `${LOG_TABLE} | where RunUid == '${run.metadata.uid!}' | project Seq, Stream, Line | order by Seq asc`, { duration: "PT1H" });
  return ("tables" in res ? res.tables[0]?.rows ?? [] : []).map((r) => [String(r[1]), String(r[2])]);
}

describe("Azure: the launcher's markers are believed from its own stream only", () => {
  it("a pipeline that prints VMFORGE_PIPELINE_STARTED and VMFORGE_EXIT_CODE=0, then exits 3, ends Failed with exit code 3", async () => {
    await env.kube.create(RunResource, env.runBody("spoof", CE));
    const run = await waitFor("Run spoof has its VM", async () => {
      const r = await env.getRun("spoof");
      return r?.status?.instance?.id ? r : undefined;
    }, 60_000, 250);
    // The spoofed lines are queryable, on the pipeline's stream, while the VM runs.
    await waitFor("the spoofed lines in Log Analytics", async () => {
      const rows = await logRows(run);
      return rows.some(([s, l]) => s === "pipeline" && l === "VMFORGE_EXIT_CODE=0") && rows.some(([s, l]) => s === "pipeline" && l === "VMFORGE_PIPELINE_STARTED");
    }, 60_000, 250);
    // Three more polls read the launcher lines with them queryable: the Run is still being set up.
    const seen = describes;
    await waitFor("three more polls", async () => describes >= seen + 3, 30_000, 100);
    const meanwhile = await env.getRun("spoof");
    expect(meanwhile?.status?.phase, meanwhile?.status?.message).toBe("Launching");
    expect(meanwhile?.status?.exitCode).toBeUndefined();

    // Let the launcher go on: nextflow runs and fails with code 3.
    const vm = await waitFor("the player booted the VM", async () => vms.player.played().find((v) => v.runUid === run.metadata.uid), 30_000, 100);
    writeFileSync(join(vm.root, "var", "lib", "vmforge", "go"), "");
    const done = await env.ended("spoof", vms.said);
    expect(done.status?.phase, done.status?.message).toBe("Failed");
    expect(done.status).toMatchObject({ reason: "PipelineFailed", exitCode: 3 });
    // The outcome came from the launcher's exit line: no exit status reached the work directory.
    const art = azureArtifactsPath(ce, done);
    const blobs = new BlobServiceClient(inject("azuriteBlobEndpoint"), new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY));
    expect(await blobs.getContainerClient(art.container).getBlobClient(`${art.path}/exit-status`).exists()).toBe(false);
    const rows = await logRows(run);
    expect(rows.filter(([s, l]) => s === "launcher" && (l ?? "").startsWith("VMFORGE_EXIT_CODE="))).toEqual([["launcher", "VMFORGE_EXIT_CODE=3"]]);
  }, 300_000);

  it("a Running Run whose VM keeps running after the launcher's exit line (its shutdown failed) ends with that exit code", async () => {
    // The player leaves this VM alone: the test speaks for its launcher.
    await env.kube.create(RunResource, env.runBody("noshutdown", CE));
    const up = await waitFor("Run noshutdown set up", async () => {
      const r = await env.getRun("noshutdown");
      return r?.status?.phase === "Launching" && r.status.reason === "SettingUp" ? r : undefined;
    }, 60_000, 250);
    await env.startPipeline(ce, up);
    await waitFor("Run noshutdown Running", async () => (await env.getRun("noshutdown"))?.status?.phase === "Running", 60_000, 250);
    await env.shipLines(ce, up, ["nextflow exited with code 0"], "launcher");
    await env.shipLines(ce, up, ["VMFORGE_EXIT_CODE=0"], "launcher");
    // `shutdown -h now` failed: the VM keeps running.
    expect((await env.vmOf(up))?.powerState).toBe("running");
    const done = await env.ended("noshutdown");
    expect(done.status).toMatchObject({ phase: "Succeeded", reason: "Succeeded", exitCode: 0 });
  }, 300_000);
});
