"""The wire format every part of tickhub speaks: ticks, their JSON, SSE frames and an SSE parser.

This module imports nothing else of tickhub but its other half, :mod:`tickhub.tick_fields` (a tick's
optional fields), so sources, bots and the hub all build on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

# The optional fields are the wire's other half (tick_fields); everything of the wire is importable from here.
from .tick_fields import (  # noqa: F401
    DECIMAL_RE,
    NO_FIELDS_ROW,
    OPTIONAL_FIELDS,
    SIDES,
    TRADE_ID_RE,
    TickFields,
    TickRejected,
    check_fields,
    check_trade_id,
)

# Every pattern ends in ``\Z``, not ``$``: ``$`` also matches before a final newline, and a symbol
# "EVIL\n" that passed would break the SSE frame and the COPY row it is formatted into. With ``\Z``
# every ``.match`` of these patterns is a whole-string match.

#: Upper-case symbols: ``BTCUSD``, ``BTC-USD``, venue-qualified ``BINANCE:BTCUSDT``. No ``/``, so a
#: symbol is always one URL path segment (bridges write Kraken's ``BTC/USD`` as ``KRAKEN:BTC-USD``).
SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9._:-]{0,39}\Z")
#: A plain positive decimal (:data:`DECIMAL_RE`; above zero is checked apart).
PRICE_RE = DECIMAL_RE
#: Source names as given in ``TICKHUB_SOURCES``.
SOURCE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")
#: The wire's own timestamp form (:func:`format_ts`), kept as sent; anything else is parsed and reformatted.
#: ``fromisoformat`` alone is no check of the text: it takes any character between date and time, a newline too.
CANONICAL_TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")
#: The fields every tick has, in their order on the wire.
TICK_FIELDS = frozenset(("id", "source", "symbol", "price", "ts", "seq"))
#: Every field name the wire defines: an ``extra`` field may be none of them.
WIRE_FIELDS = TICK_FIELDS | frozenset(OPTIONAL_FIELDS)


class Tick:
    """One price observation with its place in the hub stream.

    ``price`` is the exact decimal string the source sent; ``ts`` is the canonical ISO-8601 UTC
    string and ``time`` the same instant as a datetime (for PostgreSQL). ``json`` is the encoded
    tick, computed once and shared by every subscriber and by history replays.

    The JSON is formatted, not serialized: every field is one the edges validated against a pattern
    that needs no JSON escaping (source names, symbols and prices match their patterns, ``ts`` is
    canonical). Formatting is also what keeps a tick small: the bytes orjson returns are each backed
    by a 4 KiB page while they live, so a queue of ticks cost 4 KiB each (BENCHMARKS.md, "Profile").

    ``fields`` holds the optional fields (:class:`TickFields`: size, side, trade id, best quote) or
    None; they follow ``seq`` in the JSON, in the order of :data:`OPTIONAL_FIELDS`. ``extra`` holds
    anything else a tick carries (a composite's contributing ``venues``): it follows them, encoded
    with sorted keys at every depth. PostgreSQL's jsonb reorders keys, so a canonical encoding is what
    makes a tick rebuilt from its row encode to the same bytes as the live one. The attribute is that
    encoded object (or None).
    """

    __slots__ = ("extra", "fields", "id", "json", "price", "seq", "source", "symbol", "time", "ts")

    def __init__(
        self,
        id: int,
        source: str,
        symbol: str,
        price: str,
        time: datetime,
        seq: int,
        ts: str | None = None,
        extra: Mapping[str, Any] | None = None,
        fields: TickFields | None = None,
    ) -> None:
        self.id = id
        self.source = source
        self.symbol = symbol
        self.price = price
        self.time = time
        self.ts = ts = ts if ts is not None else format_ts(time)
        self.seq = seq
        self.fields = fields
        self.extra: bytes | None = None
        head = f'{{"id":"{id}","source":"{source}","symbol":"{symbol}","price":"{price}","ts":"{ts}","seq":{seq}'
        if not extra:
            self.json = f"{head}}}".encode() if fields is None else head.encode() + fields.json + b"}"
            return
        if not WIRE_FIELDS.isdisjoint(extra):
            raise ValueError(f"extra fields may not replace {sorted(WIRE_FIELDS & set(extra))}")
        self.extra = memoryview(orjson.dumps(extra, option=orjson.OPT_SORT_KEYS)).tobytes()  # a copy: see above
        tail = b"," if fields is None else fields.json + b","
        self.json = head.encode() + tail + self.extra[1:]

    def as_dict(self) -> dict[str, Any]:
        return orjson.loads(self.json)

    def __repr__(self) -> str:
        return f"Tick({self.json.decode()})"


def tick_from_json(data: bytes | str) -> Tick:
    """The tick whose :attr:`Tick.json` is ``data`` (from a log shared with other replicas): it
    encodes to the same bytes again."""
    obj = orjson.loads(data)
    ts = obj["ts"]
    fields = TickFields.of(*map(obj.get, OPTIONAL_FIELDS))
    extra = {k: v for k, v in obj.items() if k not in WIRE_FIELDS} or None
    return Tick(int(obj["id"]), obj["source"], obj["symbol"], obj["price"], parse_ts(ts), obj["seq"], ts, extra, fields)


def format_ts(dt: datetime) -> str:
    """Canonical wire timestamp: ``2026-11-23T19:00:00.123456Z``."""
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_ts(value: object) -> datetime:
    """Parse an ISO-8601 timestamp with an offset (``Z`` allowed) into an aware UTC datetime."""
    if not isinstance(value, str) or len(value) > 40:
        raise TickRejected("bad_ts", "ts must be an ISO-8601 string")
    if not (value.isascii() and value.isprintable()) or value[10:11] not in ("T", "t", " "):
        raise TickRejected("bad_ts", f"not ISO-8601 date and time: {value[:40]!r}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise TickRejected("bad_ts", f"not ISO-8601: {value[:40]!r}") from None
    if dt.tzinfo is None:
        raise TickRejected("bad_ts", "ts needs a UTC offset")
    if dt.tzinfo is UTC:
        return dt
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00:00-05:00 is in year 10000 in UTC
        raise TickRejected("bad_ts", f"outside years 1-9999 in UTC: {value[:40]!r}") from None


def check_price(value: object) -> str:
    """Return the price string if it is a plain decimal above zero."""
    if not isinstance(value, str) or not PRICE_RE.match(value):
        raise TickRejected("bad_price", f"not a positive decimal string: {str(value)[:40]!r}")
    if not value.strip("0."):
        raise TickRejected("bad_price", "price must be above zero")
    return value


def check_symbol(value: object) -> str:
    if not isinstance(value, str) or not SYMBOL_RE.match(value):
        raise TickRejected("bad_symbol", f"bad symbol {str(value)[:40]!r}")
    return value


class SourceTick(NamedTuple):
    """A validated tick as a source sent it, before the hub gives it an id."""

    symbol: str
    price: str
    time: datetime
    ts: str
    seq: int
    #: Anything else the tick carries (see :class:`Tick`): a composite's ``venues``.
    extra: Mapping[str, Any] | None = None
    #: The optional fields (size, side, trade id, best quote), or None.
    fields: TickFields | None = None


def parse_source_tick(data: str | bytes, event_id: str | None = None) -> SourceTick:
    """Validate one source event's data; raise :class:`TickRejected` naming the reason."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise TickRejected("bad_json") from None
    if not isinstance(obj, dict):
        raise TickRejected("bad_json", "tick must be a JSON object")
    try:
        symbol, price, ts = obj["symbol"], obj["price"], obj["ts"]
    except KeyError as exc:
        raise TickRejected("missing_field", str(exc)) from None
    seq = obj.get("seq")
    if seq is None and event_id is not None:
        seq = int(event_id) if event_id.isascii() and event_id.isdigit() else None
    if seq is None:
        raise TickRejected("missing_field", "'seq'")
    if type(seq) is not int or seq <= 0 or seq >= 1 << 63:
        raise TickRejected("bad_seq", f"seq must be a positive integer, got {str(seq)[:24]!r}")
    # The checks of check_symbol, check_price and parse_ts, inlined: this runs for every tick.
    if type(symbol) is not str or SYMBOL_RE.match(symbol) is None:
        check_symbol(symbol)
    if type(price) is not str or PRICE_RE.match(price) is None or not price.strip("0."):
        check_price(price)
    fields = check_fields(obj)
    if type(ts) is str and len(ts) == 27 and CANONICAL_TS_RE.match(ts) is not None:
        try:  # already canonical: parse it, keep the text
            return SourceTick(symbol, price, datetime.fromisoformat(ts), ts, seq, None, fields)
        except ValueError:
            raise TickRejected("bad_ts", f"not ISO-8601: {ts!r}") from None
    time = parse_ts(ts)
    return SourceTick(symbol, price, time, format_ts(time), seq, None, fields)


def source_tick_json(
    source: str, symbol: str, price: str, ts: str, seq: int, fields: Mapping[str, object] | TickFields | None = None
) -> bytes:
    """The data line a source publishes for one tick: the optional ``fields`` (by name, None for an
    absent one) follow ``seq`` in the order of :data:`OPTIONAL_FIELDS`; anything else in it is left out.
    A :class:`TickFields` (validated values) is written as its :attr:`TickFields.json`."""
    tick = {"source": source, "symbol": symbol, "price": price, "ts": ts, "seq": seq}
    if type(fields) is TickFields:
        return orjson.dumps(tick)[:-1] + fields.json + b"}"
    if fields:
        for name in OPTIONAL_FIELDS:
            value = fields.get(name)  # type: ignore[union-attr]
            if value is not None:
                tick[name] = value
    return orjson.dumps(tick)


# --- SSE frames -------------------------------------------------------------------------------


def tick_frame(id: int, data: bytes) -> bytes:
    """A ``tick`` event with its id; ``data`` is one line of JSON."""
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (id, data)


def event_frame(event: str, data: bytes, id: str | int | None = None) -> bytes:
    head = b"" if id is None else b"id: %b\n" % str(id).encode()
    return b"%bevent: %b\ndata: %b\n\n" % (head, event.encode(), data)


def retry_frame(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


def comment_frame(text: str = "ping") -> bytes:
    return b": %b\n\n" % text.encode()


# --- SSE parsing ------------------------------------------------------------------------------


class SSEEvent(NamedTuple):
    event: str
    data: str
    id: str | None


_WHOLE_EVENT = re.compile(rb"id: ?([^\n]*)\nevent: ?([^\n]*)\ndata: ?([^\n]*)\n\n")
_DECIMAL = rb"(?:0|[1-9][0-9]{0,23})(?:\.[0-9]{1,18})?"
#: A tick frame exactly as :func:`source_tick_json` and :func:`tick_frame` write it, its values already
#: in the shapes :func:`parse_source_tick` accepts (the source name is the hub's own, so it is skipped).
#: The optional fields after ``seq`` are part of the form, as one group (the tick's JSON takes it as
#: it is) and each on its own; a size only after its price. A tick without them ends at the first
#: alternative.
_SOURCE_TICK = re.compile(
    rb'id: ?([0-9]{1,19})\nevent: ?tick\ndata: ?\{"source":"[^"\\\x00-\x1f]{0,64}",'
    rb'"symbol":"([A-Z0-9][A-Z0-9._:-]{0,39})","price":"(' + _DECIMAL + rb')",'
    rb'"ts":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)","seq":([1-9][0-9]{0,18})'
    rb'(?:\}\n\n|((?:,"qty":"(' + _DECIMAL + rb')")?(?:,"side":"(buy|sell)")?'
    rb'(?:,"trade_id":"([0-9A-Za-z_-]{1,64})")?(?:,"bid":"(' + _DECIMAL + rb')"(?:,"bid_qty":"(' + _DECIMAL + rb')")?)?'
    rb'(?:,"ask":"(' + _DECIMAL + rb')"(?:,"ask_qty":"(' + _DECIMAL + rb')")?)?)\}\n\n)'
)
_SEQ_LIMIT = 1 << 63
_NULL = b"\\N"


def _canonical_tick(match: re.Match[bytes]) -> SourceTick | None:
    """The tick of a :data:`_SOURCE_TICK` match, or None if a value is out of range (the general path
    then rejects the event with its reason)."""
    symbol, price, ts, seq = match.group(2, 3, 4, 5)
    seq_value = int(seq)
    if seq_value >= _SEQ_LIMIT or not price.strip(b"0."):
        return None
    ts_text = ts.decode()
    try:
        time = datetime.fromisoformat(ts_text)
    except ValueError:  # the right shape, not a date (Feb 30)
        return None
    if match.lastindex == 5:  # no optional field
        return SourceTick(symbol.decode(), price.decode(), time, ts_text, seq_value)
    tail, *values = match.group(6, 7, 8, 9, 10, 11, 12, 13)
    qty, _, _, bid, _, ask, _ = values
    if (
        (qty is not None and not qty.strip(b"0."))
        or (bid is not None and not bid.strip(b"0."))
        or (ask is not None and not ask.strip(b"0."))
    ):
        return None
    try:
        row = b"\t".join(values)  # every field present: the usual case of a source that has them
    except TypeError:
        row = b"\t".join([_NULL if v is None else v for v in values])
    return SourceTick(symbol.decode(), price.decode(), time, ts_text, seq_value, None, TickFields(tail, row))


class SSEParser:
    """Incremental parser for ``text/event-stream`` bytes (WHATWG rules) with size limits.

    Feed it chunks as they arrive; it yields complete events. Comment lines count as
    heartbeats (``comments``). A line longer than ``max_line``, or an event whose data grows
    beyond ``max_event``, discards that event, counts it in ``oversized`` and parsing goes on
    with the next one, so one bad event never costs the good ones around it.

    With ``ticks=True`` (the hub's ingest) a tick event in the exact form sources write is
    validated on the spot and yielded as a :class:`SourceTick`, equal to what
    :func:`parse_source_tick` makes of it: one regex match per tick instead of a match, a JSON
    parse and three pattern checks. Every other event, including a tick in any other form or
    with a value out of range, is yielded as an :class:`SSEEvent` for the general path.
    """

    __slots__ = (
        "_buf",
        "_cr",
        "_data",
        "_event",
        "_id",
        "_last",
        "_size",
        "_skip",
        "_ticks",
        "comments",
        "max_event",
        "max_line",
        "oversized",
        "retry",
    )

    def __init__(self, max_line: int = 65536, max_event: int = 262144, ticks: bool = False) -> None:
        self._ticks = ticks
        self.max_line = max_line
        self.max_event = max_event
        self._buf = b""
        self._cr = False
        self._data: list[bytes] = []
        self._size = 0
        self._event = b""
        self._id: bytes | None = None
        #: The last ``retry:`` value the server sent, in milliseconds.
        self.retry: int | None = None
        self._skip = False  # inside an oversized event: drop lines until its blank line
        self.comments = 0
        self.oversized = 0
        self._last: bytes | None = None

    @property
    def last_id(self) -> str | None:
        """The id of the last event dispatched (WHATWG's last event ID), or None."""
        return None if self._last is None else self._last.decode("utf-8", "replace")

    def feed(self, chunk: bytes) -> Iterator[SSEEvent | SourceTick]:
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the \n of a \r\n split across chunks
        self._cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        pos = 0
        while True:
            if not (self._data or self._event or self._skip):
                if self._ticks:
                    match = _SOURCE_TICK.match(buf, pos)
                    if match is not None and match.end() - pos <= self.max_line:
                        tick = _canonical_tick(match)
                        if tick is not None:
                            self._id = self._last = match[1]
                            yield tick
                            pos = match.end()
                            continue
                # Fast path for the frame every source sends, ``id:``, ``event:``, ``data:`` and a blank
                # line: one regex match per event instead of a Python step per line.
                match = _WHOLE_EVENT.match(buf, pos)
                if match is not None and match.end(3) - match.start(3) <= self.max_line:
                    event_id, event, data = match.groups()
                    if b"\0" not in event_id:
                        self._id = self._last = event_id
                    yield SSEEvent(
                        event.decode("utf-8", "replace") or "message", data.decode("utf-8", "replace"), self.last_id
                    )
                    pos = match.end()
                    continue
            end = buf.find(b"\n\n", pos)
            if end < 0:
                break
            # Anything else, up to the end of the next event, takes the general path.
            yield from self._lines([*buf[pos:end].split(b"\n"), b""])
            pos = end + 2
        self._buf = buf[pos:] if pos else buf
        if self._buf:
            *lines, self._buf = self._buf.split(b"\n")
            yield from self._lines(lines)
        if len(self._buf) > self.max_line:
            self._buf = b""
            if not self._skip:
                self._discard_event()

    def _lines(self, lines: list[bytes]) -> Iterator[SSEEvent]:
        for line in lines:
            if not line:
                if self._skip:
                    self._skip = False
                    self._reset()
                    continue
                event = self._dispatch()
                if event is not None:
                    yield event
            elif self._skip:
                continue
            elif len(line) > self.max_line:
                self._discard_event()
            elif line[0] == 58:  # ':' comment, used as heartbeat
                self.comments += 1
            else:
                self._field(line)

    def _field(self, line: bytes) -> None:
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self.max_event:
                self._discard_event()
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\0" not in value:
                self._id = value
        elif name == b"retry" and value.isdigit():
            self.retry = int(value)

    def _discard_event(self) -> None:
        self.oversized += 1
        self._skip = True
        self._reset()

    def _reset(self) -> None:
        self._data = []
        self._size = 0
        self._event = b""

    def _dispatch(self) -> SSEEvent | None:
        if self._id is not None:
            self._last = self._id
        if not self._data:
            self._event = b""
            return None
        event = SSEEvent(
            self._event.decode("utf-8", "replace") or "message",
            b"\n".join(self._data).decode("utf-8", "replace"),
            self.last_id,
        )
        self._reset()
        return event
