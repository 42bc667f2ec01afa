"""Health rules per kind (pure)."""

from datetime import UTC, datetime, timedelta

import pytest

from gitsync.health.rules import Status, assess, current_pods, pod_problem


def _deploy(spec=None, status=None, generation=2):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "generation": generation},
        "spec": {"replicas": 3, **(spec or {})},
        "status": status if status is not None else {},
    }


FULL = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}


@pytest.mark.parametrize(
    ("status", "expected", "reason"),
    [
        (FULL, Status.CURRENT, ""),
        ({}, Status.IN_PROGRESS, "not observed"),
        ({**FULL, "observedGeneration": 1}, Status.IN_PROGRESS, "generation 2"),
        ({**FULL, "updatedReplicas": 1}, Status.IN_PROGRESS, "1 of 3 replicas updated"),
        ({**FULL, "replicas": 4}, Status.IN_PROGRESS, "pending termination"),
        ({**FULL, "availableReplicas": 2}, Status.IN_PROGRESS, "2 of 3 updated replicas available"),
        (
            {
                **FULL,
                "updatedReplicas": 1,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "web-1" has timed out progressing.',
                    }
                ],
            },
            Status.FAILED,
            "ProgressDeadlineExceeded",
        ),
    ],
)
def test_deployment_rules(status, expected, reason):
    """Deployment: generation, updated/available replicas, progress deadline."""
    h = assess(_deploy(status=status))
    assert h.status is expected
    assert reason in h.reason


def test_paused_deployment_is_not_progressing():
    """A paused rollout fails the gate instead of waiting for ever."""
    h = assess(_deploy(spec={"paused": True}, status={**FULL, "updatedReplicas": 1}))
    assert h.status is Status.FAILED
    assert "paused" in h.reason


def _pod(waiting=None, ready=False, sched=None):
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}
    if waiting:
        status["containerStatuses"] = [
            {"name": "app", "restartCount": 4, "state": {"waiting": {"reason": waiting}}}
        ]
    if sched:
        status["conditions"].append(sched)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1"}, "status": status}


@pytest.mark.parametrize(
    "reason", ["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"]
)
def test_workload_fails_early_on_fatal_pod_state(reason):
    """An in-progress Deployment with a Pod stuck in a fatal state is Failed at once."""
    h = assess(_deploy(status={**FULL, "availableReplicas": 1}), pods=[_pod(waiting=reason)])
    assert h.status is Status.FAILED
    assert reason in h.reason
    assert "web-1" in h.reason


def test_healthy_deployment_ignores_old_pod_trouble():
    """A Current Deployment is not failed by a Pod problem."""
    assert (
        assess(_deploy(status=FULL), pods=[_pod(waiting="CrashLoopBackOff")]).status
        is Status.CURRENT
    )


def test_unschedulable_only_after_grace():
    """Unschedulable Pods fail the gate only after a grace period."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available",
        "lastTransitionTime": (now - timedelta(seconds=5)).isoformat(),
    }
    assert pod_problem(_pod(sched=cond), now=now) == ""
    later = now + timedelta(seconds=60)
    assert "unschedulable" in pod_problem(_pod(sched=cond), now=later)


def _sts(spec=None, status=None):
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "generation": 1},
        "spec": {"replicas": 3, **(spec or {})},
        "status": {"observedGeneration": 1, "readyReplicas": 3, **(status or {})},
    }


def test_statefulset_rules():
    """StatefulSet: ready replicas, revision roll-out, partition and OnDelete respected."""
    assert (
        assess(_sts(status={"currentRevision": "a", "updateRevision": "a"})).status
        is Status.CURRENT
    )
    rolling = _sts(status={"currentRevision": "a", "updateRevision": "b", "updatedReplicas": 1})
    assert assess(rolling).status is Status.IN_PROGRESS
    part = _sts(
        spec={"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}},
        status={"currentRevision": "a", "updateRevision": "b", "updatedReplicas": 1},
    )
    assert assess(part).status is Status.CURRENT
    ondelete = _sts(
        spec={"updateStrategy": {"type": "OnDelete"}},
        status={"currentRevision": "a", "updateRevision": "b"},
    )
    assert assess(ondelete).status is Status.CURRENT
    assert assess(_sts(status={"readyReplicas": 1})).status is Status.IN_PROGRESS


def test_daemonset_rules():
    """DaemonSet: updated and available on every scheduled node."""
    base = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1}}
    ok = {
        "observedGeneration": 1,
        "desiredNumberScheduled": 3,
        "updatedNumberScheduled": 3,
        "numberAvailable": 3,
    }
    assert assess({**base, "status": ok}).status is Status.CURRENT
    assert (
        assess({**base, "status": {**ok, "updatedNumberScheduled": 2}}).status is Status.IN_PROGRESS
    )
    assert assess({**base, "status": {**ok, "numberAvailable": 1}}).status is Status.IN_PROGRESS


def _job(*conds):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate"},
        "status": {"conditions": [{"type": t, "status": "True", "reason": r} for t, r in conds]},
    }


def test_job_rules():
    """Job: Complete is Current, Failed is Failed, otherwise running."""
    assert assess(_job(("Complete", ""))).status is Status.CURRENT
    failed = assess(_job(("Failed", "BackoffLimitExceeded")))
    assert failed.status is Status.FAILED
    assert "BackoffLimitExceeded" in failed.reason
    assert assess(_job()).status is Status.IN_PROGRESS


def test_pvc_crd_and_generic_rules():
    """PVC Bound, CRD Established, and standard Ready/Stalled/Reconciling conditions."""
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim"}
    assert assess({**pvc, "status": {"phase": "Bound"}}).status is Status.CURRENT
    assert assess({**pvc, "status": {"phase": "Pending"}}).status is Status.IN_PROGRESS
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"}
    est = {"conditions": [{"type": "Established", "status": "True"}]}
    assert assess({**crd, "status": est}).status is Status.CURRENT
    assert assess({**crd, "status": {}}).status is Status.IN_PROGRESS
    cr = {"apiVersion": "x.test/v1", "kind": "Thing", "metadata": {"generation": 2}}
    assert assess(cr).status is Status.CURRENT
    stalled = {"conditions": [{"type": "Stalled", "status": "True", "message": "bad spec"}]}
    assert assess({**cr, "status": stalled}).status is Status.FAILED
    reconciling = {"conditions": [{"type": "Reconciling", "status": "True", "reason": "Working"}]}
    assert assess({**cr, "status": reconciling}).status is Status.IN_PROGRESS
    assert assess({**cr, "status": {"observedGeneration": 1}}).status is Status.IN_PROGRESS
    cm = {"apiVersion": "v1", "kind": "ConfigMap"}
    assert assess(cm).status is Status.CURRENT


def _owned(name, owner_uid, **labels):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "ownerReferences": [{"uid": owner_uid}], "labels": labels},
    }


def test_current_pods_of_deployment_are_those_of_its_newest_replicaset():
    """After a rollback, Pods of the bad ReplicaSet no longer count against the Deployment."""
    deploy = {
        "kind": "Deployment",
        "metadata": {
            "uid": "d",
            "generation": 3,
            "annotations": {"deployment.kubernetes.io/revision": "3"},
        },
        "status": {"observedGeneration": 3},
    }
    rs_good = {
        "metadata": {
            "uid": "rs-good",
            "ownerReferences": [{"uid": "d"}],
            "annotations": {"deployment.kubernetes.io/revision": "3"},
        }
    }
    rs_bad = {
        "metadata": {
            "uid": "rs-bad",
            "ownerReferences": [{"uid": "d"}],
            "annotations": {"deployment.kubernetes.io/revision": "2"},
        }
    }
    pods = [_owned("good", "rs-good"), _owned("bad", "rs-bad")]
    names = [p["metadata"]["name"] for p in current_pods(deploy, pods, [rs_good, rs_bad])]
    assert names == ["good"]
    lagging = {**deploy, "status": {"observedGeneration": 2}}
    assert current_pods(lagging, pods, [rs_good, rs_bad]) == []


def test_current_pods_of_statefulset_follow_update_revision():
    """StatefulSet Pods count only when on the update revision."""
    sts = {
        "kind": "StatefulSet",
        "metadata": {"uid": "s", "generation": 1},
        "status": {"observedGeneration": 1, "updateRevision": "db-2"},
    }
    pods = [
        _owned("db-0", "s", **{"controller-revision-hash": "db-1"}),
        _owned("db-1", "s", **{"controller-revision-hash": "db-2"}),
        _owned("other", "x", **{"controller-revision-hash": "db-2"}),
    ]
    assert [p["metadata"]["name"] for p in current_pods(sts, pods)] == ["db-1"]


def test_crashloop_reason_names_the_last_exit_not_the_backoff_text():
    """CrashLoopBackOff reasons give restarts and last exit, not the kubelet back-off text."""
    pod = _pod(waiting="CrashLoopBackOff")
    cs = pod["status"]["containerStatuses"][0]
    cs["state"]["waiting"]["message"] = "back-off 10s restarting failed container=app pod=web-1"
    cs["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    assert pod_problem(pod) == (
        "Pod web-1 container app is in CrashLoopBackOff (restarts: 4, last exit 137 OOMKilled)"
    )
    pull = _pod(waiting="ImagePullBackOff")
    pull["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = 'Back-off pulling "x"'
    assert pod_problem(pull).endswith(': Back-off pulling "x"')


def test_default_timeout_follows_each_kinds_deadline():
    """Jobs, StatefulSets and DaemonSets set the gate's default deadline, not Deployments only."""
    from gitsync.health.gate import MARGIN_SECONDS, default_timeout

    job = {"kind": "Job", "spec": {"activeDeadlineSeconds": 1200}}
    dep = {"kind": "Deployment", "spec": {"progressDeadlineSeconds": 60}}
    sts = {"kind": "StatefulSet", "spec": {"replicas": 3, "minReadySeconds": 100}}
    assert default_timeout([dep]) == 60 + MARGIN_SECONDS
    assert default_timeout([dep, job]) == 1200 + MARGIN_SECONDS
    assert default_timeout([sts]) == 600 + 300 + MARGIN_SECONDS
    assert default_timeout([{"kind": "ConfigMap"}]) == 60 + MARGIN_SECONDS
