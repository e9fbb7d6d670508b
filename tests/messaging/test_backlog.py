"""Back-pressure: while the deliveries that are due and undelivered reach
``SIP_HUB_MESSAGE_BACKLOG_LIMIT``, ``$process-message`` answers ``transient-error`` (async: a
503 with Retry-After), stores and remembers nothing, and takes the same message once the
backlog is delivered. Deliveries waiting out a retry delay (their organisation is down) do not
count. On both databases and both buses."""

from __future__ import annotations

from typing import Any

import pytest

from harness import (BUP, SCHOOL, SOC, URL, Hub, Receiver, broker, current_plan,  # noqa: F401
                     hub, receivers, status_change, world)
from sip_hub.fhir.dates import now_utc, to_us
from sip_hub.store import inbox, outbox as sql

pytestmark = pytest.mark.parametrize("broker", ["memory", "rabbitmq"], indirect=True)


def backlog(hub: Hub, cap: int = 1_000) -> int:
    with hub.store.begin(write=False) as tx:
        return sql.backlog(tx, to_us(now_utc()), cap)


def bounded(hub: Hub, endpoints: dict[str, str], extra: int = 0, **settings: Any) -> None:
    """The limit at what is waiting now (+ ``extra``), read afresh for every message."""
    hub.configure(endpoints, backlog_limit=backlog(hub) + extra, **settings)
    hub.messaging.backlog.refresh_seconds = 0.0


def code_of(resp: Any) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["entry"][0]["resource"]["response"]["code"])


def test_a_message_over_the_limit_is_a_transient_error_and_comes_in_once_delivered(
        world: Hub, receivers: Any) -> None:
    soc, school = receivers(), receivers()
    endpoints = {SOC: soc.url, SCHOOL: school.url}
    assert backlog(world) > 0  # the demo SIP's own notifications
    bounded(world, endpoints, extra=1)
    first = status_change(world, status="on-hold")
    assert code_of(world.post(BUP, URL, first)) == "ok"   # under the limit: taken
    waiting = backlog(world)
    before = current_plan(world)

    second = status_change(world, status="completed")
    r = world.post(BUP, URL, second)
    assert code_of(r) == "transient-error"
    outcome = next(e["resource"] for e in r.json()["entry"]
                   if e["resource"]["resourceType"] == "OperationOutcome")
    assert "waiting to go out" in outcome["issue"][0]["diagnostics"]
    assert current_plan(world) == before and backlog(world) == waiting  # nothing stored

    world.rounds(lambda: backlog(world) == 0)
    # Nothing was remembered: the very same message is now taken and applied.
    assert code_of(world.post(BUP, URL, second)) == "ok"
    assert current_plan(world)["activity"][0]["detail"]["status"] == "completed"
    world.rounds(lambda: backlog(world) == 0)
    plans = [e["resource"] for e in soc.received[-1]["entry"]
             if e["resource"]["resourceType"] == "CarePlan"]
    assert plans[0]["activity"][0]["detail"]["status"] == "completed"  # and it was sent on


def test_an_async_message_over_the_limit_is_a_503_with_retry_after(world: Hub,
                                                                  receivers: Any) -> None:
    bounded(world, {SOC: receivers().url})
    r = world.post(BUP, URL + "?async=true", status_change(world))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["issue"][0]["code"] == "transient"
    with world.store.begin(write=False) as tx:
        assert inbox.any_accepted(tx) is False  # not taken for later either


def test_deliveries_waiting_out_a_retry_do_not_hold_back_new_messages(world: Hub) -> None:
    # Every organisation is down: each delivery fails once and waits a minute to retry.
    down = {SOC: "http://127.0.0.1:9/pm", SCHOOL: "http://127.0.0.1:9/pm"}
    world.configure(down, retry_base_seconds=60, retry_max_seconds=60)
    world.rounds(lambda: backlog(world) == 0)
    waiting = world.deliveries(states=[sql.PENDING])
    assert waiting and all(d.attempts == 1 for d in waiting)
    # A limit of one: any delivery due now would refuse the next message.
    world.configure(down, retry_base_seconds=60, retry_max_seconds=60, backlog_limit=1)
    world.messaging.backlog.refresh_seconds = 0.0
    assert code_of(world.post(BUP, URL, status_change(world))) == "ok"


def test_the_backlog_count_is_bounded_by_its_cap(world: Hub) -> None:
    total = backlog(world)
    assert total >= 2
    assert backlog(world, cap=2) == 2 and backlog(world, cap=total + 5) == total


def test_no_limit_takes_every_message(world: Hub) -> None:
    world.configure({}, backlog_limit=0)
    world.messaging.backlog.refresh_seconds = 0.0
    assert backlog(world) > 0
    assert code_of(world.post(BUP, URL, status_change(world))) == "ok"
