"""Kubernetes Events, so `kubectl describe` and `kubectl get events` tell the story too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from gitsync.errors import KubeError
from gitsync.kube import Kube
from gitsync.model import KubeObject, ObjectRef

REPORTER = "gitsync"


def emit(
    kube: Kube,
    *,
    involved: ObjectRef,
    uid: str = "",
    reason: str,
    message: str,
    warning: bool = False,
    fallback_namespace: str = "default",
) -> bool:
    """Record an Event on ``involved``; returns False (and never raises) if it could not."""
    namespace = involved.namespace or fallback_namespace
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event: KubeObject = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{involved.name[:200]}.{uuid.uuid4().hex[:16]}",
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": involved.api_version,
            "kind": involved.kind,
            "namespace": involved.namespace,
            "name": involved.name,
            **({"uid": uid} if uid else {}),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": REPORTER},
        "reportingComponent": REPORTER,
        "reportingInstance": REPORTER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        kube.create(event)
    except KubeError:
        return False
    return True
