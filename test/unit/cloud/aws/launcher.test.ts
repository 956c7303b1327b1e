import { randomBytes } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  USER_DATA_LIMIT_BYTES,
  agentConfig,
  encodeUserData,
  nextflowArgs,
  nextflowRunName,
  platformTokenReadStatement,
  platformTokenSource,
  renderUserData,
  runArtifactsUri,
  shellQuote,
} from "../../../../src/cloud/aws/launcher.js";
import { CloudError } from "../../../../src/cloud/provider.js";
import { logStreamName } from "../../../../src/cloud/aws/logs.js";
import { sampleCe, sampleRun } from "../../../fixtures/launcher/harness.js";

const scratch = mkdtempSync(join(tmpdir(), "vmforge-quote-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const canary = join(scratch, "pwned");
const HOSTILE = [
  "",
  "plain",
  "it's",
  "''",
  `"double" and 'single'`,
  `$(touch ${canary})`,
  "`touch " + canary + "`",
  "${HOME}",
  "$HOME",
  "a\nb\n",
  "\n",
  "back\\slash\\",
  "semi; touch " + canary,
  "glob * ? [a]",
  "tab\there",
  "!bang !! history",
  "unicode ✔ é 漢字",
  "'$(touch " + canary + ")'",
  "end with quote'",
  "\\'",
];

function bashEcho(valueWord: string): string {
  return execFileSync("bash", ["-c", `set -euo pipefail; x=${valueWord}; printf '%s' "$x"`], { encoding: "utf8" });
}

describe("shellQuote", () => {
  it.each(HOSTILE.map((v) => [JSON.stringify(v), v]))("round-trips %s through bash unchanged", (_label, value) => {
    expect(bashEcho(shellQuote(value))).toBe(value);
    expect(existsSync(canary)).toBe(false);
  });

  it("keeps a value one word in an array", () => {
    const words = ["a b", "c\nd", "$(x)", "'"];
    const out = execFileSync("bash", ["-c", `arr=(${words.map(shellQuote).join(" ")}); printf '%s\\0' "\${arr[@]}"`], { encoding: "utf8" });
    expect(out.split("\0").slice(0, -1)).toEqual(words);
  });

  it("refuses NUL", () => {
    expect(() => shellQuote("a\0b")).toThrow(CloudError);
  });
});

describe("nextflow command line", () => {
  it("has repository, revision, profiles, params file, work dir, resume, name and config in order", () => {
    const run = sampleRun({ pipeline: { revision: "v1.2", profiles: ["test", "docker"], resume: true, runName: "my-run" } });
    expect(nextflowArgs(sampleCe(), run)).toEqual([
      "run",
      "https://github.com/nextflow-io/hello",
      "-r",
      "v1.2",
      "-profile",
      "test,docker",
      "-params-file",
      "params.json",
      "-work-dir",
      "s3://vmforge-work/pipelines",
      "-resume",
      "-name",
      "my-run",
      "-c",
      "nextflow.config",
    ]);
  });

  it("leaves out what is unset and uses the Run's work dir override", () => {
    const run = sampleRun({ pipeline: { workDir: "s3://other-bucket/w/" } });
    expect(nextflowArgs(sampleCe(), run)).toEqual([
      "run",
      "https://github.com/nextflow-io/hello",
      "-params-file",
      "params.json",
      "-work-dir",
      "s3://other-bucket/w",
      "-name",
      "hello-1",
      "-c",
      "nextflow.config",
    ]);
  });

  it("derives a valid Nextflow run name from any Run name", () => {
    const rule = /^[a-z](?:[a-z\d]|[-_](?=[a-z\d])){0,79}$/;
    for (const name of ["hello-1", "1st.run", "a..b--c", "x".repeat(253), "9"]) {
      const n = nextflowRunName(sampleRun({ name }));
      expect(n, name).toMatch(rule);
    }
  });

  it("rejects a non-S3 work dir", () => {
    const ce = sampleCe({ aws: { workDir: "/local/path" } });
    expect(() => nextflowArgs(ce, sampleRun())).toThrow(/workDir/);
  });
});

describe("renderUserData", () => {
  it("renders a bash script within the 16 KiB limit", () => {
    const ud = renderUserData({ ce: sampleCe(), run: sampleRun(), envStatus: sampleCe().status!.aws! });
    expect(ud.startsWith("#!/bin/bash\n")).toBe(true);
    expect(Buffer.byteLength(ud)).toBeLessThan(USER_DATA_LIMIT_BYTES);
    expect(ud).not.toContain("#@@VMFORGE_SETTINGS@@");
    expect(ud).toContain(`VMF_LOG_STREAM='${logStreamName(sampleRun())}'`);
    expect(ud).toContain(`VMF_ARTIFACTS_URI='${runArtifactsUri(sampleCe(), sampleRun())}'`);
  });

  it("compresses a launcher over 16 KiB with gzip (cloud-init runs it) when that makes it fit", () => {
    const config = Array.from({ length: 600 }, (_, i) => `process { withName: 'STEP_${i}' { cpus = 2; memory = '4 GB' } }`).join("\n");
    const ce = sampleCe({ spec: { nextflowConfig: config } });
    const script = renderUserData({ ce, run: sampleRun(), envStatus: ce.status!.aws! });
    expect(Buffer.byteLength(script)).toBeGreaterThan(USER_DATA_LIMIT_BYTES);
    const sent = encodeUserData(script);
    expect(sent.length).toBeLessThanOrEqual(USER_DATA_LIMIT_BYTES);
    expect([sent[0], sent[1]]).toEqual([0x1f, 0x8b]);
    expect(gunzipSync(sent).toString("utf8")).toBe(script);
    // A launcher that fits is sent as it is.
    const small = renderUserData({ ce: sampleCe(), run: sampleRun(), envStatus: sampleCe().status!.aws! });
    expect(encodeUserData(small).toString("utf8")).toBe(small);
  });

  it("throws Terminal UserDataTooLarge when even gzip cannot bring it under 16 KiB", () => {
    const ce = sampleCe({ spec: { nextflowConfig: `params.x = '${randomBytes(3 * USER_DATA_LIMIT_BYTES).toString("base64")}'` } });
    let err: unknown;
    try {
      renderUserData({ ce, run: sampleRun(), envStatus: ce.status!.aws! });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CloudError);
    expect((err as CloudError).kind).toBe("Terminal");
    expect((err as CloudError).reason).toBe("UserDataTooLarge");
    expect((err as CloudError).message).toMatch(/16384/);
  });

  it("stream names are deterministic per Run", () => {
    expect(logStreamName(sampleRun())).toBe("team-a/hello-1/0f1e2d3c");
    expect(logStreamName(sampleRun({ uid: "abcdef01-0000-0000-0000-000000000000", name: "x" }))).toBe("team-a/x/abcdef01");
  });
});

describe("Platform token delivery", () => {
  const TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.secret-token-value";

  it("without a token source runs without a token", () => {
    expect(platformTokenSource(sampleCe())).toEqual({ kind: "none" });
    const ud = renderUserData({ ce: sampleCe(), run: sampleRun(), envStatus: sampleCe().status!.aws! });
    expect(ud).toContain("VMF_TOKEN_SOURCE='none'");
  });

  it("refuses to put a Secret's token in user data without the opt-in", () => {
    const ce = sampleCe({ spec: { platformTokenSecretRef: { name: "tower" } } });
    let err: unknown;
    try {
      renderUserData({ ce, run: sampleRun(), envStatus: ce.status!.aws!, platformToken: TOKEN });
    } catch (e) {
      err = e;
    }
    expect((err as CloudError).kind).toBe("Terminal");
    expect((err as CloudError).reason).toBe("PlatformTokenNotDeliverable");
    expect((err as CloudError).message).toContain("spec.aws.platformTokenArn");
    expect((err as CloudError).message).toContain("spec.aws.platformTokenInUserData: true");
    expect((err as CloudError).message).not.toContain(TOKEN);
  });

  it("with an SSM parameter ARN user data carries only the ARN, even when a Secret token is at hand", () => {
    const arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/vmforge/tower-token";
    const ce = sampleCe({ aws: { platformTokenArn: arn }, spec: { platformTokenSecretRef: { name: "tower" } } });
    const ud = renderUserData({ ce, run: sampleRun(), envStatus: ce.status!.aws!, platformToken: TOKEN });
    expect(ud).not.toContain(TOKEN);
    expect(ud).toContain("VMF_TOKEN_SOURCE='ssm'");
    expect(ud).toContain(`VMF_TOKEN_REF='${arn}'`);
    expect(ud).toContain("VMF_TOKEN_REGION='eu-west-1'");
    expect(platformTokenReadStatement(ce)).toEqual({ Sid: "PlatformToken", Effect: "Allow", Action: ["ssm:GetParameter"], Resource: arn });
  });

  it("a Secrets Manager ARN gives a read statement covering the random suffix", () => {
    const arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:tower";
    const ce = sampleCe({ aws: { platformTokenArn: arn } });
    expect(platformTokenSource(ce)).toEqual({ kind: "secretsmanager", arn, region: "us-east-1" });
    expect(platformTokenReadStatement(ce)?.Resource).toEqual([arn, `${arn}-??????`]);
    expect(platformTokenReadStatement(sampleCe())).toBeUndefined();
  });

  it("rejects an ARN of another service", () => {
    const ce = sampleCe({ aws: { platformTokenArn: "arn:aws:s3:::bucket/token" } });
    expect(() => platformTokenSource(ce)).toThrow(/^spec\.aws\.platformTokenArn must be the ARN of an SSM parameter .* or a Secrets Manager secret/);
  });

  it("the retired annotations and an explicit false opt-in deliver nothing", () => {
    const ce = sampleCe({
      annotations: { "vmforge.dev/platform-token-in-user-data": "true", "vmforge.dev/platform-token-arn": "arn:aws:ssm:eu-west-1:123456789012:parameter/t" },
      aws: { platformTokenInUserData: false },
      spec: { platformTokenSecretRef: { name: "tower" } },
    });
    expect(() => platformTokenSource(ce, TOKEN)).toThrow(expect.objectContaining({ kind: "Terminal", reason: "PlatformTokenNotDeliverable" }));
    expect(platformTokenReadStatement(ce)).toBeUndefined();
  });

  it("an ARN wins over the opt-in (admission refuses both; the token stays out of user data anyway)", () => {
    const arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/t";
    const ce = sampleCe({ aws: { platformTokenArn: arn, platformTokenInUserData: true }, spec: { platformTokenSecretRef: { name: "tower" } } });
    const ud = renderUserData({ ce, run: sampleRun(), envStatus: ce.status!.aws!, platformToken: TOKEN });
    expect(ud).toContain("VMF_TOKEN_SOURCE='ssm'");
    expect(ud).not.toContain(TOKEN);
  });

  it("embeds the token only with the explicit opt-in", () => {
    const ce = sampleCe({ aws: { platformTokenInUserData: true }, spec: { platformTokenSecretRef: { name: "tower" } } });
    const ud = renderUserData({ ce, run: sampleRun(), envStatus: ce.status!.aws!, platformToken: TOKEN });
    expect(ud).toContain("VMF_TOKEN_SOURCE='user-data'");
    expect(ud).toContain(`VMF_TOKEN_INLINE='${TOKEN}'`);
    expect(() => renderUserData({ ce, run: sampleRun(), envStatus: ce.status!.aws! })).toThrow(/did not yield a token/);
  });
});

describe("log retention in the CloudWatch agent's configuration", () => {
  const retentions = (ce: ReturnType<typeof sampleCe>) =>
    (JSON.parse(agentConfig(ce, sampleRun())) as { logs: { logs_collected: { files: { collect_list: { retention_in_days?: number }[] } } } })
      .logs.logs_collected.files.collect_list.map((e) => e.retention_in_days);

  it("sets spec.logRetentionDays on every file of the group (the agent applies it to the group), 30 days by default", () => {
    expect(retentions(sampleCe())).toEqual([30, 30, 30]);
    expect(retentions(sampleCe({ spec: { logRetentionDays: 14 } }))).toEqual([14, 14, 14]);
  });
});
