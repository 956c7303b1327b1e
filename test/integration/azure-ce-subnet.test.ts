/**
 * An Azure ComputeEnvironment on a subnet the user brings (issue 10), through the operator on the
 * real kube-apiserver and the Azure emulator: the subnet is validated (it exists, its network is in
 * the CE's location, the operator may join it — from the permissions Azure reports for the subnet),
 * used instead of a network of the CE's own, and left alone on disposal. And a CE with every
 * Azure option set at once.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { NetworkManagementClient } from "@azure/arm-network";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource } from "../../src/api/types.js";
import { ANNOTATION_RECONCILE_REQUESTED } from "../../src/api/constants.js";
import { AZURE_PHASES, type AzurePhase } from "../../src/cloud/azure/policy.js";
import { resourceGroupName } from "../../src/cloud/azure/names.js";
import { installCrds, startOperator, waitFor, type RunningOperator } from "../support/operator.js";
import { azureClientOptions, azureControl, azureInfo, azureTestCredential, freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import type { EmulatorInfo } from "../azure-emulator/control.js";
import { LOCATION, ceBody, cond, getCe, operatorPrincipal, putSecret, waitGone, waitReady, waitStalled, createWorkStorage, emulatorProvider } from "../support/azure-env.js";

const JOIN = "Microsoft.Network/virtualNetworks/subnets/join/action";

let kube: KubeClient;
let info: EmulatorInfo;
let rm: ResourceManagementClient;
let net: NetworkManagementClient;
let op: RunningOperator | undefined;
let ns: string;
let here: string;
let elsewhere: string;
let noJoinPrincipal: string;
let fullPrincipal: { objectId: string; clientId: string; secret: string };

async function subnet(rg: string, vnet: string, location: string, prefix: string): Promise<string> {
  await net.virtualNetworks.beginCreateOrUpdateAndWait(rg, vnet, { location, addressSpace: { addressPrefixes: [`${prefix}.0.0/16`] }, subnets: [{ name: "runs", addressPrefix: `${prefix}.1.0/24` }] });
  return (await net.subnets.get(rg, vnet, "runs")).id!;
}

beforeAll(async () => {
  kube = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(kube);
  info = await azureInfo();
  const admin = await azureTestCredential();
  rm = new ResourceManagementClient(admin, info.subscriptionId, azureClientOptions());
  net = new NetworkManagementClient(admin, info.subscriptionId, azureClientOptions());
  await createWorkStorage(rm, info.subscriptionId);
  // The platform team's networks, not the operator's.
  await rm.resourceGroups.createOrUpdate("shared-net-rg", { location: LOCATION });
  here = await subnet("shared-net-rg", "shared-vnet", LOCATION, "10.40");
  elsewhere = await subnet("shared-net-rg", "far-vnet", "eastus", "10.41");
  ns = await freshNamespace(kube, "azsub");
  // One principal with the seed's roles except the subnet join, in every phase that has it.
  const noJoin = Object.fromEntries(AZURE_PHASES.map((p) => [p, [JOIN]])) as Partial<Record<AzurePhase, string[]>>;
  const p = await operatorPrincipal(info, "vmforge-nojoin", noJoin);
  await putSecret(kube, info, ns, "azure-creds", p);
  noJoinPrincipal = p.objectId;
  fullPrincipal = await operatorPrincipal(info, "vmforge-every-option");
  const provider = emulatorProvider();
  op = await startOperator(kubeconfigPath(), new Map([["azure", provider]]), { namespaces: [ns], pollIntervalMs: 1_000 });
}, 120_000);

afterAll(async () => {
  await op?.stop();
});

describe("Azure ComputeEnvironment on an existing subnet (emulator)", () => {
  it("validated (exists, same location, may join), used without a network of its own, and left alone on disposal", async () => {
    // A subnet in another location.
    await kube.create(ComputeEnvironmentResource, ceBody(ns, "bring", { network: { subnetId: elsewhere } }));
    const far = await waitStalled(kube, ns, "bring", "InvalidSpec");
    expect(far.message).toContain(`spec.azure.network.subnetId: the subnet's virtual network "far-vnet" is in location "eastus", not "${LOCATION}"`);

    // A subnet that does not exist.
    const missing = here.replace("/subnets/runs", "/subnets/nope");
    await kube.patch(ComputeEnvironmentResource, ns, "bring", { spec: { azure: { network: { subnetId: missing } } } }, "merge");
    await waitFor("missing subnet named", async () => {
      const c = cond(await getCe(kube, ns, "bring"), "Stalled");
      return c?.status === "True" && c.message?.includes(`subnet "${missing}" does not exist`) ? c : undefined;
    }, 60_000, 250);

    // The right subnet, but the operator may not join it: named, with the action.
    await kube.patch(ComputeEnvironmentResource, ns, "bring", { spec: { azure: { network: { subnetId: here } } } }, "merge");
    const denied = await waitFor("join denied", async () => {
      const c = cond(await getCe(kube, ns, "bring"), "Stalled");
      return c?.status === "True" && c.reason === "AccessDenied" ? c : undefined;
    }, 60_000, 250);
    expect(denied.message).toContain(JOIN);
    expect(denied.message).toContain(here);

    // The platform team grants the join on that one subnet only; the user asks for a retry.
    await azureControl().assignRole({
      principalId: noJoinPrincipal,
      scope: here,
      role: { properties: { roleName: "join-runs-subnet", assignableScopes: [here], permissions: [{ actions: [JOIN], notActions: [], dataActions: [], notDataActions: [] }] } },
    });
    await kube.patch(ComputeEnvironmentResource, ns, "bring", { metadata: { annotations: { [ANNOTATION_RECONCILE_REQUESTED]: new Date().toISOString() } } }, "merge");
    const ce = await waitReady(kube, ns, "bring", 90_000);
    const azure = (ce.status as { azure?: Record<string, string> }).azure!;
    expect(azure.subnetId?.toLowerCase()).toBe(here.toLowerCase());
    // status names the network in use: the brought one.
    expect(azure.vnetId?.toLowerCase()).toBe(here.replace("/subnets/runs", "").toLowerCase());
    const rg = resourceGroupName({ namespace: ns, name: "bring", uid: ce.metadata.uid! });
    const own: string[] = [];
    for await (const r of rm.resources.listByResourceGroup(rg)) own.push(r.type!);
    expect(own).not.toContain("Microsoft.Network/virtualNetworks");

    await kube.delete(ComputeEnvironmentResource, ns, "bring");
    await waitGone(kube, ns, "bring");
    expect((await rm.resourceGroups.checkExistence(rg)).body).toBe(false);
    // The brought subnet and its network are untouched.
    expect((await net.subnets.get("shared-net-rg", "shared-vnet", "runs")).id).toBe(here);
  }, 240_000);

  it("every option at once: subscription from the spec (the Secret has none), VM size, image, tags, a brought subnet (Run limits set alongside); each Azure option honoured", async () => {
    // A Secret without subscriptionId: the spec's is the one used.
    const data = { tenantId: info.tenantId, clientId: fullPrincipal.clientId, clientSecret: fullPrincipal.secret };
    await kube.create({ group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true }, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "no-subscription", namespace: ns }, type: "Opaque",
      data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString("base64")])),
    });
    const body = ceBody(ns, "every", {
      subscriptionId: info.subscriptionId,
      vmSize: "Standard_D4ds_v5",
      image: "Canonical:ubuntu-24_04-lts:server:latest",
      network: { subnetId: here },
      tags: { team: "genomics", "cost-center": "42" },
    }, "no-subscription");
    Object.assign(body.spec, { maxConcurrentRuns: 3, defaultRunTimeout: "6h", deletionPolicy: "Delete" });
    await kube.create(ComputeEnvironmentResource, body);
    const ce = await waitReady(kube, ns, "every", 90_000);
    expect(cond(ce, "Validated")).toMatchObject({ status: "True" });
    const azure = (ce.status as { azure?: Record<string, string> }).azure!;
    expect(azure.resourceGroupId).toContain(`/subscriptions/${info.subscriptionId}/`);
    expect(azure.subnetId?.toLowerCase()).toBe(here.toLowerCase());
    expect(azure.image).toBe("Canonical:ubuntu-24_04-lts:server:latest");
    const rg = resourceGroupName({ namespace: ns, name: "every", uid: ce.metadata.uid! });
    for await (const r of rm.resources.listByResourceGroup(rg)) {
      expect(r.tags, `${r.type} ${r.name}`).toMatchObject({ team: "genomics", "cost-center": "42", "vmforge-ce-uid": ce.metadata.uid });
    }
    expect((await rm.resourceGroups.get(rg)).tags).toMatchObject({ team: "genomics", "cost-center": "42" });
    // An image Azure does not offer is named at once.
    await kube.patch(ComputeEnvironmentResource, ns, "every", { spec: { azure: { image: "Canonical:ubuntu-24_04-lts:server:1.2.3" } } }, "merge");
    const noImage = await waitStalled(kube, ns, "every", "InvalidSpec");
    expect(noImage.message).toContain('spec.azure.image: "Canonical:ubuntu-24_04-lts:server:1.2.3" is not available in location "westeurope"');
    await kube.patch(ComputeEnvironmentResource, ns, "every", { spec: { azure: { image: "Canonical:ubuntu-24_04-lts:server:latest" } } }, "merge");
    await waitReady(kube, ns, "every", 90_000);
    // A VM size the location does not offer is named at once (the option is checked, not ignored).
    await kube.patch(ComputeEnvironmentResource, ns, "every", { spec: { azure: { vmSize: "Standard_Nope_v1" } } }, "merge");
    const bad = await waitStalled(kube, ns, "every", "InvalidSpec");
    expect(bad.message).toContain('spec.azure.vmSize: "Standard_Nope_v1"');
    await kube.patch(ComputeEnvironmentResource, ns, "every", { spec: { azure: { vmSize: "Standard_D4ds_v5" } } }, "merge");
    await waitReady(kube, ns, "every", 90_000);
    await kube.delete(ComputeEnvironmentResource, ns, "every");
    await waitGone(kube, ns, "every");
    expect((await rm.resourceGroups.checkExistence(rg)).body).toBe(false);
  }, 240_000);
});
