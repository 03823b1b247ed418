"""A bridge killed with SIGKILL at a random point while its exchange trades, then restarted.

The bridge keeps nothing on disk, so what it can promise across its own crash is this: every trade
the exchange sends after the restarted bridge has subscribed reaches the hub's stream and PostgreSQL
exactly once; no trade and no (source, seq) ever appears twice; and nothing is invented. Trades the
exchange sent while no bridge was subscribed (and any the dead one had received but not yet handed
to the hub) are gone: Binance does not replay its trade streams. The test records how many.

`make test` runs it a few times; `make soak` (TICKHUB_SOAK=1) many more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from fake_exchanges import TradingBinance
from helpers import SSEStream, free_port, port_open, running_hub, stop_process, subscribe, wait_for

from tickhub.config import Settings

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
RUNS = 20 if SOAK else 3
STORED = "SELECT id, seq, trade_id FROM ticks WHERE source = 'binance' ORDER BY id"


def spawn_bridge(fake: TradingBinance, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``tickhub source binance`` as its own process, against ``fake``, serving on ``port``."""
    with log.open("ab") as err:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "tickhub", "source", "binance", "--symbols", fake.symbol),
                *("--ws-url", fake.ws_url, "--rest-url", fake.http_url, "--port", str(port)),
                *("--heartbeat", "0.5", "--reconnect-max", "0.5", "--stale-timeout", "5"),
                *("--log-level", "warning"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def follow(stream: SSEStream, into: list[dict[str, Any]]) -> None:
    """A subscriber reading every tick of the hub's stream into ``into`` (the snapshot's first: the
    bridge's start-up price may be in the hub before the subscriber)."""
    into.extend(orjson.loads((await stream.next_event("snapshot")).data)["ticks"])
    while True:
        into.extend(await stream.ticks(1, timeout=3600))


def check_once(ticks: list[dict[str, Any]], must_hold: list[int], where: str) -> None:
    seqs = [t["seq"] for t in ticks]
    assert len(seqs) == len(set(seqs)), f"{where}: a (source, seq) twice"
    trade_ids = [t["trade_id"] for t in ticks if t.get("trade_id") is not None]
    assert len(trade_ids) == len(set(trade_ids)), f"{where}: a trade id twice"
    missing = set(map(str, must_hold)) - set(trade_ids)
    assert not missing, f"{where}: {len(missing)} trades sent after the restart are missing, e.g. {min(missing)}"


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_bridge_killed_and_restarted_loses_nothing_after_the_restart_and_doubles_nothing(
    settings: Settings, tmp_path: Path, run: int
) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    port = free_port()
    log = tmp_path / "bridge.log"
    async with TradingBinance() as fake:
        bridge = spawn_bridge(fake, port, log)
        try:
            await wait_for(lambda: port_open(port), 30, "the bridge")
            hub_settings = settings.replace(sources=(("binance", f"http://127.0.0.1:{port}/stream"),))
            async with running_hub(hub_settings) as hub, subscribe(hub.url) as stream:
                seen: list[dict[str, Any]] = []
                reader = asyncio.create_task(follow(stream, seen))
                try:
                    # The hub's first connection to a bridge starts live (after the newest price of each
                    # symbol): trading starts once the hub is connected, so every trade is the hub's to get.
                    client = hub.hub.ingest.clients["binance"]
                    await wait_for(lambda: client.stats.connects >= 1, 30, "the hub's first connection")
                    fake.start_trading()
                    kill_after = rng.randint(1, 400)  # trades the dead bridge's connection carries
                    await wait_for(lambda: len(fake.sent_on(0)) >= kill_after, 30, "trades before the kill")
                    stop_process(bridge, signal.SIGKILL)
                    restarted_on = len(fake.connections)  # the restarted bridge's first connection
                    bridge = spawn_bridge(fake, port, log)
                    await fake.connection(restarted_on, timeout=30)
                    after = rng.randint(1, 400)
                    await wait_for(lambda: len(fake.sent_on(restarted_on)) >= after, 30, "trades after the restart")
                    await fake.stop_trading()
                    must_hold = fake.sent_on(restarted_on)
                    last = str(must_hold[-1])
                    await wait_for(lambda: any(t.get("trade_id") == last for t in seen), 30, "the last trade")
                    await wait_for(lambda: hub.hub.writer.persisted_id >= int(seen[-1]["id"]), 30, "the writer")
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                async with subscribe(hub.url, last_event_id=seen[0]["id"]) as resumed:
                    again = [seen[0], *await resumed.ticks(len(seen) - 1)]
        finally:
            stop_process(bridge)
    context = f"seed {seed}, killed after {kill_after} trades; bridge log: {log.read_text()[-2000:]}"
    check_once(seen, must_hold, f"the live subscriber ({context})")
    assert again == seen, "a subscriber resuming by Last-Event-ID gets the same ticks"
    ids = [int(t["id"]) for t in seen]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "hub ids with no gap"
    sent = {str(t) for t, _ in fake.sent}
    assert {t["trade_id"] for t in seen if "trade_id" in t} <= sent, "no trade invented"
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.database_schema})
    try:
        rows = [dict(r) for r in await conn.fetch(STORED)]
    finally:
        await conn.close()
    check_once(rows, must_hold, f"PostgreSQL ({context})")
    assert [(int(t["id"]), t["seq"], t.get("trade_id")) for t in seen] == [
        (r["id"], r["seq"], r["trade_id"]) for r in rows
    ], "PostgreSQL holds what was streamed, with the same ids"
