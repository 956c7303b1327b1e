/**
 * The last known state of ComputeEnvironments that left the cluster while Runs of theirs may still
 * have machines: for a CE removed by force (its finalizer taken off by hand, or by a tool), the
 * machines it launched would otherwise be left running, since nothing else says which account,
 * region or subscription and which credentials reach them.
 *
 * The CE watch's DELETED event brings the object as it was last stored; it is kept here, by UID,
 * while some cached Run launched under it may still have a machine. A CE created again under the
 * same name is another CE: Runs launched under the removed one stay with it (the Run records the
 * CE's UID with its launch decision, see belongsTo). Kept in memory only: an operator that starts
 * after the removal has none of it; it then tries the CE now holding the name, if any (inferFrom),
 * and a Run whose machine that CE does not find says that its machine cannot be reached.
 *
 * The credentials Secret such a CE names stays held by the operator (its finalizer) while the CE
 * is remembered (secretNames), so that deleting it with the CE does not cut the machines off;
 * `onDrop` hears of each entry let go, to release it then.
 */
import type { ComputeEnvironment, Run } from "../../api/types.js";
import type { ListSource } from "./tracker.js";
import { runsOfCe } from "./tracker.js";
import { belongsTo, launchedUnder, machineMayExist } from "./phases.js";

/** At most this many removed CEs are remembered (the oldest go first). */
const MAX_REMEMBERED = 1_000;

const nameOf = (ce: ComputeEnvironment): string => `${ce.metadata.namespace}/${ce.metadata.name}`;

export class GoneComputeEnvironments {
  /** By UID, oldest first. */
  private readonly byUid = new Map<string, ComputeEnvironment>();
  /**
   * By UID of an entry inferFrom made: the UID of the CE now holding the name that found the
   * Run's machine. Kept here, never written to the cluster.
   */
  private readonly via = new Map<string, string>();

  constructor(
    private readonly runs: ListSource<Run>,
    private readonly max = MAX_REMEMBERED,
    private readonly onDrop: (ce: ComputeEnvironment) => void = () => undefined,
  ) {}

  /** The credentials Secrets the remembered CEs of a namespace name. */
  secretNames(namespace: string): string[] {
    const out: string[] = [];
    for (const ce of this.byUid.values()) {
      const s = ce.spec.credentials?.secretRef?.name;
      if (s && ce.metadata.namespace === namespace) out.push(s);
    }
    return out;
  }

  /** A CE left the cluster: remembered if a Run launched under it may still have a machine. */
  remember(ce: ComputeEnvironment): void {
    const uid = ce.metadata.uid;
    if (!uid) return;
    this.drop(uid);
    if (!this.needed(ce)) return;
    this.byUid.set(uid, ce);
    for (const [k, old] of this.byUid) {
      if (this.byUid.size <= this.max) break;
      this.drop(k);
      this.onDrop(old);
    }
  }

  /** A CE is in the cluster (again, e.g. after a relist that had missed it): it is not gone. */
  forget(ce: ComputeEnvironment): void {
    if (ce.metadata.uid) this.drop(ce.metadata.uid);
  }

  /** For an entry inferFrom made, the UID of the CE now holding the name that found the machine. */
  inferredVia(ce: ComputeEnvironment): string | undefined {
    return this.via.get(ce.metadata.uid ?? "");
  }

  /**
   * The removed CE a Run's machine was launched under, while a Run of it may have a machine: by the
   * UID the Run recorded, or (decided by an operator that did not record it) the CE of its name
   * removed last.
   */
  find(run: Run): ComputeEnvironment | undefined {
    const under = launchedUnder(run);
    if (under) {
      const ce = this.byUid.get(under);
      // The Run asking needs it: no look at the other Runs (the tracker asks for each Run of it).
      return ce && machineMayExist(run) ? ce : this.live(ce);
    }
    const name = `${run.metadata.namespace}/${run.spec.computeEnvironmentRef.name}`;
    for (const ce of [...this.byUid.values()].reverse()) if (nameOf(ce) === name) return this.live(ce);
    return undefined;
  }

  get size(): number {
    return this.byUid.size;
  }

  /**
   * Drops the removed CEs no Run needs any more (their last Run ended, or was deleted), telling
   * onDrop. Called when a Run's machine can no longer exist; cheap while nothing is remembered.
   */
  prune(): void {
    for (const ce of [...this.byUid.values()]) this.live(ce);
  }

  /**
   * An operator that did not see a CE go (it was down, or restarted since) has no record of it;
   * if the CE now holding the name finds the Run's machine (described by the Run's UID tag, in its
   * own account and region or subscription), that machine is reachable with what the new CE says.
   * Remembered from then on as the removed CE, under the UID the Run recorded, with the new CE's
   * spec and credentials (`made`: its stand-in, when the caller has it already), with the live
   * CE's UID as inferredVia; not in the cluster, so no finalizer of its own.
   */
  inferFrom(run: Run, live: ComputeEnvironment, made = standIn(run, live)): ComputeEnvironment | undefined {
    const uid = launchedUnder(run);
    if (!uid) return undefined;
    const known = this.byUid.get(uid);
    if (known) return known;
    if (!made || made.metadata.uid !== uid) return undefined;
    this.remember(made);
    if (this.byUid.has(uid)) this.via.set(uid, live.metadata.uid ?? "");
    return this.byUid.get(uid);
  }

  /** The entry while it is needed; dropped (and onDrop told) once it is not. */
  private live(ce: ComputeEnvironment | undefined): ComputeEnvironment | undefined {
    if (!ce || this.needed(ce)) return ce;
    this.drop(ce.metadata.uid ?? "");
    this.onDrop(ce);
    return undefined;
  }

  private drop(uid: string): void {
    this.byUid.delete(uid);
    this.via.delete(uid);
  }

  private needed(ce: ComputeEnvironment): boolean {
    return runsOfCe(this.runs, ce.metadata.namespace, ce.metadata.name).some((r) => machineMayExist(r) && belongsTo(r, ce));
  }
}

/**
 * The removed CE a Run was launched under, as the CE now holding its name describes it: that CE's
 * spec, status and credentials under the UID the Run recorded (names and tags the providers derive
 * from the CE's UID are the removed CE's); no finalizer.
 * None when the Run recorded no CE, or recorded this one.
 */
export function standIn(run: Run, live: ComputeEnvironment): ComputeEnvironment | undefined {
  const uid = launchedUnder(run);
  if (!uid || uid === live.metadata.uid) return undefined;
  const ce = structuredClone(live);
  ce.metadata.uid = uid;
  ce.metadata.finalizers = [];
  delete ce.metadata.deletionTimestamp;
  return ce;
}

/**
 * Which CE a Run goes with, the one rule the Run reconciler and the run tracker both follow:
 * - `ce`: the CE of its name, when the Run belongs to it (belongsTo: no machine yet, or its machine
 *   was launched under this CE, or under a CE not recorded by an older operator);
 * - else, while its machine may exist, the removed CE it was launched under (`gone`);
 * - `replaced`: the CE now holding the name, when the Run's machine was launched under another.
 */
export interface RunCe {
  ce?: ComputeEnvironment;
  gone?: boolean;
  replaced?: ComputeEnvironment;
}

export function ceOfRun(run: Run, named: ComputeEnvironment | undefined, gone?: Pick<GoneComputeEnvironments, "find">): RunCe {
  if (named && belongsTo(run, named)) return { ce: named };
  const was = machineMayExist(run) ? gone?.find(run) : undefined;
  if (was) return { ce: was, gone: true };
  return named ? { replaced: named } : {};
}
