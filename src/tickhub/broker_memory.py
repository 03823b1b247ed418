"""``memory://``: the broker's log in this process, written ahead to local disk.

Appends are handed to readers and a writer before ``append`` returns, so one hub (or several in one
process, as the tests run them) shares one log. With a write-ahead log (:mod:`tickhub.wal`) each
appended batch is on disk before any reader sees it; after a crash :meth:`MemoryBroker.restore` puts
back what PostgreSQL does not have yet, with the original ids, and hands it to the writer again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .broker import Broker, BrokerUnavailable, LeaseLost, OnGap, OnTicks
from .wal import WalInUse, WriteAheadLog
from .wire import Tick

log = logging.getLogger("tickhub.broker")


@dataclass
class _Writer:
    on_ticks: OnTicks
    pending: deque[Tick] = field(default_factory=deque)  # handed over, not yet acknowledged, in id order


@dataclass
class _Log:
    """One in-process log, shared by every MemoryBroker of the same URL and namespace."""

    ticks: deque[Tick] = field(default_factory=deque)  # unacknowledged by every writer, id order
    seqs: dict[str, int] = field(default_factory=dict)
    holder: str | None = None
    expires: float = 0.0
    last_id: int = 0
    trimmed_to: int = 0  # every id up to this one has left the log
    readers: list[OnTicks] = field(default_factory=list)
    writers: dict[str, _Writer] = field(default_factory=dict)
    turn: int = 0  # round robin over the writers
    wal: WriteAheadLog | None = None
    recovered: list[Tick] = field(default_factory=list)  # read from the WAL, until restore() takes them
    restored: int = 0


_LOGS: dict[tuple[str, str], _Log] = {}


class MemoryBroker(Broker):
    """The log in this process: appends are handed to readers and a writer before ``append`` returns."""

    scheme = "memory"
    local = True

    def __init__(
        self,
        url: str,
        namespace: str,
        retention: float = 300.0,
        claim_after: float = 30.0,
        wal_dir: str | Path | None = None,
        wal_fsync: bool = False,
    ) -> None:
        super().__init__(url, namespace, retention, claim_after)
        self._log = _LOGS.setdefault((url, namespace), _Log())
        if wal_dir is not None and self._log.wal is None:
            self._log.wal = WriteAheadLog(Path(wal_dir, namespace), fsync=wal_fsync)
        self._mine: list[OnTicks] = []
        self._consumers: list[str] = []

    async def connect(self) -> None:
        wal = self._log.wal
        if wal is not None and not wal.opened:
            try:
                self._log.recovered = await asyncio.to_thread(wal.open)
            except WalInUse as exc:
                raise RuntimeError(f"{exc}: one hub per data directory and schema (TICKHUB_DATA_DIR)") from None
            except OSError as exc:
                raise BrokerUnavailable(f"cannot open the write-ahead log in {wal.directory}: {exc}") from exc

    async def restore(self, persisted_id: int) -> int:
        log, recovered = self._log, self._log.recovered
        self._log.recovered = []
        tail = [t for t in recovered if t.id > max(persisted_id, log.last_id)]
        if log.wal is not None:
            log.wal.release(persisted_id)
        if not tail:
            return 0
        for tick in tail:  # in id order, as they were appended
            log.seqs[tick.source] = max(log.seqs.get(tick.source, 0), tick.seq)
        log.last_id = tail[-1].id
        log.ticks.extend(tail)
        log.restored += len(tail)
        return len(tail)

    async def close(self) -> None:
        log = self._log
        for reader in self._mine:
            if reader in log.readers:
                log.readers.remove(reader)
        for consumer in self._consumers:
            gone = log.writers.pop(consumer, None)
            if gone is not None and gone.pending and log.writers:  # a writer that left: its share goes on
                self._hand_over(list(gone.pending))
        self._mine.clear()
        self._consumers.clear()
        if not log.readers and not log.writers and log.holder is None:
            _LOGS.pop((self.url, self.namespace), None)
            if log.wal is not None:
                log.wal.close(written_id=log.trimmed_to if not log.ticks else None)

    async def acquire(self, holder: str, ttl: float) -> bool:
        log, now = self._log, time.monotonic()
        if log.holder is None or log.holder == holder or log.expires <= now:
            log.holder, log.expires = holder, now + ttl
            return True
        return False

    async def renew(self, holder: str, ttl: float) -> bool:
        log, now = self._log, time.monotonic()
        if log.holder != holder or log.expires <= now:
            return False
        log.expires = now + ttl
        return True

    async def release(self, holder: str) -> None:
        if self._log.holder == holder:
            self._log.holder = None

    async def append(self, holder: str, ticks: Sequence[Tick]) -> int:
        log, now = self._log, time.monotonic()
        if log.holder != holder or log.expires <= now:
            raise LeaseLost(f"the ingest lease is not {holder}'s")
        seqs, last_id, fresh = dict(log.seqs), log.last_id, []
        for tick in ticks:
            if tick.seq > seqs.get(tick.source, 0) and tick.id > last_id:
                seqs[tick.source] = tick.seq
                last_id = tick.id
                fresh.append(tick)
        if not fresh:
            return 0
        if log.wal is not None:  # on disk before anyone sees them
            try:
                await log.wal.append(fresh)
            except OSError as exc:  # a full disk: refuse the batch (the outbox retries it; ingest waits)
                raise BrokerUnavailable(f"cannot write the write-ahead log: {exc}") from exc
        log.seqs, log.last_id = seqs, last_id
        log.ticks.extend(fresh)
        for reader in list(log.readers):
            reader(fresh)
        self._hand_over(fresh)
        self._trim()
        return len(fresh)

    def _hand_over(self, ticks: list[Tick]) -> None:
        log = self._log
        if not log.writers:
            return  # no writer yet: the ticks wait in the log (untrimmed) for the first one
        writers = list(log.writers.values())
        writer = writers[log.turn % len(writers)]
        log.turn += 1
        writer.pending.extend(ticks)
        writer.on_ticks(ticks)

    def _trim(self) -> None:
        """Keep only what no writer has acknowledged yet: in one process the ring and PostgreSQL
        hold the rest, so ``retention`` does not apply here."""
        log = self._log
        if not log.writers:
            return
        unwritten = min((w.pending[0].id for w in log.writers.values() if w.pending), default=None)
        ticks = log.ticks
        trimmed = log.trimmed_to
        while ticks and (unwritten is None or ticks[0].id < unwritten):
            log.trimmed_to = ticks.popleft().id
        if log.wal is not None and log.trimmed_to != trimmed:
            log.wal.release(log.trimmed_to)

    async def last_seqs(self) -> dict[str, int]:
        return dict(self._log.seqs)

    async def subscribe(self, on_ticks: OnTicks, after: int, on_gap: OnGap | None = None) -> None:
        if after < self._log.trimmed_to and on_gap is not None:
            on_gap(after, self._log.trimmed_to)
        retained = [t for t in self._log.ticks if t.id > after]
        if retained:
            on_ticks(retained)
        self._log.readers.append(on_ticks)
        self._mine.append(on_ticks)

    async def first_id(self) -> int | None:
        return self._log.ticks[0].id if self._log.ticks else None

    async def history(self, after: int, before: int, limit: int) -> list[Tick] | None:
        log = self._log
        if after < log.trimmed_to:
            return None
        out = []
        for tick in log.ticks:
            if tick.id >= before or len(out) >= limit:
                break
            if tick.id > after:
                out.append(tick)
        return out

    async def feed_writer(self, consumer: str, on_ticks: OnTicks, room: asyncio.Event) -> None:
        # One process: the writer's own queue and the hub's backpressure on ingest stand in for room.
        log = self._log
        first = not log.writers
        log.writers[consumer] = _Writer(on_ticks)
        self._consumers.append(consumer)
        if first and log.ticks:  # restored after a crash, or appended before any writer: this one writes them
            self._hand_over(list(log.ticks))

    def health(self) -> dict[str, object]:
        report = super().health()
        if self._log.wal is not None:
            report["wal"] = {**self._log.wal.health(), "restored": self._log.restored}
        return report

    async def written(self, consumer: str, ticks: Sequence[Tick]) -> None:
        writer = self._log.writers.get(consumer)
        if writer is None or not ticks:
            return
        done = {t.id for t in ticks}
        pending = writer.pending
        while pending and pending[0].id in done:
            pending.popleft()
        if pending and len(done) < len(pending):  # acknowledged out of order: keep the rest
            writer.pending = deque(t for t in pending if t.id not in done)
        self._trim()
