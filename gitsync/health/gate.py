"""The health gate: wait until every applied object is Current, one Failed, or time is up.

Two feeds keep the gate's picture live. In the controller, the shared informers
(``health.cached``): the gate sends no request of its own and judges again only what an
event touched, a workload with its own Pods. Without them (``gitsync sync --once``), the
gate's own LIST and WATCH per (kind, namespace) in progress (``health.watched``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from gitsync.health import cached, rules
from gitsync.health.rules import Health, Status
from gitsync.health.watched import WatchedFeed
from gitsync.kube import Kube
from gitsync.model import FIELD_MANAGER, Identity, KubeObject, ObjectRef

if TYPE_CHECKING:
    from gitsync.informers.hub import Informers

DEFAULT_PROGRESS_DEADLINE = 600
MARGIN_SECONDS = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectHealth:
    ref: ObjectRef
    health: Health


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The gate's answer: healthy, or the objects that failed or never finished."""

    healthy: bool
    failed: tuple[ObjectHealth, ...] = ()
    pending: tuple[ObjectHealth, ...] = ()
    seconds: float = 0.0
    # The wait was cut short by shutdown: no verdict on health either way.
    interrupted: bool = False
    # Unchanged by the commit and already unhealthy before it: reported, never blamed.
    preexisting: tuple[ObjectHealth, ...] = ()

    @property
    def timed_out(self) -> bool:
        """Still progressing at the deadline, with no failure signal."""
        return not self.healthy and not self.failed and not self.interrupted

    @property
    def culprit(self) -> ObjectHealth | None:
        return (self.failed or self.pending or (None,))[0]

    @property
    def reason(self) -> str:
        c = self.culprit
        if c is None:
            return ""
        prefix = "timed out: " if not self.failed else ""
        return f"{prefix}{c.ref}: {c.health.reason}"


def default_timeout(objects: Iterable[KubeObject]) -> float:
    """The longest deadline any workload in the set gives itself, plus a margin.

    Deployments and Jobs carry their own (``progressDeadlineSeconds``,
    ``activeDeadlineSeconds``); StatefulSets and DaemonSets have none, so they get the
    Deployment default stretched by ``minReadySeconds`` per replica.
    """
    deadlines = [_deadline(o) for o in objects]
    return float(max((d for d in deadlines if d is not None), default=60)) + MARGIN_SECONDS


def _deadline(obj: KubeObject) -> float | None:
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "Deployment":
        return float(spec.get("progressDeadlineSeconds", DEFAULT_PROGRESS_DEADLINE))
    if kind == "Job":
        return float(spec.get("activeDeadlineSeconds", DEFAULT_PROGRESS_DEADLINE))
    if kind in ("StatefulSet", "DaemonSet"):
        replicas = int(spec.get("replicas", 1) or 1)
        return DEFAULT_PROGRESS_DEADLINE + float(spec.get("minReadySeconds", 0)) * replicas
    return None


Progress = Callable[[int, int, int], None]


class _Feed(Protocol):
    """What keeps the gate's picture live: its own watches, or the informers."""

    def start(self, waiting: Collection[Identity]) -> None: ...

    def step(self, wait: float, verdicts: Mapping[Identity, Health]) -> dict[Identity, Health]:
        """Take in what arrived within ``wait`` seconds; new verdicts of what changed."""
        ...

    def close(self) -> None: ...


def wait_healthy(
    kube: Kube,
    objects: Sequence[KubeObject],
    *,
    timeout: float,
    on_progress: Progress | None = None,
    progress_every: float = 5.0,
    cancel: threading.Event | None = None,
    unchanged: frozenset[Identity] = frozenset(),
    informers: Informers | None = None,
) -> Verdict:
    """Block until all ``objects`` are Current (healthy), one is Failed, or time runs out.

    ``cancel`` (the controller's shutdown) ends the wait within a second with an
    ``interrupted`` verdict, which is neither healthy nor a reason to roll back. Objects in
    ``unchanged`` (the commit did not write them) that are already unhealthy when the wait
    starts are set aside as ``preexisting``: a commit is judged on what it changed.
    With ``informers`` the gate reads their caches and sends no LIST or WATCH itself.
    """
    started = time.monotonic()
    state = {ObjectRef.of(o).identity(): o for o in objects}
    # Server time of the newest apply: Pods created before it are not the new revision's.
    since = max((_applied_at(o) for o in objects), default="")
    verdicts = {i: rules.assess(o) for i, o in state.items()}  # as applied, before any Pod
    preexisting = tuple(
        ObjectHealth(ref=ObjectRef.of(state[i]), health=h)
        for i, h in sorted(verdicts.items())
        if i in unchanged and h.status is not Status.CURRENT
    )
    for o in preexisting:
        state.pop(o.ref.identity())
        verdicts.pop(o.ref.identity())
    counts = _counts(verdicts)
    if counts[Status.FAILED] or not counts[Status.IN_PROGRESS]:
        return replace(_verdict(state, verdicts, started), preexisting=preexisting)
    waiting = [i for i, h in verdicts.items() if h.status is Status.IN_PROGRESS]
    feed: _Feed
    if informers is not None and cached.covers(state[i] for i in waiting):
        feed = cached.CachedFeed(informers, state, since=since)
    else:
        feed = WatchedFeed(kube, state, since=since)
    try:
        # Inside the try: a LIST failing after some watches started must still stop them.
        feed.start(waiting)
        last_report = time.monotonic()
        while (remaining := timeout - (time.monotonic() - started)) > 0:
            verdicts.update(feed.step(min(remaining, 1.0), verdicts))
            counts = _counts(verdicts)
            if counts[Status.FAILED] or not counts[Status.IN_PROGRESS]:
                break
            if cancel is not None and cancel.is_set():
                verdict = _verdict(state, verdicts, started)
                return replace(verdict, interrupted=True, preexisting=preexisting)
            if on_progress and time.monotonic() - last_report >= progress_every:
                last_report = time.monotonic()
                on_progress(
                    counts[Status.CURRENT], counts[Status.IN_PROGRESS], counts[Status.FAILED]
                )
    finally:
        feed.close()
    return replace(_verdict(state, verdicts, started), preexisting=preexisting)


def _applied_at(obj: KubeObject) -> str:
    """When a gitsync manager (any app's) last applied ``obj``."""
    times = [
        str(e.get("time", ""))
        for e in (obj.get("metadata") or {}).get("managedFields") or []
        if e.get("operation") == "Apply"
        and not e.get("subresource")
        and str(e.get("manager", "")).partition("-")[0] == FIELD_MANAGER
    ]
    return max(times, default="")


def _counts(verdicts: dict[Identity, Health]) -> dict[Status, int]:
    counts = dict.fromkeys(Status, 0)
    for h in verdicts.values():
        counts[h.status] += 1
    return counts


def _verdict(
    state: dict[Identity, KubeObject],
    verdicts: dict[Identity, Health],
    started: float,
) -> Verdict:
    failed = tuple(
        ObjectHealth(ref=ObjectRef.of(state[i]), health=h)
        for i, h in sorted(verdicts.items())
        if h.status is Status.FAILED
    )
    pending = tuple(
        ObjectHealth(ref=ObjectRef.of(state[i]), health=h)
        for i, h in sorted(verdicts.items())
        if h.status is Status.IN_PROGRESS
    )
    return Verdict(
        healthy=not failed and not pending,
        failed=failed,
        pending=pending,
        seconds=time.monotonic() - started,
    )
