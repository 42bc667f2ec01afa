"""The objects of one kind as an informer last saw them: JSON bytes, indexed.

Decoded into Python, an object takes about seven times the memory of its JSON (10,000
Deployments: ~170 MiB as dicts, ~25 MiB as bytes), so the store keeps the bytes it
received and decodes an object only when someone asks for it. Values derived from an
object (a fingerprint, say) can be memoized on its entry and vanish with it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gitsync.model import Identity, KubeObject, ObjectRef

T = TypeVar("T")


@dataclass(slots=True)
class _Entry:
    raw: bytes
    wrapped: bool  # a watch event's line: the object sits under "object"
    rv: str
    label: str  # the value of the store's index label ("" without it)
    namespace: str
    owners: tuple[str, ...]
    memo: dict[str, Any] = field(default_factory=dict)

    def decode(self) -> KubeObject:
        doc: KubeObject = json.loads(self.raw)
        return doc["object"] if self.wrapped else doc


@dataclass(frozen=True, slots=True)
class Change:
    """One change the store took in; ``obj`` is the object now (when deleted, as last seen)."""

    type: str  # ADDED, MODIFIED or DELETED
    ident: Identity
    obj: KubeObject = field(repr=False)
    labels: frozenset[str] = frozenset()  # index-label values before and after
    _old: _Entry | None = field(default=None, repr=False)

    def old(self) -> KubeObject | None:
        """The object before this change (decoded on request: most readers never ask)."""
        return None if self._old is None else self._old.decode()


class Store:
    """Objects by identity, with indexes by a label's value, by owner uid and by namespace."""

    def __init__(self, *, index_label: str) -> None:
        self.index_label = index_label
        self._lock = threading.Lock()
        self._entries: dict[Identity, _Entry] = {}
        self._by_label: dict[str, set[Identity]] = {}
        self._by_owner: dict[str, set[Identity]] = {}
        self._by_namespace: dict[str, set[Identity]] = {}
        self.version = 0  # bumped on every change: lets readers cache what they derive

    def __len__(self) -> int:
        return len(self._entries)

    def raw_bytes(self) -> int:
        with self._lock:
            return sum(len(e.raw) for e in self._entries.values())

    # --- writes (the informer's thread) ----------------------------------------------

    def put(self, etype: str, obj: KubeObject, line: bytes | None = None) -> Change | None:
        """Take in one watch event (``line`` is its JSON); None if it changes nothing."""
        ident = ObjectRef.of(obj).identity()
        if etype == "DELETED":
            with self._lock:
                old = self._entries.get(ident)
                if old is None:
                    return None
                self._unindex(ident, old)
                del self._entries[ident]
                self.version += 1
            return Change("DELETED", ident, obj, frozenset({old.label}) - {""}, old)
        entry = self._entry(obj, line)
        with self._lock:
            old = self._entries.get(ident)
            if old is not None and old.rv == entry.rv:
                return None
            if old is not None:
                self._unindex(ident, old)
            self._entries[ident] = entry
            self._index(ident, entry)
            self.version += 1
        labels = frozenset({entry.label, old.label if old else ""}) - {""}
        return Change("MODIFIED" if old else "ADDED", ident, obj, labels, old)

    def replace(self, items: Iterable[KubeObject]) -> list[Change]:
        """A fresh LIST: take it as the whole truth, and say what differs from before."""
        seen: set[Identity] = set()
        changes: list[Change] = []
        for obj in items:
            seen.add(ObjectRef.of(obj).identity())
            change = self.put("MODIFIED", obj)
            if change is not None:
                changes.append(change)
        with self._lock:
            gone = [e for i, e in self._entries.items() if i not in seen]
        for entry in gone:
            change = self.put("DELETED", entry.decode())
            if change is not None:
                changes.append(change)
        return changes

    def _entry(self, obj: KubeObject, line: bytes | None) -> _Entry:
        meta = obj.get("metadata") or {}
        raw = line if line is not None else json.dumps(obj, separators=(",", ":")).encode()
        return _Entry(
            raw=raw,
            wrapped=line is not None,
            rv=str(meta.get("resourceVersion", "")),
            label=str((meta.get("labels") or {}).get(self.index_label, "")),
            namespace=str(meta.get("namespace", "")),
            owners=tuple(str(o.get("uid", "")) for o in meta.get("ownerReferences") or ()),
        )

    def _index(self, ident: Identity, e: _Entry) -> None:
        if e.label:
            self._by_label.setdefault(e.label, set()).add(ident)
        for uid in e.owners:
            self._by_owner.setdefault(uid, set()).add(ident)
        self._by_namespace.setdefault(e.namespace, set()).add(ident)

    def _unindex(self, ident: Identity, e: _Entry) -> None:
        for index, key in (
            (self._by_label, e.label),
            (self._by_namespace, e.namespace),
            *((self._by_owner, uid) for uid in e.owners),
        ):
            members = index.get(key)
            if members is not None:
                members.discard(ident)
                if not members:
                    del index[key]

    # --- reads (any thread) ----------------------------------------------------------

    def get(self, ident: Identity) -> KubeObject | None:
        with self._lock:
            entry = self._entries.get(ident)
        return None if entry is None else entry.decode()

    def has(self, ident: Identity) -> bool:
        return ident in self._entries

    def idents(
        self, *, label: str | None = None, owner: str | None = None, namespace: str | None = None
    ) -> list[Identity]:
        """Identities by one index (label value, owner uid or namespace), or all."""
        with self._lock:
            return list(self._select(label, owner, namespace))

    def objects(
        self, *, label: str | None = None, owner: str | None = None, namespace: str | None = None
    ) -> list[KubeObject]:
        """The objects of ``idents(...)``, decoded."""
        with self._lock:
            entries = [self._entries[i] for i in self._select(label, owner, namespace)]
        return [e.decode() for e in entries]

    def _select(
        self, label: str | None, owner: str | None, namespace: str | None
    ) -> Iterable[Identity]:
        if label is not None:
            return self._by_label.get(label, ())
        if owner is not None:
            return self._by_owner.get(owner, ())
        if namespace is not None:
            return self._by_namespace.get(namespace, ())
        return self._entries

    def memo(self, ident: Identity, key: str, derive: Callable[[KubeObject], T]) -> T | None:
        """``derive(object)``, computed once per version of the object; None if absent."""
        with self._lock:
            entry = self._entries.get(ident)
        if entry is None:
            return None
        if key not in entry.memo:
            entry.memo[key] = derive(entry.decode())
        value: T = entry.memo[key]
        return value
