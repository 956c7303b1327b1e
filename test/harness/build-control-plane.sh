#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd from their Go modules into a
# version-keyed cache folder outside the repository. Does nothing when the binaries exist.
#
#   VMFORGE_CACHE  cache root            (default: $XDG_CACHE_HOME/vmforge or ~/.cache/vmforge)
#   K8S_VERSION    k8s.io/kubernetes tag (default below)
#
# Prints the bin folder on the last line of stdout. Progress goes to stderr.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
CACHE="${VMFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmforge}"
OUT="$CACHE/control-plane/$K8S_VERSION"
BIN="$OUT/bin"

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { printf '[control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/etcd" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed (need Go >= 1.26 on PATH to build the control plane)."
GO_MINOR=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
[[ -n "$GO_MINOR" && "$GO_MINOR" -ge 26 ]] || die "Go >= 1.26 is needed to build the control plane, found: $(go version 2>&1)"

# One build at a time (parallel test runs, a developer's `npm run cluster`): the others wait
# and then find the binaries.
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
if ! flock -n 9; then
  log "another build of $K8S_VERSION is running; waiting for it"
  flock 9
fi
if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/etcd" ]]; then
  echo "$BIN"
  exit 0
fi

[[ "$K8S_VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "K8S_VERSION must look like v1.36.3, got '$K8S_VERSION'"
MINOR="${BASH_REMATCH[1]}"
STAGING_VERSION="v0.${MINOR}.${BASH_REMATCH[2]}"

WORK="$OUT/src"
rm -rf "$WORK"
mkdir -p "$WORK/k8s" "$WORK/etcd" "$BIN"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log "fetching k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
MODDIR=$(cd "$WORK/k8s" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" 2>"$WORK/download.err" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
[[ -n "${MODDIR:-}" && -f "$MODDIR/go.mod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION (is the Go module proxy reachable?): $(cat "$WORK/download.err")"

# etcd: the version Kubernetes' own test scripts install, falling back to its go.mod.
ETCD_VERSION=$(sed -n 's/^ETCD_VERSION=\${ETCD_VERSION:-\([0-9.]*\)}$/\1/p' "$MODDIR/hack/lib/etcd.sh" 2>/dev/null || true)
[[ -n "$ETCD_VERSION" ]] && ETCD_VERSION="v$ETCD_VERSION"
[[ -n "$ETCD_VERSION" ]] || ETCD_VERSION=$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2}' "$MODDIR/go.mod" | head -1)
[[ -n "$ETCD_VERSION" ]] || die "could not determine the etcd version for $K8S_VERSION"
log "kubernetes $K8S_VERSION (staging modules $STAGING_VERSION), etcd $ETCD_VERSION"

# Wrapper module for Kubernetes: replace every staging module with its published tag,
# generated from the release's own go.mod.
{
  echo "module vmforge.local/k8sbuild"
  echo
  echo "go 1.26"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/[a-z0-9-]*$#\t\1 => \1 '"$STAGING_VERSION"'#p' "$MODDIR/go.mod"
  echo ")"
} >"$WORK/k8s/go.mod"
grep -q 'k8s.io/apimachinery => ' "$WORK/k8s/go.mod" || die "no staging replace lines found in k8s.io/kubernetes@$K8S_VERSION go.mod"
cat >"$WORK/k8s/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO

cat >"$WORK/etcd/go.mod" <<GOMOD
module vmforge.local/etcdbuild

go 1.26

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
cat >"$WORK/etcd/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO

BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
KV="k8s.io/component-base/version"
CV="k8s.io/client-go/pkg/version"
LDFLAGS="-s -w"
for pkg in "$KV" "$CV"; do
  LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
  LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE -X $pkg.gitCommit=module-$K8S_VERSION"
done

log "resolving Kubernetes dependencies (go mod tidy)"
(cd "$WORK/k8s" && go mod tidy -e >&2) || die "go mod tidy failed for the Kubernetes wrapper module"
for cmd in kube-apiserver kube-controller-manager; do
  log "building $cmd (several minutes on 2 cores)"
  start=$SECONDS
  (cd "$WORK/k8s" && go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") \
    || die "go build of $cmd failed"
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  log "built $cmd in $((SECONDS - start))s"
done

log "resolving etcd dependencies"
(cd "$WORK/etcd" && go mod tidy -e >&2) || die "go mod tidy failed for the etcd wrapper module"
log "building etcd $ETCD_VERSION"
start=$SECONDS
(cd "$WORK/etcd" && go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION" \
  -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3) || die "go build of etcd failed"
mv "$BIN/etcd.tmp" "$BIN/etcd"
log "built etcd in $((SECONDS - start))s"

printf '%s\n%s\n' "$K8S_VERSION" "$ETCD_VERSION" >"$OUT/versions"
rm -rf "$WORK"
echo "$BIN"
