"""``gitsync run`` as a real process against the local cluster and real Git servers."""

from __future__ import annotations

import base64
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitsync.runtime.server import sign, sign_for_app
from tests.support.cluster_fixtures import Kubectl, wait_until
from tests.support.controller_process import ControllerProcess, lease_config
from tests.support.git_fixtures import GitHttpServer, SshServer
from tests.support.repos import BareRepo

pytestmark = [pytest.mark.cluster, pytest.mark.git]

LEASE = "gitsync-leader"


def configmap(name: str, **data: str) -> str:
    body = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in data.items())
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n{body}"


def cm_data(kubectl: Kubectl, ns: str, name: str) -> dict[str, str] | None:
    out = kubectl("get", "configmap", name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout).get("data") if out.returncode == 0 else None


def lease(kubectl: Kubectl, ns: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(
        kubectl("get", "lease", LEASE, "-n", ns, "-o", "json").stdout
    )["spec"]
    return spec


def app_config(name: str, repo: str, ns: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "repo": repo, "namespace": ns, "interval": "1s", **extra}


@pytest.fixture
def state_ns(namespace_factory: Callable[[], str]) -> str:
    return namespace_factory()


def test_run_syncs_two_apps_and_follows_new_commits_while_a_third_hangs(
    *,
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace_factory: Callable[[], str],
    state_ns: str,
    kubectl: Kubectl,
    blackhole: str,
) -> None:
    """Two apps sync and follow new commits; an app whose Git host hangs blocks neither."""
    ns_a, ns_b = namespace_factory(), namespace_factory()
    repo_a, repo_b = make_repo("a"), make_repo("b")
    repo_a.commit({"cm.yaml": configmap("alpha", v="1")})
    repo_b.commit({"cm.yaml": configmap("beta", v="1")})
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                app_config("hung", blackhole, ns_a, allowInsecure=True),
                app_config("alpha", repo_a.file_url, ns_a),
                app_config("beta", repo_b.file_url, ns_b),
            ],
            "controller": {"leaderElection": lease_config(), "shutdownTimeout": "2s"},
        }
    )
    wait_until(lambda: cm_data(kubectl, ns_a, "alpha"), timeout=30, what="alpha synced")
    wait_until(lambda: cm_data(kubectl, ns_b, "beta"), timeout=30, what="beta synced")
    proc.wait_event("sync.started", app="hung")

    sha = repo_a.commit({"cm.yaml": configmap("alpha", v="2")})
    wait_until(
        lambda: (cm_data(kubectl, ns_a, "alpha") or {}).get("v") == "2",
        timeout=30,
        what="alpha follows the new commit",
    )
    proc.wait_event("sync.done", app="alpha", revision=sha[:12], result="synced")
    proc.wait_event("sync.done", app="beta", count=4)
    # Still inside its first fetch (120 s timeout), and it held up nobody.
    assert not proc.events("sync.failed", app="hung")

    status, body = proc.get("/readyz")
    assert status == 200, body
    ready = json.loads(body)
    assert ready["leader"] is True
    assert ready["apps"]["hung"]["running_seconds"] > 0
    status, body = proc.get("/healthz")
    assert status == 200
    status, body = proc.get("/metrics")
    text = body.decode()
    for name in (
        "gitsync_reconcile_duration_seconds_bucket",
        "gitsync_syncs_total",
        "gitsync_rollbacks_total",
        "gitsync_drift_objects",
        "gitsync_last_sync_timestamp_seconds",
        "gitsync_revision_info",
    ):
        assert name in text, name
    assert f'gitsync_revision_info{{app="alpha",revision="{sha}"}} 1.0' in text
    assert 'gitsync_syncs_total{app="alpha",result="synced"} 2.0' in text
    assert "gitsync_leader 1.0" in text
    # Both apps' ConfigMaps (and both drift watchers) are one shared informer: one watch.
    assert 'gitsync_informer_objects{informer="ConfigMap [gitsync.io/app]"}' in text
    assert 'gitsync_informer_watches_total{informer="ConfigMap [gitsync.io/app]"} 1.0' in text

    events = json.loads(kubectl("get", "events", "-n", state_ns, "-o", "json").stdout)["items"]
    synced = {e["involvedObject"]["name"] for e in events if e["reason"] == "Synced"}
    assert {"gitsync-alpha", "gitsync-beta"} <= synced
    # SIGTERM while "hung" is still fetching: wait shutdownTimeout, keep the Lease, exit 0.
    assert proc.terminate() == 0
    assert proc.events("shutdown.abandoned")[0]["apps"] == ["hung"]
    assert lease(kubectl, state_ns)["holderIdentity"].startswith("gitsync_")


def test_failing_app_is_retried_with_backoff_and_others_keep_syncing(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    state_ns: str,
    kubectl: Kubectl,
) -> None:
    """A repo that refuses connections fails fast, is retried sooner than its interval, logs."""
    repo = make_repo("ok")
    repo.commit({"cm.yaml": configmap("ok", v="1")})
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connection refused
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                app_config(
                    "gone",
                    f"http://127.0.0.1:{port}/x.git",
                    namespace,
                    interval="1h",
                    allowInsecure=True,
                ),
                app_config("ok", repo.file_url, namespace),
            ],
            "controller": {
                "leaderElection": lease_config(),
                "retry": {"initial": "200ms", "max": "1s"},
            },
        }
    )
    retry = proc.wait_event("sync.retry", app="gone", count=3)
    assert retry["attempt"] == 3
    assert retry["seconds"] <= 1.1
    failed = proc.events("sync.failed", app="gone")
    assert "Couldn't connect" in failed[0]["error"] or "refused" in failed[0]["error"].lower()
    wait_until(lambda: cm_data(kubectl, namespace, "ok"), timeout=30, what="ok synced")
    events = json.loads(kubectl("get", "events", "-n", state_ns, "-o", "json").stdout)["items"]
    failures = [e for e in events if e["reason"] == "SyncFailed"]
    # One Event for a repeating failure, not one per retry.
    assert len(failures) == 1
    assert failures[0]["involvedObject"]["name"] == "gitsync-gone"
    assert proc.terminate() == 0


def test_webhook_with_valid_signature_syncs_at_once_and_bad_ones_are_refused(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    state_ns: str,
    kubectl: Kubectl,
) -> None:
    """A signed POST /hooks/<app> syncs within a second; unsigned, wrong, big ones are refused."""
    secret = b"hook-s3cret"
    kubectl(
        "create", "secret", "generic", "hook", "-n", state_ns,
        f"--from-literal=secret={secret.decode()}",
    )  # fmt: skip
    repo = make_repo("hooked")
    repo.commit({"cm.yaml": configmap("hooked", v="1")})
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [app_config("hooked", repo.file_url, namespace, interval="1h")],
            "controller": {
                "leaderElection": lease_config(),
                "webhook": {"secretRef": {"name": "hook"}, "maxBodyBytes": 4096},
            },
        }
    )
    proc.wait_event("sync.done", app="hooked")
    sha = repo.commit({"cm.yaml": configmap("hooked", v="2")})
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()

    def post(path: str, payload: bytes, signature: str | None) -> int:
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return proc.request(path, method="POST", body=payload, headers=headers)[0]

    assert post("/hooks/hooked", body, None) == 401
    assert post("/hooks/hooked", body, sign(b"wrong", body)) == 401
    assert post("/hooks/hooked", body + b" ", sign(secret, body)) == 401
    assert post("/hooks/nope", body, sign(secret, body)) == 404
    assert post("/hooks/hooked", b"x" * 5000, sign(secret, b"x" * 5000)) == 413
    assert proc.get("/hooks/hooked")[0] == 405
    assert post("/metrics", body, sign(secret, body)) == 405
    time.sleep(0.5)
    assert (cm_data(kubectl, namespace, "hooked") or {}).get("v") == "1", "refused hooks synced"

    began = time.monotonic()
    assert post("/hooks/hooked", body, sign(secret, body)) == 202
    wait_until(
        lambda: (cm_data(kubectl, namespace, "hooked") or {}).get("v") == "2",
        timeout=5,
        what="webhook-triggered sync",
        interval=0.05,
    )
    took = time.monotonic() - began
    assert took < 1.0, f"webhook sync took {took:.2f}s"
    proc.wait_event("webhook.accepted", app="hooked")
    _, metrics = proc.get("/metrics")
    assert b'gitsync_webhook_requests_total{code="202"} 1.0' in metrics
    assert b'gitsync_webhook_requests_total{code="401"} 3.0' in metrics
    assert proc.terminate() == 0


def test_per_app_webhook_secrets_refuse_replays_and_bodies_signed_for_another_app(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    state_ns: str,
    kubectl: Kubectl,
) -> None:
    """Per-app secrets: a replayed delivery and a body signed for the other app get 401/403."""
    secrets = {"alpha": b"alpha-s3cret", "beta": b"beta-s3cret"}
    repos = {}
    for app, secret in secrets.items():
        kubectl(
            "create", "secret", "generic", f"hook-{app}", "-n", state_ns,
            f"--from-literal=secret={secret.decode()}",
        )  # fmt: skip
        repos[app] = make_repo(app)
        repos[app].commit({"cm.yaml": configmap(app, v="1")})
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                app_config(
                    app, repos[app].file_url, namespace, interval="1h",
                    webhook={"secretRef": f"hook-{app}"},
                )
                for app in secrets
            ],
            "controller": {"leaderElection": lease_config()},
        }
    )  # fmt: skip
    for app in secrets:
        proc.wait_event("sync.done", app=app)
        repos[app].commit({"cm.yaml": configmap(app, v="2")})

    def post(app: str, body: bytes, headers: dict[str, str]) -> int:
        return proc.request(f"/hooks/{app}", method="POST", body=body, headers=headers)[0]

    body = json.dumps({"ref": "refs/heads/main"}).encode()
    for_alpha = {"X-Hub-Signature-256": sign(secrets["alpha"], body)}
    assert post("beta", body, for_alpha) == 401
    stamp = int(time.time())
    named_alpha = {
        "X-Gitsync-Timestamp": str(stamp),
        "X-Gitsync-Signature": sign_for_app(secrets["alpha"], "alpha", stamp, body),
        "X-Gitsync-Delivery": "delivery-1",
    }
    assert post("beta", body, named_alpha) == 401
    time.sleep(0.5)
    assert (cm_data(kubectl, namespace, "beta") or {}).get("v") == "1", "beta was triggered"

    assert post("alpha", body, named_alpha) == 202
    wait_until(
        lambda: (cm_data(kubectl, namespace, "alpha") or {}).get("v") == "2",
        timeout=10,
        what="webhook-triggered sync of alpha",
    )
    assert post("alpha", body, named_alpha) == 403, "a replayed delivery"
    assert post("alpha", body, for_alpha) == 202
    assert post("alpha", body, for_alpha) == 403, "a replayed forge delivery"
    stale = int(time.time()) - 600
    old = {
        "X-Gitsync-Timestamp": str(stale),
        "X-Gitsync-Signature": sign_for_app(secrets["alpha"], "alpha", stale, body),
    }
    assert post("alpha", body, old) == 403
    refused = proc.events("webhook.refused", app="alpha")
    assert any("replayed" in e["reason"] for e in refused)
    assert (cm_data(kubectl, namespace, "beta") or {}).get("v") == "1"
    assert proc.terminate() == 0


def test_two_controllers_elect_one_leader_and_standby_takes_over_after_kill(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    state_ns: str,
    kubectl: Kubectl,
) -> None:
    """Only the leader syncs; after kill -9 the standby takes the Lease and applies the work."""
    repo = make_repo("ha")
    repo.commit({"cm.yaml": configmap("ha", v="1")})
    cfg = {
        "stateNamespace": state_ns,
        "apps": [app_config("ha", repo.file_url, namespace)],
        "controller": {"leaderElection": lease_config()},
    }
    first = controllers(cfg, name="replica-a")
    first.wait_event("leader.acquired")
    second = controllers(cfg, name="replica-b")
    second.wait_event("leader.candidate")
    first.wait_event("sync.done", app="ha", count=3)
    assert lease(kubectl, state_ns)["holderIdentity"].startswith("replica-a_")
    assert not second.events("sync.started")
    assert not second.events("leader.acquired")
    status, body = second.get("/readyz")
    assert status == 200, body
    assert json.loads(body)["leader"] is False
    assert second.request("/metrics")[1].count(b"gitsync_leader 0.0") == 1

    first.kill()
    killed = time.monotonic()
    sha = repo.commit({"cm.yaml": configmap("ha", v="2")})
    second.wait_event("leader.acquired", timeout=15)
    failover = time.monotonic() - killed
    wait_until(
        lambda: (cm_data(kubectl, namespace, "ha") or {}).get("v") == "2",
        timeout=15,
        what="new leader applies the new commit",
    )
    second.wait_event("sync.done", app="ha", revision=sha[:12])
    # leaseDuration 4 s, retryPeriod 0.5 s (x1.2 jitter): the Lease is taken within ~5 s.
    print(f"failover after kill -9: {failover:.2f}s")
    assert failover < 4 + 0.6 + 1.5
    assert lease(kubectl, state_ns)["holderIdentity"].startswith("replica-b_")

    # SIGTERM: clean exit, and the Lease is handed back at once.
    assert second.terminate() == 0
    second.wait_event("controller.stopped", released_lease=True)
    assert lease(kubectl, state_ns).get("holderIdentity", "") == ""


def test_a_leader_that_loses_its_lease_exits_at_once(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    state_ns: str,
    kubectl: Kubectl,
) -> None:
    """Someone else holding the Lease: the old leader cannot renew and exits 1 within
    renewDeadline, before that someone may act (it waits leaseDuration)."""
    repo = make_repo("fenced")
    repo.commit({"cm.yaml": configmap("fenced", v="1")})
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [app_config("fenced", repo.file_url, namespace)],
            "controller": {"leaderElection": lease_config()},
        }
    )
    proc.wait_event("sync.done", app="fenced")
    patch = {"spec": {"holderIdentity": "intruder", "renewTime": None}}
    kubectl("patch", "lease", LEASE, "-n", state_ns, "--type=merge", "-p", json.dumps(patch))
    taken = time.monotonic()
    assert proc.proc.wait(timeout=10) == 1
    took = time.monotonic() - taken
    print(f"exit after losing the Lease: {took:.2f}s")
    assert took < 4.0, "must stop before a new holder's leaseDuration (4 s) runs out"
    proc.wait_event("leader.lost")
    proc.wait_event("controller.exit")


def test_leader_reports_drift_with_its_author_and_heals_it(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    state_ns: str,
    kubectl: Kubectl,
) -> None:
    """The controller runs the app's drift watcher: a kubectl patch is reported and undone."""
    repo = make_repo("drifty")
    repo.commit({"cm.yaml": configmap("drifty", v="1")})
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [app_config("drifty", repo.file_url, namespace, interval="1h", selfHeal=True)],
            "controller": {"leaderElection": lease_config()},
        }
    )
    proc.wait_event("sync.done", app="drifty", result="synced")
    proc.wait_event("drift.intents", app="drifty")
    kubectl("patch", "configmap", "drifty", "-n", namespace, "-p", '{"data":{"v":"9"}}')
    detected = proc.wait_event("drift.detected", app="drifty")
    assert detected["object"] == f"ConfigMap {namespace}/drifty"
    assert detected["field"] == "data.v"
    assert (detected["desired"], detected["live"]) == ("1", "9")
    assert detected["manager"] == "kubectl-patch"
    proc.wait_event("drift.healed", app="drifty")
    wait_until(
        lambda: (cm_data(kubectl, namespace, "drifty") or {}).get("v") == "1",
        timeout=15,
        what="self-heal restores data.v",
    )
    assert proc.terminate() == 0


def test_released_lease_is_taken_by_the_standby_at_once(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    state_ns: str,
) -> None:
    """SIGTERM on the leader releases the Lease: the standby leads within a retry period."""
    repo = make_repo("handover")
    repo.commit({"cm.yaml": configmap("handover", v="1")})
    cfg = {
        "stateNamespace": state_ns,
        "apps": [app_config("handover", repo.file_url, namespace)],
        "controller": {"leaderElection": lease_config(leaseDuration="30s", renewDeadline="20s")},
    }
    first = controllers(cfg, name="one")
    first.wait_event("sync.done", app="handover")
    second = controllers(cfg, name="two")
    second.wait_event("leader.candidate")
    time.sleep(1.0)
    began = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 0
    second.wait_event("leader.acquired", timeout=5)
    took = time.monotonic() - began
    print(f"handover after SIGTERM: {took:.2f}s")
    assert took < 3.0, "a released Lease must not wait for its 30 s duration"
    second.wait_event("sync.done", app="handover")


def test_credentials_from_a_secret_work_for_smart_http_and_never_reach_the_logs(
    *,
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    git_http: GitHttpServer,
    namespace: str,
    state_ns: str,
    kubectl: Kubectl,
) -> None:
    """auth.secretRef with username/password (and a token) fetches from the basic-auth server."""
    repo = make_repo("private")
    repo.commit({"cm.yaml": configmap("private", v="1")})
    repo2 = make_repo("private-token")
    repo2.commit({"cm.yaml": configmap("private-token", v="1")})
    kubectl(
        "create", "secret", "generic", "git-basic", "-n", state_ns,
        f"--from-literal=username={git_http.username}",
        f"--from-literal=password={git_http.password}",
    )  # fmt: skip
    kubectl(
        "create", "secret", "generic", "git-token", "-n", state_ns,
        f"--from-literal=token={git_http.token}",
    )  # fmt: skip
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                app_config(
                    "private",
                    git_http.url(repo),
                    namespace,
                    auth={"secretRef": "git-basic"},
                    allowInsecure=True,
                ),
                app_config(
                    "private-token",
                    git_http.url(repo2),
                    namespace,
                    auth={"secretRef": "git-token"},
                    allowInsecure=True,
                ),
            ],
            "controller": {"leaderElection": lease_config()},
        }
    )
    wait_until(lambda: cm_data(kubectl, namespace, "private"), timeout=30, what="basic auth")
    wait_until(lambda: cm_data(kubectl, namespace, "private-token"), timeout=30, what="token")
    # Rotation: a changed Secret is read on the next sync.
    kubectl("delete", "secret", "git-basic", "-n", state_ns)
    proc.wait_event("sync.failed", app="private", stage="credentials")
    assert proc.terminate() == 0
    text = proc.log_path.read_text()
    assert git_http.password not in text
    assert git_http.token not in text
    encoded = base64.b64encode(git_http.password.encode()).decode()
    assert encoded not in text


def test_ssh_identity_and_known_hosts_from_a_secret(
    *,
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    git_sshd: SshServer,
    namespace: str,
    state_ns: str,
    kubectl: Kubectl,
) -> None:
    """auth.secretRef with identity + known_hosts fetches over ssh; the key stays private."""
    repo = make_repo("over-ssh")
    repo.commit({"cm.yaml": configmap("over-ssh", v="1")})
    kubectl(
        "create", "secret", "generic", "git-ssh", "-n", state_ns,
        f"--from-file=identity={git_sshd.client_key}",
        f"--from-file=known_hosts={git_sshd.known_hosts}",
    )  # fmt: skip
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                app_config("over-ssh", git_sshd.url(repo), namespace, auth={"secretRef": "git-ssh"})
            ],
            "controller": {"leaderElection": lease_config()},
        }
    )
    wait_until(lambda: cm_data(kubectl, namespace, "over-ssh"), timeout=30, what="ssh sync")
    assert proc.terminate() == 0
    key = git_sshd.client_key.read_text().strip().splitlines()[1]
    assert key not in proc.log_path.read_text()


def test_a_stuck_sync_makes_readyz_fail(
    controllers: Callable[..., ControllerProcess],
    namespace: str,
    state_ns: str,
    blackhole: str,
) -> None:
    """A sync running past stuckAfter turns /readyz to 503 naming the app; /healthz stays 200."""
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [app_config("hung", blackhole, namespace, allowInsecure=True)],
            "controller": {
                "leaderElection": lease_config(),
                "stuckAfter": "1s",
                "shutdownTimeout": "1s",
            },
        }
    )
    proc.wait_event("sync.started", app="hung")

    def not_ready() -> dict[str, Any] | None:
        status, body = proc.get("/readyz")
        return json.loads(body) if status == 503 else None

    detail = wait_until(not_ready, timeout=10, what="/readyz 503")
    assert "hung" in detail["problems"][0]
    assert proc.get("/healthz")[0] == 200
    assert proc.terminate() == 0


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"apps": [{"name": "x", "repo": "file:///x", "selfheal": True}]}, "apps[0].selfheal"),
        ({"apps": [{"name": "x", "repo": "file:///x", "interval": "5x"}]}, "apps[0].interval"),
        (
            {"apps": [{"name": "x", "repo": "file:///x"}, {"name": "x", "repo": "file:///y"}]},
            "apps[1].name",
        ),
        (
            {"apps": [{"name": "x", "repo": "file:///x"}], "controller": {"listen": "nope"}},
            "controller.listen",
        ),
    ],
)
def test_bad_config_exits_2_with_the_key_path_before_touching_the_cluster(
    tmp_path: Path, edit: dict[str, Any], expected: str
) -> None:
    """Unknown keys, bad durations, duplicate apps: exit 2 and the key path, nothing else."""
    import subprocess

    from tests.support.controller_process import GITSYNC, write_config

    path = write_config(tmp_path / "bad.yaml", edit)
    result = subprocess.run(
        [GITSYNC, "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"KUBECONFIG": str(tmp_path / "does-not-exist"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert result.stderr.startswith("error: ")


def test_missing_auth_secret_exits_2_with_the_key_path(
    controllers: Callable[..., ControllerProcess], state_ns: str
) -> None:
    """An auth.secretRef naming no Secret is a config error: exit 2, nothing synced."""
    proc = controllers(
        {
            "stateNamespace": state_ns,
            "apps": [
                {"name": "ok", "repo": "file:///x"},
                {"name": "needs-auth", "repo": "file:///y", "auth": {"secretRef": "missing"}},
            ],
            "controller": {"webhook": {"secretRef": {"name": "no-hook"}}},
        }
    )
    assert proc.proc.wait(timeout=30) == 2
    text = proc.log_path.read_text()
    assert "apps[1].auth.secretRef: Secret" in text
    assert f"{state_ns}/missing does not exist" in text
    assert "sync.started" not in text


NEVER_READY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: slow
spec:
  replicas: 1
  selector: {matchLabels: {app: slow}}
  template:
    metadata:
      labels: {app: slow, gitsync.test/behavior: never-ready}
    spec:
      containers: [{name: slow, image: registry.invalid/slow:1}]
"""


def test_sigterm_during_a_long_health_gate_hands_over_at_once(
    controllers: Callable[..., ControllerProcess],
    make_repo: Callable[..., BareRepo],
    namespace: str,
    state_ns: str,
) -> None:
    """SIGTERM while a gate waits out a 600 s deadline: exit 0 within seconds, Lease released."""
    repo = make_repo("slow")
    repo.commit({"deploy.yaml": NEVER_READY})
    cfg = {
        "stateNamespace": state_ns,
        "apps": [app_config("slow", repo.file_url, namespace)],
        "controller": {"leaderElection": lease_config(leaseDuration="30s", renewDeadline="20s")},
    }
    proc = controllers(cfg, name="one")
    proc.wait_event("sync.applied", app="slow")
    time.sleep(1.0)
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0
    took = time.monotonic() - began
    print(f"exit after SIGTERM during a health gate: {took:.2f}s")
    assert took < 10.0
    interrupted = proc.wait_event("sync.interrupted", app="slow")
    assert interrupted["stage"] == "health"
    stopped = proc.wait_event("controller.stopped")
    assert stopped["released_lease"] is True
