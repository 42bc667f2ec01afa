"""Untrusted YAML and JSON text → plain Python values, each with the line it came from.

``yaml.safe_load`` is not safe enough for text from a repository: libyaml's composer
recurses in C and crashes the whole process on deeply nested input, aliases can expand
a small file into billions of nodes (billion laughs), duplicate keys silently keep the
last value, and the nodes' lines are gone by the time there is a dict to complain about.
So documents are composed here from libyaml's *event* stream, iteratively:

- every node keeps its line (``line_at`` finds the line of any path in a document);
- aliases and the nodes they add are counted, and nesting depth capped, before anything
  is built (``ReadLimits``);
- a key twice in one mapping is refused, as kubectl refuses it;
- plain scalars resolve the way kubectl (go-yaml) reads them: YAML 1.1 booleans, ints
  and floats, but timestamps and ``12:30`` stay strings;
- every alias use builds fresh dicts and lists, so no two places share a mutable value.

Which documents a file holds follows kubectl's reader: a file starting with ``{`` is a
stream of JSON values, empty, comment-only and ``null`` documents are no objects, and
``flatten_list`` turns a ``List`` or typed ``<Kind>List`` into its items.

Every problem is a ``ReadError`` with the line (1-based) it was found at; callers put
their file name in front of it.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

__all__ = [
    "MAX_DEPTH",
    "Document",
    "Node",
    "ReadError",
    "ReadLimits",
    "compose_all",
    "construct",
    "flatten_list",
    "gc_paused",
    "is_list",
    "line_at",
    "read_documents",
    "read_first",
]

#: The deepest ``ReadLimits.max_depth`` allowed: ``construct`` recurses once per level,
#: and must stay well under Python's recursion limit.
MAX_DEPTH = 400


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadLimits:
    """Bounds on one document: how many aliases, how much they add, how deep it nests."""

    max_aliases: int = 100  # alias nodes per YAML document
    max_alias_nodes: int = 100_000  # nodes that alias uses add to one document
    max_depth: int = 200  # nesting of one document

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= MAX_DEPTH:
            msg = f"ReadLimits.max_depth must be between 1 and {MAX_DEPTH}, not {self.max_depth}"
            raise ValueError(msg)


class ReadError(Exception):
    """A problem at a line of the text being read."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(message)


_SCALAR, _SEQ, _MAP = 0, 1, 2
_TAG = "tag:yaml.org,2002:"
_MAP_TAG, _SEQ_TAG = _TAG + "map", _TAG + "seq"


@dataclass(slots=True)
class Node:
    """A composed YAML node; aliases are the same ``Node`` reached twice."""

    kind: int
    line: int
    value: Any  # a Python scalar | list[Node] | list[tuple[Node, Node]]
    merge: bool = False  # a plain ``<<`` key
    size: int = 1  # nodes after expanding aliases
    height: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """One object of a file, and where it starts."""

    value: Any
    line: int
    # For ``line_at``: YAML keeps the composed node; JSON a skeleton of the top-level
    # keys and the ``items`` elements, enough for list items' lines.
    node: Node | None = None


def read_documents(text: str, limits: ReadLimits, *, json_file: bool = False) -> list[Document]:
    """The documents of one file as kubectl's reader splits them; empty and null ones dropped.

    Like kubectl, the content decides the format, not the name: text that starts with
    ``{`` is a stream of JSON values, anything else is YAML. A ``.yaml`` file whose JSON
    does not parse is read again as YAML (a flow mapping is valid YAML); a ``.json`` file
    keeps the JSON error. Lists are left whole: ``flatten_list`` expands them.
    """
    with gc_paused():
        if text.lstrip()[:1] == "{":
            try:
                return _json_docs(text, limits)
            except ReadError:
                if json_file:
                    raise
        docs: list[Document] = []
        for root in compose_all(text, limits):
            obj = construct(root)
            if obj is not None:
                docs.append(Document(value=obj, line=root.line, node=root))
        return docs


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a file is parsed.

    Parsing makes a tree of small objects that all stay alive, so each collection
    rescans a growing heap and frees nothing: that was half the time of a 5 MB render.
    Nested and concurrent users are counted; the last one out restores the collector.
    """
    global _gc_pausers, _gc_was_enabled  # noqa: PLW0603 - one process-wide switch
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def read_first(text: str, limits: ReadLimits, *, only: bool = False) -> tuple[Any, Node | None]:
    """The first document's value and root node, (None, None) when there is none.

    Every document is composed, so a problem in a later one is still an error; with
    ``only``, a second document is one too.
    """
    roots = list(compose_all(text, limits))
    if only and len(roots) > 1:
        raise ReadError(roots[1].line, "a second YAML document starts here; expected only one.")
    return (construct(roots[0]), roots[0]) if roots else (None, None)


# --------------------------------------------------------------------------- lists


def is_list(value: Any) -> bool:
    """A ``List`` or typed ``<Kind>List`` (``ConfigMapList``) that holds ``items``.

    kubectl takes any object with ``items`` for a list; only kinds named ``...List`` are
    taken here, so a custom resource with a top-level ``items`` field stays one object.
    """
    if not isinstance(value, dict) or "items" not in value:
        return False
    kind = value.get("kind")
    return isinstance(kind, str) and kind.endswith("List")


def flatten_list(doc: Document) -> tuple[list[Document], list[ReadError]]:
    """A list's items as documents of their own, each at its own line; else ``[doc]``.

    As kubectl does: items of a typed list (``RoleList``) that name neither kind nor
    apiVersion get ``Role`` and the list's apiVersion; ``items: null`` is an empty list;
    a list inside a list is refused, because kubectl refuses it too.
    """
    obj = doc.value
    if not is_list(obj):
        return [doc], []
    kind: str = obj["kind"]
    items = obj["items"]
    items_node = _child(doc.node, "items")
    if items is None:
        return [], []
    if not isinstance(items, list):
        line = items_node.line if items_node is not None else doc.line
        return [], [ReadError(line, f"the {kind}'s items must be a sequence of objects.")]
    item_kind = kind.removesuffix("List")
    api_version = obj.get("apiVersion")
    out: list[Document] = []
    errors: list[ReadError] = []
    for i, item in enumerate(items):
        node = _child(items_node, i)
        line = node.line if node is not None else doc.line
        value = item
        if isinstance(item, dict):
            if item_kind and not item.get("kind") and not item.get("apiVersion"):
                rest = {k: v for k, v in item.items() if k not in ("apiVersion", "kind")}
                value = {"apiVersion": api_version, "kind": item_kind, **rest}
            if is_list(value):
                errors.append(
                    ReadError(
                        line,
                        f"a {value['kind']} inside a {kind}: kubectl does not apply nested "
                        "lists either; put its items in the outer list or a document of "
                        "their own.",
                    )
                )
                continue
        out.append(Document(value=value, line=line, node=node))
    return out, errors


# --------------------------------------------------------------------------- JSON


def _json_docs(text: str, limits: ReadLimits) -> list[Document]:
    """A stream of JSON values, as kubectl's decoder reads a file that starts with ``{``."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    lines = _LineIndex(text)
    docs: list[Document] = []
    end = len(text)
    i = _skip_ws(text, 0)
    while i < end:
        line = lines.line(i)
        try:
            obj, after = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ReadError(e.lineno, f"JSON syntax error: {e.msg} (column {e.colno}).") from e
        except ReadError as e:
            raise ReadError(line, e.message) from e
        except RecursionError as e:
            raise ReadError(line, "the JSON is nested too deeply.") from e
        if _deeper_than(obj, limits.max_depth):
            raise ReadError(
                line, f"the document is nested more than {limits.max_depth} levels deep."
            )
        if obj is not None:
            node = _json_skeleton(text, i, decoder, lines) if isinstance(obj, dict) else None
            docs.append(Document(value=obj, line=line, node=node))
        i = _skip_ws(text, after)
    return docs


# The C string scanner the json module itself uses (typeshed does not declare it).
_scanstring: Callable[[str, int], tuple[str, int]] = getattr(json.decoder, "scanstring")  # noqa: B009

_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return match.end() if match else i


@dataclass(slots=True)
class _LineIndex:
    """Offset → 1-based line, by bisecting the newline offsets (found once)."""

    text: str
    newlines: list[int] | None = None

    def line(self, offset: int) -> int:
        if self.newlines is None:
            self.newlines = [m.start() for m in re.finditer("\n", self.text)]
        return bisect.bisect_left(self.newlines, offset) + 1


def _json_skeleton(text: str, start: int, decoder: json.JSONDecoder, lines: _LineIndex) -> Node:
    """Lines of an object's top-level keys and of each element of its ``items`` array.

    Only as deep as ``flatten_list`` and error messages need: the values themselves
    come from ``json``. The text is known to be valid JSON here.
    """
    pairs: list[tuple[Node, Node]] = []
    i = _skip_ws(text, start + 1)
    while text[i] == '"':
        key_line = lines.line(i)
        key, i = _scanstring(text, i + 1)
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # past the colon
        value_node = Node(kind=_SCALAR, line=lines.line(i), value=None)
        if key == "items" and text[i] == "[":
            value_node = Node(kind=_SEQ, line=lines.line(i), value=[])
            i = _skip_ws(text, i + 1)
            while text[i] != "]":
                value_node.value.append(Node(kind=_MAP, line=lines.line(i), value=[]))
                _, i = decoder.raw_decode(text, i)
                i = _skip_ws(text, i)
                if text[i] == ",":
                    i = _skip_ws(text, i + 1)
            i += 1
        else:
            _, i = decoder.raw_decode(text, i)
        pairs.append((Node(kind=_SCALAR, line=key_line, value=key), value_node))
        i = _skip_ws(text, i)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return Node(kind=_MAP, line=lines.line(start), value=pairs)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ReadError(0, f"the key {key!r} appears twice in one JSON object.")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ReadError(0, f"{name} is not valid JSON and cannot be sent to the API server.")


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


def compose_all(text: str, limits: ReadLimits) -> Iterator[Node]:
    """Root node of each document; raises ReadError with the line of a syntax error."""
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
        raise ReadError(line, f"YAML syntax error: {what}.") from e
    except yaml.YAMLError as e:
        raise ReadError(1, f"YAML error: {e}.") from e
    finally:
        events.dispose()


@dataclass(slots=True)
class _Open:
    node: Node
    anchor: str | None
    key: Node | None = None  # mappings: the key waiting for its value
    keys: dict[str, int] = field(default_factory=dict)  # mappings: key → line, for duplicates


def _compose(events: Any, limits: ReadLimits) -> Node:
    """One document's node graph, built iteratively with alias and depth limits."""
    return _Composer(events=events, limits=limits).document()


@dataclass(slots=True, kw_only=True)
class _Composer:
    events: Any
    limits: ReadLimits
    anchors: dict[str, Node] = field(default_factory=dict)
    stack: list[_Open] = field(default_factory=list)
    aliases: int = 0
    alias_nodes: int = 0

    def document(self) -> Node:  # noqa: PLR0912 - the hot loop, inlined on purpose
        # The hot loop of render: one pass per event, so the common cases (plain and
        # quoted strings, string keys) are handled inline rather than in calls.
        get_event = self.events.get_event
        stack = self.stack
        while True:
            event = get_event()
            cls = type(event)
            if cls is yaml.ScalarEvent:
                line = event.start_mark.line + 1
                value = event.value
                if event.tag is None and (
                    not event.implicit[0] or (value and value[0] not in _NOT_PLAIN_TEXT)
                ):
                    node = Node(_SCALAR, line, value)
                else:
                    node = _scalar(event, line)
                if event.anchor:
                    self.anchors[event.anchor] = node
            elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                self._open(event, event.start_mark.line + 1)
                continue
            elif cls is yaml.AliasEvent:
                node = self._alias(str(event.anchor), event.start_mark.line + 1)
            else:  # SequenceEnd / MappingEnd
                node = self._close()
            if not stack:
                return node
            top = stack[-1]
            parent = top.node
            parent.size += node.size
            if node.height >= parent.height:
                parent.height = node.height + 1
            if parent.kind == _SEQ:
                parent.value.append(node)
            elif top.key is None:
                name = node.value
                if node.kind == _SCALAR and type(name) is str and not node.merge:
                    first = top.keys.get(name)
                    if first is not None:
                        _duplicate(name, node.line, first)
                    top.keys[name] = node.line
                else:
                    _check_key(node, top)
                top.key = node
            else:
                parent.value.append((top.key, node))
                top.key = None

    def _alias(self, anchor: str, line: int) -> Node:
        target = self.anchors.get(anchor)
        if target is None and any(o.anchor == anchor for o in self.stack):
            raise ReadError(line, f"the alias *{anchor} refers to a node that contains it.")
        if target is None:
            raise ReadError(line, f"the alias *{anchor} has no anchor defined before it.")
        self.aliases += 1
        self.alias_nodes += target.size
        if self.aliases > self.limits.max_aliases:
            raise ReadError(
                line,
                f"the document uses more than {self.limits.max_aliases} aliases; "
                "refusing it as a possible alias bomb.",
            )
        if self.alias_nodes > self.limits.max_alias_nodes:
            raise ReadError(
                line,
                f"aliases expand the document by more than {self.limits.max_alias_nodes} "
                "nodes; refusing it as an alias bomb.",
            )
        if len(self.stack) + target.height > self.limits.max_depth:
            raise ReadError(line, f"the document nests more than {self.limits.max_depth} levels.")
        return target

    def _open(self, event: Any, line: int) -> None:
        if len(self.stack) >= self.limits.max_depth:
            raise ReadError(line, f"the document nests more than {self.limits.max_depth} levels.")
        is_map = type(event) is yaml.MappingStartEvent
        tag = event.tag
        if tag is not None and tag not in ("!", _MAP_TAG if is_map else _SEQ_TAG):
            raise ReadError(line, f"the YAML tag {tag} is not supported in manifests.")
        # Positional: this runs once per mapping and sequence of every document.
        self.stack.append(_Open(Node(_MAP if is_map else _SEQ, line, []), event.anchor, None, {}))

    def _close(self) -> Node:
        done = self.stack.pop()
        node = done.node  # its size and height were counted as its children were attached
        # Anchors are registered when complete, so an alias can never point into the
        # node that contains it: no cycles.
        if done.anchor:
            self.anchors[done.anchor] = node
        return node


def _check_key(key: Node, parent: _Open) -> None:
    if key.kind != _SCALAR:
        raise ReadError(key.line, "a mapping key is a collection; keys must be plain scalars.")
    if key.merge:
        return
    name = _key_text(key.value)
    first = parent.keys.get(name)
    if first is not None:
        _duplicate(name, key.line, first)
    parent.keys[name] = key.line


def _duplicate(name: str, line: int, first: int) -> NoReturn:
    raise ReadError(
        line,
        f"the key {name!r} appears twice in one mapping (first at line {first}); "
        "kubectl refuses this too.",
    )


def _key_text(value: Any) -> str:
    """Keys as kubectl (sigs.k8s.io/yaml) turns them into JSON: ``8080`` → ``"8080"``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _scalar(event: Any, line: int) -> Node:
    value: str = event.value
    tag = event.tag
    plain = tag is None and event.implicit[0]
    if plain and value == "<<":
        return Node(kind=_SCALAR, line=line, value=value, merge=True)
    if tag in (None, "!"):
        tag = None if plain else _TAG + "str"
    try:
        return Node(kind=_SCALAR, line=line, value=_scalar_value(value, tag))
    except ValueError as e:
        raise ReadError(line, str(e)) from e


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
# ... or the merge key ``<<``: plain scalars starting otherwise are text as they are.
_NOT_PLAIN_TEXT = _IMPLICIT_FIRST | {"<"}
_IMPLICIT: tuple[tuple[str, re.Pattern[str], Callable[[str], Any]], ...] = (
    ("null", _NULL, lambda _: None),
    ("bool", _TRUE, lambda _: True),
    ("bool", _FALSE, lambda _: False),
    ("int", _INT, _int),
    ("float", _FLOAT, _float),
)


def construct(node: Node) -> Any:
    """Python values, fresh for every alias use so no two places share a dict."""
    if node.kind == _SCALAR:
        return node.value
    if node.kind == _SEQ:
        return [c.value if c.kind == _SCALAR else construct(c) for c in node.value]
    merged: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in node.value:
        if not key.merge and type(key.value) is str:
            own[key.value] = value.value if value.kind == _SCALAR else construct(value)
            continue
        if key.merge:
            sources = value.value if value.kind == _SEQ else [value]
            for source in sources:
                if source.kind != _MAP:
                    raise ReadError(
                        value.line, "a merge key (<<) needs a mapping or a list of them."
                    )
                for k, v in construct(source).items():
                    merged.setdefault(k, v)  # earlier sources win, as in YAML 1.1
            continue
        own[_key_text(key.value)] = construct(value)
    return {**merged, **own} if merged else own


def _child(node: Node | None, key: str | int) -> Node | None:
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


def line_at(node: Node | None, *path: str | int) -> int | None:
    """The line of the node at ``path`` (mapping keys and sequence indexes) under ``node``."""
    for key in path:
        node = _child(node, key)
    return node.line if node is not None else None
