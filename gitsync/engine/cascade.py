"""What deleting a Namespace or a CRD takes along with it.

The API server deletes everything in a Namespace, and every custom resource of a CRD,
so a prune guard that counted only the Namespace would let one line removed from Git
wipe out hundreds of objects. Only top-level objects count: Events and objects a
controller made (Pods of a ReplicaSet, say) go with their owners anyway.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from gitsync.errors import KubeError
from gitsync.kube import Kube
from gitsync.model import APP_LABEL, Identity, KubeObject, ObjectRef, is_controlled

_SKIP = frozenset({("", "Event"), ("events.k8s.io", "Event")})
# What the control plane puts in every Namespace: nobody's work is lost with them.
_SYSTEM = frozenset({("", "ServiceAccount", "default"), ("", "ConfigMap", "kube-root-ca.crt")})


@dataclass(frozen=True, slots=True, kw_only=True)
class Cascade:
    """The objects one delete takes along, and the gitsync apps among their owners."""

    refs: tuple[ObjectRef, ...] = ()
    apps: frozenset[str] = frozenset()


def cascade(kube: Kube, ref: ObjectRef, live: KubeObject, *, skip: Collection[Identity]) -> Cascade:
    """Top-level objects deleting ``ref`` would delete too, less those in ``skip``."""
    if ref.kind == "Namespace" and not ref.group:
        found = _in_namespace(kube, ref.name)
    elif ref.kind == "CustomResourceDefinition" and ref.group == "apiextensions.k8s.io":
        found = _of_crd(kube, live)
    else:
        return Cascade()
    mine = [o for o in found if ObjectRef.of(o).identity() not in skip]
    apps = {str(((o.get("metadata") or {}).get("labels") or {}).get(APP_LABEL) or "") for o in mine}
    return Cascade(refs=tuple(sorted(ObjectRef.of(o) for o in mine)), apps=frozenset(apps - {""}))


def _top_level(items: list[KubeObject]) -> list[KubeObject]:
    return [o for o in items if not is_controlled(o) and _system_key(o) not in _SYSTEM]


def _system_key(obj: KubeObject) -> tuple[str, str, str]:
    ref = ObjectRef.of(obj)
    return (ref.group, ref.kind, ref.name)


def _in_namespace(kube: Kube, namespace: str) -> list[KubeObject]:
    found: list[KubeObject] = []
    for res in kube.discover().preferred.values():
        if not res.namespaced or "list" not in res.verbs or (res.group, res.kind) in _SKIP:
            continue
        try:
            items, _rv = kube.list_objects(res, namespace=namespace)
        except KubeError:
            continue  # a kind we may not list: its objects are not counted
        found.extend(_top_level(items))
    return found


def _of_crd(kube: Kube, crd: KubeObject) -> list[KubeObject]:
    spec = crd.get("spec") or {}
    versions = [v.get("name") for v in spec.get("versions") or [] if v.get("served", True)]
    kind = (spec.get("names") or {}).get("kind", "")
    res = next(
        (r for v in versions if (r := kube.discover().resource(spec.get("group", ""), v, kind))),
        None,
    )
    if res is None:
        return []
    try:
        items, _rv = kube.list_objects(res)
    except KubeError:
        return []
    return _top_level(items)
