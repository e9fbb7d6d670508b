"""What a write means: the events ``classify`` finds, and the notifications they become."""

from __future__ import annotations

import copy

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS
from harness import BUP, SCHOOL, SOC, Hub, broker, hub, world  # noqa: F401
from sip_hub.fhir import sip
from sip_hub.messaging import parser, vocabulary as vocab
from sip_hub.messaging.events import Fact, classify
from sip_hub.store import outbox as sql
from sip_process import day, read, write_case

PLAN = f.sip_careplan()
PLAN_ID = "alva-sip"
CONSENT = "Consent/alva-sip-samtycke"


def with_phase(plan: dict, phase: str, status: str) -> dict:
    out = copy.deepcopy(plan)
    out["status"] = status
    out["extension"] = [e for e in out["extension"] if e["url"] != sip.EXT_PHASE] + [
        {"url": sip.EXT_PHASE, "valueCode": phase}]
    return out


def events(rtype: str, old: dict | None, new: dict | None) -> list[tuple[str, str | None]]:
    return [(x.event, x.reason) for x in classify(rtype, old, new)]


def test_plan_lifecycle() -> None:
    draft = with_phase(PLAN, "kartlaggning", "draft")
    meeting = with_phase(PLAN, "mote", "draft")
    established = with_phase(PLAN, "upprattad", "active")
    follow_up = with_phase(PLAN, "uppfoljning", "active")
    closed = with_phase(PLAN, "avslutad", "completed")
    assert events("CarePlan", None, draft) == [("sip-initiated", None)]
    assert events("CarePlan", None, established) == [("plan-established", None)]
    assert events("CarePlan", draft, meeting) == []
    assert events("CarePlan", meeting, established) == [("plan-established", None)]
    assert events("CarePlan", established, follow_up) == []
    assert events("CarePlan", follow_up, established) == [("follow-up-done", None)]
    assert events("CarePlan", established, closed) == [("sip-closed", None)]
    (fact,) = classify("CarePlan", None, draft)
    assert fact == Fact("sip-initiated", "alva", "alva-sip", ("CarePlan/alva-sip",))


def test_changes_to_an_established_plan() -> None:
    old = with_phase(PLAN, "upprattad", "active")
    status = copy.deepcopy(old)
    status["activity"][1]["detail"]["status"] = "in-progress"
    assert events("CarePlan", old, status) == [("insats-status-changed", None)]
    revised = copy.deepcopy(old)
    revised["activity"][1]["detail"]["description"] = "Ny insats"
    assert events("CarePlan", old, revised) == [("revision-approved", None)]
    later = copy.deepcopy(old)
    for e in later["extension"]:
        if e["url"] == sip.EXT_FOLLOW_UP:
            e["valueDateTime"] = "2027-04-01T10:00:00+02:00"
    assert events("CarePlan", old, later) == [("follow-up-scheduled", None)]
    assert events("CarePlan", old, copy.deepcopy(old) | {"meta": {"versionId": "9"}}) == []


def test_a_revision_proposal_tells_about_the_plan_it_would_change() -> None:
    proposal = copy.deepcopy(PLAN) | {"id": "rev-1", "intent": "proposal", "status": "draft",
                                      "replaces": [{"reference": "CarePlan/alva-sip/_history/3"}]}
    (fact,) = classify("CarePlan", None, proposal)
    assert (fact.event, fact.careplan_id, fact.focus) == (
        "plan-revision-proposed", "alva-sip", ("CarePlan/rev-1", "CarePlan/alva-sip"))


def test_consent_changes_say_how_they_changed() -> None:
    full = f.sip_consent()
    narrower = f.sip_consent(actor_refs=[f.SOCIAL_SERVICES, f.BUP])
    shorter = f.sip_consent(end="2027-01-01")
    assert events("Consent", None, full) == [("consent-changed", "granted")]
    assert events("Consent", full, narrower) == [("consent-changed", "narrowed")]
    assert events("Consent", narrower, full) == [("consent-changed", "granted")]
    assert events("Consent", full, shorter) == [("consent-changed", "narrowed")]
    assert events("Consent", full, f.sip_consent(status="inactive")) == [
        ("consent-changed", "withdrawn")]
    assert events("Consent", full, copy.deepcopy(full)) == []
    assert events("Consent", None, f.sip_consent(status="inactive")) == []


def test_a_consent_whose_start_moved_is_granted_or_narrowed() -> None:
    """A start moved earlier covers more (granted), one moved later less (narrowed): the
    grants follow the period at once, so the organisations are told. The start is read as
    the grants read it, a date from Swedish midnight: the same instant written as a
    dateTime is no change."""
    start = f.sip_consent(start="2026-11-10")
    earlier = f.sip_consent(start="2026-11-01")
    assert events("Consent", start, earlier) == [("consent-changed", "granted")]
    assert events("Consent", earlier, start) == [("consent-changed", "narrowed")]
    same = f.sip_consent(start="2026-11-10T00:00:00+01:00")
    assert events("Consent", start, same) == []
    opened = f.sip_consent()
    del opened["provision"]["period"]["start"]
    assert events("Consent", start, opened) == [("consent-changed", "granted")]
    # (the end moved later and the start later too: it covers less, for a while)
    moved = f.sip_consent(start="2026-12-01", end="2027-12-01")
    assert events("Consent", start, moved) == [("consent-changed", "narrowed")]


def test_a_consent_moved_to_start_now_is_told_to_the_organisations_it_now_covers(
        client, as_org, store) -> None:
    """Alva's consent is corrected to start next month (BUP may read her SIP no more), then
    back to yesterday: from that write BUP and the school read her SIP again, and are told
    (consent changed, granted), as when a consent is re-activated or lengthened."""
    h = {org: as_org(org) for org in (SOC, BUP, SCHOOL)}
    write_case(client, h[SOC], f.demo_case())  # (established; BUP and the school take part)
    assert client.get(f"/fhir/CarePlan/{PLAN_ID}", headers=h[BUP]).status_code == 200

    def moved(days: int) -> list[tuple[str, str]]:
        consent = read(client, CONSENT)
        consent.pop("meta")
        consent["provision"]["period"]["start"] = day(days)
        with store.begin(write=False) as tx:
            before = {d.id for d in sql.find(tx)}
        r = client.put(f"/fhir/{CONSENT}", content=orjson.dumps(consent),
                       headers=JSON_HEADERS | h[SOC])
        assert r.status_code == 200, r.text
        with store.begin(write=False) as tx:
            return sorted((d.event, d.dest_org) for d in sql.find(tx)
                          if d.id not in before and d.kind == sql.NOTIFICATION)

    moved(30)
    assert client.get(f"/fhir/CarePlan/{PLAN_ID}", headers=h[BUP]).status_code == 403
    told = moved(-1)
    assert client.get(f"/fhir/CarePlan/{PLAN_ID}", headers=h[BUP]).status_code == 200
    assert {(vocab.CONSENT_CHANGED, BUP), (vocab.CONSENT_CHANGED, SCHOOL)} <= set(told), told


def invitation(status: str = "requested") -> dict:
    return {"resourceType": "Task", "id": "inv-bup", "status": status, "intent": "order",
            "code": {"coding": [{"system": sip.CS_TASK, "code": "invitation"}]},
            "basedOn": [{"reference": "CarePlan/alva-sip"}],
            "focus": {"reference": "Appointment/mote-1"}, "for": {"reference": "Patient/alva"},
            "owner": {"reference": f.BUP}}


def test_invitations_and_their_answers() -> None:
    (fact,) = classify("Task", None, invitation())
    assert (fact.event, fact.focus) == ("invitation", (
        "Task/inv-bup", "Appointment/mote-1", "CarePlan/alva-sip"))
    for status, reason in (("accepted", "accept"), ("in-progress", "new-time-proposed"),
                           ("rejected", "decline")):
        assert events("Task", invitation(), invitation(status)) == [
            ("invitation-response", reason)]
    assert events("Task", invitation("rejected"), invitation()) == [("invitation", None)]
    # A new answer of the same kind (another representative, a second time proposed) is told;
    # the same answer again (a retry, a comment) is not.
    named = invitation("accepted") | {"output": [{"valueReference": {"reference": "P/a"}}]}
    renamed = named | {"output": [{"valueReference": {"reference": "P/b"}}]}
    assert events("Task", named, renamed) == [("invitation-response", "accept")]
    assert events("Task", named, named | {"note": [{"text": "x"}]}) == []
    # Withdrawn by the inviter, or closed by the hub: the invited need not answer.
    assert events("Task", invitation(), invitation("cancelled")) == [
        ("invitation-cancelled", None)]
    assert events("Task", invitation("cancelled"), invitation("cancelled")) == []
    other = invitation() | {"code": {"text": "something else"}}
    assert events("Task", None, other) == []


def test_meetings_moved_or_cancelled() -> None:
    meeting = {"resourceType": "Appointment", "id": "mote-1", "status": "booked",
               "start": "2026-12-01T09:00:00+01:00", "end": "2026-12-01T10:00:00+01:00",
               "supportingInformation": [{"reference": "CarePlan/alva-sip"}],
               "participant": [{"actor": {"reference": "Patient/alva"}, "status": "accepted"}]}
    moved = meeting | {"start": "2026-12-02T09:00:00+01:00", "end": "2026-12-02T10:00:00+01:00"}
    assert events("Appointment", None, meeting) == []
    assert events("Appointment", meeting, moved) == [("meeting-rescheduled", None)]
    assert events("Appointment", meeting, meeting | {"status": "cancelled"}) == [
        ("meeting-cancelled", None)]
    assert events("Appointment", meeting, meeting | {"description": "x"}) == []


def test_deletes_and_other_types_are_not_events() -> None:
    assert classify("CarePlan", PLAN, None) == []
    assert classify("Goal", None, f.sip_goal()) == []


# -- through the write path -------------------------------------------------------------------

def test_a_participants_insats_status_change_reaches_the_others(world: Hub) -> None:
    plan = world.client.get("/fhir/CarePlan/alva-sip", headers=world.headers[BUP]).json()
    plan["activity"][0]["detail"]["status"] = "completed"   # BUP's own insats
    r = world.put(BUP, plan)
    assert r.status_code == 200, r.text
    sent = [d for d in world.deliveries() if d.event == "insats-status-changed"]
    assert sorted(d.dest_org for d in sent) == sorted([SOC, SCHOOL])
    msg = parser.parse(orjson.loads(sent[0].content))
    assert msg.sender_org == BUP and msg.careplan_id == "alva-sip" and msg.patient_id == "alva"
    carried = {e["resource"]["resourceType"]: e["resource"] for e in msg.entries}
    assert carried["CarePlan"]["activity"][0]["detail"]["status"] == "completed"
    assert carried["CarePlan"]["meta"]["versionId"] == "2"
    assert "Patient" in carried  # the receivers find the person by personnummer


@pytest.mark.parametrize("org", [SOC])
def test_messages_name_the_hub_as_source_and_the_writer_as_sender(world: Hub, org: str
                                                                  ) -> None:
    d = world.deliveries()[0]
    header = orjson.loads(d.content)["entry"][0]["resource"]
    assert header["source"]["endpoint"] == "http://hub.test/fhir/$process-message"
    assert header["sender"]["identifier"]["value"] == org
    assert {x["receiver"]["identifier"]["value"] for x in header["destination"]} == {
        BUP, SCHOOL}
