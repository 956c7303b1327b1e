/**
 * Two operator processes share one Lease: only the leader reconciles; killing it hands over;
 * SIGTERM releases the Lease at once.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { afterAll, beforeAll, expect, it } from "vitest";
import { KubeClient } from "../../src/engine/kube.js";
import type { KubeObject } from "../../src/engine/kube.js";
import { EventResource } from "../../src/engine/events.js";
import { ComputeEnvironmentResource } from "../../src/api/types.js";
import type { ComputeEnvironment } from "../../src/api/types.js";
import { installCrds, waitFor } from "../support/operator.js";
import { LeaseResource, leaseHolder } from "../support/lease.js";
import type { Lease } from "../support/lease.js";
import { freshNamespace, kubeconfigPath } from "../harness/helpers.js";

let client: KubeClient;
let ns: string;
const procs = new Map<string, ChildProcess>();

function startProcess(identity: string): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "test/support/operator-process.ts"], {
    env: {
      ...process.env,
      KUBECONFIG: kubeconfigPath(),
      POD_NAME: identity,
      VMFORGE_NAMESPACES: ns,
      VMFORGE_LEADER_ELECTION: "true",
      VMFORGE_LEADER_ELECTION_NAMESPACE: ns,
      VMFORGE_LEASE_DURATION: "4s",
      VMFORGE_LEASE_RENEW_DEADLINE: "3s",
      VMFORGE_LEASE_RETRY_PERIOD: "1s",
      VMFORGE_POLL_INTERVAL: "1s",
      VMFORGE_METRICS_ADDRESS: "127.0.0.1:0",
      VMFORGE_LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  procs.set(identity, child);
  return child;
}

const exited = (c: ChildProcess): Promise<number | null> =>
  c.exitCode !== null || c.signalCode !== null ? Promise.resolve(c.exitCode) : new Promise((r) => c.once("exit", (code) => r(code)));

async function holder(): Promise<string | undefined> {
  return leaseHolder(client, ns, "vmforge-operator");
}

async function readyBy(name: string): Promise<Set<string>> {
  await client.create(ComputeEnvironmentResource, {
    apiVersion: "vmforge.dev/v1alpha1", kind: "ComputeEnvironment", metadata: { name, namespace: ns },
    spec: { provider: "aws", aws: { region: "us-east-1", workDir: "s3://leader-test/work" } },
  } as ComputeEnvironment);
  await waitFor(`${name} Ready`, async () => {
    const ce = await client.get<ComputeEnvironment>(ComputeEnvironmentResource, ns, name);
    return ce?.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True");
  }, 60_000);
  // The Ready Event is recorded after the status write (and the sweep that follows it), and sent
  // on its own: wait for it rather than read the Events once.
  type Ev = KubeObject & { regarding?: { name?: string }; reportingInstance?: string; reason?: string };
  const about = async (): Promise<Ev[]> =>
    (await client.list<Ev>(EventResource, { namespace: ns })).items.filter((e) => e.regarding?.name === name);
  await waitFor(`${name}'s Ready Event`, async () => (await about()).some((e) => e.reason === "Ready"), 30_000);
  return new Set((await about()).map((e) => e.reportingInstance ?? ""));
}

beforeAll(async () => {
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  await installCrds(client);
  ns = await freshNamespace(client, "leader");
});

afterAll(async () => {
  for (const c of procs.values()) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await Promise.all([...procs.values()].map(exited));
});

it("only the leader reconciles, a killed leader is replaced, and SIGTERM releases the Lease", async () => {
  startProcess("op-a");
  startProcess("op-b");
  const first = await waitFor("a leader", holder, 60_000);
  expect(["op-a", "op-b"]).toContain(first);

  // Only the leader acted on the first CE.
  expect([...(await readyBy("ce-one"))]).toEqual([first]);

  // Kill the leader without a chance to clean up: the other takes over after the Lease expires.
  const leaderProc = procs.get(first) as ChildProcess;
  leaderProc.kill("SIGKILL");
  await exited(leaderProc);
  const second = first === "op-a" ? "op-b" : "op-a";
  await waitFor("hand-over", async () => (await holder()) === second, 30_000);
  expect([...(await readyBy("ce-two"))]).toEqual([second]);
  const lease = await client.get<Lease>(LeaseResource, ns, "vmforge-operator");
  expect(lease?.spec?.leaseTransitions ?? 0).toBeGreaterThanOrEqual(1);

  // Graceful stop: the Lease is released, not left to expire.
  const p = procs.get(second) as ChildProcess;
  p.kill("SIGTERM");
  expect(await exited(p)).toBe(0);
  expect(await holder()).toBeUndefined();
});
