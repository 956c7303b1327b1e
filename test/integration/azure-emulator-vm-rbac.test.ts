// The Azure emulator's virtual machines, RBAC, capacity errors, faults and request log, through
// the real SDK packages.
import { seedPath } from "../harness/seed-policy.js";
import { randomUUID } from "node:crypto";
import { AuthorizationManagementClient } from "@azure/arm-authorization";
import { ComputeManagementClient, type VirtualMachine } from "@azure/arm-compute";
import { ManagedServiceIdentityClient } from "@azure/arm-msi";
import { NetworkManagementClient } from "@azure/arm-network";
import { ResourceManagementClient } from "@azure/arm-resources";
import type { TokenCredential } from "@azure/core-auth";
import { ClientSecretCredential, ManagedIdentityCredential } from "@azure/identity";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { azureClientOptions, azureControl, azureCredentialOptions, azureInfo, azureTestCredential } from "../harness/helpers.js";

const LOCATION = "westeurope";

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** Seed 001: the Azure role JSON of the product, read at test time. */
function seedFile(): string {
  return seedPath("001");
}

function vmParams(subnetId: string, o: { identityId?: string; size?: string; userData?: string; spot?: boolean } = {}): VirtualMachine {
  return {
    location: LOCATION,
    tags: { "vmforge.dev/owner": "test" },
    ...(o.identityId ? { identity: { type: "UserAssigned", userAssignedIdentities: { [o.identityId]: {} } } } : {}),
    hardwareProfile: { vmSize: o.size ?? "Standard_D2s_v5" },
    ...(o.spot ? { priority: "Spot", evictionPolicy: "Delete", billingProfile: { maxPrice: -1 } } : {}),
    storageProfile: {
      imageReference: { publisher: "Canonical", offer: "ubuntu-24_04-lts", sku: "server", version: "latest" },
      osDisk: { createOption: "FromImage", deleteOption: "Delete", managedDisk: { storageAccountType: "Premium_LRS" } },
    },
    osProfile: {
      computerName: "runner",
      adminUsername: "vmforge",
      linuxConfiguration: { disablePasswordAuthentication: true, ssh: { publicKeys: [{ path: "/home/vmforge/.ssh/authorized_keys", keyData: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG test" }] } },
    },
    networkProfile: {
      networkApiVersion: "2020-11-01",
      networkInterfaceConfigurations: [
        {
          name: "nic",
          primary: true,
          deleteOption: "Delete",
          ipConfigurations: [{ name: "ip", subnet: { id: subnetId }, publicIPAddressConfiguration: { name: "pip", deleteOption: "Delete", sku: { name: "Standard" }, publicIPAllocationMethod: "Static" } }],
        },
      ],
    },
    ...(o.userData ? { userData: Buffer.from(o.userData).toString("base64") } : {}),
  };
}

describe("Azure emulator: virtual machines, RBAC, capacity, faults", () => {
  let sub: string;
  let admin: TokenCredential;
  let rm: ResourceManagementClient;
  let compute: ComputeManagementClient;
  let net: NetworkManagementClient;
  let msi: ManagedServiceIdentityClient;
  let auth: AuthorizationManagementClient;
  let subnetId: string;
  let identity: { id: string; principalId: string; clientId: string };

  beforeAll(async () => {
    const info = await azureInfo();
    sub = info.subscriptionId;
    admin = await azureTestCredential();
    const o = azureClientOptions();
    rm = new ResourceManagementClient(admin, sub, o);
    compute = new ComputeManagementClient(admin, sub, o);
    net = new NetworkManagementClient(admin, sub, o);
    msi = new ManagedServiceIdentityClient(admin, sub, o);
    auth = new AuthorizationManagementClient(admin, sub, o);
    await rm.resourceGroups.createOrUpdate("rg-vm", { location: LOCATION });
    const vnet = await net.virtualNetworks.createOrUpdate("rg-vm", "vnet", { location: LOCATION, addressSpace: { addressPrefixes: ["10.1.0.0/16"] }, subnets: [{ name: "runs", addressPrefix: "10.1.0.0/24" }] });
    subnetId = vnet.subnets![0]!.id!;
    const id = await msi.userAssignedIdentities.createOrUpdate("rg-vm", "run-identity", { location: LOCATION });
    identity = { id: id.id!, principalId: id.principalId!, clientId: id.clientId! };
  });

  afterAll(async () => {
    await azureControl().clearFaults();
    await azureControl().clearCapacityErrors();
  });

  it("offers VM sizes per location through Microsoft.Compute/skus", async () => {
    const skus = await collect(compute.resourceSkus.list({ filter: `location eq '${LOCATION}'` }));
    const d2 = skus.find((s) => s.name === "Standard_D2s_v5");
    expect(d2?.locations).toEqual([LOCATION]);
    expect(d2?.capabilities?.find((c) => c.name === "vCPUs")?.value).toBe("2");
    expect(d2?.restrictions).toEqual([]);
  });

  it("a VM with inline NIC, public IP and OS disk: created, read, listed with status, powered off, deallocated, deleted with all three", async () => {
    await azureControl().settings({ latencyMs: { "Microsoft.Compute/virtualMachines": 100 } });
    let vm: VirtualMachine;
    try {
      vm = await compute.virtualMachines.createOrUpdate("rg-vm", "run-1", vmParams(subnetId, { identityId: identity.id, userData: "#!/bin/bash\necho hello", spot: true }), { updateIntervalInMs: 50 });
    } finally {
      await azureControl().settings({ latencyMs: { "Microsoft.Compute/virtualMachines": 0 } });
    }
    expect(vm.provisioningState).toBe("Succeeded");
    expect(vm.priority).toBe("Spot");
    expect(vm.evictionPolicy).toBe("Delete");
    expect(vm.identity?.userAssignedIdentities?.[identity.id]?.clientId).toBe(identity.clientId);
    expect(vm.userData).toBeUndefined();
    const nicId = vm.networkProfile!.networkInterfaces![0]!.id!;
    const diskName = vm.storageProfile!.osDisk!.name!;

    const withData = await compute.virtualMachines.get("rg-vm", "RUN-1", { expand: "userData" });
    expect(Buffer.from(withData.userData!, "base64").toString()).toBe("#!/bin/bash\necho hello");
    const iv = await compute.virtualMachines.instanceView("rg-vm", "run-1");
    expect(iv.statuses?.map((s) => s.code)).toEqual(["ProvisioningState/succeeded", "PowerState/running"]);
    const listed = await collect(compute.virtualMachines.listAll({ statusOnly: "true" }));
    expect(listed.map((v) => v.name)).toEqual(["run-1"]);
    expect(listed[0]!.instanceView?.statuses?.map((s) => s.code)).toContain("PowerState/running");

    // what the operator's VM player sees, and the VM's own instance metadata token
    const [played] = await azureControl().listVms();
    expect(played?.userDataText).toBe("#!/bin/bash\necho hello");
    const saved = process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;
    process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = played!.imdsEndpoint;
    try {
      const t = await new ManagedIdentityCredential({ clientId: identity.clientId }).getToken("https://monitor.azure.com/.default");
      expect(JSON.parse(Buffer.from(t.token.split(".")[1]!, "base64url").toString()).oid).toBe(identity.principalId);
    } finally {
      if (saved === undefined) delete process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST;
      else process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = saved;
    }

    const nic = await net.networkInterfaces.get("rg-vm", nicId.split("/").pop()!);
    const pipId = nic.ipConfigurations![0]!.publicIPAddress!.id!;
    expect(nic.virtualMachine?.id).toBe(vm.id);
    // the VM's tags are not copied onto the resources its configurations create
    expect(nic.tags ?? {}).toEqual({});
    await expect(net.networkInterfaces.delete("rg-vm", nic.name!).pollUntilDone()).rejects.toMatchObject({ statusCode: 400, code: "NicInUse" });
    await expect(compute.disks.delete("rg-vm", diskName).pollUntilDone()).rejects.toMatchObject({ statusCode: 409 });
    const disk = (await collect(compute.disks.listByResourceGroup("rg-vm"))).find((d) => d.name === diskName);
    expect(disk?.managedBy).toBe(vm.id);
    expect(disk?.diskState).toBe("Attached");

    await compute.virtualMachines.powerOff("rg-vm", "run-1").pollUntilDone();
    expect((await compute.virtualMachines.instanceView("rg-vm", "run-1")).statuses?.[1]?.code).toBe("PowerState/stopped");
    await compute.virtualMachines.deallocate("rg-vm", "run-1").pollUntilDone();
    expect((await compute.virtualMachines.get("rg-vm", "run-1", { expand: "instanceView" })).instanceView?.statuses?.[1]?.code).toBe("PowerState/deallocated");

    await compute.virtualMachines.delete("rg-vm", "run-1", { forceDeletion: true }).pollUntilDone();
    await expect(compute.virtualMachines.get("rg-vm", "run-1")).rejects.toMatchObject({ statusCode: 404 });
    await expect(net.networkInterfaces.get("rg-vm", nic.name!)).rejects.toMatchObject({ statusCode: 404 });
    await expect(net.publicIPAddresses.get("rg-vm", pipId.split("/").pop()!)).rejects.toMatchObject({ statusCode: 404 });
    await expect(compute.disks.get("rg-vm", diskName)).rejects.toMatchObject({ statusCode: 404 });
  });

  it("a VM whose OS shut down stays, stopped, until deleted; a Spot eviction with policy Delete removes it", async () => {
    const vm = await compute.virtualMachines.createOrUpdate("rg-vm", "run-2", vmParams(subnetId, { spot: true }));
    const updated = await compute.virtualMachines.update("rg-vm", "run-2", { tags: { phase: "running" }, userData: Buffer.from("v2").toString("base64") });
    expect(updated.tags).toEqual({ phase: "running" });
    expect(Buffer.from((await compute.virtualMachines.get("rg-vm", "run-2", { expand: "userData" })).userData!, "base64").toString()).toBe("v2");
    await azureControl().setVmPowerState(vm.id!, "stopped");
    const listed = await collect(compute.virtualMachines.listAll({ statusOnly: "true" }));
    expect(listed.find((v) => v.name === "run-2")?.instanceView?.statuses?.map((s) => s.code)).toContain("PowerState/stopped");
    await azureControl().setVmPowerState(vm.id!, "evicted");
    await expect(compute.virtualMachines.get("rg-vm", "run-2")).rejects.toMatchObject({ statusCode: 404 });
    await expect(compute.disks.get("rg-vm", vm.storageProfile!.osDisk!.name!)).rejects.toMatchObject({ statusCode: 404 });
  });

  it("capacity errors per size and location: SkuNotAvailable, AllocationFailed, quota", async () => {
    const ctl = azureControl();
    await ctl.addCapacityError({ vmSize: "Standard_D4s_v5", location: LOCATION, code: "SkuNotAvailable" });
    const skus = await collect(compute.resourceSkus.list({ filter: `location eq '${LOCATION}'` }));
    expect(skus.find((s) => s.name === "Standard_D4s_v5")?.restrictions?.[0]?.reasonCode).toBe("NotAvailableForSubscription");
    await expect(compute.virtualMachines.createOrUpdate("rg-vm", "cap-1", vmParams(subnetId, { size: "Standard_D4s_v5" })).pollUntilDone()).rejects.toMatchObject({ statusCode: 409, code: "SkuNotAvailable" });

    await ctl.addCapacityError({ vmSize: "Standard_D8s_v5", location: LOCATION, code: "OperationNotAllowed", count: 1 });
    await expect(compute.virtualMachines.createOrUpdate("rg-vm", "cap-2", vmParams(subnetId, { size: "Standard_D8s_v5" })).pollUntilDone()).rejects.toMatchObject({
      statusCode: 409,
      code: "OperationNotAllowed",
      message: expect.stringContaining("quota"),
    });

    await ctl.addCapacityError({ vmSize: "Standard_D2s_v5", location: LOCATION, code: "AllocationFailed", count: 1 });
    // the operation fails; the SDK's poller reports Azure's error code and message
    await expect(compute.virtualMachines.createOrUpdate("rg-vm", "cap-3", vmParams(subnetId))).rejects.toThrow(/AllocationFailed\. Allocation failed/);
    // the VM stays, failed, until deleted (as in Azure)
    expect((await compute.virtualMachines.get("rg-vm", "cap-3")).provisioningState).toBe("Failed");
    await compute.virtualMachines.delete("rg-vm", "cap-3").pollUntilDone();
    await ctl.clearCapacityErrors();
  });

  it("a list lag: a VM deleted a moment ago is still listed as it was, over a VM made since under its name, while a GET finds the truth", async () => {
    const ctl = azureControl();
    await ctl.addCapacityError({ vmSize: "Standard_D2s_v5", location: LOCATION, code: "AllocationFailed", count: 1 });
    await expect(compute.virtualMachines.createOrUpdate("rg-vm", "lag-1", vmParams(subnetId))).rejects.toThrow(/AllocationFailed/);
    const lag = await ctl.addListLag({ path: "/virtualMachines/lag-1", ms: 2_000 });
    try {
      await compute.virtualMachines.delete("rg-vm", "lag-1").pollUntilDone();
      await expect(compute.virtualMachines.get("rg-vm", "lag-1")).rejects.toMatchObject({ statusCode: 404 });
      const listedCodes = async (): Promise<string[] | undefined> =>
        (await collect(compute.virtualMachines.listAll({ statusOnly: "true" }))).find((v) => v.name === "lag-1")?.instanceView?.statuses?.map((x) => x.code ?? "");
      expect(await listedCodes()).toContain("ProvisioningState/failed/AllocationFailed");
      expect((await collect(compute.virtualMachines.list("rg-vm"))).map((v) => v.name)).toContain("lag-1");
      // Made again under its name: the GET finds the new VM, the list still the deleted one.
      await compute.virtualMachines.createOrUpdate("rg-vm", "lag-1", vmParams(subnetId)).pollUntilDone();
      expect((await compute.virtualMachines.get("rg-vm", "lag-1")).provisioningState).toBe("Succeeded");
      expect(await listedCodes()).toContain("ProvisioningState/failed/AllocationFailed");
      // After the lag the list catches up.
      await new Promise((r) => setTimeout(r, 2_100));
      expect(await listedCodes()).toContain("ProvisioningState/succeeded");
    } finally {
      await ctl.removeListLag(lag.id);
      await compute.virtualMachines.delete("rg-vm", "lag-1").pollUntilDone().catch(() => undefined);
    }
  });

  it("one capacity error or fault is removed by its ID, the others stay; a fault with a path meets only requests for that resource", async () => {
    const ctl = azureControl();
    const a = await ctl.addCapacityError({ vmSize: "Standard_E4s_v5", location: LOCATION, code: "SkuNotAvailable" });
    await ctl.addCapacityError({ vmSize: "Standard_E8s_v5", location: LOCATION, code: "SkuNotAvailable" });
    await ctl.removeCapacityError(a.id);
    const skus = await collect(compute.resourceSkus.list({ filter: `location eq '${LOCATION}'` }));
    expect(skus.find((s) => s.name === "Standard_E4s_v5")?.restrictions ?? []).toEqual([]);
    expect(skus.find((s) => s.name === "Standard_E8s_v5")?.restrictions?.[0]?.reasonCode).toBe("NotAvailableForSubscription");
    await expect(compute.virtualMachines.createOrUpdate("rg-vm", "cap-4", vmParams(subnetId, { size: "Standard_E8s_v5" })).pollUntilDone()).rejects.toMatchObject({ code: "SkuNotAvailable" });
    await compute.virtualMachines.createOrUpdate("rg-vm", "cap-5", vmParams(subnetId, { size: "Standard_E4s_v5" })).pollUntilDone();
    await compute.virtualMachines.createOrUpdate("rg-vm", "cap-6", vmParams(subnetId)).pollUntilDone();
    await ctl.clearCapacityErrors();

    // Scoped by path: cap-5's delete is refused, cap-6's is not; removing the fault lets cap-5's through.
    const busy = await ctl.addFault({ operation: "Microsoft.Compute/virtualMachines/delete", path: "/virtualMachines/cap-5", status: 409, code: "Conflict", message: "busy" });
    const other = await ctl.addFault({ operation: "Microsoft.Compute/virtualMachines/write", path: "/virtualMachines/no-such-vm", status: 500 });
    await compute.virtualMachines.delete("rg-vm", "cap-6").pollUntilDone();
    await expect(compute.virtualMachines.delete("rg-vm", "cap-5").pollUntilDone()).rejects.toMatchObject({ statusCode: 409, code: "Conflict" });
    await ctl.removeFault(busy.id);
    await compute.virtualMachines.delete("rg-vm", "cap-5").pollUntilDone();
    await expect(compute.virtualMachines.get("rg-vm", "cap-5")).rejects.toMatchObject({ statusCode: 404 });
    expect((await ctl.faults()).value.map((f) => f.id)).toEqual([other.id]);
    await ctl.removeFault(other.id);
  });

  it("a role definition cannot be deleted while assigned, nor while Azure's caches still hold an assignment deleted a moment ago", async () => {
    const roleId = randomUUID();
    const scope = `/subscriptions/${sub}`;
    const role = await auth.roleDefinitions.createOrUpdate(scope, roleId, {
      roleName: "vmforge-test-reader",
      description: "test",
      roleType: "CustomRole",
      permissions: [{ actions: ["Microsoft.Resources/subscriptions/resourceGroups/read"], notActions: [], dataActions: [], notDataActions: [] }],
      assignableScopes: [scope],
    });
    const assignmentName = randomUUID();
    await auth.roleAssignments.create(scope, assignmentName, { roleDefinitionId: role.id!, principalId: identity.principalId, principalType: "ServicePrincipal" });
    await expect(auth.roleDefinitions.delete(scope, roleId)).rejects.toMatchObject({ statusCode: 409, code: "RoleDefinitionHasAssignments" });
    await auth.roleAssignments.delete(scope, assignmentName);
    // Gone from reads at once, but still counted until the caches drop it (roleAssignmentRemovalDelayMs).
    await expect(auth.roleAssignments.get(scope, assignmentName)).rejects.toMatchObject({ statusCode: 404 });
    await expect(auth.roleDefinitions.delete(scope, roleId)).rejects.toMatchObject({ statusCode: 409, code: "RoleDefinitionHasAssignments" });
    const ctl = azureControl();
    const { roleAssignmentRemovalDelayMs } = (await ctl.info()).settings;
    expect(roleAssignmentRemovalDelayMs).toBeGreaterThan(0);
    await ctl.settings({ roleAssignmentRemovalDelayMs: 0 });
    try {
      await auth.roleDefinitions.delete(scope, roleId);
    } finally {
      await ctl.settings({ roleAssignmentRemovalDelayMs });
    }
    await expect(auth.roleDefinitions.get(scope, roleId)).rejects.toMatchObject({ statusCode: 404 });
  });

  it("PrincipalNotFound right after an identity is created, unless principalType is ServicePrincipal; success once replicated", async () => {
    const ctl = azureControl();
    await ctl.settings({ principalNotFoundWindowMs: 600_000 });
    const fresh = await msi.userAssignedIdentities.createOrUpdate("rg-vm", "fresh-identity", { location: LOCATION });
    const scope = `/subscriptions/${sub}/resourceGroups/rg-vm`;
    const reader = `/subscriptions/${sub}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7`;
    await expect(auth.roleAssignments.create(scope, randomUUID(), { roleDefinitionId: reader, principalId: fresh.principalId! })).rejects.toMatchObject({ statusCode: 400, code: "PrincipalNotFound" });
    const withType = await auth.roleAssignments.create(scope, randomUUID(), { roleDefinitionId: reader, principalId: fresh.principalId!, principalType: "ServicePrincipal" });
    expect(withType.principalId).toBe(fresh.principalId);
    // replication done: the same call without principalType now succeeds
    await ctl.settings({ principalNotFoundWindowMs: 0 });
    const contributor = `/subscriptions/${sub}/providers/Microsoft.Authorization/roleDefinitions/b24988ac-6180-42a0-ab88-20f7382dd24c`;
    const without = await auth.roleAssignments.create(scope, randomUUID(), { roleDefinitionId: contributor, principalId: fresh.principalId! });
    expect(without.principalType).toBe("ServicePrincipal");
    await expect(auth.roleAssignments.create(scope, randomUUID(), { roleDefinitionId: contributor, principalId: fresh.principalId! })).rejects.toMatchObject({ statusCode: 409, code: "RoleAssignmentExists" });
  });

  describe("the product's role JSON (seed 001), enforced", () => {
    async function principalWithSeedRole(name: string, without: string[]): Promise<{ cred: ClientSecretCredential; clientId: string; objectId: string }> {
      const ctl = azureControl();
      const p = await ctl.createPrincipal({ displayName: name });
      await ctl.grantSeedRole({ principalId: p.objectId, seedFile: seedFile(), roleName: "seqera-azure-cloud", subscriptionId: sub, without });
      return { cred: new ClientSecretCredential(p.tenantId, p.clientId, p.secret!, azureCredentialOptions()), clientId: p.clientId, objectId: p.objectId };
    }

    it("allows the environment's calls with the full role, and names the one action removed from it", async () => {
      const full = await principalWithSeedRole("seed-full", []);
      const fullNet = new NetworkManagementClient(full.cred, sub, azureClientOptions());
      const fullRm = new ResourceManagementClient(full.cred, sub, azureClientOptions());
      await fullRm.resourceGroups.createOrUpdate("rg-seed", { location: LOCATION });
      await fullNet.virtualNetworks.createOrUpdate("rg-seed", "vnet", { location: LOCATION, addressSpace: { addressPrefixes: ["10.2.0.0/16"] } });

      const minus = await principalWithSeedRole("seed-minus", ["Microsoft.Network/virtualNetworks/write"]);
      const minusNet = new NetworkManagementClient(minus.cred, sub, azureClientOptions());
      const scope = `/subscriptions/${sub}/resourceGroups/rg-seed/providers/Microsoft.Network/virtualNetworks/vnet2`;
      await expect(minusNet.virtualNetworks.createOrUpdate("rg-seed", "vnet2", { location: LOCATION, addressSpace: { addressPrefixes: ["10.3.0.0/16"] } }).pollUntilDone()).rejects.toMatchObject({
        statusCode: 403,
        code: "AuthorizationFailed",
        message: `The client '${minus.clientId}' with object id '${minus.objectId}' does not have authorization to perform action 'Microsoft.Network/virtualNetworks/write' over scope '${scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.`,
      });
    });

    it("refuses a VM with a user-assigned identity when assign/action is missing (LinkedAuthorizationFailed)", async () => {
      const minus = await principalWithSeedRole("seed-no-assign", ["Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"]);
      const c = new ComputeManagementClient(minus.cred, sub, azureClientOptions());
      await expect(c.virtualMachines.createOrUpdate("rg-vm", "run-linked", vmParams(subnetId, { identityId: identity.id })).pollUntilDone()).rejects.toMatchObject({
        statusCode: 403,
        code: "LinkedAuthorizationFailed",
        message: expect.stringContaining("Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"),
      });
      // with the full role the same VM is created
      const full = await principalWithSeedRole("seed-assign", []);
      const fc = new ComputeManagementClient(full.cred, sub, azureClientOptions());
      const vm = await fc.virtualMachines.createOrUpdate("rg-vm", "run-linked", vmParams(subnetId, { identityId: identity.id }));
      expect(vm.provisioningState).toBe("Succeeded");
      await fc.virtualMachines.delete("rg-vm", "run-linked").pollUntilDone();
    });
  });

  it("an injected 429 with Retry-After is honoured by the SDK's retry, and the request log counts the calls", async () => {
    const ctl = azureControl();
    const { lastSeq } = await ctl.clearRequests();
    await ctl.addFault({ operation: "Microsoft.Resources/subscriptions/resourceGroups/read", status: 429, retryAfterS: 1, count: 1 });
    const g = await rm.resourceGroups.get("rg-vm");
    expect(g.name).toBe("rg-vm");
    const log = (await ctl.requests(lastSeq)).value.filter((e) => e.operation === "Microsoft.Resources/subscriptions/resourceGroups/read");
    expect(log.map((e) => e.status)).toEqual([429, 200]);
    expect(log[0]!.apiVersion).toMatch(/^\d{4}-\d{2}-\d{2}/);
    expect(log[0]!.caller).toBe((await azureInfo()).admin.objectId);

    await ctl.addFault({ operation: "Microsoft.Network/networkInterfaces/read", status: 503, count: 1 });
    const before = (await ctl.requests()).lastSeq;
    await collect(net.networkInterfaces.list("rg-vm"));
    const writes = (await ctl.requests(before)).value.filter((e) => e.resourceType === "Microsoft.Network/networkInterfaces");
    expect(writes.map((e) => e.status)).toEqual([503, 200]);
  });

  it("percentage faults fail a deterministic share of matching calls; the SDK's retries absorb them", async () => {
    const ctl = azureControl();
    await ctl.clearFaults();
    const fault = await ctl.addFault({ operation: "Microsoft.ManagedIdentity/userAssignedIdentities/read", status: 500, percentage: 30 });
    const fast = new ManagedServiceIdentityClient(admin, sub, { ...azureClientOptions(), retryOptions: { retryDelayInMs: 5, maxRetryDelayInMs: 20 } });
    const { lastSeq } = await ctl.clearRequests();
    for (let i = 0; i < 20; i++) expect((await fast.userAssignedIdentities.get("rg-vm", "run-identity")).clientId).toBe(identity.clientId);
    const statuses = (await ctl.requests(lastSeq)).value.filter((e) => e.operation === "Microsoft.ManagedIdentity/userAssignedIdentities/read").map((e) => e.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(20);
    expect(statuses.filter((s) => s === 500).length).toBeGreaterThan(0);
    expect(fault.id).toMatch(/^[0-9a-f-]{36}$/);
    await ctl.clearFaults();
  });
});
