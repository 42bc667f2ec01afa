"""The real node's generated configs and images (pure; no kubelet, no containerd)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import tarfile
from pathlib import Path

from gitsync.devcluster.certs import KeyPair
from gitsync.devcluster.images import ImageSpec, write_docker_archive
from gitsync.devcluster.realnode import (
    GATEWAY,
    REAL_NODE_LABEL,
    SERVICE_IP,
    NodeLayout,
    cni_config,
    containerd_config,
    kubelet_args,
    kubelet_config,
)


def layout(tmp_path: Path) -> NodeLayout:
    return NodeLayout.create(tmp_path, kubelet_port=10250, healthz_port=10248)


def test_layout_names_are_short_unique_and_survive_json(tmp_path: Path) -> None:
    """Bridge name fits IFNAMSIZ, socket paths fit sun_path, and state.json round-trips."""
    node = layout(tmp_path)
    other = layout(tmp_path / "other")
    assert len(node.bridge) <= 15
    assert node.bridge != other.bridge
    assert node.cgroup_root != other.cgroup_root
    assert len(str(node.socket)) < 100
    assert NodeLayout.from_json(json.loads(json.dumps(node.to_json()))) == node


def test_pod_network_has_no_route_off_the_machine(tmp_path: Path) -> None:
    """No gateway/masquerade on the bridge; Pods get only the Service IP as an extra route."""
    bridge = cni_config(layout(tmp_path))["plugins"][0]
    assert bridge["isGateway"] is False
    assert bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert ipam["routes"] == [{"dst": f"{SERVICE_IP}/32", "gw": GATEWAY}]
    subnet = ipaddress.ip_network(ipam["ranges"][0][0]["subnet"])
    assert subnet.is_private or subnet.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
    assert ipaddress.ip_address(GATEWAY) in subnet


def test_containerd_config_carries_what_this_machine_needs(tmp_path: Path) -> None:
    """restrict_oom_score_adj, the runc v2 runtime type, cgroupfs and private paths."""
    text = containerd_config(layout(tmp_path))
    assert "restrict_oom_score_adj = true" in text
    assert 'runtime_type = "io.containerd.runc.v2"' in text
    assert "SystemdCgroup = false" in text
    assert str(tmp_path) in text
    assert 'address = "/run/gitsync-' in text


def test_kubelet_authenticates_by_cert_or_token_and_authorizes_by_webhook(
    tmp_path: Path,
) -> None:
    """No anonymous access and no AlwaysAllow; cgroup v1 allowed; taint and label set."""
    node = layout(tmp_path)
    serving = KeyPair(cert=tmp_path / "k.crt", key=tmp_path / "k.key")
    config = kubelet_config(node, ca=tmp_path / "ca.crt", serving=serving)
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["webhook"]["enabled"] is True
    assert config["authorization"]["mode"] == "Webhook"
    assert config["readOnlyPort"] == 0
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["registerWithTaints"][0]["key"] == REAL_NODE_LABEL
    assert f"--node-labels={REAL_NODE_LABEL}=true" in kubelet_args(node)


def test_docker_archive_layer_digest_matches_config_and_manifest(tmp_path: Path) -> None:
    """The archive's layer sha256 is the config's diff_id; the manifest names tag and files."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    out = tmp_path / "image.tar"
    spec = ImageSpec(tag="localhost/t:1", cmd=("/bin/hello",))
    image_id = write_docker_archive(rootfs, out, spec)
    with tarfile.open(out) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        [entry] = manifest
        config_bytes = tar.extractfile(entry["Config"]).read()
        layer = tar.extractfile(entry["Layers"][0]).read()
    config = json.loads(config_bytes)
    assert entry["RepoTags"] == ["localhost/t:1"]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    assert config["config"]["Cmd"] == ["/bin/hello"]
    again = tmp_path / "again.tar"
    assert write_docker_archive(rootfs, again, spec) == image_id
    assert again.read_bytes() == out.read_bytes(), "the same rootfs gives the same archive"
