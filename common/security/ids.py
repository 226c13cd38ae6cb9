"""The syntax of client ids and run ids.

Both become file names (``clients/<id>.pem``, ``runs/<run id>/``) and URI parts (``urn:slperf:client:<id>``), so
both are restricted to a portable, path-safe alphabet. They share the rules today but are different things, so
each has its own validator: a change to one must not silently change the other.
"""

from __future__ import annotations

import re
from typing import Any

from slperf.common.security.errors import TLSConfigError

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
ID_RULE = "1-63 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"


class InvalidClientIdError(TLSConfigError, ValueError):
    """A client (or operator) name does not match ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$``."""


def valid_client_id(client_id: Any) -> bool:
    """True for ids usable as client (and operator) names: letters, digits, '_', '.', '-', at most 63 characters."""
    return isinstance(client_id, str) and ID_PATTERN.fullmatch(client_id) is not None


def validate_client_id(client_id: Any) -> str:
    """Returns ``client_id`` if it is a valid id (1-63 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit)."""
    if not valid_client_id(client_id):
        shown = repr(client_id[:80]) if isinstance(client_id, str) else type(client_id).__name__
        raise InvalidClientIdError(f"invalid client id {shown}: use {ID_RULE}")
    return client_id


def valid_run_id(run_id: Any) -> bool:
    """True for ids usable as run ids (the name of the run's folder): the same rules as client ids."""
    return isinstance(run_id, str) and ID_PATTERN.fullmatch(run_id) is not None
