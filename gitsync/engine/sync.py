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
app's limits (``gitsync.engine.limits``) are checked on the rendered set before the plan makes
any call, and prune and rollback never touch an object outside them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from gitsync.config import AppConfig
from gitsync.engine import inventory, limits
from gitsync.engine.apply import AppliedSet, Progress, apply_plan
from gitsync.engine.inventory import AppState, InventoryEntry
from gitsync.engine.outcome import Context, Record, SyncResult, object_informers
from gitsync.engine.ownership import Owners
from gitsync.engine.plan import Action, Change, Origin, Plan, make_plan
from gitsync.engine.prune import PruneResult, prune
from gitsync.engine.recovery import Recovery
from gitsync.engine.rollback import restore_adopted
from gitsync.errors import GitSyncError
from gitsync.health.gate import ObjectHealth, Verdict, default_timeout, wait_healthy
from gitsync.health.rules import Health, Status
from gitsync.kube import Kube
from gitsync.model import Identity, KubeObject, ManifestSet, ObjectRef, Revision, field_manager
from gitsync.render.manifests import render
from gitsync.source import verify
from gitsync.source.git import GitAuth, SourceSpec, checkout


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """Everything known before the first write."""

    revision: Revision
    manifests: ManifestSet
    state: AppState
    plan: Plan


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


def fetch(app: AppConfig, ctx: Context) -> contextlib.AbstractContextManager[Revision]:
    """The app's commit, verified if the app asks, pinned in a read-only tree while open."""
    spec = source_spec(app, ctx.auth)
    trust = (
        verify.load(app.verify, app=app.name, kube=ctx.kube, namespace=ctx.state_namespace)
        if app.verify
        else None
    )
    return checkout(spec, cache_dir=ctx.cache_dir, timeout=ctx.fetch_timeout, trust=trust)


def render_revision(app: AppConfig, ctx: Context, revision: Revision) -> ManifestSet:
    """Render a fetched (still pinned) commit: reads the tree and discovery only."""
    return render(
        Path(revision.path),
        repo_root=_repo_root(revision, app.path),
        default_namespace=app.namespace,
        app_name=app.name,
        kinds=ctx.kube.discover(refresh=True),
        kustomize=list(ctx.kustomize) if ctx.kustomize else None,
        helm=app.helm_settings,
    )


def prepare_render(app: AppConfig, ctx: Context) -> tuple[Revision, ManifestSet]:
    """Fetch and render: reads the repo and discovery only, from the commit's pinned tree."""
    with fetch(app, ctx) as revision:
        return revision, render_revision(app, ctx, revision)


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
    state = inventory.read_state(
        ctx.kube, app=app.name, namespace=ctx.state_namespace, informers=ctx.informers
    )
    plan = make_plan(
        manifests,
        kube=app_kube(app, ctx, namespaces=app_namespaces(app, manifests, state)),
        app=app.name,
        state=state,
        owners=owners(app, ctx),
        ignore=app.ignore,
        informers=object_informers(app, ctx),
    )
    return Prepared(revision=revision, manifests=manifests, state=state, plan=plan)


def owners(app: AppConfig, ctx: Context) -> Owners:
    return Owners(
        kube=ctx.kube,
        app=app.name,
        state_namespace=ctx.state_namespace,
        adopt_from=app.adopt_from,
        informers=ctx.informers,
    )


def sync_app(
    app: AppConfig, ctx: Context, *, progress: Progress | None = None, force: bool = False
) -> SyncResult:
    """Make the cluster match the app's commit; never raises for a bad commit."""
    return _Run(app, ctx, progress=progress, force=force).run()


class _Run:
    """One sync's steps up to a verdict; what it records goes through ``rec`` (``Record``),
    and a failed gate hands over to ``Recovery``."""

    def __init__(
        self, app: AppConfig, ctx: Context, *, progress: Progress | None, force: bool
    ) -> None:
        self.app, self.ctx = app, ctx
        # The app's identity for everything but state and Events (``ctx.kube``).
        self.kube = app_kube(app, ctx)
        self.limits = app.limits
        self.progress, self.force = progress, force
        self.rec = Record(app=app, ctx=ctx)
        self.owners = owners(app, ctx)

    def recovery(self) -> Recovery:
        """The rollback steps, with this run's client and record."""
        return Recovery(
            app=self.app, ctx=self.ctx, kube=self.kube, owners=self.owners, rec=self.rec
        )

    def run(self) -> SyncResult:
        app = self.app
        self.rec.log.info("sync.started", repo=app.repo, ref=app.ref, path=app.path)
        try:
            with fetch(app, self.ctx) as revision:
                steady = self.steady(revision.sha)
                if steady is not None:
                    return steady
                manifests = render_revision(app, self.ctx, revision)
        except GitSyncError as e:
            return self.rec.refused("prepare", "", e)
        self.rec.log = self.rec.log.bind(revision=revision.sha[:12])
        try:
            self.rec.state = self.rec.stored = inventory.read_state(
                self.ctx.kube,
                app=app.name,
                namespace=self.ctx.state_namespace,
                informers=self.ctx.informers,
            )
        except GitSyncError as e:
            self.rec.log.error("sync.failed", stage="state", error=str(e))
            return self.rec.result(revision.sha, "failed", error=str(e))
        state = self.rec.state
        self.kube = self.kube.scoped(app_namespaces(app, manifests, state))
        if revision.sha in state.quarantined and not self.force:
            if state.degraded:
                return self.recovery().retry(revision.sha)
            self.rec.log.info("sync.skipped", reason="commit is quarantined after a rollback")
            return self.rec.result(revision.sha, "quarantined")
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
                informers=object_informers(app, self.ctx),
            )
            if not plan.in_sync:
                # An app too large to record must fail before it changes anything.
                inventory.check_fits(_projected(state, revision.sha, plan, manifests))
        except GitSyncError as e:
            # A dry-run refused the commit, or its state could not be recorded: no writes.
            return self.rec.refused("plan", revision.sha, e)
        prep = Prepared(revision=revision, manifests=manifests, state=state, plan=plan)
        if self.ctx.cancelled:
            self.rec.log.info(
                "sync.interrupted", stage="plan", reason="shutting down; nothing written"
            )
            return self.rec.result(revision.sha, "interrupted")
        return self.apply(prep)

    def steady(self, sha: str) -> SyncResult | None:
        """``unchanged`` from the watch caches alone, if the app is steady at ``sha``."""
        memo, informers = self.ctx.steady, self.ctx.informers
        if memo is None or informers is None:
            return None
        in_sync = None
        if not self.force and self.app.service_account is None:
            in_sync = memo.check(self.app, sha, informers, state_namespace=self.ctx.state_namespace)
        if in_sync is None:
            memo.forget(self.app.name)  # the full path remembers again if it ends settled
            return None
        out = self.rec.result(sha, "unchanged", counts={"unchanged": in_sync})
        self.rec.log.bind(revision=sha[:12]).info(
            "sync.done",
            result="unchanged",
            created=0,
            updated=0,
            unchanged=in_sync,
            pruned=0,
            seconds=round(out.seconds, 3),
            steady=True,
        )
        return out

    def apply(self, prep: Prepared) -> SyncResult:
        rev = prep.revision
        if prep.state.revision != rev.sha:  # once per commit, not on every poll
            for warning in prep.manifests.warnings:
                self.rec.log.warning("render.lint", message=warning)
        counts = prep.plan.counts()
        self.rec.log.info("sync.planned", **counts)
        for c in prep.plan.changes:
            for conflict in c.conflicts:
                # Git wins, but never silently: name whose change this apply takes back.
                self.rec.log.warning(
                    "sync.conflict", object=str(c.ref), source=c.source, owner=conflict
                )
        self.write_ahead(prep.plan)
        applied = apply_plan(
            prep.plan,
            kube=self.kube,
            progress=self.progress,
            manager=field_manager(self.app.name),
            cancel=self.ctx.cancel,
            informers=object_informers(self.app, self.ctx),
        )
        by_id = {c.ref.identity(): c for c in prep.plan.changes}
        for ref in applied.written:  # in the order they were applied
            change = by_id[ref.identity()]
            self.rec.log.info(
                "sync.applied",
                action=change.action.value,
                object=str(ref),
                source=change.source,
                fields=len(change.diff),
            )
        # What we own now: everything applied, plus everything we owned and did not delete.
        self.rec.state = _record(
            self.rec.state, rev.sha, applied.entries, keep=self.rec.state.inventory
        )
        if not applied.ok:
            return self.apply_failed(prep, applied, counts)
        if applied.written or prep.state.healthy_revision != rev.sha or self.rec.state.pending:
            verdict = self.gate(applied)
            if verdict.interrupted:
                # Applied but not judged: the next sync (maybe another replica's) gates again,
                # because healthy_revision still names the previous commit.
                self.rec.log.warning("sync.interrupted", stage="health", reason="shutting down")
                self.rec.persist(self.rec.state.with_history(rev.sha, "interrupted"))
                return self.rec.result(rev.sha, "interrupted", counts=counts)
            if verdict.timed_out:
                # Still progressing with no failure signal: not known to be bad, so neither
                # rolled back nor quarantined; the next poll gates it again.
                reason = verdict.reason
                self.rec.persist(self.rec.state.with_history(rev.sha, "timed-out", reason=reason))
                return self.rec.result(rev.sha, "timed-out", counts=counts, error=reason)
            if not verdict.healthy:
                return self.recovery().failed_gate(prep.revision.sha, verdict, counts)
        return self.finish(prep, applied, counts)

    def write_ahead(self, plan: Plan) -> None:
        """Record what this sync may create or take over before it writes anything, so a
        crash anywhere after leaves nothing a later sync cannot find."""
        state = self.rec.state
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
            self.rec.persist(
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
            self.rec.log.error("apply.failed", object=str(f.ref), source=f.source, error=f.message)
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
            return self.recovery().failed_gate(
                prep.revision.sha, verdict, counts, event="ApplyFailed"
            )
        if not permanent:
            # The API server or the network failed, not the commit: no rollback, no
            # quarantine; the next sync converges from the write-ahead record.
            self.rec.log.warning("sync.transient", reason=reason)
        self.rec.persist(self.rec.state.with_history(rev.sha, "failed", reason=reason))
        return self.rec.result(
            rev.sha, "failed", counts=counts, failures=applied.failures, error=reason
        )

    def gate(self, applied: AppliedSet) -> Verdict:
        objects = applied.live_objects()
        timeout = self.app.health.timeout or default_timeout(objects)

        def report(current: int, waiting: int, failed: int) -> None:
            self.rec.log.info("health.waiting", current=current, waiting=waiting, failed=failed)

        # Unwritten objects are unchanged by the commit, unless an earlier sync of this same
        # commit wrote them (gated again, forced again): then everything is judged.
        regate = self.rec.stored.revision == self.rec.state.revision
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
            informers=object_informers(self.app, self.ctx),
        )
        for o in verdict.preexisting:
            self.rec.log.warning(
                "health.preexisting",
                object=str(o.ref),
                reason=o.health.reason,
                why="unchanged by this commit and unhealthy before it",
            )
        if verdict.healthy:
            self.rec.log.info(
                "health.passed", objects=len(objects), seconds=round(verdict.seconds, 2)
            )
        elif not verdict.interrupted:
            culprit = verdict.culprit
            self.rec.log.error(
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
        state = self.rec.state
        desired = {m.ref.identity() for m in prep.manifests.manifests}
        released = [
            o
            for o in state.adopted
            if ObjectRef.of(o).identity() not in desired and self.limits.allows(ObjectRef.of(o))
        ]
        restored = restore_adopted(self.kube, released, manager=field_manager(self.app.name))
        for ref in restored:
            self.rec.log.info("sync.released", object=str(ref), why="adopted by an unsettled sync")
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
            self.rec.log.info("commit.released", commit=rev.sha, why="forced sync passed its gate")
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
        if state != self.rec.stored:
            self.rec.persist(state)
        if self.ctx.steady is not None:
            self.ctx.steady.remember(self.app, self.rec.stored, frozenset(desired))
        counts = {k: v for k, v in counts.items() if k != "prune"} | {"pruned": len(pruned.deleted)}
        result = "synced" if changed else "unchanged"
        out = self.rec.result(rev.sha, result, counts=counts, prune_guard=pruned.guard)
        self.rec.log.info(
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
        adopted = {ObjectRef.of(o).identity() for o in self.rec.state.adopted}
        changes = [c for c in prep.plan.changes if c.ref.identity() not in adopted]
        # Never delete outside the limits (they were narrowed since it was applied): kept
        # in the inventory, reported on every sync until the limits or the object change.
        fenced = tuple(
            c.ref for c in changes if c.action is Action.PRUNE and not self.limits.allows(c.ref)
        )
        for ref in fenced:
            self.rec.log.warning(
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
            self.rec.log.warning("prune.guarded", reason=pruned.guard, kept=len(pruned.kept))
        for ref in pruned.deleted:
            self.rec.log.info("prune.deleted", object=str(ref))
        for ref, took in pruned.cascades:
            listed = [str(r) for r in took.refs[:20]]
            self.rec.log.warning(
                "prune.cascade", object=str(ref), count=len(took.refs), took=listed
            )
        for skip in pruned.skipped:
            self.rec.log.info("prune.skipped", object=str(skip.ref), reason=skip.reason)
        return pruned


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


__all__ = [
    "Context",
    "Prepared",
    "SyncResult",
    "app_kube",
    "app_namespaces",
    "owners",
    "prepare",
    "prepare_render",
    "source_spec",
    "sync_app",
]
