"""How an instrument's venues make one price and one quote: the median of the fresh venues' prices with
outliers left out (:func:`evaluate`), and the best bid and best ask among the venues it used whose
quote is fresh (:func:`best_quote`), as cryptofeed's NBBO. Pure functions over :class:`VenuePrice`;
the book that publishes the results is :mod:`tickhub.composite`.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext
from operator import attrgetter
from typing import Any, NamedTuple

from .wire import Tick

#: Wide enough that sums and halves of tick prices (at most 24 + 18 digits) are exact.
EXACT = Context(prec=80, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
PLACES = Decimal(1).scaleb(-18)  # a tick price has at most 18 decimal places
BY_VALUE = attrgetter("value")


class VenuePrice:
    """The latest price of one (source, symbol) pair feeding an instrument."""

    __slots__ = (
        "exclusions",
        "price",
        "quote",
        "quote_seen_at",
        "seen_at",
        "source",
        "symbol",
        "top",
        "ts",
        "value",
    )

    def __init__(self, source: str, symbol: str, quote: str) -> None:
        self.source = source
        self.symbol = symbol
        self.quote = quote
        self.price = ""
        self.value = Decimal(0)
        self.ts = ""
        self.seen_at = float("-inf")  # Unix seconds: the earlier of source time and arrival
        #: The venue's top of book, kept from the last tick that carried one: (bid, bid_qty, ask, ask_qty)
        #: as sent (a side may be None), and when it was seen (as ``seen_at``).
        self.top: tuple[str | None, str | None, str | None, str | None] | None = None
        self.quote_seen_at = float("-inf")
        self.exclusions = 0

    def update(self, tick: Tick, now: float) -> None:
        self.price = tick.price
        self.value = Decimal(tick.price)
        self.ts = tick.ts
        self.seen_at = min(tick.time.timestamp(), now)
        if tick.fields is not None:
            _, _, _, bid, bid_qty, ask, ask_qty = tick.fields.values()
            if bid is not None or ask is not None:
                self.top = (bid, bid_qty, ask, ask_qty)
                self.quote_seen_at = self.seen_at

    def wire(self) -> dict[str, str]:
        """The venue as listed in a composite tick."""
        return {"source": self.source, "symbol": self.symbol, "price": self.price, "ts": self.ts}


class Evaluation(NamedTuple):
    """One computation: the composite price (None: nothing to publish, see ``reason``) and the venues
    it used, excluded as outliers, or found stale; and the consolidated quote: the best bid and the
    best ask among the venues used whose quote is fresh (None: no such quote)."""

    price: str | None
    used: list[VenuePrice]
    excluded: list[VenuePrice]
    stale: list[VenuePrice]
    reason: str | None
    best_bid: VenuePrice | None = None
    best_ask: VenuePrice | None = None


def best_quote(used: Iterable[VenuePrice], now: float, window: float) -> tuple[VenuePrice | None, VenuePrice | None]:
    """The venue with the highest bid and the one with the lowest ask among ``used`` whose quote is
    fresh (as a price is: within ``window`` of ``now``); ties go to the first in (source, symbol) order.
    A crossed result (best bid above best ask, across venues) is reported as it is."""
    best_bid = best_ask = None
    bid_value = ask_value = Decimal(0)
    for venue in used:
        top = venue.top
        if top is None or now - venue.quote_seen_at > window:
            continue
        bid, _, ask, _ = top
        if bid is not None and (best_bid is None or Decimal(bid) > bid_value):
            best_bid, bid_value = venue, Decimal(bid)
        if ask is not None and (best_ask is None or Decimal(ask) < ask_value):
            best_ask, ask_value = venue, Decimal(ask)
    return best_bid, best_ask


def evaluate(venues: Iterable[VenuePrice], now: float, window: float, max_deviation: Decimal) -> Evaluation:
    """The composite of ``venues`` at Unix time ``now`` (see the module's docstring)."""
    fresh: list[VenuePrice] = []
    stale: list[VenuePrice] = []
    for venue in venues:
        (fresh if now - venue.seen_at <= window else stale).append(venue)
    if not fresh:
        return Evaluation(None, [], [], stale, "all_stale" if stale else "no_data")
    if len(fresh) == 1:  # its own median: nothing to compare or compute
        return Evaluation(fresh[0].price, fresh, [], stale, None, *best_quote(fresh, now, window))
    ranked = sorted(fresh, key=BY_VALUE)
    with localcontext(EXACT):
        middle = _median(ranked)
        limit = max_deviation * middle  # |p - m| / m > d% is |p - m| * 100 > d * m: no division, exact
        excluded = [v for v in fresh if abs(v.value - middle) * 100 > limit]
        if excluded:
            fresh = [v for v in fresh if v not in excluded]
            if not fresh:
                return Evaluation(None, [], excluded, stale, "all_outliers")
            ranked = [v for v in ranked if v not in excluded]
            middle = _median(ranked)
    if len(ranked) % 2:
        price = ranked[len(ranked) // 2].price  # exactly as the venue sent it
    else:
        price = format(middle, "f")
        point = price.find(".")
        if point >= 0 and len(price) - point > 19:  # more than 18 places: only a mean can have 19
            price = format(middle.quantize(PLACES, rounding=ROUND_HALF_EVEN, context=EXACT), "f")
    return Evaluation(price, fresh, excluded, stale, None, *best_quote(fresh, now, window))


def _median(ranked: list[VenuePrice]) -> Decimal:
    n = len(ranked)
    if n % 2:
        return ranked[n // 2].value
    return EXACT.divide(EXACT.add(ranked[n // 2 - 1].value, ranked[n // 2].value), 2)


def consolidated(result: Evaluation) -> tuple[Any, ...] | None:
    """(bid, bid_qty, bid venue, ask, ask_qty, ask venue) of an evaluation, a venue as (source, symbol);
    None when no used venue has a fresh quote."""
    bid_venue, ask_venue = result.best_bid, result.best_ask
    if bid_venue is None and ask_venue is None:
        return None
    bid = bid_venue.top if bid_venue is not None else None
    ask = ask_venue.top if ask_venue is not None else None
    return (
        bid[0] if bid else None,
        bid[1] if bid else None,
        (bid_venue.source, bid_venue.symbol) if bid_venue is not None else None,
        ask[2] if ask else None,
        ask[3] if ask else None,
        (ask_venue.source, ask_venue.symbol) if ask_venue is not None else None,
    )
