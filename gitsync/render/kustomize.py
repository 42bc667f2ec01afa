"""Kustomize: find an app's kustomization, check it stays in the repository, build it.

The repository is not trusted, and kustomize would happily read any path it is given
and fetch remote bases. So before kustomize runs, every kustomization reachable from the
app is read here and each path it names (resources, patches, generator files, …) must
resolve inside the repository and exist; remote URLs are refused. kustomize then runs
with ``LoadRestrictionsRootOnly``, no plugins or exec functions, a timeout, and its
output capped. Helm is enabled only for a kustomization with ``helmCharts`` whose charts
are all in the repository (``helm.check_helm_charts``), and then offline. When the
kustomization asks for origin annotations, each object is traced back to the
``file:line`` it came from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gitsync.render import helm
from gitsync.render.helm import check_helm_charts, map_hooks, offline_env
from gitsync.render.repofiles import decode, read_bytes, relative
from gitsync.render.yamlread import (
    Document,
    ReadError,
    compose_all,
    construct,
    flatten_list,
    gc_paused,
    line_at,
    read_documents,
    read_first,
)

__all__ = [
    "DEFAULT_KUSTOMIZE",
    "KUSTOMIZATION_FILES",
    "ORIGIN_ANNOTATION",
    "Limits",
    "build_kustomization",
    "default_command",
    "kustomization_file",
]

DEFAULT_KUSTOMIZE: tuple[str, ...] = ("kubectl", "kustomize")


def default_command() -> tuple[str, ...]:
    """A standalone ``kustomize`` (the image pins one) if on PATH, else ``kubectl kustomize``."""
    found = shutil.which("kustomize")
    return (found, "build") if found else DEFAULT_KUSTOMIZE


KUSTOMIZATION_FILES: tuple[str, ...] = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ORIGIN_ANNOTATION = "config.kubernetes.io/origin"


class Limits(helm.Limits, Protocol):
    """What building a kustomization is bounded by (``RenderLimits`` provides it): a
    chart's bounds (``helmCharts:`` inflates charts), and kustomize's own run. File and
    total sizes also bound each kustomization file and what kustomize prints."""

    @property
    def kustomize_timeout(self) -> float:
        """Seconds kustomize may run."""
        ...


def kustomization_file(directory: Path) -> Path | None:
    """The kustomization file in ``directory``, if it has one."""
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


def build_kustomization(
    app: Path,
    *,
    kustomization: Path,
    repo: Path,
    command: list[str],
    limits: Limits,
    problems: list[str],
    helm_command: str | None = None,
) -> list[tuple[str, Any]]:
    """(source, object) for every object ``kustomize build`` prints for ``app``.

    With ``helmCharts``, kustomize inflates the charts with ``helm_command``, and their
    hooks become waves as for a chart app.

    The source is ``file:line`` when the kustomization asks for origin annotations and
    the object can be found in its file, else the kustomization and the document number.
    """
    uses_helm = _check_kustomizations(app, repo, limits, problems)
    shown = relative(kustomization, repo)
    if uses_helm and helm_command is None:
        problems.append(
            f"{shown}:1: the kustomization inflates helmCharts, but no helm command was found "
            "on PATH; install Helm v3 (the gitsync image has it)."
        )
    if problems:
        return []  # never run kustomize on a tree that reaches outside the repository
    text = _run_kustomize(
        command, app, shown, limits, problems, helm=helm_command if uses_helm else None
    )
    if text is None:
        return []
    try:
        with gc_paused():
            roots = list(compose_all(text, limits.reader))
    except ReadError as e:
        problems.append(
            f"{shown}:1: kustomize printed unreadable YAML (line {e.line}): {e.message}"
        )
        return []
    docs: list[tuple[str, Any]] = []
    number = 0
    origins = _OriginIndex(app=app, repo=repo, limits=limits)
    for root in roots:
        try:
            obj = construct(root)
        except ReadError as e:
            problems.append(f"{shown}:1: kustomize output line {e.line}: {e.message}")
            continue
        if obj is None:
            continue
        number += 1
        where = f"{shown} (kustomize output doc {number})"
        items, errors = flatten_list(Document(value=obj, line=1))
        problems.extend(f"{where}: {e.message}" for e in errors)
        for item in items:
            docs.append((origins.source(item.value) or where, item.value))
    return map_hooks(docs) if uses_helm else docs


def _check_kustomizations(app: Path, repo: Path, limits: Limits, problems: list[str]) -> bool:
    """Every path any reachable kustomization names stays inside ``repo``, no remote URLs.

    Returns whether any of them inflates Helm charts.
    """
    uses_helm = False
    queue = [app]
    seen: set[Path] = set()
    while queue:
        directory = queue.pop(0)
        if directory in seen:
            continue
        seen.add(directory)
        kfile = kustomization_file(directory)
        if kfile is None:
            continue
        shown = relative(kfile, repo)
        if not Path(os.path.realpath(kfile)).is_relative_to(repo):
            problems.append(f"{shown}:1: the kustomization is a symlink to outside the repository.")
            continue
        data = read_bytes(kfile, shown, limits.max_file_bytes, problems)
        text = decode(data, shown, problems) if data is not None else None
        if text is None:
            continue
        try:
            spec, root = read_first(text, limits.reader)
        except ReadError as e:
            problems.append(f"{shown}:{e.line}: {e.message}")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{shown}:1: a kustomization must be a mapping.")
            continue
        uses_helm |= check_helm_charts(
            spec,
            root,
            directory=directory,
            repo=repo,
            shown=shown,
            limits=limits,
            problems=problems,
        )
        for where, entry, field_name in _kustomization_paths(spec):
            line = line_at(root, *where) or line_at(root, where[0]) or 1
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
    return uses_helm


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
    command: list[str],
    app: Path,
    shown: str,
    limits: Limits,
    problems: list[str],
    *,
    helm: str | None = None,
) -> str | None:
    # Plugins and exec functions stay off: those flags are never passed. Helm only for
    # checked helmCharts, offline, in a private home.
    flags = ["--enable-helm", "--helm-command", helm] if helm else []
    argv = [*command, "--load-restrictor", "LoadRestrictionsRootOnly", *flags, str(app)]
    # Output goes to a file so a runaway build cannot fill memory before the size check.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as home:
        try:
            proc = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                timeout=limits.kustomize_timeout,
                check=False,
                env=offline_env(Path(home)) if helm else None,
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
        return decode(out.read(), f"{shown} (kustomize output)", problems)


@dataclass(slots=True)
class _OriginIndex:
    """Maps kustomize's origin annotation back to ``file:line`` in the repository.

    Only used when the kustomization itself asks for ``buildMetadata: [originAnnotations]``;
    render never adds it, because it would then end up on the live objects.
    """

    app: Path
    repo: Path
    limits: Limits
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
            origin, _ = read_first(origin_text, self.limits.reader)
        except ReadError:
            return None
        if not isinstance(origin, dict):
            return None
        if isinstance(origin.get("path"), str):
            path = Path(os.path.realpath(self.app / origin["path"]))
            if not path.is_relative_to(self.repo):
                return None
            line = self._line(path, obj)
            shown = relative(path, self.repo)
            return f"{shown}:{line}" if line else f"{shown} (via kustomize)"
        configured_in, by = origin.get("configuredIn"), origin.get("configuredBy")
        if isinstance(configured_in, str):
            path = Path(os.path.realpath(self.app / configured_in))
            kind = by.get("kind") if isinstance(by, dict) else None
            generated = f" ({kind})" if isinstance(kind, str) else ""
            return f"{relative(path, self.repo)}{generated}"
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
        data = read_bytes(path, "", self.limits.max_file_bytes, problems)
        text = decode(data, "", problems) if data is not None else None
        if text is None:
            return []
        try:
            docs = read_documents(text, self.limits.reader, json_file=path.suffix == ".json")
        except ReadError:
            return []
        index = []
        for doc in (item for whole in docs for item in flatten_list(whole)[0]):
            if isinstance(doc.value, dict):
                meta = doc.value.get("metadata")
                name = meta.get("name") if isinstance(meta, dict) else None
                index.append((str(doc.value.get("kind")), str(name or ""), doc.line))
        return index
