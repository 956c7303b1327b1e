// Admission of ComputeEnvironment and Run by the real kube-apiserver: the generated CRDs install,
// every malformed manifest under test/fixtures/invalid is rejected with the message its header
// names, every valid manifest is accepted with the schema defaults applied, and the update rules
// (immutability, once-only Runs, one-way cancel) hold.
//
// Talks to the apiserver with its own tiny HTTPS client (credentials via @kubernetes/client-node's
// KubeConfig), not with src/engine, so it tests the API definitions alone.
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { request, type RequestOptions } from "node:https";
import { setTimeout as sleep } from "node:timers/promises";
import { KubeConfig } from "@kubernetes/client-node";
import { parse } from "yaml";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { crdObjects, type CrdObject } from "../../src/api/crd.js";
import { admissionPolicyObjects, type PolicyObject } from "../../src/api/admission-policy.js";
import { defaultComputeEnvironmentSpec, defaultRunSpec } from "../../src/api/defaults.js";
import {
  DEFAULT_AZURE_VM_SIZE,
  DEFAULT_BOOT_DISK_GIB,
  GROUP,
  VERSION,
  type ComputeEnvironmentSpec,
  type RunSpec,
} from "../../src/api/types.js";

// ---------------------------------------------------------------------------------------------
// A minimal API client
// ---------------------------------------------------------------------------------------------

interface Reply {
  status: number;
  body: Record<string, unknown>;
}

const kc = new KubeConfig();
kc.loadFromFile(inject("kubeconfig"));

async function api(
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE",
  path: string,
  body?: unknown,
  contentType = "application/json",
  accept = "application/json",
): Promise<Reply> {
  const server = kc.getCurrentCluster()?.server;
  if (!server) throw new Error("kubeconfig has no current cluster");
  const url = new URL(path, server);
  const opts: RequestOptions = {
    method,
    hostname: url.hostname,
    port: url.port,
    path: url.pathname + url.search,
    headers: { Accept: accept, ...(body === undefined ? {} : { "Content-Type": contentType }) },
  };
  await kc.applyToHTTPSOptions(opts);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise<Reply>((resolve, reject) => {
    const req = request(opts, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let parsed: Record<string, unknown>;
        try {
          parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
        } catch {
          parsed = { message: text };
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

const CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const PLURALS: Record<string, string> = { ComputeEnvironment: "computeenvironments", Run: "runs" };

function collection(ns: string, kind: string): string {
  const plural = PLURALS[kind];
  if (!plural) throw new Error(`unknown kind ${kind}`);
  return `/apis/${GROUP}/${VERSION}/namespaces/${ns}/${plural}`;
}

/** Creates like `kubectl create` does (strict field validation: unknown fields are errors). */
function create(ns: string, obj: Manifest): Promise<Reply> {
  return api("POST", `${collection(ns, obj.kind)}?fieldValidation=Strict`, obj);
}

function mergePatch(ns: string, kind: string, name: string, patch: unknown, subresource = ""): Promise<Reply> {
  return api(
    "PATCH",
    `${collection(ns, kind)}/${name}${subresource}?fieldValidation=Strict`,
    patch,
    "application/merge-patch+json",
  );
}

function jsonPatch(ns: string, kind: string, name: string, ops: unknown[]): Promise<Reply> {
  return api("PATCH", `${collection(ns, kind)}/${name}`, ops, "application/json-patch+json");
}

function describeReply(r: Reply): string {
  return `HTTP ${r.status}: ${typeof r.body.message === "string" ? r.body.message : JSON.stringify(r.body)}`;
}

/** Create-or-update, so the test works on a cluster where the CRDs are already installed. */
async function installCrd(crd: CrdObject): Promise<void> {
  const name = crd.metadata.name;
  for (let attempt = 0; attempt < 5; attempt++) {
    const existing = await api("GET", `${CRD_PATH}/${name}`);
    let r: Reply;
    if (existing.status === 404) {
      r = await api("POST", CRD_PATH, crd);
      if (r.status === 409) continue; // someone else created it meanwhile: update instead
    } else if (existing.status === 200) {
      const rv = (existing.body.metadata as { resourceVersion?: string }).resourceVersion;
      r = await api("PUT", `${CRD_PATH}/${name}`, { ...crd, metadata: { ...crd.metadata, resourceVersion: rv } });
      if (r.status === 409) continue; // changed under us: read again
    } else {
      throw new Error(`GET CRD ${name}: ${describeReply(existing)}`);
    }
    if (r.status !== 200 && r.status !== 201) throw new Error(`installing CRD ${name}: ${describeReply(r)}`);
    return;
  }
  throw new Error(`installing CRD ${name}: kept conflicting`);
}

/** Create-or-update of the admission policy and its binding (see src/api/admission-policy.ts). */
async function installPolicy(o: PolicyObject): Promise<void> {
  const path = `/apis/admissionregistration.k8s.io/v1/${o.kind === "ValidatingAdmissionPolicy" ? "validatingadmissionpolicies" : "validatingadmissionpolicybindings"}`;
  const existing = await api("GET", `${path}/${o.metadata.name}`);
  const r = existing.status === 200
    ? await api("PUT", `${path}/${o.metadata.name}`, { ...o, metadata: { ...o.metadata, resourceVersion: (existing.body.metadata as { resourceVersion?: string }).resourceVersion } })
    : await api("POST", path, o);
  if (r.status !== 200 && r.status !== 201) throw new Error(`installing ${o.kind} ${o.metadata.name}: ${describeReply(r)}`);
}

/** A new policy takes effect moments after it is created: waits until an over-budget Run is refused. */
async function waitPolicyEffective(namespace: string): Promise<void> {
  const probe = {
    apiVersion: `${GROUP}/${VERSION}`, kind: "Run", metadata: { name: "policy-probe" },
    spec: { computeEnvironmentRef: { name: "x" }, pipeline: { repository: "https://github.com/nextflow-io/hello", params: { p: "x".repeat(20_000) } } },
  };
  for (let i = 0; i < 300; i++) {
    const r = await create(namespace, probe);
    if (r.status === 422) return;
    if (r.status === 201) await api("DELETE", `${collection(namespace, "Run")}/policy-probe`);
    await sleep(100);
  }
  throw new Error("the admission policy never took effect");
}

async function waitEstablished(name: string): Promise<void> {
  // Waits for the apiserver to serve the CRD (normally well under a second); the bound only
  // keeps a broken cluster from hanging the run.
  for (let i = 0; i < 600; i++) {
    const r = await api("GET", `${CRD_PATH}/${name}`);
    const conds = ((r.body.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? []);
    if (conds.some((c) => c.type === "Established" && c.status === "True")) return;
    await sleep(100);
  }
  throw new Error(`CRD ${name} never became Established`);
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec: Record<string, unknown>;
}

interface InvalidFixture {
  file: string;
  expect: string;
  status: number;
  manifest: Manifest;
}

const FIXTURES = new URL("../fixtures/", import.meta.url);

function readDir(sub: string): { file: string; text: string }[] {
  const dir = new URL(`${sub}/`, FIXTURES);
  return readdirSync(dir)
    .filter((f) => f.endsWith(".yaml"))
    .sort()
    .map((file) => ({ file, text: readFileSync(new URL(file, dir), "utf8") }));
}

const invalidFixtures: InvalidFixture[] = readDir("invalid").map(({ file, text }) => {
  const expectLine = /^# expect: (.+)$/m.exec(text);
  if (!expectLine?.[1]) throw new Error(`${file} has no "# expect:" header`);
  const statusLine = /^# status: (\d+)$/m.exec(text);
  return {
    file,
    expect: expectLine[1].trim(),
    status: statusLine?.[1] ? Number(statusLine[1]) : 422,
    manifest: parse(text) as Manifest,
  };
});

const validFixtures = new Map<string, Manifest>(
  readDir("valid").map(({ file, text }) => [file, parse(text) as Manifest]),
);

function valid(file: string): Manifest {
  const m = validFixtures.get(file);
  if (!m) throw new Error(`missing fixture valid/${file}`);
  return structuredClone(m);
}

function renamed(m: Manifest, name: string): Manifest {
  return { ...m, metadata: { ...m.metadata, name } };
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

const suffix = randomBytes(4).toString("hex");
const ns = `vmforge-admission-${suffix}`;

beforeAll(async () => {
  for (const crd of crdObjects()) await installCrd(crd);
  for (const crd of crdObjects()) await waitEstablished(crd.metadata.name);
  const r = await api("POST", "/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name: ns } });
  if (r.status !== 201) throw new Error(`creating namespace ${ns}: ${describeReply(r)}`);
  for (const o of admissionPolicyObjects()) await installPolicy(o);
  await waitPolicyEffective(ns);
});

afterAll(async () => {
  await api("DELETE", `/api/v1/namespaces/${ns}`);
});

describe("CRD installation", () => {
  it("installs idempotently (a second create-or-update succeeds and changes nothing)", async () => {
    const before = await api("GET", `${CRD_PATH}/computeenvironments.${GROUP}`);
    for (const crd of crdObjects()) await installCrd(crd);
    const after = await api("GET", `${CRD_PATH}/computeenvironments.${GROUP}`);
    expect(after.status).toBe(200);
    expect((after.body.metadata as { generation: number }).generation).toBe(
      (before.body.metadata as { generation: number }).generation,
    );
  });

  it("serves both kinds with the ce short name and the vmforge category", async () => {
    const r = await api("GET", `/apis/${GROUP}/${VERSION}`);
    expect(r.status).toBe(200);
    const resources = r.body.resources as { name: string; shortNames?: string[]; categories?: string[] }[];
    const ce = resources.find((x) => x.name === "computeenvironments");
    const run = resources.find((x) => x.name === "runs");
    expect(ce?.shortNames).toEqual(["ce"]);
    expect(ce?.categories).toEqual(["vmforge"]);
    expect(run?.categories).toEqual(["vmforge"]);
    expect(resources.map((x) => x.name)).toEqual(
      expect.arrayContaining(["computeenvironments/status", "runs/status"]),
    );
  });
});

describe("malformed manifests are rejected", () => {
  it("has at least 30 of them", () => {
    expect(invalidFixtures.length).toBeGreaterThanOrEqual(30);
  });

  it.each(invalidFixtures.map((f) => [f.file, f] as const))("%s", async (_file, f) => {
    const r = await create(ns, f.manifest);
    expect(r.status, describeReply(r)).toBe(f.status);
    expect(String(r.body.message)).toContain(f.expect);
    const stored = await api("GET", `${collection(ns, f.manifest.kind)}/${f.manifest.metadata.name}`);
    expect(stored.status).toBe(404);
  });
});

describe("a Run's share of the user data (params and config, the admission policy)", () => {
  const runWith = (name: string, pipeline: Record<string, unknown>): Manifest => ({
    apiVersion: `${GROUP}/${VERSION}`, kind: "Run", metadata: { name },
    spec: { computeEnvironmentRef: { name: "aws-minimal" }, pipeline: { repository: "https://github.com/nextflow-io/hello", ...pipeline } },
  });

  it("params are counted at their JSON size, with config: just within the budget is accepted, just over is refused naming both sizes", async () => {
    // {"greeting":"<n x's>"} is n + 15 bytes of JSON.
    const fits = await create(ns, runWith("budget-fits", { params: { greeting: "x".repeat(16_384 - 15 - 100) }, config: "c".repeat(100) }));
    expect(fits.status, describeReply(fits)).toBe(201);
    const over = await create(ns, runWith("budget-over", { params: { greeting: "x".repeat(16_384 - 15 - 100) }, config: "c".repeat(101) }));
    expect(over.status, describeReply(over)).toBe(422);
    expect(String(over.body.message)).toContain("must be at most 16384 bytes");
    expect(String(over.body.message)).toContain(`params are ${16_384 - 100} bytes as JSON, config 101 bytes`);
    expect((await api("GET", `${collection(ns, "Run")}/budget-over`)).status).toBe(404);
  });

  it("nested params count too", async () => {
    const r = await create(ns, runWith("budget-nested", { params: { a: { b: [{ c: "y".repeat(17_000) }] } } }));
    expect(r.status, describeReply(r)).toBe(422);
    expect(String(r.body.message)).toContain("must be at most 16384 bytes");
  });
});

describe("valid manifests are accepted with defaults applied", () => {
  const created = new Map<string, Manifest & { status?: unknown }>();

  beforeAll(async () => {
    for (const [file, m] of validFixtures) {
      const r = await create(ns, m);
      if (r.status !== 201) throw new Error(`valid/${file} was rejected: ${describeReply(r)}`);
      created.set(file, r.body as unknown as Manifest);
    }
  });

  it("accepts every valid fixture and stores the spec with exactly the schema defaults added", () => {
    expect(created.size).toBe(validFixtures.size);
    for (const [file, m] of validFixtures) {
      const got = created.get(file);
      const expected =
        m.kind === "Run"
          ? defaultRunSpec(m.spec as unknown as RunSpec)
          : defaultComputeEnvironmentSpec(m.spec as unknown as ComputeEnvironmentSpec);
      expect(got?.spec, file).toEqual(expected);
    }
  });

  it("defaults the minimal AWS environment", () => {
    const spec = created.get("ce-aws-minimal.yaml")?.spec as unknown as ComputeEnvironmentSpec;
    expect(spec.wave).toBe(true);
    expect(spec.fusion).toBe(true);
    expect(spec.deletionPolicy).toBe("Delete");
    expect(spec.aws?.bootDiskSizeGiB).toBe(DEFAULT_BOOT_DISK_GIB);
    expect(spec.aws?.graviton).toBe(false);
    expect(spec.aws?.instanceType).toBeUndefined(); // chosen by the operator from `graviton`
    expect(spec.aws?.platformTokenInUserData).toBe(false); // the token never goes to user data unasked
    expect(spec.logRetentionDays).toBe(30);
  });

  it("keeps explicit values of the full AWS environment", () => {
    const spec = created.get("ce-aws-full.yaml")?.spec as unknown as ComputeEnvironmentSpec;
    expect(spec.deletionPolicy).toBe("Retain");
    expect(spec.aws?.bootDiskSizeGiB).toBe(200);
    expect(spec.aws?.graviton).toBe(true);
    expect(spec.platformTokenSecretRef).toEqual({ name: "seqera-platform", key: "access-token" });
    expect(spec.aws?.platformTokenInUserData).toBe(true);
    expect(spec.runHistory).toEqual({ succeededLimit: 10, failedLimit: 3 });
    expect(spec.logRetentionDays).toBe(90);
  });

  it("keeps the Platform token ARN of an AWS environment", () => {
    const spec = created.get("ce-aws-platform-token-arn.yaml")?.spec as unknown as ComputeEnvironmentSpec;
    expect(spec.aws?.platformTokenArn).toBe("arn:aws:secretsmanager:eu-central-1:123456789012:secret:seqera/platform-token-AbCdEf");
    expect(spec.aws?.platformTokenInUserData).toBe(false);
  });

  it("defaults the Azure VM size", () => {
    const spec = created.get("ce-azure.yaml")?.spec as unknown as ComputeEnvironmentSpec;
    expect(spec.azure?.vmSize).toBe(DEFAULT_AZURE_VM_SIZE);
    expect(spec.wave).toBe(true);
    expect(spec.fusion).toBe(false);
  });

  it("defaults cancel and resume of a Run and keeps free-form params", () => {
    const run = created.get("run.yaml")?.spec as unknown as RunSpec;
    expect(run.cancel).toBe(false);
    expect(run.pipeline.resume).toBe(false);
    const full = created.get("run-full.yaml")?.spec as unknown as RunSpec;
    expect(full.pipeline.params).toEqual({
      input: "s3://my-bucket/samplesheet.csv",
      outdir: "s3://my-bucket/results",
      skip_qc: true,
      max_cpus: 8,
      genomes: ["GRCh38", "GRCm39"],
    });
  });

  it("lets clients select Runs by ComputeEnvironment and environments by provider (selectableFields)", async () => {
    const runs = await api("GET", `${collection(ns, "Run")}?fieldSelector=spec.computeEnvironmentRef.name%3Daws-full`);
    expect(runs.status, describeReply(runs)).toBe(200);
    expect((runs.body.items as Manifest[]).map((r) => r.metadata.name)).toEqual(["rnaseq"]);
    const azure = await api("GET", `${collection(ns, "ComputeEnvironment")}?fieldSelector=spec.provider%3Dazure`);
    expect(azure.status, describeReply(azure)).toBe(200);
    const items = azure.body.items as Manifest[];
    expect(items.map((r) => r.metadata.name)).toContain("azure");
    expect(items.map((r) => r.spec.provider)).toEqual(items.map(() => "azure"));
  });

  it("prints useful columns for kubectl get", async () => {
    const table = "application/json;as=Table;v=v1;g=meta.k8s.io";
    const ce = await api("GET", collection(ns, "ComputeEnvironment"), undefined, undefined, table);
    const ceCols = (ce.body.columnDefinitions as { name: string; priority: number }[]).filter((c) => c.priority === 0);
    expect(ceCols.map((c) => c.name)).toEqual(["Name", "Provider", "Region", "Location", "Phase", "Ready", "Active", "Age"]);
    const runs = await api("GET", collection(ns, "Run"), undefined, undefined, table);
    const runCols = (runs.body.columnDefinitions as { name: string; priority: number }[]).filter((c) => c.priority === 0);
    expect(runCols.map((c) => c.name)).toEqual(["Name", "CE", "Phase", "Instance", "Exit Code", "Age"]);
  });
});

describe("update rules", () => {
  async function createOk(m: Manifest): Promise<void> {
    const r = await create(ns, m);
    expect(r.status, describeReply(r)).toBe(201);
  }

  it("rejects a provider change", async () => {
    await createOk(renamed(valid("ce-aws-minimal.yaml"), "upd-provider"));
    const r = await mergePatch(ns, "ComputeEnvironment", "upd-provider", {
      spec: { provider: "azure", aws: null, azure: { location: "westeurope", workDir: "az://work" } },
    });
    expect(r.status).toBe(422);
    expect(String(r.body.message)).toContain("provider is immutable");
  });

  it("rejects an AWS region change but accepts other AWS changes", async () => {
    await createOk(renamed(valid("ce-aws-minimal.yaml"), "upd-region"));
    const bad = await mergePatch(ns, "ComputeEnvironment", "upd-region", { spec: { aws: { region: "us-east-1" } } });
    expect(bad.status).toBe(422);
    expect(String(bad.body.message)).toContain("aws.region is immutable");
    const ok = await mergePatch(ns, "ComputeEnvironment", "upd-region", {
      spec: { aws: { instanceType: "m6i.xlarge", bootDiskSizeGiB: 100 }, maxConcurrentRuns: 2 },
    });
    expect(ok.status, describeReply(ok)).toBe(200);
    expect((ok.body.spec as ComputeEnvironmentSpec).aws?.instanceType).toBe("m6i.xlarge");
  });

  it("checks the Platform token rules on updates too: switching from user data to an ARN needs the opt-in cleared", async () => {
    await createOk(renamed(valid("ce-aws-full.yaml"), "upd-token"));
    const arn = "arn:aws:ssm:us-east-2:123456789012:parameter/seqera/token";
    const both = await mergePatch(ns, "ComputeEnvironment", "upd-token", { spec: { aws: { platformTokenArn: arn } } });
    expect(both.status, describeReply(both)).toBe(422);
    expect(String(both.body.message)).toContain("aws.platformTokenArn and aws.platformTokenInUserData are mutually exclusive");
    const dropRef = await mergePatch(ns, "ComputeEnvironment", "upd-token", { spec: { platformTokenSecretRef: null } });
    expect(dropRef.status, describeReply(dropRef)).toBe(422);
    expect(String(dropRef.body.message)).toContain("aws.platformTokenInUserData requires platformTokenSecretRef");
    const ok = await mergePatch(ns, "ComputeEnvironment", "upd-token", {
      spec: { aws: { platformTokenArn: arn, platformTokenInUserData: false } },
    });
    expect(ok.status, describeReply(ok)).toBe(200);
    expect((ok.body.spec as { aws: { platformTokenArn?: string } }).aws.platformTokenArn).toBe(arn);
  });

  it("rejects an Azure location change", async () => {
    await createOk(renamed(valid("ce-azure.yaml"), "upd-location"));
    const r = await mergePatch(ns, "ComputeEnvironment", "upd-location", { spec: { azure: { location: "eastus2" } } });
    expect(r.status).toBe(422);
    expect(String(r.body.message)).toContain("azure.location is immutable");
  });

  it("rejects an Azure subscription change", async () => {
    const ce = renamed(valid("ce-azure.yaml"), "upd-sub");
    (ce.spec as { azure: Record<string, unknown> }).azure.subscriptionId = "11111111-aaaa-4bbb-8ccc-000000000001";
    await createOk(ce);
    const r = await mergePatch(ns, "ComputeEnvironment", "upd-sub", { spec: { azure: { subscriptionId: "22222222-aaaa-4bbb-8ccc-000000000002" } } });
    expect(r.status).toBe(422);
    expect(String(r.body.message)).toContain("azure.subscriptionId is immutable");
  });

  it("rejects removing the provider block", async () => {
    await createOk(renamed(valid("ce-aws-minimal.yaml"), "upd-drop-aws"));
    const r = await mergePatch(ns, "ComputeEnvironment", "upd-drop-aws", { spec: { aws: null } });
    expect(r.status).toBe(422);
    expect(String(r.body.message)).toContain("spec.aws is required when provider is aws");
  });

  it.each([
    ["the pipeline revision", { spec: { pipeline: { revision: "main" } } }],
    ["a param", { spec: { pipeline: { params: { greeting: "changed" } } } }],
    ["the timeout", { spec: { timeout: "2h" } }],
    ["the overrides", { spec: { overrides: { spot: true } } }],
    ["resume", { spec: { pipeline: { resume: true } } }],
  ])("rejects changing %s of a Run", async (what, patch) => {
    const name = `upd-run-${what.replace(/[^a-z]+/g, "-").replace(/^-|-$/g, "")}`;
    const run = renamed(valid("run.yaml"), name);
    run.spec.pipeline = { repository: "https://github.com/nextflow-io/hello", params: { greeting: "hi" } };
    await createOk(run);
    const r = await mergePatch(ns, "Run", name, patch);
    expect(r.status, describeReply(r)).toBe(422);
    expect(String(r.body.message)).toContain("only spec.cancel and spec.ttlSecondsAfterFinished may change after creation");
  });

  it("lets ttlSecondsAfterFinished of a Run change after creation, as on a Job", async () => {
    await createOk(renamed(valid("run.yaml"), "upd-ttl"));
    const set = await mergePatch(ns, "Run", "upd-ttl", { spec: { ttlSecondsAfterFinished: 60 } });
    expect(set.status, describeReply(set)).toBe(200);
    expect((set.body.spec as RunSpec).ttlSecondsAfterFinished).toBe(60);
    const cleared = await mergePatch(ns, "Run", "upd-ttl", { spec: { ttlSecondsAfterFinished: null } });
    expect(cleared.status, describeReply(cleared)).toBe(200);
    expect((cleared.body.spec as RunSpec).ttlSecondsAfterFinished).toBeUndefined();
  });

  it("rejects changing the computeEnvironmentRef of a Run", async () => {
    await createOk(renamed(valid("run.yaml"), "upd-run-ref"));
    const r = await mergePatch(ns, "Run", "upd-run-ref", { spec: { computeEnvironmentRef: { name: "other" } } });
    expect(r.status).toBe(422);
    expect(String(r.body.message)).toContain("computeEnvironmentRef is immutable");
  });

  it("lets cancel go from false to true, never back, and accepts metadata changes", async () => {
    await createOk(renamed(valid("run.yaml"), "upd-cancel"));
    const cancel = await mergePatch(ns, "Run", "upd-cancel", { spec: { cancel: true } });
    expect(cancel.status, describeReply(cancel)).toBe(200);
    expect((cancel.body.spec as RunSpec).cancel).toBe(true);

    const back = await mergePatch(ns, "Run", "upd-cancel", { spec: { cancel: false } });
    expect(back.status).toBe(422);
    expect(String(back.body.message)).toContain("cancel cannot be set back to false");

    const removed = await jsonPatch(ns, "Run", "upd-cancel", [{ op: "remove", path: "/spec/cancel" }]);
    expect(removed.status).toBe(422);
    expect(String(removed.body.message)).toContain("cancel cannot be set back to false");

    const labelled = await mergePatch(ns, "Run", "upd-cancel", { metadata: { labels: { team: "genomics" } } });
    expect(labelled.status, describeReply(labelled)).toBe(200);
  });

  it("accepts a status the operator writes and rejects an unknown phase", async () => {
    await createOk(renamed(valid("run.yaml"), "upd-status"));
    const ok = await mergePatch(
      ns,
      "Run",
      "upd-status",
      {
        status: {
          observedGeneration: 1,
          phase: "Running",
          conditions: [
            {
              type: "Ready",
              status: "False",
              reason: "Running",
              message: "pipeline is running",
              observedGeneration: 1,
              lastTransitionTime: new Date().toISOString(),
            },
          ],
          instance: { id: "i-0123456789abcdef0", type: "m6i.large", spot: false },
          launchedAt: new Date().toISOString(),
          log: { provider: "cloudwatch", group: "/vmforge/runs", stream: "i-0123456789abcdef0" },
        },
      },
      "/status",
    );
    expect(ok.status, describeReply(ok)).toBe(200);
    expect((ok.body.status as { phase: string }).phase).toBe("Running");

    const bad = await mergePatch(ns, "Run", "upd-status", { status: { phase: "Exploded" } }, "/status");
    expect(bad.status).toBe(422);
    expect(String(bad.body.message)).toContain('status.phase: Unsupported value: "Exploded"');
  });
});
