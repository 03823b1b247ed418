"""A load-generating subscriber process: N SSE connections on raw asyncio protocols, minimal parsing.

Each read is counted, not parsed: ticks are occurrences of ``event: tick``, and the latency of a
read is that of the *oldest* tick in it (the first ``"ts":"`` in the bytes), counted once for
every tick in the read. So percentiles are upper bounds: a tick that arrived with a newer one is
counted as old as the oldest in its read. Latency is the subscriber's clock at the read minus the
tick's source timestamp, both this machine's wall clock.

Every ``--report`` seconds one JSON line goes to stdout with cumulative counters and the latency
histogram (benchmarks.common buckets); the driver subtracts two lines to get a window.

    python -m benchmarks.loadgen --port 8000 --connections 250 [--symbols BTCUSD] [--stall]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import sys
import time
from datetime import datetime

import orjson

from tickhub import aio

from .common import N_BUCKETS, bucket_of, raise_fd_limit

TICK = b"event: tick"  # sse-starlette ends lines with \r\n, tickhub with \n
PING = b": ping"
TS = b'"ts":"'


class Totals:
    def __init__(self) -> None:
        self.connected = 0
        self.failed = 0
        self.closed = 0
        self.ticks = 0
        self.reads = 0
        self.bytes = 0
        self.pings = 0
        self.snapshots = 0
        self.resyncs = 0
        self.hist = [0] * N_BUCKETS
        self.max_ms = 0.0
        self.ts_text = b""
        self.ts_epoch = 0.0
        self.subs: list[Subscriber] = []

    def epoch(self, text: bytes) -> float:
        if text != self.ts_text:  # ticks of one burst share their timestamp
            self.ts_text = text
            self.ts_epoch = datetime.fromisoformat(text.decode()).timestamp()
        return self.ts_epoch

    def report(self) -> bytes:
        now = time.monotonic()
        open_subs = [s for s in self.subs if s.open]
        silence = max((now - s.last_data for s in open_subs), default=0.0)
        pings = min((s.pings for s in open_subs), default=0)
        return orjson.dumps(
            {
                "connected": self.connected,
                "open": len(open_subs),
                "failed": self.failed,
                "closed": self.closed,
                "ticks": self.ticks,
                "reads": self.reads,
                "bytes": self.bytes,
                "pings": self.pings,
                "min_pings": pings,
                "max_silence_s": round(silence, 3),
                "snapshots": self.snapshots,
                "resyncs": self.resyncs,
                "max_ms": round(self.max_ms, 3),
                "hist": self.hist,
            }
        )


class Subscriber(asyncio.Protocol):
    """One /stream connection; counts what it reads and never keeps it."""

    def __init__(self, totals: Totals, request: bytes, stall: bool) -> None:
        self.totals = totals
        self.request = request
        self.stall = stall
        self.head = b""
        self.tail = b""
        self.open = False
        self.pings = 0
        self.last_data = time.monotonic()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        totals = self.totals
        self.last_data = time.monotonic()
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200"):
                totals.failed += 1
                self.transport.close()
                return
            self.open = True
            totals.connected += 1
            data = self.head[end + 4 :]
            self.head = b""
            if self.stall:  # read the headers, then never again: the hub sees a stalled client
                self.transport.pause_reading()  # type: ignore[attr-defined]
        totals.reads += 1
        totals.bytes += len(data)
        n = data.count(TICK) + (self.tail + data[:10]).count(TICK)
        self.tail = data[-10:]
        if n:
            totals.ticks += n
            at = data.find(TS)
            if at >= 0 and at + 33 <= len(data):
                ms = (time.time() - totals.epoch(data[at + 6 : at + 33])) * 1000
                totals.hist[bucket_of(ms)] += n
                if ms > totals.max_ms:
                    totals.max_ms = ms
        if PING in data:
            self.pings += 1
            totals.pings += 1
        if b"event: snapshot" in data:
            totals.snapshots += 1
        if b"event: resync" in data:
            totals.resyncs += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.totals.closed += 1
        self.open = False
        if not self.done.done():
            self.done.set_result(None)


async def connect(loop: asyncio.AbstractEventLoop, args: argparse.Namespace, totals: Totals, request: bytes) -> None:
    for attempt in range(5):  # capped, jittered: a listen queue full for a moment is not a failure
        sub = Subscriber(totals, request, args.stall)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if args.stall:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (args.host, args.port)), 10)
            await loop.create_connection(lambda sub=sub: sub, sock=sock)
            totals.subs.append(sub)
            return
        except (OSError, TimeoutError):
            sock.close()
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
    totals.failed += 1


async def main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    totals = Totals()
    query = f"?symbols={args.symbols}" if args.symbols else ""
    request = (
        f"GET {args.path}{query} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(args.concurrency)

    async def one() -> None:
        async with gate:
            await connect(loop, args, totals, request)

    out = sys.stdout.buffer
    connecting = asyncio.gather(*(one() for _ in range(args.connections)))
    deadline = time.monotonic() + args.duration
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(args.report)
            out.write(totals.report() + b"\n")
            out.flush()
    finally:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        for sub in totals.subs:
            if sub.open:
                sub.transport.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/stream")
    parser.add_argument("--symbols", default="")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight at once")
    parser.add_argument("--stall", action="store_true", help="read the response headers, then stop reading")
    parser.add_argument("--report", type=float, default=0.5, help="seconds between report lines")
    parser.add_argument("--duration", type=float, default=600.0, help="exit after this many seconds at most")
    return parser.parse_args(argv)


if __name__ == "__main__":
    aio.run(main(parse_args()))
