"""Market: the newest tick of every symbol and source. Snapshots and /prices read it."""

from __future__ import annotations

from collections.abc import Iterable

from .wire import Tick, event_frame


class Market:
    """Latest prices, updated by every tick in hub order."""

    __slots__ = ("by_source", "last_id", "latest", "quoted")

    def __init__(self) -> None:
        self.latest: dict[str, Tick] = {}
        #: The newest tick of each symbol that carried a best bid or ask (a trade may come without one).
        self.quoted: dict[str, Tick] = {}
        self.by_source: dict[str, dict[str, Tick]] = {}
        #: The newest hub id seen (also from history), so a snapshot carries a resumable id.
        self.last_id: int | None = None

    def update(self, tick: Tick) -> None:
        self.latest[tick.symbol] = tick
        fields = tick.fields
        if fields is not None and (b',"bid":' in fields.json or b',"ask":' in fields.json):
            self.quoted[tick.symbol] = tick
        sources = self.by_source.get(tick.symbol)
        if sources is None:
            sources = self.by_source[tick.symbol] = {}
        sources[tick.source] = tick
        self.last_id = tick.id

    def load(self, ticks: Iterable[Tick]) -> None:
        for tick in sorted(ticks, key=lambda t: t.id):
            self.update(tick)

    def ticks(self, symbols: Iterable[str] | None = None) -> list[Tick]:
        if symbols is None:
            return [self.latest[s] for s in sorted(self.latest)]
        return [self.latest[s] for s in sorted(symbols) if s in self.latest]

    def snapshot_frame(self, symbols: Iterable[str] | None = None) -> bytes:
        """A ``snapshot`` event with the latest tick of each requested symbol; its id is the newest id."""
        data = b'{"ticks":[' + b",".join(t.json for t in self.ticks(symbols)) + b"]}"
        return event_frame("snapshot", data, self.last_id)
