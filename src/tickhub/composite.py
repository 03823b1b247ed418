"""Composite prices: one price per canonical instrument from the latest prices of all its venues.

Each batch of ticks the hub is handed recomputes, once, every instrument a tick of the batch moved
(at ingest speed a batch holds hundreds of ticks, so a composite costs little per source tick; one
tick at a time, each tick recomputes its instruments), in three steps (:func:`evaluate`):

1. Freshness. A venue's price is as old as the earlier of its source time and its arrival at the
   hub, and counts while that age is at most the window. So an old tick replayed after a
   reconnect is not taken for news, and a venue whose clock runs ahead still ages once it stops.
2. Outliers. A fresh venue whose price deviates from the median of all fresh prices by more than
   the maximum deviation (percent) is excluded, counted and shown in /health. The median of all
   of them, not of the others: with three venues, each good venue's "others' median" sits halfway
   to the outlier, so one bad price could exclude the two good ones. With two venues the median is
   their mean, so two that disagree by more than twice the limit are both excluded: nothing says
   which one is right.
3. The composite is the median of what is left: the middle price as the venue sent it, or for an
   even count the exact mean of the middle two. The mean is rounded (half-even) only when it has
   more than the 18 decimal places a tick price may have, which happens only when both middle
   prices have 18 and the mean ends in a 5 at the 19th.

Beside the price, the consolidated quote: the best bid and the best ask among the venues used whose
quote is fresh, each with its venue (:mod:`tickhub.consolidation`).

No fresh venue, or every fresh venue excluded: nothing is published, and /health says why.
Nor is a composite whose price, quote and contributing venues are those of the last one published.
A composite is published as a tick of the pseudo-source ``composite`` whose symbol is the
instrument's name: its ``bid``, ``bid_qty``, ``ask``, ``ask_qty`` are the consolidated quote, and
its extra fields list the contributing ``venues`` and the ``best`` bid's and ask's venue. Its seq
follows the source contract: the first run starts at the time in microseconds, later ones right
after the last composite in the log or PostgreSQL; then +1 per composite, so a consumer sees a gap
in ``composite`` as in any source.
Work per tick is O(venues of the instrument); a tick of an unmapped symbol never gets here.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from .consolidation import Evaluation, VenuePrice, consolidated, evaluate
from .instruments import COMPOSITE_SOURCE, Instrument, VenueSpec
from .wire import SourceTick, Tick, TickFields, format_ts

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REASONS = {
    "unchanged": "the same price from the same venues as the last composite",
    "no_data": "no venue has sent a price yet",
    "all_stale": "every venue's price is older than the window",
    "all_outliers": "every fresh venue deviates from their median by more than the maximum deviation",
}


class InstrumentBook:
    """One instrument: its venues (in source, symbol order) and what its composite did."""

    __slots__ = ("_by_key", "instrument", "last_price", "last_quote", "last_used", "published", "skipped", "venues")

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.venues: list[VenuePrice] = []
        self._by_key: dict[tuple[str, str], VenuePrice] = {}
        self.published = 0
        self.skipped: Counter[str] = Counter()  # computations that published nothing, by reason
        self.last_price: str | None = None
        self.last_used: tuple[VenuePrice, ...] = ()  # the venues of the last composite published
        self.last_quote: tuple[Any, ...] | None = None  # its consolidated quote, as published

    def venue(self, source: str, spec: VenueSpec) -> VenuePrice:
        venue = self._by_key.get((source, spec.symbol))
        if venue is None:  # once per (source, symbol): keep the list sorted for stable output
            venue = self._by_key[source, spec.symbol] = VenuePrice(source, spec.symbol, spec.quote)
            self.venues.append(venue)
            self.venues.sort(key=lambda v: (v.source, v.symbol))
        return venue


#: A symbol's routes: each venue entry that names it, with its instrument.
Route = tuple[VenueSpec, InstrumentBook]


class CompositeBook:
    """Every instrument's venue prices; publishes each new composite through ``publish``.

    ``routes`` maps a symbol to its routes; the hub looks every tick's symbol up there once and
    calls :meth:`on_tick` only on a hit.
    """

    def __init__(
        self,
        instruments: Iterable[Instrument],
        window: float,
        max_deviation: Decimal,
        publish: Callable[[SourceTick], object],
        last_seq: int = 0,
    ) -> None:
        self.books = {i.name: InstrumentBook(i) for i in instruments}
        routes: dict[str, list[Route]] = {}
        for book in self.books.values():
            for spec in book.instrument.venues:
                routes.setdefault(spec.symbol, []).append((spec, book))
        self.routes: dict[str, tuple[Route, ...]] = {symbol: tuple(r) for symbol, r in routes.items()}
        self.window = window
        self.max_deviation = max_deviation
        self._publish = publish
        #: The newest composite seq issued (at start: the newest persisted).
        self.last_seq = last_seq
        #: Instruments moved since the last :meth:`settle` (a dict: ordered, no repeats), and each venue's
        #: latest tick since then.
        self.dirty: dict[InstrumentBook, None] = {}
        self.moved: dict[VenuePrice, Tick] = {}
        self._ts_second = -1
        self._ts_prefix = ""

    def seed(self, ticks: Iterable[Tick]) -> None:
        """Take the latest persisted venue prices after a restart (their age is their source time's)."""
        now = time.time()
        for tick in ticks:
            for spec, book in self.routes.get(tick.symbol, ()):
                if tick.source != COMPOSITE_SOURCE and spec.matches(tick.source):
                    book.venue(tick.source, spec).update(tick, now)

    def on_tick(self, tick: Tick, routes: tuple[Route, ...]) -> None:
        """Take ``tick`` and recompute the instruments it prices at once (one tick, one batch)."""
        self.touch(tick, routes)
        self.settle()

    def touch(self, tick: Tick, routes: tuple[Route, ...]) -> None:
        """Take ``tick`` as its venues' latest price; ``routes`` are its symbol's. The instruments it
        prices are recomputed by :meth:`settle`, once per batch of ticks however many moved them."""
        if tick.source == COMPOSITE_SOURCE:  # a composite never feeds a composite
            return
        for spec, book in routes:
            if spec.matches(tick.source):
                self.moved[book.venue(tick.source, spec)] = tick  # the latest wins: one update per batch
                self.dirty[book] = None

    def settle(self) -> None:
        """Recompute each instrument a tick moved since the last call, and publish what changed."""
        if not self.dirty:
            return
        books, self.dirty = self.dirty, {}
        moved, self.moved = self.moved, {}
        now_us = time.time_ns() // 1000
        now = now_us / 1e6
        for venue, tick in moved.items():
            venue.update(tick, now)
        for book in books:  # in the order they were first moved
            self._recompute(book, now, now_us)

    def _recompute(self, book: InstrumentBook, now: float, now_us: int) -> None:
        result = evaluate(book.venues, now, self.window, self.max_deviation)
        for venue in result.excluded:
            venue.exclusions += 1
        if result.price is None:
            book.skipped[result.reason or "no_data"] += 1
            return
        used = tuple(result.used)
        quote = consolidated(result)
        if result.price == book.last_price and used == book.last_used and quote == book.last_quote:
            book.skipped["unchanged"] += 1  # same price and quote from the same venues: nothing new to say
            return
        seq = self.last_seq = self.last_seq + 1  # the ingesting hub set the start above every earlier one
        at = EPOCH + timedelta(microseconds=now_us)
        book.published += 1
        book.last_price, book.last_used, book.last_quote = result.price, used, quote
        extra: dict[str, Any] = {"venues": [v.wire() for v in result.used]}
        fields = None
        if quote is not None:
            bid, bid_qty, bid_venue, ask, ask_qty, ask_venue = quote
            fields = TickFields.of(bid=bid, bid_qty=bid_qty, ask=ask, ask_qty=ask_qty)
            extra["best"] = {
                side: {"source": venue[0], "symbol": venue[1]}
                for side, venue in (("bid", bid_venue), ("ask", ask_venue))
                if venue is not None
            }
        tick = SourceTick(book.instrument.name, result.price, at, self._ts(now_us), seq, extra, fields)
        self._publish(tick)

    def _ts(self, now_us: int) -> str:
        """``format_ts`` of a Unix time in µs; the part up to the second is made once a second."""
        second, micros = divmod(now_us, 1_000_000)
        if second != self._ts_second:
            self._ts_second = second
            self._ts_prefix = format_ts(EPOCH + timedelta(seconds=second))[:19]
        return f"{self._ts_prefix}.{micros:06d}Z"

    def evaluate_all(self, now: float | None = None) -> list[tuple[InstrumentBook, Evaluation]]:
        """Each instrument as a computation at ``now`` (default: the current time) would see it."""
        at = time.time() if now is None else now
        return [(b, evaluate(b.venues, at, self.window, self.max_deviation)) for b in self.books.values()]

    def report(self) -> list[dict[str, Any]]:
        """GET /instruments: the map, and each venue's price, freshness and exclusion right now."""
        now = time.time()
        out = []
        for book, result in self.evaluate_all(now):
            instrument = book.instrument
            out.append(
                {
                    "name": instrument.name,
                    "quote": instrument.quote,
                    "accept": list(instrument.accept),
                    "status": "ok" if result.price is not None else result.reason,
                    "price": result.price,
                    "best": _quote_report(result),
                    "published": book.published,
                    "last_price": book.last_price,
                    "map": [{"symbol": s.symbol, "source": s.source, "quote": s.quote} for s in instrument.venues],
                    "venues": [_venue_report(v, result, now) for v in book.venues],
                }
            )
        return out

    def health(self) -> dict[str, Any]:
        """Per instrument: whether a composite can be made now, and if not why; venues by state."""
        now = time.time()
        out = {}
        for book, result in self.evaluate_all(now):
            out[book.instrument.name] = {
                "status": "ok" if result.price is not None else "no_composite",
                "reason": None if result.reason is None else REASONS[result.reason],
                "fresh": [_venue_brief(v, now) for v in result.used],
                "excluded": [_venue_brief(v, now) for v in result.excluded],
                "stale": [_venue_brief(v, now) for v in result.stale],
                "published": book.published,
                "skipped": dict(book.skipped),
            }
        return out


def _quote_report(result: Evaluation) -> dict[str, Any] | None:
    quote = consolidated(result)
    if quote is None:
        return None
    bid, bid_qty, bid_venue, ask, ask_qty, ask_venue = quote
    return {
        "bid": None if bid is None else {"price": bid, "qty": bid_qty, "source": bid_venue[0], "symbol": bid_venue[1]},
        "ask": None if ask is None else {"price": ask, "qty": ask_qty, "source": ask_venue[0], "symbol": ask_venue[1]},
    }


def _state(venue: VenuePrice, result: Evaluation) -> str:
    if venue in result.used:
        return "fresh"
    return "excluded" if venue in result.excluded else "stale"


def _venue_brief(venue: VenuePrice, now: float) -> dict[str, Any]:
    return {
        "source": venue.source,
        "symbol": venue.symbol,
        "price": venue.price,
        "age_s": round(now - venue.seen_at, 3),
    }


def _venue_report(venue: VenuePrice, result: Evaluation, now: float) -> dict[str, Any]:
    state = _state(venue, result)
    return {
        **_venue_brief(venue, now),
        "quote": venue.quote,
        "ts": venue.ts,
        "state": state,
        "fresh": state != "stale",
        "excluded": state == "excluded",
        "exclusions": venue.exclusions,
    }
