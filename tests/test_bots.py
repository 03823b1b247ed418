"""Bots: the strategies on hand-made prices; a bot trading through a hub that restarts mid-run; the
README's own bot, run as written."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import free_port, port_open, running_hub, running_mock, spawn_hub, stop_process, wait_for

from bots.runner import BotRunner
from bots.strategies import hamster, investor
from tickhub.config import Settings
from tickhub.sequencer import RUN_SPAN


def p(*values: str) -> list[Decimal]:
    return [Decimal(v) for v in values]


@pytest.mark.parametrize(
    ("prices", "paid", "investor_does", "hamster_does"),
    [
        (p("10", "9", "11"), None, "buy", None),  # a dip
        (p("10", "12", "11"), None, None, "buy"),  # a peak
        (p("10", "10", "10"), None, None, None),  # flat
        (p("10"), None, None, None),  # a single tick
        (p("10", "9"), None, None, None),  # two ticks
        (p("10", "12", "11"), Decimal("10"), "sell", None),  # peak above what was paid
        (p("10", "12", "11"), Decimal("11.50"), None, None),  # peak below what was paid
        (p("10", "9", "9.5"), Decimal("11"), None, "sell"),  # dip below what was paid
        (p("10", "9", "9.5"), Decimal("9"), None, None),  # dip above what was paid
        (p("9", "10", "11"), Decimal("5"), None, None),  # a rise is neither
        (p("7", "10", "9", "11"), None, "buy", None),  # only the last three count
    ],
)
def test_strategies(
    prices: list[Decimal], paid: Decimal | None, investor_does: str | None, hamster_does: str | None
) -> None:
    assert investor(prices, paid) == investor_does
    assert hamster(prices, paid) == hamster_does


async def start_bot(hub_url: str, key: str, symbols: tuple[str, ...]) -> tuple[BotRunner, asyncio.Future[None]]:
    runner = BotRunner(
        "investor",
        investor,
        hub_url,
        key,
        symbols,
        budget=Decimal(100),
        reconnect_max=0.5,
        log=logging.getLogger("test.bot"),
    )
    return runner, asyncio.ensure_future(asyncio.to_thread(runner.run))


def check_handled_once_in_order(runner: BotRunner) -> None:
    ids = [int(i) for i, _, _ in runner.handled]
    assert ids == sorted(set(ids)), "ids strictly increase: nothing handled twice"
    seqs: dict[str, list[int]] = {}
    for _, source, seq in runner.handled:
        seqs.setdefault(source, []).append(seq)
    for source, got in seqs.items():
        assert got == list(range(got[0], got[0] + len(got))), f"{source}: no tick missed"


async def check_account_matches_fills(url: str, key: str, cash: Decimal) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{url}/orders?limit=10000") as response:
            orders = (await response.json())["orders"]
        async with session.get(f"{url}/accounts/me") as response:
            me = await response.json()
    held: dict[str, Decimal] = {}
    for order in orders:
        sign = 1 if order["side"] == "buy" else -1
        cash -= sign * Decimal(order["amount"])
        held[order["symbol"]] = held.get(order["symbol"], Decimal(0)) + sign * Decimal(order["qty"])
    assert Decimal(me["cash"]) == cash
    assert {pos["symbol"]: Decimal(pos["qty"]) for pos in me["positions"]} == held
    assert len(orders) >= 4


async def test_bot_trades_and_resumes_across_a_hub_restart(settings: Settings) -> None:
    port = free_port()
    async with running_mock(("BTCUSD", "META"), interval=0.01) as source:
        hub_settings = settings.replace(sources=(("mock", source.url),))
        async with running_hub(hub_settings, port=port) as hub:
            key = await hub.hub.accounts.create("investor", Decimal(10000))
            runner, done = await start_bot(hub.url, key, ("BTCUSD", "META"))
            await wait_for(lambda: runner.fills >= 4, 20, "the bot's first trades")
            handled_before = len(runner.handled)
        async with running_hub(hub_settings, port=port) as hub:
            await wait_for(lambda: int(runner.handled[-1][0]) // RUN_SPAN == hub.hub.run, 20, "ticks of the new run")
            fills = runner.fills
            await wait_for(lambda: runner.fills >= fills + 2, 20, "trades after the restart")
            runner.stop()
            await asyncio.wait_for(done, 10)
            assert len(runner.handled) > handled_before
            check_handled_once_in_order(runner)
            await check_account_matches_fills(hub.url, key, Decimal(10000))


async def test_bot_handles_each_tick_once_when_the_hub_is_killed(settings: Settings) -> None:
    """After SIGKILL the hub may send ticks again with new ids; the bot keys on (source, seq)."""
    port = free_port()
    async with running_mock(("BTCUSD",), interval=0.005) as source:

        def spawn() -> subprocess.Popen[bytes]:
            return spawn_hub(settings, port, f"mock={source.url}")

        proc = spawn()
        try:
            await wait_for(lambda: port_open(port), 30, "the hub")
            # Same database, to make the account; no write-ahead log: the hub process holds this one.
            async with running_hub(settings.replace(wal=False), port=0) as admin:
                key = await admin.hub.accounts.create("investor", Decimal(10000))
            runner, done = await start_bot(f"http://127.0.0.1:{port}", key, ("BTCUSD",))
            await wait_for(lambda: len(runner.handled) >= 200, 20, "ticks before the kill")
            stop_process(proc, signal.SIGKILL)
            proc = spawn()
            await wait_for(lambda: len(runner.handled) >= 600, 30, "ticks after the restart")
            runner.stop()
            await asyncio.wait_for(done, 10)
        finally:
            stop_process(proc)
    check_handled_once_in_order(runner)


def hub_tick(id: int, symbol: str, price: str, seq: int, source: str = "mock") -> dict[str, object]:
    return {
        "id": str(id),
        "source": source,
        "symbol": symbol,
        "price": price,
        "ts": "2026-11-23T19:00:00.000000Z",
        "seq": seq,
    }


async def run_against(frames: list[bytes], handled: int) -> tuple[BotRunner, list[list[Decimal]]]:
    """A bot runner against a stand-in hub that sends ``frames`` then heartbeats; stopped once it has
    handled ``handled`` ticks. Returns the runner and the price windows its strategy was called with."""
    calls: list[list[Decimal]] = []

    def strategy(prices, paid):  # type: ignore[no-untyped-def]
        calls.append(list(prices))
        return None

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        while True:
            await response.write(b": ping\n\n")
            await asyncio.sleep(0.05)  # the stand-in's heartbeat pace

    async def me(request: web.Request) -> web.Response:
        body = {
            "account": {"id": 1, "name": "investor", "created_at": "2026-11-23T19:00:00.000000Z"},
            "positions": [],
            "realized_pnl": "0",
            "unrealized_pnl": "0",
            "cash": "100",
            "equity": "100",
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/accounts/me", me)
    server = TestServer(app)
    await server.start_server(shutdown_timeout=1.0)
    bot = BotRunner(
        "investor", strategy, f"http://127.0.0.1:{server.port}", "key", (), log=logging.getLogger("test.bot")
    )
    done = asyncio.ensure_future(asyncio.to_thread(bot.run))
    try:
        await wait_for(lambda: len(bot.handled) >= handled or done.done(), 10, f"{handled} ticks handled")
        bot.stop()
        await asyncio.wait_for(done, 10)
        bot.report = await asyncio.to_thread(bot.final_report)  # type: ignore[attr-defined]
    finally:
        bot.stop()
        await server.close()
    return bot, calls


def sse(event: str, data: object, id: int) -> bytes:
    return b"id: %d\nevent: %b\ndata: %b\n\n" % (id, event.encode(), orjson.dumps(data))


async def test_the_runner_acts_once_on_a_tick_sent_again_under_a_new_id_and_counts_it() -> None:
    frames = [
        sse("tick", hub_tick(11, "BTCUSD", "10", 101), 11),
        sse("tick", hub_tick(12, "BTCUSD", "9", 102), 12),
        sse("tick", hub_tick(13, "BTCUSD", "9", 102), 13),  # (mock, 102) again, as after a hub crash
        sse("tick", hub_tick(14, "BTCUSD", "11", 103), 14),
    ]
    bot, calls = await run_against(frames, handled=3)
    assert calls == [p("10"), p("10", "9"), p("10", "9", "11")], "the repeat reached no strategy"
    assert [seq for _, _, seq in bot.handled] == [101, 102, 103]
    assert bot.repeats == 1
    assert "1 repeated tick dropped" in bot.report  # type: ignore[attr-defined]


async def test_a_snapshot_lists_symbols_out_of_seq_order_and_the_runner_handles_each() -> None:
    """A snapshot is ordered by symbol: one source's ticks in it need not be in seq order."""
    snapshot = {"ticks": [hub_tick(5, "BTCUSD", "10", 105), hub_tick(3, "META", "20", 103)]}
    frames = [sse("snapshot", snapshot, 5), sse("tick", hub_tick(6, "META", "21", 106), 6)]
    bot, calls = await run_against(frames, handled=3)
    assert [seq for _, _, seq in bot.handled] == [105, 103, 106]
    assert calls == [p("10"), p("20"), p("20", "21")] and bot.repeats == 0


def readme_bot() -> str:
    """The bot of the README's "Write your own bot", exactly as printed there."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    found = re.search(r"<!-- bot:start -->\n```python\n(.*?)```\n<!-- bot:end -->", readme, re.S)
    assert found, "README.md has the bot between <!-- bot:start --> and <!-- bot:end -->"
    return found[1]


async def test_the_readme_bot_trades_as_written(settings: Settings) -> None:
    async with running_mock(("BTCUSD", "META"), interval=0.01) as source:
        async with running_hub(settings.replace(sources=(("mock", source.url),))) as hub:
            key = await hub.hub.accounts.create("readme", Decimal(10000))
            env = {**os.environ, "TICKHUB_HUB_URL": hub.url, "TICKHUB_API_KEY": key, "INTERESTED_IN": "BTCUSD,META"}
            bot = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                readme_bot(),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            lines: list[str] = []

            async def read() -> None:
                assert bot.stdout is not None
                async for line in bot.stdout:
                    lines.append(line.decode())

            reader = asyncio.create_task(read())
            try:
                await wait_for(lambda: len(lines) >= 4 or bot.returncode is not None, 20, "the bot's orders")
                assert bot.returncode is None, lines
            finally:
                bot.terminate()
                await bot.wait()
                await reader
            await check_account_matches_fills(hub.url, key, Decimal(10000))
    fills = [re.fullmatch(r"(buy|sell) 0\.01 (BTCUSD|META) @ [0-9.]+, cash [0-9.]+\n", line) for line in lines]
    assert all(fills), lines
    for symbol in ("BTCUSD", "META"):
        sides = [m[1] for m in fills if m and m[2] == symbol]
        assert sides == ["buy", "sell"] * (len(sides) // 2) + ["buy"] * (len(sides) % 2), "one lot at most"
