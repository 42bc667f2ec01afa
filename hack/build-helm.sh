#!/usr/bin/env bash
# Build Helm, pinned, from the Go module proxy into a cache keyed by version, and print its
# bin dir. Render runs `helm template` for charts (and kustomize's helmCharts); the tests put
# this dir on PATH. A second run finds the binary and returns at once.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${GITSYNC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitsync}"
BIN="$CACHE_ROOT/helm/$HELM_VERSION/bin"

if [[ -x "$BIN/helm" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-helm: Go is required (hack/install-deps.sh)" >&2; exit 1; }
# Helm v3.22 declares go 1.26; the toolchain is never downloaded (GOTOOLCHAIN=local).
gov=$(go env GOVERSION | sed 's/^go//'); rest=${gov#*.}
if (( ${gov%%.*} == 1 && ${rest%%.*} < 26 )); then
  echo "build-helm: go $gov is older than 1.26, which Helm $HELM_VERSION needs" >&2
  exit 1
fi

# The module caches are shared with build-testcluster.sh: Helm and Kubernetes share most modules.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE="${GOMODCACHE:-$CACHE_ROOT/testcluster/gomod}"
export GOCACHE="${GOCACHE:-$CACHE_ROOT/testcluster/gocache}"
mkdir -p "$BIN"
start=$(date +%s)
echo "build-helm: building helm $HELM_VERSION (about 2 minutes on 2 cores when cold)" >&2
GOBIN="$BIN" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
[[ -x "$BIN/helm" ]] || { echo "build-helm: the build finished but $BIN/helm is missing" >&2; exit 1; }
echo "build-helm: built in $(( $(date +%s) - start ))s into $BIN" >&2
echo "$BIN"
