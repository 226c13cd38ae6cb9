"""Where each file of a certificates folder lives, and how to (re)create a missing or broken one.

Layout of a certificates directory DIR (created by ``slperf certs init`` and ``slperf certs add-client``)::

    DIR/ca.pem              project CA certificate (the only trust root, always passed to gRPC explicitly)
    DIR/ca.key              CA private key                                  (0600)
    DIR/server.pem          server certificate: serverAuth, SANs = the server names (DNS names / IP addresses)
    DIR/server.key                                                          (0600)
    DIR/operator.pem        operator certificate: clientAuth, urn:slperf:operator:<name>
    DIR/operator.key                                                        (0600)
    DIR/clients/<id>.pem    one certificate per client: clientAuth, urn:slperf:client:<id>
    DIR/clients/<id>.key                                                    (0600)
    DIR/fedserver.pem       fed server certificate (``slperf certs add-fedserver``): serverAuth, SAN DNS
                            slperf-fedserver (the name clients verify), urn:slperf:server:fedserver
    DIR/fedserver.key                                                       (0600)
    DIR/server_client.pem   the main server's certificate towards the fed server: clientAuth, urn:slperf:server:server
    DIR/server_client.key                                                   (0600)
    DIR/revoked.json        [{"id": "<id>", "serial": "<HEX>", "revoked_at": "<ISO 8601>"}, ...]

The fix hints live here, next to the layout they are derived from, so that every error about a file of the
folder (whoever reads it: the server, a client daemon, the CLI) names the command that makes it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Union

from slperf.common.security.ids import ID_PATTERN, validate_client_id

PathLike = Union[str, "os.PathLike[str]"]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
OPERATOR_CERT = "operator.pem"
OPERATOR_KEY = "operator.key"
CLIENTS_DIR = "clients"
REVOKED_FILE = "revoked.json"
FEDSERVER_CERT = "fedserver.pem"
FEDSERVER_KEY = "fedserver.key"
SERVER_CLIENT_CERT = "server_client.pem"
SERVER_CLIENT_KEY = "server_client.key"
# The name every party dialling the fed server verifies in its certificate, whatever address it dials: only the fed
# server's certificate carries it (the main server's does not), so a client never uploads its weights elsewhere.
FEDSERVER_TLS_NAME = "slperf-fedserver"
FEDSERVER_IDENTITY_NAME = "fedserver"
PKI_FILES = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, OPERATOR_CERT, OPERATOR_KEY)


def ca_paths(dir: PathLike) -> tuple[Path, Path]:
    """(certificate, key) of the CA in ``dir``."""
    d = Path(dir)
    return d / CA_CERT, d / CA_KEY


def server_paths(dir: PathLike) -> tuple[Path, Path]:
    """(certificate, key) of the server in ``dir``."""
    d = Path(dir)
    return d / SERVER_CERT, d / SERVER_KEY


def operator_paths(dir: PathLike) -> tuple[Path, Path]:
    """(certificate, key) of the operator in ``dir``."""
    d = Path(dir)
    return d / OPERATOR_CERT, d / OPERATOR_KEY


def client_paths(dir: PathLike, client_id: str) -> tuple[Path, Path]:
    """(certificate, key) of client ``client_id`` in ``dir``; the id is validated first, so no path escapes DIR."""
    validate_client_id(client_id)
    d = Path(dir) / CLIENTS_DIR
    return d / f"{client_id}.pem", d / f"{client_id}.key"


def fedserver_paths(dir: PathLike) -> tuple[Path, Path]:
    """(certificate, key) of the fed server in ``dir``."""
    d = Path(dir)
    return d / FEDSERVER_CERT, d / FEDSERVER_KEY


def server_client_paths(dir: PathLike) -> tuple[Path, Path]:
    """(certificate, key) the main server presents to the fed server in ``dir``."""
    d = Path(dir)
    return d / SERVER_CLIENT_CERT, d / SERVER_CLIENT_KEY


def revoked_path(dir: PathLike) -> Path:
    """The revocation list of ``dir``."""
    return Path(dir) / REVOKED_FILE


def list_clients(dir: PathLike) -> list[str]:
    """The ids of every client certificate in ``dir/clients`` (sorted); empty if there is none."""
    d = Path(dir) / CLIENTS_DIR
    try:
        entries = list(d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(p.stem for p in entries if p.suffix == ".pem" and ID_PATTERN.fullmatch(p.stem))


def quote(path: PathLike) -> str:
    """``path`` as it must be typed in a shell command of a fix hint."""
    return shlex.quote(str(path))


def fix_hint(path: Path, *, missing: bool) -> str:
    """How to (re)create ``path``, derived from where it sits in the certificates layout."""
    if path.parent.name == CLIENTS_DIR and path.suffix in (".pem", ".key") and ID_PATTERN.fullmatch(path.stem):
        d = quote(path.parent.parent)
        cid = path.stem
        if missing:
            return f"create it with `slperf certs add-client {cid} --dir {d}`"
        return f"re-issue it with `slperf certs add-client {cid} --dir {d} --overwrite`"
    if path.name in (FEDSERVER_CERT, FEDSERVER_KEY, SERVER_CLIENT_CERT, SERVER_CLIENT_KEY):
        return f"create it with `slperf certs add-fedserver --dir {quote(path.parent)}`"
    if path.name in PKI_FILES:
        d = quote(path.parent)
        ca_exists = (path.parent / CA_CERT).exists() or (path.parent / CA_KEY).exists()
        if missing and not ca_exists:
            return f"create it with `slperf certs init --dir {d}`"
        return f"re-create the PKI with `slperf certs init --dir {d} --overwrite` (this re-issues every certificate)"
    if missing:
        return "check the path, or create the certificates with `slperf certs init --dir DIR`"
    return "point to a PEM file issued by `slperf certs`"
