"""``gitsync run``: the long-running controller.

One APScheduler job per app, at the app's interval with jitter, on a thread pool with a
worker per app, so a slow or failing app never delays another; ``max_instances=1`` and
``coalesce`` mean one app never syncs twice at once and missed ticks fold into one run.
A failed sync is retried sooner, with doubling backoff capped by the interval; an
unexpected exception in a sync is logged and counted like a failure, never fatal.

Only the holder of the leader Lease runs jobs and drift watchers (so only it applies,
prunes, rolls back and heals); with ``controller.shards`` > 1 each shard has a Lease of
its own and a replica runs the apps of the shards it holds (gitsync.runtime.shards).
Losing a Lease ends the process at once (exit 1): the threads still inside a sync
cannot be fenced off any other way, and the Deployment restarts the pod as a standby.
SIGTERM stops new syncs, waits up to ``shutdownTimeout`` for the running ones to finish
their stage, releases the Leases and exits 0; if a sync is still running then, the
Leases are left to expire instead of handed over while a writer lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from structlog.contextvars import bound_contextvars

from gitsync import log
from gitsync.config import AppConfig, GitSyncConfig
from gitsync.drift.compare import DriftReport
from gitsync.drift.guard import Hold
from gitsync.drift.watcher import DriftWatcher
from gitsync.engine import inventory
from gitsync.engine.steady import SteadyMemo
from gitsync.engine.sync import Context, SyncResult, app_kube, sync_app
from gitsync.errors import ConfigError, GitSyncError
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from gitsync.runtime import events, metrics, overview, shards, ui
from gitsync.runtime.leader import LeaseSpec, default_identity
from gitsync.runtime.server import Server, WebhookSettings
from gitsync.source import gitcache
from gitsync.source.credentials import CredentialStore, read_secret, secret_ref

# Retried with backoff: "degraded" is a rollback that did not finish, "timed-out" a gate
# that saw no failure yet (checked again soon rather than at the next interval).
FAILED_RESULTS = frozenset({"failed", "degraded", "timed-out"})
STUCK_AFTER_DEFAULT = 1800.0  # a gate plus a rollback gate at the default deadline, twice
CACHE_GC_INTERVAL = 60.0  # seconds between Git cache GC passes (each walks the cache once)


@dataclass(slots=True, kw_only=True)
class _AppRunner:
    """Mutable bookkeeping of one app; guarded by ``lock``."""

    app: AppConfig
    shard: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    running_since: float | None = None
    pending: bool = False
    failures: int = 0
    last_result: str = ""
    last_finished: str = ""  # ISO time the last sync ended
    last_error: str = ""
    last_event: tuple[str, str] = ("", "")
    drift: DriftWatcher | None = None


def load_webhook_secret(cfg: GitSyncConfig, kube: Kube) -> bytes | None:
    """The webhook HMAC secret from the configured source; ``ConfigError`` with the key path."""
    hook = cfg.controller.webhook
    if hook is None:
        return None
    where = "controller.webhook"
    if hook.secret_ref is not None:
        ref = hook.secret_ref
        try:
            data = read_secret(kube, namespace=cfg.state_namespace, name=ref.name)
        except GitSyncError as e:
            msg = f"{where}.secretRef: {e}"
            raise ConfigError(msg) from e
        value = data.get(ref.key, b"").strip()
        if not value:
            msg = (
                f"{where}.secretRef: Secret {cfg.state_namespace}/{ref.name} has no key {ref.key!r}"
            )
            raise ConfigError(msg)
        return value
    if hook.secret_file is not None:
        try:
            value = Path(hook.secret_file).read_bytes().strip()
        except OSError as e:
            msg = f"{where}.secretFile: cannot read {hook.secret_file}: {e.strerror}"
            raise ConfigError(msg) from e
        if not value:
            msg = f"{where}.secretFile: {hook.secret_file} is empty"
            raise ConfigError(msg)
        return value
    env = hook.secret_env or ""
    value = os.environ.get(env, "").strip().encode()
    if not value:
        msg = f"{where}.secretEnv: environment variable {env} is not set or empty"
        raise ConfigError(msg)
    return value


def load_app_webhook_secrets(cfg: GitSyncConfig, kube: Kube) -> dict[str, bytes]:
    """Each ``apps[].webhook.secretRef``, read once at start; one error lists every problem."""
    secrets: dict[str, bytes] = {}
    problems = []
    for i, app in enumerate(cfg.apps):
        if app.webhook is None:
            continue
        ref = app.webhook.secret_ref
        where = f"apps[{i}].webhook.secretRef"
        try:
            value = read_secret(kube, namespace=cfg.state_namespace, name=ref.name).get(ref.key)
        except GitSyncError as e:
            problems.append(f"{where}: {e}")
            continue
        if not (value or b"").strip():
            problems.append(
                f"{where}: Secret {cfg.state_namespace}/{ref.name} has no key {ref.key!r}"
            )
            continue
        secrets[app.name] = (value or b"").strip()
    if problems:
        raise ConfigError("\n".join(problems))
    return secrets


def webhook_settings(
    cfg: GitSyncConfig, secret: bytes | None, app_secrets: Mapping[str, bytes]
) -> WebhookSettings | None:
    """Webhooks are on when ``controller.webhook`` or any app's ``webhook`` is configured."""
    hook = cfg.controller.webhook
    if secret is None and not app_secrets:
        return None
    return WebhookSettings(
        secret=secret,
        max_body_bytes=hook.max_body_bytes if hook is not None else 1_048_576,
        app_secrets=dict(app_secrets),
        app_repos={app.name: app.repo for app in cfg.apps},
    )


def check_references(cfg: GitSyncConfig, credentials: CredentialStore) -> None:
    """Every auth Secret exists and is usable, before anything runs: one error lists all."""
    problems = []
    for i, app in enumerate(cfg.apps):
        if app.auth is None:
            continue
        try:
            credentials.load(app=app.name, secret=app.auth.secret_ref)
        except GitSyncError as e:
            problems.append(f"apps[{i}].auth.secretRef: {e}")
    if problems:
        raise ConfigError("\n".join(problems))


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        msg = f"cacheDir: {path} is not a writable directory: {e.strerror}"
        raise ConfigError(msg) from e
    return path


class Controller:
    """Ties scheduler, leader election, drift watchers and the HTTP server together."""

    def __init__(
        self,
        cfg: GitSyncConfig,
        *,
        kube: Kube,
        credentials: CredentialStore,
        webhook_secret: bytes | None,
        app_webhook_secrets: Mapping[str, bytes] | None = None,
        identity: str | None = None,
        lease_kube: Kube | None = None,
    ) -> None:
        """``kube`` serves syncs and drift watches; the Lease uses ``lease_kube`` (by
        default ``kube.dedicated()``), so renewals never wait for their connections."""
        self.cfg = cfg
        self.kube = kube
        self.credentials = credentials
        self.log = log.get(component="controller")
        self.stopping = threading.Event()
        # One watch per kind for every app: drift, the gate and the plan's no-op check.
        # They start on first use, which only the leader makes.
        self.informers = Informers(kube)
        metrics.publish_informers(self.informers)
        self.ctx = Context(
            kube=kube,
            cache_dir=_writable_dir(Path(cfg.cache_dir)),
            state_namespace=cfg.state_namespace,
            cancel=self.stopping,
            informers=self.informers,
            steady=SteadyMemo(),
        )
        ctl = cfg.controller
        self.stuck_after = ctl.stuck_after or STUCK_AFTER_DEFAULT
        self.runners = {
            app.name: _AppRunner(app=app, shard=shards.shard_of(app.name, ctl.shards))
            for app in cfg.apps
        }
        self._held: frozenset[int] = frozenset()
        self._held_lock = threading.Lock()
        self._cache_gc_lock = threading.Lock()
        self._cache_gc_due = 0.0
        self._started = time.monotonic()
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max(1, len(cfg.apps)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        election = ctl.leader_election
        self.identity = identity or default_identity()
        self.shards: shards.ShardSet | None = None
        if election.enabled:
            # The API server's audit log then says which replica sent each write.
            kube.set_user_agent(f"gitsync/{self.identity}")
            spec = LeaseSpec(
                namespace=cfg.state_namespace,
                name=election.lease_name,
                identity=self.identity,
                lease_duration=election.lease_duration,
                renew_deadline=election.renew_deadline,
                retry_period=election.retry_period,
            )
            # Sharded: a connection for each shard's elector and two for the membership.
            pool = 2 if ctl.shards == 1 else ctl.shards + 2
            self.shards = shards.ShardSet(
                lease_kube or kube.dedicated(timeout=spec.renew_deadline, pool_size=pool),
                base=spec,
                shards=ctl.shards,
                on_started=self._start_leading,
                on_lost=self._lost_leadership,
                logger=self.log,
                on_shed=self._shed,
            )
            # Fencing: past renewDeadline of any held shard no write leaves this process,
            # even before the elector (or its watchdog) has ended it.
            kube.set_write_fence(self.shards.write_fence)
        # Renewals go on while SIGTERM waits for running syncs: they still write.
        self._elector_stop = threading.Event()
        webhook = webhook_settings(cfg, webhook_secret, app_webhook_secrets or {})
        pages = None
        if ctl.ui:
            self.overview = overview.Overview(
                cfg.apps,
                kube=kube,
                state_namespace=cfg.state_namespace,
                commits=overview.CommitLookup(self.ctx.cache_dir),
                runner=self.runner_view,
                drift=self.drift_reports,
            )
            pages = ui.Pages(self.overview, leader=lambda: self.is_leader, shards=self._shard_view)
        self.server = Server(
            listen=ctl.listen,
            controller=self,
            webhook=webhook,
            logger=log.get(component="server"),
            pages=pages,
        )

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit 0) or a lost Lease (exit 1)."""
        for app in self.cfg.apps:
            metrics.DRIFT_OBJECTS.labels(app=app.name).set(0)
        shards.publish(frozenset(), self.cfg.controller.shards)
        # APScheduler's own warnings (a skipped tick while a sync runs) are expected and
        # not JSON; our logs say what happened with each sync.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        # Renders and plans of many apps keep the GIL busy; a shorter switch interval lets
        # the threads that wait on the network (the Lease renewal first) run sooner.
        sys.setswitchinterval(0.001)
        self.server.start()
        self.scheduler.start(paused=True)
        self.log.info(
            "controller.started",
            apps=[a.name for a in self.cfg.apps],
            leader_election=self.shards is not None,
            identity=self.identity if self.shards else "",
            shards={
                str(i): sorted(n for n, r in self.runners.items() if r.shard == i)
                for i in range(self.cfg.controller.shards)
            }
            if self.cfg.controller.shards > 1
            else None,
        )
        if self.shards is None:
            self._start_leading(0)
        else:
            self.shards.start(self._elector_stop)
        while not self.stopping.wait(1.0):
            pass  # a timed wait, so the signal handler always gets the main thread
        return self.shutdown()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            self.log.info("controller.signal", signal=signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def shutdown(self) -> int:
        """No new syncs; let running ones finish; release the Lease only if none is left."""
        self.stopping.set()
        if self.scheduler.running:
            self.scheduler.pause()
        deadline = time.monotonic() + self.cfg.controller.shutdown_timeout
        busy = self._busy()
        if busy:
            self.log.info("shutdown.waiting", apps=busy)
        while busy and time.monotonic() < deadline:
            time.sleep(0.1)
            busy = self._busy()
        if busy:
            # A writer is alive: do not hand the Lease over; it expires after we are gone.
            self.log.error("shutdown.abandoned", apps=busy, reason="sync did not finish in time")
            self._exit_now(0)
        self._stop_drift_watchers()
        self.scheduler.shutdown(wait=False)
        self._elector_stop.set()
        if self.shards is not None:
            self.shards.stop()
        released: list[int] = []
        if self.shards is not None:
            self.shards.join(timeout=5)
            released = self.shards.release()
        shards.publish(frozenset(), self.cfg.controller.shards)
        self.server.stop()
        if self.cfg.controller.shards > 1:
            self.log.info("controller.stopped", released_lease=bool(released), released=released)
        else:
            self.log.info("controller.stopped", released_lease=bool(released))
        return 0

    def _busy(self, runners: Mapping[str, _AppRunner] | None = None) -> list[str]:
        runners = self.runners if runners is None else runners
        return [name for name, r in runners.items() if r.running_since is not None]

    def _start_leading(self, shard: int) -> None:
        """Schedule and watch the apps of ``shard`` (every app with one shard)."""
        if self.stopping.is_set():
            return
        with self._held_lock:
            self._held |= {shard}
            held = self._held
        shards.publish(held, self.cfg.controller.shards)
        now = datetime.now(UTC)
        jitter = self.cfg.controller.jitter
        mine = {n: r for n, r in self.runners.items() if r.shard == shard}
        for name, runner in mine.items():
            interval = runner.app.interval
            first = now + timedelta(seconds=random.uniform(0, min(1.0, interval * jitter)))  # noqa: S311
            self.scheduler.add_job(
                self._job,
                IntervalTrigger(seconds=interval, jitter=interval * jitter or None, timezone=UTC),
                args=(name,),
                id=name,
                name=f"sync {name}",
                next_run_time=first,
                replace_existing=True,
            )
        self.scheduler.resume()
        self._start_drift_watchers(mine.values())
        if self.cfg.controller.shards > 1:
            self.log.info("controller.leading", apps=len(mine), shard=shard, held=sorted(held))
        else:
            self.log.info("controller.leading", apps=len(mine))

    def _shed(self, shard: int) -> bool:
        """Stop the work of ``shard`` so its Lease can be handed to another replica: no
        new sync, the running ones finish (up to ``shutdownTimeout``), drift watchers stop.
        False (and the shard is resumed) when a sync is still running by then."""
        with self._held_lock:
            self._held -= {shard}
            held = self._held
        mine = {n: r for n, r in self.runners.items() if r.shard == shard}
        for name in mine:
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(name)
        # A job marks itself running before it checks the shard, so once none of these
        # is marked, none will write for the shard again.
        deadline = time.monotonic() + self.cfg.controller.shutdown_timeout
        while self._busy(mine) and time.monotonic() < deadline and not self.stopping.is_set():
            time.sleep(0.1)
        if self._busy(mine):
            self._start_leading(shard)
            return False
        self._stop_drift_watchers(mine.values())
        shards.publish(held, self.cfg.controller.shards)
        self.log.info("controller.shard_stopped", shard=shard, apps=len(mine), held=sorted(held))
        return True

    def _lost_leadership(self, shard: int) -> None:
        """Another replica may be leading already: stop every write by ending the process."""
        with self._held_lock:
            self._held = frozenset()
        shards.publish(frozenset(), self.cfg.controller.shards)
        reason = "leader Lease lost; stopping all writes"
        if self.cfg.controller.shards > 1:
            reason = f"Lease of shard {shard} lost; stopping all writes"
        self.log.error("controller.exit", reason=reason)
        self._exit_now(1)

    def _exit_now(self, code: int) -> None:
        """End the process without waiting for sync threads; key files go first (the
        emptyDir under /tmp outlives a container restart)."""
        shutil.rmtree(self.credentials.directory, ignore_errors=True)
        os._exit(code)

    @property
    def is_leader(self) -> bool:
        """Holds at least one shard (the leader Lease with one)."""
        return bool(self.held_shards())

    def _shard_view(self) -> ui.ShardView | None:
        count = self.cfg.controller.shards
        if count == 1:
            return None
        return ui.ShardView(count=count, held=tuple(sorted(self.held_shards())))

    def held_shards(self) -> frozenset[int]:
        with self._held_lock:
            return self._held

    def _runs(self, app: str) -> bool:
        """This replica syncs ``app``: it holds the app's shard and is not stopping."""
        runner = self.runners.get(app)
        return runner is not None and runner.shard in self.held_shards()

    # --- one app -------------------------------------------------------------------------

    def _job(self, name: str) -> None:
        """The scheduled job: sync, and again at once if a webhook came in meanwhile."""
        runner = self.runners[name]
        with runner.lock:
            runner.running_since = time.monotonic()
            runner.pending = False
        try:
            while True:
                if self.stopping.is_set() or not self._runs(name):
                    return
                with bound_contextvars(replica=self.identity, shard=runner.shard):
                    self._sync_once(runner)
                with runner.lock:
                    if not runner.pending:
                        return
                    runner.pending = False
        finally:
            with runner.lock:
                runner.running_since = None

    def _sync_once(self, runner: _AppRunner) -> None:
        app = runner.app
        began = time.monotonic()
        with runner.lock:
            runner.running_since = began
        try:
            ctx = self.ctx
            if app.auth is not None:
                ctx = replace(
                    ctx, auth=self.credentials.load(app=app.name, secret=app.auth.secret_ref)
                )
            # The drift watcher holds its reports while our own writes land.
            hold = runner.drift.syncing() if runner.drift else contextlib.nullcontext(Hold())
            with hold as held:
                result = sync_app(app, ctx)
                held.state_written = result.state_written
        except GitSyncError as e:
            log.get(app=app.name).error("sync.failed", stage="credentials", error=str(e))
            result = SyncResult(app=app.name, revision="", result="failed", error=str(e))
        except Exception as e:  # noqa: BLE001 - one app's bug must not stop the controller
            log.get(app=app.name).exception("sync.crashed", error=f"{type(e).__name__}: {e}")
            result = SyncResult(app=app.name, revision="", result="failed", error=str(e))
        seconds = time.monotonic() - began
        metrics.record_sync(
            app=app.name,
            result=result.result,
            revision=result.revision,
            seconds=seconds,
            now=time.time(),
        )
        self._emit(runner, result)
        # With the engine's sync.started: the span in which this replica wrote for the app.
        log.get(app=app.name).info("sync.finished", result=result.result)
        self._schedule_retry(runner, result)
        self._collect_git_cache()

    def _collect_git_cache(self) -> None:
        """After a sync, at most once per ``CACHE_GC_INTERVAL``; never waits for another GC."""
        if time.monotonic() < self._cache_gc_due or not self._cache_gc_lock.acquire(False):
            return
        try:
            collect_git_cache(self.ctx.cache_dir, self.cfg.apps)
            self._cache_gc_due = time.monotonic() + CACHE_GC_INTERVAL
        finally:
            self._cache_gc_lock.release()

    def _schedule_retry(self, runner: _AppRunner, result: SyncResult) -> None:
        app = runner.app
        with runner.lock:
            runner.last_result = result.result
            runner.last_finished = overview.iso(datetime.now(UTC))
            runner.last_error = result.error
            if result.result not in FAILED_RESULTS:
                runner.failures = 0
                return
            runner.failures += 1
            attempt = runner.failures
        retry = self.cfg.controller.retry
        delay = min(retry.initial * 2 ** (attempt - 1), retry.max)
        delay *= random.uniform(0.9, 1.1)  # noqa: S311 - spread retries of many apps
        if delay >= app.interval or self.stopping.is_set():
            log.get(app=app.name).warning("sync.retry", attempt=attempt, next="at interval")
            return
        log.get(app=app.name).warning("sync.retry", attempt=attempt, seconds=round(delay, 1))
        job = self.scheduler.get_job(app.name)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=delay))

    def _emit(self, runner: _AppRunner, result: SyncResult) -> None:
        """One Event per change of outcome on the app's state Secret, not one per tick."""
        sha = result.revision[:12]
        reason, message, warning = {
            "synced": ("Synced", f"synced {sha}: {_counts(result)}", False),
            "unchanged": ("Synced", f"in sync at {sha}", False),
            "failed": ("SyncFailed", result.error or "sync failed", True),
            "rolled-back": (
                "RolledBack",
                f"rolled back from {sha} to {result.rolled_back_to[:12]}: {result.error}",
                True,
            ),
            "quarantined": ("Quarantined", f"{sha} is quarantined after a rollback; skipped", True),
            "timed-out": ("HealthTimeout", result.error or "health gate timed out", True),
            "degraded": ("Degraded", f"rollback from {sha} did not finish: {result.error}", True),
        }.get(result.result, ("Synced", result.result, False))
        # Keyed without the error text: it often carries timings that differ every try.
        key = (reason, result.revision)
        with runner.lock:
            last = runner.last_event
            # "unchanged" is news only right after a failure: it says the app recovered.
            emit = last[0] not in ("", "Synced") if result.result == "unchanged" else key != last
            if not emit:
                return
            runner.last_event = key
        ref = secret_ref(self.cfg.state_namespace, inventory.secret_name(runner.app.name))
        events.emit(self.kube, involved=ref, reason=reason, message=message, warning=warning)

    # --- drift watchers ------------------------------------------------------------------

    def _start_drift_watchers(self, runners: Iterable[_AppRunner]) -> None:
        """A watcher that cannot start is logged; syncing goes on without it."""
        for runner in runners:
            if runner.drift is not None:
                continue  # still running from before a hand-off that did not happen
            try:
                # With selfHeal a watcher writes: one more reason it runs on the leader only.
                # It keeps gitsync_drift_objects{app} itself.
                # Watches and heals run as the app's ServiceAccount; state stays gitsync's.
                runner.drift = DriftWatcher(
                    app_kube(runner.app, self.ctx),
                    runner.app,
                    self.cfg.state_namespace,
                    log.get(app=runner.app.name),
                    state_kube=self.kube,
                    informers=self.informers,
                )
                runner.drift.start()
            except Exception as e:  # noqa: BLE001 - drift reports are optional, syncs are not
                log.get(app=runner.app.name).exception("drift.failed", error=str(e))
                runner.drift = None

    def _stop_drift_watchers(self, runners: Iterable[_AppRunner] | None = None) -> None:
        """Stop all at once (each may wait for its streams), before the Lease is released."""
        chosen = list(self.runners.values() if runners is None else runners)
        stoppers = [
            threading.Thread(target=r.drift.stop, name=f"stop-drift-{r.app.name}", daemon=True)
            for r in chosen
            if r.drift is not None
        ]
        for t in stoppers:
            t.start()
        deadline = time.monotonic() + 15
        for t in stoppers:
            t.join(max(0.0, deadline - time.monotonic()))
        for r in chosen:
            r.drift = None
        if runners is None:  # all of them: the shared watches go too
            self.informers.stop()

    # --- what the HTTP server asks -------------------------------------------------------

    def has_app(self, app: str) -> bool:
        return app in self.runners

    def trigger(self, app: str) -> str:
        """Sync ``app`` now; if it is syncing, once more right after."""
        if not self._runs(app) or self.stopping.is_set():
            return "standby"
        runner = self.runners[app]
        with runner.lock:
            if runner.running_since is not None:
                runner.pending = True
                return "queued"
        job = self.scheduler.get_job(app)
        if job is None:
            return "standby"
        job.modify(next_run_time=datetime.now(UTC))
        return "started"

    def runner_view(self, name: str) -> overview.RunnerView | None:
        """What this process knows about an app's job, for the status page; None on a
        standby (its runners never ran)."""
        runner = self.runners.get(name)
        if runner is None or not self._runs(name):
            return None
        with runner.lock:
            since = runner.running_since
            view = overview.RunnerView(
                running_seconds=time.monotonic() - since if since is not None else None,
                last_result=runner.last_result,
                last_finished=runner.last_finished,
                last_error=runner.last_error,
                failures=runner.failures,
            )
        job = self.scheduler.get_job(name) if self.scheduler.running else None
        next_run = getattr(job, "next_run_time", None) if job is not None else None
        return replace(view, next_poll=overview.iso(next_run))

    def drift_reports(self, name: str) -> Sequence[DriftReport] | None:
        """The drift the app's watcher publishes now; None when no watcher runs here."""
        runner = self.runners.get(name)
        watcher = runner.drift if runner is not None else None
        return watcher.current() if watcher is not None else None

    def health(self) -> tuple[bool, dict[str, Any]]:
        alive = self.shards is None or self.shards.alive()
        alive = alive or self.stopping.is_set()
        return alive, {"status": "ok" if alive else "leader election loop died"}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        apps: dict[str, Any] = {}
        stuck: list[str] = []
        for name, r in self.runners.items():
            with r.lock:
                running = now - r.running_since if r.running_since is not None else None
                apps[name] = {
                    "running_seconds": round(running, 1) if running is not None else None,
                    "last_result": r.last_result,
                    "failures": r.failures,
                }
            if running is not None and running > self.stuck_after:
                stuck.append(name)
        leader = self.is_leader
        detail: dict[str, Any] = {"leader": leader, "apps": apps}
        if self.shards is not None:
            detail["identity"] = self.identity
            holders = self.shards.holders()
            detail["holder"] = holders["0"]
            detail["lease_renew_seconds"] = self.shards.renew_stats()
            if self.shards.count > 1:
                detail["shards"] = {
                    "count": self.shards.count,
                    "held": sorted(self.held_shards()),
                    "holders": holders,
                    "members": self.shards.live_members(),
                }
        problems = []
        if self.stopping.is_set():
            problems.append("shutting down")
        if stuck:
            problems.append(f"sync running longer than {self.stuck_after:g}s: {', '.join(stuck)}")
        if leader and not self.scheduler.running:
            problems.append("scheduler is not running")
        if not leader and self.shards is not None:
            ok, error = self.shards.healthy()
            retry = self.cfg.controller.leader_election.retry_period
            if not ok and now - self._started > retry * 3:
                problems.append(f"standby cannot reach the Lease: {error or 'no answer yet'}")
        detail["problems"] = problems
        return not problems, detail


def collect_git_cache(cache_dir: Path, apps: Sequence[AppConfig]) -> gitcache.CacheReport | None:
    """Drop Git stores and trees no app needs and publish the cache size; logs, never raises."""
    logger = log.get(component="git-cache")
    try:
        report = gitcache.collect(cache_dir, keep={(a.repo, a.ref) for a in apps})
    except Exception as e:  # noqa: BLE001 - a cache problem must never stop the syncs
        logger.warning("cache.gc_failed", error=f"{type(e).__name__}: {e}")
        return None
    metrics.GIT_CACHE_BYTES.set(report.bytes)
    if report.removed_stores or report.removed_trees or report.repacked:
        logger.info(
            "cache.collected",
            bytes=report.bytes,
            removed_stores=report.removed_stores,
            removed_trees=report.removed_trees,
            repacked=report.repacked,
        )
    return report


def _counts(result: SyncResult) -> str:
    c = result.counts
    return (
        f"{c.get('create', 0)} created, {c.get('update', 0)} updated, {c.get('pruned', 0)} pruned"
    )


def main(*, config_path: str, kubeconfig: str | None = None, context: str | None = None) -> int:
    """Validate everything, then run until signalled. ``ConfigError`` means exit code 2."""
    from gitsync import config

    cfg = config.load(config_path)  # before any connection: a bad file touches nothing
    kube = Kube.connect(
        kubeconfig=kubeconfig, context=context, retry_budget=cfg.controller.api_retry_timeout
    )
    credentials = CredentialStore.create(kube=kube, namespace=cfg.state_namespace)
    try:
        check_references(cfg, credentials)
        secret = load_webhook_secret(cfg, kube)
        controller = Controller(
            cfg,
            kube=kube,
            credentials=credentials,
            webhook_secret=secret,
            app_webhook_secrets=load_app_webhook_secrets(cfg, kube),
        )
        controller.install_signal_handlers()
        return controller.run()
    finally:
        shutil.rmtree(credentials.directory, ignore_errors=True)
