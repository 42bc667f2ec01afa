"""State store benchmark: a 10,000-entry app state with megabytes of manifests.

    python -m tests.bench.bench_state [--objects 10000] [--kubeconfig PATH]

Prints encode, write, read and rewrite seconds, the raw and stored sizes, the number of
chunk Secrets, and the process's peak RSS. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import time
import uuid
from dataclasses import replace

from gitsync.engine import inventory, statestore
from gitsync.engine.inventory import AppState, InventoryEntry
from gitsync.kube import Kube
from gitsync.model import ObjectRef
from tests.bench.bench_sync import _rss_mib, cluster

SECRETS = ObjectRef(group="", version="v1", kind="Secret", namespace="", name="")


def state(app: str, objects: int) -> AppState:
    """Deployment-like manifests of about 500 bytes each, hashes that do not compress."""
    entries, manifests = [], []
    for i in range(objects):
        ns, name = f"team-{i % 40}", f"web-{i:05d}"
        digest = hashlib.sha256(f"{app}-{i}".encode()).hexdigest()
        ref = ObjectRef(group="apps", version="v1", kind="Deployment", namespace=ns, name=name)
        entries.append(InventoryEntry(ref=ref, manifest_hash=digest[:32], fingerprint=digest[32:]))
        manifests.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {"gitsync.io/app": app, "tier": "web"},
                    "annotations": {"checksum/config": digest},
                },
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "containers": [
                                {
                                    "name": "web",
                                    "image": f"registry.example/web@sha256:{digest}",
                                    "env": [{"name": "INDEX", "value": str(i)}],
                                }
                            ]
                        },
                    },
                },
            }
        )
    return AppState(
        app=app,
        revision="a" * 40,
        healthy_revision="a" * 40,
        inventory=tuple(entries),
        healthy_manifests=tuple(manifests),
    )


def on_cluster(kube: Kube, namespace: str, app: str) -> tuple[int, int]:
    """(bytes of Secret data, number of chunk Secrets) the app's state holds."""
    res = kube.resource(SECRETS)
    items, _ = kube.list_objects(
        res, namespace=namespace, label_selector=f"{statestore.CHUNK_LABEL}={app}"
    )
    head = kube.get(replace(SECRETS, namespace=namespace, name=statestore.head_name(app)))
    assert head is not None
    total = sum(
        len(base64.b64decode(v)) for obj in [head, *items] for v in (obj.get("data") or {}).values()
    )
    return total, len(items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_state")
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--kubeconfig", default=os.environ.get("GITSYNC_TEST_KUBECONFIG"))
    args = parser.parse_args(argv)
    app, namespace = "bench", f"gs-state-bench-{uuid.uuid4().hex[:6]}"
    st = state(app, args.objects)
    raw = len(json.dumps(list(st.healthy_manifests), separators=(",", ":")))
    rss_before = _rss_mib()
    with cluster(args.kubeconfig) as (kubeconfig, _kubectl):
        kube = Kube.connect(kubeconfig=kubeconfig)
        inventory.ensure_namespace(kube, namespace)
        try:
            t0 = time.perf_counter()
            blob = inventory.encode(st)
            t1 = time.perf_counter()
            written = inventory.write_state(kube, st, namespace=namespace)
            t2 = time.perf_counter()
            back = inventory.read_state(kube, app=app, namespace=namespace)
            t3 = time.perf_counter()
            inventory.write_state(kube, replace(back, revision="b" * 40), namespace=namespace)
            t4 = time.perf_counter()
            stored, chunks = on_cluster(kube, namespace, app)
            assert back.inventory == st.inventory
            assert written.resource_version == back.resource_version
        finally:
            kube.delete(
                ObjectRef(group="", version="v1", kind="Namespace", namespace="", name=namespace)
            )
    print(f"objects:             {args.objects}")
    print(f"raw manifests:       {raw / 1e6:.2f} MB")
    print(f"compressed state:    {len(blob) / 1e6:.2f} MB")
    print(f"on the cluster:      {stored / 1e6:.2f} MB in 1 head + {chunks} chunk Secrets")
    print(f"encode:              {t1 - t0:.2f} s")
    print(f"write_state:         {t2 - t1:.2f} s (encode + chunks + head)")
    print(f"read (+decode):      {t3 - t2:.2f} s")
    print(f"rewrite (swap):      {t4 - t3:.2f} s")
    print(f"peak RSS:            {_rss_mib():.0f} MiB (before: {rss_before:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
