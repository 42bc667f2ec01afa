"""Helm charts: check a chart is whole and inside the repository, run ``helm template``.

A render must depend only on the commit. So before Helm runs, the chart is checked here:
every dependency of ``Chart.yaml`` must be vendored in its ``charts/`` directory (a remote
``repository:`` that is not is refused; ``helm dependency build`` never runs), no symlink
leads out of the repository, and values files are repository paths, read and parsed here.
Helm then runs offline: a private, empty ``HELM_*`` home (never the user's config,
repositories or plugins), no kubeconfig, a proxy that goes nowhere, a timeout, and its
output capped.

Each printed object is traced back to the chart file its ``# Source:`` comment names,
at the line of that template's ``kind:`` when it can be found. Hooks become waves
(``map_hook``): Helm runs them around an install or upgrade, gitsync applies them in
order with everything else.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from gitsync.model import RECREATE_ANNOTATION, WAVE_ANNOTATION
from gitsync.render.repofiles import decode, read_bytes, relative
from gitsync.render.yamlread import (
    Document,
    ReadError,
    ReadLimits,
    flatten_list,
    line_at,
    read_documents,
    read_first,
)

__all__ = [
    "CHART_FILE",
    "FOUNDATION_WAVE",
    "HOOK_ANNOTATION",
    "HOOK_DELETE_ANNOTATION",
    "HOOK_JOB_TTL",
    "HOOK_WEIGHT_ANNOTATION",
    "POST_HOOK_WAVE",
    "PRE_HOOK_WAVE",
    "HelmSettings",
    "Limits",
    "check_helm_charts",
    "check_path",
    "default_command",
    "error_problems",
    "foundations_first",
    "is_chart",
    "map_hook",
    "map_hooks",
    "offline_env",
    "read_output",
    "template_chart",
]

log = structlog.get_logger("gitsync")

CHART_FILE = "Chart.yaml"
HOOK_ANNOTATION = "helm.sh/hook"
HOOK_WEIGHT_ANNOTATION = "helm.sh/hook-weight"
HOOK_DELETE_ANNOTATION = "helm.sh/hook-delete-policy"
#: Pre-install/pre-upgrade hooks go in wave ``PRE_HOOK_WAVE + weight``, post hooks in
#: ``POST_HOOK_WAVE + weight``; weights are clamped to ±999 so pre stays below 0, post above.
PRE_HOOK_WAVE = -1000
POST_HOOK_WAVE = 1000
_MAX_WEIGHT = 999
#: Namespaces and CRDs of a chart with pre hooks go first, as Helm installs ``crds/``
#: and creates the namespace (``--create-namespace``) before it runs any hook.
FOUNDATION_WAVE = -2000
#: A Job hook deleted on success (``hook-succeeded``/``hook-failed``) is given this
#: ``ttlSecondsAfterFinished``: long enough for the health gate to judge it first.
HOOK_JOB_TTL = 300

_PRE = frozenset({"pre-install", "pre-upgrade"})
_POST = frozenset({"post-install", "post-upgrade"})
_TEST = frozenset({"test", "test-success", "test-failure"})
_REMOTE = re.compile(r"^(https?|oci)://", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class HelmSettings:
    """``apps[].helm``: what ``helm template`` is given besides the chart."""

    release_name: str = ""  # "" → the app's name
    namespace: str = ""  # "" → the app's namespace
    values: Mapping[str, Any] = field(default_factory=dict)
    values_files: tuple[str, ...] = ()  # relative to the chart directory, inside the repo


class Limits(Protocol):
    """What rendering a chart is bounded by (``RenderLimits`` provides it)."""

    @property
    def max_file_bytes(self) -> int:
        """Each values file and Chart.yaml read here."""
        ...

    @property
    def max_total_bytes(self) -> int:
        """The chart's files together, and what Helm prints."""
        ...

    @property
    def max_files(self) -> int:
        """Files in the chart."""
        ...

    @property
    def helm_timeout(self) -> float:
        """Seconds Helm may run."""
        ...

    @property
    def reader(self) -> ReadLimits:
        """Each YAML document read."""
        ...


def default_command() -> str | None:
    """The ``helm`` on PATH (the image pins one; ``hack/build-helm.sh`` builds it)."""
    return shutil.which("helm")


def is_chart(directory: Path) -> bool:
    """Whether ``directory`` is a Helm chart."""
    return (directory / CHART_FILE).is_file()


def offline_env(home: Path) -> dict[str, str]:
    """An environment for Helm that reads nothing of the user's and reaches no network."""
    for sub in ("config", "cache", "data", "plugins"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    nowhere = "http://127.0.0.1:9"  # the discard port: any fetch fails at once
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "HELM_PLUGINS": str(home / "plugins"),
        "HELM_REGISTRY_CONFIG": str(home / "config" / "registry.json"),
        "HELM_REPOSITORY_CONFIG": str(home / "config" / "repositories.yaml"),
        "HELM_REPOSITORY_CACHE": str(home / "cache" / "repository"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
        "HTTP_PROXY": nowhere,
        "HTTPS_PROXY": nowhere,
        "http_proxy": nowhere,
        "https_proxy": nowhere,
        "NO_PROXY": "",
        "no_proxy": "",
    }


# --------------------------------------------------------------------------- hooks


def map_hook(obj: dict[str, Any]) -> dict[str, Any] | str:
    """The object with its Helm hook made a wave (itself if no hook), or why it is skipped.

    ``pre-install``/``pre-upgrade`` → wave ``PRE_HOOK_WAVE + weight``, before everything;
    ``post-install``/``post-upgrade`` → ``POST_HOOK_WAVE + weight``, after. A wave the
    chart sets itself wins. Delete policies: ``before-hook-creation`` (Helm's default)
    → ``gitsync.io/recreate``, so a changed hook Job is deleted and created again;
    ``hook-succeeded``/``hook-failed`` on a Job → ``ttlSecondsAfterFinished`` (the Job
    deletes itself once finished and is not run again while the chart leaves it alone).
    Test hooks, and hooks only for delete or rollback (which gitsync never does the Helm
    way), are skipped.
    """
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    events = _hook_events(obj)
    if events is None or not isinstance(annotations, dict):
        return obj
    if events & _TEST:
        return "a Helm test hook (run by `helm test`); gitsync does not run chart tests"
    if events & _PRE:
        base = PRE_HOOK_WAVE
    elif events & _POST:
        base = POST_HOOK_WAVE
    else:
        shown = ", ".join(sorted(events)) or "(empty)"
        return (
            f"a Helm hook for {shown} only; gitsync applies hooks of install and upgrade, "
            "never of delete or rollback"
        )
    try:
        weight = int(str(annotations.get(HOOK_WEIGHT_ANNOTATION, "0")).strip())
    except ValueError:
        weight = 0  # as Helm: a weight that is not a number counts as 0
    weight = max(-_MAX_WEIGHT, min(_MAX_WEIGHT, weight))
    policies = {
        p.strip()
        for p in str(annotations.get(HOOK_DELETE_ANNOTATION, "before-hook-creation")).split(",")
    }
    new_annotations = {WAVE_ANNOTATION: str(base + weight), **annotations}
    if "before-hook-creation" in policies:
        new_annotations.setdefault(RECREATE_ANNOTATION, "true")
    new = {**obj, "metadata": {**meta, "annotations": new_annotations}}  # type: ignore[dict-item]
    is_job = obj.get("kind") == "Job" and str(obj.get("apiVersion", "")).startswith("batch/")
    if policies & {"hook-succeeded", "hook-failed"} and is_job:
        spec = obj.get("spec")
        if isinstance(spec, dict) and spec.get("ttlSecondsAfterFinished") is None:
            new["spec"] = {**spec, "ttlSecondsAfterFinished": HOOK_JOB_TTL}
    return new


def _hook_events(obj: Any) -> frozenset[str] | None:
    """The events of the object's ``helm.sh/hook`` annotation; None if it is no hook."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    hook = annotations.get(HOOK_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(hook, str):
        return None
    return frozenset(e.strip() for e in hook.split(",") if e.strip())


_FOUNDATIONS = frozenset(
    {("v1", "Namespace"), ("apiextensions.k8s.io/v1", "CustomResourceDefinition")}
)


def map_hooks(sourced: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``map_hook`` on each (source, object), skipped ones logged, then ``foundations_first``."""
    out: list[tuple[str, Any]] = []
    for where, obj in sourced:
        mapped = map_hook(obj) if isinstance(obj, dict) else obj
        if isinstance(mapped, str):
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            log.info(
                "render.skipped",
                source=where,
                kind=obj.get("kind"),
                name=meta.get("name"),
                reason=mapped,
            )
            continue
        out.append((where, mapped))
    return list(zip([w for w, _ in out], foundations_first([o for _, o in out]), strict=True))


def foundations_first(objects: list[Any]) -> list[Any]:
    """With a pre hook present, Namespaces and CRDs without a wave go in ``FOUNDATION_WAVE``."""

    def has_wave(obj: dict[str, Any]) -> bool:
        return WAVE_ANNOTATION in (obj["metadata"].get("annotations") or {})

    if not any((_hook_events(obj) or frozenset()) & _PRE for obj in objects):
        return objects
    out = []
    for obj in objects:
        if (
            isinstance(obj, dict)
            and (obj.get("apiVersion"), obj.get("kind")) in _FOUNDATIONS
            and isinstance(obj.get("metadata"), dict)
            and not has_wave(obj)
        ):
            meta = obj["metadata"]
            notes = {**(meta.get("annotations") or {}), WAVE_ANNOTATION: str(FOUNDATION_WAVE)}
            out.append({**obj, "metadata": {**meta, "annotations": notes}})
        else:
            out.append(obj)
    return out


# --------------------------------------------------------------------------- checks


def check_path(entry: Any, *, base: Path, repo: Path, what: str, where: str) -> Path | str:
    """``entry`` resolved against ``base``, if an existing file inside ``repo``; else why not."""
    if not isinstance(entry, str) or not entry:
        return f"{where}: {what} {entry!r} is not a path."
    if "://" in entry or entry.startswith("git@"):
        return (
            f"{where}: {what} {entry!r} is a URL; gitsync renders only what is in the "
            "repository, so commit the file."
        )
    if Path(entry).is_absolute():
        return f"{where}: {what} {entry!r} is an absolute path; use a path inside the repository."
    target = Path(os.path.realpath(base / entry))
    if not target.is_relative_to(repo):
        return f"{where}: {what} {entry!r} resolves outside the repository."
    if not target.is_file():
        return f"{where}: {what} {entry!r} does not exist in the repository."
    return target


@dataclass(frozen=True, slots=True, kw_only=True)
class _Dependency:
    name: str
    repository: str
    where: str  # "file:line" of the entry


def _read_yaml(
    path: Path, shown: str, limits: Limits, problems: list[str]
) -> tuple[Any, Any] | None:
    data = read_bytes(path, shown, limits.max_file_bytes, problems)
    text = decode(data, shown, problems) if data is not None else None
    if text is None:
        return None
    try:
        return read_first(text, limits.reader, only=True)
    except ReadError as e:
        problems.append(f"{shown}:{e.line}: {e.message}")
        return None


def _chart_meta(
    chart: Path, repo: Path, limits: Limits, problems: list[str]
) -> tuple[str, list[_Dependency]] | None:
    """The chart's name and dependencies (``Chart.yaml``, or ``requirements.yaml`` of v1)."""
    shown = relative(chart / CHART_FILE, repo)
    read = _read_yaml(chart / CHART_FILE, shown, limits, problems)
    if read is None:
        return None
    meta, root = read
    if not isinstance(meta, dict):
        problems.append(f"{shown}:1: Chart.yaml must be a mapping.")
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{shown}:1: Chart.yaml has no name.")
        return None
    deps_value, deps_root, deps_shown = meta.get("dependencies"), root, shown
    requirements = chart / "requirements.yaml"
    if deps_value is None and meta.get("apiVersion") == "v1" and requirements.is_file():
        deps_shown = relative(requirements, repo)
        read = _read_yaml(requirements, deps_shown, limits, problems)
        if read is None:
            return None
        reqs, deps_root = read
        deps_value = reqs.get("dependencies") if isinstance(reqs, dict) else None
    deps: list[_Dependency] = []
    for i, dep in enumerate(deps_value if isinstance(deps_value, list) else ()):
        line = line_at(deps_root, "dependencies", i) or 1
        if not isinstance(dep, dict) or not isinstance(dep.get("name"), str):
            problems.append(f"{deps_shown}:{line}: a dependency has no name.")
            continue
        deps.append(
            _Dependency(
                name=dep["name"],
                repository=str(dep.get("repository") or ""),
                where=f"{deps_shown}:{line}",
            )
        )
    return name, deps


def _vendored(chart: Path, repo: Path, limits: Limits, problems: list[str]) -> dict[str, Path]:
    """Chart name → its directory (or archive) in ``charts/``."""
    found: dict[str, Path] = {}
    charts = chart / "charts"
    if not charts.is_dir():
        return found
    for entry in sorted(charts.iterdir()):
        if entry.is_dir() and is_chart(entry):
            meta = _chart_meta(entry, repo, limits, problems)
            if meta is not None:
                found.setdefault(meta[0], entry)
        elif entry.is_file() and entry.name.endswith((".tgz", ".tar.gz")):
            stem = entry.name.removesuffix(".tgz").removesuffix(".tar.gz")
            # name-version.tgz: the version starts at the first "-" followed by a digit.
            m = re.match(r"^(.+?)-v?\d", stem)
            found.setdefault(m.group(1) if m else stem, entry)
    return found


def _check_chart(chart: Path, repo: Path, limits: Limits, problems: list[str]) -> str | None:
    """The chart's name; every dependency (recursively) must be vendored in ``charts/``."""
    meta = _chart_meta(chart, repo, limits, problems)
    if meta is None:
        return None
    name, deps = meta
    vendored = _vendored(chart, repo, limits, problems)
    for dep in deps:
        if dep.name in vendored:
            continue
        if _REMOTE.match(dep.repository):
            problems.append(
                f"{dep.where}: dependency '{dep.name}' comes from the remote repository "
                f"{dep.repository} and charts/ has no copy of it; gitsync renders only what is "
                "in the commit, so vendor it (`helm dependency build`, then commit charts/)."
            )
        else:
            shown_repo = f" ({dep.repository})" if dep.repository else ""
            problems.append(
                f"{dep.where}: dependency '{dep.name}'{shown_repo} is not in charts/; "
                "vendor it (`helm dependency build`, then commit charts/)."
            )
    for sub in vendored.values():
        if sub.is_dir():
            _check_chart(sub, repo, limits, problems)
    return name


def _check_tree(chart: Path, repo: Path, limits: Limits, problems: list[str]) -> None:
    """No symlink out of the repository, no special files, within the file and byte limits."""
    count = total = 0
    for directory, dirs, files in os.walk(chart, followlinks=False):
        here = Path(directory)
        for name in sorted([*dirs, *files]):
            path = here / name
            shown = relative(path, repo)
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.is_relative_to(repo):
                    problems.append(
                        f"{shown}:1: the symlink points outside the repository (to {target}); "
                        "Helm would read it, so it is refused."
                    )
                    continue
                if target.is_dir() and chart.is_relative_to(target):
                    problems.append(f"{shown}:1: the symlink loops back to a directory above it.")
                    continue
            if path.is_dir():
                continue
            if not path.is_file():
                problems.append(f"{shown}:1: not a regular file; charts hold regular files only.")
                continue
            count += 1
            total += path.stat().st_size
        if count > limits.max_files or total > limits.max_total_bytes:
            problems.append(
                f"{relative(chart, repo)}:1: the chart has over {limits.max_files} files or "
                f"{limits.max_total_bytes} bytes."
            )
            return


def _values_files(
    chart: Path,
    settings: HelmSettings,
    *,
    repo: Path,
    config_where: str,
    limits: Limits,
    problems: list[str],
) -> list[Path]:
    """The values files, each checked to be a YAML mapping inside the repository."""
    paths: list[Path] = []
    for i, entry in enumerate(settings.values_files):
        checked = check_path(
            entry,
            base=chart,
            repo=repo,
            what="values file",
            where=f"{config_where}.valuesFiles[{i}]",
        )
        if isinstance(checked, str):
            problems.append(checked)
            continue
        shown = relative(checked, repo)
        read = _read_yaml(checked, shown, limits, problems)
        if read is None:
            continue
        if read[0] is not None and not isinstance(read[0], dict):
            problems.append(f"{shown}:1: a values file must be a mapping.")
            continue
        paths.append(checked)
    return paths


def check_helm_charts(
    spec: dict[str, Any],
    root: Any,
    *,
    directory: Path,
    repo: Path,
    shown: str,
    limits: Limits,
    problems: list[str],
) -> bool:
    """Whether a kustomization inflates charts (``helmCharts``); each must be in the repository.

    kustomize looks for a chart in ``<chartHome>/<name>``, or, when both ``repo`` and
    ``version`` are set, in ``<chartHome>/<name>-<version>/<name>``; where it is missing,
    kustomize would ``helm pull`` it, so that is refused here.
    """
    charts = spec.get("helmCharts")
    globals_ = spec.get("helmGlobals")
    if not charts and not globals_:
        return False
    globals_ = globals_ if isinstance(globals_, dict) else {}
    if globals_.get("configHome") is not None:
        line = line_at(root, "helmGlobals", "configHome") or 1
        problems.append(
            f"{shown}:{line}: helmGlobals.configHome is not supported; gitsync gives Helm a "
            "private, empty home so a render never reads Helm configuration from elsewhere."
        )
    home_entry = globals_.get("chartHome", "charts")
    home = Path(os.path.realpath(directory / str(home_entry)))
    if Path(str(home_entry)).is_absolute() or not home.is_relative_to(repo):
        line = line_at(root, "helmGlobals", "chartHome") or 1
        problems.append(
            f"{shown}:{line}: helmGlobals.chartHome {home_entry!r} is outside the repository."
        )
        return True
    for i, chart in enumerate(charts if isinstance(charts, list) else ()):
        where = f"{shown}:{line_at(root, 'helmCharts', i) or 1}"
        if not isinstance(chart, dict) or not isinstance(chart.get("name"), str):
            problems.append(f"{where}: a helmCharts entry has no name.")
            continue
        name, remote = chart["name"], str(chart.get("repo") or "")
        version = str(chart.get("version") or "")
        local = home / (f"{name}-{version}/{name}" if remote and version else name)
        if not is_chart(local):
            reason = (
                f"comes from {remote}, and kustomize would download it"
                if remote
                else "is not in the repository"
            )
            problems.append(
                f"{where}: helmCharts chart '{name}' {reason}; gitsync renders only what is in "
                f"the commit, so vendor it at {relative(local, repo)} (helm pull --untar)."
            )
            continue
        _check_chart(local, repo, limits, problems)
        _check_tree(local, repo, limits, problems)
        extra = chart.get("additionalValuesFiles")
        files = [chart.get("valuesFile"), *(extra if isinstance(extra, list) else ())]
        for entry in files:
            if entry is None:
                continue
            checked = check_path(entry, base=directory, repo=repo, what="values file", where=where)
            if isinstance(checked, str):
                problems.append(checked)
    return True


# --------------------------------------------------------------------------- template


def template_chart(
    chart: Path,
    *,
    repo: Path,
    settings: HelmSettings,
    release: str,
    namespace: str,
    command: str | None,
    limits: Limits,
    problems: list[str],
    config_where: str = "apps[].helm",
) -> list[tuple[str, Any]]:
    """(source, object) for every object ``helm template`` prints, hooks made waves."""
    name = _check_chart(chart, repo, limits, problems)
    _check_tree(chart, repo, limits, problems)
    values = _values_files(
        chart, settings, repo=repo, config_where=config_where, limits=limits, problems=problems
    )
    shown = relative(chart / CHART_FILE, repo)
    if command is None:
        problems.append(
            f"{shown}:1: the app is a Helm chart, but no helm command was found on PATH; "
            "install Helm v3 (the gitsync image has it; hack/build-helm.sh builds it)."
        )
    if problems or name is None or command is None:
        return []  # never run Helm on a chart that is not whole and inside the repository
    text = _run_helm(
        command,
        chart=chart,
        chart_name=name,
        repo=repo,
        release=release,
        namespace=namespace,
        values_files=values,
        inline=settings.values,
        limits=limits,
        problems=problems,
    )
    if text is None:
        return []
    return read_output(
        text, chart=chart, chart_name=name, repo=repo, limits=limits, problems=problems
    )


def _run_helm(
    command: str,
    *,
    chart: Path,
    chart_name: str,
    repo: Path,
    release: str,
    namespace: str,
    values_files: list[Path],
    inline: Mapping[str, Any],
    limits: Limits,
    problems: list[str],
) -> str | None:
    shown = relative(chart / CHART_FILE, repo)
    with tempfile.TemporaryDirectory(prefix="gitsync-helm-") as tmp:
        home = Path(tmp)
        argv = [command, "template", release, str(chart), "--namespace", namespace]
        argv += ["--include-crds"]  # a GitOps render applies the chart's CRDs too
        for path in values_files:
            argv += ["--values", str(path)]
        if inline:
            # Inline values win over values files, as in Argo CD and Flux.
            inline_file = home / "inline-values.json"
            inline_file.write_text(json.dumps(dict(inline)), encoding="utf-8")
            argv += ["--values", str(inline_file)]
        with tempfile.TemporaryFile(dir=tmp) as out:
            try:
                proc = subprocess.run(
                    argv,
                    stdout=out,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    env=offline_env(home / "home"),
                    cwd=tmp,
                    timeout=limits.helm_timeout,
                    check=False,
                )
            except FileNotFoundError:
                problems.append(f"{shown}:1: the helm command {command!r} was not found.")
                return None
            except subprocess.TimeoutExpired:
                problems.append(f"{shown}:1: helm did not finish within {limits.helm_timeout:g}s.")
                return None
            if proc.returncode != 0:
                err = proc.stderr.decode("utf-8", "replace")
                problems.extend(error_problems(err, chart=chart, chart_name=chart_name, repo=repo))
                return None
            size = out.tell()
            if size > limits.max_total_bytes:
                problems.append(
                    f"{shown}:1: helm printed {size} bytes, over the limit of "
                    f"{limits.max_total_bytes} bytes."
                )
                return None
            out.seek(0)
            return decode(out.read(), f"{shown} (helm output)", problems)


_LOCATION = re.compile(r"\(?(?P<path>[\w.@+-]+(?:/[\w.@+-]+)+):(?P<line>\d+)(?::\d+)?\)?")
_YAML_ON = re.compile(r"YAML parse error on (?P<path>[\w.@+-]+(?:/[\w.@+-]+)+)")


def error_problems(stderr: str, *, chart: Path, chart_name: str, repo: Path) -> list[str]:
    """Helm's error as ``file:line:`` sentences, chart paths made repository paths."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    # Helm logs warnings (symlinks, deprecated charts) before its one "Error:" line(s).
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Error:")), 0)
    message = " ".join(ln.strip() for ln in lines[start:]).removeprefix("Error:").strip()
    # The hint is for Helm's CLI users; here the file and line say where to look.
    message = message.removesuffix("Use --debug flag to render out invalid YAML").strip()
    if len(message) > 2000:
        message = message[:2000] + "…"
    shown = relative(chart / CHART_FILE, repo)

    def repo_path(chart_path: str) -> str | None:
        first, _, rest = chart_path.partition("/")
        if first != chart_name or not rest:
            return None
        return relative(chart, repo) + "/" + rest if relative(chart, repo) else rest

    def rewrite(m: re.Match[str]) -> str:
        mapped = repo_path(m.group("path"))
        return m.group(0) if mapped is None else m.group(0).replace(m.group("path"), mapped)

    where = f"{shown}:1"
    found = _LOCATION.search(message)
    if found is not None and repo_path(found.group("path")) is not None:
        where = f"{repo_path(found.group('path'))}:{found.group('line')}"
    else:
        on = _YAML_ON.search(message)
        mapped = repo_path(on.group("path")) if on else None
        if mapped is not None:
            where = f"{mapped}:1"
    text = _YAML_ON.sub(
        lambda m: f"YAML parse error on {repo_path(m.group('path')) or m.group('path')}",
        _LOCATION.sub(rewrite, message),
    )
    return [f"{where}: helm template failed: {text}"]


_SOURCE = re.compile(r"^# Source: (?P<path>\S.*?)\s*$", re.MULTILINE)


def read_output(
    text: str, *, chart: Path, chart_name: str, repo: Path, limits: Limits, problems: list[str]
) -> list[tuple[str, Any]]:
    """(source, object) for each object of ``helm template`` output, hooks made waves."""
    shown = relative(chart / CHART_FILE, repo)
    try:
        docs = read_documents(text, limits.reader)
    except ReadError as e:
        problems.append(f"{shown}:1: helm printed unreadable YAML (line {e.line}): {e.message}")
        return []
    sources = [
        (text.count("\n", 0, m.start()) + 1, m.group("path")) for m in _SOURCE.finditer(text)
    ]
    starts = [line for line, _ in sources]
    kinds = _KindLines(chart=chart, chart_name=chart_name, repo=repo, limits=limits)
    out: list[tuple[str, Any]] = []
    for number, whole in enumerate(docs, start=1):
        i = bisect.bisect_right(starts, whole.line) - 1
        chart_path = sources[i][1] if i >= 0 else ""
        items, errors = flatten_list(whole)
        fallback = f"{shown} (helm output doc {number})"
        problems.extend(f"{kinds.display(chart_path) or fallback}: {e.message}" for e in errors)
        out.extend((kinds.source(chart_path, item) or fallback, item.value) for item in items)
    return map_hooks(out)


@dataclass(slots=True)
class _KindLines:
    """``chart/templates/x.yaml`` → the repository file, and the line of each ``kind:``."""

    chart: Path
    chart_name: str
    repo: Path
    limits: Limits
    lines: dict[Path, dict[str, list[int]]] = field(default_factory=dict)
    used: dict[tuple[Path, str], int] = field(default_factory=dict)

    def path(self, chart_path: str) -> Path | None:
        first, _, rest = chart_path.partition("/")
        if first != self.chart_name or not rest:
            return None
        target = Path(os.path.realpath(self.chart / rest))
        return target if target.is_relative_to(self.repo) and target.is_file() else None

    def display(self, chart_path: str) -> str | None:
        path = self.path(chart_path)
        return f"{relative(path, self.repo)}:1" if path is not None else None

    def source(self, chart_path: str, item: Document) -> str | None:
        path = self.path(chart_path)
        if path is None:
            return None
        kind = item.value.get("kind") if isinstance(item.value, dict) else None
        candidates = self._index(path).get(str(kind), [])
        # The n-th object of a kind from one template is at its n-th ``kind:`` line, when
        # the template spells it out; a loop or a templated kind falls back to the first.
        n = self.used.get((path, str(kind)), 0)
        self.used[(path, str(kind))] = n + 1
        line = candidates[min(n, len(candidates) - 1)] if candidates else 1
        return f"{relative(path, self.repo)}:{line}"

    def _index(self, path: Path) -> dict[str, list[int]]:
        if path not in self.lines:
            found: dict[str, list[int]] = {}
            for number, kind in _kind_lines(path, self.limits.max_file_bytes):
                found.setdefault(kind, []).append(number)
            self.lines[path] = found
        return self.lines[path]


_KIND_LINE = re.compile(r"^kind:\s*[\"']?(?P<kind>[A-Za-z0-9]+)[\"']?\s*(?:#.*)?$")


def _kind_lines(path: Path, max_bytes: int) -> Iterator[tuple[int, str]]:
    problems: list[str] = []
    data = read_bytes(path, "", max_bytes, problems)
    text = decode(data, "", problems) if data is not None else None
    for number, line in enumerate((text or "").splitlines(), start=1):
        m = _KIND_LINE.match(line)
        if m:
            yield number, m.group("kind")
