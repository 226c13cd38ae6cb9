"""What a failed session means for the client daemon: give up (its identity or credentials are refused) or
retry with backoff (the server is down, restarting, or the network failed).

The daemon must never give up because the server went away, however often. Exact texts gRPC (BoringSSL,
grpcio 1.85) reports for each case, measured against a real server (``tests/slclient/test_reconnect.py``
holds them):

* nothing listens (server down / restarting): ``failed to connect to all addresses; last error: UNKNOWN:
  ipv4:127.0.0.1:P: Failed to connect to remote host: Connection refused``
* the server dies during a session: ``Stream removed (recvmsg:Connection reset by peer (104))``; a graceful
  stop (SIGTERM) ends the stream with status OK
* a TCP peer that accepts and closes or resets before the TLS handshake (a layer-4 proxy whose backend is
  down): ``... last error: UNAVAILABLE: ipv4:...: Handshake read failed (Socket closed)`` or
  ``(recvmsg:Connection reset by peer (104))``
* the server refuses this client's certificate (another CA, expired) or a plaintext client meets a TLS
  server: with TLS 1.3 the client's handshake completes and the server then closes the connection before
  HTTP/2 starts: ``failed to connect to all addresses; last error: UNAVAILABLE: ipv4:...: Socket closed``
* this client refuses the server's certificate (its ``--ca`` did not sign it, the name does not match) or a
  TLS client meets a plaintext server: ``... Tls handshake failed (TSI_PROTOCOL_FAILURE): ...
  CERTIFICATE_VERIFY_FAILED`` / ``WRONG_VERSION_NUMBER``, or ``Hostname Verification Check failed``

The two credential cases stop the daemon only after ``max_refusals`` such attempts in a row, none of which
reached Welcome: a server killed in the instant between its TLS handshake and HTTP/2 could look like the
first case once, never several times in a row.
"""

from __future__ import annotations

import enum
import random

import grpc


class Verdict(enum.Enum):
    IDENTITY_REFUSED = "identity refused"  # final at once: the server said who we are is not allowed
    CREDENTIALS_REFUSED = "credentials refused"  # final when repeated: a TLS-level refusal of a certificate
    RETRY = "retry"  # the server is down or the network failed: reconnect with backoff, forever


# Refusals of who the client is, whenever they come (revoked, another id's certificate, not in the allowed list).
IDENTITY_CODES = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
# Answers to the Hello itself (protocol version mismatch, an invalid client id): final only before Welcome.
HELLO_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT})


def classify(code: grpc.StatusCode, details: str, welcomed: bool) -> Verdict:
    """What a session that ended with ``code``/``details`` means; ``welcomed``: it had reached Welcome."""
    if code in IDENTITY_CODES:
        return Verdict.IDENTITY_REFUSED
    if not welcomed and code in HELLO_CODES:
        return Verdict.IDENTITY_REFUSED
    if not welcomed and code == grpc.StatusCode.UNAVAILABLE and is_tls_refusal(details):
        return Verdict.CREDENTIALS_REFUSED
    return Verdict.RETRY


def is_tls_refusal(details: str) -> bool:
    """True when a connection attempt reached a TLS peer that refused this client's credentials, or whose
    certificate this client refuses; False for a server that is down, a reset, or a peer that closed before any
    TLS handshake (see the module docstring for the texts)."""
    text = details.lower().strip()
    if "failed to connect to all addresses" not in text:
        return False  # an established connection that broke, not a refused handshake
    if "handshake read failed" in text or "handshake write failed" in text:
        return False  # closed or reset before the server's TLS answer: nothing there is speaking TLS yet
    if "tls handshake failed" in text or "certificate_verify_failed" in text or "hostname verification" in text:
        return True  # this client refuses the server's certificate
    return text.endswith(": socket closed")  # the server closed right after the handshake: it refused ours


class Backoff:
    """Exponential reconnect delays with jitter (0.5x to 1.5x), from ``initial`` up to ``maximum``; ``reset``
    after every session that reached Welcome, so a server restart is rejoined at once."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None):
        if initial <= 0 or maximum < initial:
            raise ValueError(f"reconnect delays must satisfy 0 < initial <= maximum (got {initial}, {maximum})")
        self.initial = initial
        self.maximum = maximum
        self._next = initial
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next * (0.5 + self._rng.random())
        self._next = min(self._next * 2, self.maximum)
        return delay
