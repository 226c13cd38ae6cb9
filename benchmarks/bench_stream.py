"""Stream throughput: MB/s of 1, 4, 16 and 64 MiB float32 tensors sent through the real session path, against
the same bytes over a plain TCP socket on loopback (no TLS, no framing: the ceiling).

Two more rows place the gap: the same bytes over a TLS socket with the same certificates (Python's ``ssl``,
OpenSSL: what encryption alone costs), and over the same gRPC + mutual TLS transport with none of our code
(raw 1 MiB ``bytes`` messages, identity serializers: what gRPC itself costs). Our framing is then judged
against the transport it runs on (``ratio_to_raw_grpc``) as well as against the socket (``ratio``).

The sender is the client daemon's own ``SessionLink.send_cut_tensor`` (the endpoint: serde, ``encode_tensor``,
``Framer``: ~1 MiB chunks, seq numbers, byte counts) on a grpc.aio bidirectional stream with mutual TLS. The
receiver is the server's own endpoint: ``Deframer`` (reassembly, CRC-32) and serde's one writable, checked decode
of the cut tensor. Both receivers run in their own process and answer each tensor with a small acknowledgement;
one transfer = build + encode + send + receive + decode + ack.

    python -m benchmarks.bench_stream [--sizes-mib 1 4 16 64] [--repeats 5]

Ratio = gRPC MB/s / TCP MB/s per size (target >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import banner, write_result

TARGET_RATIO = 0.7
READY = "BENCH_READY port="


# ---- receivers (run in their own process) -----------------------------------------------------------------


async def _serve_grpc(certs: Path) -> None:
    import grpc

    from slperf.common.protocol.types import CutReply
    from slperf.common.security.credentials import server_credentials
    from slperf.common.transport.channel import SESSION_METHOD, envelope_parser, grpc_options, serialize_envelope
    from slperf.common.transport.endpoint import Endpoint, Side
    from slperf.v1 import session_pb2

    class Sink:
        async def Session(self, request_iterator, context):
            endpoint = Endpoint(context, Side.SERVER)  # the server's own receive path: reassembly, one decode
            while True:
                message = await endpoint.receive()
                if message is None:
                    return
                await endpoint.send(CutReply(message.ref, None, count=int(message.tensor.numel() % (1 << 32))))

    server = grpc.aio.server(options=grpc_options())
    service, method = SESSION_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service,
                {  # the server's (de)serializers
                    method: grpc.stream_stream_rpc_method_handler(
                        Sink().Session, envelope_parser(session_pb2.ClientMessage), serialize_envelope
                    )
                },
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(certs, require_client_auth=True))
    await server.start()
    print(f"{READY}{port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.stop(grace=1)


async def _serve_raw_grpc(certs: Path) -> None:
    """gRPC + mutual TLS with none of our code: counts the bytes of a transfer, acknowledges its end marker."""
    import grpc

    from slperf.common.security.credentials import server_credentials
    from slperf.common.transport.channel import grpc_options

    async def stream(requests, context):
        received = 0
        async for part in requests:
            if part:
                received += len(part)
            else:  # the empty end-of-transfer marker
                yield struct.pack("<Q", received)
                received = 0

    async def echo(requests, context):  # for the split-overhead benchmark's transport floor
        async for part in requests:
            yield part

    identity = lambda b: b  # noqa: E731 - raw bytes both ways
    handler = grpc.method_handlers_generic_handler(
        "bench.Raw",
        {
            "Stream": grpc.stream_stream_rpc_method_handler(stream, identity, identity),
            "Echo": grpc.stream_stream_rpc_method_handler(echo, identity, identity),
        },
    )
    server = grpc.aio.server(options=grpc_options())
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(certs, require_client_auth=True))
    await server.start()
    print(f"{READY}{port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(grace=1)


def _tls_context(certs: Path, server: bool):
    import ssl

    from slperf.common.security.layout import ca_paths, client_paths, server_paths

    ca, _ = ca_paths(certs)
    if server:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        ctx.load_cert_chain(*map(str, server_paths(certs)))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        ctx.load_cert_chain(*map(str, client_paths(certs, "bench")))
    return ctx


def _recv_exact(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def _serve_tcp(certs: Path | None = None) -> None:
    """A length-prefixed receiver on a plain (or, with ``certs``, a mutual-TLS) socket."""
    import numpy as np

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print(f"{READY}{listener.getsockname()[1]}", flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if certs is not None:
        conn = _tls_context(certs, server=True).wrap_socket(conn, server_side=True)
    header = bytearray(8)
    buffers: dict[int, bytearray] = {}
    while True:
        try:
            _recv_exact(conn, memoryview(header))
        except ConnectionError:
            return
        (length,) = struct.unpack("<Q", header)
        if length not in buffers:
            buffers[length] = bytearray(length)
        buf = buffers[length]
        _recv_exact(conn, memoryview(buf))
        array = np.frombuffer(buf, dtype="<f4")  # the receiver's view of the tensor
        conn.sendall(struct.pack("<Q", array.size))


# ---- senders --------------------------------------------------------------------------------------------


def start_receiver(args: list[str]) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_stream", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith(READY):
        proc.kill()
        raise RuntimeError(f"receiver did not start: {line!r}")
    return proc, int(line[len(READY) :])


def stop_receiver(proc: subprocess.Popen) -> None:
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tensor(mib: int):
    import torch

    return torch.randn(mib * (1 << 20) // 4, generator=torch.Generator().manual_seed(mib))


def _client_channel(port: int, certs: Path):
    import grpc

    from slperf.common.security.credentials import client_channel_credentials
    from slperf.common.transport.channel import grpc_options

    options = grpc_options() + [("grpc.ssl_target_name_override", "localhost")]
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", client_channel_credentials(certs, "bench"), options=options)


class _Session:
    """Our session path: the client daemon's own SessionLink (messages, codec, framing) over grpc.aio + mTLS."""

    name = "session"

    def __init__(self, port: int, certs: Path):
        from slperf.common.transport.channel import open_session
        from slperf.slclient.daemon import SessionLink

        self.channel = _client_channel(port, certs)
        self.call = open_session(self.channel)
        self.link = SessionLink(self.call, run_id="bench")
        self.step = 0

    async def transfer(self, tensor) -> None:
        from slperf.common.protocol.types import Phase, StepRef

        self.step += 1
        await self.link.send_cut_tensor(StepRef("bench", 0, self.step, Phase.TRAIN), tensor)
        reply = await self.link.receive()
        if reply is None or reply.ref.step != self.step:
            raise RuntimeError("no acknowledgement, or one for the wrong transfer")

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


class _RawGrpc:
    """The same gRPC + mTLS transport with none of our code: 1 MiB ``bytes`` messages, identity serializers."""

    name = "raw_grpc"

    def __init__(self, port: int, certs: Path):
        self.channel = _client_channel(port, certs)
        identity = lambda b: b  # noqa: E731
        self.call = self.channel.stream_stream(
            "/bench.Raw/Stream", request_serializer=identity, response_deserializer=identity
        )()

    async def transfer(self, tensor) -> None:
        view = memoryview(tensor.numpy()).cast("B")
        for start in range(0, len(view), 1 << 20):
            await self.call.write(bytes(view[start : start + (1 << 20)]))  # gRPC takes bytes: one copy
        await self.call.write(b"")
        (received,) = struct.unpack("<Q", await self.call.read())
        if received != len(view):
            raise RuntimeError(f"raw gRPC receiver counted {received} of {len(view)} bytes")

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


async def raw_grpc_round_trips(port: int, certs: Path, nbytes: int, count: int) -> list[float]:
    """Seconds per round trip of ``nbytes`` each way over raw gRPC + mTLS (``serve-raw-grpc``'s Echo)."""
    identity = lambda b: b  # noqa: E731
    payload = os.urandom(nbytes)
    times = []
    async with _client_channel(port, certs) as channel:
        call = channel.stream_stream("/bench.Raw/Echo", request_serializer=identity, response_deserializer=identity)()
        for _ in range(count):
            started = time.perf_counter()
            await call.write(payload)
            if len(await call.read()) != nbytes:
                raise RuntimeError("the echo came back with another size")
            times.append(time.perf_counter() - started)
        await call.done_writing()
    return times


class _Socket:
    """Length-prefixed raw bytes on a plain TCP socket, or on a TLS socket with the same certificates."""

    def __init__(self, port: int, certs: Path | None = None):
        self.name = "tcp" if certs is None else "tls_socket"
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if certs is not None:
            self.sock = _tls_context(certs, server=False).wrap_socket(self.sock, server_hostname="localhost")
        self.ack = bytearray(8)

    async def transfer(self, tensor) -> None:
        payload = memoryview(tensor.numpy()).cast("B")  # the raw bytes, no copy
        self.sock.sendall(struct.pack("<Q", len(payload)))
        self.sock.sendall(payload)
        _recv_exact(self.sock, memoryview(self.ack))

    async def close(self) -> None:
        self.sock.close()


async def _measure(
    ports: dict[str, int], certs: Path, sizes: list[int], repeats: int
) -> dict[str, dict[int, list[float]]]:
    """Round-robin over the transports, one transfer each per repeat, so that drift in the machine's speed
    (it is shared) hits every transport alike and the ratios compare like with like."""
    senders = [
        _Socket(ports["tcp"]),
        _Socket(ports["tls_socket"], certs),
        _RawGrpc(ports["raw_grpc"], certs),
        _Session(ports["session"], certs),
    ]
    times: dict[str, dict[int, list[float]]] = {s.name: {} for s in senders}
    try:
        for mib in sizes:
            tensor = _tensor(mib)
            for sender in senders:
                times[sender.name][mib] = []
            for i in range(repeats + 1):  # the first transfer of each size warms up and is not counted
                for sender in senders[i % 4 :] + senders[: i % 4]:
                    started = time.perf_counter()
                    await sender.transfer(tensor)
                    if i:
                        times[sender.name][mib].append(time.perf_counter() - started)
    finally:
        for sender in senders:
            await sender.close()
    return times


def run(sizes: list[int], repeats: int) -> dict[str, Any]:
    from slperf.pki import add_client, init_pki

    banner("stream throughput: session framing over grpc.aio + mutual TLS vs a plain TCP socket (loopback)")
    with tempfile.TemporaryDirectory(prefix="slperf-stream-") as tmp:
        certs = Path(tmp) / "certs"
        init_pki(certs)
        add_client(certs, "bench")
        receivers: dict[str, subprocess.Popen] = {}
        ports: dict[str, int] = {}
        try:
            for name, args in (
                ("tcp", ["serve-tcp"]),
                ("tls_socket", ["serve-tls", "--certs", str(certs)]),
                ("raw_grpc", ["serve-raw-grpc", "--certs", str(certs)]),
                ("session", ["serve-grpc", "--certs", str(certs)]),
            ):
                receivers[name], ports[name] = start_receiver(args)
            times = asyncio.run(_measure(ports, certs, sizes, repeats))
        finally:
            for proc in receivers.values():
                stop_receiver(proc)
    grpc_t, tcp, tls_t, raw_t = times["session"], times["tcp"], times["tls_socket"], times["raw_grpc"]
    cases = []
    for mib in sizes:
        nbytes = mib * (1 << 20)
        g_mbps, t_mbps, s_mbps, r_mbps = (nbytes / statistics.median(x[mib]) / 1e6 for x in (grpc_t, tcp, tls_t, raw_t))
        cases.append(
            {
                "size_mib": mib,
                "grpc_tls_seconds": grpc_t[mib],
                "tcp_seconds": tcp[mib],
                "tls_socket_seconds": tls_t[mib],
                "raw_grpc_tls_seconds": raw_t[mib],
                "grpc_tls_MBps": g_mbps,
                "tcp_MBps": t_mbps,
                "tls_socket_MBps": s_mbps,
                "raw_grpc_tls_MBps": r_mbps,
                "ratio": g_mbps / t_mbps,
                "ratio_to_raw_grpc": g_mbps / r_mbps,
                "tls_socket_ratio": s_mbps / t_mbps,
                "raw_grpc_ratio": r_mbps / t_mbps,
                "meets_target": g_mbps / t_mbps >= TARGET_RATIO,
            }
        )
        print(
            f"{mib:>3} MiB: session {g_mbps:7.1f} MB/s | plain TCP {t_mbps:7.1f}, TLS socket {s_mbps:7.1f}, "
            f"raw gRPC+mTLS {r_mbps:7.1f} | ratio to TCP {g_mbps / t_mbps:.2f} (target >= {TARGET_RATIO}; "
            f"TLS socket {s_mbps / t_mbps:.2f}, raw gRPC {r_mbps / t_mbps:.2f}), to raw gRPC {g_mbps / r_mbps:.2f}",
            flush=True,
        )
    return {
        "cases": cases,
        "target_ratio": TARGET_RATIO,
        "repeats": repeats,
        "chunk_bytes": 1 << 20,
        "what": "median seconds per transfer (encode, send, receive, decode, ack)",
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-grpc"]:
        asyncio.run(_serve_grpc(Path(argv[argv.index("--certs") + 1])))
        return None
    if argv[:1] == ["serve-tcp"]:
        _serve_tcp()
        return None
    if argv[:1] == ["serve-tls"]:
        _serve_tcp(Path(argv[argv.index("--certs") + 1]))
        return None
    if argv[:1] == ["serve-raw-grpc"]:
        asyncio.run(_serve_raw_grpc(Path(argv[argv.index("--certs") + 1])))
        return None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    result = run(args.sizes_mib, args.repeats)
    write_result("stream_throughput", result, args.results_dir)
    return result


if __name__ == "__main__":
    main()
