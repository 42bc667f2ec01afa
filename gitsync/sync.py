"""One reconcile of one app: fetch → render → plan → apply → gate → prune | rollback → record.

Each step is its own module; this one only sequences them, logs stable events and
decides what the state Secret records. Nothing is written before the whole set has
rendered and every object has passed a server-side dry-run; nothing is pruned before the
new revision is healthy; a revision that fails its gate is rolled back and quarantined.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gitsync import events, inventory, log
from gitsync.apply import AppliedSet, Failure, Progress, apply_plan
from gitsync.config import AppConfig
from gitsync.errors import ApplyError, GitSyncError
from gitsync.gate import ObjectHealth, Verdict, default_timeout, wait_healthy
from gitsync.health import Health, Status
from gitsync.inventory import AppState, InventoryEntry
from gitsync.kube import Kube
from gitsync.model import Identity, ManifestSet, Revision
from gitsync.plan import Action, Plan, make_plan
from gitsync.prune import PruneResult, prune
from gitsync.render import render
from gitsync.rollback import quarantine as quarantine_commit
from gitsync.rollback import roll_back
from gitsync.source import GitAuth, SourceSpec, checkout


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """Everything known before the first write."""

    revision: Revision
    manifests: ManifestSet
    state: AppState
    plan: Plan


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResult:
    app: str
    revision: str
    # synced | unchanged | failed | rolled-back | quarantined (skipped) | interrupted
    result: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    error: str = ""
    prune_guard: str = ""
    seconds: float = 0.0
    rolled_back_to: str = ""


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

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def source_spec(app: AppConfig, auth: GitAuth | None) -> SourceSpec:
    return SourceSpec(url=app.repo, ref=app.ref, path=app.path, auth=auth or GitAuth())


def _repo_root(revision: Revision, app_path: str) -> Path:
    root = Path(revision.path)
    for part in Path(app_path).parts:
        if part != ".":
            root = root.parent
    return root


def prepare_render(app: AppConfig, ctx: Context) -> tuple[Revision, ManifestSet]:
    """Fetch and render: reads the repo and discovery only, from the commit's pinned tree."""
    spec = source_spec(app, ctx.auth)
    with checkout(spec, cache_dir=ctx.cache_dir, timeout=ctx.fetch_timeout) as revision:
        manifests = render(
            Path(revision.path),
            repo_root=_repo_root(revision, app.path),
            default_namespace=app.namespace,
            app_name=app.name,
            kinds=ctx.kube.discover(refresh=True),
            kustomize=list(ctx.kustomize) if ctx.kustomize else None,
        )
    return revision, manifests


def prepare(app: AppConfig, ctx: Context) -> Prepared:
    """Fetch, render and plan: reads only."""
    revision, manifests = prepare_render(app, ctx)
    state = inventory.read_state(ctx.kube, app=app.name, namespace=ctx.state_namespace)
    plan = make_plan(manifests, kube=ctx.kube, app=app.name, state=state)
    return Prepared(revision=revision, manifests=manifests, state=state, plan=plan)


def sync_app(
    app: AppConfig, ctx: Context, *, progress: Progress | None = None, force: bool = False
) -> SyncResult:
    """Make the cluster match the app's commit; never raises for a bad commit."""
    return _Run(app, ctx, progress=progress, force=force).run()


class _Run:
    """One sync's shared context, so each step below stays a short method."""

    def __init__(
        self, app: AppConfig, ctx: Context, *, progress: Progress | None, force: bool
    ) -> None:
        self.app, self.ctx, self.kube = app, ctx, ctx.kube
        self.progress, self.force = progress, force
        self.started = time.monotonic()
        self.log = log.get(app=app.name)

    def result(self, sha: str, result: str, **kw: Any) -> SyncResult:
        return SyncResult(
            app=self.app.name,
            revision=sha,
            result=result,
            seconds=time.monotonic() - self.started,
            **kw,
        )

    def run(self) -> SyncResult:
        app = self.app
        self.log.info("sync.started", repo=app.repo, ref=app.ref, path=app.path)
        try:
            revision, manifests = prepare_render(app, self.ctx)
            state = inventory.read_state(
                self.kube, app=app.name, namespace=self.ctx.state_namespace
            )
            self.log = self.log.bind(revision=revision.sha[:12])
            if revision.sha in state.quarantined and not self.force:
                self.log.info("sync.skipped", reason="commit is quarantined after a rollback")
                return self.result(revision.sha, "quarantined")
            plan = make_plan(manifests, kube=self.kube, app=app.name, state=state)
        except GitSyncError as e:
            # Fetch, render or a dry-run refused the commit: nothing was written.
            stage = "plan" if isinstance(e, ApplyError) else "prepare"
            self.log.error("sync.failed", stage=stage, error=str(e))
            return self.result("", "failed", error=str(e))
        prep = Prepared(revision=revision, manifests=manifests, state=state, plan=plan)
        if self.ctx.cancelled:
            self.log.info("sync.interrupted", stage="plan", reason="shutting down; nothing written")
            return self.result(revision.sha, "interrupted")
        return self.apply(prep)

    def apply(self, prep: Prepared) -> SyncResult:
        rev = prep.revision
        for warning in prep.manifests.warnings:
            self.log.warning("render.lint", message=warning)
        counts = prep.plan.counts()
        self.log.info("sync.planned", **counts)
        applied = apply_plan(prep.plan, kube=self.kube, progress=self.progress)
        by_id = {c.ref.identity(): c for c in prep.plan.changes}
        for ref in applied.written:  # in the order they were applied
            change = by_id[ref.identity()]
            self.log.info(
                "sync.applied",
                action=change.action.value,
                object=str(ref),
                source=change.source,
                fields=len(change.diff),
            )
        # What we own now: everything applied, plus everything we owned and did not delete.
        state = _record(prep.state, rev.sha, applied.entries, keep=prep.state.inventory)
        if not applied.ok:
            for f in applied.failures:
                self.log.error("apply.failed", object=str(f.ref), source=f.source, error=f.message)
            if applied.written and self.app.rollback.enabled:
                # Part of the commit landed: put the healthy revision back rather than leave
                # the app half-applied. Quarantine only if the API refused the commit itself.
                verdict = Verdict(
                    healthy=False,
                    failed=tuple(
                        ObjectHealth(ref=f.ref, health=Health(Status.FAILED, f.message))
                        for f in applied.failures
                    ),
                )
                permanent = all(f.permanent for f in applied.failures)
                return self.failed_gate(
                    prep, state, applied, verdict, counts, quarantine=permanent, event="ApplyFailed"
                )
            reason = str(applied.failures[0])
            _store(self.ctx, state.with_history(rev.sha, "failed", reason=reason))
            return self.result(
                rev.sha, "failed", counts=counts, failures=applied.failures, error=reason
            )
        if applied.written or prep.state.healthy_revision != rev.sha:
            verdict = self.gate(applied)
            if verdict.interrupted:
                # Applied but not judged: the next sync (maybe another replica's) gates again,
                # because healthy_revision still names the previous commit.
                self.log.warning("sync.interrupted", stage="health", reason="shutting down")
                _store(self.ctx, state.with_history(rev.sha, "interrupted"))
                return self.result(rev.sha, "interrupted", counts=counts)
            if not verdict.healthy:
                return self.failed_gate(prep, state, applied, verdict, counts)
        return self.finish(prep, applied, counts)

    def gate(self, applied: AppliedSet) -> Verdict:
        objects = list(applied.objects)
        timeout = self.app.health.timeout or default_timeout(objects)

        def report(current: int, waiting: int, failed: int) -> None:
            self.log.info("health.waiting", current=current, waiting=waiting, failed=failed)

        verdict = wait_healthy(
            self.kube, objects, timeout=timeout, on_progress=report, cancel=self.ctx.cancel
        )
        if verdict.healthy:
            self.log.info("health.passed", objects=len(objects), seconds=round(verdict.seconds, 2))
        elif not verdict.interrupted:
            culprit = verdict.culprit
            self.log.error(
                "health.failed",
                object=str(culprit.ref) if culprit else "",
                reason=verdict.reason,
                failed=len(verdict.failed),
                pending=len(verdict.pending),
                seconds=round(verdict.seconds, 2),
            )
        return verdict

    def finish(self, prep: Prepared, applied: AppliedSet, counts: dict[str, int]) -> SyncResult:
        """Healthy: prune, remember this revision as the one to roll back to."""
        rev = prep.revision
        pruned = self.prune(prep)
        kept = {r.identity() for r in pruned.kept}
        state = _record(
            prep.state,
            rev.sha,
            applied.entries,
            keep=tuple(e for e in prep.state.inventory if e.ref.identity() in kept),
        )
        state = replace(
            state,
            healthy_revision=rev.sha,
            healthy_manifests=tuple(m.obj for m in prep.manifests.manifests),
        )
        changed = bool(applied.written or pruned.deleted)
        if changed or prep.state.revision != rev.sha:
            state = state.with_history(rev.sha, "synced")
        if state != prep.state:
            _store(self.ctx, state)
        counts = {k: v for k, v in counts.items() if k != "prune"} | {"pruned": len(pruned.deleted)}
        result = "synced" if changed else "unchanged"
        out = self.result(rev.sha, result, counts=counts, prune_guard=pruned.guard)
        self.log.info(
            "sync.done",
            result=result,
            created=counts["create"],
            updated=counts["update"],
            unchanged=counts["unchanged"],
            pruned=counts["pruned"],
            seconds=round(out.seconds, 3),
        )
        return out

    def prune(self, prep: Prepared) -> PruneResult:
        """Delete what left Git; a disabled prune keeps every leftover in the inventory."""
        app = self.app
        if not app.prune.enabled:
            return PruneResult(kept=tuple(c.ref for c in prep.plan.by_action(Action.PRUNE)))
        pruned = prune(
            prep.plan.changes,
            kube=self.kube,
            app=app.name,
            desired_count=len(prep.manifests),
            inventory_count=len(prep.state.inventory),
            allow_empty=app.prune.allow_empty,
            allow_mass=app.prune.allow_mass_delete,
        )
        if pruned.guard:
            self.log.warning("prune.guarded", reason=pruned.guard, kept=len(pruned.kept))
        for ref in pruned.deleted:
            self.log.info("prune.deleted", object=str(ref))
        for skip in pruned.skipped:
            self.log.info("prune.skipped", object=str(skip.ref), reason=skip.reason)
        return pruned

    def failed_gate(
        self,
        prep: Prepared,
        state: AppState,
        applied: AppliedSet,
        verdict: Verdict,
        counts: dict[str, int],
        *,
        quarantine: bool = True,
        event: str = "HealthFailed",
    ) -> SyncResult:
        """Unhealthy (or half-applied): roll back to the last healthy revision, or report."""
        label = "health gate" if event == "HealthFailed" else "apply failed"
        bad = prep.revision.sha
        culprit = verdict.culprit
        reason = verdict.reason
        if culprit is not None:
            events.emit(self.kube, involved=culprit.ref, reason=event, message=reason, warning=True)
        if not self.app.rollback.enabled:
            _store(self.ctx, state.with_history(bad, "unhealthy", reason=reason))
            return self.result(bad, "failed", counts=counts, error=f"{label}: {reason}")
        if quarantine:
            state = quarantine_commit(state, bad)
            self.log.warning("commit.quarantined", commit=bad, reason=reason)
        if not state.healthy_revision or not state.healthy_manifests:
            self.log.error("rollback.skipped", reason="no healthy revision to roll back to")
            _store(self.ctx, state.with_history(bad, "failed", reason=reason))
            return self.result(bad, "failed", counts=counts, error=f"{label}: {reason}")
        return self.roll_back(prep, state, applied, verdict, counts, label=label)

    def roll_back(
        self,
        prep: Prepared,
        state: AppState,
        applied: AppliedSet,
        verdict: Verdict,
        counts: dict[str, int],
        *,
        label: str,
    ) -> SyncResult:
        bad, good = prep.revision.sha, state.healthy_revision
        culprit = verdict.culprit
        self.log.warning(
            "rollback.started",
            from_revision=bad,
            to_revision=good,
            object=str(culprit.ref) if culprit else "",
            reason=verdict.reason,
        )
        before = {e.ref.identity() for e in prep.state.inventory}
        created = frozenset(r.identity() for r in applied.written if r.identity() not in before)
        timeout = self.app.health.timeout or default_timeout(state.healthy_manifests)
        result = roll_back(
            kube=self.kube, app=self.app.name, state=state, created=created, timeout=timeout
        )
        state = replace(state, revision=good, inventory=result.inventory)
        for ref in result.deleted:
            self.log.info("prune.deleted", object=str(ref), during="rollback")
        for ref in result.restarted_pods:
            self.log.info("rollback.pod_replaced", object=str(ref), why="stuck on bad revision")
        message = f"rolled back from {bad[:12]} to {good[:12]}: {verdict.reason}"
        if result.ok:
            self.log.warning(
                "rollback.done",
                from_revision=bad,
                to_revision=good,
                object=str(culprit.ref) if culprit else "",
                reason=verdict.reason,
                deleted=len(result.deleted),
            )
            if culprit is not None:
                events.emit(
                    self.kube,
                    involved=culprit.ref,
                    reason="RolledBack",
                    message=message,
                    warning=True,
                )
            state = state.with_history(bad, "rolled-back", reason=verdict.reason)
        else:
            why = (
                str(result.applied.failures[0])
                if result.applied.failures
                else result.verdict.reason
                if result.verdict
                else "unknown"
            )
            self.log.error("rollback.failed", from_revision=bad, to_revision=good, reason=why)
            state = state.with_history(bad, "rollback-failed", reason=why)
        _store(self.ctx, state)
        return self.result(
            bad,
            "rolled-back" if result.ok else "failed",
            counts=counts,
            error=f"{label}: {verdict.reason}",
            rolled_back_to=good if result.ok else "",
        )


def _record(
    state: AppState,
    sha: str,
    entries: tuple[InventoryEntry, ...],
    *,
    keep: tuple[InventoryEntry, ...],
) -> AppState:
    """New inventory: ``entries`` plus the ``keep`` entries they do not replace."""
    merged: dict[Identity, InventoryEntry] = {e.ref.identity(): e for e in keep}
    for e in entries:
        merged[e.ref.identity()] = e
    return replace(
        state, revision=sha, inventory=tuple(sorted(merged.values(), key=lambda e: e.ref))
    )


def _store(ctx: Context, state: AppState) -> AppState:
    if not state.resource_version:
        inventory.ensure_namespace(ctx.kube, ctx.state_namespace)
    return inventory.write_state(ctx.kube, state, namespace=ctx.state_namespace)
