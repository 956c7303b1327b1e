#!/usr/bin/env bash
# `npm run sandbox` on a fresh clone: installs the npm dependencies (Node 24 among them) when they
# are missing, then starts the sandbox. Arguments go to test/sandbox/main.ts (e.g. --exit,
# --cloud azure).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [[ -L node_modules ]]; then
  # A link to an install shared with other checkouts (git worktrees): never reinstall through it,
  # `npm ci` would empty the shared folder for everyone.
  :
elif [[ ! -x node_modules/.bin/tsx || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "[sandbox] installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund
fi
export PATH="$PWD/node_modules/.bin:$PATH"
exec node --import tsx test/sandbox/main.ts "$@"
