"""Apply a Plan: stage by stage in dependency order, in parallel within a stage.

A stage must fully succeed before the next starts, so a broken ConfigMap never gets a
Deployment rolled onto it. CRDs must be Established (and discovery refreshed) before
their custom resources; Namespaces Active before what lives in them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gitsync.drift.compare import FieldPath
from gitsync.engine import ignores, order
from gitsync.engine.inventory import InventoryEntry
from gitsync.engine.plan import Action, Change, Plan
from gitsync.errors import InvalidError, KubeError
from gitsync.fields import content_hash, fingerprint, upgraded_managed_fields
from gitsync.health.gate import default_timeout, wait_healthy
from gitsync.kube import Kube
from gitsync.model import RECREATE_ANNOTATION, KubeObject, Manifest, ObjectRef

if TYPE_CHECKING:
    from gitsync.informers.hub import Informers


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    ref: ObjectRef
    source: str
    message: str
    # The API server's HTTP status; 4xx means the commit itself is wrong, not the moment.
    status: int = 0
    # The commit's own objects failed (an earlier wave never became healthy).
    commit_fault: bool = False

    @property
    def permanent(self) -> bool:
        return self.commit_fault or (400 <= self.status < 500 and self.status not in (408, 429))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.ref}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedSet:
    """What an apply wrote and what the app now owns; partial if ``failures``."""

    entries: tuple[InventoryEntry, ...]
    written: tuple[ObjectRef, ...]
    failures: tuple[Failure, ...]
    objects: tuple[KubeObject, ...]
    # Unchanged objects the plan left in the informer cache: decoded only if asked.
    cached: tuple[Callable[[], KubeObject | None], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    def live_objects(self) -> list[KubeObject]:
        """``objects`` and the cached unchanged ones (as the cache holds them now)."""
        later = (load() for load in self.cached)
        return [*self.objects, *(o for o in later if o is not None)]


Progress = Callable[[int, int], None]


def apply_plan(
    plan: Plan,
    *,
    kube: Kube,
    workers: int = 16,
    ready_timeout: float = 60.0,
    progress: Progress | None = None,
    manager: str,
    cancel: threading.Event | None = None,
    informers: Informers | None = None,
) -> AppliedSet:
    """Write every create/update of ``plan``; stop after the first stage with a failure.

    Waves wait for each other, as Argo CD's sync waves and Helm's hooks do: before the
    first stage of a later wave, what the earlier wave wrote must be healthy (a migration
    Job in a pre-install hook has finished before the Deployment that needs it rolls).
    """
    desired = [c for c in plan.changes if c.action is not Action.PRUNE and c.manifest]
    by_id = {c.ref.identity(): c for c in desired}
    stages = order.stages([c.manifest for c in desired if c.manifest is not None])
    total = sum(1 for c in desired if c.action is not Action.UNCHANGED)
    done = 0

    entries: list[InventoryEntry] = []
    written: list[ObjectRef] = []
    objects: list[KubeObject] = []
    cached: list[Callable[[], KubeObject | None]] = []
    failures: list[Failure] = []
    wave: list[KubeObject] = []  # written in the current wave, to gate before the next
    for i, stage in enumerate(stages):
        if wave and stage.wave != stages[i - 1].wave:
            failure = _gate_wave(kube, stages[i - 1].wave, wave, cancel, informers)
            if failure is not None:
                failures.append(failure)
                break
            wave = []
        pairs = [(by_id[m.ref.identity()], m) for m in stage.manifests]
        todo = [(c, m) for c, m in pairs if c.action is not Action.UNCHANGED]
        for c, m in pairs:
            if c.action is Action.UNCHANGED:
                _unchanged(c, m, manager, entries=entries, objects=objects, cached=cached)
        if not todo:
            continue
        with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            results = list(pool.map(lambda cm: _apply_one(kube, cm[0], cm[1], manager), todo))
        for (change, manifest), result in zip(todo, results, strict=True):
            if isinstance(result, Failure):
                failures.append(result)
                continue
            entries.append(_entry(manifest, result, manager))
            written.append(change.ref)
            objects.append(result)
            wave.append(result)
        done += len(todo)
        if progress is not None:
            progress(done, total)
        if failures:
            break
        try:
            _wait_ready(kube, [r for r in results if not isinstance(r, Failure)], ready_timeout)
        except KubeError as e:
            failures.append(Failure(ref=todo[0][0].ref, source="", message=str(e)))
            break
    return AppliedSet(
        entries=tuple(entries),
        written=tuple(written),
        failures=tuple(failures),
        objects=tuple(objects),
        cached=tuple(cached),
    )


def _gate_wave(
    kube: Kube,
    number: int,
    objects: list[KubeObject],
    cancel: threading.Event | None,
    informers: Informers | None,
) -> Failure | None:
    """None once wave ``number``'s writes are healthy; else why the next wave must wait."""
    verdict = wait_healthy(
        kube, objects, timeout=default_timeout(objects), cancel=cancel, informers=informers
    )
    if verdict.healthy:
        return None
    culprit = verdict.culprit
    ref = culprit.ref if culprit is not None else ObjectRef.of(objects[0])
    if verdict.interrupted:
        return Failure(ref=ref, source="", message=f"wave {number}: interrupted by shutdown")
    return Failure(
        ref=ref,
        source="",
        message=f"wave {number} did not become healthy, so later waves were not applied: "
        f"{verdict.reason}",
        commit_fault=True,
    )


def _unchanged(
    c: Change,
    m: Manifest,
    manager: str,
    *,
    entries: list[InventoryEntry],
    objects: list[KubeObject],
    cached: list[Callable[[], KubeObject | None]],
) -> None:
    """Record an object the plan found unchanged, as it is live."""
    if c.recorded is not None and c.cached is not None:
        # Unchanged by the informer cache: its entry stands, nothing is decoded.
        entries.append(c.recorded)
        cached.append(c.cached)
        return
    live = c.live or {}
    entries.append(_entry(m, live, manager))
    if c.live is not None:  # None: a finished Job its TTL removed
        objects.append(live)


def _entry(manifest: Manifest, live: KubeObject, manager: str) -> InventoryEntry:
    return InventoryEntry(
        ref=manifest.ref,
        manifest_hash=content_hash(manifest.obj),
        fingerprint=fingerprint(live, manager),
    )


def _apply_one(
    kube: Kube, change: Change, manifest: Manifest, manager: str
) -> KubeObject | Failure:
    obj = change.body
    try:
        if change.live is not None:
            live = _adopt_client_side_fields(kube, change.ref, change.live, manager)
            _release(kube, change.ref, live, change.skipped, manager)
        return kube.apply(obj, manager=manager)
    except InvalidError as e:
        annotations = obj.get("metadata", {}).get("annotations") or {}
        if "immutable" in str(e) and annotations.get(RECREATE_ANNOTATION) == "true":
            return _recreate(kube, change, manifest, manager)
        hint = (
            f' (immutable field: set annotation {RECREATE_ANNOTATION}: "true" to let gitsync '
            "delete and recreate it)"
            if "immutable" in str(e)
            else ""
        )
        return Failure(
            ref=change.ref, source=change.source, message=_api_message(e) + hint, status=e.status
        )
    except KubeError as e:
        return Failure(
            ref=change.ref, source=change.source, message=_api_message(e), status=e.status
        )


def _adopt_client_side_fields(
    kube: Kube, ref: ObjectRef, live: KubeObject, manager: str
) -> KubeObject:
    """Take over what a client-side `kubectl apply` owns, so later removals in Git apply."""
    upgraded = upgraded_managed_fields(live, manager)
    if upgraded is None:
        return live
    return _set_managed_fields(kube, ref, live, upgraded, manager)


def _release(
    kube: Kube, ref: ObjectRef, live: KubeObject, paths: tuple[FieldPath, ...], manager: str
) -> None:
    """Give up gitsync's claim on fields it stops sending, so the apply leaves their value
    to whoever owns it instead of removing it (e.g. ``spec.replicas`` under an HPA)."""
    released = ignores.release(live, manager, paths) if paths else None
    if released is not None:
        _set_managed_fields(kube, ref, live, released, manager)


def _set_managed_fields(
    kube: Kube, ref: ObjectRef, live: KubeObject, entries: list[Any], manager: str
) -> KubeObject:
    """Replace managedFields, only if nobody wrote since ``live`` was read."""
    rv = str(live["metadata"].get("resourceVersion", ""))
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "replace", "path": "/metadata/managedFields", "value": entries},
    ]
    return kube.json_patch(ref, ops, manager=manager)


def _api_message(e: KubeError) -> str:
    text = str(e)
    _, sep, rest = text.partition(": ")
    return rest if sep else text


def _recreate(
    kube: Kube, change: Change, manifest: Manifest, manager: str, timeout: float = 60.0
) -> KubeObject | Failure:
    """Delete and create again, for an opted-in immutable change."""
    try:
        kube.delete(change.ref, propagation="Foreground")
        deadline = time.monotonic() + timeout
        while kube.get(change.ref) is not None:
            if time.monotonic() > deadline:
                return Failure(
                    ref=change.ref,
                    source=change.source,
                    message=f"still terminating after {timeout:.0f}s; recreate abandoned",
                )
            time.sleep(0.2)
        return kube.apply(change.body, manager=manager)
    except KubeError as e:
        return Failure(
            ref=change.ref, source=change.source, message=_api_message(e), status=e.status
        )


def _wait_ready(kube: Kube, objs: list[KubeObject], timeout: float) -> None:
    """Block until CRDs are Established and Namespaces Active; refresh discovery after CRDs."""
    crds = [o for o in objs if o.get("kind") == "CustomResourceDefinition"]
    namespaces = [o for o in objs if o.get("kind") == "Namespace"]
    deadline = time.monotonic() + timeout
    for obj in crds + namespaces:
        ref = ObjectRef.of(obj)
        current: KubeObject | None = obj
        while not _is_ready(current):
            if time.monotonic() > deadline:
                msg = f"{ref} was not ready after {timeout:.0f}s"
                raise KubeError(msg)
            time.sleep(0.1)
            current = kube.get(ref)
    if crds:
        # A freshly established CRD may take a moment to appear in discovery, and a version
        # it stops serving a moment to leave it (prune must then look objects up by another).
        versions = [
            ((o["spec"]["group"], v["name"], o["spec"]["names"]["kind"]), v.get("served", True))
            for o in crds
            for v in o["spec"].get("versions", [])
        ]
        wanted = {key for key, served in versions if served}
        retired = {key for key, served in versions if not served}
        while True:
            disc = kube.discover(refresh=True)
            if all(disc.resource(*w) for w in wanted) and not any(
                disc.resource(*r) for r in retired
            ):
                return
            if time.monotonic() > deadline:
                msg = "discovery did not catch up with the CRDs: " + ", ".join(
                    sorted(
                        f"{g}/{v} {k} missing" for g, v, k in wanted if not disc.resource(g, v, k)
                    )
                    + sorted(
                        f"{g}/{v} {k} still served" for g, v, k in retired if disc.resource(g, v, k)
                    )
                )
                raise KubeError(msg)
            time.sleep(0.2)


def _is_ready(obj: KubeObject | None) -> bool:
    if obj is None:
        return False
    status = obj.get("status") or {}
    if obj.get("kind") == "Namespace":
        return bool(status.get("phase", "Active") == "Active")
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
