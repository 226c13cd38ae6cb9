"""Measuring a shaped link in the run that uses it: a bulk transfer each way and a ping-pong, so a report shows
the rate and delay a client really had, not only what was asked for.

Two processes, started by ``slperf.netshape.clients`` in the namespaces of the two ends:

    python -m slperf.netshape.measure sink --listen HOST:0          # prints MEASURE_SINK_READY HOST:PORT
    python -m slperf.netshape.measure probe --link HOST:PORT [--path HOST:PORT] --bytes N   # prints one JSON line

The probe sends ``N`` bytes to the sink and receives ``N`` back over ``--link`` (the shaped veth, no relay): the
rate is the receiver's, over the last three quarters of the transfer, so TCP's slow start and the bucket's
initial burst do not inflate or deflate it. Round trips are timed over ``--link`` and over ``--path`` (through a
relay with the client's delay, as the client daemon's traffic goes), the smallest of several pings each.

Wire format of a request: one command byte (``U`` upload, ``D`` download, ``P`` ping) and an 8-byte length.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time

READY = "MEASURE_SINK_READY "
RESULT = "MEASURE_RESULT "
CHUNK = 256 * 1024
HEADER = struct.Struct("!cQ")
RATE = struct.Struct("!d")
MEASURED_SHARE = 0.75  # the receiver's rate over the last three quarters of the bytes
PINGS = 5


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def receive_rate(sock: socket.socket, n: int) -> float:
    """Receives ``n`` bytes; returns bytes per second over the last ``MEASURED_SHARE`` of them."""
    mark = int(n * (1 - MEASURED_SHARE))
    got = 0
    t_mark: float | None = time.perf_counter() if mark == 0 else None
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while got < n:
        k = sock.recv_into(view, min(CHUNK, n - got))
        if k == 0:
            raise ConnectionError(f"EOF after {got} of {n} bytes")
        got += k
        if t_mark is None and got >= mark:
            t_mark = time.perf_counter()
            mark = got
    assert t_mark is not None
    took = time.perf_counter() - t_mark
    return (n - mark) / took if took > 0 else float("inf")


def send_bytes(sock: socket.socket, n: int) -> None:
    block = bytes(CHUNK)
    left = n
    while left > 0:
        piece = min(CHUNK, left)
        sock.sendall(memoryview(block)[:piece])
        left -= piece


def _serve(conn: socket.socket) -> None:
    with conn:
        try:
            while True:
                head = conn.recv(HEADER.size, socket.MSG_WAITALL)
                if len(head) < HEADER.size:
                    return
                command, n = HEADER.unpack(head)
                if command == b"U":
                    conn.sendall(RATE.pack(receive_rate(conn, n)))
                elif command == b"D":
                    send_bytes(conn, n)
                elif command == b"P":
                    conn.sendall(b"p")
                else:
                    return
        except OSError:
            return


def sink(listen: tuple[str, int]) -> None:
    server = socket.create_server(listen)
    host, port = server.getsockname()[:2]
    print(f"{READY}{host}:{port}", flush=True)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


def ping_ms(address: tuple[str, int], pings: int = PINGS) -> float:
    """The smallest of ``pings`` request-reply times on one connection, in ms."""
    with socket.create_connection(address, timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        best = float("inf")
        for _ in range(pings):
            t0 = time.perf_counter()
            sock.sendall(HEADER.pack(b"P", 0))
            _recv_exactly(sock, 1)
            best = min(best, time.perf_counter() - t0)
    return best * 1000


def probe(link: tuple[str, int], path: tuple[str, int] | None, n: int) -> dict[str, float | int | None]:
    with socket.create_connection(link, timeout=120) as sock:
        sock.sendall(HEADER.pack(b"U", n))
        send_bytes(sock, n)
        (up,) = RATE.unpack(_recv_exactly(sock, RATE.size))
        sock.sendall(HEADER.pack(b"D", n))
        down = receive_rate(sock, n)
    return {
        "bytes": n,
        "up_mbit": up * 8 / 1e6,
        "down_mbit": down * 8 / 1e6,
        "rtt_link_ms": ping_ms(link),
        "rtt_path_ms": ping_ms(path) if path is not None else None,
    }


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rate and round trip of a shaped link")
    sub = parser.add_subparsers(dest="mode", required=True)
    sink_p = sub.add_parser("sink")
    sink_p.add_argument("--listen", type=_hostport, required=True)
    probe_p = sub.add_parser("probe")
    probe_p.add_argument("--link", type=_hostport, required=True, help="the sink, over the shaped link")
    probe_p.add_argument("--path", type=_hostport, help="the sink through the client's relay")
    probe_p.add_argument("--bytes", type=int, required=True)
    args = parser.parse_args(argv)
    if args.mode == "sink":
        sink(args.listen)
    else:
        if args.bytes < 1024:
            sys.exit("--bytes must be at least 1024")
        print(RESULT + json.dumps(probe(args.link, args.path, args.bytes)), flush=True)


if __name__ == "__main__":
    main()
