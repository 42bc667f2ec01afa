"""Manifests from the wild against the real cluster: typed lists, JSON lists, big objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitsync.cli import main
from gitsync.kube import Kube
from tests.support import wild
from tests.support.app_fixtures import App
from tests.support.app_fixtures import ref as _ref
from tests.support.cluster_fixtures import Kubectl

pytestmark = [pytest.mark.cluster, pytest.mark.git]

WILD = Path(__file__).resolve().parents[2] / "fixtures" / "wild"
WRITES = ("apply", "create", "update", "delete", "patch")
NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
NESTED = """\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMapList
    items:
      - metadata: {name: inner}
"""


def _wild_tree(ns: str) -> dict[str, str]:
    """fixtures/wild, a ~950 KiB ConfigMap and the app's Namespace, as one commit's files."""
    files = {p.name: p.read_text() for p in sorted(WILD.iterdir()) if p.is_file()}
    files["dashboards.yaml"] = wild.configmap_yaml()
    files["namespace.yaml"] = NAMESPACE.format(ns=ns)
    return files


def _writes(kube: Kube) -> int:
    return sum(kube.calls[v] for v in WRITES)


def _delete_crd(kube: Kube) -> None:
    kube.delete(_ref("CustomResourceDefinition", wild.CRD_NAME, group="apiextensions.k8s.io"))


def test_wild_directory_syncs_and_resync_writes_nothing(
    app: App, kube: Kube, kubectl: Kubectl, tmp_path: Path
) -> None:
    """Typed lists, a JSON List, a 300 KiB CRD and a ~1 MiB ConfigMap sync; a resync is a no-op."""
    tree = _wild_tree(app.ns)
    app.repo.commit(tree)
    try:
        result = app.sync()
        assert result.result == "synced", result.error
        assert result.counts["create"] == 14
        ns = app.ns
        for kind, name, group in (
            ("ConfigMap", "wild-settings", ""),
            ("ConfigMap", "wild-json", ""),
            ("ServiceAccount", "wild", ""),
            ("Service", "wild", ""),
            ("Role", "wild-gadget-editor", "rbac.authorization.k8s.io"),
            ("RoleBinding", "wild-reader", "rbac.authorization.k8s.io"),
            ("Gadget", "second", wild.GROUP),
        ):
            assert kube.get(_ref(kind, name, ns, group)) is not None, (kind, name)
        big = kube.get(_ref("ConfigMap", wild.CONFIGMAP_NAME, ns))
        assert big is not None
        assert sum(len(v.encode()) for v in big["data"].values()) > 900 * 1024
        crd = kube.get(_ref("CustomResourceDefinition", wild.CRD_NAME, "", "apiextensions.k8s.io"))
        assert crd is not None
        # Server-side apply: no last-applied annotation, which could not hold 300 KiB.
        annotations = crd["metadata"].get("annotations") or {}
        assert "kubectl.kubernetes.io/last-applied-configuration" not in annotations

        kube.calls.clear()
        again = app.sync()
        assert again.result == "unchanged", again.error
        assert again.counts["unchanged"] == 14
        assert kube.calls["apply"] == 0
        assert _writes(kube) == 0, dict(kube.calls)

        _kubectl_reads_the_same(kubectl, tree, ns, tmp_path)
    finally:
        _delete_crd(kube)


def _kubectl_reads_the_same(kubectl: Kubectl, tree: dict[str, str], ns: str, tmp: Path) -> None:
    """kubectl accepts the same files (server dry-run), and refuses the nested list too."""
    files = tmp / "wild"
    files.mkdir()
    for name, text in tree.items():
        (files / name).write_text(text)
    ok = kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=probe",
        "-n", ns, "-f", str(files), check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 14, ok.stdout
    (tmp / "nested.yaml").write_text(NESTED)
    nested = kubectl(
        "apply", "--server-side", "--dry-run=server", "-n", ns,
        "-f", str(tmp / "nested.yaml"), check=False,
    )  # fmt: skip
    assert nested.returncode != 0, nested.stdout
    assert "not a list" in nested.stderr, nested.stderr


def test_cli_sync_once_exits_2_on_a_bad_render_and_0_once_fixed(
    app: App, kube: Kube, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gitsync sync --once` exits 2 when render refuses the commit (nothing written), 0 when ok."""
    app.repo.commit({"nested.yaml": NESTED, "namespace.yaml": NAMESPACE.format(ns=app.ns)})
    args = ["sync", "--once", "--repo", app.repo.file_url, "--namespace", app.ns]
    args += ["--app", app.name, "--state-namespace", app.ctx.state_namespace]
    args += ["--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cli-cache")]
    kube.calls.clear()
    assert main(args) == 2
    assert "nested.yaml:4: a ConfigMapList inside a List" in capsys.readouterr().out
    assert _writes(kube) == 0, dict(kube.calls)
    app.repo.commit({"namespace.yaml": NAMESPACE.format(ns=app.ns)})
    assert main(args) == 0, capsys.readouterr().out
