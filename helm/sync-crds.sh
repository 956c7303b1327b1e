#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, written by `npm run gen:crds`) into the two places that
# ship them: the Helm chart (helm/vmforge/files/crds/, rendered by templates/crds.yaml) and the
# kustomize folder (deploy/crds/).
# Neither can read ../crds directly: Helm packages only files inside the chart, and kustomize's
# load restrictor refuses files outside the kustomization's folder.
#
#   helm/sync-crds.sh          copy (and delete copies whose source is gone)
#   helm/sync-crds.sh --check  change nothing; exit 1 and list the differences when out of sync
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds"
targets=("$root/helm/vmforge/files/crds" "$root/deploy/crds")
check=false
[[ "${1:-}" == "--check" ]] && check=true

shopt -s nullglob
sources=("$src"/*.yaml)
if ((${#sources[@]} == 0)); then
  echo "sync-crds: no CRDs in $src; run npm run gen:crds first" >&2
  exit 1
fi

stale=0
for dir in "${targets[@]}"; do
  $check || mkdir -p "$dir"
  for f in "${sources[@]}"; do
    dest="$dir/$(basename "$f")"
    if ! cmp -s "$f" "$dest"; then
      if $check; then
        echo "out of sync: ${dest#"$root"/}" >&2
        stale=1
      else
        cp "$f" "$dest"
        echo "wrote ${dest#"$root"/}"
      fi
    fi
  done
  for dest in "$dir"/*.yaml; do
    [[ "$(basename "$dest")" == kustomization.yaml ]] && continue
    if [[ ! -e "$src/$(basename "$dest")" ]]; then
      if $check; then
        echo "no longer generated: ${dest#"$root"/}" >&2
        stale=1
      else
        rm -f "$dest"
        echo "removed ${dest#"$root"/}"
      fi
    fi
  done
done

# deploy/crds is a kustomization of its own listing every CRD, so a new CRD needs no manual edit.
kustomization="$root/deploy/crds/kustomization.yaml"
expected="$(
  echo "# Written by helm/sync-crds.sh: every CRD copied from ../../crds. Do not edit by hand."
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  for f in "${sources[@]}"; do echo "  - $(basename "$f")"; done
)"
if [[ "$(cat "$kustomization" 2>/dev/null)" != "$expected" ]]; then
  if $check; then
    echo "out of sync: deploy/crds/kustomization.yaml" >&2
    stale=1
  else
    printf '%s\n' "$expected" >"$kustomization"
    echo "wrote deploy/crds/kustomization.yaml"
  fi
fi

if $check && ((stale)); then
  echo "fix: helm/sync-crds.sh" >&2
  exit 1
fi
exit 0
