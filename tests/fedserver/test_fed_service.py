"""The fed server's service over real gRPC and mutual TLS, in this process: uploads and fetches from client
certificates, declarations from the main server's. The fetch is what once failed on every call (its request could not
be encoded as a client message), so it is exercised here through the real wire, with a bad upload refused to its
sender alone, an outsider refused the average, and a client refused the main server's declarations."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import torch

from slperf.common.config import RunConfig
from slperf.common.security.credentials import channel_credentials
from slperf.common.security.layout import ca_paths, client_paths, server_client_paths
from slperf.fedserver.aggregator import FedAggregator
from slperf.fedserver.server import fed_server_credentials
from slperf.fedserver.service import FedService, add_fed_services
from slperf.pki import add_client, add_fedserver, init_pki
from slperf.slclient.fed_client import FedClient, FedRefused
from slperf.slserver.fed_link import FedServerUnavailable, GrpcFedServerLink

RUN = "run-1"


def bottom(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 2), value), "b": torch.full((3,), value)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    init_pki(d)
    for cid in ("a", "b", "outsider"):
        add_client(d, cid)
    add_fedserver(d)
    return d


async def _serve(certs: Path, settled: list[tuple[int, list[str], list[str]]]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    add_fed_services(server, FedService(FedAggregator(), on_settle=lambda _run, r, a, m: settled.append((r, a, m))))
    port = server.add_secure_port("127.0.0.1:0", fed_server_credentials(certs))
    await server.start()
    return server, port


def _client(certs: Path, cid: str, port: int) -> FedClient:
    cert, key = client_paths(certs, cid)
    return FedClient(f"127.0.0.1:{port}", channel_credentials(ca_paths(certs)[0], cert, key), cid, timeout=30)


def test_uploads_fetches_and_refusals_over_mutual_tls(certs):
    async def scenario() -> None:
        settled: list[tuple[int, list[str], list[str]]] = []
        server, port = await _serve(certs, settled)
        link = GrpcFedServerLink(RunConfig(fed_server={"address": f"127.0.0.1:{port}"}), RUN, certs)
        a, b, outsider = (_client(certs, cid, port) for cid in ("a", "b", "outsider"))
        try:
            assert await a.fetch(RUN, 0, "bottom") is None  # nothing declared yet: no average, keep its own
            await link.open_round(0, "bottom", ["a", "b"], bottom(0.0))
            await a.upload(RUN, 0, "bottom", bottom(2.0), samples=10)
            with pytest.raises(FedRefused) as bad:  # NaN weights: refused (by the wire's tensor checks) to b alone
                await b.upload(RUN, 0, "bottom", bottom(float("nan")), samples=10)
            assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "non-finite" in str(bad.value)
            with pytest.raises(FedRefused) as early:
                await a.fetch(RUN, 0, "bottom")
            assert early.value.code == grpc.StatusCode.FAILED_PRECONDITION  # round 0 is not settled yet

            assert await link.settle_round(0, "bottom", {"a": 10, "b": 10}) == ["a"]
            assert settled == [(0, ["a"], ["b"])]
            for client in (a, b):  # b continues from the average of the others
                average = await client.fetch(RUN, 0, "bottom")
                assert average is not None
                torch.testing.assert_close(average["w"], torch.full((3, 2), 2.0))
            with pytest.raises(FedRefused) as stranger:
                await outsider.fetch(RUN, 0, "bottom")
            assert stranger.value.code == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await link.close()
            await server.stop(grace=None)

    asyncio.run(scenario())


def test_a_client_certificate_cannot_declare_rounds(certs, tmp_path):
    async def scenario() -> None:
        server, port = await _serve(certs, [])
        # A certificates folder whose server_client.pem is really client a's: the fed server must refuse it.
        fake = tmp_path / "fake"
        fake.mkdir()
        (fake / "ca.pem").write_bytes(ca_paths(certs)[0].read_bytes())
        cert, key = client_paths(certs, "a")
        fake_cert, fake_key = (Path(p) for p in server_client_paths(fake))
        fake_cert.parent.mkdir(parents=True, exist_ok=True)
        fake_cert.write_bytes(cert.read_bytes())
        fake_key.write_bytes(key.read_bytes())
        link = GrpcFedServerLink(RunConfig(fed_server={"address": f"127.0.0.1:{port}"}), RUN, fake)
        try:
            with pytest.raises(FedServerUnavailable, match="PERMISSION_DENIED"):
                await link.open_round(0, "bottom", ["a"], bottom(0.0))
        finally:
            await link.close()
            await server.stop(grace=None)

    asyncio.run(scenario())
