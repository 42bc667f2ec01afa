"""The steady state: with the controller's informers, a poll of an unchanged commit on an
unchanged cluster makes no API call and renders nothing; any change takes the full path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from gitsync.engine.steady import SteadyMemo
from gitsync.engine.sync import Context, SyncResult, sync_app
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from tests.support.app_fixtures import App, ref
from tests.support.cluster_fixtures import Kubectl, wait_until
from tests.support.manifests import NAMESPACE, config_maps, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.git]

FILES = {"ns.yaml": NAMESPACE, "cms.yaml": config_maps("cm", 5), "web.yaml": deployment()}


@pytest.fixture
def controller_ctx(app: App, kubeconfig: Path) -> Iterator[Context]:
    """The app's context as the controller builds it; informers on their own client, so
    ``ctx.kube.calls`` counts the sync's own requests only."""
    hub = Informers(Kube.connect(kubeconfig=kubeconfig))
    yield replace(app.ctx, informers=hub, steady=SteadyMemo())
    hub.stop()


def sync(app: App, ctx: Context, **extra: object) -> tuple[SyncResult, list[dict[str, object]]]:
    with structlog.testing.capture_logs() as logs:
        result = sync_app(app.config(**extra), ctx)
    return result, logs


def steady_poll(app: App, ctx: Context, **extra: object) -> SyncResult:
    """Poll until one is answered from the caches (the first after a write may still
    find the state head a version behind in its informer and take the full path)."""

    def poll() -> SyncResult | None:
        ctx.kube.calls.clear()
        result, logs = sync(app, ctx, **extra)
        assert result.result == "unchanged", result.error
        done = [e for e in logs if e["event"] == "sync.done"]
        return result if done and done[0].get("steady") else None

    return wait_until(poll, timeout=30, what="a poll answered from the watch caches")


def test_an_unchanged_poll_makes_no_api_call_and_renders_nothing(
    app: App, controller_ctx: Context
) -> None:
    """Steady: 0 requests, no render, the same result as the full path would give."""
    app.commit(FILES)
    first, _ = sync(app, controller_ctx)
    assert first.result == "synced", first.error
    result = steady_poll(app, controller_ctx)
    assert result.counts == {"unchanged": 7}
    assert sum(controller_ctx.kube.calls.values()) == 0, controller_ctx.kube.calls
    _, logs = sync(app, controller_ctx)
    events = [e["event"] for e in logs]
    assert "render.lint" not in events  # nothing rendered
    assert events == ["sync.started", "sync.done"]


def test_a_change_in_the_cluster_takes_the_full_path_and_is_repaired(
    app: App, controller_ctx: Context, kubectl: Kubectl
) -> None:
    """An edited field, a deleted object: the next poll plans, re-applies, recreates."""
    app.commit(FILES)
    assert sync(app, controller_ctx)[0].result == "synced"
    steady_poll(app, controller_ctx)
    kubectl("patch", "configmap", "cm-1", "-n", app.ns, "-p", '{"data":{"key":"edited"}}')
    kubectl("delete", "configmap", "cm-2", "-n", app.ns)

    def repaired() -> bool:
        result, _ = sync(app, controller_ctx)
        return result.result == "synced"

    wait_until(repaired, timeout=30, what="the edit and the delete seen by a poll")
    live = controller_ctx.kube.get(ref("ConfigMap", "cm-1", app.ns))
    assert live is not None
    assert live["data"]["key"] != "edited"
    assert controller_ctx.kube.get(ref("ConfigMap", "cm-2", app.ns)) is not None
    steady_poll(app, controller_ctx)


def test_a_state_written_elsewhere_a_new_config_or_force_take_the_full_path(
    app: App, controller_ctx: Context, kubectl: Kubectl
) -> None:
    """Someone else's sync (a `sync --once` beside the controller) rewrote the state: the
    memo's state version no longer holds. A changed config and ``force`` do not trust it."""
    app.commit(FILES)
    assert sync(app, controller_ctx)[0].result == "synced"
    steady_poll(app, controller_ctx)
    # Another process repairs an edit and writes the state: the object is as before, the
    # state head is not.
    kubectl("patch", "configmap", "cm-1", "-n", app.ns, "-p", '{"data":{"key":"edited"}}')
    assert sync_app(app.config(), app.ctx).result == "synced"
    controller_ctx.kube.calls.clear()
    result, logs = sync(app, controller_ctx)
    assert result.result == "unchanged"
    assert not [e for e in logs if e.get("steady")]
    assert "sync.planned" in [e["event"] for e in logs]  # rendered and planned
    steady_poll(app, controller_ctx)
    # A new ignore rule changes what the plan sends: not steady until a full sync with it.
    rule = {"ignore": [{"kind": "ConfigMap", "name": "*", "jsonPointer": "/data/other"}]}
    _, logs = sync(app, controller_ctx, **rule)
    assert not [e for e in logs if e.get("steady")]
    steady_poll(app, controller_ctx, **rule)
    with structlog.testing.capture_logs() as logs:
        forced = sync_app(app.config(**rule), controller_ctx, force=True)
    assert forced.result == "unchanged"
    assert "sync.planned" in [e["event"] for e in logs]
