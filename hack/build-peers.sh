#!/usr/bin/env bash
# Build the peers tests/bench/bench_peers.py compares gitsync with, into a cache keyed by version:
#   kapply  - cli-utils' reference CLI (`go install sigs.k8s.io/cli-utils/cmd@...`, named `cmd`);
#   fluxssa - tests/bench/fluxssa, a harness around Flux's apply engine (github.com/fluxcd/pkg/ssa).
# kubectl comes from hack/build-testcluster.sh. Prints the bin dir; a second run returns at once.
set -euo pipefail

KAPPLY_VERSION="${KAPPLY_VERSION:-v0.37.2}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="$HERE/tests/bench/fluxssa"
GITSYNC_CACHE_ROOT="${GITSYNC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitsync}"
# The harness is keyed by its own source, so an edit rebuilds it.
harness_key=$(cat "$HARNESS/go.mod" "$HARNESS/go.sum" "$HARNESS"/*.go | sha256sum | cut -c1-12)
OUT="$GITSYNC_CACHE_ROOT/peers/kapply$KAPPLY_VERSION-fluxssa$harness_key"
BIN="$OUT/bin"

log() { echo "build-peers: $*" >&2; }

if [[ -x "$BIN/kapply" && -x "$BIN/fluxssa" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "Go is required (a Go >= 1.26 toolchain: fluxcd/pkg/ssa needs it)"; exit 1; }

# Share the module and build caches of hack/build-testcluster.sh: most of k8s.io is there already.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOMODCACHE="${GOMODCACHE:-$GITSYNC_CACHE_ROOT/testcluster/gomod}"
export GOCACHE="${GOCACHE:-$GITSYNC_CACHE_ROOT/testcluster/gocache}"
mkdir -p "$BIN"
start=$(date +%s)

if [[ ! -x "$BIN/kapply" ]]; then
  log "go install sigs.k8s.io/cli-utils/cmd@$KAPPLY_VERSION"
  GOBIN="$OUT/gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/cli-utils/cmd@$KAPPLY_VERSION"
  mv "$OUT/gobin/cmd" "$BIN/kapply"
  rmdir "$OUT/gobin" 2>/dev/null || true
fi

if [[ ! -x "$BIN/fluxssa" ]]; then
  log "building tests/bench/fluxssa ($(awk '/fluxcd\/pkg\/ssa /{print $2}' "$HARNESS/go.mod"))"
  (cd "$HARNESS" && go build -trimpath -ldflags "-s -w" -o "$BIN/fluxssa" .)
fi

log "built in $(($(date +%s) - start)) s"
echo "$BIN"
