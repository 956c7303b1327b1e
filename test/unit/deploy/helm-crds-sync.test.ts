// The Helm chart (helm/vmforge/files/crds/) and the kustomize folder (deploy/crds/) ship copies of the
// generated crds/*.yaml. They must be byte-for-byte equal; helm/sync-crds.sh makes them so.
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = join(import.meta.dirname, "..", "..", "..");
const FIX = "run helm/sync-crds.sh (after npm run gen:crds)";
const COPIES = [join("helm", "vmforge", "files", "crds"), join("deploy", "crds")];

const yamlFiles = (dir: string): string[] =>
  existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml").sort() : [];

describe("CRD copies", () => {
  const generated = yamlFiles(join(ROOT, "crds"));

  it("has generated CRDs to copy", () => {
    expect(generated, "crds/ is empty: run npm run gen:crds").toEqual([
      "computeenvironments.vmforge.dev.yaml",
      "runs-user-data-budget.vmforge.dev.binding.yaml",
      "runs-user-data-budget.vmforge.dev.policy.yaml",
      "runs.vmforge.dev.yaml",
    ]);
  });

  for (const copy of COPIES) {
    it(`${copy}/ equals crds/ byte for byte`, () => {
      expect(yamlFiles(join(ROOT, copy)), `${copy} has other files than crds/: ${FIX}`).toEqual(generated);
      for (const f of generated) {
        const a = readFileSync(join(ROOT, "crds", f));
        const b = readFileSync(join(ROOT, copy, f));
        expect(a.equals(b), `${copy}/${f} differs from crds/${f}: ${FIX}`).toBe(true);
      }
    });
  }

  it("stay small enough for client-side `kubectl apply -k` (whole object in a 256 KiB annotation)", () => {
    for (const f of generated) {
      const size = readFileSync(join(ROOT, "crds", f)).length;
      // The annotation holds the object as JSON, about the size of the YAML; keep a wide margin.
      expect(size, `crds/${f} is ${size} bytes; apply it server-side and document that`).toBeLessThan(192 * 1024);
    }
  });

  it("sync-crds.sh --check agrees with the repository", () => {
    const r = spawnSync("bash", [join(ROOT, "helm", "sync-crds.sh"), "--check"], { encoding: "utf8" });
    expect(r.status, `${r.stderr}\n${FIX}`).toBe(0);
  });
});

describe("helm/sync-crds.sh", () => {
  const work = mkdtempSync(join(tmpdir(), "vmforge-sync-crds-"));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  const run = (...args: string[]) => spawnSync("bash", [join(work, "helm", "sync-crds.sh"), ...args], { encoding: "utf8" });

  it("detects a stale, a missing and a leftover copy, then repairs all of them", () => {
    cpSync(join(ROOT, "helm", "sync-crds.sh"), join(work, "helm", "sync-crds.sh"));
    cpSync(join(ROOT, "crds"), join(work, "crds"), { recursive: true });
    // A fresh checkout state: copies created by the script itself.
    expect(run().status).toBe(0);
    expect(run("--check").status).toBe(0);
    for (const copy of COPIES) expect(yamlFiles(join(work, copy))).toEqual(yamlFiles(join(work, "crds")));

    const first = yamlFiles(join(work, "crds"))[0]!;
    writeFileSync(join(work, "helm", "vmforge", "files", "crds", first), "# edited by hand\n");
    rmSync(join(work, "deploy", "crds", first));
    writeFileSync(join(work, "deploy", "crds", "old.vmforge.dev.yaml"), "kind: CustomResourceDefinition\n");
    const check = run("--check");
    expect(check.status).toBe(1);
    expect(check.stderr).toContain(`out of sync: helm/vmforge/files/crds/${first}`);
    expect(check.stderr).toContain(`out of sync: deploy/crds/${first}`);
    expect(check.stderr).toContain("no longer generated: deploy/crds/old.vmforge.dev.yaml");
    // --check changed nothing.
    expect(existsSync(join(work, "deploy", "crds", "old.vmforge.dev.yaml"))).toBe(true);

    expect(run().status).toBe(0);
    expect(run("--check").status).toBe(0);
    for (const copy of COPIES) {
      for (const f of yamlFiles(join(work, "crds"))) {
        expect(readFileSync(join(work, copy, f)).equals(readFileSync(join(work, "crds", f)))).toBe(true);
      }
    }
    expect(existsSync(join(work, "deploy", "crds", "old.vmforge.dev.yaml"))).toBe(false);
  });

  it("lists a newly generated CRD in deploy/crds/kustomization.yaml", () => {
    const first = yamlFiles(join(work, "crds"))[0]!;
    cpSync(join(work, "crds", first), join(work, "crds", "widgets.vmforge.dev.yaml"));
    const check = run("--check");
    expect(check.status).toBe(1);
    expect(check.stderr).toContain("out of sync: deploy/crds/kustomization.yaml");
    expect(check.stderr).toContain("out of sync: helm/vmforge/files/crds/widgets.vmforge.dev.yaml");
    expect(run().status).toBe(0);
    const k = readFileSync(join(work, "deploy", "crds", "kustomization.yaml"), "utf8");
    expect(k).toContain(`  - ${first}\n`);
    expect(k).toContain("  - widgets.vmforge.dev.yaml\n");
    expect(run("--check").status).toBe(0);
  });

  it("refuses to run without generated CRDs", () => {
    const empty = mkdtempSync(join(tmpdir(), "vmforge-sync-crds-empty-"));
    try {
      cpSync(join(ROOT, "helm", "sync-crds.sh"), join(empty, "helm", "sync-crds.sh"));
      const r = spawnSync("bash", [join(empty, "helm", "sync-crds.sh")], { encoding: "utf8" });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain("run npm run gen:crds first");
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
