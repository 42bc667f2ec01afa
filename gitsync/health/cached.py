"""The gate's feed from the controller's informers: no LIST and no WATCH of its own.

It subscribes to the shared caches of the kinds still in progress (by app label), and to
the cluster-wide Pod and ReplicaSet caches when a workload is; an event re-judges only
what it touches: the object itself, or the workload a Pod or ReplicaSet belongs to, found
by owner uid (Pod → ReplicaSet → Deployment; Pod → StatefulSet, DaemonSet, Job,
ReplicaSet). A workload is judged with its own Pods from the owner index, never with
its namespace's, so an event costs one workload's Pods, not workloads times Pods.

The cache may be a moment behind the apply: the applied objects are the truth to start
from, and a cached copy replaces one only if it is not older (see ``fresher``).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gitsync.health import rules
from gitsync.health.rules import Health, Status
from gitsync.informers.store import Change
from gitsync.model import APP_LABEL, Identity, KubeObject, ObjectRef

if TYPE_CHECKING:
    from gitsync.informers.hub import Informers
    from gitsync.informers.informer import Informer

# In-progress workloads are judged again this often without an event: a Pod's
# Unschedulable grace runs out on the clock, not on a change.
REJUDGE_SECONDS = 5.0
_DEPLOYMENT = ("apps", "Deployment")


def covers(objects: Iterable[KubeObject]) -> bool:
    """The informers see these objects: each carries the app label they select on."""
    return all(_label(o) for o in objects)


def fresher(candidate: KubeObject, known: KubeObject, *, caught_up: bool) -> bool:
    """Whether the cache's ``candidate`` should replace the ``known`` copy.

    A lower ``metadata.generation`` is stale, a higher one newer. At equal generations,
    the candidate is newer if the informer delivered it after the known copy
    (``caught_up``: it delivered the known resourceVersion, or the known copy itself
    came from it); events of one kind arrive in order. Before that, the candidate may
    predate the apply (a label-only change keeps the generation), unless a relist
    skipped the known version: then the resourceVersions, etcd revisions on every real
    API server, are compared as numbers, and an opaque one is never taken as newer.
    """
    new_gen, old_gen = _generation(candidate), _generation(known)
    if new_gen is not None and old_gen is not None and new_gen != old_gen:
        return new_gen > old_gen
    new_rv, old_rv = _rv(candidate), _rv(known)
    if new_rv == old_rv:
        return False
    if caught_up:
        return True
    return new_rv.isdigit() and old_rv.isdigit() and int(new_rv) > int(old_rv)


class CachedFeed:
    """The applied objects as the informers last told, and their workloads' Pods."""

    def __init__(
        self, informers: Informers, state: dict[Identity, KubeObject], *, since: str
    ) -> None:
        self.informers = informers
        self.state = state  # shared with the gate: what it still judges
        self.since = since
        self._events: queue.Queue[tuple[str, KubeObject]] = queue.Queue()
        # Held while reading a store snapshot and while a callback queues a change, so
        # the queue holds copies in the order the informers delivered them.
        self._lock = threading.Lock()
        self._unsubscribe: list[Callable[[], None]] = []
        self._caught_up: set[Identity] = set()
        self._direct: dict[str, Identity] = {}  # uid of a workload owning its Pods
        self._deployments: dict[str, Identity] = {}  # uid of a Deployment
        self._rs_owner: dict[str, Identity] = {}  # ReplicaSet uid -> its Deployment
        self._pod_owners: set[str] = set()  # uids whose Pods matter (grows, never shrinks)
        self._pods: Informer | None = None
        self._replicasets: Informer | None = None
        self._due: set[Identity] = set()  # judged at the next step
        self._last_rejudge = time.monotonic()

    # --- lifecycle (the gate's thread) -----------------------------------------------

    def start(self, waiting: Collection[Identity]) -> None:
        """Subscribe for the kinds in progress, then read what the caches hold already."""
        kinds: dict[tuple[str, str], set[str]] = {}
        for ident in waiting:
            ref = ObjectRef.of(self.state[ident])
            kinds.setdefault((ref.group, ref.kind), set()).add(_label(self.state[ident]))
        managed = {key: self.informers.managed(*key) for key in kinds}
        for key, labels in kinds.items():
            for label in sorted(labels):
                self._subscribe(managed[key], self._on_object, label)
        if any(k in rules.WORKLOADS for k in kinds):
            self._watch_workloads()
        with self._lock:  # snapshot: after it, each change arrives exactly in order
            for ident in waiting:
                cached = managed[ident[:2]].store.get(ident)
                if cached is not None:
                    self._events.put(("object", cached))
            if self._replicasets is not None:
                for uid in self._deployments:
                    for rs in self._replicasets.store.objects(owner=uid):
                        self._pod_owners.add(_uid(rs))
                        self._events.put(("replicaset", rs))

    def close(self) -> None:
        """Unsubscribe from every informer (they keep running for everyone else)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def _subscribe(self, informer: Informer, on: Callable[[Change], None], label: str) -> None:
        self._unsubscribe.append(informer.subscribe(on, label=label))

    def _watch_workloads(self) -> None:
        """Every workload of the set, by uid; Pods (and ReplicaSets beside Deployments)."""
        for ident, obj in self.state.items():
            if ident[:2] not in rules.WORKLOADS:
                continue
            uid = _uid(obj)
            if not uid:
                continue
            if ident[:2] == _DEPLOYMENT:
                self._deployments[uid] = ident
            else:
                self._direct[uid] = ident
                self._pod_owners.add(uid)
            self._due.add(ident)  # judged with its Pods at the first step
        self._pods = self.informers.everything("", "Pod")
        self._subscribe(self._pods, self._on_pod, "")
        if self._deployments:
            self._replicasets = self.informers.everything("apps", "ReplicaSet")
            self._subscribe(self._replicasets, self._on_replicaset, "")

    # --- callbacks (the informers' threads: quick, filter and queue) -----------------

    def _on_object(self, change: Change) -> None:
        if change.type != "DELETED" and change.ident in self.state:
            with self._lock:
                self._events.put(("object", change.obj))

    def _on_replicaset(self, change: Change) -> None:
        if any(uid in self._deployments for uid in _owners(change.obj)):
            # Before the queue: a Pod of it passes the filter from now on, queued after it.
            self._pod_owners.add(_uid(change.obj))
            with self._lock:
                self._events.put(("replicaset", change.obj))

    def _on_pod(self, change: Change) -> None:
        if any(uid in self._pod_owners for uid in _owners(change.obj)):
            with self._lock:
                self._events.put(("pod", change.obj))

    # --- the gate's thread -----------------------------------------------------------

    def step(self, wait: float, verdicts: Mapping[Identity, Health]) -> dict[Identity, Health]:
        """Take in what arrived within ``wait`` seconds; judge only what it touched."""
        touched, self._due = self._due, set()
        with contextlib.suppress(queue.Empty):
            touched |= self._absorb(*self._events.get(timeout=wait))
        while not self._events.empty():
            touched |= self._absorb(*self._events.get_nowait())
        if time.monotonic() - self._last_rejudge >= REJUDGE_SECONDS:
            self._last_rejudge = time.monotonic()
            touched |= {
                i
                for i, h in verdicts.items()
                if h.status is Status.IN_PROGRESS and i[:2] in rules.WORKLOADS
            }
        return self.judge(touched)

    def _absorb(self, what: str, obj: KubeObject) -> set[Identity]:
        if what == "object":
            return self._offer(obj)
        if what == "replicaset":
            for uid in _owners(obj):
                deployment = self._deployments.get(uid)
                if deployment is not None:
                    self._rs_owner[_uid(obj)] = deployment
                    self._pod_owners.add(_uid(obj))
                    return {deployment} if deployment in self.state else set()
            return set()
        owners = (self._direct.get(uid) or self._rs_owner.get(uid) for uid in _owners(obj))
        return {i for i in owners if i is not None and i in self.state}

    def _offer(self, candidate: KubeObject) -> set[Identity]:
        """A copy from the cache: taken if not older than the known one."""
        ident = ObjectRef.of(candidate).identity()
        known = self.state.get(ident)
        if known is None:
            return set()
        if _rv(candidate) == _rv(known):
            self._caught_up.add(ident)
            return set()
        if not fresher(candidate, known, caught_up=ident in self._caught_up):
            return set()
        self.state[ident] = candidate
        self._caught_up.add(ident)  # what the informer delivers next is newer still
        return {ident}

    def judge(self, idents: Iterable[Identity]) -> dict[Identity, Health]:
        out = {}
        for ident in idents:
            obj = self.state.get(ident)
            if obj is None:
                continue
            pods: Sequence[Mapping[str, Any]] = ()
            if ident[:2] in rules.WORKLOADS and self._pods is not None:
                deployment = ident[:2] == _DEPLOYMENT
                replicasets = self._owned(self._replicasets, obj) if deployment else []
                owners = replicasets if deployment else [obj]
                pods = rules.current_pods(
                    obj,
                    itertools.chain.from_iterable(self._owned(self._pods, o) for o in owners),
                    replicasets,
                    since=self.since,
                )
            out[ident] = rules.assess(obj, pods=pods)
        return out

    @staticmethod
    def _owned(informer: Informer | None, owner: KubeObject) -> list[KubeObject]:
        uid = _uid(owner)
        if informer is None or not uid:
            return []
        return informer.store.objects(owner=uid)


def _label(obj: KubeObject) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(APP_LABEL) or "")


def _uid(obj: KubeObject) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _owners(obj: KubeObject) -> list[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return [str(r.get("uid") or "") for r in refs]


def _generation(obj: KubeObject) -> int | None:
    gen = (obj.get("metadata") or {}).get("generation")
    return int(gen) if isinstance(gen, int) else None


def _rv(obj: KubeObject) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
