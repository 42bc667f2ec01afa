"""One reconcile of one app: fetch → render → plan → apply → gate → prune | rollback → record.

Each step is its own module; this one only sequences them, logs stable events and
decides what the state records. Nothing is written before the whole set has rendered and
every object has passed a server-side dry-run, except objects that cannot be dry-run yet
(custom resources of a CRD and objects in a Namespace the same commit creates), which the
API validates when their stage is applied. Before the first write, the state records what
the sync may create or take over (write-ahead), so a crash at any point leaves nothing
that the next sync cannot find. Nothing is pruned before the new revision is healthy; a
revision that fails its gate is rolled back and quarantined, and every outcome, a
rollback that fails or raises included, is recorded.

Identity: every request an app makes (plan, dry-run, apply, prune, gate, rollback) goes
through ``app_kube``, which impersonates the app's ServiceAccount when it has one; the
state (read, written, other apps' claims) and Events stay on gitsync's own client. The
app's limits (``gitsync.limits``) are checked on the rendered set before the plan makes
any call, and prune and rollback never touch an object outside them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gitsync import events, inventory, limits, log, verify
from gitsync.apply import AppliedSet, Failure, Progress, apply_plan
from gitsync.config import AppConfig
from gitsync.errors import GitSyncError, KubeError
from gitsync.gate import ObjectHealth, Verdict, default_timeout, wait_healthy
from gitsync.health import Health, Status
from gitsync.inventory import AppState, InventoryEntry
from gitsync.kube import Kube
from gitsync.model import Identity, KubeObject, ManifestSet, ObjectRef, Revision, field_manager
from gitsync.ownership import Owners
from gitsync.plan import Action, Change, Origin, Plan, make_plan
from gitsync.prune import PruneResult, prune
from gitsync.render import render
from gitsync.rollback import quarantine as quarantine_commit
from gitsync.rollback import restore_adopted, roll_back
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
    return SourceSpec(
        url=app.repo,
        ref=app.ref,
        path=app.path,
        auth=auth or GitAuth(),
        allow_insecure=app.allow_insecure,
    )


def _repo_root(revision: Revision, app_path: str) -> Path:
    root = Path(revision.path)
    for part in Path(app_path).parts:
        if part != ".":
            root = root.parent
    return root


def prepare_render(app: AppConfig, ctx: Context) -> tuple[Revision, ManifestSet]:
    """Fetch and render: reads the repo and discovery only, from the commit's pinned tree."""
    spec = source_spec(app, ctx.auth)
    trust = (
        verify.load(app.verify, app=app.name, kube=ctx.kube, namespace=ctx.state_namespace)
        if app.verify
        else None
    )
    with checkout(
        spec, cache_dir=ctx.cache_dir, timeout=ctx.fetch_timeout, trust=trust
    ) as revision:
        manifests = render(
            Path(revision.path),
            repo_root=_repo_root(revision, app.path),
            default_namespace=app.namespace,
            app_name=app.name,
            kinds=ctx.kube.discover(refresh=True),
            kustomize=list(ctx.kustomize) if ctx.kustomize else None,
            helm=app.helm_settings,
        )
    return revision, manifests


def app_kube(app: AppConfig, ctx: Context, *, namespaces: Collection[str] = ()) -> Kube:
    """The client the app's own requests go through: as its ServiceAccount if it names
    one (errors then say "as ServiceAccount <ns>/<name>"), else gitsync's own."""
    sa = app.service_account
    if sa is None:
        return ctx.kube
    return ctx.kube.impersonate(sa.username, label=f"ServiceAccount {sa}", namespaces=namespaces)


def app_namespaces(app: AppConfig, manifests: ManifestSet, state: AppState) -> frozenset[str]:
    """Where the app's objects are or were: the namespaces an identity with only Roles
    there is listed in (see ``Kube.scoped``)."""
    refs = [m.ref for m in manifests.manifests]
    refs += [e.ref for e in (*state.inventory, *state.pending)]
    refs += [ObjectRef.of(o) for o in (*state.healthy_manifests, *state.adopted)]
    named = [n for n in app.allowed_namespaces or () if not any(c in n for c in "*?[")]
    return frozenset({r.namespace for r in refs if r.namespace} | {*named, app.namespace})


def prepare(app: AppConfig, ctx: Context) -> Prepared:
    """Fetch, render, check the limits and plan: reads only."""
    revision, manifests = prepare_render(app, ctx)
    limits.enforce(manifests, app.limits, app=app.name)
    state = inventory.read_state(ctx.kube, app=app.name, namespace=ctx.state_namespace)
    plan = make_plan(
        manifests,
        kube=app_kube(app, ctx, namespaces=app_namespaces(app, manifests, state)),
        app=app.name,
        state=state,
        owners=owners(app, ctx),
        ignore=app.ignore,
    )
    return Prepared(revision=revision, manifests=manifests, state=state, plan=plan)


def owners(app: AppConfig, ctx: Context) -> Owners:
    return Owners(
        kube=ctx.kube, app=app.name, state_namespace=ctx.state_namespace, adopt_from=app.adopt_from
    )


def sync_app(
    app: AppConfig, ctx: Context, *, progress: Progress | None = None, force: bool = False
) -> SyncResult:
    """Make the cluster match the app's commit; never raises for a bad commit."""
    return _Run(app, ctx, progress=progress, force=force).run()


class _Run:
    """One sync's shared context; ``state`` is what the cluster holds, kept current by
    ``persist``, the one path by which every outcome is recorded."""

    def __init__(
        self, app: AppConfig, ctx: Context, *, progress: Progress | None, force: bool
    ) -> None:
        self.app, self.ctx = app, ctx
        # The app's identity for everything but state and Events (``ctx.kube``).
        self.kube = app_kube(app, ctx)
        self.limits = app.limits
        self.progress, self.force = progress, force
        self.started = time.monotonic()
        self.log = log.get(app=app.name)
        self.state = AppState(app=app.name)
        self.stored = self.state  # what the cluster holds, as last read or written
        self.owners = owners(app, ctx)

    def result(self, sha: str, result: str, **kw: Any) -> SyncResult:
        return SyncResult(
            app=self.app.name,
            revision=sha,
            result=result,
            seconds=time.monotonic() - self.started,
            **kw,
        )

    def persist(self, state: AppState) -> AppState:
        self.state = self.stored = _store(self.ctx, state)
        return self.state

    def run(self) -> SyncResult:
        app = self.app
        self.log.info("sync.started", repo=app.repo, ref=app.ref, path=app.path)
        try:
            revision, manifests = prepare_render(app, self.ctx)
        except GitSyncError as e:
            return self.refused("prepare", "", e)
        self.log = self.log.bind(revision=revision.sha[:12])
        try:
            self.state = self.stored = inventory.read_state(
                self.ctx.kube, app=app.name, namespace=self.ctx.state_namespace
            )
        except GitSyncError as e:
            self.log.error("sync.failed", stage="state", error=str(e))
            return self.result(revision.sha, "failed", error=str(e))
        state = self.state
        self.kube = self.kube.scoped(app_namespaces(app, manifests, state))
        if revision.sha in state.quarantined and not self.force:
            if state.degraded:
                return self.retry_rollback(revision.sha)
            self.log.info("sync.skipped", reason="commit is quarantined after a rollback")
            return self.result(revision.sha, "quarantined")
        try:
            # Outside the app's namespaces or kinds: refused whole, before any call.
            limits.enforce(manifests, self.limits, app=app.name)
            plan = make_plan(
                manifests,
                kube=self.kube,
                app=app.name,
                state=state,
                owners=self.owners,
                ignore=app.ignore,
            )
            if not plan.in_sync:
                # An app too large to record must fail before it changes anything.
                inventory.check_fits(_projected(state, revision.sha, plan, manifests))
        except GitSyncError as e:
            # A dry-run refused the commit, or its state could not be recorded: no writes.
            return self.refused("plan", revision.sha, e)
        prep = Prepared(revision=revision, manifests=manifests, state=state, plan=plan)
        if self.ctx.cancelled:
            self.log.info("sync.interrupted", stage="plan", reason="shutting down; nothing written")
            return self.result(revision.sha, "interrupted")
        return self.apply(prep)

    def refused(self, stage: str, sha: str, error: GitSyncError) -> SyncResult:
        """Nothing was written: log it and, when the state is readable, record it once."""
        self.log.error("sync.failed", stage=stage, error=str(error))
        with contextlib.suppress(GitSyncError):
            if not sha:
                self.state = self.stored = inventory.read_state(
                    self.ctx.kube, app=self.app.name, namespace=self.ctx.state_namespace
                )
            last = self.state.history[-1] if self.state.history else None
            if last is None or (last.sha, last.result, last.reason) != (sha, "failed", str(error)):
                self.persist(self.state.with_history(sha, "failed", reason=str(error)))
        return self.result(sha, "failed", error=str(error), refused=True)

    def apply(self, prep: Prepared) -> SyncResult:
        rev = prep.revision
        for warning in prep.manifests.warnings:
            self.log.warning("render.lint", message=warning)
        counts = prep.plan.counts()
        self.log.info("sync.planned", **counts)
        for c in prep.plan.changes:
            for conflict in c.conflicts:
                # Git wins, but never silently: name whose change this apply takes back.
                self.log.warning(
                    "sync.conflict", object=str(c.ref), source=c.source, owner=conflict
                )
        self.write_ahead(prep.plan)
        applied = apply_plan(
            prep.plan, kube=self.kube, progress=self.progress, manager=field_manager(self.app.name)
        )
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
        self.state = _record(self.state, rev.sha, applied.entries, keep=self.state.inventory)
        if not applied.ok:
            return self.apply_failed(prep, applied, counts)
        if applied.written or prep.state.healthy_revision != rev.sha or self.state.pending:
            verdict = self.gate(applied)
            if verdict.interrupted:
                # Applied but not judged: the next sync (maybe another replica's) gates again,
                # because healthy_revision still names the previous commit.
                self.log.warning("sync.interrupted", stage="health", reason="shutting down")
                self.persist(self.state.with_history(rev.sha, "interrupted"))
                return self.result(rev.sha, "interrupted", counts=counts)
            if verdict.timed_out:
                # Still progressing with no failure signal: not known to be bad, so neither
                # rolled back nor quarantined; the next poll gates it again.
                reason = verdict.reason
                self.persist(self.state.with_history(rev.sha, "timed-out", reason=reason))
                return self.result(rev.sha, "timed-out", counts=counts, error=reason)
            if not verdict.healthy:
                return self.failed_gate(prep, verdict, counts)
        return self.finish(prep, applied, counts)

    def write_ahead(self, plan: Plan) -> None:
        """Record what this sync may create or take over before it writes anything, so a
        crash anywhere after leaves nothing a later sync cannot find."""
        state = self.state
        known = {e.ref.identity() for e in (*state.inventory, *state.pending)}
        adopted_known = {ObjectRef.of(o).identity() for o in state.adopted}
        creates = [
            InventoryEntry(ref=c.ref)
            for c in plan.changes
            if c.action is Action.CREATE and c.ref.identity() not in known
        ]
        adopts = [
            _prior(c.live)
            for c in plan.changes
            if c.action in (Action.UPDATE, Action.UNCHANGED)
            and c.live is not None
            and c.ref.identity() not in known
            and c.ref.identity() not in adopted_known
        ]
        if creates or adopts:
            self.persist(
                replace(
                    state,
                    pending=(*state.pending, *creates),
                    adopted=(*state.adopted, *adopts),
                )
            )

    def apply_failed(
        self, prep: Prepared, applied: AppliedSet, counts: dict[str, int]
    ) -> SyncResult:
        rev = prep.revision
        for f in applied.failures:
            self.log.error("apply.failed", object=str(f.ref), source=f.source, error=f.message)
        reason = str(applied.failures[0])
        permanent = all(f.permanent for f in applied.failures)
        if permanent and applied.written and self.app.rollback.enabled:
            # The API refused part of the commit after the rest landed: put the healthy
            # revision back rather than leave the app half-applied, and quarantine it.
            verdict = Verdict(
                healthy=False,
                failed=tuple(
                    ObjectHealth(ref=f.ref, health=Health(Status.FAILED, f.message))
                    for f in applied.failures
                ),
            )
            return self.failed_gate(prep, verdict, counts, event="ApplyFailed")
        if not permanent:
            # The API server or the network failed, not the commit: no rollback, no
            # quarantine; the next sync converges from the write-ahead record.
            self.log.warning("sync.transient", reason=reason)
        self.persist(self.state.with_history(rev.sha, "failed", reason=reason))
        return self.result(
            rev.sha, "failed", counts=counts, failures=applied.failures, error=reason
        )

    def gate(self, applied: AppliedSet) -> Verdict:
        objects = list(applied.objects)
        timeout = self.app.health.timeout or default_timeout(objects)

        def report(current: int, waiting: int, failed: int) -> None:
            self.log.info("health.waiting", current=current, waiting=waiting, failed=failed)

        # Unwritten objects are unchanged by the commit, unless an earlier sync of this same
        # commit wrote them (gated again, forced again): then everything is judged.
        regate = self.stored.revision == self.state.revision
        written = {r.identity() for r in applied.written}
        unchanged = (
            frozenset(() if regate else (ObjectRef.of(o).identity() for o in objects)) - written
        )
        verdict = wait_healthy(
            self.kube,
            objects,
            timeout=timeout,
            on_progress=report,
            cancel=self.ctx.cancel,
            unchanged=unchanged,
        )
        for o in verdict.preexisting:
            self.log.warning(
                "health.preexisting",
                object=str(o.ref),
                reason=o.health.reason,
                why="unchanged by this commit and unhealthy before it",
            )
        if verdict.healthy:
            self.log.info("health.passed", objects=len(objects), seconds=round(verdict.seconds, 2))
        elif not verdict.interrupted:
            culprit = verdict.culprit
            self.log.error(
                "health.timeout" if verdict.timed_out else "health.failed",
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
        state = self.state
        desired = {m.ref.identity() for m in prep.manifests.manifests}
        released = [
            o
            for o in state.adopted
            if ObjectRef.of(o).identity() not in desired and self.limits.allows(ObjectRef.of(o))
        ]
        restored = restore_adopted(self.kube, released, manager=field_manager(self.app.name))
        for ref in restored:
            self.log.info("sync.released", object=str(ref), why="adopted by an unsettled sync")
        pruned = self.prune(prep)
        kept = {r.identity() for r in pruned.kept}
        state = _record(
            state,
            rev.sha,
            applied.entries,
            keep=tuple(e for e in prep.state.inventory if e.ref.identity() in kept),
        )
        quarantined = tuple(q for q in state.quarantined if q != rev.sha or not self.force)
        if quarantined != state.quarantined:
            self.log.info("commit.released", commit=rev.sha, why="forced sync passed its gate")
        state = replace(
            state,
            healthy_revision=rev.sha,
            healthy_manifests=tuple(m.obj for m in prep.manifests.manifests),
            quarantined=quarantined,
            pending=(),
            adopted=(),
            degraded="",
        )
        changed = bool(applied.written or pruned.deleted or restored)
        if changed or prep.state.revision != rev.sha:
            state = state.with_history(rev.sha, "synced")
        if state != self.stored:
            self.persist(state)
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
        """Delete what left Git; a disabled prune keeps every leftover in the inventory.

        Adopted objects released above are not candidates: they were never ours to delete.
        """
        adopted = {ObjectRef.of(o).identity() for o in self.state.adopted}
        changes = [c for c in prep.plan.changes if c.ref.identity() not in adopted]
        # Never delete outside the limits (they were narrowed since it was applied): kept
        # in the inventory, reported on every sync until the limits or the object change.
        fenced = tuple(
            c.ref for c in changes if c.action is Action.PRUNE and not self.limits.allows(c.ref)
        )
        for ref in fenced:
            self.log.warning(
                "prune.outside_limits", object=str(ref), reason=self.limits.why_not(ref)
            )
        if fenced:
            changes = [c for c in changes if c.action is not Action.PRUNE or c.ref not in fenced]
            pruned = self._prune(prep, changes)
            return replace(pruned, kept=(*pruned.kept, *fenced))
        return self._prune(prep, changes)

    def _prune(self, prep: Prepared, changes: list[Change]) -> PruneResult:
        app = self.app
        if not app.prune.enabled:
            return PruneResult(
                kept=tuple(
                    c.ref
                    for c in changes
                    if c.action is Action.PRUNE and c.origin is Origin.INVENTORY
                )
            )
        pruned = prune(
            changes,
            kube=self.kube,
            app=app.name,
            desired_count=len(prep.manifests),
            inventory_count=len(prep.state.inventory),
            allow_empty=app.prune.allow_empty,
            allow_mass=app.prune.allow_mass_delete,
            owners=self.owners,
        )
        if pruned.guard:
            self.log.warning("prune.guarded", reason=pruned.guard, kept=len(pruned.kept))
        for ref in pruned.deleted:
            self.log.info("prune.deleted", object=str(ref))
        for ref, took in pruned.cascades:
            listed = [str(r) for r in took.refs[:20]]
            self.log.warning("prune.cascade", object=str(ref), count=len(took.refs), took=listed)
        for skip in pruned.skipped:
            self.log.info("prune.skipped", object=str(skip.ref), reason=skip.reason)
        return pruned

    def failed_gate(
        self,
        prep: Prepared,
        verdict: Verdict,
        counts: dict[str, int],
        *,
        event: str = "HealthFailed",
    ) -> SyncResult:
        """Unhealthy (or refused half-way): roll back to the last healthy revision."""
        label = "health gate" if event == "HealthFailed" else "apply failed"
        bad = prep.revision.sha
        state = self.state
        culprit = verdict.culprit
        reason = verdict.reason
        if culprit is not None:
            events.emit(
                self.ctx.kube, involved=culprit.ref, reason=event, message=reason, warning=True
            )
        if not self.app.rollback.enabled:
            self.persist(state.with_history(bad, "unhealthy", reason=reason))
            return self.result(bad, "failed", counts=counts, error=f"{label}: {reason}")
        state = quarantine_commit(state, bad)
        self.log.warning("commit.quarantined", commit=bad, reason=reason)
        if not state.healthy_revision or not state.healthy_manifests:
            self.log.error("rollback.skipped", reason="no healthy revision to roll back to")
            self.persist(state.with_history(bad, "failed", reason=reason))
            return self.result(bad, "failed", counts=counts, error=f"{label}: {reason}")
        self.log.warning(
            "rollback.started",
            from_revision=bad,
            to_revision=state.healthy_revision,
            object=str(culprit.ref) if culprit else "",
            reason=reason,
        )
        # Recorded before the first rollback write: a crash from here on resumes the
        # rollback on the next poll instead of re-applying the quarantined commit.
        self.persist(replace(state, degraded=f"rolling back from {bad[:12]}: {reason}"))
        out = self.roll_back(bad, reason, culprit.ref if culprit else None)
        error = f"{label}: {reason}" + (f"; then {out.error}" if out.error else "")
        return replace(out, counts=counts, error=error)

    def retry_rollback(self, bad: str) -> SyncResult:
        """The last rollback did not finish: try it again, never the quarantined commit."""
        reason = self.state.degraded
        good = self.state.healthy_revision
        self.log.warning("rollback.retry", from_revision=bad, to_revision=good, reason=reason)
        return self.roll_back(bad, reason, None)

    def roll_back(self, bad: str, reason: str, culprit: ObjectRef | None) -> SyncResult:
        state = self.state
        good = state.healthy_revision
        timeout = self.app.health.timeout or default_timeout(state.healthy_manifests)
        within, fenced = _within_limits(state, self.limits)
        for ref in fenced:
            self.log.warning(
                "rollback.outside_limits", object=str(ref), reason=self.limits.why_not(ref)
            )
        try:
            result = roll_back(
                kube=self.kube,
                app=self.app.name,
                state=within,
                timeout=timeout,
                cancel=self.ctx.cancel,
                owners=self.owners,
                ignore=self.app.ignore,
            )
        except GitSyncError as e:
            return self.rollback_failed(bad, f"rollback raised: {e}")
        for ref in result.deleted:
            self.log.info("prune.deleted", object=str(ref), during="rollback")
        for ref in result.restored:
            self.log.info("sync.released", object=str(ref), during="rollback")
        for ref in result.restarted_pods:
            self.log.info("rollback.pod_replaced", object=str(ref), why="stuck on bad revision")
        # What rollback may not touch stays recorded as it was, never deleted.
        kept = [e for e in state.inventory if e.ref in fenced]
        state = replace(
            state, inventory=tuple(sorted((*result.inventory, *kept), key=lambda e: e.ref))
        )
        if not result.ok:
            self.state = state
            return self.rollback_failed(bad, result.reason)
        self.log.warning(
            "rollback.done",
            from_revision=bad,
            to_revision=good,
            object=str(culprit) if culprit else "",
            reason=reason,
            deleted=len(result.deleted),
        )
        if culprit is not None:
            message = f"rolled back from {bad[:12]} to {good[:12]}: {reason}"
            events.emit(
                self.ctx.kube, involved=culprit, reason="RolledBack", message=message, warning=True
            )
        self.persist(
            replace(state, revision=good, pending=(), adopted=(), degraded="").with_history(
                bad, "rolled-back", reason=reason
            )
        )
        return self.result(bad, "rolled-back", rolled_back_to=good)

    def rollback_failed(self, bad: str, why: str) -> SyncResult:
        """Degraded: the quarantine and the write-ahead record stay, the next poll retries."""
        good = self.state.healthy_revision
        self.log.error("rollback.failed", from_revision=bad, to_revision=good, reason=why)
        state = replace(self.state, degraded=f"rollback from {bad[:12]} failed: {why}")
        with contextlib.suppress(GitSyncError):
            self.persist(state.with_history(bad, "rollback-failed", reason=why))
        return self.result(bad, "degraded", error=f"rollback failed: {why}")


def _within_limits(state: AppState, lim: limits.Limits) -> tuple[AppState, frozenset[ObjectRef]]:
    """The state a rollback may act on (re-apply, delete, restore), and what it may not."""
    if lim.unlimited:
        return state, frozenset()
    refs = [e.ref for e in (*state.inventory, *state.pending)]
    refs += [ObjectRef.of(o) for o in (*state.healthy_manifests, *state.adopted)]
    fenced = frozenset(limits.outside(refs, lim))
    if not fenced:
        return state, fenced
    ok = lim.allows
    within = replace(
        state,
        inventory=tuple(e for e in state.inventory if ok(e.ref)),
        pending=tuple(e for e in state.pending if ok(e.ref)),
        healthy_manifests=tuple(o for o in state.healthy_manifests if ok(ObjectRef.of(o))),
        adopted=tuple(o for o in state.adopted if ok(ObjectRef.of(o))),
    )
    return within, fenced


def _prior(live: KubeObject) -> KubeObject:
    """What an adopted object looked like before gitsync, without volatile status."""
    return {k: v for k, v in live.items() if k != "status"}


def _projected(state: AppState, sha: str, plan: Plan, manifests: ManifestSet) -> AppState:
    """About the largest state this sync may record (its write-ahead record included), so
    an app that cannot be recorded is refused before anything is written."""
    known = {e.ref.identity() for e in state.inventory}
    entries = [
        InventoryEntry(ref=c.ref, manifest_hash="0" * 64, fingerprint="0" * 64)
        for c in plan.changes
    ]
    priors = [c.live for c in plan.changes if c.live is not None and c.ref.identity() not in known]
    return replace(
        state,
        revision=sha,
        inventory=(*state.inventory, *entries),
        pending=(*state.pending, *entries),
        adopted=(*state.adopted, *priors),
        healthy_manifests=tuple(m.obj for m in manifests.manifests),
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
        try:
            inventory.ensure_namespace(ctx.kube, ctx.state_namespace)
        except KubeError as e:
            # The restricted role may not read Namespaces; its own was deployed with it
            # (if not, the write below says so).
            if e.status != 403:
                raise
    return inventory.write_state(ctx.kube, state, namespace=ctx.state_namespace)
