"""Helpers for Pods meant for the real node, and for recording what the kubelet reported."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubernetes import client

from gitsync.devcluster.images import BUSYBOX_IMAGE
from gitsync.devcluster.realnode import REAL_NODE_LABEL, REAL_NODE_TAINT

RECORD_ENV = "GITSYNC_RECORD_FIXTURES"
FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "kubelet"


def for_real_node(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """Select the real node and tolerate its taint: the only way onto it."""
    return {
        **pod_spec,
        "nodeSelector": {REAL_NODE_LABEL: "true"},
        "tolerations": [{**REAL_NODE_TAINT, "operator": "Equal"}],
        "terminationGracePeriodSeconds": 1,
        "enableServiceLinks": False,
    }


def container(
    command: list[str] | None = None, *, image: str = BUSYBOX_IMAGE, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "app",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        **extra,
    }
    if command:
        spec["command"] = command
    return spec


def deployment(
    name: str,
    app_container: dict[str, Any],
    *,
    replicas: int = 1,
    progress_deadline: int = 600,
) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": progress_deadline,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": for_real_node({"containers": [app_container]}),
            },
        },
    }


def workload_snapshot(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The Deployment, its ReplicaSets and its Pods, as the health gate sees them (camelCase)."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    selector = f"app={name}"
    deploy = apps.read_namespaced_deployment(name, namespace)
    sets = apps.list_namespaced_replica_set(namespace, label_selector=selector).items
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    raw = api.sanitize_for_serialization
    return {
        "workload": _with_kind(raw(deploy), "apps/v1", "Deployment"),
        "replicasets": [_with_kind(raw(r), "apps/v1", "ReplicaSet") for r in sets],
        "pods": [_with_kind(raw(p), "v1", "Pod") for p in pods],
    }


def record(name: str, snapshot: dict[str, Any]) -> None:
    """With $GITSYNC_RECORD_FIXTURES set, keep what the kubelet reported for the unit tests."""
    if not os.environ.get(RECORD_ENV):
        return
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / f"{name}.json").write_text(
        json.dumps(_scrub(snapshot), indent=1, sort_keys=True) + "\n"
    )


def _with_kind(obj: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, **obj}


def _scrub(value: Any) -> Any:
    """Drop managedFields (noise for the rules) and keep everything else as served."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k != "managedFields"}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value
