"""Self-heal: re-apply an intent after drift, and stop when it is a fight.

Healing reverts exactly what drift reported: fields sync leaves to others (an HPA's
replicas, the app's ignore rules) are left out of the apply, as sync leaves them out.
Healing one object ``heal_limit`` times within ``heal_window`` means someone keeps
changing it back: that is a fight, logged (``drift.fight``) with who fought, and
healing of that object stops until its intent changes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gitsync.config import AppConfig
from gitsync.drift.compare import DriftReport, gitsync_applied_at
from gitsync.drift.intents import Intent
from gitsync.engine import ignores
from gitsync.errors import KubeError
from gitsync.kube import Kube
from gitsync.model import Identity, KubeObject, ObjectRef
from gitsync.runtime import events


@dataclass(frozen=True, slots=True, kw_only=True)
class HealLimits:
    heal_limit: int
    heal_window: float
    emit_events: bool


class Healer:
    """Heal bookkeeping of one app; used by the drift worker thread only."""

    def __init__(
        self,
        *,
        kube: Kube,
        state_kube: Kube,
        app: AppConfig,
        manager: str,
        state_namespace: str,
        limits: HealLimits,
        autoscaled: Callable[[ObjectRef], bool],
        logger: Any,
    ) -> None:
        self._kube, self._state_kube, self.app, self.manager = kube, state_kube, app, manager
        self._state_namespace, self._limits, self._autoscaled = state_namespace, limits, autoscaled
        self.log = logger
        self._heals: dict[Identity, deque[float]] = {}
        self._managers: dict[Identity, set[str]] = {}
        self._fighting: set[Identity] = set()
        self._healed_at: dict[Identity, str] = {}

    def fighting(self, ident: Identity) -> bool:
        return ident in self._fighting

    def healed_at(self, ident: Identity) -> str:
        """Server time of this process's last heal of the object ("" if none)."""
        return self._healed_at.get(ident, "")

    def forget(self, ident: Identity) -> None:
        """A new intent for the object: its fight, if any, is over."""
        self._heals.pop(ident, None)
        self._managers.pop(ident, None)
        self._fighting.discard(ident)

    def heal(
        self,
        intent: Intent,
        live: KubeObject | None,
        reports: tuple[DriftReport, ...],
        *,
        revision: str,
    ) -> bool:
        """Re-apply ``intent``; False if it is a fight now, or the apply failed."""
        ident = intent.ref.identity()
        now = time.monotonic()
        history = self._heals.setdefault(ident, deque())
        while history and history[0] < now - self._limits.heal_window:
            history.popleft()
        managers = self._managers.setdefault(ident, set())
        managers.update(r.manager or "unknown" for r in reports)
        if len(history) >= self._limits.heal_limit:
            self._fight(intent, reports, len(history), managers)
            return False
        body = intent.obj
        if live is not None:
            skipped = ignores.skipped(
                body, live, rules=self.app.ignore, autoscaled=self._autoscaled(intent.ref)
            )
            body = ignores.without(body, skipped) if skipped else body
        try:
            applied = self._kube.apply(body, manager=self.manager)
        except KubeError as e:
            self.log.error("drift.heal_failed", object=str(intent.ref), error=str(e))
            return False
        history.append(now)
        self._healed_at[ident] = gitsync_applied_at(applied, manager=self.manager)
        self.log.info(
            "drift.healed",
            object=str(intent.ref),
            fields=[r.path for r in reports],
            managers=sorted({r.manager or "unknown" for r in reports}),
            revision=revision[:12],
        )
        return True

    def _fight(
        self, intent: Intent, reports: tuple[DriftReport, ...], heals: int, managers: set[str]
    ) -> None:
        self._fighting.add(intent.ref.identity())
        window = self._limits.heal_window
        self.log.error(
            "drift.fight",
            object=str(intent.ref),
            heals=heals,
            window_seconds=window,
            managers=sorted(managers),
            fields=[r.path for r in reports],
        )
        if self._limits.emit_events:
            events.emit(
                self._state_kube,
                involved=intent.ref,
                reason="Drift",
                message=(
                    f"self-heal stopped: healed {heals} times in {window:.0f}s, changed back "
                    f"each time by {', '.join(sorted(managers))}; fix the repository or the "
                    "other writer"
                ),
                warning=True,
                fallback_namespace=self._state_namespace,
            )
