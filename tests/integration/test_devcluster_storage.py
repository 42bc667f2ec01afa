"""The dev cluster's default StorageClass: claims bind, so StatefulSets with volumes schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.devcluster.provisioner import PROVISIONER, STORAGE_CLASS
from tests.support.cluster_fixtures import ClusterHandle, wait_until

pytestmark = pytest.mark.cluster


def stateful_set(name: str, *, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "db",
                            "image": "registry.invalid/gitsync/db:1",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ]
                },
            },
            # No storageClassName: the DefaultStorageClass admission fills in "standard".
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }


def test_default_storage_class_is_marked_default(k8s_api: client.ApiClient) -> None:
    """The cluster has exactly one default StorageClass, served by the dev provisioner."""
    classes = client.StorageV1Api(k8s_api).list_storage_class().items
    defaults = [
        c
        for c in classes
        if (c.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    assert [c.metadata.name for c in defaults] == [STORAGE_CLASS]
    assert defaults[0].provisioner == PROVISIONER


def test_statefulset_with_volume_claim_templates_becomes_ready(
    k8s_api: client.ApiClient, namespace: str, cluster: ClusterHandle
) -> None:
    """A StatefulSet's claims bind to provisioned volumes and all its replicas become Ready."""
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    apps.create_namespaced_stateful_set(namespace, stateful_set("db", replicas=2))

    def ready() -> client.V1StatefulSet | None:
        sts = apps.read_namespaced_stateful_set("db", namespace)
        return sts if sts.status.ready_replicas == 2 else None

    wait_until(ready, timeout=60, what="StatefulSet db with 2 Ready replicas")
    claims = core.list_namespaced_persistent_volume_claim(namespace).items
    assert sorted(c.metadata.name for c in claims) == ["data-db-0", "data-db-1"]
    for claim in claims:
        assert claim.status.phase == "Bound"
        assert claim.spec.storage_class_name == STORAGE_CLASS
        volume = core.read_persistent_volume(claim.spec.volume_name)
        assert volume.spec.claim_ref.uid == claim.metadata.uid
        if cluster.dev is not None:  # the volume dir is ours to see only if we started it
            assert Path(volume.spec.host_path.path).is_dir()


def test_deleted_claim_releases_and_removes_its_volume(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """Deleting a bound claim deletes its provisioned volume (reclaimPolicy Delete)."""
    core = client.CoreV1Api(k8s_api)
    claim = {
        "metadata": {"name": "scratch"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    }
    core.create_namespaced_persistent_volume_claim(namespace, claim)

    def bound() -> str | None:
        pvc = core.read_namespaced_persistent_volume_claim("scratch", namespace)
        return pvc.spec.volume_name if pvc.status.phase == "Bound" else None

    volume_name = wait_until(bound, timeout=30, what="claim scratch Bound")
    assert core.read_persistent_volume(volume_name).spec.capacity["storage"] == "64Mi"
    core.delete_namespaced_persistent_volume_claim("scratch", namespace)

    def gone() -> bool:
        names = {v.metadata.name for v in core.list_persistent_volume().items}
        return volume_name not in names

    wait_until(gone, timeout=30, what=f"volume {volume_name} deleted")
