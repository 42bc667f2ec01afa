"""After a failed gate: roll back to the last healthy revision, or leave the app Degraded.

The quarantine and a ``degraded`` reason are recorded before the first rollback write, so
a crash mid-rollback resumes the rollback on the next poll instead of re-applying the bad
commit; a rollback that fails or raises is recorded too, and retried with backoff.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

from gitsync.config import AppConfig
from gitsync.engine import limits
from gitsync.engine.inventory import AppState
from gitsync.engine.outcome import Context, Record, SyncResult, object_informers
from gitsync.engine.ownership import Owners
from gitsync.engine.rollback import quarantine as quarantine_commit
from gitsync.engine.rollback import roll_back
from gitsync.errors import GitSyncError
from gitsync.health.gate import Verdict, default_timeout
from gitsync.kube import Kube
from gitsync.model import ObjectRef
from gitsync.runtime import events


@dataclass(slots=True, kw_only=True)
class Recovery:
    """The rollback steps of one sync, sharing its client, claims and record."""

    app: AppConfig
    ctx: Context
    kube: Kube
    owners: Owners
    rec: Record

    def failed_gate(
        self,
        bad: str,
        verdict: Verdict,
        counts: dict[str, int],
        *,
        event: str = "HealthFailed",
    ) -> SyncResult:
        """Unhealthy (or refused half-way): roll back to the last healthy revision."""
        label = "health gate" if event == "HealthFailed" else "apply failed"
        state = self.rec.state
        culprit = verdict.culprit
        reason = verdict.reason
        if culprit is not None:
            events.emit(
                self.ctx.kube, involved=culprit.ref, reason=event, message=reason, warning=True
            )
        if not self.app.rollback.enabled:
            self.rec.persist(state.with_history(bad, "unhealthy", reason=reason))
            return self.rec.result(bad, "failed", counts=counts, error=f"{label}: {reason}")
        state = quarantine_commit(state, bad)
        self.rec.log.warning("commit.quarantined", commit=bad, reason=reason)
        if not state.healthy_revision or not state.healthy_manifests:
            self.rec.log.error("rollback.skipped", reason="no healthy revision to roll back to")
            self.rec.persist(state.with_history(bad, "failed", reason=reason))
            return self.rec.result(bad, "failed", counts=counts, error=f"{label}: {reason}")
        self.rec.log.warning(
            "rollback.started",
            from_revision=bad,
            to_revision=state.healthy_revision,
            object=str(culprit.ref) if culprit else "",
            reason=reason,
        )
        # Recorded before the first rollback write: a crash from here on resumes the
        # rollback on the next poll instead of re-applying the quarantined commit.
        self.rec.persist(replace(state, degraded=f"rolling back from {bad[:12]}: {reason}"))
        out = self.roll_back(bad, reason, culprit.ref if culprit else None)
        error = f"{label}: {reason}" + (f"; then {out.error}" if out.error else "")
        return replace(out, counts=counts, error=error)

    def retry(self, bad: str) -> SyncResult:
        """The last rollback did not finish: try it again, never the quarantined commit."""
        reason = self.rec.state.degraded
        good = self.rec.state.healthy_revision
        self.rec.log.warning("rollback.retry", from_revision=bad, to_revision=good, reason=reason)
        return self.roll_back(bad, reason, None)

    def roll_back(self, bad: str, reason: str, culprit: ObjectRef | None) -> SyncResult:
        state = self.rec.state
        good = state.healthy_revision
        timeout = self.app.health.timeout or default_timeout(state.healthy_manifests)
        within, fenced = _within_limits(state, self.app.limits)
        for ref in fenced:
            self.rec.log.warning(
                "rollback.outside_limits", object=str(ref), reason=self.app.limits.why_not(ref)
            )
        try:
            result = roll_back(
                kube=self.kube,
                app=self.app.name,
                state=within,
                timeout=timeout,
                cancel=self.ctx.cancel,
                informers=object_informers(self.app, self.ctx),
                owners=self.owners,
                ignore=self.app.ignore,
            )
        except GitSyncError as e:
            return self.failed(bad, f"rollback raised: {e}")
        for ref in result.deleted:
            self.rec.log.info("prune.deleted", object=str(ref), during="rollback")
        for ref in result.restored:
            self.rec.log.info("sync.released", object=str(ref), during="rollback")
        for ref in result.restarted_pods:
            self.rec.log.info("rollback.pod_replaced", object=str(ref), why="stuck on bad revision")
        # What rollback may not touch stays recorded as it was, never deleted.
        kept = [e for e in state.inventory if e.ref in fenced]
        state = replace(
            state, inventory=tuple(sorted((*result.inventory, *kept), key=lambda e: e.ref))
        )
        if not result.ok:
            self.rec.state = state
            return self.failed(bad, result.reason)
        self.rec.log.warning(
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
        self.rec.persist(
            replace(state, revision=good, pending=(), adopted=(), degraded="").with_history(
                bad, "rolled-back", reason=reason
            )
        )
        return self.rec.result(bad, "rolled-back", rolled_back_to=good)

    def failed(self, bad: str, why: str) -> SyncResult:
        """Degraded: the quarantine and the write-ahead record stay, the next poll retries."""
        good = self.rec.state.healthy_revision
        self.rec.log.error("rollback.failed", from_revision=bad, to_revision=good, reason=why)
        state = replace(self.rec.state, degraded=f"rollback from {bad[:12]} failed: {why}")
        with contextlib.suppress(GitSyncError):
            self.rec.persist(state.with_history(bad, "rollback-failed", reason=why))
        return self.rec.result(bad, "degraded", error=f"rollback failed: {why}")


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
