"""The fetch stage: one app's repository at one ref, checked out, as a ``Revision``.

The cache (layout in ``gitcache``) holds one bare store per repository and one read-only
tree per commit, built in a temporary directory (unchanged files hard-linked from the last
tree) and renamed into place; ``checkout`` pins the tree while its block runs, so a
render reads exactly the commit it records even while another app fetches a newer commit
of the same repository and ref.

Credentials never reach argv, the URL or ``.git/config``: https secrets travel in
environment variables read by ``askpass.sh``, ssh uses an explicit key and
known_hosts in ``GIT_SSH_COMMAND``. Git runs with no system or global config, no
terminal prompt, and only the allowed transports, so the machine's own Git set-up
cannot change what is fetched or leak a credential into a helper.

GitPython runs every command (``kill_after_timeout`` kills git and its children on
the deadline) and reads the commit; its errors are translated here, once, into
``SourceError`` with credentials masked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import git

from gitsync.errors import SourceError
from gitsync.log import get as get_logger
from gitsync.log import mask_url
from gitsync.model import Revision
from gitsync.source import gitcache, verify

__all__ = [
    "GitAuth",
    "SourceSpec",
    "checkout",
    "fetch",
    "validate_path",
    "validate_ref",
    "validate_url",
]

ALLOWED_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})
PLAINTEXT_SCHEMES = frozenset({"http", "git"})
"""Refused unless the app allows it: anyone on the network path could choose the commit."""
_GIT_ALLOW_PROTOCOL = "https:http:ssh:git:file"
DEFAULT_TOKEN_USERNAME = "x-access-token"  # noqa: S105 (a username, not a secret)
"""Username sent with a bare token; GitHub wants it, GitLab and Gitea accept any."""

_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,39}")
_TRANSPORT_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE = re.compile(
    r"^(?:(?P<user>[^@/:\[\]]+)@)?(?P<host>\[[^\]/]+\]|[^@/:\[\]]+):(?P<path>.+)$"
)
# Characters git forbids in ref names (check-ref-format), plus ':' so a ref can
# never become a refspec that writes to a local ref of its choosing.
_REF_FORBIDDEN = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]")
# Git stderr that means "the server did not give us that object or ref by name".
_NOT_ADVERTISED = re.compile(
    r"couldn't find remote ref|not our ref|unadvertised object|no such remote ref",
    re.IGNORECASE,
)
# Which lines of git's stderr say what went wrong, and which only say "see above".
_IMPORTANT = re.compile(
    r"^(fatal|error):|denied|host key|host identification|authentication|refused|not found"
    r"|could not resolve|timed out|unable to access",
    re.IGNORECASE,
)
_BOILERPLATE = re.compile(
    r"Could not read from remote repository|Please make sure you have the correct access"
    r"|^and the repository exists|^@+$"
)
_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"Authentication failed|could not read (Username|Password)|HTTP 40[13]"),
        "check the username and password or token in the app's auth",
    ),
    (
        re.compile(r"Host key verification failed|No \S+ host key is known|HOST IDENTIFICATION"),
        "add the server's current host key to the known_hosts given in the app's auth",
    ),
    (
        re.compile(r"Permission denied \(publickey"),
        "check that the ssh key in the app's auth is authorized on the server",
    ),
    (
        re.compile(r"couldn't find remote ref|not found in"),
        "check the branch, tag or commit in the app's config",
    ),
)
_ASKPASS = """#!/bin/sh
# gitsync: answers git's credential prompts from the environment; holds no secret.
case "$1" in
  Username*) printf '%s\\n' "$GITSYNC_GIT_USERNAME" ;;
  *) printf '%s\\n' "$GITSYNC_GIT_PASSWORD" ;;
esac
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class GitAuth:
    """How to authenticate to the Git server; secrets are left out of ``repr``.

    https: ``username`` + ``password``, or ``token`` (sent as the password, with
    ``username`` or ``x-access-token``). ssh: ``ssh_key`` (private key file) and
    ``known_hosts``; host keys are checked unless ``insecure_ignore_host_key``.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    insecure_ignore_host_key: bool = False

    def __post_init__(self) -> None:
        if self.password and self.token:
            msg = "git auth has both a password and a token; give one of them"
            raise SourceError(msg)
        for name in ("username", "password", "token"):
            if _has_control(getattr(self, name)):
                msg = f"git auth {name} contains a control character or newline"
                raise SourceError(msg)

    @property
    def secret(self) -> str:
        """The https password or token, whichever was given."""
        return self.token or self.password

    @property
    def http_username(self) -> str:
        return self.username or (DEFAULT_TOKEN_USERNAME if self.token else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceSpec:
    """Where an app's manifests live: repository, ref, and directory inside it.

    ``ref`` is a branch, a tag, ``HEAD`` (the server's default branch), or a full
    or abbreviated (7+ hex digits) commit sha. Validated on construction, so a spec
    that exists can be handed to git. ``http://`` and ``git://`` need ``allow_insecure``.
    """

    url: str
    ref: str = "HEAD"
    path: str = "."
    auth: GitAuth = field(default_factory=GitAuth)
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        validate_url(self.url)
        if not self.allow_insecure:
            check_encrypted(self.url)
        validate_ref(self.ref)
        validate_path(self.path)
        if self.auth.secret:
            _check_secret_transport(self.url)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in text)


def _has_space_or_control(text: str) -> bool:
    return _has_control(text) or any(ch.isspace() for ch in text)


def validate_url(url: str) -> str:
    """Refuse URLs git could read as an option or a command; return ``url`` unchanged.

    Allowed: https, http, ssh, git and file URLs, and scp-like ``[user@]host:path``.
    Refused: anything starting with ``-``, whitespace or control characters,
    transport helpers (``ext::``, ``fd::``), plain local paths, other schemes,
    passwords inside the URL, and hosts or users that start with ``-``.
    """
    shown = mask_url(url)
    if not url:
        msg = "the repository URL is empty"
        raise SourceError(msg)
    if _has_space_or_control(url):
        msg = f"repository URL {shown!r} contains whitespace or a control character"
        raise SourceError(msg)
    if url.startswith("-"):
        msg = f"repository URL {shown!r} starts with '-' and could be read as a git option"
        raise SourceError(msg)
    if _TRANSPORT_HELPER.match(url):
        msg = f"repository URL {shown!r} uses a git transport helper ('::'), which is not allowed"
        raise SourceError(msg)
    scheme_match = _SCHEME.match(url)
    if scheme_match:
        _validate_scheme_url(url, scheme_match.group(1).lower(), shown)
        return url
    scp = _SCP_LIKE.match(url)
    if scp and "/" not in url.split(":", 1)[0]:
        for part in ("user", "host", "path"):
            if (scp.group(part) or "").startswith("-"):
                msg = f"repository URL {shown!r}: the {part} starts with '-'"
                raise SourceError(msg)
        return url
    msg = (
        f"repository URL {shown!r} is not a URL git may fetch from; use https://, ssh://, "
        "git://, file:// or scp-like user@host:path"
    )
    raise SourceError(msg)


def _validate_scheme_url(url: str, scheme: str, shown: str) -> None:
    if scheme not in ALLOWED_SCHEMES:
        allowed = ", ".join(sorted(ALLOWED_SCHEMES))
        msg = f"repository URL {shown!r} has scheme {scheme!r}; allowed are {allowed}"
        raise SourceError(msg)
    try:
        parts = urlsplit(url)
        hostname = parts.hostname or ""
        username = parts.username or ""
        password = parts.password
        _ = parts.port
    except ValueError as e:
        msg = f"repository URL {shown!r} cannot be parsed: {e}"
        raise SourceError(msg) from e
    if scheme != "file" and not hostname:
        msg = f"repository URL {shown!r} has no host"
        raise SourceError(msg)
    if scheme == "file" and parts.netloc not in {"", "localhost"}:
        msg = f"file URL {shown!r} names a host; use file:///absolute/path"
        raise SourceError(msg)
    if password is not None:
        msg = (
            f"repository URL {shown!r} holds a password or token; put it in the app's auth, "
            "where it stays out of logs and .git/config"
        )
        raise SourceError(msg)
    if hostname.startswith("-") or username.startswith("-") or parts.path.startswith("-"):
        msg = f"repository URL {shown!r} has a host, user or path starting with '-'"
        raise SourceError(msg)


def check_encrypted(url: str) -> None:
    """Refuse ``http://`` and ``git://``: unencrypted, so the network path picks the commit."""
    scheme_match = _SCHEME.match(url)
    scheme = scheme_match.group(1).lower() if scheme_match else "ssh"
    if scheme in PLAINTEXT_SCHEMES:
        msg = (
            f"repository URL {mask_url(url)!r} uses {scheme}://, which is neither encrypted nor "
            "authenticated: anyone on the network path could choose what is applied. Use "
            "https:// or ssh://, or set allowInsecure: true on the app (--allow-insecure)"
        )
        raise SourceError(msg)


def _check_secret_transport(url: str) -> None:
    """Basic credentials go over TLS, or plain http to this machine only."""
    scheme_match = _SCHEME.match(url)
    scheme = scheme_match.group(1).lower() if scheme_match else "ssh"
    if scheme == "https":
        return
    if scheme == "http":
        host = urlsplit(url).hostname or ""
        with contextlib.suppress(ValueError):
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return
        msg = f"refusing to send a password or token over plain http to {mask_url(url)!r}"
        raise SourceError(msg)
    msg = f"a password or token was given for {mask_url(url)!r}, which is not an https URL"
    raise SourceError(msg)


def validate_ref(ref: str) -> str:
    """Refuse refs git could read as an option or a refspec; return ``ref`` unchanged."""
    problem = ""
    if not ref:
        problem = "is empty"
    elif ref.startswith(("-", "+", "/")) or ref.endswith(("/", ".", ".lock")):
        problem = "starts with '-', '+' or '/', or ends with '/', '.' or '.lock'"
    elif _REF_FORBIDDEN.search(ref) or _has_control(ref):
        problem = "contains whitespace, a control character or one of ~^:?*[\\"
    elif ".." in ref or "//" in ref or "@{" in ref or ref == "@" or "/." in ref:
        problem = "contains '..', '//', '/.' or '@{'"
    if problem:
        msg = f"git ref {ref!r} {problem}; give a branch, tag or commit sha"
        raise SourceError(msg)
    return ref


def validate_path(path: str) -> str:
    """Refuse an app path that is absolute or climbs out of the repository."""
    pure = PurePosixPath(path)
    if path.startswith("/") or "\\" in path or _has_control(path):
        msg = f"app path {path!r} must be relative to the repository root, with '/' separators"
        raise SourceError(msg)
    if ".." in pure.parts:
        msg = f"app path {path!r} contains '..'; it must stay inside the repository"
        raise SourceError(msg)
    if pure.parts[:1] == (".git",):
        msg = f"app path {path!r} points into .git"
        raise SourceError(msg)
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class _Runner:
    """Runs git for one fetch: shared environment, one deadline, masked errors."""

    env: Mapping[str, str]
    deadline: float
    timeout: float
    where: str
    secrets: tuple[str, ...]

    def mask(self, text: str) -> str:
        text = mask_url(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def remaining(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SourceError(self._timed_out(what))
        return left

    def _timed_out(self, what: str) -> str:
        return f"{what} from {self.where} timed out after {self.timeout:g}s"

    def run(self, args: Sequence[str], *, what: str, cwd: Path) -> str:
        """Run ``git args`` in ``cwd``; stdout on success, ``SourceError`` otherwise."""
        status, out, stderr = self.execute(args, what=what, cwd=cwd)
        if status != 0:
            command = ["git", *args]
            cause = git.GitCommandError([mask_url(a) for a in command], status, stderr)
            raise _GitFailed(self._failed(what, stderr, status), stderr=stderr) from cause
        return out

    def execute(self, args: Sequence[str], *, what: str, cwd: Path) -> tuple[int, str, str]:
        """Run ``git args`` in ``cwd``: exit status, stdout and (masked) stderr.

        git runs in its own process group, killed whole on the deadline: a fetch
        has children (git-remote-http, ssh) that would otherwise keep running.
        """
        left = self.remaining(what)
        command = ["git", *args]
        try:
            handle = git.Git(cwd).execute(
                command, env=dict(self.env), as_process=True, start_new_session=True
            )
        except git.GitCommandNotFound as e:
            msg = f"{what} from {self.where} failed: the git executable was not found"
            raise SourceError(msg) from e
        proc = handle.proc
        if proc is None:  # GitPython only clears it after terminating the process
            msg = f"{what} from {self.where} failed: git did not start"
            raise SourceError(msg)
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            raise SourceError(self._timed_out(what)) from e
        stderr = self.mask(err.decode(errors="replace"))
        return int(proc.returncode), str(out.decode(errors="replace")), stderr

    def _failed(self, what: str, stderr: str, status: int) -> str:
        lines = [ln.strip() for ln in stderr.splitlines()]
        lines = [ln for ln in lines if ln and not _BOILERPLATE.search(ln)]
        detail = "; ".join([ln for ln in lines if _IMPORTANT.search(ln)] or lines[-3:])
        if len(detail) > 600:
            detail = detail[:597] + "..."
        detail = detail or f"git exited with {status}"
        msg = f"{what} from {self.where} failed: {detail}"
        hint = next((h for pattern, h in _HINTS if pattern.search(detail)), "")
        return f"{msg} ({hint})" if hint else msg


class _GitFailed(SourceError):
    """git ran and failed; ``stderr`` (masked) lets the caller choose a fallback."""

    def __init__(self, message: str, *, stderr: str) -> None:
        self.stderr = stderr
        super().__init__(message)


def _askpass_script(cache_dir: Path) -> Path:
    """Write the askpass helper once; it reads the secret from the environment."""
    path = cache_dir / "askpass.sh"
    if not path.exists() or path.read_text() != _ASKPASS:
        # A private temporary name, then an atomic rename: parallel fetches may race here.
        fd, tmp = tempfile.mkstemp(prefix=".askpass.", dir=cache_dir)
        with os.fdopen(fd, "w") as out:
            out.write(_ASKPASS)
        Path(tmp).chmod(stat.S_IRWXU)
        Path(tmp).replace(path)
    return path


def _private_key(key: Path, store: Path) -> Path:
    """ssh refuses keys readable by others (Secret volumes are 0644): use a 0600 copy."""
    try:
        mode = key.stat().st_mode
        if not mode & 0o077:
            return key
        copy = store / "ssh-key"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.read_bytes())
    except OSError as e:
        msg = f"cannot read the ssh key {key}: {e.strerror}"
        raise SourceError(msg) from e
    return copy


def _ssh_command(auth: GitAuth, *, store: Path, timeout: float) -> str:
    options = [
        "-F", os.devnull,  # the machine's ~/.ssh/config must not change what we do
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
        "-o", "UpdateHostKeys=no",
        "-o", "GlobalKnownHostsFile=" + os.devnull,
        "-o", f"ConnectTimeout={max(1, math.ceil(timeout))}",
    ]  # fmt: skip
    key = _private_key(auth.ssh_key, store) if auth.ssh_key else None
    options += ["-o", f"IdentityFile={key}" if key else "IdentityFile=none"]
    if auth.insecure_ignore_host_key:
        options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=" + os.devnull]
        options += ["-o", "LogLevel=ERROR"]
    else:
        known = auth.known_hosts or Path(os.devnull)
        options += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
    return shlex.join(["ssh", *options])


def _environment(
    spec: SourceSpec, *, cache_dir: Path, store: Path, timeout: float
) -> dict[str, str]:
    """Everything git needs, and overrides for what the process environment might add."""
    config = {
        "credential.helper": "",  # never store the secret in a helper
        "protocol.version": "2",
        "transfer.fsckObjects": "true",
        "advice.detachedHead": "false",
        "gc.autoDetach": "false",
        # Trees share inodes through hard links, and a new link changes an inode's ctime.
        "core.trustctime": "false",
    }
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": str(_askpass_script(cache_dir)),
        "SSH_ASKPASS_REQUIRE": "never",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_PARAMETERS": "",
        "GIT_ALLOW_PROTOCOL": _GIT_ALLOW_PROTOCOL,
        "GIT_SSH_COMMAND": _ssh_command(spec.auth, store=store, timeout=timeout),
        "GIT_SSH_VARIANT": "ssh",
        "GITSYNC_GIT_USERNAME": spec.auth.http_username,
        "GITSYNC_GIT_PASSWORD": spec.auth.secret,
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for i, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


@contextlib.contextmanager
def checkout(
    spec: SourceSpec,
    *,
    cache_dir: Path,
    timeout: float,
    trust: verify.TrustedKeys | None = None,
) -> Iterator[Revision]:
    """Fetch ``spec.ref`` of ``spec.url`` and yield its commit, checked out and pinned.

    The tree under ``Revision.path`` is exactly that commit and stays unchanged and on
    disk until the block ends, whatever other fetches of the repository do meanwhile.
    Shallow (depth 1) for branches, tags and full shas; an abbreviated sha, or a full sha
    the server will not serve by name, costs one full fetch (later ones find it in the
    cache). Force-pushes are followed. Raises ``SourceError`` for every failure, within
    ``timeout`` seconds. With ``trust``, the commit (or the annotated tag ``spec.ref``
    names) must be signed by one of those keys, checked before anything is checked out
    (``verify.UntrustedError`` otherwise).
    """
    cache_dir = cache_dir.resolve()
    store = gitcache.Store.of(cache_dir, spec.url)
    deadline = time.monotonic() + timeout
    where = mask_url(spec.url)

    def waiting() -> None:
        if time.monotonic() > deadline:
            msg = f"waiting for the cache lock from {where} timed out after {timeout:g}s"
            raise SourceError(msg)

    with contextlib.ExitStack() as pins:
        with gitcache.locked(store, waiting=waiting):
            runner = _Runner(
                env=_environment(spec, cache_dir=cache_dir, store=store.root, timeout=timeout),
                deadline=deadline,
                timeout=timeout,
                where=where,
                secrets=tuple(s for s in (spec.auth.secret,) if s),
            )
            if not (store.repo / "HEAD").exists():
                runner.run(
                    ["init", "--quiet", "--bare", str(store.repo)],
                    what="creating the cache",
                    cwd=store.root,
                )
            previous = _local_commit(runner, store.repo, spec.ref)
            sha = _fetch_commit(spec, runner, store.repo)
            if trust is not None:
                _verify(runner, store.repo, spec, sha, trust)
            tree = _export(runner, store, sha)
            pins.enter_context(gitcache.pin(store, sha))
            if previous and previous != sha:
                _drop_if_unused(runner, store, previous)
            revision = _describe(store.repo, sha, ref=spec.ref, path=_app_dir(tree, spec.path))
        yield revision


def _verify(
    runner: _Runner, repo_dir: Path, spec: SourceSpec, sha: str, trust: verify.TrustedKeys
) -> verify.Signer:
    """git's own signature check of the synced commit, or of the annotated tag named."""
    local = gitcache.ref_name(spec.ref)
    git_dir = ["--git-dir", str(repo_dir)]
    what = f"verifying the signature of {sha[:12]}"
    kind = runner.run([*git_dir, "cat-file", "-t", local], what=what, cwd=repo_dir).strip()
    obj = sha
    if kind == "tag":
        obj = _rev_parse(runner, repo_dir, local, what=what)
    else:
        kind = "commit"
    raw = runner.run([*git_dir, "cat-file", kind, obj], what=what, cwd=repo_dir)
    with verify.keyring(trust, timeout=runner.remaining(what)) as (extra, signers):
        env = _with_config(
            {**runner.env, **extra},
            {"gpg.ssh.allowedSignersFile": str(signers), "gpg.program": "gpg"},
        )
        checking = dataclasses.replace(runner, env=env)
        status, _, output = checking.execute(
            [*git_dir, f"verify-{kind}", "--raw", obj], what=what, cwd=repo_dir
        )
    ok = status == 0
    log = get_logger(app=trust.app, repo=runner.where, ref=spec.ref)
    try:
        signer = verify.judge(kind=kind, sha=obj, ok=ok, output=output, raw=raw, keys=trust)
    except verify.UntrustedError as e:
        log.error(
            "source.untrusted",
            commit=sha,
            object=kind,
            signer=e.signer or None,
            reason=e.reason,
        )
        raise
    log.info("source.verified", commit=sha, object=kind, signer=signer.identity, by=signer.kind)
    return signer


def _with_config(env: Mapping[str, str], config: Mapping[str, str]) -> dict[str, str]:
    """``env`` with more ``GIT_CONFIG_KEY_n``/``VALUE_n`` pairs appended."""
    out = dict(env)
    count = int(out.get("GIT_CONFIG_COUNT", "0"))
    for key, value in config.items():
        out[f"GIT_CONFIG_KEY_{count}"] = key
        out[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    out["GIT_CONFIG_COUNT"] = str(count)
    return out


def fetch(spec: SourceSpec, *, cache_dir: Path, timeout: float) -> Revision:
    """``checkout`` without the pin: the tree stays until the cache's GC finds that no
    configured app's ref points at it. Renders use ``checkout``."""
    with checkout(spec, cache_dir=cache_dir, timeout=timeout) as revision:
        return revision


def _fetch_commit(spec: SourceSpec, runner: _Runner, repo_dir: Path) -> str:
    """Bring the wanted commit into the store; return its full sha."""
    ref = spec.ref
    local = gitcache.ref_name(ref)
    what = f"fetching {ref!r}"
    if _FULL_SHA.fullmatch(ref) or _SHORT_SHA.fullmatch(ref):
        with contextlib.suppress(SourceError):  # a commit never changes: no need to ask again
            known = _rev_parse(runner, repo_dir, f"{local}^{{commit}}", what=what)
            if known.startswith(ref):
                return known
    base = ["--git-dir", str(repo_dir), "fetch", "--quiet", "--no-tags", "--no-write-fetch-head"]
    try:
        runner.run(
            [*base, "--depth", "1", "--end-of-options", spec.url, f"+{ref}:{local}"],
            what=what,
            cwd=repo_dir,
        )
    except _GitFailed as e:
        by_name_missing = _NOT_ADVERTISED.search(e.stderr)
        if not (by_name_missing and (_FULL_SHA.fullmatch(ref) or _SHORT_SHA.fullmatch(ref))):
            raise
        return _fetch_everything(spec, runner, repo_dir, base=base, local=local)
    return _rev_parse(runner, repo_dir, f"{local}^{{commit}}", what=what)


def _fetch_everything(
    spec: SourceSpec, runner: _Runner, repo_dir: Path, *, base: list[str], local: str
) -> str:
    """Full fetch of branches and tags, then find the commit ``spec.ref`` names."""
    ref = spec.ref
    what = f"fetching all branches to find commit {ref!r}"
    unshallow = ["--unshallow"] if (repo_dir / "shallow").exists() else []
    refspecs = ["+refs/heads/*:refs/gitsync-all/heads/*", "+refs/tags/*:refs/gitsync-all/tags/*"]
    runner.run(
        [*base, *unshallow, "--end-of-options", spec.url, *refspecs], what=what, cwd=repo_dir
    )
    try:
        sha = _rev_parse(runner, repo_dir, f"{ref}^{{commit}}", what=what)
    except SourceError as e:
        msg = f"commit {ref!r} not found in {runner.where} (no branch or tag reaches it)"
        raise SourceError(msg) from e
    if not sha.startswith(ref):
        msg = f"{ref!r} resolved to {sha} in {runner.where}, which is not that commit"
        raise SourceError(msg)
    runner.run(["--git-dir", str(repo_dir), "update-ref", local, sha], what=what, cwd=repo_dir)
    return sha


def _local_commit(runner: _Runner, repo_dir: Path, ref: str) -> str:
    """The commit the cache's ref for ``ref`` points at, or "" before its first fetch."""
    if not (repo_dir / "HEAD").exists():
        return ""
    with contextlib.suppress(SourceError):
        local = gitcache.ref_name(ref)
        return _rev_parse(runner, repo_dir, f"{local}^{{commit}}", what=f"reading {ref!r}")
    return ""


def _drop_if_unused(runner: _Runner, store: gitcache.Store, sha: str) -> None:
    """Remove the tree a ref moved away from, unless another ref or a render still uses it,
    so the cache stays small between the controller's GC passes (and without them)."""
    refs = runner.run(
        ["--git-dir", str(store.repo), "for-each-ref", "--format=%(objectname)", "refs/gitsync/"],
        what="listing the cache's refs",
        cwd=store.repo,
    )
    if sha in refs.split() or gitcache.pinned(store, sha):
        return
    gitcache.remove(store.tree(sha))
    store.index(sha).unlink(missing_ok=True)
    store.pin_file(sha).unlink(missing_ok=True)


def _rev_parse(runner: _Runner, repo_dir: Path, rev: str, *, what: str) -> str:
    out = runner.run(
        ["--git-dir", str(repo_dir), "rev-parse", "--verify", "--quiet", "--end-of-options", rev],
        what=what,
        cwd=repo_dir,
    )
    return out.strip()


def _export(runner: _Runner, store: gitcache.Store, sha: str) -> Path:
    """The read-only tree of ``sha``: reused if unmodified, else exported and renamed in."""
    tree = store.tree(sha)
    if tree.is_dir():
        if _unmodified(runner, store, sha):
            return tree
        if gitcache.pinned(store, sha):
            msg = (
                f"the cached checkout of {sha[:12]} was modified while a render reads it; "
                "it is rebuilt on the next fetch after that render"
            )
            raise SourceError(msg)
        gitcache.remove(tree)
    what = f"checking out {sha[:12]}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=store.trees))
    index = tmp.with_name(tmp.name + ".index")
    in_tmp = ["--git-dir", str(store.repo), "--work-tree", str(tmp)]
    with_index = dataclasses.replace(runner, env={**runner.env, "GIT_INDEX_FILE": str(index)})
    try:
        base = _base(runner, store, sha)
        if base is None or not _from_base(with_index, store, base, sha, tmp=tmp, index=index):
            with_index.run([*in_tmp, "read-tree", sha], what=what, cwd=tmp)
            with_index.run([*in_tmp, "checkout-index", "--all", "--force"], what=what, cwd=tmp)
        gitcache.seal(tmp)
        # Record the final stat data, so the reuse check stays a stat check.
        with_index.run([*in_tmp, "update-index", "-q", "--refresh"], what=what, cwd=tmp)
        index.replace(store.index(sha))
        tmp.rename(tree)
    except BaseException:
        gitcache.remove(tmp)
        index.unlink(missing_ok=True)
        raise
    return tree


def _base(runner: _Runner, store: gitcache.Store, sha: str) -> str | None:
    """The newest cached tree other than ``sha``, if unmodified: unchanged files link to it."""
    built = [(p.stat().st_mtime, p.name.removesuffix(".index")) for p in store.meta.glob("*.index")]
    for _, base in sorted(built, reverse=True):
        if base != sha and store.tree(base).is_dir():
            return base if _unmodified(runner, store, base) else None
    return None


def _from_base(
    runner: _Runner, store: gitcache.Store, base: str, sha: str, *, tmp: Path, index: Path
) -> bool:
    """Fill ``tmp`` with ``sha`` by hard-linking ``base``'s files and letting git switch.

    Writing every file of a large repository costs seconds; links cost little. git
    replaces a changed file by unlinking it and creating a new one, so ``base`` (whose
    files are read-only) is never written through a shared link. False if it did not
    work (e.g. ``base``'s objects were pruned): the caller exports ``sha`` whole.
    """
    try:
        gitcache.link_copy(store.tree(base), tmp)
        shutil.copyfile(store.index(base), index)
        in_tmp = ["--git-dir", str(store.repo), "--work-tree", str(tmp)]
        runner.run(
            [*in_tmp, "read-tree", "-m", "-u", base, sha],
            what=f"checking out {sha[:12]}",
            cwd=tmp,
        )
    except (_GitFailed, OSError):
        gitcache.empty(tmp)
        index.unlink(missing_ok=True)
        return False
    return True


def _unmodified(runner: _Runner, store: gitcache.Store, sha: str) -> bool:
    """Whether the cached tree still holds exactly ``sha``: stat check, then untracked files."""
    index = store.index(sha)
    if not index.is_file():
        return False
    tree = store.tree(sha)
    in_tree = ["--git-dir", str(store.repo), "--work-tree", str(tree)]
    with_index = dataclasses.replace(runner, env={**runner.env, "GIT_INDEX_FILE": str(index)})
    what = f"checking the cached checkout of {sha[:12]}"
    try:
        with_index.run([*in_tree, "diff-files", "--quiet"], what=what, cwd=tree)
        extra = with_index.run([*in_tree, "ls-files", "--others", "-z"], what=what, cwd=tree)
    except _GitFailed:
        return False
    return not extra


def _app_dir(tree: Path, path: str) -> Path:
    """The app directory, resolved, after checking it exists and stays inside ``tree``."""
    root = tree.resolve()
    app = (root / path).resolve()
    if not app.is_relative_to(root):
        msg = f"app path {path!r} leaves the repository through a symlink"
        raise SourceError(msg)
    if app == root / ".git" or (root / ".git") in app.parents:
        msg = f"app path {path!r} points into .git"
        raise SourceError(msg)
    if not app.is_dir():
        msg = f"app path {path!r} does not exist in the repository, or is not a directory"
        raise SourceError(msg)
    return app


def _describe(repo_dir: Path, sha: str, *, ref: str, path: Path) -> Revision:
    try:
        with git.Repo(repo_dir) as repo:
            commit = repo.commit(sha)
            return Revision(
                sha=commit.hexsha,
                ref=ref,
                path=str(path),
                subject=str(commit.summary),
                author=f"{commit.author.name} <{commit.author.email}>",
                time=commit.committed_datetime.astimezone(UTC),
            )
    except (git.GitError, ValueError) as e:
        msg = f"cannot read commit {sha} from the git cache {repo_dir}: {e}"
        raise SourceError(msg) from e
