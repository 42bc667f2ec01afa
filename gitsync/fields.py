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


def managed_entry(obj: KubeObject, manager: str = FIELD_MANAGER) -> FieldsV1 | None:
    """The fieldsV1 ``manager`` owns through Apply on the main resource, if any."""
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            fields: FieldsV1 = entry.get("fieldsV1") or {}
            return fields
    return None


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
    # fieldsV1 itself is part of the print: losing ownership of a field is a change too.
    payload = [fields, project(obj, fields)]
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def content_hash(obj: Any) -> str:
    """Stable hash of a desired manifest."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
