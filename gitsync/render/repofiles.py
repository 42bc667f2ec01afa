"""Reading files of the (untrusted) repository checkout: size-capped, UTF-8 only.

Problems are appended to the caller's list as ``file:line:`` sentences rather than
raised, so that render can go on and report every bad file of an app at once.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["decode", "read_bytes", "relative"]


def read_bytes(path: Path, display: str, max_bytes: int, problems: list[str]) -> bytes | None:
    """The file's bytes, or None (and a problem) when it cannot be read or is too large."""
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        problems.append(f"{display}:1: cannot read the file: {e.strerror}.")
        return None
    if len(data) > max_bytes:
        problems.append(
            f"{display}:1: the file is {max(size, len(data))} bytes, over the limit of "
            f"{max_bytes} bytes per file; split it."
        )
        return None
    return data


def decode(data: bytes, display: str, problems: list[str]) -> str | None:
    """UTF-8 text (a BOM is dropped), or None and a problem naming the bad byte's line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problems.append(
            f"{display}:{line}: the file is not valid UTF-8 (byte 0x{data[e.start]:02x} at "
            f"offset {e.start}); save it as UTF-8."
        )
        return None


def relative(path: Path, repo: Path) -> str:
    """``path`` relative to the repository, POSIX style, "" for the root itself."""
    shown = path.relative_to(repo).as_posix() if path.is_relative_to(repo) else str(path)
    return "" if shown == "." else shown
