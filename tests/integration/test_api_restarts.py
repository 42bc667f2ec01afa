"""A sync of 1,000 objects rides out an API server restart and an etcd restart mid-apply."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from gitsync.engine import inventory
from gitsync.engine.sync import SyncResult
from tests.support.app_fixtures import App
from tests.support.cluster_fixtures import ClusterHandle

pytestmark = [pytest.mark.cluster, pytest.mark.git]

CONFIGMAPS = 970
DEPLOYMENTS = 30


def big_app_files() -> dict[str, str]:
    """1,000 objects in the app's namespace: ConfigMaps and one-replica Deployments."""
    cms = [
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: {{ns}}\n"
        f"data:\n  index: '{i}'\n"
        for i in range(CONFIGMAPS)
    ]
    deploys = [
        f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-{i}\n"
        f"  namespace: {{ns}}\nspec:\n  replicas: 1\n"
        f"  selector: {{{{matchLabels: {{{{app: web-{i}}}}}}}}}\n  template:\n"
        f"    metadata: {{{{labels: {{{{app: web-{i}}}}}}}}}\n    spec:\n"
        f"      containers: [{{{{name: app, image: registry.invalid/web:{i}}}}}]\n"
        for i in range(DEPLOYMENTS)
    ]
    return {
        "00-namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n",
        "configmaps.yaml": "---\n".join(cms),
        "deployments.yaml": "---\n".join(deploys),
    }


def sync_while(
    app: App, disrupt: Callable[[], None], *, after_applies: int
) -> tuple[SyncResult, bool]:
    """Sync in a thread; once ``after_applies`` applies went out, run ``disrupt``; the
    result, and whether the sync was still running when the disruption was over."""
    out: list[SyncResult] = []
    worker = threading.Thread(target=lambda: out.append(app.sync()), daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while app.ctx.kube.calls["apply"] < after_applies:
        assert worker.is_alive(), "the sync ended before the disruption"
        assert time.monotonic() < deadline, "the apply never started"
        time.sleep(0.005)
    began = time.monotonic()
    disrupt()
    applied = app.ctx.kube.calls["apply"]
    running = worker.is_alive()
    print(f"disruption took {time.monotonic() - began:.1f}s; {applied} apply attempts by then")
    worker.join(timeout=120)
    assert out, "the sync did not finish"
    return out[0], running


def assert_synced_without_rollback(app: App, result: SyncResult, what: str) -> None:
    calls = app.ctx.kube.calls
    print(
        f"{what}: result={result.result} seconds={result.seconds:.1f} "
        f"retries={calls['retry']} recovered={calls['recovered']} applies={calls['apply']}"
    )
    assert result.result == "synced", (result.result, result.error, result.failures[:3])
    assert not result.rolled_back_to
    assert result.counts.get("create") == CONFIGMAPS + DEPLOYMENTS + 1
    state = inventory.read_state(app.ctx.kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state is not None
    assert not state.quarantined
    assert app.sync().result == "unchanged"


@pytest.fixture
def dev(cluster: ClusterHandle) -> ClusterHandle:
    if cluster.dev is None:
        pytest.skip("needs the cluster this run started (restarts its processes)")
    return cluster


def test_apiserver_restart_during_a_1000_object_apply_is_not_the_commits_fault(
    app: App, dev: ClusterHandle
) -> None:
    """kube-apiserver restarts mid-apply: retried, synced, no rollback, no quarantine."""
    assert dev.dev is not None
    app.commit(big_app_files())
    result, _ = sync_while(app, dev.dev.restart_apiserver, after_applies=200)
    assert_synced_without_rollback(app, result, "apiserver restart")
    # It hit the apply: refused and reset connections while it restarted were retried.
    assert app.ctx.kube.calls["retry"] > 0


def test_etcd_restart_during_a_1000_object_apply_is_not_the_commits_fault(
    app: App, dev: ClusterHandle
) -> None:
    """etcd restarts mid-apply: synced, no rollback, no quarantine (the API server holds
    requests until etcd is back; whatever it fails is retried)."""
    assert dev.dev is not None
    app.commit(big_app_files())
    result, running = sync_while(app, dev.dev.restart_etcd, after_applies=50)
    # Attempts count retries too: what matters is that the sync was still going.
    assert running, "the sync was over before etcd was back"
    assert_synced_without_rollback(app, result, "etcd restart")
