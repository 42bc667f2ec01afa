"""Certificates of the local control plane: names, identities, and a chain that verifies."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
import yaml

from gitsync.devcluster.certs import Pki, generate_pki, write_kubeconfig

x509 = pytest.importorskip("cryptography.x509")
verification = pytest.importorskip("cryptography.x509.verification")
oid = pytest.importorskip("cryptography.x509.oid")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"), service_ip="10.96.0.1")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_apiserver_cert_covers_loopback_and_in_cluster_names(pki: Pki) -> None:
    """The serving cert names 127.0.0.1, localhost, the service IP and kubernetes.default.svc."""
    sans = load(pki.apiserver.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    dns = set(sans.value.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} <= dns
    assert {"127.0.0.1", "10.96.0.1"} <= ips
    assert ipaddress.ip_address("::1") in {ipaddress.ip_address(i) for i in ips}


def test_serving_chain_verifies_for_127_0_0_1_and_localhost(pki: Pki) -> None:
    """A strict X.509 verifier accepts the serving cert for both loopback names."""
    store = verification.Store([load(pki.ca.cert)])
    leaf = load(pki.apiserver.cert)
    for name in (
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ):
        verifier = verification.PolicyBuilder().store(store).build_server_verifier(name)
        chain = verifier.verify(leaf, [])
        assert chain[-1] == load(pki.ca.cert)


def test_client_certs_carry_identities_and_are_issued_by_the_ca(pki: Pki) -> None:
    """Admin is in system:masters; controller-manager and scheduler use their RBAC user names."""
    ca = load(pki.ca.cert)
    expected = {
        pki.admin: ("kubernetes-admin", ["system:masters"]),
        pki.controller_manager: ("system:kube-controller-manager", []),
        pki.scheduler: ("system:kube-scheduler", []),
    }
    for pair, (user, groups) in expected.items():
        cert = load(pair.cert)
        cert.verify_directly_issued_by(ca)
        subject = cert.subject
        assert [a.value for a in subject.get_attributes_for_oid(oid.NameOID.COMMON_NAME)] == [user]
        orgs = [a.value for a in subject.get_attributes_for_oid(oid.NameOID.ORGANIZATION_NAME)]
        assert orgs == groups
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [oid.ExtendedKeyUsageOID.CLIENT_AUTH]


def test_front_proxy_client_is_not_trusted_by_the_main_ca(pki: Pki) -> None:
    """Request-header identities come from their own CA, so the main CA does not sign them."""
    front = load(pki.front_proxy_client.cert)
    front.verify_directly_issued_by(load(pki.front_proxy_ca.cert))
    with pytest.raises(ValueError, match="does not match"):
        front.verify_directly_issued_by(load(pki.ca.cert))


def test_private_keys_and_kubeconfig_are_owner_only(pki: Pki, tmp_path: Path) -> None:
    """Keys and the kubeconfig (which embeds a key) are written with mode 0600."""
    kubeconfig = write_kubeconfig(
        tmp_path / "admin.kubeconfig",
        server="https://127.0.0.1:6443",
        ca=pki.ca.cert,
        client=pki.admin,
        user="kubernetes-admin",
    )
    for path in (pki.ca.key, pki.admin.key, pki.service_account_key, kubeconfig):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    loaded = yaml.safe_load(kubeconfig.read_text())
    assert loaded["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert loaded["users"][0]["user"]["client-key-data"]
