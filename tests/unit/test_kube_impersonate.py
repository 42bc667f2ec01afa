"""An impersonating client shares the write fence and discovery, and sends its identity."""

from __future__ import annotations

import pytest
import urllib3

from gitsync.errors import KubeError
from gitsync.kube import Discovery, Kube


def _kube() -> Kube:
    # Nothing listens here: any request that got past the fence would fail to connect.
    return Kube(host="https://127.0.0.1:1", pool=urllib3.PoolManager(), auth=dict, retry_budget=0)


def test_impersonation_headers_repeat_each_group() -> None:
    """Impersonate-User once, Impersonate-Group once per group, never comma-joined."""
    imp = _kube().impersonate("system:serviceaccount:shop:deployer", ["g1", "g2"])
    headers = imp._headers("application/json")
    assert headers.getlist("Impersonate-User") == ["system:serviceaccount:shop:deployer"]
    assert headers.getlist("Impersonate-Group") == ["g1", "g2"]
    assert "Impersonate-User" not in _kube()._headers("application/json")


def test_write_fence_set_later_on_the_root_stops_impersonated_writes() -> None:
    """The leader's fence, set after the app client was made, still applies to it."""
    root = _kube()
    imp = root.impersonate("system:serviceaccount:shop:deployer", label="ServiceAccount shop/x")
    scoped = imp.scoped({"shop"})
    root.set_write_fence(lambda: "the Lease is lost")
    for client in (imp, scoped):
        with pytest.raises(
            KubeError, match="as ServiceAccount shop/x: not sent: the Lease is lost"
        ):
            client.request("POST", "/api/v1/namespaces/shop/configmaps", verb="create", body={})
    assert root.calls["create"] == 0


def test_discovery_cache_is_shared() -> None:
    """Discovery cached by the root answers the impersonating client (no extra calls)."""
    root = _kube()
    root._discovery = Discovery({}, {})
    imp = root.impersonate("system:serviceaccount:shop:deployer").scoped({"shop"})
    assert imp.discover() is root._discovery
