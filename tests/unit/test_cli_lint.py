"""`gitsync lint`: the render checks offline, with kubectl-diff-like exit codes."""

from pathlib import Path

from gitsync.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_lint_accepts_the_sample_set(capsys):
    """The good fixture set lints clean."""
    assert main(["lint", str(FIXTURES / "manifests")]) == 0
    assert "10 object(s) OK, 0 warning(s)" in capsys.readouterr().out


def test_lint_reports_bad_input_with_file_and_line(capsys):
    """Broken YAML exits 2 and names file:line."""
    assert main(["lint", str(FIXTURES / "bad" / "broken-yaml")]) == 2
    assert "app.yaml:7: YAML syntax error" in capsys.readouterr().err


def test_lint_strict_fails_on_warnings(capsys):
    """--strict turns lint warnings into exit 1."""
    overlay = FIXTURES / "kustomize" / "overlays" / "prod"
    args = ["lint", str(overlay), "--repo-root", str(FIXTURES / "kustomize")]
    assert main(args) == 0
    assert main([*args, "--strict"]) == 1
    assert "has no readinessProbe" in capsys.readouterr().out


def test_deploy_manifests_lint_clean():
    """config/ (the in-cluster deployment) passes gitsync's own lint with no warnings."""
    assert main(["lint", str(FIXTURES.parent / "config"), "--strict"]) == 0
