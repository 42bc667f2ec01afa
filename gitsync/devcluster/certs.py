"""Certificates and kubeconfigs for the local control plane.

Everything is generated fresh per cluster with ECDSA P-256 keys (fast to make, accepted by
every component), so no key outlives the cluster it was made for. ``cryptography`` is a dev
extra: it is imported inside the functions so ``import gitsync`` never needs it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

CLUSTER_NAME = "gitsync-dev"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
FRONT_PROXY_CLIENT = "front-proxy-client"
_VALIDITY = dt.timedelta(days=365)
# Tolerates a clock that is a little behind when a cert is used right after it is made.
_BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPair:
    """A PEM certificate and its private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Pki:
    """All key material of one cluster; client pairs are named after the component."""

    directory: Path
    ca: KeyPair
    front_proxy_ca: KeyPair
    front_proxy_client: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    kwok: KeyPair
    service_account_key: Path
    service_account_pub: Path


# Identities the RBAC bootstrap policy already knows; kwok patches Pod/Node status and
# deletes Pods on any node, so it gets the admin group rather than a hand-made role.
CLIENT_IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("kubernetes-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "kwok": ("kwok-controller", ("system:masters",)),
}


def apiserver_sans(service_ip: str) -> tuple[list[str], list[str]]:
    """DNS names and IPs the serving cert covers: loopback plus the in-cluster names."""
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    return dns, ["127.0.0.1", "::1", service_ip]


def pki_layout(directory: Path) -> Pki:
    """Where :func:`generate_pki` writes each file; also how another process finds them."""

    def pair(name: str) -> KeyPair:
        return KeyPair(cert=directory / f"{name}.crt", key=directory / f"{name}.key")

    return Pki(
        directory=directory,
        ca=pair("ca"),
        front_proxy_ca=pair("front-proxy-ca"),
        front_proxy_client=pair("front-proxy-client"),
        apiserver=pair("apiserver"),
        admin=pair("admin"),
        controller_manager=pair("controller-manager"),
        scheduler=pair("scheduler"),
        kwok=pair("kwok"),
        service_account_key=directory / "sa.key",
        service_account_pub=directory / "sa.pub",
    )


def generate_pki(directory: Path, *, service_ip: str = "10.96.0.1") -> Pki:
    """Write the CAs, the apiserver serving cert, client certs and the SA key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    layout = pki_layout(directory)
    ca = _Authority.create(f"{CLUSTER_NAME}-ca", layout.ca)
    # kubeadm's layout: request-header identities come from a CA of their own, so no
    # ordinary client cert can impersonate users through the aggregation headers.
    front_proxy_ca = _Authority.create(f"{CLUSTER_NAME}-front-proxy-ca", layout.front_proxy_ca)

    dns, ips = apiserver_sans(service_ip)
    serving_sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    serving_sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    ca.issue(layout.apiserver, "kube-apiserver", (), ExtendedKeyUsageOID.SERVER_AUTH, serving_sans)

    clients = {
        layout.admin: CLIENT_IDENTITIES["admin"],
        layout.controller_manager: CLIENT_IDENTITIES["controller-manager"],
        layout.scheduler: CLIENT_IDENTITIES["scheduler"],
        layout.kwok: CLIENT_IDENTITIES["kwok"],
    }
    for pair, (common_name, groups) in clients.items():
        ca.issue(pair, common_name, groups, ExtendedKeyUsageOID.CLIENT_AUTH)
    front_proxy_ca.issue(
        layout.front_proxy_client, FRONT_PROXY_CLIENT, (), ExtendedKeyUsageOID.CLIENT_AUTH
    )

    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_private(layout.service_account_key, sa_key)
    layout.service_account_pub.write_bytes(_public_pem(sa_key))
    return layout


def issue_client_cert(
    pki: Pki, pair: KeyPair, common_name: str, groups: tuple[str, ...]
) -> KeyPair:
    """Sign one more client cert with the cluster CA on disk (the real node's identities)."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    _Authority.load(pki.ca).issue(pair, common_name, groups, ExtendedKeyUsageOID.CLIENT_AUTH)
    return pair


def issue_serving_cert(pki: Pki, pair: KeyPair, common_name: str, ips: tuple[str, ...]) -> KeyPair:
    """Sign a serving cert for ``ips`` with the cluster CA on disk (the kubelet's port)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    sans: list[x509.GeneralName] = [x509.DNSName(common_name)]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    _Authority.load(pki.ca).issue(pair, common_name, (), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    return pair


@dataclass(frozen=True, slots=True)
class _Authority:
    """A self-signed CA kept in memory while its leaves are issued."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    now: dt.datetime

    @classmethod
    def create(cls, common_name: str, pair: KeyPair) -> _Authority:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            _builder(name, name, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, _sha256())
        )
        _write_pair(pair, cert, key)
        return cls(name, key, now)

    @classmethod
    def load(cls, pair: KeyPair) -> _Authority:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            msg = f"{pair.key} is not the ECDSA key this module writes"
            raise TypeError(msg)
        return cls(cert.subject, key, dt.datetime.now(dt.UTC))

    def issue(
        self,
        pair: KeyPair,
        common_name: str,
        groups: tuple[str, ...],
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> None:
        """Sign a leaf for ``common_name`` (groups become O=) and write it to ``pair``."""
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(x509.Name(attributes), self.name, key.public_key(), self.now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write_pair(pair, builder.sign(self.key, _sha256()), key)


def write_kubeconfig(path: Path, *, server: str, ca: Path, client: KeyPair, user: str) -> Path:
    """Write a self-contained kubeconfig (data embedded, so it can be copied anywhere)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode("ascii")

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    _write_secret(path, yaml.safe_dump(config, sort_keys=False).encode())
    return path


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime
) -> x509.CertificateBuilder:
    from cryptography import x509

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _sha256() -> hashes.SHA256:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _write_pair(pair: KeyPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(pair.key, key)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_secret(path, pem)


def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, also when ``path`` already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def _public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
