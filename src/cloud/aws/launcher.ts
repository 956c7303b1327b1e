/**
 * The launcher: the bash script an EC2 instance runs as user data to execute one Run.
 *
 * The launcher is the core every cloud shares (src/cloud/launcher/core.sh) with the AWS part
 * (launcher.sh here: the CloudWatch agent, `aws s3 cp`, the SSM / Secrets Manager token; mirrored
 * into launcher-script.ts so the compiled operator needs no file next to it); this module renders
 * it with the per-Run settings. Every value from a spec goes through shellQuote, so no spec value
 * is ever parsed as shell code.
 *
 * ## The Seqera Platform access token (Wave / Fusion)
 *
 * User data is not a secret store: anyone allowed ec2:DescribeInstanceAttribute (for example the
 * AWS-managed ReadOnlyAccess policy) and every process on the instance that can reach the
 * instance metadata service can read it, for as long as the instance exists. The operator holds
 * only the seed's permissions (seed 002): s3:GetObject but not s3:PutObject, no SSM or Secrets
 * Manager, no KMS. So the operator has NO place to put a secret that only the instance can read.
 * What it can do is let the instance read a secret that the user stored in AWS, with the
 * instance's own role. Hence, in order of preference:
 *
 * 1. `spec.aws.platformTokenArn` naming an SSM Parameter Store parameter (SecureString) or a
 *    Secrets Manager secret (plain string). The launcher reads it at boot with the instance role
 *    (`aws ssm get-parameter --with-decryption` / `aws secretsmanager get-secret-value`); user
 *    data carries only the ARN. The instance role needs read access to that one ARN:
 *    {@link platformTokenReadStatement} gives the statement the operator adds to the
 *    TowerForge-* role's inline policy.
 * 2. `spec.platformTokenSecretRef` (a Kubernetes Secret) together with the explicit opt-in
 *    `spec.aws.platformTokenInUserData: true`: the token is embedded in user data. It never
 *    appears on a command line or in the log, but it IS readable by the principals described
 *    above. Without the opt-in, a CE with platformTokenSecretRef and no ARN makes the launch fail
 *    with a Terminal error that explains both options: vmforge never widens the token's exposure
 *    silently. Admission (CEL) already refuses the opt-in without platformTokenSecretRef and the
 *    opt-in together with an ARN.
 * 3. Neither: the pipeline runs without a token (Wave's anonymous limits apply).
 */
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import type { ComputeEnvironment, ComputeEnvironmentStatus, Run } from "../../api/types.js";
import { DEFAULT_AWS_GRAVITON_INSTANCE_TYPE, DEFAULT_AWS_INSTANCE_TYPE, DEFAULT_LOG_RETENTION_DAYS } from "../../api/types.js";
import { CloudError } from "../provider.js";
import { coreSettings, groovyString, nextflowArgsFor, renderLauncher } from "../launcher/render.js";
import { AWS_LAUNCHER_PART } from "./launcher-script.js";
import { logGroupName, logStreamName, markerLogStreamName, nextflowLogStreamName } from "./logs.js";
import { parseS3Url, type PolicyStatement } from "./policy.js";

/** EC2 accepts at most 16 KiB of user data before base64 encoding. */
export const USER_DATA_LIMIT_BYTES = 16 * 1024;

export type AwsEnvStatus = NonNullable<ComputeEnvironmentStatus["aws"]>;

export { groovyString, nextflowRunName, shellQuote } from "../launcher/render.js";

/** The CE's work directory without a trailing slash; Terminal when it is not s3://bucket[/path]. */
export function ceWorkDir(ce: ComputeEnvironment): string {
  const wd = ce.spec.aws?.workDir;
  if (!wd || !parseS3Url(wd)) {
    throw CloudError.terminal("InvalidWorkDir", `spec.aws.workDir must be s3://bucket[/path], got ${JSON.stringify(wd ?? "")}`);
  }
  return wd.replace(/\/+$/, "");
}

/** The Run's Nextflow work directory: spec.pipeline.workDir, else the CE's. */
export function runWorkDir(ce: ComputeEnvironment, run: Run): string {
  const wd = run.spec.pipeline.workDir;
  if (wd === undefined) return ceWorkDir(ce);
  if (!parseS3Url(wd)) {
    throw CloudError.terminal("InvalidWorkDir", `spec.pipeline.workDir must be s3://bucket[/path] on AWS, got ${JSON.stringify(wd)}`);
  }
  return wd.replace(/\/+$/, "");
}

/**
 * Where the launcher uploads `nextflow.log`, `launcher.log` and `exit-status`: always below the
 * CE's work directory (the place the operator's s3:GetObject is scoped to), one folder per Run UID.
 */
export function runArtifactsUri(ce: ComputeEnvironment, run: Run): string {
  return `${ceWorkDir(ce)}/.vmforge/runs/${run.metadata.uid ?? "nouid"}`;
}

/**
 * Where the launcher records the Nextflow session of a Run, by namespace and Run name (the latest
 * Run of that name wins), so spec.pipeline.resumeFrom can name it.
 */
export function sessionUri(ce: ComputeEnvironment, namespace: string, runName: string): string {
  return `${ceWorkDir(ce)}/.vmforge/sessions/${namespace}/${runName}`;
}

/** Splits an s3:// URI into bucket and key. */
export function s3Location(uri: string): { bucket: string; key: string } | undefined {
  const p = parseS3Url(uri);
  if (!p) return undefined;
  return { bucket: p.bucket, key: p.prefix };
}

/** The instance type a Run uses: its override, the CE's resolved type, its spec, then the default. */
export function runInstanceType(ce: ComputeEnvironment, run: Run): string {
  return (
    run.spec.overrides?.instanceType ??
    ce.status?.aws?.instanceType ??
    ce.spec.aws?.instanceType ??
    (ce.spec.aws?.graviton ? DEFAULT_AWS_GRAVITON_INSTANCE_TYPE : DEFAULT_AWS_INSTANCE_TYPE)
  );
}

/** The argument vector after `nextflow`. */
export function nextflowArgs(ce: ComputeEnvironment, run: Run): string[] {
  return nextflowArgsFor(run, runWorkDir(ce, run));
}

/** The vmforge part of nextflow.config (the executor block is added on the instance). */
export function baseNextflowConfig(ce: ComputeEnvironment, run: Run): string {
  const wave = ce.spec.wave ?? true;
  const fusion = ce.spec.fusion ?? true;
  const region = ce.spec.aws?.region ?? "";
  return [
    `// Generated by vmforge for Run ${run.metadata.namespace}/${run.metadata.name} (${run.metadata.uid}).`,
    "process.executor = 'local'",
    "docker.enabled = true",
    `wave.enabled = ${wave}`,
    `fusion.enabled = ${fusion}`,
    `aws.region = ${groovyString(region)}`,
  ].join("\n");
}

/** Configuration of the CloudWatch agent; @LOG_DIR@ and @LAUNCH_DIR@ are filled in on the instance. */
export function agentConfig(ce: ComputeEnvironment, run: Run): string {
  const group = logGroupName(ce);
  // The agent creates the group and sets (or updates) its retention: the operator's seed policy
  // cannot (logs:PutRetentionPolicy is the instance role's, see iam.ts).
  const retention_in_days = ce.spec.logRetentionDays ?? DEFAULT_LOG_RETENTION_DAYS;
  return JSON.stringify({
    agent: { run_as_user: "root" },
    logs: {
      force_flush_interval: 5,
      logs_collected: {
        files: {
          collect_list: [
            { file_path: "@LOG_DIR@/run.log", log_group_name: group, log_stream_name: logStreamName(run), retention_in_days },
            { file_path: "@LOG_DIR@/markers.log", log_group_name: group, log_stream_name: markerLogStreamName(run), retention_in_days },
            { file_path: "@LAUNCH_DIR@/.nextflow.log", log_group_name: group, log_stream_name: nextflowLogStreamName(run), retention_in_days },
          ],
        },
      },
    },
  });
}

export type PlatformTokenSource =
  | { kind: "none" }
  | { kind: "ssm" | "secretsmanager"; arn: string; region: string }
  | { kind: "user-data"; token: string };

const SSM_ARN = /^arn:(aws[a-z-]*):ssm:([a-z0-9-]+):(\d{12}):parameter\/.+$/;
const SECRETS_ARN = /^arn:(aws[a-z-]*):secretsmanager:([a-z0-9-]+):(\d{12}):secret:.+$/;

/**
 * Decides how the Platform token reaches the instance (see the module comment).
 * `platformToken` is the value resolved from spec.platformTokenSecretRef, when the caller has it.
 */
export function platformTokenSource(ce: ComputeEnvironment, platformToken?: string): PlatformTokenSource {
  const aws = ce.spec.aws;
  const arn = aws?.platformTokenArn?.trim();
  if (arn) {
    let m = SSM_ARN.exec(arn);
    if (m) return { kind: "ssm", arn, region: m[2] ?? "" };
    m = SECRETS_ARN.exec(arn);
    if (m) return { kind: "secretsmanager", arn, region: m[2] ?? "" };
    throw CloudError.terminal(
      "InvalidPlatformTokenArn",
      `spec.aws.platformTokenArn must be the ARN of an SSM parameter (arn:aws:ssm:<region>:<account>:parameter/<name>) or a Secrets Manager secret (arn:aws:secretsmanager:<region>:<account>:secret:<name>)`,
    );
  }
  if (!ce.spec.platformTokenSecretRef) return { kind: "none" };
  if (aws?.platformTokenInUserData !== true) {
    throw CloudError.terminal(
      "PlatformTokenNotDeliverable",
      `spec.platformTokenSecretRef is set, but the operator's AWS permissions leave the instance's user data as the only way ` +
        `to hand that token over, and user data is readable by anyone allowed ec2:DescribeInstanceAttribute. Either store the ` +
        `token in SSM Parameter Store (SecureString) or Secrets Manager and set spec.aws.platformTokenArn to its ARN (the ` +
        `instance reads it with its own role), or accept the exposure with spec.aws.platformTokenInUserData: true.`,
    );
  }
  if (platformToken === undefined || platformToken === "") {
    throw CloudError.terminal(
      "PlatformTokenMissing",
      `the Secret named by spec.platformTokenSecretRef (${ce.spec.platformTokenSecretRef.name}) did not yield a token`,
    );
  }
  return { kind: "user-data", token: platformToken };
}

/**
 * The statement the instance role needs to read the token named by the CE's
 * spec.aws.platformTokenArn, or undefined when the CE names none. A customer
 * managed KMS key additionally needs kms:Decrypt granted in that key's policy.
 */
export function platformTokenReadStatement(ce: ComputeEnvironment): PolicyStatement | undefined {
  // Only the ARN matters here (platformTokenSource looks at nothing else when one is set): a CE
  // whose token cannot be delivered still gets its role; its launches fail with the explanation.
  if (!ce.spec.aws?.platformTokenArn?.trim()) return undefined;
  const src = platformTokenSource(ce);
  if (src.kind === "ssm") {
    return { Sid: "PlatformToken", Effect: "Allow", Action: ["ssm:GetParameter"], Resource: src.arn };
  }
  if (src.kind === "secretsmanager") {
    // A complete secret ARN ends in "-" and six random characters; a partial one (the name only)
    // needs the wildcard for that suffix. A name may itself end like a suffix, so a guess from the
    // shape could lock the instance out: both forms are granted.
    return {
      Sid: "PlatformToken",
      Effect: "Allow",
      Action: ["secretsmanager:GetSecretValue"],
      Resource: [src.arn, `${src.arn}-??????`],
    };
  }
  return undefined;
}

export interface RenderUserDataInput {
  ce: ComputeEnvironment;
  run: Run;
  envStatus: AwsEnvStatus;
  /** vCPUs and memory of the instance type, when the caller knows them; else measured on the instance. */
  resources?: { vcpus?: number; memoryMiB?: number };
  /** The token from spec.platformTokenSecretRef; used only with spec.aws.platformTokenInUserData. */
  platformToken?: string;
}

/** Renders the user data script of a Run. Throws CloudError Terminal when it would exceed 16 KiB. */
export function renderUserData(input: RenderUserDataInput): string {
  const { ce, run } = input;
  const region = ce.spec.aws?.region;
  if (!region) throw CloudError.terminal("InvalidSpec", "spec.aws.region is required");
  if (!run.metadata.uid) throw CloudError.terminal("InvalidRun", "the Run has no UID yet");
  const token = platformTokenSource(ce, input.platformToken);
  const namespace = run.metadata.namespace ?? "";
  const settings = coreSettings({
    ce,
    run,
    artifactsUri: runArtifactsUri(ce, run),
    workDir: runWorkDir(ce, run),
    sessionUri: (name) => sessionUri(ce, namespace, name),
    nextflowConfigBase: baseNextflowConfig(ce, run),
    token: {
      source: token.kind,
      ...(token.kind === "ssm" || token.kind === "secretsmanager" ? { ref: token.arn } : {}),
      ...(token.kind === "user-data" ? { inline: token.token } : {}),
    },
    resources: input.resources,
  });
  settings.push(
    ["VMF_REGION", region],
    ["VMF_LOG_GROUP", logGroupName(ce)],
    ["VMF_LOG_STREAM", logStreamName(run)],
    ["VMF_AGENT_CONFIG", agentConfig(ce, run)],
    ["VMF_TOKEN_REGION", token.kind === "ssm" || token.kind === "secretsmanager" ? token.region : ""],
  );
  const script = renderLauncher(AWS_LAUNCHER_PART, settings, nextflowArgs(ce, run));
  const size = encodeUserData(script).length;
  if (size > USER_DATA_LIMIT_BYTES) {
    throw CloudError.terminal(
      "UserDataTooLarge",
      `the launcher for this Run is ${size} bytes even gzip-compressed, over EC2's user data limit of ${USER_DATA_LIMIT_BYTES} bytes; ` +
        `shorten the ComputeEnvironment's nextflowConfig/preRunScript/postRunScript or the Run's pipeline.config/params ` +
        `(they add ${Buffer.byteLength((ce.spec.nextflowConfig ?? "") + (run.spec.pipeline.config ?? "") + JSON.stringify(run.spec.pipeline.params ?? {}), "utf8")} bytes)`,
    );
  }
  return script;
}

/**
 * The bytes sent as user data: the script itself while it fits EC2's 16 KiB, else gzip-compressed
 * (cloud-init recognises gzip user data and runs what it holds), which gives large configurations
 * and scripts about three times the room.
 */
export function encodeUserData(script: string): Buffer {
  const raw = Buffer.from(script, "utf8");
  if (raw.length <= USER_DATA_LIMIT_BYTES) return raw;
  return gzipSync(raw, { level: 9 });
}

/** A short stable digest of user data, safe to log (never log the user data itself). */
export function userDataDigest(userData: string): string {
  return createHash("sha256").update(userData).digest("hex").slice(0, 16);
}
