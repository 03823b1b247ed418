"""The API's bodies as models: request bodies decoded with their rules and errors, the OpenAPI
components generated from the models alone, and every JSON answer of a running hub exactly its model."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from helpers import running_hub, scripted_source, wait_for

from tickhub import answers, models
from tickhub.config import Settings
from tickhub.errors import ApiError
from tickhub.http import decode_model
from tickhub.openapi import OPERATIONS, Media, build_openapi
from tickhub.routes import CANDLE_INTERVALS
from tickhub.wire import OPTIONAL_FIELDS, format_ts

ORDER = {"symbol": "META", "side": "buy", "qty": 1}


def refusal(model: type[models.RequestBody], body: bytes) -> tuple[str, str]:
    with pytest.raises(ApiError) as caught:
        decode_model(model, body)
    assert caught.value.status == 400
    return caught.value.code, caught.value.message


def order(**fields: Any) -> bytes:
    return orjson.dumps({**ORDER, **fields})


def test_an_order_is_decoded_exactly() -> None:
    body = decode_model(models.OrderRequest, b'{"symbol": "btc-usd", "side": "sell", "qty": 0.123456789012345678}')
    assert (body.symbol, body.side, body.qty) == ("BTC-USD", "sell", Decimal("0.123456789012345678"))
    assert str(body.qty) == "0.123456789012345678", "the JSON text, never a float"
    for raw, qty in (
        (b"1E-3", "0.001"),
        (b"2.5e+1", "25"),
        (b'"0.500000000000000000"', "0.5"),
        (b"1000000000000", "1E12"),
    ):
        assert decode_model(models.OrderRequest, b'{"symbol": "A", "side": "buy", "qty": %b}' % raw).qty == Decimal(qty)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"{not json", "bad_json", "the body is not valid JSON"),
        (b"", "bad_json", "the body is not valid JSON"),
        (b"[]", "bad_json", "the body must be a JSON object"),
        (b"9" * 5000, "bad_json", "the body must be a JSON object"),
        (b'{"symbol": "META", "side": "buy", "qty": 0x10}', "bad_json", "the body is not valid JSON"),
        (b'{"symbol": "META", "side": "buy", "qty": 1}\xff', "bad_json", "the body is not valid JSON"),
        (b'{"symbol": "META", "side": "buy", "qty": ' + b"[" * 30000 + b"]" * 30000 + b"}", "bad_json", None),
        (b'{"symbol": "META"}', "missing_field", "side is required"),
        (b'{"symbol": "META", "side": "buy"}', "missing_field", "qty is required"),
        (order(price=1), "bad_field", "unknown field 'price'"),
        (order(**{"x" * 100: 1}), "bad_field", f"unknown field {'x' * 40!r}"),
        (order(symbol="BTC USD"), "bad_field", "symbol must be a symbol such as BTCUSD"),
        (order(symbol="btcu\u017fd"), "bad_field", "symbol must be a symbol such as BTCUSD"),
        (order(symbol="BTCUSD\n"), "bad_field", "symbol must be a symbol such as BTCUSD"),
        (order(symbol=7), "bad_field", "symbol must be a symbol such as BTCUSD"),
        (order(side="short"), "bad_field", 'side must be "buy" or "sell"'),
        (order(side="x" * 10_000), "bad_field", 'side must be "buy" or "sell"'),
    ],
)
def test_an_order_that_is_not_one_names_what_is_wrong(body: bytes, code: str, message: str | None) -> None:
    got = refusal(models.OrderRequest, body)
    assert got[0] == code and (message is None or got[1] == message), got


QTY_RULE = "qty must be a positive number up to 18 decimal places"


@pytest.mark.parametrize(
    "raw",
    [
        b"0",
        b"-0",
        b"0.0",
        b"-1",
        b"true",
        b"null",
        b"[1]",
        b'{"a": 1}',
        b"1000000000000.000000000000000001",
        b"0.0000000000000000001",
        b"9" * 5000,
        b"0." + b"1" * 5000,
        b"1e400",
        b"1e-400",
        b"1e999999999999999999999",
        *(orjson.dumps(s) for s in ("\u0661", "1_000", "  1", "1 ", "1e5", "NaN", "+1", ".5", "1.", "", "1" * 41)),
    ],
)
def test_a_quantity_is_a_positive_exact_number_or_plain_decimal_text(raw: bytes) -> None:
    assert refusal(models.OrderRequest, b'{"symbol": "META", "side": "buy", "qty": %b}' % raw) == (
        "bad_field",
        QTY_RULE,
    )


def test_a_task_is_decoded_with_the_rules_of_the_queue() -> None:
    task = decode_model(models.TaskRequest, b'{"num": 96.0, "timeout": 0}')
    assert (task.num, type(task.timeout)) == (96, float), "JSON has one number type: 96.0 is 96"
    assert decode_model(models.TaskRequest, b'{"num": -9223372036854775808, "timeout": 1.5}').num == -(2**63)
    assert decode_model(models.TaskRequest, b'{"num": 9223372036854775807, "timeout": 3}').num == 2**63 - 1
    num_rule, timeout_rule = "num must be a 64-bit integer", "timeout must be a number >= 0"
    for body, expected in (
        (b'{"num": 1}', ("missing_field", "timeout is required")),
        (b'{"timeout": 1}', ("missing_field", "num is required")),
        (b'{"num": 1, "timeout": 1, "priority": 9}', ("bad_field", "unknown field 'priority'")),
        (b'{"num": "1", "timeout": 1}', ("bad_field", num_rule)),
        (b'{"num": 1.5, "timeout": 1}', ("bad_field", num_rule)),
        (b'{"num": true, "timeout": 1}', ("bad_field", num_rule)),
        (b'{"num": 9223372036854775808, "timeout": 1}', ("bad_field", num_rule)),
        (b'{"num": 1e999999999, "timeout": 1}', ("bad_field", num_rule)),
        (b'{"num": ' + b"9" * 5000 + b', "timeout": 1}', ("bad_field", num_rule)),
        (b'{"num": 1, "timeout": "1"}', ("bad_field", timeout_rule)),
        (b'{"num": 1, "timeout": -0.5}', ("bad_field", timeout_rule)),
        (b'{"num": 1, "timeout": false}', ("bad_field", timeout_rule)),
        (b'{"num": 1, "timeout": 1e400}', ("bad_field", timeout_rule)),
    ):
        assert refusal(models.TaskRequest, body) == expected, body


def test_the_openapi_components_are_the_models_and_nothing_else() -> None:
    spec = build_openapi()
    structs = {
        name
        for module in (models, answers)
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, msgspec.Struct) and value.__module__ == module.__name__
    } - {"RequestBody"}
    assert set(spec["components"]["schemas"]) == structs, "every component is generated from a model"
    order_body = spec["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert order_body == {"$ref": "#/components/schemas/OrderRequest"}
    assert spec["components"]["schemas"]["OrderRequest"]["additionalProperties"] is False
    assert set(typing.get_args(answers.CandleInterval)) == set(CANDLE_INTERVALS)


def tick_event(seq: int, symbol: str, price: str, **extra: str) -> bytes:
    # the time is now: a composite takes only fresh prices
    data = {"symbol": symbol, "price": price, "ts": format_ts(datetime.now(UTC)), "seq": seq, **extra}
    return b"id: %d\nevent: tick\ndata: %b\n\n" % (seq, orjson.dumps(data))


class Answers:
    """The answers of a running hub, by operation, each checked against the operation's model."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self.session, self.url = session, url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.seen: set[tuple[str, str]] = set()

    async def call(self, method: str, template: str, path: str | None = None, body: Any = None) -> Any:
        op = OPERATIONS[(method, template)]
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, self.url + (path or template), data=data, headers=self.headers) as r:
            status, payload = r.status, orjson.loads(await r.read())
        assert status == op.status, (template, status, payload)
        exact(op.ok, payload)
        self.seen.add((method, template))
        return payload


def exact(model: type, payload: Any) -> None:
    """``payload`` is ``model``: every field of the right type, and none the model does not declare."""
    decoded = msgspec.convert(payload, model)
    assert msgspec.to_builtins(decoded) == payload, f"{model.__name__} does not declare all of {payload}"


async def test_every_json_answer_is_exactly_its_model(settings: Settings) -> None:
    trade = {"qty": "0.5", "side": "buy", "trade_id": "t-1", "bid": "43000.00", "bid_qty": "0", "ask": "43000.10"}
    frames = [tick_event(1, "BTCUSD", "43000.10", **trade, ask_qty="2.5"), tick_event(2, "META", "100.01")]
    async with (
        scripted_source(frames) as (url, _),
        running_hub(settings.replace(sources=(("v", url),), instruments="", test_delay=0.0)) as hub,
    ):
        await wait_for(lambda: {"BTCUSD", "META", "BTC-USD"} <= set(hub.hub.market.latest), what="the prices")
        await wait_for(lambda: hub.hub.writer.written >= 3, what="the ticks to be persisted")
        key = await hub.hub.accounts.create("alice", Decimal(10**6))
        async with aiohttp.ClientSession() as session:
            checked = Answers(session, hub.url, key)
            placed = await checked.call("POST", "/orders", body={"symbol": "btcusd", "side": "buy", "qty": "0.5"})
            await checked.call("GET", "/orders/{order_id}", f"/orders/{placed['order']['id']}")
            done = await checked.call("POST", "/tasks", body={"num": 96.0, "timeout": 0})
            await wait_for(lambda: hub.hub.tasks.completed == 1, what="the first task")
            await checked.call("POST", "/tasks", body={"num": 2, "timeout": 60})  # running when the hub stops
            await checked.call("GET", "/tasks/{task_id}", f"/tasks/{done['id']}")
            queue = await checked.call("GET", "/tasks/queue")
            assert [t.get("position") for t in queue["tasks"]] == [1], "an open task shows its position"
            prices = await checked.call("GET", "/prices")
            assert {*OPTIONAL_FIELDS, "venues"} <= {k for tick in prices["prices"] for k in tick}
            for template, path in (
                ("/prices/{symbol}", "/prices/BTC-USD"),
                ("/prices/{symbol}/history", "/prices/BTCUSD/history"),
                ("/prices/{symbol}/candles", "/prices/BTCUSD/candles?interval=1h"),
                ("/symbols", None),
                ("/instruments", None),
                ("/orders", None),
                ("/accounts/me", None),
                ("/test", None),
                ("/tasks/results", None),
                ("/ping", None),
                ("/health", None),
            ):
                answer = await checked.call("GET", template, path)
                assert all(value != [] for value in answer.values()), f"{template}: every list has an item to check"
                if template.endswith("/candles"):
                    assert answer["candles"][-1]["vwap"] == "43000.1", "a candle with volume is checked too"
            async with session.get(f"{hub.url}/prices/NOPE") as response:
                assert response.status == 404
                exact(answers.Error, orjson.loads(await response.read()))
    json_operations = {key for key, op in OPERATIONS.items() if not isinstance(op.ok, Media)}
    assert checked.seen == json_operations, "every JSON answer the document describes was checked"
