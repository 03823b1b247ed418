"""The storage benchmark's archived ticks: valid ticks, stored as the hub's writer stores them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import asyncpg
import orjson

from benchmarks.storage import SQL_LATEST_OF
from benchmarks.tick_archive import ARCHIVE_SOURCES, ARCHIVE_SYMBOLS, TickArchive, copy_archive
from tickhub.store import STORED_COLUMNS, Store, copy_rows
from tickhub.wire import Tick, parse_source_tick

START = datetime(2025, 3, 1, tzinfo=UTC)


def test_each_row_is_a_valid_tick_as_the_writer_stores_it() -> None:
    archive = TickArchive(START, per_day=86_400 * 3)  # three a second: rows share a second, and cross one
    text = archive.copy_text(10**12 + 1, 500) + archive.copy_text(10**12 + 501, 500)
    lines = text.splitlines(keepends=True)
    assert len(lines) == 1000 and archive.made == 1000
    last_seq: dict[str, int] = {}
    for n, line in enumerate(lines):
        values = dict(zip(STORED_COLUMNS, line.rstrip(b"\n").decode().split("\t"), strict=True))
        assert values.pop("extra") == "\\N"
        source = values.pop("source")
        tick_id = int(values.pop("id"))
        # What a source would send: the wire's own checks pass, and the writer's row is the same bytes.
        sent = parse_source_tick(orjson.dumps({**values, "seq": int(values["seq"])}))
        tick = Tick(tick_id, source, sent.symbol, sent.price, sent.time, sent.seq, sent.ts, None, sent.fields)
        assert copy_rows([tick]) == line
        assert tick_id == 10**12 + 1 + n
        assert sent.time == archive.time_of(n) == START + timedelta(microseconds=n * 1_000_000 // 3)
        assert sent.fields is not None and None not in sent.fields.values()
        assert sent.seq > last_seq.get(source, 0)
        last_seq[source] = sent.seq
    assert set(last_seq) == set(ARCHIVE_SOURCES)
    assert archive.newest == archive.time_of(999)


async def test_copy_into_the_hubs_table(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)  # the hub's own migrations
    await store.close()
    archive = TickArchive(START, per_day=500_000)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        assert await copy_archive(conn, schema, archive, 1, 30_000, chunk=7_000) == 30_000
        assert await copy_archive(conn, schema, archive, 30_001, 10_000, chunk=7_000) == 10_000
        rows = await conn.fetch("SELECT id, ts, symbol, source, qty FROM ticks ORDER BY id")
        assert [r["id"] for r in rows] == list(range(1, 40_001))
        assert all(a["ts"] < b["ts"] for a, b in pairwise(rows))
        assert rows[-1]["ts"] == archive.newest
        assert {r["symbol"] for r in rows} == set(ARCHIVE_SYMBOLS)
        assert await conn.fetchval("SELECT count(*) FROM ticks WHERE qty IS NULL OR ask_qty IS NULL") == 0
        await conn.execute(SQL_LATEST_OF, list(ARCHIVE_SYMBOLS), list(ARCHIVE_SOURCES))
        latest = await conn.fetch("SELECT symbol, source, id FROM latest_ticks")
        newest = await conn.fetch("SELECT symbol, source, max(id) AS id FROM ticks GROUP BY symbol, source")
        assert sorted(map(tuple, latest)) == sorted(map(tuple, newest))
        assert len(latest) == len(ARCHIVE_SYMBOLS) * len(ARCHIVE_SOURCES)
    finally:
        await conn.close()
