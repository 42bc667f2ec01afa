"""Per-app limits: namespace globs, cluster-scoped kind rules, every offender with file:line."""

from pathlib import Path

import pytest

from gitsync.cli import main
from gitsync.config import parse
from gitsync.engine.limits import Limits, enforce, outside, violations
from gitsync.errors import ConfigError, LimitError
from gitsync.model import Manifest, ManifestSet, ObjectRef

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _ref(kind: str, namespace: str = "", name: str = "x", group: str = "") -> ObjectRef:
    return ObjectRef(group=group, version="v1", kind=kind, namespace=namespace, name=name)


def _manifest(kind: str, namespace: str, name: str, source: str, api: str = "v1") -> Manifest:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return Manifest(obj={"apiVersion": api, "kind": kind, "metadata": meta}, source=source)


@pytest.mark.parametrize(
    ("patterns", "namespace", "allowed"),
    [
        (("shop",), "shop", True),
        (("shop",), "shop-dev", False),
        (("team-*",), "team-a", True),
        (("team-*",), "team", False),
        (("ci-?",), "ci-1", True),
        (("ci-?",), "ci-12", False),
        (("a", "b-[0-9]"), "b-7", True),
        (("a", "b-[0-9]"), "b-x", False),
        ((), "anything", False),
    ],
)
def test_namespace_globs(patterns, namespace, allowed):
    """Names match exactly, globs as fnmatch (case-sensitive); an empty list allows none."""
    limits = Limits(namespaces=patterns)
    assert limits.namespace_allowed(namespace) is allowed
    assert limits.allows(_ref("ConfigMap", namespace)) is allowed


def test_no_limits_allow_everything():
    """Without allowedNamespaces and clusterScoped an app is unlimited."""
    limits = Limits()
    assert limits.unlimited
    assert limits.allows(_ref("ClusterRole", group="rbac.authorization.k8s.io"))
    assert limits.allows(_ref("ConfigMap", "kube-system"))


def test_cluster_scoped_deny_and_kind_lists():
    """deny refuses every cluster-scoped kind; a list allows Kind or Kind.group only."""
    role = _ref("ClusterRole", group="rbac.authorization.k8s.io")
    crd = _ref("CustomResourceDefinition", group="apiextensions.k8s.io")
    deny = Limits(cluster_kinds="deny")
    assert "clusterScoped: deny" in deny.why_not(role)
    assert deny.allows(_ref("ConfigMap", "shop"))  # namespaced kinds are not concerned
    listed = Limits(cluster_kinds=("ClusterRole", "CustomResourceDefinition.apiextensions.k8s.io"))
    assert listed.allows(role)
    assert listed.allows(crd)
    assert not listed.allows(_ref("CustomResourceDefinition", group="other.example"))
    assert "not in clusterScoped" in listed.why_not(
        _ref("PriorityClass", group="scheduling.k8s.io")
    )


def test_namespace_object_needs_its_kind_and_an_allowed_name():
    """A Namespace is cluster-scoped and must also be one of the allowed namespaces."""
    limits = Limits(namespaces=("team-*",), cluster_kinds=("Namespace",))
    assert limits.allows(_ref("Namespace", name="team-a"))
    assert "not in allowedNamespaces" in limits.why_not(_ref("Namespace", name="prod"))
    assert not Limits(namespaces=("team-*",), cluster_kinds="deny").allows(
        _ref("Namespace", name="team-a")
    )


def test_enforce_reports_every_offender_with_file_and_line():
    """All offenders are listed, each with file:line; allowed objects are not."""
    manifests = ManifestSet(
        manifests=(
            _manifest("ConfigMap", "shop", "ok", "app.yaml:1"),
            _manifest("ConfigMap", "prod", "far", "app.yaml:9"),
            _manifest("ClusterRole", "", "admin", "rbac.yaml:3", "rbac.authorization.k8s.io/v1"),
        )
    )
    limits = Limits(namespaces=("shop",), cluster_kinds="deny")
    with pytest.raises(LimitError) as e:
        enforce(manifests, limits, app="shop")
    text = str(e.value)
    assert "2 object(s) outside the limits of app 'shop'" in text
    assert "app.yaml:9: ConfigMap prod/far: namespace 'prod' is not in allowedNamespaces" in text
    assert "rbac.yaml:3: ClusterRole.rbac.authorization.k8s.io admin: cluster-scoped" in text
    assert "app.yaml:1" not in text
    assert len(violations(manifests, limits)) == 2


def test_outside_picks_what_prune_and_rollback_leave_alone():
    """outside() returns exactly the refs the limits forbid."""
    limits = Limits(namespaces=("shop",), cluster_kinds=("Namespace",))
    refs = [_ref("ConfigMap", "shop"), _ref("ConfigMap", "prod"), _ref("Namespace", name="shop")]
    assert outside(refs, limits) == [refs[1]]


def test_config_fields_parse_and_validate():
    """serviceAccount, allowedNamespaces and clusterScoped parse; bad values name the key."""
    app = {"name": "shop", "repo": "https://git.example.test/x.git"}
    cfg = parse(
        {
            "apps": [
                {
                    **app,
                    "serviceAccount": {"name": "deployer", "namespace": "shop"},
                    "allowedNamespaces": ["shop", "shop-*"],
                    "clusterScoped": ["Namespace"],
                }
            ]
        }
    )
    (a,) = cfg.apps
    assert a.service_account is not None
    assert a.service_account.username == "system:serviceaccount:shop:deployer"
    assert a.limits == Limits(namespaces=("shop", "shop-*"), cluster_kinds=("Namespace",))
    assert (
        parse({"apps": [{**app, "clusterScoped": "deny"}]}).apps[0].limits.cluster_kinds == "deny"
    )
    assert parse({"apps": [app]}).apps[0].limits.unlimited
    with pytest.raises(ConfigError, match=r"apps\[0\]\.clusterScoped: 'allow': give 'deny'"):
        parse({"apps": [{**app, "clusterScoped": "allow"}]})
    with pytest.raises(ConfigError, match=r"apps\[0\]\.allowedNamespaces"):
        parse({"apps": [{**app, "allowedNamespaces": ["Shop/x"]}]})
    with pytest.raises(ConfigError, match=r"apps\[0\]\.serviceAccount\.namespace"):
        parse({"apps": [{**app, "serviceAccount": {"name": "deployer"}}]})


def test_lint_reports_limits_offline(capsys):
    """lint names each object outside the limits with file:line and exits 1."""
    args = ["lint", str(FIXTURES / "manifests"), "--namespace", "gitsync-demo"]
    assert main(args) == 0
    capsys.readouterr()
    limited = [*args, "--allowed-namespace", "gitsync-*", "--cluster-scoped", "Namespace"]
    assert main(limited) == 1
    out = capsys.readouterr().out
    assert (
        "09-crd.yaml:1: CustomResourceDefinition.apiextensions.k8s.io widgets.gitsync.test" in out
    )
    assert "not in clusterScoped ['Namespace']" in out
    assert "08-namespace.yaml" not in out
    assert "01-deployment.yaml" not in out
    assert "1 object(s) outside the app's limits" in out


def test_lint_reads_limits_from_config(tmp_path, capsys):
    """lint --config --app checks against that app's limits."""
    cfg = tmp_path / "gitsync.yaml"
    cfg.write_text(
        "apps:\n"
        "  - name: demo\n"
        "    repo: https://git.example.test/x.git\n"
        "    allowedNamespaces: [other]\n"
        "    clusterScoped: deny\n",
        encoding="utf-8",
    )
    args = ["lint", str(FIXTURES / "manifests"), "--namespace", "gitsync-demo"]
    assert main([*args, "--config", str(cfg), "--app", "demo", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "01-deployment.yaml:1: Deployment.apps gitsync-demo/web: namespace 'gitsync-demo'" in out
    assert "08-namespace.yaml:1: Namespace gitsync-demo: cluster-scoped Namespace is denied" in out


def test_rollback_acts_only_within_the_limits():
    """The state a rollback gets holds no object outside the limits; those are reported."""
    from gitsync.engine.inventory import AppState, InventoryEntry
    from gitsync.engine.recovery import _within_limits

    inside, far = _ref("ConfigMap", "shop", "a"), _ref("ConfigMap", "prod", "b")
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "prod"}}
    state = AppState(
        app="shop",
        inventory=(InventoryEntry(ref=inside), InventoryEntry(ref=far)),
        pending=(InventoryEntry(ref=far),),
        healthy_manifests=(obj,),
    )
    within, fenced = _within_limits(state, Limits(namespaces=("shop",)))
    assert fenced == {far}
    assert [e.ref for e in within.inventory] == [inside]
    assert within.pending == ()
    assert within.healthy_manifests == ()
    assert _within_limits(state, Limits()) == (state, frozenset())
