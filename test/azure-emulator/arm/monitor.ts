 
// Azure Monitor resources: Log Analytics workspaces (customerId, soft delete) and their tables,
// data collection endpoints and data collection rules (validated like Azure validates them).
import { ArmError, isObject, lc } from "../util.js";
import type { Arm, Json, Stored, TypeDef } from "./framework.js";
import { normLocation, requireKnownLocation } from "./router.js";

export const WS_TYPE = "Microsoft.OperationalInsights/workspaces";
export const TABLE_TYPE = "Microsoft.OperationalInsights/workspaces/tables";
export const DCE_TYPE = "Microsoft.Insights/dataCollectionEndpoints";
export const DCR_TYPE = "Microsoft.Insights/dataCollectionRules";

const TABLE_COLUMN_TYPES = ["string", "int", "long", "real", "boolean", "datetime", "guid", "dynamic"];
const STREAM_COLUMN_TYPES = ["string", "int", "long", "real", "boolean", "datetime", "dynamic"];
const RESERVED_COLUMNS = ["tenantid", "_resourceid", "type", "_itemid", "_billedsize", "_isbillable", "sourcesystem", "mg", "managementgroupname", "computer", "rawdata"];
const SKUS = ["Free", "Standard", "Premium", "PerNode", "PerGB2018", "Standalone", "CapacityReservation", "LACluster"];

export interface MonitorDeps {
  /** Called when a workspace is deleted permanently (its data go too). */
  onWorkspacePurged: (workspaceId: string) => void;
}

interface SoftDeleted {
  ws: Stored;
  tables: Stored[];
  deletedAt: number;
}

/** Soft-deleted workspaces by `${sub}|${lower name}` (names stay taken in the subscription). */
export class WorkspaceGraveyard {
  readonly entries = new Map<string, SoftDeleted>();
  clear(): void {
    this.entries.clear();
  }
}

function etag(arm: Arm, id: string): string {
  return `"${arm.d.ids.hex("etag", id, 8)}-0000-0100-0000-${arm.d.ids.hex("etag2", id, 12)}"`;
}

function payloadError(details: { code: string; message: string; target?: string }[]): ArmError {
  return new ArmError(400, "InvalidPayload", "Data collection rule is invalid", { details });
}

export function monitorTypes(deps: MonitorDeps, graveyard: WorkspaceGraveyard): TypeDef[] {
  const ws: TypeDef = {
    type: WS_TYPE,
    putMode: "body",
    deleteMode: "sync",
    inResourceGroup: true,
    listBySubscription: true,
    creatingState: "Creating",
    put(ctx, { id, name, sub, rg, existing, body }) {
      const arm = ctx.arm;
      if (!/^[A-Za-z0-9][A-Za-z0-9-]{2,61}[A-Za-z0-9]$/.test(name)) {
        throw new ArmError(400, "InvalidParameter", `The workspace name '${name}' is invalid: it must be 4 to 63 characters of letters, digits and '-', starting and ending with a letter or digit.`, { target: "name" });
      }
      const location = normLocation(String(body.location));
      requireKnownLocation(location, "workspaces");
      const p = (isObject(body.properties) ? body.properties : {}) as Json;
      const skuName = p.sku?.name ?? "PerGB2018";
      const sku = SKUS.find((s) => lc(s) === lc(String(skuName)));
      if (!sku) throw new ArmError(400, "InvalidParameter", `The SKU '${skuName}' is not valid. Valid values: ${SKUS.join(", ")}.`, { target: "properties.sku.name" });
      const retention = p.retentionInDays ?? 30;
      if (typeof retention !== "number" || retention < 30 || retention > 730) {
        throw new ArmError(400, "InvalidParameter", `Retention of ${retention} days is not valid: it must be between 30 and 730 days.`, { target: "properties.retentionInDays" });
      }
      const now = new Date(ctx.now).toISOString();
      if (!existing) {
        const grave = graveyard.entries.get(`${sub}|${lc(name)}`);
        if (grave) {
          const sameRg = grave.ws.rg === rg;
          if (!sameRg || normLocation(grave.ws.body.location) !== location) {
            throw new ArmError(
              409,
              "Conflict",
              `The workspace name '${name}' is in use by a workspace in soft-deleted state (resource group '${grave.ws.id.split("/")[4]}', location '${grave.ws.body.location}'). Recover it by creating it again with the same name, resource group and location, or delete it permanently (force=true) before reusing the name.`,
            );
          }
          // Re-creating the workspace where it was recovers it, with its customerId, tables and data.
          graveyard.entries.delete(`${sub}|${lc(name)}`);
          const b = { ...grave.ws.body, tags: body.tags ?? grave.ws.body.tags, properties: { ...grave.ws.body.properties, sku: { name: sku, lastSkuUpdate: grave.ws.body.properties.sku.lastSkuUpdate }, retentionInDays: retention, modifiedDate: now } };
          return {
            body: b,
            after: () => {
              for (const t of grave.tables) arm.put(t);
            },
          };
        }
      }
      if (existing && normLocation(existing.body.location) !== location) {
        throw new ArmError(400, "InvalidParameter", `The location of workspace '${name}' cannot be changed from '${existing.body.location}' to '${location}'.`, { target: "location" });
      }
      const props: Json = {
        provisioningState: "Succeeded",
        customerId: existing?.body.properties.customerId ?? arm.d.ids.guid("customer-id", id),
        sku: { name: sku, lastSkuUpdate: existing?.body.properties.sku.lastSkuUpdate ?? now },
        retentionInDays: retention,
        features: { legacy: 0, searchVersion: 1, enableLogAccessUsingOnlyResourcePermissions: p.features?.enableLogAccessUsingOnlyResourcePermissions ?? true },
        workspaceCapping: { dailyQuotaGb: p.workspaceCapping?.dailyQuotaGb ?? -1, quotaNextResetTime: now, dataIngestionStatus: "RespectQuota" },
        publicNetworkAccessForIngestion: p.publicNetworkAccessForIngestion ?? "Enabled",
        publicNetworkAccessForQuery: p.publicNetworkAccessForQuery ?? "Enabled",
        createdDate: existing?.body.properties.createdDate ?? now,
        modifiedDate: now,
      };
      return { body: { id, name, type: WS_TYPE, location, tags: body.tags ?? {}, etag: etag(arm, id), properties: props } };
    },
    beforeDelete(ctx, res) {
      res.x.force = lc(ctx.query.get("force") ?? "") === "true";
    },
    deleteMissing(ctx, { sub, rg, name }) {
      if (lc(ctx.query.get("force") ?? "") !== "true") return false;
      const k = `${sub}|${lc(name)}`;
      const g = graveyard.entries.get(k);
      if (!g || g.ws.rg !== lc(rg)) return false;
      graveyard.entries.delete(k);
      deps.onWorkspacePurged(g.ws.id);
      return true;
    },
    onRemoved(arm, res) {
      const tables: Stored[] = res.x.removedTables ?? [];
      delete res.x.removedTables;
      if (res.x.force) {
        deps.onWorkspacePurged(res.id);
        return;
      }
      // Soft delete: the name stays taken; the workspace can be recovered for 14 days.
      graveyard.entries.set(`${res.sub}|${lc(res.name)}`, { ws: res, tables, deletedAt: arm.d.now() });
    },
  };

  const table: TypeDef = {
    type: TABLE_TYPE,
    putMode: "async",
    deleteMode: "async",
    inResourceGroup: true,
    creatingState: "Updating",
    put(ctx, { id, name, existing, body }) {
      const p = (isObject(body.properties) ? body.properties : {}) as Json;
      if (!name.endsWith("_CL")) {
        throw new ArmError(400, "InvalidParameter", `Table name '${name}' is not valid: custom tables must end with '_CL' (other tables are not emulated).`);
      }
      if (!/^[A-Za-z][A-Za-z0-9_]{0,59}_CL$/.test(name)) throw new ArmError(400, "InvalidParameter", `Table name '${name}' is not valid.`);
      const schema = (p.schema ?? {}) as Json;
      if (schema.name !== undefined && schema.name !== name) throw new ArmError(400, "InvalidParameter", `Schema name '${schema.name}' does not match the table name '${name}'.`);
      const columns: Json[] = Array.isArray(schema.columns) ? schema.columns : [];
      if (columns.length === 0) throw new ArmError(400, "InvalidParameter", `Table '${name}' must have at least one column.`);
      const seen = new Set<string>();
      for (const c of columns) {
        const cn = String(c.name ?? "");
        if (!/^[A-Za-z_][A-Za-z0-9_]{0,44}$/.test(cn)) throw new ArmError(400, "InvalidParameter", `Column name '${cn}' of table '${name}' is not valid.`);
        if (seen.has(lc(cn))) throw new ArmError(400, "InvalidParameter", `Column '${cn}' appears more than once in table '${name}'.`);
        seen.add(lc(cn));
        if (RESERVED_COLUMNS.includes(lc(cn))) throw new ArmError(400, "InvalidParameter", `Column name '${cn}' is reserved and cannot be used in custom table '${name}'.`);
        if (!TABLE_COLUMN_TYPES.includes(lc(String(c.type ?? "")))) {
          throw new ArmError(400, "InvalidParameter", `Column '${cn}' of table '${name}' has an invalid type '${c.type}'. Valid types: string, int, long, real, boolean, dateTime, guid, dynamic.`);
        }
      }
      const tg = columns.find((c) => c.name === "TimeGenerated");
      if (!tg || lc(String(tg.type)) !== "datetime") {
        throw new ArmError(400, "InvalidParameter", `Table '${name}' must contain a 'TimeGenerated' column of type 'dateTime'.`);
      }
      if (existing) {
        // Azure lets columns be added, not removed or retyped.
        for (const old of existing.body.properties.schema.columns as Json[]) {
          const now = columns.find((c) => c.name === old.name);
          if (!now) throw new ArmError(400, "InvalidParameter", `Column '${old.name}' cannot be removed from table '${name}'.`);
          if (lc(String(now.type)) !== lc(String(old.type))) throw new ArmError(400, "InvalidParameter", `The type of column '${old.name}' of table '${name}' cannot be changed.`);
        }
      }
      // Azure's limits for a table on the Analytics plan: interactive 4..730 days, total up to
      // 4383 and not below the interactive retention; -1 (or absent) means the workspace default.
      const retention = p.retentionInDays ?? -1;
      const total = p.totalRetentionInDays ?? -1;
      if (typeof retention !== "number" || (retention !== -1 && (!Number.isInteger(retention) || retention < 4 || retention > 730))) {
        throw new ArmError(400, "InvalidParameter", `Table '${name}': retentionInDays ${JSON.stringify(retention)} is not valid: it must be between 4 and 730 days, or -1 for the workspace default.`, { target: "properties.retentionInDays" });
      }
      if (typeof total !== "number" || (total !== -1 && (!Number.isInteger(total) || total < 4 || total > 4383))) {
        throw new ArmError(400, "InvalidParameter", `Table '${name}': totalRetentionInDays ${JSON.stringify(total)} is not valid: it must be between 4 and 4383 days, or -1 for the default.`, { target: "properties.totalRetentionInDays" });
      }
      if (total !== -1 && total < (retention === -1 ? 30 : retention)) {
        throw new ArmError(400, "InvalidParameter", `Table '${name}': totalRetentionInDays (${total}) must not be less than retentionInDays (${retention === -1 ? 30 : retention}).`, { target: "properties.totalRetentionInDays" });
      }
      return {
        body: {
          id,
          name,
          type: TABLE_TYPE,
          properties: {
            totalRetentionInDays: total === -1 ? 30 : total,
            archiveRetentionInDays: 0,
            plan: p.plan ?? "Analytics",
            lastPlanModifiedDate: new Date(ctx.now).toISOString(),
            retentionInDaysAsDefault: retention === -1,
            totalRetentionInDaysAsDefault: total === -1,
            provisioningState: "Succeeded",
            retentionInDays: retention === -1 ? 30 : retention,
            schema: {
              name,
              tableType: "CustomLog",
              tableSubType: "DataCollectionRuleBased",
              columns: columns.map((c) => ({ name: c.name, type: c.type, ...(c.description ? { description: c.description } : {}), isDefaultDisplay: false, isHidden: false })),
              standardColumns: [{ name: "TenantId", type: "guid", isDefaultDisplay: false, isHidden: false }],
              solutions: ["LogManagement"],
              isTroubleshootingAllowed: true,
              source: "customer",
            },
          },
        },
      };
    },
    onRemoved(arm, res, { viaParent }) {
      if (viaParent) {
        const parent = arm.resources.get(res.parentKey!);
        if (parent) (parent.x.removedTables ??= []).push(res);
      }
    },
  };

  const dce: TypeDef = {
    type: DCE_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    listBySubscription: true,
    put(ctx, { id, name, existing, body }) {
      const arm = ctx.arm;
      if (typeof body.location !== "string") throw new ArmError(400, "LocationRequired", "The location property is required for this definition.");
      const location = normLocation(body.location);
      requireKnownLocation(location, "dataCollectionEndpoints");
      if (!/^[A-Za-z0-9][A-Za-z0-9-]{1,42}[A-Za-z0-9]$/.test(name)) throw new ArmError(400, "InvalidPayload", `The data collection endpoint name '${name}' is invalid: 3 to 44 characters of letters, digits and '-'.`);
      if (existing && normLocation(existing.body.location) !== location) throw new ArmError(400, "InvalidPayload", "The location of a data collection endpoint cannot be changed.");
      const p = (isObject(body.properties) ? body.properties : {}) as Json;
      const base = arm.d.baseUrl();
      const props: Json = {
        immutableId: existing?.body.properties.immutableId ?? `dce-${arm.d.ids.hex("dce-immutable", id, 32)}`,
        configurationAccess: { endpoint: `${base}/dce/${lc(name)}/config` },
        logsIngestion: { endpoint: `${base}/dce/${lc(name)}` },
        metricsIngestion: { endpoint: `${base}/dce/${lc(name)}/metrics` },
        networkAcls: { publicNetworkAccess: p.networkAcls?.publicNetworkAccess ?? "Enabled" },
        provisioningState: "Succeeded",
      };
      if (p.description) props.description = p.description;
      const b: Json = { id, name, type: DCE_TYPE, location, tags: body.tags ?? {}, etag: etag(arm, id), properties: props };
      if (body.kind) b.kind = body.kind;
      return { body: b };
    },
  };

  const dcr: TypeDef = {
    type: DCR_TYPE,
    putMode: "sync",
    deleteMode: "sync",
    inResourceGroup: true,
    listBySubscription: true,
    put(ctx, { id, name, existing, body }) {
      const arm = ctx.arm;
      if (typeof body.location !== "string") throw new ArmError(400, "LocationRequired", "The location property is required for this definition.");
      const location = normLocation(body.location);
      requireKnownLocation(location, "dataCollectionRules");
      const p = (isObject(body.properties) ? body.properties : {}) as Json;
      const errors: { code: string; message: string; target?: string }[] = [];
      const err = (code: string, message: string, target?: string): void => {
        errors.push({ code, message, ...(target ? { target } : {}) });
      };
      if (p.dataCollectionEndpointId !== undefined) {
        const dceRes = arm.get(String(p.dataCollectionEndpointId));
        if (!dceRes || lc(dceRes.type) !== lc(DCE_TYPE)) err("InvalidDataCollectionEndpoint", `Data collection endpoint '${p.dataCollectionEndpointId}' was not found.`, "properties.dataCollectionEndpointId");
        else if (normLocation(dceRes.body.location) !== location) {
          err("InvalidDataCollectionEndpoint", `Data collection endpoint '${dceRes.id}' is in location '${dceRes.body.location}'; it must be in the rule's location '${location}'.`, "properties.dataCollectionEndpointId");
        }
      }
      const decls = (isObject(p.streamDeclarations) ? p.streamDeclarations : {}) as Json;
      for (const [stream, decl] of Object.entries(decls)) {
        if (!stream.startsWith("Custom-")) err("InvalidStreamName", `Stream declaration '${stream}' is invalid: declared stream names must start with 'Custom-'.`, `properties.streamDeclarations.${stream}`);
        const cols: Json[] = Array.isArray((decl as Json)?.columns) ? (decl as Json).columns : [];
        if (cols.length === 0) err("InvalidStreamDeclaration", `Stream declaration '${stream}' must have at least one column.`, `properties.streamDeclarations.${stream}`);
        const seen = new Set<string>();
        for (const c of cols) {
          const cn = String(c.name ?? "");
          if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(cn)) err("InvalidColumnName", `Column name '${cn}' of stream '${stream}' is invalid.`, `properties.streamDeclarations.${stream}`);
          if (seen.has(lc(cn))) err("DuplicateColumnName", `Column '${cn}' appears more than once in stream '${stream}'.`, `properties.streamDeclarations.${stream}`);
          seen.add(lc(cn));
          if (!STREAM_COLUMN_TYPES.includes(lc(String(c.type ?? "")))) {
            err("InvalidColumnType", `Column '${cn}' of stream '${stream}' has an invalid type '${c.type}'. Valid types: string, int, long, real, boolean, datetime, dynamic.`, `properties.streamDeclarations.${stream}`);
          }
        }
      }
      const destinations = (isObject(p.destinations) ? p.destinations : {}) as Json;
      const la: Json[] = Array.isArray(destinations.logAnalytics) ? destinations.logAnalytics : [];
      const destNames = new Map<string, Stored | undefined>();
      for (const [i, d] of la.entries()) {
        const dn = String(d.name ?? "");
        if (!dn) err("InvalidDestination", "Every destination needs a name.", `properties.destinations.logAnalytics[${i}]`);
        if (destNames.has(dn)) err("DuplicateDestinationName", `Destination name '${dn}' is used more than once.`, `properties.destinations.logAnalytics[${i}]`);
        const w = arm.get(String(d.workspaceResourceId ?? ""));
        if (!w || lc(w.type) !== lc(WS_TYPE)) err("InvalidWorkspace", `Log Analytics workspace '${d.workspaceResourceId}' of destination '${dn}' was not found.`, `properties.destinations.logAnalytics[${i}].workspaceResourceId`);
        destNames.set(dn, w);
      }
      for (const k of Object.keys(destinations)) {
        if (k !== "logAnalytics") err("UnsupportedDestination", `Destination kind '${k}' is not emulated.`, `properties.destinations.${k}`);
      }
      if (destNames.size === 0) err("MissingDestinations", "At least one destination must be specified.", "properties.destinations");
      const flows: Json[] = Array.isArray(p.dataFlows) ? p.dataFlows : [];
      if (flows.length === 0) err("MissingDataFlows", "At least one data flow must be specified.", "properties.dataFlows");
      const outLa: Json[] = [];
      for (const [i, f] of flows.entries()) {
        const target = `properties.dataFlows[${i}]`;
        const streams: string[] = Array.isArray(f.streams) ? f.streams.map(String) : [];
        const dests: string[] = Array.isArray(f.destinations) ? f.destinations.map(String) : [];
        if (streams.length === 0) err("InvalidDataFlow", "A data flow must have at least one stream.", target);
        if (dests.length === 0) err("InvalidDataFlow", "A data flow must have at least one destination.", target);
        for (const s of streams) {
          if (s.startsWith("Custom-") && !(s in decls)) err("InvalidDataFlow", `Stream '${s}' used in a data flow is not declared in streamDeclarations.`, target);
          if (!s.startsWith("Custom-") && !s.startsWith("Microsoft-")) err("InvalidDataFlow", `Stream '${s}' is not a known stream.`, target);
        }
        for (const d of dests) if (!destNames.has(d)) err("InvalidDataFlow", `Destination '${d}' used in a data flow is not defined in destinations.`, target);
        const output = f.outputStream ?? (streams.length === 1 ? streams[0] : undefined);
        if (streams.length > 1 && f.outputStream === undefined && streams.some((s) => s.startsWith("Custom-"))) {
          err("InvalidOutputStream", "A data flow with several custom streams must name its outputStream.", target);
        }
        if (typeof output === "string" && output.startsWith("Custom-")) {
          const tableName = output.slice("Custom-".length);
          for (const d of dests) {
            const w = destNames.get(d);
            if (!w) continue;
            if (!tableName.endsWith("_CL") || !arm.get(`${w.id}/tables/${tableName}`)) {
              err("InvalidOutputTable", `Table for output stream '${output}' is not available for destination '${d}'.`, target);
            }
          }
        } else if (typeof output === "string" && !output.startsWith("Microsoft-")) {
          err("InvalidOutputStream", `Output stream '${output}' is invalid: it must be 'Custom-<table>_CL' or 'Microsoft-<table>'.`, target);
        }
        if (f.transformKql !== undefined && typeof f.transformKql !== "string") err("InvalidTransformQuery", "transformKql must be a string.", target);
        outLa.push(f);
      }
      if (errors.length) throw payloadError(errors);
      const props: Json = {
        immutableId: existing?.body.properties.immutableId ?? `dcr-${arm.d.ids.hex("dcr-immutable", id, 32)}`,
        streamDeclarations: decls,
        destinations: { logAnalytics: la.map((d) => ({ workspaceResourceId: d.workspaceResourceId, workspaceId: destNames.get(String(d.name))?.body.properties.customerId, name: d.name })) },
        dataFlows: flows,
        provisioningState: "Succeeded",
      };
      if (p.dataCollectionEndpointId !== undefined) props.dataCollectionEndpointId = p.dataCollectionEndpointId;
      if (p.description) props.description = p.description;
      const b: Json = { id, name, type: DCR_TYPE, location, tags: body.tags ?? {}, etag: etag(arm, id), properties: props };
      if (body.kind) b.kind = body.kind;
      return { body: b };
    },
  };
  return [ws, table, dce, dcr];
}

