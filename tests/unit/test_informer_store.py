"""The informer's store: bytes kept, indexes moved on relabel, a relist is a diff."""

from __future__ import annotations

import json
from typing import Any

from gitsync.informers.store import Store
from gitsync.model import APP_LABEL


def cm(name: str, rv: str, app: str = "", owner: str = "", ns: str = "ns") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "resourceVersion": rv}
    if app:
        meta["labels"] = {APP_LABEL: app}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "kind": "ReplicaSet", "name": "rs"}]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"rv": rv}}


def test_the_same_version_twice_is_no_change() -> None:
    """An event repeating the stored resourceVersion (a resumed watch) changes nothing."""
    store = Store(index_label=APP_LABEL)
    assert store.put("ADDED", cm("a", "1", "x")) is not None
    assert store.put("MODIFIED", cm("a", "1", "x")) is None
    assert store.version == 1


def test_relabelling_moves_the_object_between_app_indexes() -> None:
    """The change names both apps; the object is found under the new one only."""
    store = Store(index_label=APP_LABEL)
    store.put("ADDED", cm("a", "1", "x"))
    change = store.put("MODIFIED", cm("a", "2", "y"))
    assert change is not None
    assert change.labels == {"x", "y"}
    assert store.idents(label="x") == []
    assert store.idents(label="y") == [("", "ConfigMap", "ns", "a")]
    assert change.old() == cm("a", "1", "x")


def test_a_relist_reports_what_changed_and_what_went_away() -> None:
    """replace() yields MODIFIED for new versions, DELETED for the missing, nothing else."""
    store = Store(index_label=APP_LABEL)
    for name in ("keep", "change", "gone"):
        store.put("ADDED", cm(name, "1", "x"))
    changes = store.replace([cm("keep", "1", "x"), cm("change", "2", "x"), cm("new", "3", "x")])
    assert sorted((c.type, c.ident[3]) for c in changes) == [
        ("ADDED", "new"),
        ("DELETED", "gone"),
        ("MODIFIED", "change"),
    ]
    assert sorted(i[3] for i in store.idents(label="x")) == ["change", "keep", "new"]


def test_owner_index_and_memo_follow_the_object() -> None:
    """Found by owner uid; a memoized value is recomputed once the object changes."""
    store = Store(index_label=APP_LABEL)
    store.put("ADDED", cm("pod", "1", owner="rs-uid"))
    ident = ("", "ConfigMap", "ns", "pod")
    assert store.idents(owner="rs-uid") == [ident]
    calls: list[str] = []

    def derive(obj: dict[str, Any]) -> str:
        calls.append(obj["metadata"]["resourceVersion"])
        return str(obj["data"]["rv"])

    assert store.memo(ident, "k", derive) == "1"
    assert store.memo(ident, "k", derive) == "1"
    store.put("MODIFIED", cm("pod", "2", owner="other"))
    assert store.memo(ident, "k", derive) == "2"
    assert calls == ["1", "2"]
    assert store.idents(owner="rs-uid") == []
    store.put("DELETED", cm("pod", "2", owner="other"))
    assert store.memo(ident, "k", derive) is None
    assert len(store) == 0


def test_a_watch_line_is_kept_as_received() -> None:
    """An event's own JSON line is the stored form: the object decodes from under "object"."""
    store = Store(index_label=APP_LABEL)
    line = json.dumps({"type": "ADDED", "object": cm("a", "5")}).encode()
    store.put("ADDED", cm("a", "5"), line)
    assert store.raw_bytes() == len(line)
    got = store.get(("", "ConfigMap", "ns", "a"))
    assert got is not None
    assert got["metadata"]["resourceVersion"] == "5"
