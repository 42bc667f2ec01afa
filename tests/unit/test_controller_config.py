"""The controller's part of the config, and credentials from Secret data."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest

from gitsync.config import parse
from gitsync.errors import ConfigError, SourceError
from gitsync.model import ObjectRef
from gitsync.source.credentials import CredentialStore

APP = {"name": "shop", "repo": "https://git.example.test/acme/deploy.git"}


def test_controller_defaults_match_client_go() -> None:
    """Without a controller section: :8080, a 15/10/2 s Lease, no webhook."""
    ctl = parse({"apps": [APP]}).controller
    assert ctl.listen == ":8080"
    election = ctl.leader_election
    assert (election.lease_duration, election.renew_deadline, election.retry_period) == (
        15,
        10,
        2,
    )
    assert ctl.webhook is None


@pytest.mark.parametrize(
    ("controller", "expected"),
    [
        ({"listen": "8080"}, "controller.listen: '8080' must be HOST:PORT"),
        ({"listen": ":99999"}, "controller.listen"),
        ({"leaderElection": {"leaseDuration": "5s"}}, "retryPeriod < renewDeadline"),
        ({"leaderElection": {"leaseDuration": "soon"}}, "controller.leaderElection.leaseDuration"),
        ({"webhook": {}}, "controller.webhook: give exactly one of"),
        (
            {"webhook": {"secretEnv": "A", "secretFile": "/x"}},
            "controller.webhook: give exactly one of",
        ),
        ({"webhook": {"secretRef": {"key": "k"}}}, "controller.webhook.secretRef.name"),
        ({"webhook": {"secretEnv": "A", "maxBodyBytes": 0}}, "controller.webhook.maxBodyBytes"),
        ({"jitter": 0.9}, "controller.jitter"),
        ({"retry": {"initial": "0s"}}, "controller.retry.initial"),
        ({"leader": True}, "controller.leader: unknown key"),
    ],
)
def test_bad_controller_config_names_the_key(controller: dict[str, Any], expected: str) -> None:
    """Every controller setting is validated with its key path."""
    with pytest.raises(ConfigError, match=r"gitsync\.yaml") as e:
        parse({"apps": [APP], "controller": controller}, source="gitsync.yaml")
    assert expected in str(e.value)


class FakeKube:
    """Only ``get`` of Secrets, from a dict of name -> data."""

    def __init__(self, secrets: dict[str, dict[str, bytes]]) -> None:
        self.secrets = secrets

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        data = self.secrets.get(ref.name)
        if data is None:
            return None
        return {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def store(tmp_path: Path, secrets: dict[str, dict[str, bytes]]) -> CredentialStore:
    folder = tmp_path / "creds"
    folder.mkdir(mode=0o700)
    return CredentialStore(kube=FakeKube(secrets), namespace="gitsync-system", directory=folder)


def test_ssh_key_material_goes_to_private_files(tmp_path: Path) -> None:
    """identity and known_hosts become 0600 files; nothing secret is in the repr."""
    creds = store(tmp_path, {"git": {"identity": b"PRIVATE KEY", "known_hosts": b"host key"}})
    auth = creds.load(app="shop", secret="git")
    assert auth.ssh_key is not None
    assert auth.known_hosts is not None
    assert auth.ssh_key.read_bytes() == b"PRIVATE KEY\n"
    assert stat.S_IMODE(auth.ssh_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth.known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth.ssh_key.parent.stat().st_mode) == 0o700
    assert "PRIVATE" not in repr(auth)


def test_https_credentials_from_secret(tmp_path: Path) -> None:
    """username+password, or a bare token; secrets stay out of the repr."""
    creds = store(
        tmp_path,
        {"basic": {"username": b"bot", "password": b"pw\n"}, "tok": {"token": b"t0k"}},
    )
    basic = creds.load(app="a", secret="basic")
    assert (basic.username, basic.password) == ("bot", "pw")
    token = creds.load(app="b", secret="tok")
    assert token.token == "t0k"
    assert token.http_username == "x-access-token"
    assert "pw" not in repr(basic)
    assert "t0k" not in repr(token)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, "Secret gitsync-system/git does not exist"),
        ({"identity": b"k"}, "no 'known_hosts'"),
        ({"token": b"t", "password": b"p", "username": b"u"}, "both 'token' and 'password'"),
        ({"password": b"p"}, "no 'username'"),
        ({"foo": b"bar"}, "none of the keys gitsync reads"),
        ({"token": b"\xff\xfe"}, "key 'token' is not UTF-8"),
    ],
)
def test_unusable_secrets_say_which_key(
    tmp_path: Path, data: dict[str, bytes] | None, expected: str
) -> None:
    """Each problem names the Secret and the key, never a value."""
    creds = store(tmp_path, {} if data is None else {"git": data})
    with pytest.raises(SourceError, match="Secret gitsync-system/git") as e:
        creds.load(app="shop", secret="git")
    assert expected in str(e.value)
