#!/usr/bin/env bash
# Prints the krew plugin manifest of a release: plugin/krew/vmforge.yaml with the version, the
# download addresses and the sha256 of each platform's archive filled in.
#
#   .github/scripts/krew-manifest.sh <version> <download-base-url> <linux-amd64.tar.gz> <linux-arm64.tar.gz>
set -euo pipefail

if (($# != 4)); then
  echo "usage: $0 <version> <download-base-url> <linux-amd64.tar.gz> <linux-arm64.tar.gz>" >&2
  exit 2
fi
version=$1 base=$2 amd64=$3 arm64=$4
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

sha() { sha256sum "$1" | cut -d' ' -f1; }

sed -e "s|@VERSION@|$version|g" -e "s|@HOMEPAGE@|${base%/releases/download/*}|" \
  -e "s|@AMD64_URI@|$base/$(basename "$amd64")|" \
  -e "s|@AMD64_SHA256@|$(sha "$amd64")|" \
  -e "s|@ARM64_URI@|$base/$(basename "$arm64")|" \
  -e "s|@ARM64_SHA256@|$(sha "$arm64")|" \
  "$root/plugin/krew/vmforge.yaml"
