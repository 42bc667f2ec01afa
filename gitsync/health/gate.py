"""The health gate: wait, on watches, until every applied object is Current.

One LIST then one WATCH per (kind, namespace) that still has something in progress, plus
one Pod watch per namespace holding an in-progress workload so that a CrashLoopBackOff
fails the gate within seconds instead of at the progress deadline.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gitsync.errors import KubeError
from gitsync.health import rules
from gitsync.health.rules import Health, Status
from gitsync.kube import Kube, Resource, WatchCancel
from gitsync.model import FIELD_MANAGER, Identity, KubeObject, ObjectRef

DEFAULT_PROGRESS_DEADLINE = 600
MARGIN_SECONDS = 30.0
_WORKLOADS = {
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("apps", "ReplicaSet"),
    ("batch", "Job"),
}
_POD = ObjectRef(group="", version="v1", kind="Pod", namespace="", name="")
_RS = ObjectRef(group="apps", version="v1", kind="ReplicaSet", namespace="", name="")


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


class _Watch(threading.Thread):
    """Feeds events of one (kind, namespace) into the gate's queue until stopped."""

    def __init__(
        self,
        kube: Kube,
        res: Resource,
        namespace: str,
        rv: str,
        *,
        out: queue.Queue[tuple[str, KubeObject]],
        stop: threading.Event,
        cancel: WatchCancel,
    ) -> None:
        super().__init__(daemon=True, name=f"gate-watch-{res.kind}-{namespace}")
        self._kube, self._res, self._ns, self._rv = kube, res, namespace, rv
        self._out, self._stop, self._cancel = out, stop, cancel

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                for etype, obj in self._kube.watch(
                    self._res,
                    namespace=self._ns,
                    resource_version=self._rv,
                    timeout_seconds=5,
                    cancel=self._cancel,
                ):
                    if self._stop.is_set():
                        return
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if etype == "ERROR":
                        self._rv = ""  # 410 Gone: relist from now
                        break
                    if rv:
                        self._rv = rv
                    if etype != "BOOKMARK":
                        obj.setdefault("apiVersion", self._res.api_version)
                        obj.setdefault("kind", self._res.kind)
                        self._out.put((etype, obj))
            except KubeError:
                self._stop.wait(0.5)
            if not self._rv and not self._stop.is_set():
                try:
                    items, self._rv = self._kube.list_objects(self._res, namespace=self._ns)
                except KubeError:
                    self._stop.wait(0.5)
                    continue
                for obj in items:
                    self._out.put(("MODIFIED", obj))


Progress = Callable[[int, int, int], None]


class _Gate:
    """The live picture of the applied objects and their Pods, fed by watches."""

    def __init__(self, kube: Kube, objects: Sequence[KubeObject]) -> None:
        self.kube = kube
        self.state: dict[Identity, KubeObject] = {ObjectRef.of(o).identity(): o for o in objects}
        self.pods: dict[str, dict[str, KubeObject]] = {}  # namespace -> name -> Pod
        self.replicasets: dict[str, dict[str, KubeObject]] = {}
        # Server time of the newest apply: Pods created before it are not the new revision's.
        self.since = max((_applied_at(o) for o in objects), default="")
        self.events: queue.Queue[tuple[str, KubeObject]] = queue.Queue()
        self._stop = threading.Event()
        self._cancels: list[WatchCancel] = []

    def close(self) -> None:
        """End every watch thread now, even one blocked reading its stream."""
        self._stop.set()
        for cancel in self._cancels:
            cancel.cancel()

    def judge(self) -> dict[Identity, Health]:
        out = {}
        for ident, obj in self.state.items():
            ref = ObjectRef.of(obj)
            ns_pods: Sequence[Mapping[str, Any]] = ()
            if (ref.group, ref.kind) in _WORKLOADS:
                ns_pods = rules.current_pods(
                    obj,
                    self.pods.get(ref.namespace, {}).values(),
                    self.replicasets.get(ref.namespace, {}).values(),
                    since=self.since,
                )
            out[ident] = rules.assess(obj, pods=ns_pods)
        return out

    def watch(self, waiting: Iterable[Identity]) -> None:
        """LIST+WATCH each (kind, namespace) still in progress, and Pods beside workloads."""
        disc = self.kube.discover()
        wanted: dict[tuple[str, str, str], Resource] = {}
        for ident in waiting:
            ref = ObjectRef.of(self.state[ident])
            res = disc.for_ref(ref)
            pod_res = disc.for_ref(_POD)
            if res is not None:
                wanted.setdefault((ref.group, ref.kind, ref.namespace), res)
            if (ref.group, ref.kind) in _WORKLOADS and ref.namespace and pod_res is not None:
                wanted.setdefault(("", "Pod", ref.namespace), pod_res)
            rs_res = disc.for_ref(_RS)
            if (ref.group, ref.kind) == ("apps", "Deployment") and rs_res is not None:
                wanted.setdefault(("apps", "ReplicaSet", ref.namespace), rs_res)
        for (_g, _k, ns), res in wanted.items():
            items, rv = self.kube.list_objects(res, namespace=ns)
            for item in items:
                self.events.put(("MODIFIED", item))
            cancel = WatchCancel()
            self._cancels.append(cancel)
            _Watch(self.kube, res, ns, rv, out=self.events, stop=self._stop, cancel=cancel).start()

    def drain(self, wait: float) -> None:
        try:
            self.absorb(*self.events.get(timeout=wait))
        except queue.Empty:
            return
        while not self.events.empty():
            self.absorb(*self.events.get_nowait())

    def absorb(self, etype: str, obj: KubeObject) -> None:
        ref = ObjectRef.of(obj)
        if ref.identity() in self.state:
            if etype != "DELETED":
                self.state[ref.identity()] = obj
            return
        index = {("", "Pod"): self.pods, ("apps", "ReplicaSet"): self.replicasets}.get(
            (ref.group, ref.kind)
        )
        if index is None:
            return
        ns = index.setdefault(ref.namespace, {})
        if etype == "DELETED":
            ns.pop(ref.name, None)
        else:
            ns[ref.name] = obj


def wait_healthy(
    kube: Kube,
    objects: Sequence[KubeObject],
    *,
    timeout: float,
    on_progress: Progress | None = None,
    progress_every: float = 5.0,
    cancel: threading.Event | None = None,
    unchanged: frozenset[Identity] = frozenset(),
) -> Verdict:
    """Block until all ``objects`` are Current (healthy), one is Failed, or time runs out.

    ``cancel`` (the controller's shutdown) ends the wait within a second with an
    ``interrupted`` verdict, which is neither healthy nor a reason to roll back. Objects in
    ``unchanged`` (the commit did not write them) that are already unhealthy when the wait
    starts are set aside as ``preexisting``: a commit is judged on what it changed.
    """
    started = time.monotonic()
    gate = _Gate(kube, objects)
    verdicts = gate.judge()
    preexisting = tuple(
        ObjectHealth(ref=ObjectRef.of(gate.state[i]), health=h)
        for i, h in sorted(verdicts.items())
        if i in unchanged and h.status is not Status.CURRENT
    )
    for o in preexisting:
        gate.state.pop(o.ref.identity())
        verdicts.pop(o.ref.identity())
    counts = _counts(verdicts)
    if counts[Status.FAILED] or not counts[Status.IN_PROGRESS]:
        return replace(_verdict(gate.state, verdicts, started), preexisting=preexisting)
    try:
        # Inside the try: a LIST failing after some watches started must still stop them.
        gate.watch(i for i, h in verdicts.items() if h.status is Status.IN_PROGRESS)
        last_report = time.monotonic()
        while (remaining := timeout - (time.monotonic() - started)) > 0:
            gate.drain(min(remaining, 1.0))
            verdicts = gate.judge()
            counts = _counts(verdicts)
            if counts[Status.FAILED] or not counts[Status.IN_PROGRESS]:
                break
            if cancel is not None and cancel.is_set():
                verdict = _verdict(gate.state, verdicts, started)
                return replace(verdict, interrupted=True, preexisting=preexisting)
            if on_progress and time.monotonic() - last_report >= progress_every:
                last_report = time.monotonic()
                on_progress(
                    counts[Status.CURRENT], counts[Status.IN_PROGRESS], counts[Status.FAILED]
                )
    finally:
        gate.close()
    return replace(_verdict(gate.state, verdicts, started), preexisting=preexisting)


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
