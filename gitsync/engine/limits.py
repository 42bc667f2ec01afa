"""Per-app limits: the namespaces an app may write in and the cluster-scoped kinds it may
write (``apps[].allowedNamespaces``, ``apps[].clusterScoped``).

Checked on the rendered set before the plan makes any call, and on what prune and
rollback would delete or re-apply, so a repository can never reach past its app's limits
even when the identity it runs as could. A Namespace object is cluster-scoped: it needs
its kind allowed, and its name must be one of the allowed namespaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from gitsync.errors import LimitError
from gitsync.model import ManifestSet, ObjectRef


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """``None`` means unlimited; ``cluster_kinds="deny"`` allows no cluster-scoped kind."""

    namespaces: tuple[str, ...] | None = None
    cluster_kinds: Literal["deny"] | tuple[str, ...] | None = None

    @property
    def unlimited(self) -> bool:
        return self.namespaces is None and self.cluster_kinds is None

    def namespace_allowed(self, namespace: str) -> bool:
        """Whether ``namespace`` matches one of the names or globs (``team-*``, ``ci-?``)."""
        if self.namespaces is None:
            return True
        return any(fnmatchcase(namespace, pattern) for pattern in self.namespaces)

    def kind_allowed(self, ref: ObjectRef) -> bool:
        """Whether a cluster-scoped ``ref`` is of an allowed kind: listed as ``Kind`` or,
        to tell apart kinds of the same name, ``Kind.group``."""
        if self.cluster_kinds is None:
            return True
        if self.cluster_kinds == "deny":
            return False
        return ref.kind in self.cluster_kinds or ref.group_kind in self.cluster_kinds

    def why_not(self, ref: ObjectRef) -> str:
        """Why the app may not write ``ref`` ("" if it may); ``ref.namespace`` is "" for
        cluster-scoped objects (render and the inventory both set it for namespaced ones)."""
        if ref.namespace:
            if self.namespace_allowed(ref.namespace):
                return ""
            return f"namespace {ref.namespace!r} is not in allowedNamespaces {self._names}"
        if not self.kind_allowed(ref):
            if self.cluster_kinds == "deny":
                return f"cluster-scoped {ref.group_kind} is denied (clusterScoped: deny)"
            allowed = list(self.cluster_kinds or ())
            return f"cluster-scoped {ref.group_kind} is not in clusterScoped {allowed}"
        if ref.kind == "Namespace" and not ref.group and not self.namespace_allowed(ref.name):
            return (
                f"Namespace {ref.name!r} is not in allowedNamespaces {list(self.namespaces or ())}"
            )
        return ""

    @property
    def _names(self) -> list[str]:
        return list(self.namespaces or ())

    def allows(self, ref: ObjectRef) -> bool:
        return not self.why_not(ref)


def violations(manifests: ManifestSet, limits: Limits) -> list[str]:
    """Every object of the set the app may not write, as ``file:line: object: why``."""
    if limits.unlimited:
        return []
    out = []
    for m in manifests.manifests:
        ref = m.ref
        why = limits.why_not(ref)
        if why:
            out.append(f"{m.source}: {ref}: {why}")
    return out


def enforce(manifests: ManifestSet, limits: Limits, *, app: str) -> None:
    """Raise ``LimitError`` naming every offending object; nothing may be written."""
    found = violations(manifests, limits)
    if found:
        raise LimitError(app, found)


def outside(refs: Iterable[ObjectRef], limits: Limits) -> list[ObjectRef]:
    """The refs the app may not touch: prune and rollback leave these alone."""
    return [r for r in refs if not limits.allows(r)]
