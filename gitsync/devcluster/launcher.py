"""Start and stop a real Kubernetes control plane on 127.0.0.1 for tests and the demo.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes: it
plays kubelet by writing Node and Pod status) run as child processes built by
``hack/build-testcluster.sh``. Each runs in its own process group and is stopped by PID,
never by name. A ``state.json`` in the work dir records PIDs and the kubeconfig so another
process (``python -m gitsync.devcluster down``) can stop a cluster it did not start.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from gitsync import log
from gitsync.errors import GitSyncError

from . import provisioner, realnode
from .certs import (
    CLIENT_IDENTITIES,
    FRONT_PROXY_CLIENT,
    SERVICE_ACCOUNT_ISSUER,
    Pki,
    generate_pki,
    pki_layout,
    write_kubeconfig,
)

LOOPBACK = "127.0.0.1"
BIN_ENV = "GITSYNC_TESTCLUSTER_BIN"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_LABEL = "gitsync.test/kwok-node"
# Pod label read by our kwok stages (stages/*.yaml): a "bad commit" sets it in a template.
BEHAVIOR_LABEL = "gitsync.test/behavior"
CRASHLOOP = "crashloop"
NEVER_READY = "never-ready"
STATE_FILE = "state.json"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
PROVISIONER = "provisioner"
# The real node's processes (``real_node=True`` only), in start order.
FORWARDER = "apiserver-forward"
NODE_COMPONENTS = (FORWARDER, "containerd", "kubelet")
# Start order; stop runs it backwards so clients go before the servers they talk to.
COMPONENTS = (*BINARIES, PROVISIONER, *NODE_COMPONENTS)
PACKAGE_STAGES = Path(__file__).parent / "stages"


_DEFAULT_SERVICE_CIDR = "10.96.0.0/16"


class DevClusterError(GitSyncError):
    """The local control plane could not be built, started, reached or stopped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """What to start; everything the cluster writes goes under ``work_dir``."""

    work_dir: Path
    bin_dir: Path | None = None
    build_script: Path | None = None
    nodes: int = 3
    node_cpu: str = "16"
    node_memory: str = "64Gi"
    node_pods: str = "110"
    # Numbers the API allocates from, never addresses anything sends traffic to.
    service_cidr: str = _DEFAULT_SERVICE_CIDR
    service_ip: str = "10.96.0.1"
    pod_cidr: str = "10.244.0.0/16"
    start_timeout: float = 120.0
    # Tests set this so a killed pytest cannot leave a control plane running.
    die_with_parent: bool = False
    extra_stages: tuple[Path, ...] = ()
    # One real node (kubelet + containerd) beside the KWOK nodes; see realnode.py.
    real_node: bool = False
    real_node_timeout: float = 120.0
    # An audit policy: the apiserver then writes JSON audit events to work_dir/audit.log
    # (who wrote what, when, with which User-Agent), e.g. for the sharding test's audit.
    audit_policy: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ports:
    """Loopback ports picked free at start and kept for restarts."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessRecord:
    """One started component: enough to find it again, and to be sure it is ours."""

    name: str
    pid: int
    argv: tuple[str, ...]
    log: Path


@dataclass(slots=True)
class _Runtime:
    """Mutable per-run state: what is running now."""

    ports: Ports | None = None
    pki: Pki | None = None
    node: realnode.NodeLayout | None = None
    records: dict[str, ProcessRecord] = field(default_factory=dict)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    argv: dict[str, tuple[str, ...]] = field(default_factory=dict)
    env: dict[str, dict[str, str]] = field(default_factory=dict)


def find_build_script() -> Path | None:
    """``hack/build-testcluster.sh`` of the source tree this package runs from, if any."""
    candidate = Path(__file__).resolve().parents[2] / "hack" / "build-testcluster.sh"
    return candidate if candidate.is_file() else None


def resolve_bin_dir(
    *, bin_dir: Path | None = None, build_script: Path | None = None, kubelet: bool = False
) -> Path:
    """Find the control-plane binaries: explicit dir, ``$GITSYNC_TESTCLUSTER_BIN``, or build.

    The build script prints the bin dir as its last line and returns at once when the
    cache is complete, so running it every time is the cheap way to ask where it is.
    ``kubelet`` asks the build for the kubelet too (the real node), and checks for it.
    """
    origin = "the given bin dir"
    if bin_dir is None and os.environ.get(BIN_ENV):
        bin_dir, origin = Path(os.environ[BIN_ENV]), f"${BIN_ENV}"
    if bin_dir is None:
        script = build_script or find_build_script()
        if script is None:
            msg = (
                f"cannot find the control-plane binaries: set {BIN_ENV} to a directory "
                "holding them, or run from a gitsync checkout with hack/build-testcluster.sh"
            )
            raise DevClusterError(msg)
        result = subprocess.run(
            ["bash", str(script), *(["kubelet"] if kubelet else [])],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            msg = f"{script} failed with exit code {result.returncode}; its stderr says why"
            raise DevClusterError(msg)
        bin_dir, origin = Path(lines[-1]), str(script)
    wanted = (*BINARIES, "kubectl", *(["kubelet"] if kubelet else []))
    missing = [b for b in wanted if not (bin_dir / b).is_file()]
    if missing:
        msg = (
            f"{bin_dir} (from {origin}) lacks {', '.join(missing)}; "
            f"build them with hack/build-testcluster.sh{' kubelet' if kubelet else ''}"
        )
        raise DevClusterError(msg)
    return bin_dir


def stage_files(bin_dir: Path, extra: Iterable[Path] = ()) -> list[Path]:
    """kwok's upstream stages (copied next to ``bin/`` by the build) plus ours."""
    upstream = sorted((bin_dir.parent / "stages").glob("*.yaml"))
    if not upstream:
        msg = f"no kwok stages in {bin_dir.parent / 'stages'}; rerun hack/build-testcluster.sh"
        raise DevClusterError(msg)
    return [*upstream, *sorted(PACKAGE_STAGES.glob("*.yaml")), *extra]


class DevCluster:
    """A control plane on loopback ports; a context manager that stops what it started."""

    def __init__(self, config: ClusterConfig) -> None:
        if config.real_node and config.service_cidr == _DEFAULT_SERVICE_CIDR:
            # The Service IP must be an address Pods can reach: it goes on the Pod bridge.
            config = replace(
                config, service_cidr=realnode.SERVICE_CIDR, service_ip=realnode.SERVICE_IP
            )
        self.config = config
        self._rt = _Runtime()
        self._bin_dir = config.bin_dir
        self._log = log.get(component="devcluster", work_dir=str(config.work_dir))

    # ----------------------------------------------------------------- properties

    @property
    def work_dir(self) -> Path:
        return self.config.work_dir

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters)."""
        return self.work_dir / "admin.kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.work_dir / STATE_FILE

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = resolve_bin_dir(
                build_script=self.config.build_script, kubelet=self.config.real_node
            )
        return self._bin_dir

    @property
    def volumes_dir(self) -> Path:
        """Where the default StorageClass's hostPath volumes live."""
        return self.work_dir / "volumes"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def ports(self) -> Ports:
        if self._rt.ports is None:
            raise DevClusterError("the cluster has not been started")
        return self._rt.ports

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports.apiserver}"

    @property
    def processes(self) -> Mapping[str, ProcessRecord]:
        return dict(self._rt.records)

    @property
    def node(self) -> realnode.NodeLayout | None:
        """The real node's layout, when this cluster has one."""
        return self._rt.node

    def import_image(self, archive: Path) -> None:
        """Import a docker-archive into the real node's containerd (no registry needed)."""
        if self._rt.node is None:
            raise DevClusterError("this cluster has no real node to import images into")
        try:
            realnode.import_image(self._rt.node, archive)
        except realnode.RealNodeError as e:
            raise DevClusterError(str(e)) from e

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component from a clean data dir and wait until the cluster works."""
        if self._rt.records:
            raise DevClusterError("this DevCluster is already running; stop() it first")
        began = time.monotonic()
        deadline = began + self.config.start_timeout
        bin_dir = self.bin_dir
        stages = stage_files(bin_dir, self.config.extra_stages)
        if self.config.real_node:
            self._check_real_node_host()
        self._prepare_work_dir()
        self._rt.ports = _free_ports()
        self._rt.pki = generate_pki(self.work_dir / "pki", service_ip=self.config.service_ip)
        self._write_kubeconfigs()
        self._plan(bin_dir, stages)
        try:
            self._spawn("etcd")
            self._wait("etcd healthy", self._etcd_healthy, deadline)
            self._spawn("kube-apiserver")
            self._wait("kube-apiserver /readyz", self.apiserver_ready, deadline)
            for name in ("kube-controller-manager", "kube-scheduler", "kwok", PROVISIONER):
                self._spawn(name)
            self._write_state()
            self._create_storage_class()
            self._create_nodes()
            self._wait("default ServiceAccount", self._default_service_account, deadline)
            self._wait("KWOK nodes Ready", self._nodes_ready, deadline)
            if self.config.real_node:
                self._start_real_node()
        except BaseException:
            self.stop()
            raise
        self._log.info(
            "devcluster.ready",
            server=self.server,
            kubeconfig=str(self.kubeconfig),
            seconds=round(time.monotonic() - began, 1),
        )

    def stop(self) -> None:
        """Stop every process this cluster started, newest first, each by its PID.

        A real node goes first, in the order that leaves nothing behind: the kubelet, then
        every container (containerd must still be up to kill them), then containerd, then
        mounts, network namespaces, the bridge and the cgroups.
        """
        node = self._rt.node
        if node is not None:
            self._stop_one("kubelet")
            realnode.kill_tasks(node)
            self._stop_one("containerd")
            for problem in realnode.cleanup(node):
                self._log.warning("devcluster.leftover", problem=problem)
            self._rt.node = None
        for name in reversed(COMPONENTS):
            self._stop_one(name)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        shutil.rmtree(self.work_dir / "etcd-data", ignore_errors=True)
        shutil.rmtree(self.volumes_dir, ignore_errors=True)

    def restart_apiserver(self, *, timeout: float = 60.0) -> None:
        """Stop kube-apiserver only and start it again on the same port with the same flags."""
        if "kube-apiserver" not in self._rt.records:
            raise DevClusterError("kube-apiserver is not running under this DevCluster")
        deadline = time.monotonic() + timeout
        self._stop_one("kube-apiserver")
        # A multi-threaded process can look gone before its last thread lets go of the port.
        self._wait("the apiserver port to be free", self._apiserver_port_free, deadline)
        self._spawn("kube-apiserver")
        self._write_state()
        self._wait("kube-apiserver /readyz", self.apiserver_ready, deadline)
        self._log.info("devcluster.apiserver_restarted", pid=self._rt.records["kube-apiserver"].pid)

    def restart_etcd(self, *, timeout: float = 60.0) -> None:
        """Stop etcd only (its data dir stays) and start it again; waits until the API
        server answers ``/readyz`` again, as after an etcd failover."""
        if "etcd" not in self._rt.records:
            raise DevClusterError("etcd is not running under this DevCluster")
        deadline = time.monotonic() + timeout
        self._stop_one("etcd")
        self._wait("the etcd port to be free", self._etcd_port_free, deadline)
        self._spawn("etcd")
        self._write_state()
        self._wait("etcd healthy", self._etcd_healthy, deadline)
        self._wait("kube-apiserver /readyz", self.apiserver_ready, deadline)
        self._log.info("devcluster.etcd_restarted", pid=self._rt.records["etcd"].pid)

    @classmethod
    def attach(cls, work_dir: Path) -> DevCluster:
        """A handle on a cluster another process started, read from its state file."""
        state_path = work_dir / STATE_FILE
        try:
            state = json.loads(state_path.read_text())
        except FileNotFoundError:
            msg = f"no running cluster recorded in {state_path}"
            raise DevClusterError(msg) from None
        except json.JSONDecodeError as e:
            msg = f"{state_path} is not valid JSON ({e}); delete it and the processes by hand"
            raise DevClusterError(msg) from e
        cluster = cls(ClusterConfig(work_dir=work_dir, bin_dir=Path(state["bin_dir"])))
        cluster._rt.ports = Ports(**state["ports"])
        if state.get("real_node"):
            cluster._rt.node = realnode.NodeLayout.from_json(state["real_node"])
        for item in state["processes"]:
            record = ProcessRecord(
                name=item["name"], pid=item["pid"], argv=tuple(item["argv"]), log=Path(item["log"])
            )
            cluster._rt.records[record.name] = record
            cluster._rt.argv[record.name] = record.argv
        return cluster

    def status(self) -> dict[str, bool]:
        """Whether each recorded process is alive and is still the binary we started."""
        return {name: _is_ours(rec) for name, rec in self._rt.records.items()}

    # -------------------------------------------------------------- health checks

    def apiserver_ready(self) -> bool:
        """``/readyz`` answers ``ok``."""
        status, body = self._api("GET", "/readyz", raw=True)
        return status == 200 and body == "ok"

    def _apiserver_port_free(self) -> bool:
        return _port_free(self.ports.apiserver)

    def _etcd_port_free(self) -> bool:
        return _port_free(self.ports.etcd_client) and _port_free(self.ports.etcd_peer)

    def _etcd_healthy(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self.ports.etcd_client, timeout=2)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            return response.status == 200 and json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError):
            return False
        finally:
            conn.close()

    def _default_service_account(self) -> bool:
        status, _ = self._api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    def real_node_ready(self) -> bool:
        """The real node is registered, Ready, and no longer tainted not-ready."""
        node = self._rt.node
        if node is None:
            return False
        status, body = self._api("GET", f"/api/v1/nodes/{node.node_name}")
        if status != 200:
            return False
        conditions = {c["type"]: c["status"] for c in body["status"].get("conditions", [])}
        taints = {t["key"] for t in body["spec"].get("taints", [])}
        return conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

    def _nodes_ready(self) -> bool:
        status, body = self._api("GET", f"/api/v1/nodes?labelSelector={KWOK_NODE_LABEL}%3Dtrue")
        if status != 200 or len(body["items"]) < self.config.nodes:
            return False
        for node in body["items"]:
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = {t["key"] for t in node["spec"].get("taints", [])}
            if conditions.get("Ready") != "True" or "node.kubernetes.io/not-ready" in taints:
                return False
        return True

    # ------------------------------------------------------------------ internals

    def _prepare_work_dir(self) -> None:
        for stale in ("etcd-data", "pki", "logs", "volumes"):
            shutil.rmtree(self.work_dir / stale, ignore_errors=True)
        for sub in ("logs", "certs", "kwok-home"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)

    def _write_kubeconfigs(self) -> None:
        pki = self._pki()
        clients = {
            "admin": pki.admin,
            "controller-manager": pki.controller_manager,
            "scheduler": pki.scheduler,
            "kwok": pki.kwok,
        }
        for name, pair in clients.items():
            write_kubeconfig(
                self.work_dir / f"{name}.kubeconfig",
                server=self.server,
                ca=pki.ca.cert,
                client=pair,
                user=CLIENT_IDENTITIES[name][0],
            )

    def _pki(self) -> Pki:
        if self._rt.pki is None:
            self._rt.pki = pki_layout(self.work_dir / "pki")
        return self._rt.pki

    def _plan(self, bin_dir: Path, stages: list[Path]) -> None:
        """Fix every component's command line once, so a restart reuses it exactly."""
        p, pki, w, loop = self.ports, self._pki(), self.work_dir, LOOPBACK
        etcd_peer = f"http://{loop}:{p.etcd_peer}"
        argv: dict[str, list[str]] = {
            "etcd": [
                "--name=gitsync-dev",
                f"--data-dir={w / 'etcd-data'}",
                f"--listen-client-urls=http://{loop}:{p.etcd_client}",
                f"--advertise-client-urls=http://{loop}:{p.etcd_client}",
                f"--listen-peer-urls={etcd_peer}",
                f"--initial-advertise-peer-urls={etcd_peer}",
                f"--initial-cluster=gitsync-dev={etcd_peer}",
                "--unsafe-no-fsync",  # tests only: data need not survive a power cut
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
            "kube-apiserver": [
                f"--etcd-servers=http://{loop}:{p.etcd_client}",
                f"--bind-address={loop}",
                f"--advertise-address={loop}",
                f"--secure-port={p.apiserver}",
                # The endpoint reconciler refuses a loopback advertise address.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={w / 'certs' / 'apiserver'}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
                f"--proxy-client-key-file={pki.front_proxy_client.key}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={self.config.service_cidr}",
                "--allow-privileged=true",
                "--profiling=false",
                # Without it SIGTERM waits the full 60 s request timeout on open watches.
                "--shutdown-watch-termination-grace-period=2s",
                *self._kubelet_client_flags(),
                *self._audit_flags(),
            ],
            "kube-controller-manager": [
                f"--kubeconfig={w / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={w / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={w / 'controller-manager.kubeconfig'}",
                f"--bind-address={loop}",
                f"--secure-port={p.controller_manager}",
                f"--cert-dir={w / 'certs' / 'controller-manager'}",
                "--leader-elect=false",
                # Each controller acts as its own ServiceAccount with the bootstrap RBAC
                # roles, as kubeadm runs it; the component identity alone may not create Pods.
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
            ],
            "kube-scheduler": [
                f"--kubeconfig={w / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={w / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={w / 'scheduler.kubeconfig'}",
                f"--bind-address={loop}",
                f"--secure-port={p.scheduler}",
                f"--cert-dir={w / 'certs' / 'scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            "kwok": [
                f"--kubeconfig={w / 'kwok.kubeconfig'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                # Node addresses are only status fields, but keep them on loopback too.
                f"--node-ip={loop}",
                f"--cidr={self.config.pod_cidr}",
                f"--server-address={loop}:{p.kwok}",
                "--node-lease-duration-seconds=40",
                *(f"--config={s}" for s in stages),
            ],
        }
        for name, args in argv.items():
            self._rt.argv[name] = (str(bin_dir / name), *args)
        self._rt.argv[PROVISIONER] = (
            sys.executable,
            "-m",
            "gitsync.devcluster.provisioner",
            f"--server={loop}:{p.apiserver}",
            f"--pki={pki.directory}",
            f"--root={self.volumes_dir}",
        )
        # kwok also reads ~/.kwok/kwok.yaml; a private HOME keeps a developer's stages out.
        self._rt.env["kwok"] = {"HOME": str(w / "kwok-home")}

    @property
    def audit_log(self) -> Path | None:
        """The apiserver's audit log (JSON lines), when started with an audit policy."""
        return self.work_dir / "audit.log" if self.config.audit_policy is not None else None

    def _audit_flags(self) -> list[str]:
        if self.config.audit_policy is None:
            return []
        return [
            f"--audit-policy-file={self.config.audit_policy}",
            f"--audit-log-path={self.work_dir / 'audit.log'}",
            "--audit-log-format=json",
            "--audit-log-maxsize=100",
            "--audit-log-maxbackup=1",
        ]

    def _kubelet_client_flags(self) -> list[str]:
        """How the apiserver reaches a real kubelet: by its InternalIP, with a client cert."""
        if not self.config.real_node:
            return []
        pair = realnode.apiserver_kubelet_client(self._pki())
        return [
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={pair.cert}",
            f"--kubelet-client-key={pair.key}",
        ]

    def _spawn(self, name: str) -> None:
        argv = self._rt.argv[name]
        log_path = self.work_dir / "logs" / f"{name}.log"
        env = {**os.environ, **self._rt.env.get(name, {})}
        with log_path.open("ab") as out:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env=env,
                start_new_session=True,  # own process group: stop() signals exactly it
                preexec_fn=_die_with_parent if self.config.die_with_parent else None,  # noqa: PLW1509 - prctl must run in the child; it only makes one syscall
            )
        self._rt.children[name] = child
        self._rt.records[name] = ProcessRecord(name=name, pid=child.pid, argv=argv, log=log_path)
        self._log.debug("devcluster.started", process=name, pid=child.pid)

    def _stop_one(self, name: str, *, grace: float = 10.0) -> None:
        record = self._rt.records.pop(name, None)
        child = self._rt.children.pop(name, None)
        if record is None:
            return
        if child is None and not _is_ours(record):
            # Not our child and the PID now belongs to something else (or nothing).
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGTERM)
        if not _wait_gone(record.pid, child, grace):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
            _wait_gone(record.pid, child, grace)
        self._log.debug("devcluster.stopped", process=name, pid=record.pid)

    def _wait(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        """Poll ``check`` until it holds; fail early, with its log, if a component died."""
        delay = 0.05
        while True:
            for name, child in self._rt.children.items():
                if child.poll() is not None:
                    record = self._rt.records[name]
                    msg = (
                        f"{name} exited with code {child.returncode} while waiting for {what}; "
                        f"last lines of {record.log}:\n{_tail(record.log)}"
                    )
                    raise DevClusterError(msg)
            if check():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {r.log}\n{_tail(r.log)}" for r in self._rt.records.values())
                msg = f"timed out waiting for {what} under {self.work_dir}\n{logs}"
                raise DevClusterError(msg)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _start_real_node(self) -> None:
        """containerd, the bridge, the images, then a kubelet; wait until its Node is Ready."""
        began = time.monotonic()
        deadline = began + self.config.real_node_timeout
        kubelet = self.bin_dir / "kubelet"
        self._check_real_node_host()
        containerd = shutil.which("containerd") or "containerd"
        kubelet_port, healthz_port = _free_loopback_ports(2)
        node = realnode.NodeLayout.create(
            self.work_dir, kubelet_port=kubelet_port, healthz_port=healthz_port
        )
        self._rt.node = node
        self._write_state()  # from here on `down` knows what to clean up
        try:
            realnode.prepare(node, pki=self._pki(), server=self.server)
        except realnode.RealNodeError as e:
            raise DevClusterError(str(e)) from e
        self._bind_kubelet_api_client()
        self._rt.argv[FORWARDER] = (
            sys.executable,
            "-m",
            "gitsync.devcluster.forward",
            f"{node.service_ip}:443",
            f"{LOOPBACK}:{self.ports.apiserver}",
        )
        self._rt.argv["containerd"] = (containerd, *realnode.containerd_args(node))
        self._rt.argv["kubelet"] = (str(kubelet), *realnode.kubelet_args(node))
        self._spawn(FORWARDER)
        self._spawn("containerd")
        self._write_state()
        self._wait(
            "containerd to answer", lambda: realnode.ctr(node, "version").returncode == 0, deadline
        )
        try:
            realnode.import_node_images(node)
        except (realnode.RealNodeError, OSError) as e:
            raise DevClusterError(f"importing the node images failed: {e}") from e
        kubelet_began = time.monotonic()
        self._spawn("kubelet")
        self._write_state()
        self._wait("the real node Ready", self.real_node_ready, deadline)
        self._log.info(
            "devcluster.real_node_ready",
            node=node.node_name,
            seconds=round(time.monotonic() - began, 1),
            kubelet_seconds=round(time.monotonic() - kubelet_began, 1),
        )

    def _check_real_node_host(self) -> None:
        problems = realnode.host_problems(self.bin_dir / "kubelet")
        if problems:
            msg = "the real node cannot start on this machine: " + "; ".join(problems)
            raise DevClusterError(msg)

    def _bind_kubelet_api_client(self) -> None:
        """Let the apiserver's kubelet-client identity use the kubelet API (logs, exec)."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "gitsync-dev:apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": realnode.APISERVER_KUBELET_CLIENT,
                }
            ],
        }
        status, body = self._api(
            "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding
        )
        if status not in (201, 409):
            msg = f"binding the apiserver's kubelet client failed with HTTP {status}: {body}"
            raise DevClusterError(msg)

    def _create_storage_class(self) -> None:
        status, body = self._api(
            "POST", "/apis/storage.k8s.io/v1/storageclasses", provisioner.storage_class()
        )
        if status not in (201, 409):
            msg = f"creating the default StorageClass failed with HTTP {status}: {body}"
            raise DevClusterError(msg)

    def _create_nodes(self) -> None:
        for index in range(self.config.nodes):
            name = f"kwok-node-{index}"
            resources = {
                "cpu": self.config.node_cpu,
                "memory": self.config.node_memory,
                "pods": self.config.node_pods,
            }
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {
                        KWOK_NODE_ANNOTATION: "fake",
                        "node.alpha.kubernetes.io/ttl": "0",
                    },
                    "labels": {
                        KWOK_NODE_LABEL: "true",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                    },
                },
                "status": {"allocatable": resources, "capacity": resources},
            }
            status, body = self._api("POST", "/api/v1/nodes", node)
            if status not in (201, 409):
                msg = f"creating Node {name} failed with HTTP {status}: {body}"
                raise DevClusterError(msg)

    def _api(
        self, method: str, path: str, body: Any = None, *, raw: bool = False
    ) -> tuple[int, Any]:
        """One request as admin; connection errors read as status 0 (not up yet)."""
        pki = self._pki()
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        conn = http.client.HTTPSConnection(
            LOOPBACK, self.ports.apiserver, context=context, timeout=5
        )
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
        except OSError:
            return 0, None
        finally:
            conn.close()
        if raw:
            return response.status, text
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def _write_state(self) -> None:
        state = {
            "version": 1,
            "work_dir": str(self.work_dir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "bin_dir": str(self.bin_dir),
            "ports": asdict(self.ports),
            "real_node": self._rt.node.to_json() if self._rt.node else None,
            "processes": [
                {"name": r.name, "pid": r.pid, "argv": list(r.argv), "log": str(r.log)}
                for r in self._rt.records.values()
            ],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)


def _free_ports() -> Ports:
    """Ask the kernel for six distinct free loopback ports (held open together)."""
    sockets = []
    try:
        for _ in range(6):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        numbers = [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
    return Ports(
        etcd_client=numbers[0],
        etcd_peer=numbers[1],
        apiserver=numbers[2],
        controller_manager=numbers[3],
        scheduler=numbers[4],
        kwok=numbers[5],
    )


def _free_loopback_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """In the child: have the kernel SIGKILL it when the starting process dies."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _is_ours(record: ProcessRecord) -> bool:
    """The PID is alive (not a zombie) and still runs the binary we started."""
    try:
        argv0 = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return _alive(record.pid) and argv0.decode(errors="replace") == record.argv[0]


def _alive(pid: int) -> bool:
    """Exists and is not a zombie waiting for a parent that is not us."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_gone(pid: int, child: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if child is not None:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Go listens with SO_REUSEADDR, so a TIME_WAIT leftover does not count as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True
