"""Certificates that only tests need: an expired client, a client of another CA, and serial look-ups.

They live with the tests (not in ``slperf.pki``) because no operator ever wants them; a test imports them as
``from pki_helpers import ...`` (``tests/`` is on the path through its ``conftest.py``).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from slperf.common.security.identity import Identity, Role, read_revocation_list
from slperf.common.security.layout import PathLike, ca_paths
from slperf.pki import add_client, init_pki


def make_expired_client(dir: PathLike, client_id: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Issues a client certificate that expired a day ago. Returns (cert_path, key_path)."""
    yesterday = _dt.datetime.now(_dt.UTC) - _dt.timedelta(days=1)
    return add_client(dir, client_id, overwrite=overwrite, not_valid_after=yesterday)


def make_foreign_client(dir: PathLike, client_id: str = "foreign") -> tuple[Path, Path, Path]:
    """Creates a separate, unrelated PKI in ``dir`` (unless one is already there) and a client certificate from it,
    for tests that need "a certificate from another CA". Returns (ca_path, cert_path, key_path)."""
    d = Path(dir)
    if not ca_paths(d)[0].exists():
        init_pki(d)
    cert_path, key_path = add_client(d, client_id, overwrite=True)
    return ca_paths(d)[0], cert_path, key_path


def load_revoked_serials(dir: PathLike) -> set[int]:
    """The serial numbers of the revoked client certificates in ``dir/revoked.json``."""
    return {e.serial for e in read_revocation_list(dir) if e.serial is not None}


def is_revoked(dir: PathLike, identity: Identity, serial: int | None = None) -> bool:
    """True if ``identity`` is a client whose id, or ``serial`` (a certificate's), is in the revocation list."""
    entries = read_revocation_list(dir)
    if identity.role == Role.CLIENT and any(e.client_id == identity.name for e in entries):
        return True
    return serial is not None and any(e.serial == serial for e in entries)


def make_pki(dir: PathLike, clients: tuple[str, ...] = ("c1",)) -> Path:
    """A fresh PKI in ``dir`` with certificates for ``clients`` (the unit tests' smaller fixture). Returns ``dir``."""
    d = Path(dir)
    init_pki(d)
    for cid in clients:
        add_client(d, cid)
    return d
