"""Bad input at the command line: one clear line naming the fix, exit code 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def slperf(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slperf.cli", *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_certificates_folder(tmp_path):
    assert_one_line_error(
        slperf("server", "--certs", str(tmp_path / "nowhere"), "--address", "127.0.0.1:0"),
        "not found",
        "slperf certs init",
    )


def test_server_without_certs_or_insecure():
    assert_one_line_error(slperf("server", "--address", "127.0.0.1:0"), "--certs", "--insecure")


@pytest.mark.slow
def test_port_in_use(tmp_path, pki):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = slperf("server", "--certs", str(pki), "--address", f"127.0.0.1:{port}", "--runs-dir", str(tmp_path))
    assert_one_line_error(proc, "in use", "--address")


def test_client_with_missing_key(tmp_path, pki):
    proc = slperf(
        "client",
        "--server",
        "127.0.0.1:1",
        "--id",
        "c1",
        "--ca",
        str(pki / "ca.pem"),
        "--cert",
        str(pki / "clients" / "c1.pem"),
        "--key",
        str(tmp_path / "missing.key"),
    )
    assert_one_line_error(proc, "missing.key")


def test_client_without_credentials_is_told_what_to_pass():
    assert_one_line_error(slperf("client", "--server", "127.0.0.1:1", "--id", "c1"), "--ca", "--cert", "--key")


def test_bad_client_id():
    assert_one_line_error(slperf("client", "--server", "127.0.0.1:1", "--id", "bad id!", "--insecure"), "bad id!")


def test_dataset_that_is_not_there(tmp_path):
    assert_one_line_error(slperf("data", "prepare", "mnist", "--data-dir", str(tmp_path)), "MNIST", "data_dir")


def test_unknown_dataset():
    assert_one_line_error(slperf("data", "prepare", "imagenet-22k"), "imagenet-22k")


def test_config_check_names_the_bad_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: many\n")
    assert_one_line_error(slperf("config", "check", str(path)), "'epochs'")
