"""Trusted signers: who may sign the commit (or annotated tag) an app syncs.

The verdict is git's own (``git verify-commit --raw`` / ``git verify-tag --raw``, run by
``source``), against a private keyring built for that one check: a temporary
``GNUPGHOME`` holding only the app's OpenPGP public keys, and an ssh allowed-signers
file given as ``gpg.ssh.allowedSignersFile``. Nothing of the machine's own keyrings or
Git config takes part. This module holds the keys, builds that keyring, and turns git's
output into a ``Signer`` or an ``UntrustedError`` that says who signed (if anyone) and why
the signature was refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import itertools
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gitsync.errors import SourceError

if TYPE_CHECKING:
    from gitsync.config import VerifyConfig
    from gitsync.kube import Kube

__all__ = ["Signer", "TrustedKeys", "UntrustedError", "from_path", "judge", "keyring", "load"]

PGP_KEY = "pgp.asc"
SSH_KEY = "allowed_signers"
_PGP_BLOCK = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_SSH_SIG = re.compile(
    r"-----BEGIN SSH SIGNATURE-----(?P<body>.*?)-----END SSH SIGNATURE-----", re.DOTALL
)
_STATUS = re.compile(r"^\[GNUPG:\] (?P<word>[A-Z_]+)(?: (?P<rest>.*))?$", re.MULTILINE)
_PRINCIPAL = re.compile(r'signature for (?P<who>\S+) with|principal "(?P<quoted>[^"]*)"')
_SSH_FPR = re.compile(r"(?:key|Key) (?P<fpr>SHA256:[A-Za-z0-9+/]+)")
_GPG_REASONS = {
    "BADSIG": "the signature does not match the content (bad signature)",
    "EXPKEYSIG": "the signing key has expired",
    "REVKEYSIG": "the signing key is revoked",
    "EXPSIG": "the signature has expired",
    "NO_PUBKEY": "the signing key is not among the trusted OpenPGP keys",
}


class UntrustedError(SourceError):
    """The synced commit or tag carries no valid signature by a trusted key.

    Nothing ran: the commit is refused before it is checked out or rendered, and is not
    quarantined (a trusted commit on the same ref syncs as usual).
    """

    def __init__(self, message: str, *, commit: str, signer: str, reason: str) -> None:
        super().__init__(message)
        self.commit = commit
        self.signer = signer
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustedKeys:
    """Public keys only: armored OpenPGP keys and/or an ssh allowed-signers file."""

    app: str
    origin: str  # where they came from, for messages: "Secret ns/name" or a path
    pgp: bytes = b""
    allowed_signers: bytes = b""

    def __post_init__(self) -> None:
        if not self.pgp.strip() and not self.allowed_signers.strip():
            msg = f"{self.origin} holds no trusted keys: give {PGP_KEY!r} and/or {SSH_KEY!r}"
            raise SourceError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signer:
    """Who signed: ``openpgp`` with a fingerprint, or ``ssh`` with a principal and key."""

    kind: str
    identity: str


def load(cfg: VerifyConfig, *, app: str, kube: Kube, namespace: str) -> TrustedKeys:
    """The app's trusted keys, read now (a rotated Secret counts from the next sync)."""
    if cfg.keys is not None:
        return from_path(Path(cfg.keys), app=app)
    from gitsync.source.credentials import read_secret

    name = str(cfg.secret_ref)
    data = read_secret(kube, namespace=namespace, name=name)
    return TrustedKeys(
        app=app,
        origin=f"Secret {namespace}/{name}",
        pgp=data.get(PGP_KEY, b""),
        allowed_signers=data.get(SSH_KEY, b""),
    )


def from_path(path: Path, *, app: str) -> TrustedKeys:
    """A directory (``pgp.asc``, ``*.asc``, ``allowed_signers``) or one file of either kind."""
    try:
        if path.is_dir():
            pgp = b"".join(p.read_bytes() + b"\n" for p in sorted(path.glob("*.asc")))
            signers = path / SSH_KEY
            ssh = signers.read_bytes() if signers.is_file() else b""
        else:
            content = path.read_bytes()
            is_pgp = _PGP_BLOCK.encode() in content
            pgp, ssh = (content, b"") if is_pgp else (b"", content)
    except OSError as e:
        msg = f"cannot read the trusted keys at {path}: {e.strerror}"
        raise SourceError(msg) from e
    return TrustedKeys(app=app, origin=str(path), pgp=pgp, allowed_signers=ssh)


@contextlib.contextmanager
def keyring(keys: TrustedKeys, *, timeout: float) -> Iterator[tuple[dict[str, str], Path]]:
    """A private directory with the keys in it; yields (environment, allowed-signers file).

    The directory is removed afterwards, so every check starts from the Secret's keys.
    """
    home = Path(tempfile.mkdtemp(prefix="gitsync-verify-"))
    try:
        gnupg = home / "gnupg"
        gnupg.mkdir(mode=0o700)
        signers = home / SSH_KEY
        signers.write_bytes(keys.allowed_signers)
        if keys.pgp.strip():
            _import(gnupg, keys, timeout=timeout)
        yield {"GNUPGHOME": str(gnupg)}, signers
    finally:
        if any(gnupg.glob("S.*")):  # an agent was started for this home: stop it
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["gpgconf", "--homedir", str(gnupg), "--kill", "all"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
        shutil.rmtree(home, ignore_errors=True)


def _import(gnupg: Path, keys: TrustedKeys, *, timeout: float) -> None:
    command = ["gpg", "--batch", "--no-tty", "--quiet", "--homedir", str(gnupg), "--import"]
    try:
        proc = subprocess.run(
            command,
            input=keys.pgp,
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "GNUPGHOME": str(gnupg)},
        )
    except FileNotFoundError as e:
        msg = "cannot check OpenPGP signatures: the gpg executable was not found"
        raise SourceError(msg) from e
    except subprocess.TimeoutExpired as e:
        msg = f"importing the trusted OpenPGP keys of {keys.origin} timed out"
        raise SourceError(msg) from e
    if proc.returncode != 0:
        first = proc.stderr.decode(errors="replace").strip().splitlines()[:1]
        msg = f"{keys.origin}: {PGP_KEY!r} is not a valid OpenPGP public key block: {first}"
        raise SourceError(msg)


def judge(*, kind: str, sha: str, ok: bool, output: str, raw: str, keys: TrustedKeys) -> Signer:
    """git's verdict on ``sha`` (a ``commit`` or ``tag``): its ``Signer``, or ``UntrustedError``.

    ``output`` is git's ``--raw`` output (gpg status lines or ssh-keygen's message),
    ``raw`` the object itself, read for the signer's identity when git refused.
    """
    signature = _signature(kind, raw)
    signed = bool(signature)
    ssh = _SSH_SIG.search(signature)
    status = {m["word"]: (m["rest"] or "") for m in _STATUS.finditer(output)}
    if ok and ssh is not None:
        who = _PRINCIPAL.search(output)
        fpr = _SSH_FPR.search(output)
        parts = [who and (who["who"] or who["quoted"]), fpr and fpr["fpr"]]
        return Signer(kind="ssh", identity=" ".join(x for x in parts if x))
    if ok and "VALIDSIG" in status and "GOODSIG" in status:
        return Signer(kind="openpgp", identity=status["VALIDSIG"].split()[0])
    signer = ""
    if not signed:
        reason = f"the {kind} is not signed"
    elif ssh is not None:
        signer = _ssh_fingerprint(ssh["body"])
        if not keys.allowed_signers.strip():
            reason = f"it is signed with an ssh key, and no {SSH_KEY!r} is trusted"
        elif "No principal matched" in output or "no principal" in output.lower():
            reason = f"the ssh signing key is not in {SSH_KEY!r}"
        else:
            reason = "the ssh signature does not verify: " + _first_line(output)
    else:
        signer = _gpg_signer(status)
        word = next((w for w in _GPG_REASONS if w in status), "")
        if word:
            reason = _GPG_REASONS[word]
        elif "ERRSIG" in status:
            reason = "the OpenPGP signature cannot be checked: " + _first_line(output)
        elif not keys.pgp.strip():
            reason = f"it is signed with an OpenPGP key, and no {PGP_KEY!r} is trusted"
        else:
            reason = "the OpenPGP signature was not accepted: " + _first_line(output)
    by = f" (signed by {signer})" if signer else ""
    message = (
        f"{kind} {sha[:12]} is not trusted: {reason}{by}; nothing was applied. Sign it with "
        f"a key trusted in {keys.origin}, or add the signer's public key there"
    )
    raise UntrustedError(message, commit=sha, signer=signer, reason=reason)


def _signature(kind: str, raw: str) -> str:
    """The signature block of a commit (its ``gpgsig`` header) or a tag (end of message)."""
    if kind == "commit":
        header = raw.split("\n\n", 1)[0]
        lines = header.split("\n")
        for i, line in enumerate(lines):
            if line.startswith(("gpgsig ", "gpgsig-sha256 ")):
                block = [line.split(" ", 1)[1]]
                rest = itertools.takewhile(lambda ln: ln.startswith(" "), lines[i + 1 :])
                block += [ln[1:] for ln in rest]
                return "\n".join(block)
        return ""
    start = max(
        raw.rfind("-----BEGIN PGP SIGNATURE-----"), raw.rfind("-----BEGIN SSH SIGNATURE-----")
    )
    return raw[start:] if start >= 0 else ""


def _first_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[0][:200] if lines else "no output"


def _gpg_signer(status: dict[str, str]) -> str:
    for word in ("VALIDSIG", "ERRSIG", "BADSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"):
        fields = status.get(word, "").split()
        if not fields:
            continue
        if word == "ERRSIG" and len(fields) >= 7 and len(fields[6]) >= 40:
            return fields[6]  # the issuer fingerprint, when the signature names it
        return fields[0]
    return ""


def _ssh_fingerprint(armored: str) -> str:
    """``SHA256:...`` of the public key inside an SSHSIG blob (PROTOCOL.sshsig)."""
    try:
        blob = base64.b64decode("".join(armored.split()), validate=True)
        if blob[:6] != b"SSHSIG":
            return ""
        (size,) = struct.unpack(">I", blob[10:14])
        key = blob[14 : 14 + size]
    except (binascii.Error, ValueError, struct.error):
        return ""
    digest = base64.b64encode(hashlib.sha256(key).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
