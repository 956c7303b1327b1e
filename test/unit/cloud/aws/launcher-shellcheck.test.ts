// shellcheck on rendered launchers (several variants, AWS and Azure) and on the stand-ins; and the
// generated modules are in step with the launcher's .sh sources (the core and each cloud's part).
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { renderUserData } from "../../../../src/cloud/aws/launcher.js";
import { renderAzureUserData } from "../../../../src/cloud/azure/launcher.js";
import { LAUNCHER_CORE } from "../../../../src/cloud/launcher/core-script.js";
import { AWS_LAUNCHER_PART } from "../../../../src/cloud/aws/launcher-script.js";
import { AZURE_LAUNCHER_PART } from "../../../../src/cloud/azure/launcher-script.js";
import { LAUNCHER_SOURCES, launcherModuleText, shellcheck } from "../../../harness/tools.js";
import { STANDINS, sampleCe, sampleRun } from "../../../fixtures/launcher/harness.js";
import { sampleAzureCe, sampleAzureRun } from "../../../fixtures/launcher/azure.js";

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
  azureMinimal: renderAzureUserData(sampleAzureCe(), sampleAzureRun(), azureSettings()),
  azureFull: renderAzureUserData(
    sampleAzureCe({ nextflowConfig: `// ${evil}`, preRunScript: "echo pre", postRunScript: "echo post", wave: false, fusion: false, platformTokenSecretRef: { name: "t" } }, { platformTokenInUserData: true }),
    sampleAzureRun({ pipeline: { revision: "dev", profiles: ["a", "b"], params: { evil }, config: evil, resume: true, resumeFrom: "earlier", nextflowVersion: "25.04.6", runName: "named" } }),
    azureSettings({ platformToken: "tok'en$(x)", resources: { vcpus: 2, memoryMiB: 8192 } }),
  ),
  azureKeyVaultToken: renderAzureUserData(sampleAzureCe({}, { platformTokenSecretUri: "https://vmf-kv1.vault.azure.net/secrets/t" }), sampleAzureRun(), azureSettings()),
};

function azureSettings(over: Partial<Parameters<typeof renderAzureUserData>[2]> = {}): Parameters<typeof renderAzureUserData>[2] {
  return { identityClientId: "cid", storageAccount: "acct", blobEndpoint: "https://acct.blob.core.windows.net", dceEndpoint: "https://dce.example", dcrImmutableId: "dcr-1", ...over };
}

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

describe("launcher templates", () => {
  const modules: Record<string, string> = { LAUNCHER_CORE, AWS_LAUNCHER_PART, AZURE_LAUNCHER_PART };
  it.each(LAUNCHER_SOURCES.map((x) => [x.exportName, x] as const))("%s is generated from its .sh source (run `npx tsx test/harness/tools.ts sync-launcher`)", (_name, src) => {
    const sh = readFileSync(src.sh, "utf8");
    expect(modules[src.exportName]).toBe(sh);
    expect(readFileSync(src.module, "utf8")).toBe(launcherModuleText(sh, src.exportName, basename(src.sh)));
  });
});
