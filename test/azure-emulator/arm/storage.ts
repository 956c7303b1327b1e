/* eslint-disable @typescript-eslint/no-explicit-any */
// Microsoft.Storage management plane, as far as vmforge uses it: storage accounts (found by name
// with the subscription's resource list) and their blob containers (checked to exist, and used as
// role assignment scopes). The blob data plane itself is Azurite.
import { ArmError, lc } from "../util.js";
import type { TypeDef } from "./framework.js";
import { normLocation, requireKnownLocation } from "./router.js";

export const SA_TYPE = "Microsoft.Storage/storageAccounts";
export const BLOB_SERVICE_TYPE = "Microsoft.Storage/storageAccounts/blobServices";
export const CONTAINER_TYPE = "Microsoft.Storage/storageAccounts/blobServices/containers";

export function storageTypes(): TypeDef[] {
  const account: TypeDef = {
    type: SA_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    listBySubscription: true,
    put(ctx, { id, name, sub, rg, existing, body }) {
      if (!/^[a-z0-9]{3,24}$/.test(name)) {
        throw new ArmError(400, "AccountNameInvalid", `${name} is not a valid storage account name. Storage account name must be between 3 and 24 characters in length and use numbers and lower-case letters only.`);
      }
      if (typeof body.location !== "string") throw new ArmError(400, "LocationRequired", "The location property is required for this definition.");
      const location = normLocation(body.location);
      requireKnownLocation(location, "storageAccounts");
      for (const other of ctx.arm.resources.values()) {
        if (lc(other.type) === lc(SA_TYPE) && lc(other.name) === lc(name) && other.key !== lc(id)) {
          throw new ArmError(409, "StorageAccountAlreadyTaken", `The storage account named ${name} is already taken.`);
        }
      }
      const b = {
        id,
        name,
        type: SA_TYPE,
        location,
        kind: body.kind ?? "StorageV2",
        sku: body.sku ?? { name: "Standard_LRS", tier: "Standard" },
        tags: body.tags ?? existing?.body.tags ?? {},
        properties: { provisioningState: "Succeeded", primaryEndpoints: { blob: `https://${name}.blob.core.windows.net/` } },
      };
      return {
        body: b,
        after: (res) => {
          const svcId = `${res.id}/blobServices/default`;
          if (!ctx.arm.get(svcId)) {
            ctx.arm.put({ id: svcId, key: lc(svcId), type: BLOB_SERVICE_TYPE, name: "default", sub, rg: lc(rg), parentKey: res.key, body: { id: svcId, name: "default", type: BLOB_SERVICE_TYPE, properties: {} }, x: {} });
          }
        },
      };
    },
  };
  const service: TypeDef = {
    type: BLOB_SERVICE_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    put(_ctx, { id, name, existing }) {
      if (name !== "default") throw new ArmError(400, "InvalidResourceName", "The blob service name must be 'default'.");
      return { body: existing?.body ?? { id, name, type: BLOB_SERVICE_TYPE, properties: {} } };
    },
  };
  const container: TypeDef = {
    type: CONTAINER_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    put(_ctx, { id, name, existing, body }) {
      if (!/^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$/.test(name)) {
        throw new ArmError(400, "ContainerNameInvalid", `The container name '${name}' is invalid: 3 to 63 lowercase letters, digits and single hyphens.`);
      }
      const p = (body.properties ?? {}) as any;
      return { body: { id, name, type: CONTAINER_TYPE, properties: { ...(existing?.body.properties ?? {}), publicAccess: p.publicAccess ?? "None" } } };
    },
  };
  return [account, service, container];
}
