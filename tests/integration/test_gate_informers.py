"""The health gate on the controller's informers: the verdicts of its own watches, without
a single request of its own, and one Pod watch shared by gates running side by side."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitsync.health.gate import Verdict, wait_healthy
from gitsync.informers.hub import Informers
from gitsync.informers.informer import Informer, InformerSettings
from gitsync.kube import Kube
from gitsync.model import APP_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, KubeObject, field_manager
from tests.support.cluster_fixtures import wait_until

# The default 300 s watch: a test that counts watches must not see one renewed.
FAST = InformerSettings(retry_max=0.5, missing_kind_retry=1.0)
APP = "gate-informers"


@pytest.fixture
def hub(kubeconfig: Path) -> Iterator[Informers]:
    """Informers on a client of their own, so the gate's client counts only the gate."""
    informers = Informers(Kube.connect(kubeconfig=kubeconfig), settings=FAST)
    yield informers
    informers.stop()


def _labels() -> dict[str, str]:
    return {APP_LABEL: APP, MANAGED_BY_LABEL: MANAGED_BY_VALUE}


def _deployment(ns: str, name: str, behavior: str = "") -> KubeObject:
    pod_labels = {"app": name} | ({"gitsync.test/behavior": behavior} if behavior else {})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": _labels()},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
            },
        },
    }


def _config_map(ns: str, name: str) -> KubeObject:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": _labels()},
        "data": {"key": "value"},
    }


def _apply(kube: Kube, *objs: KubeObject) -> list[KubeObject]:
    """The apply responses, as the sync hands them to the gate."""
    return [kube.apply(o, manager=field_manager(APP)) for o in objs]


def _subscribers(informer: Informer) -> int:
    return sum(len(subs) for subs in informer._subscribers.values())


def _in_thread(run: Callable[[], Verdict]) -> Callable[[], Verdict]:
    """Start ``run`` now; the returned call joins it and gives its verdict."""
    out: list[Verdict] = []
    thread = threading.Thread(target=lambda: out.append(run()), daemon=True)
    thread.start()

    def join() -> Verdict:
        thread.join(120)
        assert out, "the gate did not return"
        return out[0]

    return join


@pytest.mark.parametrize(
    "case", [("", True, ""), ("crashloop", False, "CrashLoopBackOff")], ids=["healthy", "crash"]
)
def test_informed_gate_matches_its_watches_with_no_request_of_its_own(
    hub: Informers, kubeconfig: Path, kube: Kube, namespace: str, case: tuple[str, bool, str]
) -> None:
    """A rollout that becomes healthy, and one whose Pods crash-loop: the gate on the
    informers reaches the verdict its own watches reach, and sends nothing itself."""
    behavior, healthy, reason = case
    cached_set = _apply(
        kube, _config_map(namespace, "cfg-a"), _deployment(namespace, "web-a", behavior)
    )
    watched_set = _apply(
        kube, _config_map(namespace, "cfg-b"), _deployment(namespace, "web-b", behavior)
    )
    on_cache, on_watches = Kube.connect(kubeconfig=kubeconfig), Kube.connect(kubeconfig=kubeconfig)
    cached = _in_thread(lambda: wait_healthy(on_cache, cached_set, timeout=90, informers=hub))
    watched = wait_healthy(on_watches, watched_set, timeout=90)
    informed = cached()

    assert (informed.healthy, watched.healthy) == (healthy, healthy), (informed, watched)
    assert not informed.timed_out, informed.reason
    assert [f.ref.kind for f in informed.failed] == [f.ref.kind for f in watched.failed]
    assert reason in informed.reason
    assert reason in watched.reason
    assert on_cache.calls == {}, on_cache.calls  # no LIST, no WATCH, nothing at all
    assert on_watches.calls["list"], on_watches.calls
    assert on_watches.calls["watch"], on_watches.calls
    assert all(_subscribers(i) == 0 for i in hub._informers.values())


def test_two_gates_side_by_side_share_one_pod_watch(
    hub: Informers, kubeconfig: Path, kube: Kube, namespace_factory: Callable[[], str]
) -> None:
    """Two gates over two namespaces at once: one Pod informer, one Pod watch, for both."""
    sets = [_apply(kube, _deployment(namespace_factory(), "web")) for _ in range(2)]
    gates = [Kube.connect(kubeconfig=kubeconfig) for _ in sets]
    joins = [
        _in_thread(lambda k=k, s=s: wait_healthy(k, s, timeout=90, informers=hub))  # type: ignore[misc]
        for k, s in zip(gates, sets, strict=True)
    ]
    verdicts = [join() for join in joins]

    assert all(v.healthy for v in verdicts), verdicts
    pods = hub.everything("", "Pod")
    assert (pods.lists, pods.watches) == (1, 1)
    assert hub.stats()["informers"] == 3  # Deployments (managed), ReplicaSets, Pods
    assert hub.kube.calls["watch"] == 3, hub.kube.calls
    assert all(g.calls == {} for g in gates), [g.calls for g in gates]


def test_interrupted_gate_lets_go_of_its_subscriptions(
    hub: Informers, kubeconfig: Path, kube: Kube, namespace: str
) -> None:
    """Cancelled while a rollout never becomes Ready: interrupted, and unsubscribed."""
    objects = _apply(kube, _deployment(namespace, "web", "never-ready"))
    cancel = threading.Event()
    gate = Kube.connect(kubeconfig=kubeconfig)
    joined = _in_thread(
        lambda: wait_healthy(gate, objects, timeout=90, cancel=cancel, informers=hub)
    )
    pods = hub.everything("", "Pod")
    wait_until(lambda: _subscribers(pods) == 1, timeout=30, what="the gate subscribed to Pods")
    cancel.set()
    verdict = joined()

    assert verdict.interrupted, verdict
    assert not verdict.healthy
    assert all(_subscribers(i) == 0 for i in hub._informers.values())
    assert gate.calls == {}, gate.calls
