/**
 * What the sandbox's stand-ins do when they must talk to the emulated AWS (moto): upload to S3,
 * ship log files to CloudWatch Logs like the CloudWatch agent, and terminate the instance on
 * shutdown. Settings come from the environment the sandbox gives the "instance":
 *   VMFORGE_SANDBOX_ENDPOINT, VMFORGE_SANDBOX_REGION, VMFORGE_SANDBOX_INSTANCE_ID, VMFORGE_SANDBOX_STATE
 */
import { readFileSync, existsSync, statSync, openSync, readSync, closeSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { S3Client, PutObjectCommand } from "@aws-sdk/client-s3";
import { CloudWatchLogsClient, CreateLogGroupCommand, CreateLogStreamCommand, PutLogEventsCommand, PutRetentionPolicyCommand } from "@aws-sdk/client-cloudwatch-logs";
import { EC2Client, TerminateInstancesCommand } from "@aws-sdk/client-ec2";

const endpoint = process.env.VMFORGE_SANDBOX_ENDPOINT ?? "";
const region = process.env.VMFORGE_SANDBOX_REGION ?? "us-east-1";
const state = process.env.VMFORGE_SANDBOX_STATE ?? "";
const cfg = { endpoint, region, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } };

async function s3cp(args: string[]): Promise<number> {
  const files = args.filter((a) => !a.startsWith("--"));
  const [src, dst] = files;
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(dst ?? "");
  if (!src || !m) {
    console.error(`aws (sandbox): unsupported s3 cp arguments: ${args.join(" ")}`);
    return 2;
  }
  await new S3Client({ ...cfg, forcePathStyle: true }).send(new PutObjectCommand({ Bucket: m[1], Key: m[2], Body: readFileSync(src) }));
  return 0;
}

interface CollectEntry { file_path: string; log_group_name: string; log_stream_name: string; retention_in_days?: number }

/** Tails the files of a CloudWatch agent config and ships new lines until the stop file appears. */
async function agent(configPath: string): Promise<number> {
  const conf = JSON.parse(readFileSync(configPath, "utf8")) as { logs?: { logs_collected?: { files?: { collect_list?: CollectEntry[] } } } };
  const entries = conf.logs?.logs_collected?.files?.collect_list ?? [];
  const logs = new CloudWatchLogsClient(cfg);
  const offsets = new Map<string, number>();
  const partial = new Map<string, string>();
  const created = new Set<string>();
  const stopFile = join(state, "agent.stop");
  const ship = async (): Promise<void> => {
    for (const e of entries) {
      if (!existsSync(e.file_path)) continue;
      const size = statSync(e.file_path).size;
      const from = offsets.get(e.file_path) ?? 0;
      if (size <= from) continue;
      const fd = openSync(e.file_path, "r");
      const buf = Buffer.alloc(size - from);
      readSync(fd, buf, 0, buf.length, from);
      closeSync(fd);
      offsets.set(e.file_path, size);
      const text = (partial.get(e.file_path) ?? "") + buf.toString("utf8");
      const lines = text.split("\n");
      partial.set(e.file_path, lines.pop() ?? "");
      if (lines.length === 0) continue;
      const key = `${e.log_group_name}\0${e.log_stream_name}`;
      if (!created.has(key)) {
        await logs.send(new CreateLogGroupCommand({ logGroupName: e.log_group_name })).catch(() => undefined);
        await logs.send(new CreateLogStreamCommand({ logGroupName: e.log_group_name, logStreamName: e.log_stream_name })).catch(() => undefined);
        // Like the real agent: with retention_in_days it sets the group's retention, new group or not.
        if (e.retention_in_days !== undefined) {
          await logs.send(new PutRetentionPolicyCommand({ logGroupName: e.log_group_name, retentionInDays: e.retention_in_days }))
            .catch((err: unknown) => console.error(`agent (sandbox): PutRetentionPolicy: ${String(err)}`));
        }
        created.add(key);
      }
      const now = Date.now();
      await logs.send(new PutLogEventsCommand({
        logGroupName: e.log_group_name, logStreamName: e.log_stream_name,
        logEvents: lines.map((message, i) => ({ message: message || " ", timestamp: now + i })),
      }));
    }
  };
  for (;;) {
    await ship().catch((err: unknown) => console.error(`agent (sandbox): ${String(err)}`));
    if (existsSync(stopFile)) {
      await ship().catch(() => undefined);
      writeFileSync(join(state, "agent.done"), "");
      return 0;
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function terminate(): Promise<number> {
  const id = process.env.VMFORGE_SANDBOX_INSTANCE_ID ?? "";
  // Let the agent ship the last lines, as the real machine's shutdown would.
  writeFileSync(join(state, "agent.stop"), "");
  for (let i = 0; i < 50 && !existsSync(join(state, "agent.done")); i++) await new Promise((r) => setTimeout(r, 100));
  await new EC2Client(cfg).send(new TerminateInstancesCommand({ InstanceIds: [id] }));
  return 0;
}

const [cmd, ...rest] = process.argv.slice(2);
const run = cmd === "s3-cp" ? s3cp(rest) : cmd === "agent" ? agent(rest[0] ?? "") : cmd === "terminate" ? terminate() : Promise.resolve(2);
run.then((code) => process.exit(code), (e: unknown) => {
  console.error(`sandbox tool ${cmd}: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
