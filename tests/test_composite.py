"""The composite on hand-made venue prices: freshness, outliers, medians (exact), what is published
and what /health says; the instrument map's rules; extra tick fields that survive jsonb."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from tickhub.composite import CompositeBook
from tickhub.config import Settings, SettingsError, parse_sources
from tickhub.consolidation import Evaluation, VenuePrice, consolidated, evaluate
from tickhub.instruments import Instrument, InstrumentsError, VenueSpec, load_instruments, parse_instruments
from tickhub.wire import PRICE_RE, SourceTick, Tick, TickFields, format_ts

WINDOW = 10.0
MAX_DEV = Decimal("1")
NOW = 1_795_460_400.0  # 2026-11-23T19:00:00Z


def venue(source: str, price: str, age: float = 0.0, symbol: str = "BTCUSD") -> VenuePrice:
    """A venue whose latest price is ``age`` seconds old at NOW."""
    v = VenuePrice(source, symbol, "USD")
    made = datetime.fromtimestamp(NOW - age, UTC)
    v.update(Tick(1, source, symbol, price, made, 1), NOW)
    return v


def composite(*venues: VenuePrice, max_deviation: Decimal = MAX_DEV) -> Evaluation:
    return evaluate(venues, NOW, WINDOW, max_deviation)


def sources(vs: list[VenuePrice]) -> list[str]:
    return [v.source for v in vs]


def test_a_single_venue_is_the_composite_exactly_as_it_sent_it() -> None:
    result = composite(venue("a", "43210.55000000"))
    assert result == Evaluation("43210.55000000", result.used, [], [], None)
    assert sources(result.used) == ["a"]


def test_an_odd_count_takes_the_middle_price() -> None:
    result = composite(venue("a", "43000.30"), venue("b", "43000.10"), venue("c", "43000.2"))
    assert result.price == "43000.2"


def test_an_even_count_takes_the_exact_mean_of_the_middle_two() -> None:
    result = composite(venue("a", "43001.00"), venue("b", "43000.10"), venue("c", "43000.25"), venue("d", "43000.30"))
    assert result.price == "43000.275"
    assert composite(venue("a", "43210.55000000"), venue("b", "43210.10")).price == "43210.32500000"
    tiny = composite(venue("a", "0.00000001"), venue("b", "0.00000002"), max_deviation=Decimal(50))
    assert tiny.price == "0.000000015", "never 1.5E-8"
    big = "123456789012345678901234.123456789012345678"
    assert composite(venue("a", big), venue("b", big)).price == big, "24 + 18 digits stay exact"


def test_a_mean_past_18_places_is_rounded_half_even_to_18() -> None:
    low, high = "1.000000000000000001", "1.000000000000000002"
    assert composite(venue("a", low), venue("b", high)).price == "1.000000000000000002"  # ...0015 → even 2
    low, high = "1.000000000000000002", "1.000000000000000003"
    assert composite(venue("a", low), venue("b", high)).price == "1.000000000000000002"  # ...0025 → even 2
    assert PRICE_RE.match(composite(venue("a", low), venue("b", high)).price or "")
    low, high = "123456789012345678901234.123456789012345671", "123456789012345678901234.123456789012345672"
    assert composite(venue("a", low), venue("b", high)).price == high, "42 digits, still exact then half-even"


def test_a_stale_venue_is_left_out() -> None:
    result = composite(venue("a", "100.00"), venue("b", "101.00", age=WINDOW + 0.001), venue("c", "100.50"))
    assert result.price == "100.25"
    assert sources(result.used) == ["a", "c"] and sources(result.stale) == ["b"] and result.excluded == []
    assert composite(venue("a", "100.00", age=WINDOW)).price == "100.00", "fresh up to the window itself"


def test_an_outlier_is_excluded_against_the_median_of_all_fresh_venues() -> None:
    result = composite(venue("a", "100.00"), venue("b", "100.50"), venue("c", "150.00"))
    assert result.price == "100.25", "the median of the two that agree"
    assert sources(result.excluded) == ["c"] and sources(result.used) == ["a", "b"]
    # Exactly the limit is not "more than" it: 99 and 101 are 1% from the median 100.
    result = composite(venue("a", "99"), venue("b", "100"), venue("c", "101"))
    assert (result.price, result.excluded) == ("100", [])
    result = composite(venue("a", "99"), venue("b", "100"), venue("c", "101"), max_deviation=Decimal("0.999"))
    assert sources(result.excluded) == ["a", "c"] and result.price == "100"


def test_two_venues_that_disagree_are_both_excluded() -> None:
    result = composite(venue("a", "100"), venue("b", "103"))  # each 1.48% from their mean
    assert result.price is None and result.reason == "all_outliers"
    assert sources(result.excluded) == ["a", "b"]


def test_all_stale_or_nothing_yet_gives_no_price() -> None:
    result = composite(venue("a", "100", age=11), venue("b", "101", age=60))
    assert result.price is None and result.reason == "all_stale" and sources(result.stale) == ["a", "b"]
    assert composite() == Evaluation(None, [], [], [], "no_data")


def test_a_price_is_as_old_as_the_earlier_of_its_source_time_and_its_arrival() -> None:
    replayed = VenuePrice("a", "BTCUSD", "USD")
    replayed.update(Tick(1, "a", "BTCUSD", "100", datetime.fromtimestamp(NOW - 60, UTC), 1), NOW)
    assert composite(replayed).reason == "all_stale", "an old tick arriving now is not news"
    ahead = VenuePrice("a", "BTCUSD", "USD")
    ahead.update(Tick(1, "a", "BTCUSD", "100", datetime.fromtimestamp(NOW + 3600, UTC), 1), NOW - 11)
    assert composite(ahead).reason == "all_stale", "a clock running ahead still ages from arrival"


# --- the book: what is published, counted and reported -------------------------------------------

BTC = Instrument(
    "BTC-USD",
    "USD",
    ("USDT",),
    (VenueSpec("BINANCE:BTCUSDT", "binance", "USDT"), VenueSpec("BTCUSD", None, "USD")),
)


def book(last_seq: int = 0) -> tuple[CompositeBook, list[SourceTick]]:
    published: list[SourceTick] = []
    return CompositeBook([BTC], WINDOW, MAX_DEV, published.append, last_seq), published


def tick(source: str, symbol: str, price: str, age: float = 0.0, n: int = 1) -> Tick:
    return Tick(n, source, symbol, price, datetime.now(UTC) - timedelta(seconds=age), n)


def feed(b: CompositeBook, t: Tick) -> None:
    routes = b.routes.get(t.symbol)
    if routes is not None:
        b.on_tick(t, routes)


def test_a_venue_tick_publishes_the_composite_with_its_venues_when_it_changes() -> None:
    b, published = book()
    feed(b, tick("mock-a", "BTCUSD", "43000.00"))
    feed(b, tick("binance", "BINANCE:BTCUSDT", "43001.00000000"))
    feed(b, tick("mock-b", "BTCUSD", "43000.50"))  # any source: a venue of its own
    first, second, third = published
    assert (first.symbol, first.price, second.price, third.price) == (
        "BTC-USD",
        "43000.00",
        "43000.50000000",
        "43000.50",
    )
    assert third.extra == {
        "venues": [
            {
                "source": "binance",
                "symbol": "BINANCE:BTCUSDT",
                "price": "43001.00000000",
                "ts": third.extra["venues"][0]["ts"],
            },
            {"source": "mock-a", "symbol": "BTCUSD", "price": "43000.00", "ts": third.extra["venues"][1]["ts"]},
            {"source": "mock-b", "symbol": "BTCUSD", "price": "43000.50", "ts": third.extra["venues"][2]["ts"]},
        ]
    }
    assert first.seq < second.seq < third.seq
    assert abs(first.time.timestamp() - time.time()) < 5 and first.ts == format_ts(first.time)
    feed(b, tick("elsewhere", "BINANCE:BTCUSDT", "1.00"))  # the entry names source binance
    feed(b, tick("composite", "BTCUSD", "1.00"))  # a composite never feeds a composite
    feed(b, tick("mock-b", "BTCUSD", "43000.50"))  # the same price from the same venues
    assert len(published) == 3 and b.books["BTC-USD"].published == 3
    assert b.books["BTC-USD"].skipped == {"unchanged": 1}
    feed(b, tick("mock-a", "BTCUSD", "42999.00"))  # a new price of a venue off the middle, same median
    assert len(published) == 3
    feed(b, tick("mock-a", "BTCUSD", "43000.75"))
    assert published[-1].price == "43000.75"


def test_seq_stays_above_the_last_persisted_even_with_the_clock_behind() -> None:
    ahead = time.time_ns() // 1000 + 10**9
    b, published = book(last_seq=ahead)
    for n in range(3):
        feed(b, tick("m", "BTCUSD", f"100.0{n}", n=n))
    assert [p.seq for p in published] == [ahead + 1, ahead + 2, ahead + 3]


def test_outliers_are_counted_and_all_stale_publishes_nothing_and_health_says_why() -> None:
    b, published = book()
    feed(b, tick("a", "BTCUSD", "100.00"))
    feed(b, tick("b", "BTCUSD", "100.10"))
    feed(b, tick("c", "BTCUSD", "150.00"))
    assert [p.price for p in published] == ["100.00", "100.05"], "c changes nothing: it is excluded"
    venues = {v.source: v for v in b.books["BTC-USD"].venues}
    assert venues["c"].exclusions == 1 and b.books["BTC-USD"].skipped == {"unchanged": 1}
    health = b.health()["BTC-USD"]
    assert health["status"] == "ok" and [v["source"] for v in health["excluded"]] == ["c"]
    report = b.report()[0]
    assert [(v["source"], v["state"], v["excluded"], v["exclusions"]) for v in report["venues"]] == [
        ("a", "fresh", False, 0),
        ("b", "fresh", False, 0),
        ("c", "excluded", True, 1),
    ]
    assert report["map"] == [
        {"symbol": "BINANCE:BTCUSDT", "source": "binance", "quote": "USDT"},
        {"symbol": "BTCUSD", "source": None, "quote": "USD"},
    ]

    b, published = book()
    feed(b, tick("a", "BTCUSD", "100.00", age=30))  # say, replayed after a reconnect
    feed(b, tick("b", "BTCUSD", "100.10", age=60))
    assert published == [] and b.books["BTC-USD"].skipped == {"all_stale": 2}
    health = b.health()["BTC-USD"]
    assert health["status"] == "no_composite" and "older than the window" in health["reason"]
    assert [v["source"] for v in health["stale"]] == ["a", "b"] and health["fresh"] == []
    assert b.report()[0]["status"] == "all_stale"


def test_seed_takes_persisted_prices_without_publishing() -> None:
    b, published = book()
    b.seed([tick("a", "BTCUSD", "100.00"), tick("composite", "BTC-USD", "100.00"), tick("x", "META", "5")])
    assert published == [] and [v.source for v in b.books["BTC-USD"].venues] == ["a"]
    feed(b, tick("b", "BTCUSD", "100.20"))
    assert published[-1].price == "100.10"


# --- extra fields on ticks --------------------------------------------------------------------------


def test_extra_fields_follow_seq_and_encode_the_same_after_jsonb_reorders_them() -> None:
    at = datetime(2026, 11, 23, 19, 0, tzinfo=UTC)
    live = Tick(
        7,
        "composite",
        "BTC-USD",
        "1.5",
        at,
        9,
        None,
        {"venues": [{"source": "a", "symbol": "X", "price": "1.5", "ts": "t"}]},
    )
    assert live.json.startswith(
        b'{"id":"7","source":"composite","symbol":"BTC-USD","price":"1.5","ts":"2026-11-23T19:00:00.000000Z","seq":9,"venues":['
    )
    as_jsonb = '{"venues": [{"ts": "t", "price": "1.5", "source": "a", "symbol": "X"}]}'  # jsonb's key order
    assert Tick(7, "composite", "BTC-USD", "1.5", at, 9, None, orjson.loads(as_jsonb)).json == live.json
    assert Tick(7, "s", "X", "1", at, 9).extra is None
    with pytest.raises(ValueError, match="price"):
        Tick(7, "s", "X", "1", at, 9, None, {"price": "2"})


# --- the instrument map ---------------------------------------------------------------------------


def test_the_built_in_map_and_none() -> None:
    instruments = {i.name: i for i in load_instruments("")}
    btc = instruments["BTC-USD"]
    assert (btc.quote, btc.accept) == ("USD", ("USDT",))
    assert VenueSpec("BINANCE:BTCUSDT", "binance", "USDT") in btc.venues
    assert VenueSpec("KRAKEN:BTC-USD", "kraken", "USD") in btc.venues
    assert VenueSpec("BTCUSD", None, "USD") in btc.venues
    assert load_instruments("none") == ()


GOOD = """
[instruments.BTC-USD]
quote = "USD"
venues = [{ symbol = "COINBASE:BTC-USD", source = "coinbase", quote = "USD" }]
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace('"COINBASE:BTC-USD", source = "coinbase", quote = "USD"', '"BINANCE:BTCUSDT", quote = "USDT"'),
            'quoted in USDT but the instrument in USD; add accept = ["USDT"]',
        ),
        (GOOD.replace(', quote = "USD" }', " }"), "venues[0].quote: required"),
        (GOOD.replace('quote = "USD"\n', 'quote = "USD"\nweight = 2\n', 1), "unknown key 'weight'"),
        (GOOD.replace('source = "coinbase"', 'source = "composite"'), "never feed a composite"),
        (GOOD.replace("[instruments.BTC-USD]", "[instruments.COINBASE:BTC-USD]"), "not valid TOML"),
        (GOOD.replace("[instruments.BTC-USD]", '[instruments."COINBASE:BTC-USD"]'), "also an instrument's name"),
        (GOOD.replace("venues = [", 'venues = [{ symbol = "COINBASE:BTC-USD", quote = "USD" }, '), "already matched"),
        (GOOD.replace("[instruments.BTC-USD]", "[instruments.btc-usd]"), "upper-case symbol"),
        ('[instruments.X]\nquote = "USD"\nvenues = []\n', "non-empty list"),
    ],
)
def test_a_bad_map_fails_with_one_line_naming_the_entry(text: str, message: str) -> None:
    assert parse_instruments(GOOD)
    with pytest.raises(InstrumentsError) as info:
        parse_instruments(text, "my.toml")
    assert message in str(info.value) and str(info.value).startswith("my.toml") and "\n" not in str(info.value)


def test_settings_name_the_instruments_file_and_reserve_the_composite_source(tmp_path: Path) -> None:
    path = tmp_path / "instruments.toml"
    path.write_text(GOOD.replace('source = "coinbase", ', "").replace("COINBASE:BTC-USD", "BTCUSD"))
    settings = Settings.from_env(environ={"TICKHUB_INSTRUMENTS": str(path)}, env_file=None)
    assert [i.name for i in load_instruments(settings.instruments)] == ["BTC-USD"]
    for bad in (str(tmp_path / "missing.toml"), str(tmp_path)):
        with pytest.raises(SettingsError, match=r"^TICKHUB_INSTRUMENTS="):
            Settings.from_env(environ={"TICKHUB_INSTRUMENTS": bad}, env_file=None)
    with pytest.raises(SettingsError, match=r"^TICKHUB_COMPOSITE_MAX_DEVIATION"):
        Settings.from_env(environ={"TICKHUB_COMPOSITE_MAX_DEVIATION": "nan"}, env_file=None)
    with pytest.raises(ValueError, match="reserved"):
        parse_sources("composite=http://127.0.0.1:1/stream")


def test_composite_timestamps_match_format_ts_across_second_boundaries() -> None:
    b, _ = book()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for us in (0, 1_795_460_400_123_456, 1_795_460_400_999_999, 1_795_460_401_000_000, 951_782_400_000_001):
        assert b._ts(us) == format_ts(epoch + timedelta(microseconds=us))


def quoted(source: str, price: str, bid: str, ask: str, age: float = 0.0, quote_age: float | None = None) -> VenuePrice:
    """A venue with a quote (bid and ask sized 1.5 and 2), its quote ``quote_age`` seconds old."""
    v = VenuePrice(source, "BTCUSD", "USD")
    fields = TickFields.of(bid=bid, bid_qty="1.5", ask=ask, ask_qty="2")
    made = datetime.fromtimestamp(NOW - (age if quote_age is None else quote_age), UTC)
    v.update(Tick(1, source, "BTCUSD", price, made, 1, None, None, fields), NOW)
    if quote_age is not None:  # a later trade without a quote: the price is fresher than the quote
        v.update(Tick(2, source, "BTCUSD", price, datetime.fromtimestamp(NOW - age, UTC), 2), NOW)
    return v


def test_the_consolidated_quote_is_the_best_bid_and_ask_of_the_fresh_venues_used() -> None:
    a = quoted("a", "100.00", bid="99.50", ask="100.60")
    b = quoted("b", "100.10", bid="99.80", ask="100.40")
    c = quoted("c", "100.05", bid="99.90", ask="100.30", quote_age=WINDOW + 1)  # its quote is stale
    result = composite(a, b, c)
    assert result.best_bid is b and result.best_ask is b
    assert consolidated(result) == ("99.80", "1.5", ("b", "BTCUSD"), "100.40", "2", ("b", "BTCUSD"))
    far = quoted("far", "150.00", bid="149.00", ask="150.00")  # an outlier's quote is left out too
    assert composite(a, b, far).best_ask is b
    crossed = quoted("x", "100.00", bid="100.50", ask="100.70")  # across venues the best bid may pass the best ask
    result = composite(a, crossed)
    assert result.best_bid is crossed and result.best_ask is a
    assert composite(venue("plain", "100.00")).best_bid is None


def test_a_composite_carries_the_consolidated_quote_and_its_venues() -> None:
    b, published = book()
    for source, bid, ask in (("mock-a", "42999.00", "43001.00"), ("mock-b", "42999.50", "43002.00")):
        fields = TickFields.of(bid=bid, bid_qty="0.5", ask=ask, ask_qty="0.25")
        feed(b, Tick(1, source, "BTCUSD", "43000.00", datetime.now(UTC), 1, None, None, fields))
    last = published[-1]
    assert last.fields is not None and last.fields.values()[3:] == ("42999.50", "0.5", "43001.00", "0.25")
    assert last.extra["best"] == {
        "bid": {"source": "mock-b", "symbol": "BTCUSD"},
        "ask": {"source": "mock-a", "symbol": "BTCUSD"},
    }
    report = b.report()[0]
    assert report["best"]["bid"] == {"price": "42999.50", "qty": "0.5", "source": "mock-b", "symbol": "BTCUSD"}
    count = len(published)
    fields = TickFields.of(bid="42999.60", bid_qty="0.5", ask="43002.00", ask_qty="0.25")
    feed(b, Tick(2, "mock-b", "BTCUSD", "43000.00", datetime.now(UTC), 2, None, None, fields))
    assert len(published) == count + 1, "a new best bid alone publishes a composite"
