"""Odd messages found by probing $process-message: each gets a response message or a clear
4xx, never a 5xx (on PostgreSQL too), and a refused one leaves nothing behind."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import pytest

from harness import (BUP, URL, Hub, broker, current_plan, hub, receivers,  # noqa: F401
                     status_change, world)
from harness import outcome_of
from sip_hub.messaging import process_message as pm, vocabulary as vocab
from sip_hub.store import inbox

Json = dict[str, Any]


def _fresh(msg: Json) -> Json:
    out = copy.deepcopy(msg)
    out["id"] = str(uuid.uuid4())
    out["entry"][0]["resource"]["id"] = str(uuid.uuid4())
    return out




@pytest.mark.parametrize("event", ["x" * 100, "a\u0000b"])
@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_event_code_that_does_not_fit_the_inbox_is_not_a_5xx(world: Hub, event: str,
                                                               asynchronous: bool) -> None:
    """The inbox recorded the event code as sent (unparsed, for an async message): a long one
    or one with a NUL was a 5xx on PostgreSQL."""
    msg = _fresh(status_change(world))
    msg["entry"][0]["resource"]["eventCoding"]["code"] = event
    r = world.post(BUP, URL + ("?async=true" if asynchronous else ""), msg)
    if asynchronous:
        assert r.status_code == 202, r.text
        assert pm.process_accepted(world.store, world.messaging) == 1
    else:
        code, says = outcome_of(r)
        assert code == vocab.FATAL_ERROR and "Unknown SIP event" in says
    with world.store.begin(write=False) as tx:
        found, _ = inbox.lookup(tx, BUP, msg["entry"][0]["resource"]["id"], msg["id"],
                                time.time_ns() // 1000)
    assert found is not None and found.event == "" and found.response_code == vocab.FATAL_ERROR
    assert current_plan(world)["meta"]["versionId"] == "1"


def test_a_message_carrying_one_resource_twice_is_a_fatal_error(world: Hub) -> None:
    """Two versions of the plan under different fullUrls: one was written and the other taken
    as unchanged (or both written), and the message was answered ok."""
    msg = _fresh(status_change(world, status="completed"))
    other = copy.deepcopy(msg["entry"][1])
    other["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
    other["resource"]["activity"][0]["detail"]["status"] = "cancelled"
    msg["entry"].append(other)
    before = len(world.deliveries())
    code, says = outcome_of(world.post(BUP, URL, msg))
    assert code == vocab.FATAL_ERROR
    assert "carries CarePlan/alva-sip twice" in says and "Bundle.entry[1]" in says
    assert current_plan(world)["meta"]["versionId"] == "1"
    assert len(world.deliveries()) == before


@pytest.mark.parametrize("tail", ["x" * 2100, "x\u0000y", "x y", "x\r\nX-Evil: 1"])
def test_a_response_url_the_inbox_cannot_keep_is_a_400(world: Hub, receivers: Any,  # noqa: F811
                                                       tail: str) -> None:
    """On the sender's endpoint, but longer than the inbox keeps (2000) or with a NUL: a 5xx
    on PostgreSQL; a space or a line break is no URL to send a response to."""
    bup = receivers()
    world.configure({BUP: bup.url})
    msg = _fresh(status_change(world))
    r = world.post(BUP, URL, msg, params={"async": "true",
                                          "response-url": bup.url + "/" + tail})
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["response-url"]
    with world.store.begin(write=False) as tx:
        assert inbox.lookup(tx, BUP, msg["entry"][0]["resource"]["id"], msg["id"],
                            time.time_ns() // 1000) == (None, None)


def test_a_message_naming_the_sip_by_the_hubs_absolute_urls_is_applied(world: Hub) -> None:
    """References to the hub's own base are the hub's resources: a focus
    'http://hub.test/fhir/CarePlan/alva-sip' was refused as 'neither an entry nor a resource
    the hub holds', and a plan whose subject was the Patient's absolute URL named no person
    for the SIP the message concerns."""
    relative = _fresh(status_change(world))
    before = len(world.deliveries())
    assert outcome_of(world.post(BUP, URL, relative))[0] == vocab.OK
    routed = len(world.deliveries()) - before
    assert routed > 0
    msg = _fresh(status_change(world, status="in-progress"))
    plan = msg["entry"][1]["resource"]
    plan["subject"]["reference"] = "http://hub.test/fhir/Patient/alva"
    msg["entry"][0]["resource"]["focus"] = [
        {"reference": "http://hub.test/fhir/CarePlan/alva-sip"}]
    assert outcome_of(world.post(BUP, URL, msg))[0] == vocab.OK
    stored = current_plan(world)
    assert stored["meta"]["versionId"] == "3"
    assert stored["subject"] == {"reference": "Patient/alva"}
    assert stored["activity"][0]["detail"]["status"] == "in-progress"
    assert len(world.deliveries()) - before == 2 * routed
    other = _fresh(status_change(world, status="completed"))
    other["entry"][0]["resource"]["focus"] = [
        {"reference": "http://elsewhere.test/fhir/CarePlan/alva-sip"}]
    code, says = outcome_of(world.post(BUP, URL, other))
    assert code == vocab.FATAL_ERROR and "neither an entry" in says
    assert current_plan(world)["meta"]["versionId"] == "3"
