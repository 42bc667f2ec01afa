"""The controller's one HTTP server: probes, metrics and signed webhook triggers.

    GET  /healthz        200 while the process and its election loop live
    GET  /readyz         200 when leading or a healthy standby; 503 when a sync is stuck
    GET  /metrics        Prometheus text format (prometheus-client's default registry)
    GET  /               the read-only status page (``runtime.ui``), unless ``controller.ui: false``
    GET  /api/apps[/<app>]  the same data as JSON
    POST /hooks/<app>    202 after a valid signature (``gitsync.runtime.webhooks``: the scheme,
                         per-app secrets, the replay window); sync starts at once

Everything else is refused: 404 unknown path or disabled webhooks, 405 wrong method; the
webhook's own answers are listed in ``gitsync.runtime.webhooks``. Handler threads are bounded and
each request has one read deadline (``gitsync.runtime.httpbounds``).
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gitsync.errors import ConfigError
from gitsync.runtime import metrics
from gitsync.runtime.httpbounds import BoundedHTTPServer, DeadlineHandler
from gitsync.runtime.webhooks import Webhooks, WebhookSettings, sign, sign_for_app, verify_signature

__all__ = ["Server", "WebhookSettings", "sign", "sign_for_app", "verify_signature"]

READ_TIMEOUT = 10.0  # seconds a client may take to send its whole request: no slowloris


class Pages(Protocol):
    """Read-only pages served besides the probes (``gitsync.runtime.ui.Pages``)."""

    def get(self, path: str) -> Any:
        """A response (``status``, ``body``, ``content_type``, ``headers``) or None."""
        ...


class Trigger(Protocol):
    """What the server asks of the controller; the controller implements it."""

    def has_app(self, app: str) -> bool: ...

    def trigger(self, app: str) -> str:
        """``started``, ``queued`` (a sync is running; another follows) or ``standby``."""
        ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (all interfaces)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Server:
    """``ThreadingHTTPServer`` in a daemon thread; ``start`` binds, ``stop`` closes."""

    def __init__(
        self,
        *,
        listen: str,
        controller: Trigger,
        webhook: WebhookSettings | None,
        logger: Any,
        pages: Pages | None = None,
    ) -> None:
        self._listen = listen
        self.controller = controller
        self.webhook = webhook
        self.hooks = (
            Webhooks(webhook, controller=controller, logger=logger) if webhook is not None else None
        )
        self.pages = pages
        self.log = logger
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            msg = "server not started"
            raise RuntimeError(msg)
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        host, port = parse_listen(self._listen)
        try:
            self._httpd = _HTTPServer((host, port), self)
        except OSError as e:
            msg = f"controller.listen: cannot listen on {self._listen!r}: {e.strerror}"
            raise ConfigError(msg) from e
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="gitsync-http", daemon=True
        )
        self._thread.start()
        self.log.info("server.listening", address=f"{host or '*'}:{self.port}")

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _HTTPServer(BoundedHTTPServer):
    def __init__(self, address: tuple[str, int], app: Server) -> None:
        self.app = app
        super().__init__(address, _Handler)


class _Handler(DeadlineHandler, BaseHTTPRequestHandler):  # do_* names: http.server's
    server: _HTTPServer
    timeout = READ_TIMEOUT
    server_version = "gitsync"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: probes every few seconds are not worth a log line; webhooks log their own."""

    # --- plumbing ----------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes | dict[str, Any],
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = (
            body if isinstance(body, bytes) else (json.dumps(body, sort_keys=True) + "\n").encode()
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: HTTPStatus, **headers: str) -> None:
        self._send(status, {"error": status.phrase}, headers=headers)

    def _hook_app(self) -> str | None:
        path = self.path.split("?", 1)[0]
        if not path.startswith("/hooks/"):
            return None
        return path.removeprefix("/hooks/")

    # --- routes ------------------------------------------------------------------------

    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok, detail = app.controller.health()
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, detail)
        elif path == "/readyz":
            ok, detail = app.controller.readiness()
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, detail)
        elif path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(), content_type=CONTENT_TYPE_LATEST)
        elif self._hook_app() is not None and app.webhook is not None:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, Allow="POST")
        elif app.pages is not None and (page := app.pages.get(path)) is not None:
            self._send(page.status, page.body, content_type=page.content_type, headers=page.headers)
        else:
            self._error(HTTPStatus.NOT_FOUND)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/readyz", "/metrics"):
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, Allow="GET, HEAD")
        elif self._hook_app() is not None and app.webhook is not None and self.command != "POST":
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, Allow="POST")
        else:
            self._error(HTTPStatus.NOT_FOUND)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815 - http.server names

    def do_POST(self) -> None:
        app = self.server.app
        name = self._hook_app()
        if name is None or app.hooks is None:
            self._not_allowed()
            return
        reply = app.hooks.receive(
            name=name, headers=self.headers, rfile=self.rfile, remote=str(self.client_address[0])
        )
        if reply.close:
            self.close_connection = True
        if reply.body is not None:
            self._send(reply.status, reply.body, headers=reply.headers)
        metrics.WEBHOOKS.labels(code=str(int(reply.status))).inc()
