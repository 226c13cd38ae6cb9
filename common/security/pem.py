"""Reading certificates and private keys, with one-line errors that name the file and the fix.

Shared by the run-time credentials (``credentials``) and the operator's PKI tooling (``slperf.pki``), which both
load the same files. Nothing here ever puts key material into an exception or a log line.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from slperf.common.security.errors import TLSConfigError
from slperf.common.security.layout import fix_hint, quote

log = logging.getLogger(__name__)


def utc_now() -> _dt.datetime:
    """The current time as an aware UTC datetime (what ``cryptography``'s ``*_utc`` properties compare with)."""
    return _dt.datetime.now(_dt.UTC)


def read_bytes(path: Path, kind: str) -> bytes:
    """The bytes of ``path``; every failure is a :class:`TLSConfigError` naming ``kind``, the file and the fix."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{kind} not found: {path} ({fix_hint(path, missing=True)})") from None
    except IsADirectoryError:
        raise TLSConfigError(f"{kind} is a directory, not a file: {path} ({fix_hint(path, missing=True)})") from None
    except PermissionError:
        raise TLSConfigError(
            f"cannot read {kind}: {path} (permission denied; run as the file's owner or fix its permissions)"
        ) from None
    except OSError as e:
        raise TLSConfigError(f"cannot read {kind}: {path} ({e.strerror or type(e).__name__})") from None


def load_certs(path: Path, kind: str = "certificate") -> tuple[bytes, list[x509.Certificate]]:
    """The PEM bytes of ``path`` and every certificate in it (at least one)."""
    data = read_bytes(path, kind)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSConfigError(f"not a PEM certificate: {path} ({fix_hint(path, missing=False)})")
    return data, certs


def load_cert(path: Path, kind: str = "certificate") -> tuple[bytes, x509.Certificate]:
    """The PEM bytes of ``path`` and its first certificate."""
    data, certs = load_certs(path, kind)
    return data, certs[0]


def load_key(path: Path) -> tuple[bytes, PrivateKeyTypes]:
    """The PEM bytes of an unencrypted private key and the key; warns when others can read the file."""
    data = read_bytes(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        raise TLSConfigError(
            f"private key is encrypted: {path} (gRPC needs an unencrypted key; {fix_hint(path, missing=False)})"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"not a PEM private key: {path} ({fix_hint(path, missing=False)})") from None
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
        log.warning(
            "private key %s is accessible to other users (mode %04o); run `chmod 600 %s`", path, mode, quote(path)
        )


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_pair(cert: x509.Certificate, key: PrivateKeyTypes, cert_path: Path, key_path: Path) -> None:
    """Raises unless ``key`` is the private half of ``cert`` (a mixed-up pair fails late and obscurely in TLS)."""
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise TLSConfigError(
            f"certificate and private key do not match: {cert_path} and {key_path} "
            f"({fix_hint(cert_path, missing=False)})"
        )


def warn_if_expired(cert: x509.Certificate, path: Path) -> None:
    """Logs (does not raise) when ``cert`` is outside its validity window: the peer is the one that refuses it."""
    now = utc_now()
    if cert.not_valid_after_utc <= now:
        log.warning(
            "certificate %s expired on %s; peers will reject it (%s)",
            path,
            cert.not_valid_after_utc.isoformat(),
            fix_hint(path, missing=False),
        )
    elif cert.not_valid_before_utc > now:
        log.warning(
            "certificate %s is not valid before %s (check the clock)", path, cert.not_valid_before_utc.isoformat()
        )
