"""TickRing and Fanout in isolation: coalescing, filters, stalled and slow subscribers."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from helpers import wait_for

from tickhub.fanout import Fanout, Subscriber, resync_frame
from tickhub.ring import TickRing
from tickhub.wire import SSEParser


def frame(i: int, symbol: str = "A") -> bytes:
    return b"id: %d\nevent: tick\ndata: %b-%d\n\n" % (i, symbol.encode(), i)


def test_ring_collect_across_the_wrap_and_with_a_filter() -> None:
    ring = TickRing(4)
    for i in range(1, 7):
        ring.append(i, "A" if i % 2 else "B", frame(i, "A" if i % 2 else "B"))
    assert (ring.start, ring.head, ring.first_id, ring.last_id) == (2, 6, 3, 6)
    assert ring.collect(2, 6) == b"".join(frame(i, "A" if i % 2 else "B") for i in range(3, 7))
    assert ring.collect(2, 6, {"B"}) == frame(4, "B") + frame(6, "B")
    with pytest.raises(IndexError):
        ring.collect(1, 6)


def test_ring_position_after_and_backlog() -> None:
    ring = TickRing(8)
    for tick_id in (10, 11, 12, 20, 21):
        ring.append(tick_id, "A", b"x" * 10)
    assert ring.position_after(9) == 0
    assert ring.position_after(12) == 3
    assert ring.position_after(15) == 3
    assert ring.position_after(21) == 5
    assert ring.backlog_bytes(3) == 20
    assert ring.backlog_bytes(5) == 0


class FakeClient:
    """A subscriber's transport: ``block()`` makes writes wait like a socket whose buffer is full."""

    def __init__(self, symbols: frozenset[str] | None = None) -> None:
        self.received = bytearray()
        self.writes = 0
        self.finished = False
        self.gate: asyncio.Future[None] | None = None
        self.sub = Subscriber(self.write, self.finish, symbols)

    def block(self) -> None:
        self.gate = asyncio.get_running_loop().create_future()

    def unblock(self) -> None:
        assert self.gate is not None
        self.gate.set_result(None)
        self.gate = None

    async def write(self, data: bytes) -> None:
        while self.gate is not None:
            await self.gate
        self.received += data
        self.writes += 1

    async def finish(self) -> None:
        self.finished = True

    def events(self) -> list[tuple[str, str, str | None]]:
        return [(e.event, e.data, e.id) for e in SSEParser().feed(bytes(self.received))]

    def tick_ids(self) -> list[int]:
        return [int(e[2]) for e in self.events() if e[0] == "tick"]


def snapshot(symbols: frozenset[str] | None) -> bytes:
    return b"event: snapshot\ndata: {}\n\n"


async def make_fanout(**options: object) -> Fanout:
    ring = TickRing(options.pop("capacity", 1024))  # type: ignore[arg-type]
    fanout = Fanout(ring, snapshot, **options)  # type: ignore[arg-type]
    fanout.start()
    return fanout


async def test_pending_frames_reach_each_subscriber_in_one_write() -> None:
    fanout = await make_fanout()
    clients = [FakeClient() for _ in range(50)]
    for c in clients:
        fanout.attach(c.sub, fanout.ring.head)
    for i in range(1, 101):
        fanout.publish(i, "A", frame(i))
    fanout.flush()
    for c in clients:
        assert c.writes == 1
        assert c.tick_ids() == list(range(1, 101))
    await fanout.close()


async def test_symbol_filter_delivers_only_requested_symbols() -> None:
    fanout = await make_fanout()
    only_b = FakeClient(frozenset({"B"}))
    everything = FakeClient()
    fanout.attach(only_b.sub, 0)
    fanout.attach(everything.sub, 0)
    for i in range(1, 11):
        fanout.publish(i, "A" if i % 2 else "B", frame(i, "A" if i % 2 else "B"))
    fanout.flush()
    assert only_b.tick_ids() == [2, 4, 6, 8, 10]
    assert everything.tick_ids() == list(range(1, 11))
    await fanout.close()


async def test_a_stalled_subscriber_does_not_hold_back_the_others() -> None:
    fanout = await make_fanout()
    fast, stalled = FakeClient(), FakeClient()
    fanout.attach(fast.sub, 0)
    fanout.attach(stalled.sub, 0)
    fanout.publish(1, "A", frame(1))
    fanout.flush()
    stalled.block()
    for i in range(2, 30):
        fanout.publish(i, "A", frame(i))
        fanout.flush()
        assert fast.tick_ids()[-1] == i  # delivered at once, every time
    assert stalled.tick_ids() == [1]
    assert fanout.busy_count == 1
    stalled.unblock()
    await wait_for(lambda: stalled.tick_ids() == list(range(1, 30)), 5, "the stalled subscriber to catch up")
    await wait_for(lambda: fanout.busy_count == 0, 5, "the subscriber to rejoin the flusher")
    fanout.publish(30, "A", frame(30))
    fanout.flush()
    assert stalled.tick_ids() == fast.tick_ids() == list(range(1, 31))
    await fanout.close()


async def test_subscriber_past_its_backlog_is_resynced_then_follows_live() -> None:
    fanout = await make_fanout(backlog_limit=500, max_overflows=3)
    slow = FakeClient()
    fanout.attach(slow.sub, 0)
    slow.block()
    for i in range(1, 40):  # ~40 bytes a frame: well past 500 bytes
        fanout.publish(i, "A", frame(i))
        fanout.flush()
    slow.unblock()
    await wait_for(lambda: any(e[0] == "snapshot" for e in slow.events()), 5, "a resync")
    await wait_for(lambda: fanout.busy_count == 0, 5, "the subscriber to rejoin")
    fanout.publish(40, "A", frame(40))
    fanout.flush()
    kinds = [e[0] for e in slow.events()]
    assert kinds[-3:] == ["resync", "snapshot", "tick"]
    assert slow.tick_ids()[-1] == 40
    assert fanout.resyncs == 1 and not slow.sub.closed.done()
    await fanout.close()


async def test_repeated_overflow_disconnects_the_subscriber_cleanly() -> None:
    fanout = await make_fanout(backlog_limit=100, max_overflows=1)
    slow = FakeClient()
    fanout.attach(slow.sub, 0)
    slow.block()
    fanout.publish(1, "A", frame(1))
    fanout.flush()  # this write blocks; what follows piles up behind it
    for i in range(2, 20):
        fanout.publish(i, "A", frame(i))
        fanout.flush()
    slow.unblock()
    assert await asyncio.wait_for(slow.sub.closed, 5) == "slow_consumer"
    assert slow.finished
    assert fanout.count == 0 and fanout.slow_disconnects == 1
    await fanout.close()


async def test_a_write_blocked_past_the_timeout_disconnects() -> None:
    fanout = await make_fanout(write_timeout=0.1)
    stuck, other = FakeClient(), FakeClient()
    fanout.attach(stuck.sub, 0)
    fanout.attach(other.sub, 0)
    stuck.block()
    fanout.publish(1, "A", frame(1))
    fanout.flush()
    assert await asyncio.wait_for(stuck.sub.closed, 5) == "write_timeout"
    assert fanout.count == 1
    fanout.publish(2, "A", frame(2))
    fanout.flush()
    assert other.tick_ids() == [1, 2]
    await fanout.close()


async def test_subscriber_whose_frames_left_the_ring_is_resynced() -> None:
    fanout = await make_fanout(capacity=8, backlog_limit=1 << 20)
    slow = FakeClient()
    fanout.attach(slow.sub, 0)
    slow.block()
    fanout.publish(1, "A", frame(1))
    fanout.flush()
    for i in range(2, 30):
        fanout.publish(i, "A", frame(i))
    slow.unblock()
    await wait_for(lambda: any(e[0] == "resync" for e in slow.events()), 5, "a resync")
    await fanout.close()


async def test_heartbeat_reaches_idle_subscribers() -> None:
    fanout = await make_fanout(heartbeat=0.05)
    client = FakeClient()
    fanout.attach(client.sub, 0)
    await wait_for(lambda: b": ping" in client.received, 5, "a heartbeat")
    await fanout.close()


async def test_close_finishes_every_stream() -> None:
    fanout = await make_fanout()
    idle, stalled = FakeClient(), FakeClient()
    fanout.attach(idle.sub, 0)
    fanout.attach(stalled.sub, 0)
    stalled.block()
    fanout.publish(1, "A", frame(1))
    fanout.flush()
    await fanout.close()
    assert idle.finished and idle.sub.closed.result() == "shutdown"
    assert stalled.sub.closed.result() == "shutdown"
    assert fanout.count == 0


async def test_a_flush_cut_into_slices_reaches_everyone_once_and_skips_who_left() -> None:
    ring = TickRing(1024)
    fanout = Fanout(ring, snapshot)  # not started: this test drives flush() itself
    clients = [FakeClient() for _ in range(300)]
    for c in clients:
        fanout.attach(c.sub, 0)
    fanout.publish(1, "A", frame(1))
    assert fanout.flush(budget=0) is False, "a zero budget stops after the first slice"
    assert fanout.count == 300, "subscribers waiting in the flush still count"
    written = [c for c in clients if c.writes]
    assert 0 < len(written) < 300
    leaver = next(c for c in clients if not c.writes)
    fanout.detach(leaver.sub)
    fanout.publish(2, "A", frame(2))  # arrives between slices: the next flush carries it
    while not fanout.flush(budget=0):
        pass
    assert leaver.writes == 0
    assert all(c.tick_ids() == [1] for c in clients if c is not leaver)
    assert fanout.flush() is True
    assert all(c.tick_ids() == [1, 2] for c in clients if c is not leaver)
    assert fanout.count == 299
    await fanout.close()


async def test_after_the_ring_loses_continuity_every_subscriber_resyncs_before_the_next_tick() -> None:
    """A replica that missed ticks clears its ring and resyncs everyone: nobody sees the jump as if
    it were continuous."""
    fanout = await make_fanout()
    clients = [FakeClient(), FakeClient(frozenset({"A"}))]
    for c in clients:
        fanout.attach(c.sub, fanout.ring.head)
    fanout.publish(1, "A", frame(1))
    fanout.publish(2, "A", frame(2))
    fanout.resync_all("history_unavailable")
    assert len(fanout.ring) == 0
    fanout.publish(9, "A", frame(9))
    fanout.flush()
    for c in clients:
        kinds = [(e[0], e[2]) for e in c.events()]
        assert kinds[:2] == [("tick", "1"), ("tick", "2")], "what came before the gap is delivered first"
        assert [k for k, _ in kinds[2:]] == ["resync", "snapshot", "tick"] and kinds[-1][1] == "9"
    assert fanout.resyncs == 2
    await fanout.close()


def assert_no_silent_gap(client: FakeClient, expected: list[int]) -> None:
    """Tick ids rise one by one from the first, except straight after a resync and its snapshot."""
    previous = None
    events = client.events()
    for i, (kind, _, event_id) in enumerate(events):
        if kind == "resync":
            assert events[i + 1][0] == "snapshot", "a resync is followed by a snapshot"
            previous = None
        elif kind == "tick":
            tick_id = int(event_id or 0)
            assert previous is None or tick_id == previous + 1, f"a silent gap after {previous}: {client.tick_ids()}"
            previous = tick_id
    assert previous == expected[-1]


async def test_a_heartbeat_after_a_sliced_flush_never_moves_a_blocked_subscriber_past_unsent_ticks() -> None:
    """A ping that blocks hands the subscriber to its catch-up task at the position it was written up
    to; subscribers left behind by a sliced flush must not be moved to the head."""
    fanout = Fanout(TickRing(64), snapshot)  # not started: the test drives flush and heartbeat itself
    fanout.slice_mask = 0  # a budgeted flush stops after each subscriber
    clients = [FakeClient() for _ in range(4)]
    for c in clients:
        fanout.attach(c.sub, 0)
    fanout.publish(1, "A", frame(1))
    assert fanout.flush(budget=0) is False, "the flush is cut after the first subscriber"
    for i in (2, 3, 4):  # arrive while the sliced flush is unfinished
        fanout.publish(i, "A", frame(i))
    behind = next(c for c in clients if c.writes)  # written tick 1: its next write is the ping
    behind.block()
    fanout.heartbeat_once()
    behind.unblock()
    await wait_for(lambda: fanout.busy_count == 0, 5, "the blocked subscriber to catch up and rejoin")
    fanout.publish(5, "A", frame(5))
    fanout.flush()
    for c in clients:
        assert_no_silent_gap(c, [1, 2, 3, 4, 5])
    assert fanout.count == 4
    await fanout.close()


def test_a_resync_echoes_at_most_64_characters_of_the_last_event_id() -> None:
    event = next(iter(SSEParser().feed(resync_frame("unknown_id", "9" * 10_000))))
    body = orjson.loads(event.data)
    assert body == {"reason": "unknown_id", "last_event_id": "9" * 64}
    short = next(iter(SSEParser().feed(resync_frame("unknown_id", "42"))))
    assert orjson.loads(short.data)["last_event_id"] == "42"


async def test_a_resync_of_everyone_during_a_sliced_flush_first_delivers_all_the_ring_held() -> None:
    fanout = Fanout(TickRing(64), snapshot)  # not started: the test drives the flushes itself
    fanout.slice_mask = 0
    clients = [FakeClient() for _ in range(3)]
    for c in clients:
        fanout.attach(c.sub, 0)
    fanout.publish(1, "A", frame(1))
    assert fanout.flush(budget=0) is False
    fanout.publish(2, "A", frame(2))  # after the cut: not in the flush in progress
    fanout.resync_all("history_unavailable")
    fanout.publish(9, "A", frame(9))
    fanout.flush()
    for c in clients:
        assert [(e[0], e[2]) for e in c.events()] == [
            ("tick", "1"),
            ("tick", "2"),
            ("resync", "2"),
            ("snapshot", "2"),
            ("tick", "9"),
        ]
    await fanout.close()


async def test_a_subscriber_blocked_when_everyone_is_resynced_gets_its_resync_too() -> None:
    """Its write in flight had reached the head; what follows the resync is not continuous with it."""
    fanout = Fanout(TickRing(64), snapshot, max_overflows=1)  # one overflow would disconnect it
    blocked = FakeClient()
    fanout.attach(blocked.sub, 0)
    blocked.block()
    fanout.publish(1, "A", frame(1))
    fanout.flush()  # the write of tick 1 blocks: the subscriber is handed to its own task
    assert fanout.busy_count == 1
    fanout.resync_all("history_unavailable")
    fanout.publish(9, "A", frame(9))  # still blocked: conflated into the snapshot, as for any slow subscriber
    blocked.unblock()
    await wait_for(lambda: fanout.busy_count == 0, 5, "the blocked subscriber to catch up and rejoin")
    fanout.publish(10, "A", frame(10))
    fanout.flush()
    assert [e[0] for e in blocked.events()] == ["tick", "resync", "snapshot", "tick"]
    assert blocked.tick_ids() == [1, 10]
    assert not blocked.sub.closed.done(), "a resync of everyone is no overflow of its own"
    await fanout.close()
