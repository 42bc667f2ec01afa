"""Where an app's encoded state lives: a head Secret, and chunk Secrets when it is large.

A Secret holds at most 1 MiB, and the state of a big app (10,000 inventory entries, the
healthy revision's manifests for rollback) is larger. So the blob is split:

    gitsync-<app>                  head, type gitsync.io/state, label gitsync.io/state-of
      data.state.json.gz           small states: the blob inline (the original format)
      data.state.index.json        large states: {generation, chunks, sha256, size}
    gitsync-<app>.<gen>.<i>        chunks, type gitsync.io/state-chunk, immutable, labels
                                   gitsync.io/state-chunk-of and gitsync.io/state-generation

A write creates the new generation's chunks first, then replaces the head with its
resourceVersion precondition: the head swap is the one atomic step, so a reader sees the
old generation or the new one, never a mix. Chunks of the generation it replaced are
deleted only after the head committed; chunks nobody points at (a writer that crashed or
lost a race) are swept by later writes once they are older than ``ORPHAN_GRACE``. A reader
that finds a chunk gone or a digest wrong re-reads the head: a writer may just have
swapped generations. App names are DNS labels, so a chunk's dotted name never equals a
head's.

In the controller, a read may be served by two informers (heads, chunks) of the state
namespace, verified like an API read, but only when the cached head is at the
resourceVersion this process last read or wrote for the app: the first read of an app,
and any read after someone else wrote it, go to the API. A cache that lags behind another
writer can thus serve an older state only until this process writes, and that write's
resourceVersion precondition then fails: no state is ever overwritten from a stale read.
Writes always go to the API.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from gitsync import log
from gitsync.errors import ConflictError, KubeError, StateError
from gitsync.kube import Kube
from gitsync.model import MANAGED_BY_LABEL, MANAGED_BY_VALUE, KubeObject, ObjectRef

if TYPE_CHECKING:  # the hub imports this module's labels
    from gitsync.informers.hub import Informers

STATE_KEY: Final = "state.json.gz"  # inline blob, base64 text (format of every release)
INDEX_KEY: Final = "state.index.json"  # pointer to the chunks of a large state
CHUNK_KEY: Final = "chunk"
HEAD_TYPE: Final = "gitsync.io/state"
CHUNK_TYPE: Final = "gitsync.io/state-chunk"
STATE_LABEL: Final = "gitsync.io/state-of"
CHUNK_LABEL: Final = "gitsync.io/state-chunk-of"
GENERATION_LABEL: Final = "gitsync.io/state-generation"

# A Secret's data may hold 1 MiB; keep well below it for the object's own overhead.
CHUNK_BYTES: Final = 768 * 1024
INLINE_BYTES: Final = 768 * 1024  # base64 text stored in the head itself
MAX_CHUNKS: Final = 64
MAX_STATE_BYTES: Final = MAX_CHUNKS * CHUNK_BYTES  # 48 MiB compressed
ORPHAN_GRACE: Final = timedelta(minutes=10)
READ_ATTEMPTS: Final = 5
_METADATA_LIST: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stored:
    """The head as read and the blob it stands for; ``blob`` is None when none is stored."""

    head: KubeObject | None
    blob: bytes | None
    resource_version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Generation:
    """Which chunks one version of the head points at (none for an inline state)."""

    resource_version: str
    chunks: tuple[str, ...]


class _Torn(Exception):
    """A chunk is missing or does not match the head; maybe the head just moved on."""


# What this process last read or wrote, per (kube, namespace, app): the head's
# resourceVersion and its chunks. A write whose precondition matches knows what it
# replaces without reading the head again; on a miss it reads the head.
_known: weakref.WeakKeyDictionary[Kube, dict[tuple[str, str], _Generation]] = (
    weakref.WeakKeyDictionary()
)
_swept: weakref.WeakKeyDictionary[Kube, set[tuple[str, str]]] = weakref.WeakKeyDictionary()
_known_lock = threading.Lock()


def head_name(app: str) -> str:
    return f"gitsync-{app}"


def chunk_name(app: str, generation: str, index: int) -> str:
    return f"{head_name(app)}.{generation}.{index}"


def split(blob: bytes, size: int = CHUNK_BYTES) -> list[memoryview]:
    """``blob`` in pieces of at most ``size`` bytes (views: no copies)."""
    view = memoryview(blob)
    return [view[i : i + size] for i in range(0, len(blob), size)]


def _secret(namespace: str, name: str) -> ObjectRef:
    return ObjectRef(group="", version="v1", kind="Secret", namespace=namespace, name=name)


def check_size(app: str, size: int, *, limit: int = MAX_STATE_BYTES) -> None:
    """Refuse a state of ``size`` compressed bytes that cannot be recorded."""
    if size > limit:
        msg = (
            f"the state of app {app!r} is {size / 2**20:.1f} MiB compressed, more than the "
            f"{limit / 2**20:.0f} MiB gitsync can record ({MAX_CHUNKS} Secrets of "
            f"{CHUNK_BYTES // 1024} KiB); split the app into several apps, or move large "
            "data (big ConfigMaps, bundled files) out of its manifests"
        )
        raise StateError(msg)


# --- reading --------------------------------------------------------------------------


def load(kube: Kube, *, app: str, namespace: str, informers: Informers | None = None) -> Stored:
    """The head and its blob, whole and verified; re-reads the head if it moved meanwhile.

    With ``informers``, from their caches when they hold the version this process last
    read or wrote (see the module docstring), else from the API."""
    if informers is not None:
        cached = _load_cached(kube, informers, app=app, namespace=namespace)
        if cached is not None:
            return cached
    last_rv = None
    for _attempt in range(READ_ATTEMPTS):
        head = _get(kube, namespace, head_name(app))
        if head is None:
            return Stored(head=None, blob=None)
        rv = str(head["metadata"].get("resourceVersion", ""))
        try:
            blob, chunks = _blob_of(
                head, app=app, namespace=namespace, read=lambda name: _get(kube, namespace, name)
            )
        except _Torn as e:
            if rv == last_rv:
                # The same head twice: the chunks are really gone, not being swapped.
                msg = (
                    f"the state of app {app!r} in Secret {namespace}/{head_name(app)} is "
                    f"damaged: {e}; restore the Secrets gitsync-{app}* from a backup, or "
                    "delete them to start the app's record over"
                )
                raise StateError(msg) from e
            last_rv = rv
            continue
        _remember(kube, namespace, app, _Generation(resource_version=rv, chunks=chunks))
        return Stored(head=head, blob=blob, resource_version=rv)
    msg = (
        f"the state of app {app!r} in Secret {namespace}/{head_name(app)} changed on every "
        f"one of {READ_ATTEMPTS} reads; another writer is rewriting it without pause"
    )
    raise StateError(msg)


def _load_cached(kube: Kube, informers: Informers, *, app: str, namespace: str) -> Stored | None:
    """The state from the informers if their head is the one this process knows; None
    sends the read to the API (first read, someone else wrote, a cache behind, a tear)."""
    with _known_lock:
        known = _known.get(kube, {}).get((namespace, app))
    if known is None or not known.resource_version:
        return None
    heads, chunks = informers.state_heads(namespace), informers.state_chunks(namespace)
    if not (heads.synced and chunks.synced) or heads.forbidden or chunks.forbidden:
        return None
    head = heads.store.get(_secret(namespace, head_name(app)).identity())
    if head is None or str(head["metadata"].get("resourceVersion", "")) != known.resource_version:
        return None

    def read(name: str) -> KubeObject | None:
        return chunks.store.get(_secret(namespace, name).identity())

    try:
        blob, _names = _blob_of(head, app=app, namespace=namespace, read=read)
    except (_Torn, StateError):
        return None
    return Stored(head=head, blob=blob, resource_version=known.resource_version)


def _blob_of(
    head: KubeObject,
    *,
    app: str,
    namespace: str,
    read: Callable[[str], KubeObject | None],
) -> tuple[bytes | None, tuple[str, ...]]:
    data = head.get("data") or {}
    where = f"Secret {namespace}/{head_name(app)}"
    try:
        if data.get(STATE_KEY):
            # Secret data is base64 on the wire, and the inline blob is base64 text again.
            return base64.b64decode(base64.b64decode(data[STATE_KEY])), ()
        if not data.get(INDEX_KEY):
            return None, ()
        index = json.loads(base64.b64decode(data[INDEX_KEY]))
        generation, names = str(index["generation"]), tuple(index["chunks"])
        digest, size = str(index["sha256"]), int(index["size"])
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        msg = f"state {where} is unreadable: {e}"
        raise StateError(msg) from e
    parts = [_chunk(read, namespace, name, app=app, generation=generation) for name in names]
    blob = b"".join(parts)
    del parts
    if len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
        msg = f"its chunks of generation {generation} do not add up to the digest it records"
        raise _Torn(msg)
    return blob, names


def _chunk(
    read: Callable[[str], KubeObject | None],
    namespace: str,
    name: str,
    *,
    app: str,
    generation: str,
) -> bytes:
    obj = read(name)
    if obj is None:
        msg = f"chunk Secret {namespace}/{name} is missing"
        raise _Torn(msg)
    labels = obj["metadata"].get("labels") or {}
    if labels.get(CHUNK_LABEL) != app or labels.get(GENERATION_LABEL) != generation:
        msg = f"chunk Secret {namespace}/{name} belongs to another app or generation"
        raise _Torn(msg)
    try:
        return base64.b64decode((obj.get("data") or {})[CHUNK_KEY])
    except (KeyError, binascii.Error) as e:
        msg = f"chunk Secret {namespace}/{name} holds no chunk"
        raise _Torn(msg) from e


def _get(kube: Kube, namespace: str, name: str) -> KubeObject | None:
    try:
        return kube.get(_secret(namespace, name))
    except KubeError as e:
        msg = f"cannot read state Secret {namespace}/{name}: {e}"
        raise StateError(msg) from e


# --- writing --------------------------------------------------------------------------


def store(kube: Kube, blob: bytes, *, app: str, namespace: str, resource_version: str) -> str:
    """Record ``blob`` if the head is still at ``resource_version`` ("" = create it).

    Returns the head's new resourceVersion. Raises StateError before any write if the
    blob is too large, and on a conflict (after removing the chunks it wrote).
    """
    check_size(app, len(blob))
    before = _replaced(kube, namespace, app, resource_version)
    text = base64.b64encode(blob)
    if len(text) <= INLINE_BYTES:
        chunks: tuple[str, ...] = ()
        data = {STATE_KEY: base64.b64encode(text).decode()}
    else:
        del text
        generation = secrets.token_hex(5)
        chunks = _write_chunks(kube, blob, app=app, namespace=namespace, generation=generation)
        index = {
            "generation": generation,
            "chunks": list(chunks),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
        }
        data = {INDEX_KEY: base64.b64encode(json.dumps(index).encode()).decode()}
    head = _commit(kube, app=app, namespace=namespace, rv=resource_version, data=data, own=chunks)
    rv = str(head["metadata"]["resourceVersion"])
    _remember(kube, namespace, app, _Generation(resource_version=rv, chunks=chunks))
    logger = log.get(app=app)
    logger.debug("state.written", bytes=len(blob), chunks=len(chunks), replaced=len(before))
    for name in before:
        _delete_quietly(kube, namespace, name, logger)
    # Orphans come from crashed or losing writers: look for them on this process's first
    # write of the app, and whenever chunks are involved at all.
    with _known_lock:
        first = (namespace, app) not in _swept.setdefault(kube, set())
        _swept[kube].add((namespace, app))
    if chunks or before or first:
        _sweep(kube, app=app, namespace=namespace, keep=set(chunks), logger=logger)
    return rv


def _replaced(kube: Kube, namespace: str, app: str, rv: str) -> tuple[str, ...]:
    """The chunks of the head at ``rv``: remembered from its read, else read again."""
    with _known_lock:
        known = _known.get(kube, {}).get((namespace, app))
    if known is not None and rv and known.resource_version == rv:
        return known.chunks
    head = _get(kube, namespace, head_name(app)) if rv else None
    if head is None or str(head["metadata"].get("resourceVersion", "")) != rv:
        return ()  # nothing to replace, or the commit below fails with a conflict
    try:
        data = head.get("data") or {}
        index = json.loads(base64.b64decode(data[INDEX_KEY])) if data.get(INDEX_KEY) else {}
        return tuple(index.get("chunks", ()))
    except (ValueError, TypeError, binascii.Error):
        return ()


def _write_chunks(
    kube: Kube, blob: bytes, *, app: str, namespace: str, generation: str
) -> tuple[str, ...]:
    names: list[str] = []
    try:
        for i, part in enumerate(split(blob)):
            name = chunk_name(app, generation, i)
            body: KubeObject = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": CHUNK_TYPE,
                "immutable": True,
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {
                        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                        CHUNK_LABEL: app,
                        GENERATION_LABEL: generation,
                    },
                },
                "data": {CHUNK_KEY: base64.b64encode(part).decode()},
            }
            names.append(name)
            try:
                kube.create(body, verb="state")
            except ConflictError:
                # The name is random and new: it exists only if a retried create landed.
                continue
    except KubeError as e:
        _discard(kube, namespace, names, app)
        msg = f"cannot write state chunk Secret {namespace}/{names[-1]}: {e}"
        raise StateError(msg) from e
    return tuple(names)


def _commit(
    kube: Kube, *, app: str, namespace: str, rv: str, data: dict[str, str], own: tuple[str, ...]
) -> KubeObject:
    name = head_name(app)
    body: KubeObject = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": HEAD_TYPE,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, STATE_LABEL: app},
        },
        "data": data,
    }
    try:
        if rv:
            body["metadata"]["resourceVersion"] = rv
            out: KubeObject = kube.replace(body, verb="state")
        else:
            out = kube.create(body, verb="state")
    except KubeError as e:
        if 400 <= e.status < 500 and e.status not in (408, 429):
            # Refused for certain: nobody will point at the chunks just written. After a
            # timeout or a 5xx the head may have been written all the same: keep them.
            _discard(kube, namespace, list(own), app)
        if isinstance(e, ConflictError):
            msg = (
                f"state Secret {namespace}/{name} was changed by another writer; "
                "another gitsync may be running for this app"
            )
        else:
            msg = f"cannot write state Secret {namespace}/{name}: {e}"
        raise StateError(msg) from e
    return out


def _discard(kube: Kube, namespace: str, names: list[str], app: str) -> None:
    logger = log.get(app=app)
    for name in names:
        _delete_quietly(kube, namespace, name, logger)


def _delete_quietly(kube: Kube, namespace: str, name: str, logger: Any) -> None:
    """Cleanup never fails a write: what stays behind is swept by a later one."""
    try:
        kube.delete(_secret(namespace, name), verb="state")
    except KubeError as e:
        logger.warning("state.cleanup_failed", secret=f"{namespace}/{name}", error=str(e))


def _sweep(kube: Kube, *, app: str, namespace: str, keep: set[str], logger: Any) -> None:
    """Delete this app's chunks that no head points at and that no writer can still use.

    A chunk younger than ``ORPHAN_GRACE`` may be a concurrent writer's, about to be
    committed; it stays for a later sweep. Listed from the watch cache
    (resourceVersion=0): a stale list only delays a deletion.
    """
    try:
        listed = _chunk_metadata(kube, app=app, namespace=namespace, cached=True)
    except KubeError as e:
        logger.warning("state.cleanup_failed", error=str(e))
        return
    cutoff = datetime.now(UTC) - ORPHAN_GRACE
    for meta in listed:
        name = str(meta.get("name", ""))
        if name in keep:
            continue
        try:
            created = datetime.fromisoformat(str(meta.get("creationTimestamp")))
        except ValueError:
            continue
        if created < cutoff:
            _delete_quietly(kube, namespace, name, logger)


def _chunk_metadata(kube: Kube, *, app: str, namespace: str, cached: bool) -> list[dict[str, Any]]:
    """The metadata of every chunk of ``app``: never their data, which may be megabytes."""
    res = kube.resource(_secret(namespace, ""))
    query = {"labelSelector": f"{CHUNK_LABEL}={app}"}
    if cached:
        query["resourceVersion"] = "0"
    page = kube.request(
        "GET",
        res.path(namespace),
        verb="list",
        query=query,
        accept=_METADATA_LIST,
        what=f"list state chunks of {app}",
    )
    return [item.get("metadata") or {} for item in page.get("items") or []]


def _remember(kube: Kube, namespace: str, app: str, generation: _Generation) -> None:
    with _known_lock:
        _known.setdefault(kube, {})[(namespace, app)] = generation


def delete(kube: Kube, *, app: str, namespace: str) -> None:
    """Remove an app's state: the head first (so nobody reads half), then every chunk."""
    try:
        kube.delete(_secret(namespace, head_name(app)), verb="state")
        for meta in _chunk_metadata(kube, app=app, namespace=namespace, cached=False):
            kube.delete(_secret(namespace, str(meta["name"])), verb="state")
    except KubeError as e:
        msg = f"cannot delete the state of app {app!r} in {namespace}: {e}"
        raise StateError(msg) from e


__all__ = [
    "CHUNK_BYTES",
    "MAX_STATE_BYTES",
    "STATE_KEY",
    "Stored",
    "check_size",
    "delete",
    "head_name",
    "load",
    "split",
    "store",
]
