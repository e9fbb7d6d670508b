"""Blocking work of a request runs on the app's threads, in the request's context."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from sip_hub.routes.wire import in_thread

WHO: ContextVar[str] = ContextVar("who", default="nobody")


def request_of(threads: ThreadPoolExecutor | None) -> Request:
    app = Starlette()
    if threads is not None:
        app.state.threads = threads  # as the hub's lifespan sets it
    return Request({"type": "http", "app": app})


def seen() -> tuple[str, str]:
    return threading.current_thread().name, WHO.get()


@pytest.mark.parametrize("own_threads", [True, False], ids=["app's threads", "no lifespan"])
def test_work_runs_off_the_event_loop_in_the_callers_context(own_threads: bool) -> None:
    pool = ThreadPoolExecutor(2, thread_name_prefix="sip-hub") if own_threads else None

    async def main() -> tuple[str, str]:
        WHO.set("SE2321000016-15CQ")
        return await in_thread(request_of(pool), seen)
    try:
        name, who = asyncio.run(main())
    finally:
        if pool is not None:
            pool.shutdown()
    assert who == "SE2321000016-15CQ"
    assert name != threading.main_thread().name
    assert name.startswith("sip-hub") == own_threads


def test_an_exception_reaches_the_caller() -> None:
    def fails() -> None:
        raise ValueError("refused")

    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="refused"):
        asyncio.run(in_thread(request_of(pool), fails))
