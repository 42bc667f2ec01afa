"""The Git cache against real repositories: per-commit trees, pins, and garbage collection."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gitsync import config
from gitsync.runtime.controller import collect_git_cache
from gitsync.source import gitcache
from gitsync.source.git import GitAuth, SourceSpec, checkout, fetch
from tests.support.git_fixtures import GitDaemon
from tests.support.repos import BareRepo, git

pytestmark = pytest.mark.git

MakeRepo = Callable[..., BareRepo]


def _tree(n: int, *, files: int = 20) -> dict[str, str]:
    """Commit ``n``'s files: every file says ``n``, and the set of files depends on ``n``."""
    out = {f"deploy/cm-{i:02}.yaml": f"kind: ConfigMap\ndata: {{n: '{n}'}}\n" for i in range(files)}
    out[f"deploy/only-in-{n}.yaml"] = f"n: {n}\n"
    return out


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (symlinks by target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _committed(repo: BareRepo, sha: str) -> dict[str, str]:
    """The files of commit ``sha`` as git stores them, hashed like ``_snapshot``."""
    out = {}
    listing = git("--git-dir", str(repo.path), "ls-tree", "-r", "-z", sha)
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        blob = meta.split()[2]
        content = subprocess.run(
            ["git", "--git-dir", str(repo.path), "cat-file", "blob", blob],
            capture_output=True,
            check=True,
        ).stdout
        out[path] = hashlib.sha256(content).hexdigest()
    return out


def _spec(url: str, ref: str = "main") -> SourceSpec:
    return SourceSpec(url=url, ref=ref, path="deploy", auth=GitAuth(), allow_insecure=True)


def _store(cache: Path, url: str) -> gitcache.Store:
    return gitcache.Store.of(cache.resolve(), url)


def _trees(cache: Path, url: str) -> set[str]:
    return {p.name for p in _store(cache, url).trees.iterdir()}


def _refs(cache: Path, url: str) -> list[str]:
    out = git("--git-dir", str(_store(cache, url).repo), "for-each-ref", "--format=%(refname)")
    return out.splitlines()


# --- per-commit trees ---------------------------------------------------------------------


def test_checkout_yields_exactly_the_commits_files(make_repo: MakeRepo, tmp_path: Path) -> None:
    """The tree a checkout yields holds the commit's files and nothing else."""
    repo = make_repo()
    sha = repo.commit(_tree(1))
    cache = tmp_path / "cache"
    with checkout(_spec(repo.file_url), cache_dir=cache, timeout=30) as rev:
        root = Path(rev.path).parent
        assert rev.sha == sha
        assert _snapshot(root) == _committed(repo, sha)
        assert stat.S_IMODE((Path(rev.path) / "cm-00.yaml").stat().st_mode) & 0o222 == 0
        assert root.name == sha


def test_pinned_tree_is_untouched_by_concurrent_fetches(
    make_repo: MakeRepo, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """While commit A is pinned, fetches and GC of newer commits on the same ref leave it alone."""
    repo = make_repo()
    a = repo.commit(_tree(1))
    url = git_daemon.url(repo)
    cache = tmp_path / "cache"
    seen: list[str] = []
    errors: list[BaseException] = []

    def push_and_fetch() -> None:
        try:
            for n in range(2, 12):
                sha = repo.commit(_tree(n)) if n % 3 else repo.rewrite(_tree(n))
                rev = fetch(_spec(url), cache_dir=cache, timeout=30)
                assert rev.sha == sha
                seen.append(rev.sha)
                gitcache.collect(cache, keep={(url, "main")})
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    with checkout(_spec(url), cache_dir=cache, timeout=30) as rev:
        assert rev.sha == a
        root = Path(rev.path).parent
        before = _snapshot(root)
        assert before == _committed(repo, a)
        other = threading.Thread(target=push_and_fetch)
        other.start()
        while other.is_alive():
            assert _snapshot(root) == before  # read over and over while B.. land
            other.join(0.01)
        assert not errors, errors
        assert len(seen) == 10
        assert _snapshot(root) == before
        assert a in _trees(cache, url)
    # Released: the next GC keeps only what the ref points at now.
    gitcache.collect(cache, keep={(url, "main")})
    assert _trees(cache, url) == {repo.head()}


def test_two_apps_at_different_commits_read_their_own_trees(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    """A branch and an exact sha of one repository are pinned side by side, each its own files."""
    repo = make_repo()
    a = repo.commit(_tree(1))
    b = repo.commit(_tree(2))
    cache = tmp_path / "cache"
    with (
        checkout(_spec(repo.file_url, a), cache_dir=cache, timeout=30) as old,
        checkout(_spec(repo.file_url), cache_dir=cache, timeout=30) as new,
    ):
        assert (old.sha, new.sha) == (a, b)
        assert (Path(old.path) / "only-in-1.yaml").exists()
        assert not (Path(old.path) / "only-in-2.yaml").exists()
        assert (Path(new.path) / "only-in-2.yaml").exists()


def test_modified_tree_is_rebuilt_on_the_next_fetch(make_repo: MakeRepo, tmp_path: Path) -> None:
    """Edits or stray files in a cached tree are noticed and the commit exported again."""
    repo = make_repo()
    sha = repo.commit(_tree(1))
    cache = tmp_path / "cache"
    first = fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    app = Path(first.path)
    app.chmod(0o700)
    (app / "cm-00.yaml").chmod(0o600)
    (app / "cm-00.yaml").write_text("tampered")
    (app / "stray.yaml").write_text("stray")
    second = fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    assert second.path == first.path
    assert _snapshot(Path(second.path).parent) == _committed(repo, sha)


def test_half_built_tree_is_never_used(make_repo: MakeRepo, tmp_path: Path) -> None:
    """A temporary export left by a crash is ignored by fetches and removed by GC."""
    repo = make_repo()
    sha = repo.commit(_tree(1))
    cache = tmp_path / "cache"
    fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    store = _store(cache, repo.file_url)
    gitcache.remove(store.tree(sha))
    crashed = store.trees / f".tmp-{sha[:12]}-crashed"
    (crashed / "deploy").mkdir(parents=True)
    (crashed / "deploy" / "cm-00.yaml").write_text("half")
    rev = fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    assert _snapshot(Path(rev.path).parent) == _committed(repo, sha)
    gitcache.collect(cache, keep={(repo.file_url, "main")})
    assert _trees(cache, repo.file_url) == {sha}


def test_known_exact_commit_needs_no_server(make_repo: MakeRepo, tmp_path: Path) -> None:
    """A commit already in the cache is checked out again even when the server is gone."""
    repo = make_repo()
    sha = repo.commit(_tree(1))
    repo.commit(_tree(2))
    cache = tmp_path / "cache"
    assert fetch(_spec(repo.file_url, sha[:10]), cache_dir=cache, timeout=30).sha == sha
    repo.path.rename(repo.path.with_name("gone.git"))
    assert fetch(_spec(repo.file_url, sha[:10]), cache_dir=cache, timeout=30).sha == sha


# --- garbage collection -------------------------------------------------------------------


def test_gc_removes_what_no_configured_app_uses(make_repo: MakeRepo, tmp_path: Path) -> None:
    """Stores, refs and trees of an app dropped from the config go; the others' stay."""
    kept, dropped = make_repo("kept"), make_repo("dropped")
    kept_shas = kept.commits([_tree(1), _tree(2)])
    dropped.commit(_tree(1))
    cache = tmp_path / "cache"
    fetch(_spec(kept.file_url, kept_shas[0]), cache_dir=cache, timeout=30)
    fetch(_spec(kept.file_url, kept_shas[0][:9]), cache_dir=cache, timeout=30)  # full fetch
    fetch(_spec(kept.file_url), cache_dir=cache, timeout=30)
    fetch(_spec(dropped.file_url), cache_dir=cache, timeout=30)
    assert any(r.startswith("refs/gitsync-all/") for r in _refs(cache, kept.file_url))
    before = gitcache.disk_usage(cache)

    report = gitcache.collect(cache, keep={(kept.file_url, "main")})

    assert not _store(cache, dropped.file_url).root.exists()
    assert _trees(cache, kept.file_url) == {kept_shas[1]}
    assert _refs(cache, kept.file_url) == [gitcache.ref_name("main")]
    assert (report.removed_stores, report.removed_trees, report.stores) == (1, 1, 1)
    assert report.bytes == gitcache.disk_usage(cache) < before
    # What is left still works, and a dropped repository can come back.
    assert fetch(_spec(kept.file_url), cache_dir=cache, timeout=30).sha == kept_shas[1]
    assert fetch(_spec(dropped.file_url), cache_dir=cache, timeout=30).sha == dropped.head()


def test_gc_keeps_pinned_trees_and_their_store(make_repo: MakeRepo, tmp_path: Path) -> None:
    """A tree being rendered survives GC even when its app is no longer configured."""
    repo = make_repo()
    sha = repo.commit(_tree(1))
    cache = tmp_path / "cache"
    with checkout(_spec(repo.file_url), cache_dir=cache, timeout=30) as rev:
        before = _snapshot(Path(rev.path).parent)
        report = gitcache.collect(cache, keep=set())
        assert report.removed_stores == report.removed_trees == 0
        assert _snapshot(Path(rev.path).parent) == before
    gitcache.collect(cache, keep=set())
    assert not _store(cache, repo.file_url).root.exists()
    assert sha not in str(list(cache.rglob("*")))


def test_gc_skips_a_store_a_fetch_holds(make_repo: MakeRepo, tmp_path: Path) -> None:
    """GC never waits for a fetch: a locked store is left for the next pass."""
    repo = make_repo()
    repo.commit(_tree(1))
    cache = tmp_path / "cache"
    fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    store = _store(cache, repo.file_url)
    with gitcache.locked(store, waiting=None) as got:
        assert got
        report = gitcache.collect(cache, keep=set())
    assert report.busy == 1
    assert store.root.exists()


def test_gc_drops_old_worktrees_of_the_previous_layout(make_repo: MakeRepo, tmp_path: Path) -> None:
    """A per-ref ``git worktree`` left by an older gitsync is removed and pruned."""
    repo = make_repo()
    sha = repo.commit(_tree(1))
    cache = tmp_path / "cache"
    fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    store = _store(cache, repo.file_url)
    old = store.trees / "0123456789abcdef"
    git("--git-dir", str(store.repo), "worktree", "add", "--detach", str(old), sha)
    gitcache.collect(cache, keep={(repo.file_url, "main")})
    assert _trees(cache, repo.file_url) == {sha}
    assert not (store.repo / "worktrees").exists() or not any((store.repo / "worktrees").iterdir())


def test_gc_repacks_a_store_that_grew(
    make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects of force-pushed-away commits are deleted once the store has grown."""
    monkeypatch.setattr(gitcache, "GC_SLACK", 1 << 20)
    repo = make_repo()
    repo.commit(_tree(1))
    cache = tmp_path / "cache"
    fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    gitcache.collect(cache, keep={(repo.file_url, "main")})
    for n in range(3):
        big = {**_tree(1), "blob.bin": os.urandom(1 << 20).hex()}  # 2 MiB, incompressible
        if n:
            repo.rewrite(big)
        else:
            repo.commit(big)
        fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    repo.rewrite(_tree(5))
    fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    grown = gitcache.disk_usage(_store(cache, repo.file_url).repo)
    report = gitcache.collect(cache, keep={(repo.file_url, "main")})
    assert report.repacked == 1
    assert gitcache.disk_usage(_store(cache, repo.file_url).repo) < grown - (3 << 20)


def test_cache_size_metric_follows_gc(make_repo: MakeRepo, tmp_path: Path) -> None:
    """gitsync_git_cache_bytes is the cache's size after each GC pass, and drops with it."""
    one, two = make_repo("one"), make_repo("two")
    one.commit(_tree(1))
    two.commit(_tree(1, files=200))
    cache = tmp_path / "cache"
    apps = config.parse(
        {
            "apps": [
                {"name": "one", "repo": one.file_url, "namespace": "x", "path": "deploy"},
                {"name": "two", "repo": two.file_url, "namespace": "x", "path": "deploy"},
            ]
        }
    ).apps
    for a in apps:
        fetch(_spec(a.repo), cache_dir=cache, timeout=30)
    assert collect_git_cache(cache, apps) is not None
    both = REGISTRY.get_sample_value("gitsync_git_cache_bytes")
    assert both == gitcache.disk_usage(cache) > 0
    collect_git_cache(cache, apps[:1])
    after = REGISTRY.get_sample_value("gitsync_git_cache_bytes")
    assert after == gitcache.disk_usage(cache)
    assert after is not None
    assert both is not None
    assert after < both


def test_new_commit_links_unchanged_files_and_leaves_the_old_tree(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    """A new commit's tree shares unchanged files with the last one; changed ones are new files."""
    repo = make_repo()
    a = repo.commit(_tree(1))
    cache = tmp_path / "cache"
    with checkout(_spec(repo.file_url), cache_dir=cache, timeout=30) as rev:
        old = Path(rev.path)
        before = _snapshot(old.parent)
        changed = "kind: ConfigMap\ndata: {n: changed}\n"
        b = repo.commit({**_tree(1), "deploy/cm-00.yaml": changed})
        new = Path(fetch(_spec(repo.file_url), cache_dir=cache, timeout=30).path)
        assert (new / "cm-01.yaml").stat().st_ino == (old / "cm-01.yaml").stat().st_ino
        assert (new / "cm-00.yaml").stat().st_ino != (old / "cm-00.yaml").stat().st_ino
        assert _snapshot(old.parent) == before == _committed(repo, a)
        assert _snapshot(new.parent) == _committed(repo, b)


def test_a_moved_ref_drops_its_old_tree_unless_still_used(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    """Without any GC pass, a branch's old tree goes once no render or other ref needs it."""
    repo = make_repo()
    a = repo.commit(_tree(1))
    cache = tmp_path / "cache"
    fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    fetch(_spec(repo.file_url, a), cache_dir=cache, timeout=30)  # another app pins commit a
    b = repo.commit(_tree(2))
    fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    assert _trees(cache, repo.file_url) == {a, b}  # the exact-sha ref still points at a
    with checkout(_spec(repo.file_url), cache_dir=cache, timeout=30):
        c = repo.commit(_tree(3))
        fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
        assert _trees(cache, repo.file_url) == {a, b, c}  # b is being rendered
    d = repo.commit(_tree(4))
    fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
    assert _trees(cache, repo.file_url) == {a, b, d}  # b is left for the GC pass
    gitcache.collect(cache, keep={(repo.file_url, "main"), (repo.file_url, a)})
    assert _trees(cache, repo.file_url) == {a, d}


def test_cache_size_counts_a_linked_file_once(make_repo: MakeRepo, tmp_path: Path) -> None:
    """Two trees sharing a large unchanged file add its size once, as du does."""
    repo = make_repo()
    big = os.urandom(1 << 20).hex()  # 2 MiB
    repo.commit({**_tree(1), "deploy/big.txt": big})
    cache = tmp_path / "cache"
    with checkout(_spec(repo.file_url), cache_dir=cache, timeout=30):
        one = gitcache.disk_usage(cache)
        repo.commit({**_tree(2), "deploy/big.txt": big})
        fetch(_spec(repo.file_url), cache_dir=cache, timeout=30)
        assert len(_trees(cache, repo.file_url)) == 2
        assert gitcache.disk_usage(cache) - one < 1 << 20
