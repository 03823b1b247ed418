"""Poison ticks: a value that passed validation must never break a frame or a COPY row, a value that
crashes a parser must never end a source's ingest, and the writer survives a row PostgreSQL refuses."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from helpers import get_json, running_hub, scripted_source, subscribe, wait_for

from tickhub.config import Settings
from tickhub.ingest import SourceClient
from tickhub.store import Store
from tickhub.wire import Tick, TickRejected, parse_source_tick
from tickhub.writer import CopyWriter


def frame(seq: int, symbol: str = "BTCUSD", price: str = "100.00", ts: str = "2026-11-23T19:00:00.000000Z") -> bytes:
    data = orjson.dumps({"source": "x", "symbol": symbol, "price": price, "ts": ts, "seq": seq})
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, data)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("symbol", "EVIL\n", "bad_symbol"),
        ("symbol", "BTCUSD\n", "bad_symbol"),
        ("price", "1.5\n", "bad_price"),
        ("ts", "9999-12-31T23:00:00-05:00", "bad_ts"),
        ("ts", "0001-01-01T00:00:00+01:00", "bad_ts"),
        ("ts", "2026-11-23\n19:00:00.000000Z", "bad_ts"),  # fromisoformat takes any separator
        ("ts", '2026-11-23"19:00:00.000000Z', "bad_ts"),
        ("ts", "2026-11-23\n19:00:00+00:00", "bad_ts"),
    ],
)
def test_a_value_that_only_matches_before_a_final_newline_or_overflows_is_rejected(
    field: str, value: str, reason: str
) -> None:
    tick = {"symbol": "BTCUSD", "price": "1.5", "ts": "2026-11-23T19:00:00Z", "seq": 1, field: value}
    with pytest.raises(TickRejected) as caught:
        parse_source_tick(orjson.dumps(tick))
    assert caught.value.reason == reason


async def test_a_poison_tick_is_rejected_and_every_other_tick_is_stored(settings: Settings) -> None:
    frames = [
        frame(1),
        frame(2, symbol="EVIL\n"),
        frame(3, price="1.5\n"),
        frame(4, ts="9999-12-31T23:00:00-05:00"),
        frame(5, ts="0001-01-01T00:00:00+01:00"),
        frame(6, ts="2026-11-23\n19:00:00.000000Z"),
        frame(7, price="101.00"),
    ]
    async with scripted_source(frames) as (url, _), running_hub(settings.replace(sources=(("poison", url),))) as hub:
        await wait_for(lambda: hub.hub.sequencer.last_seq("poison") == 7, what="the last good tick")
        await wait_for(lambda: hub.hub.writer.written == 2, what="both good ticks written")
        async with subscribe(hub.url) as stream:
            snapshot = await stream.next_event("snapshot")
        _status, health = await get_json(f"{hub.url}/health")
        rows = await hub.hub.store.pool.fetch("SELECT seq, symbol, price::text FROM ticks ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, "BTCUSD", "100.00"), (7, "BTCUSD", "101.00")]
    assert [t["seq"] for t in orjson.loads(snapshot.data)["ticks"]] == [7]
    source = health["sources"]["poison"]
    assert source["state"] == "connected"
    assert source["rejects"] == {"bad_symbol": 1, "bad_price": 1, "bad_ts": 3}
    assert health["writer"]["errors"] == 0


async def test_an_unexpected_error_in_a_source_task_is_logged_counted_and_reconnected(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = SourceClient._on_tick
    failed = []

    def on_tick(self: SourceClient, tick) -> None:  # the first tick of seq 2 hits a bug, once
        if tick.seq == 2 and not failed:
            failed.append(tick.seq)
            raise RuntimeError("a bug in ingest")
        original(self, tick)

    monkeypatch.setattr(SourceClient, "_on_tick", on_tick)
    frames = [frame(seq, price=f"{100 + seq}.00") for seq in range(1, 5)]
    with caplog.at_level(logging.ERROR, logger="tickhub.ingest"):
        async with scripted_source(frames) as (url, seen):
            async with running_hub(settings.replace(sources=(("buggy", url),))) as hub:
                client = hub.hub.ingest.clients["buggy"]
                await wait_for(lambda: hub.hub.sequencer.last_seq("buggy") == 4, what="every tick after the error")
                health = client.stats.as_dict(4)
    assert failed == [2]
    assert health["failures"] == 1
    assert len(seen) >= 2 and seen[1]["Last-Event-ID"] == "1"  # reconnected, resuming after the last good tick
    assert any("a bug in ingest" in r.getMessage() or r.exc_info for r in caplog.records)


def tick(id: int, seq: int, symbol: str = "BTCUSD", price: str = "100.00") -> Tick:
    return Tick(id, "src", symbol, price, datetime(2026, 11, 23, tzinfo=UTC), seq)


async def stored_ids(store: Store) -> list[int]:
    return [r["id"] for r in await store.pool.fetch("SELECT id FROM ticks ORDER BY id")]


@pytest.mark.parametrize(
    "bad",
    [
        tick(0, 0, symbol="EVIL\nX"),  # a COPY row broken in two
        tick(0, 0, symbol="TAB\tX"),  # an extra column
        tick(0, 0, price="abc"),  # not a number to PostgreSQL
        tick(0, 0, price="0"),  # the check constraint
    ],
    ids=["newline", "tab", "not-numeric", "zero"],
)
async def test_the_writer_sets_aside_a_row_postgresql_refuses_and_writes_the_rest(
    database_url: str, schema: str, bad: Tick
) -> None:
    store = await Store.open(database_url, schema)
    try:
        writer = CopyWriter(store, batch=1000, flush_interval=0.001)
        writer.start()
        poison = Tick(1_000_000_000_050, bad.source, bad.symbol, bad.price, bad.time, 50)
        for n in range(1, 101):
            writer.add(poison if n == 50 else tick(1_000_000_000_000 + n, n))
        await wait_for(lambda: writer.written + writer.rejected == 100, what="every tick written or set aside")
        assert writer.rejected == 1 and writer.written == 99
        ids = await stored_ids(store)
        assert ids == [1_000_000_000_000 + n for n in range(1, 101) if n != 50]
        rejected = await store.pool.fetch("SELECT id, source, seq, tick, error FROM rejected_ticks")
        assert [(r["id"], r["source"], r["seq"]) for r in rejected] == [(poison.id, "src", 50)]
        assert rejected[0]["tick"] == poison.json and rejected[0]["error"]
        for n in range(101, 111):  # and it goes on writing
            writer.add(tick(1_000_000_000_000 + n, n))
        await wait_for(lambda: writer.written == 109, what="the writer to go on")
        await writer.close(2)
    finally:
        await store.close()


async def test_the_backlog_counts_the_batch_being_written(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        writer = CopyWriter(store, batch=1000, flush_interval=0.001)
        admin = await asyncpg.connect(database_url)
        try:
            async with admin.transaction():  # another session holds the table: the COPY waits for it
                await admin.execute(f'LOCK TABLE "{schema}".ticks IN ACCESS EXCLUSIVE MODE')
                writer.start()
                for n in range(1, 11):
                    writer.add(tick(1_000_000_000_000 + n, n))
                await wait_for(lambda: writer.batches == 0 and writer.in_flight == 10, what="the batch in flight")
                assert writer.backlog_size == 10
        finally:
            await admin.close()
        await wait_for(lambda: writer.written == 10, what="the batch written once the lock is gone")
        assert writer.backlog_size == 0 and writer.rejected == 0
        await writer.close(2)
    finally:
        await store.close()
