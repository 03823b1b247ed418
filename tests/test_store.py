"""Storage against the real PostgreSQL: migrations, idempotent writes, exact prices; the writer's backlog."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from helpers import wait_for

from tickhub.store import Store, StoreUnavailable, migrations
from tickhub.wire import Tick
from tickhub.writer import CopyWriter

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def make_ticks(n: int, first_id: int = 1_000_000_000_001, first_seq: int = 1, source: str = "s") -> list[Tick]:
    return [Tick(first_id + i, source, "BTCUSD", f"{100 + i}.{i % 100:02d}", T0, first_seq + i) for i in range(n)]


async def test_concurrent_starts_apply_each_migration_once(database_url: str, schema: str) -> None:
    stores = await asyncio.gather(*(Store.open(database_url, schema) for _ in range(4)))
    try:
        rows = await stores[0].pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == [v for v, _ in migrations()]
        assert await stores[1].migrate() == []
    finally:
        for store in stores:
            await store.close()


async def test_runs_increase_and_writes_are_idempotent_on_source_and_seq(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        assert await store.new_run() < await store.new_run()
        ticks = make_ticks(10)
        await store.write_ticks(ticks[:6])
        await store.write_ticks(ticks)  # the first six again: skipped, the rest stored
        rows = await store.pool.fetch("SELECT seq, price::text FROM ticks ORDER BY id")
        assert [(r[0], r[1]) for r in rows] == [(t.seq, t.price) for t in ticks]
        assert await store.last_seqs(["s", "other"]) == {"s": 10, "other": 0}
        (latest,) = await store.latest()
        assert (latest.id, latest.price) == (ticks[-1].id, ticks[-1].price)
        after = await store.ticks_after(ticks[2].id, ticks[7].id, None, 100)
        assert [t.id for t in after] == [t.id for t in ticks[3:7]]
        assert [t.json for t in after] == [t.json for t in ticks[3:7]], "replayed JSON is byte-identical"
        assert await store.count_after(ticks[2].id, ticks[7].id, ["BTCUSD"], 2) == 2
    finally:
        await store.close()


async def test_prices_are_stored_exactly(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        prices = ["0.00000001", "43000.10000000", "123456789012345678.123456789012345678", "7"]
        ticks = [Tick(1_000_000_000_001 + i, "s", "X", p, T0, i + 1) for i, p in enumerate(prices)]
        await store.write_ticks(ticks)
        assert [t.price for t in await store.history("X", None, None, 10)] == prices
    finally:
        await store.close()


class FlakyStore:
    """A store that is down until ``up`` is set; records what was written."""

    def __init__(self) -> None:
        self.up = False
        self.batches: list[list[Tick]] = []
        self.gaps: list[tuple[int, int, str]] = []

    async def write_ticks(self, ticks: list[Tick]) -> None:
        if not self.up:
            raise StoreUnavailable("connection refused")
        self.batches.append(list(ticks))

    async def record_gaps(self, gaps: list[tuple[int, int, str]]) -> None:
        if not self.up:
            raise StoreUnavailable("connection refused")
        self.gaps.extend(gaps)


async def test_writer_holds_a_bounded_backlog_while_the_database_is_down() -> None:
    store = FlakyStore()
    writer = CopyWriter(store, batch=10, flush_interval=0.001, backlog=50, retry_min=0.01, retry_max=0.02)  # type: ignore[arg-type]
    writer.start()
    ticks = make_ticks(80)
    for tick in ticks[:30]:
        writer.add(tick)
    await wait_for(lambda: writer.errors >= 2, what="failed attempts")
    assert writer.failing and writer.backlog_size == 30 and writer.dropped == 0
    for tick in ticks[30:]:
        writer.add(tick)
    assert writer.backlog_size == 50 and writer.dropped == 30
    assert writer.dropped_ranges == [(ticks[0].id, ticks[29].id)]
    assert not writer.is_gap_free(ticks[0].id - 1, ticks[31].id)
    assert writer.is_gap_free(ticks[29].id, ticks[79].id + 1)
    store.up = True
    await wait_for(lambda: writer.backlog_size == 0, what="the backlog to flush")
    written = [t.id for batch in store.batches for t in batch]
    assert written == [t.id for t in ticks[30:]], "kept rows are written once, in order"
    assert not writer.failing and writer.persisted_id == ticks[-1].id
    assert store.gaps == [(ticks[0].id, ticks[29].id, "dropped")], "the drop is recorded with the next write"
    await writer.close(timeout=1)


async def test_writer_close_flushes_what_is_queued() -> None:
    store = FlakyStore()
    store.up = True
    writer = CopyWriter(store, batch=1000, flush_interval=10.0)  # type: ignore[arg-type]
    writer.start()
    for tick in make_ticks(25):
        writer.add(tick)
    await writer.close(timeout=2)
    assert sum(len(b) for b in store.batches) == 25


@pytest.mark.parametrize("bad", ["BTC'; DROP TABLE ticks;--", "META%", "*"])
async def test_hostile_symbols_are_just_data_to_the_queries(database_url: str, schema: str, bad: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        await store.write_ticks(make_ticks(3))
        assert await store.history(bad, None, None, 10) == []
        assert await store.ticks_after(0, 1 << 62, [bad], 10) == []
        assert len(await store.ticks_after(0, 1 << 62, None, 10)) == 3
    finally:
        await store.close()


async def test_extra_fields_come_back_from_jsonb_as_the_same_bytes(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        venues = [{"source": "kraken", "symbol": "KRAKEN:BTC-USD", "price": "43000.25", "ts": "2026-11-23T10:00:00Z"}]
        composite = Tick(1_000_000_000_002, "composite", "BTC-USD", "43000.25", T0, 7, None, {"venues": venues})
        await store.write_ticks([*make_ticks(1), composite])
        replayed = await store.ticks_after(0, 1 << 62, None, 10)
        assert [t.json for t in replayed] == [make_ticks(1)[0].json, composite.json]
        assert {t.symbol: t.json for t in await store.latest()}["BTC-USD"] == composite.json
        stored = await store.pool.fetchval("SELECT extra->'venues'->0->>'price' FROM ticks WHERE source = 'composite'")
        assert stored == "43000.25", "queryable as jsonb"
    finally:
        await store.close()


async def test_text_copy_keeps_extra_json_with_escapes_byte_identical(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        extra = {"venues": [{"note": 'back\\slash "quoted"\ttab\nline', "price": "1.5"}]}
        tick = Tick(1_000_000_000_001, "s", "X", "1.5", T0, 1, None, extra)
        await store.write_ticks([tick])
        (back,) = await store.ticks_after(0, 1 << 62, None, 10)
        assert back.json == tick.json
    finally:
        await store.close()
