"""Drift rules: which intent paths drifted, who changed them, what is ignored, masking.

The managedFields below are shaped like those a v1.34 API server wrote for real kubectl
commands (see tests/integration/test_drift.py for the same against the cluster).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gitsync.config import IgnoreRule
from gitsync.drift.compare import (
    ABSENT,
    DriftReport,
    DriftSet,
    Item,
    Owner,
    compare,
    differences,
    gitsync_wrote,
    hpa_targets,
    owners,
    path_text,
    pointer_parts,
    rule_matches,
    secret_as_data,
    writers,
)
from gitsync.model import ObjectRef

T0 = "2026-01-01T10:00:00Z"
T1 = "2026-01-01T10:05:00Z"
T2 = "2026-01-01T10:06:00Z"


def _intent() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "labels": {"gitsync.io/app": "shop", "team": "a"},
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.invalid/web:1",
                            "ports": [{"containerPort": 8080}],
                            "resources": {"limits": {"cpu": "0.5", "memory": 1}},
                        }
                    ]
                },
            },
        },
    }


def _gitsync_fields() -> dict[str, Any]:
    return {
        "f:metadata": {"f:labels": {"f:gitsync.io/app": {}, "f:team": {}}},
        "f:spec": {
            "f:replicas": {},
            "f:selector": {},
            "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:containers": {
                        'k:{"name":"web"}': {
                            ".": {},
                            "f:image": {},
                            "f:name": {},
                            "f:ports": {
                                'k:{"containerPort":8080,"protocol":"TCP"}': {
                                    ".": {},
                                    "f:containerPort": {},
                                }
                            },
                            "f:resources": {"f:limits": {"f:cpu": {}, "f:memory": {}}},
                        }
                    }
                },
            },
        },
    }


def _live(*entries: dict[str, Any]) -> dict[str, Any]:
    """The intent as the server stores it (defaults, normalized quantities), applied by
    gitsync at T0, plus ``entries`` (later writers)."""
    live = copy.deepcopy(_intent())
    live["metadata"]["uid"] = "u-1"
    live["metadata"]["labels"]["pod-template-hash"] = "x"
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicy"] = "IfNotPresent"
    container["ports"][0]["protocol"] = "TCP"
    container["resources"]["limits"] = {"cpu": "500m", "memory": "1"}
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    live["status"] = {"replicas": 2}
    live["metadata"]["managedFields"] = [
        {"manager": "gitsync", "operation": "Apply", "time": T0, "fieldsV1": _gitsync_fields()},
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "subresource": "status",
            "time": T0,
            "fieldsV1": {"f:status": {"f:replicas": {}}},
        },
        *entries,
    ]
    return live


def _take(live: dict[str, Any], manager: str, fields: dict[str, Any], **extra: Any) -> None:
    """What the server does on an Update that changes ``fields``: ownership moves."""
    gitsync = live["metadata"]["managedFields"][0]["fieldsV1"]
    _remove(gitsync, fields)
    live["metadata"]["managedFields"].append(
        {"manager": manager, "operation": "Update", "fieldsV1": fields, **extra}
    )


def _remove(owned: dict[str, Any], fields: dict[str, Any]) -> None:
    for key, sub in fields.items():
        if key not in owned:
            continue
        if sub and owned[key]:
            _remove(owned[key], sub)
        else:
            del owned[key]


def _container(live: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = live["spec"]["template"]["spec"]["containers"][0]
    return container


def _web_fields(inner: dict[str, Any]) -> dict[str, Any]:
    return {"f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"web"}': inner}}}}}


def _compare(live: dict[str, Any] | None, **kw: Any) -> list[DriftReport]:
    return compare(_intent(), live, app="shop", revision="abc123", **kw)


def test_applied_object_has_no_drift() -> None:
    """Server defaults, normalized quantities and status are not drift."""
    assert _compare(_live()) == []


def test_scale_is_attributed_to_the_scale_subresource_writer() -> None:
    """kubectl scale: spec.replicas, manager ``kubectl``, subresource ``scale``, no time."""
    live = _live()
    live["spec"]["replicas"] = 5
    _take(live, "kubectl", {"f:spec": {"f:replicas": {}}}, subresource="scale")
    (report,) = _compare(live)
    assert (report.path, report.desired, report.live) == ("spec.replicas", 2, 5)
    assert (report.manager, report.operation, report.subresource) == ("kubectl", "Update", "scale")
    assert report.time == ""
    assert report.attribution == "owner"
    assert report.revision == "abc123"
    assert report.ref == ObjectRef(
        group="apps", version="v1", kind="Deployment", namespace="shop", name="web"
    )


def test_container_image_is_found_by_name_not_index() -> None:
    """kubectl set image: the path names the container; the time is the writer's."""
    live = _live()
    live["spec"]["template"]["spec"]["containers"].insert(0, {"name": "sidecar", "image": "s:1"})
    live["spec"]["template"]["spec"]["containers"][1]["image"] = "registry.invalid/web:2"
    _take(live, "kubectl-set", _web_fields({"f:image": {}}), time=T1)
    (report,) = _compare(live)
    assert report.path == "spec.template.spec.containers[name=web].image"
    assert (report.desired, report.live) == ("registry.invalid/web:1", "registry.invalid/web:2")
    assert (report.manager, report.time) == ("kubectl-set", T1)


def test_label_change_path_quotes_keys_with_dots() -> None:
    """kubectl label team=b: metadata.labels.team; other keys are quoted when needed."""
    live = _live()
    live["metadata"]["labels"]["team"] = "b"
    _take(live, "kubectl-label", {"f:metadata": {"f:labels": {"f:team": {}}}}, time=T1)
    (report,) = _compare(live)
    assert (report.path, report.manager) == ("metadata.labels.team", "kubectl-label")
    assert (
        path_text(("metadata", "labels", "gitsync.io/app")) == 'metadata.labels["gitsync.io/app"]'
    )
    assert (
        path_text(("spec", "ports", Item((("port", 80),), 0), "name")) == "spec.ports[port=80].name"
    )
    assert path_text(()) == "(object)"


def test_fields_gitsync_never_set_are_not_drift() -> None:
    """A new label, an annotation, a changed default: gitsync never set them."""
    live = _live()
    live["metadata"]["labels"]["extra"] = "yes"
    live["metadata"]["annotations"] = {"note": "y"}
    _container(live)["imagePullPolicy"] = "Always"
    live["spec"]["strategy"] = {"type": "Recreate"}
    _take(live, "kubectl-edit", {"f:spec": {"f:strategy": {"f:type": {}}}}, time=T1)
    assert _compare(live) == []


def test_difference_still_owned_by_gitsync_is_not_drift_and_needs_no_dry_run() -> None:
    """The server stored the intent in its own form; gitsync still owns the field."""
    intent = _intent()
    live = _live()
    assert _container(live)["resources"]["limits"]["cpu"] != "0.5"

    def dry_run() -> dict[str, Any]:
        raise AssertionError("owned fields must not need a dry-run")

    assert [d.parts[-1] for d in differences(intent, live)] == ["cpu"]
    assert _compare(live, server_desired=dry_run) == []


def test_dry_run_decides_a_foreign_value_equal_to_the_intent() -> None:
    """Someone wrote 500m back over "0.5": equal once the server normalizes the intent."""
    live = _live()
    fields = _web_fields({"f:resources": {"f:limits": {"f:cpu": {}}}})
    _take(live, "kubectl-edit", fields, time=T1)
    calls: list[int] = []

    def dry_run() -> dict[str, Any]:
        calls.append(1)
        return _live()

    assert _compare(live, server_desired=dry_run) == []
    assert calls == [1]
    _container(live)["resources"]["limits"]["cpu"] = "2"
    (report,) = _compare(live, server_desired=dry_run)
    assert (report.desired, report.live, report.manager) == ("500m", "2", "kubectl-edit")


def test_certain_differences_skip_the_dry_run() -> None:
    """Two different ints cannot be one value normalized: no API call."""
    live = _live()
    live["spec"]["replicas"] = 3
    _take(live, "kubectl-patch", {"f:spec": {"f:replicas": {}}}, time=T1)

    def dry_run() -> dict[str, Any]:
        raise AssertionError("not needed")

    (report,) = _compare(live, server_desired=dry_run)
    assert report.manager == "kubectl-patch"


def test_int_and_string_quantities_compare_equal() -> None:
    """memory: 1 in Git and "1" live are the same quantity."""
    live = _live()
    _take(live, "kubectl-edit", _web_fields({"f:resources": {"f:limits": {"f:memory": {}}}}))
    assert _container(live)["resources"]["limits"]["memory"] == "1"
    assert _compare(live) == []


def test_secret_values_are_masked_and_compared_as_data() -> None:
    """stringData in Git, data live: compared decoded, reported as data.<key> = ***."""
    intent = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "shop"},
        "stringData": {"password": "hunter2"},
    }
    live = secret_as_data(intent) | {
        "metadata": {
            "name": "db",
            "namespace": "shop",
            "managedFields": [
                {
                    "manager": "gitsync",
                    "operation": "Apply",
                    "time": T0,
                    "fieldsV1": {"f:stringData": {"f:password": {}}},
                }
            ],
        },
        "type": "Opaque",
    }
    assert compare(intent, live, app="shop") == []
    live["data"] = {"password": "c3dvcmRmaXNo"}  # swordfish
    live["metadata"]["managedFields"].append(
        {
            "manager": "kubectl-edit",
            "operation": "Update",
            "time": T1,
            "fieldsV1": {"f:data": {"f:password": {}}},
        }
    )
    (report,) = compare(intent, live, app="shop")
    assert (report.path, report.desired, report.live) == ("data.password", "***", "***")
    assert report.manager == "kubectl-edit"
    text = repr(report) + json.dumps(report.log_fields()) + report.summary()
    for secret in ("hunter2", "swordfish", "c3dvcmRmaXNo", "aHVudGVyMg=="):
        assert secret not in text
    live["data"] = {"password": "b3RoZXI="}
    (again,) = compare(intent, live, app="shop")
    assert again.signature != report.signature, "a new value is a new drift, even masked"


def test_removed_field_has_no_owner() -> None:
    """A removed label leaves no managedFields owner: unknown, or the writer of the change."""
    live = _live()
    before = copy.deepcopy(live)
    del live["metadata"]["labels"]["team"]
    _remove(
        live["metadata"]["managedFields"][0]["fieldsV1"],
        {"f:metadata": {"f:labels": {"f:team": {}}}},
    )
    (report,) = _compare(live)
    assert (report.path, report.live, report.manager, report.attribution) == (
        "metadata.labels.team",
        "(absent)",
        "",
        "unknown",
    )
    live["metadata"]["managedFields"].append(
        {
            "manager": "kubectl-edit",
            "operation": "Update",
            "time": T1,
            "fieldsV1": {"f:spec": {"f:paused": {}}},
        }
    )
    hint = writers(before, live)
    assert [w.manager for w in hint] == ["kubectl-edit"]
    (report,) = _compare(live, changed_by=hint)
    assert (report.manager, report.attribution, report.time) == ("kubectl-edit", "writer", T1)


def test_removed_container_is_one_report() -> None:
    """A list item that disappeared is reported once, by its key."""
    intent = _intent()
    intent["spec"]["template"]["spec"]["containers"].append({"name": "log", "image": "l:1"})
    live = _live()
    (report,) = compare(intent, live, app="shop")
    assert report.path == "spec.template.spec.containers[name=log]"
    assert report.live == "(absent)"


def test_ownerless_difference_while_gitsync_applies_a_newer_intent_is_not_drift() -> None:
    """gitsync applied after the state it was read from: a sync is mid-way, not a person."""
    live = _live()
    del live["metadata"]["labels"]["team"]
    _remove(
        live["metadata"]["managedFields"][0]["fieldsV1"],
        {"f:metadata": {"f:labels": {"f:team": {}}}},
    )
    live["metadata"]["managedFields"][0]["time"] = T2
    assert _compare(live, synced_at=T1) == []
    assert len(_compare(live, synced_at=T2)) == 1


def test_deleted_object_is_drift_without_a_manager() -> None:
    """A managed object that is gone: field (object), live (deleted), manager unknown."""
    (report,) = _compare(None)
    assert (report.path, report.desired, report.live) == ("(object)", "(present)", "(deleted)")
    assert report.manager == ""
    assert report.log_fields()["manager"] == "unknown"


@pytest.mark.parametrize(
    ("rule", "ignored"),
    [
        ({"kind": "Deployment", "jsonPointer": "/spec/replicas"}, True),
        ({"kind": "Deployment.apps", "name": "we*", "jsonPointer": "/spec"}, True),
        ({"kind": "Deployment", "name": "api", "jsonPointer": "/spec/replicas"}, False),
        ({"kind": "StatefulSet", "jsonPointer": "/spec/replicas"}, False),
        ({"kind": "*", "jsonPointer": ""}, True),
        ({"kind": "Deployment", "jsonPointer": "/spec/template"}, False),
    ],
)
def test_ignore_rules_match_kind_name_and_pointer_prefix(
    rule: dict[str, str], ignored: bool
) -> None:
    """An app's ignore rule: kind (or group kind), name glob, JSON pointer prefix."""
    live = _live()
    live["spec"]["replicas"] = 9
    _take(live, "kubectl-scale", {"f:spec": {"f:replicas": {}}})
    ignore = (IgnoreRule.model_validate(rule),)
    assert (_compare(live, ignore=ignore) == []) is ignored


def test_ignore_pointer_reaches_list_items_by_key_or_index() -> None:
    """/spec/template/spec/containers/web/image and /…/containers/0/image both match."""
    ref = ObjectRef(group="apps", version="v1", kind="Deployment", namespace="s", name="web")
    parts = ("spec", "template", "spec", "containers", Item((("name", "web"),), 0), "image")
    for pointer in ("/spec/template/spec/containers/web/image", "/spec/template/spec/containers/0"):
        rule = IgnoreRule(kind="Deployment", jsonPointer=pointer)
        assert rule_matches(rule, ref, parts)
    assert not rule_matches(
        IgnoreRule(kind="Deployment", jsonPointer="/spec/template/spec/containers/api"), ref, parts
    )
    assert pointer_parts("/metadata/annotations/a~1b~0c") == ("metadata", "annotations", "a/b~c")
    secret = ObjectRef(group="", version="v1", kind="Secret", namespace="s", name="db")
    assert rule_matches(
        IgnoreRule(kind="Secret", jsonPointer="/stringData/pw"), secret, ("data", "pw")
    )


def test_drift_annotation_ignores_the_object() -> None:
    """gitsync.io/drift: ignore on the live object (or in Git) silences it, deletion too."""
    live = _live()
    live["spec"]["replicas"] = 9
    _take(live, "kubectl-scale", {"f:spec": {"f:replicas": {}}})
    live["metadata"]["annotations"] = {"gitsync.io/drift": "ignore"}
    assert _compare(live) == []
    intent = _intent()
    intent["metadata"]["annotations"] = {"gitsync.io/drift": "ignore"}
    assert compare(intent, None, app="shop") == []


def test_replicas_owned_through_an_hpa_are_not_drift() -> None:
    """spec.replicas of an HPA's scale target is the HPA's; asked only for replicas."""
    live = _live()
    live["spec"]["replicas"] = 4
    _take(live, "kubectl", {"f:spec": {"f:replicas": {}}}, subresource="scale")
    asked: list[ObjectRef] = []

    def autoscaled(ref: ObjectRef) -> bool:
        asked.append(ref)
        return ref.name == "web"

    assert _compare(live, autoscaled=autoscaled) == []
    assert [r.name for r in asked] == ["web"]
    targets = hpa_targets(
        [
            {
                "metadata": {"namespace": "shop"},
                "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}},
            }
        ]
    )
    assert targets == {("shop", "Deployment", "web")}


def test_fields_controllers_are_expected_to_own_are_not_drift() -> None:
    """What kube-controller-manager writes (e.g. HPA scaling) and injected caBundles."""
    live = _live()
    live["spec"]["replicas"] = 4
    _take(live, "kube-controller-manager", {"f:spec": {"f:replicas": {}}}, subresource="scale")
    assert _compare(live) == []
    intent = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "v"},
        "webhooks": [{"name": "a.b.c", "clientConfig": {"caBundle": "AAAA"}}],
    }
    injected = copy.deepcopy(intent)
    injected["webhooks"][0]["clientConfig"]["caBundle"] = "BBBB"
    assert compare(intent, injected, app="shop") == []


def test_owners_follow_keyed_list_items_with_extra_key_fields() -> None:
    """Ports are keyed by containerPort+protocol in fieldsV1 even if Git names only the port."""
    live = _live()
    parts = (
        "spec",
        "template",
        "spec",
        "containers",
        Item((("name", "web"),), 0),
        "ports",
        Item((("containerPort", 8080),), 0),
        "containerPort",
    )
    assert owners(live, parts) == [Owner(manager="gitsync", operation="Apply", time=T0)]


def test_signature_is_stable_for_the_same_drift() -> None:
    """Two compares of the same state give equal reports and signatures (report once)."""
    live = _live()
    live["spec"]["replicas"] = 5
    _take(live, "kubectl", {"f:spec": {"f:replicas": {}}}, subresource="scale")
    (a,) = _compare(live)
    (b,) = _compare(copy.deepcopy(live))
    assert a == b
    assert a.signature == b.signature
    live["spec"]["replicas"] = 6
    (c,) = _compare(live)
    assert c.signature != a.signature


def test_drift_set_lists_distinct_objects() -> None:
    """DriftSet.objects counts an object once however many fields drifted."""
    live = _live()
    live["spec"]["replicas"] = 5
    live["metadata"]["labels"]["team"] = "b"
    _take(
        live,
        "kubectl-edit",
        {"f:spec": {"f:replicas": {}}, "f:metadata": {"f:labels": {"f:team": {}}}},
    )
    drift = DriftSet(_compare(live))
    assert len(drift) == 2
    assert len(drift.objects) == 1


def test_missing_parent_reports_each_leaf_gitsync_set() -> None:
    """All labels removed at once: one report per label gitsync set."""
    live = _live()
    del live["metadata"]["labels"]
    found = [d for d in differences(_intent(), live) if d.parts[0] == "metadata"]
    paths = sorted(path_text(d.parts) for d in found)
    assert paths == ["metadata.labels.team", 'metadata.labels["gitsync.io/app"]']
    assert all(d.live is ABSENT for d in found)


def test_gitsync_wrote_sees_its_own_apply_but_not_a_removal_by_someone_else() -> None:
    """Its entry's time moved, or it gained a path: gitsync applied. Losing one: not proof."""
    before = _live()
    after = copy.deepcopy(before)
    _remove(after["metadata"]["managedFields"][0]["fieldsV1"], {"f:spec": {"f:replicas": {}}})
    assert not gitsync_wrote(before, after), "a removal by someone else shrinks it too"
    assert gitsync_wrote(after, before), "only an apply by gitsync can give it a path"
    later = copy.deepcopy(before)
    later["metadata"]["managedFields"][0]["time"] = T1
    assert gitsync_wrote(before, later)
    assert not gitsync_wrote(None, later)
