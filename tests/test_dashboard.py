"""The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): prices
move, the hub restarts, updates resume from where the page left off."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import REQUIRE_SERVICES
from helpers import free_port, running_hub, running_mock, wait_for

from tickhub.config import Settings
from tickhub.sequencer import RUN_SPAN

CHROMIUM = os.environ.get("TICKHUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def page() -> AsyncIterator[object]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat before the test
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(message + "; TICKHUB_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


async def test_dashboard_shows_prices_moving_and_resumes_after_a_hub_restart(settings: Settings, page) -> None:
    port = free_port()
    async with running_mock(("BTCUSD", "META"), interval=0.05) as source:
        hub_settings = settings.replace(sources=(("mock", source.url),))
        async with running_hub(hub_settings, port=port) as hub:
            await page.goto(hub.url + "/")
            price = page.locator('tr[data-symbol="BTCUSD"] .price')
            await price.wait_for()
            await page.wait_for_function(
                "document.querySelector('tr[data-symbol=\"BTCUSD\"] .price').textContent !== ''"
            )
            first = await price.text_content()
            await page.wait_for_function(
                f"document.querySelector('tr[data-symbol=\"BTCUSD\"] .price').textContent !== {first!r}", timeout=15000
            )
            assert await page.locator('tr[data-symbol="META"]').count() == 1
            await page.locator('.source[data-source="mock"] .state').wait_for()
            assert await page.locator('.source[data-source="mock"] .state').text_content() == "connected"
            await page.wait_for_function("document.querySelector('#link').textContent === 'live'")
            run = hub.hub.run
            before = int(await page.evaluate("document.body.dataset.lastId"))
            assert before // RUN_SPAN == run
        async with running_hub(hub_settings, port=port) as hub:
            await page.wait_for_function(
                f"BigInt(document.body.dataset.lastId || '0') / {RUN_SPAN}n === {hub.hub.run}n", timeout=20000
            )
            await page.wait_for_function("document.querySelector('#link').textContent === 'live'")
            after = int(await page.evaluate("document.body.dataset.lastId"))
            assert after > before
            await wait_for(lambda: hub.hub.fanout.count >= 1, what="the page's stream")
        await page.screenshot(path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "tickhub-dashboard-test.png"))
