"""Sync benchmark: gitsync vs `kubectl apply --server-side` on the same cluster, same run.

    python -m tests.bench.bench_sync [--objects 1000] [--kubeconfig PATH] [--informers]
        [--replicas 1]

Prints wall times, the gitsync/kubectl ratio, API calls by verb and peak RSS for: a first
sync of N mixed objects across 10 namespaces, a no-op resync, and a one-object change.
With ``--informers`` the syncs run as in the controller, with a shared informer hub on a
client of its own (its calls are printed apart); the no-op resync is then measured once
the informers hold what the API holds. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import structlog

from gitsync import config, log
from gitsync.devcluster import ClusterConfig, DevCluster, resolve_bin_dir
from gitsync.engine.sync import Context, SyncResult, sync_app
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from gitsync.model import ObjectRef
from tests.support.repos import BareRepo

WRITES = ("apply", "create", "update", "delete", "patch")
# Per namespace: (kind, count). 10 namespaces x 100 = 1000 objects.
MIX = (
    ("ConfigMap", 35),
    ("Secret", 20),
    ("ServiceAccount", 10),
    ("Role", 10),
    ("Service", 15),
    ("Deployment", 10),
)


def _doc(kind: str, name: str, ns: str, i: int, replicas: int = 1) -> str:
    head = f"metadata:\n  name: {name}\n  namespace: {ns}\n"
    if kind == "ConfigMap":
        return f"apiVersion: v1\nkind: ConfigMap\n{head}data:\n  index: '{i}'\n  mode: blue\n"
    if kind == "Secret":
        return f"apiVersion: v1\nkind: Secret\n{head}stringData:\n  token: t-{i}\n"
    if kind == "ServiceAccount":
        return f"apiVersion: v1\nkind: ServiceAccount\n{head}"
    if kind == "Role":
        return (
            f"apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n{head}"
            "rules:\n- apiGroups: ['']\n  resources: [configmaps]\n  verbs: [get, list]\n"
        )
    if kind == "Service":
        return (
            f"apiVersion: v1\nkind: Service\n{head}spec:\n  selector: {{app: {name}}}\n"
            "  ports:\n  - port: 80\n    targetPort: 8080\n"
        )
    return (
        f"apiVersion: apps/v1\nkind: Deployment\n{head}spec:\n  replicas: {replicas}\n"
        f"  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n"
        f"    metadata: {{labels: {{app: {name}}}}}\n    spec:\n"
        f"      containers: [{{name: app, image: registry.invalid/app:{i}}}]\n"
    )


def generate(total: int, prefix: str, replicas: int = 1) -> dict[str, str]:
    """Files of a repo with ``total`` objects (rounded to the mix) in 10 namespaces."""
    per_ns = sum(n for _, n in MIX)
    scale = max(1, round(total / (10 * per_ns)))
    files: dict[str, str] = {}
    for n in range(10):
        ns = f"{prefix}-{n}"
        files[f"ns-{n}/00-namespace.yaml"] = (
            f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        )
        for kind, count in MIX:
            docs = [
                _doc(kind, f"{kind.lower()}-{i}", ns, i, replicas) for i in range(count * scale)
            ]
            files[f"ns-{n}/{kind.lower()}.yaml"] = "---\n".join(docs)
    return files


def _write(files: dict[str, str], root: Path) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def node_sizing(pods: int) -> tuple[int, int]:
    """KWOK nodes and Pods per node with room for ``pods`` and a fifth to spare (drift
    patches scale some Deployments up); never below the kubelet default of 110."""
    nodes = 3
    return nodes, max(110, math.ceil(pods * 1.2 / nodes))


@contextlib.contextmanager
def cluster(kubeconfig: str | None, pods: int = 0) -> Iterator[tuple[Path, Path]]:
    """(kubeconfig, kubectl) of a given cluster, or of one started for this run, whose
    KWOK nodes have room for ``pods``."""
    bin_dir = resolve_bin_dir()
    if kubeconfig:
        yield Path(kubeconfig), bin_dir / "kubectl"
        return
    nodes, per_node = node_sizing(pods)
    with tempfile.TemporaryDirectory(prefix="gitsync-bench-") as tmp:
        cfg = ClusterConfig(
            work_dir=Path(tmp),
            bin_dir=bin_dir,
            die_with_parent=True,
            nodes=nodes,
            node_pods=str(per_node),
        )
        with DevCluster(cfg) as dev:
            yield dev.kubeconfig, bin_dir / "kubectl"


def kubectl_apply(kubectl: Path, kubeconfig: Path, root: Path) -> tuple[float, Counter[str]]:
    """Time kubectl's server-side apply and count its requests from its -v=6 log."""
    args = [str(kubectl), f"--kubeconfig={kubeconfig}", "apply", "--server-side"]
    args += ["--field-manager=bench-kubectl", "-R", "-f", str(root), "-v=6"]
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    verbs = Counter(re.findall(r'"Response" verb="(\w+)"', out.stderr))
    return seconds, verbs


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sync(app: config.AppConfig, ctx: Context) -> tuple[SyncResult, float, float, Counter[str]]:
    """Sync once; return the result, total seconds, health-gate seconds, API calls."""
    ctx.kube.calls.clear()
    with structlog.testing.capture_logs() as logs:
        start = time.perf_counter()
        result = sync_app(app, ctx)
        seconds = time.perf_counter() - start
    if result.result == "failed":
        msg = f"gitsync sync failed: {result.error}"
        raise SystemExit(msg)
    gate = sum(float(e.get("seconds", 0)) for e in logs if e["event"] == "health.passed")
    return result, seconds, gate, Counter(ctx.kube.calls)


KINDS = (("", "Namespace"), ("", "ConfigMap"), ("", "Secret"), ("", "ServiceAccount"))
KINDS += (("rbac.authorization.k8s.io", "Role"), ("", "Service"), ("apps", "Deployment"))


def warm(hub: Informers, app: str, state_namespace: str, total: int, timeout: float) -> float:
    """Seconds until the informers hold the app's ``total`` objects and its state head at
    the version the API has (the controller's steady state)."""
    start = time.perf_counter()
    head_ref = ObjectRef(
        group="", version="v1", kind="Secret", namespace=state_namespace, name=f"gitsync-{app}"
    )
    while time.perf_counter() - start < timeout:
        informers = [hub.managed(*k) for k in KINDS]
        heads = hub.state_heads(state_namespace)
        chunks = hub.state_chunks(state_namespace)
        head = hub.kube.get(head_ref)
        count = sum(len(i.store.idents(label=app)) for i in informers)
        cached_rv = heads.store.memo(
            head_ref.identity(), "rv", lambda o: o["metadata"]["resourceVersion"]
        )
        if (
            all(i.synced for i in [*informers, heads, chunks])
            and count == total
            and head is not None
            and cached_rv == head["metadata"]["resourceVersion"]
        ):
            return time.perf_counter() - start
        time.sleep(0.1)
    msg = "the informers did not catch up with the API"
    raise SystemExit(msg)


def _calls(c: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(c.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_sync")
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--kubeconfig", default=os.environ.get("GITSYNC_TEST_KUBECONFIG"))
    parser.add_argument("--informers", action="store_true", help="sync with a shared informer hub")
    parser.add_argument("--replicas", type=int, default=1, help="Pods per Deployment (0: none)")
    args = parser.parse_args(argv)
    log.configure(json=True, level="info")
    run = uuid.uuid4().hex[:5]
    # Both copies' Deployments (a tenth of the objects each), one Pod each, on 3 nodes.
    pods = args.objects // 10 * args.replicas
    with (
        cluster(args.kubeconfig, pods) as (kubeconfig, kubectl),
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        k_files = generate(args.objects, f"bk{run}", args.replicas)
        g_files = generate(args.objects, f"bg{run}", args.replicas)
        n_objects = sum(len(t.split("---\n")) for t in g_files.values())
        _write(k_files, work / "kubectl")
        k_seconds, k_verbs = kubectl_apply(kubectl, kubeconfig, work / "kubectl")

        repo = BareRepo(work / "bench.git")
        repo.commit(g_files, message="bench v1")
        raw = {"name": f"bench-{run}", "repo": repo.file_url, "namespace": "default"}
        (app,) = config.parse({"apps": [raw]}).apps
        kube = Kube.connect(kubeconfig=kubeconfig)
        hub = Informers(Kube.connect(kubeconfig=kubeconfig)) if args.informers else None
        state_ns = f"bench-state-{run}"
        ctx = Context(kube=kube, cache_dir=work / "cache", state_namespace=state_ns, informers=hub)
        first, g_seconds, gate, first_calls = run_sync(app, ctx)
        rss_first = _rss_mib()
        if hub is not None:
            caught_up = warm(hub, app.name, state_ns, n_objects, timeout=300)
            print(f"informers caught up {caught_up:.2f} s after the first sync")
            run_sync(app, ctx)  # the first informer-backed read of the state
            hub_before = hub.stats()
        noop, noop_seconds, _, noop_calls = run_sync(app, ctx)
        if hub is not None:
            hub_after = hub.stats()
            print(
                f"informer hub: {hub_after['informers']} informers, {hub_after['objects']} "
                f"objects, {hub_after['bytes'] / 2**20:.1f} MiB of JSON; during the no-op: "
                f"lists={hub_after['lists'] - hub_before['lists']} "
                f"relists={hub_after['relists'] - hub_before['relists']}"
            )
        changed = dict(g_files)
        key = "ns-3/configmap.yaml"
        changed[key] = changed[key].replace("mode: blue", "mode: green", 1)
        repo.commit(changed, message="bench v2")
        one, one_seconds, one_gate, one_calls = run_sync(app, ctx)

        apply_only = g_seconds - gate
        print(f"objects: {n_objects} in 10 namespaces (gitsync and kubectl each)")
        print(f"kubectl apply --server-side: {k_seconds:7.2f} s   calls: {_calls(k_verbs)}")
        print(
            f"gitsync first sync:          {g_seconds:7.2f} s   (health gate {gate:.2f} s, "
            f"fetch+render+plan+apply {apply_only:.2f} s)   result={first.result} "
            f"created={first.counts.get('create')}"
        )
        print(
            f"  ratio gitsync/kubectl: {g_seconds / k_seconds:.2f} (incl. gate), "
            f"{apply_only / k_seconds:.2f} (without the health gate kubectl does not have)"
        )
        print(f"  calls: {_calls(first_calls)}")
        print(
            f"gitsync no-op resync:        {noop_seconds:7.2f} s   writes="
            f"{sum(noop_calls[v] for v in WRITES)}   result={noop.result}   "
            f"calls: {_calls(noop_calls)}"
        )
        print(
            f"gitsync one changed object:  {one_seconds:7.2f} s   (gate {one_gate:.2f} s)   "
            f"updated={one.counts.get('update')}   calls: {_calls(one_calls)}"
        )
        print(
            f"peak RSS of the gitsync process: {rss_first:.0f} MiB after first sync, "
            f"{_rss_mib():.0f} MiB at end"
        )
        if hub is not None:
            hub.stop()
        names = [f"{p}-{n}" for p in (f"bk{run}", f"bg{run}") for n in range(10)]
        subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig}", "delete", "namespace"]  # noqa: RUF005
            + ["--wait=true", "--timeout=120s", f"bench-state-{run}", *names],
            capture_output=True,
            check=False,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
