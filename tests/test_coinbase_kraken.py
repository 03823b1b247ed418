"""The Coinbase and Kraken bridges against local fakes: documented messages, exact prices (Kraken's
JSON numbers included), subscription refusals that stop the bridge, heartbeats and reconnects."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_exchanges import FakeCoinbase, FakeKraken, FakeKrakenV1, recording, sample, sample_text
from helpers import SSEStream, get_json, running_bridge, subscribe, wait_for

from sources import binance, coinbase, kraken
from sources.bridge import BridgeSettings, ExchangeBridge
from sources.coinbase import CoinbaseAdapter
from sources.exchange import BridgeError, Malformed, Quote
from sources.kraken import KrakenAdapter, decimal_text
from tickhub.config import BRIDGE_SETTINGS


def bridge_settings(url: str, symbols: tuple[str, ...], name: str, **kw: Any) -> BridgeSettings:
    base: dict[str, Any] = {
        "ws_url": url,
        "symbols": symbols,
        "name": name,
        "stale_timeout": 5.0,
        "connect_timeout": 2.0,
        "close_timeout": 0.5,
        "reconnect_min": 0.01,
        "reconnect_max": 0.05,
        "heartbeat": 0.5,
    }
    return BridgeSettings(**(base | kw))


def coinbase_bridge(fake: FakeCoinbase, symbols: tuple[str, ...] = ("BTC-USD", "ETH-USD"), **kw: Any) -> ExchangeBridge:
    return ExchangeBridge(
        CoinbaseAdapter(fake.ws_url, symbols), bridge_settings(fake.ws_url, symbols, "coinbase", **kw)
    )


def kraken_bridge(fake: FakeKraken, symbols: tuple[str, ...] = ("BTC/USD", "ETH/USD"), **kw: Any) -> ExchangeBridge:
    return ExchangeBridge(KrakenAdapter(fake.ws_url, symbols), bridge_settings(fake.ws_url, symbols, "kraken", **kw))


# --- Coinbase ---------------------------------------------------------------------------------------


def test_coinbase_ticker_becomes_a_quote_and_acks_and_heartbeats_carry_none() -> None:
    adapter = CoinbaseAdapter("wss://x", ["ETH-USD"])
    assert adapter.decode(sample_text("coinbase_ticker")) == [
        Quote(
            "COINBASE:ETH-USD",
            "1285.22",
            "2022-10-19T23:28:22.061769Z",
            trade_id="370843401",
            qty="11.4396987",  # last_size
            side="buy",  # the taker's
            bid="1285.04",
            bid_qty="0.46688654",
            ask="1285.27",
            ask_qty="1.56637040",
        )
    ]
    assert adapter.decode(sample_text("coinbase_subscriptions")) == []
    assert adapter.decode(sample_text("coinbase_heartbeat")) == []
    with pytest.raises(BridgeError, match="BTC-XYZ is not a valid product"):
        adapter.decode(sample_text("coinbase_error"))
    with pytest.raises(Malformed):
        adapter.decode('{"type": "ticker", "product_id": "ETH-USD", "price": "1.0", "time": "yesterday"}')


async def test_coinbase_subscribes_to_ticker_and_heartbeat_and_publishes_exact_prices() -> None:
    async with FakeCoinbase() as fake, running_bridge(coinbase_bridge(fake)) as bridge:
        conn = await fake.connection(0)
        await wait_for(lambda: conn.received, what="the subscribe message")
        await conn.send(sample("coinbase_heartbeat"))
        await conn.send(fake.ticker("BTC-USD", "91234.50"))
        await conn.send("{oops")
        await conn.send(fake.ticker("ETH-USD", "3012.10"))
        await wait_for(lambda: bridge.bridge.published == 2, what="two tickers")
        _, health = await get_json(f"{bridge.base}/health")
    assert conn.messages == [
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channels": ["heartbeat", "ticker"]}
    ]
    assert {q.symbol: q.price for q in bridge.bridge.latest.values()} == {
        "COINBASE:BTC-USD": "91234.50",
        "COINBASE:ETH-USD": "3012.10",
    }
    assert health["malformed"] == {"bad_json": 1} and health["venue"] == "COINBASE"


async def test_coinbase_refusing_a_product_stops_the_bridge_with_its_reason() -> None:
    async with FakeCoinbase() as fake, running_bridge(coinbase_bridge(fake, ("BTC-USD", "BTC-XYZ"))) as bridge:
        await wait_for(bridge.bridge.failed.is_set, what="the refusal")
        status, health = await get_json(f"{bridge.base}/health")
    assert (
        str(bridge.bridge.error)
        == "Coinbase refused the subscription, Failed to subscribe: BTC-XYZ is not a valid product"
    )
    assert status == 503 and health["status"] == "failed"


async def test_coinbase_reconnects_after_an_abrupt_close_and_subscribes_again() -> None:
    async with FakeCoinbase() as fake, running_bridge(coinbase_bridge(fake)) as bridge:
        first = await fake.connection(0)
        await wait_for(lambda: first.received, what="the first subscribe")
        first.abort()
        second = await fake.connection(1)
        await wait_for(lambda: second.received, what="the second subscribe")
        await second.send(fake.ticker("BTC-USD", "91000.00"))
        await wait_for(lambda: bridge.bridge.published == 1, what="a ticker after the reconnect")
    assert first.messages == second.messages


RECORDED = [orjson.loads(line) for line in recording("coinbase_ticker_recording")]
RECORDED_PRODUCTS = tuple(dict.fromkeys(m["product_id"] for m in RECORDED))


async def feed_ticks(stream: SSEStream, n: int) -> list[dict[str, Any]]:
    out = []
    while len(out) < n:
        event = await stream.next_event("tick", timeout=5)
        out.append(orjson.loads(event.data))
    return out


def test_coinbase_tickers_carry_the_exchange_trade_id() -> None:
    adapter = CoinbaseAdapter("wss://x", RECORDED_PRODUCTS)
    [quote] = adapter.decode(recording("coinbase_ticker_recording")[0])
    assert quote == Quote(  # recorded in 2021: the best quote without its sizes
        "COINBASE:BAND-GBP",
        "14.7775",
        "2021-04-17T16:43:30.244075Z",
        "881613",
        "0.04",
        "buy",
        "14.7550",
        None,
        "14.8060",
    )


async def test_a_recorded_coinbase_session_is_published_once_whoever_attaches_when() -> None:
    """The recorded ticker session (107 trades of ten products), then a consumer arriving live, then one
    resuming from the start: each trade id once, seqs consecutive, nothing published twice."""
    async with FakeCoinbase(RECORDED_PRODUCTS) as fake:
        fake.on_subscribe = recording("coinbase_ticker_recording")
        async with running_bridge(coinbase_bridge(fake, RECORDED_PRODUCTS)) as bridge:
            feed = bridge.bridge.feed
            await wait_for(lambda: feed.next_seq - feed.first_seq == len(RECORDED), what="the recorded session")
            async with subscribe(bridge.base) as live:
                greeted = await feed_ticks(live, len(RECORDED_PRODUCTS))
            assert feed.next_seq - feed.first_seq == len(RECORDED), "attaching a consumer published nothing"
            async with subscribe(bridge.base, last_event_id="0") as resuming:
                replayed = await feed_ticks(resuming, len(RECORDED))
    assert [t["seq"] for t in replayed] == list(range(feed.first_seq, feed.next_seq))
    assert [(t["symbol"], t["price"], t["trade_id"]) for t in replayed] == [
        (f"COINBASE:{m['product_id']}", m["price"], str(m["trade_id"])) for m in RECORDED
    ]
    fields = [(t["qty"], t["side"], t["bid"], t["ask"]) for t in replayed]
    assert fields == [(m["last_size"], m["side"], m["best_bid"], m["best_ask"]) for m in RECORDED], "every digit"
    newest = {t["symbol"]: t for t in replayed}
    assert greeted == sorted(newest.values(), key=lambda t: t["seq"]), "the newest of each, as published"


async def test_coinbase_resending_its_latest_trades_on_resubscribe_publishes_nothing_twice() -> None:
    """Coinbase sends each product's latest trade again on every subscribe (the recording shows it: the
    first tickers are older than the subscription). After a reconnect they must not come out again."""
    async with FakeCoinbase(RECORDED_PRODUCTS) as fake:
        fake.on_subscribe = recording("coinbase_ticker_recording")
        async with running_bridge(coinbase_bridge(fake, RECORDED_PRODUCTS)) as bridge:
            feed = bridge.bridge.feed
            await wait_for(lambda: feed.next_seq - feed.first_seq == len(RECORDED), what="the recorded session")
            latest = {m["product_id"]: m for m in RECORDED}
            fake.on_subscribe = [orjson.dumps(m).decode() for m in latest.values()]
            fake.connections[0].abort()
            second = await fake.connection(1)
            await wait_for(lambda: second.received, what="the second subscribe")
            fresh = latest["SKL-USD"] | {"trade_id": latest["SKL-USD"]["trade_id"] + 1, "price": "0.5"}
            await second.send(fresh)
            await wait_for(lambda: bridge.bridge.connections[0].quotes == len(RECORDED) + len(latest) + 1)
            async with subscribe(bridge.base, last_event_id="0") as resuming:
                replayed = await feed_ticks(resuming, len(RECORDED) + 1)
    assert feed.next_seq - feed.first_seq == len(RECORDED) + 1, "only the new trade was published"
    ids = [(t["symbol"], t["trade_id"]) for t in replayed]
    assert len(ids) == len(set(ids)) and replayed[-1]["trade_id"] == str(fresh["trade_id"])
    assert bridge.bridge.repeats == len(latest)


# --- Kraken -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "exact"),
    [("26394.10", "26394.10"), ("26394", "26394"), ("1.5e-05", "0.000015"), ("26394.123456789012345", None)],
)
def test_kraken_numbers_keep_their_exact_decimal_text(text: str, exact: str | None) -> None:
    assert decimal_text(text) == (exact or text)
    [quote] = KrakenAdapter("wss://x", ["BTC/USD"]).decode(FakeKraken.ticker_update("BTC/USD", text))
    assert quote.price == (exact or text)


@pytest.mark.parametrize("text", ["1e99999999", "1E+99999999", "5e-99999999", "-1e99999999", "1e24", "1.5e-19"])
def test_a_kraken_number_whose_exponent_no_tick_could_hold_is_kept_as_written(text: str) -> None:
    """Eleven bytes of JSON, ``1e99999999``, written out in full are a hundred million digits: the bridge
    built the whole string (``1e999999999``: 2 GB, seconds of CPU) before the price check refused it.
    A number whose plain form would pass the wire's limits (24 digits before the point, 18 after) is
    written out; any other is kept as written, and refused as it is."""
    assert decimal_text(text) == text
    [quote] = KrakenAdapter("wss://x", ["BTC/USD"]).decode(FakeKraken.ticker_update("BTC/USD", text))
    assert quote.price == text
    bridge = ExchangeBridge(KrakenAdapter("wss://x", ["BTC/USD"]), bridge_settings("wss://x", ("BTC/USD",), "k"))
    assert not bridge.publish(quote) and bridge.malformed == {"bad_price": 1}


def test_kraken_snapshot_update_and_control_messages() -> None:
    adapter = KrakenAdapter("wss://x", ["BTC/USD"])
    assert adapter.decode(sample_text("kraken_ticker_snapshot")) == [
        Quote(
            "KRAKEN:BTC-USD",
            "26394.10",
            "2023-09-25T09:04:31.742599Z",
            bid="26393.9",
            bid_qty="0.13",
            ask="26394.0",
            ask_qty="2.50",
        )
    ]
    assert adapter.decode(sample_text("kraken_ticker_update"))[0].price == "26394.123456789012345"
    for control in ("kraken_status", "kraken_subscribe_ack", "kraken_heartbeat"):
        assert adapter.decode(sample_text(control)) == []
    with pytest.raises(BridgeError, match="BTC/XYZ: Currency pair not supported"):
        adapter.decode(sample_text("kraken_subscribe_error"))


async def test_kraken_subscribes_and_publishes_snapshot_then_updates_exactly() -> None:
    async with FakeKraken() as fake, running_bridge(kraken_bridge(fake)) as bridge:
        conn = await fake.connection(0)
        await wait_for(lambda: bridge.bridge.published == 2, what="the two snapshots")
        await conn.send(sample_text("kraken_heartbeat"))
        await conn.send(FakeKraken.ticker_update("ETH/USD", "3012.50"))
        await wait_for(lambda: bridge.bridge.published == 3, what="an update")
    assert conn.messages == [
        {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD", "ETH/USD"]}},
        {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD", "ETH/USD"], "snapshot": False}},
    ]
    assert {q.symbol: q.price for q in bridge.bridge.latest.values()} == {
        "KRAKEN:BTC-USD": "26394.10",
        "KRAKEN:ETH-USD": "3012.50",
    }


def test_kraken_trades_keep_the_exact_text_of_their_numbers() -> None:
    adapter = KrakenAdapter("wss://x", ["MATIC/USD", "BTC/USD"])
    assert adapter.decode(sample_text("kraken_trade_snapshot")) == [
        Quote("KRAKEN:MATIC-USD", "0.5147", "2023-09-25T07:48:36.925533Z", "4665846", "6423.46326", "buy"),
        Quote("KRAKEN:MATIC-USD", "0.5147", "2023-09-25T07:49:36.925603Z", "4665847", "1136.19677815", "buy"),
    ]
    text = FakeKraken.trade_update("BTC/USD", "26394.10", "0.00150000", "sell", 9007199254740993)
    [quote] = adapter.decode(text)
    assert (quote.price, quote.qty, quote.side, quote.trade_id) == (
        "26394.10",
        "0.00150000",
        "sell",
        "9007199254740993",
    )
    [quote] = adapter.decode(FakeKraken.trade_update("BTC/USD", "1.5e-05", "2E+3", "buy", 1))
    assert (quote.price, quote.qty) == ("0.000015", "2000")


async def test_kraken_publishes_trades_and_tickers_with_sizes_and_quotes_exactly() -> None:
    async with FakeKraken() as fake, running_bridge(kraken_bridge(fake, ("BTC/USD",))) as bridge:
        conn = await fake.connection(0)
        async with subscribe(bridge.base, last_event_id="0") as stream:
            [snapshot] = await feed_ticks(stream, 1)
            await conn.send(FakeKraken.trade_update("BTC/USD", "26394.20", "0.50000000", "sell", 77))
            await conn.send(FakeKraken.ticker_update("BTC/USD", "26394.20"))
            trade, ticker = await feed_ticks(stream, 2)
    keys = ("price", "qty", "side", "trade_id", "bid", "bid_qty", "ask", "ask_qty")
    assert {k: snapshot.get(k) for k in keys} == dict.fromkeys(keys) | {
        "price": "26394.10",
        "bid": "26393.9",
        "bid_qty": "0.13",
        "ask": "26394.0",
        "ask_qty": "2.50",
    }
    assert {k: trade[k] for k in keys if k in trade} == {
        "price": "26394.20",
        "qty": "0.50000000",
        "side": "sell",
        "trade_id": "77",
    }
    assert {k: ticker[k] for k in keys if k in ticker} == {
        "price": "26394.20",
        "bid": "26394.0",
        "bid_qty": "0.2",
        "ask": "26394.1",
        "ask_qty": "1.1",
    }


async def test_kraken_refusing_a_pair_stops_the_bridge_naming_it() -> None:
    async with FakeKraken() as fake, running_bridge(kraken_bridge(fake, ("BTC/USD", "DOGE/XYZ"))) as bridge:
        await wait_for(bridge.bridge.failed.is_set, what="the refusal")
    assert "DOGE/XYZ" in str(bridge.bridge.error)


async def test_kraken_heartbeats_keep_a_quiet_link_and_silence_reconnects_it() -> None:
    async with FakeKraken() as fake, running_bridge(kraken_bridge(fake, stale_timeout=0.3)) as bridge:
        first = await fake.connection(0)
        await fake.connection(1)
        assert first.closed.is_set() or await wait_for(first.closed.is_set, what="the stale link closed")
        assert bridge.bridge.connections[0].reconnects["stale"] >= 1


async def test_a_bridge_reading_messages_it_cannot_use_says_degraded_and_why() -> None:
    """Pointed at Kraken's v1 API, the v2 bridge's WebSocket is up and busy (status, heartbeats, trades
    in v1's shape) but yields no price. After its stale window /health says degraded, with the reason."""
    async with FakeKrakenV1() as fake, running_bridge(kraken_bridge(fake, stale_timeout=1.0)) as bridge:
        await fake.connection(0)
        await wait_for(lambda: bridge.bridge.health()["status"] == "degraded", what="degraded")
        status, health = await get_json(f"{bridge.base}/health")
    [conn] = health["connections"]
    assert status == 200 and health["status"] == "degraded"
    assert conn["state"] == "connected" and conn["connects"] == 1, "a live link: not reconnected"
    assert conn["quotes"] == 0 and conn["unread_since_quote"] >= 10
    assert health["reason"].startswith("connection 1: no price for ")
    assert "messages could not be read" in health["reason"] and "unrecognised" in health["reason"]
    assert health["malformed"]["unrecognised"] >= 1


async def test_a_quiet_market_with_heartbeats_stays_ok() -> None:
    """Heartbeats the adapter knows are no sign of trouble: no price for a while is a quiet market."""
    async with FakeKraken() as fake, running_bridge(kraken_bridge(fake, stale_timeout=1.0)) as bridge:
        conn = await fake.connection(0)
        await wait_for(lambda: bridge.bridge.published == 2, what="the two snapshots")
        stats = bridge.bridge.connections[0]
        while (stats.as_dict()["last_quote_age_s"] or 0) < 2.0:  # two stale windows without a price
            read = stats.messages
            await conn.send(sample_text("kraken_heartbeat"))
            await wait_for(lambda read=read: stats.messages > read, what="the heartbeat read")
        _, health = await get_json(f"{bridge.base}/health")
    assert health["status"] == "ok" and health["reason"] is None and stats.connects == 1


# --- command-line settings --------------------------------------------------------------------------


def parse(module: Any, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_urls_come_from_the_flag_then_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("TICKHUB_KRAKEN_WS_URL", raising=False)
    assert kraken.build(parse(kraken)).adapter.ws_url == "wss://ws.kraken.com/v2"
    monkeypatch.setenv("TICKHUB_KRAKEN_WS_URL", "ws://127.0.0.1:9/v2")
    assert kraken.build(parse(kraken)).adapter.ws_url == "ws://127.0.0.1:9/v2"
    assert kraken.build(parse(kraken, "--ws-url", "ws://h:1")).adapter.ws_url == "ws://h:1"
    monkeypatch.delenv("TICKHUB_KRAKEN_WS_URL")
    (tmp_path / ".env").write_text("TICKHUB_KRAKEN_WS_URL=ws://from-dotenv:2/v2\n")
    assert kraken.build(parse(kraken)).adapter.ws_url == "ws://from-dotenv:2/v2"
    monkeypatch.setenv("TICKHUB_COINBASE_WS_URL", "http://wrong")
    with pytest.raises(ValueError, match=r"^TICKHUB_COINBASE_WS_URL='http://wrong' is invalid"):
        coinbase.build(parse(coinbase))


def test_native_pair_names_map_to_venue_qualified_hub_symbols() -> None:
    bridge = kraken.build(parse(kraken, "--symbols", "btc/usd,ETH-USD"))
    assert bridge.adapter.symbols == ("BTC/USD", "ETH/USD")
    assert [bridge.adapter.hub_symbol(s) for s in bridge.adapter.symbols] == ["KRAKEN:BTC-USD", "KRAKEN:ETH-USD"]
    with pytest.raises(ValueError, match="not valid pair names: BTC USD"):
        coinbase.build(parse(coinbase, "--symbols", "BTC USD"))


def test_bridge_url_settings_are_in_the_env_template_and_readme_with_the_bridges_defaults() -> None:
    assert {name: default for name, default, _ in BRIDGE_SETTINGS} == {
        "TICKHUB_BINANCE_WS_URL": binance.DEFAULT_WS_URL,
        "TICKHUB_BINANCE_REST_URL": binance.DEFAULT_REST_URL,
        "TICKHUB_COINBASE_WS_URL": coinbase.DEFAULT_WS_URL,
        "TICKHUB_KRAKEN_WS_URL": kraken.DEFAULT_WS_URL,
    }
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert [name for name, _, _ in BRIDGE_SETTINGS if f"`{name}`" not in readme] == []


async def run_coinbase_process(fake: FakeCoinbase, symbols: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tickhub", "source", "coinbase", "--symbols", symbols, "--port", "0"),
        *("--log-level", "warning"),
        env=os.environ | {"TICKHUB_COINBASE_WS_URL": fake.ws_url},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_a_bridge_process_refused_by_the_exchange_exits_2_with_one_line() -> None:
    async with FakeCoinbase() as fake:
        proc = await run_coinbase_process(fake, "BTC-USD,BTC-XYZ")
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 2
    reason = "Coinbase refused the subscription, Failed to subscribe: BTC-XYZ is not a valid product"
    assert err.decode().splitlines() == [f"tickhub source coinbase: {reason}"]


async def test_a_bridge_process_stops_cleanly_on_sigterm() -> None:
    async with FakeCoinbase() as fake:
        proc = await run_coinbase_process(fake, "BTC-USD")
        try:
            conn = await fake.connection(0, timeout=30)
            await wait_for(lambda: conn.received, what="the subscription")
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await wait_for(conn.closed.is_set, what="the WebSocket closed by the bridge")
    assert proc.returncode == 0 and b"Traceback" not in err
