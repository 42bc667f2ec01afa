#!/usr/bin/env bash
# Build a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and KWOK from the Go module proxy into a cache keyed by version.
# A second run finds the binaries and returns in well under a second.
#
#   hack/build-testcluster.sh           the control plane (what `make test` needs)
#   hack/build-testcluster.sh kubelet   also the kubelet, for the dev cluster's real node
#                                       (about 3 more minutes on 2 cores when cold)
# Either way the last line on stdout is the bin dir.
set -euo pipefail

WANT_KUBELET=0
for arg in "$@"; do
  case "$arg" in
    kubelet) WANT_KUBELET=1 ;;
    *) echo "usage: $0 [kubelet]" >&2; exit 2 ;;
  esac
done

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE_ROOT="${GITSYNC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitsync}/testcluster"
OUT="$CACHE_ROOT/$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION"
BIN="$OUT/bin"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

have_all() {
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  # The stage set gained node-heartbeat-with-lease; an older cache re-copies the stages only.
  [[ -f "$OUT/stages/node-heartbeat-with-lease.yaml" ]] || return 1
  (( ! WANT_KUBELET )) || [[ -x "$BIN/kubelet" ]] || return 1
}

if have_all; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-testcluster: Go is required (apt-get install golang-go or a Go >= 1.24 toolchain)" >&2; exit 1; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOMODCACHE="${GOMODCACHE:-$CACHE_ROOT/gomod}"
export GOCACHE="${GOCACHE:-$CACHE_ROOT/gocache}"
mkdir -p "$BIN" "$OUT/work"
start=$(date +%s)
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
staging_ver="v0.${K8S_VERSION#v1.}"

log() { echo "build-testcluster: $*" >&2; }

# --- Kubernetes: a wrapper module that points each staging module at its published version.
kdir="$OUT/work/kubernetes"
mkdir -p "$kdir"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

init_k8s_module() {
  log "resolving k8s.io/kubernetes@$K8S_VERSION"
  cd "$kdir"
  rm -f go.mod go.sum
  go mod init gitsync.local/testcluster-k8s >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "require k8s.io/kubernetes $K8S_VERSION"
    grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging/src/k8s.io/[a-z0-9-]+' "$gomod" \
      | awk -v v="$staging_ver" '{print "replace " $1 " => " $1 " " v}'
  } >>go.mod
  go_version=$(awk '/^go /{print $2; exit}' "$gomod")
  go mod edit -go="$go_version"
  cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  log "downloading Kubernetes modules"
  go mod tidy -e >/dev/null 2>&1 || true
  go get k8s.io/kubernetes/cmd/kube-apiserver@"$K8S_VERSION" k8s.io/kubernetes/cmd/kube-controller-manager@"$K8S_VERSION" \
    k8s.io/kubernetes/cmd/kube-scheduler@"$K8S_VERSION" k8s.io/kubernetes/cmd/kubectl@"$K8S_VERSION"
}

if [[ ! -x "$BIN/kube-apiserver" || ! -x "$BIN/kubectl" ]]; then
  init_k8s_module
  log "compiling Kubernetes $K8S_VERSION (the long part: about 5 minutes on 2 cores when cold)"
  go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
fi

# --- kubelet (the real node only): same module, tags and version stamps as the control plane.
if (( WANT_KUBELET )) && [[ ! -x "$BIN/kubelet" ]]; then
  [[ -f "$kdir/go.mod" ]] || init_k8s_module
  cd "$kdir"
  log "compiling the kubelet $K8S_VERSION (about 3 minutes on 2 cores when cold)"
  go get k8s.io/kubernetes/cmd/kubelet@"$K8S_VERSION"
  go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$BIN/kubelet" \
    k8s.io/kubernetes/cmd/kubelet
fi

# --- etcd: its server module has local replaces, so build through a wrapper main.
if [[ ! -x "$BIN/etcd" ]]; then
  edir="$OUT/work/etcd"
  mkdir -p "$edir" && cd "$edir"
  rm -f go.mod go.sum
  go mod init gitsync.local/testcluster-etcd >/dev/null 2>&1
  cat >main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd $ETCD_VERSION"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" .
fi

# --- kwok and its stage files (kwok has no built-in stages; they ship as YAML in its module).
if [[ ! -x "$BIN/kwok" ]]; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi
if [[ ! -f "$OUT/stages/node-heartbeat-with-lease.yaml" ]]; then
  kmod=$(cd "$kdir" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$OUT/stages" && mkdir -p "$OUT/stages"
  # The same set kwokctl uses by default: fast node/pod lifecycle plus a lease-backed node heartbeat.
  for d in node/fast node/heartbeat-with-lease pod/fast; do
    for f in "$kmod/kustomize/stage/$d"/*.yaml; do
      [[ "$(basename "$f")" == kustomization.yaml ]] || cp "$f" "$OUT/stages/"
    done
  done
  chmod -R u+w "$OUT/stages"
fi

have_all || { log "build finished but binaries are missing in $BIN"; exit 1; }
log "built in $(( $(date +%s) - start ))s into $BIN"
echo "$BIN"
