"""Which gitsync app owns an object, so one app never takes or deletes another's.

An object belongs to an app when its ``gitsync.io/app`` label names it, or when that
app's inventory (or write-ahead record) lists it. Labels are on the object already read;
inventories are read from the other apps' state, lazily and once per sync, only when an
object is about to be taken over or deleted. Which apps have a state is read from the
controller's informer of state heads when there is one (a LIST otherwise); their states
themselves always from the API: a claim must never be missed for a cache's lag.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from gitsync.engine import inventory
from gitsync.engine.statestore import STATE_LABEL
from gitsync.errors import GitSyncError
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from gitsync.model import APP_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Identity, KubeObject


def label_owner(obj: KubeObject | None) -> str:
    """The gitsync app named by the object's labels, or ""."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
        return ""
    return str(labels.get(APP_LABEL) or "")


@dataclass(slots=True)
class Owners:
    """The other apps' claims, read at most once per sync (thread-safe)."""

    kube: Kube
    app: str
    state_namespace: str
    # Apps this app may take objects from (``apps[].adoptFrom``).
    adopt_from: Collection[str] = ()
    # The controller's informers: the other apps' heads are found there, not LISTed.
    informers: Informers | None = None
    _claims: Mapping[Identity, str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def listed_by(self, ident: Identity) -> str:
        """Another app whose state lists ``ident``, or ""."""
        with self._lock:
            if self._claims is None:
                self._claims = self._read()
            return self._claims.get(ident, "")

    def conflict(self, ident: Identity, live: KubeObject | None) -> str:
        """The other app that owns ``ident`` and may not be taken from, or ""."""
        other = label_owner(live)
        if not other or other == self.app:
            other = self.listed_by(ident)
        if not other or other == self.app or other in self.adopt_from:
            return ""
        return other

    def _apps(self) -> set[str]:
        """Every app with a state in the state namespace."""
        if self.informers is not None:
            heads = self.informers.state_heads(self.state_namespace)
            if heads.synced and not heads.forbidden:  # forbidden: synced, but empty
                return {
                    str(heads.store.memo(ident, "state-of", _state_of) or "")
                    for ident in heads.store.idents()
                }
        res = self.kube.discover().resource("", "v1", "Secret")
        if res is None:
            return set()
        listed, _ = self.kube.list_objects(
            res, namespace=self.state_namespace, label_selector=STATE_LABEL
        )
        return {_state_of(h) for h in listed}

    def _read(self) -> dict[Identity, str]:
        claims: dict[Identity, str] = {}
        apps = self._apps()
        for other in sorted(apps - {"", self.app}):
            try:
                state = inventory.read_state(self.kube, app=other, namespace=self.state_namespace)
            except GitSyncError:
                continue  # unreadable state: its labels still protect its objects
            for entry in (*state.inventory, *state.pending):
                claims.setdefault(entry.ref.identity(), other)
        return claims


def _state_of(head: KubeObject) -> str:
    return str(((head.get("metadata") or {}).get("labels") or {}).get(STATE_LABEL) or "")
