 
// Microsoft.Compute: virtual machines (inline or referenced NICs, deleteOption cascades,
// identities, userData, customData (to the VM only), Spot, power state, instance view, capacity errors) and managed disks.
import type { ManagedIdentityHost } from "../entra.js";
import type { Principal } from "../state.js";
import { ArmError, isObject, lc } from "../util.js";
import { platformImage, vmSize, type Catalog } from "./catalog.js";
import type { Arm, Json, OpCtx, Operation, Stored, TypeDef } from "./framework.js";
import { UAI_TYPE } from "./identity.js";
import { buildNic, buildPip, NIC_TYPE, PIP_TYPE } from "./network.js";
import { normLocation, requireKnownLocation, type ArmRouter } from "./router.js";
import type { CapacityFault } from "../state.js";

export const VM_TYPE = "Microsoft.Compute/virtualMachines";
export const DISK_TYPE = "Microsoft.Compute/disks";

export type PowerState = "starting" | "running" | "stopping" | "stopped" | "deallocating" | "deallocated";
export type VmPowerControl = "stopped" | "deallocated" | "running" | "evicted";

const POWER_DISPLAY: Record<PowerState, string> = {
  starting: "VM starting",
  running: "VM running",
  stopping: "VM stopping",
  stopped: "VM stopped",
  deallocating: "VM deallocating",
  deallocated: "VM deallocated",
};

export interface ComputeDeps {
  router: () => ArmRouter;
  catalog: Catalog;
  capacity: () => CapacityFault[];
  consumeCapacity: (c: CapacityFault) => void;
}

function invalid(message: string, target?: string): ArmError {
  return new ArmError(400, "InvalidParameter", message, target ? { target } : {});
}

function b64ok(s: string): boolean {
  return /^[A-Za-z0-9+/]*={0,2}$/.test(s) && s.length % 4 === 0;
}

function instanceView(res: Stored, nowIso: string): Json {
  const ps = String(res.body.properties.provisioningState ?? "Succeeded");
  const statuses: Json[] = [];
  if (ps === "Failed") {
    const err = res.x.failure as { code: string; message: string } | undefined;
    statuses.push({ code: `ProvisioningState/failed/${err?.code ?? "InternalError"}`, level: "Error", displayStatus: "Provisioning failed", message: err?.message ?? "", time: res.x.stateTime ?? nowIso });
  } else if (ps === "Succeeded") {
    statuses.push({ code: "ProvisioningState/succeeded", level: "Info", displayStatus: "Provisioning succeeded", time: res.x.stateTime ?? nowIso });
  } else {
    statuses.push({ code: `ProvisioningState/${lc(ps)}`, level: "Info", displayStatus: ps });
  }
  const power = res.x.power as PowerState | undefined;
  if (power) statuses.push({ code: `PowerState/${power}`, level: "Info", displayStatus: POWER_DISPLAY[power] });
  return {
    computerName: res.body.properties.osProfile?.computerName,
    osName: "ubuntu",
    osVersion: "24.04",
    vmAgent: power === "running" ? { vmAgentVersion: "2.13.1.1", statuses: [{ code: "ProvisioningState/succeeded", level: "Info", displayStatus: "Ready", message: "Guest Agent is running", time: nowIso }], extensionHandlers: [] } : undefined,
    disks: res.x.osDiskId ? [{ name: res.body.properties.storageProfile.osDisk.name, statuses: [{ code: "ProvisioningState/succeeded", level: "Info", displayStatus: "Provisioning succeeded", time: res.x.stateTime ?? nowIso }] }] : [],
    hyperVGeneration: "V2",
    statuses,
  };
}

function vmView(ctx: OpCtx, res: Stored, opts: { instanceView?: boolean; userData?: boolean }): Json {
  const b = { ...res.body, properties: { ...res.body.properties } };
  if (opts.userData && res.x.userData !== undefined) b.properties.userData = res.x.userData;
  if (opts.instanceView) b.properties.instanceView = instanceView(res, new Date(ctx.now).toISOString());
  return b;
}

function expandOf(ctx: OpCtx): Set<string> {
  return new Set(
    (ctx.query.get("$expand") ?? "")
      .split(",")
      .map((s) => lc(s.trim()))
      .filter(Boolean),
  );
}

/** Power state transitions of a running operation: intermediate now, final when the operation completes. */
function powerOp(ctx: OpCtx, res: Stored, mid: PowerState, final: PowerState, type: string): Operation {
  res.x.power = mid;
  const op = ctx.arm.startOp("Microsoft.Compute", res.sub, res.body.location, ctx.arm.latencyFor(type), (o) => {
    if (res.pendingOp === o) res.pendingOp = undefined;
    if (ctx.arm.resources.has(res.key)) res.x.power = final;
  });
  if (op.status === "InProgress") res.pendingOp = op;
  return op;
}

/** Removes a VM and what its deleteOptions say goes with it; detaches the rest. */
export function removeVm(arm: Arm, vm: Stored): void {
  const nics: { id: string; del: boolean }[] = vm.x.nics ?? [];
  for (const n of nics) {
    const nic = arm.get(n.id);
    if (!nic) continue;
    delete nic.body.properties.virtualMachine;
    if (n.del) {
      const pips: { id: string; del: boolean }[] = (vm.x.pipsByNic?.[lc(n.id)] ?? []) as { id: string; del: boolean }[];
      arm.remove(nic);
      for (const p of pips) {
        const pip = arm.get(p.id);
        if (pip && p.del && !pip.x.ipConfig) arm.remove(pip);
      }
    }
  }
  const disk = vm.x.osDiskId ? arm.get(vm.x.osDiskId) : undefined;
  if (disk) {
    delete disk.body.managedBy;
    disk.body.properties.diskState = "Unattached";
    if (vm.x.osDiskDelete) arm.remove(disk);
  }
  arm.remove(vm);
}

export function computeTypes(deps: ComputeDeps): TypeDef[] {
  const vm: TypeDef = {
    type: VM_TYPE,
    putMode: "async",
    deleteMode: "async",
    inResourceGroup: true,
    listBySubscription: true,
    creatingState: "Creating",
    put(ctx, { id, name, sub, rg, existing, body }) {
      const arm = ctx.arm;
      const d = arm.d;
      const router = deps.router();
      const location = normLocation(String(body.location));
      requireKnownLocation(location, "virtualMachines");
      const p = (isObject(body.properties) ? body.properties : {}) as Json;
      if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}[a-zA-Z0-9_]$|^[a-zA-Z0-9]$/.test(name)) {
        throw new ArmError(400, "InvalidParameter", `The resource name '${name}' is not valid for a virtual machine.`, { target: "name" });
      }
      if (existing) return updateVm(ctx, existing, body, p, location);

      // size and capacity
      const sizeName = p.hardwareProfile?.vmSize;
      if (typeof sizeName !== "string") throw invalid("Required parameter 'hardwareProfile.vmSize' is missing (null).", "hardwareProfile.vmSize");
      const size = vmSize(sizeName);
      if (!size || !deps.catalog.isOffered(size, location)) {
        throw invalid(`The value ${sizeName} provided for the VM size is not valid. The valid sizes in the current region can be listed with Microsoft.Compute/skus.`, "vmSize");
      }
      const cap = deps.capacity().find((c) => lc(c.vmSize) === lc(size.name) && c.location === location && (c.count === undefined || c.count > 0));
      if (deps.catalog.isRestricted(size.name, location) || cap?.code === "SkuNotAvailable") {
        if (cap?.code === "SkuNotAvailable") deps.consumeCapacity(cap);
        throw new ArmError(
          409,
          "SkuNotAvailable",
          `The requested VM size for resource 'Following SKUs have failed for Capacity Restrictions: ${size.name}' is currently not available in location '${location}'. Please try another size or deploy to a different location or different zone. See https://aka.ms/azureskunotavailable for details.`,
        );
      }
      if (cap?.code === "OperationNotAllowed") {
        deps.consumeCapacity(cap);
        throw new ArmError(
          409,
          "OperationNotAllowed",
          `Operation could not be completed as it results in exceeding approved ${size.family} Cores quota. Additional details - Deployment Model: Resource Manager, Location: ${location}, Current Limit: 0, Current Usage: 0, Additional Required: ${size.vCPUs}, (Minimum) New Limit Required: ${size.vCPUs}. Setup Alerts when Quota reaches threshold. Learn more at https://aka.ms/quotamonitoringalerting . Submit a request for Quota increase at https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/UsageAndQuota.ReactView/Parameters/ . Please read more about quota limits at https://docs.microsoft.com/en-us/azure/azure-supportability/per-vm-quota-requests`,
        );
      }
      const allocationFailure = cap && (cap.code === "AllocationFailed" || cap.code === "ZonalAllocationFailed") ? cap : undefined;
      if (allocationFailure) deps.consumeCapacity(allocationFailure);

      // priority
      const priority = p.priority ?? "Regular";
      if (!["Regular", "Low", "Spot"].includes(priority)) throw invalid(`The value '${priority}' of parameter 'priority' is not valid.`, "priority");
      let evictionPolicy = p.evictionPolicy;
      if (priority === "Regular" && evictionPolicy !== undefined) throw invalid("Eviction policy can be set only on Azure Spot Virtual Machines.", "evictionPolicy");
      if (priority !== "Regular") {
        evictionPolicy ??= "Deallocate";
        if (!["Deallocate", "Delete"].includes(evictionPolicy)) throw invalid(`The value '${evictionPolicy}' of parameter 'evictionPolicy' is not valid.`, "evictionPolicy");
      }
      const maxPrice = p.billingProfile?.maxPrice;
      if (maxPrice !== undefined && priority === "Regular") throw invalid("Max price can be set only on Azure Spot Virtual Machines.", "billingProfile");
      if (maxPrice !== undefined && !(maxPrice === -1 || maxPrice > 0)) throw invalid("The value of maxPrice must be -1 or greater than zero.", "billingProfile.maxPrice");

      // storage
      const sp = (p.storageProfile ?? {}) as Json;
      const img = sp.imageReference;
      if (!isObject(img) || !(img.id || (img.publisher && img.offer && img.sku))) throw invalid("Required parameter 'storageProfile.imageReference' is missing (null).", "imageReference");
      // A platform image must exist (in every location here); image IDs (managed images, galleries)
      // are not emulated and are refused as not found.
      if (img.id) {
        throw new ArmError(404, "ImageNotFound", `The Image '${img.id}' cannot be found in '${location}' region.`, { target: "imageReference" });
      }
      if (!platformImage(String(img.publisher), String(img.offer), String(img.sku), String(img.version ?? "latest"))) {
        throw new ArmError(404, "PlatformImageNotFound", `The platform image '${img.publisher}:${img.offer}:${img.sku}:${img.version ?? "latest"}' is not available. Verify that all fields in the storage profile are correct.`, { target: "imageReference" });
      }
      const osDiskIn = (sp.osDisk ?? {}) as Json;
      const createOption = osDiskIn.createOption ?? "FromImage";
      if (createOption !== "FromImage") throw invalid(`Only createOption 'FromImage' is emulated for the OS disk (got '${createOption}').`, "osDisk.createOption");
      const osDeleteOption = osDiskIn.deleteOption ?? "Detach";
      if (!["Delete", "Detach"].includes(osDeleteOption)) throw invalid(`The value '${osDeleteOption}' of parameter 'osDisk.deleteOption' is not valid.`, "osDisk.deleteOption");
      const diskName = osDiskIn.name ?? `${name}_OsDisk_1_${d.ids.hex("osdisk", id, 32)}`;
      const diskId = `/subscriptions/${sub}/resourceGroups/${id.split("/")[4]}/providers/Microsoft.Compute/disks/${diskName}`;
      if (arm.get(diskId)) throw new ArmError(409, "Conflict", `Disk ${diskName} already exists in resource group ${id.split("/")[4]}. Only CreateOption.Attach is supported.`, { target: "osDisk.name" });
      const storageAccountType = osDiskIn.managedDisk?.storageAccountType ?? "Premium_LRS";
      const diskSizeGB = osDiskIn.diskSizeGB ?? 30;

      // OS profile
      const os = p.osProfile as Json | undefined;
      if (!isObject(os)) throw invalid("Required parameter 'osProfile' is missing (null).", "osProfile");
      if (typeof os.adminUsername !== "string" || !os.adminUsername) throw invalid("Required parameter 'osProfile.adminUsername' is missing (null).", "adminUsername");
      const linux = (os.linuxConfiguration ?? {}) as Json;
      const keys = Array.isArray(linux.ssh?.publicKeys) ? linux.ssh.publicKeys : [];
      if (linux.disablePasswordAuthentication && keys.length === 0) throw invalid("Authentication using either SSH or by user name and password must be enabled in Linux profile.", "linuxConfiguration");
      if (!linux.disablePasswordAuthentication && !os.adminPassword && keys.length === 0) throw invalid("Authentication using either SSH or by user name and password must be enabled in Linux profile.", "linuxConfiguration");
      if (os.customData !== undefined && (typeof os.customData !== "string" || !b64ok(os.customData) || os.customData.length > 87380)) {
        throw invalid("Custom data in OSProfile must be in Base64 encoding and with a maximum length of 87380 characters.", "customData");
      }

      // userData
      const userData = p.userData;
      if (userData !== undefined) {
        if (typeof userData !== "string" || !b64ok(userData)) throw invalid("User data must be in Base64 encoding.", "userData");
        if (Buffer.from(userData, "base64").length > 64 * 1024) throw invalid("User data must be less than 64 KB.", "userData");
      }

      // identity
      const linked: { action: string; scope: string }[] = [];
      const identity = normalizeIdentity(arm, body.identity, id);
      for (const uid of identity.userAssigned) linked.push({ action: `${UAI_TYPE}/assign/action`, scope: uid });

      // network
      const np = (p.networkProfile ?? {}) as Json;
      const refs: Json[] = Array.isArray(np.networkInterfaces) ? np.networkInterfaces : [];
      const configs: Json[] = Array.isArray(np.networkInterfaceConfigurations) ? np.networkInterfaceConfigurations : [];
      if (refs.length === 0 && configs.length === 0) throw invalid("Required parameter 'networkProfile' is missing (null).", "networkProfile");
      if (configs.length > 0 && !np.networkApiVersion) throw invalid("networkApiVersion must be specified when networkInterfaceConfigurations are used.", "networkProfile.networkApiVersion");
      const primaries = [...refs, ...configs].filter((n) => (n.properties?.primary ?? n.primary) === true).length;
      if (refs.length + configs.length > 1 && primaries !== 1) throw invalid("Virtual machine must have exactly one primary network interface when it has more than one.", "networkProfile");
      const refNics: { nic: Stored; del: boolean; primary: boolean }[] = [];
      for (const r of refs) {
        const nic = arm.get(String(r.id ?? ""));
        if (!nic || lc(nic.type) !== lc(NIC_TYPE)) throw new ArmError(400, "NotFound", `Resource ${r.id} was not found.`);
        if (normLocation(nic.body.location) !== location) throw invalid(`The network interface ${nic.id} is in location '${nic.body.location}', not '${location}'.`, "networkInterfaces");
        if (nic.body.properties.virtualMachine) {
          throw new ArmError(400, "NicInUse", `Network Interface ${nic.id} is used by existing resource ${nic.body.properties.virtualMachine.id}.`);
        }
        linked.push({ action: `${NIC_TYPE}/join/action`, scope: nic.id });
        refNics.push({ nic, del: (r.properties?.deleteOption ?? "Detach") === "Delete", primary: r.properties?.primary ?? refs.length + configs.length === 1 });
      }
      const rgName = id.split("/")[4]!;
      const inlineNics: { spec: { id: string; name: string; body: Json; after: (res: Stored) => void }; del: boolean; pips: { id: string; name: string; body: Json; del: boolean }[]; primary: boolean }[] = [];
      const seenNames = new Set<string>();
      for (const c of configs) {
        const cname = String(c.name ?? "");
        if (!cname) throw invalid("Every network interface configuration needs a name.", "networkInterfaceConfigurations.name");
        if (seenNames.has(lc(cname))) throw invalid(`Network interface configuration '${cname}' is listed twice.`, "networkInterfaceConfigurations");
        seenNames.add(lc(cname));
        const cp = (c.properties ?? {}) as Json;
        const nicName = `${name}-${cname}`;
        const nicId = `/subscriptions/${sub}/resourceGroups/${rgName}/providers/Microsoft.Network/networkInterfaces/${nicName}`;
        if (arm.get(nicId)) throw new ArmError(409, "Conflict", `Network interface ${nicId} already exists; a configuration cannot create it.`);
        const pips: { id: string; name: string; body: Json; del: boolean }[] = [];
        const ipcs: Json[] = (cp.ipConfigurations ?? []).map((ic: Json, i: number) => {
          const icp = (ic.properties ?? {}) as Json;
          const out: Json = { name: ic.name ?? `ipconfig${i + 1}`, properties: { subnet: icp.subnet, primary: icp.primary ?? i === 0, privateIPAllocationMethod: "Dynamic" } };
          const pc = icp.publicIPAddressConfiguration as Json | undefined;
          if (pc && typeof pc === "object") {
            const pname = `${name}-${String(pc.name ?? `pip${i + 1}`)}`;
            const pid = `/subscriptions/${sub}/resourceGroups/${rgName}/providers/Microsoft.Network/publicIPAddresses/${pname}`;
            if (arm.get(pid)) throw new ArmError(409, "Conflict", `Public IP address ${pid} already exists; a configuration cannot create it.`);
            // Resources created from inline configurations do not inherit the VM's tags (Azure does not
            // propagate them); they get the configuration's own `tags` (Compute API 2022-11-01 on).
            const pbody = buildPip(ctx, pid, pname, location, { sku: pc.sku, ...(isObject(pc.tags) ? { tags: pc.tags } : {}), properties: { publicIPAllocationMethod: pc.properties?.publicIPAllocationMethod, idleTimeoutInMinutes: pc.properties?.idleTimeoutInMinutes } });
            const pdel = (pc.properties?.deleteOption ?? "Detach") === "Delete";
            pips.push({ id: pid, name: pname, body: pbody, del: pdel });
            out.properties.publicIPAddress = { id: pid };
            linked.push({ action: `${PIP_TYPE}/write`, scope: pid }, { action: `${PIP_TYPE}/join/action`, scope: pid });
          }
          return out;
        });
        linked.push({ action: `${NIC_TYPE}/write`, scope: nicId });
        inlineNics.push({ spec: { id: nicId, name: nicName, body: {}, after: () => undefined }, del: (cp.deleteOption ?? "Detach") === "Delete", pips, primary: cp.primary ?? configs.length + refs.length === 1 });
        // Subnet/PIP linked checks and validation happen in buildNic once the PIPs exist (below).
        (inlineNics[inlineNics.length - 1] as Json).ipcs = ipcs;
        (inlineNics[inlineNics.length - 1] as Json).cp = cp;
        (inlineNics[inlineNics.length - 1] as Json).tags = isObject(c.tags) ? c.tags : undefined;
      }
      router.authorizeLinked(ctx.caller, `${VM_TYPE}/write`, id, linked);

      const vmId = d.ids.guid("vm-id", id);
      const now = new Date(ctx.now).toISOString();
      const osProfile: Json = { computerName: os.computerName ?? name, adminUsername: os.adminUsername, linuxConfiguration: { disablePasswordAuthentication: !!linux.disablePasswordAuthentication, ssh: { publicKeys: keys }, provisionVMAgent: true, patchSettings: { patchMode: "ImageDefault", assessmentMode: "ImageDefault" } }, secrets: [], allowExtensionOperations: true, requireGuestProvisionSignal: true };
      const nicRefs: Json[] = [
        ...refNics.map((r) => ({ id: r.nic.id, properties: { primary: r.primary, deleteOption: r.del ? "Delete" : "Detach" } })),
        ...inlineNics.map((n) => ({ id: n.spec.id, properties: { primary: n.primary, deleteOption: n.del ? "Delete" : "Detach" } })),
      ];
      const props: Json = {
        vmId,
        hardwareProfile: { vmSize: size.name },
        storageProfile: {
          imageReference: { ...img, exactVersion: platformImage(String(img.publisher), String(img.offer), String(img.sku), String(img.version ?? "latest"))!.version },
          osDisk: { osType: "Linux", name: diskName, createOption: "FromImage", caching: osDiskIn.caching ?? "ReadWrite", managedDisk: { storageAccountType, id: diskId }, deleteOption: osDeleteOption, diskSizeGB },
          dataDisks: [],
          diskControllerType: "SCSI",
        },
        osProfile,
        networkProfile: { networkInterfaces: nicRefs, ...(configs.length ? { networkApiVersion: np.networkApiVersion, networkInterfaceConfigurations: configs } : {}) },
        provisioningState: allocationFailure ? "Failed" : "Succeeded",
        timeCreated: now,
      };
      if (priority !== "Regular") {
        props.priority = priority;
        props.evictionPolicy = evictionPolicy;
        if (maxPrice !== undefined) props.billingProfile = { maxPrice };
      }
      if (p.diagnosticsProfile) props.diagnosticsProfile = p.diagnosticsProfile;
      if (p.securityProfile) props.securityProfile = p.securityProfile;
      const vmBody: Json = { id, name, type: VM_TYPE, location, tags: body.tags ?? {}, properties: props };
      if (Array.isArray(body.zones)) vmBody.zones = body.zones;
      if (body.plan) vmBody.plan = body.plan;
      if (identity.body) vmBody.identity = identity.body;

      // Validate and build the inline NICs now (subnet/PIP joins), creating the PIPs first in memory.
      const pipStored: Stored[] = [];
      for (const n of inlineNics) {
        for (const pp of n.pips) pipStored.push({ id: pp.id, key: lc(pp.id), type: PIP_TYPE, name: pp.name, sub, rg, body: pp.body, x: {} });
      }
      for (const s of pipStored) arm.put(s);
      const nicBuilt: { id: string; name: string; body: Json; after: (res: Stored) => void }[] = [];
      try {
        for (const n of inlineNics) {
          const ipcs = (n as Json).ipcs as Json[];
          const cp = (n as Json).cp as Json;
          const tags = (n as Json).tags as Json | undefined;
          const built = buildNic(ctx, router, { id: n.spec.id, name: n.spec.name, sub, rg, location, ...(tags ? { tags } : {}), ipConfigurations: ipcs, enableAcceleratedNetworking: cp.enableAcceleratedNetworking, networkSecurityGroup: cp.networkSecurityGroup }, undefined, `${VM_TYPE}/write`, id);
          nicBuilt.push({ id: n.spec.id, name: n.spec.name, body: built.body, after: built.after });
        }
      } catch (err) {
        for (const s of pipStored) arm.remove(s);
        throw err;
      }

      return {
        body: vmBody,
        x: {
          userData,
          // customData is what cloud-init runs; Azure never returns it from its API (kept out of the body).
          customData: typeof os.customData === "string" ? os.customData : undefined,
          power: allocationFailure ? undefined : "starting",
          vmId,
          osDiskId: diskId,
          osDiskDelete: osDeleteOption === "Delete",
          nics: [...refNics.map((r) => ({ id: r.nic.id, del: r.del })), ...inlineNics.map((n) => ({ id: n.spec.id, del: n.del }))],
          pipsByNic: Object.fromEntries(inlineNics.map((n) => [lc(n.spec.id), n.pips.map((pp) => ({ id: pp.id, del: pp.del }))])),
          stateTime: now,
          failure: allocationFailure
            ? {
                code: allocationFailure.code,
                message:
                  allocationFailure.code === "AllocationFailed"
                    ? "Allocation failed. We do not have sufficient capacity for the requested VM size in this region. Read more about improving likelihood of allocation success at http://aka.ms/allocation-guidance"
                    : "Allocation failed. VM(s) with the following constraints cannot be allocated, because the condition is too restrictive. Please remove some constraints and try again.",
              }
            : undefined,
        },
        after: (res) => {
          arm.vmIds.set(lc(vmId), res.key);
          for (const nb of nicBuilt) {
            const stored: Stored = { id: nb.id, key: lc(nb.id), type: NIC_TYPE, name: nb.name, sub, rg, body: nb.body, x: {} };
            arm.put(stored);
            nb.after(stored);
          }
          for (const nr of nicRefs) {
            const nic = arm.get(nr.id);
            if (nic) {
              nic.body.properties.virtualMachine = { id };
              nic.body.properties.macAddress ??= macOf(d.ids.hex("mac", nic.id, 12));
              nic.body.properties.primary = nr.properties.primary;
            }
          }
          if (identity.system) d.dir.addPrincipal(identity.system);
          // the OS disk
          const diskBody: Json = {
            id: diskId,
            name: diskName,
            type: DISK_TYPE,
            location,
            tags: {},
            managedBy: id,
            sku: { name: storageAccountType, tier: storageAccountType.startsWith("Premium") ? "Premium" : "Standard" },
            properties: {
              osType: "Linux",
              hyperVGeneration: "V2",
              creationData: { createOption: "FromImage", imageReference: { id: imageIdOf(location, img) } },
              diskSizeGB,
              diskState: "Attached",
              provisioningState: "Succeeded",
              timeCreated: now,
              uniqueId: d.ids.guid("disk-unique", diskId),
              networkAccessPolicy: "AllowAll",
              publicNetworkAccess: "Enabled",
            },
          };
          if (!allocationFailure) arm.put({ id: diskId, key: lc(diskId), type: DISK_TYPE, name: diskName, sub, rg, body: diskBody, x: {} });
          else res.x.osDiskId = undefined;
        },
        complete: (res, op) => {
          res.x.stateTime = new Date(d.now()).toISOString();
          if (res.x.failure) {
            op.status = "Failed";
            op.error = res.x.failure;
            res.body.properties.provisioningState = "Failed";
            return;
          }
          if (res.x.power === "starting") res.x.power = "running";
        },
      };
    },
    view(ctx, res) {
      const ex = expandOf(ctx);
      return vmView(ctx, res, { instanceView: ex.has("instanceview"), userData: ex.has("userdata") });
    },
    listView(ctx, listed) {
      const now = new Date(ctx.now).toISOString();
      // A VM being deleted under a list lag is listed as it was; one deleted less than the lag ago
      // too, over a new one of its name.
      let items = listed.map((r) => (r.x.listedAs as Stored | undefined) ?? r);
      const ghosts = [...ctx.arm.listedAfterDelete.entries()].filter(([k, g]) => {
        if (g.until > ctx.now) return true;
        ctx.arm.listedAfterDelete.delete(k);
        return false;
      }).map(([, g]) => g.res);
      const within = ctx.listedIn;
      // Only what the caller may read (as the live items were filtered before this).
      const oid = ctx.caller?.oid;
      const inScope = within ? ghosts.filter((g) => lc(g.id).startsWith(`${within}/`) && (oid === undefined || ctx.arm.d.rbac.allowed(oid, `${VM_TYPE}/read`, g.id, false))) : [];
      if (inScope.length > 0) {
        const byKey = new Map(items.map((r) => [r.key, r] as const));
        for (const g of inScope) byKey.set(g.key, g);
        items = [...byKey.values()];
      }
      // As Azure documents both VM lists: $expand=instanceView only with a valid $filter (a scale
      // set: 'virtualMachineScaleSet/id' eq '...'), refused otherwise.
      const expand = expandOf(ctx).has("instanceview");
      const filter = ctx.query.get("$filter") ?? "";
      const vmss = /^\s*'?virtualMachineScaleSet\/id'?\s+eq\s+'?([^']+)'?\s*$/i.exec(filter)?.[1];
      if (filter && !vmss) throw invalid(`The value of parameter $filter '${filter}' is not valid. Allowed value is 'virtualMachineScaleSet/id' eq <scale set id>.`, "$filter");
      if (expand && !vmss) throw invalid("The $expand=instanceView option of a virtual machine list can only be specified together with a valid $filter option.", "$expand");
      // statusOnly=true exists on the subscription list only (VirtualMachines_ListAll); it answers the
      // run-time status only: no tags, no profiles. The resource-group list has no such parameter.
      if (ctx.listScope !== "resourceGroup" && lc(ctx.query.get("statusOnly") ?? "") === "true") {
        return items.map((r) => ({ id: r.id, name: r.name, type: r.type, location: r.body.location, properties: { vmId: r.x.vmId, instanceView: instanceView(r, now) } }));
      }
      // No VM of the emulator belongs to a scale set: a scale-set filter matches none.
      if (vmss) return [];
      return items.map((r) => vmView(ctx, r, { instanceView: false }));
    },
    patch(_ctx, res, body) {
      // PATCH (VirtualMachines_Update): tags, userData and size may change.
      if (body.tags !== undefined) res.body.tags = body.tags;
      const p = (isObject(body.properties) ? body.properties : {}) as Json;
      if (p.userData !== undefined) {
        if (typeof p.userData !== "string" || !b64ok(p.userData)) throw invalid("User data must be in Base64 encoding.", "userData");
        if (Buffer.from(p.userData, "base64").length > 64 * 1024) throw invalid("User data must be less than 64 KB.", "userData");
        res.x.userData = p.userData;
      }
      const sizeName = (p.hardwareProfile as Json | undefined)?.vmSize;
      if (typeof sizeName === "string") {
        const size = vmSize(sizeName);
        if (!size || !deps.catalog.isOffered(size, res.body.location)) throw invalid(`The value ${sizeName} provided for the VM size is not valid.`, "vmSize");
        res.body.properties.hardwareProfile = { vmSize: size.name };
      }
    },
    subGets: {
      instanceview: (ctx, res) => instanceView(res, new Date(ctx.now).toISOString()),
    },
    beforeDelete(ctx, res) {
      // Under a list lag, lists go on showing the VM as it is now while it is deleted, and after.
      if (listLagOf(ctx.arm, res)) res.x.listedAs = snapshot(res);
    },
    onRemoved(arm, res) {
      arm.vmIds.delete(lc(res.x.vmId ?? ""));
      const sys = res.body.identity?.principalId;
      if (sys) arm.d.dir.removePrincipal(sys);
    },
    actions: {
      poweroff: (ctx, res) => {
        requireProvisioned(res, "powerOff");
        return { op: powerOp(ctx, res, "stopping", "stopped", VM_TYPE) };
      },
      deallocate: (ctx, res) => {
        requireProvisioned(res, "deallocate");
        return { op: powerOp(ctx, res, "deallocating", "deallocated", VM_TYPE) };
      },
      start: (ctx, res) => {
        requireProvisioned(res, "start");
        return { op: powerOp(ctx, res, "starting", "running", VM_TYPE) };
      },
      restart: (ctx, res) => {
        requireProvisioned(res, "restart");
        if (res.x.power !== "running") throw new ArmError(409, "OperationNotAllowed", `Cannot restart the virtual machine '${res.name}' since it is not running.`);
        return { op: powerOp(ctx, res, "starting", "running", VM_TYPE) };
      },
    },
  };

  const disk: TypeDef = {
    type: DISK_TYPE,
    putMode: "async",
    deleteMode: "async",
    inResourceGroup: true,
    listBySubscription: true,
    creatingState: "Updating",
    put(ctx, { id, name, existing, body }) {
      const location = normLocation(String(body.location));
      requireKnownLocation(location, "disks");
      if (existing) {
        existing.body.tags = body.tags ?? {};
        return { body: existing.body };
      }
      const p = (body.properties ?? {}) as Json;
      const co = p.creationData?.createOption;
      if (co !== "Empty") throw invalid(`Only createOption 'Empty' is emulated for stand-alone disks (got '${co}').`, "creationData.createOption");
      if (typeof p.diskSizeGB !== "number" || p.diskSizeGB < 1) throw invalid("diskSizeGB must be given for an empty disk.", "diskSizeGB");
      const sku = body.sku?.name ?? "Standard_LRS";
      return {
        body: {
          id,
          name,
          type: DISK_TYPE,
          location,
          tags: body.tags ?? {},
          sku: { name: sku, tier: String(sku).startsWith("Premium") ? "Premium" : "Standard" },
          properties: { creationData: { createOption: "Empty" }, diskSizeGB: p.diskSizeGB, diskState: "Unattached", provisioningState: "Succeeded", timeCreated: new Date(ctx.now).toISOString(), uniqueId: ctx.arm.d.ids.guid("disk-unique", id) },
        },
      };
    },
    beforeDelete(_ctx, res) {
      if (res.body.managedBy) throw new ArmError(409, "OperationNotAllowed", `Disk ${res.name} is attached to VM ${res.body.managedBy}.`);
    },
  };
  return [vm, disk];
}

function listLagOf(arm: Arm, res: Stored): { ms: number } | undefined {
  return arm.listLags.find((l) => lc(res.id).includes(lc(l.path)));
}

/** The VM as a lagging list shows it: a copy, the stored one goes on changing. */
function snapshot(res: Stored): Stored {
  const { listedAs: _, ...x } = res.x;
  return { ...res, body: JSON.parse(JSON.stringify(res.body)) as Json, x };
}

/** Removing a VM (DELETE, resource group deletion, Spot eviction) cascades per its deleteOptions. */
export function installVmDelete(arm: Arm): void {
  const original = arm.remove.bind(arm);
  arm.remove = (res: Stored, viaParent = false): void => {
    if (lc(res.type) === lc(VM_TYPE) && !res.x.__removing) {
      const lag = listLagOf(arm, res);
      // Still listed as it was before its deletion began, for the lag.
      if (lag) arm.listedAfterDelete.set(res.key, { res: (res.x.listedAs as Stored | undefined) ?? snapshot(res), until: arm.d.now() + lag.ms });
      res.x.__removing = true;
      removeVm(arm, res);
      return;
    }
    original(res, viaParent);
  };
}

function requireProvisioned(res: Stored, what: string): void {
  if (res.body.properties.provisioningState === "Failed") {
    throw new ArmError(409, "OperationNotAllowed", `Operation '${what}' is not allowed on VM '${res.name}' since the VM is in a failed state.`);
  }
  if (res.pendingOp && res.pendingOp.status === "InProgress") {
    throw new ArmError(409, "OperationNotAllowed", `Operation '${what}' is not allowed since the virtual machine '${res.name}' is in the middle of another operation.`);
  }
}

function updateVm(ctx: OpCtx, existing: Stored, body: Json, p: Json, location: string): { body: Json; x?: Json } {
  if (normLocation(existing.body.location) !== location) throw new ArmError(409, "PropertyChangeNotAllowed", "Changing property 'location' is not allowed.", { target: "location" });
  const cur = existing.body.properties;
  const img = p.storageProfile?.imageReference;
  if (img && (img.publisher ?? img.id) !== (cur.storageProfile.imageReference.publisher ?? cur.storageProfile.imageReference.id)) {
    throw new ArmError(409, "PropertyChangeNotAllowed", "Changing property 'imageReference' is not allowed.", { target: "imageReference" });
  }
  const osName = p.storageProfile?.osDisk?.name;
  if (osName && lc(osName) !== lc(cur.storageProfile.osDisk.name)) throw new ArmError(409, "PropertyChangeNotAllowed", "Changing property 'osDisk.name' is not allowed.", { target: "osDisk.name" });
  if (p.osProfile?.computerName && p.osProfile.computerName !== cur.osProfile.computerName) {
    throw new ArmError(409, "PropertyChangeNotAllowed", "Changing property 'computerName' is not allowed.", { target: "computerName" });
  }
  if (p.priority && p.priority !== (cur.priority ?? "Regular")) throw new ArmError(409, "PropertyChangeNotAllowed", "Changing property 'priority' is not allowed.", { target: "priority" });
  const b = { ...existing.body, tags: body.tags ?? existing.body.tags, properties: { ...cur } };
  const x = { ...existing.x };
  if (p.userData !== undefined) {
    if (typeof p.userData !== "string" || !b64ok(p.userData)) throw invalid("User data must be in Base64 encoding.", "userData");
    x.userData = p.userData;
  }
  if (p.hardwareProfile?.vmSize && lc(p.hardwareProfile.vmSize) !== lc(cur.hardwareProfile.vmSize)) {
    const size = vmSize(p.hardwareProfile.vmSize);
    if (!size) throw invalid(`The value ${p.hardwareProfile.vmSize} provided for the VM size is not valid.`, "vmSize");
    b.properties.hardwareProfile = { vmSize: size.name };
  }
  void ctx;
  return { body: b, x };
}

function macOf(hex: string): string {
  return hex.toUpperCase().match(/.{2}/g)!.join("-");
}

function imageIdOf(location: string, img: Json): string {
  if (img.id) return img.id;
  return `/Subscriptions/00000000-0000-0000-0000-000000000000/Providers/Microsoft.Compute/Locations/${location}/Publishers/${img.publisher}/ArtifactTypes/VMImage/Offers/${img.offer}/Skus/${img.sku}/Versions/${img.version ?? "latest"}`;
}

function normalizeIdentity(arm: Arm, identity: unknown, vmIdKey: string): { body?: Json; userAssigned: string[]; system?: Principal } {
  if (identity === undefined || identity === null) return { userAssigned: [] };
  if (!isObject(identity)) throw invalid("The identity property is not valid.", "identity");
  const type = String(identity.type ?? "None");
  const kinds = type.split(",").map((s) => lc(s.trim()));
  if (!kinds.every((k) => ["none", "systemassigned", "userassigned"].includes(k))) throw invalid(`The identity type '${type}' is not valid.`, "identity.type");
  if (kinds.includes("none")) return { userAssigned: [] };
  const ua = isObject(identity.userAssignedIdentities) ? Object.keys(identity.userAssignedIdentities) : [];
  if (kinds.includes("userassigned") && ua.length === 0) throw invalid("The identity type 'UserAssigned' requires userAssignedIdentities.", "identity.userAssignedIdentities");
  if (!kinds.includes("userassigned") && ua.length > 0) throw invalid("userAssignedIdentities can only be given with identity type 'UserAssigned'.", "identity.userAssignedIdentities");
  const body: Json = { type: kinds.includes("systemassigned") && kinds.includes("userassigned") ? "SystemAssigned, UserAssigned" : kinds.includes("systemassigned") ? "SystemAssigned" : "UserAssigned" };
  const out: { body?: Json; userAssigned: string[]; system?: Principal } = { body, userAssigned: [] };
  if (ua.length) {
    body.userAssignedIdentities = {};
    for (const uid of ua) {
      const r = arm.get(uid);
      if (!r || lc(r.type) !== lc(UAI_TYPE)) {
        throw new ArmError(
          400,
          "FailedIdentityOperation",
          `Identity operation for resource '${vmIdKey}' failed with error 'Failed to perform resource identity operation. Status: 'NotFound'. Response: '{"error":{"code":"NotFound","message":"Resource '${uid}' was not found."}}'.'.`,
        );
      }
      body.userAssignedIdentities[r.id] = { principalId: r.body.properties.principalId, clientId: r.body.properties.clientId };
      out.userAssigned.push(r.id);
    }
  }
  if (kinds.includes("systemassigned")) {
    const parts = vmIdKey.split("/");
    const tenantId = arm.d.dir.subscriptions.get(lc(parts[2] ?? ""))!.tenantId;
    const oid = arm.d.ids.guid("vm-system-principal", vmIdKey);
    out.system = {
      oid,
      appId: arm.d.ids.guid("vm-system-app", vmIdKey),
      tenantId,
      displayName: parts[parts.length - 1]!,
      kind: "managedIdentity",
      secrets: [],
      federatedCredentials: [],
      createdAtMs: arm.d.now(),
      resourceId: vmIdKey,
    };
    body.principalId = oid;
    body.tenantId = tenantId;
  }
  return out;
}

// ---- test controls and managed-identity hosts ---------------------------------------------------------

/** The managed-identity host of a VM, keyed by its vmId. */
export function vmHost(arm: Arm, vmId: string): ManagedIdentityHost | undefined {
  const key = arm.vmIds.get(lc(vmId));
  const vm = key ? arm.resources.get(key) : undefined;
  if (!vm) return undefined;
  const ident = vm.body.identity as Json | undefined;
  return {
    tenantId: arm.d.dir.subscriptions.get(vm.sub)?.tenantId ?? "",
    userAssigned: Object.keys(ident?.userAssignedIdentities ?? {}),
    systemPrincipalOid: ident?.principalId,
  };
}

export function listVmsForControl(arm: Arm, baseUrl: string): Json[] {
  arm.settle();
  const out: Json[] = [];
  for (const r of arm.resources.values()) {
    if (lc(r.type) !== lc(VM_TYPE)) continue;
    const ud = r.x.userData as string | undefined;
    out.push({
      id: r.id,
      name: r.name,
      vmId: r.x.vmId,
      subscriptionId: r.sub,
      resourceGroup: r.id.split("/")[4],
      location: r.body.location,
      vmSize: r.body.properties.hardwareProfile.vmSize,
      priority: r.body.properties.priority ?? "Regular",
      evictionPolicy: r.body.properties.evictionPolicy,
      provisioningState: r.body.properties.provisioningState,
      powerState: r.x.power ?? null,
      tags: r.body.tags ?? {},
      userData: ud ?? null,
      userDataText: ud === undefined ? null : Buffer.from(ud, "base64").toString("utf8"),
      customDataText: typeof r.x.customData === "string" ? Buffer.from(r.x.customData, "base64").toString("utf8") : null,
      identity: r.body.identity ?? null,
      imdsEndpoint: `${baseUrl}/_mi/${r.x.vmId}`,
      timeCreated: r.body.properties.timeCreated,
    });
  }
  return out;
}

/** Sets a VM's power state as if its OS shut down (stopped), or Azure evicted a Spot VM ("evicted"). */
export function controlVm(arm: Arm, id: string, state: VmPowerControl): Json {
  arm.settle();
  const vm = arm.get(id) ?? (arm.vmIds.get(lc(id)) ? arm.resources.get(arm.vmIds.get(lc(id))!) : undefined);
  if (!vm || lc(vm.type) !== lc(VM_TYPE)) throw new ArmError(404, "ResourceNotFound", `Virtual machine '${id}' was not found.`);
  switch (state) {
    case "stopped":
    case "deallocated":
    case "running":
      vm.x.power = state;
      return { id: vm.id, powerState: state };
    case "evicted": {
      if (!vm.body.properties.priority || vm.body.properties.priority === "Regular") throw new ArmError(409, "OperationNotAllowed", "Only Spot or Low priority VMs can be evicted.");
      if (vm.body.properties.evictionPolicy === "Delete") {
        arm.remove(vm);
        return { id: vm.id, powerState: null, deleted: true };
      }
      vm.x.power = "deallocated";
      return { id: vm.id, powerState: "deallocated" };
    }
    default:
      throw new ArmError(400, "InvalidParameter", `Unknown power state '${String(state)}'.`);
  }
}
