"""The canonical instrument map: which prices on the hub stream quote the same asset.

Read from the TOML file ``TICKHUB_INSTRUMENTS`` names; unset, the built-in map
(``src/tickhub/instruments.toml``, which also documents the format); ``none``, no instruments.
A venue entry matches a tick when the symbols are equal and, if the entry names a source, the
tick comes from that source. Every (source, symbol) pair that matches is one venue of the
instrument, so an entry without a source yields one venue per source publishing its symbol.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .wire import SOURCE_NAME_RE, SYMBOL_RE

#: The pseudo-source of composite ticks; no configured source may take its name.
COMPOSITE_SOURCE = "composite"
#: ``TICKHUB_INSTRUMENTS`` value that turns composites off.
NO_INSTRUMENTS = "none"
QUOTE_RE = re.compile(r"^[A-Z][A-Z0-9]{1,11}$")


class InstrumentsError(ValueError):
    """The instrument map cannot be used; the message names the file and the entry, on one line."""


@dataclass(frozen=True)
class VenueSpec:
    """One venue entry of the map."""

    symbol: str
    source: str | None  # None: the symbol from any source
    quote: str

    def matches(self, source: str) -> bool:
        return self.source is None or self.source == source


@dataclass(frozen=True)
class Instrument:
    """A canonical instrument: its name (the composite's symbol), quote currency and venues."""

    name: str
    quote: str
    accept: tuple[str, ...]
    venues: tuple[VenueSpec, ...]


def load_instruments(value: str) -> tuple[Instrument, ...]:
    """The map a ``TICKHUB_INSTRUMENTS`` value names: '' → built-in, 'none' → empty, else a TOML path."""
    value = value.strip()
    if value.lower() == NO_INSTRUMENTS:
        return ()
    if not value:
        text = resources.files("tickhub").joinpath("instruments.toml").read_text()
        return parse_instruments(text, "built-in instruments.toml")
    try:
        text = Path(value).read_text()
    except OSError as exc:
        raise InstrumentsError(f"cannot read {value}: {exc.strerror or exc}") from None
    return parse_instruments(text, value)


def parse_instruments(text: str, origin: str = "instruments") -> tuple[Instrument, ...]:
    """Parse and check a map; raise :class:`InstrumentsError` naming ``origin`` and the bad entry."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InstrumentsError(f"{origin}: not valid TOML: {exc}") from None
    _only_keys(doc, {"instruments"}, origin)
    table = doc.get("instruments", {})
    if not isinstance(table, dict):
        raise InstrumentsError(f"{origin}: 'instruments' must be a table of [instruments.NAME] sections")
    instruments = tuple(_instrument(name, body, f"{origin}: instruments.{name}") for name, body in table.items())
    names = {i.name for i in instruments}
    for instrument in instruments:
        for venue in instrument.venues:
            if venue.symbol in names:
                raise InstrumentsError(
                    f"{origin}: instruments.{instrument.name}: venue symbol {venue.symbol} is also an instrument's"
                    " name; composites and source ticks would share one symbol"
                )
    return instruments


def _instrument(name: str, body: Any, where: str) -> Instrument:
    if not SYMBOL_RE.match(name):
        raise InstrumentsError(f"{where}: the name must be an upper-case symbol such as BTC-USD")
    if not isinstance(body, dict):
        raise InstrumentsError(f"{where}: must be a table")
    _only_keys(body, {"quote", "accept", "venues"}, where)
    quote = _quote(body.get("quote"), f"{where}.quote")
    accept_raw = body.get("accept", [])
    if not isinstance(accept_raw, list):
        raise InstrumentsError(f"{where}.accept: must be a list of currency codes")
    accept = tuple(_quote(q, f"{where}.accept") for q in accept_raw)
    if quote in accept:
        raise InstrumentsError(f"{where}.accept: lists the instrument's own quote {quote}")
    venues_raw = body.get("venues")
    if not isinstance(venues_raw, list) or not venues_raw:
        raise InstrumentsError(f"{where}.venues: must be a non-empty list of {{symbol, source, quote}} tables")
    venues = tuple(_venue(v, quote, accept, f"{where}.venues[{i}]") for i, v in enumerate(venues_raw))
    for i, venue in enumerate(venues):
        for other in venues[:i]:
            if other.symbol == venue.symbol and (
                other.source is None or venue.source is None or other.source == venue.source
            ):
                raise InstrumentsError(f"{where}.venues[{i}]: {venue.symbol} is already matched by an earlier entry")
    return Instrument(name, quote, accept, venues)


def _venue(raw: Any, quote: str, accept: tuple[str, ...], where: str) -> VenueSpec:
    if not isinstance(raw, dict):
        raise InstrumentsError(f'{where}: must be a table such as {{ symbol = "BTCUSD", quote = "USD" }}')
    _only_keys(raw, {"symbol", "source", "quote"}, where)
    symbol = raw.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol.upper()):
        raise InstrumentsError(f"{where}.symbol: must be a symbol as on the hub stream, e.g. KRAKEN:BTC-USD")
    source = raw.get("source")
    if source is not None and (not isinstance(source, str) or not SOURCE_NAME_RE.match(source)):
        raise InstrumentsError(f"{where}.source: must be a lower-case source name as in TICKHUB_SOURCES")
    if source == COMPOSITE_SOURCE:
        raise InstrumentsError(f"{where}.source: composite ticks never feed a composite")
    if "quote" not in raw:
        raise InstrumentsError(f"{where}.quote: required (the currency of this venue's prices)")
    venue_quote = _quote(raw["quote"], f"{where}.quote")
    if venue_quote != quote and venue_quote not in accept:
        raise InstrumentsError(
            f"{where}: {symbol} is quoted in {venue_quote} but the instrument in {quote};"
            f' add accept = ["{venue_quote}"] to count {venue_quote} as {quote}'
        )
    return VenueSpec(symbol.upper(), source, venue_quote)


def _quote(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not QUOTE_RE.match(raw.upper()):
        raise InstrumentsError(f"{where}: must be a currency code such as USD or USDT")
    return raw.upper()


def _only_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InstrumentsError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(allowed))})")
