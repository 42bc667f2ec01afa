"""Fields sync leaves to others: which, how they are left out, and how the claim is released."""

from gitsync.config import IgnoreRule
from gitsync.drift.compare import Item
from gitsync.engine.ignores import controller_owned, release, skipped, without

DEPLOY = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "n"},
    "spec": {
        "replicas": 1,
        "template": {"spec": {"containers": [{"name": "web", "image": "a", "args": ["x"]}]}},
    },
}
WEB = Item((("name", "web"),), 0)


def _live(*entries: dict) -> dict:
    return {**DEPLOY, "metadata": {**DEPLOY["metadata"], "managedFields": list(entries)}}


def _entry(manager: str, fields: dict, operation: str = "Apply", sub: str = "") -> dict:
    e = {"manager": manager, "operation": operation, "fieldsType": "FieldsV1", "fieldsV1": fields}
    return e | ({"subresource": sub} if sub else {})


def test_nothing_is_skipped_on_create():
    """A create sends the whole manifest, replicas included."""
    assert skipped(DEPLOY, None, autoscaled=True) == ()


def test_autoscaled_replicas_and_rule_paths_are_skipped():
    """An HPA's target keeps its replicas; an ignore rule's pointer covers list items by key."""
    rule = IgnoreRule(kind="Deployment", jsonPointer="/spec/template/spec/containers/web/image")
    got = skipped(DEPLOY, _live(), rules=[rule], autoscaled=True)
    assert got == (
        ("spec", "replicas"),
        ("spec", "template", "spec", "containers", WEB, "image"),
    )
    sent = without(DEPLOY, got)
    assert "replicas" not in sent["spec"]
    assert sent["spec"]["template"]["spec"]["containers"] == [{"name": "web", "args": ["x"]}]
    assert DEPLOY["spec"]["replicas"] == 1, "the manifest itself is untouched"


def test_identity_is_never_skipped():
    """A rule on /metadata cannot stop gitsync from naming the object."""
    rule = IgnoreRule(kind="*", jsonPointer="/metadata")
    assert ("metadata", "name") not in skipped(DEPLOY, _live(), rules=[rule])


def test_fields_a_known_controller_owns_are_skipped():
    """replicas owned by kube-controller-manager through /scale is left to it."""
    hpa = _entry("kube-controller-manager", {"f:spec": {"f:replicas": {}}}, "Update", "scale")
    assert controller_owned(DEPLOY, _live(hpa)) == [("spec", "replicas")]
    editor = _entry("kubectl-edit", {"f:spec": {"f:replicas": {}}}, "Update")
    assert controller_owned(DEPLOY, _live(editor)) == []


def test_release_drops_only_the_claim_on_skipped_paths():
    """gitsync's Apply entry loses spec.replicas (and the emptied parent), nothing else."""
    mine = _entry(
        "gitsync",
        {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}, "f:metadata": {}},
    )
    other = _entry("kubectl-edit", {"f:spec": {"f:paused": {}}}, "Update")
    out = release(_live(mine, other), "gitsync", [("spec", "replicas")])
    assert out is not None
    assert out[0]["fieldsV1"] == {"f:spec": {"f:template": {"f:spec": {}}}, "f:metadata": {}}
    assert out[1] == other
    assert release(_live(other), "gitsync", [("spec", "replicas")]) is None
