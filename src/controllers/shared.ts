/**
 * Pieces both reconcilers share: the Kubernetes resource types they touch, the credentials Secret
 * (reading it and protecting it from deletion while a ComputeEnvironment uses it) and the
 * translation of provider errors into conditions.
 */
import type { KubeClient, KubeObject, ResourceType } from "../engine/kube.js";
import { KubeApiError } from "../engine/kube.js";
import { ensureFinalizer, removeFinalizer } from "../engine/finalizers.js";
import type { Condition } from "../engine/conditions.js";
import { setCondition } from "../engine/conditions.js";
import type { ComputeEnvironment } from "../api/types.js";
import { ComputeEnvironmentResource } from "../api/types.js";
import { FINALIZER } from "../api/constants.js";
import type { ResolvedCredentials } from "../cloud/provider.js";
import { CloudError } from "../cloud/provider.js";
import { noteFreshRead } from "./fresh-reads.js";

export const SecretResource: ResourceType = { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true };

/** Finalizer vmforge puts on its own objects (defined with the API). */
export { FINALIZER };
/** Finalizer vmforge puts on a credentials Secret while a ComputeEnvironment uses it. */
export const SECRET_IN_USE_FINALIZER = "vmforge.dev/credentials-in-use";
/** Label vmforge puts on a credentials Secret it protects, so the operator can watch just those. */
export const SECRET_LABEL = "vmforge.dev/credentials";

export interface SecretObject extends KubeObject {
  data?: Record<string, string>;
  stringData?: Record<string, string>;
  type?: string;
}

/** A Secret problem the user must fix; the message names the Secret and key, never a value. */
export class CredentialsError extends Error {
  readonly reason: string;
  constructor(reason: string, message: string) {
    super(message);
    this.name = "CredentialsError";
    this.reason = reason;
  }
}

/**
 * An answer that trying again will not change without the user (a Terminal cloud error such as
 * AccessDenied, or a Secret to fix): said on the resource and tried again slowly, never in a loop.
 */
export function refusedForGood(e: unknown): boolean {
  return (e instanceof CloudError && e.kind === "Terminal") || e instanceof CredentialsError;
}

/** Reads a Secret: from the operator's cache when it holds it, else from the API. */
/** `signal` ends a read the cache cannot answer (its GET). */
export type SecretGetter = (namespace: string, name: string, signal?: AbortSignal) => Promise<SecretObject | undefined>;

/**
 * Serves Secret reads from the watch cache of the Secrets vmforge protects (labelled), and falls
 * back to one GET for a Secret the cache does not hold (not labelled yet, or missing). Once
 * protectSecret labelled it, reads of that Secret cost nothing.
 */
export class SecretReader {
  /** GETs that the cache could not answer (tests and metrics look at it). */
  misses = 0;
  constructor(
    private readonly client: KubeClient,
    private readonly cache: { get(key: string): SecretObject | undefined },
  ) {}

  readonly get: SecretGetter = async (namespace, name, signal) => {
    const cached = this.cache.get(`${namespace}/${name}`);
    if (cached) return cached;
    this.misses++;
    return this.client.get<SecretObject>(SecretResource, namespace, name, signal ? { signal } : {});
  };
}

/** Reads and decodes the CE's credentials Secret, or returns the ambient identity when none is set. */
export async function resolveCredentials(client: KubeClient, ce: ComputeEnvironment, getSecret?: SecretGetter, signal?: AbortSignal): Promise<ResolvedCredentials> {
  const ref = ce.spec.credentials?.secretRef;
  if (!ref?.name) return { source: "ambient", data: {} };
  const ns = ce.metadata.namespace ?? "default";
  const secret = getSecret ? await getSecret(ns, ref.name, signal) : await client.get<SecretObject>(SecretResource, ns, ref.name, signal ? { signal } : {});
  if (!secret) {
    throw new CredentialsError("SecretNotFound", `credentials Secret ${ns}/${ref.name} does not exist`);
  }
  if (secret.metadata.deletionTimestamp && !secret.metadata.finalizers?.includes(SECRET_IN_USE_FINALIZER)) {
    throw new CredentialsError("SecretDeleting", `credentials Secret ${ns}/${ref.name} is being deleted`);
  }
  const data: Record<string, string> = {};
  for (const [k, v] of Object.entries(secret.data ?? {})) data[k] = Buffer.from(v, "base64").toString("utf8");
  if (Object.keys(data).length === 0) {
    throw new CredentialsError("SecretEmpty", `credentials Secret ${ns}/${ref.name} has no data`);
  }
  return { source: "secret", secretName: `${ns}/${ref.name}`, data };
}

/** Reads one key of a Secret (e.g. the Seqera Platform token). Returns undefined when absent. */
export async function readSecretKey(client: KubeClient, namespace: string, name: string, key: string, getSecret?: SecretGetter, signal?: AbortSignal): Promise<string | undefined> {
  const secret = getSecret ? await getSecret(namespace, name, signal) : await client.get<SecretObject>(SecretResource, namespace, name, signal ? { signal } : {});
  const v = secret?.data?.[key];
  return v === undefined ? undefined : Buffer.from(v, "base64").toString("utf8");
}

/**
 * Adds our finalizer and label to the credentials Secret so it cannot vanish while a CE needs it
 * (deleting it only marks it; the data stays readable until the CE releases it). The label lets
 * the operator watch just the Secrets it protects.
 */
export async function protectSecret(client: KubeClient, namespace: string, name: string, getSecret?: SecretGetter): Promise<void> {
  let secret = getSecret ? await getSecret(namespace, name) : await client.get<SecretObject>(SecretResource, namespace, name);
  if (!secret || secret.metadata.deletionTimestamp) return; // no finalizer can be added to an object being deleted
  // Already protected (the usual case, answered from the cache): no request at all.
  if (secret.metadata.labels?.[SECRET_LABEL] === "true" && secret.metadata.finalizers?.includes(SECRET_IN_USE_FINALIZER)) return;
  if (secret.metadata.labels?.[SECRET_LABEL] !== "true") {
    secret = await client.patch<SecretObject>(SecretResource, namespace, name, { metadata: { labels: { [SECRET_LABEL]: "true" } } }, "merge");
  }
  await ensureFinalizer(client, SecretResource, secret, SECRET_IN_USE_FINALIZER);
}

/**
 * Releases every Secret vmforge protects in `namespace` that no ComputeEnvironment still needs: a
 * Secret is needed while a CE that names it holds the vmforge finalizer (its disposal may still
 * read it). Reads fresh from the API, not from a cache, so two CEs finishing at once, or a CE that
 * switched to another Secret, cannot leave a Secret stuck. `finishing` is a CE about to release
 * its own finalizer (it no longer counts).
 */
/** `alsoNeeded`: Secrets to keep besides those of CEs holding the finalizer (those of removed CEs whose machines are still being terminated). */
export async function releaseUnusedSecrets(client: KubeClient, namespace: string, finishing?: string, alsoNeeded: Iterable<string> = []): Promise<string[]> {
  noteFreshRead("secrets", "secret-release");
  noteFreshRead("computeenvironments", "secret-release");
  const [secrets, ces] = await Promise.all([
    client.list<SecretObject>(SecretResource, { namespace, labelSelector: `${SECRET_LABEL}=true` }),
    client.list<ComputeEnvironment>(ComputeEnvironmentResource, { namespace }),
  ]);
  const needed = new Set(
    ces.items
      .filter((ce) => ce.metadata.uid !== finishing && (ce.metadata.finalizers ?? []).includes(FINALIZER))
      .map((ce) => ce.spec.credentials?.secretRef?.name)
      .filter((n): n is string => !!n),
  );
  for (const n of alsoNeeded) needed.add(n);
  const released: string[] = [];
  for (const secret of secrets.items) {
    const name = secret.metadata.name ?? "";
    if (needed.has(name) || !(secret.metadata.finalizers ?? []).includes(SECRET_IN_USE_FINALIZER)) continue;
    await removeFinalizer(client, SecretResource, secret, SECRET_IN_USE_FINALIZER);
    released.push(name);
  }
  return released;
}

export function now(): string {
  return new Date().toISOString();
}

/** Sets the kstatus trio (Ready, Reconciling, Stalled) in one go. */
export function kstatus(
  conditions: Condition[] | undefined,
  generation: number | undefined,
  state: "ready" | "reconciling" | "stalled",
  reason: string,
  message: string,
): Condition[] {
  const g = generation === undefined ? {} : { observedGeneration: generation };
  let c = setCondition(conditions ?? [], { type: "Ready", status: state === "ready" ? "True" : "False", reason, message, ...g });
  // Reconciling and Stalled carry the reason only while they are the state; otherwise a neutral one.
  for (const [type, own, neutral] of [["Reconciling", "reconciling", "Idle"], ["Stalled", "stalled", "Progressing"]] as const) {
    const mine = state === own;
    c = setCondition(c, { type, status: mine ? "True" : "False", reason: mine ? reason : neutral, message: mine ? message : "", ...g });
  }
  return c;
}

/** A short, human message for an error; CloudError and CredentialsError messages are written for people. */
export function describeError(e: unknown): { reason: string; message: string } {
  if (e instanceof CloudError) return { reason: e.reason, message: e.message };
  if (e instanceof CredentialsError) return { reason: e.reason, message: e.message };
  if (e instanceof KubeApiError) return { reason: `Kube${e.reason || e.status}`, message: e.message };
  if (e instanceof Error) return { reason: "InternalError", message: e.message };
  return { reason: "InternalError", message: String(e) };
}

/** Caps a message so a status or Event never carries a wall of text. */
export function clip(s: string, max = 1000): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}
