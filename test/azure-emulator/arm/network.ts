 
// Microsoft.Network: virtual networks and subnets, network interfaces, public IP addresses.
// Follows the network resource provider: PUT answers 201/200 with Azure-AsyncOperation, DELETE
// 202 with Azure-AsyncOperation and Location; resources in use cannot be deleted.
import { ArmError, isObject, lc } from "../util.js";
import type { Arm, Json, OpCtx, Stored, TypeDef } from "./framework.js";
import { normLocation, requireKnownLocation, type ArmRouter } from "./router.js";

export const VNET_TYPE = "Microsoft.Network/virtualNetworks";
export const SUBNET_TYPE = "Microsoft.Network/virtualNetworks/subnets";
export const NIC_TYPE = "Microsoft.Network/networkInterfaces";
export const PIP_TYPE = "Microsoft.Network/publicIPAddresses";

// ---- CIDR arithmetic ------------------------------------------------------------------------------

export interface Cidr {
  base: number;
  bits: number;
  text: string;
}

export function parseCidr(text: string): Cidr | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(text.trim());
  if (!m) return undefined;
  const o = m.slice(1, 5).map(Number);
  const bits = Number(m[5]);
  if (o.some((x) => x > 255) || bits > 32) return undefined;
  const ip = ((o[0]! << 24) | (o[1]! << 16) | (o[2]! << 8) | o[3]!) >>> 0;
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  if ((ip & mask) >>> 0 !== ip) return undefined; // host bits set
  return { base: ip, bits, text };
}

const size = (c: Cidr): number => 2 ** (32 - c.bits);
export const cidrWithin = (inner: Cidr, outer: Cidr): boolean => inner.bits >= outer.bits && inner.base >= outer.base && inner.base + size(inner) <= outer.base + size(outer);
export const cidrOverlap = (a: Cidr, b: Cidr): boolean => a.base < b.base + size(b) && b.base < a.base + size(a);
const ipText = (n: number): string => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");

function subnetPrefixes(p: Json): string[] {
  if (typeof p.addressPrefix === "string") return [p.addressPrefix];
  if (Array.isArray(p.addressPrefixes)) return p.addressPrefixes.map(String);
  return [];
}

// ---- helpers used by compute ----------------------------------------------------------------------

function etag(arm: Arm, id: string): string {
  return `W/"${arm.d.ids.guid("etag", id)}"`;
}

/** Allocates the next free private address of a subnet (Azure reserves the first four). */
function allocateIp(subnet: Stored, wanted?: string): string {
  const c = parseCidr(subnetPrefixes(subnet.body.properties)[0] ?? "");
  if (!c) throw new ArmError(400, "InvalidRequestFormat", `Subnet '${subnet.name}' has no IPv4 prefix.`);
  const used: Set<string> = (subnet.x.usedIps ??= new Set<string>());
  if (wanted) {
    if (used.has(wanted)) throw new ArmError(400, "PrivateIPAddressInUse", `IP configuration is using the private IP address ${wanted} which is already allocated to resource in subnet ${subnet.id}.`);
    used.add(wanted);
    return wanted;
  }
  for (let i = 4; i < size(c) - 1; i++) {
    const ip = ipText(c.base + i);
    if (!used.has(ip)) {
      used.add(ip);
      return ip;
    }
  }
  throw new ArmError(400, "SubnetIsFull", `Subnet ${subnet.name} with address prefix ${c.text} does not have enough capacity for 1 IP addresses.`);
}

function refNotFound(ref: string, by: string): ArmError {
  return new ArmError(
    400,
    "InvalidResourceReference",
    `Resource ${ref} referenced by resource ${by} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.`,
  );
}

/** Subnet IDs of a VNet's subnets, in the VNet's view. */
function vnetView(arm: Arm, res: Stored): Json {
  const b = { ...res.body, properties: { ...res.body.properties } };
  b.properties.subnets = arm.children(res.key, SUBNET_TYPE).map((s) => subnetView(arm, s));
  return b;
}

function subnetView(arm: Arm, s: Stored): Json {
  const ipc: string[] = [...((s.x.ipConfigs as Set<string> | undefined) ?? [])];
  const props = { ...s.body.properties };
  if (ipc.length) props.ipConfigurations = ipc.map((id) => ({ id: arm.get(id.split("/ipConfigurations/")[0]!)?.id ? id : id }));
  else delete props.ipConfigurations;
  return { ...s.body, properties: props };
}

function subnetInUse(s: Stored): string | undefined {
  const set = s.x.ipConfigs as Set<string> | undefined;
  return set && set.size ? [...set][0] : undefined;
}

function inUseSubnetError(s: Stored, by: string): ArmError {
  return new ArmError(
    400,
    "InUseSubnetCannotBeDeleted",
    `Subnet ${s.name} is in use by ${by} and cannot be deleted. In order to delete the subnet, delete all the resources within the subnet. See aka.ms/deletesubnet.`,
  );
}

/** Validates a subnet definition against its VNet and siblings; returns the stored properties. */
function subnetProps(vnet: Stored, name: string, p: Json, siblings: { name: string; prefixes: string[] }[], existing?: Stored): Json {
  const prefixes = subnetPrefixes(p);
  if (prefixes.length === 0) throw new ArmError(400, "NetcfgInvalidSubnet", `Subnet '${name}' is not valid in virtual network '${vnet.name}': it has no address prefix.`);
  const space: Cidr[] = (vnet.body.properties.addressSpace?.addressPrefixes ?? []).map((x: string) => parseCidr(x)!).filter(Boolean);
  for (const pre of prefixes) {
    const c = parseCidr(pre);
    if (!c) throw new ArmError(400, "InvalidAddressPrefixFormat", `Address prefix ${pre} of resource ${vnet.id}/subnets/${name} is not formatted correctly. It should follow CIDR notation, for example 10.0.0.0/24.`);
    if (!space.some((s) => cidrWithin(c, s))) {
      throw new ArmError(400, "NetcfgSubnetRangeOutsideVnet", `Subnet '${name}' is not valid because its IP address range is outside the IP address range of virtual network '${vnet.name}'.`);
    }
    if (c.bits > 29) throw new ArmError(400, "NetcfgInvalidSubnet", `Subnet '${name}' is not valid in virtual network '${vnet.name}': the smallest supported subnet is /29.`);
    for (const sib of siblings) {
      if (lc(sib.name) === lc(name)) continue;
      for (const o of sib.prefixes) {
        const oc = parseCidr(o);
        if (oc && cidrOverlap(c, oc)) {
          throw new ArmError(400, "NetcfgSubnetRangesOverlap", `Subnet '${name}' is not valid because its IP address range overlaps with that of an existing subnet '${sib.name}' in virtual network '${vnet.name}'.`);
        }
      }
    }
  }
  if (existing && subnetInUse(existing) && JSON.stringify(subnetPrefixes(existing.body.properties)) !== JSON.stringify(prefixes)) {
    throw new ArmError(400, "InUseSubnetCannotBeUpdated", `Subnet ${name} is in use and cannot be updated: its address prefix cannot change while IP configurations use it.`);
  }
  const out: Json = {
    provisioningState: "Succeeded",
    ...(prefixes.length === 1 && typeof p.addressPrefix === "string" ? { addressPrefix: prefixes[0] } : { addressPrefixes: prefixes }),
    delegations: Array.isArray(p.delegations) ? p.delegations : [],
    privateEndpointNetworkPolicies: p.privateEndpointNetworkPolicies ?? "Disabled",
    privateLinkServiceNetworkPolicies: p.privateLinkServiceNetworkPolicies ?? "Enabled",
    defaultOutboundAccess: p.defaultOutboundAccess ?? false,
  };
  if (p.networkSecurityGroup) out.networkSecurityGroup = p.networkSecurityGroup;
  return out;
}

// ---- NIC creation shared with inline VM network configurations --------------------------------------

export interface NicSpec {
  id: string;
  name: string;
  sub: string;
  rg: string;
  location: string;
  tags?: Json;
  ipConfigurations: Json[];
  enableAcceleratedNetworking?: boolean;
  networkSecurityGroup?: Json;
}

/** Validates and creates (or updates) a NIC; performs linked access checks for subnets and public IPs. */
export function buildNic(ctx: OpCtx, router: ArmRouter, spec: NicSpec, existing: Stored | undefined, mainAction: string, mainScope: string): { body: Json; after: (res: Stored) => void } {
  const arm = ctx.arm;
  if (!Array.isArray(spec.ipConfigurations) || spec.ipConfigurations.length === 0) {
    throw new ArmError(400, "InvalidRequestFormat", `Network interface ${spec.id} must have at least one IP configuration.`);
  }
  const linked: { action: string; scope: string }[] = [];
  const plans: { name: string; subnet: Stored; pip?: Stored; primary: boolean; ip?: string; method: string }[] = [];
  spec.ipConfigurations.forEach((ic: Json, i: number) => {
    const name = String(ic.name ?? `ipconfig${i + 1}`);
    const p = (ic.properties ?? {}) as Json;
    const subnetId = p.subnet?.id;
    if (typeof subnetId !== "string") throw new ArmError(400, "InvalidRequestFormat", `IP configuration ${name} of ${spec.id} must reference a subnet.`);
    const subnet = arm.get(subnetId);
    if (!subnet || lc(subnet.type) !== lc(SUBNET_TYPE)) throw refNotFound(subnetId, spec.id);
    const vnet = arm.resources.get(subnet.parentKey!)!;
    if (normLocation(vnet.body.location) !== spec.location) {
      throw new ArmError(400, "InvalidResourceReference", `Resource ${subnet.id} referenced by resource ${spec.id} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.`);
    }
    linked.push({ action: "Microsoft.Network/virtualNetworks/subnets/join/action", scope: subnet.id });
    let pip: Stored | undefined;
    if (p.publicIPAddress?.id) {
      pip = arm.get(p.publicIPAddress.id);
      if (!pip || lc(pip.type) !== lc(PIP_TYPE)) throw refNotFound(p.publicIPAddress.id, spec.id);
      if (normLocation(pip.body.location) !== spec.location) throw refNotFound(pip.id, spec.id);
      const user = pip.x.ipConfig as string | undefined;
      if (user && !lc(user).startsWith(lc(spec.id) + "/")) {
        throw new ArmError(400, "PublicIPAddressInUse", `Resource ${pip.id} is referenced by resource ${user}. It cannot be used by ${spec.id}/ipConfigurations/${name} at the same time.`);
      }
      linked.push({ action: "Microsoft.Network/publicIPAddresses/join/action", scope: pip.id });
    }
    const method = p.privateIPAllocationMethod ?? (p.privateIPAddress ? "Static" : "Dynamic");
    plans.push({ name, subnet, pip, primary: p.primary ?? i === 0, ip: method === "Static" ? p.privateIPAddress : undefined, method });
  });
  router.authorizeLinked(ctx.caller, mainAction, mainScope, linked);
  const previous = existing ? releaseNic(arm, existing, false) : new Map<string, string>();
  const ipconfigs: Json[] = [];
  const allocations: { subnet: Stored; ip: string; icId: string; pip?: Stored }[] = [];
  for (const pl of plans) {
    const icId = `${spec.id}/ipConfigurations/${pl.name}`;
    const keep = previous.get(`${lc(icId)}|${pl.subnet.key}`);
    const ip = allocateIp(pl.subnet, pl.ip ?? keep);
    allocations.push({ subnet: pl.subnet, ip, icId, pip: pl.pip });
    const icp: Json = {
      provisioningState: "Succeeded",
      privateIPAddress: ip,
      privateIPAllocationMethod: pl.method,
      subnet: { id: pl.subnet.id },
      primary: pl.primary,
      privateIPAddressVersion: "IPv4",
    };
    if (pl.pip) icp.publicIPAddress = { id: pl.pip.id };
    ipconfigs.push({ id: icId, name: pl.name, etag: etag(arm, icId), type: "Microsoft.Network/networkInterfaces/ipConfigurations", properties: icp });
  }
  const body: Json = {
    id: spec.id,
    name: spec.name,
    type: NIC_TYPE,
    location: spec.location,
    tags: spec.tags ?? {},
    etag: etag(arm, spec.id),
    kind: "Regular",
    properties: {
      provisioningState: "Succeeded",
      resourceGuid: existing?.body.properties.resourceGuid ?? arm.d.ids.guid("resource-guid", spec.id),
      ipConfigurations: ipconfigs,
      dnsSettings: { dnsServers: [], appliedDnsServers: [], internalDomainNameSuffix: `${arm.d.ids.hex("dns", spec.sub, 26)}.bx.internal.cloudapp.net` },
      enableAcceleratedNetworking: spec.enableAcceleratedNetworking ?? false,
      vnetEncryptionSupported: false,
      enableIPForwarding: false,
      disableTcpStateTracking: false,
      hostedWorkloads: [],
      tapConfigurations: [],
      nicType: "Standard",
      allowPort25Out: false,
      auxiliaryMode: "None",
      auxiliarySku: "None",
    },
  };
  if (spec.networkSecurityGroup) body.properties.networkSecurityGroup = spec.networkSecurityGroup;
  if (existing?.body.properties.virtualMachine) body.properties.virtualMachine = existing.body.properties.virtualMachine;
  if (existing?.body.properties.macAddress) body.properties.macAddress = existing.body.properties.macAddress;
  return {
    body,
    after: () => {
      for (const a of allocations) {
        ((a.subnet.x.ipConfigs ??= new Set<string>()) as Set<string>).add(a.icId);
        ((a.subnet.x.ipByConfig ??= new Map<string, string>()) as Map<string, string>).set(lc(a.icId), a.ip);
        if (a.pip) {
          a.pip.x.ipConfig = a.icId;
          a.pip.body.properties.ipConfiguration = { id: a.icId };
        }
      }
    },
  };
}

/** Frees a NIC's addresses and references; returns the addresses it held by "ipconfig|subnetKey". */
function releaseNic(arm: Arm, nic: Stored, _final: boolean): Map<string, string> {
  const held = new Map<string, string>();
  for (const ic of nic.body.properties?.ipConfigurations ?? []) {
    const subnet = arm.get(ic.properties?.subnet?.id ?? "");
    if (subnet) {
      (subnet.x.ipConfigs as Set<string> | undefined)?.delete(ic.id);
      const ip = ic.properties.privateIPAddress as string | undefined;
      if (ip) {
        (subnet.x.usedIps as Set<string> | undefined)?.delete(ip);
        held.set(`${lc(ic.id)}|${subnet.key}`, ip);
      }
    }
    const pip = arm.get(ic.properties?.publicIPAddress?.id ?? "");
    if (pip && lc(pip.x.ipConfig ?? "") === lc(ic.id)) {
      delete pip.x.ipConfig;
      delete pip.body.properties.ipConfiguration;
    }
  }
  return held;
}

export function buildPip(ctx: OpCtx, id: string, name: string, location: string, body: Json, existing?: Stored): Json {
  const arm = ctx.arm;
  const p = (body.properties ?? {}) as Json;
  const sku = { name: body.sku?.name ?? "Standard", tier: body.sku?.tier ?? "Regional" };
  if (!["Basic", "Standard"].includes(sku.name)) throw new ArmError(400, "InvalidRequestFormat", `Public IP address SKU '${sku.name}' is not valid.`);
  if (sku.name === "Basic") {
    throw new ArmError(400, "BasicSkuPublicIPRetired", `Basic SKU public IP addresses can no longer be created (resource ${id}). Use the Standard SKU.`);
  }
  const method = p.publicIPAllocationMethod ?? "Static";
  if (sku.name === "Standard" && method !== "Static") {
    throw new ArmError(400, "StandardSkuPublicIPAddressesMustBeStatic", `Standard sku publicIp ${id} must have AllocationMethod set to Static.`);
  }
  const n = arm.d.ids.fraction("pip-address", id);
  const ip = existing?.body.properties.ipAddress ?? `20.${Math.floor(n * 200) + 20}.${Math.floor((n * 1e4) % 256)}.${Math.floor((n * 1e6) % 254) + 1}`;
  const b: Json = {
    id,
    name,
    type: PIP_TYPE,
    location,
    tags: body.tags ?? {},
    etag: etag(arm, id),
    sku,
    properties: {
      provisioningState: "Succeeded",
      resourceGuid: existing?.body.properties.resourceGuid ?? arm.d.ids.guid("resource-guid", id),
      ipAddress: ip,
      publicIPAddressVersion: p.publicIPAddressVersion ?? "IPv4",
      publicIPAllocationMethod: method,
      idleTimeoutInMinutes: p.idleTimeoutInMinutes ?? 4,
      ipTags: [],
      ddosSettings: { protectionMode: "VirtualNetworkInherited" },
    },
  };
  if (Array.isArray(body.zones)) b.zones = body.zones;
  if (p.dnsSettings) b.properties.dnsSettings = p.dnsSettings;
  if (existing?.x.ipConfig) b.properties.ipConfiguration = { id: existing.x.ipConfig };
  return b;
}

export function networkTypes(getRouter: () => ArmRouter): TypeDef[] {
  const vnet: TypeDef = {
    type: VNET_TYPE,
    putMode: "async",
    deleteMode: "async",
    inResourceGroup: true,
    listBySubscription: true,
    creatingState: "Updating",
    put(ctx, { id, name, sub, existing, body }) {
      const arm = ctx.arm;
      const location = normLocation(String(body.location));
      requireKnownLocation(location, "virtualNetworks");
      if (existing && normLocation(existing.body.location) !== location) {
        throw new ArmError(400, "LocationMismatch", `The location of an existing virtual network cannot be changed (${existing.body.location} -> ${location}).`);
      }
      const p = (body.properties ?? {}) as Json;
      const prefixes: string[] = Array.isArray(p.addressSpace?.addressPrefixes) ? p.addressSpace.addressPrefixes.map(String) : [];
      if (prefixes.length === 0) throw new ArmError(400, "InvalidRequestFormat", `Virtual network ${id} must have at least one address prefix in addressSpace.addressPrefixes.`);
      const cidrs = prefixes.map((x) => {
        const c = parseCidr(x);
        if (!c) throw new ArmError(400, "InvalidAddressPrefixFormat", `Address prefix ${x} of resource ${id} is not formatted correctly. It should follow CIDR notation, for example 10.0.0.0/24.`);
        return c;
      });
      for (let i = 0; i < cidrs.length; i++) for (let j = i + 1; j < cidrs.length; j++) {
        if (cidrOverlap(cidrs[i]!, cidrs[j]!)) throw new ArmError(400, "NetcfgInvalidAddressPrefixes", `Address prefixes ${prefixes[i]} and ${prefixes[j]} of virtual network ${name} overlap.`);
      }
      // A PUT describes the subnets completely: subnets not listed (or all, when the property is absent) are removed.
      const wanted: Json[] = Array.isArray(p.subnets) ? p.subnets : [];
      const seen = new Set<string>();
      for (const s of wanted) {
        if (!isObject(s) || typeof s.name !== "string") throw new ArmError(400, "InvalidRequestFormat", "Every subnet needs a name.");
        if (seen.has(lc(s.name))) throw new ArmError(400, "InvalidRequestFormat", `Subnet ${s.name} is listed twice.`);
        seen.add(lc(s.name));
      }
      const current = existing ? arm.children(existing.key, SUBNET_TYPE) : [];
      const removed = current.filter((c) => !seen.has(lc(c.name)));
      for (const r of removed) {
        const by = subnetInUse(r);
        if (by) throw inUseSubnetError(r, by);
      }
      const b: Json = {
        id,
        name,
        type: VNET_TYPE,
        location,
        tags: body.tags ?? {},
        etag: etag(arm, id),
        properties: {
          provisioningState: "Succeeded",
          resourceGuid: existing?.body.properties.resourceGuid ?? arm.d.ids.guid("resource-guid", id),
          addressSpace: { addressPrefixes: prefixes },
          virtualNetworkPeerings: [],
          enableDdosProtection: false,
          privateEndpointVNetPolicies: "Disabled",
        },
      };
      if (p.dhcpOptions) b.properties.dhcpOptions = p.dhcpOptions;
      const fake: Stored = { id, key: lc(id), type: VNET_TYPE, name, sub, rg: "", body: b, x: {} };
      const siblings = wanted.map((s) => ({ name: String(s.name), prefixes: subnetPrefixes(s.properties ?? {}) }));
      const subnetBodies = wanted.map((s) => {
        const sid = `${id}/subnets/${s.name}`;
        const ex = current.find((c) => lc(c.name) === lc(String(s.name)));
        return { id: ex?.id ?? sid, name: ex?.name ?? String(s.name), props: subnetProps(fake, String(s.name), s.properties ?? {}, siblings, ex), ex };
      });
      return {
        body: b,
        after: (res) => {
          for (const r of removed) arm.remove(r);
          for (const s of subnetBodies) {
            const stored: Stored = s.ex ?? { id: s.id, key: lc(s.id), type: SUBNET_TYPE, name: s.name, sub: res.sub, rg: res.rg, parentKey: res.key, body: {}, x: {} };
            stored.body = { id: s.id, name: s.name, type: SUBNET_TYPE, etag: etag(arm, s.id), properties: s.props };
            arm.put(stored);
          }
        },
      };
    },
    view: (ctx, res) => vnetView(ctx.arm, res),
    listView: (ctx, items) => items.map((r) => vnetView(ctx.arm, r)),
    beforeDelete(ctx, res) {
      for (const s of ctx.arm.children(res.key, SUBNET_TYPE)) {
        const by = subnetInUse(s);
        if (by) throw inUseSubnetError(s, by);
      }
    },
  };

  const subnet: TypeDef = {
    type: SUBNET_TYPE,
    putMode: "async",
    deleteMode: "async",
    inResourceGroup: true,
    creatingState: "Updating",
    put(ctx, { id, name, parent, existing, body }) {
      const siblings = ctx.arm.children(parent!.key, SUBNET_TYPE).map((s) => ({ name: s.name, prefixes: subnetPrefixes(s.body.properties) }));
      const props = subnetProps(parent!, name, body.properties ?? {}, siblings, existing);
      return { body: { id, name, type: SUBNET_TYPE, etag: etag(ctx.arm, id), properties: props } };
    },
    view: (ctx, res) => subnetView(ctx.arm, res),
    listView: (ctx, items) => items.map((s) => subnetView(ctx.arm, s)),
    beforeDelete(_ctx, res) {
      const by = subnetInUse(res);
      if (by) throw inUseSubnetError(res, by);
    },
  };

  const nic: TypeDef = {
    type: NIC_TYPE,
    putMode: "async",
    deleteMode: "async",
    inResourceGroup: true,
    listBySubscription: true,
    creatingState: "Updating",
    put(ctx, { id, name, sub, rg, existing, body }) {
      const location = normLocation(String(body.location));
      requireKnownLocation(location, "networkInterfaces");
      if (existing && normLocation(existing.body.location) !== location) throw new ArmError(400, "LocationMismatch", "The location of a network interface cannot be changed.");
      const p = (body.properties ?? {}) as Json;
      return buildNic(
        ctx,
        getRouter(),
        { id, name, sub, rg, location, tags: body.tags, ipConfigurations: p.ipConfigurations, enableAcceleratedNetworking: p.enableAcceleratedNetworking, networkSecurityGroup: p.networkSecurityGroup },
        existing,
        `${NIC_TYPE}/write`,
        id,
      );
    },
    beforeDelete(_ctx, res) {
      const vm = res.body.properties.virtualMachine?.id;
      if (vm) {
        throw new ArmError(
          400,
          "NicInUse",
          `Network Interface ${res.id} is used by existing resource ${vm}. In order to delete the network interface, it must be dissociated from the resource. To learn more, see aka.ms/deletenic.`,
        );
      }
    },
    onRemoved(arm, res) {
      releaseNic(arm, res, true);
    },
  };

  const pip: TypeDef = {
    type: PIP_TYPE,
    putMode: "async",
    deleteMode: "async",
    inResourceGroup: true,
    listBySubscription: true,
    creatingState: "Updating",
    put(ctx, { id, name, existing, body }) {
      const location = normLocation(String(body.location));
      requireKnownLocation(location, "publicIPAddresses");
      return { body: buildPip(ctx, id, name, location, body, existing) };
    },
    beforeDelete(_ctx, res) {
      if (res.x.ipConfig) {
        throw new ArmError(
          400,
          "PublicIPAddressCannotBeDeleted",
          `Public IP address ${res.id} can not be deleted since it is still allocated to resource ${res.x.ipConfig}. In order to delete the public IP, disassociate/detach the Public IP address from the resource.  To learn how to do this, see aka.ms/deletepublicip.`,
        );
      }
    },
  };
  return [vnet, subnet, nic, pip];
}
