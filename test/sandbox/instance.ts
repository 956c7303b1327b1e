/**
 * Plays the EC2 instances the operator launches in moto (which never runs user data): for each new
 * vmforge instance it fetches the user data the operator rendered and runs that launcher with bash,
 * unprivileged, under a private root folder, with stand-ins for nextflow, Docker, the CloudWatch
 * agent, the AWS CLI and shutdown. The stand-ins ship logs to moto's CloudWatch Logs, upload the
 * exit status to moto's S3 and terminate the instance at shutdown — the same effects a real
 * machine has on the operator's view.
 */
import { gunzipSync } from "node:zlib";
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdirSync, copyFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DescribeInstanceAttributeCommand, DescribeInstancesCommand, EC2Client } from "@aws-sdk/client-ec2";
import type { Instance } from "@aws-sdk/client-ec2";
import { CloudWatchLogsClient } from "@aws-sdk/client-cloudwatch-logs";
import { shipLauncherLines } from "../harness/aws-launcher-log.js";

const STANDINS = fileURLToPath(new URL("./standins/", import.meta.url));
const REPO = fileURLToPath(new URL("../../", import.meta.url));

export interface InstancePlayerOptions {
  endpoint: string;
  region: string;
  dir: string;
  /** Exit code the stand-in nextflow ends with. */
  pipelineExitCode?: number;
  /** Per Run (by its vmforge.dev/run-name tag): the exit code, or undefined to leave the machine alone. */
  exitCodeFor?: (runName: string) => number | undefined;
  /**
   * For a machine left alone: still write the launcher's VMFORGE_PIPELINE_STARTED line to the
   * Run's log (what the agent would ship once the pipeline started), so the Run becomes Running
   * and stays so until the test ends it. Default false: a machine left alone says nothing.
   */
  startLeftAlone?: boolean;
  say: (line: string) => void;
}

export class InstancePlayer {
  private readonly ec2: EC2Client;
  private readonly logs: CloudWatchLogsClient;
  private readonly played = new Map<string, ChildProcess>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly o: InstancePlayerOptions) {
    this.ec2 = new EC2Client({ endpoint: o.endpoint, region: o.region, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });
    this.logs = new CloudWatchLogsClient({ endpoint: o.endpoint, region: o.region, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });
  }

  start(): void {
    const tick = (): void => {
      if (this.stopped) return;
      this.poll()
        .catch((e: unknown) => this.o.say(`instance player: ${e instanceof Error ? e.message : String(e)}`))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, 1000);
        });
    };
    tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    for (const p of this.played.values()) if (p.exitCode === null) p.kill("SIGTERM");
  }

  private async poll(): Promise<void> {
    const out = await this.ec2.send(new DescribeInstancesCommand({
      Filters: [
        { Name: "tag:vmforge.dev/managed-by", Values: ["vmforge"] },
        { Name: "instance-state-name", Values: ["pending", "running"] },
      ],
    }));
    for (const r of out.Reservations ?? []) {
      for (const inst of r.Instances ?? []) {
        const id = inst.InstanceId;
        if (!id || this.played.has(id)) continue;
        let exitCode = this.o.pipelineExitCode ?? 0;
        if (this.o.exitCodeFor) {
          const runName = inst.Tags?.find((t) => t.Key === "vmforge.dev/run-name")?.Value ?? "";
          const chosen = this.o.exitCodeFor(runName);
          if (chosen === undefined) {
            if (this.o.startLeftAlone && inst.State?.Name === "running") {
              await this.sayStarted(inst);
              this.played.set(id, spawn("true"));
            }
            continue;
          }
          exitCode = chosen;
        }
        const attr = await this.ec2.send(new DescribeInstanceAttributeCommand({ InstanceId: id, Attribute: "userData" }));
        const b64 = attr.UserData?.Value;
        if (!b64) {
          this.o.say(`instance ${id} has no user data; leaving it alone`);
          this.played.set(id, spawn("true"));
          continue;
        }
        // cloud-init runs gzip-compressed user data (the operator compresses large launchers).
        const bytes = Buffer.from(b64, "base64");
        const script = bytes[0] === 0x1f && bytes[1] === 0x8b ? gunzipSync(bytes) : bytes;
        this.played.set(id, this.boot(id, script.toString("utf8"), exitCode));
      }
    }
  }

  /** The launcher's start line, written to the Run's streams as the CloudWatch agent would ship it. */
  private async sayStarted(inst: Instance): Promise<void> {
    const tag = (k: string): string => inst.Tags?.find((t) => t.Key === k)?.Value ?? "";
    const group = tag("vmforge.dev/log-group");
    const run = { metadata: { namespace: tag("vmforge.dev/namespace"), name: tag("vmforge.dev/run-name"), uid: tag("vmforge.dev/run-uid") } } as Parameters<typeof shipLauncherLines>[2];
    await shipLauncherLines(this.logs, group, run, ["VMFORGE_PIPELINE_STARTED"]);
    this.o.say(`instance ${inst.InstanceId} left alone; its launcher said the pipeline started`);
  }

  private boot(id: string, userData: string, exitCode: number): ChildProcess {
    const root = join(this.o.dir, id);
    const state = join(root, "sandbox");
    const agentBin = join(root, "opt/aws/amazon-cloudwatch-agent/bin");
    mkdirSync(state, { recursive: true });
    mkdirSync(agentBin, { recursive: true });
    // The AMI ships the agent; put the stand-in where the launcher looks for it.
    copyFileSync(join(STANDINS, "amazon-cloudwatch-agent-ctl"), join(agentBin, "amazon-cloudwatch-agent-ctl"));
    chmodSync(join(agentBin, "amazon-cloudwatch-agent-ctl"), 0o755);
    this.o.say(`instance ${id} booting: running the launcher from its user data (${userData.length} bytes)`);
    const child = spawn("bash", ["-c", userData], {
      cwd: root,
      env: {
        PATH: `${STANDINS}:${join(REPO, "node_modules/.bin")}:/usr/bin:/bin`,
        HOME: root,
        VMFORGE_ROOT: root,
        VMFORGE_FLUSH_WAIT: "1",
        VMFORGE_STOP_GRACE: "5",
        VMFORGE_SANDBOX_REPO: REPO,
        VMFORGE_SANDBOX_STATE: state,
        VMFORGE_SANDBOX_ENDPOINT: this.o.endpoint,
        VMFORGE_SANDBOX_REGION: this.o.region,
        VMFORGE_SANDBOX_INSTANCE_ID: id,
        VMFORGE_SANDBOX_NXF_EXIT: String(exitCode),
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    child.stderr?.on("data", (d: Buffer) => this.o.say(`instance ${id}: ${d.toString().trimEnd()}`));
    child.on("exit", (code) => this.o.say(`instance ${id}: launcher exited with code ${code}`));
    return child;
  }
}
