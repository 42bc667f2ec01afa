"""Capture structlog events of the loggers handed to a component, from any thread.

``Recorder().logger(app=...)`` is a bound logger whose only processor keeps the event
(with ``_at``, the ``time.monotonic()`` of its arrival) and drops it, so the process-wide
structlog configuration stays untouched and other threads' logs are not mixed in.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import structlog

from tests.support.cluster_fixtures import wait_until


class Recorder:
    """A structlog processor keeping every event of the loggers it made (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, _logger: Any, method: str, event_dict: Any) -> Any:
        with self._lock:
            self.events.append({**event_dict, "level": method, "_at": time.monotonic()})
        raise structlog.DropEvent

    def logger(self, **context: Any) -> Any:
        return structlog.wrap_logger(
            structlog.ReturnLogger(),
            processors=[self],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            context_class=dict,
        ).bind(**context)

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Events named ``event`` whose fields equal ``match``, oldest first."""
        with self._lock:
            return [
                e
                for e in self.events
                if e["event"] == event and all(e.get(k) == v for k, v in match.items())
            ]

    def wait(self, event: str, *, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """The first such event, waiting for it up to ``timeout`` seconds."""
        found: list[dict[str, Any]] = wait_until(
            lambda: self.find(event, **match),
            timeout=timeout,
            what=f"{event} {match}",
            interval=0.02,
        )
        return found[0]
