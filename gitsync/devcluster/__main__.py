"""``python -m gitsync.devcluster up|down|status|kubectl-path``: a cluster that outlives us.

``up`` prints only ``export KUBECONFIG=...`` on stdout, so ``eval "$(... up)"`` works;
everything else goes to stderr. ``kubectl-path`` prints the matching kubectl binary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from gitsync import log

from .launcher import ClusterConfig, DevCluster, DevClusterError, resolve_bin_dir
from .realnode import REAL_NODE_LABEL

DIR_ENV = "GITSYNC_DEVCLUSTER_DIR"


def default_work_dir() -> Path:
    """``$GITSYNC_DEVCLUSTER_DIR``, else ``$XDG_CACHE_HOME/gitsync/devcluster``."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gitsync" / "devcluster"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gitsync.devcluster",
        description="Run a local Kubernetes control plane on 127.0.0.1.",
    )
    parser.add_argument("command", choices=["up", "down", "status", "kubectl-path"])
    parser.add_argument("--work-dir", type=Path, default=None, help=f"default: ${DIR_ENV}")
    parser.add_argument("--bin-dir", type=Path, default=None, help="prebuilt binaries")
    parser.add_argument("--nodes", type=int, default=3, help="KWOK nodes to create (up)")
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="up: add one real node (kubelet + containerd; root, hack/install-deps.sh realnode)",
    )
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="up: print `export KUBECONFIG=...` on stdout (always done; kept for scripts)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    log.configure(level="debug" if args.verbose else "warning")
    work_dir = (args.work_dir or default_work_dir()).resolve()
    try:
        if args.command == "up":
            return _up(work_dir, args.bin_dir, args.nodes, real_node=args.real_node)
        if args.command == "down":
            return _down(work_dir)
        if args.command == "kubectl-path":
            return _kubectl_path(work_dir, args.bin_dir)
        return _status(work_dir)
    except DevClusterError as e:
        print(f"devcluster: {e}", file=sys.stderr)
        return 1


def _up(work_dir: Path, bin_dir: Path | None, nodes: int, *, real_node: bool) -> int:
    if (work_dir / "state.json").exists():
        running = DevCluster.attach(work_dir)
        same_shape = (running.node is not None) == real_node
        if same_shape and all(running.status().values()) and running.apiserver_ready():
            print(f"devcluster: already running at {running.server}", file=sys.stderr)
            print(f"export KUBECONFIG={running.kubeconfig}")
            return 0
        print("devcluster: stopping the remains of a previous cluster", file=sys.stderr)
        running.stop()
    began = time.monotonic()
    if real_node and bin_dir is None:
        bin_dir = resolve_bin_dir(kubelet=True)
    cluster = DevCluster(
        ClusterConfig(work_dir=work_dir, bin_dir=bin_dir, nodes=nodes, real_node=real_node)
    )
    cluster.start()
    took = time.monotonic() - began
    print(
        f"devcluster: up in {took:.1f}s at {cluster.server}; logs in {work_dir}/logs",
        file=sys.stderr,
    )
    if cluster.node is not None:
        print(
            f"devcluster: real node {cluster.node.node_name} (label and taint "
            f"{REAL_NODE_LABEL}=true:NoSchedule), Pod network {cluster.node.subnet} "
            f"on bridge {cluster.node.bridge}",
            file=sys.stderr,
        )
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _down(work_dir: Path) -> int:
    if not (work_dir / "state.json").exists():
        print(f"devcluster: nothing running in {work_dir}", file=sys.stderr)
        return 0
    DevCluster.attach(work_dir).stop()
    print("devcluster: stopped", file=sys.stderr)
    return 0


def _kubectl_path(work_dir: Path, bin_dir: Path | None) -> int:
    if bin_dir is None and (work_dir / "state.json").exists():
        bin_dir = DevCluster.attach(work_dir).bin_dir
    print(resolve_bin_dir(bin_dir=bin_dir) / "kubectl")
    return 0


def _status(work_dir: Path) -> int:
    if not (work_dir / "state.json").exists():
        print(f"devcluster: nothing running in {work_dir}", file=sys.stderr)
        return 3
    cluster = DevCluster.attach(work_dir)
    alive = cluster.status()
    for name, record in cluster.processes.items():
        print(f"{name:<24} pid {record.pid:<8} {'running' if alive[name] else 'DEAD'}")
    ready = cluster.apiserver_ready()
    print(f"{'apiserver /readyz':<24} {cluster.server:<13} {'ok' if ready else 'NOT READY'}")
    if cluster.node is not None:
        node_ready = cluster.real_node_ready()
        verdict = "Ready" if node_ready else "NOT READY"
        print(f"{'real node':<24} {cluster.node.node_name:<13} {verdict}")
        ready = ready and node_ready
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0 if ready and all(alive.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
