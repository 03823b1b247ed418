"""The Binance bridge over WebSocket, against a local fake Binance: seed snapshot, exact trade prices,
malformed frames, pings, abrupt closes, serverShutdown, connection age, stale links, stream splitting
and the outgoing message rate."""

from __future__ import annotations

import argparse
import re
from typing import Any

import orjson
import pytest
from fake_exchanges import FakeBinance, sample, sample_text
from helpers import RunningBridge, SSEStream, get_json, running_bridge, subscribe, wait_for

from sources import binance
from sources.binance import BinanceAdapter, BinanceBridge, BinanceSettings
from sources.bridge import BridgeSettings, ExchangeBridge
from sources.exchange import Malformed, Quote, Reconnect, ts_from_ms

TRADE_MS = 1795460400121  # 2026-11-23T19:00:00.121Z


def binance_settings(
    fake: FakeBinance, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"), **kw: Any
) -> BinanceSettings:
    """Short timers so a test never waits long; everything else as in production."""
    base: dict[str, Any] = {
        "ws_url": fake.ws_url,
        "rest_url": fake.http_url,
        "symbols": symbols,
        "name": "binance",
        "stale_timeout": 5.0,
        "connect_timeout": 2.0,
        "close_timeout": 0.5,
        "reconnect_min": 0.01,
        "reconnect_max": 0.05,
        "heartbeat": 0.5,
        "startup_attempts": 2,
    }
    return BinanceSettings(**(base | kw))


async def source_ticks(stream: SSEStream, n: int) -> list[dict[str, Any]]:
    """The next ``n`` tick events of a source feed, checking each SSE id is the tick's seq."""
    out = []
    while len(out) < n:
        event = await stream.next_event("tick", timeout=5)
        tick = orjson.loads(event.data)
        assert event.id == str(tick["seq"])
        out.append(tick)
    return out


def seeds(bridge: RunningBridge) -> int:
    """Events the bridge published at start-up (one ``ticker/price`` row per symbol)."""
    return len(bridge.bridge.adapter.symbols)


# --- the adapter alone ----------------------------------------------------------------------------


def test_a_trade_becomes_a_quote_with_the_exact_price_size_side_and_trade_time() -> None:
    adapter = BinanceAdapter("wss://x", ["BTCUSDT"])
    [quote] = adapter.decode(sample_text("binance_trade"))
    assert quote == Quote(
        "BINANCE:BTCUSDT", "43211.01000000", "2026-11-23T19:00:00.121000Z", "3512345678", "0.00150000", "sell"
    ), "m: the buyer was the maker, so a seller took the bid"
    taker_buys = sample("binance_trade") | {"data": sample("binance_trade")["data"] | {"m": False}}
    assert adapter.decode(orjson.dumps(taker_buys).decode())[0].side == "buy"
    raw = orjson.dumps(sample("binance_trade")["data"]).decode()  # a raw /ws payload, without the wrapper
    assert adapter.decode(raw) == [quote]


def test_a_book_ticker_is_a_quote_without_a_price_and_an_empty_side_is_left_out() -> None:
    adapter = BinanceAdapter("wss://x", ["BNBUSDT"])
    [quote] = adapter.decode(sample_text("binance_book_ticker"))
    assert quote._replace(ts="now") == Quote(
        "BINANCE:BNBUSDT",
        None,
        "now",
        bid="25.35190000",
        bid_qty="31.21000000",
        ask="25.36520000",
        ask_qty="40.66000000",
    )
    assert quote.ts.endswith("Z"), "the bridge's clock: the spot book ticker has no time"
    no_bids = FakeBinance.book_ticker("BNBUSDT", "0.00000000", "0.00000000", "25.4", "1.5")
    [quote] = adapter.decode(orjson.dumps(no_bids).decode())
    assert (quote.bid, quote.bid_qty, quote.ask, quote.ask_qty) == (None, None, "25.4", "1.5")


def test_a_quote_update_takes_the_last_price_published_and_waits_for_one() -> None:
    adapter = BinanceAdapter("wss://x", ["BNBUSDT"])
    bridge = ExchangeBridge(adapter, BridgeSettings("wss://x", ("BNBUSDT",), "binance"))
    book = adapter.decode(sample_text("binance_book_ticker"))[0]
    assert not bridge.publish(book) and bridge.unpriced == 1, "no price known yet: skipped"
    trade = Quote("BINANCE:BNBUSDT", "25.36", "2026-11-23T19:00:00.121000Z", "1", "2.5", "buy")
    assert bridge.publish(trade) and bridge.publish(book)
    latest = bridge.latest["BINANCE:BNBUSDT"]
    assert (latest.price, latest.bid, latest.ask, latest.qty) == ("25.36", "25.35190000", "25.36520000", None)
    assert bridge.feed.next_seq - bridge.feed.first_seq == 2 and bridge.health()["unpriced"] == 1


@pytest.mark.parametrize(
    "text",
    [
        sample_text("binance_server_shutdown"),
        '{"e": "serverShutdown", "E": 1795460400500}',
        '{"stream": "btcusdt@trade", "data": {"e": "serverShutdown", "E": 1795460400500}}',
    ],
)
def test_server_shutdown_asks_for_a_new_connection(text: str) -> None:
    with pytest.raises(Reconnect):
        BinanceAdapter("wss://x", ["BTCUSDT"]).decode(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "unrecognised"),
        ('{"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "p": "1"}}', "unrecognised"),
        ('{"data": {"e": "trade", "s": "BTCUSDT", "p": "1.0", "T": 1, "t": -1}}', "bad_trade_id"),
        ('{"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "T": 1}}', "missing_field"),
        ('{"data": {"e": "trade", "s": "BTCUSDT", "p": "1.0", "T": "soon"}}', "bad_ts"),
        ('{"data": {"e": "trade", "s": "DOGEUSDT", "p": "1.0", "T": 1}}', "unknown_symbol"),
        ('{"data": {"e": "trade", "s": "BTCUSDT", "p": "1.0", "T": 1, "m": "yes"}}', "bad_side"),
        ('{"stream": "dogeusdt@bookTicker", "data": {"u": 1, "s": "DOGEUSDT", "b": "1", "a": "2"}}', "unknown_symbol"),
        ('{"stream": "btcusdt@bookTicker", "data": {"u": 1, "b": "1", "a": "2"}}', "missing_field"),
        ('{"error": {"code": 2, "msg": "Invalid request"}, "id": 1}', "exchange_error"),
    ],
)
def test_malformed_messages_name_their_reason(text: str, reason: str) -> None:
    with pytest.raises(Malformed) as info:
        BinanceAdapter("wss://x", ["BTCUSDT"]).decode(text)
    assert info.value.reason == reason


def test_acks_carry_no_quote_and_a_trade_without_an_id_is_still_a_price() -> None:
    adapter = BinanceAdapter("wss://x", ["BTCUSDT"])
    assert adapter.decode(sample_text("binance_subscribe_ack")) == []
    [quote] = adapter.decode('{"data": {"e": "trade", "s": "BTCUSDT", "p": "1.0", "T": 1795460400121}}')
    assert quote.trade_id is None


def test_streams_are_split_at_max_streams_and_the_url_holds_only_the_first_few() -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"]
    plans = BinanceAdapter("wss://x:9443", symbols, max_streams=3, url_streams=2, subscribe_batch=1).plans()
    assert [p.url for p in plans] == [  # each symbol's trades and book ticker, in that order
        "wss://x:9443/stream?streams=btcusdt@trade/btcusdt@bookTicker",
        "wss://x:9443/stream?streams=ethusdt@bookTicker/bnbusdt@trade",
        "wss://x:9443/stream?streams=solusdt@trade/solusdt@bookTicker",
        "wss://x:9443/stream?streams=xrpusdt@bookTicker",
    ]
    assert [orjson.loads(m) for m in plans[0].messages] == [
        {"method": "SUBSCRIBE", "params": ["ethusdt@trade"], "id": 1}
    ]
    assert [p.streams for p in plans] == [3, 3, 3, 1] and plans[3].messages == ()


def test_default_settings_renew_connections_before_binance_closes_them_at_24h() -> None:
    settings = BinanceSettings(ws_url="wss://x", symbols=("BTCUSDT",), name="binance")
    assert settings.max_age is not None and 23 * 3600 <= settings.max_age < 24 * 3600
    assert settings.stale_timeout > 20, "longer than Binance's 20 s ping interval"


@pytest.mark.parametrize(
    ("argv", "symbols"),
    [
        ([], ("BTCUSDT", "ETHUSDT")),
        (["--symbols", "bnbusdt, BTCUSDT,bnbusdt"], ("BNBUSDT", "BTCUSDT")),
        (["--mode", "rest"], ()),  # every TRADING pair
        (["--mode", "rest", "--symbols", "all"], ()),
        (["--mode", "rest", "--symbols", "BTCUSDT"], ("BTCUSDT",)),
    ],
)
def test_command_line_symbols(argv: list[str], symbols: tuple[str, ...]) -> None:
    parser = argparse.ArgumentParser()
    binance.add_arguments(parser)
    assert binance.settings_from_args(parser.parse_args(argv)).symbols == symbols


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--symbols", "all"], "--symbols all needs --mode rest"),
        (["--max-streams", "2000"], "--max-streams must be 1..1024"),
        (["--rest-url", "ftp://x"], "--rest-url='ftp://x' is invalid"),
        (["--name", "Binance"], "--name must be a lower-case source name"),
    ],
)
def test_bad_command_lines_fail_with_one_line(argv: list[str], message: str) -> None:
    parser = argparse.ArgumentParser()
    binance.add_arguments(parser)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        binance.settings_from_args(parser.parse_args(argv))


# --- against the fake exchange --------------------------------------------------------------------


async def test_seed_snapshot_then_trades_with_exact_prices_and_trade_times() -> None:
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake))) as bridge:
        conn = await fake.connection(0)
        assert conn.query == {"streams": "btcusdt@trade/btcusdt@bookTicker/ethusdt@trade/ethusdt@bookTicker"}
        async with subscribe(bridge.base, last_event_id="0") as stream:
            seeds = await source_ticks(stream, 2)
            await conn.send(fake.trade("BTCUSDT", "43211.01000000", TRADE_MS))
            await conn.send(fake.trade("ETHUSDT", "2250.10000000", TRADE_MS + 5))
            trades = await source_ticks(stream, 2)
    assert {(t["symbol"], t["price"]) for t in seeds} == {
        ("BINANCE:BTCUSDT", "43210.55000000"),
        ("BINANCE:ETHUSDT", "2250.01000000"),
    }
    assert [(t["source"], t["symbol"], t["price"], t["ts"]) for t in trades] == [
        ("binance", "BINANCE:BTCUSDT", "43211.01000000", "2026-11-23T19:00:00.121000Z"),
        ("binance", "BINANCE:ETHUSDT", "2250.10000000", "2026-11-23T19:00:00.126000Z"),
    ]
    seqs = [t["seq"] for t in seeds + trades]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    info = fake.requests_to("/api/v3/exchangeInfo")
    assert [q for _, _, q in info] == [{"symbols": '["BTCUSDT","ETHUSDT"]'}], "one compact exchangeInfo call"


async def test_trades_and_book_tickers_carry_sizes_sides_and_quotes_exactly() -> None:
    """The seed price, then a book ticker (a tick at the seed price), a trade, another book ticker (at
    the trade's price): every size and quote as Binance wrote it, in the wire order."""
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake, ("BTCUSDT",)))) as bridge:
        conn = await fake.connection(0)
        async with subscribe(bridge.base, last_event_id="0") as stream:
            [seed] = await source_ticks(stream, 1)
            await conn.send(fake.book_ticker("BTCUSDT", "43210.50000000", "0.01000000", "43210.60000000", "2.00000000"))
            trade = fake.trade("BTCUSDT", "43210.60000000", TRADE_MS)
            trade["data"] |= {"q": "0.12345678", "m": False}
            await conn.send(trade)
            await conn.send(fake.book_ticker("BTCUSDT", "43210.60000000", "1.50000000", "43210.70000000", "0.00000001"))
            ticks = await source_ticks(stream, 3)
    keys = ("price", "qty", "side", "trade_id", "bid", "bid_qty", "ask", "ask_qty")
    assert [{k: t[k] for k in keys if k in t} for t in ticks] == [
        {
            "price": seed["price"],
            "bid": "43210.50000000",
            "bid_qty": "0.01000000",
            "ask": "43210.60000000",
            "ask_qty": "2.00000000",
        },
        {"price": "43210.60000000", "qty": "0.12345678", "side": "buy", "trade_id": str(trade["data"]["t"])},
        {
            "price": "43210.60000000",
            "bid": "43210.60000000",
            "bid_qty": "1.50000000",
            "ask": "43210.70000000",
            "ask_qty": "0.00000001",
        },
    ]
    assert [list(t)[5:] for t in ticks] == [  # source, symbol, price, ts, seq, then
        ["bid", "bid_qty", "ask", "ask_qty"],
        ["qty", "side", "trade_id"],
        ["bid", "bid_qty", "ask", "ask_qty"],
    ], "after seq, in the wire's order"


async def test_a_consumer_arriving_live_first_gets_the_latest_price_of_every_symbol() -> None:
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake))) as bridge:
        conn = await fake.connection(0)
        await conn.send(fake.trade("BTCUSDT", "43211.01000000", TRADE_MS))
        await wait_for(lambda: bridge.bridge.published == seeds(bridge) + 1, what="a trade before any consumer")
        async with subscribe(bridge.base) as stream:  # no Last-Event-ID: live, as a hub's first connection
            latest = await source_ticks(stream, 2)
    by_symbol = {t["symbol"]: t for t in latest}
    assert (by_symbol["BINANCE:BTCUSDT"]["price"], by_symbol["BINANCE:BTCUSDT"]["ts"]) == (
        "43211.01000000",  # the trade, newer than the start-up snapshot
        "2026-11-23T19:00:00.121000Z",
    )
    assert by_symbol["BINANCE:ETHUSDT"]["price"] == "2250.01000000", "the start-up snapshot"


async def test_consumers_attaching_at_any_time_see_every_trade_once_under_consecutive_seqs() -> None:
    """Replaying 500 trades, then a consumer arriving live (as a hub's first connection does), then one
    resuming from an older Last-Event-ID: the live one is given the newest event of each symbol from
    the ring, under its own seq, and nothing is published again, so the resuming one sees every trade
    (price, trade time) once and seqs with no gap and no repeat."""
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake))) as bridge:
        feed = bridge.bridge.feed
        conn = await fake.connection(0)
        sent = fake.replay_trades(500, ("BTCUSDT", "ETHUSDT"))
        for trade in sent:
            await conn.send(trade)
        await wait_for(lambda: bridge.bridge.connections[0].quotes == 500, what="the 500 trades")
        before = feed.next_seq
        async with subscribe(bridge.base) as live:
            greeted = await source_ticks(live, 2)
        assert feed.next_seq == before, "attaching a consumer published nothing"
        async with subscribe(bridge.base, last_event_id=str(feed.first_seq)) as resuming:
            replayed = await source_ticks(resuming, feed.next_seq - 1 - feed.first_seq)
    seqs = [t["seq"] for t in replayed]
    assert seqs == list(range(feed.first_seq + 1, feed.next_seq))
    seen = [(t["symbol"], t["price"], t["ts"]) for t in replayed]
    assert len(seen) == len(set(seen)), "no price and trade time twice"
    trades = [(f"BINANCE:{m['data']['s']}", m["data"]["p"], ts_from_ms(m["data"]["T"])) for m in sent]
    assert [k for k in seen if k in set(trades)] == trades, "every trade once, in order"
    by_seq = {t["seq"]: t for t in replayed}
    assert all(by_seq[t["seq"]] == t for t in greeted), "the live consumer got ring events, with their own seqs"
    newest = {t["symbol"]: t["seq"] for t in replayed}
    assert [t["seq"] for t in greeted] == sorted(newest.values()), "the newest of each symbol, in seq order"


async def test_malformed_frames_are_counted_and_skipped_and_the_bridge_goes_on() -> None:
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake))) as bridge:
        conn = await fake.connection(0)
        for bad in (
            "{not json",
            "[]",
            {"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "T": TRADE_MS}},
            fake.trade("BTCUSDT", "-1.00"),
            fake.trade("BTCUSDT", "0.00000000"),
            fake.trade("BTCUSDT", "1e5"),
        ):
            await conn.send(bad)
        await conn.send_bytes(b"\x00\x01")
        await conn.send(fake.trade("BTCUSDT", "43212.00000000"))
        await wait_for(lambda: bridge.bridge.published == seeds(bridge) + 1, what="the good trade after the bad frames")
        status, health = await get_json(f"{bridge.base}/health")
    assert status == 200 and health["status"] == "ok"
    assert health["malformed"] == {"bad_json": 1, "unrecognised": 1, "missing_field": 1, "bad_price": 3, "binary": 1}
    assert health["connections"][0]["connects"] == 1, "no reconnect for bad frames"


async def test_server_pings_are_answered_with_their_payload() -> None:
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake))) as bridge:
        conn = await fake.connection(0)
        await conn.ping(b"tickhub-1")
        await conn.ping(b"tickhub-2")
        await wait_for(lambda: conn.pongs == [b"tickhub-1", b"tickhub-2"], what="two pongs")
        assert bridge.bridge.connections[0].connects == 1


async def test_an_abrupt_close_mid_stream_is_reconnected_and_seq_keeps_increasing() -> None:
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake))) as bridge:
        async with subscribe(bridge.base, last_event_id="0") as stream:
            first = await fake.connection(0)
            await first.send(fake.trade("BTCUSDT", "43211.00000000"))
            before = await source_ticks(stream, 3)
            first.abort()
            second = await fake.connection(1)
            await second.send(fake.trade("BTCUSDT", "43213.50000000"))
            [after] = await source_ticks(stream, 1)
        stats = bridge.bridge.connections[0]
    assert after["price"] == "43213.50000000" and after["seq"] == before[-1]["seq"] + 1
    assert stats.reconnects == {"closed": 1} and stats.connects == 2


async def test_server_shutdown_event_opens_a_new_connection() -> None:
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake))) as bridge:
        first = await fake.connection(0)
        await first.send(sample_text("binance_server_shutdown"))
        second = await fake.connection(1)
        await wait_for(first.closed.is_set, what="the old connection to be closed by the bridge")
        await second.send(fake.trade("ETHUSDT", "2251.00000000"))
        await wait_for(lambda: bridge.bridge.published == seeds(bridge) + 1, what="a trade on the new connection")
        assert bridge.bridge.connections[0].reconnects == {"server_shutdown": 1}


async def test_a_connection_is_renewed_when_it_reaches_max_age() -> None:
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake, max_age=0.3))) as bridge:
        first = await fake.connection(0)
        await fake.connection(1)
        await wait_for(first.closed.is_set, what="the old connection to be closed")
        assert bridge.bridge.connections[0].reconnects["max_age"] >= 1
        assert "stale" not in bridge.bridge.connections[0].reconnects


async def test_a_silent_connection_is_reconnected_by_the_stale_watchdog() -> None:
    async with (
        FakeBinance() as fake,
        running_bridge(BinanceBridge(binance_settings(fake, stale_timeout=0.2))) as bridge,
    ):
        await fake.connection(2)
        assert bridge.bridge.connections[0].reconnects["stale"] >= 2


async def test_streams_beyond_max_streams_go_to_another_connection() -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    async with (
        FakeBinance() as fake,
        running_bridge(BinanceBridge(binance_settings(fake, symbols=symbols, max_streams=2))) as bridge,
    ):
        await fake.connection(2)
        assert sorted(c.query["streams"] for c in fake.connections) == [
            "bnbusdt@trade/bnbusdt@bookTicker",
            "btcusdt@trade/btcusdt@bookTicker",
            "ethusdt@trade/ethusdt@bookTicker",
        ]
        by_streams = {c.query["streams"].split("@")[0]: c for c in fake.connections}
        await by_streams["bnbusdt"].send(fake.trade("BNBUSDT", "312.50000000"))
        await by_streams["btcusdt"].send(fake.trade("BTCUSDT", "43200.00000000"))
        await wait_for(lambda: bridge.bridge.published == seeds(bridge) + 2, what="trades on two connections")
        _, health = await get_json(f"{bridge.base}/health")
    assert [c["streams"] for c in health["connections"]] == [2, 2, 2]


async def test_subscribe_messages_stay_under_five_per_second() -> None:
    symbols = ("BTCUSDT", *(f"X{i:04d}USDT" for i in range(6)))
    async with (
        FakeBinance(extra_pairs=6) as fake,
        running_bridge(
            BinanceBridge(binance_settings(fake, symbols=symbols, url_streams=2, subscribe_batch=2))
        ) as bridge,
    ):
        conn = await fake.connection(0)
        await wait_for(lambda: len(conn.received) == 6, what="six SUBSCRIBE messages")
        await conn.send(fake.trade("X0005USDT", "6.05000000"))
        await wait_for(lambda: bridge.bridge.published == seeds(bridge) + 1, what="a trade of a SUBSCRIBEd stream")
    times = [t for t, _ in conn.received]
    assert conn.query == {"streams": "btcusdt@trade/btcusdt@bookTicker"}
    assert [m["params"] for m in conn.messages] == [
        [f"x{i:04d}usdt@trade", f"x{i:04d}usdt@bookTicker"] for i in range(6)
    ]
    # paced sends, timed where they arrive: a little slack for the loop (unpaced, six arrive within ms)
    assert all(times[i + 4] - times[i] >= 0.9 for i in range(len(times) - 4)), "no 5 messages within a second"


async def test_failed_handshakes_back_off_with_growing_capped_delays() -> None:
    async with FakeBinance() as fake:
        fake.refuse = 6
        settings = binance_settings(fake, reconnect_min=0.02, reconnect_max=0.16)
        async with running_bridge(BinanceBridge(settings)) as bridge:
            await fake.connection(0)
            gaps = [b - a for a, b in zip(fake.attempts, fake.attempts[1:], strict=False)]
            assert bridge.bridge.connections[0].reconnects == {"connect_failed": 6}
    assert len(gaps) == 6
    assert min(gaps[:2]) < 0.1 and gaps[4] >= 0.08 and gaps[5] >= 0.08, f"the delay doubles from 0.02 s: {gaps}"
    assert max(gaps) < 0.16 + 0.15, f"capped at reconnect_max (plus scheduling slack): {gaps}"
