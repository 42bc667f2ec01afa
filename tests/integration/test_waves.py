"""Waves wait for each other: a later wave is applied only once the earlier one is healthy."""

from __future__ import annotations

import pytest

from gitsync.kube import Kube
from tests.support.app_fixtures import App, ref
from tests.support.manifests import NAMESPACE, config_maps, deployment

pytestmark = [pytest.mark.cluster, pytest.mark.git]

MIGRATE = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: {ns}
  annotations: {{gitsync.io/wave: "-1"}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: migrate, image: registry.invalid/migrate:1}}]
"""


# Waves come before kind ranks, so what wave -1 lives in must be in an earlier wave.
FIRST_NAMESPACE = NAMESPACE + '  annotations: {{gitsync.io/wave: "-2"}}\n'


def _time(obj: dict, condition: str) -> str:
    return next(
        c["lastTransitionTime"]
        for c in obj["status"]["conditions"]
        if c["type"] == condition and c["status"] == "True"
    )


def test_later_wave_waits_for_the_earlier_one_to_finish(app: App, kube: Kube) -> None:
    """The wave -1 Job has succeeded before the wave 0 Deployment is created."""
    app.commit({"ns.yaml": FIRST_NAMESPACE, "job.yaml": MIGRATE, "web.yaml": deployment()})
    result = app.sync()
    assert result.result == "synced", result.error
    job = kube.get(ref("Job", "migrate", app.ns, "batch"))
    web = kube.get(ref("Deployment", "web", app.ns, "apps"))
    assert job is not None
    assert web is not None
    done = min(
        _time(job, c)
        for c in ("SuccessCriteriaMet", "Complete")
        if any(x["type"] == c for x in job["status"].get("conditions", []))
    )
    assert web["metadata"]["creationTimestamp"] >= done


def test_unhealthy_wave_stops_the_later_ones(app: App, kube: Kube) -> None:
    """A crash-looping wave -1 keeps wave 0 from being applied at all."""
    pre = deployment(behavior="crashloop").replace(
        "name: web\n", 'name: web\n  annotations: {{gitsync.io/wave: "-1"}}\n', 1
    )
    app.commit({"ns.yaml": FIRST_NAMESPACE, "pre.yaml": pre, "after.yaml": config_maps("after", 1)})
    result = app.sync()
    assert result.result == "failed"
    assert "wave -1 did not become healthy" in result.error
    assert kube.get(ref("ConfigMap", "after-0", app.ns)) is None
