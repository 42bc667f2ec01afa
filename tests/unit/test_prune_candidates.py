"""Which objects a plan offers to prune, and how it knows each is the app's."""

from gitsync.inventory import AppState, InventoryEntry
from gitsync.model import APP_LABEL, ObjectRef
from gitsync.plan import LiveIndex, Origin, _prune_candidates


def _ref(name: str) -> ObjectRef:
    return ObjectRef(group="", version="v1", kind="ConfigMap", namespace="n", name=name)


def _live(name: str, *, owner: bool = False) -> dict:
    meta: dict = {"name": name, "namespace": "n", "labels": {APP_LABEL: "a"}}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": "r", "controller": True}]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}


def test_candidates_by_origin():
    """Stale inventory, unsettled write-ahead entries and unknown labelled objects are offered,
    each with its origin; desired, adopted and controller-made objects are not."""
    state = AppState(
        app="a",
        inventory=(InventoryEntry(ref=_ref("kept")), InventoryEntry(ref=_ref("stale"))),
        pending=(InventoryEntry(ref=_ref("half")), InventoryEntry(ref=_ref("kept"))),
        adopted=(_live("adopted"),),
    )
    names = ["kept", "stale", "half", "stray", "adopted", "desired"]
    live = LiveIndex({_ref(n).identity(): _live(n) for n in names})
    live.objects[_ref("pod-made").identity()] = _live("pod-made", owner=True)
    desired = {_ref("kept").identity(), _ref("desired").identity()}
    stale = [e for e in state.inventory if e.ref.identity() not in desired]
    unsettled = [e for e in state.pending if e.ref.name == "half"]
    got = {c.ref.name: c.origin for c in _prune_candidates(state, desired, stale, unsettled, live)}
    assert got == {"stale": Origin.INVENTORY, "half": Origin.PENDING, "stray": Origin.LABEL}
