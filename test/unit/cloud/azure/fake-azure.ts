/**
 * Small in-memory stand-ins for the Azure SDK clients the provider uses (unit tests only; the
 * integration tests use the emulator). Every call is recorded as "<client>.<group>.<method>" with
 * its arguments and the time order; `fail` injects an error (RestError-like: statusCode, code) for
 * the next calls of a method.
 */
import type { ComputeEnvironment } from "../../../../src/api/types.js";
import type { EnvContext } from "../../../../src/cloud/provider.js";
import { azureTuning, provisionAzureEnvironment } from "../../../../src/cloud/azure/environment.js";
import { createLogger } from "../../../../src/engine/logger.js";
import type { AzureClients, AzureEndpoints, AzureIdentity } from "../../../../src/cloud/azure/clients.js";

export const UID = "0a1b2c3d-4e5f-4a6b-8c7d-0123456789ab";


export interface FakeCall {
  op: string;
  args: unknown[];
  seq: number;
}

type Obj = Record<string, unknown> & { id?: string; tags?: Record<string, string> };

export class RestLikeError extends Error {
  constructor(readonly statusCode: number, readonly code: string, message = code, readonly retryAfter?: string) {
    super(message);
  }
  get details() {
    return { error: { code: this.code, message: this.message } };
  }
  get response() {
    const ra = this.retryAfter;
    return { headers: { get: (n: string) => (n.toLowerCase() === "retry-after" ? ra : undefined) } };
  }
}

const notFound = (what: string) => new RestLikeError(404, "ResourceNotFound", `${what} not found`);

function poller<T>(p: () => Promise<T>) {
  let started: Promise<T> | undefined;
  const run = () => (started ??= p());
  return {
    then<A, B>(ok?: (v: T) => A, bad?: (e: unknown) => B) {
      return run().then(ok, bad);
    },
    submitted: async () => {
      await run();
    },
    pollUntilDone: () => run(),
  };
}

async function* iter<T>(items: T[]) {
  for (const i of items) yield i;
}

export class FakeAzure {
  readonly sub = "11111111-2222-3333-4444-555555555555";
  readonly calls: FakeCall[] = [];
  private seq = 0;
  /** Objects by lower-cased resource ID. */
  readonly store = new Map<string, Obj>();
  /** op -> errors to throw, first first. */
  readonly faults = new Map<string, unknown[]>();
  /** Delay per op (ms), to observe parallelism. */
  readonly delays = new Map<string, number>();
  /** SKUs offered: location -> sizes. */
  skus: Record<string, string[]> = { westeurope: ["Standard_D2ds_v4", "Standard_D4ds_v5"] };
  /** Platform images by "publisher:offer:sku" (lower-cased) -> versions. */
  images: Record<string, string[]> = { "canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2": ["22.04.1", "22.04.2"] };
  /** What permissions.listForResource reports for the caller (default: everything). */
  permissions: Array<{ actions: string[]; notActions: string[] }> = [{ actions: ["*"], notActions: [] }];
  storageAccounts: Record<string, string> = {};
  /** Blob contents by URL path suffix. */
  blobs = new Map<string, string>();
  logRows: Array<[string, number, string, string, string]> = [];
  queries: string[] = [];
  /** When set, Log Analytics queries fail with it. */
  failQuery: Error | undefined;

  constructor() {
    this.addStorage("wdstore", "data-rg", ["work"]);
  }

  addStorage(account: string, rg: string, containers: string[]): void {
    const id = `/subscriptions/${this.sub}/resourceGroups/${rg}/providers/Microsoft.Storage/storageAccounts/${account}`;
    this.storageAccounts[account] = id;
    for (const c of containers) this.put(`${id}/blobServices/default/containers/${c}`, { name: c });
  }

  fail(op: string, ...errors: unknown[]): void {
    this.faults.set(op, [...(this.faults.get(op) ?? []), ...errors]);
  }

  ops(): string[] {
    return this.calls.map((c) => c.op);
  }

  writes(): string[] {
    return this.ops().filter((o) => !/\.(get|list\w*|queryWorkspace|getById|getToken|read)$/.test(o));
  }

  put(id: string, o: Obj): Obj {
    const v = { ...o, id };
    this.store.set(id.toLowerCase(), v);
    return v;
  }

  get(id: string): Obj | undefined {
    return this.store.get(id.toLowerCase());
  }

  private async rec<T>(op: string, args: unknown[], fn: () => T | Promise<T>): Promise<T> {
    this.calls.push({ op, args, seq: this.seq++ });
    const d = this.delays.get(op);
    if (d) await new Promise((r) => setTimeout(r, d));
    const f = this.faults.get(op);
    if (f && f.length > 0) throw f.shift();
    return fn();
  }

  private rg(name: string): string {
    return `/subscriptions/${this.sub}/resourceGroups/${name}`;
  }

  private inRg(rg: string, type: string, name: string): string {
    return `${this.rg(rg)}/providers/${type}/${name}`;
  }

  private must(id: string, what: string): Obj {
    const o = this.get(id);
    if (!o) throw notFound(what);
    return o;
  }

  private del(prefix: string): void {
    for (const k of [...this.store.keys()]) if (k === prefix.toLowerCase() || k.startsWith(`${prefix.toLowerCase()}/`)) this.store.delete(k);
  }

  clients(identity: AzureIdentity = { kind: "secret", label: "Secret ns/creds" }, endpoints: AzureEndpoints = {}): AzureClients {
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the nested stand-in objects close over the store
    const self = this;
    const sub = this.sub;
    const rgOp = (rg: string) => {
      if (!self.get(self.rg(rg))) throw new RestLikeError(404, "ResourceGroupNotFound", `resource group ${rg} not found`);
    };
    const simple = (client: string, group: string, type: string, lro: boolean) => ({
      get: (rg: string, name: string) => self.rec(`${client}.${group}.get`, [rg, name], () => self.must(self.inRg(rg, type, name), name)),
      createOrUpdate: (rg: string, name: string, body: Obj) => {
        const p = () => self.rec(`${client}.${group}.createOrUpdate`, [rg, name, body], () => {
          rgOp(rg);
          return self.put(self.inRg(rg, type, name), { ...body, name, provisioningState: "Succeeded", ...extra(type, name) });
        });
        return lro ? poller(p) : p();
      },
      delete: (rg: string, name: string, opts?: unknown) => {
        const p = () => self.rec(`${client}.${group}.delete`, [rg, name, opts], () => {
          self.must(self.inRg(rg, type, name), name);
          self.del(self.inRg(rg, type, name));
        });
        return lro ? poller(p) : p();
      },
    });
    const extra = (type: string, name: string): Obj => {
      if (type === "Microsoft.ManagedIdentity/userAssignedIdentities") return { principalId: `p-${name}-${self.seq}`, clientId: `c-${name}` };
      if (type === "Microsoft.OperationalInsights/workspaces") return { customerId: "cust-0001" };
      return {};
    };
    const monitorGroup = (group: string, type: string) => ({
      get: (rg: string, name: string) => self.rec(`monitor.${group}.get`, [rg, name], () => self.must(self.inRg(rg, type, name), name)),
      create: (rg: string, name: string, opts: { body: Obj }) => self.rec(`monitor.${group}.create`, [rg, name, opts.body], () => {
        rgOp(rg);
        const id = self.inRg(rg, type, name);
        const more: Obj = group === "dataCollectionEndpoints" ? { logsIngestion: { endpoint: `https://${name}.ingest.example` } } : { immutableId: `dcr-${name}` };
        return self.put(id, { ...opts.body, name, ...more });
      }),
      delete: (rg: string, name: string) => self.rec(`monitor.${group}.delete`, [rg, name], () => {
        self.must(self.inRg(rg, type, name), name);
        self.del(self.inRg(rg, type, name));
      }),
    });
    // Like the SDK, a scope with a leading "/" would address another host ("//subscriptions/..."): refuse it.
    const noSlash = (scope: string): string => {
      if (scope.startsWith("/")) throw new RestLikeError(404, "NotFound", `scope must not start with "/": ${scope}`);
      return `/${scope}`;
    };
    const scoped = (group: string, kind: string, verb: "createOrUpdate" | "create") => ({
      get: (scope: string, name: string) => self.rec(`authorization.${group}.get`, [`/${scope}`, name], () => self.must(`${noSlash(scope)}/providers/Microsoft.Authorization/${kind}/${name}`, name)),
      [verb]: (scope: string, name: string, body: Obj) => self.rec(`authorization.${group}.${verb}`, [`/${scope}`, name, body], () => self.put(`${noSlash(scope)}/providers/Microsoft.Authorization/${kind}/${name}`, { ...body, name })),
      delete: (scope: string, name: string) => self.rec(`authorization.${group}.delete`, [`/${scope}`, name], () => {
        self.must(`${noSlash(scope)}/providers/Microsoft.Authorization/${kind}/${name}`, name);
        self.del(`${noSlash(scope)}/providers/Microsoft.Authorization/${kind}/${name}`);
      }),
    });
    const vmList = (rg: string) => [...self.store.values()].filter((o) => (o.id ?? "").toLowerCase().startsWith(`${self.rg(rg)}/providers/microsoft.compute/virtualmachines/`.toLowerCase()));
    const clients = {
      subscriptionId: sub,
      identity,
      endpoints,
      lro: {},
      credential: { getToken: (scope: string) => self.rec("credential.getToken", [scope], () => ({ token: "tok", expiresOnTimestamp: Date.now() + 3600_000 })) },
      resources: {
        resourceGroups: {
          get: (name: string) => self.rec("resources.resourceGroups.get", [name], () => self.must(self.rg(name), name)),
          createOrUpdate: (name: string, body: Obj) => self.rec("resources.resourceGroups.createOrUpdate", [name, body], () => self.put(self.rg(name), { ...body, name })),
          delete: (name: string, opts?: unknown) => poller(() => self.rec("resources.resourceGroups.delete", [name, opts], () => {
            self.must(self.rg(name), name);
            self.del(self.rg(name));
          })),
        },
        resources: {
          list: (opts: { filter: string }) => {
            const name = /name eq '([^']+)'/.exec(opts.filter)?.[1] ?? "";
            self.calls.push({ op: "resources.resources.list", args: [opts.filter], seq: self.seq++ });
            const f = self.faults.get("resources.resources.list");
            if (f && f.length > 0) {
              const e = f.shift();
              return (async function* () {
                yield* [];
                throw e;
              })();
            }
            const id = self.storageAccounts[name];
            return iter(id ? [{ id, name }] : []);
          },
          getById: (id: string) => self.rec("resources.resources.getById", [id], () => {
            if (id.startsWith("/")) throw new RestLikeError(404, "NotFound", `resource IDs go without their leading "/" (the SDK adds it): ${id}`);
            return self.must(`/${id}`, id);
          }),
        },
      },
      msi: { userAssignedIdentities: simple("msi", "userAssignedIdentities", "Microsoft.ManagedIdentity/userAssignedIdentities", false) },
      authorization: {
        roleDefinitions: scoped("roleDefinitions", "roleDefinitions", "createOrUpdate"),
        roleAssignments: {
          ...scoped("roleAssignments", "roleAssignments", "create"),
          // An assignment's name is unique in the tenant: the same name at another scope is refused, as Azure does.
          create: (scope: string, name: string, body: Obj) => self.rec("authorization.roleAssignments.create", [`/${scope}`, name, body], () => {
            const id = `${noSlash(scope)}/providers/Microsoft.Authorization/roleAssignments/${name}`;
            const elsewhere = [...self.store.values()].some((o) => (o.id ?? "").toLowerCase().endsWith(`/providers/microsoft.authorization/roleassignments/${name}`.toLowerCase()) && (o.id ?? "").toLowerCase() !== id.toLowerCase());
            if (elsewhere) throw new RestLikeError(400, "RoleAssignmentUpdateNotPermitted", "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.");
            return self.put(id, { ...body, name, scope: `/${noSlash(scope)}` });
          }),
          listForSubscription: () => {
            self.calls.push({ op: "authorization.roleAssignments.listForSubscription", args: [], seq: self.seq++ });
            return iter([...self.store.values()].filter((o) => (o.id ?? "").toLowerCase().includes("/providers/microsoft.authorization/roleassignments/")));
          },
        },
        permissions: {
          listForResource: (rg: string, ns: string, parent: string, type: string, name: string) => {
            self.calls.push({ op: "authorization.permissions.listForResource", args: [rg, ns, parent, type, name], seq: self.seq++ });
            const f = self.faults.get("authorization.permissions.listForResource");
            if (f && f.length > 0) {
              const e = f.shift();
              return (async function* () {
                yield* [];
                throw e;
              })();
            }
            return iter(self.permissions);
          },
        },
      },
      logAnalytics: {
        workspaces: simple("logAnalytics", "workspaces", "Microsoft.OperationalInsights/workspaces", true),
        tables: {
          get: (rg: string, ws: string, name: string) => self.rec("logAnalytics.tables.get", [rg, ws, name], () => self.must(`${self.inRg(rg, "Microsoft.OperationalInsights/workspaces", ws)}/tables/${name}`, name)),
          createOrUpdate: (rg: string, ws: string, name: string, body: Obj) => poller(() => self.rec("logAnalytics.tables.createOrUpdate", [rg, ws, name, body], () => {
            self.must(self.inRg(rg, "Microsoft.OperationalInsights/workspaces", ws), ws);
            return self.put(`${self.inRg(rg, "Microsoft.OperationalInsights/workspaces", ws)}/tables/${name}`, { ...body, name, provisioningState: "Succeeded" });
          })),
        },
      },
      monitor: {
        dataCollectionEndpoints: monitorGroup("dataCollectionEndpoints", "Microsoft.Insights/dataCollectionEndpoints"),
        dataCollectionRules: monitorGroup("dataCollectionRules", "Microsoft.Insights/dataCollectionRules"),
      },
      network: {
        virtualNetworks: simple("network", "virtualNetworks", "Microsoft.Network/virtualNetworks", true),
        subnets: {
          get: (rg: string, vnet: string, name: string) => self.rec("network.subnets.get", [rg, vnet, name], () => {
            const v = self.must(self.inRg(rg, "Microsoft.Network/virtualNetworks", vnet), vnet);
            const s = ((v.subnets as Obj[] | undefined) ?? []).find((x) => x.name === name);
            if (!s) throw notFound(name);
            return { ...s, id: `${v.id}/subnets/${name}` };
          }),
        },
        networkInterfaces: {
          list: (rg: string) => {
            self.calls.push({ op: "network.networkInterfaces.list", args: [rg], seq: self.seq++ });
            return iter([...self.store.values()].filter((o) => (o.id ?? "").toLowerCase().startsWith(`${self.rg(rg)}/providers/microsoft.network/networkinterfaces/`.toLowerCase())));
          },
          delete: (rg: string, name: string) => poller(() => self.rec("network.networkInterfaces.delete", [rg, name], () => {
            self.must(self.inRg(rg, "Microsoft.Network/networkInterfaces", name), name);
            self.del(self.inRg(rg, "Microsoft.Network/networkInterfaces", name));
          })),
        },
        publicIPAddresses: {
          list: (rg: string) => {
            self.calls.push({ op: "network.publicIPAddresses.list", args: [rg], seq: self.seq++ });
            return iter([...self.store.values()].filter((o) => (o.id ?? "").toLowerCase().startsWith(`${self.rg(rg)}/providers/microsoft.network/publicipaddresses/`.toLowerCase())));
          },
          delete: (rg: string, name: string) => poller(() => self.rec("network.publicIPAddresses.delete", [rg, name], () => {
            self.must(self.inRg(rg, "Microsoft.Network/publicIPAddresses", name), name);
            self.del(self.inRg(rg, "Microsoft.Network/publicIPAddresses", name));
          })),
        },
      },
      compute: {
        virtualMachineImages: {
          list: (loc: string, pub: string, offer: string, sku: string) => self.rec("compute.virtualMachineImages.list", [loc, pub, offer, sku], () => {
            const v = self.images[`${pub}:${offer}:${sku}`.toLowerCase()];
            if (!v) throw new RestLikeError(404, "ArtifactNotFound", "Artifact: VMImage was not found.");
            return v.map((name) => ({ name, location: loc }));
          }),
          get: (loc: string, pub: string, offer: string, sku: string, version: string) => self.rec("compute.virtualMachineImages.get", [loc, pub, offer, sku, version], () => {
            const v = self.images[`${pub}:${offer}:${sku}`.toLowerCase()];
            if (!v?.includes(version)) throw new RestLikeError(404, "ImageVersionNotFound", "Artifact: VMImage was not found.");
            return { name: version, location: loc };
          }),
        },
        resourceSkus: {
          list: (opts: { filter: string }) => {
            const loc = /location eq '([^']+)'/.exec(opts.filter)?.[1] ?? "";
            self.calls.push({ op: "compute.resourceSkus.list", args: [opts.filter], seq: self.seq++ });
            const f = self.faults.get("compute.resourceSkus.list");
            if (f && f.length > 0) {
              const e = f.shift();
              return (async function* () {
                yield* [];
                throw e;
              })();
            }
            return iter((self.skus[loc] ?? []).map((name) => ({ name, resourceType: "virtualMachines", locations: [loc] })));
          },
        },
        disks: {
          listByResourceGroup: (rg: string) => {
            self.calls.push({ op: "compute.disks.listByResourceGroup", args: [rg], seq: self.seq++ });
            const fault = self.faults.get("compute.disks.listByResourceGroup")?.shift();
            if (fault) {
              return (async function* () {
                yield* [];
                throw fault;
              })();
            }
            return iter([...self.store.values()].filter((o) => (o.id ?? "").toLowerCase().startsWith(`${self.rg(rg)}/providers/microsoft.compute/disks/`.toLowerCase())));
          },
          delete: (rg: string, name: string) => poller(() => self.rec("compute.disks.delete", [rg, name], () => {
            self.must(self.inRg(rg, "Microsoft.Compute/disks", name), name);
            self.del(self.inRg(rg, "Microsoft.Compute/disks", name));
          })),
        },
        virtualMachines: {
          get: (rg: string, name: string) => self.rec("compute.virtualMachines.get", [rg, name], () => self.must(self.inRg(rg, "Microsoft.Compute/virtualMachines", name), name)),
          list: (rg: string, opts?: unknown) => {
            self.calls.push({ op: "compute.virtualMachines.list", args: [rg, opts], seq: self.seq++ });
            if (!self.get(self.rg(rg))) {
              return (async function* () {
                yield* [];
                throw new RestLikeError(404, "ResourceGroupNotFound", rg);
              })();
            }
            // As Azure: $expand=instanceView needs a scale-set $filter; statusOnly does not exist here.
            if ((opts as { expand?: string } | undefined)?.expand) {
              return (async function* () {
                yield* [];
                throw new RestLikeError(400, "InvalidParameter", "$expand=instanceView needs a valid $filter");
              })();
            }
            return iter(vmList(rg).map((vm) => ({ ...vm, instanceView: undefined })));
          },
          listAll: (opts?: { statusOnly?: string }) => {
            self.calls.push({ op: "compute.virtualMachines.listAll", args: [opts], seq: self.seq++ });
            const all = [...self.store.values()].filter((o) => /\/providers\/microsoft\.compute\/virtualmachines\/[^/]+$/i.test(o.id ?? ""));
            if (opts?.statusOnly === "true") return iter(all.map((vm) => ({ id: vm.id, name: vm.name, instanceView: vm.instanceView })));
            return iter(all.map((vm) => ({ ...vm, instanceView: undefined })));
          },
          createOrUpdate: (rg: string, name: string, body: Obj) => poller(() => self.rec("compute.virtualMachines.createOrUpdate", [rg, name, body], () => {
            rgOp(rg);
            return self.put(self.inRg(rg, "Microsoft.Compute/virtualMachines", name), { ...body, name, provisioningState: "Creating", instanceView: { statuses: [{ code: "ProvisioningState/creating" }] } });
          })),
          delete: (rg: string, name: string, opts?: unknown) => poller(() => self.rec("compute.virtualMachines.delete", [rg, name, opts], () => {
            self.must(self.inRg(rg, "Microsoft.Compute/virtualMachines", name), name);
            self.del(self.inRg(rg, "Microsoft.Compute/virtualMachines", name));
          })),
        },
      },
      subscriptions: {},
      blobs: { read: (account: string, container: string, path: string) => self.rec("blobs.read", [account, container, path], () => self.blobs.get(`${account}/${container}/${path}`)) },
      logsQuery: {
        queryWorkspace: (ws: string, q: string) => self.rec("logsQuery.queryWorkspace", [ws, q], () => {
          self.queries.push(q);
          if (self.failQuery) throw self.failQuery;
          const inList = /RunUid in \(([^)]*)\) and (.*) \| project RunUid, Seq, Line$/.exec(q);
          if (inList) {
            // the launcher-lines query of several Runs ([Stream == '...' and] Line startswith '...' or ...): [RunUid, Seq, Line]
            const uids = new Set([...inList[1]!.matchAll(/'([^']+)'/g)].map((m) => m[1]));
            const stream = /Stream == '([^']*)'/.exec(inList[2]!)?.[1];
            const prefixes = [...inList[2]!.matchAll(/Line startswith '([^']*)'/g)].map((m) => m[1]!.toLowerCase());
            const rows = self.logRows
              .filter((r) => uids.has(r[2]) && (stream === undefined || r[3] === stream) && prefixes.some((p) => r[4].toLowerCase().startsWith(p)))
              .map((r) => [r[2], r[1], r[4]]);
            return { status: "Success", tables: [{ name: "PrimaryResult", columnDescriptors: [], rows }] };
          }
          const uid = /RunUid == '([^']+)'/.exec(q)?.[1];
          const after = Number(/Seq > (\d+)/.exec(q)?.[1] ?? "0");
          const rows = self.logRows
            .filter((r) => r[2] === uid && r[1] > after)
            .sort((a, b) => a[1] - b[1])
            .map((r) => [r[0], r[1], r[3], r[4]]);
          return { status: "Success", tables: [{ name: "PrimaryResult", columnDescriptors: [], rows }] };
        }),
      },
    };
    return clients as unknown as AzureClients;
  }
}

/** A valid Azure CE as the API server would return it. */
export function sampleAzureCe(sub: string, over: Partial<NonNullable<ComputeEnvironment["spec"]["azure"]>> = {}): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { namespace: "team-a", name: "ce1", uid: UID, generation: 1 },
    spec: {
      provider: "azure",
      credentials: { secretRef: { name: "creds" } },
      azure: { subscriptionId: sub, location: "westeurope", workDir: "az://work/runs", storageAccount: "wdstore", tags: { team: "a" }, ...over },
    },
  } as ComputeEnvironment;
}


/**
 * A fake Azure with one sample CE whose environment is already provisioned (its status holds what
 * provisioning found), and the context the provider's calls take; principal retries are instant.
 */
export async function provisionedAzure(): Promise<{ az: FakeAzure; ce: ComputeEnvironment; ctx: EnvContext }> {
  azureTuning.principalRetryMs = [1];
  const az = new FakeAzure();
  const ce = sampleAzureCe(az.sub);
  const ctx: EnvContext = { ce, credentials: { source: "secret", secretName: "team-a/creds", data: {} }, logger: createLogger({ level: "silent" }) };
  const obs = await provisionAzureEnvironment(az.clients(), ctx);
  ce.status = { azure: obs.status.azure! };
  return { az, ce, ctx };
}
