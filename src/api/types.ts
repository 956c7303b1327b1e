/**
 * Static types of the vmforge API, derived from the TypeBox schemas in ./schema.ts, plus the
 * ResourceType descriptors the controllers use with the engine's KubeClient.
 */
import type { Static } from "@sinclair/typebox";
import type { KubeObject, ResourceType } from "../engine/kube.js";
import type {
  AwsEnvironmentSchema,
  AzureEnvironmentSchema,
  CloudResourceRefSchema,
  ComputeEnvironmentSpecSchema,
  ComputeEnvironmentStatusSchema,
  ConditionSchema,
  PipelineSchema,
  RunSpecSchema,
  RunStatusSchema,
  SecretKeyRefSchema,
} from "./schema.js";
import { GROUP, VERSION } from "./constants.js";

export * from "./constants.js";
export { parseDuration, isDuration, formatDuration, DURATION_PATTERN, MIN_RUN_TIMEOUT } from "./duration.js";
export type { KubeObject, ResourceType };

export const ComputeEnvironmentResource: ResourceType = {
  group: GROUP,
  version: VERSION,
  plural: "computeenvironments",
  kind: "ComputeEnvironment",
  namespaced: true,
};

export const RunResource: ResourceType = {
  group: GROUP,
  version: VERSION,
  plural: "runs",
  kind: "Run",
  namespaced: true,
};

/** Same shape as the engine's Condition (metav1.Condition style). */
export type Condition = Static<typeof ConditionSchema>;
export type SecretKeyRef = Static<typeof SecretKeyRefSchema>;
export type AwsEnvironment = Static<typeof AwsEnvironmentSchema>;
export type AzureEnvironment = Static<typeof AzureEnvironmentSchema>;
export type ComputeEnvironmentSpec = Static<typeof ComputeEnvironmentSpecSchema>;
export type CloudResourceRef = Static<typeof CloudResourceRefSchema>;
export type ComputeEnvironmentStatus = Static<typeof ComputeEnvironmentStatusSchema>;
export type Pipeline = Static<typeof PipelineSchema>;
export type RunSpec = Static<typeof RunSpecSchema>;
export type RunStatus = Static<typeof RunStatusSchema>;
export type Provider = ComputeEnvironmentSpec["provider"];

export type ComputeEnvironment = KubeObject & { spec: ComputeEnvironmentSpec; status?: ComputeEnvironmentStatus };
export type Run = KubeObject & { spec: RunSpec; status?: RunStatus };
