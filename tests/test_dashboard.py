"""The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): prices
move, the hub restarts, updates resume from where the page left off; the chart holds the hub's candles
and volume and follows the stream; bid, ask and spread show the hub's quote; the static files carry a
fitting content type and cache headers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import REQUIRE_SERVICES
from helpers import RunningHub, free_port, get_json, running_hub, running_mock, start_site, wait_for, written

from tickhub import pages
from tickhub.config import Settings
from tickhub.sequencer import RUN_SPAN
from tickhub.wire import format_ts

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
            yield await browser.new_page(viewport={"width": 1100, "height": 700})
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


# --- the chart, the quote columns and the static files ------------------------------------------------

SYMBOL = "BTCUSD"
STATIC_DIR = Path(pages.__file__).with_name("static")


class PushedSource:
    """A source the test feeds: each frame pushed reaches the hub (resumed after Last-Event-ID), heartbeats between."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._more = asyncio.Event()

    @property
    def seq(self) -> int:
        return len(self.frames)

    def push(self, symbol: str, price: str, ts: datetime, **fields: str) -> None:
        data = {"symbol": symbol, "price": price, "ts": format_ts(ts), "seq": self.seq + 1, **fields}
        self.frames.append(b"id: %d\nevent: tick\ndata: %b\n\n" % (self.seq + 1, orjson.dumps(data)))
        self._more.set()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        last = request.headers.get("Last-Event-ID", "")
        sent = int(last) if last.isdigit() else 0
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                if sent < len(self.frames):
                    await response.write(b"".join(self.frames[sent:]))
                    sent = len(self.frames)
                    continue
                self._more.clear()
                try:
                    async with asyncio.timeout(0.2):
                        await self._more.wait()
                except TimeoutError:
                    await response.write(b": ping\n\n")
        return response


@contextlib.asynccontextmanager
async def pushed_hub(settings: Settings) -> AsyncIterator[tuple[PushedSource, RunningHub]]:
    """A hub whose one source, ``feed``, publishes what the test pushes."""
    source = PushedSource()
    app = web.Application()
    app.router.add_get("/stream", source.stream)
    runner, port = await start_site(app)
    try:
        async with running_hub(settings.replace(sources=(("feed", f"http://127.0.0.1:{port}/stream"),))) as hub:
            yield source, hub
    finally:
        await runner.cleanup()


async def persisted(source: PushedSource, hub: RunningHub) -> None:
    """Everything pushed so far is sequenced, delivered and in PostgreSQL."""

    def newest_seq() -> int:
        return max((t.seq for t in hub.hub.market.latest.values()), default=0)

    await wait_for(lambda: newest_seq() >= source.seq and written(hub.hub), what="every pushed tick persisted")


async def hub_candles(hub: RunningHub, interval: str) -> list[dict[str, Any]]:
    """The hub's candles as the page holds them: exact strings, no volume (null) when the hub gives none."""
    status, body = await get_json(f"{hub.url}/prices/{SYMBOL}/candles?interval={interval}")
    assert status == 200, body
    keys = ("start", "open", "high", "low", "close", "volume", "count")
    return [{k: c.get(k) for k in keys} for c in body["candles"]]


async def until_page(page: Any, script: str, want: object, timeout: float = 10.0) -> None:
    """Evaluate ``script`` in the page until it returns ``want``; fail showing the last answer."""
    deadline = time.monotonic() + timeout
    while (got := await page.evaluate(script)) != want:
        assert time.monotonic() < deadline, f"the page still answers {got!r}, not {want!r}"
        await asyncio.sleep(0.05)


def epoch(start: str) -> int:
    return int(datetime.fromisoformat(start).timestamp())


async def test_the_chart_holds_the_hubs_candles_and_volume_and_follows_the_stream(settings: Settings, page) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(20)
    async with pushed_hub(settings) as (source, hub):
        for minute in range(4):  # four 1m buckets of three ticks each, within the 1s window (300 s) too
            start = now - timedelta(seconds=230 - 60 * minute)
            for i in range(3):
                price = f"{rng.randint(2_700_000, 2_720_000) / 100:.2f}"
                source.push(SYMBOL, price, start + timedelta(milliseconds=100 * i), qty=f"0.{rng.randint(1, 999):03d}")
        await persisted(source, hub)
        # ?refresh=0: after a load only the stream moves the chart, so what it holds is the page's own sum
        await page.goto(hub.url + "/?refresh=0")
        want = await hub_candles(hub, "1m")
        assert len(want) == 4 and all(c["count"] == 3 for c in want)
        await until_page(page, f"window.tickhubChart.candles({SYMBOL!r})", want)

        assert await page.locator("#chart canvas").count() >= 2, "lightweight-charts draws on its canvases"
        script = (STATIC_DIR / "dashboard.html").read_text()
        vendored = re.search(r'src="/static/lightweight-charts-([0-9.]+)\.standalone\.production\.js"', script)
        assert vendored and await page.evaluate("LightweightCharts.version()") == vendored[1]
        # what the chart draws: the same candles as floats, and a volume bar for each candle with volume
        bars = [{"time": epoch(c["start"]), **{k: float(c[k]) for k in ("open", "high", "low", "close")}} for c in want]
        volumes = [{"time": epoch(c["start"]), "value": float(c["volume"])} for c in want if c["volume"] is not None]
        await until_page(page, f"window.tickhubChart.drawn({SYMBOL!r})", {"candles": bars, "volume": volumes})
        close = f"C {want[-1]['close']}"
        await until_page(page, f"document.querySelector('#chart-legend').textContent.includes({close!r})", True)

        await page.select_option("#chart-interval", "1s")
        await until_page(page, "window.tickhubChart.interval()", "1s")
        await until_page(page, f"window.tickhubChart.candles({SYMBOL!r})", await hub_candles(hub, "1s"))

        # Live: a new bucket whose ticks arrive out of source-time order, and a late tick (an older source
        # time) in a bucket the page loaded; the page's own sums must come to what the hub computes in SQL.
        live = now - timedelta(seconds=2)
        for offset, price in ((500, "27150.10"), (200, "27149.90"), (700, "27150.35"), (300, "27151.00")):
            source.push(SYMBOL, price, live + timedelta(milliseconds=offset), qty="0.250")
        source.push(SYMBOL, "27100.00", now - timedelta(seconds=50) + timedelta(milliseconds=150), qty="1.5")
        await persisted(source, hub)
        want = await hub_candles(hub, "1s")
        assert want[-1]["count"] == 4 and want[-1]["open"] == "27149.90" and want[-1]["close"] == "27150.35"
        await until_page(page, f"window.tickhubChart.candles({SYMBOL!r})", want)
        if want[-1]["volume"] is not None:  # the hub reports volume: the page summed the same quantities
            assert want[-1]["volume"] == "1.000"


def bps(bid: str, ask: str) -> str:
    """The spread in basis points of the mid price, to 0.01, rounded half away from zero."""
    with localcontext(prec=120):
        spread, mid = Decimal(ask) - Decimal(bid), (Decimal(ask) + Decimal(bid)) / 2
        return hundredths(spread / mid * 10_000)


def hundredths(value: Decimal) -> str:
    """``value`` to 0.01, rounded half away from zero, as the page writes it (no "-0.00")."""
    rounded = value.quantize(Decimal("0.01"), ROUND_HALF_UP)
    return str(abs(rounded) if rounded == 0 else rounded)


async def cells(page: Any, symbol: str) -> dict[str, tuple[str, str]]:
    """Text and class of each cell of ``symbol``'s row."""
    script = """s => Object.fromEntries([...document.querySelectorAll(`tr[data-symbol="${s}"] td`)]
        .filter((td) => td.dataset.base)
        .map((td) => [td.dataset.base.split(" ").pop(), [td.textContent, td.className]]))"""
    return {name: tuple(cell) for name, cell in (await page.evaluate(script, symbol)).items()}


async def test_bid_ask_and_spread_show_the_hubs_quote_exactly(settings: Settings, page) -> None:
    now = datetime.now(UTC)
    async with pushed_hub(settings) as (source, hub):
        source.push("META", "612.30", now)  # a source with no quote
        source.push(SYMBOL, "27123.50", now, bid="27123.45", bid_qty="1.25", ask="27123.58", ask_qty="0")
        await persisted(source, hub)
        status, latest = await get_json(f"{hub.url}/prices/{SYMBOL}")
        assert status == 200
        # the hub passes the quote on (tick_fields); the page shows its text, the spread computed exactly
        assert (latest.get("bid"), latest.get("ask")) == ("27123.45", "27123.58"), "the hub carries bid and ask"
        await page.goto(hub.url + "/")
        await until_page(page, f"document.querySelector('tr[data-symbol=\"{SYMBOL}\"] .bid').textContent", "27123.45")
        row = await cells(page, SYMBOL)
        assert row["bid"] == (latest["bid"], "num bid") and row["ask"] == (latest["ask"], "num ask")
        assert row["spread"] == ("0.13", "num spread") and row["bps"] == (bps("27123.45", "27123.58"), "num bps")
        assert row["bps"][0] == "0.05" and row["price"][0] == "27123.50"
        assert await page.locator(f'tr[data-symbol="{SYMBOL}"] .bid').get_attribute("title") == "size 1.25"
        assert {k: v[0] for k, v in (await cells(page, "META")).items() if k in ("bid", "ask", "spread", "bps")} == {
            "bid": "—",
            "ask": "—",
            "spread": "—",
            "bps": "—",
        }

        # A trade without a quote leaves the last quote standing, marked as older than the price.
        source.push(SYMBOL, "27123.60", now, qty="0.5", side="buy")
        await until_page(page, f"document.querySelector('tr[data-symbol=\"{SYMBOL}\"] .price').textContent", "27123.60")
        row = await cells(page, SYMBOL)
        assert row["bid"] == ("27123.45", "num bid held") and row["spread"] == ("0.13", "num spread held")
        # A crossed book is shown as sent, with a negative spread.
        source.push(SYMBOL, "27123.60", now, bid="27124", ask="27123.9")
        await until_page(page, f"document.querySelector('tr[data-symbol=\"{SYMBOL}\"] .bid').textContent", "27124")
        row = await cells(page, SYMBOL)
        assert row["spread"] == ("-0.1", "num spread crossed")
        assert row["bps"] == (bps("27124", "27123.9"), "num bps crossed")


async def test_the_pages_decimal_arithmetic_is_exact(settings: Settings, page) -> None:
    """Spreads, basis points, sums and changes from decimal strings, against Python's Decimal."""
    rng = random.Random(7)

    def amount() -> str:
        scale = rng.choice((0, 1, 2, 3, 8, 18))
        units = rng.choice((1, 5, 999, 10**6, 10**12, 10**21, rng.randint(1, 10**24)))
        return format(Decimal(units).scaleb(-scale), "f")

    pairs = [(amount(), amount()) for _ in range(300)] + [("0.5", "0.5"), ("1", "1.00"), ("99.995", "100.005")]
    async with running_hub(settings) as hub:
        await page.goto(hub.url + "/")
        got = await page.evaluate(
            """async (pairs) => { const d = await import("/static/decimal.js");
            return pairs.map(([a, b]) => [d.subtract(b, a), d.add(a, b), d.spreadBps(a, b), d.percentChange(a, b),
              d.compare(a, b)]); }""",
            pairs,
        )
    for (a, b), (difference, total, basis, change, order) in zip(pairs, got, strict=True):
        with localcontext(prec=120):  # exact: the amounts have up to 42 digits
            x, y = Decimal(a), Decimal(b)
            assert Decimal(difference) == y - x and Decimal(total) == x + y, (a, b)
            assert places(difference) == places(total) == max(places(a), places(b)), (a, b)
            assert basis == bps(a, b), (a, b)
            assert change == hundredths((y - x) / x * 100), (a, b)
            assert order == (x > y) - (x < y), (a, b)


def places(text: str) -> int:
    return len(text.partition(".")[2])


async def test_static_files_have_a_content_type_and_cache_headers(settings: Settings) -> None:
    page = (STATIC_DIR / "dashboard.html").read_text()
    assets = re.findall(r'(?:src|href)="/static/([^"]+)"', page)
    vendored = [a for a in assets if a.startswith("lightweight-charts-")]
    assert len(vendored) == 1 and (STATIC_DIR / vendored[0]).stat().st_size > 100_000
    header = (STATIC_DIR / vendored[0]).read_text()[:400]
    assert f"v{vendored[0].split('-')[2].split('.standalone')[0]}" in header and "Apache License 2.0" in header
    assert "Apache License" in (STATIC_DIR / "lightweight-charts.LICENSE").read_text()
    assert vendored[0] in (STATIC_DIR / "VENDORED.md").read_text()
    async with running_hub(settings) as hub, aiohttp.ClientSession() as session:
        async with session.get(hub.url + "/") as response:
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-cache"
        for name in [*assets, "dashboard.js", "chart.js", "decimal.js", "VENDORED.md", "lightweight-charts.LICENSE"]:
            async with session.get(f"{hub.url}/static/{name}") as response:
                assert response.status == 200, name
                kind = {".js": "text/javascript", ".css": "text/css", ".md": "text/markdown"}.get(
                    Path(name).suffix, "text/plain"
                )
                assert response.headers["Content-Type"] == f"{kind}; charset=utf-8", name
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                cache = "public, max-age=31536000, immutable" if name in vendored else "no-cache"
                assert response.headers["Cache-Control"] == cache, name
                etag = response.headers["ETag"]
            async with session.get(f"{hub.url}/static/{name}", headers={"If-None-Match": etag}) as again:
                assert again.status == 304 and again.headers["Cache-Control"] == cache, name
