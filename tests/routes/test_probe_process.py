"""Odd input to the SIP process operations found by probing: a clear 4xx OperationOutcome,
never a 5xx, and nothing stored; and stored values Python cannot read do not make an
operation a 5xx."""

from __future__ import annotations


import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, outcome_text
from sip_process import (BUP, SOC, approval, at, dt, invitation, one, parameters, parts, post,
                         propose_revision, read, ref, respond, string, transition, values)
from test_deadlines import h  # noqa: F401 (fixture: Alva's SIP in kartläggning)

PLAN = "alva-sip"
LEAP = "2030-01-01T10:00:60Z"  # a leap second: FHIR's dateTime allows it, datetime does not


def _version(client, path: str) -> str:
    return read(client, path)["meta"]["versionId"]


def test_a_leap_second_in_an_invitation_is_a_time_like_any_other(client, h):
    """FHIR's dateTime allows second 60; Python's datetime refuses it (it was a 5xx): the hub
    reads it as the second before and keeps the text as sent."""
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], parameters(
        dt("start", LEAP), dt("end", "2030-01-01T11:00:00Z"), string("place", "Ljuset"),
        parts("invitedOrganization", ref("organization", f.BUP))))
    assert r.status_code == 200, r.text
    assert one(r.json(), "appointment")["start"] == LEAP


def test_a_leap_second_in_a_proposed_time_is_a_time_like_any_other(client, h):
    out = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP)).json()
    task = one(out, "task")
    r = respond(client, h[BUP], task["id"], "propose-time", dt("start", LEAP),
                dt("end", "2030-01-01T11:00:00Z"))
    assert r.status_code == 200, r.text


def _meeting(client, h, aid: str, **times: str) -> None:
    appt = {"resourceType": "Appointment", "id": aid, "status": "proposed", **times,
            "supportingInformation": [{"reference": f"CarePlan/{PLAN}"}],
            "participant": [{"actor": {"reference": "Patient/alva"}, "status": "accepted"}]}
    r = client.put(f"/fhir/Appointment/{aid}", content=orjson.dumps(appt),
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("times, says", [
    ({}, "has no time"),
    ({"start": at(days=-2), "end": at(days=-2, hours=1)}, "has begun or is over"),
])
def test_inviting_to_a_meeting_without_a_time_to_come_is_a_409(client, h, times, says):
    """A proposed Appointment of the plan may have no start: inviting to it was a 5xx (the
    answer deadline is reckoned from the start); one in the past got invitations to it."""
    _meeting(client, h, "m1", **times)
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], parameters(
        ref("appointment", "Appointment/m1"),
        parts("invitedOrganization", ref("organization", f.BUP))))
    assert r.status_code == 409, r.text
    assert says in outcome_text(r)
    assert _version(client, "Appointment/m1") == "1"
    assert _version(client, f"CarePlan/{PLAN}") == "2"


def test_a_parameter_with_both_a_value_and_parts_is_a_400(client, h):
    """inv-1: a value, a resource or parts; the parts were silently ignored."""
    r = post(client, f"CarePlan/{PLAN}/$transition", h[SOC], parameters(
        {"name": "to", "valueCode": "avslutad", "part": [{"name": "x", "valueString": "y"}]},
        string("reason", "Klar")))
    assert r.status_code == 400, r.text
    assert "'to' takes valueCode, not parts" in outcome_text(r)
    assert _version(client, f"CarePlan/{PLAN}") == "2"


def test_a_stored_leap_second_does_not_keep_the_sip_from_closing(client, h):
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    plan.pop("meta")
    plan["period"] = {"start": "2026-01-01T10:00:60+01:00"}
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=orjson.dumps(plan),
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 200, r.text
    r = transition(client, h[SOC], PLAN, "avslutad", string("reason", "Behövs inte längre"))
    assert r.status_code == 200, r.text
    period = one(r.json(), "carePlan")["period"]
    assert period["start"] == "2026-01-01T10:00:60+01:00" and period["end"]


def test_a_revision_approved_before_the_plan_was_established_is_a_400(client, h):
    out = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP, start_days=1))
    task = one(out.json(), "task")
    assert respond(client, h[BUP], task["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, h[SOC], PLAN, "mote").status_code == 200
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 200, r.text
    plan, proposal = propose_revision(client, h[SOC], PLAN)
    r = post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"),
        *approval("Patient/alva", f.MOTHER, when="1900-01-01T10:00:00+01:00")))
    assert r.status_code == 400, r.text
    assert "before the plan was established" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}")["meta"] == plan["meta"]
    assert read(client, f"CarePlan/{proposal['id']}")["status"] == "draft"
    # The same approval, today, is taken.
    r = post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"), *approval("Patient/alva", f.MOTHER)))
    assert r.status_code == 200, r.text
    assert values(r.json(), "carePlan")[0]["description"] == "Reviderad"
