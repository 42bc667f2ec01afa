"""Crash safety: kill -9 at any point leaves nothing untracked; every outcome is recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from gitsync.engine import inventory
from gitsync.engine.rollback import quarantine
from gitsync.kube import Kube
from gitsync.model import APP_LABEL
from tests.support.app_fixtures import App, ref
from tests.support.cluster_fixtures import Kubectl, wait_until
from tests.support.manifests import NAMESPACE, config_maps, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.git]

BIG = 1000


def base_tree() -> dict[str, str]:
    return {"ns.yaml": NAMESPACE, "base.yaml": config_maps("base", 20), "web.yaml": deployment()}


def big_tree(*, behavior: str = "") -> dict[str, str]:
    return base_tree() | {
        "big.yaml": config_maps("big", BIG),
        "web.yaml": deployment(behavior=behavior, image="registry.invalid/web:2"),
    }


def labelled(kube: Kube, app: App) -> set[tuple[str, str, str, str]]:
    """Every object in the cluster labelled for the app, by identity."""
    found: set[tuple[str, str, str, str]] = set()
    disc = kube.discover()
    for group, version, kind in (("", "v1", "ConfigMap"), ("apps", "v1", "Deployment")):
        res = disc.resource(group, version, kind)
        assert res is not None
        items, _ = kube.list_objects(
            res, namespace=app.ns, label_selector=f"{APP_LABEL}={app.name}"
        )
        found |= {(group, kind, app.ns, i["metadata"]["name"]) for i in items}
    ns = kube.get(ref("Namespace", app.ns))
    if ns is not None and (ns["metadata"].get("labels") or {}).get(APP_LABEL) == app.name:
        found.add(("", "Namespace", "", app.ns))
    return found


def assert_converged(kube: Kube, app: App, tmp_path: Path) -> None:
    """Inventory == labelled live objects == Git, nothing pending, and `gitsync diff` says 0."""
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    recorded = {e.ref.identity() for e in state.inventory}
    live = labelled(kube, app)
    assert live == recorded, (
        f"orphans: {sorted(live - recorded)[:5]}, lost: {sorted(recorded - live)[:5]}"
    )
    assert not state.pending
    assert not state.adopted
    assert not state.degraded
    diff = run_cli(app, tmp_path, "diff")
    assert diff.returncode == 0, diff.stdout + diff.stderr


def write_config(app: App, tmp_path: Path) -> Path:
    path = tmp_path / "gitsync.yaml"
    raw = {
        "stateNamespace": app.ctx.state_namespace,
        "cacheDir": str(tmp_path / "cli-cache"),
        "apps": [
            {
                "name": app.name,
                "repo": app.repo.file_url,
                "namespace": app.ns,
                "prune": {"allowMassDelete": True},
                "health": {"timeout": "120s"},
            }
        ],
    }
    path.write_text(json.dumps(raw))
    return path


def _cli_argv(app: App, tmp_path: Path, *args: str) -> list[str]:
    kubeconfig = os.environ.get("KUBECONFIG_FOR_TESTS", "")
    return [
        sys.executable,
        "-c",
        "import sys; from gitsync.cli import main; sys.exit(main())",
        *args,
        "--config",
        str(write_config(app, tmp_path)),
        "--kubeconfig",
        kubeconfig,
        "--log-format",
        "json",
    ]


def run_cli(app: App, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli_argv(app, tmp_path, *args), capture_output=True, text=True, timeout=300, check=False
    )


Trigger = Callable[[dict[str, object]], bool]


def sync_and_kill(
    app: App,
    tmp_path: Path,
    kube: Kube,
    *,
    on_line: Trigger | None = None,
    on_cluster: Callable[[], bool] | None = None,
) -> list[str]:
    """Run `gitsync sync --once` and kill -9 it when a log line or the cluster says so."""
    with subprocess.Popen(
        _cli_argv(app, tmp_path, "sync", "--once"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        killed = threading.Event()

        def kill() -> None:
            if not killed.is_set():
                killed.set()
                proc.send_signal(signal.SIGKILL)

        if on_cluster is not None:

            def poll() -> None:
                while proc.poll() is None and not killed.is_set():
                    if on_cluster():
                        kill()
                        return
                    time.sleep(0.05)

            threading.Thread(target=poll, daemon=True).start()
        events: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            events.append(str(record.get("event")))
            if on_line is not None and on_line(record):
                kill()
        proc.wait(timeout=300)
    assert killed.is_set(), f"the kill point was never reached; events: {events[-10:]}"
    assert proc.returncode == -signal.SIGKILL
    return events


def count_big(kube: Kube, app: App) -> int:
    res = kube.discover().resource("", "v1", "ConfigMap")
    assert res is not None
    items, _ = kube.list_objects(res, namespace=app.ns, label_selector=f"{APP_LABEL}={app.name}")
    return sum(1 for i in items if i["metadata"]["name"].startswith("big-"))


def event_is(name: str) -> Trigger:
    return lambda record: record.get("event") == name


@pytest.fixture(autouse=True)
def _kubeconfig_env(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG_FOR_TESTS", str(kubeconfig))


# Kill points of a sync, each named by the log line that triggers it (or "mid-apply").
KILL_POINTS = {
    "at-plan": "sync.planned",
    "mid-apply": "",
    "after-apply": "sync.applied",
    "before-state-write": "health.passed",
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill_during_sync_then_git_moves_back(
    point: str, app: App, kube: Kube, tmp_path: Path
) -> None:
    """kill -9 of a 1,000-object sync, then Git back to the previous commit: 0 orphans."""
    base = app.commit(base_tree())
    assert app.sync().result == "synced"
    app.commit(big_tree())
    if KILL_POINTS[point]:
        sync_and_kill(app, tmp_path, kube, on_line=event_is(KILL_POINTS[point]))
    else:
        sync_and_kill(app, tmp_path, kube, on_cluster=lambda: count_big(kube, app) >= 100)
        assert 0 < count_big(kube, app) < BIG, "killed mid-apply"
    left = count_big(kube, app)
    back = {k: v.format(ns=app.ns) for k, v in base_tree().items()}
    app.repo.commit(back, message="back", parent=base, force=True)
    result = app.sync()
    assert result.result in ("synced", "unchanged"), result.error
    assert count_big(kube, app) == 0
    assert_converged(kube, app, tmp_path)
    print(f"\n[kill] {point}: {left} of {BIG} created before kill -9, 0 left after the next sync")


def test_kill_during_prune_then_sync(app: App, kube: Kube, tmp_path: Path) -> None:
    """kill -9 half-way through pruning 1,000 objects: the next sync finishes the prune."""
    app.commit(big_tree())
    assert app.sync(prune={"allowMassDelete": True}).result == "synced"
    app.commit(base_tree())
    sync_and_kill(app, tmp_path, kube, on_cluster=lambda: count_big(kube, app) <= BIG - 200)
    assert 0 < count_big(kube, app) < BIG, "killed mid-prune"
    result = app.sync(prune={"allowMassDelete": True})
    assert result.result == "synced", result.error
    assert count_big(kube, app) == 0
    assert_converged(kube, app, tmp_path)


def test_kill_during_rollback_resumes_it(app: App, kube: Kube, tmp_path: Path) -> None:
    """kill -9 during a rollback: the next poll finishes the rollback, not the bad commit."""
    base = app.commit(base_tree())
    assert app.sync().result == "synced"
    bad = app.commit(big_tree(behavior="crashloop"))
    rolling_back = threading.Event()

    def rollback_started(record: dict[str, object]) -> bool:
        if record.get("event") == "rollback.started":
            rolling_back.set()
        return False

    sync_and_kill(
        app,
        tmp_path,
        kube,
        on_line=rollback_started,
        on_cluster=lambda: rolling_back.is_set() and count_big(kube, app) <= BIG - 100,
    )
    assert 0 < count_big(kube, app) < BIG, "killed while the rollback deleted what it created"
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert bad in state.quarantined
    with structlog.testing.capture_logs() as logs:
        result = app.sync()
    events = [e["event"] for e in logs]
    assert result.result == "rolled-back", result.error
    assert "rollback.retry" in events
    assert "sync.planned" not in events
    assert count_big(kube, app) == 0
    back = {k: v.format(ns=app.ns) for k, v in base_tree().items()}
    app.repo.commit(back, message="back", parent=base, force=True)
    assert app.sync().result == "unchanged"
    assert_converged(kube, app, tmp_path)


def test_adopted_object_survives_rollback(
    app: App, kube: Kube, kubectl: Kubectl, tmp_path: Path
) -> None:
    """A ConfigMap made by hand, adopted by a commit that fails its gate, is put back as it was."""
    app.commit(base_tree())
    assert app.sync().result == "synced"
    kubectl("create", "configmap", "handmade", "-n", app.ns, "--from-literal=a=1")
    handmade = ref("ConfigMap", "handmade", app.ns)
    adopting = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: handmade\n  namespace: {ns}\n"
        "data:\n  a: '2'\n  b: '3'\n"
    )
    app.commit(
        base_tree() | {"handmade.yaml": adopting, "web.yaml": deployment(behavior="crashloop")}
    )
    result = app.sync()
    assert result.result == "rolled-back", result.error
    live = kube.get(handmade)
    assert live is not None, "rollback deleted an object it never created"
    assert live["data"] == {"a": "1"}
    assert APP_LABEL not in (live["metadata"].get("labels") or {})
    app.commit(base_tree() | {"extra.yaml": config_maps("extra", 1)})
    assert app.sync().result == "synced"
    assert kube.get(handmade) is not None, "a later sync pruned the released object"
    assert_converged(kube, app, tmp_path)


POLICY = """\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {name}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE"]
        resources: ["configmaps"]
  validations:
    - expression: "!has(object.data) || !('key' in object.data) || object.data.key != 'good'"
      message: the test policy refuses key=good
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {name}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: {ns}
"""


def _refused(kubectl: Kubectl, ns: str) -> bool:
    probe = kubectl(
        "create",
        "configmap",
        "probe",
        "-n",
        ns,
        "--from-literal=key=good",
        "--dry-run=server",
        check=False,
    )
    return probe.returncode != 0 and "refuses key=good" in probe.stderr


def test_rollback_refused_is_degraded_and_retried(app: App, kube: Kube, kubectl: Kubectl) -> None:
    """A rollback whose dry-run is refused: Degraded, quarantine kept, retried, then recovers."""
    good_cm = config_maps("cfg", 1, value="good")
    app.commit({"ns.yaml": NAMESPACE, "cfg.yaml": good_cm, "web.yaml": deployment()})
    assert app.sync().result == "synced"
    name = f"deny-good-{app.ns}"
    kubectl("apply", "-f", "-", input=POLICY.format(name=name, ns=app.ns))
    try:
        wait_until(lambda: _refused(kubectl, app.ns), timeout=30, what="the policy to take effect")
        bad = app.commit(
            {
                "ns.yaml": NAMESPACE,
                "cfg.yaml": config_maps("cfg", 1, value="bad"),
                "web.yaml": deployment(behavior="crashloop", image="registry.invalid/web:2"),
            }
        )
        result = app.sync()
        assert result.result == "degraded", result.error
        assert "refuses key=good" in result.error
        state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
        assert state.degraded
        assert bad in state.quarantined
        assert state.history[-1].result == "rollback-failed"
        with structlog.testing.capture_logs() as logs:
            again = app.sync()
        events = [e["event"] for e in logs]
        assert again.result == "degraded"
        assert "rollback.retry" in events
        assert "sync.planned" not in events
    finally:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name)
    wait_until(lambda: not _refused(kubectl, app.ns), timeout=30, what="the policy to go away")
    healed = app.sync()
    assert healed.result == "rolled-back", healed.error
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert not state.degraded
    assert bad in state.quarantined
    cfg = kube.get(ref("ConfigMap", "cfg-0", app.ns))
    assert cfg is not None
    assert cfg["data"] == {"key": "good"}


def test_forced_sync_that_passes_releases_quarantine(app: App, kube: Kube) -> None:
    """`sync --once --force` of a quarantined commit that passes its gate un-quarantines it."""
    sha = app.commit(base_tree())
    assert app.sync().result == "synced"
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    inventory.write_state(kube, quarantine(state, sha), namespace=app.ctx.state_namespace)
    assert app.sync().result == "quarantined"
    assert app.sync(force=True).result in ("synced", "unchanged")
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert sha not in state.quarantined
    assert app.sync().result == "unchanged"


def test_refused_render_is_recorded_once(app: App, kube: Kube) -> None:
    """A refused render is recorded in the history, once, not on every poll."""
    app.commit(base_tree())
    assert app.sync().result == "synced"
    app.commit({"ns.yaml": NAMESPACE, "bad.yaml": "kind: ConfigMap\n"})
    for _ in range(3):
        result = app.sync()
        assert result.result == "failed"
        assert result.refused
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    failures = [h for h in state.history if h.result == "failed"]
    assert len(failures) == 1
    assert "bad.yaml" in failures[0].reason
