"""The client daemon's run set-up: a reconnect to the same run keeps the training state it holds."""

from __future__ import annotations

import asyncio

from slperf.common.config_loader import config_from_mapping
from slperf.common.paradigms import registry as paradigms
from slperf.common.protocol.messages import Ready, RunSetup
from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.slclient import daemon
from slperf.slclient.daemon import ClientDaemon, ClientOptions


class _Link:
    def __init__(self) -> None:
        self.sent: list[object] = []

    async def send(self, message) -> None:
        self.sent.append(message)


def _setup(run_id: str, seed: int = 0) -> RunSetup:
    config, _ = config_from_mapping(
        {
            "paradigm": "vanilla",
            "dataset": "mnist",
            "clients": 1,
            "epochs": 1,
            "max_train_samples": 64,
            "max_test_samples": 32,
            "seed": seed,
        }
    )
    exchange = paradigms.get(config.paradigm).exchange(config, 0)
    return RunSetup(run_id=run_id, config_json=config.to_json(), client_index=0, num_clients=1, exchange=exchange)


def test_a_reconnect_to_the_same_run_keeps_the_paradigm_and_a_new_run_builds_a_fresh_one(monkeypatch):
    built = []
    real = daemon.build_client_data
    monkeypatch.setattr(daemon, "build_client_data", lambda *args: built.append(args) or real(*args))
    client = ClientDaemon(ClientOptions(server="unused:1", client_id="c1", credentials=None))
    link = _Link()

    asyncio.run(client._setup(link, _setup("r1")))
    first = client.paradigm
    assert first is not None and len(built) == 1
    asyncio.run(client._setup(link, _setup("r1")))  # the session dropped and the server set it up again
    assert client.paradigm is first and len(built) == 1

    asyncio.run(client._setup(link, _setup("r1", seed=1)))  # same run id, another config: built afresh
    assert client.paradigm is not first and len(built) == 2
    asyncio.run(client._setup(link, _setup("r2", seed=1)))
    assert len(built) == 3
    assert all(isinstance(m, Ready) for m in link.sent) and len(link.sent) == 4
    assert all(m.train_samples == 64 for m in link.sent)


def test_the_link_checks_every_reply_against_the_exchange_as_strictly_as_the_server_checks_requests():
    import grpc
    import pytest
    import torch

    from slperf.common.paradigms import registry
    from slperf.common.protocol.types import CutReply, Phase, StepRef
    from slperf.common.transport.endpoint import Endpoint, Side
    from slperf.slclient.daemon import ServerError, SessionLink
    from slperf.v1 import session_pb2
    from tests.slserver.streams import QueueStream

    config, _ = config_from_mapping({"paradigm": "vanilla", "clients": 1, "batch_size": 4})
    exchange = registry.get("vanilla").exchange(config, 0)
    cut = exchange.train[0].up.sample_shape

    async def main():
        up, down = asyncio.Queue(), asyncio.Queue()
        link = SessionLink(QueueStream(down, up, session_pb2.ClientMessage), run_id="r", exchange=exchange)
        server = Endpoint(QueueStream(up, down, session_pb2.ServerMessage), Side.SERVER)
        good, short = StepRef("r", 0, 0, Phase.TRAIN), StepRef("r", 0, 1, Phase.TRAIN)
        await link.send_cut_tensor(good, torch.zeros(4, *cut), labels=torch.zeros(4, dtype=torch.int64))
        await server.send(CutReply(good, torch.ones(4, *cut), 0.5, 2, 4))
        assert (await link.recv_reply(good)).correct == 2
        await link.send_cut_tensor(short, torch.zeros(4, *cut), labels=torch.zeros(4, dtype=torch.int64))
        await server.send(CutReply(short, torch.ones(3, *cut)))  # a gradient for 3 samples, not the 4 sent
        with pytest.raises(ServerError) as caught:
            await link.recv_reply(short)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "expected 4" in str(caught.value)
        with pytest.raises(ServerError, match="no cut tensor"):
            await link.recv_reply(StepRef("r", 0, 7, Phase.TRAIN))  # nothing was sent for it

    asyncio.run(main())


# -- connection policy: a scripted server on the other end of real SessionLinks ------------------------------------
# The texts are those grpcio reported against a real `slperf server` (see slperf.slclient.reconnect).
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: "
    "Connection refused"
)
KILLED = "Stream removed (recvmsg:Connection reset by peer (104))"
CERT_REFUSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
PROXY_CLOSED = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: "
    "Handshake read failed (Socket closed)"
)


class _ScriptDone(Exception):
    """The scripted server has no more sessions: the daemon was still trying to reconnect."""


def _welcome_envelope():
    from slperf.common.protocol.messages import Welcome
    from slperf.common.transport.endpoint import Endpoint, Side
    from slperf.v1 import session_pb2
    from tests.slserver.streams import QueueStream

    async def make():
        out: asyncio.Queue = asyncio.Queue()
        server = Endpoint(QueueStream(asyncio.Queue(), out, session_pb2.ServerMessage), Side.SERVER)
        await server.send(Welcome(PROTOCOL_VERSION, "s", 1 << 30, 1 << 20, 8 << 20, 1 << 28, 8, 5000.0, 10000, 60.0))
        return out.get_nowait()

    return asyncio.run(make())


class _ScriptedCall:
    """One session as grpc.aio's StreamStreamCall behaves: ``read`` gives the scripted envelopes, then raises the
    scripted error or returns EOF (status from ``code()``/``details()``); like the real call it is not awaitable."""

    def __init__(self, reads: list, error=None, status=None):
        import grpc

        self.reads = list(reads)
        self.error = error
        self.status = status or (grpc.StatusCode.OK, "")

    async def write(self, envelope) -> None:
        pass

    async def done_writing(self) -> None:
        pass

    async def read(self):
        import grpc

        if self.reads:
            return self.reads.pop(0)
        if self.error is not None:
            raise self.error
        return grpc.aio.EOF

    async def code(self):
        return self.status[0]

    async def details(self):
        return self.status[1]


class _Channel:
    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        pass


def _rpc_error(code, details):
    import grpc

    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def _serve_script(monkeypatch, calls: list) -> list:
    """Each connection attempt of the daemon gets the next call of ``calls``; returns the list of those served."""
    served: list = []

    def open_session(channel):
        if not calls:
            raise _ScriptDone
        served.append(calls.pop(0))
        return served[-1]

    monkeypatch.setattr(daemon, "create_channel", lambda *args, **kwargs: _Channel())
    monkeypatch.setattr(daemon, "open_session", open_session)
    return served


def _daemon() -> ClientDaemon:
    return ClientDaemon(
        ClientOptions(server="unused:1", client_id="c1", credentials=None, backoff_initial=0.001, backoff_max=0.002)
    )


def test_server_killed_and_stopped_ten_times_each_never_stops_the_daemon(monkeypatch):
    import grpc
    import pytest

    welcome = _welcome_envelope()
    unavailable = grpc.StatusCode.UNAVAILABLE
    calls = []
    for _ in range(10):
        calls.append(_ScriptedCall([welcome], error=_rpc_error(unavailable, KILLED)))  # SIGKILL mid-session
        calls += [_ScriptedCall([], error=_rpc_error(unavailable, REFUSED)) for _ in range(3)]  # server down
        calls.append(_ScriptedCall([welcome]))  # SIGTERM: the stream ends with status OK
        calls.append(_ScriptedCall([], error=_rpc_error(unavailable, PROXY_CLOSED)))  # a proxy, no backend
        calls += [_ScriptedCall([], error=_rpc_error(unavailable, CERT_REFUSED)) for _ in range(2)]  # dying server
    total = len(calls)
    served = _serve_script(monkeypatch, calls)
    with pytest.raises(_ScriptDone):  # it was still reconnecting when the script ran out
        asyncio.run(_daemon().run_forever())
    assert len(served) == total


def test_ten_server_kills_in_a_row_never_stop_the_daemon(monkeypatch):
    """Before: a reset after Welcome counted as a refused certificate, and the third restart ended the daemon."""
    import grpc
    import pytest

    welcome = _welcome_envelope()
    calls = [_ScriptedCall([welcome], error=_rpc_error(grpc.StatusCode.UNAVAILABLE, KILLED)) for _ in range(10)]
    served = _serve_script(monkeypatch, calls)
    with pytest.raises(_ScriptDone):
        asyncio.run(_daemon().run_forever())
    assert len(served) == 10


def test_a_graceful_server_stop_is_a_normal_end_of_the_session(monkeypatch):
    """Before: ``await call`` after EOF raised TypeError (a stream call is not awaitable) and crashed the daemon."""
    import pytest

    served = _serve_script(monkeypatch, [_ScriptedCall([_welcome_envelope()])])
    with pytest.raises(_ScriptDone):
        asyncio.run(_daemon().run_forever())
    assert len(served) == 1


def test_a_certificate_refused_in_the_handshake_stops_the_daemon_after_three_attempts_in_a_row(monkeypatch):
    import grpc
    import pytest

    from slperf.slclient.daemon import ClientFatal

    unavailable = grpc.StatusCode.UNAVAILABLE
    calls = [_ScriptedCall([], error=_rpc_error(unavailable, CERT_REFUSED)) for _ in range(2)]
    calls.append(_ScriptedCall([], error=_rpc_error(unavailable, REFUSED)))  # not a refusal: the count restarts
    calls += [_ScriptedCall([], error=_rpc_error(unavailable, CERT_REFUSED)) for _ in range(3)]
    calls.append(_ScriptedCall([], error=_rpc_error(unavailable, REFUSED)))  # never reached
    served = _serve_script(monkeypatch, calls)
    with pytest.raises(ClientFatal, match="TLS handshake .* refused 3 times"):
        asyncio.run(_daemon().run_forever())
    assert len(served) == 6


def test_an_identity_refusal_stops_the_daemon_at_once_and_a_refusal_after_welcome_too(monkeypatch):
    import grpc
    import pytest

    from slperf.slclient.daemon import ClientFatal

    denied = _rpc_error(grpc.StatusCode.PERMISSION_DENIED, "client id 'c1' does not match the certificate's")
    _serve_script(monkeypatch, [_ScriptedCall([], error=denied)])
    with pytest.raises(ClientFatal, match="PERMISSION_DENIED"):
        asyncio.run(_daemon().run_forever())
    revoked = (grpc.StatusCode.UNAUTHENTICATED, "client 'c1' has been revoked")
    _serve_script(monkeypatch, [_ScriptedCall([_welcome_envelope()], status=revoked)])  # ended after Welcome
    with pytest.raises(ClientFatal, match="revoked"):
        asyncio.run(_daemon().run_forever())


def test_a_hello_error_after_welcome_is_not_final(monkeypatch):
    """FAILED_PRECONDITION/INVALID_ARGUMENT answer a Hello (version, id) only before Welcome; after it they are
    about one message, and the daemon reconnects."""
    import grpc
    import pytest

    status = (grpc.StatusCode.INVALID_ARGUMENT, "bad envelope")
    served = _serve_script(monkeypatch, [_ScriptedCall([_welcome_envelope()], status=status)])
    with pytest.raises(_ScriptDone):
        asyncio.run(_daemon().run_forever())
    assert len(served) == 1


# -- --data-dir: the silo's own data folder wins over the run config's ------------------------------------------
def _setup_naming(run_id: str, data_dir: str, dataset: str = "mnist") -> RunSetup:
    config, _ = config_from_mapping(
        {
            "paradigm": "vanilla",
            "dataset": dataset,
            "data_dir": data_dir,
            "download": True,  # SLPerf's key: a folder without the set is filled from the pinned copy
            "clients": 1,
            "epochs": 1,
            "max_train_samples": 64,
            "max_test_samples": 32,
        }
    )
    exchange = paradigms.get(config.paradigm).exchange(config, 0)
    return RunSetup(run_id=run_id, config_json=config.to_json(), client_index=0, num_clients=1, exchange=exchange)


def test_a_pinned_data_dir_wins_over_the_folder_the_run_config_names(tmp_path, monkeypatch, caplog):
    import logging

    read = []
    real = daemon.build_client_data
    monkeypatch.setattr(daemon, "build_client_data", lambda config, *rest: read.append(config) or real(config, *rest))
    own, elsewhere = tmp_path / "silo-data", tmp_path / "server-named"
    client = ClientDaemon(ClientOptions(server="unused:1", client_id="c1", credentials=None, data_dir=own))
    link = _Link()
    with caplog.at_level(logging.INFO, logger="slperf.client"):
        asyncio.run(client._setup(link, _setup_naming("r1", str(elsewhere))))
        asyncio.run(client._setup(link, _setup_naming("r1", str(elsewhere))))  # a rejoin: nothing read or logged
    assert [type(m) for m in link.sent] == [Ready, Ready] and link.sent[0].train_samples == 64
    assert [c.data_dir for c in read] == [str(own)]
    assert any(p.name.startswith("train-images") for p in own.iterdir())  # the set was read from (filled into) it
    assert not elsewhere.exists()  # the folder the server named was never touched
    overrides = [r.getMessage() for r in caplog.records if "--data-dir" in r.getMessage()]
    assert overrides == [
        f"data set mnist: reading this silo's --data-dir {own}, not the run config's data_dir {str(elsewhere)!r}"
    ]


def test_without_a_pin_the_run_config_folder_is_read_and_a_generated_set_reads_none(tmp_path):
    from slperf.common.config_loader import config_from_json

    named = config_from_json(_setup_naming("r", str(tmp_path / "named")).config_json)
    assert daemon.pin_data_dir(named, None) is named
    assert daemon.pin_data_dir(named, tmp_path / "own").data_dir == str(tmp_path / "own")
    generated = config_from_json(_setup_naming("r", str(tmp_path / "named"), dataset="cifar10-synthetic").config_json)
    assert daemon.pin_data_dir(generated, tmp_path / "own").data_dir is None


def test_a_stream_refused_at_open_for_exhaustion_or_a_missed_hello_deadline_backs_off_and_retries(monkeypatch):
    """The server refuses a 4th stream of one certificate with RESOURCE_EXHAUSTED before any Welcome, and ends a
    stream that said no Hello in time with DEADLINE_EXCEEDED: neither is a refusal of who the client is. The
    daemon neither exits nor reconnects at once: every such attempt waits a longer backoff than the one before
    (up to the maximum), and a session that reaches Welcome starts the delays over."""
    import grpc
    import pytest

    exhausted = _rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "this peer already has 3 open /slperf.v1.Session/Connect calls, the limit (--max-streams-per-client) is "
        "reached",
    )
    late = _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello within 5 s")
    calls = [_ScriptedCall([], error=exhausted) for _ in range(4)] + [_ScriptedCall([], error=late)]
    calls.append(_ScriptedCall([_welcome_envelope()], error=_rpc_error(grpc.StatusCode.UNAVAILABLE, KILLED)))
    calls.append(_ScriptedCall([], error=exhausted))
    served = _serve_script(monkeypatch, calls)
    waits: list[float] = []

    class Recorded(daemon.Backoff):
        def next_delay(self) -> float:
            waits.append(self._next)  # the delay before jitter
            super().next_delay()
            return 0.0

    monkeypatch.setattr(daemon, "Backoff", Recorded)
    client = ClientDaemon(
        ClientOptions(server="unused:1", client_id="c1", credentials=None, backoff_initial=1.0, backoff_max=8.0)
    )
    with pytest.raises(_ScriptDone):  # still retrying when the script ran out: it never gave up
        asyncio.run(client.run_forever())
    assert len(served) == 7
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 1.0, 2.0]
