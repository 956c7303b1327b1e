/**
 * The VM player of the Azure tests that run launchers for real (test/sandbox/azure/vm-player.ts),
 * set up the one way they need it: a private folder, the launcher's curl trusting the emulator's
 * CA and Azurite's (one bundle) and nothing else, what it says kept in `said`.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inject } from "vitest";
import { azureCaPath, azureControl } from "../harness/helpers.js";
import { AzureVmPlayer, type VmPlayerOptions } from "../sandbox/azure/vm-player.js";

export interface PlayingVms {
  player: AzureVmPlayer;
  /** Every line the player said (its own and the launchers' stderr). */
  said: string[];
  /** Stops the player and removes its folder. */
  stop(): Promise<void>;
}

/** Starts a VM player polling the emulator every 200 ms (unless `over` says otherwise). */
export function startVmPlayer(prefix: string, over: Partial<Omit<VmPlayerOptions, "control" | "caPath" | "dir" | "say">> = {}): PlayingVms {
  const dir = mkdtempSync(join(tmpdir(), `vmforge-${prefix}-`));
  const bundle = join(dir, "ca.pem");
  writeFileSync(bundle, `${readFileSync(azureCaPath(), "utf8")}\n${readFileSync(inject("azuriteCaPath"), "utf8")}`);
  const said: string[] = [];
  const player = new AzureVmPlayer({ control: azureControl(), caPath: bundle, dir: join(dir, "vms"), pollMs: 200, say: (l) => said.push(l), ...over });
  player.start();
  return {
    player,
    said,
    async stop() {
      await player.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
