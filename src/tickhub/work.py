"""The serialized-work endpoints: GET /test (one at a time) and the sequential task queue."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import ApiError
from .http import ClientGone, read_model, unless_disconnected
from .models import TaskRequest
from .responses import JSONResponse
from .routes_common import bearer_account, hub_of, parse_int, parse_limit
from .tasks import ClientBound, QueueFull, TooManyTasks

if TYPE_CHECKING:
    from .hub import Hub

INT64 = 1 << 63
MAX_OFFSET = 1 << 62


async def serial_test(request: Request) -> Response:
    """Wait for the lock, hold it ``TICKHUB_TEST_DELAY`` s; answer the seconds since arrival."""
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    hub = hub_of(request)
    settings = hub.settings

    async def take_turn() -> float:
        async with hub.gate.hold(settings.test_wait_max):
            await asyncio.sleep(settings.test_delay)
        return loop.time() - arrived

    try:
        elapsed = await unless_disconnected(request, take_turn())
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
    except TimeoutError:
        raise ApiError(503, "busy", f"no turn within {settings.test_wait_max:g}s", {"Retry-After": "5"}) from None
    return JSONResponse({"elapsed": round(elapsed, 6)})


async def _task_client(request: Request) -> str:
    """Who submits: the account of a valid bearer key; without one, the address. A bad key is a 401."""
    account_id = await bearer_account(request, required=False)
    if account_id is None:
        return f"address:{request.client.host if request.client else '-'}"
    return f"account:{account_id}"


async def submit_task(request: Request) -> Response:
    """Queue a task, within the caller's bound of open tasks and seconds, and the queue's cap."""
    hub: Hub = hub_of(request)
    settings = hub.settings
    client = await _task_client(request)
    # A timeout above one client's whole allowance could never be queued: that is bad input, not "later".
    timeout_max = min(settings.task_timeout_max, settings.task_seconds_per_client)
    body = await read_model(request, TaskRequest, settings.max_body)
    if body.timeout > timeout_max:
        raise ApiError(400, "bad_field", f"timeout must be at most {timeout_max:g} seconds")
    bound = ClientBound(settings.tasks_per_client, settings.task_seconds_per_client)
    try:
        task = await hub.tasks.submit(body.num, body.timeout, client, bound)
    except TooManyTasks as exc:
        raise ApiError(429, "too_many_tasks", str(exc), {"Retry-After": str(exc.retry_after)}) from None
    except QueueFull:
        raise ApiError(
            503,
            "queue_full",
            f"the queue holds {hub.settings.task_queue_max} open tasks; retry later",
            {"Retry-After": "5"},
        ) from None
    return JSONResponse(task.as_dict(), status_code=201, headers={"Location": f"/tasks/{task.id}"})


async def task_queue(request: Request) -> Response:
    return JSONResponse({"tasks": [t.as_dict() for t in await hub_of(request).tasks.queue()]})


async def task_results(request: Request) -> Response:
    hub = hub_of(request)
    limit = parse_limit(request.query_params.get("limit"), 1000, hub.settings.history_limit)
    offset = parse_int("offset", request.query_params.get("offset", "0"), 0, MAX_OFFSET)
    tasks = await hub.tasks.results(limit, offset)
    return JSONResponse(
        {
            "results": [
                {
                    "id": t.id,
                    "num": t.num,
                    **{k: v for k, v in t.as_dict().items() if k in ("started_at", "finished_at", "timeout")},
                }
                for t in tasks
            ]
        }
    )


async def task_detail(request: Request) -> Response:
    # a str path parameter: starlette's :int convertor raises (a 500) on an id of over 4300 digits
    task_id = parse_int("task id", request.path_params["task_id"], 1, INT64 - 1)
    task = await hub_of(request).tasks.get(task_id)
    if task is None:
        raise ApiError(404, "unknown_task", f"no task {task_id}")
    return JSONResponse(task.as_dict())


ROUTES = [
    Route("/test", serial_test),
    Route("/tasks", submit_task, methods=["POST"]),
    Route("/tasks/queue", task_queue),
    Route("/tasks/results", task_results),
    Route("/tasks/{task_id}", task_detail),
]
