/**
 * The operator's entry point: `node dist/main.js` (the image's CMD, `npm start`). Everything it
 * runs is in run-operator.ts, which the CLI (`vmforge operator`) and the tests import; this file
 * only starts it, so that a bundle's shared chunks never have to decide whether they are the
 * program being run.
 */
import { defaultProviders, runOperator } from "./run-operator.js";

runOperator((config, logger) => defaultProviders(config, logger)).catch((e: unknown) => {
  console.error("vmforge: fatal:", e instanceof Error ? e.message : e);
  process.exit(1);
});
