"""SIP process probe 4: approvals dated before the consent or the proposal, a follow-up date
passed at establishment, refusals that left no AuditEvent, a draft deleted with its
invitations out, and an adult's plan approved by a custodian."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, outcome_text
from sip_hub.fhir import sip
from sip_process import (BUP, SOC, TASK_SYSTEM, alva_case, approval, at, invitation, one,
                         parameters, post, propose_revision, read, ref, respond, string,
                         tasks, transition, write_case)
import test_deadlines

PLAN = "alva-sip"
HSA = "urn:oid:1.2.752.29.4.19"
Json = dict[str, Any]
h = test_deadlines.h  # the fixture: Alva's SIP in kartläggning


def _to_meeting(client, headers) -> Json:
    out = post(client, f"CarePlan/{PLAN}/$invite", headers[SOC], invitation(f.BUP)).json()
    task = one(out, "task")
    assert respond(client, headers[BUP], task["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, headers[SOC], PLAN, "mote").status_code == 200
    return out


def _version(client, path: str) -> str:
    return read(client, path)["meta"]["versionId"]


def _put(client, headers, res: Json, **extra: str):
    return client.put(f"/fhir/{res['resourceType']}/{res['id']}", content=orjson.dumps(res),
                      headers=JSON_HEADERS | headers | extra)


# -- 1: an approval before the person consented -------------------------------------------

@pytest.mark.parametrize("when", ["1900-01-01T10:00:00+01:00", "2026-11-09",
                                  "2026-11-10T10:00:00+01:00"])
def test_an_approval_before_the_consent_is_refused(client, h, when):
    """The consent was given 2026-11-10T10:15+01:00 (Consent.dateTime, before its period's
    start): 1900 (before Alva was born) became the plan's period.start."""
    _to_meeting(client, h)
    before = _version(client, f"CarePlan/{PLAN}")
    r = transition(client, h[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=when))
    assert r.status_code == 409, r.text
    text = outcome_text(r)
    assert "before the person consented to the SIP" in text and "approvedAt" in text
    assert _version(client, f"CarePlan/{PLAN}") == before
    # Just after the consent was given, the approval is taken.
    r = transition(client, h[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when="2026-11-10T10:30:00+01:00"))
    assert r.status_code == 200, r.text


def _import(client, headers, when: str):
    case = [f.approval_provenance(when=when) if r["resourceType"] == "Provenance" else r
            for r in f.demo_case()]
    entries = [{"resource": copy.deepcopy(r),
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in case]
    return client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                              "entry": entries})["content"],
                       headers=JSON_HEADERS | headers)


def test_an_imported_plan_approved_before_the_consent_is_refused(client, as_org):
    soc = as_org(SOC)
    r = _import(client, soc, "1900-01-01T10:00:00+01:00")
    assert r.status_code == 409, r.text
    assert "before the person consented to the SIP" in outcome_text(r)
    assert client.get(f"/fhir/CarePlan/{PLAN}").status_code == 404
    assert _import(client, soc, at(hours=-1)).status_code == 200


# -- 2: a revision approved before it was proposed ----------------------------------------

def test_a_revision_approved_before_it_was_proposed_is_refused(client, h):
    _to_meeting(client, h)
    r = transition(client, h[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=at(days=-5)))
    assert r.status_code == 200, r.text
    plan, proposal = propose_revision(client, h[SOC], PLAN)
    # After the plan was established, days before the revision existed (a day's grace for
    # a revision agreed at a meeting and entered afterwards).
    r = post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"),
        *approval("Patient/alva", f.MOTHER, when=at(days=-3))))
    assert r.status_code == 409, r.text
    assert "before the revision was proposed" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}")["meta"] == plan["meta"]
    assert read(client, f"CarePlan/{proposal['id']}")["status"] == "draft"
    r = post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"),
        *approval("Patient/alva", f.MOTHER, when=at(hours=-20))))
    assert r.status_code == 200, r.text
    assert one(r.json(), "carePlan")["description"] == "Reviderad"


# -- 3: a follow-up date passed when the plan is first established ------------------------

def _with_follow_up(plan: Json, when: str) -> Json:
    out = copy.deepcopy(plan)
    out["extension"] = [e for e in out["extension"] if e["url"] != sip.EXT_FOLLOW_UP]
    out["extension"].append({"url": sip.EXT_FOLLOW_UP, "valueDateTime": when})
    return out


@pytest.mark.parametrize("passed", ["2020-01-01", at(hours=-1)])
def test_establishing_with_a_follow_up_date_passed_is_refused(client, h, passed):
    _to_meeting(client, h)
    r = _put(client, h[SOC], _with_follow_up(read(client, f"CarePlan/{PLAN}"), passed))
    assert r.status_code == 200, r.text
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 409, r.text
    assert f"follow-up date ({passed}) has passed" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}")["status"] == "draft"
    r = _put(client, h[SOC], _with_follow_up(read(client, f"CarePlan/{PLAN}"), at(days=60)))
    assert r.status_code == 200, r.text
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 200, r.text


# -- 4: refusals after the hub read the plan are audited ----------------------------------

def _refusals(client) -> list[Json]:
    client.app.state.audit.flush()
    r = client.get("/fhir/AuditEvent?patient=alva&_count=1000")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])
            if e["resource"]["outcome"] == "4"]


def _org(event: Json) -> str | None:
    return next((a["who"]["identifier"]["value"] for a in event["agent"]
                 if a["who"].get("identifier", {}).get("system") == HSA), None)


def _new_refusal(client, before: list[Json], org: str, code: str, says: str) -> Json:
    after = _refusals(client)
    assert len(after) == len(before) + 1, [e.get("outcomeDesc") for e in after]
    event = next(e for e in after if e["id"] not in {b["id"] for b in before})
    assert event["subtype"][0]["code"] == code
    assert _org(event) == org
    assert says in event.get("outcomeDesc", "")
    assert {"reference": "Patient/alva"} in [e["what"] for e in event["entity"]]
    assert {"reference": f"CarePlan/{PLAN}"} in [e["what"] for e in event["entity"]]
    return event


def test_refused_process_operations_are_audited(client, h):
    seen = _refusals(client)
    r = transition(client, h[SOC], PLAN, "upprattad")  # tells the SIP's phase
    assert r.status_code == 409, r.text
    _new_refusal(client, seen, SOC, "operation", "phase 'kartlaggning'")
    seen = _refusals(client)
    r = post(client, f"CarePlan/{PLAN}/$transition", h[SOC] | {"If-Match": 'W/"1"'},
             parameters({"name": "to", "valueCode": "avslutad"}, string("reason", "Klar")))
    assert r.status_code == 412, r.text
    _new_refusal(client, seen, SOC, "operation", "Version conflict")
    # A plain PUT doing $transition's work.
    seen = _refusals(client)
    plan = read(client, f"CarePlan/{PLAN}")
    plan["extension"] = [e for e in plan["extension"] if e["url"] != sip.EXT_PHASE]
    plan["extension"].append({"url": sip.EXT_PHASE, "valueCode": "kallelse"})
    r = _put(client, h[SOC], plan)
    assert r.status_code == 409, r.text
    _new_refusal(client, seen, SOC, "update", "changes only through CarePlan/$transition")
    # A participant, who reads the plan, may not drive the process.
    _to_meeting(client, h)
    seen = _refusals(client)
    r = transition(client, h[BUP], PLAN, "avslutad", string("reason", "Klar"))
    assert r.status_code == 403, r.text
    _new_refusal(client, seen, BUP, "operation", "only the coordinating organisation")
    # What succeeds is audited as before, and no refusal is added.
    seen = _refusals(client)
    assert transition(client, h[SOC], PLAN, "avslutad",
                      string("reason", "Klar")).status_code == 200
    assert len(_refusals(client)) == len(seen)


# -- 5: deleting a draft whose invitations are out -----------------------------------------

def test_a_draft_with_invitations_out_is_closed_not_deleted(client, h):
    out = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP)).json()
    task, appt = one(out, "task"), one(out, "appointment")
    seen = _refusals(client)
    r = client.delete(f"/fhir/CarePlan/{PLAN}", headers=h[SOC])
    assert r.status_code == 409, r.text
    text = outcome_text(r)
    assert "$transition (to=avslutad" in text and f"Task/{task['id']}" in text
    _new_refusal(client, seen, SOC, "delete", "invitations out")
    assert read(client, f"CarePlan/{PLAN}")["status"] == "draft"
    assert read(client, f"Task/{task['id']}")["status"] == "requested"
    # Closed instead: the invitation and the meeting are cancelled; then it stays closed.
    r = transition(client, h[SOC], PLAN, "avslutad", string("reason", "Behövs inte"))
    assert r.status_code == 200, r.text
    assert read(client, f"Task/{task['id']}")["status"] == "cancelled"
    assert read(client, f"Appointment/{appt['id']}")["status"] == "cancelled"
    assert not tasks(client, f"code={TASK_SYSTEM}|invitation&status=requested")


def test_a_draft_without_invitations_is_still_deleted(client, h):
    r = client.delete(f"/fhir/CarePlan/{PLAN}", headers=h[SOC])
    assert r.status_code == 200, r.text
    assert client.get(f"/fhir/CarePlan/{PLAN}").status_code == 410


# -- 6: an adult's plan approved by a custodian --------------------------------------------

@pytest.fixture
def adult(client, as_org):
    """Alva's SIP as Tolvan's (born 1912): the same team, 'alva-mamma' still as custodian."""
    headers = {org: as_org(org) for org in (SOC, BUP)}
    case = [f.patient(f.TOLVAN_PNR, id="alva") if r["resourceType"] == "Patient" else r
            for r in alva_case()]
    write_case(client, headers[SOC], case)
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    return headers


def test_an_adults_plan_is_not_approved_by_a_custodian(client, adult):
    _to_meeting(client, adult)
    r = transition(client, adult[SOC], PLAN, "upprattad", *approval(f.MOTHER))
    assert r.status_code == 409, r.text
    text = outcome_text(r)
    assert f"{f.MOTHER} takes part in the SIP as custodian" in text and "adult" in text
    assert "approvedBy" in text
    assert read(client, f"CarePlan/{PLAN}")["status"] == "draft"
    r = transition(client, adult[SOC], PLAN, "upprattad", *approval("Patient/alva"))
    assert r.status_code == 200, r.text


def test_a_minors_plan_is_still_approved_with_the_custodian(client, h):
    _to_meeting(client, h)
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 200, r.text
