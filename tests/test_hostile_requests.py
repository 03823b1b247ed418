"""Hostile values in every parameter of every route the hub serves, over a real socket with a valid key.

The routes come from the app itself (``tickhub.routes.ROUTES``), their query parameters and body fields
from the OpenAPI document (every query name is tried on every route), so a new route is walked without
editing this file. Every path parameter, query parameter and JSON body field gets 5,000-digit integers,
negative numbers, floats, times at both ends of the calendar, NUL and control characters, newlines,
non-ASCII digits, 10k-character and empty strings, and percent-encoded garbage. The answer is never a
5xx, every 4xx is ``{"error": {"code", "message"}}``, and the hub answers ``/ping`` afterwards.
``/stream`` (an endless response, with its own tests) only gets its query parameters: 400, or 200
with an event stream that the client then closes. `make soak` draws many more random values.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from urllib.parse import quote

import aiohttp
import hypothesis
import orjson
import pytest
from helpers import running_hub, running_mock, wait_for
from hypothesis import strategies as st
from starlette.routing import Mount, Route
from yarl import URL

from tickhub.config import Settings
from tickhub.openapi import build_openapi
from tickhub.routes import ROUTES

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
SPEC = build_openapi()

HOSTILE = [
    "9" * 5000,
    "-" + "9" * 5000,
    "0" * 5000 + "1",
    "-1",
    "-0",
    "0",
    str(2**63),
    str(-(2**63) - 1),
    "1.5",
    "-0.0",
    "1e400",
    "1e-400",
    "NaN",
    "Infinity",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59.999999Z",
    "0000-00-00T00:00:00",
    "\x00",
    "a\x00b",
    "\x01\x07\x1b[31m\x7f",
    "\n",
    "1\r\nX-Injected: 1",
    "\u0661\u0662\u0663",  # Arabic-Indic digits
    "\uff11\uff12",  # full-width digits
    "\u00b2",  # a superscript: str.isdigit() but not a digit
    "x" * 10_000,
    "",
    " ",
    "../../etc/passwd",
    "'; DROP TABLE ticks; --",
    "\ud7ff\ufffd\U0010ffff",
]
# Sent as written: percent-encoding that is broken, or decodes to invalid UTF-8 or to a slash.
GARBAGE = ["%", "%zz", "%C3%28", "%FF%FE", "%00%0A", "%%25", "%2F", "%252F", "%E2%80%AE", "a%2F..%2F..%2Fb"]

JSON_NUMBERS = [b"9" * 5000, b"-" + b"9" * 5000, b"-1", b"0", b"1.5", b"-0.0", b"1e400", b"-1e400", b"1e-400"]
JSON_OTHERS = [b"null", b"true", b"[]", b"{}", b"[" * 500 + b"]" * 500, b'{"a": ' * 500 + b"1" + b"}" * 500]
WHOLE_BODIES = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"9" * 5000,
    b"\xff\xfe",
    b'{"\x00": 1}',
    b"{" * 20_000,
    b'"' + b"x" * 60_000,
]

VALID_PATH = {"symbol": "BTCUSD", "task_id": "1", "order_id": "1", "path": "x"}
VALID_FIELD = {"symbol": "BTCUSD", "side": "buy", "qty": "0.0001", "num": 1, "timeout": 0}


@dataclass(frozen=True)
class Slot:
    """One place a value goes: a path or query parameter, or a body field (``where``: path/query/body)."""

    method: str
    path: str  # a template: /prices/{symbol}/history
    where: str
    name: str


def _template(route: Route | Mount) -> tuple[str, set[str]]:
    if isinstance(route, Mount):
        return route.path + "/{path}", {"GET"}
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), set(route.methods or ()) - {"HEAD"}


def _body_fields(path: str, method: str) -> list[str]:
    schema = SPEC["paths"].get(path, {}).get(method.lower(), {}).get("requestBody", {})
    schema = schema.get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return sorted(schema.get("properties", {}))


def _query_names(path: str, method: str) -> list[str]:
    parameters = SPEC["paths"].get(path, {}).get(method.lower(), {}).get("parameters", [])
    return sorted(p["name"] for p in parameters if p["in"] == "query")


# Every query name any route documents: a route that documents none still gets them all at once.
QUERY_NAMES = sorted({name for path, item in SPEC["paths"].items() for m in item for name in _query_names(path, m)})
ALL_NAMES = ",".join(QUERY_NAMES)


def slots() -> list[Slot]:
    """Every parameter of every route the app serves (HEAD aside); ``/stream`` only by its query."""
    out = []
    for route in ROUTES:
        path, methods = _template(route)
        for method in sorted(methods):
            if method == "GET":
                out += [Slot(method, path, "query", name) for name in _query_names(path, method) or [ALL_NAMES]]
            if path != "/stream":
                out += [Slot(method, path, "path", name) for name in re.findall(r"\{(\w+)\}", path)]
            out += [Slot(method, path, "body", name) for name in _body_fields(path, method)]
            if method == "POST":
                out.append(Slot(method, path, "body", ""))  # the whole body
    return out


SLOTS = slots()


def _url(base: str, slot: Slot, encoded: str) -> URL:
    """The URL with ``encoded`` (already percent-encoded) in the slot and valid values elsewhere."""

    def fill(match: re.Match[str]) -> str:
        return encoded if slot.where == "path" and match[1] == slot.name else VALID_PATH[match[1]]

    path = re.sub(r"\{(\w+)\}", fill, slot.path)
    names = slot.name.split(",")
    if len(names) > 1:  # within the 16 KiB request line servers accept (uvicorn refuses more before the app)
        encoded = encoded[: 12_000 // len(names)]
    query = "?" + "&".join(f"{name}={encoded}" for name in names) if slot.where == "query" else ""
    return URL(base + path + query, encoded=True)


def _body(slot: Slot, raw: bytes) -> bytes | None:
    """A JSON body: the valid fields with ``raw`` (JSON text) as the slot's field, or ``raw`` as the body."""
    if slot.method != "POST":
        return None
    if slot.where != "body":
        raw = b"null" if slot.name == "" else orjson.dumps(VALID_FIELD.get(slot.name, "x"))
    if slot.name == "" and slot.where == "body":
        return raw
    fields = _body_fields(slot.path, slot.method)
    parts = [
        orjson.dumps(name) + b": " + (raw if name == slot.name else orjson.dumps(VALID_FIELD.get(name, "x")))
        for name in fields
    ]
    return b"{" + b", ".join(parts) + b"}"


class Prober:
    """Sends requests to the hub and checks each answer; collects what broke the rules."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str) -> None:
        self.session, self.base = session, base
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.failures: list[str] = []
        self.sent = 0
        self._gate = asyncio.Semaphore(64)

    async def probe(self, slot: Slot, encoded: str | None = None, json_text: bytes | None = None) -> None:
        """``encoded`` goes into a path or query slot; ``json_text`` into a body slot."""
        url = _url(self.base, slot, encoded or "")
        body = _body(slot, json_text or b"")
        async with self._gate:
            self.sent += 1
            timeout = aiohttp.ClientTimeout(total=10)
            async with self.session.request(slot.method, url, data=body, headers=self.headers, timeout=timeout) as r:
                what = f"{slot.method} {str(url)[len(self.base) :][:80]!r} body {(body or b'')[:60]!r}: {r.status}"
                if slot.path == "/stream" and r.status == 200:
                    if r.content_type != "text/event-stream":
                        self.failures.append(f"{what} is not an event stream")
                    return  # leaving the block closes the connection mid-stream
                payload = await r.read()
        self.check(what, r.status, r.content_type, payload)

    def check(self, what: str, status: int, content_type: str, payload: bytes) -> None:
        if status >= 500:
            self.failures.append(f"{what}: {payload[:200]!r}")
        elif status >= 400:
            try:
                error = orjson.loads(payload)["error"]
                assert content_type == "application/json"
                assert isinstance(error["code"], str) and error["code"]
                assert isinstance(error["message"], str) and error["message"]
            except (orjson.JSONDecodeError, KeyError, TypeError, AssertionError):
                self.failures.append(f"{what}: not a JSON error: {content_type} {payload[:200]!r}")

    async def hub_still_answers(self) -> None:
        async with self.session.get(f"{self.base}/ping") as response:
            assert (response.status, await response.json()) == (200, {"pong": True})


@contextlib.asynccontextmanager
async def hub_and_prober(settings: Settings) -> AsyncIterator[Prober]:
    async with (
        running_mock(("BTCUSD", "META"), interval=0.05) as source,
        running_hub(settings.replace(sources=(("mock", source.url),), test_delay=0.0)) as hub,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: "BTCUSD" in hub.hub.market.latest, what="a price")
        key = await hub.hub.accounts.create("hostile", Decimal(10**12))
        yield Prober(session, hub.url, key)


def test_every_route_and_parameter_is_walked() -> None:
    """The walk reaches what it claims to: every route, each path parameter and body field, /stream's query."""
    paths = {slot.path for slot in SLOTS}
    assert {"/prices/{symbol}/candles", "/orders/{order_id}", "/tasks/{task_id}", "/static/{path}"} <= paths
    assert {_template(route)[0] for route in ROUTES} == paths
    assert Slot("GET", "/tasks/{task_id}", "path", "task_id") in SLOTS
    assert Slot("POST", "/orders", "body", "qty") in SLOTS and Slot("POST", "/tasks", "body", "num") in SLOTS
    assert {"limit", "offset", "before", "since", "until", "interval", "symbols", "last_event_id"} <= set(QUERY_NAMES)
    assert Slot("GET", "/prices/{symbol}/candles", "query", "until") in SLOTS
    assert Slot("GET", "/tasks/results", "query", "offset") in SLOTS
    assert Slot("GET", "/ping", "query", ALL_NAMES) in SLOTS
    assert not any(slot.path == "/stream" and slot.where != "query" for slot in SLOTS)


async def test_hostile_values_in_every_parameter_get_a_json_4xx_never_a_5xx(settings: Settings) -> None:
    async with hub_and_prober(settings) as prober:
        probes = []
        for slot in SLOTS:
            if slot.where == "body":
                texts = [orjson.dumps(v) for v in HOSTILE] + JSON_NUMBERS + JSON_OTHERS
                probes += [prober.probe(slot, json_text=t) for t in (WHOLE_BODIES if slot.name == "" else texts)]
            else:
                probes += [prober.probe(slot, encoded=quote(v, safe="")) for v in HOSTILE]
                probes += [prober.probe(slot, encoded=g) for g in GARBAGE]
        await asyncio.gather(*probes)
        assert not prober.failures, "\n".join(prober.failures[:30])
        await prober.hub_still_answers()


def _text() -> st.SearchStrategy[str]:
    """Hostile strings: any characters but lone surrogates (no URL or UTF-8 JSON carries them), integers
    past Python's 4300-digit ``int()`` limit, floats, and times near year 1 and 9999 in any time zone."""
    chars = st.characters(exclude_categories=("Cs",))
    edges = st.datetimes(max_value=datetime(1, 1, 2)) | st.datetimes(min_value=datetime(9999, 12, 30))
    return st.one_of(
        st.text(chars, max_size=40),
        st.integers().map(str),
        st.text("0123456789", min_size=4000, max_size=6000),
        st.floats().map(repr),
        (edges | st.datetimes()).flatmap(lambda d: st.timezones().map(lambda z: d.replace(tzinfo=z).isoformat())),
        st.sampled_from(HOSTILE),
    )


@pytest.fixture
async def prober(settings: Settings) -> AsyncIterator[Prober]:
    """One hub for all of a test's examples: they run one after another on this test's loop."""
    async with hub_and_prober(settings) as prober:
        yield prober


@hypothesis.settings(
    max_examples=400 if SOAK else 25,
    database=None,
    deadline=None,
    derandomize=not SOAK,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(text=_text(), as_written=st.booleans())
async def test_random_values_in_every_parameter_get_a_json_4xx_never_a_5xx(
    prober: Prober, text: str, as_written: bool
) -> None:
    """One drawn value in every slot; ``as_written``: unescaped (percent signs in a URL, JSON text in a body)."""
    prober.failures.clear()
    probes = []
    for slot in SLOTS:
        if slot.where == "body":
            probes.append(prober.probe(slot, json_text=text.encode() if as_written else orjson.dumps(text)))
        else:
            probes.append(prober.probe(slot, encoded=quote(text, safe="%" if as_written else "")))
    await asyncio.gather(*probes)
    assert not prober.failures, prober.failures
    await prober.hub_still_answers()
