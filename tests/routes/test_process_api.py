"""The SIP process over HTTP: $transition, $invite, $respond, $propose-revision and
$approve-revision, and the plain writes they must not be bypassed by.

Alva's SIP (tests/sip_process.alva_case) is coordinated by the social services (SOC); BUP and
the school are invited; an outsider organisation takes no part.
"""

from __future__ import annotations

import copy
from datetime import date

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, outcome_text
from sip_hub import identifiers
from sip_process import (BUP, OUTSIDER, SCHOOL, SOC, TASK_SYSTEM, alva_case, approval, at,
                         code, day, dt, gosta_case, invitation, one, parameters, parts, phase,
                         post, read, ref, resource, respond, string, tasks, transition, values,
                         write_case)

PLAN = "alva-sip"
ALL_PHASES = ["behov-uppmarksammat", "kartlaggning", "kallelse", "mote", "upprattad",
              "uppfoljning", "avslutad"]


@pytest.fixture
def h(client, as_org):
    """Headers of every organisation's client, with Alva's draft SIP written by SOC."""
    headers = {org: as_org(org) for org in (SOC, BUP, SCHOOL, OUTSIDER)}
    write_case(client, headers[SOC], alva_case())
    return headers


def ok(resp, status=200):
    assert resp.status_code == status, resp.text
    return resp.json()


def to_mapping(client, h):
    return ok(transition(client, h[SOC], PLAN, "kartlaggning"))


def invited(client, h, *orgs, **kw):
    """Alva's SIP in kallelse, BUP and the school (unless ``orgs`` say otherwise) invited."""
    to_mapping(client, h)
    return ok(post(client, f"CarePlan/{PLAN}/$invite", h[SOC],
                   invitation(*(orgs or (f.BUP, f.SCHOOL)), **kw)))


def task_for(out, org_ref):
    return next(t for t in values(out, "task") if t["owner"]["reference"] == org_ref)


def accept(client, h, out, org, org_ref, representative):
    return ok(respond(client, h[org], task_for(out, org_ref)["id"], "accept",
                      ref("representative", representative)))


def held(client, h):
    """Alva's SIP with the meeting held: both organisations accepted."""
    out = invited(client, h, start_days=1)
    accept(client, h, out, BUP, f.BUP, f.BUP_REPRESENTATIVE)
    accept(client, h, out, SCHOOL, f.SCHOOL, f.SCHOOL_REPRESENTATIVE)
    ok(transition(client, h[SOC], PLAN, "mote"))
    return out


def established(client, h):
    held(client, h)
    return ok(transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER)))


# -- the state machine -------------------------------------------------------------------------

def test_a_draft_plan_starts_in_need_noticed_and_moves_forward_one_step(client, h):
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    assert phase(plan) is None and plan["status"] == "draft"
    out = to_mapping(client, h)
    assert (one(out, "from"), one(out, "to")) == ("behov-uppmarksammat", "kartlaggning")
    plan = one(out, "carePlan")
    assert phase(plan) == "kartlaggning" and plan["status"] == "draft"
    assert read(client, f"CarePlan/{PLAN}", h[SOC]) == plan


@pytest.mark.parametrize("to", ["kallelse", "mote", "upprattad", "uppfoljning"])
def test_skipping_phases_is_refused(client, h, to):
    r = transition(client, h[SOC], PLAN, to, *(approval("Patient/alva", f.MOTHER)
                                                if to == "upprattad" else []))
    assert r.status_code == 409
    assert "cannot move" in outcome_text(r) and "kartlaggning" in outcome_text(r)
    assert r.json()["issue"][0]["code"] == "business-rule"


def test_no_step_backwards_and_nothing_after_closing(client, h):
    to_mapping(client, h)
    r = transition(client, h[SOC], PLAN, "behov-uppmarksammat")
    assert r.status_code == 409
    ok(transition(client, h[SOC], PLAN, "avslutad", string("reason", "Behövs inte längre")))
    for to in ALL_PHASES:
        r = transition(client, h[SOC], PLAN, to, string("reason", "igen"))
        assert r.status_code == 409, to
        assert "nothing (closed)" in outcome_text(r)


def test_every_allowed_transition_of_the_whole_process(client, h):
    """behov → kartläggning → kallelse → möte → upprättad → uppföljning → uppföljning →
    upprättad (after a revision of the follow-up date) → avslutad."""
    out = established(client, h)
    assert one(out, "carePlan")["status"] == "active"
    out = ok(transition(client, h[SOC], PLAN, "uppfoljning"))
    assert one(out, "carePlan")["status"] == "active"
    ok(transition(client, h[SOC], PLAN, "uppfoljning", string("reason", "Uppföljningen "
                                                                          "fortsätter")))
    # Concluding the follow-up needs the next follow-up date, which only a revision sets.
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 200, r.text  # the follow-up date (120 days ahead) is still ahead
    out = ok(transition(client, h[SOC], PLAN, "avslutad", string("reason", "Målen är nådda"),
                        ref("requestedBy", "Patient/alva")))
    plan = one(out, "carePlan")
    assert phase(plan) == "avslutad" and plan["status"] == "completed"
    assert plan["period"]["end"] == day(0)
    # What happened stays: the accepted invitations to the meeting that was held.
    invitations = tasks(client, f"based-on=CarePlan/{PLAN}&code={TASK_SYSTEM}|invitation",
                        h[SOC])
    assert [t["status"] for t in invitations] == ["accepted", "accepted"]
    assert values(out, "closedTask") == []


@pytest.mark.parametrize("upto", ALL_PHASES[:4])
def test_closing_before_establishment_revokes_the_plan(client, h, upto):
    steps = {"behov-uppmarksammat": [], "kartlaggning": ["kartlaggning"],
             "kallelse": ["kartlaggning", "invite"], "mote": ["kartlaggning", "invite", "mote"]}
    for step in steps[upto]:
        if step == "invite":
            ok(post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP)))
        else:
            ok(transition(client, h[SOC], PLAN, step))
    out = ok(transition(client, h[SOC], PLAN, "avslutad",
                        string("reason", "Alva vill inte ha en SIP"),
                        ref("requestedBy", "Patient/alva")))
    plan = one(out, "carePlan")
    assert (phase(plan), plan["status"]) == ("avslutad", "revoked")


def test_closing_needs_a_reason(client, h):
    r = transition(client, h[SOC], PLAN, "avslutad")
    assert r.status_code == 400 and "reason" in outcome_text(r)


def test_the_person_ends_the_sip_at_any_time_and_open_work_is_withdrawn(client, h):
    out = invited(client, h)
    appointment = one(out, "appointment")
    out = ok(transition(client, h[SOC], PLAN, "avslutad",
                        string("reason", "Alva och mamma vill avsluta SIP:en"),
                        ref("requestedBy", f.MOTHER)))
    assert one(out, "carePlan")["status"] == "revoked"
    closed = {v["reference"] for v in values(out, "closedTask")}
    assert len(closed) == 2
    for t in closed:
        assert read(client, t, h[SOC])["status"] == "cancelled"
    appt = read(client, f"Appointment/{appointment['id']}", h[SOC])
    assert appt["status"] == "cancelled" and "avslutad" in appt["cancelationReason"]["text"]
    prov = one(out, "provenance")
    assert {"who": {"reference": f.MOTHER}, "type": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
        "code": "informant"}]}} in prov["agent"]


def test_someone_else_cannot_ask_to_end_the_sip(client, h, as_org):
    r = transition(client, h[SOC], PLAN, "avslutad", string("reason", "x"),
                   ref("requestedBy", "Practitioner/sara"))
    assert r.status_code == 409 and "cannot ask" in outcome_text(r)


def test_unknown_phase_and_malformed_parameters_are_400(client, h):
    r = transition(client, h[SOC], PLAN, "planering")
    assert r.status_code == 400 and "not a SIP phase" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$transition", h[SOC],
             parameters(code("to", "kartlaggning"), string("bogus", "x")))
    assert r.status_code == 400 and "no parameter 'bogus'" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$transition", h[SOC],
             parameters(string("to", "kartlaggning")))
    assert r.status_code == 400 and "takes valueCode" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$transition", h[SOC], {"resourceType": "Patient"})
    assert r.status_code == 400 and "Parameters" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$transition", h[SOC], {"resourceType": "Parameters"})
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "required"
    # Not valid FHIR JSON, whatever the operation (a null list reached the hub's own checks)
    for params in ([], None, [{"name": "to", "valueCode": "kartlaggning", "part": None}]):
        r = post(client, f"CarePlan/{PLAN}/$transition", h[SOC],
                 {"resourceType": "Parameters", "parameter": params})
        assert r.status_code == 422, r.text
        assert "ele-1" in outcome_text(r) or "null" in outcome_text(r)
    assert client.get(f"/fhir/CarePlan/{PLAN}").json()["meta"]["versionId"] == "1"
    r = post(client, "CarePlan/nobody/$transition", h[SOC],
             parameters(code("to", "kartlaggning")))
    assert r.status_code == 404


def test_if_match_makes_the_transition_conditional(client, h):
    r = client.post(f"/fhir/CarePlan/{PLAN}/$transition", content=body(parameters(
        code("to", "kartlaggning")))["content"], headers=JSON_HEADERS | h[SOC] | {
        "If-Match": 'W/"7"'})
    assert r.status_code == 412
    r = client.post(f"/fhir/CarePlan/{PLAN}/$transition", content=body(parameters(
        code("to", "kartlaggning")))["content"], headers=JSON_HEADERS | h[SOC] | {
        "If-Match": 'W/"1"'})
    assert r.status_code == 200


# -- who drives the process ----------------------------------------------------------------

@pytest.mark.parametrize("who", [BUP, OUTSIDER])
def test_only_the_coordinating_organisation_drives_the_process(client, h, who):
    held(client, h) if who == BUP else to_mapping(client, h)
    r = transition(client, h[who], PLAN, "avslutad", string("reason", "x"))
    assert r.status_code == 403
    if who == BUP:
        assert "coordinating organisation" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$invite", h[who], invitation(f.SCHOOL))
    assert r.status_code == 403


def test_admin_clients_do_not_drive_the_process(client, h):
    r = transition(client, {}, PLAN, "kartlaggning")
    assert r.status_code == 403


def test_anonymous_calls_are_401(anonymous, h):
    anonymous.headers.pop("Authorization", None)
    r = transition(anonymous, {}, PLAN, "kartlaggning")
    assert r.status_code == 401


# -- consent and custodians ---------------------------------------------------------------

def set_consent(client, h, **kw):
    consent = f.sip_consent(**{"start": day(-10), "end": day(365), **kw})
    ok(client.put("/fhir/Consent/alva-sip-samtycke", content=body(consent)["content"],
                  headers=JSON_HEADERS | h[SOC]))


@pytest.mark.parametrize("consent", [{"status": "inactive"}, {"status": "proposed"},
                                     {"start": "2020-01-01", "end": "2021-01-01"}])
def test_leaving_the_mapping_needs_an_active_consent(client, h, consent):
    to_mapping(client, h)
    set_consent(client, h, **consent)
    r = transition(client, h[SOC], PLAN, "kallelse")
    assert r.status_code == 409 and "consent" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP))
    assert r.status_code == 409 and "consent" in outcome_text(r)
    set_consent(client, h)
    ok(transition(client, h[SOC], PLAN, "kallelse"))


def test_mapping_itself_needs_no_consent_yet(client, h):
    set_consent(client, h, status="proposed")
    ok(transition(client, h[SOC], PLAN, "kartlaggning"))


def test_withdrawn_consent_stops_establishing(client, h):
    held(client, h)
    set_consent(client, h, status="inactive")
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 409 and "consent" in outcome_text(r)
    # ... but the person may always end the SIP (rule 2).
    ok(transition(client, h[SOC], PLAN, "avslutad", string("reason", "Samtycket återkallat")))


def test_invited_organisations_must_be_covered_by_the_consent(client, h):
    to_mapping(client, h)
    set_consent(client, h, actor_refs=(f.SOCIAL_SERVICES, f.BUP, f.MOTHER))
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP, f.SCHOOL))
    assert r.status_code == 409
    assert "does not cover" in outcome_text(r) and "SE2120000142-SKO7" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}", h[SOC])["meta"]["versionId"] == "2"  # unchanged


def test_an_organisation_a_second_consent_covers_may_be_invited(client, h):
    """A person may have given two consents in force at once, each naming its parties: an
    invitation needs one that covers the organisation (the first alone refused the school,
    which only the second names)."""
    to_mapping(client, h)
    set_consent(client, h, actor_refs=(f.SOCIAL_SERVICES, f.BUP, f.MOTHER))
    second = {**f.sip_consent(start=day(-5), end=day(200),
                              actor_refs=(f.SOCIAL_SERVICES, f.SCHOOL, f.MOTHER)),
              "id": "alva-sip-samtycke-skolan"}
    r = client.put("/fhir/Consent/alva-sip-samtycke-skolan", content=body(second)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 201, r.text
    ok(post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP, f.SCHOOL)))


def test_a_child_needs_a_custodian_before_invitations_go_out(client, as_org):
    h = {SOC: as_org(SOC)}
    write_case(client, h[SOC], alva_case(custodian=False))
    to_mapping(client, h)
    r = transition(client, h[SOC], PLAN, "kallelse")
    assert r.status_code == 409 and "under 18" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP))
    assert r.status_code == 409 and "custodian" in outcome_text(r)
    team = f.sip_careteam(status="proposed", representatives=())  # with the mother
    ok(client.put("/fhir/CareTeam/alva-sip", content=body(team)["content"],
                  headers=JSON_HEADERS | h[SOC]))
    ok(transition(client, h[SOC], PLAN, "kallelse"))


def test_an_adult_needs_no_custodian(client, as_org):
    vc = as_org(f.VARDCENTRAL_HSA)
    write_case(client, vc, gosta_case())
    ok(transition(client, vc, "gosta-sip", "kartlaggning"))
    out = ok(transition(client, vc, "gosta-sip", "kallelse"))
    assert phase(one(out, "carePlan")) == "kallelse"


def test_the_age_is_taken_at_the_time_of_the_transition(client, as_org):
    """Someone turning 18 today is an adult today."""
    today = date.today()
    born = today.replace(year=today.year - 18, day=min(today.day, 28))
    nine = born.strftime("%y%m%d") + "238"
    pnr = born.strftime("%Y%m%d") + "238" + str(identifiers.luhn_check_digit(nine))
    h = {SOC: as_org(SOC)}
    case = alva_case(custodian=False)
    for r in case:
        if r["resourceType"] == "Patient":
            r["identifier"][0]["value"] = pnr
            r["birthDate"] = born.isoformat()
    write_case(client, h[SOC], case)
    to_mapping(client, h)
    ok(transition(client, h[SOC], PLAN, "kallelse"))


# -- invitations -------------------------------------------------------------------------------

def test_invite_creates_the_meeting_tasks_and_moves_to_invitation(client, h):
    out = invited(client, h, (f.BUP, "Psykolog"), f.SCHOOL, persons=(f.MOTHER,))
    plan = one(out, "carePlan")
    assert phase(plan) == "kallelse" and plan["status"] == "draft"
    prov = one(out, "provenance")
    assert prov["activity"]["coding"][0]["code"] == "kallelse"
    appt = one(out, "appointment")
    assert appt["status"] == "pending"
    assert appt["supportingInformation"] == [{"reference": f"CarePlan/{PLAN}"}]
    assert appt["contained"][0]["name"].startswith("Socialtjänsten")
    statuses = {(p.get("actor") or {}).get("reference") or p["extension"][0]["valueReference"][
        "reference"]: p["status"] for p in appt["participant"]}
    assert statuses == {"Patient/alva": "accepted", f.COORDINATOR: "accepted",
                        "#plats": "accepted", f.BUP: "needs-action", f.SCHOOL: "needs-action",
                        f.MOTHER: "needs-action"}
    wishes = appt["extension"][0]
    assert wishes["url"] == "https://sip-hub.se/fhir/StructureDefinition/sip-meeting-wishes"
    subs = [e["url"] for e in wishes["extension"]]
    assert subs == ["place", "timeOfDay", "maxDuration", "disturbances", "environment",
                    "support", "support"]
    interpreter = wishes["extension"][5]["extension"]
    assert interpreter[0]["valueCoding"]["code"] == "interpreter"
    assert interpreter[1]["valueCoding"] == {"system": "urn:ietf:bcp:47", "code": "ar"}

    bup = task_for(out, f.BUP)
    assert bup["status"] == "requested" and bup["intent"] == "order"
    assert bup["code"]["coding"][0] == {"system": TASK_SYSTEM, "code": "invitation",
                                        "display": "Kallelse till SIP-möte"}
    assert bup["focus"] == {"reference": f"Appointment/{appt['id']}"}
    assert bup["basedOn"] == [{"reference": f"CarePlan/{PLAN}"}]
    assert bup["for"] == {"reference": "Patient/alva"}
    assert bup["requester"] == {"reference": f.SOCIAL_SERVICES}
    assert bup["restriction"]["period"]["end"]
    assert bup["input"][0]["valueCodeableConcept"] == {"text": "Psykolog"}
    assert "input" not in task_for(out, f.SCHOOL)
    # The invited organisations take part from now on, so the consent lets them read.
    team = one(out, "careTeam")
    assert team["status"] == "active"
    reps = [p for p in team["participant"] if p["role"][0]["coding"][0]["code"] ==
            "organisation-representative"]
    # Until it names its representative, the participant is the organisation itself.
    assert [p["member"] for p in reps] == [{"reference": f.BUP}, {"reference": f.SCHOOL}]
    assert not any("onBehalfOf" in p for p in reps)


def test_invited_organisation_finds_and_reads_its_invitation(client, h):
    invited(client, h)
    mine = tasks(client, f"owner={f.BUP}&status=requested&code={TASK_SYSTEM}|invitation",
                 h[BUP])
    assert len(mine) == 1
    appt = read(client, mine[0]["focus"]["reference"], h[BUP])
    assert appt["resourceType"] == "Appointment"
    assert read(client, "QuestionnaireResponse/alva-kartlaggning", h[BUP])  # to prepare
    assert client.get(mine[0]["focus"]["reference"], headers=h[OUTSIDER]).status_code in (
        403, 404)


def test_invite_in_a_later_phase_keeps_the_phase(client, h):
    out = invited(client, h, f.BUP)
    out = ok(post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.SCHOOL)))
    assert values(out, "carePlan") == [] and len(values(out, "task")) == 1


@pytest.mark.parametrize("phase_name", ["behov-uppmarksammat", "upprattad"])
def test_invite_is_refused_outside_the_invitation_phases(client, h, phase_name):
    if phase_name == "upprattad":
        established(client, h)
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP))
    assert r.status_code == 409 and "Invitations go out" in outcome_text(r)


@pytest.mark.parametrize(("mutate", "fragment"), [
    (lambda p: p["parameter"].__setitem__(0, dt("start", at(days=-1))), "future"),
    (lambda p: p["parameter"].__setitem__(1, dt("end", at(days=9))), "ends after"),
    (lambda p: p["parameter"].__setitem__(0, dt("start", "2026-12-01")), "time of day"),
    (lambda p: p["parameter"].pop(2), "place"),
    (lambda p: p["parameter"].append(parts("invitedOrganization",
                                           ref("organization", "Organization/nowhere"))),
     "known to the hub"),
    (lambda p: p["parameter"].append(parts("invitedOrganization",
                                           ref("organization", f.BUP))), "twice"),
    (lambda p: p["parameter"].append(parts("invitedOrganization",
                                           ref("organization", f.SOCIAL_SERVICES))),
     "coordinator"),
    (lambda p: p["parameter"].append(ref("invitedPerson", "RelatedPerson/nobody")),
     "RelatedPerson of Patient/alva"),
    (lambda p: p["parameter"].append(dt("answerBy", at(days=30))), "answer deadline"),
    (lambda p: p["parameter"][3]["part"].__setitem__(5, parts("support", code("type",
                                                                              "interpreter"))),
     "language"),
    (lambda p: p["parameter"][3]["part"].__setitem__(5, parts("support", code("type", "hund"))),
     "not a kind of support"),
])
def test_bad_invitations_are_400(client, h, mutate, fragment):
    to_mapping(client, h)
    params = invitation(f.BUP)
    mutate(params)
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], params)
    assert r.status_code == 400, r.text
    assert fragment in outcome_text(r)


def test_accepting_names_the_representative_in_the_care_team(client, h):
    out = invited(client, h)
    res = accept(client, h, out, BUP, f.BUP, f.BUP_REPRESENTATIVE)
    task = one(res, "task")
    assert task["status"] == "accepted"
    assert task["output"][0]["valueReference"] == {"reference": f.BUP_REPRESENTATIVE}
    assert task["output"][0]["type"]["coding"][0]["code"] == "representative"
    bup = next(p for p in one(res, "appointment")["participant"]
               if p.get("extension") and p["extension"][0]["valueReference"]["reference"] == f.BUP)
    assert (bup["status"], bup["actor"]) == ("accepted", {"reference": f.BUP_REPRESENTATIVE})
    assert one(res, "appointment")["status"] == "pending"  # the school has not answered
    team = read(client, "CareTeam/alva-sip", h[SOC])
    assert team == one(res, "careTeam")
    rep = [p for p in team["participant"] if p.get("onBehalfOf") == {"reference": f.BUP}]
    assert rep == [{"role": [{"coding": [{
        "system": "https://sip-hub.se/fhir/CodeSystem/sip-participant-role",
        "code": "organisation-representative"}]}],
        "member": {"reference": f.BUP_REPRESENTATIVE}, "onBehalfOf": {"reference": f.BUP}}]
    # Another representative replaces the first: one per organisation (sip-ct-2).
    other = f.practitioner("SE2321000016-P9AB", "Eva", "Berg", id="eva")
    assert client.put("/fhir/Practitioner/eva", **body(other)).status_code in (200, 201)
    res = accept(client, h, out, BUP, f.BUP, "Practitioner/eva")
    team = one(res, "careTeam")
    assert [p["member"] for p in team["participant"]
            if p.get("onBehalfOf") == {"reference": f.BUP}] == [{"reference": "Practitioner/eva"}]
    # When every invited organisation has accepted, the meeting is booked.
    res = accept(client, h, out, SCHOOL, f.SCHOOL, f.SCHOOL_REPRESENTATIVE)
    appt = one(res, "appointment")
    assert appt["status"] == "booked"
    assert read(client, f"Appointment/{appt['id']}", h[BUP]) == appt


def test_the_hubs_care_team_change_is_audited_for_the_organisation(client, h, anonymous):
    out = invited(client, h)
    accept(client, h, out, BUP, f.BUP, f.BUP_REPRESENTATIVE)
    anonymous.app.state.audit.flush()
    log = read(client, "AuditEvent?entity=CareTeam/alva-sip&_count=100")
    writers = [[a["who"].get("identifier", {}).get("value") for a in e["resource"]["agent"]]
               for e in log["entry"] if e["resource"]["action"] == "U"]
    assert any(BUP in w for w in writers)


def test_proposing_another_time(client, h):
    out = invited(client, h)
    start, end = at(days=12), at(days=12, hours=1)
    res = ok(respond(client, h[BUP], task_for(out, f.BUP)["id"], "propose-time",
                     dt("start", start), dt("end", end),
                     string("comment", "Psykologen är på utbildning den dagen")))
    task = one(res, "task")
    assert task["status"] == "in-progress"
    assert task["output"][0]["valuePeriod"] == {"start": start, "end": end}
    assert task["note"][0]["text"].startswith("Psykologen")
    bup = [p for p in one(res, "appointment")["participant"] if p.get("extension")][0]
    assert bup["status"] == "tentative"


def test_declining_is_recorded_and_stays_with_the_coordinator(client, h):
    out = invited(client, h)
    bup_task = task_for(out, f.BUP)
    res = ok(respond(client, h[BUP], bup_task["id"], "decline",
                     string("reason", "Alva är inte aktuell hos BUP sedan i somras")))
    task = one(res, "task")
    assert task["status"] == "rejected"
    assert task["statusReason"]["text"].startswith("Alva är inte aktuell")
    bup = [p for p in one(res, "appointment")["participant"] if p.get("extension")][0]
    assert bup["status"] == "declined"
    follow = one(res, "followUpTask")
    assert follow["code"]["coding"][0]["code"] == "invitation-declined"
    assert follow["owner"] == {"reference": f.SOCIAL_SERVICES}
    assert follow["focus"] == {"reference": f"Task/{bup_task['id']}"}
    open_for_soc = tasks(client, f"owner={f.SOCIAL_SERVICES}&status=requested", h[SOC])
    assert [t["id"] for t in open_for_soc] == [follow["id"]]
    # Invited again (the organisation is obliged to take part): the same Task asks anew and
    # the coordinator's follow-up Task is done.
    again = ok(post(client, f"CarePlan/{PLAN}/$invite", h[SOC], parameters(
        ref("appointment", f"Appointment/{one(out, 'appointment')['id']}"),
        parts("invitedOrganization", ref("organization", f.BUP)))))
    task = one(again, "task")
    assert task["id"] == bup_task["id"] and task["status"] == "requested"
    assert "statusReason" not in task
    assert read(client, f"Task/{follow['id']}", h[SOC])["status"] == "completed"
    history = read(client, f"Task/{bup_task['id']}/_history", h[SOC])
    assert [e["resource"]["status"] for e in history["entry"]] == ["requested", "rejected",
                                                                    "requested"]


@pytest.mark.parametrize(("answer", "extra", "fragment"), [
    ("accept", [], "representative"),
    ("accept", [ref("representative", "Practitioner/nobody")], "known to the hub"),
    ("accept", [ref("representative", f.BUP)], "Practitioner"),
    ("decline", [], "reason"),
    ("propose-time", [dt("start", at(days=3))], "end"),
    ("propose-time", [dt("start", at(days=-3)), dt("end", at(days=-2))], "future"),
    ("maybe", [], "not an answer"),
    ("accept", [ref("representative", f.BUP_REPRESENTATIVE), string("reason", "x")],
     "not part of an acceptance"),
])
def test_bad_answers_are_400(client, h, answer, extra, fragment):
    out = invited(client, h)
    r = respond(client, h[BUP], task_for(out, f.BUP)["id"], answer, *extra)
    assert r.status_code == 400, r.text
    assert fragment in outcome_text(r)


def test_only_the_invited_organisation_answers(client, h):
    out = invited(client, h)
    bup_task = task_for(out, f.BUP)["id"]
    for who in (SCHOOL, SOC):
        r = respond(client, h[who], bup_task, "accept", ref("representative", "Practitioner/johan"))
        assert r.status_code == 403, who
    r = respond(client, h[OUTSIDER], bup_task, "decline", string("reason", "x"))
    assert r.status_code == 403


def test_an_invitation_is_not_answered_by_a_plain_put(client, h):
    out = invited(client, h)
    task = copy.deepcopy(task_for(out, f.BUP)) | {"status": "accepted"}
    r = client.put(f"/fhir/Task/{task['id']}", content=body(task)["content"],
                   headers=JSON_HEADERS | h[BUP])
    assert r.status_code == 409 and "$respond" in outcome_text(r)
    noted = task_for(out, f.BUP) | {"note": [{"text": "Vi återkommer i morgon"}]}
    ok(client.put(f"/fhir/Task/{task['id']}", content=body(noted)["content"],
                  headers=JSON_HEADERS | h[BUP]))
    # The inviter may withdraw it.
    withdrawn = read(client, f"Task/{task['id']}", h[SOC]) | {"status": "cancelled"}
    ok(client.put(f"/fhir/Task/{task['id']}", content=body(withdrawn)["content"],
                  headers=JSON_HEADERS | h[SOC]))
    r = respond(client, h[BUP], task["id"], "decline", string("reason", "x"))
    assert r.status_code == 409 and "cancelled" in outcome_text(r)


def test_holding_the_meeting_closes_it_for_answers(client, h):
    out = invited(client, h)
    ok(transition(client, h[SOC], PLAN, "mote"))
    appt = read(client, f"Appointment/{one(out, 'appointment')['id']}", h[SOC])
    assert appt["status"] == "fulfilled"
    r = respond(client, h[BUP], task_for(out, f.BUP)["id"], "accept",
                ref("representative", f.BUP_REPRESENTATIVE))
    # (its invitation, never answered, was closed with the meeting held)
    assert r.status_code == 409 and "can no longer be answered" in outcome_text(r)


def test_the_meeting_phase_needs_a_meeting(client, h):
    to_mapping(client, h)
    ok(transition(client, h[SOC], PLAN, "kallelse"))
    r = transition(client, h[SOC], PLAN, "mote")
    assert r.status_code == 409 and "$invite" in outcome_text(r)


# -- establishing ----------------------------------------------------------------------------

def test_establishing_records_the_approval_and_the_plan_becomes_active(client, h):
    out = established(client, h)
    plan = one(out, "carePlan")
    assert (phase(plan), plan["status"]) == ("upprattad", "active")
    prov = one(out, "provenance")
    attesters = [a["who"] for a in prov["agent"] if a["type"]["coding"][0]["code"] == "attester"]
    assert attesters == [{"reference": "Patient/alva"}, {"reference": f.MOTHER}]
    assert prov["occurredDateTime"]
    assert read(client, f"CarePlan/{PLAN}", h[BUP])["status"] == "active"


def test_establishing_without_the_required_content_fails_with_the_profiles_issues(client, h):
    held(client, h)
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    plan["extension"] = [e for e in plan["extension"] if not e["url"].endswith(
        ("/sip-principal", "/sip-follow-up"))]
    plan["activity"][1]["detail"].pop("performer")
    ok(client.put(f"/fhir/CarePlan/{PLAN}", content=body(plan)["content"],
                  headers=JSON_HEADERS | h[SOC]))  # a draft may be incomplete
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 422
    text = outcome_text(r)
    for key in ("sip-cp-4", "sip-cp-6", "sip-cp-9"):
        assert key in text
    assert read(client, f"CarePlan/{PLAN}", h[SOC])["status"] == "draft"
    assert read(client, f"Provenance?target=CarePlan/{PLAN}", h[SOC])["total"] == 3


@pytest.mark.parametrize(("extra", "status", "fragment"), [
    ([], 400, "approvedBy"),
    ([ref("approvedBy", "Patient/alva")], 400, "approvedAt"),
    ([dt("approvedAt", at(hours=-1))], 400, "approvedBy"),
    (approval("Patient/alva", when=at(days=2)), 400, "future"),
    (approval("Patient/alva"), 409, "custodian"),
    (approval("Patient/tolvan", f.MOTHER), 409, "cannot approve"),
    (approval("Practitioner/kim"), 409, "cannot approve"),
])
def test_establishing_without_the_persons_approval_fails(client, h, extra, status, fragment):
    held(client, h)
    r = transition(client, h[SOC], PLAN, "upprattad", *extra)
    assert r.status_code == status, r.text
    assert fragment in outcome_text(r)


def test_approval_belongs_to_establishing_only(client, h):
    r = transition(client, h[SOC], PLAN, "kartlaggning", *approval("Patient/alva"))
    assert r.status_code == 400 and "only when the plan is established" in outcome_text(r)


# -- plain writes cannot go around the process ----------------------------------------------

def test_phase_and_status_change_only_through_transition(client, h):
    to_mapping(client, h)
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    moved = copy.deepcopy(plan)
    moved["extension"][-1]["valueCode"] = "kallelse"
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=body(moved)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409 and "$transition" in outcome_text(r)
    active = copy.deepcopy(plan) | {"status": "active"}
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=body(active)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code in (409, 422)  # the profile ties status to phase; so does the hook
    dropped = copy.deepcopy(plan)
    dropped["extension"] = dropped["extension"][:-1]
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=body(dropped)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409
    edited = copy.deepcopy(plan) | {"description": "Ny beskrivning under kartläggningen"}
    ok(client.put(f"/fhir/CarePlan/{PLAN}", content=body(edited)["content"],
                  headers=JSON_HEADERS | h[SOC]))


def test_a_draft_cannot_be_established_by_a_plain_write(client, h):
    plan = read(client, f"CarePlan/{PLAN}", h[SOC]) | {"status": "active"}
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=body(plan)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409 and "upprattad" in outcome_text(r)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": plan, "request": {"method": "PUT", "url": f"CarePlan/{PLAN}"}}]}
    r = client.post("/fhir", content=body(bundle)["content"], headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409


def test_established_content_is_not_changed_by_a_plain_put(client, h):
    established(client, h)
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    changed = copy.deepcopy(plan)
    changed["activity"][2]["detail"]["description"] = "Familjebehandling varannan vecka."
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=body(changed)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409
    assert "$propose-revision" in outcome_text(r) and "approved" in outcome_text(r)
    # Notes and the insatser's status are no content change.
    noted = copy.deepcopy(plan) | {"note": [{"text": "Mamma ringde, allt går bra."}]}
    noted["activity"][2]["detail"]["status"] = "in-progress"
    ok(client.put(f"/fhir/CarePlan/{PLAN}", content=body(noted)["content"],
                  headers=JSON_HEADERS | h[SOC]))


def test_a_participant_updates_the_status_of_its_own_insats(client, h):
    established(client, h)
    plan = read(client, f"CarePlan/{PLAN}", h[BUP])
    plan["activity"][0]["detail"]["status"] = "completed"  # BUP's insats
    ok(client.put(f"/fhir/CarePlan/{PLAN}", content=body(plan)["content"],
                  headers=JSON_HEADERS | h[BUP]))
    theirs = read(client, f"CarePlan/{PLAN}", h[BUP])
    theirs["activity"][1]["detail"]["status"] = "completed"  # the school's
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=body(theirs)["content"],
                   headers=JSON_HEADERS | h[BUP])
    assert r.status_code == 403


def test_goals_of_an_established_plan_change_only_in_status(client, h):
    established(client, h)
    goal = read(client, "Goal/alva-mal-somn", h[SOC])
    reached = goal | {"achievementStatus": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/goal-achievement",
        "code": "improving"}]}}
    ok(client.put("/fhir/Goal/alva-mal-somn", content=body(reached)["content"],
                  headers=JSON_HEADERS | h[SOC]))
    changed = read(client, "Goal/alva-mal-somn", h[SOC]) | {"description": {"text": "Annat"}}
    r = client.put("/fhir/Goal/alva-mal-somn", content=body(changed)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409 and "new Goal" in outcome_text(r)


def test_a_closed_plan_is_not_changed(client, h):
    ok(transition(client, h[SOC], PLAN, "avslutad", string("reason", "Flyttat")))
    plan = read(client, f"CarePlan/{PLAN}", h[SOC]) | {"title": "Ny titel"}
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=body(plan)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409 and "closed" in outcome_text(r)


def test_an_established_plan_is_ended_not_deleted(client, h):
    established(client, h)
    r = client.delete(f"/fhir/CarePlan/{PLAN}", headers=h[SOC])
    assert r.status_code == 409 and "$transition" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}", h[SOC])["status"] == "active"


def test_a_draft_plan_may_be_deleted_by_its_coordinator(client, h):
    assert client.delete(f"/fhir/CarePlan/{PLAN}", headers=h[SOC]).status_code == 200


def test_a_proposed_revision_is_not_in_the_citizen_view(client, h, as_org):
    established(client, h)
    ok(post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
            parameters(resource("revision", revised(client, h)))))
    portal = as_org("SE2321000016-1177", scope="system/CarePlan.rs", role="portal")
    view = client.get("/fhir/CarePlan/$citizen-view?patient=http://electronichealth.se/"
                      f"identifier/personnummer|{f.DEMO_PNR}", headers=portal).json()
    plans = [e["resource"] for e in view["entry"] if e["search"]["mode"] == "match"]
    assert [p["id"] for p in plans] == [PLAN]


def test_hub_operators_may_repair_a_plan(client, h):
    established(client, h)
    plan = read(client, f"CarePlan/{PLAN}") | {"status": "entered-in-error"}
    ok(client.put(f"/fhir/CarePlan/{PLAN}", content=body(plan)["content"],
                  headers=JSON_HEADERS))


# -- revisions -------------------------------------------------------------------------------

def revised(client, h, **changes):
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    revision = copy.deepcopy(plan)
    revision["activity"][2]["detail"]["description"] = (
        "Familjebehandling i hemmet varannan vecka; morgonrutinerna fungerar nu.")
    revision.update(changes)
    return revision


def test_a_revision_is_proposed_then_approved_by_the_person(client, h):
    established(client, h)
    before = read(client, f"CarePlan/{PLAN}", h[SOC])
    out = ok(post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
                  parameters(resource("revision", revised(client, h)))))
    proposal = one(out, "revision")
    assert proposal["intent"] == "proposal" and proposal["status"] == "draft"
    assert proposal["replaces"] == [
        {"reference": f"CarePlan/{PLAN}/_history/{before['meta']['versionId']}",
         "type": "CarePlan"}]
    assert proposal["subject"] == {"reference": "Patient/alva"}
    assert phase(proposal) is None
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "NOPATIENT"} in proposal["meta"]["security"]
    # Not yet in effect.
    assert read(client, f"CarePlan/{PLAN}", h[SOC]) == before
    found = read(client, f"CarePlan?replaces=CarePlan/{PLAN}", h[SOC])
    assert [e["resource"]["id"] for e in found["entry"]] == [proposal["id"]]

    out = ok(post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"), *approval("Patient/alva", f.MOTHER),
        string("reason", "Uppföljning med Alva och mamma"))))
    plan = one(out, "carePlan")
    assert plan["id"] == PLAN and plan["meta"]["versionId"] == str(
        int(before["meta"]["versionId"]) + 1)
    assert plan["activity"][2]["detail"]["description"].endswith("fungerar nu.")
    assert (phase(plan), plan["status"], plan["intent"]) == ("upprattad", "active", "plan")
    assert "replaces" not in plan and "NOPATIENT" not in str(plan["meta"])
    assert one(out, "revision")["status"] == "completed"
    prov = one(out, "provenance")
    assert prov["target"] == [{"reference": f"CarePlan/{PLAN}/_history/"
                                            f"{plan['meta']['versionId']}"}]
    assert {e["role"] for e in prov["entity"]} == {"source", "revision"}
    # Approved once only.
    r = post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"), *approval("Patient/alva", f.MOTHER)))
    assert r.status_code == 409


def test_a_minors_revision_needs_a_custodian_also_when_the_team_lost_theirs(client, h):
    """Alva is 15: a custodian approves her plan's changes too. Her team lost its custodian
    after the invitations: her approval alone does not do; the custodian is to be added
    back (it was taken as enough while none took part)."""
    established(client, h)
    team = read(client, "CareTeam/alva-sip", h[SOC])
    team["participant"] = [p for p in team["participant"]
                           if p["member"]["reference"] != f.MOTHER]
    r = client.put("/fhir/CareTeam/alva-sip", content=body(team)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 200, r.text
    proposal = one(ok(post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
                           parameters(resource("revision", revised(client, h))))), "revision")
    before = read(client, f"CarePlan/{PLAN}", h[SOC])
    r = post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"), *approval("Patient/alva")))
    assert r.status_code == 409 and "add the custodian" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}", h[SOC]) == before


def test_a_revision_of_an_older_version_is_refused(client, h):
    established(client, h)
    first = one(ok(post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
                        parameters(resource("revision", revised(client, h))))), "revision")
    second = one(ok(post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC], parameters(
        resource("revision", revised(client, h, title="SIP för Alva, reviderad"))))), "revision")
    ok(post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{second['id']}"), *approval("Patient/alva", f.MOTHER))))
    assert read(client, f"CarePlan/{first['id']}", h[SOC])["status"] == "revoked"
    r = post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{first['id']}"), *approval("Patient/alva", f.MOTHER)))
    assert r.status_code == 409 and "revoked" in outcome_text(r)


def test_a_revision_lacking_required_content_fails_when_proposed(client, h):
    established(client, h)
    revision = revised(client, h)
    revision["extension"] = [e for e in revision["extension"]
                             if not e["url"].endswith("/sip-coordination")]
    r = post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
             parameters(resource("revision", revision)))
    assert r.status_code == 422 and "sip-cp-5" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
             parameters(resource("revision", read(client, f"CarePlan/{PLAN}", h[SOC]))))
    assert r.status_code == 400 and "changes nothing" in outcome_text(r)
    other = revised(client, h, subject={"reference": "Patient/tolvan"})
    r = post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
             parameters(resource("revision", other)))
    assert r.status_code == 400 and "same individual" in outcome_text(r)


def test_revisions_need_an_established_plan_and_the_coordinator(client, h):
    to_mapping(client, h)
    r = post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
             parameters(resource("revision", revised(client, h))))
    assert r.status_code == 409 and "PUT" in outcome_text(r)
    r = post(client, f"CarePlan/{PLAN}/$propose-revision", h[BUP],
             parameters(resource("revision", revised(client, h))))
    assert r.status_code == 403


def test_a_proposal_takes_effect_only_through_approval(client, h):
    established(client, h)
    proposal = one(ok(post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
                           parameters(resource("revision", revised(client, h))))), "revision")
    r = client.put(f"/fhir/CarePlan/{proposal['id']}", content=body(
        proposal | {"status": "active"})["content"], headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409
    ok(client.put(f"/fhir/CarePlan/{proposal['id']}", content=body(
        proposal | {"status": "revoked"})["content"], headers=JSON_HEADERS | h[SOC]))


def test_a_follow_up_ends_in_a_revised_plan_with_the_next_follow_up_date(client, h):
    established(client, h)
    ok(transition(client, h[SOC], PLAN, "uppfoljning"))
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    for ext in plan["extension"]:
        if ext["url"].endswith("/sip-follow-up"):
            ext["valueDateTime"] = at(days=-1)
    # The follow-up date has passed (set here by an operator's repair): concluding the
    # follow-up asks for a revision with the next date.
    ok(client.put(f"/fhir/CarePlan/{PLAN}", content=body(plan)["content"],
                  headers=JSON_HEADERS))
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 409 and "follow-up date" in outcome_text(r)
    revision = revised(client, h)
    for ext in revision["extension"]:
        if ext["url"].endswith("/sip-follow-up"):
            ext["valueDateTime"] = at(days=180)
    proposal = one(ok(post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
                           parameters(resource("revision", revision)))), "revision")
    ok(post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"), *approval("Patient/alva", f.MOTHER))))
    out = ok(transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER)))
    assert phase(one(out, "carePlan")) == "upprattad"


# -- provenance ------------------------------------------------------------------------------

def test_every_transition_is_a_searchable_provenance(client, h):
    established(client, h)
    ok(transition(client, h[SOC], PLAN, "avslutad", string("reason", "Klart")))
    b = read(client, f"Provenance?target=CarePlan/{PLAN}&_count=50&_sort=recorded", h[SOC])
    provs = [e["resource"] for e in b["entry"]]
    assert [p["activity"]["coding"][0]["code"] for p in provs] == [
        "kartlaggning", "kallelse", "mote", "upprattad", "avslutad"]
    history = read(client, f"CarePlan/{PLAN}/_history?_count=50", h[SOC])
    versions = {f"CarePlan/{PLAN}/_history/{e['resource']['meta']['versionId']}":
                phase(e["resource"]) for e in history["entry"]}
    for p in provs:
        # The target is the version the transition wrote, in the phase it names.
        assert versions[p["target"][0]["reference"]] == p["activity"]["coding"][0]["code"]
        agents = {a["type"]["coding"][0]["code"]: a for a in p["agent"]}
        assert agents["author"]["who"] == {"reference": f.SOCIAL_SERVICES}
        assert agents["enterer"]["who"]["type"] == "Device"
        assert agents["enterer"]["onBehalfOf"] == {"reference": f.SOCIAL_SERVICES}
        assert p["entity"][0]["role"] == "revision"
    assert provs[-1]["reason"] == [{"text": "Klart"}]
    assert provs[0]["activity"]["text"] == "Behov uppmärksammas → Kartläggning"


def test_operations_speak_xml_too(client, h):
    xml = (b'<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="to"/>'
           b'<valueCode value="kartlaggning"/></parameter></Parameters>')
    r = client.post(f"/fhir/CarePlan/{PLAN}/$transition", content=xml, headers=h[SOC] | {
        "content-type": "application/fhir+xml", "accept": "application/fhir+xml"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+xml")
    assert b"<Parameters" in r.content and b'value="kartlaggning"' in r.content
    r = client.get(f"/fhir/CarePlan/{PLAN}/$transition", headers=h[SOC])
    assert r.status_code == 405
