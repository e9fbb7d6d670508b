"""The SIP process rules on what a plan references: its goals, its care team, its meetings and
invitations. Plain writes of these must not go around the rules the plan itself is held to:
what an established plan decides changes only with the person's approval (domain rule 3, and
rule 9: 1177 shows it as approved), everyone taking part gets the same information (rule 5),
and a SIP the person has ended stays ended (rule 2). On every route: REST, transaction
entries, conditional writes and $process-message; refusals are in the person's access log.

Alva's SIP (``sip_factory.demo_case``), established with her and her mother's approval and
imported as in the README tour, is coordinated by the social services (SOC); BUP and the
school take part.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, entities, outcome_text, request_events, with_request_id
from messaging.harness import Hub, broker, hub, outcome_of, sip_message  # noqa: F401
from sip_hub.messaging import vocabulary as vocab
from sip_process import (BUP, SCHOOL, SOC, TASK_SYSTEM, read, string, tasks, transition,
                         write_case)

Json = dict[str, Any]
PLAN = "alva-sip"
ALVA = "Patient/alva"
CITIZEN = ("/fhir/CarePlan/$citizen-view?patient="
           f"http://electronichealth.se/identifier/personnummer|{f.DEMO_PNR}")


@pytest.fixture
def h(client, as_org):
    """Alva's established SIP; the headers of SOC, BUP and the school."""
    h = {o: as_org(o) for o in (SOC, BUP, SCHOOL)}
    write_case(client, h[SOC], f.demo_case())
    return h


def _put(client, headers, res: Json, **extra: str):
    return client.put(f"/fhir/{res['resourceType']}/{res['id']}", content=orjson.dumps(res),
                      headers=JSON_HEADERS | headers | extra)


def _bundle(client, headers, btype: str, *entries: Json):
    b = {"resourceType": "Bundle", "type": btype, "entry": list(entries)}
    return client.post("/fhir", content=orjson.dumps(b), headers=JSON_HEADERS | headers)


def _close(client, h) -> None:
    r = transition(client, h[SOC], PLAN, "avslutad",
                   string("reason", "Alva vill avsluta sin SIP"))
    assert r.status_code == 200, r.text


def _goal_texts(client, portal) -> list[str]:
    r = client.get(CITIZEN, headers=portal)
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["description"]["text"] for e in r.json()["entry"]
                  if e["resource"]["resourceType"] == "Goal")


def _extra_goal() -> Json:
    """A goal of Alva's that her plan does not name."""
    return f.sip_goal(id="alva-mal-fritid", life_area="fritid",
                      text="Alva provar en fritidsaktivitet.")


# -- rule 3 / rule 9: the goals of an established plan ---------------------------------------

@pytest.mark.parametrize("route", ["rest", "transaction", "batch"])
def test_a_goal_of_an_established_plan_is_not_deleted(client, h, route):
    """A goal the established plan decides is not deleted by a plain DELETE (REST or a Bundle
    entry), as it is not changed by a PUT: the plan would decide one goal less without the
    person's approval. The refusal says to propose a revision; the goal stays."""
    if route == "rest":
        r = client.delete("/fhir/Goal/alva-mal-skola", headers=h[SOC])
    else:
        r = _bundle(client, h[SOC], route,
                    {"request": {"method": "DELETE", "url": "Goal/alva-mal-skola"}})
        if route == "batch":
            assert r.status_code == 200, r.text
            assert r.json()["entry"][0]["response"]["status"].startswith("409"), r.text
            r = None
    if r is not None:
        assert r.status_code == 409, r.text
        assert "$propose-revision" in outcome_text(r)
    assert read(client, "Goal/alva-mal-skola")["description"]["text"].startswith(
        "Alva går i skolan")


def test_a_goal_the_plan_does_not_name_is_deleted_as_before(client, h):
    """The rule is about the plan's goals: another goal of the person's is deleted."""
    assert _put(client, h[SOC], _extra_goal()).status_code == 201
    r = client.delete("/fhir/Goal/alva-mal-fritid", headers=h[SOC])
    assert r.status_code == 200, r.text


def test_a_goal_gone_from_an_established_plan_is_not_written_anew(client, h, portal):
    """A goal the plan names that has no current version (an operator deleted it) is not
    written anew under its id (by REST or in a transaction): 1177 and GetCarePlans would
    show the new text as a goal the person approved. The operator may put it back."""
    before = _goal_texts(client, portal)
    assert client.delete("/fhir/Goal/alva-mal-skola").status_code == 200  # the operator
    other = f.sip_goal(text="Alva byter skola.")
    r = _put(client, h[SOC], other)
    assert r.status_code == 409, r.text
    assert "approval" in outcome_text(r) and "$propose-revision" in outcome_text(r)
    r = _bundle(client, h[SOC], "transaction",
                {"resource": other, "request": {"method": "PUT", "url": "Goal/alva-mal-skola"}})
    assert r.status_code == 409, r.text
    assert "Alva byter skola." not in _goal_texts(client, portal)
    assert _put(client, {}, f.sip_goal()).status_code == 201
    assert _goal_texts(client, portal) == before


def test_a_plan_imported_before_its_goals_is_still_imported(client, as_org):
    """A transaction importing an established plan may write its goals after it: the plan's
    approval, checked at the end of the transaction, covers them."""
    case = f.demo_case()
    goals = [r for r in case if r["resourceType"] == "Goal"]
    rest = [r for r in case if r["resourceType"] != "Goal"]
    after = next(i for i, r in enumerate(rest) if r["resourceType"] == "CarePlan") + 1
    write_case(client, as_org(SOC), rest[:after] + goals + rest[after:])
    assert read(client, "Goal/alva-mal-skola")["description"]["text"].startswith(
        "Alva går i skolan")


# -- rule 3 / rule 5: the care team ----------------------------------------------------------

def test_the_care_team_of_an_established_plan_is_not_deleted(client, h, portal):
    """The care team says who takes part: deleted, BUP could no longer read the plan nor
    would it be told of it, and 1177 would show the plan without it. Refused as deleting
    the plan is: the SIP is ended with $transition."""
    r = client.delete("/fhir/CareTeam/alva-sip", headers=h[SOC])
    assert r.status_code == 409, r.text
    assert "$transition" in outcome_text(r)
    assert client.get(f"/fhir/CarePlan/{PLAN}", headers=h[BUP]).status_code == 200


def _without_bup_and_school(client, headers: dict[str, str] | None = None) -> Json:
    team = read(client, "CareTeam/alva-sip", headers)
    team.pop("meta")
    team["participant"] = [p for p in team["participant"]
                           if p["member"]["reference"] not in (f.BUP_REPRESENTATIVE,
                                                               f.SCHOOL_REPRESENTATIVE)]
    return team


def test_an_established_plans_care_team_changes_as_before(client, h):
    """Who takes part in an open SIP changes with a PUT of its care team."""
    r = _put(client, h[SOC], _without_bup_and_school(client))
    assert r.status_code == 200, r.text


def test_a_closed_sips_care_team_is_no_longer_changed(client, h):
    """A closed SIP's care team stays as the SIP left it (it says who took part and who reads
    the SIP's record), as its plan and meetings do; nor is it deleted."""
    _close(client, h)
    r = _put(client, h[SOC], _without_bup_and_school(client))
    assert r.status_code == 409 and "closed" in outcome_text(r), r.text
    r = client.delete("/fhir/CareTeam/alva-sip", headers=h[SOC])
    assert r.status_code == 409 and "closed" in outcome_text(r), r.text
    team = read(client, "CareTeam/alva-sip")
    team.pop("meta")
    assert _put(client, h[SOC], team).status_code == 200  # (unchanged: nothing to refuse)


# -- rule 2: after the person ended the SIP ---------------------------------------------------

def _meeting(rid: str = "mote-ny") -> Json:
    return {"resourceType": "Appointment", "id": rid, "status": "booked",
            "start": "2027-03-01T13:00:00+01:00", "end": "2027-03-01T14:00:00+01:00",
            "supportingInformation": [{"reference": f"CarePlan/{PLAN}"}],
            "participant": [
                {"actor": {"reference": f.PATIENT}, "status": "accepted"},
                {"actor": {"reference": f.BUP}, "status": "needs-action"}]}


def _meetings(client) -> list[str]:
    b = read(client, f"Appointment?supporting-info=CarePlan/{PLAN}")
    return [e["resource"]["id"] for e in b.get("entry", [])]


@pytest.mark.parametrize("route", ["post", "put", "conditional", "transaction"])
def test_no_new_meeting_is_booked_for_a_sip_the_person_ended(client, h, route):
    """After Alva ended her SIP, a new meeting for it is refused however it is written:
    $invite refuses a closed plan, and its existing meetings are no longer changed."""
    _close(client, h)
    before = _meetings(client)
    meeting = _meeting()
    if route == "post":
        meeting.pop("id")
        r = client.post("/fhir/Appointment", content=orjson.dumps(meeting),
                        headers=JSON_HEADERS | h[SOC])
    elif route == "put":
        r = _put(client, h[SOC], meeting)
    elif route == "conditional":
        meeting.pop("id")
        r = client.post("/fhir/Appointment", content=orjson.dumps(meeting),
                        headers=JSON_HEADERS | h[SOC] | {"If-None-Exist": "_id=mote-ny"})
    else:
        r = _bundle(client, h[SOC], "transaction",
                    {"resource": meeting, "request": {"method": "PUT",
                                                      "url": "Appointment/mote-ny"}})
    assert r.status_code == 409, r.text
    assert "closed (avslutad)" in outcome_text(r)
    assert _meetings(client) == before


def test_a_meeting_is_not_moved_into_a_sip_the_person_ended(client, h):
    """A meeting of no SIP does not become one of the closed SIP."""
    meeting = _meeting("mote-annat")
    meeting.pop("supportingInformation")
    assert _put(client, h[SOC], meeting).status_code == 201
    _close(client, h)
    r = _put(client, h[SOC], _meeting("mote-annat"))
    assert r.status_code == 409 and "closed (avslutad)" in outcome_text(r), r.text


def _invitation(**changes: Any) -> Json:
    return {"resourceType": "Task", "status": "requested", "intent": "order",
            "code": {"coding": [{"system": TASK_SYSTEM, "code": "invitation"}]},
            "basedOn": [{"reference": f"CarePlan/{PLAN}"}], "for": {"reference": f.PATIENT},
            "requester": {"reference": f.SOCIAL_SERVICES}, "owner": {"reference": f.BUP},
            "description": "Kallelse till nytt SIP-möte"} | changes


def _open_invitations(client, h) -> list[Json]:
    return tasks(client, f"code={TASK_SYSTEM}|invitation&owner={f.BUP}&status=requested",
                 h[BUP])


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "open"])
def test_an_invitation_is_sent_with_invite_only(client, h, closed):
    """An invitation obliges the invited organisation to answer (rule 6): it is sent with
    $invite, which checks the SIP's phase (and refuses a SIP the person ended, rule 2), the
    consent and the meeting. A plain invitation Task is refused, on an open SIP too."""
    if closed:
        _close(client, h)
    r = client.post("/fhir/Task", content=orjson.dumps(_invitation()),
                    headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409, r.text
    assert "$invite" in outcome_text(r)
    assert _open_invitations(client, h) == []


def test_the_hubs_sip_tasks_are_not_written_as_plain_tasks(client, h):
    """The deadline Tasks are opened by the hub while their obligation holds; an
    organisation's own Task is written as before, but is not made one of the hub's."""
    overdue = _invitation(code={"coding": [{"system": TASK_SYSTEM,
                                            "code": "follow-up-overdue"}]}, id="t-egen")
    r = _put(client, h[SOC], overdue)
    assert r.status_code == 409 and "sip-task" in outcome_text(r), r.text
    own = overdue | {"code": {"text": "Ring mamman"}}
    assert _put(client, h[SOC], own).status_code == 201
    r = _put(client, h[SOC], _invitation(id="t-egen"))
    assert r.status_code == 409 and "$invite" in outcome_text(r), r.text
    assert _open_invitations(client, h) == []


# -- the refusals are audited ----------------------------------------------------------------

def test_the_refusals_are_in_the_persons_access_log(client, h):
    """A refused delete names the goal; a refused create, which has no record yet, names
    the person it was about."""
    _close(client, h)
    r = client.delete("/fhir/Goal/alva-mal-skola",
                      headers=with_request_id(h[SOC], "refused-goal-delete"))
    assert r.status_code == 409, r.text
    [event] = request_events(client, "refused-goal-delete")
    assert event["outcome"] == "4" and "Goal/alva-mal-skola" in entities(event), event
    assert ALVA in entities(event), event
    r = client.post("/fhir/Appointment", content=orjson.dumps(_meeting()),
                    headers=JSON_HEADERS | with_request_id(h[SOC], "refused-meeting"))
    assert r.status_code == 409, r.text
    [event] = request_events(client, "refused-meeting")
    assert event["outcome"] == "4" and ALVA in entities(event), event


# -- $process-message ------------------------------------------------------------------------

@pytest.fixture
def closed(hub: Hub) -> Hub:  # noqa: F811
    write_case(hub.client, hub.headers[SOC], f.demo_case())
    r = transition(hub.client, hub.headers[SOC], PLAN, "avslutad",
                   string("reason", "Alva vill avsluta sin SIP"))
    assert r.status_code == 200, r.text
    return hub


def test_a_message_does_not_change_a_closed_sips_meetings_or_care_team(closed: Hub) -> None:
    """A message's resources are written through the same rules: a new meeting for the
    closed SIP, or its care team changed, refuses the message and nothing is stored."""
    msg = sip_message("meeting-rescheduled", SOC, _meeting(),
                      focus=["Appointment/mote-ny", f"CarePlan/{PLAN}"])
    outcome, says = outcome_of(closed.post(SOC, "/fhir/$process-message", msg))
    assert outcome == vocab.FATAL_ERROR and "closed (avslutad)" in says, says
    assert closed.client.get("/fhir/Appointment/mote-ny",
                             headers=closed.headers[SOC]).status_code == 404
    team = _without_bup_and_school(closed.client, closed.headers[SOC])
    msg = sip_message("insats-status-changed", SOC, team, focus=[f"CarePlan/{PLAN}"])
    outcome, says = outcome_of(closed.post(SOC, "/fhir/$process-message", msg))
    assert outcome == vocab.FATAL_ERROR and "care team is no longer changed" in says, says
