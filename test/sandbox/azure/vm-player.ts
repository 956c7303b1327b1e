/**
 * Plays the Azure VMs the operator creates in the Azure emulator (which records VMs but boots
 * nothing): for each new vmforge VM that Azure reports running, it runs the VM's customData with
 * bash, unprivileged, under a private root folder — as cloud-init would on the VM. That bootstrap
 * reads the launcher (userData) from the VM's instance metadata endpoint and runs it, as on Azure,
 * where cloud-init never sees userData.
 *
 * Only what a VM image provides is stood in for (./standins, then ../standins): `nextflow` prints
 * the hello pipeline's log and exits with the chosen code (and leaves in the VM's sandbox folder
 * the SHA-256 of the TOWER_ACCESS_TOKEN it was given, never the token), `docker` is "running", `shutdown` tells
 * the emulator the VM's OS shut down (power state stopped; the VM stays, and would keep costing,
 * until it is deleted — as on Azure). Everything else is the launcher's own work against the
 * emulator, for real: its `curl` gets tokens from the VM's instance metadata endpoint (the
 * emulator's, one per VM), ships the log through the Logs Ingestion API on the data collection
 * endpoint, reads the Platform token from the emulator's Key Vault (keyVaultEndpoint), and uploads
 * to the work directory in Azurite, trusting the harness CA through CURL_CA_BUNDLE.
 *
 * Like Azure: a VM deleted, deallocated or evicted while its launcher runs loses it at once (the
 * launcher's process group is killed); a VM is booted once, never again.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { AzureEmulatorControl, EmulatedVm } from "../../azure-emulator/control.js";

const AZURE_STANDINS = fileURLToPath(new URL("./standins/", import.meta.url));
const SHARED_STANDINS = fileURLToPath(new URL("../standins/", import.meta.url));
const REPO = fileURLToPath(new URL("../../../", import.meta.url));

/** The tags the operator puts on a Run's VM (src/cloud/azure/names.ts). */
const TAG_RUN_UID = "vmforge-run-uid";
const TAG_RUN_NAME = "vmforge-run-name";

export interface VmPlayerOptions {
  /** The emulator's test controls: lists VMs with their userData, sets power states. */
  control: AzureEmulatorControl;
  /** PEM file of the CA the emulator and Azurite serve with (trusted by the launcher's curl). */
  caPath: string;
  /** Folder under which each VM gets its private root folder. */
  dir: string;
  /** Exit code the stand-in nextflow ends with (default 0). */
  pipelineExitCode?: number;
  /** Seconds the stand-in nextflow runs before it prints its log (default 0). */
  pipelineSeconds?: number;
  /**
   * Per Run (by the VM's vmforge-run-name tag): the exit code, or undefined to leave the VM alone
   * (it stays running, and its launcher never runs). Overrides pipelineExitCode.
   */
  exitCodeFor?: (runName: string, vm: EmulatedVm) => number | undefined;
  /**
   * Where the launcher reads Key Vault secrets (VMFORGE_KEYVAULT_ENDPOINT: replaces
   * https://<vault>.vault.azure.net in spec.azure.platformTokenSecretUri), e.g. the emulator's
   * `<endpoint>/keyvault/<vault>`. Unset: the launcher uses the URI as it is.
   */
  keyVaultEndpoint?: string;
  /** Seconds the launcher asks Key Vault again after a 403 (VMFORGE_KEYVAULT_WAIT; default 3, not a real VM's 10 minutes). */
  keyVaultWaitS?: number;
  /** How often the emulator is asked for VMs (default 500 ms). */
  pollMs?: number;
  say: (line: string) => void;
}

/** What the player did with one VM. */
export interface PlayedVm {
  id: string;
  runName: string;
  runUid: string;
  /** Exit code of the launcher (undefined while it runs, null when it was killed). */
  launcherExit?: number | null;
  /** Why the launcher was killed, when it was (the VM was deleted, deallocated or evicted). */
  killedBecause?: string;
  /** The VM's private root folder (its /var/lib/vmforge holds the launcher's files). */
  root: string;
}

interface Playing extends PlayedVm {
  child?: ChildProcess;
  poweredOff?: boolean;
  exited?: Promise<void>;
}

export class AzureVmPlayer {
  private readonly vms = new Map<string, Playing>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private polling: Promise<void> | undefined;

  constructor(private readonly o: VmPlayerOptions) {}

  start(): void {
    const tick = (): void => {
      if (this.stopped) return;
      this.polling = this.poll()
        .catch((e: unknown) => this.o.say(`VM player: ${e instanceof Error ? e.message : String(e)}`))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.o.pollMs ?? 500);
        });
    };
    tick();
  }

  /** Stops polling and kills every launcher still running. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.polling;
    await Promise.all([...this.vms.values()].map((v) => this.kill(v, "the player stopped")));
  }

  /** Every VM the player booted (or chose to leave alone), by resource ID. */
  played(): PlayedVm[] {
    return [...this.vms.values()].map(({ child: _c, exited: _e, poweredOff: _p, ...rest }) => ({ ...rest }));
  }

  private async poll(): Promise<void> {
    const list = await this.o.control.listVms();
    const present = new Map(list.map((vm) => [vm.id.toLowerCase(), vm]));
    // A VM that went away (or lost its power) while its launcher runs: the machine is gone.
    for (const [key, v] of this.vms) {
      if (!v.child || v.launcherExit !== undefined) continue;
      const vm = present.get(key);
      if (vm?.powerState === "stopped") v.poweredOff = true;
      if (!vm && v.poweredOff) this.killGroup(v.child); // its OS had shut down: only stragglers remain
      else if (!vm) await this.kill(v, "the VM was deleted");
      else if (vm.powerState === "deallocated" || vm.powerState === "deallocating") await this.kill(v, `the VM was ${vm.powerState}`);
    }
    for (const vm of list) {
      const key = vm.id.toLowerCase();
      if (this.stopped || this.vms.has(key)) continue;
      const runUid = vm.tags[TAG_RUN_UID];
      if (!runUid) continue; // not a Run's VM
      // cloud-init runs customData once the VM has booted: wait for Azure to say it is running.
      if (vm.provisioningState !== "Succeeded" || vm.powerState !== "running") continue;
      const runName = vm.tags[TAG_RUN_NAME] ?? "";
      const root = join(this.o.dir, vm.name);
      const entry: Playing = { id: vm.id, runName, runUid, root };
      this.vms.set(key, entry);
      let exitCode = this.o.pipelineExitCode ?? 0;
      if (this.o.exitCodeFor) {
        const chosen = this.o.exitCodeFor(runName, vm);
        if (chosen === undefined) {
          this.o.say(`VM ${vm.name} (Run ${runName}) left alone: it stays running`);
          continue;
        }
        exitCode = chosen;
      }
      // As on Azure: cloud-init runs customData; userData is only served by the instance metadata
      // service (the operator's customData fetches it from there).
      if (!vm.customDataText) {
        this.o.say(`VM ${vm.name} has no customData; cloud-init has nothing to run`);
        entry.launcherExit = null;
        continue;
      }
      this.boot(entry, vm, vm.customDataText, exitCode);
    }
  }

  private boot(entry: Playing, vm: EmulatedVm, customData: string, exitCode: number): void {
    mkdirSync(join(entry.root, "sandbox"), { recursive: true });
    this.o.say(`VM ${vm.name} (Run ${entry.runName}) is running: cloud-init runs its customData (${customData.length} bytes)`);
    const child = spawn("bash", ["-c", customData], {
      cwd: entry.root,
      // Its own process group, so that losing the VM ends every process the launcher started.
      detached: true,
      env: {
        PATH: `${AZURE_STANDINS}:${SHARED_STANDINS}:/usr/bin:/bin`,
        HOME: entry.root,
        LANG: "C.UTF-8",
        // The launcher's test overrides (src/cloud/azure/launcher.ts); cloud-init sets neither.
        VMFORGE_ROOT: entry.root,
        VMFORGE_IMDS_ENDPOINT: vm.imdsEndpoint,
        // (a refused secret is asked again for a few seconds, not a real VM's 10 minutes)
        ...(this.o.keyVaultEndpoint ? { VMFORGE_KEYVAULT_ENDPOINT: this.o.keyVaultEndpoint, VMFORGE_KEYVAULT_WAIT: String(this.o.keyVaultWaitS ?? 3) } : {}),
        // The launcher's curl trusts the harness CA (the emulator's and Azurite's), nothing else.
        CURL_CA_BUNDLE: this.o.caPath,
        SSL_CERT_FILE: this.o.caPath,
        // For the stand-ins.
        VMFORGE_SANDBOX_REPO: REPO,
        VMFORGE_SANDBOX_STATE: join(entry.root, "sandbox"),
        VMFORGE_SANDBOX_EMULATOR: this.o.control.endpoint,
        VMFORGE_SANDBOX_VM_ID: vm.id,
        VMFORGE_SANDBOX_NXF_EXIT: String(exitCode),
        VMFORGE_SANDBOX_NXF_SECONDS: String(this.o.pipelineSeconds ?? 0),
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    entry.child = child;
    child.stderr?.on("data", (d: Buffer) => this.o.say(`VM ${vm.name}: ${d.toString().trimEnd()}`));
    entry.exited = new Promise((resolve) => {
      child.on("exit", (code) => {
        if (entry.launcherExit === undefined) entry.launcherExit = code;
        // Whatever the launcher left behind dies with the machine.
        this.killGroup(child);
        this.o.say(`VM ${vm.name}: launcher exited${code === null ? " (killed)" : ` with code ${code}`}`);
        resolve();
      });
      child.on("error", (e) => {
        entry.launcherExit = null;
        this.o.say(`VM ${vm.name}: cannot run the launcher: ${e.message}`);
        resolve();
      });
    });
  }

  private async kill(v: Playing, why: string): Promise<void> {
    if (!v.child || v.launcherExit !== undefined) return;
    v.killedBecause = why;
    v.launcherExit = null;
    this.o.say(`VM ${v.id.split("/").pop()}: ${why}; its launcher is gone with it`);
    this.killGroup(v.child);
    await v.exited;
  }

  private killGroup(child: ChildProcess): void {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}
