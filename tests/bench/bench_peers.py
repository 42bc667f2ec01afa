"""Peer benchmark: gitsync, kubectl, Flux's apply engine and cli-utils' kapply, side by side.

    python -m tests.bench.bench_peers [--objects 1000 [10000]] [--only gitsync,kubectl,flux,kapply]

One run, one local cluster, the same mixed objects (bench_sync.generate) in separate namespaces
for each tool. For each: first sync until healthy, no-op resync, one changed object, peak RSS
(of the peer's own processes via wait4; gitsync's is this process's, as it syncs in-process).
The peers come from hack/build-peers.sh. Prints a markdown table with ratios vs gitsync and
gitsync's API calls. A step that runs out of time (TIMEOUT inside each tool, STEP_LIMIT from
outside) or fails is printed as such in the table, and the run goes on. Figures only: nothing
here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gitsync import config, log
from gitsync.engine.steady import SteadyMemo
from gitsync.engine.sync import Context
from gitsync.informers.hub import Informers
from gitsync.kube import Kube
from tests.bench.bench_sync import MIX, cluster, generate, node_sizing, run_sync
from tests.support.repos import BareRepo

TOOLS = ("gitsync", "kapply", "flux", "kubectl")
LABELS = {
    "gitsync": "gitsync",
    "kapply": "cli-utils `kapply --server-side`",
    "flux": "Flux's apply engine (fluxcd/pkg/ssa)",
    "kubectl": "`kubectl apply --server-side`, then `kubectl wait`",
}
# Each tool's own wait; 10,000 objects at Flux's QPS 50 need ~10 min of client throttle alone.
TIMEOUT = "30m"
# A step still running this long after its start is killed and printed as timed out.
STEP_LIMIT = 35 * 60.0
CHANGED_FILE = "ns-3/configmap.yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One timed step of one tool: wall seconds and the peak RSS of what ran it."""

    seconds: float
    rss_mib: float
    detail: str = ""
    # "ok", "timed out" or "failed"; the seconds are then those spent until it ended.
    outcome: str = "ok"


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """A tool's three steps at one size."""

    tool: str
    first: Step
    noop: Step
    change: Step

    @property
    def rss_mib(self) -> float:
        return max(self.first.rss_mib, self.noop.rss_mib, self.change.rss_mib)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bins:
    """Where the binaries are, and the cluster they talk to."""

    kubectl: Path
    peers: Path
    kubeconfig: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Child:
    """How one process ended."""

    seconds: float
    rss_mib: float
    stdout: str
    stderr: str
    code: int
    killed: bool

    @property
    def outcome(self) -> str:
        if self.killed:
            return "timed out"
        return "ok" if self.code == 0 else "failed"

    def tail(self) -> str:
        return " ".join((self.stdout + self.stderr)[-300:].split())


def run_child(args: list[str], limit: float = STEP_LIMIT) -> Child:
    """Run one process to its end, or kill it after ``limit`` seconds; its peak RSS via wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(limit, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Child(
            seconds=seconds,
            rss_mib=usage.ru_maxrss / 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            code=proc.returncode,
            killed=killed.is_set(),
        )


def _must(child: Child, args: list[str]) -> Child:
    """A set-up process that has to work: a failure ends the bench."""
    if child.outcome != "ok":
        msg = (
            f"{Path(args[0]).name} {args[1:3]} {child.outcome} (exit {child.code}): {child.tail()}"
        )
        raise SystemExit(msg)
    return child


def _steps(args_list: list[list[str]]) -> Step:
    """Processes one after the other as one step: summed time, highest RSS; stops at a miss."""
    total, rss = 0.0, 0.0
    for args in args_list:
        child = run_child(args, limit=max(1.0, STEP_LIMIT - total))
        total += child.seconds
        rss = max(rss, child.rss_mib)
        if child.outcome != "ok":
            outcome = "timed out" if "timed out" in child.stderr else child.outcome
            detail = f"{Path(args[0]).name} {args[2]}: {child.tail()}"
            return Step(seconds=total, rss_mib=rss, outcome=outcome, detail=detail)
    return Step(seconds=total, rss_mib=rss)


def _flat(files: dict[str, str], root: Path) -> None:
    """Write a tool's files flat in one directory (kapply reads one level)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (root / rel.replace("/", "-")).write_text(text)


def _change(files: dict[str, str]) -> dict[str, str]:
    changed = dict(files)
    changed[CHANGED_FILE] = changed[CHANGED_FILE].replace("mode: blue", "mode: green", 1)
    return changed


def _namespaces(prefix: str) -> list[str]:
    return [f"{prefix}-{n}" for n in range(10)]


def peer_kubectl(bins: Bins, root: Path, prefix: str) -> Callable[[], Step]:
    """Server-side apply of the directory, then a wait for Available in each namespace."""
    kc = [str(bins.kubectl), f"--kubeconfig={bins.kubeconfig}"]
    apply = [*kc, "apply", "--server-side", "--field-manager=bench-kubectl", "-f", str(root)]
    wait = [*kc, "wait", "--for=condition=Available", "deployment", "--all", f"--timeout={TIMEOUT}"]
    waits = [[*wait, "-n", ns] for ns in _namespaces(prefix)]
    return lambda: _steps([apply, *waits])


def peer_flux(bins: Bins, root: Path, prefix: str) -> Callable[[], Step]:
    """The fluxssa harness: ApplyAllStaged then WaitForSet, as kustomize-controller does."""
    args = [str(bins.peers / "fluxssa"), f"--kubeconfig={bins.kubeconfig}", f"--dir={root}"]
    args.append(f"--timeout={TIMEOUT}")

    def step() -> Step:
        child = run_child(args)
        try:
            report = json.loads(child.stdout)
        except ValueError:
            return Step(
                seconds=child.seconds,
                rss_mib=child.rss_mib,
                outcome=child.outcome,
                detail=child.tail(),
            )
        outcome = child.outcome
        if "timeout" in report.get("wait_error", "") or "deadline" in report.get("wait_error", ""):
            outcome = "timed out"
        detail = f"apply {report['apply_s']:.1f} s ({_phase(report.get('apply'))})"
        detail += f" + wait {report['wait_s']:.1f} s ({_phase(report.get('wait'))})"
        for key in ("apply_error", "wait_error"):
            if report.get(key):
                detail += f"; {key}: {report[key][:300]}"
        return Step(seconds=child.seconds, rss_mib=child.rss_mib, detail=detail, outcome=outcome)

    return step


def _phase(phase: dict[str, object] | None) -> str:
    """The harness's request counts of one phase and the time they queued in the rate limiter."""
    if not phase:
        return "not reached"
    requests = phase.get("requests") or {}
    assert isinstance(requests, dict)
    counts = " ".join(f"{verb} {n}" for verb, n in sorted(requests.items()))
    throttled = phase.get("throttled_s", 0.0)
    assert isinstance(throttled, float | int)
    return f"{counts}; {throttled:.0f} s throttled, summed over workers"


def peer_kapply(bins: Bins, root: Path, prefix: str) -> Callable[[], Step]:
    """kapply with an inventory in ``default``, server-side, waiting for reconcile."""
    kapply = [str(bins.peers / "kapply"), f"--kubeconfig={bins.kubeconfig}"]
    init = [*kapply, "init", str(root), f"--inventory-id=bench-{prefix}", "-n", "default"]
    _must(run_child(init), init)
    args = [*kapply, "apply", str(root), "--server-side", "--field-manager=bench-kapply"]
    args += [f"--reconcile-timeout={TIMEOUT}", "--output=events"]
    return lambda: _steps([args])


PEERS = {"kubectl": peer_kubectl, "flux": peer_flux, "kapply": peer_kapply}


def bench_peer(tool: str, bins: Bins, work: Path, files: dict[str, str], prefix: str) -> Row:
    """First apply, the same again, then one ConfigMap changed: each until healthy."""
    root = work / tool
    _flat(files, root)
    step = PEERS[tool](bins, root, prefix)
    first = step()
    noop = step()
    _flat(_change(files), root)
    return Row(tool=tool, first=first, noop=noop, change=step())


def bench_gitsync(
    kubeconfig: Path, work: Path, files: dict[str, str], run: str
) -> tuple[Row, dict[str, Counter[str]]]:
    """sync_app in this process as ``gitsync run`` runs it: with the controller's shared
    informers (started cold by the first sync, their calls counted with the sync's) and
    its steady-poll memo. RSS is this process's peak."""
    repo = BareRepo(work / "gitsync.git")
    repo.commit(files, message="bench v1")
    raw = {"name": f"bench-{run}", "repo": repo.file_url, "namespace": "default"}
    (app,) = config.parse({"apps": [raw]}).apps
    kube = Kube.connect(kubeconfig=kubeconfig)
    hub_kube = Kube.connect(kubeconfig=kubeconfig)
    hub, memo = Informers(hub_kube), SteadyMemo()
    state_ns = f"bs-{run}"
    ctx = Context(
        kube=kube,
        cache_dir=work / "gitsync-cache",
        state_namespace=state_ns,
        informers=hub,
        steady=memo,
    )
    steps: list[Step] = []
    calls: dict[str, Counter[str]] = {}
    try:
        for name in ("first", "noop", "change"):
            if name == "change":
                repo.commit(_change(files), message="bench v2")
            elif name == "noop":
                _settle(lambda: memo.check(app, repo.head(), hub, state_namespace=state_ns))
            hub_kube.calls.clear()
            result, seconds, gate, counted = run_sync(app, ctx)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            detail = f"gate {gate:.2f} s, {result.result}"
            steps.append(Step(seconds=seconds, rss_mib=rss, detail=detail))
            calls[name] = counted + hub_kube.calls
    finally:
        hub.stop()
    first, noop, change = steps
    return Row(tool="gitsync", first=first, noop=noop, change=change), calls


def _settle(ready: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait (untimed) until the informers have seen the last sync's own writes, as they
    have between two polls of a controller; go on regardless after ``timeout``."""
    deadline = time.monotonic() + timeout
    while ready() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _cell(step: Step, base: Step | None) -> str:
    text = f"{step.seconds:.2f} s"
    ratio = step.seconds / base.seconds if base is not None and base.seconds > 0 else None
    if step.outcome != "ok":
        text = f"**{step.outcome}** after {step.seconds:.0f} s"
        if ratio is not None:
            text += f" (>{ratio:.1f}x)"
    elif ratio is not None:
        text += f" ({ratio:.1f}x)"
    return text


def _line(r: Row) -> str:
    """One tool's figures, printed as soon as they exist (a cut run keeps them)."""
    return (
        f"{r.tool}: first {r.first.seconds:.2f} s, no-op {r.noop.seconds:.2f} s, "
        f"change {r.change.seconds:.2f} s, peak RSS {r.rss_mib:.0f} MiB"
    )


def pods_not_running(bins: Bins) -> str:
    """Pods of the whole cluster that are not Running, by phase: each tool's wait needs none."""
    args = [str(bins.kubectl), f"--kubeconfig={bins.kubeconfig}", "get", "pods", "-A"]
    args += ["--field-selector=status.phase!=Running", "-o", "jsonpath={.items[*].status.phase}"]
    phases = Counter(_must(run_child(args), args).stdout.split())
    return ", ".join(f"{phase} {n}" for phase, n in sorted(phases.items())) or "none"


def table(
    n_objects: int, rows: list[Row], calls: dict[str, Counter[str]] | None, notes: list[str]
) -> str:
    """The markdown table at one size; ratios are tool time / gitsync time."""
    base = next((r for r in rows if r.tool == "gitsync"), None)
    lines = [
        f"### {n_objects} objects (10 namespaces, each tool its own)",
        "",
        "| tool | first sync until healthy | no-op resync | one change | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        is_base = base is None or r is base
        cells = [
            _cell(r.first, None if is_base else base.first if base else None),
            _cell(r.noop, None if is_base else base.noop if base else None),
            _cell(r.change, None if is_base else base.change if base else None),
        ]
        rss = f"{r.rss_mib:.0f} MiB"
        if r.tool == "gitsync":
            rss += " (whole bench process)"
        lines.append(f"| {LABELS[r.tool]} | {' | '.join(cells)} | {rss} |")
    details = [
        f"- {r.tool} {name}: {step.detail}"
        for r in rows
        for name, step in (("first", r.first), ("no-op", r.noop), ("change", r.change))
        if step.detail
    ]
    if details:
        lines += ["", *details]
    lines += ["", *notes] if notes else []
    if calls:
        lines += ["", "gitsync API calls (kube.calls):", ""]
        for name, counted in calls.items():
            text = ", ".join(f"{k}={v}" for k, v in sorted(counted.items())) or "none"
            lines.append(f"- {name}: {text}")
    return "\n".join(lines)


def deployments(total: int) -> int:
    """Deployments (1 replica, so Pods) bench_sync.generate makes for one tool."""
    per_ns = sum(n for _, n in MIX)
    scale = max(1, round(total / (10 * per_ns)))
    return 10 * scale * dict(MIX)["Deployment"]


def peers_bin() -> Path:
    """hack/build-peers.sh's bin dir (builds on first use)."""
    script = Path(__file__).resolve().parents[2] / "hack" / "build-peers.sh"
    out = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_peers")
    parser.add_argument("--objects", type=int, nargs="+", default=[1000])
    parser.add_argument("--only", default=",".join(TOOLS), help="comma list of " + ",".join(TOOLS))
    parser.add_argument("--kubeconfig", default=os.environ.get("GITSYNC_TEST_KUBECONFIG"))
    args = parser.parse_args(argv)
    only = [t for t in TOOLS if t in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(TOOLS)
    if unknown or not only:
        parser.error(f"--only takes {','.join(TOOLS)}; got {args.only}")
    log.configure(json=True, level="info")
    peers = peers_bin() if set(only) - {"gitsync"} else Path()
    pods = sum(deployments(n) for n in args.objects) * len(only)
    run = uuid.uuid4().hex[:5]
    tables: list[str] = []
    with cluster(args.kubeconfig, pods) as (kubeconfig, kubectl):
        bins = Bins(kubectl=kubectl, peers=peers, kubeconfig=kubeconfig)
        for size in args.objects:
            rows: list[Row] = []
            calls: dict[str, Counter[str]] | None = None
            n_objects = 0
            # Peers first and gitsync last: gitsync meets the fullest cluster.
            order = [t for t in only if t != "gitsync"] + [t for t in only if t == "gitsync"]
            for tool in order:
                prefix = f"{tool[:2]}{size}{run}"
                files = generate(size, prefix)
                n_objects = sum(len(t.split("---\n")) for t in files.values())
                with tempfile.TemporaryDirectory() as tmp:
                    print(f"bench_peers: {tool} at {n_objects} objects", file=sys.stderr)
                    if tool == "gitsync":
                        row, calls = bench_gitsync(kubeconfig, Path(tmp), files, f"{size}{run}")
                    else:
                        row = bench_peer(tool, bins, Path(tmp), files, prefix)
                rows.append(row)
                print(f"bench_peers: {_line(row)}", file=sys.stderr, flush=True)
            rows.sort(key=lambda r: TOOLS.index(r.tool))
            notes = [f"Pods not Running on the cluster after this size: {pods_not_running(bins)}."]
            if not args.kubeconfig:
                nodes, per_node = node_sizing(pods)
                notes.append(f"KWOK nodes: {nodes} x {per_node} Pods, for {pods} Pods of the run.")
            tables.append(table(n_objects, rows, calls, notes))
            print(tables[-1], flush=True)
            print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
