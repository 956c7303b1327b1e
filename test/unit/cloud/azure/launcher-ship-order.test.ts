// The Azure launcher's log shipper (ship, in src/cloud/azure/launcher.sh) run by bash on its own,
// with a round that races the launcher: lines are written to both files between the shipper's two
// line counts, as happens on a VM where the shipper runs beside the launcher. The Logs Ingestion
// call is replaced by a function that keeps each batch it is given.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AZURE_LAUNCHER_PART } from "../../../../src/cloud/azure/launcher-script.js";

interface Row { Stream: string; Seq: number; Line: string }

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/**
 * Runs `body` after the Azure part is loaded, with launcher.log holding L1 L2 and run.log holding
 * out-1 (written after L2), each launcher line written by the wrapped marker. Returns the rows
 * of every batch posted, in the order posted, and how many batches there were.
 */
function shipWith(body: string): { rows: Row[]; batches: number } {
  const dir = mkdtempSync(join(tmpdir(), "vmforge-ship-"));
  dirs.push(dir);
  writeFileSync(join(dir, "part.sh"), AZURE_LAUNCHER_PART);
  const script = `
set -o pipefail
ROOT=${JSON.stringify(dir)}/root
STATE_DIR=${JSON.stringify(dir)}/state
mkdir -p "$ROOT/var/log/vmforge" "$STATE_DIR" ${JSON.stringify(dir)}/posted
VMF_RUN_UID=run-uid VMF_DCE=https://dce.example VMF_DCR=dcr-1 VMF_STREAM=Custom-VmforgeRunLog_CL VMFORGE_FLUSH_WAIT=1
source ${JSON.stringify(join(dir, "part.sh"))}
# The core's marker (src/cloud/launcher/core.sh), wrapped by the Azure part as the launcher wraps it.
marker() { printf '%s\n' "$1" >>"$LAUNCHER_LOG"; }
note_order_of_own_lines
imds_token() { echo token; }
# Called in a command substitution (a subshell): the count of batches is the count of files.
with_bearer() {
  local a n
  for a in "$@"; do
    if [[ "$a" == @* ]]; then
      n=$(ls ${JSON.stringify(dir)}/posted | wc -l)
      cp "\${a#@}" ${JSON.stringify(dir)}/posted/$(printf '%03d' "$((n + 1))").json
    fi
  done
  printf 204
}
marker L1
marker L2
echo out-1 >>"$LOG_FILE"
${body}
`;
  execFileSync("bash", ["-c", script], { stdio: ["ignore", "pipe", "pipe"] });
  const posted = readdirSync(join(dir, "posted")).sort();
  const rows = posted.flatMap((f) => JSON.parse(readFileSync(join(dir, "posted", f), "utf8")) as Row[]);
  return { rows, batches: posted.length };
}

// line_count, raced once: after the shipper counts the launcher's lines, the launcher writes L3
// (with the wrapped marker, which notes it first) and then two output lines, before the output is
// counted. The copy of line_count is the Azure part's own, taken before it is replaced.
const RACE = `
eval "real_$(declare -f line_count)"
line_count() {
  real_line_count "$1"
  if [[ "$1" == "$LAUNCHER_LOG" && ! -e "$STATE_DIR/raced" && -n "\${IN_SHIP:-}" ]]; then
    touch "$STATE_DIR/raced"
    marker L3
    printf 'out-2\\nout-3\\n' >>"$LOG_FILE"
  fi
}
`;

describe("Azure log shipper: the order of the two streams", () => {
  it("output written after a launcher line the shipper's count missed does not overtake it", () => {
    const { rows } = shipWith(`${RACE}\nIN_SHIP=1 ship_all`);
    expect(rows.map((r) => r.Line)).toEqual(["L1", "L2", "out-1", "L3", "out-2", "out-3"]);
    expect(rows.map((r) => r.Seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(rows.map((r) => r.Stream)).toEqual(["launcher", "launcher", "pipeline", "launcher", "pipeline", "pipeline"]);
  });

  it("output held for a launcher line not written yet is not posted as an empty batch; once all is written, it goes", () => {
    // L3 noted, its line not written (the launcher is between the two), output after it.
    const setUp = `
printf '%s %s\\n' 2 1 >>"$ORDER_FILE"
printf 'out-2\\n' >>"$LOG_FILE"
`;
    const waiting = shipWith(`${setUp}\nship_all`);
    expect(waiting.rows.map((r) => r.Line)).toEqual(["L1", "L2", "out-1"]);
    expect(waiting.batches).toBe(1);
    // The launcher's flush at its end: nothing is written any more, so the entry holds nothing back.
    const flushed = shipWith(`${setUp}\nship_all\ncloud_flush_logs`);
    expect(flushed.rows.map((r) => r.Line)).toEqual(["L1", "L2", "out-1", "out-2"]);
    expect(flushed.rows.map((r) => r.Seq)).toEqual([1, 2, 3, 4]);
  });
});
