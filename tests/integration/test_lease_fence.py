"""The leader's write fence, in process, against the real cluster through a freezable relay."""

from __future__ import annotations

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
