"""``$process-message``: synchronous and asynchronous, every reliable-messaging case of the spec,
atomic apply through the write pipeline, routing by consent."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import orjson
import pytest

from harness import (ADMIN, BUP, OUTSIDER, SCHOOL, SOC, URL, Hub, Receiver, acks,  # noqa: F401
                     broker, current_plan, hub, receivers, status_change, world)
from sip_hub.access import Access
from sip_hub.auth import Principal, parse_scopes
from sip_hub.errors import TransientError
from sip_hub.interactions import Context
from sip_hub.messaging import builder, process_message as pm
from sip_hub.messaging.process_message import process_accepted

Json = dict[str, Any]


def answer(resp: Any) -> tuple[str, Json]:
    """(response.code, the OperationOutcome) of a response message."""
    assert resp.status_code == 200, resp.text
    data = resp.json()
    header = data["entry"][0]["resource"]
    assert header["eventCoding"]["code"] == "acknowledgement"
    oo = next(e["resource"] for e in data["entry"]
              if e["resource"]["resourceType"] == "OperationOutcome")
    return header["response"]["code"], oo


def forwarded(hub: Hub, event: str = "insats-status-changed") -> list[tuple[str, str]]:
    return sorted((d.dest_org, d.message_id) for d in hub.deliveries() if d.event == event)


# -- synchronous --------------------------------------------------------------------------

def test_a_message_is_applied_routed_by_consent_and_answered_ok(world: Hub) -> None:
    msg = status_change(world)
    r = world.post(BUP, URL, msg)
    code, oo = answer(r)
    header = r.json()["entry"][0]["resource"]
    assert code == "ok" and header["response"]["identifier"] == msg["entry"][0]["resource"]["id"]
    assert header["destination"][0]["receiver"]["identifier"]["value"] == BUP
    assert {f["reference"] for f in header["focus"]} == {"CarePlan/alva-sip", "Patient/alva"}
    plan = current_plan(world)
    assert plan["meta"]["versionId"] == "2"
    assert plan["activity"][0]["detail"]["status"] == "completed"
    # Sent on once (not again by the write hook) to everyone covered but the sender.
    sent = forwarded(world)
    assert [org for org, _ in sent] == sorted([SOC, SCHOOL])
    assert len({m for _, m in sent}) == 1 and "sent on as" in oo["issue"][0]["diagnostics"]
    # The write went through the pipeline as the sender: audited for BUP.
    audits = world.client.get("/fhir/AuditEvent?_count=200", headers=world.headers["admin"])
    updates = [a["resource"] for a in audits.json().get("entry", [])
               if a["resource"]["action"] == "U"]
    assert any(BUP in orjson.dumps(a).decode() for a in updates)


def test_a_message_the_rules_refuse_is_a_fatal_error_and_stores_nothing(world: Hub) -> None:
    msg = status_change(world)
    msg["entry"][1]["resource"]["activity"][1]["detail"]["description"] = "BUP rewrote this"
    before = len(world.deliveries())
    code, oo = answer(world.post(BUP, URL, msg))
    assert code == "fatal-error"
    assert "coordinating organisation" in oo["issue"][0]["diagnostics"]
    assert current_plan(world)["meta"]["versionId"] == "1"
    assert len(world.deliveries()) == before


def test_a_destination_the_consent_does_not_cover_refuses_the_whole_message(world: Hub) -> None:
    code, oo = answer(world.post(BUP, URL, status_change(world, destinations=(SOC, OUTSIDER))))
    assert code == "fatal-error" and OUTSIDER in oo["issue"][0]["diagnostics"]
    assert oo["issue"][0]["expression"] == ["Bundle.entry[0].resource.destination"]
    assert current_plan(world)["meta"]["versionId"] == "1"
    assert forwarded(world) == []


def test_an_invalid_message_gets_every_problem_in_its_fatal_error(world: Hub) -> None:
    msg = status_change(world)
    header = msg["entry"][0]["resource"]
    header["eventCoding"]["code"] = "no-such-event"
    header["destination"][0].pop("receiver")
    code, oo = answer(world.post(BUP, URL, msg))
    assert code == "fatal-error" and len(oo["issue"]) == 2
    assert {i["expression"][0] for i in oo["issue"]} == {
        "Bundle.entry[0].resource.eventCoding.code",
        "Bundle.entry[0].resource.destination[0].receiver"}


def test_the_sender_must_be_the_authenticated_organisation(world: Hub) -> None:
    r = world.post(SCHOOL, URL, status_change(world, sender=BUP))
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    assert world.post(SCHOOL, URL, status_change(world, sender=BUP)).status_code == 403
    assert world.client.post(URL, content=orjson.dumps(status_change(world)),
                             headers={"content-type": "application/fhir+json"}
                             ).status_code == 401


@pytest.mark.parametrize("change, status", [
    (lambda m: m | {"type": "transaction"}, 400),
    (lambda m: {k: v for k, v in m.items() if k != "id"}, 400),
    (lambda m: m | {"entry": m["entry"][1:]}, 400),
])
def test_what_is_not_a_message_is_a_4xx_with_an_operation_outcome(world: Hub, change: Any,
                                                                    status: int) -> None:
    r = world.post(BUP, URL, change(status_change(world)))
    assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome"


# -- reliable messaging -------------------------------------------------------------------

def test_the_same_message_again_gets_the_original_response_and_no_second_effect(
        world: Hub) -> None:
    msg = status_change(world)
    first = world.post(BUP, URL, msg)
    again = world.post(BUP, URL, msg)
    assert again.status_code == 200 and again.content == first.content
    assert current_plan(world)["meta"]["versionId"] == "2"
    assert len(forwarded(world)) == 2


def test_a_resubmission_with_a_new_bundle_id_gets_the_stored_outcome(world: Hub) -> None:
    msg = status_change(world)
    first = world.post(BUP, URL, msg)
    resubmitted = msg | {"id": str(uuid.uuid4())}
    again = world.post(BUP, URL, resubmitted)
    assert again.content == first.content
    assert current_plan(world)["meta"]["versionId"] == "2" and len(forwarded(world)) == 2


def test_a_refused_message_sent_again_is_refused_the_same_way(world: Hub) -> None:
    msg = status_change(world, destinations=(OUTSIDER,))
    first = world.post(BUP, URL, msg)
    assert answer(first)[0] == "fatal-error"
    assert world.post(BUP, URL, msg).content == first.content


def test_a_reused_bundle_id_with_a_new_header_id_is_refused(world: Hub) -> None:
    msg = status_change(world)
    world.post(BUP, URL, msg)
    other = status_change(world, status="cancelled")
    other["id"] = msg["id"]
    r = world.post(BUP, URL, other)
    assert r.status_code == 409
    issue = r.json()["issue"][0]
    assert issue["code"] == "duplicate" and msg["id"] in issue["diagnostics"]
    assert current_plan(world)["activity"][0]["detail"]["status"] == "completed"


def test_ids_are_remembered_per_sender(world: Hub) -> None:
    mine = status_change(world)
    world.post(BUP, URL, mine)
    theirs = status_change(world, sender=SCHOOL, status="cancelled")
    theirs["id"] = mine["id"]
    theirs["entry"][0]["resource"]["id"] = mine["entry"][0]["resource"]["id"]
    theirs["entry"][0]["fullUrl"] = mine["entry"][0]["fullUrl"]
    r = world.post(SCHOOL, URL, theirs)
    code, oo = answer(r)   # processed on its own: the school may not change BUP's insats
    assert code == "fatal-error" and r.content != world.post(BUP, URL, mine).content


def test_ids_are_forgotten_after_the_cache_time(world: Hub, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    assert pm.reliable_cache_minutes(world.messaging) == 24 * 60
    msg = status_change(world)
    world.post(BUP, URL, msg)
    later = pm._now() + (24 * 60 + 1) * 60_000_000
    monkeypatch.setattr(pm, "_now", lambda: later)
    sent = len(forwarded(world))
    code, oo = answer(world.post(BUP, URL, msg))
    # Processed as a new message (not answered from the cache): it finds its change made,
    # so it changes nothing and is not sent on again.
    assert code == "ok" and "changed nothing" in str(oo) and len(forwarded(world)) == sent


def test_a_transient_failure_is_answered_but_not_remembered(
        world: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pm._apply
    calls: list[int] = []

    def flaky(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("the database is busy")
        return real(*args)
    monkeypatch.setattr(pm, "_apply", flaky)
    msg = status_change(world)
    assert answer(world.post(BUP, URL, msg))[0] == "transient-error"
    assert current_plan(world)["meta"]["versionId"] == "1"
    assert answer(world.post(BUP, URL, msg))[0] == "ok"
    assert current_plan(world)["meta"]["versionId"] == "2"


def ctx_for(org: str) -> Context:
    scope = "system/*.cruds"
    principal = Principal(f"client-{org}", org, "organization", parse_scopes(scope), False,
                          scope)
    return Context("http://hub.test/fhir", access=Access.for_principal(principal))


def test_concurrent_copies_of_one_message_have_one_effect(world: Hub) -> None:
    msg = status_change(world)
    replies: list[pm.Reply] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            replies.append(pm.process(world.store, ctx_for(BUP), orjson.loads(orjson.dumps(msg)),
                                      world.messaging))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ok = [r for r in replies if r.status == 200]
    # Each copy is answered (the late ones may be told to resend), one applied it.
    assert len(replies) + len(errors) == 4
    assert all(isinstance(e, TransientError) for e in errors)
    assert current_plan(world)["meta"]["versionId"] == "2" and len(forwarded(world)) == 2
    codes = {orjson.loads(r.body)["entry"][0]["resource"]["response"]["code"]
             if isinstance(r.body, bytes) else r.body["entry"][0]["resource"]["response"]["code"]
             for r in ok}
    assert codes <= {"ok", "transient-error"} and "ok" in codes


# -- asynchronous -----------------------------------------------------------------------------

def test_async_answers_202_at_once_and_delivers_the_response_later(world: Hub,
                                                                   receivers: Any) -> None:
    bup: Receiver = receivers()
    world.configure({BUP: bup.url})
    msg = status_change(world)
    r = world.post(BUP, URL + "?async=true", msg)
    assert r.status_code == 202 and r.json()["resourceType"] == "OperationOutcome"
    assert current_plan(world)["meta"]["versionId"] == "1"     # not yet
    # Sent again while waiting: still accepted; asked synchronously: try again later.
    assert world.post(BUP, URL + "?async=true", msg).status_code == 202
    assert answer(world.post(BUP, URL, msg))[0] == "transient-error"

    assert process_accepted(world.store, world.messaging) == 1
    assert current_plan(world)["meta"]["versionId"] == "2"
    world.rounds(lambda: bool(acks(bup)))
    (response,) = acks(bup)
    header = response["entry"][0]["resource"]
    assert header["response"] == {"identifier": msg["entry"][0]["resource"]["id"],
                                  "code": "ok", "details": header["response"]["details"]}
    # Afterwards the stored response is what a resend gets.
    assert answer(world.post(BUP, URL, msg))[0] == "ok"


def test_async_response_goes_to_the_response_url_on_the_senders_endpoint(
        world: Hub, receivers: Any) -> None:
    bup: Receiver = receivers()
    world.configure({BUP: bup.url})
    reply_to = bup.url.replace("$process-message", "replies")
    msg = status_change(world, destinations=(OUTSIDER,))
    r = world.client.post(URL, params={"async": "true", "response-url": reply_to},
                          content=orjson.dumps(msg),
                          headers={"content-type": "application/fhir+json"} | world.headers[BUP])
    assert r.status_code == 202, r.text
    process_accepted(world.store, world.messaging)
    world.rounds(lambda: bool(acks(bup)))
    header = acks(bup)[0]["entry"][0]["resource"]
    assert header["response"]["code"] == "fatal-error"
    assert current_plan(world)["meta"]["versionId"] == "1"
    (d,) = [d for d in world.deliveries() if d.kind == "response"]
    assert d.endpoint_url == reply_to and d.state == "delivered"


def test_a_response_url_elsewhere_is_refused(world: Hub, receivers: Any) -> None:
    world.configure({BUP: receivers().url})
    for url, params in ((URL, {"async": "true", "response-url": "http://evil.test/x"}),
                        (URL, {"response-url": "http://evil.test/x"}),
                        (URL, {"async": "maybe"})):
        r = world.client.post(url, params=params, content=orjson.dumps(status_change(world)),
                              headers={"content-type": "application/fhir+json"}
                              | world.headers[BUP])
        assert r.status_code == 400, params


def test_an_answer_to_the_hubs_message_is_acknowledged_and_goes_nowhere(world: Hub) -> None:
    ack = builder.response("some-header", "ok", fhir_base="https://bup.test/fhir",
                           destination=builder.Party(SOC, "http://hub.test/fhir/$process-message"),
                           focus=["CarePlan/alva-sip"])
    ack["entry"][0]["resource"]["sender"] = {"identifier": {
        "system": "urn:oid:1.2.752.29.4.19", "value": BUP}}
    before = len(world.deliveries())
    assert answer(world.post(BUP, URL, ack))[0] == "ok"
    assert len(world.deliveries()) == before


def test_admin_only_replay(world: Hub) -> None:
    r = world.client.post("/admin/messages/nothing/$replay", headers=world.headers[BUP])
    assert r.status_code == 403
    r = world.client.post("/admin/messages/nothing/$replay", headers=world.headers["admin"])
    assert r.status_code == 404 and ADMIN
    for bad in ("a%00b", "x" * 65, "two%20words"):
        r = world.client.post(f"/admin/messages/{bad}/$replay", headers=world.headers["admin"])
        assert r.status_code == 400 and "is not a valid FHIR id" in r.text, r.text
