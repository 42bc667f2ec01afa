"""Helm charts: hooks as waves, output traced to chart files, checks before helm runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import structlog

from gitsync import config
from gitsync.errors import ConfigError, RenderError
from gitsync.model import RECREATE_ANNOTATION, WAVE_ANNOTATION
from gitsync.render.helm import (
    FOUNDATION_WAVE,
    HOOK_JOB_TTL,
    error_problems,
    foundations_first,
    map_hook,
    offline_env,
    read_output,
)
from gitsync.render.manifests import HelmSettings, RenderLimits, StaticKinds, render

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "fixtures" / "charts"


def hooked(hook: str, kind: str = "ConfigMap", **annotations: str) -> dict[str, Any]:
    api = "batch/v1" if kind == "Job" else "v1"
    spec = {"spec": {"template": {}}} if kind == "Job" else {}
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": "h", "annotations": {"helm.sh/hook": hook, **annotations}},
        **spec,
    }


def notes(obj: dict[str, Any] | str) -> dict[str, str]:
    assert isinstance(obj, dict), obj
    result: dict[str, str] = obj["metadata"]["annotations"]
    return result


# --------------------------------------------------------------------------- hooks


def test_pre_hooks_go_before_everything_ordered_by_weight() -> None:
    """pre-install/pre-upgrade → a negative wave, lower weight first; recreate by default."""
    first = notes(map_hook(hooked("pre-install,pre-upgrade", **{"helm.sh/hook-weight": "-5"})))
    second = notes(map_hook(hooked("pre-upgrade", **{"helm.sh/hook-weight": "3"})))
    assert first[WAVE_ANNOTATION] == "-1005"
    assert second[WAVE_ANNOTATION] == "-997"
    assert int(first[WAVE_ANNOTATION]) < int(second[WAVE_ANNOTATION]) < 0
    assert first[RECREATE_ANNOTATION] == "true"  # before-hook-creation is Helm's default


def test_post_hooks_go_after_everything() -> None:
    """post-install/post-upgrade → a positive wave; weights are clamped so pre stays < 0."""
    assert notes(map_hook(hooked("post-install")))[WAVE_ANNOTATION] == "1000"
    huge = notes(map_hook(hooked("post-upgrade", **{"helm.sh/hook-weight": "5000"})))
    assert huge[WAVE_ANNOTATION] == "1999"
    low = notes(map_hook(hooked("pre-install", **{"helm.sh/hook-weight": "999999"})))
    assert low[WAVE_ANNOTATION] == "-1"
    bad = notes(map_hook(hooked("post-install", **{"helm.sh/hook-weight": "soon"})))
    assert bad[WAVE_ANNOTATION] == "1000"


def test_a_wave_set_by_the_chart_wins() -> None:
    """A hook that already says gitsync.io/wave keeps it."""
    obj = hooked("pre-install", **{WAVE_ANNOTATION: "7"})
    assert notes(map_hook(obj))[WAVE_ANNOTATION] == "7"


def test_hook_succeeded_job_deletes_itself_after_finishing() -> None:
    """hook-succeeded on a Job → ttlSecondsAfterFinished; no recreate without
    before-hook-creation; a TTL the chart sets is kept."""
    job = map_hook(hooked("pre-install", "Job", **{"helm.sh/hook-delete-policy": "hook-succeeded"}))
    assert isinstance(job, dict)
    assert job["spec"]["ttlSecondsAfterFinished"] == HOOK_JOB_TTL
    assert RECREATE_ANNOTATION not in notes(job)
    own = hooked("pre-install", "Job", **{"helm.sh/hook-delete-policy": "hook-succeeded"})
    own["spec"]["ttlSecondsAfterFinished"] = 5
    mapped = map_hook(own)
    assert isinstance(mapped, dict)
    assert mapped["spec"]["ttlSecondsAfterFinished"] == 5
    config_map = map_hook(hooked("post-install", **{"helm.sh/hook-delete-policy": "hook-failed"}))
    assert isinstance(config_map, dict)
    assert "spec" not in config_map


def test_test_and_delete_hooks_are_skipped_with_a_reason() -> None:
    """test hooks and delete/rollback-only hooks are not applied; the reason says why."""
    assert "test hook" in str(map_hook(hooked("test")))
    assert "test hook" in str(map_hook(hooked("test-success")))
    reason = map_hook(hooked("pre-delete,post-rollback"))
    assert isinstance(reason, str)
    assert "post-rollback, pre-delete" in reason


def test_objects_without_hooks_are_left_alone() -> None:
    """No hook annotation: the very same object comes back."""
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    assert map_hook(obj) is obj


def test_namespaces_and_crds_go_before_pre_hooks() -> None:
    """With a pre hook, Namespaces and CRDs without a wave go first; without one, untouched."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    pre = map_hook(hooked("pre-install"))
    out = foundations_first([ns, cm, pre])
    assert out[0]["metadata"]["annotations"][WAVE_ANNOTATION] == str(FOUNDATION_WAVE)
    assert out[1] is cm
    assert foundations_first([ns, cm]) == [ns, cm]
    early = {**cm, "metadata": {"name": "e", "annotations": {WAVE_ANNOTATION: "-1500"}}}
    assert foundations_first([ns, early]) == [ns, early], "only a pre hook moves them"


# --------------------------------------------------------------------------- sources

OUTPUT = """\
---
# Source: shop/templates/config.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: one
---
# Source: shop/templates/config.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: two
---
# Source: shop/charts/cache/templates/cache.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: cache
---
# Source: shop/templates/tests/t.yaml
apiVersion: v1
kind: Pod
metadata:
  name: t
  annotations:
    helm.sh/hook: test
---
# Source: shop/templates/generated.yaml
apiVersion: v1
kind: Secret
metadata:
  name: made-in-a-loop
"""

TEMPLATES = {
    "Chart.yaml": "apiVersion: v2\nname: shop\nversion: 0.1.0\n",
    "templates/config.yaml": (
        "# two maps\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: two}\n"
    ),
    "charts/cache/templates/cache.yaml": "apiVersion: v1\nkind: ConfigMap\n",
    "templates/tests/t.yaml": "kind: Pod\n",
    "templates/generated.yaml": "{{ range .Values.x }}\nkind: {{ .kind }}\n{{ end }}\n",
}


def _chart(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "repo" / "apps" / "shop" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "repo" / "apps" / "shop"


def test_each_object_is_traced_to_its_template_line(tmp_path: Path) -> None:
    """# Source: comments map to repository files; the n-th object of a kind to its n-th
    kind: line; a templated kind to line 1; a test hook is skipped and logged."""
    chart = _chart(tmp_path, TEMPLATES)
    problems: list[str] = []
    with structlog.testing.capture_logs() as logs:
        out = read_output(
            OUTPUT,
            chart=chart,
            chart_name="shop",
            repo=tmp_path / "repo",
            limits=RenderLimits(),
            problems=problems,
        )
    assert problems == []
    assert [(source, obj["metadata"]["name"]) for source, obj in out] == [
        ("apps/shop/templates/config.yaml:3", "one"),
        ("apps/shop/templates/config.yaml:7", "two"),
        ("apps/shop/charts/cache/templates/cache.yaml:2", "cache"),
        ("apps/shop/templates/generated.yaml:1", "made-in-a-loop"),
    ]
    (skipped,) = [e for e in logs if e["event"] == "render.skipped"]
    assert skipped["name"] == "t"
    assert skipped["source"] == "apps/shop/templates/tests/t.yaml:1"
    assert "test hook" in skipped["reason"]


def test_helm_errors_name_the_chart_file_and_line(tmp_path: Path) -> None:
    """Helm's template error becomes a file:line problem with repository paths."""
    chart = _chart(tmp_path, TEMPLATES)
    stderr = (
        "walk.go:75: found symbolic link in path\n"
        'Error: template: shop/templates/config.yaml:6:15: executing "x" at <.Values.a.b>: '
        "nil pointer evaluating interface {}.b\nUse --debug flag to render out invalid YAML\n"
    )
    (problem,) = error_problems(stderr, chart=chart, chart_name="shop", repo=tmp_path / "repo")
    assert problem.startswith("apps/shop/templates/config.yaml:6: helm template failed: ")
    assert "template: apps/shop/templates/config.yaml:6:15: executing" in problem
    assert "walk.go" not in problem
    assert "--debug" not in problem
    yaml_error = "Error: YAML parse error on shop/templates/x.yaml: yaml: line 4: bad\n"
    (problem,) = error_problems(yaml_error, chart=chart, chart_name="shop", repo=tmp_path / "repo")
    assert problem.startswith("apps/shop/templates/x.yaml:1: helm template failed: YAML parse")


def test_helm_runs_without_the_users_config_or_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every HELM_* home is private, no kubeconfig, proxies lead nowhere, nothing inherited
    from the controller's environment but PATH."""
    monkeypatch.setenv("HELM_REPOSITORY_CONFIG", "/root/.config/helm/repositories.yaml")
    monkeypatch.setenv("GIT_TOKEN", "sentinel-token")
    env = offline_env(tmp_path / "home")
    for key in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME", "HELM_PLUGINS"):
        assert Path(env[key]).is_relative_to(tmp_path)
    assert Path(env["HELM_REPOSITORY_CONFIG"]).is_relative_to(tmp_path)
    assert Path(env["KUBECONFIG"]).is_relative_to(tmp_path)
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://127.0.0.1:9"
    assert env["NO_PROXY"] == ""
    assert "GIT_TOKEN" not in env
    assert "sentinel-token" not in "".join(env.values())


# --------------------------------------------------------------------------- render


@pytest.fixture
def helm_command() -> str:
    """The pinned helm from hack/build-helm.sh (cached after the first build)."""
    found = shutil.which("helm")
    if found and "gitsync" in found:
        return found
    out = subprocess.run(
        [str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True, check=True
    )
    return str(Path(out.stdout.strip()) / "helm")


def test_chart_renders_with_values_files_and_inline_values(helm_command: str) -> None:
    """Inline values win over values files, which win over the chart's values.yaml."""
    settings = HelmSettings(
        release_name="rel",
        namespace="shop-ns",
        values_files=("values-common.yaml", "values-prod.yaml"),
        values={"greeting": "inline"},
    )
    manifests = render(
        CHARTS / "shop",
        repo_root=CHARTS,
        default_namespace="ignored",
        app_name="app",
        kinds=StaticKinds(),
        helm=settings,
        helm_command=helm_command,
    )
    objects = {m.ref.name: m.obj for m in manifests.manifests}
    assert objects["rel-config"]["data"]["greeting"] == "inline"
    assert objects["rel-secret"]["stringData"]["password"] == "s3cret-common"
    assert objects["rel-web"]["spec"]["replicas"] == 2
    assert objects["rel-cache"]["data"]["size"] == "large"
    assert {m.ref.namespace for m in manifests.manifests} == {"", "shop-ns"}
    assert "rel-test" not in objects


def test_remote_dependencies_are_refused_before_helm_runs(tmp_path: Path) -> None:
    """Each unvendored remote dependency is named at its Chart.yaml line; helm never runs."""
    with pytest.raises(RenderError) as err:
        render(
            CHARTS / "remote-dep",
            repo_root=CHARTS,
            default_namespace="d",
            app_name="a",
            kinds=StaticKinds(),
            helm_command=str(tmp_path / "no-such-helm"),
        )
    assert err.value.problems == [
        "remote-dep/Chart.yaml:5: dependency 'redis' comes from the remote repository "
        "https://charts.example.invalid/bitnami and charts/ has no copy of it; gitsync renders "
        "only what is in the commit, so vendor it (`helm dependency build`, then commit charts/).",
        "remote-dep/Chart.yaml:8: dependency 'postgresql' comes from the remote repository "
        "oci://registry.example.invalid/charts and charts/ has no copy of it; gitsync renders "
        "only what is in the commit, so vendor it (`helm dependency build`, then commit charts/).",
    ]


def test_values_files_are_checked_like_every_repository_path(tmp_path: Path) -> None:
    """Escapes, missing files, URLs and non-mapping values are all reported at once."""
    chart = _chart(tmp_path, {**TEMPLATES, "list.yaml": "- a\n- b\n"})
    (tmp_path / "outside.yaml").write_text("a: 1\n")
    settings = HelmSettings(
        values_files=("../../../outside.yaml", "missing.yaml", "list.yaml", "https://x/v.yaml")
    )
    with pytest.raises(RenderError) as err:
        render(
            chart,
            repo_root=tmp_path / "repo",
            default_namespace="d",
            app_name="a",
            kinds=StaticKinds(),
            helm=settings,
            helm_command=str(tmp_path / "no-such-helm"),
        )
    text = "\n".join(err.value.problems)
    assert "valuesFiles[0]: values file '../../../outside.yaml' resolves outside" in text
    assert "valuesFiles[1]: values file 'missing.yaml' does not exist" in text
    assert "apps/shop/list.yaml:1: a values file must be a mapping." in text
    assert "valuesFiles[3]: values file 'https://x/v.yaml' is a URL" in text


def test_values_file_symlinked_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    """A values file that is a symlink to outside the repository counts as an escape."""
    chart = _chart(tmp_path, TEMPLATES)
    (tmp_path / "outside.yaml").write_text("a: 1\n")
    (chart / "values-link.yaml").symlink_to(tmp_path / "outside.yaml")
    with pytest.raises(RenderError) as err:
        render(
            chart,
            repo_root=tmp_path / "repo",
            default_namespace="d",
            app_name="a",
            kinds=StaticKinds(),
            helm=HelmSettings(values_files=("values-link.yaml",)),
            helm_command=str(tmp_path / "no-such-helm"),
        )
    assert any("'values-link.yaml' resolves outside" in p for p in err.value.problems)


def test_helm_settings_need_a_chart_and_a_chart_no_kustomization(tmp_path: Path) -> None:
    """apps[].helm on a plain directory, and a Chart.yaml beside a kustomization, are refused."""
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RenderError, match=re.escape("apps[].helm is set, but")):
        render(
            plain,
            repo_root=tmp_path,
            default_namespace="d",
            app_name="a",
            kinds=StaticKinds(),
            helm=HelmSettings(),
        )
    chart = _chart(tmp_path, {**TEMPLATES, "kustomization.yaml": "resources: []\n"})
    with pytest.raises(RenderError, match=re.escape("both a Chart.yaml and a kustomization")):
        render(
            chart,
            repo_root=tmp_path / "repo",
            default_namespace="d",
            app_name="a",
            kinds=StaticKinds(),
            helm_command=str(tmp_path / "no-such-helm"),
        )


def test_symlink_out_of_the_chart_is_refused(tmp_path: Path) -> None:
    """Helm follows symlinks, so one leading out of the repository fails the render."""
    chart = _chart(tmp_path, TEMPLATES)
    (tmp_path / "secret.yaml").write_text("kind: Secret\n")
    (chart / "templates" / "stolen.yaml").symlink_to(tmp_path / "secret.yaml")
    with pytest.raises(RenderError, match=re.escape("stolen.yaml:1: the symlink points outside")):
        render(
            chart,
            repo_root=tmp_path / "repo",
            default_namespace="d",
            app_name="a",
            kinds=StaticKinds(),
            helm_command=str(tmp_path / "no-such-helm"),
        )


def test_config_helm_section() -> None:
    """apps[].helm parses to HelmSettings; absolute values files and bad names are refused."""
    raw = {
        "name": "a",
        "repo": "https://example.invalid/r.git",
        "helm": {"releaseName": "r", "valuesFiles": ["v.yaml"], "values": {"a": {"b": 1}}},
    }
    (app,) = config.parse({"apps": [raw]}).apps
    assert app.helm_settings == HelmSettings(
        release_name="r", values_files=("v.yaml",), values={"a": {"b": 1}}
    )
    bad = {**raw, "helm": {"releaseName": "R_1", "valuesFiles": ["/etc/passwd"]}}
    with pytest.raises(ConfigError) as err:
        config.parse({"apps": [bad]})
    assert "apps[0].helm.releaseName" in str(err.value)
    assert "apps[0].helm.valuesFiles" in str(err.value)
    (plain,) = config.parse({"apps": [{"name": "a", "repo": raw["repo"]}]}).apps
    assert plain.helm_settings is None


# --------------------------------------------------------------------------- kustomize


def _kubectl() -> str | None:
    """The kubectl hack/build-testcluster.sh built, else the one on PATH (as test_render)."""
    cache = Path(
        os.environ.get("GITSYNC_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gitsync"
    )
    for candidate in sorted((cache / "testcluster").glob("*/bin/kubectl"), reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("kubectl")


KUBECTL = _kubectl()


def _kustomized(tmp_path: Path, kustomization: str | None = None) -> Path:
    app = tmp_path / "repo" / "kustomized"
    shutil.copytree(CHARTS / "kustomized", app)
    shutil.copytree(CHARTS / "shop", app / "charts" / "shop")
    if kustomization is not None:
        (app / "kustomization.yaml").write_text(kustomization)
    return app


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl for `kubectl kustomize`")
def test_kustomization_inflates_a_chart_in_the_repository(
    tmp_path: Path, helm_command: str
) -> None:
    """helmCharts with the chart vendored renders through kustomize; hooks become waves."""
    app = _kustomized(tmp_path)
    manifests = render(
        app,
        repo_root=tmp_path / "repo",
        default_namespace="k",
        app_name="a",
        kinds=StaticKinds(),
        kustomize=[str(KUBECTL), "kustomize"],
        helm_command=helm_command,
    )
    objects = {m.ref.name: m.obj for m in manifests.manifests}
    assert objects["kshop-web"]["spec"]["replicas"] == 3
    assert objects["kshop-config"]["data"]["greeting"] == "from kustomize"
    assert objects["kshop-config"]["metadata"]["labels"]["layer"] == "kustomize"
    assert objects["kshop-migrate"]["metadata"]["annotations"][WAVE_ANNOTATION] == "-1005"
    assert "kshop-test" not in objects


def test_kustomization_with_a_remote_chart_is_refused(tmp_path: Path) -> None:
    """A helmCharts chart kustomize would download, and a configHome, are refused."""
    app = _kustomized(
        tmp_path,
        "helmGlobals:\n  configHome: /root/.config/helm\n"
        "helmCharts:\n  - name: shop\n    repo: https://charts.example.invalid\n"
        "    version: 0.1.0\n  - name: absent\n",
    )
    with pytest.raises(RenderError) as err:
        render(
            app,
            repo_root=tmp_path / "repo",
            default_namespace="k",
            app_name="a",
            kinds=StaticKinds(),
            helm_command=str(tmp_path / "no-such-helm"),
        )
    text = "\n".join(err.value.problems)
    assert "kustomized/kustomization.yaml:2: helmGlobals.configHome is not supported" in text
    assert (
        "kustomized/kustomization.yaml:4: helmCharts chart 'shop' comes from "
        "https://charts.example.invalid, and kustomize would download it" in text
    )
    assert "vendor it at kustomized/charts/shop-0.1.0/shop" in text
    assert "helmCharts chart 'absent' is not in the repository" in text


def test_helm_template_error_is_reported_at_the_chart_line(
    tmp_path: Path, helm_command: str
) -> None:
    """The real helm's error names the template and line, as a repository path."""
    chart = tmp_path / "repo" / "shop"
    shutil.copytree(CHARTS / "shop", chart)
    (chart / "templates" / "bad.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\ndata:\n"
        "  a: {{ .Values.missing.deeper }}\n"
    )
    with pytest.raises(RenderError) as err:
        render(
            chart,
            repo_root=tmp_path / "repo",
            default_namespace="d",
            app_name="a",
            kinds=StaticKinds(),
            helm_command=helm_command,
        )
    (problem,) = err.value.problems
    assert problem.startswith("shop/templates/bad.yaml:6: helm template failed: "), problem
    assert "nil pointer" in problem


def test_problems_in_rendered_objects_are_all_reported_at_their_templates(
    tmp_path: Path, helm_command: str
) -> None:
    """Objects the chart renders are validated like any others, every problem at once."""
    chart = tmp_path / "repo" / "shop"
    shutil.copytree(CHARTS / "shop", chart)
    (chart / "templates" / "odd.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {}\n---\n"
        "apiVersion: example.invalid/v1\nkind: Gadget\nmetadata:\n  name: g\n"
    )
    with pytest.raises(RenderError) as err:
        render(
            chart,
            repo_root=tmp_path / "repo",
            default_namespace="d",
            app_name="a",
            kinds=StaticKinds(),
            helm_command=helm_command,
        )
    assert err.value.problems == [
        "shop/templates/odd.yaml:2: the ConfigMap has no metadata.name.",
        "shop/templates/odd.yaml:7: the kind Gadget (example.invalid/v1) is not served by the "
        "API server and no CustomResourceDefinition in this app defines it.",
    ]
