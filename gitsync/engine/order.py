"""Apply order: kind ranks refined by the ``gitsync.io/wave`` annotation; prune is the reverse.

A stage key is ``(wave, rank)``: the wave comes first, as with Argo CD sync waves, so an
operator can move one object ahead of everything else (``wave: "-1"`` on a ConfigMap a
CRD conversion webhook needs, say) without a table change here. Objects without the
annotation are in wave 0 and follow the rank table alone, which already puts what others
depend on first (CRDs before their custom resources, Namespaces before what lives in them,
RBAC and config before the workloads that use them, webhooks last so they cannot block
the objects their own backends are made of).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gitsync.model import WAVE_ANNOTATION, Manifest, ObjectRef

_RBAC = "rbac.authorization.k8s.io"

#: Rank names in apply order; index = rank.
RANK_NAMES: tuple[str, ...] = (
    "crds",
    "namespaces",
    "cluster-config",  # RBAC, service accounts, priority/storage/runtime classes, quotas
    "config",  # ConfigMaps and Secrets
    "storage",
    "services",
    "workloads",
    "other",  # custom resources, Ingress, HPA, PDB, ...
    "webhooks",
)

_RANK_BY_NAME = {name: i for i, name in enumerate(RANK_NAMES)}

# Keyed by (group, kind) so a custom resource that happens to be called "Service" in its
# own group ranks with the other custom resources, not with core Services.
_KIND_RANKS: Mapping[tuple[str, str], str] = {
    ("apiextensions.k8s.io", "CustomResourceDefinition"): "crds",
    ("", "Namespace"): "namespaces",
    ("", "ServiceAccount"): "cluster-config",
    (_RBAC, "ClusterRole"): "cluster-config",
    (_RBAC, "ClusterRoleBinding"): "cluster-config",
    (_RBAC, "Role"): "cluster-config",
    (_RBAC, "RoleBinding"): "cluster-config",
    ("scheduling.k8s.io", "PriorityClass"): "cluster-config",
    ("storage.k8s.io", "StorageClass"): "cluster-config",
    ("node.k8s.io", "RuntimeClass"): "cluster-config",
    ("networking.k8s.io", "IngressClass"): "cluster-config",
    # Quotas and limit ranges only act on Pods created after them.
    ("", "ResourceQuota"): "cluster-config",
    ("", "LimitRange"): "cluster-config",
    ("", "ConfigMap"): "config",
    ("", "Secret"): "config",
    ("", "PersistentVolume"): "storage",
    ("", "PersistentVolumeClaim"): "storage",
    ("", "Service"): "services",
    ("apps", "Deployment"): "workloads",
    ("apps", "StatefulSet"): "workloads",
    ("apps", "DaemonSet"): "workloads",
    ("apps", "ReplicaSet"): "workloads",
    ("", "ReplicationController"): "workloads",
    ("", "Pod"): "workloads",
    ("batch", "Job"): "workloads",
    ("batch", "CronJob"): "workloads",
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): "webhooks",
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): "webhooks",
    # An APIService whose backend is not running yet breaks discovery for everyone.
    ("apiregistration.k8s.io", "APIService"): "webhooks",
}

_WAVE = re.compile(r"[+-]?[0-9]{1,9}")


def rank_of(group: str, kind: str) -> int:
    """The kind's rank; unknown kinds (custom resources included) rank as "other"."""
    return _RANK_BY_NAME[_KIND_RANKS.get((group, kind), "other")]


def wave_of(obj: Mapping[str, Any]) -> int:
    """The object's ``gitsync.io/wave`` (0 without one); ValueError if it is not an integer."""
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(annotations, Mapping) or WAVE_ANNOTATION not in annotations:
        return 0
    value = annotations[WAVE_ANNOTATION]
    # Annotation values are strings on the API server; an unquoted YAML number is a
    # mistake the API server would refuse, so say so here rather than guess.
    if not isinstance(value, str) or not _WAVE.fullmatch(value.strip()):
        msg = (
            f'annotation {WAVE_ANNOTATION} must be a quoted integer such as "-1" or "2" '
            f"(at most 9 digits), not {value!r}"
        )
        raise ValueError(msg)
    return int(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """Objects applied together (in parallel); ``key`` is ``(wave, rank)``."""

    key: tuple[int, int]
    manifests: tuple[Manifest, ...]

    @property
    def wave(self) -> int:
        return self.key[0]

    @property
    def rank(self) -> int:
        return self.key[1]

    @property
    def name(self) -> str:
        """For logs: ``wave 0 / workloads``."""
        return f"wave {self.wave} / {RANK_NAMES[self.rank]}"


def stage_key(manifest: Manifest) -> tuple[int, int]:
    """``(wave, rank)``; raises ValueError on a bad wave (render has rejected those already)."""
    ref = manifest.ref
    return (wave_of(manifest.obj), rank_of(ref.group, ref.kind))


def stages(manifests: Iterable[Manifest]) -> list[Stage]:
    """Group into stages in apply order; within a stage, sorted by ref for repeatable runs."""
    groups: dict[tuple[int, int], list[Manifest]] = {}
    for manifest in manifests:
        groups.setdefault(stage_key(manifest), []).append(manifest)
    return [
        Stage(key=key, manifests=tuple(sorted(groups[key], key=lambda m: m.ref)))
        for key in sorted(groups)
    ]


def prune_order(refs: Iterable[ObjectRef]) -> list[ObjectRef]:
    """Delete order: the reverse of the apply order by rank.

    Only the rank counts: a pruned object left Git, and with it its wave annotation (the
    inventory keeps refs, not manifests). Custom resources go before their CRD, workloads
    before the config and RBAC they use, Namespaces and CRDs last.
    """
    return sorted(refs, key=lambda r: (rank_of(r.group, r.kind), r), reverse=True)
