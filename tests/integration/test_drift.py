"""Drift detection against the real cluster with the real kubectl: who changed what, when."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gitsync import config
from gitsync.drift import scan as drift
from gitsync.drift.watcher import DriftSettings, DriftWatcher
from gitsync.engine.sync import Context, sync_app
from gitsync.kube import Kube
from gitsync.model import ObjectRef
from gitsync.runtime import metrics
from tests.support.cluster_fixtures import ClusterHandle, Kubectl, wait_until
from tests.support.log_capture import Recorder
from tests.support.repos import BareRepo

pytestmark = [pytest.mark.cluster, pytest.mark.git]

MANIFESTS = {
    "namespace.yaml": """\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
""",
    "deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
  labels: {{team: a}}
  annotations: {{note: from-git}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: registry.invalid/web:1
          env: [{{name: MODE, value: blue}}]
          resources: {{limits: {{cpu: "0.5"}}}}
""",
    "config.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: {ns}
data:
  mode: blue
  tuning: slow
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: scratch
  namespace: {ns}
  annotations: {{gitsync.io/drift: ignore}}
data:
  mode: blue
""",
    "secret.yaml": """\
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: {ns}
stringData:
  password: hunter2-{ns}
""",
}

FAST = DriftSettings(debounce=0.3, settle=0.5, retry_max=1.0, heal_window=60.0)


@dataclass
class DriftApp:
    name: str
    ns: str
    repo: BareRepo
    ctx: Context
    kubectl: Kubectl
    tmp: Path

    def config(self, **extra: object) -> config.AppConfig:
        raw = {"name": self.name, "repo": self.repo.file_url, "namespace": self.ns, **extra}
        (app,) = config.parse({"apps": [raw]}).apps
        return app

    def sync(self, **extra: object) -> None:
        result = sync_app(self.config(**extra), self.ctx)
        assert result.result == "synced", result.error

    def watcher(
        self, recorder: Recorder, settings: DriftSettings = FAST, **extra: object
    ) -> DriftWatcher:
        return DriftWatcher(
            self.ctx.kube,
            self.config(**extra),
            self.ctx.state_namespace,
            recorder.logger(app=self.name),
            settings=settings,
        )

    def k(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        return self.kubectl(*args, "-n", self.ns, env=env).stdout

    def edit(self, target: str, pattern: str, replacement: str) -> None:
        """``kubectl edit`` with an EDITOR script that does one regex substitution."""
        script = self.tmp / f"editor-{uuid.uuid4().hex[:6]}.py"
        script.write_text(
            "import re, sys\n"
            "p = sys.argv[1]\n"
            "text = open(p).read()\n"
            f"new = re.sub({pattern!r}, {replacement!r}, text, count=1)\n"
            "assert new != text, 'the editor script changed nothing'\n"
            "open(p, 'w').write(new)\n"
        )
        editor = self.tmp / f"{script.stem}.sh"
        editor.write_text(f'#!/bin/sh\nexec "{_python()}" "{script}" "$1"\n')
        editor.chmod(0o755)
        self.k("edit", target, env={"EDITOR": str(editor), "KUBE_EDITOR": str(editor)})

    def live(self, kind: str, name: str, group: str = "") -> dict[str, Any]:
        obj = self.ctx.kube.get(
            ObjectRef(group=group, version="v1", kind=kind, namespace=self.ns, name=name)
        )
        assert obj is not None
        return obj


def _python() -> str:
    import sys

    return sys.executable


@pytest.fixture
def kube(kubeconfig: Path) -> Kube:
    return Kube.connect(kubeconfig=kubeconfig)


@pytest.fixture
def app(
    kube: Kube, kubectl: Kubectl, make_repo: Callable[..., BareRepo], tmp_path: Path
) -> Iterator[DriftApp]:
    suffix = uuid.uuid4().hex[:6]
    name, ns = f"drift-{suffix}", f"gs-drift-{suffix}"
    ctx = Context(kube=kube, cache_dir=tmp_path / "cache", state_namespace=f"gs-state-{suffix}")
    the_app = DriftApp(
        name=name, ns=ns, repo=make_repo(name), ctx=ctx, kubectl=kubectl, tmp=tmp_path
    )
    the_app.repo.commit({k: v.format(ns=ns) for k, v in MANIFESTS.items()})
    yield the_app
    for n in (ns, ctx.state_namespace):
        kube.delete(ObjectRef(group="", version="v1", kind="Namespace", namespace="", name=n))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def started(app: DriftApp, recorder: Recorder) -> Iterator[DriftWatcher]:
    """The app synced, and a report-only watcher that has compared everything once."""
    app.sync()
    watcher = app.watcher(recorder)
    watcher.start()
    try:
        assert watcher.wait_ready(30), "the watcher never finished its first compare"
        assert recorder.find("drift.detected") == [], "a fresh sync must not look drifted"
        yield watcher
    finally:
        watcher.stop()


DEPLOY = "Deployment.apps {ns}/web"
CONTAINER = "spec.template.spec.containers[name=web]"


def test_each_kubectl_command_is_reported_with_field_values_and_manager(
    app: DriftApp, started: DriftWatcher, recorder: Recorder
) -> None:
    """edit, scale, patch, set image, label, annotate, delete: path, desired → live, manager."""
    deploy = DEPLOY.format(ns=app.ns)
    cm = f"ConfigMap {app.ns}/web-config"
    cases: list[tuple[Callable[[], None], dict[str, Any]]] = [
        (
            lambda: app.edit("configmap/web-config", r"mode: blue", "mode: green"),
            {"object": cm, "field": "data.mode", "desired": "blue", "live": "green"}
            | {"manager": "kubectl-edit", "operation": "Update"},
        ),
        (
            lambda: app.k("scale", "deployment/web", "--replicas=5"),
            {"object": deploy, "field": "spec.replicas", "desired": 2, "live": 5}
            | {"manager": "kubectl", "subresource": "scale"},
        ),
        (
            lambda: app.k(
                "patch",
                "deployment/web",
                "--type=json",
                "-p",
                '[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value",'
                '"value":"red"}]',
            ),
            {"object": deploy, "field": f"{CONTAINER}.env[name=MODE].value"}
            | {"desired": "blue", "live": "red", "manager": "kubectl-patch"},
        ),
        (
            lambda: app.k("set", "image", "deployment/web", "web=registry.invalid/web:2"),
            {"object": deploy, "field": f"{CONTAINER}.image", "desired": "registry.invalid/web:1"}
            | {"live": "registry.invalid/web:2", "manager": "kubectl-set"},
        ),
        (
            lambda: app.k("label", "deployment/web", "team=b", "--overwrite"),
            {"object": deploy, "field": "metadata.labels.team", "desired": "a", "live": "b"}
            | {"manager": "kubectl-label"},
        ),
        (
            lambda: app.k("annotate", "deployment/web", "note=by-hand", "--overwrite"),
            {"object": deploy, "field": "metadata.annotations.note", "desired": "from-git"}
            | {"live": "by-hand", "manager": "kubectl-annotate"},
        ),
        (
            lambda: app.k("delete", "configmap/web-config"),
            {"object": cm, "field": "(object)", "desired": "(present)", "live": "(deleted)"}
            | {"manager": "unknown"},
        ),
    ]
    for command, expected in cases:
        command()
        event = recorder.wait("drift.detected", **expected)
        assert event["revision"] == app.repo.head()[:12]
        if expected["manager"] not in ("kubectl", "unknown"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"]), event
    # Each drift was reported exactly once, whatever else happened to the objects since.
    for _command, expected in cases:
        assert len(recorder.find("drift.detected", **expected)) == 1, expected
    current = {(str(r.ref), r.path): r for r in started.current()}
    assert (deploy, "spec.replicas") in current
    assert current[(cm, "(object)")].live == "(deleted)"
    assert len(started.current().objects) == 2
    gauge = metrics.DRIFT_OBJECTS.labels(app=app.name)._value.get()
    assert gauge == 2
    # The same picture from one LIST per kind: what `gitsync status` prints.
    scanned = drift.scan(app.ctx.kube, app.config(), state_namespace=app.ctx.state_namespace)
    assert {(str(r.ref), r.path, r.manager) for r in scanned} == {
        (str(r.ref), r.path, r.manager) for r in started.current()
    }
    events = app.k(
        "get",
        "events",
        "--field-selector",
        "reason=Drift,involvedObject.name=web",
        "-o",
        "jsonpath={.items[*].message}",
    )
    assert "spec.replicas: 2 → 5 (by kubectl, Update/scale" in events


def test_fields_gitsync_never_set_and_ignored_fields_are_not_reported(
    app: DriftApp, recorder: Recorder
) -> None:
    """A new label, rollout restart, an app ignore rule, the drift annotation and the
    replicas of an HPA's target: silence."""
    app.sync()
    watcher = app.watcher(
        recorder, ignore=[{"kind": "ConfigMap", "name": "web-*", "jsonPointer": "/data/tuning"}]
    )
    watcher.start()
    try:
        assert watcher.wait_ready(30)
        app.k("label", "deployment/web", "extra=yes")
        app.kubectl("autoscale", "deployment/web", "-n", app.ns, "--min=1", "--max=10", "--cpu=80%")
        app.k("scale", "deployment/web", "--replicas=4")  # an HPA owns spec.replicas
        app.k("rollout", "restart", "deployment/web")
        app.k("patch", "configmap/web-config", "-p", '{"data":{"tuning":"fast"}}')
        app.k("patch", "configmap/scratch", "-p", '{"data":{"mode":"red"}}')
        # One reported change afterwards: events are handled in order, so the ones
        # before it have been compared by the time it shows up.
        app.k("annotate", "deployment/web", "note=later", "--overwrite")
        recorder.wait("drift.detected", field="metadata.annotations.note")
        fields = [(e["object"], e["field"]) for e in recorder.find("drift.detected")]
        assert fields == [(DEPLOY.format(ns=app.ns), "metadata.annotations.note")]
    finally:
        watcher.stop()


def test_a_sync_of_a_new_commit_is_not_drift(
    app: DriftApp, started: DriftWatcher, recorder: Recorder
) -> None:
    """Changed, removed and pruned by gitsync itself: silence; the new intent counts next."""
    changed = {k: v.format(ns=app.ns) for k, v in MANIFESTS.items()}
    changed["deployment.yaml"] = (
        changed["deployment.yaml"].replace("replicas: 2", "replicas: 3").replace("{team: a}", "{}")
    )
    changed["secret.yaml"] = changed["secret.yaml"].replace("hunter2", "swordfish")
    changed["config.yaml"] = changed["config.yaml"].split("---")[0]  # prunes "scratch"
    sha = app.repo.commit(changed)
    with started.syncing():  # what the controller does around each sync of the app
        app.sync()
    assert (
        app.ctx.kube.get(
            ObjectRef(group="", version="v1", kind="ConfigMap", namespace=app.ns, name="scratch")
        )
        is None
    )
    recorder.wait("drift.intents", revision=sha[:12])
    app.k("scale", "deployment/web", "--replicas=7")
    event = recorder.wait("drift.detected", field="spec.replicas")
    assert (event["desired"], event["live"], event["revision"]) == (3, 7, sha[:12])
    # Events are compared in order: everything the sync did was seen before the scale.
    assert [e["field"] for e in recorder.find("drift.detected")] == ["spec.replicas"]


def test_secret_edit_is_reported_masked(
    app: DriftApp, started: DriftWatcher, recorder: Recorder
) -> None:
    """kubectl edit of a Secret's data: reported as data.password = ***, nowhere in clear."""
    app.edit("secret/web-secret", r"password: \S+", "password: c3dvcmRmaXNo")
    event = recorder.wait("drift.detected", field="data.password")
    assert (event["desired"], event["live"], event["manager"]) == ("***", "***", "kubectl-edit")
    messages = app.k("get", "events", "-o", "jsonpath={.items[*].message}")
    for text in (repr(recorder.events), repr(started.current()), messages):
        for secret in (f"hunter2-{app.ns}", "swordfish", "c3dvcmRmaXNo"):
            assert secret not in text


def test_drift_made_while_stopped_is_reported_at_start(app: DriftApp, recorder: Recorder) -> None:
    """Start-up compares everything once: earlier edits and deletions are reported."""
    app.sync()
    app.k("scale", "deployment/web", "--replicas=3")
    app.k("set", "image", "deployment/web", "web=registry.invalid/web:9")
    app.k("delete", "secret/web-secret")
    watcher = app.watcher(recorder)
    watcher.start()
    try:
        assert watcher.wait_ready(30)
        recorder.wait("drift.detected", field="spec.replicas", live=3, manager="kubectl")
        image = recorder.wait("drift.detected", field=f"{CONTAINER}.image")
        assert image["manager"] == "kubectl-set"
        assert image["time"], "attributed from the managedFields time, not from now"
        recorder.wait("drift.detected", object=f"Secret {app.ns}/web-secret", field="(object)")
    finally:
        watcher.stop()


def test_self_heal_restores_the_value(app: DriftApp, recorder: Recorder) -> None:
    """selfHeal: the intent is re-applied after the debounce; the drift resolves."""
    app.sync(selfHeal=True)
    watcher = app.watcher(recorder, selfHeal=True)
    watcher.start()
    try:
        assert watcher.wait_ready(30)
        app.k("scale", "deployment/web", "--replicas=4")
        app.k("delete", "configmap/web-config")
        recorder.wait("drift.healed", object=DEPLOY.format(ns=app.ns))
        wait_until(
            lambda: app.live("Deployment", "web", group="apps")["spec"]["replicas"] == 2,
            timeout=15,
            what="replicas back at 2",
        )
        recorder.wait("drift.resolved", field="spec.replicas")
        recorder.wait("drift.healed", object=f"ConfigMap {app.ns}/web-config")
        assert app.live("ConfigMap", "web-config")["data"]["mode"] == "blue"
        recorder.wait("drift.resolved", object=f"ConfigMap {app.ns}/web-config")
        wait_until(lambda: not watcher.current(), timeout=15, what="no drift left")
    finally:
        watcher.stop()


def test_someone_fighting_self_heal_stops_it(app: DriftApp, recorder: Recorder) -> None:
    """Healed more than heal_limit times in the window: drift.fight names the managers."""
    app.sync(selfHeal=True)
    settings = DriftSettings(debounce=0.2, settle=0.5, heal_limit=3, heal_window=60.0)
    watcher = app.watcher(recorder, settings, selfHeal=True)
    watcher.start()
    stop = threading.Event()

    def fight() -> None:
        while not stop.is_set():
            if app.live("Deployment", "web", group="apps")["spec"]["replicas"] == 2:
                app.k("scale", "deployment/web", "--replicas=6")
            stop.wait(0.1)

    fighter = threading.Thread(target=fight, daemon=True)
    try:
        assert watcher.wait_ready(30)
        fighter.start()
        event = recorder.wait("drift.fight", timeout=40)
        assert event["object"] == DEPLOY.format(ns=app.ns)
        assert "kubectl" in event["managers"]
        assert event["heals"] == 3
        assert len(recorder.find("drift.healed")) == 3
    finally:
        stop.set()
        fighter.join(10)
        watcher.stop()
    assert app.live("Deployment", "web", group="apps")["spec"]["replicas"] == 6


def test_watch_resumes_after_an_apiserver_restart(
    app: DriftApp, started: DriftWatcher, recorder: Recorder, cluster: ClusterHandle
) -> None:
    """The watch reconnects (or relists) after a restart and catches the next edit;
    a drift reported before the restart is not reported again."""
    if cluster.dev is None:
        pytest.skip("the cluster was started outside this run; it cannot be restarted")
    app.k("scale", "deployment/web", "--replicas=3")
    recorder.wait("drift.detected", field="spec.replicas")
    cluster.dev.restart_apiserver()
    began = time.monotonic()
    app.edit("configmap/web-config", r"mode: blue", "mode: purple")
    recorder.wait("drift.detected", field="data.mode", live="purple", timeout=45)
    assert time.monotonic() - began < 45
    assert len(recorder.find("drift.detected", field="spec.replicas")) == 1
    assert {(r.path, r.live) for r in started.current()} >= {("spec.replicas", 3)}
