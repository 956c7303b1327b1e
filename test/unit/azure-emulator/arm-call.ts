// Resource Manager calls into an emulator without HTTP, as its admin (for the emulator's unit tests).
import type { RouteInfo } from "../../azure-emulator/arm/router.js";
import type { Emulator } from "../../azure-emulator/emulator.js";
import type { Principal } from "../../azure-emulator/state.js";
import { ArmError } from "../../azure-emulator/util.js";

/** The answer of the emulator's Resource Manager to `method path` with `body`, as its admin (or `as`); an ArmError becomes its status and error body. */
export function armCall(em: Emulator, method: string, path: string, body?: unknown, as?: Principal): { status: number; body?: unknown } {
  const info = em.getInfo();
  const caller = as
    ? { oid: as.oid, appId: as.appId, tid: as.tenantId, aud: "https://management.azure.com", exp: 0 }
    : { oid: info.admin.objectId, appId: info.admin.clientId, tid: info.tenantId, aud: "https://management.azure.com", exp: 0 };
  const route: RouteInfo = { resourceType: "", operation: "" };
  try {
    return em.router.handle({ method, url: new URL(path, "https://127.0.0.1:1"), body: body as Record<string, unknown> | undefined, caller }, route);
  } catch (e) {
    if (e instanceof ArmError) return { status: e.status, body: e.body() };
    throw e;
  }
}
