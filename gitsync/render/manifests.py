"""Render stage: an app directory (plain YAML/JSON or Kustomize) → a validated ``ManifestSet``.

All or nothing: every problem in every file is collected first, then one ``RenderError``
lists them all, each as a sentence that starts with ``file:line:``, so one push fixes
one commit's worth of mistakes instead of one per sync.

The repository is not trusted. Files are read only inside ``repo_root`` (symlinks
checked), with size limits (``repofiles``); YAML and JSON are parsed by ``yamlread``
(line numbers, alias and depth limits, duplicate keys refused); a kustomization is
checked and built by ``kustomize``. This module walks the app directory, validates the
objects (shape, scope, namespaces, duplicates, CRDs in the same set) and lints them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from gitsync.engine.order import wave_of
from gitsync.errors import RenderError
from gitsync.model import (
    APP_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    Manifest,
    ManifestSet,
    ObjectRef,
)
from gitsync.render import helm as helm_chart
from gitsync.render.helm import HelmSettings
from gitsync.render.kustomize import (
    DEFAULT_KUSTOMIZE,
    KUSTOMIZATION_FILES,
    build_kustomization,
    default_command,
    kustomization_file,
)
from gitsync.render.repofiles import decode, read_bytes, relative
from gitsync.render.yamlread import (
    MAX_DEPTH,
    Node,
    ReadError,
    ReadLimits,
    flatten_list,
    gc_paused,
    line_at,
    read_documents,
)

__all__ = [
    "BUILTIN_KINDS",
    "DEFAULT_KUSTOMIZE",
    "KUSTOMIZATION_FILES",
    "HelmSettings",
    "KindResolver",
    "RenderLimits",
    "Scope",
    "StaticKinds",
    "render",
]

Scope = Literal["Namespaced", "Cluster"]

MANIFEST_SUFFIXES = frozenset({".yaml", ".yml", ".json"})


class KindResolver(Protocol):
    """Tells render whether the API server knows a kind, and its scope."""

    def scope(self, api_version: str, kind: str) -> Scope | None:
        """``"Namespaced"``, ``"Cluster"``, or None when the server does not serve the kind."""
        ...


_N: Scope = "Namespaced"
_C: Scope = "Cluster"

#: Built-in kinds of a Kubernetes 1.34 API server: (apiVersion, kind) → scope.
BUILTIN_KINDS: Mapping[tuple[str, str], Scope] = {
    **{
        ("v1", k): _N
        for k in (
            *("Pod", "Service", "ConfigMap", "Secret", "ServiceAccount", "PersistentVolumeClaim"),
            *("Endpoints", "Event", "LimitRange", "ResourceQuota", "ReplicationController"),
            *("PodTemplate", "Binding"),
        )
    },
    **{("v1", k): _C for k in ("Namespace", "Node", "PersistentVolume", "ComponentStatus")},
    **{
        ("apps/v1", k): _N
        for k in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ControllerRevision")
    },
    ("batch/v1", "Job"): _N,
    ("batch/v1", "CronJob"): _N,
    ("autoscaling/v1", "HorizontalPodAutoscaler"): _N,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): _N,
    ("policy/v1", "PodDisruptionBudget"): _N,
    ("networking.k8s.io/v1", "Ingress"): _N,
    ("networking.k8s.io/v1", "NetworkPolicy"): _N,
    ("networking.k8s.io/v1", "IngressClass"): _C,
    ("networking.k8s.io/v1", "IPAddress"): _C,
    ("networking.k8s.io/v1", "ServiceCIDR"): _C,
    ("rbac.authorization.k8s.io/v1", "Role"): _N,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): _N,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): _C,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): _C,
    ("storage.k8s.io/v1", "StorageClass"): _C,
    ("storage.k8s.io/v1", "VolumeAttachment"): _C,
    ("storage.k8s.io/v1", "CSIDriver"): _C,
    ("storage.k8s.io/v1", "CSINode"): _C,
    ("storage.k8s.io/v1", "CSIStorageCapacity"): _N,
    ("scheduling.k8s.io/v1", "PriorityClass"): _C,
    ("node.k8s.io/v1", "RuntimeClass"): _C,
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): _C,
    ("apiregistration.k8s.io/v1", "APIService"): _C,
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): _C,
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"): _C,
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): _C,
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): _C,
    ("coordination.k8s.io/v1", "Lease"): _N,
    ("discovery.k8s.io/v1", "EndpointSlice"): _N,
    ("events.k8s.io/v1", "Event"): _N,
    ("certificates.k8s.io/v1", "CertificateSigningRequest"): _C,
    ("flowcontrol.apiserver.k8s.io/v1", "FlowSchema"): _C,
    ("flowcontrol.apiserver.k8s.io/v1", "PriorityLevelConfiguration"): _C,
    ("resource.k8s.io/v1", "DeviceClass"): _C,
    ("resource.k8s.io/v1", "ResourceClaim"): _N,
    ("resource.k8s.io/v1", "ResourceClaimTemplate"): _N,
    ("resource.k8s.io/v1", "ResourceSlice"): _C,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticKinds:
    """A ``KindResolver`` from a fixed table: for tests and offline ``gitsync lint``."""

    table: Mapping[tuple[str, str], Scope] = field(default_factory=lambda: BUILTIN_KINDS)
    extra: Mapping[tuple[str, str], Scope] = field(default_factory=dict)

    def scope(self, api_version: str, kind: str) -> Scope | None:
        key = (api_version, kind)
        return self.extra.get(key) or self.table.get(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderLimits:
    """Bounds on what one app may make render read, parse and run."""

    # Public install bundles run to several MiB in one file (CRDs of hundreds of KiB,
    # ConfigMaps near the API's 1 MiB); these bound memory, not what is sensible.
    max_file_bytes: int = 16 * 1024 * 1024
    max_total_bytes: int = 64 * 1024 * 1024
    max_files: int = 10_000
    max_aliases: int = 100  # alias nodes per YAML document
    max_alias_nodes: int = 100_000  # nodes that alias uses add to one document
    max_depth: int = 200  # nesting of one document; at most yamlread.MAX_DEPTH
    kustomize_timeout: float = 60.0
    helm_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= MAX_DEPTH:
            msg = f"RenderLimits.max_depth must be between 1 and {MAX_DEPTH}, not {self.max_depth}"
            raise ValueError(msg)

    @property
    def reader(self) -> ReadLimits:
        """The limits on each YAML or JSON document."""
        return ReadLimits(
            max_aliases=self.max_aliases,
            max_alias_nodes=self.max_alias_nodes,
            max_depth=self.max_depth,
        )


def render(
    app_dir: Path,
    *,
    repo_root: Path,
    default_namespace: str,
    app_name: str,
    kinds: KindResolver,
    kustomize: Sequence[str] | None = None,
    helm: HelmSettings | None = None,
    helm_command: str | None = None,
    limits: RenderLimits = RenderLimits(),
) -> ManifestSet:
    """Read, parse and validate the app; raise one RenderError naming every problem.

    A directory with a ``Chart.yaml`` is a Helm chart, rendered with ``helm`` settings
    (``apps[].helm``) by ``helm_command`` (default: ``helm`` on PATH).
    """
    repo = Path(os.path.realpath(repo_root))
    app = Path(os.path.realpath(app_dir))
    if not app.is_relative_to(repo):
        raise RenderError([f"{app_dir}: the app path resolves outside the repository ({repo})."])
    if not app.is_dir():
        raise RenderError(
            [f"{relative(app, repo)}: the app path is not a directory in the repository."]
        )

    # Parsed documents stay alive until the set is built, so the cyclic collector would
    # only rescan them; it is paused, and they are freed (by refcount) before it resumes.
    with gc_paused():
        return _render_app(
            app=app,
            repo=repo,
            default_namespace=default_namespace,
            app_name=app_name,
            kinds=kinds,
            kustomize=kustomize,
            helm=helm,
            helm_command=helm_command,
            limits=limits,
        )


def _render_app(
    *,
    app: Path,
    repo: Path,
    default_namespace: str,
    app_name: str,
    kinds: KindResolver,
    kustomize: Sequence[str] | None,
    helm: HelmSettings | None,
    helm_command: str | None,
    limits: RenderLimits,
) -> ManifestSet:
    problems: list[str] = []
    kustomization = kustomization_file(app)
    if helm_chart.is_chart(app):
        if kustomization is not None:
            problems.append(
                f"{relative(kustomization, repo)}:1: the directory holds both a Chart.yaml and "
                "a kustomization; keep one (a kustomization can use the chart via helmCharts)."
            )
        settings = helm or HelmSettings()
        default_namespace = settings.namespace or default_namespace
        built = helm_chart.template_chart(
            app,
            repo=repo,
            settings=settings,
            release=settings.release_name or app_name,
            namespace=default_namespace,
            command=helm_command or helm_chart.default_command(),
            limits=limits,
            problems=problems,
        )
        docs = [_Doc(obj=obj, source=source) for source, obj in built]
    elif helm is not None:
        problems.append(
            f"{relative(app, repo) or '.'}:1: apps[].helm is set, but the app directory has "
            "no Chart.yaml; remove the helm settings or point the app at the chart."
        )
        docs = []
    elif kustomization is not None:
        built = build_kustomization(
            app,
            kustomization=kustomization,
            repo=repo,
            command=list(kustomize or default_command()),
            limits=limits,
            problems=problems,
            helm_command=helm_command or helm_chart.default_command(),
        )
        docs = [_Doc(obj=obj, source=source) for source, obj in built]
    else:
        docs = _directory_docs(app, repo, limits, problems)
    # Validate what did parse even when some files did not: one run reports everything.
    manifests, warnings = _validate(
        docs,
        default_namespace=default_namespace,
        app_name=app_name,
        kinds=kinds,
        problems=problems,
        incomplete=bool(problems),
    )
    if problems:
        raise RenderError(problems)
    if not manifests:
        warnings.append(f"{relative(app, repo) or '.'}: the app renders no objects.")
    return ManifestSet(manifests=tuple(manifests), warnings=tuple(warnings))


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True, slots=True, kw_only=True)
class _Doc:
    """One raw document (not yet validated) and where it came from."""

    obj: Any
    source: str  # "file:line" or a kustomize description; every problem starts with it
    file: str | None = None  # the file ``node`` was read from (plain mode)
    node: Node | None = None


def _directory_docs(app: Path, repo: Path, limits: RenderLimits, problems: list[str]) -> list[_Doc]:
    docs: list[_Doc] = []
    total = 0
    for display, path in _manifest_files(app, repo, limits, problems):
        data = read_bytes(path, display, limits.max_file_bytes, problems)
        if data is None:
            continue
        total += len(data)
        if total > limits.max_total_bytes:
            problems.append(
                f"{display}:1: reading this file brings the app to {total} bytes, over the "
                f"limit of {limits.max_total_bytes} bytes; split the app or raise the limit."
            )
            break
        text = decode(data, display, problems)
        if text is None:
            continue
        try:
            parsed = read_documents(text, limits.reader, json_file=display.endswith(".json"))
        except ReadError as e:
            problems.append(f"{display}:{e.line}: {e.message}")
            continue
        for doc in parsed:
            items, errors = flatten_list(doc)
            problems.extend(f"{display}:{e.line}: {e.message}" for e in errors)
            docs.extend(
                _Doc(obj=item.value, source=f"{display}:{item.line}", file=display, node=item.node)
                for item in items
            )
    return docs


def _manifest_files(
    app: Path, repo: Path, limits: RenderLimits, problems: list[str]
) -> list[tuple[str, Path]]:
    """Every .yaml/.yml/.json under ``app`` in path order, symlinks checked against ``repo``."""
    walker = _Walker(repo=repo, limits=limits, problems=problems)
    with contextlib.suppress(_StopWalk):
        walker.walk(app, relative(app, repo), frozenset({app}))
    return walker.found


class _StopWalk(Exception):
    """Stop walking: the file-count limit was hit."""


@dataclass(slots=True, kw_only=True)
class _Walker:
    repo: Path
    limits: RenderLimits
    problems: list[str]
    found: list[tuple[str, Path]] = field(default_factory=list)

    def walk(self, directory: Path, display: str, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            self.problems.append(f"{display or '.'}:1: cannot list the directory: {e.strerror}.")
            return
        for entry in entries:
            # Dot-entries are tooling (.github workflows, .git), not manifests.
            if entry.name.startswith("."):
                continue
            shown = f"{display}/{entry.name}" if display else entry.name
            wanted = Path(entry.name).suffix in MANIFEST_SUFFIXES
            path = self._follow(entry, shown, wanted=wanted)
            if path is None:
                continue
            try:
                mode = path.stat().st_mode
            except OSError as e:
                self.problems.append(f"{shown}:1: cannot stat: {e.strerror}.")
                continue
            if stat.S_ISDIR(mode):
                if path in ancestors:
                    self.problems.append(
                        f"{shown}:1: the symlink loops back to a directory that contains it."
                    )
                    continue
                self.walk(path, shown, ancestors | {path})
            elif wanted:
                self._add(shown, path, mode)

    def _follow(self, entry: os.DirEntry[str], shown: str, *, wanted: bool) -> Path | None:
        """The real path to read, or None to skip (a problem is noted where it matters)."""
        path = Path(entry.path)
        if not entry.is_symlink():
            return path
        target = Path(os.path.realpath(path))
        if not target.exists():
            if wanted:
                self.problems.append(f"{shown}:1: the symlink is broken (no {target}).")
            return None
        # Symlinks render would never read are none of its business.
        if not (wanted or target.is_dir()):
            return None
        if not target.is_relative_to(self.repo):
            self.problems.append(
                f"{shown}:1: the symlink points outside the repository (to {target}); "
                "only links inside the repository are followed."
            )
            return None
        return target

    def _add(self, shown: str, path: Path, mode: int) -> None:
        if not stat.S_ISREG(mode):
            self.problems.append(
                f"{shown}:1: not a regular file (a FIFO, socket or device); "
                "only regular files are read."
            )
            return
        if len(self.found) >= self.limits.max_files:
            self.problems.append(
                f"{shown}:1: the app has more than {self.limits.max_files} manifest files."
            )
            raise _StopWalk
        self.found.append((shown, path))


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True, kw_only=True)
class _Crd:
    name: str
    source: str
    scope: Scope
    versions: tuple[str, ...]


def _validate(
    docs: list[_Doc],
    *,
    default_namespace: str,
    app_name: str,
    kinds: KindResolver,
    problems: list[str],
    incomplete: bool,
) -> tuple[list[Manifest], list[str]]:
    shaped = [doc for doc in docs if _check_shape(doc, problems)]
    crds = _crds_in_set(shaped, problems)
    manifests: list[Manifest] = []
    warnings: list[str] = []
    first_seen: dict[tuple[str, str, str, str], str] = {}
    for doc in shaped:
        obj: dict[str, Any] = doc.obj
        meta: dict[str, Any] = obj["metadata"]
        api_version, kind, name = obj["apiVersion"], obj["kind"], meta["name"]
        where = doc.source
        try:
            wave_of(obj)
        except ValueError as e:
            problems.append(f"{where}: {kind} '{name}': {e}.")
        scope = _scope_of(
            api_version,
            kind,
            crds=crds,
            kinds=kinds,
            where=where,
            problems=problems,
            incomplete=incomplete,
        )
        namespace = meta.get("namespace") or ""
        if not isinstance(namespace, str):
            problems.append(
                f"{where}: {kind} '{name}' has a metadata.namespace that is not a string."
            )
            continue
        if scope == "Cluster" and namespace:
            problems.append(
                f"{where}: {kind} '{name}' is cluster-scoped but sets metadata.namespace "
                f"{namespace!r}; remove the namespace."
            )
            continue
        if scope == "Namespaced" and not namespace:
            if not default_namespace:
                problems.append(
                    f"{where}: {kind} '{name}' is namespaced, has no metadata.namespace, and the "
                    "app sets no default namespace."
                )
                continue
            namespace = default_namespace
        if scope is None:
            continue
        labels = dict(meta.get("labels") or {})
        for key, value in ((MANAGED_BY_LABEL, MANAGED_BY_VALUE), (APP_LABEL, app_name)):
            if labels.get(key, value) != value:
                warnings.append(
                    f"{where}: {kind} '{name}': label {key}={labels[key]!r} is replaced by "
                    f"{value!r}; gitsync owns that label."
                )
            labels[key] = value
        # New dicts only: the parsed input is left as it was, and selectors and pod
        # templates are never touched (changing a Deployment selector is immutable).
        new_meta = {**meta, "labels": labels}
        if namespace:
            new_meta["namespace"] = namespace
        manifest = Manifest(obj={**obj, "metadata": new_meta}, source=where)
        identity = manifest.ref.identity()
        if identity in first_seen:
            problems.append(
                f"{where}: {_describe(manifest.ref)} is defined twice; "
                f"it is also defined at {first_seen[identity]}."
            )
            continue
        first_seen[identity] = where
        manifests.append(manifest)
        warnings.extend(_lint(manifest, doc))
    return manifests, warnings


def _check_shape(doc: _Doc, problems: list[str]) -> bool:
    obj, where = doc.obj, doc.source
    if not isinstance(obj, dict):
        problems.append(
            f"{where}: the document is {_kind_of_value(obj)}, not a mapping; each document "
            "must be one Kubernetes object."
        )
        return False
    before = len(problems)
    for key in ("apiVersion", "kind"):
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            problems.append(f"{where}: the object has no {key}.")
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "object"
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        problems.append(f"{where}: the {kind} has no metadata (it needs at least metadata.name).")
        return False
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        hint = (
            " (metadata.generateName cannot be applied declaratively)"
            if meta.get("generateName")
            else ""
        )
        problems.append(f"{where}: the {kind} has no metadata.name{hint}.")
    for key in ("labels", "annotations"):
        values = meta.get(key)
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append(f"{where}: the {kind}'s metadata.{key} is not a mapping.")
            continue
        for k, v in values.items():
            if not isinstance(v, str):
                problems.append(
                    f"{where}: the {kind}'s {key[:-1]} {k!r} has the non-string value {v!r}; "
                    "quote it."
                )
    return len(problems) == before


def _kind_of_value(value: Any) -> str:
    if isinstance(value, list):
        return "a sequence"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _crds_in_set(docs: list[_Doc], problems: list[str]) -> dict[tuple[str, str], _Crd]:
    crds: dict[tuple[str, str], _Crd] = {}
    for doc in docs:
        obj = doc.obj
        if obj["kind"] != "CustomResourceDefinition" or not str(obj["apiVersion"]).startswith(
            "apiextensions.k8s.io/"
        ):
            continue
        spec = _mapping(obj.get("spec"))
        names = _mapping(spec.get("names"))
        group, kind, scope = spec.get("group"), names.get("kind"), spec.get("scope")
        if not (isinstance(group, str) and isinstance(kind, str) and scope in (_N, _C)):
            problems.append(
                f"{doc.source}: CustomResourceDefinition '{obj['metadata']['name']}' needs "
                "spec.group, spec.names.kind and spec.scope (Namespaced or Cluster)."
            )
            continue
        versions = tuple(
            str(v["name"])
            for v in spec.get("versions") or ()
            if isinstance(v, dict) and v.get("name") and v.get("served", True)
        )
        crds[(group, kind)] = _Crd(
            name=obj["metadata"]["name"], source=doc.source, scope=scope, versions=versions
        )
    return crds


def _scope_of(
    api_version: str,
    kind: str,
    *,
    crds: dict[tuple[str, str], _Crd],
    kinds: KindResolver,
    where: str,
    problems: list[str],
    incomplete: bool,
) -> Scope | None:
    group, _, version = api_version.rpartition("/")
    # A CRD in the same commit wins over discovery: it is what is about to be applied.
    crd = crds.get((group, kind))
    if crd is not None:
        if crd.versions and version not in crd.versions:
            problems.append(
                f"{where}: {kind} uses {api_version}, but CustomResourceDefinition '{crd.name}' "
                f"({crd.source}) serves only {', '.join(crd.versions)}."
            )
            return None
        return crd.scope
    scope = kinds.scope(api_version, kind)
    if scope in (_N, _C):
        return scope
    hint = ""
    if kind == "Kustomization":
        hint = " A kustomization is built only when the app path is its directory."
    elif incomplete:
        hint = " (A file that could not be read may define it.)"
    problems.append(
        f"{where}: the kind {kind} ({api_version}) is not served by the API server and no "
        f"CustomResourceDefinition in this app defines it.{hint}"
    )
    return None


def _describe(ref: ObjectRef) -> str:
    where = f"{ref.namespace}/" if ref.namespace else ""
    return f"{ref.kind} '{where}{ref.name}'"


# --------------------------------------------------------------------------- lint

_POD_SPECS: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("apps", "Deployment"): ("spec", "template", "spec"),
    ("apps", "StatefulSet"): ("spec", "template", "spec"),
    ("apps", "DaemonSet"): ("spec", "template", "spec"),
    ("apps", "ReplicaSet"): ("spec", "template", "spec"),
    ("batch", "Job"): ("spec", "template", "spec"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
    ("", "Pod"): ("spec",),
}
# A Job's Pod is never a Service endpoint, so a readiness probe there would be noise.
_RUN_TO_COMPLETION = frozenset({("batch", "Job"), ("batch", "CronJob")})


def _lint(manifest: Manifest, doc: _Doc) -> list[str]:
    """Advice, never blocking: containers without limits, readiness probe, securityContext."""
    ref = manifest.ref
    path = _POD_SPECS.get((ref.group, ref.kind))
    if path is None:
        return []
    pod_spec: Any = manifest.obj
    for key in path:
        pod_spec = pod_spec.get(key) if isinstance(pod_spec, dict) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if not isinstance(containers, list):
        return []
    warnings = []
    for i, container in enumerate(containers):
        if not isinstance(container, dict):
            continue
        line = line_at(doc.node, *path, "containers", i) if doc.node is not None else None
        where = f"{doc.file}:{line}" if line is not None else doc.source
        what = f"{where}: {_describe(ref)}: container '{container.get('name', i)}'"
        resources = container.get("resources")
        if not (isinstance(resources, dict) and resources.get("limits")):
            warnings.append(f"{what} has no resources.limits; it can starve its node.")
        if (ref.group, ref.kind) not in _RUN_TO_COMPLETION and not container.get("readinessProbe"):
            warnings.append(
                f"{what} has no readinessProbe; it counts as ready as soon as it starts."
            )
        if not container.get("securityContext"):
            warnings.append(
                f"{what} has no securityContext; it runs with the image's user and privileges."
            )
    return warnings


# --------------------------------------------------------------------------- helpers


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
