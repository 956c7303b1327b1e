/**
 * Builds the CustomResourceDefinitions of ComputeEnvironment and Run from the TypeBox schemas.
 * `crdObjects()` is what the operator and the tests install; `renderCrds()` is what
 * `npm run gen:crds` writes to crds/ (and what the freshness test compares with).
 */
import type { TSchema } from "@sinclair/typebox";
import { stringify } from "yaml";
import { GROUP, LABEL_PART_OF, PART_OF_VALUE, VERSION } from "./constants.js";
import {
  ComputeEnvironmentSpecSchema,
  ComputeEnvironmentStatusSchema,
  RunSpecSchema,
  RunStatusSchema,
} from "./schema.js";
import { ComputeEnvironmentResource, RunResource } from "./types.js";
import { admissionPolicyObjects } from "./admission-policy.js";

/** A JSON-Schema node as plain JSON (what the apiserver stores in openAPIV3Schema). */
export type JsonSchema = { [key: string]: unknown };

/**
 * Keys of apiextensions.k8s.io/v1 JSONSchemaProps this project uses, in the order they are written
 * to the YAML (for readable, stable diffs). Anything else is a bug.
 */
const KEY_ORDER = [
  "type",
  "description",
  "required",
  "enum",
  "default",
  "format",
  "pattern",
  "minLength",
  "maxLength",
  "minimum",
  "maximum",
  "minItems",
  "maxItems",
  "minProperties",
  "maxProperties",
  "nullable",
  "x-kubernetes-preserve-unknown-fields",
  "x-kubernetes-list-type",
  "x-kubernetes-list-map-keys",
  "x-kubernetes-map-type",
  "x-kubernetes-validations",
  "properties",
  "items",
  "additionalProperties",
];
const ALLOWED_KEYS = new Set(KEY_ORDER);

/**
 * Turns a TypeBox schema into a plain structural OpenAPI schema: drops TypeBox's symbol keys
 * (JSON round trip), and throws on any keyword Kubernetes would reject, naming its path.
 */
export function toStructural(schema: TSchema, path = ""): JsonSchema {
  const plain = JSON.parse(JSON.stringify(schema)) as JsonSchema;
  check(plain, path || "<root>");
  return ordered(plain);
}

function ordered(node: JsonSchema): JsonSchema {
  const out: JsonSchema = {};
  for (const key of KEY_ORDER) {
    const v = node[key];
    if (v === undefined) continue;
    if (key === "properties") {
      out[key] = Object.fromEntries(
        Object.entries(v as Record<string, JsonSchema>).map(([k, child]) => [k, ordered(child)]),
      );
    } else if (key === "items" || key === "additionalProperties") {
      out[key] = ordered(v as JsonSchema);
    } else {
      out[key] = v;
    }
  }
  return out;
}

function check(node: JsonSchema, path: string): void {
  for (const key of Object.keys(node)) {
    if (!ALLOWED_KEYS.has(key)) throw new Error(`schema keyword "${key}" at ${path} is not allowed in a CRD`);
  }
  if (typeof node.type !== "string" && node["x-kubernetes-preserve-unknown-fields"] !== true) {
    throw new Error(`schema at ${path} has no type`);
  }
  const props = node.properties as Record<string, JsonSchema> | undefined;
  if (props) for (const [k, v] of Object.entries(props)) check(v, `${path}.${k}`);
  if (node.items) check(node.items as JsonSchema, `${path}[]`);
  if (node.additionalProperties !== undefined) {
    if (typeof node.additionalProperties !== "object" || props) {
      throw new Error(`additionalProperties at ${path} must be a schema and exclusive with properties`);
    }
    check(node.additionalProperties as JsonSchema, `${path}{}`);
  }
}

/** apiextensions.k8s.io/v1 CustomResourceColumnDefinition */
export interface PrinterColumn {
  name: string;
  type: "string" | "integer" | "number" | "boolean" | "date";
  jsonPath: string;
  description: string;
  priority?: number;
  format?: string;
}

/** The CRD as a plain object (apiextensions.k8s.io/v1 CustomResourceDefinition). */
export interface CrdObject {
  apiVersion: "apiextensions.k8s.io/v1";
  kind: "CustomResourceDefinition";
  metadata: { name: string; labels: Record<string, string> };
  spec: {
    group: string;
    scope: "Namespaced" | "Cluster";
    names: {
      kind: string;
      listKind: string;
      plural: string;
      singular: string;
      shortNames?: string[];
      categories: string[];
    };
    versions: Array<{
      name: string;
      served: boolean;
      storage: boolean;
      subresources: { status: Record<string, never> };
      additionalPrinterColumns: PrinterColumn[];
      selectableFields?: Array<{ jsonPath: string }>;
      schema: { openAPIV3Schema: JsonSchema };
    }>;
  };
}

function rootSchema(kindDescription: string, spec: TSchema, status: TSchema, kind: string): JsonSchema {
  return {
    type: "object",
    description: kindDescription,
    required: ["spec"],
    properties: {
      apiVersion: {
        type: "string",
        description: `Versioned schema of this representation of an object; "${GROUP}/${VERSION}".`,
      },
      kind: { type: "string", description: `Kind of object; "${kind}".` },
      // The apiserver allows nothing but `type` here (it documents ObjectMeta itself).
      metadata: { type: "object" },
      spec: toStructural(spec, `${kind}.spec`),
      status: toStructural(status, `${kind}.status`),
    },
  };
}

const CATEGORIES = ["vmforge"];

const AGE: PrinterColumn = {
  name: "Age",
  type: "date",
  jsonPath: ".metadata.creationTimestamp",
  description: "Time since the object was created.",
};

interface CrdParts {
  rt: typeof ComputeEnvironmentResource;
  shortNames?: string[];
  columns: PrinterColumn[];
  selectableField: string;
  description: string;
  spec: TSchema;
  status: TSchema;
}

/** One namespaced CRD with a status subresource; only what differs between the kinds is passed in. */
function crdFor(p: CrdParts): CrdObject {
  const { rt } = p;
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: `${rt.plural}.${rt.group}`, labels: { [LABEL_PART_OF]: PART_OF_VALUE } },
    spec: {
      group: rt.group,
      scope: "Namespaced",
      names: {
        kind: rt.kind,
        listKind: `${rt.kind}List`,
        plural: rt.plural,
        singular: rt.kind.toLowerCase(),
        ...(p.shortNames ? { shortNames: p.shortNames } : {}),
        categories: CATEGORIES,
      },
      versions: [
        {
          name: rt.version,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: p.columns,
          selectableFields: [{ jsonPath: p.selectableField }],
          schema: { openAPIV3Schema: rootSchema(p.description, p.spec, p.status, rt.kind) },
        },
      ],
    },
  };
}

export function computeEnvironmentCrd(): CrdObject {
  return crdFor({
    rt: ComputeEnvironmentResource,
    shortNames: ["ce"],
    columns: [
      { name: "Provider", type: "string", jsonPath: ".spec.provider", description: "Cloud provider." },
      { name: "Region", type: "string", jsonPath: ".spec.aws.region", description: "AWS region." },
      { name: "Location", type: "string", jsonPath: ".spec.azure.location", description: "Azure location." },
      { name: "Phase", type: "string", jsonPath: ".status.phase", description: "Summary of the state." },
      {
        name: "Ready",
        type: "string",
        jsonPath: '.status.conditions[?(@.type=="Ready")].status',
        description: "Status of the Ready condition.",
      },
      {
        name: "Active",
        type: "integer",
        jsonPath: ".status.activeRuns",
        description: "Runs that currently have a machine.",
      },
      AGE,
      {
        name: "Message",
        type: "string",
        jsonPath: '.status.conditions[?(@.type=="Ready")].message',
        description: "Message of the Ready condition.",
        priority: 1,
      },
    ],
      selectableField: ".spec.provider",
      description:
        "A ComputeEnvironment holds the cloud settings and the cloud resources (IAM role and instance profile on AWS; resource group, identity, logs and network on Azure) that Runs use to start one virtual machine per pipeline run.",
      spec: ComputeEnvironmentSpecSchema,
      status: ComputeEnvironmentStatusSchema,
    });
  }

  export function runCrd(): CrdObject {
    return crdFor({
      rt: RunResource,
    columns: [
      {
        name: "CE",
        type: "string",
        jsonPath: ".spec.computeEnvironmentRef.name",
        description: "ComputeEnvironment the run uses.",
      },
      { name: "Phase", type: "string", jsonPath: ".status.phase", description: "Where the run is in its life." },
      { name: "Instance", type: "string", jsonPath: ".status.instance.id", description: "Machine running the pipeline." },
      { name: "Exit Code", type: "integer", jsonPath: ".status.exitCode", description: "Exit code of the pipeline." },
      AGE,
      {
        name: "Reason",
        type: "string",
        jsonPath: ".status.reason",
        description: "Reason for the current phase.",
        priority: 1,
      },
      {
        name: "Message",
        type: "string",
        jsonPath: ".status.message",
        description: "Detail about the current phase.",
        priority: 1,
      },
    ],
      selectableField: ".spec.computeEnvironmentRef.name",
      description:
        "A Run executes one Nextflow pipeline on one virtual machine of a ComputeEnvironment, follows it to the end and makes sure the machine is gone. Runs are once-only: only spec.cancel and spec.ttlSecondsAfterFinished may change after creation.",
      spec: RunSpecSchema,
      status: RunStatusSchema,
    });
  }

  /** Both CRDs as plain objects, ComputeEnvironment first. Fresh objects on every call. */
  export function crdObjects(): CrdObject[] {
    return [computeEnvironmentCrd(), runCrd()];
  }

  const HEADER = "# Generated from src/api by `npm run gen:crds`. Do not edit by hand.\n";

  /**
   * The files as they are checked in (path relative to the repository root and YAML text): the
   * CRDs, then the admission policy for what their rules cannot check (./admission-policy.ts).
   */
  export function renderCrds(): { file: string; yaml: string }[] {
    const crds = crdObjects().map((crd) => ({
      file: `crds/${crd.metadata.name}.yaml`,
      yaml: HEADER + stringify(crd, { lineWidth: 0, indent: 2, aliasDuplicateObjects: false }),
    }));
    const policies = admissionPolicyObjects().map((o) => ({
      file: `crds/${o.metadata.name}.${o.kind === "ValidatingAdmissionPolicy" ? "policy" : "binding"}.yaml`,
      yaml: HEADER + stringify(o, { lineWidth: 0, indent: 2, aliasDuplicateObjects: false }),
    }));
    return [...crds, ...policies];
  }

  /** The openAPIV3Schema of `spec` in a CRD (handy for tests and for defaulting). */
  export function specSchema(crd: CrdObject): JsonSchema {
    const root = crd.spec.versions[0]?.schema.openAPIV3Schema;
    const spec = (root?.properties as Record<string, JsonSchema> | undefined)?.spec;
    if (!spec) throw new Error(`CRD ${crd.metadata.name} has no spec schema`);
    return spec;
  }
