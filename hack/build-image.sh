#!/usr/bin/env bash
# Build gitsync's image from the project's Dockerfile with buildah: no daemon, no registry.
#
#   hack/build-image.sh OUT.tar [TAG]      (root; hack/install-deps.sh image installs buildah)
#
# The Dockerfile takes its base images as build arguments (GO_IMAGE, PYTHON_IMAGE), whose
# defaults are the public images. No container registry is reachable here, so this script
# assembles both bases from Debian packages with mmdebstrap (bookworm: python3 is 3.11) plus
# the machine's own Go toolchain, and passes them in. The machine's extra CA certificates
# (/usr/local/share/ca-certificates) go into the bases so apt, pip and go inside the build
# trust what the host trusts. RUN uses chroot isolation (no user namespaces needed).
# Storage is overlay (root on ext4 here); GITSYNC_BUILDAH_DRIVER=vfs works where overlay
# mounts are refused, at several times the time and disk (every layer is a full copy).
# Bases and layers are cached under ~/.cache/gitsync/image, so a second build only
# redoes what changed.
#
# The result is written as a docker-archive, ready for `ctr images import`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: hack/build-image.sh OUT.tar [TAG]}
tag=${2:-localhost/gitsync:dev}
cache="${GITSYNC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitsync}/image"
suite=bookworm
mirror=http://deb.debian.org/debian
py_base=localhost/gitsync-base/python:3.11-$suite
go_base=localhost/gitsync-base/golang:$(go env GOVERSION 2>/dev/null || echo none)-$suite
driver=${GITSYNC_BUILDAH_DRIVER:-overlay}
store=(--root "$cache/storage-$driver" --runroot "$cache/run-$driver" --storage-driver "$driver")
log() { echo "build-image: $*" >&2; }
mkdir -p "$cache"
began=$(date +%s)

have_image() { buildah "${store[@]}" inspect --type image "$1" >/dev/null 2>&1; }

rootfs="$cache/$suite-python.tar"
if [[ ! -s "$rootfs" ]] && ! { have_image "$py_base" && have_image "$go_base"; }; then
  log "assembling a $suite rootfs with python3 from Debian packages (mmdebstrap)"
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    --customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share' \
    --customize-hook='chroot "$1" update-ca-certificates' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    --format=tar "$suite" "$rootfs.partial" "$mirror"
  mv "$rootfs.partial" "$rootfs"
fi

base_config=(
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --env LANG=C.UTF-8
  # bookworm's pip (23.0) reads certifi's bundle, not the system's: point it at the system's.
  --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt
  --cmd /bin/bash
)
if ! have_image "$py_base"; then
  log "committing $py_base"
  c=$(buildah "${store[@]}" from scratch)
  buildah "${store[@]}" add "$c" "$rootfs" / >/dev/null
  buildah "${store[@]}" config "${base_config[@]}" "$c"
  buildah "${store[@]}" commit --quiet --rm "$c" "$py_base" >/dev/null
fi
if ! have_image "$go_base"; then
  goroot=$(go env GOROOT)
  log "committing $go_base (the machine's Go toolchain from $goroot)"
  c=$(buildah "${store[@]}" from --pull=never "$py_base")
  buildah "${store[@]}" add "$c" "$goroot" /usr/local/go >/dev/null
  buildah "${store[@]}" config "${base_config[@]}" \
    --env PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env GOTOOLCHAIN=local "$c"
  buildah "${store[@]}" commit --quiet --rm "$c" "$go_base" >/dev/null
fi
bases_done=$(date +%s)

log "building $tag from Dockerfile"
buildah "${store[@]}" build --isolation chroot --layers --pull=never \
  --build-arg "GO_IMAGE=$go_base" --build-arg "PYTHON_IMAGE=$py_base" \
  -t "$tag" -f Dockerfile . >&2
built=$(date +%s)

rm -f "$out"
buildah "${store[@]}" push --quiet "$tag" "docker-archive:$out:$tag" >&2
size=$(buildah "${store[@]}" images --format '{{.Size}}' "$tag" 2>/dev/null | head -1)
log "bases $((bases_done - began))s, build $((built - bases_done))s, total $(( $(date +%s) - began ))s; image $tag ${size:-?}, archive $(du -h "$out" | cut -f1)"
echo "$out"
