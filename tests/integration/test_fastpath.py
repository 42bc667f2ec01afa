"""The sync fast path on the controller's informers: a warm no-op round reads nothing from
the API, while creates, takeovers, prunes and state written by someone else are still
confirmed against it. The informers run on their own client, so the sync's calls are
counted apart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gitsync.engine import statestore
from gitsync.engine.plan import CONFIRM_GETS
from gitsync.engine.sync import Context, sync_app
from gitsync.informers.hub import HPA, Informers
from gitsync.informers.informer import InformerSettings
from gitsync.kube import Kube
from gitsync.model import APP_LABEL, KubeObject, ObjectRef
from tests.support.app_fixtures import App, ref
from tests.support.cluster_fixtures import wait_until
from tests.support.manifests import NAMESPACE, config_maps, deployment
from tests.support.repos import BareRepo

pytestmark = [pytest.mark.cluster, pytest.mark.git]

FAST = InformerSettings(watch_timeout=30, retry_max=0.5, missing_kind_retry=1.0)
WRITES = ("apply", "create", "update", "delete", "patch", "state")
READS = ("list", "get", "dry-run")
NAMESPACES = ("", "Namespace")
CONFIGMAPS = ("", "ConfigMap")
DEPLOYMENTS = ("apps", "Deployment")


@pytest.fixture
def hub(kubeconfig: Path) -> Iterator[Informers]:
    """The controller's informers, on a client of their own."""
    informers = Informers(Kube.connect(kubeconfig=kubeconfig), settings=FAST)
    yield informers
    informers.stop()


@pytest.fixture
def cached(app: App, hub: Informers) -> App:
    """``app``, synced with the informers, as the controller does."""
    app.ctx = replace(app.ctx, informers=hub)
    return app


def _rv(obj: KubeObject) -> str:
    return str(obj["metadata"]["resourceVersion"])


def _calls(kube: Kube, verbs: tuple[str, ...]) -> dict[str, int]:
    return {v: kube.calls[v] for v in verbs if kube.calls[v]}


def warm(hub: Informers, apps: list[App], kinds: list[tuple[str, str]]) -> None:
    """Wait until the informers hold what the API holds: each app's objects of ``kinds``
    at their resourceVersions, and each app's state head."""
    api = hub.kube

    def same() -> bool:
        for a in apps:
            for group, kind in kinds:
                informer = hub.managed(group, kind)
                res = api.discover().preferred[(group, kind)]
                listed, _ = api.list_objects(res, label_selector=f"{APP_LABEL}={a.name}")
                want = {ObjectRef.of(o).identity(): _rv(o) for o in listed}
                store = informer.store
                have = {i: store.memo(i, "rv", _rv) for i in store.idents(label=a.name)}
                if not informer.synced or want != have:
                    return False
            namespace = a.ctx.state_namespace
            heads = hub.state_heads(namespace)
            chunks = hub.state_chunks(namespace)
            head = api.get(ref("Secret", statestore.head_name(a.name), namespace))
            if head is None or not (heads.synced and chunks.synced):
                return False
            if heads.store.memo(ObjectRef.of(head).identity(), "rv", _rv) != _rv(head):
                return False
        return True

    wait_until(same, timeout=60, what="the informers hold what the API holds")


def test_noop_resync_with_warm_informers_reads_and_writes_nothing(
    cached: App, kube: Kube, hub: Informers
) -> None:
    """A no-op resync with warm informers makes no LIST, GET, dry-run or write at all."""
    app = cached
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cm", 5), "web.yaml": deployment()})
    assert app.sync().result == "synced"
    warm(hub, [app], [NAMESPACES, CONFIGMAPS, DEPLOYMENTS])
    kube.calls.clear()
    result = app.sync()
    assert result.result == "unchanged", result.error
    assert result.counts["unchanged"] == 7
    assert _calls(kube, READS + WRITES) == {}, dict(kube.calls)


def test_five_apps_noop_round_costs_no_calls_once_warm(
    cached: App, kube: Kube, hub: Informers, make_repo: Callable[..., BareRepo], tmp_path: Path
) -> None:
    """Five apps sharing the informers: a warm no-op round over all of them makes no
    LIST, GET, dry-run or write (only discovery, which rendering refreshes)."""
    apps = [cached]
    for i in range(1, 5):
        name = f"{cached.name}-{i}"
        ctx = replace(cached.ctx, cache_dir=tmp_path / f"cache-{i}")
        apps.append(App(name=name, ns=cached.ns, repo=make_repo(name), ctx=ctx))
    cached.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("a0", 4)})
    for i, a in enumerate(apps[1:], start=1):
        a.commit({"cm.yaml": config_maps(f"a{i}", 4)})
    assert [a.sync().result for a in apps] == ["synced"] * 5
    warm(hub, apps, [NAMESPACES, CONFIGMAPS])
    kube.calls.clear()
    results = [a.sync() for a in apps]
    assert [r.result for r in results] == ["unchanged"] * 5, [r.error for r in results]
    assert _calls(kube, READS + WRITES) == {}, dict(kube.calls)
    assert hub.stats()["relists"] == 0


def test_a_frozen_cache_still_refuses_another_apps_object_changes_and_prunes(
    cached: App, neighbour: App, kube: Kube, hub: Informers
) -> None:
    """With informers that stopped seeing anything, a sync still refuses to take an
    object another app created since, still applies a change and still prunes."""
    app = cached
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cm", 2)})
    assert app.sync().result == "synced"
    warm(hub, [app], [NAMESPACES, CONFIGMAPS])
    namespace = app.ctx.state_namespace
    frozen = [hub.managed(*NAMESPACES), hub.managed(*CONFIGMAPS)]
    frozen += [hub.state_heads(namespace)]
    frozen += [hub.state_chunks(namespace)]
    for informer in frozen:  # their caches stay synced, and fall behind from now on
        informer.stop()
        informer.join(10)
    neighbour.commit({"shared.yaml": config_maps("shared", 1, value="from-b")})
    assert neighbour.sync().result == "synced"

    app.commit(
        {"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cm", 2), "s.yaml": config_maps("shared", 1)}
    )
    taken = app.sync()
    assert taken.result == "failed"
    assert f"managed by gitsync app {neighbour.name!r}" in taken.error
    shared = kube.get(ref("ConfigMap", "shared-0", app.ns))
    assert shared is not None
    assert shared["data"] == {"key": "from-b"}
    assert shared["metadata"]["labels"][APP_LABEL] == neighbour.name

    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cm", 1, value="changed")})
    result = app.sync()
    assert result.result == "synced", result.error
    assert result.counts["update"] == 1
    kept = kube.get(ref("ConfigMap", "cm-0", app.ns))
    assert kept is not None
    assert kept["data"] == {"key": "changed"}
    assert kube.get(ref("ConfigMap", "cm-1", app.ns)) is None, "cm-1 was not pruned"
    assert kube.get(ref("ConfigMap", "shared-0", app.ns)) is not None


def test_state_written_by_another_client_is_read_from_the_api(
    cached: App, kube: Kube, hub: Informers, kubeconfig: Path, tmp_path: Path
) -> None:
    """After a one-shot sync from another client wrote the state, the next informer-backed
    sync reads it from the API (it knows the new object), not the older cached one."""
    app = cached
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cm", 2)})
    assert app.sync().result == "synced"
    warm(hub, [app], [NAMESPACES, CONFIGMAPS])
    kube.calls.clear()
    assert app.sync().result == "unchanged"
    assert _calls(kube, ("get", "list")) == {}, "the warm resync should read no state"

    once = Context(
        kube=Kube.connect(kubeconfig=kubeconfig),
        cache_dir=tmp_path / "cache-once",
        state_namespace=app.ctx.state_namespace,
    )
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cm", 3)})
    assert sync_app(app.config(), once).result == "synced"
    warm(hub, [app], [NAMESPACES, CONFIGMAPS])

    kube.calls.clear()
    result = app.sync()
    assert result.result == "unchanged", result.error
    assert result.counts["unchanged"] == 4
    assert kube.calls["get"] >= 1, "the state head was not read from the API"
    # Read from the cache, the old state would lack cm-2's fingerprint: a dry-run.
    assert _calls(kube, ("dry-run", *WRITES)) == {}, dict(kube.calls)
    kube.calls.clear()
    assert app.sync().result == "unchanged"
    assert _calls(kube, READS + WRITES) == {}, "known again: the state comes from the cache"


def test_many_objects_to_confirm_fall_back_to_one_list_per_kind(
    cached: App, kube: Kube, hub: Informers
) -> None:
    """More than CONFIRM_GETS objects the cache cannot call unchanged are read with a
    labelled LIST of their kind, not one GET each, and still synced right."""
    app = cached
    for kind in (NAMESPACES, CONFIGMAPS):
        assert hub.managed(*kind).wait_synced(30)
    assert hub.everything(*HPA).wait_synced(30)  # the dry-runs ask about HPAs
    count = CONFIRM_GETS + 6
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cm", count)})
    kube.calls.clear()
    first = app.sync()
    assert first.result == "synced", first.error
    assert first.counts["create"] == count + 1
    # Namespaces and ConfigMaps once each, and the state's first write looks for orphans.
    assert kube.calls["list"] == 3, dict(kube.calls)
    warm(hub, [app], [NAMESPACES, CONFIGMAPS])
    app.commit({"ns.yaml": NAMESPACE, "cm.yaml": config_maps("cm", count, value="two")})
    kube.calls.clear()
    second = app.sync()
    assert second.result == "synced", second.error
    assert second.counts["update"] == count
    assert second.counts["unchanged"] == 1
    assert kube.calls["list"] == 1, dict(kube.calls)  # ConfigMaps only: the Namespace is cached
    live = kube.get(ref("ConfigMap", f"cm-{count - 1}", app.ns))
    assert live is not None
    assert live["data"] == {"key": "two"}
