"""The app's state in the cluster: Secret ``gitsync-<app>`` (and chunks), gzip'd JSON.

Secrets because they keep rendered manifests, which may hold Secrets. Writes carry the
resourceVersion read, so two writers never silently overwrite each other, and are counted
as verb "state" apart from writes to the app's objects. Each inventory
entry also keeps the manifest hash and the owned-field fingerprint from the last apply:
that is what lets an unchanged resync skip every dry-run. How a state too large for one
Secret is split, and read back whole, is ``gitsync.engine.statestore``'s business.
"""

from __future__ import annotations

import contextlib
import gc
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gitsync.engine import statestore
from gitsync.engine.statestore import STATE_KEY
from gitsync.errors import ConflictError, StateError
from gitsync.kube import Kube
from gitsync.model import KubeObject, ObjectRef

if TYPE_CHECKING:  # the hub imports statestore, which this module imports
    from gitsync.informers.hub import Informers

HISTORY_LIMIT = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryEntry:
    ref: ObjectRef
    manifest_hash: str = ""
    fingerprint: str = ""

    def to_json(self) -> dict[str, str]:
        return self.ref.as_dict() | {"hash": self.manifest_hash, "fp": self.fingerprint}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> InventoryEntry:
        ref = ObjectRef(
            group=raw.get("group", ""),
            version=raw.get("version", ""),
            kind=raw["kind"],
            namespace=raw.get("namespace", ""),
            name=raw["name"],
        )
        return cls(ref=ref, manifest_hash=raw.get("hash", ""), fingerprint=raw.get("fp", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    sha: str
    result: str
    time: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AppState:
    app: str
    revision: str = ""
    healthy_revision: str = ""
    quarantined: tuple[str, ...] = ()
    inventory: tuple[InventoryEntry, ...] = ()
    healthy_manifests: tuple[KubeObject, ...] = field(default=(), repr=False)
    history: tuple[HistoryEntry, ...] = ()
    # Write-ahead: objects an unfinished sync may have created (recorded before its first
    # write), and the prior content of existing objects it took over. Cleared once a sync
    # or rollback has settled them, so a crash at any point leaves nothing untracked.
    pending: tuple[InventoryEntry, ...] = ()
    adopted: tuple[KubeObject, ...] = field(default=(), repr=False)
    # Why the app is Degraded: a rollback that did not finish (retried on the next poll).
    degraded: str = ""
    # Not serialized: the Secret's resourceVersion when read ("" = not stored yet).
    resource_version: str = ""

    def with_history(self, sha: str, result: str, reason: str = "") -> AppState:
        entry = HistoryEntry(
            sha=sha, result=result, time=datetime.now(UTC).isoformat(), reason=reason
        )
        return replace(self, history=(*self.history, entry)[-HISTORY_LIMIT:])

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "revision": self.revision,
            "healthy_revision": self.healthy_revision,
            "quarantined": list(self.quarantined),
            "inventory": [e.to_json() for e in self.inventory],
            "healthy_manifests": list(self.healthy_manifests),
            "history": [
                {"sha": h.sha, "result": h.result, "time": h.time, "reason": h.reason}
                for h in self.history
            ],
            "pending": [e.to_json() for e in self.pending],
            "adopted": list(self.adopted),
            "degraded": self.degraded,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], *, resource_version: str = "") -> AppState:
        return cls(
            app=raw["app"],
            revision=raw.get("revision", ""),
            healthy_revision=raw.get("healthy_revision", ""),
            quarantined=tuple(raw.get("quarantined", [])),
            inventory=tuple(InventoryEntry.from_json(e) for e in raw.get("inventory", [])),
            healthy_manifests=tuple(raw.get("healthy_manifests", [])),
            history=tuple(HistoryEntry(**h) for h in raw.get("history", [])),
            pending=tuple(InventoryEntry.from_json(e) for e in raw.get("pending", [])),
            adopted=tuple(raw.get("adopted", [])),
            degraded=raw.get("degraded", ""),
            resource_version=resource_version,
        )


def encode(state: AppState) -> bytes:
    """gzip'd JSON, compressed piece by piece: the whole text never exists at once."""
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip container, mtime 0
    out: list[bytes] = []
    batch: list[str] = []
    size = 0
    for piece in _json_pieces(state.to_json()):
        batch.append(piece)
        size += len(piece)
        if size >= 1 << 16:
            out.append(gz.compress("".join(batch).encode()))
            batch, size = [], 0
    out.append(gz.compress("".join(batch).encode()))
    out.append(gz.flush())
    return b"".join(out)


def _json_pieces(raw: dict[str, Any]) -> Iterator[str]:
    """``raw`` as compact sorted JSON; top-level lists 256 items at a time."""
    dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
    yield "{"
    for i, key in enumerate(sorted(raw)):
        value = raw[key]
        yield ("," if i else "") + dumps(key) + ":"
        if isinstance(value, list):
            yield "["
            for j in range(0, len(value), 256):
                yield ("," if j else "") + dumps(value[j : j + 256])[1:-1]
            yield "]"
        else:
            yield dumps(value)
    yield "}"


def decode(blob: bytes, *, resource_version: str = "") -> AppState:
    # Parsing builds ~100,000 containers for a big app; collection passes while they are
    # made took 3/4 of the time, and JSON cannot hold reference cycles anyway.
    with _gc_paused():
        raw = json.loads(zlib.decompress(blob, 47))  # wbits 47: gzip or zlib header
        return AppState.from_json(raw, resource_version=resource_version)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def check_fits(state: AppState) -> None:
    """Refuse, before anything is written, a state too large to be recorded."""
    statestore.check_size(state.app, len(encode(state)))


def secret_name(app: str) -> str:
    return statestore.head_name(app)


def read_state(
    kube: Kube, *, app: str, namespace: str, informers: Informers | None = None
) -> AppState:
    """The stored state, or an empty one when the app was never synced (with
    ``informers``, maybe from their caches: see ``statestore``)."""
    stored = statestore.load(kube, app=app, namespace=namespace, informers=informers)
    if stored.blob is None:
        return AppState(app=app, resource_version=stored.resource_version)
    try:
        return decode(stored.blob, resource_version=stored.resource_version)
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        msg = f"state Secret {namespace}/{secret_name(app)} is unreadable: {e}"
        raise StateError(msg) from e


def write_state(kube: Kube, state: AppState, *, namespace: str) -> AppState:
    """Store ``state`` if nobody wrote since it was read; returns it with the new version."""
    rv = statestore.store(
        kube,
        encode(state),
        app=state.app,
        namespace=namespace,
        resource_version=state.resource_version,
    )
    return replace(state, resource_version=rv)


def ensure_namespace(kube: Kube, namespace: str) -> None:
    """The state namespace is gitsync's own; create it on first use."""
    ref = ObjectRef(group="", version="v1", kind="Namespace", namespace="", name=namespace)
    if kube.get(ref) is None:
        with contextlib.suppress(ConflictError):
            kube.create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                verb="state",
            )


__all__ = [
    "STATE_KEY",
    "AppState",
    "HistoryEntry",
    "InventoryEntry",
    "check_fits",
    "decode",
    "encode",
    "ensure_namespace",
    "read_state",
    "secret_name",
    "write_state",
]
