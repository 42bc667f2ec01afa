"""Drift detection: watch what an app manages, report who changed which field, self-heal.

A ``DriftWatcher`` is one worker thread per app that alone owns the app's drift state.
Its parts, each in its own module:

- ``streams``: subscriptions to the controller's shared informers (one watch per kind
  for every app, dispatched by app label) and to the app's state head Secret;
- ``intents``: the intent index, the state's ``healthy_manifests`` (a sync anywhere
  updates it without a call), with each intent's server-side form;
- ``publisher``: what is reported, logged once (``drift.detected``), again only if it
  changes, ``drift.resolved`` when it goes away;
- ``healer``: with ``selfHeal``, re-applies after a debounce, and stops at a fight.

The worker runs the rules of ``gitsync.drift.compare`` on every change. A relist of an
informer arrives as ordinary changes, so a reconnect is never a flood of reports.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from gitsync import log
from gitsync.config import AppConfig
from gitsync.drift.compare import (
    EXPECTED_MANAGERS,
    DriftReport,
    DriftSet,
    compare,
    now_text,
    writers,
)
from gitsync.drift.guard import Hold, SyncGuard
from gitsync.drift.healer import Healer, HealLimits
from gitsync.drift.intents import Intents, KindKey, read_intent
from gitsync.drift.publisher import Publisher
from gitsync.drift.streams import Changed, Event, Listed, StateChanged, Streams, owner_app
from gitsync.drift.timers import Timers
from gitsync.errors import KubeError, StateError
from gitsync.informers.hub import Informers
from gitsync.informers.informer import InformerSettings
from gitsync.kube import Kube
from gitsync.model import Identity, KubeObject, field_manager


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftSettings:
    """Timings and limits; the defaults suit a controller, tests shorten them."""

    debounce: float = 2.0  # self-heal waits this long after a drift is seen
    heal_limit: int = 5  # heals of one object allowed within heal_window ...
    heal_window: float = 600.0  # ... before it is a fight and healing stops
    settle: float = 2.0  # a vanished object is drift only if still gone and desired then
    # For a watcher without shared informers (it starts its own):
    watch_timeout: int = 300  # server-side watch timeout; the watch is resumed after it
    retry_max: float = 5.0  # longest wait between reconnect attempts
    missing_kind_retry: float = 60.0  # a kind the server does not serve (yet) is retried
    emit_events: bool = True
    expected_managers: frozenset[str] = EXPECTED_MANAGERS


# --- messages to the worker, besides what the streams post ---------------------------


@dataclass(frozen=True, slots=True)
class _NewIntents:
    objects: tuple[KubeObject, ...] = field(repr=False)
    revision: str
    synced_at: str


@dataclass(frozen=True, slots=True)
class _Resume:
    """A sync in this process finished: read its state (if it wrote one), compare again."""

    reread: bool = True


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Message: TypeAlias = Event | _NewIntents | _Resume | _Stop


class DriftWatcher:
    """Watches one app's objects and reports drift; ``start()``, ``current()``, ``stop()``.

    The controller starts one per app on the leader, all on its shared ``informers``;
    without them the watcher starts (and stops) its own. The intent comes from the app's
    state Secret (and is refreshed whenever a sync rewrites it); ``update_intents`` lets
    a caller hand fresh intents directly.

    While a sync of the same app runs, wrap it in ``syncing()``: the sync's own writes
    (fields a new commit drops, objects it prunes) leave no owner behind and would
    otherwise look like someone else's change until its state Secret is written. Syncs
    elsewhere (``gitsync sync --once``) are recognized from managedFields alone.
    """

    def __init__(
        self,
        kube: Kube,
        app: AppConfig,
        state_namespace: str,
        logger: Any = None,
        *,
        settings: DriftSettings | None = None,
        state_kube: Kube | None = None,
        informers: Informers | None = None,
    ) -> None:
        # ``kube`` is the app's identity (its ServiceAccount, if any): dry-runs and heals;
        # ``state_kube`` is gitsync's own: state reads, Events and (by default) informers.
        self.kube, self.app, self.state_namespace = kube, app, state_namespace
        self.state_kube = state_kube or kube
        self.manager = field_manager(app.name)
        self.settings = s = settings or DriftSettings()
        self.log = logger if logger is not None else log.get(app=app.name)
        # Reads of the state go through gitsync's identity, reads of objects through the
        # app's: shared informers serve an app with its own ServiceAccount its state
        # only, never objects its account may not read (it gets informers of its own).
        self._owned: list[Informers] = []
        self.state_informers = informers or self._informers_as(self.state_kube)
        reads_as_gitsync = informers is not None or kube is self.state_kube
        if app.service_account is None and reads_as_gitsync:
            self.informers = self.state_informers
        else:
            self.informers = self._informers_as(kube)
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._ready = threading.Event()
        self._worker: threading.Thread | None = None
        self.publisher = Publisher(
            app=app.name,
            kube=self.state_kube,
            state_namespace=state_namespace,
            logger=self.log,
            emit_events=s.emit_events,
        )
        # Everything below is owned by the worker thread.
        self.streams = Streams(
            self.informers,
            states=self.state_informers,
            app=app.name,
            state_namespace=state_namespace,
            post=self._queue.put,
        )
        self.intents = Intents(kube, manager=self.manager, logger=self.log)
        self.healer = Healer(
            kube=kube,
            state_kube=self.state_kube,
            app=app,
            manager=self.manager,
            state_namespace=state_namespace,
            limits=HealLimits(
                heal_limit=s.heal_limit, heal_window=s.heal_window, emit_events=s.emit_events
            ),
            autoscaled=self.informers.autoscaled,
            logger=self.log,
        )
        self.guard = SyncGuard(manager=self.manager, since=self._since)
        self._timers = Timers()
        self._gone_due: dict[Identity, float] = {}
        self._last_gone = 0.0
        self._heal_due: set[Identity] = set()

    def _informers_as(self, kube: Kube) -> Informers:
        """Informers of this watcher's own, stopped with it."""
        s = self.settings
        hub = Informers(
            kube,
            settings=InformerSettings(
                watch_timeout=s.watch_timeout,
                retry_max=s.retry_max,
                missing_kind_retry=s.missing_kind_retry,
            ),
            logger=self.log,
        )
        self._owned.append(hub)
        return hub

    # --- public ------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; returns at once (``wait_ready`` waits for the first compare)."""
        if self._worker is not None:
            return
        self._worker = threading.Thread(
            target=self._loop, name=f"drift-{self.app.name}", daemon=True
        )
        self._worker.start()
        self.log.info("drift.watching", state_namespace=self.state_namespace)

    def wait_ready(self, timeout: float) -> bool:
        """Whether every managed object was compared once within ``timeout`` seconds."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker and its subscriptions, and forget its gauge."""
        self._queue.put(_Stop())
        if self._worker is not None:
            self._worker.join(timeout)
        self.streams.stop()
        for hub in self._owned:
            hub.stop()
        self._worker = None
        self.publisher.forget_gauge()
        self.log.info("drift.stopped")

    def current(self) -> DriftSet:
        """The app's drift now, one report per field, in a stable order."""
        return self.publisher.current()

    def syncing(self) -> contextlib.AbstractContextManager[Hold]:
        """Hold reports that a sync's own writes could cause until the sync is over; set
        ``state_written = False`` on what it yields when the sync wrote no state."""
        return self.guard.syncing(after=lambda h: self._queue.put(_Resume(h.state_written)))

    def update_intents(self, objects: Iterable[KubeObject], *, revision: str) -> None:
        """Compare against these objects from now on (what a sync just applied)."""
        self._queue.put(_NewIntents(tuple(objects), revision, now_text()))

    # --- worker ------------------------------------------------------------------------

    def _loop(self) -> None:
        self.streams.watch_state()
        while True:
            try:
                message: _Message | None = self._queue.get(timeout=self._timers.wait())
            except queue.Empty:
                message = None
            if isinstance(message, _Stop):
                return
            try:
                if message is not None:
                    self._handle(message)
                self._run_timers()
            except Exception:  # one bad event must not end drift detection
                self.log.exception("drift.error")

    def _handle(self, message: _Message) -> None:
        if isinstance(message, _NewIntents):
            self._install(message.objects, message.revision, message.synced_at)
        elif isinstance(message, _Resume):
            self._resume(reread=message.reread)
        elif isinstance(message, StateChanged):
            if not message.deleted:  # a lost Secret is not a new desired state
                self._read_state()
            self.intents.known = True
            self._check_ready()
        elif isinstance(message, Listed):
            self._on_listed(message.kind)
        elif isinstance(message, Changed):
            self._on_changed(message)

    def _read_state(self) -> bool:
        """Install the intents the stored state names now; False if none is readable."""
        try:
            found = read_intent(self.state_kube, self.app.name, self.state_namespace)
        except (StateError, KubeError) as e:
            self.log.warning("drift.state_unreadable", error=str(e))
            return False
        if found is None:
            return False
        state, synced_at = found
        self._install(state.healthy_manifests, state.healthy_revision, synced_at)
        return True

    def _install(self, objects: Iterable[KubeObject], revision: str, synced_at: str) -> None:
        """New intents: forget what they invalidate, follow new kinds, compare everything."""
        old_revision, old_count = self.intents.revision, len(self.intents)
        changed, removed = self.intents.install(objects, revision, synced_at)
        for ident in changed | removed:
            self.guard.forget(ident)
            self.healer.forget(ident)
        if revision != old_revision or len(self.intents) != old_count:
            self.log.info("drift.intents", revision=revision[:12], objects=len(self.intents))
        self.streams.track(self.intents.kinds())
        for ident in self.publisher.drifted():
            if ident not in self.intents:
                self._publish(ident, [], reason="no longer desired")
        for ident, intent in self.intents.items():
            if not self.streams.listed(intent.kind):
                continue  # compared when its informer has listed
            if self.streams.live(ident) is not None:
                self._evaluate(ident)
            else:
                self._schedule_gone(ident)
        self._check_ready()

    def _on_listed(self, kind: KindKey) -> None:
        """The kind's informer holds a full LIST: compare all of it; what is missing vanished."""
        if not self.streams.mark_listed(kind):
            return
        for ident in self.intents.of_kind(kind):
            if self.streams.live(ident) is not None:
                self._evaluate(ident)
            else:
                self._schedule_gone(ident)
        self._check_ready()

    def _on_changed(self, message: Changed) -> None:
        change = message.change
        ident = change.ident
        if change.type == "DELETED" or owner_app(change.obj) != self.app.name:
            # Gone, or relabelled away from this app: looked at again after settling.
            self._last_gone = time.monotonic()
            self._schedule_gone(ident)
            return
        self._gone_due.pop(ident, None)
        self._evaluate(ident, change.obj, change.old())

    def _resume(self, *, reread: bool) -> None:
        """After a sync here: its state now (read at once, not when the informer brings
        the head: what was held back must meet the new intents), then compare again what
        was held back, and heal. A sync that wrote no state costs no read."""
        if self.guard.held():
            return
        deferred = self.guard.deferred()
        if not (reread and self._read_state()):  # a read compares everything anyway
            for ident in deferred:
                self._evaluate(ident)
        if self.app.self_heal:
            for ident in self.publisher.drifted():
                self._schedule_heal(ident)

    def _check_ready(self) -> None:
        kinds = self.intents.kinds()
        if self._ready.is_set() or not self.intents.known:
            return
        if all(self.streams.listed(k) for k in kinds):
            self.publisher.set_gauge()
            self._ready.set()
            self.log.info(
                "drift.ready",
                objects=len(self.intents),
                drifted=len(self.publisher.drifted()),
                revision=self.intents.revision[:12],
            )

    # --- compare and report --------------------------------------------------------------

    def _since(self, ident: Identity) -> str:
        return max(self.intents.synced_at, self.healer.healed_at(ident))

    def _evaluate(
        self, ident: Identity, live: KubeObject | None = None, before: KubeObject | None = None
    ) -> None:
        intent = self.intents.get(ident)
        live = live if live is not None else self.streams.live(ident)
        if intent is None or live is None:
            return
        self.guard.saw(ident, before, live)
        reports = compare(
            intent.obj,
            live,
            app=self.app.name,
            revision=self.intents.revision,
            ignore=self.app.ignore,
            server_desired=lambda: self.intents.server_desired(ident),
            autoscaled=self.informers.autoscaled,
            changed_by=writers(before, live, manager=self.manager),
            expected_managers=self.settings.expected_managers,
        )
        self._publish(ident, self._hold_back(ident, live, reports), live=live)

    def _hold_back(
        self, ident: Identity, live: KubeObject, reports: list[DriftReport]
    ) -> list[DriftReport]:
        return self.guard.hold_back(ident, live, reports, self.publisher.of(ident))

    def _publish(
        self,
        ident: Identity,
        reports: list[DriftReport],
        *,
        live: KubeObject | None = None,
        reason: str = "",
    ) -> None:
        uid = str(((live or {}).get("metadata") or {}).get("uid") or "")
        detected = self.publisher.publish(
            ident, reports, revision=self.intents.revision, uid=uid, reason=reason
        )
        if detected and self.app.self_heal:
            self._schedule_heal(ident)

    # --- timers: vanished objects and self-heal --------------------------------------------

    def _at(self, delay: float, what: str, ident: Identity) -> None:
        self._timers.at(delay, what, ident)

    def _run_timers(self) -> None:
        for what, ident in self._timers.due():
            if what == "gone":
                self._confirm_gone(ident)
            elif what == "heal":
                self._heal(ident)

    def _schedule_gone(self, ident: Identity) -> None:
        if ident in self.intents and ident not in self._gone_due:
            self._gone_due[ident] = time.monotonic()
            self._at(self.settings.settle, "gone", ident)

    def _confirm_gone(self, ident: Identity) -> None:
        """Still gone after the settle time and still desired (not pruned): drift."""
        if ident not in self._gone_due:
            return
        if self.guard.held():
            self._at(self.settings.settle, "gone", ident)  # a prune may be running
            return
        quiet = time.monotonic() - self._last_gone
        if quiet < self.settings.settle:
            # Deletions are still coming (a prune, a namespace going away): wait until
            # they stop, so the state Secret a prune writes last is seen first.
            self._at(self.settings.settle - quiet, "gone", ident)
            return
        del self._gone_due[ident]
        intent = self.intents.get(ident)
        if intent is None or self.streams.live(ident) is not None:
            return
        try:
            found = self.kube.get(intent.ref)
        except KubeError as e:
            self.log.debug("drift.get_failed", object=str(intent.ref), error=str(e))
            found = None
        reports = compare(
            intent.obj,
            found,
            app=self.app.name,
            revision=self.intents.revision,
            ignore=self.app.ignore,
            server_desired=lambda: self.intents.server_desired(ident),
            autoscaled=self.informers.autoscaled,
            expected_managers=self.settings.expected_managers,
        )
        if found is not None:
            # It exists but is no longer labelled for this app: compare it as it is.
            reports = self._hold_back(ident, found, reports)
        self._publish(ident, reports, live=found)

    def _schedule_heal(self, ident: Identity) -> None:
        if ident in self._heal_due or self.healer.fighting(ident):
            return
        self._heal_due.add(ident)
        self._at(self.settings.debounce, "heal", ident)

    def _heal(self, ident: Identity) -> None:
        """Re-apply the intent, unless the drift is gone, a sync is on it, or it is a fight."""
        self._heal_due.discard(ident)
        intent = self.intents.get(ident)
        current = self.publisher.of(ident)
        if intent is None or not current or self.healer.fighting(ident):
            return
        live = self.streams.live(ident)
        if self.guard.applying(ident, live):
            return  # a sync is applying this object right now; _resume() looks again
        if self.healer.heal(intent, live, current, revision=self.intents.revision):
            self.guard.forget(ident)


__all__ = ["DriftSettings", "DriftWatcher"]
