// The GitHub Actions workflows and the release scripts they run: actionlint (built from its Go
// module) with shellcheck over every `run:` block, shellcheck over the scripts, and the promises of
// the release workflow checked on the parsed YAML (a rename or a dropped step fails here).
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { ACTIONLINT, ensureGoTool } from "../../harness/go-tools.js";
import { ensureShellcheck, shellcheck } from "../../harness/tools.js";

const ROOT = join(import.meta.dirname, "..", "..", "..");
const WORKFLOWS = join(ROOT, ".github", "workflows");
const SCRIPTS = join(ROOT, ".github", "scripts");
const BUILD_TIMEOUT = 900_000;

interface Step {
  id?: string;
  name?: string;
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
  env?: Record<string, string>;
}
interface Job {
  needs?: string | string[];
  permissions?: Record<string, string>;
  steps: Step[];
  outputs?: Record<string, string>;
}
interface Workflow {
  on: Record<string, unknown>;
  permissions?: Record<string, string>;
  jobs: Record<string, Job>;
}

const workflowFiles = readdirSync(WORKFLOWS).filter((f) => f.endsWith(".yml") || f.endsWith(".yaml"));
const release = parse(readFileSync(join(WORKFLOWS, "release.yml"), "utf8")) as Workflow;
const allSteps = Object.values(release.jobs).flatMap((j) => j.steps);
const allRuns = allSteps.map((s) => s.run ?? "").join("\n");
const uses = (prefix: string): Step[] => allSteps.filter((s) => s.uses?.startsWith(prefix));

const temp: string[] = [];
afterAll(() => {
  for (const d of temp) rmSync(d, { recursive: true, force: true });
});

describe(".github/workflows", () => {
  it("has the release and CI workflows", () => {
    expect(workflowFiles.sort()).toEqual(["ci.yml", "release.yml"]);
  });

  it(
    "passes actionlint, including shellcheck of every run: script",
    async () => {
      const [actionlint, sc] = await Promise.all([ensureGoTool(ACTIONLINT), ensureShellcheck()]);
      const r = spawnSync(actionlint, [`-shellcheck=${sc}`, "-no-color", ...workflowFiles.map((f) => join(WORKFLOWS, f))], { cwd: ROOT, encoding: "utf8" });
      expect(r.stdout + r.stderr).toBe("");
      expect(r.status).toBe(0);
    },
    BUILD_TIMEOUT,
  );

  it(
    "actionlint is not a no-op: a broken workflow is reported",
    async () => {
      const actionlint = await ensureGoTool(ACTIONLINT);
      const dir = mkdtempSync(join(tmpdir(), "vmforge-actionlint-"));
      temp.push(dir);
      const bad = join(dir, "bad.yml");
      writeFileSync(bad, "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nosuchthing }}\n");
      const r = spawnSync(actionlint, ["-shellcheck=", "-no-color", bad], { encoding: "utf8" });
      expect(r.status).not.toBe(0);
      expect(r.stdout).toMatch(/nosuchthing/);
    },
    BUILD_TIMEOUT,
  );
});

describe("release workflow", () => {
  it("runs on version tags only", () => {
    expect(Object.keys(release.on)).toEqual(["push"]);
    expect(release.on.push).toEqual({ tags: ["v[0-9]+.[0-9]+.[0-9]+*"] });
    expect(release.permissions).toEqual({ contents: "read" });
  });

  it("refuses a tag that differs from the chart's appVersion and the package version", () => {
    const meta = release.jobs.meta!.steps.find((s) => s.id === "v" || s.name === "Version and names")!;
    expect(meta.run).toContain("helm/vmforge/Chart.yaml");
    expect(meta.run).toContain("package.json");
    expect(meta.run).toMatch(/exit 1/);
    // The image is named after the repository, lower-cased as registries require.
    expect(meta.env).toMatchObject({ REPOSITORY: "${{ github.repository }}" });
    expect(meta.run).toContain('image=ghcr.io/${REPOSITORY,,}');
  });

  it("builds the image for amd64 and arm64, pushes it to ghcr, signs it keylessly and attests an SBOM", () => {
    const build = uses("docker/build-push-action@")[0]!;
    expect(build.with).toMatchObject({ platforms: "linux/amd64,linux/arm64", push: true, sbom: true });
    expect(build.with?.tags).toBe("${{ env.IMAGE }}:${{ env.VERSION }}");
    expect(uses("docker/setup-qemu-action@")).toHaveLength(1);
    expect(uses("docker/setup-buildx-action@")).toHaveLength(1);
    expect(uses("docker/login-action@")[0]!.with).toMatchObject({ registry: "ghcr.io" });
    expect(release.jobs.image!.permissions).toMatchObject({ packages: "write", "id-token": "write" });
    expect(allRuns).toMatch(/cosign sign --yes "\$IMAGE@\$DIGEST"/);
    expect(allRuns).toMatch(/cosign attest --yes --type spdxjson/);
    expect(uses("anchore/sbom-action@")[0]!.with).toMatchObject({ format: "spdx-json" });
  });

  it("pushes the chart as an OCI artifact, and attaches CRDs, install manifest, SBOM and plugin to the release", () => {
    expect(allRuns).toContain('.github/scripts/release-assets.sh "$VERSION" "$IMAGE" dist/release');
    expect(allRuns).toMatch(/helm push "dist\/release\/vmforge-\$VERSION\.tgz" "oci:\/\/\$CHARTS"/);
    const gh = allSteps.find((s) => s.run?.includes("gh release create"))!.run!;
    for (const asset of ["vmforge-install.yaml", "vmforge-crds.yaml", "vmforge-$VERSION.tgz", "vmforge.krew.yaml", "vmforge-$VERSION.spdx.json", "kubectl-vmforge_linux_amd64.tar.gz", "kubectl-vmforge_linux_arm64.tar.gz"]) {
      expect(gh, asset).toContain(asset);
    }
    expect(release.jobs.publish!.needs).toEqual(["meta", "image", "plugin"]);
    expect(allRuns).toContain("bash plugin/build.sh --out dist/plugin");
  });
});

describe("release scripts", () => {
  const scripts = readdirSync(SCRIPTS).filter((f) => f.endsWith(".sh")).map((f) => join(SCRIPTS, f));

  it(
    "are clean under shellcheck",
    async () => {
      expect(scripts.length).toBeGreaterThanOrEqual(2);
      const r = await shellcheck([...scripts, join(ROOT, "plugin", "build.sh")]);
      expect(r.output).toBe("");
      expect(r.code).toBe(0);
    },
    BUILD_TIMEOUT,
  );

  it("krew-manifest.sh fills in version, addresses and the archives' sha256", () => {
    const dir = mkdtempSync(join(tmpdir(), "vmforge-krew-"));
    temp.push(dir);
    const amd = join(dir, "kubectl-vmforge_linux_amd64.tar.gz");
    const arm = join(dir, "kubectl-vmforge_linux_arm64.tar.gz");
    writeFileSync(amd, "amd64 archive");
    writeFileSync(arm, "arm64 archive");
    const text = execFileSync("bash", [join(SCRIPTS, "krew-manifest.sh"), "1.2.3", "https://github.com/acme/vmforge/releases/download/v1.2.3", amd, arm], { encoding: "utf8" });
    expect(text).not.toMatch(/@[A-Z0-9_]+@/);
    const m = parse(text) as { kind: string; metadata: { name: string }; spec: { version: string; homepage: string; platforms: { uri: string; sha256: string; bin: string; selector: { matchLabels: Record<string, string> } }[] } };
    expect(m.kind).toBe("Plugin");
    expect(m.metadata.name).toBe("vmforge");
    expect(m.spec.version).toBe("v1.2.3");
    expect(m.spec.homepage).toBe("https://github.com/acme/vmforge");
    const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
    expect(m.spec.platforms).toEqual([
      { selector: { matchLabels: { os: "linux", arch: "amd64" } }, uri: "https://github.com/acme/vmforge/releases/download/v1.2.3/kubectl-vmforge_linux_amd64.tar.gz", sha256: sha("amd64 archive"), bin: "kubectl-vmforge" },
      { selector: { matchLabels: { os: "linux", arch: "arm64" } }, uri: "https://github.com/acme/vmforge/releases/download/v1.2.3/kubectl-vmforge_linux_arm64.tar.gz", sha256: sha("arm64 archive"), bin: "kubectl-vmforge" },
    ]);
  });

  it("release-assets.sh refuses a version that is not the chart's appVersion", () => {
    const dir = mkdtempSync(join(tmpdir(), "vmforge-assets-"));
    temp.push(dir);
    const r = spawnSync("bash", [join(SCRIPTS, "release-assets.sh"), "9.9.9", "ghcr.io/acme/vmforge", dir], { encoding: "utf8" });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/appVersion '[0-9.]+', the release is '9\.9\.9'/);
    const bad = spawnSync("bash", [join(SCRIPTS, "release-assets.sh"), "0.1.0", "ghcr.io/Acme/VMForge", dir], { encoding: "utf8" });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/not a valid lower-case reference/);
  });
});
