"""Delete what left the desired set, and only what is provably ours.

An object is deleted only if (1) the app's state lists it (or, as a backstop, it carries
the app's label), (2) its live labels say gitsync manages it for this app, (3) no other
app's state lists it, and (4) it does not say ``gitsync.io/prune: "false"``.
Deletes carry the uid seen, so an object recreated by someone else is never hit. Two
guards catch a broken render: an empty desired set, or one that would delete more than
half the app, prunes nothing unless the app opts in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gitsync import order
from gitsync.errors import KubeError
from gitsync.kube import Kube
from gitsync.model import (
    APP_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    PRUNE_ANNOTATION,
    ObjectRef,
)
from gitsync.ownership import Owners
from gitsync.plan import Action, Change, Origin


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    ref: ObjectRef
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    deleted: tuple[ObjectRef, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    # Refs gitsync still owns (kept on a guard or a failed delete): they stay in inventory.
    kept: tuple[ObjectRef, ...] = ()
    guard: str = ""


def guard_reason(
    *, desired: int, inventory: int, candidates: int, allow_empty: bool, allow_mass: bool
) -> str:
    """Why pruning should not happen at all, or "" if it may."""
    if candidates == 0:
        return ""
    if desired == 0 and not allow_empty:
        return (
            f"the render is empty and would delete all {inventory} object(s); "
            "set prune.allowEmpty to allow it"
        )
    if candidates * 2 > inventory and not allow_mass:
        return (
            f"{candidates} of {inventory} object(s) would be deleted (more than half); "
            "set prune.allowMassDelete to allow it"
        )
    return ""


def prune(
    changes: Sequence[Change],
    *,
    kube: Kube,
    app: str,
    desired_count: int,
    inventory_count: int,
    allow_empty: bool = False,
    allow_mass: bool = False,
    owners: Owners | None = None,
) -> PruneResult:
    """Delete the plan's prune candidates in reverse dependency order.

    What an unsettled sync created (``Origin.PENDING``) is never part of a healthy state,
    so removing it is undoing that sync, not pruning the app: the guards do not hold it.
    """
    candidates = [c for c in changes if c.action is Action.PRUNE]
    guarded = [c for c in candidates if c.origin is not Origin.PENDING]
    guard = guard_reason(
        desired=desired_count,
        inventory=inventory_count,
        candidates=len(guarded),
        allow_empty=allow_empty,
        allow_mass=allow_mass,
    )
    if guard:
        held = {c.ref.identity() for c in guarded}
        candidates = [c for c in candidates if c.ref.identity() not in held]
    by_id = {c.ref.identity(): c for c in candidates}
    deleted: list[ObjectRef] = []
    skipped: list[Skipped] = []
    kept: list[ObjectRef] = [c.ref for c in guarded] if guard else []
    for ref in order.prune_order([c.ref for c in candidates]):
        live = by_id[ref.identity()].live
        reason = _not_ours(live, app)
        other = owners.listed_by(ref.identity()) if owners is not None and not reason else ""
        if other:
            reason = f"app {other!r} lists it too"
        if reason:
            skipped.append(Skipped(ref=ref, reason=reason))
            continue
        assert live is not None  # noqa: S101 - _not_ours rejects None
        try:
            kube.delete(ref, uid=str(live["metadata"].get("uid", "")))
        except KubeError as e:
            skipped.append(Skipped(ref=ref, reason=f"delete failed: {e}"))
            kept.append(ref)
            continue
        deleted.append(ref)
    return PruneResult(
        deleted=tuple(deleted), skipped=tuple(skipped), kept=tuple(kept), guard=guard
    )


def _not_ours(live: dict[str, object] | None, app: str) -> str:
    if live is None:
        return "not found with the app label (deleted, or relabelled by someone else)"
    meta = live.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or labels.get(APP_LABEL) != app:
        return f"its labels do not say gitsync manages it for app {app!r}"
    if (meta.get("annotations") or {}).get(PRUNE_ANNOTATION) == "false":
        return f'annotated {PRUNE_ANNOTATION}: "false"'
    return ""
