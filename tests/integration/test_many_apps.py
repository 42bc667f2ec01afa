"""One ``gitsync run`` with 20 apps: nothing starves, and a Lease it cannot renew stops it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.support.cluster_fixtures import Kubectl, wait_until
from tests.support.controller_process import ControllerProcess, lease_config
from tests.support.repos import BareRepo
from tests.support.tcp_proxy import TcpProxy, kubeconfig_via

pytestmark = [pytest.mark.cluster, pytest.mark.git]

APPS = 20
LEASE = "gitsync-leader"
# (kind, count): 100 objects of 8 kinds per app.
MIX = (
    ("ConfigMap", 40),
    ("Secret", 16),
    ("ServiceAccount", 10),
    ("Role", 10),
    ("RoleBinding", 10),
    ("Service", 10),
    ("NetworkPolicy", 2),
    ("Deployment", 2),
)


def _doc(kind: str, i: int, ns: str) -> str:
    name = f"{kind.lower()}-{i}"
    head = f"metadata:\n  name: {name}\n  namespace: {ns}\n"
    docs = {
        "ConfigMap": f"apiVersion: v1\nkind: ConfigMap\n{head}data:\n  v: '{i}'\n",
        "Secret": f"apiVersion: v1\nkind: Secret\n{head}stringData:\n  token: t-{i}\n",
        "ServiceAccount": f"apiVersion: v1\nkind: ServiceAccount\n{head}",
        "Role": f"apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n{head}"
        "rules:\n- apiGroups: ['']\n  resources: [configmaps]\n  verbs: [get]\n",
        "RoleBinding": f"apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n{head}"
        f"roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: role-{i}}}\n"
        f"subjects: [{{kind: ServiceAccount, name: serviceaccount-{i}, namespace: {ns}}}]\n",
        "Service": f"apiVersion: v1\nkind: Service\n{head}"
        f"spec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n",
        "NetworkPolicy": f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{head}"
        f"spec:\n  podSelector: {{matchLabels: {{app: {name}}}}}\n",
        "Deployment": f"apiVersion: apps/v1\nkind: Deployment\n{head}spec:\n  replicas: 1\n"
        f"  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n"
        f"    metadata: {{labels: {{app: {name}}}}}\n    spec:\n"
        f"      containers: [{{name: app, image: registry.invalid/app:{i}}}]\n",
    }
    return docs[kind]


def app_files(ns: str) -> dict[str, str]:
    return {
        f"{kind.lower()}.yaml": "---\n".join(_doc(kind, i, ns) for i in range(count))
        for kind, count in MIX
    }


def readyz(proc: ControllerProcess) -> dict[str, Any]:
    _status, body = proc.get("/readyz")
    doc: dict[str, Any] = json.loads(body)
    return doc


def test_twenty_apps_sync_report_drift_fast_and_keep_the_lease(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace_factory: Callable[[], str],
    kubectl: Kubectl,
) -> None:
    """20 apps x 100 objects x 8 kinds in one process: all sync, an edit is reported
    within 2 s, Lease renewals stay far inside renewDeadline."""
    state_ns = namespace_factory()
    apps = []
    for n in range(APPS):
        ns = namespace_factory()
        repo = make_repo(f"many-{n}")
        repo.commit(app_files(ns))
        apps.append({"name": f"app{n:02d}", "repo": repo.file_url, "namespace": ns})
    began = time.monotonic()
    proc = controllers(
        {
            "stateNamespace": state_ns,
            # Long interval: the first syncs all start at once; no resync muddles the timing.
            "apps": [{**a, "interval": "2m"} for a in apps],
            "controller": {"leaderElection": lease_config()},
        }
    )
    for a in apps:
        proc.wait_event("sync.done", app=a["name"], result="synced", timeout=150)
    synced = time.monotonic() - began
    for a in apps:
        proc.wait_event("drift.intents", app=a["name"], objects=100, timeout=30)
    stats = readyz(proc)["lease_renew_seconds"]
    print(f"20 apps synced in {synced:.1f}s; lease renewals under that load: {stats}")

    for a in (apps[0], apps[-1]):
        ns = a["namespace"]
        kubectl("patch", "configmap", "configmap-7", "-n", ns, "-p", '{"data":{"v":"x"}}')
        patched = time.monotonic()
        wait_until(
            lambda: proc.events("drift.detected", object=f"ConfigMap {ns}/configmap-7"),  # noqa: B023
            timeout=10,
            what=f"drift in {a['name']} reported",
            interval=0.05,
        )
        took = time.monotonic() - patched
        print(f"drift in {a['name']} reported after {took:.2f}s")
        assert took < 2.0

    assert proc.proc.poll() is None, proc.tail()
    assert not proc.events("leader.lost")
    assert stats["count"] > 10
    assert stats["p99"] < 3.0, "renewals must stay inside renewDeadline (3 s)"
    _status, body = proc.get("/metrics")
    assert b"gitsync_lease_renew_seconds_bucket" in body
    assert proc.terminate() == 0


def test_a_leader_whose_api_calls_hang_stops_before_its_lease_expires(
    *,
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    kubeconfig: Path,
    kubectl: Kubectl,
    tmp_path: Path,
) -> None:
    """Every API call hangs (a frozen connection): the leader exits 1 within renewDeadline
    of its last renewal, before the Lease expires for a standby."""
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    target = urlparse(server)
    assert target.hostname is not None
    assert target.port is not None
    proxy = TcpProxy((target.hostname, target.port))
    try:
        repo = make_repo("frozen")
        repo.commit({"cm.yaml": app_files(namespace)["configmap.yaml"]})
        proc = controllers(
            {
                "stateNamespace": namespace,
                "apps": [{"name": "frozen", "repo": repo.file_url, "namespace": namespace}],
                "controller": {"leaderElection": lease_config()},
            },
            kubeconfig_path=kubeconfig_via(proxy, kubeconfig, tmp_path / "proxied.kubeconfig"),
        )
        proc.wait_event("sync.done", app="frozen", result="synced", timeout=60)
        proxy.freeze()
        frozen = time.monotonic()
        assert proc.proc.wait(timeout=15) == 1
        exited_wall = time.time()
        took = time.monotonic() - frozen
    finally:
        proxy.close()
    spec = json.loads(kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json").stdout)["spec"]
    renewed = datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00")).timestamp()
    print(f"exit {took:.2f}s after the freeze, {exited_wall - renewed:.2f}s after the last renewal")
    lost = proc.wait_event("leader.lost")
    assert lost["seconds_since_renew"] >= 3.0
    proc.wait_event("controller.exit")
    # leaseDuration is 4 s: a standby may take over 4 s after the last renewal it saw.
    assert exited_wall - renewed < 4.0
