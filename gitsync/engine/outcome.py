"""What one sync records, and the values it hands back.

``Record`` holds the app's state as this sync knows it and is the one path by which every
outcome (success, failure, rollback, shutdown) reaches the cluster; ``SyncResult`` is what
a sync returns to the CLI and the controller.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitsync import log
from gitsync.config import AppConfig
from gitsync.engine import inventory
from gitsync.engine.apply import Failure
from gitsync.engine.inventory import AppState
from gitsync.engine.steady import SteadyMemo
from gitsync.errors import GitSyncError, KubeError
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from gitsync.source.git import GitAuth


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResult:
    app: str
    revision: str
    # synced | unchanged | failed | timed-out (gate deadline, no failure signal) |
    # rolled-back | degraded (rollback did not finish) | quarantined (skipped) | interrupted
    result: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    error: str = ""
    prune_guard: str = ""
    seconds: float = 0.0
    rolled_back_to: str = ""
    # Refused before any write (fetch, render, dry-run, state size): `sync --once` exits 2.
    refused: bool = False
    # The sync wrote the app's state (what drift compares against may have changed).
    state_written: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What a sync needs besides the app: the cluster, where to cache, where state lives."""

    kube: Kube
    cache_dir: Path
    state_namespace: str
    auth: GitAuth | None = None
    fetch_timeout: float = 120.0
    kustomize: tuple[str, ...] | None = None
    # Set on shutdown: a sync stops before its first write, or leaves its health gate early.
    cancel: threading.Event | None = None
    # The controller's shared watch caches (None in a one-shot CLI sync): the gate, the
    # plan's no-op check and state reads use them instead of API calls.
    informers: Informers | None = None
    # What the last full sync of each app left: a poll that finds it unchanged needs no
    # render and no plan (``gitsync.engine.steady``; only with informers).
    steady: SteadyMemo | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def object_informers(app: AppConfig, ctx: Context) -> Informers | None:
    """The shared informers, for reading the app's objects: None for an app with its own
    ServiceAccount, whose reads go through its identity (the informers read as gitsync)."""
    return None if app.service_account is not None else ctx.informers


class Record:
    """The app's state as this sync knows it: ``state`` is the working copy, ``stored``
    what the cluster holds (as last read or written); ``log`` is bound to the app."""

    def __init__(self, *, app: AppConfig, ctx: Context) -> None:
        self.app, self.ctx = app, ctx
        self.started = time.monotonic()
        self.log = log.get(app=app.name)
        self.state = AppState(app=app.name)
        self.stored = self.state
        self.writes = 0

    def result(self, sha: str, result: str, **kw: Any) -> SyncResult:
        return SyncResult(
            app=self.app.name,
            revision=sha,
            result=result,
            seconds=time.monotonic() - self.started,
            state_written=self.writes > 0,
            **kw,
        )

    def persist(self, state: AppState) -> AppState:
        self.writes += 1  # counted first: a write that failed may still have landed
        self.state = self.stored = _store(self.ctx, state)
        return self.state

    def refused(self, stage: str, sha: str, error: GitSyncError) -> SyncResult:
        """Nothing was written: log it and, when the state is readable, record it once."""
        self.log.error("sync.failed", stage=stage, error=str(error))
        with contextlib.suppress(GitSyncError):
            if not sha:
                self.state = self.stored = inventory.read_state(
                    self.ctx.kube,
                    app=self.app.name,
                    namespace=self.ctx.state_namespace,
                    informers=self.ctx.informers,
                )
            last = self.state.history[-1] if self.state.history else None
            if last is None or (last.sha, last.result, last.reason) != (sha, "failed", str(error)):
                self.persist(self.state.with_history(sha, "failed", reason=str(error)))
        return self.result(sha, "failed", error=str(error), refused=True)


def _store(ctx: Context, state: AppState) -> AppState:
    if not state.resource_version:
        try:
            inventory.ensure_namespace(ctx.kube, ctx.state_namespace)
        except KubeError as e:
            # The restricted role may not read Namespaces; its own was deployed with it
            # (if not, the write below says so).
            if e.status != 403:
                raise
    return inventory.write_state(ctx.kube, state, namespace=ctx.state_namespace)
