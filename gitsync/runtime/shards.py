"""Scale-out: apps split into shards, one Lease per shard, shards spread over replicas.

An app belongs to shard ``sha256(name) mod shards`` (``shard_of``): the same in every
process and every release, unlike Python's salted ``hash()``. With ``controller.shards``
1 there is one Lease, ``leaderElection.leaseName``, and nothing else: the single-leader
setup exactly. With N > 1 the shard Leases are ``<leaseName>-0`` … ``<leaseName>-<N-1>``,
each held through its own ``LeaderElector``; the holder of shard i syncs and watches the
apps of shard i only.

Spread rule. Every replica also renews a membership Lease ``<leaseName>-member-<id>``
(label ``gitsync.io/member-of: <leaseName>``) each ``retryPeriod`` and lists the others'.
A member is live while its record keeps changing within ``leaseDuration`` on the
reader's own clock (as for the shard Leases, so clock skew does not matter); one
unchanged for ``3 * leaseDuration`` (a replica killed without leaving) is deleted by
whoever sees it. A replica tries to take a free or expired shard Lease only

- when it holds fewer than ``ceil(N / live members)`` shards, and has been a member for
  one ``leaseDuration`` (so replicas started together see each other first), or
- when that shard has looked free to it for longer than ``2 * leaseDuration``: nobody
  with fewer shards took it, so no shard is ever left without a holder.

The replica's shard electors share one lock, so it never counts its shards while one of
its own attempts is in flight. A replica holding more than its share, with the set of
live members unchanged for one ``leaseDuration`` (a replica joined), hands one shard off
at a time: the controller stops the shard's jobs, waits for its running syncs and stops
its drift watchers (``on_shed``); only then is the Lease released, and a fresh elector
stands by for it. A sync that does not finish within ``shutdownTimeout`` keeps the shard
(its jobs resume), and the next attempt, one ``leaseDuration`` later, tries another.

Safety stays the single Lease's: losing any shard ends the process (the controller exits
1), and ``write_fence`` refuses writes as soon as any held shard is past its renew
deadline.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gitsync.errors import ConflictError, KubeError
from gitsync.kube import Kube
from gitsync.model import KubeObject
from gitsync.runtime import metrics
from gitsync.runtime.leader import LEASES, LeaderElector, LeaseSpec, micro_time

MEMBER_LABEL = "gitsync.io/member-of"
_NOT_NAME = re.compile(r"[^a-z0-9.-]+")


def shard_of(app: str, shards: int) -> int:
    """The shard of an app: stable across processes, Python versions and PYTHONHASHSEED."""
    if shards <= 1:
        return 0
    digest = hashlib.sha256(app.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def lease_names(base: str, shards: int) -> tuple[str, ...]:
    """``base`` alone for one shard (today's Lease), else ``base-0`` … ``base-<n-1>``."""
    if shards <= 1:
        return (base,)
    return tuple(f"{base}-{i}" for i in range(shards))


def member_lease_name(base: str, identity: str) -> str:
    """A Lease name (DNS subdomain) for a replica's membership; the identity is kept whole
    in ``holderIdentity``."""
    tail = _NOT_NAME.sub("-", identity.lower()).strip("-.") or "replica"
    return f"{base}-member-{tail}"[:253].rstrip("-.")


def fair_share(shards: int, live: int) -> int:
    return math.ceil(shards / max(1, live))


def should_acquire(
    *, held: int, shards: int, live: int, free_for: float, lease_duration: float, settled: bool
) -> bool:
    """The spread rule (see the module docstring) for one free or expired shard Lease."""
    if shards <= 1:
        return True
    if free_for > 2 * lease_duration:
        return True
    return settled and held < fair_share(shards, live)


def should_shed(
    *, held: int, shards: int, live: int, settled: bool, steady_for: float, lease_duration: float
) -> bool:
    """Hand a shard off: above the fair share, with the set of live members unchanged for
    one leaseDuration (a member that merely missed a renewal does not make others shed)."""
    if shards <= 1 or not settled or steady_for < lease_duration:
        return False
    return held > fair_share(shards, live)


class Membership:
    """This replica's membership Lease, and the live members it sees (itself included)."""

    def __init__(
        self, kube: Kube, *, namespace: str, base: str, spec: LeaseSpec, logger: Any
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._base = base
        self._spec = spec
        self.name = member_lease_name(base, spec.identity)
        self._log = logger.bind(member=self.name)
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[tuple[str, str], float, str]] = {}
        self._joined: float | None = None
        self._live: frozenset[str] = frozenset()
        self._steady_since = time.monotonic()
        self._mine: KubeObject | None = None

    def live(self) -> list[str]:
        """Identities of the live members, this replica first."""
        now = time.monotonic()
        with self._lock:
            others = sorted(
                holder
                for name, (_, at, holder) in self._seen.items()
                if name != self.name and holder and now < at + self._spec.lease_duration
            )
        return [self._spec.identity, *others]

    def settled(self) -> bool:
        """A member for one leaseDuration: every live replica has been seen by now."""
        with self._lock:
            joined = self._joined
        return joined is not None and time.monotonic() - joined >= self._spec.lease_duration

    def steady_for(self) -> float:
        """Seconds since the set of live members last changed, as this replica saw it."""
        with self._lock:
            return time.monotonic() - self._steady_since

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._renew()
                self._observe()
            except KubeError as e:
                self._log.warning("shard.member_error", error=str(e))
            stop.wait(self._spec.retry_period)

    def release(self) -> None:
        """Leave at once, so the others count one replica less now, not after it expires."""
        try:
            self._kube.request(
                "DELETE",
                LEASES.path(self._namespace, self.name),
                verb="delete",
                timeout=self._spec.request_timeout,
                what=f"delete Lease {self._namespace}/{self.name}",
            )
        except KubeError as e:
            self._log.warning("shard.member_error", error=str(e))

    def _renew(self) -> None:
        lease = self._mine
        now = micro_time()
        if lease is None:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": self._namespace,
                    "labels": {MEMBER_LABEL: self._base},
                },
                "spec": {
                    "holderIdentity": self._spec.identity,
                    "leaseDurationSeconds": math.ceil(self._spec.lease_duration),
                    "acquireTime": now,
                },
            }
        lease = {**lease, "spec": {**lease["spec"], "renewTime": now}}
        try:
            if self._mine is None:
                self._mine = self._call("POST", LEASES.path(self._namespace, ""), "create", lease)
            else:
                self._mine = self._call(
                    "PUT", LEASES.path(self._namespace, self.name), "update", lease
                )
        except ConflictError:
            self._mine = None  # created before, or deleted as stale: write it afresh
            current = self._call("GET", LEASES.path(self._namespace, self.name), "get", None)
            self._mine = current
            return
        except KubeError as e:
            if e.status == 404:
                self._mine = None
            raise
        with self._lock:
            if self._joined is None:
                self._joined = time.monotonic()
                self._log.info("shard.member_joined")

    def _observe(self) -> None:
        found = self._kube.request(
            "GET",
            LEASES.path(self._namespace, ""),
            verb="list",
            query={"labelSelector": f"{MEMBER_LABEL}={self._base}"},
            timeout=self._spec.request_timeout,
            what=f"list member Leases of {self._base}",
        )
        now = time.monotonic()
        stale = []
        with self._lock:
            seen = {}
            for item in found.get("items") or []:
                name = str(item["metadata"]["name"])
                spec = item.get("spec") or {}
                record = (
                    str(spec.get("renewTime") or ""),
                    str(item["metadata"]["resourceVersion"]),
                )
                old = self._seen.get(name)
                at = old[1] if old is not None and old[0] == record else now
                seen[name] = (record, at, str(spec.get("holderIdentity") or ""))
                if name != self.name and now - at > 3 * self._spec.lease_duration:
                    stale.append(name)
            self._seen = seen
            live = frozenset(
                n for n, (_, at, _) in seen.items() if now < at + self._spec.lease_duration
            )
            if live != self._live:
                self._live, self._steady_since = live, now
        for name in stale:  # a replica killed without a goodbye
            try:
                self._kube.request(
                    "DELETE",
                    LEASES.path(self._namespace, name),
                    verb="delete",
                    timeout=self._spec.request_timeout,
                    what=f"delete stale Lease {self._namespace}/{name}",
                )
                self._log.info("shard.member_removed", stale=name)
            except KubeError as e:
                if e.status != 404:
                    self._log.warning("shard.member_error", error=str(e))

    def _call(self, method: str, path: str, verb: str, body: Any) -> KubeObject:
        out: KubeObject = self._kube.request(
            method,
            path,
            verb=verb,
            body=body,
            timeout=self._spec.request_timeout,
            what=f"{verb} Lease {self._namespace}/{self.name}",
        )
        return out


class ShardSet:
    """The shard electors of one replica (one for ``shards: 1``), its membership, and the
    hand-off of a shard it holds beyond its share."""

    def __init__(
        self,
        kube: Kube,
        *,
        base: LeaseSpec,
        shards: int,
        on_started: Callable[[int], None],
        on_lost: Callable[[int], None],
        logger: Any,
        on_shed: Callable[[int], bool] | None = None,
    ) -> None:
        """``base`` names the configured Lease; ``kube`` is the Lease's own client.
        ``on_shed(i)`` stops the work of shard i and says whether none is left running;
        without it the replica keeps what it holds."""
        self.count = shards
        self.identity = base.identity
        self.lease_duration = base.lease_duration
        self._kube, self._base, self._log = kube, base, logger
        self._on_started, self._on_lost, self._on_shed = on_started, on_lost, on_shed
        self._gate = threading.Lock()  # one acquisition attempt at a time (see _may_acquire)
        self._lock = threading.Lock()  # guards the elector list (a shed shard gets a new one)
        self.membership: Membership | None = None
        if shards > 1:
            self.membership = Membership(
                kube, namespace=base.namespace, base=base.name, spec=base, logger=logger
            )
        self._electors = [self._elector(i) for i in range(shards)]
        self._stops = [threading.Event() for _ in range(shards)]
        self._threads: dict[str, threading.Thread] = {}
        self._last_shed = 0.0
        self._kept: set[int] = set()  # shards a hand-off could not drain; others go first

    def _elector(self, shard: int) -> LeaderElector:
        sharded = self.count > 1
        return LeaderElector(
            self._kube,
            replace(self._base, name=lease_names(self._base.name, self.count)[shard]),
            on_started=_bind(self._on_started, shard),
            on_lost=_bind(self._on_lost, shard),
            logger=self._log.bind(shard=shard) if sharded else self._log,
            may_acquire=self._may_acquire if sharded else None,
            acquire_lock=self._gate if sharded else None,
        )

    @property
    def electors(self) -> tuple[LeaderElector, ...]:
        with self._lock:
            return tuple(self._electors)

    def start(self, stop: threading.Event) -> None:
        """The membership loop first (its first renewal is the earliest one may take)."""
        if self.membership is not None:
            self._spawn("gitsync-member", self.membership.run, stop)
            if self._on_shed is not None:
                self._spawn("gitsync-rebalance", self._rebalance, stop)
        for i, elector in enumerate(self.electors):
            self._spawn(self._thread_name(i), elector.run, self._stops[i])

    def stop(self) -> None:
        """End every elector loop (the caller sets the ``stop`` given to ``start``)."""
        for event in self._stops:
            event.set()

    def _thread_name(self, shard: int) -> str:
        return f"gitsync-leader-{shard}" if self.count > 1 else "gitsync-leader"

    def _spawn(
        self, name: str, loop: Callable[[threading.Event], None], stop: threading.Event
    ) -> None:
        thread = threading.Thread(target=loop, args=(stop,), name=name, daemon=True)
        thread.start()
        with self._lock:
            self._threads[name] = thread

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        with self._lock:
            return all(t.is_alive() for t in self._threads.values())

    def held(self) -> frozenset[int]:
        return frozenset(i for i, e in enumerate(self.electors) if e.is_leader)

    def holders(self) -> dict[str, str]:
        """Each shard's holder as this replica last saw it ("" for none yet)."""
        return {str(i): e.holder() for i, e in enumerate(self.electors)}

    def write_fence(self) -> str:
        """Why no write may leave now: no shard held, a shard lost, or a held shard past
        its renew deadline ("" to go ahead)."""
        electors = self.electors
        if self.count == 1:
            return electors[0].write_fence()
        held = False
        for i, elector in enumerate(electors):
            if elector.lost:
                return f"shard {i}: Lease lost"
            if elector.is_leader:
                held = True
                reason = elector.write_fence()
                if reason:
                    return f"shard {i}: {reason}"
        return "" if held else "holds no shard"

    def release(self) -> list[int]:
        """Give every held shard up (and leave the membership); the shards released."""
        released = [i for i, e in enumerate(self.electors) if e.release()]
        if self.membership is not None:
            self.membership.release()
        return released

    def healthy(self) -> tuple[bool, str]:
        for elector in self.electors:
            ok, error = elector.healthy()
            if not ok:
                return ok, error
        return True, ""

    def renew_stats(self) -> dict[str, float]:
        """The renewal latencies of the held shard with the slowest p99."""
        stats = [e.renew_stats() for e in self.electors]
        return max(stats, key=lambda s: (s.get("p99", 0.0), s["count"]))

    def live_members(self) -> list[str]:
        return self.membership.live() if self.membership is not None else [self.identity]

    def _may_acquire(self, free_for: float) -> bool:
        """Called under ``_gate`` by the electors, so ``held`` cannot change meanwhile."""
        if self.membership is None:
            return True
        return should_acquire(
            held=sum(e.claimed() for e in self.electors),
            shards=self.count,
            live=len(self.membership.live()),
            free_for=free_for,
            lease_duration=self.lease_duration,
            settled=self.membership.settled(),
        )

    # --- hand-off ------------------------------------------------------------------------

    def _rebalance(self, stop: threading.Event) -> None:
        """Every retryPeriod: above its share, with the members steady, hand one shard off."""
        assert self.membership is not None  # noqa: S101 - started only with a membership
        while not stop.wait(self._base.retry_period):
            held = sorted(self.held())
            shed = should_shed(
                held=len(held),
                shards=self.count,
                live=len(self.membership.live()),
                settled=self.membership.settled(),
                steady_for=min(self.membership.steady_for(), time.monotonic() - self._last_shed),
                lease_duration=self.lease_duration,
            )
            if shed and not stop.is_set():
                untried = sorted(set(held) - self._kept)
                if not untried:  # every one was busy: start over
                    self._kept.clear()
                    untried = held
                self._hand_off(untried[-1], stop)

    def _hand_off(self, shard: int, stop: threading.Event) -> None:
        """Drain the shard's work (``on_shed``), end its elector, release its Lease, and
        stand by for it with a fresh elector."""
        assert self._on_shed is not None  # noqa: S101 - the loop runs only with it
        self._last_shed = time.monotonic()
        live = self.live_members()
        self._log.info("shard.handing_off", shard=shard, members=len(live))
        if not self._on_shed(shard):
            self._log.warning("shard.kept", shard=shard, reason="a sync of it is still running")
            self._kept.add(shard)
            return
        self._kept.discard(shard)
        old = self.electors[shard]
        self._stops[shard].set()
        with self._lock:
            thread = self._threads.get(self._thread_name(shard))
        if thread is not None:
            thread.join(self._base.lease_duration)
        released = old.release()
        fresh = self._elector(shard)
        with self._lock:
            self._electors[shard] = fresh
            self._stops[shard] = threading.Event()
            if stop.is_set():
                self._stops[shard].set()
        self._log.info("shard.handed_off", shard=shard, released=released)
        self._spawn(self._thread_name(shard), fresh.run, self._stops[shard])


def _bind(callback: Callable[[int], None], shard: int) -> Callable[[], None]:
    def call() -> None:
        callback(shard)

    return call


def publish(held: frozenset[int], shards: int) -> None:
    """``gitsync_shard_held{shard}`` for every shard, and ``gitsync_leader`` for any."""
    for i in range(shards):
        metrics.SHARD_HELD.labels(shard=str(i)).set(1 if i in held else 0)
    metrics.IS_LEADER.set(1 if held else 0)
