"""GET /test under one lock (local and across replicas) and the persisted sequential task queue."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from helpers import get_json, running_hub, wait_for

from tickhub.config import Settings

DELAY = 0.2


async def call_test(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/test") as response:
        assert response.status == 200
        return (await response.json())["elapsed"]


def check_turns(turns: list[tuple[float, float]], n: int) -> None:
    """The lock's turns, as the gate recorded them: n of them, none shorter than the delay, none
    overlapping another. (Client-side elapsed values also differ by the delay when the calls arrive
    together; how close together they arrive is up to the machine, so the tests check the turns.)"""
    turns = sorted(turns)
    assert len(turns) == n
    assert all(released - acquired >= DELAY for acquired, released in turns), turns
    assert all(a_released <= b_acquired for (_, a_released), (b_acquired, _) in itertools.pairwise(turns)), turns


@pytest.mark.parametrize("n", [2, 4, 8])
async def test_concurrent_calls_take_turns(settings: Settings, n: int) -> None:
    async with running_hub(settings.replace(test_delay=DELAY)) as hub, aiohttp.ClientSession() as session:
        elapsed = sorted(await asyncio.gather(*(call_test(session, hub.url) for _ in range(n))))
        check_turns(list(hub.hub.gate.history), n)
        assert elapsed[0] >= DELAY


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
        assert results[1] >= 0.5, "the third call waited for the first"
        # The lock still works for everyone after that.
        await asyncio.gather(*(call_test(session, hub.url) for _ in range(2)))
        turns = sorted(gate.history)
        assert len(turns) == 4 and all(a[1] <= b[0] for a, b in itertools.pairwise(turns))


async def test_postgres_lock_serializes_across_replicas(settings: Settings) -> None:
    shared = settings.replace(test_delay=DELAY, test_lock="postgres")
    async with running_hub(shared) as a, running_hub(shared) as b, aiohttp.ClientSession() as session:
        await asyncio.gather(*(call_test(session, hub.url) for hub in (a, b, a, b, a, b)))
        # Both hubs run in this process, so their loop times share one clock.
        check_turns(list(a.hub.gate.history) + list(b.hub.gate.history), 6)


async def post_task(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else None
    kwargs = {"data": data, "headers": {"Content-Type": "application/json"}} if data else {"json": body}
    async with session.post(f"{url}/tasks", **kwargs) as response:
        return response.status, await response.json()


async def test_tasks_run_one_at_a_time_in_arrival_order(settings: Settings) -> None:
    # Submitted to a replica without the worker, so positions do not depend on how fast a task runs.
    async with (
        running_hub(settings.replace(task_worker=False, tasks_per_client=21)) as api,
        aiohttp.ClientSession() as session,
    ):
        status, first = await post_task(session, api.url, {"num": 100, "timeout": 0.05})
        assert status == 201 and first["position"] == 1 and first["state"] == "pending"
        posted = await asyncio.gather(*(post_task(session, api.url, {"num": i, "timeout": 0}) for i in range(20)))
        assert all(status == 201 for status, _ in posted)
        by_id = sorted((task for _, task in posted), key=lambda t: t["id"])
        assert [t["position"] for t in by_id] == list(range(2, 22)), "positions follow arrival"
        status, queue = await get_json(f"{api.url}/tasks/queue")
        assert [t["id"] for t in queue["tasks"]] == [first["id"]] + [t["id"] for t in by_id]
        assert [t["position"] for t in queue["tasks"]] == list(range(1, 22))
        assert {t["state"] for t in queue["tasks"]} == {"pending"}
        async with running_hub(settings) as worker:
            await wait_for(lambda: worker.hub.tasks.completed == 21, 20, "all tasks to finish")
        status, results = await get_json(f"{api.url}/tasks/results")
        done = results["results"]
        assert [r["id"] for r in done] == [first["id"]] + [t["id"] for t in by_id]
        assert [r["num"] for r in done] == [100] + [t["num"] for t in by_id]
        for earlier, later in itertools.pairwise(done):
            assert later["started_at"] >= earlier["finished_at"], "one at a time"
        status, one = await get_json(f"{api.url}/tasks/{first['id']}")
        assert status == 200 and one["state"] == "done" and one["attempts"] == 1 and "position" not in one
        assert (await get_json(f"{api.url}/tasks/queue"))[1] == {"tasks": []}
        assert api.hub.tasks.completed == 0, "the replica without the worker ran nothing"


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


async def open_key(hub: Any, name: str) -> dict[str, str]:
    key = await hub.hub.accounts.create(name, Decimal(1000))
    return {"Authorization": f"Bearer {key}"}


async def post_as(session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with session.post(f"{url}/tasks", json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def test_one_client_may_hold_only_so_many_open_tasks(settings: Settings) -> None:
    bounded = settings.replace(task_worker=False, tasks_per_client=3)
    async with running_hub(bounded) as hub, aiohttp.ClientSession() as session:
        alice, bob = await open_key(hub, "alice"), await open_key(hub, "bob")
        for client in ({}, alice):  # an address, then an account
            for n in range(3):
                assert (await post_as(session, hub.url, {"num": n, "timeout": 1}, client))[0] == 201
            status, error, headers = await post_as(session, hub.url, {"num": 9, "timeout": 1}, client)
            assert (status, error["error"]["code"]) == (429, "too_many_tasks")
            assert int(headers["Retry-After"]) >= 1
        assert (await post_as(session, hub.url, {"num": 5, "timeout": 1}, bob))[0] == 201, "bob is another client"
        status, error, headers = await post_as(
            session, hub.url, {"num": 5, "timeout": 1}, {"Authorization": "Bearer th_x_y"}
        )
        assert (status, error["error"]["code"]) == (401, "unauthorized")
        _, queue = await get_json(f"{hub.url}/tasks/queue")
        assert len(queue["tasks"]) == 7, "a refused task is not queued"


async def test_one_client_may_hold_only_so_many_seconds_of_tasks(settings: Settings) -> None:
    bounded = settings.replace(task_worker=False, task_seconds_per_client=10.0)
    async with running_hub(bounded) as hub, aiohttp.ClientSession() as session:
        alice, bob = await open_key(hub, "alice"), await open_key(hub, "bob")
        assert (await post_as(session, hub.url, {"num": 1, "timeout": 6}, alice))[0] == 201
        status, error, headers = await post_as(session, hub.url, {"num": 2, "timeout": 5}, alice)
        assert (status, error["error"]["code"]) == (429, "too_many_tasks")
        assert int(headers["Retry-After"]) >= 1
        assert (await post_as(session, hub.url, {"num": 3, "timeout": 4}, alice))[0] == 201, "10 s fit exactly"
        assert (await post_as(session, hub.url, {"num": 4, "timeout": 10}, bob))[0] == 201
        assert (await post_as(session, hub.url, {"num": 5, "timeout": 10}, {}))[0] == 201
        status, error, _ = await post_as(session, hub.url, {"num": 6, "timeout": 11}, {})
        assert (status, error["error"]["code"]) == (400, "bad_field"), "a task no client could ever queue"


async def test_concurrent_submits_from_one_client_never_pass_its_bound(settings: Settings) -> None:
    bounded = settings.replace(task_worker=False, tasks_per_client=5)
    async with running_hub(bounded) as hub, aiohttp.ClientSession() as session:
        alice = await open_key(hub, "alice")
        answers = await asyncio.gather(*(post_as(session, hub.url, {"num": n, "timeout": 0}, alice) for n in range(40)))
        assert sorted(status for status, _, _ in answers) == [201] * 5 + [429] * 35
        _, queue = await get_json(f"{hub.url}/tasks/queue")
        assert len(queue["tasks"]) == 5
