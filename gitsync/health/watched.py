"""The gate's own watches, for a sync without the controller's informers (``sync --once``).

One LIST then one WATCH per (kind, namespace) that still has something in progress, plus
one Pod watch per namespace holding an in-progress workload (and a ReplicaSet watch beside
a Deployment) so that a CrashLoopBackOff fails the gate within seconds instead of at the
progress deadline. Every event re-judges the whole set with its namespaces' Pods: fine
for one sync in one process, which is all this path serves.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gitsync.errors import KubeError
from gitsync.health import rules
from gitsync.health.rules import Health
from gitsync.kube import Kube, Resource, WatchCancel
from gitsync.model import Identity, KubeObject, ObjectRef

_POD = ObjectRef(group="", version="v1", kind="Pod", namespace="", name="")
_RS = ObjectRef(group="apps", version="v1", kind="ReplicaSet", namespace="", name="")


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
                for etype, obj, _line in self._kube.watch(
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


class WatchedFeed:
    """The live picture of the applied objects and their Pods, fed by the gate's watches."""

    def __init__(self, kube: Kube, state: dict[Identity, KubeObject], *, since: str) -> None:
        self.kube = kube
        self.state = state  # shared with the gate: what it still judges
        self.pods: dict[str, dict[str, KubeObject]] = {}  # namespace -> name -> Pod
        self.replicasets: dict[str, dict[str, KubeObject]] = {}
        self.since = since
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
            if (ref.group, ref.kind) in rules.WORKLOADS:
                ns_pods = rules.current_pods(
                    obj,
                    self.pods.get(ref.namespace, {}).values(),
                    self.replicasets.get(ref.namespace, {}).values(),
                    since=self.since,
                )
            out[ident] = rules.assess(obj, pods=ns_pods)
        return out

    def start(self, waiting: Iterable[Identity]) -> None:
        """LIST+WATCH each (kind, namespace) still in progress, and Pods beside workloads."""
        disc = self.kube.discover()
        wanted: dict[tuple[str, str, str], Resource] = {}
        for ident in waiting:
            ref = ObjectRef.of(self.state[ident])
            res = disc.for_ref(ref)
            pod_res = disc.for_ref(_POD)
            if res is not None:
                wanted.setdefault((ref.group, ref.kind, ref.namespace), res)
            if (ref.group, ref.kind) in rules.WORKLOADS and ref.namespace and pod_res is not None:
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

    def step(self, wait: float, verdicts: Mapping[Identity, Health]) -> dict[Identity, Health]:
        """Take in what arrived within ``wait`` seconds; every object judged again."""
        del verdicts  # judged whole each time
        self.drain(wait)
        return self.judge()

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
