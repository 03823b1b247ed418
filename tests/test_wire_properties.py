"""Properties of the wire, over generated hostile input: a source event is either rejected with a
reason or it is a tick that survives the SSE frame, the JSON body and the COPY row byte for byte.

`make test` runs a bounded number of examples; `make soak` (TICKHUB_SOAK=1) many more.
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import source_events

from tickhub.store import STORED_COLUMNS, Store, copy_rows
from tickhub.wire import (
    CANONICAL_TS_RE,
    OPTIONAL_FIELDS,
    PRICE_RE,
    SYMBOL_RE,
    SourceTick,
    SSEEvent,
    SSEParser,
    Tick,
    TickRejected,
    parse_source_tick,
    tick_frame,
    tick_from_json,
)

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
EXAMPLES = 3000 if SOAK else 300
REASONS = {"bad_json", "missing_field", "bad_seq", "bad_symbol", "bad_price", "bad_ts"} | {
    f"bad_{name}" for name in OPTIONAL_FIELDS
}
#: What no tick's JSON may hold: a control character or a line separator (a frame is one line).
FRAME_UNSAFE = re.compile(r"[\x00-\x1f\u2028\u2029\x7f]")


def accepted_or_rejected(data: bytes) -> SourceTick | None:
    """parse_source_tick's verdict; anything but TickRejected (an OverflowError, a KeyError) fails."""
    try:
        tick = parse_source_tick(data)
    except TickRejected as exc:
        assert exc.reason in REASONS
        event(f"rejected: {exc.reason}")
        return None
    event("accepted")
    return tick


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(source_events, st.integers(min_value=1, max_value=(1 << 62)))
def test_an_accepted_tick_survives_frame_json_and_log_byte_for_byte(data: bytes, hub_id: int) -> None:
    tick = accepted_or_rejected(data)
    if tick is None:
        return
    assert SYMBOL_RE.fullmatch(tick.symbol) and PRICE_RE.fullmatch(tick.price)
    assert CANONICAL_TS_RE.fullmatch(tick.ts) and tick.time.tzinfo is not None
    assert type(tick.seq) is int and 0 < tick.seq < 1 << 63
    sequenced = Tick(hub_id, "mock", tick.symbol, tick.price, tick.time, tick.seq, tick.ts, tick.extra, tick.fields)
    fields = {} if tick.fields is None else tick.fields.as_dict()
    event(f"accepted with {len(fields)} optional fields")
    assert fields == {k: v for k, v in orjson.loads(data).items() if k in OPTIONAL_FIELDS}, "each field as sent"
    # The JSON body: one object, the same fields, no character that needs escaping in a frame.
    assert orjson.loads(sequenced.json) == {
        "id": str(hub_id),
        "source": "mock",
        "symbol": tick.symbol,
        "price": tick.price,
        "ts": tick.ts,
        "seq": tick.seq,
        **fields,
    }
    assert list(orjson.loads(sequenced.json))[6:] == [k for k in OPTIONAL_FIELDS if k in fields], "in wire order"
    assert not FRAME_UNSAFE.search(sequenced.json.decode())
    # The SSE frame: exactly one event, whose data is the JSON, whatever the chunking.
    frame = tick_frame(hub_id, sequenced.json)
    for cut in (len(frame), 1, 7):
        parser = SSEParser()
        events = [e for i in range(0, len(frame), cut) for e in parser.feed(frame[i : i + cut])]
        assert events == [SSEEvent("tick", sequenced.json.decode(), str(hub_id))]
    # The log between replicas: the same bytes back.
    assert tick_from_json(sequenced.json).json == sequenced.json
    # The COPY row: one line of exactly the stored columns.
    row = copy_rows([sequenced])
    assert row.count(b"\n") == 1 and row.endswith(b"\n")
    assert len(row[:-1].split(b"\t")) == len(STORED_COLUMNS)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(source_events, st.integers(min_value=1, max_value=(1 << 62)))
def test_the_hub_parser_fast_path_and_the_general_path_agree_on_any_event(data: bytes, event_id: int) -> None:
    expected = accepted_or_rejected(data)
    frame = b"id: %d\nevent: tick\ndata: %b\n\n" % (event_id, data)
    items = list(SSEParser(ticks=True).feed(frame))
    assert len(items) == 1
    item = items[0]
    got = item if isinstance(item, SourceTick) else accepted_or_rejected(item.data.encode())
    assert got == expected


@pytest.fixture
def schema_with_ticks(database_url: str, schema: str) -> str:
    """This test's schema with tickhub's tables, as ``dsn#schema``."""

    async def migrate() -> None:
        store = await Store.open(database_url, schema)
        await store.close()

    asyncio.run(migrate())
    return f"{database_url}#{schema}"


@settings(
    max_examples=30 if not SOAK else 300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(source_events, min_size=1, max_size=60))
def test_accepted_ticks_come_back_from_postgresql_byte_for_byte(schema_with_ticks: str, events: list[bytes]) -> None:
    ticks = [t for t in map(accepted_or_rejected, events) if t is not None]
    if not ticks:
        return
    sequenced = [
        Tick(10**12 + n, "mock", t.symbol, t.price, t.time, n, t.ts, t.extra, t.fields)
        for n, t in enumerate(ticks, start=1)
    ]
    asyncio.run(_copy_and_read_back(schema_with_ticks, sequenced))


async def _copy_and_read_back(dsn_schema: str, ticks: list[Tick]) -> None:
    dsn, schema = dsn_schema.rsplit("#", 1)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        async with conn.transaction():
            await conn.execute("TRUNCATE ticks")

            async def chunks():
                yield copy_rows(ticks)

            await conn.copy_to_table("ticks", source=chunks(), columns=STORED_COLUMNS, schema_name=schema)
    finally:
        await conn.close()
    store = await Store.open(dsn, schema)
    try:  # read back as the hub's replays and history read it
        back = await store.ticks_after(0, 1 << 62, None, len(ticks))
    finally:
        await store.close()
    assert [t.json for t in back] == [t.json for t in ticks]
    assert all(b.time == t.time and b.time.tzinfo is not None for b, t in zip(back, ticks, strict=True))
    assert datetime.min.replace(tzinfo=UTC) <= min(b.time for b in back)
