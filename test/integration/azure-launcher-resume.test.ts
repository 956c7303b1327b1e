/**
 * The Azure launcher through the OPERATOR and the VM player (the emulator for tokens, ingestion
 * and VMs, Azurite for the work directory): a Run records its Nextflow session id in the work
 * directory; a later Run with spec.pipeline.resumeFrom reads it and runs `nextflow ... -resume
 * <that id>` (the stand-in nextflow writes the arguments it got into the uploaded nextflow.log);
 * a Run resuming one that never ran fails at the set-up step with reason BootstrapFailed, read
 * from the uploaded exit status.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inject } from "vitest";
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { azureArtifactsPath, azureSessionUri } from "../../src/cloud/azure/launcher.js";
import { waitFor } from "../support/operator.js";
import { azureCaPath, azureControl } from "../harness/helpers.js";
import { AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY } from "../harness/azurite.js";
import { ceBody, waitReady } from "../support/azure-env.js";
import { setupAzureRuns, type AzureRunsEnv } from "../support/azure-runs.js";
import { AzureVmPlayer } from "../sandbox/azure/vm-player.js";

let env: AzureRunsEnv;
let ce: ComputeEnvironment;
let player: AzureVmPlayer;
let dir = "";
const said: string[] = [];
const CE = "resume";

beforeAll(async () => {
  env = await setupAzureRuns({ prefix: "azresume", principal: "vmforge-resume", blob: true });
  await env.start(undefined, [env.ns]);
  await env.kube.create(ComputeEnvironmentResource, ceBody(env.ns, CE, { storageAccount: env.storageAccount }));
  ce = await waitReady(env.kube, env.ns, CE);
  dir = mkdtempSync(join(tmpdir(), "vmforge-azresume-"));
  // The launcher's curl trusts the emulator's CA and Azurite's (one bundle), nothing else.
  const bundle = join(dir, "ca.pem");
  writeFileSync(bundle, `${readFileSync(azureCaPath(), "utf8")}\n${readFileSync(inject("azuriteCaPath"), "utf8")}`);
  player = new AzureVmPlayer({ control: azureControl(), caPath: bundle, dir: join(dir, "vms"), pollMs: 200, say: (l) => said.push(l) });
  player.start();
}, 120_000);

afterAll(async () => {
  await player?.stop();
  await env?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function blobs(): BlobServiceClient {
  return new BlobServiceClient(inject("azuriteBlobEndpoint"), new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY));
}

async function readBlob(azUri: string): Promise<string> {
  const m = /^az:\/\/([^/]+)\/(.+)$/.exec(azUri)!;
  return (await blobs().getContainerClient(m[1]!).getBlobClient(m[2]!).downloadToBuffer()).toString("utf8");
}

async function ended(name: string): Promise<Run> {
  return waitFor(`Run ${name} ended`, async () => {
    const r = await env.getRun(name);
    if (r?.status?.phase === "Succeeded" || r?.status?.phase === "Failed") return r;
    throw new Error(`${r?.status?.phase ?? "-"}/${r?.status?.reason ?? "-"}: ${r?.status?.message ?? ""}\n${said.slice(-5).join("\n")}`);
  }, 180_000, 500);
}

describe("Azure launcher: resumeFrom through the operator and the VM player", () => {
  it("a later Run resumes the session the earlier one recorded; resuming a Run that never ran is BootstrapFailed", async () => {
    await env.kube.create(RunResource, env.runBody("first", CE));
    const first = await ended("first");
    expect(first.status?.phase, first.status?.message).toBe("Succeeded");
    const session = (await readBlob(azureSessionUri(ce, env.ns, "first"))).trim();
    expect(session).toMatch(/^[0-9a-f-]{36}$/);

    await env.kube.create(RunResource, env.runBody("second", CE, { pipeline: { repository: "https://github.com/nextflow-io/hello", resume: true, resumeFrom: "first" } }));
    const second = await ended("second");
    expect(second.status?.phase, second.status?.message).toBe("Succeeded");
    const art = azureArtifactsPath(ce, second);
    const nxfLog = (await blobs().getContainerClient(art.container).getBlobClient(`${art.path}/nextflow.log`).downloadToBuffer()).toString("utf8");
    const invoked = /invoked as: nextflow (.*)/.exec(nxfLog)?.[1] ?? "";
    expect(invoked).toContain(`-resume ${session}`);
    expect(invoked.split(" ").filter((a) => a === "-resume")).toHaveLength(1);
    // The resumed run continues that session: the same id is recorded for "second".
    expect((await readBlob(azureSessionUri(ce, env.ns, "second"))).trim()).toBe(session);

    await env.kube.create(RunResource, env.runBody("third", CE, { pipeline: { repository: "https://github.com/nextflow-io/hello", resumeFrom: "never-ran" } }));
    const third = await ended("third");
    expect(third.status?.phase).toBe("Failed");
    expect(third.status?.reason, third.status?.message).toBe("BootstrapFailed");
    expect(third.status?.message).toContain('step "resume-session"');
    const art3 = azureArtifactsPath(ce, third);
    const status = (await blobs().getContainerClient(art3.container).getBlobClient(`${art3.path}/exit-status`).downloadToBuffer()).toString("utf8");
    expect(status).toMatch(/^\d+\nbootstrap-failed=resume-session\n$/);
  }, 600_000);
});
