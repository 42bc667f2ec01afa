"""Which API failures kube.py retries, and how a KubeError tells the commit's fault apart."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from urllib3 import exceptions as u3

from gitsync.errors import ConflictError, InvalidError, KubeError, NotFoundError
from gitsync.kube import RetryPolicy, Transience, classify_exception, classify_status, contains


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_but_may_have_landed(status: int) -> None:
    """5xx: transient, and the server may have acted on the request."""
    assert classify_status(status) is Transience.AMBIGUOUS


def test_429_is_retried_and_was_not_acted_on() -> None:
    """429 (API Priority and Fairness) turns a request away before any work."""
    assert classify_status(429) is Transience.UNSENT


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_client_errors_are_permanent(status: int) -> None:
    """A 4xx other than 429 rejects the request itself: never retried."""
    assert classify_status(status) is Transience.PERMANENT


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (u3.NewConnectionError(None, "Connection refused"), Transience.UNSENT),  # type: ignore[arg-type]
        (u3.ConnectTimeoutError(None, "connect timed out"), Transience.UNSENT),
        (u3.EmptyPoolError(None, "no free connection"), Transience.UNSENT),  # type: ignore[arg-type]
        (u3.SSLError(ssl.SSLEOFError(8, "EOF occurred")), Transience.UNSENT),
        (u3.ReadTimeoutError(None, "/api", "read timed out"), Transience.AMBIGUOUS),  # type: ignore[arg-type]
        (u3.ProtocolError("aborted", ConnectionResetError(104, "reset")), Transience.AMBIGUOUS),
        (u3.SSLError(ssl.SSLCertVerificationError(1, "bad cert")), Transience.PERMANENT),
        (u3.LocationParseError("::"), Transience.PERMANENT),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.value,
)
def test_connection_failures_by_what_reached_the_server(
    error: Exception, expected: Transience
) -> None:
    """Refused, pool timeout, handshake cut: unsent; read timeout or reset: may have landed."""
    assert classify_exception(error) is expected


def test_kube_error_transient_and_permanent_follow_the_status() -> None:
    """Only a non-transient 4xx is the request's (the commit's) own fault."""
    assert KubeError("x", status=503).transient
    assert not KubeError("x", status=503).permanent
    assert KubeError("x", status=429).transient
    assert not KubeError("x", status=429).permanent
    assert InvalidError("x", status=422).permanent
    assert ConflictError("x", status=409).permanent
    assert NotFoundError("x", status=404).permanent
    assert not KubeError("x", status=403).transient
    assert KubeError("x", status=403).permanent
    refused = KubeError("cannot reach the API server", transient=True)
    assert refused.transient
    assert not refused.permanent
    assert not KubeError("not ready after 60s").transient


def test_backoff_grows_is_capped_and_jittered() -> None:
    """Each delay lies in [base/2, base], base doubling from ``initial`` up to ``cap``."""
    policy = RetryPolicy(budget=60, initial=0.2, cap=5.0)
    for attempt, base in [(0, 0.2), (1, 0.4), (3, 1.6), (5, 5.0), (20, 5.0)]:
        for _ in range(50):
            assert base / 2 <= policy.delay(attempt) <= base


def test_retry_after_is_honoured_within_a_cap() -> None:
    """A server's Retry-After wins over the backoff, but never past twice the cap."""
    policy = RetryPolicy(cap=5.0)
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert policy.delay(0, retry_after=300.0) == 10.0


def test_a_landed_create_is_recognised_by_its_content() -> None:
    """AlreadyExists after an unsure POST is ours only if the live object holds what we sent."""
    sent: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "n", "labels": {"a": "1"}},
        "data": {"k": "dg=="},
    }
    live: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "s",
            "namespace": "n",
            "labels": {"a": "1"},
            "resourceVersion": "7",
            "uid": "u",
            "managedFields": [{"manager": "gitsync"}],
        },
        "data": {"k": "dg=="},
        "type": "Opaque",
    }
    assert contains(live, sent)
    assert contains(live, {**sent, "metadata": {**sent["metadata"], "resourceVersion": "3"}})
    assert not contains(live, {**sent, "data": {"k": "other"}})
    assert not contains(live, {**sent, "data": {"k": "dg==", "extra": "x"}})
    assert not contains({**live, "data": {"k": ["dg=="]}}, sent)
