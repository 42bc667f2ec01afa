"""Real signing keys for tests: OpenPGP keys made by ``gpg``, ssh keys by ``ssh-keygen``.

Each key lives in its own temporary directory; ``SigningKey.config`` is what git needs to
sign a commit or tag with it (``commit-tree -S``, ``tag -s``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """One signer: ``public`` is what a verifier trusts (armored key or allowed_signers line)."""

    format: str  # openpgp | ssh
    key: str  # gpg fingerprint, or the ssh private key file
    public: bytes
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> list[str]:
        return ["-c", f"gpg.format={self.format}", "-c", f"user.signingkey={self.key}"]


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        list(args),
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        msg = f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
        raise RuntimeError(msg)
    return proc.stdout


def gpg_key(home: Path, name: str) -> SigningKey:
    """A fresh ed25519 OpenPGP signing key without passphrase, in its own GNUPGHOME."""
    home.mkdir(mode=0o700, parents=True)
    env = {"GNUPGHOME": str(home)}
    uid = f"{name} <{name}@example.test>"
    _run("gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign",
         "never", env=env)  # fmt: skip
    listing = _run("gpg", "--batch", "--with-colons", "--list-keys", env=env)
    fpr = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
    public = _run("gpg", "--batch", "--armor", "--export", fpr, env=env).encode()
    return SigningKey(format="openpgp", key=fpr, public=public, env=env)


def ssh_key(home: Path, name: str) -> SigningKey:
    """A fresh ed25519 ssh key; ``public`` is its allowed_signers line."""
    home.mkdir(mode=0o700, parents=True)
    path = home / "id_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path))
    line = f"{name}@example.test {path.with_suffix('.pub').read_text().strip()}\n"
    return SigningKey(format="ssh", key=str(path), public=line.encode())


def stop_agents(key: SigningKey) -> None:
    if "GNUPGHOME" in key.env:
        subprocess.run(
            ["gpgconf", "--homedir", key.env["GNUPGHOME"], "--kill", "all"],
            capture_output=True,
            check=False,
        )


@pytest.fixture
def signing_keys(tmp_path: Path) -> Iterator[Callable[[str, str], SigningKey]]:
    """``make(format, name)``: a new key of ``openpgp`` or ``ssh``; gpg agents stopped after."""
    made: list[SigningKey] = []

    def make(fmt: str, name: str) -> SigningKey:
        home = tmp_path / f"keys-{fmt}-{name}"
        key = gpg_key(home, name) if fmt == "openpgp" else ssh_key(home, name)
        made.append(key)
        return key

    yield make
    for key in made:
        stop_agents(key)
