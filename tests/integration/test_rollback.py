"""Health gating and automatic rollback against the real cluster's KWOK failure stages."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import structlog

from gitsync.engine import inventory
from gitsync.kube import Kube
from tests.support import manifests
from tests.support.app_fixtures import App, ref

pytestmark = [pytest.mark.cluster, pytest.mark.git]

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
"""

CONFIG = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: NAME
  namespace: {ns}
data:
  key: value
"""


def deployment(
    *, image: str = "registry.invalid/web:1", behavior: str = "", deadline: int = 600
) -> str:
    return manifests.deployment(image=image, behavior=behavior, deadline=deadline, replicas=2)


def config_map(name: str) -> str:
    return CONFIG.replace("NAME", name)


def _deploy(kube: Kube, app: App) -> dict:
    obj = kube.get(ref("Deployment", "web", app.ns, "apps"))
    assert obj is not None
    return obj


def _events(kube: Kube, app: App, reason: str) -> list[dict]:
    res = kube.discover().resource("", "v1", "Event")
    assert res is not None
    items, _ = kube.list_objects(res, namespace=app.ns)
    return [e for e in items if e.get("reason") == reason]


def test_crashloop_is_rolled_back_quarantined_and_next_commit_applies(app: App, kube: Kube) -> None:
    """v2 crashloops: early failure, rollback to v1 (Ready again), v2 quarantined, v3 applies."""
    v1 = app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment()}, "v1")
    first = app.sync()
    assert first.result == "synced", first.error
    v2 = app.commit(
        {"ns.yaml": NAMESPACE, "web.yaml": deployment(image="web:2", behavior="crashloop")}, "v2"
    )
    with structlog.testing.capture_logs() as logs:
        result = app.sync()
    assert result.result == "rolled-back", result.error
    assert result.rolled_back_to == v1
    assert "CrashLoopBackOff" in result.error
    # Early: well before the 600 s progress deadline.
    assert result.seconds < 120
    names = [e["event"] for e in logs]
    assert (
        names.index("health.failed")
        < names.index("rollback.started")
        < names.index("rollback.done")
    )
    done = next(e for e in logs if e["event"] == "rollback.done")
    assert done["from_revision"] == v2
    assert done["to_revision"] == v1
    assert done["object"] == f"Deployment.apps {app.ns}/web"
    assert "CrashLoopBackOff" in done["reason"]

    live = _deploy(kube, app)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.invalid/web:1"
    assert live["status"].get("availableReplicas") == 2
    assert live["status"].get("updatedReplicas") == 2
    assert _events(kube, app, "RolledBack"), "a RolledBack Event is on the Deployment"

    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state.quarantined == (v2,)
    assert state.healthy_revision == v1
    assert state.revision == v1

    kube.calls.clear()
    again = app.sync()
    assert again.result == "quarantined"
    assert kube.calls["apply"] == 0
    assert kube.calls["dry-run"] == 0

    v3 = app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(image="web:3")}, "v3")
    third = app.sync()
    assert third.result == "synced", third.error
    assert third.revision == v3
    live = _deploy(kube, app)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "web:3"


def test_progress_deadline_exceeded_triggers_rollback(app: App, kube: Kube) -> None:
    """A never-ready v2 with a short progressDeadlineSeconds is rolled back on the deadline."""
    v1 = app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(deadline=10)})
    assert app.sync().result == "synced"
    app.commit(
        {
            "ns.yaml": NAMESPACE,
            "web.yaml": deployment(image="web:2", behavior="never-ready", deadline=10),
        }
    )
    result = app.sync()
    assert result.result == "rolled-back", result.error
    assert "ProgressDeadlineExceeded" in result.error
    assert result.rolled_back_to == v1
    assert _deploy(kube, app)["status"].get("availableReplicas") == 2


def test_rollback_deletes_added_objects_and_never_deleted_removed_ones(
    app: App, kube: Kube
) -> None:
    """v2 adds a ConfigMap and drops one; after rollback the new is gone, the old intact."""
    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(), "old.yaml": config_map("old")})
    assert app.sync().result == "synced"
    old = kube.get(ref("ConfigMap", "old", app.ns))
    assert old is not None
    app.commit(
        {
            "ns.yaml": NAMESPACE,
            "web.yaml": deployment(image="web:2", behavior="crashloop"),
            "new.yaml": config_map("new"),
        }
    )
    result = app.sync()
    assert result.result == "rolled-back", result.error
    assert kube.get(ref("ConfigMap", "new", app.ns)) is None
    still = kube.get(ref("ConfigMap", "old", app.ns))
    assert still is not None
    assert still["metadata"]["uid"] == old["metadata"]["uid"], "old was never deleted"
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    names = sorted(e.ref.name for e in state.inventory)
    assert names == sorted([app.ns, "old", "web"])


def test_first_revision_failing_is_quarantined_without_rollback(app: App, kube: Kube) -> None:
    """With no healthy revision, a failure is reported and quarantined and nothing else changes."""
    bad = app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(behavior="crashloop")})
    with structlog.testing.capture_logs() as logs:
        result = app.sync()
    assert result.result == "failed"
    assert "CrashLoopBackOff" in result.error
    events = [e["event"] for e in logs]
    assert "rollback.started" not in events
    assert "rollback.skipped" in events
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state.quarantined == (bad,)
    assert state.healthy_revision == ""
    assert kube.get(ref("Deployment", "web", app.ns, "apps")) is not None, "nothing deleted"
    assert app.sync().result == "quarantined"
    forced = app.sync(force=True)
    assert forced.result == "failed"


def test_rollback_disabled_only_reports(app: App, kube: Kube) -> None:
    """With rollback off, the gate reports the failure and leaves the bad revision in place."""
    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment()})
    assert app.sync(rollback={"enabled": False}).result == "synced"
    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(image="web:2", behavior="crashloop")})
    result = app.sync(rollback={"enabled": False})
    assert result.result == "failed"
    assert "CrashLoopBackOff" in result.error
    assert _deploy(kube, app)["spec"]["template"]["spec"]["containers"][0]["image"] == "web:2"
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state.quarantined == ()


STATEFULSET = """\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: {{ns}}
spec:
  replicas: 2
  serviceName: db
  selector:
    matchLabels: {{{{app: db}}}}
  template:
    metadata:
      labels: {{{{app: db, gitsync.test/behavior: BEHAVIOR}}}}
    spec:
      containers: [{{{{name: db, image: registry.invalid/db:IMAGE}}}}]
"""

JOB = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate-IMAGE
  namespace: {{ns}}
spec:
  backoffLimit: 1
  template:
    metadata:
      labels: {{{{gitsync.test/behavior: BEHAVIOR}}}}
    spec:
      restartPolicy: Never
      containers: [{{{{name: m, image: registry.invalid/migrate:IMAGE}}}}]
"""


def _fill(template: str, behavior: str, image: str) -> str:
    return template.replace("BEHAVIOR", behavior).replace("IMAGE", image).format()


def test_statefulset_and_job_are_judged(app: App, kube: Kube) -> None:
    """A healthy StatefulSet and Job pass the gate; a crashlooping StatefulSet fails it."""
    good = {
        "ns.yaml": NAMESPACE,
        "db.yaml": _fill(STATEFULSET, "normal", "1"),
        "job.yaml": _fill(JOB, "normal", "1"),
    }
    app.commit(good)
    result = app.sync()
    assert result.result == "synced", result.error
    sts = kube.get(ref("StatefulSet", "db", app.ns, "apps"))
    assert sts is not None
    assert sts["status"].get("readyReplicas") == 2
    job = kube.get(ref("Job", "migrate-1", app.ns, "batch"))
    assert job is not None
    # The Job controller sets SuccessCriteriaMet first and Complete once its Pods are gone;
    # either one is success.
    done = {"Complete", "SuccessCriteriaMet"}
    assert any(c["type"] in done for c in job["status"].get("conditions", []))

    app.commit(good | {"db.yaml": _fill(STATEFULSET, "crashloop", "2")})
    bad = app.sync()
    assert bad.result == "rolled-back", bad.error
    assert "StatefulSet" in bad.error
    assert "CrashLoopBackOff" in bad.error


def test_half_applied_commit_is_rolled_back(app: App, kube: Kube) -> None:
    """A commit whose later stage is refused is undone: no half-applied app is left behind."""
    app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment(), "cfg.yaml": config_map("cfg")})
    good = app.sync()
    assert good.result == "synced", good.error
    extra_ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}-extra\n"
    # In a namespace the commit creates, so no dry-run can see the bad value first.
    bad_deploy = (
        deployment()
        .replace("namespace: {ns}", "namespace: {ns}-extra")
        .replace("replicas: 2", "replicas: -1")
    )
    changed_cfg = config_map("cfg").replace("value", "changed")
    app.commit(
        {
            "ns.yaml": NAMESPACE,
            "web.yaml": deployment(),
            "cfg.yaml": changed_cfg,
            "extra-ns.yaml": extra_ns,
            "extra-web.yaml": bad_deploy,
        }
    )
    result = app.sync()
    assert result.result == "rolled-back", result.error
    assert "apply failed" in result.error
    assert "replicas" in result.error
    cfg = kube.get(ref("ConfigMap", "cfg", app.ns))
    assert cfg is not None
    assert cfg["data"] == {"key": "value"}, "the config stage's change was put back"
    extra = kube.get(ref("Namespace", f"{app.ns}-extra"))
    assert extra is None or extra["metadata"].get("deletionTimestamp"), "created objects removed"
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state.quarantined == (result.revision,), "an invalid object is the commit's fault"


def test_shutdown_during_the_gate_interrupts_without_rollback(app: App, kube: Kube) -> None:
    """Cancelling a sync in its health gate ends it at once: no rollback, no quarantine."""
    v1 = app.commit({"ns.yaml": NAMESPACE, "web.yaml": deployment()})
    assert app.sync().result == "synced"
    v2 = app.commit(
        {"ns.yaml": NAMESPACE, "web.yaml": deployment(image="web:2", behavior="never-ready")}
    )
    cancel = threading.Event()
    app.ctx = replace(app.ctx, cancel=cancel)
    threading.Timer(2.0, cancel.set).start()
    began = time.monotonic()
    result = app.sync()
    assert result.result == "interrupted"
    assert time.monotonic() - began < 10, "the 600 s progress deadline was not waited for"
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state.revision == v2
    assert state.healthy_revision == v1, "an unjudged commit is not recorded as healthy"
    assert state.quarantined == ()
    assert _deploy(kube, app)["spec"]["template"]["spec"]["containers"][0]["image"] == "web:2"
    assert app.sync().result == "interrupted", "a cancelled context writes nothing new"
