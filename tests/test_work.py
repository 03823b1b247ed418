"""GET /test under one lock (local and across replicas) and the persisted sequential task queue."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest
from helpers import get_json, running_hub, wait_for

from tickhub.config import Settings

DELAY = 0.2
#: Requests fired together reach the server a few milliseconds apart; elapsed is counted from each
#: one's own arrival, so consecutive values may differ by the delay minus that stagger.
STAGGER = 0.03


async def call_test(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/test") as response:
        assert response.status == 200
        return (await response.json())["elapsed"]


@pytest.mark.parametrize("n", [2, 4, 8])
async def test_concurrent_calls_take_turns(settings: Settings, n: int) -> None:
    async with running_hub(settings.replace(test_delay=DELAY)) as hub, aiohttp.ClientSession() as session:
        elapsed = sorted(await asyncio.gather(*(call_test(session, hub.url) for _ in range(n))))
        assert elapsed[0] >= DELAY
        gaps = [b - a for a, b in itertools.pairwise(elapsed)]
        assert all(gap >= DELAY - STAGGER for gap in gaps), elapsed
        assert elapsed[-1] >= n * DELAY - STAGGER
        assert hub.hub.gate.turns == n


async def test_a_client_that_leaves_gives_up_its_place(settings: Settings) -> None:
    async with running_hub(settings.replace(test_delay=0.5)) as hub, aiohttp.ClientSession() as session:
        gate = hub.hub.gate
        first = asyncio.create_task(call_test(session, hub.url))
        await wait_for(lambda: gate.turns == 1, what="the first call to hold the lock")
        async with aiohttp.ClientSession() as leaver_session:
            leaver = asyncio.create_task(call_test(leaver_session, hub.url))
            await wait_for(lambda: gate.waiting == 1, what="the second call to wait")
            third = asyncio.create_task(call_test(session, hub.url))
            await wait_for(lambda: gate.waiting == 2, what="the third call to wait")
            leaver.cancel()
        await wait_for(lambda: gate.waiting <= 1 and gate.turns <= 2, what="the leaver to drop out")
        results = await asyncio.gather(first, third)
        assert gate.turns == 2, "the client that left never took a turn"
        assert gate.waiting == 0
        assert results[1] >= 2 * 0.5 - STAGGER
        # The lock still works for everyone after that.
        again = sorted(await asyncio.gather(*(call_test(session, hub.url) for _ in range(2))))
        assert again[1] - again[0] >= 0.5 - STAGGER


async def test_postgres_lock_serializes_across_replicas(settings: Settings) -> None:
    shared = settings.replace(test_delay=DELAY, test_lock="postgres")
    async with running_hub(shared) as a, running_hub(shared) as b, aiohttp.ClientSession() as session:
        calls = [call_test(session, hub.url) for hub in (a, b, a, b, a, b)]
        elapsed = sorted(await asyncio.gather(*calls))
    gaps = [y - x for x, y in itertools.pairwise(elapsed)]
    assert all(gap >= DELAY - STAGGER for gap in gaps), elapsed


async def post_task(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else None
    kwargs = {"data": data, "headers": {"Content-Type": "application/json"}} if data else {"json": body}
    async with session.post(f"{url}/tasks", **kwargs) as response:
        return response.status, await response.json()


async def test_tasks_run_one_at_a_time_in_arrival_order(settings: Settings) -> None:
    async with running_hub(settings) as hub, aiohttp.ClientSession() as session:
        status, first = await post_task(session, hub.url, {"num": 100, "timeout": 0.3})
        assert status == 201 and first["position"] == 1 and first["state"] == "pending"
        await wait_for(lambda: hub.hub.tasks.running == first["id"], what="the first task to run")
        posted = await asyncio.gather(*(post_task(session, hub.url, {"num": i, "timeout": 0}) for i in range(20)))
        assert all(status == 201 for status, _ in posted)
        by_id = sorted((task for _, task in posted), key=lambda t: t["id"])
        assert [t["position"] for t in by_id] == list(range(2, 22)), "positions follow arrival"
        status, queue = await get_json(f"{hub.url}/tasks/queue")
        assert queue["tasks"][0]["id"] == first["id"] and queue["tasks"][0]["state"] == "running"
        assert [t["position"] for t in queue["tasks"]] == list(range(1, len(queue["tasks"]) + 1))
        await wait_for(lambda: hub.hub.tasks.completed == 21, what="all tasks to finish")
        status, results = await get_json(f"{hub.url}/tasks/results")
        done = results["results"]
        assert [r["id"] for r in done] == [first["id"]] + [t["id"] for t in by_id]
        assert [r["num"] for r in done] == [100] + [t["num"] for t in by_id]
        for earlier, later in itertools.pairwise(done):
            assert later["started_at"] >= earlier["finished_at"], "one at a time"
        status, one = await get_json(f"{hub.url}/tasks/{first['id']}")
        assert status == 200 and one["state"] == "done" and one["attempts"] == 1 and "position" not in one
        status, queue = await get_json(f"{hub.url}/tasks/queue")
        assert queue == {"tasks": []}


async def test_a_restart_resumes_pending_tasks_and_reruns_the_running_one(settings: Settings) -> None:
    async with aiohttp.ClientSession() as session:
        async with running_hub(settings) as hub:
            ids = [
                (await post_task(session, hub.url, {"num": n, "timeout": t}))[1]["id"]
                for n, t in ((1, 1.0), (2, 0), (3, 0))
            ]
            await wait_for(lambda: hub.hub.tasks.running == ids[0], what="the first task to run")
        async with running_hub(settings) as hub:
            await wait_for(lambda: hub.hub.tasks.completed == 3, 20, "the queue to finish after the restart")
            _, results = await get_json(f"{hub.url}/tasks/results")
            _, first = await get_json(f"{hub.url}/tasks/{ids[0]}")
    assert [r["id"] for r in results["results"]] == ids, "nothing lost, order kept, each done once"
    assert [r["num"] for r in results["results"]] == [1, 2, 3]
    assert first["attempts"] == 2, "the task running at the restart ran again"


async def test_one_worker_across_replicas(settings: Settings) -> None:
    async with running_hub(settings) as a, running_hub(settings) as b, aiohttp.ClientSession() as session:
        await wait_for(lambda: {a.hub.tasks.state, b.hub.tasks.state} == {"active", "standby"}, what="one worker")
        ids = []
        for n in range(6):
            ids.append((await post_task(session, (a, b)[n % 2].url, {"num": n, "timeout": 0.01}))[1]["id"])
        await wait_for(lambda: a.hub.tasks.completed + b.hub.tasks.completed == 6, what="the tasks")
        _, results = await get_json(f"{a.url}/tasks/results")
    assert [r["id"] for r in results["results"]] == ids
    assert {a.hub.tasks.completed, b.hub.tasks.completed} == {0, 6}


BAD_TASKS = [
    (b"{not json", "bad_json"),
    (b"[1, 2]", "bad_json"),
    ({"num": 1}, "missing_field"),
    ({"timeout": 1}, "missing_field"),
    ({"num": "1", "timeout": 1}, "bad_field"),
    ({"num": 1.5, "timeout": 1}, "bad_field"),
    ({"num": True, "timeout": 1}, "bad_field"),
    ({"num": 2**63, "timeout": 1}, "bad_field"),
    ({"num": 1, "timeout": "1"}, "bad_field"),
    ({"num": 1, "timeout": -0.5}, "bad_field"),
    ({"num": 1, "timeout": False}, "bad_field"),
    ({"num": 1, "timeout": 3601}, "bad_field"),
    ({"num": 1, "timeout": 1, "priority": 9}, "bad_field"),
]


async def test_bad_task_input_is_a_400_and_nothing_is_queued(settings: Settings) -> None:
    async with running_hub(settings) as hub, aiohttp.ClientSession() as session:
        for body, code in BAD_TASKS:
            status, error = await post_task(session, hub.url, body)
            assert (status, error["error"]["code"]) == (400, code), body
        assert (await get_json(f"{hub.url}/tasks/queue"))[1] == {"tasks": []}


async def test_oversized_body_and_full_queue(settings: Settings) -> None:
    async with (
        running_hub(settings.replace(task_queue_max=2, max_body=1024)) as hub,
        aiohttp.ClientSession() as session,
    ):
        status, error = await post_task(session, hub.url, b'{"num": 1, "timeout": 0, "x": "' + b"a" * 2000 + b'"}')
        assert (status, error["error"]["code"]) == (413, "too_large")
        assert (await post_task(session, hub.url, {"num": 1, "timeout": 5}))[0] == 201
        assert (await post_task(session, hub.url, {"num": 2, "timeout": 0}))[0] == 201
        status, error = await post_task(session, hub.url, {"num": 3, "timeout": 0})
        assert (status, error["error"]["code"]) == (503, "queue_full")
        status, queue = await get_json(f"{hub.url}/tasks/queue")
        assert [t["num"] for t in queue["tasks"]] == [1, 2]
        status, error = await get_json(f"{hub.url}/tasks/999999")
        assert (status, error["error"]["code"]) == (404, "unknown_task")
