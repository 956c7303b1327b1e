// Where the harness keeps things, and running its setup scripts.
import { spawn } from "node:child_process";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const HARNESS_DIR = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = join(HARNESS_DIR, "..", "..");

/** Kubernetes release the control plane is built from (k8s.io/kubernetes tag). */
export const KUBERNETES_VERSION = process.env.K8S_VERSION ?? "v1.36.3";
/** moto release installed into the cached virtualenv. */
export const MOTO_VERSION = process.env.MOTO_VERSION ?? "5.2.5";

/** Cache root outside the repository: $VMFORGE_CACHE, else $XDG_CACHE_HOME/vmforge, else ~/.cache/vmforge. */
export function cacheRoot(): string {
  return process.env.VMFORGE_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "vmforge");
}

/**
 * Runs one of the harness's setup scripts. Its progress (stderr) is passed through to our
 * stderr so a long first build is visible; its last stdout line is returned.
 */
export function runSetupScript(script: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [join(HARNESS_DIR, script)], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, ...env },
    });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString("utf8")));
    child.once("error", reject);
    // "close", not "exit": stdout may still hold unread data when the process exits.
    child.once("close", (code, signal) => {
      const last = out.trim().split("\n").pop() ?? "";
      if (code === 0 && last) resolve(last);
      else reject(new Error(`${script} failed (${signal ?? `exit code ${code}`}); see its messages above`));
    });
  });
}

/** Builds kube-apiserver, kube-controller-manager and etcd when missing; returns their folder. */
export function ensureControlPlane(): Promise<string> {
  return runSetupScript("build-control-plane.sh", { K8S_VERSION: KUBERNETES_VERSION });
}

/** Creates the moto virtualenv when missing; returns its folder. */
export function ensureMotoVenv(): Promise<string> {
  return runSetupScript("ensure-moto-venv.sh", { MOTO_VERSION });
}
