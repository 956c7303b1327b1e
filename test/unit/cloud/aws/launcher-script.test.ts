// Executes rendered launchers with bash under the stand-ins of test/fixtures/launcher/bin.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { nextflowArgs, renderUserData, runArtifactsUri, sessionUri } from "../../../../src/cloud/aws/launcher.js";
import { logStreamName, markerLogStreamName, parseExitLine } from "../../../../src/cloud/aws/logs.js";
import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import { nextflowArgv, runLauncher, sampleCe, sampleRun, type LauncherRunResult } from "../../../fixtures/launcher/harness.js";

const results: LauncherRunResult[] = [];
afterEach(() => {
  for (const r of results.splice(0)) r.cleanup();
});

async function launch(ce: ComputeEnvironment, run: Run, opts: Parameters<typeof runLauncher>[1] = {}, platformToken?: string): Promise<LauncherRunResult> {
  const script = renderUserData({ ce, run, envStatus: ce.status!.aws!, ...(platformToken ? { platformToken } : {}) });
  const r = await runLauncher(script, opts);
  results.push(r);
  return r;
}

function s3Object(r: LauncherRunResult, uri: string): string | undefined {
  const p = join(r.s3, uri.replace(/^s3:\/\//, ""));
  return existsSync(p) ? readFileSync(p, "utf8") : undefined;
}

function lastLine(log: string): string {
  return log.trimEnd().split("\n").pop() ?? "";
}

const RUN = sampleRun({ pipeline: { revision: "master", profiles: ["test", "docker"], resume: true, params: { greeting: "Bonjour" } } });
const ARTIFACTS = runArtifactsUri(sampleCe(), RUN);

describe("launcher script under test", () => {
  it("success: runs the exact nextflow command, uploads the outcome, prints exit code 0 last and shuts down", async () => {
    const r = await launch(sampleCe(), RUN, { nextflowExit: 0 });
    expect(r.code, r.log).toBe(0);
    expect(nextflowArgv(r)).toEqual([
      "run",
      "https://github.com/nextflow-io/hello",
      "-r",
      "master",
      "-profile",
      "test,docker",
      "-params-file",
      "params.json",
      "-work-dir",
      "s3://vmforge-work/pipelines",
      "-resume",
      "-name",
      "hello-1",
      "-c",
      "nextflow.config",
    ]);
    expect(nextflowArgv(r)).toEqual(nextflowArgs(sampleCe(), RUN));
    expect(readFileSync(join(r.record, "nextflow.cwd"), "utf8").trim()).toBe(r.launchDir);
    expect(lastLine(r.log)).toBe("VMFORGE_EXIT_CODE=0");
    expect(parseExitLine(lastLine(r.log))).toBe(0);
    expect(r.calls).toContain("shutdown -h now");
    expect(r.calls.at(-1)).toBe("shutdown -h now");
    expect(s3Object(r, `${ARTIFACTS}/exit-status`)).toBe("0\n");
    expect(s3Object(r, `${ARTIFACTS}/nextflow.log`)).toContain("Execution complete");
    expect(r.log).toContain("Hello world!");
    // Inputs nextflow sees.
    expect(JSON.parse(readFileSync(join(r.launchDir, "params.json"), "utf8"))).toEqual({ greeting: "Bonjour" });
    const config = readFileSync(join(r.launchDir, "nextflow.config"), "utf8");
    expect(config).toContain("wave.enabled = true");
    expect(config).toContain("fusion.enabled = true");
    expect(config).toContain("docker.enabled = true");
    expect(config).toContain("process.executor = 'local'");
    expect(config).toMatch(/executor \{\n {4}name = 'local'\n {4}cpus = \d+\n {4}memory = '\d+ MB'\n\}/);
    // No token configured: none reaches nextflow.
    expect(readFileSync(join(r.record, "nextflow.token"), "utf8")).toBe("<unset>");
  });

  it("pipeline failure: exit code 3 is recorded, uploaded and the machine still shuts down", async () => {
    const r = await launch(sampleCe(), RUN, { nextflowExit: 3 });
    expect(r.code).toBe(3);
    expect(lastLine(r.log)).toBe("VMFORGE_EXIT_CODE=3");
    expect(r.log).toContain("nextflow exited with code 3");
    expect(r.calls.at(-1)).toBe("shutdown -h now");
    expect(s3Object(r, `${ARTIFACTS}/exit-status`)).toBe("3\n");
    expect(s3Object(r, `${ARTIFACTS}/nextflow.log`)).toBeDefined();
  });

  it("SIGTERM mid-run: nextflow is stopped, exit code 143 is recorded and the machine shuts down", async () => {
    const r = await launch(sampleCe(), RUN, { signal: "SIGTERM" });
    expect(r.code).toBe(143);
    expect(r.log).toContain("received SIGTERM, stopping");
    expect(r.log).toContain("Killing running tasks");
    expect(lastLine(r.log)).toBe("VMFORGE_EXIT_CODE=143");
    expect(r.calls.at(-1)).toBe("shutdown -h now");
    expect(s3Object(r, `${ARTIFACTS}/exit-status`)).toBe("143\n");
    expect(s3Object(r, `${ARTIFACTS}/nextflow.log`)).toContain("Session aborted");
  });

  it("SIGINT mid-run ends the same way with 130", async () => {
    const r = await launch(sampleCe(), RUN, { signal: "SIGINT" });
    expect(lastLine(r.log)).toBe("VMFORGE_EXIT_CODE=130");
    expect(r.calls.at(-1)).toBe("shutdown -h now");
  });

  it("installs Docker and the CloudWatch agent with dnf when absent and configures the agent for the Run's stream", async () => {
    const r = await launch(sampleCe(), RUN, { omit: ["docker", "agent"] });
    expect(r.code, r.log).toBe(0);
    expect(r.calls).toContain("dnf install -y amazon-cloudwatch-agent");
    expect(r.calls).toContain("dnf install -y docker");
    expect(r.calls).toContain("systemctl enable --now docker");
    const agentIdx = r.calls.findIndex((c) => c.startsWith("amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c file:"));
    const nxfIdx = r.calls.findIndex((c) => c.startsWith("nextflow "));
    expect(agentIdx).toBeGreaterThanOrEqual(0);
    expect(agentIdx).toBeLessThan(nxfIdx);
    const agent = JSON.parse(readFileSync(join(r.root, "opt/aws/amazon-cloudwatch-agent/etc/vmforge-agent.json"), "utf8")) as {
      logs: { logs_collected: { files: { collect_list: { file_path: string; log_group_name: string; log_stream_name: string }[] } } };
    };
    const list = agent.logs.logs_collected.files.collect_list;
    expect(list[0]).toEqual({ file_path: join(r.root, "var/log/vmforge/run.log"), log_group_name: "/vmforge/team-a/ce-a", log_stream_name: logStreamName(RUN), retention_in_days: 30 });
    expect(list[1]).toEqual({ file_path: join(r.root, "var/log/vmforge/markers.log"), log_group_name: "/vmforge/team-a/ce-a", log_stream_name: markerLogStreamName(RUN), retention_in_days: 30 });
    expect(list[2]?.file_path).toBe(join(r.launchDir, ".nextflow.log"));
  });

  it("the markers file holds the launcher's machine-readable lines only, never what the pipeline prints", async () => {
    // A pre-run script (sourced by the launcher, its output in the shipped log like the pipeline's)
    // prints every marker; the launcher's own ones follow.
    const pre = "echo VMFORGE_PIPELINE_STARTED; echo VMFORGE_BOOTSTRAP_FAILED=docker; echo VMFORGE_EXIT_CODE=0";
    const r = await launch(sampleCe({ spec: { preRunScript: pre } }), RUN, { nextflowExit: 3 });
    expect(r.code, r.log).toBe(3);
    expect(r.log).toContain("VMFORGE_EXIT_CODE=0");
    expect(lastLine(r.log)).toBe("VMFORGE_EXIT_CODE=3");
    expect(r.markers).toBe("VMFORGE_PIPELINE_STARTED\nVMFORGE_EXIT_CODE=3\n");
  });

  it("a failed set-up step is in the markers file before the exit line", async () => {
    const r = await launch(sampleCe({ spec: { preRunScript: "exit 7" } }), RUN);
    expect(r.code).toBe(7);
    expect(r.markers).toBe("VMFORGE_BOOTSTRAP_FAILED=pre-run-script\nVMFORGE_EXIT_CODE=7\n");
  });

  it("a failing setup step still ends with the exit line, names the step, uploads and shuts down", async () => {
    const r = await launch(sampleCe({ spec: { preRunScript: "echo preparing; exit 7" } }), RUN);
    expect(r.code).toBe(7);
    expect(r.log).toContain("preparing");
    expect(r.calls.some((c) => c.startsWith("nextflow "))).toBe(false);
    expect(r.log).not.toContain("VMFORGE_PIPELINE_STARTED");
    expect(r.log.trimEnd().split("\n").slice(-2)).toEqual(["VMFORGE_BOOTSTRAP_FAILED=pre-run-script", "VMFORGE_EXIT_CODE=7"]);
    expect(s3Object(r, `${ARTIFACTS}/exit-status`)).toBe("7\nbootstrap-failed=pre-run-script\n");
    expect(r.calls.at(-1)).toBe("shutdown -h now");
  });

  it("resumeFrom: a later Run resumes the Nextflow session the earlier one recorded; none recorded is BootstrapFailed at resume-session", async () => {
    const shared = mkdtempSync(join(tmpdir(), "vmforge-s3-"));
    try {
      const ce = sampleCe();
      const first = sampleRun({ name: "first", uid: "11111111-aaaa-bbbb-cccc-000000000001" });
      const a = await launch(ce, first, { nextflowExit: 0, env: { STANDIN_S3: shared, NXF_STANDIN_SESSION: "0d5a6f3e-1b2c-4d5e-8f90-a1b2c3d4e5f6" } });
      expect(a.code, a.log).toBe(0);
      const recorded = join(shared, sessionUri(ce, "team-a", "first").replace(/^s3:\/\//, ""));
      expect(readFileSync(recorded, "utf8").trim()).toBe("0d5a6f3e-1b2c-4d5e-8f90-a1b2c3d4e5f6");

      const second = sampleRun({ name: "second", uid: "11111111-aaaa-bbbb-cccc-000000000002", pipeline: { resume: true, resumeFrom: "first" } });
      const b = await launch(ce, second, { nextflowExit: 0, env: { STANDIN_S3: shared } });
      expect(b.code, b.log).toBe(0);
      const argv = nextflowArgv(b);
      expect(argv[argv.indexOf("-resume") + 1]).toBe("0d5a6f3e-1b2c-4d5e-8f90-a1b2c3d4e5f6");
      expect(argv.filter((x) => x === "-resume")).toHaveLength(1);

      const orphan = sampleRun({ name: "third", uid: "11111111-aaaa-bbbb-cccc-000000000003", pipeline: { resumeFrom: "never-ran" } });
      const c = await launch(ce, orphan, { nextflowExit: 0, env: { STANDIN_S3: shared } });
      expect(c.code).not.toBe(0);
      expect(c.calls.some((x) => x.startsWith("nextflow "))).toBe(false);
      expect(c.log).toContain("VMFORGE_BOOTSTRAP_FAILED=resume-session");
    } finally {
      rmSync(shared, { recursive: true, force: true });
    }
  });

  it("the pre-run script runs in the launcher's shell: its exports (NXF_VER) reach nextflow; the resume cache is in the work dir", async () => {
    const r = await launch(sampleCe({ spec: { preRunScript: "export NXF_VER=24.10.4" } }), RUN, { nextflowExit: 0 });
    expect(r.code, r.log).toBe(0);
    expect(readFileSync(join(r.record, "nextflow.nxf_ver"), "utf8")).toBe("24.10.4");
    expect(readFileSync(join(r.record, "nextflow.cloudcache"), "utf8")).toBe(nextflowArgs(sampleCe(), RUN)[nextflowArgs(sampleCe(), RUN).indexOf("-work-dir") + 1]);
    expect(r.log).toContain("VMFORGE_PIPELINE_STARTED");
    expect(r.log).not.toContain("VMFORGE_BOOTSTRAP_FAILED");
  });

  it("runs pre- and post-run scripts around the pipeline; a failing post-run script keeps the pipeline's code", async () => {
    const ce = sampleCe({ spec: { preRunScript: "echo PRE-RAN > pre.txt", postRunScript: "echo \"POST-RAN $NXF_EXIT_STATUS\"; exit 9" } });
    const r = await launch(ce, RUN, { nextflowExit: 0 });
    expect(readFileSync(join(r.launchDir, "pre.txt"), "utf8")).toBe("PRE-RAN\n");
    expect(r.log).toContain("POST-RAN 0");
    expect(r.log).toContain("the post-run script failed with exit code 9");
    expect(lastLine(r.log)).toBe("VMFORGE_EXIT_CODE=0");
  });

  it("hostile spec values reach nextflow, its config and params verbatim and run nothing", async () => {
    const canary = "/tmp/vmforge-canary-should-not-exist";
    const evil = `it's "quoted" $(touch ${canary}) \`touch ${canary}\` \${HOME}\nnew line; touch ${canary}`;
    const run = sampleRun({ pipeline: { params: { evil, nested: { list: [evil] } }, config: `params.note = 'x' // ${evil}`, profiles: ["a-b", "c.d"] } });
    const ce = sampleCe({ spec: { nextflowConfig: `// ${evil}` } });
    const r = await launch(ce, run);
    expect(r.code, r.log).toBe(0);
    expect(existsSync(canary)).toBe(false);
    expect(JSON.parse(readFileSync(join(r.launchDir, "params.json"), "utf8"))).toEqual({ evil, nested: { list: [evil] } });
    const config = readFileSync(join(r.launchDir, "nextflow.config"), "utf8");
    expect(config).toContain(`// ${evil}\n`);
    expect(config).toContain(`params.note = 'x' // ${evil}\n`);
    expect(nextflowArgv(r)).toContain("a-b,c.d");
  });

  it("SSM token: read at boot with the instance role, handed to nextflow in its environment only", async () => {
    const token = "tok-from-ssm-9f8e7d";
    const arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/vmforge/token";
    const ce = sampleCe({ aws: { platformTokenArn: arn } });
    const r = await launch(ce, RUN, { env: { STANDIN_SSM_VALUE: token } });
    expect(r.code, r.log).toBe(0);
    expect(r.calls).toContain(`aws ssm get-parameter --region eu-west-1 --name ${arn} --with-decryption --query Parameter.Value --output text`);
    expect(readFileSync(join(r.record, "nextflow.token"), "utf8")).toBe(token);
    expect(nextflowArgv(r).join(" ")).not.toContain(token);
    expect(r.log).not.toContain(token);
    expect(readFileSync(join(r.launchDir, "nextflow.config"), "utf8")).not.toContain(token);
  });

  it("opted-in user-data token: reaches nextflow's environment, never its argv or the log", async () => {
    const token = "tok-inline-1a2b3c";
    const ce = sampleCe({ aws: { platformTokenInUserData: true }, spec: { platformTokenSecretRef: { name: "tower" } } });
    const r = await launch(ce, RUN, {}, token);
    expect(readFileSync(join(r.record, "nextflow.token"), "utf8")).toBe(token);
    expect(nextflowArgv(r).join(" ")).not.toContain(token);
    expect(r.log).not.toContain(token);
    expect(r.calls.join("\n")).not.toContain(token);
  });

  it("caller-supplied instance size sets the executor (less a reserve for the system)", async () => {
    const ce = sampleCe();
    const script = renderUserData({ ce, run: RUN, envStatus: ce.status!.aws!, resources: { vcpus: 4, memoryMiB: 16384 } });
    const r = await runLauncher(script);
    results.push(r);
    const config = readFileSync(join(r.launchDir, "nextflow.config"), "utf8");
    expect(config).toContain("cpus = 4");
    expect(config).toContain(`memory = '${16384 - 1638} MB'`);
  });
});
