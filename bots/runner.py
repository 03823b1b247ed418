"""The bot runner: follows the hub with tickhub.client's synchronous subscription and trades through it.

The client resumes with Last-Event-ID after any disconnect (capped, jittered backoff) and hands out each
``(source, seq)`` once, so a tick the hub sends again (after a crash, under a new id) is handled once; the
runner logs how many it dropped. Orders carry an Idempotency-Key made from the tick's ``(source, seq)``, so
a retried POST fills once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from decimal import ROUND_DOWN, Decimal
from typing import Any

from tickhub.client import HubClient, HubError, Snapshot, Tick

from .strategies import STRATEGIES, Strategy, is_dip, is_peak

QTY_STEP = Decimal("0.0001")


class BotStopped(BaseException):
    """Raised by the signal handler to break out of a blocking read (BaseException: no handler eats it)."""


class BotRunner:
    """One strategy trading the ``symbols`` it is interested in, with one lot per symbol at most."""

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
        self.symbols = sorted({s.strip().upper() for s in symbols if s.strip()})
        self.budget = budget
        self.log = log or logging.getLogger(f"tickhub.bot.{name}")
        self.hub = HubClient(hub_url, api_key)
        self.stream = self.hub.subscribe(self.symbols, stale_timeout=read_timeout, reconnect_max=reconnect_max)
        self.prices: dict[str, deque[Decimal]] = {}
        self.paid: dict[str, Decimal] = {}  # symbol -> average price of the lot held
        self.held: dict[str, Decimal] = {}
        self.handled: deque[tuple[str, str, int]] = deque(maxlen=100_000)  # (id, source, seq), newest last
        self.fills = 0

    @property
    def repeats(self) -> int:
        """Ticks dropped because their ``(source, seq)`` was handled already."""
        return self.stream.dropped

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to return now (safe from another thread: the subscription's read is woken)."""
        self.stream.close()

    def run(self) -> None:
        """Trade until stop() or BotStopped; the subscription reconnects and resumes by itself."""
        try:
            self._load_account()
            for event in self.stream:
                if isinstance(event, Snapshot):
                    if event.resync:
                        self.log.info("resync (%s): starting price history afresh", event.resync)
                        self.prices.clear()
                    for tick in event.new:
                        self.on_tick(tick)
                else:
                    self.on_tick(event)
        except BotStopped:
            self.stream.close()

    def on_tick(self, tick: Tick) -> None:
        self.handled.append((tick.id, tick.source, tick.seq))
        prices = self.prices.setdefault(tick.symbol, deque(maxlen=3))
        prices.append(tick.price)
        decision = self.strategy(prices, self.paid.get(tick.symbol))
        if decision is not None:
            self._act(decision, prices, tick)

    # -- orders ----------------------------------------------------------------------------

    def _act(self, side: str, prices: deque[Decimal], tick: Tick) -> None:
        symbol, price = tick.symbol, prices[-1]
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
        place = self.hub.buy if side == "buy" else self.hub.sell
        try:  # keyed on the tick's (source, seq): the same under any id the hub sends it with
            order = place(symbol, qty, idempotency_key=f"{self.name}-{tick.source}-{tick.seq}-{side}")
        except HubError as exc:
            refused = exc.status is not None and exc.status < 500
            self.log.log(
                logging.INFO if refused else logging.WARNING,
                "%s %s %s %s: %s",
                side,
                qty,
                symbol,
                "refused" if refused else "failed",
                exc,
            )
            return
        self.fills += 1
        if side == "buy":
            self.held[symbol] = order.qty
            self.paid[symbol] = order.price
        else:
            self.held.pop(symbol, None)
            self.paid.pop(symbol, None)
        self.log.info(
            "filled #%d %s %s %s @ %s (%s%s, tick %s); cash %s, realized %s",
            order.id,
            side,
            order.raw["qty"],
            symbol,
            order.raw["price"],
            order.price_source,
            "" if order.price_source == "last" else f"; last {order.last_price}, spread paid {order.spread_paid}",
            order.tick_id,
            order.raw["cash_after"],
            order.raw["realized"],
        )

    def _load_account(self) -> None:
        """Start from the lots the account already holds (a restarted bot keeps its positions)."""
        for position in self.hub.account().positions:
            if position.qty > 0 and position.symbol in self.symbols and position.avg_cost is not None:
                self.held[position.symbol] = position.qty
                self.paid[position.symbol] = position.avg_cost

    def final_report(self) -> str:
        me = self.hub.account()
        return (
            f"{self.name}: final P&L: realized {me.realized_pnl}, unrealized {me.unrealized_pnl}; "
            f"spread paid on fills {me.spread_paid}; cash {me.cash}, equity {me.equity}; "
            f"{self.fills} fills this run; {self.repeats_summary()}"
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
        except HubError as exc:
            runner.log.warning(
                "%s: no final P&L (hub unreachable: %s) after %.0fs; %s",
                runner.name,
                exc,
                time.monotonic() - started,
                runner.repeats_summary(),
            )
        runner.hub.close()


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

    try:
        run_until_signal(runner, install)
    except HubError as exc:  # refused for good (a bad symbol, a revoked key): say so in one line
        runner.log.error("%s: stopped: %s", runner.name, exc)
        return 1
    return 0
