"""Automatic rollback: put the last healthy revision back when a new one fails its gate.

The healthy revision's rendered manifests live in the app's state Secret, so a rollback
needs neither Git nor the renderer: a broken repo or a broken kustomize cannot stop it.
Only objects the bad revision *created* are deleted; objects it meant to remove were never
pruned (prune waits for health), so nothing has to be recreated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gitsync.apply import AppliedSet, apply_plan
from gitsync.gate import Verdict, wait_healthy
from gitsync.inventory import AppState, InventoryEntry
from gitsync.kube import Kube
from gitsync.model import Manifest, ManifestSet, ObjectRef
from gitsync.plan import Action, make_plan
from gitsync.prune import prune

Identity = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackResult:
    applied: AppliedSet
    deleted: tuple[ObjectRef, ...]
    verdict: Verdict | None
    inventory: tuple[InventoryEntry, ...]

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
    verdict = wait_healthy(kube, list(applied.objects), timeout=timeout)
    return RollbackResult(
        applied=applied, deleted=pruned.deleted, verdict=verdict, inventory=inventory
    )


def quarantine(state: AppState, sha: str) -> AppState:
    if sha in state.quarantined:
        return state
    return replace(state, quarantined=(*state.quarantined, sha)[-50:])
