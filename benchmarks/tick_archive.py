"""Ticks of past days, made up fast as the text COPY rows of the hub's ``ticks`` table.

The storage scenario grows the table to 10^8 rows with these: each row is what the hub's writer would
have stored for a tick with every optional field (the same text as :func:`tickhub.store.copy_rows`),
from sources the benchmark's mocks never use, at a steady rate through past days.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg

from tickhub.rollup import roll_up
from tickhub.store import STORED_COLUMNS

ARCHIVE_SOURCES = ("archive0", "archive1", "archive2", "archive3")
#: Symbols of the archive, with the price in cents each walk starts from (none the mocks quote).
ARCHIVE_SYMBOLS = {
    "ETHUSD": 300_000,
    "SOLUSD": 15_000,
    "LTCUSD": 8_000,
    "BNBUSD": 60_000,
    "AAPL": 19_000,
    "MSFT": 42_000,
    "NVDA": 12_000,
    "AMZN": 18_000,
}
DAY_US = 86_400 * 10**6

# id, source, symbol, price, ts, seq, qty, side, trade_id, bid, bid_qty, ask, ask_qty, extra (none)
_ROW = b"%d\t%b\t%b\t%d.%02d\t%b.%06dZ\t%d\t%d.%03d\t%b\t%d\t%d.%02d\t%d\t%d.%02d\t%d\t\\N\n"
_SIDES = (b"buy", b"sell")


class TickArchive:
    """A steady stream of ticks from ``start``, ``per_day`` of them a day, row ``n`` for symbol
    ``n % 8`` from source ``n // 8 % 4``: every (symbol, source) once in each 32 rows.

    Each symbol's price walks by a cent a tick; the tick is a trade (size, side, trade id) with the
    best bid and ask around it. ``seq`` and ``trade_id`` are ``n + 1``, so they grow within each
    source; ids are the caller's (:meth:`copy_text`). Made one call at a time, in any thread.
    """

    def __init__(self, start: datetime, per_day: int, seed: int = 0) -> None:
        if per_day <= 0:
            raise ValueError("per_day must be > 0")
        self.start_us = int(start.timestamp()) * 10**6
        self.per_day = per_day
        self.made = 0
        self._rng = random.Random(seed)
        self._cents = list(ARCHIVE_SYMBOLS.values())
        self._symbols = tuple(s.encode() for s in ARCHIVE_SYMBOLS)
        self._sources = tuple(s.encode() for s in ARCHIVE_SOURCES)

    def time_of(self, n: int) -> datetime:
        """The source time of row ``n``."""
        us = self.start_us + n * DAY_US // self.per_day
        return datetime.fromtimestamp(us // 10**6, UTC) + timedelta(microseconds=us % 10**6)

    @property
    def newest(self) -> datetime | None:
        """The source time of the newest row made, None before the first."""
        return self.time_of(self.made - 1) if self.made else None

    def copy_text(self, first_id: int, count: int) -> bytes:
        """The next ``count`` rows as COPY text for :data:`STORED_COLUMNS`, with ids from ``first_id``."""
        bits, cents, symbols, sources = self._rng.getrandbits, self._cents, self._symbols, self._sources
        n_symbols, n_sources, start_us, per_day = len(symbols), len(sources), self.start_us, self.per_day
        rows = []
        second, stamp = -1, b""
        first = self.made
        for i in range(count):
            n = first + i
            k = n % n_symbols
            r = bits(16)  # bit 0: the step, 1: the side, 2-11: the size, 12-13: the spread, 4-15: quote sizes
            c = cents[k] + (1 if r & 1 else -1)
            cents[k] = c = c if c > 100 else 101
            us = start_us + n * DAY_US // per_day
            if us // 10**6 != second:  # a few ticks a second share the formatted date
                second = us // 10**6
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            size = (r >> 2 & 1023) + 1
            spread = (r >> 12 & 3) + 1
            bid, ask = c - spread, c + spread
            rows.append(
                _ROW
                % (
                    first_id + i,
                    sources[n // n_symbols % n_sources],
                    symbols[k],
                    c // 100,
                    c % 100,
                    stamp,
                    us % 10**6,
                    n + 1,
                    size // 1000,
                    size % 1000,
                    _SIDES[r >> 1 & 1],
                    n + 1,
                    bid // 100,
                    bid % 100,
                    (r >> 4 & 255) + 1,
                    ask // 100,
                    ask % 100,
                    (r >> 8 & 255) + 1,
                )
            )
        self.made = first + count
        return b"".join(rows)


async def _made_ahead(archive: TickArchive, first_id: int, count: int, chunk: int) -> AsyncIterator[bytes]:
    """``count`` rows in chunks, each made in a thread while the one before is sent: PostgreSQL parses
    one chunk while Python formats the next."""
    done = 0
    making = asyncio.ensure_future(asyncio.to_thread(archive.copy_text, first_id, min(chunk, count)))
    try:
        while making is not None:
            data = await making
            done += min(chunk, count - done)
            making = None
            if done < count:
                n = min(chunk, count - done)
                making = asyncio.ensure_future(asyncio.to_thread(archive.copy_text, first_id + done, n))
            yield data
    finally:
        if making is not None:  # the COPY stopped early: the chunk in hand finishes, nothing waits on it
            with contextlib.suppress(Exception):
                await making


async def copy_archive(
    conn: asyncpg.Connection, schema: str, archive: TickArchive, first_id: int, count: int, chunk: int = 50_000
) -> int:
    """COPY the archive's next ``count`` rows into ``schema``'s ticks in one transaction, with their candle
    rollups as the hub's writer keeps them (``conn``'s search path must be ``schema``); the rows copied."""
    start = archive.made
    async with conn.transaction():
        status = await conn.copy_to_table(
            "ticks", source=_made_ahead(archive, first_id, count, chunk), columns=STORED_COLUMNS, schema_name=schema
        )
        copied = int(status.split()[-1])
        if copied:
            last = start + copied - 1
            await roll_up(conn, [(first_id, first_id + copied - 1)], archive.time_of(start), archive.time_of(last))
    return copied
