"""One exchange WebSocket as a bridge sees it: what /health shows about it, and the pace of what we send."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ConnectionStats:
    """What /health shows about one WebSocket."""

    url: str
    streams: int
    state: str = "starting"
    connects: int = 0
    connected_at: float | None = None
    last_message_at: float | None = None
    last_quote_at: float | None = None
    messages: int = 0
    quotes: int = 0
    unread: int = 0  # messages the adapter could not read since the last price (or the connect)
    last_unread: str | None = None
    reconnects: collections.Counter[str] = field(default_factory=collections.Counter)
    last_error: str | None = None

    def problem(self, now: float, window: float) -> str | None:
        """Why this connection is not working, or None: it is down, or it is up but has brought no price
        for ``window`` seconds while messages it could not read arrived."""
        if self.state != "connected" or self.connected_at is None:
            return self.state + (f": {self.last_error}" if self.last_error else "")
        silent = now - max(self.connected_at, self.last_quote_at or 0.0)
        if silent >= window and self.unread:
            return (
                f"no price for {silent:.1f}s while {self.unread} messages could not be read (last: {self.last_unread})"
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        return {
            "url": self.url.split("?", 1)[0],
            "streams": self.streams,
            "state": self.state,
            "connects": self.connects,
            "connected_for_s": round(now - self.connected_at, 3) if self.connected_at else None,
            "last_message_age_s": round(now - self.last_message_at, 3) if self.last_message_at else None,
            "messages": self.messages,
            "quotes": self.quotes,
            "last_quote_age_s": round(now - self.last_quote_at, 3) if self.last_quote_at else None,
            "unread_since_quote": self.unread,
            "reconnects": dict(self.reconnects),
            "last_error": self.last_error,
        }


class MessagePacer:
    """At most ``limit`` sends in any ``period`` seconds (Binance drops a connection past 5 messages/s)."""

    def __init__(self, limit: int, period: float = 1.0) -> None:
        self.limit = limit
        self.period = period
        self._sent: collections.deque[float] = collections.deque(maxlen=limit)

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if len(self._sent) == self.limit:
            delay = self._sent[0] + self.period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        self._sent.append(loop.time())
