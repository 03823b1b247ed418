"""Storage: ingest, history and candles as the one ``ticks`` table grows (``--only storage``).

One schema throughout. On the empty table: mock sources through the hub (the ingest rate), then the
hub's history and a day of 1-minute candles over the ticks they wrote, and the bytes each tick takes.
Then the table is grown to each size by COPY of archived ticks of past days (:mod:`.tick_archive`:
the rows of a hub run of their own, so every id a later hub issues is above them), ANALYZE and a
CHECKPOINT, and the same four figures are measured on it, the queries on an archived symbol. The
schema and the hubs' data directory are removed at the end, whatever happens.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode

import aiohttp
import asyncpg
import orjson

from tickhub import partitions
from tickhub.store import RUN_SPAN, SQL_NEW_RUN
from tickhub.wire import format_ts

from .common import PYTHON, free_port, fresh_schema, progress, spawn, stop, wait_http
from .ingest import IngestRun, run_ingest
from .tick_archive import ARCHIVE_SOURCES, ARCHIVE_SYMBOLS, TickArchive, copy_archive

MOCK_SYMBOLS = "BTCUSD,TCSG,META"
EMPTY_SYMBOL = "BTCUSD"  # on the empty table the queries read the ticks the ingest has just written
ARCHIVE_SYMBOL = "ETHUSD"
TICKS_PER_DAY = 500_000  # the archive's rate: 62,500 ticks a day of each of its 8 symbols
HISTORY_LIMIT = 1000
WARMUP = 5  # requests before the timed ones: the figures are those of a hub that has served a while
COPY_BATCH = 1_000_000  # archived rows a transaction
DISK_MARGIN = 1.3  # the growth is skipped unless the disk has this times the rows' estimated size free

# The table's partitions (days, past, future) summed: the parent itself holds nothing.
SQL_SIZES = """
SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint, coalesce(sum(pg_indexes_size(t.relid)), 0)::bigint
FROM pg_partition_tree('ticks') AS t WHERE t.isleaf
"""
# What the hub's writer keeps for every (symbol, source): the archive's newest, so a hub knows its symbols.
SQL_LATEST_OF = """
INSERT INTO latest_ticks (symbol, source, id, price, ts, seq, qty, side, trade_id, bid, bid_qty, ask, ask_qty, extra)
SELECT t.symbol, t.source, t.id, t.price, t.ts, t.seq, t.qty, t.side, t.trade_id, t.bid, t.bid_qty, t.ask,
       t.ask_qty, t.extra
FROM unnest($1::text[]) AS s (symbol) CROSS JOIN unnest($2::text[]) AS r (source)
CROSS JOIN LATERAL (
    SELECT * FROM ticks WHERE ticks.symbol = s.symbol AND ticks.source = r.source ORDER BY ts DESC, id DESC LIMIT 1
) AS t
ON CONFLICT (symbol, source) DO UPDATE
    SET id = EXCLUDED.id, price = EXCLUDED.price, ts = EXCLUDED.ts, seq = EXCLUDED.seq, qty = EXCLUDED.qty,
        side = EXCLUDED.side, trade_id = EXCLUDED.trade_id, bid = EXCLUDED.bid, bid_qty = EXCLUDED.bid_qty,
        ask = EXCLUDED.ask, ask_qty = EXCLUDED.ask_qty, extra = EXCLUDED.extra
    WHERE latest_ticks.id < EXCLUDED.id
"""


@dataclass
class QueryTimes:
    """One query asked ``requests`` times, one at a time, after :data:`WARMUP` untimed."""

    requests: int
    p50: float  # ms, request to the last byte of the answer
    p99: float
    ticks: int  # ticks in the answer: returned (history) or counted into the candles
    items: int  # ticks or candles in the answer

    @classmethod
    def of(cls, samples: list[float], ticks: int, items: int) -> QueryTimes:
        ordered = sorted(samples)

        def at(p: float) -> float:
            return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)] * 1000

        return cls(len(ordered), at(50), at(99), ticks, items)


@dataclass
class StorageStep:
    rows: int  # in the table when the ingest started
    runs: list[IngestRun]
    symbol: str  # the queries'
    history: QueryTimes
    candles: QueryTimes
    table_rows: int  # when the queries ran and the size was read
    total_bytes: int  # heap, TOAST and indexes
    index_bytes: int
    grow_rate: float = 0.0  # archived rows a second COPY put in to reach ``rows``
    drop: DayDrop | None = None  # the oldest day dropped by retention while the mocks ingest (largest size)

    @property
    def rate(self) -> float:
        """The best of the ingest runs: other work on the machine only ever slows one down."""
        return max(r.rate for r in self.runs)

    @property
    def bytes_per_tick(self) -> float:
        return self.total_bytes / self.table_rows


@dataclass
class DayDrop:
    """Retention dropping the oldest day of the table while an ingest runs."""

    rows: int  # the day's ticks
    seconds: float  # the maintenance transaction, its wait for the table's lock included
    run: IngestRun  # the ingest it ran during


def hub_env(database_url: str, schema: str, data_dir: str) -> dict[str, str]:
    return {
        "TICKHUB_DATABASE_URL": database_url,
        "TICKHUB_DATABASE_SCHEMA": schema,
        "TICKHUB_DATA_DIR": data_dir,
        "TICKHUB_LOG_LEVEL": "warning",
        "TICKHUB_INSTRUMENTS": "none",
    }


async def _timed(session: aiohttp.ClientSession, url: str, requests: int) -> tuple[list[float], bytes]:
    """Seconds of each of ``requests`` GETs of ``url`` after the warm-up, and the last answer."""
    samples, body = [], b""
    for i in range(WARMUP + requests):
        started = time.perf_counter()
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {url}: {resp.status} {body[:200]!r}")
        if i >= WARMUP:
            samples.append(time.perf_counter() - started)
    return samples, body


async def query_times(
    database_url: str, schema: str, data_dir: str, symbol: str, since: datetime, until: datetime, requests: int
) -> tuple[QueryTimes, QueryTimes]:
    """A hub with no sources on ``schema``: ``history?limit=1000`` of ``symbol``, then its 1-minute
    candles over [since, until)."""
    port = free_port()
    env = {**hub_env(database_url, schema, data_dir), "TICKHUB_PORT": str(port)}
    hub = spawn([PYTHON, "-m", "tickhub", "hub"], env)
    try:
        base = f"http://127.0.0.1:{port}/prices/{symbol}"
        await wait_http(f"http://127.0.0.1:{port}/ping", timeout=60)
        window = {"interval": "1m", "since": format_ts(since), "until": format_ts(until), "limit": "1440"}
        async with aiohttp.ClientSession() as session:
            samples, body = await _timed(session, f"{base}/history?limit={HISTORY_LIMIT}", requests)
            returned = orjson.loads(body)["ticks"]
            history = QueryTimes.of(samples, len(returned), len(returned))
            samples, body = await _timed(session, f"{base}/candles?{urlencode(window)}", requests)
            buckets = orjson.loads(body)["candles"]
            candles = QueryTimes.of(samples, sum(c["count"] for c in buckets), len(buckets))
        return history, candles
    finally:
        stop([hub])


async def grow(conn: asyncpg.Connection, schema: str, archive: TickArchive, rows: int, target: int) -> float:
    """COPY archived rows until the table holds ``target``, as one hub run of its own; the rows a second."""
    first_id = await conn.fetchval(SQL_NEW_RUN, "benchmarks") * RUN_SPAN + 1
    need, done = target - rows, 0
    started = reported = time.perf_counter()
    while done < need:
        done += await copy_archive(conn, schema, archive, first_id + done, min(COPY_BATCH, need - done))
        if time.perf_counter() - reported > 30 or done == need:
            reported = time.perf_counter()
            progress(f"  grown to {rows + done:,} rows ({done / (reported - started):,.0f} rows/s)")
    rate = done / (time.perf_counter() - started)
    await conn.execute(SQL_LATEST_OF, list(ARCHIVE_SYMBOLS), list(ARCHIVE_SOURCES))
    await conn.execute("ANALYZE ticks")
    await conn.execute("CHECKPOINT")  # the load's dirty pages written now, not during the measurements
    return rate


def _free_at(path: str) -> int | None:
    return shutil.disk_usage(path).free if os.path.isdir(path) else None


async def free_disk(conn: asyncpg.Connection) -> int | None:
    """Bytes free where PostgreSQL keeps its data, if that is on this machine and may be asked."""
    try:
        path = await conn.fetchval("SHOW data_directory")
    except asyncpg.PostgresError:
        return None
    return _free_at(path)


async def measure(
    args, schema: str, data_dir: str, rows: int, plan: tuple[int, int, int, int], symbol: str, until: datetime | None
) -> StorageStep:
    """The ingest into the table as it is, then the queries over the day before ``until`` (None: now)."""
    sources, ticks, rounds, requests = plan
    label, fields = f"ingest at {rows:,} rows", ("--fields", "all")
    runs = []
    for _ in range(rounds):
        runs.append(
            await run_ingest(
                args.database_url, schema, sources, ticks, MOCK_SYMBOLS, label, fields, TICKHUB_DATA_DIR=data_dir
            )
        )
    until = until or datetime.now(UTC)
    history, candles = await query_times(
        args.database_url, schema, data_dir, symbol, until - timedelta(days=1), until, requests
    )
    conn = await asyncpg.connect(args.database_url, server_settings={"search_path": schema})
    try:
        total, indexes = await conn.fetchrow(SQL_SIZES)
    finally:
        await conn.close()
    table_rows = rows + sum(r.stored for r in runs)
    step = StorageStep(rows, runs, symbol, history, candles, table_rows, total, indexes)
    progress(
        f"  {rows:,} rows: history of {symbol} p50 {history.p50:.1f} / p99 {history.p99:.1f} ms, "
        f"a day of 1m candles ({candles.ticks:,} ticks, {candles.items:,} candles) "
        f"p50 {candles.p50:.1f} / p99 {candles.p99:.1f} ms; "
        f"{step.bytes_per_tick:.0f} bytes a tick, {total / 2**20:,.0f} MiB with indexes"
    )
    return step


def at_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def drop_a_day(
    args, schema: str, data_dir: str, conn: asyncpg.Connection, archive: TickArchive, plan: tuple[int, int, int, int]
) -> DayDrop:
    """An ingest run like the others; a second into it, retention drops the archive's oldest day."""
    sources, ticks, _, _ = plan
    day = (await partitions.days(conn))[0]
    rows = await conn.fetchval(f"SELECT count(*) FROM {partitions.day_name(day)}")
    fields = ("--fields", "all")
    ingest = asyncio.ensure_future(
        run_ingest(
            args.database_url,
            schema,
            sources,
            ticks,
            MOCK_SYMBOLS,
            "ingest while a day is dropped",
            fields,
            TICKHUB_DATA_DIR=data_dir,
        )
    )
    await asyncio.sleep(1.0)  # the hub is up and its writer busy (a benchmark may wait; a test may not)
    now = datetime.now(UTC)
    change = await partitions.maintain(conn, now, now - at_midnight(day + timedelta(days=1)))
    run = await ingest
    if change is None or partitions.day_name(day) not in change.dropped:
        raise RuntimeError(f"retention did not drop {day}: {change}")
    progress(
        f"  dropped {day} ({rows:,} ticks) in {change.seconds * 1000:.0f} ms during an ingest of {run.rate:,.0f}/s"
    )
    return DayDrop(rows, change.seconds, run)


async def storage_growth(
    args, sources: int, ticks: int, sizes: list[int], rounds: int, requests: int
) -> list[StorageStep]:
    """The four figures on the empty table, then at each of ``sizes`` rows (a list, growing)."""
    progress(
        f"storage: {sources} mock sources x {ticks:,} ticks into the empty table, then at "
        f"{', '.join(f'{s:,}' for s in sizes)} rows; {requests} requests of each query"
    )
    plan = (sources, ticks, rounds, requests)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    archive = TickArchive(today - timedelta(days=math.ceil(max(sizes) / TICKS_PER_DAY) + 1), TICKS_PER_DAY)
    with tempfile.TemporaryDirectory(prefix="tickhub-bench-storage-") as data_dir:
        async with fresh_schema(args.database_url, "bench_storage") as schema:
            steps = [await measure(args, schema, data_dir, 0, plan, EMPTY_SYMBOL, None)]
            conn = await asyncpg.connect(args.database_url, server_settings={"search_path": schema})
            try:
                # The archive's days get partitions of their own, as a hub keeping that many days has them.
                keep = datetime.now(UTC) - archive.time_of(0)
                await partitions.maintain(conn, datetime.now(UTC), keep)
                for size in sizes:
                    rows = steps[-1].table_rows
                    need = (size - rows) * steps[-1].bytes_per_tick * DISK_MARGIN
                    free = await free_disk(conn)
                    if free is not None and free < need:
                        progress(f"  not growing to {size:,} rows: ~{need / 1e9:.0f} GB needed, {free / 1e9:.0f} free")
                        break
                    rate = await grow(conn, schema, archive, rows, size)
                    until = archive.newest.replace(second=0, microsecond=0) + timedelta(minutes=1)
                    step = await measure(args, schema, data_dir, size, plan, ARCHIVE_SYMBOL, until)
                    step.grow_rate = rate
                    steps.append(step)
                if len(steps) > 1:
                    steps[-1].drop = await drop_a_day(args, schema, data_dir, conn, archive, plan)
            finally:
                await conn.close()
    progress("  the table dropped")
    return steps
