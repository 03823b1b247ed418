"""Bots: the strategies on hand-made prices; a bot trading through a hub that restarts mid-run."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
from decimal import Decimal

import aiohttp
import pytest
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
