"""What an app wants: its last healthy manifests, from its state, by identity.

The intent is the state's ``healthy_manifests``, not Git's newest commit: a commit that
has not passed its gate is not yet what the cluster should look like. Each intent's
server-side form (a dry-run apply, defaulted by the API server) is fetched once per
version of the intent and only when a comparison needs it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from gitsync.drift.compare import written_at
from gitsync.engine import inventory, statestore
from gitsync.engine.inventory import AppState
from gitsync.errors import KubeError, StateError
from gitsync.fields import content_hash
from gitsync.kube import Kube
from gitsync.model import Identity, KubeObject, ObjectRef

KindKey: TypeAlias = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Intent:
    """One desired object, kept as JSON: 10,000 intents as dicts would be ~170 MiB."""

    raw: bytes = field(repr=False)  # may be a Secret
    digest: str
    ref: ObjectRef

    @property
    def obj(self) -> KubeObject:
        obj: KubeObject = json.loads(self.raw)
        return obj

    @property
    def kind(self) -> KindKey:
        return (self.ref.group, self.ref.kind)


def read_intent(kube: Kube, app: str, state_namespace: str) -> tuple[AppState, str] | None:
    """The app's stored state and when it was written; None if none is stored.

    Read whole through the state store, never decoded from a watched head Secret: a
    large state's head only points at chunk Secrets. Raises StateError if unreadable.
    """
    stored = statestore.load(kube, app=app, namespace=state_namespace)
    if stored.head is None or stored.blob is None:
        return None
    try:
        state = inventory.decode(stored.blob, resource_version=stored.resource_version)
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        msg = f"the state of app {app!r} in {state_namespace} is unreadable: {e}"
        raise StateError(msg) from e
    return state, written_at(stored.head)


class Intents:
    """The intent index; used by the drift worker thread only."""

    def __init__(self, kube: Kube, *, manager: str, logger: Any) -> None:
        self._kube, self._manager, self._log = kube, manager, logger
        self._by_ident: dict[Identity, Intent] = {}
        self._dry: dict[Identity, tuple[str, KubeObject | None]] = {}
        self.revision = ""
        self.synced_at = ""
        self.known = False  # a state was read (or there is none): intents are real

    def __contains__(self, ident: Identity) -> bool:
        return ident in self._by_ident

    def __len__(self) -> int:
        return len(self._by_ident)

    def get(self, ident: Identity) -> Intent | None:
        return self._by_ident.get(ident)

    def items(self) -> Iterator[tuple[Identity, Intent]]:
        return iter(list(self._by_ident.items()))

    def kinds(self) -> set[KindKey]:
        return {i.kind for i in self._by_ident.values()}

    def of_kind(self, kind: KindKey) -> list[Identity]:
        return [ident for ident, i in self._by_ident.items() if i.kind == kind]

    def install(
        self, objects: Iterable[KubeObject], revision: str, synced_at: str
    ) -> tuple[set[Identity], set[Identity]]:
        """Take new intents; returns (changed, removed): identities whose intent is new
        or different, and those no longer desired."""
        fresh: dict[Identity, Intent] = {}
        for obj in objects:
            ref = ObjectRef.of(obj)
            raw = json.dumps(obj, separators=(",", ":")).encode()
            fresh[ref.identity()] = Intent(raw=raw, digest=content_hash(obj), ref=ref)
        changed = {
            ident
            for ident, new in fresh.items()
            if (old := self._by_ident.get(ident)) is None or old.digest != new.digest
        }
        removed = set(self._by_ident) - set(fresh)
        for ident in changed | removed:
            self._dry.pop(ident, None)
        self._by_ident, self.revision = fresh, revision
        self.synced_at = max(self.synced_at, synced_at)
        self.known = True
        return changed, removed

    def server_desired(self, ident: Identity) -> KubeObject | None:
        """The intent as the server would store it; one dry-run per intent version."""
        intent = self._by_ident[ident]
        cached = self._dry.get(ident)
        if cached is not None and cached[0] == intent.digest:
            return cached[1]
        try:
            result: KubeObject | None = self._kube.apply(
                intent.obj, dry_run=True, manager=self._manager
            )
        except KubeError as e:
            self._log.debug("drift.dry_run_failed", object=str(intent.ref), error=str(e))
            result = None
        self._dry[ident] = (intent.digest, result)
        return result
