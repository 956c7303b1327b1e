// The Azure emulator's Resource Manager through the real SDK packages: every resource type of the
// Azure Cloud environment created, read, listed and deleted, long-running operations polled to
// the end, resource group deletion cascading, workspace soft delete, DCR validation.
import { ManagedServiceIdentityClient } from "@azure/arm-msi";
import { MonitorClient } from "@azure/arm-monitor";
import { NetworkManagementClient } from "@azure/arm-network";
import { OperationalInsightsManagementClient } from "@azure/arm-operationalinsights";
import { ResourceManagementClient } from "@azure/arm-resources";
import type { TokenCredential } from "@azure/core-auth";
import { beforeAll, describe, expect, it } from "vitest";
import { azureClientOptions, azureControl, azureEndpoint, azureInfo, azureTestCredential } from "../harness/helpers.js";

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe("Azure emulator: Resource Manager", () => {
  let cred: TokenCredential;
  let sub: string;
  let rm: ResourceManagementClient;
  let msi: ManagedServiceIdentityClient;
  let net: NetworkManagementClient;
  let la: OperationalInsightsManagementClient;
  let mon: MonitorClient;

  beforeAll(async () => {
    const info = await azureInfo();
    sub = info.subscriptionId;
    cred = await azureTestCredential();
    const o = azureClientOptions();
    rm = new ResourceManagementClient(cred, sub, o);
    msi = new ManagedServiceIdentityClient(cred, sub, o);
    net = new NetworkManagementClient(cred, sub, o);
    la = new OperationalInsightsManagementClient(cred, sub, o);
    mon = new MonitorClient(cred, sub, o);
  });

  it("resource groups: PUT, GET case-insensitively, HEAD, LIST, PATCH tags, DELETE as a long-running operation", async () => {
    const created = await rm.resourceGroups.createOrUpdate("Rg-Basics", { location: "westeurope", tags: { owner: "a" } });
    expect(created.properties?.provisioningState).toBe("Succeeded");
    expect((await rm.resourceGroups.get("rg-basics")).id).toBe(`/subscriptions/${sub}/resourceGroups/Rg-Basics`);
    expect((await rm.resourceGroups.checkExistence("RG-BASICS")).body).toBe(true);
    expect((await collect(rm.resourceGroups.list())).map((g) => g.name)).toContain("Rg-Basics");
    const patched = await rm.resourceGroups.update("rg-basics", { tags: { owner: "b" } });
    expect(patched.tags).toEqual({ owner: "b" });
    await rm.resourceGroups.createOrUpdate("rg-tagged", { location: "westeurope", tags: { owner: "c" } });
    expect((await collect(rm.resourceGroups.list({ filter: "tagName eq 'owner' and tagValue eq 'b'" }))).map((g) => g.name)).toEqual(["Rg-Basics"]);
    expect((await collect(rm.resourceGroups.list({ filter: "tagName eq 'OWNER'" }))).map((g) => g.name).sort()).toEqual(["Rg-Basics", "rg-tagged"]);
    await expect(rm.resourceGroups.createOrUpdate("rg-basics", { location: "eastus" })).rejects.toMatchObject({ statusCode: 409, code: "InvalidResourceGroupLocation" });
    await expect(rm.resourceGroups.get("rg-missing")).rejects.toMatchObject({ statusCode: 404, code: "ResourceGroupNotFound" });

    await azureControl().settings({ latencyMs: { "Microsoft.Resources/resourceGroups": 300 } });
    try {
      const poller = rm.resourceGroups.delete("rg-basics");
      await poller.submitted();
      // while the deletion runs the group reports Deleting
      expect((await rm.resourceGroups.get("rg-basics")).properties?.provisioningState).toBe("Deleting");
      await poller.pollUntilDone();
    } finally {
      await azureControl().settings({ latencyMs: { "Microsoft.Resources/resourceGroups": 0 } });
    }
    expect((await rm.resourceGroups.checkExistence("rg-basics")).body).toBe(false);
  });

  it("user-assigned identities: create, read, list, delete", async () => {
    await rm.resourceGroups.createOrUpdate("rg-ids", { location: "westeurope" });
    const id = await msi.userAssignedIdentities.createOrUpdate("rg-ids", "ce-identity", { location: "westeurope", tags: { a: "1" } });
    expect(id.principalId).toMatch(/^[0-9a-f-]{36}$/);
    expect(id.clientId).toMatch(/^[0-9a-f-]{36}$/);
    expect(id.tenantId).toBe((await azureInfo()).tenantId);
    expect((await msi.userAssignedIdentities.get("rg-ids", "CE-IDENTITY")).principalId).toBe(id.principalId);
    expect((await collect(msi.userAssignedIdentities.listBySubscription())).map((x) => x.name)).toEqual(["ce-identity"]);
    await msi.userAssignedIdentities.delete("rg-ids", "ce-identity");
    await expect(msi.userAssignedIdentities.get("rg-ids", "ce-identity")).rejects.toMatchObject({ statusCode: 404, code: "ResourceNotFound" });
  });

  it("virtual networks, subnets, public IPs and NICs; in-use resources cannot be deleted", async () => {
    await rm.resourceGroups.createOrUpdate("rg-net", { location: "westeurope" });
    await azureControl().settings({ latencyMs: { "Microsoft.Network/virtualNetworks": 200 } });
    const vnet = await net.virtualNetworks.createOrUpdate("rg-net", "vnet", {
      location: "westeurope",
      addressSpace: { addressPrefixes: ["10.10.0.0/16"] },
      subnets: [{ name: "default", addressPrefix: "10.10.0.0/24" }],
    });
    await azureControl().settings({ latencyMs: { "Microsoft.Network/virtualNetworks": 0 } });
    expect(vnet.provisioningState).toBe("Succeeded");
    expect(vnet.subnets?.map((s) => s.name)).toEqual(["default"]);
    const subnet2 = await net.subnets.createOrUpdate("rg-net", "vnet", "second", { addressPrefix: "10.10.1.0/24" });
    expect(subnet2.id).toBe(`${vnet.id}/subnets/second`);
    await expect(net.subnets.createOrUpdate("rg-net", "vnet", "overlap", { addressPrefix: "10.10.1.0/25" })).rejects.toMatchObject({ statusCode: 400, code: "NetcfgSubnetRangesOverlap" });
    await expect(net.subnets.createOrUpdate("rg-net", "vnet", "outside", { addressPrefix: "10.99.0.0/24" })).rejects.toMatchObject({ statusCode: 400, code: "NetcfgSubnetRangeOutsideVnet" });
    expect((await collect(net.subnets.list("rg-net", "vnet"))).map((s) => s.name).sort()).toEqual(["default", "second"]);

    const pip = await net.publicIPAddresses.createOrUpdate("rg-net", "pip", { location: "westeurope", sku: { name: "Standard" }, publicIPAllocationMethod: "Static" });
    expect(pip.ipAddress).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    const nic = await net.networkInterfaces.createOrUpdate("rg-net", "nic", {
      location: "westeurope",
      ipConfigurations: [{ name: "ipconfig1", subnet: { id: `${vnet.id}/subnets/default` }, publicIPAddress: { id: pip.id } }],
    });
    expect(nic.ipConfigurations?.[0]?.privateIPAddress).toBe("10.10.0.4");
    expect((await collect(net.networkInterfaces.list("rg-net"))).map((n) => n.name)).toEqual(["nic"]);

    await expect(net.subnets.delete("rg-net", "vnet", "default").pollUntilDone()).rejects.toMatchObject({ statusCode: 400, code: "InUseSubnetCannotBeDeleted" });
    await expect(net.publicIPAddresses.delete("rg-net", "pip").pollUntilDone()).rejects.toMatchObject({ statusCode: 400, code: "PublicIPAddressCannotBeDeleted" });
    await expect(net.virtualNetworks.delete("rg-net", "vnet").pollUntilDone()).rejects.toMatchObject({ statusCode: 400, code: "InUseSubnetCannotBeDeleted" });

    await net.networkInterfaces.delete("rg-net", "nic").pollUntilDone();
    await net.publicIPAddresses.delete("rg-net", "pip").pollUntilDone();
    await net.subnets.delete("rg-net", "vnet", "second").pollUntilDone();
    expect((await net.virtualNetworks.get("rg-net", "vnet")).subnets?.map((s) => s.name)).toEqual(["default"]);
    await net.virtualNetworks.delete("rg-net", "vnet").pollUntilDone();
    await expect(net.virtualNetworks.get("rg-net", "vnet")).rejects.toMatchObject({ statusCode: 404 });
  });

  it("Log Analytics workspaces and tables: customerId, TimeGenerated required, soft delete blocks the name, force deletes", async () => {
    await rm.resourceGroups.createOrUpdate("rg-la", { location: "westeurope" });
    await rm.resourceGroups.createOrUpdate("rg-la-2", { location: "westeurope" });
    await azureControl().settings({ latencyMs: { "Microsoft.OperationalInsights/workspaces": 200 } });
    const ws = await la.workspaces.createOrUpdate("rg-la", "ce-logs", { location: "westeurope", sku: { name: "PerGB2018" }, retentionInDays: 30 });
    await azureControl().settings({ latencyMs: { "Microsoft.OperationalInsights/workspaces": 0 } });
    expect(ws.provisioningState).toBe("Succeeded");
    expect(ws.customerId).toMatch(/^[0-9a-f-]{36}$/);
    expect((await collect(la.workspaces.listByResourceGroup("rg-la"))).map((w) => w.name)).toEqual(["ce-logs"]);

    await expect(
      la.tables.createOrUpdate("rg-la", "ce-logs", "NoTime_CL", { schema: { name: "NoTime_CL", columns: [{ name: "Message", type: "string" }] } }).pollUntilDone(),
    ).rejects.toMatchObject({ statusCode: 400, code: "InvalidParameter", message: expect.stringContaining("TimeGenerated") });
    const table = await la.tables.createOrUpdate("rg-la", "ce-logs", "RunLogs_CL", {
      schema: { name: "RunLogs_CL", columns: [{ name: "TimeGenerated", type: "dateTime" }, { name: "Message", type: "string" }] },
    });
    expect(table.provisioningState).toBe("Succeeded");
    expect((await la.tables.get("rg-la", "ce-logs", "RunLogs_CL")).schema?.columns?.map((c) => c.name)).toEqual(["TimeGenerated", "Message"]);
    await la.tables.createOrUpdate("rg-la", "ce-logs", "Extra_CL", { schema: { name: "Extra_CL", columns: [{ name: "TimeGenerated", type: "dateTime" }] } });
    expect((await collect(la.tables.listByWorkspace("rg-la", "ce-logs"))).map((t) => t.name).sort()).toEqual(["Extra_CL", "RunLogs_CL"]);
    await la.tables.delete("rg-la", "ce-logs", "Extra_CL").pollUntilDone();
    await expect(la.tables.get("rg-la", "ce-logs", "Extra_CL")).rejects.toMatchObject({ statusCode: 404 });

    // soft delete: gone from reads, the name cannot be used elsewhere
    await la.workspaces.delete("rg-la", "ce-logs").pollUntilDone();
    await expect(la.workspaces.get("rg-la", "ce-logs")).rejects.toMatchObject({ statusCode: 404 });
    await expect(la.workspaces.createOrUpdate("rg-la-2", "ce-logs", { location: "westeurope" }).pollUntilDone()).rejects.toMatchObject({ statusCode: 409 });
    // re-creating it where it was recovers it, with its customerId and tables
    const recovered = await la.workspaces.createOrUpdate("rg-la", "ce-logs", { location: "westeurope" });
    expect(recovered.customerId).toBe(ws.customerId);
    expect((await la.tables.get("rg-la", "ce-logs", "RunLogs_CL")).name).toBe("RunLogs_CL");
    // a forced delete is permanent and frees the name
    await la.workspaces.delete("rg-la", "ce-logs", { force: true }).pollUntilDone();
    const fresh = await la.workspaces.createOrUpdate("rg-la-2", "ce-logs", { location: "westeurope" });
    expect(fresh.customerId).not.toBe(ws.customerId);
  });

  it("data collection endpoints and rules: logsIngestion endpoint, immutableId, validation of streams, flows and destinations", async () => {
    await rm.resourceGroups.createOrUpdate("rg-dcr", { location: "westeurope" });
    const ws = await la.workspaces.createOrUpdate("rg-dcr", "dcr-logs", { location: "westeurope" });
    await la.tables.createOrUpdate("rg-dcr", "dcr-logs", "RunLogs_CL", {
      schema: { name: "RunLogs_CL", columns: [{ name: "TimeGenerated", type: "dateTime" }, { name: "Message", type: "string" }] },
    });
    const dce = await mon.dataCollectionEndpoints.create("rg-dcr", "CE-Dce", { body: { location: "westeurope", networkAcls: { publicNetworkAccess: "Enabled" } } });
    expect(dce.logsIngestion?.endpoint).toBe(`${azureEndpoint()}/dce/ce-dce`);
    expect(dce.immutableId).toMatch(/^dce-[0-9a-f]{32}$/);

    const rule = (outputStream: string, declared = "Custom-RunLogs") => ({
      location: "westeurope",
      dataCollectionEndpointId: dce.id,
      streamDeclarations: { [declared]: { columns: [{ name: "TimeGenerated", type: "datetime" }, { name: "Message", type: "string" }] } },
      destinations: { logAnalytics: [{ workspaceResourceId: ws.id, name: "la" }] },
      dataFlows: [{ streams: ["Custom-RunLogs"], destinations: ["la"], transformKql: "source", outputStream }],
    });
    const dcr = await mon.dataCollectionRules.create("rg-dcr", "ce-dcr", { body: rule("Custom-RunLogs_CL") });
    expect(dcr.immutableId).toMatch(/^dcr-[0-9a-f]{32}$/);
    expect(dcr.dataFlows?.[0]?.outputStream).toBe("Custom-RunLogs_CL");
    await expect(mon.dataCollectionRules.create("rg-dcr", "bad-table", { body: rule("Custom-Missing_CL") })).rejects.toMatchObject({
      statusCode: 400,
      code: "InvalidPayload",
      details: { error: expect.objectContaining({ details: [expect.objectContaining({ code: "InvalidOutputTable" })] }) },
    });
    await expect(mon.dataCollectionRules.create("rg-dcr", "bad-stream", { body: rule("Custom-RunLogs_CL", "Custom-Other") })).rejects.toMatchObject({ statusCode: 400, code: "InvalidPayload" });
    expect((await collect(mon.dataCollectionRules.listByResourceGroup("rg-dcr"))).map((r) => r.name)).toEqual(["ce-dcr"]);
    expect((await collect(mon.dataCollectionEndpoints.listBySubscription())).map((r) => r.name)).toEqual(["CE-Dce"]);
    expect((await mon.dataCollectionRules.get("rg-dcr", "CE-DCR")).immutableId).toBe(dcr.immutableId);
    await mon.dataCollectionRules.delete("rg-dcr", "ce-dcr");
    await mon.dataCollectionEndpoints.delete("rg-dcr", "ce-dce");
    await expect(mon.dataCollectionRules.get("rg-dcr", "ce-dcr")).rejects.toMatchObject({ statusCode: 404 });
    await expect(mon.dataCollectionEndpoints.get("rg-dcr", "ce-dce")).rejects.toMatchObject({ statusCode: 404 });
  });

  it("deleting a resource group deletes everything inside it", async () => {
    await rm.resourceGroups.createOrUpdate("rg-cascade", { location: "westeurope" });
    await msi.userAssignedIdentities.createOrUpdate("rg-cascade", "ident", { location: "westeurope" });
    const vnet = await net.virtualNetworks.createOrUpdate("rg-cascade", "vnet", { location: "westeurope", addressSpace: { addressPrefixes: ["10.0.0.0/16"] }, subnets: [{ name: "s", addressPrefix: "10.0.0.0/24" }] });
    await net.networkInterfaces.createOrUpdate("rg-cascade", "nic", { location: "westeurope", ipConfigurations: [{ name: "c", subnet: { id: vnet.subnets![0]!.id } }] });
    await la.workspaces.createOrUpdate("rg-cascade", "cascade-logs", { location: "westeurope" });
    await mon.dataCollectionEndpoints.create("rg-cascade", "dce", { body: { location: "westeurope" } });
    await rm.resourceGroups.delete("rg-cascade", { forceDeletionTypes: "Microsoft.Compute/virtualMachines" }).pollUntilDone();
    expect((await rm.resourceGroups.checkExistence("rg-cascade")).body).toBe(false);
    await rm.resourceGroups.createOrUpdate("rg-cascade", { location: "westeurope" });
    expect(await collect(rm.resources.listByResourceGroup("rg-cascade"))).toEqual([]);
    await expect(net.networkInterfaces.get("rg-cascade", "nic")).rejects.toMatchObject({ statusCode: 404 });
  });
});
