"""slperf.healthcheck: the container health check through the server's gRPC health service."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from slperf.common.security.layout import ca_paths, client_paths
from slperf.healthcheck import credentials_for, health
from slperf.pki import init_pki


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invoke(*args: str):
    return CliRunner().invoke(health, list(args), catch_exceptions=False)


# -- fast: arguments and failures that need no server ---------------------------------------------------------------
def test_credentials_need_a_ca_or_insecure():
    with pytest.raises(ValueError, match="--certs DIR"):
        credentials_for(certs_dir=None, ca=None, cert=None, key=None, insecure=False)
    with pytest.raises(ValueError, match="--insecure takes no certificate"):
        credentials_for(certs_dir=None, ca="ca.pem", cert=None, key=None, insecure=True)
    assert credentials_for(certs_dir=None, ca=None, cert=None, key=None, insecure=True) is None


def test_cert_without_key_is_refused(pki):
    cert, _ = client_paths(pki, "c1")
    result = invoke("--ca", str(ca_paths(pki)[0]), "--cert", str(cert))
    assert result.exit_code == 1
    assert "--cert and --key go together" in result.output


def test_missing_certificates_folder_is_one_line_and_unhealthy(tmp_path):
    result = invoke("--server", "127.0.0.1:1", "--certs", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UNHEALTHY") and "slperf certs init" in lines[0], result.output
    assert "Traceback" not in result.output


def test_nothing_listening_is_unhealthy_and_quick(pki):
    result = invoke("--server", f"127.0.0.1:{_free_port()}", "--certs", str(pki), "--timeout", "3")
    assert result.exit_code == 1
    assert result.output.startswith("UNAVAILABLE") and "server down or unreachable" in result.output


def test_environment_variables_supply_the_options(pki, monkeypatch):
    monkeypatch.setenv("SLPERF_HEALTH_SERVER", f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv("SLPERF_HEALTH_CERTS", str(pki))
    result = invoke("--timeout", "2")
    assert result.exit_code == 1 and "UNAVAILABLE 127.0.0.1:" in result.output


def test_usage_errors_exit_2():
    assert invoke("--bogus").exit_code == 2


# -- slow: against a real server ---------------------------------------------------------------------------------------
def healthcheck(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slperf.healthcheck", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_against_a_mutual_tls_server(daemons, pki, tmp_path):
    port = daemons.server(pki, tmp_path / "runs")
    address = f"127.0.0.1:{port}"
    # The operator pair from a certificates folder, and a client's own pair: SERVING, exit 0.
    ok = healthcheck("--server", address, "--certs", str(pki))
    assert ok.returncode == 0 and ok.stdout.startswith(f"SERVING {address}"), ok.stdout + ok.stderr
    cert, key = client_paths(pki, "c2")
    ok = healthcheck(
        "--server",
        f"localhost:{port}",
        "--ca",
        str(ca_paths(pki)[0]),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--service",
        "slperf.v1.SplitLearning",
        "--quiet",
    )
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout + ok.stderr
    # Without a client certificate the server refuses the handshake.
    refused = healthcheck("--server", address, "--ca", str(ca_paths(pki)[0]), "--timeout", "3")
    assert refused.returncode == 1 and refused.stderr.startswith("UNAVAILABLE"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    # A certificate from another CA, a wrong server name, plaintext against TLS: unhealthy with the reason.
    foreign = tmp_path / "foreign"
    init_pki(foreign)
    bad = healthcheck("--server", address, "--certs", str(foreign), "--timeout", "3")
    assert bad.returncode == 1 and "UNAVAILABLE" in bad.stderr
    bad = healthcheck("--server", address, "--certs", str(pki), "--server-name", "elsewhere.example", "--timeout", "3")
    assert bad.returncode == 1 and "UNAVAILABLE" in bad.stderr
    bad = healthcheck("--server", address, "--insecure", "--timeout", "3")
    assert bad.returncode == 1
    # A service the server does not report.
    unknown = healthcheck("--server", address, "--certs", str(pki), "--service", "no.such.Service")
    assert unknown.returncode == 1 and unknown.stderr.startswith("NOT_FOUND"), unknown.stderr


@pytest.mark.slow
def test_against_a_plaintext_server(daemons, tmp_path):
    port = daemons.server(None, tmp_path / "runs")
    ok = healthcheck("--server", f"127.0.0.1:{port}", "--insecure")
    assert ok.returncode == 0 and ok.stdout.startswith("SERVING"), ok.stdout + ok.stderr
