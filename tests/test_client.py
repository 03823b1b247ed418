"""tickhub.client: the asyncio subscription and its synchronous twin against stand-in hubs (repeats,
malformed events, a silent link, refusals) and real ones (resync, restarts, a SIGKILL), and the REST
wrappers with their errors and an order retried after its answer was lost."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import free_port, port_open, running_hub, running_mock, spawn_hub, stop_process, wait_for, written

from tickhub.client import (
    AsyncHubClient,
    HubClient,
    HubError,
    Snapshot,
    Tick,
    subscribe,
    subscribe_sync,
)
from tickhub.client_models import decimal_text
from tickhub.client_stream import StreamState, base_url
from tickhub.config import Settings
from tickhub.wire import source_tick_json, tick_frame

KINDS = ("async", "sync")


class Follower:
    """A subscription of either kind running in the background, its events kept in a list."""

    def __init__(self, kind: str, url: str, symbols: Any = None, last_event_id: str | None = None, **options: Any):
        self.kind = kind
        self.events: list[Tick | Snapshot] = []
        make = subscribe if kind == "async" else subscribe_sync
        self.sub = make(url, symbols, last_event_id, reconnect_min=0.02, reconnect_max=0.3, **options)
        run = self._run_async() if kind == "async" else asyncio.to_thread(self._run_sync)
        self.task = asyncio.ensure_future(run)

    async def _run_async(self) -> None:
        async with self.sub:
            async for event in self.sub:
                self.events.append(event)

    def _run_sync(self) -> None:
        with self.sub:
            for event in self.sub:
                self.events.append(event)

    @property
    def ticks(self) -> list[Tick]:
        """Every tick handed out, a snapshot's new ones included, in order."""
        out: list[Tick] = []
        for event in self.events:
            out.extend(event.new if isinstance(event, Snapshot) else (event,))
        return out

    async def stop(self) -> None:
        if self.kind == "async":
            self.task.cancel()
        else:
            self.sub.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)


@contextlib.asynccontextmanager
async def following(kind: str, url: str, *args: Any, **options: Any) -> AsyncIterator[Follower]:
    follower = Follower(kind, url, *args, **options)
    try:
        yield follower
    finally:
        await follower.stop()


def check_each_tick_once(ticks: list[Tick]) -> None:
    """Ids strictly increase (nothing twice) and each source's seqs run without a hole (nothing missed)."""
    ids = [int(t.id) for t in ticks]
    assert ids == sorted(set(ids)), "nothing handed out twice"
    by_source: dict[str, list[int]] = {}
    for tick in ticks:
        by_source.setdefault(tick.source, []).append(tick.seq)
    for source, seqs in by_source.items():
        assert sorted(seqs) == list(range(min(seqs), min(seqs) + len(seqs))), f"{source}: no tick missed"


def tick_json(id: int, seq: int, price: str = "10", symbol: str = "BTCUSD", **extra: Any) -> dict[str, Any]:
    ts = "2026-11-23T19:00:00.000000Z"
    return {"id": str(id), "source": "mock", "symbol": symbol, "price": price, "ts": ts, "seq": seq, **extra}


def sse(event: str, data: Any, id: int | None = None) -> bytes:
    head = b"" if id is None else b"id: %d\n" % id
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return b"%bevent: %b\ndata: %b\n\n" % (head, event.encode(), body)


Script = Callable[[web.Request, web.StreamResponse, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def stand_in(script: Script, status: Callable[[int], web.Response | None] = lambda n: None):
    """A stand-in hub: ``status(n)`` may refuse connection n; else ``script`` writes its stream.
    Yields its URL and the Last-Event-ID header of each connection."""
    seen: list[str | None] = []
    closing = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        refusal = status(len(seen))
        if refusal is not None:
            return refusal
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await script(request, response, len(seen))
            await closing.wait()  # then silence: no heartbeat, nothing
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    server = TestServer(app)
    await server.start_server(shutdown_timeout=1.0)
    try:
        yield f"http://127.0.0.1:{server.port}", seen
    finally:
        closing.set()
        await server.close()


# -- without a hub -------------------------------------------------------------------------------


def test_the_wait_before_a_reconnect_is_capped_jittered_and_never_below_the_hubs_hint() -> None:
    state = StreamState("http://hub/", reconnect_min=0.01, reconnect_max=5.0)
    assert state.url == "http://hub/stream" and base_url("http://hub/stream/") == "http://hub"
    state.retry_hint(2000)
    delays = [state.lost("cut") for _ in range(20)]
    assert all(2.0 <= d <= 2.5 for d in delays[:5]), "the retry: hint is the floor, jittered above it"
    assert all(d <= 5.0 for d in delays) and len(set(delays)) > 1, "capped and jittered"
    busy = HubError(503, "draining", "shutting down", retry_after=4.0)
    assert 4.0 <= StreamState("http://hub", reconnect_max=5.0).lost(busy) <= 5.0, "Retry-After is a floor too"
    state.retry_hint(10**9)
    assert state.lost("cut") == 5.0, "a huge hint is capped"
    with pytest.raises(HubError, match="bad_symbol"):
        state.lost(HubError(400, "bad_symbol", "not a symbol"))


def test_quantities_go_out_as_plain_decimal_text() -> None:
    assert decimal_text(Decimal("1E-7")) == "0.0000001"
    assert decimal_text(Decimal("1.50")) == "1.50" and decimal_text(3) == "3" and decimal_text("0.25") == "0.25"
    assert decimal_text(Decimal("1E+3")) == "1000"
    with pytest.raises(TypeError):
        decimal_text(0.1)  # type: ignore[arg-type]


# -- stand-in hubs -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_repeat_is_dropped_and_counted_and_a_malformed_event_skipped(kind: str) -> None:
    snapshot = {"ticks": [tick_json(5, 105), tick_json(3, 103, "20", "META")]}
    frames = [
        b"retry: 25\n\n",
        sse("snapshot", snapshot, 5),
        sse("tick", tick_json(6, 106, "11", trade_id="T-1"), 6),
        sse("tick", tick_json(7, 106, "11"), 7),  # (mock, 106) again under a new id, as after a hub crash
        sse("tick", b"{not json", 8),
        sse("tick", tick_json(9, 107, "12.50"), 9),
    ]

    async def script(request: web.Request, response: web.StreamResponse, n: int) -> None:
        await response.write(b"".join(frames))

    async with stand_in(script) as (url, _), following(kind, url, ["btcusd", "META"]) as sub:
        # The sync follower appends in its own thread after the client has taken the event: wait for the list.
        await wait_for(lambda: len(sub.events) == 3, 10, "the last event")
        assert sub.sub.last_event_id == "9"
        first, *rest = sub.events
        assert isinstance(first, Snapshot) and first.resync is None and first.id == "5"
        assert [(t.symbol, t.seq) for t in first.new] == [("BTCUSD", 105), ("META", 103)]
        assert [(t.id, t.seq, t.price, t.price_text) for t in rest] == [
            ("6", 106, Decimal("11"), "11"),
            ("9", 107, Decimal("12.5"), "12.50"),
        ]
        assert rest[0].trade_id == "T-1" and rest[0].extra == {"trade_id": "T-1"}
        assert sub.sub.dropped == 1 and sub.sub.state.malformed == 1
        assert sub.sub.state.retry_floor == 0.025, "the retry: frame was read"


async def test_an_event_too_large_to_hold_is_skipped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    import tickhub.client_aio

    monkeypatch.setattr(tickhub.client_aio, "MAX_EVENT", 300)
    big = {"ticks": [tick_json(i, 100 + i, symbol=f"S{i}") for i in range(1, 10)]}

    async def script(request: web.Request, response: web.StreamResponse, n: int) -> None:
        await response.write(sse("snapshot", big, 9) + sse("tick", tick_json(10, 110), 10))

    async with stand_in(script) as (url, _), following("async", url) as sub:
        await wait_for(lambda: sub.events, 10, "the tick after the oversized snapshot")
        assert [t.seq for t in sub.ticks] == [110] and sub.sub.state.malformed == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_silent_link_is_made_again_after_the_stale_timeout_resuming_by_last_event_id(kind: str) -> None:
    async def script(request: web.Request, response: web.StreamResponse, n: int) -> None:
        if n == 1:
            await response.write(sse("snapshot", {"ticks": [tick_json(5, 105)]}, 5))
        else:
            await response.write(sse("tick", tick_json(6, 106), 6))

    async with stand_in(script) as (url, seen), following(kind, url, stale_timeout=0.3) as sub:
        await wait_for(lambda: len(sub.events) == 2, 10, "the tick after the stale link")
        assert seen[:2] == [None, "5"]
        assert [t.seq for t in sub.ticks] == [105, 106]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_busy_hub_is_asked_again_and_a_refusal_that_will_not_change_is_raised(kind: str) -> None:
    def status(n: int) -> web.Response | None:
        if n > 1:
            return None
        error = {"error": {"code": "draining", "message": "the hub is shutting down"}}
        return web.json_response(error, status=503, headers={"Retry-After": "0"})

    async def script(request: web.Request, response: web.StreamResponse, n: int) -> None:
        await response.write(sse("snapshot", {"ticks": []}, 1))

    async with stand_in(script, status) as (url, seen), following(kind, url) as sub:
        await wait_for(lambda: sub.events, 10, "the snapshot after a 503")
        assert len(seen) == 2

    def bad_symbol(n: int) -> web.Response:
        return web.json_response({"error": {"code": "bad_symbol", "message": "not a symbol: 'X/Y'"}}, status=400)

    async with stand_in(script, bad_symbol) as (url, seen):
        with pytest.raises(HubError) as info:
            await asyncio.wait_for(Follower(kind, url).task, 10)
        assert (info.value.status, info.value.code, info.value.message) == (400, "bad_symbol", "not a symbol: 'X/Y'")
        assert len(seen) == 1, "not asked again"


async def test_close_from_another_thread_wakes_a_blocked_read() -> None:
    async def script(request: web.Request, response: web.StreamResponse, n: int) -> None:
        await response.write(sse("snapshot", {"ticks": []}, 1))

    async with stand_in(script) as (url, _):
        sub = subscribe_sync(url, stale_timeout=60)
        got = threading.Event()

        def follow() -> None:
            for _ in sub:
                got.set()

        thread = asyncio.ensure_future(asyncio.to_thread(follow))
        await wait_for(got.is_set, 10, "the snapshot")
        sub.close()  # the reader is blocked in recv for up to a minute: close must wake it
        await asyncio.wait_for(thread, 10)


# -- real hubs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_resync_reaches_the_caller_as_a_snapshot_saying_why(kind: str, settings: Settings) -> None:
    async with running_mock(("BTCUSD", "META")) as source:
        async with running_hub(settings.replace(sources=(("mock", source.url),))) as hub:
            await wait_for(lambda: len(hub.hub.market.latest) == 2, 10, "both symbols")
            async with following(kind, hub.url, last_event_id="not-an-id") as sub:
                await wait_for(lambda: len(sub.events) >= 3, 10, "the snapshot and ticks")
                first = sub.events[0]
                assert isinstance(first, Snapshot) and first.resync == "unknown_id"
                assert {t.symbol for t in first.ticks} == {"BTCUSD", "META"}
                assert all(isinstance(e, Tick) for e in sub.events[1:])


@pytest.mark.parametrize("kind", KINDS)
async def test_a_subscriber_misses_nothing_and_sees_nothing_twice_across_a_hub_restart(
    kind: str, settings: Settings
) -> None:
    port = free_port()
    hub_settings = settings.replace(retry_ms=50)
    async with running_mock(("BTCUSD",), interval=0.005) as source:
        hub_settings = hub_settings.replace(sources=(("mock", source.url),))
        async with running_hub(hub_settings, port=port) as hub:
            sub = Follower(kind, hub.url, ["BTCUSD"])
            await wait_for(lambda: len(sub.ticks) >= 50, 10, "ticks before the restart")
        try:
            async with running_hub(hub_settings, port=port) as hub:
                await wait_for(lambda: sub.ticks and sub.ticks[-1].id == str(hub.hub.market.last_id), 10, "catch-up")
                count = len(sub.ticks)
                await wait_for(lambda: len(sub.ticks) >= count + 50, 10, "ticks after the restart")
        finally:
            await sub.stop()
    assert sub.sub.reconnects >= 1 and sub.sub.dropped == 0
    assert isinstance(sub.events[0], Snapshot)
    check_each_tick_once(sub.ticks)


async def test_a_bot_on_the_client_trades_through_a_graceful_restart_and_a_kill_handling_each_tick_once(
    settings: Settings,
) -> None:
    """A bot written only against tickhub.client: it buys a fall and sells a rise, one unit at most."""
    port = free_port()
    handled: list[Tick] = []
    fills: list[str] = []

    async def bot(url: str, key: str) -> None:
        last: Decimal | None = None
        async with AsyncHubClient(url, key) as hub, subscribe(url, ["BTCUSD"], reconnect_max=0.3) as stream:
            async for event in stream:
                for tick in event.new if isinstance(event, Snapshot) else (event,):
                    handled.append(tick)
                    before, last = last, tick.price
                    holding = len(fills) % 2 == 1
                    with contextlib.suppress(HubError):  # a hub on its way down refuses (503)
                        if before is not None and tick.price < before and not holding:
                            fills.append((await hub.buy("BTCUSD", Decimal("0.5"))).side)
                        elif before is not None and tick.price > before and holding:
                            fills.append((await hub.sell("BTCUSD", Decimal("0.5"))).side)

    async with running_mock(("BTCUSD",), interval=0.005) as source:

        def spawn() -> subprocess.Popen[bytes]:
            return spawn_hub(settings, port, f"mock={source.url}", retry_ms="50")

        proc = spawn()
        task = None
        try:
            await wait_for(lambda: port_open(port), 30, "the hub")
            async with running_hub(settings.replace(wal=False), port=0) as admin:  # same database, for the account
                key = await admin.hub.accounts.create("dips", Decimal(100000))
            task = asyncio.create_task(bot(f"http://127.0.0.1:{port}", key))
            for stop in (signal.SIGTERM, signal.SIGKILL):
                count = len(handled)
                await wait_for(lambda n=count: len(handled) >= n + 100 and len(fills) >= 2, 20, "ticks and trades")
                await asyncio.to_thread(stop_process, proc, stop)
                proc = spawn()
            count = len(handled)
            await wait_for(lambda: len(handled) >= count + 100, 30, "ticks after the kill")
            with HubClient(f"http://127.0.0.1:{port}", key) as client:
                orders = await asyncio.to_thread(client.orders, 1000)
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(stop_process, proc)
    check_each_tick_once(handled)
    assert len(orders) >= 4 and [o.side for o in reversed(orders)][:2] == ["buy", "sell"]


# -- the REST wrappers ---------------------------------------------------------------------------


class Api:
    """Either client, called alike from a test: ``await api("buy", "BTCUSD", qty)``."""

    def __init__(self, kind: str, url: str, key: str | None = None) -> None:
        self.kind = kind
        self.client = AsyncHubClient(url, key) if kind == "async" else HubClient(url, key)

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.client, name)
        if self.kind == "async":
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    async def error(self, name: str, *args: Any) -> HubError:
        with pytest.raises(HubError) as info:
            await self(name, *args)
        return info.value

    async def close(self) -> None:
        if isinstance(self.client, AsyncHubClient):
            await self.client.close()
        else:
            self.client.close()


def source_tick(seq: int, symbol: str, price: str, ts: str) -> bytes:
    return tick_frame(seq, source_tick_json("venue", symbol, price, ts, seq))


# Trades tie on time often: seqs 2 and 3, and 4 and 5, share theirs.
KNOWN = [
    source_tick(1, "BTCUSD", "43000.10", "2026-11-23T10:00:00Z"),
    source_tick(2, "BTCUSD", "43001.20", "2026-11-23T10:00:01Z"),
    source_tick(3, "BTCUSD", "43002.00", "2026-11-23T10:00:01Z"),
    source_tick(4, "BTCUSD", "43003.00", "2026-11-23T10:00:02Z"),
    source_tick(5, "BTCUSD", "43004.00", "2026-11-23T10:00:02Z"),
    source_tick(6, "META", "480.5", "2026-11-23T10:00:03Z"),
]


@contextlib.asynccontextmanager
async def known_market(settings: Settings) -> AsyncIterator[Any]:
    """A hub holding KNOWN, everything written to PostgreSQL."""
    from helpers import scripted_source

    async with scripted_source(KNOWN) as (url, _), running_hub(settings.replace(sources=(("venue", url),))) as hub:
        await wait_for(lambda: hub.hub.sequencer.last_seq("venue") == 6, 10, "the ticks")
        await wait_for(lambda: written(hub.hub), 10, "the writer")
        yield hub


@pytest.mark.parametrize("kind", KINDS)
async def test_the_rest_wrappers_read_exact_values_and_raise_the_hubs_errors(kind: str, settings: Settings) -> None:
    async with known_market(settings) as hub:
        key = await hub.hub.accounts.create("alice", Decimal(10000))
        api, stranger = Api(kind, hub.url + "/", key), Api(kind, hub.url, "th_nope_nope")
        try:
            assert [(t.symbol, t.price_text) for t in await api("prices")] == [
                ("BTCUSD", "43004.00"),
                ("META", "480.5"),
            ]
            meta = await api("price", "meta")
            assert (meta.price, meta.source, meta.seq, meta.time.minute) == (Decimal("480.5"), "venue", 6, 0)

            pages, after = [], None
            while page := await api(
                "history", "BTCUSD", since=None if after else "2026-11-23T10:00:00Z", limit=2, after_id=after
            ):
                pages.append([t.seq for t in page])
                after = page[-1].id
            assert pages == [[1, 2], [3, 4], [5]], "paged by after_id: ticks sharing a time neither lost nor repeated"
            candles = await api("candles", "BTCUSD", interval="1s", since="2026-11-23T10:00:00Z", until=1795442403)
            assert [(c.open, c.close, c.count) for c in candles] == [
                (Decimal("43000.10"), Decimal("43000.10"), 1),
                (Decimal("43001.20"), Decimal("43002.00"), 2),
                (Decimal("43003.00"), Decimal("43004.00"), 2),
            ]

            bought = await api("buy", "BTCUSD", Decimal("1E-7"))  # sent as "0.0000001", not "1E-7"
            assert (bought.side, bought.qty, bought.raw["qty"], bought.replayed) == (
                "buy",
                Decimal("1E-7"),
                "0.0000001",
                False,
            )
            sold = await api("sell", "btcusd", "0.0000001")
            assert sold.realized == 0 and await api("order", bought.id) == bought
            assert [o.id for o in await api("orders")] == [sold.id, bought.id]
            me = await api("account")
            assert me.name == "alice" and me.cash == Decimal(10000) and me.position("BTCUSD").qty == 0

            errors = [
                await api.error("price", "NOPE"),
                await api.error("buy", "BTCUSD", 10**6),
                await api.error("sell", "META", 1),
                await stranger.error("account"),
            ]
            assert [(e.status, e.code) for e in errors] == [
                (404, "unknown_symbol"),
                (422, "insufficient_cash"),
                (422, "insufficient_position"),
                (401, errors[3].code),
            ]
            assert errors[0].message and errors[3].code
        finally:
            await api.close()
            await stranger.close()
        down = Api(kind, f"http://127.0.0.1:{free_port()}")
        unreachable = await down.error("prices")
        await down.close()
        assert (unreachable.status, unreachable.code) == (None, "unreachable")


@pytest.mark.parametrize("kind", KINDS)
async def test_an_order_whose_answer_was_lost_is_retried_and_fills_once(kind: str, settings: Settings) -> None:
    """A proxy passes the first POST to the hub, which fills it, and answers 502: the client asks again
    with the same Idempotency-Key and gets the same order back."""
    import aiohttp

    async with known_market(settings) as hub, aiohttp.ClientSession() as session:
        key = await hub.hub.accounts.create("bob", Decimal(100000))
        posts: list[tuple[str | None, bytes]] = []

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with session.request(request.method, hub.url + request.path_qs, data=body, headers=headers) as r:
                answer, status, replayed = await r.read(), r.status, r.headers.get("Idempotent-Replayed")
            if request.method == "POST":
                posts.append((request.headers.get("Idempotency-Key"), body))
                if len(posts) == 1:
                    return web.json_response({"error": {"code": "bad_gateway", "message": "lost"}}, status=502)
            extra = {"Idempotent-Replayed": replayed} if replayed else {}
            return web.Response(body=answer, status=status, content_type="application/json", headers=extra)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        server = TestServer(app)
        await server.start_server(shutdown_timeout=1.0)
        api = Api(kind, f"http://127.0.0.1:{server.port}", key)
        try:
            order = await api("buy", "BTCUSD", Decimal("0.50"))
            assert order.replayed and order.qty == Decimal("0.50")
            assert len(posts) == 2 and posts[0] == posts[1] and posts[0][0], "the same key and body, twice"
            assert b'"qty":"0.50"' in posts[0][1]
            assert [o.id for o in await api("orders")] == [order.id], "filled once"
        finally:
            await api.close()
            await server.close()
