"""The dev provisioner's pure rules: which claims it serves and the volume it makes for one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gitsync.devcluster.provisioner import (
    PROVISIONED_BY,
    PROVISIONER,
    PROVISIONER_ANNOTATION,
    storage_class,
    volume_for,
    wants_volume,
)


def claim(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {
            "name": "data-db-0",
            "namespace": "shop",
            "uid": "1234",
            "annotations": {PROVISIONER_ANNOTATION: PROVISIONER},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
            "storageClassName": "standard",
        },
        "status": {"phase": "Pending"},
    }
    for key, value in overrides.items():
        base[key] = value
    return base


def test_pending_claim_handed_to_us_wants_a_volume() -> None:
    """A Pending claim annotated with our provisioner name is served."""
    assert wants_volume(claim())


def test_claim_of_another_provisioner_or_already_bound_is_left_alone() -> None:
    """Claims for other provisioners, bound claims and claims with a volume are skipped."""
    other = claim()
    other["metadata"]["annotations"] = {PROVISIONER_ANNOTATION: "ebs.csi.aws.com"}
    assert not wants_volume(other)
    assert not wants_volume(claim(status={"phase": "Bound"}))
    with_volume = claim()
    with_volume["spec"]["volumeName"] = "pv-1"
    assert not wants_volume(with_volume)


def test_volume_is_prebound_to_the_claim_with_its_size_and_modes() -> None:
    """The volume is named after the claim's uid, bound by claimRef, sized as requested."""
    volume = volume_for(claim(), Path("/srv/volumes"))
    assert volume["metadata"]["name"] == "pvc-1234"
    assert volume["metadata"]["annotations"] == {PROVISIONED_BY: PROVISIONER}
    spec = volume["spec"]
    assert spec["claimRef"]["uid"] == "1234"
    assert spec["claimRef"]["namespace"] == "shop"
    assert spec["capacity"] == {"storage": "2Gi"}
    assert spec["accessModes"] == ["ReadWriteOnce"]
    assert spec["hostPath"]["path"] == "/srv/volumes/pvc-1234"
    assert spec["persistentVolumeReclaimPolicy"] == "Delete"


def test_storage_class_is_the_default_and_binds_immediately() -> None:
    """The class is annotated default and binds without waiting for a consumer."""
    sc = storage_class()
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc["volumeBindingMode"] == "Immediate"
    assert sc["provisioner"] == PROVISIONER
