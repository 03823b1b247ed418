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
process, as the tests run them), and in a write-ahead log on local disk (:mod:`tickhub.wal`), so a
crash of the process costs nothing it streamed (:mod:`tickhub.broker_memory`).
``redis://host:port/db``: a Redis Stream, for replicas on many machines (:mod:`tickhub.broker_redis`).
Both pass the same tests (tests/test_broker.py).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
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

    async def restore(self, persisted_id: int) -> int:
        """Put back into the log what a crashed predecessor appended beyond ``persisted_id`` (the newest
        id in PostgreSQL), with the original ids; return how many. Only a log that lives in this process
        has anything to restore (from its write-ahead log): Redis keeps its stream itself."""
        return 0

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


def open_broker(
    url: str,
    namespace: str,
    retention: float = 300.0,
    claim_after: float = 30.0,
    wal_dir: str | Path | None = None,
    wal_fsync: bool = False,
) -> Broker:
    """The broker for ``url``: ``memory://`` (default; with ``wal_dir``, its log is also written to a
    write-ahead log there) or ``redis://host:port/db``."""
    scheme = urlsplit(url or "memory://").scheme
    if scheme == "memory":
        from .broker_memory import MemoryBroker

        return MemoryBroker(url or "memory://", namespace, retention, claim_after, wal_dir, wal_fsync)
    if scheme in ("redis", "rediss", "unix"):
        from .broker_redis import RedisBroker

        return RedisBroker(url, namespace, retention, claim_after)
    raise ValueError(f"unknown broker {url!r}: use memory:// or redis://host:port/db")
