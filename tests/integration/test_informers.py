"""The shared informer layer against the real API server: one watch per kind for every
app, index lookups, a relist on 410 Gone, and a reconnect after an API server restart."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator

import pytest

from gitsync.informers.hub import Informers
from gitsync.informers.informer import InformerSettings
from gitsync.informers.store import Change
from gitsync.kube import Kube
from gitsync.model import APP_LABEL
from tests.support.cluster_fixtures import ClusterHandle, Kubectl, wait_until

FAST = InformerSettings(watch_timeout=30, retry_max=0.5, missing_kind_retry=1.0)


@pytest.fixture
def hub(kube: Kube) -> Iterator[Informers]:
    informers = Informers(kube, settings=FAST)
    yield informers
    informers.stop()


def configmap(kubectl: Kubectl, ns: str, name: str, app: str = "", **data: str) -> None:
    labels = {APP_LABEL: app} if app else {}
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "data": data,
    }
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))


def test_two_apps_on_one_kind_share_one_list_and_one_watch(
    hub: Informers, kube: Kube, kubectl: Kubectl, namespace: str
) -> None:
    """Two apps' lookups on ConfigMaps are one informer: one LIST, one WATCH, by-app index."""
    a, b = f"a-{secrets.token_hex(3)}", f"b-{secrets.token_hex(3)}"
    configmap(kubectl, namespace, "one", a, k="1")
    configmap(kubectl, namespace, "two", b, k="2")
    configmap(kubectl, namespace, "plain", k="3")  # no app label: not cached at all
    before = kube.calls.copy()
    first, second = hub.managed("", "ConfigMap"), hub.managed("", "ConfigMap")
    assert first is second
    assert first.wait_synced(30)
    seen_by_a: list[Change] = []
    first.subscribe(seen_by_a.append, label=a)
    assert [o["metadata"]["name"] for o in first.store.objects(label=a)] == ["one"]
    assert [o["metadata"]["name"] for o in first.store.objects(label=b)] == ["two"]
    assert all(o["metadata"]["name"] != "plain" for o in first.store.objects(namespace=namespace))
    configmap(kubectl, namespace, "two", b, k="changed")
    configmap(kubectl, namespace, "one", a, k="changed")
    wait_until(lambda: seen_by_a, timeout=30, what="a's change reaches a's subscriber")
    assert {c.ident[3] for c in seen_by_a} == {"one"}  # b's change went to b only
    assert seen_by_a[0].old() is not None
    assert seen_by_a[0].old()["data"]["k"] == "1"  # type: ignore[index]
    calls = kube.calls - before
    assert calls["list"] == 1, calls
    assert calls["watch"] == 1, calls


def test_an_app_label_moving_away_is_seen_by_the_app_it_left(
    hub: Informers, kubectl: Kubectl, namespace: str
) -> None:
    """Relabelled to another app: the old app's subscriber hears of it, the index moves."""
    a, b = f"a-{secrets.token_hex(3)}", f"b-{secrets.token_hex(3)}"
    configmap(kubectl, namespace, "moving", a)
    informer = hub.managed("", "ConfigMap")
    assert informer.wait_synced(30)
    heard: list[Change] = []
    informer.subscribe(heard.append, label=a)
    configmap(kubectl, namespace, "moving", b)
    wait_until(lambda: heard, timeout=30, what="the move is heard by the app it left")
    assert informer.store.idents(label=a) == []
    wait_until(
        lambda: informer.store.idents(label=b), timeout=30, what="the object indexed under b"
    )


def test_the_informer_reconnects_after_an_api_server_restart(
    cluster: ClusterHandle, kube: Kube, kubectl: Kubectl, namespace: str
) -> None:
    """kube-apiserver restarts: its new watch cache starts past the informer's version, so
    the watch answers 410 Gone and the informer relists; what changed meanwhile arrives."""
    if cluster.dev is None:
        pytest.skip("needs the cluster this run started (restarts its processes)")
    app = f"r-{secrets.token_hex(3)}"
    configmap(kubectl, namespace, "before", app)
    configmap(kubectl, namespace, "doomed", app)
    hub = Informers(kube, settings=FAST)
    try:
        informer = hub.managed("", "ConfigMap")
        assert informer.wait_synced(30)
        deleted = threading.Event()

        def on_change(change: Change) -> None:
            if change.type == "DELETED" and change.ident[3] == "doomed":
                deleted.set()

        informer.subscribe(on_change, label=app)
        watches, relists = informer.watches, informer.relists
        configmap(kubectl, namespace, "unwatched")  # moves the revision past the informer's
        cluster.dev.restart_apiserver()
        configmap(kubectl, namespace, "after", app)
        kubectl("delete", "configmap", "-n", namespace, "doomed")
        wait_until(
            lambda: informer.store.has(("", "ConfigMap", namespace, "after")),
            timeout=60,
            what="an object created after the restart",
        )
        assert deleted.wait(60), "the delete after the restart never reached the subscriber"
        assert informer.watches > watches
        assert informer.relists > relists, "a watch from before the restart was not refused"
        names = sorted(o["metadata"]["name"] for o in informer.store.objects(label=app))
        assert names == ["after", "before"]
    finally:
        hub.stop()


def test_pods_are_found_by_owner_without_listing_a_namespace(
    hub: Informers, kube: Kube, kubectl: Kubectl, namespace: str
) -> None:
    """Deployment → ReplicaSet → Pods by owner uid, from two cluster-wide informers."""
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
            },
        },
    }
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))
    uid = kubectl("get", "deploy", "-n", namespace, "web", "-o", "jsonpath={.metadata.uid}").stdout
    replicasets, pods = hub.everything("apps", "ReplicaSet"), hub.everything("", "Pod")
    assert hub.wait_synced([replicasets, pods], 30)
    rs = wait_until(lambda: replicasets.store.objects(owner=uid), timeout=60, what="the ReplicaSet")
    rs_uid = rs[0]["metadata"]["uid"]
    owned = wait_until(
        lambda: len(pods.store.objects(owner=rs_uid)) == 2 and pods.store.objects(owner=rs_uid),
        timeout=60,
        what="both Pods by their owner",
    )
    assert {p["metadata"]["namespace"] for p in owned} == {namespace}


def test_a_kind_served_after_the_informer_started_is_found_when_asked_for(
    kube: Kube, kubectl: Kubectl, namespace: str
) -> None:
    """A CRD applied after its informer gave up: the next ask looks again at once, not
    after ``missing_kind_retry``."""
    group = f"{namespace}.informers.test"
    hub = Informers(kube, settings=InformerSettings(missing_kind_retry=600))
    try:
        informer = hub.managed(group, "Gadget")
        assert informer.wait_synced(30)
        assert len(informer.store) == 0
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"gadgets.{group}"},
            "spec": {
                "group": group,
                "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget"},
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
        kubectl("apply", "--server-side", "-f", "-", input=json.dumps(crd))
        kubectl("wait", "--for=condition=Established", f"crd/gadgets.{group}", "--timeout=60s")
        gadget = {
            "apiVersion": f"{group}/v1",
            "kind": "Gadget",
            "metadata": {"name": "g", "namespace": namespace, "labels": {APP_LABEL: "x"}},
        }
        wait_until(
            lambda: (
                kubectl(
                    "apply", "--server-side", "-f", "-", input=json.dumps(gadget), check=False
                ).returncode
                == 0
            ),
            timeout=30,
            what="the Gadget created",
        )
        found = wait_until(
            lambda: hub.managed(group, "Gadget").store.has((group, "Gadget", namespace, "g")),
            timeout=30,
            what="the new kind listed on demand",
        )
        assert found
    finally:
        hub.stop()
        kubectl("delete", "crd", f"gadgets.{group}", "--wait=false", check=False)
