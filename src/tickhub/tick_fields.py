"""The optional exact fields of a tick: what a trade and the best quote add to its price.

A tick may carry, after ``seq`` and in this order: ``qty`` (the trade's size), ``side`` (``buy`` or
``sell``, the aggressor's), ``trade_id`` (the exchange's), ``bid``, ``bid_qty``, ``ask``, ``ask_qty``
(the best quote). Amounts are decimal strings, exact; a field the source lacks is absent, never 0.

Part of the wire (:mod:`tickhub.wire` re-exports all of it): it imports nothing else of tickhub.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: A plain decimal: no sign, no exponent, no NaN or infinity, no leading zero (PostgreSQL's numeric
#: would drop it, and the stored amount would no longer be the bytes the source sent).
DECIMAL_RE = re.compile(r"(?:0|[1-9][0-9]{0,23})(\.[0-9]{1,18})?\Z")
#: An exchange's own trade id (Binance ``t``, Coinbase ``trade_id``), as a string: digits mostly; letters,
#: ``_`` and ``-`` allowed for venues whose ids are not numbers. Nothing in it needs escaping in JSON or COPY.
TRADE_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}\Z")
#: The optional fields, in their order on the wire (after ``seq``) and in the COPY row.
OPTIONAL_FIELDS = ("qty", "side", "trade_id", "bid", "bid_qty", "ask", "ask_qty")
SIDES = ("buy", "sell")
#: The COPY columns of a tick without any of them.
NO_FIELDS_ROW = b"\t".join([b"\\N"] * len(OPTIONAL_FIELDS))

_OPTIONAL = frozenset(OPTIONAL_FIELDS)
_JSON_KEYS = tuple(f',"{name}":"' for name in OPTIONAL_FIELDS)


class TickRejected(ValueError):
    """A source event that is not a valid tick; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class TickFields:
    """The optional fields of one tick, held as the two encodings the hub uses for every tick, made once:
    ``json``, the bytes that follow ``"seq":N`` in the tick's JSON (``,"qty":"0.5","side":"buy"``), and
    ``row``, the seven tab-separated COPY columns (``\\N`` for an absent one). The values by name are
    decoded from ``row`` when asked for: the hub's per-tick path never needs them.

    Build it with :meth:`of` from values that passed :func:`check_fields` (nothing is escaped).
    """

    __slots__ = ("json", "row")

    def __init__(self, json: bytes, row: bytes) -> None:
        self.json = json
        self.row = row

    @classmethod
    def of(
        cls,
        qty: str | None = None,
        side: str | None = None,
        trade_id: str | None = None,
        bid: str | None = None,
        bid_qty: str | None = None,
        ask: str | None = None,
        ask_qty: str | None = None,
    ) -> TickFields | None:
        """The fields from their values (already validated); None when every one is absent."""
        values = (qty, side, trade_id, bid, bid_qty, ask, ask_qty)
        if values.count(None) == len(values):
            return None
        json = "".join([key + v + '"' for key, v in zip(_JSON_KEYS, values, strict=True) if v is not None])
        row = "\t".join(["\\N" if v is None else v for v in values])
        return cls(json.encode(), row.encode())

    @classmethod
    def from_row(cls, row: bytes) -> TickFields | None:
        """The fields of seven COPY columns (:attr:`row`); None when every one is ``\\N``."""
        return cls.of(*(None if v == b"\\N" else v.decode() for v in row.split(b"\t")))

    def values(self) -> tuple[str | None, ...]:
        """The seven values in wire order, None for an absent one."""
        return tuple(None if v == b"\\N" else v.decode() for v in self.row.split(b"\t"))

    def as_dict(self) -> dict[str, str]:
        """The fields present, by name, in wire order."""
        return {k: v for k, v in zip(OPTIONAL_FIELDS, self.values(), strict=True) if v is not None}

    @property
    def qty(self) -> str | None:
        return self.values()[0]

    @property
    def side(self) -> str | None:
        return self.values()[1]

    @property
    def trade_id(self) -> str | None:
        return self.values()[2]

    @property
    def bid(self) -> str | None:
        return self.values()[3]

    @property
    def bid_qty(self) -> str | None:
        return self.values()[4]

    @property
    def ask(self) -> str | None:
        return self.values()[5]

    @property
    def ask_qty(self) -> str | None:
        return self.values()[6]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TickFields) and other.row == self.row

    def __hash__(self) -> int:
        return hash(self.row)

    def __repr__(self) -> str:
        return f"TickFields({', '.join(f'{k}={v!r}' for k, v in self.as_dict().items())})"


def _amount(name: str, value: object, positive: bool) -> str:
    if type(value) is not str or DECIMAL_RE.match(value) is None:
        raise TickRejected(f"bad_{name}", f"{name} is not a decimal string: {str(value)[:40]!r}")
    if positive and not value.strip("0."):
        raise TickRejected(f"bad_{name}", f"{name} must be above zero")
    return value


def check_trade_id(value: object) -> str:
    """Return the trade id if it is a string of 1-64 characters from ``[0-9A-Za-z_-]``."""
    if type(value) is not str or not TRADE_ID_RE.match(value):
        raise TickRejected("bad_trade_id", f"not a trade id string: {str(value)[:40]!r}")
    return value


def check_fields(values: Mapping[str, object]) -> TickFields | None:
    """The optional fields among ``values`` (a decoded tick object, or what a source is about to
    publish), validated; None if it holds none. Every key present is checked: ``null`` is no value.

    ``qty``, ``bid`` and ``ask`` must be above zero (a trade of nothing, or a price of nothing, is no
    observation); ``bid_qty`` and ``ask_qty`` may be 0 but only beside their price. ``bid <= ask`` is
    not checked: a venue's crossed or locked book is passed on as sent. Raises :class:`TickRejected`
    with ``bad_<field>`` as its reason.
    """
    if _OPTIONAL.isdisjoint(values):
        return None
    get = values.get
    qty = None if "qty" not in values else _amount("qty", get("qty"), True)
    side = get("side")
    if "side" in values and side not in SIDES:
        raise TickRejected("bad_side", f'side must be "buy" or "sell", got {str(side)[:40]!r}')
    trade_id = None if "trade_id" not in values else check_trade_id(get("trade_id"))
    bid = None if "bid" not in values else _amount("bid", get("bid"), True)
    ask = None if "ask" not in values else _amount("ask", get("ask"), True)
    bid_qty = None if "bid_qty" not in values else _amount("bid_qty", get("bid_qty"), False)
    ask_qty = None if "ask_qty" not in values else _amount("ask_qty", get("ask_qty"), False)
    if bid_qty is not None and bid is None:
        raise TickRejected("bad_bid_qty", "bid_qty without bid")
    if ask_qty is not None and ask is None:
        raise TickRejected("bad_ask_qty", "ask_qty without ask")
    return TickFields.of(qty, side, trade_id, bid, bid_qty, ask, ask_qty)  # type: ignore[arg-type]
