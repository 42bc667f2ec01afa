"""Render of manifests from the wild: typed lists, JSON streams, empty documents, big objects."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

import pytest

from gitsync.cli import _sync_exit_code
from gitsync.engine.sync import SyncResult
from gitsync.errors import RenderError
from gitsync.model import ManifestSet
from gitsync.render.manifests import RenderLimits, StaticKinds, render
from gitsync.render.yamlread import Document, ReadLimits, flatten_list, gc_paused, read_documents
from tests.support import wild

ROOT = Path(__file__).resolve().parents[2]
WILD = ROOT / "fixtures" / "wild"


def _render(app: Path, **kwargs: Any) -> ManifestSet:
    options: dict[str, Any] = {"default_namespace": "demo", "app_name": "shop"}
    options.update(kwargs)
    return render(app, repo_root=app, kinds=StaticKinds(), **options)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _sources(result: ManifestSet) -> list[tuple[str, str, str]]:
    return [(m.ref.kind, m.ref.name, m.source) for m in result.manifests]


# --------------------------------------------------------------------------- typed lists


def test_typed_list_items_become_objects_with_the_kind_the_list_implies(tmp_path: Path) -> None:
    """ConfigMapList items without kind and apiVersion become v1 ConfigMaps, each at its line."""
    _write(
        tmp_path,
        {
            "cms.yaml": """\
apiVersion: v1
kind: ConfigMapList
metadata: {resourceVersion: ""}
items:
  - metadata: {name: one}
    data: {a: "1"}
  - metadata:
      name: two
"""
        },
    )
    result = _render(tmp_path)
    assert _sources(result) == [
        ("ConfigMap", "one", "cms.yaml:5"),
        ("ConfigMap", "two", "cms.yaml:7"),
    ]
    first = result.manifests[0].obj
    assert (first["apiVersion"], first["kind"], first["data"]) == ("v1", "ConfigMap", {"a": "1"})


def test_rbac_typed_lists_keep_explicit_kinds_and_infer_missing_ones(tmp_path: Path) -> None:
    """RoleList and RoleBindingList expand in the RBAC group; an explicit item kind is kept."""
    _write(
        tmp_path,
        {
            "rbac.yaml": """\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleList
items:
  - metadata: {name: reader}
    rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBindingList
items:
  - apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {name: reader}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
  - apiVersion: v1
    kind: ServiceAccount
    metadata: {name: reader}
"""
        },
    )
    result = _render(tmp_path)
    assert _sources(result) == [
        ("Role", "reader", "rbac.yaml:4"),
        ("RoleBinding", "reader", "rbac.yaml:10"),
        ("ServiceAccount", "reader", "rbac.yaml:14"),
    ]
    assert result.manifests[0].ref.group == "rbac.authorization.k8s.io"


def test_item_naming_only_one_of_kind_and_api_version_is_not_guessed(tmp_path: Path) -> None:
    """As in kubectl, the list fills kind and apiVersion only when the item names neither."""
    _write(
        tmp_path,
        {
            "cms.yaml": """\
apiVersion: v1
kind: ConfigMapList
items:
  - kind: ConfigMap
    metadata: {name: one}
"""
        },
    )
    with pytest.raises(RenderError, match=r"cms\.yaml:4: the object has no apiVersion"):
        _render(tmp_path)


def test_plain_list_items_must_name_their_kind(tmp_path: Path) -> None:
    """A v1 List implies no kind: an item without one is an error at the item's line."""
    _write(tmp_path, {"l.yaml": "apiVersion: v1\nkind: List\nitems:\n  - metadata: {name: a}\n"})
    with pytest.raises(RenderError, match=r"l\.yaml:4: the object has no apiVersion"):
        _render(tmp_path)


def test_list_inside_a_list_is_refused_like_kubectl(tmp_path: Path) -> None:
    """kubectl refuses a nested list; so does render, at the inner list's line, with the rest."""
    _write(
        tmp_path,
        {
            "nested.yaml": """\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: fine}
  - apiVersion: v1
    kind: ConfigMapList
    items:
      - metadata: {name: inner}
""",
            "other.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
        },
    )
    with pytest.raises(RenderError) as caught:
        _render(tmp_path)
    assert caught.value.problems == [
        "nested.yaml:7: a ConfigMapList inside a List: kubectl does not apply nested lists "
        "either; put its items in the outer list or a document of their own.",
        "other.yaml:1: the ConfigMap has no metadata.name.",
    ]


def test_list_items_that_are_not_a_sequence_are_refused(tmp_path: Path) -> None:
    """items: {a: b} is an error at the line of items; items: null and [] are no objects."""
    _write(
        tmp_path,
        {
            "bad.yaml": "apiVersion: v1\nkind: ConfigMapList\nitems:\n  a: b\n",
            "empty.yaml": "apiVersion: v1\nkind: List\nitems: []\n---\n"
            "apiVersion: v1\nkind: SecretList\nitems: null\n",
        },
    )
    with pytest.raises(RenderError) as caught:
        _render(tmp_path)
    assert caught.value.problems == [
        "bad.yaml:4: the ConfigMapList's items must be a sequence of objects."
    ]
    (tmp_path / "bad.yaml").unlink()
    assert len(_render(tmp_path)) == 0


def test_list_kind_without_items_is_an_object_not_a_list(tmp_path: Path) -> None:
    """A document named FooList but without items is checked as an object of that kind."""
    _write(tmp_path, {"f.yaml": "apiVersion: v1\nkind: FooList\nmetadata: {name: f}\n"})
    with pytest.raises(RenderError, match=r"f\.yaml:1: the kind FooList \(v1\) is not served"):
        _render(tmp_path)


def test_typed_list_of_a_crd_kind_in_the_same_set_renders(tmp_path: Path) -> None:
    """GadgetList items become Gadgets, namespaced by the CRD that the same app defines."""
    (tmp_path / wild.CRD_FILE).write_text(wild.crd_yaml(kib=1))
    shutil.copy(WILD / "gadgets.yaml", tmp_path)
    result = _render(tmp_path)
    gadgets = [m for m in result.manifests if m.ref.kind == "Gadget"]
    assert [(g.ref.group, g.ref.namespace, g.source) for g in gadgets] == [
        ("wild.gitsync.test", "demo", "gadgets.yaml:5"),
        ("wild.gitsync.test", "demo", "gadgets.yaml:8"),
    ]


def test_lint_lines_of_list_items_point_into_the_item(tmp_path: Path) -> None:
    """A lint warning about a container in a listed Deployment names the container's line."""
    _write(
        tmp_path,
        {
            "deploys.yaml": """\
apiVersion: apps/v1
kind: DeploymentList
items:
  - metadata: {name: web}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
            - name: web
              image: registry.invalid/web:1
"""
        },
    )
    warnings = _render(tmp_path).warnings
    assert warnings
    assert all(w.startswith("deploys.yaml:11: ") for w in warnings), warnings


# --------------------------------------------------------------------------- empty documents


def test_comment_only_null_and_empty_documents_are_skipped(tmp_path: Path) -> None:
    """Comment-only, null, ~ and empty documents and --- runs make no objects and no errors."""
    _write(
        tmp_path,
        {
            "a.yaml": "# header\n# only comments\n---\n---\n---\nnull\n---\n~\n--- null\n"
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n# trailer\n",
            "comments.yml": "# nothing but a comment\n",
            "blank.yaml": "\n\n   \n",
            "null.json": "null\n",
        },
    )
    assert _sources(_render(tmp_path)) == [("ConfigMap", "a", "a.yaml:11")]


# --------------------------------------------------------------------------- JSON


def test_json_list_items_keep_their_own_lines(tmp_path: Path) -> None:
    """A v1 List in JSON expands into its items, each at the line of its opening brace."""
    shutil.copy(WILD / "list.json", tmp_path)
    assert _sources(_render(tmp_path)) == [
        ("ServiceAccount", "wild", "list.json:6"),
        ("Service", "wild", "list.json:11"),
    ]


def test_json_typed_list_on_one_line_and_a_stream_of_objects(tmp_path: Path) -> None:
    """Compact JSON lists and several JSON objects in one file are read as kubectl reads them."""
    _write(
        tmp_path,
        {
            "compact.json": '{"apiVersion":"v1","kind":"ConfigMapList","items":'
            '[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}',
            "stream.json": '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}\n'
            'null\n{"apiVersion": "v1", "kind": "ConfigMap",\n "metadata": {"name": "d"}}\n',
        },
    )
    assert _sources(_render(tmp_path)) == [
        ("ConfigMap", "a", "compact.json:1"),
        ("ConfigMap", "b", "compact.json:1"),
        ("ConfigMap", "c", "stream.json:1"),
        ("ConfigMap", "d", "stream.json:3"),
    ]


def test_file_content_not_its_name_decides_json_or_yaml(tmp_path: Path) -> None:
    """YAML in a .json file is read as YAML; JSON in a .yaml file as JSON (kubectl sniffs '{')."""
    _write(
        tmp_path,
        {
            "a.json": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: yaml-in-json}\n",
            "b.yaml": '\n{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"}}\n',
            "c.yaml": "{apiVersion: v1, kind: ConfigMap, metadata: {name: flow}}\n",
        },
    )
    assert _sources(_render(tmp_path)) == [
        ("ConfigMap", "yaml-in-json", "a.json:1"),
        ("ConfigMap", "j", "b.yaml:2"),
        ("ConfigMap", "flow", "c.yaml:1"),
    ]


def test_json_problems_name_the_line(tmp_path: Path) -> None:
    """A JSON syntax error and a duplicate key in a list item are reported at their lines."""
    _write(
        tmp_path,
        {
            "broken.json": '{\n  "apiVersion": "v1",\n  "kind": \n}\n',
            "dup.json": '\n\n{"apiVersion": "v1", "kind": "List", "items": [\n'
            ' {"kind": "ConfigMap", "kind": "Secret"}]}\n',
        },
    )
    with pytest.raises(RenderError) as caught:
        _render(tmp_path)
    assert caught.value.problems == [
        "broken.json:4: JSON syntax error: Expecting value (column 1).",
        "dup.json:3: the key 'kind' appears twice in one JSON object.",
    ]


def test_read_documents_leaves_lists_whole_and_flatten_list_expands_them() -> None:
    """read_documents only splits a file; flatten_list is what expands a list's items."""
    text = "apiVersion: v1\nkind: List\nitems:\n- {kind: A}\n- {kind: B}\n"
    (doc,) = read_documents(text, ReadLimits())
    items, errors = flatten_list(doc)
    assert ([i.value["kind"] for i in items], [i.line for i in items], errors) == (
        ["A", "B"],
        [4, 5],
        [],
    )
    plain = Document(value={"kind": "ConfigMap"}, line=1)
    assert flatten_list(plain) == ([plain], [])


# --------------------------------------------------------------------------- big objects


def test_wild_fixture_renders_every_shape_at_its_line(tmp_path: Path) -> None:
    """fixtures/wild plus a ~950 KiB ConfigMap renders 13 objects, each with file:line."""
    app = tmp_path / "wild"
    shutil.copytree(WILD, app)
    (app / "dashboards.yaml").write_text(wild.configmap_yaml())
    result = _render(app)
    assert _sources(result) == [
        ("ConfigMap", "wild-settings", "configmaps.yaml:11"),
        ("ConfigMap", "wild-flags", "configmaps.yaml:15"),
        ("CustomResourceDefinition", wild.CRD_NAME, "crd-gadgets.yaml:2"),
        ("ConfigMap", wild.CONFIGMAP_NAME, "dashboards.yaml:1"),
        ("Gadget", "first", "gadgets.yaml:5"),
        ("Gadget", "second", "gadgets.yaml:8"),
        ("ServiceAccount", "wild", "list.json:6"),
        ("Service", "wild", "list.json:11"),
        ("Role", "wild-reader", "rbac.yaml:4"),
        ("Role", "wild-gadget-editor", "rbac.yaml:10"),
        ("RoleBinding", "wild-reader", "rbac.yaml:22"),
        ("RoleBinding", "wild-gadget-editor", "rbac.yaml:28"),
        ("ConfigMap", "wild-json", "single.json:1"),
    ]
    assert result.warnings == ()


def test_big_crd_and_configmap_are_within_the_default_limits(tmp_path: Path) -> None:
    """A CRD over 256 KiB and a ConfigMap with 950 KiB of data are legal shapes, not oversize."""
    crd = wild.crd_yaml()
    configmap = wild.configmap_yaml()
    assert len(crd) > 256 * 1024
    _write(tmp_path, {"crd.yaml": crd, "cm.yaml": configmap})
    result = _render(tmp_path)
    data = next(m for m in result.manifests if m.ref.kind == "ConfigMap").obj["data"]
    size = sum(len(v.encode()) for v in data.values())
    assert 900 * 1024 < size < 1024 * 1024
    limits = RenderLimits()
    assert limits.max_file_bytes >= 16 * 1024 * 1024
    assert limits.max_total_bytes >= 64 * 1024 * 1024


def test_json_item_lines_survive_escapes_and_nested_items_keys(tmp_path: Path) -> None:
    """Escaped quotes and an inner "items" key do not confuse where each list item starts."""
    _write(
        tmp_path,
        {
            "l.json": """\
{"kind": "List", "metadata": {"annotations": {"say \\"items\\"": "[{"}},
 "apiVersion": "v1",
 "items": [

   {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"},
    "data": {"items": "[1, 2]"}},
   {"apiVersion": "v1", "kind": "ConfigMap",
    "metadata": {"name": "b"}}
 ]}
"""
        },
    )
    assert _sources(_render(tmp_path)) == [
        ("ConfigMap", "a", "l.json:5"),
        ("ConfigMap", "b", "l.json:7"),
    ]


def test_gc_pause_nests_and_restores_the_collector() -> None:
    """The collector is off inside, back on after the outermost pause, and left off if it was."""
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


# --------------------------------------------------------------------------- CLI exit codes


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (SyncResult(app="a", revision="", result="failed", error="x.yaml:1: bad", refused=True), 2),
        (SyncResult(app="a", revision="abc", result="failed", counts={"create": 1}), 1),
        (SyncResult(app="a", revision="abc", result="rolled-back", rolled_back_to="def"), 1),
    ],
)
def test_sync_exit_code_tells_a_refused_commit_from_a_failed_rollout(
    result: SyncResult, code: int
) -> None:
    """A commit refused before any write exits 2; a failed apply or gate exits 1."""
    assert _sync_exit_code(result) == code
