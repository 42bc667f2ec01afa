"""Where every app stands: one data model for the status page, its JSON and ``gitsync status``.

An ``AppOverview`` is built from what already exists, never from new bookkeeping: the
app's state (revision, healthy revision, quarantine, history, Degraded reason), what the
running controller knows about its job (``RunnerView``: running, last result, next poll),
the drift the app's watcher publishes (or one ``drift.scan`` from the CLI), and commit
subjects and authors read from the Git cache (commits never change, so each is read once).

Health, in one word with a reason:

    Degraded     a rollback did not finish, or the app was rolled back: it runs an older
                 revision than Git asks for, and the reason says why
    Failed       the last sync failed (fetch, render, apply, gate) with nothing rolled back
    Progressing  a sync is running, or none has finished yet
    Healthy      the last sync applied (or found nothing to change) and passed its gate

Everything here is plain data; Secret values in drift are ``***`` (they already are in
every ``DriftReport``; this masks again, so no path can leak one), and a repository URL
loses any user info before it is shown.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gitsync.config import AppConfig
from gitsync.drift.compare import OBJECT_PATH, DriftReport, display
from gitsync.engine import inventory
from gitsync.engine.inventory import AppState, HistoryEntry
from gitsync.errors import GitSyncError, SourceError
from gitsync.kube import Kube
from gitsync.source import gitcache

HEALTHY: Final = "Healthy"
DEGRADED: Final = "Degraded"
FAILED: Final = "Failed"
PROGRESSING: Final = "Progressing"

ROLLBACK_RESULTS: Final = frozenset({"rolled-back", "rollback-failed"})
FAILED_RESULTS: Final = frozenset({"failed", "unhealthy", "timed-out"})
MASK: Final = "***"


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitInfo:
    sha: str
    subject: str = ""
    author: str = ""
    time: str = ""

    def to_json(self) -> dict[str, str]:
        return {"subject": self.subject, "author": self.author, "time": self.time}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerView:
    """What only the running controller knows about an app's job; a snapshot."""

    running_seconds: float | None = None
    last_result: str = ""
    last_finished: str = ""
    last_error: str = ""
    failures: int = 0
    next_poll: str = ""  # ISO time of the next scheduled sync; "" when none is scheduled

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running_seconds is not None,
            "running_seconds": (
                round(self.running_seconds, 1) if self.running_seconds is not None else None
            ),
            "last_result": self.last_result,
            "last_finished": self.last_finished,
            "last_error": self.last_error,
            "failures": self.failures,
            "next_poll": self.next_poll,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    status: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftRow:
    """One drifted field as shown: values already made printable and masked."""

    object: str
    kind: str
    namespace: str
    name: str
    field: str
    git: str
    live: str
    manager: str
    operation: str
    time: str
    seen: str

    def to_json(self) -> dict[str, str]:
        return {
            "object": self.object,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "field": self.field,
            "git": self.git,
            "live": self.live,
            "manager": self.manager,
            "operation": self.operation,
            "time": self.time,
            "seen": self.seen,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    sha: str
    result: str
    time: str
    reason: str
    rollback: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "sha": self.sha,
            "result": self.result,
            "time": self.time,
            "reason": self.reason,
            "rollback": self.rollback,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AppOverview:
    name: str
    repo: str
    ref: str
    path: str
    revision: str
    healthy_revision: str
    quarantined: tuple[str, ...]
    health: Health
    last_sync: TimelineEntry | None
    runner: RunnerView | None
    drift: tuple[DriftRow, ...] | None  # None: not known (no watcher, no scan)
    timeline: tuple[TimelineEntry, ...]  # newest first
    inventory: int
    commits: dict[str, CommitInfo] = field(default_factory=dict)
    error: str = ""  # the state could not be read

    def commit(self, sha: str) -> CommitInfo:
        return self.commits.get(sha) or CommitInfo(sha=sha)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "repo": self.repo,
            "ref": self.ref,
            "path": self.path,
            "revision": self.revision,
            "healthy_revision": self.healthy_revision,
            "quarantined": list(self.quarantined),
            "health": {"status": self.health.status, "reason": self.health.reason},
            "last_sync": self.last_sync.to_json() if self.last_sync else None,
            "controller": self.runner.to_json() if self.runner else None,
            "drift": [r.to_json() for r in self.drift] if self.drift is not None else None,
            "history": [e.to_json() for e in self.timeline],
            "inventory": self.inventory,
            "commits": {sha: c.to_json() for sha, c in sorted(self.commits.items())},
            "error": self.error,
        }


# --- building ------------------------------------------------------------------------------


def public_url(url: str) -> str:
    """The repository URL without user info (a token may hide there) or query."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme and parts.netloc:
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    return url.rpartition("@")[2] if "@" in url.split(":", 1)[0] else url


def _entry(h: HistoryEntry) -> TimelineEntry:
    return TimelineEntry(
        sha=h.sha,
        result=h.result,
        time=h.time,
        reason=h.reason,
        rollback=h.result in ROLLBACK_RESULTS,
    )


def health_of(state: AppState, runner: RunnerView | None) -> Health:
    """One word with a reason; see the module docstring. A sync in flight does not change
    the word (most polls change nothing): it is said in the reason."""
    base = _settled_health(state, runner)
    if runner is None or runner.running_seconds is None:
        return base
    syncing = f"syncing now ({runner.running_seconds:.0f}s)"
    return Health(
        status=base.status, reason=f"{base.reason}; {syncing}" if base.reason else syncing
    )


def _settled_health(state: AppState, runner: RunnerView | None) -> Health:
    if state.degraded:
        return Health(status=DEGRADED, reason=state.degraded)
    last = state.history[-1] if state.history else None
    live = runner.last_result if runner is not None else ""
    if live in ("failed", "timed-out"):
        reason = runner.last_error if runner is not None else ""
        return Health(status=FAILED, reason=reason or (last.reason if last else ""))
    if live == "degraded":
        return Health(status=DEGRADED, reason=runner.last_error if runner is not None else "")
    if live in ("synced", "unchanged"):  # after a rollback a poll says "quarantined"
        return Health(status=HEALTHY)
    if last is None:
        if state.revision:
            return Health(status=HEALTHY)
        return Health(status=PROGRESSING, reason="waiting for the first sync")
    if last.result == "rolled-back":
        why = f"rolled back from {last.sha[:12]} to {state.revision[:12]}"
        return Health(status=DEGRADED, reason=f"{why}: {last.reason}" if last.reason else why)
    if last.result == "rollback-failed":
        return Health(status=DEGRADED, reason=last.reason)
    if last.result in FAILED_RESULTS:
        return Health(status=FAILED, reason=last.reason)
    if last.result == "interrupted":
        return Health(status=PROGRESSING, reason="the last sync was interrupted; the next resumes")
    return Health(status=HEALTHY)


def drift_rows(reports: Iterable[DriftReport]) -> tuple[DriftRow, ...]:
    return tuple(_row(r) for r in reports)


def _row(report: DriftReport) -> DriftRow:
    ref = report.ref
    secret = ref.group == "" and ref.kind == "Secret"
    # Reports already mask Secret values; masking data fields again costs nothing.
    hidden = secret and report.path != OBJECT_PATH and report.path.split(".", 1)[0] != "metadata"
    return DriftRow(
        object=str(ref),
        kind=ref.kind,
        namespace=ref.namespace,
        name=ref.name,
        field=report.path,
        git=MASK if hidden else _text(report.desired),
        live=MASK if hidden else _text(report.live),
        manager=report.manager or "unknown",
        operation="/".join(p for p in (report.operation, report.subresource) if p),
        time=report.time,
        seen=report.seen,
    )


def _text(value: Any) -> str:
    shown = display(value)
    return shown if isinstance(shown, str) else json.dumps(shown)


def build(
    app: AppConfig,
    state: AppState | None,
    *,
    runner: RunnerView | None = None,
    drift: Iterable[DriftReport] | None = None,
    commits: Callable[[str], CommitInfo | None] | None = None,
    error: str = "",
) -> AppOverview:
    """The overview of one app; ``state`` None means it could not be read (see ``error``)."""
    st = state or AppState(app=app.name)
    timeline = tuple(_entry(h) for h in reversed(st.history))
    shas = dict.fromkeys(
        s for s in (st.revision, st.healthy_revision, *st.quarantined, *(e.sha for e in timeline))
    )
    found: dict[str, CommitInfo] = {}
    if commits is not None:
        for sha in shas:
            info = commits(sha) if sha else None
            if info is not None:
                found[sha] = info
    return AppOverview(
        name=app.name,
        repo=public_url(app.repo),
        ref=app.ref,
        path=app.path,
        revision=st.revision,
        healthy_revision=st.healthy_revision,
        quarantined=st.quarantined,
        health=(
            health_of(st, runner)
            if state is not None
            else Health(status=FAILED, reason=f"state unreadable: {error}")
        ),
        last_sync=timeline[0] if timeline else None,
        runner=runner,
        drift=drift_rows(drift) if drift is not None else None,
        timeline=timeline,
        inventory=len(st.inventory),
        commits=found,
        error=error,
    )


# --- commit subjects from the Git cache ----------------------------------------------------


class CommitLookup:
    """Subject, author and time of a commit, from the Git cache; each commit read once.

    Only local ``git log`` in the cache's bare store (no remote, no credentials). A commit
    the store does not have (not fetched yet, or collected) is asked for again after
    ``retry_after`` seconds.
    """

    def __init__(self, cache_dir: Path, *, size: int = 2048, retry_after: float = 30.0) -> None:
        self.cache_dir = cache_dir
        self._size = size
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._known: OrderedDict[tuple[str, str], CommitInfo] = OrderedDict()
        self._missing: dict[tuple[str, str], float] = {}

    def for_repo(self, url: str) -> Callable[[str], CommitInfo | None]:
        return lambda sha: self.get(url, sha)

    def get(self, url: str, sha: str) -> CommitInfo | None:
        key = (url, sha)
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
                return known
            if self._missing.get(key, 0.0) > time.monotonic():
                return None
        info = self._read(url, sha)
        with self._lock:
            if info is None:
                if len(self._missing) > self._size:
                    self._missing.clear()
                self._missing[key] = time.monotonic() + self._retry_after
                return None
            self._known[key] = info
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return info

    def _read(self, url: str, sha: str) -> CommitInfo | None:
        if not sha or not all(c in "0123456789abcdef" for c in sha):
            return None
        repo = gitcache.Store.of(self.cache_dir, url).repo
        if not repo.is_dir():
            return None
        fmt = "--format=%s%x00%an <%ae>%x00%cI"
        try:
            out = gitcache.local_git(repo, "log", "-1", "--no-walk", fmt, sha, "--")
        except SourceError:
            return None
        subject, _, rest = out.rstrip("\n").partition("\x00")
        author, _, when = rest.partition("\x00")
        return CommitInfo(sha=sha, subject=subject, author=author, time=when)


# --- the controller's collector ------------------------------------------------------------


class Overview:
    """The overview of every configured app, for the status page and its JSON.

    States are read from the cluster at most once per ``ttl`` seconds, by one request at a
    time (a page refreshing itself in several browsers is one read per app, not one per
    viewer; a 10,000-object state takes about 0.15 s to decode).
    """

    def __init__(
        self,
        apps: Sequence[AppConfig],
        *,
        kube: Kube,
        state_namespace: str,
        commits: CommitLookup,
        runner: Callable[[str], RunnerView | None],
        drift: Callable[[str], Sequence[DriftReport] | None],
        ttl: float = 5.0,
    ) -> None:
        self.apps = {a.name: a for a in apps}
        self.kube = kube
        self.state_namespace = state_namespace
        self.commits = commits
        self._runner = runner
        self._drift = drift
        self._ttl = ttl
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._states: dict[str, tuple[float, AppState | None, str]] = {}

    def names(self) -> list[str]:
        return list(self.apps)

    def app(self, name: str) -> AppOverview | None:
        app = self.apps.get(name)
        if app is None:
            return None
        state, error = self._state(name)
        return build(
            app,
            state,
            runner=self._runner(name),
            drift=self._drift(name),
            commits=self.commits.for_repo(app.repo),
            error=error,
        )

    def all(self) -> list[AppOverview]:
        return [o for o in map(self.app, self.apps) if o is not None]

    def _state(self, name: str) -> tuple[AppState | None, str]:
        with self._reading:
            return self._read_state(name)

    def _read_state(self, name: str) -> tuple[AppState | None, str]:
        now = time.monotonic()
        with self._lock:
            cached = self._states.get(name)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        try:
            state: AppState | None = inventory.read_state(
                self.kube, app=name, namespace=self.state_namespace
            )
            error = ""
        except GitSyncError as e:
            state, error = None, str(e)
        with self._lock:
            self._states[name] = (now + self._ttl, state, error)
        return state, error


def iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else ""


__all__ = [
    "DEGRADED",
    "FAILED",
    "HEALTHY",
    "PROGRESSING",
    "AppOverview",
    "CommitInfo",
    "CommitLookup",
    "DriftRow",
    "Health",
    "Overview",
    "RunnerView",
    "TimelineEntry",
    "build",
    "health_of",
    "iso",
    "public_url",
]
