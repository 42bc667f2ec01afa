"""Apply order: kind ranks, gitsync.io/wave, stable stages, reverse prune order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gitsync.engine.order import RANK_NAMES, prune_order, rank_of, stages, wave_of
from gitsync.model import WAVE_ANNOTATION, Manifest, ObjectRef
from gitsync.render.manifests import StaticKinds, render

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _m(
    kind: str, name: str, *, api: str = "v1", namespace: str = "ns", wave: Any = None
) -> Manifest:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if wave is not None:
        meta["annotations"] = {WAVE_ANNOTATION: wave}
    return Manifest(obj={"apiVersion": api, "kind": kind, "metadata": meta}, source=f"{name}:1")


def _kinds(manifests: list[Manifest]) -> list[list[str]]:
    return [[m.ref.kind for m in stage.manifests] for stage in stages(manifests)]


def test_good_set_applies_in_dependency_order_despite_reverse_file_order() -> None:
    """fixtures/manifests is named in reverse; stages put CRD first and its Widget last."""
    rendered = render(
        FIXTURES / "manifests",
        repo_root=FIXTURES,
        default_namespace="gitsync-demo",
        app_name="demo",
        kinds=StaticKinds(),
    )
    assert _kinds(list(rendered.manifests)) == [
        ["CustomResourceDefinition"],
        ["Namespace"],
        ["ServiceAccount", "Role", "RoleBinding"],  # by ref: core group sorts first
        ["ConfigMap", "Secret"],
        ["Service"],
        ["Deployment"],
        ["Widget"],
    ]


def test_rank_table_covers_storage_rbac_and_webhooks() -> None:
    """PVCs come after config and before Services; webhooks and APIServices come last."""
    rank = {name: i for i, name in enumerate(RANK_NAMES)}
    assert rank_of("", "PersistentVolumeClaim") == rank["storage"]
    assert rank_of("rbac.authorization.k8s.io", "ClusterRoleBinding") == rank["cluster-config"]
    assert rank_of("scheduling.k8s.io", "PriorityClass") == rank["cluster-config"]
    assert rank_of("batch", "CronJob") == rank["workloads"]
    assert (
        rank_of("admissionregistration.k8s.io", "MutatingWebhookConfiguration")
        == len(RANK_NAMES) - 1
    )
    assert rank_of("apiregistration.k8s.io", "APIService") == len(RANK_NAMES) - 1


def test_custom_resource_named_like_a_builtin_ranks_as_other() -> None:
    """Ranks key on (group, kind): a Service in a CRD group is not a core Service."""
    assert rank_of("", "Service") == RANK_NAMES.index("services")
    assert rank_of("mesh.example.io", "Service") == RANK_NAMES.index("other")


def test_wave_comes_before_rank() -> None:
    """A ConfigMap in wave -1 goes before the CRD; a Deployment in wave 1 after everything."""
    manifests = [
        _m("Deployment", "late", api="apps/v1", wave="1"),
        _m("CustomResourceDefinition", "crd", api="apiextensions.k8s.io/v1", namespace=""),
        _m("ConfigMap", "early", wave="-1"),
        _m("Widget", "w", api="gitsync.test/v1"),
    ]
    result = stages(manifests)
    assert [s.key for s in result] == [(-1, 3), (0, 0), (0, 7), (1, 6)]
    assert [s.manifests[0].ref.name for s in result] == ["early", "crd", "w", "late"]
    assert result[0].name == "wave -1 / config"


def test_objects_within_a_stage_are_sorted_by_ref() -> None:
    """Input order does not change the stages: within one, objects sort by ObjectRef."""
    a = [_m("ConfigMap", "b"), _m("Secret", "a"), _m("ConfigMap", "a", namespace="z")]
    b = list(reversed(a))
    assert stages(a) == stages(b)
    assert [str(m.ref) for m in stages(a)[0].manifests] == [
        "ConfigMap ns/b",
        "ConfigMap z/a",
        "Secret ns/a",
    ]


def test_prune_order_is_the_reverse_of_apply_rank() -> None:
    """Custom resources and workloads are deleted before what they use; CRDs last."""
    refs = [
        ObjectRef(
            group="apiextensions.k8s.io",
            version="v1",
            kind="CustomResourceDefinition",
            namespace="",
            name="widgets.gitsync.test",
        ),
        ObjectRef(group="", version="v1", kind="Namespace", namespace="", name="ns"),
        ObjectRef(group="apps", version="v1", kind="Deployment", namespace="ns", name="web"),
        ObjectRef(group="gitsync.test", version="v1", kind="Widget", namespace="ns", name="w"),
        ObjectRef(group="", version="v1", kind="ConfigMap", namespace="ns", name="a"),
        ObjectRef(group="", version="v1", kind="ConfigMap", namespace="ns", name="b"),
    ]
    assert [(r.kind, r.name) for r in prune_order(refs)] == [
        ("Widget", "w"),
        ("Deployment", "web"),
        ("ConfigMap", "b"),
        ("ConfigMap", "a"),
        ("Namespace", "ns"),
        ("CustomResourceDefinition", "widgets.gitsync.test"),
    ]


@pytest.mark.parametrize(("value", "wave"), [("0", 0), ("-5", -5), ("+3", 3), (" 7 ", 7)])
def test_wave_of_reads_quoted_integers(value: str, wave: int) -> None:
    """Signed integer strings are waves."""
    assert wave_of(_m("ConfigMap", "a", wave=value).obj) == wave


def test_wave_of_defaults_to_zero() -> None:
    """No annotation (or no annotations at all) is wave 0."""
    assert wave_of(_m("ConfigMap", "a").obj) == 0
    assert wave_of({"kind": "ConfigMap"}) == 0


@pytest.mark.parametrize("value", ["soon", "1.5", "", "1e3", 3, True, "1234567890"])
def test_wave_of_rejects_what_is_not_a_quoted_integer(value: Any) -> None:
    """Words, decimals, unquoted YAML numbers and absurd magnitudes raise ValueError."""
    with pytest.raises(ValueError, match="must be a quoted integer"):
        wave_of(_m("ConfigMap", "a", wave=value).obj)


def test_stages_raise_on_a_bad_wave() -> None:
    """stages() does not guess a wave; render reports these before stages ever sees them."""
    with pytest.raises(ValueError, match=WAVE_ANNOTATION):
        stages([_m("ConfigMap", "a", wave="x")])
