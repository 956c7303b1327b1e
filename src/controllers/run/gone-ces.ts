/**
 * The last known state of ComputeEnvironments that left the cluster while Runs of theirs may still
 * have machines: for a CE removed by force (its finalizer taken off by hand, or by a tool), the
 * machines it launched would otherwise be left running, since nothing else says which account,
 * region or subscription and which credentials reach them.
 *
 * The CE watch's DELETED event brings the object as it was last stored; it is kept here, by
 * "namespace/name", while some cached Run of that CE may still have a machine. A CE created again
 * under the same name replaces it. Kept in memory only: an operator that starts after the removal
 * has none of it, and such a Run says that its machine cannot be reached.
 *
 * The credentials Secret such a CE names stays held by the operator (its finalizer) while the CE
 * is remembered (secretNames), so that deleting it with the CE does not cut the machines off;
 * `onDrop` hears of each entry let go, to release it then.
 */
import type { ComputeEnvironment, Run } from "../../api/types.js";
import type { CacheSource, ListSource } from "./tracker.js";
import { runsOfCe } from "./tracker.js";
import { machineMayExist } from "./phases.js";

/** At most this many removed CEs are remembered (the oldest go first). */
const MAX_REMEMBERED = 1_000;

const keyOf = (ce: ComputeEnvironment): string => `${ce.metadata.namespace}/${ce.metadata.name}`;

export class GoneComputeEnvironments {
  private readonly byKey = new Map<string, ComputeEnvironment>();

  constructor(
    private readonly runs: ListSource<Run>,
    private readonly max = MAX_REMEMBERED,
    private readonly onDrop: (ce: ComputeEnvironment) => void = () => undefined,
  ) {}

  /** The credentials Secrets the remembered CEs of a namespace name. */
  secretNames(namespace: string): string[] {
    const out: string[] = [];
    for (const ce of this.byKey.values()) {
      const s = ce.spec.credentials?.secretRef?.name;
      if (s && ce.metadata.namespace === namespace) out.push(s);
    }
    return out;
  }

  /** A CE left the cluster: remembered if a Run of it may still have a machine. */
  remember(ce: ComputeEnvironment): void {
    const key = keyOf(ce);
    this.byKey.delete(key);
    if (!this.needed(key)) return;
    this.byKey.set(key, ce);
    for (const [k, old] of this.byKey) {
      if (this.byKey.size <= this.max) break;
      this.byKey.delete(k);
      this.onDrop(old);
    }
  }

  /** A CE of that name exists (again): the live one is what its Runs go by. */
  forget(ce: ComputeEnvironment): void {
    this.byKey.delete(keyOf(ce));
  }

  /** The removed CE a Run named, while one of its Runs may have a machine. */
  get(key: string): ComputeEnvironment | undefined {
    const ce = this.byKey.get(key);
    if (ce && !this.needed(key)) {
      this.byKey.delete(key);
      this.onDrop(ce);
      return undefined;
    }
    return ce;
  }

  get size(): number {
    return this.byKey.size;
  }

  /**
   * The live CEs and, beside them, the removed ones some Run may still have a machine of (what the
   * run tracker polls with); removed CEs no Run needs any more are dropped here.
   */
  over(live: CacheSource<ComputeEnvironment>): ListSource<ComputeEnvironment> {
    return {
      list: () => {
        const out = live.list();
        if (this.byKey.size === 0) return out;
        const all = [...out];
        for (const key of [...this.byKey.keys()]) {
          const ce = live.get(key) ? undefined : this.get(key);
          if (ce) all.push(ce);
        }
        return all;
      },
    };
  }

  private needed(key: string): boolean {
    const slash = key.indexOf("/");
    return runsOfCe(this.runs, key.slice(0, slash), key.slice(slash + 1)).some(machineMayExist);
  }
}
