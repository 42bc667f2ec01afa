"""One kind, cluster-wide (or one namespace), kept current by LIST then WATCH.

The first LIST is served from the API server's watch cache (``resourceVersion=0``).
The watch resumes from the last resourceVersion (bookmarks keep it fresh), relists
after ``410 Gone``, and reconnects with a capped backoff while the API server is away:
a relist is a diff against the store, so subscribers see ordinary ADDED, MODIFIED and
DELETED changes, never a flood. A kind the server does not serve counts as synced and
empty, and is tried again later (its CRD may come); so is a kind the identity may not
read, flagged ``forbidden`` so that readers use their own calls instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gitsync.errors import KubeError, NotFoundError
from gitsync.informers.store import Change, Store
from gitsync.kube import Kube, Resource, WatchCancel

Subscriber = Callable[[Change], None]
ALL = ""  # subscribe to every change, whatever its label
POKE_AFTER = 1.0  # seconds: a missing kind is looked for again at most this often on demand


@dataclass(frozen=True, slots=True, kw_only=True)
class InformerSettings:
    """Timings; the defaults suit a controller, tests shorten them."""

    watch_timeout: int = 300  # server-side watch timeout; the watch is resumed after it
    retry_max: float = 5.0  # longest wait between reconnect attempts
    missing_kind_retry: float = 30.0  # a kind the server does not serve (yet) is retried


@dataclass(frozen=True, slots=True)
class Target:
    """What one informer watches: a kind, where, and which objects."""

    group: str
    kind: str
    namespace: str = ""
    selector: str = ""  # a label selector; "" is every object
    index_label: str = ""  # the label whose value indexes the store (the app, usually)

    @property
    def name(self) -> str:
        """``Kind.group``, and where and which when not everything: a metric label."""
        name = f"{self.kind}.{self.group}" if self.group else self.kind
        if self.namespace:
            name += f" in {self.namespace}"
        return name + (f" [{self.selector}]" if self.selector else "")


class Informer:
    """LIST+WATCH of one ``Target`` on a thread, into a ``Store``, fanned out to subscribers.

    Subscribers run on the informer's thread and must be quick (hand off to a queue);
    one that raises is logged and kept.
    """

    def __init__(
        self, kube: Kube, target: Target, *, settings: InformerSettings, logger: Any
    ) -> None:
        self.kube, self.target, self.settings, self.log = kube, target, settings, logger
        self.store = Store(index_label=target.index_label)
        self.forbidden = False  # the last LIST or WATCH was refused (403)
        self.lists = 0
        self.relists = 0
        self.watches = 0
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._missing_since: float | None = None  # not served (or refused) since then
        self._poke = threading.Event()
        self._cancel = WatchCancel()
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._on_synced: list[Callable[[], None]] = []
        self._sub_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{target.kind}", daemon=True
        )

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """Someone needs this kind now: if it was not served, look again at once (a CRD
        applied a moment ago) instead of after ``missing_kind_retry``."""
        since = self._missing_since
        if since is not None and time.monotonic() - since > POKE_AFTER:
            self._poke.set()

    def stop(self) -> None:
        self._stopped.set()
        self._poke.set()
        self._cancel.cancel()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        """Whether the first LIST is in the store within ``timeout`` seconds."""
        return self._synced.wait(timeout)

    def when_synced(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the first LIST is in the store: now, if it already is
        (on this thread), else on the informer's thread right after that LIST."""
        with self._sub_lock:
            if not self._synced.is_set():
                self._on_synced.append(callback)
                return
        callback()

    def _mark_synced(self) -> None:
        with self._sub_lock:
            self._synced.set()
            waiting, self._on_synced = self._on_synced, []
        for callback in waiting:
            try:
                callback()
            except Exception:  # same rule as subscribers
                self.log.exception("informer.subscriber_failed", kind=self.target.kind)

    # --- subscribers -----------------------------------------------------------------

    def subscribe(self, callback: Subscriber, *, label: str = ALL) -> Callable[[], None]:
        """Call ``callback`` for every change of objects whose index label is ``label``
        (before or after the change), or of all objects; returns the unsubscribe."""
        with self._sub_lock:
            self._subscribers.setdefault(label, []).append(callback)

        def unsubscribe() -> None:
            with self._sub_lock:
                subs = self._subscribers.get(label, [])
                if callback in subs:
                    subs.remove(callback)

        return unsubscribe

    def _dispatch(self, change: Change) -> None:
        with self._sub_lock:
            subs = list(self._subscribers.get(ALL, ()))
            for label in change.labels:
                subs += self._subscribers.get(label, ())
        for callback in subs:
            try:
                callback(change)
            except Exception:  # one subscriber's bug must not stop the others
                self.log.exception("informer.subscriber_failed", kind=self.target.kind)

    # --- the loop --------------------------------------------------------------------

    def _resource(self) -> Resource | None:
        key = (self.target.group, self.target.kind)
        res = self.kube.discover().preferred.get(key)
        if res is None:
            res = self.kube.discover(refresh=True).preferred.get(key)
        return res

    def _run(self) -> None:
        rv = ""
        delay = 0.2
        while not self._stopped.is_set():
            try:
                res = self._resource()
                if res is None:
                    self._missing("not served")
                    continue
                if not rv:
                    rv = self._list(res)
                rv, delay = self._watch(res, rv, delay)
            except NotFoundError as e:
                rv = ""
                self._missing(str(e))
            except KubeError as e:
                if self._stopped.is_set():
                    return
                if e.status == 403:
                    # This identity may not read the kind cluster-wide: readers fall
                    # back to their own calls (see ``forbidden``); look again later.
                    rv = ""
                    self.forbidden = True
                    self._missing(str(e), event="informer.forbidden")
                    continue
                if e.status == 410:
                    rv = ""
                self.log.info("informer.retry", kind=self.target.kind, error=str(e), seconds=delay)
                self._stopped.wait(delay)
                delay = min(delay * 2, self.settings.retry_max)

    def _missing(self, why: str, *, event: str = "informer.kind_missing") -> None:
        """Not served (or not readable): nothing of it is known; say so, look again later."""
        for change in self.store.replace(()):
            self._dispatch(change)
        self._mark_synced()
        self.log.info(event, kind=self.target.kind, reason=why)
        self._missing_since = time.monotonic()
        self._poke.wait(self.settings.missing_kind_retry)
        self._poke.clear()
        self._missing_since = None

    def _list(self, res: Resource) -> str:
        """The first LIST comes from the watch cache; a relist after 410 reads etcd."""
        first = not self._synced.is_set()
        items, rv = self.kube.list_objects(
            res,
            namespace=self.target.namespace,
            label_selector=self.target.selector,
            cached=first,
        )
        self.lists += 1
        self.forbidden = False
        if not first:
            self.relists += 1
        for change in self.store.replace(items):
            self._dispatch(change)
        self._mark_synced()
        return rv

    def _watch(self, res: Resource, rv: str, delay: float) -> tuple[str, float]:
        """One watch request; returns where to resume ("" = relist) and the next backoff."""
        self.watches += 1
        for etype, obj, line in self.kube.watch(
            res,
            namespace=self.target.namespace,
            label_selector=self.target.selector,
            resource_version=rv,
            timeout_seconds=self.settings.watch_timeout,
            cancel=self._cancel,
        ):
            if self._stopped.is_set():
                return rv, delay
            if etype == "ERROR":
                if obj.get("code") == 410:
                    self.log.info("informer.relist", kind=self.target.kind, reason="410 Gone")
                    return "", 0.2
                self.log.warning(
                    "informer.watch_error", kind=self.target.kind, error=str(obj.get("message"))
                )
                self._stopped.wait(delay)
                return rv, min(delay * 2, self.settings.retry_max)
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            delay = 0.2
            if etype == "BOOKMARK":
                continue
            obj.setdefault("apiVersion", res.api_version)
            obj.setdefault("kind", res.kind)
            change = self.store.put(etype, obj, line)
            if change is not None:
                self._dispatch(change)
        return rv, delay
