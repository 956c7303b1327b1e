// The operator as both sandboxes run it: src/main.ts under tsx in a child process, its output
// kept in a log file, stopped with SIGTERM by the sandbox's cleanup.
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));

export interface SandboxOperatorOptions {
  /** The whole environment of the operator process. */
  env: NodeJS.ProcessEnv;
  /** File that receives everything the operator prints. */
  logFile: string;
  /** The sandbox's cleanup list; stopping the operator is added to it. */
  cleanups: (() => Promise<void> | void)[];
  say: (msg: string) => void;
}

export function startSandboxOperator(o: SandboxOperatorOptions): ChildProcess {
  writeFileSync(o.logFile, "");
  const operator: ChildProcess = spawn(process.execPath, ["--import", "tsx", join(REPO, "src/main.ts")], {
    cwd: REPO,
    env: o.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logLines: string[] = [];
  const keep = (d: Buffer): void => {
    logLines.push(...d.toString().split("\n").filter(Boolean));
    writeFileSync(o.logFile, `${logLines.join("\n")}\n`);
  };
  operator.stdout?.on("data", keep);
  operator.stderr?.on("data", keep);
  o.cleanups.push(async () => {
    if (operator.exitCode === null) {
      operator.kill("SIGTERM");
      await new Promise((r) => operator.once("exit", r));
    }
  });
  o.say(`operator started (pid ${operator.pid}); its log: ${o.logFile}`);
  return operator;
}
