"""The HTTP server's webhook and probe routes, against a fake controller, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from gitsync import log
from gitsync.runtime import server as server_module
from gitsync.runtime.server import Server, WebhookSettings, sign, sign_for_app, verify_signature

SECRET = b"It's a Secret to Everybody"
BLOG_SECRET = b"blog-only"
BODY = b"Hello, World!"
REPOS = {"shop": "https://git.example.test/acme/shop.git", "blog": "https://git.example.test/b"}


def test_signature_matches_githubs_documented_example() -> None:
    """The HMAC is GitHub's: their documented secret and payload give their documented digest."""
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign(SECRET, BODY) == expected
    assert verify_signature(SECRET, BODY, expected)
    assert verify_signature(SECRET, BODY, expected.removeprefix("sha256="))  # Gitea's form
    assert verify_signature(SECRET, BODY, expected.upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    "header",
    ["", "sha256=", "sha1=0123", "sha256=" + "0" * 64, "sha256=zz", "sha256=\u00e9" * 3],
)
def test_wrong_or_missing_signatures_are_refused(header: str) -> None:
    """Empty, truncated, other-algorithm, non-hex and wrong digests never verify."""
    assert not verify_signature(SECRET, BODY, header)


def test_an_empty_secret_verifies_nothing() -> None:
    """A misconfigured empty secret cannot turn into 'accept everything'."""
    assert not verify_signature(b"", BODY, sign(b"", BODY))


@dataclass
class FakeController:
    leader: bool = True
    triggered: list[str] = field(default_factory=list)
    ready: bool = True

    def has_app(self, app: str) -> bool:
        return app in {"shop", "blog"}

    def trigger(self, app: str) -> str:
        if not self.leader:
            return "standby"
        self.triggered.append(app)
        return "started"

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ok"}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {"problems": [] if self.ready else ["stuck"]}


@pytest.fixture
def served() -> Iterator[tuple[Server, FakeController]]:
    fake = FakeController()
    server = Server(
        listen="127.0.0.1:0",
        controller=fake,
        webhook=WebhookSettings(
            secret=SECRET,
            max_body_bytes=1024,
            app_secrets={"blog": BLOG_SECRET},
            app_repos=REPOS,
        ),
        logger=log.get(component="server"),
    )
    server.start()
    try:
        yield server, fake
    finally:
        server.stop()


def call(
    server: Server,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def signed(body: bytes = BODY) -> dict[str, str]:
    return {"X-Hub-Signature-256": sign(SECRET, body)}


def test_signed_post_triggers_the_app(served: tuple[Server, FakeController]) -> None:
    """A valid signature gets 202 and exactly one trigger of that app."""
    server, fake = served
    status, body = call(server, "POST", "/hooks/shop", BODY, signed())
    assert status == 202
    assert json.loads(body) == {"app": "shop", "sync": "started"}
    assert fake.triggered == ["shop"]


def test_gitea_header_is_accepted(served: tuple[Server, FakeController]) -> None:
    """Gitea's X-Gitea-Signature carries the bare hex digest."""
    server, fake = served
    header = {"X-Gitea-Signature": sign(BLOG_SECRET, BODY).removeprefix("sha256=")}
    assert call(server, "POST", "/hooks/blog", BODY, header)[0] == 202
    assert fake.triggered == ["blog"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("POST", "/hooks/shop", BODY, {}, 401),
        ("POST", "/hooks/shop", BODY, {"X-Hub-Signature-256": sign(b"other", BODY)}, 401),
        ("POST", "/hooks/shop", BODY + b"!", signed(), 401),
        ("POST", "/hooks/nope", BODY, signed(), 404),
        ("POST", "/hooks/", BODY, signed(), 404),
        ("POST", "/hooks/shop/extra", BODY, signed(), 404),
        ("POST", "/elsewhere", BODY, signed(), 404),
        ("GET", "/hooks/shop", None, {}, 405),
        ("PUT", "/hooks/shop", BODY, signed(), 405),
        ("POST", "/healthz", BODY, signed(), 405),
        ("DELETE", "/metrics", None, {}, 405),
        ("POST", "/hooks/shop", b"x" * 2048, signed(b"x" * 2048), 413),
    ],
)
def test_everything_else_is_refused(
    *,
    served: tuple[Server, FakeController],
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
) -> None:
    """Unsigned, wrongly signed, unknown app, wrong method, oversize: refused, nothing synced."""
    server, fake = served
    assert call(server, method, path, body, headers)[0] == status
    assert fake.triggered == []


def test_chunked_body_without_length_is_refused(served: tuple[Server, FakeController]) -> None:
    """No Content-Length (chunked): 411 before reading an unbounded body."""
    server, fake = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.putrequest("POST", "/hooks/shop")
        conn.putheader("Transfer-Encoding", "chunked")
        for key, value in signed().items():
            conn.putheader(key, value)
        conn.endheaders()
        conn.send(b"d\r\nHello, World!\r\n0\r\n\r\n")
        assert conn.getresponse().status == 411
    finally:
        conn.close()
    assert fake.triggered == []


def test_standby_answers_503_with_retry_after(served: tuple[Server, FakeController]) -> None:
    """A standby cannot sync: the sender is told to retry (the leader's poll catches up too)."""
    server, fake = served
    fake.leader = False
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("POST", "/hooks/shop", body=BODY, headers=signed())
        resp = conn.getresponse()
        assert resp.status == 503
        assert resp.getheader("Retry-After") == "5"
    finally:
        conn.close()


def test_probes_and_metrics(served: tuple[Server, FakeController]) -> None:
    """/healthz and /readyz follow the controller; /metrics is Prometheus text."""
    server, fake = served
    assert call(server, "GET", "/healthz")[0] == 200
    assert call(server, "GET", "/readyz")[0] == 200
    fake.ready = False
    status, body = call(server, "GET", "/readyz")
    assert status == 503
    assert json.loads(body)["problems"] == ["stuck"]
    status, body = call(server, "GET", "/metrics")
    assert status == 200
    assert b"# TYPE gitsync_syncs_total counter" in body
    assert b"# TYPE gitsync_reconcile_duration_seconds histogram" in body


def test_hooks_are_404_when_no_webhook_is_configured() -> None:
    """Without a webhook section, /hooks/ does not exist, signed or not."""
    server = Server(
        listen="127.0.0.1:0",
        controller=FakeController(),
        webhook=None,
        logger=log.get(component="server"),
    )
    server.start()
    try:
        assert call(server, "POST", "/hooks/shop", BODY, signed())[0] == 404
        assert call(server, "GET", "/hooks/shop")[0] == 404
    finally:
        server.stop()


def app_signed(
    app: str,
    body: bytes = BODY,
    *,
    secret: bytes = SECRET,
    at: int | None = None,
    delivery: str = "",
) -> dict[str, str]:
    """gitsync's scheme: the app name and the time are inside the HMAC."""
    stamp = int(time.time()) if at is None else at
    headers = {
        "X-Gitsync-Timestamp": str(stamp),
        "X-Gitsync-Signature": sign_for_app(secret, app, stamp, body),
    }
    if delivery:
        headers["X-Gitsync-Delivery"] = delivery
    return headers


def test_app_bound_signature_triggers_once_and_a_replay_is_refused(
    served: tuple[Server, FakeController],
) -> None:
    """A delivery signed for the app syncs; the very same delivery sent again gets 403."""
    server, fake = served
    headers = app_signed("shop", delivery="d-1")
    assert call(server, "POST", "/hooks/shop", BODY, headers)[0] == 202
    assert call(server, "POST", "/hooks/shop", BODY, headers)[0] == 403
    same_id = app_signed("shop", b'{"x": 1}', delivery="d-1")
    assert call(server, "POST", "/hooks/shop", b'{"x": 1}', same_id)[0] == 403
    forge = signed()
    assert call(server, "POST", "/hooks/shop", BODY, forge)[0] == 202
    assert call(server, "POST", "/hooks/shop", BODY, forge)[0] == 403, "forge replay"
    assert fake.triggered == ["shop", "shop"]


def test_stale_or_future_deliveries_are_refused(served: tuple[Server, FakeController]) -> None:
    """Timestamps more than 5 minutes away from now are outside the replay window: 403."""
    server, fake = served
    now = int(time.time())
    for at in (now - 301, now + 301):
        assert call(server, "POST", "/hooks/shop", BODY, app_signed("shop", at=at))[0] == 403
    bad = {**app_signed("shop"), "X-Gitsync-Timestamp": "soon"}
    assert call(server, "POST", "/hooks/shop", BODY, bad)[0] == 401
    assert fake.triggered == []


def test_a_body_signed_for_another_app_is_refused(served: tuple[Server, FakeController]) -> None:
    """Signed for shop, sent to blog: 401 (other name signed, or other app's secret)."""
    server, fake = served
    assert call(server, "POST", "/hooks/blog", BODY, app_signed("shop"))[0] == 401
    forged = app_signed("shop", secret=BLOG_SECRET)  # blog's secret, shop's name
    assert call(server, "POST", "/hooks/blog", BODY, forged)[0] == 401
    assert call(server, "POST", "/hooks/blog", BODY, signed())[0] == 401, "fallback for blog"
    assert (
        call(server, "POST", "/hooks/shop", BODY, app_signed("shop", secret=BLOG_SECRET))[0] == 401
    )
    assert fake.triggered == []
    assert (
        call(server, "POST", "/hooks/blog", BODY, app_signed("blog", secret=BLOG_SECRET))[0] == 202
    )
    assert fake.triggered == ["blog"]


def _shared_server(fake: FakeController) -> Server:
    """shop and blog both on the fallback secret: forge bodies must name the repository."""
    server = Server(
        listen="127.0.0.1:0",
        controller=fake,
        webhook=WebhookSettings(secret=SECRET, app_repos=REPOS),
        logger=log.get(component="server"),
    )
    server.start()
    return server


def test_shared_secret_forge_body_must_name_the_apps_repository() -> None:
    """With a shared secret, a GitHub body for shop's repository cannot trigger blog: 403."""
    fake = FakeController()
    server = _shared_server(fake)
    try:
        push = json.dumps(
            {"ref": "refs/heads/main", "repository": {"clone_url": REPOS["shop"]}}
        ).encode()
        assert call(server, "POST", "/hooks/blog", push, signed(push))[0] == 403
        assert call(server, "POST", "/hooks/blog", BODY, signed())[0] == 403
        assert fake.triggered == []
        assert call(server, "POST", "/hooks/shop", push, signed(push))[0] == 202
        assert call(server, "POST", "/hooks/blog", BODY, app_signed("blog"))[0] == 202
        assert fake.triggered == ["shop", "blog"]
    finally:
        server.stop()


def test_standby_refusal_does_not_burn_the_delivery(
    served: tuple[Server, FakeController],
) -> None:
    """A delivery a standby asked to retry is accepted when retried on the leader."""
    server, fake = served
    headers = app_signed("shop", delivery="d-retry")
    fake.leader = False
    assert call(server, "POST", "/hooks/shop", BODY, headers)[0] == 503
    fake.leader = True
    assert call(server, "POST", "/hooks/shop", BODY, headers)[0] == 202


def test_connections_beyond_the_handler_bound_get_503(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every handler busy, a new connection gets 503 at once; later ones are served."""
    monkeypatch.setattr(server_module._HTTPServer, "max_handlers", 2)
    fake = FakeController()
    server = Server(listen="127.0.0.1:0", controller=fake, webhook=None, logger=log.get())
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        assert call(server, "GET", "/healthz")[0] == 503
        for sock in idle:
            sock.close()
        wait = [call(server, "GET", "/healthz")[0] for _ in range(50)]
        assert 200 in wait
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_trickled_request_is_cut_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each byte in time, the whole request late: the deadline is per request, not per read."""
    monkeypatch.setattr(server_module._Handler, "timeout", 0.5)
    fake = FakeController()
    server = Server(listen="127.0.0.1:0", controller=fake, webhook=None, logger=log.get())
    server.start()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(5)
    try:
        answer = b""
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20 + b"\r\n\r\n"
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)  # each read well inside 0.5s, the whole request not
        with contextlib.suppress(OSError):
            answer = sock.recv(1024)
        assert b"200" not in answer
        assert answer == b"", "the connection is closed without an answer"
    finally:
        sock.close()
        server.stop()


def test_a_secret_is_shared_when_another_app_would_accept_it() -> None:
    """Own secrets bind alone; the fallback of one app binds; any overlap needs the body's repo."""
    repos = {"a": "https://x/a", "b": "https://x/b", "c": "https://x/c"}
    own = WebhookSettings(app_secrets={"a": b"1", "b": b"2", "c": b"3"}, app_repos=repos)
    assert not any(own.shared(app) for app in repos)
    same = WebhookSettings(app_secrets={"a": b"1", "b": b"1", "c": b"3"}, app_repos=repos)
    assert [same.shared(app) for app in repos] == [True, True, False]
    one_fallback = WebhookSettings(secret=b"f", app_secrets={"a": b"1", "b": b"2"}, app_repos=repos)
    assert not one_fallback.shared("c")
    fallback_reused = WebhookSettings(
        secret=b"1", app_secrets={"a": b"1", "b": b"2"}, app_repos=repos
    )
    assert fallback_reused.shared("c")
    assert fallback_reused.shared("a")
    two_fallback = WebhookSettings(secret=b"f", app_secrets={"a": b"1"}, app_repos=repos)
    assert two_fallback.shared("b")
    assert two_fallback.shared("c")
