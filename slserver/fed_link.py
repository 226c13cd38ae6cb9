"""The main server's client of the run's fed server (``fed_server:``): round declarations, never weights.

It dials the fed server with the main server's certificate towards it (``server_client.pem``, clientAuth) and
verifies the fed server's own name (``slperf-fedserver``) whatever address the config gives, so no other party can
stand in for it. Every call is bounded by the run's ``client_timeout``; a fed server that cannot be reached fails
the round with an error that names it (the clients could not average either).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from slperf.common.config import RunConfig, fed_server_address
from slperf.common.paradigms.kit.cuts import state_layout_of
from slperf.common.protocol.exchange import SegmentLayout
from slperf.common.protocol.types import State
from slperf.common.security.credentials import channel_credentials
from slperf.common.security.layout import FEDSERVER_TLS_NAME, ca_paths, server_client_paths
from slperf.common.transport.channel import create_channel
from slperf.common.wire.serde import segment_layout_to_pb
from slperf.v1 import fedserver_pb2

DECLARE_METHOD = "/slperf.v1.FedAggregation/DeclareRound"


class FedServerUnavailable(Exception):
    """The fed server refused a declaration or could not be reached; the message says which and why."""


class GrpcFedServerLink:
    def __init__(self, config: RunConfig, run_id: str, certs_dir: Path | None):
        address = fed_server_address(config)
        assert address is not None
        if certs_dir is None:
            raise FedServerUnavailable("a fed server needs mutual TLS: start the server with --certs, not --insecure")
        cert, key = server_client_paths(certs_dir)
        credentials = channel_credentials(ca_paths(certs_dir)[0], cert, key)
        self.address = address
        self._config = config
        self._run_id = run_id
        self._channel = create_channel(address, credentials, server_name=FEDSERVER_TLS_NAME)
        self._declare = self._channel.unary_unary(
            DECLARE_METHOD,
            request_serializer=fedserver_pb2.DeclareRoundRequest.SerializeToString,
            response_deserializer=fedserver_pb2.DeclareRoundResponse.FromString,
        )

    async def _call(self, request: fedserver_pb2.DeclareRoundRequest) -> fedserver_pb2.DeclareRoundResponse:
        try:
            response: fedserver_pb2.DeclareRoundResponse = await self._declare(
                request, timeout=self._config.client_timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as err:
            raise FedServerUnavailable(
                f"the fed server at {self.address} answered round {request.round}'s declaration with "
                f"{err.code().name}: {err.details()}"
            ) from None
        return response

    async def open_round(self, round: int, segment: str, participants: Sequence[str], layout: State) -> None:
        await self._call(
            fedserver_pb2.DeclareRoundRequest(
                run_id=self._run_id,
                round=round,
                segment=segment,
                layout=segment_layout_to_pb(SegmentLayout(segment, state_layout_of(layout))),
                aggregation=self._config.aggregation or "",
                trim_fraction=self._config.trim_fraction or 0.0,
                participants={cid: 0 for cid in participants},
            )
        )

    async def settle_round(self, round: int, segment: str, samples: Mapping[str, int]) -> list[str]:
        response = await self._call(
            fedserver_pb2.DeclareRoundRequest(
                run_id=self._run_id, round=round, segment=segment, participants=dict(samples), settle=True
            )
        )
        return list(response.averaged)

    async def close(self) -> None:
        await self._channel.close()
