"""Accounts, API keys and market orders over a real socket and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from helpers import running_hub, scripted_source, wait_for

from tickhub.accounts import new_key, split_key
from tickhub.config import Settings


def tick_event(seq: int, symbol: str, price: str) -> bytes:
    data = {"symbol": symbol, "price": price, "ts": "2026-11-23T10:00:00Z", "seq": seq}
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, orjson.dumps(data))


PRICES = [tick_event(1, "BTCUSD", "43000.10"), tick_event(2, "META", "100.01")]


@contextlib.asynccontextmanager
async def priced_market(settings: Settings) -> AsyncIterator[tuple[Any, aiohttp.ClientSession]]:
    """A hub fed with PRICES (BTCUSD 43000.10, META 100.01), once both prices are in, and a client session."""
    async with (
        scripted_source(PRICES) as (url, _),
        running_hub(settings.replace(sources=(("v", url),))) as hub,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: len(hub.hub.market.latest) == 2, what="prices")
        yield hub, session


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str, key: str | None) -> None:
        self.session, self.url = session, url
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any, Any]:
        kwargs: dict[str, Any] = {"headers": {**self.headers, **headers}}
        if body is not None:
            kwargs["data"] = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.request(method, self.url + path, **kwargs) as response:
            return response.status, orjson.loads(await response.read()), response.headers

    async def order(self, symbol: str, side: str, qty: Any, **headers: str) -> tuple[int, Any, Any]:
        return await self.call("POST", "/orders", {"symbol": symbol, "side": side, "qty": qty}, **headers)


async def open_accounts(hub: Any, *names_cash: tuple[str, str]) -> list[str]:
    return [await hub.accounts.create(name, Decimal(cash)) for name, cash in names_cash]


async def test_keys_are_random_and_stored_only_as_hashes(settings: Settings) -> None:
    key_id, _, full = new_key()
    assert split_key(full) == (key_id, full.split("_", 2)[2])
    assert full.startswith("th_") and len(full) > 50
    async with scripted_source(PRICES) as (url, _), running_hub(settings.replace(sources=(("v", url),))) as hub:
        key = (await open_accounts(hub.hub, ("alice", "10")))[0]
        rows = await hub.hub.store.pool.fetch("SELECT * FROM api_keys")
        stored = " ".join(str(v) for row in rows for v in row.values())
        assert split_key(key)[1] not in stored and key not in stored, "the secret is not stored"
        assert await hub.hub.accounts.authenticate(key) is not None
        assert await hub.hub.accounts.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None


async def test_requests_without_a_valid_key_are_refused(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        key = (await open_accounts(hub.hub, ("alice", "10")))[0]
        revoked = await hub.hub.accounts.issue_key("alice")
        assert await hub.hub.accounts.revoke(split_key(revoked)[0])
        for bad in (None, "", "nonsense", key + "x", key.replace("th_", "tk_"), revoked, "Basic " + key):
            client = Client(session, hub.url, None)
            if bad is not None:
                client.headers = {"Authorization": bad if bad.startswith("Basic") else f"Bearer {bad}"}
            for method, path in (("GET", "/accounts/me"), ("GET", "/orders"), ("POST", "/orders")):
                status, body, headers = await client.call(method, path, {"symbol": "BTCUSD", "side": "buy", "qty": 1})
                assert (status, body["error"]["code"]) == (401, "unauthorized"), (bad, path)
                assert headers["WWW-Authenticate"] == "Bearer"
        assert await hub.hub.store.pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_orders_fill_at_the_latest_price_with_exact_amounts(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        alice = Client(session, hub.url, (await open_accounts(hub.hub, ("alice", "10000")))[0])
        status, body, headers = await alice.order("btcusd", "buy", "0.1")
        assert status == 201
        order = body["order"]
        assert (order["symbol"], order["side"], order["qty"], order["price"]) == ("BTCUSD", "buy", "0.1", "43000.10")
        assert order["amount"] == "4300.010" and order["cash_after"] == "5699.990"
        assert order["tick_id"] == str(hub.hub.market.latest["BTCUSD"].id)
        assert order["tick_ts"] == "2026-11-23T10:00:00.000000Z"
        assert headers["Location"] == f"/orders/{order['id']}"
        status, body, _ = await alice.order("BTCUSD", "sell", 0.04)
        assert status == 201 and body["order"]["amount"] == "1720.0040" and body["order"]["realized"] == "0.0000"
        status, me, _ = await alice.call("GET", "/accounts/me")
        assert status == 200
        assert me["cash"] == "7419.9940"
        (position,) = me["positions"]
        assert position == {
            "symbol": "BTCUSD",
            "qty": "0.06",
            "avg_cost": "43000.1",
            "cost_basis": "2580.0060",
            "price": "43000.10",
            "market_value": "2580.0060",
            "unrealized_pnl": "0.0000",
            "realized_pnl": "0.0000",
        }
        assert me["equity"] == "10000.0000"
        status, orders, _ = await alice.call("GET", "/orders")
        assert [o["side"] for o in orders["orders"]] == ["sell", "buy"], "newest first"


async def test_a_refused_order_changes_nothing(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        alice = Client(session, hub.url, (await open_accounts(hub.hub, ("alice", "150")))[0])
        assert (await alice.order("META", "buy", 1))[0] == 201
        before = (await alice.call("GET", "/accounts/me"))[1]
        cases = [
            (("BTCUSD", "buy", 1), 422, "insufficient_cash"),
            (("META", "sell", 2), 422, "insufficient_position"),
            (("TSLA", "sell", 1), 422, "no_price"),
            (("BTC USD", "buy", 1), 400, "bad_field"),
            (("META", "short", 1), 400, "bad_field"),
            (("META", "buy", 0), 400, "bad_field"),
            (("META", "buy", -1), 400, "bad_field"),
            (("META", "buy", "abc"), 400, "bad_field"),
            (("META", "buy", "NaN"), 400, "bad_field"),
            (("META", "buy", "Infinity"), 400, "bad_field"),
            (("META", "buy", "1e400"), 400, "bad_field"),
            (("META", "buy", "0.0000000000000000001"), 400, "bad_field"),
            (("META", "buy", True), 400, "bad_field"),
            (("META", "buy", None), 400, "bad_field"),
        ]
        for (symbol, side, qty), status, code in cases:
            got, body, _ = await alice.order(symbol, side, qty)
            assert (got, body["error"]["code"]) == (status, code), (symbol, side, qty)
        for raw, code in (
            (b"{not json", "bad_json"),
            (b"[]", "bad_json"),
            (b'{"symbol": "META"}', "missing_field"),
            (b'{"symbol": "META", "side": "buy", "qty": 1, "price": 1}', "bad_field"),
        ):
            got, body, _ = await alice.call("POST", "/orders", raw)
            assert (got, body["error"]["code"]) == (400, code)
        assert (await alice.call("GET", "/accounts/me"))[1] == before
        assert len((await alice.call("GET", "/orders"))[1]["orders"]) == 1


async def test_an_idempotency_key_fills_once(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        alice = Client(session, hub.url, (await open_accounts(hub.hub, ("alice", "1000")))[0])
        results = await asyncio.gather(*(alice.order("META", "buy", 1, **{"Idempotency-Key": "k-1"}) for _ in range(5)))
        assert sorted(status for status, _, _ in results) == [200, 200, 200, 200, 201]
        assert len({body["order"]["id"] for _, body, _ in results}) == 1
        assert sum(h.get("Idempotent-Replayed") == "true" for _, _, h in results) == 4
        status, body, _ = await alice.order("META", "buy", 2, **{"Idempotency-Key": "k-1"})
        assert (status, body["error"]["code"]) == (422, "idempotency_conflict")
        status, body, _ = await alice.order("META", "buy", 1, **{"Idempotency-Key": "x" * 200})
        assert (status, body["error"]["code"]) == (400, "bad_header")
        assert (await alice.call("GET", "/accounts/me"))[1]["cash"] == "899.99"


async def test_concurrent_orders_never_overdraw_an_account(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        alice = Client(session, hub.url, (await open_accounts(hub.hub, ("alice", "1000")))[0])
        results = await asyncio.gather(*(alice.order("META", "buy", 1) for _ in range(20)))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [201] * 9 + [422] * 11, "9 x 100.01 fit in 1000, the 10th does not"
        me = (await alice.call("GET", "/accounts/me"))[1]
        assert me["cash"] == "99.91" and me["positions"][0]["qty"] == "9"
        sells = await asyncio.gather(*(alice.order("META", "sell", 2) for _ in range(8)))
        assert sorted(status for status, _, _ in sells) == [201] * 4 + [422] * 4
        assert (await alice.call("GET", "/accounts/me"))[1]["positions"][0]["qty"] == "1"


async def test_a_key_sees_and_trades_only_its_own_account(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        keys = await open_accounts(hub.hub, ("alice", "1000"), ("bob", "500"))
        alice, bob = (Client(session, hub.url, key) for key in keys)
        assert (await alice.order("META", "buy", 3))[0] == 201
        bob_me = (await bob.call("GET", "/accounts/me"))[1]
        assert bob_me["account"]["name"] == "bob" and bob_me["cash"] == "500" and bob_me["positions"] == []
        assert (await bob.call("GET", "/orders"))[1] == {"orders": []}
        status, body, _ = await bob.order("META", "sell", 1)
        assert (status, body["error"]["code"]) == (422, "insufficient_position"), "bob cannot sell alice's shares"
        assert (await alice.call("GET", "/accounts/me"))[1]["positions"][0]["qty"] == "3"
