#!/usr/bin/env bash
# Install what gitsync's tests and demo need on a fresh Debian machine: git, an sshd for
# the SSH transport tests, and a Go toolchain to build the control plane. Idempotent.
#
#   hack/install-deps.sh            what `make test` and `make demo` need
#   hack/install-deps.sh ui         also Chromium, which only the status page test needs
#   hack/install-deps.sh realnode   also the real node: containerd, runc, the CNI plugins
#                                   (bridge, host-local, loopback, portmap), busybox-static
#   hack/install-deps.sh image      also the image build: buildah and mmdebstrap
set -euo pipefail

want_ui=0 want_realnode=0 want_image=0
for arg in "$@"; do
  case "$arg" in
    ui) want_ui=1 ;;
    realnode) want_realnode=1 ;;
    image) want_image=1 ;;
    *) echo "usage: $0 [ui] [realnode] [image]" >&2; exit 2 ;;
  esac
done

need=()
command -v git >/dev/null || need+=(git)
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
# Signed-commit tests sign and verify with real OpenPGP keys.
{ command -v gpg >/dev/null && command -v gpg-agent >/dev/null; } || need+=(gnupg)
command -v go >/dev/null || need+=(golang-go)
command -v make >/dev/null || need+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((want_ui)); then
  command -v chromium >/dev/null || need+=(chromium)
fi
if ((want_realnode)); then
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback && -x /usr/lib/cni/portmap ]] \
    || need+=(containernetworking-plugins)
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
  command -v ip >/dev/null || need+=(iproute2)
  command -v mount >/dev/null || need+=(mount)
fi
if ((want_image)); then
  command -v buildah >/dev/null || need+=(buildah)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
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
