import { describe, expect, it } from "vitest";
import {
  applyDefaults,
  defaultComputeEnvironmentSpec,
  defaultRunSpec,
  withComputeEnvironmentDefaults,
} from "../../../src/api/defaults.js";
import type { ComputeEnvironment, ComputeEnvironmentSpec, RunSpec } from "../../../src/api/types.js";

describe("ComputeEnvironment defaults", () => {
  it("fills a minimal AWS spec", () => {
    const spec: ComputeEnvironmentSpec = { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://b/w" } };
    expect(defaultComputeEnvironmentSpec(spec)).toEqual({
      provider: "aws",
      aws: { region: "eu-west-1", workDir: "s3://b/w", graviton: false, bootDiskSizeGiB: 50, platformTokenInUserData: false },
      wave: true,
      fusion: true,
      defaultRunTimeout: "72h",
      deletionPolicy: "Delete",
      logRetentionDays: 30,
    });
  });

  it("fills a minimal Azure spec and the token key of a present token ref only", () => {
    const spec: ComputeEnvironmentSpec = {
      provider: "azure",
      azure: { location: "westeurope", workDir: "az://work" },
      platformTokenSecretRef: { name: "seqera" },
    };
    const got = defaultComputeEnvironmentSpec(spec);
    expect(got.azure?.vmSize).toBe("Standard_D2ds_v4");
    expect(got.platformTokenSecretRef).toEqual({ name: "seqera", key: "token" });
    expect(got.aws).toBeUndefined();
    expect(defaultComputeEnvironmentSpec({ ...spec, platformTokenSecretRef: undefined }).platformTokenSecretRef).toBeUndefined();
  });

  it("keeps explicit values, including false and non-default numbers", () => {
    const spec: ComputeEnvironmentSpec = {
      provider: "aws",
      aws: { region: "eu-west-1", workDir: "s3://b/w", graviton: true, bootDiskSizeGiB: 8, platformTokenInUserData: true },
      platformTokenSecretRef: { name: "seqera", key: "access-token" },
      wave: false,
      fusion: false,
      defaultRunTimeout: "6h",
      deletionPolicy: "Retain",
      logRetentionDays: 7,
    };
    expect(defaultComputeEnvironmentSpec(spec)).toEqual(spec);
  });

  it("does not modify its input", () => {
    const ce: ComputeEnvironment = {
      metadata: { name: "x", namespace: "y" },
      spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://b/w" } },
    };
    const before = structuredClone(ce);
    const out = withComputeEnvironmentDefaults(ce);
    expect(ce).toEqual(before);
    expect(out.metadata).toEqual(ce.metadata);
    expect(out.spec.wave).toBe(true);
  });
});

describe("Run defaults", () => {
  it("sets cancel and resume to false and leaves params alone", () => {
    const spec: RunSpec = {
      computeEnvironmentRef: { name: "ce" },
      pipeline: { repository: "https://github.com/nextflow-io/hello", params: { resume: "x", nested: { cancel: 1 } } },
    };
    expect(defaultRunSpec(spec)).toEqual({
      computeEnvironmentRef: { name: "ce" },
      pipeline: { repository: "https://github.com/nextflow-io/hello", params: { resume: "x", nested: { cancel: 1 } }, resume: false },
      cancel: false,
    });
  });

  it("keeps cancel true", () => {
    const spec: RunSpec = { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "https://x.org/r" }, cancel: true };
    expect(defaultRunSpec(spec).cancel).toBe(true);
  });
});

describe("applyDefaults", () => {
  const schema = {
    type: "object",
    properties: {
      a: { type: "integer", default: 1 },
      n: { type: "string", nullable: true, default: "d" },
      list: { type: "array", items: { type: "object", properties: { x: { type: "boolean", default: true } } } },
      map: { type: "object", additionalProperties: { type: "object", properties: { y: { type: "string", default: "z" } } } },
      inner: { type: "object", default: {}, properties: { deep: { type: "integer", default: 7 } } },
    },
  };

  it("recurses into lists, maps and defaulted objects like the apiserver", () => {
    expect(applyDefaults(schema, { list: [{}, { x: false }], map: { k: {} } })).toEqual({
      a: 1,
      n: "d",
      list: [{ x: true }, { x: false }],
      map: { k: { y: "z" } },
      inner: { deep: 7 },
    });
  });

  it("treats null as missing unless the field is nullable", () => {
    expect(applyDefaults(schema, { a: null, n: null })).toMatchObject({ a: 1, n: null });
  });
});
