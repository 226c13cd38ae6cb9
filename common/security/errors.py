"""The one error type of the security package."""

from __future__ import annotations


class TLSConfigError(Exception):
    """A certificate, key or PKI file is missing, unreadable, malformed or inconsistent.

    The message is one line that names the file and says how to fix it; it never contains key material, because
    these errors end up in the logs of daemons that other people read.
    """
