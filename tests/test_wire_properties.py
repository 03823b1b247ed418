"""Properties of the wire, over generated hostile input: a source event is either rejected with a
reason or it is a tick that survives the SSE frame, the JSON body and the COPY row byte for byte.

`make test` runs a bounded number of examples; `make soak` (TICKHUB_SOAK=1) many more.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tickhub.store import STORED_COLUMNS, Store, copy_rows
from tickhub.wire import (
    CANONICAL_TS_RE,
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
REASONS = {"bad_json", "missing_field", "bad_seq", "bad_symbol", "bad_price", "bad_ts"}
#: What no tick's JSON may hold: a control character or a line separator (a frame is one line).
FRAME_UNSAFE = re.compile(r"[\x00-\x1f\u2028\u2029\x7f]")

# -- strategies: mostly well-formed values with hostile ones mixed in ---------------------------

HOSTILE_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\n",
        "\r\n",
        "\x00",
        "\t",
        "\u2028",
        '"',
        "\\",
        "\u0661\u0662\u0663",  # Arabic-Indic digits
        "\uff11\uff12\uff13",  # fullwidth digits
        "1_000",
        "  1",
        "1 ",
        "1e5",
        "-0",
        "NaN",
        "Infinity",
        "9" * 5000,
        "0." + "0" * 30 + "1",
        "BTCUSD\n",
        "BTC\x00USD",
        "btcusd",
        "\uff22",  # fullwidth B
    ]
)
GOOD_SYMBOLS = st.from_regex(r"[A-Z0-9][A-Z0-9._:-]{0,39}", fullmatch=True)
HOSTILE_SYMBOLS = st.one_of(
    st.from_regex(r"[A-Z0-9][A-Z0-9._:-]{0,39}", fullmatch=False),  # anything around a valid core
    HOSTILE_TEXT,
    st.text(max_size=50),
)
GOOD_PRICES = st.from_regex(r"(0|[1-9][0-9]{0,23})(\.[0-9]{1,18})?", fullmatch=True).filter(lambda p: p.strip("0."))
HOSTILE_PRICES = st.one_of(
    st.from_regex(r"[0-9]{1,24}(\.[0-9]{1,18})?", fullmatch=True),  # leading zeros too
    st.from_regex(r"[0-9]{1,24}(\.[0-9]{1,18})?", fullmatch=False),
    HOSTILE_TEXT,
    st.sampled_from(["0", "0.0", "0.000000000000000000", "00.1"]),
    st.text(alphabet="0123456789.-+eE_ \n\u0661", max_size=30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
)
OFFSETS = st.sampled_from(["Z", "+00:00", "-00:00", "+14:00", "-12:00", "+23:59", "-23:59", "+05:30", "+0100"])
DATETIMES = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))


def iso(dt: datetime, sep: str, offset: str) -> str:
    return dt.strftime("%Y-%m-%d") + sep + dt.strftime("%H:%M:%S.%f") + offset


GOOD_TIMESTAMPS = st.builds(iso, DATETIMES, st.sampled_from(["T", " "]), OFFSETS)
HOSTILE_TIMESTAMPS = st.one_of(
    st.builds(iso, DATETIMES, st.sampled_from(["t", "\n", '"', "\x00", "x", "\u2028"]), OFFSETS),
    st.builds(iso, DATETIMES, st.just("T"), st.sampled_from(["", "z", "+24:00", "+00:00:00.5", " Z", "Z\n"])),
    st.sampled_from(
        [
            "9999-12-31T23:00:00-05:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59.999999Z",
            "0001-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-23T19:00:00.000000Z",
            "20261123T190000Z",
            "2026-11-23T19:00:00.000000+00:00:00.5",
        ]
    ),
    HOSTILE_TEXT,
    st.integers(),
)
GOOD_SEQS = st.integers(min_value=1, max_value=(1 << 63) - 1)
HOSTILE_SEQS = st.one_of(st.integers(min_value=-5, max_value=(1 << 64)), st.booleans(), st.floats(), HOSTILE_TEXT)
FIELDS = {
    "symbol": (GOOD_SYMBOLS, HOSTILE_SYMBOLS),
    "price": (GOOD_PRICES, HOSTILE_PRICES),
    "ts": (GOOD_TIMESTAMPS, HOSTILE_TIMESTAMPS),
    "seq": (GOOD_SEQS, HOSTILE_SEQS),
}


@st.composite
def source_events(draw: st.DrawFn) -> bytes:
    """The data line of a source event: a JSON object with each field good, hostile or missing."""
    obj = {}
    for name, (good, hostile) in FIELDS.items():
        kind = draw(st.integers(0, 19))  # mostly well-formed, so that accepted ticks are common too
        if kind < 16:
            obj[name] = draw(good)
        elif kind < 19:
            obj[name] = draw(hostile)
    if draw(st.booleans()):
        obj["source"] = draw(st.one_of(st.just("mock"), st.text(max_size=10)))
    # The stdlib encoder, as any source might use: big integers, NaN literals, escaped or raw unicode.
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()


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
@given(source_events(), st.integers(min_value=1, max_value=(1 << 62)))
def test_an_accepted_tick_survives_frame_json_and_log_byte_for_byte(data: bytes, hub_id: int) -> None:
    tick = accepted_or_rejected(data)
    if tick is None:
        return
    assert SYMBOL_RE.fullmatch(tick.symbol) and PRICE_RE.fullmatch(tick.price)
    assert CANONICAL_TS_RE.fullmatch(tick.ts) and tick.time.tzinfo is not None
    assert type(tick.seq) is int and 0 < tick.seq < 1 << 63
    sequenced = Tick(hub_id, "mock", tick.symbol, tick.price, tick.time, tick.seq, tick.ts)
    # The JSON body: one object, the same fields, no character that needs escaping in a frame.
    assert orjson.loads(sequenced.json) == {
        "id": str(hub_id),
        "source": "mock",
        "symbol": tick.symbol,
        "price": tick.price,
        "ts": tick.ts,
        "seq": tick.seq,
    }
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
@given(source_events(), st.integers(min_value=1, max_value=(1 << 62)))
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
@given(st.lists(source_events(), min_size=1, max_size=60))
def test_accepted_ticks_come_back_from_postgresql_byte_for_byte(schema_with_ticks: str, events: list[bytes]) -> None:
    ticks = [t for t in map(accepted_or_rejected, events) if t is not None]
    if not ticks:
        return
    sequenced = [Tick(10**12 + n, "mock", t.symbol, t.price, t.time, n, t.ts) for n, t in enumerate(ticks, start=1)]
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
            rows = await conn.fetch("SELECT id, source, symbol, price::text, ts, seq FROM ticks ORDER BY id")
    finally:
        await conn.close()
    back = [Tick(r[0], r[1], r[2], r[3], r[4], r[5]).json for r in rows]
    assert back == [t.json for t in ticks]
    assert all(r[4] == t.time and r[4].tzinfo is not None for r, t in zip(rows, ticks, strict=True))
    assert datetime.min.replace(tzinfo=UTC) <= min(r[4] for r in rows)
