"""The gate judges what the commit changed, and tells a timeout from a failure."""

from __future__ import annotations

import pytest
import structlog

from gitsync.engine import inventory
from gitsync.kube import Kube
from tests.support.app_fixtures import App
from tests.support.manifests import NAMESPACE, config_maps, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.git]


def test_preexisting_unhealth_does_not_fail_a_configmap_commit(app: App, kube: Kube) -> None:
    """An unchanged Deployment that was already crash-looping does not roll back a commit
    that only changed a ConfigMap; it is reported as pre-existing."""
    broken = {"ns.yaml": NAMESPACE, "web.yaml": deployment(behavior="crashloop")}
    app.commit(broken | {"cfg.yaml": config_maps("cfg", 1, value="one")})
    assert app.sync(rollback={"enabled": False}).result == "failed"
    sha = app.commit(broken | {"cfg.yaml": config_maps("cfg", 1, value="two")})
    with structlog.testing.capture_logs() as logs:
        result = app.sync()
    assert result.result == "synced", result.error
    pre = [e for e in logs if e["event"] == "health.preexisting"]
    assert [e["object"] for e in pre] == [f"Deployment.apps {app.ns}/web"]
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state.healthy_revision == sha
    assert sha not in state.quarantined


def test_changed_workload_that_breaks_still_fails(app: App) -> None:
    """The pre-existing exemption covers unchanged objects only: a changed one is judged."""
    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment()})
    assert app.sync().result == "synced"
    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(behavior="crashloop")})
    assert app.sync().result == "rolled-back"


def test_timeout_without_failure_is_not_a_failure(app: App, kube: Kube) -> None:
    """A gate that runs out of time while a rollout progresses is a timeout: no rollback, no
    quarantine, and the commit is gated again on the next poll."""
    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment()})
    assert app.sync().result == "synced"
    slow = app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(behavior="never-ready")})
    with structlog.testing.capture_logs() as logs:
        result = app.sync(health={"timeout": "4s"})
    events = [e["event"] for e in logs]
    assert result.result == "timed-out", result.error
    assert "health.timeout" in events
    assert "rollback.started" not in events
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert slow not in state.quarantined
    assert state.history[-1].result == "timed-out"
    again = app.sync(health={"timeout": "2s"})
    assert again.result == "timed-out"
