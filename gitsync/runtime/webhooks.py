"""Signed webhook triggers: ``POST /hooks/<app>`` with a per-app secret and a replay window.

Each app may have its own HMAC secret (``apps[].webhook.secretRef``); apps without one use
``controller.webhook``'s secret. Two signatures are accepted:

gitsync (preferred; the app and the time are signed)::

    X-Gitsync-Timestamp: <unix seconds>
    X-Gitsync-Signature: sha256=<hex HMAC-SHA256(secret, "<app>\\n<timestamp>\\n" + body)>
    X-Gitsync-Delivery:  <optional unique id>

forge (GitHub ``X-Hub-Signature-256``, Gitea, Forgejo; HMAC-SHA256 of the body only):
accepted when the secret belongs to this one app, since then the URL's app and the secret
bind each other. When several apps accept the same secret (the shared
``controller.webhook`` fallback, or two apps given one Secret), the body must name the
app's repository (``repository.clone_url``, ``ssh_url``, ``git_url``, ``html_url`` or
``url``), so a body signed for one app's repository cannot trigger another.

Replays: a gitsync delivery more than ``max_age`` (5 minutes) away from now is refused; a
delivery id or signature seen before (the last ``remember`` accepted ones) is refused.
Forges sign no time, so their deliveries are guarded by the seen-before check only,
which a restart forgets.

Answers: 401 no or wrong signature (also for an app with its own secret signed with the
fallback), 403 a stale, replayed or other-repository delivery, 404 an unknown app (after a
valid fallback signature, so an unsigned caller learns nothing about which apps exist),
411/413/400/408 for bodies without length, too large, short or too slow, 503 on a standby.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

__all__ = [
    "Reply",
    "WebhookSettings",
    "Webhooks",
    "sign",
    "sign_for_app",
    "verify_signature",
]

SIGNATURE_HEADERS = ("X-Hub-Signature-256", "X-Gitea-Signature", "X-Forgejo-Signature")
DELIVERY_HEADERS = (
    "X-Gitsync-Delivery",
    "X-GitHub-Delivery",
    "X-Gitea-Delivery",
    "X-Forgejo-Delivery",
)
TIMESTAMP_HEADER = "X-Gitsync-Timestamp"
APP_SIGNATURE_HEADER = "X-Gitsync-Signature"
_REPO_KEYS = ("clone_url", "ssh_url", "git_url", "html_url", "url")


def sign(secret: bytes, body: bytes) -> str:
    """The forge header value: ``sha256=<hex HMAC of body>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def sign_for_app(secret: bytes, app: str, timestamp: int, body: bytes) -> str:
    """The gitsync header value: the app name and time are inside what is signed."""
    return sign(secret, _signed_text(app, str(timestamp), body))


def _signed_text(app: str, timestamp: str, body: bytes) -> bytes:
    return app.encode() + b"\n" + timestamp.encode() + b"\n" + body


def verify_signature(secret: bytes, body: bytes, header: str) -> bool:
    """Constant-time check of ``sha256=<hex>`` (or Gitea's bare ``<hex>``) against ``body``."""
    if not secret or not header:
        return False
    given = header.strip().removeprefix("sha256=").lower()
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.encode("ascii", "replace"), expected.encode("ascii"))


class Trigger(Protocol):
    def has_app(self, app: str) -> bool: ...

    def trigger(self, app: str) -> str: ...


class Body(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Headers(Protocol):
    def get(self, name: str, default: None = None) -> str | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    """``secret`` is the fallback for apps without their own in ``app_secrets``;
    ``app_repos`` (app → repository URL) binds forge bodies signed with a shared secret."""

    secret: bytes | None = None
    max_body_bytes: int = 1_048_576
    app_secrets: Mapping[str, bytes] = field(default_factory=dict)
    app_repos: Mapping[str, str] = field(default_factory=dict)
    max_age: float = 300.0
    remember: int = 4096

    def secret_of(self, app: str) -> bytes | None:
        return self.app_secrets.get(app) or self.secret

    def shared(self, app: str) -> bool:
        """Whether another app (or any app name, for the fallback) accepts this secret."""
        mine = self.secret_of(app)
        if mine is None:
            return False
        if app not in self.app_secrets:
            # The fallback: shared unless exactly one configured app uses it.
            users = [a for a in self.app_repos if a not in self.app_secrets]
            return users != [app] or mine in self.app_secrets.values()
        others = [a for a in self.app_repos if a != app and self.secret_of(a) == mine]
        return bool(others)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """What to answer; ``body`` None: the connection is closed without an answer."""

    status: HTTPStatus
    body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _Refusal:
    status: HTTPStatus
    reason: str


class _Seen:
    """The last ``size`` delivery ids and signatures accepted (thread-safe LRU)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add_new(self, keys: list[str]) -> bool:
        """Record ``keys``; False (and nothing recorded) if any was seen before."""
        with self._lock:
            if any(k in self._keys for k in keys):
                return False
            for k in keys:
                self._keys[k] = None
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)
            return True

    def forget(self, keys: list[str]) -> None:
        with self._lock:
            for k in keys:
                self._keys.pop(k, None)


class Webhooks:
    """Receives one delivery: reads the body, checks signature, binding and replay, triggers."""

    def __init__(self, settings: WebhookSettings, *, controller: Trigger, logger: Any) -> None:
        self.settings = settings
        self.controller = controller
        self.log = logger
        self._seen = _Seen(settings.remember)

    def receive(
        self, *, name: str, headers: Headers, rfile: Body, remote: str, now: float | None = None
    ) -> Reply:
        log = self.log.bind(app=name, remote=remote)
        hook = self.settings
        length = headers.get("Content-Length")
        if headers.get("Transfer-Encoding") or length is None or not length.isdigit():
            return _refuse(log, HTTPStatus.LENGTH_REQUIRED, "no Content-Length", close=True)
        if int(length) > hook.max_body_bytes:  # the body is never read
            return _refuse(log, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{length} bytes", close=True)
        try:
            body = rfile.read(int(length))
        except OSError:
            log.warning("webhook.refused", status=408, reason="body not received in time")
            return Reply(status=HTTPStatus.REQUEST_TIMEOUT, body=None, close=True)
        if len(body) != int(length):
            why = "body shorter than Content-Length"
            return _refuse(log, HTTPStatus.BAD_REQUEST, why, close=True)
        known = "/" not in name and self.controller.has_app(name)
        secret = hook.secret_of(name) if known else hook.secret
        checked = self._check(name, secret, headers, body, time.time() if now is None else now)
        if isinstance(checked, _Refusal):
            return _refuse(log, checked.status, checked.reason)
        if not known:
            return _refuse(log, HTTPStatus.NOT_FOUND, "no such app")
        scheme, replay_keys = checked
        if scheme == "forge" and hook.shared(name) and not self._names_repo(name, body):
            why = "secret shared by several apps, and the body names another repository"
            return _refuse(log, HTTPStatus.FORBIDDEN, why)
        if not self._seen.add_new(replay_keys):
            return _refuse(log, HTTPStatus.FORBIDDEN, "replayed: delivery seen before")
        outcome = self.controller.trigger(name)
        if outcome == "standby":
            self._seen.forget(replay_keys)  # the sender is asked to retry this very delivery
            log.info("webhook.standby")
            return Reply(
                status=HTTPStatus.SERVICE_UNAVAILABLE,
                body={"app": name, "error": "this replica is a standby; retry"},
                headers={"Retry-After": "5"},
            )
        delivery = next((headers.get(h) or "" for h in DELIVERY_HEADERS if headers.get(h)), "")
        log.info("webhook.accepted", outcome=outcome, scheme=scheme, delivery=delivery[:64])
        return Reply(status=HTTPStatus.ACCEPTED, body={"app": name, "sync": outcome})

    def _check(
        self, name: str, secret: bytes | None, headers: Headers, body: bytes, now: float
    ) -> tuple[str, list[str]] | _Refusal:
        """The scheme and the keys that make this delivery unique, or why it is refused."""
        delivery = next((headers.get(h) or "" for h in DELIVERY_HEADERS if headers.get(h)), "")
        keys = [f"delivery:{name}:{delivery}"] if delivery else []
        app_signature = headers.get(APP_SIGNATURE_HEADER) or ""
        if app_signature:
            stamp = (headers.get(TIMESTAMP_HEADER) or "").strip()
            if not stamp.isdigit():
                return _Refusal(status=HTTPStatus.UNAUTHORIZED, reason="no or bad timestamp")
            signed = _signed_text(name, stamp, body)
            if not secret or not verify_signature(secret, signed, app_signature):
                return _Refusal(status=HTTPStatus.UNAUTHORIZED, reason="bad signature")
            if abs(now - int(stamp)) > self.settings.max_age:
                return _Refusal(
                    status=HTTPStatus.FORBIDDEN, reason="stale: outside the replay window"
                )
            return "gitsync", [*keys, "signature:" + _digest(app_signature)]
        header = next((headers.get(h) or "" for h in SIGNATURE_HEADERS if headers.get(h)), "")
        if not secret or not verify_signature(secret, body, header):
            why = "missing signature" if not header else "bad signature"
            return _Refusal(status=HTTPStatus.UNAUTHORIZED, reason=why)
        return "forge", [*keys, f"signature:{name}:" + _digest(header)]

    def _names_repo(self, name: str, body: bytes) -> bool:
        """Whether the JSON body's ``repository`` is the app's repository."""
        want = _normal(self.settings.app_repos.get(name, ""))
        try:
            repo = json.loads(body).get("repository") or {}
        except (ValueError, AttributeError):
            return False
        if not isinstance(repo, dict) or not want:
            return False
        return any(isinstance(repo.get(k), str) and _normal(repo[k]) == want for k in _REPO_KEYS)


def _digest(signature: str) -> str:
    return signature.strip().removeprefix("sha256=").lower()[:64]


def _normal(url: str) -> str:
    """``https://Host/a/b.git/`` and ``https://host/a/b`` compare equal; scheme kept."""
    url = url.strip().rstrip("/").removesuffix(".git")
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{path}" if sep else url


def _refuse(log: Any, status: HTTPStatus, reason: str, *, close: bool = False) -> Reply:
    log.warning("webhook.refused", status=int(status), reason=reason)
    return Reply(status=status, body={"error": status.phrase}, close=close)
