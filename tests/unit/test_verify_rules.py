"""How git's verification output becomes a signer or a refusal (pure rules, no git run)."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest

from gitsync.errors import SourceError
from gitsync.source.verify import TrustedKeys, UntrustedError, from_path, judge

KEYS = TrustedKeys(app="shop", origin="Secret gs/signers", pgp=b"pgp", allowed_signers=b"ssh")
SHA = "a" * 40
UNSIGNED = f"tree {'b' * 40}\nauthor A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\n\nmsg\n"
FPR = "E950DC986CAFB2354C98F24A68BA2E3291F725AE"


def _pgp_commit() -> str:
    head, body = UNSIGNED.split("\n\n", 1)
    sig = "gpgsig -----BEGIN PGP SIGNATURE-----\n \n iHUEABYKAB0=\n -----END PGP SIGNATURE-----"
    return f"{head}\n{sig}\n\n{body}"


def _ssh_commit(key_blob: bytes) -> str:
    blob = b"SSHSIG" + struct.pack(">I", 1) + struct.pack(">I", len(key_blob)) + key_blob
    armored = base64.b64encode(blob).decode()
    head, body = UNSIGNED.split("\n\n", 1)
    sig = f"gpgsig -----BEGIN SSH SIGNATURE-----\n {armored}\n -----END SSH SIGNATURE-----"
    return f"{head}\n{sig}\n\n{body}"


def test_unsigned_commit_is_refused_even_if_its_message_quotes_a_signature() -> None:
    """Only the gpgsig header counts: a message quoting a signature block is still unsigned."""
    raw = UNSIGNED.replace("msg", "-----BEGIN SSH SIGNATURE-----\nx\n-----END SSH SIGNATURE-----")
    with pytest.raises(UntrustedError) as e:
        judge(kind="commit", sha=SHA, ok=False, output="", raw=raw, keys=KEYS)
    assert e.value.reason == "the commit is not signed"
    assert e.value.signer == ""
    assert "Secret gs/signers" in str(e.value)


def test_unknown_openpgp_key_names_the_issuer_fingerprint() -> None:
    """ERRSIG/NO_PUBKEY: refused as an untrusted key, naming the fingerprint."""
    output = (
        f"[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 68BA2E3291F725AE 22 8 00 1796046161 9 {FPR}\n"
        "[GNUPG:] NO_PUBKEY 68BA2E3291F725AE\n"
    )
    with pytest.raises(UntrustedError) as e:
        judge(kind="commit", sha=SHA, ok=False, output=output, raw=_pgp_commit(), keys=KEYS)
    assert e.value.signer == FPR
    assert "not among the trusted OpenPGP keys" in e.value.reason


def test_bad_openpgp_signature_is_refused_as_bad() -> None:
    """BADSIG: the content was changed after signing."""
    output = "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 68BA2E3291F725AE Signer <s@x>\n"
    with pytest.raises(UntrustedError) as e:
        judge(kind="commit", sha=SHA, ok=False, output=output, raw=_pgp_commit(), keys=KEYS)
    assert "bad signature" in e.value.reason
    assert e.value.signer == "68BA2E3291F725AE"


def test_good_openpgp_signature_needs_git_to_agree() -> None:
    """GOODSIG+VALIDSIG with git's success is trusted; the same lines with git's failure are not."""
    output = f"[GNUPG:] GOODSIG 68BA2E3291F725AE S <s@x>\n[GNUPG:] VALIDSIG {FPR} 2026-11-30\n"
    signer = judge(kind="commit", sha=SHA, ok=True, output=output, raw=_pgp_commit(), keys=KEYS)
    assert (signer.kind, signer.identity) == ("openpgp", FPR)
    with pytest.raises(UntrustedError):
        judge(kind="commit", sha=SHA, ok=False, output=output, raw=_pgp_commit(), keys=KEYS)


def test_unknown_ssh_key_is_named_by_its_fingerprint() -> None:
    """The SHA256 fingerprint is read from the SSHSIG blob, as ssh-keygen -l prints it."""
    key = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(key).digest()).decode().rstrip("=")
    with pytest.raises(UntrustedError) as e:
        judge(
            kind="commit",
            sha=SHA,
            ok=False,
            output="No principal matched.\n",
            raw=_ssh_commit(key),
            keys=KEYS,
        )
    assert e.value.signer == expected
    assert "not in 'allowed_signers'" in e.value.reason


def test_keys_from_a_directory_or_a_file(tmp_path: Path) -> None:
    """--verify-keys: *.asc and allowed_signers in a directory, or one file of either kind."""
    (tmp_path / "a.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\nx\n")
    (tmp_path / "allowed_signers").write_text("me@x ssh-ed25519 AAAA\n")
    keys = from_path(tmp_path, app="shop")
    assert b"PGP PUBLIC KEY" in keys.pgp
    assert keys.allowed_signers.startswith(b"me@x")
    only_ssh = from_path(tmp_path / "allowed_signers", app="shop")
    assert (only_ssh.pgp, only_ssh.allowed_signers[:4]) == (b"", b"me@x")
    only_pgp = from_path(tmp_path / "a.asc", app="shop")
    assert (only_pgp.allowed_signers, only_pgp.pgp[:5]) == (b"", b"-----")
    with pytest.raises(SourceError, match="holds no trusted keys"):
        TrustedKeys(app="shop", origin="Secret gs/empty")
