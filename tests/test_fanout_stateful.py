"""Fanout and TickRing under random interleavings: no subscriber ever skips a tick without a resync.

A hypothesis state machine publishes, flushes (whole and in slices), pings, blocks and fails writes,
attaches (live, resuming, at an evicted position), detaches and resyncs everyone, on a private event
loop it steps by hand. Every write is checked when it is handed over: its ticks must continue exactly where
the subscriber's previous ones stopped (among its symbols), or follow a ``resync`` and a snapshot.
``TICKHUB_SOAK=1`` (``make soak``) runs many more and longer sequences; ``TICKHUB_FANOUT_EXAMPLES``
sets how many.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tickhub.fanout import Fanout, Subscriber
from tickhub.ring import TickRing
from tickhub.wire import SSEParser, comment_frame, retry_frame

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
SYMBOLS = ("A", "B", "C")
FILTERS = (None, frozenset({"A"}), frozenset({"B", "C"}))
SNAPSHOT = b"event: snapshot\ndata: {}\n\n"
#: A flush budget already spent: the flush stops at its first look at the clock, in every run alike.
SLICE = -1.0
#: Which of a subscriber's writes block (its socket is full) until the test unblocks it.
STALLS = st.frozensets(st.integers(1, 16), max_size=3)


class Market:
    """What was published: the symbol at each ring position, ids to positions, and the positions after
    which the stream lost continuity (``resync_all``)."""

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.position: dict[int, int] = {}
        self.breaks: list[int] = []

    def owed(self, low: int, high: int, wanted: frozenset[str] | None) -> list[int]:
        """Positions in [low, high) a subscriber of ``wanted`` should have been sent."""
        return [p for p in range(low, high) if wanted is None or self.symbols[p] in wanted]

    def crosses_a_break(self, low: int, high: int) -> bool:
        return any(low < b <= high for b in self.breaks)


class OrderedSubscriber(Subscriber):
    """Hashes by creation order, so the fan-out's sets iterate alike in every run (hypothesis replays
    a sequence and expects the same outcome; identity hashes differ from run to run)."""

    def __init__(self, number: int, *args: Any) -> None:
        super().__init__(*args)
        self.number = number

    def __hash__(self) -> int:
        return self.number


class FakeCycle:
    """What the fan-out writes to directly (uvicorn's request cycle): a transport whose ``write`` never
    blocks, and flow control that reports the socket full (``write_paused``) once a stall begins; a
    paused connection is written through the ASGI path instead, which waits."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.flow = self
        self.transport = self
        self.disconnected = False

    @property
    def write_paused(self) -> bool:
        return self.client.gate is not None or self.client.in_flight > 0

    def write(self, framed: bytes) -> None:
        client = self.client
        assert not client.failed and client.in_flight == 0, f"{client.name}: a direct write while one is in flight"
        size, sep, rest = framed.partition(b"\r\n")
        assert sep and rest.endswith(b"\r\n") and int(size, 16) == len(rest) - 2, f"{client.name}: bad chunk"
        client.writes += 1
        client.check(rest[:-2])
        if client.writes in client.stalls and client.gate is None:
            client.gate = asyncio.get_running_loop().create_future()  # the socket is full from now on


class Client:
    """A subscriber's transport that checks each write as it is handed over, then may block or fail."""

    def __init__(
        self,
        machine: FanoutMachine,
        symbols: frozenset[str] | None,
        start: int,
        name: str,
        stalls: frozenset[int],
        direct: bool = False,
    ) -> None:
        self.machine = machine
        self.stalls = stalls  # which of its writes (1, 2, ...) find the socket full and block
        self.name = name
        self.symbols = symbols
        self.sub = OrderedSubscriber(len(machine.clients), self.write, self.finish, symbols)
        self.parser = SSEParser()
        self.next = start  # its next tick must be the first of its symbols at or after this position
        self.fresh = True  # a snapshot may open the stream
        self.awaiting_snapshot = False
        self.gate: asyncio.Future[None] | None = None
        self.in_flight = 0
        self.fail_next = False
        self.failed = False
        self.left = False  # detached by the test
        self.writes = 0
        self.direct = direct
        if direct:  # written to directly while its socket has room, through the ASGI path when full
            self.sub.direct = FakeCycle(self)

    @property
    def live(self) -> bool:
        return not self.left and not self.sub.closed.done()

    async def write(self, data: bytes) -> None:
        assert self.in_flight == 0, f"{self.name}: a write started while another is in flight"
        assert not self.failed, f"{self.name}: written after a write failed"
        if self.fail_next:
            self.fail_next = False
            self.failed = True
            raise OSError("connection reset")
        self.writes += 1
        self.check(data)
        if self.writes in self.stalls and self.gate is None:
            self.gate = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        try:
            while self.gate is not None:
                await self.gate
        except BaseException:
            self.failed = True
            raise
        finally:
            self.in_flight -= 1

    async def finish(self) -> None:
        pass

    def check(self, data: bytes) -> None:
        market, ring = self.machine.market, self.machine.fanout.ring
        for event in self.parser.feed(data):
            if event.event == "tick":
                assert not self.awaiting_snapshot, f"{self.name}: a tick between a resync and its snapshot"
                position = market.position[int(event.id or "")]
                assert position >= self.next, f"{self.name}: tick at {position} again or out of order"
                missed = market.owed(self.next, position, self.symbols)
                assert not missed, f"{self.name}: silent gap, positions {missed} never sent before {position}"
                assert not market.crosses_a_break(self.next, position), f"{self.name}: crossed a resync_all"
                self.next = position + 1
            elif event.event == "resync":
                assert not self.awaiting_snapshot, f"{self.name}: two resyncs without a snapshot"
                self.awaiting_snapshot = True
                self.next = ring.head  # a resync starts the subscriber again from the head
            elif event.event == "snapshot":
                assert self.fresh or self.awaiting_snapshot, f"{self.name}: a snapshot without a resync"
                self.awaiting_snapshot = False
            else:
                raise AssertionError(f"{self.name}: unexpected event {event.event!r}")
            self.fresh = False

    def check_written_up_to(self, cursor: int) -> None:
        """The fan-out holds this subscriber as written up to ``cursor``: nothing before it is owed,
        and if the stream lost continuity in between, a resync is due to it."""
        market = self.machine.market
        assert self.next <= cursor, f"{self.name}: held at {cursor}, behind what it was sent ({self.next})"
        missed = market.owed(self.next, cursor, self.symbols)
        assert not missed, f"{self.name}: held at {cursor} but positions {missed} were never handed to it"
        if self.sub.resync is None:
            assert not market.crosses_a_break(self.next, cursor), f"{self.name}: held past a resync_all"


class FanoutMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.market = Market()
        self.clients: list[Client] = []
        self.fanout: Fanout = None  # type: ignore[assignment]
        self.next_id = 100

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` inside the private loop (subscribers and tasks need a running loop)."""

        async def step() -> Any:
            return fn(*args)

        return self.loop.run_until_complete(step())

    def settle(self) -> None:
        """Run the loop until nothing moves: every task is done or waits on a gate the test holds."""

        async def turns() -> None:
            for _ in range(8):
                await asyncio.sleep(0)

        before = None
        for _ in range(1000):
            now = (
                tuple((c.writes, c.in_flight, c.sub.closed.done()) for c in self.clients),
                self.fanout.busy_count,
                self.fanout.writes,
            )
            if now == before:
                return
            before = now
            self.loop.run_until_complete(turns())
        raise AssertionError("the event loop never went idle")

    def pick(self, index: int, live: bool = True) -> Client | None:
        candidates = [c for c in self.clients if c.live] if live else self.clients
        return candidates[index % len(candidates)] if candidates else None

    @initialize(
        capacity=st.sampled_from([16, 32, 64]),
        backlog=st.sampled_from([200, 600, 1 << 20]),
        mask=st.sampled_from([0, 1, 3]),
        overflows=st.sampled_from([10**6, 2]),  # enough that subscribers survive, or few: disconnects
        subscribers=st.lists(st.tuples(st.sampled_from(FILTERS), STALLS, st.booleans()), min_size=1, max_size=16),
    )
    def start(
        self,
        capacity: int,
        backlog: int,
        mask: int,
        overflows: int,
        subscribers: list[tuple[frozenset[str] | None, frozenset[int], bool]],
    ) -> None:
        def make() -> Fanout:
            fanout = Fanout(TickRing(capacity), lambda symbols: SNAPSHOT, backlog, overflows, 3600.0)
            fanout.slice_mask = mask  # a sliced flush stops after every 1, 2 or 4 subscribers
            return fanout

        self.fanout = self.run(make)
        for symbols, stalls, direct in subscribers:
            self.attach("live", symbols, 0, stalls, direct)

    # -- the market ----------------------------------------------------------------------------

    @rule(
        symbols=st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=12),
        id_steps=st.integers(1, 3),
        then_a_slice=st.booleans(),
        gap=st.integers(0, 7),
    )
    def publish(self, symbols: list[str], id_steps: int, then_a_slice: bool, gap: int) -> None:
        """Ticks from ingest; ``then_a_slice``: the flusher, woken, runs its first slice at once;
        ``gap`` 0 (one time in eight): ingest found ticks missing before these, so everyone resyncs."""
        if gap == 0:
            self.market.breaks.append(self.fanout.ring.head)
            self.run(self.fanout.resync_all, "history_unavailable")
        for symbol in symbols:
            self.next_id += id_steps
            self.market.position[self.next_id] = len(self.market.symbols)
            self.market.symbols.append(symbol)
            frame = b"id: %d\nevent: tick\ndata: %b\n\n" % (self.next_id, symbol.encode())
            self.run(self.fanout.publish, self.next_id, symbol, frame)
        if then_a_slice:
            self.run(self.fanout.flush, SLICE)

    # -- the fan-out's own steps ---------------------------------------------------------------

    @rule(sliced=st.booleans())
    def flush(self, sliced: bool) -> None:
        """A whole flush, or one slice of it (it stops after the first 1, 2 or 4 writes)."""
        self.run(self.fanout.flush, SLICE if sliced else None)

    @rule()
    def heartbeat(self) -> None:
        self.run(self.fanout.heartbeat_once)

    @rule()
    def let_the_loop_run(self) -> None:
        self.settle()

    # -- subscribers ---------------------------------------------------------------------------

    @rule(
        how=st.sampled_from(["live", "resume", "past"]),
        symbols=st.sampled_from(FILTERS),
        back=st.integers(0, 160),
        stalls=STALLS,
        direct=st.booleans(),
    )
    def attach(self, how: str, symbols: frozenset[str] | None, back: int, stalls: frozenset[int], direct: bool) -> None:
        """A new subscriber: ``live``, a fresh connection (a snapshot, then live from the head);
        ``resume``, a resume the ring still covers (the missed ticks as a prelude, then live from the
        head); ``past``, attached at an older position, perhaps one the ring has evicted (a resync)."""
        ring = self.fanout.ring
        head = ring.head
        if how == "live":
            start, cursor, prelude = head, head, retry_frame(1000) + SNAPSHOT
        elif how == "resume":
            start = cursor = max(ring.start, head - back)
            prelude, cursor = retry_frame(1000) + ring.collect(start, head, symbols), head
        else:
            start = cursor = max(0, head - back)
            prelude = comment_frame("hello")
        client = self.run(Client, self, symbols, start, f"{how}#{len(self.clients)}", stalls, direct)
        self.clients.append(client)
        self.run(self.fanout.attach, client.sub, cursor, prelude)

    @precondition(lambda self: any(c.live for c in self.clients))
    @rule(index=st.integers(0, 1000), how=st.sampled_from(["detach", "reset"]))
    def leave(self, index: int, how: str) -> None:
        """``detach``: its handler ended (the client went away); ``reset``: its next write fails."""
        client = self.pick(index)
        assert client is not None
        if how == "reset" and not client.direct:  # a direct write cannot fail: the connection is just gone
            client.fail_next = True
            return
        client.left = True
        self.run(self.fanout.detach, client.sub)

    @precondition(lambda self: any(c.live and c.gate is None for c in self.clients))
    @rule(index=st.integers(0, 1000))
    def block(self, index: int) -> None:
        client = self.pick(index)
        assert client is not None
        if client.gate is None:
            client.gate = self.loop.create_future()

    @precondition(lambda self: any(c.gate is not None for c in self.clients))
    @rule(index=st.integers(0, 1000), fail=st.booleans())
    def unblock(self, index: int, fail: bool) -> None:
        """Let the blocked writes go on, or make the one in flight fail (the client went away)."""
        blocked = [c for c in self.clients if c.gate is not None]
        client = blocked[index % len(blocked)]
        gate, client.gate = client.gate, None
        assert gate is not None
        if gate.done():  # cancelled with the write that waited on it
            return
        if fail:
            gate.set_exception(OSError("connection reset"))
            gate.exception()  # retrieved: no warning when nothing was waiting on it
        else:
            gate.set_result(None)

    # -- what must hold after every step -------------------------------------------------------

    @invariant()
    def every_subscriber_is_held_once_and_never_past_what_it_was_sent(self) -> None:
        fanout = self.fanout
        if fanout is None:
            return
        places: dict[Subscriber, list[str]] = {}
        for cursor, by_filter in fanout._idle.items():
            for subs in by_filter.values():
                for sub in subs:
                    places.setdefault(sub, []).append(f"idle@{cursor}")
        for batch in fanout._work:
            for sub in batch.subs:
                if not sub.detached:
                    places.setdefault(sub, []).append("in a sliced flush")
        for sub in fanout._busy:
            places.setdefault(sub, []).append("busy")
        live = [c for c in self.clients if c.live]
        for client in self.clients:
            where = places.get(client.sub, [])
            if not client.live:
                assert not where, f"{client.name} is gone but still held: {where}"
                continue
            assert len(where) == 1, f"{client.name} held in {where}"
            if where[0].startswith("idle@"):
                client.check_written_up_to(int(where[0][5:]))
            elif where[0] == "busy":
                client.check_written_up_to(client.sub.cursor)
        assert fanout.count == len(live)

    def teardown(self) -> None:
        try:
            if self.fanout is not None:
                self.drain_and_check()
        finally:  # after a failure, tasks may be left: end them before the loop goes
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def drain_and_check(self) -> None:
        """Unblock everyone and let the fan-out finish: every live subscriber ends at the head."""
        for client in self.clients:
            client.fail_next = False
            client.stalls = frozenset()
            if client.gate is not None and not client.gate.done():
                client.gate.set_result(None)
            client.gate = None
        fanout = self.fanout
        for _ in range(100):
            self.settle()
            self.run(fanout.flush)
            self.settle()
            if not fanout.busy_count and not fanout._work and set(fanout._idle) <= {fanout.ring.head}:
                break
        else:
            raise AssertionError("the fan-out never caught up")
        head = fanout.ring.head
        for client in self.clients:
            if not client.live:
                continue
            assert not client.awaiting_snapshot, f"{client.name}: a resync without its snapshot"
            client.check_written_up_to(head)
        assert fanout.count == sum(c.live for c in self.clients)
        self.loop.run_until_complete(fanout.close())
        assert all(c.sub.closed.done() for c in self.clients if not c.left)


def test_no_subscriber_ever_skips_a_tick_without_a_resync() -> None:
    run_state_machine_as_test(
        FanoutMachine,
        settings=settings(
            max_examples=int(os.environ.get("TICKHUB_FANOUT_EXAMPLES", 1000 if SOAK else 200)),
            stateful_step_count=100 if SOAK else 50,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
