"""Health rules against statuses a real kubelet wrote (tests/unit/fixtures/kubelet/*.json).

Each fixture is a snapshot of a workload, its ReplicaSets and its Pods, recorded on the dev
cluster's real node by tests/e2e/test_kubelet_statuses.py (GITSYNC_RECORD_FIXTURES=1):
kubelet v1.34.4, containerd 1.6, runc. The KWOK-made statuses are in test_health.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gitsync.health.rules import Status, assess, current_pods

FIXTURES = Path(__file__).parent / "fixtures" / "kubelet"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def judge(snapshot: dict[str, Any]) -> Any:
    workload = snapshot["workload"]
    pods = current_pods(workload, snapshot["pods"], snapshot["replicasets"])
    return assess(workload, pods=pods)


@pytest.mark.parametrize(
    ("fixture", "status", "words"),
    [
        ("deployment-ready", Status.CURRENT, []),
        ("deployment-crashloop", Status.FAILED, ["CrashLoopBackOff", "last exit 1 Error"]),
        ("deployment-readiness-deadline", Status.FAILED, ["ProgressDeadlineExceeded"]),
        ("deployment-image-pull", Status.FAILED, ["ErrImagePull", "localhost/gitsync/missing:1"]),
        ("deployment-oomkilled", Status.FAILED, ["CrashLoopBackOff", "last exit 137 OOMKilled"]),
    ],
)
def test_deployment_judged_as_the_kubelet_left_it(
    fixture: str, status: Status, words: list[str]
) -> None:
    """Each recorded Deployment gets the verdict the real failure deserves, with its cause."""
    health = judge(load(fixture))
    assert health.status is status, health.reason
    for word in words:
        assert word in health.reason


@pytest.mark.parametrize(
    "fixture",
    [
        "deployment-ready",
        "deployment-crashloop",
        "deployment-readiness-deadline",
        "deployment-image-pull",
        "deployment-oomkilled",
    ],
)
def test_recorded_pods_belong_to_the_current_revision(fixture: str) -> None:
    """The kubelet's Pods are found as the workload's current-revision Pods."""
    snapshot = load(fixture)
    current = current_pods(snapshot["workload"], snapshot["pods"], snapshot["replicasets"])
    assert len(current) == len(snapshot["pods"]) == 1


def test_readiness_failure_alone_does_not_fail_before_the_deadline() -> None:
    """An unready but running Pod is no early failure: only the deadline fails it."""
    snapshot = load("deployment-readiness-deadline")
    workload = {**snapshot["workload"], "status": {**snapshot["workload"]["status"]}}
    workload["status"]["conditions"] = [
        c for c in workload["status"]["conditions"] if c["type"] != "Progressing"
    ]
    health = judge({**snapshot, "workload": workload})
    assert health.status is Status.IN_PROGRESS


def test_oomkilled_pod_that_never_restarts_is_failed_naming_the_kill() -> None:
    """restartPolicy Never + OOMKilled: phase Failed, and the reason names OOMKilled."""
    pod = load("pod-oomkilled-never")["workload"]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    health = assess(pod)
    assert health.status is Status.FAILED
    assert "OOMKilled" in health.reason


def test_deadline_left_over_from_the_bad_rollout_does_not_fail_the_rollback() -> None:
    """After a rollback the timed-out condition lingers; Ready current Pods mean InProgress.

    Built from the recorded unready rollout: the same Deployment status (observed, still
    ProgressDeadlineExceeded), but the current revision's Pod is Ready, as it is right
    after a rollback to a ReplicaSet that kept its Pods (seen as a rollback.failed on the
    real node before this rule).
    """
    snapshot = load("deployment-readiness-deadline")
    pods = current_pods(snapshot["workload"], snapshot["pods"], snapshot["replicasets"])
    assert assess(snapshot["workload"], pods=pods).status is Status.FAILED
    ready_pod = json.loads(json.dumps(pods[0]))
    for condition in ready_pod["status"]["conditions"]:
        if condition["type"] in ("Ready", "ContainersReady"):
            condition["status"] = "True"
    health = assess(snapshot["workload"], pods=[ready_pod])
    assert health.status is Status.IN_PROGRESS
    assert "previous rollout" in health.reason
