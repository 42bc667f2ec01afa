"""An app under test: a real Git repo, its own namespaces, a Kube client (a pytest plugin)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitsync import config
from gitsync.engine.sync import Context, SyncResult, sync_app
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from gitsync.model import ObjectRef
from tests.support.repos import BareRepo


def ref(kind: str, name: str, ns: str = "", group: str = "", version: str = "v1") -> ObjectRef:
    """Shorthand for an ObjectRef in tests."""
    return ObjectRef(group=group, version=version, kind=kind, namespace=ns, name=name)


@dataclass
class App:
    """One app: files committed with ``{ns}``/``{group}`` filled in, synced on demand."""

    name: str
    ns: str
    repo: BareRepo
    ctx: Context

    @property
    def group(self) -> str:
        return f"{self.ns}.gitsync.test"

    def config(self, **extra: object) -> config.AppConfig:
        raw = {"name": self.name, "repo": self.repo.file_url, "namespace": self.ns, **extra}
        (app,) = config.parse({"apps": [raw]}).apps
        return app

    def sync(self, *, force: bool = False, **extra: object) -> SyncResult:
        return sync_app(self.config(**extra), self.ctx, force=force)

    def commit(self, files: dict[str, str], message: str = "") -> str:
        return self.repo.commit(
            {k: v.format(ns=self.ns, group=self.group) for k, v in files.items()},
            message=message,
        )


@pytest.fixture
def kube(kubeconfig: Path) -> Kube:
    """A gitsync API client for the test cluster (call counters start at zero)."""
    return Kube.connect(kubeconfig=kubeconfig)


@pytest.fixture
def neighbour(app: App, make_repo: Callable[..., BareRepo], tmp_path: Path) -> App:
    """A second app beside ``app``: same namespace and state namespace, its own repo."""
    name = f"{app.name}-b"
    ctx = Context(
        kube=app.ctx.kube, cache_dir=tmp_path / "cache-b", state_namespace=app.ctx.state_namespace
    )
    return App(name=name, ns=app.ns, repo=make_repo(name), ctx=ctx)


# Set to 1 to sync every ``app`` as the controller does, with shared informers (on a
# client of their own, so ``kube.calls`` still counts the sync alone).
INFORMERS_ENV = "GITSYNC_TEST_INFORMERS"


@pytest.fixture
def app(
    kube: Kube, kubeconfig: Path, make_repo: Callable[..., BareRepo], tmp_path: Path
) -> Iterator[App]:
    """A fresh app with unique name, namespace, CRD group and state namespace."""
    suffix = uuid.uuid4().hex[:6]
    name, ns = f"app-{suffix}", f"gs-{suffix}"
    hub = Informers(Kube.connect(kubeconfig=kubeconfig)) if os.environ.get(INFORMERS_ENV) else None
    ctx = Context(
        kube=kube, cache_dir=tmp_path / "cache", state_namespace=f"gs-state-{suffix}", informers=hub
    )
    the_app = App(name=name, ns=ns, repo=make_repo(name), ctx=ctx)
    yield the_app
    if hub is not None:
        hub.stop()
    for n in (ns, ctx.state_namespace):
        kube.delete(ref("Namespace", n))
    kube.delete(
        ref("CustomResourceDefinition", f"widgets.{the_app.group}", group="apiextensions.k8s.io")
    )
