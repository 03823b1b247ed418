"""``tickhub tail`` as a process of its own against a real hub: JSON lines that parse, one tick each, none
lost or doubled across a hub restart; readable lines with change arrows; Ctrl-C exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import orjson
from helpers import free_port, running_hub, running_mock, scripted_source, wait_for, written

from tickhub.client import HubClient
from tickhub.config import Settings
from tickhub.sequencer import RUN_SPAN
from tickhub.wire import source_tick_json, tick_frame


class Tail:
    """``tickhub tail ARGS`` as a process of its own: its stdout lines as they come, its stderr kept."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Tail:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tickhub",
            "tail",
            *args,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode())

    async def exit_code(self, timeout: float = 20) -> tuple[int, str]:
        """Wait for the process to end; its exit code and stderr."""
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            await self.reader
            assert self.process.stderr is not None
            return code, (await self.process.stderr.read()).decode()

    async def interrupt(self) -> tuple[int, str]:
        """Ctrl-C (SIGINT); the exit code and stderr."""
        self.process.send_signal(signal.SIGINT)
        return await self.exit_code()

    async def kill(self) -> None:
        """Make sure it is gone (a test that failed did not stop it)."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.reader.cancel()


async def test_json_lines_are_one_tick_each_and_a_hub_restart_costs_none(settings: Settings) -> None:
    port = free_port()
    follower = None
    async with running_mock(("BTCUSD", "META"), interval=0.005) as source:
        hub_settings = settings.replace(sources=(("mock", source.url),), retry_ms=50)
        try:
            async with running_hub(hub_settings, port=port) as hub:
                run_before = hub.hub.run
                follower = await Tail.start(hub.url, "--symbols", "BTCUSD,META", "--json")
                await wait_for(lambda: len(follower.lines) >= 50, 20, "ticks before the restart")
            ticks_before = len(follower.lines)
            async with running_hub(hub_settings, port=port) as hub:

                def new_run() -> bool:
                    return any(int(orjson.loads(line)["id"]) // RUN_SPAN == hub.hub.run for line in follower.lines[-5:])

                await wait_for(new_run, 20, "ticks of the restarted hub")
                count = len(follower.lines)
                await wait_for(lambda: len(follower.lines) >= count + 50, 20, "ticks after the restart")
                code, stderr = await follower.interrupt()
        finally:
            if follower is not None:
                await follower.kill()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "snapshot of 2 symbols" in stderr
    ticks = [orjson.loads(line) for line in follower.lines]
    assert all(set(t) >= {"id", "source", "symbol", "price", "ts", "seq"} for t in ticks), "every line one tick"
    assert len(ticks) > ticks_before and hub.hub.run != run_before
    ids = [int(t["id"]) for t in ticks]
    assert len(set(ids)) == len(ids), "no tick twice"
    assert ids[2:] == sorted(ids[2:]), "after the snapshot's two, in stream order"
    seqs = sorted(t["seq"] for t in ticks)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no tick missed"


def source_tick(seq: int, price: str) -> bytes:
    return tick_frame(seq, source_tick_json("venue", "BTCUSD", price, f"2026-11-23T10:00:0{seq}.250000Z", seq))


async def test_readable_lines_show_time_symbol_price_and_an_arrow_and_refusals_exit_1(settings: Settings) -> None:
    prices = ["10", "11", "12.50", "9", "9.00"]
    frames = [source_tick(seq, price) for seq, price in enumerate(prices, 1)]
    async with scripted_source(frames) as (url, _), running_hub(settings.replace(sources=(("venue", url),))) as hub:
        await wait_for(lambda: hub.hub.sequencer.last_seq("venue") == len(prices), 10, "the ticks")
        await wait_for(lambda: written(hub.hub), 10, "the writer")
        with HubClient(hub.url) as client:
            first = (await asyncio.to_thread(client.history, "BTCUSD"))[0].id
        follower = await Tail.start(hub.url, "--since", first)
        try:
            await wait_for(lambda: len(follower.lines) >= 4, 20, "a line per tick after the first")
            code, stderr = await follower.interrupt()
        finally:
            await follower.kill()
        assert code == 0, stderr
        line = re.compile(r"10:00:0(\d)\.250  BTCUSD +(\S+) (.)  venue\n")
        got = [line.fullmatch(text) for text in follower.lines]
        assert all(got), follower.lines
        assert [(m[1], m[2], m[3]) for m in got if m] == [
            ("2", "11", " "),
            ("3", "12.50", "▲"),
            ("4", "9", "▼"),
            ("5", "9.00", "="),
        ]

        refused = await Tail.start(hub.url, "--symbols", "BTC/USD")
        try:
            code, stderr = await refused.exit_code()
        finally:
            await refused.kill()
        assert code == 1 and "400 bad_symbol" in stderr
