"""A stateful test of the tick writer (hypothesis.stateful): random interleavings of ingest, PostgreSQL
outages, slow commits, rows PostgreSQL refuses, and restarts, against an in-memory store.

Invariants: while PostgreSQL is reachable nothing is dropped; the backlog never passes its bound;
every id ingested ends up exactly once either stored or in a recorded gap (dropped or refused), and
the recorded gaps outlive a restart. `make soak` runs many more examples.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import asyncpg
from helpers import wait_for
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tickhub.store import StoreUnavailable
from tickhub.wire import Tick
from tickhub.writer import CopyWriter

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
BASE = 7 * 10**12
POISON = "0"  # a price the fake PostgreSQL refuses, as the real one's check constraint does
SETTLE_TIMEOUT = 5.0


class FakeStore:
    """PostgreSQL as the writer sees it: it can be down, slow (commits wait on a gate) or refuse rows.
    A write is atomic: any refused row fails the whole batch, as one transaction does."""

    def __init__(self) -> None:
        self.up = True
        self.gate = asyncio.Event()
        self.gate.set()
        self.rows: dict[int, Tick] = {}
        self.gaps: dict[int, tuple[int, str]] = {}  # first id -> (last id, reason)
        self.rejected: dict[int, str] = {}
        self.writes_waiting = 0

    def _check_up(self) -> None:
        if not self.up:
            raise StoreUnavailable("connection refused")

    async def write_ticks(self, ticks: list[Tick]) -> None:
        self._check_up()
        self.writes_waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.writes_waiting -= 1
        self._check_up()
        if any(t.price == POISON for t in ticks):
            raise asyncpg.CheckViolationError('new row for relation "ticks" violates check constraint')
        for t in ticks:
            self.rows.setdefault(t.id, t)  # ON CONFLICT DO NOTHING

    async def record_gaps(self, gaps: list[tuple[int, int, str]]) -> None:
        self._check_up()
        for first, last, reason in gaps:
            known = self.gaps.get(first)
            self.gaps[first] = (max(last, known[0]) if known else last, reason)

    async def set_aside(self, refused: list[tuple[Tick, str]]) -> None:
        self._check_up()
        for tick, error in refused:
            self.rejected[tick.id] = error
            self.gaps[tick.id] = (tick.id, "rejected")

    def gap_ids(self) -> dict[int, str]:
        return {i: reason for first, (last, reason) in self.gaps.items() for i in range(first, last + 1)}


class WriterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = FakeStore()
        self.next_id = BASE + 1
        self.poisoned: set[int] = set()
        self.outage_seen = False
        self.writer: CopyWriter | None = None

    @initialize(high_water=st.integers(4, 40), batch=st.integers(1, 30))
    def start(self, high_water: int, batch: int) -> None:
        self.high_water = high_water
        self.batch = batch
        self.writer = self._new_writer()

    def _new_writer(self) -> CopyWriter:
        writer = CopyWriter(
            self.store,  # type: ignore[arg-type]
            batch=self.batch,
            flush_interval=0,
            backlog=2 * self.high_water,  # the smallest backlog the settings allow
            retry_min=0.001,
            retry_max=0.002,
            high_water=self.high_water,
        )
        self.loop.run_until_complete(self._start(writer))
        return writer

    @staticmethod
    async def _start(writer: CopyWriter) -> None:
        writer.start()

    def teardown(self) -> None:
        if self.writer is not None:
            self.store.gate.set()
            self.loop.run_until_complete(self.writer.close(1.0))
        self.loop.close()

    # -- running the writer until it has nothing it can do ---------------------------------------

    def settle(self) -> None:
        """Run the loop until the writer is idle, waiting on a slow commit, or failing against a store
        that is down: every state it can stay in without anything else happening."""
        writer, store = self.writer, self.store
        assert writer is not None

        def quiet() -> bool:
            if writer.backlog_size == 0:
                return True
            if not store.gate.is_set() and store.writes_waiting:
                return True
            return not store.up and writer.failing and writer.in_flight == 0

        self.loop.run_until_complete(wait_for(quiet, SETTLE_TIMEOUT, "the writer to settle"))

    # -- rules -------------------------------------------------------------------------------------

    @rule(n=st.integers(1, 40), poison=st.booleans())
    def ingest(self, n: int, poison: bool) -> None:
        """A source's chunk: read only while the writer has room (ingest pauses on it), then all of it."""
        writer = self.writer
        assert writer is not None
        if not writer.room.is_set():
            return
        n = min(n, self.high_water)  # a chunk is at most what ingest reads in one turn
        dropped, failing = writer.dropped, writer.failing
        for i in range(n):
            tick_id = self.next_id
            self.next_id += 1
            price = POISON if poison and i == n // 2 else "100.50"
            if price == POISON:
                self.poisoned.add(tick_id)
            writer.add(Tick(tick_id, "src", "BTCUSD", price, datetime(2026, 1, 1, tzinfo=UTC), tick_id - BASE))
        if not failing:  # only a writer whose last write failed may drop (PostgreSQL looks down to it)
            assert writer.dropped == dropped, "a tick was dropped while PostgreSQL was reachable"
        self.settle()

    @rule()
    def outage(self) -> None:
        self.store.up = False
        self.outage_seen = True
        self.settle()

    @rule()
    def recover(self) -> None:
        self.store.up = True
        self.settle()

    @rule()
    def slow_commits(self) -> None:
        self.store.gate.clear()
        self.settle()

    @rule()
    def commits_flow(self) -> None:
        self.store.gate.set()
        self.settle()

    @precondition(lambda self: self.store.up)
    @rule()
    def restart(self) -> None:
        """A graceful stop (the writer flushes what it can, records its gaps) and a fresh writer."""
        assert self.writer is not None
        self.store.gate.set()
        self.loop.run_until_complete(self.writer.close(2.0))
        self.check_accounted(final=True)
        self.writer = self._new_writer()

    # -- invariants ----------------------------------------------------------------------------------

    @invariant()
    def backlog_is_bounded(self) -> None:
        if self.writer is not None:
            assert self.writer.backlog_size <= self.writer.backlog

    @invariant()
    def nothing_is_dropped_without_an_outage(self) -> None:
        if self.writer is not None and not self.outage_seen:
            assert self.writer.dropped == 0

    @invariant()
    def stored_and_lost_are_apart(self) -> None:
        self.check_accounted(final=False)

    def check_accounted(self, final: bool) -> None:
        rows, gaps = self.store.rows, self.store.gap_ids()
        assert not rows.keys() & gaps.keys(), "an id is both stored and recorded lost"
        assert all(t.price != POISON for t in rows.values())
        assert set(self.store.rejected) <= self.poisoned
        assert all(gaps[i] == "rejected" for i in self.store.rejected)
        if final:  # after a graceful stop with PostgreSQL up: every id stored, or recorded lost
            issued = set(range(BASE + 1, self.next_id))
            assert rows.keys() | gaps.keys() == issued
            assert {i for i, reason in gaps.items() if reason == "rejected"} <= self.poisoned
            assert self.poisoned & issued <= gaps.keys(), "a refused tick is recorded lost (refused, or dropped first)"


WriterMachine.TestCase.settings = settings(
    max_examples=400 if SOAK else 40, stateful_step_count=40, deadline=None, database=None
)
test_writer_stateful = WriterMachine.TestCase
