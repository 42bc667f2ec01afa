"""Which objects a plan offers to prune, and how it knows each is the app's."""

from gitsync.engine.inventory import AppState, InventoryEntry
from gitsync.engine.plan import LiveIndex, Origin, _prune_candidates
from gitsync.model import APP_LABEL, ObjectRef


def _ref(name: str) -> ObjectRef:
    return ObjectRef(group="", version="v1", kind="ConfigMap", namespace="n", name=name)


def _live(name: str, *, owner: bool = False, manager: str = "gitsync-a") -> dict:
    applied = {"manager": manager, "operation": "Apply", "time": "2026-11-30T00:00:00Z"}
    meta: dict = {
        "name": name,
        "namespace": "n",
        "labels": {APP_LABEL: "a"},
        "managedFields": [applied],
    }
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": "r", "controller": True}]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}


def test_candidates_by_origin():
    """Stale inventory, unsettled write-ahead entries and unknown labelled objects the app
    applied are offered, each with its origin; desired, adopted, controller-made and
    labelled-by-hand objects are not."""
    state = AppState(
        app="a",
        inventory=(InventoryEntry(ref=_ref("kept")), InventoryEntry(ref=_ref("stale"))),
        pending=(InventoryEntry(ref=_ref("half")), InventoryEntry(ref=_ref("kept"))),
        adopted=(_live("adopted"),),
    )
    names = ["kept", "stale", "half", "stray", "adopted", "desired"]
    live = LiveIndex({_ref(n).identity(): _live(n) for n in names})
    live.objects[_ref("pod-made").identity()] = _live("pod-made", owner=True)
    live.objects[_ref("by-hand").identity()] = _live("by-hand", manager="kubectl-client-side-apply")
    desired = {_ref("kept").identity(), _ref("desired").identity()}
    stale = [e for e in state.inventory if e.ref.identity() not in desired]
    unsettled = [e for e in state.pending if e.ref.name == "half"]
    got = {c.ref.name: c.origin for c in _prune_candidates(state, desired, stale, unsettled, live)}
    assert got == {"stale": Origin.INVENTORY, "half": Origin.PENDING, "stray": Origin.LABEL}
