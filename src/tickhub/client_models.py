"""What the public client hands its caller: ticks, snapshots, orders, accounts, candles and one error class.

Amounts are :class:`~decimal.Decimal` (never a float that rounds); a tick also keeps its price as the
exact text the hub sent. Each object keeps the JSON it was read from in ``raw``, so a field the hub adds
later is not lost to an older client.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from .wire import TICK_FIELDS, parse_ts


class HubError(Exception):
    """Anything the hub refused or could not be asked: its JSON error's ``code`` and ``message`` with the
    HTTP ``status``; ``status`` is None when the hub could not be reached (``code`` ``"unreachable"``)."""

    def __init__(self, status: int | None, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status if status is not None else 'no answer'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: The answer's ``Retry-After``, in seconds, when it had one (429, 503).
        self.retry_after = retry_after


def decimal_text(value: Decimal | int | str) -> str:
    """An exact amount as the plain decimal string the hub reads (``Decimal("1E-7")`` → ``"0.0000001"``).

    A float is refused: it has already lost digits (``0.1`` is not one tenth).
    """
    if isinstance(value, float) or isinstance(value, bool):
        raise TypeError("amounts are exact: pass a Decimal, an int or a decimal string, not a float")
    return format(Decimal(value), "f")


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


@dataclass(frozen=True, slots=True)
class Tick:
    """One price from the hub's stream: ``price`` as a Decimal, ``price_text`` the exact string sent."""

    id: str
    source: str
    symbol: str
    price: Decimal
    price_text: str
    ts: str
    seq: int
    #: Fields beyond the six every tick has: ``trade_id``, ``qty``, ``side``, ``bid`` … (as sent).
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Tick:
        """The tick of one decoded JSON object as the hub sends it."""
        return cls(
            id=str(obj["id"]),
            source=obj["source"],
            symbol=obj["symbol"],
            price=Decimal(obj["price"]),
            price_text=obj["price"],
            ts=obj["ts"],
            seq=int(obj["seq"]),
            extra={k: v for k, v in obj.items() if k not in TICK_FIELDS},
            raw=obj,
        )

    @property
    def time(self) -> datetime:
        """``ts`` as an aware UTC datetime."""
        return parse_ts(self.ts)

    @property
    def trade_id(self) -> str | None:
        """The exchange's own trade id, when the source has one."""
        return self.extra.get("trade_id")

    @property
    def qty(self) -> Decimal | None:
        """The trade's size, when the tick is a trade whose source reports it."""
        return _decimal(self.extra.get("qty"))

    @property
    def side(self) -> str | None:
        """``buy`` or ``sell``: the side of the trade's aggressor, when the source reports it."""
        return self.extra.get("side")

    @property
    def bid(self) -> Decimal | None:
        """The best bid when the tick was sent, when the source reports it (``bid_qty`` in ``extra``)."""
        return _decimal(self.extra.get("bid"))

    @property
    def ask(self) -> Decimal | None:
        """The best ask when the tick was sent, when the source reports it (``ask_qty`` in ``extra``)."""
        return _decimal(self.extra.get("ask"))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The latest tick of each subscribed symbol: sent when a subscription starts, and again whenever the
    hub cannot resume it (``resync`` then names why: ``too_old``, ``slow_consumer`` …). Ticks after the
    snapshot follow it; what happened between the last tick seen and the snapshot is not replayed."""

    id: str | None
    ticks: tuple[Tick, ...]
    #: The snapshot's ticks this subscription had not handled before (a subset of ``ticks``).
    new: tuple[Tick, ...]
    #: Why the hub could not resume (the ``resync`` event's reason), or None for a new subscription.
    resync: str | None = None


@dataclass(frozen=True, slots=True)
class Candle:
    """One bucket of a symbol's prices."""

    start: str
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    count: int
    #: The sum of the trades' sizes, None when no tick of the bucket carried one (a source without sizes).
    volume: Decimal | None = None
    #: The ticks that carried a size.
    trades: int = 0
    #: Volume-weighted average price, None without volume.
    vwap: Decimal | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Candle:
        return cls(
            obj["start"],
            Decimal(obj["open"]),
            Decimal(obj["high"]),
            Decimal(obj["low"]),
            Decimal(obj["close"]),
            obj["count"],
            _decimal(obj.get("volume")),
            obj.get("trades", 0),
            _decimal(obj.get("vwap")),
        )


@dataclass(frozen=True, slots=True)
class Order:
    """A filled market order. ``replayed``: the answer to a retried POST, the same order as the first."""

    id: int
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    amount: Decimal
    realized: Decimal
    cash_after: Decimal
    tick_id: str
    tick_ts: str
    filled_at: str
    #: What it filled at: ``ask`` (a buy) or ``bid`` (a sell) of a fresh quote, else ``last``.
    price_source: str = "last"
    #: The last trade price when it filled; ``spread_paid`` is what the fill cost beyond it.
    last_price: Decimal | None = None
    replayed: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def spread_paid(self) -> Decimal:
        """Buying at the ask above the last price, or selling at the bid below it: the difference, times qty."""
        if self.last_price is None:
            return Decimal(0)
        gap = self.price - self.last_price if self.side == "buy" else self.last_price - self.price
        return gap * self.qty

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], replayed: bool = False) -> Order:
        amounts = {name: Decimal(obj[name]) for name in ("qty", "price", "amount", "realized", "cash_after")}
        last = obj.get("last_price")
        return cls(
            id=obj["id"],
            symbol=obj["symbol"],
            side=obj["side"],
            tick_id=obj["tick_id"],
            tick_ts=obj["tick_ts"],
            filled_at=obj["filled_at"],
            price_source=obj.get("price_source", "last"),
            last_price=None if last is None else Decimal(last),
            replayed=replayed,
            raw=obj,
            **amounts,
        )


@dataclass(frozen=True, slots=True)
class Position:
    """What the account holds of one symbol; the values are None while the symbol has no price."""

    symbol: str
    qty: Decimal
    avg_cost: Decimal | None
    cost_basis: Decimal
    price: Decimal | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    realized_pnl: Decimal

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Position:
        names = ("avg_cost", "price", "market_value", "unrealized_pnl")
        return cls(
            symbol=obj["symbol"],
            qty=Decimal(obj["qty"]),
            cost_basis=Decimal(obj["cost_basis"]),
            realized_pnl=Decimal(obj["realized_pnl"]),
            **{name: _decimal(obj.get(name)) for name in names},
        )


@dataclass(frozen=True, slots=True)
class Account:
    """The key's own account: cash, positions and P&L at the latest prices."""

    name: str
    cash: Decimal
    positions: tuple[Position, ...]
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    equity: Decimal
    #: What its fills paid over the last trade price (buying at the ask, selling at the bid).
    spread_paid: Decimal = Decimal(0)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Account:
        return cls(
            name=obj["account"]["name"],
            cash=Decimal(obj["cash"]),
            positions=tuple(Position.from_json(p) for p in obj["positions"]),
            realized_pnl=Decimal(obj["realized_pnl"]),
            unrealized_pnl=Decimal(obj["unrealized_pnl"]),
            equity=Decimal(obj["equity"]),
            spread_paid=Decimal(obj.get("spread_paid", "0")),
            raw=obj,
        )

    def position(self, symbol: str) -> Position | None:
        """The position in ``symbol``, if any."""
        return next((p for p in self.positions if p.symbol == symbol), None)


class SeenTicks:
    """The ``(source, seq)`` of the ticks handled lately: the newest ``capacity`` of them exactly, and per
    source the highest seq forgotten, at or below which a tick counts as handled (a bounded memory).

    Exact, not a watermark: one source's ticks in a snapshot come in symbol order, not seq order.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._seen: set[tuple[str, int]] = set()
        self._order: deque[tuple[str, int]] = deque()
        self._forgotten: dict[str, int] = {}

    def first_time(self, source: str, seq: int) -> bool:
        """Whether ``(source, seq)`` is new; if so, it is remembered as handled."""
        key = (source, seq)
        if key in self._seen or seq <= self._forgotten.get(source, 0):
            return False
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            old_source, old_seq = old = self._order.popleft()
            self._seen.discard(old)
            self._forgotten[old_source] = max(old_seq, self._forgotten.get(old_source, 0))
        return True
