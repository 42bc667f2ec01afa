"""Drift rules: fields gitsync applied whose live value differs, and who changed them.

The desired side is the last applied intent (the rendered manifest gitsync sent); only
the paths it sets are compared, so fields gitsync never set are never drift. Attribution
comes from ``metadata.managedFields``: a manual ``kubectl edit``/``scale``/``patch`` takes
ownership of each field it changes, with its manager name, operation, subresource and
time. A differing field that gitsync still owns was normalized by the API server (or
applied by a newer sync), so it is not drift either.

Everything here is pure: values in, reports out, the API reached only through callables
the caller passes (the SSA dry-run of the intent, the HPA look-up), so each rule is unit
tested without a cluster. ``gitsync.drift.watcher`` runs these rules on watch events
(``DriftWatcher``) and once for ``gitsync status`` (``scan``).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from gitsync.config import IgnoreRule
from gitsync.model import (
    DRIFT_ANNOTATION,
    FIELD_MANAGER,
    Identity,
    KubeObject,
    ObjectRef,
    field_manager,
)

MASK: Final = "***"
ABSENT_TEXT: Final = "(absent)"
OBJECT_PATH: Final = "(object)"
DELETED_TEXT: Final = "(deleted)"
PRESENT_TEXT: Final = "(present)"

# How a report's manager was found.
OWNER: Final = "owner"  # it owns the drifted path in managedFields now
WRITER: Final = "writer"  # the path lost its value; this manager wrote in the same change
UNKNOWN: Final = "unknown"

# Controllers that are expected to write into objects gitsync applies: what they own is
# theirs by design (HPA scaling through the scale subresource, CA bundle injection, ...).
EXPECTED_MANAGERS: Final = frozenset(
    {
        "kube-controller-manager",
        "cloud-controller-manager",
        "kube-scheduler",
        "vpa-updater",
        "vpa-admission-controller",
        "cert-manager-cainjector",
        "cainjector",
        "keda-operator",
    }
)
# Leaf fields that injectors fill in whatever the manifest says.
INJECTED_FIELDS: Final = frozenset({"caBundle"})
# Kinds whose spec.replicas an HorizontalPodAutoscaler may own.
SCALABLE: Final = frozenset(
    {
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("apps", "ReplicaSet"),
        ("", "ReplicationController"),
    }
)


class _Absent:
    """A path that has no value on one side."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return ABSENT_TEXT


ABSENT: Final = _Absent()


# --- paths ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One element of a list: by its merge key where the list has one, else by position."""

    key: tuple[tuple[str, Any], ...]
    index: int

    def __str__(self) -> str:
        if self.key:
            return "[" + ",".join(f"{k}={_key_text(v)}" for k, v in self.key) + "]"
        return f"[{self.index}]"

    def matches(self, value: Any) -> bool:
        return isinstance(value, dict) and all(value.get(k) == v for k, v in self.key)


Part: TypeAlias = str | Item
FieldPath: TypeAlias = tuple[Part, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _key_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def path_text(parts: FieldPath) -> str:
    """``spec.template.spec.containers[name=web].image``, ``metadata.labels["a.b/c"]``."""
    if not parts:
        return OBJECT_PATH
    text = ""
    for part in parts:
        if isinstance(part, Item):
            text += str(part)
        elif _PLAIN_KEY.match(part):
            text += ("." if text else "") + part
        else:
            text += f"[{json.dumps(part)}]"
    return text


# Merge keys of the built-in list types that SSA merges item by item (x-kubernetes-list-
# map-keys). A list of objects that all carry a unique "name" is treated the same way;
# any other list is one atomic value.
_MERGE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "volumes": ("name",),
    "env": ("name",),
    "imagePullSecrets": ("name",),
    "resourceClaims": ("name",),
    "schedulingGates": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "hostAliases": ("ip",),
    "conditions": ("type",),
    "readinessGates": ("conditionType",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
_PORT_KEYS: Final = (("containerPort", "protocol"), ("port", "protocol"))
# Scalar lists SSA treats as sets: the intent's members must be there, others may be too.
_SET_LISTS: Final = frozenset({"finalizers"})


def merge_key(name: str, items: list[Any]) -> tuple[str, ...]:
    """The fields that identify an item of list ``name``, or () if it is atomic."""
    if not items or not all(isinstance(it, dict) for it in items):
        return ()
    if name == "ports":
        for port_keys in _PORT_KEYS:
            if all(port_keys[0] in it for it in items):
                return port_keys
        return ()
    keys = _MERGE_KEYS.get(name)
    if keys is not None:
        return keys if all(keys[0] in it for it in items) else ()
    names = [it.get("name") for it in items]
    if all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
        return ("name",)
    return ()


# --- values --------------------------------------------------------------------------

_QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[numkKMGTPE]i?|m)?$")


def _same(desired: Any, live: Any) -> bool:
    """Equal as the API server would store them, as far as a cheap look can tell."""
    if isinstance(desired, bool) or isinstance(live, bool):
        return type(desired) is type(live) and desired == live
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return desired == live
    if isinstance(desired, int | float) and isinstance(live, str):
        return str(desired) == live
    if isinstance(desired, str) and isinstance(live, int | float):
        return desired == str(live)
    if isinstance(desired, dict) and isinstance(live, dict):
        keys = {k for k, v in desired.items() if v is not None} | set(live)
        return all(_same(desired.get(k, ABSENT), live.get(k, ABSENT)) for k in keys)
    if isinstance(desired, list) and isinstance(live, list):
        return len(desired) == len(live) and all(map(_same, desired, live))
    return bool(desired == live)


def _certain(desired: Any, live: Any) -> bool:
    """True when no server-side normalization could make these two equal."""
    if live is ABSENT or type(desired) is not type(live):
        return False
    if isinstance(desired, bool | int):
        return True
    if isinstance(desired, str):
        return not (_QUANTITY.match(desired) and _QUANTITY.match(live))
    return False


@dataclass(frozen=True, slots=True)
class Difference:
    """One intent path whose live value differs (raw values, not yet masked)."""

    parts: FieldPath
    desired: Any
    live: Any


def differences(intent: Any, live: Any, parts: FieldPath = ()) -> Iterator[Difference]:
    """Every leaf (or atomic value) the intent sets whose live value differs."""
    if isinstance(intent, dict):
        if not isinstance(live, dict):
            if intent and live is not ABSENT:
                yield Difference(parts, intent, live)
            elif intent:
                # Descend so each missing leaf is reported where gitsync set it.
                for key, sub in intent.items():
                    if sub is not None:
                        yield from differences(sub, ABSENT, (*parts, key))
            return
        for key, sub in intent.items():
            if sub is None:
                continue
            yield from differences(sub, live.get(key, ABSENT), (*parts, key))
        return
    if isinstance(intent, list):
        yield from _list_differences(intent, live, parts)
        return
    if live is ABSENT or not _same(intent, live):
        yield Difference(parts, intent, live)


def _list_differences(intent: list[Any], live: Any, parts: FieldPath) -> Iterator[Difference]:
    name = next((p for p in reversed(parts) if isinstance(p, str)), "")
    if not intent:
        return  # an empty list sets nothing a person could change back
    if not isinstance(live, list):
        yield Difference(parts, intent, live)
        return
    if name in _SET_LISTS:
        missing = [v for v in intent if v not in live]
        if missing:
            yield Difference(parts, intent, live)
        return
    keys = merge_key(name, intent)
    if not keys:
        if not _same(intent, live):
            yield Difference(parts, intent, live)
        return
    for index, item in enumerate(intent):
        item_key = tuple((k, item[k]) for k in keys if k in item)
        part = Item(item_key, index)
        hit = next((it for it in live if part.matches(it)), ABSENT)
        if hit is ABSENT:
            yield Difference((*parts, part), item, ABSENT)
        else:
            yield from differences(item, hit, (*parts, part))


def resolve(obj: Any, parts: FieldPath) -> Any:
    """The value at ``parts`` in ``obj`` (list items found by merge key), or ABSENT."""
    value = obj
    for part in parts:
        if isinstance(part, Item):
            if not isinstance(value, list):
                return ABSENT
            if part.key:
                value = next((it for it in value if part.matches(it)), ABSENT)
            else:
                value = value[part.index] if part.index < len(value) else ABSENT
        elif isinstance(value, dict):
            value = value.get(part, ABSENT)
        else:
            return ABSENT
        if value is ABSENT:
            return ABSENT
    return value


# --- managedFields -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """One managedFields entry: who wrote, how and when (``time`` may be "")."""

    manager: str
    operation: str
    subresource: str = ""
    time: str = ""

    def is_gitsync(self, manager: str = FIELD_MANAGER) -> bool:
        """Written by this app's gitsync manager (or the shared one older releases used)."""
        return self.manager in (manager, FIELD_MANAGER)


def _entries(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    return [e for e in entries if isinstance(e, dict)]


def _owner(entry: Mapping[str, Any]) -> Owner:
    return Owner(
        manager=str(entry.get("manager") or ""),
        operation=str(entry.get("operation") or ""),
        subresource=str(entry.get("subresource") or ""),
        time=str(entry.get("time") or ""),
    )


def _owns(node: Mapping[str, Any], live: Any, parts: FieldPath) -> bool:
    """Whether fieldsV1 ``node`` covers ``parts`` (an owned atomic parent covers it too)."""
    value = live
    for part in parts:
        if isinstance(part, Item):
            if not isinstance(value, list) or not part.key:
                return False
            hit = next((it for it in value if part.matches(it)), None)
            if hit is None:
                return False
            child = next(
                (
                    sub
                    for k, sub in node.items()
                    if k.startswith("k:") and _k_matches(k, hit) and isinstance(sub, dict)
                ),
                None,
            )
            value = hit
        else:
            child = node.get(f"f:{part}")
            value = value.get(part, ABSENT) if isinstance(value, dict) else ABSENT
        if not isinstance(child, dict):
            return False
        if not child:
            return True  # a leaf here: it owns the whole value below
        node = child
    return True


def _k_matches(key: str, item: Mapping[str, Any]) -> bool:
    try:
        want = json.loads(key[2:])
    except ValueError:
        return False
    return isinstance(want, dict) and all(item.get(k) == v for k, v in want.items())


def owners(live: Mapping[str, Any], parts: FieldPath) -> list[Owner]:
    """Every managedFields entry that owns ``parts`` on ``live`` now."""
    return [
        _owner(e)
        for e in _entries(live)
        if isinstance(e.get("fieldsV1"), dict) and _owns(e["fieldsV1"], live, parts)
    ]


def writers(
    before: Mapping[str, Any] | None, after: Mapping[str, Any], *, manager: str = FIELD_MANAGER
) -> tuple[Owner, ...]:
    """Managers (not gitsync, not status writers) whose entry changed from one version to
    the next: the likely authors of a removal, which leaves no owner behind."""
    if before is None:
        return ()
    old = {
        (e.get("manager"), e.get("operation"), e.get("subresource")): e for e in _entries(before)
    }
    out: list[Owner] = []
    for entry in _entries(after):
        owner = _owner(entry)
        if owner.is_gitsync(manager) or owner.subresource == "status":
            continue
        prev = old.get((entry.get("manager"), entry.get("operation"), entry.get("subresource")))
        if (
            prev is None
            or prev.get("time") != entry.get("time")
            or prev.get("fieldsV1") != entry.get("fieldsV1")
        ):
            out.append(owner)
    return tuple(out)


def gitsync_applied_at(live: Mapping[str, Any], *, manager: str = FIELD_MANAGER) -> str:
    """When gitsync last changed this object with an apply ("" if never)."""
    times = [
        owner.time
        for owner in map(_owner, _entries(live))
        if owner.is_gitsync(manager) and owner.operation == "Apply" and not owner.subresource
    ]
    return max(times, default="")


def _paths(node: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, sub in node.items():
        yield (*prefix, key)
        if isinstance(sub, dict):
            yield from _paths(sub, (*prefix, key))


def _gitsync_fields(obj: Mapping[str, Any], manager: str) -> Mapping[str, Any]:
    for entry in _entries(obj):
        owner = _owner(entry)
        if owner.is_gitsync(manager) and owner.operation == "Apply" and not owner.subresource:
            fields = entry.get("fieldsV1")
            return fields if isinstance(fields, dict) else {}
    return {}


def gitsync_wrote(
    before: Mapping[str, Any] | None, after: Mapping[str, Any], *, manager: str = FIELD_MANAGER
) -> bool:
    """Whether gitsync itself applied between two versions of an object: its entry's time
    moved, or it owns a path it did not own before (nobody else can give it one)."""
    if before is None:
        return False
    if gitsync_applied_at(after, manager=manager) != gitsync_applied_at(before, manager=manager):
        return True
    now, then = _gitsync_fields(after, manager), _gitsync_fields(before, manager)
    return not set(_paths(now)) <= set(_paths(then))


def written_at(obj: Mapping[str, Any]) -> str:
    """The newest managedFields time on ``obj``: when it was last written, server clock."""
    return max((str(e.get("time") or "") for e in _entries(obj)), default="")


def _newest(candidates: Iterable[Owner]) -> Owner | None:
    # A missing time (the scale subresource records none) sorts as the newest.
    return max(candidates, key=lambda o: o.time or "9999", default=None)


# --- ignore rules --------------------------------------------------------------------


def pointer_parts(pointer: str) -> tuple[str, ...]:
    """RFC 6901 segments: ``/metadata/labels/a~1b`` → ("metadata", "labels", "a/b")."""
    if pointer in ("", "/"):
        return ()
    return tuple(s.replace("~1", "/").replace("~0", "~") for s in pointer.lstrip("/").split("/"))


def rule_matches(rule: IgnoreRule, ref: ObjectRef, parts: FieldPath) -> bool:
    """``rule`` covers ``parts`` of ``ref``: kind and name (glob) match, and its pointer is
    a prefix of the path; a list item matches its index, its key value, or ``*``."""
    if rule.kind not in ("*", ref.kind, ref.group_kind):
        return False
    if not fnmatch.fnmatchcase(ref.name, rule.name):
        return False
    want = pointer_parts(rule.pointer)
    if len(want) > len(parts):
        return False
    secret = ref.kind == "Secret" and not ref.group
    for seg, part in zip(want, parts, strict=False):
        if seg == "*":
            continue
        if isinstance(part, Item):
            if seg != str(part.index) and seg not in {_key_text(v) for _, v in part.key}:
                return False
        elif seg != part and not (secret and {seg, part} == {"data", "stringData"}):
            return False
    return True


def ignored_by_annotation(*objs: Mapping[str, Any] | None) -> bool:
    """``gitsync.io/drift: ignore`` on the intent or on the live object."""
    for obj in objs:
        if obj is None:
            continue
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if str(annotations.get(DRIFT_ANNOTATION, "")).lower() == "ignore":
            return True
    return False


def hpa_targets(hpas: Iterable[Mapping[str, Any]]) -> frozenset[tuple[str, str, str]]:
    """(namespace, kind, name) of every scale target of these HorizontalPodAutoscalers."""
    out: set[tuple[str, str, str]] = set()
    for hpa in hpas:
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        namespace = str((hpa.get("metadata") or {}).get("namespace") or "")
        if target.get("kind") and target.get("name"):
            out.add((namespace, str(target["kind"]), str(target["name"])))
    return frozenset(out)


def is_replicas(ref: ObjectRef, parts: FieldPath) -> bool:
    return parts == ("spec", "replicas") and (ref.group, ref.kind) in SCALABLE


# --- reports -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftReport:
    """One drifted field (or a deleted object); Secret values are already ``***``."""

    app: str
    ref: ObjectRef
    path: str
    desired: Any
    live: Any
    manager: str = ""
    operation: str = ""
    subresource: str = ""
    time: str = ""
    revision: str = ""
    attribution: str = UNKNOWN
    # When gitsync noticed; ``time`` is when the server recorded the change.
    seen: str = field(default="", compare=False)
    parts: FieldPath = field(default=(), repr=False, compare=False)
    # Digest of the unmasked values and attribution: "the same drift" across events.
    signature: str = field(default="", repr=False, compare=False)

    @property
    def key(self) -> tuple[Identity, str]:
        return self.ref.identity(), self.path

    def log_fields(self) -> dict[str, Any]:
        """The structured fields of a ``drift.*`` log line."""
        return {
            "object": str(self.ref),
            "field": self.path,
            "desired": display(self.desired),
            "live": display(self.live),
            "manager": self.manager or "unknown",
            "operation": self.operation,
            "subresource": self.subresource,
            "time": self.time,
            "attribution": self.attribution,
            "seen": self.seen,
            "revision": self.revision[:12],
        }

    def summary(self) -> str:
        """One line for an Event message or ``gitsync status``."""
        who = self.manager or "unknown manager"
        how = "/".join(p for p in (self.operation, self.subresource) if p)
        when = f" at {self.time}" if self.time else ""
        if self.path == OBJECT_PATH:
            return f"object deleted (by {who}){when}"
        return (
            f"{self.path}: {display(self.desired)} → {display(self.live)} "
            f"(by {who}{f', {how}' if how else ''}{when})"
        )


class DriftSet(tuple[DriftReport, ...]):
    """An app's current drift: one report per drifted field (or deleted object)."""

    __slots__ = ()

    @property
    def objects(self) -> tuple[ObjectRef, ...]:
        """The distinct drifted objects, in report order."""
        return tuple(dict.fromkeys(r.ref for r in self))


def display(value: Any, limit: int = 200) -> Any:
    """Scalars as they are; anything bigger as compact JSON, cut at ``limit`` chars."""
    if value is ABSENT:
        return ABSENT_TEXT
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_secret(obj: Mapping[str, Any]) -> bool:
    return obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1"


def secret_as_data(intent: Mapping[str, Any]) -> KubeObject:
    """A Secret intent with ``stringData`` folded into ``data`` the way the server stores it."""
    out = dict(intent)
    string_data = out.pop("stringData", None) or {}
    data = dict(out.get("data") or {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        out["data"] = data
    return out


def _signature(path: str, desired: Any, live: Any, owner: Owner | None) -> str:
    payload = [
        path,
        None if desired is ABSENT else desired,
        live is ABSENT,
        None if live is ABSENT else live,
        owner.manager if owner else "",
        owner.operation if owner else "",
        owner.subresource if owner else "",
    ]
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def deleted_report(
    intent: Mapping[str, Any], *, app: str, revision: str = "", seen: str = ""
) -> DriftReport:
    """A managed object that is gone: nobody owns a deletion, so the manager is unknown."""
    return DriftReport(
        app=app,
        ref=ObjectRef.of(dict(intent)),
        path=OBJECT_PATH,
        desired=PRESENT_TEXT,
        live=DELETED_TEXT,
        revision=revision,
        seen=seen or now_text(),
        signature=_signature(OBJECT_PATH, PRESENT_TEXT, DELETED_TEXT, None),
    )


def compare(
    intent: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    *,
    app: str,
    revision: str = "",
    ignore: Sequence[IgnoreRule] = (),
    server_desired: Callable[[], Mapping[str, Any] | None] | None = None,
    autoscaled: Callable[[ObjectRef], bool] | None = None,
    changed_by: Sequence[Owner] = (),
    synced_at: str = "",
    expected_managers: frozenset[str] = EXPECTED_MANAGERS,
    seen: str = "",
) -> list[DriftReport]:
    """Drift of one object: each intent path whose live value differs, attributed.

    ``server_desired`` returns the SSA dry-run of the intent; it is called (at most once)
    only when a cheap comparison cannot tell a real change from server normalization.
    ``autoscaled`` is asked only about a drifted ``spec.replicas``. ``changed_by`` are the
    writers of the change being looked at (see ``writers``), used for removed fields,
    which have no owner. ``synced_at`` is when gitsync recorded this intent: an object
    gitsync applied after that is mid-sync, and its ownerless differences are not drift.
    """
    ref = ObjectRef.of(dict(intent))
    seen = seen or now_text()
    if live is None:
        if ignored_by_annotation(intent) or any(rule_matches(r, ref, ()) for r in ignore):
            return []
        if (
            ref.kind == "Job"
            and (intent.get("spec") or {}).get("ttlSecondsAfterFinished") is not None
        ):
            return []  # removed by its own TTL once finished: not drift
        return [deleted_report(intent, app=app, revision=revision, seen=seen)]
    if ignored_by_annotation(intent, live):
        return []
    secret = _is_secret(intent)
    want = secret_as_data(intent) if secret else intent
    candidates = [
        d
        for d in differences(want, live)
        if not any(rule_matches(r, ref, d.parts) for r in ignore)
        and not (d.parts and d.parts[-1] in INJECTED_FIELDS)
    ]
    manager = field_manager(app)
    mid_sync = bool(synced_at) and gitsync_applied_at(live, manager=manager) > synced_at
    attributed = [
        (d, found)
        for d in candidates
        if (
            found := _attribute(
                live, d.parts, changed_by=changed_by, mid_sync=mid_sync, manager=manager
            )
        )
        is not None
    ]
    dry: Mapping[str, Any] | None = None
    if server_desired is not None and not all(_certain(d.desired, d.live) for d, _ in attributed):
        dry = server_desired()
    reports: list[DriftReport] = []
    for d, (owner, attribution) in attributed:
        desired = d.desired
        if dry is not None:
            server_value = resolve(secret_as_data(dry) if secret else dry, d.parts)
            if server_value is not ABSENT:
                if _same(server_value, d.live):
                    continue  # the same value once the server has normalized the intent
                desired = server_value
        if owner is not None and attribution == OWNER and owner.manager in expected_managers:
            continue
        if is_replicas(ref, d.parts) and autoscaled is not None and autoscaled(ref):
            continue
        path = path_text(d.parts)
        masked = secret and d.parts[:1] in (("data",), ("stringData",))
        reports.append(
            DriftReport(
                app=app,
                ref=ref,
                path=path,
                desired=MASK if masked and desired is not ABSENT else _text(desired),
                live=MASK if masked and d.live is not ABSENT else _text(d.live),
                manager=owner.manager if owner else "",
                operation=owner.operation if owner else "",
                subresource=owner.subresource if owner else "",
                time=owner.time if owner else "",
                revision=revision,
                attribution=attribution,
                seen=seen,
                parts=d.parts,
                signature=_signature(
                    path, desired, d.live, owner if attribution == OWNER else None
                ),
            )
        )
    return reports


def _attribute(
    live: Mapping[str, Any],
    parts: FieldPath,
    *,
    changed_by: Sequence[Owner],
    mid_sync: bool,
    manager: str,
) -> tuple[Owner | None, str] | None:
    """Who changed ``parts``, and how we know; None when it is not drift at all."""
    found = owners(live, parts)
    others = [o for o in found if not o.is_gitsync(manager)]
    if found and not others:
        return None  # gitsync still owns it: normalized by the server, or a newer apply
    owner = _newest(others)
    if owner is not None:
        return owner, OWNER
    if mid_sync:
        return None  # gitsync is applying a newer intent; its state will catch up
    owner = _newest(changed_by)
    return owner, WRITER if owner else UNKNOWN


def _text(value: Any) -> Any:
    return ABSENT_TEXT if value is ABSENT else value


__all__ = [
    "ABSENT",
    "EXPECTED_MANAGERS",
    "DriftReport",
    "DriftSet",
    "Item",
    "Owner",
    "compare",
    "deleted_report",
    "differences",
    "hpa_targets",
    "merge_key",
    "owners",
    "path_text",
    "pointer_parts",
    "rule_matches",
    "writers",
]
