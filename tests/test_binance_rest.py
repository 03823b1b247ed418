"""The Binance bridge's REST side against a local fake: symbol checks at start, REST polling of every
pair (changes only), the used-weight header, HTTP 429 and 418 with Retry-After, and the /health report."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from fake_exchanges import FakeBinance
from helpers import get_json, running_bridge, wait_for
from test_binance import binance_settings

from sources.binance import BinanceBridge
from sources.binance_rest import next_poll_delay
from sources.exchange import BridgeError

TICKER = "/api/v3/ticker/price"


def test_poll_delay_stretches_as_the_used_weight_nears_the_limit() -> None:
    assert next_poll_delay(5.0, None, 6000, now=0.0) == 5.0
    assert next_poll_delay(5.0, 100, 6000, now=0.0) == 5.0
    assert next_poll_delay(5.0, 3500, 6000, now=0.0) == 10.0
    assert next_poll_delay(5.0, 5500, 6000, now=1_795_460_410.0) == pytest.approx(50.5), "to the next minute"
    assert next_poll_delay(5.0, 6000, 6000, now=1_795_460_458.0) == 5.0, "never shorter than the interval"


async def test_unknown_and_non_trading_symbols_are_refused_by_name() -> None:
    async with FakeBinance() as fake:
        symbols = ("BTCUSDT", "NOPEUSDT", "BCHABCUSDT")
        with pytest.raises(BridgeError) as info:
            async with running_bridge(BinanceBridge(binance_settings(fake, symbols=symbols))):
                pass
    assert str(info.value) == "Binance refuses these symbols, unknown: NOPEUSDT; not trading: BCHABCUSDT (BREAK)"
    asked = [q for _, _, q in fake.requests_to("/api/v3/exchangeInfo")]
    assert asked == [{"symbols": '["BTCUSDT","NOPEUSDT","BCHABCUSDT"]'}, {}], "-1121, then the full list"
    assert not fake.connections and not fake.requests_to(TICKER)


async def test_a_ban_at_start_stops_the_bridge_with_a_clear_error() -> None:
    async with FakeBinance() as fake:
        fake.fail_next(418, retry_after=7200)
        with pytest.raises(BridgeError, match=r"banned this IP for 7200s \(HTTP 418\)"):
            async with running_bridge(BinanceBridge(binance_settings(fake))):
                pass


async def test_the_command_exits_non_zero_with_one_line_naming_the_refused_symbols() -> None:
    async with FakeBinance() as fake:
        env = os.environ | {"TICKHUB_BINANCE_WS_URL": fake.ws_url, "TICKHUB_BINANCE_REST_URL": fake.http_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "tickhub", "source", "binance", "--symbols", "btcusdt,NOPEUSDT", "--port", "0"),
            *("--log-level", "critical"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().splitlines() == ["tickhub source binance: Binance refuses these symbols, unknown: NOPEUSDT"]
    assert not out


async def test_rest_mode_polls_every_pair_and_publishes_only_changed_prices() -> None:
    async with (
        FakeBinance(extra_pairs=3000) as fake,
        running_bridge(BinanceBridge(binance_settings(fake, symbols=(), mode="rest", interval=0.02))) as bridge,
    ):
        poller = bridge.bridge.poller
        assert poller is not None
        await wait_for(lambda: poller.polls >= 1, what="the first poll")
        first = bridge.bridge.published
        assert first == 3003, "every TRADING pair once; the BREAK pair never"
        fake.prices["BTCUSDT"] = "43300.10000000"
        fake.prices["X0042USDT"] = "7.77000000"
        await wait_for(lambda: bridge.bridge.published == first + 2, what="the two changed prices")
        polls = poller.polls
        await wait_for(lambda: poller.polls >= polls + 2, what="two more polls")
        assert bridge.bridge.published == first + 2, "unchanged prices are not published again"
        status, health = await get_json(f"{bridge.base}/health")
    assert [q for _, _, q in fake.requests_to(TICKER)][:2] == [{}, {}], "one request for every pair"
    assert status == 200 and health["status"] == "ok" and health["mode"] == "rest"
    assert health["poll"]["last_poll_rows"] == 3004 and health["symbols"] == 3003
    assert health["rest"]["used_weight_1m"] is not None


async def test_rest_mode_with_symbols_asks_only_for_them() -> None:
    settings = {"symbols": ("ETHUSDT", "BTCUSDT"), "mode": "rest", "interval": 0.02}
    async with FakeBinance() as fake, running_bridge(BinanceBridge(binance_settings(fake, **settings))) as bridge:
        await wait_for(lambda: bridge.bridge.published == 2, what="the two prices")
    assert fake.requests_to(TICKER)[0][2] == {"symbols": '["BTCUSDT","ETHUSDT"]'}


async def test_http_429_waits_retry_after_before_the_next_request() -> None:
    async with (
        FakeBinance() as fake,
        running_bridge(BinanceBridge(binance_settings(fake, mode="rest", interval=0.02))) as bridge,
    ):
        rest = bridge.bridge.rest
        assert rest is not None
        await wait_for(lambda: len(fake.requests_to(TICKER)) >= 1, what="a first poll")
        fake.fail_next(429, retry_after=1)
        await wait_for(lambda: rest.state == "rate_limited", what="the 429")
        limited_at = fake.requests_to(TICKER)[-1][0]
        count = len(fake.requests_to(TICKER))
        await wait_for(lambda: len(fake.requests_to(TICKER)) > count, 5, "the request after Retry-After")
        assert fake.requests_to(TICKER)[count][0] - limited_at >= 0.95
        await wait_for(lambda: rest.state == "ok", what="the state to clear")
        assert rest.rate_limited == 1


async def test_http_418_stops_polling_for_the_ban_and_health_says_so() -> None:
    async with (
        FakeBinance() as fake,
        running_bridge(BinanceBridge(binance_settings(fake, mode="rest", interval=0.02))) as bridge,
    ):
        await wait_for(lambda: len(fake.requests_to(TICKER)) >= 1, what="a first poll")
        fake.fail_next(418, retry_after=1)
        await wait_for(lambda: bridge.bridge.rest and bridge.bridge.rest.state == "banned", what="the ban")
        banned_at = fake.requests_to(TICKER)[-1][0]
        count = len(fake.requests_to(TICKER))
        status, health = await get_json(f"{bridge.base}/health")
        assert status == 503 and health["status"] == "banned"
        assert health["rest"]["retry_after_s"] == 1 and health["rest"]["paused_until"].endswith("Z")
        await wait_for(lambda: len(fake.requests_to(TICKER)) > count, 5, "polling to resume after the ban")
        assert fake.requests_to(TICKER)[count][0] - banned_at >= 0.95
        await wait_for(lambda: bridge.bridge.rest and bridge.bridge.rest.state == "ok", what="the ban to clear")
        status, health = await get_json(f"{bridge.base}/health")
    assert status == 200 and health["rest"]["bans"] == 1


async def test_polling_slows_down_when_the_used_weight_nears_the_limit() -> None:
    async with (
        FakeBinance() as fake,
        running_bridge(BinanceBridge(binance_settings(fake, mode="rest", interval=0.02))) as bridge,
    ):
        before = len(fake.requests_to(TICKER))  # the poller started with the bridge
        fake.used_weight = 5990
        await wait_for(lambda: bridge.bridge.rest and bridge.bridge.rest.state == "throttled", what="throttling")
        polls = len(fake.requests_to(TICKER)) - before
        _, health = await get_json(f"{bridge.base}/health")
    assert health["rest"]["used_weight_1m"] == 5990 and health["rest"]["state"] == "throttled"
    assert polls <= 2, "no poll storm while the minute's budget is nearly spent"
