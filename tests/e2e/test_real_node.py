"""The dev cluster's real node: a kubelet and containerd that run real containers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.devcluster import KWOK_NODE_LABEL
from gitsync.devcluster.realnode import GATEWAY, NODE_NAME, REAL_NODE_LABEL, SERVICE_IP
from tests.support.cluster_fixtures import ClusterHandle, Kubectl, wait_until

from .support import container, deployment, for_real_node

pytestmark = pytest.mark.realnode


def pod_manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def running_ready(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    return pod if pod.status.phase == "Running" and ready else None


def test_real_node_is_ready_labelled_tainted_and_on_the_bridge(
    k8s_api: client.ApiClient, cluster: ClusterHandle
) -> None:
    """The kubelet registers one Ready node, tainted and labelled, addressed on the bridge."""
    node = client.CoreV1Api(k8s_api).read_node(NODE_NAME)
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True"
    assert node.metadata.labels[REAL_NODE_LABEL] == "true"
    assert KWOK_NODE_LABEL not in node.metadata.labels
    assert [(t.key, t.value, t.effect) for t in node.spec.taints or []] == [
        (REAL_NODE_LABEL, "true", "NoSchedule")
    ]
    assert node.status.node_info.kubelet_version == "v1.34.4"
    assert node.status.node_info.container_runtime_version.startswith("containerd://1.6")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == GATEWAY
    print(f"real node Ready; cluster start took {cluster.start_seconds:.1f}s")


def test_pod_runs_and_kubectl_logs_and_exec_reach_the_kubelet(
    k8s_api: client.ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    """A busybox Pod runs; logs and exec pass the kubelet's webhook authn/authz."""
    core = client.CoreV1Api(k8s_api)
    command = ["sh", "-c", "echo hello from the real node; exec sleep 3600"]
    core.create_namespaced_pod(
        namespace, pod_manifest("hello", for_real_node({"containers": [container(command)]}))
    )
    pod = wait_until(lambda: running_ready(core, namespace, "hello"), timeout=60, what="Ready")
    assert pod.spec.node_name == NODE_NAME
    assert pod.status.pod_ip.startswith("198.18.0.")

    logs = kubectl("logs", "-n", namespace, "hello").stdout
    assert "hello from the real node" in logs
    routes = kubectl("exec", "-n", namespace, "hello", "--", "ip", "route").stdout
    # On-link subnet and one host route to the Service IP: nothing can leave the machine.
    assert "default" not in routes
    assert f"{SERVICE_IP} via {GATEWAY}" in routes
    whoami = kubectl("exec", "-n", namespace, "hello", "--", "id", "-u").stdout.strip()
    assert whoami == "0"


def test_pod_reaches_the_apiserver_through_the_service_ip_with_its_token(
    k8s_api: client.ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    """In-cluster config works: KUBERNETES_SERVICE_HOST and the ServiceAccount token."""
    core = client.CoreV1Api(k8s_api)
    spec = for_real_node({"containers": [container(["sleep", "3600"])]})
    spec["enableServiceLinks"] = True
    core.create_namespaced_pod(namespace, pod_manifest("incluster", spec))
    wait_until(lambda: running_ready(core, namespace, "incluster"), timeout=60, what="Ready")

    env = kubectl("exec", "-n", namespace, "incluster", "--", "env").stdout
    assert f"KUBERNETES_SERVICE_HOST={SERVICE_IP}" in env
    script = (
        "t=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token); "
        'wget -q -O- --no-check-certificate --header "Authorization: Bearer $t" '
        "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api"
    )
    result = kubectl("exec", "-n", namespace, "incluster", "--", "sh", "-c", script, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "APIVersions"


def test_pods_without_the_toleration_never_land_on_the_real_node(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """Ordinary Pods go to KWOK nodes only: the taint keeps them off the real node."""
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    plain = deployment("plain", container(["sleep", "3600"]), replicas=4)
    template = plain["spec"]["template"]["spec"]
    del template["nodeSelector"], template["tolerations"]
    apps.create_namespaced_deployment(namespace, plain)

    def all_scheduled() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=plain").items
        return pods if len(pods) == 4 and all(p.spec.node_name for p in pods) else None

    pods = wait_until(all_scheduled, timeout=30, what="4 Pods scheduled")
    assert {p.spec.node_name for p in pods}.isdisjoint({NODE_NAME})


def test_statefulset_volume_is_a_real_directory_on_the_node(
    k8s_api: client.ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    """A claim from the default StorageClass is mounted into a real container and persists."""
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    labels = {"app": "db"}
    command = ["sh", "-c", "echo kept > /data/note; exec sleep 3600"]
    app = container(command, volumeMounts=[{"name": "data", "mountPath": "/data"}])
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db",
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": for_real_node({"containers": [app]}),
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "16Mi"}},
                    },
                }
            ],
        },
    }
    apps.create_namespaced_stateful_set(namespace, sts)
    wait_until(lambda: running_ready(core, namespace, "db-0"), timeout=60, what="db-0 Ready")
    claim = core.read_namespaced_persistent_volume_claim("data-db-0", namespace)
    volume = core.read_persistent_volume(claim.spec.volume_name)
    note = Path(volume.spec.host_path.path) / "note"
    wait_until(note.exists, timeout=10, what=f"{note} written by the container")
    assert note.read_text() == "kept\n"
