"""Capped, jittered exponential backoff for long-lived reconnect loops.

stamina (and tenacity) model a bounded call that is retried; a feed that should reconnect
forever, and start again from the shortest delay once a session has worked, needs only this.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, each drawn from [delay/2, delay] ("equal jitter")."""

    __slots__ = ("attempt", "initial", "maximum")

    def __init__(self, initial: float = 0.25, maximum: float = 10.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; never zero, never above ``maximum``."""
        delay = min(self.maximum, self.initial * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        """Call once a session has delivered data, so the next failure starts small again."""
        self.attempt = 0
