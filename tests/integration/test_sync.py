"""The sync engine against the real local cluster and real Git repositories."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gitsync.cli import main
from gitsync.engine import inventory
from gitsync.engine.sync import prepare
from gitsync.kube import Kube, Resource
from gitsync.model import ObjectRef
from tests.support.app_fixtures import App
from tests.support.app_fixtures import ref as _ref

pytestmark = [pytest.mark.cluster, pytest.mark.git]

WRITES = ("apply", "create", "update", "delete", "patch")

# Files named so that plain path order is the REVERSE of dependency order.
FULL_APP = {
    "a-widget.yaml": """\
apiVersion: {group}/v1
kind: Widget
metadata:
  name: sprocket
  namespace: {ns}
spec:
  size: 3
""",
    "b-deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      serviceAccountName: web
      containers:
        - name: web
          image: registry.invalid/web:1
""",
    "c-service.yaml": """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
""",
    "d-config.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: {ns}
data:
  mode: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: {ns}
stringData:
  password: hunter2-{ns}
""",
    "e-rbac.yaml": """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: {ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: web-reader
  namespace: {ns}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: web-reader
  namespace: {ns}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: web-reader}}
subjects: [{{kind: ServiceAccount, name: web, namespace: {ns}}}]
""",
    "f-namespace.yaml": """\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
""",
    "g-crd.yaml": """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {{type: integer}}
""",
}


def _writes(kube: Kube) -> int:
    return sum(kube.calls[v] for v in WRITES)


def _rv(kube: Kube, ref: ObjectRef) -> int:
    obj = kube.get(ref)
    assert obj is not None, f"{ref} was not created"
    return int(obj["metadata"]["resourceVersion"])


class CreationWatch:
    """Records the resourceVersion of each ADDED event: the API's own creation order."""

    def __init__(self, kube: Kube, kinds: list[tuple[str, str, str]]) -> None:
        self.added: dict[tuple[str, str], int] = {}
        self._threads = []
        disc = kube.discover(refresh=True)
        for group, version, kind in kinds:
            res = disc.resource(group, version, kind)
            assert res is not None
            _items, rv = kube.list_objects(res)
            t = threading.Thread(target=self._run, args=(kube, res, rv), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, kube: Kube, res: Resource, rv: str) -> None:
        for etype, obj, _line in kube.watch(res, resource_version=rv, timeout_seconds=3):
            if etype == "ADDED":
                key = (res.kind, obj["metadata"]["name"])
                self.added[key] = int(obj["metadata"]["resourceVersion"])

    def wait(self) -> dict[tuple[str, str], int]:
        for t in self._threads:
            t.join(timeout=10)
        return self.added


def test_first_sync_creates_everything_in_dependency_order(app: App, kube: Kube) -> None:
    """Files in reverse order still apply CRD, Namespace, RBAC, config, Service, workload, CR."""
    app.commit(FULL_APP)
    watch = CreationWatch(
        kube,
        [
            ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            ("", "v1", "Namespace"),
            ("", "v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io", "v1", "Role"),
            ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
            ("", "v1", "ConfigMap"),
            ("", "v1", "Secret"),
            ("", "v1", "Service"),
            ("apps", "v1", "Deployment"),
        ],
    )
    result = app.sync()
    assert result.result == "synced", result.error
    assert result.counts["create"] == 10
    ns = app.ns
    added = watch.wait()
    order = [
        added[("CustomResourceDefinition", f"widgets.{app.group}")],
        added[("Namespace", ns)],
        max(
            added[("ServiceAccount", "web")],
            added[("Role", "web-reader")],
            added[("RoleBinding", "web-reader")],
        ),
        max(added[("ConfigMap", "web-config")], added[("Secret", "web-secret")]),
        added[("Service", "web")],
        added[("Deployment", "web")],
        # Nothing writes a Widget after gitsync, so its version is its creation version.
        _rv(kube, _ref("Widget", "sprocket", ns, app.group)),
    ]
    assert order == sorted(order), f"creation order {order} is not dependency order"
    live = kube.get(_ref("ConfigMap", "web-config", ns))
    assert live is not None
    assert live["metadata"]["labels"]["gitsync.io/app"] == app.name
    assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gitsync"
    assert any(m["manager"] == f"gitsync-{app.name}" for m in live["metadata"]["managedFields"])
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert len(state.inventory) == 10
    assert state.revision == app.repo.head()


def test_resync_of_unchanged_commit_makes_no_writes_and_no_dry_runs(app: App, kube: Kube) -> None:
    """A second sync writes nothing and does one LIST per kind, no per-object calls."""
    app.commit(FULL_APP)
    assert app.sync().result == "synced"
    kube.calls.clear()
    result = app.sync()
    assert result.result == "unchanged"
    assert result.counts["unchanged"] == 10
    assert _writes(kube) == 0, dict(kube.calls)
    assert kube.calls["dry-run"] == 0
    kinds = (
        9  # CRD, Namespace, SA, Role, RoleBinding, ConfigMap, Secret, Service, Deployment, Widget
    )
    assert kube.calls["list"] <= kinds + 1
    # Only the state Secret is read with a GET.
    assert kube.calls["get"] <= 1


def test_one_field_change_patches_exactly_that_object(app: App, kube: Kube) -> None:
    """Changing one ConfigMap value dry-runs and applies only that ConfigMap."""
    app.commit(FULL_APP)
    assert app.sync().result == "synced"
    app.commit(FULL_APP | {"d-config.yaml": FULL_APP["d-config.yaml"].replace("blue", "green")})
    prep = prepare(app.config(), app.ctx)
    updates = [c for c in prep.plan.changes if c.action.value == "update"]
    assert [str(c.ref) for c in updates] == [f"ConfigMap {app.ns}/web-config"]
    assert [(d.path, d.live, d.desired) for d in updates[0].diff] == [
        ("data.mode", "blue", "green")
    ]
    kube.calls.clear()
    result = app.sync()
    assert result.counts["update"] == 1
    assert kube.calls["apply"] == 1
    assert kube.calls["dry-run"] == 1
    live = kube.get(_ref("ConfigMap", "web-config", app.ns))
    assert live is not None
    assert live["data"]["mode"] == "green"


def test_manual_edit_is_repaired_on_next_sync(app: App, kube: Kube, kubectl: Callable) -> None:
    """A kubectl scale of a managed Deployment is seen by the next sync and undone."""
    app.commit(FULL_APP)
    assert app.sync().result == "synced"
    kubectl("scale", "deployment/web", "-n", app.ns, "--replicas=5")
    prep = prepare(app.config(), app.ctx)
    (change,) = [c for c in prep.plan.changes if c.action.value == "update"]
    assert ("spec.replicas", 5, 2) in [(d.path, d.live, d.desired) for d in change.diff]
    assert app.sync().counts["update"] == 1
    live = kube.get(_ref("Deployment", "web", app.ns, "apps"))
    assert live is not None
    assert live["spec"]["replicas"] == 2


def test_removed_file_is_pruned_but_foreign_objects_are_not(
    app: App, kube: Kube, kubectl: Callable, tmp_path: Path
) -> None:
    """Removing a file deletes its object; a look-alike not in the inventory survives."""
    app.commit(FULL_APP)
    assert app.sync().result == "synced"
    intruder = tmp_path / "intruder.yaml"
    intruder.write_text(
        f"""apiVersion: v1
kind: ConfigMap
metadata:
  name: intruder
  namespace: {app.ns}
  labels: {{gitsync.io/app: {app.name}, app.kubernetes.io/managed-by: gitsync}}
"""
    )
    kubectl("apply", "-f", str(intruder))
    without_service = {k: v for k, v in FULL_APP.items() if k != "c-service.yaml"}
    app.commit(without_service)
    result = app.sync()
    assert result.result == "synced", result.error
    assert result.counts["pruned"] == 1
    assert kube.get(_ref("Service", "web", app.ns)) is None
    assert kube.get(_ref("ConfigMap", "intruder", app.ns)) is not None
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert len(state.inventory) == 9


def test_prune_false_annotation_keeps_object(app: App, kube: Kube) -> None:
    """An object annotated gitsync.io/prune: "false" outlives its file."""
    keep = FULL_APP["c-service.yaml"].replace(
        "  name: web\n", '  name: web\n  annotations: {{gitsync.io/prune: "false"}}\n', 1
    )
    app.commit(FULL_APP | {"c-service.yaml": keep})
    assert app.sync().result == "synced"
    app.commit({k: v for k, v in FULL_APP.items() if k != "c-service.yaml"})
    result = app.sync()
    assert result.counts["pruned"] == 0
    assert kube.get(_ref("Service", "web", app.ns)) is not None


def test_mass_delete_guard_keeps_objects(app: App, kube: Kube) -> None:
    """A commit that would delete more than half of the app prunes nothing."""
    app.commit(FULL_APP)
    assert app.sync().result == "synced"
    app.commit({k: FULL_APP[k] for k in ("f-namespace.yaml", "d-config.yaml")})
    result = app.sync()
    assert result.result == "unchanged", "nothing was written or deleted"
    assert "more than half" in result.prune_guard
    assert kube.get(_ref("Service", "web", app.ns)) is not None
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert len(state.inventory) == 10, "guarded objects stay in the inventory"


def test_object_rejected_by_dry_run_changes_nothing(app: App, kube: Kube) -> None:
    """One invalid object fails the whole sync before any write: nothing is half-applied."""
    bad = FULL_APP["b-deployment.yaml"].replace("replicas: 2", "replicas: many")
    app.commit(
        {
            "f-namespace.yaml": FULL_APP["f-namespace.yaml"],
            "d-config.yaml": FULL_APP["d-config.yaml"],
        }
    )
    assert app.sync().result == "synced"
    app.commit(FULL_APP | {"b-deployment.yaml": bad})
    kube.calls.clear()
    result = app.sync()
    assert result.result == "failed"
    assert "b-deployment.yaml" in result.error
    assert "replicas" in result.error
    assert kube.get(_ref("Service", "web", app.ns)) is None
    assert kube.calls["apply"] == 0


def test_render_error_changes_nothing(app: App, kube: Kube) -> None:
    """Broken YAML is reported with file:line, nothing of the app reaches the cluster, and
    the refusal is recorded in the app's state."""
    app.commit(FULL_APP | {"h-broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: [oops\n"})
    kube.calls.clear()
    result = app.sync()
    assert result.result == "failed"
    assert "h-broken.yaml:" in result.error
    assert _writes(kube) == 0
    assert kube.get(_ref("Namespace", app.ns)) is None
    state = inventory.read_state(kube, app=app.name, namespace=app.ctx.state_namespace)
    assert "h-broken.yaml:" in state.history[-1].reason


def test_secret_values_never_in_plan(app: App, kube: Kube) -> None:
    """A Secret's value never appears in the plan's diff, created or changed."""
    app.commit(FULL_APP)
    prep = prepare(app.config(), app.ctx)
    assert f"hunter2-{app.ns}" not in repr(prep.plan)
    assert app.sync().result == "synced"
    app.commit(
        FULL_APP | {"d-config.yaml": FULL_APP["d-config.yaml"].replace("hunter2", "swordfish")}
    )
    prep = prepare(app.config(), app.ctx)
    text = repr(prep.plan)
    assert "swordfish" not in text
    assert "hunter2" not in text
    (change,) = [c for c in prep.plan.changes if c.action.value == "update"]
    assert [d.path for d in change.diff] == ["data.password"]


def test_adopting_a_client_side_applied_object_takes_over_its_fields(
    app: App, kube: Kube, kubectl: Callable, tmp_path: Path
) -> None:
    """An object first made by client-side `kubectl apply` loses keys Git does not have."""
    kubectl("create", "namespace", app.ns)
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text(
        f"""apiVersion: v1
kind: ConfigMap
metadata:
  name: legacy
  namespace: {app.ns}
data:
  keep: "1"
  drop: "2"
"""
    )
    kubectl("apply", "-f", str(legacy))
    before = kube.get(_ref("ConfigMap", "legacy", app.ns))
    assert before is not None
    managers = {m["manager"] for m in before["metadata"]["managedFields"]}
    assert "kubectl-client-side-apply" in managers
    app.commit(
        {
            "cm.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: legacy
  namespace: {ns}
data:
  keep: "1"
"""
        }
    )
    result = app.sync()
    assert result.result == "synced", result.error
    live = kube.get(_ref("ConfigMap", "legacy", app.ns))
    assert live is not None
    assert live["data"] == {"keep": "1"}
    managers = {m["manager"] for m in live["metadata"]["managedFields"]}
    assert "kubectl-client-side-apply" not in managers
    assert "kubectl.kubernetes.io/last-applied-configuration" not in live["metadata"].get(
        "annotations", {}
    )
    assert live["metadata"]["labels"]["gitsync.io/app"] == app.name


def test_secret_value_changed_by_hand_is_restored(app: App, kube: Kube, kubectl: Callable) -> None:
    """A kubectl patch of a Secret's value (written from stringData in Git) is seen and undone."""
    app.commit(FULL_APP)
    assert app.sync().result == "synced"
    kubectl("patch", "secret/web-secret", "-n", app.ns, "-p", '{"stringData":{"password":"x"}}')
    prep = prepare(app.config(), app.ctx)
    (change,) = [c for c in prep.plan.changes if c.action.value == "update"]
    assert str(change.ref) == f"Secret {app.ns}/web-secret"
    assert [(d.path, d.live, d.desired) for d in change.diff] == [
        ("data.password", "***", "*** (changed)")
    ]
    assert app.sync().counts["update"] == 1
    live = kube.get(_ref("Secret", "web-secret", app.ns))
    assert live is not None
    assert base64.b64decode(live["data"]["password"]).decode() == f"hunter2-{app.ns}"


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
BAD_CASES = sorted(
    p.name
    for p in (FIXTURES / "bad").iterdir()
    if p.is_dir() and any(f.name != "expected.txt" for f in p.iterdir())
)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_corpus_changes_nothing(case: str, app: App, kube: Kube) -> None:
    """Each committed fixtures/bad case fails the sync, says where, and writes nothing."""
    app.repo.commit(FIXTURES / "bad" / case)
    kube.calls.clear()
    result = app.sync(namespace="demo")
    assert result.result == "failed"
    assert re.search(r"[\w./-]+:\d+: ", result.error), result.error
    assert _writes(kube) == 0, dict(kube.calls)


def test_kustomize_overlay_renders_and_syncs(app: App, kube: Kube) -> None:
    """A Kustomize overlay (base + prod patches + generator) syncs, then resyncs as a no-op."""
    app.repo.commit(FIXTURES / "kustomize")
    try:
        result = app.sync(path="overlays/prod")
        assert result.result == "synced", result.error
        deploy = kube.get(_ref("Deployment", "prod-api", "shop-prod", "apps"))
        assert deploy is not None
        assert deploy["spec"]["replicas"] == 3
        assert deploy["metadata"]["labels"]["gitsync.io/app"] == app.name
        assert app.sync(path="overlays/prod").result == "unchanged"
    finally:
        kube.delete(_ref("Namespace", "shop-prod"))


def test_cli_render_masks_secret_values(
    app: App, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gitsync render` prints Secret values as *** unless --show-secrets is given."""
    app.commit(FULL_APP)
    args = ["render", "--repo", app.repo.file_url, "--namespace", app.ns, "--app", app.name]
    args += ["--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cli-cache")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "kind: Secret" in out
    assert "hunter2" not in out
    assert "password: '***'" in out
    assert main([*args, "--show-secrets"]) == 0
    assert f"hunter2-{app.ns}" in capsys.readouterr().out


JOB = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: {ns}
  ANNOTATIONS
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: m, image: registry.invalid/migrate:IMAGE}}]
"""


def _job(image: str, *, recreate: bool = False) -> str:
    note = 'annotations: {{gitsync.io/recreate: "true"}}' if recreate else "labels: {{}}"
    return JOB.replace("IMAGE", image).replace("ANNOTATIONS", note)


def test_immutable_field_change_is_refused_unless_recreate_is_opted_in(
    app: App, kube: Kube
) -> None:
    """A Job template change fails with a hint; with the annotation the Job is recreated."""
    ns = {"ns.yaml": FULL_APP["f-namespace.yaml"]}
    app.commit(ns | {"job.yaml": _job("1")})
    assert app.sync().result == "synced"
    first = kube.get(_ref("Job", "migrate", app.ns, "batch"))
    assert first is not None

    app.commit(ns | {"job.yaml": _job("2")})
    kube.calls.clear()
    refused = app.sync()
    assert refused.result == "failed"
    assert "job.yaml:1" in refused.error
    assert "immutable" in refused.error
    assert "gitsync.io/recreate" in refused.error
    assert _writes(kube) == 0

    app.commit(ns | {"job.yaml": _job("2", recreate=True)})
    result = app.sync()
    assert result.result == "synced", result.error
    second = kube.get(_ref("Job", "migrate", app.ns, "batch"))
    assert second is not None
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    image = second["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.invalid/migrate:2"
