 
// Microsoft.ManagedIdentity: user-assigned identities (each one a service principal in the
// subscription's tenant) and their federated identity credentials.
import type { Principal } from "../state.js";
import { ArmError, lc } from "../util.js";
import type { Arm, Json, TypeDef } from "./framework.js";
import { normLocation, requireKnownLocation } from "./router.js";

export const UAI_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities";
export const FIC_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials";

function nameOk(name: string): boolean {
  return /^[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}$/.test(name);
}

export function identityTypes(): TypeDef[] {
  const uai: TypeDef = {
    type: UAI_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    listBySubscription: true,
    put(ctx, { id, name, sub, existing, body }) {
      const d = ctx.arm.d;
      if (!nameOk(name)) {
        throw new ArmError(400, "InvalidResourceName", `Resource name '${name}' is invalid. The name can contain only letters, numbers, underscores and hyphens. The name must start with a letter or number and be between 3 and 128 characters long.`);
      }
      if (typeof body.location !== "string") throw new ArmError(400, "LocationRequired", "The location property is required for this definition.");
      const location = normLocation(body.location);
      requireKnownLocation(location, "userAssignedIdentities");
      if (existing) {
        if (normLocation(existing.body.location) !== location) throw new ArmError(400, "InvalidLocation", `The location of an existing identity cannot be changed from '${existing.body.location}' to '${location}'.`);
        return { body: { ...existing.body, tags: body.tags ?? {} } };
      }
      const tenantId = d.dir.subscriptions.get(sub)!.tenantId;
      const principalId = d.ids.guid("principal", id);
      const clientId = d.ids.guid("client", id);
      const b: Json = {
        id,
        name,
        type: UAI_TYPE,
        location,
        tags: body.tags ?? {},
        properties: { isolationScope: "None", tenantId, principalId, clientId },
      };
      return {
        body: b,
        after: () => {
          const p: Principal = {
            oid: principalId,
            appId: clientId,
            tenantId,
            displayName: name,
            kind: "managedIdentity",
            secrets: [],
            federatedCredentials: [],
            createdAtMs: d.now(),
            resourceId: id,
          };
          d.dir.addPrincipal(p);
        },
      };
    },
    onRemoved(arm, res) {
      arm.d.dir.removePrincipal(res.body.properties.principalId);
    },
  };
  const fic: TypeDef = {
    type: FIC_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    put(ctx, { id, name, parent, body }) {
      const p = (body.properties ?? {}) as Json;
      const issuer = typeof p.issuer === "string" ? p.issuer : "";
      const subject = typeof p.subject === "string" ? p.subject : "";
      const audiences: string[] = Array.isArray(p.audiences) ? p.audiences.map(String) : [];
      if (!/^https:\/\//.test(issuer)) throw new ArmError(400, "BadRequest", "The issuer must be a valid https URL.");
      if (!subject) throw new ArmError(400, "BadRequest", "The subject must not be empty.");
      if (audiences.length !== 1) throw new ArmError(400, "BadRequest", "Exactly one audience must be given.");
      const siblings = ctx.arm.children(parent!.key, FIC_TYPE).filter((s) => lc(s.id) !== lc(id));
      if (siblings.some((s) => s.body.properties.issuer === issuer && s.body.properties.subject === subject)) {
        throw new ArmError(409, "Conflict", `A federated identity credential with issuer '${issuer}' and subject '${subject}' already exists on this identity.`);
      }
      if (siblings.length >= 20) throw new ArmError(400, "BadRequest", "An identity can have at most 20 federated identity credentials.");
      return {
        body: { id, name, type: FIC_TYPE, properties: { issuer, subject, audiences } },
        after: (res) => syncFederated(ctx.arm, res.parentKey!),
      };
    },
    onRemoved(arm, res, { viaParent }) {
      if (!viaParent) syncFederated(arm, res.parentKey!);
    },
  };
  return [uai, fic];
}

/** Copies an identity's federated credentials onto its service principal. */
function syncFederated(arm: Arm, identityKey: string): void {
  const ident = arm.resources.get(identityKey);
  if (!ident) return;
  const p = arm.d.dir.principal(ident.body.properties.principalId);
  if (!p) return;
  p.federatedCredentials = arm.children(identityKey, FIC_TYPE).map((c) => ({
    name: c.name,
    issuer: c.body.properties.issuer,
    subject: c.body.properties.subject,
    audiences: c.body.properties.audiences,
  }));
}
