"""Identity over mutual TLS with real daemons: a foreign CA, a stolen id and a plaintext client are all
refused with a clear reason, the refused daemon exits non-zero instead of retrying forever, and a
malformed tensor is answered with INVALID_ARGUMENT while the run goes on."""

from __future__ import annotations

import grpc
import pytest
import yaml
from pki_helpers import make_expired_client, make_foreign_client

from slperf.common.security.credentials import (
    channel_credentials,
    client_channel_credentials,
    operator_channel_credentials,
)
from slperf.common.security.layout import ca_paths
from slperf.common.transport.channel import grpc_options
from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.operator import OperatorClient
from slperf.pki import revoke
from slperf.v1 import service_pb2, service_pb2_grpc, session_pb2, tensor_pb2

pytestmark = pytest.mark.slow


def _wait_exit(proc, timeout=60) -> int:
    return proc.wait(timeout=timeout)


def test_client_claiming_another_id_is_refused_and_exits(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    proc = daemons.client(port, "c2", pki, cert_id="c1", log_name="thief")
    assert _wait_exit(proc) != 0
    log = daemons.log("thief")
    assert "PERMISSION_DENIED" in log and "does not match" in log


def test_client_with_certificate_from_another_ca_is_refused_and_exits(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    _, cert, key = make_foreign_client(tmp_path / "foreign", "c1")
    proc = daemons.client(
        port,
        "c1",
        None,
        "--ca",
        str(ca_paths(pki)[0]),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--server-name",
        "localhost",
        log_name="foreign",
    )
    assert _wait_exit(proc) != 0
    assert "TLS handshake" in daemons.log("foreign")


def test_plaintext_client_against_tls_server_is_refused_and_exits(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    proc = daemons.client(port, "c1", None, "--insecure", log_name="plain")
    assert _wait_exit(proc) != 0
    assert "error:" in daemons.log("plain")


def test_raw_channel_with_foreign_certificate_gets_unavailable(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    _, cert, key = make_foreign_client(tmp_path / "foreign", "c1")
    creds = channel_credentials(ca_paths(pki)[0], cert, key)
    with grpc.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        stub = service_pb2_grpc.ControlStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Status(service_pb2.StatusRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_cannot_use_control(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    op = OperatorClient(f"127.0.0.1:{port}", client_channel_credentials(pki, "c1"), server_name="localhost")
    with pytest.raises(grpc.RpcError) as info:
        op.status()
    op.close()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_tensor_gets_invalid_argument_while_the_run_goes_on(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    daemons.client(port, "c1", pki)
    daemons.client(port, "c2", pki)
    config = {
        "paradigm": "splitfed_v1",
        "clients": 2,
        "client_ids": ["c1", "c2"],
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "max_train_samples": 600,
        "max_test_samples": 300,
    }
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    run_id = op.start_run(yaml.safe_dump(config))

    # A third, authenticated client (c3) sends garbage on its own session during the run.
    with grpc.secure_channel(
        f"127.0.0.1:{port}",
        client_channel_credentials(pki, "c3"),
        options=grpc_options() + [("grpc.ssl_target_name_override", "localhost")],
    ) as channel:
        stub = service_pb2_grpc.SplitLearningStub(channel)
        bad = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2, 6, 12, 12], data=b"\x00" * 17)
        messages = [
            session_pb2.ClientMessage(
                seq=1, hello=session_pb2.Hello(protocol_version=PROTOCOL_VERSION, client_id="c3")
            ),
            session_pb2.ClientMessage(
                seq=2,
                cut_tensor=session_pb2.CutTensor(
                    ref=session_pb2.StepRef(run_id=run_id, round=0, step=0, phase=session_pb2.PHASE_TRAIN), tensor=bad
                ),
            ),
        ]
        call = stub.Session(iter(messages), timeout=30)
        replies = []
        for reply in call:
            replies.append(reply)
            if reply.WhichOneof("body") == "error":
                break
        call.cancel()
    assert replies[0].WhichOneof("body") == "welcome"
    error = replies[-1].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "17 bytes" in error.message

    status = op.follow(run_id, lambda record: None)
    op.close()
    assert status.state == "finished", status.error


def test_revoked_client_is_refused_with_unauthenticated_and_exits(tmp_path, pki, daemons):
    revoke(pki, "c2")
    port = daemons.server(pki, tmp_path / "runs")
    proc = daemons.client(port, "c2", pki, log_name="revoked")
    assert _wait_exit(proc) != 0
    log = daemons.log("revoked")
    assert "UNAUTHENTICATED" in log and "revoked" in log


def test_expired_certificate_is_refused_in_the_handshake_and_the_client_exits(tmp_path, pki, daemons):
    make_expired_client(pki, "c3", overwrite=True)
    port = daemons.server(pki, tmp_path / "runs")
    proc = daemons.client(port, "c3", pki, log_name="expired")
    assert _wait_exit(proc) != 0
    assert "TLS handshake" in daemons.log("expired")


def test_client_outside_the_allowed_list_is_refused(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs", "--allowed-clients", "c1,c2")
    proc = daemons.client(port, "c3", pki, log_name="outsider")
    assert _wait_exit(proc) != 0
    log = daemons.log("outsider")
    assert "PERMISSION_DENIED" in log and "allowed" in log


def test_no_secret_reaches_the_logs(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    daemons.client(port, "c2", pki, cert_id="c1", log_name="thief")
    _wait_exit(daemons.procs[-1])
    for name in ("server", "thief"):
        text = daemons.log(name)
        assert "PRIVATE KEY" not in text and "BEGIN" not in text
