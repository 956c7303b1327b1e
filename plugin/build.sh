#!/usr/bin/env bash
# Builds the kubectl plugin as ONE executable that needs neither a checkout nor a Node.js on the
# machine: src/kubectl-vmforge.ts bundled by esbuild into a single CommonJS file, then made a Node
# single executable application (SEA) with the project's own Node 24 (the `node` package in
# node_modules) and postject.
#
#   plugin/build.sh [--out DIR]        DIR/kubectl-vmforge (default DIR: dist/plugin)
#
# Copy kubectl-vmforge to a folder on PATH and `kubectl vmforge ...` finds it. The executable is
# for the platform it was built on (CI builds linux/amd64 and linux/arm64 on matching runners).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/dist/plugin"
while (($#)); do
  case $1 in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"

bin="$root/node_modules/.bin"
node="$(readlink -f "$bin/node")"
for tool in esbuild postject; do
  if [[ ! -x $bin/$tool ]]; then
    echo "plugin/build.sh: node_modules/.bin/$tool is missing (npm ci)" >&2
    exit 1
  fi
done
if [[ $("$node" -p 'process.versions.node.split(".")[0]') != 24 ]]; then
  echo "plugin/build.sh: $node is not Node 24" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vmforge-plugin.XXXXXX")
trap 'rm -rf "$work"' EXIT

# One CommonJS file (SEA runs CommonJS); Node built-ins stay external, everything else is inside.
# `punycode` is the npm package (the deprecated built-in of that name would print a warning).
"$bin/esbuild" "$root/src/kubectl-vmforge.ts" --bundle --platform=node --target=node24 --format=cjs \
  --alias:punycode=punycode/ --log-level=error --legal-comments=none --outfile="$work/kubectl-vmforge.cjs"

cat >"$work/sea-config.json" <<JSON
{ "main": "$work/kubectl-vmforge.cjs", "output": "$work/sea.blob", "disableExperimentalSEAWarning": true, "useCodeCache": false, "useSnapshot": false }
JSON
quiet() { local log; if ! log=$("$@" 2>&1); then echo "$log" >&2; return 1; fi; }
quiet "$node" --experimental-sea-config "$work/sea-config.json"

cp "$node" "$work/kubectl-vmforge"
chmod u+w "$work/kubectl-vmforge"
quiet "$bin/postject" "$work/kubectl-vmforge" NODE_SEA_BLOB "$work/sea.blob" \
  --sentinel-fuse NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2
chmod 0755 "$work/kubectl-vmforge"
mv -f "$work/kubectl-vmforge" "$out/kubectl-vmforge"
echo "$out/kubectl-vmforge"
