/**
 * The two reconcilers on the real kube-apiserver (+ kube-controller-manager), driven by the
 * in-memory FakeCloud: CE and Run life cycles, cancel, timeout, concurrency, deletion paths,
 * namespace deletion, credentials, and no status writes when nothing changed.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient } from "../../src/engine/kube.js";
import type { ResourceType } from "../../src/engine/kube.js";
import { ComputeEnvironmentResource, RunResource } from "../../src/api/types.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import { CloudError } from "../../src/cloud/provider.js";
import { FINALIZER, SECRET_IN_USE_FINALIZER, SecretResource } from "../../src/controllers/shared.js";
import type { SecretObject } from "../../src/controllers/shared.js";
import { FakeCloud } from "../support/fake-cloud.js";
import { installCrds, startOperator, waitFor } from "../support/operator.js";
import type { RunningOperator } from "../support/operator.js";
import { freshNamespace, kubeconfigPath } from "../harness/helpers.js";
import { EventResource, type EventObject } from "../../src/engine/events.js";

const NamespaceResource: ResourceType = { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false };

let client: KubeClient;
let cloud: FakeCloud;
let op: RunningOperator;
let ns: string;

function ceManifest(name: string, extra: Partial<ComputeEnvironment["spec"]> = {}): ComputeEnvironment {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "ComputeEnvironment",
    metadata: { name, namespace: ns },
    spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://vmforge-test-bucket/work" }, ...extra } as ComputeEnvironment["spec"],
  };
}

function runManifest(name: string, ce: string, extra: Partial<Run["spec"]> = {}): Run {
  return {
    apiVersion: "vmforge.dev/v1alpha1",
    kind: "Run",
    metadata: { name, namespace: ns },
    spec: { computeEnvironmentRef: { name: ce }, pipeline: { repository: "https://github.com/nextflow-io/hello" }, ...extra } as Run["spec"],
  };
}

const getCe = (name: string, namespace = ns) => client.get<ComputeEnvironment>(ComputeEnvironmentResource, namespace, name);
const getRun = (name: string, namespace = ns) => client.get<Run>(RunResource, namespace, name);
const cond = (o: { status?: { conditions?: { type: string; status: string; reason: string; message: string }[] } } | undefined, type: string) =>
  o?.status?.conditions?.find((c) => c.type === type);

async function readyCe(name: string, extra: Partial<ComputeEnvironment["spec"]> = {}): Promise<ComputeEnvironment> {
  await client.create(ComputeEnvironmentResource, ceManifest(name, extra));
  return waitFor(`CE ${name} Ready`, async () => {
    const ce = await getCe(name);
    return cond(ce, "Ready")?.status === "True" ? ce : undefined;
  });
}

async function runInPhase(name: string, phase: string, namespace = ns, timeoutMs = 30_000): Promise<Run> {
  return waitFor(`Run ${name} ${phase}`, async () => {
    const r = await getRun(name, namespace);
    return r?.status?.phase === phase ? r : undefined;
  }, timeoutMs);
}

async function events(name: string): Promise<EventObject[]> {
  const list = await client.list<EventObject>(EventResource, { namespace: ns });
  return list.items.filter((e) => e.regarding?.name === name);
}

beforeAll(async () => {
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "lifecycle");
  cloud = new FakeCloud();
  op = await startOperator(kubeconfigPath(), new Map([["aws", cloud]]), { namespaces: [ns] });
});

afterAll(async () => {
  await op?.stop();
});

describe("ComputeEnvironment", () => {
  it("becomes Ready with a finalizer, its resources listed and the kstatus conditions", async () => {
    const ce = await readyCe("ready");
    expect(ce.metadata.finalizers).toContain(FINALIZER);
    expect(ce.status?.phase).toBe("Ready");
    expect(ce.status?.observedGeneration).toBe(ce.metadata.generation);
    expect(ce.status?.resources?.map((r) => r.kind).sort()).toEqual(["IAMRole", "InstanceProfile"]);
    expect(cond(ce, "Reconciling")?.status).toBe("False");
    expect(cond(ce, "Stalled")?.status).toBe("False");
    // the Event follows the status write
    await waitFor("Ready Event", async () => (await events("ready")).some((e) => e.reason === "Ready"));
  });

  it("reports a missing credentials Secret by name, protects it once it exists, and goes Ready", async () => {
    await client.create(ComputeEnvironmentResource, ceManifest("creds", { credentials: { secretRef: { name: "aws-creds" } } }));
    const stalled = await waitFor("CE creds Stalled", async () => {
      const ce = await getCe("creds");
      return cond(ce, "Stalled")?.status === "True" ? ce : undefined;
    });
    expect(cond(stalled, "Stalled")?.reason).toBe("SecretNotFound");
    expect(cond(stalled, "Stalled")?.message).toContain(`${ns}/aws-creds`);
    expect(cloud.calls.provision).toBeGreaterThan(0); // from the earlier test only
    const before = cloud.calls.provision;

    await client.create(SecretResource, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "aws-creds", namespace: ns },
      stringData: { accessKeyId: "AKIAEXAMPLE", secretAccessKey: "first-secret-value" },
    } as SecretObject);
    await waitFor("CE creds Ready", async () => cond(await getCe("creds"), "Ready")?.status === "True", 40_000);
    expect(cloud.calls.provision).toBeGreaterThan(before);
    expect(cloud.lastCredentials?.secretAccessKey).toBe("first-secret-value");
    const secret = await client.get<SecretObject>(SecretResource, ns, "aws-creds");
    expect(secret?.metadata.finalizers).toContain(SECRET_IN_USE_FINALIZER);
    // The value never reaches status.
    expect(JSON.stringify(await getCe("creds"))).not.toContain("first-secret-value");

    // Rotation: new data is used on the next reconcile, without a restart.
    await client.patch(SecretResource, ns, "aws-creds", { stringData: { secretAccessKey: "rotated-secret-value" } }, "merge");
    await waitFor("rotated credentials used", async () => cloud.lastCredentials?.secretAccessKey === "rotated-secret-value");
  });

  it("goes Stalled with the provider's reason on a terminal error and recovers after a spec change", async () => {
    cloud.provisionError = CloudError.terminal("InvalidSpec", "spec.aws.amiId: ami-0123456789abcdef0 not found in eu-west-1");
    cloud.provisionErrorSticky = true;
    await client.create(ComputeEnvironmentResource, ceManifest("stall"));
    const ce = await waitFor("CE stall Stalled", async () => {
      const c = await getCe("stall");
      return cond(c, "Stalled")?.status === "True" ? c : undefined;
    });
    expect(cond(ce, "Stalled")?.reason).toBe("InvalidSpec");
    expect(cond(ce, "Stalled")?.message).toContain("spec.aws.amiId");
    expect(cond(ce, "Ready")?.status).toBe("False");
    cloud.provisionError = undefined;
    cloud.provisionErrorSticky = false;
    await client.patch(ComputeEnvironmentResource, ns, "stall", { spec: { aws: { instanceType: "m6i.xlarge" } } }, "merge");
    await waitFor("CE stall Ready after fix", async () => cond(await getCe("stall"), "Ready")?.status === "True");
  });
});

describe("Run", () => {
  it("goes Pending -> Launching/Running -> Succeeded, launches once and records the outcome", async () => {
    await readyCe("ce-run");
    await client.create(RunResource, runManifest("ok", "ce-run"));
    const running = await runInPhase("ok", "Running");
    expect(running.metadata.finalizers).toContain(FINALIZER);
    expect(running.status?.instance?.id).toMatch(/^i-/);
    expect(running.status?.log?.provider).toBe("cloudwatch");
    cloud.finish(running.metadata.uid ?? "", 0);
    const done = await runInPhase("ok", "Succeeded");
    expect(done.status?.exitCode).toBe(0);
    expect(done.status?.completionTime).toBeTruthy();
    expect(cond(done, "Ready")?.status).toBe("True");
    const launches = [...cloud.machines.values()].filter((m) => m.runUid === done.metadata.uid).length;
    expect(launches).toBe(1);
    await waitFor("completion Event", async () => (await events("ok")).some((e) => e.reason === "Succeeded" && e.note?.includes("exit code 0")));
  });

  it("fails with the exit code when the pipeline fails, and with the cloud's reason when the machine vanishes", async () => {
    await client.create(RunResource, runManifest("bad", "ce-run"));
    await client.create(RunResource, runManifest("spot", "ce-run", { overrides: { spot: true } }));
    const bad = await runInPhase("bad", "Running");
    const spot = await runInPhase("spot", "Running");
    cloud.finish(bad.metadata.uid ?? "", 3);
    cloud.interrupt(spot.metadata.uid ?? "", "Server.SpotInstanceTermination: Spot instance termination");
    const failed = await runInPhase("bad", "Failed");
    expect(failed.status?.exitCode).toBe(3);
    expect(failed.status?.reason).toBe("PipelineFailed");
    const lost = await runInPhase("spot", "Failed");
    expect(lost.status?.reason).toBe("MachineTerminated");
    expect(lost.status?.message).toContain("Spot instance termination");
  });

  it("is never launched again once terminal", async () => {
    const before = cloud.calls.launch;
    const run = await getRun("ok");
    // Poke it: an annotation change enqueues it again.
    await client.patch(RunResource, ns, "ok", { metadata: { annotations: { poke: "1" } } }, "merge");
    await new Promise((r) => setTimeout(r, 1500));
    expect(cloud.calls.launch).toBe(before);
    expect((await getRun("ok"))?.status?.phase).toBe(run?.status?.phase);
  });

  it("cancel stops the machine and ends Cancelled", async () => {
    await client.create(RunResource, runManifest("cancel-me", "ce-run"));
    const r = await runInPhase("cancel-me", "Running");
    await client.patch(RunResource, ns, "cancel-me", { spec: { cancel: true } }, "merge");
    const c = await runInPhase("cancel-me", "Cancelled");
    expect(c.status?.reason).toBe("Cancelled");
    await waitFor("machine terminated", async () => cloud.machineOf(r.metadata.uid ?? "")?.state === "terminated");
    await waitFor("status records the machine gone", async () => (await getRun("cancel-me"))?.status?.instance?.state === "terminated");
  });

  it("times out: the machine is stopped and the Run fails with reason Timeout", async () => {
    cloud.launchedAgoMs = 2 * 3600_000;
    try {
      await client.create(RunResource, runManifest("slow", "ce-run", { timeout: "1h" }));
      const f = await runInPhase("slow", "Failed");
      expect(f.status?.reason).toBe("Timeout");
      await waitFor("machine terminated", async () => cloud.machineOf(f.metadata.uid ?? "")?.state === "terminated");
    } finally {
      cloud.launchedAgoMs = 0;
    }
  });

  it("waits Pending while its ComputeEnvironment is missing, then launches", async () => {
    await client.create(RunResource, runManifest("early", "ce-later"));
    const p = await waitFor("Run early Pending", async () => {
      const r = await getRun("early");
      return r?.status?.reason === "ComputeEnvironmentNotFound" ? r : undefined;
    });
    expect(p.status?.phase).toBe("Pending");
    expect(p.status?.message).toContain("ce-later");
    await readyCe("ce-later");
    await runInPhase("early", "Running");
  });

  it("respects maxConcurrentRuns: the second Run waits for a slot", async () => {
    await readyCe("ce-one", { maxConcurrentRuns: 1 });
    await client.create(RunResource, runManifest("first", "ce-one"));
    const first = await runInPhase("first", "Running");
    await client.create(RunResource, runManifest("second", "ce-one"));
    const waiting = await waitFor("second waits", async () => {
      const r = await getRun("second");
      return r?.status?.reason === "ConcurrencyLimit" ? r : undefined;
    });
    expect(waiting.status?.phase).toBe("Pending");
    cloud.finish(first.metadata.uid ?? "", 0);
    await runInPhase("second", "Running");
  });

  it("a Run removed by hand (finalizer stripped) gives its concurrency slot back", async () => {
    await readyCe("ce-slot", { maxConcurrentRuns: 1 });
    await client.create(RunResource, runManifest("stuck", "ce-slot"));
    await runInPhase("stuck", "Running");
    await client.create(RunResource, runManifest("next", "ce-slot"));
    await waitFor("next waits for a slot", async () => (await getRun("next"))?.status?.reason === "ConcurrencyLimit");
    // An admin clears a stuck Run the hard way.
    await client.patch(RunResource, ns, "stuck", { metadata: { finalizers: null } }, "merge");
    await client.delete(RunResource, ns, "stuck");
    await waitFor("stuck gone", async () => (await getRun("stuck")) === undefined);
    await client.patch(RunResource, ns, "next", { metadata: { annotations: { nudge: "1" } } }, "merge");
    await runInPhase("next", "Running");
  });

  it("a Run that cannot get a machine within its timeout fails with reason Timeout", async () => {
    await client.create(RunResource, runManifest("orphaned", "no-such-ce", { timeout: "1m" }));
    const f = await runInPhase("orphaned", "Failed", ns, 90_000);
    expect(f.status?.reason).toBe("Timeout");
    expect(f.status?.message).toContain("did not get a machine");
  }, 120_000);

  it("a crash right after the cloud call does not make a second machine", async () => {
    cloud.launchErrorAfterCreate = CloudError.retryable("Crash", "simulated failure after the machine was created");
    await client.create(RunResource, runManifest("crashy", "ce-run"));
    const r = await runInPhase("crashy", "Running");
    expect([...cloud.machines.values()].filter((m) => m.runUid === r.metadata.uid)).toHaveLength(1);
    expect(cloud.calls.launch).toBeGreaterThanOrEqual(2);
  });

  it("deleting a Run mid-run stops its machine before the Run goes away", async () => {
    await client.create(RunResource, runManifest("doomed", "ce-run"));
    const r = await runInPhase("doomed", "Running");
    await client.delete(RunResource, ns, "doomed");
    await waitFor("Run doomed gone", async () => (await getRun("doomed")) === undefined);
    expect(cloud.machineOf(r.metadata.uid ?? "")?.state).toBe("terminated");
  });
});

describe("orphans", () => {
  it("a machine tagged for the CE whose Run no longer exists is terminated at the next check", async () => {
    const ce = await readyCe("ce-orphan");
    cloud.machines.set("gone-run-uid", {
      id: "i-0orphan", runUid: "gone-run-uid", ceUid: ce.metadata.uid ?? "", state: "running", launchedAt: new Date().toISOString(), log: [],
    });
    // A spec change makes the CE converge (and sweep) now rather than at the next drift check.
    await client.patch(ComputeEnvironmentResource, ns, "ce-orphan", { spec: { aws: { instanceType: "m6i.xlarge" } } }, "merge");
    await waitFor("orphan terminated", async () => cloud.machineOf("gone-run-uid")?.state === "terminated");
    await waitFor("sweep Event", async () => (await events("ce-orphan")).some((e) => e.reason === "OrphansTerminated" && e.note?.includes("i-0orphan")));
  });
});

describe("deletion", () => {
  it("deleting a CE with no Run left but a machine of its own terminates the machine first and says so, then disposes", async () => {
    const ce = await readyCe("ce-leftover");
    // The Ready Event is recorded after the converge's own orphan sweep, which must not find the machine.
    await waitFor("Ready Event", async () => (await events("ce-leftover")).some((e) => e.reason === "Ready"));
    cloud.machines.set("left-run-uid", {
      id: "i-0leftover", runUid: "left-run-uid", ceUid: ce.metadata.uid ?? "", state: "running", launchedAt: new Date().toISOString(), log: [],
    });
    const disposed = cloud.calls.dispose;
    const sweeps = cloud.calls.sweep;
    // How many looks at the machines the operator had made when it disposed of the resources.
    let sweepsAtDispose: number | undefined;
    const dispose = cloud.disposeEnvironment.bind(cloud);
    cloud.disposeEnvironment = async (ctx) => {
      sweepsAtDispose ??= cloud.calls.sweep - sweeps;
      return dispose(ctx);
    };
    await client.delete(ComputeEnvironmentResource, ns, "ce-leftover");
    const reasons: string[] = [];
    try {
      await waitFor("CE ce-leftover gone", async () => {
        const c = await getCe("ce-leftover");
        const reason = cond(c, "Reconciling")?.reason;
        if (reason && reasons.at(-1) !== reason) reasons.push(reason);
        return c === undefined;
      }, 30_000, 100);
    } finally {
      cloud.disposeEnvironment = dispose;
    }
    // The look that told the machine to stop, then a last one that found none, before the disposal.
    expect(sweepsAtDispose).toBe(2);
    // Told to stop at the first look (said for a deletion poll), found ending at the next: only
    // then are the resources deleted (Disposing, too brief to be seen every time).
    expect(reasons.filter((r) => r !== "Idle" && r !== "Disposing")).toEqual(["StoppingMachines"]);
    expect(cloud.machineOf("left-run-uid")?.state).toBe("terminated");
    expect(cloud.calls.dispose).toBe(disposed + 1);
    expect((await events("ce-leftover")).some((e) => e.reason === "TerminatingMachines" && e.note?.includes("i-0leftover"))).toBe(true);
  });

  it("deleting a CE with a running Run cancels it, waits for the machine, disposes, releases the Secret", async () => {
    await client.create(SecretResource, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "del-creds", namespace: ns },
      stringData: { accessKeyId: "AKIAEXAMPLE", secretAccessKey: "s3cr3t" },
    } as SecretObject);
    const ce = await readyCe("ce-del", { credentials: { secretRef: { name: "del-creds" } } });
    await client.create(RunResource, runManifest("victim", "ce-del"));
    const r = await runInPhase("victim", "Running");
    const disposed = cloud.calls.dispose;
    await client.delete(ComputeEnvironmentResource, ns, "ce-del");
    const c = await runInPhase("victim", "Cancelled");
    expect(c.status?.reason).toBe("ComputeEnvironmentDeleted");
    await waitFor("CE ce-del gone", async () => (await getCe("ce-del")) === undefined);
    expect(cloud.machineOf(r.metadata.uid ?? "")?.state).toBe("terminated");
    expect(cloud.calls.dispose).toBe(disposed + 1);
    expect(cloud.environments.has(ce.metadata.uid ?? "")).toBe(false);
    const secret = await client.get<SecretObject>(SecretResource, ns, "del-creds");
    expect(secret?.metadata.finalizers ?? []).not.toContain(SECRET_IN_USE_FINALIZER);
  });

  it("a credentials Secret deleted while its CE exists stays readable until the CE is gone", async () => {
    await client.create(SecretResource, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "kept-creds", namespace: ns },
      stringData: { accessKeyId: "AKIAEXAMPLE", secretAccessKey: "kept" },
    } as SecretObject);
    await readyCe("ce-kept", { credentials: { secretRef: { name: "kept-creds" } } });
    await client.delete(SecretResource, ns, "kept-creds");
    const terminating = await client.get<SecretObject>(SecretResource, ns, "kept-creds");
    expect(terminating?.metadata.deletionTimestamp).toBeTruthy();
    expect(terminating?.data?.secretAccessKey).toBeTruthy();
    // The CE keeps working with it (a spec change forces a fresh provision).
    const before = cloud.calls.provision;
    await client.patch(ComputeEnvironmentResource, ns, "ce-kept", { spec: { aws: { instanceType: "m6i.xlarge" } } }, "merge");
    await waitFor("re-provisioned with the terminating Secret", async () => cloud.calls.provision > before && cond(await getCe("ce-kept"), "Ready")?.status === "True");
    await client.delete(ComputeEnvironmentResource, ns, "ce-kept");
    await waitFor("CE ce-kept gone", async () => (await getCe("ce-kept")) === undefined);
    await waitFor("Secret released and gone", async () => (await client.get(SecretResource, ns, "kept-creds")) === undefined);
  });

  it("switching a CE to another Secret releases the old one", async () => {
    for (const name of ["switch-a", "switch-b"]) {
      await client.create(SecretResource, {
        apiVersion: "v1", kind: "Secret", metadata: { name, namespace: ns }, stringData: { accessKeyId: "AKIAEXAMPLE", secretAccessKey: name },
      } as SecretObject);
    }
    await readyCe("ce-switch", { credentials: { secretRef: { name: "switch-a" } } });
    const finalizersOf = async (name: string) => (await client.get<SecretObject>(SecretResource, ns, name))?.metadata.finalizers ?? [];
    expect(await finalizersOf("switch-a")).toContain(SECRET_IN_USE_FINALIZER);
    await client.patch(ComputeEnvironmentResource, ns, "ce-switch", { spec: { credentials: { secretRef: { name: "switch-b" } } } }, "merge");
    await waitFor("switch-b protected, switch-a released", async () =>
      (await finalizersOf("switch-b")).includes(SECRET_IN_USE_FINALIZER) && !(await finalizersOf("switch-a")).includes(SECRET_IN_USE_FINALIZER));
    await client.delete(SecretResource, ns, "switch-a");
    await waitFor("switch-a deleted", async () => (await client.get(SecretResource, ns, "switch-a")) === undefined);
  });

  it("a Secret shared by two CEs deleted together is released once both are gone", async () => {
    await client.create(SecretResource, {
      apiVersion: "v1", kind: "Secret", metadata: { name: "shared", namespace: ns }, stringData: { accessKeyId: "AKIAEXAMPLE", secretAccessKey: "shared" },
    } as SecretObject);
    await readyCe("ce-s1", { credentials: { secretRef: { name: "shared" } }, deletionPolicy: "Retain" });
    await readyCe("ce-s2", { credentials: { secretRef: { name: "shared" } }, deletionPolicy: "Retain" });
    await Promise.all([client.delete(ComputeEnvironmentResource, ns, "ce-s1"), client.delete(ComputeEnvironmentResource, ns, "ce-s2")]);
    await waitFor("both CEs gone", async () => (await getCe("ce-s1")) === undefined && (await getCe("ce-s2")) === undefined);
    await waitFor("shared Secret released", async () =>
      !((await client.get<SecretObject>(SecretResource, ns, "shared"))?.metadata.finalizers ?? []).includes(SECRET_IN_USE_FINALIZER));
  });

  it("Retain leaves the cloud untouched", async () => {
    const ce = await readyCe("ce-keep", { deletionPolicy: "Retain" });
    const disposed = cloud.calls.dispose;
    await client.delete(ComputeEnvironmentResource, ns, "ce-keep");
    await waitFor("CE ce-keep gone", async () => (await getCe("ce-keep")) === undefined);
    expect(cloud.calls.dispose).toBe(disposed);
    expect(cloud.environments.has(ce.metadata.uid ?? "")).toBe(true);
  });

  it("a CE that never reached the cloud releases its finalizer at once", async () => {
    await client.create(ComputeEnvironmentResource, ceManifest("never", { credentials: { secretRef: { name: "nope" } } }));
    await waitFor("CE never has finalizer", async () => (await getCe("never"))?.metadata.finalizers?.includes(FINALIZER));
    const disposed = cloud.calls.dispose;
    await client.delete(ComputeEnvironmentResource, ns, "never");
    await waitFor("CE never gone", async () => (await getCe("never")) === undefined, 10_000);
    expect(cloud.calls.dispose).toBe(disposed);
  });

  it("deleting the whole namespace stops machines, disposes and completes", async () => {
    const other = await freshNamespace(client, "nsdel");
    const op2 = await startOperator(kubeconfigPath(), new Map([["aws", cloud]]), { namespaces: [other] });
    try {
      await client.create(ComputeEnvironmentResource, { ...ceManifest("ce-ns"), metadata: { name: "ce-ns", namespace: other } });
      const ce = await waitFor("ce-ns Ready", async () => {
        const c = await getCe("ce-ns", other);
        return cond(c, "Ready")?.status === "True" ? c : undefined;
      });
      await client.create(RunResource, { ...runManifest("r", "ce-ns"), metadata: { name: "r", namespace: other } });
      const r = await runInPhase("r", "Running", other);
      await client.delete(NamespaceResource, undefined, other);
      await waitFor(`namespace ${other} gone`, async () => (await client.get(NamespaceResource, undefined, other)) === undefined, 90_000, 500);
      expect(cloud.machineOf(r.metadata.uid ?? "")?.state).toBe("terminated");
      expect(cloud.environments.has(ce.metadata.uid ?? "")).toBe(false);
    } finally {
      await op2.stop();
    }
  });
});

describe("status writes", () => {
  it("are not repeated when nothing changed, across resyncs", async () => {
    const quiet = await freshNamespace(client, "quiet");
    const op3 = await startOperator(kubeconfigPath(), new Map([["aws", new FakeCloud()]]), { namespaces: [quiet], resyncPeriodMs: 500 });
    try {
      await client.create(ComputeEnvironmentResource, { ...ceManifest("q"), metadata: { name: "q", namespace: quiet } });
      const ce = await waitFor("q Ready", async () => {
        const c = await getCe("q", quiet);
        return cond(c, "Ready")?.status === "True" ? c : undefined;
      });
      // Let the Ready event settle, then count writes over several resync periods.
      await new Promise((r) => setTimeout(r, 1500));
      const rv = (await getCe("q", quiet))?.metadata.resourceVersion;
      await new Promise((r) => setTimeout(r, 3000));
      const after = await getCe("q", quiet);
      expect(after?.metadata.resourceVersion).toBe(rv);
      expect(after?.status?.conditions?.find((c) => c.type === "Ready")?.lastTransitionTime)
        .toBe(ce.status?.conditions?.find((c) => c.type === "Ready")?.lastTransitionTime);
    } finally {
      await op3.stop();
    }
  });
});
