"""Health rules: is an applied object Current, still InProgress, or Failed — and why.

Pure functions over live objects (kstatus-like), so they are unit-tested without a
cluster. A workload is also judged by its newest Pods: a container in CrashLoopBackOff
will not recover by waiting, so the gate fails early instead of burning the whole
progress deadline.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

KubeObject = Mapping[str, Any]

# Waiting reasons that mean the Pod will not become Ready without a new spec.
FATAL_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
UNSCHEDULABLE_GRACE_SECONDS = 30.0
# Kinds judged by their Pods too (see ``current_pods``).
WORKLOADS = frozenset(
    {
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("apps", "ReplicaSet"),
        ("batch", "Job"),
    }
)


class Status(enum.StrEnum):
    CURRENT = "Current"
    IN_PROGRESS = "InProgress"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class Health:
    status: Status
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.status is not Status.IN_PROGRESS


CURRENT = Health(Status.CURRENT)


def _cond(obj: KubeObject, ctype: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            cond: Mapping[str, Any] = c
            return cond
    return None


def _generation_lag(obj: KubeObject) -> Health | None:
    gen = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if gen is not None and observed is not None and observed < gen:
        return Health(Status.IN_PROGRESS, f"controller has not observed generation {gen} yet")
    return None


def _deployment(obj: KubeObject) -> Health:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if "observedGeneration" not in status:
        return Health(Status.IN_PROGRESS, "controller has not observed the Deployment yet")
    lag = _generation_lag(obj)
    if lag:
        return lag
    progressing = _cond(obj, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Health(
            Status.FAILED,
            f"ProgressDeadlineExceeded: {progressing.get('message', '')}".rstrip(": "),
        )
    if spec.get("paused"):
        return Health(Status.FAILED, "rollout is paused (spec.paused) and will not progress")
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < want:
        return Health(Status.IN_PROGRESS, f"{updated} of {want} replicas updated")
    if total > updated:
        return Health(Status.IN_PROGRESS, f"{total - updated} old replica(s) pending termination")
    if available < updated:
        return Health(Status.IN_PROGRESS, f"{available} of {updated} updated replicas available")
    return CURRENT


def _statefulset(obj: KubeObject) -> Health:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if "observedGeneration" not in status:
        return Health(Status.IN_PROGRESS, "controller has not observed the StatefulSet yet")
    lag = _generation_lag(obj)
    if lag:
        return lag
    want = spec.get("replicas", 1)
    ready = status.get("readyReplicas", 0)
    if ready < want:
        return Health(Status.IN_PROGRESS, f"{ready} of {want} replicas ready")
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type") == "OnDelete":
        return CURRENT  # Pods change only when deleted: nothing to wait for.
    partition = (strategy.get("rollingUpdate") or {}).get("partition", 0) or 0
    if partition:
        updated = status.get("updatedReplicas", 0)
        if updated < want - partition:
            return Health(
                Status.IN_PROGRESS, f"{updated} of {want - partition} replicas above partition"
            )
        return CURRENT
    if status.get("updateRevision") and status.get("currentRevision") != status.get(
        "updateRevision"
    ):
        updated = status.get("updatedReplicas", 0)
        return Health(Status.IN_PROGRESS, f"{updated} of {want} replicas on the new revision")
    return CURRENT


def _daemonset(obj: KubeObject) -> Health:
    status = obj.get("status") or {}
    if "observedGeneration" not in status:
        return Health(Status.IN_PROGRESS, "controller has not observed the DaemonSet yet")
    lag = _generation_lag(obj)
    if lag:
        return lag
    want = status.get("desiredNumberScheduled", 0)
    updated = status.get("updatedNumberScheduled", 0)
    available = status.get("numberAvailable", 0)
    if updated < want:
        return Health(Status.IN_PROGRESS, f"{updated} of {want} nodes updated")
    if available < want:
        return Health(Status.IN_PROGRESS, f"{available} of {want} nodes available")
    return CURRENT


def _replicaset(obj: KubeObject) -> Health:
    lag = _generation_lag(obj)
    if lag:
        return lag
    want = (obj.get("spec") or {}).get("replicas", 1)
    available = (obj.get("status") or {}).get("availableReplicas", 0)
    if available < want:
        return Health(Status.IN_PROGRESS, f"{available} of {want} replicas available")
    return CURRENT


def _job(obj: KubeObject) -> Health:
    for ctype in ("Failed", "FailureTarget"):
        cond = _cond(obj, ctype)
        if cond and cond.get("status") == "True":
            return Health(Status.FAILED, f"Job failed: {cond.get('reason', '')}".rstrip(": "))
    for ctype in ("Complete", "SuccessCriteriaMet"):
        cond = _cond(obj, ctype)
        if cond and cond.get("status") == "True":
            return CURRENT
    if (obj.get("spec") or {}).get("suspend"):
        return CURRENT
    succeeded = (obj.get("status") or {}).get("succeeded", 0)
    return Health(Status.IN_PROGRESS, f"Job running ({succeeded} succeeded)")


def _pod(obj: KubeObject, now: datetime | None = None) -> Health:
    problem = pod_problem(obj, now=now)
    if problem:
        return Health(Status.FAILED, problem)
    phase = (obj.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return CURRENT
    if phase == "Failed":
        return Health(Status.FAILED, _failed_pod_reason(obj))
    ready = _cond(obj, "Ready")
    if ready and ready.get("status") == "True":
        return CURRENT
    return Health(Status.IN_PROGRESS, f"Pod is {phase or 'Pending'}, not Ready")


def _failed_pod_reason(obj: KubeObject) -> str:
    """Pod failed, plus why each container ended (OOMKilled, Error) as the kubelet says."""
    status = obj.get("status") or {}
    ends = []
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode"):
            reason = terminated.get("reason") or "Error"
            ends.append(f"container {cs.get('name')} {reason} (exit {terminated['exitCode']})")
    detail = ": " + ", ".join(ends) if ends else ""
    return f"Pod failed{detail}"


def _pvc(obj: KubeObject) -> Health:
    phase = (obj.get("status") or {}).get("phase")
    if phase == "Bound":
        return CURRENT
    if phase == "Lost":
        return Health(Status.FAILED, "PersistentVolumeClaim lost its volume")
    return Health(Status.IN_PROGRESS, f"PersistentVolumeClaim is {phase or 'Pending'}")


def _crd(obj: KubeObject) -> Health:
    names = _cond(obj, "NamesAccepted")
    if names and names.get("status") == "False":
        return Health(Status.FAILED, f"names not accepted: {names.get('message', '')}")
    est = _cond(obj, "Established")
    if est and est.get("status") == "True":
        return CURRENT
    return Health(Status.IN_PROGRESS, "CustomResourceDefinition not Established yet")


def _generic(obj: KubeObject) -> Health:
    """Objects that follow the standard Ready / Stalled / Reconciling conditions."""
    lag = _generation_lag(obj)
    if lag:
        return lag
    gen = (obj.get("metadata") or {}).get("generation")
    conds = (obj.get("status") or {}).get("conditions") or []
    for c in conds:
        og = c.get("observedGeneration")
        if gen is not None and og is not None and og < gen and c.get("type") == "Ready":
            return Health(Status.IN_PROGRESS, "Ready condition is for an older generation")
    stalled = _cond(obj, "Stalled")
    if stalled and stalled.get("status") == "True":
        return Health(Status.FAILED, f"Stalled: {stalled.get('message') or stalled.get('reason')}")
    reconciling = _cond(obj, "Reconciling")
    if reconciling and reconciling.get("status") == "True":
        return Health(Status.IN_PROGRESS, f"Reconciling: {reconciling.get('reason', '')}")
    ready = _cond(obj, "Ready")
    if ready and ready.get("status") == "False":
        return Health(
            Status.IN_PROGRESS, f"not Ready: {ready.get('message') or ready.get('reason')}"
        )
    return CURRENT


_RULES = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _statefulset,
    ("apps", "DaemonSet"): _daemonset,
    ("apps", "ReplicaSet"): _replicaset,
    ("batch", "Job"): _job,
    ("", "PersistentVolumeClaim"): _pvc,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _crd,
}


def assess(
    obj: KubeObject, *, pods: Sequence[KubeObject] = (), now: datetime | None = None
) -> Health:
    """Health of one live object; ``pods`` are its newest Pods, for failing early."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    kind = str(obj.get("kind", ""))
    if (group, kind) == ("", "Pod"):
        return _pod(obj, now=now)
    rule = _RULES.get((group, kind), _generic)
    health = rule(obj)
    if health.status is Status.FAILED and kind == "Deployment" and _stale_deadline(obj, pods):
        return Health(
            Status.IN_PROGRESS,
            "ProgressDeadlineExceeded is left from the previous rollout; "
            "the current ReplicaSet's Pods are all Ready",
        )
    if health.status is Status.IN_PROGRESS and pods:
        problem = first_pod_problem(pods, now=now)
        if problem:
            return Health(Status.FAILED, problem)
    return health


def _stale_deadline(obj: KubeObject, pods: Sequence[KubeObject]) -> bool:
    """ProgressDeadlineExceeded although every Pod of the current revision is Ready.

    Seen on the real node: right after a rollback to a ReplicaSet that never lost its
    Pods, the controller has observed the new generation but keeps the timed-out
    condition until the bad ReplicaSet is scaled down (its next sync). Judging the
    rollback Failed then would strand the app; the condition is the old rollout's.
    """
    progressing = _cond(obj, "Progressing")
    if not progressing or progressing.get("reason") != "ProgressDeadlineExceeded":
        return False
    want = (obj.get("spec") or {}).get("replicas", 1)
    ready = [p for p in pods if (_cond(p, "Ready") or {}).get("status") == "True"]
    return bool(pods) and len(ready) == len(pods) and len(ready) >= want


def pod_problem(pod: KubeObject, *, now: datetime | None = None) -> str:
    """Why this Pod will not become Ready on its own, or ""."""
    status = pod.get("status") or {}
    name = (pod.get("metadata") or {}).get("name", "?")
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in FATAL_WAITING:
            facts = [f"restarts: {cs.get('restartCount', 0)}"]
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if last:
                facts.append(f"last exit {last.get('exitCode')} {last.get('reason', '')}".strip())
            # The kubelet's back-off text only repeats the Pod name; other reasons' messages
            # (an image that cannot be pulled, a missing ConfigMap key) say what is wrong.
            message = waiting.get("message") if reason != "CrashLoopBackOff" else ""
            detail = f": {message}" if message else ""
            return (
                f"Pod {name} container {cs.get('name')} is in {reason} ({', '.join(facts)}){detail}"
            )
    sched = _cond(pod, "PodScheduled")
    if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        since = _parse_time(sched.get("lastTransitionTime"))
        now = now or datetime.now(UTC)
        if since is not None and (now - since).total_seconds() >= UNSCHEDULABLE_GRACE_SECONDS:
            return f"Pod {name} is unschedulable: {sched.get('message', '')}".rstrip(": ")
    return ""


def first_pod_problem(pods: Iterable[KubeObject], *, now: datetime | None = None) -> str:
    for pod in pods:
        problem = pod_problem(pod, now=now)
        if problem:
            return problem
    return ""


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


_REVISION = "deployment.kubernetes.io/revision"


def _owned_by(obj: KubeObject, uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(r.get("uid") == uid for r in refs)


def current_pods(
    workload: KubeObject,
    pods: Iterable[KubeObject],
    replicasets: Iterable[KubeObject] = (),
    *,
    since: str = "",
) -> list[KubeObject]:
    """The Pods of the workload's *current* revision: only they may fail it early.

    After a rollback the bad revision's Pods still crash for a while; judging the
    rolled-back workload by them would fail the rollback itself. Until the controller
    has observed the latest generation no Pod is current. ``since`` (an RFC 3339 time
    from the server) bounds DaemonSet Pods, whose revision the status does not name.
    """
    if _generation_lag(workload):
        return []
    meta = workload.get("metadata") or {}
    uid = meta.get("uid", "")
    kind = workload.get("kind")
    status = workload.get("status") or {}
    if kind == "Deployment":
        revision = (meta.get("annotations") or {}).get(_REVISION)
        owners = {
            (rs.get("metadata") or {}).get("uid")
            for rs in replicasets
            if _owned_by(rs, uid)
            and ((rs.get("metadata") or {}).get("annotations") or {}).get(_REVISION) == revision
        }
        return [p for p in pods if any(_owned_by(p, o) for o in owners if o)]
    if kind == "StatefulSet":
        update = status.get("updateRevision")
        return [
            p
            for p in pods
            if _owned_by(p, uid)
            and ((p.get("metadata") or {}).get("labels") or {}).get("controller-revision-hash")
            == update
        ]
    if kind == "DaemonSet":
        return [
            p
            for p in pods
            if _owned_by(p, uid)
            and str((p.get("metadata") or {}).get("creationTimestamp", "")) > since
        ]
    return [p for p in pods if _owned_by(p, uid)]
