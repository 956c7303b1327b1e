/**
 * Applies the CRD schema defaults to an object in memory, the way the apiserver does for
 * structural schemas: a missing (or null, non-nullable) property with a `default` gets a copy of
 * it, then defaulting recurses into every present property, list item and map value. Objects read
 * from the apiserver already carry these defaults; this is for objects built in code and tests.
 */
import { computeEnvironmentCrd, runCrd, specSchema, type JsonSchema } from "./crd.js";
import type { ComputeEnvironment, ComputeEnvironmentSpec, Run, RunSpec } from "./types.js";

export function applyDefaults(schema: JsonSchema, value: unknown): unknown {
  if (Array.isArray(value)) {
    const items = schema.items as JsonSchema | undefined;
    return items ? value.map((v) => applyDefaults(items, v)) : value;
  }
  if (value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = { ...(value as Record<string, unknown>) };
  const props = schema.properties as Record<string, JsonSchema> | undefined;
  if (props) {
    for (const [key, prop] of Object.entries(props)) {
      const missing = out[key] === undefined || (out[key] === null && prop.nullable !== true);
      if (missing && prop.default !== undefined) out[key] = structuredClone(prop.default);
      if (out[key] !== undefined && out[key] !== null) out[key] = applyDefaults(prop, out[key]);
    }
  }
  const extra = schema.additionalProperties;
  if (extra && typeof extra === "object") {
    for (const [key, v] of Object.entries(out)) out[key] = applyDefaults(extra as JsonSchema, v);
  }
  return out;
}

let ceSpecSchema: JsonSchema | undefined;
let runSpecSchema: JsonSchema | undefined;

export function defaultComputeEnvironmentSpec(spec: ComputeEnvironmentSpec): ComputeEnvironmentSpec {
  ceSpecSchema ??= specSchema(computeEnvironmentCrd());
  return applyDefaults(ceSpecSchema, structuredClone(spec)) as ComputeEnvironmentSpec;
}

export function defaultRunSpec(spec: RunSpec): RunSpec {
  runSpecSchema ??= specSchema(runCrd());
  return applyDefaults(runSpecSchema, structuredClone(spec)) as RunSpec;
}

/** A copy of `ce` with the spec defaults applied. */
export function withComputeEnvironmentDefaults(ce: ComputeEnvironment): ComputeEnvironment {
  return { ...structuredClone(ce), spec: defaultComputeEnvironmentSpec(ce.spec) };
}

/** A copy of `run` with the spec defaults applied. */
export function withRunDefaults(run: Run): Run {
  return { ...structuredClone(run), spec: defaultRunSpec(run.spec) };
}
