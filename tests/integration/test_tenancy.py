"""Per-app identity and limits on the real cluster, whose API server enforces RBAC."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from gitsync.cli import main
from gitsync.drift.watcher import DriftSettings, DriftWatcher
from gitsync.engine import inventory
from gitsync.engine.sync import app_kube
from gitsync.errors import KubeError
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from gitsync.model import KubeObject
from tests.support.app_fixtures import App, ref
from tests.support.cluster_fixtures import Kubectl, wait_until
from tests.support.controller_process import ControllerProcess, lease_config
from tests.support.log_capture import Recorder
from tests.support.manifests import deployment
from tests.support.repos import BareRepo

pytestmark = [pytest.mark.cluster, pytest.mark.git]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: NAME\n  namespace: NS\ndata:\n  k: v\n"
CLUSTER_ROLE = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: NAME
rules:
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list"]
"""
# What an app's ServiceAccount needs for workloads: write them, and read what the plan
# (HPAs) and the health gate (ReplicaSets, Pods) look at.
APP_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["", "apps"],
        "resources": ["configmaps", "deployments"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {
        "apiGroups": ["", "apps", "autoscaling"],
        "resources": ["pods", "replicasets", "horizontalpodautoscalers"],
        "verbs": ["get", "list", "watch"],
    },
]


def cm(name: str, ns: str = "{ns}") -> str:
    return CM.replace("NAME", name).replace("NS", ns)


def _ensure_namespace(kube: Kube, ns: str) -> None:
    if kube.get(ref("Namespace", ns)) is None:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})


def grant(kube: Kube, ns: str, sa: str, rules: list[dict[str, Any]] = APP_RULES) -> None:
    """A ServiceAccount in ``ns`` holding ``rules`` in ``ns`` only (a Role + RoleBinding)."""
    _ensure_namespace(kube, ns)
    rbac = "rbac.authorization.k8s.io/v1"
    objs: list[KubeObject] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}},
        {
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": {"name": sa, "namespace": ns},
            "rules": rules,
        },
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": {"name": sa, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        },
    ]
    for obj in objs:
        kube.apply(obj, manager="test")
    # The authorizer sees a new RoleBinding through its informer, a moment later.
    as_sa = kube.impersonate(f"system:serviceaccount:{ns}:{sa}")
    res = kube.discover().resource("", "v1", "ConfigMap")
    assert res is not None

    def granted() -> bool:
        try:
            as_sa.list_objects(res, namespace=ns, limit=1)
        except KubeError as e:
            if e.status != 403:
                raise
            return False
        return True

    wait_until(granted, timeout=30, what=f"RoleBinding of {sa} in effect")


def test_app_runs_as_its_serviceaccount(app: App, kube: Kube) -> None:
    """A namespace-scoped SA: a ClusterRole is refused at dry-run (403 naming object and SA),
    nothing written, no rollback; within its rights it syncs, prunes and rolls back."""
    grant(kube, app.ns, "deployer")
    sa = {"serviceAccount": {"name": "deployer", "namespace": app.ns}}
    v1 = app.commit({"web.yaml": deployment(), "a.yaml": cm("a"), "b.yaml": cm("b")}, "v1")
    first = app.sync(**sa)
    assert first.result == "synced", first.error
    live = kube.get(ref("ConfigMap", "a", app.ns))
    assert live is not None
    managers = {m["manager"] for m in live["metadata"]["managedFields"]}
    assert managers == {f"gitsync-{app.name}"}

    role = f"reader-{app.ns}"
    files = {"web.yaml": deployment(), "a.yaml": cm("a"), "b.yaml": cm("b")}
    app.commit({**files, "role.yaml": CLUSTER_ROLE.replace("NAME", role)}, "adds a ClusterRole")
    with structlog.testing.capture_logs() as logs:
        refused = app.sync(**sa)
    assert refused.result == "failed"
    assert refused.refused
    assert "role.yaml:1" in refused.error
    assert f"ClusterRole.rbac.authorization.k8s.io {role}" in refused.error
    assert f"as ServiceAccount {app.ns}/deployer" in refused.error
    assert f'User "system:serviceaccount:{app.ns}:deployer" cannot patch' in refused.error
    assert kube.get(ref("ClusterRole", role, group="rbac.authorization.k8s.io")) is None
    events = [e["event"] for e in logs]
    assert "rollback.started" not in events
    assert "sync.applied" not in events
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert state.revision == v1
    assert state.quarantined == ()

    app.commit({"web.yaml": deployment(image="web:2"), "a.yaml": cm("a")}, "v2 prunes b")
    second = app.sync(**sa)
    assert second.result == "synced", second.error
    assert second.counts["pruned"] == 1
    assert kube.get(ref("ConfigMap", "b", app.ns)) is None

    bad = app.commit(
        {"web.yaml": deployment(image="web:3", behavior="crashloop"), "a.yaml": cm("a")}, "v3"
    )
    third = app.sync(**sa)
    assert third.result == "rolled-back", third.error
    assert third.revision == bad
    web = kube.get(ref("Deployment", "web", app.ns, "apps"))
    assert web is not None
    assert web["spec"]["template"]["spec"]["containers"][0]["image"] == "web:2"


def test_limits_refuse_every_offender_with_file_and_line(
    app: App, kube: Kube, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outside allowedNamespaces and a denied cluster-scoped kind: refused, all listed,
    nothing written; `sync --once` exits 2 and `diff` reports the same."""
    _ensure_namespace(kube, app.ns)
    other = f"{app.ns}-other"
    role = f"limits-{app.ns}"
    app.commit(
        {
            "a.yaml": cm("inside"),
            "b.yaml": "# elsewhere\n" + cm("outside", other),
            "role.yaml": CLUSTER_ROLE.replace("NAME", role),
        }
    )
    limits = {"allowedNamespaces": [app.ns], "clusterScoped": "deny"}
    result = app.sync(**limits)
    assert result.refused
    assert "2 object(s) outside the limits" in result.error
    assert (
        f"b.yaml:2: ConfigMap {other}/outside: namespace '{other}' is not in allowedNamespaces"
        in result.error
    )
    assert (
        f"role.yaml:1: ClusterRole.rbac.authorization.k8s.io {role}: cluster-scoped "
        "ClusterRole.rbac.authorization.k8s.io is denied (clusterScoped: deny)" in result.error
    )
    assert "a.yaml" not in result.error
    assert kube.get(ref("ConfigMap", "inside", app.ns)) is None
    assert kube.get(ref("ClusterRole", role, group="rbac.authorization.k8s.io")) is None

    cfg = tmp_path / "gitsync.yaml"
    raw = {
        "stateNamespace": app.ctx.state_namespace,
        "apps": [{"name": app.name, "repo": app.repo.file_url, "namespace": app.ns, **limits}],
    }
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    common = ["--config", str(cfg), "--kubeconfig", str(kubeconfig)]
    common += ["--cache-dir", str(tmp_path / "cli-cache")]
    capsys.readouterr()
    assert main(["sync", "--once", *common]) == 2
    assert main(["diff", *common]) == 2
    err = capsys.readouterr().err
    assert f"b.yaml:2: ConfigMap {other}/outside" in err
    assert kube.get(ref("ConfigMap", "inside", app.ns)) is None


def test_prune_never_deletes_outside_the_limits(app: App, kube: Kube) -> None:
    """Limits narrowed after a sync: what left Git outside them is kept, not deleted."""
    other = f"{app.ns}-x"
    for ns in (app.ns, other):
        _ensure_namespace(kube, ns)
    try:
        app.commit({"a.yaml": cm("a"), "b.yaml": cm("b", other), "c.yaml": cm("c")})
        assert app.sync().result == "synced"
        app.commit({"a.yaml": cm("a")}, "b and c leave Git")
        with structlog.testing.capture_logs() as logs:
            result = app.sync(allowedNamespaces=[app.ns])
        assert result.result == "synced", result.error
        assert kube.get(ref("ConfigMap", "b", other)) is not None
        assert kube.get(ref("ConfigMap", "c", app.ns)) is None
        (fenced,) = [e for e in logs if e["event"] == "prune.outside_limits"]
        assert fenced["object"] == f"ConfigMap {other}/b"
        state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
        assert ref("ConfigMap", "b", other) in [e.ref for e in state.inventory]
    finally:
        kube.delete(ref("Namespace", other))


# --- gitsync with the restricted config/ role and its own token ---------------------------


@pytest.fixture
def restricted(kubectl: Kubectl, tmp_path: Path) -> Iterator[dict[str, str]]:
    """config/ as shipped (restricted ClusterRole), unique namespace and suffix."""
    # A letter first: "-7e1234" would be a number to kustomize's YAML parser.
    suffix = "r" + secrets.token_hex(3)
    ns = f"t-gitsync-{suffix}"
    base = tmp_path / "base"
    subprocess.run(["cp", "-r", str(CONFIG), str(base)], check=True)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": ns,
        "nameSuffix": f"-{suffix}",
        "resources": ["../base"],
        "labels": [{"pairs": {"gitsync.test/namespace": "true"}}],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    kubectl("apply", "-k", str(overlay), timeout=120)
    try:
        yield {"namespace": ns, "suffix": suffix, "name": f"gitsync-{suffix}"}
    finally:
        kubectl("delete", "-k", str(overlay), "--wait=false", "--ignore-not-found", check=False)


def _token_kubeconfig(admin: Path, token: str, out: Path) -> Path:
    cluster = yaml.safe_load(admin.read_text())["clusters"][0]["cluster"]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
        "current-context": "sa",
    }
    out.write_text(yaml.safe_dump(cfg))
    return out


def test_restricted_role_syncs_two_apps_as_their_serviceaccounts_and_nothing_else(
    *,
    restricted: dict[str, str],
    kube: Kube,
    kubectl: Kubectl,
    kubeconfig: Path,
    tmp_path: Path,
    make_repo: Callable[..., BareRepo],
    controllers: Callable[..., ControllerProcess],
) -> None:
    """The shipped role + gitsync's own token: two apps sync as two SAs; gitsync itself
    can read no app Secret, write no app object, impersonate no one else."""
    ns, suffix, name = restricted["namespace"], restricted["suffix"], restricted["name"]
    apps = {"one": f"gs-one-{suffix}", "two": f"gs-two-{suffix}"}
    sas = {key: f"deployer-{key}-{suffix}" for key in apps}
    try:
        for key, app_ns in apps.items():
            grant(kube, app_ns, sas[key])
        patch = [{"op": "replace", "path": "/rules/0/resourceNames", "value": list(sas.values())}]
        kubectl("patch", "clusterrole", name, "--type=json", "-p", json.dumps(patch))
        kubectl("create", "secret", "generic", "private", "-n", apps["two"], "--from-literal=k=v")

        token = kubectl("create", "token", name, "-n", ns, "--duration=10m").stdout.strip()
        token_cfg = _token_kubeconfig(kubeconfig, token, tmp_path / "sa.kubeconfig")
        as_gitsync = Kubectl(kubectl.binary, token_cfg)

        repos = {}
        for key, app_ns in apps.items():
            repos[key] = make_repo(f"tenant-{key}")
            repos[key].commit({"cm.yaml": cm(f"from-{key}", app_ns)})
        config = {
            "stateNamespace": ns,
            "controller": {"leaderElection": lease_config()},
            "apps": [
                {
                    "name": f"tenant-{key}",
                    "repo": repos[key].file_url,
                    "namespace": app_ns,
                    "serviceAccount": {"name": sas[key], "namespace": app_ns},
                    "interval": "2s",
                }
                for key, app_ns in apps.items()
            ],
        }
        proc = controllers(config, kubeconfig_path=token_cfg)
        for key in apps:
            proc.wait_event("sync.done", app=f"tenant-{key}", result="synced", timeout=60)
        for key, app_ns in apps.items():
            live = kube.get(ref("ConfigMap", f"from-{key}", app_ns))
            assert live is not None
            assert live["metadata"]["labels"]["gitsync.io/app"] == f"tenant-{key}"

        # A commit of app one that writes into app two's namespace: its SA may not.
        repos["one"].commit(
            {"cm.yaml": cm("from-one", apps["one"]), "x.yaml": cm("intruder", apps["two"])},
            message="reach across",
        )
        failed = proc.wait_event("sync.failed", app="tenant-one", stage="plan", timeout=60)
        assert f"as ServiceAccount {apps['one']}/{sas['one']}" in failed["error"]
        assert "x.yaml:1" in failed["error"]
        assert kube.get(ref("ConfigMap", "intruder", apps["two"])) is None
        assert proc.terminate() == 0

        me = f"system:serviceaccount:{ns}:{name}"
        allowed = [
            ("impersonate", f"serviceaccount/{sas['one']}", "-n", apps["one"]),
            ("impersonate", f"serviceaccount/{sas['two']}", "-n", apps["two"]),
            ("list", "secrets", "-n", ns),
            ("create", "events", "-n", apps["one"]),
        ]
        refused = [
            ("get", "secrets", "-n", apps["two"]),
            ("list", "secrets", "--all-namespaces"),
            ("create", "configmaps", "-n", apps["one"]),
            ("delete", "deployments", "-n", apps["one"]),
            ("create", "clusterroles"),
            ("impersonate", "serviceaccount/default", "-n", apps["one"]),
            ("impersonate", "users"),
            ("impersonate", "groups"),
            ("create", "serviceaccounts/token", "-n", apps["one"]),
            ("create", "pods/exec", "-n", apps["one"]),
            ("escalate", "clusterroles"),
            ("bind", "clusterroles"),
        ]
        for args in allowed:
            result = kubectl("auth", "can-i", *args, f"--as={me}", check=False)
            assert result.stdout.strip() == "yes", f"{args}: {result.stdout} {result.stderr}"
        for args in refused:
            result = kubectl("auth", "can-i", *args, f"--as={me}", check=False)
            assert result.stdout.strip() == "no", f"{args} was allowed"
        # Real attempts with gitsync's own token.
        attempt = as_gitsync("get", "secret", "private", "-n", apps["two"], check=False)
        assert attempt.returncode != 0
        assert "forbidden" in attempt.stderr.lower()
        as_other = as_gitsync(
            "get", "configmaps", "-n", apps["one"],
            f"--as=system:serviceaccount:{apps['one']}:default", check=False,
        )  # fmt: skip
        assert as_other.returncode != 0
        assert "cannot impersonate" in as_other.stderr.lower()
        as_app = as_gitsync(
            "get", "secret", "private", "-n", apps["two"],
            f"--as=system:serviceaccount:{apps['one']}:{sas['one']}", check=False,
        )  # fmt: skip
        assert as_app.returncode != 0
        assert "forbidden" in as_app.stderr.lower()
    finally:
        for app_ns in apps.values():
            kube.delete(ref("Namespace", app_ns))


def _whoami(client: Kube) -> dict[str, Any]:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    out: dict[str, Any] = client.request("POST", path, verb="create", body=review)
    return dict(out["status"]["userInfo"])


def test_api_server_sees_the_impersonated_serviceaccount(kube: Kube, namespace: str) -> None:
    """SelfSubjectReview: the SA's name and its fixed groups, added by the API server."""
    sa = f"system:serviceaccount:{namespace}:deployer"
    assert _whoami(kube)["username"] != sa
    who = _whoami(kube.impersonate(sa))
    assert who["username"] == sa
    assert set(who["groups"]) == {
        "system:serviceaccounts",
        f"system:serviceaccounts:{namespace}",
        "system:authenticated",
    }
    explicit = _whoami(kube.impersonate(sa, ["system:serviceaccounts", "team-a"]))
    assert set(explicit["groups"]) == {"system:serviceaccounts", "team-a", "system:authenticated"}


def _drift_watcher(app: App, kube: Kube, hub: Informers, recorder: Recorder) -> DriftWatcher:
    config = app.config(serviceAccount={"name": "deployer", "namespace": app.ns})
    return DriftWatcher(
        app_kube(config, app.ctx),
        config,
        app.ctx.state_namespace,
        recorder.logger(app=app.name),
        settings=DriftSettings(debounce=0.3, settle=0.5, retry_max=1.0, missing_kind_retry=2.0),
        state_kube=kube,
        informers=hub,
    )


@pytest.mark.parametrize("cluster_read", [True, False], ids=["cluster-read", "roles-only"])
def test_drift_of_an_app_with_its_own_serviceaccount_reads_as_that_account(
    app: App, kube: Kube, kubectl: Kubectl, cluster_read: bool
) -> None:
    """The shared informers (gitsync's identity) serve the app its state only; its objects
    are read as its ServiceAccount. With cluster-wide read, changes are reported live;
    with Roles only, the watch is refused and the objects are compared once, by GET."""
    grant(kube, app.ns, "deployer")
    if cluster_read:
        reader = f"drift-reader-{app.ns}"
        kubectl("create", "clusterrole", reader, "--verb=get,list,watch", "--resource=configmaps")
        kubectl(
            "create",
            "clusterrolebinding",
            reader,
            f"--clusterrole={reader}",
            f"--serviceaccount={app.ns}:deployer",
        )
    app.commit({"a.yaml": cm("a")}, "v1")
    assert app.sync(serviceAccount={"name": "deployer", "namespace": app.ns}).result == "synced"
    kubectl("patch", "configmap", "a", "-n", app.ns, "-p", '{"data":{"k":"before"}}')
    hub, recorder = Informers(kube), Recorder()
    watcher = _drift_watcher(app, kube, hub, recorder)
    try:
        watcher.start()
        assert watcher.informers is not hub  # objects are not read as gitsync
        assert watcher.state_informers is hub  # the state is
        found = recorder.wait("drift.detected", field="data.k", timeout=30)
        assert found["live"] == "before"
        kubectl("patch", "configmap", "a", "-n", app.ns, "-p", '{"data":{"k":"after"}}')
        if cluster_read:
            changed = recorder.wait("drift.detected", field="data.k", live="after", timeout=30)
            assert changed["manager"] == "kubectl-patch"
        else:
            assert recorder.find("informer.forbidden")
    finally:
        watcher.stop()
        hub.stop()
        if cluster_read:
            kubectl("delete", "clusterrolebinding,clusterrole", f"drift-reader-{app.ns}")
