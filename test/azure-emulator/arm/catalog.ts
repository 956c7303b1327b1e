// What the emulated cloud offers: regions and virtual machine sizes (Microsoft.Compute/skus).
import { lc } from "../util.js";

export interface LocationInfo {
  name: string;
  displayName: string;
  geo: string;
}

export const LOCATIONS: LocationInfo[] = [
  { name: "eastus", displayName: "East US", geo: "US" },
  { name: "eastus2", displayName: "East US 2", geo: "US" },
  { name: "westus2", displayName: "West US 2", geo: "US" },
  { name: "westus3", displayName: "West US 3", geo: "US" },
  { name: "centralus", displayName: "Central US", geo: "US" },
  { name: "northeurope", displayName: "North Europe", geo: "Europe" },
  { name: "westeurope", displayName: "West Europe", geo: "Europe" },
  { name: "uksouth", displayName: "UK South", geo: "Europe" },
  { name: "swedencentral", displayName: "Sweden Central", geo: "Europe" },
  { name: "australiaeast", displayName: "Australia East", geo: "Asia Pacific" },
  { name: "southeastasia", displayName: "Southeast Asia", geo: "Asia Pacific" },
  { name: "japaneast", displayName: "Japan East", geo: "Asia Pacific" },
];

export interface VmSize {
  name: string;
  family: string;
  vCPUs: number;
  memoryGB: number;
  /** Locations where the size does not exist at all (absent from the list there). */
  notIn?: string[];
}

export const VM_SIZES: VmSize[] = [
  { name: "Standard_B1s", family: "standardBSFamily", vCPUs: 1, memoryGB: 1 },
  { name: "Standard_B2s", family: "standardBSFamily", vCPUs: 2, memoryGB: 4 },
  { name: "Standard_D2s_v3", family: "standardDSv3Family", vCPUs: 2, memoryGB: 8 },
  { name: "Standard_D4s_v3", family: "standardDSv3Family", vCPUs: 4, memoryGB: 16 },
  { name: "Standard_D8s_v3", family: "standardDSv3Family", vCPUs: 8, memoryGB: 32 },
  { name: "Standard_D2ds_v4", family: "standardDDSv4Family", vCPUs: 2, memoryGB: 8 },
  { name: "Standard_D4ds_v4", family: "standardDDSv4Family", vCPUs: 4, memoryGB: 16 },
  { name: "Standard_D2ds_v5", family: "standardDDSv5Family", vCPUs: 2, memoryGB: 8 },
  { name: "Standard_D4ds_v5", family: "standardDDSv5Family", vCPUs: 4, memoryGB: 16 },
  { name: "Standard_D2s_v5", family: "standardDSv5Family", vCPUs: 2, memoryGB: 8 },
  { name: "Standard_D4s_v5", family: "standardDSv5Family", vCPUs: 4, memoryGB: 16 },
  { name: "Standard_D8s_v5", family: "standardDSv5Family", vCPUs: 8, memoryGB: 32 },
  { name: "Standard_D16s_v5", family: "standardDSv5Family", vCPUs: 16, memoryGB: 64 },
  { name: "Standard_D2as_v5", family: "standardDASv5Family", vCPUs: 2, memoryGB: 8 },
  { name: "Standard_D4as_v5", family: "standardDASv5Family", vCPUs: 4, memoryGB: 16 },
  { name: "Standard_E4s_v5", family: "standardESv5Family", vCPUs: 4, memoryGB: 32 },
  { name: "Standard_E8s_v5", family: "standardESv5Family", vCPUs: 8, memoryGB: 64 },
  { name: "Standard_F4s_v2", family: "standardFSv2Family", vCPUs: 4, memoryGB: 8 },
  { name: "Standard_NC4as_T4_v3", family: "standardNCASv3_T4Family", vCPUs: 4, memoryGB: 28, notIn: ["westus3", "swedencentral", "japaneast"] },
];

export function vmSize(name: string): VmSize | undefined {
  return VM_SIZES.find((s) => lc(s.name) === lc(name));
}

/** Sizes made unavailable through the test controls: "size|location" (lower case). */
export class Catalog {
  readonly restricted = new Set<string>();

  clear(): void {
    this.restricted.clear();
  }

  isOffered(size: VmSize, location: string): boolean {
    return !(size.notIn ?? []).includes(lc(location));
  }

  isRestricted(size: string, location: string): boolean {
    return this.restricted.has(`${lc(size)}|${lc(location)}`);
  }

  /** Microsoft.Compute/skus list; supports $filter=location eq 'x'. */
  listSkus(filter?: string): unknown[] {
    const loc = filter ? /location\s+eq\s+'([^']+)'/i.exec(filter)?.[1] : undefined;
    const out: unknown[] = [];
    const locations = loc ? LOCATIONS.filter((l) => l.name === lc(loc)) : LOCATIONS;
    for (const l of locations) {
      for (const s of VM_SIZES) {
        if (!this.isOffered(s, l.name)) continue;
        const restricted = this.isRestricted(s.name, l.name);
        const [tier, ...rest] = s.name.split("_");
        out.push({
          resourceType: "virtualMachines",
          name: s.name,
          tier,
          size: rest.join("_"),
          family: s.family,
          locations: [l.name],
          locationInfo: [{ location: l.name, zones: ["1", "2", "3"], zoneDetails: [] }],
          capabilities: [
            { name: "vCPUs", value: String(s.vCPUs) },
            { name: "vCPUsAvailable", value: String(s.vCPUs) },
            { name: "MemoryGB", value: String(s.memoryGB) },
            { name: "MaxDataDiskCount", value: String(Math.max(4, s.vCPUs * 2)) },
            { name: "PremiumIO", value: "True" },
            { name: "LowPriorityCapable", value: "True" },
            { name: "HyperVGenerations", value: "V1,V2" },
            { name: "CpuArchitectureType", value: "x64" },
            { name: "AcceleratedNetworkingEnabled", value: s.vCPUs >= 2 ? "True" : "False" },
          ],
          restrictions: restricted
            ? [{ type: "Location", values: [l.name], restrictionInfo: { locations: [l.name] }, reasonCode: "NotAvailableForSubscription" }]
            : [],
        });
      }
    }
    return out;
  }
}

/** Marketplace (platform) images: publisher, offer, SKU and their versions, offered in every location. */
export interface PlatformImage {
  publisher: string;
  offer: string;
  sku: string;
  versions: string[];
}

export const PLATFORM_IMAGES: PlatformImage[] = [
  { publisher: "Canonical", offer: "0001-com-ubuntu-server-jammy", sku: "22_04-lts-gen2", versions: ["22.04.202510150", "22.04.202511120"] },
  { publisher: "Canonical", offer: "ubuntu-24_04-lts", sku: "server", versions: ["24.04.202510200", "24.04.202511180"] },
  { publisher: "Debian", offer: "debian-12", sku: "12-gen2", versions: ["0.20251020.2273", "0.20251117.2301"] },
  { publisher: "almalinux", offer: "almalinux-x86_64", sku: "9-gen2", versions: ["9.6.202510150"] },
];

/** The image a reference names (case-insensitive), or undefined; `version` may be "latest". */
export function platformImage(publisher: string, offer: string, sku: string, version: string): { image: PlatformImage; version: string } | undefined {
  const image = PLATFORM_IMAGES.find((i) => lc(i.publisher) === lc(publisher) && lc(i.offer) === lc(offer) && lc(i.sku) === lc(sku));
  if (!image) return undefined;
  if (lc(version) === "latest") return { image, version: image.versions[image.versions.length - 1]! };
  const v = image.versions.find((x) => lc(x) === lc(version));
  return v ? { image, version: v } : undefined;
}
