"""Normalization, field-level diff and Secret masking (pure)."""

from gitsync.engine.plan import MASK, diff_objects, mask_secret, normalize


def _cm(data: dict, **meta) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "ns", **meta},
        "data": data,
    }


def test_normalize_drops_server_owned_fields():
    """Status, managedFields, resourceVersion, uid, generation and timestamps are ignored."""
    live = _cm(
        {"a": "1"},
        resourceVersion="7",
        uid="u",
        generation=3,
        creationTimestamp="t",
        managedFields=[{}],
    )
    live["status"] = {"x": 1}
    assert diff_objects(live, _cm({"a": "1"}, resourceVersion="8", uid="u")) == ()
    assert "status" not in normalize(live)


def test_diff_reports_field_paths_and_values():
    """A changed value is reported with its dotted path, live and desired values."""
    d = diff_objects(_cm({"a": "1", "b": "x"}), _cm({"a": "2", "b": "x", "c": "new"}))
    paths = {x.path: x for x in d}
    assert paths["data.a"].live == "1"
    assert paths["data.a"].desired == "2"
    assert paths["data.c"].live is None
    assert paths["data.c"].desired == "new"


def test_diff_list_paths_follow_merge_keys():
    """List members are addressed by merge key, as drift addresses them; a list without
    one is atomic and reported whole."""
    live = {"kind": "X", "metadata": {}, "spec": {"containers": [{"name": "web", "image": "a"}]}}
    desired = {"kind": "X", "metadata": {}, "spec": {"containers": [{"name": "web", "image": "b"}]}}
    (d,) = diff_objects(live, desired)
    assert d.path == "spec.containers[name=web].image"
    assert (d.live, d.desired) == ("a", "b")
    (whole,) = diff_objects({"kind": "X", "spec": {"c": [1]}}, {"kind": "X", "spec": {"c": [2]}})
    assert whole.path == "spec.c"


def test_removed_field_is_reported_once_at_its_top():
    """A field the apply removes is one difference at the removed path, not one per leaf."""
    live = _cm({"a": "1"}, labels={"x": "1", "y": "2"})
    desired = _cm({"a": "1"}, labels={"x": "1"})
    (d,) = diff_objects(live, desired)
    assert (d.path, d.live, d.desired) == ("metadata.labels.y", "2", None)


def _secret(data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": data}


def test_secret_values_never_appear_in_diff():
    """A changed, added or removed Secret value is reported masked."""
    d = diff_objects(
        _secret({"pw": "c2VjcmV0MQ==", "gone": "eA=="}),
        _secret({"pw": "c2VjcmV0Mg==", "new": "eQ=="}),
    )
    text = repr(d)
    for raw in ("c2VjcmV0MQ==", "c2VjcmV0Mg==", "eA==", "eQ=="):
        assert raw not in text
    paths = {x.path for x in d}
    assert {"data.pw", "data.new", "data.gone"} <= paths
    assert all(MASK in str(x.desired) or MASK in str(x.live) for x in d)


def test_unchanged_secret_has_no_diff():
    """Equal Secret data yields no difference."""
    assert diff_objects(_secret({"pw": "YQ=="}), _secret({"pw": "YQ=="})) == ()


def test_mask_secret_leaves_other_kinds():
    """Only v1 Secrets are masked."""
    cm = _cm({"a": "1"})
    assert mask_secret(cm) == cm
    assert mask_secret({**_secret({"k": "v"}), "stringData": {"x": "y"}})["stringData"] == {
        "x": MASK
    }
