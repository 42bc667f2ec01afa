"""Drift benchmark: how fast a manual kubectl change becomes a ``drift.detected`` line.

    python -m tests.bench.bench_drift [--objects 1000] [--edits 50] [--idle 30]

Syncs an app of N objects (ConfigMaps, Secrets, Deployments in 10 namespaces), starts a
report-only ``DriftWatcher``, then makes ``--edits`` manual changes with the real kubectl
(scale, set image, patch, label, annotate, edit), one at a time, and measures the delay
from each kubectl's return to its ``drift.detected`` line: p50/p95/max. Then it idles and
counts the watcher's API calls and the process RSS, to show there is no periodic
re-listing. Uses $GITSYNC_TEST_KUBECONFIG, else starts a dev cluster. Figures only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitsync import config, log
from gitsync.drift.watcher import DriftSettings, DriftWatcher
from gitsync.engine.sync import Context, sync_app
from gitsync.kube import Kube
from tests.bench.bench_sync import cluster
from tests.support.log_capture import Recorder
from tests.support.repos import BareRepo

NAMESPACES = 10
# Per namespace, scaled to --objects: (kind, share of 100).
MIX = (("ConfigMap", 80), ("Secret", 15), ("Deployment", 5))


def _doc(kind: str, name: str, ns: str, i: int) -> str:
    head = (
        f"metadata:\n  name: {name}\n  namespace: {ns}\n"
        f"  labels: {{tier: web}}\n  annotations: {{note: from-git}}\n"
    )
    if kind == "ConfigMap":
        return f"apiVersion: v1\nkind: ConfigMap\n{head}data:\n  index: '{i}'\n  mode: blue\n"
    if kind == "Secret":
        return f"apiVersion: v1\nkind: Secret\n{head}stringData:\n  token: t-{i}\n"
    return (
        f"apiVersion: apps/v1\nkind: Deployment\n{head}spec:\n  replicas: 1\n"
        f"  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n"
        f"    metadata: {{labels: {{app: {name}}}}}\n    spec:\n"
        f"      containers: [{{name: app, image: registry.invalid/app:{i}}}]\n"
    )


def generate(total: int, prefix: str) -> tuple[dict[str, str], list[str]]:
    """Repo files for ``total`` objects, and the namespaces they live in."""
    per_ns = max(1, total // NAMESPACES)
    files: dict[str, str] = {}
    namespaces = [f"{prefix}-{n}" for n in range(NAMESPACES)]
    for n, ns in enumerate(namespaces):
        files[f"ns-{n}/00-namespace.yaml"] = (
            f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        )
        for kind, share in MIX:
            count = max(1, per_ns * share // 100)
            docs = [_doc(kind, f"{kind.lower()}-{i}", ns, i) for i in range(count)]
            files[f"ns-{n}/{kind.lower()}.yaml"] = "---\n".join(docs)
    return files, namespaces


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Edits:
    """Manual changes with the real kubectl; each returns what its report must show."""

    def __init__(self, kubectl: Path, kubeconfig: Path, work: Path) -> None:
        self._base = [str(kubectl), f"--kubeconfig={kubeconfig}"]
        self._work = work

    def run(self, *args: str, env: dict[str, str] | None = None) -> None:
        subprocess.run(
            [*self._base, *args],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def editor(self) -> dict[str, str]:
        script = self._work / "editor.sh"
        if not script.exists():
            script.write_text("#!/bin/sh\nsed -i 's/mode: blue/mode: edited/' \"$1\"\n")
            script.chmod(0o755)
        return {"EDITOR": str(script), "KUBE_EDITOR": str(script)}

    def plan(
        self, namespaces: list[str], count: int
    ) -> list[tuple[Callable[[], None], dict[str, Any]]]:
        """``count`` (command, expected drift.detected fields) pairs on distinct objects."""
        out: list[tuple[Callable[[], None], dict[str, Any]]] = []
        kinds = ["scale", "set-image", "patch", "label", "annotate", "edit"]
        for i in range(count):
            ns = namespaces[i % len(namespaces)]
            n = i // len(namespaces)
            what = kinds[i % len(kinds)]
            dep, cm = f"Deployment.apps {ns}/deployment-{n}", f"ConfigMap {ns}/configmap-{n}"
            if what == "scale":
                cmd = ["scale", f"deployment/deployment-{n}", "-n", ns, "--replicas=3"]
                exp = {"object": dep, "field": "spec.replicas", "manager": "kubectl"}
            elif what == "set-image":
                cmd = [
                    "set",
                    "image",
                    f"deployment/deployment-{n}",
                    "-n",
                    ns,
                    "app=registry.invalid/x:9",
                ]
                exp = {"object": dep, "field": "spec.template.spec.containers[name=app].image"}
            elif what == "patch":
                cmd = [
                    "patch",
                    f"configmap/configmap-{n}",
                    "-n",
                    ns,
                    "-p",
                    '{"data":{"mode":"red"}}',
                ]
                exp = {"object": cm, "field": "data.mode", "manager": "kubectl-patch"}
            elif what == "label":
                cmd = ["label", f"configmap/configmap-{n}", "-n", ns, "tier=db", "--overwrite"]
                exp = {"object": cm, "field": "metadata.labels.tier", "manager": "kubectl-label"}
            elif what == "annotate":
                cmd = ["annotate", f"configmap/configmap-{n}", "-n", ns, "note=x", "--overwrite"]
                exp = {"object": cm, "field": "metadata.annotations.note"}
            else:
                cmd = ["edit", f"configmap/configmap-{n + 40}", "-n", ns]
                exp = {"object": f"ConfigMap {ns}/configmap-{n + 40}", "field": "data.mode"}
            env = self.editor() if what == "edit" else None
            out.append((lambda cmd=cmd, env=env: self.run(*cmd, env=env), exp))
        return out


def _wait(recorder: Recorder, match: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = recorder.find("drift.detected", **match)
        if found:
            return found[0]
        time.sleep(0.005)
    return None


def _calls(c: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(c.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_drift")
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--idle", type=float, default=30.0, help="idle seconds to watch calls")
    parser.add_argument("--kubeconfig", default=os.environ.get("GITSYNC_TEST_KUBECONFIG"))
    args = parser.parse_args(argv)
    log.configure(json=True, level="error")
    run = uuid.uuid4().hex[:5]
    with cluster(args.kubeconfig) as (kubeconfig, kubectl), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files, namespaces = generate(args.objects, f"bd{run}")
        n_objects = sum(len(t.split("---\n")) for t in files.values())
        repo = BareRepo(work / "bench.git")
        repo.commit(files, message="bench")
        raw = {"name": f"drift-{run}", "repo": repo.file_url, "namespace": "default"}
        (app,) = config.parse({"apps": [raw]}).apps
        ctx = Context(
            kube=Kube.connect(kubeconfig=kubeconfig),
            cache_dir=work / "cache",
            state_namespace=f"bench-state-{run}",
        )
        began = time.perf_counter()
        result = sync_app(app, ctx)
        if result.result != "synced":
            msg = f"sync failed: {result.error}"
            raise SystemExit(msg)
        sync_seconds = time.perf_counter() - began

        kube = Kube.connect(kubeconfig=kubeconfig)  # the watcher's own, to count its calls
        recorder = Recorder()
        watcher = DriftWatcher(
            kube, app, ctx.state_namespace, recorder.logger(app=app.name), settings=DriftSettings()
        )
        began = time.perf_counter()
        watcher.start()
        if not watcher.wait_ready(300):
            raise SystemExit("the watcher did not finish its first compare in 300 s")
        ready_seconds = time.perf_counter() - began
        startup_calls = Counter(kube.calls)
        rss_ready = _rss_mib()

        edits = Edits(kubectl, kubeconfig, work).plan(namespaces, args.edits)
        delays: list[float] = []
        totals: list[float] = []
        missed: list[dict[str, Any]] = []
        kube.calls.clear()
        for command, expected in edits:
            started = time.monotonic()
            command()
            returned = time.monotonic()
            event = _wait(recorder, expected, timeout=30)
            if event is None:
                missed.append(expected)
                continue
            # The line can be written before kubectl has exited: that counts as 0.
            delays.append(max(0.0, event["_at"] - returned))
            totals.append(event["_at"] - started)
        edit_calls = Counter(kube.calls)

        kube.calls.clear()
        time.sleep(args.idle)
        idle_calls = Counter(kube.calls)
        rss_idle = _rss_mib()
        wanted = {(exp["object"], exp["field"]) for _cmd, exp in edits}
        false = [
            e for e in recorder.find("drift.detected") if (e["object"], e["field"]) not in wanted
        ]
        watcher.stop()

        print(f"objects: {n_objects} managed in {NAMESPACES} namespaces; sync {sync_seconds:.1f} s")
        print(
            f"watcher start-up (state + LIST per kind + full compare): {ready_seconds:.2f} s, "
            f"calls: {_calls(startup_calls)}"
        )
        if delays:
            print(
                f"{len(delays)} kubectl edits → drift.detected (from kubectl's return): "
                f"p50 {statistics.median(delays) * 1000:.0f} ms, "
                f"p95 {_pct(delays, 0.95) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms"
            )
            print(
                "  from kubectl's start (its own run time included): "
                f"p50 {statistics.median(totals) * 1000:.0f} ms, "
                f"p95 {_pct(totals, 0.95) * 1000:.0f} ms, max {max(totals) * 1000:.0f} ms"
            )
        print(f"  missed: {len(missed)} {missed[:3]}; false reports: {len(false)}")
        print(f"  watcher calls during the edits: {_calls(edit_calls)}")
        print(
            f"idle {args.idle:.0f} s: watcher API calls: {_calls(idle_calls)}; "
            f"RSS {rss_ready:.0f} MiB when ready, {rss_idle:.0f} MiB after idling "
            "(whole bench process, sync included)"
        )
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
