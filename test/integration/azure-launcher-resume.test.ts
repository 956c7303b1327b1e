/**
 * The Azure launcher through the OPERATOR and the VM player (the emulator for tokens, ingestion
 * and VMs, Azurite for the work directory): a Run records its Nextflow session id in the work
 * directory; a later Run with spec.pipeline.resumeFrom reads it and runs `nextflow ... -resume
 * <that id>` (the stand-in nextflow writes the arguments it got into the uploaded nextflow.log);
 * a Run resuming one that never ran fails at the set-up step with reason BootstrapFailed, read
 * from the uploaded exit status.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { azureSessionUri } from "../../src/cloud/azure/launcher.js";
import { setupAzureRunsWithCe, type AzureRunsEnv } from "../support/azure-runs.js";
import { startVmPlayer, type PlayingVms } from "../support/azure-player.js";

let env: AzureRunsEnv;
let ce: ComputeEnvironment;
let vms: PlayingVms;
const CE = "resume";

beforeAll(async () => {
  ({ env, ce } = await setupAzureRunsWithCe({ prefix: "azresume", principal: "vmforge-resume", blob: true, ce: CE }));
  vms = startVmPlayer("azresume");
}, 120_000);

afterAll(async () => {
  await vms?.stop();
  await env?.stop();
});

const ended = (name: string): Promise<Run> => env.ended(name, vms.said);

describe("Azure launcher: resumeFrom through the operator and the VM player", () => {
  it("a later Run resumes the session the earlier one recorded; resuming a Run that never ran is BootstrapFailed", async () => {
    await env.kube.create(RunResource, env.runBody("first", CE));
    const first = await ended("first");
    expect(first.status?.phase, first.status?.message).toBe("Succeeded");
    const session = (await env.readWork(azureSessionUri(ce, env.ns, "first"))).trim();
    expect(session).toMatch(/^[0-9a-f-]{36}$/);

    await env.kube.create(RunResource, env.runBody("second", CE, { pipeline: { repository: "https://github.com/nextflow-io/hello", resume: true, resumeFrom: "first" } }));
    const second = await ended("second");
    expect(second.status?.phase, second.status?.message).toBe("Succeeded");
    const nxfLog = await env.uploaded(ce, second, "nextflow.log");
    const invoked = /invoked as: nextflow (.*)/.exec(nxfLog)?.[1] ?? "";
    expect(invoked).toContain(`-resume ${session}`);
    expect(invoked.split(" ").filter((a) => a === "-resume")).toHaveLength(1);
    // The resumed run continues that session: the same id is recorded for "second".
    expect((await env.readWork(azureSessionUri(ce, env.ns, "second"))).trim()).toBe(session);

    await env.kube.create(RunResource, env.runBody("third", CE, { pipeline: { repository: "https://github.com/nextflow-io/hello", resumeFrom: "never-ran" } }));
    const third = await ended("third");
    expect(third.status?.phase).toBe("Failed");
    expect(third.status?.reason, third.status?.message).toBe("BootstrapFailed");
    expect(third.status?.message).toContain('step "resume-session"');
    const status = await env.uploaded(ce, third, "exit-status");
    expect(status).toMatch(/^\d+\nbootstrap-failed=resume-session\n$/);
  }, 600_000);
});
