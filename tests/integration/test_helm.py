"""Helm charts from Git: rendered by the real helm binary, synced to the real cluster."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gitsync.engine import inventory
from gitsync.engine.sync import prepare_render
from gitsync.kube import Kube
from gitsync.model import WAVE_ANNOTATION
from tests.support.app_fixtures import App, ref
from tests.support.cluster_fixtures import Kubectl

pytestmark = [pytest.mark.cluster, pytest.mark.git]

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "fixtures" / "charts"
WRITES = ("apply", "create", "update", "delete", "patch")


@pytest.fixture(autouse=True)
def helm_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinned helm (hack/build-helm.sh, cached) first on PATH, as `make test` sets it."""
    out = subprocess.run(
        [str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True, check=True
    )
    monkeypatch.setenv("PATH", f"{out.stdout.strip()}{os.pathsep}{os.environ.get('PATH', '')}")


def chart_tree(name: str, into: str, **extra: str) -> dict[str, str]:
    """The fixture chart's files under ``into/`` in the repository, plus ``extra`` files."""
    base = CHARTS / name
    files = {
        f"{into}/{p.relative_to(base).as_posix()}": p.read_text(encoding="utf-8")
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }
    return files | extra


PROD_VALUES = (CHARTS / "shop" / "values-prod.yaml").read_text(encoding="utf-8")


def shop_tree(**extra: str) -> dict[str, str]:
    """The shop chart, with its prod values moved out of the chart into env/prod.yaml."""
    tree = chart_tree("shop", "shop", **{"env/prod.yaml": PROD_VALUES})
    del tree["shop/values-prod.yaml"]
    return tree | extra


def helm(**values: Any) -> dict[str, Any]:
    """apps[].helm: two values files (one outside the chart) and inline values."""
    return {
        "releaseName": "shop",
        "valuesFiles": ["values-common.yaml", "../env/prod.yaml"],
        "values": values,
    }


def _get(kube: Kube, kind: str, name: str, ns: str, group: str = "") -> dict[str, Any]:
    obj = kube.get(ref(kind, name, ns, group))
    assert obj is not None, f"{kind} {ns}/{name} was not applied"
    return obj


def test_chart_renders_syncs_and_resyncs_with_zero_writes(app: App, kube: Kube) -> None:
    """A chart with a vendored dependency, two values files, hooks and a Secret syncs whole;
    the test hook is skipped; a second sync of the same commit writes nothing."""
    app.repo.commit(shop_tree(), message="shop v1")
    result = app.sync(path="shop", helm=helm())
    assert result.result == "synced", result.error

    deploy = _get(kube, "Deployment", "shop-web", app.ns, "apps")
    assert deploy["spec"]["replicas"] == 2  # env/prod.yaml
    assert deploy["metadata"]["labels"]["gitsync.io/app"] == app.name
    config = _get(kube, "ConfigMap", "shop-config", app.ns)
    assert config["data"]["greeting"] == "hello from common"  # values-common.yaml
    assert _get(kube, "ConfigMap", "shop-cache", app.ns)["data"]["size"] == "large"  # subchart
    secret = _get(kube, "Secret", "shop-secret", app.ns)
    assert secret["type"] == "Opaque"
    job = _get(kube, "Job", "shop-migrate", app.ns, "batch")
    assert job["metadata"]["annotations"][WAVE_ANNOTATION] == "-1005"
    assert job["spec"]["ttlSecondsAfterFinished"] == 300
    announce = _get(kube, "ConfigMap", "shop-announce", app.ns)
    assert announce["metadata"]["annotations"][WAVE_ANNOTATION] == "1000"
    assert kube.get(ref("Pod", "shop-test", app.ns)) is None, "the test hook is never applied"

    _rev, manifests = prepare_render(app.config(path="shop", helm=helm()), app.ctx)
    sources = {m.ref.name: m.source for m in manifests.manifests}
    assert sources["shop-web"] == "shop/templates/deployment.yaml:2"
    assert sources["shop-secret"] == "shop/templates/config.yaml:11"
    assert sources["shop-cache"] == "shop/charts/cache/templates/cache.yaml:2"

    kube.calls.clear()
    again = app.sync(path="shop", helm=helm())
    assert again.result == "unchanged", again.error
    assert sum(kube.calls[verb] for verb in WRITES) == 0, dict(kube.calls)
    assert kube.calls["apply"] == 0


def test_values_change_rolls_out_and_a_broken_release_rolls_back(app: App, kube: Kube) -> None:
    """An image tag set in inline values rolls out (the hook Job is recreated); values that
    make the Pods crash loop roll back to the last healthy release."""
    good = app.repo.commit(shop_tree(), message="shop v1")
    assert app.sync(path="shop", helm=helm()).result == "synced"

    second = app.sync(path="shop", helm=helm(image={"tag": "2"}))
    assert second.result == "synced", second.error
    deploy = _get(kube, "Deployment", "shop-web", app.ns, "apps")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.invalid/shop:2"
    job = _get(kube, "Job", "shop-migrate", app.ns, "batch")
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.invalid/shop-migrate:2", "the hook Job was recreated"

    # A broken release is a commit: the values file in Git makes the Pods crash loop.
    crash = PROD_VALUES + "behavior: crashloop\n"
    bad = app.repo.commit(shop_tree(**{"env/prod.yaml": crash}), message="shop crashloop")
    result = app.sync(path="shop", helm=helm(image={"tag": "2"}))
    assert result.result == "rolled-back", result.error
    assert result.rolled_back_to == good
    assert "CrashLoopBackOff" in result.error
    labels = _get(kube, "Deployment", "shop-web", app.ns, "apps")["spec"]["template"]["metadata"]
    assert "gitsync.test/behavior" not in labels["labels"]
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state.quarantined == (bad,)


def test_remote_dependency_is_refused_with_nothing_written(app: App, kube: Kube) -> None:
    """A dependency from a remote chart repository that is not vendored fails the render:
    both dependencies named with their Chart.yaml line, exit 2 path, nothing written."""
    app.repo.commit(chart_tree("remote-dep", "chart"), message="remote dependency")
    kube.calls.clear()
    result = app.sync(path="chart")
    assert result.result == "failed"
    assert result.refused, "a render refusal is exit 2, as for other render errors"
    assert "chart/Chart.yaml:5: dependency 'redis'" in result.error
    assert "chart/Chart.yaml:8: dependency 'postgresql'" in result.error
    assert "oci://registry.example.invalid/charts" in result.error
    assert sum(kube.calls[verb] for verb in WRITES) == 0, dict(kube.calls)
    assert kube.get(ref("Namespace", app.ns)) is None


def test_values_file_outside_the_repository_is_refused(app: App, kube: Kube) -> None:
    """A values file path that climbs out of the repository is refused before helm runs."""
    app.repo.commit(shop_tree(), message="shop")
    kube.calls.clear()
    escape = {"valuesFiles": ["values-common.yaml", "../../../../etc/hostname"]}
    result = app.sync(path="shop", helm=escape)
    assert result.result == "failed"
    assert result.refused
    assert "valuesFiles[1]: values file '../../../../etc/hostname' resolves outside" in (
        result.error
    )
    assert sum(kube.calls[verb] for verb in WRITES) == 0, dict(kube.calls)
    assert kube.get(ref("Namespace", app.ns)) is None


def test_cli_render_diff_and_lint_work_on_charts(
    app: App, kube: Kube, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gitsync render` (Secrets masked), `diff` (chart file:line per change, then nothing to
    do after a sync) and `lint` take a chart; a refused chart exits 2."""
    import yaml

    from gitsync.cli import main

    app.repo.commit(shop_tree(), message="shop")
    raw = {
        "stateNamespace": app.ctx.state_namespace,
        "apps": [
            {
                "name": app.name,
                "repo": app.repo.file_url,
                "path": "shop",
                "namespace": app.ns,
                "helm": helm(),
            }
        ],
    }
    cfg = tmp_path / "gitsync.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    common = ["--config", str(cfg), "--kubeconfig", str(kubeconfig)]
    common += ["--cache-dir", str(tmp_path / "cli-cache")]

    assert main(["render", *common]) == 0
    out = capsys.readouterr().out
    assert "name: shop-secret" in out
    assert "s3cret-common" not in out
    assert "password: '***'" in out
    assert "name: shop-test" not in out

    assert main(["diff", *common]) == 1
    out = capsys.readouterr().out
    assert f"+ create Deployment.apps {app.ns}/shop-web  (shop/templates/deployment.yaml:2)" in out
    assert app.sync(path="shop", helm=helm()).result == "synced"
    capsys.readouterr()
    assert main(["diff", *common]) == 0
    assert "0 to create, 0 to update, 0 to prune, 7 unchanged" in capsys.readouterr().out

    assert main(["lint", str(CHARTS / "shop"), "--values", "values-prod.yaml"]) == 0
    assert "7 object(s) OK" in capsys.readouterr().out
    assert main(["lint", str(CHARTS / "remote-dep")]) == 2
    assert "dependency 'redis' comes from the remote repository" in capsys.readouterr().err


def test_drift_on_a_chart_object_is_reported(app: App, kube: Kube, kubectl: Kubectl) -> None:
    """A hand edit of an object the chart rendered is drift, like any other object's."""
    from gitsync.drift import scan as drift

    app.repo.commit(shop_tree(), message="shop")
    assert app.sync(path="shop", helm=helm()).result == "synced"
    kubectl("-n", app.ns, "patch", "configmap", "shop-config", "--type=merge", "-p",
            '{"data":{"greeting":"edited by hand"}}')  # fmt: skip
    reports = drift.scan(
        kube, app.config(path="shop", helm=helm()), state_namespace=app.ctx.state_namespace
    )
    assert {(str(r.ref), r.path) for r in reports} == {
        (f"ConfigMap {app.ns}/shop-config", "data.greeting")
    }
