"""The leader's write fence, in process, against the real cluster (a freezable relay, a stolen
shard Lease)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from gitsync import log
from gitsync.errors import KubeError
from gitsync.kube import Kube
from gitsync.runtime.leader import LeaderElector, LeaseSpec
from gitsync.runtime.shards import ShardSet
from tests.support.cluster_fixtures import Kubectl, wait_until
from tests.support.tcp_proxy import TcpProxy, kubeconfig_via

pytestmark = [pytest.mark.cluster]


def configmap(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": {"v": "1"},
    }


def test_once_renew_deadline_passes_writes_are_refused_unsent_and_on_lost_runs(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """API frozen: within renewDeadline of the last renewal on_lost runs, and every later
    write is refused before it is sent."""
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    target = urlparse(server)
    assert target.hostname is not None
    assert target.port is not None
    proxy = TcpProxy((target.hostname, target.port))
    stop = threading.Event()
    try:
        kube = Kube.connect(kubeconfig=kubeconfig_via(proxy, kubeconfig, tmp_path / "kc"))
        started, lost = threading.Event(), threading.Event()
        spec = LeaseSpec(
            namespace=namespace,
            name="fence",
            identity="fenced-replica",
            lease_duration=4.0,
            renew_deadline=3.0,
            retry_period=0.5,
        )
        elector = LeaderElector(
            kube.dedicated(timeout=spec.renew_deadline),
            spec,
            on_started=started.set,
            on_lost=lost.set,
            logger=log.get(component="test"),
        )
        kube.set_write_fence(elector.write_fence)
        assert elector.write_fence() == "not the leader"
        threading.Thread(target=elector.run, args=(stop,), daemon=True).start()
        assert started.wait(10), "never became leader"
        assert elector.write_fence() == ""
        kube.create(configmap("before", namespace))

        proxy.freeze()
        frozen = time.monotonic()
        assert lost.wait(10), "on_lost never ran"
        took = time.monotonic() - frozen
        print(f"on_lost {took:.2f}s after the freeze (renewDeadline 3 s)")
        assert took <= spec.renew_deadline + 0.5
        assert elector.write_fence() != ""
        before = kube.calls["create"]
        with pytest.raises(KubeError, match="not sent") as caught:
            kube.create(configmap("after", namespace))
        assert caught.value.transient
        assert not caught.value.permanent
        assert kube.calls["create"] == before, "a fenced write must not even be attempted"
    finally:
        stop.set()
        proxy.close()


def test_a_sharded_replica_stops_writing_when_any_one_shard_is_lost(
    kubeconfig: Path, namespace: str, kubectl: Kubectl
) -> None:
    """Two shards held by one replica; another holder takes shard 1: on_lost(1) runs and
    every write is refused unsent, though shard 0 is still renewed."""
    kube = Kube.connect(kubeconfig=kubeconfig)
    stop = threading.Event()
    started: set[int] = set()
    lost = threading.Event()
    shard_set = ShardSet(
        kube.dedicated(timeout=3.0, pool_size=4),
        base=LeaseSpec(
            namespace=namespace,
            name="fence",
            identity="sharded-replica",
            lease_duration=4.0,
            renew_deadline=3.0,
            retry_period=0.5,
        ),
        shards=2,
        on_started=started.add,
        on_lost=lambda shard: lost.set() if shard == 1 else None,
        logger=log.get(component="test"),
    )
    kube.set_write_fence(shard_set.write_fence)
    assert shard_set.write_fence() == "holds no shard"
    try:
        shard_set.start(stop)
        wait_until(lambda: started == {0, 1}, timeout=20, what="both shards held")
        assert shard_set.write_fence() == ""
        kube.create(configmap("before", namespace))

        patch = {"spec": {"holderIdentity": "intruder", "renewTime": None}}
        kubectl(
            "patch", "lease", "fence-1", "-n", namespace, "--type=merge", "-p", json.dumps(patch)
        )  # fmt: skip
        taken = time.monotonic()
        assert lost.wait(10), "on_lost(1) never ran"
        took = time.monotonic() - taken
        print(f"shard 1 lost {took:.2f}s after another holder took it (renewDeadline 3 s)")
        assert took <= 3.0 + 0.5
        assert shard_set.held() == frozenset({0}), "shard 0 is still held and renewed"
        assert shard_set.write_fence() == "shard 1: Lease lost"
        before = kube.calls["create"]
        with pytest.raises(KubeError, match="not sent: shard 1: Lease lost"):
            kube.create(configmap("after", namespace))
        assert kube.calls["create"] == before, "a fenced write must not even be attempted"
    finally:
        stop.set()
        shard_set.stop()
