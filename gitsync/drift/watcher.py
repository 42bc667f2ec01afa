"""Drift detection: watch what an app manages, report who changed which field, self-heal.

``DriftWatcher`` runs per app on threads: one LIST+WATCH per managed kind (selected by
the app label, resumed from its resourceVersion, bookmarks on, relisted after ``410
Gone``, retried while the API server is away), one on the app's state Secret (the intent
is its ``healthy_manifests``: a sync anywhere updates the watcher without a call), and a
worker thread that alone owns the watcher's state and runs the rules of
``gitsync.drift.compare`` on every change.

A relist is a full compare, not a flood: a drift is reported once (``drift.detected``),
again only if it changes, and ``drift.resolved`` when it goes away. With ``selfHeal`` an
object is re-applied after a debounce; healing one object too often in a window is a
fight with someone, and stops (``drift.fight``). ``scan`` is the same compare, once, for
``gitsync status``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import queue
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from gitsync import log
from gitsync.config import AppConfig
from gitsync.drift.compare import (
    EXPECTED_MANAGERS,
    OBJECT_PATH,
    OWNER,
    DriftReport,
    DriftSet,
    compare,
    deleted_report,
    display,
    gitsync_applied_at,
    gitsync_wrote,
    hpa_targets,
    now_text,
    writers,
    written_at,
)
from gitsync.engine import ignores, inventory, statestore
from gitsync.engine.inventory import AppState
from gitsync.errors import KubeError, NotFoundError, StateError
from gitsync.fields import content_hash
from gitsync.kube import Kube, WatchCancel
from gitsync.model import APP_LABEL, Identity, KubeObject, ObjectRef, field_manager
from gitsync.runtime import events, metrics

STATE_LABEL: Final = statestore.STATE_LABEL

KindKey: TypeAlias = tuple[str, str]
_STATE: Final[KindKey] = ("", "(state)")


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftSettings:
    """Timings and limits; the defaults suit a controller, tests shorten them."""

    debounce: float = 2.0  # self-heal waits this long after a drift is seen
    heal_limit: int = 5  # heals of one object allowed within heal_window ...
    heal_window: float = 600.0  # ... before it is a fight and healing stops
    settle: float = 2.0  # a vanished object is drift only if still gone and desired then
    watch_timeout: int = 300  # server-side watch timeout; the watch is resumed after it
    retry_max: float = 5.0  # longest wait between reconnect attempts
    missing_kind_retry: float = 60.0  # a kind the server does not serve (yet) is retried
    hpa_ttl: float = 30.0  # HorizontalPodAutoscalers of a namespace are re-read after this
    emit_events: bool = True
    expected_managers: frozenset[str] = EXPECTED_MANAGERS


@dataclass(frozen=True, slots=True)
class _Intent:
    obj: KubeObject = field(repr=False)  # may be a Secret
    digest: str
    ref: ObjectRef


# --- messages to the worker ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Listed:
    kind: KindKey
    items: list[KubeObject] = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Changed:
    kind: KindKey
    type: str
    obj: KubeObject = field(repr=False)


@dataclass(frozen=True, slots=True)
class _NewIntents:
    objects: tuple[KubeObject, ...] = field(repr=False)
    revision: str
    synced_at: str


@dataclass(frozen=True, slots=True)
class _Resume:
    """A sync in this process finished: read its state, compare everything again."""


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Message: TypeAlias = _Listed | _Changed | _NewIntents | _Resume | _Stop


def read_intent(kube: Kube, app: str, state_namespace: str) -> tuple[AppState, str] | None:
    """The app's stored state and when it was written; None if none is stored.

    Read whole through the state store, never decoded from a watched head Secret: a
    large state's head only points at chunk Secrets. Raises StateError if unreadable.
    """
    stored = statestore.load(kube, app=app, namespace=state_namespace)
    if stored.head is None or stored.blob is None:
        return None
    try:
        state = inventory.decode(stored.blob, resource_version=stored.resource_version)
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        msg = f"the state of app {app!r} in {state_namespace} is unreadable: {e}"
        raise StateError(msg) from e
    return state, written_at(stored.head)


class _Stream:
    """LIST then WATCH one kind, label-selected, until stopped; posts what it sees.

    Resumes from the last resourceVersion (bookmarks keep it fresh), relists after ``410
    Gone``, and retries with a capped backoff while the API server is unreachable.
    """

    def __init__(
        self,
        *,
        kube: Kube,
        ref: ObjectRef,
        key: KindKey,
        namespace: str,
        selector: str,
        post: Callable[[_Message], None],
        settings: DriftSettings,
        logger: Any,
    ) -> None:
        self.key = key
        self._kube, self._ref, self._namespace, self._selector = kube, ref, namespace, selector
        self._post, self._settings, self._log = post, settings, logger
        self._stopped = threading.Event()
        self._cancel = WatchCancel()
        self._thread = threading.Thread(
            target=self._run, name=f"drift-watch-{ref.kind}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._cancel.cancel()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        rv = ""
        delay = 0.2
        while not self._stopped.is_set():
            try:
                res = self._kube.resource(self._ref)
                if not rv:
                    items, rv = self._kube.list_objects(
                        res, namespace=self._namespace, label_selector=self._selector
                    )
                    self._post(_Listed(self.key, items))
                rv, delay = self._watch(res, rv, delay)
            except NotFoundError as e:
                self._log.warning("drift.watch_failed", kind=self._ref.kind, error=str(e))
                rv = ""
                self._stopped.wait(self._settings.missing_kind_retry)
            except KubeError as e:
                if self._stopped.is_set():
                    return
                if e.status == 410:
                    rv = ""
                self._log.info(
                    "drift.watch_retry", kind=self._ref.kind, error=str(e), seconds=delay
                )
                self._stopped.wait(delay)
                delay = min(delay * 2, self._settings.retry_max)

    def _watch(self, res: Any, rv: str, delay: float) -> tuple[str, float]:
        """One watch request; returns where to resume ("" = relist) and the next backoff."""
        for kind, obj in self._kube.watch(
            res,
            namespace=self._namespace,
            label_selector=self._selector,
            resource_version=rv,
            timeout_seconds=self._settings.watch_timeout,
            cancel=self._cancel,
        ):
            if self._stopped.is_set():
                return rv, delay
            if kind == "ERROR":
                if obj.get("code") == 410:
                    self._log.info("drift.relist", kind=self._ref.kind, reason="410 Gone")
                    return "", 0.2
                self._log.warning(
                    "drift.watch_error", kind=self._ref.kind, error=str(obj.get("message"))
                )
                self._stopped.wait(delay)
                return rv, min(delay * 2, self._settings.retry_max)
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            delay = 0.2
            if kind != "BOOKMARK":
                self._post(_Changed(self.key, kind, obj))
        return rv, delay


class DriftWatcher:
    """Watches one app's objects and reports drift; ``start()``, ``current()``, ``stop()``.

    The controller starts one per app on the leader. The intent comes from the app's
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
    ) -> None:
        # ``kube`` is the app's identity (its ServiceAccount, if any): watches and heals;
        # ``state_kube`` is gitsync's own: the state stream, intents and Events.
        self.kube, self.app, self.state_namespace = kube, app, state_namespace
        self.state_kube = state_kube or kube
        self.manager = field_manager(app.name)
        self.settings = settings or DriftSettings()
        self.log = logger if logger is not None else log.get(app=app.name)
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._lock = threading.Lock()
        self._published: dict[Identity, tuple[DriftReport, ...]] = {}
        self._holds = 0
        self._ready = threading.Event()
        self._worker: threading.Thread | None = None
        self._streams: dict[KindKey, _Stream] = {}
        # Everything below is owned by the worker thread.
        self._intents: dict[Identity, _Intent] = {}
        self._revision = ""
        self._synced_at = ""
        self._state_known = False
        self._live: dict[Identity, KubeObject] = {}
        self._listed: set[KindKey] = set()
        self._dry: dict[Identity, tuple[str, KubeObject | None]] = {}
        self._hpa: dict[str, tuple[float, frozenset[tuple[str, str, str]]]] = {}
        self._timers: list[tuple[float, int, str, Identity]] = []
        self._seq = itertools.count()
        self._gone_due: dict[Identity, float] = {}
        self._last_gone = 0.0
        self._heal_due: set[Identity] = set()
        self._heals: dict[Identity, deque[float]] = {}
        self._heal_managers: dict[Identity, set[str]] = {}
        self._fighting: set[Identity] = set()
        self._healed_at: dict[Identity, str] = {}
        # Objects gitsync wrote since their intent was installed (a sync is on them).
        self._touched: set[Identity] = set()

    # --- public ------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; returns at once (``wait_ready`` waits for the first compare)."""
        if self._worker is not None:
            return
        self._worker = threading.Thread(
            target=self._loop, name=f"drift-{self.app.name}", daemon=True
        )
        self._worker.start()
        state_ref = ObjectRef(
            group="", version="v1", kind="Secret", namespace=self.state_namespace, name=""
        )
        self._start_stream(
            _STATE,
            state_ref,
            self.state_namespace,
            f"{STATE_LABEL}={self.app.name}",
            kube=self.state_kube,
        )
        self.log.info("drift.watching", state_namespace=self.state_namespace)

    def wait_ready(self, timeout: float) -> bool:
        """Whether every managed object was compared once within ``timeout`` seconds."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every thread this watcher started and forget its gauge."""
        deadline = time.monotonic() + timeout
        # The worker starts streams for new kinds: stop it first, then what it started.
        self._queue.put(_Stop())
        if self._worker is not None:
            self._worker.join(max(0.0, deadline - time.monotonic()))
        streams = list(self._streams.values())
        for stream in streams:
            stream.stop()
        for stream in streams:
            stream.join(max(0.0, deadline - time.monotonic()))
        self._streams.clear()
        self._worker = None
        with contextlib.suppress(KeyError):
            metrics.DRIFT_OBJECTS.remove(self.app.name)
        self.log.info("drift.stopped")

    def current(self) -> DriftSet:
        """The app's drift now, one report per field, in a stable order."""
        with self._lock:
            reports = [r for group in self._published.values() for r in group]
        return DriftSet(sorted(reports, key=lambda r: (r.ref, r.path)))

    @contextlib.contextmanager
    def syncing(self) -> Iterator[None]:
        """Hold reports that a sync's own writes could cause until the sync is over."""
        with self._lock:
            self._holds += 1
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
            self._queue.put(_Resume())

    def _held(self) -> bool:
        with self._lock:
            return self._holds > 0

    def update_intents(self, objects: Iterable[KubeObject], *, revision: str) -> None:
        """Compare against these objects from now on (what a sync just applied)."""
        self._queue.put(_NewIntents(tuple(objects), revision, now_text()))

    # --- worker ------------------------------------------------------------------------

    def _start_stream(
        self, key: KindKey, ref: ObjectRef, namespace: str, selector: str, kube: Kube | None = None
    ) -> None:
        stream = _Stream(
            kube=kube or self.kube,
            ref=ref,
            key=key,
            namespace=namespace,
            selector=selector,
            post=self._queue.put,
            settings=self.settings,
            logger=self.log,
        )
        self._streams[key] = stream
        stream.start()

    def _loop(self) -> None:
        while True:
            wait = None
            if self._timers:
                wait = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                message: _Message | None = self._queue.get(timeout=wait)
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
            self._resume()
        elif isinstance(message, _Listed | _Changed) and message.kind == _STATE:
            self._on_state(message)
        elif isinstance(message, _Listed):
            self._on_listed(message)
        elif isinstance(message, _Changed):
            self._on_changed(message)

    def _on_state(self, message: _Listed | _Changed) -> None:
        secrets = message.items if isinstance(message, _Listed) else [message.obj]
        if isinstance(message, _Changed) and message.type == "DELETED":
            return  # keep the last known intent: a lost Secret is not a new desired state
        head = inventory.secret_name(self.app.name)
        if any((s.get("metadata") or {}).get("name") == head for s in secrets):
            # The head changed: read the state it now stands for (it may be in chunks).
            try:
                found = read_intent(self.state_kube, self.app.name, self.state_namespace)
            except (StateError, KubeError) as e:
                self.log.warning("drift.state_unreadable", error=str(e))
                found = None
            if found is not None:
                state, synced_at = found
                self._install(state.healthy_manifests, state.healthy_revision, synced_at)
        if not self._state_known:
            self._state_known = True
            self._check_ready()

    def _install(self, objects: Iterable[KubeObject], revision: str, synced_at: str) -> None:
        """New intents: forget what they invalidate, watch new kinds, compare everything."""
        fresh: dict[Identity, _Intent] = {}
        for obj in objects:
            ref = ObjectRef.of(obj)
            fresh[ref.identity()] = _Intent(obj=obj, digest=content_hash(obj), ref=ref)
        for ident, old in self._intents.items():
            new = fresh.get(ident)
            if new is None or new.digest != old.digest:
                self._touched.discard(ident)
                self._dry.pop(ident, None)
                self._heals.pop(ident, None)
                self._heal_managers.pop(ident, None)
                self._fighting.discard(ident)
        if revision != self._revision or len(fresh) != len(self._intents):
            self.log.info("drift.intents", revision=revision[:12], objects=len(fresh))
        self._intents, self._revision = fresh, revision
        self._synced_at = max(self._synced_at, synced_at)
        self._state_known = True
        kinds = {(i.ref.group, i.ref.kind): i.ref for i in fresh.values()}
        for key in [k for k in self._streams if k != _STATE and k not in kinds]:
            self._streams.pop(key).stop()
            self._listed.discard(key)
        for key, ref in kinds.items():
            if key not in self._streams:
                template = ObjectRef(
                    group=ref.group, version=ref.version, kind=ref.kind, namespace="", name=""
                )
                self._start_stream(key, template, "", f"{APP_LABEL}={self.app.name}")
        for ident in list(self._published):
            if ident not in fresh:
                self._publish(ident, [], reason="no longer desired")
        for ident, intent in fresh.items():
            if ident in self._live:
                self._evaluate(ident)
            elif (intent.ref.group, intent.ref.kind) in self._listed:
                self._schedule_gone(ident)
        self._check_ready()

    def _on_listed(self, message: _Listed) -> None:
        """A (re)list: a full compare; what it no longer holds has vanished."""
        present: set[Identity] = set()
        for obj in message.items:
            ident = ObjectRef.of(obj).identity()
            present.add(ident)
            before = self._live.get(ident)
            self._live[ident] = obj
            self._evaluate(ident, before)
        for ident in [i for i in self._live if (i[0], i[1]) == message.kind]:
            if ident not in present:
                del self._live[ident]
        for ident, intent in self._intents.items():
            if (intent.ref.group, intent.ref.kind) == message.kind and ident not in present:
                self._schedule_gone(ident)
        self._listed.add(message.kind)
        self._check_ready()

    def _on_changed(self, message: _Changed) -> None:
        ident = ObjectRef.of(message.obj).identity()
        if message.type == "DELETED":
            self._live.pop(ident, None)
            self._last_gone = time.monotonic()
            self._schedule_gone(ident)
            return
        before = self._live.get(ident)
        self._live[ident] = message.obj
        self._gone_due.pop(ident, None)
        self._evaluate(ident, before)

    def _resume(self) -> None:
        """After a sync here: its state now, then a full compare, and heals if wanted."""
        if self._held():
            return
        try:
            found = read_intent(self.state_kube, self.app.name, self.state_namespace)
        except (StateError, KubeError) as e:
            self.log.warning("drift.state_unreadable", error=str(e))
            found = None
        if found is not None:
            state, synced_at = found
            self._install(state.healthy_manifests, state.healthy_revision, synced_at)
        else:
            for ident in list(self._live):
                self._evaluate(ident)
        if self.app.self_heal:
            for ident in list(self._published):
                self._schedule_heal(ident)

    def _check_ready(self) -> None:
        kinds = {(i.ref.group, i.ref.kind) for i in self._intents.values()}
        if self._state_known and kinds <= self._listed and not self._ready.is_set():
            metrics.DRIFT_OBJECTS.labels(app=self.app.name).set(len(self._published))
            self._ready.set()
            self.log.info(
                "drift.ready",
                objects=len(self._intents),
                drifted=len([g for g in self._published.values() if g]),
                revision=self._revision[:12],
            )

    # --- compare and report --------------------------------------------------------------

    def _since(self, ident: Identity) -> str:
        return max(self._synced_at, self._healed_at.get(ident, ""))

    def _applied_since(self, ident: Identity, live: KubeObject) -> bool:
        """gitsync applied ``live`` after the intent was recorded: a sync is on it."""
        return gitsync_applied_at(live, manager=self.manager) > self._since(ident)

    def _evaluate(self, ident: Identity, before: KubeObject | None = None) -> None:
        intent = self._intents.get(ident)
        live = self._live.get(ident)
        if intent is None or live is None:
            return
        if gitsync_wrote(before, live, manager=self.manager):
            self._touched.add(ident)
        reports = compare(
            intent.obj,
            live,
            app=self.app.name,
            revision=self._revision,
            ignore=self.app.ignore,
            server_desired=lambda: self._dry_run(ident),
            autoscaled=self._autoscaled,
            changed_by=writers(before, live, manager=self.manager),
            expected_managers=self.settings.expected_managers,
        )
        self._publish(ident, self._hold_back(ident, live, reports))

    def _hold_back(
        self, ident: Identity, live: KubeObject, reports: list[DriftReport]
    ) -> list[DriftReport]:
        """Without an owner, a difference may be a sync's own write: while one may be on
        this object, such differences wait (what was already reported stays reported)."""
        ownerless = [r for r in reports if r.attribution != OWNER]
        if not ownerless:
            self._touched.discard(ident)  # the object agrees with the intent again
            return reports
        syncing = (
            self._held()
            or ident in self._touched
            or gitsync_applied_at(live, manager=self.manager) > self._since(ident)
        )
        if not syncing:
            return reports
        waiting = {r.path for r in ownerless}
        earlier = [r for r in self._published.get(ident, ()) if r.path in waiting]
        return [r for r in reports if r.attribution == OWNER] + earlier

    def _dry_run(self, ident: Identity) -> KubeObject | None:
        """The intent as the server would store it; one dry-run per intent version."""
        intent = self._intents[ident]
        cached = self._dry.get(ident)
        if cached is not None and cached[0] == intent.digest:
            return cached[1]
        try:
            result: KubeObject | None = self.kube.apply(
                intent.obj, dry_run=True, manager=self.manager
            )
        except KubeError as e:
            self.log.debug("drift.dry_run_failed", object=str(intent.ref), error=str(e))
            result = None
        self._dry[ident] = (intent.digest, result)
        return result

    def _autoscaled(self, ref: ObjectRef) -> bool:
        """An HPA in the namespace targets ``ref`` (then it owns spec.replicas)."""
        cached = self._hpa.get(ref.namespace)
        if cached is None or cached[0] < time.monotonic():
            res = self.kube.discover().preferred.get(("autoscaling", "HorizontalPodAutoscaler"))
            targets: frozenset[tuple[str, str, str]] = frozenset()
            if res is not None:
                try:
                    items, _rv = self.kube.list_objects(res, namespace=ref.namespace)
                    targets = hpa_targets(items)
                except KubeError as e:
                    self.log.debug("drift.hpa_lookup_failed", namespace=ref.namespace, error=str(e))
            cached = (time.monotonic() + self.settings.hpa_ttl, targets)
            self._hpa[ref.namespace] = cached
        return (ref.namespace, ref.kind, ref.name) in cached[1]

    def _publish(self, ident: Identity, reports: list[DriftReport], *, reason: str = "") -> None:
        """Log what is new or changed and what went away; keep the rest as first reported."""
        old = {r.path: r for r in self._published.get(ident, ())}
        kept: list[DriftReport] = []
        detected: list[DriftReport] = []
        for report in reports:
            previous = old.get(report.path)
            if previous is not None and previous.signature == report.signature:
                kept.append(previous)
            else:
                kept.append(report)
                detected.append(report)
        now_paths = {r.path for r in reports}
        resolved = [r for path, r in old.items() if path not in now_paths]
        if OBJECT_PATH in now_paths:
            resolved = []  # its fields did not come back: the whole object went away
        if not detected and not resolved:
            return
        for report in detected:
            self.log.warning("drift.detected", **report.log_fields())
        for report in resolved:
            fields = report.log_fields()
            self.log.info(
                "drift.resolved",
                object=fields["object"],
                field=fields["field"],
                desired=fields["desired"],
                revision=self._revision[:12],
                **({"reason": reason} if reason else {}),
            )
        with self._lock:
            if kept:
                self._published[ident] = tuple(kept)
            else:
                self._published.pop(ident, None)
            drifted = len(self._published)
        metrics.DRIFT_OBJECTS.labels(app=self.app.name).set(drifted)
        if detected:
            self._emit_event(ident, detected)
            if self.app.self_heal:
                self._schedule_heal(ident)

    def _emit_event(self, ident: Identity, reports: list[DriftReport]) -> None:
        if not self.settings.emit_events:
            return
        live = self._live.get(ident) or {}
        uid = str((live.get("metadata") or {}).get("uid") or "")
        message = "drift from Git: " + "; ".join(r.summary() for r in reports)
        events.emit(
            self.state_kube,
            involved=reports[0].ref,
            uid=uid,
            reason="Drift",
            message=message,
            warning=True,
            fallback_namespace=self.state_namespace,
        )

    # --- timers: vanished objects and self-heal --------------------------------------------

    def _at(self, delay: float, what: str, ident: Identity) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), what, ident))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _due, _seq, what, ident = heapq.heappop(self._timers)
            if what == "gone":
                self._confirm_gone(ident)
            elif what == "heal":
                self._heal(ident)

    def _schedule_gone(self, ident: Identity) -> None:
        if ident in self._intents and ident not in self._gone_due:
            self._gone_due[ident] = time.monotonic()
            self._at(self.settings.settle, "gone", ident)

    def _confirm_gone(self, ident: Identity) -> None:
        """Still gone after the settle time and still desired (not pruned): drift."""
        if ident not in self._gone_due:
            return
        if self._held():
            self._at(self.settings.settle, "gone", ident)  # a prune may be running
            return
        quiet = time.monotonic() - self._last_gone
        if quiet < self.settings.settle:
            # Deletions are still coming (a prune, a namespace going away): wait until
            # they stop, so the state Secret a prune writes last is seen first.
            self._at(self.settings.settle - quiet, "gone", ident)
            return
        del self._gone_due[ident]
        intent = self._intents.get(ident)
        if intent is None or ident in self._live:
            return
        try:
            found = self.kube.get(intent.ref)
        except KubeError as e:
            self.log.debug("drift.get_failed", object=str(intent.ref), error=str(e))
            found = None
        if found is not None:
            # It exists but left the app's label selector (relabelled): compare it once.
            reports = compare(
                intent.obj,
                found,
                app=self.app.name,
                revision=self._revision,
                ignore=self.app.ignore,
                server_desired=lambda: self._dry_run(ident),
                autoscaled=self._autoscaled,
                expected_managers=self.settings.expected_managers,
            )
            self._publish(ident, self._hold_back(ident, found, reports))
            return
        self._publish(
            ident,
            compare(
                intent.obj, None, app=self.app.name, revision=self._revision, ignore=self.app.ignore
            ),
        )

    def _schedule_heal(self, ident: Identity) -> None:
        if ident in self._heal_due or ident in self._fighting:
            return
        self._heal_due.add(ident)
        self._at(self.settings.debounce, "heal", ident)

    def _heal(self, ident: Identity) -> None:
        """Re-apply the intent, unless the drift is gone, a sync is on it, or it is a fight."""
        self._heal_due.discard(ident)
        intent = self._intents.get(ident)
        current = self._published.get(ident, ())
        if intent is None or not current or ident in self._fighting:
            return
        live = self._live.get(ident)
        if self._held() or (
            live is not None and gitsync_applied_at(live, manager=self.manager) > self._since(ident)
        ):
            return  # a sync is applying this object right now; _resume() looks again
        now = time.monotonic()
        history = self._heals.setdefault(ident, deque())
        while history and history[0] < now - self.settings.heal_window:
            history.popleft()
        managers = self._heal_managers.setdefault(ident, set())
        managers.update(r.manager or "unknown" for r in current)
        if len(history) >= self.settings.heal_limit:
            self._fighting.add(ident)
            self.log.error(
                "drift.fight",
                object=str(intent.ref),
                heals=len(history),
                window_seconds=self.settings.heal_window,
                managers=sorted(managers),
                fields=[r.path for r in current],
            )
            if self.settings.emit_events:
                events.emit(
                    self.state_kube,
                    involved=intent.ref,
                    reason="Drift",
                    message=(
                        f"self-heal stopped: healed {len(history)} times in "
                        f"{self.settings.heal_window:.0f}s, changed back each time by "
                        f"{', '.join(sorted(managers))}; fix the repository or the other writer"
                    ),
                    warning=True,
                    fallback_namespace=self.state_namespace,
                )
            return
        # Healing reverts exactly what drift reported: what sync leaves alone, it does too.
        body = intent.obj
        if live is not None:
            skipped = ignores.skipped(
                body, live, rules=self.app.ignore, autoscaled=self._autoscaled(intent.ref)
            )
            body = ignores.without(body, skipped) if skipped else body
        try:
            applied = self.kube.apply(body, manager=self.manager)
        except KubeError as e:
            self.log.error("drift.heal_failed", object=str(intent.ref), error=str(e))
            return
        history.append(now)
        self._healed_at[ident] = gitsync_applied_at(applied, manager=self.manager)
        self._touched.discard(ident)
        self.log.info(
            "drift.healed",
            object=str(intent.ref),
            fields=[r.path for r in current],
            managers=sorted({r.manager or "unknown" for r in current}),
            revision=self._revision[:12],
        )


def scan(
    kube: Kube, app: AppConfig, *, state_namespace: str, settings: DriftSettings | None = None
) -> DriftSet:
    """The app's drift now, from one LIST per managed kind: ``gitsync status``."""
    settings = settings or DriftSettings()
    found = read_intent(kube, app.name, state_namespace)
    if found is None:
        return DriftSet()
    state, synced_at = found
    intents = {ObjectRef.of(o).identity(): o for o in state.healthy_manifests}
    live: dict[Identity, KubeObject] = {}
    kinds = {(r.group, r.kind): r for r in map(ObjectRef.of, intents.values())}
    served: set[tuple[str, str]] = set()
    for key, kind_ref in kinds.items():
        try:
            res = kube.resource(kind_ref)
        except NotFoundError:
            continue  # not served (a CRD gone): every object of it is gone too
        served.add(key)
        items, _rv = kube.list_objects(res, label_selector=f"{APP_LABEL}={app.name}")
        for item in items:
            live[ObjectRef.of(item).identity()] = item
    hpas: dict[str, frozenset[tuple[str, str, str]]] = {}

    def autoscaled(target: ObjectRef) -> bool:
        if target.namespace not in hpas:
            res = kube.discover().preferred.get(("autoscaling", "HorizontalPodAutoscaler"))
            items = kube.list_objects(res, namespace=target.namespace)[0] if res else []
            hpas[target.namespace] = hpa_targets(items)
        return (target.namespace, target.kind, target.name) in hpas[target.namespace]

    reports: list[DriftReport] = []
    for ident, intent in intents.items():
        ref = ObjectRef.of(intent)
        obj = live.get(ident)
        if obj is None and (ref.group, ref.kind) in served:
            obj = kube.get(ref)  # it may only have lost the app label

        def dry_run(intent: KubeObject = intent) -> KubeObject | None:
            try:
                return kube.apply(intent, dry_run=True, manager=field_manager(app.name))
            except KubeError:
                return None

        reports.extend(
            compare(
                intent,
                obj,
                app=app.name,
                revision=state.healthy_revision,
                ignore=app.ignore,
                server_desired=dry_run,
                autoscaled=autoscaled,
                synced_at=synced_at,
                expected_managers=settings.expected_managers,
            )
        )
    return DriftSet(sorted(reports, key=lambda r: (r.ref, r.path)))


__all__ = [
    "OBJECT_PATH",
    "DriftReport",
    "DriftSet",
    "DriftSettings",
    "DriftWatcher",
    "compare",
    "deleted_report",
    "display",
    "scan",
]
