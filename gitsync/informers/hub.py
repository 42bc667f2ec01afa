"""The controller's informers: one watch per kind, shared by every app.

Drift watchers, the health gate and the plan's no-op check all read here, so a hundred
apps on one kind cost one LIST and one WATCH, and an app's work is an index lookup:
managed objects by their ``gitsync.io/app`` label, Pods and ReplicaSets by owner uid.
Informers start on first use and run until ``stop()``. They read as gitsync itself,
never as an app's ServiceAccount: reading is not acting, and a Role-only app still has
its drift watched; what an app writes still goes through its own identity.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from gitsync import log
from gitsync.drift.compare import hpa_targets
from gitsync.engine.statestore import CHUNK_LABEL, STATE_LABEL
from gitsync.errors import KubeError
from gitsync.informers.informer import Informer, InformerSettings, Target
from gitsync.kube import Kube
from gitsync.model import APP_LABEL, ObjectRef

POD = ("", "Pod")
REPLICASET = ("apps", "ReplicaSet")
HPA = ("autoscaling", "HorizontalPodAutoscaler")
HPA_TTL = 30.0  # seconds a namespace's HPAs are trusted when they cannot be watched


def namespace_hpa_targets(kube: Kube, namespace: str) -> frozenset[tuple[str, str, str]]:
    """What the HPAs of one namespace scale, from one LIST (nothing if HPAs are not served)."""
    res = kube.discover().preferred.get(HPA)
    return hpa_targets(kube.list_objects(res, namespace=namespace)[0]) if res else frozenset()


class Informers:
    """Get-or-start informers by ``Target``; ``stop()`` ends them all."""

    def __init__(
        self, kube: Kube, *, settings: InformerSettings | None = None, logger: Any = None
    ) -> None:
        self.kube = kube
        self.settings = settings or InformerSettings()
        self.log = logger if logger is not None else log.get(component="informers")
        self._lock = threading.Lock()
        self._informers: dict[Target, Informer] = {}
        self._stopped = False
        self._hpa: tuple[int, frozenset[tuple[str, str, str]]] = (-1, frozenset())
        self._hpa_by_namespace: dict[str, tuple[float, frozenset[tuple[str, str, str]]]] = {}

    def informer(self, target: Target) -> Informer:
        with self._lock:
            found = self._informers.get(target)
            if found is not None:
                found.poke()
            else:
                found = Informer(self.kube, target, settings=self.settings, logger=self.log)
                self._informers[target] = found
                if not self._stopped:
                    found.start()
                    self.log.info(
                        "informer.started",
                        kind=target.kind,
                        namespace=target.namespace or "(all)",
                        selector=target.selector or "(all)",
                    )
            return found

    def managed(self, group: str, kind: str) -> Informer:
        """Every object of a kind that carries an app label, indexed by the app."""
        return self.informer(Target(group, kind, selector=APP_LABEL, index_label=APP_LABEL))

    def everything(self, group: str, kind: str) -> Informer:
        """Every object of a kind (Pods, ReplicaSets, HPAs), indexed by owner uid."""
        return self.informer(Target(group, kind, index_label=APP_LABEL))

    def state_heads(self, namespace: str) -> Informer:
        """The apps' state head Secrets in ``namespace``, indexed by app."""
        return self.informer(
            Target("", "Secret", namespace=namespace, selector=STATE_LABEL, index_label=STATE_LABEL)
        )

    def state_chunks(self, namespace: str) -> Informer:
        """The chunk Secrets of large states in ``namespace``, indexed by app."""
        return self.informer(
            Target("", "Secret", namespace=namespace, selector=CHUNK_LABEL, index_label=CHUNK_LABEL)
        )

    def wait_synced(self, informers: Iterable[Informer], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(i.wait_synced(max(0.0, deadline - time.monotonic())) for i in informers)

    def autoscaled(self, ref: ObjectRef) -> bool:
        """An HPA targets ``ref`` (then it owns spec.replicas): one cluster-wide HPA
        informer for every app, its targets recomputed only when an HPA changed."""
        informer = self.everything(*HPA)
        informer.wait_synced(10.0)
        if informer.forbidden:
            return self._autoscaled_in_namespace(ref)
        version, targets = self._hpa
        if version != informer.store.version:
            version = informer.store.version
            targets = hpa_targets(informer.store.objects())
            self._hpa = (version, targets)
        return (ref.namespace, ref.kind, ref.name) in targets

    def _autoscaled_in_namespace(self, ref: ObjectRef) -> bool:
        """For an identity with Roles only: its namespace's HPAs, re-read after a TTL."""
        cached = self._hpa_by_namespace.get(ref.namespace)
        if cached is None or cached[0] < time.monotonic():
            targets: frozenset[tuple[str, str, str]] = frozenset()
            try:
                targets = namespace_hpa_targets(self.kube, ref.namespace)
            except KubeError as e:
                self.log.debug("informer.hpa_lookup_failed", namespace=ref.namespace, error=str(e))
            cached = (time.monotonic() + HPA_TTL, targets)
            self._hpa_by_namespace[ref.namespace] = cached
        return (ref.namespace, ref.kind, ref.name) in cached[1]

    def by_target(self) -> list[tuple[Target, Informer]]:
        with self._lock:
            return sorted(self._informers.items(), key=lambda x: x[0].name)

    def stats(self) -> dict[str, int]:
        """What the informers cost so far: for logs, metrics and benchmarks."""
        with self._lock:
            informers = list(self._informers.values())
        return {
            "informers": len(informers),
            "objects": sum(len(i.store) for i in informers),
            "bytes": sum(i.store.raw_bytes() for i in informers),
            "lists": sum(i.lists for i in informers),
            "relists": sum(i.relists for i in informers),
            "watches": sum(i.watches for i in informers),
        }

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopped = True
            informers = list(self._informers.values())
        for informer in informers:
            informer.stop()
        deadline = time.monotonic() + timeout
        for informer in informers:
            informer.join(max(0.0, deadline - time.monotonic()))
