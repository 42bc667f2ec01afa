"""Deadlines of the drift worker: vanished objects to confirm, heals to run."""

from __future__ import annotations

import heapq
import itertools
import time

from gitsync.model import Identity


class Timers:
    """A heap of (when, what, object); the worker waits for the next and runs what is due."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, Identity]] = []
        self._seq = itertools.count()

    def at(self, delay: float, what: str, ident: Identity) -> None:
        heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), what, ident))

    def wait(self) -> float | None:
        """Seconds until the next deadline; None when there is none."""
        return max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None

    def due(self) -> list[tuple[str, Identity]]:
        now = time.monotonic()
        out = []
        while self._heap and self._heap[0][0] <= now:
            _when, _seq, what, ident = heapq.heappop(self._heap)
            out.append((what, ident))
        return out
