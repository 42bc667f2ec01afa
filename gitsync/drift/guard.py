"""Telling a sync's own writes from someone else's change.

A sync's writes (fields a new commit drops, objects it prunes) leave no owner behind,
and until its state Secret is written they differ from the intent the watcher holds.
While a sync may be on an object (one runs in this process, gitsync wrote the object
since its intent was installed, or its managedFields show an apply newer than the
intent), an ownerless difference waits; what was already reported stays reported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from gitsync.drift.compare import OWNER, DriftReport, gitsync_applied_at, gitsync_wrote
from gitsync.model import Identity, KubeObject


@dataclass(slots=True)
class Hold:
    """One sync's hold; the caller says, when it knows, that the sync wrote no state."""

    state_written: bool = True  # unknown counts as written: the state is read again


class SyncGuard:
    """Holds (from any thread) and the objects gitsync touched (worker thread only)."""

    def __init__(self, *, manager: str, since: Callable[[Identity], str]) -> None:
        self._manager, self._since = manager, since
        self._lock = threading.Lock()
        self._holds = 0
        self._touched: set[Identity] = set()
        self._deferred: set[Identity] = set()  # reports held back: to look at again

    @contextlib.contextmanager
    def syncing(self, after: Callable[[Hold], None]) -> Iterator[Hold]:
        """Hold while a sync here runs; ``after`` runs when it is over."""
        hold = Hold()
        with self._lock:
            self._holds += 1
        try:
            yield hold
        finally:
            with self._lock:
                self._holds -= 1
            after(hold)

    def held(self) -> bool:
        with self._lock:
            return self._holds > 0

    def applying(self, ident: Identity, live: KubeObject | None) -> bool:
        """A sync is applying this object right now (here, or anywhere by managedFields)."""
        return self.held() or (
            live is not None
            and gitsync_applied_at(live, manager=self._manager) > self._since(ident)
        )

    def saw(self, ident: Identity, before: KubeObject | None, live: KubeObject) -> None:
        """Note a change that was gitsync's own write."""
        if gitsync_wrote(before, live, manager=self._manager):
            self._touched.add(ident)

    def forget(self, ident: Identity) -> None:
        self._touched.discard(ident)

    def deferred(self) -> list[Identity]:
        """Objects whose reports were held back since the last call (worker thread)."""
        out, self._deferred = list(self._deferred), set()
        return out

    def hold_back(
        self,
        ident: Identity,
        live: KubeObject,
        reports: list[DriftReport],
        published: Sequence[DriftReport],
    ) -> list[DriftReport]:
        """``reports`` without the ownerless ones a sync may be causing (those keep what
        ``published`` said of them)."""
        ownerless = [r for r in reports if r.attribution != OWNER]
        if not ownerless:
            self._touched.discard(ident)  # the object agrees with the intent again
            return reports
        if not (ident in self._touched or self.applying(ident, live)):
            return reports
        self._deferred.add(ident)
        waiting = {r.path for r in ownerless}
        earlier = [r for r in published if r.path in waiting]
        return [r for r in reports if r.attribution == OWNER] + earlier
