"""A drift watcher's view of the cluster, through the controller's shared informers.

It subscribes to the informer of each kind the app manages (only the app's own changes
arrive: the informer dispatches by the app label) and to the state head Secrets, and
turns what arrives into messages for the watcher's worker thread. It opens no watch of
its own: a hundred apps on one kind share that kind's one watch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeAlias

from gitsync.drift.intents import KindKey
from gitsync.informers.hub import Informers
from gitsync.informers.informer import Informer
from gitsync.informers.store import Change
from gitsync.model import APP_LABEL, Identity, KubeObject


@dataclass(frozen=True, slots=True)
class Listed:
    """The kind's informer holds its first LIST: everything of it can be compared."""

    kind: KindKey


@dataclass(frozen=True, slots=True)
class Changed:
    kind: KindKey
    change: Change = field(repr=False)


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The app's state head Secret changed (a sync wrote it) or was first seen."""

    deleted: bool = False


Event: TypeAlias = Listed | Changed | StateChanged


class Streams:
    """Subscriptions for one app; ``track`` follows the kinds its intents name."""

    def __init__(
        self,
        informers: Informers,
        *,
        states: Informers,
        app: str,
        state_namespace: str,
        post: Callable[[Event], None],
    ) -> None:
        self._informers, self._states, self._app, self._post = informers, states, app, post
        self._state_namespace = state_namespace
        self._kinds: dict[KindKey, tuple[Informer, Callable[[], None]]] = {}
        self._listed: set[KindKey] = set()
        self._state_off: Callable[[], None] | None = None

    def watch_state(self) -> None:
        heads = self._states.state_heads(self._state_namespace)
        self._state_off = heads.subscribe(
            lambda c: self._post(StateChanged(deleted=c.type == "DELETED")), label=self._app
        )
        heads.when_synced(lambda: self._post(StateChanged()))

    def track(self, kinds: Iterable[KindKey]) -> None:
        """Subscribe to new kinds, drop the ones no intent names any more."""
        wanted = set(kinds)
        for kind in [k for k in self._kinds if k not in wanted]:
            _informer, unsubscribe = self._kinds.pop(kind)
            unsubscribe()
            self._listed.discard(kind)
        for kind in wanted - set(self._kinds):
            informer = self._informers.managed(*kind)
            unsubscribe = informer.subscribe(self._poster(kind), label=self._app)
            self._kinds[kind] = (informer, unsubscribe)
            informer.when_synced(partial(self._post, Listed(kind)))

    def _poster(self, kind: KindKey) -> Callable[[Change], None]:
        return lambda change: self._post(Changed(kind, change))

    def mark_listed(self, kind: KindKey) -> bool:
        """Record a ``Listed`` as handled; False if the kind is no longer tracked."""
        if kind not in self._kinds:
            return False
        self._listed.add(kind)
        return True

    def listed(self, kind: KindKey) -> bool:
        return kind in self._listed

    def live(self, ident: Identity) -> KubeObject | None:
        """The object as the informer holds it now, if it carries this app's label."""
        found = self._kinds.get((ident[0], ident[1]))
        if found is None:
            return None
        obj = found[0].store.get(ident)
        if obj is None or owner_app(obj) != self._app:
            return None
        return obj

    def stop(self) -> None:
        for _informer, unsubscribe in self._kinds.values():
            unsubscribe()
        self._kinds.clear()
        if self._state_off is not None:
            self._state_off()
            self._state_off = None


def owner_app(obj: KubeObject) -> str:
    """The app whose label the object carries ("" without one)."""
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(APP_LABEL, ""))
