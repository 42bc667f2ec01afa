"""Several apps on one repository and ref, synced at once while commits land (real cluster)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, watch

from gitsync import config
from gitsync.engine import inventory
from gitsync.engine.sync import Context, sync_app
from gitsync.kube import Kube
from gitsync.model import APP_LABEL
from tests.support.app_fixtures import ref
from tests.support.controller_process import ControllerProcess
from tests.support.repos import BareRepo

pytestmark = [pytest.mark.cluster, pytest.mark.git]

APPS = 5
CONFIGMAPS = 8  # per app, each stamped with the commit's number
ROUNDS = 8  # syncs per app while commits land


@dataclass(frozen=True, slots=True, kw_only=True)
class Shared:
    suffix: str
    repo: BareRepo
    ctx: Context
    apps: tuple[config.AppConfig, ...]

    def namespace(self, i: int) -> str:
        return f"gs-{self.suffix}-{i}"

    def tree(self, n: int) -> dict[str, str]:
        """Commit ``n``: in every app's directory, a Namespace and ConfigMaps that say ``n``.

        A kustomization lists them: kustomize reads the files in a subprocess, a while
        after the fetch, which is where a checkout shared between apps went wrong.
        """
        files = {}
        for i in range(APPS):
            ns = self.namespace(i)
            resources = ", ".join(["namespace.yaml"] + [f"cm-{j}.yaml" for j in range(CONFIGMAPS)])
            files[f"apps/app-{i}/kustomization.yaml"] = f"resources: [{resources}]\n"
            files[f"apps/app-{i}/namespace.yaml"] = (
                f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
            )
            for j in range(CONFIGMAPS):
                files[f"apps/app-{i}/cm-{j}.yaml"] = (
                    "apiVersion: v1\nkind: ConfigMap\n"
                    f"metadata: {{name: cm-{j}, namespace: {ns}}}\n"
                    f"data: {{commit: '{n}'}}\n"
                )
        return files


@pytest.fixture
def shared(kube: Kube, make_repo: Callable[..., BareRepo], tmp_path: Path) -> Iterator[Shared]:
    """Five apps, each at its own path of one repository, sharing one cache and state namespace."""
    suffix = uuid.uuid4().hex[:6]
    repo = make_repo("shared")
    ctx = Context(kube=kube, cache_dir=tmp_path / "cache", state_namespace=f"gs-state-{suffix}")
    raw = [
        {
            "name": f"shared-{suffix}-{i}",
            "repo": repo.file_url,
            "path": f"apps/app-{i}",
            "namespace": f"gs-{suffix}-{i}",
            "rollback": {"enabled": False},
        }
        for i in range(APPS)
    ]
    apps = tuple(config.parse({"apps": raw}).apps)
    yield Shared(suffix=suffix, repo=repo, ctx=ctx, apps=apps)
    for i in range(APPS):
        kube.delete(ref("Namespace", f"gs-{suffix}-{i}"))
    kube.delete(ref("Namespace", ctx.state_namespace))


def _applied(kube: Kube, ns: str) -> set[str]:
    """The commit numbers the app's live ConfigMaps say."""
    out = set()
    for j in range(CONFIGMAPS):
        obj = kube.get(ref("ConfigMap", f"cm-{j}", ns))
        assert obj is not None, f"{ns}/cm-{j} is missing"
        out.add(obj["data"]["commit"])
    return out


def test_apps_on_one_repository_apply_the_commit_they_record(shared: Shared) -> None:
    """Five apps synced at once while commits land each apply exactly their recorded commit."""
    commits = {shared.repo.commit(shared.tree(0), message="0"): "0"}
    lock = threading.Lock()
    done = threading.Event()

    def push() -> None:
        n = 0
        while not done.is_set():  # as fast as git can commit
            n += 1
            sha = shared.repo.commit(shared.tree(n), message=str(n))
            with lock:
                commits[sha] = str(n)

    def run(i: int) -> list[tuple[str, str, set[str]]]:
        app = shared.apps[i]
        seen = []
        for _ in range(ROUNDS):
            result = sync_app(app, shared.ctx)
            assert result.result in ("synced", "unchanged"), result.error
            state = inventory.read_state(
                shared.ctx.kube, app=app.name, namespace=shared.ctx.state_namespace
            )
            assert state.revision == result.revision
            seen.append((app.name, result.revision, _applied(shared.ctx.kube, shared.namespace(i))))
        return seen

    pusher = threading.Thread(target=push)
    pusher.start()
    try:
        with ThreadPoolExecutor(max_workers=APPS) as pool:
            rounds = [r for seen in pool.map(run, range(APPS)) for r in seen]
    finally:
        done.set()
        pusher.join()
    mixed = [
        f"{name}: recorded commit {commits[sha]}, applied {sorted(applied)}"
        for name, sha, applied in rounds
        if applied != {commits[sha]}
    ]
    assert not mixed, "\n".join(mixed)
    assert len({sha for _, sha, _ in rounds}) > APPS  # commits did land during the syncs


def _kustomized(cms: dict[str, str]) -> dict[str, str]:
    return {**cms, "kustomization.yaml": f"resources: [{', '.join(sorted(cms))}]\n"}


def test_controller_with_five_apps_on_one_repository_applies_what_it_records(
    *,
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace_factory: Callable[[], str],
    k8s_api: client.ApiClient,
) -> None:
    """In ``gitsync run``, every ConfigMap change of every app is the commit that sync recorded."""
    repo = make_repo("shared")
    namespaces = [namespace_factory() for _ in range(APPS)]
    state_ns = namespace_factory()
    names = [f"shared-{i}-{uuid.uuid4().hex[:6]}" for i in range(APPS)]

    def tree(n: int) -> dict[str, str]:
        files = {}
        for i in range(APPS):
            cms = {
                f"cm-{j}.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{j}}}\n"
                f"data: {{commit: '{n}'}}\n"
                for j in range(CONFIGMAPS)
            }
            files |= {f"apps/app-{i}/{k}": v for k, v in _kustomized(cms).items()}
        return files

    commits = {repo.commit(tree(0), message="0")[:12]: "0"}
    changes: dict[tuple[str, str], list[str]] = {}  # (namespace, name) -> commit values seen
    stop = threading.Event()
    core = client.CoreV1Api(k8s_api)
    selector = f"{APP_LABEL} in ({','.join(names)})"

    def watch_configmaps() -> None:
        version = core.list_config_map_for_all_namespaces(
            label_selector=selector
        ).metadata.resource_version
        while not stop.is_set():
            w = watch.Watch()
            for ev in w.stream(
                core.list_config_map_for_all_namespaces,
                label_selector=selector,
                resource_version=version,
                timeout_seconds=2,
            ):
                obj = ev["object"]
                version = obj.metadata.resource_version
                if ev["type"] in ("ADDED", "MODIFIED"):
                    seen = changes.setdefault((obj.metadata.namespace, obj.metadata.name), [])
                    value = (obj.data or {}).get("commit", "")
                    if not seen or seen[-1] != value:
                        seen.append(value)

    watcher = threading.Thread(target=watch_configmaps)
    watcher.start()
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                {
                    "name": names[i],
                    "repo": repo.file_url,
                    "path": f"apps/app-{i}",
                    "namespace": namespaces[i],
                    "interval": "1s",
                    "rollback": {"enabled": False},
                }
                for i in range(APPS)
            ],
        }
    )
    try:
        deadline = time.monotonic() + 20
        n = 0
        while time.monotonic() < deadline:  # commits land all through the syncs
            n += 1
            commits[repo.commit(tree(n), message=str(n))[:12]] = str(n)
            time.sleep(0.05)
        head = repo.head()[:12]
        for name in names:
            proc.wait_event("sync.done", app=name, revision=head, timeout=60)
        _, metrics = proc.get("/metrics")
        size = re.search(rb"^gitsync_git_cache_bytes (\S+)$", metrics, re.MULTILINE)
        assert size is not None
        assert float(size.group(1)) > 0
        assert proc.terminate() == 0
    finally:
        stop.set()
        watcher.join()
    mixed = []
    for i, name in enumerate(names):
        recorded = [
            commits[e["revision"]]
            for e in proc.events("sync.done", app=name)
            if e["result"] == "synced"
        ]
        assert len(recorded) >= 3, f"{name} synced only {recorded}"
        for j in range(CONFIGMAPS):
            applied = changes.get((namespaces[i], f"cm-{j}"), [])
            if applied != recorded:
                mixed.append(f"{name} cm-{j}: recorded {recorded}, applied {applied}")
    assert not mixed, "\n".join(mixed)
