"""Read ``metadata.managedFields`` (fieldsV1): which paths a field manager owns.

Projecting an object onto the paths gitsync owns gives a fingerprint that changes when,
and only when, someone changes (or takes over) a field gitsync applied; status writes and
fields other controllers own never move it. The sync fast path and drift use this.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gitsync.model import FIELD_MANAGER, KubeObject

FieldsV1 = dict[str, Any]


def apply_entry(obj: KubeObject, manager: str = FIELD_MANAGER) -> dict[str, Any] | None:
    """``manager``'s managedFields entry for Apply on the main resource, if any."""
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if is_apply_of(entry, manager):
            found: dict[str, Any] = entry
            return found
    return None


def managed_entry(obj: KubeObject, manager: str = FIELD_MANAGER) -> FieldsV1 | None:
    """The fieldsV1 ``manager`` owns through Apply on the main resource, if any."""
    entry = apply_entry(obj, manager)
    if entry is None:
        return None
    fields: FieldsV1 = entry.get("fieldsV1") or {}
    return fields


def _matches(item: Any, key: dict[str, Any]) -> bool:
    return isinstance(item, dict) and all(item.get(k) == v for k, v in key.items())


def project(value: Any, fields: FieldsV1) -> Any:
    """The part of ``value`` that ``fields`` names (missing parts are simply absent)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in fields.items():
            if key.startswith("f:"):
                name = key[2:]
                if name in value:
                    out[name] = project(value[name], sub) if sub else value[name]
        return out
    if isinstance(value, list):
        items: list[Any] = []
        for key, sub in fields.items():
            if key.startswith("k:"):
                want = json.loads(key[2:])
                hit = next((it for it in value if _matches(it, want)), None)
                items.append([key, None if hit is None else project(hit, sub) if sub else hit])
            elif key.startswith("v:"):
                want_v = json.loads(key[2:])
                items.append([key, want_v if want_v in value else None])
            elif key.startswith("i:"):
                idx = int(key[2:])
                items.append([key, project(value[idx], sub) if idx < len(value) else None])
        return sorted(items, key=lambda kv: kv[0])
    return value


def fingerprint(obj: KubeObject, manager: str = FIELD_MANAGER) -> str:
    """Hash of ``obj`` projected on the fields ``manager`` owns; "" if it owns none."""
    fields = managed_entry(obj, manager)
    if not fields:
        return ""
    if obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1" and "f:stringData" in fields:
        # stringData is write-only: the server folds it into data and never returns it, so
        # owning f:stringData.f:key means owning the value at data.key.
        written: FieldsV1 = {k: {} for k in fields["f:stringData"] if k.startswith("f:")}
        fields = merge_fields(fields, {"f:data": written})
    # fieldsV1 itself is part of the print: losing ownership of a field is a change too.
    payload = [fields, project(obj, fields)]
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def content_hash(obj: Any) -> str:
    """Stable hash of a desired manifest."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


# Managers whose ownership gitsync takes over when it adopts an object: client-side
# `kubectl apply`, and objects created before managedFields existed.
CLIENT_SIDE_MANAGERS = frozenset({"kubectl-client-side-apply", "before-first-apply"})


def merge_fields(a: FieldsV1, b: FieldsV1) -> FieldsV1:
    """Union of two fieldsV1 sets."""
    out = dict(a)
    for key, sub in b.items():
        out[key] = merge_fields(out[key], sub) if key in out and sub else out.get(key, sub)
    return out


def upgraded_managed_fields(obj: KubeObject, manager: str = FIELD_MANAGER) -> list[Any] | None:
    """managedFields with client-side-apply ownership moved to ``manager``'s Apply entry.

    Without this, fields an earlier `kubectl apply` (client-side) set stay owned by
    ``kubectl-client-side-apply`` and a later server-side apply that drops them from Git
    never removes them: the equivalent of client-go's csaupgrade. The shared ``gitsync``
    manager of older releases is migrated the same way, so no field stays owned by a
    manager nobody uses. None: nothing to do.
    """
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    csa = [
        e
        for e in entries
        if (
            e.get("manager") in CLIENT_SIDE_MANAGERS
            and e.get("operation") == "Update"
            and not e.get("subresource")
        )
        # The shared manager of releases before per-app managers: nobody applies as it now.
        or (manager != FIELD_MANAGER and is_apply_of(e, FIELD_MANAGER))
    ]
    if not csa:
        return None
    mine = managed_entry(obj, manager) or {}
    for entry in csa:
        mine = merge_fields(mine, entry.get("fieldsV1") or {})
    kept = [e for e in entries if e not in csa and not is_apply_of(e, manager)]
    template = csa[0]
    upgraded = {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": template.get("apiVersion"),
        "time": template.get("time"),
        "fieldsType": "FieldsV1",
        "fieldsV1": mine,
    }
    return [*kept, upgraded]


def is_apply_of(entry: dict[str, Any], manager: str) -> bool:
    return (
        entry.get("manager") == manager
        and entry.get("operation") == "Apply"
        and not entry.get("subresource")
    )
