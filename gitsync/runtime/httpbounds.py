"""Bounds for the controller's HTTP server: a fixed number of handler threads, and one
read deadline per request (not per read, so a client trickling a byte at a time cannot
hold a thread for longer than the deadline).

A connection that arrives while every handler is busy gets ``503`` with ``Retry-After``
at once, from the accepting thread, without a thread of its own.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_HANDLERS = 32
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: 32\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    b'{"error": "Service Unavailable"}'
)


class BoundedHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with at most ``max_handlers`` requests handled at a time."""

    daemon_threads = True
    max_handlers = MAX_HANDLERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.max_handlers)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.setblocking(False)  # never let a slow client stall the accept loop
                request.send(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _DeadlineReader(io.RawIOBase):
    """Socket reads that all share the handler's current deadline."""

    def __init__(self, sock: socket.socket, handler: DeadlineHandler) -> None:
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            msg = "request not received within its deadline"
            raise TimeoutError(msg)
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._handler.limit)  # writes get the full timeout


class DeadlineHandler(BaseHTTPRequestHandler):
    """Each request (line, headers and body) must arrive within ``timeout`` seconds."""

    timeout = 10.0
    deadline: float = 0.0

    @property
    def limit(self) -> float:
        return float(self.timeout or 10.0)

    def setup(self) -> None:
        super().setup()
        self.deadline = time.monotonic() + self.limit
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + self.limit
        super().handle_one_request()
