"""Accounts, API keys and market orders over a real socket and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from decimal import Decimal, localcontext
from typing import Any

import aiohttp
import hypothesis
import orjson
from helpers import running_hub, scripted_source, wait_for
from hypothesis import strategies as st

from tickhub.accounts import new_key, removed_basis, split_key
from tickhub.config import Settings


def tick_event(seq: int, symbol: str, price: str) -> bytes:
    data = {"symbol": symbol, "price": price, "ts": "2026-11-23T10:00:00Z", "seq": seq}
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, orjson.dumps(data))


SOAK = os.environ.get("TICKHUB_SOAK") == "1"
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


# A held position is ``held`` units bought for ``basis`` in all; amounts have up to 18 places, a basis more
# (it sums price x qty products), so a partial sale's share of it is rounded.
def _scaled(digits: st.SearchStrategy[int], places: st.SearchStrategy[int]) -> st.SearchStrategy[Decimal]:
    return st.builds(lambda n, p: Decimal(n).scaleb(-p), digits, places)


@st.composite
def sales(draw: st.DrawFn) -> tuple[Decimal, Decimal, Decimal]:
    """(basis, qty, held): a basis of up to 36 places, and qty <= held, both of up to 18 places."""
    basis = draw(_scaled(st.integers(0, 10**30), st.integers(0, 36)))
    places = draw(st.integers(0, 18))
    held_units = draw(st.integers(1, 10**30))
    qty_units = draw(st.integers(1, held_units))
    return basis, Decimal(qty_units).scaleb(-places), Decimal(held_units).scaleb(-places)


@hypothesis.settings(max_examples=2000 if SOAK else 300, database=None, deadline=None)
@hypothesis.example(sale=(Decimal("1.9E-18"), Decimal("1.6E-10"), Decimal("1.9E-10")))
@hypothesis.given(sale=sales())
def test_a_partial_sale_never_removes_more_basis_than_is_held(sale: tuple[Decimal, Decimal, Decimal]) -> None:
    basis, qty, held = sale
    removed = removed_basis(basis, qty, held)
    assert 0 <= removed <= basis, "the basis left must never go negative (positions.cost_basis >= 0)"
    with localcontext() as ctx:
        ctx.prec = 120
        exact = basis * qty / held
    assert abs(removed - exact) < Decimal("1E-18"), "rounded to the 18th place, no further"
    if qty == held:
        assert removed == basis, "selling everything removes the whole basis"


DUST = [tick_event(1, "DUST", "0.00000001")]


async def test_a_partial_sale_whose_basis_share_rounds_up_still_fills(settings: Settings) -> None:
    # Buying 1.9E-10 at 1E-8 costs 1.9E-18; selling 1.6E-10 of it removes 1.6E-18 of basis, which
    # rounded half-even to 18 places would be 2E-18: more than is held, a negative basis.
    async with (
        scripted_source(DUST) as (url, _),
        running_hub(settings.replace(sources=(("v", url),))) as hub,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: "DUST" in hub.hub.market.latest, what="the price")
        alice = Client(session, hub.url, (await open_accounts(hub.hub, ("alice", "1")))[0])
        assert (await alice.order("DUST", "buy", "0.00000000019"))[0] == 201
        status, body, _ = await alice.order("DUST", "sell", "0.00000000016")
        assert status == 201, body
        # 1E-18 of basis removed (1.6E-18 rounded down), so 0.6E-18 realized now and given back at the last sale
        assert body["order"]["realized"] == "0.0000000000000000006"
        (position,) = (await alice.call("GET", "/accounts/me"))[1]["positions"]
        assert (position["qty"], position["cost_basis"]) == ("0.00000000003", "0.0000000000000000009")
        assert (await alice.order("DUST", "sell", "0.00000000003"))[0] == 201
        (position,) = (await alice.call("GET", "/accounts/me"))[1]["positions"]
        assert (position["qty"], position["cost_basis"]) == ("0.00000000000", "0.0000000000000000000")
        assert Decimal(position["realized_pnl"]) == 0, "bought and sold at one price: no gain in all"


async def test_a_json_number_quantity_is_taken_exactly(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        alice = Client(session, hub.url, (await open_accounts(hub.hub, ("alice", "100000000")))[0])
        for raw, qty in (
            (b"0.123456789012345678", "0.123456789012345678"),
            (b"12345.000000000000000001", "12345.000000000000000001"),
            (b"999999999999.999999999999999999", "999999999999.999999999999999999"),
            (b"1E-3", "0.001"),
            (b"2.5e+1", "25"),
            (b"1E+2", "100"),
            (b"7", "7"),
        ):
            body = b'{"symbol": "META", "side": "buy", "qty": %b}' % raw
            if raw.startswith(b"999999"):  # more than the account's cash: the refusal quotes the exact cost
                status, error, _ = await alice.call("POST", "/orders", body)
                assert (status, error["error"]["code"]) == (422, "insufficient_cash")
                with localcontext() as ctx:
                    ctx.prec = 80
                    cost = Decimal("100.01") * Decimal(qty)
                assert error["error"]["message"].startswith(f"costs {cost:f},"), error
                continue
            status, result, _ = await alice.call("POST", "/orders", body)
            assert status == 201, (raw, result)
            assert Decimal(result["order"]["qty"]) == Decimal(qty), raw
        huge = [b"9" * 5000, b"0." + b"1" * 5000, b"1e400", b"1e-400", b"1e999999999999999999999", b"-0", b"0.0"]
        for raw in huge:
            status, error, _ = await alice.call(
                "POST", "/orders", b'{"symbol": "META", "side": "buy", "qty": %b}' % raw
            )
            assert status == 400 and error["error"]["code"] in ("bad_field", "bad_json"), (raw[:20], error)
        for raw in (b"NaN", b"Infinity", b"-Infinity", b"1.", b".5", b"01", b"0x10", b"1e"):
            status, error, _ = await alice.call(
                "POST", "/orders", b'{"symbol": "META", "side": "buy", "qty": %b}' % raw
            )
            assert (status, error["error"]["code"]) == (400, "bad_json"), raw
        deep = b'{"symbol": "META", "side": "buy", "qty": 1, "x": ' + b"[" * 30000 + b"]" * 30000 + b"}"
        assert (await alice.call("POST", "/orders", deep))[0] in (400, 413)
        # a lone surrogate is no Unicode text: I-JSON (RFC 7493) refuses it, and so does the decoder
        status, error, _ = await alice.call("POST", "/orders", b'{"symbol": "\\ud800", "side": "buy", "qty": 1}')
        assert (status, error["error"]["code"]) == (400, "bad_json")
        status, error, _ = await alice.call("POST", "/orders", b'{"symbol": "META", "side": "buy", "qty": 1}\xff')
        assert (status, error["error"]["code"]) == (400, "bad_json")


async def test_a_quantity_string_is_a_plain_ascii_decimal(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        alice = Client(session, hub.url, (await open_accounts(hub.hub, ("alice", "1000")))[0])
        for qty in (
            "\u0661",
            "\u0661\u0662",
            "1_000",
            "  1",
            "1 ",
            "1\n",
            "\t1",
            "1e5",
            "1E5",
            "NaN",
            "sNaN",
            "+1",
            "-1",
            ".5",
            "1.",
            "0x1",
            "\uff11",
            "1,5",
            "",
            " ",
            "0",
            "0.000",
            "1" * 41,
        ):
            status, error, _ = await alice.order("META", "buy", qty)
            assert (status, error["error"]["code"]) == (400, "bad_field"), qty
        assert (await alice.call("GET", "/orders"))[1] == {"orders": []}
        status, body, _ = await alice.order("META", "buy", "0.500000000000000000")
        assert status == 201 and Decimal(body["order"]["qty"]) == Decimal("0.5")


async def test_a_symbol_is_ascii_as_written_not_after_upper_casing(settings: Settings) -> None:
    # str.upper() maps some non-ASCII letters onto ASCII ones: "btcu\u017fd" (a long s) becomes "BTCUSD".
    async with priced_market(settings) as (hub, session):
        alice = Client(session, hub.url, (await open_accounts(hub.hub, ("alice", "1000000")))[0])
        for symbol in ("btcu\u017fd", "meta\u0131", "\u0131btcusd", "BTCUSD\n", "META\x00"):
            status, error, _ = await alice.order(symbol, "buy", 1)
            assert (status, error["error"]["code"]) == (400, "bad_field"), symbol
        assert (await alice.call("GET", "/orders"))[1] == {"orders": []}
        assert (await alice.order("btcusd", "buy", "0.001"))[0] == 201, "lower case ASCII is still the symbol"


async def test_an_order_is_readable_at_its_location_by_its_own_key_only(settings: Settings) -> None:
    async with priced_market(settings) as (hub, session):
        keys = await open_accounts(hub.hub, ("alice", "1000"), ("bob", "1000"))
        alice, bob = (Client(session, hub.url, key) for key in keys)
        status, placed, headers = await alice.order("META", "buy", "1.5")
        assert status == 201
        status, body, _ = await alice.call("GET", headers["Location"])
        assert (status, body) == (200, placed)
        status, body, _ = await bob.call("GET", headers["Location"])
        assert (status, body["error"]["code"]) == (404, "unknown_order"), "another account's order is not there"
        status, body, _ = await alice.call("GET", f"/orders/{placed['order']['id'] + 1000}")
        assert (status, body["error"]["code"]) == (404, "unknown_order")
        for bad in ("0", "-1", "abc", "1.0", "%D9%A1", "9" * 5000, str(2**63), "%00", "1%0A"):
            status, body, _ = await alice.call("GET", f"/orders/{bad}")
            assert (status, body["error"]["code"]) == (400, "bad_parameter"), bad
        status, body, _ = await Client(session, hub.url, None).call("GET", headers["Location"])
        assert (status, body["error"]["code"]) == (401, "unauthorized")


def quoted_event(seq: int, symbol: str, price: str, bid: str | None, ask: str | None, ts: str | None = None) -> bytes:
    """A tick with a best quote (sizes 3 and 4), dated now unless ``ts`` says otherwise."""
    from datetime import UTC, datetime

    from tickhub.wire import format_ts

    data: dict[str, Any] = {"symbol": symbol, "price": price, "ts": ts or format_ts(datetime.now(UTC)), "seq": seq}
    if bid is not None:
        data |= {"bid": bid, "bid_qty": "3"}
    if ask is not None:
        data |= {"ask": ask, "ask_qty": "4"}
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, orjson.dumps(data))


async def test_market_orders_fill_at_the_quote_and_record_the_spread_paid(settings: Settings) -> None:
    frames = [
        quoted_event(1, "BTCUSD", "100.00", bid="99.50", ask="100.75"),  # a fresh quote, spread 1.25
        tick_event(2, "BTCUSD", "100.10"),  # a trade after it, without a quote: the quote still counts
        quoted_event(3, "META", "50.00", bid="49.00", ask="51.00", ts="2026-01-01T00:00:00Z"),  # a stale quote
        tick_event(4, "TCSG", "30.00"),  # never quoted
    ]
    async with (
        scripted_source(frames) as (url, _),
        running_hub(settings.replace(sources=(("v", url),), quote_max_age=60.0)) as hub,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: hub.hub.sequencer.last_seq("v") == 4 and len(hub.hub.market.latest) == 3, what="ticks")
        (key,) = await open_accounts(hub.hub, ("quoted", "10000"))
        client = Client(session, hub.url, key)
        _, bought, _ = await client.order("BTCUSD", "buy", "2")
        _, sold, _ = await client.order("BTCUSD", "sell", "2")
        _, meta, _ = await client.order("META", "buy", "1")
        _, tcsg, _ = await client.order("TCSG", "buy", "1")
        _, account, _ = await client.call("GET", "/accounts/me")
    assert (bought["order"]["price"], bought["order"]["price_source"], bought["order"]["last_price"]) == (
        "100.75",
        "ask",
        "100.10",
    )
    assert (sold["order"]["price"], sold["order"]["price_source"]) == ("99.50", "bid")
    assert (meta["order"]["price"], meta["order"]["price_source"]) == ("50.00", "last"), "a stale quote: the last price"
    assert (tcsg["order"]["price"], tcsg["order"]["price_source"]) == ("30.00", "last")
    # 2 x (100.75 - 100.10) buying at the ask, 2 x (100.10 - 99.50) selling at the bid
    assert Decimal(account["spread_paid"]) == Decimal("2.50")
    assert Decimal(account["cash"]) == Decimal(10000) - Decimal("201.50") + Decimal("199.00") - 50 - 30
