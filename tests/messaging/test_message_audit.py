"""``$process-message`` audits its access to personal data as the REST API does: a message
sent on with the SIP's stored plan and person leaves an AuditEvent of that disclosure (a
message that wrote nothing left none: only writes were audited; such a message is no
longer sent on at all), and a message
refused because its sender may not see the SIP leaves a refusal (outcome 4), as the same
client's GET does (it left none)."""

from __future__ import annotations

from typing import Any

import orjson

from harness import (BUP, OUTSIDER, SCHOOL, SOC, URL, Hub, broker, hub, receivers,  # noqa: F401
                     world)
from harness import current_plan, outcome_of, sip_message, status_change
from sip_hub import logs

PLAN = "CarePlan/alva-sip"


def _events(hub: Hub, query: str) -> list[dict[str, Any]]:
    hub.client.app.state.audit.flush()
    r = hub.client.get(f"/fhir/AuditEvent?{query}&_count=1000", headers=hub.headers["admin"])
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def _of_request(hub: Hub, request_id: str) -> list[dict[str, Any]]:
    return _events(hub, f"entity:identifier={request_id}")


def _send(hub: Hub, msg: dict[str, Any], sender: str, request_id: str) -> tuple[str, str]:
    """POST ``msg`` as ``sender`` with ``request_id``: (response code, diagnostics)."""
    r = hub.client.post(URL, content=orjson.dumps(msg),
                        headers={"content-type": "application/fhir+json",
                                 "X-Request-ID": request_id} | hub.headers[sender])
    return outcome_of(r)


def _org(event: dict[str, Any]) -> str | None:
    return next((a["who"]["identifier"]["value"] for a in event["agent"]
                 if a["who"].get("type") == "Organization"), None)


def test_a_message_sent_on_is_audited_as_the_disclosure_it_is(world: Hub) -> None:
    msg = status_change(world, sender=BUP, destinations=(SOC, SCHOOL))
    code, diagnostics = _send(world, msg, BUP, "msg-forward-1")
    assert code == "ok" and "sent on as" in diagnostics
    events = _of_request(world, "msg-forward-1")
    (event,) = [e for e in events if e["subtype"][0]["code"] == "operation"]
    assert event["outcome"] == "0" and _org(event) == BUP
    named = {e["what"].get("reference") for e in event["entity"]}
    assert {PLAN, "Patient/alva"} <= named
    assert "insats-status-changed" in event["outcomeDesc"]
    # The person's access log shows it.
    assert any(e["id"] == event["id"] for e in _events(world, "patient=alva"))


def test_a_message_that_changes_nothing_is_not_sent_on(world: Hub) -> None:
    """Its event did not happen (its resources stand as it carries them, or it carries
    none): the receivers, who act on it, get nothing, and the plan is not disclosed."""
    before = len(world.deliveries())
    stored = current_plan(world)["activity"][0]["detail"]["status"]
    for i, msg in enumerate([
            sip_message("insats-status-changed", SOC, focus=[PLAN], destinations=(SCHOOL,)),
            status_change(world, sender=BUP, status=stored)]):
        sender = SOC if i == 0 else BUP
        code, diagnostics = _send(world, msg, sender, f"msg-nothing-{i}")
        assert code == "ok" and "changed nothing" in diagnostics, diagnostics
        assert "sent on as" not in diagnostics
        assert world.deliveries(ids=[msg["entry"][0]["resource"]["id"]]) == []
        assert not [e for e in _of_request(world, f"msg-nothing-{i}")
                    if e["subtype"][0]["code"] == "operation"]
    assert len(world.deliveries()) == before


def test_a_message_about_a_sip_the_sender_may_not_see_is_audited_as_refused(
        world: Hub) -> None:
    r = world.client.get(f"/fhir/{PLAN}", headers=world.headers[OUTSIDER]
                         | {"X-Request-ID": "rest-get-1"})
    assert r.status_code == 403
    (rest,) = _of_request(world, "rest-get-1")
    msg = sip_message("insats-status-changed", OUTSIDER, focus=[PLAN], destinations=(SOC,))
    code, _ = _send(world, msg, OUTSIDER, "msg-refused-1")
    assert code == "fatal-error"
    (event,) = _of_request(world, "msg-refused-1")
    assert (event["outcome"], rest["outcome"]) == ("4", "4")
    assert _org(event) == _org(rest) == OUTSIDER
    assert {e["what"].get("reference") for e in event["entity"]} >= {PLAN, "Patient/alva"}
    assert world.deliveries(ids=[msg["entry"][0]["resource"]["id"]]) == []


def test_an_async_message_refused_later_is_audited_too(world: Hub) -> None:
    """Processed by the worker: the refusal is audited for the sender's client."""
    from sip_hub.messaging.process_message import process_accepted

    world.configure({OUTSIDER: "http://127.0.0.1:9/pm"})
    msg = sip_message("insats-status-changed", OUTSIDER, focus=[PLAN], destinations=(SOC,))
    r = world.client.post(URL, params={"async": "true"}, content=orjson.dumps(msg),
                          headers={"content-type": "application/fhir+json"}
                          | world.headers[OUTSIDER])
    assert r.status_code == 202, r.text
    token = logs.REQUEST_ID.set("worker-round-1")
    try:
        assert process_accepted(world.store, world.messaging,
                                audit=world.client.app.state.audit) == 1
    finally:
        logs.REQUEST_ID.reset(token)
    (event,) = _of_request(world, "worker-round-1")
    assert event["outcome"] == "4" and _org(event) == OUTSIDER


def test_a_message_to_an_organisation_outside_the_sip_is_audited_as_refused(
        world: Hub) -> None:
    """Its sender may see the SIP, but asked for it to be sent where the person's SIP has
    no party: refused, and the refused disclosure is in the person's access log."""
    msg = sip_message("insats-status-changed", SOC, focus=[PLAN], destinations=(OUTSIDER,))
    code, diagnostics = _send(world, msg, SOC, "msg-stranger-1")
    assert code == "fatal-error" and "no part in the SIP" in diagnostics
    (event,) = _of_request(world, "msg-stranger-1")
    assert event["outcome"] == "4" and _org(event) == SOC
    assert "Patient/alva" in {e["what"].get("reference") for e in event["entity"]}
    assert any(e["id"] == event["id"] for e in _events(world, "patient=alva"))
    assert world.deliveries(ids=[msg["entry"][0]["resource"]["id"]]) == []
