/**
 * A controller's own writes whose watch events need no reconcile of their own.
 *
 * Every write a reconciler makes comes back as a watch event, which by default enqueues the object
 * again. Where the reconcile that wrote decides, from what it wrote, when to look next (it returns
 * a requeue), that second reconcile only finds what the first one left. The reconciler brackets
 * such a write with `begin` (the resourceVersion it writes on) and `end` (the one it produced, or
 * none: refused, failed, nothing to write); the watch's event handler asks `held` with the cached
 * version before the event and the event's own, and enqueues only when told to.
 *
 * Only an event that moves the cache from exactly the version written on to exactly the version
 * written is an echo. Any other change made in between has an event of its own that goes first
 * (and is not an echo), and a relist that folded another writer's change into the same event
 * starts from another version, so nobody else's change is taken for ours. The echo often arrives
 * before the write's own answer: an event from the version a write is under way on is held until
 * that answer, then dropped if it was the write's, or enqueued (`enqueue`) if it was not.
 */
export class OwnWrites {
  private readonly byKey = new Map<string, { pending?: { from: string; heldTo?: string }; done: { from: string; to: string }[] }>();

  /**
   * `enqueue` takes the keys of held events that were not echoes. maxKeys bounds the memory of
   * echoes that never come (a watch gap): past it, the finished ones are forgotten.
   */
  constructor(private readonly enqueue: (key: string) => void, private readonly maxKeys = 100_000, private readonly maxPerKey = 4) {}

  /** A write of `key` on version `from` is under way (one at a time per key: its reconcile's). */
  begin(key: string, from: string | undefined): void {
    if (!from) return;
    if (this.byKey.size >= this.maxKeys && !this.byKey.has(key)) this.prune();
    const entry = this.byKey.get(key) ?? { done: [] };
    entry.pending = { from };
    this.byKey.set(key, entry);
  }

  /** The write begun on `from` ended, having produced version `to` (undefined: nothing written). */
  end(key: string, from: string | undefined, to: string | undefined): void {
    const entry = this.byKey.get(key);
    if (!from || !entry?.pending || entry.pending.from !== from) return;
    const { heldTo } = entry.pending;
    delete entry.pending;
    const wrote = to !== undefined && to !== from;
    if (heldTo !== undefined) {
      // The event came first: the write's own, or another writer's.
      if (!wrote || heldTo !== to) this.enqueue(key);
    } else if (wrote) {
      entry.done.push({ from, to });
      if (entry.done.length > this.maxPerKey) entry.done.shift();
    }
    if (entry.done.length === 0) this.byKey.delete(key);
  }

  /**
   * True when the event (the cache going from `oldRv` to `newRv`) needs no enqueue now: an echo of a
   * finished write (forgotten with it), or an event from the version a write is under way on, held
   * until that write's end.
   */
  held(key: string, oldRv: string | undefined, newRv: string | undefined): boolean {
    const entry = this.byKey.get(key);
    if (!entry || !oldRv || !newRv) return false;
    // A finished write's echo first: a write begun since on a cache that did not show it yet (its
    // reconcile started before the echo came) is made on the same version, and will be refused.
    const i = entry.done.findIndex((w) => w.from === oldRv && w.to === newRv);
    if (i >= 0) {
      // What was noted before this write is behind the cache now: its echo can no longer come.
      entry.done.splice(0, i + 1);
      if (entry.done.length === 0 && !entry.pending) this.byKey.delete(key);
      return true;
    }
    if (entry.pending && entry.pending.from === oldRv && entry.pending.heldTo === undefined) {
      entry.pending.heldTo = newRv;
      return true;
    }
    return false;
  }

  /** The object is gone: its echoes are no longer awaited (a held event is let go). */
  forget(key: string): void {
    const entry = this.byKey.get(key);
    this.byKey.delete(key);
    if (entry?.pending?.heldTo !== undefined) this.enqueue(key);
  }

  /** Keys with writes under way or echoes awaited. */
  get size(): number {
    return this.byKey.size;
  }

  private prune(): void {
    for (const [key, entry] of this.byKey) if (!entry.pending) this.byKey.delete(key);
  }
}
