/**
 * The real operator entry point (src/main.ts runOperator: config from the environment, leader
 * election, health server, signal handling) with the in-memory cloud, as a child process for
 * tests that need several operator processes or kill one.
 */
import { runOperator } from "../../src/main.js";
import { FakeCloud } from "./fake-cloud.js";

await runOperator(new Map([["aws", new FakeCloud()]]));
