"""Git credentials of private repos, from Secrets in the controller's namespace.

An app's ``auth: {secretRef: NAME}`` names a Secret with keys ``username`` + ``password``,
or ``token`` (optionally with ``username``), or ``identity`` (an ssh private key) +
``known_hosts``. Key material goes to 0600 files in a 0700 directory of this process
only (ssh and git read files, not memory); https secrets stay in memory and reach git
through ``GitAuth``. Nothing here logs or formats a value, only key names.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gitsync.errors import KubeError, SourceError
from gitsync.kube import Kube
from gitsync.model import ObjectRef
from gitsync.source.git import GitAuth

KNOWN_KEYS = ("username", "password", "token", "identity", "known_hosts")


def secret_ref(namespace: str, name: str) -> ObjectRef:
    return ObjectRef(group="", version="v1", kind="Secret", namespace=namespace, name=name)


def read_secret(kube: Kube, *, namespace: str, name: str) -> dict[str, bytes]:
    """The Secret's decoded data; ``SourceError`` if it is missing or unreadable."""
    where = f"Secret {namespace}/{name}"
    try:
        obj = kube.get(secret_ref(namespace, name))
    except KubeError as e:
        msg = f"cannot read {where}: {e}"
        raise SourceError(msg) from e
    if obj is None:
        msg = f"{where} does not exist; create it or fix the secretRef"
        raise SourceError(msg)
    out: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            msg = f"{where}: key {key!r} is not valid base64"
            raise SourceError(msg) from e
    return out


def _text(data: dict[str, bytes], key: str, where: str) -> str:
    try:
        return data[key].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        msg = f"{where}: key {key!r} is not UTF-8 text"
        raise SourceError(msg) from e


def _write_private(path: Path, content: bytes) -> Path:
    """Write with mode 0600 from the first byte, then rename over the old file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content if content.endswith(b"\n") else content + b"\n")
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialStore:
    """Builds ``GitAuth`` from Secrets; ``directory`` must be private to this process."""

    kube: Kube
    namespace: str
    directory: Path

    @classmethod
    def create(cls, *, kube: Kube, namespace: str) -> CredentialStore:
        """A fresh 0700 directory under $TMPDIR (an emptyDir in the pod)."""
        return cls(
            kube=kube,
            namespace=namespace,
            directory=Path(tempfile.mkdtemp(prefix="gitsync-credentials-")),
        )

    def load(self, *, app: str, secret: str) -> GitAuth:
        """Read ``secret`` now (so a rotated Secret is used on the next sync)."""
        where = f"Secret {self.namespace}/{secret}"
        data = read_secret(self.kube, namespace=self.namespace, name=secret)
        present = [k for k in KNOWN_KEYS if data.get(k)]
        if "identity" in present:
            if "known_hosts" not in present:
                msg = f"{where} has an ssh 'identity' but no 'known_hosts'; host keys are checked"
                raise SourceError(msg)
            folder = self.directory / app
            folder.mkdir(mode=0o700, exist_ok=True)
            return GitAuth(
                username=_text(data, "username", where) if "username" in present else "",
                ssh_key=_write_private(folder / "identity", data["identity"]),
                known_hosts=_write_private(folder / "known_hosts", data["known_hosts"]),
            )
        if "token" in present or "password" in present:
            if "token" in present and "password" in present:
                msg = f"{where} has both 'token' and 'password'; keep one of them"
                raise SourceError(msg)
            if "password" in present and "username" not in present:
                msg = f"{where} has a 'password' but no 'username'"
                raise SourceError(msg)
            return GitAuth(
                username=_text(data, "username", where) if "username" in present else "",
                password=_text(data, "password", where) if "password" in present else "",
                token=_text(data, "token", where) if "token" in present else "",
            )
        msg = (
            f"{where} has none of the keys gitsync reads: username+password, token, "
            "or identity+known_hosts"
        )
        raise SourceError(msg)
