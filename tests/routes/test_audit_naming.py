"""The access log names the person a request was about (Patientdatalagen 4 kap. 3 §,
8 kap. 5 §): a person relies on their log showing who asked about them, however the search
named them and whether or not anything came back, and who read or wrote the approval of
their plan (a Provenance naming them as attester, targeting their plan). A participant the
consent covers reads that approval as it reads the plan.

The demo SIP (Alva) is coordinated by the social services (SOC); BUP takes part; the
outsider organisation does not.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import sip_factory as f
import test_deadlines
from fhirhttp import JSON_HEADERS, PNR, entities, request_events, with_request_id
from indexrows import index_is_exact
from sip_process import invitation, post, write_case

SOC, BUP, OUTSIDER = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2321000016-OUT1"
ALVA = "Patient/alva"
APPROVAL = "Provenance/alva-sip-godkannande"
h = test_deadlines.h  # Alva's SIP in kartläggning (SOC, BUP and the school take part)


@pytest.fixture
def world(client, as_org):
    """The demo SIP written by its coordinator; each organisation's headers."""
    h = {org: as_org(org) for org in (SOC, BUP, OUTSIDER)}
    write_case(client, h[SOC], f.demo_case())
    return h


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e}


# -- searches naming the person ----------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "Patient?_id=alva",
    "Patient?_id=alva&_summary=count",
    f"Goal?patient:identifier={PNR}|{f.DEMO_PNR}",
    f"CarePlan?subject:identifier={PNR}|{f.DEMO_PNR}",
    "CarePlan?patient._id=alva",
    "Appointment?actor=Patient/alva",
    "CareTeam?participant=Patient/alva",
])
def test_a_search_naming_the_person_is_in_their_log(client, world, query):
    """As ``patient=alva`` by the outsider is: the consent filters everything out, yet the
    person was asked about, and their access log shows who asked."""
    r = client.get(f"/fhir/{query}", headers=with_request_id(world[OUTSIDER], "named"))
    assert r.status_code == 200, r.text
    assert "entry" not in r.json()
    [event] = request_events(client, "named")
    assert ALVA in entities(event), event


@pytest.mark.parametrize("query", ["CarePlan?status=active&author:identifier=x|y",
                                   f"Goal?patient:identifier={PNR}|"])
def test_a_search_naming_no_person_names_none(client, world, query):
    """A search by something other than a person (an organisation's identifier, a plan's
    status), or by every identifier of a system (``system|``), names no one when nothing
    comes back: the persons it could find were not asked about."""
    r = client.get(f"/fhir/{query}", headers=with_request_id(world[OUTSIDER], "none-named"))
    assert r.status_code == 200, r.text
    [event] = request_events(client, "none-named")
    assert not any(n.startswith("Patient/") for n in entities(event)), event


def test_every_person_named_by_identifier_is_in_the_event(client, world):
    """``patient.identifier=A,B``: B's records are withheld from the caller, A's returned;
    both were asked about, and both logs show it."""
    tolvan = f.patient()
    assert client.put("/fhir/Patient/tolvan", content=orjson.dumps(tolvan),
                      headers=JSON_HEADERS).status_code in (200, 201)
    goal = f.sip_goal("Patient/tolvan", id="tolvan-goal")
    assert client.put("/fhir/Goal/tolvan-goal", content=orjson.dumps(goal),
                      headers=JSON_HEADERS).status_code in (200, 201)
    r = client.get(f"/fhir/Goal?patient.identifier={PNR}|{f.DEMO_PNR},{PNR}|{f.TOLVAN_PNR}",
                   headers=with_request_id(world[BUP], "two"))
    assert r.status_code == 200 and r.json()["total"] >= 1, r.text
    assert "tolvan-goal" not in r.text
    [event] = request_events(client, "two")
    assert {ALVA, "Patient/tolvan"} <= entities(event), event


# -- the approval Provenance is the person's ---------------------------------------------------

@pytest.mark.parametrize("url", [f"/fhir/{APPROVAL}",
                                 "/fhir/Provenance?target=CarePlan/alva-sip"])
def test_reading_the_persons_approval_is_in_their_log(client, world, url):
    """The Provenance of Alva's approval of her plan targets the plan and names her and her
    mother as attesters: reading it is in her log."""
    r = client.get(url, headers=with_request_id(world[SOC], "prov"))
    assert r.status_code == 200 and "alva-sip-godkannande" in r.text, r.text
    [event] = request_events(client, "prov")
    assert APPROVAL in entities(event)
    assert ALVA in entities(event), event


def test_a_participant_reads_the_approval_of_the_plan(client, world):
    """BUP, a participant the consent covers, reads the plan and so its approval, by id, by
    target and by patient; the outsider reads neither."""
    r = client.get(f"/fhir/{APPROVAL}", headers=world[BUP])
    assert r.status_code == 200, r.text
    for query in ("target=CarePlan/alva-sip", "patient=alva"):
        r = client.get(f"/fhir/Provenance?{query}", headers=world[BUP])
        assert r.status_code == 200 and _ids(r.json()) == {"alva-sip-godkannande"}, r.text
    assert client.get(f"/fhir/{APPROVAL}", headers=world[OUTSIDER]).status_code == 403
    r = client.get("/fhir/Provenance?target=CarePlan/alva-sip", headers=world[OUTSIDER])
    assert r.status_code == 200 and "entry" not in r.json(), r.text


def test_an_outsiders_provenance_of_the_plan_is_its_own(client, world):
    """A Provenance of the person's plan written by an organisation the consent does not
    cover is in her compartment and kept from the others (rule 1), as its other writes in
    her compartment are."""
    prov = f.approval_provenance(id="outsider-prov")
    r = client.put("/fhir/Provenance/outsider-prov", content=orjson.dumps(prov),
                   headers=JSON_HEADERS | with_request_id(world[OUTSIDER], "outsider-prov"))
    assert r.status_code == 201, r.text
    [event] = request_events(client, "outsider-prov")
    assert ALVA in entities(event), event
    assert client.get("/fhir/Provenance/outsider-prov", headers=world[BUP]).status_code == 403
    assert client.get("/fhir/Provenance/outsider-prov",
                      headers=world[OUTSIDER]).status_code == 200


def test_the_approvals_person_stays_in_the_index(client, store, world):
    """Whose the Provenance is, resolved when it was written, is its index: an update of it
    writes those rows anew (once, not beside the old ones), and a rebuild of the index (a
    release that changes it) resolves them again."""
    prov = f.approval_provenance() | {"recorded": "2026-11-27T15:00:00+01:00"}
    r = client.put(f"/fhir/{APPROVAL}", content=orjson.dumps(prov),
                   headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 200, r.text
    index_is_exact(store, [("Provenance", "alva-sip-godkannande")])
    with store.begin() as tx:
        tx.rebuild_index()
    index_is_exact(store, [("Provenance", "alva-sip-godkannande")])
    r = client.get("/fhir/Provenance?patient=alva", headers=world[BUP])
    assert r.status_code == 200 and r.json()["total"] == 1, r.text


def test_a_transitions_provenance_is_audited_with_the_person(client, h):
    """$invite moves the SIP to kallelse and writes a Provenance of that (targeting the plan
    alone): its create event names the person, and her log finds it by patient."""
    r = post(client, "CarePlan/alva-sip/$invite", with_request_id(h[SOC], "inv-prov"),
             invitation(f.BUP))
    assert r.status_code == 200, r.text
    prov = next(p["resource"]["id"] for p in r.json()["parameter"] if p["name"] == "provenance")
    [event] = [e for e in request_events(client, "inv-prov")
               if f"Provenance/{prov}" in entities(e)]
    assert ALVA in entities(event), event
    r = client.get("/fhir/Provenance?patient=alva", headers=h[BUP])
    assert r.status_code == 200 and prov in _ids(r.json()), r.text
