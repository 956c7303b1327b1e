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
 * after the removal has none of it, and such a Run says that its machine cannot be reached.
 *
 * The credentials Secret such a CE names stays held by the operator (its finalizer) while the CE
 * is remembered (secretNames), so that deleting it with the CE does not cut the machines off;
 * `onDrop` hears of each entry let go, to release it then.
 */
import type { ComputeEnvironment, Run } from "../../api/types.js";
import type { CacheSource, ListSource } from "./tracker.js";
import { runsOfCe } from "./tracker.js";
import { belongsTo, launchedUnder, machineMayExist } from "./phases.js";

/** At most this many removed CEs are remembered (the oldest go first). */
const MAX_REMEMBERED = 1_000;

const nameOf = (ce: ComputeEnvironment): string => `${ce.metadata.namespace}/${ce.metadata.name}`;

export class GoneComputeEnvironments {
  /** By UID, oldest first. */
  private readonly byUid = new Map<string, ComputeEnvironment>();

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
    this.byUid.delete(uid);
    if (!this.needed(ce)) return;
    this.byUid.set(uid, ce);
    for (const [k, old] of this.byUid) {
      if (this.byUid.size <= this.max) break;
      this.byUid.delete(k);
      this.onDrop(old);
    }
  }

  /** A CE is in the cluster (again, e.g. after a relist that had missed it): it is not gone. */
  forget(ce: ComputeEnvironment): void {
    if (ce.metadata.uid) this.byUid.delete(ce.metadata.uid);
  }

  /**
   * The removed CE a Run's machine was launched under, while a Run of it may have a machine: by the
   * UID the Run recorded, or (decided by an operator that did not record it) the CE of its name
   * removed last.
   */
  find(run: Run): ComputeEnvironment | undefined {
    const under = launchedUnder(run);
    if (under) return this.live(this.byUid.get(under));
    const name = `${run.metadata.namespace}/${run.spec.computeEnvironmentRef.name}`;
    for (const ce of [...this.byUid.values()].reverse()) if (nameOf(ce) === name) return this.live(ce);
    return undefined;
  }

  get size(): number {
    return this.byUid.size;
  }

  /**
   * The live CEs and, after them, the removed ones some Run may still have a machine of, the last
   * removed first (what the run tracker polls with); removed CEs no Run needs any more are dropped.
   */
  over(live: CacheSource<ComputeEnvironment>): ListSource<ComputeEnvironment> {
    return {
      list: () => {
        const out = live.list();
        if (this.byUid.size === 0) return out;
        const all = [...out];
        for (const ce of [...this.byUid.values()].reverse()) {
          if (live.get(nameOf(ce))?.metadata.uid === ce.metadata.uid) continue;
          if (this.live(ce)) all.push(ce);
        }
        return all;
      },
    };
  }

  /** The entry while it is needed; dropped (and onDrop told) once it is not. */
  private live(ce: ComputeEnvironment | undefined): ComputeEnvironment | undefined {
    if (!ce || this.needed(ce)) return ce;
    this.byUid.delete(ce.metadata.uid ?? "");
    this.onDrop(ce);
    return undefined;
  }

  private needed(ce: ComputeEnvironment): boolean {
    return runsOfCe(this.runs, ce.metadata.namespace, ce.metadata.name).some((r) => machineMayExist(r) && belongsTo(r, ce));
  }
}
