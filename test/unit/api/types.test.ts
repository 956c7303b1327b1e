import { describe, expectTypeOf, it } from "vitest";
import type { Condition as EngineCondition } from "../../../src/engine/conditions.js";
import type { KubeObject, ResourceType as EngineResourceType } from "../../../src/engine/kube.js";
import type {
  CloudResourceRef,
  ComputeEnvironment,
  ComputeEnvironmentSpec,
  ComputeEnvironmentStatus,
  Condition,
  ResourceType,
  Run,
  RunSpec,
  RunStatus,
} from "../../../src/api/types.js";

// Compile-time checks: `npm run typecheck` (tsc) fails when a static type derived from the TypeBox
// schemas drifts from the contract's field names and types. At run time these are no-ops.
describe("static API types", () => {
  it("are interchangeable with the engine's Condition and usable as KubeObjects", () => {
    expectTypeOf<Condition>().toEqualTypeOf<EngineCondition>();
    expectTypeOf<ResourceType>().toEqualTypeOf<EngineResourceType>();
    expectTypeOf<ComputeEnvironment>().toExtend<KubeObject>();
    expectTypeOf<Run>().toExtend<KubeObject>();
  });

  it("type the ComputeEnvironment spec as the contract says", () => {
    expectTypeOf<ComputeEnvironmentSpec["provider"]>().toEqualTypeOf<"aws" | "azure">();
    expectTypeOf<NonNullable<ComputeEnvironmentSpec["aws"]>["region"]>().toEqualTypeOf<string>();
    expectTypeOf<NonNullable<ComputeEnvironmentSpec["aws"]>["subnetIds"]>().toEqualTypeOf<string[] | undefined>();
    expectTypeOf<NonNullable<ComputeEnvironmentSpec["aws"]>["tags"]>().toEqualTypeOf<Record<string, string> | undefined>();
    expectTypeOf<NonNullable<ComputeEnvironmentSpec["aws"]>["bootDiskSizeGiB"]>().toEqualTypeOf<number | undefined>();
    expectTypeOf<ComputeEnvironmentSpec["deletionPolicy"]>().toEqualTypeOf<"Delete" | "Retain" | undefined>();
    expectTypeOf<NonNullable<ComputeEnvironmentSpec["credentials"]>>().toEqualTypeOf<{ secretRef?: { name: string } }>();
    expectTypeOf<NonNullable<ComputeEnvironmentSpec["platformTokenSecretRef"]>>().toEqualTypeOf<{ name: string; key?: string }>();
    expectTypeOf<NonNullable<ComputeEnvironmentSpec["azure"]>["network"]>().toEqualTypeOf<{ subnetId: string } | undefined>();
  });

  it("type the statuses as the contract says", () => {
    expectTypeOf<ComputeEnvironmentStatus["phase"]>().toEqualTypeOf<
      "Pending" | "Provisioning" | "Ready" | "Failed" | "Deleting" | undefined
    >();
    expectTypeOf<CloudResourceRef>().toEqualTypeOf<{ kind: string; id: string; name?: string }>();
    expectTypeOf<NonNullable<ComputeEnvironmentStatus["aws"]>["architecture"]>().toEqualTypeOf<"x86_64" | "arm64" | undefined>();
    expectTypeOf<ComputeEnvironmentStatus["azure"]>().toEqualTypeOf<Record<string, string> | undefined>();
    expectTypeOf<RunStatus["phase"]>().toEqualTypeOf<
      "Pending" | "Launching" | "Running" | "Succeeded" | "Failed" | "Cancelled" | undefined
    >();
    expectTypeOf<NonNullable<RunStatus["log"]>["provider"]>().toEqualTypeOf<"cloudwatch" | "loganalytics">();
    expectTypeOf<NonNullable<RunStatus["instance"]>["id"]>().toEqualTypeOf<string>();
    expectTypeOf<RunStatus["exitCode"]>().toEqualTypeOf<number | undefined>();
  });

  it("type the Run spec as the contract says", () => {
    expectTypeOf<RunSpec["computeEnvironmentRef"]>().toEqualTypeOf<{ name: string }>();
    expectTypeOf<RunSpec["pipeline"]["repository"]>().toEqualTypeOf<string>();
    expectTypeOf<RunSpec["pipeline"]["params"]>().toEqualTypeOf<Record<string, unknown> | undefined>();
    expectTypeOf<RunSpec["pipeline"]["profiles"]>().toEqualTypeOf<string[] | undefined>();
    expectTypeOf<RunSpec["overrides"]>().toEqualTypeOf<
      { instanceType?: string; bootDiskSizeGiB?: number; spot?: boolean } | undefined
    >();
    expectTypeOf<RunSpec["timeout"]>().toEqualTypeOf<string | undefined>();
    expectTypeOf<RunSpec["cancel"]>().toEqualTypeOf<boolean | undefined>();
  });
});
