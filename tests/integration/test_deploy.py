"""config/ on the real cluster: it renders, applies, becomes Available, and its RBAC is enough."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster_fixtures import Kubectl, wait_until
from tests.support.controller_process import GITSYNC, ControllerProcess, lease_config
from tests.support.repos import BareRepo

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"


def test_config_renders_with_kubectl_kustomize(kubectl: Kubectl) -> None:
    """`kubectl kustomize config/` gives every object the deployment needs."""
    out = kubectl("kustomize", str(CONFIG)).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "Deployment",
        ]
    )
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert docs["Deployment"]["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"requests", "limits"} <= set(container["resources"])
    # The restricted default: impersonate named ServiceAccounts, Events; nothing else.
    rules = docs["ClusterRole"]["rules"]
    verbs = {v for rule in rules for v in rule["verbs"]}
    assert not verbs & {"*", "escalate", "bind", "deletecollection", "get", "list", "delete"}
    (imp,) = [r for r in rules if "impersonate" in r["verbs"]]
    assert imp["resources"] == ["serviceaccounts"]
    assert imp["resourceNames"]


@pytest.mark.git
def test_gitsync_render_accepts_config(
    make_repo: Callable[..., BareRepo], kubeconfig: Path, tmp_path: Path
) -> None:
    """gitsync's own render (kustomize, path checks, validation) takes config/ from Git."""
    repo = make_repo("deploy")
    repo.commit(CONFIG, message="config")
    result = subprocess.run(
        [
            GITSYNC, "render", "--repo", repo.file_url, "--path", ".",
            "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert {"Deployment", "ClusterRole", "Role", "ConfigMap", "Namespace"} <= kinds


@pytest.fixture
def deployed(kubectl: Kubectl, tmp_path: Path) -> Iterator[dict[str, str]]:
    """config/ with the broad component, under a unique namespace and name suffix."""
    suffix = secrets.token_hex(3)
    ns = f"t-gitsync-system-{suffix}"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = tmp_path / "base"
    subprocess.run(["cp", "-r", str(CONFIG), str(base)], check=True)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": ns,
                "nameSuffix": f"-{suffix}",
                "resources": ["../base"],
                # The broad role (opt-in): this test syncs an app without serviceAccount.
                "components": ["../base/broad"],
                "labels": [{"pairs": {"gitsync.test/namespace": "true"}}],
            }
        )
    )
    kubectl("apply", "-k", str(overlay), timeout=120)
    try:
        yield {"namespace": ns, "suffix": suffix, "overlay": str(overlay)}
    finally:
        kubectl("delete", "-k", str(overlay), "--wait=false", "--ignore-not-found", check=False)


def _kubeconfig_for_token(admin: Path, token: str, out: Path) -> Path:
    cfg = yaml.safe_load(admin.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    out.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": cluster}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    return out


def test_config_applies_becomes_available_and_its_serviceaccount_can_sync_but_not_escalate(
    *,
    deployed: dict[str, str],
    kubectl: Kubectl,
    kubeconfig: Path,
    tmp_path: Path,
    make_repo: Callable[..., BareRepo],
    namespace: str,
    controllers: Callable[..., ControllerProcess],
) -> None:
    """Deployment Available on KWOK nodes; a gitsync on the SA's token syncs; escalation refused."""
    ns, suffix = deployed["namespace"], deployed["suffix"]
    name = f"gitsync-{suffix}"

    def available() -> dict[str, Any] | None:
        dep = json.loads(kubectl("get", "deployment", name, "-n", ns, "-o", "json").stdout)
        status = dep.get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        ok = status.get("availableReplicas") == 2 and conditions.get("Available") == "True"
        return dep if ok else None

    wait_until(available, timeout=60, what="gitsync Deployment Available")

    token = kubectl("create", "token", name, "-n", ns, "--duration=10m").stdout.strip()
    sa_kubeconfig = _kubeconfig_for_token(kubeconfig, token, tmp_path / "sa.kubeconfig")
    as_sa = Kubectl(kubectl.binary, sa_kubeconfig)

    repo = make_repo("sa-app")
    repo.commit(
        {
            "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: via-sa\n"
            "data:\n  who: gitsync\n"
        }
    )
    proc = controllers(
        {
            "stateNamespace": ns,
            "apps": [{"name": "sa-app", "repo": repo.file_url, "namespace": namespace}],
            "controller": {"leaderElection": lease_config()},
        },
        kubeconfig_path=sa_kubeconfig,
    )
    proc.wait_event("sync.done", app="sa-app", result="synced")
    proc.wait_event("leader.acquired")
    out = kubectl("get", "configmap", "via-sa", "-n", namespace, "-o", "json").stdout
    assert json.loads(out)["data"] == {"who": "gitsync"}
    assert proc.terminate() == 0
    assert json.loads(kubectl("get", "lease", "gitsync-leader", "-n", ns, "-o", "json").stdout)

    # What the ServiceAccount must not do.
    sa = f"system:serviceaccount:{ns}:{name}"
    refused = [
        (
            "create",
            "clusterrolebinding",
            f"x-{suffix}",
            "--clusterrole=cluster-admin",
            f"--user={sa}",
        ),
        ("auth", "can-i", "impersonate", "users"),
        ("auth", "can-i", "escalate", "clusterroles"),
        ("auth", "can-i", "deletecollection", "pods", "-n", namespace),
        ("auth", "can-i", "approve", "certificatesigningrequests"),
    ]
    for args in refused:
        result = as_sa(*args, check=False)
        assert result.returncode != 0, f"{args} was allowed: {result.stdout}"
        if args[0] == "create":
            assert "forbidden" in result.stderr.lower()
