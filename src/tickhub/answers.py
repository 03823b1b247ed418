"""The JSON answers of the API, declared as msgspec Structs.

The OpenAPI document's components are generated from them and from the request models
(:mod:`tickhub.models`); a test holds every route's real answers to their model, field for field.
Amounts are exact decimal strings and times the wire's ISO-8601 UTC form, as text: the models
describe what is sent, byte for byte. A field that may be absent defaults to ``UNSET``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from .models import Side

DecimalText = Annotated[str, Meta(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="An exact decimal number.")]
Time = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
_DECIMAL = r"(0|[1-9][0-9]{0,23})(\.[0-9]{1,18})?"
PositiveText = Annotated[
    str, Meta(pattern=f"^(?!0*(\\.0*)?$){_DECIMAL}$", description="An exact decimal number above zero.")
]
SizeText = Annotated[str, Meta(pattern=f"^{_DECIMAL}$", description="An exact decimal number, 0 or more.")]
CandleInterval = Literal["1s", "1m", "5m", "1h", "1d"]


class ErrorDetail(Struct):
    code: Annotated[str, Meta(description="Stable, for programs: bad_field, missing_field, unauthorized ...")]
    message: Annotated[str, Meta(description="For people: what was wrong, naming the field.")]


class Error(Struct):
    """What every failure answers, with a fitting status."""

    error: ErrorDetail


# --- market -----------------------------------------------------------------------------------


class VenueQuote(Struct):
    """One venue's price in a composite tick."""

    source: str
    symbol: str
    price: DecimalText
    ts: Time


class VenueName(Struct):
    source: str
    symbol: str


class BestVenues(Struct, omit_defaults=True):
    """Which venue has the consolidated quote's bid and which its ask (a side no venue quotes is absent)."""

    bid: VenueName | UnsetType = UNSET
    ask: VenueName | UnsetType = UNSET


class Tick(Struct):
    """One price observation with its place in the hub stream. The optional fields follow ``seq`` in
    this order when the source has them, never as 0 or null when it has not; ``venues`` comes last."""

    id: Annotated[str, Meta(description="The hub id: opaque, strictly increasing.")]
    source: str
    symbol: str
    price: DecimalText
    ts: Annotated[Time, Meta(description="Source time, UTC.")]
    seq: Annotated[int, Meta(description="The source's own event number.")]
    qty: (
        Annotated[PositiveText, Meta(description="The trade's size, when the tick is a trade and the source has it.")]
        | UnsetType
    ) = UNSET
    side: (
        Annotated[Side, Meta(description="The trade's aggressor: buy lifted the ask, sell hit the bid.")] | UnsetType
    ) = UNSET
    trade_id: (
        Annotated[
            str,
            Meta(
                pattern="^[0-9A-Za-z_-]{1,64}$",
                description="The exchange's own id of the trade, when the tick is one (Binance, Coinbase, Kraken).",
            ),
        ]
        | UnsetType
    ) = UNSET
    bid: Annotated[PositiveText, Meta(description="The best bid when the tick was sent.")] | UnsetType = UNSET
    bid_qty: Annotated[SizeText, Meta(description="The size at the best bid (0: none).")] | UnsetType = UNSET
    ask: Annotated[PositiveText, Meta(description="The best ask when the tick was sent.")] | UnsetType = UNSET
    ask_qty: Annotated[SizeText, Meta(description="The size at the best ask (0: none).")] | UnsetType = UNSET
    venues: (
        Annotated[
            list[VenueQuote],
            Meta(description="Composite ticks only (source `composite`): the venues whose prices made it."),
        ]
        | UnsetType
    ) = UNSET
    best: (
        Annotated[
            BestVenues,
            Meta(description="Composite ticks with a quote: the venue of the best bid and of the best ask."),
        ]
        | UnsetType
    ) = UNSET


class Prices(Struct):
    """The latest tick of every symbol."""

    prices: list[Tick]


class History(Struct):
    """Persisted ticks of one symbol, oldest first."""

    symbol: str
    ticks: list[Tick]


class SymbolInfo(Struct):
    symbol: str
    sources: list[str]
    price: DecimalText
    last_update: Time
    last_id: str


class Symbols(Struct):
    """Every symbol the hub has a price for, with its sources and last update."""

    symbols: list[SymbolInfo]


class Candle(Struct):
    """One bucket of persisted ticks: open and close by source time (then hub order)."""

    start: Time
    open: DecimalText
    high: DecimalText
    low: DecimalText
    close: DecimalText
    count: Annotated[int, Meta(description="Ticks in the bucket, trades and quote updates alike.")]
    volume: Annotated[
        DecimalText | None, Meta(description="The sum of the trades' sizes; null when no tick carried a size.")
    ]
    trades: Annotated[int, Meta(description="Ticks that carried a size (trades).")]
    vwap: Annotated[
        DecimalText | None,
        Meta(
            description="sum(price * qty) / volume, to 18 decimal places, trailing zeros trimmed; null without volume."
        ),
    ]


class Candles(Struct):
    """OHLCV candles of one symbol from persisted ticks, oldest first, with trade count and VWAP."""

    symbol: str
    interval: CandleInterval
    candles: list[Candle]


class VenueMapping(Struct):
    symbol: str
    source: Annotated[str | None, Meta(description="null: any source.")]
    quote: str


class VenueState(Struct):
    source: str
    symbol: str
    price: DecimalText
    age_s: float
    quote: str
    ts: Time
    state: Literal["fresh", "excluded", "stale"]
    fresh: bool
    excluded: Annotated[bool, Meta(description="Fresh but an outlier right now.")]
    exclusions: Annotated[int, Meta(description="Composites it was left out of.")]


class QuoteSide(Struct):
    price: PositiveText
    qty: SizeText | None
    source: str
    symbol: str


class ConsolidatedQuote(Struct):
    bid: QuoteSide | None
    ask: QuoteSide | None


class Instrument(Struct):
    name: Annotated[str, Meta(description="The composite's symbol on the stream.")]
    quote: str
    accept: Annotated[list[str], Meta(description="Quotes counted as `quote`.")]
    status: Literal["ok", "no_data", "all_stale", "all_outliers"]
    price: Annotated[DecimalText | None, Meta(description="The composite computed now.")]
    published: int
    last_price: Annotated[DecimalText | None, Meta(description="The last one published.")]
    best: Annotated[
        ConsolidatedQuote | None,
        Meta(description="The best bid and best ask among the venues used whose quote is fresh; null: none."),
    ]
    map: list[VenueMapping]
    venues: list[VenueState]


class Instruments(Struct):
    """Canonical instruments: the map, and each venue's freshness and exclusion."""

    window_s: Annotated[float, Meta(description="How long a venue's price stays fresh, in seconds.")]
    max_deviation_pct: Annotated[DecimalText, Meta(description="Deviation from the median that excludes a venue.")]
    instruments: list[Instrument]


# --- trading ----------------------------------------------------------------------------------


class Order(Struct):
    id: int
    symbol: str
    side: Side
    qty: DecimalText
    price: DecimalText
    amount: DecimalText
    realized: DecimalText
    cash_after: DecimalText
    tick_id: str
    tick_ts: Time
    filled_at: Time
    price_source: Annotated[
        Literal["ask", "bid", "last"],
        Meta(
            description="The price it filled at: the best ask (a buy) or bid (a sell) of a fresh quote, else the last."
        ),
    ]
    last_price: Annotated[
        DecimalText | None,
        Meta(description="The last trade price when it filled (price minus it, times qty: the spread paid)."),
    ]


class OrderResult(Struct):
    """One order."""

    order: Order


class Orders(Struct):
    """The key's own orders, newest first."""

    orders: list[Order]


class AccountInfo(Struct):
    id: int
    name: str
    created_at: Time


class Position(Struct):
    symbol: str
    qty: DecimalText
    avg_cost: DecimalText | None
    cost_basis: DecimalText
    price: DecimalText | None
    market_value: DecimalText | None
    unrealized_pnl: DecimalText | None
    realized_pnl: DecimalText


class Account(Struct):
    """The key's account: cash, positions, realized and unrealized P&L."""

    account: AccountInfo
    cash: DecimalText
    positions: list[Position]
    realized_pnl: DecimalText
    unrealized_pnl: DecimalText
    equity: DecimalText
    spread_paid: Annotated[
        DecimalText,
        Meta(description="What its fills paid over the last trade price: buying at the ask, selling at the bid."),
    ]


# --- work -------------------------------------------------------------------------------------


class TestResult(Struct):
    """A turn under the lock."""

    __test__ = False  # a model, not a test class for pytest to collect

    elapsed: Annotated[float, Meta(description="Seconds since the call arrived.")]


class Task(Struct):
    """A queued task."""

    id: int
    num: int
    timeout: float
    state: Literal["pending", "running", "done"]
    added_at: Time
    started_at: Time | None
    finished_at: Time | None
    attempts: int
    position: Annotated[int, Meta(description="1 = running or next; open tasks only.")] | UnsetType = UNSET


class TaskQueue(Struct):
    """Pending and running tasks, in the order they run."""

    tasks: list[Task]


class TaskResult(Struct):
    id: int
    num: int
    timeout: float
    started_at: Time
    finished_at: Time


class TaskResults(Struct):
    """Finished tasks in completion order."""

    results: list[TaskResult]


# --- operations -------------------------------------------------------------------------------


class Pong(Struct):
    """Alive."""

    pong: bool


class Health(Struct):
    """Readiness: ok, degraded (with the reason in the part concerned) or draining."""

    status: Literal["ok", "degraded", "draining"]
    run: Annotated[int, Meta(description="The run (restart epoch) of the newest id this replica issued.")]
    hub_id: str
    role: Annotated[
        Literal["ingesting", "standby"],
        Meta(description="Whether this replica holds the ingest lease (always, with one replica)."),
    ]
    uptime_s: float
    last_id: str | None
    sources: Annotated[
        dict[str, dict[str, Any]], Meta(description="The sources this replica ingests (none on a standby).")
    ]
    broker: Annotated[
        dict[str, Any],
        Meta(description="The shared log: memory:// or the Redis stream, its state, ticks taken over, gaps."),
    ]
    writer: dict[str, Any]
    storage: Annotated[
        dict[str, Any],
        Meta(
            description="The tick table: partitions, size in bytes, the oldest tick kept, the retention, what it"
            " dropped last (the highest id and the time before which days went) and the last change's duration."
        ),
    ]
    composite: Annotated[
        dict[str, dict[str, Any]],
        Meta(description="Per instrument: ok or no_composite with the reason; venues fresh, excluded, stale."),
    ]
    tasks: dict[str, Any]
    test_lock: dict[str, Any]
    stream: dict[str, Any]
