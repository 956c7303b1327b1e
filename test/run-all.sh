#!/usr/bin/env bash
# The whole test suite, as `npm test` runs it (README: `npm install-ci-test`):
#   prepare      build kube-apiserver/kube-controller-manager/etcd and the moto virtualenv when missing
#   typecheck    tsc --noEmit
#   lint         eslint .
#   unit         vitest --project unit
#   integration  vitest --project integration (starts a real control plane and moto)
#   image        npm run image: the Dockerfile built with buildah, run as the operator (test/image/run.sh)
# Every step runs even when an earlier one failed (integration needs prepare); the exit code is
# non-zero when any step failed, when the run left files in the work tree, or when a process
# started by the run is still alive at the end.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# Node 24 and the tools come from the project's own node_modules, also when run without npm.
export PATH="$ROOT/node_modules/.bin:$PATH"

say() { printf '\n[run-all] %s\n' "$*"; }

if [[ ! -x node_modules/.bin/vitest ]]; then
  echo "[run-all] node_modules is missing: run 'npm ci' first (or use 'npm install-ci-test')." >&2
  exit 1
fi

# Every process this run starts carries this marker in its environment, so leftovers can be
# found precisely even while other test runs are active on the same machine.
RUN_ID="$$-$(date +%s%N)"
export VMFORGE_TEST_RUN_ID="$RUN_ID"
# Temp folders of the harness go to a folder of this run, checked and removed at the end.
RUN_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vmforge-test-run.XXXXXX")
export TMPDIR="$RUN_TMP"

# Component logs (etcd, kube-apiserver, kube-controller-manager, moto) of this run are kept here,
# outside the work tree, until the next run.
CACHE="${VMFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmforge}"
export VMFORGE_KEEP_LOGS="$CACHE/logs/last-run"
rm -rf "$VMFORGE_KEEP_LOGS"

status_before=$(git status --porcelain --untracked-files=all 2>/dev/null)

declare -a SUMMARY=()
FAILED=0
TOTAL_START=$SECONDS

step() {
  local name=$1; shift
  say "step $name: $*"
  local start=$SECONDS rc=0
  "$@" || rc=$?
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    SUMMARY+=("$(printf '%-12s ok      %5ss' "$name" "$took")")
  else
    SUMMARY+=("$(printf '%-12s FAILED  %5ss  (exit %s)' "$name" "$took" "$rc")")
    FAILED=1
  fi
  return $rc
}

skip() {
  SUMMARY+=("$(printf '%-12s SKIPPED         (%s)' "$1" "$2")")
  FAILED=1
}

leftover_pids() {
  local d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ $pid == "$$" ]] && continue
    if grep -qz "^VMFORGE_TEST_RUN_ID=$RUN_ID\$" "$d/environ" 2>/dev/null; then echo "$pid"; fi
  done
}

say "node $(node --version), npm $(npm --version 2>/dev/null || echo '?'), $(nproc) cores"

prepared=1
# Each step has a ceiling (timeout(1) exits 124 when it is hit), so a hung step fails the run
# instead of running into CI's own limit.
bounded() { local secs=$1; shift; timeout --kill-after=30 "$secs" "$@"; }
step prepare bounded 2700 tsx test/harness/cli.ts prepare || prepared=0
step typecheck bounded 600 tsc -p tsconfig.json --noEmit
step lint bounded 600 eslint .
step unit bounded 900 vitest run --project unit --reporter=default --reporter=json --outputFile.json="$RUN_TMP/unit.json"
if [[ $prepared -eq 1 ]]; then
  if ! step integration bounded 2700 vitest run --project integration --reporter=default --reporter=json --outputFile.json="$RUN_TMP/integration.json" \
    && [[ -d "$VMFORGE_KEEP_LOGS" ]]; then
    say "server logs of the integration run are kept in $VMFORGE_KEEP_LOGS"
  fi
else
  skip integration "prepare failed"
fi
# The Dockerfile's image, built without a Docker engine and run as the operator (npm run image).
if [[ $prepared -eq 1 ]]; then
  step image bounded 1800 bash test/image/run.sh
else
  skip image "prepare failed"
fi

# --- hygiene checks ---------------------------------------------------------------------
say "checking for leftover processes, temp folders and files"
mapfile -t left < <(leftover_pids)
if [[ ${#left[@]} -gt 0 ]]; then
  sleep 3
  mapfile -t left < <(leftover_pids)
fi
if [[ ${#left[@]} -gt 0 ]]; then
  echo "[run-all] ERROR: processes of this run are still alive:" >&2
  for p in "${left[@]}"; do printf '  %s %s\n' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-200)" >&2; done
  kill -KILL "${left[@]}" 2>/dev/null || true
  SUMMARY+=("$(printf '%-12s FAILED  (%s processes survived; killed now)' processes "${#left[@]}")")
  FAILED=1
else
  SUMMARY+=("$(printf '%-12s ok      (no process of this run survived)' processes)")
fi

stale=$(find "$RUN_TMP" -maxdepth 1 \( -name 'vmforge-cluster-*' -o -name 'vmforge-moto-*' \) 2>/dev/null)
if [[ -n "$stale" ]]; then
  echo "[run-all] ERROR: harness temp folders were left behind:" >&2
  echo "$stale" >&2
  SUMMARY+=("$(printf '%-12s FAILED  (harness temp folders left behind)' tempdirs)")
  FAILED=1
else
  SUMMARY+=("$(printf '%-12s ok      (no harness temp folder left)' tempdirs)")
fi

status_after=$(git status --porcelain --untracked-files=all 2>/dev/null)
if [[ "$status_after" != "$status_before" ]]; then
  # Strict on a clean tree (a fresh clone, CI). In a tree that was already being edited, other
  # edits made during the run cannot be told apart from files the run made: warn only.
  if [[ -z "$status_before" || -n "${CI:-}" ]]; then
    echo "[run-all] ERROR: the run changed the work tree (git status):" >&2
    diff <(echo "$status_before") <(echo "$status_after") >&2
    SUMMARY+=("$(printf '%-12s FAILED  (the run left files in the work tree)' worktree)")
    FAILED=1
  else
    echo "[run-all] WARNING: git status changed during the run (the tree was not clean before; edits made meanwhile also show here):" >&2
    diff <(echo "$status_before") <(echo "$status_after") >&2
    SUMMARY+=("$(printf '%-12s WARNING (git status changed; tree was dirty before the run)' worktree)")
  fi
else
  SUMMARY+=("$(printf '%-12s ok      (git status unchanged)' worktree)")
fi

# Test counts from vitest's JSON reports (only files that exist: a step may have crashed early).
counts=$(node -e '
  const fs = require("node:fs");
  let passed = 0, failed = 0, skipped = 0;
  for (const f of process.argv.slice(1)) {
    if (!fs.existsSync(f)) continue;
    const r = JSON.parse(fs.readFileSync(f, "utf8"));
    passed += r.numPassedTests; failed += r.numFailedTests; skipped += r.numPendingTests + (r.numTodoTests ?? 0);
  }
  console.log(`${passed} ${failed} ${skipped}`);
' "$RUN_TMP/unit.json" "$RUN_TMP/integration.json" 2>/dev/null || echo "0 0 0")
read -r n_passed n_failed n_skipped <<<"$counts"

rm -rf "$RUN_TMP"

say "summary (total $((SECONDS - TOTAL_START))s)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo
if [[ $FAILED -ne 0 ]]; then echo "[run-all] FAILED"; else echo "[run-all] all steps passed"; fi
echo "tests: $n_passed passed, $n_failed failed, $n_skipped skipped"
exit $FAILED
