"""Ingest scenarios: mock sources as fast as they go → hub → PostgreSQL, against raw COPY of the same rows."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
import orjson
import psutil

from tickhub.store import STORED_COLUMNS, migrations
from tickhub.wire import tick_frame

from .common import PYTHON, CpuMeter, free_port, fresh_schema, get_json, progress, spawn, stop, wait_http

POLL = 0.02


def postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("postgres", "postgresql")]


@dataclass
class IngestRun:
    label: str
    sources: int
    source_ticks: int
    stored: int  # rows written, composites included
    seconds: float
    hub_cpu: float  # % of one core
    source_cpu: float
    postgres_cpu: float
    backlog_peak: int  # most ticks waiting for the writer at one reading
    rss_peak: int  # the hub's resident memory at most, bytes
    frame_bytes: float = 0.0  # the mean size of a tick's SSE frame, from the latest tick of each symbol

    @property
    def rate(self) -> float:
        return self.source_ticks / self.seconds

    @property
    def hub_us_per_tick(self) -> float:
        return self.hub_cpu / 100 * self.seconds / self.source_ticks * 1e6


@dataclass
class CopyBaseline:
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


async def run_ingest(
    database_url: str,
    schema: str,
    sources: int,
    ticks: int,
    symbols: str,
    label: str,
    mock_args: tuple[str, ...] = ("--fields", "price"),
    **hub_env: str,
) -> IngestRun:
    """``sources`` mock processes of ``ticks`` each at --interval 0 into one hub; timed to the last commit.
    The mocks publish the price alone unless ``mock_args`` say otherwise."""
    ports = [free_port() for _ in range(sources)]
    procs = []
    for i, port in enumerate(ports):
        argv = [PYTHON, "-m", "tickhub", "source", "mock", "--name", f"mock{i}", "--port", str(port)]
        argv += ["--symbols", symbols, "--interval", "0", "--limit", str(ticks), "--seed", str(i)]
        procs.append(spawn([*argv, *mock_args, "--heartbeat", "1", "--log-level", "warning"]))
    hub_port = free_port()
    env = {
        "TICKHUB_DATABASE_URL": database_url,
        "TICKHUB_DATABASE_SCHEMA": schema,
        "TICKHUB_SOURCES": ",".join(f"mock{i}=http://127.0.0.1:{p}/stream" for i, p in enumerate(ports)),
        "TICKHUB_PORT": str(hub_port),
        "TICKHUB_LOG_LEVEL": "warning",
        "TICKHUB_INSTRUMENTS": "none",
        **hub_env,
    }
    try:
        for port in ports:
            await wait_http(f"http://127.0.0.1:{port}/")
        hub = spawn([PYTHON, "-m", "tickhub", "hub"], env, quiet=False)
        procs.append(hub)
        total = ticks * sources
        url, prices = f"http://127.0.0.1:{hub_port}/health", f"http://127.0.0.1:{hub_port}/prices"
        async with aiohttp.ClientSession() as session:
            await wait_http(f"http://127.0.0.1:{hub_port}/ping", timeout=60)
            hub_cpu, mock_cpu = CpuMeter([hub.pid]), CpuMeter([p.pid for p in procs[:-1]])
            pg_cpu = CpuMeter(postgres_pids())
            while True:  # the mocks start when the hub connects: the clock starts at the first tick
                health = await get_json(session, url)
                if any(s["accepted"] for s in health["sources"].values()):
                    break
                await asyncio.sleep(POLL)
            started = time.perf_counter()
            for meter in (hub_cpu, mock_cpu, pg_cpu):
                meter.restart()
            deadline = started + 300
            backlog_peak = rss_peak = 0
            while True:
                health = await get_json(session, url)
                backlog_peak = max(backlog_peak, health["writer"]["backlog"])
                rss_peak = max(rss_peak, hub_cpu.rss())
                accepted = sum(s["accepted"] for s in health["sources"].values())
                persisted = int(health["writer"]["persisted_id"] or 0)
                if accepted >= total and persisted >= int(health["last_id"] or 0) and not health["writer"]["backlog"]:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"ingest did not finish: {accepted} of {total} accepted")
                await asyncio.sleep(POLL)
            seconds = time.perf_counter() - started
            cpu = (hub_cpu.percent(), mock_cpu.percent(), pg_cpu.percent())
            frames = [tick_frame(int(t["id"]), orjson.dumps(t)) for t in (await get_json(session, prices))["prices"]]
        frame_bytes = sum(map(len, frames)) / len(frames)
        written = health["writer"]["written"]
        run = IngestRun(label, sources, total, written, seconds, *cpu, backlog_peak, rss_peak, frame_bytes)
        progress(
            f"  {label}: {run.rate:,.0f} ticks/s persisted ({total:,} from {sources} sources in {seconds:.2f} s); "
            f"CPU: hub {cpu[0]:.0f}%, sources {cpu[1]:.0f}%, PostgreSQL {cpu[2]:.0f}%; "
            f"writer backlog at most {backlog_peak:,}, hub RSS at most {rss_peak / 2**20:.0f} MiB"
        )
        return run
    finally:
        stop(reversed(procs))


COLUMNS = STORED_COLUMNS
SQL_ROWS = f"SELECT {', '.join(COLUMNS)} FROM {{schema}}.ticks ORDER BY id"


async def raw_copy(database_url: str, from_schema: str, batch: int) -> CopyBaseline:
    """The hub's stored rows copied again with asyncpg's ``copy_records_to_table`` into a fresh table of
    the same shape (the same migrations: keys, the (source, seq) constraint, indexes), ``batch`` rows a
    transaction: what PostgreSQL and asyncpg alone can do, for the ratio."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(SQL_ROWS.format(schema=from_schema))  # generated identifier, not data
        records = [tuple(r) for r in rows]
        async with fresh_schema(database_url, "bench_copy") as schema:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(f'SET search_path = "{schema}"')
            for _, sql in migrations():
                await conn.execute(sql)
            started = time.perf_counter()
            for low in range(0, len(records), batch):
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "ticks", records=records[low : low + batch], columns=COLUMNS, schema_name=schema
                    )
            seconds = time.perf_counter() - started
            await conn.execute("RESET search_path")
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    baseline = CopyBaseline(len(records), seconds)
    progress(f"  raw COPY baseline: {baseline.rate:,.0f} rows/s ({len(records):,} rows in {seconds:.2f} s)")
    return baseline


async def ingest_vs_copy(args, sources: int, ticks: int) -> tuple[IngestRun, CopyBaseline]:
    progress(f"ingest: {sources} mock sources x {ticks:,} ticks, then raw COPY of the same rows")
    async with fresh_schema(args.database_url, "bench_ingest") as schema:
        run = await run_ingest(args.database_url, schema, sources, ticks, "BTCUSD,TCSG,META", "hub")
        baseline = await raw_copy(args.database_url, schema, batch=5000)
    return run, baseline


async def composite_on_off(args, sources: int, ticks: int, rounds: int) -> list[IngestRun]:
    """Every source quotes BTCUSD, a venue of the built-in BTC-USD: each source tick moves a composite."""
    progress(f"composite: {sources} venues x {ticks:,} ticks, composites off and on, {rounds} rounds")
    runs = []
    for _ in range(rounds):
        for label, instruments in (("composite off", "none"), ("composite on", "")):
            async with fresh_schema(args.database_url, "bench_composite") as schema:
                env = {"TICKHUB_INSTRUMENTS": instruments, "TICKHUB_COMPOSITE_MAX_DEVIATION": "100"}
                runs.append(await run_ingest(args.database_url, schema, sources, ticks, "BTCUSD", label, **env))
    return runs


WAL_MODES = (
    ("log off", {"TICKHUB_WAL": "off"}),
    ("log on", {}),
    ("log on, fsync batch", {"TICKHUB_WAL_FSYNC": "batch"}),
)


async def wal_on_off(args, sources: int, ticks: int, rounds: int) -> list[IngestRun]:
    """The same ingest with the write-ahead log off, on, and on with an fdatasync per batch, in turns."""
    progress(f"wal: {sources} mock sources x {ticks:,} ticks, the write-ahead log off and on, {rounds} rounds")
    runs = []
    for _ in range(rounds):
        for label, mode in WAL_MODES:
            with tempfile.TemporaryDirectory(prefix="tickhub-bench-wal-") as data_dir:
                async with fresh_schema(args.database_url, "bench_wal") as schema:
                    env = {**mode, "TICKHUB_DATA_DIR": data_dir}
                    symbols = "BTCUSD,TCSG,META"
                    runs.append(await run_ingest(args.database_url, schema, sources, ticks, symbols, label, **env))
    return runs


FIELD_MODES = (("price only", ("--fields", "price")), ("all fields", ("--fields", "all")))


async def fields_on_off(args, sources: int, ticks: int, rounds: int) -> list[IngestRun]:
    """The same ingest with the mocks publishing the price alone, then every optional field (size, side,
    trade id, best bid and ask with sizes), in turns."""
    progress(f"fields: {sources} mock sources x {ticks:,} ticks, price only and all fields, {rounds} rounds")
    runs = []
    for _ in range(rounds):
        for label, mock_args in FIELD_MODES:
            async with fresh_schema(args.database_url, "bench_fields") as schema:
                symbols = "BTCUSD,TCSG,META"
                runs.append(await run_ingest(args.database_url, schema, sources, ticks, symbols, label, mock_args))
    return runs
