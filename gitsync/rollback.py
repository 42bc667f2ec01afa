"""Automatic rollback: put the last healthy revision back when a new one fails its gate.

The healthy revision's rendered manifests live in the app's state Secret, so a rollback
needs neither Git nor the renderer: a broken repo or a broken kustomize cannot stop it.
Only objects the bad revision *created* are deleted; objects it meant to remove were never
pruned (prune waits for health), so nothing has to be recreated.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gitsync import health
from gitsync.apply import AppliedSet, apply_plan
from gitsync.gate import Verdict, wait_healthy
from gitsync.inventory import AppState, InventoryEntry
from gitsync.kube import Kube
from gitsync.model import Identity, KubeObject, Manifest, ManifestSet, ObjectRef
from gitsync.plan import Action, make_plan
from gitsync.prune import prune

_POD = ObjectRef(group="", version="v1", kind="Pod", namespace="", name="")


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackResult:
    applied: AppliedSet
    deleted: tuple[ObjectRef, ...]
    verdict: Verdict | None
    inventory: tuple[InventoryEntry, ...]
    restarted_pods: tuple[ObjectRef, ...] = ()

    @property
    def ok(self) -> bool:
        return self.applied.ok and (self.verdict is None or self.verdict.healthy)


def healthy_set(state: AppState) -> ManifestSet:
    where = f"healthy revision {state.healthy_revision[:12]}"
    return ManifestSet(
        manifests=tuple(Manifest(obj=o, source=where) for o in state.healthy_manifests)
    )


def roll_back(
    *,
    kube: Kube,
    app: str,
    state: AppState,
    created: frozenset[Identity],
    timeout: float,
) -> RollbackResult:
    """Re-apply ``state``'s healthy manifests, delete ``created``, wait for health.

    ``state.inventory`` must already include what the bad revision applied.
    """
    manifests = healthy_set(state)
    plan = make_plan(manifests, kube=kube, app=app, state=state)
    applied = apply_plan(plan, kube=kube)
    if not applied.ok:
        return RollbackResult(applied=applied, deleted=(), verdict=None, inventory=state.inventory)
    leftovers = [
        c for c in plan.changes if c.action is Action.PRUNE and c.ref.identity() in created
    ]
    pruned = prune(
        leftovers,
        kube=kube,
        app=app,
        desired_count=len(manifests),
        inventory_count=len(state.inventory),
        allow_empty=True,
        allow_mass=True,
    )
    # Still ours: what the healthy set lacks but was neither created by the bad revision
    # nor deleted now (e.g. kept by a prune guard earlier).
    deleted = {r.identity() for r in pruned.deleted}
    leftover_ids = {c.ref.identity() for c in plan.by_action(Action.PRUNE)}
    kept = [
        e
        for e in state.inventory
        if e.ref.identity() in leftover_ids and e.ref.identity() not in deleted
    ]
    inventory = tuple(sorted([*applied.entries, *kept], key=lambda e: e.ref))
    restarted = unstick_statefulsets(kube, applied.objects, timeout=min(timeout, 30.0))
    verdict = wait_healthy(kube, list(applied.objects), timeout=timeout)
    return RollbackResult(
        applied=applied,
        deleted=pruned.deleted,
        verdict=verdict,
        inventory=inventory,
        restarted_pods=restarted,
    )


def unstick_statefulsets(
    kube: Kube, objects: Iterable[KubeObject], *, timeout: float
) -> tuple[ObjectRef, ...]:
    """Delete the bad revision's unready Pods of each rolled-back StatefulSet.

    With the default OrderedReady policy a StatefulSet never replaces a Pod that is not
    Ready, so reverting its template alone leaves it stuck on the broken Pod for ever
    (the manual step the Kubernetes docs ask for after a bad rollout). gitsync does
    that step: only Pods of another revision than the restored one, and only unready.
    """
    deleted: list[ObjectRef] = []
    pod_res = kube.discover().for_ref(_POD)
    for obj in objects:
        if obj.get("kind") != "StatefulSet" or pod_res is None:
            continue
        sts = _observed(kube, ObjectRef.of(obj), timeout)
        if sts is None:
            continue
        uid = sts["metadata"].get("uid")
        revision = (sts.get("status") or {}).get("updateRevision")
        pods, _ = kube.list_objects(pod_res, namespace=sts["metadata"].get("namespace", ""))
        for pod in pods:
            meta = pod.get("metadata") or {}
            owned = any(r.get("uid") == uid for r in meta.get("ownerReferences") or [])
            if not owned or (meta.get("labels") or {}).get("controller-revision-hash") == revision:
                continue
            if health.assess(pod).status is health.Status.CURRENT:
                continue
            ref = ObjectRef.of(pod)
            if kube.delete(ref, uid=str(meta.get("uid", ""))):
                deleted.append(ref)
    return tuple(deleted)


def _observed(kube: Kube, ref: ObjectRef, timeout: float) -> KubeObject | None:
    """The object once its controller has observed its latest generation."""
    deadline = time.monotonic() + timeout
    while True:
        obj = kube.get(ref)
        if obj is None:
            return None
        gen = obj["metadata"].get("generation", 0)
        if (obj.get("status") or {}).get("observedGeneration", 0) >= gen:
            return obj
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def quarantine(state: AppState, sha: str) -> AppState:
    if sha in state.quarantined:
        return state
    return replace(state, quarantined=(*state.quarantined, sha)[-50:])
