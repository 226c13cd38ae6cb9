"""PKI and mutual-TLS helpers for the server, the client daemons and the operator CLI.

Layout of a certificates directory DIR (created by :func:`init_pki` and :func:`add_client`)::

    DIR/ca.pem              project CA certificate (the only trust root, always passed to gRPC explicitly)
    DIR/ca.key              CA private key                                  (0600)
    DIR/server.pem          server certificate: serverAuth, SANs = the server names (DNS names / IP addresses)
    DIR/server.key                                                          (0600)
    DIR/operator.pem        operator certificate: clientAuth, urn:slperf:operator:<name>
    DIR/operator.key                                                        (0600)
    DIR/clients/<id>.pem    one certificate per client: clientAuth, urn:slperf:client:<id>
    DIR/clients/<id>.key                                                    (0600)
    DIR/revoked.json        [{"id": "<id>", "serial": "<HEX>", "revoked_at": "<ISO 8601>"}, ...]

Keys are EC P-256, signatures ECDSA with SHA-256. Private keys are created with mode 0600 from the start and every
file is written atomically (temporary file in the same folder, then ``os.replace``).

A peer's identity is carried three ways so that it can be read back robustly: the subject's CN (the name) and OU
(the role: ``client``, ``operator`` or ``server``), and a SAN URI ``urn:slperf:<role>:<name>``, which wins.

Nothing here ever puts key material into an exception or a log line; errors about files name the file and the fix.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import json
import logging
import os
import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slperf.common.fsutil import atomic_write

try:  # POSIX only; used to serialise concurrent updates of revoked.json
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TLSConfigError",
    "InvalidClientIdError",
    "Identity",
    "ROLES",
    "DEFAULT_SERVER_NAMES",
    "DEFAULT_VALIDITY_DAYS",
    "validate_client_id",
    "ca_paths",
    "server_paths",
    "operator_paths",
    "client_paths",
    "revoked_path",
    "list_clients",
    "init_pki",
    "add_client",
    "make_expired_client",
    "make_foreign_client",
    "revoke",
    "load_revoked",
    "load_revoked_serials",
    "is_revoked",
    "peer_certificate",
    "identity_from_pem",
    "identity_from_auth_context",
    "server_credentials",
    "channel_credentials",
    "client_channel_credentials",
    "operator_channel_credentials",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
OPERATOR_CERT = "operator.pem"
OPERATOR_KEY = "operator.key"
CLIENTS_DIR = "clients"
REVOKED_FILE = "revoked.json"
_PKI_FILES = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, OPERATOR_CERT, OPERATOR_KEY)

ROLES = ("client", "operator", "server")
URN_PREFIX = "urn:slperf:"
ORGANIZATION = "SLPerf"
SERVER_IDENTITY_NAME = "server"
DEFAULT_OPERATOR_NAME = "operator"
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "server")
DEFAULT_VALIDITY_DAYS = 825
CA_MIN_VALIDITY_DAYS = 3650
_CLOCK_SKEW = _dt.timedelta(minutes=5)

_KEY_MODE = 0o600
_CERT_MODE = 0o644

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")


class TLSConfigError(Exception):
    """A certificate, key or PKI file is missing, unreadable, malformed or inconsistent.

    The message is one line that names the file and says how to fix it; it never contains key material.
    """


class InvalidClientIdError(TLSConfigError, ValueError):
    """A client (or operator) name does not match ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$``."""


@dataclass(frozen=True)
class Identity:
    """Who is on the other end of a mutual-TLS connection: ``role`` is one of :data:`ROLES`."""

    role: str
    name: str

    @property
    def uri(self) -> str:
        return f"{URN_PREFIX}{self.role}:{self.name}"

    def __str__(self) -> str:
        return f"{self.role}:{self.name}"


# --------------------------------------------------------------------------------------------------------------
# Names and paths


def valid_client_id(client_id: Any) -> bool:
    """True for ids usable as client (and run) ids: letters, digits, '_', '.', '-', at most 63 characters."""
    return isinstance(client_id, str) and _ID_RE.fullmatch(client_id) is not None


def validate_client_id(client_id: Any) -> str:
    """Returns ``client_id`` if it is a valid id (1-63 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit)."""
    if not isinstance(client_id, str) or _ID_RE.fullmatch(client_id) is None:
        shown = repr(client_id[:80]) if isinstance(client_id, str) else type(client_id).__name__
        raise InvalidClientIdError(
            f"invalid client id {shown}: use 1-63 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return client_id


def ca_paths(dir: PathLike) -> tuple[Path, Path]:
    """(certificate, key) of the CA in ``dir``."""
    d = Path(dir)
    return d / CA_CERT, d / CA_KEY


def server_paths(dir: PathLike) -> tuple[Path, Path]:
    d = Path(dir)
    return d / SERVER_CERT, d / SERVER_KEY


def operator_paths(dir: PathLike) -> tuple[Path, Path]:
    d = Path(dir)
    return d / OPERATOR_CERT, d / OPERATOR_KEY


def client_paths(dir: PathLike, client_id: str) -> tuple[Path, Path]:
    validate_client_id(client_id)
    d = Path(dir) / CLIENTS_DIR
    return d / f"{client_id}.pem", d / f"{client_id}.key"


def revoked_path(dir: PathLike) -> Path:
    return Path(dir) / REVOKED_FILE


def list_clients(dir: PathLike) -> list[str]:
    """The ids of every client certificate in ``dir/clients`` (sorted); empty if there is none."""
    d = Path(dir) / CLIENTS_DIR
    try:
        entries = list(d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(p.stem for p in entries if p.suffix == ".pem" and _ID_RE.fullmatch(p.stem))


def _q(path: PathLike) -> str:
    return shlex.quote(str(path))


def _fix_hint(path: Path, *, missing: bool) -> str:
    """How to (re)create ``path``, derived from where it sits in the certificates layout."""
    if path.parent.name == CLIENTS_DIR and path.suffix in (".pem", ".key") and _ID_RE.fullmatch(path.stem):
        d = _q(path.parent.parent)
        cid = path.stem
        if missing:
            return f"create it with `slperf certs add-client {cid} --dir {d}`"
        return f"re-issue it with `slperf certs add-client {cid} --dir {d} --overwrite`"
    if path.name in _PKI_FILES:
        d = _q(path.parent)
        ca_exists = (path.parent / CA_CERT).exists() or (path.parent / CA_KEY).exists()
        if missing and not ca_exists:
            return f"create it with `slperf certs init --dir {d}`"
        return f"re-create the PKI with `slperf certs init --dir {d} --overwrite` (this re-issues every certificate)"
    if missing:
        return "check the path, or create the certificates with `slperf certs init --dir DIR`"
    return "point to a PEM file issued by `slperf certs`"


# --------------------------------------------------------------------------------------------------------------
# Reading


def _read_bytes(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{kind} not found: {path} ({_fix_hint(path, missing=True)})") from None
    except IsADirectoryError:
        raise TLSConfigError(f"{kind} is a directory, not a file: {path} ({_fix_hint(path, missing=True)})") from None
    except PermissionError:
        raise TLSConfigError(
            f"cannot read {kind}: {path} (permission denied; run as the file's owner or fix its permissions)"
        ) from None
    except OSError as e:
        raise TLSConfigError(f"cannot read {kind}: {path} ({e.strerror or type(e).__name__})") from None


def _load_certs(path: Path, kind: str = "certificate") -> tuple[bytes, list[x509.Certificate]]:
    data = _read_bytes(path, kind)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSConfigError(f"not a PEM certificate: {path} ({_fix_hint(path, missing=False)})")
    return data, certs


def _load_cert(path: Path, kind: str = "certificate") -> tuple[bytes, x509.Certificate]:
    data, certs = _load_certs(path, kind)
    return data, certs[0]


def _load_key(path: Path) -> tuple[bytes, Any]:
    data = _read_bytes(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        raise TLSConfigError(
            f"private key is encrypted: {path} (gRPC needs an unencrypted key; {_fix_hint(path, missing=False)})"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"not a PEM private key: {path} ({_fix_hint(path, missing=False)})") from None
    _warn_if_key_exposed(path)
    return data, key


def _warn_if_key_exposed(path: Path) -> None:
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning("private key %s is accessible to other users (mode %04o); run `chmod 600 %s`", path, mode, _q(path))


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_pair(cert: x509.Certificate, key: Any, cert_path: Path, key_path: Path) -> None:
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise TLSConfigError(
            f"certificate and private key do not match: {cert_path} and {key_path} "
            f"({_fix_hint(cert_path, missing=False)})"
        )


def _warn_if_expired(cert: x509.Certificate, path: Path) -> None:
    now = _now()
    if cert.not_valid_after_utc <= now:
        log.warning("certificate %s expired on %s; peers will reject it (%s)", path,
                    cert.not_valid_after_utc.isoformat(), _fix_hint(path, missing=False))
    elif cert.not_valid_before_utc > now:
        log.warning("certificate %s is not valid before %s (check the clock)", path,
                    cert.not_valid_before_utc.isoformat())


# --------------------------------------------------------------------------------------------------------------
# Writing




def _fsync_dir(d: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(path, pem, _KEY_MODE)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)


# --------------------------------------------------------------------------------------------------------------
# Issuing


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _subject(role: str, cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
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
    public_key: Any,
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
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _leaf_window(
    ca_cert: x509.Certificate, validity_days: int, not_valid_after: _dt.datetime | None
) -> tuple[_dt.datetime, _dt.datetime]:
    now = _now()
    not_before = now - _CLOCK_SKEW
    if not_valid_after is None:
        not_after = now + _dt.timedelta(days=validity_days)
        not_after = min(not_after, ca_cert.not_valid_after_utc)  # a leaf never outlives its CA
    else:
        not_after = not_valid_after
        if not_after.tzinfo is None:
            not_after = not_after.replace(tzinfo=_dt.timezone.utc)
    if not_after <= not_before:  # e.g. a deliberately expired certificate for tests
        not_before = not_after - _dt.timedelta(days=1)
    return not_before, not_after


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    role: str,
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
    _, cert = _load_cert(cert_path, "CA certificate")
    _, key = _load_key(key_path)
    _check_pair(cert, key, cert_path, key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSConfigError(f"CA key is not an EC key: {key_path} ({_fix_hint(key_path, missing=False)})")
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
            f"a CA already exists: {existing[0]} (pass overwrite=True / `slperf certs init --dir {_q(d)} --overwrite` "
            "to replace it; every certificate issued by the old CA then stops working)"
        )

    now = _now()
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
        ca_cert, ca_key, role="server", name=SERVER_IDENTITY_NAME, eku=ExtendedKeyUsageOID.SERVER_AUTH,
        extra_sans=sans, not_before=leaf_before, not_after=leaf_after,
    )
    op_key, op_cert = _issue_leaf(
        ca_cert, ca_key, role="operator", name=operator_name, eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=leaf_before, not_after=leaf_after,
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
            f"`slperf certs add-client {client_id} --dir {_q(d)} --overwrite` to re-issue it)"
        )
    if client_id in load_revoked(d):
        raise TLSConfigError(
            f"client id {client_id} is revoked in {revoked_path(d)} (issue a certificate under a new id)"
        )
    not_before, not_after = _leaf_window(ca_cert, validity_days, not_valid_after)
    key, cert = _issue_leaf(
        ca_cert, ca_key, role="client", name=client_id, eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=not_before, not_after=not_after,
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    log.info("issued client certificate %s (serial %s, valid until %s)", cert_path, _serial_hex(cert.serial_number),
             not_after.isoformat())
    return cert_path, key_path


def make_expired_client(dir: PathLike, client_id: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Issues a client certificate that expired a day ago (for tests). Returns (cert_path, key_path)."""
    return add_client(dir, client_id, overwrite=overwrite, not_valid_after=_now() - _dt.timedelta(days=1))


def make_foreign_client(dir: PathLike, client_id: str = "foreign") -> tuple[Path, Path, Path]:
    """Creates a separate, unrelated PKI in ``dir`` (unless one is already there) and a client certificate from it.

    For tests that need "a certificate from another CA". Returns (ca_path, cert_path, key_path).
    """
    d = Path(dir)
    if not ca_paths(d)[0].exists():
        init_pki(d)
    cert_path, key_path = add_client(d, client_id, overwrite=True)
    return ca_paths(d)[0], cert_path, key_path


# --------------------------------------------------------------------------------------------------------------
# Revocation


def _serial_hex(serial: int) -> str:
    return format(serial, "X")  # as `openssl x509 -serial` prints it


def _read_revoked(d: Path) -> list[dict[str, Any]]:
    path = revoked_path(d)
    try:
        text = path.read_text(encoding="utf-8")
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
    for i, entry in enumerate(data):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("id"), str)
            and _ID_RE.fullmatch(entry["id"]) is not None
            and (entry.get("serial") is None or _parse_serial(entry.get("serial")) is not None)
        )
        if not ok:
            raise TLSConfigError(f"revocation list is corrupt: {path} (entry {i} is malformed; {fix})")
    return data


def _parse_serial(value: Any) -> int | None:
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


def load_revoked(dir: PathLike) -> set[str]:
    """The revoked client ids in ``dir/revoked.json``; empty if the file does not exist.

    Raises :class:`TLSConfigError` if the file is unreadable or corrupt (callers should then fail closed).
    """
    return {e["id"] for e in _read_revoked(Path(dir))}


def load_revoked_serials(dir: PathLike) -> set[int]:
    """The serial numbers of the revoked client certificates in ``dir/revoked.json``."""
    out = set()
    for e in _read_revoked(Path(dir)):
        s = _parse_serial(e.get("serial"))
        if s is not None:
            out.add(s)
    return out


def revoke(dir: PathLike, client_id: str) -> None:
    """Records ``client_id`` and its certificate's serial in ``dir/revoked.json`` (idempotent, atomic).

    The server reads the list at the start of every session and refuses revoked ids and serials. The client's files
    are kept (for the record); the id cannot be re-issued.
    """
    validate_client_id(client_id)
    d = Path(dir)
    cert_path, _ = client_paths(d, client_id)
    if not cert_path.exists():
        raise TLSConfigError(
            f"certificate not found: {cert_path} (no client {client_id} was issued in {d}; "
            f"list them with `ls {_q(d / CLIENTS_DIR)}`)"
        )
    _, cert = _load_cert(cert_path)
    serial = _serial_hex(cert.serial_number)
    with _dir_lock(d):
        entries = _read_revoked(d)
        if any(e["id"] == client_id and _parse_serial(e.get("serial")) == cert.serial_number for e in entries):
            return
        entries.append(
            {"id": client_id, "serial": serial, "revoked_at": _now().replace(microsecond=0).isoformat()}
        )
        text = json.dumps(entries, indent=2) + "\n"
        atomic_write(revoked_path(d), text.encode("utf-8"), _CERT_MODE)
    log.info("revoked client %s (serial %s)", client_id, serial)


def is_revoked(dir: PathLike, identity: Identity, serial: int | None = None) -> bool:
    """True if ``identity`` is a client whose id, or ``serial`` (the peer certificate's), is in the revocation list."""
    entries = _read_revoked(Path(dir))
    if identity.role == "client" and any(e["id"] == identity.name for e in entries):
        return True
    return serial is not None and any(_parse_serial(e.get("serial")) == serial for e in entries)


# --------------------------------------------------------------------------------------------------------------
# Identities


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
            parts = uri[len(URN_PREFIX):].split(":")
            if len(parts) != 2 or parts[0] not in ROLES or _ID_RE.fullmatch(parts[1]) is None:
                return None  # a malformed slperf identity: fail closed rather than guess
            found.add(Identity(parts[0], parts[1]))
        if found:
            return found.pop() if len(found) == 1 else None
        ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(ous) != 1 or len(cns) != 1:
            return None
        role, name = ous[0].value, cns[0].value
        if isinstance(role, str) and role in ROLES and isinstance(name, str) and _ID_RE.fullmatch(name):
            return Identity(role, name)
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
# gRPC credentials


def server_credentials(dir: PathLike, require_client_auth: bool = True) -> grpc.ServerCredentials:
    """Server credentials from ``dir/server.pem`` + ``server.key``, trusting only ``dir/ca.pem`` for client certs."""
    d = Path(dir)
    ca_path = ca_paths(d)[0]
    cert_path, key_path = server_paths(d)
    ca_pem, _ = _load_certs(ca_path, "CA certificate")
    cert_pem, cert = _load_cert(cert_path)
    key_pem, key = _load_key(key_path)
    _check_pair(cert, key, cert_path, key_path)
    _warn_if_expired(cert, cert_path)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=require_client_auth
    )


def channel_credentials(
    ca_path: PathLike, cert_path: PathLike | None = None, key_path: PathLike | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials trusting only ``ca_path``; with ``cert_path`` and ``key_path``, for mutual TLS.

    The root is always passed explicitly, so GRPC_DEFAULT_SSL_ROOTS_FILE_PATH and the system bundle play no part.
    """
    if (cert_path is None) != (key_path is None):
        given = cert_path if cert_path is not None else key_path
        raise TLSConfigError(
            f"a client certificate needs its key and vice versa: only {given} was given "
            "(pass both cert_path and key_path, or neither)"
        )
    ca_pem, _ = _load_certs(Path(ca_path), "CA certificate")
    if cert_path is None or key_path is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    cp, kp = Path(cert_path), Path(key_path)
    cert_pem, cert = _load_cert(cp)
    key_pem, key = _load_key(kp)
    _check_pair(cert, key, cp, kp)
    _warn_if_expired(cert, cp)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def client_channel_credentials(dir: PathLike, client_id: str) -> grpc.ChannelCredentials:
    """Mutual-TLS channel credentials for client ``client_id`` from the layout in ``dir``."""
    cert_path, key_path = client_paths(dir, client_id)
    return channel_credentials(ca_paths(dir)[0], cert_path, key_path)


def operator_channel_credentials(dir: PathLike) -> grpc.ChannelCredentials:
    """Mutual-TLS channel credentials for the operator from the layout in ``dir``."""
    cert_path, key_path = operator_paths(dir)
    return channel_credentials(ca_paths(dir)[0], cert_path, key_path)
