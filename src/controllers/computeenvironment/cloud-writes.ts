/**
 * The record that cloud writes may have happened for a ComputeEnvironment (as Crossplane's
 * external-create-pending annotation): written BEFORE the first write to the cloud (provisioning
 * its resources or launching a Run's machine). Without it, deletion has nothing to dispose and
 * releases the finalizer at once, whatever the credentials; with it, deletion cleans up and says
 * what blocks it.
 */
import type { KubeClient } from "../../engine/kube.js";
import type { ComputeEnvironment } from "../../api/types.js";
import { ComputeEnvironmentResource } from "../../api/types.js";
import { getCondition } from "../../engine/conditions.js";

export const CLOUD_WRITES_ANNOTATION = "vmforge.dev/cloud-writes-since";

/**
 * Whether the cloud may hold something of this CE. CEs from before the annotation existed count
 * when their status shows resources or a completed provisioning.
 */
export function cloudWritesMayHaveHappened(ce: ComputeEnvironment): boolean {
  if (ce.metadata.annotations?.[CLOUD_WRITES_ANNOTATION]) return true;
  if ((ce.status?.resources?.length ?? 0) > 0) return true;
  return getCondition(ce.status?.conditions, "ResourcesProvisioned")?.status === "True";
}

/**
 * Records (once) that cloud writes may start now, leaving `ce` as it is (a cached CE is frozen);
 * returns the CE's annotations with the record added, or undefined when `ce` shows it already.
 */
export async function announceCloudWrites(client: KubeClient, ce: ComputeEnvironment): Promise<Record<string, string> | undefined> {
  if (ce.metadata.annotations?.[CLOUD_WRITES_ANNOTATION]) return undefined;
  const at = new Date().toISOString();
  await client.patch(ComputeEnvironmentResource, ce.metadata.namespace, ce.metadata.name ?? "", { metadata: { annotations: { [CLOUD_WRITES_ANNOTATION]: at } } }, "merge");
  return { ...(ce.metadata.annotations ?? {}), [CLOUD_WRITES_ANNOTATION]: at };
}

/** announceCloudWrites on the CE reconciler's own copy, which then shows the record (updated in place). */
export async function markCloudWrites(client: KubeClient, ce: ComputeEnvironment): Promise<void> {
  const annotations = await announceCloudWrites(client, ce);
  if (annotations) ce.metadata.annotations = annotations;
}
