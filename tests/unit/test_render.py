"""Render stage: good set, kustomize, lint, and the bad-input corpus in fixtures/bad."""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from gitsync.errors import RenderError
from gitsync.model import APP_LABEL, MANAGED_BY_LABEL, ManifestSet
from gitsync.render.manifests import RenderLimits, StaticKinds, render

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
BAD = FIXTURES / "bad"
PROBLEM = re.compile(r"^[^\s:]+(?: \([^)]*\))?:\d+: \S")


def _render(app: Path, repo: Path | None = None, **kwargs: Any) -> ManifestSet:
    options: dict[str, Any] = {
        "default_namespace": "demo",
        "app_name": "shop",
        "kinds": StaticKinds(),
    }
    options.update(kwargs)
    return render(app, repo_root=repo or app, **options)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _kubectl() -> str | None:
    """The kubectl hack/build-testcluster.sh built, else the one on PATH."""
    cache = Path(
        os.environ.get("GITSYNC_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gitsync"
    )
    for candidate in sorted((cache / "testcluster").glob("*/bin/kubectl"), reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("kubectl")


KUBECTL = _kubectl()
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="no kubectl for `kubectl kustomize`")


# --------------------------------------------------------------------------- good set


def test_good_set_renders_each_object_with_its_file_and_line() -> None:
    """Every object in fixtures/manifests keeps file:line of where its document starts."""
    result = _render(FIXTURES / "manifests", ROOT, default_namespace="gitsync-demo")
    sources = {(m.ref.kind, m.ref.name): m.source for m in result.manifests}
    d = "fixtures/manifests"
    assert sources == {
        ("Widget", "sprocket"): f"{d}/00-widget.yaml:2",
        ("Deployment", "web"): f"{d}/01-deployment.yaml:1",
        ("Service", "web"): f"{d}/02-service.yaml:1",
        ("Secret", "web-credentials"): f"{d}/03-secret.yaml:1",
        ("ConfigMap", "web-settings"): f"{d}/04-configmap.yaml:1",
        ("RoleBinding", "web-reads-settings"): f"{d}/05-rolebinding.yaml:1",
        ("Role", "settings-reader"): f"{d}/06-role.yaml:1",
        ("ServiceAccount", "web"): f"{d}/07-serviceaccount.yaml:1",
        ("Namespace", "gitsync-demo"): f"{d}/08-namespace.yaml:1",
        ("CustomResourceDefinition", "widgets.gitsync.test"): f"{d}/09-crd.yaml:1",
    }
    # Path order, not dependency order: ordering is order.py's job.
    assert [m.ref.kind for m in result.manifests][:2] == ["Widget", "Deployment"]


def test_good_set_gets_both_gitsync_labels_on_every_object() -> None:
    """managed-by and app labels are added to metadata.labels, keeping the object's own."""
    result = _render(FIXTURES / "manifests", default_namespace="gitsync-demo")
    for m in result.manifests:
        labels = m.obj["metadata"]["labels"]
        assert labels[MANAGED_BY_LABEL] == "gitsync", m.source
        assert labels[APP_LABEL] == "shop", m.source
    deployment = next(m for m in result.manifests if m.ref.kind == "Deployment")
    assert deployment.obj["metadata"]["labels"]["app"] == "web"


def test_labels_never_touch_selectors_or_pod_templates() -> None:
    """Only metadata.labels changes; a Deployment's selector and template labels stay as written."""
    result = _render(FIXTURES / "manifests", default_namespace="gitsync-demo")
    spec = next(m for m in result.manifests if m.ref.kind == "Deployment").obj["spec"]
    assert spec["selector"] == {"matchLabels": {"app": "web"}}
    assert spec["template"]["metadata"]["labels"] == {"app": "web"}


def test_aliased_labels_are_copied_not_shared(tmp_path: Path) -> None:
    """A YAML alias shared between labels and selector does not leak gitsync labels into it."""
    _write(
        tmp_path,
        {
            "deploy.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: &labels {app: web}
spec:
  selector: {matchLabels: *labels}
  template:
    metadata: {labels: *labels}
    spec:
      containers: [{name: web, image: registry.invalid/web:1}]
"""
        },
    )
    obj = _render(tmp_path).manifests[0].obj
    assert obj["spec"]["selector"]["matchLabels"] == {"app": "web"}
    assert obj["spec"]["template"]["metadata"]["labels"] == {"app": "web"}
    assert obj["metadata"]["labels"][APP_LABEL] == "shop"


def test_default_namespace_is_filled_only_on_namespaced_kinds() -> None:
    """Namespaced objects without a namespace get the default; cluster-scoped ones get none."""
    result = _render(FIXTURES / "manifests", default_namespace="elsewhere")
    namespaces = {m.ref.kind: m.ref.namespace for m in result.manifests}
    assert namespaces["Service"] == "elsewhere"
    assert namespaces["Widget"] == "elsewhere"  # namespaced by the CRD in the same set
    assert namespaces["Deployment"] == "gitsync-demo"  # written explicitly
    assert namespaces["Namespace"] == ""
    assert namespaces["CustomResourceDefinition"] == ""


def test_unquoted_times_and_dates_stay_text() -> None:
    """12:30 and 2024-01-01 stay strings, as kubectl reads them (no sexagesimal, no dates)."""
    result = _render(FIXTURES / "manifests", default_namespace="gitsync-demo")
    data = next(m for m in result.manifests if m.ref.kind == "ConfigMap").obj["data"]
    assert data == {"LOG_LEVEL": "info", "START_AT": "12:30", "RELEASED": "2024-01-01"}


def test_good_set_has_no_lint_warnings() -> None:
    """A container with limits, readiness probe and securityContext draws no warning."""
    assert _render(FIXTURES / "manifests", default_namespace="gitsync-demo").warnings == ()


def test_list_kind_is_flattened_with_each_item_line(tmp_path: Path) -> None:
    """kind: List becomes its items, each remembering the line it starts on."""
    _write(
        tmp_path,
        {
            "list.yaml": """\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: one}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: two}
"""
        },
    )
    result = _render(tmp_path)
    assert [(m.ref.name, m.source) for m in result.manifests] == [
        ("one", "list.yaml:4"),
        ("two", "list.yaml:7"),
    ]


def test_empty_documents_and_comments_are_skipped(tmp_path: Path) -> None:
    """Empty documents between separators produce no objects and no errors."""
    _write(
        tmp_path,
        {
            "a.yaml": "---\n# only a comment\n---\n\n---\napiVersion: v1\nkind: ConfigMap\n"
            "metadata: {name: a}\n---\n",
            "empty.yml": "",
        },
    )
    result = _render(tmp_path)
    assert [m.source for m in result.manifests] == ["a.yaml:6"]


def test_json_and_nested_files_are_read_in_path_order(tmp_path: Path) -> None:
    """.json files are read too, and subdirectories sort with their names."""
    _write(
        tmp_path,
        {
            "b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
            "a/z.json": '\n{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "az"}}',
            "a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            "notes.txt": "not a manifest",
        },
    )
    result = _render(tmp_path)
    assert [m.source for m in result.manifests] == ["a/z.json:2", "a.yaml:1", "b.yaml:1"]


def test_dot_directories_are_not_manifests(tmp_path: Path) -> None:
    """.github workflows and other dot-entries are skipped."""
    _write(
        tmp_path,
        {
            ".github/workflows/ci.yaml": "on: push\njobs: {}\n",
            "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
        },
    )
    assert [m.source for m in _render(tmp_path).manifests] == ["cm.yaml:1"]


def test_symlink_inside_the_repository_is_followed(tmp_path: Path) -> None:
    """A link to a file elsewhere in the repository is read under the link's name."""
    _write(tmp_path, {"shared/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"})
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "cm.yaml").symlink_to("../shared/cm.yaml")
    result = _render(tmp_path / "app", tmp_path)
    assert [m.source for m in result.manifests] == ["app/cm.yaml:1"]


def test_resolver_decides_scope_of_kinds_it_knows(tmp_path: Path) -> None:
    """A kind the resolver serves as cluster-scoped renders without a namespace."""

    class Resolver:
        def scope(self, api_version: str, kind: str) -> Literal["Namespaced", "Cluster"] | None:
            return "Cluster" if (api_version, kind) == ("example.io/v1", "Thing") else None

    _write(tmp_path, {"t.yaml": "apiVersion: example.io/v1\nkind: Thing\nmetadata: {name: t}\n"})
    assert _render(tmp_path, kinds=Resolver()).manifests[0].ref.namespace == ""
    with pytest.raises(RenderError, match=r"t\.yaml:1: the kind Thing"):
        _render(tmp_path)


def test_app_path_outside_the_repository_is_refused(tmp_path: Path) -> None:
    """The app directory itself must resolve inside repo_root."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "other").mkdir()
    with pytest.raises(RenderError, match="outside the repository"):
        _render(tmp_path / "other", tmp_path / "repo")


# --------------------------------------------------------------------------- lint


def test_lint_warns_about_limits_probe_and_security_context(tmp_path: Path) -> None:
    """Each missing setting is one warning naming the container's own line; Jobs skip readiness."""
    _write(
        tmp_path,
        {
            "deploy.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: registry.invalid/web:1
""",
            "job.yaml": """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: run
              image: registry.invalid/run:1
              resources: {limits: {cpu: 100m}}
""",
        },
    )
    warnings = _render(tmp_path).warnings
    assert warnings == (
        "deploy.yaml:10: Deployment 'demo/web': container 'web' has no resources.limits; "
        "it can starve its node.",
        "deploy.yaml:10: Deployment 'demo/web': container 'web' has no readinessProbe; "
        "it counts as ready as soon as it starts.",
        "deploy.yaml:10: Deployment 'demo/web': container 'web' has no securityContext; "
        "it runs with the image's user and privileges.",
        "job.yaml:12: CronJob 'demo/nightly': container 'run' has no securityContext; "
        "it runs with the image's user and privileges.",
    )


# --------------------------------------------------------------------------- bad corpus


def _oversize(app: Path) -> None:
    (app / "big.yaml").write_bytes(b"# " + b"x" * (16 * 1024 * 1024) + b"\n")


def _symlink_escape(app: Path) -> None:
    outside = app.parent / "outside.yaml"
    outside.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: secret-stuff}\n")
    (app / "link.yaml").symlink_to(outside)


def _symlink_loop(app: Path) -> None:
    (app / "nested").mkdir()
    (app / "nested" / "again").symlink_to("..")


def _not_regular(app: Path) -> None:
    os.mkfifo(app / "pipe.yaml")


def _total_size(app: Path) -> None:
    for i in range(5):
        (app / f"part{i}.yaml").write_bytes(b"# " + b"x" * (16 * 1024 * 1024 - 10) + b"\n")


GENERATED: dict[str, Callable[[Path], None]] = {
    "oversize": _oversize,
    "symlink-escape": _symlink_escape,
    "symlink-loop": _symlink_loop,
    "not-regular": _not_regular,
    "total-size": _total_size,
}
CASES = sorted(p.name for p in BAD.iterdir() if p.is_dir())


def _expected(case: str) -> list[str]:
    lines = (BAD / case / "expected.txt").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def _bad_app(case: str, tmp_path: Path) -> Path:
    app = tmp_path / "repo" / case
    shutil.copytree(BAD / case, app, symlinks=True, ignore=shutil.ignore_patterns("expected.txt"))
    if case in GENERATED:
        GENERATED[case](app)
    return app


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_naming_file_and_line(case: str, tmp_path: Path) -> None:
    """Each fixtures/bad case raises RenderError whose problems say what and where."""
    app = _bad_app(case, tmp_path)
    with pytest.raises(RenderError) as caught:
        _render(app)
    message = str(caught.value)
    for expected in _expected(case):
        assert expected in message, f"{case}: {expected!r} not in:\n{message}"
    for problem in caught.value.problems:
        assert PROBLEM.match(problem), f"{case}: not 'file:line: ...': {problem!r}"


def test_every_bad_case_has_an_expectation() -> None:
    """The corpus stays meaningful: every case directory names what it expects."""
    assert len(CASES) >= 20
    for case in CASES:
        assert _expected(case), case
        assert any(re.search(r":\d+: ", line) for line in _expected(case)), case


def test_all_problems_across_files_are_reported_together(tmp_path: Path) -> None:
    """A syntax error in one file does not hide the problems of the others."""
    with pytest.raises(RenderError) as caught:
        _render(_bad_app("many-problems", tmp_path))
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert [p.split(":", 1)[0] for p in problems] == ["b.yaml", "a.yaml", "a.yaml", "c.yaml"]
    assert "could not be read may define it" in problems[-1]


def test_limits_are_configurable(tmp_path: Path) -> None:
    """A smaller alias limit refuses a document the default accepts."""
    _write(
        tmp_path,
        {
            "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: &l {x: y}}\n"
            "data: {a: b}\nimmutable: false\nextra: [*l, *l]\n"
        },
    )
    assert len(_render(tmp_path)) == 1
    with pytest.raises(RenderError, match=r"cm\.yaml:6: the document uses more than 1 aliases"):
        _render(tmp_path, limits=RenderLimits(max_aliases=1))


def test_file_mode_problems_do_not_read_the_file(tmp_path: Path) -> None:
    """An unreadable file is reported, not raised as an OSError."""
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = _write(tmp_path, {"cm.yaml": "a: b\n"}) / "cm.yaml"
    path.chmod(0)
    try:
        with pytest.raises(RenderError, match=r"cm\.yaml:1: cannot read the file"):
            _render(tmp_path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# --------------------------------------------------------------------------- kustomize


@needs_kubectl
def test_kustomize_overlay_renders_with_origins_mapped_to_files() -> None:
    """The prod overlay builds; originAnnotations point each object back to file:line."""
    assert KUBECTL is not None
    result = _render(
        FIXTURES / "kustomize" / "overlays" / "prod", ROOT, kustomize=[KUBECTL, "kustomize"]
    )
    by_kind = {m.ref.kind: m for m in result.manifests}
    assert set(by_kind) == {"Namespace", "ConfigMap", "Service", "Deployment"}
    k = "fixtures/kustomize"
    assert by_kind["Deployment"].source == f"{k}/base/deployment.yaml:1"
    assert by_kind["Service"].source == f"{k}/base/service.yaml:1"
    assert by_kind["Namespace"].source == f"{k}/overlays/prod/namespace.yaml:1"
    assert by_kind["ConfigMap"].source == f"{k}/base/kustomization.yaml (ConfigMapGenerator)"
    deployment = by_kind["Deployment"].obj
    assert deployment["metadata"]["name"] == "prod-api"
    assert deployment["metadata"]["namespace"] == "shop-prod"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["labels"][APP_LABEL] == "shop"
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "api"}}
    assert any("container 'api' has no resources.limits" in w for w in result.warnings)


@needs_kubectl
def test_kustomize_output_without_origins_is_numbered(tmp_path: Path) -> None:
    """Without originAnnotations the source names the kustomization and the output document."""
    assert KUBECTL is not None
    _write(
        tmp_path,
        {
            "app/kustomization.yaml": "resources: [cm.yaml]\n",
            "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
        },
    )
    result = _render(tmp_path / "app", tmp_path, kustomize=[KUBECTL, "kustomize"])
    assert [(m.ref.name, m.source) for m in result.manifests] == [
        ("a", "app/kustomization.yaml (kustomize output doc 1)"),
        ("b", "app/kustomization.yaml (kustomize output doc 2)"),
    ]
    assert "config.kubernetes.io/origin" not in str(result.manifests[0].obj)


@needs_kubectl
def test_kustomize_failure_is_a_render_error(tmp_path: Path) -> None:
    """kustomize's own error (a patch with no target) comes back as a problem with its stderr."""
    assert KUBECTL is not None
    _write(
        tmp_path,
        {
            "kustomization.yaml": "resources: [cm.yaml]\npatches: [{path: p.yaml}]\n",
            "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            "p.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: missing}\ndata: {x: y}\n",
        },
    )
    with pytest.raises(RenderError, match=r"kustomization\.yaml:1: kustomize failed \(exit 1\)"):
        _render(tmp_path, kustomize=[KUBECTL, "kustomize"])


def test_missing_kustomize_command_is_a_render_error(tmp_path: Path) -> None:
    """A kustomize binary that does not exist is reported, not raised as FileNotFoundError."""
    _write(tmp_path, {"kustomization.yaml": "resources: []\n"})
    with pytest.raises(RenderError, match="was not found"):
        _render(tmp_path, kustomize=[str(tmp_path / "no-such-kustomize")])


def test_kustomize_that_hangs_is_stopped(tmp_path: Path) -> None:
    """The kustomize run has a deadline."""
    _write(tmp_path, {"kustomization.yaml": "resources: []\n"})
    slow = tmp_path / "slow-kustomize"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(RenderError, match=r"did not finish within 0\.5s"):
        _render(tmp_path, kustomize=[str(slow)], limits=RenderLimits(kustomize_timeout=0.5))


def test_kustomize_argv_restricts_loading_to_the_root(tmp_path: Path) -> None:
    """kustomize runs with --load-restrictor LoadRestrictionsRootOnly on the app directory."""
    _write(tmp_path, {"app/kustomization.yaml": "resources: []\n"})
    spy = tmp_path / "spy"
    spy.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/argv"\n'
        "printf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata: {name: x}\\n'\n"
    )
    spy.chmod(0o755)
    result = _render(tmp_path / "app", tmp_path, kustomize=[str(spy)])
    argv = (tmp_path / "argv").read_text().split()
    app = os.path.realpath(tmp_path / "app")
    assert argv == ["--load-restrictor", "LoadRestrictionsRootOnly", app]
    assert [m.ref.name for m in result.manifests] == ["x"]


# --------------------------------------------------------------------------- YAML details

_HEAD = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"


@pytest.mark.parametrize(
    ("yaml_text", "value"),
    [
        ("x: {a: 12:30, b: 2024-01-01T10:00:00Z, c: 0777, d: 0x1F, e: 1_000}",
         {"a": "12:30", "b": "2024-01-01T10:00:00Z", "c": 511, "d": 31, "e": 1000}),
        ("x: {a: yes, b: 'yes', c: ~, d: !!str 123, e: !!int '12', f: 1.5}",
         {"a": True, "b": "yes", "c": None, "d": "123", "e": 12, "f": 1.5}),
        ("x: {on: push, 8080: http, null: z}", {"true": "push", "8080": "http", "null": "z"}),
        ("b: &b {a: 1, b: 2}\no: &o {b: 3}\nx: {<<: [*o, *b], c: 4}", {"b": 3, "a": 1, "c": 4}),
    ],
)  # fmt: skip
def test_yaml_values_are_read_as_kubectl_reads_them(
    yaml_text: str, value: object, tmp_path: Path
) -> None:
    """YAML 1.1 scalars without dates or sexagesimals; keys become strings; merge keys work."""
    _write(tmp_path, {"cm.yaml": _HEAD + yaml_text + "\n"})
    assert _render(tmp_path).manifests[0].obj["x"] == value


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("x: &a [1, *a]", "cm.yaml:4: the alias *a refers to a node that contains it."),
        ("x: *nowhere", "cm.yaml:4: the alias *nowhere has no anchor defined before it."),
        ("x: .inf", "cm.yaml:4: .inf cannot be represented in JSON"),
        ("x: !!binary aGk=", "cm.yaml:4: the YAML tag tag:yaml.org,2002:binary is not supported"),
        ("x: !!int nope", "cm.yaml:4: 'nope' is not a valid tag:yaml.org,2002:int."),
        ("x:\n  ? [a]\n  : 1", "cm.yaml:5: a mapping key is a collection"),
        ("x: 1" + "0" * 200, "cm.yaml:4: the integer 100000000000… has 201 digits"),
        ("x: {a: 1, <<: 2}", "cm.yaml:4: a merge key (<<) needs a mapping or a list of them."),
    ],
)
def test_yaml_that_cannot_become_json_is_refused(
    yaml_text: str, message: str, tmp_path: Path
) -> None:
    """Cycles, dangling aliases, non-finite floats, foreign tags and odd keys are problems."""
    _write(tmp_path, {"cm.yaml": _HEAD + yaml_text + "\n"})
    with pytest.raises(RenderError) as caught:
        _render(tmp_path)
    assert message in str(caught.value)


def test_problems_in_files_after_an_unreadable_one_are_still_found(tmp_path: Path) -> None:
    """A CR whose CRD file is broken is flagged with a hint, not as a bare unknown kind."""
    _write(
        tmp_path,
        {
            "a-crd.yaml": "apiVersion: apiextensions.k8s.io/v1\nkind: [\n",
            "b-widget.yaml": "apiVersion: gitsync.test/v1\nkind: Widget\nmetadata: {name: w}\n",
        },
    )
    with pytest.raises(RenderError) as caught:
        _render(tmp_path)
    assert caught.value.problems[0].startswith("a-crd.yaml:3: YAML syntax error")
    assert caught.value.problems[1].startswith("b-widget.yaml:1: the kind Widget")
    assert caught.value.problems[1].endswith("(A file that could not be read may define it.)")
