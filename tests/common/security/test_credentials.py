"""gRPC credentials from a certificates folder (errors that name the file, mutual TLS against real grpc.aio
servers on 127.0.0.1), and the one resolver of ``--certs/--ca/--cert/--key``."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from pki_helpers import make_expired_client, make_foreign_client, make_pki

from slperf.common.security.credentials import (
    channel_credentials,
    client_channel_credentials,
    operator_channel_credentials,
    resolve_credential_files,
    server_credentials,
)
from slperf.common.security.errors import TLSConfigError
from slperf.common.security.identity import Identity, identity_from_auth_context
from slperf.common.security.layout import client_paths
from slperf.pki import add_client

SERVICE = "slperf.test.Echo"
METHOD = f"/{SERVICE}/WhoAmI"
TIMEOUT = 5


def _raw(b: bytes) -> bytes:
    return b


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    ident = identity_from_auth_context(context.auth_context())
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
            grpc.aio.insecure_channel(target)
            if channel_creds is None
            else grpc.aio.secure_channel(target, channel_creds)
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
    return make_pki(tmp_path / "certs")


# ---------------------------------------------------------------------------------------------------------- errors


def test_missing_files_name_the_file(pki: Path, tmp_path: Path):
    with pytest.raises(TLSConfigError) as info:
        client_channel_credentials(pki, "c2")
    msg = str(info.value)
    assert (
        msg == f"certificate not found: {pki}/clients/c2.pem (create it with `slperf certs add-client c2 --dir {pki}`)"
    )
    assert "\n" not in msg

    empty = tmp_path / "empty"
    with pytest.raises(TLSConfigError, match=rf"not found: {empty}/ca\.pem .*slperf certs init --dir {empty}"):
        server_credentials(empty)
    with pytest.raises(TLSConfigError, match=r"CA certificate not found: .*ca\.pem"):
        add_client(empty, "c1")

    (pki / "server.key").unlink()
    with pytest.raises(TLSConfigError, match=r"private key not found: .*server\.key"):
        server_credentials(pki)


def test_non_pem_files_and_no_secrets_in_errors(pki: Path):
    key_path = pki / "clients" / "c1.key"
    secret = key_path.read_text()
    body = "".join(secret.splitlines()[1:-1])
    # a key where the certificate should be, and a certificate where the key should be
    with pytest.raises(TLSConfigError, match=r"not a PEM certificate: .*c1\.key") as info:
        channel_credentials(pki / "ca.pem", key_path, key_path)
    assert body[:20] not in str(info.value)
    with pytest.raises(TLSConfigError, match=r"not a PEM private key: .*c1\.pem"):
        channel_credentials(pki / "ca.pem", pki / "clients" / "c1.pem", pki / "clients" / "c1.pem")
    # a key that belongs to another certificate
    add_client(pki, "c2")
    with pytest.raises(TLSConfigError, match="do not match") as info:
        channel_credentials(pki / "ca.pem", pki / "clients" / "c1.pem", pki / "clients" / "c2.key")
    assert body[:20] not in str(info.value)
    # garbage where the CA should be
    (pki / "ca.pem").write_bytes(b"garbage")
    with pytest.raises(TLSConfigError, match=r"not a PEM certificate: .*ca\.pem"):
        server_credentials(pki)
    with pytest.raises(TLSConfigError, match="needs its key"):
        channel_credentials(pki / "ca.pem", pki / "clients" / "c1.pem")


def test_directory_in_place_of_a_file(pki: Path):
    (pki / "server.key").unlink()
    (pki / "server.key").mkdir()
    with pytest.raises(TLSConfigError, match=r"private key is a directory, not a file: .*server\.key"):
        server_credentials(pki)


def test_unreadable_file(pki: Path, monkeypatch: pytest.MonkeyPatch):
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "server.key":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(TLSConfigError, match=r"cannot read private key: .*server\.key \(permission denied"):
        server_credentials(pki)


# ---------------------------------------------------------------------------------------------------------- mTLS


def test_client_cert_connects_and_server_sees_identity(pki: Path):
    assert call(server_credentials(pki), client_channel_credentials(pki, "c1")) == Identity("client", "c1")


def test_operator_cert_has_operator_role(pki: Path):
    assert call(server_credentials(pki), operator_channel_credentials(pki)) == Identity("operator", "operator")


def test_foreign_ca_client_rejected(pki: Path, tmp_path: Path):
    _, cert, key = make_foreign_client(tmp_path / "foreign", "c1")
    creds = channel_credentials(pki / "ca.pem", cert, key)
    assert call_fails(server_credentials(pki), creds) == grpc.StatusCode.UNAVAILABLE


def test_client_trusting_foreign_ca_rejects_server(pki: Path, tmp_path: Path):
    foreign_ca, _, _ = make_foreign_client(tmp_path / "foreign", "c1")
    cert, key = client_paths(pki, "c1")
    creds = channel_credentials(foreign_ca, cert, key)
    assert call_fails(server_credentials(pki), creds) == grpc.StatusCode.UNAVAILABLE


def test_client_without_cert_rejected(pki: Path):
    creds = channel_credentials(pki / "ca.pem")
    assert call_fails(server_credentials(pki, require_client_auth=True), creds) == grpc.StatusCode.UNAVAILABLE


def test_client_without_cert_allowed_when_not_required(pki: Path):
    creds = channel_credentials(pki / "ca.pem")
    assert call(server_credentials(pki, require_client_auth=False), creds) is None


def test_expired_client_rejected(pki: Path):
    cert, key = make_expired_client(pki, "old")
    now = datetime.datetime.now(datetime.UTC)
    assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc < now
    creds = channel_credentials(pki / "ca.pem", cert, key)
    assert call_fails(server_credentials(pki), creds) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_channel_to_tls_port_fails(pki: Path):
    assert call_fails(server_credentials(pki), None) == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------------------------------------- options


def test_certs_dir_fills_in_the_operator_pair_and_explicit_files_win(tmp_path: Path):
    d = tmp_path / "certs"
    files = resolve_credential_files(certs_dir=d, ca=None, cert=None, key=None)
    assert (files.ca, files.cert, files.key) == (d / "ca.pem", d / "operator.pem", d / "operator.key")
    assert files.missing() == ()
    mine = resolve_credential_files(certs_dir=d, ca=None, cert=tmp_path / "c.pem", key=str(tmp_path / "c.key"))
    assert (mine.ca, mine.cert, mine.key) == (d / "ca.pem", tmp_path / "c.pem", tmp_path / "c.key")


def test_without_certs_dir_only_the_named_files_are_used(tmp_path: Path):
    files = resolve_credential_files(certs_dir=None, ca=tmp_path / "ca.pem", cert=None, key=None)
    assert (files.ca, files.cert, files.key) == (tmp_path / "ca.pem", None, None)
    assert files.missing() == ("--cert", "--key")
    assert resolve_credential_files(certs_dir=None, ca=None, cert=None, key=None).missing() == (
        "--ca",
        "--cert",
        "--key",
    )


def test_resolved_files_make_working_credentials(pki: Path):
    files = resolve_credential_files(certs_dir=pki, ca=None, cert=None, key=None)
    assert call(server_credentials(pki), files.credentials()) == Identity("operator", "operator")
    with pytest.raises(TLSConfigError, match="no CA certificate"):
        resolve_credential_files(certs_dir=None, ca=None, cert=None, key=None).credentials()
