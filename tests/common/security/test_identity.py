"""A peer's identity from its certificate or gRPC auth context, and reading the revocation list."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pki_helpers import make_pki

from slperf.common.security.errors import TLSConfigError
from slperf.common.security.identity import (
    Identity,
    Role,
    identity_from_auth_context,
    identity_from_pem,
    load_revoked,
)


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "certs")


def test_identity_falls_back_to_subject():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "client"),
            x509.NameAttribute(NameOID.COMMON_NAME, "legacy"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert identity_from_pem(cert.public_bytes(serialization.Encoding.PEM)) == Identity("client", "legacy")


def test_identity_from_auth_context_shapes(pki: Path):
    pem = (pki / "clients" / "c1.pem").read_bytes()
    assert identity_from_auth_context({"x509_pem_cert": [pem]}) == Identity("client", "c1")
    assert identity_from_auth_context({"transport_security_type": [b"ssl"]}) is None
    assert identity_from_auth_context({}) is None
    assert identity_from_auth_context(None) is None


def test_identity_roles_are_an_enum_that_reads_as_text():
    ident = Identity("operator", "op")
    assert ident.role is Role.OPERATOR and f"a {ident.role} certificate" == "a operator certificate"
    assert str(ident) == "operator:op" and ident.uri == "urn:slperf:operator:op"
    with pytest.raises(ValueError):
        Identity("admin", "root")


def test_corrupt_revocation_list(pki: Path):
    (pki / "revoked.json").write_text("{not json")
    with pytest.raises(TLSConfigError, match=r"revocation list is corrupt: .*revoked\.json"):
        load_revoked(pki)
    (pki / "revoked.json").write_text('{"id": "c1"}')
    with pytest.raises(TLSConfigError, match="corrupt"):
        load_revoked(pki)
