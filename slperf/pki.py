"""Operator tooling: make the federation's CA, issue certificates, revoke clients (``slperf certs ...``).

Nothing at run time imports this: the daemons only read what it writes (``slperf.common.security``). The
layout it writes is described in ``slperf.common.security.layout``. Keys are EC P-256, signatures ECDSA with
SHA-256. Private keys are created with mode 0600 from the start and every file is written with
``atomic_write``, under an advisory lock on the folder, so two concurrent ``slperf certs`` commands cannot
interleave their writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slperf.common.fsutil import atomic_write
from slperf.common.security.errors import TLSConfigError
from slperf.common.security.identity import (
    Identity,
    RevocationEntry,
    Role,
    load_revoked,
    read_revocation_list,
    serial_hex,
)
from slperf.common.security.ids import validate_client_id
from slperf.common.security.layout import (
    CLIENTS_DIR,
    FEDSERVER_IDENTITY_NAME,
    FEDSERVER_TLS_NAME,
    PathLike,
    ca_paths,
    client_paths,
    fedserver_paths,
    fix_hint,
    list_clients,
    operator_paths,
    quote,
    revoked_path,
    server_client_paths,
    server_paths,
)
from slperf.common.security.pem import check_pair, load_cert, load_key, utc_now

try:  # POSIX only; used to serialise concurrent updates of the certificates folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ORGANIZATION = "SLPerf"
SERVER_IDENTITY_NAME = "server"
DEFAULT_OPERATOR_NAME = "operator"
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "server")
DEFAULT_VALIDITY_DAYS = 825
CA_MIN_VALIDITY_DAYS = 3650
_CLOCK_SKEW = _dt.timedelta(minutes=5)

_KEY_MODE = 0o600
_CERT_MODE = 0o644

_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")


# --------------------------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def _dir_lock(d: Path) -> Iterator[None]:
    """An exclusive advisory lock on the directory itself (no lock file); a no-op where flock is unavailable."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write(path, pem, _KEY_MODE)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)


# --------------------------------------------------------------------------------------------------------------
# Issuing


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _subject(role: Role, cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _check_days(validity_days: Any) -> int:
    if isinstance(validity_days, bool) or not isinstance(validity_days, int) or validity_days <= 0:
        raise ValueError(f"validity_days must be a positive integer, got {validity_days!r}")
    return validity_days


def _server_general_names(server_names: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(server_names, str):
        server_names = (server_names,)
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in server_names:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"invalid server name {raw!r}: expected a DNS name or an IP address")
        name = raw.strip()
        if name.startswith("[") and name.endswith("]"):  # "[::1]" as written in a gRPC target
            name = name[1:-1]
        key = name.lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if len(name) > 253 or _DNS_RE.fullmatch(name) is None:
            raise ValueError(f"invalid server name {raw!r}: expected a DNS name or an IP address")
        out.append(x509.DNSName(name.rstrip(".")))
    if not out:
        raise ValueError("server_names must name at least one DNS name or IP address")
    return out


def _build_cert(
    *,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_ski: x509.SubjectKeyIdentifier | None,
    not_before: _dt.datetime,
    not_after: _dt.datetime,
    is_ca: bool,
    eku: Sequence[x509.ObjectIdentifier] = (),
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    if issuer_ski is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _leaf_window(
    ca_cert: x509.Certificate, validity_days: int, not_valid_after: _dt.datetime | None
) -> tuple[_dt.datetime, _dt.datetime]:
    now = utc_now()
    not_before = now - _CLOCK_SKEW
    if not_valid_after is None:
        not_after = now + _dt.timedelta(days=validity_days)
        not_after = min(not_after, ca_cert.not_valid_after_utc)  # a leaf never outlives its CA
    else:
        not_after = not_valid_after
        if not_after.tzinfo is None:
            not_after = not_after.replace(tzinfo=_dt.UTC)
    if not_after <= not_before:  # e.g. a deliberately expired certificate for tests
        not_before = not_after - _dt.timedelta(days=1)
    return not_before, not_after


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    role: Role,
    name: str,
    eku: x509.ObjectIdentifier,
    extra_sans: Sequence[x509.GeneralName] = (),
    not_before: _dt.datetime,
    not_after: _dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ca_ski = None
    cert = _build_cert(
        subject=_subject(role, name),
        public_key=key.public_key(),
        issuer=ca_cert.subject,
        issuer_key=ca_key,
        issuer_ski=ca_ski,
        not_before=not_before,
        not_after=not_after,
        is_ca=False,
        eku=[eku],
        sans=[*extra_sans, x509.UniformResourceIdentifier(Identity(role, name).uri)],
    )
    return key, cert


def _load_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_paths(d)
    _, cert = load_cert(cert_path, "CA certificate")
    _, key = load_key(key_path)
    check_pair(cert, key, cert_path, key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSConfigError(f"CA key is not an EC key: {key_path} ({fix_hint(key_path, missing=False)})")
    return cert, key


def init_pki(
    dir: PathLike,
    *,
    server_names: Sequence[str] = DEFAULT_SERVER_NAMES,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    overwrite: bool = False,
    operator_name: str = DEFAULT_OPERATOR_NAME,
) -> None:
    """Creates the CA, the server certificate and the operator certificate in ``dir``.

    ``server_names`` become the server certificate's SANs (IP addresses as IP SANs, everything else as DNS names).
    The CA is valid for at least ten years; leaves for ``validity_days``. Refuses to replace an existing CA unless
    ``overwrite=True``; overwriting also deletes the client certificates and the revocation list, which belonged to
    the old CA (every certificate it issued stops working).
    """
    d = Path(dir)
    _check_days(validity_days)
    sans = _server_general_names(server_names)
    validate_client_id(operator_name)
    ca_cert_path, ca_key_path = ca_paths(d)
    existing = [p for p in (ca_cert_path, ca_key_path) if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise TLSConfigError(
            f"a CA already exists: {existing[0]} (pass overwrite=True / `slperf certs init --dir {quote(d)} "
            "--overwrite` to replace it; every certificate issued by the old CA then stops working)"
        )

    now = utc_now()
    not_before = now - _CLOCK_SKEW
    ca_key = _new_key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{ORGANIZATION} CA"),
        ]
    )
    ca_cert = _build_cert(
        subject=ca_name,
        public_key=ca_key.public_key(),
        issuer=ca_name,
        issuer_key=ca_key,
        issuer_ski=x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
        not_before=not_before,
        not_after=now + _dt.timedelta(days=max(validity_days, CA_MIN_VALIDITY_DAYS)),
        is_ca=True,
    )
    leaf_before, leaf_after = _leaf_window(ca_cert, validity_days, None)
    server_key, server_cert = _issue_leaf(
        ca_cert,
        ca_key,
        role=Role.SERVER,
        name=SERVER_IDENTITY_NAME,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        extra_sans=sans,
        not_before=leaf_before,
        not_after=leaf_after,
    )
    op_key, op_cert = _issue_leaf(
        ca_cert,
        ca_key,
        role=Role.OPERATOR,
        name=operator_name,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=leaf_before,
        not_after=leaf_after,
    )

    d.mkdir(parents=True, exist_ok=True)
    with _dir_lock(d):
        _write_key(ca_key_path, ca_key)
        _write_cert(ca_cert_path, ca_cert)
        server_cert_path, server_key_path = server_paths(d)
        _write_key(server_key_path, server_key)
        _write_cert(server_cert_path, server_cert)
        op_cert_path, op_key_path = operator_paths(d)
        _write_key(op_key_path, op_key)
        _write_cert(op_cert_path, op_cert)
        if existing:
            _remove_stale_issued(d)
    log.info("created PKI in %s (server names: %s)", d, ", ".join(str(s.value) for s in sans))


def add_fedserver(dir: PathLike, *, validity_days: int = DEFAULT_VALIDITY_DAYS) -> None:
    """Issues the fed server's certificate (serverAuth, SAN DNS ``slperf-fedserver``, the one name clients verify
    when they dial it, and ``urn:slperf:server:fedserver``) and the main server's certificate towards it
    (clientAuth, ``urn:slperf:server:server``), from the CA in ``dir``; replaces earlier ones."""
    d = Path(dir)
    _check_days(validity_days)
    ca_cert, ca_key = _load_ca(d)
    before, after = _leaf_window(ca_cert, validity_days, None)
    fed_key, fed_cert = _issue_leaf(
        ca_cert,
        ca_key,
        role=Role.SERVER,
        name=FEDSERVER_IDENTITY_NAME,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        extra_sans=[x509.DNSName(FEDSERVER_TLS_NAME)],
        not_before=before,
        not_after=after,
    )
    caller_key, caller_cert = _issue_leaf(
        ca_cert,
        ca_key,
        role=Role.SERVER,
        name=SERVER_IDENTITY_NAME,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=before,
        not_after=after,
    )
    with _dir_lock(d):
        for (cert_path, key_path), key, cert in (
            (fedserver_paths(d), fed_key, fed_cert),
            (server_client_paths(d), caller_key, caller_cert),
        ):
            _write_key(key_path, key)
            _write_cert(cert_path, cert)
    log.info("issued the fed server's certificates in %s", d)


def _remove_stale_issued(d: Path) -> None:
    """After a CA was replaced: drop what the old CA issued to clients, and its revocation list."""
    removed = []
    for cid in list_clients(d):
        for p in client_paths(d, cid):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(cid)
    with contextlib.suppress(FileNotFoundError):
        revoked_path(d).unlink()
    if removed:
        log.info("removed %d client certificate(s) issued by the replaced CA: %s", len(removed), ", ".join(removed))


def add_client(
    dir: PathLike,
    client_id: str,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    *,
    overwrite: bool = False,
    not_valid_after: _dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Issues ``dir/clients/<client_id>.pem`` and ``.key`` (clientAuth, ``urn:slperf:client:<client_id>``).

    Other clients are never touched. An existing id is an error unless ``overwrite=True``; a revoked id is always an
    error (the server rejects revoked ids, so a new certificate for it could never be used). ``not_valid_after``
    (UTC; naive datetimes are taken as UTC) overrides ``validity_days``; a past value makes an expired certificate.
    Returns (cert_path, key_path).
    """
    validate_client_id(client_id)
    _check_days(validity_days)
    d = Path(dir)
    cert_path, key_path = client_paths(d, client_id)
    ca_cert, ca_key = _load_ca(d)
    if not overwrite and (cert_path.exists() or key_path.exists()):
        existing = cert_path if cert_path.exists() else key_path
        raise TLSConfigError(
            f"client {client_id} already exists: {existing} (pass overwrite=True / "
            f"`slperf certs add-client {client_id} --dir {quote(d)} --overwrite` to re-issue it)"
        )
    if client_id in load_revoked(d):
        raise TLSConfigError(
            f"client id {client_id} is revoked in {revoked_path(d)} (issue a certificate under a new id)"
        )
    not_before, not_after = _leaf_window(ca_cert, validity_days, not_valid_after)
    key, cert = _issue_leaf(
        ca_cert,
        ca_key,
        role=Role.CLIENT,
        name=client_id,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=not_before,
        not_after=not_after,
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    log.info(
        "issued client certificate %s (serial %s, valid until %s)",
        cert_path,
        serial_hex(cert.serial_number),
        not_after.isoformat(),
    )
    return cert_path, key_path


# --------------------------------------------------------------------------------------------------------------
# Revocation (writing; the server reads the list with ``slperf.common.security.identity.load_revoked``)


def revoke(dir: PathLike, client_id: str) -> None:
    """Records ``client_id`` and its certificate's serial in ``dir/revoked.json`` (idempotent, atomic).

    The server reads the list at the start of every session and refuses the revoked client *ids*; it does not
    compare serials. That is enough because an id, once revoked, is never issued again (``add_client`` refuses
    it), so every certificate that names it is refused. The serial is recorded for the audit trail (it matches
    ``openssl x509 -serial``). The client's files are kept, for the record.
    """
    validate_client_id(client_id)
    d = Path(dir)
    cert_path, _ = client_paths(d, client_id)
    if not cert_path.exists():
        raise TLSConfigError(
            f"certificate not found: {cert_path} (no client {client_id} was issued in {d}; "
            f"list them with `ls {quote(d / CLIENTS_DIR)}`)"
        )
    _, cert = load_cert(cert_path)
    with _dir_lock(d):
        entries = read_revocation_list(d)
        if any(e.client_id == client_id and e.serial == cert.serial_number for e in entries):
            return
        revoked_at = utc_now().replace(microsecond=0).isoformat()
        entries.append(RevocationEntry(client_id, cert.serial_number, revoked_at))
        text = json.dumps([e.to_json() for e in entries], indent=2) + "\n"
        atomic_write(revoked_path(d), text.encode("utf-8"), _CERT_MODE)
    log.info("revoked client %s (serial %s)", client_id, serial_hex(cert.serial_number))
