// Invariants of the plain manifests in deploy/ and of the Helm chart's values, read as files (no
// kustomize, no helm, no cluster). The rendered output is checked against a real apiserver in
// test/integration/deploy-manifests.test.ts.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { parse, parseAllDocuments } from "yaml";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../../src/config.js";
import { DURATION_PATTERN } from "../../../src/api/duration.js";
import { MIN_KUBERNETES_VERSION, serverMinor, versionProblem } from "../../../src/kube-version.js";

const ROOT = join(import.meta.dirname, "..", "..", "..");
const DEPLOY = join(ROOT, "deploy");
const CHART = join(ROOT, "helm", "vmforge");
/** Default image: what the release workflow publishes for the repository vmforge/vmforge. */
const IMAGE = "ghcr.io/vmforge/vmforge";

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [k: string]: unknown;
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface Probe {
  httpGet?: { path: string; port: string | number };
}
interface Container {
  name: string;
  image: string;
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number }[];
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: Record<string, unknown> & { capabilities?: { drop?: string[]; add?: string[] } };
}
interface PodSpec {
  serviceAccountName: string;
  securityContext?: Record<string, unknown> & { seccompProfile?: { type: string } };
  containers: Container[];
  terminationGracePeriodSeconds?: number;
}
interface Rule {
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  verbs: string[];
}

function readYamlDocs(file: string): Obj[] {
  return parseAllDocuments(readFileSync(file, "utf8"))
    .map((d) => d.toJS() as Obj | null)
    .filter((o): o is Obj => o !== null);
}

const files = ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "deployment.yaml", "service.yaml"];
const objects = files.flatMap((f) => readYamlDocs(join(DEPLOY, f)));
const find = (kind: string, name: string): Obj => {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`deploy/ has no ${kind} ${name}`);
  return o;
};

const deployment = find("Deployment", "vmforge") as Obj & {
  spec: { replicas: number; selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
};
const pod = deployment.spec.template.spec;
const container = pod.containers[0]!;
const env = new Map((container.env ?? []).map((e) => [e.name, e]));
const envValue = (name: string): string | undefined => env.get(name)?.value;

/** VMFORGE_* variables src/config.ts reads, found in its text (so a new setting cannot be missed). */
const configSource = readFileSync(join(ROOT, "src", "config.ts"), "utf8");
const configVars = new Set([...configSource.matchAll(/\bVMFORGE_[A-Z0-9_]+\b/g)].map((m) => m[0]));
/** Settings the manifests deliberately leave to their defaults. */
const NOT_SET = new Set(["VMFORGE_LEADER_ELECTION_NAMESPACE"]); // defaults to POD_NAMESPACE, where the Role is

const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };

describe("deploy/ kustomization", () => {
  const k = parse(readFileSync(join(DEPLOY, "kustomization.yaml"), "utf8")) as { namespace: string; resources: string[]; images?: { name: string; newTag?: string }[] };

  it("lists every manifest file and the CRD folder, all of which exist", () => {
    expect(k.resources).toEqual(expect.arrayContaining([...files, "crds"]));
    for (const r of k.resources) expect(existsSync(join(DEPLOY, r)), r).toBe(true);
    expect(k.namespace).toBe("vmforge-system");
  });

  it("crds/kustomization.yaml lists exactly the CRD files next to it", () => {
    const inner = parse(readFileSync(join(DEPLOY, "crds", "kustomization.yaml"), "utf8")) as { resources: string[] };
    const onDisk = readdirSync(join(DEPLOY, "crds")).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
    expect(onDisk.length).toBeGreaterThan(0);
    expect([...inner.resources].sort()).toEqual(onDisk.sort());
  });

  it("puts every namespaced object in vmforge-system", () => {
    for (const o of objects) {
      if (["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(o.kind)) expect(o.metadata.namespace, `${o.kind} ${o.metadata.name}`).toBeUndefined();
      else expect(o.metadata.namespace, `${o.kind} ${o.metadata.name}`).toBe("vmforge-system");
    }
  });

  it("uses the package version as image tag", () => {
    expect(k.images).toEqual([{ name: IMAGE, newTag: pkg.version }]);
    expect(container.image).toBe(`${IMAGE}:${pkg.version}`);
  });
});

describe("deploy/deployment.yaml", () => {
  it("runs one replica whose pods match the selector", () => {
    expect(deployment.spec.replicas).toBe(1);
    expect(deployment.spec.template.metadata.labels).toMatchObject(deployment.spec.selector.matchLabels);
  });

  it("is locked down: non-root, read-only root, no capabilities, RuntimeDefault seccomp", () => {
    expect(pod.securityContext?.runAsNonRoot).toBe(true);
    expect(pod.securityContext?.runAsUser).toBe(65532);
    expect(pod.securityContext?.seccompProfile?.type).toBe("RuntimeDefault");
    const sc = container.securityContext ?? {};
    expect(sc.readOnlyRootFilesystem).toBe(true);
    expect(sc.allowPrivilegeEscalation).toBe(false);
    expect(sc.runAsNonRoot).toBe(true);
    expect(sc.capabilities?.drop).toEqual(["ALL"]);
    expect(sc.capabilities?.add).toBeUndefined();
    expect(sc.privileged).toBeUndefined();
  });

  it("probes /healthz and /readyz on the port the operator serves metrics on", () => {
    const address = envValue("VMFORGE_METRICS_ADDRESS");
    const port = Number(/:(\d+)$/.exec(address ?? "")?.[1]);
    expect(port).toBe(8080);
    const named = container.ports?.find((p) => p.name === "metrics");
    expect(named?.containerPort).toBe(port);
    expect(container.livenessProbe?.httpGet).toEqual({ path: "/healthz", port: "metrics" });
    expect(container.readinessProbe?.httpGet).toEqual({ path: "/readyz", port: "metrics" });
  });

  it("sets CPU and memory requests and limits", () => {
    for (const kind of ["requests", "limits"] as const) {
      expect(container.resources?.[kind]?.cpu, kind).toBeTruthy();
      expect(container.resources?.[kind]?.memory, kind).toBeTruthy();
    }
  });

  it("passes the pod name and namespace through the downward API", () => {
    expect(env.get("POD_NAME")?.valueFrom?.fieldRef?.fieldPath).toBe("metadata.name");
    expect(env.get("POD_NAMESPACE")?.valueFrom?.fieldRef?.fieldPath).toBe("metadata.namespace");
  });

  it("sets exactly the VMFORGE_ variables src/config.ts reads", () => {
    expect(configVars.size).toBeGreaterThan(5);
    const set = [...env.keys()].filter((n) => n.startsWith("VMFORGE_"));
    for (const name of set) expect(configVars, `${name} is not read by src/config.ts`).toContain(name);
    const expected = [...configVars].filter((n) => !NOT_SET.has(n)).sort();
    expect(set.sort()).toEqual(expected);
  });

  it("has values that src/config.ts accepts, with leader election on in the pod's namespace", () => {
    const vars: NodeJS.ProcessEnv = { POD_NAME: "vmforge-abc", POD_NAMESPACE: deployment.metadata.namespace };
    for (const [name, e] of env) if (e.value !== undefined) vars[name] = e.value;
    const config = loadConfig(vars);
    expect(config.leaderElection).toBe(true);
    expect(config.leaseNamespace).toBe("vmforge-system");
    expect(config.identity).toBe("vmforge-abc");
    expect(config.namespaces).toEqual([]);
    expect(config.metricsAddress).toBe(":8080");
    // Enough grace for the operator's own shutdown deadline.
    expect((pod.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThan(config.shutdownTimeoutMs);
  });

  it("runs as the ServiceAccount the bindings grant rights to", () => {
    const sa = find("ServiceAccount", pod.serviceAccountName);
    for (const b of objects.filter((o) => o.kind.endsWith("Binding"))) {
      const subjects = (b as Obj & { subjects: { kind: string; name: string; namespace: string }[] }).subjects;
      expect(subjects).toEqual([{ kind: "ServiceAccount", name: sa.metadata.name, namespace: "vmforge-system" }]);
    }
  });

  it("is reachable for metrics through the Service", () => {
    const svc = find("Service", "vmforge-metrics") as Obj & { spec: { selector: Record<string, string>; ports: { port: number; targetPort: string }[] } };
    expect(deployment.spec.template.metadata.labels).toMatchObject(svc.spec.selector);
    expect(svc.spec.ports).toEqual([expect.objectContaining({ name: "metrics", port: 8080, targetPort: "metrics" })]);
  });
});

describe("deploy/rbac.yaml", () => {
  const clusterRole = find("ClusterRole", "vmforge-operator") as Obj & { rules: Rule[] };
  const leaderRole = find("Role", "vmforge-leader-election") as Obj & { rules: Rule[] };

  it("grants the operator exactly what it uses, and no wildcards", () => {
    expect(clusterRole.rules).toEqual([
      { apiGroups: ["vmforge.dev"], resources: ["computeenvironments", "runs"], verbs: ["get", "list", "watch", "patch"] },
      { apiGroups: ["vmforge.dev"], resources: ["runs"], verbs: ["delete"] },
      { apiGroups: ["vmforge.dev"], resources: ["computeenvironments/status", "runs/status"], verbs: ["patch"] },
      { apiGroups: [""], resources: ["secrets"], verbs: ["get", "list", "watch", "patch"] },
      { apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"] },
    ]);
    for (const o of objects.filter((x) => x.kind === "ClusterRole" || x.kind === "Role")) {
      for (const r of (o as Obj & { rules: Rule[] }).rules) {
        expect([...(r.apiGroups ?? []), ...(r.resources ?? []), ...r.verbs], `${o.kind} ${o.metadata.name}`).not.toContain("*");
      }
    }
  });

  it("limits Lease get/update to the Lease the operator is configured with", () => {
    expect(leaderRole.rules).toEqual([
      { apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["create"] },
      { apiGroups: ["coordination.k8s.io"], resources: ["leases"], resourceNames: [envValue("VMFORGE_LEASE_NAME")], verbs: ["get", "update"] },
    ]);
  });

  it("binds the ClusterRole cluster-wide and the leader Role in the operator's namespace", () => {
    const crb = find("ClusterRoleBinding", "vmforge-operator") as Obj & { roleRef: { kind: string; name: string } };
    expect(crb.roleRef).toMatchObject({ kind: "ClusterRole", name: "vmforge-operator" });
    const rb = find("RoleBinding", "vmforge-leader-election") as Obj & { roleRef: { kind: string; name: string } };
    expect(rb.roleRef).toMatchObject({ kind: "Role", name: "vmforge-leader-election" });
    expect(rb.metadata.namespace).toBe("vmforge-system");
  });

  it("aggregates user rights on ComputeEnvironments and Runs into the built-in roles, read-only for view", () => {
    const edit = find("ClusterRole", "vmforge-edit");
    const view = find("ClusterRole", "vmforge-view") as Obj & { rules: Rule[] };
    expect(edit.metadata.labels).toMatchObject({ "rbac.authorization.k8s.io/aggregate-to-edit": "true", "rbac.authorization.k8s.io/aggregate-to-admin": "true" });
    expect(view.metadata.labels).toMatchObject({ "rbac.authorization.k8s.io/aggregate-to-view": "true" });
    expect(view.rules.flatMap((r) => r.verbs).sort()).toEqual(["get", "list", "watch"]);
  });
});

describe("deploy/namespace.yaml", () => {
  it("enforces the restricted Pod Security Standard", () => {
    expect(find("Namespace", "vmforge-system").metadata.labels).toMatchObject({ "pod-security.kubernetes.io/enforce": "restricted" });
  });
});

describe("helm/vmforge chart files", () => {
  const chart = parse(readFileSync(join(CHART, "Chart.yaml"), "utf8")) as { apiVersion: string; name: string; version: string; appVersion: string };
  const values = parse(readFileSync(join(CHART, "values.yaml"), "utf8")) as Record<string, unknown> & {
    workers: number;
    runWorkers: number;
    pollInterval: string;
    resyncPeriod: string;
    reconcileTimeout: string;
    shutdownTimeout: string;
    logLevel: string;
    replicaCount: number;
    watchNamespaces: string[];
    leaderElection: { enabled: boolean; leaseName: string; leaseDuration: string; renewDeadline: string; retryPeriod: string };
    metrics: { port: number };
    podSecurityContext: Record<string, unknown>;
    securityContext: Record<string, unknown>;
    resources: unknown;
  };
  const schema = JSON.parse(readFileSync(join(CHART, "values.schema.json"), "utf8")) as {
    additionalProperties: boolean;
    properties: Record<string, { properties?: Record<string, unknown>; enum?: string[] }>;
    definitions: { duration: { pattern: string } };
  };
  const deploymentTemplate = readFileSync(join(CHART, "templates", "deployment.yaml"), "utf8");

  it("defaults to the published image, tagged with the chart's appVersion", () => {
    expect((values as unknown as { image: { repository: string; tag: string } }).image).toMatchObject({ repository: IMAGE, tag: "" });
    expect(readFileSync(join(CHART, "templates", "_helpers.tpl"), "utf8")).toContain("default .Chart.AppVersion .Values.image.tag");
  });

  it("is a v2 chart whose appVersion is the package version", () => {
    expect(chart.apiVersion).toBe("v2");
    expect(chart.name).toBe("vmforge");
    expect(chart.appVersion).toBe(pkg.version);
  });

  it("defaults to the same settings as deploy/", () => {
    expect(values.replicaCount).toBe(deployment.spec.replicas);
    expect(values.watchNamespaces).toEqual([]);
    expect(String(values.workers)).toBe(envValue("VMFORGE_WORKERS"));
    expect(String(values.runWorkers)).toBe(envValue("VMFORGE_RUN_WORKERS"));
    expect(values.pollInterval).toBe(envValue("VMFORGE_POLL_INTERVAL"));
    expect(values.resyncPeriod).toBe(envValue("VMFORGE_RESYNC_PERIOD"));
    expect(values.reconcileTimeout).toBe(envValue("VMFORGE_RECONCILE_TIMEOUT"));
    expect(values.shutdownTimeout).toBe(envValue("VMFORGE_SHUTDOWN_TIMEOUT"));
    expect(values.azureExitLineGrace).toBe(envValue("VMFORGE_AZURE_EXIT_LINE_GRACE"));
    expect(values.logLevel).toBe(envValue("VMFORGE_LOG_LEVEL"));
    expect(String(values.leaderElection.enabled)).toBe(envValue("VMFORGE_LEADER_ELECTION"));
    expect(values.leaderElection.leaseName).toBe(envValue("VMFORGE_LEASE_NAME"));
    expect(values.leaderElection.leaseDuration).toBe(envValue("VMFORGE_LEASE_DURATION"));
    expect(values.leaderElection.renewDeadline).toBe(envValue("VMFORGE_LEASE_RENEW_DEADLINE"));
    expect(values.leaderElection.retryPeriod).toBe(envValue("VMFORGE_LEASE_RETRY_PERIOD"));
    expect(`:${values.metrics.port}`).toBe(envValue("VMFORGE_METRICS_ADDRESS"));
    expect(values.podSecurityContext).toEqual(pod.securityContext);
    expect(values.securityContext).toEqual(container.securityContext);
    expect(values.resources).toEqual(container.resources);
  });

  it("sets every VMFORGE_ variable of src/config.ts from a value", () => {
    for (const name of configVars) {
      if (NOT_SET.has(name)) continue;
      expect(deploymentTemplate, name).toContain(`- name: ${name}\n`);
    }
  });

  it("declares every value in values.schema.json and rejects unknown ones", () => {
    expect(schema.additionalProperties).toBe(false);
    expect(Object.keys(schema.properties).sort()).toEqual(Object.keys(values).sort());
  });

  it("validates durations and log levels the way src/config.ts does", () => {
    expect(schema.definitions.duration.pattern).toBe(DURATION_PATTERN);
    const levels = schema.properties.logLevel?.enum ?? [];
    expect(levels.length).toBeGreaterThan(3);
    for (const level of levels) expect(loadConfig({ VMFORGE_LOG_LEVEL: level }).logLevel).toBe(level);
  });

  it("refuses extraEnv entries that would shadow the variables the chart sets", () => {
    const extra = schema.properties.extraEnv as unknown as { items: { properties: { name: { not: { pattern: string } } } } };
    const forbidden = new RegExp(extra.items.properties.name.not.pattern);
    const setByChart = [...deploymentTemplate.matchAll(/- name: ([A-Z_][A-Z0-9_]*)\n/g)].map((m) => m[1]!);
    expect(setByChart).toContain("VMFORGE_WORKERS");
    for (const name of setByChart) expect(forbidden.test(name), name).toBe(true);
    // The proxy variables come from proxy.*, so they are the chart's too.
    for (const name of ["HTTPS_PROXY", "NO_PROXY", "NODE_USE_ENV_PROXY"]) expect(setByChart, name).toContain(name);
    expect(forbidden.test("AWS_REGION")).toBe(false);
    expect(forbidden.test("VMFORGE_LEADER_ELECTION_NAMESPACE")).toBe(false);
  });
});

describe("minimum Kubernetes version", () => {
  it("is the same in the chart's kubeVersion, both Deployments and the operator's check", () => {
    const chart = parse(readFileSync(join(CHART, "Chart.yaml"), "utf8")) as { kubeVersion: string };
    expect(chart.kubeVersion).toBe(`>=${MIN_KUBERNETES_VERSION}.0-0`);
    expect(deployment.metadata.annotations?.["vmforge.dev/minimum-kubernetes-version"]).toBe(MIN_KUBERNETES_VERSION);
    expect(readFileSync(join(CHART, "templates", "deployment.yaml"), "utf8")).toContain('vmforge.dev/minimum-kubernetes-version: {{ include "vmforge.minKubernetesVersion" . | quote }}');
  });

  it("refuses older API servers with a message, accepts newer ones and provider-style minors", () => {
    const [major, minor] = MIN_KUBERNETES_VERSION.split(".").map(Number) as [number, number];
    expect(versionProblem({ major: String(major), minor: String(minor - 1), gitVersion: `v${major}.${minor - 1}.4` })).toBe(`vmforge needs Kubernetes ${MIN_KUBERNETES_VERSION} or newer; the API server is v${major}.${minor - 1}.4`);
    expect(versionProblem({ major: String(major), minor: String(minor), gitVersion: `v${major}.${minor}.0` })).toBeUndefined();
    expect(versionProblem({ major: "1", minor: "36+", gitVersion: "v1.36.3-gke.100" })).toBeUndefined();
    expect(versionProblem({ major: "2", minor: "0" })).toBeUndefined();
    expect(serverMinor({ gitVersion: "v1.29.1-eks-abc" })).toEqual([1, 29]);
    expect(versionProblem({})).toMatch(/cannot tell the Kubernetes version/);
  });
});
