"""The HTTP edge over raw sockets: who a client is (X-Forwarded-For only from a configured proxy), clients
that hang up mid-body or send it too slowly, malformed requests answered in JSON by both HTTP parsers,
and an empty Idempotency-Key header."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from decimal import Decimal

import orjson
import pytest
from helpers import RunningHub, running_hub, scripted_source, wait_for
from uvicorn.protocols.http.h11_impl import H11Protocol

from tickhub import connections
from tickhub.config import Settings, SettingsError

PARSERS = ["auto", "h11"]  # httptools where installed; h11 is what the hub runs without it


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "h11":
        monkeypatch.setattr(connections, "AutoHTTPProtocol", H11Protocol)
    return request.param


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a new connection and return everything the hub sends until it closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        data = b""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65536):
                    data += chunk
        return data
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one response with a Content-Length."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "content-length" in headers, raw[:300]
    return int(lines[0].split(" ")[1]), headers, body[: int(headers["content-length"])]


def json_error(raw: bytes) -> tuple[int, str]:
    """Status and error code of a JSON error response; fails on any other shape."""
    status, headers, body = parse(raw)
    assert headers.get("content-type", "").startswith("application/json"), raw[:300]
    error = orjson.loads(body)["error"]
    assert isinstance(error["message"], str) and error["message"]
    return status, error["code"]


async def post_task(port: int, forwarded_for: str) -> int:
    body = b'{"num": 1, "timeout": 60}'
    request = (
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"X-Forwarded-For: %b\r\nContent-Length: %d\r\n\r\n%b" % (forwarded_for.encode(), len(body), body)
    )
    return parse(await exchange(port, request))[0]


async def stream_status(port: int, forwarded_for: str) -> tuple[int, asyncio.StreamWriter]:
    """Open /stream with ``forwarded_for``; its status and the open connection (the caller closes it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: %b\r\n\r\n" % forwarded_for.encode())
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ")[1]), writer


@pytest.mark.parametrize("trusted", [False, True], ids=["default", "behind a proxy on 127.0.0.1"])
async def test_x_forwarded_for_counts_only_from_a_configured_proxy(settings: Settings, trusted: bool) -> None:
    """By default a client is its socket's address whatever X-Forwarded-For it sends, so varying the header
    does not escape the per-client bounds; with TICKHUB_FORWARDED_ALLOW_IPS naming the peer it does."""
    hub_settings = settings.replace(
        tasks_per_client=2,
        max_streams_per_client=1,
        task_worker=False,  # the tasks stay open
        forwarded_allow_ips=("127.0.0.1",) if trusted else (),
    )
    async with running_hub(hub_settings) as hub:
        statuses = [await post_task(hub.port, f"10.0.0.{i}") for i in range(1, 4)]
        assert statuses == ([201, 201, 201] if trusted else [201, 201, 429])
        first, first_writer = await stream_status(hub.port, "10.0.1.1")
        second, second_writer = await stream_status(hub.port, "10.0.1.2")
        first_writer.close()
        second_writer.close()
        assert (first, second) == ((200, 200) if trusted else (200, 429))


async def orders_key(hub: RunningHub) -> str:
    return await hub.hub.accounts.create("alice", Decimal("1000"))


@contextlib.asynccontextmanager
async def priced_hub(settings: Settings) -> AsyncIterator[RunningHub]:
    """A hub with a price for META (so an order could fill)."""
    tick = b'id: 1\nevent: tick\ndata: {"symbol":"META","price":"100.01","ts":"2026-11-23T10:00:00Z","seq":1}\n\n'
    async with scripted_source([tick]) as (url, _), running_hub(settings.replace(sources=(("v", url),))) as hub:
        await wait_for(lambda: "META" in hub.hub.market.latest, what="a price")
        yield hub


#: Where a request's end is logged (other parts of the hub may log at INFO meanwhile, e.g. a source's state).
HTTP_LOGGERS = ("uvicorn", "tickhub.errors", "tickhub.connections", "tickhub.http")


def served(hub: RunningHub) -> bool:
    """No connection open and no request being served."""
    state = hub.server.server_state
    return not state.connections and not state.tasks


@pytest.mark.parametrize("path", ["/tasks", "/orders"])
async def test_a_client_hanging_up_mid_body_is_not_an_error(
    settings: Settings, path: str, parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with priced_hub(settings) as hub:
        key = await orders_key(hub)
        caplog.clear()  # start-up logs at INFO
        _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(
            b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer %b\r\n"
            b'Content-Length: 100\r\n\r\n{"num": 1,' % (path.encode(), key.encode())
        )
        await wait_for(lambda: hub.server.server_state.tasks, what="the request to be served")
        writer.close()
        await wait_for(lambda: served(hub), what="the request to end")
        loud = [r for r in caplog.records if r.levelno > logging.DEBUG and r.name.startswith(HTTP_LOGGERS)]
        loud += [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
        assert not loud, [(r.name, r.levelname, r.getMessage()) for r in loud]
        assert (await exchange(hub.port, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(
            b"HTTP/1.1 200"
        )


async def test_a_body_not_sent_within_the_body_timeout_gets_408_and_the_connection_closed(
    settings: Settings, parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_hub(settings.replace(body_timeout=0.3)) as hub:
        raw = await exchange(
            hub.port,
            b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"num": 1,',
        )
        assert json_error(raw) == (408, "body_timeout")
        assert parse(raw)[1].get("connection") == "close"
        await wait_for(lambda: served(hub), what="the request to end")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not errors, [(r.name, r.getMessage()) for r in errors]


MALFORMED = {
    "non-UTF-8 path": b"GET /prices/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "Content-Length with chunked": (
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n0\r\n\r\n"
    ),
    "NUL in a header": b"GET /prices HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "unknown method": b"FOO /prices HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "bad chunk while the app reads the body": (
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\nzz\r\n"
    ),
}


@pytest.mark.parametrize("request_bytes", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_request_gets_a_json_400(
    settings: Settings, parser: str, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_hub(settings) as hub:
        raw = await exchange(hub.port, request_bytes)
        await wait_for(lambda: served(hub), what="the request to end")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not errors, [(r.name, r.getMessage()) for r in errors]
        status, code = json_error(raw)
        if request_bytes.startswith(b"FOO") and parser == "h11":
            assert (status, code) == (405, "method_not_allowed")  # h11 takes any token as a method
        else:
            assert (status, code) == (400, "bad_request")
            assert parse(raw)[1].get("connection") == "close"


@pytest.mark.parametrize("value", [b"", b"   "], ids=["empty", "blank"])
async def test_an_empty_idempotency_key_is_refused(settings: Settings, parser: str, value: bytes) -> None:
    """Sent as ``Idempotency-Key:`` on the wire (curl's ``-H "Idempotency-Key:"`` would drop the header),
    the value reaches the app as "" from either parser and must not pass for "no key"."""
    async with priced_hub(settings) as hub:
        key = await orders_key(hub)
        body = b'{"symbol": "META", "side": "buy", "qty": "1"}'
        raw = await exchange(
            hub.port,
            b"POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %b\r\nIdempotency-Key:%b\r\nContent-Length: %d\r\n\r\n%b"
            % (key.encode(), value, len(body), body),
        )
        assert json_error(raw) == (400, "bad_header")
        assert not await hub.hub.accounts.orders(await hub.hub.accounts.authenticate(key), 10, None)


@pytest.mark.parametrize("value", ["localhost", "10.0.0.5/8", "10.0.0.256"])
def test_a_proxy_address_that_is_not_an_ip_fails_at_start(value: str) -> None:
    """uvicorn would keep a mistyped address as a name no peer ever matches: the proxy would be silently
    ignored and every client behind it counted as one."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env(environ={"TICKHUB_FORWARDED_ALLOW_IPS": value}, env_file=None)
    assert str(info.value).startswith("TICKHUB_FORWARDED_ALLOW_IPS") and "\n" not in str(info.value)
