"""tests.support.repos: the scaffolding the Git tests and the demo build repos with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.repos import BareRepo, git

pytestmark = pytest.mark.git

ROOT = Path(__file__).resolve().parents[2]


def _show(repo: BareRepo, rev: str, path: str) -> str:
    return git("--git-dir", str(repo.path), "show", f"{rev}:{path}")


def test_cli_builds_one_commit_per_version_dir_in_natural_order(tmp_path: Path) -> None:
    """The CLI commits v1, v2, v10 in that order and prints the file:// URL."""
    for version in ("v1", "v2", "v10"):
        (tmp_path / "src" / version / "deploy").mkdir(parents=True)
        (tmp_path / "src" / version / "deploy" / "app.yaml").write_text(version)
    out = tmp_path / "demo.git"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.repos", "build", "--from", str(tmp_path / "src"),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert proc.stdout.strip() == out.resolve().as_uri()
    repo = BareRepo(out)
    subjects = git("--git-dir", str(out), "log", "--format=%s", "main").splitlines()
    assert subjects == ["v10", "v2", "v1"]
    assert _show(repo, "main", "deploy/app.yaml") == "v10"
    assert [line.split()[0] for line in proc.stderr.splitlines()] == ["v1", "v2", "v10"]


def test_same_trees_give_same_shas(tmp_path: Path) -> None:
    """Fixed author and dates make shas reproducible across runs."""
    first = BareRepo(tmp_path / "a.git").commits([{"f": "1"}, {"f": "2"}])
    second = BareRepo(tmp_path / "b.git").commits([{"f": "1"}, {"f": "2"}])
    assert first == second


def test_rewrite_replaces_tip_and_non_forced_sideways_move_is_refused(tmp_path: Path) -> None:
    """rewrite() force-moves the branch; commit() without force refuses to."""
    repo = BareRepo(tmp_path / "r.git")
    v1, v2 = repo.commits([{"f": "1"}, {"f": "2"}])
    new = repo.rewrite({"f": "3"})
    assert repo.head() == new
    assert git("--git-dir", str(repo.path), "rev-parse", f"{new}^") == v1
    with pytest.raises(RuntimeError, match="force=True"):
        repo.commit({"f": "4"}, parent=v2)


def test_branch_and_tags(tmp_path: Path) -> None:
    """Commits can go to another branch; tags point where asked."""
    repo = BareRepo(tmp_path / "r.git", branch="trunk")
    base = repo.commit({"f": "1"})
    other = repo.commit({"f": "x"}, branch="feature", parent=base)
    repo.tag("v1", base, annotated=True)
    assert repo.head("feature") == other
    assert repo.head() == base
    assert git("--git-dir", str(repo.path), "rev-parse", "v1^{commit}") == base
