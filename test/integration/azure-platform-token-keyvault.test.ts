/**
 * The Seqera Platform token from a Key Vault secret (spec.azure.platformTokenSecretUri) through
 * the OPERATOR on the real kube-apiserver and the VM player: the launcher on the VM gets a token
 * for https://vault.azure.net from the instance metadata endpoint for the CE's identity and reads
 * the secret from the emulator's Key Vault (VMFORGE_KEYVAULT_ENDPOINT), which checks the token
 * and the vault's RBAC as Key Vault does.
 *
 * Without a grant the Run fails BootstrapFailed at step "platform-token" (Key Vault answered 403
 * ForbiddenByRbac, asked again for VMFORGE_KEYVAULT_WAIT); with Key Vault Secrets User on the vault
 * for the CE's identity, granted just before the Run and propagating (as in Azure) only after the
 * launcher was refused and asked again, the Run succeeds and the stand-in nextflow was given TOWER_ACCESS_TOKEN equal to the secret (it
 * records the SHA-256 only). The token appears nowhere: not in the log read back from Log
 * Analytics, the uploaded files, the Run's status or the namespace's Events.
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResourceManagementClient } from "@azure/arm-resources";
import { LogsQueryClient } from "@azure/monitor-query-logs";
import { RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { IDENTITY_NAME, LOG_TABLE, resourceGroupName } from "../../src/cloud/azure/names.js";
import { EventResource } from "../../src/engine/events.js";
import { waitFor } from "../support/operator.js";
import { azureClientOptions, azureControl, azureEndpoint, azureTestCredential, trustAzureEmulator } from "../harness/helpers.js";
import { setupAzureRunsWithCe, type AzureRunsEnv } from "../support/azure-runs.js";
import { startVmPlayer, type PlayingVms } from "../support/azure-player.js";

const CE = "kvtoken";
const VAULT = `vmf-kv-${randomBytes(4).toString("hex")}`;
const SECRET = "tower-token";
// A token-looking value, unique to this run so that finding it anywhere means it leaked.
const TOKEN = `eyJ0b3dlci10b2tlbiI6${randomBytes(18).toString("hex")}`;
const KEYVAULT_WAIT_S = 9;

let env: AzureRunsEnv;
let ce: ComputeEnvironment;
let vms: PlayingVms;
let vault: Awaited<ReturnType<ReturnType<typeof azureControl>["createKeyVault"]>>;

beforeAll(async () => {
  vault = await azureControl().createKeyVault({ resourceGroup: "vmforge-secrets-rg", name: VAULT, secrets: { [SECRET]: TOKEN } });
  ({ env, ce } = await setupAzureRunsWithCe({ prefix: "azkv", principal: "vmforge-kv", blob: true, ce: CE, ceSpec: { platformTokenSecretUri: `https://${VAULT}.vault.azure.net/secrets/${SECRET}` } }));
  // A refused secret is asked again every second for 9 s (the launcher's step below 10 s of waiting).
  vms = startVmPlayer("azkv", { keyVaultEndpoint: vault.endpoint, keyVaultWaitS: KEYVAULT_WAIT_S });
}, 120_000);

afterAll(async () => {
  await vms?.stop();
  await env?.stop();
});

const ended = (name: string): Promise<Run> => env.ended(name, vms.said);

/** The CE's user-assigned identity (vmforge-vm-identity in its resource group): its principal ID. */
async function identityPrincipal(): Promise<string> {
  const rm = new ResourceManagementClient(await azureTestCredential(), env.info.subscriptionId, azureClientOptions());
  const rg = resourceGroupName({ namespace: env.ns, name: CE, uid: ce.metadata.uid! });
  const id = `subscriptions/${env.info.subscriptionId}/resourceGroups/${rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/${IDENTITY_NAME}`;
  const mi = await rm.resources.getById(id, "2023-01-31");
  return String((mi.properties as { principalId: string }).principalId);
}

/** Key Vault's answers to the launcher's secret reads (the emulator's request log). */
async function secretReads(since: number): Promise<{ status: number; caller?: string }[]> {
  return (await azureControl().requests(since)).value.filter((r) => r.path.toLowerCase().startsWith(`/keyvault/${VAULT}/secrets/${SECRET}`)).map((r) => ({ status: r.status, caller: r.caller }));
}

/** Every line of a Run in Log Analytics, read with the operator's principal. */
async function logLines(run: Run): Promise<string[]> {
  trustAzureEmulator();
  const q = new LogsQueryClient(await azureTestCredential({ clientId: env.principal.clientId, clientSecret: env.principal.secret }), { endpoint: `${azureEndpoint()}/loganalytics/v1` });
  const res = await q.queryWorkspace(ce.status!.azure!.workspaceCustomerId!, `${LOG_TABLE} | where RunUid == '${run.metadata.uid!}' | project Line`, { duration: "PT1H" });
  return "tables" in res ? (res.tables[0]?.rows ?? []).map((r) => String(r[0])) : [];
}

function tokenHashSeenBy(run: Run): string | undefined {
  const vm = vms.player.played().find((v) => v.runUid === run.metadata.uid);
  if (!vm) throw new Error(`the player never booted the VM of ${run.metadata.name}`);
  const f = join(vm.root, "sandbox", "tower-access-token.sha256");
  return existsSync(f) ? readFileSync(f, "utf8").trim() : undefined;
}

async function expectNoLeak(run: Run): Promise<void> {
  const lines = await waitFor(`the log of ${run.metadata.name} in Log Analytics`, async () => {
    const l = await logLines(run);
    return l.some((x) => x.startsWith("VMFORGE_EXIT_CODE=")) ? l : undefined;
  }, 60_000, 250);
  expect(lines.some((l) => l.includes(`Key Vault secret https://${VAULT}.vault.azure.net/secrets/${SECRET}`)), lines.join("\n")).toBe(true);
  expect(lines.filter((l) => l.includes(TOKEN))).toEqual([]);
  for (const f of ["launcher.log", "exit-status"]) expect(await env.uploaded(ce, run, f)).not.toContain(TOKEN);
  const now = await env.getRun(run.metadata.name!);
  expect(JSON.stringify(now?.status ?? {})).not.toContain(TOKEN);
  const events = await env.kube.list<{ metadata: { name?: string }; regarding?: { name?: string }; note?: string }>(EventResource, { namespace: env.ns });
  expect(events.items.filter((e) => e.regarding?.name === run.metadata.name).length).toBeGreaterThan(0);
  expect(JSON.stringify(events.items)).not.toContain(TOKEN);
  expect(vms.said.filter((l) => l.includes(TOKEN))).toEqual([]);
}

describe("Azure: the Platform token from Key Vault through the operator and the VM player", () => {
  it("without a grant the Run fails BootstrapFailed at platform-token (403 from Key Vault); with Key Vault Secrets User on the vault, still propagating when the launcher first asks, it asks again and nextflow gets the secret as TOWER_ACCESS_TOKEN; the token is in no log, status or Event", async () => {
    const principalId = await identityPrincipal();

    // (b) The identity may not read the secret: Key Vault refuses, the set-up step fails.
    let since = (await azureControl().requests(0)).lastSeq;
    await env.kube.create(RunResource, env.runBody("denied", CE));
    const denied = await ended("denied");
    expect(denied.status?.phase).toBe("Failed");
    expect(denied.status?.reason, denied.status?.message).toBe("BootstrapFailed");
    expect(denied.status?.message).toContain('step "platform-token"');
    expect(await env.uploaded(ce, denied, "exit-status")).toMatch(/^\d+\nbootstrap-failed=platform-token\n$/);
    const refused = await secretReads(since);
    expect(refused.length).toBeGreaterThan(0);
    expect(refused.every((r) => r.status === 403 && r.caller === principalId), JSON.stringify(refused)).toBe(true);
    expect(tokenHashSeenBy(denied)).toBeUndefined(); // nextflow never started
    await expectNoLeak(denied);

    // (a) Key Vault Secrets User on the vault for the CE's identity, granted now: as in Azure it
    // counts only once propagated, and here that takes longer than one of the launcher's retry
    // steps (it propagates once Key Vault has refused the launcher twice). The launcher asks again
    // on a 403, so the Run succeeds with the token.
    const ctl = azureControl();
    const { roleAssignmentDelayMs } = (await ctl.info()).settings;
    await ctl.settings({ roleAssignmentDelayMs: 3_600_000 });
    await ctl.assignRole({ principalId, scope: vault.id, roleName: "Key Vault Secrets User", propagate: true });
    since = (await ctl.requests(0)).lastSeq;
    await env.kube.create(RunResource, env.runBody("granted", CE));
    const early = await waitFor("Key Vault refusing the launcher twice (or the Run ending)", async () => {
      const reads = await secretReads(since);
      if (reads.filter((r) => r.status === 403).length >= 2) return reads;
      const r = await env.getRun("granted");
      return r?.status?.phase === "Succeeded" || r?.status?.phase === "Failed" ? reads : undefined;
    }, 120_000, 100);
    expect(early.filter((r) => r.status === 403).length, JSON.stringify(early)).toBeGreaterThanOrEqual(2);
    await ctl.settings({ roleAssignmentDelayMs: 0 });
    await ctl.settings({ roleAssignmentDelayMs }); // (in effect now; back to the default for what follows)
    const granted = await ended("granted");
    expect(granted.status?.phase, granted.status?.message).toBe("Succeeded");
    expect(granted.status?.exitCode).toBe(0);
    const reads = await secretReads(since);
    expect(reads.slice(0, -1).every((r) => r.status === 403 && r.caller === principalId), JSON.stringify(reads)).toBe(true);
    expect(reads.at(-1)).toEqual({ status: 200, caller: principalId });
    expect(tokenHashSeenBy(granted)).toBe(createHash("sha256").update(TOKEN).digest("hex"));
    expect(await env.uploaded(ce, granted, "nextflow.log")).not.toContain(TOKEN);
    await expectNoLeak(granted);
  }, 600_000);
});
