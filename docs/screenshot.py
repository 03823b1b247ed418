"""`make screenshot`: run the demo market for a while and save the dashboard as docs/dashboard.png."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).with_name("dashboard.png")
CHROMIUM = os.environ.get("TICKHUB_CHROMIUM", "/usr/bin/chromium")
WARM_UP = 40.0  # seconds of trading before the picture, so sparklines and 1s candles have a shape


def free_block(n: int) -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        try:
            for port in range(base, base + n):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


async def main() -> None:
    from playwright.async_api import async_playwright

    port = free_block(4)
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "TICKHUB_PORT": str(port), "TICKHUB_DATA_DIR": data}
        env.pop("TICKHUB_DATABASE_URL", None)
        demo = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tickhub",
            "demo",
            "--interval",
            "0.25",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        drain: asyncio.Task[bytes] | None = None
        try:
            assert demo.stdout is not None
            async with asyncio.timeout(90):
                async for line in demo.stdout:
                    if b"demo market is up" in line:
                        break
            drain = asyncio.create_task(demo.stdout.read())
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
                )
                page = await browser.new_page(viewport={"width": 1100, "height": 760})
                await page.goto(f"http://127.0.0.1:{port}/")
                await page.click('tr[data-symbol="BTCUSD"]')
                await page.select_option("#chart-interval", "1s")
                await asyncio.sleep(WARM_UP)
                await page.wait_for_function("window.tickhubChart.candles('BTCUSD')?.length > 0")
                await page.screenshot(path=str(OUT))
                await browser.close()
            print(f"saved {OUT}")
        finally:
            if demo.returncode is None:
                demo.send_signal(signal.SIGINT)
                await demo.wait()
            if drain is not None:
                drain.cancel()


if __name__ == "__main__":
    asyncio.run(main())
