"""The local control plane itself: what the sync, health and drift tests rely on it to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.devcluster import BEHAVIOR_LABEL, CRASHLOOP, KWOK_NODE_LABEL, NEVER_READY
from tests.support.cluster_fixtures import ClusterHandle, Kubectl, wait_until

pytestmark = pytest.mark.cluster

IMAGE_V1 = "registry.invalid/gitsync/web:1"  # never pulled: kwok plays the kubelet
IMAGE_V2 = "registry.invalid/gitsync/web:2"
NOTE = "gitsync.test/note"


def deployment(
    name: str,
    *,
    replicas: int,
    image: str = IMAGE_V1,
    behavior: str | None = None,
    progress_deadline: int | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    pod_labels = {"app": name} | ({BEHAVIOR_LABEL: behavior} if behavior else {})
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": image,
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    }
                ]
            },
        },
    }
    if progress_deadline is not None:
        spec["progressDeadlineSeconds"] = progress_deadline
    metadata = {"name": name, "annotations": annotations or {}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def condition(obj: Any, kind: str) -> Any:
    return next((c for c in obj.status.conditions or [] if c.type == kind), None)


def pod_ready(pod: client.V1Pod) -> bool:
    ready = condition(pod, "Ready")
    return ready is not None and ready.status == "True"


def rolled_out(apps: client.AppsV1Api, namespace: str, name: str) -> client.V1Deployment | None:
    """What ``kubectl rollout status`` waits for: every replica updated, ready and available."""
    dep = apps.read_namespaced_deployment(name, namespace)
    s, want = dep.status, dep.spec.replicas
    progressing = condition(dep, "Progressing")
    done = (
        (s.observed_generation or 0) >= dep.metadata.generation
        and s.replicas == s.updated_replicas == s.ready_replicas == s.available_replicas == want
        and progressing is not None
        and progressing.reason == "NewReplicaSetAvailable"
    )
    return dep if done else None


def pods(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def test_deployment_becomes_available_on_kwok_nodes_and_rolls_out(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """A 3-replica Deployment gets 3 Ready Pods on KWOK nodes; a new template rolls out fully."""
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    apps.create_namespaced_deployment(namespace, deployment("web", replicas=3))

    dep = wait_until(lambda: rolled_out(apps, namespace, "web"), timeout=30, what="web Available")
    available = condition(dep, "Available")
    assert available is not None
    assert available.status == "True"
    kwok_nodes = {n.metadata.name for n in core.list_node(label_selector=KWOK_NODE_LABEL).items}
    first = pods(core, namespace, "web")
    assert len(first) == 3
    assert all(pod_ready(p) and p.status.phase == "Running" for p in first)
    assert {p.spec.node_name for p in first} <= kwok_nodes

    template = {"spec": {"containers": [{"name": "app", "image": IMAGE_V2}]}}
    apps.patch_namespaced_deployment("web", namespace, {"spec": {"template": template}})
    wait_until(lambda: rolled_out(apps, namespace, "web"), timeout=30, what="web rolled to v2")

    sets = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    by_image = {rs.spec.template.spec.containers[0].image: rs for rs in sets}
    assert set(by_image) == {IMAGE_V1, IMAGE_V2}
    assert by_image[IMAGE_V2].status.ready_replicas == 3
    assert by_image[IMAGE_V1].spec.replicas == 0

    def only_new_pods() -> list[client.V1Pod] | None:
        current = pods(core, namespace, "web")
        fresh = [p for p in current if p.spec.containers[0].image == IMAGE_V2 and pod_ready(p)]
        return current if len(current) == len(fresh) == 3 else None

    wait_until(only_new_pods, timeout=30, what="old Pods gone, 3 new Pods Ready")


def test_crashloop_pods_show_crashloopbackoff_with_rising_restarts(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """Pods labelled crashloop wait in CrashLoopBackOff, never Ready, with a rising restartCount."""
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    apps.create_namespaced_deployment(
        namespace, deployment("crashy", replicas=1, behavior=CRASHLOOP)
    )

    def crashing(above: int) -> client.V1Pod | None:
        for pod in pods(core, namespace, "crashy"):
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting
                if (
                    waiting
                    and waiting.reason == "CrashLoopBackOff"
                    and status.restart_count > above
                ):
                    return pod
        return None

    pod = wait_until(lambda: crashing(0), timeout=30, what="a Pod in CrashLoopBackOff")
    restarts = pod.status.container_statuses[0].restart_count
    later = wait_until(
        lambda: crashing(restarts), timeout=15, what=f"restartCount to rise above {restarts}"
    )

    status = later.status.container_statuses[0]
    assert later.status.phase == "Running"
    assert not pod_ready(later)
    # Like the kubelet, each crash leaves the time Ready turned False alone.
    assert (
        condition(later, "Ready").last_transition_time
        == condition(pod, "Ready").last_transition_time
    )
    assert status.ready is False
    assert status.last_state.terminated.exit_code == 1
    dep = apps.read_namespaced_deployment("crashy", namespace)
    assert not dep.status.available_replicas


def test_never_ready_pods_exceed_the_progress_deadline(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """Pods labelled never-ready run but stay unready: the rollout hits ProgressDeadlineExceeded."""
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    apps.create_namespaced_deployment(
        namespace, deployment("stuck", replicas=2, behavior=NEVER_READY, progress_deadline=10)
    )

    def deadline_exceeded() -> client.V1Deployment | None:
        dep = apps.read_namespaced_deployment("stuck", namespace)
        progressing = condition(dep, "Progressing")
        exceeded = (
            progressing is not None
            and progressing.status == "False"
            and progressing.reason == "ProgressDeadlineExceeded"
        )
        return dep if exceeded else None

    dep = wait_until(
        deadline_exceeded, timeout=45, what="Progressing=False/ProgressDeadlineExceeded"
    )
    available = condition(dep, "Available")
    assert available is not None
    assert available.status == "False"
    stuck = pods(core, namespace, "stuck")
    assert len(stuck) == 2
    for pod in stuck:
        assert pod.status.phase == "Running"
        assert not pod_ready(pod)
        status = pod.status.container_statuses[0]
        assert status.state.running is not None
        assert status.restart_count == 0


def test_kubectl_edit_scale_and_patch_are_recorded_in_managed_fields(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """kubectl edit/scale/patch land, managed as kubectl-edit, kubectl (on scale), kubectl-patch."""
    manifest = deployment("edited", replicas=1, annotations={NOTE: "before-edit"})
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nset -e\nsed -i "s/before-edit/after-edit/" "$1"\n')
    editor.chmod(0o755)
    kubectl("edit", "-n", namespace, "deployment/edited", env={"KUBE_EDITOR": str(editor)})
    kubectl("scale", "-n", namespace, "deployment/edited", "--replicas=2")
    label_patch = {"metadata": {"labels": {"gitsync.test/patched": "yes"}}}
    kubectl(
        "patch", "-n", namespace, "deployment/edited", "--type=merge", "-p", json.dumps(label_patch)
    )

    got = kubectl(
        "get", "-n", namespace, "deployment/edited", "-o", "json", "--show-managed-fields"
    )
    obj = json.loads(got.stdout)
    assert obj["metadata"]["annotations"][NOTE] == "after-edit"
    assert obj["spec"]["replicas"] == 2
    assert obj["metadata"]["labels"]["gitsync.test/patched"] == "yes"

    # Keyed by (manager, subresource): one manager may own fields through several endpoints.
    entries = {
        (e["manager"], e.get("subresource", "")): e for e in obj["metadata"]["managedFields"]
    }
    edit, patch = entries["kubectl-edit", ""], entries["kubectl-patch", ""]
    # kubectl scale has no --field-manager (unlike edit and patch, up to 1.34 at least): the
    # server names the manager after the user agent, "kubectl", on the scale subresource.
    assert not any(manager == "kubectl-scale" for manager, _ in entries)
    scale = entries["kubectl", "scale"]
    assert edit["operation"] == "Update"
    assert f"f:{NOTE}" in edit["fieldsV1"]["f:metadata"]["f:annotations"]
    assert scale["operation"] == "Update"
    assert scale["subresource"] == "scale"
    assert "f:replicas" in scale["fieldsV1"]["f:spec"]
    assert patch["operation"] == "Update"
    assert "f:gitsync.test/patched" in patch["fieldsV1"]["f:metadata"]["f:labels"]


def test_apiserver_restart_keeps_objects_and_the_cluster_keeps_working(
    cluster: ClusterHandle, k8s_api: client.ApiClient, namespace: str
) -> None:
    """After a kube-apiserver restart stored objects remain and a new Deployment rolls out."""
    if cluster.dev is None:
        pytest.skip(f"restarting needs a cluster started by this run, not {cluster.kubeconfig}")
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    config_map = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "survivor"}, "data": {"key": "value"}}
    )
    apps.create_namespaced_deployment(namespace, deployment("before", replicas=2))
    before = wait_until(lambda: rolled_out(apps, namespace, "before"), timeout=30, what="before")
    old_pid = cluster.dev.processes["kube-apiserver"].pid

    cluster.dev.restart_apiserver()

    assert cluster.dev.processes["kube-apiserver"].pid != old_pid
    kept = core.read_namespaced_config_map("survivor", namespace)
    assert kept.metadata.uid == config_map.metadata.uid
    assert kept.data == {"key": "value"}
    still = apps.read_namespaced_deployment("before", namespace)
    assert still.metadata.uid == before.metadata.uid
    apps.create_namespaced_deployment(namespace, deployment("after", replicas=2))
    wait_until(lambda: rolled_out(apps, namespace, "after"), timeout=45, what="after Available")
    assert len([p for p in pods(core, namespace, "after") if pod_ready(p)]) == 2
