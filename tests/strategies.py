"""Hypothesis strategies for hostile source input, shared by the wire's property tests and the source fuzzer."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from hypothesis import strategies as st

#: Mostly well-formed values, with hostile ones mixed in.
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
GOOD_PRICES = st.one_of(  # above zero by construction: a filter would throw most small draws away
    st.from_regex(r"[1-9][0-9]{0,23}(\.[0-9]{1,18})?", fullmatch=True),
    st.from_regex(r"0\.[0-9]{0,16}[1-9][0-9]?", fullmatch=True),
)
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
GOOD_TRADE_IDS = st.one_of(
    st.integers(min_value=0, max_value=(1 << 63)).map(str),  # what exchanges send: digits
    st.from_regex(r"[0-9A-Za-z_-]{1,64}", fullmatch=True),
)
HOSTILE_TRADE_IDS = st.one_of(
    st.from_regex(r"[0-9A-Za-z_-]{1,64}", fullmatch=False),  # anything around a valid core
    st.text(alphabet="0123456789abc_-", min_size=65, max_size=70),
    HOSTILE_TEXT,
    st.text(max_size=70),
    st.integers(),  # a JSON number, not a string
    st.none(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
)
#: A quote's size may be 0; a trade's size, a bid and an ask may not.
GOOD_SIZES = st.one_of(GOOD_PRICES, st.sampled_from(["0", "0.0", "0.00000000"]))
HOSTILE_AMOUNTS = st.one_of(HOSTILE_PRICES, st.none(), st.booleans(), st.sampled_from(["-0", "+1", "1.", ".5"]))
GOOD_SIDES = st.sampled_from(["buy", "sell"])
HOSTILE_SIDES = st.one_of(
    st.sampled_from(["BUY", "Sell", "b", "", " buy", "buy\n", "bid", "ask"]), HOSTILE_TEXT, st.none(), st.integers()
)
FIELDS = {
    "symbol": (GOOD_SYMBOLS, HOSTILE_SYMBOLS),
    "price": (GOOD_PRICES, HOSTILE_PRICES),
    "ts": (GOOD_TIMESTAMPS, HOSTILE_TIMESTAMPS),
    "seq": (GOOD_SEQS, HOSTILE_SEQS),
}
#: The optional fields, in wire order: good and hostile values.
OPTIONAL = {
    "qty": (GOOD_PRICES, HOSTILE_AMOUNTS),
    "side": (GOOD_SIDES, HOSTILE_SIDES),
    "trade_id": (GOOD_TRADE_IDS, HOSTILE_TRADE_IDS),
    "bid": (GOOD_PRICES, HOSTILE_AMOUNTS),
    "bid_qty": (GOOD_SIZES, HOSTILE_AMOUNTS),
    "ask": (GOOD_PRICES, HOSTILE_AMOUNTS),
    "ask_qty": (GOOD_SIZES, HOSTILE_AMOUNTS),
}


# Mostly good, so that ticks with all seven come up; hypothesis draws the first choice most often.
KINDS = st.sampled_from(["good"] * 6 + ["absent"] * 3 + ["hostile"])


@st.composite
def optional_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Some of the optional fields, each absent, good or hostile; a size mostly comes with its price."""
    fields: dict[str, Any] = {}
    for name, (good, hostile) in OPTIONAL.items():
        kind = draw(KINDS)
        if kind == "absent" or (kind == "good" and name.endswith("_qty") and name[:3] not in fields):
            continue
        fields[name] = draw(good if kind == "good" else hostile)
    return fields


@st.composite
def source_event_objects(
    draw: st.DrawFn, good_seqs: st.SearchStrategy[Any] = GOOD_SEQS, hostile_seqs: st.SearchStrategy[Any] = HOSTILE_SEQS
) -> tuple[dict[str, Any], bool]:
    """A source event's JSON object, each field good, hostile or missing, and whether to encode it ASCII-only."""
    obj = {}
    for name, (good, hostile) in FIELDS.items():
        if name == "seq":
            good, hostile = good_seqs, hostile_seqs
        kind = draw(st.integers(0, 19))  # mostly well-formed, so that accepted ticks are common too
        if kind < 16:
            obj[name] = draw(good)
        elif kind < 19:
            obj[name] = draw(hostile)
    obj.update(draw(optional_fields()))
    if draw(st.booleans()):
        obj["source"] = draw(st.one_of(st.just("mock"), st.text(max_size=10)))
    return obj, draw(st.booleans())


def encode_event(obj: dict[str, Any], ensure_ascii: bool) -> bytes:
    """The stdlib encoder, as any source might use: big integers, NaN literals, escaped or raw unicode."""
    return json.dumps(obj, ensure_ascii=ensure_ascii).encode()


#: The data line of a source event (see :func:`source_event_objects`).
source_events = source_event_objects().map(lambda drawn: encode_event(*drawn))
