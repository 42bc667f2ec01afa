"""Build bare Git repositories with known commits, for tests and the demo.

Commits are written with plumbing (``add`` into a private index, ``write-tree``,
``commit-tree``, ``update-ref``) straight into the bare repository, so no clone
or push is needed and a force-push is just a non-fast-forward ``update-ref``.
Author and dates are fixed, so the same trees give the same shas on every run.

CLI (used by the demo)::

    python -m tests.support.repos build --from fixtures/repos/demo --out DIR

builds one commit per sub-directory of ``--from`` (``v1``, ``v2``, ... in
natural order) and prints the ``file://`` URL of the bare repository; the shas
go to stderr as ``<dir> <sha>`` lines.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.signing import SigningKey

# Fixed identity and clock: reproducible shas, and no dependence on ~/.gitconfig.
_EPOCH = 1_700_000_000
_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.test",
}


@dataclass(frozen=True, slots=True)
class Symlink:
    """A tree entry that is a symbolic link to ``target`` (for escape tests)."""

    target: str


TreeSpec = Path | Mapping[str, str | bytes | Symlink]
"""A commit's whole tree: a directory to copy, or ``{relative path: content}``."""


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(_IDENTITY)
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    return env


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run git, fail loudly with its stderr, return stripped stdout."""
    full_env = _git_env()
    if env:
        full_env.update(env)
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        msg = f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
        raise RuntimeError(msg)
    return proc.stdout.strip()


def _materialize(tree: TreeSpec, into: Path) -> None:
    if isinstance(tree, Path):
        shutil.copytree(tree, into, symlinks=True, dirs_exist_ok=True)
        return
    for rel, content in tree.items():
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Symlink):
            target.symlink_to(content.target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


class BareRepo:
    """A bare repository under construction; every write moves ``branch`` (or another)."""

    def __init__(self, path: Path, *, branch: str = "main") -> None:
        self.path = path
        self.branch = branch
        self._tick = 0
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True)
            git("init", "--bare", "--quiet", f"--initial-branch={branch}", str(path))
            # Let the smart-HTTP and daemon fixtures serve it, and allow test pushes.
            git("--git-dir", str(path), "config", "http.receivepack", "true")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def file_url(self) -> str:
        return self.path.resolve().as_uri()

    def head(self, branch: str | None = None) -> str:
        """Sha the branch points at now."""
        return git("--git-dir", str(self.path), "rev-parse", f"refs/heads/{branch or self.branch}")

    def commit(
        self,
        tree: TreeSpec,
        *,
        message: str = "",
        branch: str | None = None,
        parent: str | None = "tip",
        force: bool = False,
        sign: SigningKey | None = None,
    ) -> str:
        """Commit ``tree`` on ``branch`` and return its sha.

        ``parent="tip"`` continues the branch, ``None`` makes a root commit, a sha
        makes a child of that commit; ``force`` allows the branch to move backwards
        or sideways (a force-push). ``sign`` signs the commit with git's own signing.
        """
        branch = branch or self.branch
        ref = f"refs/heads/{branch}"
        old = self._resolve(ref)
        parents: list[str] = []
        if parent == "tip":
            if old:
                parents = [old]
        elif parent is not None:
            parents = [parent]
        self._tick += 1
        with tempfile.TemporaryDirectory(prefix="gitsync-tree-") as tmp:
            work = Path(tmp) / "work"
            work.mkdir()
            _materialize(tree, work)
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            base = ("--git-dir", str(self.path), "--work-tree", str(work))
            git(*base, "add", "--all", "--force", ".", cwd=work, env=env)
            tree_sha = git(*base, "write-tree", cwd=work, env=env)
        when = f"{_EPOCH + self._tick * 60} +0000"
        dates = {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        args = ["--git-dir", str(self.path), "commit-tree", tree_sha]
        if sign is not None:
            args = [*sign.config, *args, "-S"]
            dates.update(sign.env)
        for p in parents:
            args += ["-p", p]
        args += ["-m", message or f"commit {self._tick}"]
        sha = git(*args, env=dates)
        update = ["--git-dir", str(self.path), "update-ref", ref, sha]
        if not force and old and old not in parents:
            msg = f"refusing to move {ref} from {old} to unrelated {sha}; pass force=True"
            raise RuntimeError(msg)
        if not force and old:
            update.append(old)
        git(*update)
        return sha

    def commits(self, trees: Sequence[TreeSpec], *, branch: str | None = None) -> list[str]:
        """Commit each tree in turn on ``branch``; return the shas oldest first."""
        return [self.commit(t, branch=branch, message=f"v{i}") for i, t in enumerate(trees, 1)]

    def rewrite(self, tree: TreeSpec, *, message: str = "", branch: str | None = None) -> str:
        """Force-push: replace the branch tip by a new commit on the tip's parent."""
        branch = branch or self.branch
        tip = self.head(branch)
        parent = self._resolve(f"{tip}^")
        return self.commit(
            tree, message=message or "rewritten", branch=branch, parent=parent, force=True
        )

    def tag(
        self,
        name: str,
        sha: str | None = None,
        *,
        annotated: bool = False,
        sign: SigningKey | None = None,
    ) -> None:
        """Tag ``sha`` (default: the branch tip), lightweight, annotated or signed."""
        target = sha or self.head()
        args = ["--git-dir", str(self.path), "tag", "--force"]
        env = {"GIT_COMMITTER_DATE": f"{_EPOCH} +0000"}
        if sign is not None:
            args = [*sign.config, *args, "-s"]
            env.update(sign.env)
        if annotated or sign is not None:
            args += ["-m", f"tag {name}"]
            if sign is None:
                args.insert(-2, "-a")
        git(*args, name, target, env=env)

    def _resolve(self, rev: str) -> str | None:
        try:
            return git("--git-dir", str(self.path), "rev-parse", "--verify", "--quiet", rev)
        except RuntimeError:
            return None


def _natural_key(path: Path) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def build_from_dir(source: Path, out: Path, *, branch: str = "main") -> tuple[BareRepo, list[str]]:
    """One commit per sub-directory of ``source`` (natural order) into a bare repo at ``out``."""
    versions = sorted((p for p in source.iterdir() if p.is_dir()), key=_natural_key)
    if not versions:
        msg = f"{source} has no version sub-directories (v1, v2, ...)"
        raise ValueError(msg)
    repo = BareRepo(out, branch=branch)
    shas = [repo.commit(v, message=v.name) for v in versions]
    return repo, shas


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the file:// URL of the built repository."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.repos")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a bare repo, one commit per version directory")
    build.add_argument("--from", dest="source", type=Path, required=True)
    build.add_argument("--out", type=Path, required=True, help="bare repository path to create")
    build.add_argument("--branch", default="main")
    args = parser.parse_args(argv)
    repo, shas = build_from_dir(args.source, args.out, branch=args.branch)
    versions = sorted((p for p in args.source.iterdir() if p.is_dir()), key=_natural_key)
    for version, sha in zip(versions, shas, strict=True):
        print(f"{version.name} {sha}", file=sys.stderr)
    print(repo.file_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
