"""Connection handling over real sockets: a dropped subscriber leaves no kernel buffer behind, idle and
half-sent connections are closed after TICKHUB_HEADER_TIMEOUT while streams and slow bodies are not, the
hub raises its open-files limit and warns near it, and TICKHUB_LIMIT_CONCURRENCY answers 503 past it."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket

import orjson
import psutil
import pytest
from helpers import free_port, port_open, running_hub, running_mock, spawn_hub, stop_process, subscribe, wait_for
from uvicorn.protocols.http.h11_impl import H11Protocol

from tickhub import connections
from tickhub.config import Settings

ESTABLISHED, FIN_WAIT1, LISTEN = "01", "04", "0A"  # states as /proc/net/tcp writes them


def hub_side(port: int) -> list[tuple[str, int]]:
    """(state, bytes queued to send) of every socket whose local port is ``port``, the listener aside."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, queues = fields[1], fields[3], fields[4]
                if int(local.rsplit(":", 1)[1], 16) == port and state != LISTEN:
                    found.append((state, int(queues.split(":")[0], 16)))
    return found


def stalled_subscriber(port: int) -> socket.socket:
    """A client that opens /stream with a tiny receive buffer and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    return sock


async def until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the hub sends until it closes the connection (EOF or reset)."""
    data = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


async def response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: its head and its body."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return head, await reader.readexactly(length)


async def test_dropped_stalled_subscribers_leave_no_socket_holding_unsent_data(settings: Settings) -> None:
    async with running_mock(("BTCUSD", "META", "TCSG"), interval=0.001) as source:
        hub_settings = settings.replace(sources=(("mock", source.url),), subscriber_backlog=32768, slow_timeout=1.0)
        async with running_hub(hub_settings, sndbuf=65536) as hub:
            fanout = hub.hub.fanout
            stalled = [stalled_subscriber(hub.port) for _ in range(5)]
            try:
                await wait_for(lambda: fanout.slow_disconnects >= 5, 20, "the stalled subscribers to be dropped")
                # Closed with a FIN, each socket would stay in FIN-WAIT-1 behind the bytes its client
                # never reads, for as long as the kernel keeps probing; reset, it is gone at once.
                await wait_for(
                    lambda: not [s for s in hub_side(hub.port) if s[0] == ESTABLISHED or (s[0] == FIN_WAIT1 and s[1])],
                    5,
                    "the hub's sockets to be freed, not left in FIN-WAIT-1 holding unsent data",
                )
            finally:
                for sock in stalled:
                    sock.close()


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /ping HTTP/1.1\r\nHost: x\r\n", b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\n"],
    ids=["nothing", "half a head", "half a head after a response"],
)
@pytest.mark.parametrize("parser", ["auto", "h11"])
async def test_a_connection_without_a_whole_request_head_is_closed(
    settings: Settings, sent: bytes, parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if parser == "h11":  # what the hub runs where httptools is not installed
        monkeypatch.setattr(connections, "AutoHTTPProtocol", H11Protocol)
    async with running_hub(settings.replace(header_timeout=0.5)) as hub:
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        try:
            writer.write(sent)
            got = await until_closed(reader)
            assert got.count(b"HTTP/1.1 200") == sent.count(b"\r\n\r\n"), "whole requests before it are answered"
        finally:
            writer.close()


async def test_streams_slow_bodies_and_keep_alive_outlive_the_header_timeout(settings: Settings) -> None:
    async with running_hub(settings.replace(header_timeout=0.3)) as hub, subscribe(hub.url) as stream:
        await stream.next_event("snapshot")
        slow_body = await asyncio.open_connection("127.0.0.1", hub.port)
        slow_body[1].write(
            b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n"
        )
        idle = await asyncio.open_connection("127.0.0.1", hub.port)
        keep_alive = None
        try:
            # Opened after the others, the idle connection is closed after both had as long.
            assert await until_closed(idle[0]) == b""
            slow_body[1].write(b"x")
            head, body = await response(slow_body[0])
            assert head.startswith(b"HTTP/1.1 400") and orjson.loads(body)["error"]["code"] == "bad_json"
            keep_alive = await asyncio.open_connection("127.0.0.1", hub.port)
            for _ in range(2):
                keep_alive[1].write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                head, _ = await response(keep_alive[0])
                assert head.startswith(b"HTTP/1.1 200")
            await stream.wait_comments(stream.comments + 2)  # the stream's heartbeats keep coming
        finally:
            for _, writer in (slow_body, idle, *([keep_alive] if keep_alive else [])):
                writer.close()


async def test_past_the_concurrency_limit_requests_get_a_json_503(settings: Settings) -> None:
    async with running_hub(settings.replace(limit_concurrency=2)) as hub:
        first = await asyncio.open_connection("127.0.0.1", hub.port)
        second = await asyncio.open_connection("127.0.0.1", hub.port)
        try:
            first[1].write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(first[0]))[0].startswith(b"HTTP/1.1 200")
            third = await asyncio.open_connection("127.0.0.1", hub.port)
            third[1].write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = await response(third[0])
            third[1].close()
            assert head.startswith(b"HTTP/1.1 503")
            assert orjson.loads(body)["error"]["code"] == "over_capacity"
            second[1].close()
            await wait_for(lambda: len(hub.server.server_state.connections) <= 1, what="two connections to close")
            first[1].write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(first[0]))[0].startswith(b"HTTP/1.1 200"), "below the limit again"
        finally:
            first[1].close()
            second[1].close()


async def test_a_warning_is_logged_once_near_the_open_files_limit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(connections, "open_files_limit", lambda: 20)  # warns from 18 open connections
    caplog.set_level(logging.WARNING, "tickhub.connections")
    async with running_hub(settings) as hub:
        opened = [await asyncio.open_connection("127.0.0.1", hub.port) for _ in range(17)]
        try:
            await wait_for(lambda: len(hub.server.server_state.connections) == 17, what="17 connections")
            assert not caplog.records
            opened += [await asyncio.open_connection("127.0.0.1", hub.port) for _ in range(5)]
            await wait_for(lambda: len(hub.server.server_state.connections) == 22, what="22 connections")
            warnings = [r for r in caplog.records if "open files" in r.getMessage()]
            assert len(warnings) == 1, "one warning, not one per connection"
        finally:
            for _, writer in opened:
                writer.close()


async def test_the_hub_process_raises_its_open_files_limit(settings: Settings) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = soft if soft < hard else 1024
    if low >= hard:
        pytest.skip(f"the hard open-files limit ({hard}) leaves nothing to raise")
    port = free_port()
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # the child inherits the lower limit
    try:
        proc = spawn_hub(settings, port, "")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        await wait_for(lambda: port_open(port) or proc.poll() is not None, 30, "the hub")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert psutil.Process(proc.pid).rlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        stop_process(proc)


async def test_accepted_connections_send_small_writes_at_once(settings: Settings) -> None:
    """TCP_NODELAY on every accepted connection: with Nagle's algorithm on (uvloop's default), a response
    written as head then body waited for the client's delayed ACK, ~40 ms per request and per SSE flush."""
    async with running_hub(settings) as hub:
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        try:
            writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            await response(reader)
            protocols = list(hub.server.server_state.connections)
            assert protocols
            for protocol in protocols:
                sock = protocol.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            writer.close()
