"""A SIP plan written as established by a conditional update (``PUT CarePlan?...``) inside a
transaction, at any place among the entries: its approval Provenance may name it by the
entry's fullUrl or its id, and a refusal names the plan's own entry (it named entry 0, the
plan's place unknown, whatever the entry was)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, outcome_text
from sip_hub import identifiers

Json = dict[str, Any]
VIEW = f"/fhir/CarePlan/$citizen-view?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"
PLAN_URN = "urn:uuid:6f1c2b7e-0a3d-4e59-8c1f-2d7b9e4a5c10"
TEAM_URN = "urn:uuid:0b9d4c3a-7e21-4f6a-9d58-3c2e1a0f4b77"
CRITERIA = "CarePlan?patient=Patient/alva"


def _entry(r: Json, url: str | None = None, full_url: str | None = None) -> Json:
    entry: Json = {"resource": copy.deepcopy(r),
                   "request": {"method": "PUT",
                               "url": url or f"{r['resourceType']}/{r['id']}"}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def _send(client, headers, entries: list[Json]):
    return client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                              "entry": entries})["content"],
                       headers=JSON_HEADERS | headers)


@pytest.fixture
def context(client, soc) -> list[Json]:
    """The demo SIP without its plan and approval, written; returned for re-writing."""
    resources = [r for r in f.demo_case() if r["resourceType"] not in ("CarePlan", "Provenance")]
    r = _send(client, soc, [_entry(x) for x in resources])
    assert r.status_code == 200, r.text
    return resources


def _team(context: list[Json]) -> Json:
    return next(r for r in context if r["resourceType"] == "CareTeam")


def _shown(client, portal) -> int:
    r = client.get(VIEW, headers=portal)
    assert r.status_code == 200, r.text
    return r.json()["total"]


@pytest.mark.parametrize("target", [PLAN_URN, "CarePlan/alva-sip"])
def test_an_approval_of_a_conditionally_updated_plan_not_first_is_accepted(
        client, soc, portal, context, target):
    approval = f.approval_provenance(target, id="alva-sip-godkannande")
    entries = [_entry(_team(context), full_url=TEAM_URN),
               _entry(f.sip_careplan(), CRITERIA, PLAN_URN),
               _entry(approval)]
    r = _send(client, soc, entries)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "201", "201"]
    stored = client.get("/fhir/Provenance/alva-sip-godkannande", headers=soc).json()
    assert stored["target"] == [{"reference": "CarePlan/alva-sip"}]  # (the urn resolved)
    assert _shown(client, portal) == 1


def test_the_approval_may_come_before_the_plan(client, soc, portal, context):
    entries = [_entry(f.approval_provenance(PLAN_URN, id="alva-sip-godkannande")),
               _entry(_team(context)),
               _entry(f.sip_careplan(), CRITERIA, PLAN_URN)]
    r = _send(client, soc, entries)
    assert r.status_code == 200, r.text
    assert _shown(client, portal) == 1


@pytest.mark.parametrize("target", [TEAM_URN, f"CareTeam/{f.CARETEAM.split('/')[-1]}"])
def test_a_provenance_of_another_entry_is_no_approval_and_the_plan_entry_is_named(
        client, soc, portal, context, target):
    wrong = f.approval_provenance(target, id="alva-sip-godkannande")
    entries = [_entry(_team(context), full_url=TEAM_URN),
               _entry(f.sip_careplan(), CRITERIA, PLAN_URN),
               _entry(wrong)]
    r = _send(client, soc, entries)
    assert r.status_code == 409, r.text
    text = outcome_text(r)
    assert "Bundle.entry[1]" in text and "without the person's approval" in text, text
    assert "Bundle.entry[0]" not in text, text
    assert client.get("/fhir/CarePlan/alva-sip", headers=soc).status_code in (404, 410)
    assert client.get("/fhir/Provenance/alva-sip-godkannande",
                      headers=soc).status_code in (404, 410)
    assert _shown(client, portal) == 0


def test_of_two_conditionally_updated_plans_the_unapproved_one_is_named(
        client, soc, context):
    """Two plans: the approved one first, the other (no approval) last; the refusal names
    the last entry."""
    other = f.sip_careplan(id="other-sip")
    entries = [_entry(f.sip_careplan(), CRITERIA, PLAN_URN),
               _entry(f.approval_provenance(PLAN_URN, id="alva-sip-godkannande")),
               _entry(other, "CarePlan?_id=other-sip")]
    r = _send(client, soc, entries)
    assert r.status_code == 409, r.text
    text = outcome_text(r)
    assert text.startswith("Bundle.entry[2]: CarePlan/other-sip is written as established "
                           "without the person's approval"), text
    assert client.get("/fhir/CarePlan/alva-sip", headers=soc).status_code in (404, 410)
