/**
 * The lowest Kubernetes version vmforge supports, and the start-up check that enforces it. The
 * CRDs use selectable fields (field selectors on spec.computeEnvironmentRef.name), GA in 1.32 and
 * on by default since 1.31. The same number is the Helm chart's kubeVersion and an annotation of
 * both Deployments (deploy/ and the chart); unit tests keep them equal.
 */
import type { KubeClient } from "./engine/kube.js";

export const MIN_KUBERNETES_VERSION = "1.31";

export interface ServerVersion {
  major?: string;
  minor?: string;
  gitVersion?: string;
}

/** [major, minor] of a /version answer; providers' minors like "31+" count as 31. */
export function serverMinor(v: ServerVersion): [number, number] | undefined {
  const major = Number.parseInt(v.major ?? "", 10);
  const minor = Number.parseInt(v.minor ?? "", 10);
  if (Number.isFinite(major) && Number.isFinite(minor)) return [major, minor];
  const m = /^v?(\d+)\.(\d+)/.exec(v.gitVersion ?? "");
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

/** Undefined when `v` is new enough, else a message saying what is needed. */
export function versionProblem(v: ServerVersion, min = MIN_KUBERNETES_VERSION): string | undefined {
  const have = serverMinor(v);
  const [wantMajor, wantMinor] = min.split(".").map(Number) as [number, number];
  const shown = v.gitVersion ?? `${v.major ?? "?"}.${v.minor ?? "?"}`;
  if (!have) return `cannot tell the Kubernetes version of the API server (/version says ${JSON.stringify(v)}); vmforge needs ${min} or newer`;
  if (have[0] > wantMajor || (have[0] === wantMajor && have[1] >= wantMinor)) return undefined;
  return `vmforge needs Kubernetes ${min} or newer; the API server is ${shown}`;
}

export class UnsupportedKubernetesError extends Error {
  override readonly name = "UnsupportedKubernetesError";
}

/**
 * Reads /version and throws UnsupportedKubernetesError when the API server is older than
 * MIN_KUBERNETES_VERSION (other failures, e.g. an unreachable server, are thrown as they come).
 */
export async function requireKubernetesVersion(client: KubeClient): Promise<void> {
  const problem = versionProblem((await client.request("GET", "/version")) as ServerVersion);
  if (problem) throw new UnsupportedKubernetesError(problem);
}
