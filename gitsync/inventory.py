"""The app's state in the cluster: one Secret ``gitsync-<app>``, gzip+base64 JSON.

A Secret because it keeps rendered manifests, which may hold Secrets. Writes carry the
resourceVersion read, so two writers never silently overwrite each other, and are counted
as verb "state" apart from writes to the app's objects. Each inventory
entry also keeps the manifest hash and the owned-field fingerprint from the last apply:
that is what lets an unchanged resync skip every dry-run.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gitsync.errors import ConflictError, KubeError, StateError
from gitsync.kube import Kube
from gitsync.model import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    KubeObject,
    ObjectRef,
)

STATE_KEY = "state.json.gz"
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


def encode(state: AppState) -> str:
    blob = json.dumps(state.to_json(), separators=(",", ":"), sort_keys=True).encode()
    return base64.b64encode(gzip.compress(blob, mtime=0)).decode()


def decode(data: str, *, resource_version: str = "") -> AppState:
    raw = json.loads(gzip.decompress(base64.b64decode(data)))
    return AppState.from_json(raw, resource_version=resource_version)


# Temporary bound until the chunked state store lands: one Secret's data limit.
_MAX_ENCODED = 1024 * 1024 - 4096


def check_fits(state: AppState) -> None:
    """Refuse, before the first write, a state that could not be recorded."""
    size = len(encode(state))
    if size > _MAX_ENCODED:
        msg = (
            f"the state of app {state.app!r} would take {size} bytes, over the "
            f"{_MAX_ENCODED}-byte limit of a Secret; split the app"
        )
        raise StateError(msg)


def secret_name(app: str) -> str:
    return f"gitsync-{app}"


def _ref(app: str, namespace: str) -> ObjectRef:
    return ObjectRef(
        group="", version="v1", kind="Secret", namespace=namespace, name=secret_name(app)
    )


def read_state(kube: Kube, *, app: str, namespace: str) -> AppState:
    """The stored state, or an empty one when the app was never synced."""
    try:
        obj = kube.get(_ref(app, namespace))
    except KubeError as e:
        msg = f"cannot read state Secret {namespace}/{secret_name(app)}: {e}"
        raise StateError(msg) from e
    if obj is None:
        return AppState(app=app)
    rv = str(obj["metadata"].get("resourceVersion", ""))
    data = (obj.get("data") or {}).get(STATE_KEY)
    if not data:
        return AppState(app=app, resource_version=rv)
    try:
        # Secret data is base64 once more on the wire.
        return decode(base64.b64decode(data).decode(), resource_version=rv)
    except (ValueError, KeyError, TypeError, OSError) as e:
        msg = f"state Secret {namespace}/{secret_name(app)} is unreadable: {e}"
        raise StateError(msg) from e


def write_state(kube: Kube, state: AppState, *, namespace: str) -> AppState:
    """Store ``state`` if nobody wrote since it was read; returns it with the new version."""
    body: KubeObject = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "gitsync.io/state",
        "metadata": {
            "name": secret_name(state.app),
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, "gitsync.io/state-of": state.app},
        },
        "data": {STATE_KEY: base64.b64encode(encode(state).encode()).decode()},
    }
    try:
        if state.resource_version:
            body["metadata"]["resourceVersion"] = state.resource_version
            out = kube.replace(body, verb="state")
        else:
            out = kube.create(body, verb="state")
    except ConflictError as e:
        msg = (
            f"state Secret {namespace}/{secret_name(state.app)} was changed by another writer; "
            "another gitsync may be running for this app"
        )
        raise StateError(msg) from e
    except KubeError as e:
        msg = f"cannot write state Secret {namespace}/{secret_name(state.app)}: {e}"
        raise StateError(msg) from e
    return replace(state, resource_version=str(out["metadata"]["resourceVersion"]))


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
