/**
 * Issue 14, finished Runs, on the real kube-apiserver: spec.ttlSecondsAfterFinished of a Run (as on
 * a Job) and spec.runHistory of a ComputeEnvironment (like a CronJob's history limits). First with
 * the in-memory FakeCloud (what is deleted, when, and what is never touched), then with the real
 * AWS provider against moto behind the strict layer: deleting a finished Run whose machine is gone
 * sends no cloud request at all, whether its TTL or its CE's history limit deletes it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { KubeClient } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";
import { SecretResource } from "../../src/controllers/shared.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { FakeCloud } from "../support/fake-cloud.js";
import { InstancePlayer } from "../sandbox/instance.js";
import { installCrds, startOperator, waitFor } from "../support/operator.js";
import type { RunningOperator } from "../support/operator.js";
import { freshNamespace, kubeconfigPath, motoEndpoint, motoReset, strictAws } from "../harness/helpers.js";
import { EventResource, type EventObject } from "../../src/engine/events.js";

let client: KubeClient;

const getRun = (ns: string, name: string) => client.get<Run>(RunResource, ns, name);

async function createCe(ns: string, name: string, spec: Partial<ComputeEnvironment["spec"]> = {}, aws: Record<string, unknown> = {}): Promise<void> {
  await client.create(ComputeEnvironmentResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name, namespace: ns },
    spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://vmforge-test-bucket/work", ...aws }, ...spec } as ComputeEnvironment["spec"],
  });
  await waitFor(`CE ${name} Ready`, async () => {
    const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name);
    return ce?.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True");
  }, 60_000);
}

async function createRun(ns: string, name: string, ce: string, extra: Partial<Run["spec"]> = {}): Promise<void> {
  await client.create(RunResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "Run", metadata: { name, namespace: ns },
    spec: { computeEnvironmentRef: { name: ce }, pipeline: { repository: "https://github.com/nextflow-io/hello" }, ...extra } as Run["spec"],
  });
}

const inPhase = (ns: string, name: string, phase: string, timeoutMs = 30_000) =>
  waitFor(`Run ${name} ${phase}`, async () => {
    const r = await getRun(ns, name);
    return r?.status?.phase === phase ? r : undefined;
  }, timeoutMs);

const gone = (ns: string, name: string, timeoutMs = 30_000) =>
  waitFor(`Run ${name} deleted`, async () => (await getRun(ns, name)) === undefined, timeoutMs);

const names = async (ns: string) => (await client.list<Run>(RunResource, { namespace: ns })).items.map((r) => r.metadata.name ?? "").sort();

beforeAll(async () => {
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
});

describe("finished Runs with the FakeCloud", () => {
  let cloud: FakeCloud;
  let op: RunningOperator;
  let ns: string;

  beforeAll(async () => {
    ns = await freshNamespace(client, "finished");
    cloud = new FakeCloud();
    // A resync far away: deletions must come from requeues at the right time, not from a periodic look.
    op = await startOperator(kubeconfigPath(), new Map([["aws", cloud]]), { namespaces: [ns], resyncPeriodMs: 3_600_000 });
  });

  afterAll(async () => {
    await op?.stop();
  });

  it("ttlSecondsAfterFinished: a finished Run is deleted once its completionTime plus the TTL has passed, not before", async () => {
    await createCe(ns, "ttl");
    await createRun(ns, "short", "ttl", { ttlSecondsAfterFinished: 3 });
    const running = await inPhase(ns, "short", "Running");
    cloud.finish(running.metadata.uid ?? "", 0);
    const done = await inPhase(ns, "short", "Succeeded");
    const due = Date.parse(done.status?.completionTime ?? "") + 3_000;
    expect(Number.isFinite(due)).toBe(true);
    await gone(ns, "short");
    // Seen gone no earlier than its TTL allows (completionTime has millisecond precision).
    expect(Date.now()).toBeGreaterThanOrEqual(due);
    // Its machine had already ended: the finalizer sent nothing to the cloud.
    expect(cloud.calls.terminate).toBe(0);
  });

  it("ttlSecondsAfterFinished never deletes an active Run, and a TTL set after the end applies at once", async () => {
    await createRun(ns, "active", "ttl", { ttlSecondsAfterFinished: 0 });
    const running = await inPhase(ns, "active", "Running");
    await createRun(ns, "later", "ttl");
    const later = await inPhase(ns, "later", "Running");
    cloud.finish(later.metadata.uid ?? "", 1);
    await inPhase(ns, "later", "Failed");
    await client.patch(RunResource, ns, "later", { spec: { ttlSecondsAfterFinished: 0 } }, "merge");
    await gone(ns, "later");
    // The active Run with TTL 0 is still there and still Running.
    expect((await getRun(ns, "active"))?.status?.phase).toBe("Running");
    cloud.finish(running.metadata.uid ?? "", 0);
    await gone(ns, "active");
  });

  it("runHistory keeps the newest finished Runs per outcome, deletes the oldest first and never touches active Runs", async () => {
    await createCe(ns, "hist", { runHistory: { succeededLimit: 1, failedLimit: 1 } });
    const finishAs = async (name: string, code: number, phase: string) => {
      await createRun(ns, name, "hist");
      const r = await inPhase(ns, name, "Running");
      cloud.finish(r.metadata.uid ?? "", code);
      return inPhase(ns, name, phase);
    };
    await createRun(ns, "busy", "hist");
    await inPhase(ns, "busy", "Running");
    await finishAs("ok-1", 0, "Succeeded");
    await finishAs("ok-2", 0, "Succeeded");
    await gone(ns, "ok-1");
    await finishAs("bad-1", 2, "Failed");
    await createRun(ns, "stopped", "hist");
    await inPhase(ns, "stopped", "Running");
    await client.patch(RunResource, ns, "stopped", { spec: { cancel: true } }, "merge");
    await inPhase(ns, "stopped", "Cancelled");
    // Failed and Cancelled count together under failedLimit: the older (bad-1) goes.
    await gone(ns, "bad-1");
    expect((await names(ns)).filter((n) => ["busy", "ok-2", "stopped"].includes(n))).toEqual(["busy", "ok-2", "stopped"]);
    expect((await getRun(ns, "busy"))?.status?.phase).toBe("Running");

    // Lowering a limit applies on the CE's next reconcile; the active Run is still not counted.
    const ok2 = (await getRun(ns, "ok-2"))?.metadata.uid ?? "";
    const terminateBefore = cloud.terminatedUids.filter((u) => u === ok2).length;
    await client.patch(ComputeEnvironmentResource, ns, "hist", { spec: { runHistory: { succeededLimit: 0, failedLimit: 1 } } }, "merge");
    await gone(ns, "ok-2");
    expect(await getRun(ns, "stopped")).toBeDefined();
    expect((await getRun(ns, "busy"))?.status?.phase).toBe("Running");
    // The Event is sent after the deletes (no reconcile waits for it): looked for until it is there.
    const pruned = async () => (await client.list<EventObject>(
      EventResource, { namespace: ns })).items
      .filter((e) => e.regarding?.name === "hist" && e.reason === "RunHistoryPruned").map((e) => e.note).join("\n");
    const notes = await waitFor("the RunHistoryPruned Event naming ok-2", async () => {
      const n = await pruned();
      return n.includes("ok-2") ? n : undefined;
    }, 10_000, 100);
    expect(notes).toContain("ok-2");
    // A finished Run whose machine had ended: deleting it asked the cloud for nothing. (Counted
    // for ok-2 alone: other Runs' terminations, e.g. the cancelled one's, may still be under way.)
    expect(ok2).not.toBe("");
    expect(cloud.terminatedUids.filter((u) => u === ok2).length).toBe(terminateBefore);
  });
});

describe("finished Runs on AWS (moto behind the strict layer)", () => {
  const REGION = "eu-west-1";
  const BUCKET = "vmforge-finished-runs-test";
  let op: RunningOperator;
  let player: InstancePlayer | undefined;
  let playDir: string;
  let ns: string;
  const exitCodes = new Map<string, number>();

  beforeAll(async () => {
    await motoReset();
    const aws = { endpoint: motoEndpoint(), region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } };
    await new S3Client({ ...aws, forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }));
    ns = await freshNamespace(client, "finished-aws");
    await client.create(SecretResource, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "aws", namespace: ns }, stringData: { accessKeyId: "testing", secretAccessKey: "testing" },
    } as SecretObject);
    playDir = mkdtempSync(join(tmpdir(), "vmforge-finished-"));
    player = new InstancePlayer({ endpoint: motoEndpoint(), region: REGION, dir: playDir, say: () => undefined, exitCodeFor: (n) => exitCodes.get(n) });
    player.start();
    op = await startOperator(kubeconfigPath(), new Map([["aws", new AwsProvider({ endpoint: motoEndpoint() })]]), { namespaces: [ns], pollIntervalMs: 1_000, resyncPeriodMs: 3_600_000 });
  });

  afterAll(async () => {
    await op?.stop();
    await player?.stop();
    if (playDir) rmSync(playDir, { recursive: true, force: true });
  });

  it("deleting a finished Run whose machine is gone (by its TTL or by runHistory) sends no AWS request", async () => {
    await createCe(ns, "main", { credentials: { secretRef: { name: "aws" } }, runHistory: { failedLimit: 1 } }, { instanceType: "m6i.large", workDir: `s3://${BUCKET}/work` });
    exitCodes.set("ok", 0);
    exitCodes.set("bad", 3);
    await createRun(ns, "ok", "main", { ttlSecondsAfterFinished: 3600 });
    await createRun(ns, "bad", "main");
    const machineGone = (name: string) => waitFor(`Run ${name}'s machine recorded terminated`, async () => {
      const r = await getRun(ns, name);
      return r?.status?.instance?.state === "terminated" ? r : undefined;
    }, 120_000, 300);
    const ok = await machineGone("ok");
    const bad = await machineGone("bad");
    expect(ok.status?.phase).toBe("Succeeded");
    expect(bad.status?.phase).toBe("Failed");
    // The machines are played no more: from here on every request the layer sees is the operator's.
    await player?.stop();
    player = undefined;
    const before = (await strictAws().stats()).calls;

    // TTL: shortened after the end, the Run goes at once.
    await client.patch(RunResource, ns, "ok", { spec: { ttlSecondsAfterFinished: 0 } }, "merge");
    await gone(ns, "ok");
    // History: a Run cancelled before it launched ends Cancelled; the older Failed Run is beyond failedLimit 1.
    await createRun(ns, "never", "main", { cancel: true });
    await inPhase(ns, "never", "Cancelled");
    await gone(ns, "bad");
    expect(await names(ns)).toEqual(["never"]);

    const after = (await strictAws().stats()).calls;
    expect(after).toEqual(before);
  });
});
