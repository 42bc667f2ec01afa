"""Fields gitsync leaves to others: never reported as drift, never reverted by a sync.

Drift and sync read the same rules, as Argo CD's RespectIgnoreDifferences does: the
app's ``ignore`` rules, ``spec.replicas`` of a workload an HPA scales, and fields that a
known controller (see ``drift_compare.EXPECTED_MANAGERS``) owns on the live object. They
apply once an object exists: a create still sends the whole manifest.

Sync leaves a field alone by not sending it. Server-side apply removes a field its manager
stops sending, so gitsync first gives up its own claim on such a field (see
``release``), and the value stays with whoever set it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from gitsync.config import IgnoreRule
from gitsync.drift.compare import (
    EXPECTED_MANAGERS,
    SCALABLE,
    FieldPath,
    Item,
    merge_key,
    rule_matches,
)
from gitsync.fields import FieldsV1, is_apply_of, managed_entry
from gitsync.model import KubeObject, ObjectRef

REPLICAS: FieldPath = ("spec", "replicas")
# What names the object is always sent, whatever a rule says.
_IDENTITY = frozenset({("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")})


def leaves(value: Any, parts: FieldPath = ()) -> Iterator[FieldPath]:
    """Every leaf path a manifest sets (list items by merge key, atomic lists whole)."""
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from leaves(sub, (*parts, key))
        return
    if isinstance(value, list) and value:
        name = next((p for p in reversed(parts) if isinstance(p, str)), "")
        keys = merge_key(name, value)
        if keys:
            for index, item in enumerate(value):
                yield from leaves(item, (*parts, Item(tuple((k, item[k]) for k in keys), index)))
            return
    yield parts


def _within(path: FieldPath, owned: FieldsV1) -> bool:
    """Whether a fieldsV1 set covers ``path`` (itself or an ancestor as a leaf)."""
    node: Mapping[str, Any] = owned
    for part in path:
        key = _field_key(node, part)
        if key is None:
            return False
        child = node[key]
        if not child:
            return True
        node = child
    return True


def _field_key(node: Mapping[str, Any], part: str | Item) -> str | None:
    """The fieldsV1 key under ``node`` for one path part: ``f:name`` or a list item's
    ``k:{...}`` merge key."""
    if isinstance(part, Item):
        return next((k for k in node if k.startswith("k:") and _key_is(k, part)), None)
    return f"f:{part}" if f"f:{part}" in node else None


def _key_is(key: str, item: Item) -> bool:
    try:
        want = json.loads(key[2:])
    except ValueError:
        return False
    return isinstance(want, dict) and want == dict(item.key)


def controller_owned(intent: KubeObject, live: KubeObject) -> list[FieldPath]:
    """Leaves of ``intent`` that a known controller owns on ``live``."""
    owned: list[FieldsV1] = [
        e["fieldsV1"]
        for e in (live.get("metadata") or {}).get("managedFields") or []
        if e.get("manager") in EXPECTED_MANAGERS
        and e.get("subresource") != "status"
        and isinstance(e.get("fieldsV1"), dict)
    ]
    if not owned:
        return []
    return [p for p in leaves(intent) if any(_within(p, f) for f in owned)]


def skipped(
    intent: KubeObject,
    live: KubeObject | None,
    *,
    rules: Sequence[IgnoreRule] = (),
    autoscaled: bool = False,
) -> tuple[FieldPath, ...]:
    """The paths of ``intent`` a sync must not send to the existing ``live`` object."""
    if live is None:
        return ()
    ref = ObjectRef.of(intent)
    out: list[FieldPath] = []
    if (
        autoscaled
        and (ref.group, ref.kind) in SCALABLE
        and "replicas" in (intent.get("spec") or {})
    ):
        out.append(REPLICAS)
    if rules:
        out.extend(p for p in leaves(intent) if any(rule_matches(r, ref, p) for r in rules))
    out.extend(controller_owned(intent, live))
    return tuple(dict.fromkeys(p for p in out if p and p not in _IDENTITY))


def without(obj: KubeObject, paths: Sequence[FieldPath]) -> KubeObject:
    """A copy of ``obj`` with each path removed (emptied parents removed too)."""
    out = copy.deepcopy(obj)
    for path in paths:
        _remove(out, list(path))
    return out


def _remove(node: Any, path: list[str | Item]) -> bool:
    """Remove ``path`` under ``node``; True if ``node`` is now empty."""
    head, rest = path[0], path[1:]
    if isinstance(head, Item):
        if not isinstance(node, list):
            return False
        for i, item in enumerate(node):
            if head.matches(item):
                if not rest or _remove(item, rest):
                    del node[i]
                break
        return not node
    if not isinstance(node, dict) or head not in node:
        return False
    if not rest or _remove(node[head], rest):
        del node[head]
    return not node


def release(live: KubeObject, manager: str, paths: Sequence[FieldPath]) -> list[Any] | None:
    """``live``'s managedFields with ``manager``'s Apply claim on ``paths`` removed, or None
    when it claims none of them (nothing to patch)."""
    mine = managed_entry(live, manager)
    if not mine or not any(_within(p, mine) for p in paths):
        return None
    fields = copy.deepcopy(mine)
    for path in paths:
        _unclaim(fields, list(path))
    return [
        {**e, "fieldsV1": fields} if is_apply_of(e, manager) else e
        for e in (live.get("metadata") or {}).get("managedFields") or []
    ]


def _unclaim(node: dict[str, Any], path: list[str | Item]) -> bool:
    head, rest = path[0], path[1:]
    key = _field_key(node, head)
    if key is None:
        return False
    child = node[key]
    if not rest or not child or _unclaim(child, rest):
        del node[key]
    # "." marks the item itself as owned: alone, it no longer claims anything below.
    return not node or set(node) == {"."}
