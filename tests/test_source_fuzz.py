"""A hostile source against the real hub: generated events (valid, malformed, hostile, broken framing)
over one SSE connection into a hub on a real socket and the real PostgreSQL.

After each generated burst: every tick a correct reading of the bytes accepts (the general SSE parser,
then parse_source_tick, then replays dropped on seq) is in PostgreSQL once and was streamed once, in
order, with consecutive hub ids; every streamed data line is one JSON object; the hub is still
connected to the source, ingesting, with no unexpected error. `make soak` runs many more bursts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest
from aiohttp import web
from helpers import running_hub, start_site, subscribe, wait_for
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import HOSTILE_SEQS, encode_event, optional_fields, source_event_objects

from tickhub.config import Settings
from tickhub.wire import OPTIONAL_FIELDS, SourceTick, SSEParser, TickRejected, parse_source_tick, source_tick_json

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
WINDOW = 10**6  # each burst's valid seqs lie in a window of their own, above every earlier burst's
NO_FIELDS = (None,) * len(OPTIONAL_FIELDS)
MAX_LINE = 4096  # the hub's TICKHUB_SOURCE_MAX_LINE here, so that oversized lines are cheap to make
T = TypeVar("T")


# -- what a burst is made of -------------------------------------------------------------------------


def frame(data: bytes, event_id: bytes | None = None, event: bytes = b"tick") -> bytes:
    head = b"" if event_id is None else b"id: %b\n" % event_id
    return b"%bevent: %b\ndata: %b\n\n" % (head, event, data)


class Rel(int):
    """A seq relative to its burst's window: rendered as ``base + self`` (hypothesis draws must not
    depend on how many bursts came before)."""


class Next(int):
    """A seq this far above the previous one the burst rendered that way: mostly increasing seqs, as
    real sources send, so most ticks are accepted."""


class Renderer:
    """Turns a burst's pieces into the bytes the source sends, placing its seqs in the window at ``base``."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.cursor = base

    def seq(self, value: Any) -> Any:
        if isinstance(value, Next):
            self.cursor = min(self.cursor + int(value), self.base + WINDOW - 2)
            return self.cursor
        if isinstance(value, Rel):
            self.cursor = max(self.cursor, self.base + int(value))  # after a jump up, the next seqs follow it
            return self.base + int(value)
        return value

    def __call__(self, item: tuple) -> bytes:
        kind = item[0]
        if kind == "tick":
            _, symbol, price, ts, seq, event_id, fields = item
            seq = self.seq(seq)
            try:
                data = source_tick_json("x", symbol, price, ts, seq, fields)
            except TypeError:  # an integer past 64 bits, which orjson refuses: the stdlib writes it
                obj = {"source": "x", "symbol": symbol, "price": price, "ts": ts, "seq": seq, **fields}
                data = encode_event({k: v for k, v in obj.items() if v is not None}, True)
            return frame(data, str(self.seq(event_id)).encode())
        if kind == "object":
            _, obj, ascii_only, event_id = item
            obj = {k: self.seq(v) if k == "seq" else v for k, v in obj.items()}
            event_id = str(self.seq(event_id)).encode() if isinstance(event_id, int) else event_id
            return frame(encode_event(obj, ascii_only), event_id)
        if kind == "line_ends":
            _, seq, line_end = item
            data = frame(source_tick_json("x", "META", "10.25", "2026-11-23T19:00:00.000000Z", self.seq(seq)))
            return data.replace(b"\n", line_end)
        return item[1]  # raw bytes


RELATIVE_SEQS = st.integers(0, 9).flatmap(
    lambda k: (
        st.integers(min_value=1, max_value=3).map(Next)  # the usual: the next seq, or a small gap
        if k
        else st.integers(min_value=1, max_value=WINDOW // 2).map(Rel)
    )  # one in ten anywhere: a replay, a jump
)
#: Refused (not integers, out of range) or stale (below every window), whatever the burst.
STALE_OR_BAD = st.one_of(
    st.integers(min_value=-5, max_value=WINDOW - 1), st.integers(min_value=1 << 63, max_value=1 << 64), HOSTILE_SEQS
)


@st.composite
def items(draw: st.DrawFn) -> tuple:
    """One piece of the byte stream: mostly tick events, some of them hostile, and broken framing."""
    kind = draw(st.integers(0, 15))
    if kind <= 4 or kind > 11:  # a tick as sources write it, its values mostly good
        return (
            "tick",
            draw(st.sampled_from(["BTCUSD", "META", "BINANCE:BTCUSDT"])),
            draw(st.sampled_from(["100.50", "0.000001", "42", "7.25", "99.9", "3", "007", "1e5", "1.5\n"])),
            draw(st.sampled_from(["2026-11-23T19:00:00.000000Z"] * 5 + ["2026-11-23\n19:00:00.000000Z"])),
            draw(RELATIVE_SEQS),
            draw(RELATIVE_SEQS),
            draw(optional_fields()),  # size, side, trade id, best quote: good, hostile or absent
        )
    if kind <= 6:  # any JSON object, fields good, hostile or missing; the seq may come from the id line
        obj, ascii_only = draw(source_event_objects(RELATIVE_SEQS, STALE_OR_BAD))
        return "object", obj, ascii_only, draw(st.one_of(st.none(), RELATIVE_SEQS, st.binary(max_size=5)))
    if kind == 7:  # a tick with other line ends
        return "line_ends", draw(RELATIVE_SEQS), draw(st.sampled_from([b"\r\n", b"\r"]))
    if kind == 8:  # comments, retry hints, unknown fields, other events, empty data
        raw = st.sampled_from(
            [b": ping\n\n", b"retry: 10\n\n", b"retry: x\n\n", b"foo: bar\n\n", b"data:\n\n", b"event: news\n"]
        ) | st.builds(frame, st.binary(max_size=40), st.none(), st.just(b"news"))
        return "raw", draw(raw)
    if kind == 9:  # a line or an event past the size limits
        return "raw", draw(
            st.sampled_from(
                [
                    b"data: " + b"x" * (MAX_LINE + 10) + b"\n\n",
                    b"event: tick\n" + b"data: 1\n" * (MAX_LINE // 4) + b"\n",
                    b"id: " + b"9" * (MAX_LINE + 10) + b"\n",
                ]
            )
        )
    # raw bytes: NULs, lone CRs, invalid UTF-8, half a frame
    return "raw", draw(st.binary(max_size=200) | st.sampled_from([b"id: 1\x00\n", b"data: {\n", b"\xff\xfe\n", b"\r"]))


# -- the rig: a hub and a scripted source, on an event loop of their own -----------------------------


class FuzzRig:
    """A hub fed by a source whose bytes the test writes, both on a loop in a thread of their own, so
    that hypothesis (which is synchronous) can run many bursts against one hub."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-rig", daemon=True)
        self.outgoing: asyncio.Queue[bytes] | None = None
        self.connections = 0
        self.oracle = SSEParser(max_line=MAX_LINE)  # the reading every accepted tick must match
        self.last_seq = 0
        self.base = 0
        self.streamed: list[dict[str, Any]] = []
        self.stream_ids: list[int] = []
        self._stack = contextlib.AsyncExitStack()

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        assert self.outgoing is not None
        while True:
            try:
                async with asyncio.timeout(0.3):
                    data = await self.outgoing.get()
            except TimeoutError:
                data = b": heartbeat\n\n"
            await response.write(data)

    async def start(self) -> None:
        self.outgoing = asyncio.Queue()
        app = web.Application()
        app.router.add_get("/stream", self._stream)
        runner, port = await start_site(app)
        self._stack.push_async_callback(runner.cleanup)
        hub_settings = self.settings.replace(
            sources=(("fuzz", f"http://127.0.0.1:{port}/stream"),), source_max_line=MAX_LINE
        )
        self.hub = await self._stack.enter_async_context(running_hub(hub_settings))
        self.subscriber = await self._stack.enter_async_context(subscribe(self.hub.url))
        await self.subscriber.next_event("snapshot")
        self._reader = asyncio.create_task(self._read_stream())
        self._stack.push_async_callback(self._stop_reader)

    async def _read_stream(self) -> None:
        while True:
            event = await self.subscriber.next(timeout=3600)
            if event.event == "tick":
                tick = orjson.loads(event.data)  # one JSON object per data line, or this raises
                assert isinstance(tick, dict) and tick["id"] == event.id
                self.streamed.append(tick)
                self.stream_ids.append(int(event.id))

    async def _stop_reader(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def stop(self) -> None:
        await self._stack.aclose()

    def expected(self, data: bytes) -> Iterator[SourceTick]:
        """The ticks a correct hub accepts from ``data``, continuing the stream so far."""
        for sse in self.oracle.feed(data):
            if sse.event != "tick":
                continue
            try:
                tick = parse_source_tick(sse.data, sse.id)
            except TickRejected:
                continue
            if tick.seq > self.last_seq:
                self.last_seq = tick.seq
                yield tick

    async def send(self, data: bytes) -> None:
        assert self.outgoing is not None
        await self.outgoing.put(data)

    async def rows(self, low: int, high: int) -> list[tuple]:
        conn = await asyncpg.connect(
            self.settings.database_url, server_settings={"search_path": self.settings.database_schema}
        )
        try:
            query = (
                "SELECT id, seq, symbol, price::text, qty::text, side, trade_id, bid::text, bid_qty::text,"
                " ask::text, ask_qty::text FROM ticks WHERE source = 'fuzz' AND seq > $1 AND seq < $2"
            )
            return [tuple(r) for r in await conn.fetch(query + " ORDER BY id", low, high)]
        finally:
            await conn.close()


@pytest.fixture
def rig(settings: Settings) -> Iterator[FuzzRig]:
    rig = FuzzRig(settings)
    rig.thread.start()
    rig.run(rig.start())
    try:
        yield rig
    finally:
        rig.run(rig.stop())
        rig.loop.call_soon_threadsafe(rig.loop.stop)
        rig.thread.join(10)
        rig.loop.close()


@settings(
    max_examples=300 if SOAK else 25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(pieces=st.lists(items(), min_size=5, max_size=60))
def test_a_hostile_source_never_breaks_the_stream_or_persistence(rig: FuzzRig, pieces: list[tuple]) -> None:
    rig.base += WINDOW
    base = rig.base
    # The burst ends on a blank line and a good tick above its window: the parser is at an event's
    # start again, and the marker tells when the hub has read everything before it.
    marker = base + WINDOW - 1
    render = Renderer(base)
    data = (
        b"".join(render(p) for p in pieces)
        + b"\n\n"
        + frame(source_tick_json("x", "META", "1.00", "2026-11-23T19:00:00Z", marker))
    )
    expected = list(rig.expected(data))
    assert expected and expected[-1].seq == marker
    event(f"accepted ticks: {min(len(expected) - 1, 10)}{'+' if len(expected) > 10 else ''}")
    hub = rig.hub.hub
    before = len(rig.streamed)
    rig.run(rig.send(data))
    rig.run(wait_for(lambda: hub.sequencer.last_seq("fuzz") >= marker, 20, "the marker tick"))
    last_id = hub.market.last_id
    rig.run(wait_for(lambda: hub.writer.persisted_id >= last_id, 20, "the writer"))
    rig.run(wait_for(lambda: rig.stream_ids and rig.stream_ids[-1] >= last_id, 20, "the subscriber"))

    want = [(t.seq, t.symbol, t.price, *(t.fields.values() if t.fields else NO_FIELDS)) for t in expected]
    stored = rig.run(rig.rows(base, base + WINDOW))
    assert [tuple(row[1:]) for row in stored] == want, "stored once each, in order"
    streamed = rig.streamed[before:]
    assert [(t["seq"], t["symbol"], t["price"], *map(t.get, OPTIONAL_FIELDS)) for t in streamed] == want, (
        "streamed once each, in order"
    )
    assert [int(t["id"]) for t in streamed] == [i for i, *_ in stored], "the ids streamed are the ids stored"
    ids = rig.stream_ids
    assert all(b == a + 1 for a, b in itertools.pairwise(ids)), "consecutive hub ids"
    stats = hub.ingest.clients["fuzz"].stats
    assert stats.state == "connected" and stats.failures == 0 and rig.connections == 1
    assert hub.writer.rejected == 0 and hub.writer.errors == 0
