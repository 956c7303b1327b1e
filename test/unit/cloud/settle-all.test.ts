// settleAll: how cloud code joins calls made side by side (src/cloud/provider.ts).
import { describe, expect, it } from "vitest";
import { CloudError, settleAll } from "../../../src/cloud/provider.js";

/** A call that ends when told, and says whether it has. */
function pending<T>(): { promise: Promise<T>; resolve: (v: T) => void; done: () => boolean } {
  let resolve!: (v: T) => void;
  let settled = false;
  const promise = new Promise<T>((res) => {
    resolve = (v) => { settled = true; res(v); };
  });
  return { promise, resolve, done: () => settled };
}

describe("settleAll", () => {
  it("gives the values in order, typed per position", async () => {
    const [a, b] = await settleAll([Promise.resolve(1), Promise.resolve("two")]);
    expect(a + 1).toBe(2);
    expect(b.length).toBe(3);
    expect(await settleAll([3, 4].map(async (n) => n * 2))).toEqual([6, 8]);
    expect(await settleAll([])).toEqual([]);
  });

  it("does not give up at a failure while another call is still running: it throws once every call has ended", async () => {
    const slow = pending<string>();
    const refused = CloudError.retryable("Throttled", "throttled", 1_000);
    let thrownWhileRunning: boolean | undefined;
    const joined = settleAll([Promise.reject(refused), slow.promise]).catch((e: unknown) => {
      thrownWhileRunning = !slow.done();
      throw e;
    });
    // The failure is known at once; the join still waits for the slow call.
    await new Promise((r) => setTimeout(r, 20));
    expect(thrownWhileRunning).toBeUndefined();
    slow.resolve("late");
    await expect(joined).rejects.toBe(refused);
    expect(thrownWhileRunning).toBe(false);
  });

  it("throws a Terminal CloudError first, else a failure that is no CloudError, else the longest wait hint, else the first in order", async () => {
    const passing = CloudError.retryable("Throttled", "throttled", 1_000);
    const longer = CloudError.retryable("Throttled", "throttled longer", 3_000);
    const unhinted = CloudError.retryable("Http503", "unavailable");
    const forGood = CloudError.terminal("AccessDenied", "missing permission");
    const bug = new TypeError("cannot read properties of undefined");
    await expect(settleAll([Promise.reject(passing), Promise.reject(bug), Promise.reject(forGood)])).rejects.toBe(forGood);
    // A bug (or an abort) is not hidden behind a passing refusal.
    await expect(settleAll([Promise.reject(longer), Promise.reject(bug), Promise.resolve(1)])).rejects.toBe(bug);
    // Passing refusals: the longest wait hint, so the retry does not come before a throttled call may go again.
    await expect(settleAll([Promise.reject(unhinted), Promise.reject(passing), Promise.reject(longer)])).rejects.toBe(longer);
    // No hint at all: the first in order.
    const alsoUnhinted = CloudError.retryable("Http500", "internal error");
    await expect(settleAll([Promise.reject(unhinted), Promise.reject(alsoUnhinted)])).rejects.toBe(unhinted);
  });
});
