"""A userspace TCP relay that stands in for a slow or bad network link (this machine's kernel has no netem).

Run it inside a network namespace, in front of the server:

    ip netns exec NS python -m slperf.netshape.relay --listen 10.7.8.1:50060 --to 10.7.8.1:50051 \\
        --delay-ms 50 --reset-prob 0.01 --rate-bytes-per-s 4000000 --control /tmp/x/cut.json

With ``--upstream-netns /proc/PID/ns/net`` it connects to ``--to`` from that namespace instead of its own (the
shaped benchmark: it listens in the clients' namespace and reaches a server on the root namespace's loopback).

What it does to every accepted connection:

* **delay**: each chunk read from one side is stamped ``now + delay`` and queued; a writer task per direction
  writes it at that time. Reading never waits for writing, so pipelining (many chunks in flight) is kept:
  a stream sees its one-way latency grow by ``delay`` without its throughput collapsing to one chunk per RTT.
* **resets** (``--reset-prob``): with that probability per connection, the connection is reset (RST to both
  ends, SO_LINGER 0) once a number of bytes, drawn uniformly from ``--reset-bytes MIN:MAX``, has passed
  through it in either direction. The draws come from ``random.Random(--seed)``, two per accepted connection
  in accept order, so a seed fixes which connection (the 1st, 2nd, ...) is reset and when.
* **rate** (``--rate-bytes-per-s``): a token bucket per source address and direction, i.e. one access link per
  client host, shared by that host's connections.
* **cuts** (SIGUSR1): the relay reads the JSON file given by ``--control``, e.g.
  ``{"source": "10.7.8.3", "seconds": 35, "mode": "drop"}`` (``source`` ``"*"`` = every host), and until the
  deadline:
    - ``drop`` (a pulled cable): nothing from or to that source is forwarded; bytes stay in the socket buffers
      and new connections from it are accepted but not forwarded. Afterwards everything flows again, as TCP
      would resume if neither end gave up meanwhile. Peers notice only through their own timeouts (keepalive).
    - ``reset`` (a rejecting middlebox): that source's connections are reset now, and new ones are reset on
      accept until the deadline.

Everything it does is printed to stdout as one JSON object per line (``{"t": unix time, "event": ...}``),
after a first line ``RELAY_READY HOST:PORT``. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from slperf.netshape.namespaces import entered

READY = "RELAY_READY "
CHUNK = 64 * 1024
MAX_IN_FLIGHT = 8 * 1024 * 1024  # bytes queued per direction before the relay stops reading (backpressure)


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    lo_n, hi_n = int(lo), int(hi if sep else lo)
    if not 0 < lo_n <= hi_n:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with 0 < MIN <= MAX, got {text!r}")
    return lo_n, hi_n


def reset_draws(seed: int, count: int, prob: float, byte_range: tuple[int, int]) -> list[int | None]:
    """What the relay started with ``seed`` does to its first ``count`` connections: bytes before the reset,
    or None. The same two draws per connection as ``Relay._draw``."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        hit = rng.random() < prob
        after = rng.randint(*byte_range)
        out.append(after if hit else None)
    return out


def seed_resetting(index: int, prob: float, byte_range: tuple[int, int], start: int = 0) -> int:
    """The smallest seed >= start whose connection number ``index`` (0-based) is reset and no earlier one is."""
    seed = start
    while True:
        draws = reset_draws(seed, index + 1, prob, byte_range)
        if draws[index] is not None and all(d is None for d in draws[:index]):
            return seed
        seed += 1


class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes; callers take at most ``burst`` at a time."""

    def __init__(self, rate: float, burst: int):
        self.rate = float(rate)
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:  # first come, first served across the connections sharing this link
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


class Budget:
    """Bytes queued in one direction; the reader waits when the writer is too far behind."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        async with self.cond:
            self.used -= n
            self.cond.notify_all()


@dataclass
class Host:
    """One source address: its access-link buckets and its cut state."""

    address: str
    up: TokenBucket | None = None
    down: TokenBucket | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    cut_until: float = 0.0
    cut_mode: str = ""
    resume_task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.flowing.set()


class ConnectionReset(Exception):
    pass


class Conn:
    def __init__(
        self,
        relay: Relay,
        number: int,
        host: Host,
        reset_after: int | None,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ):
        self.relay = relay
        self.number = number
        self.host = host
        self.reset_after = reset_after
        self.client_reader, self.client_writer = client
        self.server_writer: asyncio.StreamWriter | None = None
        self.bytes = 0
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client_writer, self.server_writer) if w is not None]

    def reset(self, reason: str) -> None:
        """RST to both ends (SO_LINGER 0, then abort), and stop forwarding."""
        if self.closed:
            return
        self.closed = True
        for writer in self.writers():
            sock = writer.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            writer.transport.abort()
        self.relay.emit("reset", conn=self.number, source=self.host.address, after_bytes=self.bytes, reason=reason)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    def count(self, n: int) -> None:
        self.bytes += n
        if self.reset_after is not None and self.bytes >= self.reset_after:
            self.reset(f"drawn reset after {self.reset_after} bytes")
            raise ConnectionReset()

    async def pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, bucket: TokenBucket | None) -> None:
        """One direction: a reader stamps chunks with their due time, a writer delivers them on time."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        budget = Budget(MAX_IN_FLIGHT)
        delay = self.relay.delay

        async def read_side() -> None:
            while True:
                await self.host.flowing.wait()
                data = await src.read(CHUNK)
                if not data:
                    await queue.put((loop.time() + delay, None))
                    return
                self.count(len(data))
                await budget.acquire(len(data))
                await queue.put((loop.time() + delay, data))

        async def write_side() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.host.flowing.wait()
                if data is None:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                for start in range(0, len(data), bucket.burst if bucket else len(data)):
                    piece = data[start : start + bucket.burst] if bucket else data
                    if bucket:
                        await bucket.take(len(piece))
                    dst.write(piece)
                await dst.drain()
                await budget.release(len(data))

        reader = asyncio.create_task(read_side())
        writer = asyncio.create_task(write_side())
        self.tasks += [reader, writer]
        await asyncio.gather(reader, writer)


class Relay:
    def __init__(self, args: argparse.Namespace):
        self.listen = args.listen
        self.to = args.to
        self.delay = args.delay_ms / 1000.0
        self.reset_prob = args.reset_prob
        self.reset_bytes = args.reset_bytes
        self.rate = args.rate_bytes_per_s
        self.control = Path(args.control) if args.control else None
        self.upstream_netns: str | None = args.upstream_netns
        self.rng = random.Random(args.seed)
        self.hosts: dict[str, Host] = {}
        self.conns: set[Conn] = set()
        self.accepted = 0
        self.stopping = asyncio.Event()

    @staticmethod
    def emit(event: str, **fields) -> None:
        print(json.dumps({"t": round(time.time(), 4), "event": event, **fields}), flush=True)

    def host(self, address: str) -> Host:
        host = self.hosts.get(address)
        if host is None:
            host = Host(address)
            if self.rate:
                burst = int(min(CHUNK, max(1500, self.rate / 50)))
                host.up, host.down = TokenBucket(self.rate, burst), TokenBucket(self.rate, burst)
            self.hosts[address] = host
        return host

    def _draw(self) -> int | None:
        hit = self.rng.random() < self.reset_prob
        after = self.rng.randint(*self.reset_bytes)
        return after if hit else None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        number = self.accepted
        self.accepted += 1
        host = self.host(peer[0])
        conn = Conn(self, number, host, self._draw(), (reader, writer))
        self.conns.add(conn)
        self.emit("accept", conn=number, source=peer[0], port=peer[1], reset_after=conn.reset_after)
        try:
            if host.cut_mode == "reset" and time.monotonic() < host.cut_until:
                conn.reset("source is cut (reset mode)")
                return
            await host.flowing.wait()  # a connection opened during a drop-mode cut waits for the link
            try:
                _, conn.server_writer = server = await self.open_upstream()
            except OSError as exc:
                self.emit("upstream-failed", conn=number, error=str(exc))
                conn.reset("upstream refused")
                return
            up = asyncio.create_task(conn.pipe(reader, server[1], host.up))
            down = asyncio.create_task(conn.pipe(server[0], writer, host.down))
            conn.tasks += [up, down]
            await asyncio.gather(up, down)
            for w in conn.writers():
                w.close()
            conn.closed = True
            self.emit("close", conn=number, source=peer[0], bytes=conn.bytes)
        except (ConnectionReset, asyncio.CancelledError):
            pass
        except (ConnectionError, OSError) as exc:
            # One end reset or failed: pass the failure on to the other end as a reset.
            conn.reset(f"peer error: {type(exc).__name__}: {exc}")
        finally:
            for task in conn.tasks:
                task.cancel()
            self.conns.discard(conn)

    async def open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``--to``; made from ``--upstream-netns`` when given (the socket is created there, on
        this thread, and keeps that namespace; connecting and everything after it happen on the event loop)."""
        if self.upstream_netns is None:
            return await asyncio.open_connection(*self.to)
        with entered(self.upstream_netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.to)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    def cut(self) -> None:
        try:
            spec = json.loads(self.control.read_text())
            source, seconds, mode = spec["source"], float(spec["seconds"]), spec.get("mode", "drop")
            if mode not in ("drop", "reset"):
                raise ValueError(f"unknown mode {mode!r}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.emit("control-error", error=f"{type(exc).__name__}: {exc}")
            return
        hosts = list(self.hosts.values()) if source == "*" else [self.host(source)]
        for host in hosts:
            host.cut_until = time.monotonic() + seconds
            host.cut_mode = mode
            if host.resume_task:
                host.resume_task.cancel()
            if mode == "drop":
                host.flowing.clear()
            else:
                for conn in [c for c in self.conns if c.host is host]:
                    conn.reset("source is cut (reset mode)")
            host.resume_task = asyncio.get_running_loop().create_task(self._resume(host, seconds))
            self.emit("cut", source=host.address, seconds=seconds, mode=mode)

    async def _resume(self, host: Host, seconds: float) -> None:
        await asyncio.sleep(seconds)
        host.cut_mode = ""
        host.flowing.set()
        self.emit("restore", source=host.address)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(self.handle, *self.listen, reuse_address=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if self.control is not None:
            loop.add_signal_handler(signal.SIGUSR1, self.cut)
        port = server.sockets[0].getsockname()[1]
        print(f"{READY}{self.listen[0]}:{port}", flush=True)
        async with server:
            await self.stopping.wait()
        for conn in list(self.conns):
            for writer in conn.writers():
                writer.transport.abort()
        self.emit("stopped", accepted=self.accepted)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="TCP relay with delay, connection resets, rate limit and cuts")
    parser.add_argument("--listen", type=parse_hostport, required=True, help="HOST:PORT to accept on (port 0 = any)")
    parser.add_argument("--to", type=parse_hostport, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added one-way delay, each direction")
    parser.add_argument("--reset-prob", type=float, default=0.0, help="probability that a connection is reset")
    parser.add_argument(
        "--reset-bytes",
        type=parse_range,
        default=(64 * 1024, 4 * 1024 * 1024),
        help="MIN:MAX bytes after which a drawn connection is reset (uniform)",
    )
    parser.add_argument("--rate-bytes-per-s", type=float, default=0.0, help="per source host and direction; 0 = off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control", help="JSON file read on SIGUSR1: {source, seconds, mode: drop|reset}")
    parser.add_argument(
        "--upstream-netns", help="namespace file (/proc/PID/ns/net, /run/netns/NAME) to connect to --to from"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.reset_prob <= 1.0:
        sys.exit("--reset-prob must be in [0, 1]")
    if args.upstream_netns and not os.path.exists(args.upstream_netns):
        sys.exit(f"--upstream-netns {args.upstream_netns}: no such namespace file")
    asyncio.run(Relay(args).serve())


if __name__ == "__main__":
    main()
