"""`tickhub demo` (what `make start` runs): embedded PostgreSQL, three mock sources, the hub and two
bots; ticks of all three symbols and the BTC-USD composite on /stream, both bots' trades in the
output; Ctrl-C stops every process and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import orjson
import psutil
from helpers import subscribe, wait_for

SYMBOLS = {"BTCUSD", "TCSG", "META", "BTC-USD"}  # BTC-USD: the composite of BTCUSD (the built-in map)


def free_port_block(n: int) -> int:
    """A base port such that base..base+n-1 are free right now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


def alive(pid: int) -> bool:
    """Running and not a zombie (an exited daemon may wait a moment for init to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_demo_streams_all_symbols_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port_block(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKHUB_")}
    env |= {"TICKHUB_PORT": str(port), "TICKHUB_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tickhub",
        "demo",
        "--interval",
        "0.2",
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
        async with asyncio.timeout(90):
            await up.wait()
        descendants = psutil.Process(demo.pid).children(recursive=True)
        assert len(descendants) >= 6, "three sources, the hub and two bots"
        postmaster = int((tmp_path / "data" / "pgdata" / "postmaster.pid").read_text().split()[0])
        assert psutil.pid_exists(postmaster)

        seen: set[str] = set()
        async with subscribe(f"http://127.0.0.1:{port}") as stream:
            async with asyncio.timeout(10):
                while seen != SYMBOLS:
                    event = await stream.next()
                    if event.event == "tick":
                        seen.add(orjson.loads(event.data)["symbol"])
        assert seen == SYMBOLS

        def traded(bot: str) -> bool:
            return any(line.startswith(bot) and " filled #" in line for line in output)

        await wait_for(lambda: traded("investor") and traded("hamster"), 60, "both bots to trade")

        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        async with asyncio.timeout(30):
            code = await demo.wait()
            await reader
        assert code == 0, "".join(output[-30:])
        still_running = [p for p in descendants if alive(p.pid)]
        assert not still_running, f"stray processes: {still_running}"
        assert not alive(postmaster), "the embedded PostgreSQL was stopped"
        text = "".join(output)
        assert "demo: stopped" in text and "Traceback" not in text
        assert "investor: final P&L" in text and "hamster: final P&L" in text
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
        reader.cancel()
