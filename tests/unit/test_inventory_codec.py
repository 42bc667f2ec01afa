"""The state Secret format round-trips."""

from gitsync.inventory import AppState, InventoryEntry, decode, encode
from gitsync.model import ObjectRef


def test_state_round_trip_and_history_cap():
    """State encodes to gzip+base64 JSON and back; history keeps the last 20."""
    ref = ObjectRef(group="apps", version="v1", kind="Deployment", namespace="n", name="w")
    st = AppState(
        app="a",
        revision="abc",
        quarantined=("bad",),
        inventory=(InventoryEntry(ref=ref, manifest_hash="h", fingerprint="f"),),
        healthy_manifests=({"kind": "X"},),
    )
    for i in range(25):
        st = st.with_history(f"s{i}", "synced")
    back = decode(encode(st))
    assert back.inventory == st.inventory
    assert back.quarantined == ("bad",)
    assert back.healthy_manifests == ({"kind": "X"},)
    assert len(back.history) == 20
    assert back.history[-1].sha == "s24"
