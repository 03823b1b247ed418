"""`tickhub demo --live binance` (what `make start-live` runs), against a local fake Binance: the
bridge and the hub start, exact Binance prices reach /stream, and Ctrl-C stops every process."""

from __future__ import annotations

import os
from pathlib import Path

from fake_exchanges import FakeBinance
from helpers import alive, free_port_block, running_demo, subscribe

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
        }
        async with running_demo("--live", "binance", env=env, cwd=tmp_path, ready_timeout=60) as demo:
            descendants = demo.descendants()
            assert len(descendants) >= 2, "the bridge and the hub"
            conn = await fake.connection(0)
            assert conn.query == {"streams": "btcusdt@trade/btcusdt@bookTicker/ethusdt@trade/ethusdt@bookTicker"}
            async with subscribe(f"http://127.0.0.1:{port}", "?symbols=BINANCE:BTCUSDT") as stream:
                await stream.next_event("snapshot")
                await conn.send(fake.trade("BTCUSDT", "43299.99000000"))
                seen = await stream.ticks(1)
                while seen[-1]["price"] == "43210.55000000":  # the start-up snapshot, if the hub came late
                    seen += await stream.ticks(1)
            assert {(t["source"], t["symbol"]) for t in seen} == {("binance", "BINANCE:BTCUSDT")}
            assert seen[-1]["price"] == "43299.99000000"

            code = await demo.interrupt()
            assert code == 0, demo.text[-3000:]
            assert not [p for p in descendants if alive(p.pid)], "stray processes"
            assert "demo: stopped" in demo.text and "Traceback" not in demo.text
