"""The whole SIP process through the API, from a need noticed to a closed SIP, for the two
demo cases; everything the operations emit passes the independent validators.

(a) Alva, 15: the social services coordinate; BUP and the school are invited; her mother is
    her custodian.
(b) Gösta, 84, discharged from hospital: his vårdcentral (region) coordinates; the kommun's
    home care is invited; his daughter takes part.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body
from sip_hub import deadlines
from sip_process import (BUP, SCHOOL, SOC, TASK_SYSTEM, alva_case, approval, at, code, dt,
                         gosta_case, invitation, one, parameters, parts, phase, post, read,
                         ref, resource, respond, string, tasks, transition, values, write_case)

HEMTJANST, VARDCENTRAL = f.HEMTJANST_HSA, f.VARDCENTRAL_HSA


class Recorder:
    """Keeps every response body for the validators."""

    def __init__(self, client):
        self.client, self.emitted = client, []

    def __call__(self, resp, status=200):
        assert resp.status_code == status, resp.text
        self.emitted.append(resp.json())
        return resp.json()

    def get(self, path, headers):
        return self(self.client.get(f"/fhir/{path}", headers=headers))


def revision_of(plan, *, follow_up_days, description=None):
    revision = copy.deepcopy(plan)
    for ext in revision["extension"]:
        if ext["url"].endswith("/sip-follow-up"):
            ext["valueDateTime"] = at(days=follow_up_days)
    if description:
        revision["activity"][-1]["detail"]["description"] = description
    return revision


def test_alva_from_need_noticed_to_closed(client, as_org, store, fhir_validator, tmp_path):
    h = {org: as_org(org) for org in (SOC, BUP, SCHOOL)}
    rec = Recorder(client)
    write_case(client, h[SOC], alva_case())
    plan_id = "alva-sip"

    # Behov uppmärksammas → kartläggning: the coordinator prepares with Alva and her mother.
    out = rec(transition(client, h[SOC], plan_id, "kartlaggning",
                         string("reason", "Skolan har uppmärksammat hög frånvaro")))
    assert phase(one(out, "carePlan")) == "kartlaggning"

    # Kallelse: BUP (a psychologist wished for) and the school; the mother is invited too.
    out = rec(post(client, f"CarePlan/{plan_id}/$invite", h[SOC], invitation(
        (f.BUP, "Psykolog"), (f.SCHOOL, "Specialpedagog"), persons=(f.MOTHER,),
        start_days=2)))
    assert phase(one(out, "carePlan")) == "kallelse"
    appointment = one(out, "appointment")
    bup_task = next(t for t in values(out, "task") if t["owner"]["reference"] == f.BUP)
    school_task = next(t for t in values(out, "task") if t["owner"]["reference"] == f.SCHOOL)

    # BUP finds its invitation, proposes another time, is asked again, and accepts.
    mine = tasks(client, f"owner={f.BUP}&status=requested&code={TASK_SYSTEM}|invitation",
                 h[BUP])
    assert [t["id"] for t in mine] == [bup_task["id"]]
    rec(respond(client, h[BUP], bup_task["id"], "propose-time", dt("start", at(days=3)),
                dt("end", at(days=3, hours=1))))
    rec(post(client, f"CarePlan/{plan_id}/$invite", h[SOC], parameters(
        ref("appointment", f"Appointment/{appointment['id']}"),
        parts("invitedOrganization", ref("organization", f.BUP),
              string("profession", "Psykolog")))))
    out = rec(respond(client, h[BUP], bup_task["id"], "accept",
                      ref("representative", f.BUP_REPRESENTATIVE),
                      string("comment", "Sara Lind, psykolog, kommer")))
    out = rec(respond(client, h[SCHOOL], school_task["id"], "accept",
                      ref("representative", f.SCHOOL_REPRESENTATIVE)))
    team = one(out, "careTeam")
    reps = {p["onBehalfOf"]["reference"]: p["member"]["reference"]
            for p in team["participant"] if "onBehalfOf" in p and p["role"][0]["coding"][0][
                "code"] == "organisation-representative"}
    assert reps == {f.BUP: f.BUP_REPRESENTATIVE, f.SCHOOL: f.SCHOOL_REPRESENTATIVE}
    rec.get(f"Appointment/{appointment['id']}", h[BUP])

    # Genomföra: the meeting is held.
    rec(transition(client, h[SOC], plan_id, "mote"))
    # Three days later the plan is still not documented: the coordinator is reminded.
    end = datetime.fromisoformat(appointment["end"])
    with store.begin() as tx:
        report = deadlines.scan(tx, end + timedelta(days=4, hours=12))
    reminders = rec.get(f"Task?code={TASK_SYSTEM}|document-plan&owner={f.SOCIAL_SERVICES}"
                        "&status=requested", h[SOC])
    assert reminders["total"] == 1 and reminders["entry"][0]["resource"]["id"] in report.created

    # Upprätta: Alva and her mother approve the plan.
    out = rec(transition(client, h[SOC], plan_id, "upprattad",
                         *approval("Patient/alva", f.MOTHER)))
    plan = one(out, "carePlan")
    assert (phase(plan), plan["status"]) == ("upprattad", "active")
    assert values(out, "closedTask") == [{"reference": f"Task/{report.created[0]}"}]
    rec.get(f"CarePlan/{plan_id}", h[BUP])
    rec.get(f"CarePlan/{plan_id}", h[SCHOOL])

    # Uppföljning: the family treatment changes and the next follow-up is agreed.
    rec(transition(client, h[SOC], plan_id, "uppfoljning"))
    proposal = one(rec(post(client, f"CarePlan/{plan_id}/$propose-revision", h[SOC], parameters(
        resource("revision", revision_of(
            read(client, f"CarePlan/{plan_id}", h[SOC]), follow_up_days=200,
            description="Familjebehandling varannan vecka; morgonrutinerna fungerar.")),
        string("reason", "Uppföljningsmöte")))), "revision")
    out = rec(post(client, f"CarePlan/{plan_id}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"), *approval("Patient/alva", f.MOTHER))))
    assert one(out, "carePlan")["activity"][-1]["detail"]["description"].startswith(
        "Familjebehandling varannan")
    rec(transition(client, h[SOC], plan_id, "upprattad", *approval("Patient/alva", f.MOTHER)))

    # Avslut: Alva's goals are reached and she wants to end the SIP.
    out = rec(transition(client, h[SOC], plan_id, "avslutad",
                         string("reason", "Målen är nådda; Alva vill avsluta"),
                         ref("requestedBy", "Patient/alva")))
    assert (phase(one(out, "carePlan")), one(out, "carePlan")["status"]) == (
        "avslutad", "completed")

    provs = rec.get(f"Provenance?target=CarePlan/{plan_id}&_sort=recorded&_count=50", h[SOC])
    assert [e["resource"]["activity"]["coding"][0]["code"] for e in provs["entry"]] == [
        "kartlaggning", "kallelse", "mote", "upprattad", "uppfoljning", "UPDATE",
        "upprattad", "avslutad"]
    rec.get(f"Task?based-on=CarePlan/{plan_id}&_count=50", h[SOC])
    rec.get(f"CarePlan?replaces=CarePlan/{plan_id}", h[SOC])
    fhir_validator.validate_resources(tmp_path, rec.emitted)


def test_gosta_discharged_with_home_care_and_primary_care(client, as_org, fhir_validator,
                                                          tmp_path):
    h = {org: as_org(org) for org in (VARDCENTRAL, HEMTJANST)}
    rec = Recorder(client)
    write_case(client, h[VARDCENTRAL], gosta_case())
    plan_id = "gosta-sip"

    rec(transition(client, h[VARDCENTRAL], plan_id, "kartlaggning",
                   string("reason", "Utskrivningsklar från ortopeden; fast vårdkontakt tar "
                                    "initiativ till SIP")))
    params = invitation((f.HEMTJANST, "Biståndshandläggare"), persons=(f.DISCHARGE_DAUGHTER,),
                        start_days=1, wishes=False)
    params["parameter"].append(parts(
        "meetingWishes", string("place", "Hemma hos Gösta"),
        string("timeOfDay", "Förmiddag"),
        {"name": "maxDuration", "valueDuration": {"value": 45, "unit": "min",
                                                  "system": "http://unitsofmeasure.org",
                                                  "code": "min"}},
        string("environment", "Han hör dåligt: lugnt rum, en i taget"),
        parts("support", code("type", "other"),
              string("description", "Hörselslinga eller skrivtolk"))))
    out = rec(post(client, f"CarePlan/{plan_id}/$invite", h[VARDCENTRAL], params))
    task = one(out, "task")
    assert task["owner"] == {"reference": f.HEMTJANST}
    assert task["input"][0]["valueCodeableConcept"] == {"text": "Biståndshandläggare"}
    wishes = one(out, "appointment")["extension"][0]["extension"]
    assert wishes[-1]["extension"][0]["valueCoding"]["code"] == "other"

    out = rec(respond(client, h[HEMTJANST], task["id"], "accept",
                      ref("representative", f.HEMTJANST_REPRESENTATIVE)))
    assert {"reference": f.HEMTJANST_REPRESENTATIVE} in [
        p["member"] for p in one(out, "careTeam")["participant"]]
    rec(transition(client, h[VARDCENTRAL], plan_id, "mote"))
    out = rec(transition(client, h[VARDCENTRAL], plan_id, "upprattad",
                         *approval(f.DISCHARGE_PATIENT)))
    assert one(out, "carePlan")["status"] == "active"

    # The home care marks its insats as started; it cannot change the plan otherwise.
    plan = read(client, f"CarePlan/{plan_id}", h[HEMTJANST])
    plan["activity"][1]["detail"]["status"] = "in-progress"
    rec(client.put(f"/fhir/CarePlan/{plan_id}", content=body(plan)["content"],
                   headers=JSON_HEADERS | h[HEMTJANST]))
    plan["activity"][1]["detail"]["description"] = "Hemtjänst en gång om dagen"
    r = client.put(f"/fhir/CarePlan/{plan_id}", content=body(plan)["content"],
                   headers=JSON_HEADERS | h[VARDCENTRAL])
    assert r.status_code == 409
    rec.emitted.append(r.json())

    rec(transition(client, h[VARDCENTRAL], plan_id, "uppfoljning"))
    rec(transition(client, h[VARDCENTRAL], plan_id, "uppfoljning",
                   string("reason", "Ny uppföljning efter korttidsvistelse")))
    out = rec(transition(client, h[VARDCENTRAL], plan_id, "avslutad",
                         string("reason", "Gösta har flyttat till ett särskilt boende"),
                         ref("requestedBy", f.DISCHARGE_PATIENT)))
    closed = one(out, "carePlan")
    assert (phase(closed), closed["status"]) == ("avslutad", "completed")
    provs = rec.get(f"Provenance?target=CarePlan/{plan_id}&_count=50", h[VARDCENTRAL])
    assert provs["total"] == 7
    fhir_validator.validate_resources(tmp_path, rec.emitted)


@pytest.mark.parametrize("answer", ["decline", "propose-time"])
def test_every_answer_and_error_validates(client, as_org, fhir_validator, tmp_path, answer):
    h = {org: as_org(org) for org in (SOC, BUP)}
    rec = Recorder(client)
    write_case(client, h[SOC], alva_case())
    rec(transition(client, h[SOC], "alva-sip", "kartlaggning"))
    out = rec(post(client, "CarePlan/alva-sip/$invite", h[SOC], invitation(f.BUP)))
    extra = [string("reason", "Ej aktuell")] if answer == "decline" else [
        dt("start", at(days=12)), dt("end", at(days=12, hours=1))]
    rec(respond(client, h[BUP], one(out, "task")["id"], answer, *extra))
    rec(transition(client, h[SOC], "alva-sip", "upprattad"), 409)
    rec(transition(client, h[SOC], "alva-sip", "nonsense"), 400)
    rec(transition(client, h[BUP], "alva-sip", "mote"), 403)
    fhir_validator.validate_resources(tmp_path, rec.emitted)
