"""URL, ref, path and auth checks that run before git ever sees a value."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitsync.errors import SourceError
from gitsync.source.git import GitAuth, SourceSpec, validate_path, validate_ref, validate_url

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/acme/deploy.git",
        "http://127.0.0.1:8080/deploy.git",
        "ssh://git@git.example.com:2222/acme/deploy.git",
        "git://git.example.com/deploy.git",
        "file:///srv/git/deploy.git",
        "git@github.com:acme/deploy.git",
        "github.com:acme/deploy.git",
        "HTTPS://git.example.com/deploy.git",
        "https://deploy-bot@dev.example.com/acme/_git/deploy",
    ],
)
def test_allowed_urls_pass(url: str) -> None:
    """https, http, ssh, git, file and scp-like URLs are accepted unchanged."""
    assert validate_url(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("--upload-pack=touch /tmp/pwned", "whitespace"),
        ("--upload-pack=touch", "starts with '-'"),
        ("-oProxyCommand=x:repo", "starts with '-'"),
        ("ext::sh -c touch% /tmp/pwned", "whitespace"),
        ("ext::sh", "transport helper"),
        ("fd::17", "transport helper"),
        ("https://git.example.com/deploy.git\n", "control"),
        ("https://git.example.com/de ploy.git", "whitespace"),
        ("https://git.example.com/\x00deploy.git", "control"),
        ("https://git.example.com/deploy\u202e.git", "control"),
        ("ftp://git.example.com/deploy.git", "scheme 'ftp'"),
        ("ssh+git://git.example.com/deploy.git", r"scheme 'ssh\+git'"),
        ("/srv/git/deploy.git", "not a URL git may fetch"),
        ("deploy.git", "not a URL git may fetch"),
        ("./srv:deploy.git", "not a URL git may fetch"),
        ("https://user:hunter2@git.example.com/deploy.git", "holds a password"),
        ("ssh://-oProxyCommand=touch@x/repo", "starting with '-'"),
        ("ssh://git@-oProxyCommand=x/repo", "starting with '-'"),
        ("git@-oProxyCommand=x:repo", "the host starts with '-'"),
        ("git@host:-repo", "the path starts with '-'"),
        ("file://otherhost/srv/deploy.git", "names a host"),
        ("https:///deploy.git", "no host"),
        ("https://[::1/deploy.git", "cannot be parsed"),
    ],
)
def test_dangerous_or_unsupported_urls_are_refused(url: str, reason: str) -> None:
    """Option-like, helper-transport, unknown-scheme and credential-bearing URLs are refused."""
    with pytest.raises(SourceError, match=reason):
        validate_url(url)


def test_refused_url_message_masks_password() -> None:
    """The refusal of a URL holding a password does not repeat the password."""
    with pytest.raises(SourceError) as info:
        validate_url("https://user:hunter2@git.example.com/deploy.git")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "ref",
    ["main", "HEAD", "release/v1.2", "v1.0.0", "refs/heads/main", "refs/tags/v1", SHA, SHA[:7]],
)
def test_allowed_refs_pass(ref: str) -> None:
    """Branches, tags, HEAD, full refs and shas are accepted unchanged."""
    assert validate_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "-b",
        "--upload-pack=touch",
        "+main",
        "main:refs/heads/evil",
        "main..dev",
        "../main",
        "ma in",
        "main\n",
        "main\x7f",
        "main~1",
        "main^",
        "feat*",
        "feat?",
        "feat[1]",
        "a\\b",
        "/main",
        "main/",
        "main.lock",
        "main.",
        "a//b",
        "refs/heads/.hidden",
        "@",
        "main@{1}",
    ],
)
def test_dangerous_refs_are_refused(ref: str) -> None:
    """Option-like refs, refspecs and names git itself forbids are refused."""
    with pytest.raises(SourceError, match="git ref"):
        validate_ref(ref)


@pytest.mark.parametrize("path", ["", ".", "deploy", "clusters/prod", "a/b/c/"])
def test_allowed_app_paths_pass(path: str) -> None:
    """Relative paths inside the repository are accepted."""
    assert validate_path(path) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc", "relative"),
        ("../other", r"'\.\.'"),
        ("deploy/../../x", r"'\.\.'"),
        ("deploy\\prod", "relative"),
        (".git", "into .git"),
        (".git/hooks", "into .git"),
        ("deploy\n", "relative"),
    ],
)
def test_escaping_app_paths_are_refused(path: str, reason: str) -> None:
    """Absolute paths, '..', backslashes and .git are refused."""
    with pytest.raises(SourceError, match=reason):
        validate_path(path)


def test_spec_validates_on_construction() -> None:
    """A SourceSpec with a bad ref cannot be built."""
    with pytest.raises(SourceError, match="git ref"):
        SourceSpec(url="https://git.example.com/deploy.git", ref="--upload-pack=x")


def test_spec_defaults_to_head_and_repo_root() -> None:
    """Without ref and path a spec means the default branch at the repository root."""
    spec = SourceSpec(url="https://git.example.com/deploy.git")
    assert (spec.ref, spec.path) == ("HEAD", ".")


def test_auth_repr_hides_secrets() -> None:
    """repr(GitAuth) shows neither the password nor the token."""
    assert "s3cret" not in repr(GitAuth(username="u", password="s3cret"))
    assert "tok-123" not in repr(GitAuth(token="tok-123"))
    assert "ssh_key" in repr(GitAuth(ssh_key=Path("/k")))


def test_auth_password_and_token_together_refused() -> None:
    """Giving both a password and a token is ambiguous and refused."""
    with pytest.raises(SourceError, match="both a password and a token"):
        GitAuth(password="a", token="b")


def test_auth_secret_with_newline_refused() -> None:
    """A secret with a newline (a broken Secret value) is refused, not half-sent."""
    with pytest.raises(SourceError, match="control character"):
        GitAuth(token="abc\n")


def test_token_uses_x_access_token_user() -> None:
    """A bare token is sent with the x-access-token user; an explicit user wins."""
    assert GitAuth(token="t").http_username == "x-access-token"
    assert GitAuth(username="oauth2", token="t").http_username == "oauth2"


@pytest.mark.parametrize(
    "url",
    [
        "http://git.example.com/deploy.git",
        "ssh://git@git.example.com/deploy.git",
        "git@git.example.com:deploy.git",
        "git://git.example.com/deploy.git",
    ],
)
def test_secret_over_plaintext_or_non_https_refused(url: str) -> None:
    """A password or token is only sent over https, or plain http to loopback."""
    with pytest.raises(SourceError, match="token"):
        SourceSpec(url=url, auth=GitAuth(token="t"), allow_insecure=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/d.git", "http://localhost/d.git"])
def test_secret_over_loopback_http_allowed(url: str) -> None:
    """Plain http with credentials is allowed to this machine (tests, sidecars)."""
    assert SourceSpec(url=url, auth=GitAuth(token="t"), allow_insecure=True).url == url


@pytest.mark.parametrize(
    "url", ["http://git.example.com/deploy.git", "git://git.example.com/deploy.git"]
)
def test_plaintext_urls_need_allow_insecure(url: str) -> None:
    """http:// and git:// are refused by default, saying how to allow them."""
    with pytest.raises(SourceError, match=r"allowInsecure: true"):
        SourceSpec(url=url)
    assert SourceSpec(url=url, allow_insecure=True).url == url
