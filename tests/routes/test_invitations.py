"""Invitations to the SIP meeting as the coordinator's and the invited organisations' systems
rely on them: what $invite takes as the person's wishes and who is invited, what each answer
($respond) tells the coordinator, and what holding the meeting ($transition to=mote) closes
and tells. Checked against the published OperationDefinitions
(sip_hub/fhir/definitions/OperationDefinition-sip-*.json) and the README.

Alva's SIP (tests/sip_process.alva_case) is coordinated by the social services (SOC); BUP and
the school are invited.
"""

from __future__ import annotations

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, outcome_text
from sip_hub.store import outbox as sql
from sip_process import (BUP, OUTSIDER, SCHOOL, SOC, alva_case, at, code, dt, invitation, parts,
                         post, read, ref, respond, transition, values, write_case)

PLAN = "alva-sip"


@pytest.fixture
def h(client, as_org):
    headers = {org: as_org(org) for org in (SOC, BUP, SCHOOL)}
    write_case(client, headers[SOC], alva_case())
    return headers


def ok(resp, status=200):
    assert resp.status_code == status, resp.text
    return resp.json()


def invited(client, h, **kw):
    """Alva's SIP in kallelse, BUP and the school invited to a new meeting."""
    ok(transition(client, h[SOC], PLAN, "kartlaggning"))
    return ok(post(client, f"CarePlan/{PLAN}/$invite", h[SOC],
                   invitation(f.BUP, f.SCHOOL, **kw)))


def task_for(out, org_ref):
    return next(t for t in values(out, "task") if t["owner"]["reference"] == org_ref)


def told(store, event, org):
    """The messages of ``event`` in the outbox for ``org`` (their Bundles)."""
    with store.begin(write=False) as tx:
        found = sql.find(tx)
    return [orjson.loads(d.content) for d in found if d.event == event and d.dest_org == org]


def carried_task(message):
    return next(e["resource"] for e in message["entry"]
                if e["resource"]["resourceType"] == "Task")


# -- $respond: every answer reaches the coordinator, once ------------------------------------

def test_a_second_proposed_time_reaches_the_coordinator(client, h, store):
    """BUP proposes another time, then (the psychologist's leave moved) a second one. The
    coordinator plans the meeting on the time BUP proposes: the second proposal is an
    invitation-response of its own, though the Task stays in-progress."""
    out = invited(client, h)
    bup_task = task_for(out, f.BUP)["id"]
    first = (at(days=12), at(days=12, hours=1))
    second = (at(days=14), at(days=14, hours=1))
    ok(respond(client, h[BUP], bup_task, "propose-time", dt("start", first[0]),
               dt("end", first[1])))
    assert len(told(store, "invitation-response", SOC)) == 1
    ok(respond(client, h[BUP], bup_task, "propose-time", dt("start", second[0]),
               dt("end", second[1])))
    times = [carried_task(m)["output"][0]["valuePeriod"]
             for m in told(store, "invitation-response", SOC)]
    assert times == [{"start": first[0], "end": first[1]}, {"start": second[0], "end": second[1]}]


def test_a_new_representative_reaches_the_coordinator(client, h, store):
    """BUP accepts naming its representative, then names Eva instead (the CareTeam's
    representative is replaced, sip-ct-2). The organisation decides who comes and the
    inviter must know (rule 6): an invitation-response (accept) naming Eva, though the Task
    stays accepted."""
    out = invited(client, h)
    bup_task = task_for(out, f.BUP)["id"]
    ok(respond(client, h[BUP], bup_task, "accept", ref("representative", f.BUP_REPRESENTATIVE)))
    eva = f.practitioner("SE2321000016-P9AB", "Eva", "Berg", id="eva")
    assert client.put("/fhir/Practitioner/eva", **body(eva)).status_code in (200, 201)
    ok(respond(client, h[BUP], bup_task, "accept", ref("representative", "Practitioner/eva")))
    named = [carried_task(m)["output"][0]["valueReference"]["reference"]
             for m in told(store, "invitation-response", SOC)]
    assert named == [f.BUP_REPRESENTATIVE, "Practitioner/eva"]


def test_the_same_answer_again_writes_no_new_care_team_and_tells_no_one(client, h, store):
    """A care system retries its accept (a timeout): the same representative again. Nothing
    changed in who takes part: the CareTeam keeps its version (no update in the person's
    access log), and the coordinator is not told the answer a second time."""
    out = invited(client, h)
    bup_task = task_for(out, f.BUP)["id"]
    ok(respond(client, h[BUP], bup_task, "accept", ref("representative", f.BUP_REPRESENTATIVE)))
    before = read(client, "CareTeam/alva-sip")["meta"]["versionId"]
    again = ok(respond(client, h[BUP], bup_task, "accept",
                       ref("representative", f.BUP_REPRESENTATIVE)))
    assert read(client, "CareTeam/alva-sip")["meta"]["versionId"] == before
    assert values(again, "careTeam")[0]["meta"]["versionId"] == before
    assert len(told(store, "invitation-response", SOC)) == 1


# -- holding the meeting: what it closes, answered and told -------------------------------------

def test_holding_the_meeting_answers_the_invitations_it_closed(client, h):
    """The school never answered; moving to mote closes its invitation (cancelled). The
    answer's closedTask ("Invitations and deadline Tasks the transition closed") names it:
    the coordinator learns who never answered."""
    out = invited(client, h)
    ok(respond(client, h[BUP], task_for(out, f.BUP)["id"], "accept",
               ref("representative", f.BUP_REPRESENTATIVE)))
    school_task = task_for(out, f.SCHOOL)["id"]
    res = ok(transition(client, h[SOC], PLAN, "mote"))
    assert read(client, f"Task/{school_task}")["status"] == "cancelled"
    assert {"reference": f"Task/{school_task}"} in values(res, "closedTask")
    assert {"reference": f"Task/{task_for(out, f.BUP)['id']}"} not in values(res, "closedTask")


def test_an_invitation_closed_is_told_to_the_participants(client, h, store, as_org):
    """The invitations the held meeting closes, and one the inviter withdraws, reach the
    organisations as invitation-cancelled, carrying the Task (cancelled, with why): the
    school's system stops asking for an answer no one awaits. Told to the participants the
    consent covers, not to an outsider; the coordinator is told what the hub closed, not
    what it withdrew itself."""
    out = invited(client, h)
    bup_task = task_for(out, f.BUP)
    withdrawn = read(client, f"Task/{bup_task['id']}", h[SOC]) | {"status": "cancelled"}
    ok(client.put(f"/fhir/Task/{bup_task['id']}", content=body(withdrawn)["content"],
                  headers=JSON_HEADERS | h[SOC]))
    (message,) = told(store, "invitation-cancelled", BUP)
    assert (carried_task(message)["id"], carried_task(message)["status"]) == (
        bup_task["id"], "cancelled")
    assert told(store, "invitation-cancelled", SOC) == []
    school_task = task_for(out, f.SCHOOL)["id"]
    ok(transition(client, h[SOC], PLAN, "mote"))
    (message,) = [m for m in told(store, "invitation-cancelled", SCHOOL)
                  if carried_task(m)["id"] == school_task]
    task = carried_task(message)
    assert task["status"] == "cancelled" and "hållits" in task["statusReason"]["text"]
    assert [carried_task(m)["id"] for m in told(store, "invitation-cancelled", SOC)] == [
        school_task]
    assert told(store, "invitation-cancelled", OUTSIDER) == []


# -- $invite: the meeting wishes and who is invited -----------------------------------------------

def _invite_with_wish(client, h, *wish):
    ok(transition(client, h[SOC], PLAN, "kartlaggning"))
    params = invitation(f.BUP, wishes=False)
    params["parameter"].append(parts("meetingWishes", *wish))
    return post(client, f"CarePlan/{PLAN}/$invite", h[SOC], params)


@pytest.mark.parametrize("duration", [{"value": 2, "unit": "kg"}, {"value": 60},
                                      {"value": 1, "unit": "d", "code": "d",
                                       "system": "http://unitsofmeasure.org"}])
def test_a_maximum_length_without_a_unit_of_time_is_a_400(client, h, duration):
    """maxDuration is a Duration: it has a code when it has a value, and that is a time
    (drt-1). "2 kg" as text only, or a bare 60, was stored on the meeting and sent to every
    invited organisation as the person's wish; a day or more is no wish a meeting of at
    most 24 hours follows. 400 naming maxDuration, nothing written."""
    r = _invite_with_wish(client, h, {"name": "maxDuration", "valueDuration": duration})
    assert r.status_code == 400, r.text
    assert "maxDuration" in r.text
    assert read(client, f"CarePlan/{PLAN}")["meta"]["versionId"] == "2"


def test_a_maximum_length_in_minutes_is_kept(client, h):
    """A UCUM time (here 45 min, its unit shown in Swedish) is the person's wish, kept."""
    duration = {"value": 45, "unit": "minuter", "system": "http://unitsofmeasure.org",
                "code": "min"}
    out = ok(_invite_with_wish(client, h, {"name": "maxDuration", "valueDuration": duration}))
    wishes = values(out, "appointment")[0]["extension"][0]["extension"]
    assert {"url": "maxDuration", "valueDuration": duration} in wishes


def test_a_support_coded_in_another_code_system_is_a_400(client, h):
    """support.type has a required binding to the ValueSet sip-meeting-support. A valueCoding
    of another code system (http://example.org/support|interpreter) is not one of its codes,
    though it spells one: 400 naming the support type, nothing written (it was recorded as
    the hub's own 'interpreter')."""
    r = _invite_with_wish(client, h, parts(
        "support", {"name": "type", "valueCoding": {"system": "http://example.org/support",
                                                    "code": "interpreter"}},
        code("language", "ar")))
    assert r.status_code == 400, r.text
    assert "type" in outcome_text(r) and "http://example.org/support" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}")["meta"]["versionId"] == "2"


def test_a_support_coded_in_its_own_code_systems_is_kept(client, h):
    """A valueCoding of the bound code systems (sip-meeting-support, BCP-47) is taken."""
    out = ok(_invite_with_wish(client, h, parts(
        "support",
        {"name": "type", "valueCoding": {"system": "https://sip-hub.se/fhir/CodeSystem/"
                                                   "sip-meeting-support",
                                         "code": "interpreter"}},
        {"name": "language", "valueCoding": {"system": "urn:ietf:bcp:47", "code": "prs-AF"}})))
    support = values(out, "appointment")[0]["extension"][0]["extension"][0]["extension"]
    assert {"url": "language", "valueCoding": {"system": "urn:ietf:bcp:47",
                                               "code": "prs-AF"}} in support


@pytest.mark.parametrize("language", ["tolk på arabiska", "ar_SE", "a", "ar-"])
def test_an_interpreter_language_that_is_not_bcp47_is_a_400(client, h, language):
    """support.language is "the language (BCP-47)", stored as urn:ietf:bcp:47: free text
    ("tolk på arabiska") is no language tag the invited organisations' systems can book an
    interpreter from. 400 naming the language, nothing written."""
    r = _invite_with_wish(client, h, parts("support", code("type", "interpreter"),
                                           code("language", language)))
    assert r.status_code == 400, r.text
    assert "language" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}")["meta"]["versionId"] == "2"


def test_a_person_invited_twice_is_a_400_as_an_organisation_is(client, h):
    """The same invitedOrganization twice is a 400 ("... is invited twice"); so is the same
    invitedPerson twice (a care system's list built twice), nothing written."""
    ok(transition(client, h[SOC], PLAN, "kartlaggning"))
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC],
             invitation(f.BUP, persons=(f.MOTHER, f.MOTHER)))
    assert r.status_code == 400, r.text
    assert "invitedPerson" in r.text and "twice" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}")["meta"]["versionId"] == "2"
