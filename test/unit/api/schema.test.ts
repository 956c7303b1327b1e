import { Type } from "@sinclair/typebox";
import { describe, expect, it } from "vitest";
import { crdObjects, specSchema, toStructural, type CrdObject, type JsonSchema } from "../../../src/api/crd.js";
import {
  ComputeEnvironmentResource,
  DEFAULT_AZURE_VM_SIZE,
  DEFAULT_BOOT_DISK_GIB,
  FINALIZER,
  GROUP,
  RunResource,
  SUPPORTED_AWS_REGIONS,
  VERSION,
} from "../../../src/api/types.js";

const [ceCrd, runCrd] = crdObjects() as [CrdObject, CrdObject];

function root(crd: CrdObject): JsonSchema {
  const s = crd.spec.versions[0]?.schema.openAPIV3Schema;
  if (!s) throw new Error("no schema");
  return s;
}

/** Every schema node with its dotted path. */
function* walk(node: JsonSchema, path: string): Generator<[string, JsonSchema]> {
  yield [path, node];
  const props = node.properties as Record<string, JsonSchema> | undefined;
  if (props) for (const [k, v] of Object.entries(props)) yield* walk(v, `${path}.${k}`);
  if (node.items) yield* walk(node.items as JsonSchema, `${path}[]`);
  if (node.additionalProperties && typeof node.additionalProperties === "object") {
    yield* walk(node.additionalProperties as JsonSchema, `${path}{}`);
  }
}

function at(schema: JsonSchema, path: string): JsonSchema {
  let node = schema;
  for (const part of path.split(".")) {
    const next = (node.properties as Record<string, JsonSchema> | undefined)?.[part];
    if (!next) throw new Error(`no property ${part} in ${path}`);
    node = next;
  }
  return node;
}

describe("resource descriptors", () => {
  it("match the contract", () => {
    expect(GROUP).toBe("vmforge.dev");
    expect(VERSION).toBe("v1alpha1");
    expect(ComputeEnvironmentResource).toEqual({
      group: "vmforge.dev",
      version: "v1alpha1",
      plural: "computeenvironments",
      kind: "ComputeEnvironment",
      namespaced: true,
    });
    expect(RunResource).toEqual({ group: "vmforge.dev", version: "v1alpha1", plural: "runs", kind: "Run", namespaced: true });
    expect(FINALIZER).toBe("vmforge.dev/finalizer");
  });

  it("lists the 22 supported AWS regions, and the CRD enum is exactly that list", () => {
    expect(SUPPORTED_AWS_REGIONS).toHaveLength(22);
    expect(new Set(SUPPORTED_AWS_REGIONS).size).toBe(22);
    expect(SUPPORTED_AWS_REGIONS).toContain("eu-west-1");
    expect(SUPPORTED_AWS_REGIONS).not.toContain("us-gov-west-1");
    expect(at(specSchema(ceCrd), "aws.region").enum).toEqual([...SUPPORTED_AWS_REGIONS]);
  });
});

describe.each([
  ["ComputeEnvironment", ceCrd],
  ["Run", runCrd],
])("%s CRD", (kind, crd) => {
  it("is namespaced, in the vmforge category, with a status subresource", () => {
    expect(crd.metadata.name).toBe(`${crd.spec.names.plural}.${GROUP}`);
    expect(crd.spec.scope).toBe("Namespaced");
    expect(crd.spec.names.kind).toBe(kind);
    expect(crd.spec.names.categories).toEqual(["vmforge"]);
    expect(crd.spec.versions).toHaveLength(1);
    expect(crd.spec.versions[0]?.subresources).toEqual({ status: {} });
    expect(crd.spec.versions[0]?.served && crd.spec.versions[0]?.storage).toBe(true);
  });

  it("documents every field (kubectl explain)", () => {
    const undocumented = [...walk(root(crd), kind)]
      .filter(([path]) => path !== `${kind}.metadata`) // the apiserver forbids anything but `type` there
      .filter(([, node]) => typeof node.description !== "string" || node.description.length < 8)
      .map(([path]) => path);
    expect(undocumented).toEqual([]);
  });

  it("bounds every string, list and map a CEL rule reads (apiserver cost budget)", () => {
    const unbounded: string[] = [];
    for (const [path, node] of walk(root(crd), kind)) {
      if (!node["x-kubernetes-validations"]) continue;
      if (node.type === "string" && node.maxLength === undefined && node.enum === undefined) unbounded.push(path);
      if (node.type === "array" && node.maxItems === undefined) unbounded.push(path);
      if (node.type === "object" && node.additionalProperties && node.maxProperties === undefined) unbounded.push(path);
    }
    expect(unbounded).toEqual([]);
  });

  it("gives every CEL rule a message", () => {
    for (const [path, node] of walk(root(crd), kind)) {
      for (const rule of (node["x-kubernetes-validations"] as { rule: string; message?: string }[] | undefined) ?? []) {
        expect(rule.message, `${path}: ${rule.rule}`).toMatch(/\w{3,}/);
      }
    }
  });

  it("keys the conditions list by type", () => {
    const conditions = at(root(crd), "status.conditions");
    expect(conditions["x-kubernetes-list-type"]).toBe("map");
    expect(conditions["x-kubernetes-list-map-keys"]).toEqual(["type"]);
    expect((conditions.items as JsonSchema).required).toEqual(
      expect.arrayContaining(["type", "status", "lastTransitionTime"]),
    );
  });
});

describe("ComputeEnvironment schema", () => {
  const spec = specSchema(ceCrd);

  it("has the defaults the product documents give", () => {
    expect(at(spec, "wave").default).toBe(true);
    expect(at(spec, "fusion").default).toBe(true);
    expect(at(spec, "deletionPolicy").default).toBe("Delete");
    expect(at(spec, "aws.bootDiskSizeGiB").default).toBe(DEFAULT_BOOT_DISK_GIB);
    expect(at(spec, "aws.graviton").default).toBe(false);
    expect(at(spec, "azure.vmSize").default).toBe(DEFAULT_AZURE_VM_SIZE);
    expect(at(spec, "platformTokenSecretRef.key").default).toBe("token");
    expect(at(spec, "aws.instanceType").default).toBeUndefined();
  });

  it("limits boot disks and scripts", () => {
    expect(at(spec, "aws.bootDiskSizeGiB")).toMatchObject({ minimum: 8, maximum: 16384 });
    expect(at(spec, "preRunScript").maxLength).toBe(1024);
    expect(at(spec, "postRunScript").maxLength).toBe(1024);
    expect(at(spec, "maxConcurrentRuns").minimum).toBe(1);
  });

  it("makes provider and region immutable", () => {
    const rules = (path: string) =>
      (at(spec, path)["x-kubernetes-validations"] as { rule: string }[]).map((r) => r.rule);
    expect(rules("provider")).toContain("self == oldSelf");
    expect(rules("aws.region")).toContain("self == oldSelf");
  });

  it("keeps params free-form", () => {
    const params = at(specSchema(runCrd), "pipeline.params");
    expect(params.type).toBe("object");
    expect(params["x-kubernetes-preserve-unknown-fields"]).toBe(true);
  });

  it("prints provider, region, location, phase, readiness, active runs and age", () => {
    const cols = ceCrd.spec.versions[0]?.additionalPrinterColumns ?? [];
    expect(cols.filter((c) => !c.priority).map((c) => c.name)).toEqual([
      "Provider",
      "Region",
      "Location",
      "Phase",
      "Ready",
      "Active",
      "Age",
    ]);
    expect(ceCrd.spec.names.shortNames).toEqual(["ce"]);
  });
});

describe("Run schema", () => {
  const spec = specSchema(runCrd);

  it("defaults cancel and resume to false", () => {
    expect(at(spec, "cancel").default).toBe(false);
    expect(at(spec, "pipeline.resume").default).toBe(false);
  });

  it("guards the spec with a once-only rule and a one-way cancel", () => {
    const specRules = (spec["x-kubernetes-validations"] as { rule: string }[]).map((r) => r.rule).join(" ");
    expect(specRules).toContain("self.pipeline == oldSelf.pipeline");
    const cancelRules = (at(spec, "cancel")["x-kubernetes-validations"] as { rule: string }[]).map((r) => r.rule);
    expect(cancelRules).toEqual(["self || !oldSelf"]);
  });

  it("prints CE, phase, instance, exit code and age, with the message on -o wide", () => {
    const cols = runCrd.spec.versions[0]?.additionalPrinterColumns ?? [];
    expect(cols.filter((c) => !c.priority).map((c) => c.name)).toEqual(["CE", "Phase", "Instance", "Exit Code", "Age"]);
    expect(cols.find((c) => c.name === "Message")?.priority).toBe(1);
  });
});

describe("toStructural", () => {
  it("rejects schema keywords Kubernetes does not accept", () => {
    expect(() => toStructural(Type.Union([Type.Literal("a"), Type.Literal("b")]))).toThrow(/anyOf/);
    expect(() => toStructural(Type.Record(Type.String(), Type.String()))).toThrow(/patternProperties/);
    expect(() => toStructural(Type.Object({ a: Type.Any() }))).toThrow(/no type/);
  });

  it("drops TypeBox's symbol keys and orders keys stably", () => {
    const out = toStructural(Type.Object({ b: Type.String({ description: "b field" }) }, { description: "obj" }));
    expect(out).toEqual({
      type: "object",
      description: "obj",
      required: ["b"],
      properties: { b: { type: "string", description: "b field" } },
    });
    expect(Object.keys(out)).toEqual(["type", "description", "required", "properties"]);
  });
});
