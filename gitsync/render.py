"""Render stage: an app directory (plain YAML/JSON or Kustomize) → a validated ``ManifestSet``.

All or nothing: every problem in every file is collected first, then one ``RenderError``
lists them all, each as a sentence that starts with ``file:line:``, so one push fixes
one commit's worth of mistakes instead of one per sync.

The repository is not trusted. Files are read only inside ``repo_root`` (symlinks
checked), with size limits, and YAML is composed here from libyaml's *event* stream
rather than with ``yaml.safe_load``: that keeps the real line of every node, counts
aliases and their expansion before anything is built (billion laughs), caps nesting
depth (libyaml's own composer recurses in C and crashes the process on deep
nesting), refuses duplicate keys as kubectl does, and builds fresh dicts for every
alias use so no two objects share a mutable value.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from gitsync.errors import RenderError
from gitsync.model import (
    APP_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    Manifest,
    ManifestSet,
    ObjectRef,
)
from gitsync.order import wave_of

__all__ = [
    "BUILTIN_KINDS",
    "DEFAULT_KUSTOMIZE",
    "KUSTOMIZATION_FILES",
    "KindResolver",
    "RenderLimits",
    "Scope",
    "StaticKinds",
    "render",
]

Scope = Literal["Namespaced", "Cluster"]

DEFAULT_KUSTOMIZE: tuple[str, ...] = ("kubectl", "kustomize")
KUSTOMIZATION_FILES: tuple[str, ...] = ("kustomization.yaml", "kustomization.yml", "Kustomization")
MANIFEST_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
ORIGIN_ANNOTATION = "config.kubernetes.io/origin"


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

    max_file_bytes: int = 2 * 1024 * 1024
    max_total_bytes: int = 16 * 1024 * 1024
    max_files: int = 10_000
    max_aliases: int = 100  # alias nodes per YAML document
    max_alias_nodes: int = 100_000  # nodes that alias uses add to one document
    max_depth: int = 200  # nesting of one document; must stay well under the recursion limit
    kustomize_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= 400:
            msg = f"RenderLimits.max_depth must be between 1 and 400, not {self.max_depth}"
            raise ValueError(msg)


def render(
    app_dir: Path,
    *,
    repo_root: Path,
    default_namespace: str,
    app_name: str,
    kinds: KindResolver,
    kustomize: Sequence[str] | None = None,
    limits: RenderLimits = RenderLimits(),
) -> ManifestSet:
    """Read, parse and validate the app; raise one RenderError naming every problem."""
    repo = Path(os.path.realpath(repo_root))
    app = Path(os.path.realpath(app_dir))
    if not app.is_relative_to(repo):
        raise RenderError([f"{app_dir}: the app path resolves outside the repository ({repo})."])
    if not app.is_dir():
        raise RenderError(
            [f"{_rel(app, repo)}: the app path is not a directory in the repository."]
        )

    problems: list[str] = []
    kustomization = _kustomization_file(app)
    if kustomization is not None:
        docs = _kustomize_docs(
            app,
            kustomization=kustomization,
            repo=repo,
            command=list(kustomize or DEFAULT_KUSTOMIZE),
            limits=limits,
            problems=problems,
        )
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
        warnings.append(f"{_rel(app, repo) or '.'}: the app renders no objects.")
    return ManifestSet(manifests=tuple(manifests), warnings=tuple(warnings))


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True, slots=True, kw_only=True)
class _Doc:
    """One raw document (not yet validated) and where it came from."""

    obj: Any
    source: str  # "file:line" or a kustomize description; every problem starts with it
    file: str | None = None  # set when ``node`` lines are lines of ``file`` (plain mode)
    node: _Node | None = None


class _Problem(Exception):
    """A parse problem at a line of the file being read."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(message)


def _directory_docs(app: Path, repo: Path, limits: RenderLimits, problems: list[str]) -> list[_Doc]:
    docs: list[_Doc] = []
    total = 0
    for display, path in _manifest_files(app, repo, limits, problems):
        data = _read(path, display, limits, problems)
        if data is None:
            continue
        total += len(data)
        if total > limits.max_total_bytes:
            problems.append(
                f"{display}:1: reading this file brings the app to {total} bytes, over the "
                f"limit of {limits.max_total_bytes} bytes; split the app or raise the limit."
            )
            break
        text = _decode(data, display, problems)
        if text is None:
            continue
        try:
            docs.extend(_parse_file(text, display, limits, json_file=display.endswith(".json")))
        except _Problem as e:
            problems.append(f"{display}:{e.line}: {e.message}")
    return docs


def _manifest_files(
    app: Path, repo: Path, limits: RenderLimits, problems: list[str]
) -> list[tuple[str, Path]]:
    """Every .yaml/.yml/.json under ``app`` in path order, symlinks checked against ``repo``."""
    walker = _Walker(repo=repo, limits=limits, problems=problems)
    with contextlib.suppress(_StopWalk):
        walker.walk(app, _rel(app, repo), frozenset({app}))
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


def _read(path: Path, display: str, limits: RenderLimits, problems: list[str]) -> bytes | None:
    try:
        with path.open("rb") as f:
            data = f.read(limits.max_file_bytes + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        problems.append(f"{display}:1: cannot read the file: {e.strerror}.")
        return None
    if len(data) > limits.max_file_bytes:
        problems.append(
            f"{display}:1: the file is {max(size, len(data))} bytes, over the limit of "
            f"{limits.max_file_bytes} bytes per file; split it."
        )
        return None
    return data


def _decode(data: bytes, display: str, problems: list[str]) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problems.append(
            f"{display}:{line}: the file is not valid UTF-8 (byte 0x{data[e.start]:02x} at "
            f"offset {e.start}); save it as UTF-8."
        )
        return None


def _parse_file(text: str, display: str, limits: RenderLimits, *, json_file: bool) -> list[_Doc]:
    """Documents of one file, ``List`` kinds flattened, empty documents dropped."""
    if json_file:
        return _json_docs(text, display, limits)
    docs: list[_Doc] = []
    for root in _yaml_documents(text, limits):
        obj = _plain(root)
        if obj is None:
            continue
        if isinstance(obj, dict) and obj.get("kind") == "List" and "items" in obj:
            items = obj["items"]
            if not isinstance(items, list):
                raise _Problem(root.line, "a List's items must be a sequence of objects.")
            item_nodes = _child(root, "items")
            for i, item in enumerate(items):
                node = _child(item_nodes, i) if item_nodes else None
                line = node.line if node else root.line
                docs.append(_Doc(obj=item, source=f"{display}:{line}", file=display, node=node))
        else:
            docs.append(_Doc(obj=obj, source=f"{display}:{root.line}", file=display, node=root))
    return docs


def _json_docs(text: str, display: str, limits: RenderLimits) -> list[_Doc]:
    stripped = text.lstrip()
    if not stripped:
        return []
    line = text.count("\n", 0, len(text) - len(stripped)) + 1
    try:
        obj = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise _Problem(e.lineno, f"JSON syntax error: {e.msg} (column {e.colno}).") from e
    except _Problem as e:
        raise _Problem(line, e.message) from e
    except RecursionError as e:
        raise _Problem(line, "the JSON is nested too deeply.") from e
    if _deeper_than(obj, limits.max_depth):
        raise _Problem(line, f"the document is nested more than {limits.max_depth} levels deep.")
    if isinstance(obj, dict) and obj.get("kind") == "List" and "items" in obj:
        if not isinstance(obj["items"], list):
            raise _Problem(line, "a List's items must be a sequence of objects.")
        return [_Doc(obj=item, source=f"{display}:{line}") for item in obj["items"]]
    return [_Doc(obj=obj, source=f"{display}:{line}")]


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Problem(0, f"the key {key!r} appears twice in one JSON object.")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Problem(0, f"{name} is not valid JSON and cannot be sent to the API server.")


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


# --------------------------------------------------------------------------- YAML


_SCALAR, _SEQ, _MAP = 0, 1, 2
_TAG = "tag:yaml.org,2002:"


@dataclass(slots=True)
class _Node:
    """A composed YAML node; aliases are the same ``_Node`` reached twice."""

    kind: int
    line: int
    value: Any  # a Python scalar | list[_Node] | list[tuple[_Node, _Node]]
    merge: bool = False  # a plain ``<<`` key
    size: int = 1  # nodes after expanding aliases
    height: int = 1


# YAML 1.1 implicit types as PyYAML resolves them, minus timestamps and sexagesimal
# numbers, which kubectl (go-yaml) leaves as strings: "12:30" stays "12:30".
_NULL = re.compile(r"~|null|Null|NULL|")
_TRUE = re.compile(r"yes|Yes|YES|true|True|TRUE|on|On|ON")
_FALSE = re.compile(r"no|No|NO|false|False|FALSE|off|Off|OFF")
_INT = re.compile(r"[-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|0[0-7_]+|0|[1-9][0-9_]*)")
_FLOAT = re.compile(
    r"[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)


def _yaml_documents(text: str, limits: RenderLimits) -> Iterator[_Node]:
    """Root node of each document; raises _Problem with the line of a syntax error."""
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    events = loader_cls(text)
    try:
        events.get_event()  # StreamStart
        while not events.check_event(yaml.StreamEndEvent):
            events.get_event()  # DocumentStart
            root = _compose(events, limits)
            events.get_event()  # DocumentEnd
            yield root
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        context = e.context or ""
        if context and e.context_mark is not None and e.context_mark.line + 1 != line:
            context += f" (line {e.context_mark.line + 1})"
        what = " ".join(x for x in (context, e.problem) if x)
        raise _Problem(line, f"YAML syntax error: {what}.") from e
    except yaml.YAMLError as e:
        raise _Problem(1, f"YAML error: {e}.") from e
    finally:
        events.dispose()


@dataclass(slots=True)
class _Open:
    node: _Node
    anchor: str | None
    key: _Node | None = None  # mappings: the key waiting for its value
    keys: dict[str, int] = field(default_factory=dict)  # mappings: key → line, for duplicates


def _compose(events: Any, limits: RenderLimits) -> _Node:
    """One document's node graph, built iteratively with alias and depth limits."""
    return _Composer(events=events, limits=limits).document()


@dataclass(slots=True, kw_only=True)
class _Composer:
    events: Any
    limits: RenderLimits
    anchors: dict[str, _Node] = field(default_factory=dict)
    stack: list[_Open] = field(default_factory=list)
    aliases: int = 0
    alias_nodes: int = 0

    def document(self) -> _Node:
        while True:
            event = self.events.get_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                node = self._alias(str(event.anchor), line)
            elif isinstance(event, yaml.ScalarEvent):
                node = _scalar(event, line)
                if event.anchor:
                    self.anchors[event.anchor] = node
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                self._open(event, line)
                continue
            else:  # SequenceEnd / MappingEnd
                node = self._close()
            if not self.stack:
                return node
            self._attach(node)

    def _alias(self, anchor: str, line: int) -> _Node:
        target = self.anchors.get(anchor)
        if target is None and any(o.anchor == anchor for o in self.stack):
            raise _Problem(line, f"the alias *{anchor} refers to a node that contains it.")
        if target is None:
            raise _Problem(line, f"the alias *{anchor} has no anchor defined before it.")
        self.aliases += 1
        self.alias_nodes += target.size
        if self.aliases > self.limits.max_aliases:
            raise _Problem(
                line,
                f"the document uses more than {self.limits.max_aliases} aliases; "
                "refusing it as a possible alias bomb.",
            )
        if self.alias_nodes > self.limits.max_alias_nodes:
            raise _Problem(
                line,
                f"aliases expand the document by more than {self.limits.max_alias_nodes} "
                "nodes; refusing it as an alias bomb.",
            )
        if len(self.stack) + target.height > self.limits.max_depth:
            raise _Problem(line, f"the document nests more than {self.limits.max_depth} levels.")
        return target

    def _open(self, event: Any, line: int) -> None:
        if len(self.stack) >= self.limits.max_depth:
            raise _Problem(line, f"the document nests more than {self.limits.max_depth} levels.")
        is_map = isinstance(event, yaml.MappingStartEvent)
        if event.tag not in (None, "!", _TAG + ("map" if is_map else "seq")):
            raise _Problem(line, f"the YAML tag {event.tag} is not supported in manifests.")
        opened = _Node(kind=_MAP if is_map else _SEQ, line=line, value=[])
        self.stack.append(_Open(node=opened, anchor=event.anchor))

    def _close(self) -> _Node:
        done = self.stack.pop()
        node = done.node
        children = node.value if node.kind == _SEQ else [n for pair in node.value for n in pair]
        node.size = 1 + sum(c.size for c in children)
        node.height = 1 + max((c.height for c in children), default=0)
        # Anchors are registered when complete, so an alias can never point into the
        # node that contains it: no cycles.
        if done.anchor:
            self.anchors[done.anchor] = node
        return node

    def _attach(self, node: _Node) -> None:
        parent = self.stack[-1]
        if parent.node.kind == _SEQ:
            parent.node.value.append(node)
        elif parent.key is None:
            _check_key(node, parent)
            parent.key = node
        else:
            parent.node.value.append((parent.key, node))
            parent.key = None


def _check_key(key: _Node, parent: _Open) -> None:
    if key.kind != _SCALAR:
        raise _Problem(key.line, "a mapping key is a collection; keys must be plain scalars.")
    if key.merge:
        return
    name = _key_text(key.value)
    first = parent.keys.get(name)
    if first is not None:
        raise _Problem(
            key.line,
            f"the key {name!r} appears twice in one mapping (first at line {first}); "
            "kubectl refuses this too.",
        )
    parent.keys[name] = key.line


def _key_text(value: Any) -> str:
    """Keys as kubectl (sigs.k8s.io/yaml) turns them into JSON: ``8080`` → ``"8080"``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _scalar(event: Any, line: int) -> _Node:
    value: str = event.value
    tag = event.tag
    plain = tag is None and event.implicit[0]
    if plain and value == "<<":
        return _Node(kind=_SCALAR, line=line, value=value, merge=True)
    if tag in (None, "!"):
        tag = None if plain else _TAG + "str"
    try:
        return _Node(kind=_SCALAR, line=line, value=_scalar_value(value, tag))
    except ValueError as e:
        raise _Problem(line, str(e)) from e


def _scalar_value(value: str, tag: str | None) -> Any:
    """Plain scalars (``tag`` None) are resolved; explicit tags are honoured or refused."""
    if tag == _TAG + "str" or (tag is None and value and value[0] not in _IMPLICIT_FIRST):
        return value
    for name, pattern, convert in _IMPLICIT:
        if tag in (None, _TAG + name) and pattern.fullmatch(value):
            return convert(value)
    if tag is None:
        return value
    if tag.startswith(_TAG) and tag[len(_TAG) :] in {name for name, _, _ in _IMPLICIT}:
        raise ValueError(f"{value!r} is not a valid {tag}.")
    raise ValueError(f"the YAML tag {tag} is not supported in manifests.")


def _float(text: str) -> float:
    if "inf" in text.lower() or "nan" in text.lower():
        raise ValueError(f"{text} cannot be represented in JSON; quote it if it is text.")
    return float(text.replace("_", ""))


def _int(text: str) -> int:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    if len(digits) > 100:
        msg = f"the integer {text[:12]}… has {len(digits)} digits; quote it if it is text."
        raise ValueError(msg)
    if digits.startswith("0b"):
        return sign * int(digits[2:], 2)
    if digits.startswith("0x"):
        return sign * int(digits[2:], 16)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits, 8)  # YAML 1.1 octal, as go-yaml reads it
    return sign * int(digits)


# Only plain scalars starting with one of these can be anything but a string.
_IMPLICIT_FIRST = frozenset("~nNyYtTfFoO+-.0123456789")
_IMPLICIT: tuple[tuple[str, re.Pattern[str], Callable[[str], Any]], ...] = (
    ("null", _NULL, lambda _: None),
    ("bool", _TRUE, lambda _: True),
    ("bool", _FALSE, lambda _: False),
    ("int", _INT, _int),
    ("float", _FLOAT, _float),
)


def _plain(node: _Node) -> Any:
    """Python values, fresh for every alias use so no two places share a dict."""
    if node.kind == _SCALAR:
        return node.value
    if node.kind == _SEQ:
        return [_plain(child) for child in node.value]
    merged: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in node.value:
        if key.merge:
            sources = value.value if value.kind == _SEQ else [value]
            for source in sources:
                if source.kind != _MAP:
                    raise _Problem(
                        value.line, "a merge key (<<) needs a mapping or a list of them."
                    )
                for k, v in _plain(source).items():
                    merged.setdefault(k, v)  # earlier sources win, as in YAML 1.1
            continue
        own[_key_text(key.value)] = _plain(value)
    return {**merged, **own} if merged else own


def _child(node: _Node | None, key: str | int) -> _Node | None:
    """The node under ``key`` (mapping key or sequence index), for line numbers."""
    if node is None:
        return None
    if node.kind == _SEQ and isinstance(key, int):
        return node.value[key] if 0 <= key < len(node.value) else None
    if node.kind == _MAP and isinstance(key, str):
        for k, v in node.value:
            if not k.merge and _key_text(k.value) == key:
                return v  # type: ignore[no-any-return]
    return None


def _line_at(node: _Node | None, *path: str | int) -> int | None:
    for key in path:
        node = _child(node, key)
    return node.line if node is not None else None


# --------------------------------------------------------------------------- kustomize


def _kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


# Fields whose entries are paths (or inline YAML, which has a newline).
_PATH_LISTS = (
    "resources", "bases", "components", "crds", "configurations", "patchesStrategicMerge",
    "generators", "transformers", "validators",
)  # fmt: skip
_PATH_OBJECT_LISTS = ("patches", "patchesJson6902", "replacements")
_KUSTOMIZATION_DIRS = frozenset({"resources", "bases", "components"})


def _kustomize_docs(
    app: Path,
    *,
    kustomization: Path,
    repo: Path,
    command: list[str],
    limits: RenderLimits,
    problems: list[str],
) -> list[_Doc]:
    _check_kustomizations(app, repo, limits, problems)
    if problems:
        return []  # never run kustomize on a tree that reaches outside the repository
    shown = _rel(kustomization, repo)
    text = _run_kustomize(command, app, shown, limits, problems)
    if text is None:
        return []
    try:
        roots = list(_yaml_documents(text, limits))
    except _Problem as e:
        problems.append(
            f"{shown}:1: kustomize printed unreadable YAML (line {e.line}): {e.message}"
        )
        return []
    docs: list[_Doc] = []
    origins = _OriginIndex(app=app, repo=repo, limits=limits)
    for root in roots:
        try:
            obj = _plain(root)
        except _Problem as e:
            problems.append(f"{shown}:1: kustomize output line {e.line}: {e.message}")
            continue
        if obj is None:
            continue
        number = len(docs) + 1
        source = origins.source(obj) or f"{shown} (kustomize output doc {number})"
        docs.append(_Doc(obj=obj, source=source))
    return docs


def _check_kustomizations(app: Path, repo: Path, limits: RenderLimits, problems: list[str]) -> None:
    """Every path any reachable kustomization names stays inside ``repo``, no remote URLs."""
    queue = [app]
    seen: set[Path] = set()
    while queue:
        directory = queue.pop(0)
        if directory in seen:
            continue
        seen.add(directory)
        kfile = _kustomization_file(directory)
        if kfile is None:
            continue
        shown = _rel(kfile, repo)
        if not Path(os.path.realpath(kfile)).is_relative_to(repo):
            problems.append(f"{shown}:1: the kustomization is a symlink to outside the repository.")
            continue
        data = _read(kfile, shown, limits, problems)
        text = _decode(data, shown, problems) if data is not None else None
        if text is None:
            continue
        try:
            roots = list(_yaml_documents(text, limits))
            spec = _plain(roots[0]) if roots else None
        except _Problem as e:
            problems.append(f"{shown}:{e.line}: {e.message}")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{shown}:1: a kustomization must be a mapping.")
            continue
        root = roots[0]
        for where, entry, field_name in _kustomization_paths(spec):
            line = _line_at(root, *where) or _line_at(root, where[0]) or 1
            target = _check_path(
                entry,
                field_name=field_name,
                directory=directory,
                repo=repo,
                where=f"{shown}:{line}",
                problems=problems,
            )
            if target is not None and field_name in _KUSTOMIZATION_DIRS and target.is_dir():
                queue.append(target)


def _kustomization_paths(spec: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    """(node path, path string, field) for every file a kustomization refers to."""

    for name in _PATH_LISTS:
        for i, entry in _list_paths(spec.get(name)):
            yield (name, i), entry, name
    for name in _PATH_OBJECT_LISTS:
        entries = spec.get(name)
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    yield (name, i, "path"), entry["path"], name
    openapi = spec.get("openapi")
    if isinstance(openapi, dict) and isinstance(openapi.get("path"), str):
        yield ("openapi", "path"), openapi["path"], "openapi"
    for name in ("configMapGenerator", "secretGenerator"):
        yield from _generator_paths(name, spec.get(name))


def _list_paths(value: Any) -> Iterator[tuple[int, str]]:
    """Path entries of a list; strings with a newline are inline YAML, not paths."""
    if isinstance(value, list):
        for i, entry in enumerate(value):
            if isinstance(entry, str) and "\n" not in entry:
                yield i, entry


def _generator_paths(
    name: str, generators: Any
) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    if not isinstance(generators, list):
        return
    for i, gen in enumerate(generators):
        if not isinstance(gen, dict):
            continue
        for j, entry in _list_paths(gen.get("files")):
            yield (name, i, "files", j), entry.rpartition("=")[2], name
        for j, entry in _list_paths(gen.get("envs")):
            yield (name, i, "envs", j), entry, name
        if isinstance(gen.get("env"), str):
            yield (name, i, "env"), gen["env"], name


def _check_path(
    entry: str, *, field_name: str, directory: Path, repo: Path, where: str, problems: list[str]
) -> Path | None:
    if "://" in entry or entry.startswith("git@") or "?" in entry or "//" in entry:
        problems.append(
            f"{where}: {field_name} entry {entry!r} is a remote URL; gitsync renders only "
            "what is in the repository, so vendor it in."
        )
        return None
    if Path(entry).is_absolute():
        problems.append(
            f"{where}: {field_name} entry {entry!r} is an absolute path; use a path relative "
            "to the kustomization inside the repository."
        )
        return None
    target = Path(os.path.realpath(directory / entry))
    if not target.is_relative_to(repo):
        problems.append(
            f"{where}: {field_name} entry {entry!r} resolves outside the repository; "
            "kustomizations may only refer to files in the repository."
        )
        return None
    if not target.exists():
        # kustomize would take a missing path for a remote one and try to fetch it.
        problems.append(f"{where}: {field_name} entry {entry!r} does not exist.")
        return None
    return target


def _run_kustomize(
    command: list[str], app: Path, shown: str, limits: RenderLimits, problems: list[str]
) -> str | None:
    # Plugins, exec functions and Helm stay off: those flags are never passed.
    argv = [*command, "--load-restrictor", "LoadRestrictionsRootOnly", str(app)]
    # Output goes to a file so a runaway build cannot fill memory before the size check.
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                timeout=limits.kustomize_timeout,
                check=False,
            )
        except FileNotFoundError:
            problems.append(
                f"{shown}:1: the kustomize command {command[0]!r} was not found; install "
                "kubectl (or kustomize) or configure the kustomize command."
            )
            return None
        except subprocess.TimeoutExpired:
            problems.append(
                f"{shown}:1: kustomize did not finish within {limits.kustomize_timeout:g}s."
            )
            return None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()
            err = err if len(err) <= 2000 else "…" + err[-2000:]
            problems.append(f"{shown}:1: kustomize failed (exit {proc.returncode}): {err}")
            return None
        size = out.tell()
        if size > limits.max_total_bytes:
            problems.append(
                f"{shown}:1: kustomize printed {size} bytes, over the limit of "
                f"{limits.max_total_bytes} bytes."
            )
            return None
        out.seek(0)
        return _decode(out.read(), f"{shown} (kustomize output)", problems)


@dataclass(slots=True)
class _OriginIndex:
    """Maps kustomize's origin annotation back to ``file:line`` in the repository.

    Only used when the kustomization itself asks for ``buildMetadata: [originAnnotations]``;
    render never adds it, because it would then end up on the live objects.
    """

    app: Path
    repo: Path
    limits: RenderLimits
    files: dict[Path, list[tuple[str, str, int]]] = field(default_factory=dict)

    def source(self, obj: Any) -> str | None:
        if not isinstance(obj, dict):
            return None
        meta = obj.get("metadata")
        annotations = meta.get("annotations") if isinstance(meta, dict) else None
        origin_text = annotations.get(ORIGIN_ANNOTATION) if isinstance(annotations, dict) else None
        if not isinstance(origin_text, str):
            return None
        try:
            roots = list(_yaml_documents(origin_text, self.limits))
            origin = _plain(roots[0]) if roots else None
        except _Problem:
            return None
        if not isinstance(origin, dict):
            return None
        if isinstance(origin.get("path"), str):
            path = Path(os.path.realpath(self.app / origin["path"]))
            if not path.is_relative_to(self.repo):
                return None
            line = self._line(path, obj)
            shown = _rel(path, self.repo)
            return f"{shown}:{line}" if line else f"{shown} (via kustomize)"
        configured_in, by = origin.get("configuredIn"), origin.get("configuredBy")
        if isinstance(configured_in, str):
            path = Path(os.path.realpath(self.app / configured_in))
            kind = by.get("kind") if isinstance(by, dict) else None
            generated = f" ({kind})" if isinstance(kind, str) else ""
            return f"{_rel(path, self.repo)}{generated}"
        return None

    def _line(self, path: Path, obj: dict[str, Any]) -> int | None:
        if path not in self.files:
            self.files[path] = self._index(path)
        kind = obj.get("kind")
        meta = obj.get("metadata")
        name = str(meta.get("name") or "") if isinstance(meta, dict) else ""
        same_kind = [(n, line) for k, n, line in self.files[path] if k == kind]
        if len(same_kind) == 1:
            return same_kind[0][1]
        # namePrefix/nameSuffix only add to a name: the longest original name inside wins.
        matches = sorted(((len(n), line) for n, line in same_kind if n and n in name), reverse=True)
        if matches and (len(matches) == 1 or matches[0][0] != matches[1][0]):
            return matches[0][1]
        return None

    def _index(self, path: Path) -> list[tuple[str, str, int]]:
        problems: list[str] = []
        data = _read(path, "", self.limits, problems)
        text = _decode(data, "", problems) if data is not None else None
        if text is None:
            return []
        try:
            docs = _parse_file(text, "", self.limits, json_file=path.suffix == ".json")
        except _Problem:
            return []
        index = []
        for doc in docs:
            if isinstance(doc.obj, dict):
                meta = doc.obj.get("metadata")
                name = meta.get("name") if isinstance(meta, dict) else None
                line = int(doc.source.rpartition(":")[2])
                index.append((str(doc.obj.get("kind")), str(name or ""), line))
        return index


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
        line = _line_at(doc.node, *path, "containers", i) if doc.node is not None else None
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


def _rel(path: Path, repo: Path) -> str:
    """``path`` relative to the repository, POSIX style, "" for the root itself."""
    relative = path.relative_to(repo).as_posix() if path.is_relative_to(repo) else str(path)
    return "" if relative == "." else relative
