"""The broker: the log of sequenced ticks that every hub replica shares, chosen by URL scheme.

One replica at a time holds the *ingest lease*: it reads the sources, gives each tick its id and
appends it to the log. The log refuses an append from a holder whose lease has lapsed (fencing)
and drops a tick whose ``(source, seq)`` it already has, so a replica that lost the lease, or two
that briefly both believed they held it, can never put a tick in twice.

Every replica, the ingesting one too, is handed every appended tick in id order (:meth:`subscribe`)
and fans it out to its own subscribers. Each tick is also handed to exactly one replica's writer
(:meth:`feed_writer`), which persists it and then acknowledges it (:meth:`written`); ticks a
replica was handed but never acknowledged (it died) are handed to another after ``claim_after``
seconds, and PostgreSQL's ``(source, seq)`` key makes a second write of one a no-op. The log keeps
ticks for ``retention`` seconds, and never drops one no writer has acknowledged; a replica resumes
a subscriber from it when the id is older than its ring (:meth:`history`).

``memory://`` (the default): the log lives in this process, for one hub (or several in one
process, as the tests run them). ``redis://host:port/db``: a Redis Stream, for replicas on many
machines (:mod:`tickhub.broker_redis`). Both pass the same tests (tests/test_broker.py).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .wire import Tick

OnTicks = Callable[[list[Tick]], None]
#: Told the id after which a reader missed ticks (trimmed before it read them), and where it resumes.
OnGap = Callable[[int, int], None]


class LeaseLost(RuntimeError):
    """An append by a holder whose lease has lapsed or was taken over: nothing was appended."""


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached; the operation may be retried."""


class Broker(ABC):
    """What a hub replica needs from the shared log. ``namespace`` keeps hubs on one server apart."""

    scheme = ""
    #: True when the log is this process (ticks reach readers and writer inside ``append``).
    local = False
    #: Ticks taken over from writers that left them unwritten; times the log trimmed what a reader had not read.
    claimed = 0
    gaps = 0

    def __init__(self, url: str, namespace: str, retention: float = 300.0, claim_after: float = 30.0) -> None:
        self.url = url
        self.namespace = namespace
        self.retention = retention
        self.claim_after = claim_after

    async def connect(self) -> None:  # noqa: B027 (optional: memory:// has nothing to open)
        """Open connections (inside the running loop)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop every reader and release connections; a held lease is left to expire unless released."""

    # -- the ingest lease ----------------------------------------------------------------------

    @abstractmethod
    async def acquire(self, holder: str, ttl: float) -> bool:
        """Take the lease for ``ttl`` seconds if nobody holds it; True if ``holder`` holds it now."""

    @abstractmethod
    async def renew(self, holder: str, ttl: float) -> bool:
        """Extend ``holder``'s lease by ``ttl`` seconds; False if it is not ``holder``'s any more."""

    @abstractmethod
    async def release(self, holder: str) -> None:
        """Give the lease up at once if ``holder`` has it (a graceful stop: a standby takes over)."""

    # -- the log -------------------------------------------------------------------------------

    @abstractmethod
    async def append(self, holder: str, ticks: Sequence[Tick]) -> int:
        """Append ticks in id order under ``holder``'s lease; return how many were new.

        Raises :class:`LeaseLost` (nothing appended) if ``holder`` does not hold the lease.
        """

    @abstractmethod
    async def last_seqs(self) -> dict[str, int]:
        """The newest seq in the log of each source: where a new ingesting replica resumes them."""

    @abstractmethod
    async def subscribe(self, on_ticks: OnTicks, after: int, on_gap: OnGap | None = None) -> None:
        """Hand every tick with an id above ``after`` to ``on_ticks``, in id order, batches as they
        come, until :meth:`close` (retained ticks first, then each append). If the log has let go
        of ticks above ``after`` before they were handed over (a reader cut off from it for longer
        than the retention), ``on_gap`` is told, and reading goes on from what the log holds."""

    @abstractmethod
    async def first_id(self) -> int | None:
        """The oldest id in the log (None: it holds nothing). Every older tick there is has been
        written to PostgreSQL (or dropped and counted by the writer that gave up on it)."""

    @abstractmethod
    async def history(self, after: int, before: int, limit: int) -> list[Tick] | None:
        """Up to ``limit`` retained ticks with ``after < id < before`` in id order; None when the log
        no longer reaches back to ``after`` (older ticks were trimmed: ask PostgreSQL)."""

    async def trim(self) -> None:  # noqa: B027 (optional: memory:// trims as writers acknowledge)
        """Let go of what is older than the retention and written (the ingesting replica's chore)."""

    # -- persistence ---------------------------------------------------------------------------

    @abstractmethod
    async def feed_writer(self, consumer: str, on_ticks: OnTicks, room: asyncio.Event) -> None:
        """Hand ``consumer``'s writer its share of the log (each tick to one consumer), while ``room``
        is set, until :meth:`close`; ticks another consumer left unacknowledged for ``claim_after``
        seconds are handed over too."""

    @abstractmethod
    async def written(self, consumer: str, ticks: Sequence[Tick]) -> None:
        """``consumer`` has persisted ``ticks``: the log may let them go."""

    def health(self) -> dict[str, object]:
        return {"url": self.scheme + "://", "retention_s": self.retention}


# -- memory:// ---------------------------------------------------------------------------------


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


_LOGS: dict[tuple[str, str], _Log] = {}


class MemoryBroker(Broker):
    """The log in this process: appends are handed to readers and a writer before ``append`` returns."""

    scheme = "memory"
    local = True

    def __init__(self, url: str, namespace: str, retention: float = 300.0, claim_after: float = 30.0) -> None:
        super().__init__(url, namespace, retention, claim_after)
        self._log = _LOGS.setdefault((url, namespace), _Log())
        self._mine: list[OnTicks] = []
        self._consumers: list[str] = []

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
        seqs, fresh = log.seqs, []
        for tick in ticks:
            if tick.seq > seqs.get(tick.source, 0) and tick.id > log.last_id:
                seqs[tick.source] = tick.seq
                log.last_id = tick.id
                fresh.append(tick)
        if not fresh:
            return 0
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
        while ticks and (unwritten is None or ticks[0].id < unwritten):
            log.trimmed_to = ticks.popleft().id

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
        self._log.writers[consumer] = _Writer(on_ticks)
        self._consumers.append(consumer)

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


def open_broker(url: str, namespace: str, retention: float = 300.0, claim_after: float = 30.0) -> Broker:
    """The broker for ``url``: ``memory://`` (default) or ``redis://host:port/db``."""
    scheme = urlsplit(url or "memory://").scheme
    if scheme == "memory":
        return MemoryBroker(url or "memory://", namespace, retention, claim_after)
    if scheme in ("redis", "rediss", "unix"):
        from .broker_redis import RedisBroker

        return RedisBroker(url, namespace, retention, claim_after)
    raise ValueError(f"unknown broker {url!r}: use memory:// or redis://host:port/db")
