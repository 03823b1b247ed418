"""Shared fixtures: a real PostgreSQL (one schema per test), hub settings, hubs and sources on real sockets."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tickhub.config import Settings

TEST_DATABASE_URL = os.environ.get("TICKHUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("TICKHUB_REQUIRE_SERVICES") == "1"


def _service_missing(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; TICKHUB_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def database_url() -> str:
    """The test PostgreSQL, checked once; missing → skip, or fail under TICKHUB_REQUIRE_SERVICES=1."""

    async def probe() -> None:
        conn = await asyncpg.connect(TEST_DATABASE_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _service_missing(f"PostgreSQL at {TEST_DATABASE_URL}", exc)
    return TEST_DATABASE_URL


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    """A fresh schema for this test alone, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def settings(database_url: str, schema: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Hub settings for tests: this test's schema, port 0, short timers so nothing waits long.
    Composite prices are off (most tests count the ticks their sources send); tests/test_composite*
    turn them on."""
    return Settings(
        instruments="none",
        data_dir=str(tmp_path_factory.mktemp("data")),  # the write-ahead log: this test's own
        database_url=database_url,
        database_schema=schema,
        port=0,
        heartbeat=0.5,
        reconnect_min=0.05,
        reconnect_max=0.5,
        source_stale_timeout=3.0,
        source_connect_timeout=2.0,
        writer_flush_interval=0.005,
        shutdown_timeout=3.0,
        db_timeout=5.0,
        slow_timeout=5.0,
    )


TEST_REDIS_URL = os.environ.get("TICKHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis, checked once; missing → skip, or fail under TICKHUB_REQUIRE_SERVICES=1."""
    import redis

    try:
        client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except (OSError, redis.RedisError) as exc:
        _service_missing(f"Redis at {TEST_REDIS_URL}", exc)
    return TEST_REDIS_URL


@pytest.fixture
async def redis_keys(redis_url: str, schema: str) -> AsyncIterator[str]:
    """This test's schema as a broker namespace; its Redis keys are deleted afterwards."""
    yield schema
    from tickhub.broker_redis import delete_namespace

    await delete_namespace(redis_url, schema)
