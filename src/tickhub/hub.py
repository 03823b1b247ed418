"""Hub: owns every long-lived part of one hub replica, started and stopped in order.

The data path: the replica that holds the ingest lease (always this one with ``memory://``) reads
the sources; the sequencer gives each tick its id; the outbox appends ticks to the broker's log.
Every replica is handed every appended tick in id order (:meth:`Hub._deliver`): latest prices, the
ring and so every subscriber, the composites. Each tick is also handed to one replica's writer,
which persists it and tells the broker.

Start: store (pool, migrations) → market and composite venues from history → broker → writer,
fan-out, composites → delivery and the writer's feed from the broker → the ingest lease (ingest
starts on this replica if it gets it). Stop is the reverse: ingest first (no new ticks), what is
sequenced goes into the log and the lease is handed on, then the streams (each subscriber gets
everything delivered, then a clean end), then the writer's final flush, the broker, the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .accounts import Accounts
from .broker import Broker, open_broker
from .composite import CompositeBook, Route
from .config import Settings
from .fanout import Fanout
from .gate import SerialGate
from .ingest import Ingest
from .instruments import COMPOSITE_SOURCE, load_instruments
from .lease import IngestLease
from .market import Market
from .metrics import HubMetrics
from .outbox import Outbox
from .partitions import PartitionKeeper
from .ring import TickRing
from .sequencer import Sequencer, run_of
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
        #: This replica's name: its lease token and its writer's name in the broker.
        self.hub_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.market = Market()
        self.ring = TickRing(settings.ring_size)
        self.started_at = time.time()
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._streams: Counter[str] = Counter()  # open /stream connections per client address
        self.store: Store
        self.broker: Broker
        self.writer: CopyWriter
        self.fanout: Fanout
        self.lease: IngestLease
        #: Only while this replica holds the ingest lease.
        self.sequencer: Sequencer | None = None
        self.ingest: Ingest | None = None
        self.gate: SerialGate
        self.accounts: Accounts
        self.tasks: TaskQueue
        self.composite: CompositeBook
        self._composite_routes: dict[str, tuple[Route, ...]] = {}
        self.outbox: Outbox
        self.partitions: PartitionKeeper
        self._delivered = asyncio.Event()  # set on each delivery, for a resume that waits to catch up
        #: Ticks replayed to resuming subscribers, by where they came from: ring, log, postgres.
        self.replayed: Counter[str] = Counter()
        self.run = 0  # the run of the newest id this replica issued or was handed

    async def start(self) -> None:
        s = self.settings
        instruments = load_instruments(s.instruments)
        self.store = await Store.open(s.database_url or "", s.database_schema, s.db_pool_size, s.db_timeout)
        try:
            latest = await self.store.latest()
            self.market.load(latest)
            self.broker = open_broker(
                s.broker_url,
                s.database_schema,
                s.stream_retention,
                s.broker_claim_after,
                wal_dir=Path(s.data_dir, "wal") if s.wal else None,
                wal_fsync=s.wal_fsync == "batch",
            )
            await self.broker.connect()
            # What a crashed predecessor streamed and PostgreSQL lacks comes back with its ids: the
            # subscription below hands it to the ring and the writer like any new tick.
            restored = await self.broker.restore(self.market.last_id or 0)
            if restored:
                log.warning("restored %d ticks from the write-ahead log that PostgreSQL did not have", restored)
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
            pause_when_failing=not self.broker.local,
            released=self._released,
        )
        self.fanout = Fanout(
            self.ring,
            self.market.snapshot_frame,
            backlog_limit=s.subscriber_backlog,
            max_overflows=s.slow_overflows,
            write_timeout=s.slow_timeout,
            heartbeat=s.heartbeat,
        )
        self.composite = CompositeBook(
            instruments,
            s.composite_window,
            s.composite_max_deviation,
            self._publish_composite,  # its seq floor is set when this replica starts ingesting
        )
        self.composite.seed(latest)
        self._composite_routes = self.composite.routes
        after = self.market.last_id or 0  # the newest persisted tick: the log hands over every newer one
        #: Every tick above this id passes through the ring; older ones come from the log or PostgreSQL.
        self.ring_floor_id = after + 1
        self.run = run_of(after)
        self.accounts = Accounts(self.store)
        self.gate = SerialGate(s.test_lock, self.store)
        self.tasks = TaskQueue(self.store, s.task_queue_max, retry_max=s.reconnect_max)
        self.lease = IngestLease(
            self.broker, self.hub_id, s.lease_ttl, self._start_ingest, self._stop_ingest, self.broker.trim
        )
        lease = self.lease
        self.outbox = Outbox(
            self.broker, lambda: lease.token, s.writer_high_water, lease.lost, s.reconnect_min, s.reconnect_max
        )
        self.partitions = PartitionKeeper(self.store.pool, s.retention, rollup_retention=s.rollup_retention)
        await self.partitions.round()  # today's partitions before the first write; then every minute
        self.partitions.start()
        self.writer.start()
        self.fanout.start()
        await self.broker.subscribe(self._deliver, after, self._gap)
        await self.broker.feed_writer(self.hub_id, self._to_writer, self.writer.room)
        self.outbox.start()
        await self.lease.try_acquire()
        self.lease.start()
        if s.task_worker:
            self.tasks.start()
        else:
            self.tasks.state = "off (TICKHUB_TASK_WORKER)"
        log.info("hub %s started (%s, %s)", self.hub_id, self.broker.scheme, self.role)

    @property
    def role(self) -> str:
        return "ingesting" if self.sequencer is not None else "standby"

    # -- ingest: only on the lease holder ----------------------------------------------------------

    async def _start_ingest(self) -> None:
        """This replica got the lease: resume every source after the newest seq in the log or stored."""
        s = self.settings
        seqs = await self.store.last_seqs([name for name, _ in s.sources] + [COMPOSITE_SOURCE])
        for source, seq in (await self.broker.last_seqs()).items():
            seqs[source] = max(seqs.get(source, 0), seq)
        run = await self.store.new_run()
        self.run = run
        self.sequencer = Sequencer(run, seqs, self.outbox.add)
        # Composites follow the source contract: the first run starts at the time in microseconds, later
        # ones right after the last composite in the log or PostgreSQL (none issued after it reached a
        # subscriber); then +1 each, so a consumer sees a gap in composite as in any source.
        self.composite.last_seq = seqs.get(COMPOSITE_SOURCE) or time.time_ns() // 1000
        # One process: the writer's queue is fed inside append, so its high water also gates ingest.
        rooms = (self.outbox.room, self.writer.room) if self.broker.local else (self.outbox.room,)
        self.ingest = Ingest(
            s.sources,
            self.sequencer,
            stale_timeout=s.source_stale_timeout,
            connect_timeout=s.source_connect_timeout,
            reconnect_min=s.reconnect_min,
            reconnect_max=s.reconnect_max,
            max_line=s.source_max_line,
            rooms=rooms,
            reserved=frozenset(self.composite.books),  # a source cannot speak for an instrument
        )
        self.ingest.start()
        log.info("hub run %d ingesting %d sources", run, len(s.sources))

    async def _stop_ingest(self) -> None:
        ingest, self.ingest, self.sequencer = self.ingest, None, None
        if ingest is not None:
            await ingest.stop()
        self.outbox.clear()

    # -- delivery: on every replica ----------------------------------------------------------------

    def _deliver(self, ticks: list[Tick]) -> None:
        """Ticks from the log, in id order: latest prices, the ring (and so every subscriber), then
        the composite of each instrument the batch moved, once (one dict lookup per tick when none)."""
        market, publish, routes_of = self.market, self.fanout.publish, self._composite_routes.get
        touch = self.composite.touch
        for tick in ticks:
            market.update(tick)
            publish(tick.id, tick.symbol, tick_frame(tick.id, tick.json))
            routes = routes_of(tick.symbol)
            if routes is not None:
                touch(tick, routes)
        self.composite.settle()  # each instrument the batch moved, once
        if not self.sequencer:
            self.run = max(self.run, run_of(ticks[-1].id))
        self._delivered.set()
        self._delivered.clear()

    def _gap(self, after: int, resume: int) -> None:
        """The log let go of ticks after ``after`` before this replica read them (it was cut off for
        longer than the retention): its subscribers resync; resumes across the gap use PostgreSQL."""
        log.warning(
            "missed the log's ticks from id %d to %d: resyncing %d subscribers", after, resume, self.fanout.count
        )
        self.ring_floor_id = resume + 1
        self.fanout.resync_all("history_unavailable")

    def _to_writer(self, ticks: list[Tick]) -> None:
        add = self.writer.add
        for tick in ticks:
            add(tick)

    async def _released(self, ticks: list[Tick]) -> None:
        await self.broker.written(self.hub_id, ticks)

    def _publish_composite(self, tick: SourceTick) -> None:
        """A new composite enters the log like any source's tick; only the ingesting replica publishes."""
        if self.sequencer is not None:
            self.sequencer.accept(COMPOSITE_SOURCE, tick)

    async def caught_up(self, tick_id: int, timeout: float) -> bool:
        """Wait until this replica was handed ``tick_id`` (it may be behind the replica that sent it)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while (self.market.last_id or 0) < tick_id:
                    await self._delivered.wait()
        return (self.market.last_id or 0) >= tick_id

    # -- clients -----------------------------------------------------------------------------------

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

    # -- stopping ----------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Start stopping (safe to call from a signal handler's callback, and more than once)."""
        if self._drain_task is None:
            self.draining = True
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="tickhub-drain")

    async def _drain(self) -> None:
        await self.tasks.stop()
        await self.lease.stop()
        ingest, self.ingest = self.ingest, None
        if ingest is not None:
            await ingest.stop()
        await self.outbox.stop(flush_timeout=self.settings.shutdown_timeout / 2)  # what is sequenced goes in
        self.sequencer = None
        await self.lease.release()
        await self.fanout.close(timeout=self.settings.shutdown_timeout / 2)

    async def stop(self) -> None:
        self.begin_drain()
        assert self._drain_task is not None
        with contextlib.suppress(Exception):
            await self._drain_task
        await self.partitions.stop()
        await self.writer.close(timeout=self.settings.shutdown_timeout)
        await self.broker.close()
        await self.store.close()
        log.info("hub %s stopped: %d ticks written, %d dropped", self.hub_id, self.writer.written, self.writer.dropped)

    def health(self) -> dict[str, Any]:
        writer = self.writer
        sources = self.ingest.health() if self.ingest is not None else {}
        broker = self.broker.health()
        degraded = (
            writer.failing
            or broker.get("state") == "unavailable"
            or any(v["state"] != "connected" for v in sources.values())
        )
        return {
            "status": "draining" if self.draining else ("degraded" if degraded else "ok"),
            "run": self.run,
            "hub_id": self.hub_id,
            "role": self.role,
            "uptime_s": round(time.time() - self.started_at, 3),
            "last_id": str(self.market.last_id) if self.market.last_id is not None else None,
            "sources": sources,
            "broker": {**broker, "lease_gained": self.lease.gained},
            "writer": {
                "backlog": writer.backlog_size,
                "written": writer.written,
                "batches": writer.batches,
                "dropped": writer.dropped,
                "rejected": writer.rejected,
                "failing": writer.failing,
                "ingest_paused": not writer.room.is_set(),
                "pauses": writer.pauses,
                "errors": writer.errors,
                "last_error": writer.last_error,
                "last_batch_size": writer.last_batch_size,
                "last_batch_ms": round(writer.last_batch_seconds * 1000, 3),
                "persisted_id": str(writer.persisted_id) if writer.persisted_id else None,
            },
            "storage": self.partitions.state.as_dict(self.settings.retention),
            "composite": self.composite.health(),
            "tasks": {"worker": self.tasks.state, "running": self.tasks.running, "completed": self.tasks.completed},
            "test_lock": {"mode": self.gate.mode, "waiting": self.gate.waiting, "turns": self.gate.turns},
            "stream": {
                "subscribers": self.fanout.count,
                "blocked": self.fanout.busy_count,
                "resyncs": self.fanout.resyncs,
                "slow_disconnects": self.fanout.slow_disconnects,
                "replayed": dict(self.replayed),
                "ring_ticks": len(self.ring),
                "ring_capacity": self.ring.capacity,
            },
        }
