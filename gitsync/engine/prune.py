"""Delete what left the desired set, and only what is provably ours.

An object is deleted only if (1) the app's state lists it (or, as a backstop, it carries
the app's label), (2) its live labels say gitsync manages it for this app, (3) no other
app's state lists it, and (4) it does not say ``gitsync.io/prune: "false"``.
Deletes carry the uid seen, so an object recreated by someone else is never hit. Two
guards catch a broken render: an empty desired set, or one that would delete more than
half the app, prunes nothing unless the app opts in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gitsync.engine import order
from gitsync.engine.cascade import Cascade, cascade
from gitsync.engine.ownership import Owners
from gitsync.engine.plan import Action, Change, Origin, served_ref
from gitsync.errors import KubeError
from gitsync.kube import Kube
from gitsync.model import (
    APP_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    PRUNE_ANNOTATION,
    Identity,
    ObjectRef,
)


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
    # What each deleted Namespace or CRD took along with it.
    cascades: tuple[tuple[ObjectRef, Cascade], ...] = ()


def guard_reason(
    *,
    desired: int,
    inventory: int,
    candidates: int,
    allow_empty: bool,
    allow_mass: bool,
    cascades: Sequence[tuple[ObjectRef, int]] = (),
) -> str:
    """Why pruning should not happen at all, or "" if it may.

    ``candidates`` includes what ``cascades`` take along: (the Namespace or CRD, count).
    """
    if candidates == 0:
        return ""
    if desired == 0 and not allow_empty:
        return (
            f"the render is empty and would delete all {inventory} object(s); "
            "set prune.allowEmpty to allow it"
        )
    if candidates * 2 > inventory and not allow_mass:
        along = "".join(
            f", counting {n} that deleting {ref.kind} {ref.name} takes along"
            for ref, n in cascades
            if n
        )
        return (
            f"{candidates} of {inventory} object(s) would be deleted (more than half{along}); "
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
    wait_timeout: float = 120.0,
) -> PruneResult:
    """Delete the plan's prune candidates in reverse apply order, rank by rank.

    Each (wave, rank) waits until its deletions have finished (finalizers included)
    before the next starts: custom resources are gone before their CRD, workloads before
    their Namespace. What a Namespace or CRD delete takes along counts in the mass-delete
    guard, and one holding another app's objects is not deleted. What an unsettled sync
    created (``Origin.PENDING``) is never part of a healthy state, so removing it is
    undoing that sync, not pruning the app: the guards do not hold it.
    """
    candidates = [c for c in changes if c.action is Action.PRUNE]
    ids = {c.ref.identity() for c in candidates}
    cascades = {
        c.ref.identity(): cascade(kube, c.ref, c.live, skip=ids)
        for c in candidates
        if c.live is not None
    }
    guarded = [c for c in candidates if c.origin is not Origin.PENDING]
    taken = [
        (c.ref, len(cascades[c.ref.identity()].refs))
        for c in guarded
        if c.ref.identity() in cascades
    ]
    guard = guard_reason(
        desired=desired_count,
        inventory=inventory_count,
        candidates=len(guarded) + sum(n for _, n in taken),
        allow_empty=allow_empty,
        allow_mass=allow_mass,
        cascades=taken,
    )
    if guard:
        held = {c.ref.identity() for c in guarded}
        candidates = [c for c in candidates if c.ref.identity() not in held]
    run = _Run(kube=kube, app=app, owners=owners)
    if guard:
        run.kept.extend(c.ref for c in guarded)
    groups = _groups(candidates)
    for i, group in enumerate(groups):
        waiting = run.delete(group, cascades)
        if not _wait_gone(kube, waiting, wait_timeout):
            for later in groups[i + 1 :]:
                for c in later:
                    run.skipped.append(Skipped(ref=c.ref, reason=_STILL_DELETING))
                    run.kept.append(c.ref)
            break
    return PruneResult(
        deleted=tuple(run.deleted),
        skipped=tuple(run.skipped),
        kept=tuple(run.kept),
        guard=guard,
        cascades=tuple(
            (c.ref, cascades[c.ref.identity()])
            for c in candidates
            if c.ref in run.deleted and cascades.get(c.ref.identity(), Cascade()).refs
        ),
    )


_STILL_DELETING = "objects of an earlier prune rank are still being deleted; retried next sync"


@dataclass(slots=True, kw_only=True)
class _Run:
    """One prune's bookkeeping."""

    kube: Kube
    app: str
    owners: Owners | None
    deleted: list[ObjectRef] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    kept: list[ObjectRef] = field(default_factory=list)

    def delete(
        self, group: Sequence[Change], cascades: Mapping[Identity, Cascade]
    ) -> list[tuple[ObjectRef, str]]:
        """Delete one rank in parallel; return what must be waited for (ref, uid)."""
        todo: list[tuple[Change, str]] = []
        for c in group:
            reason = self.why_not(c, cascades.get(c.ref.identity(), Cascade()))
            if reason:
                self.skipped.append(Skipped(ref=c.ref, reason=reason))
                if reason.startswith("it holds"):
                    self.kept.append(c.ref)
                continue
            assert c.live is not None  # noqa: S101 - why_not rejects None
            todo.append((c, str(c.live["metadata"].get("uid", ""))))
        waiting: list[tuple[ObjectRef, str]] = []
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(todo)))) as pool:
            results = list(pool.map(lambda cu: self._delete_one(cu[0].ref, cu[1]), todo))
        for (c, uid), error in zip(todo, results, strict=True):
            if error:
                self.skipped.append(Skipped(ref=c.ref, reason=f"delete failed: {error}"))
                self.kept.append(c.ref)
                continue
            self.deleted.append(c.ref)
            if _lingers(c):
                waiting.append((c.ref, uid))
        return waiting

    def why_not(self, c: Change, taken: Cascade) -> str:
        reason = _not_ours(c.live, self.app)
        if reason:
            return reason
        other = self.owners.listed_by(c.ref.identity()) if self.owners is not None else ""
        if other:
            return f"app {other!r} lists it too"
        others = sorted(taken.apps - {self.app})
        if others:
            return f"it holds objects of app(s) {', '.join(others)}, which its deletion would take"
        return ""

    def _delete_one(self, ref: ObjectRef, uid: str) -> str:
        try:
            self.kube.delete(served_ref(self.kube, ref), uid=uid)
        except KubeError as e:
            return str(e)
        return ""


def _groups(candidates: Sequence[Change]) -> list[list[Change]]:
    """Reverse apply order: (wave, rank) from the live object, highest first."""
    by_key: dict[tuple[int, int], list[Change]] = {}
    for c in candidates:
        try:
            wave = order.wave_of(c.live) if c.live is not None else 0
        except ValueError:
            wave = 0
        by_key.setdefault((wave, order.rank_of(c.ref.group, c.ref.kind)), []).append(c)
    return [sorted(by_key[k], key=lambda c: c.ref) for k in sorted(by_key, reverse=True)]


def _lingers(c: Change) -> bool:
    """Deletes that may not finish at once: finalizers, Namespaces, CRDs, graceful Pods."""
    meta = (c.live or {}).get("metadata") or {}
    return bool(meta.get("finalizers")) or c.ref.kind in _SLOW_KINDS


_SLOW_KINDS = frozenset({"Namespace", "CustomResourceDefinition", "Pod"})


def _wait_gone(kube: Kube, waiting: Sequence[tuple[ObjectRef, str]], timeout: float) -> bool:
    """Until each (ref, uid) is gone (or replaced by a new incarnation), or the deadline."""
    deadline = time.monotonic() + timeout
    left = list(waiting)
    while left:
        still = []
        for ref, uid in left:
            try:
                live = kube.get(served_ref(kube, ref))
            except KubeError:
                still.append((ref, uid))
                continue
            if live is not None and live["metadata"].get("uid") == uid:
                still.append((ref, uid))
        left = still
        if left and time.monotonic() > deadline:
            return False
        if left:
            time.sleep(0.2)
    return True


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
