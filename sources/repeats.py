"""What a bridge already published in this run, so that an exchange sending it again makes no twin.

Exchanges send some prices again on every (re)subscribe: Coinbase the latest trade of each product,
Kraken the current ticker. A trade is known by its trade id (the newest ``capacity`` of them are
remembered); a price without one by being equal, price, time and quote, to its symbol's latest. Nothing is
kept on disk: across a restart of the bridge this memory is empty (README, "Exactly once").
"""

from __future__ import annotations

from collections import deque

from .exchange import Quote


class PublishedQuotes:
    """The latest quote of each symbol and the recent trade ids this run published."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.latest: dict[str, Quote] = {}  # per hub symbol
        self._trade_ids: set[tuple[str, str]] = set()
        self._order: deque[tuple[str, str]] = deque()

    def is_repeat(self, quote: Quote) -> bool:
        """Whether ``quote`` was published already; if not, it is remembered as published."""
        if quote.trade_id is not None:
            key = (quote.symbol, quote.trade_id)
            if key in self._trade_ids:
                return True
            self._trade_ids.add(key)
            self._order.append(key)
            if len(self._order) > self.capacity:
                self._trade_ids.discard(self._order.popleft())
        else:
            previous = self.latest.get(quote.symbol)
            if previous is not None and previous.trade_id is None and previous[1:] == quote[1:]:
                return True  # the same price, time and quote as the latest: sent again
        self.latest[quote.symbol] = quote
        return False
