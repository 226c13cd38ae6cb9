"""The client daemon's reading of a failed session: the exact texts grpcio reported against a real server."""

from __future__ import annotations

import random

import grpc
import pytest

from slperf.slclient.reconnect import Backoff, Verdict, classify, is_tls_refusal

P = "ipv4:127.0.0.1:34631"
TEXTS = {
    # server down: nothing listens
    f"failed to connect to all addresses; last error: UNKNOWN: {P}: Failed to connect to remote host: "
    "Connection refused": False,
    # server killed during a session
    "Stream removed (recvmsg:Connection reset by peer (104))": False,
    # a TCP peer that closes / resets before any TLS answer (a layer-4 proxy whose backend is down)
    f"failed to connect to all addresses; last error: UNAVAILABLE: {P}: Handshake read failed (Socket closed)": False,
    f"failed to connect to all addresses; last error: UNAVAILABLE: {P}: Handshake read failed "
    "(recvmsg:Connection reset by peer (104))": False,
    # the server refused this client's certificate (foreign CA, expired) or a plaintext client met a TLS server
    f"failed to connect to all addresses; last error: UNAVAILABLE: {P}: Socket closed": True,
    # this client refused the server's certificate, or met a plaintext server
    f"failed to connect to all addresses; last error: UNKNOWN: {P}: Tls handshake failed (TSI_PROTOCOL_FAILURE): "
    "SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local "
    "issuer certificate: OK": True,
    f"failed to connect to all addresses; last error: UNKNOWN: {P}: Tls handshake failed (TSI_PROTOCOL_FAILURE): "
    "SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate "
    "verification context: OK": True,
    f"failed to connect to all addresses; last error: UNKNOWN: {P}: Custom verification check failed with error: "
    "UNAUTHENTICATED: Hostname Verification Check failed.": True,
    # an established connection closed (never a refused handshake)
    "Socket closed": False,
}


@pytest.mark.parametrize("details,refusal", list(TEXTS.items()))
def test_a_tls_refusal_is_told_from_a_server_that_is_down(details, refusal):
    assert is_tls_refusal(details) is refusal
    expected = Verdict.CREDENTIALS_REFUSED if refusal else Verdict.RETRY
    assert classify(grpc.StatusCode.UNAVAILABLE, details, welcomed=False) == expected
    assert classify(grpc.StatusCode.UNAVAILABLE, details, welcomed=True) == Verdict.RETRY


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED])
def test_identity_codes_are_final_before_and_after_welcome(code):
    assert classify(code, "revoked", welcomed=False) == Verdict.IDENTITY_REFUSED
    assert classify(code, "revoked", welcomed=True) == Verdict.IDENTITY_REFUSED


@pytest.mark.parametrize("code", [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT])
def test_hello_errors_are_final_only_before_welcome(code):
    assert classify(code, "protocol version 9 is not supported", welcomed=False) == Verdict.IDENTITY_REFUSED
    assert classify(code, "bad envelope", welcomed=True) == Verdict.RETRY


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED]
)
def test_other_codes_retry(code):
    assert classify(code, "", welcomed=False) == Verdict.RETRY


def test_backoff_doubles_to_its_maximum_with_jitter_and_resets():
    backoff = Backoff(1.0, 4.0, random.Random(0))
    delays = [backoff.next_delay() for _ in range(5)]
    bases = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(0.5 * b <= d <= 1.5 * b for d, b in zip(delays, bases))
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.5
    with pytest.raises(ValueError):
        Backoff(0, 1)


@pytest.mark.parametrize(
    "code,details",
    [
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "this peer already has 3 open /slperf.v1.Session/Connect calls, the limit (--max-streams-per-client) is "
            "reached",
        ),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the server has 288 open /slperf.v1.Session/Connect calls, the limit is reached",
        ),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello within 5 s"),
    ],
)
def test_the_servers_stream_open_limits_are_retried_not_final(code, details):
    """The server's own texts for a stream refused at open (per-certificate or total stream limit) and for a
    Hello that came too late: the client backs off and tries again (the daemon test checks the delays grow)."""
    assert classify(code, details, welcomed=False) == Verdict.RETRY
    assert classify(code, details, welcomed=True) == Verdict.RETRY
