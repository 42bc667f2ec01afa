"""Signed commits and tags against the real cluster: git's own verification, real keys."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from gitsync.cli import main
from gitsync.engine import inventory
from gitsync.engine.sync import SyncResult
from tests.support.app_fixtures import App, ref
from tests.support.signing import SigningKey

pytestmark = [pytest.mark.cluster, pytest.mark.git]

Keys = Callable[[str, str], SigningKey]
CM = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: signed
  namespace: {ns}
data:
  v: "VERSION"
"""


NS = """\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
"""


def _files(version: str) -> dict[str, str]:
    return {"ns.yaml": NS, "cm.yaml": CM.replace("VERSION", version)}


def _commit(app: App, version: str, key: SigningKey | None) -> str:
    files = {k: v.format(ns=app.ns) for k, v in _files(version).items()}
    return app.repo.commit(files, message=f"v{version}", sign=key)


def _trust(app: App, *keys: SigningKey) -> dict[str, object]:
    """A Secret in the state namespace trusting ``keys``; the app's ``verify`` section."""
    ns = app.ctx.state_namespace
    if app.ctx.kube.get(ref("Namespace", ns)) is None:
        app.ctx.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    pgp = b"".join(k.public for k in keys if k.format == "openpgp")
    ssh = b"".join(k.public for k in keys if k.format == "ssh")
    data = {"pgp.asc": pgp, "allowed_signers": ssh}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "trusted-signers", "namespace": ns},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items() if v},
    }
    app.ctx.kube.create(secret)
    return {"verify": {"secretRef": "trusted-signers"}}


def _value(app: App) -> str | None:
    live = app.ctx.kube.get(ref("ConfigMap", "signed", app.ns))
    return None if live is None else str(live["data"]["v"])


def _refused(app: App, result: SyncResult, sha: str, reason: str, signer: str = "") -> None:
    assert result.result == "failed", result
    assert result.refused, "an untrusted commit must be refused before any write"
    assert reason in result.error
    assert sha[:12] in result.error
    if signer:
        assert signer in result.error
    state = inventory.read_state(app.ctx.kube, app=app.name, namespace=app.ctx.state_namespace)
    assert sha not in state.quarantined, "nothing ran, so nothing is quarantined"


def _sync_logged(app: App, **extra: object) -> tuple[SyncResult, list[dict[str, object]]]:
    with structlog.testing.capture_logs() as logs:
        result = app.sync(**extra)
    return result, [e for e in logs if e["event"] == "source.untrusted"]


def test_commits_signed_with_gpg_and_ssh_keys_sync(app: App, signing_keys: Keys) -> None:
    """Commits signed by a trusted OpenPGP key and by a trusted ssh key both sync."""
    gpg, ssh = signing_keys("openpgp", "alice"), signing_keys("ssh", "bob")
    verify = _trust(app, gpg, ssh)
    _commit(app, "1", gpg)
    assert app.sync(**verify).result == "synced"
    assert _value(app) == "1"
    _commit(app, "2", ssh)
    assert app.sync(**verify).result == "synced"
    assert _value(app) == "2"


def test_unsigned_commit_on_signed_history_is_refused(app: App, signing_keys: Keys) -> None:
    """An unsigned tip on signed history: source.untrusted, nothing written, not quarantined."""
    gpg = signing_keys("openpgp", "alice")
    verify = _trust(app, gpg)
    _commit(app, "1", gpg)
    assert app.sync(**verify).result == "synced"
    bad = _commit(app, "2", None)
    result, logged = _sync_logged(app, **verify)
    _refused(app, result, bad, "is not signed")
    assert _value(app) == "1"
    assert [(e["commit"], e["signer"]) for e in logged] == [(bad, None)]
    assert app.sync().result == "synced", "without verify the same commit syncs"


@pytest.mark.parametrize(
    ("fmt", "reason"),
    [
        ("openpgp", "the signing key is not among the trusted OpenPGP keys"),
        ("ssh", "the ssh signing key is not in 'allowed_signers'"),
    ],
)
def test_commit_signed_by_an_untrusted_key_is_refused(
    app: App, signing_keys: Keys, fmt: str, reason: str
) -> None:
    """A valid signature by a key not in the Secret is refused, naming that key."""
    trusted, stranger = signing_keys(fmt, "alice"), signing_keys(fmt, "mallory")
    verify = _trust(app, trusted)
    _commit(app, "1", trusted)
    assert app.sync(**verify).result == "synced"
    bad = _commit(app, "2", stranger)
    result, logged = _sync_logged(app, **verify)
    _refused(app, result, bad, reason)
    assert _value(app) == "1"
    (event,) = logged
    signer = str(event["signer"])
    if fmt == "openpgp":
        assert signer == stranger.key  # the fingerprint
    else:
        assert signer.startswith("SHA256:")
    assert signer in result.error


def test_force_push_to_an_unsigned_tip_is_refused(app: App, signing_keys: Keys) -> None:
    """A force-push replacing the signed tip by an unsigned commit changes nothing."""
    ssh = signing_keys("ssh", "alice")
    verify = _trust(app, ssh)
    _commit(app, "1", ssh)
    _commit(app, "2", ssh)
    assert app.sync(**verify).result == "synced"
    bad = app.repo.rewrite(
        {k: v.format(ns=app.ns) for k, v in _files("3").items()}, message="force"
    )
    result, _ = _sync_logged(app, **verify)
    _refused(app, result, bad, "is not signed")
    assert _value(app) == "2"


def test_tags_are_verified_as_tag_objects(app: App, signing_keys: Keys) -> None:
    """A tag signed by a trusted key syncs; moved to a tag signed by a stranger, refused."""
    gpg, stranger = signing_keys("openpgp", "alice"), signing_keys("openpgp", "mallory")
    verify = {**_trust(app, gpg), "branch": "release"}
    first = _commit(app, "1", None)  # the tag carries the signature, not the commit
    app.repo.tag("release", first, sign=gpg)
    assert app.sync(**verify).result == "synced"
    assert _value(app) == "1"
    second = _commit(app, "2", gpg)  # a trusted commit does not excuse an untrusted tag
    app.repo.tag("release", second, sign=stranger)
    result, logged = _sync_logged(app, **verify)
    assert result.refused
    assert result.error.startswith("tag "), result.error
    assert "not among the trusted OpenPGP keys" in result.error
    assert stranger.key in result.error
    assert logged[0]["object"] == "tag"
    assert logged[0]["commit"] == second
    assert _value(app) == "1"


def test_cli_sync_once_with_verify_keys_refuses_with_exit_2(
    app: App, signing_keys: Keys, kubeconfig: Path, tmp_path: Path
) -> None:
    """`sync --once --verify-keys FILE` syncs a trusted commit and exits 2 on an unsigned one."""
    ssh = signing_keys("ssh", "alice")
    keys = tmp_path / "allowed_signers"
    keys.write_bytes(ssh.public)
    args = ["sync", "--once", "--repo", app.repo.file_url, "--namespace", app.ns]
    args += ["--app", app.name, "--state-namespace", app.ctx.state_namespace]
    args += ["--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cli-cache")]
    args += ["--verify-keys", str(keys)]
    _commit(app, "1", ssh)
    assert main(args) == 0
    assert _value(app) == "1"
    _commit(app, "2", None)
    assert main(args) == 2
    assert _value(app) == "1"
    assert main([a for a in args if a not in ("--verify-keys", str(keys))]) == 0
    assert _value(app) == "2"


def test_a_commit_changed_after_signing_is_refused_as_a_bad_signature(
    app: App, signing_keys: Keys
) -> None:
    """A signed commit whose content was altered afterwards: BADSIG, refused, nothing written."""
    gpg = signing_keys("openpgp", "alice")
    verify = _trust(app, gpg)
    _commit(app, "1", gpg)
    assert app.sync(**verify).result == "synced"
    signed = _commit(app, "2", gpg)
    git_dir = ["git", "--git-dir", str(app.repo.path)]
    raw = subprocess.run(
        [*git_dir, "cat-file", "commit", signed], capture_output=True, check=True
    ).stdout
    forged_raw = raw.replace(b"\nv2\n", b"\nv2 (approved)\n")
    assert forged_raw != raw
    forged = (
        subprocess.run(
            [*git_dir, "hash-object", "-t", "commit", "-w", "--stdin"],
            input=forged_raw,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    subprocess.run([*git_dir, "update-ref", "refs/heads/main", forged], check=True)
    result, logged = _sync_logged(app, **verify)
    _refused(app, result, forged, "bad signature", signer=gpg.key[-16:])
    assert logged[0]["commit"] == forged
    assert _value(app) == "1"
