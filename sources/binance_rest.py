"""Binance REST, within its limits: exchangeInfo checks, ticker/price snapshots and the REST poller.

Every response's ``X-MBX-USED-WEIGHT-1M`` is kept; the poller stretches its interval as the IP's
weight for the current minute nears the limit (6000). HTTP 429 means wait ``Retry-After`` seconds;
HTTP 418 means the IP is banned for ``Retry-After`` seconds: polling stops until then, and /health says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson

from tickhub.backoff import Backoff
from tickhub.wire import format_ts

from .exchange import BridgeError, Quote, now_ts

if TYPE_CHECKING:
    from .bridge import ExchangeBridge

log = logging.getLogger("tickhub.bridge.binance")

EXCHANGE_INFO = "/api/v3/exchangeInfo"
TICKER_PRICE = "/api/v3/ticker/price"
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
INVALID_SYMBOL = -1121
DEFAULT_RETRY_AFTER = 60.0  # when a 429/418 comes without Retry-After
SYMBOLS_PER_REQUEST = 100  # keeps ?symbols=[...] URLs short
T = TypeVar("T")


class BinanceApiError(Exception):
    """Binance answered 4xx with its ``{"code", "msg"}`` error body."""

    def __init__(self, status: int, code: int | None, msg: str) -> None:
        super().__init__(f"HTTP {status}, code {code}: {msg}")
        self.status, self.code, self.msg = status, code, msg


class RestUnavailable(Exception):
    """No usable answer (network, timeout, 5xx, not JSON): worth trying again later."""


def compact_json(values: Sequence[str]) -> str:
    """``["BTCUSDT","ETHUSDT"]``: the form Binance wants for ``symbols=``."""
    return orjson.dumps(list(values)).decode()


def retry_after(headers: Any) -> float:
    raw = headers.get("Retry-After", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return DEFAULT_RETRY_AFTER


def next_poll_delay(interval: float, used_weight: int | None, limit: int, now: float) -> float:
    """Seconds before the next poll: ``interval``, stretched as this minute's used weight nears ``limit``."""
    if used_weight is None or used_weight < limit * 0.5:
        return interval
    if used_weight < limit * 0.9:
        return interval * 2  # half the budget is gone (other clients on this IP?): ease off
    return max(interval, 60.0 - now % 60.0 + 0.5)  # nearly out: wait for the next minute's fresh budget


class BinanceRest:
    """GETs against Binance's REST API that honour its weight, 429 and 418 answers."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout: float, weight_limit: int) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.weight_limit = weight_limit
        self.used_weight: int | None = None
        self.state = "ok"  # ok, throttled, rate_limited, banned
        self.paused_until: float | None = None  # wall clock, for /health
        self.retry_after: float | None = None
        self.requests = 0
        self.rate_limited = 0
        self.bans = 0

    async def get(self, path: str, params: dict[str, str] | None = None, *, ban_is_fatal: bool = False) -> Any:
        """The decoded JSON body; waits out 429s and (unless ``ban_is_fatal``) 418 bans, then retries."""
        while True:
            status, headers, body = await self._request(path, params)
            if status not in (418, 429):
                break
            wait = retry_after(headers)
            if status == 418:
                self.bans += 1
                if ban_is_fatal:
                    raise BridgeError(f"Binance has banned this IP for {wait:g}s (HTTP 418); start again later")
                log.error("Binance banned this IP (HTTP 418): no requests for %gs", wait)
            else:
                self.rate_limited += 1
                log.warning("Binance rate limit (HTTP 429): waiting %gs as Retry-After asks", wait)
            await self._pause(wait, "banned" if status == 418 else "rate_limited")
        if status >= 500:
            raise RestUnavailable(f"{path}: HTTP {status}")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RestUnavailable(f"{path}: HTTP {status}, body is not JSON") from None
        if status >= 400:
            error = data if isinstance(data, dict) else {}
            raise BinanceApiError(status, error.get("code"), str(error.get("msg", body[:200])))
        if self.state in ("rate_limited", "banned"):
            self.state = "ok"
        return data

    async def _pause(self, seconds: float, state: str) -> None:
        self.state, self.retry_after = state, seconds
        self.paused_until = time.time() + seconds
        try:
            await asyncio.sleep(seconds)
        finally:
            self.paused_until = None

    async def _request(self, path: str, params: dict[str, str] | None) -> tuple[int, Any, bytes]:
        self.requests += 1
        try:
            async with self.session.get(self.base_url + path, params=params, timeout=self.timeout) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RestUnavailable(f"{path}: {type(exc).__name__}: {exc}") from None
        raw_weight = resp.headers.get(WEIGHT_HEADER, "")
        if raw_weight.isascii() and raw_weight.isdigit():
            self.used_weight = int(raw_weight)
        return resp.status, resp.headers, body

    def health(self) -> dict[str, Any]:
        return {
            "url": self.base_url,
            "state": self.state,
            "used_weight_1m": self.used_weight,
            "weight_limit": self.weight_limit,
            "paused_until": format_ts_wall(self.paused_until),
            "retry_after_s": self.retry_after if self.paused_until else None,
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "bans": self.bans,
        }


def format_ts_wall(wall: float | None) -> str | None:
    return None if wall is None else format_ts(datetime.fromtimestamp(wall, UTC))


async def with_retries(call: Callable[[], Awaitable[T]], what: str, attempts: int, backoff: Backoff) -> T:
    """Start-up calls: a few capped, jittered retries while Binance is unreachable, then one clear error."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except RestUnavailable as exc:
            if attempt == attempts:
                raise BridgeError(f"cannot {what} from Binance after {attempts} attempts: {exc}") from None
            delay = backoff.next_delay()
            log.warning("cannot %s (%s); retrying in %.2fs", what, exc, delay)
            await asyncio.sleep(delay)
        except BinanceApiError as exc:
            raise BridgeError(f"Binance refused to {what}: {exc}") from None
    raise AssertionError("unreachable")


async def trading_symbols(rest: BinanceRest, symbols: Sequence[str] | None) -> set[str]:
    """The TRADING symbols among ``symbols`` (every pair when None); unknown or halted ones are refused."""
    info: Any
    if symbols:
        try:
            info = await rest.get(EXCHANGE_INFO, {"symbols": compact_json(symbols)}, ban_is_fatal=True)
        except BinanceApiError as exc:
            if exc.code != INVALID_SYMBOL:
                raise
            info = await rest.get(EXCHANGE_INFO, ban_is_fatal=True)  # the full list tells which ones are unknown
    else:
        info = await rest.get(EXCHANGE_INFO, ban_is_fatal=True)
    rows = info.get("symbols") if isinstance(info, dict) else None
    if not isinstance(rows, list):
        raise RestUnavailable("exchangeInfo has no symbol list")
    status = {r["symbol"]: r.get("status") for r in rows if isinstance(r, dict) and isinstance(r.get("symbol"), str)}
    if not symbols:
        return {s for s, st in status.items() if st == "TRADING"}
    problems = []
    unknown = [s for s in symbols if s not in status]
    halted = [f"{s} ({status[s]})" for s in symbols if s in status and status[s] != "TRADING"]
    if unknown:
        problems.append("unknown: " + ", ".join(unknown))
    if halted:
        problems.append("not trading: " + ", ".join(halted))
    if problems:
        raise BridgeError("Binance refuses these symbols, " + "; ".join(problems))
    return set(symbols)


async def ticker_prices(rest: BinanceRest, symbols: Sequence[str] | None) -> list[Any]:
    """``GET /api/v3/ticker/price`` rows for ``symbols`` (every pair when None)."""
    if not symbols:
        batches: list[dict[str, str] | None] = [None]
    else:
        ordered = sorted(symbols)
        batches = [
            {"symbols": compact_json(ordered[i : i + SYMBOLS_PER_REQUEST])}
            for i in range(0, len(ordered), SYMBOLS_PER_REQUEST)
        ]
    rows: list[Any] = []
    for params in batches:
        data = await rest.get(TICKER_PRICE, params)
        if not isinstance(data, list):
            raise RestUnavailable("ticker/price did not answer a list")
        rows += data
    return rows


class TickerPoller:
    """REST mode: poll ``ticker/price`` every ``interval`` s; publish only prices that changed."""

    def __init__(
        self,
        bridge: ExchangeBridge,
        rest: BinanceRest,
        interval: float,
        symbols: Sequence[str] | None,
        allowed: set[str],
    ) -> None:
        self.bridge = bridge
        self.rest = rest
        self.interval = interval
        self.symbols = symbols
        self.allowed = allowed  # TRADING symbols: halted pairs keep a stale price we should not repeat
        self.last: dict[str, str] = {}
        self.polls = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_rows = 0
        self.last_published = 0
        self.ok = False

    def publish_changes(self, rows: list[Any], ts: str) -> int:
        """Publish each row whose price differs from the last poll's; returns how many."""
        published, venue = 0, self.bridge.adapter
        for row in rows:
            symbol = row.get("symbol") if isinstance(row, dict) else None
            price = row.get("price") if isinstance(row, dict) else None
            if not isinstance(symbol, str) or not isinstance(price, str):
                self.bridge.malformed["missing_field"] += 1
                continue
            if symbol not in self.allowed or self.last.get(symbol) == price:
                continue
            self.last[symbol] = price
            self.bridge.publish(Quote(venue.hub_symbol(symbol), price, ts))
            published += 1
        return published

    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                rows = await ticker_prices(self.rest, self.symbols)
            except (RestUnavailable, BinanceApiError) as exc:
                self.errors, self.ok, self.last_error = self.errors + 1, False, str(exc)[:300]
                delay = backoff.next_delay()
                log.warning("poll failed (%s); next try in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.polls, self.ok, self.last_rows = self.polls + 1, True, len(rows)
            self.last_published = self.publish_changes(rows, now_ts())
            delay = next_poll_delay(self.interval, self.rest.used_weight, self.rest.weight_limit, time.time())
            if delay > self.interval:
                self.rest.state = "throttled"
                log.warning("used weight %s of %d this minute: next poll in %.1fs", self.rest.used_weight,
                            self.rest.weight_limit, delay)  # fmt: skip
            elif self.rest.state == "throttled":
                self.rest.state = "ok"
            await asyncio.sleep(delay)

    def health(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval,
            "polls": self.polls,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_poll_rows": self.last_rows,
            "last_poll_published": self.last_published,
            "pairs": len(self.last),
        }
