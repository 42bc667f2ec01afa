"""What a drift watcher has reported: each drift logged once, again only if it changes.

``drift.detected`` when a field drifts (and a Warning Event on the object),
``drift.resolved`` when it comes back; the per-app gauge follows. ``current()`` is safe
from any thread (the status page and ``/api/apps`` read it).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from gitsync.drift.compare import OBJECT_PATH, DriftReport, DriftSet
from gitsync.kube import Kube
from gitsync.model import Identity
from gitsync.runtime import events, metrics


class Publisher:
    """Reports by object; written by the worker thread, read by anyone."""

    def __init__(
        self,
        *,
        app: str,
        kube: Kube,
        state_namespace: str,
        logger: Any,
        emit_events: bool,
    ) -> None:
        self.app, self._kube, self._state_namespace = app, kube, state_namespace
        self.log, self._emit_events = logger, emit_events
        self._lock = threading.Lock()
        self._published: dict[Identity, tuple[DriftReport, ...]] = {}

    def of(self, ident: Identity) -> tuple[DriftReport, ...]:
        with self._lock:
            return self._published.get(ident, ())

    def drifted(self) -> list[Identity]:
        with self._lock:
            return list(self._published)

    def current(self) -> DriftSet:
        """The app's drift now, one report per field, in a stable order."""
        with self._lock:
            reports = [r for group in self._published.values() for r in group]
        return DriftSet(sorted(reports, key=lambda r: (r.ref, r.path)))

    def publish(
        self,
        ident: Identity,
        reports: list[DriftReport],
        *,
        revision: str,
        uid: str = "",
        reason: str = "",
    ) -> list[DriftReport]:
        """Log what is new or changed and what went away; keep the rest as first reported.
        Returns the reports that are news (the caller may heal them)."""
        old = {r.path: r for r in self.of(ident)}
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
            return []
        for report in detected:
            self.log.warning("drift.detected", **report.log_fields())
        for report in resolved:
            fields = report.log_fields()
            self.log.info(
                "drift.resolved",
                object=fields["object"],
                field=fields["field"],
                desired=fields["desired"],
                revision=revision[:12],
                **({"reason": reason} if reason else {}),
            )
        with self._lock:
            if kept:
                self._published[ident] = tuple(kept)
            else:
                self._published.pop(ident, None)
            drifted = len(self._published)
        metrics.DRIFT_OBJECTS.labels(app=self.app).set(drifted)
        if detected:
            self._event(uid, detected)
        return detected

    def set_gauge(self) -> None:
        metrics.DRIFT_OBJECTS.labels(app=self.app).set(len(self.drifted()))

    def forget_gauge(self) -> None:
        with contextlib.suppress(KeyError):
            metrics.DRIFT_OBJECTS.remove(self.app)

    def _event(self, uid: str, reports: list[DriftReport]) -> None:
        if not self._emit_events:
            return
        message = "drift from Git: " + "; ".join(r.summary() for r in reports)
        events.emit(
            self._kube,
            involved=reports[0].ref,
            uid=uid,
            reason="Drift",
            message=message,
            warning=True,
            fallback_namespace=self._state_namespace,
        )
