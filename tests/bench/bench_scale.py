"""Scale benchmark: one ``gitsync run`` process with many apps, or with one very big app.

    python -m tests.bench.bench_scale [--scenario a|b|all] [--apps 100] [--objects 100]
                                      [--drift-edits 50] [--timeout 1800] [--log-dir DIR]
                                      [--kubeconfig PATH]

- **A**: ``--apps`` apps of ``--objects`` objects each (bench_sync's mix), every app with
  its own Git repository and its own namespace.
- **B**: one app with the same total (``--apps`` x ``--objects``, so 10,000 by default) in
  10 namespaces; and ``kubectl apply --server-side`` of the same objects into 10 other
  namespaces, then a wait for Available (bench_peers' kubectl step), to compare first syncs.

Each scenario runs the controller as a real subprocess on its own fresh dev cluster (KWOK
nodes sized so every Pod schedules), with leader election off and every app's interval at
1 h, so only what the bench triggers runs. It measures:

- the time from starting the process until every app's first ``sync.done`` is ``synced``;
- a no-op round: one signed webhook per app, until each app's next ``sync.done``
  (``unchanged``); API calls by verb from ``gitsync_api_requests_total`` before and after;
- drift: ``--drift-edits`` random managed ConfigMaps and Deployments patched with kubectl,
  ~100 ms apart; delay from each kubectl's return to the object's ``drift.detected`` line;
- the process's peak RSS (``VmHWM``), read before it is stopped.

Prints one markdown table per scenario. Asserts one thing only, here and not in the tests:
peak RSS below 300 MiB in scenario A (exit 1 otherwise); B's RSS is printed against the
same target. Timings are figures, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gitsync import log as glog
from gitsync.runtime.webhooks import sign_for_app
from tests.bench.bench_peers import Bins, Step, _flat, peer_kubectl
from tests.bench.bench_sync import MIX, _doc, cluster
from tests.support.controller_process import GITSYNC, write_config
from tests.support.git_fixtures import free_port
from tests.support.repos import BareRepo

RSS_TARGET_MIB = 300.0
HOOK_ENV = "GITSYNC_BENCH_HOOK_SECRET"
B_NAMESPACES = 10
# Kinds the mix declares (Namespace included): the no-op target is one LIST per kind.
KINDS = len(MIX) + 1
DRIFT_KINDS = ("ConfigMap", "Deployment")


# --- what goes into Git ----------------------------------------------------------------------


def mix_counts(per_namespace: int) -> list[tuple[str, int]]:
    """bench_sync's MIX (per 100) scaled to exactly ``per_namespace`` objects."""
    total = sum(n for _, n in MIX)
    raw = [(kind, n * per_namespace / total) for kind, n in MIX]
    counts = {kind: math.floor(x) for kind, x in raw}
    short = per_namespace - sum(counts.values())
    for kind, _ in sorted(raw, key=lambda kx: kx[1] - math.floor(kx[1]), reverse=True)[:short]:
        counts[kind] += 1
    return [(kind, counts[kind]) for kind, _ in MIX]


@dataclass(frozen=True, slots=True, kw_only=True)
class Managed:
    """One object the bench can patch, and how ``drift.detected`` names it."""

    kind: str
    namespace: str
    name: str

    @property
    def reported(self) -> str:
        group = ".apps" if self.kind == "Deployment" else ""
        return f"{self.kind}{group} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AppFiles:
    """One app's repository tree, its namespaces, and what in it can be patched."""

    files: dict[str, str]
    namespaces: tuple[str, ...]
    objects: int
    deployments: int
    managed: tuple[Managed, ...]


def app_files(prefix: str, namespaces: int, per_namespace: int) -> AppFiles:
    """``namespaces`` namespaces ``{prefix}-{n}`` of ``per_namespace`` mixed objects each."""
    files: dict[str, str] = {}
    names: list[str] = []
    managed: list[Managed] = []
    objects = deployments = 0
    counts = mix_counts(per_namespace)
    for n in range(namespaces):
        ns = f"{prefix}-{n}"
        names.append(ns)
        files[f"ns-{n}/00-namespace.yaml"] = (
            f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        )
        objects += 1
        for kind, count in counts:
            if not count:
                continue
            docs = [_doc(kind, f"{kind.lower()}-{i}", ns, i) for i in range(count)]
            files[f"ns-{n}/{kind.lower()}.yaml"] = "---\n".join(docs)
            objects += count
            deployments += count if kind == "Deployment" else 0
            if kind in DRIFT_KINDS:
                managed += [
                    Managed(kind=kind, namespace=ns, name=f"{kind.lower()}-{i}")
                    for i in range(count)
                ]
    return AppFiles(
        files=files,
        namespaces=tuple(names),
        objects=objects,
        deployments=deployments,
        managed=tuple(managed),
    )


# --- the controller process and its log -----------------------------------------------------


class Controller:
    """``gitsync run`` as a subprocess in its own session; its JSON log read incrementally."""

    def __init__(self, *, config: dict[str, Any], kubeconfig: Path, work: Path) -> None:
        self.port = free_port()
        cfg = dict(config)
        cfg["controller"] = {"listen": f"127.0.0.1:{self.port}", **cfg.get("controller", {})}
        path = write_config(work / "gitsync.yaml", cfg)
        self.log_path = work / "gitsync.log"
        self.secret = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env |= {"KUBECONFIG": str(kubeconfig), "POD_NAME": "bench-scale", HOOK_ENV: self.secret}
        self.started_at = time.time()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [GITSYNC, "run", "--config", str(path), "--log-format", "json"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []

    # log ---------------------------------------------------------------------------------

    def poll(self) -> None:
        """Parse the lines written since the last poll."""
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    self.events.append(doc)

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        """Poll the log until ``done()``; exit with the log's tail if the process dies or
        the time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if done():
                return
            if self.proc.poll() is not None:
                msg = f"gitsync run exited {self.proc.returncode} while waiting for {what}:\n"
                raise SystemExit(msg + self.tail())
            if time.monotonic() > deadline:
                msg = f"no {what} within {timeout:.0f} s; log tail:\n"
                raise SystemExit(msg + self.tail())
            time.sleep(0.05)

    # HTTP --------------------------------------------------------------------------------

    def _request(
        self, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> bytes:
        req = urllib.request.Request(  # always http://127.0.0.1
            f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers or {}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            data: bytes = resp.read()
        return data

    def wait_http(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._request("/healthz")
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("gitsync run never served /healthz:\n" + self.tail()) from None
                time.sleep(0.1)
            else:
                return

    def api_calls(self) -> tuple[Counter[str], float]:
        """``gitsync_api_requests_total`` by verb, and ``gitsync_api_watches_open``."""
        text = self._request("/metrics").decode()
        calls: Counter[str] = Counter()
        watches = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "gitsync_api_requests_total":
                    calls[sample.labels["verb"]] = int(sample.value)
                elif sample.name == "gitsync_api_watches_open":
                    watches = sample.value
        return calls, watches

    def trigger(self, app: str) -> None:
        """POST /hooks/<app>, signed with the app name and time (docs/deploy.md)."""
        body = b"{}"
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Gitsync-Timestamp": str(stamp),
            "X-Gitsync-Signature": sign_for_app(self.secret.encode(), app, stamp, body),
            "X-Gitsync-Delivery": uuid.uuid4().hex,
        }
        self._request(f"/hooks/{app}", body=body, headers=headers)

    # process -----------------------------------------------------------------------------

    def peak_rss_mib(self) -> float:
        """VmHWM: the process's own peak resident set (children such as git excluded)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        msg = f"no VmHWM in /proc/{self.proc.pid}/status"
        raise SystemExit(msg)

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL if it has not exited in 30 s."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def controller(*, config: dict[str, Any], kubeconfig: Path, work: Path) -> Iterator[Controller]:
    proc = Controller(config=config, kubeconfig=kubeconfig, work=work)
    try:
        yield proc
    finally:
        proc.stop()


def _at(event: dict[str, Any]) -> float:
    """A log line's timestamp (structlog ISO, UTC) as Unix seconds."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


# --- measurements ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Result:
    """One scenario's figures; filled in as they are measured, printed as a table."""

    title: str
    apps: int
    objects: int
    first_sync_s: float = 0.0
    slowest_sync_s: float = 0.0
    median_sync_s: float = 0.0
    sync_failures: int = 0
    rss_mib: float = 0.0
    noop_s: float = 0.0
    noop_results: Counter[str] = field(default_factory=Counter)
    noop_calls: Counter[str] = field(default_factory=Counter)
    watches_open: float = 0.0
    gate_s: float = 0.0
    startup_s: float = 0.0
    drift: list[float] = field(default_factory=list)
    drift_total: list[float] = field(default_factory=list)
    drift_missed: list[str] = field(default_factory=list)
    kubectl: Step | None = None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def first_syncs(proc: Controller, names: list[str], result: Result, timeout: float) -> None:
    """Until every app's first ``sync.done`` says ``synced``."""

    def all_synced() -> bool:
        return all(proc.find("sync.done", app=a, result="synced") for a in names)

    proc.wait(f"a synced sync.done for all {len(names)} apps", all_synced, timeout)
    done = [proc.find("sync.done", app=a, result="synced")[0] for a in names]
    result.first_sync_s = max(_at(e) for e in done) - proc.started_at
    result.startup_s = min(_at(e) for e in proc.find("sync.started")) - proc.started_at
    own = [float(e["seconds"]) for e in done]
    result.slowest_sync_s = max(own)
    result.median_sync_s = statistics.median(own)
    failures = proc.find("sync.failed") + proc.find("sync.crashed")
    result.sync_failures = len(failures)
    why = Counter(f"{e.get('stage', 'crash')}: {str(e.get('error', ''))[:160]}" for e in failures)
    for text, n in why.most_common(5):
        log(f"first syncs: {n} x sync failed ({text}); each was retried")
    gates = [float(e["seconds"]) for e in proc.find("health.passed")]
    result.gate_s = max(gates, default=0.0)


def settle(proc: Controller, apps: dict[str, int], timeout: float) -> None:
    """Every drift watcher holds its app's intents, then no API call for 3 s in a row."""

    def intents() -> bool:
        return all(proc.find("drift.intents", app=a, objects=n) for a, n in apps.items())

    proc.wait("drift.intents of every app", intents, timeout)
    deadline = time.monotonic() + timeout
    last, _ = proc.api_calls()
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 3.0:
        if time.monotonic() > deadline:
            print("bench_scale: the controller never went 3 s without an API call", file=sys.stderr)
            return
        time.sleep(0.5)
        now, _ = proc.api_calls()
        if now != last:
            last, quiet_since = now, time.monotonic()


def noop_round(proc: Controller, names: list[str], result: Result, timeout: float) -> None:
    """One webhook per app, until each app's second ``sync.done``; API calls in between."""
    before, _ = proc.api_calls()
    began = time.monotonic()
    for name in names:
        proc.trigger(name)

    def all_done() -> bool:
        return all(len(proc.find("sync.done", app=a)) >= 2 for a in names)

    proc.wait("the no-op round's sync.done of every app", all_done, timeout)
    result.noop_s = time.monotonic() - began
    after, watches = proc.api_calls()
    result.noop_calls = after - before
    result.watches_open = watches
    result.noop_results = Counter(str(proc.find("sync.done", app=a)[1]["result"]) for a in names)


def drift_edits(
    proc: Controller, kubectl: list[str], managed: list[Managed], count: int, result: Result
) -> None:
    """Patch ``count`` random managed objects ~100 ms apart; time each to drift.detected."""
    rng = random.Random(14)  # the same objects in every run
    chosen = rng.sample(managed, min(count, len(managed)))
    started: dict[str, float] = {}
    returned: dict[str, float] = {}
    for i, obj in enumerate(chosen):
        patch: dict[str, Any]
        if obj.kind == "ConfigMap":
            patch = {"data": {"mode": f"drift-{i}"}}
        else:
            patch = {"spec": {"replicas": 2}}
        args = [*kubectl, "patch", obj.kind.lower(), obj.name, "-n", obj.namespace]
        started[obj.reported] = time.time()
        subprocess.run(
            [*args, "--type=merge", "-p", json.dumps(patch)], check=True, capture_output=True
        )
        returned[obj.reported] = time.time()
        time.sleep(0.1)

    def seen() -> bool:
        return all(proc.find("drift.detected", object=name) for name in returned)

    with contextlib.suppress(SystemExit):
        proc.wait("drift.detected of every patched object", seen, 30)
    for name, at in returned.items():
        lines = proc.find("drift.detected", object=name)
        if not lines:
            result.drift_missed.append(name)
            continue
        # The line can be written before kubectl has exited: that counts as 0.
        result.drift.append(max(0.0, min(_at(e) for e in lines) - at))
        result.drift_total.append(min(_at(e) for e in lines) - started[name])


def _calls(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if v) or "none"


def table(r: Result) -> str:
    """The scenario's markdown table."""
    rows = [
        ("objects managed", f"{r.objects:,} in {r.apps} app(s), Namespaces included", ""),
        (
            "every app's first sync `synced`",
            f"{r.first_sync_s:.1f} s from process start (first sync.started after "
            f"{r.startup_s:.1f} s; one sync: median "
            f"{r.median_sync_s:.1f} s, slowest {r.slowest_sync_s:.1f} s; "
            f"slowest health gate {r.gate_s:.1f} s; {r.sync_failures} failed on the way)",
            "",
        ),
        (
            "peak RSS (VmHWM)",
            f"{r.rss_mib:.0f} MiB",
            f"< {RSS_TARGET_MIB:.0f} MiB: {'met' if r.rss_mib < RSS_TARGET_MIB else 'NOT met'}",
        ),
        (
            "no-op round (webhook to every app)",
            f"{r.noop_s:.2f} s; results: {_calls(r.noop_results)}",
            "",
        ),
        (
            "API calls in the no-op round",
            _calls(r.noop_calls),
            f"LIST ≤ {KINDS} (one per kind), 0 with warm watches: "
            + ("met" if r.noop_calls["list"] <= KINDS else f"NOT met ({r.noop_calls['list']})"),
        ),
        ("watches open after the round", f"{r.watches_open:.0f}", ""),
    ]
    if r.drift:
        p95 = _pct(r.drift, 0.95)
        rows.append(
            (
                f"drift: {len(r.drift) + len(r.drift_missed)} kubectl patches → `drift.detected`",
                f"p50 {statistics.median(r.drift) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
                f"max {max(r.drift) * 1000:.0f} ms; missed {len(r.drift_missed)} "
                f"(from kubectl's start, its own run included: p50 "
                f"{statistics.median(r.drift_total) * 1000:.0f} ms, p95 "
                f"{_pct(r.drift_total, 0.95) * 1000:.0f} ms)",
                f"p95 < 2 s: {'met' if p95 < 2 and not r.drift_missed else 'NOT met'}",
            )
        )
    if r.kubectl is not None:
        ratio = r.first_sync_s / r.kubectl.seconds
        rows.append(
            (
                "`kubectl apply --server-side` + wait Available, same objects",
                f"{r.kubectl.seconds:.1f} s (kubectl peak RSS {r.kubectl.rss_mib:.0f} MiB); "
                f"gitsync/kubectl = **{ratio:.2f}x**",
                f"≤ 0.5x: {'met' if ratio <= 0.5 else 'NOT met'}",
            )
        )
    lines = [f"### {r.title}", "", "| measure | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


# --- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A scenario's apps: name → files; and whether kubectl runs beside it."""

    title: str
    apps: dict[str, AppFiles]
    kubectl_files: AppFiles | None = None


def plan_a(run: str, apps: int, objects: int) -> Plan:
    title = f"A: {apps} apps x {objects} objects, one controller"
    return Plan(
        title=title,
        apps={f"a{run}-{i:03d}": app_files(f"a{run}-{i:03d}", 1, objects) for i in range(apps)},
    )


def plan_b(run: str, total: int) -> Plan:
    per_ns = max(1, total // B_NAMESPACES)
    return Plan(
        title=f"B: 1 app x {per_ns * B_NAMESPACES:,} objects, one controller",
        apps={f"b{run}": app_files(f"b{run}", B_NAMESPACES, per_ns)},
        kubectl_files=app_files(f"k{run}", B_NAMESPACES, per_ns),
    )


def run_plan(plan: Plan, args: argparse.Namespace, run: str) -> Result:
    pods = sum(a.deployments for a in plan.apps.values())
    if plan.kubectl_files is not None:
        pods += plan.kubectl_files.deployments
    result = Result(
        title=plan.title,
        apps=len(plan.apps),
        objects=sum(a.objects for a in plan.apps.values()),
    )
    with (
        cluster(args.kubeconfig, pods) as (kubeconfig, kubectl_bin),
        tempfile.TemporaryDirectory(prefix="gitsync-scale-") as tmp,
    ):
        work = Path(tmp)
        kubectl = [str(kubectl_bin), f"--kubeconfig={kubeconfig}"]
        if plan.kubectl_files is not None:
            # kubectl first, so gitsync meets the fuller cluster (as bench_peers orders it).
            root = work / "kubectl"
            _flat(plan.kubectl_files.files, root)
            bins = Bins(kubectl=kubectl_bin, peers=Path(), kubeconfig=kubeconfig)
            log(
                f"{plan.title}: kubectl apply --server-side of {plan.kubectl_files.objects} objects"
            )
            result.kubectl = peer_kubectl(bins, root, f"k{run}")()
            log(f"kubectl: {result.kubectl.seconds:.1f} s")
        apps = []
        for name, files in plan.apps.items():
            repo = BareRepo(work / "repos" / f"{name}.git")
            repo.commit(files.files, message="bench")
            apps.append(
                {
                    "name": name,
                    "repo": repo.file_url,
                    "namespace": files.namespaces[0],
                    "interval": "1h",
                }
            )
        config = {
            "stateNamespace": f"s{run}-state",
            "cacheDir": str(work / "cache"),
            "apps": apps,
            "controller": {
                "leaderElection": {"enabled": False},
                "webhook": {"secretEnv": HOOK_ENV},
                "shutdownTimeout": "10s",
            },
        }
        names = list(plan.apps)
        log(f"{plan.title}: starting gitsync run")
        try:
            with controller(config=config, kubeconfig=kubeconfig, work=work) as proc:
                proc.wait_http()
                first_syncs(proc, names, result, args.timeout)
                log(f"first syncs: {result.first_sync_s:.1f} s")
                settle(proc, {n: a.objects for n, a in plan.apps.items()}, args.timeout)
                noop_round(proc, names, result, args.timeout)
                log(f"no-op round: {result.noop_s:.2f} s, calls {_calls(result.noop_calls)}")
                managed = [m for a in plan.apps.values() for m in a.managed]
                drift_edits(proc, kubectl, managed, args.drift_edits, result)
                result.rss_mib = proc.peak_rss_mib()
        finally:
            if args.log_dir:
                Path(args.log_dir).mkdir(parents=True, exist_ok=True)
                kept = Path(args.log_dir) / f"gitsync-{plan.title[0].lower()}-{run}.log"
                shutil.copyfile(work / "gitsync.log", kept)
                log(f"controller log kept in {kept}")
            if args.kubeconfig:
                namespaces = [ns for a in plan.apps.values() for ns in a.namespaces]
                if plan.kubectl_files is not None:
                    namespaces += plan.kubectl_files.namespaces
                subprocess.run(
                    [*kubectl, "delete", "namespace", "--wait=false", f"s{run}-state", *namespaces],
                    capture_output=True,
                    check=False,
                )
    return result


def log(text: str) -> None:
    print(f"bench_scale: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_scale")
    parser.add_argument("--scenario", choices=("a", "b", "all"), default="all")
    parser.add_argument("--apps", type=int, default=100, help="apps in A (B: apps x objects)")
    parser.add_argument("--objects", type=int, default=100, help="objects per app in A")
    parser.add_argument("--drift-edits", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per wait")
    parser.add_argument("--log-dir", help="keep each scenario's controller log here")
    parser.add_argument("--kubeconfig", default=os.environ.get("GITSYNC_TEST_KUBECONFIG"))
    args = parser.parse_args(argv)
    glog.configure(json=True, level="info")
    run = uuid.uuid4().hex[:4]
    plans = []
    if args.scenario in ("a", "all"):
        plans.append(plan_a(run, args.apps, args.objects))
    if args.scenario in ("b", "all"):
        plans.append(plan_b(run, args.apps * args.objects))
    results = []
    for plan in plans:
        results.append(run_plan(plan, args, run))
        print(table(results[-1]), flush=True)
        print(flush=True)
    failed = [r for r in results if r.title.startswith("A") and r.rss_mib >= RSS_TARGET_MIB]
    for r in failed:
        print(
            f"bench_scale: FAILED: peak RSS {r.rss_mib:.0f} MiB in {r.title}; "
            f"the target is below {RSS_TARGET_MIB:.0f} MiB",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
