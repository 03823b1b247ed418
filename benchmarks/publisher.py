"""A price source whose publish rate the benchmark driver sets while it runs.

The same SSE feed as every tickhub source (sources.feed), random-walk prices over ``--symbols``,
and ``POST /rate {"rate": ticks_per_second}`` to change the rate. Ticks go out in bursts every
millisecond, each tick stamped with the wall-clock time it was published, which is what the
subscribers measure latency against.

    python -m benchmarks.publisher --port 8101 --symbols S0,S1,S2
"""

from __future__ import annotations

import argparse
import asyncio
import random
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sources.app import source_app
from sources.feed import SourceFeed
from sources.mock import RandomWalk
from sources.serve import serve_until_signal
from tickhub import aio
from tickhub.wire import format_ts

TICK_EVERY = 0.001


class Pacer:
    """Publishes ``rate`` ticks a second, cycling through the symbols."""

    def __init__(self, feed: SourceFeed, symbols: list[str], rate: float) -> None:
        rng = random.Random(1)
        self.feed = feed
        self.walks = [(s, RandomWalk("1000.00", rng)) for s in symbols]
        self.rate = rate
        self._changed = asyncio.Event()

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self._changed.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        walks, n = self.walks, len(self.walks)
        i = 0
        while True:
            self._changed.clear()
            started, sent = loop.time(), 0
            while not self._changed.is_set():
                if self.rate <= 0:
                    await self._changed.wait()
                    break
                due = int((loop.time() - started) * self.rate) - sent
                if due > 0:
                    ts = format_ts(datetime.now(UTC))
                    for _ in range(due):
                        symbol, walk = walks[i % n]
                        self.feed.publish(symbol, walk.step(), ts)
                        i += 1
                    sent += due
                await asyncio.sleep(TICK_EVERY)


def build(args: argparse.Namespace) -> Starlette:
    feed = SourceFeed(args.name, ring_size=args.ring_size, heartbeat=1.0)
    pacer = Pacer(feed, [s.strip() for s in args.symbols.split(",") if s.strip()], args.rate)

    async def set_rate(request: Request) -> JSONResponse:
        body = await request.json()
        pacer.set_rate(float(body["rate"]))
        return JSONResponse({"rate": pacer.rate, "next_seq": feed.next_seq})

    return source_app(feed, pacer.run, [Route("/rate", set_rate, methods=["POST"])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--symbols", default="S0,S1,S2,S3,S4,S5,S6,S7,S8,S9")
    parser.add_argument("--name", default="bench")
    parser.add_argument("--rate", type=float, default=0.0, help="ticks per second to start with")
    parser.add_argument("--ring-size", type=int, default=200_000)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    aio.run(serve_until_signal(build(args), "127.0.0.1", args.port))
