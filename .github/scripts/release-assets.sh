#!/usr/bin/env bash
# Renders what a release ships besides the image, with the image reference of that release:
#   <out>/vmforge-<version>.tgz     the Helm chart, values pointing at <image>:<version>
#   <out>/vmforge-install.yaml      one file: CRDs, namespace, RBAC, Service, Deployment (kustomize of deploy/)
#   <out>/vmforge-crds.yaml         the two CRDs alone
#
#   .github/scripts/release-assets.sh <version> <image-repository> <out-dir>
#   e.g. .github/scripts/release-assets.sh 0.1.0 ghcr.io/acme/vmforge dist/release
#
# Needs helm (for the chart) and kubectl or kustomize (for the manifest) on PATH. The release
# workflow runs it; the test suite runs it too and applies the manifest to its cluster.
set -euo pipefail

if (($# != 3)); then
  echo "usage: $0 <version> <image-repository> <out-dir>" >&2
  exit 2
fi
version=$1 image=$2 out=$3
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [[ ! $version =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "release-assets: version '$version' is not semantic (x.y.z[-pre])" >&2
  exit 2
fi
if [[ ! $image =~ ^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+$ ]]; then
  echo "release-assets: image repository '$image' is not a valid lower-case reference without tag" >&2
  exit 2
fi

# The version of a release is the chart's appVersion; a tag that disagrees is a mistake.
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$root/helm/vmforge/Chart.yaml")
if [[ $app_version != "$version" ]]; then
  echo "release-assets: helm/vmforge/Chart.yaml has appVersion '$app_version', the release is '$version'" >&2
  exit 1
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work=$(mktemp -d "${TMPDIR:-/tmp}/vmforge-release.XXXXXX")
trap 'rm -rf "$work"' EXIT

# CRDs alone.
first=1
: >"$out/vmforge-crds.yaml"
for f in "$root"/crds/*.yaml; do
  ((first)) || echo "---" >>"$out/vmforge-crds.yaml"
  first=0
  cat "$f" >>"$out/vmforge-crds.yaml"
done

# The single-file install manifest: deploy/ through an overlay that sets the image.
mkdir -p "$work/overlay"
cat >"$work/overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$work/overlay" "$root/deploy")
images:
  - name: ghcr.io/vmforge/vmforge
    newName: $image
    newTag: "$version"
YAML
if command -v kustomize >/dev/null 2>&1; then
  kustomize build "$work/overlay" >"$work/install.yaml"
else
  kubectl kustomize "$work/overlay" >"$work/install.yaml"
fi
{
  echo "# vmforge $version: kubectl apply --server-side -f vmforge-install.yaml"
  cat "$work/install.yaml"
} >"$out/vmforge-install.yaml"
if ! grep -q "image: $image:$version\$" "$out/vmforge-install.yaml"; then
  echo "release-assets: the rendered manifest does not use $image:$version" >&2
  exit 1
fi

# The chart, with the release's image as its default.
if command -v helm >/dev/null 2>&1; then
  cp -r "$root/helm/vmforge" "$work/chart"
  sed -i "s|^  repository: ghcr.io/vmforge/vmforge\$|  repository: $image|" "$work/chart/values.yaml"
  if ! grep -q "^  repository: $image\$" "$work/chart/values.yaml"; then
    echo "release-assets: could not set image.repository in the chart's values.yaml" >&2
    exit 1
  fi
  helm lint "$work/chart" >/dev/null
  helm package "$work/chart" --version "$version" --app-version "$version" --destination "$out" >/dev/null
else
  echo "release-assets: helm not on PATH; chart not packaged" >&2
  exit 1
fi

ls -1 "$out"
