// The VM list of a subscription is made once per poll and credentials, and shared by every CE of
// that subscription whose Runs the poll describes: the run tracker with the real AzureProvider
// over in-memory SDK stand-ins (one per identity, so a result of one identity cannot reach the
// CEs of another), and the listing through the real Compute SDK client, whose pages (nextLink)
// are served in-process.
import { describe, expect, it } from "vitest";
import { ceOfIn } from "../../../support/ce-of.js";
import { ComputeManagementClient } from "@azure/arm-compute";
import { createHttpHeaders, type HttpClient, type PipelineRequest, type PipelineResponse } from "@azure/core-rest-pipeline";
import type { ComputeEnvironment, Run } from "../../../../src/api/types.js";
import type { KubeClient } from "../../../../src/engine/kube.js";
import { createLogger } from "../../../../src/engine/logger.js";
import { AzureProvider } from "../../../../src/cloud/azure/provider.js";
import { listVmStates } from "../../../../src/cloud/azure/runs.js";
import type { AzureClients } from "../../../../src/cloud/azure/clients.js";
import { resourceGroupName, vmName } from "../../../../src/cloud/azure/names.js";
import { RunTracker, accountRegionKey } from "../../../../src/controllers/run/tracker.js";
import { FakeAzure, RestLikeError, sampleAzureCe } from "./fake-azure.js";

const CLIENT_A = "aaaaaaaa-0000-4000-8000-000000000001";
const CLIENT_B = "bbbbbbbb-0000-4000-8000-000000000002";
const TENANT = "tttttttt-0000-4000-8000-000000000000";

function ceNamed(sub: string, name: string, secret: string, uid: string): ComputeEnvironment {
  const ce = sampleAzureCe(sub);
  ce.metadata = { ...ce.metadata, name, uid };
  ce.spec = { ...ce.spec, credentials: { secretRef: { name: secret } } };
  ce.status = { azure: { workspaceCustomerId: "cust-1", storageAccount: "wdstore" } };
  return ce;
}

let n = 0;
/** A Run of `ce` whose VM was created in the CE's resource group (the fake's store), with a power state. */
function runWithVm(az: FakeAzure, ce: ComputeEnvironment, power: string): Run {
  const uid = `99999999-8888-4777-8666-${String(++n).padStart(12, "0")}`;
  const rg = resourceGroupName({ namespace: ce.metadata.namespace!, name: ce.metadata.name!, uid: ce.metadata.uid! });
  const name = vmName(uid);
  const id = `/subscriptions/${az.sub}/resourceGroups/${rg}/providers/Microsoft.Compute/virtualMachines/${name}`;
  az.put(id, { name, provisioningState: "Succeeded", instanceView: { statuses: [{ code: "ProvisioningState/succeeded" }, { code: `PowerState/${power}` }] } });
  return {
    metadata: { namespace: ce.metadata.namespace, name: `r${n}`, uid },
    spec: { computeEnvironmentRef: { name: ce.metadata.name! }, pipeline: { repository: "https://example.com/p" } },
    status: { phase: "Running", instance: { id } },
  } as Run;
}

/** Secrets by name: "creds" is client A, "other" client B. */
const secrets = (async (_ns: string, name: string) => ({
  metadata: { name },
  data: Object.fromEntries(Object.entries({ tenantId: TENANT, clientId: name === "other" ? CLIENT_B : CLIENT_A, clientSecret: `s-${name}` }).map(([k, v]) => [k, Buffer.from(v).toString("base64")])),
})) as never;

function setup(ces: ComputeEnvironment[], runs: Run[], byClient: Map<string, FakeAzure>): RunTracker {
  const provider = new AzureProvider({
    endpoints: {},
    clientFactory: (id) => {
      const az = byClient.get(id.clientId ?? "");
      if (!az) throw new Error(`no fake for ${id.clientId}`);
      return az.clients() as AzureClients;
    },
  });
  return new RunTracker({
    client: {} as KubeClient,
    secrets,
    providers: new Map([["azure", provider]]),
    runs: { list: () => runs },
    ceOf: ceOfIn(() => ces),
    logger: createLogger({ level: "silent" }),
    enqueueRun: () => {},
    pollIntervalMs: 1000,
  });
}

const listCalls = (az: FakeAzure): number => az.ops().filter((o) => o === "compute.virtualMachines.listAll").length;

describe("one VM list per subscription and credentials per poll", () => {
  it("two CEs of one subscription with the same Secret: one list call per poll, each Run described from it", async () => {
    const az = new FakeAzure();
    const ce1 = ceNamed(az.sub, "ce1", "creds", "0a1b2c3d-4e5f-4a6b-8c7d-000000000001");
    const ce2 = ceNamed(az.sub, "ce2", "creds", "0a1b2c3d-4e5f-4a6b-8c7d-000000000002");
    expect(accountRegionKey(ce1)).toBe(accountRegionKey(ce2));
    const runs = [runWithVm(az, ce1, "running"), runWithVm(az, ce1, "starting"), runWithVm(az, ce2, "running"), runWithVm(az, ce2, "running")];
    const t = setup([ce1, ce2], runs, new Map([[CLIENT_A, az]]));
    await t.pollOnce();
    expect(listCalls(az)).toBe(1);
    expect(az.ops().filter((o) => o.startsWith("compute.virtualMachines"))).toEqual(["compute.virtualMachines.listAll"]);
    expect(t.lastPoll).toEqual({ groups: 1, runs: 4 });
    expect(runs.map((r) => t.get(r.metadata.uid!)?.desc?.state)).toEqual(["running", "pending", "running", "running"]);
    expect(t.get(runs[2]!.metadata.uid!)?.desc?.instanceId).toBe(runs[2]!.status!.instance!.id);

    // The next poll lists afresh (nothing kept from the last one): a VM stopped since is seen
    // stopped (and, without an exit status or exit line, deleted at once while its outcome is awaited).
    az.get(runs[3]!.status!.instance!.id!)!.instanceView = { statuses: [{ code: "ProvisioningState/succeeded" }, { code: "PowerState/deallocated" }] };
    await t.pollOnce();
    expect(listCalls(az)).toBe(2);
    expect(t.get(runs[3]!.metadata.uid!)?.desc).toMatchObject({ state: "shutting-down", outcomeUnknown: true });
    expect(az.ops()).toContain("compute.virtualMachines.delete");
  });

  it("a CE with other credentials gets its own list call and never another identity's result", async () => {
    const a = new FakeAzure();
    const b = new FakeAzure(); // what identity B can see (same subscription ID)
    const ce1 = ceNamed(a.sub, "ce1", "creds", "0a1b2c3d-4e5f-4a6b-8c7d-000000000001");
    const ce2 = ceNamed(a.sub, "ce2", "creds", "0a1b2c3d-4e5f-4a6b-8c7d-000000000002");
    const ce3 = ceNamed(a.sub, "ce3", "other", "0a1b2c3d-4e5f-4a6b-8c7d-000000000003");
    expect(accountRegionKey(ce3)).not.toBe(accountRegionKey(ce1));
    const r1 = runWithVm(a, ce1, "running");
    const r2 = runWithVm(a, ce2, "running");
    // ce3's VM is seen by identity B only; identity A also lists a VM of that ID but stopped.
    const r3 = runWithVm(b, ce3, "running");
    a.put(r3.status!.instance!.id!, { name: vmName(r3.metadata.uid!), instanceView: { statuses: [{ code: "PowerState/stopped" }] } });
    const t = setup([ce1, ce2, ce3], [r1, r2, r3], new Map([[CLIENT_A, a], [CLIENT_B, b]]));
    await t.pollOnce();
    expect(listCalls(a)).toBe(1);
    expect(listCalls(b)).toBe(1);
    expect(t.lastPoll.groups).toBe(2);
    expect(t.get(r3.metadata.uid!)?.desc?.state).toBe("running");
    expect(t.get(r1.metadata.uid!)?.desc?.state).toBe("running");
    expect(t.get(r2.metadata.uid!)?.desc?.state).toBe("running");
  });

  it("a stopped VM of one CE whose deletion is refused does not fail the describe of the other CEs", async () => {
    const az = new FakeAzure();
    const ce1 = ceNamed(az.sub, "ce1", "creds", "0a1b2c3d-4e5f-4a6b-8c7d-000000000001");
    const ce2 = ceNamed(az.sub, "ce2", "creds", "0a1b2c3d-4e5f-4a6b-8c7d-000000000002");
    const ended = runWithVm(az, ce1, "stopped");
    az.blobs.set(`wdstore/work/runs/.vmforge/runs/${ended.metadata.uid}/exit-status`, "3\n");
    const other = runWithVm(az, ce2, "running");
    az.fail("compute.virtualMachines.delete", new RestLikeError(403, "AuthorizationFailed", "no delete"));
    const t = setup([ce1, ce2], [ended, other], new Map([[CLIENT_A, az]]));
    await t.pollOnce();
    expect(az.ops()).toContain("compute.virtualMachines.delete");
    expect(t.get(other.metadata.uid!)?.desc?.state).toBe("running");
    // Reported as seen, with its outcome: the Run ends and its own reconcile deletes the VM.
    expect(t.get(ended.metadata.uid!)?.desc).toMatchObject({ state: "stopped", exitCode: 3 });
    // Next poll: the deletion goes through.
    await t.pollOnce();
    expect(t.get(ended.metadata.uid!)?.desc).toMatchObject({ state: "shutting-down", exitCode: 3 });
    expect(az.get(ended.status!.instance!.id!)).toBeUndefined();
  });

  it("CEs of two subscriptions: one list call each", async () => {
    const az = new FakeAzure();
    const ce1 = ceNamed(az.sub, "ce1", "creds", "0a1b2c3d-4e5f-4a6b-8c7d-000000000001");
    const ce2 = ceNamed("22222222-2222-4222-8222-222222222222", "ce2", "creds", "0a1b2c3d-4e5f-4a6b-8c7d-000000000002");
    expect(accountRegionKey(ce1)).not.toBe(accountRegionKey(ce2));
    const t = setup([ce1, ce2], [runWithVm(az, ce1, "running"), runWithVm(az, ce2, "running")], new Map([[CLIENT_A, az]]));
    await t.pollOnce();
    expect(listCalls(az)).toBe(2);
  });
});

describe("listVmStates through the Compute SDK", () => {
  it("follows nextLink to the last page, in one list", async () => {
    const sub = "11111111-2222-3333-4444-555555555555";
    const vm = (i: number, power: string) => ({
      id: `/subscriptions/${sub}/resourceGroups/rg${i % 2}/providers/Microsoft.Compute/virtualMachines/vm${i}`,
      name: `vm${i}`,
      properties: { instanceView: { statuses: [{ code: "ProvisioningState/succeeded" }, { code: `PowerState/${power}` }] } },
    });
    const base = `https://arm.test/subscriptions/${sub}/providers/Microsoft.Compute/virtualMachines`;
    const pages = [
      { value: [vm(1, "running"), vm(2, "running")], nextLink: `${base}?api-version=2024-07-01&statusOnly=true&$skiptoken=p2` },
      { value: [vm(3, "stopped")], nextLink: `${base}?api-version=2024-07-01&statusOnly=true&$skiptoken=p3` },
      { value: [vm(4, "deallocated")] },
    ];
    const seen: string[] = [];
    const httpClient: HttpClient = {
      async sendRequest(req: PipelineRequest): Promise<PipelineResponse> {
        seen.push(req.url);
        const token = new URL(req.url).searchParams.get("$skiptoken");
        const page = token === "p3" ? pages[2] : token === "p2" ? pages[1] : pages[0];
        return { request: req, status: 200, headers: createHttpHeaders({ "content-type": "application/json" }), bodyAsText: JSON.stringify(page) };
      },
    };
    const credential = { getToken: async () => ({ token: "t", expiresOnTimestamp: Date.now() + 3_600_000 }) };
    const compute = new ComputeManagementClient(credential, sub, { endpoint: "https://arm.test", httpClient, retryOptions: { maxRetries: 0 } });
    const clients = { subscriptionId: sub, identity: { kind: "secret", label: "test" }, compute } as unknown as AzureClients;
    const found = await listVmStates(clients);
    expect(seen).toHaveLength(3);
    expect(new URL(seen[0]!).searchParams.get("statusOnly")).toBe("true");
    expect(new URL(seen[0]!).searchParams.get("$skiptoken")).toBeNull();
    expect([...found.values()].map((v) => [v.id.split("/").pop(), v.state])).toEqual([["vm1", "running"], ["vm2", "running"], ["vm3", "stopped"], ["vm4", "stopped"]]);
    expect(found.get(vm(3, "").id.toLowerCase())?.state).toBe("stopped");
  });
});
