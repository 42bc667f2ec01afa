"""The Git cache on disk: one store per repository, one read-only tree per commit, pins, GC.

Layout of ``cache_dir`` (nothing is named after the URL, which may hold a user)::

    askpass.sh                       answers git's credential prompts (see ``source``)
    <store>/lock                     flock: fetch, export and GC of one store, one at a time
    <store>/repo.git                 bare object store, shallow where possible
    <store>/trees/<sha>              read-only export of one commit; renamed into place whole
    <store>/meta/<sha>.index         git index of that export: a stat check finds edits cheaply
    <store>/meta/<sha>.pin           flock LOCK_SH held by every render reading the tree
    <store>/gc-size                  bytes of repo.git after its last full ``git gc``
    .trash-*                         a store or tree being deleted

``<store>`` is ``sha256(url)[:32]``. A tree is never changed once it has its final name,
so two apps at different commits of one repository never see each other's files, and a
render reads exactly the commit it records. Trees share unchanged files by hard link;
git replaces a changed file, it never writes into one. A pin is taken while the store
lock is held, and a tree is removed only under that lock and only if its pin can be taken
exclusively, so a pinned tree is never removed. A lock file whose store was deleted
meanwhile is noticed (its inode is no longer the path's) and the store is made again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gitsync.errors import SourceError

__all__ = ["CacheReport", "Store", "collect", "disk_usage"]

_STORE_NAME = re.compile(r"[0-9a-f]{32}")
_SHA_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
GC_GROWTH = 2.0
"""A store is repacked (unreachable objects dropped) once it is this many times its last size."""
GC_SLACK = 8 << 20
"""...plus this many bytes, so small stores are not repacked on every pass."""
_GIT_TIMEOUT = 600.0


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def ref_name(ref: str) -> str:
    """The local ref a fetch of ``ref`` writes: one per (repository, ref)."""
    return f"refs/gitsync/{digest(ref)[:16]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Store:
    """Paths of one repository's corner of the cache."""

    root: Path

    @classmethod
    def of(cls, cache_dir: Path, url: str) -> Store:
        return cls(root=cache_dir / digest(url)[:32])

    @property
    def repo(self) -> Path:
        return self.root / "repo.git"

    @property
    def trees(self) -> Path:
        return self.root / "trees"

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    def tree(self, sha: str) -> Path:
        return self.trees / sha

    def index(self, sha: str) -> Path:
        return self.meta / f"{sha}.index"

    def pin_file(self, sha: str) -> Path:
        return self.meta / f"{sha}.pin"

    def make(self) -> None:
        try:
            for d in (self.trees, self.meta):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            msg = f"cannot create the git cache directory {self.root}: {e.strerror}"
            raise SourceError(msg) from e


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)


@contextlib.contextmanager
def locked(store: Store, *, waiting: Callable[[], None] | None) -> Iterator[bool]:
    """Hold the store's lock; yields False at once if busy and ``waiting`` is None.

    ``waiting`` is called between attempts and raises to give up (a deadline).
    """
    while True:
        store.make()
        try:
            handle = (store.root / "lock").open("a")
        except FileNotFoundError:
            continue  # GC moved the store away between make() and open()
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is None:
                    yield False
                    return
                waiting()
                time.sleep(0.05)
                continue
            if not _same_file(handle, store.root / "lock"):
                continue  # GC deleted this store while we waited: make it again
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            return
        finally:
            handle.close()


@contextlib.contextmanager
def pin(store: Store, sha: str) -> Iterator[None]:
    """Keep ``sha``'s tree from GC while the block runs; take it with the store lock held."""
    handle = store.pin_file(sha).open("a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError as e:  # only GC takes it exclusively, and GC holds our lock
            msg = f"the cached checkout of {sha[:12]} is being deleted; try again"
            raise SourceError(msg) from e
        yield
    finally:
        handle.close()  # releases the flock


def pinned(store: Store, sha: str) -> bool:
    """Whether a render reads ``sha``'s tree now; ask with the store lock held."""
    path = store.pin_file(sha)
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def seal(root: Path) -> None:
    """Make a tree read-only (files and directories), so a renderer cannot edit it."""
    for top, dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(top, name)  # noqa: PTH118 - os.walk gives strings
            mode = stat.S_IMODE(os.lstat(p).st_mode)
            # Linked files of an older tree are sealed already: leave their inode alone.
            if not os.path.islink(p) and mode & 0o222:  # noqa: PTH114
                os.chmod(p, mode & ~0o222)  # noqa: PTH101
        for name in dirs:
            p = os.path.join(top, name)  # noqa: PTH118
            if not os.path.islink(p):  # noqa: PTH114
                os.chmod(p, 0o500)  # noqa: PTH101
    root.chmod(0o500)


def link_copy(source: Path, into: Path) -> None:
    """Copy ``source`` into the existing directory ``into``: new directories, hard-linked
    files, symlinks recreated. Linked files stay shared, so neither copy may be written."""
    for top, dirs, files in os.walk(source):
        rel = os.path.relpath(top, source)
        target = into / rel if rel != "." else into
        for name in dirs + files:
            src = os.path.join(top, name)  # noqa: PTH118 - os.walk gives strings
            dst = target / name
            if os.path.islink(src):  # noqa: PTH114
                dst.symlink_to(os.readlink(src))  # noqa: PTH115
            elif name in dirs:
                dst.mkdir(mode=0o700)
            else:
                os.link(src, dst)


def empty(path: Path) -> None:
    """Delete what is inside ``path``, keep ``path``."""
    for child in list(path.iterdir()):
        remove(child)


def remove(path: Path) -> None:
    """Delete a file or a (sealed) tree: renamed aside first, so no half tree keeps its name."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        path.unlink(missing_ok=True)
        return
    trash = path.with_name(f".trash-{uuid.uuid4().hex[:12]}")
    path.rename(trash)
    for top, dirs, _files in os.walk(trash):
        os.chmod(top, 0o700)  # noqa: PTH101
        for name in dirs:
            p = os.path.join(top, name)  # noqa: PTH118
            if not os.path.islink(p):  # noqa: PTH114
                os.chmod(p, 0o700)  # noqa: PTH101
    shutil.rmtree(trash, ignore_errors=True)


def disk_usage(root: Path) -> int:
    """Bytes on disk under ``root`` (allocated blocks, like ``du``: a file hard-linked
    from several trees counts once); 0 if it is gone."""
    total = 0
    linked: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in linked:
                    continue
                linked.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return total


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheReport:
    """What one GC pass did, and the cache's size after it."""

    bytes: int
    stores: int
    trees: int
    removed_stores: int = 0
    removed_trees: int = 0
    repacked: int = 0
    busy: int = 0  # stores skipped because a fetch held their lock


def local_git(repo: Path, *args: str, stdin: str = "") -> str:
    """Local git only (no remote, no credentials), with no system or global config;
    ``SourceError`` if it fails."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }
    try:
        proc = subprocess.run(
            ["git", "-c", "gc.autoDetach=false", "--git-dir", str(repo), *args],
            input=stdin,
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        msg = f"git {args[0]} in the cache {repo} failed: {e}"
        raise SourceError(msg) from e
    if proc.returncode != 0:
        msg = f"git {args[0]} in the cache {repo} failed: {proc.stderr.strip()[-400:]}"
        raise SourceError(msg)
    return proc.stdout


def collect(cache_dir: Path, *, keep: Collection[tuple[str, str]]) -> CacheReport:
    """Remove what no app in ``keep`` (``(url, ref)`` pairs) needs, except pinned trees.

    Kept: the store of each kept URL, the local ref of each kept ref, and the tree of the
    commit that ref points at. Removed: other stores, refs (also the ``refs/gitsync-all``
    of full fetches) and trees; a store that grew past ``GC_GROWTH`` times its last
    size is repacked with ``git gc --prune=now``. A store whose lock is held is left for
    the next pass, so GC never waits for a fetch.
    """
    wanted: dict[str, set[str]] = {}
    for url, ref in keep:
        wanted.setdefault(digest(url)[:32], set()).add(ref_name(ref))
    counts = {"removed_stores": 0, "removed_trees": 0, "repacked": 0, "busy": 0}
    stores = trees = 0
    if not cache_dir.is_dir():
        return CacheReport(bytes=0, stores=0, trees=0)
    for entry in sorted(cache_dir.iterdir()):
        if entry.name.startswith(".trash-"):
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if not (_STORE_NAME.fullmatch(entry.name) and (entry / "lock").is_file()):
            continue
        store = Store(root=entry)
        with locked(store, waiting=None) as got:
            if not got:
                counts["busy"] += 1
                stores += 1
                continue
            refs = wanted.get(entry.name, set())
            if not refs and not _any_pinned(store):
                remove(entry)
                counts["removed_stores"] += 1
                continue
            stores += 1
            shas = _prune_refs(store, refs)
            removed = _prune_trees(store, shas)
            counts["removed_trees"] += removed
            trees += sum(1 for p in store.trees.iterdir() if _SHA_NAME.fullmatch(p.name))
            counts["repacked"] += _maybe_repack(store)
    return CacheReport(bytes=disk_usage(cache_dir), stores=stores, trees=trees, **counts)


def _any_pinned(store: Store) -> bool:
    if not store.meta.is_dir():
        return False
    return any(pinned(store, p.name.removesuffix(".pin")) for p in store.meta.glob("*.pin"))


def _prune_refs(store: Store, refs: set[str]) -> set[str]:
    """Delete every local ref but ``refs``; return the commits those point at."""
    if not (store.repo / "HEAD").exists():
        return set()
    out = local_git(
        store.repo,
        "for-each-ref",
        "--format=%(objectname) %(refname)",
        "refs/gitsync/",
        "refs/gitsync-all/",
    )
    keep: set[str] = set()
    drop: list[str] = []
    for line in out.splitlines():
        sha, name = line.split(" ", 1)
        if name in refs:
            keep.add(sha)
        else:
            drop.append(name)
    if drop:
        local_git(store.repo, "update-ref", "--stdin", stdin="".join(f"delete {n}\n" for n in drop))
    return keep


def _prune_trees(store: Store, keep: set[str]) -> int:
    """Remove trees (and their index and pin files) neither kept nor pinned."""
    removed = 0
    legacy = False
    for path in list(store.trees.iterdir()):
        name = path.name
        if _SHA_NAME.fullmatch(name) and (name in keep or pinned(store, name)):
            continue
        legacy = legacy or (path / ".git").is_file()  # a worktree of the old layout
        remove(path)
        removed += _SHA_NAME.fullmatch(name) is not None
    for path in list(store.meta.iterdir()):
        sha = path.name.split(".", 1)[0]
        if not store.tree(sha).exists() and not pinned(store, sha):
            path.unlink(missing_ok=True)
    if legacy or (store.repo / "worktrees").exists():
        local_git(store.repo, "worktree", "prune")
    return removed


def _maybe_repack(store: Store) -> int:
    """``git gc --prune=now`` once the store has doubled since its last one; 1 if it ran.

    No fetch runs meanwhile (we hold the store lock) and trees are plain files, so no
    object can be wanted by anything but the refs that are left.
    """
    if not (store.repo / "HEAD").exists():
        return 0
    marker = store.root / "gc-size"
    size = disk_usage(store.repo)
    try:
        last = int(marker.read_text())
    except (OSError, ValueError):
        last = 0
    if size <= last * GC_GROWTH + GC_SLACK:
        return 0
    local_git(store.repo, "gc", "--quiet", "--prune=now")
    marker.write_text(str(disk_usage(store.repo)))
    return 1
