"""The state codec: gzip'd JSON that round-trips, stays readable across releases, and is lean."""

import gzip
import json
import zlib

import pytest

from gitsync.engine import statestore
from gitsync.engine.inventory import AppState, InventoryEntry, check_fits, decode, encode
from gitsync.errors import StateError
from gitsync.model import ObjectRef


def _state(n: int = 1) -> AppState:
    entries = tuple(
        InventoryEntry(
            ref=ObjectRef(group="", version="v1", kind="ConfigMap", namespace="n", name=f"c{i}"),
            manifest_hash=f"h{i}",
            fingerprint=f"f{i}",
        )
        for i in range(n)
    )
    manifests = tuple({"kind": "ConfigMap", "metadata": {"name": f"c{i}"}} for i in range(n))
    return AppState(app="a", revision="abc", inventory=entries, healthy_manifests=manifests)


def test_state_round_trip_and_history_cap() -> None:
    """State encodes to gzip'd JSON and back; history keeps the last 20."""
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


def test_encoding_is_the_compact_sorted_json_of_every_release() -> None:
    """The piecewise encoder writes exactly the text json.dumps wrote before (gzip, mtime 0)."""
    st = _state(600).with_history("s", "synced", reason='ü and "quotes"')
    text = zlib.decompress(encode(st), 47)
    assert text == json.dumps(st.to_json(), separators=(",", ":"), sort_keys=True).encode()
    assert encode(st) == encode(st)  # deterministic: no timestamp in the gzip header


def test_a_blob_written_by_the_previous_release_decodes() -> None:
    """gzip.compress output of the old single-Secret format decodes unchanged."""
    st = _state(3)
    old = gzip.compress(json.dumps(st.to_json()).encode(), mtime=0)
    assert decode(old) == st


def test_ten_thousand_entries_round_trip() -> None:
    """A 10,000-entry state with its manifests decodes to an equal state."""
    st = _state(10_000)
    assert decode(encode(st)) == st


def test_split_covers_the_blob_in_bounded_pieces() -> None:
    """Chunks are at most CHUNK_BYTES each and join back to the blob."""
    blob = bytes(range(256)) * 10_000  # 2.44 MiB
    parts = statestore.split(blob)
    assert len(parts) == -(-len(blob) // statestore.CHUNK_BYTES) == 4
    assert all(len(p) <= statestore.CHUNK_BYTES for p in parts)
    assert b"".join(parts) == blob
    assert statestore.split(b"") == []


def test_check_size_names_app_size_limit_and_remedy() -> None:
    """An over-limit size is refused with the app, both sizes and what to do."""
    statestore.check_size("shop", statestore.MAX_STATE_BYTES)
    with pytest.raises(StateError) as err:
        statestore.check_size("shop", statestore.MAX_STATE_BYTES + 1)
    text = str(err.value)
    assert "'shop'" in text
    assert "48.0 MiB compressed, more than the 48 MiB" in text
    assert "split the app" in text


def test_check_fits_passes_a_ten_thousand_entry_state() -> None:
    """check_fits measures the compressed state: 10,000 entries are far below the limit."""
    check_fits(_state(10_000))
