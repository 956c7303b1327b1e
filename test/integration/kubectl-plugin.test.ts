// `kubectl vmforge` as a user runs it: plugin/build.sh builds the single executable, it is put on
// PATH under its plugin name, and kubectl (when installed) finds and runs it against the real
// kube-apiserver; logs are read from moto's CloudWatch Logs through the real AWS provider, and
// from the Azure emulator's Log Analytics through the real Azure provider. The
// Run and CE statuses are written here as the operator would (the operator itself is not needed).
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CloudWatchLogsClient, CreateLogGroupCommand, CreateLogStreamCommand, PutLogEventsCommand } from "@aws-sdk/client-cloudwatch-logs";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parse, stringify } from "yaml";
import { ResourceManagementClient } from "@azure/arm-resources";
import { OperationalInsightsManagementClient } from "@azure/arm-operationalinsights";
import { MonitorClient } from "@azure/arm-monitor";
import { ClientSecretCredential } from "@azure/identity";
import { LogsIngestionClient } from "@azure/monitor-ingestion";
import { awsTestConfig, azureCaPath, azureClientOptions, azureControl, azureCredentialOptions, azureEndpoint, azureInfo, azureTestCredential, deleteNamespace, freshNamespace, kubeAdmin, kubeconfigPath, motoEndpoint } from "../harness/helpers.js";
import { seedPath } from "../harness/seed-policy.js";
import { LOG_COLUMNS, LOG_STREAM, LOG_TABLE } from "../../src/cloud/azure/names.js";
import { KUBECTL, removeServiceAccountKubeconfigs, runTool, runToolOk, serviceAccountKubeconfig } from "../harness/helm.js";
import { REPO_ROOT } from "../harness/paths.js";
import { logGroupName, logStreamName } from "../../src/cloud/aws/logs.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { KubeClient } from "../../src/engine/kube.js";
import { installCrds } from "../support/operator.js";

const WAIT = { timeout: 60_000, interval: 250 };
const AZURE_SPEC = {
  subscriptionId: "00000000-1111-2222-3333-444444444444",
  location: "westeurope",
  storageAccount: "pipelinestore01",
  workDir: "az://nextflow-work/runs",
};
const MERGE = "application/merge-patch+json";

let dir = "";
let binDir = "";
let ns = "";
let kubeconfig = "";
let useKubectl = false;
const region = "eu-west-1";
let logs: CloudWatchLogsClient;
let ce: ComputeEnvironment;
let run: Run;

/** Environment of a user's shell: the plugin's folder first on PATH, AWS pointed at moto. */
function userEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    PATH: `${binDir}:${process.env.PATH ?? ""}`,
    HOME: dir,
    KUBECONFIG: kubeconfig,
    VMFORGE_AWS_ENDPOINT: motoEndpoint(),
    // No ambient AWS identity unless a test gives one.
    AWS_ACCESS_KEY_ID: "",
    AWS_SECRET_ACCESS_KEY: "",
    AWS_CONFIG_FILE: join(dir, "no-aws-config"),
    AWS_SHARED_CREDENTIALS_FILE: join(dir, "no-aws-credentials"),
    AWS_EC2_METADATA_DISABLED: "true",
    ...extra,
  };
}

/** `kubectl vmforge <args>` when kubectl is installed, else the executable itself. */
function plugin(args: string[], env: NodeJS.ProcessEnv = {}) {
  return useKubectl ? runTool(KUBECTL, ["vmforge", ...args], { env: userEnv(env) }) : runTool(join(binDir, "kubectl-vmforge"), args, { env: userEnv(env) });
}

const ceBase = (name: string) => `/apis/vmforge.dev/v1alpha1/namespaces/${ns}/computeenvironments${name ? `/${name}` : ""}`;
const runBase = (name: string) => `/apis/vmforge.dev/v1alpha1/namespaces/${ns}/runs${name ? `/${name}` : ""}`;

async function putLines(lines: string[]): Promise<void> {
  const t = Date.now();
  await logs.send(new PutLogEventsCommand({ logGroupName: logGroupName(ce), logStreamName: logStreamName(run), logEvents: lines.map((message, i) => ({ message, timestamp: t + i })) }));
}

/**
 * A Log Analytics workspace with vmforge's run log table, fed through a data collection rule as a
 * Run's VM feeds it (lines for `runUid`), and a user who may read it with the seed's logs role.
 */
async function azureRunLog(runUid: string, lines: string[]): Promise<{ customerId: string; tenantId: string; user: { clientId: string; secret: string } }> {
  const info = await azureInfo();
  const admin = await azureTestCredential();
  const o = azureClientOptions();
  const rg = `plugin-logs-${ns}`;
  await new ResourceManagementClient(admin, info.subscriptionId, o).resourceGroups.createOrUpdate(rg, { location: "westeurope" });
  const la = new OperationalInsightsManagementClient(admin, info.subscriptionId, o);
  const ws = await la.workspaces.createOrUpdate(rg, "logs", { location: "westeurope" });
  await la.tables.createOrUpdate(rg, "logs", LOG_TABLE, { schema: { name: LOG_TABLE, columns: LOG_COLUMNS.map((c) => ({ name: c.name, type: c.type === "datetime" ? "dateTime" : c.type })) } });
  const mon = new MonitorClient(admin, info.subscriptionId, o);
  const dce = await mon.dataCollectionEndpoints.create(rg, "dce", { body: { location: "westeurope" } });
  const dcr = await mon.dataCollectionRules.create(rg, "dcr", {
    body: {
      location: "westeurope",
      dataCollectionEndpointId: dce.id,
      streamDeclarations: { [LOG_STREAM]: { columns: LOG_COLUMNS.map((c) => ({ name: c.name, type: c.type })) } },
      destinations: { logAnalytics: [{ workspaceResourceId: ws.id, name: "la" }] },
      dataFlows: [{ streams: [LOG_STREAM], destinations: ["la"], transformKql: "source", outputStream: `Custom-${LOG_TABLE}` }],
    },
  });
  const vm = await azureControl().createPrincipal({ displayName: `vm-${ns}` });
  await azureControl().assignRole({ principalId: vm.objectId, scope: dcr.id!, roleName: "Monitoring Metrics Publisher" });
  const vmCred = new ClientSecretCredential(info.tenantId, vm.clientId, vm.secret!, azureCredentialOptions());
  const t = Date.now();
  await new LogsIngestionClient(dce.logsIngestion!.endpoint!, vmCred).upload(dcr.immutableId!, LOG_STREAM, lines.map((Line, i) => ({ TimeGenerated: new Date(t + i).toISOString(), RunUid: runUid, Stream: "stdout", Seq: i + 1, Line })));
  const user = await azureControl().createPrincipal({ displayName: `user-${ns}` });
  await azureControl().grantSeedRole({ principalId: user.objectId, seedFile: seedPath("001"), roleName: "seqera-azure-cloud-logs", subscriptionId: info.subscriptionId });
  return { customerId: ws.customerId!, tenantId: info.tenantId, user: { clientId: user.clientId, secret: user.secret! } };
}

async function setRunStatus(status: Record<string, unknown>): Promise<void> {
  await kubeAdmin().expect("PATCH", `${runBase(run.metadata.name!)}/status`, { status }, [], MERGE);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "vmforge-plugin-test-"));
  binDir = join(dir, "bin");
  // Built exactly as CI builds it, into a folder that plays the user's ~/bin.
  await runToolOk("bash", [join(REPO_ROOT, "plugin", "build.sh"), "--out", binDir]);
  useKubectl = (await runTool(KUBECTL, ["version", "--client"]).catch(() => ({ code: 1 }))).code === 0;

  await installCrds(KubeClient.fromKubeconfig(kubeconfigPath()));
  ns = await freshNamespace("plugin");
  // The user's kubeconfig: the admin's, with the test namespace as the context's namespace, plus a
  // second context whose namespace is another one (for --context).
  const admin = parse(await readFile(kubeconfigPath(), "utf8")) as { contexts: { name: string; context: Record<string, string> }[]; "current-context": string };
  const cur = admin.contexts.find((c) => c.name === admin["current-context"])!;
  admin.contexts = [
    { name: "work", context: { ...cur.context, namespace: ns } },
    { name: "elsewhere", context: { ...cur.context, namespace: "default" } },
  ];
  admin["current-context"] = "work";
  kubeconfig = join(dir, "kubeconfig");
  await writeFile(kubeconfig, stringify(admin), { mode: 0o600 });

  await kubeAdmin().expect("POST", `/api/v1/namespaces/${ns}/secrets`, { apiVersion: "v1", kind: "Secret", metadata: { name: "creds" }, stringData: { accessKeyId: "testing", secretAccessKey: "testing" } });
  ce = (
    await kubeAdmin().expect("POST", ceBase(""), {
      apiVersion: "vmforge.dev/v1alpha1",
      kind: "ComputeEnvironment",
      metadata: { name: "env1" },
      spec: { provider: "aws", credentials: { secretRef: { name: "creds" } }, aws: { region, workDir: "s3://plugin-work/work" } },
    })
  ).body as ComputeEnvironment;
  run = (
    await kubeAdmin().expect("POST", runBase(""), {
      apiVersion: "vmforge.dev/v1alpha1",
      kind: "Run",
      metadata: { name: "run1" },
      spec: { computeEnvironmentRef: { name: "env1" }, pipeline: { repository: "https://github.com/nextflow-io/hello", revision: "master" } },
    })
  ).body as Run;
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  await kubeAdmin().expect(
    "PATCH",
    `${ceBase("env1")}/status`,
    {
      status: {
        phase: "Ready",
        observedGeneration: 1,
        conditions: [{ type: "Ready", status: "True", reason: "Provisioned", message: "cloud resources in place", lastTransitionTime: now, observedGeneration: 1 }],
        resources: [{ kind: "IAMRole", id: "arn:aws:iam::123456789012:role/TowerForge-env1-abcd1234", name: "TowerForge-env1-abcd1234" }],
        aws: { accountId: "123456789012", vpcId: "vpc-0abc", subnetIds: ["subnet-1", "subnet-2"] },
      },
    },
    [],
    MERGE,
  );
  await setRunStatus({
    phase: "Running",
    reason: "Running",
    message: "machine i-0plugin running",
    observedGeneration: 1,
    instance: { id: "i-0plugin", type: "m6i.large", zone: `${region}a`, state: "running" },
    conditions: [{ type: "Ready", status: "False", reason: "Running", message: "machine i-0plugin running", lastTransitionTime: now, observedGeneration: 1 }],
  });
  await kubeAdmin().expect("POST", `/apis/events.k8s.io/v1/namespaces/${ns}/events`, {
    apiVersion: "events.k8s.io/v1",
    kind: "Event",
    metadata: { name: `run1.${Date.now()}` },
    eventTime: new Date().toISOString().replace("Z", "000Z"),
    reportingController: "vmforge.dev/operator",
    reportingInstance: "plugin-test",
    action: "Launch",
    reason: "Launched",
    type: "Normal",
    note: "launched machine i-0plugin",
    regarding: { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", name: "run1", namespace: ns, uid: run.metadata.uid },
  });

  logs = new CloudWatchLogsClient(awsTestConfig(region));
  await logs.send(new CreateLogGroupCommand({ logGroupName: logGroupName(ce) }));
  await logs.send(new CreateLogStreamCommand({ logGroupName: logGroupName(ce), logStreamName: logStreamName(run) }));
  await putLines(["vmforge: launcher output goes to /var/log/vmforge/run.log", "[vmforge 2026-01-01T00:00:00Z] vmforge launcher for Run x", "N E X T F L O W  ~  version 25.04.0", "Hello world!"]);
}, 600_000);

afterAll(async () => {
  logs?.destroy();
  if (ns) await deleteNamespace(ns);
  await removeServiceAccountKubeconfigs();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("kubectl vmforge", () => {
  it("is one executable file that runs without a Node.js on PATH", async () => {
    expect(existsSync(join(binDir, "kubectl-vmforge"))).toBe(true);
    const r = await runTool(join(binDir, "kubectl-vmforge"), ["--help"], { env: { PATH: "/nonexistent" } });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("kubectl vmforge logs <run>");
  });

  it("is found by kubectl as a plugin", async () => {
    if (!useKubectl) return;
    const list = await runTool(KUBECTL, ["plugin", "list"], { env: userEnv() });
    expect(list.stdout).toContain(join(binDir, "kubectl-vmforge"));
  });

  it("logs: the pipeline's output from CloudWatch Logs, with --launcher also the launcher's lines, in the kubeconfig's namespace", async () => {
    const r = await plugin(["logs", "run1"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("N E X T F L O W  ~  version 25.04.0\nHello world!\n");
    const all = await plugin(["logs", "run1", "--launcher"]);
    expect(all.stdout.split("\n").slice(0, 2)).toEqual(["vmforge: launcher output goes to /var/log/vmforge/run.log", "[vmforge 2026-01-01T00:00:00Z] vmforge launcher for Run x"]);
    expect(all.stdout).toContain("Hello world!");
  });

  it("logs -f follows a running Run until it has ended", async () => {
    const env = userEnv();
    const child = useKubectl ? spawn(KUBECTL, ["vmforge", "logs", "run1", "-f"], { env }) : spawn(join(binDir, "kubectl-vmforge"), ["logs", "run1", "-f"], { env });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
    try {
      await vi.waitFor(() => expect(out).toContain("Hello world!"), WAIT);
      await putLines(["[process] sayHello done", "VMFORGE_EXIT_CODE=0"]);
      await vi.waitFor(() => expect(out).toContain("[process] sayHello done"), WAIT);
      await setRunStatus({ phase: "Succeeded", reason: "Succeeded", exitCode: 0, completionTime: new Date().toISOString().replace(/\.\d+Z$/, "Z") });
      expect(await exited).toBe(0);
      expect(out).not.toContain("VMFORGE_EXIT_CODE");
    } finally {
      child.kill();
    }
  });

  it("describe: phase, machine, conditions and Events of a Run; cloud resources of a CE", async () => {
    const r = await plugin(["describe", "run", "run1"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Name: +run1$/m);
    expect(r.stdout).toMatch(/^Phase: +Succeeded \(Succeeded\)$/m);
    expect(r.stdout).toMatch(/^Machine: +i-0plugin m6i\.large, eu-west-1a, state running$/m);
    expect(r.stdout).toMatch(/^Exit code: +0$/m);
    expect(r.stdout).toMatch(/^ +Ready +False +Running /m);
    expect(r.stdout).toMatch(/^Events:\n.*\n +\S+ +Normal +Launched +1 +launched machine i-0plugin$/m);

    const c = await plugin(["describe", "ce", "env1"]);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stdout).toMatch(/^Phase: +Ready$/m);
    expect(c.stdout).toMatch(/^Region: +eu-west-1$/m);
    expect(c.stdout).toMatch(/^ +IAMRole +TowerForge-env1-abcd1234 +arn:aws:iam::123456789012:role\/TowerForge-env1-abcd1234$/m);
    expect(c.stdout).toMatch(/^ +subnetIds: +subnet-1, subnet-2$/m);
    // A bare name finds the CE when no Run has it.
    expect((await plugin(["describe", "env1"])).stdout).toMatch(/^Kind: +ComputeEnvironment$/m);
  });

  it("--context and -n choose the namespace as kubectl does; a missing object is a clear error", async () => {
    const other = await plugin(["describe", "run", "run1", "--context", "elsewhere"]);
    expect(other.code).toBe(1);
    expect(other.stderr).toBe('error: runs.vmforge.dev "run1" not found in namespace "default"\n');
    const back = await plugin(["describe", "run", "run1", "--context", "elsewhere", "-n", ns]);
    expect(back.code, back.stderr).toBe(0);
    const bad = await plugin(["describe", "run", "run1", "--context", "nosuch"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('context "nosuch" does not exist');
  });

  it("cancel sets spec.cancel on an active Run, and says so when the Run already ended", async () => {
    const r2 = (await kubeAdmin().expect("POST", runBase(""), { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "run2" }, spec: { computeEnvironmentRef: { name: "env1" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } } })).body as Run;
    const r = await plugin(["cancel", "run2"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("run.vmforge.dev/run2 cancel requested\n");
    const stored = (await kubeAdmin().expect("GET", runBase("run2"))).body as Run;
    expect(stored.spec.cancel).toBe(true);
    expect(stored.metadata.uid).toBe(r2.metadata.uid);
    const ended = await plugin(["cancel", "run1"]);
    expect(ended.stdout).toBe("run.vmforge.dev/run1 already ended Succeeded; nothing to cancel\n");
  });

  it("logs for a user who may read Runs but not Secrets use the user's own cloud identity", async () => {
    await kubeAdmin().expect("POST", `/api/v1/namespaces/${ns}/serviceaccounts`, { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "reader" } });
    await kubeAdmin().expect("POST", `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "Role",
      metadata: { name: "runs-reader" },
      rules: [
        { apiGroups: ["vmforge.dev"], resources: ["runs", "computeenvironments"], verbs: ["get", "list", "watch"] },
        { apiGroups: [""], resources: ["events"], verbs: ["get", "list", "watch"] },
      ],
    });
    await kubeAdmin().expect("POST", `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "RoleBinding",
      metadata: { name: "runs-reader" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "runs-reader" },
      subjects: [{ kind: "ServiceAccount", name: "reader", namespace: ns }],
    });
    const readerKc = await serviceAccountKubeconfig(kubeconfigPath(), ns, "reader");
    // Without an identity of their own the read fails, and says why.
    const denied = await plugin(["logs", "run1", "--kubeconfig", readerKc]);
    expect(denied.stderr).toContain(`note: you may not read Secret ${ns}/creds; reading the log with your own AWS identity`);
    expect(denied.code).toBe(1);
    // With their own AWS credentials in the environment it works.
    const own = await plugin(["logs", "run1", "--kubeconfig", readerKc], { AWS_ACCESS_KEY_ID: "testing", AWS_SECRET_ACCESS_KEY: "testing" });
    expect(own.code, own.stderr).toBe(0);
    expect(own.stdout).toContain("Hello world!");
    // On Azure the user's own identity as well: AZURE_TENANT_ID/CLIENT_ID/CLIENT_SECRET, else the
    // Azure CLI login. The Run's log is in the emulator's Log Analytics, put there as a VM would.
    await kubeAdmin().expect("POST", ceBase(""), {
      apiVersion: "vmforge.dev/v1alpha1",
      kind: "ComputeEnvironment",
      metadata: { name: "az" },
      spec: { provider: "azure", credentials: { secretRef: { name: "creds" } }, azure: AZURE_SPEC },
    });
    const azRun = (await kubeAdmin().expect("POST", runBase(""), { apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name: "azrun" }, spec: { computeEnvironmentRef: { name: "az" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } } })).body as Run;
    const logsWs = await azureRunLog(azRun.metadata.uid!, ["N E X T F L O W  ~  version 25.04.0", "Hola world!"]);
    await kubeAdmin().expect("PATCH", `${ceBase("az")}/status`, { status: { azure: { workspaceCustomerId: logsWs.customerId } } }, [], MERGE);
    const azureEnv = {
      VMFORGE_AZURE_ARM_ENDPOINT: azureEndpoint(),
      VMFORGE_AZURE_AUTHORITY_HOST: azureEndpoint(),
      VMFORGE_AZURE_LOGS_ENDPOINT: `${azureEndpoint()}/loganalytics/v1`,
      VMFORGE_AZURE_CA_FILE: azureCaPath(),
      // no Azure CLI on this machine: the fallback fails, and says which identity it tried
      PATH: `${binDir}:/usr/bin:/bin`,
    };
    const noIdentity = await plugin(["logs", "azrun", "--kubeconfig", readerKc], azureEnv);
    expect(noIdentity.code).toBe(1);
    expect(noIdentity.stderr).toContain(`note: you may not read Secret ${ns}/creds; reading the log with your own Azure identity`);
    expect(noIdentity.stderr).toContain("your Azure CLI login (az login)");
    const ownAz = await plugin(["logs", "azrun", "--kubeconfig", readerKc], { ...azureEnv, AZURE_TENANT_ID: logsWs.tenantId, AZURE_CLIENT_ID: logsWs.user.clientId, AZURE_CLIENT_SECRET: logsWs.user.secret });
    expect(ownAz.code, ownAz.stderr).toBe(0);
    expect(ownAz.stdout).toBe("N E X T F L O W  ~  version 25.04.0\nHola world!\n");
    expect(ownAz.stderr).not.toContain(logsWs.user.secret);
    // describe needs no Secret at all.
    expect((await plugin(["describe", "run", "run1", "--kubeconfig", readerKc])).code).toBe(0);
  });

  it("policy aws|azure print the operator's permissions; unknown commands are usage errors", async () => {
    const r = await plugin(["policy", "aws", "--document"]);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as { Version: string; Statement: { Action: string[] }[] };
    expect(doc.Version).toBe("2012-10-17");
    expect(doc.Statement.flatMap((s) => s.Action)).toContain("ec2:RunInstances");
    const azure = await plugin(["policy", "azure", "--subscription", "00000000-0000-0000-0000-000000000001"]);
    expect(azure.code, azure.stderr).toBe(0);
    const roles = JSON.parse(azure.stdout) as { properties: { roleName: string; assignableScopes: string[] } }[];
    expect(roles.length).toBeGreaterThan(1);
    for (const r of roles) expect(r.properties.assignableScopes).toEqual(["/subscriptions/00000000-0000-0000-0000-000000000001"]);
    const bad = await plugin(["frobnicate"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('unknown command "frobnicate"');
  });
});
