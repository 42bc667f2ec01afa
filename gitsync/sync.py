"""One reconcile of one app: fetch → render → plan → apply → prune → record.

Each step is its own module; this one only sequences them, logs stable events and
decides what the state Secret records. Nothing is written before the whole set has
rendered and every object has passed a server-side dry-run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gitsync import inventory, log
from gitsync.apply import AppliedSet, Failure, Progress, apply_plan
from gitsync.config import AppConfig
from gitsync.errors import ApplyError, GitSyncError
from gitsync.inventory import AppState, InventoryEntry
from gitsync.kube import Kube
from gitsync.model import ManifestSet, Revision
from gitsync.plan import Action, Plan, make_plan
from gitsync.prune import PruneResult, prune
from gitsync.render import render
from gitsync.source import GitAuth, SourceSpec, fetch


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
    result: str  # "synced", "unchanged", "failed"
    counts: dict[str, int] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    error: str = ""
    prune_guard: str = ""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What a sync needs besides the app: the cluster, where to cache, where state lives."""

    kube: Kube
    cache_dir: Path
    state_namespace: str
    auth: GitAuth | None = None
    fetch_timeout: float = 120.0
    kustomize: tuple[str, ...] | None = None


def source_spec(app: AppConfig, auth: GitAuth | None) -> SourceSpec:
    return SourceSpec(url=app.repo, ref=app.ref, path=app.path, auth=auth or GitAuth())


def _repo_root(revision: Revision, app_path: str) -> Path:
    root = Path(revision.path)
    for part in Path(app_path).parts:
        if part != ".":
            root = root.parent
    return root


def prepare_render(app: AppConfig, ctx: Context) -> tuple[Revision, ManifestSet]:
    """Fetch and render: reads the repo and discovery only."""
    revision = fetch(source_spec(app, ctx.auth), cache_dir=ctx.cache_dir, timeout=ctx.fetch_timeout)
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


def sync_app(app: AppConfig, ctx: Context, *, progress: Progress | None = None) -> SyncResult:
    """Make the cluster match the app's commit; never raises for a bad commit."""
    started = time.monotonic()
    logger = log.get(app=app.name)
    logger.info("sync.started", repo=app.repo, ref=app.ref, path=app.path)
    try:
        prep = prepare(app, ctx)
    except GitSyncError as e:
        # Fetch, render or a dry-run refused the commit: nothing was written.
        stage = "plan" if isinstance(e, ApplyError) else "prepare"
        logger.error("sync.failed", stage=stage, error=str(e))
        return SyncResult(app=app.name, revision="", result="failed", error=str(e))
    rev = prep.revision
    logger = logger.bind(revision=rev.sha[:12])
    for warning in prep.manifests.warnings:
        logger.warning("render.lint", message=warning)
    counts = prep.plan.counts()
    logger.info("sync.planned", **counts)

    applied = apply_plan(prep.plan, kube=ctx.kube, progress=progress)
    for change in prep.plan.changes:
        if change.action in (Action.CREATE, Action.UPDATE) and change.ref in applied.written:
            logger.info(
                "sync.applied",
                action=change.action.value,
                object=str(change.ref),
                source=change.source,
                fields=len(change.diff),
            )
    if not applied.ok:
        for f in applied.failures:
            logger.error("apply.failed", object=str(f.ref), source=f.source, error=f.message)
        state = _record(prep.state, rev.sha, applied, keep=prep.state.inventory)
        state = state.with_history(rev.sha, "failed", reason=str(applied.failures[0]))
        _store(ctx, state)
        return SyncResult(
            app=app.name,
            revision=rev.sha,
            result="failed",
            counts=counts,
            failures=applied.failures,
            error=str(applied.failures[0]),
            seconds=time.monotonic() - started,
        )

    pruned = _prune(app, ctx, prep, logger)
    kept = {r.identity() for r in pruned.kept}
    state = _record(
        prep.state,
        rev.sha,
        applied,
        keep=tuple(e for e in prep.state.inventory if e.ref.identity() in kept),
    )
    changed = bool(applied.written or pruned.deleted)
    if changed or prep.state.revision != rev.sha:
        state = state.with_history(rev.sha, "synced")
    if state != prep.state:
        _store(ctx, state)
    counts = {k: v for k, v in counts.items() if k != "prune"} | {"pruned": len(pruned.deleted)}
    result = "synced" if changed else "unchanged"
    seconds = time.monotonic() - started
    logger.info(
        "sync.done",
        result=result,
        created=counts["create"],
        updated=counts["update"],
        unchanged=counts["unchanged"],
        pruned=counts["pruned"],
        seconds=round(seconds, 3),
    )
    return SyncResult(
        app=app.name,
        revision=rev.sha,
        result=result,
        counts=counts,
        prune_guard=pruned.guard,
        seconds=seconds,
    )


def _prune(app: AppConfig, ctx: Context, prep: Prepared, logger: Any) -> PruneResult:
    """Delete what left Git; a disabled prune keeps every leftover in the inventory."""
    if not app.prune.enabled:
        return PruneResult(kept=tuple(c.ref for c in prep.plan.by_action(Action.PRUNE)))
    pruned = prune(
        prep.plan.changes,
        kube=ctx.kube,
        app=app.name,
        desired_count=len(prep.manifests),
        inventory_count=len(prep.state.inventory),
        allow_empty=app.prune.allow_empty,
        allow_mass=app.prune.allow_mass_delete,
    )
    if pruned.guard:
        logger.warning("prune.guarded", reason=pruned.guard, kept=len(pruned.kept))
    for ref in pruned.deleted:
        logger.info("prune.deleted", object=str(ref))
    for skip in pruned.skipped:
        logger.info("prune.skipped", object=str(skip.ref), reason=skip.reason)
    return pruned


def _record(
    state: AppState, sha: str, applied: AppliedSet, *, keep: tuple[InventoryEntry, ...]
) -> AppState:
    """New inventory: what was applied, plus what we still own and did not delete."""
    entries: dict[tuple[str, str, str, str], InventoryEntry] = {e.ref.identity(): e for e in keep}
    for e in applied.entries:
        entries[e.ref.identity()] = e
    return replace(
        state, revision=sha, inventory=tuple(sorted(entries.values(), key=lambda e: e.ref))
    )


def _store(ctx: Context, state: AppState) -> AppState:
    if not state.resource_version:
        inventory.ensure_namespace(ctx.kube, ctx.state_namespace)
    return inventory.write_state(ctx.kube, state, namespace=ctx.state_namespace)
