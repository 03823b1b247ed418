"""The sequencer: drops replays, gives each accepted tick its hub id, hands it on.

Hub ids are ``run * RUN_SPAN + n``. ``run`` comes from PostgreSQL once per start, so ids keep
increasing across restarts and crashes without persisting every id, including ids that were
sent to subscribers but never written. Within one run ids grow by exactly 1, so a gap is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .wire import SourceTick, Tick

RUN_SPAN = 10**12


def run_of(tick_id: int) -> int:
    return tick_id // RUN_SPAN


def parse_event_id(raw: str | None) -> int | None:
    """A Last-Event-ID as a hub id, or None if it is not one of ours."""
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    value = int(raw)
    return value if value < 1 << 63 else None


class Sequencer:
    """Single point of order: every accepted tick passes here exactly once, in arrival order."""

    def __init__(self, run: int, last_seqs: Mapping[str, int], sink: Callable[[Tick], None]) -> None:
        if run <= 0:
            raise ValueError("run numbers start at 1")
        self.run = run
        self.base = run * RUN_SPAN
        self._n = 0
        self._last_seq = dict(last_seqs)
        self._sink = sink

    @property
    def next_id(self) -> int:
        return self.base + self._n + 1

    @property
    def last_id(self) -> int | None:
        """The newest id issued in this run, None before the first."""
        return self.base + self._n if self._n else None

    def last_seq(self, source: str) -> int:
        """The newest seq accepted from ``source`` (0 if none): where its resume starts."""
        return self._last_seq.get(source, 0)

    def accept(self, source: str, tick: SourceTick) -> Tick | None:
        """Sequence one validated source tick; None if ``(source, seq)`` was already accepted."""
        if tick.seq <= self._last_seq.get(source, 0):
            return None
        self._last_seq[source] = tick.seq
        self._n += 1
        if self._n >= RUN_SPAN:
            raise OverflowError("hub id space of this run exhausted; restart the hub")
        sequenced = Tick(
            self.base + self._n, source, tick.symbol, tick.price, tick.time, tick.seq, tick.ts, tick.extra, tick.fields
        )
        self._sink(sequenced)
        return sequenced
