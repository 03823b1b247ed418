"""The broker contract, the same tests for every backend: memory:// and redis:// (the machine's Redis).

Several broker objects on one URL and namespace stand for several replicas sharing one log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from helpers import wait_for

from tickhub.broker import Broker, LeaseLost, open_broker
from tickhub.wire import Tick

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RUN = 10**12

MakeBroker = Callable[..., Awaitable[Broker]]


def ticks(first_id: int, n: int, source: str = "mock", first_seq: int = 1, symbol: str = "BTCUSD") -> list[Tick]:
    return [Tick(first_id + i, source, symbol, f"{100 + i}.5", T0, first_seq + i) for i in range(n)]


async def writer_share(broker: Broker, consumer: str) -> list[Tick]:
    """What the log hands ``consumer``'s writer, as it comes."""
    got: list[Tick] = []
    room = asyncio.Event()
    room.set()
    await broker.feed_writer(consumer, got.extend, room)
    return got


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[MakeBroker]:
    """Makes brokers on one shared log, as replicas would have; closes them and clears the log after."""
    namespace = f"b_{uuid.uuid4().hex[:12]}"
    url = request.getfixturevalue("redis_url") if request.param == "redis" else "memory://"
    made: list[Broker] = []

    async def make(**options: float) -> Broker:
        broker = open_broker(url, namespace, **options)
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()
    if request.param == "redis":
        from tickhub.broker_redis import delete_namespace

        await delete_namespace(url, namespace)


async def test_every_replica_is_handed_every_tick_in_id_order(make_broker: MakeBroker) -> None:
    a, b = await make_broker(), await make_broker()
    seen_a: list[Tick] = []
    seen_b: list[Tick] = []
    await a.subscribe(seen_a.extend, 0)
    await b.subscribe(seen_b.extend, 0)
    assert await a.acquire("a", 5.0)
    sent = ticks(RUN + 1, 50) + ticks(RUN + 51, 50, source="other")
    assert await a.append("a", sent[:60]) == 60
    assert await a.append("a", sent[60:]) == 40
    await wait_for(lambda: len(seen_a) == 100 and len(seen_b) == 100, 5, "both replicas to get every tick")
    assert [t.json for t in seen_a] == [t.json for t in sent] == [t.json for t in seen_b], "same bytes, same order"


async def test_a_late_subscriber_gets_what_the_log_holds_after_its_id(make_broker: MakeBroker) -> None:
    a = await make_broker()
    assert await a.acquire("a", 5.0)
    await a.append("a", ticks(RUN + 1, 10))
    late: list[Tick] = []
    await (await make_broker()).subscribe(late.extend, RUN + 4)
    await wait_for(lambda: len(late) == 6, 5, "the retained ticks after the id")
    assert [t.id for t in late] == list(range(RUN + 5, RUN + 11))


async def test_the_lease_is_exclusive_and_a_holder_without_it_cannot_append(make_broker: MakeBroker) -> None:
    a, b = await make_broker(), await make_broker()
    seen: list[Tick] = []
    await a.subscribe(seen.extend, 0)
    assert await a.acquire("a", 5.0)
    assert not await b.acquire("b", 5.0)
    assert await a.acquire("a", 5.0), "acquiring again is renewing"
    with pytest.raises(LeaseLost):
        await b.append("b", ticks(RUN + 1, 3))
    await a.release("a")
    assert await b.acquire("b", 5.0)
    assert not await a.renew("a", 5.0)
    with pytest.raises(LeaseLost):
        await a.append("a", ticks(RUN + 1, 3))
    assert await b.append("b", ticks(RUN + 1, 3)) == 3
    await wait_for(lambda: len(seen) == 3, 5, "the new holder's ticks")
    assert not [t for t in seen if t.id > RUN + 3], "nothing of the deposed holder's got in"


async def test_a_lease_not_renewed_expires_and_a_standby_takes_it(make_broker: MakeBroker) -> None:
    a, b = await make_broker(), await make_broker()
    assert await a.acquire("a", 0.3)
    assert not await b.acquire("b", 0.3)
    assert await a.renew("a", 0.3), "a holder that renews in time keeps it"
    taken = await wait_for_async(lambda: b.acquire("b", 5.0), 5, "the lease to expire")
    assert taken and not await a.renew("a", 0.3)


async def wait_for_async(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return True


async def test_ticks_the_log_has_are_dropped_and_last_seqs_resume_each_source(make_broker: MakeBroker) -> None:
    a = await make_broker()
    seen: list[Tick] = []
    await a.subscribe(seen.extend, 0)
    assert await a.acquire("a", 5.0)
    assert await a.append("a", ticks(RUN + 1, 5, first_seq=1) + ticks(RUN + 6, 2, source="x", first_seq=10**17)) == 7
    # A new holder (new run, higher ids) replaying seqs 3..8 of "mock": only 6..8 are new.
    assert await a.append("a", ticks(2 * RUN + 1, 6, first_seq=3)) == 3
    await wait_for(lambda: len(seen) == 10, 5, "the new ticks")
    assert [t.seq for t in seen if t.source == "mock"] == list(range(1, 9))
    assert await a.last_seqs() == {"mock": 8, "x": 10**17 + 1}


async def test_history_reads_the_log_by_id(make_broker: MakeBroker) -> None:
    a = await make_broker()
    assert await a.acquire("a", 5.0)
    sent = ticks(RUN + 1, 20)
    await a.append("a", sent)
    assert await a.first_id() == RUN + 1
    page = await a.history(RUN + 3, RUN + 10, 4)
    assert page is not None and [t.json for t in page] == [t.json for t in sent[3:7]]
    rest = await a.history(RUN + 7, RUN + 10, 100)
    assert rest is not None and [t.id for t in rest] == [RUN + 8, RUN + 9]


async def test_each_tick_goes_to_one_writer_and_what_a_gone_writer_left_goes_to_another(
    make_broker: MakeBroker,
) -> None:
    a, b = await make_broker(claim_after=0.5), await make_broker(claim_after=0.5)
    to_a, to_b = await writer_share(a, "writer-a"), await writer_share(b, "writer-b")
    assert await a.acquire("a", 5.0)
    for first in range(1, 400, 100):
        await a.append("a", ticks(RUN + first, 100, first_seq=first))
    await wait_for(lambda: len(to_a) + len(to_b) == 400, 5, "every tick to reach a writer")
    assert not {t.id for t in to_a} & {t.id for t in to_b}, "no tick reached two writers"
    await a.written("writer-a", list(to_a))
    left = {t.id for t in to_b}
    await b.close()  # gone without acknowledging its share
    if left:
        await wait_for(lambda: left <= {t.id for t in to_a}, 10, "the gone writer's ticks to be handed over")


async def test_written_ticks_leave_the_log_after_the_retention(make_broker: MakeBroker) -> None:
    a = await make_broker(retention=0.0)
    got = await writer_share(a, "w")
    assert await a.acquire("a", 5.0)
    await a.append("a", ticks(RUN + 1, 10))
    await wait_for(lambda: len(got) == 10, 5, "the writer's share")
    await a.written("w", got[:6])
    await a.trim()
    first = await a.first_id()
    assert first is not None and RUN + 6 < first <= RUN + 7, "unwritten ticks stay, written ones go"
    assert await a.history(RUN, RUN + 20, 100) is None, "the log no longer reaches back: PostgreSQL has those"
    kept = await a.history(RUN + 6, RUN + 20, 100)
    assert kept is not None and [t.id for t in kept] == list(range(RUN + 7, RUN + 11))


async def test_a_reader_behind_what_the_log_let_go_is_told_of_the_gap(make_broker: MakeBroker) -> None:
    a = await make_broker(retention=0.0)
    got = await writer_share(a, "w")
    assert await a.acquire("a", 5.0)
    await a.append("a", ticks(RUN + 1, 10))
    await wait_for(lambda: len(got) == 10, 5, "the writer's share")
    await a.written("w", got)
    await a.trim()
    gaps: list[tuple[int, int]] = []
    behind = await make_broker()
    await behind.subscribe(lambda ticks: None, RUN + 2, lambda after, resume: gaps.append((after, resume)))
    await wait_for(lambda: gaps, 5, "the gap to be reported")
    assert gaps[0][0] == RUN + 2 and gaps[0][1] >= RUN + 10
