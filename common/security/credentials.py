"""gRPC credentials from the files of a certificates folder, and the one resolver of the command-line options
``--certs DIR --ca --cert --key`` that every command dialling the server uses (client daemon, operator commands,
health check).

The trust root is always passed to gRPC explicitly, so ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` and the system bundle
play no part: a federation trusts its own CA and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from slperf.common.security.errors import TLSConfigError
from slperf.common.security.layout import PathLike, ca_paths, client_paths, operator_paths, server_paths
from slperf.common.security.pem import check_pair, load_cert, load_certs, load_key, warn_if_expired


def server_credentials(dir: PathLike, require_client_auth: bool = True) -> grpc.ServerCredentials:
    """Server credentials from ``dir/server.pem`` + ``server.key``, trusting only ``dir/ca.pem`` for client certs."""
    d = Path(dir)
    ca_path = ca_paths(d)[0]
    cert_path, key_path = server_paths(d)
    ca_pem, _ = load_certs(ca_path, "CA certificate")
    cert_pem, cert = load_cert(cert_path)
    key_pem, key = load_key(key_path)
    check_pair(cert, key, cert_path, key_path)
    warn_if_expired(cert, cert_path)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=require_client_auth
    )


def channel_credentials(
    ca_path: PathLike, cert_path: PathLike | None = None, key_path: PathLike | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials trusting only ``ca_path``; with ``cert_path`` and ``key_path``, for mutual TLS."""
    if (cert_path is None) != (key_path is None):
        given = cert_path if cert_path is not None else key_path
        raise TLSConfigError(
            f"a client certificate needs its key and vice versa: only {given} was given "
            "(pass both cert_path and key_path, or neither)"
        )
    ca_pem, _ = load_certs(Path(ca_path), "CA certificate")
    if cert_path is None or key_path is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    cp, kp = Path(cert_path), Path(key_path)
    cert_pem, cert = load_cert(cp)
    key_pem, key = load_key(kp)
    check_pair(cert, key, cp, kp)
    warn_if_expired(cert, cp)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def client_channel_credentials(dir: PathLike, client_id: str) -> grpc.ChannelCredentials:
    """Mutual-TLS channel credentials for client ``client_id`` from the layout in ``dir``."""
    cert_path, key_path = client_paths(dir, client_id)
    return channel_credentials(ca_paths(dir)[0], cert_path, key_path)


def operator_channel_credentials(dir: PathLike) -> grpc.ChannelCredentials:
    """Mutual-TLS channel credentials for the operator from the layout in ``dir``."""
    cert_path, key_path = operator_paths(dir)
    return channel_credentials(ca_paths(dir)[0], cert_path, key_path)


# --------------------------------------------------------------------------------------------------------------
# Command-line options


@dataclass(frozen=True)
class CredentialFiles:
    """The CA, certificate and key a command will present; a field is None when no option named it.

    What a command requires of them differs (a client daemon needs all three, a health check may do server-only
    TLS), so each command checks :meth:`missing` against its own rule and words its own usage error.
    """

    ca: Path | None
    cert: Path | None
    key: Path | None

    def missing(self) -> tuple[str, ...]:
        """The options (``--ca``, ``--cert``, ``--key``) that named no file, in that order."""
        named = (("--ca", self.ca), ("--cert", self.cert), ("--key", self.key))
        return tuple(flag for flag, value in named if value is None)

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from these files (``ca`` must be set). Raises :class:`TLSConfigError`."""
        if self.ca is None:
            raise TLSConfigError("no CA certificate was given (pass --ca, or --certs DIR)")
        return channel_credentials(self.ca, self.cert, self.key)


def resolve_credential_files(
    *, certs_dir: PathLike | None, ca: PathLike | None, cert: PathLike | None, key: PathLike | None
) -> CredentialFiles:
    """The files named by ``--certs DIR --ca --cert --key``: an explicit ``--ca/--cert/--key`` wins; ``--certs
    DIR`` fills in the rest from the folder's layout (``DIR/ca.pem`` and the operator's pair)."""
    resolved_ca, resolved_cert, resolved_key = _as_path(ca), _as_path(cert), _as_path(key)
    if certs_dir is not None:
        op_cert, op_key = operator_paths(certs_dir)
        resolved_ca = resolved_ca or ca_paths(certs_dir)[0]
        resolved_cert, resolved_key = resolved_cert or op_cert, resolved_key or op_key
    return CredentialFiles(resolved_ca, resolved_cert, resolved_key)


def _as_path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)
