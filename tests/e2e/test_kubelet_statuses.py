"""Real kubelet failures judged by gitsync's health rules, and recorded as unit-test fixtures.

Every status here comes from the kubelet and containerd, not from KWOK stages. With
$GITSYNC_RECORD_FIXTURES set, each snapshot is written to tests/unit/fixtures/kubelet/,
where tests/unit/test_health_kubelet.py replays it against the same rules.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from gitsync.health.rules import Status, assess, current_pods
from tests.support.cluster_fixtures import wait_until

from .support import container, deployment, record, workload_snapshot

pytestmark = pytest.mark.realnode


def verdict(snapshot: dict[str, Any]) -> Any:
    workload = snapshot["workload"]
    pods = current_pods(workload, snapshot["pods"], snapshot["replicasets"])
    return assess(workload, pods=pods)


def judged(
    api: client.ApiClient, namespace: str, name: str, status: Status
) -> tuple[dict[str, Any], Any]:
    """Poll the workload until the rules reach ``status``; return the snapshot and verdict."""

    def check() -> tuple[dict[str, Any], Any] | None:
        snapshot = workload_snapshot(api, namespace, name)
        health = verdict(snapshot)
        return (snapshot, health) if health.status is status else None

    return wait_until(check, timeout=150, what=f"{name} judged {status}", interval=1.0)


def test_healthy_busybox_deployment_is_current(k8s_api: client.ApiClient, namespace: str) -> None:
    """An httpd with a passing HTTP readiness probe becomes Ready and is judged Current."""
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2}
    app = container(["httpd", "-f", "-p", "8080", "-h", "/var/www"], readinessProbe=probe)
    client.AppsV1Api(k8s_api).create_namespaced_deployment(namespace, deployment("good", app))
    snapshot, _ = judged(k8s_api, namespace, "good", Status.CURRENT)
    record("deployment-ready", snapshot)
    assert snapshot["pods"][0]["status"]["containerStatuses"][0]["ready"] is True


def test_container_exiting_1_is_crashloopbackoff_judged_failed(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """`exit 1` gives a real CrashLoopBackOff, and the gate fails on it."""
    began = time.monotonic()
    client.AppsV1Api(k8s_api).create_namespaced_deployment(
        namespace, deployment("crash", container(["sh", "-c", "echo dying; exit 1"]))
    )
    snapshot, health = judged(k8s_api, namespace, "crash", Status.FAILED)
    record("deployment-crashloop", snapshot)
    print(f"crashloop judged Failed after {time.monotonic() - began:.1f}s: {health.reason}")
    assert "CrashLoopBackOff" in health.reason
    assert "last exit 1" in health.reason


def test_failing_readiness_probe_reaches_progress_deadline_judged_failed(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """A probe on a port nobody serves keeps the Pod unready until ProgressDeadlineExceeded."""
    began = time.monotonic()
    probe = {"httpGet": {"path": "/", "port": 8081}, "periodSeconds": 2, "failureThreshold": 1}
    app = container(["httpd", "-f", "-p", "8080", "-h", "/var/www"], readinessProbe=probe)
    client.AppsV1Api(k8s_api).create_namespaced_deployment(
        namespace, deployment("unready", app, progress_deadline=20)
    )
    snapshot, health = judged(k8s_api, namespace, "unready", Status.FAILED)
    record("deployment-readiness-deadline", snapshot)
    print(f"readiness judged Failed after {time.monotonic() - began:.1f}s: {health.reason}")
    assert "ProgressDeadlineExceeded" in health.reason
    status = snapshot["pods"][0]["status"]["containerStatuses"][0]
    assert status["ready"] is False
    assert "running" in status["state"]


def test_missing_image_is_errimagepull_judged_failed(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """An image that exists nowhere gives ErrImagePull/ImagePullBackOff, judged Failed."""
    began = time.monotonic()
    app = container(["sh"], image="localhost/gitsync/missing:1")
    client.AppsV1Api(k8s_api).create_namespaced_deployment(namespace, deployment("noimage", app))
    snapshot, health = judged(k8s_api, namespace, "noimage", Status.FAILED)
    record("deployment-image-pull", snapshot)
    print(f"image pull judged Failed after {time.monotonic() - began:.1f}s: {health.reason}")
    assert "ErrImagePull" in health.reason or "ImagePullBackOff" in health.reason


def test_container_over_its_memory_limit_is_oomkilled_judged_failed(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """A container that allocates past its limit is OOMKilled by the kernel and judged Failed."""
    began = time.monotonic()
    hog = container(["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"])
    hog["resources"]["limits"]["memory"] = "32Mi"
    client.AppsV1Api(k8s_api).create_namespaced_deployment(namespace, deployment("hog", hog))
    snapshot, health = judged(k8s_api, namespace, "hog", Status.FAILED)
    record("deployment-oomkilled", snapshot)
    print(f"OOM judged Failed after {time.monotonic() - began:.1f}s: {health.reason}")
    assert "OOMKilled" in health.reason


def test_bare_pod_oomkilled_with_restart_never_is_failed(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """A Pod with restartPolicy Never that is OOMKilled ends in phase Failed, judged Failed."""
    core = client.CoreV1Api(k8s_api)
    hog = container(["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"])
    hog["resources"]["limits"]["memory"] = "32Mi"
    spec = deployment("x", hog)["spec"]["template"]["spec"]
    spec["restartPolicy"] = "Never"
    core.create_namespaced_pod(
        namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog"}, "spec": spec}
    )

    def failed() -> dict[str, Any] | None:
        pod = k8s_api.sanitize_for_serialization(core.read_namespaced_pod("hog", namespace))
        return pod if pod["status"].get("phase") == "Failed" else None

    pod = {"apiVersion": "v1", "kind": "Pod", **wait_until(failed, timeout=90, what="Failed")}
    record("pod-oomkilled-never", {"workload": pod, "replicasets": [], "pods": []})
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled"
    assert terminated["exitCode"] == 137
    assert assess(pod).status is Status.FAILED
