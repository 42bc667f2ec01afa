#!/usr/bin/env bash
# Install what gitsync's tests and demo need on a fresh Debian machine: git, an sshd for
# the SSH transport tests, and a Go toolchain to build the control plane. Idempotent.
# `hack/install-deps.sh ui` also installs Chromium, which only the status page test needs.
set -euo pipefail

need=()
command -v git >/dev/null || need+=(git)
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v go >/dev/null || need+=(golang-go)
command -v make >/dev/null || need+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [[ ${1:-} == ui ]]; then
  command -v chromium >/dev/null || need+=(chromium)
fi

if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  echo "install-deps: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The control plane needs Go >= 1.24 (Debian bookworm's golang-go is older: then install a
# newer Go first, e.g. from bookworm-backports).
gov=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
major=${gov%%.*}; rest=${gov#*.}; minor=${rest%%.*}
if (( major == 1 && minor < 24 )); then
  echo "install-deps: go $gov is older than 1.24, which Kubernetes v1.34 needs" >&2
  exit 1
fi
