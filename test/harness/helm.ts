// Deployment tooling for tests: a Helm binary built from source (the Go module proxy is reachable,
// release downloads are not), `kubectl kustomize`, and kubeconfigs that act as a ServiceAccount.
import { spawn } from "node:child_process";
import { access, chmod, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { rmSync } from "node:fs";
import { constants as fsConstants } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parse, parseAllDocuments, stringify } from "yaml";
import { KubeHttp } from "./kube-http.js";
import { cacheRoot } from "./paths.js";

/** Helm release built by ensureHelm() (a helm.sh/helm/v3 module version). */
export const HELM_VERSION = process.env.VMFORGE_HELM_VERSION ?? "v3.22.0";

/** kubectl used for `kubectl kustomize` and applies; it ships kustomize built in. */
export const KUBECTL = process.env.KUBECTL ?? "kubectl";

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion, collecting its output. Never throws for a non-zero exit. */
export function runTool(command: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; cwd?: string; onStderr?: (chunk: string) => void } = {}): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, ...opts.env },
      ...(opts.cwd ? { cwd: opts.cwd } : {}),
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")));
    child.stderr.on("data", (c: Buffer) => {
      const s = c.toString("utf8");
      stderr += s;
      opts.onStderr?.(s);
    });
    child.once("error", reject);
    child.once("close", (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
    // A program that exits without reading its input closes the pipe first: not an error here.
    child.stdin.on("error", () => undefined);
    child.stdin.end(opts.input ?? "");
  });
}

/** Like runTool, but throws with the command line and stderr unless the exit code is 0. */
export async function runToolOk(command: string, args: string[], opts: Parameters<typeof runTool>[2] = {}): Promise<string> {
  const r = await runTool(command, args, opts);
  if (r.code !== 0) throw new Error(`${command} ${args.join(" ")} exited with ${r.code}:\n${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout;
}

function log(msg: string): void {
  process.stderr.write(`[helm] ${msg}\n`);
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Where ensureHelm() keeps the binary of `version`. */
export function helmBinaryPath(version = HELM_VERSION): string {
  return join(cacheRoot(), "helm", version, "helm");
}

let building: Promise<string> | undefined;

/**
 * Path of a Helm binary of HELM_VERSION. The first call on a machine builds it with
 * `go install helm.sh/helm/v3/cmd/helm@<version>` (a few minutes on 2 cores) into a private folder
 * and renames that folder into the cache, so concurrent builders never see half a binary.
 */
export function ensureHelm(): Promise<string> {
  building ??= buildHelm().catch((e: unknown) => {
    building = undefined;
    throw e;
  });
  return building;
}

async function buildHelm(): Promise<string> {
  const bin = helmBinaryPath();
  if (await isExecutable(bin)) return bin;
  const finalDir = dirname(bin);
  await mkdir(dirname(finalDir), { recursive: true });
  const work = await mkdtemp(`${finalDir}.build-`);
  try {
    log(`building helm ${HELM_VERSION} with the Go toolchain into ${finalDir} (first run only; takes a few minutes)`);
    const started = Date.now();
    // Release builds stamp the Helm version and the Kubernetes version that `helm template` and
    // `helm lint` assume (Capabilities.KubeVersion) into the binary: the latter is the major + 1 and
    // minor of the k8s.io/client-go module Helm is built with. Do the same.
    const module = `helm.sh/helm/v3@${HELM_VERSION}`;
    let r: ToolResult;
    try {
      r = await runTool("go", ["mod", "download", "-json", module], { cwd: work, env: { GOFLAGS: "-buildvcs=false" } });
    } catch (e) {
      throw new Error(`cannot run "go" to build helm (is the Go toolchain on PATH?): ${e instanceof Error ? e.message : String(e)}`);
    }
    if (r.code !== 0) throw new Error(`go mod download ${module} failed (exit ${r.code}):\n${r.stderr.trim() || r.stdout.trim()}`);
    const goMod = await readFile((JSON.parse(r.stdout) as { GoMod: string }).GoMod, "utf8");
    const clientGo = /^\s*k8s\.io\/client-go v0\.(\d+)\.\d+/m.exec(goMod);
    if (!clientGo) throw new Error(`cannot find the k8s.io/client-go version in the go.mod of ${module}`);
    const ldflags = [
      "-s",
      "-w",
      `-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}`,
      ...["pkg/lint/rules", "pkg/chartutil"].flatMap((pkg) => [
        `-X helm.sh/helm/v3/${pkg}.k8sVersionMajor=1`,
        `-X helm.sh/helm/v3/${pkg}.k8sVersionMinor=${clientGo[1]}`,
      ]),
    ].join(" ");
    r = await runTool("go", ["install", "-trimpath", `-ldflags=${ldflags}`, `helm.sh/helm/v3/cmd/helm@${HELM_VERSION}`], {
      // Outside any module, so the repository's files play no part; no cgo, like release builds.
      cwd: work,
      env: { GOBIN: work, CGO_ENABLED: "0", GOFLAGS: "-buildvcs=false" },
      onStderr: (s) => {
        for (const line of s.split("\n")) if (line.trim() && !line.startsWith("go: downloading")) log(line);
      },
    });
    if (r.code !== 0) throw new Error(`go install helm ${HELM_VERSION} failed (exit ${r.code}):\n${r.stderr.trim().split("\n").slice(-20).join("\n")}`);
    const built = join(work, "helm");
    const version = (await runToolOk(built, ["version", "--template", "{{.Version}}"])).trim();
    if (version !== HELM_VERSION) throw new Error(`built helm reports version ${version}, expected ${HELM_VERSION}`);
    await chmod(built, 0o755);
    try {
      await rename(work, finalDir);
    } catch (e) {
      // Someone else finished first: use theirs.
      if (!(await isExecutable(bin))) throw e;
    }
    log(`helm ${HELM_VERSION} ready in ${((Date.now() - started) / 1000).toFixed(0)}s`);
    return bin;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * Runs helm with its config, cache and data folders inside the vmforge cache (never ~/.config/helm
 * or ~/.cache/helm). The tests use no chart repositories, so these folders stay nearly empty.
 */
export async function helm(args: string[], opts: { input?: string; kubeconfig?: string } = {}): Promise<string> {
  const bin = await ensureHelm();
  const helmHome = join(cacheRoot(), "helm", "home");
  return runToolOk(bin, args, {
    ...(opts.input !== undefined ? { input: opts.input } : {}),
    env: {
      HELM_CONFIG_HOME: join(helmHome, "config"),
      HELM_CACHE_HOME: join(helmHome, "cache"),
      HELM_DATA_HOME: join(helmHome, "data"),
      ...(opts.kubeconfig ? { KUBECONFIG: opts.kubeconfig } : {}),
    },
  });
}

export interface HelmTemplateOptions {
  chart: string;
  release: string;
  namespace: string;
  /** Values files (-f), applied in order. */
  valuesFiles?: string[];
  /** --set-json key=value pairs (values are JSON-encoded). */
  setJson?: Record<string, unknown>;
  /** Also render the chart's crds/ folder. */
  includeCrds?: boolean;
  /** Kubernetes version the render pretends to target (Capabilities.KubeVersion). */
  kubeVersion?: string;
}

/** `helm template` output as text. */
export function helmTemplate(o: HelmTemplateOptions): Promise<string> {
  const args = ["template", o.release, o.chart, "--namespace", o.namespace];
  for (const f of o.valuesFiles ?? []) args.push("--values", f);
  for (const [k, v] of Object.entries(o.setJson ?? {})) args.push("--set-json", `${k}=${JSON.stringify(v)}`);
  if (o.includeCrds) args.push("--include-crds");
  if (o.kubeVersion) args.push("--kube-version", o.kubeVersion);
  return helm(args);
}

/** `kubectl kustomize <dir>` output as text. */
export function kustomizeBuild(dir: string): Promise<string> {
  return runToolOk(KUBECTL, ["kustomize", dir]);
}

/**
 * `kubectl apply --server-side` of a manifest stream with the given kubeconfig. Returns kubectl's
 * stderr, which carries the apiserver's warnings (e.g. Pod Security violations of a pod template).
 */
export async function kubectlApply(kubeconfig: string, manifests: string, opts: { dryRun?: boolean; fieldManager?: string } = {}): Promise<{ stdout: string; warnings: string }> {
  const args = ["--kubeconfig", kubeconfig, "apply", "--server-side", "--force-conflicts", `--field-manager=${opts.fieldManager ?? "vmforge-tests"}`, "-f", "-"];
  if (opts.dryRun) args.push("--dry-run=server");
  const r = await runTool(KUBECTL, args, { input: manifests });
  if (r.code !== 0) throw new Error(`kubectl apply failed (exit ${r.code}):\n${r.stderr.trim() || r.stdout.trim()}`);
  return { stdout: r.stdout, warnings: r.stderr };
}

/** A Kubernetes object as rendered by a tool. */
export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

/** Parses a multi-document YAML stream into objects, skipping empty documents; throws on YAML errors. */
export function parseManifests(text: string): Manifest[] {
  const out: Manifest[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`invalid YAML: ${doc.errors[0]?.message}`);
    const obj = doc.toJS() as Manifest | null;
    if (obj && typeof obj === "object") out.push(obj);
  }
  return out;
}

interface KubeconfigFile {
  "current-context"?: string;
  contexts?: { name: string; context: { cluster: string; user: string } }[];
  clusters?: { name: string; cluster: { server: string; "certificate-authority-data"?: string; "certificate-authority"?: string } }[];
}

const SA_KUBECONFIG_PREFIX = "vmforge-sa-kubeconfig-";
const tempFiles = new Set<string>();
let exitHook = false;

/** Removes kubeconfig folders older than `maxAgeMs` left by processes killed before cleaning up (their tokens have expired). */
async function sweepExpiredKubeconfigs(maxAgeMs: number): Promise<void> {
  const base = tmpdir();
  for (const e of await readdir(base).catch(() => [] as string[])) {
    if (!e.startsWith(SA_KUBECONFIG_PREFIX)) continue;
    const dir = join(base, e);
    const info = await stat(dir).catch(() => undefined);
    if (info && Date.now() - info.mtimeMs > maxAgeMs) await rm(dir, { recursive: true, force: true });
  }
}

/** Deletes every kubeconfig serviceAccountKubeconfig() wrote in this process (call it in afterAll). */
export async function removeServiceAccountKubeconfigs(): Promise<void> {
  for (const d of tempFiles) await rm(d, { recursive: true, force: true });
  tempFiles.clear();
}

/**
 * Mints a token for ServiceAccount `namespace/sa` (TokenRequest API, valid for `expirationSeconds`,
 * default one hour) and writes a kubeconfig that authenticates with it against the cluster of
 * `kubeconfig` (same server and CA). Returns the file's path, in a private temp folder that is removed
 * by removeServiceAccountKubeconfigs(), at process exit, or by a later call once the token expired.
 * The ServiceAccount must exist. Nothing else is granted: the token has exactly the ServiceAccount's RBAC.
 */
export async function serviceAccountKubeconfig(kubeconfig: string, namespace: string, sa: string, opts: { expirationSeconds?: number } = {}): Promise<string> {
  const admin = KubeHttp.fromKubeconfig(kubeconfig);
  const res = await admin.expect("POST", `/api/v1/namespaces/${encodeURIComponent(namespace)}/serviceaccounts/${encodeURIComponent(sa)}/token`, {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: { expirationSeconds: opts.expirationSeconds ?? 3600 },
  });
  const token = (res.body as { status?: { token?: string } }).status?.token;
  if (!token) throw new Error(`TokenRequest for ${namespace}/${sa} returned no token`);

  const kc = parse(await readFile(kubeconfig, "utf8")) as KubeconfigFile;
  const ctx = kc.contexts?.find((c) => c.name === kc["current-context"]) ?? kc.contexts?.[0];
  const cluster = kc.clusters?.find((c) => c.name === ctx?.context.cluster)?.cluster;
  if (!cluster) throw new Error(`kubeconfig ${kubeconfig} has no usable cluster`);
  const caData = cluster["certificate-authority-data"] ?? (cluster["certificate-authority"] ? (await readFile(cluster["certificate-authority"])).toString("base64") : undefined);

  const user = `system:serviceaccount:${namespace}:${sa}`;
  const text = stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "cluster", cluster: { server: cluster.server, ...(caData ? { "certificate-authority-data": caData } : {}) } }],
    users: [{ name: user, user: { token } }],
    contexts: [{ name: "sa", context: { cluster: "cluster", user, namespace } }],
    "current-context": "sa",
  });
  await sweepExpiredKubeconfigs(24 * 3600 * 1000);
  const dir = await mkdtemp(join(tmpdir(), SA_KUBECONFIG_PREFIX));
  const path = join(dir, "kubeconfig");
  await writeFile(path, text, { mode: 0o600 });
  tempFiles.add(dir);
  if (!exitHook) {
    exitHook = true;
    process.once("exit", () => {
      for (const d of tempFiles) rmSync(d, { recursive: true, force: true });
    });
  }
  return path;
}
