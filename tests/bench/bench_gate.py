"""Health gate benchmark: the gate's own watches vs the controller's shared informers.

    python -m tests.bench.bench_gate [--objects 1000] [--kubeconfig PATH]

Applies a fresh set of N mixed objects (``bench_sync.generate``: 10 namespaces, a tenth
of them Deployments) for each variant, then times ``wait_healthy`` on the apply responses
until healthy, and counts the API calls of the gate's own client, of the informers'
client, and the process CPU seconds while it waited. Variants: the gate's own LIST+WATCH
per (kind, namespace) (``sync --once``); informers started by the gate's first use (a
cold hub); informers already synced before the apply (the controller). Figures only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import yaml

from gitsync import log
from gitsync.health.gate import Verdict, wait_healthy
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from gitsync.model import APP_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, KubeObject, field_manager
from tests.bench.bench_sync import cluster, generate

APP = "bench-gate"


def apply_set(kube: Kube, total: int, prefix: str) -> tuple[list[KubeObject], list[str]]:
    """Apply the mix as gitsync would (app label, its field manager); the responses."""
    docs = [
        d
        for text in generate(total, prefix).values()
        for d in yaml.safe_load_all(text)
        if d is not None
    ]
    for d in docs:
        labels = d["metadata"].setdefault("labels", {})
        labels |= {APP_LABEL: APP, MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    # Workloads last, as gitsync orders them: the gate starts while they roll out.
    stages = [
        [d for d in docs if d["kind"] not in ("Namespace", "Deployment")],
        [d for d in docs if d["kind"] == "Deployment"],
    ]
    manager = field_manager(APP)
    for ns in namespaces:
        kube.apply(ns, manager=manager)
    applied: list[KubeObject] = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        for stage in stages:
            applied += pool.map(lambda d: kube.apply(d, manager=manager), stage)
    return applied, [ns["metadata"]["name"] for ns in namespaces]


@contextmanager
def measured() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    out["seconds"] = time.perf_counter() - wall
    out["cpu"] = time.process_time() - cpu


def _calls(c: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(c.items())) or "none"


def run(
    name: str, kubeconfig: Path, applier: Kube, total: int, hub: Informers | None
) -> tuple[list[str], str]:
    objects, namespaces = apply_set(applier, total, f"bgt{uuid.uuid4().hex[:4]}")
    gate = Kube.connect(kubeconfig=kubeconfig)
    hub_before = Counter(hub.kube.calls) if hub is not None else Counter()
    with measured() as m:
        verdict: Verdict = wait_healthy(gate, objects, timeout=300, informers=hub)
    hub_calls = (Counter(hub.kube.calls) - hub_before) if hub is not None else Counter()
    line = (
        f"{name:<28} {m['seconds']:6.2f} s  cpu {m['cpu']:5.2f} s  healthy={verdict.healthy}  "
        f"objects={len(objects)}  gate calls: {_calls(gate.calls)}  "
        f"informer calls during the gate: {_calls(hub_calls)}"
    )
    return namespaces, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_gate")
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--kubeconfig", default=os.environ.get("GITSYNC_TEST_KUBECONFIG"))
    args = parser.parse_args(argv)
    log.configure(json=True, level="warning")
    # Three sets of a tenth Deployments each, one Pod apiece, on 3 nodes: room for them.
    with cluster(args.kubeconfig, 3 * (args.objects // 10)) as (kubeconfig, kubectl):
        applier = Kube.connect(kubeconfig=kubeconfig)
        lines, namespaces = [], []
        ns, line = run("own watches (sync --once)", kubeconfig, applier, args.objects, None)
        namespaces += ns
        lines.append(line)
        cold = Informers(Kube.connect(kubeconfig=kubeconfig))
        try:
            ns, line = run("informers, cold hub", kubeconfig, applier, args.objects, cold)
        finally:
            cold.stop()
        namespaces += ns
        lines.append(line)
        warm = Informers(Kube.connect(kubeconfig=kubeconfig))
        try:
            started = [warm.managed("apps", "Deployment"), warm.everything("", "Pod")]
            started.append(warm.everything("apps", "ReplicaSet"))
            warm.wait_synced(started, 60)
            ns, line = run("informers, warm (controller)", kubeconfig, applier, args.objects, warm)
        finally:
            warm.stop()
        namespaces += ns
        lines.append(line)
        print("\n".join(lines))
        delete = [str(kubectl), f"--kubeconfig={kubeconfig}", "delete", "namespace"]
        subprocess.run(
            [*delete, "--wait=false", *namespaces],
            capture_output=True,
            check=False,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
