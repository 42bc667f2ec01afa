"""A real, local Kubernetes control plane (etcd, apiserver, controllers, scheduler, kwok).

Used by the integration tests and the demo; never by the reconciler itself. Start one with
``python -m gitsync.devcluster up`` or ``with DevCluster(ClusterConfig(...)) as cluster:``.
"""

from .certs import KeyPair, Pki, generate_pki, write_kubeconfig
from .launcher import (
    BEHAVIOR_LABEL,
    BIN_ENV,
    CRASHLOOP,
    KWOK_NODE_ANNOTATION,
    KWOK_NODE_LABEL,
    NEVER_READY,
    ClusterConfig,
    DevCluster,
    DevClusterError,
    Ports,
    ProcessRecord,
    resolve_bin_dir,
)

__all__ = [
    "BEHAVIOR_LABEL",
    "BIN_ENV",
    "CRASHLOOP",
    "KWOK_NODE_ANNOTATION",
    "KWOK_NODE_LABEL",
    "NEVER_READY",
    "ClusterConfig",
    "DevCluster",
    "DevClusterError",
    "KeyPair",
    "Pki",
    "Ports",
    "ProcessRecord",
    "generate_pki",
    "resolve_bin_dir",
    "write_kubeconfig",
]
