"""PKI layout and mutual TLS, against real grpc.aio servers on 127.0.0.1."""
from __future__ import annotations

import asyncio
import datetime
import json
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from slperf.common import tls
from slperf.common.tls import Identity, TLSConfigError

SERVICE = "slperf.test.Echo"
METHOD = f"/{SERVICE}/WhoAmI"
TIMEOUT = 5


def _raw(b: bytes) -> bytes:
    return b


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    ident = tls.identity_from_auth_context(context.auth_context())
    return b"-" if ident is None else f"{ident.role}:{ident.name}".encode()


async def _call(server_creds: grpc.ServerCredentials, channel_creds: grpc.ChannelCredentials | None) -> Identity | None:
    """Starts a TLS server, calls WhoAmI once (secure channel, or plaintext if channel_creds is None)."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {"WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami, request_deserializer=_raw, response_serializer=_raw)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_creds)
    assert port > 0
    await server.start()
    try:
        target = f"127.0.0.1:{port}"
        channel = (
            grpc.aio.insecure_channel(target) if channel_creds is None else grpc.aio.secure_channel(target, channel_creds)
        )
        async with channel:
            reply = await channel.unary_unary(METHOD, request_serializer=_raw, response_deserializer=_raw)(
                b"hi", timeout=TIMEOUT
            )
    finally:
        await server.stop(None)
    if reply == b"-":
        return None
    role, name = reply.decode().split(":", 1)
    return Identity(role, name)


def call(server_creds, channel_creds):
    return asyncio.run(_call(server_creds, channel_creds))


def call_fails(server_creds, channel_creds) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        call(server_creds, channel_creds)
    return info.value.code()


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    tls.init_pki(d)
    tls.add_client(d, "c1")
    return d


# ---------------------------------------------------------------------------------------------------------- layout


def test_layout_and_key_modes(pki: Path):
    tls.add_client(pki, "c2")
    for name in ("ca", "server", "operator", "clients/c1", "clients/c2"):
        assert stat.S_IMODE((pki / f"{name}.key").stat().st_mode) == 0o600, name
        assert stat.S_IMODE((pki / f"{name}.pem").stat().st_mode) == 0o644, name
    assert not [p for p in pki.rglob("*") if p.name.endswith(".tmp")]  # no leftovers from atomic writes
    assert tls.list_clients(pki) == ["c1", "c2"]


def test_certificate_contents(pki: Path):
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "server"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    client = x509.load_pem_x509_certificate((pki / "clients" / "c1.pem").read_bytes())
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:slperf:client:c1"]
    assert client.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "c1"
    assert client.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "client"
    assert tls.identity_from_pem((pki / "operator.pem").read_bytes()) == Identity("operator", "operator")
    assert tls.identity_from_pem((pki / "server.pem").read_bytes()) == Identity("server", "server")
    assert tls.identity_from_pem(b"not a certificate") is None


def test_server_names(tmp_path: Path):
    d = tmp_path / "certs"
    tls.init_pki(d, server_names=["slperf.example.org", "::1", "10.0.0.7"], validity_days=30)
    server = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["slperf.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["::1", "10.0.0.7"]
    for bad in (["bad name"], [], [""]):
        with pytest.raises(ValueError):
            tls.init_pki(tmp_path / "other", server_names=bad)
        assert not (tmp_path / "other" / "ca.pem").exists()


def test_identity_falls_back_to_subject():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "client"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "legacy")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    assert tls.identity_from_pem(cert.public_bytes(serialization.Encoding.PEM)) == Identity("client", "legacy")


def test_adding_a_client_never_reissues_others(pki: Path):
    before = {p.name: p.read_bytes() for p in pki.rglob("*") if p.is_file()}
    tls.add_client(pki, "c2")
    after = {p.name: p.read_bytes() for p in pki.rglob("*") if p.is_file()}
    assert {k: after[k] for k in before} == before


def test_existing_client_needs_overwrite(pki: Path):
    old = (pki / "clients" / "c1.pem").read_bytes()
    with pytest.raises(TLSConfigError, match="c1 already exists"):
        tls.add_client(pki, "c1")
    tls.add_client(pki, "c1", overwrite=True)
    assert (pki / "clients" / "c1.pem").read_bytes() != old


@pytest.mark.parametrize("bad", ["", "-c1", ".hidden", "../evil", "a/b", "a b", "é", "x" * 64, "c1\n", 7])
def test_bad_client_ids_rejected(pki: Path, bad):
    with pytest.raises(TLSConfigError, match="invalid client id"):
        tls.add_client(pki, bad)
    assert tls.list_clients(pki) == ["c1"]


def test_good_client_ids_accepted(pki: Path):
    for cid in ("C", "a_b.c-d", "9" * 63):
        tls.add_client(pki, cid)
        assert tls.identity_from_pem(tls.client_paths(pki, cid)[0].read_bytes()) == Identity("client", cid)


def test_init_pki_refuses_to_overwrite(pki: Path):
    ca = (pki / "ca.pem").read_bytes()
    with pytest.raises(TLSConfigError, match=r"CA already exists: .*ca\.pem.*overwrite"):
        tls.init_pki(pki)
    assert (pki / "ca.pem").read_bytes() == ca
    tls.init_pki(pki, overwrite=True)
    assert (pki / "ca.pem").read_bytes() != ca
    assert tls.list_clients(pki) == []  # issued by the old CA, so removed


def test_revoke_records_id_and_serial(pki: Path):
    assert tls.load_revoked(pki) == set()  # missing file is fine
    tls.add_client(pki, "c2")
    tls.revoke(pki, "c1")
    tls.revoke(pki, "c1")  # idempotent
    serial = x509.load_pem_x509_certificate((pki / "clients" / "c1.pem").read_bytes()).serial_number
    entries = json.loads((pki / "revoked.json").read_text())
    assert [(e["id"], int(e["serial"], 16)) for e in entries] == [("c1", serial)]
    assert tls.load_revoked(pki) == {"c1"}
    assert tls.load_revoked_serials(pki) == {serial}
    assert tls.is_revoked(pki, Identity("client", "c1"))
    assert not tls.is_revoked(pki, Identity("client", "c2"))
    with pytest.raises(TLSConfigError, match="revoked"):
        tls.add_client(pki, "c1", overwrite=True)
    with pytest.raises(TLSConfigError, match=r"clients/nope\.pem"):
        tls.revoke(pki, "nope")


def test_corrupt_revocation_list(pki: Path):
    (pki / "revoked.json").write_text("{not json")
    with pytest.raises(TLSConfigError, match=r"revocation list is corrupt: .*revoked\.json"):
        tls.load_revoked(pki)
    (pki / "revoked.json").write_text('{"id": "c1"}')
    with pytest.raises(TLSConfigError, match="corrupt"):
        tls.load_revoked(pki)


# ---------------------------------------------------------------------------------------------------------- errors


def test_missing_files_name_the_file(pki: Path, tmp_path: Path):
    with pytest.raises(TLSConfigError) as info:
        tls.client_channel_credentials(pki, "c2")
    msg = str(info.value)
    assert msg == f"certificate not found: {pki}/clients/c2.pem (create it with `slperf certs add-client c2 --dir {pki}`)"
    assert "\n" not in msg

    empty = tmp_path / "empty"
    with pytest.raises(TLSConfigError, match=rf"not found: {empty}/ca\.pem .*slperf certs init --dir {empty}"):
        tls.server_credentials(empty)
    with pytest.raises(TLSConfigError, match=r"CA certificate not found: .*ca\.pem"):
        tls.add_client(empty, "c1")

    (pki / "server.key").unlink()
    with pytest.raises(TLSConfigError, match=r"private key not found: .*server\.key"):
        tls.server_credentials(pki)


def test_non_pem_files_and_no_secrets_in_errors(pki: Path):
    key_path = pki / "clients" / "c1.key"
    secret = key_path.read_text()
    body = "".join(secret.splitlines()[1:-1])
    # a key where the certificate should be, and a certificate where the key should be
    with pytest.raises(TLSConfigError, match=r"not a PEM certificate: .*c1\.key") as info:
        tls.channel_credentials(pki / "ca.pem", key_path, key_path)
    assert body[:20] not in str(info.value)
    with pytest.raises(TLSConfigError, match=r"not a PEM private key: .*c1\.pem"):
        tls.channel_credentials(pki / "ca.pem", pki / "clients" / "c1.pem", pki / "clients" / "c1.pem")
    # a key that belongs to another certificate
    tls.add_client(pki, "c2")
    with pytest.raises(TLSConfigError, match="do not match") as info:
        tls.channel_credentials(pki / "ca.pem", pki / "clients" / "c1.pem", pki / "clients" / "c2.key")
    assert body[:20] not in str(info.value)
    # garbage where the CA should be
    (pki / "ca.pem").write_bytes(b"garbage")
    with pytest.raises(TLSConfigError, match=r"not a PEM certificate: .*ca\.pem"):
        tls.server_credentials(pki)
    with pytest.raises(TLSConfigError, match="needs its key"):
        tls.channel_credentials(pki / "ca.pem", pki / "clients" / "c1.pem")


def test_directory_in_place_of_a_file(pki: Path):
    (pki / "server.key").unlink()
    (pki / "server.key").mkdir()
    with pytest.raises(TLSConfigError, match=r"private key is a directory, not a file: .*server\.key"):
        tls.server_credentials(pki)


def test_unreadable_file(pki: Path, monkeypatch: pytest.MonkeyPatch):
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "server.key":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(TLSConfigError, match=r"cannot read private key: .*server\.key \(permission denied"):
        tls.server_credentials(pki)


# ---------------------------------------------------------------------------------------------------------- mTLS


def test_identity_from_auth_context_shapes(pki: Path):
    pem = (pki / "clients" / "c1.pem").read_bytes()
    assert tls.identity_from_auth_context({"x509_pem_cert": [pem]}) == Identity("client", "c1")
    assert tls.identity_from_auth_context({"transport_security_type": [b"ssl"]}) is None
    assert tls.identity_from_auth_context({}) is None
    assert tls.identity_from_auth_context(None) is None


def test_client_cert_connects_and_server_sees_identity(pki: Path):
    assert call(tls.server_credentials(pki), tls.client_channel_credentials(pki, "c1")) == Identity("client", "c1")


def test_operator_cert_has_operator_role(pki: Path):
    assert call(tls.server_credentials(pki), tls.operator_channel_credentials(pki)) == Identity("operator", "operator")


def test_foreign_ca_client_rejected(pki: Path, tmp_path: Path):
    _, cert, key = tls.make_foreign_client(tmp_path / "foreign", "c1")
    creds = tls.channel_credentials(pki / "ca.pem", cert, key)
    assert call_fails(tls.server_credentials(pki), creds) == grpc.StatusCode.UNAVAILABLE


def test_client_trusting_foreign_ca_rejects_server(pki: Path, tmp_path: Path):
    foreign_ca, _, _ = tls.make_foreign_client(tmp_path / "foreign", "c1")
    cert, key = tls.client_paths(pki, "c1")
    creds = tls.channel_credentials(foreign_ca, cert, key)
    assert call_fails(tls.server_credentials(pki), creds) == grpc.StatusCode.UNAVAILABLE


def test_client_without_cert_rejected(pki: Path):
    creds = tls.channel_credentials(pki / "ca.pem")
    assert call_fails(tls.server_credentials(pki, require_client_auth=True), creds) == grpc.StatusCode.UNAVAILABLE


def test_client_without_cert_allowed_when_not_required(pki: Path):
    creds = tls.channel_credentials(pki / "ca.pem")
    assert call(tls.server_credentials(pki, require_client_auth=False), creds) is None


def test_expired_client_rejected(pki: Path):
    cert, key = tls.make_expired_client(pki, "old")
    assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc < tls._now()
    creds = tls.channel_credentials(pki / "ca.pem", cert, key)
    assert call_fails(tls.server_credentials(pki), creds) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_channel_to_tls_port_fails(pki: Path):
    assert call_fails(tls.server_credentials(pki), None) == grpc.StatusCode.UNAVAILABLE
