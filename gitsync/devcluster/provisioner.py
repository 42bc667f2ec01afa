"""The dev cluster's default StorageClass and the tiny provisioner that serves it.

Every real cluster has a default StorageClass, so public manifests (StatefulSets with
``volumeClaimTemplates``, bare PVCs) expect their claims to bind. Here the class ``standard``
names the external provisioner ``gitsync.dev/hostpath``: kube-controller-manager marks each
claim of that class with the provisioner's name, this loop creates a hostPath
PersistentVolume pre-bound to the claim (a directory under the cluster's work dir), and the
controller-manager binds the pair, exactly as with any CSI external-provisioner. When a
claim is deleted its volume turns ``Released``; the loop deletes the volume and its directory.

It runs as its own process (``python -m gitsync.devcluster.provisioner``), started and
stopped by PID like every other component, so it outlives ``devcluster up``.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import shutil
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

PROVISIONER = "gitsync.dev/hostpath"
STORAGE_CLASS = "standard"
PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"
BETA_PROVISIONER_ANNOTATION = "volume.beta.kubernetes.io/storage-provisioner"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def storage_class() -> dict[str, Any]:
    """The default StorageClass: claims bind as soon as they exist (no node affinity)."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def wants_volume(claim: dict[str, Any]) -> bool:
    """A pending claim the controller-manager handed to this provisioner."""
    annotations = claim["metadata"].get("annotations") or {}
    ours = PROVISIONER in (
        annotations.get(PROVISIONER_ANNOTATION),
        annotations.get(BETA_PROVISIONER_ANNOTATION),
    )
    pending = (claim.get("status") or {}).get("phase", "Pending") == "Pending"
    return ours and pending and not claim["spec"].get("volumeName")


def volume_for(claim: dict[str, Any], root: Path) -> dict[str, Any]:
    """The PersistentVolume for ``claim``: pre-bound by claimRef, named as CSI provisioners do."""
    meta, spec = claim["metadata"], claim["spec"]
    name = f"pvc-{meta['uid']}"
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.get("storageClassName") or STORAGE_CLASS,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "hostPath": {"path": str(root / name), "type": "DirectoryOrCreate"},
        },
    }


class ProvisionerError(Exception):
    """The apiserver refused a request; the pass is retried."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiAccess:
    """Where the apiserver is and the admin client cert to call it with."""

    host: str
    port: int
    ca: Path
    cert: Path
    key: Path

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        context = _tls_context(self.ca, self.cert, self.key)
        conn = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=10)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


@functools.cache
def _tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """One context per identity: loading keys on every poll would cost more than the poll."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


class Provisioner:
    """One pass at a time: provision pending claims, reclaim released volumes."""

    def __init__(self, api: ApiAccess, root: Path) -> None:
        self._api = api
        self._root = root

    def step(self) -> tuple[int, int]:
        """Returns (volumes created, volumes deleted) in this pass."""
        created = deleted = 0
        for claim in self._list("/api/v1/persistentvolumeclaims"):
            if not wants_volume(claim):
                continue
            volume = volume_for(claim, self._root)
            path = Path(volume["spec"]["hostPath"]["path"])
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)  # any Pod user may write, as on a fresh disk of a real cluster
            status, body = self._api.request("POST", "/api/v1/persistentvolumes", volume)
            if status == 201:
                created += 1
                _say(f"created {volume['metadata']['name']} for {_claim_name(claim)}")
            elif status != 409:
                msg = f"creating {volume['metadata']['name']}: HTTP {status}: {body}"
                raise ProvisionerError(msg)
        for volume in self._list("/api/v1/persistentvolumes"):
            if not releasable(volume):
                continue
            host_path = Path(volume["spec"]["hostPath"]["path"])
            if host_path.parent == self._root:
                shutil.rmtree(host_path, ignore_errors=True)
            name = volume["metadata"]["name"]
            status, _ = self._api.request("DELETE", f"/api/v1/persistentvolumes/{name}")
            if status in (200, 202):
                deleted += 1
                _say(f"deleted {name}")
        return created, deleted

    def run(self, stop: threading.Event, *, interval: float) -> None:
        """Poll until ``stop`` is set; survives apiserver restarts (tests restart it)."""
        while not stop.is_set():
            try:
                self.step()
            except (OSError, ProvisionerError) as e:
                _say(f"pass failed: {type(e).__name__}: {e}")
            stop.wait(interval)

    def _list(self, path: str) -> list[dict[str, Any]]:
        status, body = self._api.request("GET", path)
        if status != 200:
            msg = f"GET {path}: HTTP {status}"
            raise ProvisionerError(msg)
        items: list[dict[str, Any]] = body["items"]
        return items


def releasable(volume: dict[str, Any]) -> bool:
    """Our volume whose claim is gone, with reclaim policy Delete."""
    annotations = volume["metadata"].get("annotations") or {}
    phase = (volume.get("status") or {}).get("phase")
    return (
        annotations.get(PROVISIONED_BY) == PROVISIONER
        and phase in ("Released", "Failed")
        and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete"
    )


def _claim_name(claim: dict[str, Any]) -> str:
    return f"{claim['metadata']['namespace']}/{claim['metadata']['name']}"


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} provisioner: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gitsync.devcluster.provisioner")
    parser.add_argument("--server", required=True, help="host:port of the apiserver")
    parser.add_argument("--pki", type=Path, required=True, help="the cluster's pki dir")
    parser.add_argument("--root", type=Path, required=True, help="where volume dirs are made")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    host, _, port = args.server.rpartition(":")
    api = ApiAccess(
        host=host,
        port=int(port),
        ca=args.pki / "ca.crt",
        cert=args.pki / "admin.crt",
        key=args.pki / "admin.key",
    )
    args.root.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Provisioner(api, args.root.resolve()).run(stop, interval=args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
