"""The mock source: its random walk, and its SSE feed with Last-Event-ID over a real socket."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from decimal import Decimal

import aiohttp
import orjson
from helpers import free_port, port_open, running_mock, spawn_mock_source, stop_process, wait_for

from sources.mock import RandomWalk, TradeQuotes, parse_start
from tickhub.wire import OPTIONAL_FIELDS, PRICE_RE, SSEParser, check_fields


def test_random_walk_rules() -> None:
    walk = RandomWalk("3.00", random.Random(1))
    prices, flips, previous_direction = [], 0, walk.direction
    for _ in range(20_000):
        before = walk.cents
        price = walk.step()
        prices.append(price)
        assert PRICE_RE.match(price) and price.split(".")[1].__len__() == 2
        assert walk.cents > 0, "never at or below zero"
        assert abs(walk.cents - before) % 100 == 0 and abs(walk.cents - before) <= 1000
        flips += walk.direction != previous_direction
        previous_direction = walk.direction
    assert 0.12 < flips / 20_000 < 0.22, "direction flips about 15% of the time (plus bounces off zero)"
    assert len(set(prices)) > 20


def test_each_step_is_a_trade_at_the_best_bid_or_ask_and_every_field_is_valid_on_the_wire() -> None:
    walk, quotes = RandomWalk("0.50", random.Random(1)), TradeQuotes(random.Random(2))
    sides = set()
    for n in range(1, 5001):
        before = walk.cents
        price = Decimal(walk.step())
        fields = quotes.fields("X", walk, before)
        checked = check_fields(fields)
        assert checked is not None and checked.as_dict() == fields and list(fields) == list(OPTIONAL_FIELDS)
        bid, ask = Decimal(fields["bid"]), Decimal(fields["ask"])
        assert 0 < bid < ask <= bid + Decimal("0.08"), "a spread of 1-8 cents, never at or below zero"
        assert price == (ask if fields["side"] == "buy" else bid), "a buyer lifts the ask, a seller hits the bid"
        if walk.cents < before:
            assert fields["side"] == "sell"
        elif walk.cents > before and walk.cents > 8:
            assert fields["side"] == "buy"
        assert fields["trade_id"] == str(n) and Decimal(fields["qty"]) > 0
        sides.add(fields["side"])
    assert sides == {"buy", "sell"}


async def test_a_seed_gives_the_same_prices_with_or_without_the_trade_and_quote_fields() -> None:
    ticks = {}
    for fields in ("all", "price"):
        port = free_port()
        extra = ("--limit", "300", "--seed", "5", "--fields", fields)
        proc = spawn_mock_source(port, symbols="BTCUSD,META", interval=0, extra=extra)
        try:
            await wait_for(lambda port=port: port_open(port), 20, "the source process")
            ticks[fields] = await read_events(f"http://127.0.0.1:{port}/stream", 300, last_event_id="0")
        finally:
            assert stop_process(proc) == 0
    assert [t["price"] for t in ticks["all"]] == [t["price"] for t in ticks["price"]]
    assert all(set(t) == {"source", "symbol", "price", "ts", "seq", *OPTIONAL_FIELDS} for t in ticks["all"])
    assert all(set(t) == {"source", "symbol", "price", "ts", "seq"} for t in ticks["price"])


def test_start_prices_default_and_override() -> None:
    assert parse_start("META=500.5", ["BTCUSD", "META", "NEW"]) == {
        "BTCUSD": "43000.00",
        "META": "500.5",
        "NEW": "100.00",
    }


async def read_events(url: str, n: int, last_event_id: str | None = None) -> list[dict]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    parser, out = SSEParser(), []
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                assert event.event == "tick"
                data = orjson.loads(event.data)
                assert str(data["seq"]) == event.id
                out.append(data)
            if len(out) >= n:
                return out[:n]
    raise AssertionError("stream ended early")


async def test_feed_resumes_after_last_event_id() -> None:
    started_us = time.time_ns() // 1000
    async with running_mock(("BTCUSD", "META"), interval=0.002) as source:
        first = await read_events(source.url, 20)
        assert first[0]["seq"] >= started_us, "seq starts at the current time in microseconds"
        seqs = [e["seq"] for e in first]
        assert seqs == list(range(seqs[0], seqs[0] + 20))
        await wait_for(lambda: source.feed.next_seq > seqs[-1] + 30, what="more events")
        resumed = await read_events(source.url, 30, str(seqs[-1]))
        assert [e["seq"] for e in resumed] == list(range(seqs[-1] + 1, seqs[-1] + 31))


async def test_feed_replays_what_it_still_holds_for_an_old_id() -> None:
    async with running_mock(("BTCUSD",), interval=0.001, ring_size=50) as source:
        await wait_for(lambda: source.feed.next_seq - source.feed.first_seq > 120, what="the ring to wrap")
        oldest = source.feed.oldest_seq
        events = await read_events(source.url, 10, str(source.feed.first_seq))
        assert events[0]["seq"] >= oldest


async def test_fast_mode_process_emits_exactly_the_limit_in_order() -> None:
    port = free_port()
    proc = spawn_mock_source(port, symbols="BTCUSD,META,TCSG", interval=0, extra=("--limit", "5000"))
    try:
        await wait_for(lambda: port_open(port), 20, "the source process")
        events = await read_events(f"http://127.0.0.1:{port}/stream", 5000, last_event_id="0")
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + 5000))
        assert {e["symbol"] for e in events} == {"BTCUSD", "META", "TCSG"}
    finally:
        assert stop_process(proc) == 0


async def count_ticks(url: str, n: int) -> int:
    """Read ``url`` until ``n`` tick events have arrived (counted in the raw bytes, fast)."""
    count, tail = 0, b""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        async for chunk in response.content.iter_any():
            data = tail + chunk
            end = data.rfind(b"\n\n") + 2
            count += data.count(b"\nevent: tick\n", 0, end)
            tail = data[end:]
            if count >= n:
                return count
    raise AssertionError(f"stream ended after {count} events")


async def test_a_consumer_that_stops_reading_is_dropped_and_does_not_hold_the_producer() -> None:
    # At --interval 0 the producer waits for its slowest consumer; one that never reads must not stop it.
    async with running_mock(("BTCUSD",), interval=0, ring_size=100_000, send_timeout=0.5) as source:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            stalled.connect(("127.0.0.1", source.port))
            stalled.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_for(lambda: source.feed.consumers == 1, what="the stalled consumer")
            reader = asyncio.ensure_future(count_ticks(source.url, 400_000))
            try:
                await wait_for(lambda: reader.done(), 20, "400k events past a consumer that stopped reading")
                assert reader.result() >= 400_000
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await wait_for(lambda: source.feed.consumers == 0, what="the stalled consumer to be dropped")
        finally:
            stalled.close()


async def test_sigterm_ends_every_stream_cleanly_and_exits_zero() -> None:
    port = free_port()
    proc = spawn_mock_source(port, interval=0.01)
    try:
        await wait_for(lambda: port_open(port), 20, "the source process")
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/stream") as response:
            parser, seen = SSEParser(), 0
            async with asyncio.timeout(10):
                async for chunk in response.content.iter_any():
                    seen += len(list(parser.feed(chunk)))
                    if seen >= 5 and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
            # the loop ends at the end of the body: a clean end of stream, not a reset
        assert seen >= 5
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and b"Traceback" not in err and b"ERROR" not in err
    finally:
        stop_process(proc)


def test_a_busy_port_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = spawn_mock_source(taken.getsockname()[1])
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    [line] = err.decode().splitlines()
    assert line.startswith("tickhub source mock: cannot serve on 127.0.0.1:") and "in use" in line
