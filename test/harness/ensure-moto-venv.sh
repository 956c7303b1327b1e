#!/usr/bin/env bash
# Creates a virtualenv with a pinned moto server under the vmforge cache folder, once.
#
#   VMFORGE_CACHE  cache root (default: $XDG_CACHE_HOME/vmforge or ~/.cache/vmforge)
#   MOTO_VERSION   moto release (default below)
#
# Prints the virtualenv folder on the last line of stdout. Progress goes to stderr.
# A marker file is written only after a complete install; an unfinished venv is rebuilt.
set -euo pipefail

MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
CACHE="${VMFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmforge}"
VENV="$CACHE/venv-moto-$MOTO_VERSION"
MARKER="$VENV/.vmforge-complete"

log() { printf '[moto] %s\n' "$*" >&2; }
die() { printf '[moto] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -f "$MARKER" && -x "$VENV/bin/moto_server" ]]; then
  echo "$VENV"
  exit 0
fi

mkdir -p "$CACHE"
# One installer at a time (parallel test runs, a developer's `npm run cluster`).
exec 9>"$CACHE/.venv-moto.lock"
flock 9
if [[ -f "$MARKER" && -x "$VENV/bin/moto_server" ]]; then
  echo "$VENV"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "python3 is not installed (needed to run the moto AWS emulator)."
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON lacks the venv/ensurepip modules (on Debian/Ubuntu: apt-get install python3-venv)."

log "creating virtualenv $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || die "python3 -m venv failed"
log "installing moto[server]==$MOTO_VERSION (needs the Python package index)"
start=$SECONDS
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2 \
  || die "pip install moto[server]==$MOTO_VERSION failed (is the Python package index reachable?)"
[[ -x "$VENV/bin/moto_server" ]] || die "moto_server missing after install"
"$VENV/bin/python" -c 'import moto.server' || die "moto server module does not import"
touch "$MARKER"
log "moto $MOTO_VERSION ready in $((SECONDS - start))s"
echo "$VENV"
