"""Owned-field projection and fingerprints from managedFields."""

from gitsync.fields import (
    content_hash,
    fingerprint,
    managed_entry,
    project,
    upgraded_managed_fields,
)


def _deploy(image: str = "web:1", replicas: int = 2, owner_fields: dict | None = None) -> dict:
    fields = owner_fields or {
        "f:spec": {
            "f:replicas": {},
            "f:template": {
                "f:spec": {"f:containers": {'k:{"name":"web"}': {".": {}, "f:image": {}}}}
            },
        }
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "managedFields": [
                {"manager": "gitsync", "operation": "Apply", "fieldsV1": fields},
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "subresource": "status",
                    "fieldsV1": {"f:status": {}},
                },
            ],
        },
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "web", "image": image, "ports": []}]}},
        },
        "status": {"readyReplicas": 1},
    }


def test_project_keeps_only_owned_paths():
    """Projection keeps the owned fields and drops status and unowned list members' fields."""
    obj = _deploy()
    out = project(obj, managed_entry(obj) or {})
    assert out["spec"]["replicas"] == 2
    containers = out["spec"]["template"]["spec"]["containers"]
    assert containers == [['k:{"name":"web"}', {"image": "web:1"}]]
    assert "status" not in out


def test_fingerprint_ignores_status_but_sees_owned_field_change():
    """A status write keeps the fingerprint; an edit of an owned field changes it."""
    base = fingerprint(_deploy())
    moved_status = _deploy()
    moved_status["status"] = {"readyReplicas": 2}
    assert fingerprint(moved_status) == base
    assert fingerprint(_deploy(image="web:2")) != base
    assert fingerprint(_deploy(replicas=5)) != base


def test_fingerprint_changes_when_ownership_is_taken():
    """Losing ownership of a field (someone else applied it) changes the fingerprint."""
    base = fingerprint(_deploy())
    taken = _deploy(owner_fields={"f:spec": {"f:replicas": {}}})
    assert fingerprint(taken) != base


def test_no_gitsync_entry_means_no_fingerprint():
    """Objects gitsync never applied have an empty fingerprint."""
    obj = _deploy()
    obj["metadata"]["managedFields"] = obj["metadata"]["managedFields"][1:]
    assert fingerprint(obj) == ""


def test_content_hash_is_order_independent():
    """The manifest hash does not depend on key order."""
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_client_side_apply_ownership_moves_to_gitsync():
    """csaupgrade equivalent: kubectl-client-side-apply's fields join gitsync's Apply entry."""
    obj = {
        "metadata": {
            "managedFields": [
                {
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "fieldsV1": {"f:data": {"f:drop": {}, "f:keep": {}}},
                },
                {
                    "manager": "gitsync",
                    "operation": "Apply",
                    "fieldsV1": {"f:data": {"f:keep": {}}},
                },
                {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:data": {}}},
            ]
        }
    }
    upgraded = upgraded_managed_fields(obj)
    assert upgraded is not None
    assert [e["manager"] for e in upgraded] == ["kubectl-edit", "gitsync"]
    assert upgraded[-1]["operation"] == "Apply"
    assert upgraded[-1]["fieldsV1"] == {"f:data": {"f:drop": {}, "f:keep": {}}}
    assert upgraded_managed_fields({"metadata": {"managedFields": upgraded}}) is None
