// Leader election between LeaderElectors in this process, on one real coordination.k8s.io Lease.
// (Handover between operator processes is tested separately.)
import { Writable } from "node:stream";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { KubeClient } from "../../src/engine/kube.js";
import { LeaderElector, LeaseResource } from "../../src/engine/leader.js";
import type { Lease } from "../../src/engine/leader.js";
import { createLogger } from "../../src/engine/logger.js";
import { EngineMetrics } from "../../src/engine/metrics.js";
import { deleteNamespace, freshNamespace, kubeconfigPath, randomSuffix } from "../harness/helpers.js";

const WAIT = { timeout: 30_000, interval: 100 };
const TIMING = { leaseDurationMs: 2_000, renewDeadlineMs: 1_500, retryPeriodMs: 300 };
const logger = createLogger({ level: "debug", destination: new Writable({ write: (_c, _e, cb) => cb() }) });

let client: KubeClient;
let ns: string;
const electors: LeaderElector[] = [];

/** A client whose every call fails while `broken()` is true (a partitioned leader). */
function breakable(inner: KubeClient, broken: () => boolean): KubeClient {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const v: unknown = Reflect.get(target, prop, receiver);
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        if (broken()) return Promise.reject(new Error("simulated network partition"));
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

interface Candidate {
  elector: LeaderElector;
  run: Promise<void>;
  started: number;
  stopped: number;
  signal?: AbortSignal;
  metrics: EngineMetrics;
}

/** Log of leadership changes across candidates, in the order they happened. */
let timeline: string[] = [];

function candidate(identity: string, lease: string, c: KubeClient = client): Candidate {
  const metrics = new EngineMetrics({ defaultMetrics: false });
  const elector = new LeaderElector({ client: c, namespace: ns, name: lease, identity, ...TIMING, logger, metrics });
  electors.push(elector);
  const cand: Candidate = { elector, run: Promise.resolve(), started: 0, stopped: 0, metrics };
  cand.run = elector.run({
    onStartedLeading: (signal) => {
      cand.started++;
      cand.signal = signal;
      timeline.push(`start:${identity}`);
    },
    onStoppedLeading: () => {
      cand.stopped++;
      timeline.push(`stop:${identity}`);
    },
  });
  return cand;
}

async function readLease(name: string): Promise<Lease | undefined> {
  return client.get<Lease>(LeaseResource, ns, name);
}

beforeAll(async () => {
  client = KubeClient.fromKubeconfig(kubeconfigPath());
  ns = await freshNamespace(client, "leader");
});

afterEach(async () => {
  await Promise.all(electors.splice(0).map((e) => e.stop()));
  timeline = [];
});

afterAll(async () => {
  if (ns) await deleteNamespace(ns);
  client?.close();
});

describe("LeaderElector on a real Lease", () => {
  it("of two candidates exactly one leads; stop() hands over to the other", async () => {
    const lease = `lock-${randomSuffix()}`;
    const a = candidate("a", lease);
    const b = candidate("b", lease);
    await vi.waitFor(() => expect(a.elector.isLeader() || b.elector.isLeader()).toBe(true), WAIT);
    const [leader, other] = a.elector.isLeader() ? [a, b] : [b, a];

    // Over several renew periods: never two leaders (isLeader() may briefly turn false on a
    // starved event loop, which is the safe direction), and leadership never moved.
    for (let i = 0; i < 20; i++) {
      expect(Number(a.elector.isLeader()) + Number(b.elector.isLeader())).toBeLessThanOrEqual(1);
      await new Promise((r) => setTimeout(r, 150));
    }
    expect(leader.started).toBe(1);
    expect(other.started).toBe(0);
    const held = await readLease(lease);
    expect(held?.spec).toMatchObject({ holderIdentity: leader.elector.identity, leaseDurationSeconds: 2, leaseTransitions: 0 });
    expect(await leader.metrics.text()).toMatch(/vmforge_leader_status 1/);
    expect(await other.metrics.text()).toMatch(/vmforge_leader_status 0/);

    await leader.elector.stop();
    await leader.run;
    expect(leader.stopped).toBe(1);
    expect(leader.signal?.aborted).toBe(true);
    expect(leader.elector.isLeader()).toBe(false);

    await vi.waitFor(() => expect(other.elector.isLeader()).toBe(true), WAIT);
    expect(other.started).toBe(1);
    const after = await readLease(lease);
    expect(after?.spec).toMatchObject({ holderIdentity: other.elector.identity, leaseTransitions: 1 });
    expect(timeline).toEqual([`start:${leader.elector.identity}`, `stop:${leader.elector.identity}`, `start:${other.elector.identity}`]);
  });

  it("stop() releases the Lease: holder cleared, duration 1 s", async () => {
    const lease = `lock-${randomSuffix()}`;
    const a = candidate("solo", lease);
    await vi.waitFor(() => expect(a.elector.isLeader()).toBe(true), WAIT);
    await a.elector.stop();
    const released = await readLease(lease);
    expect(released?.spec?.holderIdentity).toBeUndefined();
    expect(released?.spec?.leaseDurationSeconds).toBe(1);
  });

  it("a leader that cannot renew steps down, and the other candidate takes over after expiry", async () => {
    const lease = `lock-${randomSuffix()}`;
    let partitioned = false;
    const a = candidate("flaky", lease, breakable(client, () => partitioned));
    await vi.waitFor(() => expect(a.elector.isLeader()).toBe(true), WAIT);
    const b = candidate("steady", lease);
    await new Promise((r) => setTimeout(r, 600));
    expect(b.elector.isLeader()).toBe(false);

    partitioned = true;
    await vi.waitFor(() => expect(a.stopped).toBe(1), WAIT);
    await a.run; // run() ends once leadership is lost
    expect(a.signal?.aborted).toBe(true);
    expect(a.elector.isLeader()).toBe(false);

    await vi.waitFor(() => expect(b.elector.isLeader()).toBe(true), WAIT);
    expect(timeline).toEqual(["start:flaky", "stop:flaky", "start:steady"]);
    const taken = await readLease(lease);
    expect(taken?.spec).toMatchObject({ holderIdentity: "steady", leaseTransitions: 1 });
    // the partitioned one never wrote after stepping down: the Lease stays with "steady"
    partitioned = false;
    await new Promise((r) => setTimeout(r, 600));
    expect((await readLease(lease))?.spec?.holderIdentity).toBe("steady");
  });
});
