"""An app of 10,000 objects: it syncs, resyncs for nothing, changes, rolls back and prunes.

Timings are printed (``-s``) for the closing note, never asserted; ``make bench`` has the
peer comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gitsync.engine import inventory, statestore
from gitsync.engine.sync import SyncResult
from gitsync.kube import Kube
from gitsync.model import APP_LABEL
from tests.support.app_fixtures import App, ref
from tests.support.manifests import NAMESPACE, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.git]

TOTAL = 10_000
DEPLOYMENTS = 20


def _files(*, value: str, count: int = TOTAL, behavior: str = "") -> dict[str, str]:
    """``count`` objects: a Namespace, DEPLOYMENTS Deployments, ConfigMaps for the rest."""
    maps = count - 1 - DEPLOYMENTS
    files = {"ns.yaml": NAMESPACE}
    for f in range(0, maps, 1000):
        files[f"cm-{f // 1000:02d}.yaml"] = "".join(
            f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n"
            f"  namespace: {{ns}}\ndata:\n  value: {value}\n  index: '{i}'\n"
            for i in range(f, min(f + 1000, maps))
        )
    files["web.yaml"] = "".join(
        "---\n"
        + deployment(behavior=behavior, image=f"registry.invalid/web:{value}").replace(
            "name: web\n  namespace", f"name: web-{d}\n  namespace"
        )
        for d in range(DEPLOYMENTS)
    )
    return files


def _count(kube: Kube, app: App) -> int:
    res = kube.discover().resource("", "v1", "ConfigMap")
    assert res is not None
    items, _ = kube.list_objects(res, namespace=app.ns, label_selector=f"{APP_LABEL}={app.name}")
    return len(items)


def _timed(label: str, fn: Callable[[], SyncResult]) -> SyncResult:
    began = time.monotonic()
    out = fn()
    print(f"\n[10k] {label}: {time.monotonic() - began:.1f} s")
    return out


def test_ten_thousand_objects(app: App, kube: Kube) -> None:
    """First sync, no-op resync, one change, whole-app rollback and prune of half."""
    app.commit(_files(value="a"))
    first = _timed("first sync", app.sync)
    assert first.result == "synced", first.error
    assert _count(kube, app) == TOTAL - 1 - DEPLOYMENTS
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert len(state.inventory) == TOTAL
    blob = len(inventory.encode(state))
    print(f"\n[10k] state: {blob} bytes in {max(1, -(-blob // statestore.CHUNK_BYTES))} Secret(s)")

    kube.calls.clear()
    again = _timed("no-op resync", app.sync)
    assert again.result == "unchanged"
    assert kube.calls["apply"] == 0
    assert kube.calls["dry-run"] == 0

    files = _files(value="a")
    files["cm-00.yaml"] = files["cm-00.yaml"].replace("index: '7'\n", "index: 'seven'\n")
    app.commit(files)
    kube.calls.clear()
    one = _timed("one change", app.sync)
    assert one.result == "synced", one.error
    assert kube.calls["apply"] == 1

    app.commit(_files(value="b", behavior="crashloop"))
    bad = _timed("bad commit + rollback of every object", app.sync)
    assert bad.result == "rolled-back", bad.error
    cm = kube.get(ref("ConfigMap", "cm-9000", app.ns))
    assert cm is not None
    assert cm["data"]["value"] == "a"

    app.commit(_files(value="a", count=TOTAL // 2))
    half = _timed("prune of half", app.sync)
    assert half.result == "synced", half.error
    assert half.counts["pruned"] == TOTAL // 2
    assert _count(kube, app) == TOTAL // 2 - 1 - DEPLOYMENTS
