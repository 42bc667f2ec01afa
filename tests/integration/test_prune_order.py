"""Prune runs in reverse apply order and waits for each rank's deletions to finish."""

from __future__ import annotations

import threading
import time

import pytest
import structlog

from gitsync.kube import Kube
from tests.support.app_fixtures import App, ref
from tests.support.cluster_fixtures import Kubectl
from tests.support.manifests import CRD, NAMESPACE, config_maps, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.git]

WIDGET = """\
apiVersion: {group}/v1
kind: Widget
metadata:
  name: sprocket
  namespace: {ns}
  finalizers: [gitsync.test/slow]
spec: {{size: 3}}
"""


class FinalizerController(threading.Thread):
    """Removes the test finalizer a little while after the Widget is marked for deletion."""

    def __init__(self, kube: Kube, app: App, delay: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.kube, self.widget, self.delay = (
            kube,
            ref("Widget", "sprocket", app.ns, app.group),
            delay,
        )
        self.released_at = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            live = self.kube.get(self.widget)
            if live is None or not live["metadata"].get("deletionTimestamp"):
                continue
            time.sleep(self.delay)
            self.released_at = time.monotonic()
            ops = [{"op": "remove", "path": "/metadata/finalizers"}]
            self.kube.json_patch(self.widget, ops, manager="test-controller")
            return


def test_deleting_an_app_prunes_in_reverse_order_with_waits(app: App, kube: Kube) -> None:
    """Custom resources (held by a finalizer) go before their CRD, workloads before their
    Namespace; each rank waits until the one before it is gone."""
    files = {
        "ns.yaml": NAMESPACE,
        "crd.yaml": CRD,
        "widget.yaml": WIDGET,
        "cm.yaml": config_maps("cfg", 2),
        "web.yaml": deployment(),
    }
    app.commit(files)
    assert app.sync().result == "synced"
    controller = FinalizerController(kube, app)
    controller.start()
    app.commit({"README.md": "nothing here any more\n"})
    stamps: dict[str, float] = {}

    def stamp(_logger: object, _name: str, event: dict) -> dict:
        if event.get("event") == "prune.deleted":
            stamps[event["object"].split(" ")[0]] = time.monotonic()
        return event

    with structlog.testing.capture_logs(processors=[stamp]) as logs:
        result = app.sync(prune={"allowEmpty": True, "allowMassDelete": True})
    controller.stop.set()
    assert result.result == "synced", result.error
    order = [e["object"].split(" ")[0] for e in logs if e["event"] == "prune.deleted"]
    assert order.index("Widget." + app.group) < order.index("Deployment.apps")
    assert order.index("Deployment.apps") < order.index("ConfigMap")
    assert order.index("ConfigMap") < order.index("Namespace")
    assert order.index("Namespace") < order.index("CustomResourceDefinition.apiextensions.k8s.io")
    assert controller.released_at, "the finalizer was never released"
    assert stamps["CustomResourceDefinition.apiextensions.k8s.io"] > controller.released_at
    assert stamps["Namespace"] > controller.released_at
    assert kube.get(ref("Widget", "sprocket", app.ns, app.group)) is None


def test_namespace_delete_counts_what_it_takes_in_the_guard(
    app: App, kube: Kube, kubectl: Kubectl
) -> None:
    """Dropping a Namespace that holds objects made by hand (and the app's own ConfigMaps,
    still in Git) trips the mass-delete guard: all 8 count, and nothing is deleted."""
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cfg", 3)})
    assert app.sync().result == "synced"
    for i in range(5):
        kubectl("create", "configmap", f"handmade-{i}", "-n", app.ns)
    app.commit({"cm.yaml": config_maps("cfg", 3)})
    with structlog.testing.capture_logs() as logs:
        result = app.sync()
    guarded = [e for e in logs if e["event"] == "prune.guarded"]
    assert guarded, [e["event"] for e in logs]
    assert "9 of 4 object(s)" in guarded[0]["reason"]
    assert f"counting 8 that deleting Namespace {app.ns} takes along" in guarded[0]["reason"]
    assert kube.get(ref("Namespace", app.ns)) is not None
    assert result.result in ("synced", "unchanged")
