"""The public client of a tickhub hub, for bots, scripts and dashboards.

Following the stream, with asyncio (aiohttp)::

    from tickhub.client import Snapshot, subscribe

    async with subscribe("http://127.0.0.1:8000", symbols=["BTCUSD", "META"]) as stream:
        async for event in stream:
            if isinstance(event, Snapshot):  # first, and whenever the hub cannot resume (event.resync)
                print("latest:", [(t.symbol, t.price) for t in event.ticks])
            else:
                print(event.symbol, event.price, event.trade_id)

or without (requests and sseclient-py): ``for event in subscribe_sync(url, symbols=[...])``. Both
resume by ``Last-Event-ID`` after any disconnect or hub restart (capped, jittered backoff that waits
at least the hub's ``retry:``, up to ``reconnect_max``), reconnect when nothing (not even a heartbeat)
came for ``stale_timeout`` seconds, and hand out each ``(source, seq)`` once, counting repeats in
``dropped``.

Trading and the REST routes, with an API key (``tickhub keys create NAME``)::

    hub = HubClient("http://127.0.0.1:8000", api_key)        # or: async with AsyncHubClient(...) as hub
    order = hub.buy("BTCUSD", Decimal("0.01"))                # await hub.buy(...) with AsyncHubClient
    hub.account().cash, hub.history("BTCUSD", limit=100), hub.candles("BTCUSD", interval="1m")

Quantities are exact (Decimal, int or a decimal string) and sent as plain decimal strings; each order
carries an Idempotency-Key, so a retried POST fills once. Every refusal raises :class:`HubError`
with the hub's ``code``, ``message`` and the HTTP ``status``.
"""

from __future__ import annotations

from .client_aio import AsyncHubClient, Subscription, subscribe
from .client_models import Account, Candle, HubError, Order, Position, Snapshot, Tick
from .client_sync import HubClient, SyncSubscription
from .client_sync import subscribe as subscribe_sync

__all__ = [
    "Account",
    "AsyncHubClient",
    "Candle",
    "HubClient",
    "HubError",
    "Order",
    "Position",
    "Snapshot",
    "Subscription",
    "SyncSubscription",
    "Tick",
    "subscribe",
    "subscribe_sync",
]
