/**
 * Shared set-up of the Azure operator tests: an operator principal holding exactly the seed's roles
 * (seed 001, read from the product document), the built-in Reader and the documented additions; its
 * credentials Secret; ComputeEnvironment bodies and waits on their conditions.
 */
import { readFileSync } from "node:fs";
import type { ResourceManagementClient } from "@azure/arm-resources";
import type { KubeClient } from "../../src/engine/kube.js";
import type { Condition } from "../../src/engine/conditions.js";
import { ComputeEnvironmentResource } from "../../src/api/types.js";
import type { ComputeEnvironment } from "../../src/api/types.js";
import type { ResolvedCredentials } from "../../src/cloud/provider.js";
import { AZURE_PHASES, azureAdditions, renderAzureRole, type AzurePhase } from "../../src/cloud/azure/policy.js";
import { SecretResource } from "../../src/controllers/shared.js";
import { waitFor } from "./operator.js";
import { azureCaPath, azureControl, azureEndpoint } from "../harness/helpers.js";
import type { AzureEndpoints } from "../../src/cloud/azure/clients.js";
import { AzureProvider, type AzureProviderOptions } from "../../src/cloud/azure/provider.js";
import type { EmulatorInfo, RoleJson } from "../azure-emulator/control.js";
import { seedPath } from "../harness/seed-policy.js";

/** The emulator as an AzureProvider reaches it: ARM and Entra on its HTTPS endpoint, its CA trusted, LROs polled every 20 ms. */
export function emulatorEndpoints(): AzureEndpoints {
  return { arm: azureEndpoint(), authorityHost: azureEndpoint(), ca: readFileSync(azureCaPath(), "utf8"), lroPollMs: 20 };
}

/** A new AzureProvider on the emulator's endpoints (`over` adds options other than the endpoints). */
export function emulatorProvider(over: Omit<AzureProviderOptions, "endpoints"> = {}): AzureProvider {
  return new AzureProvider({ endpoints: emulatorEndpoints(), ...over });
}

export const LOCATION = "westeurope";
export const STORAGE = "vmfwork";

/** The work directory's storage account (STORAGE in resource group data-rg) and its container "work": the customer's, not the operator's to create. */
export async function createWorkStorage(rm: ResourceManagementClient, subscriptionId: string): Promise<void> {
  await rm.resourceGroups.createOrUpdate("data-rg", { location: LOCATION });
  const sa = `subscriptions/${subscriptionId}/resourceGroups/data-rg/providers/Microsoft.Storage/storageAccounts/${STORAGE}`;
  // (the *ById methods take the ID without its leading slash)
  await rm.resources.createOrUpdateById(sa, "2023-05-01", { location: LOCATION });
  await rm.resources.createOrUpdateById(`${sa}/blobServices/default/containers/work`, "2023-05-01", {});
}

export interface Principal {
  objectId: string;
  clientId: string;
  secret: string;
}

/** The seed's role of a phase, read from the product document (seed 001) at test time, optionally without some actions. */
export async function grantPhase(info: EmulatorInfo, p: Pick<Principal, "objectId">, phase: AzurePhase, without: string[] = []): Promise<void> {
  const roleName = renderAzureRole(phase).properties.roleName;
  await azureControl().grantSeedRole({ principalId: p.objectId, seedFile: seedPath("001"), roleName, subscriptionId: info.subscriptionId, without });
}

/** A principal holding the seed's four roles, the built-in Reader and the documented additions (minus `without`). */
export async function operatorPrincipal(info: EmulatorInfo, name: string, without: Partial<Record<AzurePhase, string[]>> = {}, opts: GrantOptions = {}): Promise<Principal> {
  const created = await azureControl().createPrincipal({ displayName: name });
  const p = { objectId: created.objectId, clientId: created.clientId, secret: created.secret! };
  await grantOperatorRoles(info, p.objectId, name, without, opts);
  return p;
}

export interface GrantOptions {
  /** false: without the built-in Reader. */
  reader?: boolean;
  /** Documented additions left out (e.g. "Microsoft.Compute/disks/delete"). */
  withoutAdditions?: string[];
}

/** Gives any principal (an app, a managed identity) what the operator needs: the seed's four roles, Reader and the documented additions. */
export async function grantOperatorRoles(info: EmulatorInfo, objectId: string, name: string, without: Partial<Record<AzurePhase, string[]>> = {}, opts: GrantOptions = {}): Promise<void> {
  const ctl = azureControl();
  for (const phase of AZURE_PHASES) await grantPhase(info, { objectId }, phase, without[phase] ?? []);
  if (opts.reader !== false) await ctl.assignRole({ principalId: objectId, scope: `/subscriptions/${info.subscriptionId}`, roleName: "Reader" });
  const left = new Set(opts.withoutAdditions ?? []);
  const add = Object.fromEntries(Object.entries(azureAdditions()).map(([ph, list]) => [ph, list.filter((a) => !left.has(a.action))])) as ReturnType<typeof azureAdditions>;
  const role: RoleJson = {
    properties: {
      roleName: `vmforge-additions-${name}`,
      assignableScopes: [`/subscriptions/${info.subscriptionId}`],
      permissions: [{
        actions: AZURE_PHASES.flatMap((ph) => add[ph].filter((a) => !a.dataAction).map((a) => a.action)),
        dataActions: AZURE_PHASES.flatMap((ph) => add[ph].filter((a) => a.dataAction).map((a) => a.action)),
        notActions: [],
        notDataActions: [],
      }],
    },
  };
  await ctl.assignRole({ principalId: objectId, scope: `/subscriptions/${info.subscriptionId}`, role });
}

/** What the credentials Secret of a principal holds. */
export function secretData(info: EmulatorInfo, p: Principal): Record<string, string> {
  return { tenantId: info.tenantId, clientId: p.clientId, clientSecret: p.secret, subscriptionId: info.subscriptionId };
}

/** The credentials a provider is given for a principal's Secret, as the reconcilers resolve them. */
export function secretCredentials(info: EmulatorInfo, p: Principal, name = "azure-creds"): ResolvedCredentials {
  return { source: "secret", secretName: name, data: secretData(info, p) };
}

export async function putSecret(kube: KubeClient, info: EmulatorInfo, ns: string, name: string, p: Principal): Promise<void> {
  const data = secretData(info, p);
  const body = { apiVersion: "v1", kind: "Secret", metadata: { name, namespace: ns }, type: "Opaque", data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString("base64")])) };
  const existing = await kube.get(SecretResource, ns, name);
  if (existing) await kube.patch(SecretResource, ns, name, { data: body.data }, "merge");
  else await kube.create(SecretResource, body);
}

export function ceBody(ns: string, name: string, over: Record<string, unknown> = {}, secret = "azure-creds"): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { name, namespace: ns },
    spec: {
      provider: "azure",
      credentials: { secretRef: { name: secret } },
      azure: { location: LOCATION, storageAccount: STORAGE, workDir: "az://work/runs", ...over },
    },
  } as unknown as ComputeEnvironment;
}

export const cond = (ce: ComputeEnvironment | undefined, type: string): Condition | undefined => ce?.status?.conditions?.find((c) => c.type === type);

export async function getCe(kube: KubeClient, ns: string, name: string): Promise<ComputeEnvironment | undefined> {
  return kube.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name);
}

export async function waitReady(kube: KubeClient, ns: string, name: string, timeoutMs = 60_000): Promise<ComputeEnvironment> {
  return waitFor(`${ns}/${name} Ready`, async () => {
    const ce = await getCe(kube, ns, name);
    const stalled = cond(ce, "Stalled");
    if (stalled?.status === "True") throw new Error(`Stalled ${stalled.reason}: ${stalled.message}`);
    if (cond(ce, "Ready")?.status === "True" && ce?.status?.observedGeneration === ce?.metadata.generation) return ce;
    const r = cond(ce, "Reconciling");
    throw new Error(`not Ready yet: ${r?.reason ?? "-"}: ${r?.message ?? "-"}`);
  }, timeoutMs, 250);
}

export async function waitStalled(kube: KubeClient, ns: string, name: string, reason: string): Promise<Condition> {
  return waitFor(`${ns}/${name} Stalled ${reason}`, async () => {
    const c = cond(await getCe(kube, ns, name), "Stalled");
    return c?.status === "True" && c.reason === reason ? c : undefined;
  }, 60_000, 250);
}

export async function waitGone(kube: KubeClient, ns: string, name: string): Promise<void> {
  await waitFor(`${ns}/${name} gone`, async () => (await getCe(kube, ns, name)) === undefined, 90_000, 250);
}
