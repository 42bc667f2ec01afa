"""End-to-end tests on the dev cluster's real node (kubelet + containerd), run by `make e2e`.

Here ``cluster`` (and so ``kubectl``, ``k8s_api``, ``namespace``) is a dev cluster with one
real node beside the KWOK nodes. On a machine where a real node cannot start (not root, no
containerd, no kubelet built) every test here is skipped with the reason, unless
$GITSYNC_REQUIRE_REALNODE is set: `make e2e` sets it, so there they fail instead.

At teardown the fixture checks that `stop()` left nothing behind: no bridge, cgroup,
mount, network namespace or process of the node.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitsync.devcluster import ClusterConfig, DevCluster, DevClusterError, realnode, resolve_bin_dir
from tests.support.cluster_fixtures import ClusterHandle

REQUIRE_ENV = "GITSYNC_REQUIRE_REALNODE"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here needs the real node."""
    for item in items:
        if "tests/e2e/" in item.nodeid:
            item.add_marker(pytest.mark.realnode)


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"the real node is required (${REQUIRE_ENV}) but cannot start: {reason}")
    pytest.skip(f"no real node on this machine: {reason}")


@pytest.fixture(scope="session")
def real_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """A dev cluster with one real node, for the whole run; everything it made goes at the end."""
    try:
        bin_dir = resolve_bin_dir()
    except DevClusterError as e:
        _unavailable(str(e))
    problems = realnode.host_problems(bin_dir / "kubelet")
    if problems:
        _unavailable("; ".join(problems))
    began = time.monotonic()
    work_dir = tmp_path_factory.mktemp("realnode-cluster")
    dev = DevCluster(
        ClusterConfig(work_dir=work_dir, bin_dir=bin_dir, real_node=True, die_with_parent=True)
    )
    with dev:
        yield ClusterHandle(
            kubeconfig=dev.kubeconfig,
            bin_dir=bin_dir,
            dev=dev,
            start_seconds=time.monotonic() - began,
        )
        layout = dev.node
    assert layout is not None
    leftovers = leftovers_of(layout)
    assert not leftovers, f"devcluster stop() left these behind: {leftovers}"


@pytest.fixture(scope="session")
def cluster(real_node_cluster: ClusterHandle) -> ClusterHandle:
    """In tests/e2e the shared cluster fixtures talk to the real-node cluster."""
    return real_node_cluster


def leftovers_of(layout: realnode.NodeLayout) -> list[str]:
    """What of the node is still on the machine after stop()."""
    found = []
    links = realnode._run(["ip", "-o", "link", "show"])
    if f" {layout.bridge}:" in links or f" {layout.bridge}@" in links:
        found.append(f"bridge {layout.bridge}")
    for hierarchy in realnode.cgroup_hierarchies():
        if (hierarchy / layout.cgroup_root.lstrip("/")).exists():
            found.append(f"cgroup {hierarchy / layout.cgroup_root.lstrip('/')}")
    prefixes = (str(layout.work), str(layout.run))
    found += [f"mount {m}" for m in realnode._mount_points() if m.startswith(prefixes)]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(layout.socket).encode() in cmdline or str(layout.work).encode() in cmdline:
                found.append(f"process {proc.name}: {cmdline[:120]!r}")
    if layout.work.exists() or layout.run.exists():
        found.append(f"directory {layout.work} or {layout.run}")
    return found
