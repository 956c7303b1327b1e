// Microsoft.KeyVault management plane: vaults (RBAC or access-policy permission model) and
// secrets written through Resource Manager (`vaults/secrets` PUT: a new version each time, the
// value never returned). The secrets data plane (what a VM reads) is ../keyvault.ts.
import { ArmError, lc } from "../util.js";
import type { Json, Stored, TypeDef } from "./framework.js";
import { normLocation, requireKnownLocation } from "./router.js";

export const VAULT_TYPE = "Microsoft.KeyVault/vaults";
export const VAULT_SECRET_TYPE = "Microsoft.KeyVault/vaults/secrets";

/** One version of a secret as the data plane serves it. */
export interface SecretVersion {
  version: string;
  value: string;
  contentType?: string;
  enabled: boolean;
  /** Unix seconds. */
  created: number;
  updated: number;
  nbf?: number;
  exp?: number;
  tags: Record<string, string>;
}

/** The public vault URI (`https://<name>.vault.azure.net/`): what secret IDs are written with. */
export function vaultUri(name: string): string {
  return `https://${lc(name)}.vault.azure.net/`;
}

/** A vault by its (globally unique) name. */
export function findVault(resources: Iterable<Stored>, name: string): Stored | undefined {
  const n = lc(name);
  for (const r of resources) if (lc(r.type) === lc(VAULT_TYPE) && lc(r.name) === n) return r;
  return undefined;
}

/** The versions of a stored secret, oldest first. */
export function secretVersions(res: Stored | undefined): SecretVersion[] {
  return (res?.x.versions as SecretVersion[] | undefined) ?? [];
}

function vaultNameOk(name: string): boolean {
  return /^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$/.test(name) && !name.includes("--");
}

/** Key Vault's `enableRbacAuthorization` default: true from API version 2026-02-01 on, false before. */
function rbacDefault(apiVersion: string): boolean {
  return apiVersion.slice(0, 10) >= "2026-02-01";
}

export function keyVaultTypes(): TypeDef[] {
  const vault: TypeDef = {
    type: VAULT_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    listBySubscription: true,
    put(ctx, { id, name, existing, body }) {
      const d = ctx.arm.d;
      if (!vaultNameOk(name)) {
        throw new ArmError(
          400,
          "VaultNameNotValid",
          `The vault name '${name}' is invalid. A vault's name must be between 3-24 alphanumeric characters. The name must begin with a letter, end with a letter or digit, and not contain consecutive hyphens.`,
        );
      }
      if (typeof body.location !== "string") throw new ArmError(400, "LocationRequired", "The location property is required for this definition.");
      const location = normLocation(body.location);
      requireKnownLocation(location, "vaults");
      const p = (body.properties ?? {}) as Json;
      if (typeof p.tenantId !== "string" || !p.tenantId) throw new ArmError(400, "BadRequest", "The parameter properties.tenantId is required.");
      if (!d.dir.tenants.has(lc(p.tenantId))) throw new ArmError(400, "BadRequest", `The tenant '${p.tenantId}' is not a valid Azure Active Directory tenant.`);
      const sku = p.sku as Json | undefined;
      if (!sku || typeof sku.name !== "string" || !["standard", "premium"].includes(lc(sku.name))) {
        throw new ArmError(400, "BadRequest", "The parameter properties.sku is required: { family: 'A', name: 'standard' | 'premium' }.");
      }
      const other = findVault(ctx.arm.resources.values(), name);
      if (other && other.key !== lc(id)) {
        throw new ArmError(409, "VaultAlreadyExists", `The vault name '${name}' is already in use. Vault names are globally unique so it is possible that the name is already taken.`);
      }
      if (existing && normLocation(existing.body.location) !== location) {
        throw new ArmError(400, "BadRequest", `The location of an existing vault cannot be changed from '${existing.body.location}' to '${location}'.`);
      }
      const policies = Array.isArray(p.accessPolicies) ? p.accessPolicies : (existing?.body.properties.accessPolicies ?? []);
      for (const ap of policies) {
        if (!ap || typeof ap.tenantId !== "string" || typeof ap.objectId !== "string" || typeof ap.permissions !== "object") {
          throw new ArmError(400, "BadRequest", "An access policy needs tenantId, objectId and permissions.");
        }
      }
      const rbac = typeof p.enableRbacAuthorization === "boolean" ? p.enableRbacAuthorization : (existing?.body.properties.enableRbacAuthorization ?? rbacDefault(ctx.apiVersion));
      return {
        body: {
          id,
          name,
          type: VAULT_TYPE,
          location,
          tags: body.tags ?? existing?.body.tags ?? {},
          properties: {
            sku: { family: "A", name: lc(sku.name) },
            tenantId: lc(p.tenantId),
            accessPolicies: policies,
            enableRbacAuthorization: rbac,
            enableSoftDelete: true,
            softDeleteRetentionInDays: 90,
            vaultUri: vaultUri(name),
            publicNetworkAccess: "Enabled",
            provisioningState: "Succeeded",
          },
        },
        x: existing?.x ?? {},
      };
    },
  };
  const secret: TypeDef = {
    type: VAULT_SECRET_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    put(ctx, { id, name, parent, existing, body }) {
      if (!/^[a-zA-Z0-9-]{1,127}$/.test(name)) {
        throw new ArmError(400, "BadRequest", `The secret name '${name}' is invalid: 1-127 letters, digits and hyphens.`);
      }
      const p = (body.properties ?? {}) as Json;
      if (typeof p.value !== "string") throw new ArmError(400, "BadRequest", "The parameter properties.value is required.");
      const now = Math.floor(ctx.now / 1000);
      const a = (p.attributes ?? {}) as Json;
      const versions = [...secretVersions(existing)];
      const version = ctx.arm.d.ids.hex("secret-version", `${id}|${versions.length}`, 32);
      versions.push({
        version,
        value: p.value,
        contentType: typeof p.contentType === "string" ? p.contentType : undefined,
        enabled: a.enabled !== false,
        created: now,
        updated: now,
        nbf: typeof a.nbf === "number" ? a.nbf : undefined,
        exp: typeof a.exp === "number" ? a.exp : undefined,
        tags: body.tags ?? {},
      });
      const uri = `${vaultUri(parent!.name)}secrets/${name}`;
      const latest = versions[versions.length - 1]!;
      return {
        body: {
          id,
          name,
          type: VAULT_SECRET_TYPE,
          location: parent!.body.location,
          tags: latest.tags,
          properties: {
            ...(latest.contentType ? { contentType: latest.contentType } : {}),
            attributes: { enabled: latest.enabled, created: latest.created, updated: latest.updated, ...(latest.nbf ? { nbf: latest.nbf } : {}), ...(latest.exp ? { exp: latest.exp } : {}) },
            secretUri: uri,
            secretUriWithVersion: `${uri}/${version}`,
          },
        },
        x: { versions },
      };
    },
  };
  return [vault, secret];
}

/** Secret versions of a stored secret resource by version ID (case-insensitive). */
export function secretVersion(res: Stored, version: string | undefined): SecretVersion | undefined {
  const vs = secretVersions(res);
  if (version === undefined) return vs[vs.length - 1];
  return vs.find((v) => lc(v.version) === lc(version));
}

