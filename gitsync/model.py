"""Frozen values passed between pipeline stages.

Raw Kubernetes objects stay ``dict[str, Any]`` (``KubeObject``) and are wrapped once,
in ``Manifest``, with the place they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

KubeObject: TypeAlias = dict[str, Any]
# (group, kind, namespace, name): an object's version-free identity.
Identity: TypeAlias = tuple[str, str, str, str]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "gitsync"
APP_LABEL = "gitsync.io/app"
WAVE_ANNOTATION = "gitsync.io/wave"
PRUNE_ANNOTATION = "gitsync.io/prune"
DRIFT_ANNOTATION = "gitsync.io/drift"
RECREATE_ANNOTATION = "gitsync.io/recreate"
# gitsync's own writes (state, Lease, Events); apps had it too before per-app managers.
FIELD_MANAGER = "gitsync"


def field_manager(app: str) -> str:
    """Each app applies under its own manager, so two apps never silently share a field."""
    return f"{FIELD_MANAGER}-{app}"


def is_controlled(obj: KubeObject) -> bool:
    """Made by a controller (an owner reference with ``controller: true``): its owner's
    to change and delete, never an app's."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") for r in refs)


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class ObjectRef:
    """Identity of one Kubernetes object; ``namespace`` is "" for cluster-scoped kinds."""

    group: str
    version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: KubeObject) -> ObjectRef:
        api_version = str(obj.get("apiVersion", ""))
        group, _, version = api_version.rpartition("/")
        meta = obj.get("metadata") or {}
        return cls(
            group=group,
            version=version,
            kind=str(obj.get("kind", "")),
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
        )

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def identity(self) -> Identity:
        """Version-free key: the same object served under two versions is one object."""
        return (self.group, self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.group_kind} {where}{self.name}"

    def as_dict(self) -> dict[str, str]:
        return {
            "group": self.group,
            "version": self.version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Revision:
    """One checked-out commit of an app's repository."""

    sha: str
    ref: str
    path: str
    subject: str
    author: str
    time: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """One desired object and where it was written (``source`` is ``file:line``)."""

    obj: KubeObject = field(repr=False)  # may be a Secret: never in a repr or a log
    source: str
    # Parsed once: sort keys and hot loops ask for it thousands of times per sync.
    ref: ObjectRef = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ref", ObjectRef.of(self.obj))


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestSet:
    """Everything one revision wants in the cluster, already validated."""

    manifests: tuple[Manifest, ...]
    warnings: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.manifests)
