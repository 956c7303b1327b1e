/**
 * The real operator entry point (src/main.ts runOperator: config from the environment, leader
 * election, health server, signal handling) with the in-memory cloud, as a child process for
 * tests that need several operator processes or kill one.
 * VMFORGE_TEST_HANG_LAUNCH=1 makes every launch hang and ignore its abort signal (a cloud that
 * stopped answering), for shutdown tests.
 */
import { runOperator } from "../../src/run-operator.js";
import { FakeCloud } from "./fake-cloud.js";
import type { RunDescription } from "../../src/cloud/provider.js";

class HangingCloud extends FakeCloud {
  override launchRun(): Promise<RunDescription> {
    this.calls.launch++;
    return new Promise(() => undefined);
  }
}

await runOperator(new Map([["aws", process.env.VMFORGE_TEST_HANG_LAUNCH === "1" ? new HangingCloud() : new FakeCloud()]]));
