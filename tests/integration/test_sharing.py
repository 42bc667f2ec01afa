"""Several apps in one cluster: one never takes or deletes another's objects."""

from __future__ import annotations

import pytest
import structlog

from gitsync.engine import inventory
from gitsync.kube import Kube
from gitsync.model import APP_LABEL
from tests.support.app_fixtures import App, ref
from tests.support.cluster_fixtures import Kubectl
from tests.support.manifests import NAMESPACE, config_maps

pytestmark = [pytest.mark.cluster, pytest.mark.git]

SHARED = config_maps("shared", 1, value="{value}")


def shared(value: str) -> str:
    return SHARED.replace("{value}", value)


def test_second_app_is_refused_and_the_object_unchanged(
    app: App, neighbour: App, kube: Kube
) -> None:
    """Two apps declare one ConfigMap: the second is refused at plan, naming both apps and
    the file:line, and nothing of it is written."""
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": shared("from-a")})
    assert app.sync().result == "synced"
    before = kube.get(ref("ConfigMap", "shared-0", app.ns))
    assert before is not None
    neighbour.commit({"cm.yaml": shared("from-b"), "own.yaml": config_maps("b-own", 1)})
    result = neighbour.sync()
    assert result.result == "failed"
    assert result.refused
    assert f"managed by gitsync app {app.name!r}" in result.error
    assert f"app {neighbour.name!r} may not take it" in result.error
    assert "cm.yaml:2" in result.error
    after = kube.get(ref("ConfigMap", "shared-0", app.ns))
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert kube.get(ref("ConfigMap", "b-own-0", app.ns)) is None, "nothing of B was written"


def test_adoption_when_allowed_and_prune_only_when_nobody_lists_it(
    app: App, neighbour: App, kube: Kube
) -> None:
    """With adoptFrom the second app takes the object; the first dropping it does not
    delete it, and the second dropping it does."""
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": shared("from-a"), "a.yaml": config_maps("a", 3)})
    assert app.sync().result == "synced"
    neighbour.commit({"cm.yaml": shared("from-b"), "b.yaml": config_maps("b", 3)})
    assert neighbour.sync(adoptFrom=[app.name]).result == "synced"
    cm = ref("ConfigMap", "shared-0", app.ns)
    live = kube.get(cm)
    assert live is not None
    assert live["data"] == {"key": "from-b"}
    assert live["metadata"]["labels"][APP_LABEL] == neighbour.name
    app.commit({"ns.yaml": NAMESPACE, "a.yaml": config_maps("a", 3)})
    assert app.sync().result == "unchanged", "nothing of A's to delete"
    assert kube.get(cm) is not None, "app A deleted an object app B owns"
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert cm.identity() not in {e.ref.identity() for e in state.inventory}
    neighbour.commit({"b.yaml": config_maps("b", 3)})
    assert neighbour.sync(adoptFrom=[app.name]).result == "synced"
    assert kube.get(cm) is None


HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: web
  namespace: {ns}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: web
  minReplicas: 3
  maxReplicas: 5
"""


def test_hpa_keeps_its_replicas(app: App, kube: Kube) -> None:
    """Once the HPA scales to minReplicas, resyncs and diff leave replicas alone: 0 writes
    to the Deployment and no drift reported."""
    from gitsync.drift.scan import scan
    from gitsync.engine.sync import prepare
    from tests.support.cluster_fixtures import wait_until
    from tests.support.manifests import deployment

    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(), "hpa.yaml": HPA})
    assert app.sync().result == "synced"
    web = ref("Deployment", "web", app.ns, "apps")

    def replicas() -> int:
        live = kube.get(web)
        assert live is not None
        return int(live["spec"]["replicas"])

    wait_until(lambda: replicas() == 3, timeout=60, what="the HPA to scale to minReplicas")
    kube.calls.clear()
    for _ in range(10):
        result = app.sync()
        assert result.result == "unchanged", result.error
    assert kube.calls["apply"] == 0, "no write to the Deployment"
    assert replicas() == 3
    prep = prepare(app.config(), app.ctx)
    assert prep.plan.in_sync
    drift = scan(kube, app.config(), state_namespace=app.ctx.state_namespace)
    assert [d.path for d in drift] == []


def test_objects_of_the_shared_manager_migrate_to_the_app_manager(app: App, kube: Kube) -> None:
    """Objects owned by the shared `gitsync` manager of older releases end up owned by the
    app's own manager only, and the resync after that writes nothing."""
    from gitsync.model import FIELD_MANAGER
    from tests.support.manifests import deployment

    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("c", 2), "web.yaml": deployment()})
    assert app.sync().result == "synced"
    objects = [ref("ConfigMap", "c-0", app.ns), ref("Deployment", "web", app.ns, "apps")]
    mine = f"gitsync-{app.name}"
    for r in objects:  # as the previous release left them
        live = kube.get(r)
        assert live is not None
        entries = [
            {**e, "manager": FIELD_MANAGER} if e["manager"] == mine else e
            for e in live["metadata"]["managedFields"]
        ]
        kube.json_patch(
            r,
            [{"op": "replace", "path": "/metadata/managedFields", "value": entries}],
            manager="test",
        )
    result = app.sync()
    assert result.result == "synced", result.error
    for r in objects:
        live = kube.get(r)
        assert live is not None
        managers = {e["manager"] for e in live["metadata"]["managedFields"]}
        assert FIELD_MANAGER not in managers
        assert mine in managers
    kube.calls.clear()
    assert app.sync().result == "unchanged"
    assert kube.calls["apply"] == 0


def test_diff_sync_and_drift_name_the_same_field_and_the_other_manager(
    app: App, kube: Kube, kubectl: Kubectl
) -> None:
    """A `kubectl set image` shows in `diff` with drift's field path and its manager; the sync
    that takes it back logs the conflict with that manager instead of forcing silently."""
    from gitsync.drift.scan import scan
    from gitsync.engine.sync import prepare
    from tests.support.manifests import deployment

    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment()})
    assert app.sync().result == "synced"
    kubectl("set", "image", "-n", app.ns, "deployment/web", "web=registry.invalid/web:hotfix")
    path = "spec.template.spec.containers[name=web].image"
    (drift,) = scan(kube, app.config(), state_namespace=app.ctx.state_namespace)
    assert drift.path == path
    (change,) = [c for c in prepare(app.config(), app.ctx).plan.changes if c.diff]
    assert [d.path for d in change.diff] == [path]
    assert change.conflicts
    assert change.conflicts[0].startswith("kubectl-set:")
    with structlog.testing.capture_logs() as logs:
        assert app.sync().result == "synced"
    conflicts = [e for e in logs if e["event"] == "sync.conflict"]
    assert conflicts
    assert conflicts[0]["owner"].startswith("kubectl-set:")
    assert drift.manager == "kubectl-set"
