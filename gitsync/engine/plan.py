"""Plan: what applying a ManifestSet would change, field by field.

Desired state is the server-side-apply dry-run result, not the raw manifest: both sides
of the diff are then defaulted by the same API server, so a resync of an unchanged commit
shows nothing. Objects whose manifest and owned-field fingerprint match what the last
sync recorded are ``unchanged`` without any call beyond one LIST per kind.

With the controller's informers, the live side comes from their caches, under one rule:
the cache may decide *unchanged* (the fingerprint, memoized per object version, equals the
recorded one: a no-op round makes no call and decodes nothing), but whatever leads to a
write or a delete is confirmed against the API. Objects the cache does not show as
unchanged (creates, drifted objects, stale inventory entries, label backstop candidates)
are read again with a GET when there are few, else with today's labelled LIST of their
kinds. A cache that lags can thus only delay a change by a round: it never makes an
object another app owns look like ours, nor an inventory entry whose object still exists
look gone.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from gitsync.config import IgnoreRule
from gitsync.drift.compare import (
    ABSENT,
    FieldPath,
    Item,
    differences,
    gitsync_applied_at,
    hpa_targets,
    ignored_by_annotation,
    path_text,
)
from gitsync.engine import ignores
from gitsync.engine.inventory import AppState, InventoryEntry
from gitsync.engine.ownership import Owners
from gitsync.errors import ApplyError, ConflictError, InvalidError, KubeError
from gitsync.fields import content_hash, fingerprint, upgraded_managed_fields
from gitsync.informers.hub import HPA, Informers
from gitsync.informers.store import Store
from gitsync.kube import Kube, Resource
from gitsync.model import (
    APP_LABEL,
    RECREATE_ANNOTATION,
    Identity,
    KubeObject,
    Manifest,
    ManifestSet,
    ObjectRef,
    field_manager,
    is_controlled,
)

MASK = "***"
_VOLATILE_META = (
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


class Origin(enum.StrEnum):
    """Why gitsync believes a prune candidate is its own."""

    INVENTORY = "inventory"  # recorded by a settled sync
    PENDING = "pending"  # created by a sync that never settled (write-ahead record)
    LABEL = "label"  # labelled for the app, in neither Git nor the state (backstop)


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    PRUNE = "prune"


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldDiff:
    """One field that differs: ``live`` → ``desired`` (Secret values already masked)."""

    path: str
    live: Any
    desired: Any
    parts: FieldPath = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    ref: ObjectRef
    action: Action
    source: str = ""
    manifest: Manifest | None = None
    diff: tuple[FieldDiff, ...] = ()
    live: KubeObject | None = field(default=None, repr=False, compare=False)
    # The kind is defined by a CRD in the same set; it is planned after the CRD stage.
    deferred: bool = False
    # For PRUNE only: how the object is known to be the app's.
    origin: Origin = Origin.INVENTORY
    # Fields left to others (ignore rules, an HPA, a controller): not sent, claim released.
    skipped: tuple[FieldPath, ...] = ()
    # What is sent when it differs from the manifest (the manifest without ``skipped``).
    sent: KubeObject | None = field(default=None, repr=False, compare=False)
    # Fields another manager owns that this apply takes back, e.g. 'kubectl-edit: .spec.x'.
    conflicts: tuple[str, ...] = ()
    # UNCHANGED by the informer cache: ``live`` is None, ``recorded`` is its inventory
    # entry as it stands, and ``cached`` decodes the object if someone needs it (the gate).
    recorded: InventoryEntry | None = None
    cached: Callable[[], KubeObject | None] | None = field(default=None, repr=False, compare=False)

    @property
    def body(self) -> KubeObject:
        """What the apply sends."""
        if self.sent is not None:
            return self.sent
        assert self.manifest is not None  # noqa: S101 - PRUNE changes are never sent
        return self.manifest.obj


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    changes: tuple[Change, ...]

    def by_action(self, action: Action) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action is action)

    def counts(self) -> dict[str, int]:
        return {a.value: len(self.by_action(a)) for a in Action}

    @property
    def in_sync(self) -> bool:
        return all(c.action is Action.UNCHANGED for c in self.changes)


# --- normalization and diff (pure) ----------------------------------------------------


def normalize(obj: Mapping[str, Any]) -> KubeObject:
    """Drop what the server owns or changes on every write (status, versions, uids)."""
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(out.get("metadata") or {})
    for key in _VOLATILE_META:
        meta.pop(key, None)
    out["metadata"] = meta
    return out


def _is_secret(obj: Mapping[str, Any]) -> bool:
    return obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1"


def mask_secret(obj: Mapping[str, Any]) -> KubeObject:
    """A copy with every Secret value replaced by ``***``; other kinds returned as is."""
    if not _is_secret(obj):
        return dict(obj)
    out = dict(obj)
    for key in ("data", "stringData"):
        if isinstance(out.get(key), dict):
            out[key] = dict.fromkeys(out[key], MASK)
    return out


def diff_objects(live: Mapping[str, Any], desired: Mapping[str, Any]) -> tuple[FieldDiff, ...]:
    """Field-level differences between two normalized objects, Secret values masked.

    The same merge-key-aware comparison and field paths as drift
    (``spec.template.spec.containers[name=web].image``): what ``gitsync diff`` shows is
    what a sync changes, and what drift would report.
    """
    live_n, desired_n = normalize(live), normalize(desired)
    secret = _is_secret(desired_n)
    found: dict[FieldPath, FieldDiff] = {}
    for d in differences(desired_n, live_n):
        found[d.parts] = _field_diff(d.parts, live=d.live, desired=d.desired, secret=secret)
    for d in differences(live_n, desired_n):  # what the apply removes
        if d.parts not in found and not _under_any(d.parts, found):
            found[d.parts] = _field_diff(d.parts, live=d.desired, desired=d.live, secret=secret)
    return tuple(sorted(found.values(), key=lambda f: f.path))


def _under_any(parts: FieldPath, found: Mapping[FieldPath, FieldDiff]) -> bool:
    return any(parts[: len(p)] == p for p in found if len(p) < len(parts))


def _field_diff(parts: FieldPath, *, live: Any, desired: Any, secret: bool) -> FieldDiff:
    live_v = None if live is ABSENT else live
    desired_v = None if desired is ABSENT else desired
    if secret and parts[:1] in (("data",), ("stringData",)):
        changed = live_v is not None and desired_v is not None
        live_v = None if live_v is None else MASK
        desired_v = None if desired_v is None else f"{MASK} (changed)" if changed else MASK
    return FieldDiff(path=path_text(parts), live=live_v, desired=desired_v, parts=parts)


# --- planning against the cluster -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveIndex:
    """The app's live objects, found with one labelled LIST per kind, or confirmed with
    the API after an informer lookup; ``cached`` are the app's objects the informer cache
    found unchanged (not read again, not in ``objects``)."""

    objects: dict[Identity, KubeObject]
    cached: frozenset[Identity] = frozenset()

    def has(self, ident: Identity) -> bool:
        return ident in self.objects or ident in self.cached


def list_live(kube: Kube, app: str, resources: Iterable[Resource]) -> LiveIndex:
    """One LIST per kind, all namespaces, selected by the app label."""
    objects: dict[Identity, KubeObject] = {}
    unique = {(r.group, r.kind): r for r in resources}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(
            lambda r: kube.list_objects(r, label_selector=f"{APP_LABEL}={app}"),
            unique.values(),
        )
        for items, _rv in results:
            for item in items:
                objects[ObjectRef.of(item).identity()] = item
    return LiveIndex(objects)


def _served(kube: Kube, ref: ObjectRef, *, refresh: bool) -> Resource | None:
    disc = kube.discover(refresh=refresh)
    return disc.for_ref(ref)


def _finished_job(m: Manifest, entry: InventoryEntry) -> bool:
    spec = m.obj.get("spec") or {}
    return (
        (m.ref.group, m.ref.kind) == ("batch", "Job")
        and spec.get("ttlSecondsAfterFinished") is not None
        and entry.manifest_hash == content_hash(m.obj)
    )


def served_ref(kube: Kube, ref: ObjectRef) -> ObjectRef:
    """``ref`` at a version the API serves now: a version can stop being served while its
    objects live on (a CRD moved to v2), and looking them up by the old one orphans them."""
    disc = kube.discover()
    if disc.for_ref(ref) is not None:
        return ref
    res = disc.preferred.get((ref.group, ref.kind))
    return ref if res is None else replace(ref, version=res.version)


def _at_served_versions(kube: Kube, entries: list[InventoryEntry]) -> list[InventoryEntry]:
    return [replace(e, ref=served_ref(kube, e.ref)) for e in entries]


def make_plan(
    manifests: ManifestSet,
    *,
    kube: Kube,
    app: str,
    state: AppState,
    owners: Owners | None = None,
    ignore: Sequence[IgnoreRule] = (),
    workers: int = 16,
    informers: Informers | None = None,
) -> Plan:
    """Compare the desired set with the cluster; only ``kube`` reads, nothing is written.

    Discovery is taken as cached: the caller refreshed it before rendering. With
    ``owners``, an object another gitsync app owns is refused, naming both apps. With
    ``informers`` whose caches of every kind involved are synced, the live side comes
    from them as the module docstring says; otherwise from one labelled LIST per kind.
    """
    known: dict[Identity, InventoryEntry] = {e.ref.identity(): e for e in state.inventory}
    desired_ids = {m.ref.identity() for m in manifests.manifests}

    resources: list[Resource] = []
    deferred: list[Manifest] = []
    ready: list[tuple[Manifest, Resource]] = []
    for m in manifests.manifests:
        res = _served(kube, m.ref, refresh=False)
        if res is None:
            deferred.append(m)
        else:
            ready.append((m, res))
            resources.append(res)
    stale = _at_served_versions(
        kube, [e for e in state.inventory if e.ref.identity() not in desired_ids]
    )
    unsettled = _at_served_versions(
        kube,
        [
            e
            for e in state.pending
            if e.ref.identity() not in desired_ids and e.ref.identity() not in known
        ],
    )
    for e in (*stale, *unsettled):
        res = _served(kube, e.ref, refresh=False)
        if res is not None:
            resources.append(res)
    manager = field_manager(app)
    stores = _synced_stores(informers, resources) if informers is not None else None
    early: dict[Identity, Change] = {}
    if stores is None:
        live = list_live(kube, app, resources)
    else:
        early, live = _from_cache(
            kube,
            app,
            stores,
            ready=ready,
            known=known,
            doubtful=[*stale, *unsettled],
            recorded=_recorded(state, desired_ids),
            manager=manager,
        )
    new_namespaces = _new_namespaces(kube, manifests, live)
    autoscaled = _Autoscaled(kube, manifests, informers)

    def leave(m: Manifest) -> Callable[[KubeObject | None], tuple[FieldPath, ...]]:
        return lambda current: ignores.skipped(
            m.obj,
            current,
            rules=ignore,
            autoscaled=current is not None and autoscaled(m.ref),
        )

    def plan_one(item: tuple[Manifest, Resource]) -> Change:
        m, _res = item
        ref = m.ref
        current = live.objects.get(ref.identity())
        entry = known.get(ref.identity())
        if (
            current is not None
            and entry is not None
            and entry.manifest_hash == content_hash(m.obj)
            and entry.fingerprint
            # An object whose drift is ignored is written when Git changes, never to
            # revert a change made in the cluster.
            and (
                entry.fingerprint == fingerprint(current, manager)
                or ignored_by_annotation(m.obj, current)
            )
        ):
            return Change(
                ref=ref, action=Action.UNCHANGED, source=m.source, manifest=m, live=current
            )
        if current is None and entry is not None and _finished_job(m, entry):
            # A Job Git did not change, deleted by its own ttlSecondsAfterFinished: it ran.
            return Change(ref=ref, action=Action.UNCHANGED, source=m.source, manifest=m)
        if ref.namespace in new_namespaces:
            # Its Namespace does not exist yet, so neither does it, and a dry-run can only
            # answer 404: the apply stage, after the Namespace stage, validates it.
            return _deferred(m)
        return plan_object(kube, m, current, leave=leave(m), manager=manager)

    changes, failures = _plan_each(ready, early, plan_one, workers)
    if owners is not None:
        failures.extend(_taken(changes, live, owners, app))
    if failures:
        raise ApplyError(failures)
    changes.extend(_deferred(m) for m in deferred)
    changes.extend(_prune_candidates(state, desired_ids, stale, unsettled, live))
    return Plan(changes=tuple(changes))


def _plan_each(
    ready: Sequence[tuple[Manifest, Resource]],
    early: Mapping[Identity, Change],
    plan_one: Callable[[tuple[Manifest, Resource]], Change],
    workers: int,
) -> tuple[list[Change], list[tuple[str, str]]]:
    """``plan_one`` of each, in order, on threads; what the cache decided needs none."""
    results: list[Change | KubeError | None] = [early.get(m.ref.identity()) for m, _ in ready]
    todo = [i for i, result in enumerate(results) if result is None]
    if todo:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            planned = pool.map(_capture(plan_one), [ready[i] for i in todo])
            for i, result in zip(todo, planned, strict=True):
                results[i] = result
    changes: list[Change] = []
    failures: list[tuple[str, str]] = []
    for (m, _res), result in zip(ready, results, strict=True):
        if isinstance(result, KubeError):
            failures.append((f"{m.source}: {m.ref}", str(result)))
        elif result is not None:
            changes.append(result)
    return changes, failures


def _taken(
    changes: Iterable[Change], live: LiveIndex, owners: Owners, app: str
) -> list[tuple[str, str]]:
    """Objects that exist without this app's label and that another app owns."""
    out = []
    for c in changes:
        if c.live is None or c.ref.identity() in live.objects:
            continue
        other = owners.conflict(c.ref.identity(), c.live)
        if other:
            out.append(
                (
                    f"{c.source}: {c.ref}",
                    f"managed by gitsync app {other!r}; app {app!r} may not take it "
                    f"(to allow it, set adoptFrom: [{other}] on app {app!r})",
                )
            )
    return out


def _prune_candidates(
    state: AppState,
    desired: set[Identity],
    stale: list[InventoryEntry],
    unsettled: list[InventoryEntry],
    live: LiveIndex,
) -> list[Change]:
    """What the app owns and Git no longer wants, each with how we know it is ours."""
    out = [
        Change(ref=e.ref, action=Action.PRUNE, live=live.objects.get(e.ref.identity()))
        for e in stale
    ]
    out.extend(
        Change(
            ref=e.ref,
            action=Action.PRUNE,
            live=live.objects.get(e.ref.identity()),
            origin=Origin.PENDING,
        )
        for e in unsettled
    )
    # Backstop: labelled for this app and applied by it, yet neither desired nor recorded
    # anywhere. Objects a controller made (e.g. Pods from a template carrying our label)
    # are its to delete.
    recorded = _recorded(state, desired)
    manager = field_manager(state.app)
    out.extend(
        Change(ref=ObjectRef.of(obj), action=Action.PRUNE, live=obj, origin=Origin.LABEL)
        for ident, obj in live.objects.items()
        if ident not in recorded and _backstop(obj, manager)
    )
    return out


def _recorded(state: AppState, desired: set[Identity]) -> set[Identity]:
    """Everything the app knows as its own: desired, inventory, write-ahead records."""
    return (
        desired
        | {e.ref.identity() for e in (*state.inventory, *state.pending)}
        | {ObjectRef.of(o).identity() for o in state.adopted}
    )


def _backstop(obj: KubeObject, manager: str) -> bool:
    """A labelled object nobody recorded is pruned only if no controller made it and
    this app's gitsync applied it: a look-alike labelled by hand is not ours to delete."""
    return not is_controlled(obj) and bool(gitsync_applied_at(obj, manager=manager))


# --- the live side from the informers -------------------------------------------------

# Objects to confirm with one GET each; more than this, and their kinds are LISTed.
CONFIRM_GETS = 64


def _synced_stores(
    informers: Informers, resources: Iterable[Resource]
) -> dict[tuple[str, str], tuple[Resource, Store]] | None:
    """The managed-objects cache of every kind, or None while one is not synced yet (its
    informer is started now, so the next round finds it warm) or may not be read."""
    found = {(r.group, r.kind): (r, informers.managed(r.group, r.kind)) for r in resources}
    if not all(i.synced and not i.forbidden for _r, i in found.values()):
        return None
    return {k: (r, i.store) for k, (r, i) in found.items()}


def _from_cache(
    kube: Kube,
    app: str,
    stores: Mapping[tuple[str, str], tuple[Resource, Store]],
    *,
    ready: Sequence[tuple[Manifest, Resource]],
    known: Mapping[Identity, InventoryEntry],
    doubtful: Sequence[InventoryEntry],
    recorded: set[Identity],
    manager: str,
) -> tuple[dict[Identity, Change], LiveIndex]:
    """What the cache finds unchanged, and the rest of the app's objects confirmed with
    the API (see the module docstring)."""
    ours = {k: set(store.idents(label=app)) for k, (_res, store) in stores.items()}
    unchanged: dict[Identity, Change] = {}
    confirm: dict[Identity, ObjectRef] = {}
    for m, res in ready:
        ident = m.ref.identity()
        kind = (res.group, res.kind)
        change = _unchanged_in_cache(
            stores[kind][1], m, known.get(ident), mine=ident in ours[kind], manager=manager
        )
        if change is None:
            confirm[ident] = m.ref
        else:
            unchanged[ident] = change
    for e in doubtful:  # prune candidates: a delete is never decided by the cache
        if (e.ref.group, e.ref.kind) in stores:  # else not served: nothing to find
            confirm.setdefault(e.ref.identity(), e.ref)
    for kind, idents in ours.items():
        res, store = stores[kind]
        for ident in idents - recorded - confirm.keys():
            if store.memo(ident, f"backstop:{manager}", lambda o: _backstop(o, manager)):
                _g, _k, namespace, name = ident
                confirm[ident] = ObjectRef(
                    group=res.group,
                    version=res.version,
                    kind=res.kind,
                    namespace=namespace,
                    name=name,
                )
    objects = _confirm(kube, app, confirm.values()) if len(confirm) <= CONFIRM_GETS else None
    if objects is None:
        kinds = {(r.group, r.kind) for r in confirm.values()}
        listed = list_live(kube, app, [r for k, (r, _s) in stores.items() if k in kinds])
        objects = {i: o for i, o in listed.objects.items() if i not in unchanged}
    return unchanged, LiveIndex(objects, cached=frozenset(unchanged))


def _unchanged_in_cache(
    store: Store, m: Manifest, entry: InventoryEntry | None, *, mine: bool, manager: str
) -> Change | None:
    """UNCHANGED if the cache says so (as ``plan_one`` decides it from a LIST), else None."""
    if entry is None or entry.manifest_hash != content_hash(m.obj):
        return None
    ident = m.ref.identity()
    if not mine:
        if _finished_job(m, entry):
            return Change(ref=m.ref, action=Action.UNCHANGED, source=m.source, manifest=m)
        return None
    if not entry.fingerprint:
        return None
    found = store.memo(ident, f"fingerprint:{manager}", lambda o: fingerprint(o, manager))
    if found is None:
        return None
    if found != entry.fingerprint and not (
        ignored_by_annotation(m.obj) or ignored_by_annotation(store.get(ident))
    ):
        return None
    return Change(
        ref=m.ref,
        action=Action.UNCHANGED,
        source=m.source,
        manifest=m,
        recorded=InventoryEntry(ref=m.ref, manifest_hash=entry.manifest_hash, fingerprint=found),
        cached=lambda: store.get(ident),
    )


def _confirm(kube: Kube, app: str, refs: Iterable[ObjectRef]) -> dict[Identity, KubeObject] | None:
    """The objects of ``refs`` that exist with this app's label, one GET each; None if a
    GET failed otherwise than 404 (say, forbidden: the LIST path knows the scopes)."""
    todo = list(refs)
    if not todo:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
        results = list(pool.map(_capture(kube.get), todo))
    out: dict[Identity, KubeObject] = {}
    for ref, obj in zip(todo, results, strict=True):
        if isinstance(obj, KubeError):
            return None
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        if obj is not None and labels.get(APP_LABEL) == app:
            out[ref.identity()] = obj
    return out


class _Autoscaled:
    """Whether an HPA scales a workload: HPAs in the set and live ones, listed once and
    only if some workload is dry-run at all (an unchanged resync never asks). With the
    controller's informers, live HPAs come from their one cluster-wide cache once it is
    synced (until then, from the LIST)."""

    def __init__(
        self, kube: Kube, manifests: ManifestSet, informers: Informers | None = None
    ) -> None:
        self._kube = kube
        self._informers = informers
        self._desired = [
            m.obj for m in manifests.manifests if m.ref.kind == "HorizontalPodAutoscaler"
        ]
        self._targets: frozenset[tuple[str, str, str]] | None = None
        self._cached = False
        self._lock = threading.Lock()

    def __call__(self, ref: ObjectRef) -> bool:
        with self._lock:
            if self._targets is None:
                hpas = list(self._desired)
                res = self._kube.discover().resource("autoscaling", "v2", "HorizontalPodAutoscaler")
                self._cached = (
                    self._informers is not None and self._informers.everything(*HPA).synced
                )
                if res is not None and not self._cached:
                    hpas += self._kube.list_objects(res)[0]
                self._targets = hpa_targets(hpas)
            if (ref.namespace, ref.kind, ref.name) in self._targets:
                return True
        return self._cached and self._informers is not None and self._informers.autoscaled(ref)


def _new_namespaces(kube: Kube, manifests: ManifestSet, live: LiveIndex) -> frozenset[str]:
    """Namespaces this set creates: neither listed with our label nor existing at all."""
    candidates = [
        m.ref
        for m in manifests.manifests
        if m.ref.kind == "Namespace" and not m.ref.group and not live.has(m.ref.identity())
    ]
    return frozenset(ref.name for ref in candidates if kube.get(ref) is None)


def _deferred(m: Manifest) -> Change:
    return Change(
        ref=m.ref,
        action=Action.CREATE,
        source=m.source,
        manifest=m,
        diff=_whole(m.obj),
        deferred=True,
    )


def plan_object(
    kube: Kube,
    m: Manifest,
    current: KubeObject | None,
    *,
    leave: Callable[[KubeObject | None], tuple[FieldPath, ...]] = lambda _: (),
    manager: str,
) -> Change:
    """Dry-run one object and diff it against what is live.

    Fields ``leave`` names are not sent (and their differences not shown); fields another
    manager owns that the apply would take back are named in ``conflicts``.
    """
    skipped = leave(current)
    try:
        sent = ignores.without(m.obj, skipped) if skipped else m.obj
        result, conflicts = _dry_run(kube, sent, manager)
    except InvalidError as e:
        if "immutable" not in str(e):
            raise
        annotations = (m.obj.get("metadata") or {}).get("annotations") or {}
        if annotations.get(RECREATE_ANNOTATION) != "true":
            msg = f'{e} (set annotation {RECREATE_ANNOTATION}: "true" to delete and recreate it)'
            raise InvalidError(msg, status=e.status, reason=e.reason) from e
        # Opted in: the apply stage deletes and recreates it, in its stage's turn.
        recreate = FieldDiff(path="(object)", live="immutable field changed", desired="recreate")
        return Change(
            ref=m.ref,
            action=Action.UPDATE,
            source=m.source,
            manifest=m,
            diff=(recreate,),
            live=current,
        )
    if current is None and result.get("metadata", {}).get("resourceVersion"):
        # It exists but without our label (adoption): diff against the real object.
        current = kube.get(m.ref)
        skipped = leave(current)
        if skipped:
            result, conflicts = _dry_run(kube, ignores.without(m.obj, skipped), manager)
    if current is None:
        return Change(
            ref=m.ref, action=Action.CREATE, source=m.source, manifest=m, diff=_whole(m.obj)
        )
    diff = tuple(
        d for d in diff_objects(current, result) if not any(_covers(p, d.parts) for p in skipped)
    )
    if not diff and upgraded_managed_fields(current, manager) is not None:
        # Fields owned by an earlier client-side apply or by the shared manager of older
        # releases move to this app's manager: an apply that changes no value does it.
        diff = (FieldDiff(path="metadata.managedFields", live="(other managers)", desired=manager),)
    action = Action.UPDATE if diff else Action.UNCHANGED
    return Change(
        ref=m.ref,
        action=action,
        source=m.source,
        manifest=m,
        diff=diff,
        live=current,
        skipped=skipped,
        sent=ignores.without(m.obj, skipped) if skipped else None,
        conflicts=conflicts if diff else (),
    )


_CONFLICT = re.compile(r'conflicts? with "([^"]+)"(?: with subresource "([^"]+)")?[^:]*:(.*)', re.S)


def _dry_run(kube: Kube, obj: KubeObject, manager: str) -> tuple[KubeObject, tuple[str, ...]]:
    """The SSA dry-run result, and who owns what the apply would take (forced anyway)."""
    try:
        return kube.apply(obj, dry_run=True, force=False, manager=manager), ()
    except ConflictError as e:
        found = _CONFLICT.findall(str(e))
        conflicts = tuple(f"{who}: {fields.strip()}" for who, _sub, fields in found) or (str(e),)
    return kube.apply(obj, dry_run=True, manager=manager), conflicts


def _covers(prefix: FieldPath, parts: FieldPath) -> bool:
    """``parts`` lies at or under ``prefix`` (list items compared by merge key)."""
    if len(parts) < len(prefix):
        return False
    for a, b in zip(prefix, parts, strict=False):
        if isinstance(a, Item) and isinstance(b, Item):
            if ((a.key or b.key) and a.key != b.key) or (not a.key and a.index != b.index):
                return False
        elif a != b:
            return False
    return True


def _whole(obj: KubeObject) -> tuple[FieldDiff, ...]:
    return diff_objects({}, {"metadata": {}} | mask_secret(obj))


def _capture(fn: Any) -> Any:
    def run(arg: Any) -> Any:
        try:
            return fn(arg)
        except KubeError as e:
            return e

    return run
