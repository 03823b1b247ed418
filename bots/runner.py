"""The bot runner: follows the hub's /stream with sseclient-py and trades through POST /orders.

It resumes with Last-Event-ID after any disconnect (capped, jittered backoff), and keys every
tick on ``(source, seq)``, so a tick the hub sends again (after a crash, under a new id) is handled
once; it counts those it dropped and logs the count. Orders carry an Idempotency-Key made from the
tick, so a retried POST fills once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from decimal import ROUND_DOWN, Decimal
from typing import Any

import orjson
import requests
import sseclient
import stamina

from tickhub.backoff import Backoff

from .strategies import STRATEGIES, Strategy, is_dip, is_peak

QTY_STEP = Decimal("0.0001")


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


class HubRefused(Exception):
    """The hub answered a request with an error we should not retry."""


class BotStopped(BaseException):
    """Raised by the signal handler to break out of a blocking read (BaseException: no handler eats it)."""


class ServerError(Exception):
    """A 5xx answer: worth retrying with the same Idempotency-Key."""


class BotRunner:
    def __init__(
        self,
        name: str,
        strategy: Strategy,
        hub_url: str,
        api_key: str,
        symbols: Iterable[str],
        budget: Decimal = Decimal(1000),
        read_timeout: float = 45.0,
        reconnect_max: float = 10.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.hub_url = hub_url.rstrip("/")
        self.symbols = sorted({s.strip().upper() for s in symbols if s.strip()})
        self.budget = budget
        self.read_timeout = read_timeout
        self.backoff = Backoff(0.25, reconnect_max)
        self.log = log or logging.getLogger(f"tickhub.bot.{name}")
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Bearer {api_key}"
        self.prices: dict[str, deque[Decimal]] = {}
        self.paid: dict[str, Decimal] = {}  # symbol -> average price of the lot held
        self.held: dict[str, Decimal] = {}
        self.seen = SeenTicks()
        self.last_event_id: str | None = None
        self.handled: deque[tuple[str, str, int]] = deque(maxlen=100_000)  # (id, source, seq), newest last
        self.repeats = 0  # ticks dropped because their (source, seq) was handled already
        self.fills = 0
        self._stop = threading.Event()

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to return at the next event or heartbeat (safe from another thread)."""
        self._stop.set()

    def run(self) -> None:
        """Trade until stop() or BotStopped; reconnects and resumes on any stream failure."""
        try:
            self._load_account()
            while not self._stop.is_set():
                self._follow_stream_or_wait()
        except BotStopped:
            self._stop.set()

    def _follow_stream_or_wait(self) -> None:
        if True:
            try:
                self._follow_stream()
            except (requests.RequestException, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                delay = self.backoff.next_delay()
                self.log.info(
                    "stream lost (%s); resuming after id %s in %.2fs",
                    type(exc).__name__,
                    self.last_event_id,
                    delay,
                )
                self._stop.wait(delay)

    # -- the stream ------------------------------------------------------------------------

    def _follow_stream(self) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        params = {"symbols": ",".join(self.symbols)} if self.symbols else {}
        response = requests.get(
            f"{self.hub_url}/stream", params=params, headers=headers, stream=True, timeout=(5, self.read_timeout)
        )
        self._response = response
        try:
            response.raise_for_status()
            for event in sseclient.SSEClient(self._chunks(response)).events():
                if self._stop.is_set():
                    return
                self.backoff.reset()
                if event.id:
                    self.last_event_id = event.id
                if event.event == "tick":
                    self.on_tick(orjson.loads(event.data))
                elif event.event == "snapshot":
                    for tick in orjson.loads(event.data)["ticks"]:
                        self.on_tick(tick)
                elif event.event == "resync":
                    self.log.info("resync (%s): starting price history afresh", event.data)
                    self.prices.clear()
            if not self._stop.is_set():
                raise ConnectionError("the hub ended the stream")
        finally:
            response.close()

    def _chunks(self, response: requests.Response) -> Iterable[bytes]:
        """The body as it arrives, ending early once stop() was called (checked at every heartbeat)."""
        for chunk in response.iter_content(chunk_size=None):
            yield chunk
            if self._stop.is_set():
                return

    def on_tick(self, tick: dict[str, Any]) -> None:
        source, seq, symbol = tick["source"], tick["seq"], tick["symbol"]
        if not self.seen.first_time(source, seq):
            self.repeats += 1  # sent again (after a hub crash, under a new id): handled already
            if self.repeats in (1, 10, 100) or self.repeats % 1000 == 0:
                self.log.info(
                    "dropped (%s, %s) sent again as id %s; %d repeats so far", source, seq, tick["id"], self.repeats
                )
            return
        self.handled.append((tick["id"], source, seq))
        prices = self.prices.setdefault(symbol, deque(maxlen=3))
        prices.append(Decimal(tick["price"]))
        decision = self.strategy(prices, self.paid.get(symbol))
        if decision is not None:
            self._act(decision, symbol, prices, tick)

    # -- orders ----------------------------------------------------------------------------

    def _act(self, side: str, symbol: str, prices: deque[Decimal], tick: dict[str, Any]) -> None:
        price = prices[-1]
        shape = "dip" if is_dip(prices) else "peak" if is_peak(prices) else "move"
        trail = " ".join(str(p) for p in prices)
        if side == "buy":
            qty = (self.budget / price).quantize(QTY_STEP, rounding=ROUND_DOWN)
            if qty <= 0:
                self.log.info("%s %s at %s: budget %s buys nothing", shape, symbol, price, self.budget)
                return
        else:
            qty = self.held[symbol]
        self.log.info("%s on %s (%s) -> %s %s", shape, symbol, trail, side, qty)
        try:
            order = self._post_order(symbol, side, qty, key=f"{self.name}-{tick['id']}-{symbol}-{side}")
        except HubRefused as exc:
            self.log.info("%s %s %s refused: %s", side, qty, symbol, exc)
            return
        except (requests.RequestException, ServerError) as exc:
            self.log.warning("%s %s %s failed: %s", side, qty, symbol, exc)
            return
        self.fills += 1
        fill_qty, fill_price = Decimal(order["qty"]), Decimal(order["price"])
        if side == "buy":
            self.held[symbol] = fill_qty
            self.paid[symbol] = fill_price
        else:
            self.held.pop(symbol, None)
            self.paid.pop(symbol, None)
        self.log.info(
            "filled #%d %s %s %s @ %s (tick %s); cash %s, realized %s",
            order["id"],
            side,
            order["qty"],
            symbol,
            order["price"],
            order["tick_id"],
            order["cash_after"],
            order["realized"],
        )

    @stamina.retry(on=(requests.ConnectionError, requests.Timeout, ServerError), attempts=3, wait_max=2.0)
    def _post_order(self, symbol: str, side: str, qty: Decimal, key: str) -> dict[str, Any]:
        response = self.api.post(
            f"{self.hub_url}/orders",
            json={"symbol": symbol, "side": side, "qty": format(qty, "f")},  # never "1E-7"
            headers={"Idempotency-Key": key},
            timeout=10,
        )
        if response.status_code >= 500:
            raise ServerError(f"HTTP {response.status_code}")
        body = response.json()
        if response.status_code >= 400:
            raise HubRefused(f"{response.status_code} {body['error']['code']}: {body['error']['message']}")
        return body["order"]

    def account(self) -> dict[str, Any]:
        response = self.api.get(f"{self.hub_url}/accounts/me", timeout=10)
        if response.status_code != 200:
            raise HubRefused(f"GET /accounts/me: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    def _load_account(self) -> None:
        """Start from the lots the account already holds (a restarted bot keeps its positions)."""
        for position in self.account()["positions"]:
            if Decimal(position["qty"]) > 0 and position["symbol"] in self.symbols:
                self.held[position["symbol"]] = Decimal(position["qty"])
                self.paid[position["symbol"]] = Decimal(position["avg_cost"])

    def final_report(self) -> str:
        me = self.account()
        return (
            f"{self.name}: final P&L: realized {me['realized_pnl']}, unrealized {me['unrealized_pnl']}; "
            f"cash {me['cash']}, equity {me['equity']}; {self.fills} fills this run; {self.repeats_summary()}"
        )

    def repeats_summary(self) -> str:
        """How many ticks were dropped as already handled, for the exit line."""
        return f"{self.repeats} repeated tick{'' if self.repeats == 1 else 's'} dropped"


def run_until_signal(runner: BotRunner, install: Callable[[Callable[[], None]], None]) -> None:
    """Run, letting ``install`` wire stop() to the process's signals; print the final P&L line."""
    install(runner.stop)
    started = time.monotonic()
    try:
        runner.run()
    finally:
        try:
            runner.log.info("%s", runner.final_report())
        except (requests.RequestException, HubRefused) as exc:
            runner.log.warning(
                "%s: no final P&L (hub unreachable: %s) after %.0fs; %s",
                runner.name,
                exc,
                time.monotonic() - started,
                runner.repeats_summary(),
            )


def add_arguments(parser: Any) -> None:
    parser.add_argument("strategy", choices=sorted(STRATEGIES), help="which bot to run")
    parser.add_argument(
        "--symbols", default=None, help="comma-separated symbols (default: $INTERESTED_IN, else all the hub has)"
    )
    parser.add_argument("--hub", default=None, help="hub URL (default: $TICKHUB_HUB_URL or http://127.0.0.1:8000)")
    parser.add_argument("--budget", default="1000", help="cash spent on each buy (default 1000)")
    parser.add_argument("--name", default=None, help="name in the log (default: the strategy)")


def main(args: Any) -> int:
    """``tickhub bot NAME``: the API key comes from TICKHUB_API_KEY, never from the command line."""
    import os
    import signal

    api_key = os.environ.get("TICKHUB_API_KEY", "").strip()
    if not api_key:
        raise ValueError("TICKHUB_API_KEY is not set (create one with: tickhub keys create NAME)")
    symbols = (args.symbols or os.environ.get("INTERESTED_IN", "")).split(",")
    hub = args.hub or os.environ.get("TICKHUB_HUB_URL", "http://127.0.0.1:8000")
    try:
        budget = Decimal(args.budget)
    except ArithmeticError:
        raise ValueError(f"--budget must be a number, got {args.budget!r}") from None
    if not budget.is_finite() or budget <= 0:
        raise ValueError("--budget must be above zero")
    runner = BotRunner(args.name or args.strategy, STRATEGIES[args.strategy], hub, api_key, symbols, budget)

    def install(stop: Callable[[], None]) -> None:
        def on_signal(*_: object) -> None:
            stop()
            raise BotStopped

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    run_until_signal(runner, install)
    return 0
