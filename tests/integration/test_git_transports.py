"""gitsync.source.git.fetch against real Git servers on 127.0.0.1, over every transport."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gitsync.errors import SourceError
from gitsync.model import Revision
from gitsync.source.git import GitAuth, SourceSpec, fetch
from tests.support.git_fixtures import BlackHole, GitDaemon, GitHttpServer, SshServer
from tests.support.repos import BareRepo, Symlink

pytestmark = pytest.mark.git

V1 = {"deploy/app.yaml": "kind: ConfigMap\ndata: {version: '1'}\n", "README.md": "v1\n"}
V2 = {"deploy/app.yaml": "kind: ConfigMap\ndata: {version: '2'}\n", "README.md": "v2\n"}
V3 = {"deploy/app.yaml": "kind: ConfigMap\ndata: {version: '3'}\n", "deploy/extra.yaml": "x\n"}

MakeRepo = Callable[..., BareRepo]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def repo(make_repo: MakeRepo) -> BareRepo:
    """A repo with two commits on main."""
    r = make_repo("shop")
    r.commits([V1, V2])
    return r


def _fetch(
    url: str,
    cache: Path,
    *,
    ref: str = "main",
    path: str = "deploy",
    auth: GitAuth | None = None,
    timeout: float = 30,
    allow_insecure: bool = True,
) -> Revision:
    spec = SourceSpec(
        url=url, ref=ref, path=path, auth=auth or GitAuth(), allow_insecure=allow_insecure
    )
    return fetch(spec, cache_dir=cache, timeout=timeout)


def _version(rev: Revision) -> str:
    return (Path(rev.path) / "app.yaml").read_text().split("version: '")[1][0]


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# --- transports ---------------------------------------------------------------------------


def test_file_url_clone_returns_revision_of_branch_tip(repo: BareRepo, cache: Path) -> None:
    """A file:// fetch checks out the branch tip and describes its commit."""
    rev = _fetch(repo.file_url, cache)
    assert rev.sha == repo.head()
    assert rev.ref == "main"
    assert rev.subject == "v2"
    assert rev.author == "Test Author <author@example.test>"
    assert rev.time.utcoffset() is not None
    assert Path(rev.path).is_absolute()
    assert Path(rev.path).name == "deploy"
    assert _version(rev) == "2"


def test_git_daemon_clone(repo: BareRepo, git_daemon: GitDaemon, cache: Path) -> None:
    """A git:// fetch from git daemon checks out the branch tip."""
    rev = _fetch(git_daemon.url(repo), cache)
    assert rev.sha == repo.head()
    assert _version(rev) == "2"


def test_http_clone_with_basic_auth(repo: BareRepo, git_http: GitHttpServer, cache: Path) -> None:
    """Smart HTTP with username and password checks out the branch tip."""
    auth = GitAuth(username=git_http.username, password=git_http.password)
    rev = _fetch(git_http.url(repo), cache, auth=auth)
    assert rev.sha == repo.head()
    assert _version(rev) == "2"


def test_http_clone_with_token(repo: BareRepo, git_http: GitHttpServer, cache: Path) -> None:
    """A bare token is sent as basic-auth password with the x-access-token user."""
    rev = _fetch(git_http.url(repo), cache, auth=GitAuth(token=git_http.token))
    assert rev.sha == repo.head()


def test_ssh_clone_with_key_and_known_hosts(
    repo: BareRepo, git_sshd: SshServer, cache: Path
) -> None:
    """ssh with an authorized key and a matching known_hosts checks out the branch tip."""
    auth = GitAuth(ssh_key=git_sshd.client_key, known_hosts=git_sshd.known_hosts)
    rev = _fetch(git_sshd.url(repo), cache, auth=auth)
    assert rev.sha == repo.head()
    assert _version(rev) == "2"


def test_ssh_key_readable_by_others_is_still_used(
    repo: BareRepo, git_sshd: SshServer, cache: Path, tmp_path: Path
) -> None:
    """A 0644 key file (as Secret volumes mount it) works: ssh gets a private copy."""
    key = tmp_path / "mounted-key"
    key.write_bytes(git_sshd.client_key.read_bytes())
    key.chmod(0o644)
    auth = GitAuth(ssh_key=key, known_hosts=git_sshd.known_hosts)
    assert _fetch(git_sshd.url(repo), cache, auth=auth).sha == repo.head()


def test_ssh_insecure_ignore_host_key_skips_check(
    repo: BareRepo, git_sshd: SshServer, cache: Path
) -> None:
    """insecure_ignore_host_key connects without any known_hosts."""
    auth = GitAuth(ssh_key=git_sshd.client_key, insecure_ignore_host_key=True)
    assert _fetch(git_sshd.url(repo), cache, auth=auth).sha == repo.head()


# --- auth failures ------------------------------------------------------------------------


def test_http_wrong_password_fails(repo: BareRepo, git_http: GitHttpServer, cache: Path) -> None:
    """A wrong password is a SourceError naming the failure, without the password."""
    auth = GitAuth(username=git_http.username, password="wrong-password-123")
    with pytest.raises(SourceError, match="Authentication failed") as info:
        _fetch(git_http.url(repo), cache, auth=auth)
    assert "wrong-password-123" not in str(info.value)
    assert git_http.url(repo) in str(info.value)


def test_http_without_credentials_fails_without_prompting(
    repo: BareRepo, git_http: GitHttpServer, cache: Path
) -> None:
    """No credentials on a protected repo fails at once instead of prompting."""
    started = time.monotonic()
    with pytest.raises(SourceError, match="fetching 'main' from http://"):
        _fetch(git_http.url(repo), cache, timeout=20)
    assert time.monotonic() - started < 10


def test_token_never_written_or_reported(
    repo: BareRepo, git_http: GitHttpServer, cache: Path
) -> None:
    """The token is in no file of the cache (.git/config included) and in no error."""
    auth = GitAuth(token=git_http.token)
    _fetch(git_http.url(repo), cache, auth=auth)
    with pytest.raises(SourceError) as info:
        _fetch(git_http.url("missing.git"), cache, auth=auth)
    assert git_http.token.encode() not in _all_bytes(cache)
    assert git_http.token not in str(info.value)
    assert git_http.token not in repr(auth)
    configs = list(cache.rglob("config"))
    assert configs
    for config in configs:
        assert git_http.token not in config.read_text()
    for method, path, _ in git_http.requests:
        assert git_http.token not in f"{method} {path}"


def test_error_masks_user_in_url(repo: BareRepo, git_http: GitHttpServer, cache: Path) -> None:
    """A user name written into the URL is masked in the error message."""
    url = git_http.url(repo).replace("http://", "http://deploy-bot@")
    with pytest.raises(SourceError) as info:
        _fetch(url, cache, auth=GitAuth(password="nope"))
    assert "deploy-bot" not in str(info.value)
    assert "http://***@" in str(info.value)


def test_ssh_wrong_key_fails(repo: BareRepo, git_sshd: SshServer, cache: Path) -> None:
    """A key the server does not authorize is a SourceError (publickey denied)."""
    auth = GitAuth(ssh_key=git_sshd.other_key, known_hosts=git_sshd.known_hosts)
    with pytest.raises(SourceError, match=r"Permission denied \(publickey"):
        _fetch(git_sshd.url(repo), cache, auth=auth)


def test_ssh_unknown_host_key_fails(
    repo: BareRepo, git_sshd: SshServer, cache: Path, tmp_path: Path
) -> None:
    """A host missing from known_hosts is refused: host keys are checked by default."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    auth = GitAuth(ssh_key=git_sshd.client_key, known_hosts=empty)
    with pytest.raises(SourceError, match="Host key verification failed"):
        _fetch(git_sshd.url(repo), cache, auth=auth)


def test_ssh_without_known_hosts_fails(repo: BareRepo, git_sshd: SshServer, cache: Path) -> None:
    """No known_hosts at all refuses the host rather than trusting it on first use."""
    auth = GitAuth(ssh_key=git_sshd.client_key)
    with pytest.raises(SourceError, match="Host key verification failed"):
        _fetch(git_sshd.url(repo), cache, auth=auth)


def test_ssh_changed_host_key_fails(repo: BareRepo, git_sshd: SshServer, cache: Path) -> None:
    """A host key that differs from known_hosts is refused."""
    auth = GitAuth(ssh_key=git_sshd.client_key, known_hosts=git_sshd.wrong_known_hosts)
    with pytest.raises(SourceError, match="Host key verification failed"):
        _fetch(git_sshd.url(repo), cache, auth=auth)


# --- refs ---------------------------------------------------------------------------------


def test_force_push_is_followed(repo: BareRepo, git_daemon: GitDaemon, cache: Path) -> None:
    """After a force-push the next fetch checks out the rewritten tip, files and all."""
    first = _fetch(git_daemon.url(repo), cache)
    rewritten = repo.rewrite(V3, message="rewrite")
    second = _fetch(git_daemon.url(repo), cache)
    assert second.sha == rewritten != first.sha
    assert second.subject == "rewrite"
    assert _version(second) == "3"
    assert (Path(second.path) / "extra.yaml").exists()
    assert not (Path(second.path).parent / "README.md").exists()


def test_new_commit_is_fetched_and_local_edits_discarded(repo: BareRepo, cache: Path) -> None:
    """A second fetch moves to the new tip and wipes edits made in the checkout."""
    first = _fetch(repo.file_url, cache)
    (Path(first.path) / "app.yaml").write_text("tampered")
    (Path(first.path) / "stray.yaml").write_text("stray")
    sha = repo.commit(V3, message="v3")
    second = _fetch(repo.file_url, cache)
    assert second.sha == sha
    assert _version(second) == "3"
    assert not (Path(second.path) / "stray.yaml").exists()


def test_exact_commit_can_be_fetched(repo: BareRepo, git_daemon: GitDaemon, cache: Path) -> None:
    """A full sha that is not a branch tip is fetched and checked out."""
    old = repo.commits([V3])[0]
    repo.commit(V2, message="after")
    rev = _fetch(git_daemon.url(repo), cache, ref=old)
    assert rev.sha == old
    assert rev.ref == old
    assert _version(rev) == "3"


def test_exact_commit_falls_back_to_full_fetch(
    repo: BareRepo, git_http: GitHttpServer, cache: Path
) -> None:
    """A server that refuses unadvertised shas (protocol v0) still yields the commit."""
    old = repo.commits([V3])[0]
    repo.commit(V2, message="after")
    auth = GitAuth(token=git_http.token)
    rev = _fetch(git_http.url(repo, v0=True), cache, ref=old, auth=auth)
    assert rev.sha == old
    assert _version(rev) == "3"


def test_short_sha_can_be_fetched(repo: BareRepo, git_daemon: GitDaemon, cache: Path) -> None:
    """An abbreviated sha is resolved (by a full fetch) to its commit."""
    old = repo.commits([V3])[0]
    repo.commit(V2, message="after")
    rev = _fetch(git_daemon.url(repo), cache, ref=old[:10])
    assert rev.sha == old


def test_commit_no_branch_reaches_is_not_found(
    repo: BareRepo, git_http: GitHttpServer, cache: Path
) -> None:
    """A sha dropped by a force-push is reported missing by a v0 server."""
    gone = repo.commit(V3, message="soon gone")
    repo.rewrite(V1)
    auth = GitAuth(token=git_http.token)
    with pytest.raises(SourceError, match=f"commit '{gone}' not found"):
        _fetch(git_http.url(repo, v0=True), cache, ref=gone, auth=auth)


def test_lightweight_tag_can_be_fetched(repo: BareRepo, git_daemon: GitDaemon, cache: Path) -> None:
    """A lightweight tag checks out the commit it names, not the branch tip."""
    first = repo.commits([V3])[0]
    repo.tag("v3.0.0", first)
    repo.commit(V1)
    rev = _fetch(git_daemon.url(repo), cache, ref="v3.0.0")
    assert rev.sha == first
    assert rev.ref == "v3.0.0"
    assert _version(rev) == "3"


def test_annotated_tag_resolves_to_its_commit(
    repo: BareRepo, git_http: GitHttpServer, cache: Path
) -> None:
    """An annotated tag yields the sha of the commit, not of the tag object."""
    tagged = repo.commits([V3])[0]
    repo.tag("release-1", tagged, annotated=True)
    repo.commit(V1)
    rev = _fetch(git_http.url(repo), cache, ref="release-1", auth=GitAuth(token=git_http.token))
    assert rev.sha == tagged


def test_two_refs_of_one_repo_get_separate_checkouts(repo: BareRepo, cache: Path) -> None:
    """A tag and a branch of the same URL do not overwrite each other's checkout."""
    repo.tag("stable", repo.commits([V1])[0])
    repo.commit(V3)
    stable = _fetch(repo.file_url, cache, ref="stable")
    main = _fetch(repo.file_url, cache, ref="main")
    assert stable.path != main.path
    assert _version(stable) == "1"
    assert _version(main) == "3"


def test_missing_branch_fails_with_hint(repo: BareRepo, cache: Path) -> None:
    """A branch that does not exist names the ref and says what to check."""
    with pytest.raises(SourceError, match=r"'nope'.*check the branch, tag or commit"):
        _fetch(repo.file_url, cache, ref="nope")


def test_cache_is_keyed_by_hash_not_url(repo: BareRepo, cache: Path) -> None:
    """No file or directory in the cache is named after the repository URL."""
    _fetch(repo.file_url, cache)
    for entry in cache.rglob("*"):
        assert "shop" not in entry.name


# --- app path -----------------------------------------------------------------------------


def test_app_path_must_exist(repo: BareRepo, cache: Path) -> None:
    """A path that is not in the commit is a SourceError naming it."""
    with pytest.raises(SourceError, match="'clusters/prod' does not exist"):
        _fetch(repo.file_url, cache, path="clusters/prod")


def test_app_path_symlink_escape_is_refused(make_repo: MakeRepo, cache: Path) -> None:
    """A path that is a symlink out of the checkout is refused."""
    r = make_repo()
    r.commit({"deploy/app.yaml": "x", "escape": Symlink("/etc")})
    with pytest.raises(SourceError, match="leaves the repository through a symlink"):
        _fetch(r.file_url, cache, path="escape")


def test_app_path_symlink_inside_repo_is_allowed(make_repo: MakeRepo, cache: Path) -> None:
    """A symlink that stays inside the checkout resolves to its target directory."""
    r = make_repo()
    r.commit(
        {"deploy/app.yaml": "kind: ConfigMap\ndata: {version: '7'}\n", "live": Symlink("deploy")}
    )
    rev = _fetch(r.file_url, cache, path="live")
    assert Path(rev.path).name == "deploy"
    assert _version(rev) == "7"


def test_repo_root_is_default_path(repo: BareRepo, cache: Path) -> None:
    """path '.' is the checkout root."""
    rev = _fetch(repo.file_url, cache, path=".")
    assert (Path(rev.path) / "README.md").read_text() == "v2\n"


# --- timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["git", "http", "ssh"])
def test_silent_server_times_out(
    scheme: str, black_hole: BlackHole, cache: Path, tmp_path: Path
) -> None:
    """A server that accepts but never answers fails within the timeout."""
    auth = GitAuth(insecure_ignore_host_key=True) if scheme == "ssh" else GitAuth()
    url = black_hole.url(scheme)
    if scheme == "ssh":
        url = url.replace("ssh://", "ssh://git@")
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"timed out after 2s"):
        _fetch(url, cache, auth=auth, timeout=2)
    assert time.monotonic() - started < 4


def test_concurrent_fetches_of_one_repo_do_not_collide(
    repo: BareRepo, git_daemon: GitDaemon, cache: Path
) -> None:
    """Parallel fetches of one URL (different refs) are serialized and all succeed."""
    tagged = repo.head()
    repo.tag("t1", tagged)
    tip = repo.commit(V3)
    refs = ["main", "t1", tagged, "main", "t1", tagged]
    with ThreadPoolExecutor(max_workers=len(refs)) as pool:
        revs = list(pool.map(lambda ref: _fetch(git_daemon.url(repo), cache, ref=ref), refs))
    assert [r.sha for r in revs] == [tip, tagged, tagged] * 2


def test_plaintext_transports_are_refused_by_default_and_allowed_on_request(
    repo: BareRepo, git_daemon: GitDaemon, git_http: GitHttpServer, cache: Path
) -> None:
    """git:// and http:// are refused (before any request) unless allowed; then they fetch."""
    auth = GitAuth(token=git_http.token)
    for url, given in ((git_daemon.url(repo), None), (git_http.url(repo), auth)):
        sent = len(git_http.requests)
        with pytest.raises(SourceError, match=r"allowInsecure: true.*--allow-insecure"):
            _fetch(url, cache, auth=given, allow_insecure=False)
        assert len(git_http.requests) == sent
        assert _fetch(url, cache, auth=given, allow_insecure=True).sha == repo.head()
