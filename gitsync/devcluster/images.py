"""Container images without a registry: docker-archive tars that ``ctr images import`` reads.

No registry is reachable from the test machines, so the real node's images are made here
from files already on the machine and imported into containerd by name. A docker-archive
is a tar holding one ``layer.tar`` per layer, an image config whose ``rootfs.diff_ids``
are the layers' sha256 digests, and a ``manifest.json`` naming the config, the layers and
the tags. The tars are deterministic (fixed mtimes, owner root), so rebuilding gives the
same image ID and containerd keeps a single copy.

``python -m gitsync.devcluster.images OUT_DIR`` writes the pause and busybox archives;
``hack/build-images.sh`` wraps it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PAUSE_IMAGE = "localhost/pause:3.10"
BUSYBOX_IMAGE = "localhost/busybox:gitsync"
PAUSE_SOURCE = Path(__file__).parent / "pause" / "pause.go"
_EPOCH = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSpec:
    """What goes into an image's config besides its one layer."""

    tag: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/bin",)
    user: str = ""
    workdir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)


class ImageError(Exception):
    """An image could not be made from the files on this machine."""


def busybox_rootfs(dest: Path, *, busybox: Path = BUSYBOX) -> Path:
    """A root filesystem of a static busybox, its applets as symlinks, and a user table."""
    if not busybox.is_file():
        msg = f"{busybox} is missing: install busybox-static (hack/install-deps.sh realnode)"
        raise ImageError(msg)
    listed = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    if "sh" not in listed:
        msg = f"{busybox} lists no sh applet; is it busybox?"
        raise ImageError(msg)
    for sub in ("bin", "etc", "tmp", "proc", "sys", "dev", "var/www", "data"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    for applet in listed:
        link = dest / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        "app:x:10001:10001:app:/tmp:/bin/sh\n"
    )
    (dest / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\napp:x:10001:\n")
    (dest / "var" / "www" / "index.html").write_text("gitsync test image\n")
    return dest


def pause_rootfs(dest: Path, *, go: str = "go") -> Path:
    """A root filesystem holding only ``/pause``, built static from ``pause/pause.go``.

    A Pod with ``shareProcessNamespace`` makes the sandbox PID 1 of every container, so the
    pause process must reap orphans as the upstream one does; busybox ``sleep`` would not.
    """
    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    try:
        subprocess.run(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags=-s -w",
                "-o",
                str(dest / "pause"),
                str(PAUSE_SOURCE),
            ],
            env=env,
            cwd=dest,
            capture_output=True,
            text=True,
            check=True,
        )
    except FileNotFoundError as e:
        msg = "Go is needed to build the pause binary (hack/install-deps.sh installs it)"
        raise ImageError(msg) from e
    except subprocess.CalledProcessError as e:
        msg = f"building the pause binary failed: {e.stderr.strip()}"
        raise ImageError(msg) from e
    return dest


def layer_tar(rootfs: Path) -> bytes:
    """An uncompressed, reproducible tar of ``rootfs`` (paths relative, owner root)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = _EPOCH, 0, 0, "", ""
            if info.isfile():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def write_docker_archive(rootfs: Path, out: Path, spec: ImageSpec) -> str:
    """Write ``rootfs`` as a one-layer docker-archive tagged ``spec.tag``; returns the image ID."""
    layer = layer_tar(rootfs)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    container_config: dict[str, object] = {
        "Env": list(spec.env),
        "WorkingDir": spec.workdir,
        "Labels": spec.labels or None,
    }
    if spec.entrypoint:
        container_config["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        container_config["Cmd"] = list(spec.cmd)
    if spec.user:
        container_config["User"] = spec.user
    config = {
        "architecture": _architecture(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "gitsync.devcluster.images"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = hashlib.sha256(config_bytes).hexdigest()
    layer_dir = diff_id.removeprefix("sha256:")
    manifest = [
        {"Config": f"{image_id}.json", "RepoTags": [spec.tag], "Layers": [f"{layer_dir}/layer.tar"]}
    ]
    members = {
        f"{layer_dir}/layer.tar": layer,
        f"{image_id}.json": config_bytes,
        "manifest.json": json.dumps(manifest).encode(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(layer_dir)
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, _EPOCH
        tar.addfile(directory)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, _EPOCH
            tar.addfile(info, io.BytesIO(data))
    partial.replace(out)
    return f"sha256:{image_id}"


def node_images(out_dir: Path, *, busybox: Path = BUSYBOX) -> dict[str, Path]:
    """The pause and busybox archives, by image name, written into ``out_dir`` (a cache)."""
    if not busybox.is_file():
        msg = f"{busybox} is missing: install busybox-static (hack/install-deps.sh realnode)"
        raise ImageError(msg)
    archives = {
        PAUSE_IMAGE: out_dir / "pause.tar",
        BUSYBOX_IMAGE: out_dir / "busybox.tar",
    }
    # Same inputs, same archives: skip the Go build and the tarring on a warm start.
    stamp = out_dir / "inputs.sha256"
    inputs = hashlib.sha256(PAUSE_SOURCE.read_bytes() + busybox.read_bytes()).hexdigest()
    fresh = stamp.is_file() and stamp.read_text() == inputs
    if fresh and all(a.is_file() for a in archives.values()):
        return archives
    with tempfile.TemporaryDirectory(prefix="gitsync-rootfs-") as tmp:
        write_docker_archive(
            pause_rootfs(Path(tmp) / "pause"),
            archives[PAUSE_IMAGE],
            ImageSpec(tag=PAUSE_IMAGE, entrypoint=("/pause",), env=()),
        )
        write_docker_archive(
            busybox_rootfs(Path(tmp) / "busybox", busybox=busybox),
            archives[BUSYBOX_IMAGE],
            ImageSpec(tag=BUSYBOX_IMAGE, cmd=("/bin/sh",)),
        )
    stamp.write_text(inputs)
    return archives


def _architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gitsync.devcluster.images",
        description="Write the real node's pause and busybox images as docker-archive tars.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--busybox", type=Path, default=BUSYBOX)
    args = parser.parse_args(argv)
    try:
        archives = node_images(args.out_dir, busybox=args.busybox)
    except ImageError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    for name, path in archives.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
