"""`tickhub demo --live binance` (what `make start-live` runs), against a local fake Binance: the
bridge and the hub start, exact Binance prices reach /stream, and Ctrl-C stops every process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
from fake_exchanges import FakeBinance
from helpers import subscribe
from test_demo import alive, free_port_block

from tickhub.config import Settings
from tickhub.demo import demo_children


def test_live_demo_runs_one_bridge_instead_of_the_mock_sources() -> None:
    children = demo_children(Settings(port=9000), "postgresql://x", 1.0, live="binance")
    assert [c.name for c in children] == ["binance", "hub"]
    assert children[0].argv[3:] == ["source", "binance", "--symbols", "BTCUSDT,ETHUSDT", "--host", "127.0.0.1",
                                    "--port", "9001"]  # fmt: skip
    assert children[1].env["TICKHUB_SOURCES"] == "binance=http://127.0.0.1:9001/stream"


async def test_live_demo_streams_exact_binance_prices_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    port = free_port_block(2)
    async with FakeBinance() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKHUB_")} | {
            "TICKHUB_PORT": str(port),
            "TICKHUB_DATABASE_URL": settings.database_url or "",
            "TICKHUB_DATABASE_SCHEMA": settings.database_schema,
            "TICKHUB_BINANCE_WS_URL": fake.ws_url,
            "TICKHUB_BINANCE_REST_URL": fake.http_url,
            "PYTHONUNBUFFERED": "1",
        }
        demo = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tickhub", "demo", "--live", "binance"),
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output: list[str] = []
        up = asyncio.Event()

        async def read_output() -> None:
            assert demo.stdout is not None
            async for line in demo.stdout:
                output.append(line.decode(errors="replace"))
                if "demo market is up" in output[-1]:
                    up.set()

        reader = asyncio.create_task(read_output())
        try:
            async with asyncio.timeout(60):
                await up.wait()
            descendants = psutil.Process(demo.pid).children(recursive=True)
            assert len(descendants) >= 2, "the bridge and the hub"
            conn = await fake.connection(0)
            assert conn.query == {"streams": "btcusdt@trade/ethusdt@trade"}
            async with subscribe(f"http://127.0.0.1:{port}", "?symbols=BINANCE:BTCUSDT") as stream:
                await stream.next_event("snapshot")
                await conn.send(fake.trade("BTCUSDT", "43299.99000000"))
                seen = await stream.ticks(1)
                while seen[-1]["price"] == "43210.55000000":  # the start-up snapshot, if the hub came late
                    seen += await stream.ticks(1)
            assert {(t["source"], t["symbol"]) for t in seen} == {("binance", "BINANCE:BTCUSDT")}
            assert seen[-1]["price"] == "43299.99000000"

            demo.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
            async with asyncio.timeout(30):
                code = await demo.wait()
                await reader
            assert code == 0, "".join(output[-30:])
            assert not [p for p in descendants if alive(p.pid)], "stray processes"
            text = "".join(output)
            assert "demo: stopped" in text and "Traceback" not in text
        finally:
            if demo.returncode is None:
                demo.kill()
                await demo.wait()
            reader.cancel()
