"""Who the verified peer of a connection is, and which clients are revoked: what the server needs at run time.

A peer's identity is carried three ways in its certificate so that it can be read back robustly: the subject's CN
(the name) and OU (the role: ``client``, ``operator`` or ``server``), and a SAN URI ``urn:slperf:<role>:<name>``,
which wins. Nothing here verifies a certificate: the mutual-TLS handshake has done that against the project CA
before any handler runs, so these functions only read what the CA vouched for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from slperf.common.security.errors import TLSConfigError
from slperf.common.security.ids import ID_PATTERN
from slperf.common.security.layout import PathLike, revoked_path

URN_PREFIX = "urn:slperf:"


class Role(StrEnum):
    """What a certificate is for; a ``StrEnum`` so that it is written into certificates and messages as is."""

    CLIENT = "client"
    OPERATOR = "operator"
    SERVER = "server"


ROLES = tuple(role.value for role in Role)


@dataclass(frozen=True)
class Identity:
    """Who is on the other end of a mutual-TLS connection: ``role`` is one of :class:`Role`."""

    role: Role
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))  # a plain "client" is accepted; anything else raises

    @property
    def uri(self) -> str:
        return f"{URN_PREFIX}{self.role}:{self.name}"

    def __str__(self) -> str:
        return f"{self.role}:{self.name}"


# --------------------------------------------------------------------------------------------------------------
# Identity from a certificate


def _identity_from_cert(cert: x509.Certificate) -> Identity | None:
    try:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        found: set[Identity] = set()
        for uri in uris:
            if uri[: len(URN_PREFIX)].lower() != URN_PREFIX:
                continue
            parts = uri[len(URN_PREFIX) :].split(":")
            if len(parts) != 2 or parts[0] not in ROLES or ID_PATTERN.fullmatch(parts[1]) is None:
                return None  # a malformed slperf identity: fail closed rather than guess
            found.add(Identity(Role(parts[0]), parts[1]))
        if found:
            return found.pop() if len(found) == 1 else None
        ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(ous) != 1 or len(cns) != 1:
            return None
        role, name = ous[0].value, cns[0].value
        if isinstance(role, str) and role in ROLES and isinstance(name, str) and ID_PATTERN.fullmatch(name):
            return Identity(Role(role), name)
        return None
    except ValueError:  # malformed extensions or names
        return None


def identity_from_pem(pem_bytes: bytes | str) -> Identity | None:
    """The slperf identity in a PEM certificate (URI SAN first, then subject OU/CN), or None.

    Does not verify the certificate: use it on peers that the TLS handshake has already verified against the CA.
    Never raises on malformed input.
    """
    if isinstance(pem_bytes, str):
        pem_bytes = pem_bytes.encode("ascii", "replace")
    if not isinstance(pem_bytes, (bytes, bytearray, memoryview)):
        return None
    try:
        cert = x509.load_pem_x509_certificate(bytes(pem_bytes))
    except ValueError:
        return None
    return _identity_from_cert(cert)


def _first_value(auth_context: Mapping[Any, Any] | None, key: str) -> bytes | None:
    if not auth_context:
        return None
    value = auth_context.get(key)
    if value is None:
        value = auth_context.get(key.encode())
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    return bytes(value) if isinstance(value, (bytes, bytearray)) else None


def peer_certificate(auth_context: Mapping[Any, Any] | None) -> x509.Certificate | None:
    """The peer's certificate from a gRPC auth context (``context.auth_context()``), or None if there is none."""
    pem = _first_value(auth_context, "x509_pem_cert")
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def identity_from_auth_context(auth_context: Mapping[Any, Any] | None) -> Identity | None:
    """The verified peer's identity from a gRPC auth context, or None (no TLS, no client certificate, no identity).

    On the server: ``identity_from_auth_context(context.auth_context())``. With mutual TLS the certificate has
    been verified against the project CA by the handshake before the handler runs.
    """
    cert = peer_certificate(auth_context)
    return None if cert is None else _identity_from_cert(cert)


# --------------------------------------------------------------------------------------------------------------
# Revocation list (reading; ``slperf.pki.revoke`` writes it)


@dataclass(frozen=True)
class RevocationEntry:
    """One line of ``revoked.json``: the client id the server refuses, and its certificate's serial (for the
    record, as ``openssl x509 -serial`` prints it; None in lists written by hand without one)."""

    client_id: str
    serial: int | None
    revoked_at: str | None
    # The entry exactly as read, so that rewriting the list (to append to it) keeps what others wrote.
    raw: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        if self.raw is not None:
            return dict(self.raw)
        return {
            "id": self.client_id,
            "serial": None if self.serial is None else serial_hex(self.serial),
            "revoked_at": self.revoked_at,
        }


def serial_hex(serial: int) -> str:
    """A certificate serial as ``openssl x509 -serial`` prints it."""
    return format(serial, "X")


def parse_serial(value: Any) -> int | None:
    """A serial from ``revoked.json`` (hex string, optionally with colons, or a non-negative int), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        try:
            return int(value.replace(":", ""), 16)
        except ValueError:
            return None
    return None


def read_revocation_list(dir: PathLike) -> list[RevocationEntry]:
    """Every entry of ``dir/revoked.json`` in file order; empty if the file does not exist.

    Raises :class:`TLSConfigError` if the file is unreadable or corrupt (callers should then fail closed).
    """
    path = revoked_path(dir)
    try:
        text: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except PermissionError:
        raise TLSConfigError(
            f"cannot read revocation list: {path} (permission denied; run as the file's owner or fix its permissions)"
        ) from None
    except UnicodeDecodeError:
        text = None
    except OSError as e:
        raise TLSConfigError(f"cannot read revocation list: {path} ({e.strerror or type(e).__name__})") from None
    fix = 'restore it from a backup or repair it: it must be a JSON list of {"id": ..., "serial": ...} objects'
    if text is None:
        raise TLSConfigError(f"revocation list is corrupt: {path} (not UTF-8 text; {fix})")
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        raise TLSConfigError(
            f"revocation list is corrupt: {path} (invalid JSON at line {e.lineno} column {e.colno}; {fix})"
        ) from None
    if not isinstance(data, list):
        raise TLSConfigError(f"revocation list is corrupt: {path} (top level is not a list; {fix})")
    entries = []
    for i, entry in enumerate(data):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("id"), str)
            and ID_PATTERN.fullmatch(entry["id"]) is not None
            and (entry.get("serial") is None or parse_serial(entry.get("serial")) is not None)
        )
        if not ok:
            raise TLSConfigError(f"revocation list is corrupt: {path} (entry {i} is malformed; {fix})")
        revoked_at = entry.get("revoked_at")
        entries.append(
            RevocationEntry(
                entry["id"],
                parse_serial(entry.get("serial")),
                revoked_at if isinstance(revoked_at, str) else None,
                raw=entry,
            )
        )
    return entries


def load_revoked(dir: PathLike) -> set[str]:
    """The revoked client ids in ``dir/revoked.json``; empty if the file does not exist.

    This is what the server refuses: ids, which ``slperf certs add-client`` never re-issues once revoked.
    Raises :class:`TLSConfigError` if the file is unreadable or corrupt (callers should then fail closed).
    """
    return {e.client_id for e in read_revocation_list(Path(dir))}
