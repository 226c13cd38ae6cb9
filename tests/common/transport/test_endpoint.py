"""The session endpoint both daemons use, over an in-memory stream pair (no gRPC, the real serializers)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch

from slperf.common.protocol.errors import WireError
from slperf.common.protocol.messages import ErrorReport, Ready, Welcome
from slperf.common.protocol.types import CutReply, CutTensor, Phase, StepRef
from slperf.common.transport.channel import Malformed, envelope_parser, serialize_envelope
from slperf.common.transport.endpoint import Endpoint, Side, observe_endpoints
from slperf.common.wire.codec import BULK_MIN_BYTES
from slperf.v1 import session_pb2

REF = StepRef("run", 0, 3, Phase.TRAIN)


class _Half:
    """One direction of a stream: what one side writes, serialised and parsed as gRPC would, the other reads."""

    def __init__(self, incoming: asyncio.Queue, outgoing: asyncio.Queue, peer_type):
        self.incoming, self.outgoing, self._parse = incoming, outgoing, envelope_parser(peer_type)

    async def write(self, envelope) -> None:
        await self.outgoing.put(self._parse(serialize_envelope(envelope)))

    async def read(self):
        return await self.incoming.get()


def _pair(**server_kwargs):
    up, down = asyncio.Queue(), asyncio.Queue()
    client = Endpoint(_Half(down, up, session_pb2.ClientMessage), Side.CLIENT, name="c1")
    server = Endpoint(_Half(up, down, session_pb2.ServerMessage), Side.SERVER, name="c1", **server_kwargs)
    return client, server, up


def test_messages_cross_decoded_with_equal_byte_counts_on_both_ends():
    async def main():
        client, server, _ = _pair()
        acts = torch.randn(3, BULK_MIN_BYTES // 4 // 3 + 11)  # an attachment, in chunks
        await client.send(CutTensor(REF, acts, labels=torch.tensor([0, 1, 2])))
        got = await server.receive()
        assert isinstance(got, CutTensor) and torch.equal(got.tensor, acts) and got.ref == REF
        await server.send(CutReply(REF, torch.ones(3, 2), loss=1.5, correct=2, count=3))
        reply = await client.receive()
        assert isinstance(reply, CutReply) and (reply.loss, reply.correct, reply.count) == (1.5, 2, 3)
        for side in (client, server):
            assert side.counter.up > acts.numel() * 4 and side.counter.down > 0
        assert (client.counter.up, client.counter.down) == (server.counter.up, server.counter.down)
        assert client.counter.messages_up == server.counter.messages_up > 1  # chunked

    asyncio.run(main())


def test_a_bad_message_raises_and_the_stream_goes_on():
    async def main():
        client, server, up = _pair()
        await up.put(Malformed(12, "12 bytes do not parse as slperf.v1.ClientMessage"))
        with pytest.raises(WireError) as caught:
            await server.receive()
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and server.counter.up == 12
        await up.put(session_pb2.ClientMessage(seq=1, phase_done=session_pb2.PhaseDone(num_samples=1)))
        with pytest.raises(WireError, match="no step ref"):
            await server.receive()
        await client.send(Ready("run", 5, 6))
        # the client's framer started at seq 1 too, which the server has now seen: replay protection refuses it
        with pytest.raises(WireError, match="seq"):
            await server.receive()
        await client.send(Ready("run", 5, 6))
        assert await server.receive() == Ready("run", 5, 6)
        await up.put(grpc.aio.EOF)
        assert await server.receive() is None

    asyncio.run(main())


def test_admit_refuses_before_anything_is_parsed_and_errors_keep_their_status_code():
    refused = []

    def admit() -> None:
        if not refused:
            refused.append(True)
            raise WireError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")

    async def main():
        client, server, _ = _pair(admit=admit)
        await client.send(Ready("run", 1, 1))
        with pytest.raises(WireError, match="slow down"):
            await server.receive()
        await client.send(Ready("run", 2, 2))
        assert await server.receive() == Ready("run", 2, 2)
        await server.send_error(grpc.StatusCode.ABORTED, "stop this pass")
        assert await client.receive() == ErrorReport(grpc.StatusCode.ABORTED, "stop this pass")

    asyncio.run(main())


def test_observers_see_every_endpoint_until_they_unsubscribe():
    seen = []
    stop = observe_endpoints(seen.append)
    try:
        client, server, _ = _pair()
        assert seen == [client, server]
    finally:
        stop()
    _pair()
    assert len(seen) == 2


def test_reading_is_throttled_to_the_byte_rate_and_nothing_is_lost():
    """6 MiB at 2 MiB/s with one second (2 MiB) of burst: each read first pays for the bytes before it, so the last
    message is read after (6 - 2 - 1) MiB / 2 MiB/s = 1.5 s, not at once."""

    async def main():
        client, server, _ = _pair(max_bytes_per_second=float(2 << 20))
        sent = [torch.full((256 << 10,), float(i)) for i in range(6)]  # 1 MiB each
        for i, tensor in enumerate(sent):
            await client.send(CutTensor(StepRef("run", 0, i, Phase.TRAIN), tensor))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for tensor in sent:
            assert torch.equal((await server.receive()).tensor, tensor)
        assert loop.time() - started >= 1.3

    asyncio.run(main())


# -- a client keeps to the limits of the server's Welcome ---------------------------------------------------------
def _welcome(**limits) -> Welcome:
    fields = dict(
        protocol_version=4,
        session_id="s",
        max_payload_bytes=0,
        chunk_bytes=1 << 20,
        max_envelope_bytes=0,
        max_tensor_elements=1 << 28,
        max_tensor_dims=8,
        messages_per_second=0.0,
        message_burst=0,
        write_timeout_seconds=60.0,
    )
    return Welcome(**{**fields, **limits})


def test_a_client_following_the_welcome_sends_no_envelope_above_its_largest():
    async def main():
        client, server, up = _pair()
        client.follow(_welcome(max_envelope_bytes=8192))
        acts = torch.randn(4, 10_000)  # 160 kB: twenty-odd chunks of the announced size
        sizes = []
        original_put = up.put

        async def measured_put(envelope):
            sizes.append(envelope.ByteSize())
            await original_put(envelope)

        up.put = measured_put
        await client.send(CutTensor(REF, acts, labels=torch.zeros(4, dtype=torch.long)))
        got = await server.receive()
        assert torch.equal(got.tensor, acts)
        assert len(sizes) > 15 and max(sizes) <= 8192, sizes

    asyncio.run(main())


def test_a_message_above_the_announced_payload_is_refused_before_anything_is_sent():
    async def main():
        client, _, up = _pair()
        client.follow(_welcome(max_payload_bytes=10_000))
        with pytest.raises(WireError, match="max_payload_bytes") as refused:
            await client.send(CutTensor(REF, torch.randn(4, 1000), labels=torch.zeros(4, dtype=torch.long)))
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert up.empty()
        await client.send(CutTensor(REF, torch.randn(4, 100), labels=torch.zeros(4, dtype=torch.long)))
        assert not up.empty()

    asyncio.run(main())


@pytest.mark.parametrize("follows", [True, False])
def test_a_client_following_the_welcome_stays_within_the_servers_message_rate(follows):
    """The server's own token bucket admits every envelope of a client that paces itself; one that does not
    is refused once its burst is spent (which is what shows the bucket really bites)."""
    from slperf.common.transport.rate import TokenBucket  # the server's own bucket (slserver/sessions.py)

    bucket = TokenBucket(rate=400.0, burst=20)

    def admit() -> None:
        if not bucket.take():
            raise WireError.exhausted("more than 400 messages per second")

    async def main():
        client, server, _ = _pair(admit=admit)
        if follows:
            client.follow(_welcome(messages_per_second=400.0, message_burst=20))
        sent = 120

        async def send() -> None:
            for i in range(sent):
                await client.send(Ready("run", i, 0))

        async def receive() -> int:  # reads as the envelopes arrive, as the server's session does
            refused = 0
            for _ in range(sent):
                try:
                    await server.receive()
                except WireError:
                    refused += 1
            return refused

        _, refused = await asyncio.gather(send(), receive())
        return refused, client.pacer

    refused, pacer = asyncio.run(main())
    if follows:
        assert refused == 0 and pacer is not None and pacer.waited > 0
    else:
        assert refused > 0 and pacer is None
