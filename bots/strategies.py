"""Bot strategies: pure functions of the recent prices of one symbol and what the bot paid.

Each returns ``"buy"``, ``"sell"`` or ``None``. A bot holds at most one lot per symbol, so a
strategy only buys when ``paid`` is None and only sells when it is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

Strategy = Callable[[Sequence[Decimal], Decimal | None], str | None]


def is_dip(p: Sequence[Decimal]) -> bool:
    """The middle of the last three prices is the lowest: ``p[-3] > p[-2] < p[-1]``."""
    return len(p) >= 3 and p[-3] > p[-2] < p[-1]


def is_peak(p: Sequence[Decimal]) -> bool:
    """The middle of the last three prices is the highest: ``p[-3] < p[-2] > p[-1]``."""
    return len(p) >= 3 and p[-3] < p[-2] > p[-1]


def investor(prices: Sequence[Decimal], paid: Decimal | None) -> str | None:
    """Buys on a dip; sells on a peak when the price is above what it paid."""
    if paid is None:
        return "buy" if is_dip(prices) else None
    return "sell" if is_peak(prices) and prices[-1] > paid else None


def hamster(prices: Sequence[Decimal], paid: Decimal | None) -> str | None:
    """The inverse: buys on a peak; sells on a dip when the price is below what it paid."""
    if paid is None:
        return "buy" if is_peak(prices) else None
    return "sell" if is_dip(prices) and prices[-1] < paid else None


STRATEGIES: dict[str, Strategy] = {"investor": investor, "hamster": hamster}
