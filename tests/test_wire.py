"""The wire format: SSE parsing and framing, tick validation, timestamps."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson
import pytest

from tickhub.wire import (
    SourceTick,
    SSEParser,
    Tick,
    TickFields,
    TickRejected,
    format_ts,
    parse_source_tick,
    source_tick_json,
    tick_frame,
    tick_from_json,
)

TICK_ORDER = ["id", "source", "symbol", "price", "ts", "seq"]


def feed_all(parser: SSEParser, *chunks: bytes) -> list:
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def test_parser_reads_events_split_at_every_byte() -> None:
    stream = b'retry: 3000\n\nid: 7\nevent: tick\ndata: {"a":1}\n\n: ping\n\ndata: x\ndata: y\n\n'
    whole = feed_all(SSEParser(), stream)
    parser = SSEParser()
    split = feed_all(parser, *[stream[i : i + 1] for i in range(len(stream))])
    assert whole == split
    assert [(e.event, e.data, e.id) for e in whole] == [("tick", '{"a":1}', "7"), ("message", "x\ny", "7")]
    assert parser.retry == 3000
    assert parser.comments == 1


def test_parser_accepts_crlf_and_cr_line_ends_even_split_between_chunks() -> None:
    parser = SSEParser()
    events = feed_all(parser, b"id: 1\r\ndata: a\r", b"\ndata: b\r\n\r", b"\nid: 2\rdata: c\r\r")
    assert [(e.data, e.id) for e in events] == [("a\nb", "1"), ("c", "2")]


def test_parser_keeps_last_id_for_events_without_one_and_ignores_unknown_fields() -> None:
    events = feed_all(SSEParser(), b"id: 5\nfoo: bar\ndata: 1\n\ndata: 2\n\n")
    assert [e.id for e in events] == ["5", "5"]


def test_oversized_line_drops_only_its_own_event() -> None:
    parser = SSEParser(max_line=100)
    events = feed_all(parser, b"data: a\n\nid: 9\ndata: " + b"x" * 500 + b"\nevent: big\n\ndata: b\n\n")
    assert [(e.data, e.event) for e in events] == [("a", "message"), ("b", "message")]
    assert parser.oversized == 1


def test_oversized_line_spread_over_chunks_is_counted_once() -> None:
    parser = SSEParser(max_line=100)
    chunks = [b"data: ok1\n\ndata: "] + [b"x" * 60] * 10 + [b"\n\ndata: ok2\n\n"]
    assert [e.data for e in feed_all(parser, *chunks)] == ["ok1", "ok2"]
    assert parser.oversized == 1


def test_oversized_event_of_many_lines_is_dropped() -> None:
    parser = SSEParser(max_line=100, max_event=1000)
    many = (b"data: " + b"x" * 90 + b"\n") * 20
    assert [e.data for e in feed_all(parser, many + b"\ndata: ok\n\n")] == ["ok"]
    assert parser.oversized == 1


def good(**changes: object) -> bytes:
    tick = {"symbol": "BTCUSD", "price": "43000.10", "ts": "2026-11-23T10:00:00.5Z", "seq": 42}
    tick.update(changes)
    return orjson.dumps({k: v for k, v in tick.items() if v is not None})


def test_valid_source_tick_is_normalised() -> None:
    tick = parse_source_tick(good())
    assert tick.symbol == "BTCUSD"
    assert tick.price == "43000.10"
    assert tick.ts == "2026-11-23T10:00:00.500000Z"
    assert tick.time == datetime(2026, 11, 23, 10, 0, 0, 500000, tzinfo=UTC)
    assert tick.seq == 42


def test_timestamp_with_offset_is_converted_to_utc() -> None:
    assert parse_source_tick(good(ts="2026-11-23T13:00:00+03:00")).ts == "2026-11-23T10:00:00.000000Z"


def test_venue_qualified_symbols_are_valid() -> None:
    assert parse_source_tick(good(symbol="BINANCE:BTCUSDT")).symbol == "BINANCE:BTCUSDT"
    assert parse_source_tick(good(symbol="KRAKEN:BTC-USD")).symbol == "KRAKEN:BTC-USD"


def test_seq_falls_back_to_the_sse_id() -> None:
    data = orjson.dumps({"symbol": "META", "price": "1", "ts": "2026-11-23T10:00:00Z"})
    assert parse_source_tick(data, "77").seq == 77


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"[1,2]", "bad_json"),
        (orjson.dumps({"price": "1", "ts": "2026-11-23T10:00:00Z", "seq": 1}), "missing_field"),
        (good(seq=None), "missing_field"),
        (good(price="-1.5"), "bad_price"),
        (good(price="NaN"), "bad_price"),
        (good(price="Infinity"), "bad_price"),
        (good(price="0.000"), "bad_price"),
        (good(price="1e5"), "bad_price"),
        (good(price="007.50"), "bad_price"),  # PostgreSQL's numeric would store it as 7.50
        (good(price=43000.1), "bad_price"),
        (good(price=""), "bad_price"),
        (good(symbol="btcusd"), "bad_symbol"),
        (good(symbol="BTC/USD"), "bad_symbol"),
        (good(symbol="X" * 41), "bad_symbol"),
        (good(symbol=":BTC"), "bad_symbol"),
        (good(symbol="BTC'; DROP TABLE ticks;--"), "bad_symbol"),
        (good(ts="yesterday"), "bad_ts"),
        (good(ts="2026-11-23T10:00:00"), "bad_ts"),
        (good(ts=1700000000), "bad_ts"),
        (good(seq=-3), "bad_seq"),
        (good(seq="12"), "bad_seq"),
        (good(seq=True), "bad_seq"),
        (good(seq=1.5), "bad_seq"),
    ],
)
def test_malformed_source_ticks_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(TickRejected) as info:
        parse_source_tick(data)
    assert info.value.reason == reason


def test_an_exchange_trade_id_is_carried_as_a_field_after_seq() -> None:
    tick = parse_source_tick(good(trade_id="3512345678"))
    assert tick.fields == TickFields.of(trade_id="3512345678") and tick.extra is None
    assert parse_source_tick(good()).fields is None
    data = source_tick_json(
        "binance", "BINANCE:BTCUSDT", "43211.01000000", "2026-11-23T19:00:00.121000Z", 9, {"trade_id": "77"}
    )
    assert data.endswith(b',"seq":9,"trade_id":"77"}')
    assert parse_source_tick(data).fields == TickFields.of(trade_id="77")
    sequenced = Tick(5, "binance", tick.symbol, tick.price, tick.time, tick.seq, tick.ts, None, tick.fields)
    assert sequenced.json.endswith(b',"seq":42,"trade_id":"3512345678"}')


ALL_FIELDS = {
    "qty": "0.00150000",
    "side": "sell",
    "trade_id": "3512345678",
    "bid": "43211.00000000",
    "bid_qty": "0",
    "ask": "43211.01000000",
    "ask_qty": "2.50",
}


def test_every_optional_field_follows_seq_in_wire_order_then_extra() -> None:
    shuffled = dict(reversed(ALL_FIELDS.items()))
    data = source_tick_json("binance", "BTCUSD", "43211.01", "2026-11-23T19:00:00.121000Z", 9, shuffled)
    assert data.endswith(
        b',"seq":9,"qty":"0.00150000","side":"sell","trade_id":"3512345678","bid":"43211.00000000",'
        b'"bid_qty":"0","ask":"43211.01000000","ask_qty":"2.50"}'
    )
    tick = parse_source_tick(data)
    assert tick.fields is not None and tick.fields.as_dict() == ALL_FIELDS
    assert (tick.fields.qty, tick.fields.side, tick.fields.ask_qty) == ("0.00150000", "sell", "2.50")
    sequenced = Tick(5, "c", tick.symbol, tick.price, tick.time, tick.seq, tick.ts, {"venues": []}, tick.fields)
    assert list(orjson.loads(sequenced.json)) == [*TICK_ORDER, *ALL_FIELDS, "venues"]
    assert tick_from_json(sequenced.json).json == sequenced.json
    (fast,) = feed_all(SSEParser(ticks=True), tick_frame(9, data))
    assert fast == tick and fast.fields is not None and fast.fields.json == tick.fields.json


def test_extra_may_not_name_an_optional_field() -> None:
    with pytest.raises(ValueError, match="trade_id"):
        Tick(5, "c", "X", "1", datetime(2026, 11, 23, tzinfo=UTC), 1, None, {"trade_id": "1"})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"qty": "0"}, "bad_qty"),  # a trade of nothing
        ({"qty": "0.000"}, "bad_qty"),
        ({"qty": "-1"}, "bad_qty"),
        ({"qty": "1e3"}, "bad_qty"),
        ({"qty": "01.5"}, "bad_qty"),
        ({"qty": 1.5}, "bad_qty"),
        ({"qty": None}, "bad_qty"),  # null is no value: absent fields are left out
        ({"qty": "1.5\n"}, "bad_qty"),
        ({"side": "BUY"}, "bad_side"),
        ({"side": "b"}, "bad_side"),
        ({"side": True}, "bad_side"),
        ({"side": ["buy"]}, "bad_side"),
        ({"bid": "0"}, "bad_bid"),
        ({"bid": "NaN"}, "bad_bid"),
        ({"ask": "0.0"}, "bad_ask"),
        ({"ask": "\u0661"}, "bad_ask"),
        ({"bid": "1", "bid_qty": "-0"}, "bad_bid_qty"),
        ({"bid_qty": "1"}, "bad_bid_qty"),  # a size without its price
        ({"ask_qty": "0"}, "bad_ask_qty"),
        ({"ask": "1", "ask_qty": "1" * 25}, "bad_ask_qty"),
    ],
)
def test_a_bad_optional_field_rejects_the_tick_whole(fields: dict, reason: str) -> None:
    data = orjson.dumps({"symbol": "BTCUSD", "price": "1.5", "ts": "2026-11-23T10:00:00.000000Z", "seq": 1} | fields)
    with pytest.raises(TickRejected) as info:
        parse_source_tick(data)
    assert info.value.reason == reason
    (item,) = feed_all(SSEParser(ticks=True), tick_frame(1, data))
    assert type(item) is not SourceTick, "the fast path refuses it too"


def test_quote_sizes_may_be_zero_and_a_quote_may_come_without_a_trade() -> None:
    fields = {"bid": "43000.5", "bid_qty": "0", "ask": "43001", "ask_qty": "0.000"}
    tick = parse_source_tick(good(**fields))
    assert tick.fields is not None and tick.fields.as_dict() == fields
    assert tick.fields.qty is None and tick.fields.side is None


@pytest.mark.parametrize(
    "trade_id",
    ["", " 1", "1\n", "a b", "1/2", "x" * 65, "\u0661\u0662", "\uff11", "1\x00", 3512345678, None, 1.5, ["1"]],
)
def test_a_bad_trade_id_is_rejected_whole(trade_id: object) -> None:
    data = orjson.dumps(
        {"symbol": "BTCUSD", "price": "1.5", "ts": "2026-11-23T10:00:00Z", "seq": 1, "trade_id": trade_id}
    )
    with pytest.raises(TickRejected) as info:
        parse_source_tick(data)
    assert info.value.reason == "bad_trade_id"
    (item,) = feed_all(SSEParser(ticks=True), tick_frame(1, data))
    assert type(item) is not SourceTick, "the fast path refuses it too"


def test_trade_ids_of_every_allowed_shape_pass() -> None:
    for trade_id in ("0", "3512345678", "a-B_9", "x" * 64, "c8a5b1f0-7d2e-4e6b-9a51-2d0f6f3a9c11"):
        assert parse_source_tick(good(trade_id=trade_id)).fields == TickFields.of(trade_id=trade_id)


def test_tick_json_and_frame_round_trip_through_the_parser() -> None:
    time = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    tick = Tick(1000000000001, "mock", "BTCUSD", "43000.00", time, 5)
    frame = tick_frame(tick.id, tick.json)
    (event,) = feed_all(SSEParser(), frame)
    assert event.event == "tick" and event.id == "1000000000001"
    assert orjson.loads(event.data) == {
        "id": "1000000000001",
        "source": "mock",
        "symbol": "BTCUSD",
        "price": "43000.00",
        "ts": "2026-11-23T10:00:00.000000Z",
        "seq": 5,
    }
    assert format_ts(time) == "2026-11-23T10:00:00.000000Z"


def test_source_tick_json_is_accepted_by_the_hub_validation() -> None:
    data = source_tick_json("mock", "TCSG", "3000.25", "2026-11-23T10:00:00.000000Z", 9)
    assert parse_source_tick(data).price == "3000.25"


def reference_parse(stream: bytes) -> list[tuple[str, str, str | None]]:
    """A plain reading of the WHATWG rules, line by line, to hold the fast parser to."""
    out, data, event, last_id = [], [], "", None
    for line in stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")[:-1]:
        if not line:
            if data:
                out.append((event or "message", "\n".join(data), last_id))
            data, event = [], ""
            continue
        if line.startswith(b":"):
            continue
        name, _, value = line.decode().partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
    return out


def random_stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(1, 60)):
        kind = rng.random()
        if kind < 0.6:
            parts.append(b'id: %d\nevent: tick\ndata: {"p":"%d"}\n\n' % (rng.randint(1, 10**6), rng.randint(0, 99)))
        elif kind < 0.7:
            parts.append(b": ping\n\n")
        elif kind < 0.8:
            parts.append(b"data: line one\ndata: line two\n\n")
        elif kind < 0.85:
            parts.append(b"retry: 1500\n\n")
        elif kind < 0.9:
            parts.append(b"id: 7\r\nevent: other\r\ndata: crlf\r\n\r\n")
        elif kind < 0.95:
            parts.append(b"event: tick\ndata: no id\n\n")
        else:
            parts.append(b"id:5\nevent:tick\ndata:{}\n\n")
    return b"".join(parts)


def test_parser_matches_the_reference_for_any_chunking() -> None:
    rng = random.Random(20261123)
    for _ in range(300):
        stream = random_stream(rng)
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, rng.randint(0, 12))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        got = [(e.event, e.data, e.id) for e in feed_all(SSEParser(), *chunks)]
        assert got == reference_parse(stream), chunks


AMOUNTS = (["1.5", "0", "43000.12000000", "0.000000000000000001"], ["0.000", "007", "-1", "1e5", "1" * 25, "1.5\n", ""])
FIELD_VARIANTS = {  # per field: good values (0 is not one for qty, bid and ask), hostile ones
    "qty": AMOUNTS,
    "side": (["buy", "sell"], ["BUY", " buy", "", "hold"]),
    "trade_id": (["3512345678", "a-B_9", "x" * 64], ["x" * 65, "", "1 2", "1\n"]),
    "bid": AMOUNTS,
    "bid_qty": AMOUNTS,
    "ask": AMOUNTS,
    "ask_qty": AMOUNTS,
}


def tick_variants(rng: random.Random) -> tuple[bytes, bool]:
    """A tick frame as sources write it, maybe with values the hub must refuse or in another form;
    and whether it is in the form source_tick_json writes with a canonical timestamp."""
    seq = rng.choice([1, 7, 1795461527312206, (1 << 63) - 1, 1 << 63, 10**19 - 1, 0])
    price = rng.choice(["43000.12", "0.000000000000000001", "0.00", "0", "007.50", "1" * 24 + ".5", "1" * 25])
    ts = rng.choice(
        [
            "2026-11-23T10:00:00.123456Z",
            "2026-02-30T10:00:00.000000Z",
            "2026-11-23T25:00:00.000000Z",
            "2026-11-23T10:00:00Z",
            "2026-11-23T10:00:00.123456+00:00",
        ]
    )
    symbol = rng.choice(["BTCUSD", "BINANCE:BTCUSDT", "btcusd", "X" * 40, "X" * 41, "-X"])
    fields = {
        name: rng.choice(good if rng.random() < 0.9 else hostile)
        for name, (good, hostile) in FIELD_VARIANTS.items()
        if rng.random() < 0.3  # each present or not: every combination comes up
    }
    canonical = rng.random() < 0.8
    if canonical:
        data = source_tick_json(rng.choice(["mock", "a-b_c", ""]), symbol, price, ts, seq, fields)
    else:  # the same values, keys in another order: only the general path reads these
        obj = {"seq": seq, "ts": ts, "price": price, "symbol": symbol, "source": "mock"}
        data = orjson.dumps({**dict(reversed(fields.items())), **obj})
    return tick_frame(seq if seq > 0 else 1, data), canonical and len(ts) == 27 and ts.endswith("Z")


def test_the_tick_fast_path_agrees_with_parse_source_tick_on_every_frame() -> None:
    """``SSEParser(ticks=True)`` yields a SourceTick exactly when parse_source_tick accepts the event,
    equal to its result; every refused or unusual frame comes out as the event, for the general path."""
    rng = random.Random(20261201)
    fast = 0
    for _ in range(6000):
        frame, canonical = tick_variants(rng)
        (event,) = feed_all(SSEParser(), frame)
        try:
            expected: SourceTick | str = parse_source_tick(event.data, event.id)
        except TickRejected as exc:
            expected = exc.reason
        (item,) = feed_all(SSEParser(ticks=True), frame)
        if type(item) is SourceTick:
            fast += 1
            assert item == expected, frame
        else:
            assert item == event, frame
            assert not (canonical and isinstance(expected, SourceTick)), (
                f"a canonical tick missed the fast path: {frame}"
            )
    assert fast > 30, "the fast path was taken"


def test_the_tick_fast_path_keeps_order_ids_and_chunking_with_other_events() -> None:
    rng = random.Random(7)
    parts = []
    for i in range(1, 200):
        parts.append(tick_frame(i, source_tick_json("mock", "META", f"{i}.5", "2026-11-23T10:00:00.000000Z", i)))
        if rng.random() < 0.2:
            parts.append(rng.choice([b": ping\n\n", b"event: note\ndata: hi\n\n", b"id: x\nevent: tick\ndata: {}\n\n"]))
    stream = b"".join(parts)
    plain = feed_all(SSEParser(), stream)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), k=rng.randint(0, 30)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        parser = SSEParser(ticks=True)
        items = feed_all(parser, *chunks)
        assert len(items) == len(plain)
        for item, event in zip(items, plain, strict=True):
            if type(item) is SourceTick:
                assert event.event == "tick" and parse_source_tick(event.data, event.id) == item
            else:
                assert item == event
        assert parser.last_id == plain[-1].id
