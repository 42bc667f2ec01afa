"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go does it.

Only the holder of the Lease writes to the cluster. The holder renews every
``retry_period``; if it cannot renew for ``renew_deadline`` it has lost and must stop
writing at once. A candidate takes the Lease when nobody holds it, or when the record
(holder, renewTime, resourceVersion) has not changed for the holder's
``leaseDurationSeconds`` as measured on the candidate's own clock, so clock skew between
replicas does not matter. Every write carries the resourceVersion read, so two candidates
can never both win. ``renew_deadline < lease_duration`` leaves the old leader time to stop
before anyone else may start.
"""

from __future__ import annotations

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

from gitsync import events
from gitsync.errors import ConflictError, KubeError
from gitsync.kube import Kube
from gitsync.model import KubeObject, ObjectRef


def default_identity() -> str:
    """Pod name (``POD_NAME`` from the downward API, else the hostname) plus a random suffix."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _micro_time() -> str:
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
    """Runs the election loop in ``run`` (its own thread); thread-safe to query."""

    def __init__(
        self,
        kube: Kube,
        spec: LeaseSpec,
        *,
        on_started: Callable[[], None],
        on_lost: Callable[[], None],
        logger: Any,
    ) -> None:
        self._kube = kube
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
        self._error = ""

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

    # --- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Acquire, then renew until ``stop`` is set or the Lease is lost."""
        self._log.info("leader.candidate")
        while not stop.is_set():
            try:
                if self._step():
                    return
            except Exception as e:  # noqa: BLE001 - a callback's bug must not stop renewals
                self._log.exception("leader.error", error=f"{type(e).__name__}: {e}")
            # client-go jitters candidates so a crowd does not hit the API in lockstep
            jitter = 1.0 if self.is_leader else random.uniform(1.0, 1.2)  # noqa: S311
            stop.wait(self.spec.retry_period * jitter)

    def _step(self) -> bool:
        """One round; True when leadership was lost and the loop must end."""
        took = self._try_acquire_or_renew()
        now = time.monotonic()
        if took:
            with self._lock:
                self._last_renew = now
                first = not self._leader
                self._leader = True
            if first:
                self._log.info("leader.acquired")
                self._emit("LeaderElection", f"{self.spec.identity} became leader")
                self._on_started()
        elif self.is_leader and now - self._last_renew > self.spec.renew_deadline:
            with self._lock:
                self._leader = False
            self._log.error(
                "leader.lost",
                reason=self._error or "another holder took the Lease",
                seconds_since_renew=round(now - self._last_renew, 2),
            )
            self._on_lost()
            return True
        return False

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
            now = _micro_time()
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
        try:
            lease = self._get()
            if lease is None:
                self._create()
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
                return False
            renewed: dict[str, Any] = {
                **spec,
                "holderIdentity": self.spec.identity,
                "leaseDurationSeconds": math.ceil(self.spec.lease_duration),
                "renewTime": _micro_time(),
            }
            if holder != self.spec.identity:
                renewed["acquireTime"] = renewed["renewTime"]
                renewed["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
                self._log.info("leader.taking_over", previous=holder or "(released)")
            lease["spec"] = renewed
            out = self._replace(lease)
        except ConflictError:
            # Someone else wrote first (or created it): they won this round.
            self._contact("")
            return False
        except KubeError as e:
            self._contact(str(e), ok=False)
            self._log.warning("leader.error", error=str(e))
            return False
        with self._lock:
            self._observed = (
                self.spec.identity,
                str(out["spec"].get("renewTime", "")),
                str(out["metadata"]["resourceVersion"]),
            )
            self._observed_at = time.monotonic()
        return True

    def _contact(self, error: str, *, ok: bool = True) -> None:
        with self._lock:
            if ok:
                self._last_contact = time.monotonic()
            self._error = error

    def _path(self, *, named: bool = True) -> str:
        ref = self.spec.ref
        return self._kube.resource(ref).path(ref.namespace, ref.name if named else "")

    def _get(self) -> KubeObject | None:
        try:
            out: KubeObject = self._kube.request(
                "GET",
                self._path(),
                verb="get",
                timeout=self.spec.request_timeout,
                what=f"get {self.spec.ref}",
            )
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return out

    def _create(self) -> KubeObject:
        now = _micro_time()
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
            timeout=self.spec.request_timeout,
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
            timeout=self.spec.request_timeout,
            what=f"update {self.spec.ref}",
        )
        return out

    def _emit(self, reason: str, message: str) -> None:
        events.emit(self._kube, involved=self.spec.ref, reason=reason, message=message)
