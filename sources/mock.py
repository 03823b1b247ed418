"""The mock source: a random walk per symbol, served as SSE.

Each step: with 15% probability the direction flips, then ``price -= randint(0, 10) * step *
direction``, kept to 2 decimals (as integer cents) and never at or below zero.

Each step is also a trade with a best quote around it (``--fields all``, the default): a size, the
aggressor's side (up: a buyer lifted the ask, down: a seller hit the bid), a trade id counting up per
symbol, and a bid and ask a spread of 1-8 cents apart with sizes, the trade at the ask or the bid.
They come from a generator of their own, so a ``--seed`` gives the same prices with or without them.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from datetime import UTC, datetime

from starlette.applications import Starlette

from tickhub import aio
from tickhub.wire import OPTIONAL_FIELDS, SYMBOL_RE, TickFields, format_ts

from .app import source_app
from .feed import SourceFeed
from .serve import serve_until_signal

DEFAULT_START = {"BTCUSD": "43000.00", "TCSG": "3000.00", "META": "480.00"}
FALLBACK_START = "100.00"
# Ticks per burst at --interval 0: a consumer gets each burst as one chunk, one send, and a send through
# sse-starlette and uvicorn costs ~25 µs more than aiohttp's write did (BENCHMARKS.md): 0.1 µs a tick
# at 256 a burst, ~0.01 at 2000.
FAST_BATCH = 2000


class RandomWalk:
    """One symbol's price in integer cents."""

    def __init__(self, start: str, rng: random.Random, step_cents: int = 100) -> None:
        units, _, frac = start.partition(".")
        self.cents = int(units) * 100 + int((frac + "00")[:2])
        if self.cents <= 0:
            raise ValueError(f"start price must be above zero, got {start!r}")
        self.rng = rng
        self.step_cents = step_cents
        self.direction = 1

    def step(self) -> str:
        rng = self.rng
        if rng.random() < 0.15:
            self.direction = -self.direction
        delta = rng.randint(0, 10) * self.step_cents * self.direction
        price = self.cents - delta
        if price <= 0:  # bounce off zero instead of crossing it
            self.direction = -self.direction
            price = self.cents + abs(delta)
        self.cents = price
        return self.price

    @property
    def price(self) -> str:
        return f"{self.cents // 100}.{self.cents % 100:02d}"


def parse_start(raw: str | None, symbols: list[str]) -> dict[str, str]:
    """``BTCUSD=43000,META=480.5`` → start prices for every symbol (defaults for the rest)."""
    given: dict[str, str] = {}
    for item in filter(None, (raw or "").split(",")):
        symbol, sep, price = item.partition("=")
        if not sep:
            raise ValueError(f"--start expects SYMBOL=PRICE, got {item!r}")
        given[symbol.strip().upper()] = price.strip()
    return {s: given.get(s, DEFAULT_START.get(s, FALLBACK_START)) for s in symbols}


def _cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _size(units: int) -> str:
    """A size in ten-thousandths: ``12345`` → ``1.2345``."""
    return f"{units // 10000}.{units % 10000:04d}"


class TradeQuotes:
    """The trade and the best quote of each step of a walk: the optional tick fields, seedable."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.trade_ids: dict[str, int] = {}

    def values(self, symbol: str, walk: RandomWalk, before: int) -> tuple[str, ...]:
        """The fields (qty, side, trade_id, bid, bid_qty, ask, ask_qty) of the step of ``symbol``'s walk
        that moved it from ``before`` cents to ``walk.cents``."""
        bits = self.rng.getrandbits(40)  # one draw for everything: the mock runs as fast as it can
        price = walk.cents
        buy = price > before or (price == before and bits & 1)
        spread = 1 + (bits >> 1 & 7)
        if buy and price - spread <= 0:  # no bid at or below zero: the trade hits the bid instead
            buy = False
        trade_id = self.trade_ids.get(symbol, 0) + 1
        self.trade_ids[symbol] = trade_id
        last = walk.price
        return (
            _TRADE_SIZES[bits >> 4 & 0xFFF],
            "buy" if buy else "sell",
            str(trade_id),
            _cents(price - spread) if buy else last,
            _BOOK_SIZES[bits >> 16 & 0xFFF],
            last if buy else _cents(price + spread),
            _BOOK_SIZES[bits >> 28 & 0xFFF],
        )

    def fields(self, symbol: str, walk: RandomWalk, before: int) -> dict[str, str]:
        """:meth:`values` by name."""
        return dict(zip(OPTIONAL_FIELDS, self.values(symbol, walk, before), strict=True))

    def tick_fields(self, symbol: str, walk: RandomWalk, before: int) -> TickFields:
        """:meth:`values` as the wire's TickFields: the feed writes their JSON as it is."""
        values = self.values(symbol, walk, before)
        return TickFields((_JSON_TAIL % values).encode(), b"")  # the COPY row: the hub's, not the source's


# Sizes in ten-thousandths, drawn from tables: a lookup instead of a format per field and tick.
_TRADE_SIZES = [_size(1 + 16 * i + i % 16) for i in range(4096)]  # 0.0001 .. 6.5551
_BOOK_SIZES = [_size(64 * i + i % 64) for i in range(4096)]  # 0 .. 26.2143

# The seven fields as the JSON that follows "seq", in the wire's order: one format per tick.
_JSON_TAIL = "".join(f',"{name}":"%s"' for name in OPTIONAL_FIELDS)


class MockMarket:
    """Publishes one step of every symbol's walk each ``interval`` seconds (0: as fast as consumed);
    with ``quotes``, each with its trade and best quote."""

    def __init__(
        self,
        feed: SourceFeed,
        walks: dict[str, RandomWalk],
        interval: float,
        limit: int | None = None,
        quotes: TradeQuotes | None = None,
    ):
        self.feed = feed
        self.walks = walks
        self.interval = interval
        self.limit = limit
        self.quotes = quotes

    def _publish(self, symbol: str, walk: RandomWalk, ts: str | None = None) -> None:
        before = walk.cents
        price = walk.step()
        fields = None if self.quotes is None else self.quotes.tick_fields(symbol, walk, before)
        self.feed.publish(symbol, price, ts, fields)

    async def run(self) -> None:
        feed, walks, publish = self.feed, list(self.walks.items()), self._publish
        burst = max(1, min(FAST_BATCH, feed.capacity // 4))  # a burst never laps a consumer in a small ring
        emitted = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self.limit is None or emitted < self.limit:
            if self.interval > 0:
                for symbol, walk in walks:
                    publish(symbol, walk)
                    emitted += 1
                next_at += self.interval
                await asyncio.sleep(max(0.0, next_at - loop.time()))
            else:
                await feed.wait_for_room()
                n = burst if self.limit is None else min(burst, self.limit - emitted)
                ts = format_ts(datetime.now(UTC))  # one burst, one instant
                for i in range(n):
                    symbol, walk = walks[i % len(walks)]
                    publish(symbol, walk, ts)
                emitted += n
                await asyncio.sleep(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", default="BTCUSD,TCSG,META", help="comma-separated symbols (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between steps; 0 = as fast as consumed")
    parser.add_argument("--start", default=None, help="start prices, e.g. BTCUSD=43000,META=480.50")
    parser.add_argument("--step", type=float, default=1.0, help="price unit of one random-walk step (default 1.00)")
    parser.add_argument("--name", default="mock", help="source name in the events (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="stop publishing after this many ticks")
    parser.add_argument("--ring-size", type=int, default=100_000, help="events kept for Last-Event-ID resume")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeat comments")
    parser.add_argument(
        "--send-timeout", type=float, default=30.0, help="seconds a consumer may stop reading before it is dropped"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable walks")
    parser.add_argument(
        "--fields",
        choices=("all", "price"),
        default="all",
        help="all: each tick a trade (qty, side, trade_id) with the best quote (bid, ask, sizes); price: alone",
    )


def build(args: argparse.Namespace) -> Starlette:
    """The mock source's app from its command-line flags; ValueError names a bad flag."""
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    if not symbols or any(not SYMBOL_RE.match(s) for s in symbols):
        raise ValueError(f"--symbols: expected comma-separated upper-case symbols, got {args.symbols!r}")
    if args.interval < 0:
        raise ValueError("--interval must be >= 0")
    for flag in ("heartbeat", "send_timeout"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0")
    if args.ring_size <= 0:
        raise ValueError("--ring-size must be > 0")
    rng = random.Random(args.seed)
    step_cents = round(args.step * 100)
    if step_cents <= 0:
        raise ValueError("--step must be at least 0.01")
    walks = {s: RandomWalk(p, rng, step_cents) for s, p in parse_start(args.start, symbols).items()}
    feed = SourceFeed(args.name, ring_size=args.ring_size, heartbeat=args.heartbeat, send_timeout=args.send_timeout)
    quotes = None
    if args.fields == "all":  # a generator of their own: the same seed gives the same prices either way
        quotes = TradeQuotes(random.Random(None if args.seed is None else f"{args.seed}:quotes"))
    market = MockMarket(feed, walks, args.interval, args.limit, quotes)
    return source_app(feed, market.run)


def main(args: argparse.Namespace) -> None:
    app = build(args)
    aio.run(serve_until_signal(app, args.host, args.port))
