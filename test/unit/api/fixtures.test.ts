import { readdirSync, readFileSync } from "node:fs";
import { parse } from "yaml";
import { describe, expect, it } from "vitest";

const dir = (sub: string) => new URL(`../../fixtures/${sub}/`, import.meta.url);

function load(sub: string): { file: string; text: string; doc: { apiVersion?: string; kind?: string; metadata?: { name?: string } } }[] {
  return readdirSync(dir(sub))
    .filter((f) => f.endsWith(".yaml"))
    .sort()
    .map((file) => {
      const text = readFileSync(new URL(file, dir(sub)), "utf8");
      return { file, text, doc: parse(text) as { apiVersion?: string; kind?: string; metadata?: { name?: string } } };
    });
}

describe("fixtures", () => {
  const invalid = load("invalid");
  const valid = load("valid");

  it("has at least 30 malformed manifests, each naming the expected apiserver message", () => {
    expect(invalid.length).toBeGreaterThanOrEqual(30);
    for (const { file, text } of invalid) {
      expect(text, file).toMatch(/^# expect: \S.{5,}$/m);
    }
  });

  it("uses unique object names equal to the file names, with our kinds", () => {
    for (const { file, doc } of invalid) {
      expect(doc.apiVersion, file).toBe("vmforge.dev/v1alpha1");
      expect(["ComputeEnvironment", "Run"], file).toContain(doc.kind);
      expect(doc.metadata?.name, file).toBe(file.replace(/\.yaml$/, ""));
    }
  });

  it("has a minimal and a full AWS environment, an Azure environment and Runs", () => {
    expect(valid.map((v) => v.file)).toEqual(
      expect.arrayContaining(["ce-aws-minimal.yaml", "ce-aws-full.yaml", "ce-azure.yaml", "run.yaml"]),
    );
    const names = valid.map((v) => `${v.doc.kind}/${v.doc.metadata?.name}`);
    expect(new Set(names).size).toBe(names.length);
  });
});
