"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go does it.

Only the holder of the Lease writes to the cluster. The holder renews every
``retry_period``; if it cannot renew for ``renew_deadline`` it has lost and must stop
writing at once. As in client-go, every renewal call is bounded by the time left until
``renew_deadline``, so a hung call cannot hide the deadline; beyond client-go, a watchdog
thread checks the time since the last renewal on the monotonic clock and ``write_fence``
refuses writes past it, so even a stuck elector thread cannot leave a writer behind. The
Lease goes through its own client (``Kube.dedicated``): renewals never wait for a
connection that syncs or watches hold.

A candidate takes the Lease when nobody holds it, or when the record (holder, renewTime,
resourceVersion) has not changed for the holder's ``leaseDurationSeconds`` as measured on
the candidate's own clock, so clock skew between replicas does not matter. Every write
carries the resourceVersion read, so two candidates can never both win.
``renew_deadline < lease_duration`` leaves the old leader time to stop before anyone else
may start.

Sharding (gitsync.runtime.shards) runs one elector per shard Lease. It passes
``may_acquire``, asked before every attempt to take a free or expired Lease with how long
it has looked free, and ``acquire_lock``, shared by a replica's electors so that their
attempts (and the count of shards held that ``may_acquire`` reads) never interleave.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gitsync.errors import ConflictError, KubeError
from gitsync.kube import Kube, Resource
from gitsync.model import KubeObject, ObjectRef
from gitsync.runtime import events, metrics

LEASES = Resource(
    group="coordination.k8s.io",
    version="v1",
    kind="Lease",
    plural="leases",
    namespaced=True,
    verbs=frozenset({"get", "list", "create", "update", "delete"}),
)
_LATENCY_WINDOW = 2048


def default_identity() -> str:
    """Pod name (``POD_NAME`` from the downward API, else the hostname) plus a random suffix."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseSpec:
    namespace: str
    name: str
    identity: str
    lease_duration: float
    renew_deadline: float
    retry_period: float

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(
            group="coordination.k8s.io",
            version="v1",
            kind="Lease",
            namespace=self.namespace,
            name=self.name,
        )

    @property
    def request_timeout(self) -> float:
        """A hung call must not stretch a renewal past the point where others may take over."""
        return max(0.5, (self.lease_duration - self.renew_deadline) / 2)


class LeaderElector:
    """Runs the election loop in ``run`` (its own thread); thread-safe to query.

    ``kube`` should be a client of its own (``Kube.dedicated()``): the Lease must not
    share a connection pool with syncs and watches.
    """

    def __init__(
        self,
        kube: Kube,
        spec: LeaseSpec,
        *,
        on_started: Callable[[], None],
        on_lost: Callable[[], None],
        logger: Any,
        may_acquire: Callable[[float], bool] | None = None,
        acquire_lock: threading.Lock | None = None,
    ) -> None:
        self._kube = kube
        self._may_acquire = may_acquire
        self._acquire_lock = acquire_lock
        self.spec = spec
        self._on_started = on_started
        self._on_lost = on_lost
        self._log = logger.bind(lease=f"{spec.namespace}/{spec.name}", identity=spec.identity)
        self._lock = threading.Lock()
        self._leader = False
        self._last_renew = 0.0
        self._last_contact = 0.0
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        self._free_since: float | None = None  # first seen free or expired (monotonic)
        self._error = ""
        self._lease: KubeObject | None = None  # our last write, for the one-call renewal
        self._lost = False
        self._latencies: list[float] = []

    # --- queries -----------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._leader

    def healthy(self) -> tuple[bool, str]:
        """Whether the loop talks to the API server; a standby that cannot is no standby."""
        with self._lock:
            since = time.monotonic() - self._last_contact
            ok = self._last_contact > 0 and since < 2 * self.spec.lease_duration
            return ok, self._error if not ok else ""

    def holder(self) -> str:
        with self._lock:
            return self._observed[0] if self._observed else ""

    @property
    def lost(self) -> bool:
        """Led once and lost it: the process is on its way out."""
        with self._lock:
            return self._lost

    def claimed(self) -> bool:
        """Leading, or just won the Lease (the last write was ours) and about to lead."""
        with self._lock:
            won = self._observed is not None and self._observed[0] == self.spec.identity
            return self._leader or (won and not self._lost)

    def write_fence(self) -> str:
        """Why this process must not write now ("" while it holds a fresh Lease)."""
        with self._lock:
            if not self._leader or self._lost:
                return "not the leader"
            since = time.monotonic() - self._last_renew
        if since > self.spec.renew_deadline:
            return f"leader Lease not renewed for {since:.1f}s"
        return ""

    def renew_stats(self) -> dict[str, float]:
        """Latency of recent successful renewals while leading (count, p50, p99, max)."""
        with self._lock:
            data = sorted(self._latencies)
        if not data:
            return {"count": 0}

        def pick(q: float) -> float:
            return round(data[min(len(data) - 1, int(q * len(data)))], 4)

        return {"count": len(data), "p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)}

    # --- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Acquire, then renew until ``stop`` is set or the Lease is lost."""
        self._log.info("leader.candidate")
        watchdog = threading.Thread(
            target=self._watchdog, args=(stop,), name="gitsync-lease-watchdog", daemon=True
        )
        watchdog.start()
        while not stop.is_set():
            try:
                if self._step():
                    return
            except Exception as e:  # noqa: BLE001 - a callback's bug must not stop renewals
                self._log.exception("leader.error", error=f"{type(e).__name__}: {e}")
            # client-go jitters candidates so a crowd does not hit the API in lockstep
            jitter = 1.0 if self.is_leader else random.uniform(1.0, 1.2)  # noqa: S311
            stop.wait(self.spec.retry_period * jitter)

    def _watchdog(self, stop: threading.Event) -> None:
        """Declare the Lease lost once ``renew_deadline`` passes without a renewal, even if
        the elector thread is stuck inside a call or starved."""
        tick = min(0.25, max(0.02, self.spec.retry_period / 10))
        while not stop.wait(tick):
            with self._lock:
                overdue = self._leader and not self._lost
                since = time.monotonic() - self._last_renew
            if overdue and since > self.spec.renew_deadline:
                self._lose(since, watchdog=True)
                return

    def _step(self) -> bool:
        """One round; True when leadership was lost and the loop must end."""
        began = time.monotonic()
        took = self._try_acquire_or_renew()
        now = time.monotonic()
        if took:
            with self._lock:
                if self._lost:
                    return True  # the watchdog gave up first; a late success changes nothing
                first = not self._leader
                if not first:
                    self._latencies.append(now - began)
                    del self._latencies[:-_LATENCY_WINDOW]
                # Counted from before the request: others may see the write as soon as it
                # was sent, so a slow answer must not lengthen our hold on the Lease.
                self._last_renew = began
                self._leader = True
            if first:
                self._log.info("leader.acquired")
                # Its own thread: the Event and starting the work must not delay renewals.
                threading.Thread(
                    target=self._begin_leading, name="gitsync-start-leading", daemon=True
                ).start()
            else:
                metrics.LEASE_RENEW_SECONDS.observe(now - began)
        elif self.is_leader and now - self._last_renew > self.spec.renew_deadline:
            self._lose(now - self._last_renew, watchdog=False)
            return True
        with self._lock:
            return self._lost

    def _begin_leading(self) -> None:
        self._emit("LeaderElection", f"{self.spec.identity} became leader")
        self._on_started()

    def _lose(self, since: float, *, watchdog: bool) -> None:
        """Leadership is gone: say so once and hand over to ``on_lost``."""
        with self._lock:
            if self._lost:
                return
            self._lost = True
            self._leader = False
            error = self._error
        self._log.error(
            "leader.lost",
            reason=error or "another holder took the Lease",
            seconds_since_renew=round(since, 2),
            by="watchdog" if watchdog else "elector",
        )
        self._on_lost()

    def release(self) -> bool:
        """Give the Lease up so a standby takes over now instead of after it expires."""
        if not self.is_leader:
            return False
        with self._lock:
            self._leader = False
        try:
            lease = self._get()
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.spec.identity:
                return False
            now = micro_time()
            lease["spec"] = spec | {
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "renewTime": now,
                "acquireTime": now,
            }
            self._replace(lease)
        except KubeError as e:
            self._log.warning("leader.release_failed", error=str(e))
            return False
        self._log.info("leader.released")
        return True

    # --- one attempt -------------------------------------------------------------------

    def _try_acquire_or_renew(self) -> bool:
        if self.is_leader and self._lease is not None:
            # client-go's fast path: one PUT over our own last write; on any error fall
            # back to reading the Lease, while time is left.
            try:
                self._write(self._lease, renew_only=True)
            except KubeError as e:
                self._contact(str(e), ok=e.status != 0)
                self._lease = None
                if self._time_left() <= 0:
                    return False
            else:
                self._contact("")
                return True
        gate = self._acquire_lock if not self.is_leader else None
        with gate or contextlib.nullcontext():
            return self._read_and_take()

    def _read_and_take(self) -> bool:
        """Read the Lease; renew it if ours, take it if free or expired and allowed."""
        try:
            lease = self._get()
            if lease is None:
                if not self._allowed(time.monotonic()):
                    return False
                self._create()
                with self._lock:
                    self._observed = (self.spec.identity, "", "")
                    self._observed_at = time.monotonic()
                self._contact("")
                return True
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            meta = lease.get("metadata") or {}
            record = (holder, str(spec.get("renewTime") or ""), str(meta["resourceVersion"]))
            now = time.monotonic()
            with self._lock:
                if record != self._observed:
                    self._observed, self._observed_at = record, now
                observed_at = self._observed_at
            self._contact("")
            duration = float(spec.get("leaseDurationSeconds") or self.spec.lease_duration)
            if holder and holder != self.spec.identity and now < observed_at + duration:
                with self._lock:
                    self._free_since = None
                return False
            if holder != self.spec.identity and not self._allowed(now):
                return False
            renewed: dict[str, Any] = {
                **spec,
                "holderIdentity": self.spec.identity,
                "leaseDurationSeconds": math.ceil(self.spec.lease_duration),
                "renewTime": micro_time(),
            }
            if holder != self.spec.identity:
                renewed["acquireTime"] = renewed["renewTime"]
                renewed["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
                self._log.info("leader.taking_over", previous=holder or "(released)")
            lease["spec"] = renewed
            self._write(lease, renew_only=False)
        except ConflictError:
            # Someone else wrote first (or created it): they won this round.
            self._contact("")
            return False
        except KubeError as e:
            self._contact(str(e), ok=False)
            self._log.warning("leader.error", error=str(e))
            return False
        return True

    def _allowed(self, now: float) -> bool:
        """Ask ``may_acquire`` with how long the Lease has looked free to this elector."""
        with self._lock:
            if self._free_since is None:
                self._free_since = now
            free_for = now - self._free_since
        return self._may_acquire is None or self._may_acquire(free_for)

    def _write(self, lease: KubeObject, *, renew_only: bool) -> KubeObject:
        """PUT the Lease (a fresh renewTime when ``renew_only``); remember what we wrote."""
        if renew_only:
            lease = {**lease, "spec": {**lease["spec"], "renewTime": micro_time()}}
        out = self._replace(lease)
        with self._lock:
            self._observed = (
                self.spec.identity,
                str(out["spec"].get("renewTime", "")),
                str(out["metadata"]["resourceVersion"]),
            )
            self._observed_at = time.monotonic()
        self._lease = out
        return out

    def _time_left(self) -> float:
        """Seconds until ``renew_deadline`` runs out while leading; +inf otherwise."""
        with self._lock:
            if not self._leader:
                return math.inf
            return self._last_renew + self.spec.renew_deadline - time.monotonic()

    def _timeout(self) -> float:
        """A call may take no longer than what is left of the renew deadline."""
        left = self._time_left()
        if left <= 0:
            msg = f"renew deadline of {self.spec.renew_deadline:g}s passed"
            raise KubeError(msg, transient=True)
        return max(0.05, min(left, max(self.spec.request_timeout, self.spec.renew_deadline / 2)))

    def _contact(self, error: str, *, ok: bool = True) -> None:
        with self._lock:
            if ok:
                self._last_contact = time.monotonic()
            self._error = error

    def _path(self, *, named: bool = True) -> str:
        """Built without discovery: a renewal makes no call but the Lease's own."""
        ref = self.spec.ref
        return LEASES.path(ref.namespace, ref.name if named else "")

    def _get(self) -> KubeObject | None:
        try:
            out: KubeObject = self._kube.request(
                "GET",
                self._path(),
                verb="get",
                timeout=self._timeout(),
                what=f"get {self.spec.ref}",
            )
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return out

    def _create(self) -> KubeObject:
        now = micro_time()
        body: KubeObject = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.spec.name, "namespace": self.spec.namespace},
            "spec": {
                "holderIdentity": self.spec.identity,
                "leaseDurationSeconds": math.ceil(self.spec.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        out: KubeObject = self._kube.request(
            "POST",
            self._path(named=False),
            verb="create",
            body=body,
            timeout=self._timeout(),
            what=f"create {self.spec.ref}",
        )
        return out

    def _replace(self, lease: KubeObject) -> KubeObject:
        """PUT with the resourceVersion that was read: a lost race is a ConflictError."""
        out: KubeObject = self._kube.request(
            "PUT",
            self._path(),
            verb="update",
            body=lease,
            timeout=self._timeout(),
            what=f"update {self.spec.ref}",
        )
        return out

    def _emit(self, reason: str, message: str) -> None:
        events.emit(self._kube, involved=self.spec.ref, reason=reason, message=message)
