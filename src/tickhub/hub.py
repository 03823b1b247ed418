"""Hub: owns every long-lived part of one hub process, started and stopped in order.

Start: store (pool, migrations) → run number → market (and composite venues) from history →
ring, fan-out, writer → composites → ingest. Stop is the reverse: ingest first (no new ticks),
then the streams (each subscriber gets everything ingested, then a clean end), then the writer's
final flush, then the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

from .accounts import Accounts
from .composite import CompositeBook, Route
from .config import Settings
from .fanout import Fanout
from .gate import SerialGate
from .ingest import Ingest
from .instruments import COMPOSITE_SOURCE, load_instruments
from .market import Market
from .metrics import HubMetrics
from .ring import TickRing
from .sequencer import Sequencer
from .store import Store
from .tasks import TaskQueue
from .wire import SourceTick, Tick, tick_frame
from .writer import CopyWriter

log = logging.getLogger("tickhub.hub")


class Hub:
    def __init__(self, settings: Settings) -> None:
        if not settings.database_url:
            raise ValueError("Hub needs settings.database_url (the CLI starts an embedded database if unset)")
        self.settings = settings
        self.market = Market()
        self.ring = TickRing(settings.ring_size)
        self.started_at = time.time()
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._streams: Counter[str] = Counter()  # open /stream connections per client address
        self.store: Store
        self.writer: CopyWriter
        self.fanout: Fanout
        self.sequencer: Sequencer
        self.ingest: Ingest
        self.gate: SerialGate
        self.accounts: Accounts
        self.tasks: TaskQueue
        self.composite: CompositeBook
        self._composite_routes: dict[str, tuple[Route, ...]] = {}

    async def start(self) -> None:
        s = self.settings
        instruments = load_instruments(s.instruments)
        self.store = await Store.open(s.database_url or "", s.database_schema, s.db_pool_size, s.db_timeout)
        try:
            run = await self.store.new_run()
            last_seqs = await self.store.last_seqs([name for name, _ in s.sources] + [COMPOSITE_SOURCE])
            latest = await self.store.latest()
            self.market.load(latest)
        except BaseException:
            await self.store.close()
            raise
        self.metrics = HubMetrics(self)
        self.writer = CopyWriter(
            self.store,
            s.writer_batch,
            s.writer_flush_interval,
            s.writer_backlog,
            s.reconnect_min,
            s.reconnect_max,
            on_batch=self.metrics.observe_batch,
            high_water=s.writer_high_water,
        )
        self.fanout = Fanout(
            self.ring,
            self.market.snapshot_frame,
            backlog_limit=s.subscriber_backlog,
            max_overflows=s.slow_overflows,
            write_timeout=s.slow_timeout,
            heartbeat=s.heartbeat,
        )
        self.sequencer = Sequencer(run, last_seqs, self._on_tick)
        self.composite = CompositeBook(
            instruments,
            s.composite_window,
            s.composite_max_deviation,
            self._publish_composite,
            last_seq=last_seqs[COMPOSITE_SOURCE],
        )
        self.composite.seed(latest)
        self._composite_routes = self.composite.routes
        #: Every tick from this id on passes through the ring; older ones come from PostgreSQL.
        self.ring_floor_id = self.sequencer.next_id
        self.ingest = Ingest(
            s.sources,
            self.sequencer,
            stale_timeout=s.source_stale_timeout,
            connect_timeout=s.source_connect_timeout,
            reconnect_min=s.reconnect_min,
            reconnect_max=s.reconnect_max,
            max_line=s.source_max_line,
            room=self.writer.room,
        )
        self.accounts = Accounts(self.store)
        self.gate = SerialGate(s.test_lock, self.store)
        self.tasks = TaskQueue(self.store, s.task_queue_max, retry_max=s.reconnect_max)
        self.writer.start()
        self.fanout.start()
        self.ingest.start()
        if s.task_worker:
            self.tasks.start()
        else:
            self.tasks.state = "off (TICKHUB_TASK_WORKER)"
        log.info("hub run %d started with %d sources", run, len(s.sources))

    def _on_tick(self, tick: Tick) -> None:
        """Where each sequenced tick goes: latest prices, the ring (and so every subscriber), the writer,
        then the composite of each instrument its symbol prices (one dict lookup when none)."""
        self.market.update(tick)
        self.fanout.publish(tick.id, tick.symbol, tick_frame(tick.id, tick.json))
        self.writer.add(tick)
        routes = self._composite_routes.get(tick.symbol)
        if routes is not None:
            self.composite.on_tick(tick, routes)

    def _publish_composite(self, tick: SourceTick) -> None:
        """A new composite enters the stream like any source's tick: an id, then :meth:`_on_tick`."""
        self.sequencer.accept(COMPOSITE_SOURCE, tick)

    def streams_opened(self, client: str) -> bool:
        """Count a new stream of ``client``; False (and not counted) past the per-client cap."""
        if self._streams[client] >= self.settings.max_streams_per_client:
            return False
        self._streams[client] += 1
        return True

    def streams_closed(self, client: str) -> None:
        self._streams[client] -= 1
        if self._streams[client] <= 0:
            del self._streams[client]

    @property
    def run(self) -> int:
        return self.sequencer.run

    def begin_drain(self) -> None:
        """Start stopping (safe to call from a signal handler's callback, and more than once)."""
        if self._drain_task is None:
            self.draining = True
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="tickhub-drain")

    async def _drain(self) -> None:
        await self.tasks.stop()
        await self.ingest.stop()
        await self.fanout.close(timeout=self.settings.shutdown_timeout / 2)

    async def stop(self) -> None:
        self.begin_drain()
        assert self._drain_task is not None
        with contextlib.suppress(Exception):
            await self._drain_task
        await self.writer.close(timeout=self.settings.shutdown_timeout)
        await self.store.close()
        log.info("hub run %d stopped: %d ticks written, %d dropped", self.run, self.writer.written, self.writer.dropped)

    def health(self) -> dict[str, Any]:
        writer = self.writer
        sources = self.ingest.health()
        degraded = writer.failing or any(v["state"] != "connected" for v in sources.values())
        return {
            "status": "draining" if self.draining else ("degraded" if degraded else "ok"),
            "run": self.run,
            "uptime_s": round(time.time() - self.started_at, 3),
            "last_id": str(self.market.last_id) if self.market.last_id is not None else None,
            "sources": sources,
            "writer": {
                "backlog": writer.backlog_size,
                "written": writer.written,
                "batches": writer.batches,
                "dropped": writer.dropped,
                "failing": writer.failing,
                "ingest_paused": not writer.room.is_set(),
                "pauses": writer.pauses,
                "errors": writer.errors,
                "last_error": writer.last_error,
                "last_batch_size": writer.last_batch_size,
                "last_batch_ms": round(writer.last_batch_seconds * 1000, 3),
                "persisted_id": str(writer.persisted_id) if writer.persisted_id else None,
            },
            "composite": self.composite.health(),
            "tasks": {"worker": self.tasks.state, "running": self.tasks.running, "completed": self.tasks.completed},
            "test_lock": {"mode": self.gate.mode, "waiting": self.gate.waiting, "turns": self.gate.turns},
            "stream": {
                "subscribers": self.fanout.count,
                "blocked": self.fanout.busy_count,
                "resyncs": self.fanout.resyncs,
                "slow_disconnects": self.fanout.slow_disconnects,
                "ring_ticks": len(self.ring),
                "ring_capacity": self.ring.capacity,
            },
        }
