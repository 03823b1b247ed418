"""Exactly once across crashes: the hub SIGKILLed at random points under load, 50 subscribers following
and resuming by Last-Event-ID. Every subscriber sees each source's sequence exactly (no gap, no
duplicate), composites included, and PostgreSQL holds every tick once, with the id the subscribers saw.

`make test` kills the hub twice; `make soak` (TICKHUB_SOAK=1) many more times.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from helpers import free_port, port_open, spawn_hub, spawn_mock_source, stop_process, wait_for

from tickhub.broker_redis import delete_namespace
from tickhub.config import Settings
from tickhub.wire import SSEParser

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
KILLS = 12 if SOAK else 2
SUBSCRIBERS = 50
INSTRUMENTS = """
[instruments.BTC-USD]
quote = "USD"
venues = [{ symbol = "BTCUSD", quote = "USD" }]
"""


class Follower:
    """A subscriber that follows the stream and, whenever the connection ends, resumes by Last-Event-ID."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ticks: list[tuple[int, str, int]] = []  # (id, source, seq) in arrival order
        self.resyncs: list[str] = []
        self.connects = 0
        self.last_id: str | None = None

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            headers = {"Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with session.get(f"{self.url}/stream", headers=headers) as response:
                    if response.status != 200:
                        raise aiohttp.ClientError(f"HTTP {response.status}")
                    self.connects += 1
                    parser = SSEParser(max_line=1 << 22, max_event=1 << 24)
                    async for chunk in response.content.iter_any():
                        for event in parser.feed(chunk):
                            self._on(event)
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.05)  # the hub is down or restarting: try again shortly

    def _on(self, event: Any) -> None:
        if event.event == "tick":
            tick = orjson.loads(event.data)
            assert tick["id"] == event.id
            self.ticks.append((int(event.id), tick["source"], tick["seq"]))
            self.last_id = event.id
        elif event.event == "snapshot":
            self.last_id = event.id
        elif event.event == "resync":
            self.resyncs.append(event.data)


async def stored(settings: Settings) -> dict[int, tuple[str, int]]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        return {r["id"]: (r["source"], r["seq"]) for r in await conn.fetch("SELECT id, source, seq FROM ticks")}
    finally:
        await conn.close()


async def until_stored(settings: Settings, ids: set[int], timeout: float = 30) -> None:
    """Wait until PostgreSQL holds every id in ``ids`` (a writer may take over a dead one's share late)."""
    async with asyncio.timeout(timeout):
        while True:
            if ids <= (await stored(settings)).keys():
                return
            await asyncio.sleep(0.2)  # a poll of PostgreSQL, bounded by the timeout


async def hub_last_id(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
        return int((await response.json())["last_id"] or 0)


def start_hub(settings: Settings, port: int, sources: str, instruments: Path, **extra: str) -> subprocess.Popen[bytes]:
    return spawn_hub(
        settings,
        port,
        sources,
        instruments=str(instruments),
        composite_max_deviation="100",
        writer_flush_interval="0.02",
        log_level="warning",
        **extra,
    )


@pytest.mark.parametrize(
    "log",
    [
        "memory, fsync off",  # the write-ahead log survives the process
        "memory, fsync batch",  # and power loss
        "redis",  # the Redis stream is the log; the restarted hub takes the ingest lease when it lapses
    ],
)
async def test_a_hub_killed_at_random_points_costs_its_subscribers_nothing(
    settings: Settings, tmp_path: Path, log: str, request: pytest.FixtureRequest
) -> None:
    if log == "redis":
        redis_url = request.getfixturevalue("redis_url")
        # A killed replica's unwritten share of the stream goes to another writer after broker_claim_after.
        extra = {"broker_url": redis_url, "lease_ttl": "1", "broker_claim_after": "1"}
        request.addfinalizer(lambda: asyncio.run(delete_namespace(redis_url, settings.database_schema)))
    else:
        extra = {"wal_fsync": "batch" if "batch" in log else "off"}
    rng = random.Random(int.from_bytes(os.urandom(4)) if SOAK else 20261202)
    instruments = tmp_path / "instruments.toml"
    instruments.write_text(INSTRUMENTS)
    ports = [free_port(), free_port()]
    sources = [
        spawn_mock_source(ports[0], name="mock-a", symbols="BTCUSD,META", interval=0.002),
        spawn_mock_source(ports[1], name="mock-b", symbols="BTCUSD", interval=0.003),
    ]
    source_list = ",".join(f"mock-{n}=http://127.0.0.1:{p}/stream" for n, p in zip("ab", ports, strict=True))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = None
    followers = [Follower(url) for _ in range(SUBSCRIBERS)]
    tasks: list[asyncio.Task[None]] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=10))
    try:
        await wait_for(lambda: all(port_open(p) for p in ports), 20, "the sources")
        hub = start_hub(settings, port, source_list, instruments, **extra)
        await wait_for(lambda: port_open(port), 30, "the hub")
        tasks = [asyncio.create_task(f.run(session)) for f in followers]
        for kill in range(KILLS):
            # A random point: after the followers have taken a random number of ticks more.
            target = min(len(f.ticks) for f in followers) + rng.randint(50, 1500)
            await wait_for(lambda t=target: all(len(f.ticks) >= t for f in followers), 30, f"ticks before kill {kill}")
            hub.send_signal(signal.SIGKILL)
            hub.wait(10)
            hub = start_hub(settings, port, source_list, instruments, **extra)
            await wait_for(lambda: port_open(port), 30, "the restarted hub")
        # Let everyone catch up with a hub that keeps running, then stop it gracefully.
        target = min(len(f.ticks) for f in followers) + 500
        await wait_for(lambda: all(len(f.ticks) >= target for f in followers), 30, "ticks after the last restart")
        for source in sources:
            stop_process(source)
        newest = await hub_last_id(url)
        await wait_for(lambda: all(f.ticks and f.ticks[-1][0] >= newest for f in followers), 30, "the last tick")
        seen = {i for f in followers for i, _, _ in f.ticks}
        await until_stored(settings, seen)
        assert stop_process(hub) == 0
        hub = None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        for process in [*sources, *([hub] if hub is not None else [])]:
            stop_process(process, signal.SIGKILL)

    rows = await stored(settings)
    composites = 0
    for n, follower in enumerate(followers):
        assert not follower.resyncs, f"subscriber {n} was resynced: {follower.resyncs[:2]}"
        assert follower.connects >= KILLS + 1
        ids = [i for i, _, _ in follower.ticks]
        assert all(b > a for a, b in itertools.pairwise(ids)), f"subscriber {n}: ids not increasing (a duplicate)"
        by_source: dict[str, list[int]] = defaultdict(list)
        for tick_id, source, seq in follower.ticks:
            assert rows.get(tick_id) == (source, seq), f"subscriber {n}: tick {tick_id} is not stored as it was sent"
            by_source[source].append(seq)
        for source, seqs in by_source.items():
            gaps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
            assert not gaps, f"subscriber {n}, {source}: seqs not consecutive at {gaps[:3]}"
        composites += len(by_source["composite"])
        # Nothing stored between its first and last tick that it did not see.
        window = sorted(i for i in rows if ids[0] <= i <= ids[-1])
        assert window == ids, f"subscriber {n}: {len(window) - len(ids)} stored ticks never reached it"
    assert composites > 0, "composites were part of the run"
    pairs = list(rows.values())
    assert len(pairs) == len(set(pairs)), "a (source, seq) stored twice"
