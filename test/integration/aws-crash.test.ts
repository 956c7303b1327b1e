/**
 * Issue 12, "Proven": the operator SIGKILLed at every cloud write of CE create, Run launch, Run end
 * and CE delete, then started again, on the real kube-apiserver and moto behind the strict AWS layer
 * (ClientToken honoured as EC2 does). Also: the operator killed once a Run's timeout termination
 * was carried out, and started again only after the timeout was raised (the decision must hold).
 *
 * The operator is the real entry point with the real AWS provider, in a child process
 * (test/support/aws-operator-process.ts) that signs as an IAM user of its own holding exactly the
 * product document's policy (seed 002), evaluated by the layer as AWS does. The layer's crash
 * point (test/harness/aws-strict, `armCrash`) counts that key's writes (every call that is not a
 * Describe/Get/List read) and, at write N, SIGKILLs the process either before passing the write on
 * (it never happens) or after moto carried it out, before the operator reads the answer (it
 * happened, the answer is lost). A supervisor here starts the operator again at once.
 *
 * The scenario, in phases that do not overlap:
 *   CE create  → Ready;
 *   Run launch → Runs "a" and "b" launched one after the other, each Running once its launcher
 *                says in its log that the pipeline started;
 *   Run end    → "a"'s machine uploads exit status 0 and terminates itself (Succeeded, exit 0);
 *                "b"'s machine uploads exit status 3 and keeps running (its shutdown "failed"): Failed
 *                with exit code 3, and the operator terminates the machine after the grace period;
 *   CE delete  → the CE is gone; then the Runs are deleted and go.
 * A clean pass records the writes of each phase; then, for every write of every phase and both
 * kill modes, a fresh namespace, CE and operator play the scenario with the crash armed at that
 * write. Each pass must end the same way: one instance per Run ever (terminated ones included),
 * each Run with its true outcome and exit code, no instance left running, no TowerForge-* role or
 * instance profile of the CE left, and no vmforge finalizer left.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DescribeInstancesCommand, EC2Client, TerminateInstancesCommand, type Instance } from "@aws-sdk/client-ec2";
import {
  AttachUserPolicyCommand,
  CreateAccessKeyCommand,
  CreatePolicyCommand,
  CreateUserCommand,
  GetInstanceProfileCommand,
  IAMClient,
  ListInstanceProfilesCommand,
  ListRolesCommand,
} from "@aws-sdk/client-iam";
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { CloudWatchLogsClient } from "@aws-sdk/client-cloudwatch-logs";
import { KubeClient } from "../../src/engine/kube.js";
import type { KubeObject, ResourceType } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { runArtifactsUri } from "../../src/cloud/aws/launcher.js";
import { logGroupName } from "../../src/cloud/aws/logs.js";
import { TAG_CE_UID } from "../../src/cloud/aws/iam.js";
import { TAG_RUN_UID } from "../../src/cloud/aws/runs.js";
import { FINALIZER, SecretResource } from "../../src/controllers/shared.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { installCrds, waitFor } from "../support/operator.js";
import { deleteNamespace, freshNamespace, kubeconfigPath, motoEndpoint, strictAws } from "../harness/helpers.js";
import { shipLauncherLines } from "../harness/aws-launcher-log.js";
import { awsSeedPath, seedPolicy } from "../harness/seed-policy.js";

const REGION = "eu-west-1";
const BUCKET = "vmforge-crash-tests";
const ACCOUNT = "123456789012";
/** The operator's managed policy: the product document's (seed 002), every phase, unchanged. */
const OPERATOR_POLICY = "vmforge-crash-operator";
/** Scenarios played at the same time (each with its own namespace, key and operator process). */
const PARALLEL = Number(process.env.VMFORGE_CRASH_PARALLEL ?? "4");
const PHASES = ["ce-create", "run-launch", "run-end", "ce-delete"] as const;
type PhaseName = (typeof PHASES)[number];
type Mode = "before" | "after";

const layer = strictAws();
let client: KubeClient;
const namespaces: string[] = [];

const admin = () => ({ endpoint: motoEndpoint(), region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } });
const ec2 = () => new EC2Client(admin());

type Cond = { type: string; status: string; reason: string; message: string };
const cond = (o: { status?: { conditions?: Cond[] } } | undefined, type: string) => o?.status?.conditions?.find((c) => c.type === type);

/** The operator process of one scenario, started again whenever it dies of a SIGKILL. */
class SupervisedOperator {
  child: ChildProcess | undefined;
  readonly pids: number[] = [];
  /** Exits other than our SIGKILLs and the final SIGTERM (none expected). */
  readonly unexpected: string[] = [];
  private readonly tail: string[] = [];
  private stopping = false;

  /** `restart`: false to leave a killed operator down until the test starts it again. */
  constructor(private readonly ns: string, private readonly restart = true) {}

  start(): void {
    const child = spawn(process.execPath, ["--import", "tsx", "test/support/aws-operator-process.ts"], {
      env: {
        ...process.env,
        KUBECONFIG: kubeconfigPath(),
        POD_NAME: `crash-${this.ns}`,
        VMFORGE_NAMESPACES: this.ns,
        VMFORGE_LEADER_ELECTION: "false",
        VMFORGE_POLL_INTERVAL: "1s",
        VMFORGE_METRICS_ADDRESS: "127.0.0.1:0",
        VMFORGE_LOG_LEVEL: process.env.VMFORGE_TEST_LOG_LEVEL ?? "info",
        VMFORGE_SHUTDOWN_TIMEOUT: "3s",
        VMFORGE_AWS_ENDPOINT: motoEndpoint(),
        // the operator signs only with the CE's Secret; nothing ambient
        AWS_ACCESS_KEY_ID: "",
        AWS_SECRET_ACCESS_KEY: "",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    if (child.pid) this.pids.push(child.pid);
    const keep = (d: Buffer): void => {
      for (const line of d.toString().split("\n")) if (line) this.tail.push(line.slice(0, 600));
      if (this.tail.length > 300) this.tail.splice(0, this.tail.length - 300);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    child.once("exit", (code, signal) => {
      this.tail.push(`[test] operator pid ${child.pid} exited (code ${code}, signal ${signal})`);
      if (this.stopping) return;
      if (signal !== "SIGKILL") this.unexpected.push(`pid ${child.pid}: code ${code}, signal ${signal}`);
      if (this.restart) this.start();
    });
  }

  get alive(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  log(): string {
    return this.tail.join("\n");
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once("exit", r));
    c.kill("SIGTERM");
    const timer = setTimeout(() => c.kill("SIGKILL"), 5_000);
    await gone;
    clearTimeout(timer);
  }
}

interface Outcome {
  /** The key's writes in order, and how many of them each phase made. */
  writes: string[];
  phaseWrites: Record<PhaseName, number>;
  pids: number[];
}

/** Every instance (any state) carrying a tag value; read without a tag filter. */
async function instancesTagged(key: string, value: string): Promise<Instance[]> {
  const out: Instance[] = [];
  let token: string | undefined;
  do {
    const page = await ec2().send(new DescribeInstancesCommand({ MaxResults: 1000, ...(token ? { NextToken: token } : {}) }));
    for (const r of page.Reservations ?? []) for (const i of r.Instances ?? []) if (i.Tags?.some((t) => t.Key === key && t.Value === value)) out.push(i);
    token = page.NextToken || undefined;
  } while (token);
  return out;
}

async function iamLeftovers(prefix: string): Promise<string[]> {
  const iam = new IAMClient(admin());
  const roles = (await iam.send(new ListRolesCommand({ MaxItems: 1000 }))).Roles ?? [];
  const profiles = (await iam.send(new ListInstanceProfilesCommand({ MaxItems: 1000 }))).InstanceProfiles ?? [];
  return [
    ...roles.filter((r) => r.RoleName?.startsWith(prefix)).map((r) => `role ${r.RoleName}`),
    ...profiles.filter((p) => p.InstanceProfileName?.startsWith(prefix)).map((p) => `instance profile ${p.InstanceProfileName}`),
  ];
}

/** The launcher on a Run's machine starts the pipeline and says so in its log (the CloudWatch agent's effect). */
async function pipelineStarts(ce: ComputeEnvironment, run: Run): Promise<void> {
  await shipLauncherLines(new CloudWatchLogsClient(admin()), logGroupName(ce), run, ["[vmforge] starting: nextflow run ...", "VMFORGE_PIPELINE_STARTED"]);
}

/** The machine of a Run ends its pipeline: uploads its exit status, then terminates itself or (its shutdown failing) keeps running. */
async function pipelineEnds(ce: ComputeEnvironment, run: Run, exitCode: number, shutdown: boolean): Promise<void> {
  const key = runArtifactsUri(ce, run).replace(`s3://${BUCKET}/`, "");
  await new S3Client({ ...admin(), forcePathStyle: true }).send(new PutObjectCommand({ Bucket: BUCKET, Key: `${key}/exit-status`, Body: `${exitCode}\n` }));
  if (shutdown) await ec2().send(new TerminateInstancesCommand({ InstanceIds: [run.status?.instance?.id ?? ""] }));
}

/**
 * The operator of namespace `ns` as an IAM user of its own with the seed's policy (the layer checks
 * every call), its key in the Secret "aws" there. Returns the key's id.
 */
async function operatorCredentials(ns: string): Promise<string> {
  const iam = new IAMClient(admin());
  const user = `crash-${ns}`;
  await iam.send(new CreateUserCommand({ UserName: user }));
  await iam.send(new AttachUserPolicyCommand({ UserName: user, PolicyArn: `arn:aws:iam::${ACCOUNT}:policy/${OPERATOR_POLICY}` }));
  const key = (await iam.send(new CreateAccessKeyCommand({ UserName: user }))).AccessKey;
  await client.create(SecretResource, {
    apiVersion: "v1", kind: "Secret", metadata: { name: "aws", namespace: ns }, stringData: { accessKeyId: key?.AccessKeyId ?? "", secretAccessKey: key?.SecretAccessKey ?? "" },
  } as SecretObject);
  return key?.AccessKeyId ?? "";
}

/** A CE of namespace `ns` on the crash tests' bucket. */
function ceManifest(ns: string, extra: Partial<ComputeEnvironment["spec"]> = {}): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name: "ce", namespace: ns },
    spec: { provider: "aws", credentials: { secretRef: { name: "aws" } }, aws: { region: REGION, instanceType: "m6i.large", workDir: `s3://${BUCKET}/work` }, ...extra },
  } as ComputeEnvironment;
}

/** A Run "name" of CE "ce" in namespace `ns`. */
function runManifest(ns: string, name: string): Run {
  return {
    apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name, namespace: ns },
    spec: { computeEnvironmentRef: { name: "ce" }, pipeline: { repository: "https://github.com/nextflow-io/hello" } },
  } as Run;
}

/** A Run setting up on a running machine (Launching/SettingUp): its launcher has not said anything yet. */
async function settingUp(ns: string, name: string, wait: <T>(what: string, fn: () => Promise<T | undefined>) => Promise<T>): Promise<Run> {
  return wait(`Run ${name} setting up on a running machine`, async () => {
    const r = await client.get<Run>(RunResource, ns, name);
    return r?.status?.phase === "Launching" && r.status.reason === "SettingUp" && r.status.instance?.state === "running" ? r : undefined;
  });
}

/**
 * Plays the whole scenario in a fresh namespace with its own key and operator process, with a
 * crash point armed at write `crashAt` (none for the clean pass), and checks how it ends.
 */
async function scenario(crashAt?: { write: number; mode: Mode; action: string }): Promise<Outcome> {
  const ns = await freshNamespace(client, "crash");
  namespaces.push(ns);
  const iam = new IAMClient(admin());
  const accessKeyId = await operatorCredentials(ns);
  const op = new SupervisedOperator(ns);
  const label = crashAt ? `crash ${crashAt.mode} write ${crashAt.write} (${crashAt.action})` : "clean";
  const get = <T extends KubeObject>(rt: ResourceType, name: string) => client.get<T>(rt, ns, name);
  const phaseWrites = {} as Record<PhaseName, number>;
  let counted = 0;
  const endPhase = async (p: PhaseName): Promise<void> => {
    const n = (await layer.writesOf(accessKeyId)).length;
    phaseWrites[p] = n - counted;
    counted = n;
  };
  const wait = <T,>(what: string, fn: () => Promise<T | undefined | null | false>, ms = 60_000) => waitFor(`${ns}: ${what}`, fn, ms, 250);
  try {
    op.start();
    if (crashAt) await layer.armCrash({ accessKeyId, pid: op.pid, atWrite: crashAt.write, mode: crashAt.mode });

    // CE create
    await client.create(ComputeEnvironmentResource, ceManifest(ns));
    const ce = await wait("CE Ready", async () => {
      const c = await get<ComputeEnvironment>(ComputeEnvironmentResource, "ce");
      return cond(c, "Ready")?.status === "True" ? c : undefined;
    });
    await endPhase("ce-create");
    // converged as a clean pass does: the profile holds the CE's role
    const profileName = (ce.status?.aws?.instanceProfileArn ?? "").split("/").pop() ?? "";
    const profile = await iam.send(new GetInstanceProfileCommand({ InstanceProfileName: profileName }));
    expect({ label, roles: profile.InstanceProfile?.Roles?.map((r) => r.RoleName) }).toEqual({ label, roles: [profileName] });

    // Run launch, one Run after the other (so the writes come in one order)
    const running: Record<string, Run> = {};
    for (const name of ["a", "b"]) {
      await client.create(RunResource, runManifest(ns, name));
      // The machine is up (the Run sets up, Launching), then its launcher starts the pipeline (Running).
      const up = await settingUp(ns, name, wait);
      await pipelineStarts(ce, up);
      running[name] = await wait(`Run ${name} Running`, async () => {
        const r = await get<Run>(RunResource, name);
        return r?.status?.phase === "Running" && r.status.instance?.id ? r : undefined;
      });
    }
    await endPhase("run-launch");

    // Run end: "a" shuts down; "b"'s shutdown fails, the operator ends the machine after the grace period.
    await pipelineEnds(ce, running.a as Run, 0, true);
    await pipelineEnds(ce, running.b as Run, 3, false);
    const ended: Record<string, Run> = {};
    for (const name of ["a", "b"]) {
      ended[name] = await wait(`Run ${name} ended and its machine confirmed terminated`, async () => {
        const r = await get<Run>(RunResource, name);
        return (r?.status?.phase === "Succeeded" || r?.status?.phase === "Failed") && r.status.instance?.state === "terminated" ? r : undefined;
      });
    }
    await endPhase("run-end");

    // CE delete
    await client.delete(ComputeEnvironmentResource, ns, "ce");
    await wait("CE gone", async () => (await get<ComputeEnvironment>(ComputeEnvironmentResource, "ce")) === undefined, 90_000);
    await endPhase("ce-delete");
    // The Runs go too (their finalizers are released).
    for (const name of ["a", "b"]) await client.delete(RunResource, ns, name);
    await wait("Runs gone", async () => (await client.list<Run>(RunResource, { namespace: ns })).items.length === 0);

    // How it ended.
    expect({ label, phase: ended.a?.status?.phase, reason: ended.a?.status?.reason, exitCode: ended.a?.status?.exitCode })
      .toEqual({ label, phase: "Succeeded", reason: "Succeeded", exitCode: 0 });
    expect({ label, phase: ended.b?.status?.phase, reason: ended.b?.status?.reason, exitCode: ended.b?.status?.exitCode })
      .toEqual({ label, phase: "Failed", reason: "PipelineFailed", exitCode: 3 });
    // ... and it says that the operator ended the machine whose shutdown failed
    expect({ label, lingered: cond(ended.b, "MachineLingered")?.status }).toEqual({ label, lingered: "True" });
    for (const name of ["a", "b"]) {
      const insts = await instancesTagged(TAG_RUN_UID, ended[name]?.metadata.uid ?? "");
      // exactly one instance ever launched for the Run, and it is the one recorded
      expect({ label, run: name, instances: insts.map((i) => i.InstanceId) }).toEqual({ label, run: name, instances: [ended[name]?.status?.instance?.id] });
    }
    const ofCe = await instancesTagged(TAG_CE_UID, ce.metadata.uid ?? "");
    expect({ label, states: ofCe.map((i) => i.State?.Name) }).toEqual({ label, states: ["terminated", "terminated"] });
    expect({ label, leftovers: await iamLeftovers(`TowerForge-${ns}-`) }).toEqual({ label, leftovers: [] });
    const secret = await client.get<SecretObject>(SecretResource, ns, "aws");
    expect({ label, finalizers: (secret?.metadata.finalizers ?? []).filter((f) => f === FINALIZER) }).toEqual({ label, finalizers: [] });
    expect({ label, unexpectedExits: op.unexpected }).toEqual({ label, unexpectedExits: [] });

    const fired = (await layer.crashes()).fired.filter((f) => f.accessKeyId === accessKeyId);
    if (crashAt) {
      expect({ label, fired: fired.map((f) => [f.atWrite, f.mode, f.pid, f.action]) }).toEqual({ label, fired: [[crashAt.write, crashAt.mode, op.pids[0], crashAt.action]] });
      expect({ label, restarts: op.pids.length }).toEqual({ label, restarts: 2 });
    } else {
      expect(fired).toEqual([]);
      expect(op.pids).toHaveLength(1);
    }
    return { writes: await layer.writesOf(accessKeyId), phaseWrites, pids: op.pids };
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new Error(`${msg}\n--- writes of ${accessKeyId}: ${(await layer.writesOf(accessKeyId)).join(", ")}\n--- operator log (${ns}), last lines:\n${op.log()}`, { cause: e });
  } finally {
    await op.stop();
  }
}

type CrashAt = { write: number; mode: Mode; action: string };

/**
 * Starts every crash scenario, PARALLEL at a time, in write order (one pool for all phases, so no
 * slot idles at a phase's end). Each point's promise settles with its failure, or undefined.
 */
function startAll(points: CrashAt[]): Map<string, Promise<unknown>> {
  const settled = new Map<string, (v: unknown) => void>();
  const out = new Map<string, Promise<unknown>>();
  for (const p of points) out.set(`${p.write}/${p.mode}`, new Promise((r) => settled.set(`${p.write}/${p.mode}`, r)));
  let next = 0;
  for (let i = 0; i < Math.min(PARALLEL, points.length); i++) {
    void (async () => {
      while (next < points.length) {
        const p = points[next++] as CrashAt;
        const done = settled.get(`${p.write}/${p.mode}`) as (v: unknown) => void;
        try {
          await scenario(p);
          done(undefined);
        } catch (e) {
          done(e ?? new Error("failed"));
        }
      }
    })();
  }
  return out;
}

let clean: Outcome;
let results: Map<string, Promise<unknown>> | undefined;

/** The crash points of a phase: before and after each of its writes in the clean pass. */
function pointsOf(phase: PhaseName): CrashAt[] {
  const first = PHASES.slice(0, PHASES.indexOf(phase)).reduce((n, p) => n + clean.phaseWrites[p], 0) + 1;
  const points: CrashAt[] = [];
  for (let w = first; w < first + clean.phaseWrites[phase]; w++) for (const mode of ["before", "after"] as const) points.push({ write: w, mode, action: clean.writes[w - 1] ?? "" });
  return points;
}

beforeAll(async () => {
  const seed = awsSeedPath();
  if (!seed) throw new Error("seed 002 (the AWS Cloud document) not found; set VMFORGE_SEEDS_DIR to the folder of the product documents");
  const doc = seedPolicy(seed, { phases: ["create", "validate", "launch", "delete", "read"], bucket: BUCKET, workDirPrefix: "work" });
  await new IAMClient(admin()).send(new CreatePolicyCommand({ PolicyName: OPERATOR_POLICY, PolicyDocument: JSON.stringify(doc) }));
  await new S3Client({ ...admin(), forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
  // EC2 as it is: a repeated ClientToken gets the first launch, and a new instance is missing from
  // the first tag-filtered DescribeInstances that would show it (so a launch resumed after a crash
  // cannot count on its look-up: ClientToken must keep it from making a second machine).
  // IAM is evaluated as AWS does for the operator's users; "testing" (this test) acts as the root.
  await layer.configure({ idempotency: true, consistency: { newInstanceHiddenDescribes: 1 }, iam: { enforce: true, rootAccessKeys: ["testing"] } });
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
}, 120_000);

afterAll(async () => {
  // scenarios of phases whose test was filtered out still run: let them end (and stop their operators)
  if (results) await Promise.all(results.values());
  await layer.reset();
  await Promise.all(namespaces.map((n) => deleteNamespace(n)));
});

describe("the operator SIGKILLed at every cloud write, then started again", () => {
  it("a clean pass: the writes of each phase", async () => {
    clean = await scenario();
    // What the phases write, as the operator does today (the test covers whatever this is).
    expect(clean.writes.slice(0, clean.phaseWrites["ce-create"])).toEqual([
      "iam:CreateRole", "iam:PutRolePolicy", "iam:TagRole", "iam:CreateInstanceProfile", "iam:AddRoleToInstanceProfile", "iam:TagRole",
    ]);
    expect(clean.phaseWrites["run-launch"]).toBe(2);
    expect(clean.phaseWrites["run-end"]).toBe(1);
    expect(clean.phaseWrites["ce-delete"]).toBeGreaterThanOrEqual(3);
    console.log(`crash tests: writes per phase ${JSON.stringify(clean.phaseWrites)}: ${clean.writes.join(", ")}`);
  }, 120_000);

  for (const phase of PHASES) {
    it(`${phase}: killed before and after each of its writes, restarted, it ends as the clean pass`, async () => {
      expect(clean, "the clean pass must run first").toBeDefined();
      // The first phase's test starts every phase's scenarios; each phase's test waits for its own.
      results ??= startAll(PHASES.flatMap(pointsOf));
      const points = pointsOf(phase);
      console.log(`crash tests: ${phase}: ${points.length} crash points (${points.filter((p) => p.mode === "before").map((p) => `${p.write} ${p.action}`).join(", ")})`);
      const failures = (await Promise.all(points.map((p) => results?.get(`${p.write}/${p.mode}`)))).filter((f) => f !== undefined);
      if (failures.length === 1) throw failures[0];
      if (failures.length > 1) {
        throw new AggregateError(failures, `${failures.length} crash scenarios failed:\n${failures.map((f) => (f instanceof Error ? f.message : String(f))).join("\n\n")}`);
      }
    }, 600_000);
  }
});

describe("a Run's timeout, its termination sent, the operator killed before it ended the Run", () => {
  it("the next operator ends it Timeout with the timeout it was found past, although the timeout was raised meanwhile: one machine, terminated", async () => {
    const ns = await freshNamespace(client, "crash-timeout");
    namespaces.push(ns);
    const accessKeyId = await operatorCredentials(ns);
    const op = new SupervisedOperator(ns, false);
    const wait = <T,>(what: string, fn: () => Promise<T | undefined | null | false>, ms = 60_000) => waitFor(`${ns}: ${what}`, fn, ms, 250);
    try {
      op.start();
      const first = op.pid;
      await client.create(ComputeEnvironmentResource, ceManifest(ns, { defaultRunTimeout: "1m" }));
      await wait("CE Ready", async () => cond(await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce"), "Ready")?.status === "True");
      await client.create(RunResource, runManifest(ns, "late"));
      const up = await settingUp(ns, "late", wait);
      // The pipeline never starts. The operator's next write is the timeout's termination: killed once moto carried it out.
      await layer.armCrash({ accessKeyId, pid: first, atWrite: (await layer.writesOf(accessKeyId)).length + 1, mode: "after" });
      await wait("the operator killed", async () => !op.alive, 150_000);
      const fired = (await layer.crashes()).fired.filter((f) => f.accessKeyId === accessKeyId);
      expect(fired.map((f) => [f.pid, f.mode, f.action])).toEqual([[first, "after", "ec2:TerminateInstances"]]);
      const left = await client.get<Run>(RunResource, ns, "late");
      expect(left?.status?.phase).toBe("Launching"); // not ended by the killed operator
      expect(cond(left, "TimedOut")).toMatchObject({ status: "True", reason: "Timeout" });
      // While no operator runs, the timeout is raised far past the machine's age.
      await client.patch(ComputeEnvironmentResource, ns, "ce", { spec: { defaultRunTimeout: "1h" } }, "merge");
      op.start();
      const ended = await wait("Run late ended", async () => {
        const r = await client.get<Run>(RunResource, ns, "late");
        return r?.status?.phase === "Failed" ? r : undefined;
      });
      expect({ reason: ended.status?.reason, stalled: cond(ended, "Stalled")?.reason }).toEqual({ reason: "Timeout", stalled: "Timeout" });
      expect(ended.status?.message).toContain("timeout of 1m");
      // One machine ever, the recorded one, and it is gone or going.
      const insts = await instancesTagged(TAG_RUN_UID, up.metadata.uid ?? "");
      expect(insts.map((i) => i.InstanceId)).toEqual([up.status?.instance?.id]);
      expect(["shutting-down", "terminated"]).toContain(insts[0]?.State?.Name);
      // Everything goes with the CE.
      await client.delete(RunResource, ns, "late");
      await client.delete(ComputeEnvironmentResource, ns, "ce");
      await wait("CE gone", async () => (await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, "ce")) === undefined, 90_000);
      expect(await iamLeftovers(`TowerForge-${ns}-`)).toEqual([]);
      expect(op.unexpected).toEqual([]);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      throw new Error(`${msg}\n--- writes of ${accessKeyId}: ${(await layer.writesOf(accessKeyId)).join(", ")}\n--- operator log (${ns}), last lines:\n${op.log()}`, { cause: e });
    } finally {
      await op.stop();
    }
  }, 480_000);
});
