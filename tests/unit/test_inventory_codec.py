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


def test_write_ahead_fields_round_trip():
    """Pending entries, adopted priors and the Degraded reason survive encoding."""
    ref = ObjectRef(group="", version="v1", kind="ConfigMap", namespace="n", name="c")
    st = AppState(
        app="a",
        pending=(InventoryEntry(ref=ref),),
        adopted=({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "h"}},),
        degraded="rollback from abc failed: refused",
    )
    back = decode(encode(st))
    assert back.pending == st.pending
    assert back.adopted == st.adopted
    assert back.degraded == st.degraded


def test_state_written_before_write_ahead_reads_empty_fields():
    """A state from before write-ahead existed reads with nothing pending."""
    back = AppState.from_json({"app": "a", "revision": "abc"})
    assert back.pending == ()
    assert back.adopted == ()
    assert back.degraded == ""
