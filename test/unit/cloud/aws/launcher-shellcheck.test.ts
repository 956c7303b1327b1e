// shellcheck on rendered launchers (several variants) and on the stand-ins; and the template
// module is in step with launcher.sh.
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { renderUserData } from "../../../../src/cloud/aws/launcher.js";
import { LAUNCHER_TEMPLATE } from "../../../../src/cloud/aws/launcher-script.js";
import { LAUNCHER_SH, launcherModuleText, LAUNCHER_MODULE, shellcheck } from "../../../harness/tools.js";
import { STANDINS, sampleCe, sampleRun } from "../../../fixtures/launcher/harness.js";

const dir = mkdtempSync(join(tmpdir(), "vmforge-shellcheck-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const evil = `it's "x" $(id) \`id\` \${HOME}\nline2`;
const variants: Record<string, string> = {
  minimal: renderUserData({ ce: sampleCe(), run: sampleRun(), envStatus: sampleCe().status!.aws! }),
  full: renderUserData({
    ce: sampleCe({ spec: { nextflowConfig: `// ${evil}`, preRunScript: "echo pre", postRunScript: "echo post", wave: false, fusion: false } }),
    run: sampleRun({
      pipeline: { revision: "dev", profiles: ["a", "b"], params: { evil }, config: evil, resume: true, nextflowVersion: "25.04.6", runName: "named" },
      overrides: { spot: true, instanceType: "c6i.xlarge", bootDiskSizeGiB: 100 },
    }),
    envStatus: sampleCe().status!.aws!,
    resources: { vcpus: 4, memoryMiB: 8192 },
  }),
  ssmToken: renderUserData({
    ce: sampleCe({ aws: { platformTokenArn: "arn:aws:ssm:eu-west-1:123456789012:parameter/t" } }),
    run: sampleRun(),
    envStatus: sampleCe().status!.aws!,
  }),
  inlineToken: renderUserData({
    ce: sampleCe({ aws: { platformTokenInUserData: true }, spec: { platformTokenSecretRef: { name: "t" } } }),
    run: sampleRun(),
    envStatus: sampleCe().status!.aws!,
    platformToken: "tok'en$(x)",
  }),
};

describe("shellcheck", () => {
  it.each(Object.keys(variants))("rendered launcher %s is clean", { timeout: 300_000 }, async (name) => {
    const file = join(dir, `${name}.sh`);
    writeFileSync(file, variants[name] as string);
    const r = await shellcheck([file]);
    expect(r.output).toBe("");
    expect(r.code).toBe(0);
  });

  it("the stand-ins are clean", { timeout: 300_000 }, async () => {
    const files = readdirSync(STANDINS).map((f) => join(STANDINS, f));
    const r = await shellcheck(["--external-sources", ...files]);
    expect(r.output).toBe("");
    expect(r.code).toBe(0);
  });

  it("finds problems (the check can fail)", { timeout: 300_000 }, async () => {
    const file = join(dir, "bad.sh");
    writeFileSync(file, '#!/bin/bash\nx=$1\nrm -rf $x/*\n');
    const r = await shellcheck([file]);
    expect(r.code).not.toBe(0);
    expect(r.output).toMatch(/SC2086|SC2115/);
  });
});

describe("launcher template", () => {
  it("launcher-script.ts is generated from launcher.sh (run `npx tsx test/harness/tools.ts sync-launcher`)", () => {
    const sh = readFileSync(LAUNCHER_SH, "utf8");
    expect(LAUNCHER_TEMPLATE).toBe(sh);
    expect(readFileSync(LAUNCHER_MODULE, "utf8")).toBe(launcherModuleText(sh));
  });
});
