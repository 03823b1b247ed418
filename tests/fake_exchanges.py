"""Local fake exchanges for the bridge tests: aiohttp servers on 127.0.0.1 (port 0) in the test's loop.

They answer in the shapes the exchanges document (samples in tests/samples/, sent verbatim), record
what the bridge sent (messages with their times, pongs, REST requests) and let a test push frames,
ping, close or drop a connection, and script REST failures (429, 418, weight headers).
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re
from collections import deque
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from helpers import start_site, wait_for

SAMPLES = Path(__file__).parent / "samples"


def sample_text(name: str) -> str:
    """A sample payload's text exactly as stored (floats keep their digits)."""
    return (SAMPLES / f"{name}.json").read_text()


def sample(name: str) -> Any:
    return orjson.loads(sample_text(name))


def recording(name: str) -> list[str]:
    """A recorded session (``samples/NAME.jsonl``): its messages' text, one per line, in order."""
    return (SAMPLES / f"{name}.jsonl").read_text().splitlines()


class FakeConnection:
    """The server side of one WebSocket a bridge opened."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.received: list[tuple[float, str]] = []  # (loop time, text) of each message the bridge sent
        self.pongs: list[bytes] = []
        self.closed = asyncio.Event()

    @property
    def query(self) -> dict[str, str]:
        return dict(self.request.query)

    @property
    def messages(self) -> list[Any]:
        return [orjson.loads(text) for _, text in self.received]

    async def send(self, payload: str | dict[str, Any]) -> None:
        await self.ws.send_str(payload if isinstance(payload, str) else orjson.dumps(payload).decode())

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def ping(self, payload: bytes = b"") -> None:
        await self.ws.ping(payload)

    def abort(self) -> None:
        """Drop the TCP connection with no close frame, as a crashed server or a cut link would."""
        assert self.request.transport is not None
        self.request.transport.abort()


class FakeExchange:
    """A WebSocket endpoint at ``ws_path`` (plus whatever REST routes a subclass adds)."""

    ws_path = "/ws"

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get(self.ws_path, self._websocket)
        self.connections: list[FakeConnection] = []
        self.attempts: list[float] = []  # loop time of every WebSocket request, refused ones too
        self.refuse = 0  # answer this many more WebSocket requests with HTTP 503
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeExchange:
        self._runner, self.port = await start_site(self.app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.connections:
            if not conn.closed.is_set():
                conn.abort()
        assert self._runner is not None
        await self._runner.cleanup()

    async def connection(self, n: int = 0, timeout: float = 5.0) -> FakeConnection:
        """The ``n``-th connection (0-based), waiting for it to open."""
        await wait_for(lambda: len(self.connections) > n, timeout, f"connection #{n} to {type(self).__name__}")
        return self.connections[n]

    async def on_connect(self, conn: FakeConnection) -> None:
        """What the exchange sends right after the handshake."""

    async def on_text(self, conn: FakeConnection, text: str) -> None:
        """How the exchange answers a message (subscribe acks and errors)."""

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        self.attempts.append(asyncio.get_running_loop().time())
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=503, text="overloaded")
        ws = web.WebSocketResponse(autoping=False)  # so the test sees the bridge's pongs
        await ws.prepare(request)
        conn = FakeConnection(request, ws)
        self.connections.append(conn)
        try:
            await self.on_connect(conn)
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    conn.received.append((asyncio.get_running_loop().time(), msg.data))
                    await self.on_text(conn, msg.data)
                elif msg.type is WSMsgType.PONG:
                    conn.pongs.append(msg.data)
                elif msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
        except ConnectionError:
            pass
        finally:
            conn.closed.set()
        return ws


class FakeBinance(FakeExchange):
    """Binance spot: ``/stream?streams=`` combined streams, ``exchangeInfo`` and ``ticker/price``."""

    ws_path = "/stream"
    WEIGHTS = {"/api/v3/exchangeInfo": 20, "/api/v3/ticker/price": 4}

    def __init__(self, extra_pairs: int = 0) -> None:
        super().__init__()
        self.info = sample("binance_exchange_info")
        self.prices = {row["symbol"]: row["price"] for row in sample("binance_ticker_price")}
        template = self.info["symbols"][2]
        for i in range(extra_pairs):  # "every pair" polls carry thousands of rows
            symbol = f"X{i:04d}USDT"
            self.info["symbols"].append(copy.deepcopy(template) | {"symbol": symbol, "baseAsset": f"X{i:04d}"})
            self.prices[symbol] = f"{1 + i % 97}.{i % 100:02d}000000"
        self.requests: list[tuple[float, str, dict[str, str]]] = []  # (loop time, path, query)
        self.scripted: deque[tuple[int, dict[str, str], str]] = deque()  # next REST answers, in order
        self.used_weight: int | None = None  # None: count real weights
        self._weight = 0
        self._trade_id = 3512345678
        self.app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        self.app.router.add_get("/api/v3/ticker/price", self._ticker_price)

    def fail_next(self, status: int, retry_after: int | None = None, body: str = "{}") -> None:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        self.scripted.append((status, headers, body))

    def trade(
        self, symbol: str, price: str, trade_ms: int = 1795460400121, trade_id: int | None = None
    ) -> dict[str, Any]:
        """A trade event in the combined-stream wrapper, as the docs show it (trade ids count up unless given)."""
        if trade_id is None:
            self._trade_id = trade_id = self._trade_id + 1
        msg = sample("binance_trade")
        msg["stream"] = f"{symbol.lower()}@trade"
        msg["data"].update(s=symbol, p=price, T=trade_ms, E=trade_ms + 2, t=trade_id)
        return msg

    @staticmethod
    def book_ticker(
        symbol: str, bid: str, bid_qty: str, ask: str, ask_qty: str, update_id: int = 400900217
    ) -> dict[str, Any]:
        """A book ticker in the combined-stream wrapper, as the docs show it."""
        msg = sample("binance_book_ticker")
        msg["stream"] = f"{symbol.lower()}@bookTicker"
        msg["data"].update(u=update_id, s=symbol, b=bid, B=bid_qty, a=ask, A=ask_qty)
        return msg

    def replay_trades(
        self, n: int, symbols: Sequence[str], seed: int = 1, start_ms: int = 1795460400121
    ) -> list[dict[str, Any]]:
        """``n`` trades in the documented shape, generated: a random walk of 0.01 steps from each symbol's
        ticker price, trade ids counting up per symbol as Binance's do, trade times 1 ms apart."""
        rng = random.Random(seed)
        prices = {s: Decimal(self.prices[s]) for s in symbols}
        ids = {s: 3512345678 + 1000 * i for i, s in enumerate(symbols)}
        trades = []
        for i in range(n):
            symbol = rng.choice(symbols)
            prices[symbol] = max(Decimal("0.01"), prices[symbol] + rng.randint(-3, 3) * Decimal("0.01"))
            ids[symbol] += 1
            trades.append(self.trade(symbol, f"{prices[symbol]:.8f}", start_ms + i, ids[symbol]))
        return trades

    def requests_to(self, path: str) -> list[tuple[float, str, dict[str, str]]]:
        return [r for r in self.requests if r[1] == path]

    def _answer(
        self, request: web.Request, status: int, body: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        self._weight += self.WEIGHTS.get(request.path, 1)
        weight = self._weight if self.used_weight is None else self.used_weight
        headers = {"X-MBX-USED-WEIGHT-1M": str(weight), **(headers or {})}
        return web.Response(status=status, text=body, content_type="application/json", headers=headers)

    def _record(self, request: web.Request) -> web.Response | None:
        self.requests.append((asyncio.get_running_loop().time(), request.path, dict(request.query)))
        if self.scripted:
            status, headers, body = self.scripted.popleft()
            return self._answer(request, status, body, headers)
        return None

    def _requested(self, request: web.Request) -> list[str] | None:
        raw = request.query.get("symbols")
        return json.loads(raw) if raw is not None else None

    async def _exchange_info(self, request: web.Request) -> web.Response:
        if (scripted := self._record(request)) is not None:
            return scripted
        wanted = self._requested(request)
        if wanted is None:
            return self._answer(request, 200, orjson.dumps(self.info).decode())
        rows = {s["symbol"]: s for s in self.info["symbols"]}
        if any(s not in rows for s in wanted):
            return self._answer(request, 400, sample_text("binance_invalid_symbol"))
        return self._answer(request, 200, orjson.dumps(self.info | {"symbols": [rows[s] for s in wanted]}).decode())

    async def _ticker_price(self, request: web.Request) -> web.Response:
        if (scripted := self._record(request)) is not None:
            return scripted
        wanted = self._requested(request)
        if wanted is not None and any(s not in self.prices for s in wanted):
            return self._answer(request, 400, sample_text("binance_invalid_symbol"))
        rows = [{"symbol": s, "price": p} for s, p in self.prices.items() if wanted is None or s in wanted]
        return self._answer(request, 200, orjson.dumps(rows).decode())

    async def on_text(self, conn: FakeConnection, text: str) -> None:
        msg = orjson.loads(text)
        if msg.get("method") == "SUBSCRIBE":
            await conn.send({"result": None, "id": msg["id"]})


class FakeCoinbase(FakeExchange):
    """Coinbase Exchange: a ``subscribe`` gets a ``subscriptions`` ack, or an ``error`` for an unknown product;
    after the ack, the messages in ``on_subscribe`` (a recorded session, or the latest tickers, which
    Coinbase sends on every subscribe)."""

    ws_path = "/"  # wss://ws-feed.exchange.coinbase.com
    PRODUCTS = {"BTC-USD", "ETH-USD", "SOL-USD"}

    def __init__(self, products: Sequence[str] = ()) -> None:
        super().__init__()
        self.products = self.PRODUCTS | set(products)
        self.on_subscribe: list[str] = []
        self._trade_id = 370843401

    async def on_text(self, conn: FakeConnection, text: str) -> None:
        msg = orjson.loads(text)
        if msg.get("type") != "subscribe":
            return
        bad = [p for p in msg["product_ids"] if p not in self.products]
        if bad:
            error = sample("coinbase_error")
            error["reason"] = f"{bad[0]} is not a valid product"
            await conn.send(error)
            return
        ack = sample("coinbase_subscriptions")
        ack["channels"] = [{"name": c, "product_ids": msg["product_ids"]} for c in msg["channels"]]
        await conn.send(ack)
        for text in self.on_subscribe:
            await conn.send(text)

    def ticker(self, product: str, price: str, time: str = "2026-11-23T19:00:00.123456Z") -> dict[str, Any]:
        """The documented ticker, with a trade id of its own (they count up)."""
        self._trade_id += 1
        return sample("coinbase_ticker") | {
            "product_id": product,
            "price": price,
            "time": time,
            "trade_id": self._trade_id,
        }


class FakeKraken(FakeExchange):
    """Kraken v2: a status message on connect; per symbol a subscribe ack and a snapshot, or an error."""

    ws_path = "/v2"
    PAIRS = {"BTC/USD", "ETH/USD"}

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v2"

    async def on_connect(self, conn: FakeConnection) -> None:
        await conn.send(sample_text("kraken_status"))

    async def on_text(self, conn: FakeConnection, text: str) -> None:
        """Per symbol an ack and, for ``ticker``, its snapshot; ``trade`` has a snapshot (the last trades)
        only when asked for one."""
        msg = orjson.loads(text)
        if msg.get("method") != "subscribe":
            return
        params = msg["params"]
        for symbol in params["symbol"]:
            if symbol not in self.PAIRS:
                await conn.send(sample_text("kraken_subscribe_error").replace("BTC/XYZ", symbol))
                continue
            ack = sample("kraken_subscribe_ack")
            ack["result"] |= {"channel": params["channel"], "symbol": symbol}
            await conn.send(ack)
            if params["channel"] == "ticker":
                await conn.send(sample_text("kraken_ticker_snapshot").replace("BTC/USD", symbol))
            elif params.get("snapshot", True):
                await conn.send(sample_text("kraken_trade_snapshot").replace("MATIC/USD", symbol))

    @staticmethod
    def trade_update(
        symbol: str, price: str, qty: str, side: str, trade_id: int, timestamp: str = "2026-11-23T19:00:00.654321Z"
    ) -> str:
        """A ``trade`` update of one trade in the documented shape, ``price`` and ``qty`` the raw JSON
        number texts (e.g. ``0.5147``), as Kraken writes them."""
        item = (
            f'{{"symbol": "{symbol}", "side": "{side}", "price": {price}, "qty": {qty}, "ord_type": "limit",'
            f' "trade_id": {trade_id}, "timestamp": "{timestamp}"}}'
        )
        head = sample_text("kraken_trade_snapshot").split('"data"')[0].replace('"snapshot"', '"update"')
        return f'{head}"data": [{item}]}}'

    @staticmethod
    def ticker_update(symbol: str, last: str, timestamp: str = "2026-11-23T19:00:00.654321Z") -> str:
        """The documented ``update`` with ``last`` set to the raw JSON number text ``last`` (e.g. ``26394.10``)."""
        text = re.sub(r'"last": [-0-9.eE+]+', f'"last": {last}', sample_text("kraken_ticker_update"))
        text = re.sub(r'"timestamp": "[^"]*"', f'"timestamp": "{timestamp}"', text)
        return text.replace("BTC/USD", symbol)


class FakeKrakenV1(FakeExchange):
    """Kraken's WebSocket v1 API, as a v2 client finds it when pointed at ``wss://ws.kraken.com``: a
    recorded v1 session (status, subscription statuses, heartbeats, trade arrays) played over and over,
    a message every ``interval`` seconds. None of it is a v2 message."""

    ws_path = "/"

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__()
        self.interval = interval
        self.sent = 0
        self._players: list[asyncio.Task[None]] = []

    async def on_connect(self, conn: FakeConnection) -> None:
        self._players.append(asyncio.create_task(self._play(conn)))

    async def _play(self, conn: FakeConnection) -> None:
        messages = recording("kraken_v1_session")
        try:
            while not conn.closed.is_set():
                await conn.send(messages[self.sent % len(messages)])
                self.sent += 1
                await asyncio.sleep(self.interval)  # the exchange's pace, not a wait for the bridge
        except ConnectionError:
            pass

    async def __aexit__(self, *exc: object) -> None:
        for player in self._players:
            player.cancel()
        await asyncio.gather(*self._players, return_exceptions=True)
        await super().__aexit__(*exc)


class TradingBinance(FakeBinance):
    """A fake Binance whose market trades on its own: one ``symbol`` trade every ``interval`` seconds, sent
    to every open connection, with trade ids counting up. ``sent`` records each trade id with the index
    of the connection it went to (None: no connection was open, so nobody got it)."""

    def __init__(self, symbol: str = "BTCUSDT", interval: float = 0.002) -> None:
        super().__init__()
        self.symbol = symbol
        self.interval = interval
        self.sent: list[tuple[int, int | None]] = []
        self._trading: asyncio.Task[None] | None = None

    def start_trading(self) -> None:
        self._trading = asyncio.create_task(self._trade())

    async def stop_trading(self) -> None:
        if self._trading is not None:
            self._trading.cancel()
            await asyncio.gather(self._trading, return_exceptions=True)
            self._trading = None

    def sent_on(self, first_connection: int) -> list[int]:
        """The trade ids sent on connection ``first_connection`` and every later one."""
        return [t for t, n in self.sent if n is not None and n >= first_connection]

    async def _trade(self) -> None:
        trade_id, price = 3512345678, Decimal(self.prices[self.symbol])
        rng = random.Random(trade_id)
        while True:
            trade_id += 1
            price = max(Decimal("0.01"), price + rng.randint(-3, 3) * Decimal("0.01"))
            msg = orjson.dumps(self.trade(self.symbol, f"{price:.8f}", 1795460400000 + trade_id % 10**9, trade_id))
            got = None
            for n, conn in enumerate(self.connections):
                if conn.closed.is_set() or conn.ws.closed:
                    continue
                try:
                    await conn.ws.send_str(msg.decode())
                    got = n
                except (ConnectionError, RuntimeError):  # the bridge died under us
                    continue
            self.sent.append((trade_id, got))
            await asyncio.sleep(self.interval)  # the market's pace, not a wait for the bridge

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_trading()
        await super().__aexit__(*exc)
