#!/usr/bin/env bash
# `npm run image`: builds the Dockerfile's image without a Docker engine and runs it as the
# operator against the test cluster and moto, the way a restricted pod would run it.
#
#  1. buildah and mmdebstrap (Debian packages) are installed with apt-get when missing (as root).
#  2. The base image the Dockerfile names cannot be pulled (no registry here), so a local one is
#     made once: mmdebstrap of Debian bookworm (minbase + ca-certificates), the project's Node 24
#     (the npm `node` package) and npm, plus this machine's CA bundle so npm ci reaches the
#     registry through the machine's TLS setup. Tagged localhost/vmforge-node-base:<node version>.
#  3. buildah bud --isolation chroot builds the Dockerfile with BASE=that image.
#  4. The image's root filesystem runs under unshare (own mount namespace) + chroot as uid 65532,
#     with the root read-only and a tmpfs /tmp (the Deployment's settings), against a fresh
#     control plane + moto (npm run cluster): the example ComputeEnvironment must become Ready.
#  (podman/crun cannot start containers on this machine; unshare + chroot can.)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export PATH="$root/node_modules/.bin:$PATH"
cache="${VMFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmforge}/image"
mkdir -p "$cache"
say() { printf '[image] %s\n' "$*" >&2; }

if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "image: needs buildah and mmdebstrap (Debian packages); install them, or run as root on Debian" >&2
    exit 1
  fi
  say "installing buildah and mmdebstrap with apt-get"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah mmdebstrap >/dev/null
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "image: run as root (chroot and mounts of the image's root filesystem)" >&2
  exit 1
fi

node_bin="$(readlink -f node_modules/.bin/node)"
node_version="$("$node_bin" --version)"
base="localhost/vmforge-node-base:${node_version#v}"
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  rootfs="$cache/rootfs-bookworm.tar"
  if [[ ! -s $rootfs ]]; then
    say "mmdebstrap of Debian bookworm (once)"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates --mode=root bookworm "$rootfs.tmp"
    mv "$rootfs.tmp" "$rootfs"
  fi
  say "making $base"
  npm_dir="$(cd "$(dirname "$(readlink -f "$(command -v npm)")")/.." && pwd)"
  c=$(buildah from scratch)
  buildah add -q "$c" "$rootfs" / >/dev/null
  mnt=$(buildah mount "$c")
  install -D -m 0755 "$node_bin" "$mnt/usr/local/bin/node"
  mkdir -p "$mnt/usr/local/lib/node_modules"
  cp -a "$npm_dir" "$mnt/usr/local/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$mnt/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$mnt/usr/local/bin/npx"
  # This machine's trust store (it may hold a CA of its TLS setup that the registry answers through).
  cat /etc/ssl/certs/ca-certificates.crt ${NODE_EXTRA_CA_CERTS:+"$NODE_EXTRA_CA_CERTS"} >"$mnt/etc/ssl/certs/ca-certificates.crt"
  buildah umount "$c" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt "$c"
  buildah commit -q "$c" "$base" >/dev/null
  buildah rm "$c" >/dev/null
fi

image=localhost/vmforge:dev
say "buildah bud --isolation chroot (BASE=$base)"
buildah bud --quiet --isolation chroot --layers=false --build-arg "BASE=$base" -t "$image" -f Dockerfile . >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/vmforge-image.XXXXXX")
container="" cluster_pid="" op_pid=""
# shellcheck disable=SC2329 # called by the EXIT trap
cleanup() {
  # unshare --fork ignores SIGTERM itself: stop the operator, its child (by parent pid).
  if [[ -n $op_pid ]]; then pkill -TERM -P "$op_pid" 2>/dev/null || true; wait "$op_pid" 2>/dev/null || true; fi
  [[ -n $cluster_pid ]] && kill "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null || true
  if [[ -n $container ]]; then buildah umount "$container" >/dev/null 2>&1 || true; buildah rm "$container" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

say "starting the test control plane and moto"
tsx test/harness/cli.ts >"$work/cluster.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 1 600); do
  grep -q "Press Ctrl-C" "$work/cluster.log" && break
  kill -0 "$cluster_pid" 2>/dev/null || { cat "$work/cluster.log" >&2; exit 1; }
  sleep 0.5
done
kubeconfig=$(sed -n 's/^kubeconfig: *//p' "$work/cluster.log")
moto=$(sed -n 's/^moto [0-9.]*: *\(http[^ ]*\).*/\1/p' "$work/cluster.log")
[[ -n $kubeconfig && -n $moto ]] || { cat "$work/cluster.log" >&2; exit 1; }
k() { kubectl --kubeconfig "$kubeconfig" "$@"; }
k apply --server-side -f crds/ >/dev/null
k create namespace image >/dev/null
k -n image apply -f examples/credentials-secret.yaml -f examples/compute-environment.yaml >/dev/null

container=$(buildah from "$image")
mnt=$(buildah mount "$container")
workdir=$(buildah inspect --format '{{.OCIv1.Config.WorkingDir}}' "$image")
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$image")
cmd=$(buildah inspect --format '{{range .OCIv1.Config.Cmd}}{{.}} {{end}}' "$image")
say "running '$cmd' in $workdir as $user, root read-only"
cat >"$work/enter.sh" <<SH
set -e
mount --bind "$mnt" "$mnt"
mount -o remount,bind,ro "$mnt"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$mnt/tmp"
mount --rbind /dev "$mnt/dev"
mount -t proc proc "$mnt/proc"
install -m 0644 "$kubeconfig" "$mnt/tmp/kubeconfig"
exec chroot --userspec="$user" "$mnt" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp NODE_ENV=production \
  KUBECONFIG=/tmp/kubeconfig VMFORGE_AWS_ENDPOINT="$moto" VMFORGE_NAMESPACES=image VMFORGE_LEADER_ELECTION=false \
  VMFORGE_METRICS_ADDRESS=127.0.0.1:0 POD_NAME=vmforge-image \
  sh -c 'cd "$workdir" && echo "uid=\$(id -u)" && if touch "$workdir/.w" 2>/dev/null; then echo root-writable; else echo root-read-only; fi && exec $cmd'
SH
unshare --mount --fork --kill-child=SIGTERM bash "$work/enter.sh" >"$work/operator.log" 2>&1 &
op_pid=$!

if k -n image wait --for=condition=Ready computeenvironment/aws-example --timeout=180s >/dev/null; then
  grep -qx "uid=65532" "$work/operator.log" || { echo "image: the operator did not run as uid 65532" >&2; cat "$work/operator.log" >&2; exit 1; }
  grep -qx "root-read-only" "$work/operator.log" || { echo "image: the root filesystem was writable" >&2; exit 1; }
  say "ok: the image's operator (uid 65532, read-only root) made ComputeEnvironment image/aws-example Ready against moto"
  exit 0
fi
echo "image: the ComputeEnvironment did not become Ready; operator log:" >&2
tail -40 "$work/operator.log" >&2
k -n image get computeenvironment aws-example -o yaml >&2 || true
exit 1
