"""gitsync as a Pod on the real node: built from the Dockerfile, deployed from config/.

config/ is applied as shipped (the restricted ClusterRole): the app runs as its own
ServiceAccount, which gitsync impersonates.

Two replicas with their ServiceAccount token (in-cluster config through the Service IP),
non-root on a read-only root filesystem, probed by the kubelet. They sync an app from a
``git daemon`` bound to the Pod bridge, and every failure below is produced by the kubelet
and containerd: the gate must fail on it and roll back to the last healthy commit.

The image comes from ``hack/build-image.sh`` ($GITSYNC_E2E_IMAGE, `make e2e` builds it).
Times are printed (run with ``-s``) for the closing figures: bad commit → verdict →
healthy again, and failover after the leader Pod is deleted.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.devcluster.realnode import GATEWAY
from tests.support.cluster_fixtures import ClusterHandle, Kubectl, wait_until
from tests.support.git_fixtures import _server_env, _stop
from tests.support.repos import BareRepo

from .conftest import _unavailable
from .support import for_real_node

pytestmark = pytest.mark.realnode

IMAGE_ENV = "GITSYNC_E2E_IMAGE"
IMAGE = "localhost/gitsync:dev"
SYSTEM_NS = "gitsync-system"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
APP = "web"
NOTE = "gitsync.test/note"
# config/clusterrole.yaml lets gitsync impersonate this account name only.
DEPLOYER = "shop-deployer"


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gitsync_image(real_node_cluster: ClusterHandle) -> str:
    """gitsync's image, built from the Dockerfile, imported into the real node's containerd."""
    default = Path.home() / ".cache" / "gitsync" / "image" / "gitsync-dev.tar"
    archive = Path(os.environ.get(IMAGE_ENV) or default)
    if not archive.is_file():
        _unavailable(f"no gitsync image at {archive}: build it with `make image`")
    assert real_node_cluster.dev is not None
    began = time.monotonic()
    real_node_cluster.dev.import_image(archive)
    print(f"imported {archive} in {time.monotonic() - began:.1f}s")
    return IMAGE


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeGit:
    """A git daemon on the bridge address, the one Git server Pods can reach."""

    port: int
    repo: BareRepo

    @property
    def url(self) -> str:
        return f"git://{GATEWAY}:{self.port}/{self.repo.name}"


@pytest.fixture(scope="module")
def bridge_git(
    real_node_cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeGit]:
    base = tmp_path_factory.mktemp("bridge-git")
    repo = BareRepo(base / "app.git")
    with socket.socket() as probe:
        probe.bind((GATEWAY, 0))
        port = int(probe.getsockname()[1])
    log = base.parent / "bridge-git-daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
                f"--base-path={base}", f"--listen={GATEWAY}", f"--port={port}", str(base),
            ],
            stdout=out, stderr=subprocess.STDOUT, env=_server_env(), start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection((GATEWAY, port), 0.5):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"git daemon on {GATEWAY}:{port} did not start: {log.read_text()}")
            time.sleep(0.05)
        yield BridgeGit(port=port, repo=repo)
    finally:
        _stop(proc)


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployed:
    namespace: str
    good: str  # the healthy commit


@pytest.fixture(scope="module")
def deployed(
    real_node_cluster: ClusterHandle,
    gitsync_image: str,
    bridge_git: BridgeGit,
    k8s_api: client.ApiClient,
    kubectl: Kubectl,
) -> Iterator[Deployed]:
    """config/ applied with the built image; gitsync has synced the first, healthy commit."""
    core = client.CoreV1Api(k8s_api)
    namespace = f"e2e-app-{int(time.time()) % 100000}"
    core.create_namespace({"metadata": {"name": namespace}})
    access = deployer_access(namespace)
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(access))
    good = bridge_git.repo.commit({"web.yaml": app_manifest("v1")}, message="v1")
    manifests = gitsync_manifests(kubectl, gitsync_image, bridge_git.url, namespace)
    began = time.monotonic()
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    wait_until(
        lambda: ready_gitsync_pods(core) if len(ready_gitsync_pods(core)) == 2 else None,
        timeout=120,
        what="2 gitsync Pods Ready (kubelet probes /readyz)",
        interval=1.0,
    )
    print(f"gitsync: 2 replicas Ready {time.monotonic() - began:.1f}s after apply")
    wait_until(
        lambda: find_event(kubectl, "sync.done", good),
        timeout=120,
        what=f"sync.done for {good[:12]}",
        interval=1.0,
    )
    print(f"gitsync: first sync done {time.monotonic() - began:.1f}s after apply")
    yield Deployed(namespace=namespace, good=good)
    kubectl("delete", "-f", "-", "--wait=false", input=yaml.safe_dump_all(manifests), check=False)
    kubectl("delete", "-f", "-", "--wait=false", input=yaml.safe_dump_all(access), check=False)
    core.delete_namespace(namespace)


# -------------------------------------------------------------------------- helpers


def deployer_access(namespace: str) -> list[dict[str, Any]]:
    """The app's ServiceAccount, which gitsync impersonates (the restricted default role).

    A Role for what the repository holds and the gate reads, in the app's namespace, and
    read access to Deployments cluster-wide for the drift watch (docs/deploy.md, RBAC).
    """
    rbac = "rbac.authorization.k8s.io"
    subject = [{"kind": "ServiceAccount", "name": DEPLOYER, "namespace": namespace}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": DEPLOYER, "namespace": namespace}},
        {"apiVersion": f"{rbac}/v1", "kind": "Role",
         "metadata": {"name": DEPLOYER, "namespace": namespace},
         "rules": [
             {"apiGroups": ["apps"], "resources": ["deployments"],
              "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
             {"apiGroups": ["", "apps"], "resources": ["pods", "replicasets"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
         ]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding",
         "metadata": {"name": DEPLOYER, "namespace": namespace},
         "roleRef": {"apiGroup": rbac, "kind": "Role", "name": DEPLOYER},
         "subjects": subject},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole",
         "metadata": {"name": f"e2e-{namespace}-read"},
         "rules": [{"apiGroups": ["apps"], "resources": ["deployments"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"e2e-{namespace}-read"},
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": f"e2e-{namespace}-read"},
         "subjects": subject},
    ]  # fmt: skip


def app_manifest(release: str, **change: Any) -> str:
    """The app's Deployment for the real node; ``change`` edits the container or template."""
    container: dict[str, Any] = {
        "name": "web",
        "image": "localhost/busybox:gitsync",
        "imagePullPolicy": "IfNotPresent",
        "command": ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    }
    container.update(change)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "annotations": {NOTE: "before-edit"}},
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": 20,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}, "annotations": {"release": release}},
                "spec": for_real_node({"containers": [container]}),
            },
        },
    }
    return yaml.safe_dump(deployment)


def gitsync_manifests(
    kubectl: Kubectl, image: str, repo_url: str, namespace: str
) -> list[dict[str, Any]]:
    """``kubectl kustomize config/``, with the built image, the real node and a test app."""
    rendered = kubectl("kustomize", str(CONFIG_DIR)).stdout
    manifests = [m for m in yaml.safe_load_all(rendered) if m]
    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            pod = manifest["spec"]["template"]["spec"]
            pod["containers"][0]["image"] = image
            pod["containers"][0]["imagePullPolicy"] = "Never"
            manifest["spec"]["template"]["spec"] = for_real_node(pod)
            # for_real_node shortens the grace period for test Pods; keep gitsync's own.
            pod_spec = manifest["spec"]["template"]["spec"]
            pod_spec["terminationGracePeriodSeconds"] = pod["terminationGracePeriodSeconds"]
            pod_spec.pop("enableServiceLinks", None)
        if manifest["kind"] == "ConfigMap":
            config = yaml.safe_load(manifest["data"]["config.yaml"])
            config["apps"] = [
                {
                    "name": APP,
                    "repo": repo_url,
                    "branch": "main",
                    "path": ".",
                    "namespace": namespace,
                    "serviceAccount": {"name": DEPLOYER, "namespace": namespace},
                    # git:// is refused unless allowed: the bridge is this machine's own.
                    "allowInsecure": True,
                    "interval": "3s",
                    "prune": True,
                    "selfHeal": False,
                    "health": {"timeout": "90s"},
                    "rollback": {"enabled": True},
                }
            ]
            manifest["data"]["config.yaml"] = yaml.safe_dump(config)
    return manifests


def ready_gitsync_pods(core: client.CoreV1Api) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(SYSTEM_NS, label_selector="app.kubernetes.io/name=gitsync")
    return [
        p
        for p in pods.items
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def log_events(kubectl: Kubectl) -> list[dict[str, Any]]:
    """Every JSON log line of every gitsync Pod (``kubectl logs``, through the kubelet)."""
    pods = kubectl(
        "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=gitsync", "-o", "name"
    ).stdout.split()
    events = []
    for pod in pods:
        # A restarted container's earlier lines are only in --previous.
        before = kubectl("logs", "-n", SYSTEM_NS, pod, "--previous", check=False).stdout
        now = kubectl("logs", "-n", SYSTEM_NS, pod, check=False).stdout
        for line in (before + "\n" + now).splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append({**event, "pod": pod})
    return events


def find_event(kubectl: Kubectl, name: str, commit: str = "") -> dict[str, Any] | None:
    for event in log_events(kubectl):
        revision = str(event.get("revision", ""))
        if event.get("event") == name and (not commit or commit.startswith(revision or "-")):
            return event
    return None


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def rolled_back(
    kubectl: Kubectl, repo: BareRepo, release: str, **change: Any
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Commit a bad release; wait for its health.failed and rollback.done; time both."""
    began = time.time()
    bad = repo.commit({"web.yaml": app_manifest(release, **change)}, message=release)
    failed = wait_until(
        lambda: find_event(kubectl, "health.failed", bad),
        timeout=180,
        what=f"health.failed for {release} ({bad[:12]})",
        interval=1.0,
    )
    try:
        done = wait_until(
            lambda: find_event(kubectl, "rollback.done", bad),
            timeout=180,
            what=f"rollback.done for {release} ({bad[:12]})",
            interval=1.0,
        )
    except pytest.fail.Exception:
        for event in log_events(kubectl):
            if event.get("event") != "sync.skipped" and event.get("level") != "debug":
                print(json.dumps(event)[:2000])
        print(kubectl("get", "pods", "-n", SYSTEM_NS, "-o", "yaml").stdout[-4000:])
        raise
    print(
        f"{release}: verdict {at(failed) - began:.1f}s after the commit "
        f"({failed.get('reason', '')[:120]}), healthy rollback after {at(done) - began:.1f}s"
    )
    return failed, done, began


def app_serves_v1(apps: client.AppsV1Api, namespace: str) -> bool:
    dep = apps.read_namespaced_deployment(APP, namespace)
    template = dep.spec.template.metadata.annotations or {}
    s = dep.status
    return (
        template.get("release") == "v1"
        and s.ready_replicas == s.replicas == s.updated_replicas == 1
    )


# ---------------------------------------------------------------------------- tests


def test_gitsync_runs_as_two_probed_nonroot_replicas_with_a_readonly_root(
    deployed: Deployed, k8s_api: client.ApiClient, kubectl: Kubectl
) -> None:
    """Both replicas are Ready by the kubelet's probes, run as 10001, cannot write to /."""
    pods = ready_gitsync_pods(client.CoreV1Api(k8s_api))
    assert len(pods) == 2
    for pod in pods:
        container = pod.spec.containers[0]
        assert container.readiness_probe.http_get.path == "/readyz"
        assert container.liveness_probe.http_get.path == "/healthz"
        name = pod.metadata.name
        assert kubectl("exec", "-n", SYSTEM_NS, name, "--", "id", "-u").stdout.strip() == "10001"
        touch = kubectl("exec", "-n", SYSTEM_NS, name, "--", "touch", "/x", check=False)
        assert "Read-only file system" in touch.stderr
    holders = [e for e in log_events(kubectl) if e.get("event") == "leader.acquired"]
    assert len(holders) == 1, "exactly one replica leads"


def test_app_synced_from_git_over_the_pod_network(
    deployed: Deployed, k8s_api: client.ApiClient
) -> None:
    """The app from the bridge-bound git daemon runs on the real node, Ready."""
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    wait_until(lambda: app_serves_v1(apps, deployed.namespace), timeout=60, what="web v1")
    pods = core.list_namespaced_pod(deployed.namespace, label_selector=f"app={APP}").items
    assert {p.spec.node_name for p in pods} == {"gitsync-real-node"}


@pytest.mark.parametrize(
    ("release", "change", "reason"),
    [
        ("crash", {"command": ["sh", "-c", "echo dying; exit 1"]}, "CrashLoopBackOff"),
        (
            "unready",
            {"readinessProbe": {"httpGet": {"path": "/", "port": 8081}, "periodSeconds": 2}},
            "ProgressDeadlineExceeded",
        ),
        ("noimage", {"image": "localhost/gitsync/missing:1"}, "Err"),
        (
            "oom",
            {
                "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"],
                "resources": {"requests": {"memory": "16Mi"}, "limits": {"memory": "32Mi"}},
            },
            "OOMKilled",
        ),
    ],
)
def test_bad_release_fails_the_gate_and_rolls_back(  # noqa: PLR0917 - fixtures + params
    deployed: Deployed,
    bridge_git: BridgeGit,
    k8s_api: client.ApiClient,
    kubectl: Kubectl,
    release: str,
    change: dict[str, Any],
    reason: str,
) -> None:
    """A release the kubelet cannot run is judged Failed and rolled back to v1, healthy."""
    failed, done, _ = rolled_back(kubectl, bridge_git.repo, release, **copy.deepcopy(change))
    assert reason in failed["reason"]
    assert done["to_revision"].startswith(deployed.good[:12]) or deployed.good.startswith(
        done["to_revision"]
    )
    apps = client.AppsV1Api(k8s_api)
    wait_until(lambda: app_serves_v1(apps, deployed.namespace), timeout=60, what="web v1 again")


def test_kubectl_edit_is_reported_as_drift_in_the_logs(
    deployed: Deployed, kubectl: Kubectl, tmp_path: Path
) -> None:
    """A `kubectl edit` of the synced Deployment shows up as drift.detected in kubectl logs."""
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nset -e\nsed -i "s/before-edit/after-edit/" "$1"\n')
    editor.chmod(0o755)
    began = time.time()
    kubectl("edit", "-n", deployed.namespace, f"deployment/{APP}", env={"EDITOR": str(editor)})

    def drift() -> dict[str, Any] | None:
        for event in log_events(kubectl):
            if event.get("event") == "drift.detected" and "after-edit" in str(event.get("live")):
                return event
        return None

    event = wait_until(drift, timeout=60, what="drift.detected for the edit", interval=1.0)
    print(f"drift: reported {at(event) - began:.1f}s after kubectl edit")
    assert event["manager"] == "kubectl-edit"
    assert NOTE in event["field"]


def test_deleting_the_leader_pod_hands_over_to_the_standby(
    deployed: Deployed, k8s_api: client.ApiClient, kubectl: Kubectl
) -> None:
    """`kubectl delete pod` of the leader: the standby acquires the Lease."""
    coordination = client.CoordinationV1Api(k8s_api)
    lease = coordination.read_namespaced_lease("gitsync-leader", SYSTEM_NS)
    leader = lease.spec.holder_identity.rsplit("_", 1)[0]
    began = time.time()
    kubectl("delete", "pod", "-n", SYSTEM_NS, leader, "--wait=false")

    def new_holder() -> str | None:
        holder = coordination.read_namespaced_lease("gitsync-leader", SYSTEM_NS).spec
        identity = holder.holder_identity or ""
        return identity if identity and not identity.startswith(leader) else None

    identity = wait_until(new_holder, timeout=60, what="another holder of the Lease")
    print(f"failover: {identity} leads {time.time() - began:.1f}s after deleting {leader}")
    core = client.CoreV1Api(k8s_api)
    wait_until(
        lambda: len(ready_gitsync_pods(core)) == 2,
        timeout=120,
        what="2 gitsync replicas Ready again",
        interval=1.0,
    )
