"""`tickhub demo` (what `make start` runs): embedded PostgreSQL, three mock sources, the hub and two
bots; ticks of all three symbols and the BTC-USD composite on /stream, both bots' trades in the
output; Ctrl-C stops every process and exits 0."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
from helpers import alive, free_port_block, running_demo, subscribe, wait_for

SYMBOLS = {"BTCUSD", "TCSG", "META", "BTC-USD"}  # BTC-USD: the composite of BTCUSD (the built-in map)


async def test_demo_streams_all_symbols_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port_block(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKHUB_")}
    env |= {"TICKHUB_PORT": str(port), "TICKHUB_DATA_DIR": str(tmp_path / "data")}
    async with running_demo("--interval", "0.2", env=env, cwd=tmp_path) as demo:
        descendants = demo.descendants()
        assert len(descendants) >= 6, "three sources, the hub and two bots"
        postmaster = int((tmp_path / "data" / "pgdata" / "postmaster.pid").read_text().split()[0])
        assert alive(postmaster)

        seen: set[str] = set()
        async with subscribe(f"http://127.0.0.1:{port}") as stream:
            async with asyncio.timeout(10):
                while seen != SYMBOLS:
                    event = await stream.next()
                    if event.event == "tick":
                        seen.add(orjson.loads(event.data)["symbol"])
        assert seen == SYMBOLS

        def traded(bot: str) -> bool:
            return any(line.startswith(bot) and " filled #" in line for line in demo.output)

        await wait_for(lambda: traded("investor") and traded("hamster"), 60, "both bots to trade")

        code = await demo.interrupt()
        assert code == 0, demo.text[-3000:]
        still_running = [p for p in descendants if alive(p.pid)]
        assert not still_running, f"stray processes: {still_running}"
        assert not alive(postmaster), "the embedded PostgreSQL was stopped"
        assert "demo: stopped" in demo.text and "Traceback" not in demo.text
        assert "stopped with exit code" not in demo.text, "every child stops cleanly on SIGTERM"
        assert "investor: final P&L" in demo.text and "hamster: final P&L" in demo.text
