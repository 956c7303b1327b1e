/**
 * The real operator entry point (src/main.ts runOperator) with the real AWS provider, as a child
 * process tests can SIGKILL and start again. Every AWS client goes to $VMFORGE_AWS_ENDPOINT (the
 * strict AWS layer). VMFORGE_TEST_EXIT_PROBE (ms, default 1000) replaces the provider's 5-minute
 * pace for reading the exit status of a machine that still runs, so a machine whose shutdown fails
 * is noticed within a test's patience.
 */
import { runOperator } from "../../src/run-operator.js";
import { AwsProvider } from "../../src/cloud/aws/provider.js";

const probe = Number(process.env.VMFORGE_TEST_EXIT_PROBE ?? "1000");
await runOperator(new Map([["aws", new AwsProvider({ runningExitProbeMs: probe })]]));
