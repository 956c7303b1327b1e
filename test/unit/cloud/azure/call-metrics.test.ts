import { afterEach, describe, expect, it } from "vitest";
import { createHttpHeaders, createPipelineRequest, type PipelineRequest, type PipelineResponse } from "@azure/core-rest-pipeline";
import { ThrottleGate, azCall, azureOperationOf, callMetricsPolicy, throttleMemoryPolicy } from "../../../../src/cloud/azure/clients.js";
import { RestLikeError } from "./fake-azure.js";
import { callSites } from "./call-sites.js";
import { setCloudCallObserver, type CloudCall } from "../../../../src/cloud/call-metrics.js";

const ARM = "https://management.azure.com";
const SUB = "/subscriptions/00000000-0000-0000-0000-000000000001";

describe("azureOperationOf: service and operation of an Azure request, without resource names", () => {
  it.each([
    ["PUT", `${SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1?api-version=2024-07-01`, "Compute", "virtualMachines/write"],
    ["GET", `${SUB}/providers/Microsoft.Compute/virtualMachines?statusOnly=true`, "Compute", "virtualMachines/read"],
    ["DELETE", `${SUB}/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/ws/tables/T_CL`, "OperationalInsights", "workspaces/tables/delete"],
    ["POST", `${SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa/listKeys`, "Storage", "storageAccounts/listKeys"],
    ["PUT", `${SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa/blobServices/default/containers/work/providers/Microsoft.Authorization/roleAssignments/0000`, "Authorization", "roleAssignments/write"],
    ["PUT", `${SUB}/resourcegroups/vmforge-ns-ce-1234abcd`, "Resources", "resourcegroups/write"],
    ["GET", `${SUB}`, "Resources", "subscriptions/read"],
    ["GET", `${SUB}/providers/Microsoft.Compute/locations/westeurope/operations/abc`, "Compute", "locations/operations/read"],
  ])("%s %s -> %s %s", (method, path, service, operation) => {
    expect(azureOperationOf(method, `${ARM}${path}`)).toEqual({ service, operation });
  });

  it("names Log Analytics queries and Entra token requests", () => {
    expect(azureOperationOf("POST", "https://api.loganalytics.io/v1/workspaces/1234/query")).toEqual({ service: "LogAnalytics", operation: "query" });
    expect(azureOperationOf("POST", "https://login.microsoftonline.com/tenant-id/oauth2/v2.0/token")).toEqual({ service: "EntraID", operation: "token" });
  });
});

describe("callMetricsPolicy", () => {
  const seen: CloudCall[] = [];
  setCloudCallObserver((c) => seen.push(c));
  afterEach(() => {
    seen.length = 0;
  });

  const send = (status: number | Error) => {
    const request = createPipelineRequest({ url: `${ARM}${SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet`, method: "PUT" });
    return callMetricsPolicy().sendRequest(request, async (req) => {
      if (status instanceof Error) throw status;
      return { request: req, status, headers: createHttpHeaders() } satisfies PipelineResponse;
    });
  };

  it("reports success, throttled (429) and error answers and failures, once per call", async () => {
    await send(200);
    await send(429);
    await send(409);
    await expect(send(new Error("socket hang up"))).rejects.toThrow("socket hang up");
    expect(seen.map((c) => [c.provider, c.service, c.operation, c.outcome])).toEqual([
      ["azure", "Network", "virtualNetworks/write", "success"],
      ["azure", "Network", "virtualNetworks/write", "throttled"],
      ["azure", "Network", "virtualNetworks/write", "error"],
      ["azure", "Network", "virtualNetworks/write", "error"],
    ]);
    expect(seen.every((c) => c.seconds >= 0)).toBe(true);
  });
});

describe("throttleMemoryPolicy: a 429 holds the gate as it comes, before the SDK's own retry", () => {
  const answer = (status: number, headers: Record<string, string> = {}) => async (req: PipelineRequest): Promise<PipelineResponse> =>
    ({ request: req, status, headers: createHttpHeaders(headers) });
  const request = (method: string, path: string) => createPipelineRequest({ url: `${ARM}${SUB}${path}`, method: method as "GET" });

  it("holds the kind of the answered request (provider, read/write/delete) for its Retry-After, in seconds or ms", async () => {
    let now = 5_000;
    const gate = new ThrottleGate(() => now);
    const policy = throttleMemoryPolicy(gate);
    const res = await policy.sendRequest(request("GET", "/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces"), answer(429, { "retry-after": "2" }));
    expect(res.status).toBe(429);
    // Any read of that provider waits; writes of it and reads of another do not.
    expect(gate.heldFor("Microsoft.Network/publicIPAddresses/read")).toBe(2_000);
    expect(gate.heldFor("Microsoft.Network/publicIPAddresses/write")).toBe(0);
    expect(gate.heldFor("Microsoft.Compute/virtualMachines/read")).toBe(0);
    await policy.sendRequest(request("DELETE", "/resourcegroups/vmforge-ns-ce-1234abcd"), answer(429, { "x-ms-retry-after-ms": "1500" }));
    expect(gate.heldFor("Microsoft.Resources/subscriptions/resourceGroups/delete")).toBe(1_500);
    await policy.sendRequest(request("PUT", "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"), answer(429, { "retry-after": "1" }));
    expect(gate.heldFor("Microsoft.Compute/virtualMachines/write")).toBe(1_000);
    now += 2_000;
    expect(gate.heldFor("Microsoft.Network/publicIPAddresses/read")).toBe(0);
  });

  it("holds nothing for other answers, a 429 without a hint, or a request outside Resource Manager", async () => {
    const gate = new ThrottleGate(() => 0);
    const policy = throttleMemoryPolicy(gate);
    await policy.sendRequest(request("GET", "/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces"), answer(503, { "retry-after": "5" }));
    await policy.sendRequest(request("GET", "/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks"), answer(429));
    await policy.sendRequest(createPipelineRequest({ url: "https://login.microsoftonline.com/t/oauth2/v2.0/token", method: "POST" }), answer(429, { "retry-after": "5" }));
    expect(gate.heldFor("Microsoft.Network/networkInterfaces/read")).toBe(0);
    expect(ThrottleGate.kindOfRequest("POST", "https://login.microsoftonline.com/t/oauth2/v2.0/token")).toBeUndefined();
  });
});

describe("ThrottleGate keys: a request and the action azCall names for it are the same kind", () => {
  const RG = `${SUB}/resourceGroups/rg`;
  // Every Resource Manager action the Azure code passes to azCall, with a request it sends for it.
  const table: Array<[string, string, string]> = [
    ["Microsoft.Authorization/permissions/read", "GET", `${RG}/providers/Microsoft.Network/virtualNetworks/v/subnets/s/providers/Microsoft.Authorization/permissions`],
    ["Microsoft.Authorization/roleAssignments/delete", "DELETE", `${RG}/providers/Microsoft.Storage/storageAccounts/sa/blobServices/default/containers/work/providers/Microsoft.Authorization/roleAssignments/0000`],
    ["Microsoft.Authorization/roleAssignments/read", "GET", `${SUB}/providers/Microsoft.Authorization/roleAssignments`],
    ["Microsoft.Authorization/roleAssignments/write", "PUT", `${RG}/providers/Microsoft.Insights/dataCollectionRules/d/providers/Microsoft.Authorization/roleAssignments/0000`],
    ["Microsoft.Authorization/roleDefinitions/delete", "DELETE", `${SUB}/providers/Microsoft.Authorization/roleDefinitions/0000`],
    ["Microsoft.Authorization/roleDefinitions/read", "GET", `${SUB}/providers/Microsoft.Authorization/roleDefinitions/0000`],
    ["Microsoft.Authorization/roleDefinitions/write", "PUT", `${SUB}/providers/Microsoft.Authorization/roleDefinitions/0000`],
    ["Microsoft.Compute/disks/delete", "DELETE", `${RG}/providers/Microsoft.Compute/disks/d`],
    ["Microsoft.Compute/disks/read", "GET", `${RG}/providers/Microsoft.Compute/disks`],
    ["Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read", "GET", `${SUB}/providers/Microsoft.Compute/locations/westeurope/publishers/p/artifacttypes/vmimage/offers/o/skus/s/versions`],
    ["Microsoft.Compute/skus/read", "GET", `${SUB}/providers/Microsoft.Compute/skus`],
    ["Microsoft.Compute/virtualMachines/delete", "DELETE", `${RG}/providers/Microsoft.Compute/virtualMachines/vm`],
    ["Microsoft.Compute/virtualMachines/read", "GET", `${SUB}/providers/Microsoft.Compute/virtualMachines`],
    ["Microsoft.Compute/virtualMachines/write", "PUT", `${RG}/providers/Microsoft.Compute/virtualMachines/vm`],
    ["Microsoft.Insights/DataCollectionEndpoints/Delete", "DELETE", `${RG}/providers/Microsoft.Insights/dataCollectionEndpoints/e`],
    ["Microsoft.Insights/DataCollectionEndpoints/Read", "GET", `${RG}/providers/microsoft.insights/dataCollectionEndpoints/e`],
    ["Microsoft.Insights/DataCollectionRules/Write", "PUT", `${RG}/providers/Microsoft.Insights/dataCollectionRules/r`],
    ["Microsoft.ManagedIdentity/userAssignedIdentities/read", "GET", `${RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i`],
    ["Microsoft.ManagedIdentity/userAssignedIdentities/write", "PUT", `${RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i`],
    ["Microsoft.Network/networkInterfaces/delete", "DELETE", `${RG}/providers/Microsoft.Network/networkInterfaces/n`],
    ["Microsoft.Network/publicIPAddresses/read", "GET", `${RG}/providers/Microsoft.Network/publicIPAddresses`],
    ["Microsoft.Network/virtualNetworks/subnets/read", "GET", `${RG}/providers/Microsoft.Network/virtualNetworks/v/subnets/s`],
    ["Microsoft.Network/virtualNetworks/write", "PUT", `${RG}/providers/Microsoft.Network/virtualNetworks/v`],
    ["Microsoft.OperationalInsights/workspaces/delete", "DELETE", `${RG}/providers/Microsoft.OperationalInsights/workspaces/w`],
    ["Microsoft.OperationalInsights/workspaces/tables/write", "PUT", `${RG}/providers/Microsoft.OperationalInsights/workspaces/w/tables/T_CL`],
    ["Microsoft.Resources/subscriptions/resourceGroups/delete", "DELETE", `${SUB}/resourcegroups/rg`],
    ["Microsoft.Resources/subscriptions/resourceGroups/read", "GET", `${SUB}/resourcegroups/rg`],
    ["Microsoft.Resources/subscriptions/resources/read", "GET", `${SUB}/resources`],
    ["Microsoft.Storage/storageAccounts/blobServices/containers/read", "GET", `${RG}/providers/Microsoft.Storage/storageAccounts/sa/blobServices/default/containers/work`],
    ["Microsoft.Network/networkInterfaces/read", "GET", `${RG}/providers/Microsoft.Network/networkInterfaces`],
    ["Microsoft.Network/publicIPAddresses/delete", "DELETE", `${RG}/providers/Microsoft.Network/publicIPAddresses/ip`],
    ["Microsoft.Network/virtualNetworks/read", "GET", `${RG}/providers/Microsoft.Network/virtualNetworks/v`],
    ["Microsoft.Insights/DataCollectionEndpoints/Write", "PUT", `${RG}/providers/Microsoft.Insights/dataCollectionEndpoints/e`],
    ["Microsoft.Insights/DataCollectionRules/Read", "GET", `${RG}/providers/Microsoft.Insights/dataCollectionRules/r`],
    ["Microsoft.Insights/DataCollectionRules/Delete", "DELETE", `${RG}/providers/Microsoft.Insights/dataCollectionRules/r`],
    ["Microsoft.OperationalInsights/workspaces/read", "GET", `${RG}/providers/Microsoft.OperationalInsights/workspaces/w`],
    ["Microsoft.OperationalInsights/workspaces/write", "PUT", `${RG}/providers/Microsoft.OperationalInsights/workspaces/w`],
    ["Microsoft.OperationalInsights/workspaces/tables/read", "GET", `${RG}/providers/Microsoft.OperationalInsights/workspaces/w/tables/T_CL`],
    ["Microsoft.Resources/subscriptions/resourceGroups/write", "PUT", `${SUB}/resourcegroups/rg`],
  ];
  /** Not Resource Manager calls: held by their action (see azCall). */
  const elsewhere = ["Microsoft.OperationalInsights/workspaces/query/read", "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"];

  it.each(table)("%s (%s)", (action, method, path) => {
    expect(ThrottleGate.kindOfRequest(method, `${ARM}${path}`)).toBe(ThrottleGate.kind(action));
  });

  it("the table has every action the Azure code passes to azCall, azGet or azDelete", () => {
    const used = [...new Set(callSites().sites.map((x) => x.action))].filter((a) => !elsewhere.includes(a)).sort();
    expect(used.length).toBeGreaterThan(30);
    expect(used.filter((a) => !table.some(([t]) => t === a))).toEqual([]);
  });

  it("a long-running operation's status poll is a read of its provider; requests outside Resource Manager have no kind", () => {
    expect(ThrottleGate.kindOfRequest("GET", `${ARM}${SUB}/providers/Microsoft.Network/locations/westeurope/operations/abc`)).toBe("microsoft.network:read");
    expect(ThrottleGate.kindOfRequest("GET", `${ARM}${SUB}/operationresults/abc`)).toBe("microsoft.resources:read");
    expect(ThrottleGate.kindOfRequest("POST", "https://api.loganalytics.io/v1/workspaces/1234/query")).toBeUndefined();
    expect(ThrottleGate.kindOfRequest("GET", "https://sa.blob.core.windows.net/work/runs/x/.exitcode")).toBeUndefined();
  });

  it("azCall holds by the request Azure refused (a status poll: reads), by the action when the request is not Resource Manager's; never beyond an hour", async () => {
    let now = 0;
    const throttle = new ThrottleGate(() => now);
    const clients = { identity: { kind: "secret" as const, label: "Secret ns/c" }, throttle };
    const refused = (method: string, url: string, retryAfterS: string) => Object.assign(new RestLikeError(429, "TooManyRequests", "slow down", retryAfterS), { request: { method, url } });
    // A delete whose status poll was throttled: that provider's reads wait, its deletes do not.
    await expect(azCall(clients, "launch", "Microsoft.Network/networkInterfaces/delete", async () => {
      throw refused("GET", `${ARM}${SUB}/providers/Microsoft.Network/locations/westeurope/operations/abc`, "2");
    })).rejects.toMatchObject({ reason: "Throttled" });
    expect(throttle.heldFor("Microsoft.Network/virtualNetworks/read")).toBe(2_000);
    expect(throttle.heldFor("Microsoft.Network/networkInterfaces/delete")).toBe(0);
    // A Log Analytics query: by its action.
    await expect(azCall(clients, "launch", "Microsoft.OperationalInsights/workspaces/query/read", async () => {
      throw refused("POST", "https://api.loganalytics.io/v1/workspaces/1234/query", "3");
    })).rejects.toMatchObject({ reason: "Throttled" });
    expect(throttle.heldFor("Microsoft.OperationalInsights/workspaces/query/read")).toBe(3_000);
    // A hint of a day holds for an hour at most.
    await expect(azCall(clients, "launch", "Microsoft.Compute/virtualMachines/read", async () => {
      throw refused("GET", `${ARM}${SUB}/providers/Microsoft.Compute/virtualMachines`, "86400");
    })).rejects.toMatchObject({ reason: "Throttled" });
    expect(throttle.heldFor("Microsoft.Compute/disks/read")).toBe(3_600_000);
    now += 3_600_000;
    expect(throttle.heldFor("Microsoft.Compute/disks/read")).toBe(0);
  });
});

