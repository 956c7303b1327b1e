/**
 * Azure ComputeEnvironments without a credentials Secret (issue 10): the operator's own identity,
 * chosen explicitly (VMFORGE_AZURE_AMBIENT_IDENTITY), through the operator on the real
 * kube-apiserver and the Azure emulator's Entra ID:
 * - workload identity: a projected service-account token of the test cluster, exchanged at the
 *   emulator's token endpoint against a federated credential (issuer, subject, audience checked);
 * - managed identity: a user-assigned identity served over the IMDS protocol.
 * Each principal holds exactly the roles the Secret-based tests give (seed 001, Reader, the
 * documented additions). The CE goes Ready, its calls are made as that principal, and it is
 * disposed of. A broken identity is Stalled InvalidCredentials naming which identity failed.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { ManagedServiceIdentityClient } from "@azure/arm-msi";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource } from "../../src/api/types.js";
import type { ComputeEnvironment } from "../../src/api/types.js";
import { AzureProvider } from "../../src/cloud/azure/provider.js";
import { TAG_CE_UID, resourceGroupName } from "../../src/cloud/azure/names.js";
import { installCrds, startOperator, waitFor, type RunningOperator } from "../support/operator.js";
import { azureClientOptions, azureControl, azureInfo, azureTestCredential, freshNamespace, kubeAdmin, kubeconfigPath } from "../harness/helpers.js";
import { kubeIssuer } from "../harness/azure-kube.js";
import type { EmulatorInfo } from "../azure-emulator/control.js";
import { LOCATION, STORAGE, cond, getCe, grantOperatorRoles, waitGone, waitReady, waitStalled, createWorkStorage, emulatorEndpoints } from "../support/azure-env.js";

let kube: KubeClient;
let info: EmulatorInfo;
let rm: ResourceManagementClient;
const operators: RunningOperator[] = [];
const dirs: string[] = [];
const savedPodIdentityHost = process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;

/** A CE without spec.credentials: the operator's ambient identity; the subscription from the spec. */
function ambientCe(ns: string, name: string): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { name, namespace: ns },
    spec: { provider: "azure", azure: { subscriptionId: info.subscriptionId, location: LOCATION, storageAccount: STORAGE, workDir: "az://work/runs" } },
  } as unknown as ComputeEnvironment;
}

async function serviceAccountTokenFile(ns: string, sa: string): Promise<string> {
  await kubeAdmin().expect("POST", `/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: sa } });
  const tr = await kubeAdmin().expect("POST", `/api/v1/namespaces/${ns}/serviceaccounts/${sa}/token`, {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: { audiences: ["api://AzureADTokenExchange"], expirationSeconds: 3600 },
  });
  const d = mkdtempSync(join(tmpdir(), "vmforge-azwi-"));
  dirs.push(d);
  const f = join(d, "token");
  writeFileSync(f, (tr.body as { status: { token: string } }).status.token);
  return f;
}

/** Applies the CE, waits Ready, checks its writes were made as `objectId`, deletes it, checks the resource group is gone. */
async function lifeAs(ns: string, name: string, objectId: string): Promise<void> {
  const { lastSeq } = await azureControl().clearRequests();
  await kube.create(ComputeEnvironmentResource, ambientCe(ns, name));
  const ce = await waitReady(kube, ns, name, 90_000);
  expect(cond(ce, "CredentialsValid")?.status).toBe("True");
  const rg = resourceGroupName({ namespace: ns, name, uid: ce.metadata.uid! });
  expect((await rm.resourceGroups.get(rg)).tags?.[TAG_CE_UID]).toBe(ce.metadata.uid);
  const writes = (await azureControl().requests(lastSeq)).value.filter((e) => e.method === "PUT" && e.path.toLowerCase().includes(`/resourcegroups/${rg.toLowerCase()}`));
  expect(writes.length).toBeGreaterThan(3);
  // Every write to the CE's resource group was made by the ambient principal, none by the test's admin.
  expect(new Set(writes.map((e) => e.caller))).toEqual(new Set([objectId]));
  await kube.delete(ComputeEnvironmentResource, ns, name);
  await waitGone(kube, ns, name);
  expect((await rm.resourceGroups.checkExistence(rg)).body).toBe(false);
}

beforeAll(async () => {
  kube = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(kube);
  info = await azureInfo();
  const admin = await azureTestCredential();
  rm = new ResourceManagementClient(admin, info.subscriptionId, azureClientOptions());
  await createWorkStorage(rm, info.subscriptionId);
}, 120_000);

afterAll(async () => {
  for (const op of operators) await op.stop();
  if (savedPodIdentityHost === undefined) delete process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;
  else process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = savedPodIdentityHost;
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe("Azure ComputeEnvironment with the operator's ambient identity (emulator)", () => {
  it("workload identity: a service-account token exchanged by federation; Ready, made as that principal, disposed of", async () => {
    const ns = await freshNamespace(kube, "azwi");
    const tokenFilePath = await serviceAccountTokenFile(ns, "vmforge-operator");
    const issuer = await kubeIssuer(kubeconfigPath());
    const app = await azureControl().createPrincipal({
      displayName: "vmforge-operator-wi",
      secret: false,
      federatedCredentials: [{ issuer, subject: `system:serviceaccount:${ns}:vmforge-operator`, audiences: ["api://AzureADTokenExchange"] }],
    });
    await grantOperatorRoles(info, app.objectId, "wi");
    const provider = new AzureProvider({ endpoints: { ...emulatorEndpoints(), ambient: "workload", workload: { tenantId: info.tenantId, clientId: app.clientId, tokenFilePath } } });
    operators.push(await startOperator(kubeconfigPath(), new Map([["azure", provider]]), { namespaces: [ns], pollIntervalMs: 1_000 }));
    await lifeAs(ns, "wi", app.objectId);

    // An operator running as another service account, which no federated credential trusts:
    // Stalled InvalidCredentials naming the workload identity (AADSTS700213), never the token.
    const ns2 = await freshNamespace(kube, "azwi");
    const untrustedToken = await serviceAccountTokenFile(ns2, "someone-else");
    const untrusted = new AzureProvider({ endpoints: { ...emulatorEndpoints(), ambient: "workload", workload: { tenantId: info.tenantId, clientId: app.clientId, tokenFilePath: untrustedToken } } });
    operators.push(await startOperator(kubeconfigPath(), new Map([["azure", untrusted]]), { namespaces: [ns2], pollIntervalMs: 1_000 }));
    await kube.create(ComputeEnvironmentResource, ambientCe(ns2, "wi-untrusted"));
    const stalled = await waitStalled(kube, ns2, "wi-untrusted", "InvalidCredentials");
    expect(stalled.message).toMatch(/^the operator's workload identity: rejected by Entra ID \(AADSTS700213\)/);
    expect(stalled.message).not.toContain(readFileSync(untrustedToken, "utf8").split(".")[2]!.slice(0, 16));
    expect(cond(await getCe(kube, ns2, "wi-untrusted"), "CredentialsValid")?.status).toBe("False");
    // It never wrote to Azure, so it goes at once.
    await kube.delete(ComputeEnvironmentResource, ns2, "wi-untrusted");
    await waitGone(kube, ns2, "wi-untrusted");
  }, 240_000);

  it("managed identity (user-assigned, by client ID, over IMDS): Ready, made as that identity, disposed of; an identity the host lacks is named", async () => {
    const ns = await freshNamespace(kube, "azmi");
    const admin = await azureTestCredential();
    await rm.resourceGroups.createOrUpdate("operator-identity-rg", { location: LOCATION });
    const msi = new ManagedServiceIdentityClient(admin, info.subscriptionId, azureClientOptions());
    const ident = await msi.userAssignedIdentities.createOrUpdate("operator-identity-rg", "vmforge-operator", { location: LOCATION });
    await grantOperatorRoles(info, ident.principalId!, "mi");
    const host = await azureControl().createManagedIdentityHost({ name: "operator-pod", userAssignedIdentityIds: [ident.id!] });
    process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = host.podIdentityAuthorityHost;
    const provider = new AzureProvider({ endpoints: { ...emulatorEndpoints(), ambient: "managed", managedIdentityClientId: ident.clientId! } });
    operators.push(await startOperator(kubeconfigPath(), new Map([["azure", provider]]), { namespaces: [ns], pollIntervalMs: 1_000 }));
    await lifeAs(ns, "mi", ident.principalId!);

    // An operator told to use a user-assigned identity its host does not have.
    const ns2 = await freshNamespace(kube, "azmi");
    const wrong = new AzureProvider({ endpoints: { ...emulatorEndpoints(), ambient: "managed", managedIdentityClientId: "99999999-8888-7777-6666-555555555555" } });
    operators.push(await startOperator(kubeconfigPath(), new Map([["azure", wrong]]), { namespaces: [ns2], pollIntervalMs: 1_000 }));
    await kube.create(ComputeEnvironmentResource, ambientCe(ns2, "mi-missing"));
    const stalled = await waitStalled(kube, ns2, "mi-missing", "InvalidCredentials");
    expect(stalled.message).toMatch(/^the operator's user-assigned managed identity \(client ID 99999999-8888-7777-6666-555555555555\): rejected by Entra ID/);
    await kube.delete(ComputeEnvironmentResource, ns2, "mi-missing");
    await waitGone(kube, ns2, "mi-missing");

    // IMDS itself in trouble for a while (503s beyond the SDK's own retries): the CE waits and
    // retries, never Stalled on the credentials, and is Ready once IMDS answers again.
    // (A second identity on the same host: the SDK keeps the first one's token, and the host it
    // found, for the whole process.)
    const ns3 = await freshNamespace(kube, "azmi");
    const ident3 = await msi.userAssignedIdentities.createOrUpdate("operator-identity-rg", "vmforge-operator-3", { location: LOCATION });
    await grantOperatorRoles(info, ident3.principalId!, "mi3");
    await azureControl().createManagedIdentityHost({ name: "operator-pod", userAssignedIdentityIds: [ident.id!, ident3.id!] });
    const busy = await azureControl().addFault({ operation: "managedIdentityToken", status: 503, count: 12 });
    const flaky = new AzureProvider({ endpoints: { ...emulatorEndpoints(), ambient: "managed", managedIdentityClientId: ident3.clientId! } });
    operators.push(await startOperator(kubeconfigPath(), new Map([["azure", flaky]]), { namespaces: [ns3], pollIntervalMs: 1_000 }));
    await kube.create(ComputeEnvironmentResource, ambientCe(ns3, "mi-imds"));
    const seen = new Set<string>();
    const ready = await waitFor("mi-imds Ready after IMDS recovered", async () => {
      const ce = await kube.get<ComputeEnvironment>(ComputeEnvironmentResource, ns3, "mi-imds");
      const st = cond(ce, "Stalled");
      if (st?.status === "True") seen.add(st.reason);
      return cond(ce, "Ready")?.status === "True" ? ce : undefined;
    }, 120_000, 100);
    expect([...seen]).toEqual([]);
    expect((await azureControl().faults()).value.find((f) => f.id === busy.id)?.count).toBe(0);
    expect(cond(ready!, "CredentialsValid")?.status).toBe("True");
    await kube.delete(ComputeEnvironmentResource, ns3, "mi-imds");
    await waitGone(kube, ns3, "mi-imds");
  }, 360_000);
});
