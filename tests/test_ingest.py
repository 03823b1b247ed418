"""Ingest over real sockets: bad events counted and skipped, replays dropped, cut links and dead sources resumed."""

from __future__ import annotations

import signal

import asyncpg
import orjson
from helpers import (
    TcpProxy,
    free_port,
    get_json,
    running_hub,
    running_mock,
    scripted_source,
    spawn_mock_source,
    stop_process,
    subscribe,
    wait_for,
    written,
)

from sources.app import source_app
from sources.feed import SourceFeed
from sources.serve import serving
from tickhub.config import Settings


def tick_event(seq: int, price: object = "100.50", symbol: object = "BTCUSD", **extra: object) -> bytes:
    data = {"symbol": symbol, "price": price, "ts": "2026-11-23T10:00:00Z", "seq": seq, **extra}
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, orjson.dumps(data))


async def persisted(settings: Settings, source: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        return await conn.fetch("SELECT id, seq, price::text FROM ticks WHERE source = $1 ORDER BY id", source)
    finally:
        await conn.close()


def runs_of(seqs: list[int]) -> list[tuple[int, int]]:
    """Split seqs into maximal runs of consecutive numbers: [(first, last), ...]."""
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


async def test_malformed_events_are_counted_and_skipped_while_the_stream_goes_on(settings: Settings) -> None:
    frames = [
        tick_event(1),
        b"id: 2\nevent: tick\ndata: {not json\n\n",
        b"id: 3\nevent: tick\ndata: " + orjson.dumps({"symbol": "BTCUSD", "seq": 3}) + b"\n\n",
        tick_event(4, price="-5"),
        tick_event(5, price="NaN"),
        tick_event(6, price=12.5),
        tick_event(7, symbol="btc usd"),
        b"id: 8\nevent: tick\ndata: " + b"x" * 100_000 + b"\n\n",
        tick_event(9, price="101.25"),
        tick_event(1),  # lower than a seq this connection already sent
        b"event: news\ndata: {}\n\n",
        tick_event(10, price="102.00"),
    ]
    async with scripted_source(frames) as (url, _):
        async with running_hub(settings.replace(sources=(("scripted", url),), source_max_line=4096)) as hub:
            await wait_for(lambda: hub.hub.sequencer.last_seq("scripted") == 10, what="the last good tick")
            status, health = await get_json(f"{hub.url}/health")
            await wait_for(lambda: written(hub.hub), what="the writer")
    assert status == 200
    source = health["sources"]["scripted"]
    assert source["accepted"] == 3
    assert source["rejects"] == {
        "bad_json": 1,
        "missing_field": 1,
        "bad_price": 3,
        "bad_symbol": 1,
        "oversized": 1,
        "seq_backwards": 1,
    }
    assert source["duplicates"] == 0
    assert source["ignored"] == 1
    rows = await persisted(settings, "scripted")
    assert [(r["seq"], r["price"]) for r in rows] == [(1, "100.50"), (9, "101.25"), (10, "102.00")]


async def test_a_source_that_replays_everything_on_reconnect_creates_no_twins(settings: Settings) -> None:
    frames = [tick_event(seq, price=f"{100 + seq}.00") for seq in range(1, 6)]
    async with scripted_source(frames, close_after=True) as (url, seen):  # ignores Last-Event-ID
        async with running_hub(settings.replace(sources=(("replayer", url),))) as hub:
            stats = hub.hub.ingest.clients["replayer"].stats
            # A connection is seen when it is made, its replay counted when it is read: wait for the counts.
            await wait_for(lambda: len(seen) >= 3 and stats.duplicates >= 10, what="three connections replayed")
            assert stats.accepted == 5 and not stats.rejects
            await wait_for(lambda: hub.hub.writer.written == 5, what="the writer")
    assert [r["seq"] for r in await persisted(settings, "replayer")] == [1, 2, 3, 4, 5]
    assert seen[1]["Last-Event-ID"] == "5"


async def test_a_cut_link_is_resumed_by_last_event_id_with_no_gap_and_no_twin(settings: Settings) -> None:
    async with running_mock(("BTCUSD", "META"), interval=0.005) as source, TcpProxy(source.port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/stream"
        async with running_hub(settings.replace(sources=(("mock", url),))) as hub:
            client = hub.hub.ingest.clients["mock"]
            for cut in range(3):
                accepted, connects = 50 * (cut + 1), cut + 2
                await wait_for(lambda n=accepted: client.stats.accepted >= n, what="ticks before the cut")
                proxy.cut()
                await wait_for(lambda n=connects: client.stats.connects >= n, what="a reconnect")
            await wait_for(lambda: client.stats.accepted >= 250, what="ticks after the last cut")
            assert client.stats.gaps == 0
    rows = await persisted(settings, "mock")
    seqs = [r["seq"] for r in rows]
    assert len(runs_of(seqs)) == 1, "one unbroken run of seqs across three cut links"
    ids = [r["id"] for r in rows]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


async def test_a_source_restarted_before_the_hub_got_any_of_its_events_is_read_from_its_first_event(
    settings: Settings,
) -> None:
    """A bridge answers a consumer without Last-Event-ID with the newest event of each symbol, then
    live: right for the hub's first connection, wrong for its next one. A source that dies before the
    hub accepted anything from it and comes back (a new process, new seqs) holds events the hub has
    never seen; the hub's reconnect asks for all of them, not for the newest."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/stream"
    async with running_hub(settings.replace(sources=(("bridge", url),), reconnect_max=0.3)) as hub:
        client = hub.hub.ingest.clients["bridge"]
        first = SourceFeed("bridge", heartbeat=0.2, latest_first=True)
        async with serving(source_app(first), port=port):
            await wait_for(lambda: client.stats.connects == 1 and first.consumers == 1, what="the first connection")
        second = SourceFeed("bridge", heartbeat=0.2, latest_first=True)  # restarted: its own seqs
        seqs = [second.publish("BTCUSD", f"{100 + n}.00") for n in range(5)]
        async with serving(source_app(second), port=port):
            await wait_for(lambda: client.stats.connects == 2, what="the reconnect")
            await wait_for(lambda: hub.hub.sequencer.last_seq("bridge") == seqs[-1], what="the newest event")
            await wait_for(lambda: written(hub.hub), what="the writer")
    assert [r["seq"] for r in await persisted(settings, "bridge")] == seqs


async def test_a_silent_source_is_reconnected_by_the_stale_watchdog(settings: Settings) -> None:
    async with scripted_source([tick_event(1)], heartbeat=3600) as (url, seen):
        async with running_hub(settings.replace(sources=(("quiet", url),), source_stale_timeout=0.3)) as hub:
            stats = hub.hub.ingest.clients["quiet"].stats
            # The source sees a request before the hub has read the answer and counted the connection.
            await wait_for(lambda: len(seen) >= 3 and stats.connects >= 3, what="two reconnects of the silent source")
    assert "Last-Event-ID" not in seen[0]
    assert seen[1]["Last-Event-ID"] == "1" and seen[2]["Last-Event-ID"] == "1"


async def test_a_source_killed_and_restarted_loses_nothing_the_hub_received(settings: Settings) -> None:
    port = free_port()
    proc = spawn_mock_source(port, name="mock", interval=0.005)
    try:
        async with running_hub(settings.replace(sources=(("mock", f"http://127.0.0.1:{port}/stream"),))) as hub:
            client = hub.hub.ingest.clients["mock"]
            async with subscribe(hub.url) as witness:
                await witness.next_event("snapshot")
                await wait_for(lambda: client.stats.accepted >= 100, what="ticks from the first run")
                stop_process(proc, signal.SIGKILL)
                await wait_for(lambda: client.stats.state != "connected", what="the hub to notice")
                proc = spawn_mock_source(port, name="mock", interval=0.005)
                await wait_for(lambda: client.stats.accepted >= 300, 20, "ticks from the second run")
                last = hub.hub.market.last_id
                seen = []
                while not seen or int(seen[-1]["id"]) < last:
                    seen += await witness.ticks(1)
            await wait_for(lambda: hub.hub.writer.persisted_id >= last, what="the writer")
    finally:
        stop_process(proc)
    rows = await persisted(settings, "mock")
    runs = runs_of([r["seq"] for r in rows])
    assert len(runs) == 2, f"one unbroken run of seqs per source run, got {runs}"
    assert runs[1][0] > runs[0][1]
    delivered = [(int(t["id"]), t["seq"]) for t in seen]
    stored = [(r["id"], r["seq"]) for r in rows if r["id"] <= last]
    assert delivered == stored[-len(delivered) :], "every tick a subscriber saw is in PostgreSQL, once"
