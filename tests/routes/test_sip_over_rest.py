"""A whole SIP (the demo case) through the REST API, and the profile rules at the HTTP edge."""

from __future__ import annotations

import copy

import sip_factory as f
from fhirhttp import body, outcome_text
from sip_hub.fhir import sip


def _put_all(client, resources):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}
    return client.post("/fhir", **body(bundle))


def test_demo_sip_stored_in_one_transaction_and_read_back_profiled(client):
    r = _put_all(client, f.demo_case())
    assert r.status_code == 200, r.text
    plan = client.get("/fhir/CarePlan?patient=alva&_include=CarePlan:care-team"
                      "&_include=CarePlan:goal").json()
    kinds = sorted(e["resource"]["resourceType"] for e in plan["entry"])
    assert kinds.count("CarePlan") == 1 and "CareTeam" in kinds and "Goal" in kinds
    cp = next(e["resource"] for e in plan["entry"] if e["resource"]["resourceType"] == "CarePlan")
    assert sip.PROFILE_CAREPLAN in cp["meta"]["profile"]
    consent = client.get("/fhir/Consent?patient=Patient/alva&status=active").json()
    assert consent["total"] == 1


def test_active_plan_without_huvudman_is_422_naming_the_extension(client):
    assert _put_all(client, f.demo_case()).status_code == 200
    plan = client.get("/fhir/CarePlan?patient=alva").json()["entry"][0]["resource"]
    broken = copy.deepcopy(plan)
    broken["extension"] = [e for e in broken["extension"] if e["url"] != sip.EXT_PRINCIPAL]
    r = client.put(f"/fhir/CarePlan/{plan['id']}", **body(broken))
    assert r.status_code == 422
    text = outcome_text(r)
    assert "huvudansvar" in text and sip.EXT_PRINCIPAL in text
    # The stored plan is unchanged.
    assert client.get(f"/fhir/CarePlan/{plan['id']}").json()["meta"]["versionId"] == "1"


def test_draft_plan_may_be_incomplete(client):
    assert _put_all(client, f.demo_case()).status_code == 200
    draft = f.sip_careplan(status="draft")
    draft["id"] = "utkast"
    draft.pop("extension", None)
    draft.pop("activity", None)
    r = client.put("/fhir/CarePlan/utkast", **body(draft))
    assert r.status_code == 201, r.text


def test_sip_plan_for_unknown_patient_is_422(client):
    plan = f.sip_careplan("Patient/nobody", status="draft")
    r = client.post("/fhir/CarePlan", **body(plan))
    assert r.status_code == 422
    assert "CarePlan.subject" in outcome_text(r)


def test_sip_plan_of_a_patient_on_another_server_is_422_naming_the_subject(client):
    assert _put_all(client, f.demo_case()).status_code == 200
    # Alva is Patient/alva here; the same path on another server is someone else's.
    plan = f.sip_careplan("https://other.example.org/fhir/Patient/alva", status="draft")
    plan["id"] = "elsewhere"
    r = client.put("/fhir/CarePlan/elsewhere", **body(plan))
    assert r.status_code == 422, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "another server" in outcome_text(r) and "@ CarePlan.subject" in outcome_text(r)
    assert client.get("/fhir/CarePlan/elsewhere").status_code == 404
    # A reference to this hub's own base is local, and stored relative.
    plan["subject"]["reference"] = "http://hub.test/fhir/Patient/alva"
    r = client.put("/fhir/CarePlan/elsewhere", **body(plan))
    assert r.status_code == 201, r.text
    assert r.json()["subject"]["reference"] == "Patient/alva"


def test_structure_definitions_are_served_and_searchable(client):
    b = client.get(f"/fhir/StructureDefinition?url={sip.PROFILE_CAREPLAN}").json()
    assert b["total"] == 1
    assert b["entry"][0]["resource"]["type"] == "CarePlan"
    assert client.get("/fhir/Questionnaire/sip-kartlaggning").status_code == 200
    assert client.get("/fhir/CodeSystem?url=https://sip-hub.se/fhir/CodeSystem/sip-life-area"
                      ).json()["total"] == 1
