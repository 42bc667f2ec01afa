"""One real node beside the KWOK nodes: containerd, runc, a CNI bridge and a kubelet.

What this machine needs (found by hand, see TESTCLUSTER.md's last section):

- containerd 1.6 with ``restrict_oom_score_adj`` (the sandbox refuses negative
  ``oom_score_adj`` even to root), the ``io.containerd.runc.v2`` runtime type, runc rather
  than crun (crun refuses the hybrid cgroup layout), and the cgroupfs driver;
- a kubelet with ``failCgroupV1: false`` whose cgroups live under a root of their own
  (``/gitsync-<id>`` in every hierarchy), so cleanup removes exactly what it made;
- a pod network that exists only on this machine: a bridge the launcher makes, with the
  gateway address and the ``kubernetes`` Service IP on it. Pods get an on-link route to the
  subnet and one host route to the Service IP, nothing else, and the bridge plugin runs
  without ``isGateway``/``ipMasq``, so IP forwarding stays off and no packet can leave.
  A forwarder on the Service IP relays to the apiserver on loopback, so Pods use the
  ordinary in-cluster config (ServiceAccount token, ``KUBERNETES_SERVICE_HOST``).

Identities are real: the kubelet uses a client cert ``O=system:nodes,
CN=system:node:<name>``, authenticates callers by cert or token and authorizes them by
SubjectAccessReview (Webhook), and the apiserver calls it with a client cert bound to
``system:kubelet-api-admin``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from gitsync.errors import GitSyncError

from .certs import KeyPair, Pki, issue_client_cert, issue_serving_cert, write_kubeconfig
from .images import BUSYBOX, PAUSE_IMAGE, ImageError, node_images

NODE_NAME = "gitsync-real-node"
REAL_NODE_LABEL = "gitsync.test/real-node"
# Taint and label share the key: a Pod meant for the node selects it and tolerates it.
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
POD_SUBNET = "198.18.0.0/24"
GATEWAY = "198.18.0.1"
SERVICE_CIDR = "198.18.1.0/24"
SERVICE_IP = "198.18.1.1"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CGROUP_FS = Path("/sys/fs/cgroup")
LOG_LINKS = Path("/var/log/containers")  # the kubelet's fixed symlink dir
NETNS_DIR = Path("/var/run/netns")
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
# The kubelet sets these host sysctls at start (protectKernelDefaults: true would refuse to
# start instead). Their values before it ran are saved and put back by cleanup().
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
SYSCTL_DIR = Path("/proc/sys")
_MNT_DETACH = 2


class RealNodeError(GitSyncError):
    """The real node cannot start on this machine, or did not stop cleanly."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLayout:
    """Names, paths and ports of one real node; recorded in state.json for ``down``."""

    node_name: str
    work: Path
    run: Path
    bridge: str
    subnet: str
    gateway: str
    service_ip: str
    cgroup_root: str
    kubelet_port: int
    healthz_port: int

    @classmethod
    def create(cls, work_dir: Path, *, kubelet_port: int, healthz_port: int) -> NodeLayout:
        """Names derived from the work dir, so two clusters never share a path or a cgroup."""
        tag = hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:8]
        return cls(
            node_name=NODE_NAME,
            work=work_dir / "realnode",
            # Unix socket paths are limited to 107 bytes: keep them short and on tmpfs.
            run=Path("/run") / f"gitsync-{tag}",
            bridge=f"gsbr{tag}"[:15],
            subnet=POD_SUBNET,
            gateway=GATEWAY,
            service_ip=SERVICE_IP,
            cgroup_root=f"/gitsync-{tag}",
            kubelet_port=kubelet_port,
            healthz_port=healthz_port,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeLayout:
        return cls(**{**data, "work": Path(data["work"]), "run": Path(data["run"])})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "work": str(self.work), "run": str(self.run)}

    @property
    def socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.work / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.run / "state"

    @property
    def containerd_config(self) -> Path:
        return self.work / "containerd.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.work / "cni" / "net.d"

    @property
    def kubelet_root(self) -> Path:
        return self.work / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.work / "kubelet-config.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.work / "kubelet.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.work / "pod-logs"

    @property
    def images_dir(self) -> Path:
        return self.work / "images"

    @property
    def saved_sysctls(self) -> Path:
        return self.work / "sysctls-before.json"

    @property
    def prefix_len(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


def host_problems(kubelet: Path) -> list[str]:
    """Why a real node cannot start here; empty when it can (the tests skip with these)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("a real node needs root (kubelet, containerd, mounts, the bridge)")
    for tool in ("containerd", "ctr", "runc", "ip", "mount"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed (hack/install-deps.sh realnode)")
    missing = [p for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
    if missing:
        problems.append(
            f"CNI plugins {', '.join(missing)} missing in {CNI_BIN_DIR} "
            "(hack/install-deps.sh realnode)"
        )
    if not BUSYBOX.is_file():
        problems.append(f"{BUSYBOX} is missing (hack/install-deps.sh realnode)")
    if shutil.which("go") is None:
        problems.append("Go is missing: it builds the pause binary (hack/install-deps.sh)")
    if not kubelet.is_file():
        problems.append(f"{kubelet} is missing (hack/build-testcluster.sh kubelet)")
    memory = CGROUP_FS / "memory"
    if not (memory / "cgroup.procs").exists() or not os.access(memory, os.W_OK):
        problems.append(f"no writable cgroup v1 memory hierarchy at {memory}")
    holder = _interface_with(GATEWAY)
    if holder:
        problems.append(
            f"{GATEWAY} is already on interface {holder}: another real-node dev cluster is "
            "running, or one was killed before cleaning up "
            "(python -m gitsync.devcluster down --work-dir DIR, or ip link delete it)"
        )
    return problems


# ------------------------------------------------------------------------ preparation


def prepare(layout: NodeLayout, *, pki: Pki, server: str) -> None:
    """Write configs and certs, make the cgroup root and the bridge. Undone by :func:`cleanup`."""
    for directory in (
        layout.work,
        layout.run,
        layout.containerd_root,
        layout.cni_conf_dir,
        layout.kubelet_root,
        layout.pod_logs,
        layout.images_dir,
    ):
        directory.mkdir(parents=True, exist_ok=True)
    node_pair = KeyPair(cert=layout.work / "node.crt", key=layout.work / "node.key")
    issue_client_cert(pki, node_pair, f"system:node:{layout.node_name}", ("system:nodes",))
    serving = KeyPair(cert=layout.work / "kubelet.crt", key=layout.work / "kubelet.key")
    issue_serving_cert(pki, serving, layout.node_name, (layout.gateway,))
    write_kubeconfig(
        layout.kubelet_kubeconfig,
        server=server,
        ca=pki.ca.cert,
        client=node_pair,
        user=f"system:node:{layout.node_name}",
    )
    layout.containerd_config.write_text(containerd_config(layout))
    (layout.cni_conf_dir / "10-gitsync.conflist").write_text(
        json.dumps(cni_config(layout), indent=2) + "\n"
    )
    layout.kubelet_config.write_text(
        yaml.safe_dump(kubelet_config(layout, ca=pki.ca.cert, serving=serving), sort_keys=False)
    )
    _save_sysctls(layout)
    _make_cgroup_root(layout.cgroup_root)
    _make_bridge(layout)


def apiserver_kubelet_client(pki: Pki) -> KeyPair:
    """The cert the apiserver presents to the kubelet (logs, exec, port-forward)."""
    pair = KeyPair(
        cert=pki.directory / f"{APISERVER_KUBELET_CLIENT}.crt",
        key=pki.directory / f"{APISERVER_KUBELET_CLIENT}.key",
    )
    if not pair.cert.exists():
        issue_client_cert(pki, pair, APISERVER_KUBELET_CLIENT, ())
    return pair


def containerd_config(layout: NodeLayout) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
# Written by gitsync.devcluster for the real node; removed by `devcluster down`.
version = 2
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{layout.socket}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.containerd_root / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This machine refuses a negative oom_score_adj even to root.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{layout.cni_conf_dir}"
  max_conf_num = 1
"""


def cni_config(layout: NodeLayout) -> dict[str, Any]:
    """Bridge + host-local: an on-link subnet and one route, to the Service IP on the host."""
    network = ipaddress.ip_network(layout.subnet)
    hosts = list(network.hosts())
    return {
        "cniVersion": "0.4.0",
        "name": "gitsync-dev",
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.bridge,
                # The launcher puts the gateway on the bridge. isGateway would also turn
                # on IP forwarding, and ipMasq would NAT Pods out: neither is wanted.
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(layout.work / "cni" / "ipam"),
                    "ranges": [
                        [
                            {
                                "subnet": layout.subnet,
                                "rangeStart": str(hosts[9]),
                                "rangeEnd": str(hosts[-5]),
                                "gateway": layout.gateway,
                            }
                        ]
                    ],
                    "routes": [{"dst": f"{layout.service_ip}/32", "gw": layout.gateway}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(layout: NodeLayout, *, ca: Path, serving: KeyPair) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": layout.gateway,
        "port": layout.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": layout.healthz_port,
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "30s"},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {
            "mode": "Webhook",
            "webhook": {"cacheAuthorizedTTL": "30s", "cacheUnauthorizedTTL": "5s"},
        },
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{layout.socket}",
        "registerNode": True,
        "registerWithTaints": [REAL_NODE_TAINT],
        "podLogsDir": str(layout.pod_logs),
        "resolvConf": "",
        "staticPodPath": "",
        "maxPods": 40,
        "serializeImagePulls": False,
        # A test machine's disk is what it is: never evict Pods or delete imported images.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
            "imagefs.inodesFree": "0%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "imageMinimumGCAge": "87600h",
        "containerLogMaxSize": "5Mi",
        "containerLogMaxFiles": 2,
    }


def kubelet_args(layout: NodeLayout) -> list[str]:
    return [
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={layout.kubelet_kubeconfig}",
        f"--root-dir={layout.kubelet_root}",
        f"--cert-dir={layout.work / 'kubelet-pki'}",
        f"--hostname-override={layout.node_name}",
        f"--node-ip={layout.gateway}",
        f"--node-labels={REAL_NODE_LABEL}=true",
        "--v=1",
    ]


def containerd_args(layout: NodeLayout) -> list[str]:
    return [f"--config={layout.containerd_config}", "--log-level=warn"]


def ctr(layout: NodeLayout, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``ctr`` against this node's containerd, in the CRI namespace."""
    return subprocess.run(
        ["ctr", f"--address={layout.socket}", "--namespace=k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def import_image(layout: NodeLayout, archive: Path) -> None:
    """``ctr images import`` one docker-archive (unpacked for the overlayfs snapshotter)."""
    result = ctr(layout, "images", "import", "--no-unpack=false", str(archive), timeout=600)
    if result.returncode != 0:
        msg = f"ctr images import {archive} failed: {result.stderr.strip()}"
        raise RealNodeError(msg)


def image_cache() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gitsync" / "node-images"


def import_node_images(layout: NodeLayout) -> dict[str, Path]:
    """Make (or reuse) the pause and busybox images and import both."""
    try:
        archives = node_images(image_cache())
    except ImageError as e:
        raise RealNodeError(str(e)) from e
    for archive in archives.values():
        import_image(layout, archive)
    return archives


# ---------------------------------------------------------------------------- cleanup


def kill_tasks(layout: NodeLayout) -> None:
    """With containerd still up: SIGKILL and delete every task, then every container.

    ``tasks delete --force`` kills and deletes in one call; a Pod's containers may vanish
    with its sandbox, so the errors of one pass are expected and the list is read again.
    """
    if not layout.socket.exists():
        return
    for _ in range(5):
        listed = ctr(layout, "tasks", "ls", "-q", timeout=30)
        tasks = listed.stdout.split() if listed.returncode == 0 else []
        if not tasks:
            break
        ctr(layout, "tasks", "delete", "--force", *tasks, timeout=60)
    containers = ctr(layout, "containers", "ls", "-q", timeout=30)
    if containers.returncode == 0 and containers.stdout.split():
        ctr(layout, "containers", "delete", *containers.stdout.split(), timeout=60)


def cleanup(layout: NodeLayout) -> list[str]:
    """After the kubelet and containerd are gone: mounts, netns, bridge, cgroups, files.

    Returns what could not be removed (empty when all went), so ``down`` can say so.
    """
    left: list[str] = []
    _kill_leftover_shims(layout)
    left += _unmount_under((layout.work, layout.run))
    left += _delete_netns(layout)
    _run(["ip", "link", "delete", layout.bridge])
    left += _remove_cgroup_root(layout.cgroup_root)
    _restore_sysctls(layout)
    with contextlib.suppress(OSError):
        for link in LOG_LINKS.iterdir():
            if link.is_symlink() and str(layout.pod_logs) in str(link.readlink()):
                link.unlink()
    for directory in (layout.run, layout.work):
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            left.append(f"{directory} could not be removed")
    return left


def _kill_leftover_shims(layout: NodeLayout) -> None:
    """Shims outlive containerd by design; ours name our socket in their command line."""
    needle = str(layout.socket).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline.split(b"\0")[0] and needle in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), 9)


def _unmount_under(roots: tuple[Path, ...]) -> list[str]:
    """Lazily unmount every mount point below ``roots``, deepest first."""
    left = []
    prefixes = [str(r.resolve()) for r in roots]
    for _ in range(3):
        targets = [
            point
            for point in _mount_points()
            if any(point == p or point.startswith(p + "/") for p in prefixes)
        ]
        if not targets:
            return []
        for point in sorted(targets, key=len, reverse=True):
            if _umount(point) != 0:
                left.append(point)
    return [f"mount {p} is still there" for p in sorted(set(left))]


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        field = line.split()[4]
        points.append(field.encode().decode("unicode_escape"))
    return points


def _umount(point: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.umount2(point.encode(), _MNT_DETACH))


def _delete_netns(layout: NodeLayout) -> list[str]:
    """Remove the Pod network namespaces whose interface holds an address of our subnet."""
    left = []
    network = ipaddress.ip_network(layout.subnet)
    with contextlib.suppress(OSError):
        for ns in NETNS_DIR.iterdir():
            if not ns.name.startswith("cni-"):
                continue
            shown = _run(["ip", "-n", ns.name, "-4", "-o", "addr", "show"])
            addresses = [w.split("/")[0] for w in shown.split() if "/" in w and w[0].isdigit()]
            if any(ipaddress.ip_address(a) in network for a in addresses):
                _umount(str(ns))
                _run(["ip", "netns", "delete", ns.name])
                if ns.exists():
                    left.append(f"netns {ns.name} is still there")
    return left


def _save_sysctls(layout: NodeLayout) -> None:
    if layout.saved_sysctls.exists():
        return
    before = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            before[key] = (SYSCTL_DIR / key).read_text().strip()
    layout.saved_sysctls.write_text(json.dumps(before, indent=1) + "\n")


def _restore_sysctls(layout: NodeLayout) -> None:
    """Put back what the kubelet changed, unless someone changed it again since."""
    try:
        before = json.loads(layout.saved_sysctls.read_text())
    except (OSError, ValueError):
        return
    for key, value in before.items():
        path = SYSCTL_DIR / key
        with contextlib.suppress(OSError):
            if path.read_text().strip() == KUBELET_SYSCTLS.get(
                key
            ) and value != KUBELET_SYSCTLS.get(key):
                path.write_text(value)


def _make_bridge(layout: NodeLayout) -> None:
    _run(["ip", "link", "add", "name", layout.bridge, "type", "bridge"], check=True)
    _run(
        ["ip", "addr", "add", f"{layout.gateway}/{layout.prefix_len}", "dev", layout.bridge],
        check=True,
    )
    # The Service IP as a host address: Pods route to it, the forwarder listens on it.
    _run(["ip", "addr", "add", f"{layout.service_ip}/32", "dev", layout.bridge], check=True)
    _run(["ip", "link", "set", layout.bridge, "up"], check=True)


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd and the unified one)."""
    return sorted(d for d in CGROUP_FS.iterdir() if (d / "cgroup.procs").exists())


def _make_cgroup_root(root: str) -> None:
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / root.lstrip("/")
        path.mkdir(exist_ok=True)
        if (path / "cpuset.cpus").exists():
            # A new cpuset starts empty, and no task may join an empty cpuset.
            for name in ("cpuset.cpus", "cpuset.mems"):
                (path / name).write_text((hierarchy / name).read_text())


def _remove_cgroup_root(root: str) -> list[str]:
    left = []
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for directory in [*dirs, top]:
            for _ in range(20):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # a task may still be leaving it
            else:
                left.append(f"cgroup {directory} is still there")
    return left


def _interface_with(address: str) -> str:
    """The interface that holds ``address``, or ""."""
    for line in _run(["ip", "-4", "-o", "addr", "show"]).splitlines():
        if f" {address}/" in line:
            return line.split()[1]
    return ""


def _run(argv: list[str], *, check: bool = False) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        msg = f"{' '.join(argv)} failed: {result.stderr.strip()}"
        raise RealNodeError(msg)
    return result.stdout
