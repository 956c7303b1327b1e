import { describe, expect, it } from "vitest";
import { OwnWrites } from "../../../src/engine/echoes.js";

function writes(maxKeys?: number, maxPerKey?: number): { w: OwnWrites; enqueued: string[] } {
  const enqueued: string[] = [];
  return { w: new OwnWrites((k) => enqueued.push(k), maxKeys, maxPerKey), enqueued };
}

describe("OwnWrites", () => {
  it("an echo that comes after the write's answer: only the cache going from exactly the version written on to exactly the one written", () => {
    const { w, enqueued } = writes();
    w.begin("ns/a", "10");
    w.end("ns/a", "10", "11");
    expect(w.held("ns/a", "9", "11")).toBe(false); // another change came first (or a relist folded it in)
    expect(w.held("ns/b", "10", "11")).toBe(false);
    expect(w.held("ns/a", "10", "12")).toBe(false);
    expect(w.held("ns/a", "10", "11")).toBe(true);
    expect(w.held("ns/a", "10", "11")).toBe(false); // once only
    expect(w.size).toBe(0);
    expect(enqueued).toEqual([]);
  });

  it("an echo that comes before the write's answer is held, then dropped", () => {
    const { w, enqueued } = writes();
    w.begin("k", "5");
    expect(w.held("k", "5", "6")).toBe(true);
    // a later event (someone else's, after ours) is not held
    expect(w.held("k", "6", "7")).toBe(false);
    w.end("k", "5", "6");
    expect(enqueued).toEqual([]);
    expect(w.size).toBe(0);
  });

  it("an event held while a write was under way that turns out to be another writer's is enqueued at the write's end", () => {
    for (const to of [undefined, "5", "7"]) {
      const { w, enqueued } = writes();
      w.begin("k", "5");
      expect(w.held("k", "5", "6")).toBe(true);
      w.end("k", "5", to); // refused (409), nothing written, or written after the other change
      expect(enqueued).toEqual(["k"]);
      expect(w.size).toBe(0);
    }
  });

  it("a finished write's echo that comes while a later write is under way on the same version is taken as that echo, not held", () => {
    const { w, enqueued } = writes();
    w.begin("k", "5");
    w.end("k", "5", "6");
    // the next reconcile started from a cache still at 5
    w.begin("k", "5");
    expect(w.held("k", "5", "6")).toBe(true);
    w.end("k", "5", undefined); // refused: 6 is there
    expect(enqueued).toEqual([]);
    expect(w.size).toBe(0);
  });

  it("keeps two writes of one reconcile in order, and drops those behind a matched one", () => {
    const { w } = writes();
    w.begin("k", "1");
    w.end("k", "1", "2");
    w.begin("k", "2");
    w.end("k", "2", "3");
    expect(w.held("k", "2", "3")).toBe(true); // the first echo never came (a watch gap)
    expect(w.held("k", "1", "2")).toBe(false);
    expect(w.size).toBe(0);
  });

  it("notes nothing for a write that wrote nothing or was made on no version; a deleted object's held event is let go", () => {
    const { w, enqueued } = writes();
    w.begin("k", "1");
    w.end("k", "1", "1");
    w.begin("k", undefined);
    w.end("k", undefined, "2");
    expect(w.size).toBe(0);
    w.begin("k", "1");
    expect(w.held("k", "1", "2")).toBe(true);
    w.forget("k");
    expect(enqueued).toEqual(["k"]);
    w.end("k", "1", "2");
    expect(enqueued).toEqual(["k"]);
  });

  it("is bounded: past maxKeys the finished ones go, past maxPerKey a key's oldest", () => {
    const { w } = writes(2, 2);
    const write = (k: string, from: string, to: string) => { w.begin(k, from); w.end(k, from, to); };
    write("a", "1", "2");
    w.begin("b", "1"); // under way: kept
    write("c", "1", "2");
    expect(w.size).toBe(2);
    expect(w.held("a", "1", "2")).toBe(false);
    expect(w.held("c", "1", "2")).toBe(true);
    write("d", "1", "2");
    write("d", "2", "3");
    write("d", "3", "4");
    expect(w.held("d", "1", "2")).toBe(false);
    expect(w.held("d", "3", "4")).toBe(true);
  });
});
