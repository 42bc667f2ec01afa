"""Objects whose life goes on outside Git: Jobs removed by their TTL, CRD versions retired."""

from __future__ import annotations

import pytest

from gitsync.engine import inventory
from gitsync.kube import Kube
from tests.support.app_fixtures import App, ref
from tests.support.cluster_fixtures import wait_until
from tests.support.manifests import NAMESPACE

pytestmark = [pytest.mark.cluster, pytest.mark.git]

JOB = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: {ns}
spec:
  ttlSecondsAfterFinished: 1
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: migrate
          image: registry.invalid/migrate:1
"""


def test_job_removed_by_its_ttl_is_not_run_again(app: App, kube: Kube) -> None:
    """A finished Job that its ttlSecondsAfterFinished deleted is not recreated while Git
    keeps it unchanged, and is not reported as drift."""
    from gitsync.drift.scan import scan

    app.commit({"ns.yaml": NAMESPACE, "job.yaml": JOB})
    assert app.sync().result == "synced"
    job = ref("Job", "migrate", app.ns, "batch")
    wait_until(lambda: kube.get(job) is None, timeout=60, what="the TTL controller to delete it")
    kube.calls.clear()
    for _ in range(3):
        assert app.sync().result == "unchanged"
    assert kube.calls["apply"] == 0
    assert kube.get(job) is None, "the Job ran again"
    assert list(scan(kube, app.config(), state_namespace=app.ctx.state_namespace)) == []
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert job.identity() in {e.ref.identity() for e in state.inventory}


def _crd(versions: str) -> str:
    return (
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
        "metadata:\n  name: widgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n"
        "  names: {{plural: widgets, singular: widget, kind: Widget}}\n  versions:\n" + versions
    )


def _version(name: str, *, served: bool, storage: bool) -> str:
    return (
        f"    - name: {name}\n      served: {str(served).lower()}\n"
        f"      storage: {str(storage).lower()}\n      schema:\n        openAPIV3Schema:\n"
        "          type: object\n          x-kubernetes-preserve-unknown-fields: true\n"
    )


WIDGET = "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: sprocket\n  namespace: {ns}\n"


def test_object_recorded_at_a_retired_version_is_still_pruned(app: App, kube: Kube) -> None:
    """A Widget recorded at v1 is found and pruned at v2 once v1 is no longer served."""
    both = _version("v1", served=True, storage=True) + _version("v2", served=True, storage=False)
    app.commit({"ns.yaml": NAMESPACE, "crd.yaml": _crd(both), "widget.yaml": WIDGET})
    assert app.sync().result == "synced"
    retired = _version("v1", served=False, storage=False) + _version(
        "v2", served=True, storage=True
    )
    app.commit({"ns.yaml": NAMESPACE, "crd.yaml": _crd(retired)})
    result = app.sync()
    assert result.result == "synced", result.error
    assert kube.get(ref("Widget", "sprocket", app.ns, app.group, version="v2")) is None
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert "Widget" not in {e.ref.kind for e in state.inventory}
