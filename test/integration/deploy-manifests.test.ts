// The install paths users take — `kubectl apply -k deploy/`, GitOps tools applying the same
// folder or an overlay of it, `helm template` and `helm install` of helm/vmforge — rendered by the
// real tools and applied to the real kube-apiserver. Then the operator's ServiceAccount is put to
// the test: its RBAC must allow every request the operator makes (proven with SelfSubjectAccess-
// Reviews and by running the engine's own code with the ServiceAccount's token) and nothing more
// (denied reviews, and a SelfSubjectRulesReview that lists exactly the expected rules).
import * as k8s from "@kubernetes/client-node";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parse, stringify } from "yaml";
import { ensureHelm, helm, helmTemplate, KUBECTL, kubectlApply, kustomizeBuild, parseManifests, removeServiceAccountKubeconfigs, runTool, serviceAccountKubeconfig, type Manifest } from "../harness/helm.js";
import { deleteNamespace, kubeAdmin, kubeconfigPath, randomSuffix, TEST_NAMESPACE_LABEL } from "../harness/helpers.js";
import { REPO_ROOT } from "../harness/paths.js";
import { KubeApiError, KubeClient } from "../../src/engine/kube.js";
import { Reflector } from "../../src/engine/reflector.js";
import { ensureFinalizer, removeFinalizer } from "../../src/engine/finalizers.js";
import { updateStatus } from "../../src/engine/conditions.js";
import { EventRecorder } from "../../src/engine/events.js";
import { LeaderElector } from "../../src/engine/leader.js";
import { createLogger } from "../../src/engine/logger.js";
import { loadConfig } from "../../src/config.js";
import { ComputeEnvironmentResource, RunResource, type ComputeEnvironment, type Run } from "../../src/api/types.js";
import { MIN_KUBERNETES_VERSION, requireKubernetesVersion } from "../../src/kube-version.js";
import { FINALIZER, protectSecret, releaseUnusedSecrets, resolveCredentials, SECRET_IN_USE_FINALIZER, SECRET_LABEL, SecretResource, type SecretObject } from "../../src/controllers/shared.js";

const CHART = join(REPO_ROOT, "helm", "vmforge");
const DEPLOY = join(REPO_ROOT, "deploy");
const WAIT = { timeout: 60_000, interval: 250 };
const silent = createLogger({ level: "silent" });

// ---------------------------------------------------------------------------------------------
// Small helpers

interface Rule {
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  verbs: string[];
}
type PodSpec = {
  serviceAccountName: string;
  securityContext?: unknown;
  terminationGracePeriodSeconds?: number;
  volumes?: unknown;
  containers: { env?: { name: string; value?: string }[]; securityContext?: unknown; livenessProbe?: unknown; readinessProbe?: unknown; ports?: unknown; resources?: unknown; image: string }[];
};

const byKind = (objs: Manifest[], kind: string): Manifest[] => objs.filter((o) => o.kind === kind);
function one(objs: Manifest[], kind: string, nameMatch: (name: string) => boolean = () => true): Manifest {
  const found = objs.filter((o) => o.kind === kind && nameMatch(o.metadata.name));
  if (found.length !== 1) throw new Error(`expected one ${kind}, found ${found.map((o) => o.metadata.name).join(", ") || "none"}`);
  return found[0]!;
}
const rulesOf = (o: Manifest): Rule[] => (o as unknown as { rules: Rule[] }).rules;
const podOf = (o: Manifest): PodSpec => (o as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;
const envOf = (o: Manifest): Map<string, string | undefined> => new Map((podOf(o).containers[0]!.env ?? []).map((e) => [e.name, e.value]));

async function createNamespace(name: string, restricted = false): Promise<void> {
  const labels: Record<string, string> = { [TEST_NAMESPACE_LABEL]: "true" };
  if (restricted) labels["pod-security.kubernetes.io/enforce"] = "restricted";
  await kubeAdmin().expect("POST", "/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name, labels } });
}

/** Deletes the cluster-scoped RBAC objects of a render (CRDs stay: other test files share them). */
async function deleteClusterRbac(objs: Manifest[]): Promise<void> {
  for (const o of objs) {
    if (o.kind === "ClusterRole" || o.kind === "ClusterRoleBinding") {
      const plural = o.kind === "ClusterRole" ? "clusterroles" : "clusterrolebindings";
      await kubeAdmin().expect("DELETE", `/apis/rbac.authorization.k8s.io/v1/${plural}/${o.metadata.name}`, undefined, [404]);
    }
  }
}

/** What `npm run gen:crds` writes to crds/ (cluster-scoped): the CRDs and the Run params admission policy with its binding. */
const GENERATED_KINDS = ["CustomResourceDefinition", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"];

async function generatedCrds(): Promise<Manifest[]> {
  const dir = join(REPO_ROOT, "crds");
  const files = (await readdir(dir)).filter((f) => f.endsWith(".yaml")).sort();
  return (await Promise.all(files.map(async (f) => parseManifests(await readFile(join(dir, f), "utf8"))))).flat();
}

async function waitEstablished(names: string[]): Promise<void> {
  for (const name of names) {
    await vi.waitFor(async () => {
      const res = await kubeAdmin().expect("GET", `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`);
      const conds = (res.body as { status?: { conditions?: { type: string; status: string }[] } }).status?.conditions ?? [];
      expect(conds.find((c) => c.type === "Established")?.status).toBe("True");
    }, WAIT);
  }
}

// ---------------------------------------------------------------------------------------------
// Access reviews

interface Access {
  verb: string;
  group: string;
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
}
const show = (a: Access): string =>
  `${a.verb} ${a.group || "core"}/${a.resource}${a.subresource ? `/${a.subresource}` : ""}${a.name ? ` name=${a.name}` : ""} in ${a.namespace === undefined ? "cluster" : a.namespace || "all namespaces"}`;

/** Asks the apiserver, as the kubeconfig's user, which of `checks` it may do; returns the ones that differ from `expected`. */
async function accessMismatches(kc: k8s.KubeConfig, checks: Access[], expected: boolean): Promise<string[]> {
  const api = kc.makeApiClient(k8s.AuthorizationV1Api);
  const wrong: string[] = [];
  for (const a of checks) {
    const r = await api.createSelfSubjectAccessReview({
      body: {
        apiVersion: "authorization.k8s.io/v1",
        kind: "SelfSubjectAccessReview",
        spec: {
          resourceAttributes: {
            verb: a.verb,
            group: a.group,
            resource: a.resource,
            ...(a.subresource ? { subresource: a.subresource } : {}),
            ...(a.namespace !== undefined ? { namespace: a.namespace } : {}),
            ...(a.name ? { name: a.name } : {}),
          },
        },
      },
    });
    if ((r.status?.allowed === true) !== expected) wrong.push(`${expected ? "denied" : "allowed"}: ${show(a)}`);
  }
  return wrong;
}

interface OperatorInstall {
  /** Namespace of the operator's ServiceAccount and Lease. */
  saNamespace: string;
  sa: string;
  lease: string;
  /** Namespaces the operator works in; "*" = all. */
  watched: string[] | "*";
}

const ops = (verbs: string[], base: Omit<Access, "verb">): Access[] => verbs.map((verb) => ({ verb, ...base }));

/** Every request the operator makes, for a namespace it works in. */
function neededIn(ns: string): Access[] {
  return [
    ...["computeenvironments", "runs"].flatMap((resource) => [
      ...ops(["get", "list", "watch", "patch"], { group: "vmforge.dev", resource, namespace: ns }),
      ...ops(["patch"], { group: "vmforge.dev", resource, subresource: "status", namespace: ns }),
    ]),
    // Finished Runs past their ttlSecondsAfterFinished or their CE's runHistory.
    { verb: "delete", group: "vmforge.dev", resource: "runs", namespace: ns },
    ...ops(["get", "list", "watch", "patch"], { group: "", resource: "secrets", namespace: ns }),
    ...ops(["create", "patch"], { group: "events.k8s.io", resource: "events", namespace: ns }),
  ];
}

function needed(i: OperatorInstall, sample: string): Access[] {
  const namespaces = i.watched === "*" ? [sample] : i.watched;
  return [
    ...namespaces.flatMap(neededIn),
    // Reflectors of an all-namespaces operator list and watch across the cluster.
    ...(i.watched === "*"
      ? ["computeenvironments", "runs"].flatMap((resource) => ops(["list", "watch"], { group: "vmforge.dev", resource, namespace: "" })).concat(ops(["list", "watch"], { group: "", resource: "secrets", namespace: "" }))
      : []),
    { verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: i.saNamespace },
    ...ops(["get", "update"], { group: "coordination.k8s.io", resource: "leases", namespace: i.saNamespace, name: i.lease }),
  ];
}

/** Requests the operator never makes and must not be able to make. */
function forbidden(i: OperatorInstall, inside: string, outside: string | undefined): Access[] {
  const list: Access[] = [
    ...ops(["create", "update", "delete", "deletecollection"], { group: "vmforge.dev", resource: "computeenvironments", namespace: inside }),
    ...ops(["create", "update", "deletecollection"], { group: "vmforge.dev", resource: "runs", namespace: inside }),
    ...ops(["update"], { group: "vmforge.dev", resource: "computeenvironments", subresource: "status", namespace: inside }),
    ...ops(["update"], { group: "vmforge.dev", resource: "runs", subresource: "finalizers", namespace: inside }),
    ...ops(["create", "update", "delete", "deletecollection"], { group: "", resource: "secrets", namespace: inside }),
    ...ops(["list", "create", "delete"], { group: "", resource: "pods", namespace: inside }),
    ...ops(["get", "list"], { group: "", resource: "configmaps", namespace: inside }),
    ...ops(["create"], { group: "", resource: "events", namespace: inside }),
    ...ops(["get", "list", "delete"], { group: "events.k8s.io", resource: "events", namespace: inside }),
    ...ops(["create"], { group: "rbac.authorization.k8s.io", resource: "rolebindings", namespace: inside }),
    ...ops(["create"], { group: "", resource: "serviceaccounts", subresource: "token", namespace: i.saNamespace, name: i.sa }),
    ...ops(["get", "update"], { group: "coordination.k8s.io", resource: "leases", namespace: i.saNamespace, name: `${i.lease}-other` }),
    ...ops(["list", "watch", "delete"], { group: "coordination.k8s.io", resource: "leases", namespace: i.saNamespace }),
    ...ops(["create", "update", "patch", "delete", "deletecollection"], { group: "apiextensions.k8s.io", resource: "customresourcedefinitions" }),
    ...ops(["bind", "escalate", "create"], { group: "rbac.authorization.k8s.io", resource: "clusterroles" }),
    ...ops(["list"], { group: "", resource: "namespaces" }),
    ...ops(["list"], { group: "", resource: "nodes" }),
  ];
  if (outside !== undefined) {
    list.push(
      ...ops(["get", "update"], { group: "coordination.k8s.io", resource: "leases", namespace: outside, name: i.lease }),
      ...ops(["create"], { group: "coordination.k8s.io", resource: "leases", namespace: outside }),
    );
  }
  if (i.watched !== "*" && outside !== undefined) {
    // Only the watched namespaces: nothing elsewhere, nothing across all namespaces.
    list.push(
      ...neededIn(outside),
      ...ops(["list", "watch"], { group: "vmforge.dev", resource: "computeenvironments", namespace: "" }),
      ...ops(["list", "watch"], { group: "", resource: "secrets", namespace: "" }),
    );
  }
  return list;
}

/** Rules as "group|resource|name|verb" strings, "*" for no resourceNames. */
function flatten(rules: Rule[]): string[] {
  const out = new Set<string>();
  for (const r of rules) {
    for (const g of r.apiGroups ?? [""]) {
      for (const res of r.resources ?? []) {
        for (const name of r.resourceNames?.length ? r.resourceNames : ["*"]) for (const v of r.verbs) out.add(`${g}|${res}|${name}|${v}`);
      }
    }
  }
  return [...out].sort();
}

/** What every authenticated user may do (system:basic-user): self reviews. Left out of comparisons. */
const isSelfReview = (rule: string): boolean => /^(authorization|authentication)\.k8s\.io\|selfsubject/.test(rule);

async function rulesIn(kc: k8s.KubeConfig, namespace: string): Promise<string[]> {
  const api = kc.makeApiClient(k8s.AuthorizationV1Api);
  const r = await api.createSelfSubjectRulesReview({
    body: { apiVersion: "authorization.k8s.io/v1", kind: "SelfSubjectRulesReview", spec: { namespace } },
  });
  expect(r.status?.incomplete, r.status?.evaluationError).toBe(false);
  return flatten((r.status?.resourceRules ?? []) as Rule[]).filter((x) => !isSelfReview(x));
}

async function proveOperatorRbac(install: OperatorInstall, objs: Manifest[], inside: string, outside: string): Promise<void> {
  const kcPath = await serviceAccountKubeconfig(kubeconfigPath(), install.saNamespace, install.sa);
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(kcPath);

  expect(await accessMismatches(kc, needed(install, inside), true)).toEqual([]);
  expect(await accessMismatches(kc, forbidden(install, inside, outside), false)).toEqual([]);

  // Exactly the rendered rules, nowhere more: where the operator works, in its own namespace
  // (plus the Lease rules), and outside (nothing at all unless it watches all namespaces).
  const operatorRules = flatten(rulesOf(one(objs, "ClusterRole", (n) => n.includes("-operator"))));
  const leaseRules = flatten(rulesOf(one(objs, "Role", (n) => n.includes("-leader-election"))));
  expect(operatorRules.length).toBeGreaterThan(10);
  expect(await rulesIn(kc, inside)).toEqual(inside === install.saNamespace ? [...new Set([...operatorRules, ...leaseRules])].sort() : operatorRules);
  const ownExpected = install.watched === "*" || install.watched.includes(install.saNamespace) ? [...new Set([...operatorRules, ...leaseRules])].sort() : leaseRules;
  expect(await rulesIn(kc, install.saNamespace)).toEqual(ownExpected);
  expect(await rulesIn(kc, outside)).toEqual(install.watched === "*" ? operatorRules : []);
}

// ---------------------------------------------------------------------------------------------

const suffix = randomSuffix();
const cleanupNamespaces: string[] = [];
const cleanupRbac: Manifest[][] = [];
const tmpDirs: string[] = [];

let kustomized: Manifest[] = [];
let helmDefault: Manifest[] = [];

beforeAll(async () => {
  await ensureHelm();
  kustomized = parseManifests(await kustomizeBuild(DEPLOY));
}, 900_000);

afterAll(async () => {
  for (const objs of cleanupRbac) await deleteClusterRbac(objs);
  for (const ns of cleanupNamespaces) await deleteNamespace(ns);
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
  await removeServiceAccountKubeconfigs();
});

describe("kubectl apply -k deploy/", () => {
  it("renders the namespace, both CRDs and the Run params admission policy (as generated), RBAC, Service and Deployment", async () => {
    expect(kustomized.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(
      [
        "ClusterRole/vmforge-edit",
        "ClusterRole/vmforge-operator",
        "ClusterRole/vmforge-view",
        "ClusterRoleBinding/vmforge-operator",
        "CustomResourceDefinition/computeenvironments.vmforge.dev",
        "CustomResourceDefinition/runs.vmforge.dev",
        "Deployment/vmforge",
        "Namespace/vmforge-system",
        "Role/vmforge-leader-election",
        "RoleBinding/vmforge-leader-election",
        "Service/vmforge-metrics",
        "ServiceAccount/vmforge",
        "ValidatingAdmissionPolicy/runs-user-data-budget.vmforge.dev",
        "ValidatingAdmissionPolicyBinding/runs-user-data-budget.vmforge.dev",
      ].sort(),
    );
    const byName = (l: Manifest[]) => [...l].sort((a, b) => `${a.kind}/${a.metadata.name}`.localeCompare(`${b.kind}/${b.metadata.name}`));
    // kustomize does not know the admission policy kinds are cluster-scoped and gives them the
    // namespace; the API server ignores it for cluster-scoped objects (the overlay below applies).
    const generated = kustomized.filter((o) => GENERATED_KINDS.includes(o.kind)).map((o) => ({ ...o, metadata: { ...o.metadata, namespace: undefined } })).map((o) => JSON.parse(JSON.stringify(o)) as Manifest);
    expect(byName(generated)).toEqual(byName(await generatedCrds()));
  });

  it("applies for real as an overlay (own namespace and name suffix, as GitOps overlays do), passes Pod Security 'restricted', and its ServiceAccount has exactly the operator's rights", async () => {
    // An overlay in a temp folder, pointing at deploy/ with a relative path like a user's repo would.
    const dir = await mkdtemp(join(tmpdir(), "vmforge-overlay-"));
    tmpDirs.push(dir);
    const ns = `deploy-kust-${suffix}`;
    await writeFile(
      join(dir, "kustomization.yaml"),
      stringify({ apiVersion: "kustomize.config.k8s.io/v1beta1", kind: "Kustomization", namespace: ns, nameSuffix: `-${suffix}`, resources: [relative(dir, DEPLOY)] }),
    );
    const rendered = await kustomizeBuild(dir);
    const objs = parseManifests(rendered);
    cleanupNamespaces.push(ns);
    cleanupRbac.push(objs);
    expect(one(objs, "Namespace").metadata.name).toBe(ns);
    expect(one(objs, "ClusterRoleBinding", (n) => n === `vmforge-operator-${suffix}`)).toMatchObject({
      roleRef: { name: `vmforge-operator-${suffix}` },
      subjects: [{ kind: "ServiceAccount", name: `vmforge-${suffix}`, namespace: ns }],
    });
    // The admission policy is renamed with the overlay, and its binding follows it.
    const policy = one(objs, "ValidatingAdmissionPolicy");
    expect(policy.metadata.name).toBe(`runs-user-data-budget.vmforge.dev-${suffix}`);
    expect((one(objs, "ValidatingAdmissionPolicyBinding") as unknown as { spec: { policyName: string } }).spec.policyName).toBe(policy.metadata.name);

    // Exactly what users type (client-side apply, whole objects kept in an annotation) ...
    const applied = await runTool(KUBECTL, ["--kubeconfig", kubeconfigPath(), "apply", "-k", dir]);
    expect(applied.code, applied.stderr).toBe(0);
    expect(applied.stdout).toContain(`deployment.apps/vmforge-${suffix} created`);
    // ... and the namespace enforces "restricted": a pod template that breaks it draws a warning.
    expect(applied.stderr).not.toMatch(/PodSecurity|violate/i);
    await waitEstablished(byKind(objs, "CustomResourceDefinition").map((c) => c.metadata.name));
    // GitOps controllers (Flux, Argo CD with ServerSideApply) re-apply the same objects server-side.
    const { warnings } = await kubectlApply(kubeconfigPath(), rendered);
    expect(warnings).not.toMatch(/PodSecurity|violate/i);
    const stored = await kubeAdmin().expect("GET", `/apis/apps/v1/namespaces/${ns}/deployments/vmforge-${suffix}`);
    expect((stored.body as { spec: { template: { spec: PodSpec } } }).spec.template.spec.serviceAccountName).toBe(`vmforge-${suffix}`);

    // The warning check can fail: the same Deployment without its security settings is flagged.
    const weakened = structuredClone(one(objs, "Deployment")) as Manifest & { spec: { template: { spec: PodSpec } } };
    delete weakened.spec.template.spec.securityContext;
    delete weakened.spec.template.spec.containers[0]!.securityContext;
    weakened.metadata.name = `weak-${suffix}`;
    const flagged = await kubectlApply(kubeconfigPath(), stringify(weakened), { dryRun: true });
    expect(flagged.warnings).toMatch(/would violate PodSecurity "restricted/);

    const other = `deploy-other-${suffix}`;
    await createNamespace(other);
    cleanupNamespaces.push(other);
    await proveOperatorRbac({ saNamespace: ns, sa: `vmforge-${suffix}`, lease: "vmforge-operator", watched: "*" }, objs, other, other);
  });
});

describe("helm chart helm/vmforge", () => {
  const release = `vmforge-${suffix}`;
  const releaseNs = `deploy-helm-${suffix}`;

  beforeAll(async () => {
    await createNamespace(releaseNs, true);
    cleanupNamespaces.push(releaseNs);
    helmDefault = parseManifests(await helmTemplate({ chart: CHART, release, namespace: releaseNs, includeCrds: true }));
    cleanupRbac.push(helmDefault);
    // The chart's CRDs, as `helm install` would create them (no-op when already there).
    const crds = byKind(helmDefault, "CustomResourceDefinition");
    await kubectlApply(kubeconfigPath(), crds.map((o) => stringify(o)).join("---\n"));
    await waitEstablished(crds.map((c) => c.metadata.name));
  });

  it("passes helm lint --strict", async () => {
    const out = await helm(["lint", "--strict", CHART]);
    expect(out).toContain("1 chart(s) linted, 0 chart(s) failed");
  });

  it("renders with default values what deploy/ has: same CRDs, same rules, same container", () => {
    expect(helmDefault.map((o) => o.kind).sort()).toEqual(kustomized.filter((o) => o.kind !== "Namespace").map((o) => o.kind).sort());
    // The chart's CRDs are the generated ones plus the keep policy (helm upgrade updates them,
    // helm uninstall leaves them).
    const helmCrds = byKind(helmDefault, "CustomResourceDefinition");
    for (const c of helmCrds) expect(c.metadata.annotations, c.metadata.name).toEqual({ "helm.sh/resource-policy": "keep" });
    const withoutKeep = helmCrds.map((c) => ({ ...c, metadata: { ...c.metadata, annotations: undefined } })).map((c) => JSON.parse(JSON.stringify(c)) as Manifest);
    expect(withoutKeep).toEqual(byKind(kustomized, "CustomResourceDefinition"));
    for (const role of ["-operator", "-edit", "-view"]) {
      expect(rulesOf(one(helmDefault, "ClusterRole", (n) => n.endsWith(role))), role).toEqual(rulesOf(one(kustomized, "ClusterRole", (n) => n.endsWith(role))));
    }
    expect(rulesOf(one(helmDefault, "Role"))).toEqual(rulesOf(one(kustomized, "Role")));
    for (const o of helmDefault.filter((x) => !GENERATED_KINDS.includes(x.kind) && !x.kind.startsWith("Cluster"))) expect(o.metadata.namespace, o.kind).toBe(releaseNs);

    const h = podOf(one(helmDefault, "Deployment"));
    const k = podOf(one(kustomized, "Deployment"));
    expect(h.securityContext).toEqual(k.securityContext);
    expect(h.terminationGracePeriodSeconds).toEqual(k.terminationGracePeriodSeconds);
    expect(h.volumes).toEqual(k.volumes);
    const [hc, kc] = [h.containers[0]!, k.containers[0]!];
    for (const field of ["securityContext", "livenessProbe", "readinessProbe", "ports", "resources", "image"] as const) expect(hc[field], field).toEqual(kc[field]);
    expect(hc.env).toEqual(kc.env);
  });

  it("applies for real in a namespace enforcing Pod Security 'restricted', and its ServiceAccount has exactly the operator's rights", async () => {
    // The CRDs are installed (beforeAll); everything else of the render is applied.
    const stream = helmDefault.filter((o) => o.kind !== "CustomResourceDefinition").map((o) => stringify(o)).join("---\n");
    const { warnings } = await kubectlApply(kubeconfigPath(), stream);
    expect(warnings).not.toMatch(/PodSecurity|violate/i);
    const other = `deploy-helm-other-${suffix}`;
    await createNamespace(other);
    cleanupNamespaces.push(other);
    await proveOperatorRbac({ saNamespace: releaseNs, sa: release, lease: "vmforge-operator", watched: "*" }, helmDefault, other, other);
  });

  it("lets the operator's own code do its job with the ServiceAccount's token, and nothing else", async () => {
    const work = `deploy-ops-${suffix}`;
    await createNamespace(work);
    cleanupNamespaces.push(work);
    const admin = new k8s.KubeConfig();
    admin.loadFromFile(kubeconfigPath());
    const objects = admin.makeApiClient(k8s.CustomObjectsApi);
    const core = admin.makeApiClient(k8s.CoreV1Api);
    await core.createNamespacedSecret({ namespace: work, body: { metadata: { name: "creds" }, stringData: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "not-a-real-secret" } } });
    const ceBody = (name: string) => ({
      apiVersion: "vmforge.dev/v1alpha1",
      kind: "ComputeEnvironment",
      metadata: { name },
      spec: { provider: "aws", credentials: { secretRef: { name: "creds" } }, aws: { region: "eu-west-1", workDir: "s3://vmforge-deploy-test/work" } },
    });
    await objects.createNamespacedCustomObject({ group: "vmforge.dev", version: "v1alpha1", namespace: work, plural: "computeenvironments", body: ceBody("ce1") });
    await objects.createNamespacedCustomObject({
      group: "vmforge.dev",
      version: "v1alpha1",
      namespace: work,
      plural: "runs",
      body: { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "run1" }, spec: { computeEnvironmentRef: { name: "ce1" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } } },
    });

    const client = KubeClient.fromKubeconfig(await serviceAccountKubeconfig(kubeconfigPath(), releaseNs, release));

    // Caches: list + watch across all namespaces (CEs, Runs) and of labelled Secrets.
    const ceCache = new Reflector<ComputeEnvironment>({ client, resource: ComputeEnvironmentResource, logger: silent, resyncPeriodMs: 0 });
    const runCache = new Reflector<Run>({ client, resource: RunResource, logger: silent, resyncPeriodMs: 0 });
    const secretCache = new Reflector<SecretObject>({ client, resource: SecretResource, labelSelector: `${SECRET_LABEL}=true`, logger: silent, resyncPeriodMs: 0 });
    const caches = [ceCache, runCache, secretCache];
    for (const c of caches) c.start();
    try {
      await Promise.all(caches.map((c) => c.waitForSync(AbortSignal.timeout(60_000))));
      expect(ceCache.store.get(`${work}/ce1`)).toBeDefined();
      expect(runCache.store.get(`${work}/run1`)).toBeDefined();
      expect(secretCache.store.get(`${work}/creds`)).toBeUndefined();
      await objects.createNamespacedCustomObject({ group: "vmforge.dev", version: "v1alpha1", namespace: work, plural: "computeenvironments", body: ceBody("ce2") });
      await vi.waitFor(() => expect(ceCache.store.get(`${work}/ce2`)).toBeDefined(), WAIT);

      // Credentials: read, protect (finalizer + label, then seen by the labelled watch), release.
      const ce = (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, work, "ce1"))!;
      const creds = await resolveCredentials(client, ce);
      expect(creds.source).toBe("secret");
      expect(Object.keys(creds.data).sort()).toEqual(["accessKeyId", "secretAccessKey"]);
      await protectSecret(client, work, "creds");
      const protectedSecret = await core.readNamespacedSecret({ namespace: work, name: "creds" });
      expect(protectedSecret.metadata?.finalizers).toContain(SECRET_IN_USE_FINALIZER);
      expect(protectedSecret.metadata?.labels?.[SECRET_LABEL]).toBe("true");
      await vi.waitFor(() => expect(secretCache.store.get(`${work}/creds`)).toBeDefined(), WAIT);
      // No CE holds the vmforge finalizer yet, so nothing needs the Secret: it is released.
      expect(await releaseUnusedSecrets(client, work)).toEqual(["creds"]);
      expect((await core.readNamespacedSecret({ namespace: work, name: "creds" })).metadata?.finalizers ?? []).not.toContain(SECRET_IN_USE_FINALIZER);

      // Finalizers (JSON patch) and status (merge patch on /status) of both kinds.
      const ceWithFinalizer = await ensureFinalizer(client, ComputeEnvironmentResource, ce, FINALIZER);
      expect(ceWithFinalizer.metadata.finalizers).toContain(FINALIZER);
      expect(await updateStatus(client, ComputeEnvironmentResource, ceWithFinalizer, { phase: "Pending", observedGeneration: ce.metadata.generation })).toBeDefined();
      const run = (await client.get<Run>(RunResource, work, "run1"))!;
      const runWithFinalizer = await ensureFinalizer(client, RunResource, run, FINALIZER);
      expect(await updateStatus(client, RunResource, runWithFinalizer, { phase: "Pending" })).toBeDefined();
      const storedCe = (await objects.getNamespacedCustomObject({ group: "vmforge.dev", version: "v1alpha1", namespace: work, plural: "computeenvironments", name: "ce1" })) as ComputeEnvironment;
      expect(storedCe.status?.phase).toBe("Pending");
      expect(storedCe.metadata.finalizers).toContain(FINALIZER);
      const storedRun = (await objects.getNamespacedCustomObject({ group: "vmforge.dev", version: "v1alpha1", namespace: work, plural: "runs", name: "run1" })) as Run;
      expect(storedRun.status?.phase).toBe("Pending");
      expect(await removeFinalizer(client, ComputeEnvironmentResource, (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, work, "ce1"))!, FINALIZER)).toBeDefined();
      expect(await removeFinalizer(client, RunResource, (await client.get<Run>(RunResource, work, "run1"))!, FINALIZER)).toBeDefined();

      // Events: the first occurrence is created, the repeat patches its series.
      const recorder = new EventRecorder(client, { controller: "vmforge.dev/operator", instance: `deploy-test-${suffix}`, logger: silent });
      const regarding = { ...ce, apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment" };
      await recorder.record(regarding, "Normal", "DeployTest", "Checking", "rights of the operator's ServiceAccount");
      await recorder.record(regarding, "Normal", "DeployTest", "Checking", "rights of the operator's ServiceAccount");
      const events = await kubeAdmin().expect("GET", `/apis/events.k8s.io/v1/namespaces/${work}/events`);
      const ours = (events.body as { items: { reason?: string; series?: { count: number } }[] }).items.filter((e) => e.reason === "DeployTest");
      expect(ours).toHaveLength(1);
      expect(ours[0]!.series?.count).toBe(2);

      // Leader election in the release namespace: acquire, then release on stop.
      const identity = `deploy-test-${suffix}`;
      const elector = new LeaderElector({ client, namespace: releaseNs, name: "vmforge-operator", identity, logger: silent, retryPeriodMs: 1000 });
      let started!: () => void;
      const leading = new Promise<void>((resolve) => (started = resolve));
      const running = elector.run({ onStartedLeading: () => started(), onStoppedLeading: () => undefined });
      await leading;
      const lease = await kubeAdmin().expect("GET", `/apis/coordination.k8s.io/v1/namespaces/${releaseNs}/leases/vmforge-operator`);
      expect((lease.body as { spec: { holderIdentity?: string } }).spec.holderIdentity).toBe(identity);
      await elector.stop();
      await running;
      const released = await kubeAdmin().expect("GET", `/apis/coordination.k8s.io/v1/namespaces/${releaseNs}/leases/vmforge-operator`);
      expect((released.body as { spec: { holderIdentity?: string } }).spec.holderIdentity ?? "").toBe("");

      // And what it must not do is refused by the apiserver.
      const refused = async (p: Promise<unknown>): Promise<number | undefined> =>
        p.then(
          () => undefined,
          (e: unknown) => (e instanceof KubeApiError ? e.status : -1),
        );
      expect(await refused(client.delete(ComputeEnvironmentResource, work, "ce2"))).toBe(403);
      expect(await refused(client.create(SecretResource, { apiVersion: "v1", kind: "Secret", metadata: { name: "stolen", namespace: work } }))).toBe(403);
      expect(await refused(client.replace(RunResource, { ...(await client.get<Run>(RunResource, work, "run1"))! }))).toBe(403);
      expect(await refused(client.list({ group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true }, { namespace: work }))).toBe(403);
    } finally {
      await Promise.all(caches.map((c) => c.stop()));
    }
  });

  it("with watchNamespaces binds the operator only in those namespaces", async () => {
    const rel = `vf-ns-${suffix}`;
    const [a, b, c] = [`deploy-wa-${suffix}`, `deploy-wb-${suffix}`, `deploy-wc-${suffix}`];
    const relNs = `deploy-helm-ns-${suffix}`;
    for (const ns of [a, b, c]) {
      await createNamespace(ns);
      cleanupNamespaces.push(ns);
    }
    await createNamespace(relNs, true);
    cleanupNamespaces.push(relNs);
    const dir = await mkdtemp(join(tmpdir(), "vmforge-values-"));
    tmpDirs.push(dir);
    const valuesFile = join(dir, "values.yaml");
    await writeFile(valuesFile, stringify({ watchNamespaces: [a, b], leaderElection: { leaseName: "custom-lease" }, workers: 8, runWorkers: 48, logLevel: "debug" }));
    const objs = parseManifests(await helmTemplate({ chart: CHART, release: rel, namespace: relNs, valuesFiles: [valuesFile] }));
    cleanupRbac.push(objs);

    expect(byKind(objs, "ClusterRoleBinding")).toEqual([]);
    // The CRDs are part of every render (templates, so that helm upgrade updates them).
    expect(byKind(objs, "CustomResourceDefinition").map((c) => c.metadata.name).sort()).toEqual(["computeenvironments.vmforge.dev", "runs.vmforge.dev"]);
    expect(byKind(objs, "RoleBinding").map((o) => `${o.metadata.namespace}/${o.metadata.name}`).sort()).toEqual(
      [`${a}/${rel}-vmforge-operator`, `${b}/${rel}-vmforge-operator`, `${relNs}/${rel}-vmforge-leader-election`].sort(),
    );
    const env = envOf(one(objs, "Deployment"));
    expect(env.get("VMFORGE_NAMESPACES")).toBe(`${a},${b}`);
    expect(env.get("VMFORGE_LEASE_NAME")).toBe("custom-lease");
    const vars: NodeJS.ProcessEnv = { POD_NAMESPACE: relNs };
    for (const [k, v] of env) if (v !== undefined) vars[k] = v;
    const config = loadConfig(vars);
    expect(config).toMatchObject({ namespaces: [a, b], workers: 8, runWorkers: 48, logLevel: "debug", leaseName: "custom-lease", leaseNamespace: relNs, leaderElection: true });

    await kubectlApply(kubeconfigPath(), objs.map((o) => stringify(o)).join("---\n"));
    await proveOperatorRbac({ saNamespace: relNs, sa: `${rel}-vmforge`, lease: "custom-lease", watched: [a, b] }, objs, a, c);
  });

  it("rejects values that cannot work, naming the problem", async () => {
    const render = (setJson: Record<string, unknown>) =>
      helmTemplate({ chart: CHART, release: "bad", namespace: "bad", setJson }).then(
        () => "rendered",
        (e: unknown) => String(e),
      );
    expect(await render({ workers: 0 })).toMatch(/workers/);
    expect(await render({ runWorkers: 1000 })).toMatch(/runWorkers/);
    expect(await render({ logLevel: "verbose" })).toMatch(/logLevel/);
    expect(await render({ pollInterval: "15" })).toMatch(/pollInterval/);
    expect(await render({ watchNamespaces: ["Not_A_Namespace"] })).toMatch(/watchNamespaces/);
    expect(await render({ workerz: 3 })).toMatch(/workerz/);
    expect(await render({ extraEnv: [{ name: "VMFORGE_WORKERS", value: "2" }] })).toMatch(/extraEnv/);
    expect(await render({ extraEnv: [{ name: "VMFORGE_RUN_WORKERS", value: "64" }] })).toMatch(/extraEnv/);
    expect(await render({ replicaCount: 2, leaderElection: { enabled: false } })).toMatch(/replicaCount > 1 needs leaderElection/);
    // The proxy has its own values (they also set NODE_USE_ENV_PROXY and NO_PROXY).
    expect(await render({ extraEnv: [{ name: "HTTPS_PROXY", value: "http://proxy:3128" }] })).toMatch(/extraEnv/);
    expect(await render({ proxy: { httpsProxy: "proxy:3128" } })).toMatch(/httpsProxy/);
    // And the happy path of the same switches.
    expect(await render({ replicaCount: 2, extraEnv: [{ name: "AWS_REGION", value: "eu-west-1" }], proxy: { httpsProxy: "http://proxy:3128" } })).toBe("rendered");
  });

  it("installs and uninstalls with helm against the apiserver; the built-in roles gain ComputeEnvironment and Run rights", async () => {
    const rel = `vmforge-inst-${suffix}`;
    const ns = `deploy-inst-${suffix}`;
    cleanupNamespaces.push(ns);
    // The CRDs already exist (applied by kubectl above): --take-ownership lets the release adopt them.
    const out = await helm(["install", rel, CHART, "--namespace", ns, "--create-namespace", "--take-ownership"], { kubeconfig: kubeconfigPath() });
    expect(out).toContain("STATUS: deployed");
    const status = JSON.parse(await helm(["status", rel, "--namespace", ns, "--output", "json"], { kubeconfig: kubeconfigPath() })) as { info: { status: string } };
    expect(status.info.status).toBe("deployed");
    await kubeAdmin().expect("GET", `/apis/apps/v1/namespaces/${ns}/deployments/${rel}`);
    await kubeAdmin().expect("GET", `/apis/rbac.authorization.k8s.io/v1/clusterroles/${rel}-operator`);

    // Aggregation (kube-controller-manager): "edit" may now manage CEs and Runs, "view" only read them.
    const sar = async (user: string, verb: string, resource: string): Promise<boolean> => {
      const r = await kubeAdmin().expect("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        apiVersion: "authorization.k8s.io/v1",
        kind: "SubjectAccessReview",
        spec: { user, resourceAttributes: { verb, group: "vmforge.dev", resource, namespace: ns } },
      });
      return (r.body as { status: { allowed?: boolean } }).status.allowed === true;
    };
    for (const [user, role] of [[`editor-${suffix}`, "edit"], [`viewer-${suffix}`, "view"]] as const) {
      await kubeAdmin().expect("POST", `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
        apiVersion: "rbac.authorization.k8s.io/v1",
        kind: "RoleBinding",
        metadata: { name: `${role}-${suffix}` },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: role },
        subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: user }],
      });
    }
    await vi.waitFor(async () => {
      expect(await sar(`editor-${suffix}`, "create", "computeenvironments")).toBe(true);
      expect(await sar(`editor-${suffix}`, "delete", "runs")).toBe(true);
      expect(await sar(`viewer-${suffix}`, "list", "runs")).toBe(true);
    }, WAIT);
    expect(await sar(`viewer-${suffix}`, "create", "runs")).toBe(false);

    const un = await helm(["uninstall", rel, "--namespace", ns], { kubeconfig: kubeconfigPath() });
    expect(un).toContain(`release "${rel}" uninstalled`);
    const gone = await kubeAdmin().request("GET", `/apis/rbac.authorization.k8s.io/v1/clusterroles/${rel}-operator`);
    expect(gone.status).toBe(404);
    // The CRDs carry helm.sh/resource-policy: keep; ComputeEnvironments survive an uninstall.
    await kubeAdmin().expect("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/computeenvironments.vmforge.dev");
    expect(un).toMatch(/These resources were kept due to the resource policy:\n\[CustomResourceDefinition\] computeenvironments\.vmforge\.dev/);
  });
});

describe("helm upgrade, Kubernetes version, optional objects", () => {
  it("helm upgrade updates the CRDs with the chart (and back); uninstall keeps them", async () => {
    const rel = `vmforge-upg-${suffix}`;
    const ns = `deploy-upg-${suffix}`;
    cleanupNamespaces.push(ns);
    const kc = { kubeconfig: kubeconfigPath() };
    const runsCrd = async () =>
      (await kubeAdmin().expect("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/runs.vmforge.dev")).body as {
        metadata: { annotations?: Record<string, string> };
        spec: { versions: { additionalPrinterColumns?: { name: string }[] }[] };
      };
    await helm(["install", rel, CHART, "--namespace", ns, "--create-namespace", "--take-ownership", "--set", "rbac.aggregateToDefaultRoles=false"], kc);
    expect((await runsCrd()).metadata.annotations).toMatchObject({ "helm.sh/resource-policy": "keep", "meta.helm.sh/release-name": rel });

    // The next chart version changes the Run CRD (a printer column here); helm upgrade applies it.
    const dir = await mkdtemp(join(tmpdir(), "vmforge-chart-next-"));
    tmpDirs.push(dir);
    const next = join(dir, "vmforge");
    await runTool("cp", ["-r", CHART, next]);
    const crdFile = join(next, "files", "crds", "runs.vmforge.dev.yaml");
    const crd = parseManifests(await readFile(crdFile, "utf8"))[0] as Manifest & { spec: { versions: { additionalPrinterColumns: { name: string; type: string; jsonPath: string }[] }[] } };
    crd.spec.versions[0]!.additionalPrinterColumns.push({ name: "Upgraded", type: "string", jsonPath: ".status.reason" });
    await writeFile(crdFile, stringify(crd));
    await helm(["upgrade", rel, next, "--namespace", ns, "--set", "rbac.aggregateToDefaultRoles=false"], kc);
    expect((await runsCrd()).spec.versions[0]!.additionalPrinterColumns?.map((c) => c.name)).toContain("Upgraded");
    await helm(["upgrade", rel, CHART, "--namespace", ns, "--set", "rbac.aggregateToDefaultRoles=false"], kc);
    expect((await runsCrd()).spec.versions[0]!.additionalPrinterColumns?.map((c) => c.name)).not.toContain("Upgraded");

    const un = await helm(["uninstall", rel, "--namespace", ns], kc);
    expect(un).toContain("[CustomResourceDefinition] runs.vmforge.dev");
    expect((await runsCrd()).spec.versions[0]!.additionalPrinterColumns?.length).toBeGreaterThan(0);
    // crds.install=false renders none (CRDs managed elsewhere).
    expect(byKind(parseManifests(await helmTemplate({ chart: CHART, release: "x", namespace: "x", setJson: { crds: { install: false } } })), "CustomResourceDefinition")).toEqual([]);
  });

  it("states and enforces the same minimum Kubernetes version in the chart and the kustomize base", async () => {
    const chart = parse(await readFile(join(CHART, "Chart.yaml"), "utf8")) as { kubeVersion: string };
    expect(chart.kubeVersion).toBe(`>=${MIN_KUBERNETES_VERSION}.0-0`);
    const [major, minor] = MIN_KUBERNETES_VERSION.split(".").map(Number) as [number, number];
    const older = `${major}.${minor - 1}.9`;
    const refused = await helmTemplate({ chart: CHART, release: "old", namespace: "old", kubeVersion: older }).then(
      () => "rendered",
      (e: unknown) => String(e),
    );
    expect(refused).toMatch(new RegExp(`chart requires kubeVersion: >=${MIN_KUBERNETES_VERSION.replace(".", "\\.")}\\.0-0 which is incompatible with Kubernetes v${older.replace(/\./g, "\\.")}`));
    const ok = parseManifests(await helmTemplate({ chart: CHART, release: "new", namespace: "new", kubeVersion: `${MIN_KUBERNETES_VERSION}.0` }));
    const annotation = "vmforge.dev/minimum-kubernetes-version";
    expect(one(ok, "Deployment").metadata.annotations?.[annotation]).toBe(MIN_KUBERNETES_VERSION);
    expect(one(kustomized, "Deployment").metadata.annotations?.[annotation]).toBe(MIN_KUBERNETES_VERSION);
    // The operator's own check passes against this cluster and reads the same number.
    await requireKubernetesVersion(KubeClient.fromKubeconfig(kubeconfigPath()));
  });

  it("renders a PodDisruptionBudget, a NetworkPolicy and a ServiceMonitor on request, which the apiserver accepts", async () => {
    const ns = `deploy-opt-${suffix}`;
    await createNamespace(ns, true);
    cleanupNamespaces.push(ns);
    const objs = parseManifests(
      await helmTemplate({
        chart: CHART,
        release: "opt",
        namespace: ns,
        setJson: {
          replicaCount: 2,
          podDisruptionBudget: { enabled: true },
          networkPolicy: { enabled: true, metricsFrom: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "monitoring" } } }] },
          metrics: { serviceMonitor: { enabled: true, labels: { release: "prom" } } },
          crds: { install: false },
          rbac: { create: false },
        },
      }),
    );
    const selector = (one(objs, "Deployment") as unknown as { spec: { selector: { matchLabels: Record<string, string> } } }).spec.selector.matchLabels;
    const pdb = one(objs, "PodDisruptionBudget") as unknown as { spec: { minAvailable: number; selector: { matchLabels: Record<string, string> } } };
    expect(pdb.spec).toEqual({ minAvailable: 1, selector: { matchLabels: selector } });
    const np = one(objs, "NetworkPolicy") as unknown as { spec: { podSelector: { matchLabels: Record<string, string> }; policyTypes: string[]; ingress: { ports: { port: string }[]; from: unknown[] }[]; egress: { ports: { port: number; protocol: string }[] }[] } };
    expect(np.spec.podSelector.matchLabels).toEqual(selector);
    expect(np.spec.policyTypes).toEqual(["Ingress", "Egress"]);
    expect(np.spec.ingress).toEqual([{ ports: [{ port: "metrics", protocol: "TCP" }], from: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "monitoring" } } }] }]);
    expect(np.spec.egress.flatMap((r) => r.ports.map((p) => `${p.port}/${p.protocol}`)).sort()).toEqual(["443/TCP", "53/TCP", "53/UDP", "6443/TCP"]);
    const sm = one(objs, "ServiceMonitor") as unknown as { apiVersion: string; metadata: { labels: Record<string, string> }; spec: { selector: { matchLabels: Record<string, string> }; endpoints: { port: string; path: string }[] } };
    expect(sm.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(sm.metadata.labels.release).toBe("prom");
    const svc = one(objs, "Service") as unknown as { spec: { selector: Record<string, string>; ports: { name: string }[] } };
    expect(sm.spec.selector.matchLabels).toEqual(svc.spec.selector);
    expect(sm.spec.endpoints).toEqual([expect.objectContaining({ port: svc.spec.ports[0]!.name, path: "/metrics" })]);
    // PDB and NetworkPolicy are accepted as rendered (there is no ServiceMonitor CRD here).
    const accepted = objs.filter((o) => ["PodDisruptionBudget", "NetworkPolicy"].includes(o.kind));
    await kubectlApply(kubeconfigPath(), accepted.map((o) => stringify(o)).join("---\n"), { dryRun: true });
    // Off by default; a ServiceMonitor without the Service it scrapes is refused.
    expect(helmDefault.filter((o) => ["PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"].includes(o.kind))).toEqual([]);
    const bad = await helmTemplate({ chart: CHART, release: "x", namespace: "x", setJson: { metrics: { service: { enabled: false }, serviceMonitor: { enabled: true } } } }).then(
      () => "rendered",
      (e: unknown) => String(e),
    );
    expect(bad).toContain("metrics.serviceMonitor.enabled needs metrics.service.enabled=true");
  });

  it("renders the proxy settings into the container's environment", async () => {
    const objs = parseManifests(await helmTemplate({ chart: CHART, release: "p", namespace: "p", setJson: { proxy: { httpsProxy: "http://proxy.corp:3128", noProxy: ".corp.example,10.0.0.0/8" } } }));
    const env = envOf(one(objs, "Deployment"));
    expect(env.get("NODE_USE_ENV_PROXY")).toBe("1");
    expect(env.get("HTTPS_PROXY")).toBe("http://proxy.corp:3128");
    expect(env.has("HTTP_PROXY")).toBe(false);
    expect(env.get("NO_PROXY")?.split(",")).toEqual(expect.arrayContaining(["kubernetes.default.svc", ".svc", "169.254.169.254", ".corp.example", "10.0.0.0/8"]));
    expect([...envOf(one(helmDefault, "Deployment")).keys()].filter((k) => /PROXY/.test(k))).toEqual([]);
  });
});

describe("release assets (.github/scripts/release-assets.sh, as the release workflow runs it)", () => {
  it("renders the chart, the CRDs and the single-file install manifest for the release's image; the manifest installs", async () => {
    const version = (parse(await readFile(join(CHART, "Chart.yaml"), "utf8")) as { appVersion: string }).appVersion;
    const out = await mkdtemp(join(tmpdir(), "vmforge-release-"));
    tmpDirs.push(out);
    const helmBin = await ensureHelm();
    const r = await runTool("bash", [join(REPO_ROOT, ".github", "scripts", "release-assets.sh"), version, "ghcr.io/acme/vmforge", out], {
      env: { PATH: `${join(helmBin, "..")}:${process.env.PATH ?? ""}`, HELM_CONFIG_HOME: join(out, ".helm"), HELM_CACHE_HOME: join(out, ".helm"), HELM_DATA_HOME: join(out, ".helm") },
    });
    expect(r.code, r.stderr).toBe(0);
    expect((await readdir(out)).filter((f) => !f.startsWith(".")).sort()).toEqual([`vmforge-${version}.tgz`, "vmforge-crds.yaml", "vmforge-install.yaml"].sort());

    const crds = parseManifests(await readFile(join(out, "vmforge-crds.yaml"), "utf8"));
    expect(crds).toEqual(await generatedCrds());

    const install = parseManifests(await readFile(join(out, "vmforge-install.yaml"), "utf8"));
    expect(install.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(kustomized.map((o) => `${o.kind}/${o.metadata.name}`).sort());
    expect(podOf(one(install, "Deployment")).containers[0]!.image).toBe(`ghcr.io/acme/vmforge:${version}`);
    // Applied as the release notes say (server-side); the Deployment is there with that image.
    await kubectlApply(kubeconfigPath(), await readFile(join(out, "vmforge-install.yaml"), "utf8"));
    cleanupRbac.push(install);
    const dep = await kubeAdmin().expect("GET", "/apis/apps/v1/namespaces/vmforge-system/deployments/vmforge");
    expect((dep.body as { spec: { template: { spec: PodSpec } } }).spec.template.spec.containers[0]!.image).toBe(`ghcr.io/acme/vmforge:${version}`);
    cleanupNamespaces.push("vmforge-system");

    // The packaged chart defaults to the same image and tag.
    const fromTgz = parseManifests(await helmTemplate({ chart: join(out, `vmforge-${version}.tgz`), release: "rel", namespace: "rel" }));
    expect(podOf(one(fromTgz, "Deployment")).containers[0]!.image).toBe(`ghcr.io/acme/vmforge:${version}`);
  });
});
