// Resource Manager calls into an emulator without HTTP, as its admin (for the emulator's unit tests).
import type { RouteInfo } from "../../azure-emulator/arm/router.js";
import type { Emulator } from "../../azure-emulator/emulator.js";
import { ArmError } from "../../azure-emulator/util.js";

/** The answer of the emulator's Resource Manager to `method path` with `body`, as its admin; an ArmError becomes its status and error body. */
export function armCall(em: Emulator, method: string, path: string, body?: unknown): { status: number; body?: unknown } {
  const info = em.getInfo();
  const caller = { oid: info.admin.objectId, appId: info.admin.clientId, tid: info.tenantId, aud: "https://management.azure.com", exp: 0 };
  const route: RouteInfo = { resourceType: "", operation: "" };
  try {
    return em.router.handle({ method, url: new URL(path, "https://127.0.0.1:1"), body: body as Record<string, unknown> | undefined, caller }, route);
  } catch (e) {
    if (e instanceof ArmError) return { status: e.status, body: e.body() };
    throw e;
  }
}
