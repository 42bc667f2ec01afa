"""Automatic rollback: put the last healthy revision back when a new one fails its gate.

The healthy revision's rendered manifests live in the app's state Secret, so a rollback
needs neither Git nor the renderer: a broken repo or a broken kustomize cannot stop it.
Only objects the bad revision *created* are deleted; objects it meant to remove were never
pruned (prune waits for health), so nothing has to be recreated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gitsync.config import IgnoreRule
from gitsync.engine.apply import AppliedSet, apply_plan
from gitsync.engine.inventory import AppState, InventoryEntry
from gitsync.engine.ownership import Owners
from gitsync.engine.plan import Action, make_plan
from gitsync.engine.prune import prune
from gitsync.health import rules
from gitsync.health.gate import Verdict, wait_healthy
from gitsync.kube import Kube
from gitsync.model import Identity, KubeObject, Manifest, ManifestSet, ObjectRef, field_manager

if TYPE_CHECKING:
    from gitsync.informers.hub import Informers

_POD = ObjectRef(group="", version="v1", kind="Pod", namespace="", name="")


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackResult:
    applied: AppliedSet
    deleted: tuple[ObjectRef, ...]
    verdict: Verdict | None
    inventory: tuple[InventoryEntry, ...]
    restarted_pods: tuple[ObjectRef, ...] = ()
    restored: tuple[ObjectRef, ...] = ()

    @property
    def ok(self) -> bool:
        return self.applied.ok and (self.verdict is None or self.verdict.healthy)

    @property
    def reason(self) -> str:
        """Why it did not finish, or "" if it did."""
        if self.applied.failures:
            return str(self.applied.failures[0])
        if self.verdict is not None and self.verdict.interrupted:
            return "interrupted by shutdown before the healthy revision was judged"
        if self.verdict is not None and not self.verdict.healthy:
            return self.verdict.reason
        return ""


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
    timeout: float,
    cancel: threading.Event | None = None,
    owners: Owners | None = None,
    ignore: Sequence[IgnoreRule] = (),
    informers: Informers | None = None,
) -> RollbackResult:
    """Re-apply ``state``'s healthy manifests, undo the unsettled sync, wait for health.

    Undoing means: delete what the sync created (its write-ahead ``pending`` record) and
    put back the prior content of what it adopted. Nothing else is deleted, so an object
    that existed before the bad commit, made by hand or adopted, survives the rollback.
    ``state.inventory`` must already include what the bad revision applied.
    """
    created = frozenset(e.ref.identity() for e in state.pending)
    manifests = healthy_set(state)
    plan = make_plan(manifests, kube=kube, app=app, state=state, owners=owners, ignore=ignore)
    applied = apply_plan(
        plan, kube=kube, manager=field_manager(app), cancel=cancel, informers=informers
    )
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
        owners=owners,
    )
    desired = {m.ref.identity() for m in manifests.manifests}
    priors = [o for o in state.adopted if _id(o) not in desired]
    restored = restore_adopted(kube, priors, manager=field_manager(app))
    # Still ours: what the healthy set lacks but was neither created nor adopted by the
    # bad revision (e.g. kept by a prune guard earlier), and what failed to delete.
    released = created | {_id(o) for o in state.adopted}
    failed = {r.identity() for r in pruned.kept}
    leftover_ids = {c.ref.identity() for c in plan.by_action(Action.PRUNE)}
    kept = [
        e
        for e in state.inventory
        if e.ref.identity() in leftover_ids
        and (e.ref.identity() not in released or e.ref.identity() in failed)
    ]
    inventory = tuple(sorted([*applied.entries, *kept], key=lambda e: e.ref))
    objects = applied.live_objects()
    restarted = unstick_statefulsets(kube, objects, timeout=min(timeout, 30.0))
    verdict = wait_healthy(kube, objects, timeout=timeout, cancel=cancel, informers=informers)
    return RollbackResult(
        applied=applied,
        deleted=pruned.deleted,
        verdict=verdict,
        inventory=inventory,
        restarted_pods=restarted,
        restored=restored,
    )


def _id(obj: KubeObject) -> Identity:
    return ObjectRef.of(obj).identity()


def restore_adopted(
    kube: Kube, priors: Iterable[KubeObject], *, manager: str
) -> tuple[ObjectRef, ...]:
    """Put back the content (and field owners) adopted objects had before gitsync.

    A replace carrying the live resourceVersion and the prior uid: an object deleted or
    recreated by someone else since is left alone.
    """
    restored: list[ObjectRef] = []
    for prior in priors:
        ref = ObjectRef.of(prior)
        live = kube.get(ref)
        if live is None or live["metadata"].get("uid") != prior["metadata"].get("uid"):
            continue
        body = {k: v for k, v in prior.items() if k != "status"}
        meta = dict(body["metadata"])
        meta["resourceVersion"] = live["metadata"]["resourceVersion"]
        body["metadata"] = meta
        kube.replace(body, manager=manager)
        restored.append(ref)
    return tuple(restored)


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
            if rules.assess(pod).status is rules.Status.CURRENT:
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
