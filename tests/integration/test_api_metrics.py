"""``gitsync_api_requests_total{verb}`` on /metrics: the counter the scale bench reads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.controller_process import ControllerProcess, lease_config
from tests.support.repos import BareRepo

pytestmark = [pytest.mark.cluster, pytest.mark.git]

APPS = 3
OBJECTS = 5


def configmaps(version: str) -> dict[str, str]:
    docs = [
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\ndata:\n  v: '{version}'\n"
        for i in range(OBJECTS)
    ]
    return {"cms.yaml": "---\n".join(docs)}


def api_metrics(proc: ControllerProcess) -> tuple[Counter[str], float | None]:
    """Requests by verb, and the open-watches gauge (None when it is not exported)."""
    status, body = proc.get("/metrics")
    assert status == 200
    calls: Counter[str] = Counter()
    watches = None
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "gitsync_api_requests_total":
                calls[sample.labels["verb"]] = int(sample.value)
            elif sample.name == "gitsync_api_watches_open":
                watches = sample.value
    return calls, watches


def test_api_request_counter_is_exported_and_counts_a_sync(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace_factory: Callable[[], str],
) -> None:
    """/metrics counts API requests by verb: every applied object of the first syncs, then
    the apply of one changed object; watches open are a gauge."""
    state_ns = namespace_factory()
    repos, apps = [], []
    for n in range(APPS):
        repo = make_repo(f"metrics-{n}")
        repo.commit(configmaps("1"))
        repos.append(repo)
        ns = namespace_factory()
        apps.append({"name": f"m{n}", "repo": repo.file_url, "namespace": ns, "interval": "1s"})
    proc = controllers(
        {"stateNamespace": state_ns, "apps": apps, "controller": {"leaderElection": lease_config()}}
    )
    for a in apps:
        proc.wait_event("sync.done", app=a["name"], result="synced", timeout=60)
        proc.wait_event("drift.intents", app=a["name"], objects=OBJECTS, timeout=30)
    before, watches = api_metrics(proc)
    assert before["apply"] >= APPS * OBJECTS, before
    assert before["list"] > 0, before
    assert before["state"] >= APPS, before
    assert watches is not None, "gitsync_api_watches_open is missing"
    assert watches >= 1

    changed = configmaps("1")["cms.yaml"].replace("v: '1'", "v: '2'", 1)
    sha = repos[0].commit({"cms.yaml": changed})
    proc.wait_event("sync.done", app="m0", revision=sha[:12], result="synced", timeout=60)
    after, _ = api_metrics(proc)
    assert after["apply"] >= before["apply"] + 1, (before, after)
    assert after.total() > before.total()
    assert proc.terminate() == 0
