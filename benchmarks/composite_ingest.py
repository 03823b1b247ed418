"""Ingest throughput with composite prices on versus off, measured in the same run.

One hub in this process (no HTTP server: ingest → sequencer → ring → writer → PostgreSQL), fed
by ``tickhub source mock --interval 0 --limit N`` processes that all publish the same symbols,
each a venue of the built-in BTC-USD (BTCUSD) and ETH-USD (ETHUSD) instruments. Rounds alternate
off and on, each into a fresh schema; a round is timed from the first accepted tick to the last
tick (composites included) committed. Prints ticks/s of source ticks and hub CPU per source tick.

    .venv/bin/python benchmarks/composite_ingest.py --ticks 100000 --sources 2

Needs PostgreSQL: --database-url, else TICKHUB_DATABASE_URL, else the test database. Never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from tickhub import aio
from tickhub.config import Settings
from tickhub.hub import Hub

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
POLL = 0.002


@dataclass
class Round:
    composite: bool
    seconds: float
    cpu_seconds: float
    source_ticks: int
    composites: int

    @property
    def rate(self) -> float:
        return self.source_ticks / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.source_ticks * 1e6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mock source on port {port} did not start") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def poll(done: Callable[[], bool]) -> None:
    """Wait for ``done``; a short poll keeps the timing error to a few ms in runs of seconds."""
    while True:
        if done():
            return
        await asyncio.sleep(POLL)


def start_mock(name: str, port: int, symbols: str, limit: int, seed: int) -> subprocess.Popen[bytes]:
    argv = ["-m", "tickhub", "source", "mock", "--name", name, "--port", str(port), "--symbols", symbols]
    argv += [
        "--interval",
        "0",
        "--limit",
        str(limit),
        "--seed",
        str(seed),
        "--heartbeat",
        "1",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL)


async def one_round(args: argparse.Namespace, composite: bool) -> Round:
    schema = f"composite_bench_{uuid.uuid4().hex[:12]}"
    ports = [free_port() for _ in range(args.sources)]
    mocks = [start_mock(f"mock{i}", port, args.symbols, args.ticks, i) for i, port in enumerate(ports)]
    hub = None
    try:
        for port in ports:
            await wait_port(port)
        settings = Settings(
            database_url=args.database_url,
            database_schema=schema,
            sources=tuple((f"mock{i}", f"http://127.0.0.1:{port}/stream") for i, port in enumerate(ports)),
            instruments="" if composite else "none",
            composite_max_deviation=Decimal(args.max_deviation),
            log_level="warning",
        )
        hub = Hub(settings)
        await hub.start()
        clients = list(hub.ingest.clients.values())
        total = args.ticks * args.sources
        await poll(lambda: any(c.stats.accepted for c in clients))
        started, cpu = time.perf_counter(), time.process_time()
        await poll(
            lambda: (
                sum(c.stats.accepted for c in clients) >= total and hub.writer.persisted_id >= (hub.market.last_id or 0)
            )
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        composites = sum(book.published for book in hub.composite.books.values())
        return Round(composite, seconds, cpu, total, composites)
    finally:
        if hub is not None:
            await hub.stop()
        for mock in mocks:
            mock.terminate()
        for mock in mocks:
            mock.wait(10)
        conn = await asyncpg.connect(args.database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # a generated identifier, not data
        finally:
            await conn.close()


def summary(rounds: list[Round], composite: bool) -> tuple[float, float]:
    picked = [r for r in rounds if r.composite is composite]
    return statistics.median(r.rate for r in picked), statistics.median(r.cpu_us for r in picked)


async def main(args: argparse.Namespace) -> None:
    print(
        f"composite ingest: {args.sources} mock source(s) x {args.ticks} ticks of {args.symbols}, "
        f"{args.rounds} rounds each, off and on alternating"
    )
    rounds = []
    for _ in range(args.rounds):
        for composite in (False, True):
            r = await one_round(args, composite)
            rounds.append(r)
            print(
                f"  composite {'on ' if composite else 'off'}: {r.rate:>9,.0f} source ticks/s  "
                f"{r.cpu_us:6.1f} us hub CPU per tick  ({r.source_ticks:,} ticks + {r.composites:,} composites "
                f"in {r.seconds:.2f} s)"
            )
    off_rate, off_cpu = summary(rounds, False)
    on_rate, on_cpu = summary(rounds, True)
    print(f"median off: {off_rate:,.0f} ticks/s, {off_cpu:.1f} us/tick")
    print(f"median on:  {on_rate:,.0f} ticks/s, {on_cpu:.1f} us/tick")
    print(f"on/off: {on_rate / off_rate:.2f}x throughput, {on_cpu / off_cpu:.2f}x hub CPU per source tick")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=100_000, help="ticks per mock source (default %(default)s)")
    parser.add_argument("--sources", type=int, default=1, help="mock sources, each a venue (default %(default)s)")
    parser.add_argument("--symbols", default="BTCUSD", help="symbols of every mock (default %(default)s)")
    parser.add_argument(
        "--max-deviation",
        default="100",
        help="TICKHUB_COMPOSITE_MAX_DEVIATION; the default keeps drifting random walks from being outliers",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of off and on (default %(default)s)")
    parser.add_argument(
        "--database-url", default=os.environ.get("TICKHUB_DATABASE_URL") or DEFAULT_URL, help="PostgreSQL DSN"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    aio.run(main(parse_args()))  # uvloop where installed, as the hub runs
