"""The real local Kubernetes control plane as pytest fixtures (a plugin, see tests/conftest.py).

    cluster      session: a DevCluster started once per run (``ClusterHandle``), or the one
                 whose kubeconfig is in $GITSYNC_TEST_KUBECONFIG (then ``cluster.dev`` is None);
                 a DevCluster keeps an audit log of ConfigMap and Secret writes
    kubeconfig   session: path of the admin kubeconfig
    kubectl      session: ``kubectl("get", "pods", "-n", ns)`` -> CompletedProcess[str];
                 raises ``KubectlError`` (with stderr) on failure unless ``check=False``
    k8s_api      session: a ``kubernetes.client.ApiClient`` for the cluster
    namespace    function: a fresh namespace, deleted (without waiting) at teardown
    namespace_factory  function: ``make_namespace()`` for tests that need more than one

Tests that use any of these are marked ``cluster`` automatically; waits use ``wait_until``
(short polling against a deadline), never fixed sleeps.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from gitsync.devcluster import ClusterConfig, DevCluster, resolve_bin_dir

KUBECONFIG_ENV = "GITSYNC_TEST_KUBECONFIG"
CLUSTER_FIXTURES = frozenset(
    {"cluster", "kubeconfig", "kubectl", "k8s_api", "namespace", "namespace_factory"}
)
T = TypeVar("T")
# The apiserver logs who wrote ConfigMaps and Secrets (metadata only, never their data),
# so a test can audit writers by User-Agent (``cluster.dev.audit_log``); nothing else.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete]
    resources: [{group: "", resources: [configmaps, secrets]}]
  - level: None
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterHandle:
    """The cluster under test; ``dev`` is None when it was started outside this run."""

    kubeconfig: Path
    bin_dir: Path
    dev: DevCluster | None
    start_seconds: float

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"


class KubectlError(Exception):
    """kubectl exited non-zero; the message carries its command line and stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        command = " ".join(str(a) for a in result.args[1:])
        super().__init__(f"kubectl {command} exited {result.returncode}:\n{result.stderr}")


@dataclass(frozen=True, slots=True)
class Kubectl:
    """The built kubectl, bound to the test cluster's kubeconfig."""

    binary: Path
    kubeconfig: Path

    def __call__(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result


def wait_until(
    check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail at the deadline.

    ``check`` may also return a falsy value; the last one it returned, or the last exception
    it raised, is shown in the failure so a timeout says what the cluster looked like.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except ApiException as e:  # transient while the apiserver restarts, for instance
            value, last = None, f"{e.status} {e.reason}"
        else:
            last = value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def namespace_name(test_name: str) -> str:
    """A valid, unique namespace name that still says which test made it."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    slug = slug.removeprefix("test-")[:40].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the cluster, so ``-m "not cluster"`` skips all of them."""
    for item in items:
        if CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """One control plane for the whole run (about 5 s warm), stopped at the end by PID."""
    external = os.environ.get(KUBECONFIG_ENV)
    if external:
        yield ClusterHandle(
            kubeconfig=Path(external), bin_dir=resolve_bin_dir(), dev=None, start_seconds=0.0
        )
        return
    began = time.monotonic()
    policy = tmp_path_factory.mktemp("audit") / "policy.yaml"
    policy.write_text(AUDIT_POLICY)
    dev = DevCluster(
        ClusterConfig(
            work_dir=tmp_path_factory.mktemp("devcluster"),
            die_with_parent=True,
            audit_policy=policy,
        )
    )
    with dev:
        yield ClusterHandle(
            kubeconfig=dev.kubeconfig,
            bin_dir=dev.bin_dir,
            dev=dev,
            start_seconds=time.monotonic() - began,
        )


@pytest.fixture(scope="session")
def kubeconfig(cluster: ClusterHandle) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterHandle) -> Kubectl:
    return Kubectl(cluster.kubectl_path, cluster.kubeconfig)


@pytest.fixture(scope="session")
def k8s_api(cluster: ClusterHandle) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace_factory(
    k8s_api: client.ApiClient, request: pytest.FixtureRequest
) -> Iterator[Callable[[], str]]:
    """Make fresh namespaces named after the test; all are deleted at teardown."""
    core = client.CoreV1Api(k8s_api)
    made: list[str] = []

    def make() -> str:
        name = namespace_name(request.node.name)
        body: dict[str, Any] = {
            "metadata": {
                "name": name,
                "labels": {"gitsync.test/namespace": "true"},
                "annotations": {"gitsync.test/test": request.node.nodeid[-250:]},
            }
        }
        core.create_namespace(body)
        made.append(name)
        return name

    yield make
    for name in made:
        # Background: the namespace controller finishes the job while the next test runs.
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def namespace(namespace_factory: Callable[[], str]) -> str:
    return namespace_factory()
